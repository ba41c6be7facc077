//! Configuration from the environment, with embedded defaults so `concord` runs on a laptop
//! with no services: SQLite in `./data`, in-memory fan-out.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use concord_engine::{CompactionPolicy, Limits};

use crate::error::{Result, ServerError};
use crate::secret::{redact_url, scrub, Secret};
use crate::store::StoreTimeouts;

/// Everything the server can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (`HOST`, `PORT`; default `0.0.0.0:8080`).
    pub addr: SocketAddr,
    /// `DATABASE_URL`: `sqlite://path` or `postgres://...` (default `sqlite://data/concord.db`).
    pub database_url: String,
    /// `REDIS_URL`: fan-out across instances; unset means in-memory (one instance).
    pub redis_url: Option<String>,
    /// `CONCORD_WEB_DIR`: where `demo.html`, `pkg/` and `src/` are served from.
    pub web_dir: PathBuf,
    /// Frame and update size limits (`MAX_FRAME_BYTES`).
    pub limits: Limits,
    /// Frames queued per connection at most (`CONN_QUEUE`); the byte budget usually binds first.
    pub conn_queue: usize,
    /// Commands queued per room (`ROOM_QUEUE`).
    pub room_queue: usize,
    /// A room with no connections is unloaded after this long (`ROOM_IDLE_SECS`).
    pub room_idle: Duration,
    /// Ping interval (`HEARTBEAT_SECS`); a connection silent for 3 intervals is closed.
    pub heartbeat: Duration,
    /// Maximum concurrent WebSocket connections (`MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// When to fold the op log into a snapshot.
    pub compaction: CompactionPolicy,
    /// The most bytes of ops one compaction folds (`COMPACT_BYTES`); a longer tail is folded
    /// in steps, so a fold's memory and time follow this, not how far behind the room is.
    pub compact_bytes: usize,
    /// Rooms loaded at once on this instance (`MAX_ROOMS`), whatever loaded them: sockets of
    /// any protocol, each Hocuspocus document, REST writes. At the cap, rooms with no members
    /// unload at once, and a room that would be loaded beyond it is refused (`overloaded`).
    pub max_rooms: usize,
    /// How history is kept (`HISTORY_CHECKPOINT_OPS`, `HISTORY_RETENTION`).
    pub history: crate::store::history::HistoryPolicy,
    /// How long shutdown waits for rooms and connections to drain (`SHUTDOWN_GRACE_SECS`).
    pub shutdown_grace: Duration,

    // Budgets against hostile or unlucky clients (see docs/reliability.md).
    /// Threads that do CRDT work (`CPU_THREADS`; default: the machine's cores).
    pub cpu_threads: usize,
    /// Pool time each connection may spend (`CPU_BURST_MS`, `CPU_SHARE`).
    pub cpu_budget: concord_engine::host::CpuBudget,
    /// Bytes queued for one connection before it is a slow consumer (`CONN_OUT_BYTES`).
    pub conn_out_bytes: usize,
    /// Bytes queued for all connections together (`OUT_BYTES`).
    pub total_out_bytes: usize,
    /// Bytes of client frames parsed at once across the instance (`INBOUND_BYTES`).
    pub inbound_bytes: usize,
    /// Longest a socket write may take before the peer is dropped (`WRITE_TIMEOUT_SECS`).
    pub write_timeout: Duration,
    /// Longest a client may take to send a request's headers, or stay idle between requests
    /// (`HEADER_TIMEOUT_SECS`).
    pub header_timeout: Duration,
    /// Most open HTTP connections, WebSockets not counted (`MAX_HTTP_CONNECTIONS`).
    pub max_http_connections: usize,
    /// Bytes a room may hold not yet durable, and since its last snapshot
    /// (`ROOM_STAGED_BYTES`, `ROOM_TAIL_BYTES`).
    pub room_limits: concord_engine::RoomLimits,
    /// Bound on each store call: a group commit (its retries included), a load, a catch-up
    /// read, a compaction (`COMMIT_TIMEOUT_MS`, default 5000). A stalled store then fails the
    /// senders' ops with `unavailable` after this long instead of whenever the database gives
    /// up.
    pub commit_timeout: Duration,
    /// Bound on each wait inside the store (`STATEMENT_TIMEOUT_MS`, default 2000): Postgres
    /// `statement_timeout` and `lock_timeout`, SQLite's busy timeout, and the pool's acquire
    /// timeout. Shorter than the commit timeout so a group commit that hits one room's lock
    /// still has time to retry its other rooms alone.
    pub statement_timeout: Duration,

    /// Access control (`CONCORD_AUTH` and friends; see `crate::auth`).
    pub auth: crate::auth::AuthSettings,
    /// Which pages and host names may reach the server (`ALLOWED_ORIGINS`, `ALLOWED_HOSTS`;
    /// see `crate::guard`).
    pub web_guard: crate::guard::WebGuard,
    /// Reverse proxies whose `X-Forwarded-For` / `Forwarded` give the client's address
    /// (`TRUSTED_PROXIES`; see `crate::proxy`): every per-address limit uses that address.
    pub trusted_proxies: crate::proxy::TrustedProxies,
    /// Updates a connection may send at once, and per second after that (`UPDATE_BURST`,
    /// `UPDATE_PER_SEC`); beyond, the server reads its updates at that rate.
    pub update_rate: (f64, f64),
    /// How long a connection may stay over its update rate without a pause before it is
    /// closed with 4429 (`UPDATE_PATIENCE_SECS`).
    pub update_patience: Duration,

    /// Whether `/metrics` is served (`METRICS`, default on).
    pub metrics: bool,
    /// A bearer token `/metrics` requires, if set (`METRICS_TOKEN`).
    pub metrics_token: Option<Secret>,
    /// How log lines are written (`LOG_FORMAT`).
    pub log_format: LogFormat,
    /// The bucket snapshots live in, if any (`OBJECT_STORE_URL`).
    pub objects: Option<crate::store::objects::ObjectSettings>,
    /// Where document and room events are POSTed, if anywhere (`WEBHOOK_URL`).
    pub webhooks: Option<crate::webhooks::WebhookSettings>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<LogFormat, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".to_owned()),
        }
    }
}

