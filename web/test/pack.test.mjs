// concord-client as users get it: `npm pack`, install the tarball into a fresh project,
// import it by name from Node, connect to a real server, edit, converge.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { startServer, webDir, roomName } from './helpers/server.mjs';

const run = promisify(execFile);
let server;
let dir;

before(async () => {
  server = await startServer();
  dir = await mkdtemp(join(tmpdir(), 'concord-pack-'));
});
after(async () => {
  await server?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('the packed tarball installs into a fresh project and works from Node', { timeout: 120_000 }, async () => {
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', dir], { cwd: webDir });
  const [info] = JSON.parse(stdout);
  const files = info.files.map((f) => f.path).sort();
  for (const expected of [
    'package.json',
    'pkg/concord_wasm.js',
    'pkg/concord_wasm_bg.wasm',
    'src/index.js',
    'src/index.d.ts',
    'src/codemirror.js',
    'src/codemirror.d.ts',
    'src/textarea.js',
  ]) {
    assert.ok(files.includes(expected), `${expected} missing from the tarball: ${files.join(', ')}`);
  }
  assert.ok(!files.some((f) => f.startsWith('test/') || f.startsWith('node_modules/')), 'tests or node_modules packed');

  const project = join(dir, 'app');
  await run('mkdir', ['-p', project]);
  await writeFile(join(project, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  await run('npm', ['install', join(dir, info.filename), '--no-audit', '--no-fund', '--loglevel=error'], { cwd: project });
  const installed = await readdir(join(project, 'node_modules'));
  assert.deepEqual(installed.filter((n) => !n.startsWith('.')), ['concord-client'], 'no dependencies pulled in');

  // The app: two users in one room, by package name (ws comes from this repo: Node 20 has no
  // global WebSocket).
  const ws = pathToFileURL(join(webDir, 'node_modules/ws/wrapper.mjs')).href;
  await writeFile(
    join(project, 'app.mjs'),
    `
import WebSocket from ${JSON.stringify(ws)};
import { createProvider } from 'concord-client';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
const [url, room] = process.argv.slice(2);
const cm = fileURLToPath(import.meta.resolve('concord-client/codemirror'));
if (!existsSync(cm)) throw new Error('concord-client/codemirror does not resolve');
const options = { WebSocket, persistence: false };
const a = await createProvider(url, room, options);
const b = await createProvider(url, room, options);
await Promise.all([a.whenSynced(), b.whenSynced()]);
a.insert(0, 'from the tarball');
b.insert(0, '>> ');
const deadline = Date.now() + 10000;
while (!(a.pendingCount === 0 && b.pendingCount === 0 && a.text === b.text && a.text.length === 19)) {
  if (Date.now() > deadline) throw new Error('no convergence: ' + JSON.stringify([a.text, b.text]));
  await new Promise((r) => setTimeout(r, 10));
}
console.log(JSON.stringify({ text: a.text }));
await a.destroy();
await b.destroy();
`,
  );
  const out = await run(process.execPath, ['app.mjs', server.url, roomName('pack')], { cwd: project, timeout: 30_000 });
  const { text } = JSON.parse(out.stdout.trim().split('\n').at(-1));
  assert.ok(text === '>> from the tarball' || text === 'from the tarball>> ', text);
});
