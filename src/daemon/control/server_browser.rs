//! The server browser: the servers each member hosts (announced by hand, or found running),
//! announced to the party with the multicast groups this host listens to, and what the
//! others announce.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lanrage_control::servers::{self, Announcement, HostedServer};
use lanrage_games::a2s;
use lanrage_games::profile::ServerQuery;

use super::{State, write_private};
use crate::daemon::multicast_groups;
use crate::daemon::server_link::{ServerDatagram, ServerLink};
use crate::local_api::{HostRequest, ServerInfo};

/// How often the multicast groups this host listens to are looked at: a game that joins one
/// is announced to the party within this and a round trip (until then the others send it
/// what they sent before).
const GROUPS_CHECK: Duration = Duration::from_secs(1);

impl State {
    /// Opens the server browser's socket on the tunnel (again after a new address).
    pub(super) fn open_server_link(&mut self) {
        // The old link's sockets close with its readers (within a second): the new one binds
        // the same ports.
        if let Some(old) = self.server_link.take() {
            for reader in old.close() {
                let _ = reader.join();
            }
        }
        match ServerLink::open(
            &self.cfg.interface,
            self.cfg.interface_index,
            self.servers_tx.clone(),
        ) {
            Ok(link) => {
                self.server_link = Some(link);
                self.next_announce = Instant::now();
            }
            Err(e) => tracing::warn!(error = %e, "cannot open the server browser's sockets"),
        }
    }

    /// The servers this machine hosts: those announced by hand, then running games with a
    /// port listening (one per port).
    fn own_servers(&self) -> Vec<HostedServer> {
        let detected = self.games.iter().filter_map(|g| {
            let port = *g.detected.ports.first()?;
            let status = self.server_status.get(&port).map(|(_, info)| info);
            Some(HostedServer {
                game: g.detected.id.clone(),
                name: status
                    .map(|info| info.name.trim().to_owned())
                    .filter(|name| !name.is_empty())
                    .unwrap_or_else(|| format!("{}'s {}", self.cfg.member_name, g.detected.name)),
                port,
                players: status.map(|info| info.players.into()),
                max_players: status.map(|info| info.max_players.into()),
            })
        });
        let mut all = self.hosted.clone();
        for server in detected {
            if !all.iter().any(|s| s.port == server.port) {
                all.push(server);
            }
        }
        all
    }

    fn hosted_file(&self) -> PathBuf {
        self.cfg.data_dir.join("hosted-servers.json")
    }

    /// The servers announced by hand before a restart; a damaged file is reported and set
    /// aside, not lost.
    pub(super) fn load_hosted(&mut self) {
        let path = self.hosted_file();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        match serde_json::from_str::<Announcement>(&text) {
            Ok(saved) => self.hosted = saved.servers,
            Err(e) => {
                let aside = path.with_extension("json.damaged");
                tracing::warn!(file = %path.display(), error = %e, moved_to = %aside.display(),
                    "cannot read the announced servers; starting without them");
                let _ = std::fs::rename(&path, &aside);
            }
        }
    }

    pub(super) fn save_hosted(&self) -> Result<(), (u16, String)> {
        let saved = Announcement {
            servers: self.hosted.clone(),
            groups: None,
        };
        let json = serde_json::to_string_pretty(&saved).unwrap_or_default();
        write_private(&self.hosted_file(), &json)
            .map_err(|e| (500, format!("cannot save the announced servers: {e}")))
    }

