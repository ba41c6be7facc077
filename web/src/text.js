// Pure text helpers shared by the bindings: diffing two strings into one change, and mapping
// positions and changes through the engine's change lists. Offsets are UTF-16 code units (the
// unit of `String.prototype.length`, `textarea.selectionStart` and CodeMirror), which is also
// the engine's unit.

/** @typedef {{index: number, delete: number, insert: string}} TextChange */

const isHigh = (code) => code >= 0xd800 && code <= 0xdbff;
const isLow = (code) => code >= 0xdc00 && code <= 0xdfff;

/**
 * The single change turning `before` into `after`: common prefix and suffix stripped. Never
 * splits a surrogate pair (the engine cannot store half of one). Returns `null` when equal.
 *
 * `cursor` (the caret in `after`, when there is no selection) settles ambiguous cases: typing
 * a space before a space, or deleting one "l" of "hello", can be read at several places with
 * the same result locally but not for peers editing next to it. A pure insertion that ends at
 * the caret, or a pure deletion that starts at it, is what the user did; that reading wins
 * when it fits.
 * @param {string} before
 * @param {string} after
 * @param {number} [cursor]
 * @returns {TextChange | null}
 */
export function diffText(before, after, cursor) {
  if (before === after) return null;
  const min = Math.min(before.length, after.length);
  let prefix = 0;
  while (prefix < min && before.charCodeAt(prefix) === after.charCodeAt(prefix)) prefix++;
  if (cursor !== undefined && Number.isInteger(cursor)) {
    // Longest common suffix, not limited by the prefix.
    let suffix = 0;
    while (
      suffix < min &&
      before.charCodeAt(before.length - 1 - suffix) === after.charCodeAt(after.length - 1 - suffix)
    ) {
      suffix++;
    }
    const delta = after.length - before.length;
    if (delta > 0) {
      const at = cursor - delta;
      if (at >= 0 && at <= prefix && before.length - at <= suffix && !splitsPair(before, at)) {
        const insert = after.slice(at, cursor);
        if (!isLow(insert.charCodeAt(0)) && !isHigh(insert.charCodeAt(insert.length - 1))) {
          return { index: at, delete: 0, insert };
        }
      }
    } else if (delta < 0) {
      const at = cursor;
      if (at >= 0 && at <= prefix && after.length - at <= suffix && !splitsPair(before, at) && !splitsPair(before, at - delta)) {
        return { index: at, delete: -delta, insert: '' };
      }
    }
  }
  let start = prefix;
  // Do not end the prefix on the high half of a pair.
  if (start > 0 && isHigh(before.charCodeAt(start - 1))) start--;
  let end = 0;
  const maxEnd = min - start;
  while (
    end < maxEnd &&
    before.charCodeAt(before.length - 1 - end) === after.charCodeAt(after.length - 1 - end)
  ) {
    end++;
  }
  // Do not start the suffix on the low half of a pair.
  if (end > 0 && isLow(before.charCodeAt(before.length - end))) end--;
  return {
    index: start,
    delete: before.length - end - start,
    insert: after.slice(start, after.length - end),
  };
}

/** True when offset `at` of `text` falls between the halves of a surrogate pair. */
function splitsPair(text, at) {
  return at > 0 && at < text.length && isHigh(text.charCodeAt(at - 1)) && isLow(text.charCodeAt(at));
}

/**
 * Where `pos` ends up after `change`. `assoc` says which side a position sitting exactly at an
 * insertion or at the edge of a deletion sticks to: -1 before, 1 after.
 * @param {number} pos
 * @param {TextChange} change
 * @param {-1 | 1} [assoc]
 */
export function mapPosition(pos, change, assoc = -1) {
  const start = change.index;
  const end = start + change.delete;
  const inserted = change.insert.length;
  if (pos < start || (pos === start && assoc < 0)) return pos;
  if (pos > end || (pos === end && assoc > 0)) return pos + inserted - change.delete;
  return assoc < 0 ? start : start + inserted;
}

/**
 * Maps a position through a sequential list of changes (each change's index is in the text
 * after the previous ones), as the engine reports them.
 * @param {number} pos
 * @param {readonly TextChange[]} changes
 * @param {-1 | 1} [assoc]
 */
export function mapPositionThrough(pos, changes, assoc = -1) {
  for (const change of changes) pos = mapPosition(pos, change, assoc);
  return pos;
}

/**
 * Rebases a local change made against some text onto that text after `changes` (sequential):
 * the deleted range shrinks to what is still there, an insertion at the same place as a
 * remote insertion goes after it.
 * @param {TextChange} local
 * @param {readonly TextChange[]} changes
 * @returns {TextChange}
 */
export function rebaseChange(local, changes) {
  let from = local.index;
  let to = local.index + local.delete;
  for (const change of changes) {
    from = mapPosition(from, change, 1);
    to = mapPosition(to, change, -1);
    if (to < from) to = from;
  }
  return { index: from, delete: to - from, insert: local.insert };
}

/**
 * Applies sequential changes to a string (what an editor binding does to its content).
 * @param {string} text
 * @param {readonly TextChange[]} changes
 */
export function applyChanges(text, changes) {
  for (const c of changes) {
    text = text.slice(0, c.index) + c.insert + text.slice(c.index + c.delete);
  }
  return text;
}

/**
 * Maps a cursor (`number` or `{anchor, head}`) through sequential changes; other shapes are
 * returned as they are.
 * @template T
 * @param {T} cursor
 * @param {readonly TextChange[]} changes
 * @returns {T}
 */
export function mapCursor(cursor, changes) {
  if (typeof cursor === 'number') return /** @type {any} */ (mapPositionThrough(cursor, changes));
  if (cursor && typeof cursor === 'object' && typeof cursor.anchor === 'number' && typeof cursor.head === 'number') {
    return /** @type {any} */ ({
      ...cursor,
      anchor: mapPositionThrough(cursor.anchor, changes),
      head: mapPositionThrough(cursor.head, changes),
    });
  }
  return cursor;
}

/**
 * A cursor as `{anchor, head}` clamped to `length`, or `null` when it is not a cursor.
 * @param {unknown} cursor
 * @param {number} length
 * @returns {{anchor: number, head: number} | null}
 */
export function normalizeCursor(cursor, length) {
  const clamp = (n) => Math.max(0, Math.min(length, Math.floor(n)));
  if (typeof cursor === 'number' && Number.isFinite(cursor)) {
    const at = clamp(cursor);
    return { anchor: at, head: at };
  }
  if (cursor && typeof cursor === 'object') {
    const { anchor, head } = /** @type {any} */ (cursor);
    if (Number.isFinite(anchor) && Number.isFinite(head)) return { anchor: clamp(anchor), head: clamp(head) };
  }
  return null;
}

const SAFE_COLOR = /^(#[0-9a-f]{3,8}|(rgb|hsl)a?\([0-9.,%\s/a-z-]+\)|[a-z]{3,20})$/i;

/**
 * A CSS color from a peer, or `fallback` when it is not a plain color (it ends up in a style).
 * @param {unknown} color
 * @param {string} [fallback]
 */
export function safeColor(color, fallback = '#6366f1') {
  return typeof color === 'string' && SAFE_COLOR.test(color.trim()) ? color.trim() : fallback;
}
