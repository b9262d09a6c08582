//! The party: joining and leaving (through the control server, or on the LAN alone in local
//! mode), and membership actions turned into address, engine and interface changes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use lanrage_control::discord::PartyEvent;
use lanrage_control::ipam::DEFAULT_SUBNET;
use lanrage_control::party::code::PartyCode;
use lanrage_control::party::local::LocalParty;
use lanrage_control::party::membership::{Action, Input};
use lanrage_control::party::scope;
use lanrage_control::peer_id::PeerId;
use lanrage_control::server_api::{EventJson, Heartbeat, PartyJson};
use lanrage_engine::lan::LanScope;
use lanrage_engine::{Endpoint, PeerUpdate, Prefix};

use super::paths::engine_endpoint;
use super::{Background, State, unix_micros, write_private};
use crate::daemon::events::DaemonEvent;
use crate::daemon::local_link::LocalLink;
use crate::daemon::server_client::CallError;

/// Members already there when we join arrive in the first moments: not news for Discord.
const PARTY_SETTLING: Duration = Duration::from_secs(5);

impl State {
    /// After a restart the server still counts us as a member: carry on in that party.
    pub(super) fn resume(&mut self) {
        let Some(client) = &mut self.cfg.client else {
            self.server_state = "local mode: parties on this LAN only".into();
            let saved = std::fs::read_to_string(self.local_party_file()).ok();
            if let Some(code) = saved.and_then(|c| c.trim().parse::<PartyCode>().ok()) {
                tracing::info!("resuming local party");
                if let Err((_, e)) = self.local_join(code) {
                    tracing::warn!(error = %e, "cannot resume the local party");
                }
            }
            return;
        };
        match client.party() {
            Ok(Some(party)) => {
                if let Err(why) = scope::check(&party, self.cfg.me, self.cfg.party_subnets) {
                    tracing::error!(%why, "not resuming the party");
                    self.server_state = why.to_string();
                    return;
                }
                tracing::info!(party = %party.name, "resuming party membership");
                self.server_state = "connected".into();
                self.feed(Input::Joined(party));
            }
            Ok(None) => self.server_state = "connected".into(),
            Err(e) => {
                tracing::warn!(error = %e, "control server unavailable");
                self.server_state = e.to_string();
            }
        }
    }

    /// Starts (or joins) a local party with `code`: no server, members found on the LAN.
    pub(super) fn local_join(&mut self, code: PartyCode) -> Result<PartyJson, (u16, String)> {
        self.local_leave();
        let link = LocalLink::open(&self.cfg.interface, self.lan_tx.clone())
            .map_err(|e| (503, format!("cannot use the LAN for a local party: {e}")))?;
        let seq_start = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let party = LocalParty::new(
            Instant::now(),
            code,
            self.cfg.secret.into(),
            &self.cfg.member_name,
            self.cfg.listen_port,
            DEFAULT_SUBNET,
            seq_start,
        );
        let json = party.party();
        // Remembered so a restarted daemon is back in its party without anyone's help.
        if let Err(e) = write_private(&self.local_party_file(), &json.code) {
            tracing::warn!(error = %e, "cannot remember the local party");
        }
        self.local = Some((party, link));
        self.feed(Input::Joined(json.clone()));
        self.local_timers();
        Ok(json)
    }

    fn local_party_file(&self) -> PathBuf {
        self.cfg.data_dir.join("local-party")
    }

    pub(super) fn local_leave(&mut self) -> bool {
        let Some((mut party, link)) = self.local.take() else {
            return false;
        };
        let _ = std::fs::remove_file(self.local_party_file());
        link.send(&party.leave());
        self.close_link(link);
        self.feed(Input::Left);
        true
    }

