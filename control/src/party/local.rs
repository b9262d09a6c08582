//! Parties without a control server, for players on one physical LAN: members find each other
//! by multicast announcements, and each picks its own address with the same rule the server
//! uses ([`crate::ipam::candidates`]), resolving collisions by key order.
//!
//! The party code is the shared secret. Announcements carry a MAC under a key derived from
//! it, so someone on the LAN without the code can neither join nor inject a member; a
//! per-member sequence number stops replays of older announcements. Sans-IO: datagrams and
//! the time go in; announcements to send and party changes come out.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac256, Digest};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::MAX_NAME_CHARS;
use super::code::PartyCode;
use crate::ipam::candidates;
use crate::nat::NatType;
use crate::peer_id::PeerId;
use crate::server_api::{MemberJson, PartyJson};
use crate::shown_text;

/// Where announcements go: an administratively scoped group, sent with TTL 1.
pub const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 66, 66);
pub const PORT: u16 = 8668;
/// How often a member announces itself.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// Silence after which a member is gone (a leaving member says so at once).
pub const SILENT_AFTER: Duration = Duration::from_secs(4);
/// Announcements are small; anything larger is not ours.
pub const MAX_DATAGRAM: usize = 1024;

const MAGIC: &[u8; 4] = b"LRL1";
const TAG_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalError {
    /// Not an announcement at all.
    Malformed,
    /// Same party id, wrong MAC: someone without the code, or a corrupted datagram.
    BadMac,
    /// An older announcement of a member we already heard from.
    Replay,
}

impl std::fmt::Display for LocalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LocalError::Malformed => "malformed local-party announcement",
            LocalError::BadMac => "local-party announcement with a bad MAC",
            LocalError::Replay => "replayed local-party announcement",
        })
    }
}

impl std::error::Error for LocalError {}

#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    /// Lets members of other local parties skip ours cheaply.
    party: String,
    peer: PeerId,
    name: String,
    ip: Ipv4Addr,
    port: u16,
    seq: u64,
    #[serde(default)]
    leaving: bool,
}

#[derive(Debug, Clone)]
struct Seen {
    name: String,
    ip: Ipv4Addr,
    endpoint: SocketAddr,
    seq: u64,
    last_seen: Instant,
}

pub struct LocalParty {
    code: PartyCode,
    party_id: String,
    key: [u8; 32],
    me: PeerId,
    my_name: String,
    port: u16,
    subnet: Ipv4Net,
    my_ip: Ipv4Addr,
    seq: u64,
    members: BTreeMap<PeerId, Seen>,
    next_announce: Instant,
}

