//! Postgres, for production and for several instances sharing rooms.
//!
//! Each room's writers serialize on a transaction-scoped advisory lock keyed by the room id, so
//! "read the last seq, insert the next ones" is atomic across instances and seq order is
//! commit order. A group commit takes its rooms' locks in sorted order, so two instances
//! committing overlapping sets of rooms cannot deadlock.
//!
//! Every connection starts with `statement_timeout` and `lock_timeout` at
//! `STATEMENT_TIMEOUT_MS`, so a stalled statement or a lock held elsewhere (a room's advisory
//! lock, a `LOCK TABLE`) is cancelled by the server and the connection stays usable; and with
//! `idle_in_transaction_session_timeout` at `COMMIT_TIMEOUT_MS`, so a transaction whose
//! client went quiet cannot keep rooms' locks. They are startup options (`-c`), so they hold
//! from a connection's first statement, including connections the pool opens after an outage.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use super::history::HistoryPolicy;
use super::{seq_from_db, seq_to_db, Append, Folds, Loaded, Store, StoreTimeouts};
use crate::error::Result;

/// Postgres-backed store.
pub struct PgStore {
    pool: PgPool,
    describe: String,
    timeouts: StoreTimeouts,
    /// Set when webhooks are on: `append` records `document.changed` (see [`super::webhooks`]).
    webhooks: std::sync::OnceLock<super::webhooks::Timing>,
    /// Set with `OBJECT_STORE_URL`: snapshots live in the bucket (see [`super::objects`]).
    objects: std::sync::OnceLock<std::sync::Arc<super::objects::Objects>>,
}

/// Deletes a room's rows from every table that holds its document or history.
const DELETE_ROOM: [&str; 4] = [
    "DELETE FROM ops WHERE room_id = $1",
    "DELETE FROM snapshots WHERE room_id = $1",
    "DELETE FROM checkpoints WHERE room_id = $1",
    "DELETE FROM versions WHERE room_id = $1",
];

const LOCK_ROOM: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7217))";

impl PgStore {
    /// Connects to `url` and migrates the database.
    pub async fn connect(url: &str, timeouts: StoreTimeouts) -> Result<Self> {
        let mut options = PgConnectOptions::from_str(url)?.options([
            ("statement_timeout", timeouts.statement_ms()),
            ("lock_timeout", timeouts.statement_ms()),
            ("idle_in_transaction_session_timeout", timeouts.commit_ms()),
        ]);
        // So an operator can find (and a test can terminate) this server's sessions.
        if options.get_application_name().is_none() {
            options = options.application_name("concord");
        }
        let describe = format!(
            "postgres {}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        );
        // Acquire covers opening a connection, so it also bounds reconnecting to a Postgres
        // that is down. Connections are tested before use (sqlx's default), so ones broken by
        // an outage are replaced rather than failing the next commit.
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(timeouts.statement.max(Duration::from_millis(100)))
            .test_before_acquire(true)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../db/migrations/postgres")
            .run(&pool)
            .await?;
        Ok(PgStore {
            pool,
            describe,
            timeouts,
            webhooks: std::sync::OnceLock::new(),
            objects: std::sync::OnceLock::new(),
        })
    }

    async fn read_room(
        tx: &mut sqlx::PgConnection,
        room: &str,
        max_bytes: usize,
    ) -> Result<super::CompactionRead> {
        let snapshot =
            sqlx::query("SELECT state, op_seq, object_key FROM snapshots WHERE room_id = $1")
                .bind(room)
                .fetch_optional(&mut *tx)
                .await?;
        let (snapshot, snapshot_seq, key) = match snapshot {
            Some(row) => (
                Some(row.try_get::<Vec<u8>, _>(0)?),
                row.try_get::<i64, _>(1)?,
                row.try_get::<Option<String>, _>(2)?,
            ),
            None => (None, 0, None),
        };
        // With a bound: the ops up to the first whose running total of bytes reaches it
        // (`octet_length` reads a TOASTed value's size from its pointer, not its bytes).
        let query = if max_bytes == usize::MAX {
            sqlx::query("SELECT seq, op FROM ops WHERE room_id = $1 AND seq > $2 ORDER BY seq")
        } else {
            sqlx::query(
                "SELECT seq, op FROM ops WHERE room_id = $2 AND seq > $3 AND seq <= COALESCE(( \
                   SELECT seq FROM (SELECT seq, SUM(octet_length(op)) OVER (ORDER BY seq) AS run \
                     FROM ops WHERE room_id = $2 AND seq > $3) AS running \
                   WHERE run >= $1 ORDER BY seq LIMIT 1), 9223372036854775807) \
                 ORDER BY seq",
            )
            .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
        };
        let ops = query
            .bind(room)
            .bind(snapshot_seq)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok((snapshot, snapshot_seq, ops, key))
    }
}

#[async_trait]
impl Store for PgStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn parallel_commits(&self) -> usize {
        4
    }

