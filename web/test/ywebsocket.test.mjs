// The stock y-websocket `WebsocketProvider` (npm `y-websocket`, with `ws` in Node) pointed at
// Concord's `/yjs` endpoint: it shares rooms with concord-client users, holds any Yjs shared
// type (nested ones too, within a depth bound), survives restarts and kill -9, sees awareness
// both ways (coalesced per tick, cursors mapped between offsets and relative positions), and is
// refused writes with read-only access.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import * as Y from 'yjs';
import * as decoding from 'lib0/decoding';
import { WebsocketProvider } from 'y-websocket';
import { createProvider } from '../src/index.js';
import { startServer, waitFor, roomName } from './helpers/server.mjs';
import { assertSameDoc, awarenessNames, jwt, mirror, randomEdit, seeded } from './helpers/yjs.mjs';

let server;
const cleanup = [];
before(async () => {
  server = await startServer();
});
after(async () => {
  for (const fn of cleanup.reverse()) await fn();
  await server?.close();
});

/** A y-websocket client on a fresh Y.Doc, exactly as an app would make one. */
function yws(room, { url = server.url, params = {}, name } = {}) {
  const doc = new Y.Doc();
  const provider = new WebsocketProvider(`${url}/yjs`, room, doc, {
    WebSocketPolyfill: WebSocket,
    params,
    disableBc: true,
  });
  if (name) provider.awareness.setLocalStateField('user', { name, color: '#30bced' });
  const close = () => {
    provider.destroy();
    doc.destroy();
  };
  cleanup.push(close);
  return { doc, provider, text: doc.getText('body'), close };
}

async function concordUser(room, options = {}) {
  const p = await createProvider(server.url, room, { WebSocket, persistence: false, ...options });
  cleanup.push(() => p.destroy());
  await waitFor(() => p.status === 'online', { message: 'provider online' });
  return p;
}

const synced = (c) => waitFor(() => c.provider.synced, { message: 'y-websocket synced' });

test('y-websocket and concord-client users type into one room at once and converge', async () => {
  const room = roomName('yws');
  const random = seeded(4242);
  const a = yws(room);
  const b = yws(room);
  const carol = await concordUser(room);
  await synced(a);
  await synced(b);
  for (let i = 0; i < 60; i++) {
    for (const c of [a, b]) randomEdit(c.text, random, i);
    carol.insert(Math.floor(random() * (carol.length + 1)), 'c');
    if (i % 10 === 0) await new Promise((r) => setImmediate(r));
  }
  await waitFor(
    () => carol.pendingCount === 0 && a.text.toString() === carol.text && b.text.toString() === carol.text,
    { timeout: 20_000, message: () => `convergence: a=${a.text.toString()} b=${b.text.toString()} carol=${carol.text}` },
  );
  assertSameDoc(a.doc, b.doc);
  const m = mirror(carol);
  assertSameDoc(a.doc, m);
  m.destroy();
});

test('maps, arrays and XML fragments (nested types) converge too, and a late joiner gets them all', async () => {
  const room = roomName('yws-types');
  const a = yws(room);
  const b = yws(room);
  await synced(a);
  await synced(b);
  a.doc.getMap('meta').set('title', 'Plan');
  b.doc.getMap('meta').set('owner', 'Ada');
  a.doc.getArray('list').push([1, 'two', { three: 3 }]);
  b.doc.getArray('list').insert(0, [true]);
  const para = new Y.XmlElement('paragraph');
  para.insert(0, [new Y.XmlText('hello')]);
  a.doc.getXmlFragment('prosemirror').insert(0, [para]);
  const nested = new Y.Map();
  nested.set('deep', new Y.Array());
  b.doc.getMap('meta').set('nested', nested);
  await waitFor(
    () => b.doc.getMap('meta').get('title') === 'Plan' && a.doc.getMap('meta').get('owner') === 'Ada'
      && a.doc.getArray('list').length === 4 && b.doc.getArray('list').length === 4
      && b.doc.getXmlFragment('prosemirror').toString() === '<paragraph>hello</paragraph>'
      && a.doc.getMap('meta').get('nested')?.get('deep') instanceof Y.Array,
    { message: 'types converge' },
  );
  assertSameDoc(a.doc, b.doc);
  const late = yws(room);
  await synced(late);
  await waitFor(() => late.doc.getArray('list').length === 4, { message: 'late joiner' });
  assert.deepEqual(late.doc.getArray('list').toJSON(), a.doc.getArray('list').toJSON());
  assertSameDoc(late.doc, a.doc);
});

