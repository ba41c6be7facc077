//! The JSON REST API under `/api`: what it shares (the error shape, the caller's address, the
//! bearer token, bounded JSON bodies) and its routes.
//!
//! Every error is `{"error":{"code":"…","message":"…"}}` with a stable code and a message
//! safe to show; internal detail goes to the log only.

pub mod accounts;
pub mod history;
pub mod rooms;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::auth::Denied;

/// Largest JSON body the API reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// An API error: status, stable code, safe message, and for 429 when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Safe to show.
    pub message: &'static str,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub const fn new(status: StatusCode, code: &'static str, message: &'static str) -> ApiError {
        ApiError {
            status,
            code,
            message,
            retry_after: None,
        }
    }

    /// 400.
    pub const fn bad_request(message: &'static str) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404.
    pub const fn not_found(message: &'static str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503: a store call failed; logged with its detail by the caller.
    pub const fn unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the server cannot answer now; retry shortly",
        )
    }

    /// 503 with `Retry-After`: the instance is at one of its budgets (rooms loaded, ...).
    pub fn overloaded() -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the server is at capacity; retry shortly",
            )
        }
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(retry_after: u64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after.max(1)),
            ..ApiError::from(Denied::RateLimited(retry_after))
        }
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(d.status()).unwrap_or(StatusCode::FORBIDDEN),
            code: d.code(),
            message: d.message(),
            retry_after: match d {
                Denied::RateLimited(s) => Some(s.max(1)),
                _ => None,
            },
        }
    }
}

impl From<crate::error::ServerError> for ApiError {
    fn from(e: crate::error::ServerError) -> ApiError {
        if let crate::error::ServerError::Overloaded { .. } = e {
            return ApiError::overloaded();
        }
        tracing::warn!(error = %e, "api: store call failed");
        ApiError::unavailable()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The caller's IP address: behind a trusted proxy the one it forwarded
/// ([`crate::proxy::ClientAddr`]), else the peer's (`0.0.0.0` if unknown, e.g. in unit tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(client) = parts.extensions.get::<crate::proxy::ClientAddr>() {
            return Ok(ClientIp(client.0));
        }
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip()),
        ))
    }
}

/// The request's token: `Authorization: Bearer …`, else the `token` query parameter (which
/// WebSocket clients, y-websocket included, can set while browsers cannot set headers).
pub fn token_of(parts: &Parts) -> Option<String> {
    if let Some(v) = parts.headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    let query = parts.uri.query()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "token").then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON body of at most [`MAX_BODY_BYTES`], with errors in the API's shape.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "the body is too large",
                )
            })?;
        if bytes.len() > MAX_BODY_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the body is too large",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|_| ApiError::bad_request("expected a JSON object with the documented fields"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, auth: Option<&str>) -> Parts {
        let mut b = axum::http::Request::builder().uri(uri);
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        assert_eq!(
            token_of(&parts("/x", Some("Bearer abc"))),
            Some("abc".into())
        );
        assert_eq!(
            token_of(&parts("/x", Some("bearer  abc "))),
            Some("abc".into())
        );
        assert_eq!(token_of(&parts("/x", Some("Basic abc"))), None);
        assert_eq!(
            token_of(&parts("/x?sv=1&token=a%2Eb.c", None)),
            Some("a.b.c".into())
        );
        assert_eq!(token_of(&parts("/x?sv=1", None)), None);
        assert_eq!(token_of(&parts("/x?token=%", None)), Some("%".into()));
        assert_eq!(token_of(&parts("/x?token=%4", None)), Some("%4".into()));
    }
}
