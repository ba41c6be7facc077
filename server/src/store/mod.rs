//! Durable storage of rooms: the `Store` trait and its SQLite and Postgres implementations.
//!
//! The contract (shared DESIGN.md, "Durability"): `append` assigns each room's next seqs
//! inside the commit transaction, gap-free, so seq order is commit order even with several
//! instances writing one room; `compact` folds the snapshot and the ops it read into a new
//! snapshot (keeping the ops as history, see [`history`]); `load` is the snapshot plus every
//! later op.
//!
//! Group commit lives in [`committer`]: many rooms' batches share one transaction.

pub mod committer;
pub mod directory;
pub mod history;
pub mod objects;
pub mod postgres;
pub(crate) mod sql;
pub mod sqlite;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cpu::CpuPool;
use crate::error::{Result, ServerError};
use crate::secret::{redact_url, scrub};

/// How long the store may take, so a stalled database turns into a prompt, typed error
/// (`ServerError::Timeout` / `StatementTimeout`) instead of a hang that only ends when the
/// database or the client gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreTimeouts {
    /// Whole store calls: the committer's group transaction (retries included), and each
    /// `load`, `ops_after` and `compact` (`COMMIT_TIMEOUT_MS`).
    pub commit: Duration,
    /// Each wait inside a call: Postgres `statement_timeout` and `lock_timeout`, SQLite's busy
    /// timeout, pool acquire (`STATEMENT_TIMEOUT_MS`).
    pub statement: Duration,
}

impl Default for StoreTimeouts {
    fn default() -> Self {
        StoreTimeouts {
            commit: Duration::from_millis(5000),
            statement: Duration::from_millis(2000),
        }
    }
}

impl StoreTimeouts {
    pub(crate) fn commit_ms(&self) -> u64 {
        self.commit.as_millis() as u64
    }

    pub(crate) fn statement_ms(&self) -> u64 {
        self.statement.as_millis() as u64
    }

    /// Runs one whole store call under the commit bound; an elapsed bound is
    /// `ServerError::Timeout { what }`. Dropping the call mid-transaction is safe: sqlx rolls
    /// the transaction back when the connection returns to the pool.
    pub(crate) async fn bound<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.commit, call).await {
            Ok(result) => result.map_err(|e| self.classify(what, e)),
            Err(_) => Err(ServerError::Timeout {
                what,
                after_ms: self.commit_ms(),
            }),
        }
    }

    /// Turns the drivers' ways of saying "waited too long" into the typed timeouts:
    /// - the pool had no connection within the acquire timeout: `Timeout`;
    /// - SQLite `BUSY`/`LOCKED` after the busy timeout: `Timeout`, since SQLite's write lock
    ///   covers the whole file, so every room is stalled alike;
    /// - Postgres `statement_timeout` (57014) or `lock_timeout` (55P03): `StatementTimeout`,
    ///   which may be one room's advisory lock held elsewhere.
    pub(crate) fn classify(&self, what: &'static str, e: ServerError) -> ServerError {
        let ServerError::Store(err) = &e else {
            return e;
        };
        let stalled = ServerError::Timeout {
            what,
            after_ms: self.statement_ms(),
        };
        match err {
            sqlx::Error::PoolTimedOut => stalled,
            sqlx::Error::Database(db) => {
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    let primary = db
                        .code()
                        .and_then(|c| c.parse::<i32>().ok())
                        .map(|c| c & 0xff);
                    // SQLITE_BUSY = 5, SQLITE_LOCKED = 6.
                    return if matches!(primary, Some(5 | 6)) {
                        stalled
                    } else {
                        e
                    };
                }
                let cancelled = match db.code().as_deref() {
                    Some("57014") => "statement timeout",
                    Some("55P03") => "lock timeout",
                    _ => return e,
                };
                ServerError::StatementTimeout {
                    what: cancelled,
                    after_ms: self.statement_ms(),
                }
            }
            _ => e,
        }
    }
}

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
    /// What history keeps of each update, in the same order (missing entries: unknown).
    pub meta: Vec<OpMeta>,
}

/// What history keeps of an op besides its bytes and commit time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpMeta {
    /// Who sent it: the authenticated user's name, else the name the connection declared in
    /// its presence.
    pub author: Option<String>,
    /// The room seq its sender had seen when it made it, if the sender said.
    pub base_seq: Option<u64>,
}

