// The stock y-websocket `WebsocketProvider` (npm `y-websocket`, with `ws` in Node) pointed at
// Concord's `/yjs` endpoint: it shares rooms with concord-client users, holds any Yjs shared
// type (nested ones too, within a depth bound), survives restarts and kill -9, sees awareness
// both ways, and is refused writes with read-only access.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import * as Y from 'yjs';
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
