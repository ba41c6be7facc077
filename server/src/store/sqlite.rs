//! The embedded default: one SQLite file in WAL mode.
//!
//! `synchronous = FULL` because an ack promises the op survives a crash, power loss included;
//! group commit keeps that to one fsync per batch rather than per op. Write transactions use
//! `BEGIN IMMEDIATE` so a read-then-write transaction takes the write lock up front instead of
//! failing with `SQLITE_BUSY` when it tries to upgrade.
//!
//! The busy timeout (how long a statement waits for another writer's lock) is the
//! `STATEMENT_TIMEOUT_MS` bound, never longer than the commit bound: the committer's timeout
//! drops a stalled commit, but the connection's worker thread stays inside SQLite until the
//! busy timeout lets go, so a longer one would keep the next commit waiting too.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::history::HistoryPolicy;
use super::{seq_from_db, seq_to_db, Append, Folds, Loaded, OpMeta, Store, StoreTimeouts};
use crate::error::Result;

/// Rows per multi-row INSERT (6 parameters each, far below SQLite's parameter limit), and
/// rooms per seq lookup.
const INSERT_CHUNK: usize = 256;

/// Deletes a room's rows from every table that holds its document or history.
const DELETE_ROOM: [&str; 4] = [
    "DELETE FROM ops WHERE room_id = ?",
    "DELETE FROM snapshots WHERE room_id = ?",
    "DELETE FROM checkpoints WHERE room_id = ?",
    "DELETE FROM versions WHERE room_id = ?",
];

/// SQLite-backed store.
pub struct SqliteStore {
    pool: SqlitePool,
    path: String,
    timeouts: StoreTimeouts,
    /// The op log's writer: its own connection (a burst of compaction reads cannot leave the
    /// committer waiting for one), behind a lock held by every write transaction of the op
    /// log. SQLite has one writer; a second one waiting on the file lock sleeps in SQLite's
    /// busy handler (steps of up to 100 ms), while a waiter on this lock wakes the moment the
    /// writer is done.
    writer: tokio::sync::Mutex<SqlitePool>,
    /// The background WAL checkpoint task, stopped with the store.
    checkpointer: tokio::task::AbortHandle,
    /// Set when webhooks are on: `append` records `document.changed` (see [`super::webhooks`]).
    webhooks: std::sync::OnceLock<super::webhooks::Timing>,
    /// Set with `OBJECT_STORE_URL`: snapshots live in the bucket (see [`super::objects`]).
    objects: std::sync::OnceLock<std::sync::Arc<super::objects::Objects>>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.checkpointer.abort();
    }
}

