//! What a control server may make of a member's tunnel. The server is trusted with who is in
//! a party, not with where the rest of the member's traffic goes: a party's subnet is private
//! (RFC 1918) or shared address space (RFC 6598) and no wider than a /16, and every member's
//! address lies inside it. A hostile or compromised server that offers `128.0.0.0/1`, or a
//! member at a public address, would otherwise route the player's internet traffic into the
//! tunnel.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::peer_id::PeerId;
use crate::server_api::PartyJson;

/// The widest party subnet a member takes: 65,534 members, far beyond any party.
pub const WIDEST_PREFIX: u8 = 16;
/// The widest a member takes when its user allows any subnet (`party_subnet_any`): never
/// the whole internet or half of it.
pub const WIDEST_ALLOWED_PREFIX: u8 = 8;

/// Where a party subnet may lie.
const PRIVATE_RANGES: [Ipv4Net; 4] = [
    // 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 (RFC 1918); 100.64.0.0/10 (RFC 6598).
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16),
    Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10),
];

/// Why a party, as a server described it, is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeError {
    /// Not an IPv4 prefix at all.
    Malformed(String),
    /// Outside the private and shared ranges.
    NotPrivate(Ipv4Net),
    /// Wider than [`WIDEST_PREFIX`].
    TooWide(Ipv4Net),
    /// Our own address is not a member address of the subnet (or we are not a member).
    OwnAddress(Option<Ipv4Addr>),
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeError::Malformed(s) => {
                write!(
                    f,
                    "the control server gave the party a malformed subnet {s:?}"
                )
            }
            ScopeError::NotPrivate(net) => write!(
                f,
                "the control server gave the party the subnet {net}, which is not a private \
                 range (10/8, 172.16/12, 192.168/16 or 100.64/10): refused, since it would \
                 route other traffic into the tunnel"
            ),
            ScopeError::TooWide(net) => write!(
                f,
                "the control server gave the party the subnet {net}, wider than this member takes \
                 (/{WIDEST_PREFIX} in the private ranges, /{WIDEST_ALLOWED_PREFIX} with the setting \
                 party_subnet_any): refused"
            ),
            ScopeError::OwnAddress(Some(ip)) => write!(
                f,
                "the control server gave us the address {ip}, outside the party's subnet: refused"
            ),
            ScopeError::OwnAddress(None) => {
                f.write_str("the control server's party does not list us as a member")
            }
        }
    }
}

impl std::error::Error for ScopeError {}

/// Which party subnets a member takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Allowed {
    /// Private or shared address space, no wider than [`WIDEST_PREFIX`].
    #[default]
    Private,
    /// Anything no wider than [`WIDEST_ALLOWED_PREFIX`]: the user said so (`party_subnet_any`).
    Any,
}

/// The party's subnet, if a member may route it into the tunnel.
pub fn subnet(party: &PartyJson, allowed: Allowed) -> Result<Ipv4Net, ScopeError> {
    let net: Ipv4Net = party
        .subnet
        .parse()
        .map_err(|_| ScopeError::Malformed(party.subnet.chars().take(64).collect()))?;
    let net = net.trunc();
    let widest = match allowed {
        Allowed::Private if !PRIVATE_RANGES.iter().any(|range| range.contains(&net)) => {
            return Err(ScopeError::NotPrivate(net));
        }
        Allowed::Private => WIDEST_PREFIX,
        Allowed::Any => WIDEST_ALLOWED_PREFIX,
    };
    if net.prefix_len() < widest {
        return Err(ScopeError::TooWide(net));
    }
    Ok(net)
}

/// Whether `ip` may be a member's address in `subnet`: inside it, and neither its network
/// nor its broadcast address.
pub fn is_member_address(subnet: Ipv4Net, ip: Ipv4Addr) -> bool {
    subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast()
}

/// Checks a party as a server answered a create, a join or a resume: its subnet, and our own
/// address in it. Other members outside the subnet are left out one by one (see
/// [`super::membership::Membership`]), not the whole party.
pub fn check(party: &PartyJson, me: PeerId, allowed: Allowed) -> Result<Ipv4Net, ScopeError> {
    let net = subnet(party, allowed)?;
    let mine = party
        .members
        .iter()
        .find(|m| m.peer == me)
        .map(|m| m.virtual_ip);
    match mine {
        Some(ip) if is_member_address(net, ip) => Ok(net),
        other => Err(ScopeError::OwnAddress(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::NatType;
    use crate::server_api::MemberJson;

    fn party(subnet: &str, my_ip: Ipv4Addr) -> PartyJson {
        PartyJson {
            id: 1,
            name: "p".into(),
            code: "0000-0000-0000-0000".into(),
            subnet: subnet.into(),
            members: vec![MemberJson {
                peer: PeerId([1; 32]),
                name: "me".into(),
                virtual_ip: my_ip,
                endpoints: vec![],
                nat: NatType::Unknown,
            }],
        }
    }

    #[test]
    fn only_private_subnets_no_wider_than_a_16_with_our_address_inside_are_taken() {
        let me = PeerId([1; 32]);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        for (subnet, mine) in [
            ("10.66.0.0/16", "10.66.0.7"),
            ("172.20.5.0/24", "172.20.5.9"),
            ("192.168.77.0/24", "192.168.77.1"),
            ("100.100.0.0/16", "100.100.3.3"),
        ] {
            let net = check(&party(subnet, ip(mine)), me, Allowed::Private);
            assert_eq!(net.map(|n| n.to_string()), Ok(subnet.to_string()));
        }
        for (subnet, mine, why) in [
            ("128.0.0.0/1", "128.0.0.1", "not a private range"),
            ("0.0.0.0/0", "10.0.0.1", "not a private range"),
            ("8.8.8.0/24", "8.8.8.9", "not a private range"),
            ("10.0.0.0/8", "10.0.0.9", "wider than this member takes"),
            (
                "172.16.0.0/15",
                "172.16.0.9",
                "wider than this member takes",
            ),
            ("10.66.0.0/16", "8.8.8.8", "outside the party's subnet"),
            ("10.66.0.0/16", "10.66.0.0", "outside the party's subnet"),
            (
                "10.66.0.0/16",
                "10.66.255.255",
                "outside the party's subnet",
            ),
            ("10.66.0.0", "10.66.0.1", "malformed"),
            ("lots", "10.66.0.1", "malformed"),
        ] {
            let err = check(&party(subnet, ip(mine)), me, Allowed::Private).expect_err(subnet);
            assert!(err.to_string().contains(why), "{subnet} {mine}: {err}");
        }
        let stranger = check(
            &party("10.66.0.0/16", ip("10.66.0.2")),
            PeerId([2; 32]),
            Allowed::Private,
        );
        assert_eq!(stranger, Err(ScopeError::OwnAddress(None)));
        // The user may allow other subnets, never one wider than a /8.
        let own = check(&party("8.8.8.0/24", ip("8.8.8.9")), me, Allowed::Any);
        assert_eq!(own.map(|n| n.to_string()), Ok("8.8.8.0/24".to_owned()));
        assert!(check(&party("10.0.0.0/8", ip("10.0.0.9")), me, Allowed::Any).is_ok());
        for wide in ["128.0.0.0/1", "0.0.0.0/0", "10.0.0.0/7"] {
            let err = check(&party(wide, ip("10.0.0.9")), me, Allowed::Any).expect_err(wide);
            assert!(matches!(err, ScopeError::TooWide(_)), "{wide}: {err}");
        }
    }
}
