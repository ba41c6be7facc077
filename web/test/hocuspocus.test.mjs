// The stock `@hocuspocus/provider` (v3 and v4, with `ws` in Node) pointed at Concord's
// `/hocuspocus` endpoint: it shares rooms with y-websocket and concord-client users, holds any
// Yjs type, multiplexes documents on one socket, hears `SyncStatus` only once an edit is
// durable (so "no unsynced changes" survives kill -9), sees awareness across protocols and
// instances, relays stateless messages, and gets a read-only scope or a permission denied from
// the access rules.
import test, { after, afterEach, before } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import * as Y from 'yjs';
import { WebsocketProvider } from 'y-websocket';
import * as v4 from '@hocuspocus/provider';
import * as v3 from '@hocuspocus/provider-v3';
import { createProvider } from '../src/index.js';
import { startServer, waitFor, roomName } from './helpers/server.mjs';
import { assertSameDoc, awarenessNames, jwt, mirror, randomEdit, seeded } from './helpers/yjs.mjs';

let server;
const cleanup = [];
before(async () => {
  server = await startServer();
});
// Each test's providers go with it: one left alive would be reconnecting through the next
// test's server restart (and keep the process alive after the last).
afterEach(async () => {
  for (const fn of cleanup.reverse()) await fn();
  cleanup.length = 0;
});
after(async () => {
  await server?.close();
});

/** A Hocuspocus provider on a fresh Y.Doc, as a Tiptap app makes one. */
function hp(lib, room, { url = server.url, token, name, websocketProvider } = {}) {
  const doc = new Y.Doc();
  const events = { failed: [], scopes: [], stateless: [] };
  const provider = new lib.HocuspocusProvider({
    ...(websocketProvider ? { websocketProvider } : { url: `${url}/hocuspocus`, WebSocketPolyfill: WebSocket }),
    name: room,
    document: doc,
    token,
    onAuthenticationFailed: ({ reason }) => events.failed.push(reason),
    onAuthenticated: ({ scope }) => events.scopes.push(scope),
    onStateless: ({ payload }) => events.stateless.push(payload),
  });
  if (websocketProvider) provider.attach();
  if (name) provider.setAwarenessField('user', { name, color: '#ee6352' });
  const close = () => {
    provider.destroy();
    doc.destroy();
  };
  cleanup.push(close);
  return { doc, provider, events, text: doc.getText('body'), close };
}

function yws(room, { url = server.url, name } = {}) {
  const doc = new Y.Doc();
  const provider = new WebsocketProvider(`${url}/yjs`, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true });
  if (name) provider.awareness.setLocalStateField('user', { name, color: '#30bced' });
  const close = () => {
    provider.destroy();
    doc.destroy();
  };
  cleanup.push(close);
  return { doc, provider, text: doc.getText('body'), close };
}

async function concordUser(room, url = server.url) {
  const p = await createProvider(url, room, { WebSocket, persistence: false });
  cleanup.push(() => p.destroy());
  await waitFor(() => p.status === 'online', { message: 'provider online' });
  return p;
}

const synced = (c, what = 'synced') => waitFor(() => c.provider.synced, { message: what });
/** Every edit the provider sent is durable: the server said so with `SyncStatus`. */
const durable = (c) =>
  waitFor(() => c.provider.synced && !c.provider.hasUnsyncedChanges, {
    timeout: 15_000,
    message: () => `unsynced changes: ${c.provider.unsyncedChanges}`,
  });

