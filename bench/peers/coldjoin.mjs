// Cold joins, the client side of bench/peers/coldjoin.sh (loopback only).
//
//   node coldjoin.mjs doc <dir>                      the test document: <dir>/doc.v1, <dir>/doc.v2
//   node coldjoin.mjs seed-hocuspocus <db> <prefix> <n> <dir>   rows for Hocuspocus's SQLite
//   node coldjoin.mjs join <ws-url> <prefix> <n> [hocuspocus|y-websocket]  each room once, in turn
//
// The document is the text of the automerge-paper trace (104,852 characters) as Yjs builds it
// by replaying the trace's 259,778 edits, so its structure is a real editing history's, not one
// big insert. A join is timed from opening the socket to the arrival of the server's sync step 2
// (the socket opened, the server loaded the room from its store and sent its state), with the
// frames the stock providers send (y-websocket: sync step 1; Hocuspocus: Auth, then sync step 1)
// and nothing applied, so the time is the server's and the network's. One room at a time, each
// room joined once: every join is cold.
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const web = path.resolve(here, '../../web');
const requireWeb = createRequire(path.join(web, 'package.json'));
const Y = await import(requireWeb.resolve('yjs'));
const WebSocket = requireWeb('ws');

const [cmd, ...args] = process.argv.slice(2);

if (cmd === 'doc') {
  const [dir] = args;
  const file = path.resolve(here, '../../testdata/traces/seq-automerge-paper.json.gz');
  const trace = JSON.parse(zlib.gunzipSync(fs.readFileSync(file)).toString('utf8'));
  const doc = new Y.Doc();
  doc.clientID = 1;
  const text = doc.getText('body');
  for (const t of trace.txns) {
    for (const [pos, del, ins] of t.patches) {
      if (del) text.delete(pos, del);
      if (ins) text.insert(pos, ins);
    }
  }
  if (text.toString() !== trace.endContent) throw new Error('the replayed text differs from endContent');
  fs.writeFileSync(path.join(dir, 'doc.v1'), Y.encodeStateAsUpdate(doc));
  fs.writeFileSync(path.join(dir, 'doc.v2'), Y.encodeStateAsUpdateV2(doc));
  console.log(`${text.length} characters, v1 ${fs.statSync(path.join(dir, 'doc.v1')).size} bytes`);
} else if (cmd === 'seed-hocuspocus') {
  // What @hocuspocus/extension-sqlite stores: one row per document, its v1 state.
  const [db, prefix, n, dir] = args;
  const requirePeers = createRequire(path.join(here, 'package.json'));
  const Database = requirePeers('better-sqlite3');
  const { schema } = await import(requirePeers.resolve('@hocuspocus/extension-sqlite'));
  const sqlite = new Database(db);
  sqlite.exec(schema);
  const insert = sqlite.prepare('INSERT INTO "documents" ("name", "data") VALUES (?, ?)');
  const state = fs.readFileSync(path.join(dir, 'doc.v1'));
  for (let i = 0; i < Number(n); i++) insert.run(`${prefix}-${i}`, state);
  sqlite.close();
} else if (cmd === 'join') {
  const [url, prefix, n, protocol = 'hocuspocus'] = args;
  const ms = [];
  let chars = 0;
  for (let i = 0; i < Number(n); i++) {
    const name = `${prefix}-${i}`;
    const t0 = performance.now();
    const state = await join(protocol, url, name);
    ms.push(performance.now() - t0);
    if (i === 0) {
      // Outside the timing: the reply really is the seeded document.
      const doc = new Y.Doc();
      Y.applyUpdate(doc, state);
      chars = doc.getText('body').length;
    }
  }
  if (chars < 100_000) throw new Error(`joined a document of ${chars} characters: the room was not seeded`);
  ms.sort((a, b) => a - b);
  const at = (q) => ms[Math.min(ms.length - 1, Math.floor(q * ms.length))];
  console.log(JSON.stringify({ joins: ms.length, chars, median: at(0.5), p90: at(0.9), min: ms[0], max: ms[ms.length - 1] }));
  process.exit(0);
} else {
  console.error('usage: coldjoin.mjs doc <dir> | seed-hocuspocus <db> <prefix> <n> <dir> | join <ws-url> <prefix> <n> [hocuspocus|y-websocket]');
  process.exit(2);
}

/** lib0 encoding, enough for these frames. */
function varUint(n) {
  const out = [];
  while (n > 0x7f) {
    out.push(0x80 | (n & 0x7f));
    n >>>= 7;
  }
  out.push(n);
  return out;
}
function varString(str) {
  const bytes = [...Buffer.from(str, 'utf8')];
  return [...varUint(bytes.length), ...bytes];
}
function readVarUint(bytes, pos) {
  let n = 0;
  let shift = 0;
  for (;;) {
    const b = bytes[pos++];
    n += (b & 0x7f) * 2 ** shift;
    shift += 7;
    if (b < 0x80) return [n, pos];
  }
}

/**
 * Joins `name` as a fresh replica does (an empty state vector in sync step 1) and resolves with
 * the state in the server's step 2, as soon as that frame has arrived, without applying it.
 */
function join(protocol, url, name) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(protocol === 'y-websocket' ? `${url}/${name}` : url);
    ws.binaryType = 'nodebuffer';
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`${name}: no sync step 2 within 30 s`));
    }, 30_000);
    const step1 = [0, 0, ...varUint(1), 0]; // Sync, step 1, state vector: no clients
    ws.on('open', () => {
      if (protocol === 'y-websocket') {
        ws.send(Buffer.from(step1));
      } else {
        // Hocuspocus: Auth/Token (no token, provider 4.8.0), then Sync step 1, as the provider does.
        ws.send(Buffer.from([...varString(name), 2, 0, ...varString(''), ...varString('4.8.0')]));
        ws.send(Buffer.from([...varString(name), ...step1]));
      }
    });
    ws.on('message', (data) => {
      const bytes = new Uint8Array(data);
      let pos = 0;
      if (protocol !== 'y-websocket') {
        const [len, at] = readVarUint(bytes, 0);
        pos = at + len; // the document name
      }
      if (bytes[pos] !== 0 || bytes[pos + 1] !== 1) return; // not Sync step 2
      const [len, at] = readVarUint(bytes, pos + 2);
      clearTimeout(timer);
      ws.terminate();
      resolve(bytes.subarray(at, at + len));
    });
    ws.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}
