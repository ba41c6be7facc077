// End-to-end: demo.html and the CodeMirror binding in headless Chromium (Debian's
// /usr/bin/chromium driven by playwright-core) against a real `concord` server.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startServer, waitFor, roomName, webDir, repoDir } from './helpers/server.mjs';
import { serveStatic } from './helpers/static.mjs';
import { compareStates } from './helpers/crdt.mjs';
import { api, signup, startAccountsServer } from './helpers/auth.mjs';
import WebSocket from 'ws';
import * as Y from 'yjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = join(repoDir, 'artifacts');
const VIEWPORT = { width: 1100, height: 760 };

let server;
let statics;
let browser;

before(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  server = await startServer();
  statics = await serveStatic(webDir);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  await statics?.close();
  await server?.close();
});

/** A fresh browser profile (own IndexedDB); pages opened in it share storage like tabs. */
async function newContext(t, options = {}) {
  const context = await browser.newContext({ viewport: VIEWPORT, ...options });
  t.after(() => context.close());
  return context;
}

/** Opens a page and records its uncaught errors (checked by `noErrors`). */
async function open(context, url) {
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e));
  page.on('console', (m) => {
    if (m.type() === 'error') page.errors.push(new Error(m.text()));
  });
  await page.goto(url);
  return page;
}

async function openDemo(context, room) {
  const page = await open(context, `${server.http}/?room=${room}`);
  await page.waitForFunction(() => window.concord?.provider?.session, null, { timeout: 15_000 });
  return page;
}

function noErrors(...pages) {
  for (const page of pages) assert.deepEqual(page.errors.map(String), [], 'errors in the page');
}

async function waitOnline(...pages) {
  for (const page of pages) {
    await page.waitForFunction(() => window.concord.provider.status === 'online', null, { timeout: 15_000 });
  }
}

/** What a demo tab shows and holds. */
function demoState(page) {
  return page.evaluate(() => {
    const { provider, textarea } = window.concord;
    return {
      value: textarea.value,
      text: provider.text,
      pending: provider.pendingCount,
      status: provider.status,
      state: btoa(String.fromCharCode(...provider.session.encodeStateAsUpdate())),
    };
  });
}

/** All tabs online, nothing pending, each textarea showing its provider's text, all equal. */
async function converged(...pages) {
  let states;
  await waitFor(
    async () => {
      states = await Promise.all(pages.map(demoState));
      return states.every((s) => s.status === 'online' && s.pending === 0 && s.value === s.text && s.text === states[0].text);
    },
    { timeout: 15_000, message: () => JSON.stringify(states) },
  );
  // Byte-equal text, and the same CRDT state.
  for (const s of states.slice(1)) {
    assert.deepEqual(Buffer.from(s.value, 'utf8'), Buffer.from(states[0].value, 'utf8'));
    assert.equal(compareStates(Buffer.from(s.state, 'base64'), Buffer.from(states[0].state, 'base64')), null);
  }
  return states[0].value;
}

async function caretAt(page, pos) {
  await page.evaluate((at) => {
    const t = window.concord.textarea;
    t.focus();
    t.setSelectionRange(at, at);
  }, pos);
}

test('two tabs typing at the same position converge byte-equal', async (t) => {
  const context = await newContext(t);
  const room = roomName('same-spot');
  const a = await openDemo(context, room);
  const b = await openDemo(context, room);
  await waitOnline(a, b);
  await a.click('#editor');
  await a.keyboard.type('[]');
  await converged(a, b);

  await caretAt(a, 1);
  await caretAt(b, 1);
  await Promise.all([a.keyboard.type('alpha one', { delay: 15 }), b.keyboard.type('bravo two', { delay: 15 })]);
  const text = await converged(a, b);
  // Each tab's run stays in one piece; which comes first is the CRDT's (deterministic) call.
  assert.ok(text === '[alpha onebravo two]' || text === '[bravo twoalpha one]', text);
  await a.screenshot({ path: join(ARTIFACTS, 'demo-same-spot.png') });
  noErrors(a, b);
});

