//! Durable storage of rooms: the `Store` trait and its SQLite and Postgres implementations.
//!
//! The contract (shared DESIGN.md, "Durability"): `append` assigns each room's next seqs
//! inside the commit transaction, gap-free, so seq order is commit order even with several
//! instances writing one room; `compact` folds the snapshot and the ops it read in the same
//! transaction and deletes exactly those ops; `load` is the snapshot plus every later op.
//!
//! Group commit lives in [`committer`]: many rooms' batches share one transaction.

pub mod committer;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{Result, ServerError};

/// A room as stored: its latest snapshot (if any) and the ops after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Full-state update of the snapshot.
    pub snapshot: Option<Vec<u8>>,
    /// Last op seq folded into the snapshot (0 without one).
    pub snapshot_seq: u64,
    /// Ops with `seq > snapshot_seq`, in seq order.
    pub ops: Vec<(u64, Vec<u8>)>,
}

/// One room's part of a group commit.
#[derive(Debug, Clone)]
pub struct Append {
    /// The room.
    pub room: String,
    /// Its updates, in order; they get consecutive seqs.
    pub updates: Vec<Vec<u8>>,
}

/// Where rooms live.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short description for the startup log (`sqlite data/concord.db`, `postgres host/db`).
    fn describe(&self) -> String;

    /// How many group commits may run at once (SQLite has one writer).
    fn parallel_commits(&self) -> usize;

    /// The room's snapshot and every op after it.
    async fn load(&self, room: &str) -> Result<Loaded>;

    /// Ops with `seq > after`, in order (catch-up).
    async fn ops_after(&self, room: &str, after: u64) -> Result<Vec<(u64, Vec<u8>)>>;

    /// Commits every room's updates in one transaction; returns each room's first seq, in the
    /// order of `batch`. No room appears twice in a batch.
    async fn append(&self, batch: &[Append]) -> Result<Vec<u64>>;

    /// Folds the snapshot and the ops after it into a new snapshot and deletes those ops, in one
    /// transaction. Returns the new snapshot and its op seq, or `None` if there was nothing to
    /// fold.
    async fn compact(&self, room: &str) -> Result<Option<(Vec<u8>, u64)>>;
}

/// Opens the store named by a `DATABASE_URL` and runs its migrations.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url).await?))
    } else {
        Err(ServerError::Config {
            name: "DATABASE_URL",
            value: url.to_owned(),
            reason: "expected sqlite://path or postgres://...".to_owned(),
        })
    }
}

/// The compaction fold, off the async workers (a large document takes a while to re-encode).
pub(crate) async fn fold_blocking(
    room: &str,
    snapshot: Option<Vec<u8>>,
    ops: Vec<Vec<u8>>,
) -> Result<Vec<u8>> {
    let room_name = room.to_owned();
    tokio::task::spawn_blocking(move || concord_engine::room::fold(snapshot.as_deref(), &ops))
        .await
        .map_err(|_| ServerError::Unavailable)?
        .map_err(|source| ServerError::Corrupt {
            room: room_name,
            source,
        })
}

/// Converts a stored seq (SQL BIGINT) to u64; negative values never occur.
pub(crate) fn seq_from_db(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Converts a seq to SQL BIGINT.
pub(crate) fn seq_to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
