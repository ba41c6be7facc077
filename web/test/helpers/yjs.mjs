// What the suites that drive stock Yjs providers against Concord share: comparing Y.Docs,
// concord-client's replica as a Y.Doc, seeded randomness, and tokens as a backend mints them.
import assert from 'node:assert/strict';
import * as Y from 'yjs';

/** The same document: the same state vector and the same snapshot (inserts and deletes). */
export function assertSameDoc(a, b) {
  assert.deepEqual(Y.decodeStateVector(Y.encodeStateVector(a)), Y.decodeStateVector(Y.encodeStateVector(b)));
  assert.ok(Y.equalSnapshots(Y.snapshot(a), Y.snapshot(b)), 'snapshots differ');
}

/** concord-client's replica as a Y.Doc. */
export function mirror(provider) {
  const doc = new Y.Doc();
  Y.applyUpdateV2(doc, provider.session.encodeStateAsUpdate());
  return doc;
}

/** A deterministic random() in [0, 1), printed so a failure can be replayed. */
export function seeded(seed) {
  console.log(`seed ${seed}`);
  let state = seed;
  return () => ((state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
}

/** Random edits to a Y.Text: deletes, ASCII and astral characters. */
export function randomEdit(text, random, i) {
  if (text.length > 3 && random() < 0.3) text.delete(Math.floor(random() * (text.length - 1)), 1);
  else text.insert(Math.floor(random() * (text.length + 1)), random() < 0.1 ? '😀' : 'xyz'[i % 3]);
}

export { jwt } from './auth.mjs';

/** The awareness names a provider sees, sorted. */
export function awarenessNames(awareness) {
  return [...awareness.getStates().values()].map((s) => s.user?.name).filter(Boolean).sort();
}
