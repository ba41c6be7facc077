//! Which pages and host names may reach the server: a check in front of every route.
//!
//! A browser sends its page's `Origin` with every WebSocket upgrade and every cross-site
//! `POST`, and whatever host name it resolved in `Host`. With auth off (the `npm start`
//! default) nothing else stands between a web page and the rooms, so:
//! - a page of another site may not open a room socket or change anything (`Origin` not
//!   allowed: 403 `origin_not_allowed`);
//! - a name that merely resolves to this server (DNS rebinding: `evil.example` pointed at
//!   127.0.0.1 makes the attacker's page same-origin) is refused (`Host` not allowed: 403
//!   `host_not_allowed`);
//! - a state-changing request in one of the content types a page may send cross-site without
//!   asking first (`text/plain`, forms) is refused (415 `unsupported_media_type`): the API
//!   speaks JSON and binary updates only.
//!
//! The defaults follow the auth mode. Auth off: same-origin pages and pages served from this
//! machine (`localhost`, loopback addresses: a dev server on another port), and `Host` an IP
//! address or `localhost`. Auth on: any origin and any host (tokens are the gate). Operators
//! name their own with `ALLOWED_ORIGINS` and `ALLOWED_HOSTS`, which then hold in every mode.
//! Requests without `Origin` (servers, native clients, curl) are not browsers' and pass the
//! origin check. `/healthz` and `/readyz` are never refused (load balancers probe them by any
//! name).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;

/// Who may reach the server from a browser (`ALLOWED_ORIGINS`, `ALLOWED_HOSTS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebGuard {
    /// Origins allowed to open sockets and change things (`https://app.example`, or `*`);
    /// `None`: the auth mode's default (see the module docs).
    pub origins: Option<Vec<String>>,
    /// Host names the server answers to (`sync.example.com`, or `*`); `None`: the auth mode's
    /// default.
    pub hosts: Option<Vec<String>>,
}

/// Parses a comma-separated list setting; empty entries are dropped, names lower-cased.
pub fn parse_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Why a request is refused, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Origin` is not allowed.
    Origin,
    /// `Host` is not allowed.
    Host,
    /// A state-changing request in a content type pages may send cross-site unasked.
    MediaType,
}

impl Refusal {
    fn response(self) -> Response {
        let (status, code, message) = match self {
            Refusal::Origin => (
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "this page's origin may not use the server (ALLOWED_ORIGINS)",
            ),
            Refusal::Host => (
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                "the server does not answer to this host name (ALLOWED_HOSTS)",
            ),
            Refusal::MediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send JSON (application/json) or a binary update (application/octet-stream)",
            ),
        };
        ApiError::new(status, code, message).into_response()
    }
}

impl WebGuard {
    /// The decision for one request: its method, path and headers; `open` is whether auth is
    /// off.
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        open: bool,
    ) -> Result<(), Refusal> {
        if path == "/healthz" || path == "/readyz" {
            return Ok(());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(|h| h.trim().to_ascii_lowercase());
        let host_name = host.as_deref().map(strip_port);
        let host_ok = match (&self.hosts, host_name) {
            (Some(list), Some(name)) => listed(list, name) || list.iter().any(|h| h == "*"),
            (Some(_), None) => false,
            (None, Some(name)) => !open || is_local_name(name),
            // HTTP/1.1 requires Host; an HTTP/1.0 request without one names nothing to rebind.
            (None, None) => true,
        };
        if !host_ok {
            return Err(Refusal::Host);
        }
        let changes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        let upgrade = headers.contains_key(header::UPGRADE);
        if !(changes || upgrade) {
            return Ok(());
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("").trim().to_ascii_lowercase();
            let allowed = match &self.origins {
                Some(list) => list.iter().any(|o| o == "*" || *o == origin),
                None => !open || same_or_local(&origin, host.as_deref()),
            };
            if !allowed {
                return Err(Refusal::Origin);
            }
        }
        if changes && simple_content_type(headers) {
            return Err(Refusal::MediaType);
        }
        Ok(())
    }
}

/// `host:port` or `[v6]:port` without its port.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

fn listed(list: &[String], name: &str) -> bool {
    list.iter().any(|h| strip_port(h) == name)
}

/// An IP address (a rebinding attack needs a name) or a name of this machine.
fn is_local_name(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || name.ends_with(".localhost")
}

/// The origin is this server's own (`scheme://` + the request's `Host`), or a page served from
/// this machine.
fn same_or_local(origin: &str, host: Option<&str>) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // "null": a sandboxed or file page
    };
    if !matches!(scheme, "http" | "https") {
        return false;
    }
    if host == Some(authority) {
        return true;
    }
    let name = strip_port(authority);
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A content type a page may send cross-site without a preflight.
fn simple_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "text/plain" | "multipart/form-data" | "application/x-www-form-urlencoded"
    )
}

