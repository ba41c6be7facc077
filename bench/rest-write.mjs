// What one REST write costs in a large room: median and p99 latency, server CPU per request.
//
//   node bench/rest-write.mjs <concord binary> [writes, default 400] [characters, default 100000]
//
// Starts the binary on a free loopback port with a fresh SQLite store (the server pinned to
// CPU 0, this client to CPU 1 where there are two), fills room `bench` with `characters`
// characters, then sends `writes` one-character writes one after the other, each answered
// once durable, in two ways: `POST /api/rooms/bench/update` (a binary Yjs update, made here
// with the yjs package: the room's own write path) and `POST /api/rooms/bench/edits` (a
// positional edit, which the server first rebases through history). Server CPU is its utime +
// stime from /proc over the timed writes, divided by their number. Run it for two binaries in
// one session to compare them.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(new URL('../web/package.json', import.meta.url));
const Y = require('yjs');

const [binary, writesArg, charsArg] = process.argv.slice(2);
const writes = Number(writesArg ?? 400);
const chars = Number(charsArg ?? 100_000);
const twoCores = cpus().length >= 2;
if (twoCores) execFileSync('taskset', ['-pc', '1', String(process.pid)], { stdio: 'ignore' });

const port = await new Promise((resolve) => {
  const s = createServer().listen(0, '127.0.0.1', () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  });
});
const work = mkdtempSync(join(tmpdir(), 'concord-rest-'));
const env = { ...process.env, HOST: '127.0.0.1', PORT: String(port), RUST_LOG: 'warn',
  DATABASE_URL: `sqlite://${work}/bench.db`, ROOM_IDLE_SECS: '3600' };
const server = twoCores
  ? spawn('taskset', ['-c', '0', binary], { env, stdio: 'ignore' })
  : spawn(binary, { env, stdio: 'ignore' });
const base = `http://127.0.0.1:${port}/api/rooms/bench`;

const cpuSeconds = () => {
  const fields = readFileSync(`/proc/${server.pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ
};
const post = async (path, body, type) => {
  const res = await fetch(base + path, { method: 'POST', body, headers: { 'content-type': type } });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${path}: ${res.status} ${text.slice(0, 200)}`);
  return JSON.parse(text).seq;
};

async function timed(label, write) {
  for (let i = 0; i < 20; i++) await write(i); // warm up
  const times = [];
  const before = cpuSeconds();
  for (let i = 0; i < writes; i++) {
    const start = performance.now();
    await write(i);
    times.push(performance.now() - start);
  }
  const cpu = cpuSeconds() - before;
  times.sort((a, b) => a - b);
  const round = (x) => Math.round(x * 1000) / 1000;
  console.log(JSON.stringify({ binary, path: label, characters: chars, writes,
    median_ms: round(times[times.length >> 1]), p99_ms: round(times[Math.ceil(times.length * 0.99) - 1]),
    server_cpu_ms_per_write: round((cpu / writes) * 1000) }));
}

try {
  for (let i = 0; i < 200; i++) {
    try { await fetch(`http://127.0.0.1:${port}/healthz`); break; } catch { await new Promise((r) => setTimeout(r, 50)); }
  }
  const doc = new Y.Doc();
  const text = doc.getText('body');
  let pending = [];
  doc.on('update', (u) => pending.push(u));
  const send = async () => {
    const update = Y.mergeUpdates(pending);
    pending = [];
    return post('/update?format=v1', update, 'application/octet-stream');
  };
  for (let n = 0; n < chars; n += 10_000) {
    text.insert(n, 'abcdefghij'.repeat(Math.min(1000, (chars - n) / 10)));
    await send();
  }
  await timed('update', async (i) => {
    text.insert((i * 7919) % text.length, 'x');
    await send();
  });
  let { seq } = await (await fetch(`${base}/text`)).json();
  await timed('edits', async (i) => {
    const body = JSON.stringify({ base_seq: seq, edits: [{ index: (i * 7919) % chars, insert: 'x' }] });
    seq = await post('/edits', body, 'application/json');
  });
} finally {
  server.kill('SIGTERM');
  await new Promise((r) => server.on('exit', r));
  rmSync(work, { recursive: true, force: true });
}