for (const [version, lib] of [['v4', v4], ['v3', v3]]) {
  test(`${version}: Hocuspocus, y-websocket and concord-client users in one room converge`, async () => {
    const room = roomName(`hp${version}`);
    const random = seeded(version === 'v4' ? 7004 : 7003);
    const a = hp(lib, room);
    const b = hp(lib, room);
    const y = yws(room);
    const carol = await concordUser(room);
    await synced(a);
    await synced(b);
    await synced(y);
    for (let i = 0; i < 60; i++) {
      for (const c of [a, b, y]) randomEdit(c.text, random, i);
      carol.insert(Math.floor(random() * (carol.length + 1)), 'c');
      if (i % 10 === 0) await new Promise((r) => setImmediate(r));
    }
    a.doc.getMap('meta').set('title', 'Plan');
    const para = new Y.XmlElement('paragraph');
    para.insert(0, [new Y.XmlText('hello')]);
    b.doc.getXmlFragment('prosemirror').insert(0, [para]);
    y.doc.getArray('list').push([1, { two: 2 }]);
    await waitFor(
      () => carol.pendingCount === 0 && [a, b, y].every((c) => c.text.toString() === carol.text)
        && [a, b, y].every((c) => c.doc.getXmlFragment('prosemirror').length === 1
          && c.doc.getMap('meta').get('title') === 'Plan' && c.doc.getArray('list').length === 2),
      { timeout: 20_000, message: () => `convergence: a=${a.text} b=${b.text} y=${y.text} carol=${carol.text}` },
    );
    await durable(a);
    await durable(b);
    assertSameDoc(a.doc, b.doc);
    assertSameDoc(a.doc, y.doc);
    const m = mirror(carol);
    assert.equal(m.getText('body').toString(), a.text.toString());
    m.destroy();
    assert.deepEqual(a.events.scopes, ['read-write']);
  });

  test(`${version}: "no unsynced changes" means durable: it survives a restart and a kill -9`, async () => {
    for (const how of ['restart', 'crash']) {
      const room = roomName(`hp${version}-${how}`);
      const a = hp(lib, room);
      await synced(a);
      a.text.insert(0, `durable through ${how}`);
      a.doc.getMap('meta').set('how', how);
      // SyncStatus comes after the commit, so the moment the provider counts nothing unsynced
      // the edit is on disk, and killing the server right then loses nothing.
      await durable(a);
      a.close();
      await server[how]();
      const fresh = hp(lib, room);
      await synced(fresh);
      await waitFor(() => fresh.text.toString() === `durable through ${how}`, { message: `after ${how}` });
      assert.equal(fresh.doc.getMap('meta').get('how'), how);
      fresh.close();
    }
  });

  test(`${version}: one socket carries several documents, each its own room`, async () => {
    const socket = new lib.HocuspocusProviderWebsocket({ url: `${server.url}/hocuspocus`, WebSocketPolyfill: WebSocket });
    cleanup.push(() => socket.destroy());
    const [r1, r2] = [roomName(`hp${version}-mux1`), roomName(`hp${version}-mux2`)];
    const d1 = hp(lib, r1, { websocketProvider: socket });
    const d2 = hp(lib, r2, { websocketProvider: socket });
    await synced(d1);
    await synced(d2);
    d1.text.insert(0, 'first');
    d2.text.insert(0, 'second');
    const w1 = await concordUser(r1);
    const w2 = await concordUser(r2);
    await waitFor(() => w1.text === 'first' && w2.text === 'second', { message: () => `${w1.text} / ${w2.text}` });
    w2.insert(0, '2nd: ');
    await waitFor(() => d2.text.toString() === '2nd: second', { message: 'back on the shared socket' });
    assert.equal(d1.text.toString(), 'first');
    await durable(d1);
    await durable(d2);
  });

  test(`${version}: a provider that goes offline and edits catches up both ways on reconnect`, async () => {
    const room = roomName(`hp${version}-offline`);
    const a = hp(lib, room);
    const dave = await concordUser(room);
    await synced(a);
    a.text.insert(0, 'start ');
    await waitFor(() => dave.text === 'start ', { message: 'dave sees start' });
    a.provider.disconnect();
    await waitFor(() => !a.provider.synced, { message: 'offline' });
    a.text.insert(a.text.length, 'offline-hocuspocus ');
    dave.insert(0, 'online-concord ');
    await waitFor(() => dave.pendingCount === 0, { message: 'dave acked' });
    a.provider.connect();
    await waitFor(() => a.text.toString() === dave.text && /offline-hocuspocus/.test(dave.text), {
      timeout: 15_000,
      message: () => `after reconnect: a=${a.text} dave=${dave.text}`,
    });
    await durable(a);
  });

  test(`${version}: awareness reaches y-websocket and concord users and goes when the provider does`, async () => {
    const room = roomName(`hp${version}-aw`);
    const a = hp(lib, room, { name: 'Hana' });
    const y = yws(room, { name: 'Yuri' });
    const carol = await concordUser(room);
    carol.setPresence({ name: 'Carol', color: '#ff0000' });
    await synced(a);
    await synced(y);
    const names = (c) => awarenessNames(c.provider.awareness).join();
    await waitFor(() => names(a) === 'Carol,Hana,Yuri' && names(y) === 'Carol,Hana,Yuri', {
      message: () => `awareness: hp=${names(a)} yws=${names(y)}`,
    });
    await waitFor(() => [...carol.presences.values()].some((p) => p.name === 'Hana'), { message: 'carol sees Hana' });
    a.close();
    await waitFor(() => names(y) === 'Carol,Yuri', { message: () => `Hana gone: ${names(y)}` });
    await waitFor(() => ![...carol.presences.values()].some((p) => p.name === 'Hana'), { message: 'carol: Hana gone' });
  });

  test(`${version}: stateless messages reach the document's other Hocuspocus connections`, async () => {
    const room = roomName(`hp${version}-stateless`);
    const a = hp(lib, room);
    const b = hp(lib, room);
    await synced(a);
    await synced(b);
    a.provider.sendStateless(JSON.stringify({ hello: version }));
    await waitFor(() => b.events.stateless.length === 1, { message: 'stateless relayed' });
    assert.deepEqual(JSON.parse(b.events.stateless[0]), { hello: version });
    assert.equal(a.events.stateless.length, 0, 'not echoed to the sender');
  });
}

