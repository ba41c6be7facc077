// concord-client in Node against a real `concord` server.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { ConcordProvider, createProvider, applyChanges } from '../src/index.js';
import { startServer, waitFor, roomName } from './helpers/server.mjs';
import { compareStates } from './helpers/crdt.mjs';
import { api, expiresIn, jwt, signup, startAccountsServer } from './helpers/auth.mjs';

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
const providers = new Set();

before(async () => {
  server = await startServer();
});

after(async () => {
  await Promise.all([...providers].map((p) => p.destroy()));
  await server?.close();
});

/** A provider for the test server, destroyed at the end. */
async function provider(room, { url = server.url, ...options } = {}) {
  const p = await createProvider(url, room, { WebSocket, persistence: false, minReconnectDelay: 20, maxReconnectDelay: 200, ...options });
  providers.add(p);
  return p;
}

async function online(...ps) {
  await waitFor(() => ps.every((p) => p.status === 'online'), { message: 'providers online' });
}

/** Every provider has the same text and nothing pending. */
async function converged(...ps) {
  await waitFor(
    () => ps.every((p) => p.pendingCount === 0 && p.status === 'online' && p.text === ps[0].text),
    { timeout: 15_000, message: `convergence (${ps.map((p) => JSON.stringify(p.text.slice(0, 40))).join(' / ')})` },
  );
  return ps[0].text;
}

function rng(seed) {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x9e3779b9) >>> 0) / 2 ** 32);
}

function randomEdit(p, r) {
  const len = p.length;
  const words = ['a', 'bc', ' ', '\n', 'é', '😀', 'zz', '中文'];
  const text = p.text;
  let at = Math.floor(r() * (len + 1));
  // Offsets are UTF-16: never edit between the halves of a surrogate pair (editors don't).
  if (at < len && /[\udc00-\udfff]/.test(text[at])) at--;
  const roll = r();
  if (roll < 0.6 || len === 0) p.insert(at, words[Math.floor(r() * words.length)]);
  else {
    let from = Math.min(at, len - 1);
    if (from > 0 && /[\udc00-\udfff]/.test(text[from])) from--;
    let to = Math.min(len, from + 1 + Math.floor(r() * 3));
    if (to < len && /[\udc00-\udfff]/.test(text[to])) to++;
    if (roll < 0.85) p.delete(from, to - from);
    else p.replace(from, to - from, 'R');
  }
}

test('two providers typing at once converge byte-equal', async () => {
  const room = roomName('converge');
  const a = await provider(room);
  const b = await provider(room);
  await online(a, b);
  const r = rng(42);
  for (let round = 0; round < 60; round++) {
    for (let i = 0; i < 3; i++) randomEdit(a, r);
    for (let i = 0; i < 3; i++) randomEdit(b, r);
    // Let frames cross in flight: edits race the other side's updates.
    await new Promise((resolve) => setImmediate(resolve));
  }
  const text = await converged(a, b);
  assert.ok(text.length > 0);
  assert.deepEqual(Buffer.from(a.text, 'utf16le'), Buffer.from(b.text, 'utf16le'));
  // The same CRDT state (same items, same deletions), not only the same text.
  assert.equal(compareStates(a.session.encodeStateAsUpdate(), b.session.encodeStateAsUpdate()), null);
  // A late joiner gets the same document from the server.
  const c = await provider(room);
  assert.equal(await converged(a, b, c), text);
});

test('change events describe every remote edit exactly', async () => {
  const room = roomName('changes');
  const a = await provider(room);
  const b = await provider(room);
  await online(a, b);
  // B mirrors its text from events only, as an editor binding does.
  let mirror = b.text;
  b.on('change', ({ changes }) => (mirror = applyChanges(mirror, changes)));
  const r = rng(7);
  for (let round = 0; round < 40; round++) {
    randomEdit(a, r);
    randomEdit(a, r);
    if (round % 3 === 0) randomEdit(b, r);
    await new Promise((resolve) => setImmediate(resolve));
  }
  await converged(a, b);
  assert.equal(mirror, b.text);
});