impl LocalParty {
    /// `seq_start` must grow across restarts (the caller passes the time in milliseconds), so
    /// that the others do not take our fresh announcements for replays.
    pub fn new(
        now: Instant,
        code: PartyCode,
        me: PeerId,
        my_name: &str,
        port: u16,
        subnet: Ipv4Net,
        seq_start: u64,
    ) -> Self {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut h = Blake2s256::new();
            h.update(label);
            h.update(code.as_bytes());
            h.finalize().into()
        };
        let id = derive(b"lanrage local party id");
        let my_ip = candidates(subnet, me).next().unwrap_or(subnet.network());
        LocalParty {
            code,
            party_id: id[..8].iter().map(|b| format!("{b:02x}")).collect(),
            key: derive(b"lanrage local party key"),
            me,
            my_name: my_name.to_owned(),
            port,
            subnet,
            my_ip,
            seq: seq_start,
            members: BTreeMap::new(),
            next_announce: now,
        }
    }

    pub fn my_ip(&self) -> Ipv4Addr {
        self.my_ip
    }

    /// Takes in a datagram from the group. Returns whether the party changed (members, their
    /// addresses or endpoints, or our own address).
    pub fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<bool, LocalError> {
        let payload = datagram
            .strip_prefix(MAGIC.as_slice())
            .filter(|rest| rest.len() > TAG_LEN && datagram.len() <= MAX_DATAGRAM)
            .ok_or(LocalError::Malformed)?;
        let (tag, body) = payload.split_at(TAG_LEN);
        let a: Announcement = serde_json::from_slice(body).map_err(|_| LocalError::Malformed)?;
        if a.party != self.party_id {
            return Ok(false);
        }
        if !bool::from(self.tag(body).ct_eq(tag)) {
            return Err(LocalError::BadMac);
        }
        if a.peer == self.me {
            return Ok(false);
        }
        if self.members.get(&a.peer).is_some_and(|s| a.seq <= s.seq) {
            return Err(LocalError::Replay);
        }
        if a.leaving {
            return Ok(self.members.remove(&a.peer).is_some());
        }
        let endpoint = SocketAddr::new(from.ip(), a.port);
        let seen = Seen {
            name: shown_text::clean(&a.name, MAX_NAME_CHARS),
            ip: a.ip,
            endpoint,
            seq: a.seq,
            last_seen: now,
        };
        let changed = self
            .members
            .get(&a.peer)
            .is_none_or(|old| old.ip != seen.ip || old.endpoint != seen.endpoint);
        self.members.insert(a.peer, seen);
        // Two members on one address: the lower key keeps it, the other moves on.
        let moved = a.ip == self.my_ip && a.peer < self.me && self.choose_address();
        if moved {
            self.next_announce = now;
        }
        Ok(changed || moved)
    }

    /// Timer work: the announcement to send now, if due, and whether silent members were
    /// dropped (the party changed).
    pub fn poll(&mut self, now: Instant) -> (Option<Vec<u8>>, bool) {
        let before = self.members.len();
        self.members
            .retain(|_, s| now.saturating_duration_since(s.last_seen) < SILENT_AFTER);
        let expired = self.members.len() != before;
        let announce = (now >= self.next_announce).then(|| {
            self.next_announce = now + ANNOUNCE_EVERY;
            self.announcement(false)
        });
        (announce, expired)
    }

    pub fn next_timeout(&self) -> Instant {
        let expiry = self
            .members
            .values()
            .map(|s| s.last_seen + SILENT_AFTER)
            .min();
        expiry.map_or(self.next_announce, |e| e.min(self.next_announce))
    }

    /// The announcement that tells the others we are gone.
    pub fn leave(&mut self) -> Vec<u8> {
        self.announcement(true)
    }

    /// The party in the control server's terms, so the daemon follows it the same way.
    pub fn party(&self) -> PartyJson {
        let me = MemberJson {
            peer: self.me,
            name: self.my_name.clone(),
            virtual_ip: self.my_ip,
            endpoints: Vec::new(),
            nat: NatType::Unknown,
        };
        let others = self.members.iter().map(|(peer, s)| MemberJson {
            peer: *peer,
            name: s.name.clone(),
            virtual_ip: s.ip,
            endpoints: vec![s.endpoint],
            nat: NatType::Unknown,
        });
        PartyJson {
            id: 0,
            name: "local party".into(),
            code: self.code.to_string(),
            subnet: self.subnet.to_string(),
            members: std::iter::once(me).chain(others).collect(),
        }
    }

    /// Moves to the first candidate no other member holds; returns whether we moved.
    fn choose_address(&mut self) -> bool {
        let taken: Vec<Ipv4Addr> = self.members.values().map(|s| s.ip).collect();
        let next = candidates(self.subnet, self.me).find(|ip| !taken.contains(ip));
        match next {
            Some(ip) if ip != self.my_ip => {
                self.my_ip = ip;
                true
            }
            _ => false,
        }
    }

    fn announcement(&mut self, leaving: bool) -> Vec<u8> {
        self.seq += 1;
        let body = serde_json::to_vec(&Announcement {
            party: self.party_id.clone(),
            peer: self.me,
            name: self.my_name.clone(),
            ip: self.my_ip,
            port: self.port,
            seq: self.seq,
            leaving,
        })
        .unwrap_or_default();
        let mut datagram = Vec::with_capacity(MAGIC.len() + TAG_LEN + body.len());
        datagram.extend_from_slice(MAGIC);
        datagram.extend_from_slice(&self.tag(&body));
        datagram.extend_from_slice(&body);
        datagram
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = <Blake2sMac256 as KeyInit>::new(&self.key.into());
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::DEFAULT_SUBNET;

    fn code(n: u8) -> PartyCode {
        PartyCode::from_bytes([n; 10])
    }

    fn member(now: Instant, n: u8, party: u8) -> LocalParty {
        LocalParty::new(
            now,
            code(party),
            PeerId([n; 32]),
            &format!("p{n}"),
            51820 + u16::from(n),
            DEFAULT_SUBNET,
            1000,
        )
    }

    fn from(n: u8) -> SocketAddr {
        SocketAddr::from(([192, 168, 1, n], PORT))
    }

    #[test]
    fn members_find_each_other_with_their_endpoints() {
        let t = Instant::now();
        let (mut a, mut b) = (member(t, 1, 7), member(t, 2, 7));
        let (hello_a, _) = a.poll(t);
        let (hello_b, _) = b.poll(t);
        assert_eq!(b.receive(t, from(1), &hello_a.unwrap()), Ok(true));
        assert_eq!(a.receive(t, from(2), &hello_b.unwrap()), Ok(true));
        let party = a.party();
        assert_eq!(party.members.len(), 2);
        let bob = &party.members[1];
        assert_eq!(
            bob.endpoints,
            vec![SocketAddr::from(([192, 168, 1, 2], 51822))]
        );
        assert_eq!(bob.virtual_ip, b.my_ip());
        // Nothing new: no change.
        let (again, _) = b.poll(t + ANNOUNCE_EVERY);
        assert_eq!(a.receive(t, from(2), &again.unwrap()), Ok(false));
    }

    #[test]
    fn other_parties_and_outsiders_are_kept_out() {
        let t = Instant::now();
        let (mut a, mut stranger) = (member(t, 1, 7), member(t, 2, 8));
        let (hello, _) = stranger.poll(t);
        assert_eq!(a.receive(t, from(2), &hello.unwrap()), Ok(false));
        // The party id is public; without the code the MAC key is a guess.
        let mut forger = member(t, 3, 7);
        forger.key = [0; 32];
        let (forged, _) = forger.poll(t);
        assert_eq!(
            a.receive(t, from(3), &forged.unwrap()),
            Err(LocalError::BadMac)
        );
        for garbage in [
            &b""[..],
            b"LRL1",
            b"LRL1xxxxxxxxxxxxxxxxxxxxxx",
            &[0u8; 2000],
        ] {
            assert_eq!(a.receive(t, from(3), garbage), Err(LocalError::Malformed));
        }
        assert_eq!(a.party().members.len(), 1);
    }

    #[test]
    fn replays_are_refused_and_leaving_is_immediate() {
        let t = Instant::now();
        let (mut a, mut b) = (member(t, 1, 7), member(t, 2, 7));
        let (first, _) = b.poll(t);
        let first = first.unwrap();
        a.receive(t, from(2), &first).unwrap();
        assert_eq!(a.receive(t, from(2), &first), Err(LocalError::Replay));
        assert_eq!(a.receive(t, from(2), &b.leave()), Ok(true));
        assert_eq!(a.party().members.len(), 1);
    }

    #[test]
    fn silent_members_expire() {
        let t = Instant::now();
        let (mut a, mut b) = (member(t, 1, 7), member(t, 2, 7));
        a.receive(t, from(2), &b.poll(t).0.unwrap()).unwrap();
        assert_eq!(a.next_timeout(), t);
        a.poll(t);
        assert!(!a.poll(t + SILENT_AFTER - Duration::from_millis(1)).1);
        assert!(a.poll(t + SILENT_AFTER).1);
        assert_eq!(a.party().members.len(), 1);
    }

    #[test]
    fn the_higher_key_moves_off_a_shared_address() {
        let t = Instant::now();
        let (mut low, mut high) = (member(t, 1, 7), member(t, 2, 7));
        // Force a collision: both on low's address.
        high.my_ip = low.my_ip;
        let (from_low, _) = low.poll(t);
        let (from_high, _) = high.poll(t);
        assert_eq!(high.receive(t, from(1), &from_low.unwrap()), Ok(true));
        assert_ne!(high.my_ip(), low.my_ip(), "the higher key moved");
        assert_eq!(high.next_timeout(), t, "and announces at once");
        let before = low.my_ip();
        low.receive(t, from(2), &from_high.unwrap()).unwrap();
        assert_eq!(low.my_ip(), before, "the lower key stays");
    }
}