/// One environment variable the server reads: the single list that `concord --help` prints
/// and that every read of the environment is checked against (in tests), so a new setting
/// cannot be read without being documented.
pub struct Setting {
    /// The variable.
    pub name: &'static str,
    /// Its default, as `concord --help` shows it, taken from `Config::default()` so the two
    /// cannot disagree.
    pub default: fn(&Config) -> String,
    /// What it does.
    pub what: &'static str,
}

fn secs(d: Duration) -> String {
    d.as_secs().to_string()
}

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

fn unset(_: &Config) -> String {
    "unset".to_owned()
}

/// Every setting, in the order `--help` lists them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "HOST",
        default: |c| c.addr.ip().to_string(),
        what: "address to listen on",
    },
    Setting {
        name: "PORT",
        default: |c| c.addr.port().to_string(),
        what: "port to listen on",
    },
    Setting {
        name: "DATABASE_URL",
        default: |c| c.database_url.clone(),
        what: "the store: sqlite://path (its directory must be writable) or \
               postgres://user:password@host:port/database",
    },
    Setting {
        name: "REDIS_URL",
        default: |_| "unset (in-memory hub, one instance)".to_owned(),
        what: "redis://[:password@]host:port: fan-out and presence across instances; \
               checked at startup",
    },
    Setting {
        name: "CONCORD_WEB_DIR",
        default: |c| c.web_dir.display().to_string(),
        what: "where demo.html, src/ and pkg/ are served from",
    },
    Setting {
        name: "LOG_FORMAT",
        default: |_| "text".to_owned(),
        what: "text, or json for one JSON object per line",
    },
    Setting {
        name: "RUST_LOG",
        default: |_| "info,sqlx=warn".to_owned(),
        what: "log filter (tracing-subscriber EnvFilter syntax)",
    },
    Setting {
        name: "METRICS",
        default: |c| if c.metrics { "on" } else { "off" }.to_owned(),
        what: "on or off: serve Prometheus metrics on /metrics",
    },
    Setting {
        name: "OBJECT_STORE_URL",
        default: unset,
        what: "s3://bucket[/prefix]: room snapshots are kept in this S3-compatible bucket, the database names them (unset: in the database)",
    },
    Setting {
        name: "OBJECT_STORE_ENDPOINT",
        default: unset,
        what: "the S3 API's URL for MinIO and other S3-compatible servers (unset: AWS)",
    },
    Setting {
        name: "OBJECT_STORE_REGION",
        default: |_| "us-east-1".to_owned(),
        what: "the bucket's region",
    },
    Setting {
        name: "OBJECT_STORE_TIMEOUT_MS",
        default: |_| "3000".to_owned(),
        what: "bound on one bucket request (one retry after it)",
    },
    Setting {
        name: "AWS_ACCESS_KEY_ID",
        default: unset,
        what: "the bucket's access key (never logged)",
    },
    Setting {
        name: "AWS_SECRET_ACCESS_KEY",
        default: unset,
        what: "the bucket's secret key (never logged)",
    },
    Setting {
        name: "WEBHOOK_URL",
        default: unset,
        what: "http(s) URL that document.changed, room.loaded and room.unloaded events are POSTed to (unset: no webhooks)",
    },
    Setting {
        name: "WEBHOOK_SECRET",
        default: unset,
        what: "HMAC-SHA256 key of the Concord-Signature header (at least 16 bytes; required with WEBHOOK_URL)",
    },
    Setting {
        name: "WEBHOOK_SECRET_FILE",
        default: unset,
        what: "a file holding WEBHOOK_SECRET instead",
    },
    Setting {
        name: "WEBHOOK_DEBOUNCE_MS",
        default: |_| crate::webhooks::WebhookSettings::DEFAULT.debounce.as_millis().to_string(),
        what: "document.changed is sent this long after a room's last change...",
    },
    Setting {
        name: "WEBHOOK_MAX_DELAY_MS",
        default: |_| crate::webhooks::WebhookSettings::DEFAULT.max_delay.as_millis().to_string(),
        what: "...and never later than this after its first unsent change, however busy the room",
    },
    Setting {
        name: "WEBHOOK_TIMEOUT_MS",
        default: |_| crate::webhooks::WebhookSettings::DEFAULT.timeout.as_millis().to_string(),
        what: "a delivery that takes longer fails and is retried",
    },
    Setting {
        name: "WEBHOOK_RETRY_MIN_MS",
        default: |_| crate::webhooks::WebhookSettings::DEFAULT.retry_min.as_millis().to_string(),
        what: "first retry delay; doubles per failed attempt (with jitter)...",
    },
    Setting {
        name: "WEBHOOK_RETRY_MAX_MS",
        default: |_| crate::webhooks::WebhookSettings::DEFAULT.retry_max.as_millis().to_string(),
        what: "...up to this; events are kept and retried until the receiver answers 2xx",
    },
    Setting {
        name: "METRICS_TOKEN",
        default: unset,
        what: "if set, /metrics requires Authorization: Bearer <token> (401 without it)",
    },
    Setting {
        name: "MAX_FRAME_BYTES",
        default: |c| c.limits.max_frame_bytes.to_string(),
        what: "largest client frame; up to 2x gets an error frame, beyond closes (1009)",
    },
    Setting {
        name: "ROOM_IDLE_SECS",
        default: |c| secs(c.room_idle),
        what: "unload a room this long after its last client leaves",
    },
    Setting {
        name: "HEARTBEAT_SECS",
        default: |c| secs(c.heartbeat),
        what: "ping interval; a connection silent for 3 intervals is closed",
    },
    Setting {
        name: "CONN_QUEUE",
        default: |c| c.conn_queue.to_string(),
        what: "frames queued per connection at most",
    },
    Setting {
        name: "ROOM_QUEUE",
        default: |c| c.room_queue.to_string(),
        what: "commands queued per room at most",
    },
    Setting {
        name: "COMPACT_OPS",
        default: |c| c.compaction.max_ops.to_string(),
        what: "fold the op log into the snapshot after this many ops",
    },
    Setting {
        name: "COMPACT_MS",
        default: |c| c.compaction.max_age_ms.to_string(),
        what: "... or after this many milliseconds",
    },
    Setting {
        name: "COMPACT_BYTES",
        default: |c| c.compact_bytes.to_string(),
        what: "... folding at most this many bytes of ops at a time",
    },
    Setting {
        name: "MAX_ROOMS",
        default: |c| c.max_rooms.to_string(),
        what: "rooms loaded at once (beyond: idle ones unload, new ones are refused)",
    },
    Setting {
        name: "HISTORY_CHECKPOINT_OPS",
        default: |c| c.history.checkpoint_ops.to_string(),
        what: "history keeps a checkpoint every this many ops",
    },
    Setting {
        name: "HISTORY_RETENTION",
        default: |_| "forever".to_owned(),
        what: "how long history is kept: 30d, 12h, 90m, 3600s or forever",
    },
    Setting {
        name: "SHUTDOWN_GRACE_SECS",
        default: |c| secs(c.shutdown_grace),
        what: "SIGTERM drains commits, acks and sockets, and exits within this",
    },
    Setting {
        name: "MAX_CONNECTIONS",
        default: |c| c.max_connections.to_string(),
        what: "open WebSockets at most (beyond: 503)",
    },
    Setting {
        name: "MAX_HTTP_CONNECTIONS",
        default: |c| c.max_http_connections.to_string(),
        what: "open plain HTTP connections at most (beyond: closed at accept)",
    },
    Setting {
        name: "HEADER_TIMEOUT_SECS",
        default: |c| secs(c.header_timeout),
        what: "time to send a request's headers, and most idle time between requests",
    },
    Setting {
        name: "WRITE_TIMEOUT_SECS",
        default: |c| secs(c.write_timeout),
        what: "a socket write that takes longer drops the peer",
    },
    Setting {
        name: "CPU_THREADS",
        default: |c| format!("{} (the machine's cores)", c.cpu_threads),
        what: "threads of the pool where all CRDT work runs",
    },
    Setting {
        name: "CPU_BURST_MS",
        default: |c| c.cpu_budget.burst_ms.to_string(),
        what: "pool CPU time a connection may spend at once (beyond: error cpu_budget, close 1013)",
    },
    Setting {
        name: "CPU_SHARE",
        default: |c| c.cpu_budget.share.to_string(),
        what: "share of a core a connection may use over time (0.001 to 1)",
    },
    Setting {
        name: "CONN_OUT_BYTES",
        default: |c| c.conn_out_bytes.to_string(),
        what: "bytes queued to one connection (beyond: slow consumer, close 1013)",
    },
    Setting {
        name: "OUT_BYTES",
        default: |c| c.total_out_bytes.to_string(),
        what: "bytes queued to all connections together",
    },
    Setting {
        name: "INBOUND_BYTES",
        default: |c| c.inbound_bytes.to_string(),
        what: "bytes of client frames parsed at once across the instance",
    },
    Setting {
        name: "ROOM_STAGED_BYTES",
        default: |c| c.room_limits.max_staged_bytes.to_string(),
        what: "a room's updates not yet durable (beyond: error overloaded, close 1013)",
    },
    Setting {
        name: "ROOM_TAIL_BYTES",
        default: |c| c.room_limits.max_tail_bytes.to_string(),
        what: "a room's updates since its last snapshot",
    },
    Setting {
        name: "COMMIT_TIMEOUT_MS",
        default: |c| ms(c.commit_timeout),
        what: "bound on each group commit, load, catch-up and compaction",
    },
    Setting {
        name: "STATEMENT_TIMEOUT_MS",
        default: |c| ms(c.statement_timeout),
        what: "bound on each wait inside the store (statement, lock, busy, pool acquire)",
    },
    Setting {
        name: "UPDATE_BURST",
        default: |c| c.update_rate.0.to_string(),
        what: "updates a connection may send at once",
    },
    Setting {
        name: "UPDATE_PER_SEC",
        default: |c| c.update_rate.1.to_string(),
        what: "updates per second after the burst (beyond: read at that rate)",
    },
    Setting {
        name: "UPDATE_PATIENCE_SECS",
        default: |c| secs(c.update_patience),
        what: "a connection over its update rate this long is closed (4429)",
    },
    Setting {
        name: "ALLOWED_ORIGINS",
        default: |_| "unset (auth off: same origin and pages of this machine; auth on: any)"
            .to_owned(),
        what: "comma-separated page origins (https://app.example, or *) that may open room \
               sockets and change things; others get 403",
    },
    Setting {
        name: "ALLOWED_HOSTS",
        default: |_| "unset (auth off: IP addresses and localhost; auth on: any)".to_owned(),
        what: "comma-separated host names (or *) the server answers to; others get 403 \
               (DNS rebinding)",
    },
    Setting {
        name: "TRUSTED_PROXIES",
        default: |_| "unset (the peer's address is the client's)".to_owned(),
        what: "comma-separated proxy addresses or networks (10.0.0.0/8) whose \
               X-Forwarded-For / Forwarded give the client's address for per-address limits",
    },
    Setting {
        name: "CONCORD_AUTH",
        default: |c| c.auth.mode.as_str().to_owned(),
        what: "access control: off, tokens or accounts",
    },
    Setting {
        name: "CONCORD_AUTH_SECRET",
        default: unset,
        what: "HS256 key for tokens, at least 32 bytes (environment only, never the command line)",
    },
    Setting {
        name: "CONCORD_AUTH_SECRET_FILE",
        default: unset,
        what: "a file holding CONCORD_AUTH_SECRET",
    },
    Setting {
        name: "CONCORD_AUTH_PUBLIC_KEY",
        default: unset,
        what: "a PEM public key file, for EdDSA or RS256 tokens",
    },
    Setting {
        name: "CONCORD_TOKEN_TTL_SECS",
        default: |c| secs(c.auth.token_ttl),
        what: "lifetime of tokens minted at login (accounts)",
    },
    Setting {
        name: "GRANT_CACHE_SECS",
        default: |c| secs(c.auth.grant_cache_ttl),
        what: "how long a grant is trusted without a change notice",
    },
    Setting {
        name: "IP_CONNECT_BURST",
        default: |c| c.auth.limits.connect_burst.to_string(),
        what: "connection attempts per IP at once (beyond: 429)",
    },
    Setting {
        name: "IP_CONNECT_PER_SEC",
        default: |c| c.auth.limits.connect_per_sec.to_string(),
        what: "connection attempts per IP per second after the burst",
    },
    Setting {
        name: "LOGIN_BURST",
        default: |c| c.auth.limits.login_burst.to_string(),
        what: "logins per IP at once",
    },
    Setting {
        name: "LOGIN_PER_SEC",
        default: |c| c.auth.limits.login_per_sec.to_string(),
        what: "logins per IP per second after the burst",
    },
];