test('a burst of keystrokes goes out as one update', async () => {
  const room = roomName('burst');
  const a = await provider(room);
  const b = await provider(room);
  await online(a, b);
  const acks = [];
  a.on('ack', (ack) => acks.push(ack));
  let remote = 0;
  b.on('change', ({ remote: isRemote }) => (remote += isRemote ? 1 : 0));
  for (let i = 0; i < 500; i++) a.insert(i, 'x');
  assert.equal(a.pendingCount, 1);
  await converged(a, b);
  assert.equal(b.text, 'x'.repeat(500));
  assert.equal(acks.length, 1, 'one op for the whole burst');
  assert.equal(remote, 1, 'one remote change event for the whole burst');
});

test('offline edits queue as one op and replay on reconnect', async () => {
  const room = roomName('offline');
  const a = await provider(room);
  const b = await provider(room);
  await online(a, b);
  a.insert(0, 'shared ');
  await converged(a, b);

  const statuses = [];
  a.on('status', ({ status }) => statuses.push(status));
  a.disconnect();
  assert.equal(a.status, 'offline');
  for (const word of ['one ', 'two ', 'three ']) {
    a.insert(a.length, word);
    a.flush();
  }
  assert.equal(a.pendingCount, 1, 'offline flushes merge into one pending op');
  b.insert(0, '[b] ');
  await waitFor(() => b.pendingCount === 0, { message: 'b acked' });
  assert.equal(b.text, '[b] shared ');
  assert.equal(a.text, 'shared one two three ');

  a.connect();
  const text = await converged(a, b);
  assert.equal(text, '[b] shared one two three ');
  assert.deepEqual(statuses, ['offline', 'connecting', 'online']);
});

test('a provider created offline syncs when told to connect', async () => {
  const room = roomName('lazy');
  const a = await provider(room, { connect: false });
  a.insert(0, 'written before connecting');
  assert.equal(a.status, 'offline');
  const b = await provider(room);
  await online(b);
  a.connect();
  assert.equal(await converged(a, b), 'written before connecting');
});

test('disconnect while the socket is still connecting, then connect again', async () => {
  const room = roomName('early-close');
  const a = await provider(room);
  assert.equal(a.status, 'connecting');
  a.disconnect();
  assert.equal(a.status, 'offline');
  a.insert(0, 'queued');
  // Let the aborted handshake play out (its error must not escape).
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(a.status, 'offline');
  a.connect();
  const b = await provider(room);
  assert.equal(await converged(a, b), 'queued');
});

test('providers reconnect with backoff after a server restart and lose nothing', async () => {
  const room = roomName('restart');
  const a = await provider(room);
  const b = await provider(room);
  await online(a, b);
  a.insert(0, 'before restart. ');
  await converged(a, b);
  await server.stop();
  await waitFor(() => a.status !== 'online' && b.status !== 'online', { message: 'both see the server gone' });
  a.insert(a.length, 'typed while the server was down. ');
  b.insert(0, '>> ');
  await server.restart();
  const text = await converged(a, b);
  assert.equal(text, '>> before restart. typed while the server was down. ');
  // The restarted server has it durably: a fresh client sees it.
  const c = await provider(room);
  assert.equal(await converged(a, b, c), text);
});

test('presence is relayed, follows local edits, and is removed when a peer leaves', async () => {
  const room = roomName('presence');
  const a = await provider(room, { user: 'ann' });
  const b = await provider(room, { user: 'bob' });
  await online(a, b);
  // The server names each connection in presence: what a client claims is not who it is.
  await waitFor(() => a.user.startsWith('c-') && b.user.startsWith('c-'), { message: 'ids assigned' });
  const ann = a.user;
  assert.notEqual(ann, b.user);
  a.insert(0, 'hello world');
  await converged(a, b);

  a.setPresence({ name: 'Ann', color: '#e11d48', cursor: { anchor: 6, head: 11 } });
  const seen = await waitFor(() => b.presences.get(ann), { message: 'b sees ann' });
  assert.deepEqual(seen, { user: ann, name: 'Ann', color: '#e11d48', cursor: { anchor: 6, head: 11 } });
  assert.equal(a.presences.has(ann), false, 'no echo of our own presence');

  // B types before Ann's selection: B's view of it shifts with the text.
  b.insert(0, '>> ');
  assert.deepEqual(b.presences.get(ann).cursor, { anchor: 9, head: 14 });

  // Presence frames are throttled, the last one always gets through.
  for (let i = 0; i <= 20; i++) a.setPresence({ cursor: i });
  await waitFor(() => b.presences.get(ann)?.cursor === 20, { message: 'last cursor arrives' });
  assert.equal(b.presences.get(ann).name, 'Ann', 'fields not re-sent are kept');

  // A late joiner is told who is here.
  const c = await provider(room, { user: 'cid' });
  await waitFor(() => c.presences.get(ann)?.cursor === 20, { message: 'late joiner sees ann' });

  const left = [];
  b.on('presence', ({ user, presence }) => presence === null && left.push(user));
  await a.destroy();
  providers.delete(a);
  await waitFor(() => !b.presences.has(ann) && !c.presences.has(ann), { message: 'ann gone' });
  assert.deepEqual(left, [ann]);
});

