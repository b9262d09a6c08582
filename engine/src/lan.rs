//! The party as one LAN: packets a game sends to everyone on the LAN reach every member.
//!
//! A LAN game finds others by broadcast (to 255.255.255.255 or the subnet's broadcast
//! address) or multicast (224.0.0.0/4, ff00::/8). No member's allowed-IPs cover those, so
//! WireGuard alone drops them. With a LAN scope set, the engine sends each such packet read
//! from the TUN to every member as an ordinary WireGuard packet, and a receiving member writes
//! it to its own TUN for its games, unchanged: inner source and destination are the same on
//! every member of one virtual subnet.
//!
//! Loops cannot form: a packet written to the TUN is never read back from it (the kernel does
//! not route broadcasts, nor multicast without a multicast router), and WireGuard's replay
//! window drops a copy that arrives twice by two paths. Storms are bounded twice, since every
//! copy costs every member: each member limits what it sends ([`Lan::admit_outbound`]) and
//! what it accepts from each other member (a hostile member skips its own limit), so a flood
//! cannot crowd out unicast. What is refused is counted (`broadcast_rate_limited`).
//!
//! Multicast goes only to the members that listen to its group, where the owner knows
//! ([`Groups`], set per peer); a member whose groups are not known gets every group, so not
//! knowing never loses a packet. Broadcasts and IPv6 multicast go to everyone.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::rate_limit::{Gcra, now_ns};
use crate::wire::IpHeader;

/// Broadcast and multicast bytes per second each member may send, and is accepted from each
/// member: discovery is a few packets per second (a server announcing itself, a query), a
/// storm is thousands. 2 Mbit/s carries any game's discovery and a party's mDNS many times
/// over.
pub const RATE_PER_MEMBER: u64 = 256 << 10;

/// Bytes a member may send at once before the rate applies: a burst of queries at start-up
/// (a game asking every discovery port, mDNS probing) passes.
pub const BURST: u64 = 64 << 10;

/// Which packets are the LAN's broadcasts: the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LanScope {
    /// The party's virtual subnet; its broadcast address reaches every member.
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl LanScope {
    /// The subnet `address/prefix_len` is in (prefix lengths above 32 read as 32).
    pub fn containing(address: Ipv4Addr, prefix_len: u8) -> Self {
        let prefix_len = prefix_len.min(32);
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0);
        LanScope {
            network: Ipv4Addr::from(u32::from(address) & mask),
            prefix_len,
        }
    }

    /// The subnet's directed broadcast address (none for /31 and /32, which have none).
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        if self.prefix_len >= 31 {
            return None;
        }
        let host_bits = u32::MAX >> self.prefix_len;
        Some(Ipv4Addr::from(u32::from(self.network) | host_bits))
    }

    /// Whether a packet to this destination goes to every member.
    pub fn is_fanout(&self, header: &IpHeader) -> bool {
        match header {
            IpHeader::V4 { dst, .. } => {
                let dst = Ipv4Addr::from(*dst);
                dst.is_broadcast() || dst.is_multicast() || Some(dst) == self.broadcast()
            }
            IpHeader::V6 { dst, .. } => dst[0] == 0xff,
        }
    }
}

/// The IPv4 multicast groups a member's host listens to, as its owner last heard.
pub type Groups = Arc<[Ipv4Addr]>;

/// The IPv4 multicast group `packet` is addressed to; `None` for anything else (broadcasts
/// and IPv6 multicast go to every member).
pub fn ipv4_group(packet: &[u8]) -> Option<Ipv4Addr> {
    match IpHeader::parse(packet)? {
        IpHeader::V4 { dst, .. } => Some(Ipv4Addr::from(dst)).filter(Ipv4Addr::is_multicast),
        IpHeader::V6 { .. } => None,
    }
}

/// The LAN scope as the packet path uses it, with this member's own broadcast budget. Kept
/// across peer-table snapshots so a reconfiguration refills nothing.
#[derive(Debug)]
pub struct Lan {
    pub scope: LanScope,
    outbound: Gcra,
}

