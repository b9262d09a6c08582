//! Cryptokey routing ("allowed IPs"): longest-prefix match from IP prefixes to peers.
//!
//! # Data structure
//!
//! Per address family (IPv4 keys are `u32`, IPv6 keys `u128`), one hash map per prefix
//! length *in use*, kept in a small list sorted longest first. A lookup masks the address
//! for each length in turn and stops at the first hit, which is by construction the
//! longest matching prefix.
//!
//! Why this and not a binary / path-compressed trie (what Linux and wireguard-go use):
//! - LANrage configurations use very few prefix lengths (a `/32` + `/128` per peer, maybe
//!   a LAN `/24` and a default route), so a lookup is typically one or two hash probes:
//!   an AND, a multiply-based hash and one SwissTable group load each. A trie instead
//!   walks a chain of dependent pointer loads about `log2(peers)` deep. Measured against
//!   a path-compressed trie with 1000 peers (`/32` each, plus a `/16` and `/0`): ~5 ns vs
//!   ~55 ns per IPv4 lookup; with 1000 `/128`s in IPv6: ~22 ns vs ~115 ns.
//! - The cost is one probe per distinct length in use, at most 33 (IPv4) / 129 (IPv6):
//!   ~70 ns / ~450 ns when every length is in use and only `/0` matches. Only a
//!   deliberately odd configuration gets there, and a trie degrades too (~950 ns for a
//!   `/128` under a 129-deep chain of nested prefixes).
//! - Empty lengths are dropped on removal so they are never probed.
//! - Lookup never allocates; changes (rare) may allocate; `iter` sorts a snapshot so
//!   `wg show` output has a stable order despite hash maps.
//! - The hash is a seeded folded multiply (see `PrefixState`): SipHash would cost more
//!   than the rest of the lookup, and the random per-map seed keeps configuration-chosen
//!   prefixes from being crafted to collide. Packet addresses choose only where a probe
//!   starts, not how the stored prefixes cluster.
//!
//! # IPv4 vs IPv6
//!
//! The two families never mix: an IPv4-mapped IPv6 address such as `::ffff:10.0.0.1`
//! is looked up in the IPv6 table only and does not match `10.0.0.0/8`. Tunnel packets
//! carry an explicit IP version, so this is the correct semantics on the packet path;
//! code that receives mapped addresses from a dual-stack socket must convert them
//! (`Ipv6Addr::to_ipv4_mapped`) itself.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A prefix length longer than the address (more than 32 for IPv4, 128 for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPrefix {
    /// The rejected prefix length.
    pub cidr: u8,
    /// The longest prefix length valid for the address family.
    pub max: u8,
}

impl fmt::Display for InvalidPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid prefix length /{} (maximum /{})",
            self.cidr, self.max
        )
    }
}

impl std::error::Error for InvalidPrefix {}

