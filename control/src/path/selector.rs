//! Path selection per peer, sans-IO: ping every candidate address of every peer with
//! authenticated probe frames ([`super::frame`]) from the WireGuard port, answer the peers'
//! pings, and choose for each peer the candidate with the best round trip. Both peers ping
//! each other's candidates at once, so each one's NAT opens for the other (hole punching).
//!
//! A ping that arrives from an address we did not know for that peer (its NAT's mapping toward
//! us) becomes a candidate too. Until a path is chosen, every candidate is pinged every
//! [`FAST_INTERVAL`]; after, every [`SLOW_INTERVAL`], which keeps the NAT mappings open and
//! the round trips current. A chosen path that stays silent for [`PATH_TIMEOUT`] is lost,
//! and a better one replaces it only when clearly better, so paths do not flap.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use x25519_dalek::{PublicKey, StaticSecret};

use super::frame::{self, Frame, FrameError, PONG_LEN, PairKey};
use crate::peer_id::PeerId;

pub const FAST_INTERVAL: Duration = Duration::from_millis(200);
/// Probing of a chosen path: cheap (65 bytes each way per peer), and what tells within
/// [`PATH_TIMEOUT`] that a NAT rebound or an address changed.
pub const SLOW_INTERVAL: Duration = Duration::from_secs(1);
/// Four probes in a row unanswered: at 10% loss, one false alarm per peer every few hours,
/// which costs a quick NAT re-check, not the tunnel.
pub const PATH_TIMEOUT: Duration = Duration::from_secs(4);
/// An unanswered ping is forgotten after this (its pong, if late, no longer counts).
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Pings per candidate whose pong would still count: with a ping every 200 ms, a path with a
/// round trip up to about 800 ms is still measured while hole punching.
const PINGS_REMEMBERED: usize = 4;
/// Candidates per peer, advertised and learned together.
pub const MAX_CANDIDATES: usize = 8;

/// What the owner acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathEvent {
    /// Send `peer`'s WireGuard traffic to `endpoint` (first choice, or a clearly better one).
    Chosen {
        peer: PeerId,
        endpoint: SocketAddr,
        rtt: Duration,
    },
    /// No candidate of `peer` answers any more.
    Lost { peer: PeerId },
}

/// Why a probe frame was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Frame(FrameError),
    /// Not from a peer we probe (or from ourselves, reflected).
    UnknownPeer,
    /// A pong to no ping of ours (late, replayed, or for another path).
    Unexpected,
}

#[derive(Debug, Clone)]
struct Candidate {
    addr: SocketAddr,
    /// Recent unanswered pings: (transaction, sent).
    pings: Vec<([u8; 12], Instant)>,
    rtt: Option<Duration>,
    last_pong: Option<Instant>,
    /// Learned from a ping's source rather than advertised by the peer.
    learned: bool,
}

impl Candidate {
    fn new(addr: SocketAddr, learned: bool) -> Candidate {
        Candidate {
            addr,
            pings: Vec::new(),
            rtt: None,
            last_pong: None,
            learned,
        }
    }

    fn alive(&self, now: Instant) -> Option<Duration> {
        let fresh = self
            .last_pong
            .is_some_and(|at| now.saturating_duration_since(at) < PATH_TIMEOUT);
        self.rtt.filter(|_| fresh)
    }
}

#[derive(Debug)]
struct PeerPaths {
    key: PairKey,
    candidates: Vec<Candidate>,
    chosen: Option<SocketAddr>,
    next_round: Instant,
    /// Times the chosen path went silent (each a reconnect, for monitoring).
    losses: u32,
}

/// The per-peer path state; see the module documentation.
pub struct PathSelector {
    me: PeerId,
    secret: StaticSecret,
    peers: HashMap<PeerId, PeerPaths>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<PathEvent>,
    random_id: Box<dyn FnMut() -> [u8; 12] + Send>,
}

impl PathSelector {
    /// `secret`: our static WireGuard key. `random_id` draws ping transactions; they must be
    /// unpredictable (a pong is matched by its transaction and MAC).
    pub fn new(secret: StaticSecret, random_id: impl FnMut() -> [u8; 12] + Send + 'static) -> Self {
        PathSelector {
            me: PeerId(PublicKey::from(&secret).to_bytes()),
            secret,
            peers: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            random_id: Box::new(random_id),
        }
    }

