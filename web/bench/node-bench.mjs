// The WebAssembly engine against Yjs in Node, on real editing traces: `node web/bench/node-bench.mjs`.
//
// Traces: every sequential trace (`seq-*.json.gz`) in $CONCORD_TRACES or the repository's
// testdata/traces (see its README: automerge-paper, the "B4" trace of crdt-benchmarks, and the
// other sequential traces of the public editing-traces collection), one after another.
// Needs web/pkg (`bash scripts/build-wasm.sh`) and web/node_modules (`bash scripts/ensure-npm.sh`).
//
// Measured side by side in one process, each case once (or --runs times), on fresh documents:
// - local: every patch applied as a local edit. Yjs: one `ydoc.transact` per patch. WASM
//   `Document.replace` per patch (one yrs transaction and one encoded update each). WASM
//   `ClientSession` insert/delete with `flush()` every 16 edits, online (each flush is one `op`
//   frame, drained with `pollTransmit`) and offline (flushes merge into one pending op).
// - remote: the v2 update of every Yjs transaction, precomputed, applied to a fresh replica.
//   Yjs `Y.applyUpdateV2` per update; WASM `Document.applyUpdate` per update; WASM
//   `Document.applyUpdates` with batches of 16 and 256 (merged, one transaction per batch);
//   WASM `ClientSession.handleFrame` per `op` frame (JSON + base64, as from the socket), and
//   `handleFrames` with bursts of 16 and 256 frames (what the provider does with frames that
//   arrive together).
// Every case checks its final text against the trace's endContent.
//
// Options: --trace=NAME (one trace, e.g. --trace=rustcode), --runs=N (run each case N times on
// fresh documents and keep the fastest: on the small traces a single run mostly measures the
// JIT warming up), --patches=N (first N patches only, for a quick look), --skip-slow (skip the
// per-update WASM cases).

import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import * as Y from 'yjs';
import { initSync, Document, ClientSession } from '../pkg/concord_wasm.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const checkout = path.resolve(here, '../..');
initSync({ module: fs.readFileSync(path.join(here, '../pkg/concord_wasm_bg.wasm')) });

const args = Object.fromEntries(
  process.argv.slice(2).map((a) => {
    const [k, v] = a.replace(/^--/, '').split('=');
    return [k, v ?? true];
  }),
);

function tracesDir() {
  const candidates = [process.env.CONCORD_TRACES, path.resolve(checkout, 'testdata/traces')];
  const dir = candidates.find((d) => d && fs.existsSync(path.join(d, 'seq-automerge-paper.json.gz')));
  if (!dir) {
    console.error(`seq-automerge-paper.json.gz not found; set CONCORD_TRACES (looked in ${candidates.filter(Boolean).join(', ')})`);
    process.exit(2);
  }
  return dir;
}

const dir = tracesDir();
const traceFiles = fs
  .readdirSync(dir)
  .filter((f) => /^seq-.*\.json\.gz$/.test(f))
  .filter((f) => !args.trace || f === `seq-${args.trace}.json.gz`)
  .sort();
if (traceFiles.length === 0) {
  console.error(`no trace seq-${args.trace}.json.gz in ${dir}`);
  process.exit(2);
}

const summary = [];
for (const file of traceFiles) summary.push(benchTrace(path.join(dir, file)));

if (summary.length > 1) {
  const cases = summary[0].rows.filter(([, , , , yjs]) => !yjs);
  console.log('');
  console.log('Summary: time / Yjs time for the same path, per trace.');
  console.log('');
  console.log(`| case | ${summary.map((t) => t.name).join(' | ')} |`);
  console.log(`|---|${summary.map(() => '---:').join('|')}|`);
  for (const [kind, name] of cases) {
    const cells = summary.map((t) => {
      const row = t.rows.find((r) => r[0] === kind && r[1] === name);
      return row[2] === null ? 'skipped' : `${(row[2] / row[3]).toFixed(2)}x`;
    });
    console.log(`| ${kind}: ${name} | ${cells.join(' | ')} |`);
  }
}

