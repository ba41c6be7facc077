-- History: ops are kept (compaction no longer deletes them, unless HISTORY_RETENTION folds
-- the oldest away), each with its commit time, author and the seq its sender had seen;
-- checkpoints (full states at a seq, every so many ops) make any point cheap to rebuild; named
-- versions keep their own state.
ALTER TABLE ops ADD COLUMN committed_at INTEGER NOT NULL DEFAULT 0; -- unix ms
ALTER TABLE ops ADD COLUMN author TEXT;
ALTER TABLE ops ADD COLUMN base_seq INTEGER;

CREATE TABLE IF NOT EXISTS checkpoints (
  room_id TEXT    NOT NULL,
  seq     INTEGER NOT NULL,
  state   BLOB    NOT NULL,
  PRIMARY KEY (room_id, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS versions (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  room_id    TEXT    NOT NULL,
  label      TEXT    NOT NULL,
  author     TEXT    NOT NULL,
  state      BLOB    NOT NULL, -- full state at op_seq
  op_seq     INTEGER NOT NULL,
  created_at INTEGER NOT NULL  -- unix ms
);
CREATE INDEX IF NOT EXISTS versions_room ON versions (room_id, id);

-- Rooms compacted before history was kept: their history starts at their snapshot.
INSERT OR IGNORE INTO checkpoints (room_id, seq, state) SELECT room_id, op_seq, state FROM snapshots;
