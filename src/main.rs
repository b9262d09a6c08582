//! `lanrage`: the LANrage command line.

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Wg(args) => wg::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanrage: {e:#}");
            ExitCode::FAILURE
        }
    }
}
