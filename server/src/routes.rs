//! HTTP routes: health and readiness, metrics, the demo page and its static files, the
//! WebSocket endpoints, and the REST API ([`crate::api`]). Every room route runs
//! [`crate::auth::Auth::admit`] first.

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use concord_engine::wire::{decode_b64, validate_room_id};
use serde::Deserialize;
use tower_http::services::{ServeDir, ServeFile};

use crate::api::{ApiError, ClientIp};
use crate::state::AppState;
use concord_engine::host::Protocol;

/// The router of the whole server.
pub fn router(state: AppState) -> Router {
    let config = state.config.clone();
    let web = config.web_dir.clone();
    let open = config.auth.mode == crate::auth::Mode::Off;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(crate::health::readyz))
        .route("/metrics", get(crate::health::metrics))
        .route("/rooms/{id}/ws", get(ws))
        .route("/yjs/{room}", get(yjs))
        .route("/hocuspocus", get(hocuspocus))
        .merge(crate::api::accounts::routes())
        .merge(crate::api::history::routes())
        .merge(crate::api::rooms::routes(
            state.config.limits.max_update_bytes,
        ))
        .route_service("/", ServeFile::new(web.join("demo.html")))
        .route_service("/demo.html", ServeFile::new(web.join("demo.html")))
        .nest_service("/pkg", ServeDir::new(web.join("pkg")))
        .nest_service("/src", ServeDir::new(web.join("src")))
        .layer(axum::middleware::from_fn_with_state(
            (Arc::new(config.web_guard.clone()), open),
            crate::guard::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(config.trusted_proxies.clone()),
            crate::proxy::layer,
        ))
        .with_state(state)
}

/// Per-connection read buffer (see `prepare`). tungstenite allocates it up front and keeps it
/// for the connection's life, so it is most of what an idle connection costs: 8 KiB was 40%
/// of the server's heap with 1,000 idle clients (massif). Edits and presence frames are far
/// smaller; a large frame takes a few more reads.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// The request's token, if any (see [`crate::api::token_of`]).
struct Token(Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Token {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Token(crate::api::token_of(parts)))
    }
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    sv: Option<String>,
}

fn bad_request(message: &'static str) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

type Upgrade = Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;

/// What every room socket passes before its upgrade, whatever its protocol: the per-IP
/// connection rate, a valid room id, and the access check.
async fn admit(
    state: &AppState,
    ip: std::net::IpAddr,
    token: Option<&str>,
    id: &str,
) -> Result<crate::auth::Admission, Response> {
    if let Err(retry) = state.auth.limits.connect(ip, crate::clock::now_ms()) {
        return Err(ApiError::rate_limited(retry).into_response());
    }
    if validate_room_id(id).is_err() {
        return Err(bad_request(
            "bad room id: use 1-128 characters of A-Z a-z 0-9 _ - .",
        ));
    }
    state
        .auth
        .admit(token, id)
        .await
        .map_err(|denied| ApiError::from(denied).into_response())
}

/// The y-websocket protocol: `new WebsocketProvider('ws://host/yjs', room, doc)` connects here.
async fn yjs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ClientIp(ip): ClientIp,
    Token(token): Token,
    upgrade: Upgrade,
) -> Response {
    let admission = match admit(&state, ip, token.as_deref(), &id).await {
        Ok(admission) => admission,
        Err(response) => return response,
    };
    let Ok(upgrade) = upgrade else {
        return bad_request("expected a WebSocket upgrade");
    };
    upgrade_to(state, upgrade, id, None, admission, ip, Protocol::Yjs)
}

/// The Hocuspocus protocol: `new HocuspocusProvider({url: 'ws://host/hocuspocus', name})`.
/// Documents are authenticated one by one inside the socket, so only the connection rate is
/// checked here.
async fn hocuspocus(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    upgrade: Upgrade,
) -> Response {
    if let Err(retry) = state.auth.limits.connect(ip, crate::clock::now_ms()) {
        return ApiError::rate_limited(retry).into_response();
    }
    let Ok(upgrade) = upgrade else {
        return bad_request("expected a WebSocket upgrade");
    };
    let Some((upgrade, permit)) = prepare(&state, upgrade) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    upgrade.on_upgrade(move |socket| async move {
        let _open = crate::metrics::get().connection(Protocol::Hocuspocus);
        crate::hocuspocus::serve(socket, state, ip).await;
        drop(permit);
    })
}

async fn ws(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<WsQuery>,
    ClientIp(ip): ClientIp,
    Token(token): Token,
    upgrade: Upgrade,
) -> Response {
    let admission = match admit(&state, ip, token.as_deref(), &id).await {
        Ok(admission) => admission,
        Err(response) => return response,
    };
    let sv = match query.sv.as_deref().filter(|s| !s.is_empty()) {
        // A '+' that was not percent-encoded arrives as a space.
        Some(b64) => match decode_b64("sv", &b64.replace(' ', "+")) {
            Ok(sv) if concord_engine::room::is_valid_state_vector(&sv) => Some(sv),
            _ => return bad_request("bad sv: expected a base64 state vector"),
        },
        None => None,
    };
    let Ok(upgrade) = upgrade else {
        return bad_request("expected a WebSocket upgrade");
    };
    upgrade_to(state, upgrade, id, sv, admission, ip, Protocol::Json)
}

fn upgrade_to(
    state: AppState,
    upgrade: WebSocketUpgrade,
    id: String,
    sv: Option<Vec<u8>>,
    admission: crate::auth::Admission,
    ip: std::net::IpAddr,
    protocol: Protocol,
) -> Response {
    let Some((upgrade, permit)) = prepare(&state, upgrade) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    upgrade.on_upgrade(move |socket| async move {
        let _open = crate::metrics::get().connection(protocol);
        crate::connection::serve(socket, id, sv, admission, ip, state, protocol).await;
        drop(permit);
    })
}

/// A connection permit and the socket's buffer and frame limits; `None` at the connection cap.
fn prepare(
    state: &AppState,
    upgrade: WebSocketUpgrade,
) -> Option<(WebSocketUpgrade, tokio::sync::OwnedSemaphorePermit)> {
    let permit = state.connections.clone().try_acquire_owned().ok()?;
    let max = state.config.limits.max_frame_bytes;
    let upgrade = upgrade
        // tungstenite zero-fills its whole read buffer before every socket read: at the default
        // 128 KiB that was a quarter of the server's CPU under load. Frames are mostly small;
        // larger ones are read in several reads.
        .read_buffer_size(READ_BUFFER_BYTES)
        // Frames up to twice the limit are read and answered with an error frame; beyond that
        // the socket is closed (1009) without buffering them.
        .max_message_size(max.saturating_mul(2))
        .max_frame_size(max.saturating_mul(2));
    Some((upgrade, permit))
}
