//! `lanrage control-server`: the rendezvous where parties are created and joined.
//!
//! The party logic is `lanrage_control::party::Registry` (sans-IO); this module is its shell:
//! HTTP and WebSocket (axum on a single-threaded tokio runtime), SQLite storage, the clock
//! and the random numbers. See `lanrage_control::server_api` for the wire format.

mod http;
mod relays;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use ipnet::Ipv4Net;
use lanrage_control::ipam::DEFAULT_SUBNET;
use lanrage_control::party::RegistryConfig;

pub use state::ServerState;

/// Default port of the control server.
pub const DEFAULT_PORT: u16 = 8667;

#[derive(Args, Debug, Clone)]
pub struct ControlServerArgs {
    /// Address and port to listen on.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    pub listen: SocketAddr,
    /// SQLite database holding parties and the server's keys (created if missing).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/lanrage/control.db"
    )]
    pub db: PathBuf,
    /// Virtual subnet every party's addresses come from.
    #[arg(long, default_value_t = DEFAULT_SUBNET)]
    pub subnet: Ipv4Net,
    /// Most members in one party.
    #[arg(long, default_value_t = RegistryConfig::default().max_members)]
    pub max_members: usize,
    /// Seconds without a heartbeat after which a member is removed.
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stale_after: u64,
    /// The secret shared with relays (64 hex digits; created if missing). Relays started
    /// with the same file may register; without it, this server offers no relays.
    #[arg(long, value_name = "PATH")]
    pub relay_secret_file: Option<PathBuf>,
}

pub fn run(args: ControlServerArgs) -> Result<()> {
    crate::logging::init();
    let config = RegistryConfig {
        subnet: args.subnet,
        max_members: args.max_members,
        stale_after: Duration::from_secs(args.stale_after),
        ..RegistryConfig::default()
    };
    if let Some(dir) = args.db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the directory of {}", args.db.display()))?;
    }
    let relay_secret = args
        .relay_secret_file
        .as_deref()
        .map(crate::relay::secret::load_or_create)
        .transpose()?;
    let state = ServerState::open(&args.db, config, relay_secret)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr()?;
        tracing::info!(listen = %local, db = %args.db.display(), "control server ready");
        // For people and scripts: the port actually bound (`--listen` may say 0).
        println!("lanrage control-server: listening on {local}");
        http::serve(listener, state, shutdown_signal()).await
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the default action (exit) applies, which is also a clean stop for
        // a server whose every change is already committed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