/// How often the WAL is checkpointed in the background.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Copies committed WAL pages into the database file, beside the writer. `PASSIVE` never
/// blocks a writer or a reader; once a pass has copied everything, the next write starts the
/// WAL from its beginning again, so the file stays as large as about one interval of commits.
async fn checkpoint_loop(pool: SqlitePool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed, with its directory) the database at `url` and migrates it.
    pub async fn connect(url: &str, mut timeouts: StoreTimeouts) -> Result<Self> {
        timeouts.statement = timeouts.statement.min(timeouts.commit);
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(timeouts.statement)
            // Checkpoints run in the background (see `checkpoint_loop`), not inside whichever
            // commit happened to fill the WAL: that commit's ack waited for the copy and fsync.
            .pragma("wal_autocheckpoint", "0");
        let path = options.get_filename().display().to_string();
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let acquire = timeouts.statement.max(Duration::from_millis(100));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // Opened up front: a crowd of room loads should not also wait for connections.
            .min_connections(4)
            .acquire_timeout(acquire)
            .connect_with(options.clone())
            .await?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(acquire)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../db/migrations/sqlite").run(&pool).await?;
        let checkpointer = tokio::spawn(checkpoint_loop(pool.clone())).abort_handle();
        Ok(SqliteStore {
            pool,
            path,
            timeouts,
            writer: tokio::sync::Mutex::new(writer),
            checkpointer,
            webhooks: std::sync::OnceLock::new(),
            objects: std::sync::OnceLock::new(),
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite {}", self.path)
    }

    fn parallel_commits(&self) -> usize {
        1
    }

    /// Half the read pool: compaction and the API keep the other half.
    fn parallel_loads(&self) -> usize {
        2
    }

    fn timeouts(&self) -> StoreTimeouts {
        self.timeouts
    }

    async fn load(&self, room: &str) -> Result<Loaded> {
        self.timeouts
            .bound("load", async {
                let mut attempt = 0;
                loop {
                    let mut tx = self.pool.begin().await?;
                    let (snapshot, snapshot_seq, ops, key) =
                        read_room(&mut tx, room, usize::MAX).await?;
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
                    "SELECT seq, op FROM ops WHERE room_id = ? AND seq > ? ORDER BY seq",
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
        // A deferred (read) transaction: in WAL mode it sees one consistent snapshot of both
        // tables and never blocks the committer.
        let read = async {
            let mut tx = self.pool.begin().await?;
            let read = read_room(&mut tx, room, folds.max_bytes()).await?;
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
                let writer = self.writer.lock().await;
                let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
                let keys: Vec<String> = sqlx::query_scalar(
                    "SELECT object_key FROM snapshots WHERE room_id = ?1 AND object_key IS NOT NULL \
                     UNION SELECT object_key FROM checkpoints WHERE room_id = ?1 AND object_key IS NOT NULL",
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

impl SqliteStore {
    async fn append_unbounded(&self, batch: &[Append]) -> Result<Vec<u64>> {
        let writer = self.writer.lock().await;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        // A constant number of statements per group, whatever the number of rooms: sqlx runs
        // SQLite on a worker thread, and a round trip per room (or per row) was most of the
        // commit's time under load.
        let mut lasts: HashMap<String, i64> = HashMap::with_capacity(batch.len());
        for chunk in batch.chunks(INSERT_CHUNK) {
            let mut query = sqlx::QueryBuilder::new("WITH r(room_id) AS (VALUES ");
            let mut rooms = query.separated(", ");
            for append in chunk {
                rooms.push("(");
                rooms.push_bind_unseparated(append.room.as_str());
                rooms.push_unseparated(")");
            }
            query.push(
                ") SELECT r.room_id, MAX(\
                   COALESCE((SELECT MAX(seq) FROM ops WHERE ops.room_id = r.room_id), 0), \
                   COALESCE((SELECT op_seq FROM snapshots s WHERE s.room_id = r.room_id), 0)) \
                 FROM r",
            );
            for row in query.build().fetch_all(&mut *tx).await? {
                lasts.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        let mut firsts = Vec::with_capacity(batch.len());
        let mut rows: Vec<(&str, i64, &[u8], &OpMeta)> = Vec::new();
        let unknown = OpMeta::default();
        for append in batch {
            let first = lasts.get(&append.room).copied().unwrap_or(0) + 1;
            firsts.push(seq_from_db(first));
            for (k, update) in append.updates.iter().enumerate() {
                let meta = append.meta.get(k).unwrap_or(&unknown);
                rows.push((
                    append.room.as_str(),
                    first + k as i64,
                    update.as_slice(),
                    meta,
                ));
            }
        }
        let now = super::now_unix_ms();
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO ops (room_id, seq, op, committed_at, author, base_seq) ",
            );
            insert.push_values(chunk, |mut row, (room, seq, update, meta)| {
                row.push_bind(*room)
                    .push_bind(*seq)
                    .push_bind(*update)
                    .push_bind(now)
                    .push_bind(meta.author.as_deref())
                    .push_bind(meta.base_seq.map(seq_to_db));
            });
            insert.build().execute(&mut *tx).await?;
        }
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
            for chunk in rooms.chunks(INSERT_CHUNK) {
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
        let writer = self.writer.lock().await;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        let current: Option<(i64, Option<String>)> =
            sqlx::query_as("SELECT op_seq, object_key FROM snapshots WHERE room_id = ?")
                .bind(room)
                .fetch_optional(&mut *tx)
                .await?;
        let (current_seq, old_key) = current.unwrap_or((0, None));
        if current_seq != snapshot_seq {
            // Another compaction moved the snapshot since the read: keep its work.
            drop(tx);
            drop(writer);
            if let (Some(o), Some(k)) = (objects, &new_key) {
                o.delete(k).await;
            }
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO snapshots (room_id, state, op_seq, updated_at, object_key) \
             VALUES (?1, ?2, ?3, CAST(strftime('%s','now') AS INTEGER), ?4) \
             ON CONFLICT(room_id) DO UPDATE SET state = excluded.state, \
               op_seq = excluded.op_seq, updated_at = excluded.updated_at, \
               object_key = excluded.object_key",
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
        drop(writer);
        if let Some(o) = objects {
            for key in unreferenced {
                o.delete(&key).await;
            }
        }
        Ok(Some((state, seq_from_db(op_seq))))
    }
}

/// The room's snapshot (state, op seq) and the ops after it, inside the caller's transaction.
async fn read_room(
    tx: &mut sqlx::SqliteConnection,
    room: &str,
    max_bytes: usize,
) -> Result<super::CompactionRead> {
    let snapshot = sqlx::query("SELECT state, op_seq, object_key FROM snapshots WHERE room_id = ?")
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
    // With a bound: the ops up to the first whose running total of bytes reaches it (SQLite
    // reads a blob's length from its record header, so the bound costs no op's bytes).
    let query = if max_bytes == usize::MAX {
        sqlx::query("SELECT seq, op FROM ops WHERE room_id = ?1 AND seq > ?2 ORDER BY seq")
    } else {
        sqlx::query(
            "SELECT seq, op FROM ops WHERE room_id = ?2 AND seq > ?3 AND seq <= COALESCE(( \
               SELECT seq FROM (SELECT seq, SUM(length(op)) OVER (ORDER BY seq) AS run \
                 FROM ops WHERE room_id = ?2 AND seq > ?3) \
               WHERE run >= ?1 ORDER BY seq LIMIT 1), 9223372036854775807) \
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

super::history::history_impl!(SqliteStore);
super::history::keep_history_impl!(sqlx::SqliteConnection);
super::directory::directory_impl!(SqliteStore);

super::webhooks::webhook_impl!(SqliteStore, super::webhooks::CLAIM_SQLITE);

impl SqliteStore {
    /// The pool outbox writes go through: the writer, behind its lock.
    async fn outbox_writer(&self) -> tokio::sync::MutexGuard<'_, SqlitePool> {
        self.writer.lock().await
    }
}
