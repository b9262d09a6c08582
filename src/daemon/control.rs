//! The control thread: owns the party membership and the connection to the control server,
//! answers the local API, and turns membership actions into engine and interface changes.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, bounded, select, unbounded};
use lanrage_control::ipam::DEFAULT_SUBNET;
use lanrage_control::nat::NatType;
use lanrage_control::party::code::PartyCode;
use lanrage_control::party::local::LocalParty;
use lanrage_control::party::membership::{Action, Input, Membership};
use lanrage_control::path::selector::{PathEvent, PathSelector};
use lanrage_control::path::{PathAddr, frame};
use lanrage_control::peer_id::PeerId;
use lanrage_control::relay::RelayClient;
use lanrage_control::relay::frame::is_relay_control;
use lanrage_control::server_api::{EventJson, PartyJson};
use lanrage_control::servers::{self, Announcement, HostedServer, ServerList};
use lanrage_engine::io::tun::TunAddresses;
use lanrage_engine::lan::LanScope;
use lanrage_engine::wire::{RELAY_HEADER_LEN, write_relay_header};
use lanrage_engine::{
    DeviceStatus, DeviceUpdate, Endpoint, EngineHandle, Event as EngineEvent, PeerUpdate, Prefix,
    PriorityPolicy,
};

use super::broadcast_capture::{self, BroadcastCapture, CapturePlan};
use super::discord::{Discord, DiscordConfig, DiscordStatus};
use super::games::{GameScan, RunningGame};
use super::history::{History, HistoryJson, Reading};
use super::local_link::LocalLink;
use super::metrics::{Metrics, PeerLabels, PeerSample, Sample};
use super::multicast_groups::{self, TunnelGroups};
use super::nat_check::NatCheck;
use super::port_map::{Mapping, MappingView};
use super::server_client::{CallError, ServerClient};
use super::server_link::{ServerDatagram, ServerLink};
use super::settings::SettingsBook;
use crate::local_api::{
    GameSummary, HostRequest, NatSummary, PartySummary, PeerInfo, RelaySummary, ServerInfo,
    SettingInfo, SettingsReport, Status,
};
use lanrage_control::discord::PartyEvent;
use lanrage_control::discord::ipc::Activity;
use lanrage_control::settings::Settings;
use lanrage_control::settings::store::ConfigurationSummary;
use lanrage_games::a2s;
use lanrage_games::profile::ServerQuery;
use lanrage_games::tuning::Tuning;

/// Members already there when we join arrive in the first moments: not news for Discord.
const PARTY_SETTLING: Duration = Duration::from_secs(5);
/// How often the multicast groups this host listens to are looked at: a game that joins one
/// is announced to the party within this and a round trip (until then the others send it
/// what they sent before).
const GROUPS_CHECK: Duration = Duration::from_secs(1);
/// How long the loop sleeps when nothing is scheduled.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// How often local addresses are looked at (a laptop moves between networks).
const ADDRESS_CHECK: Duration = Duration::from_secs(10);
/// How often the relays and our grants for them are fetched again: relays come and go, and
/// grants last an hour.
const GRANTS_REFRESH: Duration = Duration::from_secs(30);
/// After a failed fetch of relays.
const GRANTS_RETRY: Duration = Duration::from_secs(5);

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
    /// Party events to a Discord channel, and Rich Presence.
    pub discord: Discord,
}

struct State {
    cfg: ControlThread,
    membership: Membership,
    server_state: String,
    stream_generation: u64,
    stream_tx: Sender<(u64, Option<EventJson>)>,
    /// Local mode (no server): the party found by LAN announcements, and its socket.
    local: Option<(LocalParty, Arc<LocalLink>)>,
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
    server_link: Option<Arc<ServerLink>>,
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
}

