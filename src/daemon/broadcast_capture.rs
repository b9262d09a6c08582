//! Games' LAN broadcasts into the party, on the host side (Linux policy routing).
//!
//! A game that sends to 255.255.255.255 or to a multicast group from a socket bound to no
//! address gets its route from the routing table: on most hosts the default route, so the
//! packet leaves by the physical interface and never reaches the tunnel. While a party is
//! active, policy rules send UDP to those destinations on discovery ports to a table of our own
//! whose one route is the tunnel, with the virtual IP as source; the engine then carries them
//! to every member. Sockets bound to an address keep their interface (the kernel picks it
//! before any rule), and every other port keeps its usual route, so the physical LAN still
//! sees everything else.
//!
//! `CapturePlan` is what should be installed (sans-IO, with the netlink messages it implies);
//! `BroadcastCapture` installs it over an rtnetlink socket and removes it on leave, on exit,
//! and — for a daemon that crashed — on the next start.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange};
use netlink_packet_route::{AddressFamily, IpProtocol, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Discovery ports captured whenever a party is active, whatever runs: Minecraft's LAN worlds
/// (224.0.2.60:4445), Warcraft III and other Blizzard LAN games (6112), Terraria (7777) and
/// Source-engine server browsers (27015). Detected games add their own.
pub const DEFAULT_PORTS: &[u16] = &[4445, 6112, 7777, 27015];

/// Rule priority: after any rule an administrator is likely to have (they count up from
/// small numbers) and just ahead of the main table's (32766).
pub const RULE_PRIORITY: u32 = 32_700;

/// The destinations captured: limited broadcast and all of IPv4 multicast.
const DESTINATIONS: [(Ipv4Addr, u8); 2] =
    [(Ipv4Addr::BROADCAST, 32), (Ipv4Addr::new(224, 0, 0, 0), 4)];

/// What should be installed while a party is active.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturePlan {
    /// The tunnel's interface index.
    pub interface: u32,
    /// The virtual IP, given as the source of captured packets.
    pub source: Ipv4Addr,
    /// Captured UDP destination ports as inclusive ranges, sorted and merged.
    pub port_ranges: Vec<(u16, u16)>,
}

impl CapturePlan {
    pub fn new(interface: u32, source: Ipv4Addr, ports: impl IntoIterator<Item = u16>) -> Self {
        let mut ports: Vec<u16> = ports.into_iter().filter(|&p| p != 0).collect();
        ports.sort_unstable();
        ports.dedup();
        let mut port_ranges: Vec<(u16, u16)> = Vec::new();
        for port in ports {
            match port_ranges.last_mut() {
                Some((_, end)) if end.checked_add(1) == Some(port) => *end = port,
                _ => port_ranges.push((port, port)),
            }
        }
        CapturePlan {
            interface,
            source,
            port_ranges,
        }
    }

    /// Our routing table: one per tunnel interface, so that two daemons on one host (in one
    /// network namespace) never remove each other's.
    pub fn table(&self) -> u32 {
        table_for(self.interface)
    }

    /// One rule per destination and port range.
    fn rules(&self) -> Vec<RuleMessage> {
        let mut rules = Vec::new();
        for &(destination, prefix_len) in &DESTINATIONS {
            for &(start, end) in &self.port_ranges {
                let mut rule = RuleMessage::default();
                rule.header.family = AddressFamily::Inet;
                rule.header.dst_len = prefix_len;
                rule.header.action = RuleAction::ToTable;
                rule.attributes = vec![
                    RuleAttribute::Destination(IpAddr::V4(destination)),
                    RuleAttribute::Priority(RULE_PRIORITY),
                    RuleAttribute::Table(self.table()),
                    RuleAttribute::IpProtocol(IpProtocol::Udp),
                    RuleAttribute::DestinationPortRange(RulePortRange { start, end }),
                ];
                rules.push(rule);
            }
        }
        rules
    }

    /// The table's one route: everything out of the tunnel, from the virtual IP.
    fn route(&self) -> RouteMessage {
        route_in(self.table(), Some((self.interface, self.source)))
    }
}

