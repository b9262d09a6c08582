//! Direct and relayed paths between members: authenticated probe frames ([`frame`]) and the
//! per-peer choice of the best candidate path ([`selector`]).

use std::fmt;
use std::net::SocketAddr;

pub mod frame;
pub mod selector;

/// Where a path leads: straight to a peer's address, or through a relay, on the channel
/// the relay knows this session by.
///
/// A relayed path's datagrams go to the relay's address behind an 8-byte header naming the
/// channel; whoever sends and receives adds and strips that header (the selector never sees
/// it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathAddr {
    /// The peer's address for a direct path; the relay's for a relayed one.
    pub addr: SocketAddr,
    /// The relay channel, for a relayed path.
    pub relay_channel: Option<u32>,
}

impl PathAddr {
    /// Straight to `addr`.
    pub const fn direct(addr: SocketAddr) -> PathAddr {
        PathAddr {
            addr,
            relay_channel: None,
        }
    }

    /// Through the relay at `relay_addr`, on `channel`.
    pub const fn relayed(relay_addr: SocketAddr, channel: u32) -> PathAddr {
        PathAddr {
            addr: relay_addr,
            relay_channel: Some(channel),
        }
    }

    pub const fn is_relayed(&self) -> bool {
        self.relay_channel.is_some()
    }
}

impl From<SocketAddr> for PathAddr {
    fn from(addr: SocketAddr) -> PathAddr {
        PathAddr::direct(addr)
    }
}

/// `198.51.100.7:51820` for a direct path; `relay 203.0.113.5:3479 channel 0000abcd` for a
/// relayed one.
impl fmt::Display for PathAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.relay_channel {
            None => write!(f, "{}", self.addr),
            Some(channel) => write!(f, "relay {} channel {channel:08x}", self.addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_addresses_display_and_convert() {
        let direct: SocketAddr = "198.51.100.7:51820".parse().unwrap();
        let relay: SocketAddr = "203.0.113.5:3479".parse().unwrap();
        assert_eq!(PathAddr::from(direct), PathAddr::direct(direct));
        assert!(!PathAddr::direct(direct).is_relayed());
        assert!(PathAddr::relayed(relay, 0xabcd).is_relayed());
        assert_eq!(PathAddr::direct(direct).to_string(), "198.51.100.7:51820");
        assert_eq!(
            PathAddr::relayed(relay, 0xabcd).to_string(),
            "relay 203.0.113.5:3479 channel 0000abcd"
        );
        let v6: SocketAddr = "[2001:db8::1]:3479".parse().unwrap();
        assert_eq!(
            PathAddr::relayed(v6, u32::MAX).to_string(),
            "relay [2001:db8::1]:3479 channel ffffffff"
        );
        // The same relay on another channel is another path.
        assert_ne!(PathAddr::relayed(relay, 1), PathAddr::relayed(relay, 2));
        assert_ne!(PathAddr::relayed(relay, 1), PathAddr::direct(relay));
    }
}
