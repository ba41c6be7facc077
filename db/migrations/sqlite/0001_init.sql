-- One latest snapshot per room; ops after it form the tail (see shared DESIGN.md, durability).
CREATE TABLE IF NOT EXISTS snapshots (
  room_id    TEXT    PRIMARY KEY,
  state      BLOB    NOT NULL,
  op_seq     INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS ops (
  room_id TEXT    NOT NULL,
  seq     INTEGER NOT NULL,
  op      BLOB    NOT NULL,
  PRIMARY KEY (room_id, seq)
) WITHOUT ROWID;