impl Lan {
    pub fn new(scope: LanScope) -> Self {
        Lan {
            scope,
            outbound: Gcra::new(RATE_PER_MEMBER, BURST),
        }
    }

    /// Whether this member may send a broadcast of `bytes` now (charged once, however many
    /// members it goes to).
    pub fn admit_outbound(&self, bytes: usize) -> bool {
        self.outbound.admit(now_ns(), bytes)
    }
}

/// A member's budget for the broadcasts we accept from it.
pub fn inbound_budget() -> Gcra {
    Gcra::new(RATE_PER_MEMBER, BURST)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(dst: [u8; 4]) -> IpHeader {
        IpHeader::V4 {
            src: [100, 64, 0, 1],
            dst,
        }
    }

    #[test]
    fn broadcasts_and_multicast_go_to_everyone() {
        let scope = LanScope {
            network: Ipv4Addr::new(100, 64, 0, 0),
            prefix_len: 24,
        };
        assert_eq!(scope.broadcast(), Some(Ipv4Addr::new(100, 64, 0, 255)));
        for dst in [
            [255, 255, 255, 255],
            [100, 64, 0, 255],
            [224, 0, 2, 60],
            [224, 0, 0, 251],
            [239, 255, 255, 250],
        ] {
            assert!(scope.is_fanout(&v4(dst)), "{dst:?}");
        }
        for dst in [
            [100, 64, 0, 2],
            [100, 64, 1, 255],
            [10, 0, 0, 255],
            [240, 0, 0, 1],
        ] {
            assert!(!scope.is_fanout(&v4(dst)), "{dst:?}");
        }
        let mut mdns6 = [0u8; 16];
        mdns6[0] = 0xff;
        mdns6[1] = 0x02;
        mdns6[15] = 0xfb;
        assert!(scope.is_fanout(&IpHeader::V6 {
            src: [0; 16],
            dst: mdns6
        }));
        let mut unicast6 = [0u8; 16];
        unicast6[0] = 0xfd;
        assert!(!scope.is_fanout(&IpHeader::V6 {
            src: [0; 16],
            dst: unicast6
        }));
    }

    #[test]
    fn tiny_subnets_have_no_broadcast_address() {
        for prefix_len in [31, 32] {
            let scope = LanScope {
                network: Ipv4Addr::new(100, 64, 0, 0),
                prefix_len,
            };
            assert_eq!(scope.broadcast(), None);
            assert!(!scope.is_fanout(&v4([100, 64, 0, 1])));
            assert!(scope.is_fanout(&v4([255, 255, 255, 255])));
        }
        let all = LanScope::containing(Ipv4Addr::new(100, 64, 3, 7), 0);
        assert_eq!(all.network, Ipv4Addr::UNSPECIFIED);
        assert_eq!(all.broadcast(), Some(Ipv4Addr::BROADCAST));
        let party = LanScope::containing(Ipv4Addr::new(100, 64, 3, 7), 22);
        assert_eq!(party.network, Ipv4Addr::new(100, 64, 0, 0));
        assert_eq!(party.broadcast(), Some(Ipv4Addr::new(100, 64, 3, 255)));
        let host = LanScope::containing(Ipv4Addr::new(100, 64, 3, 7), 40);
        assert_eq!(
            (host.network, host.prefix_len),
            (Ipv4Addr::new(100, 64, 3, 7), 32)
        );
    }

    #[test]
    fn a_storm_is_cut_after_the_burst() {
        let lan = Lan::new(LanScope {
            network: Ipv4Addr::new(100, 64, 0, 0),
            prefix_len: 24,
        });
        let admitted = (0..10_000).filter(|_| lan.admit_outbound(500)).count();
        // The burst, and what the rate refills while the loop runs (well under a second).
        assert!(admitted >= (BURST / 500) as usize, "{admitted}");
        assert!(admitted < 2 * (BURST / 500) as usize + 1_100, "{admitted}");
    }
}
