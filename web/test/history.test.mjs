// End-to-end: the demo's History panel (versions, timeline scrubbing, diff, restore, blame) in
// headless Chromium (Debian's /usr/bin/chromium driven by playwright-core) against a real
// `concord` server, with auth off and with accounts.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startServer, waitFor, roomName, repoDir } from './helpers/server.mjs';
import { api, signup, startAccountsServer } from './helpers/auth.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = join(repoDir, 'artifacts');
const VIEWPORT = { width: 1180, height: 760 };

let server;
let browser;

before(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  server = await startServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  await server?.close();
});

async function newContext(t, options = {}) {
  const context = await browser.newContext({ viewport: VIEWPORT, ...options });
  t.after(() => context.close());
  return context;
}

/**
 * Opens the demo on `room` as `name` (the presence name, hence the author of its edits), or
 * signed in with `account` ({token, user}) in accounts mode. Records uncaught errors.
 */
async function openDemo(context, origin, room, { name, account } = {}) {
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e));
  page.on('console', (m) => {
    if (m.type() === 'error') page.errors.push(new Error(m.text()));
  });
  await page.addInitScript(({ name, account }) => {
    if (name && !sessionStorage.getItem('concord-me')) sessionStorage.setItem('concord-me', JSON.stringify({ name, color: '#0891b2' }));
    if (account) {
      localStorage.setItem('concord-token', account.token);
      localStorage.setItem('concord-user', JSON.stringify(account.user));
    }
  }, { name, account });
  await page.goto(`${origin}/?room=${room}`);
  await page.waitForFunction(() => window.concord?.provider?.status === 'online', null, { timeout: 15_000 });
  return page;
}

function noErrors(...pages) {
  for (const page of pages) assert.deepEqual(page.errors.map(String), [], 'errors in the page');
}

/** Every tab shows `text` in its editor, with nothing pending. */
async function allShow(text, ...pages) {
  let seen;
  await waitFor(
    async () => {
      seen = await Promise.all(pages.map((p) => p.evaluate(() => ({
        value: window.concord.textarea.value,
        text: window.concord.provider.text,
        pending: window.concord.provider.pendingCount,
      }))));
      return seen.every((s) => s.value === text && s.text === text && s.pending === 0);
    },
    { timeout: 15_000, message: () => `every tab showing ${JSON.stringify(text)}: ${JSON.stringify(seen)}` },
  );
}

async function typeAtEnd(page, text) {
  await page.evaluate(() => {
    const t = window.concord.textarea;
    t.focus();
    t.setSelectionRange(t.value.length, t.value.length);
  });
  await page.keyboard.type(text);
  await page.waitForFunction(() => window.concord.provider.pendingCount === 0);
}

