-- Built-in accounts (CONCORD_AUTH=accounts): who may read and write each document. These
-- tables decide who may touch a room, never how it changes.
CREATE TABLE IF NOT EXISTS users (
  id            TEXT    PRIMARY KEY,
  name          TEXT    NOT NULL,
  -- The name folded to lower case: names are unique regardless of case.
  name_key      TEXT    NOT NULL UNIQUE,
  -- argon2id, PHC string format.
  password_hash TEXT    NOT NULL,
  created_at    INTEGER NOT NULL
);

-- A document is a room with an owner. Its id is the room id.
CREATE TABLE IF NOT EXISTS documents (
  id         TEXT    PRIMARY KEY,
  title      TEXT    NOT NULL,
  owner_id   TEXT    NOT NULL REFERENCES users(id),
  created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_owner ON documents(owner_id);

CREATE TABLE IF NOT EXISTS grants (
  doc_id  TEXT NOT NULL REFERENCES documents(id),
  user_id TEXT NOT NULL REFERENCES users(id),
  role    TEXT NOT NULL CHECK (role IN ('read', 'write')),
  PRIMARY KEY (doc_id, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS grants_user ON grants(user_id);
