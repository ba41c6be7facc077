// A client written only to the base wire contract with plain Yjs (no Concord code at all)
// shares a room with concord-client users, and everyone converges.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import * as Y from 'yjs';
import { createProvider } from '../src/index.js';
import { startServer, waitFor, roomName } from './helpers/server.mjs';

let server;
const cleanup = [];
before(async () => {
  server = await startServer();
});
after(async () => {
  for (const fn of cleanup.reverse()) await fn();
  await server?.close();
});

const b64 = (bytes) => Buffer.from(bytes).toString('base64');
const unb64 = (s) => new Uint8Array(Buffer.from(s, 'base64'));

/**
 * The whole base-contract client: apply `sync` and `op` frames with Y.applyUpdateV2, send
 * local updates as `{"t":"op","data":{"update":...}}` (v2).
 */
class YjsClient {
  constructor(url, room) {
    this.doc = new Y.Doc();
    this.text = this.doc.getText('body');
    this.synced = false;
    this.frames = [];
    this.ws = new WebSocket(`${url}/rooms/${room}/ws`);
    this.ws.on('message', (data) => {
      const msg = JSON.parse(String(data));
      this.frames.push(msg.t);
      if (msg.t === 'sync') {
        Y.applyUpdateV2(this.doc, unb64(msg.state), 'server');
        this.synced = true;
      } else if (msg.t === 'op') {
        Y.applyUpdateV2(this.doc, unb64(msg.data.update), 'server');
      }
    });
    this.doc.on('updateV2', (update, origin) => {
      if (origin !== 'server') this.ws.send(JSON.stringify({ t: 'op', data: { update: b64(update) } }));
    });
    cleanup.push(() => this.close());
  }

  close() {
    this.ws.close();
    this.doc.destroy();
  }
}

async function concordUser(room) {
  const p = await createProvider(server.url, room, { WebSocket, persistence: false });
  cleanup.push(() => p.destroy());
  await waitFor(() => p.status === 'online', { message: 'provider online' });
  return p;
}

/** Same text, same state vector, same delete set: the same document. */
function assertSameDocument(yclient, provider) {
  assert.equal(yclient.text.toString(), provider.text);
  const mirror = new Y.Doc();
  Y.applyUpdateV2(mirror, provider.session.encodeStateAsUpdate());
  assert.ok(Y.equalSnapshots(Y.snapshot(mirror), Y.snapshot(yclient.doc)), 'snapshots differ');
  assert.deepEqual(Y.decodeStateVector(provider.session.stateVector()), Y.decodeStateVector(Y.encodeStateVector(yclient.doc)));
  mirror.destroy();
}

async function converge(yclient, ...providers) {
  await waitFor(
    () => providers.every((p) => p.pendingCount === 0 && p.text === yclient.text.toString()),
    { timeout: 15_000, message: `convergence: yjs=${JSON.stringify(yclient.text.toString())} concord=${JSON.stringify(providers[0].text)}` },
  );
}

test('a plain Yjs client and concord-client users edit one room and converge', async () => {
  const room = roomName('yjs');
  const alice = await concordUser(room);
  alice.insert(0, 'Concord and Yjs: ');
  await waitFor(() => alice.pendingCount === 0, { message: 'alice acked' });

  const yjs = new YjsClient(server.url, room);
  await waitFor(() => yjs.synced, { message: 'yjs synced' });
  assert.equal(yjs.frames[0], 'sync', 'sync is always the first frame');
  assert.equal(yjs.text.toString(), 'Concord and Yjs: ');

  const bob = await concordUser(room);
  // Everyone types at once, at the same spot and elsewhere.
  for (let i = 0; i < 30; i++) {
    yjs.text.insert(yjs.text.length, `y${i} `);
    alice.insert(alice.length, `a${i} `);
    bob.insert(0, i % 2 ? '😀' : 'b');
    if (i % 5 === 4) {
      yjs.text.delete(0, 1);
      alice.delete(0, 1);
    }
    await new Promise((r) => setImmediate(r));
  }
  await converge(yjs, alice, bob);
  assertSameDocument(yjs, alice);
  assertSameDocument(yjs, bob);
});

test('Yjs edits reach concord-client as change ranges, and concord edits reach Yjs', async () => {
  const room = roomName('yjs-ranges');
  const yjs = new YjsClient(server.url, room);
  await waitFor(() => yjs.synced, { message: 'yjs synced' });
  const carol = await concordUser(room);
  const ranges = [];
  carol.on('change', ({ changes, remote }) => remote && ranges.push(...changes));

  yjs.text.insert(0, 'hello world');
  await waitFor(() => carol.text === 'hello world', { message: 'carol sees yjs' });
  yjs.doc.transact(() => {
    yjs.text.delete(6, 5);
    yjs.text.insert(6, 'there 🌍');
  });
  await waitFor(() => carol.text === 'hello there 🌍', { message: 'carol sees the replace' });
  assert.deepEqual(ranges, [
    { index: 0, delete: 0, insert: 'hello world' },
    { index: 6, delete: 5, insert: 'there 🌍' },
  ]);

  carol.replace(0, 5, 'HELLO');
  await waitFor(() => yjs.text.toString() === 'HELLO there 🌍', { message: 'yjs sees carol' });
  await converge(yjs, carol);
  assertSameDocument(yjs, carol);
});

test('a concord user offline while a Yjs client edits catches up on reconnect', async () => {
  const room = roomName('yjs-offline');
  const dave = await concordUser(room);
  const yjs = new YjsClient(server.url, room);
  await waitFor(() => yjs.synced, { message: 'yjs synced' });
  dave.disconnect();
  dave.insert(0, 'offline words');
  yjs.text.insert(0, 'online words ');
  dave.connect();
  await converge(yjs, dave);
  assertSameDocument(yjs, dave);
  assert.match(dave.text, /online words /);
  assert.match(dave.text, /offline words/);
});