/// Now, as unix ms (commit times of ops, version times).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Where rooms live.
#[async_trait]
pub trait Store:
    directory::Directory + history::HistoryStore + webhooks::WebhookStore + Send + Sync + 'static
{
    /// Short description for the startup log (`sqlite data/concord.db`, `postgres host/db`).
    fn describe(&self) -> String;

    /// How many group commits may run at once (SQLite has one writer).
    fn parallel_commits(&self) -> usize;

    /// How many rooms may read their state at once ([`Store::load`]); the rest wait their turn
    /// in the registry, not on the pool, whose acquire timeout is meant for a stalled store.
    fn parallel_loads(&self) -> usize;

    /// The bounds this store was opened with; the committer enforces `commit` around each
    /// group transaction.
    fn timeouts(&self) -> StoreTimeouts;

    /// The room's snapshot and every op after it.
    async fn load(&self, room: &str) -> Result<Loaded>;

    /// Ops with `seq > after`, in order (catch-up).
    async fn ops_after(&self, room: &str, after: u64) -> Result<Vec<(u64, Vec<u8>)>>;

    /// Commits every room's updates in one transaction; returns each room's first seq, in the
    /// order of `batch`. No room appears twice in a batch. Not bounded by `timeouts().commit`
    /// itself: the committer bounds the group and its retries together.
    async fn append(&self, batch: &[Append]) -> Result<Vec<u64>>;

    /// Folds the snapshot and the ops after it (at most [`Folds::max_bytes`] of them, at least
    /// one) into a new snapshot, with `folds`. Returns the new snapshot and its op seq, or
    /// `None` if there was nothing to fold (or a concurrent compaction of the same room won).
    /// A room whose tail is longer is not done: it is still due, and the next call goes on.
    ///
    /// The read and the fold hold no lock: only the final write (snapshot upsert, checkpoint,
    /// conditional on the snapshot being the one that was read) takes the room's write lock,
    /// so commits to the room never wait for a fold. That wait was the commit tail under load.
    /// With history kept ([`history::HistoryPolicy`]), the ops are not deleted: a checkpoint is
    /// written every `checkpoint_ops` ops, and only ops older than the retention window and
    /// behind the oldest version are dropped, up to a checkpoint.
    async fn compact(
        &self,
        room: &str,
        history: &history::HistoryPolicy,
        folds: &Folds,
    ) -> Result<Option<(Vec<u8>, u64)>>;

    /// Deletes everything stored of the room (ops, snapshot, checkpoints, versions) in one
    /// transaction under the room's write lock, so no commit of the room interleaves with it.
    /// Returns whether there was anything to delete. Bounded by `timeouts().commit`.
    async fn delete_room(&self, room: &str) -> Result<bool>;

    /// From now on, snapshots are written to (and read from) this bucket.
    fn use_objects(&self, objects: Arc<objects::Objects>);

    /// Answers a trivial query (`SELECT 1`), for `/readyz`; the caller bounds it in time.
    async fn ping(&self) -> Result<()>;
}

/// Opens the store named by a `DATABASE_URL` with the default bounds and runs its migrations.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    connect_with(url, StoreTimeouts::default()).await
}

/// Opens the store named by a `DATABASE_URL` and runs its migrations. Errors name the URL
/// only redacted: they are logged at startup.
pub async fn connect_with(url: &str, timeouts: StoreTimeouts) -> Result<Arc<dyn Store>> {
    let opened: Result<Arc<dyn Store>> =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            postgres::PgStore::connect(url, timeouts)
                .await
                .map(|s| Arc::new(s) as Arc<dyn Store>)
        } else if url.starts_with("sqlite:") {
            sqlite::SqliteStore::connect(url, timeouts)
                .await
                .map(|s| Arc::new(s) as Arc<dyn Store>)
        } else {
            return Err(ServerError::Config {
                name: "DATABASE_URL",
                value: redact_url(url),
                reason: "expected sqlite://path or postgres://...".to_owned(),
            });
        };
    opened.map_err(|e| match e {
        // Already free of the URL, and callers match on them.
        e @ (ServerError::Timeout { .. } | ServerError::StatementTimeout { .. }) => e,
        e => ServerError::Connect {
            target: redact_url(url),
            reason: scrub(&e.to_string(), url),
        },
    })
}

