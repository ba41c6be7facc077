// Stock Yjs editors in headless Chromium against Concord, as apps ship them: Tiptap through
// `HocuspocusProvider` on /hocuspocus, and CodeMirror 6 with y-codemirror.next through
// `WebsocketProvider` on /yjs. Each page is bundled here with esbuild from the npm packages.
// Two pages type at once, converge, and show each other's cursor.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from 'esbuild';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';
import { createProvider } from '../src/index.js';
import { startServer, waitFor, roomName, webDir, repoDir } from './helpers/server.mjs';
import { serveStatic } from './helpers/static.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = join(repoDir, 'artifacts');

let server;
let statics;
let browser;
let pages;

/** Bundles web/test/pages/<name>.js beside a copy of the page's HTML, under `root/<name>/`. */
async function bundle(root, name) {
  const dir = join(root, name);
  await mkdir(dir, { recursive: true });
  await build({
    entryPoints: [join(webDir, 'test/pages', `${name}.js`)],
    bundle: true,
    format: 'esm',
    outfile: join(dir, 'bundle.js'),
    logLevel: 'warning',
  });
  await copyFile(join(webDir, 'test/pages/yjs-editor.html'), join(dir, 'index.html'));
}

before(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  pages = await mkdtemp(join(tmpdir(), 'concord-yjs-pages-'));
  await bundle(pages, 'tiptap');
  await bundle(pages, 'ycodemirror');
  server = await startServer();
  statics = await serveStatic(pages);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
});

after(async () => {
  await browser?.close();
  await statics?.close();
  await server?.close();
  if (pages) await rm(pages, { recursive: true, force: true });
});

async function open(t, path, params) {
  const context = await browser.newContext({ viewport: { width: 900, height: 500 } });
  t.after(() => context.close());
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e));
  await page.goto(`${statics.url}/${path}/index.html?${new URLSearchParams(params)}`);
  await page.waitForFunction(() => window.app, null, { timeout: 15_000 });
  return page;
}

test('Tiptap through HocuspocusProvider: two pages type, converge, see each other\'s caret', async (t) => {
  const room = roomName('tiptap');
  const url = `${server.url}/hocuspocus`;
  const ada = await open(t, 'tiptap', { url, room, name: 'Ada', color: '#e11d48' });
  const bob = await open(t, 'tiptap', { url, room, name: 'Bob', color: '#2563eb' });
  for (const p of [ada, bob]) await p.waitForFunction(() => window.app.provider.synced, null, { timeout: 15_000 });
  await ada.locator('.ProseMirror').click();
  await ada.keyboard.type('Ada writes here. ');
  await bob.locator('.ProseMirror').click();
  await bob.keyboard.press('End');
  await Promise.all([ada.keyboard.type('More from Ada.'), bob.keyboard.type(' And Bob.')]);
  const text = (p) => p.evaluate(() => window.app.editor.getText());
  await waitFor(async () => (await text(ada)) === (await text(bob)) && /More from Ada/.test(await text(ada)) && /And Bob/.test(await text(ada)), {
    timeout: 15_000,
    message: async () => `ada=${await text(ada)} bob=${await text(bob)}`,
  });
  // Each sees the other's caret, labelled with the other's name.
  await ada.waitForFunction(() => [...document.querySelectorAll('.collaboration-carets__label')].some((l) => l.textContent === 'Bob'), null, { timeout: 10_000 });
  await bob.waitForFunction(() => [...document.querySelectorAll('.collaboration-carets__label')].some((l) => l.textContent === 'Ada'), null, { timeout: 10_000 });
  // Everything typed is durable (SyncStatus after commit).
  for (const p of [ada, bob]) await p.waitForFunction(() => !window.app.provider.hasUnsyncedChanges, null, { timeout: 10_000 });
  await ada.screenshot({ path: join(ARTIFACTS, 'tiptap-hocuspocus.png') });
  assert.deepEqual([...ada.errors, ...bob.errors].map(String), []);
});

test('CodeMirror 6 with y-codemirror.next through WebsocketProvider: converge with each other and a concord-client user, carets shown', async (t) => {
  const room = roomName('ycm');
  const url = `${server.url}/yjs`;
  const ada = await open(t, 'ycodemirror', { url, room, name: 'Ada' });
  const bob = await open(t, 'ycodemirror', { url, room, name: 'Bob', color: '#16a34a' });
  for (const p of [ada, bob]) await p.waitForFunction(() => window.app.provider.synced, null, { timeout: 15_000 });
  const carol = await createProvider(server.url, room, { WebSocket, persistence: false });
  t.after(() => carol.destroy());
  await ada.locator('.cm-content').click();
  await ada.keyboard.type('let a = 1;\n');
  await bob.locator('.cm-content').click();
  await bob.keyboard.press('Control+End');
  await Promise.all([ada.keyboard.type('// ada'), bob.keyboard.type('// bob')]);
  carol.insert(0, '/* carol */ ');
  const text = (p) => p.evaluate(() => window.app.view.state.doc.toString());
  await waitFor(async () => {
    const [a, b] = [await text(ada), await text(bob)];
    return a === b && a === carol.text && /ada/.test(a) && /bob/.test(a) && /carol/.test(a);
  }, { timeout: 15_000, message: async () => `ada=${await text(ada)} bob=${await text(bob)} carol=${carol.text}` });
  await ada.waitForFunction(() => document.querySelector('.cm-ySelectionCaret') !== null, null, { timeout: 10_000 });
  await bob.waitForFunction(() => document.querySelector('.cm-ySelectionCaret') !== null, null, { timeout: 10_000 });
  await bob.screenshot({ path: join(ARTIFACTS, 'codemirror-y-websocket.png') });
  assert.deepEqual([...ada.errors, ...bob.errors].map(String), []);
});
