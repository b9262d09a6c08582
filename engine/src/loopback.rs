//! Two peer tables joined in memory: the packet path of two WireGuard peers with no sockets
//! and no TUN device, for benchmarks, tests and fuzzing of established sessions.

use std::net::SocketAddr;
use std::sync::Arc;

use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};

use crate::dataplane::{Inbound, Outbound, decapsulate, encapsulate, encapsulate_to, flush_queued};
use crate::peer::Peer;
use crate::table::{Identity, PeerTable};

/// One side: its table, the entry for the other side, and its underlay address.
pub struct Side {
    pub table: PeerTable,
    pub peer: Arc<Peer>,
    pub addr: SocketAddr,
    pub inner: [u8; 4],
}

/// `a` is 10.0.0.1 at 192.0.2.1:1000, `b` is 10.0.0.2 at 192.0.2.2:2000; each routes the
/// other's /32.
pub struct Loopback {
    pub a: Side,
    pub b: Side,
}

fn side(own: u8, other: u8) -> Side {
    let identity = Arc::new(Identity::new([own; 32]));
    let other_public = PublicKey::from(&StaticSecret::from([other; 32])).to_bytes();
    let tunn = Tunn::new(
        identity.secret.clone(),
        PublicKey::from(other_public),
        None,
        None,
        u32::from(other),
        Some(identity.rate_limiter.clone()),
    );
    let other_addr = SocketAddr::from(([192, 0, 2, other], 1000 * u16::from(other)));
    let peer = Arc::new(Peer::new(
        other_public,
        u32::from(other),
        Some(tunn),
        Some(other_addr.into()),
    ));
    let mut table = PeerTable::new(Some(identity));
    table.insert(peer.clone());
    table.route([10, 0, 0, other].into(), 32, peer.clone());
    Side {
        table,
        peer,
        addr: SocketAddr::from(([192, 0, 2, own], 1000 * u16::from(own))),
        inner: [10, 0, 0, own],
    }
}

impl Loopback {
    /// Two peers that have not handshaken yet.
    pub fn new() -> Self {
        Loopback {
            a: side(1, 2),
            b: side(2, 1),
        }
    }

    /// Two peers with a session: `a` sends a first packet, which triggers the handshake.
    ///
    /// # Panics
    /// If the handshake fails: that is a bug in the packet path, which this is for finding.
    pub fn connected() -> Self {
        let pair = Loopback::new();
        let first = pair.a.packet_to(&pair.b, 60);
        let mut to_b = pair.send(&pair.a, &first);
        while let Some(datagram) = to_b.pop() {
            let mut buf = vec![0u8; 2048];
            match decapsulate(&pair.b.table, pair.a.addr, &datagram, &mut buf) {
                Inbound::Reply { datagram, .. } => {
                    let response = datagram.to_vec();
                    to_b.extend(pair.receive_reply(&pair.a, &pair.b, &response));
                }
                Inbound::ToTun(_) | Inbound::Consumed => {}
                other => panic!("handshake failed at b: {other:?}"),
            }
        }
        pair
    }

    /// Encrypts `packet` at `from`; the datagrams that result (none while queued).
    ///
    /// # Panics
    /// If the packet is dropped (no route to the other side).
    pub fn send(&self, from: &Side, packet: &[u8]) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; packet.len() + 256];
        match encapsulate(&from.table, packet, &mut buf) {
            Outbound::Send { datagram, .. } => vec![datagram.to_vec()],
            Outbound::Queued => Vec::new(),
            Outbound::Fanout => from
                .table
                .fanout(crate::lan::ipv4_group(packet))
                .filter_map(|peer| match encapsulate_to(peer, packet, &mut buf) {
                    Outbound::Send { datagram, .. } => Some(datagram.to_vec()),
                    _ => None,
                })
                .collect(),
            Outbound::Dropped(reason) => panic!("packet dropped: {reason:?}"),
        }
    }

    /// `at` receives a handshake reply from `from`; returns what `at` sends back, including
    /// the packets its session queued.
    fn receive_reply(&self, at: &Side, from: &Side, reply: &[u8]) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        let mut out = Vec::new();
        if let Inbound::Reply { datagram, peer, .. } =
            decapsulate(&at.table, from.addr, reply, &mut buf)
        {
            out.push(datagram.to_vec());
            if let Some(peer) = peer {
                let mut buf = vec![0u8; 2048];
                while let Some((d, _)) = flush_queued(&peer, &mut buf) {
                    out.push(d.to_vec());
                }
            }
        }
        out
    }
}

impl Default for Loopback {
    fn default() -> Self {
        Self::new()
    }
}

impl Side {
    /// A UDP/IPv4 packet of `len` bytes from this side's inner address to `to`'s.
    pub fn packet_to(&self, to: &Side, len: usize) -> Vec<u8> {
        ipv4_packet(self.inner, to.inner, len)
    }
}

/// A minimal UDP/IPv4 packet of `len` bytes (at least 20), zero payload.
pub fn ipv4_packet(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let len = len.max(20);
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}
