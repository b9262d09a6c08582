//! Path selection per peer, sans-IO: ping every candidate path of every peer with
//! authenticated probe frames ([`super::frame`]) from the WireGuard port, answer the peers'
//! pings, and choose for each peer the candidate with the best round trip. Both peers ping
//! each other's candidates at once, so each one's NAT opens for the other (hole punching).
//!
//! A candidate is a [`PathAddr`]: a peer's address, or a relay and the channel it knows the
//! session by (the owner adds and strips the relay header; frames here are the bare probes).
//! Direct paths win whenever one answers, however slow: a relayed path is chosen only when
//! no direct one is alive, and the first direct path to answer replaces it at once. Among
//! paths of one kind, the best round trip wins.
//!
//! A ping that arrives on a path we did not know for that peer (its NAT's mapping toward us,
//! or a relay channel) becomes a candidate too. Until a path is chosen, every candidate is
//! pinged every [`FAST_INTERVAL`]; after, every [`SLOW_INTERVAL`], which keeps the NAT
//! mappings open, the round trips current, and the other candidates ready to take over (the
//! relayed ones for failover, the direct ones to replace a relayed path). A chosen path whose
//! pong is overdue is pinged every [`FAST_INTERVAL`] again, with all the others; one that stays
//! silent for [`PATH_TIMEOUT`] is lost, and a better one of its kind replaces it only when
//! clearly better, so paths do not flap.
//!
//! Probe traffic is bounded whatever arrives: rounds are paced by time (never two closer
//! than [`MIN_ROUND_GAP`], however many pings come in), pongs are matched against every
//! ping of the last [`PING_TIMEOUT`] (a window the pacing keeps small, so a burst of rounds
//! cannot push out the pings whose pongs are on their way), and pongs are sent from a
//! budget per peer. A candidate that does not answer is pinged ever less often (from
//! [`FAST_INTERVAL`] up to [`MAX_BACKOFF`]) until it answers, its peer pings us from it, or
//! the chosen path is lost; so a member cannot make the others probe arbitrary addresses
//! at any rate, and addresses no peer could be reached at (loopback, multicast, link-local)
//! are never candidates. [`MAX_PROBES_PER_SECOND`] is the resulting ceiling per peer.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use x25519_dalek::{PublicKey, StaticSecret};

use super::PathAddr;
use super::frame::{self, Frame, FrameError, PONG_LEN, PairKey};
use crate::peer_id::PeerId;

pub const FAST_INTERVAL: Duration = Duration::from_millis(200);
/// Probing of a chosen path: cheap (65 bytes each way per peer), and what tells within
/// [`PATH_TIMEOUT`] that a NAT rebound, an address changed or a relay died.
pub const SLOW_INTERVAL: Duration = Duration::from_secs(1);
/// How long direct candidates are pinged fast while a relayed path carries the traffic: hole
/// punching takes a few round trips more than binding at a relay, so the relay often answers
/// first, and the direct path should replace it in a fraction of a second, not seconds.
pub const PUNCH_WINDOW: Duration = Duration::from_secs(5);
/// Silence after which a path is lost. A chosen path is probed fast once a pong is overdue,
/// so this is one slow probe and about nine fast ones unanswered in a row: at 10% loss a false
/// alarm is rarer than once a year per peer, and a dead path is left within 3 s.
pub const PATH_TIMEOUT: Duration = Duration::from_secs(3);
/// An unanswered ping is forgotten after this (its pong, if late, no longer counts): a path
/// with a round trip up to 2 s is still measured, however fast it is pinged.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Rounds of pings to one peer are never closer than this, whatever arrives: a ping from the
/// peer asks for a round at once (its NAT just opened), and two members answering each
/// other's pings with rounds would otherwise feed each other without bound.
pub const MIN_ROUND_GAP: Duration = Duration::from_millis(100);
/// Pings per candidate whose pong still counts: every ping of the last [`PING_TIMEOUT`], which
/// the pacing bounds.
const PINGS_REMEMBERED: usize = (PING_TIMEOUT.as_millis() / MIN_ROUND_GAP.as_millis()) as usize + 1;
/// Pings to a candidate that has not answered before it is pinged less often: two seconds of
/// fast probing, which is what punching through two NATs takes.
const FREE_PINGS: u32 = 10;
/// The longest wait between pings to a candidate that does not answer: well inside the
/// 30 s a NAT keeps an unanswered mapping, so punching still succeeds once the other side
/// pings, and a peer that names addresses nobody answers at costs ~1 datagram/s for 8 of them.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Pongs per second per peer that are sent (with a burst of [`PONG_BURST`]): twice what a
/// peer probing all its candidates as fast as the pacing allows needs. A backlog of stale
/// pings (after a stall) or a peer probing too fast gets no more.
const PONGS_PER_SECOND: u32 = (MAX_CANDIDATES as u32) * (1000 / MIN_ROUND_GAP.as_millis() as u32);
const PONG_BURST: u32 = 2 * MAX_CANDIDATES as u32;
/// Round-trip samples kept for [`PathSelector::poll_round_trip`] when the owner does not ask.
pub const MAX_ROUND_TRIPS: usize = 1024;
/// Direct candidates per peer, advertised and learned together.
pub const MAX_DIRECT_CANDIDATES: usize = 8;
/// Relayed candidates per peer (a few relays, each on its channel), advertised and learned
/// together. Counted apart from the direct ones, so they never crowd those out.
pub const MAX_RELAYED_CANDIDATES: usize = 4;
/// Candidates per peer in all: up to [`MAX_DIRECT_CANDIDATES`] direct ones and up to
/// [`MAX_RELAYED_CANDIDATES`] relayed ones on top.
pub const MAX_CANDIDATES: usize = MAX_DIRECT_CANDIDATES + MAX_RELAYED_CANDIDATES;
/// The most probe datagrams sent to one peer in any second, in any state: a ping to each
/// candidate per round at most every [`MIN_ROUND_GAP`], and the pong budget.
pub const MAX_PROBES_PER_SECOND: u32 = (MAX_CANDIDATES as u32)
    * (1000 / MIN_ROUND_GAP.as_millis() as u32)
    + PONGS_PER_SECOND
    + PONG_BURST;

/// What the owner acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathEvent {
    /// Send `peer`'s WireGuard traffic to `endpoint` (first choice, a clearly better one, a
    /// direct one replacing a relayed one, or a replacement for one that died).
    Chosen {
        peer: PeerId,
        endpoint: PathAddr,
        rtt: Duration,
    },
    /// The chosen path to `peer` went silent (another may be chosen at once).
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
    /// A ping beyond what the peer's pong budget allows (not answered).
    OverBudget,
}

#[derive(Debug, Clone)]
struct Candidate {
    addr: PathAddr,
    /// Recent unanswered pings: (transaction, sent).
    pings: Vec<([u8; 12], Instant)>,
    rtt: Option<Duration>,
    last_pong: Option<Instant>,
    /// Learned from a ping's source rather than advertised by the peer.
    learned: bool,
    /// Pings sent since the last pong, or since it became a candidate.
    unanswered: u32,
    /// Not pinged before this unless chosen: backing off an address that does not answer.
    next_ping: Instant,
}

