//! The party's multicast reaching games that joined their group on another interface.
//!
//! A game joins its discovery group (Minecraft's 224.0.2.60, SSDP's 239.255.255.250) on "any"
//! interface, which the kernel resolves by route: the default route's interface, not the
//! tunnel. The kernel then drops that group's packets arriving from the party, since nobody
//! joined the group on the tunnel. While in a party the daemon joins the known discovery groups
//! on the tunnel itself. Linux delivers a group's packets to every socket bound to the port
//! that joined the group on any interface (`IP_MULTICAST_ALL`, on by default), so the game
//! hears the party too.

use std::io;
use std::net::{Ipv4Addr, UdpSocket};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

/// Joined whatever the profiles say: mDNS, SSDP and Minecraft's LAN worlds.
pub const DEFAULT_GROUPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(224, 0, 0, 251),
    Ipv4Addr::new(239, 255, 255, 250),
    Ipv4Addr::new(224, 0, 2, 60),
];

/// The groups, and while in a party the socket that holds their memberships on the tunnel.
pub struct TunnelGroups {
    groups: Vec<Ipv4Addr>,
    /// Never bound to a port, so it receives nothing; it exists for its memberships, which
    /// closing it drops.
    holder: Option<UdpSocket>,
}

impl TunnelGroups {
    /// `DEFAULT_GROUPS` and the IPv4 multicast groups among `extra`.
    pub fn new(extra: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        let mut groups: Vec<Ipv4Addr> = DEFAULT_GROUPS
            .into_iter()
            .chain(extra.into_iter().filter(Ipv4Addr::is_multicast))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        TunnelGroups {
            groups,
            holder: None,
        }
    }

    pub fn groups(&self) -> &[Ipv4Addr] {
        &self.groups
    }

    /// Joins every group on the interface with index `interface` (again, if already joined:
    /// the interface may be new).
    pub fn join(&mut self, interface: u32) -> io::Result<()> {
        self.holder = None;
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        for group in &self.groups {
            socket.join_multicast_v4_n(group, &InterfaceIndexOrAddress::Index(interface))?;
        }
        self.holder = Some(socket.into());
        Ok(())
    }

    pub fn leave(&mut self) {
        self.holder = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_groups_join_the_defaults_and_other_addresses_are_ignored() {
        let groups = TunnelGroups::new([
            Ipv4Addr::new(227, 2, 7, 7),
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 2, 60),
            Ipv4Addr::new(10, 0, 0, 1),
        ]);
        assert_eq!(
            groups.groups(),
            [
                Ipv4Addr::new(224, 0, 0, 251),
                Ipv4Addr::new(224, 0, 2, 60),
                Ipv4Addr::new(227, 2, 7, 7),
                Ipv4Addr::new(239, 255, 255, 250),
            ]
        );
    }
}