/// The settings part of `concord --help`: each variable, its default and what it does.
pub fn settings_help() -> String {
    let defaults = Config::default();
    let mut out = String::new();
    for s in SETTINGS {
        out.push_str(&format!("  {}\n", s.name));
        let mut line = String::from("      ");
        for word in s.what.split_whitespace() {
            if line.len() + word.len() > 92 {
                out.push_str(line.trim_end());
                out.push('\n');
                line = String::from("      ");
            }
            line.push_str(word);
            line.push(' ');
        }
        out.push_str(line.trim_end());
        out.push_str(&format!("\n      default: {}\n", (s.default)(&defaults)));
    }
    out
}

/// What a setting of type `T` should look like, for error messages.
fn expected<T>() -> &'static str {
    match std::any::type_name::<T>() {
        "u16" | "u32" | "u64" | "usize" => "a whole number",
        "f64" | "f32" => "a number",
        "core::net::ip_addr::IpAddr" => "an IP address such as 0.0.0.0 or 127.0.0.1",
        _ => "a valid value (see concord --help)",
    }
}

/// Reads one variable; every name must be in [`SETTINGS`] (checked in tests and debug
/// builds; a test reads them all).
fn var(name: &str) -> Option<String> {
    if cfg!(any(test, debug_assertions)) {
        assert!(
            SETTINGS.iter().any(|s| s.name == name),
            "{name} is read but missing from config::SETTINGS"
        );
    }
    std::env::var(name).ok()
}

