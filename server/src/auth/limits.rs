//! Budgets per client address and per account, in maps of bounded size.
//!
//! - Connection attempts per IP (WebSocket upgrades): a flood from one address is answered
//!   with 429 before any room or token work.
//! - Login and sign-up attempts per IP.
//! - Failed logins per account name: after a few, each further attempt waits longer
//!   (exponential backoff up to a ceiling), answered with 429 and `Retry-After`.
//!
//! - CPU budgets of closed connections per user (or per address with auth off), so a
//!   reconnect resumes its budget instead of starting with a fresh burst.
//!
//! IPv6 clients are counted per /64, since one host usually owns a whole /64. Each map holds at
//! most `max_entries` keys: when full, keys whose budget is back to full are forgotten; if all
//! are busy, newcomers share one overflow budget (so a flood from many addresses is throttled
//! as one instead of growing the map).

use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use concord_engine::rate::TokenBucket;

/// Settings of the limiters (`IP_CONNECT_BURST`, `IP_CONNECT_PER_SEC`, `LOGIN_BURST`,
/// `LOGIN_PER_SEC`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitSettings {
    /// WebSocket upgrades one address may make at once.
    pub connect_burst: f64,
    /// And per second after that.
    pub connect_per_sec: f64,
    /// Logins and sign-ups one address may make at once.
    pub login_burst: f64,
    /// And per second after that.
    pub login_per_sec: f64,
    /// Failed logins of one account before backoff starts.
    pub free_failures: u32,
    /// Longest backoff after failed logins.
    pub max_lockout: Duration,
    /// Keys each map holds at most.
    pub max_entries: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            connect_burst: 100.0,
            connect_per_sec: 20.0,
            login_burst: 10.0,
            login_per_sec: 1.0,
            free_failures: 5,
            max_lockout: Duration::from_secs(60),
            max_entries: 65_536,
        }
    }
}

/// The address a budget is kept for.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Token buckets per address.
pub struct IpBuckets {
    map: HashMap<IpAddr, TokenBucket>,
    overflow: TokenBucket,
    burst: f64,
    per_sec: f64,
    max: usize,
}

impl IpBuckets {
    /// Buckets of `burst` refilled at `per_sec`, for at most `max` addresses.
    pub fn new(burst: f64, per_sec: f64, max: usize) -> IpBuckets {
        IpBuckets {
            map: HashMap::new(),
            // The shared budget of addresses that find the map full.
            overflow: TokenBucket::new(burst * 4.0, per_sec * 4.0, 0),
            burst,
            per_sec,
            max: max.max(1),
        }
    }

    /// Takes one attempt for `ip`; `Err(retry_after_ms)` if it has none left.
    pub fn take(&mut self, ip: IpAddr, now_ms: u64) -> Result<(), u64> {
        let ip = key(ip);
        if !self.map.contains_key(&ip) && self.map.len() >= self.max {
            self.map.retain(|_, b| !b.is_full(now_ms));
        }
        let bucket = if self.map.len() < self.max || self.map.contains_key(&ip) {
            self.map
                .entry(ip)
                .or_insert_with(|| TokenBucket::new(self.burst, self.per_sec, now_ms))
        } else {
            &mut self.overflow
        };
        if bucket.try_take(now_ms) {
            Ok(())
        } else {
            Err(bucket.wait_ms(now_ms).max(1))
        }
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Failed logins per account name.
pub struct Failures {
    /// name key -> (failures in a row, locked until ms, last failure ms)
    map: HashMap<String, (u32, u64, u64)>,
    free: u32,
    max_lockout_ms: u64,
    max: usize,
}

impl Failures {
    /// Backoff after `free` failures, at most `max_lockout`, for at most `max` names.
    pub fn new(free: u32, max_lockout: Duration, max: usize) -> Failures {
        Failures {
            map: HashMap::new(),
            free,
            max_lockout_ms: max_lockout.as_millis() as u64,
            max: max.max(1),
        }
    }

    /// `Err(retry_after_ms)` while the name is backing off.
    pub fn check(&self, name: &str, now_ms: u64) -> Result<(), u64> {
        match self.map.get(name) {
            Some(&(_, until, _)) if until > now_ms => Err(until - now_ms),
            _ => Ok(()),
        }
    }

    /// Records a failed login.
    pub fn failed(&mut self, name: &str, now_ms: u64) {
        if !self.map.contains_key(name) && self.map.len() >= self.max {
            let stale = self.max_lockout_ms.saturating_mul(4);
            self.map
                .retain(|_, &mut (_, until, last)| until > now_ms || now_ms - last < stale);
            if self.map.len() >= self.max {
                // Everyone is busy: forget the longest-quiet name.
                if let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, &(_, _, last))| last)
                    .map(|(k, _)| k.clone())
                {
                    self.map.remove(&oldest);
                }
            }
        }
        let entry = self.map.entry(name.to_owned()).or_insert((0, 0, now_ms));
        entry.0 = entry.0.saturating_add(1);
        entry.2 = now_ms;
        if entry.0 >= self.free {
            let doublings = (entry.0 - self.free).min(20);
            let wait = (1000u64 << doublings).min(self.max_lockout_ms);
            entry.1 = now_ms + wait;
        }
    }