/// Cryptokey routing table: the most specific prefix wins.
///
/// Generic over the value so it can be tested without peers; the engine stores a peer
/// handle. IPv4 and IPv6 live in separate tables (see the module docs).
#[derive(Clone)]
pub struct AllowedIps<T> {
    v4: Table<u32, T>,
    v6: Table<u128, T>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> AllowedIps<T> {
    /// Creates an empty table (does not allocate).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            v4: Table::new(),
            v6: Table::new(),
        }
    }

    /// Inserts or replaces the value for exactly this prefix and returns the previous one.
    ///
    /// Host bits beyond `cidr` are masked off, so `10.0.0.5/24` is `10.0.0.0/24`.
    /// Rejects (rather than clamps) a too-long prefix so configuration typos surface.
    pub fn insert(&mut self, addr: IpAddr, cidr: u8, value: T) -> Result<Option<T>, InvalidPrefix> {
        match addr {
            IpAddr::V4(a) => self.v4.insert(u32::from(a), cidr, value),
            IpAddr::V6(a) => self.v6.insert(u128::from(a), cidr, value),
        }
    }

    /// Removes exactly this prefix (host bits masked off) and returns its value.
    ///
    /// Less or more specific prefixes are untouched; an invalid `cidr` matches nothing.
    pub fn remove(&mut self, addr: IpAddr, cidr: u8) -> Option<T> {
        match addr {
            IpAddr::V4(a) => self.v4.remove(u32::from(a), cidr),
            IpAddr::V6(a) => self.v6.remove(u128::from(a), cidr),
        }
    }

    /// Keeps only the prefixes for which `f(network, cidr, value)` returns `true`.
    ///
    /// Used to drop every prefix of a peer when it is removed or its allowed IPs are
    /// replaced. `f` sees entries in unspecified order.
    pub fn retain(&mut self, mut f: impl FnMut(&IpAddr, u8, &T) -> bool) {
        self.v4.retain(&mut f);
        self.v6.retain(&mut f);
    }

    /// Returns the value of the longest prefix containing `addr`.
    ///
    /// Per-packet hot path: does not allocate.
    #[inline]
    #[must_use]
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }
    }

    /// [`lookup`](Self::lookup) for raw IPv4 header bytes, so the packet path need not
    /// build an `IpAddr`.
    #[inline]
    #[must_use]
    pub fn lookup_v4(&self, addr: [u8; 4]) -> Option<&T> {
        self.v4.lookup(u32::from_be_bytes(addr))
    }

    /// [`lookup`](Self::lookup) for raw IPv6 header bytes.
    #[inline]
    #[must_use]
    pub fn lookup_v6(&self, addr: [u8; 16]) -> Option<&T> {
        self.v6.lookup(u128::from_be_bytes(addr))
    }

    /// All prefixes as `(network address, cidr, value)`: IPv4 first, then IPv6, each
    /// sorted by network address and then prefix length (stable output for `wg show`).
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, u8, &T)> {
        self.v4.iter().chain(self.v6.iter())
    }

    /// Number of prefixes stored (both families).
    #[must_use]
    pub fn len(&self) -> usize {
        self.v4.len + self.v6.len
    }

    /// Whether no prefix is stored.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every prefix.
    pub fn clear(&mut self) {
        self.v4 = Table::new();
        self.v6 = Table::new();
    }
}

impl<T: fmt::Debug> fmt::Debug for AllowedIps<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(addr, cidr, v)| (format!("{addr}/{cidr}"), v)),
            )
            .finish()
    }
}

/// The network address of `addr/cidr`: host bits cleared, so `10.0.0.5/24` gives
/// `10.0.0.0`. A `cidr` beyond the address width keeps every bit.
pub fn network(addr: IpAddr, cidr: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => u32::from(a).and(u32::netmask(cidr)).to_ip(),
        IpAddr::V6(a) => u128::from(a).and(u128::netmask(cidr)).to_ip(),
    }
}

/// An address family's key: a big-endian address as an unsigned integer.
trait Key: Copy + Eq + Ord + Hash {
    const WIDTH: u8;
    /// The mask keeping the first `cidr` bits (all of them if `cidr >= WIDTH`).
    fn netmask(cidr: u8) -> Self;
    fn and(self, mask: Self) -> Self;
    fn to_ip(self) -> IpAddr;
}

impl Key for u32 {
    const WIDTH: u8 = 32;

    fn netmask(cidr: u8) -> Self {
        let host_bits = u32::from(Self::WIDTH.saturating_sub(cidr));
        u32::MAX.checked_shl(host_bits).unwrap_or(0)
    }

    #[inline]
    fn and(self, mask: Self) -> Self {
        self & mask
    }

    fn to_ip(self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self))
    }
}

impl Key for u128 {
    const WIDTH: u8 = 128;

    fn netmask(cidr: u8) -> Self {
        let host_bits = u32::from(Self::WIDTH.saturating_sub(cidr));
        u128::MAX.checked_shl(host_bits).unwrap_or(0)
    }

