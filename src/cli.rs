//! The commands that talk to a running daemon through its local API: human output by
//! default, `--json` for scripts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use lanrage_control::server_api::PartyJson;
use lanrage_games::profile::{GameProfile, ProfileSet};
use serde::Serialize;

mod connect_watch;
mod member_query;
pub mod output;

use self::connect_watch::ConnectWatch;
use crate::local_api::{Client, DEFAULT_DATA_DIR, HostRequest, PeerInfo, Status};

/// Local parties (no control server) have no server-side id.
const LOCAL_PARTY_ID: u64 = 0;

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// The daemon's data directory: its local API's socket is there (`run/api.sock`), which
    /// root and the group `lanrage` may use.
    #[arg(
        long,
        value_name = "DIR",
        global = true,
        env = "LANRAGE_DATA_DIR",
        default_value = DEFAULT_DATA_DIR
    )]
    pub data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct GamesArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// List every known game profile (built in, and the data directory's `games/*.json`)
    /// instead of the running games; needs no daemon. Custom ones are in the data
    /// directory's `games/` folder.
    #[arg(long)]
    pub known: bool,
}

#[derive(Subcommand, Debug, Clone)]
pub enum PartyCommand {
    /// Create a party and join it; prints the code to share.
    Create { name: String },
    /// Join the party with this code (dashes and case do not matter).
    Join { code: String },
    /// Leave the current party.
    Leave,
}

#[derive(Subcommand, Debug, Clone)]
pub enum ServersCommand {
    /// List the party's servers (the default).
    List,
    /// Announce a server this machine hosts (games found running with their port open are
    /// announced without this); kept across restarts.
    Host {
        /// The game: a profile id (`lanrage games --known`) or any short name.
        game: String,
        /// The port players connect to.
        port: u16,
        /// What the browser shows (default: "NAME's GAME").
        #[arg(long)]
        name: Option<String>,
        /// Players in the game now.
        #[arg(long)]
        players: Option<u32>,
    },
    /// Stop announcing the server on this port.
    Unhost { port: u16 },
}

