//! One instance: every client is local, so there is nothing to fan out and presence lives in
//! the room task.

use async_trait::async_trait;
use concord_engine::wire::Presence;
use tokio::sync::mpsc;

use super::{AccessSignal, Hub, Subscription};

/// The hub of a single instance.
pub struct MemoryHub;

#[async_trait]
impl Hub for MemoryHub {
    fn describe(&self) -> String {
        "memory".to_owned()
    }

    async fn subscribe(&self, _room: &str) -> Subscription {
        // Ends at once, and the room stops polling it.
        Subscription::none()
    }

    fn publish_update(&self, _room: &str, _seq: u64, _update: &[u8]) {}

    fn publish_deleted(&self, _room: &str) {}

    fn publish_presence(&self, _room: &str, _presence: &Presence, _ttl_ms: u64) {}

    async fn live_presence(&self, _room: &str) -> Vec<Presence> {
        Vec::new()
    }

    fn publish_access(&self, _change: &crate::auth::AccessChange) {}

    fn access_feed(&self) -> mpsc::Receiver<AccessSignal> {
        let (_tx, rx) = mpsc::channel(1);
        rx
    }

    /// Nothing outside the process: always ready.
    async fn ping(&self) -> crate::error::Result<()> {
        Ok(())
    }
}