test('a tab goes offline with the demo toggle, types, reconnects, and both converge', async (t) => {
  const context = await newContext(t);
  const room = roomName('toggle');
  const a = await openDemo(context, room);
  const b = await openDemo(context, room);
  await waitOnline(a, b);
  await a.click('#editor');
  await a.keyboard.type('Shared line.');
  await converged(a, b);

  await a.click('#toggle');
  await a.waitForFunction(() => window.concord.provider.status === 'offline');
  assert.equal(await a.textContent('#toggle'), 'Reconnect');
  assert.match(await a.textContent('#status'), /Offline/);
  await caretAt(a, 'Shared line.'.length);
  await a.keyboard.type(' Written offline.');
  await caretAt(b, 0);
  await b.keyboard.type('Online: ');
  await b.waitForFunction(() => window.concord.provider.pendingCount === 0);
  assert.match(await a.textContent('#pending'), /1 pending/);
  assert.equal((await demoState(b)).value, 'Online: Shared line.');
  assert.equal((await demoState(a)).value, 'Shared line. Written offline.');
  await a.screenshot({ path: join(ARTIFACTS, 'demo-offline.png') });

  await a.click('#toggle');
  const text = await converged(a, b);
  assert.equal(text, 'Online: Shared line. Written offline.');
  assert.equal(await a.textContent('#toggle'), 'Go offline');
  noErrors(a, b);
});

test('an offline tab reloaded before reconnecting keeps its edits (IndexedDB)', async (t) => {
  const context = await newContext(t);
  const room = roomName('reload');
  const a = await openDemo(context, room);
  const b = await openDemo(context, room);
  await waitOnline(a, b);
  await a.click('#editor');
  await a.keyboard.type('Base. ');
  await converged(a, b);

  await a.click('#toggle');
  await a.waitForFunction(() => window.concord.provider.status === 'offline');
  await caretAt(a, 6);
  await a.keyboard.type('Saved in IndexedDB. ');
  // The debounced save commits; the reload then restores from IndexedDB alone.
  await a.waitForFunction(() => !window.concord.provider.unsaved);
  assert.deepEqual(await a.evaluate(() => Object.keys(localStorage)), []);
  await a.reload();
  await a.waitForFunction(() => window.concord?.provider?.session, null, { timeout: 15_000 });
  assert.equal((await demoState(a)).value, 'Base. Saved in IndexedDB. ');

  // Type and reload at once: the page saves on pagehide (synchronously, to localStorage, as
  // an IndexedDB write may not commit while the page unloads).
  await caretAt(a, 'Base. Saved in IndexedDB. '.length);
  await a.keyboard.type('Reloaded at once.');
  await a.reload();
  await a.waitForFunction(() => window.concord?.provider?.session, null, { timeout: 15_000 });
  const restored = await demoState(a);
  assert.equal(restored.value, 'Base. Saved in IndexedDB. Reloaded at once.');
  assert.equal(restored.status, 'offline', 'still offline after the reload');
  assert.equal(restored.pending, 1);
  // Folded into IndexedDB after the restore.
  await a.waitForFunction(() => !window.concord.provider.unsaved && Object.keys(localStorage).length === 0);
  assert.equal((await demoState(b)).value, 'Base. ');

  await a.click('#toggle');
  assert.equal(await converged(a, b), 'Base. Saved in IndexedDB. Reloaded at once.');
  noErrors(a, b);
});

test('a tab closed while offline loses nothing: the next tab replays its edits', async (t) => {
  const context = await newContext(t);
  const room = roomName('close');
  const a = await openDemo(context, room);
  const b = await openDemo(context, room);
  await waitOnline(a, b);
  await a.click('#toggle');
  await a.waitForFunction(() => window.concord.provider.status === 'offline');
  await a.click('#editor');
  await a.keyboard.type('Typed offline, tab closed.');
  await caretAt(b, 0);
  await b.keyboard.type('Meanwhile: ');
  await a.close({ runBeforeUnload: true });
  // A new tab of the same browser (online: the toggle was per tab) restores and replays.
  const c = await openDemo(context, room);
  const text = await converged(b, c);
  assert.ok(text.includes('Typed offline, tab closed.'), text);
  assert.ok(text.includes('Meanwhile: '), text);
  noErrors(b, c);
});

