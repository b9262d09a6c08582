//! What the engine's owner can ask of it and what it reports back. The shapes follow
//! WireGuard's own configuration model (device, peers, allowed-IPs) so that the `wg` UAPI maps
//! onto them one to one, and the party daemon uses the same calls.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use crate::priority::PriorityPolicy;
use crate::stats::DropReason;

/// A Curve25519 key as WireGuard carries it: 32 raw bytes.
pub type Key = [u8; 32];

/// An allowed-IPs prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub cidr: u8,
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.cidr)
    }
}

/// How the engine is started.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Worker threads, each with its own poll, UDP socket and TUN queue. The TUN device must
    /// have been opened with at least this many queues.
    pub threads: usize,
    /// UDP port; 0 picks a free one.
    pub listen_port: u16,
    /// SO_MARK for outgoing datagrams; 0 for none.
    pub fwmark: u32,
    /// Which packets go out ahead of bulk traffic.
    pub priority: PriorityPolicy,
    /// UDP receive buffer per socket in bytes: bounds the standing queue under load (see
    /// [`crate::io::udp::DEFAULT_RECV_BUFFER`]).
    pub recv_buffer: usize,
    /// Keep each worker on its own CPUs at light load and steer small datagrams to the
    /// worker of the CPU they arrive on (see [`crate::io::cpu`]).
    pub cpu_locality: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            threads: default_threads(),
            listen_port: 0,
            fwmark: 0,
            priority: PriorityPolicy::default(),
            recv_buffer: crate::io::udp::DEFAULT_RECV_BUFFER,
            cpu_locality: true,
        }
    }
}

/// One worker per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Where a peer's datagrams go: straight to its address, or to a relay with the channel of
/// our session there (every datagram then carries the relay header, `wire::RELAY_DATA_MAGIC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub relay_channel: Option<u32>,
}

impl Endpoint {
    pub const fn direct(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            relay_channel: None,
        }
    }

    pub const fn relayed(relay: SocketAddr, channel: u32) -> Endpoint {
        Endpoint {
            addr: relay,
            relay_channel: Some(channel),
        }
    }

    /// Bytes in front of each WireGuard message sent here.
    pub const fn header_len(&self) -> usize {
        match self.relay_channel {
            Some(_) => crate::wire::RELAY_HEADER_LEN,
            None => 0,
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint::direct(addr)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.relay_channel {
            Some(channel) => write!(f, "relay {} channel {channel:08x}", self.addr),
            None => self.addr.fmt(f),
        }
    }
}

/// A batch of configuration changes applied as one step, like one UAPI `set` transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceUpdate {
    /// `Some(None)` clears the key.
    pub private_key: Option<Option<Key>>,
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
    /// Remove every peer before applying `peers`.
    pub replace_peers: bool,
    pub peers: Vec<PeerUpdate>,
}

/// Changes to one peer, created if it does not exist (unless `update_only`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUpdate {
    pub public_key: Key,
    pub remove: bool,
    pub update_only: bool,
    /// `Some(None)` clears the pre-shared key.
    pub preshared_key: Option<Option<Key>>,
    pub endpoint: Option<Endpoint>,
    /// Seconds; `Some(0)` turns persistent keepalive off.
    pub persistent_keepalive: Option<u16>,
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<Prefix>,
}

impl PeerUpdate {
    pub fn new(public_key: Key) -> Self {
        PeerUpdate {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

/// Why a configuration change was refused. Nothing of a refused update is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateError {
    /// The UDP port could not be bound (in use, or not permitted).
    PortUnavailable { port: u16, reason: String },
    /// A value is out of range (e.g. an allowed-IPs prefix longer than the address).
    Invalid(String),
    /// The engine has stopped.
    Stopped,
}

impl std::fmt::Display for UpdateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpdateError::PortUnavailable { port, reason } => {
                write!(f, "cannot listen on UDP port {port}: {reason}")
            }
            UpdateError::Invalid(msg) => write!(f, "invalid configuration: {msg}"),
            UpdateError::Stopped => write!(f, "the engine has stopped"),
        }
    }
}

impl std::error::Error for UpdateError {}

/// The device as `wg show` sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStatus {
    pub private_key: Option<Key>,
    pub public_key: Option<Key>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerStatus>,
    pub drops: Vec<(DropReason, u64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    pub public_key: Key,
    pub preshared_key: Option<Key>,
    pub endpoint: Option<Endpoint>,
    pub last_handshake: Option<SystemTime>,
    /// Bytes of WireGuard datagrams received from and sent to this peer.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// WireGuard datagrams received from and sent to this peer.
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<Prefix>,
}

/// What the engine tells its owner without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A WireGuard handshake with this peer completed (new session keys).
    HandshakeCompleted { public_key: Key },
    /// A datagram on the WireGuard port that is not WireGuard (STUN, the project's frames).
    /// One that came through a relay arrives without its relay header, `from` the relay
    /// channel.
    Datagram { from: Endpoint, data: Vec<u8> },
}
