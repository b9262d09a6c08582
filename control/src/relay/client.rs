//! A member's side of its relay sessions, sans-IO: binds each granted session at its relay
//! from the WireGuard port, keeps the binding (and the NAT mapping toward the relay) fresh,
//! and offers each bound session as a path to the path selector, which measures it end to
//! end like any other and uses it only when no direct path answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::frame::{Ack, Bind, FrameError};
use super::grant::Grant;
use crate::path::PathAddr;
use crate::peer_id::PeerId;

/// Binds are resent this often until the relay answers and the other side is bound too.
pub const BIND_RETRY: Duration = Duration::from_millis(500);
/// A bound session is bound again this often (well inside the relay's timeout and common NAT
/// mapping lifetimes).
pub const BIND_REFRESH: Duration = Duration::from_secs(10);
/// No acknowledgement for this long: the relay is taken for gone.
pub const BIND_STALE: Duration = Duration::from_secs(25);
/// Relays bound per peer; the path selector measures each.
pub const MAX_RELAYS_PER_PEER: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckRefused {
    Frame(FrameError),
    /// An ack for no session we hold with that relay, or for no bind we sent.
    Unexpected,
}

/// One session as monitoring shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStatus {
    pub peer: PeerId,
    pub relay: SocketAddr,
    pub channel: Option<u32>,
    pub peer_bound: bool,
    /// Round trip of the last bind to the relay.
    pub rtt: Option<Duration>,
}

#[derive(Debug)]
struct Binding {
    grant: Grant,
    channel: Option<u32>,
    peer_bound: bool,
    last_ack: Option<Instant>,
    next_bind: Instant,
    /// Binds in flight: (counter, sent).
    sent: Vec<(u64, Instant)>,
    rtt: Option<Duration>,
}

impl Binding {
    fn live(&self, now: Instant) -> bool {
        self.last_ack
            .is_some_and(|at| now.saturating_duration_since(at) < BIND_STALE)
    }
}

pub struct RelayClient {
    next_counter: u64,
    bindings: HashMap<(PeerId, SocketAddr), Binding>,
}

impl RelayClient {
    /// `counter_start`: above any counter this identity used before; the wall clock in
    /// microseconds is (binds are far rarer than one per microsecond).
    pub fn new(counter_start: u64) -> Self {
        RelayClient {
            next_counter: counter_start,
            bindings: HashMap::new(),
        }
    }

    /// Replaces the grants: `(peer, relay, grant)`. Sessions kept keep their state; at most
    /// [`MAX_RELAYS_PER_PEER`] relays per peer, in the order given.
    pub fn set_grants(&mut self, now: Instant, grants: &[(PeerId, SocketAddr, Grant)]) {
        let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
        let mut kept = HashMap::with_capacity(grants.len());
        for (peer, relay, grant) in grants {
            let n = per_peer.entry(*peer).or_default();
            if *n >= MAX_RELAYS_PER_PEER || kept.contains_key(&(*peer, *relay)) {
                continue;
            }
            *n += 1;
            let binding = match self.bindings.remove(&(*peer, *relay)) {
                Some(mut b) if b.grant.session == grant.session && b.grant.side == grant.side => {
                    b.grant = grant.clone();
                    b
                }
                _ => Binding {
                    grant: grant.clone(),
                    channel: None,
                    peer_bound: false,
                    last_ack: None,
                    next_bind: now,
                    sent: Vec::new(),
                    rtt: None,
                },
            };
            kept.insert((*peer, *relay), binding);
        }
        self.bindings = kept;
    }

    pub fn remove_peer(&mut self, peer: &PeerId) {
        self.bindings.retain(|(p, _), _| p != peer);
    }

    /// Takes an ack that arrived from `from`. Returns the peer whose relayed paths changed.
    pub fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<Option<PeerId>, AckRefused> {
        let (session, side) = Ack::claimed(datagram).map_err(AckRefused::Frame)?;
        let (&(peer, _), binding) = self
            .bindings
            .iter_mut()
            .find(|((_, relay), b)| {
                *relay == from && b.grant.session == session && b.grant.side == side
            })
            .ok_or(AckRefused::Unexpected)?;
        let ack = Ack::decode(datagram, &binding.grant.key).map_err(AckRefused::Frame)?;
        let i = binding
            .sent
            .iter()
            .position(|&(c, _)| c == ack.counter)
            .ok_or(AckRefused::Unexpected)?;
        let (_, sent) = binding.sent.remove(i);
        binding.sent.retain(|&(c, _)| c > ack.counter);
        let before = (binding.live(now) && binding.peer_bound, binding.channel);
        binding.rtt = Some(now.saturating_duration_since(sent));
        binding.last_ack = Some(now);
        binding.channel = Some(ack.channel);
        binding.peer_bound = ack.peer_bound;
        binding.next_bind = now
            + if ack.peer_bound {
                BIND_REFRESH
            } else {
                BIND_RETRY
            };
        let after = (ack.peer_bound, binding.channel);
        Ok((before != after).then_some(peer))
    }