test('two tabs of one browser, both offline and closed, both edits come back in the next tab', async (t) => {
  const context = await newContext(t);
  const room = roomName('two-closed');
  const a = await openDemo(context, room);
  await waitOnline(a);
  await a.click('#editor');
  await a.keyboard.type('Start. Remove me.');
  await a.waitForFunction(() => window.concord.provider.pendingCount === 0);
  const b = await openDemo(context, room);
  await waitOnline(b);
  await converged(a, b);
  for (const page of [a, b]) {
    await page.click('#toggle');
    await page.waitForFunction(() => window.concord.provider.status === 'offline');
  }
  // A only deletes; B only inserts.
  await caretAt(a, 'Start. Remove me.'.length);
  for (let i = 0; i < ' Remove me.'.length; i++) await a.keyboard.press('Backspace');
  await caretAt(b, 'Start.'.length);
  await b.keyboard.type(' From B.');
  // Each tab keeps its own record, so neither overwrites the other's unsent edits. B closes
  // last: its record is restored, A's is merged into it.
  await a.close({ runBeforeUnload: true });
  await b.close({ runBeforeUnload: true });

  const c = await openDemo(context, room);
  await waitOnline(c);
  assert.equal((await demoState(c)).value, 'Start. From B.');
  // And on the server: a different browser profile sees both.
  const other = await newContext(t);
  const d = await openDemo(other, room);
  assert.equal(await converged(c, d), 'Start. From B.');
  noErrors(c, d);
});

test('a closed offline tab that only deleted is merged into a newer synced record and still replays', async (t) => {
  const context = await newContext(t);
  const room = roomName('delete-only');
  const a = await openDemo(context, room);
  const b = await openDemo(context, room);
  await waitOnline(a, b);
  await a.click('#editor');
  await a.keyboard.type('Keep. Drop.');
  await converged(a, b);
  await a.click('#toggle');
  await a.waitForFunction(() => window.concord.provider.status === 'offline');
  await caretAt(a, 'Keep. Drop.'.length);
  for (let i = 0; i < ' Drop.'.length; i++) await a.keyboard.press('Backspace');
  await a.close({ runBeforeUnload: true });
  // B, online, edits and saves after A closed: B's record (nothing pending) is the newest.
  await caretAt(b, 0);
  await b.keyboard.type('> ');
  await b.waitForFunction(() => window.concord.provider.pendingCount === 0 && !window.concord.provider.unsaved);
  await b.close({ runBeforeUnload: true });

  const c = await openDemo(context, room);
  const other = await newContext(t);
  const d = await openDemo(other, room);
  assert.equal(await converged(c, d), '> Keep.');
  noErrors(c, d);
});

