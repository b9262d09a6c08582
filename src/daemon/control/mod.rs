//! The control thread: owns the party membership and the connection to the control server,
//! answers the local API, and turns membership actions into engine and interface changes.
//! This file holds its state, loop and dispatch; its reactions are in the child modules, one
//! concern each.

mod games;
mod party;
mod paths;
mod reports;
mod server_browser;

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, bounded, select, unbounded};
use lanrage_control::party::code::PartyCode;
use lanrage_control::party::local::LocalParty;
use lanrage_control::party::membership::{Input, Membership};
use lanrage_control::party::scope;
use lanrage_control::path::selector::PathSelector;
use lanrage_control::path::{PathAddr, frame};
use lanrage_control::peer_id::PeerId;
use lanrage_control::relay::RelayClient;
use lanrage_control::relay::frame::is_relay_control;
use lanrage_control::server_api::{EventJson, Heartbeat, PartyJson, RelaysJson};
use lanrage_control::servers::{HostedServer, ServerList};
use lanrage_engine::io::tun::TunAddresses;
use lanrage_engine::{EngineHandle, Event as EngineEvent, PriorityPolicy};

use super::broadcast_capture::BroadcastCapture;
use super::discord::{Discord, DiscordConfig, DiscordStatus};
use super::events::{DaemonEvent, EventSink};
use super::games::{GameScan, RunningGame};
use super::history::{History, HistoryJson};
use super::link_reader::{Link, Reading};
use super::local_link::LocalLink;
use super::metrics::{Metrics, PeerLabels};
use super::multicast_groups::TunnelGroups;
use super::nat_check::NatCheck;
use super::port_map::{Mapping, MappingView};
use super::server_client::{CallError, ServerClient};
use super::server_link::{ServerDatagram, ServerLink};
use super::settings::SettingsBook;
use crate::local_api::{
    GameSummary, HostRequest, PeerInfo, ServerInfo, SettingInfo, SettingsReport, Status,
};
use lanrage_control::discord::PartyEvent;
use lanrage_control::discord::ipc::Activity;
use lanrage_control::settings::store::ConfigurationSummary;
use lanrage_games::a2s;
use lanrage_games::tuning::Tuning;

use self::games::base_tuning;
use self::paths::path_addr;

/// How long the loop sleeps when nothing is scheduled.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// How often local addresses are looked at (a laptop moves between networks).
const ADDRESS_CHECK: Duration = Duration::from_secs(10);

/// An answer for the local API: a value, or an HTTP status and message.
pub type Reply<T> = tokio::sync::oneshot::Sender<Result<T, (u16, String)>>;

pub enum Request {
    Status(Reply<Status>),
    Peers(Reply<Vec<PeerInfo>>),
    Servers(Reply<Vec<ServerInfo>>),
    Host(HostRequest, Reply<()>),
    Unhost(u16, Reply<()>),
    Create(String, Reply<PartyJson>),
    Join(String, Reply<PartyJson>),
    Leave(Reply<()>),
    Settings(Reply<SettingsReport>),
    SetSetting(String, serde_json::Value, Reply<SettingInfo>),
    ResetSetting(String, Reply<SettingInfo>),
    Configurations(Reply<Vec<ConfigurationSummary>>),
    SaveConfiguration(String, Reply<()>),
    ActivateConfiguration(String, Reply<SettingsReport>),
    DeleteConfiguration(String, Reply<()>),
    /// The `/metrics` exposition.
    Metrics(Reply<String>),
    Discord(Reply<DiscordStatus>),
    History(Reply<HistoryJson>),
    Games(Reply<Vec<GameSummary>>),
    /// `lanrage down`: answered, then the control thread ends and the daemon with it.
    Shutdown(Reply<()>),
}

pub struct ControlThread {
    pub interface: String,
    pub me: PeerId,
    pub member_name: String,
    pub listen_port: u16,
    pub engine: EngineHandle,
    pub engine_events: Receiver<EngineEvent>,
    pub addresses: TunAddresses,
    /// The tunnel's interface index, fixed for the daemon's life (routes, rules and multicast
    /// memberships name it).
    pub interface_index: u32,
    pub client: Option<ServerClient>,
    /// Where local mode remembers its party across restarts.
    pub data_dir: PathBuf,
    /// STUN servers (HOST:PORT) for the NAT check; empty: no check.
    pub stun_servers: Vec<String>,
    /// Our static WireGuard key: path probes are authenticated with keys derived from it.
    pub secret: [u8; 32],
    /// The port the router forwards to us, as the port mapper last found it (`None`: port
    /// mapping off).
    pub port_mapping: Option<MappingView>,
    /// Scans for running games (`None`: detection off).
    pub games: Option<Receiver<GameScan>>,
    /// Sends games' broadcasts from unbound sockets into the tunnel while in a party (`None`:
    /// off, or not possible here).
    pub capture: Option<BroadcastCapture>,
    /// Discovery groups joined on the tunnel while in a party.
    pub tunnel_groups: TunnelGroups,
    /// The settings database, and what this run started with.
    pub settings: SettingsBook,
    /// Whether relays may carry traffic to peers no direct path reaches.
    pub relays: bool,
    /// Which party subnets to take (the setting `party_subnet_any`).
    pub party_subnets: scope::Allowed,
    /// Party events to a Discord channel, and Rich Presence.
    pub discord: Discord,
    /// Events for whoever embeds the daemon.
    pub events: EventSink,
}

