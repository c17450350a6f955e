//! The client's address behind trusted proxies. The peer of a forward-auth
//! request is the gateway; the client stands further back, named in
//! `X-Forwarded-For` (or `X-Real-IP`). Those headers are believed only as
//! far as the hop that wrote them is a configured trusted proxy: the
//! address is the right-most one not written by a trusted proxy, so that
//! whatever a client puts in front of the list is never taken. With no
//! trusted proxies (the default) the address is the peer's.

use std::net::IpAddr;

use crate::config::forward_auth::{canonical, Cidr};

/// The client's address: `peer` itself unless it is a trusted proxy; then,
/// walking `x_forwarded_for` from the right (the hop the peer added), each
/// address for as long as the one that reported it is trusted. Without an
/// `X-Forwarded-For`, a trusted peer's `X-Real-IP`. An entry that is not an
/// address ends the walk at the trusted hop that wrote it.
pub fn client_address(
    peer: IpAddr,
    x_forwarded_for: Option<&str>,
    x_real_ip: Option<&str>,
    trusted: &[Cidr],
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut address = canonical(peer);
    if !is_trusted(address) {
        return address;
    }
    match x_forwarded_for {
        Some(list) => {
            for hop in list.rsplit(',') {
                if !is_trusted(address) {
                    break;
                }
                match parse_hop(hop) {
                    Some(ip) => address = ip,
                    None => break,
                }
            }
        }
        None => {
            if let Some(ip) = x_real_ip.and_then(parse_hop) {
                address = ip;
            }
        }
    }
    address
}

/// One `X-Forwarded-For` entry: an address, possibly with a port
/// (`1.2.3.4:5678`, `[::1]:80`), as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(addr) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        for xff in [Some("1.2.3.4"), Some("10.0.0.1, 1.2.3.4"), None] {
            assert_eq!(
                client_address(ip("192.0.2.7"), xff, Some("5.6.7.8"), &trusted),
                ip("192.0.2.7")
            );
        }
        // Nothing is trusted by default.
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("1.2.3.4"), None, &[]),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn the_walk_stops_at_the_first_hop_a_trusted_proxy_did_not_vouch_for() {
        let trusted = cidrs(&["10.0.0.0/8", "127.0.0.1"]);
        // client 203.0.113.9 -> proxy 10.1.1.1 -> gateway 127.0.0.1 -> us
        assert_eq!(
            client_address(
                ip("127.0.0.1"),
                Some("203.0.113.9, 10.1.1.1"),
                None,
                &trusted
            ),
            ip("203.0.113.9")
        );
        // A client that forges entries in front of its own: the forged
        // ones are never reached.
        assert_eq!(
            client_address(
                ip("127.0.0.1"),
                Some("10.9.9.9, 1.1.1.1, 203.0.113.9"),
                None,
                &trusted
            ),
            ip("203.0.113.9")
        );
        // Garbage ends the walk at the trusted hop that wrote it.
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("nonsense"), None, &trusted),
            ip("127.0.0.1")
        );
        // Everything trusted: the left-most address.
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("10.0.0.2, 10.0.0.1"), None, &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("[2001:db8::1]:443"), None, &trusted),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn x_real_ip_counts_only_from_a_trusted_peer_without_x_forwarded_for() {
        let trusted = cidrs(&["127.0.0.1"]);
        assert_eq!(
            client_address(ip("127.0.0.1"), None, Some("198.51.100.4"), &trusted),
            ip("198.51.100.4")
        );
        assert_eq!(
            client_address(
                ip("127.0.0.1"),
                Some("198.51.100.5"),
                Some("1.1.1.1"),
                &trusted
            ),
            ip("198.51.100.5")
        );
    }
}
