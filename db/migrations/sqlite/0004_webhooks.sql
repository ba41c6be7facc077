-- Webhooks: a durable outbox. One row per room and event type, so a receiver that is down for
-- hours costs at most three rows per room, not one per change: `document.changed` rows are
-- written in the same transaction as the ops they announce (a crash cannot lose one) and
-- coalesce while they wait; `room.loaded` / `room.unloaded` keep the latest.
CREATE TABLE IF NOT EXISTS webhook_outbox (
  room_id     TEXT    NOT NULL,
  kind        TEXT    NOT NULL, -- document.changed | room.loaded | room.unloaded
  first_seq   BIGINT  NOT NULL, -- the first change not yet delivered
  last_seq    BIGINT  NOT NULL, -- the room's seq at the latest change
  first_at    BIGINT  NOT NULL, -- unix ms of first_seq's commit
  last_at     BIGINT  NOT NULL, -- unix ms of last_seq's commit
  due_at      BIGINT  NOT NULL, -- unix ms: deliver from then on
  attempts    INTEGER NOT NULL DEFAULT 0,
  lease_until BIGINT  NOT NULL DEFAULT 0, -- unix ms: an instance is delivering it until then
  PRIMARY KEY (room_id, kind)
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (due_at);
