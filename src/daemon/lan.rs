//! This host's LAN interfaces: where members can reach us, and where local-party
//! announcements go.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// The IPv4 addresses of every interface but loopback and `own` (our tunnel).
pub fn ipv4_addresses(own: &str) -> io::Result<Vec<Ipv4Addr>> {
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .filter(|i| i.name != own && !i.is_loopback())
        .filter_map(|i| match i.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect())
}
