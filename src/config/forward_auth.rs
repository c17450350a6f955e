//! The `forward_auth:` section: the forward-auth HTTP decision listener
//! (off unless `listen` is set), the proxies whose forwarding headers are
//! believed, the paths of its conventions, and whether the gateways forward
//! request bodies. The listener itself is `server::http`, what it serves
//! `adapters::forward_auth`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Deserializer};

/// The path of the `X-Forwarded-*` convention (Traefik, Caddy).
pub const FORWARDED_PATH: &str = "/forward-auth";
/// The path of the `X-Original-*` convention (nginx `auth_request`).
pub const ORIGINAL_PATH: &str = "/auth-request";

/// The `forward_auth:` section: the HTTP decision listener, off unless
/// `listen` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardAuthConfig {
    /// Where the listener accepts HTTP/1.1 and h2c; none: no listener.
    pub listen: Option<SocketAddr>,
    /// Peers (address blocks) whose `X-Forwarded-For` / `X-Real-IP` name
    /// the client; empty (the default): the client's address is the peer's
    /// and no such header is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Envoy's `path_prefix` (Gateway API's `path`): an auth request for
    /// `<path_prefix>/v1/x` asks about `/v1/x`, with its own method and
    /// body.
    pub path_prefix: String,
    /// Which conventions' gateways forward request bodies. nginx
    /// (`/auth-request`) never does.
    pub bodies_forwarded: BodiesForwarded,
}

impl Default for ForwardAuthConfig {
    fn default() -> Self {
        ForwardAuthConfig {
            listen: None,
            trusted_proxies: Vec::new(),
            path_prefix: "/ext-authz".into(),
            bodies_forwarded: BodiesForwarded::default(),
        }
    }
}

/// `forward_auth.bodies_forwarded`: whether the gateways calling a
/// convention's path send the request body. Where they do, a request
/// without one had none (and a route that needs one says so, 400); where
/// they do not (the default), a request without a body on a route that
/// checks bodies is refused (`body_not_forwarded`), never allowed
/// unvalidated.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BodiesForwarded {
    /// `/forward-auth`: Traefik with `forwardBody: true` (Caddy never).
    pub x_forwarded: bool,
    /// `<path_prefix>`: Envoy with `with_request_body`, Gateway API with
    /// `forwardBody`.
    pub request_line: bool,
}

impl ForwardAuthConfig {
    /// What is wrong with the section, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let p = &self.path_prefix;
        // A prefix covers itself and what lies below it, segment-wise.
        let under = |inner: &str, outer: &str| {
            inner == outer
                || inner
                    .strip_prefix(outer)
                    .is_some_and(|r| r.starts_with('/'))
        };
        let clashes = [FORWARDED_PATH, ORIGINAL_PATH]
            .into_iter()
            .find(|path| under(path, p) || under(p, path));
        if !p.starts_with('/') || p.len() < 2 || p.ends_with('/') {
            problems.push(format!(
                "forward_auth.path_prefix: '{p}' must start with '/', name at least one segment \
                 and not end with '/' (e.g. /ext-authz); set the same prefix in the gateway"
            ));
        } else if p.contains(['?', '#', ' ']) {
            problems.push(format!(
                "forward_auth.path_prefix: '{p}' must be a plain path"
            ));
        } else if let Some(path) = clashes {
            problems.push(format!(
                "forward_auth.path_prefix: '{p}' overlaps {path}, the path of another convention"
            ));
        }
        problems
    }
}

/// An address block, `10.0.0.0/8` or `::1/128` (a bare address is its own
/// block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in the block (IPv4-mapped IPv6 addresses count as
    /// their IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
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

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("'{text}' is not an address or CIDR block like 10.0.0.0/8"))?;
        let network = canonical(network);
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{text}': the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`, what a dual-stack socket reports)
/// as the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses_and_no_others() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.200.1.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::2")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("ten/8".parse::<Cidr>().is_err());
        assert_eq!(
            "::ffff:10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn the_default_is_off_and_valid() {
        let c = ForwardAuthConfig::default();
        assert!(c.listen.is_none() && c.trusted_proxies.is_empty());
        assert!(c.problems().is_empty());
    }

    #[test]
    fn a_prefix_must_be_a_path_of_its_own() {
        for bad in [
            "",
            "/",
            "ext-authz",
            "/ext-authz/",
            "/forward-auth",
            "/auth-request/x",
            "/a?b",
        ] {
            let c = ForwardAuthConfig {
                path_prefix: bad.into(),
                ..ForwardAuthConfig::default()
            };
            assert_eq!(c.problems().len(), 1, "{bad}");
        }
        for good in ["/authz/check", "/auth"] {
            let c = ForwardAuthConfig {
                path_prefix: good.into(),
                ..ForwardAuthConfig::default()
            };
            assert!(c.problems().is_empty(), "{good}");
        }
    }
}