impl Candidate {
    fn new(addr: PathAddr, learned: bool, now: Instant) -> Candidate {
        Candidate {
            addr,
            pings: Vec::new(),
            rtt: None,
            last_pong: None,
            learned,
            unanswered: 0,
            next_ping: now,
        }
    }

    /// Pinged at the next round again, as a fresh candidate is.
    fn retry_now(&mut self, now: Instant) {
        self.unanswered = 0;
        self.next_ping = now;
    }

    /// Records a ping sent at `now`, forgetting pings too old to count (their number is
    /// bounded by the pacing; the cap only guards that bound), and schedules the next one.
    fn pinged(&mut self, transaction: [u8; 12], now: Instant) {
        self.pings
            .retain(|&(_, sent)| now.saturating_duration_since(sent) < PING_TIMEOUT);
        if self.pings.len() >= PINGS_REMEMBERED {
            self.pings.remove(0);
        }
        self.pings.push((transaction, now));
        self.unanswered = self.unanswered.saturating_add(1);
        self.next_ping = now + backoff(self.unanswered);
    }

    fn alive(&self, now: Instant) -> Option<Duration> {
        let fresh = self
            .last_pong
            .is_some_and(|at| now.saturating_duration_since(at) < PATH_TIMEOUT);
        self.rtt.filter(|_| fresh)
    }
}

/// How long after its `unanswered`-th unanswered ping a candidate is pinged again (besides
/// the rounds' own pace): not at all for the first [`FREE_PINGS`], then doubling from
/// [`FAST_INTERVAL`] up to [`MAX_BACKOFF`].
fn backoff(unanswered: u32) -> Duration {
    match unanswered.checked_sub(FREE_PINGS) {
        None | Some(0) => Duration::ZERO,
        Some(n) => FAST_INTERVAL
            .saturating_mul(1 << (n - 1).min(16))
            .min(MAX_BACKOFF),
    }
}

/// Whether a peer may name `addr` as a path to it: a relay, or an address a peer could be at.
/// Loopback, unspecified, multicast, broadcast and link-local addresses (and port 0) would
/// make us probe ourselves, a LAN segment or another host's services for the peer's asking.
fn acceptable(addr: PathAddr) -> bool {
    use std::net::IpAddr;
    let ip_ok = match addr.addr.ip() {
        IpAddr::V4(ip) => {
            !(ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_multicast()
                || ip.is_broadcast()
                || ip.is_link_local())
        }
        IpAddr::V6(ip) => {
            !(ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_multicast()
                || ip.is_unicast_link_local())
        }
    };
    ip_ok && addr.addr.port() != 0
}

/// Whether `candidates` has room for one more of `addr`'s kind (direct or relayed).
fn has_room(candidates: &[Candidate], addr: PathAddr) -> bool {
    let limit = if addr.is_relayed() {
        MAX_RELAYED_CANDIDATES
    } else {
        MAX_DIRECT_CANDIDATES
    };
    candidates
        .iter()
        .filter(|c| c.addr.is_relayed() == addr.is_relayed())
        .count()
        < limit
}

#[derive(Debug)]
struct PeerPaths {
    key: PairKey,
    candidates: Vec<Candidate>,
    chosen: Option<PathAddr>,
    next_round: Instant,
    /// The next round is a slow one (the chosen path answers): if its pong becomes overdue
    /// first, probing speeds up then.
    slow: bool,
    /// Until when direct candidates are pinged fast even while a relayed path is chosen
    /// (renewed when the peer advertises a new address).
    punch_until: Instant,
    /// Times the chosen path went silent (each a reconnect, for monitoring).
    losses: u32,
    /// When the last round of pings went out (rounds are at least [`MIN_ROUND_GAP`] apart).
    last_round: Option<Instant>,
    /// What may be spent on pongs (see [`PONGS_PER_SECOND`]).
    pongs: PongBudget,
}

impl PeerPaths {
    /// When the next round may go out: when it is due, but never sooner than
    /// [`MIN_ROUND_GAP`] after the last one.
    fn round_at(&self) -> Instant {
        self.last_round.map_or(self.next_round, |last| {
            self.next_round.max(last + MIN_ROUND_GAP)
        })
    }
}

/// A token bucket for the pongs to one peer: [`PONGS_PER_SECOND`], bursts of [`PONG_BURST`].
#[derive(Debug)]
struct PongBudget {
    tokens: u32,
    /// When the tokens were last topped up.
    at: Instant,
}

impl PongBudget {
    fn new(now: Instant) -> PongBudget {
        PongBudget {
            tokens: PONG_BURST,
            at: now,
        }
    }

