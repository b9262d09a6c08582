//! The daemon's side of a party, as a sans-IO state machine: what the control server says
//! (the party when joined, then pushed events) goes in; what the tunnel must become (our
//! address, a WireGuard peer per other member) and what to send the server (heartbeats,
//! a reconnect of the event stream, with backoff) come out.
//!
//! The tunnel follows the party by differences: each input yields only the peer changes it
//! causes, so a member's endpoint update does not disturb the others' sessions.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use super::MAX_NAME_CHARS;
use super::scope::{self, ScopeError};
use crate::nat::NatType;
use crate::peer_id::PeerId;
use crate::server_api::{EventJson, Heartbeat, MemberJson, PartyJson};
use crate::shown_text;

/// How often a member tells the server it is alive: well inside the server's 5-minute expiry,
/// so one lost heartbeat (or two) does not drop a player.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// Event-stream reconnects back off from this...
pub const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// ...to this.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// What the tunnel and the server connection must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Give the interface our virtual address, with the party's prefix length.
    SetAddress {
        address: Ipv4Addr,
        prefix_len: u8,
    },
    ClearAddress,
    /// Add a peer, or change its candidate addresses (as it advertised them, best guess
    /// first); its allowed IP is its virtual address.
    UpsertPeer {
        peer: PeerId,
        virtual_ip: Ipv4Addr,
        endpoints: Vec<SocketAddr>,
    },
    RemovePeer(PeerId),
    SendHeartbeat(Heartbeat),
    /// Open the event stream (again).
    ConnectEvents,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The server answered a create or join with this party.
    Joined(PartyJson),
    /// We left (or were told we are in no party).
    Left,
    Event(EventJson),
    /// The event stream closed or could not be opened.
    EventsLost,
    /// The addresses we can be reached at, and our NAT type, changed.
    Reachability {
        endpoints: Vec<SocketAddr>,
        nat: NatType,
    },
    /// The last heartbeat did not reach the server: what it carried must go again.
    HeartbeatFailed,
    /// The last heartbeat reached the server.
    HeartbeatDelivered,
}

/// How soon a failed heartbeat is tried again: the endpoints it carried may be the only way
/// the party learns where we went.
pub const HEARTBEAT_RETRY: Duration = Duration::from_secs(1);

/// A member as the tunnel knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer {
    virtual_ip: Ipv4Addr,
    endpoints: Vec<SocketAddr>,
}

#[derive(Debug)]
pub struct Membership {
    me: PeerId,
    party: Option<PartyJson>,
    peers: BTreeMap<PeerId, Peer>,
    address: Option<(Ipv4Addr, u8)>,
    endpoints: Vec<SocketAddr>,
    nat: NatType,
    next_heartbeat: Option<Instant>,
    /// Reachability changed since the last heartbeat was sent.
    reachability_dirty: bool,
    /// Heartbeats failed in a row: the retry backs off from [`HEARTBEAT_RETRY`] to
    /// [`HEARTBEAT_INTERVAL`] while the server stays away.
    heartbeat_failures: u32,
    reconnect_at: Option<Instant>,
    backoff: Duration,
    /// The party's subnet, once a party was taken ([`scope`]).
    subnet: Option<Ipv4Net>,
    /// Why the server's last party was not taken, if it was not.
    refused: Option<ScopeError>,
    /// Members left out for an address outside the party's subnet (or our own).
    members_refused: u64,
    /// Which subnets we take ([`scope::Allowed`]).
    allowed: scope::Allowed,
}

impl Membership {
    pub fn new(me: PeerId) -> Self {
        Membership {
            me,
            party: None,
            peers: BTreeMap::new(),
            address: None,
            endpoints: Vec::new(),
            nat: NatType::Unknown,
            next_heartbeat: None,
            reachability_dirty: false,
            heartbeat_failures: 0,
            reconnect_at: None,
            backoff: RECONNECT_MIN,
            subnet: None,
            refused: None,
            members_refused: 0,
            allowed: scope::Allowed::Private,
        }
    }

    /// Takes party subnets as `allowed` says (the user's `party_subnet_any`).
    pub fn allowing(mut self, allowed: scope::Allowed) -> Self {
        self.allowed = allowed;
        self
    }

    /// Why the server's last party was refused, while it is.
    pub fn refused(&self) -> Option<&ScopeError> {
        self.refused.as_ref()
    }

    /// Members left out so far for an address outside the party's subnet.
    pub fn members_refused(&self) -> u64 {
        self.members_refused
    }

