//! Every party the control server knows, as a sans-IO state machine: requests come in with the
//! time, results and notices for other members come out. Storage, HTTP and push connections
//! live in the server around it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use super::code::PartyCode;
use crate::ipam::{AddressPool, DEFAULT_SUBNET, IpamError};
use crate::nat::NatType;
use crate::peer_id::PeerId;
use crate::shown_text;

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Every party's virtual subnet.
    pub subnet: Ipv4Net,
    /// Members per party.
    pub max_members: usize,
    /// Members silent for this long are removed.
    pub stale_after: Duration,
    /// A member that has not sent its first heartbeat this long after creating or joining is
    /// removed (or at `stale_after`, if sooner). The daemon sends one at once; a party made by
    /// a client that never does (a flood of creates with throwaway keys) ends soon instead of
    /// holding a place for `stale_after`.
    pub first_heartbeat_within: Duration,
    /// Parties in all; bounds what one server can be made to hold.
    pub max_parties: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            subnet: DEFAULT_SUBNET,
            max_members: 64,
            stale_after: Duration::from_secs(5 * 60),
            first_heartbeat_within: Duration::from_secs(60),
            max_parties: 10_000,
        }
    }
}

/// Longest party or member name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Most candidate endpoints one member may advertise.
pub const MAX_ENDPOINTS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartyId(pub u64);

