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

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{seq_from_db, seq_to_db, Append, OpMeta, StoreTimeouts};
use crate::error::Result;

/// Rows per multi-row INSERT (6 parameters each, far below SQLite's parameter limit), and
/// rooms per seq lookup.
const INSERT_CHUNK: usize = 256;

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
        record_changes(&mut tx, self.webhooks.get(), batch, &firsts).await?;
        tx.commit().await?;
        Ok(firsts)
    }
}

super::history::history_impl!(SqliteStore);
super::history::keep_history_impl!(sqlx::SqliteConnection);
super::sql::op_log_impl!(
    sqlx::SqliteConnection,
    "CAST(strftime('%s','now') AS INTEGER)"
);
super::directory::directory_impl!(SqliteStore);

super::webhooks::webhook_impl!(SqliteStore, super::webhooks::CLAIM_SQLITE);

impl SqliteStore {
    /// The pool outbox writes go through: the writer, behind its lock.
    async fn outbox_writer(&self) -> tokio::sync::MutexGuard<'_, SqlitePool> {
        self.writer.lock().await
    }
}

impl SqliteStore {
    /// One committer at a time: SQLite has one writer.
    const PARALLEL_COMMITS: usize = 1;
    /// Half the read pool: compaction and the API keep the other half.
    const PARALLEL_LOADS: usize = 2;

    fn description(&self) -> String {
        format!("sqlite {}", self.path)
    }

    /// A deferred (read) transaction: in WAL mode it sees one consistent snapshot of both
    /// tables and never blocks the committer.
    async fn read_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin().await?)
    }

    /// The writer, behind its lock (see `SqliteStore::writer`), in an immediate transaction.
    async fn write_tx(
        &self,
        _room: &str,
    ) -> Result<(
        tokio::sync::MutexGuard<'_, SqlitePool>,
        sqlx::Transaction<'static, sqlx::Sqlite>,
    )> {
        let writer = self.writer.lock().await;
        let tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        Ok((writer, tx))
    }
}

super::sql::store_impl!(SqliteStore);
