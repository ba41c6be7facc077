//! A token bucket, for per-connection budgets (CPU time, presence frames).
//!
//! Time comes in as an argument (monotonic milliseconds), so the bucket is plain data and its
//! tests need no clock.

/// Holds up to `burst` tokens and refills `per_sec` tokens a second.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    at_ms: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(burst: f64, per_sec: f64, now_ms: u64) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            burst,
            per_sec,
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Charges `amount` after the fact (it may go negative: the work is already done).
    pub fn charge(&mut self, amount: f64, now_ms: u64) {
        self.refill(now_ms);
        self.tokens -= amount;
    }

    /// True while the bucket is not in debt.
    pub fn available(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.tokens > 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut b = TokenBucket::new(3.0, 10.0, 0);
        assert!((0..3).all(|_| b.try_take(0)));
        assert!(!b.try_take(0));
        assert!(!b.try_take(50), "half a token after 50 ms");
        assert!(b.try_take(100));
        // Refills never exceed the burst.
        assert!((0..3).all(|_| b.try_take(10_000)));
        assert!(!b.try_take(10_000));
    }

    #[test]
    fn debt_is_paid_back_over_time() {
        let mut b = TokenBucket::new(100.0, 50.0, 0);
        b.charge(300.0, 0);
        assert!(!b.available(0));
        assert!(!b.available(3_900), "still 5 in debt");
        assert!(b.available(4_100));
    }
}
