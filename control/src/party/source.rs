//! Which client a request comes from, for every per-source limit.
//!
//! Behind a TLS-terminating proxy every request's TCP peer is the proxy, so limits keyed by
//! it would put every user in one bucket: one code guesser would lock everyone out. The proxy
//! names the client in `X-Forwarded-For` or `Forwarded: for=`, but anyone can send those
//! headers, so they are read only when the TCP peer is a proxy the operator trusts
//! (`--trusted-proxy`), and then only up to the first hop that is not trusted: each trusted
//! proxy appends the address it saw, so the right-most untrusted entry is the one that no
//! client could forge. Everything to its left is the client's own claim and is ignored.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

/// Addresses and networks whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// One `--trusted-proxy` value: an address or a network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxy(pub IpNet);

impl FromStr for TrustedProxy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(TrustedProxy(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| TrustedProxy(IpNet::from(canonical(ip))))
            .map_err(|_| format!("not an IP address or CIDR network: {s:?}"))
    }
}

impl fmt::Display for TrustedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TrustedProxies {
    pub fn new(proxies: impl IntoIterator<Item = TrustedProxy>) -> Self {
        TrustedProxies(proxies.into_iter().map(|p| p.0).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind a request from TCP peer `peer`, given the values of its
    /// `X-Forwarded-For` and `Forwarded` header lines (in the order received).
    ///
    /// An untrusted peer is the client, whatever it says. From a trusted peer, each header
    /// present gives its right-most untrusted address (the left-most if every hop is trusted).
    /// A header that cannot be read that far, or two headers that disagree, mean that a
    /// client's own header reached us unchanged (a proxy sets one of them, not both
    /// differently): the request is then keyed by the proxy itself, never by a claim.
    pub fn client<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a str>,
        forwarded: impl IntoIterator<Item = &'a str>,
    ) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let xff: Vec<&str> = forwarded_for
            .into_iter()
            .flat_map(|line| line.split(','))
            .collect();
        let fwd: Vec<&str> = forwarded
            .into_iter()
            .flat_map(|line| line.split(','))
            .collect();
        let from_xff = (!xff.is_empty()).then(|| self.rightmost_untrusted(&xff, parse_xff));
        let from_fwd = (!fwd.is_empty()).then(|| self.rightmost_untrusted(&fwd, parse_forwarded));
        match (from_xff, from_fwd) {
            (Some(Some(a)), None) | (None, Some(Some(a))) => a,
            (Some(Some(a)), Some(Some(b))) if a == b => a,
            _ => peer,
        }
    }

    /// Walks `hops` (client first) from the right; `None` when a hop cannot be read before an
    /// untrusted one is found.
    fn rightmost_untrusted(
        &self,
        hops: &[&str],
        parse: fn(&str) -> Option<IpAddr>,
    ) -> Option<IpAddr> {
        let mut leftmost = None;
        for hop in hops.iter().rev() {
            let ip = canonical(parse(hop)?);
            if !self.contains(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
        leftmost
    }
}

/// IPv4 clients of a dual-stack socket appear as `::ffff:a.b.c.d`; they are IPv4 clients.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An `X-Forwarded-For` entry: an address, perhaps with a port or in brackets.
fn parse_xff(hop: &str) -> Option<IpAddr> {
    parse_node(hop.trim())
}

/// A `Forwarded` element (RFC 7239): its `for=` parameter, perhaps quoted.
fn parse_forwarded(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    parse_node(value)
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`. Obfuscated
/// identifiers and `unknown` are not addresses.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    node.strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .and_then(|n| n.parse::<IpAddr>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|p| p.parse::<TrustedProxy>().unwrap()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const NONE: [&str; 0] = [];

    #[test]
    fn untrusted_peers_headers_are_ignored() {
        let trusted = proxies(&["10.0.0.1"]);
        let attacker = ip("198.51.100.9");
        assert_eq!(
            trusted.client(attacker, ["203.0.113.1"], ["for=203.0.113.2"]),
            attacker
        );
        // And with no proxy configured at all, nobody's headers count.
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), ["203.0.113.1"], NONE),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_rightmost_untrusted_hop() {
        let trusted = proxies(&["10.0.0.0/24", "2001:db8:ffff::/48"]);
        let proxy = ip("10.0.0.1");
        // The client's own claim (left) is ignored; what the proxy saw (right) counts.
        assert_eq!(
            trusted.client(proxy, ["1.1.1.1, 203.0.113.7"], NONE),
            ip("203.0.113.7")
        );
        // Through two trusted proxies.
        assert_eq!(
            trusted.client(proxy, ["1.1.1.1", "203.0.113.7, 10.0.0.2"], NONE),
            ip("203.0.113.7")
        );
        // Ports and brackets, and IPv6.
        assert_eq!(
            trusted.client(proxy, ["[2001:db8::5]:4711"], NONE),
            ip("2001:db8::5")
        );
        assert_eq!(
            trusted.client(proxy, ["203.0.113.7:5555"], NONE),
            ip("203.0.113.7")
        );
        // Every hop trusted: the left-most is the client.
        assert_eq!(
            trusted.client(proxy, ["10.0.0.9, 10.0.0.2"], NONE),
            ip("10.0.0.9")
        );
        // No header: the proxy is the client.
        assert_eq!(trusted.client(proxy, NONE, NONE), proxy);
        // A dual-stack socket's view of the proxy is still the proxy.
        assert_eq!(
            trusted.client(ip("::ffff:10.0.0.1"), ["203.0.113.7"], NONE),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn forwarded_for_is_read_like_x_forwarded_for() {
        let trusted = proxies(&["10.0.0.1"]);
        let proxy = ip("10.0.0.1");
        assert_eq!(
            trusted.client(
                proxy,
                NONE,
                ["for=1.1.1.1, For=\"[2001:db8:cafe::17]:4711\";proto=https;by=10.0.0.1"]
            ),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            trusted.client(proxy, NONE, ["proto=http;for=203.0.113.60"]),
            ip("203.0.113.60")
        );
        // Both headers, agreeing.
        assert_eq!(
            trusted.client(proxy, ["203.0.113.60"], ["for=203.0.113.60"]),
            ip("203.0.113.60")
        );
    }

    #[test]
    fn unreadable_or_conflicting_headers_key_the_proxy() {
        let trusted = proxies(&["10.0.0.1"]);
        let proxy = ip("10.0.0.1");
        for bad in ["garbage", "203.0.113.7, unknown", "", " , "] {
            assert_eq!(trusted.client(proxy, [bad], NONE), proxy, "{bad:?}");
        }
        assert_eq!(trusted.client(proxy, NONE, ["for=_hidden"]), proxy);
        assert_eq!(trusted.client(proxy, NONE, ["proto=https"]), proxy);
        // A client's Forwarded header passed through by a proxy that sets only
        // X-Forwarded-For must not choose the key.
        assert_eq!(
            trusted.client(proxy, ["203.0.113.7"], ["for=198.51.100.1"]),
            proxy
        );
        // But garbage to the left of the proxy's own entry does not matter.
        assert_eq!(
            trusted.client(proxy, ["garbage, 203.0.113.7"], NONE),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn trusted_proxy_values_parse() {
        assert_eq!(
            "192.0.2.1".parse::<TrustedProxy>().unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert_eq!(
            "192.0.2.77/24".parse::<TrustedProxy>().unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            "2001:db8::/32".parse::<TrustedProxy>().unwrap().to_string(),
            "2001:db8::/32"
        );
        assert!("proxy.example".parse::<TrustedProxy>().is_err());
        assert!("10.0.0.0/33".parse::<TrustedProxy>().is_err());
    }
}
