//! Who may read and write each room: one check ([`Auth::admit`]) used by every transport and
//! route, so the protocols never decide access themselves.
//!
//! - [`token`]: JWTs, verified with a shared secret (HS256) or a public key (EdDSA, RS256).
//! - [`password`]: argon2id hashing on a bounded pool of blocking threads.
//! - [`limits`]: per-IP budgets (connection attempts, logins) and failed-login backoff, all in
//!   bounded maps.
//! - The accounts themselves (users, documents, grants) are in the store
//!   ([`crate::store::directory`]); [`Auth`] caches the grants it reads and forgets them when
//!   they change, on this instance directly and on the others through the hub.
//!
//! Modes (`CONCORD_AUTH`): `off` lets everyone read and write (the laptop default); `tokens`
//! trusts only signed tokens and their `rooms` claim; `accounts` adds the built-in users and
//! grants, and a token's `rooms` claim still counts.

pub mod access;
pub mod limits;
pub mod password;
pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

pub use crate::hub::AccessChange;
use crate::hub::{AccessSignal, Hub};
use crate::store::directory::{Directory, DocRole};
pub use access::{Denied, LiveRole, Role};
pub use token::{Claims, Keys};

/// `CONCORD_AUTH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Everyone may read and write every room.
    #[default]
    Off,
    /// Signed tokens only; their `rooms` claim decides.
    Tokens,
    /// Built-in accounts and grants (and tokens).
    Accounts,
}

