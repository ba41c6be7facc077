//! A seeded, lossy, virtual-time network link for sans-IO simulations (the idea of
//! quinn-proto's `Pair`): no sockets, no sleeps, no clocks. Time is a tick count the test
//! advances; every fault comes from the caller's seeded RNG, so a run replays exactly.
//!
//! A [`Link`] carries frames one way. Each frame sent at tick `now` arrives at
//! `now + latency`; unless reordered it never overtakes an earlier frame (a WebSocket is FIFO).
//! [`Faults`] adds drops, duplicates and reordering on top.

use std::collections::BTreeMap;

use rand::Rng;

/// What can go wrong on a link. Probabilities are per frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// The frame is lost.
    pub drop: f64,
    /// The frame arrives twice (the copy has its own delay).
    pub duplicate: f64,
    /// The frame is held back up to `reorder_delay` extra ticks and may be overtaken.
    pub reorder: f64,
    /// Most extra ticks a reordered frame is held back.
    pub reorder_delay: u64,
    /// Fewest ticks from send to arrival.
    pub min_latency: u64,
    /// Most ticks from send to arrival.
    pub max_latency: u64,
}

impl Faults {
    /// A perfect link with a one-tick latency.
    pub const NONE: Faults = Faults {
        drop: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_delay: 0,
        min_latency: 1,
        max_latency: 1,
    };
}

impl Default for Faults {
    fn default() -> Self {
        Faults::NONE
    }
}

/// Counters of what a link did, for reporting how much a run actually exercised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames handed to [`Link::send`].
    pub sent: u64,
    /// Frames handed out by [`Link::recv`].
    pub delivered: u64,
    /// Frames lost.
    pub dropped: u64,
    /// Extra copies queued.
    pub duplicated: u64,
    /// Frames held back so later ones may overtake them.
    pub reordered: u64,
    /// Frames discarded by [`Link::clear`] (the connection closed under them).
    pub cleared: u64,
}

impl std::ops::AddAssign for LinkStats {
    fn add_assign(&mut self, other: LinkStats) {
        self.sent += other.sent;
        self.delivered += other.delivered;
        self.dropped += other.dropped;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.cleared += other.cleared;
    }
}

/// One direction of one connection: frames in flight, keyed by arrival tick.
#[derive(Debug, Clone)]
pub struct Link<T> {
    /// (arrival tick, send order) -> frame.
    in_flight: BTreeMap<(u64, u64), T>,
    next_order: u64,
    /// Arrival tick of the last in-order frame: later in-order frames never arrive before it.
    fifo_tail: u64,
    stats: LinkStats,
}

impl<T> Default for Link<T> {
    fn default() -> Self {
        Link {
            in_flight: BTreeMap::new(),
            next_order: 0,
            fifo_tail: 0,
            stats: LinkStats::default(),
        }
    }
}

impl<T: Clone> Link<T> {
    /// An empty link.
    pub fn new() -> Self {
        Link::default()
    }

    /// Sends `frame` at tick `now`, subject to `faults`.
    pub fn send(&mut self, now: u64, frame: T, faults: &Faults, rng: &mut impl Rng) {
        self.stats.sent += 1;
        if faults.drop > 0.0 && rng.gen_bool(faults.drop) {
            self.stats.dropped += 1;
            return;
        }
        if faults.duplicate > 0.0 && rng.gen_bool(faults.duplicate) {
            self.stats.duplicated += 1;
            self.enqueue(now, frame.clone(), faults, rng);
        }
        self.enqueue(now, frame, faults, rng);
    }

    fn enqueue(&mut self, now: u64, frame: T, faults: &Faults, rng: &mut impl Rng) {
        let latency =
            rng.gen_range(faults.min_latency..=faults.max_latency.max(faults.min_latency));
        let mut arrival = now + latency;
        if faults.reorder > 0.0 && rng.gen_bool(faults.reorder) {
            self.stats.reordered += 1;
            arrival += rng.gen_range(1..=faults.reorder_delay.max(1));
        } else {
            arrival = arrival.max(self.fifo_tail);
            self.fifo_tail = arrival;
        }
        self.in_flight.insert((arrival, self.next_order), frame);
        self.next_order += 1;
    }

    /// The next frame that has arrived by tick `now`, in arrival order.
    pub fn recv(&mut self, now: u64) -> Option<T> {
        let (&key, _) = self.in_flight.first_key_value()?;
        if key.0 > now {
            return None;
        }
        self.stats.delivered += 1;
        self.in_flight.remove(&key)
    }

    /// The connection closed: everything in flight is gone.
    pub fn clear(&mut self) {
        self.stats.cleared += self.in_flight.len() as u64;
        self.in_flight.clear();
        self.fifo_tail = 0;
    }

    /// Nothing in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Frames in flight.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// What this link has done so far.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn drain(link: &mut Link<u32>, until: u64) -> Vec<u32> {
        let mut out = Vec::new();
        for tick in 0..=until {
            while let Some(frame) = link.recv(tick) {
                out.push(frame);
            }
        }
        out
    }

    #[test]
    fn without_faults_frames_arrive_in_order_after_the_latency() {
        let mut rng = SmallRng::seed_from_u64(1);
        let faults = Faults {
            min_latency: 1,
            max_latency: 5,
            ..Faults::NONE
        };
        let mut link = Link::new();
        for i in 0..100 {
            link.send(i / 10, i as u32, &faults, &mut rng);
        }
        assert_eq!(link.recv(0), None, "nothing arrives before its latency");
        assert_eq!(drain(&mut link, 100), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn faults_drop_duplicate_and_reorder_deterministically() {
        let faults = Faults {
            drop: 0.2,
            duplicate: 0.2,
            reorder: 0.2,
            reorder_delay: 10,
            min_latency: 1,
            max_latency: 3,
        };
        let run = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut link = Link::new();
            for i in 0..1000 {
                link.send(i, i as u32, &faults, &mut rng);
            }
            (drain(&mut link, 2000), link.stats())
        };
        let (frames, stats) = run(7);
        assert_eq!(run(7).0, frames, "same seed, same run");
        assert!(stats.dropped > 100 && stats.duplicated > 100 && stats.reordered > 100);
        assert_eq!(stats.delivered as usize, frames.len());
        assert!(
            frames.windows(2).any(|w| w[0] > w[1]),
            "some frames overtook others"
        );
        assert!(
            frames.windows(2).any(|w| w[0] == w[1]),
            "some frames arrived twice"
        );
    }

    #[test]
    fn clear_discards_what_is_in_flight() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut link = Link::new();
        link.send(0, 1u32, &Faults::NONE, &mut rng);
        link.clear();
        assert!(link.is_empty());
        assert_eq!(link.recv(100), None);
        assert_eq!(link.stats().cleared, 1);
    }
}