test("tab A's cursor, selection and name show in tab B", async (t) => {
  const context = await newContext(t);
  const room = roomName('team-notes');
  const a = await openDemo(context, room);
  const b = await openDemo(context, room);
  await waitOnline(a, b);
  await a.fill('#name', 'Ada Lovelace');
  await b.fill('#name', 'Grace Hopper');
  await a.click('#editor');
  await a.keyboard.type('Concord keeps every replica in step.\nType in two tabs at once, go offline, come back:\nnothing is lost, and everyone ends up with the same bytes.\n');
  // B must have all of it before typing "at the start": otherwise its insertion is concurrent
  // with A's, and the CRDT may order it after A's text.
  await converged(a, b);
  await caretAt(b, 0);
  await b.keyboard.type('# Shared notes\n\n');
  await converged(a, b);

  // A selects "every replica" with the keyboard (as a user would).
  await caretAt(a, '# Shared notes\n\nConcord keeps '.length);
  for (let i = 0; i < 'every replica'.length; i++) await a.keyboard.press('Shift+ArrowRight');
  const aUser = await a.evaluate(() => window.concord.provider.user);

  const head = '# Shared notes\n\nConcord keeps every replica'.length;
  await b.waitForFunction(
    ([u, h]) => window.concord.provider.presences.get(u)?.cursor?.head === h,
    [aUser, head],
    { timeout: 10_000 },
  );
  // Drawn on the next animation frame.
  await b.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  const caret = b.locator(`.concord-caret[data-user="${aUser}"]`);
  await caret.waitFor({ state: 'visible', timeout: 10_000 });
  assert.equal(
    await b.locator('.concord-selection').count(),
    1,
    await b.evaluate(() => JSON.stringify([...document.querySelectorAll('.concord-selection')].map((e) => e.getAttribute('style')))),
  );
  assert.equal(await caret.textContent(), 'Ada Lovelace');
  const caretBox = await caret.boundingBox();
  const areaBox = await b.locator('#editor').boundingBox();
  assert.ok(caretBox.x > areaBox.x && caretBox.x < areaBox.x + areaBox.width, 'caret inside the editor horizontally');
  assert.ok(caretBox.y > areaBox.y && caretBox.y < areaBox.y + areaBox.height, 'caret inside the editor vertically');
  // The caret sits at the end of the selection: right of where "every replica" starts.
  const line = await b.evaluate(() => {
    const sel = document.querySelector('.concord-selection').getBoundingClientRect();
    return { left: sel.left, right: sel.right, top: sel.top };
  });
  assert.ok(Math.abs(caretBox.x + 1 - line.right) < 4, `caret at the selection's end (${caretBox.x} vs ${line.right})`);
  assert.equal(await b.textContent(`.peer[data-user="${aUser}"]`), 'Ada Lovelace');

  // Renaming shows up in the label.
  await a.fill('#name', 'Ada');
  await b.waitForFunction((u) => document.querySelector(`.concord-caret[data-user="${u}"]`)?.textContent === 'Ada', aUser);

  // Tab B after A moved its caret: the screenshot for the README.
  await a.fill('#name', 'Ada Lovelace');
  await b.waitForFunction((u) => document.querySelector(`.concord-caret[data-user="${u}"]`)?.textContent === 'Ada Lovelace', aUser);
  await caretAt(b, '# Shared notes\n'.length);
  await b.locator('#editor').blur();
  await b.screenshot({ path: join(ARTIFACTS, 'demo-cursors.png') });
  // The README's screenshot: written when missing, or on request (CONCORD_UPDATE_SCREENSHOTS=1).
  const docsShot = join(repoDir, 'docs', 'demo.png');
  if (process.env.CONCORD_UPDATE_SCREENSHOTS === '1' || !existsSync(docsShot)) {
    await mkdir(join(repoDir, 'docs'), { recursive: true });
    await b.locator('.page').screenshot({ path: docsShot });
  }

  // A leaves: its cursor disappears from B.
  await a.close();
  await caret.waitFor({ state: 'detached', timeout: 10_000 });
  noErrors(b);
});

test('IME composition: remote edits wait until the composition ends, then both converge', async (t) => {
  const context = await newContext(t);
  const room = roomName('ime');
  const a = await openDemo(context, room);
  const b = await openDemo(context, room);
  await waitOnline(a, b);
  await a.click('#editor');
  await a.keyboard.type('hello world');
  await converged(a, b);

  await caretAt(a, 5);
  const cdp = await context.newCDPSession(a);
  const events = [];
  await a.exposeFunction('recordEvent', (e) => events.push(e));
  await a.evaluate(() => {
    for (const type of ['compositionstart', 'compositionend']) window.concord.textarea.addEventListener(type, () => window.recordEvent(type));
  });
  await cdp.send('Input.imeSetComposition', { text: 'に', selectionStart: 1, selectionEnd: 1 });
  await cdp.send('Input.imeSetComposition', { text: 'にほ', selectionStart: 2, selectionEnd: 2 });
  await waitFor(() => events.includes('compositionstart'), { message: 'compositionstart' });

  // B edits before and after the spot A is composing at.
  await caretAt(b, 0);
  await b.keyboard.type('B> ');
  await caretAt(b, 'B> hello world'.length);
  await b.keyboard.type('!');
  await a.waitForFunction(() => window.concord.provider.text === 'B> hello world!');
  // A's textarea was left alone while composing.
  assert.equal((await demoState(a)).value, 'helloにほ world');

  await cdp.send('Input.insertText', { text: '日本' });
  await waitFor(() => events.includes('compositionend'), { message: 'compositionend' });
  const text = await converged(a, b);
  assert.equal(text, 'B> hello日本 world!');
  const caret = await a.evaluate(() => window.concord.textarea.selectionStart);
  assert.equal(caret, 'B> hello日本'.length, 'caret after the composed text');
  noErrors(a, b);
});