impl Mode {
    /// The name in `CONCORD_AUTH` and `GET /api/auth`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Tokens => "tokens",
            Mode::Accounts => "accounts",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "off" => Ok(Mode::Off),
            "tokens" => Ok(Mode::Tokens),
            "accounts" => Ok(Mode::Accounts),
            _ => Err("expected off, tokens or accounts".to_owned()),
        }
    }
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`.
    pub id: String,
    /// Display name (the token's `name`, else the id).
    pub name: String,
    /// Token expiry, unix seconds.
    pub exp: u64,
    /// The token's claims (its `rooms` grant access too).
    pub claims: Claims,
}

/// Someone admitted to a room.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Who, when auth is on.
    pub principal: Option<Principal>,
    /// What they may do.
    pub role: Role,
}

/// What live connections hear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessEvent {
    /// One change.
    Changed(AccessChange),
    /// Changes may have been missed (the hub reconnected): everyone checks again.
    All,
}

/// Grants read from the directory, kept for `ttl`, at most `max` entries.
struct GrantCache {
    by_room: HashMap<String, HashMap<String, (Option<DocRole>, Instant)>>,
    len: usize,
    max: usize,
    ttl: Duration,
}

impl GrantCache {
    fn get(&self, room: &str, user: &str, now: Instant) -> Option<Option<DocRole>> {
        let (role, at) = self.by_room.get(room)?.get(user)?;
        (now.duration_since(*at) < self.ttl).then_some(*role)
    }

    fn put(&mut self, room: &str, user: &str, role: Option<DocRole>, now: Instant) {
        if self.len >= self.max {
            // Rather than track recency, start over: a full cache only costs re-reads.
            self.by_room.clear();
            self.len = 0;
        }
        let users = self.by_room.entry(room.to_owned()).or_default();
        if users.insert(user.to_owned(), (role, now)).is_none() {
            self.len += 1;
        }
    }

    fn forget(&mut self, change: &AccessChange) {
        match &change.user {
            Some(user) => {
                if let Some(users) = self.by_room.get_mut(&change.room) {
                    if users.remove(user).is_some() {
                        self.len -= 1;
                    }
                    if users.is_empty() {
                        self.by_room.remove(&change.room);
                    }
                }
            }
            None => {
                if let Some(users) = self.by_room.remove(&change.room) {
                    self.len -= users.len();
                }
            }
        }
    }

    fn clear(&mut self) {
        self.by_room.clear();
        self.len = 0;
    }
}

/// Settings of [`Auth`] (from `Config`).
#[derive(Clone)]
pub struct AuthSettings {
    /// `CONCORD_AUTH`.
    pub mode: Mode,
    /// `CONCORD_AUTH_SECRET` (or `_FILE`).
    pub secret: Option<crate::secret::Secret>,
    /// Contents of the PEM file named by `CONCORD_AUTH_PUBLIC_KEY`.
    pub public_key: Option<Vec<u8>>,
    /// Lifetime of tokens the server mints at login (`CONCORD_TOKEN_TTL_SECS`).
    pub token_ttl: Duration,
    /// How long a grant read from the directory is trusted without a change notice
    /// (`GRANT_CACHE_SECS`).
    pub grant_cache_ttl: Duration,
    /// Budgets of the per-IP and login limiters.
    pub limits: limits::LimitSettings,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("mode", &self.mode)
            .field("secret", &self.secret)
            .field("public_key", &self.public_key.as_ref().map(|_| "(pem)"))
            .field("token_ttl", &self.token_ttl)
            .field("grant_cache_ttl", &self.grant_cache_ttl)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            mode: Mode::Off,
            secret: None,
            public_key: None,
            token_ttl: Duration::from_secs(7 * 24 * 3600),
            grant_cache_ttl: Duration::from_secs(60),
            limits: limits::LimitSettings::default(),
        }
    }
}

/// The access checks of one instance.
pub struct Auth {
    mode: Mode,
    keys: Keys,
    directory: Arc<dyn Directory>,
    hub: Arc<dyn Hub>,
    cache: Mutex<GrantCache>,
    events: broadcast::Sender<AccessEvent>,
    token_ttl: Duration,
    /// Per-IP and login budgets.
    pub limits: limits::Limiters,
    /// argon2id, off the async workers.
    pub passwords: password::Hasher,
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Auth {
    /// Builds the checks; fails if the keys are unusable. Starts the task that hears other
    /// instances' grant changes.
    pub fn new(
        settings: &AuthSettings,
        directory: Arc<dyn Directory>,
        hub: Arc<dyn Hub>,
        hash_threads: usize,
    ) -> Result<Arc<Auth>, String> {
        let keys = Keys::new(
            settings.secret.as_ref().map(|s| s.expose().as_bytes()),
            settings.public_key.as_deref(),
        )?;
        if settings.mode == Mode::Accounts && !keys.can_mint() {
            return Err("accounts mode needs CONCORD_AUTH_SECRET to sign its tokens".to_owned());
        }
        if settings.mode == Mode::Tokens
            && settings.secret.is_none()
            && settings.public_key.is_none()
        {
            return Err(
                "tokens mode needs CONCORD_AUTH_SECRET or CONCORD_AUTH_PUBLIC_KEY".to_owned(),
            );
        }
        let (events, _) = broadcast::channel(1024);
        let auth = Arc::new(Auth {
            mode: settings.mode,
            keys,
            directory,
            hub: hub.clone(),
            cache: Mutex::new(GrantCache {
                by_room: HashMap::new(),
                len: 0,
                max: 100_000,
                ttl: settings.grant_cache_ttl,
            }),
            events,
            token_ttl: settings.token_ttl,
            limits: limits::Limiters::new(&settings.limits),
            passwords: password::Hasher::new(hash_threads),
        });
        if settings.mode != Mode::Off {
            let mut feed = hub.access_feed();
            let weak = Arc::downgrade(&auth);
            tokio::spawn(async move {
                while let Some(signal) = feed.recv().await {
                    let Some(auth) = weak.upgrade() else { return };
                    match signal {
                        AccessSignal::Changed(change) => auth.apply(change),
                        AccessSignal::Missed => {
                            if let Ok(mut cache) = auth.cache.lock() {
                                cache.clear();
                            }
                            let _ = auth.events.send(AccessEvent::All);
                        }
                    }
                }
            });
        }
        Ok(auth)
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The accounts directory.
    pub fn directory(&self) -> &Arc<dyn Directory> {
        &self.directory
    }

    /// Checks a token (size, algorithm, signature, expiry). With auth off, nobody is
    /// authenticated and that is fine.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Option<Principal>, Denied> {
        if self.mode == Mode::Off {
            return Ok(None);
        }
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Unauthorized)?;
        let claims = self.keys.verify(token, unix_now())?;
        Ok(Some(Principal {
            id: claims.sub.clone(),
            name: claims.name.clone().unwrap_or_else(|| claims.sub.clone()),
            exp: claims.exp,
            claims,
        }))
    }

    /// The user's role on the document in the directory, through the cache.
    pub async fn doc_role(&self, user: &str, room: &str) -> Result<Option<DocRole>, Denied> {
        let now = Instant::now();
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(room, user, now)) {
            return Ok(hit);
        }
        let role = self.directory.role(room, user).await.map_err(|e| {
            tracing::warn!(room, error = %e, "grant lookup failed");
            Denied::Unavailable
        })?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(room, user, role, now);
        }
        Ok(role)
    }

    /// What `who` may do in `room`, if anything: the token's claim and (in accounts mode) the
    /// directory's grant, whichever is higher.
    pub async fn role(&self, who: &Principal, room: &str) -> Result<Option<Role>, Denied> {
        let claimed = who.claims.role_in(room);
        if self.mode != Mode::Accounts || claimed == Some(Role::Write) {
            return Ok(claimed);
        }
        let granted = self.doc_role(&who.id, room).await?.map(DocRole::room_role);
        Ok(claimed.max(granted))
    }

    /// The one check every transport runs before joining a room.
    pub async fn admit(&self, token: Option<&str>, room: &str) -> Result<Admission, Denied> {
        let Some(principal) = self.authenticate(token)? else {
            return Ok(Admission {
                principal: None,
                role: Role::Write,
            });
        };
        match self.role(&principal, room).await? {
            Some(role) => Ok(Admission {
                principal: Some(principal),
                role,
            }),
            None => Err(Denied::Forbidden),
        }
    }

    /// Signs a token for a user of the directory (accounts mode).
    pub fn mint(&self, user: &crate::store::directory::User) -> Option<String> {
        let claims = Claims {
            sub: user.id.clone(),
            name: Some(user.name.clone()),
            exp: unix_now() + self.token_ttl.as_secs(),
            nbf: None,
            rooms: Default::default(),
        };
        self.keys.mint(&claims)
    }

    /// Live connections hear grant changes here.
    pub fn subscribe(&self) -> broadcast::Receiver<AccessEvent> {
        self.events.subscribe()
    }

    /// A grant changed on this instance: forget it, tell local connections, tell the others.
    pub fn changed(&self, change: AccessChange) {
        self.hub.publish_access(&change);
        self.apply(change);
    }

    fn apply(&self, change: AccessChange) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.forget(&change);
        }
        let _ = self.events.send(AccessEvent::Changed(change));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_forgets_one_user_or_a_whole_room_and_stays_bounded() {
        let mut c = GrantCache {
            by_room: HashMap::new(),
            len: 0,
            max: 3,
            ttl: Duration::from_secs(60),
        };
        let now = Instant::now();
        c.put("r", "a", Some(DocRole::Read), now);
        c.put("r", "b", Some(DocRole::Write), now);
        c.put("s", "a", None, now);
        assert_eq!(c.get("r", "a", now), Some(Some(DocRole::Read)));
        assert_eq!(c.get("s", "a", now), Some(None));
        c.forget(&AccessChange {
            room: "r".into(),
            user: Some("a".into()),
        });
        assert_eq!(c.get("r", "a", now), None);
        assert_eq!(c.len, 2);
        c.forget(&AccessChange {
            room: "r".into(),
            user: None,
        });
        assert_eq!(c.get("r", "b", now), None);
        assert_eq!(c.len, 1);
        c.put("t", "x", None, now);
        c.put("t", "y", None, now);
        c.put("t", "z", None, now);
        assert!(c.len <= 3);
        assert_eq!(c.get("t", "a", now + Duration::from_secs(61)), None);
    }

    #[test]
    fn live_role_flips() {
        let r = LiveRole::new(Role::Read);
        assert!(!r.can_write());
        assert!(r.set(Role::Write));
        assert!(!r.set(Role::Write));
        assert!(r.can_write());
    }
}
