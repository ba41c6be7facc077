//! The client's address behind trusted reverse proxies (`TRUSTED_PROXIES`).
//!
//! Behind a proxy every connection comes from the proxy's address, so per-address limits (the
//! connect rate, login backoff, the CPU ledger of anonymous clients) would lump every client
//! together: one abuser locks everyone out, and no limit tells abusers apart. A proxy says who
//! it forwarded in `X-Forwarded-For` (or RFC 7239 `Forwarded: for=`), but anyone can send that
//! header, so it is believed only from the proxies named here, and only as far as it was
//! written by them: the client is the right-most address that is not itself a trusted proxy.
//! Without `TRUSTED_PROXIES` the header is ignored.

use std::net::IpAddr;

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;

/// One trusted network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// `10.0.0.0/8`, `192.0.2.7`, `fd00::/8`, `::1`.
    pub fn parse(text: &str) -> Result<Network, String> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0-{max}"))?,
            None => max,
        };
        Ok(Network { addr, prefix })
    }

    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Network>);

impl TrustedProxies {
    /// A comma-separated list of addresses and networks.
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        list.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Network::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client's address: `peer` itself unless `peer` is a trusted proxy, else the
    /// right-most forwarded address that is not a trusted proxy (all of them trusted: the
    /// left-most). A header that does not parse is not believed.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let Some(chain) = forwarded_chain(headers) else {
            return peer;
        };
        let mut client = peer;
        for hop in chain.into_iter().rev() {
            client = hop;
            if !self.trusts(hop) {
                break;
            }
        }
        client
    }
}

/// The forwarded addresses, left (the original client) to right (the last proxy's peer), from
/// `X-Forwarded-For`, else `Forwarded`. `None` if absent or if any entry does not parse.
fn forwarded_chain(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let xff: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if !xff.is_empty() {
        return xff.iter().map(|hop| parse_hop(hop)).collect();
    }
    let fors: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.eq_ignore_ascii_case("for").then_some(v.trim())
            })
        })
        .collect();
    if fors.is_empty() {
        return None;
    }
    fors.iter().map(|hop| parse_hop(hop)).collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    hop.rsplit_once(':')?.0.parse().ok()
}

/// The client's address as handlers see it ([`crate::api::ClientIp`]), set by [`layer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The middleware: works out the client's address once per request.
pub async fn layer(
    State(proxies): State<Arc<TrustedProxies>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(peer) = peer {
        let client = proxies.client(peer, request.headers());
        request.extensions_mut().insert(ClientAddr(client));
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().unwrap());
        }
        h
    }

    #[test]
    fn networks_contain_what_their_prefix_says() {
        let net = Network::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped");
        assert!(Network::parse("::1").unwrap().contains(ip("::1")));
        assert!(Network::parse("fd00::/8").unwrap().contains(ip("fd12::5")));
        assert!(Network::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "proxy.internal", "10.0.0.0/x", ""] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_trusted_proxies_are_believed_and_only_as_far_as_they_wrote() {
        let trusted = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        let xff = headers(&[("x-forwarded-for", "198.51.100.9, 203.0.113.5")]);
        // From an untrusted peer the header is anyone's to forge.
        assert_eq!(trusted.client(ip("192.0.2.1"), &xff), ip("192.0.2.1"));
        // A client that forged a first entry: the proxy appended its real address.
        assert_eq!(trusted.client(ip("127.0.0.1"), &xff), ip("203.0.113.5"));
        // Two trusted proxies in a row.
        let chain = headers(&[("x-forwarded-for", "203.0.113.5, 10.0.0.2")]);
        assert_eq!(trusted.client(ip("10.0.0.3"), &chain), ip("203.0.113.5"));
        // Split over two headers, in order.
        let split = headers(&[
            ("x-forwarded-for", "198.51.100.9"),
            ("x-forwarded-for", "203.0.113.7"),
        ]);
        assert_eq!(trusted.client(ip("127.0.0.1"), &split), ip("203.0.113.7"));
        // RFC 7239.
        let fwd = headers(&[(
            "forwarded",
            r#"for=192.0.2.60;proto=http, for="[2001:db8::1]:4711""#,
        )]);
        assert_eq!(trusted.client(ip("127.0.0.1"), &fwd), ip("2001:db8::1"));
        // Garbage is not believed; no header: the proxy itself.
        let junk = headers(&[("x-forwarded-for", "unknown, 203.0.113.5")]);
        assert_eq!(trusted.client(ip("127.0.0.1"), &junk), ip("127.0.0.1"));
        assert_eq!(
            trusted.client(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
        // No trusted proxies: never believed.
        let none = TrustedProxies::default();
        assert_eq!(none.client(ip("127.0.0.1"), &xff), ip("127.0.0.1"));
    }
}
