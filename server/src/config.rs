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
    /// How long shutdown waits for rooms and connections to drain (`SHUTDOWN_GRACE_SECS`).
    pub shutdown_grace: Duration,

    // Budgets against hostile or unlucky clients (see docs/reliability.md).
    /// Threads that do CRDT work (`CPU_THREADS`; default: the machine's cores).
    pub cpu_threads: usize,
    /// Pool time each connection may spend (`CPU_BURST_MS`, `CPU_SHARE`).
    pub cpu_budget: crate::room::CpuBudget,
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
            shutdown_grace: Duration::from_secs(10),
            cpu_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cpu_budget: crate::room::CpuBudget::default(),
            conn_out_bytes: 16 * 1024 * 1024,
            total_out_bytes: 1024 * 1024 * 1024,
            inbound_bytes: 256 * 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_http_connections: 4096,
            room_limits: concord_engine::RoomLimits::default(),
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
            cpu_threads: parse("CPU_THREADS", d.cpu_threads)?.max(1),
            cpu_budget: crate::room::CpuBudget {
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
        })
    }
}
