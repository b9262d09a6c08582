//! The relay's route table: for each channel number, who may send on it and where it goes.
//!
//! Like the engine's peer table, it is an immutable snapshot: the control thread builds a new
//! table whenever a session is bound or expires and publishes it with one atomic pointer swap;
//! workers load it once per batch and never lock. What must outlive a snapshot (a route's
//! rate budget and its counters) sits behind `Arc`s that the next table shares.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::io::udp::canonical;
use crate::rate_limit::Gcra;
use crate::table::IndexHasher;

/// One direction of a relay session: frames on a channel, from the address bound to it, go
/// to the other side's bound address under the other side's channel number.
#[derive(Debug, Clone)]
pub struct Route {
    /// The only source address allowed to send on this channel (the side that bound it).
    pub from: SocketAddr,
    /// Where its frames go: the other side's bound address.
    pub to: SocketAddr,
    /// The channel number the other side knows the session by; written into each frame.
    pub out_channel: u32,
    /// This direction's byte budget. Shared with the next table so that republishing does not
    /// refill it.
    pub limiter: Arc<Gcra>,
    /// This direction's counters, shared with the next table for the same reason.
    pub stats: Arc<RouteStats>,
}

impl Route {
    /// A route with fresh counters.
    pub fn new(from: SocketAddr, to: SocketAddr, out_channel: u32, limiter: Arc<Gcra>) -> Self {
        Route {
            from,
            to,
            out_channel,
            limiter,
            stats: Arc::default(),
        }
    }
}

/// What one direction of a session has carried, for accounting and for expiring idle
/// sessions. Updated by whichever worker forwards the frame, with relaxed atomics: the kernel
/// steers one source address to one worker, so a route's line rarely moves between cores.
#[derive(Debug, Default)]
pub struct RouteStats {
    packets: AtomicU64,
    bytes: AtomicU64,
    rate_limited: AtomicU64,
}

impl RouteStats {
    /// Frames accepted for forwarding (a send that fails afterwards is counted by the relay's
    /// counters, not here).
    pub fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }

    /// Bytes of those frames, relay header included: what the relay sends.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Frames refused because the route was over its byte budget.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    pub(crate) fn record_forwarded(&self, bytes: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn record_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }
}

/// An immutable snapshot of every route, by incoming channel number.
///
/// Channel numbers are random 32-bit numbers the relay chose itself, so a peer cannot pick
/// colliding ones: the cheap multiplicative hash the peer table uses for its indices is
/// enough, and keyed (DoS-resistant) hashing would only cost time on every frame.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    routes: HashMap<u32, Route, BuildHasherDefault<IndexHasher>>,
}

impl RouteTable {
    pub fn new() -> Self {
        RouteTable::default()
    }

    /// A table with room for `routes` routes, so that building a large one does not rehash.
    pub fn with_capacity(routes: usize) -> Self {
        RouteTable {
            routes: HashMap::with_capacity_and_hasher(routes, BuildHasherDefault::default()),
        }
    }

    /// Adds or replaces the route for `channel`; returns the one it replaced. Addresses are
    /// stored canonical (IPv4 rather than IPv4-mapped IPv6), the form the workers compare
    /// sources in.
    pub fn insert(&mut self, channel: u32, mut route: Route) -> Option<Route> {
        route.from = canonical(route.from);
        route.to = canonical(route.to);
        self.routes.insert(channel, route)
    }

    /// Removes the route for `channel` (when building the next table from a copy of this one).
    pub fn remove(&mut self, channel: u32) -> Option<Route> {
        self.routes.remove(&channel)
    }

    #[inline]
    pub fn get(&self, channel: u32) -> Option<&Route> {
        self.routes.get(&channel)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Every route and its channel, in no particular order (for carrying limiters and stats
    /// over to the next table, and for reporting).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Route)> {
        self.routes.iter().map(|(&channel, route)| (channel, route))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn insert_get_remove() {
        let mut table = RouteTable::new();
        assert!(table.is_empty());
        let limiter = Arc::new(Gcra::unlimited());
        let a = Route::new(addr("192.0.2.1:1"), addr("192.0.2.2:2"), 7, limiter.clone());
        assert!(table.insert(5, a).is_none());
        let b = Route::new(addr("192.0.2.2:2"), addr("192.0.2.1:1"), 5, limiter);
        assert!(table.insert(7, b.clone()).is_none());
        assert_eq!(table.len(), 2);
        assert_eq!(table.get(5).map(|r| r.out_channel), Some(7));
        assert_eq!(table.get(7).map(|r| r.to), Some(addr("192.0.2.1:1")));
        assert!(table.get(6).is_none());
        assert!(table.insert(7, b).is_some());
        assert_eq!(table.len(), 2);
        assert_eq!(table.remove(5).map(|r| r.out_channel), Some(7));
        assert_eq!(table.iter().map(|(c, _)| c).collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn addresses_are_stored_canonical() {
        let mut table = RouteTable::with_capacity(1);
        let mapped = addr("[::ffff:192.0.2.1]:1000");
        let route = Route::new(mapped, mapped, 1, Arc::new(Gcra::unlimited()));
        table.insert(1, route);
        let route = table.get(1).unwrap();
        assert_eq!(route.from, addr("192.0.2.1:1000"));
        assert_eq!(route.to, addr("192.0.2.1:1000"));
    }

    #[test]
    fn stats_survive_a_new_table() {
        let mut old = RouteTable::new();
        let route = Route::new(
            addr("192.0.2.1:1"),
            addr("192.0.2.2:2"),
            2,
            Arc::new(Gcra::unlimited()),
        );
        old.insert(1, route);
        let mut new = old.clone();
        new.insert(9, old.get(1).unwrap().clone());
        old.get(1).unwrap().stats.record_forwarded(100);
        new.get(1).unwrap().stats.record_rate_limited();
        let stats = &new.get(9).unwrap().stats;
        assert_eq!((stats.packets(), stats.bytes()), (1, 100));
        assert_eq!(stats.rate_limited(), 1);
    }
}
