//! The engine's two devices: the TUN interface (one queue per worker) and the UDP sockets
//! (one per worker, sharing the port with SO_REUSEPORT).

pub mod cpu;
pub mod gro;
pub mod tun;
pub mod udp;