    /// Whether `member` may be a peer: its address is a member address of the party's
    /// subnet, and not ours (its allowed IP would take our own traffic).
    fn acceptable(&self, member: &MemberJson) -> bool {
        self.subnet
            .is_some_and(|net| scope::is_member_address(net, member.virtual_ip))
            && self
                .address
                .is_none_or(|(ours, _)| ours != member.virtual_ip)
    }

    /// The party as last heard, with members kept up to date by events.
    pub fn party(&self) -> Option<&PartyJson> {
        self.party.as_ref()
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut actions = Vec::new();
        match shown(input) {
            Input::Joined(party) => {
                self.adopt(Some(party), &mut actions);
                self.next_heartbeat = Some(now);
                self.reachability_dirty = true;
                self.reconnect_at = None;
                self.backoff = RECONNECT_MIN;
                actions.push(Action::ConnectEvents);
                actions.extend(self.poll(now));
            }
            Input::Left => {
                self.adopt(None, &mut actions);
                self.next_heartbeat = None;
                self.reconnect_at = None;
            }
            Input::Event(EventJson::Snapshot { party }) => {
                // A successful (re)connect: the stream is healthy again.
                self.backoff = RECONNECT_MIN;
                if party.is_none() {
                    self.next_heartbeat = None;
                }
                self.adopt(party, &mut actions);
            }
            Input::Event(EventJson::Joined { member } | EventJson::Updated { member })
                if member.peer != self.me && !self.acceptable(&member) =>
            {
                self.members_refused += 1;
            }
            Input::Event(EventJson::Joined { member } | EventJson::Updated { member }) => {
                if let Some(party) = &mut self.party {
                    party.members.retain(|m| m.peer != member.peer);
                    party.members.push(member.clone());
                }
                self.upsert(&member, &mut actions);
            }
            Input::Event(EventJson::Left { peer, .. }) => {
                if let Some(party) = &mut self.party {
                    party.members.retain(|m| m.peer != peer);
                }
                if self.peers.remove(&peer).is_some() {
                    actions.push(Action::RemovePeer(peer));
                }
            }
            Input::HeartbeatFailed => {
                // Whatever it carried is resent with the next one; endpoints are only sent
                // when they changed, so mark them changed again.
                self.reachability_dirty = true;
                if self.party.is_some() {
                    let delay = HEARTBEAT_RETRY
                        .saturating_mul(1 << self.heartbeat_failures.min(5))
                        .min(HEARTBEAT_INTERVAL);
                    self.heartbeat_failures = self.heartbeat_failures.saturating_add(1);
                    let retry = now + delay;
                    self.next_heartbeat =
                        Some(self.next_heartbeat.map_or(retry, |at| at.min(retry)));
                }
            }
            Input::HeartbeatDelivered => {
                self.heartbeat_failures = 0;
                // The server answers again: a stream waiting out its backoff may open now.
                if self.reconnect_at.is_some() {
                    self.reconnect_at = Some(now);
                    actions.extend(self.poll(now));
                }
            }
            Input::EventsLost => {
                if self.party.is_some() && self.reconnect_at.is_none() {
                    self.reconnect_at = Some(now + self.backoff);
                    self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
                }
            }
            Input::Reachability { endpoints, nat } => {
                if endpoints != self.endpoints || nat != self.nat {
                    self.endpoints = endpoints;
                    self.nat = nat;
                    self.reachability_dirty = true;
                    if self.party.is_some() {
                        self.next_heartbeat = Some(now);
                        actions.extend(self.poll(now));
                    }
                }
            }
        }
        actions
    }

