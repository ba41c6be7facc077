//! Concord's sync server.
//!
//! # Layout
//! Lower layers first; nothing imports a module above it (`scripts/check-layers.sh` checks it,
//! in `npm test`).
//! - Leaves: [`clock`] (monotonic ms), [`secret`] (secrets, URL redaction), [`error`]
//!   (`ServerError`), [`metrics`] (Prometheus registry), [`cpu`] (the pool of threads where all
//!   CRDT work runs), [`inbound`] (the byte budget of frames being parsed).
//! - [`store`]: the `Store` trait, SQLite and Postgres, group commit, history rows, snapshots
//!   in a bucket, the webhook outbox. [`hub`]: in-memory or Redis fan-out, presence, access
//!   signals. [`auth`]: tokens, accounts, grants: the one access check every transport and
//!   route runs. [`webhooks`]: signed delivery from the store's outbox.
//! - [`config`]: every setting, from the environment, with embedded defaults.
//! - [`outbox`]: a connection's outbound queue, bounded in bytes, and its [`outbox::Kill`].
//! - [`room`]: a room's task, the thin actor around the engine's `RoomHost` (commands in,
//!   frames, store commands and hub publishes out); [`rooms`]: the registry (lazy load, one
//!   task per room, idle unload, the room cap, in-process writes).
//! - [`state`]: what every handler is given. Above it: [`connection`] (a JSON or y-websocket
//!   socket), [`hocuspocus`] (a Hocuspocus socket, many documents), [`api`] (the REST API),
//!   [`health`] (`/readyz`, `/metrics`), [`guard`] (which page origins and host names may
//!   reach the server), [`proxy`] (the client's address behind trusted proxies).
//! - [`routes`]: the router; [`http`]: the listener (header and idle timeouts, a connection
//!   cap); [`run`] wires them.
//!
//! The engine decides (what a frame means, whether an update is new, what to ack and
//! broadcast to whom in which protocol, when to commit, compact or unload); this crate only
//! moves bytes between sockets, the CPU pool, the store and the hub.

#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod connection;
pub mod cpu;
pub mod error;
pub mod guard;
pub mod health;
pub mod hocuspocus;
pub mod http;
pub mod hub;
pub mod inbound;
pub mod metrics;
pub mod outbox;
pub mod proxy;
pub mod room;
pub mod rooms;
pub mod routes;
pub mod secret;
pub mod state;
pub mod store;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use concord_engine::rate;
pub use config::Config;
pub use error::{Result, ServerError};

/// Runs the server on `listener` until `shutdown` resolves, then drains: stops accepting,
/// lets rooms finish their in-flight commits and ack them, closes sockets with 1001 and writes
/// final snapshots. The drain ends within `shutdown_grace` whatever clients do (or a room's
/// job on the CPU pool: the pool's threads do not hold the process).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let config = Arc::new(config);
    let store = store::connect_with(&config.database_url, config.store_timeouts()).await?;
    if let Some(settings) = &config.objects {
        let objects = Arc::new(store::objects::Objects::open(settings)?);
        // Unreachable at startup is a settings error (exit 2), as for the store and Redis;
        // later outages only delay compaction and loads of bucket-backed rooms.
        objects.ping().await.map_err(|e| ServerError::Connect {
            target: format!("OBJECT_STORE_URL={}", objects.describe()),
            reason: e.to_string(),
        })?;
        tracing::info!("snapshots in {}", objects.describe());
        store.use_objects(objects);
    }
    let hub = hub::connect(config.redis_url.as_deref()).await?;
    let tracker = TaskTracker::new();
    let commit_tracker = TaskTracker::new();
    let committer = store::committer::Committer::start(store.clone(), &commit_tracker);
    let cpu = cpu::CpuPool::start(config.cpu_threads, 1024);
    let token = CancellationToken::new();
    let rooms = rooms::Rooms::new(room::RoomContext {
        store: store.clone(),
        hub: hub.clone(),
        committer,
        cpu: cpu.clone(),
        // Half the pool at most: the other half keeps applying edits while rooms fold.
        folds: store::Folds::new(cpu.clone(), config.cpu_threads / 2, config.compact_bytes),
        cpu_ledger: Arc::new(auth::limits::CpuLedger::new(config.auth.limits.max_entries)),
        config: config.clone(),
        shutdown: token.clone(),
        tracker: tracker.clone(),
    });
    let auth = auth::Auth::new(&config.auth, store.clone(), hub.clone(), config.cpu_threads)
        .map_err(|reason| ServerError::Config {
            name: "CONCORD_AUTH",
            value: config.auth.mode.as_str().to_owned(),
            reason,
        })?;
    let state = state::AppState {
        rooms,
        config: config.clone(),
        connections: Arc::new(Semaphore::new(config.max_connections)),
        outbound: outbox::Budget::new(config.conn_out_bytes, config.total_out_bytes),
        inbound: inbound::Inbound::new(config.inbound_bytes),
        cpu,
        auth,
    };
    let addr = listener.local_addr()?;
    if config.auth.mode == auth::Mode::Off && !addr.ip().is_loopback() {
        tracing::warn!(
            "AUTH IS OFF and the server listens on {addr}, beyond this machine: anyone who can \
             reach it can read and overwrite every document. Set CONCORD_AUTH=tokens or \
             accounts (see README, Access control), or HOST=127.0.0.1."
        );
    }
    tracing::info!(
        "concord listening on http://{addr} (store: {}, hub: {}, auth: {})",
        store.describe(),
        if config.redis_url.is_some() {
            "redis"
        } else {
            "memory"
        },
        config.auth.mode.as_str()
    );

    let webhooks = config.webhooks.clone().map(|settings| {
        store.enable_webhooks(settings.timing());
        tracing::info!(
            "webhooks on: events to {}",
            secret::redact_url(&settings.url)
        );
        tokio::spawn(webhooks::run(store.clone(), settings, token.clone()))
    });
    let signal = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: draining rooms and connections");
        signal.cancel();
    });
    let app = routes::router(state);
    let http = http::serve(
        listener,
        app,
        config.header_timeout,
        config.max_http_connections,
        token.clone(),
    )
    .await;

    // Rooms finish their commits, ack, close their members and snapshot; HTTP requests in
    // flight finish. Both within one grace period.
    tracker.close();
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        tokio::join!(tracker.wait(), http.wait());
    })
    .await;
    if drained.is_err() {
        tracing::warn!("shutdown grace elapsed with rooms or connections still draining");
    }
    commit_tracker.close();
    if let Some(worker) = webhooks {
        // It stops at the cancellation; a delivery cut short is retried after its lease.
        let _ = tokio::time::timeout(Duration::from_secs(1), worker).await;
    }
    tracing::info!("stopped");
    Ok(())
}
