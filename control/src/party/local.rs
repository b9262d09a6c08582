//! Parties without a control server, for players on one physical LAN: members find each other
//! by multicast announcements, and each picks its own address with the same rule the server
//! uses ([`crate::ipam::candidates`]), resolving collisions by key order.
//!
//! The party code is the shared secret. Announcements carry a MAC under a key derived from
//! it, so someone on the LAN without the code can neither join nor inject a member; a
//! per-member sequence number stops replays of older announcements.
//!
//! The code does not say who a member is: everyone who has it could announce in another
//! member's name, say that it leaves, or move it elsewhere. So each announcement also
//! carries a tag for every member heard so far, under a key only the sender and that member
//! can derive (from their static WireGuard keys, by Diffie-Hellman). Once a member's
//! announcement carried a valid tag for us, only announcements with one may change or remove
//! it, and a "leaving" never counts without one (a member that leaves before it heard us is
//! dropped when it falls silent). Sans-IO: datagrams and the time go in; announcements to send
//! and party changes come out.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac256, Digest};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};

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
/// Announcements fit one Ethernet frame; anything larger is not ours.
pub const MAX_DATAGRAM: usize = 1400;
/// Members an announcement carries a tag for (see the module documentation): what fits
/// [`MAX_DATAGRAM`] beside the rest. Beyond that, members hear each other untagged.
pub const MAX_TAGS: usize = 24;
/// A tag: the first 4 bytes of the addressee's key and 16 bytes of MAC, in hex.
const PAIR_TAG_HEX: usize = 2 * (4 + TAG_LEN);

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
    /// A tag for us that its claimed sender's key did not make: someone else with the code.
    BadPairTag,
    /// An untagged announcement about a member whose announcements are tagged, or an
    /// untagged "leaving": anyone with the code could have sent it.
    Untagged,
}

impl std::fmt::Display for LocalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LocalError::Malformed => "malformed local-party announcement",
            LocalError::BadMac => "local-party announcement with a bad MAC",
            LocalError::Replay => "replayed local-party announcement",
            LocalError::BadPairTag => "local-party announcement with a forged member tag",
            LocalError::Untagged => {
                "untagged local-party announcement about a member whose announcements are tagged"
            }
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
    /// One per member heard (up to [`MAX_TAGS`]): the addressee's key prefix and a MAC of the
    /// announcement without its tags, under the pair's key (hex).
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Debug, Clone)]
struct Seen {
    name: String,
    ip: Ipv4Addr,
    endpoint: SocketAddr,
    seq: u64,
    last_seen: Instant,
    /// The key of the tags between it and us.
    pair_key: [u8; 32],
    /// Its announcements carry valid tags for us: untagged ones no longer count.
    tagged: bool,
}

