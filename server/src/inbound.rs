//! The instance's inbound budget: how many bytes of client frames may be parsed at once.
//!
//! Parsing a frame costs a few times its size (the JSON string, the decoded bytes), so a few
//! connections sending maximum-size frames together could take far more memory than the frame
//! limit suggests. Each reader holds a share of this budget, proportional to its frame, while
//! it parses and hands the frame to its room; when the budget is spent, readers wait (TCP
//! backpressure) instead of the instance allocating more.

use std::sync::Arc;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// Bytes of frames being parsed, counted in KiB.
#[derive(Debug, Clone)]
pub struct Inbound {
    kib: Arc<Semaphore>,
    total_kib: u32,
}

impl Inbound {
    /// A budget of `bytes` (at least 1 KiB).
    pub fn new(bytes: usize) -> Inbound {
        let total_kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        Inbound {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Waits until `len` bytes fit. A frame larger than the whole budget takes all of it.
    pub async fn acquire(&self, len: usize) -> Result<OwnedSemaphorePermit, AcquireError> {
        let kib = u32::try_from(len.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib);
        self.kib.clone().acquire_many_owned(kib).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_wait_while_the_budget_is_spent() {
        let inbound = Inbound::new(4 * 1024);
        let big = inbound.acquire(1 << 30).await.unwrap();
        let waiting = tokio::spawn({
            let inbound = inbound.clone();
            async move { inbound.acquire(10).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "nothing is left while the big frame parses"
        );
        drop(big);
        waiting.await.unwrap().unwrap();
    }
}