    /// Announces a server by hand (replacing one on the same port).
    pub(super) fn host(&mut self, request: HostRequest) -> Result<(), (u16, String)> {
        let game = request.game.trim().to_owned();
        if game.is_empty() || game.len() > servers::MAX_TEXT {
            return Err((
                400,
                format!("the game must be 1 to {} bytes", servers::MAX_TEXT),
            ));
        }
        if request.port == 0 {
            return Err((400, "the port must be 1 to 65535".into()));
        }
        let name = request
            .name
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("{}'s {game}", self.cfg.member_name));
        if name.len() > servers::MAX_TEXT {
            return Err((
                400,
                format!("the name must be at most {} bytes", servers::MAX_TEXT),
            ));
        }
        self.hosted.retain(|s| s.port != request.port);
        if self.hosted.len() >= servers::MAX_SERVERS {
            return Err((
                409,
                format!("at most {} servers can be announced", servers::MAX_SERVERS),
            ));
        }
        self.hosted.push(HostedServer {
            game,
            name,
            port: request.port,
            players: request.players,
            max_players: None,
        });
        self.next_announce = Instant::now();
        self.save_hosted()
    }

    /// Announces our servers and multicast groups to every member when due (the groups also
    /// as soon as they change), and forgets silent members' announcements.
    pub(super) fn server_timers(&mut self) {
        let now = Instant::now();
        if self.server_link.is_some() && now >= self.next_groups_check {
            self.next_groups_check = now + GROUPS_CHECK;
            let own = self.cfg.tunnel_groups.held();
            let listened = match multicast_groups::listened(&self.cfg.interface, own) {
                Ok(groups) => {
                    self.groups_unreadable = false;
                    Some(groups)
                }
                Err(e) => {
                    if !std::mem::replace(&mut self.groups_unreadable, true) {
                        tracing::warn!(error = %e, "cannot list this host's multicast groups; the party sends it all of them");
                    }
                    None
                }
            };
            if listened != self.listened {
                tracing::debug!(groups = ?listened, "multicast groups listened to");
                self.listened = listened;
                self.next_announce = now;
            }
        }
        if now < self.next_announce {
            return;
        }
        self.next_announce = now + servers::ANNOUNCE_EVERY;
        self.servers.expire(now);
        self.server_status
            .retain(|_, (heard, _)| now.saturating_duration_since(*heard) < servers::FORGET_AFTER);
        self.tell_engine_groups();
        let (Some(link), Some(party)) = (&self.server_link, self.membership.party()) else {
            return;
        };
        // Our servers that answer a status query are asked for it now, for the next
        // announcement (or this one's repeat, at once, when the answer changes anything).
        if let Some(address) = self.virtual_ip {
            for g in &self.games {
                if let (Some(ServerQuery::A2s), Some(&port)) =
                    (g.profile.query, g.detected.ports.first())
                {
                    link.query(SocketAddrV4::new(address, port), &a2s::info_request(None));
                }
            }
        }
        let datagram = Announcement {
            servers: self.own_servers(),
            groups: self.listened.clone(),
        }
        .encode();
        for member in party.members.iter().filter(|m| m.peer != self.cfg.me) {
            link.send(member.virtual_ip, &datagram);
        }
    }

    /// A member's announcement, or a game's LAN announcement: kept if it comes from a
    /// member's virtual IP (the sockets only read the tunnel, whose allowed-IPs check vouches
    /// for the source; our own multicast loops back and counts as ours).
    pub(super) fn server_datagram(
        &mut self,
        kind: ServerDatagram,
        from: SocketAddr,
        datagram: &[u8],
    ) {
        let IpAddr::V4(host) = from.ip() else {
            return;
        };
        let member = self
            .membership
            .party()
            .is_some_and(|p| p.members.iter().any(|m| m.virtual_ip == host));
        if !member {
            tracing::debug!(%from, ?kind, "server datagram from no member; dropped");
            return;
        }
        let now = Instant::now();
        match kind {
            ServerDatagram::Announcement if Some(host) != self.virtual_ip => {
                match Announcement::decode(datagram) {
                    Ok(announcement) => {
                        self.servers.heard(now, host, announcement);
                        self.tell_engine_groups();
                    }
                    Err(e) => tracing::debug!(%from, error = %e, "server announcement refused"),
                }
            }
            ServerDatagram::Announcement => {}
            ServerDatagram::QueryReply => self.query_reply(from, datagram),
            ServerDatagram::MinecraftLan => {
                if let Some((name, port)) = servers::minecraft_lan_world(datagram) {
                    let server = HostedServer {
                        game: "minecraft_java".into(),
                        name,
                        port,
                        players: None,
                        max_players: None,
                    };
                    self.servers.discovered(now, host, server);
                }
            }
        }
    }

    /// A server on this host answered its status query: kept for our announcements, or asked
    /// again with the challenge it wants.
    fn query_reply(&mut self, from: SocketAddr, datagram: &[u8]) {
        let (SocketAddr::V4(from), Some(address)) = (from, self.virtual_ip) else {
            return;
        };
        let asked = *from.ip() == address
            && self.games.iter().any(|g| {
                g.profile.query == Some(ServerQuery::A2s)
                    && g.detected.ports.first() == Some(&from.port())
            });
        if !asked {
            tracing::debug!(%from, "status reply from no server we asked; dropped");
            return;
        }
        match a2s::parse_reply(datagram) {
            Ok(a2s::Reply::Challenge(challenge)) => {
                if let Some(link) = &self.server_link {
                    link.query(from, &a2s::info_request(Some(challenge)));
                }
            }
            Ok(a2s::Reply::Info(info)) => {
                let before = self
                    .server_status
                    .insert(from.port(), (Instant::now(), info.clone()));
                if before.is_none_or(|(_, old)| old != info) {
                    tracing::debug!(server = %from, name = %info.name, players = info.players, "server status");
                    self.next_announce = Instant::now();
                }
            }
            Err(e) => tracing::debug!(%from, error = %e, "server status reply refused"),
        }
    }

    /// Gives the engine each member's multicast groups where they changed: a member's engine
    /// peer then gets only the multicast it listens to (all of it while unknown).
    fn tell_engine_groups(&mut self) {
        let Some(party) = self.membership.party() else {
            return;
        };
        for member in party.members.iter().filter(|m| m.peer != self.cfg.me) {
            let groups = self.servers.groups(member.virtual_ip).map(<[_]>::to_vec);
            if self.groups_told.get(&member.peer) == Some(&groups) {
                continue;
            }
            if self
                .cfg
                .engine
                .set_multicast_groups(member.peer.0, groups.clone())
                .is_ok()
            {
                tracing::debug!(peer = %member.peer, ?groups, "multicast to this member limited to its groups");
                self.groups_told.insert(member.peer, groups);
            }
        }
    }

    /// Every server in the party, ours first, with the round trip to its host.
    pub(super) fn server_infos(&self) -> Vec<ServerInfo> {
        let Some(party) = self.membership.party() else {
            return Vec::new();
        };
        let now = Instant::now();
        let own = self.virtual_ip.map(|address| {
            self.own_servers()
                .into_iter()
                .map(move |s| (address, s, true))
        });
        let heard = self
            .servers
            .servers()
            .map(|(host, s)| (host, s.clone(), false));
        let discovered = self
            .servers
            .discovered_servers()
            .map(|(host, s)| (host, s.clone(), Some(host) == self.virtual_ip));
        own.into_iter()
            .flatten()
            .chain(heard)
            .chain(discovered)
            .filter_map(|(address, server, own)| {
                let member = party.members.iter().find(|m| m.virtual_ip == address)?;
                let latency_ms = if own {
                    Some(0.0)
                } else {
                    self.paths
                        .path(&member.peer, now)
                        .map(|(_, rtt)| rtt.as_secs_f64() * 1e3)
                };
                Some(ServerInfo {
                    host: member.name.clone(),
                    address,
                    port: server.port,
                    game: server.game,
                    name: server.name,
                    players: server.players,
                    max_players: server.max_players,
                    latency_ms,
                    own,
                })
            })
            .collect()
    }
}