test('a provider that goes offline and edits catches up both ways on reconnect', async () => {
  const room = roomName('yws-offline');
  const a = yws(room);
  const dave = await concordUser(room);
  await synced(a);
  a.text.insert(0, 'start ');
  await waitFor(() => dave.text === 'start ', { message: 'dave sees start' });
  a.provider.disconnect();
  a.text.insert(a.text.length, 'offline-yjs ');
  dave.insert(0, 'online-concord ');
  await waitFor(() => dave.pendingCount === 0, { message: 'dave acked' });
  a.provider.connect();
  await waitFor(() => a.text.toString() === dave.text && /offline-yjs/.test(dave.text), {
    timeout: 15_000,
    message: () => `after reconnect: a=${a.text.toString()} dave=${dave.text}`,
  });
  const m = mirror(dave);
  assertSameDoc(a.doc, m);
  m.destroy();
});

test('what a peer saw survives a restart and a kill -9', async () => {
  for (const how of ['restart', 'crash']) {
    const room = roomName(`yws-${how}`);
    const a = yws(room);
    const watcher = await concordUser(room);
    await synced(a);
    a.doc.getMap('meta').set('how', how);
    a.text.insert(0, `durable through ${how}`);
    // A broadcast only ever follows the commit: what another client saw is durable.
    await waitFor(() => watcher.text === `durable through ${how}`, { message: 'watcher saw it' });
    a.close();
    watcher.destroy();
    await server[how]();
    const fresh = yws(room);
    await synced(fresh);
    await waitFor(() => fresh.text.toString() === `durable through ${how}`, { message: `after ${how}` });
    assert.equal(fresh.doc.getMap('meta').get('how'), how);
    fresh.close();
  }
});

test('awareness: Yjs clients see each other and concord presence, and leaving removes them', async () => {
  const room = roomName('yws-awareness');
  const a = yws(room, { name: 'Ada' });
  const b = yws(room, { name: 'Bob' });
  await synced(a);
  await synced(b);
  const names = (c) => awarenessNames(c.provider.awareness);
  await waitFor(() => names(a).join() === 'Ada,Bob' && names(b).join() === 'Ada,Bob', {
    message: () => `awareness: a=${names(a)} b=${names(b)}`,
  });
  const carol = await concordUser(room);
  carol.setPresence({ name: 'Carol', color: '#ff0000', cursor: 1 });
  await waitFor(() => names(a).includes('Carol'), { message: () => `a sees Carol: ${names(a)}` });
  await waitFor(() => [...carol.presences.values()].some((p) => p.name === 'Bob'), {
    message: 'carol sees Bob',
  });
  b.close();
  await waitFor(() => names(a).join() === 'Ada,Carol', { message: () => `Bob gone: ${names(a)}` });
  await waitFor(() => ![...carol.presences.values()].some((p) => p.name === 'Bob'), { message: 'carol: Bob gone' });
});

/** The awareness client ids in each awareness message a provider's socket receives, in order. */
function awarenessMessages(provider) {
  const seen = [];
  provider.ws.addEventListener('message', (event) => {
    const decoder = decoding.createDecoder(new Uint8Array(event.data));
    if (decoding.readVarUint(decoder) !== 1) return; // not awareness
    const update = decoding.createDecoder(decoding.readVarUint8Array(decoder));
    const clients = [];
    for (let n = decoding.readVarUint(update); n > 0; n--) {
      const client = decoding.readVarUint(update);
      decoding.readVarUint(update); // clock
      clients.push({ client, state: JSON.parse(decoding.readVarString(update)) });
    }
    seen.push(clients);
  });
  return seen;
}

