use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::SystemTime;

use super::error::UapiError;
use super::parse::{parse_decimal, quote};

/// A Curve25519 key or a preshared key, as raw bytes (hex on the wire).
pub type Key = [u8; 32];

/// The two operations of protocol version 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Get,
    Set,
}

/// One request read from the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Report the whole device; answer with [`format_get_response`](super::format_get_response).
    Get,
    /// Change the device; answer with [`SUCCESS_RESPONSE`](super::SUCCESS_RESPONSE) or
    /// [`format_errno`](super::format_errno).
    Set(SetRequest),
}

impl Request {
    pub fn operation(&self) -> Operation {
        match self {
            Request::Get => Operation::Get,
            Request::Set(_) => Operation::Set,
        }
    }
}

/// A `set=1` request: device changes first, then peer changes, to be applied in that order.
///
/// `None` / `false` means "leave as is". The protocol applies lines one by one, so the engine
/// should apply [`peers`](Self::peers) in order: one public key may appear several times.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SetRequest {
    /// `Some([0; 32])` removes the private key (the device stops handshaking) rather than
    /// setting an all-zero key. Other keys are taken as sent; clamping is the X25519 code's job.
    pub private_key: Option<Key>,
    /// `Some(0)` asks for a fresh random port, as the kernel does.
    pub listen_port: Option<u16>,
    /// `Some(0)` clears the mark.
    pub fwmark: Option<u32>,
    /// Remove every existing peer before applying [`peers`](Self::peers).
    pub replace_peers: bool,
    pub peers: Vec<PeerChange>,
}

/// Changes to one peer, introduced by its `public_key=` line.
///
/// wireguard-go ignores a peer whose key is the device's own public key; so should the engine.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerChange {
    pub public_key: Key,
    /// Remove the peer; the other fields of this entry then have no effect.
    pub remove: bool,
    /// Change the peer only if it already exists; never create it.
    pub update_only: bool,
    /// `Some([0; 32])` removes the preshared key.
    pub preshared_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    /// `Some(0)` turns persistent keepalive off.
    pub persistent_keepalive_interval: Option<u16>,
    /// Drop the peer's current allowed IPs before adding [`allowed_ips`](Self::allowed_ips).
    /// Lines before `replace_allowed_ips=true` are already dropped by the parser.
    pub replace_allowed_ips: bool,
    /// Added in order; a prefix that belongs to another peer moves to this one.
    pub allowed_ips: Vec<AllowedIp>,
}

impl PeerChange {
    /// A change that only names the peer (creating it if it does not exist).
    pub fn new(public_key: Key) -> Self {
        Self {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive_interval: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

/// An allowed-IPs entry: an address prefix, always valid (`cidr` fits the family) and canonical.
///
/// Host bits are cleared on construction, as the kernel and wireguard-go do on insert, so
/// `10.0.0.1/24` and `10.0.0.0/24` are the same entry. Written `10.0.0.0/24`, `fd00::/64`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllowedIp {
    addr: IpAddr,
    cidr: u8,
}

impl AllowedIp {
    /// `None` when `cidr` exceeds 32 (IPv4) or 128 (IPv6).
    pub fn new(addr: IpAddr, cidr: u8) -> Option<Self> {
        let addr = match addr {
            IpAddr::V4(v4) => {
                let keep = u32::MAX.checked_shl(32u32.checked_sub(cidr.into())?);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep.unwrap_or(0)))
            }
            IpAddr::V6(v6) => {
                let keep = u128::MAX.checked_shl(128u32.checked_sub(cidr.into())?);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep.unwrap_or(0)))
            }
        };
        Some(Self { addr, cidr })
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn cidr(&self) -> u8 {
        self.cidr
    }
}

impl fmt::Display for AllowedIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.cidr)
    }
}

impl fmt::Debug for AllowedIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for AllowedIp {
    type Err = UapiError;