    /// A load is a few round trips: several at once keep the 16 connections busy, leaving
    /// the rest to commits and the API.
    fn parallel_loads(&self) -> usize {
        8
    }

    fn timeouts(&self) -> StoreTimeouts {
        self.timeouts
    }

    async fn load(&self, room: &str) -> Result<Loaded> {
        self.timeouts
            .bound("load", async {
                // One consistent snapshot of both tables: a concurrent compaction must not be
                // seen half-done (new snapshot missing, old ops already deleted).
                let mut attempt = 0;
                loop {
                    let mut tx = self
                        .pool
                        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                        .await?;
                    let (snapshot, snapshot_seq, ops, key) =
                        Self::read_room(&mut tx, room, usize::MAX).await?;
                    tx.commit().await?;
                    // A compaction may replace the object between the read and the fetch.
                    let snapshot =
                        match super::objects::resolve(self.objects.get(), snapshot, key).await {
                            Err(e) if super::objects::is_not_found(&e) && attempt < 2 => {
                                attempt += 1;
                                continue;
                            }
                            other => other?,
                        };
                    return Ok(Loaded {
                        snapshot,
                        snapshot_seq: seq_from_db(snapshot_seq),
                        ops: ops.into_iter().map(|(s, u)| (seq_from_db(s), u)).collect(),
                    });
                }
            })
            .await
    }

