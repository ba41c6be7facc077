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

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::{seq_from_db, seq_to_db, Append, StoreTimeouts};
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
        record_changes(&mut tx, self.webhooks.get(), batch, &firsts).await?;
        tx.commit().await?;
        Ok(firsts)
    }
}

super::history::history_impl!(PgStore);
super::history::keep_history_impl!(sqlx::PgConnection);
super::sql::op_log_impl!(sqlx::PgConnection, "now()");
super::directory::directory_impl!(PgStore);

super::webhooks::webhook_impl!(PgStore, super::webhooks::CLAIM_POSTGRES);

impl PgStore {
    /// The pool outbox writes go through.
    async fn outbox_writer(&self) -> &PgPool {
        &self.pool
    }
}

impl PgStore {
    const PARALLEL_COMMITS: usize = 4;
    /// A load is a few round trips: several at once keep the 16 connections busy, leaving
    /// the rest to commits and the API.
    const PARALLEL_LOADS: usize = 8;

    fn description(&self) -> String {
        self.describe.clone()
    }

    /// One consistent snapshot of both tables, with no lock: commits go on meanwhile, and a
    /// concurrent compaction is never seen half-done (new snapshot missing, old ops deleted).
    async fn read_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
        Ok(self.pool.begin_with(begin).await?)
    }

    /// A transaction holding the room's advisory lock (every writer of the room takes it).
    async fn write_tx(
        &self,
        room: &str,
    ) -> Result<((), sqlx::Transaction<'static, sqlx::Postgres>)> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(LOCK_ROOM).bind(room).execute(&mut *tx).await?;
        Ok(((), tx))
    }
}

super::sql::store_impl!(PgStore);
