//! Group commit: rooms hand their batches to a committer, which commits whatever has queued up
//! (across rooms) in one transaction. While a commit is in flight the next group gathers, so
//! under load each fsync carries many ops and at low load an op waits for no timer.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use super::{Append, Store};
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

    /// Commits one room's updates; resolves to the first seq once durable.
    pub async fn commit(&self, room: String, updates: Vec<Vec<u8>>) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                append: Append { room, updates },
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
        match store.append(&appends).await {
            Ok(firsts) => {
                for (reply, first) in replies.into_iter().zip(firsts) {
                    let _ = reply.send(Ok(first));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, rooms = replies.len(), "group commit failed");
                for reply in replies {
                    let _ = reply.send(Err(ServerError::Unavailable));
                }
            }
        }
    }
}
