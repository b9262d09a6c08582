//! The immutable snapshot of peers that workers read on every packet.
//!
//! The control loop builds a new table on each configuration change and publishes it with one
//! atomic pointer swap; workers load it once per batch. Reading it takes no lock shared by all
//! workers, and a reconfiguration never stalls the packet path.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};

use crate::allowed_ips::AllowedIps;
use crate::config::Key;
use crate::handshake_sources::HandshakeSources;
use crate::lan::{Groups, Lan};
use crate::peer::Peer;

/// Handshakes per second accepted before cookies are demanded (each handshake is verified
/// twice on our path: once to find the peer, once inside its session).
pub const HANDSHAKE_RATE_LIMIT: u64 = 200;

/// The device's own key and the handshake rate limiters bound to it.
pub struct Identity {
    pub secret: StaticSecret,
    pub public: PublicKey,
    pub rate_limiter: Arc<RateLimiter>,
    /// Each source address's own budget, past the cookie check.
    pub sources: HandshakeSources,
}

impl Identity {
    pub fn new(private_key: Key) -> Self {
        let secret = StaticSecret::from(private_key);
        let public = PublicKey::from(&secret);
        let rate_limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        Identity {
            secret,
            public,
            rate_limiter,
            sources: HandshakeSources::default(),
        }
    }
}

#[derive(Default)]
pub struct PeerTable {
    pub identity: Option<Arc<Identity>>,
    by_index: HashMap<u32, Arc<Peer>, BuildHasherDefault<IndexHasher>>,
    by_key: HashMap<Key, Arc<Peer>>,
    routes: AllowedIps<Arc<Peer>>,
    /// The party's LAN scope: broadcasts and multicast go to every peer.
    lan: Option<Arc<Lan>>,
    /// The multicast groups of the peers whose groups are known (see `lan`).
    groups: HashMap<Key, Groups>,
}

impl PeerTable {
    pub fn new(identity: Option<Arc<Identity>>) -> Self {
        PeerTable {
            identity,
            ..Default::default()
        }
    }

    pub fn insert(&mut self, peer: Arc<Peer>) {
        self.by_index.insert(peer.index, peer.clone());
        self.by_key.insert(peer.public_key, peer);
    }

    /// Routes `prefix` to `peer`; a prefix belongs to one peer only, the last one set wins
    /// (as in WireGuard).
    pub fn route(&mut self, addr: IpAddr, cidr: u8, peer: Arc<Peer>) {
        // Prefixes are validated before they reach the table.
        let _ = self.routes.insert(addr, cidr, peer);
    }

    pub fn set_lan(&mut self, lan: Option<Arc<Lan>>) {
        self.lan = lan;
    }

    pub fn lan(&self) -> Option<&Lan> {
        self.lan.as_deref()
    }

    /// Limits `key`'s LAN multicast to `groups`.
    pub fn set_groups(&mut self, key: Key, groups: Groups) {
        self.groups.insert(key, groups);
    }

    /// The peers a LAN packet goes to: all of them, or for multicast to `group` those that
    /// listen to it or whose groups are not known.
    pub fn fanout(&self, group: Option<Ipv4Addr>) -> impl Iterator<Item = &Arc<Peer>> {
        self.by_key.iter().filter_map(move |(key, peer)| {
            let wanted = match (group, self.groups.get(key)) {
                (Some(group), Some(groups)) => groups.contains(&group),
                _ => true,
            };
            wanted.then_some(peer)
        })
    }

    pub fn by_index(&self, index: u32) -> Option<&Arc<Peer>> {
        self.by_index.get(&index)
    }

    pub fn by_key(&self, key: &Key) -> Option<&Arc<Peer>> {
        self.by_key.get(key)
    }

    pub fn lookup(&self, addr: IpAddr) -> Option<&Arc<Peer>> {
        self.routes.lookup(addr)
    }

    pub fn lookup_v4(&self, addr: [u8; 4]) -> Option<&Arc<Peer>> {
        self.routes.lookup_v4(addr)
    }

    pub fn lookup_v6(&self, addr: [u8; 16]) -> Option<&Arc<Peer>> {
        self.routes.lookup_v6(addr)
    }

    pub fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.by_key.values()
    }
}

/// Hashes our own peer indices, looked up on every datagram. They are random 24-bit numbers
/// we chose, so they need no keyed (DoS-resistant) hash: one multiplication spreads them over
/// the hash bits the table uses (Fibonacci hashing).
#[derive(Default)]
pub struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_of(keys: &[u8]) -> PeerTable {
        let mut table = PeerTable::new(None);
        for &k in keys {
            table.insert(Arc::new(Peer::new([k; 32], u32::from(k), None, None)));
        }
        table
    }

    fn fanout(table: &PeerTable, group: Option<Ipv4Addr>) -> Vec<u8> {
        let mut keys: Vec<u8> = table.fanout(group).map(|p| p.public_key[0]).collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn multicast_goes_to_listeners_and_to_members_not_known() {
        let minecraft = Ipv4Addr::new(224, 0, 2, 60);
        let ssdp = Ipv4Addr::new(239, 255, 255, 250);
        let mut table = table_of(&[1, 2, 3]);
        table.set_groups([1; 32], Groups::from(vec![minecraft]));
        table.set_groups([2; 32], Groups::from(vec![]));
        // 3's groups are not known: it gets every group.
        assert_eq!(fanout(&table, Some(minecraft)), [1, 3]);
        assert_eq!(fanout(&table, Some(ssdp)), [3]);
        // Broadcasts (no group) go to everyone, whatever they listen to.
        assert_eq!(fanout(&table, None), [1, 2, 3]);
    }
}