test('CodeMirror 6 editors and a textarea in one room converge, with remote cursors', async (t) => {
  const context = await newContext(t);
  const room = roomName('cm');
  const cmUrl = (name, color) =>
    `${statics.url}/test/pages/codemirror.html?server=${encodeURIComponent(server.url)}&room=${room}&name=${encodeURIComponent(name)}&color=${encodeURIComponent(color)}`;
  const c1 = await open(context, cmUrl('Cleo', '#db2777'));
  // c2 also has a textarea bound to the same provider.
  const c2 = await open(context, `${cmUrl('Max', '#2563eb')}&textarea=1`);
  const demo = await openDemo(context, room);
  for (const page of [c1, c2]) {
    await page.waitForFunction(() => window.cm?.provider.status === 'online', null, { timeout: 15_000 });
  }
  await waitOnline(demo);

  const cmState = (page) =>
    page.evaluate(() => ({
      value: window.cm.text(),
      text: window.cm.provider.text,
      pending: window.cm.provider.pendingCount,
      status: window.cm.provider.status,
    }));
  async function allConverged() {
    let states;
    await waitFor(
      async () => {
        states = [await cmState(c1), await cmState(c2), await demoState(demo)];
        return states.every((s) => s.status === 'online' && s.pending === 0 && s.value === s.text && s.text === states[0].text);
      },
      { timeout: 15_000, message: () => JSON.stringify(states) },
    );
    return states[0].value;
  }

  // Editable once the provider is ready (read-only before, so no keystroke is overwritten).
  for (const page of [c1, c2]) assert.equal(await page.evaluate(() => window.cm.view.state.readOnly), false);
  await c1.click('.cm-content');
  await c1.keyboard.type('line one\nline two');
  assert.equal(await allConverged(), 'line one\nline two');

  // Both editors type at the same place at once; the textarea types at the end.
  for (const page of [c1, c2]) {
    await page.evaluate(() => {
      window.cm.view.focus();
      window.cm.view.dispatch({ selection: { anchor: 5 } });
    });
  }
  await caretAt(demo, 'line one\nline two'.length);
  await Promise.all([
    c1.keyboard.type('ALPHA ', { delay: 15 }),
    c2.keyboard.type('beta ', { delay: 15 }),
    demo.keyboard.type('\nfrom the textarea', { delay: 15 }),
  ]);
  const text = await allConverged();
  assert.ok(
    text === 'line ALPHA beta one\nline two\nfrom the textarea' || text === 'line beta ALPHA one\nline two\nfrom the textarea',
    text,
  );

  // Multi-range edit in one transaction (CodeMirror's iterChanges with a running offset).
  await c2.evaluate(() => {
    const { view } = window.cm;
    const doc = view.state.doc.toString();
    const at = doc.indexOf('line two');
    view.dispatch({ changes: [{ from: 0, to: 4, insert: 'LINE' }, { from: at, to: at + 4, insert: 'Line' }] });
  });
  const after = await allConverged();
  assert.ok(after.startsWith('LINE ') && after.includes('\nLine two\n'), after);

  // The textarea sharing c2's provider follows its CodeMirror view, and the other way round.
  assert.equal(await c2.evaluate(() => window.cm.plain.value), after);
  await c2.evaluate(() => {
    const t = window.cm.plain;
    t.focus();
    t.setSelectionRange(0, 0);
  });
  await c2.keyboard.type('# ');
  const withHeading = await allConverged();
  assert.ok(withHeading.startsWith('# LINE '), withHeading);
  assert.equal(await c2.evaluate(() => window.cm.plain.value), withHeading);

  // Remote cursors in CodeMirror, named.
  const demoUser = await demo.evaluate(() => window.concord.provider.user);
  const c1User = await c1.evaluate(() => window.cm.provider.user);
  await c2.locator(`.cm-concord-caret[data-user="${c1User}"]`).waitFor({ state: 'visible', timeout: 10_000 });
  await c2.locator(`.cm-concord-caret[data-user="${demoUser}"]`).waitFor({ state: 'attached', timeout: 10_000 });
  assert.equal(await c2.textContent(`.cm-concord-caret[data-user="${c1User}"]`), 'Cleo');
  await c2.screenshot({ path: join(ARTIFACTS, 'codemirror.png') });
  noErrors(c1, c2, demo);
});

