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

/// One IPv4 address of each interface but loopback and `own`: what multicast group
/// memberships and outgoing interfaces are chosen by (a second address on the same interface
/// would join the same group twice, which the kernel refuses).
pub fn ipv4_interfaces(own: &str) -> io::Result<Vec<Ipv4Addr>> {
    let interfaces = if_addrs::get_if_addrs()?
        .into_iter()
        .filter(|i| i.name != own && !i.is_loopback())
        .filter_map(|i| match i.ip() {
            IpAddr::V4(v4) => Some((i.name, v4)),
            IpAddr::V6(_) => None,
        });
    Ok(first_of_each(interfaces))
}

/// The first address of each interface name, in order.
fn first_of_each(addresses: impl IntoIterator<Item = (String, Ipv4Addr)>) -> Vec<Ipv4Addr> {
    let mut seen = std::collections::HashSet::new();
    addresses
        .into_iter()
        .filter(|(name, _)| seen.insert(name.clone()))
        .map(|(_, address)| address)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interface_with_two_addresses_is_one_interface() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let listed = [
            ("eth0".to_owned(), a("192.168.1.5")),
            ("eth0".to_owned(), a("192.168.1.6")),
            ("wlan0".to_owned(), a("10.0.0.5")),
            ("eth0".to_owned(), a("172.16.0.1")),
        ];
        assert_eq!(first_of_each(listed), [a("192.168.1.5"), a("10.0.0.5")]);
    }
}