/// The bucket, if `OBJECT_STORE_URL` is set.
fn object_settings() -> Result<Option<crate::store::objects::ObjectSettings>> {
    let timeout = millis("OBJECT_STORE_TIMEOUT_MS", Duration::from_millis(3000))?;
    let region = non_empty("OBJECT_STORE_REGION").unwrap_or_else(|| "us-east-1".to_owned());
    let endpoint = non_empty("OBJECT_STORE_ENDPOINT");
    let access_key = non_empty("AWS_ACCESS_KEY_ID").map(Secret::new);
    let secret_key = non_empty("AWS_SECRET_ACCESS_KEY").map(Secret::new);
    let Some(url) = non_empty("OBJECT_STORE_URL") else {
        return Ok(None);
    };
    let url = url.trim().to_owned();
    if let Err(reason) = crate::store::objects::parse_url(&url) {
        return Err(ServerError::Config {
            name: "OBJECT_STORE_URL",
            value: url,
            reason: reason.to_owned(),
        });
    }
    if let Some(e) = &endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(ServerError::Config {
                name: "OBJECT_STORE_ENDPOINT",
                value: redact_url(e),
                reason: "expected an http:// or https:// URL".to_owned(),
            });
        }
    }
    Ok(Some(crate::store::objects::ObjectSettings {
        url,
        endpoint,
        region,
        access_key,
        secret_key,
        timeout,
    }))
}

