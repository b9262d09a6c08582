//! Drop counters: every packet the engine refuses is counted under the reason it was refused,
//! so an operator can tell a hostile peer from a misconfiguration without a packet capture.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet or datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Datagram shaped like WireGuard (type byte, reserved zeros) with an impossible length.
    MalformedDatagram,
    /// WireGuard message for a receiver index or public key no configured peer has.
    UnknownPeer,
    /// Authentication, replay or handshake failure inside WireGuard.
    CryptoFailed,
    /// Decrypted packet whose inner source address is not in the sending peer's allowed-IPs.
    SpoofedSource,
    /// Packet from the TUN device that is not IPv4 or IPv6.
    InvalidTunPacket,
    /// Packet from the TUN device whose destination no peer's allowed-IPs cover.
    NoRoute,
    /// Packet for a peer whose endpoint is not known yet.
    NoEndpoint,
    /// No private key is configured, so no tunnel can be used.
    NoPrivateKey,
    /// The control thread did not keep up; non-WireGuard datagram discarded.
    ControlQueueFull,
    /// The UDP socket refused a datagram (buffer full for too long, or an error).
    UdpSendFailed,
    /// The TUN device refused a packet.
    TunWriteFailed,
    /// Bulk packets past the bound of a worker's queue (either direction), dropped oldest
    /// first: the tunnel's bottleneck queue, see `receive_queue`.
    QueueFull,
    /// A LAN broadcast or multicast over a member's budget, ours or another's (see `lan`).
    BroadcastRateLimited,
    /// A handshake initiation over its source address's budget (see `handshake_sources`).
    HandshakeRateLimited,
}

impl DropReason {
    pub const ALL: [DropReason; 14] = [
        DropReason::MalformedDatagram,
        DropReason::UnknownPeer,
        DropReason::CryptoFailed,
        DropReason::SpoofedSource,
        DropReason::InvalidTunPacket,
        DropReason::NoRoute,
        DropReason::NoEndpoint,
        DropReason::NoPrivateKey,
        DropReason::ControlQueueFull,
        DropReason::UdpSendFailed,
        DropReason::TunWriteFailed,
        DropReason::QueueFull,
        DropReason::BroadcastRateLimited,
        DropReason::HandshakeRateLimited,
    ];

    /// Stable snake_case name, for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::MalformedDatagram => "malformed_datagram",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::CryptoFailed => "crypto_failed",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::InvalidTunPacket => "invalid_tun_packet",
            DropReason::NoRoute => "no_route",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::NoPrivateKey => "no_private_key",
            DropReason::ControlQueueFull => "control_queue_full",
            DropReason::UdpSendFailed => "udp_send_failed",
            DropReason::TunWriteFailed => "tun_write_failed",
            DropReason::QueueFull => "queue_full",
            DropReason::BroadcastRateLimited => "broadcast_rate_limited",
            DropReason::HandshakeRateLimited => "handshake_rate_limited",
        }
    }
}

/// Engine-wide drop counters. Drops are rare on a healthy tunnel, so shared relaxed atomics
/// cost nothing on the fast path.
#[derive(Debug, Default)]
pub struct DropCounters {
    counts: [AtomicU64; DropReason::ALL.len()],
}

impl DropCounters {
    pub fn record(&self, reason: DropReason) {
        self.add(reason, 1);
    }

    pub fn add(&self, reason: DropReason, n: u64) {
        self.counts[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL.iter().map(|&r| (r, self.get(r))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason() {
        let c = DropCounters::default();
        c.record(DropReason::SpoofedSource);
        c.add(DropReason::NoRoute, 3);
        assert_eq!(c.get(DropReason::SpoofedSource), 1);
        assert_eq!(c.get(DropReason::NoRoute), 3);
        assert_eq!(c.get(DropReason::UnknownPeer), 0);
        let names: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), DropReason::ALL.len());
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
