//! `lanrage`: the LANrage command line.

mod control_server;
mod logging;
mod wg;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// LANrage — if it runs on LAN, it runs on LANrage.
#[derive(Parser)]
#[command(name = "lanrage", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Userspace WireGuard interface, configured with `wg` (drop-in for `wireguard-go IFNAME`).
    Wg(wg::WgArgs),
    /// Rendezvous server for parties: create, join, members' addresses and endpoints.
    ControlServer(control_server::ControlServerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Wg(args) => wg::run(args),
        Command::ControlServer(args) => control_server::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanrage: {e:#}");
            ExitCode::FAILURE
        }
    }
}