test('with tokens: no token or a bad name is denied, a reader gets read-only, a writer writes', async () => {
  const secret = 'a-test-secret-of-at-least-32-bytes!!';
  const authed = await startServer({ env: { CONCORD_AUTH: 'tokens', CONCORD_AUTH_SECRET: secret } });
  cleanup.push(() => authed.close());
  const room = roomName('hp-auth');
  const exp = Math.floor(Date.now() / 1000) + 600;
  const writerToken = jwt(secret, { sub: 'w', name: 'Writer', rooms: { [room]: 'write' }, exp });
  const readerToken = jwt(secret, { sub: 'r', name: 'Reader', rooms: { [room]: 'read' }, exp });
  const otherToken = jwt(secret, { sub: 'o', name: 'Other', rooms: { 'elsewhere': 'write' }, exp });

  for (const lib of [v4, v3]) {
    const none = hp(lib, room, { url: authed.url });
    const other = hp(lib, room, { url: authed.url, token: otherToken });
    const badName = hp(lib, 'not a room id!', { url: authed.url, token: writerToken });
    await waitFor(() => none.events.failed.length && other.events.failed.length && badName.events.failed.length, {
      message: 'denied',
    });
    assert.match(none.events.failed[0], /token/);
    assert.match(other.events.failed[0], /access/);
    assert.match(badName.events.failed[0], /document name/);
    assert.equal(none.text.toString(), '');
    for (const c of [none, other, badName]) c.close();
  }

  const writer = hp(v4, room, { url: authed.url, token: writerToken, name: 'w' });
  const reader = hp(v3, room, { url: authed.url, token: readerToken, name: 'r' });
  await synced(writer);
  await synced(reader);
  assert.deepEqual(writer.events.scopes, ['read-write']);
  assert.deepEqual(reader.events.scopes, ['readonly']);
  // A reader's sync step 2 adds nothing, so it is answered as applied.
  await durable(reader);
  writer.text.insert(0, 'by the writer');
  await waitFor(() => reader.text.toString() === 'by the writer', { message: 'reader receives' });
  await durable(writer);

  reader.text.insert(0, 'FORGED ');
  // Refused (SyncStatus 0), so the provider keeps counting it as unsynced. The writer's next
  // edit was sent after it: once that is back from the room, the forged one would be too.
  writer.text.insert(writer.text.length, '!');
  await durable(writer);
  const late = hp(v4, room, { url: authed.url, token: writerToken });
  await synced(late);
  await waitFor(() => late.text.toString() === 'by the writer!', { message: () => `room text: ${late.text}` });
  assert.equal(writer.text.toString(), 'by the writer!');
  assert.ok(reader.provider.hasUnsyncedChanges, 'the forged edit is not reported as synced');
});