/// Our tables: "LR" in the high half, the tunnel's interface index below.
const TABLE_BASE: u32 = 0x4c52_0000;

fn table_for(interface: u32) -> u32 {
    TABLE_BASE | (interface & 0xffff)
}

/// The default route of `table`, with its interface and source when adding it.
fn route_in(table: u32, via: Option<(u32, Ipv4Addr)>) -> RouteMessage {
    let mut route = RouteMessage::default();
    route.header.address_family = AddressFamily::Inet;
    route.header.table = RouteHeader::RT_TABLE_UNSPEC;
    route.header.protocol = RouteProtocol::Static;
    route.header.scope = RouteScope::Link;
    route.header.kind = RouteType::Unicast;
    route.attributes.push(RouteAttribute::Table(table));
    if let Some((interface, source)) = via {
        route.attributes.push(RouteAttribute::Oif(interface));
        route
            .attributes
            .push(RouteAttribute::PrefSource(RouteAddress::Inet(source)));
    }
    route
}

/// Installs and removes a `CapturePlan` through rtnetlink.
pub struct BroadcastCapture {
    socket: Socket,
    sequence: u32,
    interface: u32,
    installed: Option<CapturePlan>,
    /// The last plan the kernel refused: not tried again until the plan changes, so that a
    /// kernel without port-range rules (before Linux 4.17) is warned about once.
    refused: Option<CapturePlan>,
}

impl BroadcastCapture {
    /// Opens rtnetlink for the tunnel with index `interface`, and removes what a previous
    /// daemon on this interface may have left after a crash.
    pub fn open(interface: u32) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let mut capture = BroadcastCapture {
            socket,
            sequence: 0,
            interface,
            installed: None,
            refused: None,
        };
        capture.clear(true)?;
        Ok(capture)
    }

    /// Makes `plan` the installed one (`None`: nothing captured); says whether anything
    /// changed. Unchanged plans cost nothing. On an error nothing of ours is left
    /// half-installed.
    pub fn apply(&mut self, plan: Option<CapturePlan>) -> io::Result<bool> {
        if plan == self.installed || (plan.is_some() && plan == self.refused) {
            return Ok(false);
        }
        self.clear(false)?;
        let Some(plan) = plan else {
            return Ok(true);
        };
        let mut install = || -> io::Result<()> {
            self.request(
                RouteNetlinkMessage::NewRoute(plan.route()),
                NLM_F_CREATE | NLM_F_EXCL,
            )?;
            for rule in plan.rules() {
                self.request(
                    RouteNetlinkMessage::NewRule(rule),
                    NLM_F_CREATE | NLM_F_EXCL,
                )?;
            }
            Ok(())
        };
        match install() {
            Ok(()) => {
                self.installed = Some(plan);
                self.refused = None;
                Ok(true)
            }
            Err(e) => {
                let _ = self.clear(false);
                self.refused = Some(plan);
                Err(e)
            }
        }
    }

    /// Removes every rule pointing at our table and the table's route; with `orphans`, also
    /// the rules of tables whose tunnel is gone (left by a daemon that crashed: its interface
    /// went with it, and the next one gets another index).
    fn clear(&mut self, orphans: bool) -> io::Result<()> {
        let table = table_for(self.interface);
        self.installed = None;
        let live: Vec<u32> = if orphans {
            self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?
                .into_iter()
                .filter_map(|m| match m {
                    RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
                    _ => None,
                })
                .collect()
        } else {
            Vec::new()
        };
        let remove = |t: u32| {
            t == table
                || (orphans
                    && t & 0xffff_0000 == TABLE_BASE
                    && !live.iter().any(|&i| table_for(i) == t))
        };
        let mut dump = RuleMessage::default();
        dump.header.family = AddressFamily::Inet;
        let stale: Vec<RuleMessage> = self
            .dump(RouteNetlinkMessage::GetRule(dump))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(rule)
                    if rule.attributes.iter().any(|a| match a {
                        RuleAttribute::Table(t) => remove(*t),
                        _ => false,
                    }) =>
                {
                    Some(rule)
                }
                _ => None,
            })
            .collect();
        for rule in stale {
            self.request(RouteNetlinkMessage::DelRule(rule), 0)?;
        }
        match self.request(RouteNetlinkMessage::DelRoute(route_in(table, None)), 0) {
            // No route there: nothing was installed.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other,
        }
    }

    fn message(&mut self, payload: RouteNetlinkMessage, flags: u16) -> (u32, Vec<u8>) {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        message.finalize();
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);
        (self.sequence, buf)
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, payload: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let (sequence, buf) = self.message(payload, flags | NLM_F_ACK);
        self.socket.send(&buf, 0)?;
        self.receive(sequence, |payload| match payload {
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(true),
                Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
            },
            _ => Ok(false),
        })
    }

    /// Sends a dump request and collects the answers.
    fn dump(&mut self, payload: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let (sequence, buf) = self.message(payload, NLM_F_DUMP);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        self.receive(sequence, |payload| match payload {
            NetlinkPayload::InnerMessage(m) => {
                out.push(m);
                Ok(false)
            }
            NetlinkPayload::Done(_) => Ok(true),
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(true),
                Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
            },
            _ => Ok(false),
        })?;
        Ok(out)
    }

    /// Reads datagrams, handing each message of `sequence` to `each`, until it says the
    /// exchange is over.
    fn receive(
        &mut self,
        sequence: u32,
        mut each: impl FnMut(NetlinkPayload<RouteNetlinkMessage>) -> io::Result<bool>,
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            self.socket.recv(&mut buf, 0)?;
            let mut at = 0;
            while at < buf.len() {
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = message.header.length as usize;
                if len == 0 {
                    break;
                }
                at += len.next_multiple_of(4);
                if message.header.sequence_number == sequence && each(message.payload)? {
                    return Ok(());
                }
            }
        }
    }
}