    /// A successful login clears the name's record.
    pub fn succeeded(&mut self, name: &str) {
        self.map.remove(name);
    }

    /// Names tracked now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no name is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Who pays for a connection's CPU: its user when authenticated, else its address. Opaque (a
/// keyed hash), so every ledger entry is the same small size whatever the user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Payer(u64);

/// What connections that have closed left of their CPU budgets, by payer. A connection's
/// budget is a burst refilled at a share of a core; without this ledger a client cut off for
/// CPU could reconnect and spend a whole fresh burst, again and again. With it, the next
/// connection of the same payer resumes the bucket where the last one left it, so over time a
/// client gets its share and no more.
///
/// Bounded like the maps above: at most `max` payers; a bucket that has refilled is forgotten;
/// when every entry is still refilling, a newcomer is not remembered (it fails open, as before
/// the ledger existed, and the per-address connection rate still bounds how often it returns).
pub struct CpuLedger {
    map: Mutex<HashMap<Payer, TokenBucket>>,
    keys: RandomState,
    max: usize,
}

impl CpuLedger {
    /// A ledger of at most `max` payers.
    pub fn new(max: usize) -> CpuLedger {
        CpuLedger {
            map: Mutex::new(HashMap::new()),
            keys: RandomState::new(),
            max: max.max(1),
        }
    }

    /// The payer of a connection from `ip`, authenticated as `user` (if auth is on).
    pub fn payer(&self, user: Option<&str>, ip: IpAddr) -> Payer {
        let mut h = self.keys.build_hasher();
        match user {
            Some(user) => (0u8, user).hash(&mut h),
            None => (1u8, key(ip)).hash(&mut h),
        }
        Payer(h.finish())
    }

    /// The bucket `payer`'s last connection left, unless it has refilled since.
    pub fn resume(&self, payer: Payer, now_ms: u64) -> Option<TokenBucket> {
        let mut bucket = self.map.lock().ok()?.remove(&payer)?;
        (!bucket.is_full(now_ms)).then_some(bucket)
    }

    /// Keeps what a closing connection left of its budget (nothing if it is full). Of two
    /// connections of one payer, the emptier bucket is kept.
    pub fn save(&self, payer: Payer, mut bucket: TokenBucket, now_ms: u64) {
        if bucket.is_full(now_ms) {
            return;
        }
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if !map.contains_key(&payer) && map.len() >= self.max {
            map.retain(|_, b| !b.is_full(now_ms));
            if map.len() >= self.max {
                return;
            }
        }
        match map.entry(payer) {
            Entry::Occupied(mut kept) => {
                if bucket.level(now_ms) < kept.get_mut().level(now_ms) {
                    kept.insert(bucket);
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(bucket);
            }
        }
    }

    /// Payers remembered now.
    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }

    /// Whether no payer is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The limiters of one instance.
pub struct Limiters {
    /// WebSocket upgrades per address.
    pub connects: Mutex<IpBuckets>,
    /// Logins and sign-ups per address.
    pub logins: Mutex<IpBuckets>,
    /// Failed logins per account.
    pub failures: Mutex<Failures>,
}

impl Limiters {
    /// From the settings.
    pub fn new(s: &LimitSettings) -> Limiters {
        Limiters {
            connects: Mutex::new(IpBuckets::new(
                s.connect_burst,
                s.connect_per_sec,
                s.max_entries,
            )),
            logins: Mutex::new(IpBuckets::new(
                s.login_burst,
                s.login_per_sec,
                s.max_entries,
            )),
            failures: Mutex::new(Failures::new(s.free_failures, s.max_lockout, s.max_entries)),
        }
    }

    /// One WebSocket upgrade from `ip`: `Err(retry_after_seconds)` if over budget.
    pub fn connect(&self, ip: IpAddr, now_ms: u64) -> Result<(), u64> {
        take(&self.connects, ip, now_ms)
    }