    /// Timer work due at `now`: heartbeats and reconnects.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.next_heartbeat.is_some_and(|at| now >= at) {
            let beat = if std::mem::take(&mut self.reachability_dirty) {
                Heartbeat {
                    endpoints: Some(self.endpoints.clone()),
                    nat: Some(self.nat),
                }
            } else {
                Heartbeat::default()
            };
            actions.push(Action::SendHeartbeat(beat));
            self.next_heartbeat = Some(now + HEARTBEAT_INTERVAL);
        }
        if self.reconnect_at.is_some_and(|at| now >= at) {
            self.reconnect_at = None;
            actions.push(Action::ConnectEvents);
        }
        actions
    }

    /// When `poll` next has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        match (self.next_heartbeat, self.reconnect_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Makes the tunnel match `party` (or no party).
    fn adopt(&mut self, party: Option<PartyJson>, actions: &mut Vec<Action>) {
        // A party whose subnet or our address in it is not acceptable is no party at all.
        let (party, subnet) = match party.map(|p| (scope::check(&p, self.me, self.allowed), p)) {
            Some((Ok(net), p)) => {
                self.refused = None;
                (Some(p), Some(net))
            }
            Some((Err(why), _)) => {
                self.refused = Some(why);
                (None, None)
            }
            None => (None, None),
        };
        self.subnet = subnet;
        let mine = party.as_ref().zip(subnet).and_then(|(p, net)| {
            let me = p.members.iter().find(|m| m.peer == self.me)?;
            Some((me.virtual_ip, net.prefix_len()))
        });
        if mine != self.address {
            actions.push(match mine {
                Some((address, prefix_len)) => Action::SetAddress {
                    address,
                    prefix_len,
                },
                None => Action::ClearAddress,
            });
            self.address = mine;
        }
        let (others, outside): (Vec<MemberJson>, Vec<MemberJson>) = party
            .iter()
            .flat_map(|p| p.members.iter())
            .filter(|m| m.peer != self.me)
            .cloned()
            .partition(|m| self.acceptable(m));
        self.members_refused += outside.len() as u64;
        let party = party.map(|mut p| {
            p.members.retain(|m| !outside.contains(m));
            p
        });
        let gone: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|p| !others.iter().any(|m| m.peer == **p))
            .copied()
            .collect();
        for peer in gone {
            self.peers.remove(&peer);
            actions.push(Action::RemovePeer(peer));
        }
        for member in &others {
            self.upsert(member, actions);
        }
        self.party = party;
    }

    fn upsert(&mut self, member: &MemberJson, actions: &mut Vec<Action>) {
        if member.peer == self.me {
            return;
        }
        let peer = Peer {
            virtual_ip: member.virtual_ip,
            endpoints: member.endpoints.clone(),
        };
        if self.peers.get(&member.peer) != Some(&peer) {
            actions.push(Action::UpsertPeer {
                peer: member.peer,
                virtual_ip: peer.virtual_ip,
                endpoints: peer.endpoints.clone(),
            });
            self.peers.insert(member.peer, peer);
        }
    }
}

