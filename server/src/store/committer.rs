//! Group commit: rooms hand their batches to a committer, which commits whatever has queued up
//! (across rooms) in one transaction. While a commit is in flight the next group gathers, so
//! under load each fsync carries many ops and at low load an op waits for no timer.
//!
//! Each group runs under the store's commit bound (`COMMIT_TIMEOUT_MS`), so a stalled store
//! answers the group's rooms with a typed timeout instead of holding them until the database
//! gives up. A group that the database *rejected* (an error on a live connection: one room's
//! lock timed out, one room's data refused) is retried room by room, each in its own
//! transaction and within the same bound, so one poisoned room does not fail its neighbours.
//! Nothing is retried when the outcome is unknown (our deadline elapsed, the connection
//! broke) or the whole store is stalled (SQLite's file lock, an empty pool): a retry could
//! not help there and would only delay the answer.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::{timeout_at, Instant};

use super::{Append, OpMeta, Store};
use crate::error::{Result, ServerError};

/// Most room batches in one transaction.
const MAX_GROUP: usize = 256;

struct Request {
    append: Append,
    reply: oneshot::Sender<Result<u64>>,
}

/// Handle for rooms to submit their batches.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
}

impl Committer {
    /// Starts the commit workers (as many as the store allows in parallel) on `tracker`.
    pub fn start(store: Arc<dyn Store>, tracker: &tokio_util::task::TaskTracker) -> Committer {
        let (tx, rx) = mpsc::channel::<Request>(4096);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..store.parallel_commits().max(1) {
            let store = store.clone();
            let rx = rx.clone();
            tracker.spawn(async move { worker(store, rx).await });
        }
        Committer { tx }
    }

    /// Commits one room's updates (with what history keeps of each); resolves to the first seq once durable, or to an error
    /// within the store's commit bound (plus the time queued behind earlier groups).
    /// `ServerError::Timeout` / `StatementTimeout` mean the store stalled (nothing was
    /// committed unless the outcome was unknown, see `Timeout`); anything else is
    /// `Unavailable` or the room's own database error.
    pub async fn commit(
        &self,
        room: String,
        updates: Vec<Vec<u8>>,
        meta: Vec<OpMeta>,
    ) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                append: Append {
                    room,
                    updates,
                    meta,
                },
                reply,
            })
            .await
            .map_err(|_| ServerError::Unavailable)?;
        rx.await.map_err(|_| ServerError::Unavailable)?
    }
}

async fn worker(store: Arc<dyn Store>, rx: Arc<Mutex<mpsc::Receiver<Request>>>) {
    loop {
        let mut group = Vec::new();
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(first) => group.push(first),
                None => return,
            }
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
        }
        let (appends, replies): (Vec<Append>, Vec<_>) =
            group.into_iter().map(|r| (r.append, r.reply)).unzip();
        let started = std::time::Instant::now();
        let results = commit_group(store.as_ref(), &appends).await;
        let metrics = crate::metrics::get();
        metrics
            .commit_seconds
            .observe(crate::metrics::seconds(started));
        for ((reply, result), append) in replies.into_iter().zip(results).zip(&appends) {
            if result.is_ok() {
                metrics.ops_committed.inc_by(append.updates.len() as u64);
            }
            let _ = reply.send(result);
        }
    }
}

/// Commits `batch` (distinct rooms) as one group under the store's commit bound; returns each
/// room's first seq or error, in the order of `batch`. Public so the isolation of a failed
/// group can be tested without racing the committer's queue to form one.
pub async fn commit_group(store: &dyn Store, batch: &[Append]) -> Vec<Result<u64>> {
    let bound = store.timeouts();
    let deadline = Instant::now() + bound.commit;
    let timed_out = || ServerError::Timeout {
        what: "commit",
        after_ms: bound.commit_ms(),
    };
    let err = match timeout_at(deadline, store.append(batch)).await {
        Ok(Ok(firsts)) => return firsts.into_iter().map(Ok).collect(),
        Ok(Err(e)) => e,
        Err(_) => timed_out(),
    };
    if batch.len() == 1 || !rejected_by_database(&err) {
        tracing::error!(error = %err, rooms = batch.len(), "group commit failed");
        return batch.iter().map(|_| Err(for_each_room(&err))).collect();
    }
    tracing::warn!(
        error = %err,
        rooms = batch.len(),
        "group commit rejected; retrying its rooms one by one"
    );
    // Chunks of as many as the store commits in parallel, all under the group's deadline.
    let mut results = Vec::with_capacity(batch.len());
    for chunk in batch.chunks(store.parallel_commits().max(1)) {
        let retries: Vec<_> = chunk
            .iter()
            .map(|append| commit_alone(store, append, deadline))
            .collect();
        results.extend(futures_util::future::join_all(retries).await);
    }
    results
}

/// One room of a rejected group, in its own transaction, by the group's deadline.
async fn commit_alone(store: &dyn Store, append: &Append, deadline: Instant) -> Result<u64> {
    match timeout_at(deadline, store.append(std::slice::from_ref(append))).await {
        Ok(Ok(firsts)) => firsts.first().copied().ok_or(ServerError::Unavailable),
        Ok(Err(e)) => {
            tracing::error!(room = %append.room, error = %e, "room commit failed");
            Err(e)
        }
        Err(_) => Err(ServerError::Timeout {
            what: "commit",
            after_ms: store.timeouts().commit_ms(),
        }),
    }
}

/// Whether the database answered with an error on a live connection, so the transaction was
/// rolled back (nothing committed, a retry is safe) and the cause may be one room's.
fn rejected_by_database(e: &ServerError) -> bool {
    matches!(
        e,
        ServerError::StatementTimeout { .. }
            | ServerError::Corrupt { .. }
            | ServerError::Store(sqlx::Error::Database(_))
    )
}

/// The group's error as each room gets it: the timeouts are kept (the room may tell its
/// senders why), the rest is `Unavailable` after the detail was logged once.
fn for_each_room(e: &ServerError) -> ServerError {
    match e {
        ServerError::Timeout { what, after_ms } => ServerError::Timeout {
            what,
            after_ms: *after_ms,
        },
        ServerError::StatementTimeout { what, after_ms } => ServerError::StatementTimeout {
            what,
            after_ms: *after_ms,
        },
        _ => ServerError::Unavailable,
    }
}