/// Webhooks, if `WEBHOOK_URL` is set: the URL checked, the secret required.
fn webhook_settings() -> Result<Option<crate::webhooks::WebhookSettings>> {
    let d = crate::webhooks::WebhookSettings::DEFAULT;
    let debounce = millis("WEBHOOK_DEBOUNCE_MS", d.debounce)?;
    let max_delay = millis("WEBHOOK_MAX_DELAY_MS", d.max_delay)?;
    let timeout = millis("WEBHOOK_TIMEOUT_MS", d.timeout)?;
    let retry_min = millis("WEBHOOK_RETRY_MIN_MS", d.retry_min)?;
    let retry_max = millis("WEBHOOK_RETRY_MAX_MS", d.retry_max)?;
    let secret = match (
        non_empty("WEBHOOK_SECRET"),
        non_empty("WEBHOOK_SECRET_FILE"),
    ) {
        (Some(s), _) => Some(s),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path.trim())
                .map_err(|e| ServerError::Config {
                    name: "WEBHOOK_SECRET_FILE",
                    value: "(not shown)".to_owned(),
                    reason: format!("cannot read it: {}", e.kind()),
                })?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        ),
        (None, None) => None,
    };
    let Some(url) = non_empty("WEBHOOK_URL") else {
        return Ok(None);
    };
    let settings = crate::webhooks::WebhookSettings {
        url: url.trim().to_owned(),
        secret: Secret::new(secret.unwrap_or_default()),
        debounce,
        max_delay,
        timeout,
        retry_min,
        retry_max,
    };
    settings
        .check()
        .map_err(|(name, reason)| ServerError::Config {
            name,
            value: match name {
                "WEBHOOK_URL" => redact_url(&settings.url),
                _ => "(not shown)".to_owned(),
            },
            reason: reason.to_owned(),
        })?;
    Ok(Some(settings))
}

/// Shortest shared secret accepted: HS256 keys should have at least 256 bits.
pub const MIN_SECRET_BYTES: usize = 32;