/// The middleware: refuses what [`WebGuard::check`] refuses, before any handler runs. Its
/// state: the rules, and whether the server is open (auth off).
pub async fn layer(
    State((guard, open)): State<(Arc<WebGuard>, bool)>,
    request: Request,
    next: Next,
) -> Response {
    match guard.check(
        request.method(),
        request.uri().path(),
        request.headers(),
        open,
    ) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, value.parse().unwrap());
        }
        h
    }

    const WS: &[(&str, &str)] = &[("upgrade", "websocket")];

    #[test]
    fn auth_off_allows_this_machine_and_same_origin_only() {
        let g = WebGuard::default();
        let check = |method: Method, pairs: &[(&'static str, &str)]| {
            g.check(&method, "/rooms/r/ws", &headers(pairs), true)
        };
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = vec![("host", "127.0.0.1:8080")];
            v.extend_from_slice(WS);
            v.extend_from_slice(extra);
            v
        };
        assert_eq!(
            check(Method::GET, &with(&[])),
            Ok(()),
            "no Origin: not a browser"
        );
        for origin in [
            "http://127.0.0.1:8080",
            "http://localhost:5173",
            "http://[::1]:3000",
            "http://app.localhost",
        ] {
            assert_eq!(
                check(Method::GET, &with(&[("origin", origin)])),
                Ok(()),
                "{origin}"
            );
        }
        for origin in ["https://evil.example", "null", "http://10.0.0.7:8080"] {
            assert_eq!(
                check(Method::GET, &with(&[("origin", origin)])),
                Err(Refusal::Origin),
                "{origin}"
            );
        }
        // DNS rebinding: the attacker's name, same-origin with its own page.
        let rebound = [
            ("host", "evil.example:8080"),
            ("origin", "http://evil.example:8080"),
            ("upgrade", "websocket"),
        ];
        assert_eq!(check(Method::GET, &rebound), Err(Refusal::Host));
        assert_eq!(check(Method::GET, &[("host", "localhost:8080")]), Ok(()));
        // Health checks answer whatever the name.
        assert_eq!(
            g.check(
                &Method::GET,
                "/healthz",
                &headers(&[("host", "lb.internal")]),
                true
            ),
            Ok(())
        );
        // A plain GET by a cross-site page reads nothing without CORS headers.
        let get = [
            ("host", "127.0.0.1:8080"),
            ("origin", "https://evil.example"),
        ];
        assert_eq!(
            g.check(&Method::GET, "/api/rooms/r", &headers(&get), true),
            Ok(())
        );
        assert_eq!(
            g.check(&Method::POST, "/api/rooms/r/edits", &headers(&get), true),
            Err(Refusal::Origin)
        );
    }

    #[test]
    fn auth_on_defaults_to_any_origin_and_lists_hold_in_every_mode() {
        let open = WebGuard::default();
        let cross = [
            ("host", "sync.example.com"),
            ("origin", "https://app.example"),
            ("upgrade", "websocket"),
        ];
        assert_eq!(
            open.check(&Method::GET, "/yjs/r", &headers(&cross), false),
            Ok(())
        );
        let listed = WebGuard {
            origins: Some(parse_list("https://app.example/, https://other.example")),
            hosts: Some(parse_list("sync.example.com")),
        };
        for auth_off in [true, false] {
            assert_eq!(
                listed.check(&Method::GET, "/yjs/r", &headers(&cross), auth_off),
                Ok(())
            );
            let evil = [
                ("host", "sync.example.com"),
                ("origin", "https://evil.example"),
                ("upgrade", "websocket"),
            ];
            assert_eq!(
                listed.check(&Method::GET, "/yjs/r", &headers(&evil), auth_off),
                Err(Refusal::Origin)
            );
            let other_host = [("host", "127.0.0.1:8080")];
            assert_eq!(
                listed.check(&Method::GET, "/", &headers(&other_host), auth_off),
                Err(Refusal::Host)
            );
        }
        let any = WebGuard {
            origins: Some(parse_list("*")),
            hosts: Some(parse_list("*")),
        };
        assert_eq!(
            any.check(&Method::GET, "/yjs/r", &headers(&cross), true),
            Ok(())
        );
    }

    #[test]
    fn changes_in_cross_site_content_types_are_refused() {
        let g = WebGuard::default();
        for (ct, ok) in [
            ("text/plain;charset=UTF-8", false),
            ("application/x-www-form-urlencoded", false),
            ("multipart/form-data; boundary=x", false),
            ("application/json", true),
            ("application/octet-stream", true),
        ] {
            let h = headers(&[("host", "127.0.0.1"), ("content-type", ct)]);
            let got = g.check(&Method::POST, "/api/docs", &h, false);
            assert_eq!(got.is_ok(), ok, "{ct}");
            if !ok {
                assert_eq!(got, Err(Refusal::MediaType));
            }
        }
    }
}
