//! `lanrage control-server`: the rendezvous where parties are created and joined.
//!
//! The party logic is `lanrage_control::party::Registry` (sans-IO); this module is its shell:
//! HTTP and WebSocket (axum on a single-threaded tokio runtime), SQLite storage, the clock
//! and the random numbers. See `lanrage_control::server_api` for the wire format.
//!
//! Limits (what one client may take, timeouts) are flags with defaults fit for the internet;
//! `Limits` in `state.rs` and `ServeConfig` in `http.rs` say why each is what it is.

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
use lanrage_control::party::source::{TrustedProxies, TrustedProxy};

use state::Limits;
pub use state::ServerState;

/// File descriptors kept for the database, the listener and the runtime, beyond connections.
const FD_RESERVE: usize = 64;

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
    /// A reverse proxy (address or CIDR network; repeat for more) whose `X-Forwarded-For` and
    /// `Forwarded: for=` headers name the client for every per-source limit. Headers from
    /// anyone else are ignored.
    #[arg(long = "trusted-proxy", value_name = "ADDR")]
    pub trusted_proxies: Vec<TrustedProxy>,
    /// Most open connections in all (event streams included); past it, new ones get 503.
    /// Keep the file-descriptor limit (systemd `LimitNOFILE`) above it.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_connections: usize,
    /// Most open connections from one address (a trusted proxy counts only in the total).
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_connections_per_source: usize,
    /// Most event streams (WebSockets) in all; one per member.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_streams)]
    pub max_websockets: usize,
    /// Most event streams from one address: a party of this many members may share a NAT.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_streams_per_source)]
    pub max_websockets_per_source: usize,
    /// Most parties in all.
    #[arg(long, value_name = "N", default_value_t = RegistryConfig::default().max_parties)]
    pub max_parties: usize,
    /// Most parties created from one address that may exist at once.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_parties_per_source)]
    pub max_parties_per_source: usize,
    /// Seconds a client has to send a request's headers.
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout: u64,
    /// Seconds a client has to send a whole request and be answered.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout: u64,
    /// Seconds a connection may move no bytes before it is closed (event streams are pinged
    /// every 20 s and end after 60 s without an answer instead).
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,
}

pub fn run(args: ControlServerArgs) -> Result<()> {
    crate::logging::init();
    let config = RegistryConfig {
        subnet: args.subnet,
        max_members: args.max_members,
        stale_after: Duration::from_secs(args.stale_after),
        max_parties: args.max_parties,
        ..RegistryConfig::default()
    };
    let limits = Limits {
        max_streams: args.max_websockets,
        max_streams_per_source: args.max_websockets_per_source,
        max_parties_per_source: args.max_parties_per_source,
        ..Limits::default()
    };
    let serve = http::ServeConfig {
        max_connections: fit_fd_limit(args.max_connections),
        max_connections_per_source: args.max_connections_per_source,
        trusted_proxies: TrustedProxies::new(args.trusted_proxies.iter().copied()),
        header_timeout: Duration::from_secs(args.header_timeout),
        request_timeout: Duration::from_secs(args.request_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
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
    let state = ServerState::open(&args.db, config, limits, relay_secret)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr()?;
        tracing::info!(
            listen = %local,
            db = %args.db.display(),
            max_connections = serve.max_connections,
            trusted_proxies = ?args.trusted_proxies.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "control server ready"
        );
        // For people and scripts: the port actually bound (`--listen` may say 0).
        println!("lanrage control-server: listening on {local}");
        http::serve(listener, state, serve, shutdown_signal()).await
    })
}

/// Raises the soft file-descriptor limit as far as the hard one allows, and lowers
/// `max_connections` to what then fits: running out of descriptors fails every request
/// (heartbeats included) and even the database, while a connection cap answers 503.
fn fit_fd_limit(max_connections: usize) -> usize {
    let wanted = max_connections.saturating_add(FD_RESERVE);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return max_connections;
    }
    let want = libc::rlim_t::try_from(wanted).unwrap_or(libc::rlim_t::MAX);
    if limit.rlim_cur < want && limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: want.min(limit.rlim_max),
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = raised.rlim_cur;
        }
    }
    let available = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    if available >= wanted {
        return max_connections;
    }
    let fitted = available.saturating_sub(FD_RESERVE).max(1);
    tracing::warn!(
        requested = max_connections,
        fitted,
        fd_limit = available,
        "the file-descriptor limit is too low for --max-connections; using fewer \
         (raise LimitNOFILE or ulimit -n)"
    );
    fitted
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