fn auth_settings(d: &crate::auth::AuthSettings) -> Result<crate::auth::AuthSettings> {
    let mode: crate::auth::Mode = parse("CONCORD_AUTH", d.mode)?;
    let bad = |name: &'static str, reason: String| ServerError::Config {
        name,
        value: "(not shown)".to_owned(),
        reason,
    };
    // A secret on the command line would be visible to every user of the machine (ps), so
    // only the environment or a file.
    let secret = match (
        non_empty("CONCORD_AUTH_SECRET"),
        non_empty("CONCORD_AUTH_SECRET_FILE"),
    ) {
        (Some(s), _) => Some(s),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path.trim())
                .map_err(|e| {
                    bad(
                        "CONCORD_AUTH_SECRET_FILE",
                        format!("cannot read it: {}", e.kind()),
                    )
                })?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        ),
        (None, None) => None,
    };
    if let Some(s) = &secret {
        if s.len() < MIN_SECRET_BYTES {
            return Err(bad(
                "CONCORD_AUTH_SECRET",
                format!("must be at least {MIN_SECRET_BYTES} bytes"),
            ));
        }
    }
    let public_key = match non_empty("CONCORD_AUTH_PUBLIC_KEY") {
        Some(path) => Some(std::fs::read(path.trim()).map_err(|e| ServerError::Config {
            name: "CONCORD_AUTH_PUBLIC_KEY",
            value: path.clone(),
            reason: format!("cannot read it: {}", e.kind()),
        })?),
        None => None,
    };
    let l = d.limits;
    Ok(crate::auth::AuthSettings {
        mode,
        secret: secret.map(Secret::new),
        public_key,
        token_ttl: Duration::from_secs(
            parse("CONCORD_TOKEN_TTL_SECS", d.token_ttl.as_secs())?.max(1),
        ),
        grant_cache_ttl: Duration::from_secs(parse(
            "GRANT_CACHE_SECS",
            d.grant_cache_ttl.as_secs(),
        )?),
        limits: crate::auth::limits::LimitSettings {
            connect_burst: parse("IP_CONNECT_BURST", l.connect_burst)?.max(1.0),
            connect_per_sec: parse("IP_CONNECT_PER_SEC", l.connect_per_sec)?.max(0.01),
            login_burst: parse("LOGIN_BURST", l.login_burst)?.max(1.0),
            login_per_sec: parse("LOGIN_PER_SEC", l.login_per_sec)?.max(0.01),
            ..l
        },
    })
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080),
            database_url: "sqlite://data/concord.db".to_owned(),
            redis_url: None,
            web_dir: default_web_dir(),
            limits: Limits::default(),
            conn_queue: 65_536,
            room_queue: 4096,
            room_idle: Duration::from_secs(30),
            heartbeat: Duration::from_secs(15),
            max_connections: 20_000,
            compaction: CompactionPolicy::default(),
            compact_bytes: 8 * 1024 * 1024,
            max_rooms: 10_000,
            history: crate::store::history::HistoryPolicy::default(),
            shutdown_grace: Duration::from_secs(10),
            cpu_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cpu_budget: concord_engine::host::CpuBudget::default(),
            conn_out_bytes: 16 * 1024 * 1024,
            total_out_bytes: 1024 * 1024 * 1024,
            inbound_bytes: 256 * 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_http_connections: 4096,
            room_limits: concord_engine::RoomLimits::default(),
            commit_timeout: StoreTimeouts::default().commit,
            statement_timeout: StoreTimeouts::default().statement,
            auth: crate::auth::AuthSettings::default(),
            web_guard: crate::guard::WebGuard::default(),
            trusted_proxies: crate::proxy::TrustedProxies::default(),
            update_rate: (2000.0, 500.0),
            update_patience: Duration::from_secs(10),
            metrics: true,
            metrics_token: None,
            log_format: LogFormat::Text,
            webhooks: None,
            objects: None,
        }
    }
}

fn default_web_dir() -> PathBuf {
    let beside_crate = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../web");
    if beside_crate.is_dir() {
        beside_crate
    } else {
        PathBuf::from("web")
    }
}

/// A retention window: `30d`, `12h`, `90m`, `3600s` or plain seconds; unset or `forever`
/// keeps everything.
fn retention(name: &'static str) -> Result<Option<i64>> {
    let Some(value) = non_empty(name) else {
        return Ok(None);
    };
    let value = value.trim().to_ascii_lowercase();
    if value == "forever" {
        return Ok(None);
    }
    let (digits, unit_ms) = match value.char_indices().last() {
        Some((i, 'd')) => (&value[..i], 86_400_000),
        Some((i, 'h')) => (&value[..i], 3_600_000),
        Some((i, 'm')) => (&value[..i], 60_000),
        Some((i, 's')) => (&value[..i], 1_000),
        _ => (value.as_str(), 1_000),
    };
    match digits.parse::<i64>() {
        Ok(n) if n > 0 => Ok(Some(n.saturating_mul(unit_ms))),
        _ => Err(ServerError::Config {
            name,
            value: value.clone(),
            reason: "expected a duration such as 30d, 12h, 90m or 3600s, or `forever`".to_owned(),
        }),
    }
}

fn parse<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        Some(value) if !value.trim().is_empty() => value.trim().parse().map_err(|e: T::Err| {
            let mut reason = scrub(&e.to_string(), &value);
            if !reason.contains("expected") {
                reason = format!("{reason}; expected {}", expected::<T>());
            }
            ServerError::Config {
                name,
                value: redact_url(&value),
                reason,
            }
        }),
        _ => Ok(default),
    }
}

fn non_empty(name: &str) -> Option<String> {
    var(name).filter(|v| !v.trim().is_empty())
}

/// `on`/`off` (also `true`/`false`, `1`/`0`, `yes`/`no`).
fn switch(name: &'static str, default: bool) -> Result<bool> {
    let Some(value) = non_empty(name) else {
        return Ok(default);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(ServerError::Config {
            name,
            value,
            reason: "expected on or off".to_owned(),
        }),
    }
}

/// `DATABASE_URL`, checked as far as it can be without connecting: a scheme the server
/// knows, a URL its driver parses, and for SQLite a directory the server can write (the
/// database file, its WAL and its shared-memory file all live there). Connecting is checked
/// by `run`, whose error names the variable too.
fn database_url(default: String) -> Result<String> {
    let url = non_empty("DATABASE_URL").unwrap_or(default);
    check_database_url(&url)?;
    Ok(url)
}

