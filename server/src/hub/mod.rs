//! Fan-out across instances: the `Hub` trait, an in-memory hub (one instance: nothing to fan
//! out) and a Redis hub (`REDIS_URL`).
//!
//! A hub only ever carries hints. Every committed update is in the store with its seq, so an
//! instance that misses a message (pub/sub drops it, Redis restarts, a subscription is late)
//! finds the gap by seq or is told to [`HubEvent::Resync`], and reads the missing ops from the
//! store. Publishing never blocks a room: it is queued, and dropped if Redis is down.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use concord_engine::wire::Presence;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Something another instance did in a room.
#[derive(Debug, Clone, PartialEq)]
pub enum HubEvent {
    /// An update another instance committed at `seq`.
    Update {
        /// Room seq.
        seq: u64,
        /// v2 update bytes.
        update: Vec<u8>,
    },
    /// A presence frame from a client on another instance (boxed: it is the largest variant,
    /// and every room's channel holds a block of slots sized by it).
    Presence(Box<Presence>),
    /// The room was deleted (`DELETE /api/rooms/{id}`): close its members and unload it.
    Deleted,
    /// Messages may have been missed (subscription just became active, or the hub
    /// reconnected): catch up from the store.
    Resync,
}

/// A grant changed: connections of `user` in `room` (of everyone, if `None`: the document was
/// deleted) must check their access again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessChange {
    /// The room (document id).
    pub room: String,
    /// The user whose grant changed, or `None` for everyone.
    pub user: Option<String>,
}

/// What the hub tells [`crate::auth::Auth`] about grants changed on other instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessSignal {
    /// A grant changed elsewhere.
    Changed(AccessChange),
    /// The feed was interrupted (Redis reconnected): changes may have been missed.
    Missed,
}

/// A room's subscription; dropping it unsubscribes.
pub struct Subscription {
    /// Events from other instances; `None` where none can come (one instance), so an idle
    /// room holds no channel (a tokio channel allocates its first block of slots up front).
    rx: Option<mpsc::Receiver<HubEvent>>,
    _guard: Option<Box<dyn Send + Sync>>,
}

impl Subscription {
    /// A subscription over `rx`; `guard` is dropped (unsubscribing) with it.
    pub fn new(rx: mpsc::Receiver<HubEvent>, guard: Option<Box<dyn Send + Sync>>) -> Self {
        Subscription {
            rx: Some(rx),
            _guard: guard,
        }
    }

    /// A subscription that never carries anything.
    pub fn none() -> Self {
        Subscription {
            rx: None,
            _guard: None,
        }
    }

    /// The next event; `None` once no more can come.
    pub async fn recv(&mut self) -> Option<HubEvent> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => None,
        }
    }

    /// An event already queued, if any.
    pub fn try_recv(&mut self) -> Option<HubEvent> {
        self.rx.as_mut().and_then(|rx| rx.try_recv().ok())
    }
}

/// How instances tell each other about rooms.
#[async_trait]
pub trait Hub: Send + Sync + 'static {
    /// For the startup log.
    fn describe(&self) -> String;

    /// Starts receiving the room's events from other instances.
    async fn subscribe(&self, room: &str) -> Subscription;

    /// Tells other instances about an update this instance committed. Best effort.
    fn publish_update(&self, room: &str, seq: u64, update: &[u8]);

    /// Tells other instances that this instance deleted the room's stored data. Best effort:
    /// an instance that misses it keeps serving the room from memory until it unloads.
    fn publish_deleted(&self, room: &str);

    /// Relays a presence frame of a local client to other instances and records it in the
    /// room's presence set (expiring `ttl_ms` from now unless refreshed). Best effort.
    fn publish_presence(&self, room: &str, presence: &Presence, ttl_ms: u64);

    /// Presences currently live in the room on any instance (for a newcomer).
    async fn live_presence(&self, room: &str) -> Vec<Presence>;

    /// Tells other instances that a grant changed, so they forget it and re-check their live
    /// connections. Best effort; a missed message is covered by [`AccessSignal::Missed`] and
    /// the grant cache's expiry.
    fn publish_access(&self, change: &AccessChange);

    /// Grant changes from other instances. Called once, at startup.
    fn access_feed(&self) -> mpsc::Receiver<AccessSignal>;

    /// Whether the hub can carry messages now, for `/readyz`; the caller bounds it in time.
    async fn ping(&self) -> crate::error::Result<()>;
}

/// Opens the hub named by `REDIS_URL`, or the in-memory one.
pub async fn connect(redis_url: Option<&str>) -> crate::error::Result<Arc<dyn Hub>> {
    match redis_url {
        Some(url) => Ok(Arc::new(redis::RedisHub::connect(url).await?)),
        None => Ok(Arc::new(memory::MemoryHub)),
    }
}
