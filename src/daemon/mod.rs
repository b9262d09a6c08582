//! `lanrage up`: the daemon. Creates the interface, loads (or creates) the WireGuard key,
//! starts the engine, the control thread (party membership, control-server client) and the
//! local API, and runs until SIGINT/SIGTERM, when it removes the interface. Party membership
//! lives on the control server, so a restarted daemon carries on in its party.

mod api;
mod broadcast_capture;
mod control;
mod data_dir;
mod discord;
pub mod events;
mod games;
mod history;
mod key;
pub(crate) mod lan;
mod link_reader;
mod local_link;
mod metrics;
mod multicast_groups;
mod nat_check;
mod port_map;
mod server_client;
mod server_link;
pub(crate) mod settings;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use lanrage_control::peer_id::PeerId;
use lanrage_engine::io::tun::TunDevice;
use lanrage_engine::{DeviceUpdate, Engine, EngineConfig, default_threads};
use x25519_dalek::{PublicKey, StaticSecret};

use control::ControlThread;
pub use events::DaemonEvent;
use events::EventSink;
use server_client::ServerClient;
use settings::SettingsBook;

/// Flags of `lanrage up`. Those that are settings override the settings database for this
/// run only (`lanrage config` changes the database).
#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Control server URL, e.g. http://203.0.113.5:8667. Without one, parties are local:
    /// members on this LAN find each other by multicast. [setting: server]
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Interface name [setting: interface; default lanrage0].
    #[arg(long)]
    pub interface: Option<String>,
    /// Name shown to the other players [setting: name; default: this machine's hostname].
    #[arg(long)]
    pub name: Option<String>,
    /// Where the key, the settings database and state are kept.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/lanrage")]
    pub data_dir: PathBuf,
    /// Address of the local API the CLI talks to [default: 127.0.0.1 and setting api_port].
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// WireGuard UDP port, 0: any free port [setting: listen_port].
    #[arg(long)]
    pub listen_port: Option<u16>,
    /// Worker threads [setting: threads; default: one per core].
    #[arg(long, value_name = "N")]
    pub threads: Option<u16>,
    /// STUN server (HOST:PORT) for the NAT check from the WireGuard port; repeat for several
    /// [setting: stun_servers; default: a few public ones, see `lanrage netcheck`].
    #[arg(long = "stun", value_name = "HOST:PORT")]
    pub stun: Vec<String>,
    /// Do not ask the router (PCP, NAT-PMP or UPnP IGD) to forward the WireGuard port
    /// [setting: port_mapping].
    #[arg(long)]
    pub no_port_mapping: bool,
    /// Do not watch for running games (whose traffic otherwise takes the latency lane)
    /// [setting: game_detection].
    #[arg(long)]
    pub no_game_detection: bool,
    /// Leave broadcasts and multicast from sockets bound to no address on their usual route.
    /// By default, while in a party, those sent to UDP discovery ports (4445, 6112, 7777,
    /// 27015, and the running games') go into the party instead [setting: broadcast_capture].
    #[arg(long)]
    pub no_broadcast_capture: bool,
}

impl UpArgs {
    /// The settings the flags give for this run.
    fn overrides(&self) -> BTreeMap<String, serde_json::Value> {
        use serde_json::Value;
        let mut values: Vec<(&str, Value)> = Vec::new();
        if let Some(server) = &self.server {
            values.push(("server", Value::from(server.as_str())));
        }
        if let Some(interface) = &self.interface {
            values.push(("interface", Value::from(interface.as_str())));
        }
        if let Some(name) = &self.name {
            values.push(("name", Value::from(name.as_str())));
        }
        if let Some(port) = self.listen_port {
            values.push(("listen_port", Value::from(port)));
        }
        if let Some(threads) = self.threads {
            values.push(("threads", Value::from(threads)));
        }
        if !self.stun.is_empty() {
            values.push(("stun_servers", Value::from(self.stun.clone())));
        }
        for (flag, key) in [
            (self.no_port_mapping, "port_mapping"),
            (self.no_game_detection, "game_detection"),
            (self.no_broadcast_capture, "broadcast_capture"),
        ] {
            if flag {
                values.push((key, Value::from(false)));
            }
        }
        values
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect()
    }
}

