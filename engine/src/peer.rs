//! A peer as the packet path sees it: its WireGuard session state and endpoint behind one lock,
//! and its traffic counters beside it.
//!
//! The lock is per peer, so workers contend only when they carry traffic for the same peer at
//! the same moment; the configuration (allowed-IPs, keepalive, pre-shared key) lives with the
//! engine's control loop, not here.

use std::sync::atomic::{AtomicU64, Ordering};

use boringtun::noise::Tunn;
use parking_lot::Mutex;

use crate::config::{Endpoint, Key};
use crate::lan;
use crate::rate_limit::Gcra;

pub struct Peer {
    pub public_key: Key,
    /// Our 24-bit index for this peer; WireGuard messages addressed to us carry it (shifted
    /// left by 8, the low byte numbering sessions) so we find the peer without trying keys.
    pub index: u32,
    pub state: Mutex<PeerState>,
    /// What we accept of this peer's LAN broadcasts (see `lan`).
    pub lan_in: Gcra,
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    tx_packets: AtomicU64,
}

pub struct PeerState {
    /// `None` while the device has no private key.
    pub tunn: Option<Tunn>,
    /// Where the peer was last heard from (roaming) or configured to be.
    pub endpoint: Option<Endpoint>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("public_key", &KeyPrefix(&self.public_key))
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// The first bytes of a public key, enough to tell peers apart in logs.
struct KeyPrefix<'a>(&'a Key);

impl std::fmt::Debug for KeyPrefix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

impl Peer {
    pub fn new(
        public_key: Key,
        index: u32,
        tunn: Option<Tunn>,
        endpoint: Option<Endpoint>,
    ) -> Self {
        Peer {
            public_key,
            index,
            state: Mutex::new(PeerState { tunn, endpoint }),
            lan_in: lan::inbound_budget(),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
        }
    }

    /// Counts one WireGuard datagram of `bytes` received from the peer.
    pub fn add_rx(&self, bytes: usize) {
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one WireGuard datagram of `bytes` sent to the peer.
    pub fn add_tx(&self, bytes: usize) {
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rx_packets(&self) -> u64 {
        self.rx_packets.load(Ordering::Relaxed)
    }

    pub fn tx_packets(&self) -> u64 {
        self.tx_packets.load(Ordering::Relaxed)
    }

    pub fn rx_bytes(&self) -> u64 {
        self.rx_bytes.load(Ordering::Relaxed)
    }

    pub fn tx_bytes(&self) -> u64 {
        self.tx_bytes.load(Ordering::Relaxed)
    }
}
