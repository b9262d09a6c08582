//! Virtual IP addresses for the members of one party.
//!
//! Each party is its own virtual LAN, so every party draws from the whole subnet
//! (`10.66.0.0/16` by default). A peer's first choice is derived from its public key, so the
//! same peer lands on the same address across parties, restarts and servers, and so peers
//! without a server (local mode) pick the same way and only have to resolve collisions.
//! Once assigned, an address stays reserved for its peer after it leaves, so a player who
//! rejoins gets the address the others already know; reservations of departed peers are
//! reclaimed, oldest first, only when the subnet is otherwise full.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::peer_id::PeerId;

/// The default virtual subnet.
pub const DEFAULT_SUBNET: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(10, 66, 0, 0), 16) {
    Ok(net) => net,
    Err(_) => panic!("10.66.0.0/16 is a valid subnet"),
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamError {
    /// The subnet cannot hold a party: fewer than two usable addresses.
    SubnetTooSmall(Ipv4Net),
    /// Every usable address belongs to a current member.
    Exhausted { subnet: Ipv4Net, members: usize },
    /// A restored assignment collides with another peer's, or lies outside the subnet.
    Conflict {
        address: Ipv4Addr,
        holder: Option<PeerId>,
    },
}

impl fmt::Display for IpamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpamError::SubnetTooSmall(net) => {
                write!(
                    f,
                    "subnet {net} is too small for a party (use /30 or larger)"
                )
            }
            IpamError::Exhausted { subnet, members } => write!(
                f,
                "no free address in {subnet}: all are held by the party's {members} members"
            ),
            IpamError::Conflict {
                address,
                holder: Some(holder),
            } => write!(f, "address {address} is already held by {holder}"),
            IpamError::Conflict {
                address,
                holder: None,
            } => write!(f, "address {address} is not a usable address of the subnet"),
        }
    }
}

impl std::error::Error for IpamError {}

/// One party's addresses.
#[derive(Debug, Clone)]
pub struct AddressPool {
    subnet: Ipv4Net,
    by_peer: HashMap<PeerId, Reservation>,
    by_address: BTreeMap<Ipv4Addr, PeerId>,
    /// Orders departures, so the longest gone is reclaimed first.
    departures: u64,
}

#[derive(Debug, Clone, Copy)]
struct Reservation {
    address: Ipv4Addr,
    /// `None` while the peer is a member; when it left, otherwise.
    departed: Option<u64>,
}

impl AddressPool {
    pub fn new(subnet: Ipv4Net) -> Result<Self, IpamError> {
        let subnet = subnet.trunc();
        if usable_count(subnet) < 2 {
            return Err(IpamError::SubnetTooSmall(subnet));
        }
        Ok(AddressPool {
            subnet,
            by_peer: HashMap::new(),
            by_address: BTreeMap::new(),
            departures: 0,
        })
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The address of `peer` as a member: its reservation if it has one, else the first free
    /// address from its preferred one on.
    pub fn assign(&mut self, peer: PeerId) -> Result<Ipv4Addr, IpamError> {
        if let Some(r) = self.by_peer.get_mut(&peer) {
            r.departed = None;
            return Ok(r.address);
        }
        let address = match self.first_free(peer) {
            Some(address) => address,
            None => self.reclaim_oldest_departed().ok_or(IpamError::Exhausted {
                subnet: self.subnet,
                members: self.members(),
            })?,
        };
        self.reserve(peer, address, None);
        Ok(address)
    }

    /// Records an assignment made earlier (restored from storage), as a member or departed.
    pub fn restore(
        &mut self,
        peer: PeerId,
        address: Ipv4Addr,
        member: bool,
    ) -> Result<(), IpamError> {
        if !is_usable(self.subnet, address) {
            return Err(IpamError::Conflict {
                address,
                holder: None,
            });
        }
        match self.by_address.get(&address) {
            Some(&holder) if holder != peer => {
                return Err(IpamError::Conflict {
                    address,
                    holder: Some(holder),
                });
            }
            _ => {}
        }
        if let Some(old) = self.by_peer.remove(&peer) {
            self.by_address.remove(&old.address);
        }
        let departed = (!member).then(|| self.next_departure());
        self.reserve(peer, address, departed);
        Ok(())
    }

    /// The peer left: its address stays reserved for its return.
    pub fn release(&mut self, peer: PeerId) {
        let departure = self.next_departure();
        if let Some(r) = self.by_peer.get_mut(&peer) {
            r.departed.get_or_insert(departure);
        }
    }

    /// Drops the peer's reservation altogether.
    pub fn forget(&mut self, peer: PeerId) {
        if let Some(r) = self.by_peer.remove(&peer) {
            self.by_address.remove(&r.address);
        }
    }

    pub fn address_of(&self, peer: PeerId) -> Option<Ipv4Addr> {
        self.by_peer.get(&peer).map(|r| r.address)
    }

    pub fn holder_of(&self, address: Ipv4Addr) -> Option<PeerId> {
        self.by_address.get(&address).copied()
    }

    /// Every reservation, members' and departed peers'.
    pub fn reservations(&self) -> impl Iterator<Item = (PeerId, Ipv4Addr)> + '_ {
        self.by_peer.iter().map(|(&peer, r)| (peer, r.address))
    }