test('two instances over Redis: y-websocket on A and Hocuspocus on B converge and share awareness', async (t) => {
  const pg = process.env.CONCORD_TEST_PG ?? 'postgres://postgres@127.0.0.1:5432/test';
  const redis = process.env.CONCORD_TEST_REDIS ?? 'redis://127.0.0.1:6379';
  const env = { DATABASE_URL: pg, REDIS_URL: redis };
  const a = await startServer({ env });
  cleanup.push(() => a.close());
  const b = await startServer({ env });
  cleanup.push(() => b.close());
  const room = roomName('hp-scale');
  const y = yws(room, { url: a.url, name: 'OnA' });
  const h = hp(v4, room, { url: b.url, name: 'OnB' });
  await synced(y);
  await synced(h);
  y.text.insert(0, 'from A ');
  h.text.insert(0, 'from B ');
  h.doc.getMap('meta').set('k', 'v');
  await waitFor(() => y.text.toString() === h.text.toString() && y.text.length === 14 && y.doc.getMap('meta').get('k') === 'v', {
    message: () => `A=${y.text} B=${h.text}`,
  });
  await durable(h);
  assertSameDoc(y.doc, h.doc);
  const names = (c) => awarenessNames(c.provider.awareness).join();
  await waitFor(() => names(y) === 'OnA,OnB' && names(h) === 'OnA,OnB', {
    message: () => `awareness: A=${names(y)} B=${names(h)}`,
  });
  const h2 = hp(v3, room, { url: b.url, name: 'AlsoB' });
  await synced(h2);
  await waitFor(() => names(y) === 'AlsoB,OnA,OnB', { message: () => `A sees AlsoB: ${names(y)}` });
  h2.close();
  await waitFor(() => names(y) === 'OnA,OnB' && names(h) === 'OnA,OnB', {
    message: () => `AlsoB gone on both: A=${names(y)} B=${names(h)}`,
  });
  t.diagnostic('Postgres and Redis shared by both instances');
});

/** Opens a raw socket to /hocuspocus, sends `frames`, and resolves with its close code. */
function closeCodeAfter(frames) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${server.url}/hocuspocus`);
    ws.on('open', () => {
      for (const f of frames) ws.send(f);
    });
    ws.on('close', (code) => resolve(code));
    ws.on('error', reject);
  });
}

/** lib0 varString. */
const varString = (s) => {
  const bytes = Buffer.from(s);
  assert.ok(bytes.length < 128);
  return Buffer.concat([Buffer.from([bytes.length]), bytes]);
};

test('hostile frames get the documented close codes, and the room serves others throughout', async () => {
  const room = roomName('hp-hostile');
  const honest = hp(v4, room);
  await synced(honest);
  honest.text.insert(0, 'still here');
  await durable(honest);
  // A document name declared 1 GiB long (varuint 2^30), with nothing behind it: 1009.
  assert.equal(await closeCodeAfter([Buffer.from([0x80, 0x80, 0x80, 0x80, 0x04])]), 1009);
  // Truncated: a name shorter than declared; a missing type: 1002.
  assert.equal(await closeCodeAfter([Buffer.from([0x05, 0x61])]), 1002);
  assert.equal(await closeCodeAfter([Buffer.from([0x01, 0x61])]), 1002);
  // A garbage sync message for a document.
  assert.equal(await closeCodeAfter([Buffer.concat([varString(room), Buffer.from([0x00, 0x07, 0xff])])]), 1002);
  // Text frames are not part of the protocol: 1003.
  assert.equal(await closeCodeAfter(['{"hello":1}']), 1003);
  // Unauthenticated traffic is bounded: frames for 101 documents that never authenticate.
  const flood = Array.from({ length: 101 }, (_, i) => Buffer.concat([varString(`never-${i}`), Buffer.from([0x03])]));
  assert.equal(await closeCodeAfter(flood), 4205);
  // Unknown message types are ignored, as the stock server does; the socket stays usable.
  const probe = hp(v4, room);
  probe.provider.configuration.websocketProvider.send(Buffer.concat([varString(room), Buffer.from([0x63])]));
  await synced(probe);
  await waitFor(() => probe.text.toString() === 'still here', { message: 'room content intact' });
  honest.text.insert(honest.text.length, '!');
  await waitFor(() => probe.text.toString() === 'still here!', { message: 'room still serves' });
});
