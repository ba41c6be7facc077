-- One latest snapshot per room; ops after it form the tail (see shared DESIGN.md, durability).
CREATE TABLE IF NOT EXISTS snapshots (
  room_id    TEXT        PRIMARY KEY,
  state      BYTEA       NOT NULL,
  op_seq     BIGINT      NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS ops (
  room_id TEXT   NOT NULL,
  seq     BIGINT NOT NULL,
  op      BYTEA  NOT NULL,
  PRIMARY KEY (room_id, seq)
);