    /// Takes one token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let per_token = Duration::from_secs(1) / PONGS_PER_SECOND;
        let elapsed = now.saturating_duration_since(self.at);
        let earned = (elapsed.as_nanos() / per_token.as_nanos()).min(u128::from(PONG_BURST)) as u32;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(PONG_BURST);
            self.at = if self.tokens == PONG_BURST {
                now
            } else {
                self.at + per_token * earned
            };
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// The per-peer path state; see the module documentation.
pub struct PathSelector {
    me: PeerId,
    secret: StaticSecret,
    peers: HashMap<PeerId, PeerPaths>,
    transmits: VecDeque<(PathAddr, Vec<u8>)>,
    events: VecDeque<PathEvent>,
    round_trips: VecDeque<(PeerId, Duration)>,
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
            round_trips: VecDeque::new(),
            random_id: Box::new(random_id),
        }
    }

    /// Starts or updates probing `peer` at `candidates` (its advertised addresses and the
    /// relay channels that reach it; beyond [`MAX_DIRECT_CANDIDATES`] direct ones or
    /// [`MAX_RELAYED_CANDIDATES`] relayed ones, the later ones are ignored). What was
    /// learned about paths it still has is kept, and learned paths that answer stay; a path
    /// it no longer advertises is dropped, even the chosen one (a restarted peer on a new
    /// port must not be sought at the old one until that path times out).
    pub fn set_peer(&mut self, now: Instant, peer: PeerId, candidates: &[PathAddr]) {
        if peer == self.me {
            return;
        }
        let paths = self.peers.entry(peer).or_insert_with(|| PeerPaths {
            key: PairKey::new(&self.secret, &peer),
            candidates: Vec::new(),
            chosen: None,
            next_round: now,
            slow: false,
            punch_until: now + PUNCH_WINDOW,
            losses: 0,
            last_round: None,
            pongs: PongBudget::new(now),
        });
        let mut merged: Vec<Candidate> = Vec::with_capacity(MAX_CANDIDATES);
        for &addr in candidates.iter().filter(|&&a| acceptable(a)) {
            if has_room(&merged, addr) && !merged.iter().any(|c| c.addr == addr) {
                let known = paths.candidates.iter().find(|c| c.addr == addr).cloned();
                if known.is_none() && !addr.is_relayed() {
                    paths.punch_until = now + PUNCH_WINDOW;
                    if paths.chosen.is_some_and(|c| c.is_relayed()) {
                        paths.next_round = now;
                    }
                }
                merged.push(known.unwrap_or_else(|| Candidate::new(addr, false, now)));
            }
        }
        // Learned paths that answer stay, after the advertised ones.
        for c in &paths.candidates {
            if has_room(&merged, c.addr)
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
    pub fn path(&self, peer: &PeerId, now: Instant) -> Option<(PathAddr, Duration)> {
        let paths = self.peers.get(peer)?;
        let chosen = paths.chosen?;
        let c = paths.candidates.iter().find(|c| c.addr == chosen)?;
        Some((chosen, c.alive(now).or(c.rtt)?))
    }

    /// How many times the chosen path to `peer` went silent since probing began.
    pub fn losses(&self, peer: &PeerId) -> u32 {
        self.peers.get(peer).map_or(0, |p| p.losses)
    }

    /// Takes a probe frame that arrived on `from`: from an address on the WireGuard port, or
    /// through a relay channel (its relay header already stripped).
    pub fn handle(&mut self, now: Instant, from: PathAddr, datagram: &[u8]) -> Result<(), Refused> {
        let sender = frame::claimed_sender(datagram).map_err(Refused::Frame)?;
        if sender == self.me {
            return Err(Refused::UnknownPeer);
        }
        let paths = self.peers.get_mut(&sender).ok_or(Refused::UnknownPeer)?;
        match frame::decode(datagram, &paths.key).map_err(Refused::Frame)? {
            Frame::Ping { transaction, .. } => {
                if !acceptable(from) {
                    return Err(Refused::UnknownPeer);
                }
                if !paths.pongs.take(now) {
                    return Err(Refused::OverBudget);
                }
                // Through a relay, the source we see is the relay's.
                let pong = Frame::Pong {
                    sender: self.me,
                    transaction,
                    observed: from.addr,
                };
                let mut buf = [0; PONG_LEN];
                let len = frame::encode(&pong, &paths.key, &mut buf);
                self.transmits.push_back((from, buf[..len].to_vec()));
                // The peer's NAT mapping toward us, or a relay channel it reaches us on: a
                // candidate we could not have known.
                match paths.candidates.iter().position(|c| c.addr == from) {
                    // The peer is there: back to pinging it at every round.
                    Some(i) => paths.candidates[i].retry_now(now),
                    None if has_room(&paths.candidates, from) => {
                        paths.candidates.push(Candidate::new(from, true, now));
                        paths.next_round = now;
                    }
                    None => {}
                }
                // Its ping got through, so ours may now too (its NAT just opened): ask at once
                // rather than at the next round (the pacing still holds).
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
                let rtt = now.saturating_duration_since(sent);
                c.rtt = Some(rtt);
                c.last_pong = Some(now);
                c.retry_now(now);
                let addr = c.addr;
                Self::choose(sender, paths, now, &mut self.events);
                if paths.chosen == Some(addr) {
                    if self.round_trips.len() == MAX_ROUND_TRIPS {
                        self.round_trips.pop_front();
                    }
                    self.round_trips.push_back((sender, rtt));
                }
                Ok(())
            }
        }
    }

    /// Picks the best live candidate, a direct one whenever one is alive: a live direct path
    /// replaces a relayed one at once, and a relayed one is chosen only when no direct one
    /// is alive. Otherwise switches only when the chosen one died or another of its kind is
    /// clearly better (by a fifth of the round trip and at least a millisecond).
    fn choose(peer: PeerId, paths: &mut PeerPaths, now: Instant, events: &mut VecDeque<PathEvent>) {
        let best_of = |relayed: bool| {
            paths
                .candidates
                .iter()
                .filter(|c| c.addr.is_relayed() == relayed)
                .filter_map(|c| c.alive(now).map(|rtt| (c.addr, rtt)))
                .min_by_key(|&(_, rtt)| rtt)
        };
        let best = best_of(false).or_else(|| best_of(true));
        let current = paths.chosen.and_then(|addr| {
            paths
                .candidates
                .iter()
                .find(|c| c.addr == addr)
                .and_then(|c| c.alive(now))
                .map(|rtt| (addr, rtt))
        });
        let switch = match (best, current) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some((addr, rtt)), Some((cur_addr, cur))) => {
                addr != cur_addr
                    && match (cur_addr.is_relayed(), addr.is_relayed()) {
                        // Direct beats relayed, however slow.
                        (true, false) => true,
                        (false, true) => false,
                        _ => rtt + (cur / 5).max(Duration::from_millis(1)) < cur,
                    }
            }
        };
        if let (true, Some((endpoint, rtt))) = (switch, best) {
            paths.chosen = Some(endpoint);
            // Still punching toward a direct path: keep asking fast.
            let punching = endpoint.is_relayed() && now < paths.punch_until;
            paths.slow = !punching;
            paths.next_round = now
                + if punching {
                    FAST_INTERVAL
                } else {
                    SLOW_INTERVAL
                };
            events.push_back(PathEvent::Chosen {
                peer,
                endpoint,
                rtt,
            });
        }
    }

    /// The next datagram to send, if one is due at `now`, and the path to send it on. Call
    /// until `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(PathAddr, Vec<u8>)> {
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
                    // Look again everywhere a path was: one of them may be back.
                    for c in paths.candidates.iter_mut().filter(|c| c.rtt.is_some()) {
                        c.retry_now(now);
                    }
                    self.events.push_back(PathEvent::Lost { peer });
                    Self::choose(peer, paths, now, &mut self.events);
                }
            }
            // A chosen path whose last pong is overdue: find out fast whether it is gone, and
            // have the others' round trips fresh for the choice that follows.
            let overdue = paths.chosen.is_some_and(|chosen| {
                paths.candidates.iter().any(|c| {
                    c.addr == chosen
                        && c.last_pong.is_some_and(|at| {
                            let due = SLOW_INTERVAL + FAST_INTERVAL + c.rtt.unwrap_or_default();
                            now.saturating_duration_since(at) > due
                        })
                })
            });
            if overdue && paths.next_round > now + FAST_INTERVAL {
                paths.next_round = now;
            }
            if now < paths.round_at() {
                continue;
            }
            paths.last_round = Some(now);
            let punching = paths.chosen.is_some_and(|c| c.is_relayed()) && now < paths.punch_until;
            paths.slow = paths.chosen.is_some() && !overdue && !punching;
            paths.next_round = now
                + if paths.slow {
                    SLOW_INTERVAL
                } else {
                    FAST_INTERVAL
                };
            let chosen = paths.chosen;
            for c in &mut paths.candidates {
                if now < c.next_ping && Some(c.addr) != chosen {
                    continue;
                }
                let transaction = (self.random_id)();
                c.pinged(transaction, now);
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
        self.peers
            .values()
            .map(|p| {
                // When the chosen path's pong becomes overdue (fast probing starts then).
                let overdue_at = p.chosen.filter(|_| p.slow).and_then(|chosen| {
                    let c = p.candidates.iter().find(|c| c.addr == chosen)?;
                    let due = SLOW_INTERVAL + FAST_INTERVAL + c.rtt.unwrap_or_default();
                    Some(c.last_pong? + due + Duration::from_millis(1))
                });
                overdue_at.map_or(p.round_at(), |at| at.min(p.round_at()))
            })
            .min()
    }

    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }

    /// The round trips measured on each peer's chosen path since the last call, oldest first
    /// (for statistics; at most [`MAX_ROUND_TRIPS`] are kept).
    pub fn poll_round_trip(&mut self) -> Option<(PeerId, Duration)> {
        self.round_trips.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// How a host's NAT treats datagrams.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Nat {
        /// No NAT: the host is reached at its local address and its public one.
        Open,
        /// Keeps the port; admits only what answers an address and port it sent to.
        PortRestricted,
        /// A new public port per destination (40000 on); admits only what that destination
        /// sends to that port. Two of these never let each other's pings through.
        Symmetric,
    }

    /// One side of the simulated internet: a host with a local address, maybe behind a NAT.
    struct Host {
        selector: PathSelector,
        id: PeerId,
        local: SocketAddr,
        public: SocketAddr,
        nat: Nat,
        /// Every address it sent to, in order (what its NAT has mappings for).
        sent_to: Vec<SocketAddr>,
        events: Vec<(Instant, PathEvent)>,
        /// When each probe datagram was sent, and where.
        sent: Vec<(Instant, PathAddr)>,
        /// Frozen until then (a laptop suspended, a process stopped): nothing is polled, and
        /// what arrives waits in `backlog`, as in a socket's buffer.
        stalled_until: Option<Instant>,
        backlog: Vec<(PathAddr, SocketAddr, Vec<u8>)>,
    }

    impl Host {
        /// The source the world sees for what this host sends to `to`, once it has sent there.
        fn mapped(&self, to: SocketAddr) -> Option<SocketAddr> {
            match self.nat {
                Nat::Open | Nat::PortRestricted => Some(self.public),
                Nat::Symmetric => {
                    let i = self.sent_to.iter().position(|&s| s == to)?;
                    Some(SocketAddr::new(self.public.ip(), 40000 + i as u16))
                }
            }
        }

        /// Whether a datagram to `to` is for this host.
        fn reached_at(&self, to: SocketAddr) -> bool {
            match self.nat {
                Nat::Open => to == self.public || to == self.local,
                Nat::PortRestricted => to == self.public,
                Nat::Symmetric => to.ip() == self.public.ip(),
            }
        }

        /// Whether its NAT lets in a datagram from `from` to `to`.
        fn admits(&self, from: SocketAddr, to: SocketAddr) -> bool {
            match self.nat {
                Nat::Open => true,
                Nat::PortRestricted => self.sent_to.contains(&from),
                Nat::Symmetric => self.mapped(from) == Some(to),
            }
        }
    }

    fn host(seed: u8, local: &str, public: &str, nat: Nat) -> Host {
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
            nat,
            sent_to: Vec::new(),
            events: Vec::new(),
            sent: Vec::new(),
            stalled_until: None,
            backlog: Vec::new(),
        }
    }

    /// A relay joining the two hosts: host `i` sends to the other on `channels[i]`, and hears
    /// the other on it. It forwards to where the host's NAT maps its traffic to the relay
    /// (the host's allocation), so a host must have sent to it first.
    struct Relay {
        addr: SocketAddr,
        channels: [u32; 2],
    }

    impl Relay {
        /// The path through this relay as host `i` knows it.
        fn path(&self, i: usize) -> PathAddr {
            PathAddr::relayed(self.addr, self.channels[i])
        }
    }

    /// Datagrams in flight: (arrival, to host index, source as seen, address it arrives at,
    /// bytes).
    type InFlight = Vec<(Instant, usize, PathAddr, SocketAddr, Vec<u8>)>;

    /// The one-way delay on a path (through the relay, for a relayed one), `None` for
    /// unreachable.
    type Delay<'a> = &'a dyn Fn(PathAddr) -> Option<Duration>;

    /// Runs both hosts for `duration` in 5 ms steps. As the daemon does, a host sends what
    /// is due after every datagram it takes, and at every step.
    fn run(hosts: &mut [Host; 2], relays: &[Relay], t0: Instant, duration: Duration, delay: Delay) {
        let mut flight: InFlight = Vec::new();
        let mut now = t0;
        while now < t0 + duration {
            for i in 0..2 {
                if hosts[i].stalled_until.is_some_and(|until| now < until) {
                    continue;
                }
                // Back from a stall: the socket hands over everything that queued at once.
                for (from, at, bytes) in std::mem::take(&mut hosts[i].backlog) {
                    deliver(
                        hosts,
                        relays,
                        i,
                        now,
                        (from, at, &bytes),
                        delay,
                        &mut flight,
                    );
                }
                transmit(hosts, relays, i, now, delay, &mut flight);
            }
            now += ms(5);
            let (due, later): (InFlight, InFlight) = flight.into_iter().partition(|f| f.0 <= now);
            flight = later;
            for (_, k, from, at, bytes) in due {
                if hosts[k].stalled_until.is_some_and(|until| now < until) {
                    hosts[k].backlog.push((from, at, bytes));
                    continue;
                }
                deliver(
                    hosts,
                    relays,
                    k,
                    now,
                    (from, at, &bytes),
                    delay,
                    &mut flight,
                );
            }
        }
    }

    /// Host `k` takes a datagram from `from` that arrived at `at` (if its NAT lets it in), and
    /// sends what that made due.
    fn deliver(
        hosts: &mut [Host; 2],
        relays: &[Relay],
        k: usize,
        now: Instant,
        (from, at, bytes): (PathAddr, SocketAddr, &[u8]),
        delay: Delay,
        flight: &mut InFlight,
    ) {
        if !hosts[k].admits(from.addr, at) {
            return; // the NAT drops what answers nothing it sent
        }
        let _ = hosts[k].selector.handle(now, from, bytes);
        transmit(hosts, relays, k, now, delay, flight);
    }

    /// Sends what host `i` has due, and collects its events.
    fn transmit(
        hosts: &mut [Host; 2],
        relays: &[Relay],
        i: usize,
        now: Instant,
        delay: Delay,
        flight: &mut InFlight,
    ) {
        let j = 1 - i;
        while let Some((to, bytes)) = hosts[i].selector.poll_transmit(now) {
            hosts[i].sent.push((now, to));
            if !hosts[i].sent_to.contains(&to.addr) {
                hosts[i].sent_to.push(to.addr);
            }
            let Some(d) = delay(to) else {
                continue;
            };
            let leg = match to.relay_channel {
                None => hosts
                    .iter()
                    .position(|h| h.reached_at(to.addr))
                    .zip(hosts[i].mapped(to.addr))
                    .map(|(k, from)| (k, PathAddr::direct(from), to.addr)),
                Some(channel) => relays
                    .iter()
                    .find(|r| r.addr == to.addr && r.channels[i] == channel)
                    .and_then(|r| Some((j, r.path(j), hosts[j].mapped(r.addr)?))),
            };
            if let Some((k, from, at)) = leg {
                flight.push((now + d, k, from, at, bytes));
            }
        }
        while let Some(e) = hosts[i].selector.poll_event() {
            hosts[i].events.push((now, e));
        }
    }

    /// A genuine ping of host `seed`'s (see [`host`]) to `to`, numbered `n`: what a peer
    /// could send at any rate it likes.
    fn ping_from(seed: u8, to: PeerId, n: u32) -> Vec<u8> {
        let mut transaction = [0; 12];
        transaction[..4].copy_from_slice(&n.to_le_bytes());
        let sender = PeerId(PublicKey::from(&StaticSecret::from([seed; 32])).to_bytes());
        let key = PairKey::new(&StaticSecret::from([seed; 32]), &to);
        let mut buf = [0; PONG_LEN];
        let len = frame::encode(
            &Frame::Ping {
                sender,
                transaction,
            },
            &key,
            &mut buf,
        );
        buf[..len].to_vec()
    }

    /// The most probe datagrams `h` sent in any one second from `since` on.
    fn busiest_second(h: &Host, since: Instant) -> usize {
        let times: Vec<Instant> = h.sent.iter().map(|s| s.0).filter(|&t| t >= since).collect();
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|&&t| t - times[i] < Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    fn chosen(h: &Host) -> Vec<(Duration, PathAddr)> {
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

    /// The events of `h` from `since` on.
    fn events_since(h: &Host, since: Instant) -> Vec<(Instant, PathEvent)> {
        h.events
            .iter()
            .filter(|(at, _)| *at >= since)
            .cloned()
            .collect()
    }

    fn pair(a: Nat, b: Nat) -> [Host; 2] {
        [
            host(1, "192.168.1.2:51820", "203.0.113.1:51820", a),
            host(2, "192.168.2.2:51820", "203.0.113.2:51820", b),
        ]
    }

    /// Each host learns the other's local and public addresses, then the relayed paths.
    fn introduce(hosts: &mut [Host; 2], relays: &[Relay], t0: Instant) {
        for i in 0..2 {
            let other = &hosts[1 - i];
            let mut candidates = vec![PathAddr::direct(other.local), other.public.into()];
            candidates.extend(relays.iter().map(|r| r.path(i)));
            let id = other.id;
            hosts[i].selector.set_peer(t0, id, &candidates);
        }
    }

    fn public(to: PathAddr) -> bool {
        to.addr.ip().to_string().starts_with("203.")
    }

    fn internet(to: PathAddr) -> Option<Duration> {
        // Only public addresses are routed: 10 ms each way, 25 ms through a relay.
        public(to).then_some(ms(if to.is_relayed() { 25 } else { 10 }))
    }

    /// Something between the hosts drops all direct traffic; relays still get through.
    fn relays_only(to: PathAddr) -> Option<Duration> {
        internet(to).filter(|_| to.is_relayed())
    }

    fn lan_and_internet(to: PathAddr) -> Option<Duration> {
        // LAN addresses are routed too, and are faster.
        Some(if to.addr.ip().to_string().starts_with("192.") {
            ms(1)
        } else {
            ms(15)
        })
    }

    fn relay(addr_: &str, channels: [u32; 2]) -> Relay {
        Relay {
            addr: addr(addr_),
            channels,
        }
    }

    #[test]
    fn two_port_restricted_nats_punch_through_at_once() {
        let t0 = Instant::now();
        let mut hosts = pair(Nat::PortRestricted, Nat::PortRestricted);
        introduce(&mut hosts, &[], t0);
        run(&mut hosts, &[], t0, Duration::from_secs(2), &internet);
        for (i, other) in [(0, 1), (1, 0)] {
            let got = chosen(&hosts[i]);
            assert_eq!(got.len(), 1, "host {i}: {:?}", hosts[i].events);
            assert_eq!(got[0].1, hosts[other].public.into());
            let (endpoint, rtt) = hosts[i]
                .selector
                .path(&hosts[other].id, t0 + Duration::from_secs(2))
                .unwrap();
            assert_eq!(endpoint, hosts[other].public.into());
            assert!(rtt >= ms(20) && rtt < ms(40), "{rtt:?}");
        }
        // The first round's pings die at the other NAT; the second gets through.
        let first = hosts[0].events[0].0 - t0;
        assert!(first < ms(500), "chosen after {first:?}");
        // Round trips on the chosen path are handed out for statistics.
        let peer = hosts[1].id;
        let samples: Vec<_> = std::iter::from_fn(|| hosts[0].selector.poll_round_trip()).collect();
        assert!(
            !samples.is_empty()
                && samples
                    .iter()
                    .all(|&(p, rtt)| p == peer && rtt >= ms(20) && rtt < ms(40)),
            "{samples:?}"
        );
    }

    #[test]
    fn a_peer_whose_address_nobody_advertised_is_learned_from_its_pings() {
        let t0 = Instant::now();
        let mut hosts = pair(Nat::Open, Nat::PortRestricted);
        // B advertises only its unreachable LAN address; A advertises its public one.
        let (a, b) = (hosts[0].id, hosts[1].id);
        let (b_local, a_public) = (hosts[1].local, hosts[0].public);
        hosts[0].selector.set_peer(t0, b, &[b_local.into()]);
        hosts[1].selector.set_peer(t0, a, &[a_public.into()]);
        run(&mut hosts, &[], t0, Duration::from_secs(2), &internet);
        assert_eq!(
            chosen(&hosts[0]).first().map(|c| c.1),
            Some(hosts[1].public.into())
        );
        assert_eq!(
            chosen(&hosts[1]).first().map(|c| c.1),
            Some(hosts[0].public.into())
        );
    }

    #[test]
    fn a_clearly_better_path_wins_and_a_dead_one_is_lost() {
        let t0 = Instant::now();
        // Neither is behind NAT; each reaches the other's LAN address too, faster.
        let mut hosts = pair(Nat::Open, Nat::Open);
        introduce(&mut hosts, &[], t0);
        run(
            &mut hosts,
            &[],
            t0,
            Duration::from_secs(1),
            &lan_and_internet,
        );
        assert_eq!(
            hosts[0].selector.path(&hosts[1].id, t0).map(|p| p.0),
            Some(hosts[1].local.into())
        );
        // The LAN goes away: after PATH_TIMEOUT the public path takes over.
        let t1 = t0 + Duration::from_secs(1);
        run(
            &mut hosts,
            &[],
            t1,
            PATH_TIMEOUT + SLOW_INTERVAL * 2,
            &internet,
        );
        let events: Vec<_> = hosts[0].events.iter().map(|(_, e)| e.clone()).collect();
        assert!(
            events.contains(&PathEvent::Lost { peer: hosts[1].id }),
            "{events:?}"
        );
        assert_eq!(hosts[0].selector.losses(&hosts[1].id), 1);
        assert!(
            matches!(events.last(), Some(PathEvent::Chosen { endpoint, .. }) if *endpoint == hosts[1].public.into()),
            "{events:?}"
        );
    }

    #[test]
    fn a_peer_that_moved_is_not_sought_where_it_was() {
        let t0 = Instant::now();
        let mut hosts = pair(Nat::Open, Nat::Open);
        introduce(&mut hosts, &[], t0);
        run(
            &mut hosts,
            &[],
            t0,
            Duration::from_secs(1),
            &lan_and_internet,
        );
        assert_eq!(
            hosts[0].selector.path(&hosts[1].id, t0).map(|p| p.0),
            Some(hosts[1].local.into())
        );
        // B restarts on another port and says so; A's chosen path is gone at once, though
        // its last pong is recent, and the public address, still advertised, takes over.
        let t1 = t0 + Duration::from_secs(1);
        let moved = PathAddr::direct(addr("192.168.2.2:40000"));
        let public = PathAddr::direct(hosts[1].public);
        let b = hosts[1].id;
        hosts[0].selector.set_peer(t1, b, &[moved, public]);
        assert_eq!(hosts[0].selector.path(&b, t1).map(|p| p.0), Some(public));
    }

    #[test]
    fn forged_reflected_and_unexpected_frames_are_refused() {
        let t0 = Instant::now();
        let mut hosts = pair(Nat::Open, Nat::Open);
        introduce(&mut hosts, &[], t0);
        let from = PathAddr::direct(hosts[1].public);
        // A's own ping, reflected back to it.
        let (_, ping) = hosts[0].selector.poll_transmit(t0).unwrap();
        assert_eq!(
            hosts[0].selector.handle(t0, from, &ping),
            Err(Refused::UnknownPeer)
        );
        // A stranger's frame.
        let mut stranger = host(9, "10.9.9.9:1", "198.51.100.9:1", Nat::Open);
        stranger
            .selector
            .set_peer(t0, hosts[0].id, &[hosts[0].public.into()]);
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
        let mut fresh = pair(Nat::Open, Nat::Open);
        introduce(&mut fresh, &[], t0);
        let (_, ping) = fresh[1].selector.poll_transmit(t0).unwrap();
        fresh[0]
            .selector
            .handle(t0, fresh[1].public.into(), &ping)
            .unwrap();
        let (_, pong) = fresh[0].selector.poll_transmit(t0).unwrap();
        let a_public = PathAddr::direct(fresh[0].public);
        assert_eq!(fresh[1].selector.handle(t0, a_public, &pong), Ok(()));
        assert_eq!(
            fresh[1].selector.handle(t0, a_public, &pong),
            Err(Refused::Unexpected)
        );
        assert!(hosts[0].selector.handle(t0, from, b"garbage").is_err());
    }

    #[test]
    fn two_symmetric_nats_meet_through_a_relay() {
        let t0 = Instant::now();
        let mut hosts = pair(Nat::Symmetric, Nat::Symmetric);
        let relays = [relay("203.0.113.100:3479", [0xa0, 0xb1])];
        introduce(&mut hosts, &relays, t0);
        run(&mut hosts, &relays, t0, Duration::from_secs(3), &internet);
        for (i, other) in [(0, 1), (1, 0)] {
            let got = chosen(&hosts[i]);
            assert_eq!(got.len(), 1, "host {i}: {:?}", hosts[i].events);
            assert_eq!(got[0].1, relays[0].path(i));
            let (endpoint, rtt) = hosts[i]
                .selector
                .path(&hosts[other].id, t0 + Duration::from_secs(3))
                .unwrap();
            assert_eq!(endpoint, relays[0].path(i));
            assert!(rtt >= ms(50) && rtt < ms(70), "{rtt:?}");
            assert_eq!(hosts[i].selector.losses(&hosts[other].id), 0);
        }
        // The direct pings were sent all along, and all died at the other NAT.
        assert!(hosts[0].sent_to.contains(&hosts[1].public));
    }

    #[test]
    fn a_direct_path_replaces_a_relayed_one_as_soon_as_it_answers() {
        let t0 = Instant::now();
        let mut hosts = pair(Nat::PortRestricted, Nat::PortRestricted);
        let relays = [relay("203.0.113.100:3479", [7, 9])];
        introduce(&mut hosts, &relays, t0);
        run(
            &mut hosts,
            &relays,
            t0,
            Duration::from_secs(2),
            &relays_only,
        );
        for (i, other) in [(0, 1), (1, 0)] {
            let path = hosts[i].selector.path(&hosts[other].id, t0).map(|p| p.0);
            assert_eq!(path, Some(relays[0].path(i)), "host {i}");
        }
        // Direct traffic gets through from now on, though slower than the relay: direct
        // wins anyway, as soon as it answers, while the relayed path still works.
        let t1 = t0 + Duration::from_secs(2);
        let slow_direct =
            |to: PathAddr| internet(to).map(|d| if to.is_relayed() { d } else { ms(40) });
        run(
            &mut hosts,
            &relays,
            t1,
            Duration::from_secs(3),
            &slow_direct,
        );
        for (i, other) in [(0, 1), (1, 0)] {
            let events = events_since(&hosts[i], t1);
            let [
                (
                    at,
                    PathEvent::Chosen {
                        peer,
                        endpoint,
                        rtt,
                    },
                ),
            ] = events.as_slice()
            else {
                panic!("host {i}: {events:?}");
            };
            assert_eq!(*peer, hosts[other].id);
            assert_eq!(*endpoint, hosts[other].public.into());
            assert!(*rtt >= ms(80) && *rtt < ms(100), "{rtt:?}");
            // Within one round of probing and a round trip, not after the relayed path died.
            assert!(*at - t1 <= SLOW_INTERVAL + ms(150), "after {:?}", *at - t1);
            assert_eq!(hosts[i].selector.losses(&hosts[other].id), 0);
        }
    }

    #[test]
    fn when_the_direct_path_dies_a_relayed_one_takes_over_in_the_same_poll() {
        let t0 = Instant::now();
        let mut hosts = pair(Nat::PortRestricted, Nat::PortRestricted);
        let relays = [relay("203.0.113.100:3479", [7, 9])];
        introduce(&mut hosts, &relays, t0);
        run(&mut hosts, &relays, t0, Duration::from_secs(2), &internet);
        for (i, other) in [(0, 1), (1, 0)] {
            let got = chosen(&hosts[i]);
            assert_eq!(got.len(), 1, "host {i}: {:?}", hosts[i].events);
            assert_eq!(got[0].1, hosts[other].public.into());
        }
        // Direct traffic stops getting through; the relay, probed all along, is alive.
        let t1 = t0 + Duration::from_secs(2);
        run(
            &mut hosts,
            &relays,
            t1,
            PATH_TIMEOUT + SLOW_INTERVAL * 2,
            &relays_only,
        );
        for (i, other) in [(0, 1), (1, 0)] {
            let events = events_since(&hosts[i], t1);
            let peer = hosts[other].id;
            let [
                (lost_at, PathEvent::Lost { peer: lost }),
                (chosen_at, PathEvent::Chosen { endpoint, .. }),
            ] = events.as_slice()
            else {
                panic!("host {i}: {events:?}");
            };
            assert_eq!((*lost, *endpoint), (peer, relays[0].path(i)));
            assert_eq!(lost_at, chosen_at, "host {i}: not in the same poll");
            assert!(
                *lost_at - t1 <= PATH_TIMEOUT + FAST_INTERVAL,
                "{:?}",
                *lost_at - t1
            );
            assert_eq!(hosts[i].selector.losses(&peer), 1);
            let now = t1 + PATH_TIMEOUT + SLOW_INTERVAL * 2;
            assert_eq!(
                hosts[i].selector.path(&peer, now).map(|p| p.0),
                Some(relays[0].path(i))
            );
        }
    }

    #[test]
    fn the_better_of_two_relays_wins_and_the_other_takes_over_when_it_dies() {
        let t0 = Instant::now();
        let mut hosts = pair(Nat::Symmetric, Nat::Symmetric);
        let relays = [
            relay("203.0.113.100:3479", [1, 2]),
            relay("203.0.113.101:3479", [3, 4]),
        ];
        let (far, near) = (&relays[0], &relays[1]);
        let (far_addr, near_addr) = (far.addr, near.addr);
        let both = move |to: PathAddr| match to.addr {
            a if a == far_addr => Some(ms(40)),
            a if a == near_addr => Some(ms(15)),
            _ => None,
        };
        let far_only = move |to: PathAddr| both(to).filter(|_| to.addr == far_addr);
        introduce(&mut hosts, &relays, t0);
        let (a, b) = (hosts[0].id, hosts[1].id);

        // Both relays work: the near one, 30 ms round trip against 80, is chosen.
        run(&mut hosts, &relays, t0, Duration::from_secs(2), &both);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(chosen(&hosts[0]), [(Duration::ZERO, near.path(0))]);
        assert_eq!(
            hosts[1].selector.path(&a, t1).map(|p| p.0),
            Some(near.path(1))
        );

        // The near one dies: the far one takes over in the same poll.
        run(
            &mut hosts,
            &relays,
            t1,
            PATH_TIMEOUT + SLOW_INTERVAL * 2,
            &far_only,
        );
        let events = events_since(&hosts[0], t1);
        let [
            (lost_at, PathEvent::Lost { .. }),
            (chosen_at, PathEvent::Chosen { endpoint, .. }),
        ] = events.as_slice()
        else {
            panic!("{events:?}");
        };
        assert_eq!((lost_at, *endpoint), (chosen_at, far.path(0)));
        assert_eq!(hosts[0].selector.losses(&b), 1);

        // The near one is back: clearly better, it replaces the far one, which still works.
        let t2 = t1 + PATH_TIMEOUT + SLOW_INTERVAL * 2;
        run(&mut hosts, &relays, t2, Duration::from_secs(2), &both);
        for (i, other) in [(0, b), (1, a)] {
            let events = events_since(&hosts[i], t2);
            assert!(
                matches!(events.as_slice(), [(_, PathEvent::Chosen { endpoint, .. })] if *endpoint == relays[1].path(i)),
                "host {i}: {events:?}"
            );
            assert_eq!(hosts[i].selector.losses(&other), 1);
        }
    }

    #[test]
    fn a_relay_channel_nobody_advertised_is_learned_from_its_pings() {
        let t0 = Instant::now();
        let mut hosts = pair(Nat::Open, Nat::PortRestricted);
        let relays = [relay("203.0.113.100:3479", [5, 6])];
        // A knows only B's unreachable LAN address; B knows A only through the relay.
        let (a, b) = (hosts[0].id, hosts[1].id);
        let b_local = hosts[1].local;
        hosts[0].selector.set_peer(t0, b, &[b_local.into()]);
        hosts[1].selector.set_peer(t0, a, &[relays[0].path(1)]);
        run(&mut hosts, &relays, t0, Duration::from_secs(2), &internet);
        assert_eq!(
            chosen(&hosts[0]).first().map(|c| c.1),
            Some(relays[0].path(0))
        );
        assert_eq!(
            chosen(&hosts[1]).first().map(|c| c.1),
            Some(relays[0].path(1))
        );
    }

    #[test]
    fn relayed_candidates_do_not_crowd_out_direct_ones() {
        let t0 = Instant::now();
        let mut a = host(1, "192.168.1.2:51820", "203.0.113.1:51820", Nat::Open);
        let mut b = host(2, "192.168.2.2:51820", "203.0.113.2:51820", Nat::Open);
        let relay_addr = addr("203.0.113.100:3479");
        let relayed: Vec<PathAddr> = (0..6).map(|c| PathAddr::relayed(relay_addr, c)).collect();
        let direct: Vec<PathAddr> = (0..10)
            .map(|p| PathAddr::direct(SocketAddr::new(b.public.ip(), 50000 + p)))
            .collect();
        // Relayed ones first: they take only their own share.
        let advertised: Vec<PathAddr> = relayed.iter().chain(&direct).copied().collect();
        a.selector.set_peer(t0, b.id, &advertised);
        let kept: Vec<PathAddr> = relayed[..MAX_RELAYED_CANDIDATES]
            .iter()
            .chain(&direct[..MAX_DIRECT_CANDIDATES])
            .copied()
            .collect();
        assert_eq!(kept.len(), MAX_CANDIDATES);
        let mut sent = Vec::new();
        while let Some((to, _)) = a.selector.poll_transmit(t0) {
            sent.push(to);
        }
        assert_eq!(sent, kept);
        // A ping on yet another relay channel is answered there, but not learned: the
        // relayed share is full.
        b.selector.set_peer(t0, a.id, &[a.public.into()]);
        let (_, ping) = b.selector.poll_transmit(t0).unwrap();
        let extra = PathAddr::relayed(relay_addr, 99);
        assert_eq!(a.selector.handle(t0, extra, &ping), Ok(()));
        let (to, _) = a.selector.poll_transmit(t0).unwrap();
        assert_eq!(to, extra);
        // The round the ping asked for waits for the pacing.
        assert_eq!(a.selector.poll_transmit(t0), None);
        let paced = t0 + MIN_ROUND_GAP;
        assert_eq!(a.selector.poll_timeout(), Some(paced));
        let mut sent = Vec::new();
        while let Some((to, _)) = a.selector.poll_transmit(paced) {
            sent.push(to);
        }
        assert_eq!(sent, kept);
    }

    /// A member stops for a while (a laptop suspended, a daemon held up) and comes back to
    /// a socket full of the other's pings. Both must be direct again within 5 s, and neither
    /// may answer the backlog with rounds of its own that feed the other's (the storm this
    /// once was: 50–150k probes a second that never matched a ping and never ended).
    #[test]
    fn after_a_stall_of_1_to_30_s_both_are_direct_again_within_5_s_and_probing_stays_bounded() {
        for stall in [1, 3, 6, 10, 30].map(Duration::from_secs) {
            let t0 = Instant::now();
            let mut hosts = pair(Nat::PortRestricted, Nat::PortRestricted);
            introduce(&mut hosts, &[], t0);
            run(&mut hosts, &[], t0, Duration::from_secs(2), &internet);
            let t1 = t0 + Duration::from_secs(2);
            let resumed = t1 + stall;
            hosts[1].stalled_until = Some(resumed);
            let end = resumed + Duration::from_secs(8);
            run(&mut hosts, &[], t1, end - t1, &internet);
            for (i, other) in [(0, 1), (1, 0)] {
                let h = &hosts[i];
                let peer = hosts[other].id;
                let direct = PathAddr::direct(hosts[other].public);
                assert_eq!(
                    h.selector.path(&peer, end).map(|p| p.0),
                    Some(direct),
                    "host {i} after a {stall:?} stall: {:?}",
                    events_since(h, t1)
                );
                // Whatever happened since it resumed settled within 5 s, on the direct path.
                let after = events_since(h, resumed);
                assert!(
                    after
                        .iter()
                        .all(|(at, _)| *at - resumed <= Duration::from_secs(5)),
                    "host {i} after a {stall:?} stall: {after:?}"
                );
                if let Some((_, last)) = after.last() {
                    assert!(
                        matches!(last, PathEvent::Chosen { endpoint, .. } if *endpoint == direct),
                        "host {i} after a {stall:?} stall: {after:?}"
                    );
                }
                let busiest = busiest_second(h, t0);
                assert!(
                    busiest <= MAX_PROBES_PER_SECOND as usize,
                    "host {i} after a {stall:?} stall: {busiest} probes in one second"
                );
                // Two candidates, one answering: a few probes a second, once settled.
                let settled = busiest_second(h, end - Duration::from_secs(2));
                let back = after.last().map_or(Duration::ZERO, |(at, _)| *at - resumed);
                eprintln!(
                    "stall {stall:?}, host {i}: settled {back:?} after resuming; at most \
                     {busiest} probes in a second, {settled} once settled"
                );
                assert!(
                    settled <= 6,
                    "host {i} after a {stall:?} stall: still {settled} probes a second"
                );
            }
        }
    }

    /// A pong that takes long still counts, however many pings of the peer's ask for rounds
    /// meanwhile: the pacing keeps rounds apart, and every ping of the window is remembered.
    #[test]
    fn a_slow_pong_still_counts_however_many_pings_arrive_meanwhile() {
        let t0 = Instant::now();
        let mut hosts = pair(Nat::Open, Nat::Open);
        let (a, b) = (hosts[0].id, hosts[1].id);
        let b_public = PathAddr::direct(hosts[1].public);
        let a_public = PathAddr::direct(hosts[0].public);
        hosts[0].selector.set_peer(t0, b, &[b_public]);
        hosts[1].selector.set_peer(t0, a, &[a_public]);
        let (_, first) = hosts[0].selector.poll_transmit(t0).unwrap();
        // B's pings arrive every 5 ms for 900 ms; A answers each and sends what is due.
        let key = PairKey::new(&StaticSecret::from([2; 32]), &a);
        let mut rounds = 0;
        for n in 0..180u32 {
            let now = t0 + ms(5 * u64::from(n));
            let _ = hosts[0].selector.handle(now, b_public, &ping_from(2, a, n));
            while let Some((_, bytes)) = hosts[0].selector.poll_transmit(now) {
                rounds += usize::from(
                    frame::decode(&bytes, &key).is_ok_and(|f| matches!(f, Frame::Ping { .. })),
                );
            }
        }
        assert!(rounds <= 10, "{rounds} rounds in 900 ms");
        // The pong to the very first ping, 900 ms late, still counts.
        hosts[1].selector.handle(t0, a_public, &first).unwrap();
        let (_, pong) = hosts[1].selector.poll_transmit(t0).unwrap();
        let late = t0 + ms(900);
        assert_eq!(hosts[0].selector.handle(late, b_public, &pong), Ok(()));
        assert_eq!(
            hosts[0].selector.path(&b, late).map(|p| p.0),
            Some(b_public)
        );
    }

    /// A peer that pings as fast as it can gets a bounded number of pongs.
    #[test]
    fn a_peer_pinging_too_fast_gets_a_bounded_number_of_pongs() {
        let t0 = Instant::now();
        let mut a = host(1, "192.168.1.2:51820", "203.0.113.1:51820", Nat::Open);
        let b = host(2, "192.168.2.2:51820", "203.0.113.2:51820", Nat::Open);
        let b_public = PathAddr::direct(b.public);
        a.selector.set_peer(t0, b.id, &[b_public]);
        while a.selector.poll_transmit(t0).is_some() {}
        let flood = |a: &mut Host, now: Instant, count: u32| {
            let mut pongs = 0;
            for n in 0..count {
                let _ = a.selector.handle(now, b_public, &ping_from(2, a.id, n));
            }
            while let Some((_, bytes)) = a.selector.poll_transmit(now) {
                pongs += usize::from(bytes.len() == PONG_LEN);
            }
            pongs
        };
        let burst = flood(&mut a, t0, 1000);
        assert!(burst <= PONG_BURST as usize, "{burst} pongs at once");
        let second: usize = (1..=10)
            .map(|step| flood(&mut a, t0 + ms(100 * step), 1000))
            .sum();
        assert!(
            second <= PONGS_PER_SECOND as usize + 1,
            "{second} pongs in the next second"
        );
        assert!(
            second >= PONGS_PER_SECOND as usize / 2,
            "{second}: the budget refills"
        );
    }

    /// A member that names addresses nobody answers at (another host's, say) gets them
    /// pinged ever less often, and addresses no peer could be at are not pinged at all.
    #[test]
    fn addresses_that_never_answer_are_pinged_ever_less_and_unusable_ones_never() {
        let t0 = Instant::now();
        let mut hosts = pair(Nat::Open, Nat::Open);
        let (a, b) = (hosts[0].id, hosts[1].id);
        let b_public = PathAddr::direct(hosts[1].public);
        let victims: Vec<PathAddr> = (1..=7)
            .map(|n| PathAddr::direct(addr(&format!("198.51.100.{n}:80"))))
            .collect();
        let unusable = [
            "127.0.0.1:51820",
            "0.0.0.0:51820",
            "224.0.0.1:51820",
            "255.255.255.255:51820",
            "169.254.1.1:51820",
            "[::1]:51820",
            "[fe80::1]:51820",
            "[ff02::1]:51820",
            "203.0.113.2:0",
        ]
        .map(|s| PathAddr::direct(addr(s)));
        let advertised: Vec<PathAddr> = unusable
            .iter()
            .chain(&victims)
            .chain([&b_public])
            .copied()
            .collect();
        hosts[0].selector.set_peer(t0, b, &advertised);
        let a_public = PathAddr::direct(hosts[0].public);
        hosts[1].selector.set_peer(t0, a, &[a_public]);
        let minute = Duration::from_secs(60);
        run(&mut hosts, &[], t0, minute, &internet);
        let sent = &hosts[0].sent;
        assert!(
            sent.iter().all(|(_, to)| !unusable.contains(to)),
            "pinged an unusable address"
        );
        assert_eq!(
            hosts[0].selector.path(&b, t0 + minute).map(|p| p.0),
            Some(b_public)
        );
        let to_victims = |since: Duration| {
            sent.iter()
                .filter(|(at, to)| *at >= t0 + since && victims.contains(to))
                .count()
        };
        // Without backing off: a ping a second to each, 420 in the minute.
        assert!(
            to_victims(Duration::ZERO) <= 7 * 20,
            "{}",
            to_victims(Duration::ZERO)
        );
        // At most one ping every MAX_BACKOFF to each, once backed off.
        assert!(
            to_victims(Duration::from_secs(40)) <= 7 * 3,
            "{}",
            to_victims(Duration::from_secs(40))
        );
        // A ping from an address no peer could be at is not answered.
        let loopback = PathAddr::direct(addr("127.0.0.1:51820"));
        let later = t0 + minute;
        assert_eq!(
            hosts[0]
                .selector
                .handle(later, loopback, &ping_from(2, a, 7)),
            Err(Refused::UnknownPeer)
        );
    }
}
