//! What a peer's NAT lets through, as members tell each other (measured by STUN).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NatType {
    /// Not measured yet.
    #[default]
    Unknown,
    /// A public address: no NAT, no filtering.
    Open,
    /// One mapping for all destinations; anyone may send to it.
    FullCone,
    /// One mapping; only addresses the peer sent to may reply.
    Restricted,
    /// One mapping; only address and port pairs the peer sent to may reply.
    PortRestricted,
    /// A new mapping per destination: hole punching rarely works, relays do.
    Symmetric,
    /// No UDP gets out.
    UdpBlocked,
}

impl NatType {
    pub const ALL: [NatType; 7] = [
        NatType::Unknown,
        NatType::Open,
        NatType::FullCone,
        NatType::Restricted,
        NatType::PortRestricted,
        NatType::Symmetric,
        NatType::UdpBlocked,
    ];

    /// The name used on the wire and in output.
    pub fn name(self) -> &'static str {
        match self {
            NatType::Unknown => "unknown",
            NatType::Open => "open",
            NatType::FullCone => "full-cone",
            NatType::Restricted => "restricted",
            NatType::PortRestricted => "port-restricted",
            NatType::Symmetric => "symmetric",
            NatType::UdpBlocked => "udp-blocked",
        }
    }
}

impl fmt::Display for NatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownNatType(pub String);

impl fmt::Display for UnknownNatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown NAT type {:?} (expected one of: ", self.0)?;
        for (i, t) in NatType::ALL.iter().enumerate() {
            write!(f, "{}{t}", if i == 0 { "" } else { ", " })?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for UnknownNatType {}

impl FromStr for NatType {
    type Err = UnknownNatType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NatType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownNatType(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in NatType::ALL {
            assert_eq!(t.name().parse(), Ok(t));
        }
        let err = "cone".parse::<NatType>().unwrap_err();
        assert!(err.to_string().contains("port-restricted"), "{err}");
    }
}
