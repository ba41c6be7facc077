//! The server's one clock: monotonic milliseconds since the process started, for every
//! time-based decision (the engine's timers, token buckets, backoffs). A leaf: it imports
//! nothing of the crate.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds on a monotonic clock.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
