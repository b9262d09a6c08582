//! The latency lane: which packets go out ahead of bulk traffic queued with them.
//!
//! A game's packets are small and few; a download's are large and many. Within each batch a
//! worker handles, small datagrams and packets to or from a game's ports are written out first,
//! so a game packet never waits behind a batch of bulk segments decrypting in front of it.
//! The policy is a setting (see [`PriorityPolicy`]); it reorders only within a batch and never
//! drops anything.

use crate::wire::TRANSPORT_OVERHEAD;

/// Which traffic takes the latency lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityPolicy {
    /// Inner packets of at most this many bytes are prioritised; 0 turns size-based
    /// priority off.
    pub small_packet_max: u16,
    /// UDP or TCP ports (source or destination) whose packets are prioritised, e.g. a
    /// detected game's.
    pub ports: Vec<u16>,
}

/// Game traffic (position updates, inputs, voice) rarely exceeds this; bulk TCP segments are
/// MTU-sized.
pub const DEFAULT_SMALL_PACKET_MAX: u16 = 256;

impl Default for PriorityPolicy {
    fn default() -> Self {
        PriorityPolicy {
            small_packet_max: DEFAULT_SMALL_PACKET_MAX,
            ports: Vec::new(),
        }
    }
}

impl PriorityPolicy {
    /// No latency lane: batches keep arrival order.
    pub fn off() -> Self {
        PriorityPolicy {
            small_packet_max: 0,
            ports: Vec::new(),
        }
    }

    pub fn is_off(&self) -> bool {
        self.small_packet_max == 0 && self.ports.is_empty()
    }

    /// Whether an encrypted datagram of this length carries a small packet — decidable
    /// before decryption, which is what lets small datagrams jump the decrypt queue.
    pub fn is_small_datagram(&self, datagram_len: usize) -> bool {
        self.small_packet_max > 0
            && datagram_len <= usize::from(self.small_packet_max) + TRANSPORT_OVERHEAD
    }

    /// Whether an inner IP packet takes the latency lane.
    pub fn is_priority_packet(&self, packet: &[u8]) -> bool {
        if self.small_packet_max > 0 && packet.len() <= usize::from(self.small_packet_max) {
            return true;
        }
        !self.ports.is_empty()
            && transport_ports(packet)
                .is_some_and(|(src, dst)| self.ports.contains(&src) || self.ports.contains(&dst))
    }
}

/// Source and destination port of a TCP or UDP packet over IPv4 or IPv6 (IPv6 without
/// extension headers; first fragments only).
fn transport_ports(packet: &[u8]) -> Option<(u16, u16)> {
    let (protocol, header_len) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let fragment_offset = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x1fff;
            if ihl < 20 || fragment_offset != 0 {
                return None;
            }
            (*packet.get(9)?, ihl)
        }
        6 => (*packet.get(6)?, 40),
        _ => return None,
    };
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    if protocol != TCP && protocol != UDP {
        return None;
    }
    let ports = packet.get(header_len..header_len + 4)?;
    Some((
        u16::from_be_bytes([ports[0], ports[1]]),
        u16::from_be_bytes([ports[2], ports[3]]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loopback::ipv4_packet;

    fn udp4(len: usize, src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut p = ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], len);
        p[20..22].copy_from_slice(&src_port.to_be_bytes());
        p[22..24].copy_from_slice(&dst_port.to_be_bytes());
        p
    }

    #[test]
    fn small_packets_and_game_ports_take_the_lane() {
        let policy = PriorityPolicy {
            small_packet_max: 256,
            ports: vec![27015],
        };
        assert!(policy.is_priority_packet(&udp4(100, 5000, 6000)));
        assert!(policy.is_priority_packet(&udp4(256, 5000, 6000)));
        assert!(!policy.is_priority_packet(&udp4(1400, 5000, 6000)));
        assert!(policy.is_priority_packet(&udp4(1400, 27015, 6000)));
        assert!(policy.is_priority_packet(&udp4(1400, 6000, 27015)));
        assert!(policy.is_small_datagram(256 + 32));
        assert!(!policy.is_small_datagram(257 + 32));
    }

    #[test]
    fn ports_read_only_where_they_are() {
        let policy = PriorityPolicy {
            small_packet_max: 0,
            ports: vec![27015],
        };
        let mut fragment = udp4(1400, 27015, 1);
        fragment[7] = 1; // not the first fragment: bytes 20.. are payload
        assert!(!policy.is_priority_packet(&fragment));
        let mut icmp = udp4(1400, 27015, 1);
        icmp[9] = 1;
        assert!(!policy.is_priority_packet(&icmp));
        let mut v6 = vec![0u8; 1400];
        v6[0] = 0x60;
        v6[6] = 17;
        v6[42..44].copy_from_slice(&27015u16.to_be_bytes());
        assert!(policy.is_priority_packet(&v6));
        for garbage in [&[][..], &[0x45], &[0x4f; 30], &[0x60; 41]] {
            assert!(!policy.is_priority_packet(garbage));
        }
        assert!(PriorityPolicy::off().is_off());
        assert!(!PriorityPolicy::off().is_priority_packet(&udp4(64, 1, 2)));
    }
}
