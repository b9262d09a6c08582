//! The party's server browser: each member announces the game servers it hosts to the others,
//! through the tunnel, and keeps what it hears until the announcer falls silent.
//!
//! Servers are also found from games' own LAN announcements seen on the tunnel: Minecraft's
//! open-to-LAN worlds multicast `[MOTD]name[/MOTD][AD]port[/AD]` to 224.0.2.60:4445 every
//! 1.5 s ([`minecraft_lan_world`]).
//!
//! Announcements are small JSON datagrams to every member's virtual IP on [`PORT`], repeated
//! every [`ANNOUNCE_EVERY`]. They travel inside WireGuard, whose allowed-IPs check makes the
//! source address the sender's identity; a member can only speak for itself. Anything a member
//! sends is bounded ([`Announcement::decode`]) before it is kept.
//!
//! An announcement also names the IPv4 multicast groups the member's host listens to, so that
//! the others' engines send it only the multicast it hears; a member not heard from (or one
//! listening to more than [`MAX_GROUPS`]) gets every group.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::shown_text;

/// The UDP port announcements go to, on each member's virtual IP.
pub const PORT: u16 = 8669;

/// How often a member announces its servers (also when it hosts none: an empty list clears
/// what the others showed).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// A member's servers disappear this long after its last announcement (three missed).
pub const FORGET_AFTER: Duration = Duration::from_secs(16);

/// Largest announcement accepted: one datagram that never fragments on the tunnel.
pub const MAX_DATAGRAM: usize = 1200;

/// Most servers one member may list.
pub const MAX_SERVERS: usize = 16;

/// Longest game id or server name, in bytes.
pub const MAX_TEXT: usize = 64;

/// Most multicast groups one member may name; a host that listens to more says nothing
/// (and receives every group).
pub const MAX_GROUPS: usize = 32;

/// One server a member hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostedServer {
    /// The game's profile id, e.g. `warcraft3`.
    pub game: String,
    /// What the browser shows, e.g. "alice's Warcraft III".
    pub name: String,
    pub port: u16,
    /// Players in the game, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub players: Option<u32>,
    /// Players the server takes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_players: Option<u32>,
}

/// What one member announces: every server it hosts now, and the multicast groups it listens
/// to (absent: not known, from an older member or one that listens to too many).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub servers: Vec<HostedServer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<Ipv4Addr>>,
}

/// Why an announcement was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnouncementError {
    TooLarge(usize),
    Malformed(String),
    TooManyServers(usize),
    TooManyGroups(usize),
    TextTooLong,
}

impl std::fmt::Display for AnnouncementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnnouncementError::TooLarge(n) => write!(f, "{n} bytes, above {MAX_DATAGRAM}"),
            AnnouncementError::Malformed(e) => write!(f, "not an announcement: {e}"),
            AnnouncementError::TooManyServers(n) => {
                write!(f, "{n} servers, above {MAX_SERVERS}")
            }
            AnnouncementError::TooManyGroups(n) => {
                write!(f, "{n} multicast groups, above {MAX_GROUPS}")
            }
            AnnouncementError::TextTooLong => {
                write!(f, "a game id or name longer than {MAX_TEXT} bytes")
            }
        }
    }
}

impl std::error::Error for AnnouncementError {}