    async fn ops_after(&self, room: &str, after: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        self.timeouts
            .bound("ops_after", async {
                Ok(sqlx::query(
                    "SELECT seq, op FROM ops WHERE room_id = $1 AND seq > $2 ORDER BY seq",
                )
                .bind(room)
                .bind(seq_to_db(after))
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|row| Ok((seq_from_db(row.try_get(0)?), row.try_get(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?)
            })
            .await
    }

    async fn append(&self, batch: &[Append]) -> Result<Vec<u64>> {
        self.append_unbounded(batch)
            .await
            .map_err(|e| self.timeouts.classify("commit", e))
    }

    async fn compact(
        &self,
        room: &str,
        history: &HistoryPolicy,
        folds: &Folds,
    ) -> Result<Option<(Vec<u8>, u64)>> {
        // One consistent snapshot of both tables, with no lock: commits go on meanwhile.
        let read = async {
            let mut tx = self
                .pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            let read = Self::read_room(&mut tx, room, folds.max_bytes()).await?;
            tx.commit().await?;
            Ok(read)
        };
        super::compact_in_turn(
            self.timeouts,
            self.objects.get(),
            folds,
            room,
            read,
            |snapshot_seq, op_seq, state| {
                self.compact_write(room, history, snapshot_seq, op_seq, state)
            },
        )
        .await
    }

    fn use_objects(&self, objects: std::sync::Arc<super::objects::Objects>) {
        let _ = self.objects.set(objects);
    }

    async fn delete_room(&self, room: &str) -> Result<bool> {
        self.timeouts
            .bound("delete", async {
                let mut tx = self.pool.begin().await?;
                sqlx::query(LOCK_ROOM).bind(room).execute(&mut *tx).await?;
                let keys: Vec<String> = sqlx::query_scalar(
                    "SELECT object_key FROM snapshots WHERE room_id = $1 AND object_key IS NOT NULL \
                     UNION SELECT object_key FROM checkpoints WHERE room_id = $1 AND object_key IS NOT NULL",
                )
                .bind(room)
                .fetch_all(&mut *tx)
                .await?;
                let mut deleted = 0;
                for statement in DELETE_ROOM {
                    deleted += sqlx::query(statement)
                        .bind(room)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                if let Some(o) = self.objects.get() {
                    for key in keys {
                        o.delete(&key).await;
                    }
                }
                Ok(deleted > 0)
            })
            .await
    }

    /// The database, and the bucket when snapshots live there.
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        if let Some(o) = self.objects.get() {
            o.ping().await?;
        }
        Ok(())
    }
}

impl PgStore {
    async fn append_unbounded(&self, batch: &[Append]) -> Result<Vec<u64>> {
        // Five round trips per group whatever the number of rooms (begin, lock, read, insert,
        // commit): a round trip per room was most of the commit's time under load.
        let names: Vec<&str> = batch.iter().map(|a| a.room.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        // The rooms' locks in one global order (by key), so two groups never deadlock.
        sqlx::query(
            "SELECT pg_advisory_xact_lock(k) FROM \
               (SELECT DISTINCT hashtextextended(r, 7217) AS k FROM UNNEST($1::text[]) r ORDER BY k) l",
        )
        .bind(&names)
        .execute(&mut *tx)
        .await?;
        // A new statement, so (READ COMMITTED) it sees every commit that held a lock before us.
        let lasts: HashMap<String, i64> = sqlx::query_as(
            "SELECT r, GREATEST((SELECT MAX(seq) FROM ops WHERE room_id = r), \
                                (SELECT op_seq FROM snapshots WHERE room_id = r), 0) \
             FROM UNNEST($1::text[]) r",
        )
        .bind(&names)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let mut firsts = Vec::with_capacity(batch.len());
        let mut rooms = Vec::new();
        let mut seqs = Vec::new();
        let mut updates: Vec<&[u8]> = Vec::new();
        let mut authors: Vec<Option<&str>> = Vec::new();
        let mut bases: Vec<Option<i64>> = Vec::new();
        for append in batch {
            let last = lasts.get(&append.room).copied().unwrap_or(0);
            firsts.push(seq_from_db(last + 1));
            for (k, update) in append.updates.iter().enumerate() {
                let meta = append.meta.get(k);
                rooms.push(append.room.as_str());
                seqs.push(last + 1 + k as i64);
                updates.push(update.as_slice());
                authors.push(meta.and_then(|m| m.author.as_deref()));
                bases.push(meta.and_then(|m| m.base_seq).map(seq_to_db));
            }
        }
        sqlx::query(
            "INSERT INTO ops (room_id, seq, op, committed_at, author, base_seq) \
             SELECT r, s, o, $4, a, b \
             FROM UNNEST($1::text[], $2::bigint[], $3::bytea[], $5::text[], $6::bigint[]) AS u(r, s, o, a, b)",
        )
        .bind(&rooms)
        .bind(&seqs)
        .bind(&updates)
        .bind(super::now_unix_ms())
        .bind(&authors)
        .bind(&bases)
        .execute(&mut *tx)
        .await?;
        if let Some(timing) = self.webhooks.get() {
            let rooms: Vec<(&str, i64, i64)> = batch
                .iter()
                .zip(&firsts)
                .filter(|(a, _)| !a.updates.is_empty())
                .map(|(a, &first)| {
                    let first = seq_to_db(first);
                    (a.room.as_str(), first, first + a.updates.len() as i64 - 1)
                })
                .collect();
            for chunk in rooms.chunks(1024) {
                super::webhooks::changed_upsert(chunk, super::now_unix_ms(), *timing)
                    .build()
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(firsts)
    }

    /// The end of a compaction: the new snapshot (object first), history kept, if the
    /// snapshot is still the one that was read at `snapshot_seq`.
    async fn compact_write(
        &self,
        room: &str,
        history: &HistoryPolicy,
        snapshot_seq: i64,
        op_seq: i64,
        state: Vec<u8>,
    ) -> Result<Option<(Vec<u8>, u64)>> {
        // The object first, the row naming it after: a row never names a missing object.
        let objects = self.objects.get();
        let new_key = match objects {
            Some(o) => {
                let key = o.new_snapshot_key(room, seq_from_db(op_seq));
                o.put(&key, state.clone()).await?;
                Some(key)
            }
            None => None,
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(LOCK_ROOM).bind(room).execute(&mut *tx).await?;
        let current: Option<(i64, Option<String>)> =
            sqlx::query_as("SELECT op_seq, object_key FROM snapshots WHERE room_id = $1")
                .bind(room)
                .fetch_optional(&mut *tx)
                .await?;
        let (current_seq, old_key) = current.unwrap_or((0, None));
        if current_seq != snapshot_seq {
            // Another instance compacted the room since the read: keep its work.
            drop(tx);
            if let (Some(o), Some(k)) = (objects, &new_key) {
                o.delete(k).await;
            }
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO snapshots (room_id, state, op_seq, updated_at, object_key) \
             VALUES ($1, $2, $3, now(), $4) \
             ON CONFLICT (room_id) DO UPDATE SET state = EXCLUDED.state, \
               op_seq = EXCLUDED.op_seq, updated_at = EXCLUDED.updated_at, \
               object_key = EXCLUDED.object_key",
        )
        .bind(room)
        .bind(if new_key.is_some() {
            &[][..]
        } else {
            state.as_slice()
        })
        .bind(op_seq)
        .bind(new_key.as_deref())
        .execute(&mut *tx)
        .await?;
        let mut unreferenced =
            keep_history(&mut tx, room, op_seq, &state, new_key.as_deref(), history).await?;
        // The replaced snapshot's object goes, unless a checkpoint still names it.
        if let Some(old) = old_key {
            let named: i64 = sqlx::query_scalar(super::history::OBJECT_IN_HISTORY)
                .bind(room)
                .bind(&old)
                .fetch_one(&mut *tx)
                .await?;
            if named == 0 {
                unreferenced.push(old);
            }
        }
        tx.commit().await?;
        if let Some(o) = objects {
            for key in unreferenced {
                o.delete(&key).await;
            }
        }
        Ok(Some((state, seq_from_db(op_seq))))
    }
}

super::history::history_impl!(PgStore);
super::history::keep_history_impl!(sqlx::PgConnection);
super::directory::directory_impl!(PgStore);

super::webhooks::webhook_impl!(PgStore, super::webhooks::CLAIM_POSTGRES);

impl PgStore {
    /// The pool outbox writes go through.
    async fn outbox_writer(&self) -> &PgPool {
        &self.pool
    }
}