/// `input` with the names in it made safe to show ([`shown_text`]): they are other players'
/// choice, and reach terminals, web pages and Discord.
fn shown(input: Input) -> Input {
    let member = |mut m: MemberJson| {
        m.name = shown_text::clean(&m.name, MAX_NAME_CHARS);
        m
    };
    let party = |mut p: PartyJson| {
        p.name = shown_text::clean(&p.name, MAX_NAME_CHARS);
        p.members = p.members.into_iter().map(member).collect();
        p
    };
    match input {
        Input::Joined(p) => Input::Joined(party(p)),
        Input::Event(EventJson::Snapshot { party: p }) => Input::Event(EventJson::Snapshot {
            party: p.map(party),
        }),
        Input::Event(EventJson::Joined { member: m }) => {
            Input::Event(EventJson::Joined { member: member(m) })
        }
        Input::Event(EventJson::Updated { member: m }) => {
            Input::Event(EventJson::Updated { member: member(m) })
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    fn member(n: u8, endpoint: Option<&str>) -> MemberJson {
        MemberJson {
            peer: id(n),
            name: format!("p{n}"),
            virtual_ip: Ipv4Addr::new(10, 66, 0, n),
            endpoints: endpoint.map(|e| e.parse().unwrap()).into_iter().collect(),
            nat: NatType::Unknown,
        }
    }

    fn party(members: Vec<MemberJson>) -> PartyJson {
        PartyJson {
            id: 1,
            name: "p".into(),
            code: "0000-0000-0000-0000".into(),
            subnet: "10.66.0.0/16".into(),
            members,
        }
    }

    #[test]
    fn joining_sets_our_address_adds_the_others_and_starts_the_stream() {
        let t = Instant::now();
        let mut m = Membership::new(id(1));
        let actions = m.handle(
            t,
            Input::Joined(party(vec![
                member(1, None),
                member(2, Some("192.0.2.2:51820")),
            ])),
        );
        assert_eq!(
            actions,
            vec![
                Action::SetAddress {
                    address: Ipv4Addr::new(10, 66, 0, 1),
                    prefix_len: 16
                },
                Action::UpsertPeer {
                    peer: id(2),
                    virtual_ip: Ipv4Addr::new(10, 66, 0, 2),
                    endpoints: vec!["192.0.2.2:51820".parse().unwrap()],
                },
                Action::ConnectEvents,
                Action::SendHeartbeat(Heartbeat {
                    endpoints: Some(vec![]),
                    nat: Some(NatType::Unknown)
                }),
            ]
        );
        assert_eq!(m.next_timeout(), Some(t + HEARTBEAT_INTERVAL));
    }

    #[test]
    fn a_failed_heartbeat_is_retried_soon_with_its_endpoints() {
        let t = Instant::now();
        let mut m = Membership::new(id(1));
        m.handle(t, Input::Joined(party(vec![member(1, None)])));
        let endpoints = vec!["198.51.100.1:51820".parse().unwrap()];
        let sent = m.handle(
            t,
            Input::Reachability {
                endpoints: endpoints.clone(),
                nat: NatType::PortRestricted,
            },
        );
        assert!(
            sent.iter()
                .any(|a| matches!(a, Action::SendHeartbeat(b) if b.endpoints.is_some()))
        );
        assert!(m.handle(t, Input::HeartbeatFailed).is_empty());
        assert_eq!(m.next_timeout(), Some(t + HEARTBEAT_RETRY));
        let again = m.poll(t + HEARTBEAT_RETRY);
        assert!(
            again.iter().any(
                |a| matches!(a, Action::SendHeartbeat(b) if b.endpoints == Some(endpoints.clone()))
            ),
            "{again:?}"
        );
        // While the server stays away, the retries back off; a delivery resets them.
        let t2 = t + HEARTBEAT_RETRY;
        m.handle(t2, Input::HeartbeatFailed);
        assert_eq!(m.next_timeout(), Some(t2 + HEARTBEAT_RETRY * 2));
        m.handle(t2, Input::HeartbeatDelivered);
        m.poll(t2 + HEARTBEAT_RETRY * 2);
        m.handle(t2, Input::HeartbeatFailed);
        assert_eq!(m.next_timeout(), Some(t2 + HEARTBEAT_RETRY));
    }

    #[test]
    fn events_change_only_what_they_touch() {
        let t = Instant::now();
        let mut m = Membership::new(id(1));
        m.handle(
            t,
            Input::Joined(party(vec![member(1, None), member(2, None)])),
        );
        // The snapshot that opens the stream repeats what we know: nothing to do.
        let snapshot = Input::Event(EventJson::Snapshot {
            party: Some(party(vec![member(1, None), member(2, None)])),
        });
        assert!(m.handle(t, snapshot).is_empty());
        let joined = Input::Event(EventJson::Joined {
            member: member(3, None),
        });
        assert_eq!(m.handle(t, joined).len(), 1);
        let moved = Input::Event(EventJson::Updated {
            member: member(2, Some("192.0.2.9:1")),
        });
        assert_eq!(
            m.handle(t, moved),
            vec![Action::UpsertPeer {
                peer: id(2),
                virtual_ip: Ipv4Addr::new(10, 66, 0, 2),
                endpoints: vec!["192.0.2.9:1".parse().unwrap()]
            }]
        );
        let left = Input::Event(EventJson::Left {
            peer: id(3),
            reason: "left".into(),
        });
        assert_eq!(m.handle(t, left), vec![Action::RemovePeer(id(3))]);
        assert_eq!(m.party().unwrap().members.len(), 2);
    }

    #[test]
    fn a_snapshot_after_reconnect_reconciles_missed_events() {
        let t = Instant::now();
        let mut m = Membership::new(id(1));
        m.handle(
            t,
            Input::Joined(party(vec![member(1, None), member(2, None)])),
        );
        // While the stream was down, 2 left and 4 joined.
        let actions = m.handle(
            t,
            Input::Event(EventJson::Snapshot {
                party: Some(party(vec![member(1, None), member(4, None)])),
            }),
        );
        assert_eq!(actions[0], Action::RemovePeer(id(2)));
        assert!(matches!(actions[1], Action::UpsertPeer { peer, .. } if peer == id(4)));
        // And if we were dropped from the party meanwhile, everything goes.
        let actions = m.handle(t, Input::Event(EventJson::Snapshot { party: None }));
        assert_eq!(
            actions,
            vec![Action::ClearAddress, Action::RemovePeer(id(4))]
        );
        assert_eq!(m.next_timeout(), None);
    }

    #[test]
    fn lost_streams_reconnect_with_backoff() {
        let t = Instant::now();
        let mut m = Membership::new(id(1));
        m.handle(t, Input::Joined(party(vec![member(1, None)])));
        m.handle(t, Input::EventsLost);
        assert_eq!(m.next_timeout(), Some(t + RECONNECT_MIN));
        assert_eq!(m.poll(t + RECONNECT_MIN), vec![Action::ConnectEvents]);
        m.handle(t + RECONNECT_MIN, Input::EventsLost);
        assert_eq!(m.next_timeout(), Some(t + RECONNECT_MIN * 3));
        // Many failures cap the wait.
        let mut now = t;
        for _ in 0..20 {
            m.handle(now, Input::EventsLost);
            now = m.next_timeout().unwrap().min(now + HEARTBEAT_INTERVAL);
            m.poll(now);
        }
        m.handle(now, Input::EventsLost);
        let wait = m.next_timeout().unwrap() - now;
        assert!(wait <= RECONNECT_MAX, "{wait:?}");
        // A snapshot means connected: the backoff starts over.
        m.handle(now, Input::Event(EventJson::Snapshot { party: None }));
        m.handle(now, Input::Joined(party(vec![member(1, None)])));
        m.handle(now, Input::EventsLost);
        assert_eq!(m.next_timeout(), Some(now + RECONNECT_MIN));
    }

    #[test]
    fn a_delivered_heartbeat_reopens_a_waiting_stream_at_once() {
        let t = Instant::now();
        let mut m = Membership::new(id(1));
        m.handle(t, Input::Joined(party(vec![member(1, None)])));
        for _ in 0..6 {
            m.handle(t, Input::EventsLost);
            let at = m.next_timeout().unwrap();
            m.poll(at);
        }
        m.handle(t, Input::EventsLost);
        let later = t + Duration::from_secs(1);
        assert!(m.next_timeout().unwrap() > later);
        let actions = m.handle(later, Input::HeartbeatDelivered);
        assert!(actions.contains(&Action::ConnectEvents), "{actions:?}");
        // Without a stream to reopen, a heartbeat changes nothing.
        assert!(m.handle(later, Input::HeartbeatDelivered).is_empty());
    }

    #[test]
    fn heartbeats_carry_reachability_only_when_it_changed() {
        let t = Instant::now();
        let mut m = Membership::new(id(1));
        m.handle(t, Input::Joined(party(vec![member(1, None)])));
        let beat = |actions: Vec<Action>| {
            actions.into_iter().find_map(|a| match a {
                Action::SendHeartbeat(h) => Some(h),
                _ => None,
            })
        };
        assert_eq!(
            beat(m.poll(t + HEARTBEAT_INTERVAL)),
            Some(Heartbeat::default())
        );
        let endpoints = vec!["198.51.100.1:51820".parse().unwrap()];
        let actions = m.handle(
            t + HEARTBEAT_INTERVAL,
            Input::Reachability {
                endpoints: endpoints.clone(),
                nat: NatType::FullCone,
            },
        );
        assert_eq!(
            beat(actions),
            Some(Heartbeat {
                endpoints: Some(endpoints),
                nat: Some(NatType::FullCone)
            })
        );
        // Leaving stops the heartbeats.
        assert_eq!(m.handle(t, Input::Left), vec![Action::ClearAddress]);
        assert!(m.poll(t + HEARTBEAT_INTERVAL * 10).is_empty());
    }

    /// A hostile or compromised server: a subnet that would route half the internet into
    /// the tunnel is refused whole; a member at a public address, or at ours, is left out.
    #[test]
    fn a_server_cannot_route_traffic_outside_a_private_party_subnet_into_the_tunnel() {
        let t = Instant::now();
        let mut m = Membership::new(id(1));
        let mut wide = party(vec![member(1, None), member(2, None)]);
        wide.subnet = "128.0.0.0/1".into();
        let actions = m.handle(t, Input::Joined(wide));
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::SetAddress { .. } | Action::UpsertPeer { .. })),
            "{actions:?}"
        );
        assert!(matches!(m.refused(), Some(ScopeError::NotPrivate(_))));
        assert!(m.party().is_none());

        let mut public = member(3, None);
        public.virtual_ip = Ipv4Addr::new(8, 8, 8, 8);
        let mut twin = member(4, None);
        twin.virtual_ip = Ipv4Addr::new(10, 66, 0, 1);
        let actions = m.handle(
            t,
            Input::Joined(party(vec![
                member(1, None),
                member(2, None),
                public.clone(),
                twin,
            ])),
        );
        assert!(m.refused().is_none());
        let peers: Vec<PeerId> = actions
            .iter()
            .filter_map(|a| match a {
                Action::UpsertPeer { peer, .. } => Some(*peer),
                _ => None,
            })
            .collect();
        assert_eq!(peers, [id(2)]);
        assert_eq!(m.members_refused(), 2);
        assert_eq!(m.party().map(|p| p.members.len()), Some(2));
        // Pushed later, the same.
        let actions = m.handle(t, Input::Event(EventJson::Joined { member: public }));
        assert_eq!(actions, []);
        assert_eq!(m.members_refused(), 3);
    }
}
