-- Object storage: with OBJECT_STORE_URL set, a snapshot's state lives in the bucket under
-- object_key and `state` is empty; without it (or for rows written before), `state` holds it.
ALTER TABLE snapshots ADD COLUMN object_key TEXT;
