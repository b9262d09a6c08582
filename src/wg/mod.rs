//! `lanrage wg IFNAME`: a userspace WireGuard interface that the standard tools configure.
//!
//! Like `wireguard-go IFNAME` and `boringtun-cli IFNAME`: creates TUN `IFNAME`, serves the
//! cross-platform userspace API on `/var/run/wireguard/IFNAME.sock` so that unmodified `wg`
//! works against it, and daemonises unless `-f` is given. It stops on SIGINT/SIGTERM or when
//! the interface is deleted, removing its socket.

mod daemon;
mod uapi_server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use lanrage_engine::io::tun::{DEFAULT_MTU, TunDevice};
use lanrage_engine::io::udp::DEFAULT_RECV_BUFFER;
use lanrage_engine::{
    DEFAULT_SMALL_PACKET_MAX, Engine, EngineConfig, PriorityPolicy, default_threads,
};

/// Where `wg` looks for userspace implementations' sockets.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

#[derive(Args, Debug, Clone)]
pub struct WgArgs {
    /// Stay in the foreground instead of daemonising.
    #[arg(short, long)]
    pub foreground: bool,
    /// Worker threads (each with its own UDP socket and TUN queue); default: one per core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// Interface MTU.
    #[arg(long, default_value_t = DEFAULT_MTU)]
    pub mtu: u16,
    /// Latency lane: packets of at most this many bytes go out ahead of bulk traffic in
    /// each batch (0: off).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_SMALL_PACKET_MAX)]
    pub priority_small: u16,
    /// UDP receive buffer per worker socket, in bytes. It bounds the queue a game packet can
    /// wait in while a bulk transfer saturates the tunnel; larger absorbs longer bursts.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RECV_BUFFER)]
    pub socket_buffer: usize,
    /// Packets each TUN queue holds (the interface's txqueuelen; default: the kernel's 500).
    /// It is the queue a game packet waits in behind bulk traffic on its way out: short (16)
    /// keeps ping low while TCP saturates the tunnel, but drops bursts of small packets.
    #[arg(long, value_name = "PACKETS", value_parser = clap::value_parser!(u32).range(1..))]
    pub tun_queue_len: Option<u32>,
    /// Latency lane: UDP/TCP ports (e.g. a game's) whose packets go out ahead of bulk.
    #[arg(long, value_name = "PORT,...", value_delimiter = ',')]
    pub priority_ports: Vec<u16>,
    /// Let workers run on any CPU at every load. By default each keeps to its own CPUs while
    /// traffic is light, which takes cross-CPU wake-ups out of the ping path.
    #[arg(long)]
    pub no_cpu_locality: bool,
    /// Interface name (at most 15 bytes).
    pub ifname: String,
}

pub fn run(args: WgArgs) -> Result<()> {
    validate_ifname(&args.ifname)?;
    if !args.foreground {
        return daemon::spawn_and_wait(&args, &socket_path(&args.ifname));
    }
    crate::logging::init();
    serve(&args)
}

fn validate_ifname(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.contains(['/', ':'])
        && !name.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        bail!("invalid interface name {name:?}: 1 to 15 bytes, no '/', ':' or whitespace");
    }
    Ok(())
}

pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

fn serve(args: &WgArgs) -> Result<()> {
    let threads = args.threads.map_or_else(default_threads, usize::from);
    let path = socket_path(&args.ifname);
    let listener = uapi_server::bind(&path)?;
    let tun = TunDevice::create(&args.ifname, threads, args.mtu, args.tun_queue_len)
        .with_context(|| format!("cannot create TUN interface {}", args.ifname))?;
    let config = EngineConfig {
        threads,
        priority: PriorityPolicy {
            small_packet_max: args.priority_small,
            ports: args.priority_ports.clone(),
        },
        recv_buffer: args.socket_buffer,
        cpu_locality: !args.no_cpu_locality,
        ..EngineConfig::default()
    };
    let (engine, events) = Engine::start(tun, config).context("cannot start the engine")?;
    tracing::info!(interface = %args.ifname, socket = %path.display(), threads, "interface ready");

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install signal handler")?;
    }
    uapi_server::spawn(listener, engine.handle(), stop.clone())?;
    // Nothing consumes non-WireGuard datagrams in a plain WireGuard interface; log handshakes.
    std::thread::Builder::new()
        .name("lanrage-events".into())
        .spawn(move || {
            for event in events {
                if let lanrage_engine::Event::HandshakeCompleted { public_key } = event {
                    tracing::debug!(peer = %hex::encode(&public_key[..4]), "handshake completed");
                }
            }
        })?;

    let interface = Path::new("/sys/class/net").join(&args.ifname);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if !interface.exists() {
            tracing::info!(interface = %args.ifname, "interface deleted, shutting down");
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    // The listener thread owns the socket; remove the file now so `wg` stops finding us.
    let _ = std::fs::remove_file(&path);
    drop(engine);
    tracing::info!(interface = %args.ifname, "stopped");
    Ok(())
}