test('awareness bursts are coalesced: latest state wins, fewer messages, own entry never echoed, removal still arrives', async () => {
  const room = roomName('yws-coalesce');
  const a = yws(room, { name: 'Ada' });
  const c = yws(room, { name: 'Cy' });
  const b = yws(room, { name: 'Bob' });
  for (const x of [a, b, c]) await synced(x);
  const names = (x) => awarenessNames(x.provider.awareness);
  await waitFor(() => names(b).join() === 'Ada,Bob,Cy', { message: () => `b sees all: ${names(b)}` });
  const atB = awarenessMessages(b.provider);
  const atA = awarenessMessages(a.provider);
  // Each change is its own awareness message on the wire from Ada and Cy: 2 x 100 messages.
  const changes = 100;
  for (let n = 0; n < changes; n++) {
    a.provider.awareness.setLocalStateField('n', n);
    c.provider.awareness.setLocalStateField('n', n);
  }
  const stateAtB = (x) => b.provider.awareness.getStates().get(x.doc.clientID);
  await waitFor(() => stateAtB(a)?.n === changes - 1 && stateAtB(c)?.n === changes - 1, {
    message: () => `latest states at b: ${stateAtB(a)?.n} ${stateAtB(c)?.n}`,
  });
  const burst = atB.filter((m) => m.some((e) => e.client === a.doc.clientID || e.client === c.doc.clientID));
  // Relayed one by one, Bob would get one message per change (at least the 20 a member may
  // send at once, and the latest after it); coalesced per 50 ms tick he gets a few, each with
  // every entry that changed in its tick.
  assert.ok(burst.length < 20, `${burst.length} awareness messages for ${2 * changes} changes`);
  for (const x of [a, c]) {
    const ns = burst.flatMap((m) => m.filter((e) => e.client === x.doc.clientID).map((e) => e.state.n));
    assert.deepEqual(ns, [...ns].sort((p, q) => p - q), 'never an older state after a newer one');
    assert.equal(ns.at(-1), changes - 1);
  }
  console.log(`coalesced: ${burst.length} messages to Bob, sizes ${burst.map((m) => m.length).join(',')}`);
  // Ada hears Cy's changes, never her own back.
  await waitFor(() => atA.some((m) => m.some((e) => e.client === c.doc.clientID && e.state?.n === changes - 1)), {
    message: 'Ada sees Cy\'s latest',
  });
  assert.ok(!atA.some((m) => m.some((e) => e.client === a.doc.clientID)), 'Ada was sent her own entry');
  // Leaving right after a change: the removal is not lost behind the pending change.
  a.provider.awareness.setLocalStateField('n', changes);
  a.close();
  await waitFor(() => !b.provider.awareness.getStates().has(a.doc.clientID), {
    message: () => `Ada removed at b: ${names(b)}`,
  });
  assert.equal(names(b).join(), 'Bob,Cy');
});