/// Where compaction folds run, how many at once, and how much of a room's log one may fold.
///
/// A fold rebuilds the whole document (snapshot plus ops) and re-encodes it: seconds of CPU and
/// many times the ops' bytes in memory for a large room. So folds run on the [`CpuPool`] beside
/// every other piece of CRDT work, at most `parallel` at once (a fraction of the pool, so rooms
/// keep applying edits meanwhile), and each folds at most `max_bytes` of ops: a longer tail is
/// folded in steps, one snapshot per step, instead of in one fold that outgrows memory and the
/// store's timeout.
///
/// A fold's turn is held by the fold itself, not by the call that waits for it: a compaction
/// whose store call timed out gives its turn back only when its fold has really ended. (Freeing
/// it at the timeout let the next compaction start beside a fold still running, and under a
/// steady writer those piled up until the kernel killed the process.)
#[derive(Clone, Debug)]
pub struct Folds {
    cpu: CpuPool,
    turns: Arc<Semaphore>,
    max_bytes: usize,
}

/// A turn to fold (see [`Folds`]); held until the fold that took it ends.
pub(crate) struct FoldTurn {
    _permit: OwnedSemaphorePermit,
}

impl Folds {
    /// Folds on `cpu`, `parallel` at once (at least one), each over at most `max_bytes` of ops
    /// (at least one op, whatever its size).
    pub fn new(cpu: CpuPool, parallel: usize, max_bytes: usize) -> Folds {
        Folds {
            cpu,
            turns: Arc::new(Semaphore::new(parallel.max(1))),
            max_bytes: max_bytes.max(1),
        }
    }

    /// The most op bytes one compaction reads and folds.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Waits for a turn to fold.
    pub(crate) async fn turn(&self) -> Result<FoldTurn> {
        self.turns
            .clone()
            .acquire_owned()
            .await
            .map(|permit| FoldTurn { _permit: permit })
            .map_err(|_| ServerError::Unavailable)
    }

    /// Folds `ops` into `snapshot` on the CPU pool; the turn goes with the job, and comes back
    /// with its result only if the caller is still waiting.
    pub(crate) async fn fold(
        &self,
        turn: FoldTurn,
        room: &str,
        snapshot: Option<Vec<u8>>,
        ops: Vec<Vec<u8>>,
    ) -> Result<(Vec<u8>, FoldTurn)> {
        let ran = self
            .cpu
            .run(move || {
                let state = concord_engine::room::fold(snapshot.as_deref(), &ops);
                (state, turn)
            })
            .await?;
        let (state, turn) = ran.value;
        let state = state.map_err(|source| ServerError::Corrupt {
            room: room.to_owned(),
            source,
        })?;
        Ok((state, turn))
    }
}

/// What a compaction read in one transaction: the snapshot (inline bytes), its op seq, the
/// ops after it (at most [`Folds::max_bytes`]) and the object key naming the snapshot, if any.
pub(crate) type CompactionRead = (Option<Vec<u8>>, i64, Vec<(i64, Vec<u8>)>, Option<String>);

/// One compaction, the same for every store: a turn first (waiting for it is not the store
/// being slow), then `read` within the store's bound, the fold on the CPU pool outside it (a
/// fold bounded by it could never finish once a room's document takes longer than the bound to
/// rebuild), then `write(snapshot_seq, op_seq, state)` within the bound, the turn held until
/// the writes are done.
pub(crate) async fn compact_in_turn<W, WF>(
    timeouts: StoreTimeouts,
    objects: Option<&Arc<objects::Objects>>,
    folds: &Folds,
    room: &str,
    read: impl Future<Output = Result<CompactionRead>>,
    write: W,
) -> Result<Option<(Vec<u8>, u64)>>
where
    W: FnOnce(i64, i64, Vec<u8>) -> WF,
    WF: Future<Output = Result<Option<(Vec<u8>, u64)>>>,
{
    let turn = folds.turn().await?;
    let (snapshot, snapshot_seq, ops, key) = timeouts.bound("compact", read).await?;
    let Some(&(op_seq, _)) = ops.last() else {
        return Ok(None);
    };
    let snapshot = objects::resolve(objects, snapshot, key).await?;
    let ops = ops.into_iter().map(|(_, u)| u).collect();
    let (state, turn) = folds.fold(turn, room, snapshot, ops).await?;
    let written = timeouts
        .bound("compact", write(snapshot_seq, op_seq, state))
        .await;
    drop(turn);
    written
}