    /// Starts or updates probing `peer` at `candidates` (its advertised addresses). What was
    /// learned about addresses it still has is kept, and learned addresses that answer stay;
    /// an address it no longer advertises is dropped, even the chosen one (a restarted peer
    /// on a new port must not be sought at the old one until that path times out).
    pub fn set_peer(&mut self, now: Instant, peer: PeerId, candidates: &[SocketAddr]) {
        if peer == self.me {
            return;
        }
        let paths = self.peers.entry(peer).or_insert_with(|| PeerPaths {
            key: PairKey::new(&self.secret, &peer),
            candidates: Vec::new(),
            chosen: None,
            next_round: now,
            losses: 0,
        });
        let mut merged: Vec<Candidate> = Vec::with_capacity(MAX_CANDIDATES);
        for &addr in candidates {
            if merged.len() < MAX_CANDIDATES && !merged.iter().any(|c| c.addr == addr) {
                let known = paths.candidates.iter().find(|c| c.addr == addr).cloned();
                merged.push(known.unwrap_or_else(|| Candidate::new(addr, false)));
            }
        }
        // Learned addresses that answer stay, after the advertised ones.
        for c in &paths.candidates {
            if merged.len() < MAX_CANDIDATES
                && !merged.iter().any(|m| m.addr == c.addr)
                && c.learned
                && c.alive(now).is_some()
            {
                merged.push(c.clone());
            }
        }
        paths.candidates = merged;
        if let Some(chosen) = paths.chosen {
            if !paths.candidates.iter().any(|c| c.addr == chosen) {
                paths.chosen = None;
                Self::choose(peer, paths, now, &mut self.events);
            }
        }
        if paths.chosen.is_none() {
            paths.next_round = now;
        }
    }

    pub fn remove_peer(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// The chosen path to `peer` and its last round trip.
    pub fn path(&self, peer: &PeerId, now: Instant) -> Option<(SocketAddr, Duration)> {
        let paths = self.peers.get(peer)?;
        let chosen = paths.chosen?;
        let c = paths.candidates.iter().find(|c| c.addr == chosen)?;
        Some((chosen, c.alive(now).or(c.rtt)?))
    }

    /// How many times the chosen path to `peer` went silent since probing began.
    pub fn losses(&self, peer: &PeerId) -> u32 {
        self.peers.get(peer).map_or(0, |p| p.losses)
    }

    /// Takes a probe frame that arrived from `from` on the WireGuard port.
    pub fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), Refused> {
        let sender = frame::claimed_sender(datagram).map_err(Refused::Frame)?;
        if sender == self.me {
            return Err(Refused::UnknownPeer);
        }
        let paths = self.peers.get_mut(&sender).ok_or(Refused::UnknownPeer)?;
        match frame::decode(datagram, &paths.key).map_err(Refused::Frame)? {
            Frame::Ping { transaction, .. } => {
                let pong = Frame::Pong {
                    sender: self.me,
                    transaction,
                    observed: from,
                };
                let mut buf = [0; PONG_LEN];
                let len = frame::encode(&pong, &paths.key, &mut buf);
                self.transmits.push_back((from, buf[..len].to_vec()));
                // The peer's NAT mapping toward us: a candidate we could not have known.
                if !paths.candidates.iter().any(|c| c.addr == from)
                    && paths.candidates.len() < MAX_CANDIDATES
                {
                    paths.candidates.push(Candidate::new(from, true));
                    paths.next_round = now;
                }
                // Its ping got through, so ours may now too (its NAT just opened): ask at once
                // rather than at the next round.
                if paths.chosen.is_none() {
                    paths.next_round = now;
                }
                Ok(())
            }
            Frame::Pong { transaction, .. } => {
                let (c, i) = paths
                    .candidates
                    .iter_mut()
                    .find_map(|c| {
                        let i = c.pings.iter().position(|&(t, _)| t == transaction)?;
                        Some((c, i))
                    })
                    .ok_or(Refused::Unexpected)?;
                let (_, sent) = c.pings.remove(i);
                c.rtt = Some(now.saturating_duration_since(sent));
                c.last_pong = Some(now);
                Self::choose(sender, paths, now, &mut self.events);
                Ok(())
            }
        }
    }