test('the demo follows the dark color scheme', async (t) => {
  const context = await newContext(t, { colorScheme: 'dark' });
  const room = roomName('dark');
  const a = await openDemo(context, room);
  const b = await openDemo(context, room);
  await waitOnline(a, b);
  await a.fill('#name', 'Linus');
  await a.click('#editor');
  await a.keyboard.type('Dark mode: same engine, same bytes.');
  await converged(a, b);
  await caretAt(a, 'Dark mode'.length);
  await b.locator('.concord-caret').waitFor({ state: 'visible' });
  const bg = await b.evaluate(() => getComputedStyle(document.body).backgroundColor);
  const [r, g, bl] = bg.match(/\d+/g).map(Number);
  assert.ok(r + g + bl < 120, `dark background, got ${bg}`);
  await b.screenshot({ path: join(ARTIFACTS, 'demo-dark.png') });
  noErrors(a, b);
});

/** Signs up through the demo's form; resolves once the page shows the documents list. */
async function signUpInPage(page, name) {
  await page.locator('#signin-name').waitFor();
  await page.fill('#signin-name', name);
  await page.fill('#signin-password', 'correct horse battery');
  await page.click('#signup-submit');
  await page.locator('#doc-list').waitFor({ state: 'visible', timeout: 15_000 });
  assert.equal(await page.textContent('#who-name'), name);
}

/** Opens a raw JSON-protocol socket with `token`; resolves when its `sync` arrived. */
async function rawSocket(url, room, token) {
  const ws = new WebSocket(`${url}/rooms/${room}/ws?token=${encodeURIComponent(token)}`);
  const frames = [];
  ws.on('message', (data) => frames.push(JSON.parse(String(data))));
  await waitFor(() => frames.some((f) => f.t === 'sync'), { message: 'raw socket synced' });
  return { ws, frames, sync: frames.find((f) => f.t === 'sync') };
}

/** The room as a fresh connection of `token` receives it: its text and its whole state. */
async function roomSnapshot(url, room, token) {
  const { ws, sync } = await rawSocket(url, room, token);
  ws.close();
  const doc = new Y.Doc();
  Y.applyUpdateV2(doc, Buffer.from(sync.state, 'base64'));
  return { text: doc.getText('body').toString(), state: Buffer.from(Y.encodeStateAsUpdateV2(doc)).toString('base64') };
}