#[derive(Args, Debug, Clone)]
pub struct PingArgs {
    /// The member: its name in the party or its virtual IP.
    pub peer: String,
    /// Echo requests to send.
    #[arg(long, short = 'c', default_value_t = 4)]
    pub count: u32,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// How long `lanrage down` waits for the daemon to be gone.
const DOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn down(api: &ApiArgs) -> Result<()> {
    let client = Client::new(&api.data_dir);
    client.shutdown()?;
    let asked = std::time::Instant::now();
    // Gone once the API no longer answers: the interface, rules and port mapping are undone
    // before the process exits.
    while client.status().is_ok() {
        if asked.elapsed() > DOWN_TIMEOUT {
            anyhow::bail!(
                "the daemon was asked to stop but still answers after {} s",
                DOWN_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if api.json {
        return print_json(&serde_json::json!({ "stopped": true }));
    }
    say!("lanrage: stopped");
    Ok(())
}

pub fn ping(args: &PingArgs) -> Result<()> {
    let peers = Client::new(&args.api.data_dir).peers()?;
    let peer = member_query::find(&peers, &args.peer).map_err(anyhow::Error::msg)?;
    let endpoint = peer
        .endpoint
        .map_or_else(|| "no endpoint yet".into(), |e| e.to_string());
    let mut ping = std::process::Command::new("ping");
    ping.args(["-n", "-i", "0.2", "-c", &args.count.max(1).to_string()])
        .arg(peer.virtual_ip.to_string());
    if args.api.json {
        let out = ping
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run ping (package iputils-ping): {e}"))?;
        let summary = PingSummary::read(&String::from_utf8_lossy(&out.stdout));
        return print_json(&serde_json::json!({
            "name": peer.name,
            "virtual_ip": peer.virtual_ip,
            "path": peer.path,
            "endpoint": peer.endpoint,
            "probe_rtt_ms": peer.rtt_ms,
            "sent": summary.sent,
            "received": summary.received,
            "avg_ms": summary.avg_ms,
        }));
    }
    let probe = peer
        .rtt_ms
        .map_or_else(String::new, |ms| format!(", probes say {ms:.1} ms"));
    say!(
        "{} ({}): {} path via {endpoint}{probe}",
        peer.name,
        peer.virtual_ip,
        peer.path
    );
    let status = ping
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run ping (package iputils-ping): {e}"))?;
    if !status.success() {
        anyhow::bail!("{} did not answer every ping", peer.name);
    }
    Ok(())
}

/// What iputils' ping says at the end: `4 packets transmitted, 4 received, …` and
/// `rtt min/avg/max/mdev = 0.041/0.052/0.066/0.009 ms`.
#[derive(Debug, Default, PartialEq)]
struct PingSummary {
    sent: u32,
    received: u32,
    avg_ms: Option<f64>,
}

impl PingSummary {
    fn read(output: &str) -> PingSummary {
        let mut summary = PingSummary::default();
        for line in output.lines() {
            if let Some((sent, rest)) = line.split_once(" packets transmitted, ") {
                summary.sent = sent.trim().parse().unwrap_or(0);
                summary.received = rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
            }
            if let Some((_, values)) = line.split_once(" = ") {
                summary.avg_ms = values.split('/').nth(1).and_then(|v| v.parse().ok());
            }
        }
        summary
    }
}

pub fn status(api: &ApiArgs) -> Result<()> {
    let status = Client::new(&api.data_dir).status()?;
    if api.json {
        return print_json(&status);
    }
    print_status(&status);
    Ok(())
}

/// `lanrage ui`: the web UI's address with its token (only who may use the socket learns
/// it); opening it once logs the browser in.
pub fn ui(api: &ApiArgs) -> Result<()> {
    let ui = Client::new(&api.data_dir).ui()?;
    if api.json {
        return print_json(&ui);
    }
    say!("Open the web UI at {}", ui.url);
    Ok(())
}

pub fn peers(api: &ApiArgs) -> Result<()> {
    let peers = Client::new(&api.data_dir).peers()?;
    if api.json {
        return print_json(&peers);
    }
    if peers.is_empty() {
        say!("no peers (not in a party, or alone in it)");
    }
    print_peers(&peers);
    Ok(())
}

pub fn servers(api: &ApiArgs, command: Option<&ServersCommand>) -> Result<()> {
    let client = Client::new(&api.data_dir);
    match command {
        None | Some(ServersCommand::List) => {}
        Some(ServersCommand::Host {
            game,
            port,
            name,
            players,
        }) => {
            client.host(&HostRequest {
                game: game.clone(),
                port: *port,
                name: name.clone(),
                players: *players,
            })?;
            if !api.json {
                say!("announcing {game} on port {port} to the party");
            }
            return Ok(());
        }
        Some(ServersCommand::Unhost { port }) => {
            client.unhost(*port)?;
            if !api.json {
                say!("no longer announcing port {port}");
            }
            return Ok(());
        }
    }
    let servers = client.servers()?;
    if api.json {
        return print_json(&servers);
    }
    if servers.is_empty() {
        say!("no game servers in the party (a running game with its port open is announced)");
    }
    for s in &servers {
        let latency = match s.latency_ms {
            Some(_) if s.own => "this machine".to_owned(),
            Some(ms) => format!("{ms:.1} ms"),
            None => "no path yet".to_owned(),
        };
        let players = match (s.players, s.max_players) {
            (Some(p), Some(max)) => format!(", {p}/{max} players"),
            (Some(p), None) => format!(", {p} players"),
            _ => String::new(),
        };
        say!(
            "{:<32} {:>21}  {:<16} {}{}",
            shown(&s.name),
            format!("{}:{}", s.address, s.port),
            shown(&s.game),
            latency,
            players
        );
    }
    Ok(())
}

pub fn games(args: &GamesArgs) -> Result<()> {
    if args.known {
        let (profiles, errors) = ProfileSet::load(&args.api.data_dir);
        for error in &errors {
            eprintln!("lanrage: skipped: {error}");
        }
        let all: Vec<&GameProfile> = profiles.iter().collect();
        if args.api.json {
            // The profile files' own format: an object keyed by game id.
            let by_id: std::collections::BTreeMap<&str, &GameProfile> =
                all.iter().map(|p| (p.id.as_str(), *p)).collect();
            return print_json(&by_id);
        }
        say!(
            "{:<24} {:<44} {:<22} {:<5} DISCOVERY",
            "ID",
            "NAME",
            "EXECUTABLE",
            "PROTO"
        );
        for p in &all {
            let ports: Vec<String> = p.ports.iter().map(u16::to_string).collect();
            let discovery: Vec<String> = p
                .discovery
                .iter()
                .map(|d| format!("{}:{}", d.address, d.port))
                .collect();
            say!(
                "{:<24} {:<44} {:<22} {:<5} {}  (ports {})",
                p.id,
                p.name,
                p.executable,
                format!("{:?}", p.protocol).to_lowercase(),
                if discovery.is_empty() {
                    "-".to_owned()
                } else {
                    discovery.join(" ")
                },
                ports.join(",")
            );
        }
        say!("{} games known", all.len());
        return Ok(());
    }
    let status = Client::new(&args.api.data_dir).status()?;
    if args.api.json {
        return print_json(&status.games);
    }
    if status.game_scan_ms.is_none() {
        say!("game detection is off (lanrage up --no-game-detection)");
    } else if status.games.is_empty() {
        say!("no known game running (lanrage games --known lists them)");
    }
    for g in &status.games {
        say!(
            "{:<24} {:<44} {} ({:.0}% sure{})",
            g.id,
            g.name,
            g.process.as_deref().unwrap_or("-"),
            g.confidence * 100.0,
            listening_note(&g.listening)
        );
    }
    Ok(())
}

/// ", serving on 27015, 27016" for a game whose ports are listening here.
fn listening_note(ports: &[u16]) -> String {
    if ports.is_empty() {
        return String::new();
    }
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(", serving on {}", ports.join(", "))
}

pub fn party(api: &ApiArgs, command: &PartyCommand) -> Result<()> {
    let client = Client::new(&api.data_dir);
    match command {
        PartyCommand::Create { name } => {
            let party = client.create(name)?;
            if api.json {
                return print_json(&party);
            }
            say!("Created party \"{}\".", party.name);
            if party.id == LOCAL_PARTY_ID {
                say!("No control server: only players on this LAN can join.");
            }
            say!("Share this code with your friends: {}", party.code);
            say!("They join with: lanrage party join {}", party.code);
            print_members(&party);
            connect_progress(&client, &party);
        }
        PartyCommand::Join { code } => {
            let party = client.join(code)?;
            if api.json {
                return print_json(&party);
            }
            say!("Joined party \"{}\".", party.name);
            print_members(&party);
            if party.id == LOCAL_PARTY_ID {
                say!("(local party: members on this LAN appear as they announce themselves)");
            }
            connect_progress(&client, &party);
        }
        PartyCommand::Leave => {
            client.leave()?;
            if api.json {
                return print_json(&serde_json::json!({"left": true}));
            }
            say!("Left the party.");
        }
    }
    Ok(())
}

/// How long `party create` and `party join` show members connecting.
const CONNECT_WATCH: std::time::Duration = std::time::Duration::from_secs(10);

/// Shows each member as a path to it is found (direct or relayed, and its ping), until all
/// are connected or [`CONNECT_WATCH`] has passed.
fn connect_progress(client: &Client, party: &PartyJson) {
    let mut watch = if party.id == LOCAL_PARTY_ID {
        ConnectWatch::new(0, connect_watch::LOCAL_SETTLE)
    } else {
        ConnectWatch::new(party.members.len().saturating_sub(1), Duration::ZERO)
    };
    let started = std::time::Instant::now();
    while started.elapsed() < CONNECT_WATCH {
        let Ok(peers) = client.peers() else {
            return;
        };
        let step = watch.step(started.elapsed(), &peers);
        for line in &step.lines {
            say!("{line}");
        }
        if step.done {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let missing: Vec<String> = client
        .peers()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.path == "searching")
        .map(|p| p.name)
        .collect();
    if !missing.is_empty() {
        say!(
            "  no path yet to {} (still trying; `lanrage peers` shows progress)",
            missing.join(", ")
        );
    }
}

/// Another player's words, made safe for this terminal (the daemon cleans them as they come
/// in; this holds whatever an older or other daemon says).
fn shown(text: &str) -> String {
    lanrage_control::shown_text::clean(text, 64)
}

pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    say!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_status(s: &Status) {
    say!("interface:  {} (port {})", s.interface, s.listen_port);
    say!("public key: {}", s.public_key);
    match &s.server {
        Some(url) => say!("server:     {url} ({})", s.server_state),
        None => say!("server:     none"),
    }
    match &s.party {
        Some(p) => {
            let ip = p.virtual_ip.map_or_else(|| "-".into(), |ip| ip.to_string());
            say!(
                "party:      \"{}\", code {}, {} member(s); virtual IP {ip}",
                shown(&p.name),
                p.code,
                p.members
            );
        }
        None => say!("party:      none (lanrage party create NAME | party join CODE)"),
    }
    match &s.nat {
        Some(n) => say!(
            "NAT:        {}{}{} (checked {} s ago)",
            n.nat_type,
            n.reflexive
                .map_or_else(String::new, |r| format!(", seen from outside as {r}")),
            if n.mapping_varies {
                ", mapping varies by destination"
            } else {
                ""
            },
            n.checked_secs_ago
        ),
        None => say!("NAT:        not checked yet"),
    }
    match &s.port_mapping {
        Some(m) => say!("port map:   {m} (the router forwards it to us)"),
        None => say!("port map:   none (the router offers none, or --no-port-mapping)"),
    }
    match s.game_scan_ms {
        None => say!("games:      detection off (--no-game-detection)"),
        Some(_) if s.games.is_empty() => say!("games:      none running"),
        Some(_) => {
            for g in &s.games {
                say!(
                    "game:       {} ({}, {:.0}% sure{})",
                    g.name,
                    g.process.as_deref().unwrap_or("-"),
                    g.confidence * 100.0,
                    listening_note(&g.listening)
                );
            }
        }
    }
    say!(
        "tunnel:     MTU {}, keepalive every {} s",
        s.mtu,
        s.keepalive_secs
    );
    if !s.latency_lane_ports.is_empty() {
        let ports: Vec<String> = s.latency_lane_ports.iter().map(u16::to_string).collect();
        say!("lane ports: {} (their packets go first)", ports.join(", "));
    }
    if !s.drops.is_empty() {
        let drops: Vec<String> = s.drops.iter().map(|(r, n)| format!("{r} {n}")).collect();
        say!("dropped:    {}", drops.join(", "));
    }
    for r in &s.relays {
        say!(
            "relay:      {} for {}: {}{}",
            r.relay,
            r.peer,
            if r.ready { "ready" } else { "binding" },
            r.rtt_ms
                .map_or_else(String::new, |ms| format!(", {ms:.1} ms away"))
        );
    }
    if !s.peers.is_empty() {
        say!();
        print_peers(&s.peers);
    }
}

fn print_members(party: &PartyJson) {
    for m in &party.members {
        say!("  {:<16} {}", m.virtual_ip, shown(&m.name));
    }
}

fn print_peers(peers: &[PeerInfo]) {
    if peers.is_empty() {
        return;
    }
    say!(
        "{:<20} {:<15} {:<8} {:<22} {:>9} {:>10} {:>12} {:>12}",
        "NAME",
        "VIRTUAL IP",
        "PATH",
        "ENDPOINT",
        "RTT",
        "HANDSHAKE",
        "RECEIVED",
        "SENT"
    );
    for p in peers {
        let endpoint = p.endpoint.map_or_else(|| "-".into(), |e| e.to_string());
        let handshake = p
            .handshake_age_secs
            .map_or_else(|| "never".into(), |s| format!("{s} s ago"));
        let rtt = p
            .rtt_ms
            .map_or_else(|| "-".into(), |ms| format!("{ms:.1} ms"));
        say!(
            "{:<20} {:<15} {:<8} {:<22} {:>9} {:>10} {:>12} {:>12}",
            shown(&p.name),
            p.virtual_ip,
            p.path,
            endpoint,
            rtt,
            handshake,
            bytes(p.rx_bytes),
            bytes(p.tx_bytes)
        );
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::PingSummary;

    #[test]
    fn pings_summary_is_read() {
        let output = "PING 10.66.0.3 (10.66.0.3) 56(84) bytes of data.\n\n--- 10.66.0.3 ping statistics ---\n\
                      4 packets transmitted, 3 received, 25% packet loss, time 603ms\n\
                      rtt min/avg/max/mdev = 0.041/0.052/0.066/0.009 ms\n";
        assert_eq!(
            PingSummary::read(output),
            PingSummary {
                sent: 4,
                received: 3,
                avg_ms: Some(0.052)
            }
        );
        assert_eq!(
            PingSummary::read("ping: unknown host"),
            PingSummary::default()
        );
    }
}