impl ControlThread {
    /// Runs until `shutdown` is dropped or sends.
    pub fn run(self, requests: Receiver<Request>, shutdown: Receiver<()>) {
        let (stream_tx, stream_rx) = unbounded();
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
        let mut state = State {
            cfg: self,
            membership: Membership::new(me),
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
                                Some(event) => Input::Event(event),
                                None => Input::EventsLost,
                            };
                            state.feed(input);
                        }
                    }
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
        }
    }
}

impl State {
    /// After a restart the server still counts us as a member: carry on in that party.
    fn resume(&mut self) {
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
    fn local_join(&mut self, code: PartyCode) -> Result<PartyJson, (u16, String)> {
        self.local_leave();
        let link = LocalLink::open(&self.cfg.interface)
            .map_err(|e| (503, format!("cannot use the LAN for a local party: {e}")))?;
        link.spawn_reader(self.lan_tx.clone())
            .map_err(|e| (500, format!("cannot start the LAN reader: {e}")))?;
        let seq_start = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let party = LocalParty::new(
            Instant::now(),
            code,
            self.cfg.me,
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

    fn local_leave(&mut self) -> bool {
        let Some((mut party, link)) = self.local.take() else {
            return false;
        };
        let _ = std::fs::remove_file(self.local_party_file());
        link.send(&party.leave());
        self.feed(Input::Left);
        true
    }

    fn lan_datagram(&mut self, from: SocketAddr, datagram: &[u8]) {
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

    fn local_timers(&mut self) {
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

    /// Tells the party where we can be reached: every local IPv4 address but loopback and our
    /// own interface, at the WireGuard port, then the external address the router forwards to
    /// us (port mapping; useful whatever the NAT's mapping does), then the reflexive address
    /// the NAT check found (unless the NAT maps per destination, when it would be of no use to
    /// anyone else).
    fn check_reachability(&mut self) {
        let local: Vec<SocketAddr> = match super::lan::ipv4_addresses(&self.cfg.interface) {
            Ok(addresses) => addresses
                .into_iter()
                .filter(|a| !a.is_link_local())
                .map(|a| SocketAddr::new(IpAddr::V4(a), self.cfg.listen_port))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list local addresses");
                return;
            }
        };
        self.nat.set_local(local.clone());
        let mut endpoints = local;
        if let Some(mapping) = self.mapping {
            if !endpoints.contains(&mapping.external) {
                endpoints.push(mapping.external);
            }
        }
        let mut nat = NatType::Unknown;
        if let Some((report, _)) = self.nat.last() {
            nat = report.nat;
            let reflexive = report.facts.mappings.first().map(|&(_, mapped)| mapped);
            if let Some(mapped) = reflexive.filter(|_| !report.facts.mapping_varies()) {
                if !endpoints.contains(&mapped) {
                    endpoints.push(mapped);
                }
            }
        }
        self.feed(Input::Reachability { endpoints, nat });
    }

    /// Sends the path probes due and points each peer's WireGuard endpoint at its chosen
    /// path.
    fn path_timers(&mut self) {
        let now = Instant::now();
        while let Some((to, mut datagram)) = self.paths.poll_transmit(now) {
            if let Some(channel) = to.relay_channel {
                let mut framed = vec![0; RELAY_HEADER_LEN];
                write_relay_header(&mut framed, channel);
                framed.append(&mut datagram);
                datagram = framed;
            }
            if self.cfg.engine.send_datagram(to.addr, datagram).is_err() {
                tracing::debug!(%to, "engine gone; path probe not sent");
            }
        }
        while let Some((peer, rtt)) = self.paths.poll_round_trip() {
            if let Some(labels) = self.metric_labels(peer) {
                self.metrics.round_trip(&labels, rtt);
            }
        }
        while let Some(event) = self.paths.poll_event() {
            match event {
                PathEvent::Chosen {
                    peer,
                    endpoint,
                    rtt,
                } => {
                    tracing::info!(%peer, %endpoint, rtt_ms = rtt.as_secs_f64() * 1e3, "path chosen");
                    let mut update = PeerUpdate::new(peer.0);
                    update.endpoint = Some(engine_endpoint(endpoint));
                    self.engine_update(update);
                }
                PathEvent::Lost { peer } => {
                    tracing::warn!(%peer, "no path to the peer answers any more; still trying");
                    // If our NAT rebound us to a new port, the party must hear of it.
                    self.nat.recheck();
                }
            }
        }
    }

    /// Gives the selector every path to `peer`: its advertised addresses, then the relayed
    /// paths bound for it.
    fn set_candidates(&mut self, now: Instant, peer: PeerId) {
        let Some((direct, relayed)) = self.candidates.get(&peer) else {
            return;
        };
        let all: Vec<PathAddr> = direct
            .iter()
            .copied()
            .map(PathAddr::direct)
            .chain(relayed.iter().copied())
            .collect();
        self.paths.set_peer(now, peer, &all);
    }

    /// Fetches relays and grants when due, sends the binds due, and hands the selector the
    /// relayed paths that came or went.
    fn relay_timers(&mut self) {
        let now = Instant::now();
        if self.next_grants.is_some_and(|at| at <= now) {
            self.fetch_grants(now);
        }
        while let Some((relay, bind)) = self.relays.poll_transmit(now) {
            if self.cfg.engine.send_datagram(relay, bind).is_err() {
                tracing::debug!(%relay, "engine gone; relay bind not sent");
            }
        }
        let changed: Vec<PeerId> = self
            .candidates
            .iter_mut()
            .filter_map(|(peer, (_, relayed))| {
                let now_paths = self.relays.paths(peer, now);
                (now_paths != *relayed).then(|| {
                    *relayed = now_paths;
                    *peer
                })
            })
            .collect();
        for peer in changed {
            tracing::debug!(%peer, "relayed paths changed");
            self.set_candidates(now, peer);
        }
    }

    fn fetch_grants(&mut self, now: Instant) {
        let Some(client) = self.cfg.client.as_mut().filter(|_| self.cfg.relays) else {
            self.next_grants = None;
            return;
        };
        if self.membership.party().is_none() {
            self.next_grants = None;
            return;
        }
        match client.relays() {
            Ok(list) => {
                let grants: Vec<_> = list
                    .relays
                    .iter()
                    .flat_map(|relay| {
                        relay
                            .grants
                            .iter()
                            .filter_map(move |g| Some((g.peer, relay.addr, g.to_grant()?)))
                    })
                    .collect();
                tracing::debug!(
                    relays = list.relays.len(),
                    grants = grants.len(),
                    "relay grants fetched"
                );
                self.relays.set_grants(now, &grants);
                self.next_grants = Some(now + GRANTS_REFRESH);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch relays; trying again shortly");
                self.next_grants = Some(now + GRANTS_RETRY);
            }
        }
    }

    fn feed(&mut self, input: Input) {
        let actions = self.membership.handle(Instant::now(), input);
        self.apply(actions);
    }

    fn apply(&mut self, actions: Vec<Action>) {
        let mut lost = false;
        let mut retry_heartbeat = false;
        let mut delivered = false;
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
                    self.virtual_ip = None;
                    self.in_party_since = None;
                    self.member_names.clear();
                    self.update_capture();
                    self.cfg.tunnel_groups.leave();
                    self.server_link = None;
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
                Action::SendHeartbeat(beat) => {
                    if let Some(client) = &mut self.cfg.client {
                        match client.heartbeat(&beat) {
                            Ok(()) => {
                                self.server_state = "connected".into();
                                delivered = true;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "heartbeat failed; trying again shortly");
                                self.server_state = e.to_string();
                                retry_heartbeat = true;
                            }
                        }
                    }
                }
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
        } else if delivered {
            self.feed(Input::HeartbeatDelivered);
        }
    }

    fn engine_update(&self, peer: PeerUpdate) {
        let update = DeviceUpdate {
            peers: vec![peer],
            ..DeviceUpdate::default()
        };
        if let Err(e) = self.cfg.engine.update(update) {
            tracing::error!(error = %e, "engine refused a peer change");
        }
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
            Request::Create(name, reply) => {
                let member_name = self.cfg.member_name.clone();
                let result = self.with_client(|c| c.create(&name, &member_name));
                let result = self.joined(result);
                if let Ok(party) = &result {
                    self.cfg.discord.event(PartyEvent::Created {
                        party: party.name.clone(),
                    });
                }
                let _ = reply.send(result);
            }
            Request::Join(code, reply) => {
                let member_name = self.cfg.member_name.clone();
                let result = self.with_client(|c| c.join(&code, &member_name));
                let _ = reply.send(self.joined(result));
            }
            Request::Leave(reply) => {
                let result = self.with_client(|c| c.leave());
                if result.is_ok() {
                    self.stream_generation += 1;
                    self.feed(Input::Left);
                }
                let _ = reply.send(result);
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

    fn with_client<T>(
        &mut self,
        call: impl FnOnce(&mut ServerClient) -> Result<T, CallError>,
    ) -> Result<T, (u16, String)> {
        let Some(client) = &mut self.cfg.client else {
            return Err((
                503,
                "no control server configured (start the daemon with --server URL)".into(),
            ));
        };
        call(client).map_err(|e| {
            let status = match e.status {
                // The server's verdict on the request: pass it on.
                Some(s) if (400..500).contains(&s) => s,
                _ => {
                    self.server_state = e.message.clone();
                    502
                }
            };
            (status, e.message)
        })
    }

    fn joined(
        &mut self,
        result: Result<PartyJson, (u16, String)>,
    ) -> Result<PartyJson, (u16, String)> {
        let party = result?;
        self.server_state = "connected".into();
        tracing::info!(party = %party.name, members = party.members.len(), "in party");
        self.feed(Input::Joined(party.clone()));
        Ok(party)
    }

    /// Captures the default discovery ports and the running games' while in a party; nothing
    /// otherwise.
    fn update_capture(&mut self) {
        let Some(capture) = &mut self.cfg.capture else {
            return;
        };
        let plan = self.virtual_ip.map(|address| {
            let games = self.games.iter().flat_map(|g| g.profile.discovery_ports());
            let ports = broadcast_capture::DEFAULT_PORTS
                .iter()
                .copied()
                .chain(games);
            CapturePlan::new(self.cfg.interface_index, address, ports)
        });
        let ports = plan.as_ref().map(|p| p.port_ranges.clone());
        match capture.apply(plan) {
            Ok(false) => {}
            Ok(true) => match ports {
                Some(ports) => tracing::info!(
                    ?ports,
                    "broadcasts and multicast from unbound sockets on these UDP ports now go to the party"
                ),
                None => tracing::info!("broadcast capture removed"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot route games' broadcasts into the tunnel"),
        }
    }

    /// Opens the server browser's socket on the tunnel (again after a new address).
    fn open_server_link(&mut self) {
        self.server_link = None;
        match ServerLink::open(&self.cfg.interface, self.cfg.interface_index) {
            Ok(link) => match link.spawn_readers(self.servers_tx.clone()) {
                Ok(()) => {
                    self.server_link = Some(link);
                    self.next_announce = Instant::now();
                }
                Err(e) => tracing::warn!(error = %e, "cannot start the server browser"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot open the server browser's socket"),
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
    fn load_hosted(&mut self) {
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

    fn save_hosted(&self) -> Result<(), (u16, String)> {
        let saved = Announcement {
            servers: self.hosted.clone(),
            groups: None,
        };
        let json = serde_json::to_string_pretty(&saved).unwrap_or_default();
        write_private(&self.hosted_file(), &json)
            .map_err(|e| (500, format!("cannot save the announced servers: {e}")))
    }

    /// Announces a server by hand (replacing one on the same port).
    fn host(&mut self, request: HostRequest) -> Result<(), (u16, String)> {
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
    fn server_timers(&mut self) {
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
    fn server_datagram(&mut self, kind: ServerDatagram, from: SocketAddr, datagram: &[u8]) {
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
        self.member_names.insert(peer, name.clone());
        let settled = self
            .in_party_since
            .is_some_and(|(since, _)| now.saturating_duration_since(since) > PARTY_SETTLING);
        if settled {
            self.cfg.discord.event(PartyEvent::Joined { member: name });
        }
    }

    /// A sample of every member's traffic for the web UI's graphs, once a second.
    fn record_history(&mut self) {
        let now = Instant::now();
        if !self.history.due(now) {
            return;
        }
        let readings: Vec<Reading> = self
            .peers()
            .into_iter()
            .map(|p| Reading {
                name: p.name,
                virtual_ip: p.virtual_ip.to_string(),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                rtt_ms: p.rtt_ms,
            })
            .collect();
        self.history.record(now, &readings);
    }

    /// Tells Discord what to show when the party or the game changes.
    fn update_presence(&mut self) {
        let activity =
            self.membership
                .party()
                .zip(self.in_party_since)
                .map(|(party, (_, since))| Activity {
                    party: party.name.clone(),
                    party_id: format!("lanrage-{}", party.code),
                    members: party.members.len() as u32,
                    game: self.games.first().map(|g| g.detected.name.clone()),
                    since_unix: since,
                });
        if activity != self.activity {
            self.cfg.discord.activity(activity.clone());
            self.activity = activity;
        }
    }

    /// The labels of `peer`'s series: its name and virtual IP while it is a member.
    fn metric_labels(&mut self, peer: PeerId) -> Option<PeerLabels> {
        let member = self
            .membership
            .party()?
            .members
            .iter()
            .find(|m| m.peer == peer)?;
        let labels = PeerLabels {
            peer: member.name.clone(),
            virtual_ip: member.virtual_ip.to_string(),
        };
        if let Some(old) = self.metric_labels.insert(peer, labels.clone())
            && old != labels
        {
            self.metrics.forget(&old);
        }
        Some(labels)
    }

    fn render_metrics(&mut self) -> String {
        let engine = self.cfg.engine.status().ok();
        let peers = self
            .peer_infos(engine.as_ref())
            .into_iter()
            .map(|p| PeerSample {
                labels: PeerLabels {
                    virtual_ip: p.virtual_ip.to_string(),
                    peer: p.name,
                },
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                rx_packets: p.rx_packets,
                tx_packets: p.tx_packets,
                relayed: p.path == "relayed",
                path_losses: p.path_losses,
            })
            .collect();
        self.metrics.render(&Sample {
            peers,
            drops: engine
                .map(|s| {
                    s.drops
                        .iter()
                        .map(|(reason, n)| (reason.name(), *n))
                        .collect()
                })
                .unwrap_or_default(),
            party_members: self.membership.party().map_or(0, |p| p.members.len()),
            game_scan: self.game_scan,
        })
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
    fn server_infos(&self) -> Vec<ServerInfo> {
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

    /// Holds the games' discovery groups on the tunnel while in a party.
    fn join_tunnel_groups(&mut self) {
        match self.cfg.tunnel_groups.join(self.cfg.interface_index) {
            Ok(()) => {
                tracing::debug!(groups = ?self.cfg.tunnel_groups.groups(), "discovery groups joined on the tunnel")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot join games' multicast groups on the tunnel")
            }
        }
    }

    /// Applies the settings that apply at once.
    fn settings_changed(&mut self) {
        self.retune();
        let settings = self.cfg.settings.effective();
        self.cfg
            .discord
            .configure(DiscordConfig::from_settings(&settings));
    }

    fn games_scanned(&mut self, scan: GameScan) {
        self.game_scan = Some(scan.took);
        if self.virtual_ip.is_some() {
            for game in &scan.running {
                if !self.games.iter().any(|g| g.detected.id == game.detected.id) {
                    self.cfg.discord.event(PartyEvent::GameStarted {
                        member: self.cfg.member_name.clone(),
                        game: game.detected.name.clone(),
                    });
                }
            }
        }
        self.games = scan.running;
        self.update_capture();
        self.retune();
    }

    /// Tunes the tunnel for the settings and the running games (see `Tuning`): a game's
    /// traffic takes the latency lane, and its keepalive and MTU apply if stricter. When it
    /// stops, all of it is as configured again.
    fn retune(&mut self) {
        let settings = self.cfg.settings.effective();
        let base = base_tuning(&settings);
        let tuning = Tuning::for_games(&base, self.games.iter().map(|g| &g.profile));
        let policy = PriorityPolicy {
            ports: tuning.lane_ports.clone(),
            ..base_priority(&settings)
        };
        if self.lane.as_ref() != Some(&policy)
            && self.cfg.engine.set_priority(policy.clone()).is_ok()
        {
            tracing::info!(ports = ?policy.ports, small_packets = policy.small_packet_max, "latency lane set");
            self.tuning.lane_ports = tuning.lane_ports;
            self.lane = Some(policy);
        }
        if tuning.keepalive != self.tuning.keepalive {
            let peers = self.membership.party().map_or_else(Vec::new, |party| {
                party
                    .members
                    .iter()
                    .filter(|m| m.peer != self.cfg.me)
                    .map(|m| {
                        let mut update = PeerUpdate::new(m.peer.0);
                        update.update_only = true;
                        update.persistent_keepalive = Some(tuning.keepalive);
                        update
                    })
                    .collect()
            });
            let update = DeviceUpdate {
                peers,
                ..DeviceUpdate::default()
            };
            match self.cfg.engine.update(update) {
                Ok(()) => {
                    tracing::info!(
                        seconds = tuning.keepalive,
                        "persistent keepalive set for the running games"
                    );
                    self.tuning.keepalive = tuning.keepalive;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set the keepalive for the running games")
                }
            }
        }
        if tuning.mtu != self.tuning.mtu {
            match self.cfg.addresses.set_mtu(tuning.mtu) {
                Ok(()) => {
                    tracing::info!(mtu = tuning.mtu, "tunnel MTU set for the running games");
                    self.tuning.mtu = tuning.mtu;
                }
                Err(e) => tracing::warn!(mtu = tuning.mtu, error = %e, "cannot set the tunnel MTU"),
            }
        }
    }

    fn status(&self) -> Status {
        let party = self.membership.party().map(|p| PartySummary {
            id: p.id,
            name: p.name.clone(),
            code: p.code.clone(),
            virtual_ip: p
                .members
                .iter()
                .find(|m| m.peer == self.cfg.me)
                .map(|m| m.virtual_ip),
            members: p.members.len(),
        });
        Status {
            interface: self.cfg.interface.clone(),
            public_key: self.cfg.me.to_string(),
            listen_port: self.cfg.listen_port,
            server: self.cfg.client.as_ref().map(|c| c.base().to_owned()),
            server_state: self.server_state.clone(),
            party,
            peers: self.peers(),
            nat: self.nat.last().map(|(report, at)| NatSummary {
                nat_type: report.nat.name().to_owned(),
                reflexive: report.facts.mappings.first().map(|&(_, mapped)| mapped),
                mapping_varies: report.facts.mapping_varies(),
                checked_secs_ago: at.elapsed().as_secs(),
            }),
            relays: self.relay_summary(),
            port_mapping: self.mapping.map(|m| m.to_string()),
            games: self
                .games
                .iter()
                .map(|g| GameSummary {
                    id: g.detected.id.clone(),
                    name: g.detected.name.clone(),
                    process: g.detected.process.clone(),
                    confidence: g.detected.confidence,
                    listening: g.detected.ports.clone(),
                })
                .collect(),
            latency_lane_ports: self.tuning.lane_ports.clone(),
            keepalive_secs: self.tuning.keepalive,
            mtu: self.tuning.mtu,
            game_scan_ms: self.game_scan.map(|d| d.as_secs_f64() * 1e3),
        }
    }

    fn relay_summary(&self) -> Vec<RelaySummary> {
        let names: HashMap<PeerId, &str> = self
            .membership
            .party()
            .map(|p| {
                p.members
                    .iter()
                    .map(|m| (m.peer, m.name.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        self.relays
            .status(Instant::now())
            .into_iter()
            .map(|s| RelaySummary {
                relay: s.relay,
                peer: names
                    .get(&s.peer)
                    .map_or_else(|| s.peer.to_string(), |n| (*n).to_owned()),
                ready: s.peer_bound,
                rtt_ms: s.rtt.map(|d| d.as_secs_f64() * 1e3),
            })
            .collect()
    }

    fn peers(&self) -> Vec<PeerInfo> {
        self.peer_infos(self.cfg.engine.status().ok().as_ref())
    }

    /// The other members as the API shows them, with what `engine` counted for each.
    fn peer_infos(&self, engine: Option<&DeviceStatus>) -> Vec<PeerInfo> {
        let Some(party) = self.membership.party() else {
            return Vec::new();
        };
        party
            .members
            .iter()
            .filter(|m| m.peer != self.cfg.me)
            .map(|m| {
                let live = engine.and_then(|s| s.peers.iter().find(|p| p.public_key == m.peer.0));
                let path = self.paths.path(&m.peer, Instant::now());
                PeerInfo {
                    name: m.name.clone(),
                    public_key: m.peer.to_string(),
                    virtual_ip: m.virtual_ip,
                    endpoint: live.and_then(|p| p.endpoint).map(|e| e.addr),
                    handshake_age_secs: live
                        .and_then(|p| p.last_handshake)
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .map(|d| d.as_secs()),
                    rx_bytes: live.map_or(0, |p| p.rx_bytes),
                    tx_bytes: live.map_or(0, |p| p.tx_bytes),
                    rx_packets: live.map_or(0, |p| p.rx_packets),
                    tx_packets: live.map_or(0, |p| p.tx_packets),
                    rtt_ms: path.map(|(_, rtt)| rtt.as_secs_f64() * 1e3),
                    path: match path {
                        Some((endpoint, _)) if endpoint.is_relayed() => "relayed",
                        Some(_) => "direct",
                        None => "searching",
                    }
                    .to_owned(),
                    path_losses: self.paths.losses(&m.peer),
                    keepalive_secs: live.map_or(0, |p| p.persistent_keepalive),
                    multicast_groups: self.servers.groups(m.virtual_ip).map(<[_]>::to_vec),
                }
            })
            .collect()
    }
}

/// The path a datagram from the engine came on: straight from an address, or through a relay
/// channel (the engine strips the relay header).
fn path_addr(from: Endpoint) -> PathAddr {
    PathAddr {
        addr: from.addr,
        relay_channel: from.relay_channel,
    }
}

/// Where the engine sends a peer's WireGuard traffic for a chosen path.
fn engine_endpoint(path: PathAddr) -> Endpoint {
    Endpoint {
        addr: path.addr,
        relay_channel: path.relay_channel,
    }
}

/// The wall clock in microseconds: relay bind counters start above any used before.
/// The latency lane as the settings have it, before the running games' ports.
fn base_priority(settings: &Settings) -> PriorityPolicy {
    PriorityPolicy {
        small_packet_max: settings.lane_small_packets,
        ports: settings.lane_ports.clone(),
    }
}

/// The tunnel's settings while no game runs. Path probing (every second, see
/// `PathSelector`) is what holds NAT mappings open; the keepalive keeps each session
/// established, so a game's first packet after a quiet spell never waits for a handshake
/// (WireGuard's sessions lapse after 3 idle minutes).
fn base_tuning(settings: &Settings) -> Tuning {
    Tuning {
        keepalive: settings.keepalive,
        mtu: settings.mtu,
        lane_ports: settings.lane_ports.clone(),
    }
}

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
        .open(&tmp)?;
    writeln!(file, "{contents}")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