impl fmt::Display for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A member as the others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub peer: PeerId,
    pub name: String,
    pub virtual_ip: Ipv4Addr,
    /// Where it may be reached: local, reflexive, mapped addresses.
    pub endpoints: Vec<SocketAddr>,
    pub nat: NatType,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyView {
    pub id: PartyId,
    pub name: String,
    pub code: PartyCode,
    pub subnet: Ipv4Net,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    Left,
    /// No heartbeat within `stale_after`.
    Expired,
    /// Joined another party.
    Moved,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartyEvent {
    Joined(Member),
    Left {
        peer: PeerId,
        reason: LeaveReason,
    },
    /// Endpoints or NAT type changed.
    Updated(Member),
}

/// Something one member must be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub to: PeerId,
    pub party: PartyId,
    pub event: PartyEvent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartyError {
    /// No party has this code (deliberately the same for "never existed" and "ended").
    WrongCode,
    PartyFull {
        max_members: usize,
    },
    NotInParty,
    /// Another party already has the code; draw another.
    CodeInUse,
    TooManyParties,
    InvalidName {
        what: &'static str,
        why: String,
    },
    TooManyEndpoints {
        max: usize,
    },
    Address(IpamError),
}

impl fmt::Display for PartyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartyError::WrongCode => f.write_str("no party has this code"),
            PartyError::PartyFull { max_members } => {
                write!(f, "the party is full ({max_members} members)")
            }
            PartyError::NotInParty => f.write_str("not in a party"),
            PartyError::CodeInUse => f.write_str("party code already in use"),
            PartyError::TooManyParties => f.write_str("this server holds all the parties it can"),
            PartyError::InvalidName { what, why } => write!(f, "invalid {what}: {why}"),
            PartyError::TooManyEndpoints { max } => {
                write!(f, "too many endpoints (at most {max})")
            }
            PartyError::Address(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for PartyError {}

impl From<IpamError> for PartyError {
    fn from(e: IpamError) -> Self {
        PartyError::Address(e)
    }
}

/// A party as stored: enough to rebuild it after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyRecord {
    pub id: PartyId,
    pub name: String,
    pub code: PartyCode,
    pub members: Vec<Member>,
    /// Addresses kept for members who left, so they get them back when they rejoin.
    pub departed: Vec<(PeerId, Ipv4Addr)>,
}

struct Party {
    name: String,
    code: PartyCode,
    members: BTreeMap<PeerId, MemberState>,
    pool: AddressPool,
}

struct MemberState {
    name: String,
    endpoints: Vec<SocketAddr>,
    nat: NatType,
    last_seen: Instant,
    /// It has sent a heartbeat (or was restored from storage): the full `stale_after` applies.
    confirmed: bool,
}

pub struct Registry {
    config: RegistryConfig,
    parties: BTreeMap<PartyId, Party>,
    by_code: HashMap<PartyCode, PartyId>,
    by_peer: HashMap<PeerId, PartyId>,
    next_id: u64,
    notices: Vec<Notice>,
    /// Parties created, changed or ended since the caller last stored them.
    changed: BTreeSet<PartyId>,
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Result<Self, PartyError> {
        // Refuse an unusable subnet now rather than at the first create.
        AddressPool::new(config.subnet)?;
        Ok(Registry {
            config,
            parties: BTreeMap::new(),
            by_code: HashMap::new(),
            by_peer: HashMap::new(),
            next_id: 1,
            notices: Vec::new(),
            changed: BTreeSet::new(),
        })
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Creates a party with `creator` as its first member. The caller draws `code` at random.
    pub fn create(
        &mut self,
        now: Instant,
        creator: PeerId,
        creator_name: &str,
        party_name: &str,
        code: PartyCode,
    ) -> Result<PartyView, PartyError> {
        let party_name = valid_name("party name", party_name)?;
        let creator_name = valid_name("member name", creator_name)?;
        if self.by_code.contains_key(&code) {
            return Err(PartyError::CodeInUse);
        }
        if self.parties.len() >= self.config.max_parties {
            return Err(PartyError::TooManyParties);
        }
        let mut pool = AddressPool::new(self.config.subnet)?;
        pool.assign(creator)?;
        self.remove_from_current(creator, LeaveReason::Moved);
        let id = PartyId(self.next_id);
        self.next_id += 1;
        let mut members = BTreeMap::new();
        members.insert(creator, MemberState::new(creator_name, now));
        self.parties.insert(
            id,
            Party {
                name: party_name,
                code,
                members,
                pool,
            },
        );
        self.by_code.insert(code, id);
        self.by_peer.insert(creator, id);
        self.changed.insert(id);
        self.view(id).ok_or(PartyError::WrongCode)
    }

    /// Adds `peer` to the party with `code`; a member joining again just refreshes.
    pub fn join(
        &mut self,
        now: Instant,
        code: &PartyCode,
        peer: PeerId,
        name: &str,
    ) -> Result<PartyView, PartyError> {
        let name = valid_name("member name", name)?;
        let id = *self.by_code.get(code).ok_or(PartyError::WrongCode)?;
        if self.by_peer.get(&peer) == Some(&id) {
            if let Some(m) = self.member_mut(id, peer) {
                m.last_seen = now;
            }
            return self.view(id).ok_or(PartyError::WrongCode);
        }
        let max_members = self.config.max_members;
        let party = self.parties.get_mut(&id).ok_or(PartyError::WrongCode)?;
        if party.members.len() >= max_members {
            return Err(PartyError::PartyFull { max_members });
        }
        party.pool.assign(peer)?;
        let name = distinct(name, party.members.values().map(|m| m.name.as_str()));
        party.members.insert(peer, MemberState::new(name, now));
        self.remove_from_current(peer, LeaveReason::Moved);
        self.by_peer.insert(peer, id);
        self.changed.insert(id);
        if let Some(member) = self.member(id, peer) {
            self.notify_others(id, peer, PartyEvent::Joined(member));
        }
        self.view(id).ok_or(PartyError::WrongCode)
    }

    pub fn leave(&mut self, peer: PeerId) -> Result<(), PartyError> {
        if self.remove_from_current(peer, LeaveReason::Left) {
            Ok(())
        } else {
            Err(PartyError::NotInParty)
        }
    }

    /// A member is alive; `endpoints` and `nat`, when given, replace what the others know.
    pub fn heartbeat(
        &mut self,
        now: Instant,
        peer: PeerId,
        endpoints: Option<Vec<SocketAddr>>,
        nat: Option<NatType>,
    ) -> Result<(), PartyError> {
        if endpoints.as_ref().is_some_and(|e| e.len() > MAX_ENDPOINTS) {
            return Err(PartyError::TooManyEndpoints { max: MAX_ENDPOINTS });
        }
        let id = *self.by_peer.get(&peer).ok_or(PartyError::NotInParty)?;
        let state = self.member_mut(id, peer).ok_or(PartyError::NotInParty)?;
        state.last_seen = now;
        state.confirmed = true;
        let mut changed = false;
        if let Some(endpoints) = endpoints.filter(|e| *e != state.endpoints) {
            state.endpoints = endpoints;
            changed = true;
        }
        if let Some(nat) = nat.filter(|&n| n != state.nat) {
            state.nat = nat;
            changed = true;
        }
        if changed {
            self.changed.insert(id);
            if let Some(member) = self.member(id, peer) {
                self.notify_others(id, peer, PartyEvent::Updated(member));
            }
        }
        Ok(())
    }

    /// Removes members silent for longer than `stale_after` (or never heard from within
    /// `first_heartbeat_within`); returns how many. A party left empty ends.
    pub fn expire(&mut self, now: Instant) -> usize {
        let stale: Vec<PeerId> = self
            .parties
            .values()
            .flat_map(|p| p.members.iter())
            .filter(|(_, m)| now >= self.deadline(m))
            .map(|(&peer, _)| peer)
            .collect();
        for &peer in &stale {
            self.remove_from_current(peer, LeaveReason::Expired);
        }
        stale.len()
    }

    /// When the next member goes stale, for the caller's timer.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.parties
            .values()
            .flat_map(|p| p.members.values())
            .map(|m| self.deadline(m))
            .min()
    }

    /// When `member` is removed unless heard from again.
    fn deadline(&self, member: &MemberState) -> Instant {
        let allowed = if member.confirmed {
            self.config.stale_after
        } else {
            self.config
                .first_heartbeat_within
                .min(self.config.stale_after)
        };
        member.last_seen + allowed
    }

    /// Parties held now.
    pub fn len(&self) -> usize {
        self.parties.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parties.is_empty()
    }

    pub fn party_of(&self, peer: PeerId) -> Option<PartyView> {
        self.by_peer.get(&peer).and_then(|&id| self.view(id))
    }

    /// Notices produced since the last call, oldest first.
    pub fn drain_notices(&mut self) -> std::vec::Drain<'_, Notice> {
        self.notices.drain(..)
    }

    /// Parties created, changed or ended since the last call: store `record(id)`, or delete
    /// the party where that is `None`.
    pub fn drain_changed(&mut self) -> Vec<PartyId> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }

    /// Reports `id` as changed again: the caller could not store it and will retry.
    pub fn mark_changed(&mut self, id: PartyId) {
        self.changed.insert(id);
    }

    /// A party as stored; `None` once it has ended.
    pub fn record(&self, id: PartyId) -> Option<PartyRecord> {
        let party = self.parties.get(&id)?;
        let view = self.view(id)?;
        let mut departed: Vec<_> = party
            .pool
            .reservations()
            .filter(|(peer, _)| !party.members.contains_key(peer))
            .collect();
        departed.sort();
        Some(PartyRecord {
            id,
            name: view.name,
            code: view.code,
            members: view.members,
            departed,
        })
    }

    /// Every party, for storage.
    pub fn records(&self) -> Vec<PartyRecord> {
        self.parties
            .keys()
            .filter_map(|&id| self.record(id))
            .collect()
    }

    /// Rebuilds a stored party. Members count as seen `now`: after a restart each gets a full
    /// `stale_after` to check in again.
    pub fn restore(&mut self, now: Instant, record: PartyRecord) -> Result<(), PartyError> {
        if self.by_code.contains_key(&record.code) || self.parties.contains_key(&record.id) {
            return Err(PartyError::CodeInUse);
        }
        let mut pool = AddressPool::new(self.config.subnet)?;
        for (peer, address) in &record.departed {
            pool.restore(*peer, *address, false)?;
        }
        let mut members = BTreeMap::new();
        for m in &record.members {
            if self.by_peer.contains_key(&m.peer) || members.contains_key(&m.peer) {
                // A peer is in one party at a time; a second claim is corrupt data.
                return Err(PartyError::Address(IpamError::Conflict {
                    address: m.virtual_ip,
                    holder: Some(m.peer),
                }));
            }
            pool.restore(m.peer, m.virtual_ip, true)?;
            members.insert(
                m.peer,
                MemberState {
                    name: m.name.clone(),
                    endpoints: m.endpoints.clone(),
                    nat: m.nat,
                    last_seen: now,
                    // It was a member before the restart; its daemon is only catching up.
                    confirmed: true,
                },
            );
        }
        for peer in members.keys() {
            self.by_peer.insert(*peer, record.id);
        }
        self.by_code.insert(record.code, record.id);
        self.next_id = self.next_id.max(record.id.0 + 1);
        self.parties.insert(
            record.id,
            Party {
                name: record.name,
                code: record.code,
                members,
                pool,
            },
        );
        Ok(())
    }

    /// Takes `peer` out of its party, if any, telling the others; an emptied party ends.
    fn remove_from_current(&mut self, peer: PeerId, reason: LeaveReason) -> bool {
        let Some(id) = self.by_peer.remove(&peer) else {
            return false;
        };
        let Some(party) = self.parties.get_mut(&id) else {
            return false;
        };
        party.members.remove(&peer);
        party.pool.release(peer);
        self.changed.insert(id);
        if party.members.is_empty() {
            let code = party.code;
            self.parties.remove(&id);
            self.by_code.remove(&code);
        } else {
            self.notify_others(id, peer, PartyEvent::Left { peer, reason });
        }
        true
    }

    fn notify_others(&mut self, id: PartyId, about: PeerId, event: PartyEvent) {
        let Some(party) = self.parties.get(&id) else {
            return;
        };
        for &to in party.members.keys().filter(|&&p| p != about) {
            self.notices.push(Notice {
                to,
                party: id,
                event: event.clone(),
            });
        }
    }

    fn member_mut(&mut self, id: PartyId, peer: PeerId) -> Option<&mut MemberState> {
        self.parties.get_mut(&id)?.members.get_mut(&peer)
    }

    fn member(&self, id: PartyId, peer: PeerId) -> Option<Member> {
        let party = self.parties.get(&id)?;
        let state = party.members.get(&peer)?;
        Some(Member {
            peer,
            name: state.name.clone(),
            virtual_ip: party.pool.address_of(peer)?,
            endpoints: state.endpoints.clone(),
            nat: state.nat,
        })
    }

    fn view(&self, id: PartyId) -> Option<PartyView> {
        let party = self.parties.get(&id)?;
        Some(PartyView {
            id,
            name: party.name.clone(),
            code: party.code,
            subnet: party.pool.subnet(),
            members: party
                .members
                .keys()
                .filter_map(|&peer| self.member(id, peer))
                .collect(),
        })
    }
}

