//! The daemon's local API (JSON): the types both sides use, and the client the CLI talks
//! through. The CLI reaches it over the Unix socket [`socket_path`] in the daemon's data
//! directory, which only root and the group `lanrage` may use; the same routes are served on
//! `127.0.0.1:8666` for the web UI and programs, with the token in the data directory's
//! [`TOKEN_FILE`] (see `daemon::api`).
//!
//! - `GET /status` → [`Status`]
//! - `GET /api/peers` → `[`[`PeerInfo`]`]`
//! - `GET /api/servers` → `[`[`ServerInfo`]`]`: game servers hosted in the party
//! - `POST /api/servers/host` [`HostRequest`] → 204: announce a server this machine hosts
//! - `POST /api/servers/unhost` [`UnhostRequest`] → 204
//! - `POST /party/create` [`CreateRequest`] → the party (control server's `PartyJson`)
//! - `POST /party/join` [`JoinRequest`] → the party
//! - `POST /party/leave` → 204
//! - `POST /api/shutdown` → 204: the daemon stops (removing its interface and rules)
//! - `GET /metrics` → Prometheus's text format
//! - `GET /api/discord` → what the Discord thread does (webhook, bot, Rich Presence)
//! - `GET /api/games` → [`GameSummary`]s: the known games running here
//! - `GET /api/history` → each member's traffic and round trip, a sample a second, 5 minutes
//! - `GET /` → the web UI (`/ui/app.js`, `/ui/style.css`)
//! - `GET /api/settings` → [`SettingsReport`]: every setting, its value and where it comes from
//! - `PUT /api/settings/KEY` [`SettingChange`] → [`SettingInfo`]; `DELETE` resets it
//! - `GET /api/ui` → [`UiInfo`]: the web UI's address with the token (the socket only)
//! - `GET /api/configurations` → the saved configurations
//! - `POST /api/configurations` [`ConfigurationRequest`] → 204: save the settings as NAME
//! - `POST /api/configurations/NAME/activate` → [`SettingsReport`]; `DELETE …/NAME` → 204
//!
//! Errors are `{"error": "..."}` with a 4xx/5xx status.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow};
use lanrage_control::server_api::PartyJson;
use lanrage_control::settings::Applies;
use lanrage_control::settings::store::ConfigurationSummary;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The daemon's data directory unless told otherwise (`--data-dir`, `LANRAGE_DATA_DIR`).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/lanrage";

/// The TCP API's token, in the data directory (mode 0640, group `lanrage`).
pub const TOKEN_FILE: &str = "api-token";

/// The local API's Unix socket for the data directory `data_dir`: in a directory of its own,
/// so that it can be bound where nobody else can reach it yet.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("run").join("api.sock")
}

/// `GET /api/ui`: where the web UI is, with the token that opens it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UiInfo {
    pub url: String,
}