    /// One login or sign-up attempt from `ip`.
    pub fn login(&self, ip: IpAddr, now_ms: u64) -> Result<(), u64> {
        take(&self.logins, ip, now_ms)
    }
}

fn take(buckets: &Mutex<IpBuckets>, ip: IpAddr, now_ms: u64) -> Result<(), u64> {
    match buckets.lock() {
        Ok(mut b) => b.take(ip, now_ms).map_err(|ms| ms.div_ceil(1000)),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_runs_out_and_refills() {
        let mut b = IpBuckets::new(3.0, 1.0, 100);
        for _ in 0..3 {
            assert!(b.take(ip("10.0.0.1"), 0).is_ok());
        }
        assert_eq!(b.take(ip("10.0.0.1"), 0), Err(1000));
        assert!(b.take(ip("10.0.0.2"), 0).is_ok(), "others are unaffected");
        assert!(b.take(ip("10.0.0.1"), 1000).is_ok());
    }

    #[test]
    fn ipv6_counts_per_slash_64() {
        let mut b = IpBuckets::new(1.0, 0.001, 100);
        assert!(b.take(ip("2001:db8::1"), 0).is_ok());
        assert!(b.take(ip("2001:db8::2"), 0).is_err());
        assert!(b.take(ip("2001:db8:0:1::1"), 0).is_ok());
    }

    #[test]
    fn the_map_stays_bounded_under_many_addresses() {
        let mut b = IpBuckets::new(2.0, 0.001, 64);
        let mut refused = 0;
        for i in 0..10_000u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            if b.take(addr, 0).is_err() {
                refused += 1;
            }
        }
        assert!(b.len() <= 64);
        // Past the map, newcomers share one budget of 8.
        assert!(refused >= 10_000 - 64 - 8, "refused {refused}");
    }

    #[test]
    fn a_reconnect_resumes_the_cpu_budget_its_payer_left() {
        let ledger = CpuLedger::new(100);
        let (alice, bob) = (
            ledger.payer(Some("alice"), ip("10.0.0.1")),
            ledger.payer(Some("bob"), ip("10.0.0.1")),
        );
        assert_ne!(alice, bob, "users behind one address pay apart");
        assert_eq!(
            ledger.payer(None, ip("2001:db8::1")),
            ledger.payer(None, ip("2001:db8::2")),
            "anonymous clients pay per /64"
        );
        // 100 ms of burst, refilled at 10 ms a second; alice's connection spent 150.
        let mut spent = TokenBucket::new(100.0, 10.0, 0);
        spent.charge(150.0, 0);
        ledger.save(alice, spent, 0);
        ledger.save(bob, TokenBucket::new(100.0, 10.0, 0), 0);
        assert_eq!(ledger.len(), 1, "a full bucket is not remembered");

        // One second later: -50 + 10, still in debt, so her next connection may not spend.
        let mut resumed = ledger.resume(alice, 1_000).expect("alice's bucket");
        assert!(!resumed.available(1_000));
        assert!(ledger.resume(bob, 1_000).is_none());

        // Saved again and left alone until it refills: forgotten.
        ledger.save(alice, resumed, 1_000);
        assert!(ledger.resume(alice, 16_000).is_none());
    }

    #[test]
    fn the_cpu_ledger_keeps_the_emptier_bucket_and_stays_bounded() {
        let ledger = CpuLedger::new(8);
        let who = ledger.payer(None, ip("10.0.0.9"));
        let mut a = TokenBucket::new(100.0, 1.0, 0);
        a.charge(30.0, 0);
        let mut b = TokenBucket::new(100.0, 1.0, 0);
        b.charge(90.0, 0);
        ledger.save(who, b, 0);
        ledger.save(who, a, 0);
        let mut kept = ledger.resume(who, 0).expect("kept");
        assert!(kept.level(0) < 11.0, "the emptier one: {}", kept.level(0));

        for i in 0..1_000u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let mut spent = TokenBucket::new(100.0, 1.0, 0);
            spent.charge(50.0, 0);
            ledger.save(ledger.payer(None, addr), spent, 0);
        }
        assert_eq!(ledger.len(), 8);
    }

    #[test]
    fn failed_logins_back_off_exponentially_and_success_clears() {
        let mut f = Failures::new(3, Duration::from_secs(8), 100);
        for t in 0..2 {
            f.failed("ada", t);
            assert!(f.check("ada", t).is_ok());
        }
        f.failed("ada", 10);
        assert_eq!(f.check("ada", 10), Err(1000));
        f.failed("ada", 2000);
        assert_eq!(f.check("ada", 2000), Err(2000));
        for _ in 0..10 {
            f.failed("ada", 5000);
        }
        assert_eq!(f.check("ada", 5000), Err(8000), "capped");
        assert!(f.check("bob", 5000).is_ok());
        f.succeeded("ada");
        assert!(f.check("ada", 5000).is_ok());
    }

    #[test]
    fn failures_stay_bounded() {
        let mut f = Failures::new(1, Duration::from_secs(1), 50);
        for i in 0..5_000u64 {
            f.failed(&format!("user{i}"), i);
        }
        assert!(f.len() <= 50);
    }
}