impl Drop for BroadcastCapture {
    fn drop(&mut self) {
        if self.installed.is_some() {
            if let Err(e) = self.clear(false) {
                tracing::warn!(error = %e, "cannot remove the broadcast capture rules");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_become_sorted_merged_ranges() {
        let plan = CapturePlan::new(
            7,
            Ipv4Addr::new(10, 66, 0, 2),
            [27015, 6112, 4445, 6113, 6114, 0, 27015, 65535, 65534],
        );
        assert_eq!(
            plan.port_ranges,
            [(4445, 4445), (6112, 6114), (27015, 27015), (65534, 65535)]
        );
    }

    #[test]
    fn rules_cover_limited_broadcast_and_multicast_per_range() {
        let plan = CapturePlan::new(7, Ipv4Addr::new(10, 66, 0, 2), [6112, 4445]);
        let rules = plan.rules();
        assert_eq!(rules.len(), 4);
        let rule = &rules[3];
        assert_eq!(rule.header.dst_len, 4);
        assert_eq!(rule.header.action, RuleAction::ToTable);
        assert!(
            rule.attributes
                .contains(&RuleAttribute::Destination(IpAddr::V4(Ipv4Addr::new(
                    224, 0, 0, 0
                ))))
        );
        assert!(rule.attributes.contains(&RuleAttribute::Table(0x4c52_0007)));
        assert!(
            rule.attributes
                .contains(&RuleAttribute::IpProtocol(IpProtocol::Udp))
        );
        assert!(
            rule.attributes
                .contains(&RuleAttribute::DestinationPortRange(RulePortRange {
                    start: 6112,
                    end: 6112
                }))
        );
    }

    #[test]
    fn the_route_sends_everything_out_of_the_tunnel_from_the_virtual_ip() {
        let plan = CapturePlan::new(9, Ipv4Addr::new(10, 66, 0, 2), [6112]);
        let route = plan.route();
        assert_eq!(route.header.destination_prefix_length, 0);
        assert!(route.attributes.contains(&RouteAttribute::Oif(9)));
        assert!(
            route
                .attributes
                .contains(&RouteAttribute::PrefSource(RouteAddress::Inet(
                    Ipv4Addr::new(10, 66, 0, 2)
                )))
        );
        assert!(
            route
                .attributes
                .contains(&RouteAttribute::Table(0x4c52_0009))
        );
    }
}