    pub(super) fn lan_datagram(&mut self, from: SocketAddr, datagram: &[u8]) {
        let Some((party, _)) = &mut self.local else {
            return;
        };
        match party.receive(Instant::now(), from, datagram) {
            Ok(true) => {
                let json = party.party();
                self.feed(Input::Event(EventJson::Snapshot { party: Some(json) }));
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(%from, error = %e, "LAN datagram dropped"),
        }
    }

    pub(super) fn local_timers(&mut self) {
        let Some((party, link)) = &mut self.local else {
            return;
        };
        let (announce, expired) = party.poll(Instant::now());
        if let Some(datagram) = announce {
            link.send(&datagram);
        }
        if expired {
            let json = party.party();
            self.feed(Input::Event(EventJson::Snapshot { party: Some(json) }));
        }
    }

    pub(super) fn feed(&mut self, input: Input) {
        let actions = self.membership.handle(Instant::now(), input);
        self.apply(actions);
    }

    pub(super) fn apply(&mut self, actions: Vec<Action>) {
        let mut lost = false;
        let mut retry_heartbeat = false;
        for action in actions {
            match action {
                Action::SetAddress {
                    address,
                    prefix_len,
                } => {
                    if let Err(e) = self.cfg.addresses.set_ipv4(address, prefix_len) {
                        tracing::error!(%address, error = %e, "cannot set the virtual IP");
                    } else {
                        tracing::info!(interface = %self.cfg.interface, %address, prefix_len, "virtual IP set");
                    }
                    // The party is one LAN: its members' games see each other's broadcasts.
                    let scope = LanScope::containing(address, prefix_len);
                    if self.cfg.engine.set_lan(Some(scope)).is_err() {
                        tracing::warn!("engine stopped; LAN broadcasts not set up");
                    }
                    if self.virtual_ip != Some(address) {
                        let party = self.membership.party();
                        self.cfg.events.emit(DaemonEvent::PartyJoined {
                            party: party.map(|p| p.name.clone()).unwrap_or_default(),
                            code: party.map(|p| p.code.clone()).unwrap_or_default(),
                            virtual_ip: address,
                        });
                    }
                    self.virtual_ip = Some(address);
                    self.in_party_since
                        .get_or_insert((Instant::now(), unix_micros() / 1_000_000));
                    self.update_capture();
                    self.join_tunnel_groups();
                    self.open_server_link();
                }
                Action::ClearAddress => {
                    if let Err(e) = self.cfg.addresses.clear_ipv4() {
                        tracing::warn!(error = %e, "cannot remove the virtual IP");
                    }
                    let _ = self.cfg.engine.set_lan(None);
                    // Every member we said joined is said to leave, once.
                    for (peer, name) in self.member_names.drain() {
                        self.cfg.events.emit(DaemonEvent::PeerLeft {
                            peer: peer.to_string(),
                            name,
                        });
                    }
                    if self.virtual_ip.take().is_some() {
                        self.cfg.events.emit(DaemonEvent::PartyLeft);
                    }
                    self.in_party_since = None;
                    self.update_capture();
                    self.cfg.tunnel_groups.leave();
                    if let Some(link) = self.server_link.take() {
                        self.close_link(link);
                    }
                    self.servers.clear();
                }
                Action::UpsertPeer {
                    peer,
                    virtual_ip,
                    endpoints,
                } => {
                    let now = Instant::now();
                    self.member_joined(peer, now);
                    if !self.candidates.contains_key(&peer) && self.cfg.client.is_some() {
                        // A new member: grants for it come with a fresh fetch.
                        self.next_grants = Some(now);
                    }
                    let relayed = self.relays.paths(&peer, now);
                    self.candidates
                        .insert(peer, (endpoints.clone(), relayed.clone()));
                    self.set_candidates(now, peer);
                    let mut update = PeerUpdate::new(peer.0);
                    // The path probing chose, else the peer's first candidate until it does.
                    update.endpoint = self
                        .paths
                        .path(&peer, now)
                        .map(|(endpoint, _)| engine_endpoint(endpoint))
                        .or_else(|| endpoints.first().copied().map(Endpoint::direct));
                    update.persistent_keepalive = Some(self.tuning.keepalive);
                    update.replace_allowed_ips = true;
                    update.allowed_ips = vec![Prefix {
                        addr: IpAddr::V4(virtual_ip),
                        cidr: 32,
                    }];
                    self.engine_update(update);
                }
                Action::RemovePeer(peer) => {
                    self.groups_told.remove(&peer);
                    if let Some(member) = self.member_names.remove(&peer) {
                        self.cfg.events.emit(DaemonEvent::PeerLeft {
                            peer: peer.to_string(),
                            name: member.clone(),
                        });
                        self.cfg.discord.event(PartyEvent::Left { member });
                    }
                    if let Some(labels) = self.metric_labels.remove(&peer) {
                        self.metrics.forget(&labels);
                    }
                    self.paths.remove_peer(&peer);
                    self.relays.remove_peer(&peer);
                    self.candidates.remove(&peer);
                    let mut update = PeerUpdate::new(peer.0);
                    update.remove = true;
                    self.engine_update(update);
                }
                Action::SendHeartbeat(beat) => retry_heartbeat |= !self.send_heartbeat(beat),
                Action::ConnectEvents => {
                    self.stream_generation += 1;
                    if let Some(client) = &mut self.cfg.client {
                        let generation = self.stream_generation;
                        if let Err(e) =
                            client.spawn_event_stream(generation, self.stream_tx.clone())
                        {
                            tracing::warn!(error = %e, "cannot open the event stream");
                            lost = true;
                        }
                    }
                }
            }
        }
        if lost {
            self.feed(Input::EventsLost);
        }
        if retry_heartbeat {
            self.feed(Input::HeartbeatFailed);
        }
    }

    /// Sends `beat` off the control thread; its result comes back as `Background::Heartbeat`.
    /// While one is under way the next waits, merged with any others, so that what changed
    /// (endpoints, NAT) is never lost. False if no thread could be started.
    fn send_heartbeat(&mut self, beat: Heartbeat) -> bool {
        if self.heartbeat_in_flight {
            self.pending_heartbeat = Some(match self.pending_heartbeat.take() {
                Some(old) => Heartbeat {
                    endpoints: beat.endpoints.or(old.endpoints),
                    nat: beat.nat.or(old.nat),
                },
                None => beat,
            });
            return true;
        }
        let Some(client) = &self.cfg.client else {
            return true;
        };
        let tx = self.background_tx.clone();
        let started = client.in_background(
            move |client| client.heartbeat(&beat),
            move |result| drop(tx.send(Background::Heartbeat(result))),
        );
        match started {
            Ok(()) => {
                self.heartbeat_in_flight = true;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a heartbeat; trying again shortly");
                false
            }
        }
    }

    pub(super) fn heartbeat_done(&mut self, result: Result<(), CallError>) {
        self.heartbeat_in_flight = false;
        if let Some(beat) = self.pending_heartbeat.take() {
            if !self.send_heartbeat(beat) {
                self.feed(Input::HeartbeatFailed);
            }
        }
        match result {
            Ok(()) => {
                self.server_state = "connected".into();
                self.feed(Input::HeartbeatDelivered);
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed; trying again shortly");
                self.server_state = e.to_string();
                self.feed(Input::HeartbeatFailed);
            }
        }
    }

    pub(super) fn joined(
        &mut self,
        result: Result<PartyJson, (u16, String)>,
    ) -> Result<PartyJson, (u16, String)> {
        let party = result?;
        self.server_state = "connected".into();
        if let Err(why) = scope::check(&party, self.cfg.me, self.cfg.party_subnets) {
            tracing::error!(%why, "party refused");
            return Err((502, why.to_string()));
        }
        tracing::info!(party = %party.name, members = party.members.len(), "in party");
        self.feed(Input::Joined(party.clone()));
        Ok(party)
    }

    /// Notes a member's name; says it joined unless it was there when we came.
    fn member_joined(&mut self, peer: PeerId, now: Instant) {
        if self.member_names.contains_key(&peer) {
            return;
        }
        let Some(member) = self
            .membership
            .party()
            .and_then(|p| p.members.iter().find(|m| m.peer == peer))
        else {
            return;
        };
        let name = member.name.clone();
        self.cfg.events.emit(DaemonEvent::PeerJoined {
            peer: peer.to_string(),
            name: name.clone(),
            virtual_ip: member.virtual_ip,
        });
        self.member_names.insert(peer, name.clone());
        let settled = self
            .in_party_since
            .is_some_and(|(since, _)| now.saturating_duration_since(since) > PARTY_SETTLING);
        if settled {
            self.cfg.discord.event(PartyEvent::Joined { member: name });
        }
    }
}
