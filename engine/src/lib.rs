//! LANrage's userspace WireGuard dataplane.
//!
//! One worker per core moves packets between a multi-queue TUN device and SO_REUSEPORT UDP
//! sockets, encrypting with `boringtun`'s sans-IO `Tunn`, routing by longest-prefix match over
//! each peer's allowed-IPs. A control loop owns the configuration and WireGuard's timers and
//! talks to the engine's owner over crossbeam channels ([`Engine`], [`EngineHandle`],
//! [`Event`]). Non-WireGuard datagrams on the port (STUN, the project's frames) are handed to
//! the owner as events, so one port serves both.

mod allowed_ips;
mod config;
pub mod dataplane;
mod engine;
pub mod handshake_sources;
pub mod io;
pub mod lan;
pub mod loopback;
mod peer;
mod priority;
pub mod rate_limit;
mod receive_queue;
pub mod relay;
mod shared;
mod stats;
pub mod table;
pub mod wire;
mod worker;

pub use allowed_ips::AllowedIps;
pub use config::{
    DeviceStatus, DeviceUpdate, Endpoint, EngineConfig, Event, Key, PeerStatus, PeerUpdate, Prefix,
    UpdateError, default_threads,
};
pub use engine::{Engine, EngineHandle};
pub use peer::Peer;
pub use priority::{DEFAULT_SMALL_PACKET_MAX, PriorityPolicy};
pub use stats::{DropCounters, DropReason};