test('accounts: sign up, share as reader via the dialog, a bypassing reader is refused, upgrade to writer, revoke', async (t) => {
  const authed = await startAccountsServer();
  t.after(() => authed.close());
  const tail = Math.random().toString(36).slice(2, 8);
  const [adaName, bobName] = [`ada-${tail}`, `bob-${tail}`];
  const a = await open(await newContext(t), `${authed.http}/`);
  const b = await open(await newContext(t), `${authed.http}/`);

  // A: an account, a document, text.
  await signUpInPage(a, adaName);
  await a.fill('#new-doc-title', 'Launch plan');
  await a.click('#new-doc');
  await a.waitForFunction(() => window.concord?.provider?.status === 'online', null, { timeout: 15_000 });
  const room = await a.evaluate(() => window.concord.provider.room);
  assert.equal(await a.textContent('#room-name'), 'Launch plan');
  await a.click('#editor');
  await a.keyboard.type('Owner wrote this.');
  await a.waitForFunction(() => window.concord.provider.pendingCount === 0);

  // B: an account; the document is not shared yet.
  await signUpInPage(b, bobName);
  assert.equal(await b.locator(`#doc-list a[href="?room=${room}"]`).count(), 0);

  // A shares it with B as a reader: the dialog's user search.
  await a.click('#share');
  await a.fill('#share-search', 'bob-');
  await a.click(`#share-results button[aria-label="Let ${bobName} read"]`);
  const bobGrant = a.locator('#share-grants li select');
  await bobGrant.waitFor();
  assert.equal(await bobGrant.inputValue(), 'read');
  const shot = join(repoDir, 'docs', 'demo-accounts.png');
  if (process.env.CONCORD_UPDATE_SCREENSHOTS === '1' || !existsSync(shot)) await a.screenshot({ path: shot });
  await a.screenshot({ path: join(ARTIFACTS, 'demo-accounts-share.png') });

  // B opens it from "my documents": A's text, read-only, and the page says so.
  await b.reload();
  await b.click(`#doc-list a[href="?room=${room}"]`);
  await b.waitForFunction(() => window.concord?.provider?.synced && window.concord.provider.role === 'read', null, { timeout: 15_000 });
  assert.equal((await demoState(b)).value, 'Owner wrote this.');
  assert.equal(await b.evaluate(() => window.concord.textarea.readOnly), true);
  assert.equal(await b.locator('#access').isVisible(), true);
  assert.equal(await b.textContent('#access'), 'Read-only: you were given read access');
  await b.click('#editor');
  await b.keyboard.type('typed by a reader');
  assert.equal((await demoState(b)).value, 'Owner wrote this.');
  assert.equal(await b.evaluate(() => window.concord.provider.pendingCount), 0);
  await b.screenshot({ path: join(ARTIFACTS, 'demo-accounts-reader.png') });

  // B bypasses the page: a raw socket with B's token sends an op. Refused; the room unchanged.
  const [adaToken, bobToken] = await Promise.all([a, b].map((p) => p.evaluate(() => localStorage.getItem('concord-token'))));
  const before = await roomSnapshot(authed.url, room, adaToken);
  const raw = await rawSocket(authed.url, room, bobToken);
  const forged = new Y.Doc();
  forged.getText('body').insert(0, 'forged by a reader ');
  const update = Buffer.from(Y.encodeStateAsUpdateV2(forged)).toString('base64');
  raw.ws.send(JSON.stringify({ t: 'op', id: 'forged-1', data: { update } }));
  const refusal = await waitFor(() => raw.frames.find((f) => f.t === 'error' || f.t === 'ack'), { message: 'an answer to the forged op' });
  assert.equal(refusal.t, 'error');
  assert.equal(refusal.code, 'forbidden');
  raw.ws.close();
  const after = await roomSnapshot(authed.url, room, adaToken);
  assert.deepEqual(Buffer.from(after.text), Buffer.from(before.text));
  assert.equal(after.state, before.state, 'the room state is byte-equal');
  assert.equal(after.text, 'Owner wrote this.');
  assert.equal((await demoState(a)).value, 'Owner wrote this.');

  // A upgrades B in the dialog: B's editor becomes writable without a reload, and B types.
  await bobGrant.selectOption('write');
  await b.waitForFunction(() => window.concord.provider.role === 'write' && !window.concord.textarea.readOnly, null, { timeout: 10_000 });
  assert.equal(await b.locator('#access').isVisible(), false);
  await caretAt(b, 'Owner wrote this.'.length);
  await b.keyboard.type(' Bob can edit now.');
  await a.keyboard.press('Escape'); // closes the dialog; A's tab keeps showing the document
  assert.equal(await converged(a, b), 'Owner wrote this. Bob can edit now.');

  // A revokes: B's socket is closed (4403) within a second, and B's page says so.
  await a.click('#share');
  const remove = a.locator(`#share-grants button[aria-label="Remove ${bobName}"]`);
  await remove.waitFor();
  const t0 = Date.now();
  await remove.click();
  await b.waitForFunction(() => window.concord.provider.status === 'denied', null, { timeout: 5_000 });
  const took = Date.now() - t0;
  assert.ok(took < 1000, `revocation reached the reader in ${took} ms`);
  assert.equal(await b.evaluate(() => window.concord.provider.denied.code), 'access_revoked');
  assert.equal(await b.textContent('#access'), 'Your access to this document was revoked.');
  assert.equal(await b.textContent('#status'), 'No access');
  assert.equal(await b.evaluate(() => window.concord.textarea.readOnly), true);
  await a.locator('#share-grants li').waitFor({ state: 'detached' });
  await b.screenshot({ path: join(ARTIFACTS, 'demo-accounts-revoked.png') });
  noErrors(a, b);
});