test('misuse is reported with codes', async () => {
  assert.throws(() => new ConcordProvider(server.url, 'bad room!', { WebSocket }), TypeError);
  assert.throws(() => new ConcordProvider(server.url, '..', { WebSocket }), TypeError);
  assert.throws(() => new ConcordProvider('ftp://x', 'r', { WebSocket }), TypeError);
  if (typeof globalThis.WebSocket !== 'function') {
    assert.throws(() => new ConcordProvider(server.url, 'r'), /pass options.WebSocket/);
  }
  const early = new ConcordProvider(server.url, roomName('early'), { WebSocket, persistence: false, connect: false });
  providers.add(early);
  assert.throws(() => early.insert(0, 'x'), (e) => e.code === 'not_ready');
  await early.ready;
  assert.throws(() => early.insert(5, 'x'), (e) => typeof e.code === 'string' && e.code !== 'not_ready');
  assert.throws(() => early.delete(0, 1), (e) => typeof e.code === 'string');
  early.insert(0, 'ok');
  assert.equal(early.text, 'ok');
  await early.destroy();
  assert.equal(early.destroyed, true);
  assert.throws(() => early.insert(0, 'x'), (e) => e.code === 'destroyed');
});

test('http:// URLs work and state vectors with + and / survive the ?sv= query', async () => {
  const room = roomName('urls');
  const http = await createProvider(server.http, room, { WebSocket, persistence: false });
  providers.add(http);
  assert.equal(http.url, server.url);
  const writers = [http];
  // Random client ids: add writers until the base64 state vector has URL-unsafe characters.
  const sv = () => Buffer.from(http.session.stateVector()).toString('base64');
  for (let i = 0; i < 40 && !/[+/]/.test(sv()); i++) {
    const w = await provider(room);
    writers.push(w);
    await online(w);
    w.insert(0, `w${i} `);
    await converged(...writers);
  }
  assert.match(sv(), /[+/]/);
  // Reconnecting sends that state vector; the server must read it back exactly.
  http.disconnect();
  writers[1].insert(0, 'while away ');
  http.connect();
  await converged(...writers);
  assert.ok(http.text.startsWith('while away '));
});

/** A `ws` WebSocket that records every socket it opens and how each closed. */
function recordingWebSocket() {
  const opened = [];
  const closes = [];
  class Recording extends WebSocket {
    constructor(url, ...rest) {
      super(url, ...rest);
      opened.push(url);
      this.on('close', (code) => closes.push(code));
    }
  }
  return { WebSocket: Recording, opened, closes };
}

