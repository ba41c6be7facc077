// Unit tests of the pure text helpers the bindings are built on.
import test from 'node:test';
import assert from 'node:assert/strict';
import { diffText, mapPosition, rebaseChange, applyChanges, mapPositionThrough, normalizeCursor, safeColor } from '../src/text.js';
import { toChangeSet } from '../src/codemirror.js';
import { Text } from '@codemirror/state';

function rng(seed) {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x9e3779b9) >>> 0) / 2 ** 32);
}
const ALPHABET = ['a', 'b', 'c', ' ', '\n', 'é', '😀', '😃', '中'];
function randomText(r, max) {
  let s = '';
  const n = Math.floor(r() * max);
  for (let i = 0; i < n; i++) s += ALPHABET[Math.floor(r() * ALPHABET.length)];
  return s;
}
const hasLoneSurrogate = (s) => /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);

test('diffText finds the one change and never splits a surrogate pair', () => {
  assert.equal(diffText('abc', 'abc'), null);
  assert.deepEqual(diffText('abc', 'abXc'), { index: 2, delete: 0, insert: 'X' });
  assert.deepEqual(diffText('hello world', 'hello'), { index: 5, delete: 6, insert: '' });
  // 😀 and 😃 share their high surrogate: the change must cover the whole pair.
  assert.deepEqual(diffText('a😀b', 'a😃b'), { index: 1, delete: 2, insert: '😃' });
  // ...and their low surrogates may not be shared, but a common suffix might start mid-pair.
  assert.deepEqual(diffText('x\ud83d\ude00', 'x\ud83c\ude00'), { index: 1, delete: 2, insert: '\ud83c\ude00' });
  const r = rng(7);
  for (let i = 0; i < 5000; i++) {
    const a = randomText(r, 12);
    const b = randomText(r, 12);
    const d = diffText(a, b);
    if (a === b) {
      assert.equal(d, null);
      continue;
    }
    assert.equal(applyChanges(a, [d]), b, `${a} -> ${b}`);
    assert.ok(!hasLoneSurrogate(d.insert), `lone surrogate inserted for ${JSON.stringify([a, b])}`);
    assert.ok(!hasLoneSurrogate(a.slice(d.index, d.index + d.delete)), `pair split for ${JSON.stringify([a, b])}`);
  }
});

test('diffText with the caret reads ambiguous edits as the user made them', () => {
  // A space typed before a space (caret after the new one, at 7).
  assert.deepEqual(diffText('Start. Remove me.', 'Start.  Remove me.', 7), { index: 6, delete: 0, insert: ' ' });
  // Without the caret: the first reading.
  assert.deepEqual(diffText('Start. Remove me.', 'Start.  Remove me.'), { index: 7, delete: 0, insert: ' ' });
  // Backspace on the first "l" of "hello" (caret at 2 after it).
  assert.deepEqual(diffText('hello', 'helo', 2), { index: 2, delete: 1, insert: '' });
  // A caret that does not fit the change is ignored.
  assert.deepEqual(diffText('abc', 'abXc', 0), { index: 2, delete: 0, insert: 'X' });
  const r = rng(3);
  for (let i = 0; i < 5000; i++) {
    const before = randomText(r, 10);
    const chars = [...before];
    const at = Math.floor(r() * (chars.length + 1));
    const offset = chars.slice(0, at).join('').length;
    if (r() < 0.5 || chars.length === at) {
      const insert = randomText(r, 3) || 'a';
      const after = before.slice(0, offset) + insert + before.slice(offset);
      assert.deepEqual(diffText(before, after, offset + insert.length), { index: offset, delete: 0, insert }, JSON.stringify([before, after]));
    } else {
      const n = 1 + Math.floor(r() * Math.min(2, chars.length - at));
      const deleted = chars.slice(at, at + n).join('');
      const after = before.slice(0, offset) + before.slice(offset + deleted.length);
      assert.deepEqual(diffText(before, after, offset), { index: offset, delete: deleted.length, insert: '' }, JSON.stringify([before, after]));
    }
  }
});

test('mapPosition moves positions around insertions and deletions', () => {
  const ins = { index: 3, delete: 0, insert: 'xy' };
  assert.equal(mapPosition(2, ins), 2);
  assert.equal(mapPosition(3, ins, -1), 3);
  assert.equal(mapPosition(3, ins, 1), 5);
  assert.equal(mapPosition(4, ins), 6);
  const del = { index: 2, delete: 3, insert: '' };
  assert.equal(mapPosition(1, del), 1);
  assert.equal(mapPosition(3, del), 2);
  assert.equal(mapPosition(5, del), 2);
  assert.equal(mapPosition(6, del), 3);
  assert.equal(mapPositionThrough(10, [ins, del]), 9);
});

test('rebaseChange puts a local change where it belongs after remote changes', () => {
  const base = 'hello world';
  // Locally: "world" -> "there"; remotely: "hello " -> "oh, hello ", then "!" appended.
  const local = diffText(base, 'hello there');
  const remote = [
    { index: 0, delete: 0, insert: 'oh, ' },
    { index: 15, delete: 0, insert: '!' },
  ];
  const theirs = applyChanges(base, remote);
  assert.equal(theirs, 'oh, hello world!');
  const rebased = rebaseChange(local, remote);
  assert.equal(applyChanges(theirs, [rebased]), 'oh, hello there!');
  // A local edit inside text a peer deleted shrinks to nothing but keeps its insertion.
  const gone = rebaseChange({ index: 2, delete: 2, insert: 'Z' }, [{ index: 0, delete: 5, insert: '' }]);
  assert.deepEqual(gone, { index: 0, delete: 0, insert: 'Z' });
});

test('toChangeSet turns sequential engine changes into one CodeMirror change set', () => {
  const r = rng(11);
  for (let i = 0; i < 2000; i++) {
    let text = randomText(r, 20).replace(/[\ud800-\udfff]/g, 'q');
    const start = text;
    const changes = [];
    let pos = 0;
    // Sorted, non-overlapping, sequential coordinates: what the engine reports.
    while (pos <= text.length && changes.length < 4) {
      pos += Math.floor(r() * 4);
      if (pos > text.length) break;
      const del = Math.min(Math.floor(r() * 3), text.length - pos);
      const insert = r() < 0.6 ? 'XY'.slice(0, 1 + Math.floor(r() * 2)) : '';
      changes.push({ index: pos, delete: del, insert });
      text = applyChanges(text, [changes.at(-1)]);
      pos += insert.length;
    }
    const set = toChangeSet(changes, start.length);
    assert.equal(set.apply(Text.of(start.split('\n'))).toString(), text);
  }
  // Out-of-order lists are composed instead.
  const set = toChangeSet([{ index: 5, delete: 0, insert: 'b' }, { index: 0, delete: 0, insert: 'a' }], 6);
  assert.equal(set.apply(Text.of(['012345'])).toString(), 'a01234b5');
});

test('cursors and colors from peers are sanitized', () => {
  assert.deepEqual(normalizeCursor(4, 3), { anchor: 3, head: 3 });
  assert.deepEqual(normalizeCursor({ anchor: -1, head: 2.7 }, 10), { anchor: 0, head: 2 });
  assert.equal(normalizeCursor({ line: 1 }, 10), null);
  assert.equal(normalizeCursor(null, 10), null);
  assert.equal(safeColor('#2DD4BF'), '#2DD4BF');
  assert.equal(safeColor('rgb(1, 2, 3)'), 'rgb(1, 2, 3)');
  assert.equal(safeColor('red; background: url(x)'), '#6366f1');
});
