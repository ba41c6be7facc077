//! Readiness: `/readyz` says whether this instance can serve rooms now, for a load balancer
//! or an orchestrator to route around it when it cannot; `/metrics` serves the Prometheus text
//! and runs the same checks to set the health gauges. `/healthz` (in [`crate::routes`]) only
//! says the process answers.
//!
//! Two checks, run together, each bounded by a short timeout so a hung database makes the
//! probe fail promptly instead of hanging it: the store answers a trivial query, and the hub
//! (Redis with `REDIS_URL`, else in-memory and always ok) answers a ping. Each result also sets
//! the `concord_store_up` / `concord_hub_up` gauges. Failure details go to the log; the body
//! says only which check failed, so a probe never learns a URL or a driver's message.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::state::AppState;

/// How long `/readyz` lets each check take.
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// It answered.
    Ok,
    /// It answered with an error.
    Error,
    /// It did not answer within the timeout.
    Timeout,
}

/// Both checks, as `/readyz` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// The store (`DATABASE_URL`).
    pub store: Check,
    /// The hub (`REDIS_URL`, or in-memory).
    pub hub: Check,
}

impl Readiness {
    /// Ready when both checks passed.
    pub fn ready(&self) -> bool {
        self.store == Check::Ok && self.hub == Check::Ok
    }
}

async fn bounded(
    what: &'static str,
    limit: Duration,
    call: impl std::future::Future<Output = crate::Result<()>>,
) -> Check {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(())) => Check::Ok,
        Ok(Err(e)) => {
            tracing::warn!(check = what, error = %e, "readiness check failed");
            Check::Error
        }
        Err(_) => {
            tracing::warn!(
                check = what,
                after_ms = limit.as_millis() as u64,
                "readiness check timed out"
            );
            Check::Timeout
        }
    }
}

/// Runs both checks at once, each within `limit`, and sets the health gauges.
pub async fn check(state: &AppState, limit: Duration) -> Readiness {
    let ctx = state.rooms.ctx();
    let (store, hub) = tokio::join!(
        bounded("store", limit, ctx.store.ping()),
        bounded("hub", limit, ctx.hub.ping()),
    );
    let m = crate::metrics::get();
    m.store_up.set(i64::from(store == Check::Ok));
    m.hub_up.set(i64::from(hub == Check::Ok));
    Readiness { store, hub }
}

/// `GET /readyz`: 200 `{"store":"ok","hub":"ok"}`, or 503 naming the check that failed.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = check(&state, READY_TIMEOUT).await;
    let status = if readiness.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let config = &state.config;
    if !config.metrics {
        return StatusCode::NOT_FOUND.into_response();
    }
    if let Some(token) = &config.metrics_token {
        if !bearer_matches(&headers, token.expose()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "metrics need Authorization: Bearer <METRICS_TOKEN>",
            )
                .into_response();
        }
    }
    let m = crate::metrics::get();
    m.rooms_loaded.set(state.rooms.loaded() as i64);
    m.outbound_queued_bytes.set(state.outbound.used() as i64);
    // Sets the health gauges.
    check(&state, CHECK_TIMEOUT).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

/// Bound on each health check run by a scrape.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the request carries `Authorization: Bearer <token>`, compared in constant time.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.trim().as_bytes().ct_eq(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match_exactly() {
        let mut headers = HeaderMap::new();
        assert!(!bearer_matches(&headers, "s3cret"));
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(bearer_matches(&headers, "s3cret"));
        assert!(!bearer_matches(&headers, "s3cret2"));
        headers.insert(header::AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert!(!bearer_matches(&headers, "s3cret"));
    }

    #[test]
    fn the_body_names_each_check() {
        let r = Readiness {
            store: Check::Ok,
            hub: Check::Timeout,
        };
        assert!(!r.ready());
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"store":"ok","hub":"timeout"}"#
        );
    }

    #[tokio::test]
    async fn a_check_that_hangs_is_a_timeout() {
        let hang = std::future::pending::<crate::Result<()>>();
        assert_eq!(
            bounded("store", Duration::from_millis(10), hang).await,
            Check::Timeout
        );
        let fails = async { Err(crate::ServerError::Unavailable) };
        assert_eq!(bounded("hub", READY_TIMEOUT, fails).await, Check::Error);
    }
}
