//! Where a request comes from: its TCP peer, and the client behind trusted proxies.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{request::Parts, HeaderMap},
};

/// The TCP peer of a request, when the server recorded it.
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| *addr),
        ))
    }
}

/// The client's address. When the peer is one of `TRUSTED_PROXIES`, the address its proxy chain
/// reports: `X-Forwarded-For` read from the right, skipping every hop that is itself a trusted
/// proxy, else `X-Real-IP`. Otherwise the peer itself, whatever headers it sent.
pub fn client_address(
    trusted: &[ipnet::IpNet],
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Option<IpAddr> {
    let peer = peer.map(|p| p.ip())?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(chain) = header("x-forwarded-for") {
        let hops: Vec<IpAddr> = chain
            .split(',')
            .filter_map(|hop| hop.trim().parse().ok())
            .collect();
        if let Some(client) = hops.iter().rev().find(|ip| !is_trusted(ip)) {
            return Some(*client);
        }
    }
    header("x-real-ip")
        .and_then(|v| v.trim().parse().ok())
        .or(Some(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_comes_from_trusted_proxies_only() {
        let trusted: Vec<ipnet::IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7, 10.1.2.3".parse().unwrap(),
        );
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        // Through the proxies: the first hop from the right that is not one of them.
        assert_eq!(
            client_address(&trusted, &headers, Some(proxy)),
            Some("198.51.100.7".parse().unwrap())
        );
        // A peer that is no proxy of ours cannot claim another address.
        assert_eq!(
            client_address(&trusted, &headers, Some(stranger)),
            Some(stranger.ip())
        );
        // No proxies trusted: the headers are ignored.
        assert_eq!(client_address(&[], &headers, Some(proxy)), Some(proxy.ip()));
        let mut real = HeaderMap::new();
        real.insert("x-real-ip", "198.51.100.8".parse().unwrap());
        assert_eq!(
            client_address(&trusted, &real, Some(proxy)),
            Some("198.51.100.8".parse().unwrap())
        );
    }
}