    /// Peers holding an address as members.
    pub fn members(&self) -> usize {
        self.by_peer
            .values()
            .filter(|r| r.departed.is_none())
            .count()
    }

    fn reserve(&mut self, peer: PeerId, address: Ipv4Addr, departed: Option<u64>) {
        self.by_peer.insert(peer, Reservation { address, departed });
        self.by_address.insert(address, peer);
    }

    fn next_departure(&mut self) -> u64 {
        self.departures += 1;
        self.departures
    }

    fn first_free(&self, peer: PeerId) -> Option<Ipv4Addr> {
        candidates(self.subnet, peer).find(|a| !self.by_address.contains_key(a))
    }

    /// Frees the address of the peer that left longest ago, if any.
    fn reclaim_oldest_departed(&mut self) -> Option<Ipv4Addr> {
        let (&peer, r) = self
            .by_peer
            .iter()
            .filter_map(|(p, r)| r.departed.map(|d| (p, r, d)))
            .min_by_key(|&(_, _, d)| d)
            .map(|(p, r, _)| (p, *r))?;
        self.forget(peer);
        Some(r.address)
    }
}

/// The addresses `peer` tries, in order: its preferred address (from its key), then every
/// other usable address of the subnet once, wrapping around. Local mode walks the same list
/// when the address it announced turns out to be taken.
pub fn candidates(subnet: Ipv4Net, peer: PeerId) -> impl Iterator<Item = Ipv4Addr> {
    let subnet = subnet.trunc();
    let base = u32::from(subnet.network());
    let size = 1u64 << (32 - u32::from(subnet.prefix_len()));
    let start = fnv1a(peer.as_bytes()) % size;
    (0..size)
        .map(move |i| Ipv4Addr::from(base + ((start + i) % size) as u32))
        .filter(move |&a| is_usable(subnet, a))
}

/// Not the network or broadcast address, and not `.0` or `.255`: old LAN games assume a /24
/// and treat those as network and broadcast addresses whatever the real prefix.
fn is_usable(subnet: Ipv4Net, address: Ipv4Addr) -> bool {
    let last = address.octets()[3];
    subnet.contains(&address)
        && address != subnet.network()
        && address != subnet.broadcast()
        && last != 0
        && last != 255
}

fn usable_count(subnet: Ipv4Net) -> u64 {
    subnet
        .hosts()
        .filter(|&a| is_usable(subnet, a))
        .take(2)
        .count() as u64
}