impl Announcement {
    /// The datagram, with servers beyond [`MAX_SERVERS`] left out, texts cut to [`MAX_TEXT`]
    /// bytes and more than [`MAX_GROUPS`] groups left unsaid, so that what we send is what
    /// others accept.
    pub fn encode(&self) -> Vec<u8> {
        let servers = self
            .servers
            .iter()
            .take(MAX_SERVERS)
            .map(|s| HostedServer {
                game: cut(&s.game),
                name: cut(&s.name),
                ..s.clone()
            })
            .collect();
        let groups = self.groups.clone().filter(|g| g.len() <= MAX_GROUPS);
        let mut bytes = serde_json::to_vec(&Announcement { servers, groups }).unwrap_or_default();
        // Sixteen servers of 64-byte texts could overflow one datagram: drop from the end.
        let mut announcement: Announcement = serde_json::from_slice(&bytes).unwrap_or_default();
        while bytes.len() > MAX_DATAGRAM && announcement.servers.pop().is_some() {
            bytes = serde_json::to_vec(&announcement).unwrap_or_default();
        }
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, AnnouncementError> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(AnnouncementError::TooLarge(bytes.len()));
        }
        let announcement: Announcement = serde_json::from_slice(bytes)
            .map_err(|e| AnnouncementError::Malformed(e.to_string()))?;
        if announcement.servers.len() > MAX_SERVERS {
            return Err(AnnouncementError::TooManyServers(
                announcement.servers.len(),
            ));
        }
        if announcement
            .servers
            .iter()
            .any(|s| s.game.len() > MAX_TEXT || s.name.len() > MAX_TEXT)
        {
            return Err(AnnouncementError::TextTooLong);
        }
        let mut announcement = announcement;
        if let Some(groups) = &mut announcement.groups {
            if groups.len() > MAX_GROUPS {
                return Err(AnnouncementError::TooManyGroups(groups.len()));
            }
            groups.retain(Ipv4Addr::is_multicast);
            groups.sort_unstable();
            groups.dedup();
        }
        // Another member's words, for this player's screen.
        for s in &mut announcement.servers {
            s.game = shown_text::clean(&s.game, MAX_TEXT);
            s.name = shown_text::clean(&s.name, MAX_TEXT);
        }
        Ok(announcement)
    }
}

/// `text` cut to at most `MAX_TEXT` bytes, at a character boundary.
fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Where Minecraft (Java Edition) announces worlds opened to LAN.
pub const MINECRAFT_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 2, 60);
pub const MINECRAFT_PORT: u16 = 4445;

