//! `lanrage`: the LANrage command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lanrage::{cli, config, control_server, daemon, demo, netcheck, relay, wg};

/// LANrage — if it runs on LAN, it runs on LANrage.
#[derive(Parser)]
#[command(name = "lanrage", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A whole party on this machine in network namespaces, step by step (root).
    Demo(demo::DemoArgs),
    /// Start the daemon: interface, engine, party membership, local API.
    Up(daemon::UpArgs),
    /// Stop the daemon: it leaves no interface, route or rule behind (its party and key stay
    /// for the next `lanrage up`).
    Down(cli::ApiArgs),
    /// What the daemon is doing: interface, party, peers.
    Status(cli::ApiArgs),
    /// Ping a member (by name or virtual IP) through the tunnel, after saying which path
    /// its traffic takes.
    Ping(cli::PingArgs),
    /// Create, join or leave a party.
    Party {
        #[command(subcommand)]
        command: cli::PartyCommand,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// The other members: virtual IPs, endpoints, traffic.
    Peers(cli::ApiArgs),
    /// The web UI's address, with the token that opens it (root and the group `lanrage`).
    Ui(cli::ApiArgs),
    /// Game servers in the party, with latency; announce the ones you host.
    Servers {
        #[command(subcommand)]
        command: Option<cli::ServersCommand>,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Settings: list, get, set and reset them; save, use and delete named configurations.
    Config(config::ConfigArgs),
    /// The games running here (detected by the daemon), or every known game profile.
    Games(cli::GamesArgs),
    /// What this host's NAT does to UDP: NAT type, reflexive address, filtering (STUN).
    Netcheck(netcheck::NetcheckArgs),
    /// Userspace WireGuard interface, configured with `wg` (drop-in for `wireguard-go IFNAME`).
    Wg(wg::WgArgs),
    /// Rendezvous server for parties: create, join, members' addresses and endpoints.
    ControlServer(control_server::ControlServerArgs),
    /// Relay server: forwards WireGuard for members with no direct path to each other.
    Relay(relay::RelayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Up(args) => daemon::run(args),
        Command::Down(api) => cli::down(&api),
        Command::Status(api) => cli::status(&api),
        Command::Ping(args) => cli::ping(&args),
        Command::Party { command, api } => cli::party(&api, &command),
        Command::Peers(api) => cli::peers(&api),
        Command::Ui(api) => cli::ui(&api),
        Command::Games(args) => cli::games(&args),
        Command::Config(args) => config::run(&args),
        Command::Servers { command, api } => cli::servers(&api, command.as_ref()),
        Command::Netcheck(args) => netcheck::run(args),
        Command::Wg(args) => wg::run(args),
        Command::ControlServer(args) => control_server::run(args),
        Command::Relay(args) => relay::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanrage: {e:#}");
            ExitCode::FAILURE
        }
    }
}
