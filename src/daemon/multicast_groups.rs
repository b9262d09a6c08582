//! The party's multicast reaching games that joined their group on another interface.
//!
//! A game joins its discovery group (Minecraft's 224.0.2.60, SSDP's 239.255.255.250) on "any"
//! interface, which the kernel resolves by route: the default route's interface, not the
//! tunnel. The kernel then drops that group's packets arriving from the party, since nobody
//! joined the group on the tunnel. While in a party the daemon joins the known discovery groups
//! on the tunnel itself. Linux delivers a group's packets to every socket bound to the port
//! that joined the group on any interface (`IP_MULTICAST_ALL`, on by default), so the game
//! hears the party too.
//!
//! The other way round, the groups this host's sockets listen to ([`listened`]) are announced
//! to the party, whose engines then send a group's packets only to members that listen.

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

    /// The groups whose memberships the daemon holds on the tunnel now.
    pub fn held(&self) -> &[Ipv4Addr] {
        if self.holder.is_some() {
            &self.groups
        } else {
            &[]
        }
    }

    pub fn leave(&mut self) {
        self.holder = None;
    }
}

/// Where the kernel lists every IPv4 multicast membership, by interface, with the number of
/// sockets holding it.
const IGMP_TABLE: &str = "/proc/net/igmp";

/// The IPv4 groups some socket on this host listens to, on any interface but loopback, less
/// the memberships the daemon holds on the tunnel (`tunnel`) for the groups in `own`: those
/// are for others' sockets, not a listener of their own. Sorted.
pub fn listened(tunnel: &str, own: &[Ipv4Addr]) -> io::Result<Vec<Ipv4Addr>> {
    Ok(parse_igmp(
        &std::fs::read_to_string(IGMP_TABLE)?,
        tunnel,
        own,
    ))
}

/// [`listened`] from the text of `/proc/net/igmp`: per interface a line `IDX NAME: COUNT
/// QUERIER`, then per group a tab-indented line `GROUP USERS TIMER REPORTER`, the group in
/// hex as the kernel holds it (network byte order read as a native integer).
fn parse_igmp(text: &str, tunnel: &str, own: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
    let mut groups = Vec::new();
    let mut device = "";
    for line in text.lines().skip(1) {
        let mut fields = line.split_whitespace();
        if !line.starts_with(char::is_whitespace) {
            let _index = fields.next();
            device = fields.next().unwrap_or("").trim_end_matches(':');
            continue;
        }
        let (Some(group), Some(users)) = (fields.next(), fields.next()) else {
            continue;
        };
        let (Ok(group), Ok(users)) = (u32::from_str_radix(group, 16), users.parse::<u32>()) else {
            continue;
        };
        let group = Ipv4Addr::from(group.to_ne_bytes());
        let held_for_others = u32::from(device == tunnel && own.contains(&group));
        if device != "lo" && group.is_multicast() && users > held_for_others {
            groups.push(group);
        }
    }
    groups.sort_unstable();
    groups.dedup();
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(group: Ipv4Addr) -> String {
        format!("{:08X}", u32::from_ne_bytes(group.octets()))
    }

    #[test]
    fn listened_groups_come_from_the_igmp_table_less_the_daemons_own() {
        let mdns = Ipv4Addr::new(224, 0, 0, 251);
        let minecraft = Ipv4Addr::new(224, 0, 2, 60);
        let ssdp = Ipv4Addr::new(239, 255, 255, 250);
        let game = Ipv4Addr::new(239, 1, 2, 3);
        let all = Ipv4Addr::new(224, 0, 0, 1);
        let text = format!(
            "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n\
             1\tlo        :     1      V3\n\t\t\t\t{loopback}     1 0:00000000\t\t0\n\
             4\teth0      :     2      V3\n\t\t\t\t{ssdp}     1 0:00000000\t\t0\n\
             \t\t\t\t{all}     1 0:00000000\t\t0\n\
             9\tlanrage-tun0:     3      V3\n\t\t\t\t{mdns}     1 0:00000000\t\t0\n\
             \t\t\t\t{minecraft}     2 0:00000000\t\t0\n\t\t\t\t{game}     1 0:00000000\t\t0\n\
             \t\t\t\tnonsense\n",
            loopback = hex(Ipv4Addr::new(224, 0, 0, 9)),
            ssdp = hex(ssdp),
            all = hex(all),
            mdns = hex(mdns),
            minecraft = hex(minecraft),
            game = hex(game),
        );
        // On the tunnel the daemon holds mDNS and Minecraft for others; a game holds
        // Minecraft too, and a group of its own. Loopback does not count.
        assert_eq!(
            parse_igmp(&text, "lanrage-tun0", &[mdns, minecraft, ssdp]),
            [all, minecraft, game, ssdp]
        );
        assert_eq!(
            hex(all),
            if cfg!(target_endian = "little") {
                "010000E0"
            } else {
                "E0000001"
            }
        );
    }

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