test('cursors: a concord-client offset reaches Yjs as a relative position, a Yjs relative position reaches concord-client as offsets', async () => {
  const room = roomName('yws-cursors');
  const a = yws(room, { name: 'Ada' });
  await synced(a);
  a.text.insert(0, 'hello 😀 world, hello cursors');
  const carol = await concordUser(room);
  await waitFor(() => carol.text === a.text.toString(), { message: 'carol synced' });

  // concord-client -> y-websocket: UTF-16 offsets become relative positions into `body`.
  carol.setPresence({ name: 'Carol', color: '#ff0000', cursor: { anchor: 9, head: 14 } });
  const carolAtA = () => [...a.provider.awareness.getStates().values()].find((s) => s.user?.name === 'Carol');
  await waitFor(() => carolAtA()?.cursor, { message: () => `a sees Carol's cursor: ${JSON.stringify(carolAtA())}` });
  const resolve = (rel) => Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(rel), a.doc);
  for (const [end, offset] of [['anchor', 9], ['head', 14]]) {
    const abs = resolve(carolAtA().cursor[end]);
    assert.equal(abs.type, a.text, `${end} is in body`);
    assert.equal(abs.index, offset, end);
  }
  // Relative positions follow the text: an insert before the cursor moves it.
  a.text.insert(0, '>> ');
  assert.equal(resolve(carolAtA().cursor.anchor).index, 12);

  // y-websocket -> concord-client: relative positions (as y-codemirror.next sets them)
  // become offsets.
  await waitFor(() => carol.text === a.text.toString(), { message: 'carol has the insert' });
  const cursor = {
    anchor: Y.createRelativePositionFromTypeIndex(a.text, 4),
    head: Y.createRelativePositionFromTypeIndex(a.text, 11),
  };
  a.provider.awareness.setLocalStateField('cursor', cursor);
  const adaAtCarol = () => [...carol.presences.values()].find((p) => p.name === 'Ada');
  await waitFor(() => adaAtCarol()?.cursor?.anchor === 4 && adaAtCarol()?.cursor?.head === 11, {
    message: () => `carol sees Ada's cursor as offsets: ${JSON.stringify(adaAtCarol())}`,
  });
  // At the end of the text (no item to point at) too.
  const end = a.text.length;
  a.provider.awareness.setLocalStateField('cursor', {
    anchor: Y.createRelativePositionFromTypeIndex(a.text, end),
    head: Y.createRelativePositionFromTypeIndex(a.text, end),
  });
  await waitFor(() => adaAtCarol()?.cursor?.anchor === end, {
    message: () => `end cursor: ${JSON.stringify(adaAtCarol())}`,
  });
  // A position in another type (as Tiptap's, into an XmlFragment) has no offsets: none given.
  const frag = a.doc.getXmlFragment('default');
  frag.insert(0, [new Y.XmlText('tiptap')]);
  const xml = Y.createRelativePositionFromTypeIndex(frag, 0);
  a.provider.awareness.setLocalState({ user: { name: 'Ada' }, cursor: { anchor: xml, head: xml } });
  await waitFor(() => adaAtCarol()?.cursor === undefined, {
    message: () => `no cursor for a position outside body: ${JSON.stringify(adaAtCarol())}`,
  });
});

test('with tokens: no token is refused at upgrade, a reader is denied writes, a writer writes', async () => {
  const secret = 'a-test-secret-of-at-least-32-bytes!!';
  const authed = await startServer({ env: { CONCORD_AUTH: 'tokens', CONCORD_AUTH_SECRET: secret } });
  cleanup.push(() => authed.close());
  const room = roomName('yws-auth');
  const exp = Math.floor(Date.now() / 1000) + 600;
  const writerToken = jwt(secret, { sub: 'w', name: 'Writer', rooms: { [room]: 'write' }, exp });
  const readerToken = jwt(secret, { sub: 'r', name: 'Reader', rooms: { [room]: 'read' }, exp });

  const status = await new Promise((resolve) => {
    const ws = new WebSocket(`${authed.url}/yjs/${room}`);
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode));
    ws.on('open', () => resolve('open'));
  });
  assert.equal(status, 401);

  const writer = yws(room, { url: authed.url, params: { token: writerToken } });
  const reader = yws(room, { url: authed.url, params: { token: readerToken } });
  await synced(writer);
  await synced(reader);
  writer.text.insert(0, 'by the writer');
  await waitFor(() => reader.text.toString() === 'by the writer', { message: 'reader receives' });

  const denied = [];
  const origWarn = console.warn;
  console.warn = (...args) => denied.push(args.join(' '));
  cleanup.push(() => (console.warn = origWarn));
  reader.text.insert(0, 'FORGED ');
  await waitFor(() => denied.some((d) => /read-only/.test(d)), { message: 'permission denied reached the reader' });
  console.warn = origWarn;
  // The writer sends once more; when it is back from the room, the forged edit would have
  // been ahead of it. It is not there: not applied, not relayed.
  writer.text.insert(writer.text.length, '!');
  const late = yws(room, { url: authed.url, params: { token: writerToken } });
  await synced(late);
  await waitFor(() => late.text.toString() === 'by the writer!', { message: () => `room text: ${late.text.toString()}` });
  assert.equal(writer.text.toString(), 'by the writer!');
});