struct State {
    cfg: ControlThread,
    membership: Membership,
    server_state: String,
    stream_generation: u64,
    stream_tx: Sender<(u64, Option<EventJson>)>,
    /// Local mode (no server): the party found by LAN announcements, and its socket.
    local: Option<(LocalParty, Reading<LocalLink>)>,
    lan_tx: Sender<(SocketAddr, Vec<u8>)>,
    nat: NatCheck,
    paths: PathSelector,
    relays: RelayClient,
    /// Each peer's advertised addresses, and the relayed paths last given to the selector.
    candidates: HashMap<PeerId, (Vec<SocketAddr>, Vec<PathAddr>)>,
    /// When to fetch relays and grants next (`None`: no control server, or not in a party).
    next_grants: Option<Instant>,
    /// The router's port mapping as last advertised.
    mapping: Option<Mapping>,
    /// The games the last scan found, and how long it took.
    games: Vec<RunningGame>,
    game_scan: Option<Duration>,
    /// The tunnel's settings for the running games, as applied.
    tuning: Tuning,
    /// The latency lane as last given to the engine.
    lane: Option<PriorityPolicy>,
    /// The virtual IP while in a party.
    virtual_ip: Option<Ipv4Addr>,
    /// The server browser: what the other members host, the socket it travels on while in a
    /// party, where its reader delivers, and when we announce ours next.
    servers: ServerList,
    /// Servers announced by hand (`lanrage servers host`), kept in the data directory.
    hosted: Vec<HostedServer>,
    server_link: Option<Reading<ServerLink>>,
    /// The readers of links closed, each ending within a second; waited for as the daemon
    /// stops, so that none outlives it.
    closed_readers: Vec<std::thread::JoinHandle<()>>,
    servers_tx: Sender<(ServerDatagram, SocketAddr, Vec<u8>)>,
    next_announce: Instant,
    /// What our servers said when last asked (`a2s`), by port.
    server_status: HashMap<u16, (Instant, a2s::ServerInfo)>,
    /// The multicast groups this host listens to, as last announced (`None`: unknown), and
    /// when to look again.
    listened: Option<Vec<Ipv4Addr>>,
    next_groups_check: Instant,
    /// Whether the last look failed (said once, not every second).
    groups_unreadable: bool,
    /// Each member's multicast groups as last given to the engine.
    groups_told: HashMap<PeerId, Option<Vec<Ipv4Addr>>>,
    /// Members by name, to say who joined and left; since when we are in the party (joins in
    /// the first moments are the party as we found it, not news), and what Discord shows.
    member_names: HashMap<PeerId, String>,
    in_party_since: Option<(Instant, u64)>,
    activity: Option<Activity>,
    metrics: Metrics,
    history: History,
    /// The labels each member's series carry, kept to end them when it leaves.
    metric_labels: HashMap<PeerId, PeerLabels>,
    /// Where periodic server calls, made on threads of their own, report; and which of them
    /// are under way (one of each at a time).
    background_tx: Sender<Background>,
    heartbeat_in_flight: bool,
    /// Heartbeats asked for while one was under way, merged: sent when it is done.
    pending_heartbeat: Option<Heartbeat>,
    grants_in_flight: bool,
}

/// The result of a control-server call made off the control thread.
enum Background {
    Heartbeat(Result<(), CallError>),
    Grants(Result<RelaysJson, CallError>),
    /// A create (`created`) or join a user asked for, and where its answer goes.
    Joined {
        created: bool,
        result: Result<PartyJson, CallError>,
        reply: Reply<PartyJson>,
    },
    Left(Result<(), CallError>, Reply<()>),
}