test('history panel: save a version, scrub back to it read-only, see the changes, restore in every tab, blame on hover', async (t) => {
  const context = await newContext(t);
  const room = roomName('history');
  const a = await openDemo(context, server.http, room, { name: 'Ada' });
  const b = await openDemo(context, server.http, room, { name: 'Grace' });
  await a.bringToFront(); // a background tab gets no animation frames: Playwright's clicks would wait

  // Closed, the panel takes no room and the editor is live.
  assert.equal(await a.isHidden('#history'), true);
  assert.equal(await a.isHidden('#history-view'), true);

  await typeAtEnd(a, 'hello world');
  await allShow('hello world', a, b);

  // Open History and save "v1" (author: the presence name).
  await a.click('#history-toggle');
  await a.locator('#history').waitFor({ state: 'visible' });
  assert.equal(await a.getAttribute('#history-toggle', 'aria-expanded'), 'true');
  await a.fill('#version-label', 'v1');
  await a.click('#save-version');
  const v1 = a.locator('#versions button', { hasText: 'v1' });
  await v1.waitFor();
  assert.match(await v1.textContent(), /v1.*Ada/);
  const v1Seq = Number(await v1.getAttribute('data-seq'));
  assert.ok(v1Seq > 0, `v1 at seq ${v1Seq}`);

  // More text; the slider's head follows the edits.
  await typeAtEnd(a, ' and more');
  await allShow('hello world and more', a, b);
  const { body: timeline } = await api(server, 'GET', `/rooms/${room}/timeline`);
  const head = timeline.head_seq;
  assert.ok(head > v1Seq, `head ${head} after v1 at ${v1Seq}`);
  await a.waitForFunction((head) => {
    const s = document.getElementById('history-slider');
    return Number(s.max) === head && s.value === s.max;
  }, head);

  // Scrub back with the keyboard to v1's seq: the text then, read-only, over the live editor.
  await a.focus('#history-slider');
  for (let seq = head; seq > v1Seq; seq -= 1) await a.keyboard.press('ArrowLeft');
  assert.equal(Number(await a.inputValue('#history-slider')), v1Seq);
  await a.locator('#history-view').waitFor({ state: 'visible' });
  await a.waitForFunction(() => document.getElementById('history-text').textContent === 'hello world');
  assert.equal(await a.getAttribute('#history-text', 'aria-readonly'), 'true');
  assert.match(await a.textContent('#history-caption'), new RegExp(`seq ${v1Seq} of ${head}.*read-only`));
  assert.match(await a.getAttribute('#history-slider', 'aria-valuetext'), new RegExp(`seq ${v1Seq} of ${head}`));
  // The live editor keeps syncing underneath.
  assert.equal(await a.evaluate(() => window.concord.textarea.value), 'hello world and more');

  // "Back to now" leaves the past; clicking the version shows what changed since.
  await a.click('#history-now');
  await a.locator('#history-view').waitFor({ state: 'hidden' });
  await v1.click();
  assert.equal(await v1.getAttribute('aria-pressed'), 'true');
  await a.waitForFunction(() => document.querySelector('#history-text ins')?.textContent === ' and more');
  assert.equal(await a.textContent('#history-text'), 'hello world and more');
  assert.equal(await a.locator('#history-text del').count(), 0);
  assert.equal(await a.locator('#history-text ins').evaluate((e) => getComputedStyle(e).textDecorationLine), 'none');
  await a.screenshot({ path: join(ARTIFACTS, 'history-diff.png') });
  const docsShot = join(repoDir, 'docs', 'history.png');
  if (process.env.CONCORD_UPDATE_SCREENSHOTS === '1' || !existsSync(docsShot)) {
    await a.locator('.page').screenshot({ path: docsShot });
  }

  // Restore v1: an ordinary edit, so both tabs converge to it.
  assert.match(await a.textContent('#history-restore'), /Restore “v1”/);
  await a.click('#history-restore');
  await allShow('hello world', a, b);
  await a.locator('#history-view').waitFor({ state: 'hidden' });
  assert.match(await a.textContent('#history-status'), /Restored “v1”/);

  // The changes since v1 are now none, and removed text shows struck through from an older point.
  await a.waitForFunction((h) => Number(document.getElementById('history-slider').max) > h, head);
  await a.focus('#history-slider');
  await a.keyboard.press('ArrowLeft'); // just before the restore
  await a.click('#view-changes');
  await a.waitForFunction(() => document.querySelector('#history-text del')?.textContent === ' and more');
  assert.equal(await a.locator('#history-text del').evaluate((e) => getComputedStyle(e).textDecorationLine), 'line-through');

  // Who wrote what: hover a run, the tooltip names its author.
  await a.click('#view-authors');
  const run = a.locator('#history-text .run').first();
  await run.waitFor();
  assert.equal(await a.textContent('#history-text'), 'hello world');
  await run.hover();
  await a.locator('#blame-tip').waitFor({ state: 'visible' });
  assert.match(await a.textContent('#blame-tip'), /^Ada /);
  assert.match(await a.textContent('#history-legend'), /Ada/);
  await a.screenshot({ path: join(ARTIFACTS, 'history-blame.png') });
  await a.emulateMedia({ colorScheme: 'dark' });
  await a.screenshot({ path: join(ARTIFACTS, 'history-blame-dark.png') });
  await a.emulateMedia({ colorScheme: 'light' });

  // Back to now, then closed: the page is the plain demo again, and still live.
  await a.click('#history-now');
  await a.click('#history-close');
  assert.equal(await a.isHidden('#history'), true);
  assert.equal(await a.isHidden('#history-view'), true);
  await typeAtEnd(b, '!');
  await allShow('hello world!', a, b);
  noErrors(a, b);
});

test('history panel with accounts: the token is sent, the author is the account, a reader may look but not save or restore', async (t) => {
  const authed = await startAccountsServer();
  t.after(() => authed.close());
  const [owner, reader] = await Promise.all([signup(authed, 'ada'), signup(authed, 'bob')]);
  const created = await api(authed, 'POST', '/api/docs', owner.token, { title: 'Notes' });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const room = created.body.doc.id;
  const granted = await api(authed, 'PUT', `/api/docs/${room}/grants/${reader.user.id}`, owner.token, { role: 'read' });
  assert.ok(granted.status < 300, JSON.stringify(granted));

  const a = await openDemo(await newContext(t), authed.http, room, { account: owner });
  const b = await openDemo(await newContext(t), authed.http, room, { account: reader });
  await typeAtEnd(a, 'draft one');
  await allShow('draft one', a, b);

  await a.click('#history-toggle');
  await a.fill('#version-label', 'first');
  await a.click('#save-version');
  const saved = a.locator('#versions button', { hasText: 'first' });
  await saved.waitFor();
  // The server names the signed-in account, whatever the body says.
  assert.match(await saved.textContent(), new RegExp(owner.user.name));

  // The reader sees the versions and the authors, and cannot save or restore.
  await b.waitForFunction(() => window.concord.provider.role === 'read');
  await b.click('#history-toggle');
  const seen = b.locator('#versions button', { hasText: 'first' });
  await seen.waitFor();
  assert.equal(await b.isDisabled('#save-version'), true);
  await seen.click();
  await b.locator('#history-view').waitFor({ state: 'visible' });
  assert.equal(await b.isDisabled('#history-restore'), true);
  await b.click('#view-authors');
  await b.locator('#history-text .run').first().hover();
  await b.locator('#blame-tip').waitFor({ state: 'visible' });
  assert.match(await b.textContent('#blame-tip'), new RegExp(owner.user.name));
  assert.equal(await b.textContent('#history-message'), '');
  noErrors(a, b);
});