function benchTrace(traceFile) {
  const name = path.basename(traceFile).replace(/^seq-/, '').replace(/\.json\.gz$/, '');
  const trace = JSON.parse(zlib.gunzipSync(fs.readFileSync(traceFile)).toString('utf8'));
  let patches = trace.txns.flatMap((t) => t.patches);
  let endContent = trace.endContent;
  if (args.patches) {
    patches = patches.slice(0, Number(args.patches));
    endContent = null; // computed by the Yjs run below
  }
  const start = trace.startContent ?? '';

  const results = [];
  const runs = Number(args.runs ?? 1);
  function time(label, fn) {
    let ms = Infinity;
    let text;
    for (let run = 0; run < runs; run++) {
      global.gc?.();
      const t0 = performance.now();
      text = fn();
      ms = Math.min(ms, performance.now() - t0);
    }
    if (endContent !== null && text !== endContent) throw new Error(`${name}, ${label}: final text differs from endContent`);
    results.push({ label, ms });
    console.error(`  ${label}: ${ms.toFixed(0)} ms`);
    return ms;
  }

  console.error(`trace ${name}: ${patches.length} patches; node ${process.version}`);

  // ---- local edits ---------------------------------------------------------------------------

  const yUpdates = [];
  const yLocal = time('local Yjs transact per patch', () => {
    yUpdates.length = 0; // each run records the same updates again
    const ydoc = new Y.Doc();
    ydoc.clientID = 1;
    const ytext = ydoc.getText('body');
    if (start) ytext.insert(0, start);
    ydoc.on('updateV2', (u) => yUpdates.push(u));
    for (const [pos, del, ins] of patches) {
      ydoc.transact(() => {
        if (del) ytext.delete(pos, del);
        if (ins) ytext.insert(pos, ins);
      });
    }
    const text = ytext.toString();
    if (endContent === null) endContent = text;
    return text;
  });

  const wasmReplace = args['skip-slow']
    ? null
    : time('local WASM Document.replace per patch', () => {
        const doc = new Document(2);
        if (start) doc.insert(0, start);
        for (const [pos, del, ins] of patches) doc.replace(pos, del, ins);
        const text = doc.text();
        doc.free();
        return text;
      });

  /** A session that is online: it has applied an (empty) sync frame. */
  function onlineSession(id) {
    const s = new ClientSession(id, `bench-${id}`);
    s.connect();
    s.handleFrame(JSON.stringify({ t: 'sync', state: Buffer.from(new Document(99).encodeStateAsUpdate()).toString('base64'), seq: 0 }));
    while (s.pollEvent() !== undefined);
    return s;
  }

  function typeInto(s, drain) {
    if (start) s.insert(0, start);
    let n = 0;
    for (const [pos, del, ins] of patches) {
      if (del) s.delete(pos, del);
      if (ins) s.insert(pos, ins);
      if (++n % 16 === 0) {
        s.flush();
        drain();
      }
    }
    s.flush();
    drain();
    const text = s.text();
    s.free();
    return text;
  }

  let frames = 0;
  const wasmSessionOnline = time('local WASM ClientSession, flush/16, online', () => {
    frames = 0;
    const s = onlineSession(3);
    return typeInto(s, () => {
      while (s.pollTransmit() !== undefined) frames++;
    });
  });
  const wasmSessionOffline = time('local WASM ClientSession, flush/16, offline', () => {
    const s = new ClientSession(4, 'bench-4');
    return typeInto(s, () => {});
  });

  // ---- remote updates ------------------------------------------------------------------------

  const yRemote = time('remote Yjs applyUpdateV2 per update', () => {
    const ydoc = new Y.Doc();
    for (const u of yUpdates) Y.applyUpdateV2(ydoc, u);
    return ydoc.getText('body').toString();
  });

  const wasmApply = args['skip-slow']
    ? null
    : time('remote WASM Document.applyUpdate per update', () => {
        const doc = new Document(5);
        for (const u of yUpdates) doc.applyUpdate(u);
        const text = doc.text();
        doc.free();
        return text;
      });

  function batched(size) {
    return () => {
      const doc = new Document(6);
      for (let i = 0; i < yUpdates.length; i += size) doc.applyUpdates(yUpdates.slice(i, i + size));
      const text = doc.text();
      doc.free();
      return text;
    };
  }
  const wasmBatch16 = time('remote WASM Document.applyUpdates, batches of 16', batched(16));
  const wasmBatch256 = time('remote WASM Document.applyUpdates, batches of 256', batched(256));

  const opFrames = yUpdates.map((u, i) => JSON.stringify({ t: 'op', seq: i + 1, data: { update: Buffer.from(u).toString('base64') } }));
  const wasmFrames = args['skip-slow']
    ? null
    : time('remote WASM ClientSession.handleFrame per op frame', () => {
        const s = onlineSession(7);
        for (const f of opFrames) {
          s.handleFrame(f);
          while (s.pollEvent() !== undefined);
        }
        const text = s.text();
        s.free();
        return text;
      });

  // What the provider does: frames that arrive together go to the engine together.
  const burstFrames = (size) =>
    time(`remote WASM ClientSession.handleFrames, bursts of ${size} op frames`, () => {
      const s = onlineSession(8);
      for (let i = 0; i < opFrames.length; i += size) {
        s.handleFrames(opFrames.slice(i, i + size));
        while (s.pollEvent() !== undefined);
      }
      const text = s.text();
      s.free();
      return text;
    });
  const wasmBursts16 = burstFrames(16);
  const wasmBursts256 = burstFrames(256);

  // ---- report --------------------------------------------------------------------------------

  const fmt = (ms) => (ms === null ? 'skipped' : `${(ms / 1000).toFixed(2)} s`);
  const ratio = (ms, base) => (ms === null ? '' : `${(ms / base).toFixed(2)}x`);
  const rows = [
    ['local', 'Yjs: `ydoc.transact` per patch', yLocal, yLocal, true],
    ['local', 'WASM `Document.replace` per patch', wasmReplace, yLocal],
    ['local', 'WASM `ClientSession` insert/delete, `flush()` every 16 edits, online', wasmSessionOnline, yLocal],
    ['local', 'WASM `ClientSession` insert/delete, `flush()` every 16 edits, offline', wasmSessionOffline, yLocal],
    ['remote', 'Yjs: `Y.applyUpdateV2` per update', yRemote, yRemote, true],
    ['remote', 'WASM `Document.applyUpdate` per update', wasmApply, yRemote],
    ['remote', 'WASM `Document.applyUpdates`, batches of 16', wasmBatch16, yRemote],
    ['remote', 'WASM `Document.applyUpdates`, batches of 256', wasmBatch256, yRemote],
    ['remote', 'WASM `ClientSession.handleFrame` per `op` frame (JSON + base64)', wasmFrames, yRemote],
    ['remote', 'WASM `ClientSession.handleFrames`, bursts of 16 `op` frames', wasmBursts16, yRemote],
    ['remote', 'WASM `ClientSession.handleFrames`, bursts of 256 `op` frames', wasmBursts256, yRemote],
  ];
  console.log('');
  console.log(`${name}: ${patches.length} patches, ${yUpdates.length} updates; ${frames} op frames sent online; fastest of ${runs} run(s); node ${process.version}; ${new Date().toISOString().slice(0, 10)}`);
  console.log('');
  console.log('| path | case | time | vs Yjs |');
  console.log('|---|---|---:|---:|');
  for (const [kind, label, ms, base] of rows) console.log(`| ${kind} | ${label} | ${fmt(ms)} | ${ratio(ms, base)} |`);
  return { name, rows };
}