impl ControlThread {
    /// Runs until `shutdown` is dropped or sends.
    pub fn run(self, requests: Receiver<Request>, shutdown: Receiver<()>) {
        let (stream_tx, stream_rx) = unbounded();
        let (background_tx, background_rx) = unbounded();
        let (lan_tx, lan_rx) = bounded(256);
        let (servers_tx, servers_rx) = bounded(64);
        let me = self.me;
        let engine_events = self.engine_events.clone();
        let game_scans = self.games.clone().unwrap_or_else(crossbeam_channel::never);
        // Applied at once (the engine starts with the defaults).
        let tuning = Tuning {
            lane_ports: Vec::new(),
            ..base_tuning(&self.settings.effective())
        };
        let nat = NatCheck::new(self.stun_servers.clone());
        let paths = PathSelector::new(self.secret.into(), super::random_id);
        let membership = Membership::new(me).allowing(self.party_subnets);
        let mut state = State {
            cfg: self,
            membership,
            server_state: "not contacted yet".into(),
            stream_generation: 0,
            stream_tx,
            local: None,
            lan_tx,
            nat,
            paths,
            relays: RelayClient::new(unix_micros()),
            candidates: HashMap::new(),
            next_grants: None,
            mapping: None,
            games: Vec::new(),
            game_scan: None,
            tuning,
            lane: None,
            virtual_ip: None,
            servers: ServerList::default(),
            hosted: Vec::new(),
            server_link: None,
            closed_readers: Vec::new(),
            servers_tx,
            next_announce: Instant::now(),
            server_status: HashMap::new(),
            listened: None,
            next_groups_check: Instant::now(),
            groups_unreadable: false,
            groups_told: HashMap::new(),
            member_names: HashMap::new(),
            in_party_since: None,
            activity: None,
            metrics: Metrics::default(),
            history: History::default(),
            metric_labels: HashMap::new(),
            background_tx,
            heartbeat_in_flight: false,
            pending_heartbeat: None,
            grants_in_flight: false,
        };
        state.load_hosted();
        state.retune();
        state.resume();
        let mut next_address_check = Instant::now();
        loop {
            let mapping = state
                .cfg
                .port_mapping
                .as_ref()
                .and_then(MappingView::current);
            if mapping != state.mapping {
                match mapping {
                    Some(m) => {
                        tracing::info!(mapping = %m, "advertising the router's port mapping")
                    }
                    None => tracing::info!("the router's port mapping is gone"),
                }
                state.mapping = mapping;
                state.check_reachability();
                next_address_check = Instant::now() + ADDRESS_CHECK;
            }
            if Instant::now() >= next_address_check {
                state.check_reachability();
                next_address_check = Instant::now() + ADDRESS_CHECK;
            }
            let next = [
                state.membership.next_timeout(),
                state.local.as_ref().map(|(party, _)| party.next_timeout()),
                state.nat.next_timeout(),
                state.paths.poll_timeout(),
                state.relays.poll_timeout(),
                state.next_grants,
                state.server_link.as_ref().map(|_| state.next_announce),
                state.server_link.as_ref().map(|_| state.next_groups_check),
            ]
            .into_iter()
            .flatten()
            .min();
            let wait = next
                .map_or(IDLE_WAKE, |at| at.saturating_duration_since(Instant::now()))
                .min(IDLE_WAKE);
            select! {
                recv(requests) -> request => match request {
                    Ok(Request::Shutdown(reply)) => {
                        tracing::info!("asked to stop (lanrage down)");
                        let _ = reply.send(Ok(()));
                        break;
                    }
                    Ok(request) => state.answer(request),
                    Err(_) => break,
                },
                recv(stream_rx) -> message => {
                    if let Ok((generation, event)) = message {
                        if generation == state.stream_generation {
                            let input = match event {
                                Some(event) => {
                                    // Each stream opens with a snapshot: the server is back.
                                    if matches!(event, EventJson::Snapshot { .. }) {
                                        state.server_state = "connected".into();
                                    }
                                    Input::Event(event)
                                }
                                None => {
                                    state.server_state =
                                        "lost the event stream; reconnecting".into();
                                    Input::EventsLost
                                }
                            };
                            state.feed(input);
                        }
                    }
                },
                recv(background_rx) -> message => match message {
                    Ok(Background::Heartbeat(result)) => state.heartbeat_done(result),
                    Ok(Background::Grants(result)) => state.grants_fetched(Instant::now(), result),
                    Ok(Background::Joined { created, result, reply }) => {
                        let result = result.map_err(|e| state.call_failed(e));
                        let result = state.joined(result);
                        if let (true, Ok(party)) = (created, &result) {
                            state.cfg.discord.event(PartyEvent::Created {
                                party: party.name.clone(),
                            });
                        }
                        let _ = reply.send(result);
                    }
                    Ok(Background::Left(result, reply)) => {
                        let result = result.map_err(|e| state.call_failed(e));
                        if result.is_ok() {
                            state.left_server_party();
                        }
                        let _ = reply.send(result);
                    }
                    Err(_) => {}
                },
                recv(lan_rx) -> message => {
                    if let Ok((from, datagram)) = message {
                        state.lan_datagram(from, &datagram);
                    }
                },
                recv(servers_rx) -> message => {
                    if let Ok((kind, from, datagram)) = message {
                        state.server_datagram(kind, from, &datagram);
                    }
                },
                recv(engine_events) -> event => match event {
                    Ok(EngineEvent::HandshakeCompleted { public_key }) => {
                        tracing::debug!(peer = %PeerId(public_key), "handshake completed");
                        if let Some(labels) = state.metric_labels(PeerId(public_key)) {
                            state.metrics.handshake(&labels);
                        }
                    }
                    Ok(EngineEvent::Datagram { from, data }) => {
                        if is_relay_control(&data) && from.relay_channel.is_none() {
                            if let Err(why) = state.relays.handle(Instant::now(), from.addr, &data) {
                                tracing::debug!(%from, ?why, "relay answer refused");
                            }
                        } else if frame::is_probe(&data) {
                            let path = path_addr(from);
                            if let Err(why) = state.paths.handle(Instant::now(), path, &data) {
                                tracing::debug!(%from, ?why, "path probe refused");
                            }
                        } else if !state.nat.datagram(Instant::now(), &data) {
                            tracing::trace!(%from, len = data.len(), "datagram for no one; dropped");
                        }
                    }
                    Err(_) => break,
                },
                recv(game_scans) -> scan => {
                    if let Ok(scan) = scan {
                        state.games_scanned(scan);
                    }
                },
                recv(shutdown) -> _ => break,
                default(wait) => {}
            }
            // Timers run after every wake-up, not only idle ones: a client polling the local
            // API faster than the next timer must not hold it off.
            let actions = state.membership.poll(Instant::now());
            state.apply(actions);
            state.local_timers();
            if state.nat.poll(Instant::now(), &state.cfg.engine).is_some() {
                state.check_reachability();
            }
            state.relay_timers();
            state.path_timers();
            state.server_timers();
            state.update_presence();
            state.record_history();
        }
        if let Some((mut party, link)) = state.local.take() {
            link.send(&party.leave());
            state.close_link(link);
        }
        // No thread of ours outlives the daemon (it may be embedded in a process that goes on).
        if let Some(client) = &state.cfg.client {
            client.shut_down();
        }
        if let Some(link) = state.server_link.take() {
            state.close_link(link);
        }
        for reader in state.closed_readers.drain(..) {
            let _ = reader.join();
        }
        state.cfg.events.emit(DaemonEvent::Stopped);
    }
}

