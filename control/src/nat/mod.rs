//! What a peer's NAT lets through, as members tell each other: measured with STUN
//! ([`stun`]) and named by [`classify`].

pub mod probe;
pub mod stun;

use std::fmt;
use std::net::SocketAddr;
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

/// How a NAT filters what comes back to a mapping (RFC 4787 §5; measured with RFC 5780's
/// CHANGE-REQUEST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtering {
    /// Anyone may send to the mapping.
    EndpointIndependent,
    /// Only addresses we sent to.
    AddressDependent,
    /// Only address and port pairs we sent to.
    AddressAndPortDependent,
}

/// What STUN found out, kept alongside the verdict so `lanrage netcheck` can show the facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatFacts {
    /// The address our socket is bound to, as the system reports it.
    pub local: Vec<SocketAddr>,
    /// Per server answered: (server, our address as it saw us).
    pub mappings: Vec<(SocketAddr, SocketAddr)>,
    /// Known where a server supports RFC 5780.
    pub filtering: Option<Filtering>,
}

impl NatFacts {
    /// Whether the NAT gives each destination its own mapping (what breaks hole punching).
    pub fn mapping_varies(&self) -> bool {
        self.mappings.windows(2).any(|w| w[0].1 != w[1].1)
    }
}

/// Names the NAT from the facts. Without a filtering test the verdict for a stable mapping
/// is port-restricted: the strictest cone, which hole punching handles, so nothing is
/// promised that may not hold.
pub fn classify(facts: &NatFacts) -> NatType {
    let Some(&(_, first)) = facts.mappings.first() else {
        return NatType::UdpBlocked;
    };
    if facts.mapping_varies() {
        return NatType::Symmetric;
    }
    if facts.local.contains(&first) {
        return match facts.filtering {
            None | Some(Filtering::EndpointIndependent) => NatType::Open,
            // A firewall without translation still filters like a restricted NAT.
            Some(Filtering::AddressDependent) => NatType::Restricted,
            Some(Filtering::AddressAndPortDependent) => NatType::PortRestricted,
        };
    }
    match facts.filtering {
        Some(Filtering::EndpointIndependent) => NatType::FullCone,
        Some(Filtering::AddressDependent) => NatType::Restricted,
        Some(Filtering::AddressAndPortDependent) | None => NatType::PortRestricted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_facts_name_the_nat() {
        let servers = [addr("198.51.100.1:3478"), addr("198.51.100.9:3478")];
        let natted = |ports: [u16; 2], filtering| NatFacts {
            local: vec![addr("192.168.1.2:51820")],
            mappings: vec![
                (servers[0], SocketAddr::from(([203, 0, 113, 7], ports[0]))),
                (servers[1], SocketAddr::from(([203, 0, 113, 7], ports[1]))),
            ],
            filtering,
        };
        assert_eq!(classify(&NatFacts::default()), NatType::UdpBlocked);
        assert_eq!(classify(&natted([40000, 40001], None)), NatType::Symmetric);
        let cases = [
            (Some(Filtering::EndpointIndependent), NatType::FullCone),
            (Some(Filtering::AddressDependent), NatType::Restricted),
            (
                Some(Filtering::AddressAndPortDependent),
                NatType::PortRestricted,
            ),
            (None, NatType::PortRestricted),
        ];
        for (filtering, expected) in cases {
            assert_eq!(classify(&natted([40000, 40000], filtering)), expected);
        }
        let public = NatFacts {
            local: vec![addr("203.0.113.7:51820")],
            mappings: vec![(servers[0], addr("203.0.113.7:51820"))],
            filtering: None,
        };
        assert_eq!(classify(&public), NatType::Open);
        let firewalled = NatFacts {
            filtering: Some(Filtering::AddressAndPortDependent),
            ..public
        };
        assert_eq!(classify(&firewalled), NatType::PortRestricted);
    }

    #[test]
    fn names_round_trip() {
        for t in NatType::ALL {
            assert_eq!(t.name().parse(), Ok(t));
        }
        let err = "cone".parse::<NatType>().unwrap_err();
        assert!(err.to_string().contains("port-restricted"), "{err}");
    }
}
