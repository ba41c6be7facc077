//! A connection's outbound queue, bounded in bytes: per connection and for the whole instance.
//!
//! Counting frames says nothing about memory (an ack is 40 bytes, a join's `sync` can be
//! megabytes) and drops fast honest writers whose readers are merely busy. So the room offers
//! each frame with its size: a frame that would take the connection past its budget, or the
//! instance past its total, is refused and the room drops that member as a slow consumer (it
//! resyncs on reconnect). A connection with nothing queued always accepts one frame, so a
//! document larger than the per-connection budget can still be joined.
//!
//! Frames are reference-counted (`Utf8Bytes` text for the JSON protocol, `Bytes` for the Yjs
//! protocols): a broadcast is encoded once per protocol and shared by every queue, though each
//! queue counts it in full.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::{Message, Utf8Bytes};
use tokio::sync::mpsc;

/// One WebSocket data frame, shared between queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame (the JSON protocol).
    Text(Utf8Bytes),
    /// A binary frame (y-websocket, Hocuspocus).
    Binary(Bytes),
}

impl Frame {
    /// A binary frame of these bytes.
    pub fn binary(bytes: Vec<u8>) -> Frame {
        Frame::Binary(Bytes::from(bytes))
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    /// True for an empty frame.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The WebSocket message, for the socket writer (counted in `concord_bytes_out_total`).
    pub fn into_message(self) -> Message {
        crate::metrics::get().bytes_out.inc_by(self.len() as u64);
        match self {
            Frame::Text(t) => Message::Text(t),
            Frame::Binary(b) => Message::Binary(b),
        }
    }
}

impl From<Utf8Bytes> for Frame {
    fn from(text: Utf8Bytes) -> Frame {
        Frame::Text(text)
    }
}

/// What a connection's writer is asked to do.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// Send a frame.
    Frame(Frame),
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
}

/// Byte budgets shared by every connection of the instance.
#[derive(Debug)]
pub struct Budget {
    per_conn: usize,
    total: usize,
    used: AtomicUsize,
}

impl Budget {
    /// At most `per_conn` bytes queued per connection and `total` across the instance.
    pub fn new(per_conn: usize, total: usize) -> Arc<Budget> {
        Arc::new(Budget {
            per_conn,
            total,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes queued across the instance now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// The room's side of a queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outbound>,
    queued: Arc<AtomicUsize>,
    budget: Arc<Budget>,
}

/// The writer's side of a queue.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<Outbound>,
    queued: Arc<AtomicUsize>,
    budget: Arc<Budget>,
}

/// A queue of at most `frames` frames inside `budget`.
pub fn channel(budget: Arc<Budget>, frames: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(frames.max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            tx,
            queued: queued.clone(),
            budget: budget.clone(),
        },
        Inbox { rx, queued, budget },
    )
}

impl Outbox {
    /// Queues `frame` if it fits the budgets; false means "slow consumer" (or closed).
    pub fn offer(&self, frame: impl Into<Frame>) -> bool {
        let frame = frame.into();
        let len = frame.len();
        let mine = self.queued.load(Ordering::Relaxed);
        if mine > 0
            && (mine + len > self.budget.per_conn || self.budget.used() + len > self.budget.total)
        {
            return false;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.budget.used.fetch_add(len, Ordering::Relaxed);
        if self.tx.try_send(Outbound::Frame(frame)).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.budget.used.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Asks the writer to close after what is queued; false if the queue is full or closed.
    pub fn close(&self, code: u16, reason: &'static str) -> bool {
        self.tx.try_send(Outbound::Close(code, reason)).is_ok()
    }

    /// Bytes queued for this connection now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

impl Inbox {
    fn taken(&self, msg: &Outbound) {
        if let Outbound::Frame(frame) = msg {
            self.queued.fetch_sub(frame.len(), Ordering::Relaxed);
            self.budget.used.fetch_sub(frame.len(), Ordering::Relaxed);
        }
    }

    /// The next frame; `None` once every `Outbox` is gone.
    pub async fn recv(&mut self) -> Option<Outbound> {
        let msg = self.rx.recv().await?;
        self.taken(&msg);
        Some(msg)
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let msg = self.rx.try_recv().ok()?;
        self.taken(&msg);
        Some(msg)
    }
}

impl Drop for Inbox {
    /// Gives back what was queued and never written.
    fn drop(&mut self) {
        self.rx.close();
        while self.try_recv().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Utf8Bytes {
        Utf8Bytes::from("x".repeat(n))
    }

    #[tokio::test]
    async fn bytes_not_frames_are_the_budget() {
        let budget = Budget::new(100, 1_000);
        let (out, mut inbox) = channel(budget.clone(), 1_000);
        // An empty queue takes one frame of any size.
        assert!(out.offer(frame(500)));
        assert!(!out.offer(frame(1)), "over the per-connection budget");
        assert!(matches!(inbox.recv().await, Some(Outbound::Frame(_))));
        assert_eq!(budget.used(), 0);
        // Many small frames fit where their count would not matter.
        for _ in 0..10 {
            assert!(out.offer(frame(10)));
        }
        assert!(!out.offer(frame(10)));
        assert_eq!(out.queued(), 100);
        drop(inbox);
        assert_eq!(budget.used(), 0, "a closed queue gives its bytes back");
        assert!(!out.offer(frame(1)), "a closed queue refuses");
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn the_instance_total_binds_every_connection() {
        let budget = Budget::new(1_000, 150);
        let (a, _ai) = channel(budget.clone(), 100);
        let (b, _bi) = channel(budget.clone(), 100);
        assert!(a.offer(frame(100)));
        assert!(b.offer(frame(40)));
        assert!(!b.offer(frame(40)), "the instance total is reached");
        assert_eq!(budget.used(), 140);
    }
}