/// How to run a daemon: where its key and databases live, where its local API listens, and
/// settings that override its settings database for this run (as `lanrage up`'s flags do).
///
/// As JSON (the C ABI's configuration): `{"data_dir": "/var/lib/lanrage", "api": "off",
/// "settings": {"interface": "lanrage0", "server": "http://203.0.113.5:8667"}}`. Only
/// `data_dir` is required; `api` is `HOST:PORT`, `"off"`, or absent for 127.0.0.1 at the
/// `api_port` setting: where the TCP API (with its token) listens, beside the CLI's Unix
/// socket in `data_dir`; `"off"` turns both off. `settings` takes the keys `lanrage config
/// list` shows.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    #[serde(default)]
    pub api: Option<String>,
    #[serde(default)]
    pub settings: BTreeMap<String, serde_json::Value>,
}

impl DaemonConfig {
    /// Reads and checks a configuration: unknown fields and settings, and values a setting
    /// does not take, are errors that name them.
    pub fn from_json(text: &str) -> Result<DaemonConfig> {
        let config: DaemonConfig =
            serde_json::from_str(text).context("the configuration is not valid")?;
        config.checked_settings()?;
        config.api_address(0)?;
        Ok(config)
    }

    fn from_up_args(args: &UpArgs) -> DaemonConfig {
        DaemonConfig {
            data_dir: args.data_dir.clone(),
            api: args.api.map(|a| a.to_string()),
            settings: args.overrides(),
        }
    }

