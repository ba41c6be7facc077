-- Object storage for history: with OBJECT_STORE_URL set, a checkpoint's state lives in the
-- bucket under object_key (often the object of the snapshot written with it) and `state` is
-- empty.
ALTER TABLE checkpoints ADD COLUMN object_key TEXT;
