//! The HTTP listener: accepts connections and serves the router over HTTP/1.1, with the time
//! and count budgets `axum::serve` does not have.
//!
//! - A client gets `HEADER_TIMEOUT_SECS` to send a request's headers, and a kept-alive
//!   connection that stays idle that long is closed, so half-sent requests (slowloris) cannot
//!   pile up.
//! - At most `MAX_HTTP_CONNECTIONS` HTTP connections are open at once; beyond that new ones are
//!   closed at accept. A WebSocket leaves this count once upgraded (it has its own limit).
//! - Shutdown stops accepting, asks every connection to finish its request, and waits at most
//!   until the caller's deadline; whatever is still open then is dropped.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves `app` on `listener` until `shutdown` is cancelled; returns the tracker of open
/// connections so the caller can bound the drain.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    max_connections: usize,
    shutdown: CancellationToken,
) -> TaskTracker {
    let conns = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!("too many HTTP connections; closing a new one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Handlers see the peer's address (per-IP limits) as `ConnectInfo`.
        let service = TowerToHyperService::new(
            app.clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let _permit = permit;
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    conns.close();
    conns
}