/// A game server in the party, as `lanrage servers` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The hosting member's name.
    pub host: String,
    /// Where to connect: the host's virtual IP and the server's port.
    pub address: Ipv4Addr,
    pub port: u16,
    /// The game's profile id, e.g. `warcraft3`.
    pub game: String,
    pub name: String,
    #[serde(default)]
    pub players: Option<u32>,
    /// Players the server takes, when it says.
    #[serde(default)]
    pub max_players: Option<u32>,
    /// Round trip to the host through the tunnel, in milliseconds (0 for our own; absent
    /// while no path to the host answers).
    #[serde(default)]
    pub latency_ms: Option<f64>,
    /// Whether this host is this machine.
    #[serde(default)]
    pub own: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub interface: String,
    pub public_key: String,
    pub listen_port: u16,
    /// The control server, if any.
    pub server: Option<String>,
    /// `connected`, or what went wrong the last time the server was asked.
    pub server_state: String,
    pub party: Option<PartySummary>,
    pub peers: Vec<PeerInfo>,
    /// The last NAT check from the WireGuard port; absent until one has finished.
    #[serde(default)]
    pub nat: Option<NatSummary>,
    /// Our sessions at relays, one per relay and peer.
    #[serde(default)]
    pub relays: Vec<RelaySummary>,
    /// The port the router forwards to our WireGuard port, and how it was asked, e.g.
    /// `198.18.7.2:51820 via NAT-PMP`; absent without one.
    #[serde(default)]
    pub port_mapping: Option<String>,
    /// Known games running on this machine.
    #[serde(default)]
    pub games: Vec<GameSummary>,
    /// Ports whose packets take the engine's latency lane now (the running games' ports).
    #[serde(default)]
    pub latency_lane_ports: Vec<u16>,
    /// How long the last scan for games took, in milliseconds; absent when detection is off.
    #[serde(default)]
    pub game_scan_ms: Option<f64>,
    /// WireGuard persistent keepalive toward the members now, in seconds (a running game may
    /// ask for less than the default).
    #[serde(default)]
    pub keepalive_secs: u16,
    /// The tunnel's MTU now (a running game may ask for less than the default).
    #[serde(default)]
    pub mtu: u16,
    /// Packets the engine refused since it started, by reason (`spoofed_source`,
    /// `unknown_peer`, …); reasons never seen are left out.
    #[serde(default)]
    pub drops: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GameSummary {
    /// The profile's id, e.g. `warcraft3`.
    pub id: String,
    pub name: String,
    /// The process it was recognised by.
    pub process: Option<String>,
    /// How sure the match is, 0 to 1.
    pub confidence: f32,
    /// The profile's ports seen listening on this host (a server running).
    #[serde(default)]
    pub listening: Vec<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelaySummary {
    pub relay: SocketAddr,
    /// The peer's name in the party.
    pub peer: String,
    /// Bound at the relay, with the peer bound too: the relayed path can carry traffic.
    pub ready: bool,
    /// Round trip of the last bind to the relay, in milliseconds.
    pub rtt_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NatSummary {
    /// As `lanrage netcheck` names it.
    pub nat_type: String,
    /// The WireGuard port as the first STUN server that answered saw it.
    pub reflexive: Option<SocketAddr>,
    pub mapping_varies: bool,
    pub checked_secs_ago: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartySummary {
    pub id: u64,
    pub name: String,
    pub code: String,
    pub virtual_ip: Option<Ipv4Addr>,
    pub members: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerInfo {
    pub name: String,
    pub public_key: String,
    pub virtual_ip: Ipv4Addr,
    pub endpoint: Option<SocketAddr>,
    /// Seconds since the last WireGuard handshake, if there was one.
    pub handshake_age_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// WireGuard messages received from and sent to the peer.
    #[serde(default)]
    pub rx_packets: u64,
    #[serde(default)]
    pub tx_packets: u64,
    /// Round trip of the path chosen by probing, in milliseconds; absent while none answers.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// `direct` or `relayed` once probing found a path, `searching` until then (the relay
    /// is then `endpoint`).
    #[serde(default)]
    pub path: String,
    /// Times the path went silent and had to be found again.
    #[serde(default)]
    pub path_losses: u32,
    /// The engine's persistent keepalive toward the peer, in seconds (0: off).
    #[serde(default)]
    pub keepalive_secs: u16,
    /// The IPv4 multicast groups the peer listens to, as it announced them: the LAN multicast
    /// it is sent. Absent while not known: it is sent every group.
    #[serde(default)]
    pub multicast_groups: Option<Vec<Ipv4Addr>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    pub name: String,
}

/// A server to announce: a game id (a profile's, or any), its port, and optionally a name
/// and the number of players.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRequest {
    pub game: String,
    pub port: u16,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub players: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnhostRequest {
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub code: String,
}

/// One setting as `lanrage config` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingInfo {
    pub key: String,
    /// In force (or, for one that applies at restart, in force from the next start).
    pub value: serde_json::Value,
    pub default: serde_json::Value,
    /// Whether the active configuration sets it (else the default applies).
    pub set: bool,
    pub applies: Applies,
    pub help: String,
    /// Changed since the daemon started, and applied only when it starts again.
    #[serde(default)]
    pub restart_pending: bool,
    /// A command-line flag of this run sets it, over the database.
    #[serde(default)]
    pub from_flag: bool,
    /// Its value is never shown: `value` says `(set)` or is empty.
    #[serde(default)]
    pub secret: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingsReport {
    /// The active configuration's name; absent when the database is unavailable.
    pub configuration: Option<String>,
    /// The database's path, or why it cannot be used.
    pub database: String,
    pub settings: Vec<SettingInfo>,
    /// Stored values refused (their defaults apply), a database set aside, and the like.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingChange {
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigurationRequest {
    pub name: String,
}

/// The daemon does not answer at all (not an error it gave): the CLI may then work on the
/// data directory itself.
#[derive(Debug)]
pub struct NotRunning(pub String);

impl std::fmt::Display for NotRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no LANrage daemon is running at {} (start one with `lanrage up`, or name its data \
             directory with --data-dir or LANRAGE_DATA_DIR)",
            self.0
        )
    }
}

impl std::error::Error for NotRunning {}

/// Creating or joining waits for the control server (5 s) and the tunnel.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The CLI's side: HTTP/1.1 over the daemon's Unix socket.
pub struct Client {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// The client of the daemon whose data directory is `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Client {
            socket: socket_path(data_dir),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cannot start a Tokio runtime for the local API client"),
        }
    }

    pub fn status(&self) -> Result<Status> {
        self.get("/status")
    }

    pub fn peers(&self) -> Result<Vec<PeerInfo>> {
        self.get("/api/peers")
    }

    pub fn servers(&self) -> Result<Vec<ServerInfo>> {
        self.get("/api/servers")
    }

    /// The web UI's address, with its token.
    pub fn ui(&self) -> Result<UiInfo> {
        self.get("/api/ui")
    }

    pub fn host(&self, request: &HostRequest) -> Result<()> {
        self.post::<_, serde_json::Value>("/api/servers/host", Some(request))
            .map(drop)
    }

    pub fn unhost(&self, port: u16) -> Result<()> {
        self.post::<_, serde_json::Value>("/api/servers/unhost", Some(&UnhostRequest { port }))
            .map(drop)
    }

    pub fn create(&self, name: &str) -> Result<PartyJson> {
        self.post(
            "/party/create",
            Some(&CreateRequest {
                name: name.to_owned(),
            }),
        )
    }

    pub fn join(&self, code: &str) -> Result<PartyJson> {
        self.post(
            "/party/join",
            Some(&JoinRequest {
                code: code.to_owned(),
            }),
        )
    }

    pub fn leave(&self) -> Result<()> {
        self.post::<(), serde_json::Value>("/party/leave", None)
            .map(drop)
    }

    /// Asks the daemon to stop; it answers before it goes.
    pub fn shutdown(&self) -> Result<()> {
        self.post::<(), serde_json::Value>("/api/shutdown", None)
            .map(drop)
    }

    pub fn settings(&self) -> Result<SettingsReport> {
        self.get("/api/settings")
    }

    pub fn set_setting(&self, key: &str, value: serde_json::Value) -> Result<SettingInfo> {
        self.call(
            hyper::Method::PUT,
            &format!("/api/settings/{key}"),
            Some(serde_json::to_vec(&SettingChange { value })?),
        )
    }

    pub fn reset_setting(&self, key: &str) -> Result<SettingInfo> {
        self.call(hyper::Method::DELETE, &format!("/api/settings/{key}"), None)
    }

    pub fn configurations(&self) -> Result<Vec<ConfigurationSummary>> {
        self.get("/api/configurations")
    }

    pub fn save_configuration(&self, name: &str) -> Result<()> {
        let request = ConfigurationRequest {
            name: name.to_owned(),
        };
        self.post::<_, serde_json::Value>("/api/configurations", Some(&request))
            .map(drop)
    }

    pub fn activate_configuration(&self, name: &str) -> Result<SettingsReport> {
        self.post::<(), _>(&format!("/api/configurations/{name}/activate"), None)
    }

    pub fn delete_configuration(&self, name: &str) -> Result<()> {
        self.call::<serde_json::Value>(
            hyper::Method::DELETE,
            &format!("/api/configurations/{name}"),
            None,
        )
        .map(drop)
    }

    fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R> {
        self.call(hyper::Method::GET, path, None)
    }

    fn post<B: Serialize, R: DeserializeOwned>(&self, path: &str, body: Option<&B>) -> Result<R> {
        let body = body.map(serde_json::to_vec).transpose()?;
        self.call(hyper::Method::POST, path, body)
    }

    /// One request on a connection of its own; the answer's value, or the daemon's refusal.
    fn call<R: DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<R> {
        let exchange = self.exchange(method, path, body);
        let (status, text) = match self
            .runtime
            // The timer is made inside the runtime, whose clock it needs.
            .block_on(async { tokio::time::timeout(TIMEOUT, exchange).await })
        {
            Ok(answer) => answer?,
            Err(_) => {
                return Err(anyhow!(
                    "the LANrage daemon at {} did not answer within {} s",
                    self.socket.display(),
                    TIMEOUT.as_secs()
                ));
            }
        };
        crate::json_api::decode(status, &text).map_err(|r| anyhow!(r.message))
    }

    async fn exchange(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, String)> {
        use http_body_util::BodyExt;
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    anyhow::Error::new(NotRunning(self.socket.display().to_string()))
                }
                std::io::ErrorKind::PermissionDenied => anyhow!(
                    "cannot reach the LANrage daemon at {}: permission denied (it takes \
                     commands from root and the members of the group lanrage only)",
                    self.socket.display()
                ),
                _ => anyhow!(
                    "cannot reach the LANrage daemon at {}: {e}",
                    self.socket.display()
                ),
            })?;
        let failed = |e: hyper::Error| {
            anyhow!(
                "cannot talk to the LANrage daemon at {}: {e}",
                self.socket.display()
            )
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(failed)?;
        let connection = tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost");
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(http_body_util::Full::new(hyper::body::Bytes::from(
            body.unwrap_or_default(),
        )))?;
        let response = sender.send_request(request).await.map_err(failed)?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(failed)?
            .to_bytes();
        connection.abort();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }
}