    /// The next bind due at `now`, as `(relay, datagram)`. Call until `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        let (&(_, relay), binding) = self.bindings.iter_mut().find(|(_, b)| b.next_bind <= now)?;
        let counter = self.next_counter;
        self.next_counter += 1;
        binding
            .sent
            .retain(|&(_, at)| now.saturating_duration_since(at) < BIND_STALE);
        if binding.sent.len() >= 8 {
            binding.sent.remove(0);
        }
        binding.sent.push((counter, now));
        // A live session refreshes slowly; one that lost its relay asks often again.
        binding.next_bind = now
            + if binding.live(now) && binding.peer_bound {
                BIND_REFRESH
            } else {
                BIND_RETRY
            };
        let frame = Bind {
            session: binding.grant.session,
            side: binding.grant.side,
            expires_unix: binding.grant.expires_unix,
            counter,
        }
        .encode(&binding.grant.key);
        Some((relay, frame.to_vec()))
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.bindings.values().map(|b| b.next_bind).min()
    }

    /// The relayed paths to `peer` that may carry traffic now: bound at a relay that
    /// answers, with the peer bound there too.
    pub fn paths(&self, peer: &PeerId, now: Instant) -> Vec<PathAddr> {
        let mut paths: Vec<PathAddr> = self
            .bindings
            .iter()
            .filter(|((p, _), b)| p == peer && b.peer_bound && b.live(now))
            .filter_map(|(&(_, relay), b)| Some(PathAddr::relayed(relay, b.channel?)))
            .collect();
        paths.sort();
        paths
    }

    /// Every session, for monitoring.
    pub fn status(&self, now: Instant) -> Vec<RelayStatus> {
        let mut all: Vec<RelayStatus> = self
            .bindings
            .iter()
            .map(|(&(peer, relay), b)| RelayStatus {
                peer,
                relay,
                channel: b.channel.filter(|_| b.live(now)),
                peer_bound: b.peer_bound && b.live(now),
                rtt: b.rtt,
            })
            .collect();
        all.sort_by_key(|s| (s.peer, s.relay));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::grant::RelaySecret;
    use crate::relay::sessions::RelaySessions;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn both_members_bind_and_get_a_relayed_path_through_a_real_relay_state() {
        let secret = RelaySecret::new([5; 32]);
        let mut channels = 100u32;
        let mut relay = RelaySessions::new(secret.clone(), 10, move || {
            channels += 1;
            channels
        });
        let relay_addr = addr("203.0.113.9:3479");
        let (pa, pb) = (PeerId([1; 32]), PeerId([2; 32]));
        let (addr_a, addr_b) = (addr("198.51.100.1:4000"), addr("198.51.100.2:5000"));
        let mut a = RelayClient::new(1_000);
        let mut b = RelayClient::new(2_000);
        let t = Instant::now();
        a.set_grants(t, &[(pb, relay_addr, secret.grant(7, &pa, &pb, 10_000))]);
        b.set_grants(t, &[(pa, relay_addr, secret.grant(7, &pb, &pa, 10_000))]);
        let mut now = t;
        for _ in 0..6 {
            for (client, from) in [(&mut a, addr_a), (&mut b, addr_b)] {
                while let Some((to, bind)) = client.poll_transmit(now) {
                    assert_eq!(to, relay_addr);
                    let bound = relay.handle(now, 5_000, from, &bind).unwrap();
                    client
                        .handle(now + Duration::from_millis(20), relay_addr, &bound.ack)
                        .unwrap();
                }
            }
            now += BIND_RETRY;
        }
        let pa_paths = a.paths(&pb, now);
        let pb_paths = b.paths(&pa, now);
        assert_eq!(pa_paths.len(), 1);
        assert_eq!(pb_paths.len(), 1);
        assert!(pa_paths[0].is_relayed() && pa_paths[0].addr == relay_addr);
        let routes: Vec<_> = relay.routes().collect();
        assert_eq!(routes.len(), 2);
        assert!(routes.iter().any(|r| r.from == addr_a
            && Some(r.channel) == pa_paths[0].relay_channel
            && Some(r.out_channel) == pb_paths[0].relay_channel));
        assert_eq!(a.status(now)[0].rtt, Some(Duration::from_millis(20)));
        // Once both are bound, refreshes slow down.
        let due = a.poll_timeout().unwrap();
        assert!(due >= now + BIND_REFRESH - BIND_RETRY * 6, "{:?}", due - t);
        // Silence from the relay: the path goes.
        assert!(a.paths(&pb, now + BIND_STALE).is_empty());
    }

    #[test]
    fn acks_not_for_us_are_refused() {
        let secret = RelaySecret::new([5; 32]);
        let (pa, pb) = (PeerId([1; 32]), PeerId([2; 32]));
        let relay_addr = addr("203.0.113.9:3479");
        let grant = secret.grant(7, &pa, &pb, 10_000);
        let mut a = RelayClient::new(1);
        let t = Instant::now();
        a.set_grants(t, &[(pb, relay_addr, grant.clone())]);
        let ack = crate::relay::frame::Ack {
            session: grant.session,
            side: grant.side,
            counter: 1,
            channel: 9,
            peer_bound: true,
        };
        // Never sent bind 1: unexpected.
        assert_eq!(
            a.handle(t, relay_addr, &ack.encode(&grant.key)),
            Err(AckRefused::Unexpected)
        );
        let (_, _bind) = a.poll_transmit(t).unwrap();
        // From another address, or with another key.
        assert_eq!(
            a.handle(t, addr("192.0.2.1:1"), &ack.encode(&grant.key)),
            Err(AckRefused::Unexpected)
        );
        assert_eq!(
            a.handle(t, relay_addr, &ack.encode(&[0; 32])),
            Err(AckRefused::Frame(FrameError::BadMac))
        );
        assert_eq!(
            a.handle(t, relay_addr, &ack.encode(&grant.key)),
            Ok(Some(pb))
        );
        // Replayed: the bind it answered is no longer in flight.
        assert_eq!(
            a.handle(t, relay_addr, &ack.encode(&grant.key)),
            Err(AckRefused::Unexpected)
        );
    }
}