    /// `ADDR/CIDR` with a decimal prefix length, as `allowed_ip=` carries it. Zones (`%eth0`)
    /// and leading zeros are refused, like Go's `netip.ParsePrefix`.
    fn from_str(s: &str) -> Result<Self, UapiError> {
        let bad = || UapiError::invalid(format!("invalid allowed IP {}", quote(s)));
        let (addr, cidr) = s.split_once('/').ok_or_else(bad)?;
        if cidr.len() > 1 && cidr.starts_with('0') {
            return Err(bad());
        }
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let cidr: u8 = parse_decimal(cidr).ok_or_else(bad)?;
        Self::new(addr, cidr).ok_or_else(bad)
    }
}

/// Device state for a `get` response, as the engine reports it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `None` (or all zeros) when no key is set; then no `private_key=` line is sent.
    pub private_key: Option<Key>,
    /// 0 when not bound; then no `listen_port=` line is sent, as in wireguard-go.
    pub listen_port: u16,
    /// 0 when unset (omitted from the response).
    pub fwmark: u32,
    pub peers: Vec<PeerInfo>,
}

/// One peer's state for a `get` response.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub public_key: Key,
    pub preshared_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    /// Wall-clock time of the last completed handshake; `None` if there was none. Wall clock
    /// because that is what `wg` shows ("1 minute ago"); the caller converts from its monotonic
    /// clock.
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// 0 when off.
    pub persistent_keepalive_interval: u16,
    pub allowed_ips: Vec<AllowedIp>,
}

impl PeerInfo {
    /// A peer with nothing but its key: no endpoint, no handshake, no traffic.
    pub fn new(public_key: Key) -> Self {
        Self {
            public_key,
            preshared_key: None,
            endpoint: None,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive_interval: 0,
            allowed_ips: Vec::new(),
        }
    }
}

/// Public keys print as hex in `Debug`, which is how people compare them with `wg` output.
struct HexKey<'a>(&'a Key);

impl fmt::Debug for HexKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Secret keys never reach logs through `Debug`; only whether one is present (or is the
/// all-zero "remove" value) shows.
struct Secret<'a>(&'a Option<Key>);

impl fmt::Debug for Secret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("None"),
            Some(key) if key.iter().all(|&b| b == 0) => f.write_str("Some(<zero>)"),
            Some(_) => f.write_str("Some(<redacted>)"),
        }
    }
}

impl fmt::Debug for SetRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetRequest")
            .field("private_key", &Secret(&self.private_key))
            .field("listen_port", &self.listen_port)
            .field("fwmark", &self.fwmark)
            .field("replace_peers", &self.replace_peers)
            .field("peers", &self.peers)
            .finish()
    }
}

impl fmt::Debug for PeerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerChange")
            .field("public_key", &HexKey(&self.public_key))
            .field("remove", &self.remove)
            .field("update_only", &self.update_only)
            .field("preshared_key", &Secret(&self.preshared_key))
            .field("endpoint", &self.endpoint)
            .field(
                "persistent_keepalive_interval",
                &self.persistent_keepalive_interval,
            )
            .field("replace_allowed_ips", &self.replace_allowed_ips)
            .field("allowed_ips", &self.allowed_ips)
            .finish()
    }
}

impl fmt::Debug for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceInfo")
            .field("private_key", &Secret(&self.private_key))
            .field("listen_port", &self.listen_port)
            .field("fwmark", &self.fwmark)
            .field("peers", &self.peers)
            .finish()
    }
}

impl fmt::Debug for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerInfo")
            .field("public_key", &HexKey(&self.public_key))
            .field("preshared_key", &Secret(&self.preshared_key))
            .field("endpoint", &self.endpoint)
            .field("last_handshake", &self.last_handshake)
            .field("rx_bytes", &self.rx_bytes)
            .field("tx_bytes", &self.tx_bytes)
            .field(
                "persistent_keepalive_interval",
                &self.persistent_keepalive_interval,
            )
            .field("allowed_ips", &self.allowed_ips)
            .finish()
    }
}