impl State {
    /// Closes a link: its readers end on their own, and are waited for as the daemon stops.
    fn close_link<T: Link>(&mut self, link: Reading<T>) {
        self.closed_readers.retain(|r| !r.is_finished());
        self.closed_readers.extend(link.close());
    }

    fn answer(&mut self, request: Request) {
        match request {
            Request::Status(reply) => {
                let _ = reply.send(Ok(self.status()));
            }
            Request::Peers(reply) => {
                let _ = reply.send(Ok(self.peers()));
            }
            Request::Servers(reply) => {
                let _ = reply.send(Ok(self.server_infos()));
            }
            Request::Host(request, reply) => {
                let _ = reply.send(self.host(request));
            }
            Request::Unhost(port, reply) => {
                let before = self.hosted.len();
                self.hosted.retain(|s| s.port != port);
                let result = if self.hosted.len() == before {
                    Err((404, format!("no server announced on port {port}")))
                } else {
                    self.save_hosted()
                };
                self.next_announce = Instant::now();
                let _ = reply.send(result);
            }
            Request::Create(_, reply) if self.cfg.client.is_none() => {
                let mut bytes = [0u8; PartyCode::BYTES];
                let result = match getrandom::fill(&mut bytes) {
                    Ok(()) => self.local_join(PartyCode::from_bytes(bytes)),
                    Err(e) => Err((500, format!("no random numbers: {e}"))),
                };
                if let Ok(party) = &result {
                    self.cfg.discord.event(PartyEvent::Created {
                        party: party.name.clone(),
                    });
                }
                let _ = reply.send(result);
            }
            Request::Join(code, reply) if self.cfg.client.is_none() => {
                let result = match code.parse::<PartyCode>() {
                    Ok(code) => self.local_join(code),
                    Err(e) => Err((400, e.to_string())),
                };
                let _ = reply.send(result);
            }
            Request::Leave(reply) if self.cfg.client.is_none() => {
                let result = if self.local_leave() {
                    Ok(())
                } else {
                    Err((404, "not in a party".into()))
                };
                let _ = reply.send(result);
            }
            // The server's answers come back as `Background` messages: while it is slow or
            // away, the control thread goes on answering and deciding.
            Request::Create(name, reply) => {
                let member_name = self.cfg.member_name.clone();
                self.call_server(
                    move |c| c.create(&name, &member_name),
                    move |result| Background::Joined {
                        created: true,
                        result,
                        reply,
                    },
                );
            }
            Request::Join(code, reply) => {
                let member_name = self.cfg.member_name.clone();
                self.call_server(
                    move |c| c.join(&code, &member_name),
                    move |result| Background::Joined {
                        created: false,
                        result,
                        reply,
                    },
                );
            }
            Request::Leave(reply) => {
                self.call_server(|c| c.leave(), move |result| Background::Left(result, reply));
            }
            Request::Settings(reply) => {
                let _ = reply.send(Ok(self.cfg.settings.report()));
            }
            Request::SetSetting(key, value, reply) => {
                let result = self.cfg.settings.set(&key, &value);
                if let Ok(info) = &result {
                    tracing::info!(setting = %key, value = %info.value, applies = ?info.applies, "setting changed");
                }
                self.settings_changed();
                let _ = reply.send(result);
            }
            Request::ResetSetting(key, reply) => {
                let result = self.cfg.settings.reset(&key);
                self.settings_changed();
                let _ = reply.send(result);
            }
            Request::Configurations(reply) => {
                let _ = reply.send(self.cfg.settings.configurations());
            }
            Request::SaveConfiguration(name, reply) => {
                let _ = reply.send(self.cfg.settings.save_as(&name));
            }
            Request::ActivateConfiguration(name, reply) => {
                let result = self.cfg.settings.activate(&name);
                if result.is_ok() {
                    tracing::info!(configuration = %name, "configuration activated");
                }
                self.settings_changed();
                let _ = reply.send(result);
            }
            Request::DeleteConfiguration(name, reply) => {
                let _ = reply.send(self.cfg.settings.delete(&name));
            }
            Request::Metrics(reply) => {
                let _ = reply.send(Ok(self.render_metrics()));
            }
            Request::Discord(reply) => {
                let _ = reply.send(Ok(self.cfg.discord.status()));
            }
            Request::History(reply) => {
                let _ = reply.send(Ok(self.history.json()));
            }
            Request::Games(reply) => {
                let _ = reply.send(Ok(self.status().games));
            }
            // Handled by the loop, which ends on it.
            Request::Shutdown(reply) => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Makes a server call off the control thread; `done` turns its result into the message
    /// the control thread gets back. Should the calls' thread be gone (the daemon is
    /// stopping), `done` is dropped with the reply inside it, which the asker sees as closed.
    fn call_server<T: Send + 'static>(
        &self,
        call: impl FnOnce(&mut ServerClient) -> Result<T, CallError> + Send + 'static,
        done: impl FnOnce(Result<T, CallError>) -> Background + Send + 'static,
    ) {
        let Some(client) = &self.cfg.client else {
            return;
        };
        let tx = self.background_tx.clone();
        if let Err(e) = client.in_background(call, move |result| drop(tx.send(done(result)))) {
            tracing::warn!(error = %e, "cannot call the control server");
        }
    }

    /// A failed server call, as the local API answers it: the server's verdict on the request
    /// is passed on; anything else says the server could not be asked.
    fn call_failed(&mut self, e: CallError) -> (u16, String) {
        let status = match e.status {
            Some(s) if (400..500).contains(&s) => s,
            _ => {
                self.server_state = e.message.clone();
                502
            }
        };
        (status, e.message)
    }

    /// We left the control server's party: its event stream is closed, the tunnel follows.
    fn left_server_party(&mut self) {
        self.stream_generation += 1;
        if let Some(client) = &self.cfg.client {
            client.close_event_stream(self.stream_generation);
        }
        self.feed(Input::Left);
    }

    /// Applies the settings that apply at once.
    fn settings_changed(&mut self) {
        self.retune();
        let settings = self.cfg.settings.effective();
        self.cfg
            .discord
            .configure(DiscordConfig::from_settings(&settings));
    }
}

/// The wall clock in microseconds: relay bind counters start above any used before.
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Writes a secret (the local party's code) readable by its owner only, replacing it whole.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    writeln!(file, "{contents}")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