    /// The settings overrides, each checked as the database's values are (and `log_file`
    /// only inside the data directory or the log directory).
    fn checked_settings(&self) -> Result<BTreeMap<String, serde_json::Value>> {
        self.settings
            .iter()
            .map(|(key, value)| {
                let spec = lanrage_control::settings::spec(key)?;
                let value = spec.check(value)?;
                if key == "log_file" {
                    lanrage_control::settings::check_log_file_place(
                        value.as_str().unwrap_or(""),
                        &self.data_dir,
                    )?;
                }
                Ok((key.clone(), value))
            })
            .collect::<Result<_, lanrage_control::settings::SettingError>>()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Where the local API listens (`None`: it is off), given the `api_port` setting.
    fn api_address(&self, api_port: u16) -> Result<Option<SocketAddr>> {
        match self.api.as_deref() {
            None => Ok(Some(SocketAddr::new(
                std::net::Ipv4Addr::LOCALHOST.into(),
                api_port,
            ))),
            Some("off") => Ok(None),
            Some(addr) => addr.parse().map(Some).with_context(|| {
                format!("api: '{addr}' is not HOST:PORT (an IP address and a port) or \"off\"")
            }),
        }
    }
}

/// A running daemon: its engine, control thread and local API, in this process. Dropping it
/// stops it, as [`Daemon::stop`] does.
pub struct Daemon {
    requests: crossbeam_channel::Sender<control::Request>,
    events: crossbeam_channel::Receiver<DaemonEvent>,
    interface: String,
    me: PeerId,
    listen_port: u16,
    api: Option<SocketAddr>,
    api_socket: Option<PathBuf>,
    running: Option<Running>,
}

/// What [`Daemon::stop`] takes down, in order.
struct Running {
    shutdown: crossbeam_channel::Sender<()>,
    control: std::thread::JoinHandle<()>,
    api: Option<api::ApiServer>,
    game_watch: Option<games::GameWatch>,
    port_mapper: Option<port_map::PortMapper>,
    engine: Engine,
}

/// Why a request to the daemon failed: the local API's status code and message (400 for a
/// malformed party code, 409 for joining while in a party, 503 once the daemon has stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

impl Daemon {
    /// Starts a daemon as `config` says: the interface (root or CAP_NET_ADMIN), the engine,
    /// the control thread, and the local API unless it is off. If it was in a party when it
    /// last stopped, it carries on in it.
    pub fn start(config: &DaemonConfig) -> Result<Daemon> {
        let overrides = config.checked_settings()?;
        data_dir::prepare(&config.data_dir)?;
        let mut settings_book = SettingsBook::open(&config.data_dir, overrides);
        let settings = settings_book.start_running();
        crate::logging::init_with(&settings.log_level, &settings.log_file);
        for problem in settings_book.problems() {
            tracing::warn!(%problem, "settings");
        }
        let interface = settings.interface.clone();
        let api_address = config.api_address(settings.api_port)?;
        let server = Some(settings.server.clone()).filter(|s| !s.is_empty());
        let secret = key::load_or_create(&config.data_dir.join("private.key"))?;
        let me = PeerId(PublicKey::from(&StaticSecret::from(secret)).to_bytes());
        let threads = match settings.threads {
            0 => default_threads(),
            n => usize::from(n),
        };
        let tun = TunDevice::create(&interface, threads, settings.mtu, None)
            .with_context(|| format!("cannot create interface {interface} (are you root?)"))?;
        let addresses = tun.addresses();
        let interface_index = addresses
            .index()
            .with_context(|| format!("no interface index for {interface}"))?;
        let capture = if !settings.broadcast_capture {
            None
        } else {
            broadcast_capture::BroadcastCapture::open(interface_index)
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "cannot set up policy routing for games' broadcasts")
                })
                .ok()
        };
        let (engine, engine_events) = Engine::start(
            tun,
            EngineConfig {
                threads,
                listen_port: settings.listen_port,
                recv_buffer: settings.socket_buffer as usize,
                cpu_locality: settings.cpu_locality,
                ..EngineConfig::default()
            },
        )
        .context("cannot start the engine")?;
        engine
            .handle()
            .update(DeviceUpdate {
                private_key: Some(Some(secret)),
                ..DeviceUpdate::default()
            })
            .context("cannot give the engine its key")?;
        let listen_port = engine.handle().status().map(|s| s.listen_port).unwrap_or(0);

        // The router forwarding our port makes us reachable even behind a symmetric NAT.
        let port_mapper = if !settings.port_mapping || listen_port == 0 {
            None
        } else {
            port_map::PortMapper::start(listen_port, interface.clone())
                .inspect_err(|e| tracing::warn!(error = %e, "cannot start port mapping"))
                .ok()
        };

        let (requests_tx, requests_rx) = crossbeam_channel::bounded(64);
        // Off: neither the socket nor TCP (a program embedding the daemon talks to it
        // directly). Otherwise the socket always, and TCP where configured.
        let api = match (&config.api, api_address) {
            (Some(off), _) if off == "off" => None,
            (_, tcp) => Some(api::ApiServer::start(
                &config.data_dir,
                tcp,
                requests_tx.clone(),
            )?),
        };
        let api_address = api.as_ref().and_then(api::ApiServer::tcp);
        let api_socket = api.as_ref().map(|a| a.socket().to_owned());
        let (game_watch, game_scans) = if !settings.game_detection {
            (None, None)
        } else {
            match games::GameWatch::start(&config.data_dir) {
                Ok((watch, scans)) => (Some(watch), Some(scans)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start game detection");
                    (None, None)
                }
            }
        };
        let (event_sink, events) = EventSink::new();
        let control = ControlThread {
            interface: interface.clone(),
            me,
            member_name: Some(settings.name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(hostname),
            listen_port,
            engine: engine.handle(),
            engine_events,
            addresses,
            interface_index,
            data_dir: config.data_dir.clone(),
            secret,
            port_mapping: port_mapper.as_ref().map(port_map::PortMapper::view),
            games: game_scans,
            capture,
            tunnel_groups: multicast_groups::TunnelGroups::new(profile_groups(&config.data_dir)),
            stun_servers: settings.stun_servers.clone(),
            client: server
                .as_deref()
                .map(|url| ServerClient::new(url, secret, me))
                .transpose()
                .context("cannot start the thread for control-server calls")?,
            relays: settings.relays != "off",
            party_subnets: if settings.party_subnet_any {
                lanrage_control::party::scope::Allowed::Any
            } else {
                lanrage_control::party::scope::Allowed::Private
            },
            discord: discord::Discord::start(discord::DiscordConfig::from_settings(&settings))
                .context("cannot start the Discord thread")?,
            events: event_sink,
            settings: settings_book,
        };
        let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded::<()>(0);
        let control = std::thread::Builder::new()
            .name("lanrage-control".into())
            .spawn(move || control.run(requests_rx, shutdown_rx))?;
        tracing::info!(%interface, public_key = %me, listen_port,
            api = %api_address.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            socket = %api_socket.as_ref().map_or_else(|| "off".to_owned(), |s| s.display().to_string()),
            server = server.as_deref().unwrap_or("none"), "LANrage is up");
        Ok(Daemon {
            requests: requests_tx,
            events,
            interface,
            me,
            listen_port,
            api: api_address,
            api_socket,
            running: Some(Running {
                shutdown: shutdown_tx,
                control,
                api,
                game_watch,
                port_mapper,
                engine,
            }),
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn public_key(&self) -> PeerId {
        self.me
    }

    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// Where the local API listens on TCP, if it does.
    pub fn api(&self) -> Option<SocketAddr> {
        self.api
    }

    /// The local API's Unix socket (the CLI's way in), unless the API is off.
    pub fn api_socket(&self) -> Option<&std::path::Path> {
        self.api_socket.as_deref()
    }

    /// Whether the daemon still runs: it stops on [`Daemon::stop`], and also when asked
    /// through its local API (`lanrage down`, the web UI).
    pub fn is_running(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| !r.control.is_finished())
    }

    /// The events, as they happen: one reader takes each event (clones share one queue).
    pub fn events(&self) -> crossbeam_channel::Receiver<DaemonEvent> {
        self.events.clone()
    }

    pub fn status(&self) -> Result<crate::local_api::Status, Refused> {
        self.call(control::Request::Status)
    }

    pub fn peers(&self) -> Result<Vec<crate::local_api::PeerInfo>, Refused> {
        self.call(control::Request::Peers)
    }

    /// Creates a party named `name` and joins it; its code is in the answer.
    pub fn create_party(
        &self,
        name: &str,
    ) -> Result<lanrage_control::server_api::PartyJson, Refused> {
        let name = name.to_owned();
        self.call(|reply| control::Request::Create(name, reply))
    }

    pub fn join_party(
        &self,
        code: &str,
    ) -> Result<lanrage_control::server_api::PartyJson, Refused> {
        let code = code.to_owned();
        self.call(|reply| control::Request::Join(code, reply))
    }

    pub fn leave_party(&self) -> Result<(), Refused> {
        self.call(control::Request::Leave)
    }

    /// Asks the control thread and waits for its answer (party calls wait for the control
    /// server, a few seconds at most).
    fn call<T>(
        &self,
        make: impl FnOnce(control::Reply<T>) -> control::Request,
    ) -> Result<T, Refused> {
        let stopped = || Refused {
            status: 503,
            message: "the daemon is not running".into(),
        };
        if !self.is_running() {
            return Err(stopped());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests.send(make(tx)).map_err(|_| stopped())?;
        match rx.blocking_recv() {
            Ok(Ok(value)) => Ok(value),
            Ok(Err((status, message))) => Err(Refused { status, message }),
            Err(_) => Err(stopped()),
        }
    }

    /// Stops the daemon and waits until it has: it leaves its interface, routes and rules
    /// behind it, and the router's port mapping; its party and key stay for the next start.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        drop(running.shutdown);
        let _ = running.control.join();
        if let Some(api) = running.api {
            api.stop();
        }
        drop(running.game_watch);
        // The router forgets our port before the interface goes (a bounded wait).
        if let Some(mut mapper) = running.port_mapper {
            mapper.stop();
        }
        // Dropping the engine closes the TUN device, which removes the interface.
        drop(running.engine);
        tracing::info!(interface = %self.interface, "stopped");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// `lanrage up`: a daemon until SIGINT or SIGTERM, or until asked to stop through its API.
pub fn run(args: UpArgs) -> Result<()> {
    let daemon = Daemon::start(&DaemonConfig::from_up_args(&args))?;
    println!(
        "lanrage: up on {} (key {}, port {}); local API on {} and {} (`lanrage ui` for the web UI)",
        daemon.interface(),
        daemon.public_key(),
        daemon.listen_port(),
        daemon
            .api_socket()
            .map_or_else(|| "nothing (off)".to_owned(), |s| s.display().to_string()),
        daemon
            .api()
            .map_or_else(|| "no TCP".to_owned(), |a| a.to_string()),
    );
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install signal handler")?;
    }
    while !stop.load(Ordering::Relaxed) && daemon.is_running() {
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.stop();
    Ok(())
}

/// A STUN transaction id. Unpredictable ids are what keep others from forging answers, so
/// without the system's random source there is no sensible way on.
pub(crate) fn random_id() -> [u8; 12] {
    let mut id = [0u8; 12];
    getrandom::fill(&mut id).expect("the system's random source failed");
    id
}

/// The IPv4 multicast groups the game profiles (built in and the data directory's) send
/// discovery to.
fn profile_groups(data_dir: &std::path::Path) -> Vec<std::net::Ipv4Addr> {
    let (profiles, _) = lanrage_games::profile::ProfileSet::load(data_dir);
    profiles
        .iter()
        .flat_map(|p| p.discovery.iter())
        .filter_map(|d| match d.address {
            std::net::IpAddr::V4(v4) if v4.is_multicast() => Some(v4),
            _ => None,
        })
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "player".into())
}
