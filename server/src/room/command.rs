//! What a room task is asked, and what it shares with every other: the interface between
//! the room tasks and everything above them (connections, the document API, the registry).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use concord_engine::host::{Protocol, Request};
use concord_engine::ConnId;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::Result;
use crate::outbox::{Kill, Outbox};
use crate::store::committer::Committer;
use crate::store::Store;

/// How the room reaches one connection.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its wire format.
    pub protocol: Protocol,
    /// The connection's outbound queue, bounded in bytes.
    pub out: Outbox,
    /// Closes the connection.
    pub kill: Arc<Kill>,
    /// Who this connection is in presence frames: set by the server, never by the client.
    pub user: String,
    /// The authenticated user's display name, which replaces any name the client claims in
    /// presence (`None` with auth off).
    pub name: Option<String>,
    /// Read or write, now: read with every frame, as grants can change while it is open.
    pub role: Arc<crate::auth::LiveRole>,
    /// Whose CPU budget this connection spends (`None`: the server's own, never limited); a
    /// reconnect of the same payer resumes what the last connection left.
    pub payer: Option<crate::auth::limits::Payer>,
}

/// What connections and in-process writers ask of a room.
#[derive(Debug)]
pub enum RoomCmd {
    /// A connection opened; `sv` is its `?sv=` state vector.
    Join {
        /// The connection.
        conn: ConnId,
        /// Its state vector (v1), if it resumes.
        sv: Option<Vec<u8>>,
        /// Its outbound side.
        member: Member,
        /// Answered once its first frames are queued. `Err(RoomClosing)` means: ask the
        /// registry again.
        reply: oneshot::Sender<Result<()>>,
    },
    /// A frame from a member, decoded by its protocol's adapter.
    Frame {
        /// The connection.
        conn: ConnId,
        /// The frame.
        msg: Request,
    },
    /// The connection closed.
    Leave {
        /// The connection.
        conn: ConnId,
    },
    /// An in-process write (the document API, a restore): one v2 update, through the same
    /// checks, group commit, broadcast and hub as a keystroke. Answered with its seq once
    /// durable, or the room's refusal.
    Write {
        /// v2 update bytes.
        update: Vec<u8>,
        /// Who history records as its author.
        author: Option<String>,
        /// `Err(RoomClosing)` means: ask the registry again.
        reply: oneshot::Sender<Result<u64>>,
    },
    /// The room's stored data is being deleted: close every member (4404) and unload without
    /// writing anything more. `done` is dropped once the room task has stopped.
    Delete {
        /// Dropped when the room has stopped.
        done: Option<oneshot::Sender<()>>,
    },
}

impl RoomCmd {
    /// Answers a command that will not be served with `err` (the ones that wait for a reply).
    pub fn refuse(self, err: crate::error::ServerError) {
        match self {
            RoomCmd::Join { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            RoomCmd::Write { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            _ => {}
        }
    }
}

/// What every room task shares.
#[derive(Clone)]
pub struct RoomContext {
    /// Durable storage.
    pub store: Arc<dyn Store>,
    /// Fan-out across instances.
    pub hub: Arc<dyn crate::hub::Hub>,
    /// Group commit.
    pub committer: Committer,
    /// Where rooms do their CRDT work.
    pub cpu: crate::cpu::CpuPool,
    /// Where compactions fold, and how many at once.
    pub folds: crate::store::Folds,
    /// Connections' CPU budgets, kept past their close for the payer's next connection.
    pub cpu_ledger: Arc<crate::auth::limits::CpuLedger>,
    /// Settings.
    pub config: Arc<Config>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Room tasks are tracked so shutdown can wait for them.
    pub tracker: TaskTracker,
}

/// What the registry does for a room task. The task knows the registry only through this, so
/// the registry (which starts tasks) sits above the task and not beside it.
pub trait Registry: Send + Sync + 'static {
    /// Rooms with no members should unload now: the instance is at its room cap.
    fn shedding(&self) -> bool;
    /// Removes the room's entry if it is still this generation.
    fn unregister(&self, room: &str, generation: u64);
    /// Unregisters an idle room, but only if nothing is queued for it (`rx` is its queue):
    /// no new join can get this handle afterwards.
    fn unregister_if_idle(&self, room: &str, generation: u64, rx: &mpsc::Receiver<RoomCmd>)
        -> bool;
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A fresh connection id (one per room membership: a Hocuspocus socket has one per document).
pub fn new_conn() -> ConnId {
    ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed))
}

/// The presence id of a connection: unique across instances (a random tag per process), so
/// presence relayed through the hub never collides, and never chosen by the client.
pub fn presence_user(conn: ConnId) -> String {
    static TAG: OnceLock<String> = OnceLock::new();
    let tag = TAG.get_or_init(|| format!("{:08x}", rand::random::<u32>()));
    format!("c-{tag}-{}", conn.0)
}