impl MemberState {
    fn new(name: String, now: Instant) -> Self {
        MemberState {
            name,
            endpoints: Vec::new(),
            nat: NatType::Unknown,
            last_seen: now,
            confirmed: false,
        }
    }
}

/// Names are shown to other players: printable, trimmed, short.
fn valid_name(what: &'static str, name: &str) -> Result<String, PartyError> {
    let name = name.trim();
    let why = if name.is_empty() {
        "empty".to_owned()
    } else if name.chars().count() > MAX_NAME_CHARS {
        format!("longer than {MAX_NAME_CHARS} characters")
    } else if name.chars().any(shown_text::is_hidden) {
        "contains control or invisible characters".to_owned()
    } else {
        return Ok(name.to_owned());
    };
    Err(PartyError::InvalidName { what, why })
}

/// `name`, or if a member's name in `taken` looks like it ([`shown_text::likeness`]), `name`
/// with the first number from 2 on that makes it look like none: two players both called
/// "player" become "player" and "player 2", so nobody pings or joins the wrong one.
fn distinct<'a>(name: String, taken: impl Iterator<Item = &'a str> + Clone) -> String {
    let clashes = |candidate: &str| {
        let look = shown_text::likeness(candidate);
        taken.clone().any(|t| shown_text::likeness(t) == look)
    };
    if !clashes(&name) {
        return name;
    }
    (2u32..)
        .map(|n| {
            let suffix = format!(" {n}");
            let room = MAX_NAME_CHARS.saturating_sub(suffix.chars().count());
            let base: String = name.chars().take(room).collect();
            format!("{}{suffix}", base.trim_end())
        })
        .find(|candidate| !clashes(candidate))
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    fn code(n: u8) -> PartyCode {
        PartyCode::from_bytes([n; 10])
    }

    fn registry() -> Registry {
        Registry::new(RegistryConfig::default()).unwrap()
    }

    fn events(r: &mut Registry) -> Vec<(PeerId, PartyEvent)> {
        r.drain_notices().map(|n| (n.to, n.event)).collect()
    }

    #[test]
    fn create_join_leave_tell_the_others() {
        let t = Instant::now();
        let mut r = registry();
        let created = r.create(t, peer(1), "alice", "LAN night", code(1)).unwrap();
        assert_eq!(created.members.len(), 1);
        assert!(events(&mut r).is_empty());

        let joined = r.join(t, &code(1), peer(2), "bob").unwrap();
        assert_eq!(joined.members.len(), 2);
        let bob = joined
            .members
            .iter()
            .find(|m| m.peer == peer(2))
            .unwrap()
            .clone();
        assert_eq!(events(&mut r), vec![(peer(1), PartyEvent::Joined(bob))]);

        r.leave(peer(2)).unwrap();
        assert_eq!(
            events(&mut r),
            vec![(
                peer(1),
                PartyEvent::Left {
                    peer: peer(2),
                    reason: LeaveReason::Left
                }
            )]
        );
        assert_eq!(r.leave(peer(2)), Err(PartyError::NotInParty));
    }

    #[test]
    fn members_get_distinct_addresses_and_the_same_one_on_rejoin() {
        let t = Instant::now();
        let mut r = registry();
        r.create(t, peer(1), "a", "p", code(1)).unwrap();
        let view = r.join(t, &code(1), peer(2), "b").unwrap();
        let ips: Vec<_> = view.members.iter().map(|m| m.virtual_ip).collect();
        assert_ne!(ips[0], ips[1]);
        let bob_ip = r.party_of(peer(2)).unwrap().members[1].virtual_ip;
        r.leave(peer(2)).unwrap();
        r.join(t, &code(1), peer(3), "c").unwrap();
        let again = r.join(t, &code(1), peer(2), "b").unwrap();
        let bob = again.members.iter().find(|m| m.peer == peer(2)).unwrap();
        assert_eq!(bob.virtual_ip, bob_ip);
    }

    #[test]
    fn wrong_code_full_party_and_bad_names_are_refused() {
        let t = Instant::now();
        let mut r = Registry::new(RegistryConfig {
            max_members: 2,
            ..RegistryConfig::default()
        })
        .unwrap();
        r.create(t, peer(1), "a", "p", code(1)).unwrap();
        assert_eq!(
            r.join(t, &code(9), peer(2), "b"),
            Err(PartyError::WrongCode)
        );
        r.join(t, &code(1), peer(2), "b").unwrap();
        assert_eq!(
            r.join(t, &code(1), peer(3), "c"),
            Err(PartyError::PartyFull { max_members: 2 })
        );
        // A member joining again is not turned away by a full party.
        assert!(r.join(t, &code(1), peer(2), "b").is_ok());
        for bad in [
            "",
            "   ",
            "a\nb",
            &"x".repeat(MAX_NAME_CHARS + 1),
            "evil\u{202E}gnp.exe",
            "b\u{200B}ob",
        ] {
            assert!(matches!(
                r.join(t, &code(1), peer(4), bad),
                Err(PartyError::InvalidName { .. })
            ));
        }
        assert_eq!(
            r.create(t, peer(5), "e", "q", code(1)).unwrap_err(),
            PartyError::CodeInUse
        );
    }

    #[test]
    fn joining_another_party_leaves_the_first_and_empty_parties_end() {
        let t = Instant::now();
        let mut r = registry();
        r.create(t, peer(1), "a", "one", code(1)).unwrap();
        r.join(t, &code(1), peer(2), "b").unwrap();
        r.create(t, peer(3), "c", "two", code(2)).unwrap();
        events(&mut r);
        r.join(t, &code(2), peer(2), "b").unwrap();
        assert!(events(&mut r).contains(&(
            peer(1),
            PartyEvent::Left {
                peer: peer(2),
                reason: LeaveReason::Moved
            }
        )));
        r.leave(peer(1)).unwrap();
        assert_eq!(
            r.join(t, &code(1), peer(4), "d"),
            Err(PartyError::WrongCode)
        );
    }

    #[test]
    fn silent_members_expire_and_the_others_are_told() {
        let t = Instant::now();
        let stale = RegistryConfig::default().stale_after;
        let mut r = registry();
        r.create(t, peer(1), "a", "p", code(1)).unwrap();
        r.join(t + Duration::from_secs(60), &code(1), peer(2), "b")
            .unwrap();
        // Both heartbeat at once, as the daemon does, so the full `stale_after` applies.
        r.heartbeat(t, peer(1), None, None).unwrap();
        r.heartbeat(t + Duration::from_secs(60), peer(2), None, None)
            .unwrap();
        events(&mut r);
        assert_eq!(r.next_expiry(), Some(t + stale));
        r.heartbeat(t + stale - Duration::from_secs(1), peer(1), None, None)
            .unwrap();
        assert_eq!(r.expire(t + stale), 0);
        assert_eq!(r.expire(t + stale + Duration::from_secs(60)), 1);
        assert_eq!(
            events(&mut r),
            vec![(
                peer(1),
                PartyEvent::Left {
                    peer: peer(2),
                    reason: LeaveReason::Expired
                }
            )]
        );
    }

    #[test]
    fn parties_whose_members_never_heartbeat_end_early() {
        // One source creating parties with throwaway keys and never heartbeating must not
        // hold the server's capacity for `stale_after`.
        let t = Instant::now();
        let config = RegistryConfig {
            max_parties: 2,
            ..RegistryConfig::default()
        };
        let first = config.first_heartbeat_within;
        let stale = config.stale_after;
        let mut r = Registry::new(config).unwrap();
        r.create(t, peer(1), "a", "p", code(1)).unwrap();
        r.create(t, peer(2), "b", "q", code(2)).unwrap();
        assert_eq!(
            r.create(t, peer(3), "c", "r", code(3)),
            Err(PartyError::TooManyParties)
        );
        // peer(2) heartbeats as the daemon does, right after creating.
        r.heartbeat(t + Duration::from_secs(1), peer(2), None, None)
            .unwrap();
        assert_eq!(r.next_expiry(), Some(t + first));
        assert_eq!(r.expire(t + first - Duration::from_millis(1)), 0);
        assert_eq!(r.expire(t + first), 1);
        assert!(r.party_of(peer(1)).is_none());
        assert_eq!(r.len(), 1);
        assert!(r.drain_changed().contains(&PartyId(1)));
        r.create(t + first, peer(3), "c", "r", code(3)).unwrap();
        r.heartbeat(t + first, peer(3), None, None).unwrap();
        // Confirmed members keep the full `stale_after`.
        assert!(r.party_of(peer(2)).is_some());
        assert_eq!(r.expire(t + stale), 0);
        assert_eq!(r.expire(t + stale + Duration::from_secs(1)), 1);
        assert_eq!(r.expire(t + first + stale), 1);
        assert!(r.is_empty());
    }

    #[test]
    fn restored_members_get_the_full_stale_after() {
        let t = Instant::now();
        let mut r = registry();
        r.create(t, peer(1), "a", "p", code(1)).unwrap();
        let mut restored = registry();
        for record in r.records() {
            restored.restore(t, record).unwrap();
        }
        let first = RegistryConfig::default().first_heartbeat_within;
        assert_eq!(restored.expire(t + first), 0);
        assert_eq!(
            restored.next_expiry(),
            Some(t + RegistryConfig::default().stale_after)
        );
    }

    #[test]
    fn heartbeats_announce_changes_only() {
        let t = Instant::now();
        let mut r = registry();
        r.create(t, peer(1), "a", "p", code(1)).unwrap();
        r.join(t, &code(1), peer(2), "b").unwrap();
        events(&mut r);
        let endpoints = vec!["192.0.2.7:51820".parse().unwrap()];
        r.heartbeat(t, peer(2), Some(endpoints.clone()), Some(NatType::FullCone))
            .unwrap();
        let got = events(&mut r);
        assert!(matches!(&got[..], [(to, PartyEvent::Updated(m))]
            if *to == peer(1) && m.endpoints == endpoints && m.nat == NatType::FullCone));
        r.heartbeat(t, peer(2), Some(endpoints), Some(NatType::FullCone))
            .unwrap();
        assert!(events(&mut r).is_empty());
        let too_many = vec!["192.0.2.7:1".parse().unwrap(); MAX_ENDPOINTS + 1];
        assert_eq!(
            r.heartbeat(t, peer(2), Some(too_many), None),
            Err(PartyError::TooManyEndpoints { max: MAX_ENDPOINTS })
        );
        assert_eq!(
            r.heartbeat(t, peer(9), None, None),
            Err(PartyError::NotInParty)
        );
    }

    #[test]
    fn every_change_is_reported_for_storage() {
        let t = Instant::now();
        let mut r = registry();
        let one = r.create(t, peer(1), "a", "p", code(1)).unwrap().id;
        assert_eq!(r.drain_changed(), vec![one]);
        assert!(r.drain_changed().is_empty());
        // What the caller could not store comes back at the next drain.
        r.mark_changed(one);
        assert_eq!(r.drain_changed(), vec![one]);
        r.join(t, &code(1), peer(2), "b").unwrap();
        // A heartbeat that changes nothing is not a change.
        r.heartbeat(t, peer(2), None, None).unwrap();
        assert_eq!(r.drain_changed(), vec![one]);
        r.leave(peer(1)).unwrap();
        r.leave(peer(2)).unwrap();
        assert_eq!(r.drain_changed(), vec![one]);
        assert_eq!(r.record(one), None, "an ended party is deleted");
    }

    #[test]
    fn records_restore_the_same_parties() {
        let t = Instant::now();
        let mut r = registry();
        r.create(t, peer(1), "a", "p", code(1)).unwrap();
        r.join(t, &code(1), peer(2), "b").unwrap();
        r.join(t, &code(1), peer(3), "c").unwrap();
        r.leave(peer(3)).unwrap();
        let records = r.records();
        assert_eq!(records[0].departed.len(), 1);

        let mut restored = registry();
        for record in records.clone() {
            restored.restore(t, record).unwrap();
        }
        assert_eq!(restored.records(), records);
        // The departed member still gets its address back, and ids keep counting.
        let before = records[0].departed[0].1;
        let view = restored.join(t, &code(1), peer(3), "c").unwrap();
        assert_eq!(
            view.members
                .iter()
                .find(|m| m.peer == peer(3))
                .unwrap()
                .virtual_ip,
            before
        );
        let other = restored.create(t, peer(4), "d", "q", code(2)).unwrap();
        assert!(other.id > records[0].id);
        // The same records again are refused, not merged.
        assert!(restored.restore(t, records[0].clone()).is_err());
    }

    #[test]
    fn a_name_like_another_members_gets_a_number() {
        let t = Instant::now();
        let mut r = Registry::new(RegistryConfig::default()).unwrap();
        r.create(t, peer(1), "player", "party", code(1)).unwrap();
        let names = |r: &mut Registry| -> Vec<String> {
            let view = r.join(t, &code(1), peer(1), "player").unwrap();
            let mut names: Vec<String> = view.members.iter().map(|m| m.name.clone()).collect();
            names.sort();
            names
        };
        r.join(t, &code(1), peer(2), "Player").unwrap();
        r.join(t, &code(1), peer(3), " PLAYER").unwrap();
        r.join(t, &code(1), peer(4), &"x".repeat(MAX_NAME_CHARS))
            .unwrap();
        r.join(t, &code(1), peer(5), &"X".repeat(MAX_NAME_CHARS))
            .unwrap();
        let mut expected = vec![
            "player".to_owned(),
            "Player 2".to_owned(),
            "PLAYER 3".to_owned(),
            "x".repeat(MAX_NAME_CHARS),
            format!("{} 2", "X".repeat(MAX_NAME_CHARS - 2)),
        ];
        expected.sort();
        assert_eq!(names(&mut r), expected);
        // A member joining again keeps its name.
        assert_eq!(names(&mut r), expected);
    }
}
