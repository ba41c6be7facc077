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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::ws::{Message, Utf8Bytes};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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

/// A frame the engine rendered, shared as it is (a broadcast is converted once, then cloned
/// per queue).
impl From<concord_engine::host::Frame> for Frame {
    fn from(frame: concord_engine::host::Frame) -> Frame {
        match frame {
            concord_engine::host::Frame::Binary(bytes) => Frame::Binary(bytes),
            concord_engine::host::Frame::Text(bytes) => match Utf8Bytes::try_from(bytes) {
                Ok(text) => Frame::Text(text),
                // The engine renders text from `String`s: unreachable.
                Err(_) => Frame::Text(Utf8Bytes::from_static("")),
            },
        }
    }
}

/// Why a connection is being closed from the server side.
#[derive(Debug, Default)]
pub struct Kill {
    token: CancellationToken,
    reason: Mutex<Option<(u16, &'static str)>>,
}

impl Kill {
    /// Asks the connection to close with `code`; the first reason wins.
    pub fn kill(&self, code: u16, reason: &'static str) {
        if let Ok(mut slot) = self.reason.lock() {
            slot.get_or_insert((code, reason));
        }
        self.token.cancel();
    }

    /// Resolves once the connection should close.
    pub async fn killed(&self) {
        self.token.cancelled().await
    }

    /// The close code and reason, if one was given.
    pub fn reason(&self) -> Option<(u16, &'static str)> {
        self.reason.lock().ok().and_then(|r| *r)
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
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The writer's side of a queue.
#[derive(Debug)]
pub struct Inbox {
    shared: Arc<Shared>,
}

/// One connection's queue. Not a tokio channel: that allocates its first block of 32 slots
/// (and cache-padded counters) up front, about 2 KB for every idle connection; this holds
/// nothing until a frame is queued and gives a burst's slots back once it has drained.
#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer: a frame was queued, or the last `Outbox` went.
    wake: Notify,
    budget: Arc<Budget>,
    /// At most this many frames queued.
    frames: usize,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// Bytes of the frames in `items`.
    bytes: usize,
    /// Live `Outbox`es; at zero the writer's `recv` ends.
    senders: usize,
    /// The `Inbox` is gone: nothing more is accepted.
    closed: bool,
}

/// Slots a drained queue keeps; a burst beyond this is given back.
const KEEP_SLOTS: usize = 16;

/// A queue of at most `frames` frames inside `budget`.
pub fn channel(budget: Arc<Budget>, frames: usize) -> (Outbox, Inbox) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            senders: 1,
            ..Queue::default()
        }),
        wake: Notify::new(),
        budget,
        frames: frames.max(1),
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        Inbox { shared },
    )
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Nothing panics while holding it; a poisoned queue is still a consistent queue.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `msg` unless the queue is closed or full, or a frame would take the connection
    /// or the instance past its byte budget (an empty queue takes one frame of any size).
    fn push(&self, msg: Outbound) -> bool {
        {
            let mut q = self.lock();
            if q.closed || q.items.len() >= self.frames {
                return false;
            }
            if let Outbound::Frame(frame) = &msg {
                let len = frame.len();
                if q.bytes > 0
                    && (q.bytes + len > self.budget.per_conn
                        || self.budget.used() + len > self.budget.total)
                {
                    return false;
                }
                q.bytes += len;
                self.budget.used.fetch_add(len, Ordering::Relaxed);
            }
            q.items.push_back(msg);
        }
        self.wake.notify_one();
        true
    }
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Outbox {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let last = {
            let mut q = self.shared.lock();
            q.senders -= 1;
            q.senders == 0
        };
        if last {
            self.shared.wake.notify_one();
        }
    }
}

impl Outbox {
    /// Queues `frame` if it fits the budgets; false means "slow consumer" (or closed).
    pub fn offer(&self, frame: impl Into<Frame>) -> bool {
        self.shared.push(Outbound::Frame(frame.into()))
    }

    /// Asks the writer to close after what is queued; false if the queue is full or closed.
    pub fn close(&self, code: u16, reason: &'static str) -> bool {
        self.shared.push(Outbound::Close(code, reason))
    }

    /// Bytes queued for this connection now.
    pub fn queued(&self) -> usize {
        self.shared.lock().bytes
    }
}

/// What the queue holds now.
enum Next {
    Item(Outbound),
    Empty,
    Ended,
}

impl Inbox {
    fn take(&self) -> Next {
        let mut q = self.shared.lock();
        let Some(msg) = q.items.pop_front() else {
            return if q.senders == 0 {
                Next::Ended
            } else {
                Next::Empty
            };
        };
        if let Outbound::Frame(frame) = &msg {
            q.bytes -= frame.len();
            self.shared
                .budget
                .used
                .fetch_sub(frame.len(), Ordering::Relaxed);
        }
        if q.items.is_empty() && q.items.capacity() > KEEP_SLOTS {
            q.items.shrink_to(KEEP_SLOTS);
        }
        Next::Item(msg)
    }

    /// The next frame; `None` once every `Outbox` is gone and the queue is drained.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            // Registered before looking, so a push between the look and the wait is not missed.
            let woken = self.shared.wake.notified();
            match self.take() {
                Next::Item(msg) => return Some(msg),
                Next::Ended => return None,
                Next::Empty => woken.await,
            }
        }
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        match self.take() {
            Next::Item(msg) => Some(msg),
            Next::Empty | Next::Ended => None,
        }
    }
}

impl Drop for Inbox {
    /// Gives back what was queued and never written.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
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

    #[tokio::test]
    async fn the_writer_wakes_for_each_frame_and_ends_with_the_last_outbox() {
        let budget = Budget::new(1_000, 1_000);
        let (out, mut inbox) = channel(budget.clone(), 2);
        let other = out.clone();
        let writer = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(msg) = inbox.recv().await {
                got.push(msg);
            }
            got
        });
        assert!(out.offer(frame(3)));
        assert!(other.close(1000, "bye"));
        drop(out);
        tokio::task::yield_now().await;
        drop(other);
        let got = writer.await.unwrap();
        assert_eq!(got.len(), 2, "both queued messages, then the end");
        assert!(matches!(got[1], Outbound::Close(1000, "bye")));
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_queue_holds_at_most_its_frames_and_gives_a_burst_back() {
        let (out, mut inbox) = channel(Budget::new(1 << 20, 1 << 20), 100);
        for _ in 0..100 {
            assert!(out.offer(frame(1)));
        }
        assert!(!out.offer(frame(1)), "the frame cap binds");
        assert!(!out.close(1000, "full"));
        while inbox.try_recv().is_some() {}
        assert!(inbox.shared.lock().items.capacity() <= KEEP_SLOTS);
        assert!(out.offer(frame(1)));
    }
}