/// A room as the store holds it, the same for every store: `read` (one consistent read of the
/// snapshot and the ops after it, in the store's own transaction) and the snapshot's bytes from
/// the bucket when it lives there. A compaction may replace that object between the read and
/// the fetch: then the room is read again (twice at most).
pub(crate) async fn load_resolving<R, RF>(
    objects: Option<&Arc<objects::Objects>>,
    mut read: R,
) -> Result<Loaded>
where
    R: FnMut() -> RF,
    RF: Future<Output = Result<CompactionRead>>,
{
    let mut attempt = 0;
    loop {
        let (snapshot, snapshot_seq, ops, key) = read().await?;
        let snapshot = match objects::resolve(objects, snapshot, key).await {
            Err(e) if objects::is_not_found(&e) && attempt < 2 => {
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
}

/// A compaction's new snapshot, put in the bucket (when snapshots live there) before any row
/// names it: a row never names a missing object. Its key, if so.
pub(crate) async fn put_snapshot(
    objects: Option<&Arc<objects::Objects>>,
    room: &str,
    op_seq: i64,
    state: &[u8],
) -> Result<Option<String>> {
    let Some(o) = objects else {
        return Ok(None);
    };
    let key = o.new_snapshot_key(room, seq_from_db(op_seq));
    o.put(&key, state.to_vec()).await?;
    Ok(Some(key))
}

/// After a compaction's write transaction: the objects no row names any more go (`replaced`,
/// from `replace_snapshot`), or, if another compaction had moved the snapshot (`None`: the
/// transaction was rolled back), the object put for this one. The new snapshot and its seq.
pub(crate) async fn compacted(
    objects: Option<&Arc<objects::Objects>>,
    replaced: Option<Vec<String>>,
    new_key: Option<String>,
    state: Vec<u8>,
    op_seq: i64,
) -> Result<Option<(Vec<u8>, u64)>> {
    match replaced {
        Some(unreferenced) => {
            delete_objects(objects, unreferenced).await;
            Ok(Some((state, seq_from_db(op_seq))))
        }
        None => {
            delete_objects(objects, new_key.into_iter().collect()).await;
            Ok(None)
        }
    }
}

/// After a room's rows are deleted, the bucket objects they named.
pub(crate) async fn delete_objects(objects: Option<&Arc<objects::Objects>>, keys: Vec<String>) {
    if let Some(o) = objects {
        for key in keys {
            o.delete(&key).await;
        }
    }
}

/// Converts a stored seq (SQL BIGINT) to u64; negative values never occur.
pub(crate) fn seq_from_db(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Converts a seq to SQL BIGINT.
pub(crate) fn seq_to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compaction abandoned mid-fold (its store call timed out) gives its turn back only when
    /// its fold ends: the next one cannot start beside it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_fold_keeps_its_turn_after_its_caller_gives_up() {
        let cpu = CpuPool::start(1, 4);
        let folds = Folds::new(cpu.clone(), 1, 1024);
        // The pool's only thread is busy, so the fold waits in its queue.
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let blocker = tokio::spawn({
            let cpu = cpu.clone();
            async move { cpu.run(move || blocked.recv()).await }
        });
        tokio::task::yield_now().await;
        let turn = folds.turn().await.expect("a turn");
        let mut doc = concord_engine::Document::new(1);
        let op = doc.insert(0, "x").expect("insert");
        let gave_up = tokio::time::timeout(
            Duration::from_millis(20),
            folds.fold(turn, "r", None, vec![op]),
        )
        .await;
        assert!(gave_up.is_err(), "the fold is still queued");
        assert_eq!(
            folds.turns.available_permits(),
            0,
            "the queued fold holds it"
        );
        release.send(()).expect("release");
        blocker
            .await
            .expect("join")
            .expect("ran")
            .value
            .expect("recv");
        // The abandoned fold runs, then frees its turn.
        let next = tokio::time::timeout(Duration::from_secs(5), folds.turn()).await;
        assert!(next.is_ok(), "the turn came back once the fold ended");
    }
}