    #[inline]
    fn and(self, mask: Self) -> Self {
        self & mask
    }

    fn to_ip(self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(self))
    }
}

/// All prefixes of one length, keyed by network address (host bits zero).
#[derive(Clone)]
struct Level<K, T> {
    cidr: u8,
    mask: K,
    map: HashMap<K, T, PrefixState>,
}

/// One address family. Invariant: `levels` is sorted by strictly decreasing `cidr` and
/// holds no empty level, so a lookup probes only lengths in use, longest first.
#[derive(Clone)]
struct Table<K, T> {
    levels: Vec<Level<K, T>>,
    len: usize,
}

impl<K: Key, T> Table<K, T> {
    const fn new() -> Self {
        Self {
            levels: Vec::new(),
            len: 0,
        }
    }

    /// Where the level for `cidr` is, or would be inserted (levels sort longest first).
    fn find(&self, cidr: u8) -> Result<usize, usize> {
        self.levels.binary_search_by(|level| cidr.cmp(&level.cidr))
    }

    fn insert(&mut self, key: K, cidr: u8, value: T) -> Result<Option<T>, InvalidPrefix> {
        if cidr > K::WIDTH {
            return Err(InvalidPrefix {
                cidr,
                max: K::WIDTH,
            });
        }
        let i = self.find(cidr).unwrap_or_else(|i| {
            let level = Level {
                cidr,
                mask: K::netmask(cidr),
                map: HashMap::with_hasher(PrefixState::random()),
            };
            self.levels.insert(i, level);
            i
        });
        let level = &mut self.levels[i]; // in bounds: `i` was just found or inserted
        let old = level.map.insert(key.and(level.mask), value);
        if old.is_none() {
            self.len += 1;
        }
        Ok(old)
    }

    fn remove(&mut self, key: K, cidr: u8) -> Option<T> {
        let i = self.find(cidr).ok()?;
        let level = self.levels.get_mut(i)?;
        let old = level.map.remove(&key.and(level.mask))?;
        if level.map.is_empty() {
            self.levels.remove(i);
        }
        self.len -= 1;
        Some(old)
    }

    fn retain<F: FnMut(&IpAddr, u8, &T) -> bool>(&mut self, f: &mut F) {
        for level in &mut self.levels {
            let cidr = level.cidr;
            level.map.retain(|key, value| f(&key.to_ip(), cidr, value));
        }
        self.levels.retain(|level| !level.map.is_empty());
        self.len = self.levels.iter().map(|level| level.map.len()).sum();
    }

    #[inline]
    fn lookup(&self, addr: K) -> Option<&T> {
        self.levels
            .iter()
            .find_map(|level| level.map.get(&addr.and(level.mask)))
    }

    /// Snapshot sorted by (network address, prefix length).
    fn iter(&self) -> impl Iterator<Item = (IpAddr, u8, &T)> {
        let mut entries = Vec::with_capacity(self.len);
        for level in &self.levels {
            entries.extend(
                level
                    .map
                    .iter()
                    .map(|(key, value)| (*key, level.cidr, value)),
            );
        }
        entries.sort_unstable_by_key(|&(key, cidr, _)| (key, cidr));
        entries
            .into_iter()
            .map(|(key, cidr, value)| (key.to_ip(), cidr, value))
    }
}

/// Hash builder for prefix keys: a folded 64x64->128-bit multiply, seeded per map.
///
/// Keys are single integers, so a multiply-xor-fold mixes them well at a fraction of
/// SipHash's cost; the random seed (taken from std's `RandomState`) keeps prefixes
/// pushed by configuration from being chosen to collide.
#[derive(Clone, Copy)]
struct PrefixState {
    seed: u64,
}

impl PrefixState {
    fn random() -> Self {
        Self {
            seed: RandomState::new().build_hasher().finish(),
        }
    }
}