/// A Minecraft LAN world announcement, `[MOTD]name[/MOTD][AD]port[/AD]`: the world's name
/// (cut to [`MAX_TEXT`] bytes) and its port. Anything else is `None`.
pub fn minecraft_lan_world(payload: &[u8]) -> Option<(String, u16)> {
    let text = std::str::from_utf8(payload).ok()?;
    let motd = between(text, "[MOTD]", "[/MOTD]")?;
    let port = between(text, "[AD]", "[/AD]")?.trim().parse::<u16>().ok()?;
    (port != 0).then(|| (cut(motd), port))
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

/// The servers heard from the party, by announcing member, and those found from games' own
/// LAN announcements, by host and port.
#[derive(Debug, Default)]
pub struct ServerList {
    by_host: BTreeMap<Ipv4Addr, (Instant, Announcement)>,
    discovered: BTreeMap<(Ipv4Addr, u16), (Instant, HostedServer)>,
}

impl ServerList {
    /// `host` (a member's virtual IP) announced `announcement` at `now`: its list replaces
    /// what it said before.
    pub fn heard(&mut self, now: Instant, host: Ipv4Addr, announcement: Announcement) {
        self.by_host.insert(host, (now, announcement));
    }

    /// A game on `host` announced `server` on the LAN at `now`.
    pub fn discovered(&mut self, now: Instant, host: Ipv4Addr, server: HostedServer) {
        self.discovered.insert((host, server.port), (now, server));
    }

    /// Forgets `host` (it left the party).
    pub fn forget(&mut self, host: Ipv4Addr) {
        self.by_host.remove(&host);
        self.discovered.retain(|(h, _), _| *h != host);
    }

    /// Forgets every member, and every LAN-announced server, silent for [`FORGET_AFTER`].
    pub fn expire(&mut self, now: Instant) {
        let fresh = |heard: &Instant| now.saturating_duration_since(*heard) < FORGET_AFTER;
        self.by_host.retain(|_, (heard, _)| fresh(heard));
        self.discovered.retain(|_, (heard, _)| fresh(heard));
    }

    pub fn clear(&mut self) {
        self.by_host.clear();
        self.discovered.clear();
    }

    /// Servers found from games' LAN announcements, by host and port, except those their
    /// host also announced itself.
    pub fn discovered_servers(&self) -> impl Iterator<Item = (Ipv4Addr, &HostedServer)> {
        self.discovered
            .iter()
            .filter(|((host, port), _)| {
                !self
                    .by_host
                    .get(host)
                    .is_some_and(|(_, a)| a.servers.iter().any(|s| s.port == *port))
            })
            .map(|((host, _), (_, server))| (*host, server))
    }

    /// Every server heard, by host address then in the host's order.
    pub fn servers(&self) -> impl Iterator<Item = (Ipv4Addr, &HostedServer)> {
        self.by_host
            .iter()
            .flat_map(|(host, (_, a))| a.servers.iter().map(move |s| (*host, s)))
    }

    /// The multicast groups `host` listens to, if it said (and has not fallen silent).
    pub fn groups(&self, host: Ipv4Addr) -> Option<&[Ipv4Addr]> {
        self.by_host.get(&host)?.1.groups.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(game: &str, port: u16) -> HostedServer {
        HostedServer {
            game: game.into(),
            name: format!("alice's {game}"),
            port,
            players: Some(3),
            max_players: None,
        }
    }

    #[test]
    fn announcements_round_trip_and_bad_ones_are_refused() {
        let a = Announcement {
            servers: vec![server("warcraft3", 6112), server("minecraft_java", 25565)],
            groups: None,
        };
        assert_eq!(Announcement::decode(&a.encode()).unwrap(), a);
        assert_eq!(
            Announcement::decode(br#"{"servers":[{"game":"x","name":"y","port":1}]}"#)
                .unwrap()
                .servers[0]
                .players,
            None
        );
        assert!(matches!(
            Announcement::decode(b"garbage"),
            Err(AnnouncementError::Malformed(_))
        ));
        assert!(matches!(
            Announcement::decode(&[b' '; MAX_DATAGRAM + 1]),
            Err(AnnouncementError::TooLarge(_))
        ));
        let many = format!(
            r#"{{"servers":[{}]}}"#,
            vec![r#"{"game":"g","name":"n","port":1}"#; MAX_SERVERS + 1].join(",")
        );
        assert_eq!(
            Announcement::decode(many.as_bytes()),
            Err(AnnouncementError::TooManyServers(MAX_SERVERS + 1))
        );
        let long = format!(
            r#"{{"servers":[{{"game":"g","name":"{}","port":1}}]}}"#,
            "n".repeat(MAX_TEXT + 1)
        );
        assert_eq!(
            Announcement::decode(long.as_bytes()),
            Err(AnnouncementError::TextTooLong)
        );
    }

    #[test]
    fn what_is_sent_is_always_accepted() {
        let huge = Announcement {
            servers: (0..40)
                .map(|i| HostedServer {
                    game: "é".repeat(50),
                    name: format!("{i}{}", "ü".repeat(60)),
                    port: i,
                    players: Some(u32::MAX),
                    max_players: None,
                })
                .collect(),
            groups: None,
        };
        let bytes = huge.encode();
        assert!(bytes.len() <= MAX_DATAGRAM);
        let back = Announcement::decode(&bytes).unwrap();
        assert!(!back.servers.is_empty() && back.servers.len() <= MAX_SERVERS);
        assert!(back.servers.iter().all(|s| s.name.len() <= MAX_TEXT));
    }

    #[test]
    fn multicast_groups_are_announced_bounded_and_forgotten_with_the_member() {
        let minecraft = Ipv4Addr::new(224, 0, 2, 60);
        let ssdp = Ipv4Addr::new(239, 255, 255, 250);
        let a = Announcement {
            servers: Vec::new(),
            groups: Some(vec![minecraft, ssdp]),
        };
        assert_eq!(Announcement::decode(&a.encode()).unwrap(), a);
        // Unicast "groups" are not groups; order and repeats do not matter.
        let odd =
            br#"{"servers":[],"groups":["239.255.255.250","10.0.0.1","224.0.2.60","224.0.2.60"]}"#;
        assert_eq!(Announcement::decode(odd).unwrap(), a);
        // Too many to name: the sender says nothing, and a receiver refuses the list.
        let many: Vec<Ipv4Addr> = (0..=MAX_GROUPS as u8)
            .map(|i| Ipv4Addr::new(239, 0, 0, i))
            .collect();
        let crowded = Announcement {
            servers: Vec::new(),
            groups: Some(many.clone()),
        };
        assert_eq!(
            Announcement::decode(&crowded.encode()).unwrap().groups,
            None
        );
        let json = serde_json::to_vec(&crowded).unwrap();
        assert_eq!(
            Announcement::decode(&json),
            Err(AnnouncementError::TooManyGroups(MAX_GROUPS + 1))
        );

        let t0 = Instant::now();
        let alice = Ipv4Addr::new(10, 66, 0, 2);
        let mut list = ServerList::default();
        assert_eq!(list.groups(alice), None);
        list.heard(t0, alice, a);
        assert_eq!(list.groups(alice), Some(&[minecraft, ssdp][..]));
        list.expire(t0 + FORGET_AFTER);
        assert_eq!(list.groups(alice), None);
    }

    #[test]
    fn minecraft_lan_worlds_are_read_from_their_announcements() {
        assert_eq!(
            minecraft_lan_world(b"[MOTD]Alice - Survival[/MOTD][AD]41233[/AD]"),
            Some(("Alice - Survival".into(), 41233))
        );
        assert_eq!(
            minecraft_lan_world(format!("[MOTD]{}[/MOTD][AD]1[/AD]", "w".repeat(100)).as_bytes())
                .map(|(name, _)| name.len()),
            Some(MAX_TEXT)
        );
        for junk in [
            &b""[..],
            b"[MOTD]x[/MOTD]",
            b"[MOTD]x[/MOTD][AD]0[/AD]",
            b"[MOTD]x[/MOTD][AD]70000[/AD]",
            b"[AD]25565[/AD][MOTD]x",
            b"\xff\xfe[MOTD]",
        ] {
            assert_eq!(minecraft_lan_world(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn lan_announced_servers_expire_and_yield_to_their_host_s_own_announcement() {
        let t0 = Instant::now();
        let alice = Ipv4Addr::new(10, 66, 0, 2);
        let mut list = ServerList::default();
        let world = HostedServer {
            game: "minecraft_java".into(),
            name: "Alice - Survival".into(),
            port: 41233,
            players: None,
            max_players: None,
        };
        list.discovered(t0, alice, world.clone());
        list.discovered(t0 + Duration::from_secs(1), alice, world.clone());
        assert_eq!(list.discovered_servers().count(), 1);
        list.heard(
            t0,
            alice,
            Announcement {
                servers: vec![world.clone()],
                groups: None,
            },
        );
        assert_eq!(list.discovered_servers().count(), 0);
        list.heard(t0, alice, Announcement::default());
        assert_eq!(list.discovered_servers().count(), 1);
        list.expire(t0 + Duration::from_secs(1) + FORGET_AFTER);
        assert_eq!(list.discovered_servers().count(), 0);
    }

    #[test]
    fn a_member_s_list_is_replaced_and_forgotten_when_it_falls_silent() {
        let t0 = Instant::now();
        let (alice, bob) = (Ipv4Addr::new(10, 66, 0, 2), Ipv4Addr::new(10, 66, 0, 3));
        let mut list = ServerList::default();
        list.heard(
            t0,
            alice,
            Announcement {
                servers: vec![server("warcraft3", 6112), server("terraria", 7777)],
                groups: None,
            },
        );
        list.heard(
            t0 + Duration::from_secs(10),
            bob,
            Announcement {
                servers: vec![server("css", 27015)],
                groups: None,
            },
        );
        assert_eq!(list.servers().count(), 3);
        list.heard(
            t0 + Duration::from_secs(5),
            alice,
            Announcement {
                servers: vec![server("terraria", 7777)],
                groups: None,
            },
        );
        let games: Vec<_> = list.servers().map(|(h, s)| (h, s.game.as_str())).collect();
        assert_eq!(games, [(alice, "terraria"), (bob, "css")]);
        list.expire(t0 + Duration::from_secs(5) + FORGET_AFTER);
        let games: Vec<_> = list.servers().map(|(h, s)| (h, s.game.as_str())).collect();
        assert_eq!(games, [(bob, "css")]);
        list.forget(bob);
        assert_eq!(list.servers().count(), 0);
    }

    #[test]
    fn a_server_name_cannot_reach_a_terminal_raw() {
        let bytes = br#"{"servers":[{"game":"w\u001b[2J","name":"\u001b]0;x\u0007Free\u202egold","port":1}]}"#;
        let a = Announcement::decode(bytes).unwrap();
        assert_eq!(
            (a.servers[0].game.as_str(), a.servers[0].name.as_str()),
            ("w[2J", "]0;xFreegold")
        );
    }
}
