//! A token bucket, for per-connection budgets (CPU time, presence frames), and the update
//! pacer built on it.
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

    /// Milliseconds until a token is available (0 if one is now).
    pub fn wait_ms(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        if self.tokens >= 1.0 || self.per_sec <= 0.0 {
            return 0;
        }
        ((1.0 - self.tokens) / self.per_sec * 1000.0).ceil() as u64
    }

    /// Whether the bucket has refilled completely (an idle client's bucket can be forgotten).
    pub fn is_full(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.tokens >= self.burst
    }

    /// Tokens now (negative in debt).
    pub fn level(&mut self, now_ms: u64) -> f64 {
        self.refill(now_ms);
        self.tokens
    }

    /// True while the bucket is not in debt.
    pub fn available(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.tokens > 0.0
    }
}

/// What to do with the next update from a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Forward it now.
    Go,
    /// Forward it after this many milliseconds; meanwhile the socket is not read, so the
    /// client's own TCP window slows it down.
    Wait(u64),
    /// The connection has been over its rate for longer than its patience: close it.
    Flooding,
}

/// Paces one connection's updates: a burst goes straight through, then updates are read at
/// the bucket's rate. An honest burst (a paste, a script, many tabs' worth of replay) is only
/// slowed down; a connection that stays over the rate for `patience_ms` without a pause is
/// flooding, and its caller closes it.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    bucket: TokenBucket,
    patience_ms: u64,
    /// Since when every update has had to wait.
    paced_since: Option<u64>,
}

impl Pacer {
    /// A pacer with a full burst at `now_ms`.
    pub fn new(burst: f64, per_sec: f64, patience_ms: u64, now_ms: u64) -> Pacer {
        Pacer {
            bucket: TokenBucket::new(burst, per_sec, now_ms),
            patience_ms,
            paced_since: None,
        }
    }

    /// Decides about one update arriving at `now_ms`. A `Wait` has already reserved its token:
    /// the caller forwards the update after waiting, without asking again.
    pub fn next(&mut self, now_ms: u64) -> Pace {
        if self.bucket.try_take(now_ms) {
            self.paced_since = None;
            return Pace::Go;
        }
        let since = *self.paced_since.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) >= self.patience_ms {
            return Pace::Flooding;
        }
        let wait = self.bucket.wait_ms(now_ms);
        self.bucket.charge(1.0, now_ms);
        Pace::Wait(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pacer_slows_a_burst_and_closes_a_flood() {
        let mut p = Pacer::new(2.0, 10.0, 1_000, 0);
        assert_eq!(p.next(0), Pace::Go);
        assert_eq!(p.next(0), Pace::Go);
        assert_eq!(p.next(0), Pace::Wait(100), "one token takes 100 ms at 10/s");
        // The client keeps sending as soon as it is read: always waiting, until patience ends.
        let mut now = 100;
        loop {
            match p.next(now) {
                Pace::Wait(ms) => now += ms,
                Pace::Flooding => break,
                Pace::Go => panic!("a flood is never ahead of its rate"),
            }
        }
        assert!(
            (1_000..1_200).contains(&now),
            "closed after its patience, at {now} ms"
        );
    }

    #[test]
    fn a_pause_forgives_a_pacer() {
        let mut p = Pacer::new(1.0, 10.0, 1_000, 0);
        assert_eq!(p.next(0), Pace::Go);
        assert!(matches!(p.next(0), Pace::Wait(_)));
        // 900 ms later it has paused long enough to be ahead again.
        assert_eq!(p.next(900), Pace::Go);
        assert!(matches!(p.next(900), Pace::Wait(_)));
        assert!(
            matches!(p.next(1_000), Pace::Wait(_)),
            "paced since 900, not since 0"
        );
    }

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