impl BuildHasher for PrefixState {
    type Hasher = PrefixHasher;

    #[inline]
    fn build_hasher(&self) -> PrefixHasher {
        PrefixHasher(self.seed)
    }
}

struct PrefixHasher(u64);

impl PrefixHasher {
    /// Odd 64-bit constant with well-spread bits (from the golden ratio).
    const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

    #[inline]
    fn mix(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * u128::from(Self::MUL);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for PrefixHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }

    #[inline]
    fn write_u128(&mut self, n: u128) {
        self.mix(n as u64);
        self.mix((n >> 64) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().unwrap())
    }

    /// Checks the table invariants and that `len` matches the stored values.
    fn check<K: Key + std::fmt::Debug, T>(t: &Table<K, T>) {
        assert!(
            t.levels.windows(2).all(|w| w[0].cidr > w[1].cidr),
            "levels unsorted"
        );
        let mut count = 0;
        for level in &t.levels {
            assert!(level.cidr <= K::WIDTH);
            assert!(!level.map.is_empty(), "empty level /{} kept", level.cidr);
            assert_eq!(level.mask, K::netmask(level.cidr));
            for key in level.map.keys() {
                assert_eq!(key.and(level.mask), *key, "unmasked key");
            }
            count += level.map.len();
        }
        assert_eq!(count, t.len);
    }

    fn check_all<T>(t: &AllowedIps<T>) {
        check(&t.v4);
        check(&t.v6);
        assert_eq!(t.iter().count(), t.len());
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = AllowedIps::new();
        t.insert(v4("10.0.0.0"), 8, "a").unwrap();
        t.insert(v4("10.1.0.0"), 16, "b").unwrap();
        t.insert(v4("10.1.2.0"), 24, "c").unwrap();
        assert_eq!(t.lookup(v4("10.1.2.3")), Some(&"c"));
        assert_eq!(t.lookup(v4("10.1.3.3")), Some(&"b"));
        assert_eq!(t.lookup(v4("10.2.3.3")), Some(&"a"));
        assert_eq!(t.lookup(v4("11.0.0.1")), None);
        assert_eq!(t.lookup_v4([10, 1, 2, 255]), Some(&"c"));

        t.insert(v6("fd00::"), 8, "x").unwrap();
        t.insert(v6("fd00:1::"), 32, "y").unwrap();
        assert_eq!(t.lookup(v6("fd00:1::5")), Some(&"y"));
        assert_eq!(t.lookup(v6("fd00:2::5")), Some(&"x"));
        assert_eq!(t.lookup(v6("fe00::1")), None);
        let raw: Ipv6Addr = "fd00:1::5".parse().unwrap();
        assert_eq!(t.lookup_v6(raw.octets()), Some(&"y"));
        check_all(&t);
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let prefixes = [
            ("10.1.2.0", 24, 3),
            ("10.0.0.0", 8, 1),
            ("10.1.0.0", 16, 2),
            ("10.1.2.128", 25, 4),
        ];
        let mut forward = AllowedIps::new();
        let mut backward = AllowedIps::new();
        for &(a, c, v) in &prefixes {
            forward.insert(v4(a), c, v).unwrap();
        }
        for &(a, c, v) in prefixes.iter().rev() {
            backward.insert(v4(a), c, v).unwrap();
        }
        for probe in ["10.1.2.200", "10.1.2.1", "10.1.9.9", "10.9.9.9", "9.9.9.9"] {
            assert_eq!(
                forward.lookup(v4(probe)),
                backward.lookup(v4(probe)),
                "{probe}"
            );
        }
        assert!(forward.iter().eq(backward.iter()));
        check_all(&forward);
        check_all(&backward);
    }

