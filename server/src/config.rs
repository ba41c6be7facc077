//! Configuration from the environment, with embedded defaults so `concord` runs on a laptop
//! with no services: SQLite in `./data`, in-memory fan-out.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use concord_engine::{CompactionPolicy, Limits};

use crate::error::{Result, ServerError};

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
    /// Frames queued per connection before it counts as a slow consumer (`CONN_QUEUE`).
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
    /// How long shutdown waits for rooms and connections to drain (`SHUTDOWN_GRACE_SECS`).
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080),
            database_url: "sqlite://data/concord.db".to_owned(),
            redis_url: None,
            web_dir: default_web_dir(),
            limits: Limits::default(),
            conn_queue: 1024,
            room_queue: 4096,
            room_idle: Duration::from_secs(30),
            heartbeat: Duration::from_secs(15),
            max_connections: 20_000,
            compaction: CompactionPolicy::default(),
            shutdown_grace: Duration::from_secs(10),
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

fn parse<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value
                .trim()
                .parse()
                .map_err(|e: T::Err| ServerError::Config {
                    name,
                    value,
                    reason: e.to_string(),
                })
        }
        _ => Ok(default),
    }
}

fn non_empty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
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
            database_url: non_empty("DATABASE_URL").unwrap_or(d.database_url),
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
            shutdown_grace: Duration::from_secs(parse(
                "SHUTDOWN_GRACE_SECS",
                d.shutdown_grace.as_secs(),
            )?),
        })
    }
}