fn check_database_url(url: &str) -> Result<()> {
    let bad = |reason: String| ServerError::Config {
        name: "DATABASE_URL",
        value: redact_url(url),
        reason: scrub(&reason, url),
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url).map_err(|e| {
            bad(format!(
                "{e}; expected postgres://user:password@host:port/database"
            ))
        })?;
    } else if url.starts_with("sqlite:") {
        let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(url)
            .map_err(|e| bad(format!("{e}; expected sqlite://path/to/file.db")))?;
        let file = options.get_filename();
        if file != std::path::Path::new(":memory:") && !url.contains("mode=memory") {
            if let Some(dir) = file.parent() {
                check_writable_dir(dir).map_err(bad)?;
            }
        }
    } else {
        return Err(bad(
            "expected sqlite://path/to/file.db or postgres://user:password@host:port/database"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Whether `dir` can be created (if missing) and written, without creating it: the nearest
/// existing ancestor must be a directory that accepts a new file.
fn check_writable_dir(dir: &std::path::Path) -> std::result::Result<(), String> {
    let dir = if dir.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        dir
    };
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
            _ => {
                existing = std::path::Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return Err(format!(
            "{} is not a directory, so the data directory {} cannot be created; expected a \
             writable directory for the SQLite file",
            existing.display(),
            dir.display()
        ));
    }
    let probe = existing.join(format!(".concord-write-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!(
            "the data directory {} is not writable ({}); expected a directory the server can \
             create files in",
            existing.display(),
            e.kind()
        )),
    }
}

impl Config {
    /// Reads the environment; unset variables take the defaults.
    pub fn from_env() -> Result<Config> {
        let d = Config::default();
        let host: IpAddr = parse("HOST", d.addr.ip())?;
        let port: u16 = parse("PORT", d.addr.port())?;
        let max_frame: usize = parse("MAX_FRAME_BYTES", d.limits.max_frame_bytes)?;
        let limits = Limits {
            max_frame_bytes: max_frame,
            max_update_bytes: max_frame / 4 * 3,
            ..d.limits
        };
        Ok(Config {
            addr: SocketAddr::new(host, port),
            database_url: database_url(d.database_url)?,
            redis_url: non_empty("REDIS_URL"),
            web_dir: non_empty("CONCORD_WEB_DIR")
                .map(PathBuf::from)
                .unwrap_or(d.web_dir),
            limits,
            conn_queue: parse("CONN_QUEUE", d.conn_queue)?.max(8),
            room_queue: parse("ROOM_QUEUE", d.room_queue)?.max(8),
            room_idle: Duration::from_secs(parse("ROOM_IDLE_SECS", d.room_idle.as_secs())?),
            heartbeat: Duration::from_secs(parse("HEARTBEAT_SECS", d.heartbeat.as_secs())?.max(1)),
            max_connections: parse("MAX_CONNECTIONS", d.max_connections)?,
            compaction: CompactionPolicy {
                max_ops: parse("COMPACT_OPS", d.compaction.max_ops)?.max(1),
                max_age_ms: parse("COMPACT_MS", d.compaction.max_age_ms)?,
            },
            compact_bytes: parse("COMPACT_BYTES", d.compact_bytes)?.max(1),
            max_rooms: parse("MAX_ROOMS", d.max_rooms)?.max(1),
            history: crate::store::history::HistoryPolicy {
                checkpoint_ops: parse("HISTORY_CHECKPOINT_OPS", d.history.checkpoint_ops)?.max(1),
                retention_ms: retention("HISTORY_RETENTION")?,
            },
            shutdown_grace: Duration::from_secs(parse(
                "SHUTDOWN_GRACE_SECS",
                d.shutdown_grace.as_secs(),
            )?),
            cpu_threads: parse("CPU_THREADS", d.cpu_threads)?.max(1),
            cpu_budget: concord_engine::host::CpuBudget {
                burst_ms: parse("CPU_BURST_MS", d.cpu_budget.burst_ms)?.max(1.0),
                share: parse("CPU_SHARE", d.cpu_budget.share)?.clamp(0.001, 1.0),
            },
            conn_out_bytes: parse("CONN_OUT_BYTES", d.conn_out_bytes)?.max(4096),
            total_out_bytes: parse("OUT_BYTES", d.total_out_bytes)?.max(1 << 20),
            inbound_bytes: parse("INBOUND_BYTES", d.inbound_bytes)?.max(1 << 20),
            write_timeout: Duration::from_secs(
                parse("WRITE_TIMEOUT_SECS", d.write_timeout.as_secs())?.max(1),
            ),
            header_timeout: Duration::from_secs(
                parse("HEADER_TIMEOUT_SECS", d.header_timeout.as_secs())?.max(1),
            ),
            max_http_connections: parse("MAX_HTTP_CONNECTIONS", d.max_http_connections)?.max(16),
            room_limits: concord_engine::RoomLimits {
                max_staged_bytes: parse("ROOM_STAGED_BYTES", d.room_limits.max_staged_bytes)?,
                max_tail_bytes: parse("ROOM_TAIL_BYTES", d.room_limits.max_tail_bytes)?,
            },
            commit_timeout: millis("COMMIT_TIMEOUT_MS", d.commit_timeout)?,
            statement_timeout: millis("STATEMENT_TIMEOUT_MS", d.statement_timeout)?,
            auth: auth_settings(&d.auth)?,
            web_guard: crate::guard::WebGuard {
                origins: non_empty("ALLOWED_ORIGINS").map(|v| crate::guard::parse_list(&v)),
                hosts: non_empty("ALLOWED_HOSTS").map(|v| crate::guard::parse_list(&v)),
            },
            trusted_proxies: match non_empty("TRUSTED_PROXIES") {
                Some(list) => crate::proxy::TrustedProxies::parse(&list).map_err(|reason| {
                    ServerError::Config {
                        name: "TRUSTED_PROXIES",
                        value: list.clone(),
                        reason,
                    }
                })?,
                None => d.trusted_proxies.clone(),
            },
            update_rate: (
                parse("UPDATE_BURST", d.update_rate.0)?.max(1.0),
                parse("UPDATE_PER_SEC", d.update_rate.1)?.max(0.01),
            ),
            update_patience: Duration::from_secs(
                parse("UPDATE_PATIENCE_SECS", d.update_patience.as_secs())?.max(1),
            ),
            metrics: switch("METRICS", d.metrics)?,
            metrics_token: non_empty("METRICS_TOKEN").map(|t| Secret::new(t.trim())),
            log_format: parse("LOG_FORMAT", d.log_format)?,
            webhooks: webhook_settings()?,
            objects: object_settings()?,
        })
    }

    /// The store's bounds, for `store::connect_with`.
    pub fn store_timeouts(&self) -> StoreTimeouts {
        StoreTimeouts {
            commit: self.commit_timeout,
            statement: self.statement_timeout,
        }
    }
}

/// A duration in milliseconds; 0 is refused, since an unbounded wait is what these settings
/// exist to prevent.
fn millis(name: &'static str, default: Duration) -> Result<Duration> {
    let ms: u64 = parse(name, default.as_millis() as u64)?;
    if ms == 0 {
        return Err(ServerError::Config {
            name,
            value: "0".to_owned(),
            reason: "must be at least 1 millisecond".to_owned(),
        });
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests that set variables hold this, so a concurrent `from_env` sees a stable environment.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn every_setting_read_is_documented_and_every_documented_one_is_read() {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        // Reads every variable; `var` panics (debug) on one missing from SETTINGS.
        Config::from_env().expect("the defaults are a valid configuration");
        let source = include_str!("config.rs");
        for s in SETTINGS {
            let quoted = format!("\"{}\"", s.name);
            // Once in the table, at least once where it is read (RUST_LOG: by tracing).
            assert!(
                s.name == "RUST_LOG" || source.matches(&quoted).count() >= 2,
                "{} is documented but never read",
                s.name
            );
        }
        let mut names: Vec<_> = SETTINGS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SETTINGS.len(), "a setting is listed twice");
    }

    #[test]
    fn help_shows_defaults_from_the_config() {
        let help = settings_help();
        assert!(help.contains("  PORT\n      port to listen on\n      default: 8080\n"));
        assert!(help.contains("default: sqlite://data/concord.db"));
        assert!(help.contains("default: 5000"), "COMMIT_TIMEOUT_MS");
        assert!(help.lines().all(|l| l.len() <= 100), "{help}");
    }

    #[test]
    fn database_urls_are_checked_before_connecting() {
        let err = |url: &str| match check_database_url(url) {
            Err(ServerError::Config {
                name,
                value,
                reason,
            }) => {
                assert_eq!(name, "DATABASE_URL");
                format!("{value} {reason}")
            }
            other => panic!("{url}: {other:?}"),
        };
        let msg = err("mysql://u:hunter2@h/db");
        assert!(
            msg.contains("expected sqlite://") && !msg.contains("hunter2"),
            "{msg}"
        );
        let file = std::env::temp_dir().join(format!("concord-cfg-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let msg = err(&format!("sqlite://{}/sub/concord.db", file.display()));
        assert!(msg.contains("not a directory"), "{msg}");
        let _ = std::fs::remove_file(&file);
        check_database_url("sqlite::memory:").expect("in-memory needs no directory");
        let dir = std::env::temp_dir().join(format!("concord-cfg-dir-{}", std::process::id()));
        check_database_url(&format!("sqlite://{}/a/b/concord.db", dir.display()))
            .expect("a missing directory under a writable one is fine");
        assert!(!dir.exists(), "checking creates nothing");
        check_database_url("postgres://u:p@localhost:5432/db").expect("valid postgres url");
    }

    #[test]
    fn switches_and_log_formats_parse() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().is_err());
        assert_eq!(expected::<u16>(), "a whole number");
        assert_eq!(
            expected::<IpAddr>(),
            "an IP address such as 0.0.0.0 or 127.0.0.1"
        );
    }

    #[test]
    fn timeouts_parse_and_refuse_zero() {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        // Only this test touches these variables.
        std::env::set_var("COMMIT_TIMEOUT_MS", "1500");
        std::env::set_var("STATEMENT_TIMEOUT_MS", "0");
        let refused = Config::from_env();
        std::env::set_var("STATEMENT_TIMEOUT_MS", "250");
        let parsed = Config::from_env();
        std::env::remove_var("COMMIT_TIMEOUT_MS");
        std::env::remove_var("STATEMENT_TIMEOUT_MS");
        assert!(matches!(
            refused,
            Err(ServerError::Config {
                name: "STATEMENT_TIMEOUT_MS",
                ..
            })
        ));
        let parsed = parsed.expect("config");
        assert_eq!(parsed.commit_timeout, Duration::from_millis(1500));
        assert_eq!(parsed.statement_timeout, Duration::from_millis(250));
    }
}