    #[test]
    fn default_route() {
        let mut t = AllowedIps::new();
        t.insert(v4("0.0.0.0"), 0, 0).unwrap();
        t.insert(v4("192.168.1.0"), 24, 1).unwrap();
        assert_eq!(t.lookup(v4("8.8.8.8")), Some(&0));
        assert_eq!(t.lookup(v4("255.255.255.255")), Some(&0));
        assert_eq!(t.lookup(v4("192.168.1.7")), Some(&1));
        // The v4 default route does not cover IPv6.
        assert_eq!(t.lookup(v6("2001:db8::1")), None);
        t.insert(v6("::"), 0, 6).unwrap();
        assert_eq!(t.lookup(v6("2001:db8::1")), Some(&6));
        assert_eq!(
            t.lookup(v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            Some(&6)
        );
        // /0 with host bits set is still the default route.
        assert_eq!(t.insert(v4("1.2.3.4"), 0, 9).unwrap(), Some(0));
        assert_eq!(t.lookup(v4("8.8.8.8")), Some(&9));
        check_all(&t);
    }

    #[test]
    fn host_routes() {
        let mut t = AllowedIps::new();
        t.insert(v4("10.0.0.1"), 32, 1).unwrap();
        t.insert(v4("10.0.0.2"), 32, 2).unwrap();
        t.insert(v4("10.0.0.0"), 24, 24).unwrap();
        t.insert(v6("fd00::1"), 128, 61).unwrap();
        t.insert(v6("fd00::"), 128, 60).unwrap();
        assert_eq!(t.lookup(v4("10.0.0.1")), Some(&1));
        assert_eq!(t.lookup(v4("10.0.0.2")), Some(&2));
        assert_eq!(t.lookup(v4("10.0.0.3")), Some(&24));
        assert_eq!(t.lookup(v6("fd00::1")), Some(&61));
        assert_eq!(t.lookup(v6("fd00::")), Some(&60));
        assert_eq!(t.lookup(v6("fd00::2")), None);
        // Extremes of the address space.
        t.insert(v4("255.255.255.255"), 32, 99).unwrap();
        t.insert(v4("0.0.0.0"), 32, 98).unwrap();
        assert_eq!(t.lookup(v4("255.255.255.255")), Some(&99));
        assert_eq!(t.lookup(v4("0.0.0.0")), Some(&98));
        assert_eq!(t.lookup(v4("0.0.0.1")), None);
        check_all(&t);
    }

    #[test]
    fn replace_prefix() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(v4("10.0.0.0"), 24, "old").unwrap(), None);
        assert_eq!(t.insert(v4("10.0.0.0"), 24, "new").unwrap(), Some("old"));
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(v4("10.0.0.9")), Some(&"new"));
        // Same address, different length is a different prefix.
        assert_eq!(t.insert(v4("10.0.0.0"), 25, "half").unwrap(), None);
        assert_eq!(t.len(), 2);
        check_all(&t);
    }

    #[test]
    fn host_bits_are_masked() {
        let mut t = AllowedIps::new();
        t.insert(v4("10.0.0.5"), 24, 1).unwrap();
        assert_eq!(t.insert(v4("10.0.0.0"), 24, 2).unwrap(), Some(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.iter().collect::<Vec<_>>(), vec![(v4("10.0.0.0"), 24, &2)]);
        assert_eq!(t.remove(v4("10.0.0.200"), 24), Some(2));
        assert!(t.is_empty());

        t.insert(v6("fd00::dead:beef"), 64, 3).unwrap();
        assert_eq!(t.iter().next(), Some((v6("fd00::"), 64, &3)));
        check_all(&t);
    }

    #[test]
    fn invalid_prefix_rejected() {
        let mut t = AllowedIps::new();
        assert_eq!(
            t.insert(v4("10.0.0.1"), 33, 1),
            Err(InvalidPrefix { cidr: 33, max: 32 })
        );
        assert_eq!(
            t.insert(v6("::1"), 129, 1),
            Err(InvalidPrefix {
                cidr: 129,
                max: 128
            })
        );
        assert_eq!(
            t.insert(v6("::1"), u8::MAX, 1),
            Err(InvalidPrefix {
                cidr: 255,
                max: 128
            })
        );
        assert!(t.is_empty());
        assert_eq!(t.remove(v4("10.0.0.1"), 33), None);
        assert_eq!(t.remove(v6("::1"), 200), None);
        assert_eq!(
            InvalidPrefix { cidr: 33, max: 32 }.to_string(),
            "invalid prefix length /33 (maximum /32)"
        );
        // 33 is valid for IPv6.
        assert_eq!(t.insert(v6("fd00::"), 33, 1), Ok(None));
    }

    #[test]
    fn remove_exact_prefix_only() {
        let mut t = AllowedIps::new();
        t.insert(v4("10.0.0.0"), 8, 8).unwrap();
        t.insert(v4("10.1.0.0"), 16, 16).unwrap();
        t.insert(v4("10.1.1.0"), 24, 24).unwrap();
        assert_eq!(t.remove(v4("10.1.0.0"), 17), None);
        assert_eq!(t.remove(v4("10.2.0.0"), 16), None);
        assert_eq!(t.remove(v4("10.1.0.0"), 16), Some(16));
        assert_eq!(t.remove(v4("10.1.0.0"), 16), None);
        check_all(&t);
        assert_eq!(t.lookup(v4("10.1.1.1")), Some(&24));
        assert_eq!(t.lookup(v4("10.1.2.1")), Some(&8));
        assert_eq!(t.remove(v4("10.0.0.0"), 8), Some(8));
        assert_eq!(t.lookup(v4("10.1.2.1")), None);
        assert_eq!(t.remove(v4("10.1.1.0"), 24), Some(24));
        assert!(t.is_empty());
        assert!(t.v4.levels.is_empty(), "no empty levels kept");
    }

    #[test]
    fn retain_drops_peer() {
        let mut t = AllowedIps::new();
        t.insert(v4("10.0.0.0"), 8, "a").unwrap();
        t.insert(v4("10.0.0.2"), 32, "b").unwrap();
        t.insert(v4("10.0.0.3"), 32, "a").unwrap();
        t.insert(v6("fd00::"), 64, "a").unwrap();
        t.insert(v6("fd00::2"), 128, "b").unwrap();
        t.retain(|_, _, peer| *peer != "a");
        check_all(&t);
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(v4("10.0.0.2")), Some(&"b"));
        assert_eq!(t.lookup(v4("10.0.0.3")), None);
        assert_eq!(t.lookup(v6("fd00::2")), Some(&"b"));
        assert_eq!(t.lookup(v6("fd00::3")), None);
        // Retain sees the prefix too.
        t.retain(|addr, cidr, _| !(addr.is_ipv6() && cidr == 128));
        assert_eq!(
            t.iter().collect::<Vec<_>>(),
            vec![(v4("10.0.0.2"), 32, &"b")]
        );
        t.retain(|_, _, _| false);
        assert!(t.is_empty());
        assert!(t.v4.levels.is_empty() && t.v6.levels.is_empty());
    }

    #[test]
    fn v4_mapped_is_not_v4() {
        let mut t = AllowedIps::new();
        t.insert(v4("10.0.0.0"), 8, "v4").unwrap();
        t.insert(v4("0.0.0.0"), 0, "v4-default").unwrap();
        // ::ffff:10.0.0.1 is an IPv6 address: it lives in the v6 table only.
        assert_eq!(t.lookup(v6("::ffff:10.0.0.1")), None);
        t.insert(v6("::ffff:10.0.0.0"), 104, "mapped").unwrap();
        assert_eq!(t.lookup(v6("::ffff:10.0.0.1")), Some(&"mapped"));
        assert_eq!(t.lookup(v4("10.0.0.1")), Some(&"v4"));
        // Same bit pattern in the low 32 bits of an IPv6 key does not hit IPv4 prefixes.
        assert_eq!(t.lookup(v6("::10.0.0.1")), None);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn iter_sorted_and_complete() {
        let mut t = AllowedIps::new();
        t.insert(v6("fd00::"), 64, 5).unwrap();
        t.insert(v4("192.168.0.0"), 16, 4).unwrap();
        t.insert(v4("10.0.0.1"), 32, 3).unwrap();
        t.insert(v4("10.0.0.0"), 8, 2).unwrap();
        t.insert(v4("0.0.0.0"), 0, 1).unwrap();
        t.insert(v6("::"), 0, 6).unwrap();
        let got: Vec<_> = t.iter().map(|(a, c, v)| (a, c, *v)).collect();
        assert_eq!(
            got,
            vec![
                (v4("0.0.0.0"), 0, 1),
                (v4("10.0.0.0"), 8, 2),
                (v4("10.0.0.1"), 32, 3),
                (v4("192.168.0.0"), 16, 4),
                (v6("::"), 0, 6),
                (v6("fd00::"), 64, 5),
            ]
        );
        assert_eq!(t.iter().size_hint(), (6, Some(6)));
        assert_eq!(format!("{t:?}").matches('/').count(), 6);
    }

    #[test]
    fn clear_and_clone() {
        let mut t = AllowedIps::default();
        t.insert(v4("10.0.0.0"), 8, 1).unwrap();
        t.insert(v6("fd00::"), 8, 2).unwrap();
        let copy = t.clone();
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.lookup(v4("10.1.1.1")), None);
        assert_eq!(copy.len(), 2);
        assert_eq!(copy.lookup(v4("10.1.1.1")), Some(&1));
        assert_eq!(copy.lookup(v6("fd01::")), Some(&2));
        check_all(&copy);
    }

    /// Tiny deterministic PRNG (xorshift64*), so the randomized test needs no deps.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn u128(&mut self) -> u128 {
            (u128::from(self.next()) << 64) | u128::from(self.next())
        }
    }

    /// Naive reference: linear scan for the longest matching prefix.
    #[derive(Default)]
    struct Reference {
        entries: Vec<(IpAddr, u8, u32)>,
    }

    fn bits(addr: IpAddr) -> (bool, u128, u8) {
        match addr {
            IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (true, u128::from(a), 128),
        }
    }

    fn contains(prefix: IpAddr, cidr: u8, addr: IpAddr) -> bool {
        let (p6, p, width) = bits(prefix);
        let (a6, a, _) = bits(addr);
        if p6 != a6 {
            return false;
        }
        // Both values are right-aligned in a u128; compare their top `cidr` bits.
        let shift = u32::from(width - cidr);
        p.checked_shr(shift).unwrap_or(0) == a.checked_shr(shift).unwrap_or(0)
    }

    fn network(addr: IpAddr, cidr: u8) -> IpAddr {
        match addr {
            IpAddr::V4(a) => {
                let mask = if cidr == 0 {
                    0
                } else {
                    u32::MAX << (32 - cidr)
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = if cidr == 0 {
                    0
                } else {
                    u128::MAX << (128 - cidr)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    impl Reference {
        fn insert(&mut self, addr: IpAddr, cidr: u8, v: u32) -> Option<u32> {
            let net = network(addr, cidr);
            for e in &mut self.entries {
                if e.0 == net && e.1 == cidr {
                    return Some(std::mem::replace(&mut e.2, v));
                }
            }
            self.entries.push((net, cidr, v));
            None
        }

        fn remove(&mut self, addr: IpAddr, cidr: u8) -> Option<u32> {
            let net = network(addr, cidr);
            let i = self
                .entries
                .iter()
                .position(|e| e.0 == net && e.1 == cidr)?;
            Some(self.entries.swap_remove(i).2)
        }

        fn lookup(&self, addr: IpAddr) -> Option<u32> {
            self.entries
                .iter()
                .filter(|e| contains(e.0, e.1, addr))
                .max_by_key(|e| e.1)
                .map(|e| e.2)
        }

        fn sorted(&self) -> Vec<(IpAddr, u8, u32)> {
            let mut v = self.entries.clone();
            v.sort_by_key(|e| (e.0.is_ipv6(), bits(e.0).1, e.1));
            v
        }
    }

    /// Random addresses clustered around a few bases, so prefixes nest and overlap a lot.
    fn random_addr(rng: &mut Rng, bases4: &[u32], bases6: &[u128]) -> IpAddr {
        let flip = rng.below(129) as u32;
        if rng.below(3) == 0 {
            let base = bases6[rng.below(bases6.len() as u64) as usize];
            let noise = rng.u128().checked_shr(flip).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(base ^ noise))
        } else {
            let base = bases4[rng.below(bases4.len() as u64) as usize];
            let noise = (rng.next() as u32).checked_shr(flip / 4).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(base ^ noise))
        }
    }

    fn random_cidr(rng: &mut Rng, addr: IpAddr) -> u8 {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        match rng.below(4) {
            0 => max,
            _ => rng.below(u64::from(max) + 1) as u8,
        }
    }

    #[test]
    fn randomized_against_linear_scan() {
        for seed in 1..=8u64 {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
            let bases4: Vec<u32> = (0..4).map(|_| rng.next() as u32).collect();
            let bases6: Vec<u128> = (0..4).map(|_| rng.u128()).collect();
            let mut t = AllowedIps::new();
            let mut r = Reference::default();

            for step in 0..4000u32 {
                let addr = random_addr(&mut rng, &bases4, &bases6);
                let cidr = random_cidr(&mut rng, addr);
                match rng.below(100) {
                    0..=59 => assert_eq!(
                        t.insert(addr, cidr, step).unwrap(),
                        r.insert(addr, cidr, step)
                    ),
                    60..=79 => {
                        // Remove something that exists half of the time.
                        let (a, c) = if !r.entries.is_empty() && rng.below(2) == 0 {
                            let e = r.entries[rng.below(r.entries.len() as u64) as usize];
                            (e.0, e.1)
                        } else {
                            (addr, cidr)
                        };
                        assert_eq!(t.remove(a, c), r.remove(a, c));
                    }
                    80 => {
                        let m = 2 + rng.below(5) as u32;
                        t.retain(|_, _, v| v % m != 0);
                        r.entries.retain(|e| e.2 % m != 0);
                    }
                    _ => {
                        let probe = random_addr(&mut rng, &bases4, &bases6);
                        assert_eq!(
                            t.lookup(probe).copied(),
                            r.lookup(probe),
                            "seed {seed} step {step} {probe}"
                        );
                    }
                }
                assert_eq!(t.len(), r.entries.len());
                if step % 100 == 0 {
                    check_all(&t);
                    let got: Vec<_> = t.iter().map(|(a, c, v)| (a, c, *v)).collect();
                    assert_eq!(got, r.sorted());
                }
            }

            check_all(&t);
            for _ in 0..3000 {
                let probe = match rng.below(4) {
                    0 => IpAddr::V4(Ipv4Addr::from(rng.next() as u32)),
                    1 => IpAddr::V6(Ipv6Addr::from(rng.u128())),
                    _ => random_addr(&mut rng, &bases4, &bases6),
                };
                let want = r.lookup(probe);
                assert_eq!(t.lookup(probe).copied(), want, "seed {seed} {probe}");
                match probe {
                    IpAddr::V4(a) => assert_eq!(t.lookup_v4(a.octets()).copied(), want),
                    IpAddr::V6(a) => assert_eq!(t.lookup_v6(a.octets()).copied(), want),
                }
            }
            let got: Vec<_> = t.iter().map(|(a, c, v)| (a, c, *v)).collect();
            assert_eq!(got, r.sorted());
        }
    }
}