test('CodeMirror and a textarea follow the role: read-only for a reader, writable after a live upgrade', async (t) => {
  const authed = await startAccountsServer();
  t.after(() => authed.close());
  const owner = await signup(authed, 'cm-owner');
  const guest = await signup(authed, 'cm-guest');
  const room = (await api(authed, 'POST', '/api/docs', owner.token, { title: 'CodeMirror' })).body.doc.id;
  const grant = async (role) => {
    const { status } = await api(authed, 'PUT', `/api/docs/${room}/grants/${guest.user.id}`, owner.token, { role });
    assert.equal(status, 200);
  };
  await grant('read');
  const context = await newContext(t);
  const cmUrl = (token, extra = '') =>
    `${statics.url}/test/pages/codemirror.html?server=${encodeURIComponent(authed.url)}&room=${room}&token=${encodeURIComponent(token)}${extra}`;
  const o = await open(context, cmUrl(owner.token));
  const g = await open(context, cmUrl(guest.token, '&textarea=1'));
  await o.waitForFunction(() => window.cm?.provider.status === 'online', null, { timeout: 15_000 });
  await o.click('.cm-content');
  await o.keyboard.type('owner line');
  await g.waitForFunction(() => window.cm?.provider.role === 'read' && window.cm.text() === 'owner line', null, { timeout: 15_000 });

  const locks = () =>
    g.evaluate(() => ({
      cm: window.cm.view.state.readOnly,
      aria: window.cm.view.contentDOM.getAttribute('aria-readonly'),
      textarea: window.cm.plain.readOnly,
    }));
  assert.deepEqual(await locks(), { cm: true, aria: 'true', textarea: true });
  await g.click('.cm-content');
  await g.keyboard.type('typed by a reader');
  // Past the readOnly facet (a programmatic change): refused, and the view shows the text again.
  await g.evaluate(() => window.cm.view.dispatch({ changes: { from: 0, insert: 'X' } }));
  await g.waitForFunction(() => window.cm.text() === 'owner line' && window.cm.plain.value === 'owner line');
  assert.equal(await g.evaluate(() => window.cm.provider.pendingCount), 0);

  await grant('write');
  await g.waitForFunction(() => !window.cm.view.state.readOnly && !window.cm.plain.readOnly, null, { timeout: 10_000 });
  assert.deepEqual(await locks(), { cm: false, aria: null, textarea: false });
  await g.evaluate(() => {
    window.cm.view.focus();
    window.cm.view.dispatch({ selection: { anchor: window.cm.view.state.doc.length } });
  });
  await g.keyboard.type(' + guest');
  await o.waitForFunction(() => window.cm.text() === 'owner line + guest', null, { timeout: 10_000 });
  await g.waitForFunction(() => window.cm.provider.pendingCount === 0 && window.cm.plain.value === 'owner line + guest');
  noErrors(o, g);
});