test('access control: a token function, the reader role, live upgrade, revocation (4403) and expiry (4401)', async (t) => {
  const authed = await startAccountsServer();
  t.after(() => authed.close());
  const owner = await signup(authed, 'owner');
  const guest = await signup(authed, 'guest');
  const doc = (await api(authed, 'POST', '/api/docs', owner.token, { title: 'Access' })).body.doc.id;
  const grant = (role) => api(authed, 'PUT', `/api/docs/${doc}/grants/${guest.user.id}`, owner.token, { role });

  // The owner's token comes from a function, asked before each connect.
  let ownerCalls = 0;
  const a = await provider(doc, {
    url: authed.url,
    token: async () => {
      ownerCalls += 1;
      return owner.token;
    },
  });
  await a.whenSynced();
  assert.equal(ownerCalls, 1);
  assert.equal(a.role, 'write');
  a.insert(0, 'owner text');
  await waitFor(() => a.pendingCount === 0, { message: 'owner acked' });

  // A reader: told after the sync; local edits throw and nothing is queued.
  assert.equal((await grant('read')).status, 200);
  const seen = [];
  const rec = recordingWebSocket();
  let guestCalls = 0;
  const b = await provider(doc, {
    url: authed.url,
    WebSocket: rec.WebSocket,
    token: () => {
      guestCalls += 1;
      return guest.token;
    },
  });
  b.on('access', ({ role }) => seen.push(role));
  await waitFor(() => b.role === 'read' && b.text === 'owner text', { message: () => `reader synced (${b.role}, ${b.text})` });
  assert.deepEqual(seen, ['read'], 'one access event, no write/read flicker');
  assert.ok(rec.opened[0].includes(`&token=${encodeURIComponent(guest.token)}`), rec.opened[0]);
  assert.throws(() => b.insert(0, 'nope'), (e) => e.code === 'read_only');
  assert.throws(() => b.delete(0, 1), (e) => e.code === 'read_only');
  assert.equal(b.pendingCount, 0);
  assert.equal(b.text, 'owner text');

  // Live upgrade: writable without reconnecting, and the edit reaches the owner.
  assert.equal((await grant('write')).status, 200);
  await waitFor(() => b.role === 'write', { message: 'upgraded' });
  assert.deepEqual(seen, ['read', 'write']);
  b.insert(b.length, ' + guest');
  assert.equal(await converged(a, b), 'owner text + guest');
  assert.equal(rec.opened.length, 1, 'no reconnect for a change of role');

  // Revoked: closed with 4403, status `denied`, no reconnects.
  const denied = new Promise((resolve) => b.on('denied', resolve));
  assert.equal((await api(authed, 'DELETE', `/api/docs/${doc}/grants/${guest.user.id}`, owner.token)).status, 204);
  assert.equal((await denied).code, 'access_revoked');
  assert.deepEqual(rec.closes, [4403]);
  assert.equal(b.status, 'denied');
  // Absence of reconnects can only be seen over time: several times the backoff ceiling.
  const callsAtDenial = guestCalls;
  await new Promise((resolve) => setTimeout(resolve, 5 * b.options.maxReconnectDelay));
  assert.equal(rec.opened.length, 1, 'no reconnect after 4403');
  assert.equal(guestCalls, callsAtDenial);
  assert.equal(b.status, 'denied');

  // Expiry: a token that expires while connected closes with 4401; the function is asked
  // again and the next token connects.
  const room = roomName('expiry');
  const tokens = [
    jwt(authed.secret, { sub: 'integrator-user', rooms: { [room]: 'write' }, exp: expiresIn(2) }),
    jwt(authed.secret, { sub: 'integrator-user', rooms: { [room]: 'write' }, exp: expiresIn(600) }),
  ];
  const rec2 = recordingWebSocket();
  let calls = 0;
  const c = await provider(room, {
    url: authed.url,
    WebSocket: rec2.WebSocket,
    token: () => tokens[Math.min(calls++, tokens.length - 1)],
  });
  await c.whenSynced();
  c.insert(0, 'before expiry');
  await waitFor(() => c.pendingCount === 0, { message: 'acked before expiry' });
  await waitFor(() => rec2.closes.includes(4401), { timeout: 10_000, message: 'closed with 4401' });
  await waitFor(() => c.status === 'online' && calls === 2, { message: () => `reconnected with a fresh token (calls ${calls}, ${c.status})` });
  assert.ok(rec2.opened[1].includes(encodeURIComponent(tokens[1])), 'the second socket carries the fresh token');
  c.insert(c.length, ', after');
  await waitFor(() => c.pendingCount === 0, { message: 'acked after expiry' });
  assert.equal(c.text, 'before expiry, after');

  // A fixed token that expires cannot get better: denied, not a reconnect storm.
  const rec3 = recordingWebSocket();
  const fixed = await provider(room, {
    url: authed.url,
    WebSocket: rec3.WebSocket,
    token: jwt(authed.secret, { sub: 'fixed', rooms: { [room]: 'read' }, exp: expiresIn(2) }),
  });
  const fixedDenied = new Promise((resolve) => fixed.on('denied', resolve));
  await waitFor(() => fixed.synced && fixed.role === 'read', { message: 'fixed-token reader synced' });
  assert.equal((await fixedDenied).code, 'token_expired');
  assert.equal(fixed.status, 'denied');
  assert.equal(rec3.opened.length, 1);
});