    /// Picks the best live candidate; switches only when the chosen one died or another is
    /// clearly better (by a fifth of the round trip and at least a millisecond).
    fn choose(peer: PeerId, paths: &mut PeerPaths, now: Instant, events: &mut VecDeque<PathEvent>) {
        let best = paths
            .candidates
            .iter()
            .filter_map(|c| c.alive(now).map(|rtt| (c.addr, rtt)))
            .min_by_key(|&(_, rtt)| rtt);
        let current = paths.chosen.and_then(|addr| {
            paths
                .candidates
                .iter()
                .find(|c| c.addr == addr)
                .and_then(|c| c.alive(now))
        });
        let switch = match (best, current) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some((addr, rtt)), Some(cur)) => {
                Some(addr) != paths.chosen && rtt + (cur / 5).max(Duration::from_millis(1)) < cur
            }
        };
        if let (true, Some((endpoint, rtt))) = (switch, best) {
            paths.chosen = Some(endpoint);
            paths.next_round = now + SLOW_INTERVAL;
            events.push_back(PathEvent::Chosen {
                peer,
                endpoint,
                rtt,
            });
        }
    }

    /// The next datagram to send, if one is due at `now`. Call until `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(t);
        }
        for (&peer, paths) in &mut self.peers {
            if let Some(chosen) = paths.chosen {
                let alive = paths
                    .candidates
                    .iter()
                    .any(|c| c.addr == chosen && c.alive(now).is_some());
                if !alive {
                    paths.chosen = None;
                    paths.next_round = now;
                    paths.losses = paths.losses.saturating_add(1);
                    self.events.push_back(PathEvent::Lost { peer });
                    Self::choose(peer, paths, now, &mut self.events);
                }
            }
            if now < paths.next_round {
                continue;
            }
            paths.next_round = now
                + if paths.chosen.is_some() {
                    SLOW_INTERVAL
                } else {
                    FAST_INTERVAL
                };
            for c in &mut paths.candidates {
                c.pings
                    .retain(|&(_, sent)| now.saturating_duration_since(sent) < PING_TIMEOUT);
                if c.pings.len() == PINGS_REMEMBERED {
                    c.pings.remove(0);
                }
                let transaction = (self.random_id)();
                c.pings.push((transaction, now));
                let ping = Frame::Ping {
                    sender: self.me,
                    transaction,
                };
                let mut buf = [0; PONG_LEN];
                let len = frame::encode(&ping, &paths.key, &mut buf);
                self.transmits.push_back((c.addr, buf[..len].to_vec()));
            }
        }
        self.transmits.pop_front()
    }

    /// When [`PathSelector::poll_transmit`] next has something to do. (After
    /// [`PathSelector::handle`], drain `poll_transmit` at once: a pong may be waiting.)
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().map(|p| p.next_round).min()
    }

    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// One side of the simulated internet: a host with a local address, maybe behind a NAT
    /// that keeps the port and admits only what answers an address and port it sent to.
    struct Host {
        selector: PathSelector,
        id: PeerId,
        local: SocketAddr,
        public: SocketAddr,
        natted: bool,
        sent_to: Vec<SocketAddr>,
        events: Vec<(Instant, PathEvent)>,
    }

    fn host(seed: u8, local: &str, public: &str, natted: bool) -> Host {
        let secret = StaticSecret::from([seed; 32]);
        let id = PeerId(PublicKey::from(&secret).to_bytes());
        let mut n = u64::from(seed) << 32;
        Host {
            selector: PathSelector::new(secret, move || {
                n += 1;
                let mut t = [0; 12];
                t[..8].copy_from_slice(&n.to_le_bytes());
                t
            }),
            id,
            local: addr(local),
            public: addr(public),
            natted,
            sent_to: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Datagrams in flight: (arrival, to host index, source as seen, bytes).
    type InFlight = Vec<(Instant, usize, SocketAddr, Vec<u8>)>;

    /// Runs both hosts for `duration` in 5 ms steps; `delay(to)` is the one-way delay to an
    /// address, `None` for unreachable.
    fn run(
        hosts: &mut [Host; 2],
        t0: Instant,
        duration: Duration,
        delay: &dyn Fn(SocketAddr) -> Option<Duration>,
    ) {
        let mut flight: InFlight = Vec::new();
        let mut now = t0;
        while now < t0 + duration {
            for i in 0..2 {
                while let Some((to, bytes)) = hosts[i].selector.poll_transmit(now) {
                    hosts[i].sent_to.push(to);
                    let target = hosts
                        .iter()
                        .position(|h| h.public == to || (!h.natted && h.local == to));
                    if let (Some(j), Some(d)) = (target, delay(to)) {
                        flight.push((now + d, j, hosts[i].public, bytes));
                    }
                }
                while let Some(e) = hosts[i].selector.poll_event() {
                    hosts[i].events.push((now, e));
                }
            }
            now += Duration::from_millis(5);
            let (due, later): (InFlight, InFlight) = flight.into_iter().partition(|f| f.0 <= now);
            flight = later;
            for (_, j, from, bytes) in due {
                let h = &mut hosts[j];
                if h.natted && !h.sent_to.contains(&from) {
                    continue; // the NAT drops what answers nothing it sent
                }
                let _ = h.selector.handle(now, from, &bytes);
            }
        }
    }

    fn chosen(h: &Host) -> Vec<(Duration, SocketAddr)> {
        h.events
            .iter()
            .filter_map(|(at, e)| match e {
                PathEvent::Chosen { endpoint, .. } => {
                    Some((*at - h.events[0].0 + Duration::ZERO, *endpoint))
                }
                PathEvent::Lost { .. } => None,
            })
            .collect()
    }

    fn pair(a_natted: bool, b_natted: bool) -> [Host; 2] {
        [
            host(1, "192.168.1.2:51820", "203.0.113.1:51820", a_natted),
            host(2, "192.168.2.2:51820", "203.0.113.2:51820", b_natted),
        ]
    }

    fn introduce(hosts: &mut [Host; 2], t0: Instant) {
        let (a, b) = (hosts[0].id, hosts[1].id);
        let (a_cands, b_cands) = (
            [hosts[0].local, hosts[0].public],
            [hosts[1].local, hosts[1].public],
        );
        hosts[0].selector.set_peer(t0, b, &b_cands);
        hosts[1].selector.set_peer(t0, a, &a_cands);
    }

    fn internet(to: SocketAddr) -> Option<Duration> {
        // Only public addresses are routed; 10 ms each way.
        to.ip()
            .to_string()
            .starts_with("203.")
            .then_some(Duration::from_millis(10))
    }

    fn lan_and_internet(to: SocketAddr) -> Option<Duration> {
        // LAN addresses are routed too, and are faster.
        Some(if to.ip().to_string().starts_with("192.") {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(15)
        })
    }

    #[test]
    fn two_port_restricted_nats_punch_through_at_once() {
        let t0 = Instant::now();
        let mut hosts = pair(true, true);
        introduce(&mut hosts, t0);
        run(&mut hosts, t0, Duration::from_secs(2), &internet);
        for (i, other) in [(0, 1), (1, 0)] {
            let got = chosen(&hosts[i]);
            assert_eq!(got.len(), 1, "host {i}: {:?}", hosts[i].events);
            assert_eq!(got[0].1, hosts[other].public);
            let (endpoint, rtt) = hosts[i]
                .selector
                .path(&hosts[other].id, t0 + Duration::from_secs(2))
                .unwrap();
            assert_eq!(endpoint, hosts[other].public);
            assert!(
                rtt >= Duration::from_millis(20) && rtt < Duration::from_millis(40),
                "{rtt:?}"
            );
        }
        // The first round's pings die at the other NAT; the second gets through.
        let first = hosts[0].events[0].0 - t0;
        assert!(first < Duration::from_millis(500), "chosen after {first:?}");
    }

    #[test]
    fn a_peer_whose_address_nobody_advertised_is_learned_from_its_pings() {
        let t0 = Instant::now();
        let mut hosts = pair(false, true);
        // B advertises only its unreachable LAN address; A advertises its public one.
        let (a, b) = (hosts[0].id, hosts[1].id);
        let (b_local, a_public) = (hosts[1].local, hosts[0].public);
        hosts[0].selector.set_peer(t0, b, &[b_local]);
        hosts[1].selector.set_peer(t0, a, &[a_public]);
        run(&mut hosts, t0, Duration::from_secs(2), &internet);
        assert_eq!(
            chosen(&hosts[0]).first().map(|c| c.1),
            Some(hosts[1].public)
        );
        assert_eq!(
            chosen(&hosts[1]).first().map(|c| c.1),
            Some(hosts[0].public)
        );
    }

    #[test]
    fn a_clearly_better_path_wins_and_a_dead_one_is_lost() {
        let t0 = Instant::now();
        // Neither is behind NAT; each reaches the other's LAN address too, faster.
        let mut hosts = pair(false, false);
        introduce(&mut hosts, t0);
        run(&mut hosts, t0, Duration::from_secs(1), &lan_and_internet);
        assert_eq!(
            hosts[0].selector.path(&hosts[1].id, t0).map(|p| p.0),
            Some(hosts[1].local)
        );
        // The LAN goes away: after PATH_TIMEOUT the public path takes over.
        let t1 = t0 + Duration::from_secs(1);
        run(&mut hosts, t1, PATH_TIMEOUT + SLOW_INTERVAL * 2, &internet);
        let events: Vec<_> = hosts[0].events.iter().map(|(_, e)| e.clone()).collect();
        assert!(
            events.contains(&PathEvent::Lost { peer: hosts[1].id }),
            "{events:?}"
        );
        assert_eq!(hosts[0].selector.losses(&hosts[1].id), 1);
        assert!(
            matches!(events.last(), Some(PathEvent::Chosen { endpoint, .. }) if *endpoint == hosts[1].public),
            "{events:?}"
        );
    }

    #[test]
    fn a_peer_that_moved_is_not_sought_where_it_was() {
        let t0 = Instant::now();
        let mut hosts = pair(false, false);
        introduce(&mut hosts, t0);
        run(&mut hosts, t0, Duration::from_secs(1), &lan_and_internet);
        assert_eq!(
            hosts[0].selector.path(&hosts[1].id, t0).map(|p| p.0),
            Some(hosts[1].local)
        );
        // B restarts on another port and says so; A's chosen path is gone at once, though
        // its last pong is recent, and the public address, still advertised, takes over.
        let t1 = t0 + Duration::from_secs(1);
        let moved = addr("192.168.2.2:40000");
        let public = hosts[1].public;
        let b = hosts[1].id;
        hosts[0].selector.set_peer(t1, b, &[moved, public]);
        assert_eq!(hosts[0].selector.path(&b, t1).map(|p| p.0), Some(public));
    }

    #[test]
    fn forged_reflected_and_unexpected_frames_are_refused() {
        let t0 = Instant::now();
        let mut hosts = pair(false, false);
        introduce(&mut hosts, t0);
        let from = hosts[1].public;
        // A's own ping, reflected back to it.
        let (_, ping) = hosts[0].selector.poll_transmit(t0).unwrap();
        assert_eq!(
            hosts[0].selector.handle(t0, from, &ping),
            Err(Refused::UnknownPeer)
        );
        // A stranger's frame.
        let mut stranger = host(9, "10.9.9.9:1", "198.51.100.9:1", false);
        stranger
            .selector
            .set_peer(t0, hosts[0].id, &[hosts[0].public]);
        let (_, theirs) = stranger.selector.poll_transmit(t0).unwrap();
        assert_eq!(
            hosts[0].selector.handle(t0, from, &theirs),
            Err(Refused::UnknownPeer)
        );
        // B's genuine ping, tampered with.
        let (_, mut ping_b) = hosts[1].selector.poll_transmit(t0).unwrap();
        ping_b[40] ^= 1;
        assert_eq!(
            hosts[0].selector.handle(t0, from, &ping_b),
            Err(Refused::Frame(FrameError::BadMac))
        );
        // A genuine pong counts once; replayed, it answers nothing.
        let mut fresh = pair(false, false);
        introduce(&mut fresh, t0);
        let (_, ping) = fresh[1].selector.poll_transmit(t0).unwrap();
        fresh[0]
            .selector
            .handle(t0, fresh[1].public, &ping)
            .unwrap();
        let (_, pong) = fresh[0].selector.poll_transmit(t0).unwrap();
        assert_eq!(fresh[1].selector.handle(t0, fresh[0].public, &pong), Ok(()));
        assert_eq!(
            fresh[1].selector.handle(t0, fresh[0].public, &pong),
            Err(Refused::Unexpected)
        );
        assert!(hosts[0].selector.handle(t0, from, b"garbage").is_err());
    }
}