/// FNV-1a: stable across platforms and releases, unlike std's hasher, so a peer's preferred
/// address never changes.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_usable_distinct_and_stable() {
        let mut pool = AddressPool::new(DEFAULT_SUBNET).unwrap();
        let mut seen = std::collections::HashSet::new();
        for n in 0..200 {
            let a = pool.assign(peer(n)).unwrap();
            assert!(is_usable(DEFAULT_SUBNET, a), "{a}");
            assert!(seen.insert(a), "{a} handed out twice");
        }
        // The same key prefers the same address in any party.
        let preferred = candidates(DEFAULT_SUBNET, peer(42)).next().unwrap();
        for _ in 0..2 {
            let mut other = AddressPool::new(DEFAULT_SUBNET).unwrap();
            assert_eq!(other.assign(peer(42)), Ok(preferred));
        }
    }

    #[test]
    fn a_peer_that_rejoins_gets_its_address_back() {
        let mut pool = AddressPool::new(DEFAULT_SUBNET).unwrap();
        let first = pool.assign(peer(1)).unwrap();
        pool.release(peer(1));
        assert_eq!(pool.members(), 0);
        pool.assign(peer(2)).unwrap();
        assert_eq!(pool.assign(peer(1)), Ok(first));
        assert_eq!(pool.members(), 2);
    }

    #[test]
    fn collisions_move_to_the_next_free_address() {
        let subnet = net("10.66.7.0/29"); // .1 to .6 usable
        let mut pool = AddressPool::new(subnet).unwrap();
        let taken: Vec<_> = (0..6).map(|n| pool.assign(peer(n)).unwrap()).collect();
        let mut sorted = taken.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 6);
        assert_eq!(sorted.first(), Some(&Ipv4Addr::new(10, 66, 7, 1)));
        assert_eq!(sorted.last(), Some(&Ipv4Addr::new(10, 66, 7, 6)));
    }

    #[test]
    fn exhaustion_is_an_error_that_says_so_until_someone_leaves() {
        let subnet = net("10.66.7.0/30"); // .1 and .2
        let mut pool = AddressPool::new(subnet).unwrap();
        pool.assign(peer(1)).unwrap();
        let second = pool.assign(peer(2)).unwrap();
        let err = pool.assign(peer(3)).unwrap_err();
        assert_eq!(err, IpamError::Exhausted { subnet, members: 2 });
        assert!(err.to_string().contains("10.66.7.0/30"), "{err}");
        // A departed member's reservation is reclaimed, oldest first.
        pool.release(peer(2));
        assert_eq!(pool.assign(peer(3)), Ok(second));
        assert_eq!(pool.address_of(peer(2)), None);
    }

    #[test]
    fn oldest_departure_is_reclaimed_first() {
        let subnet = net("10.66.7.0/30");
        let mut pool = AddressPool::new(subnet).unwrap();
        let a = pool.assign(peer(1)).unwrap();
        pool.assign(peer(2)).unwrap();
        pool.release(peer(1));
        pool.release(peer(2));
        assert_eq!(pool.assign(peer(3)), Ok(a));
        assert!(pool.address_of(peer(2)).is_some());
    }

    #[test]
    fn restored_assignments_are_checked_for_conflicts() {
        let mut pool = AddressPool::new(DEFAULT_SUBNET).unwrap();
        let a = Ipv4Addr::new(10, 66, 1, 1);
        pool.restore(peer(1), a, true).unwrap();
        assert_eq!(
            pool.restore(peer(2), a, false),
            Err(IpamError::Conflict {
                address: a,
                holder: Some(peer(1))
            })
        );
        for bad in [
            Ipv4Addr::new(10, 67, 0, 1),
            Ipv4Addr::new(10, 66, 0, 0),
            Ipv4Addr::new(10, 66, 3, 255),
        ] {
            assert!(matches!(
                pool.restore(peer(2), bad, true),
                Err(IpamError::Conflict { holder: None, .. })
            ));
        }
        // Restoring the same peer elsewhere moves it.
        let b = Ipv4Addr::new(10, 66, 1, 2);
        pool.restore(peer(1), b, true).unwrap();
        assert_eq!(pool.holder_of(a), None);
        assert_eq!(pool.assign(peer(1)), Ok(b));
    }

    #[test]
    fn tiny_subnets_are_refused() {
        for s in ["10.66.0.0/31", "10.66.0.0/32", "10.66.0.255/32"] {
            assert!(matches!(
                AddressPool::new(net(s)),
                Err(IpamError::SubnetTooSmall(_))
            ));
        }
    }

    #[test]
    fn candidates_cover_the_subnet_once() {
        let subnet = net("10.66.0.0/23");
        let all: Vec<_> = candidates(subnet, peer(9)).collect();
        // 512 addresses less .0 and .255 of both /24s.
        assert_eq!(all.len(), 508);
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 508);
    }
}
