// Compares two replicas' CRDT state independently of encoding details (the order in which
// clients are written is not canonical): same text, same state vector, same delete set.
import * as Y from 'yjs';

/**
 * @param {Uint8Array} a v2 update of the whole document (`encodeStateAsUpdate()`)
 * @param {Uint8Array} b
 * @returns {string | null} what differs, or null
 */
export function compareStates(a, b) {
  const da = new Y.Doc();
  const db = new Y.Doc();
  try {
    Y.applyUpdateV2(da, a);
    Y.applyUpdateV2(db, b);
    const ta = da.getText('body').toString();
    const tb = db.getText('body').toString();
    if (ta !== tb) return `texts differ: ${JSON.stringify(ta)} vs ${JSON.stringify(tb)}`;
    const sa = Object.fromEntries(Y.decodeStateVector(Y.encodeStateVector(da)));
    const sb = Object.fromEntries(Y.decodeStateVector(Y.encodeStateVector(db)));
    if (JSON.stringify(Object.entries(sa).sort()) !== JSON.stringify(Object.entries(sb).sort())) {
      return `state vectors differ: ${JSON.stringify(sa)} vs ${JSON.stringify(sb)}`;
    }
    if (!Y.equalSnapshots(Y.snapshot(da), Y.snapshot(db))) return 'delete sets differ';
    return null;
  } finally {
    da.destroy();
    db.destroy();
  }
}