pub struct LocalParty {
    code: PartyCode,
    party_id: String,
    key: [u8; 32],
    me: PeerId,
    secret: StaticSecret,
    /// How tags for us begin.
    my_tag_prefix: String,
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
    /// `secret`: our static WireGuard key, which tags our announcements for each member.
    pub fn new(
        now: Instant,
        code: PartyCode,
        secret: StaticSecret,
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
        let me = PeerId(PublicKey::from(&secret).to_bytes());
        let my_ip = candidates(subnet, me).next().unwrap_or(subnet.network());
        LocalParty {
            code,
            party_id: id[..8].iter().map(|b| format!("{b:02x}")).collect(),
            key: derive(b"lanrage local party key"),
            me,
            my_tag_prefix: hex::encode(&me.0[..4]),
            secret,
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
        let known = self.members.get(&a.peer);
        let pair_key = known.map_or_else(|| self.pair_key(&a.peer), |s| s.pair_key);
        let tagged = match a.tags.iter().find(|t| t.starts_with(&self.my_tag_prefix)) {
            Some(tag)
                if bool::from(
                    pair_tag(&pair_key, &untagged_body(&a), &self.my_tag_prefix)
                        .as_bytes()
                        .ct_eq(tag.as_bytes()),
                ) =>
            {
                true
            }
            Some(_) => return Err(LocalError::BadPairTag),
            None => false,
        };
        if let Some(s) = known {
            if s.tagged && !tagged {
                return Err(LocalError::Untagged);
            }
            // A tagged announcement outranks what an untagged one claimed, its number too.
            let outranks = tagged && !s.tagged;
            if a.seq <= s.seq && !outranks {
                return Err(LocalError::Replay);
            }
        }
        if a.leaving {
            if !tagged {
                return Err(LocalError::Untagged);
            }
            return Ok(self.members.remove(&a.peer).is_some());
        }
        let endpoint = SocketAddr::new(from.ip(), a.port);
        let seen = Seen {
            name: shown_text::clean(&a.name, MAX_NAME_CHARS),
            ip: a.ip,
            endpoint,
            seq: a.seq,
            last_seen: now,
            pair_key,
            tagged,
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
        let mut a = Announcement {
            party: self.party_id.clone(),
            peer: self.me,
            name: self.my_name.clone(),
            ip: self.my_ip,
            port: self.port,
            seq: self.seq,
            leaving,
            tags: Vec::new(),
        };
        // Every tag covers the same bytes: the announcement before its tags.
        let untagged = serde_json::to_vec(&a).unwrap_or_default();
        a.tags = self
            .members
            .iter()
            .take(MAX_TAGS)
            .map(|(peer, s)| pair_tag(&s.pair_key, &untagged, &hex::encode(&peer.0[..4])))
            .collect();
        let body = serde_json::to_vec(&a).unwrap_or_default();
        let mut datagram = Vec::with_capacity(MAGIC.len() + TAG_LEN + body.len());
        datagram.extend_from_slice(MAGIC);
        datagram.extend_from_slice(&self.tag(&body));
        datagram.extend_from_slice(&body);
        datagram
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        mac16(&self.key, body)
    }

    /// The key of the tags between `peer` and us: only the two of us can derive it, and it
    /// is bound to this party's code.
    fn pair_key(&self, peer: &PeerId) -> [u8; 32] {
        let shared = self.secret.diffie_hellman(&PublicKey::from(peer.0));
        let mut h = Blake2s256::new();
        h.update(b"lanrage local pair key");
        h.update(self.key);
        h.update(shared.as_bytes());
        h.finalize().into()
    }
}

/// The tag for the member whose key begins with `prefix` (hex): a MAC of the announcement
/// without its tags ([`untagged_body`]) under the pair's key.
fn pair_tag(key: &[u8; 32], untagged: &[u8], prefix: &str) -> String {
    let mut tag = String::with_capacity(PAIR_TAG_HEX);
    tag.push_str(prefix);
    tag.push_str(&hex::encode(mac16(key, untagged)));
    tag
}

/// What the tags in `a` cover: `a` as sent, without its tags.
fn untagged_body(a: &Announcement) -> Vec<u8> {
    let untagged = Announcement {
        tags: Vec::new(),
        party: a.party.clone(),
        name: a.name.clone(),
        ..*a
    };
    serde_json::to_vec(&untagged).unwrap_or_default()
}

fn mac16(key: &[u8; 32], body: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = <Blake2sMac256 as KeyInit>::new(key.into());
    mac.update(body);
    let full = mac.finalize().into_bytes();
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&full[..TAG_LEN]);
    tag
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
            StaticSecret::from([n; 32]),
            &format!("p{n}"),
            51820 + u16::from(n),
            DEFAULT_SUBNET,
            1000,
        )
    }

    /// What `forger`, who has the code but not `victim`'s key, can say in its name: that it is
    /// at another address (or leaves), numbered `seq`, with no tags.
    fn claim(forger: &LocalParty, victim: PeerId, leaving: bool, seq: u64) -> Announcement {
        Announcement {
            party: forger.party_id.clone(),
            peer: victim,
            name: "bob".into(),
            ip: Ipv4Addr::new(10, 66, 0, 99),
            port: 1,
            seq,
            leaving,
            tags: vec![],
        }
    }

    /// `a` as a datagram under the party's MAC, which anyone with the code can make.
    fn sealed(holder: &LocalParty, a: &Announcement) -> Vec<u8> {
        let body = serde_json::to_vec(a).unwrap();
        [&MAGIC[..], &holder.tag(&body), &body].concat()
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
        // B's leaving counts once B has heard A (and so can tag it for A).
        b.receive(t, from(1), &a.poll(t).0.unwrap()).unwrap();
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
        if low.me > high.me {
            std::mem::swap(&mut low, &mut high);
        }
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

    /// Everyone with the code can make an announcement; only a member's own key makes the
    /// tags in it. Once two members have heard each other, nobody else can make one leave,
    /// move or rename, nor shut it out with a forged sequence number.
    #[test]
    fn another_member_cannot_speak_for_one_that_tags_its_announcements() {
        let t = Instant::now();
        let (mut a, mut b, forger) = (member(t, 1, 7), member(t, 2, 7), member(t, 3, 7));
        // A and B hear each other once: B's next announcements carry a tag for A.
        b.receive(t, from(1), &a.poll(t).0.unwrap()).unwrap();
        a.receive(t, from(2), &b.poll(t).0.unwrap()).unwrap();
        let tagged = b.poll(t + ANNOUNCE_EVERY).0.unwrap();
        assert_eq!(a.receive(t, from(2), &tagged), Ok(false));
        assert!(a.members[&b.me].tagged);

        // The forger has the code, not B's key: a "leaving" in B's name, or B elsewhere with
        // a sequence number far ahead, announced as the party's MAC allows.
        let forge = |leaving: bool, seq: u64, tags: Vec<String>| {
            sealed(
                &forger,
                &Announcement {
                    tags,
                    ..claim(&forger, b.me, leaving, seq)
                },
            )
        };
        assert_eq!(
            a.receive(t, from(3), &forge(true, u64::MAX, vec![])),
            Err(LocalError::Untagged)
        );
        assert_eq!(
            a.receive(t, from(3), &forge(false, u64::MAX, vec![])),
            Err(LocalError::Untagged)
        );
        // A tag for A made with the forger's own pair key with A is not B's.
        let fake = pair_tag(
            &forger.pair_key(&a.me),
            &untagged_body(&claim(&forger, b.me, true, u64::MAX)),
            &a.my_tag_prefix,
        );
        assert_eq!(
            a.receive(t, from(3), &forge(true, u64::MAX, vec![fake])),
            Err(LocalError::BadPairTag)
        );
        let party = a.party();
        let bob = party
            .members
            .iter()
            .find(|m| m.peer == b.me)
            .expect("B still in A's party");
        assert_eq!(
            (bob.virtual_ip, bob.endpoints[0]),
            (b.my_ip(), SocketAddr::new(from(2).ip(), b.port))
        );
        // B's own leaving counts.
        assert_eq!(a.receive(t, from(2), &b.leave()), Ok(true));
        assert!(a.party().members.iter().all(|m| m.peer != b.me));
    }

    /// An untagged announcement heard before the member's own cannot shut it out: a tagged
    /// one outranks it, sequence number and all.
    #[test]
    fn a_forgery_heard_first_is_replaced_by_the_members_own_announcement() {
        let t = Instant::now();
        let (mut a, mut b, forger) = (member(t, 1, 7), member(t, 2, 7), member(t, 3, 7));
        let forged = sealed(&forger, &claim(&forger, b.me, false, u64::MAX));
        assert_eq!(a.receive(t, from(3), &forged), Ok(true));
        b.receive(t, from(1), &a.poll(t).0.unwrap()).unwrap();
        assert_eq!(a.receive(t, from(2), &b.poll(t).0.unwrap()), Ok(true));
        let party = a.party();
        let bob = party.members.iter().find(|m| m.peer == b.me).unwrap();
        assert_eq!(bob.virtual_ip, b.my_ip());
    }
}
