//! `lanrage relay`: forwards WireGuard between members whose NATs admit no direct path.
//!
//! The forwarding path is the engine's (`lanrage_engine::relay`: thread per core, batched,
//! in place); binds are verified by `lanrage_control::relay::RelaySessions` (sans IO) on this
//! control thread, which publishes a new route table whenever a session's sides arrive, move
//! or go. The relay registers with its control server every few seconds, so members are
//! offered only relays that are up.

pub mod secret;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use crossbeam_channel::{select, tick};
use lanrage_control::relay::sessions::DEFAULT_MAX_SESSIONS;
use lanrage_control::relay::{RelaySecret, RelaySessions};
use lanrage_control::server_api::RelayRegistration;
use lanrage_engine::io::udp::DEFAULT_RECV_BUFFER;
use lanrage_engine::relay::{Gcra, Relay, RelayConfig, RelayDrop, RelayEvent, Route, RouteTable};

/// The relay's default UDP port.
pub const DEFAULT_PORT: u16 = 3479;
/// How often the relay registers again (the server forgets it after 30 s of silence).
const REGISTER_EVERY: Duration = Duration::from_secs(10);
/// How often the relay reports its counters in the log.
const REPORT_EVERY: Duration = Duration::from_secs(60);

#[derive(Args, Debug, Clone)]
pub struct RelayArgs {
    /// Control server to register with, e.g. http://203.0.113.1:8667.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// Where members reach this relay (IP:PORT as seen from the internet); announced to the
    /// control server.
    #[arg(long, value_name = "IP:PORT")]
    pub public_addr: SocketAddr,
    /// The control server's relay secret (a copy of its --relay-secret-file).
    #[arg(long, value_name = "PATH")]
    pub secret_file: PathBuf,
    /// UDP port to listen on (all addresses).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = lanrage_engine::default_threads())]
    pub threads: usize,
    /// Most each direction of a session may send, in Mbit/s (0: no limit).
    #[arg(long, value_name = "MBIT/S", default_value_t = 200)]
    pub session_rate: u64,
    /// Sessions held at most; binds for new ones are refused beyond.
    #[arg(long, default_value_t = DEFAULT_MAX_SESSIONS)]
    pub max_sessions: usize,
}

pub fn run(args: RelayArgs) -> Result<()> {
    crate::logging::init();
    let secret = secret::load(&args.secret_file)?;
    let (relay, events) = Relay::start(RelayConfig {
        port: args.port,
        threads: args.threads,
        recv_buffer: DEFAULT_RECV_BUFFER,
        event_queue: 4096,
    })
    .with_context(|| format!("cannot listen on UDP port {}", args.port))?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install signal handlers")?;
    }
    let registrar = spawn_registrar(
        args.server.clone(),
        args.public_addr,
        secret.clone(),
        stop.clone(),
    )?;
    println!(
        "lanrage relay: listening on UDP port {}, announced as {}",
        relay.local_port(),
        args.public_addr
    );
    tracing::info!(port = relay.local_port(), public = %args.public_addr, threads = args.threads, "relay ready");
    let mut control = RelayControl::new(&relay, secret, &args);
    let ticker = tick(Duration::from_millis(250));
    let mut last_report = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        select! {
            recv(events) -> event => match event {
                Ok(RelayEvent::Datagram { from, local, data }) => {
                    control.datagram(from, local, &data)
                }
                Err(_) => break,
            },
            recv(ticker) -> _ => {
                control.expire();
                if last_report.elapsed() >= REPORT_EVERY {
                    last_report = Instant::now();
                    control.report();
                }
            }
        }
    }
    control.report();
    drop(relay);
    let _ = registrar.join();
    Ok(())
}

/// The relay's control thread: binds in, acks and route tables out.
struct RelayControl<'r> {
    relay: &'r Relay,
    sessions: RelaySessions,
    /// Bytes per second per direction (0: unlimited).
    rate: u64,
    refused: HashMap<&'static str, u64>,
}

impl<'r> RelayControl<'r> {
    fn new(relay: &'r Relay, secret: RelaySecret, args: &RelayArgs) -> Self {
        RelayControl {
            relay,
            sessions: RelaySessions::new(secret, args.max_sessions, random_channel),
            rate: args.session_rate.saturating_mul(1_000_000 / 8),
            refused: HashMap::new(),
        }
    }

    fn datagram(&mut self, from: SocketAddr, local: Option<IpAddr>, data: &[u8]) {
        match self.sessions.handle(Instant::now(), unix_now(), from, data) {
            Ok(bound) => {
                if let Err(e) = self.relay.send_datagram(from, local, &bound.ack) {
                    tracing::debug!(%from, error = %e, "cannot send a bind ack");
                }
                if bound.routes_changed {
                    tracing::info!(session = bound.session.0, side = ?bound.side, %from, "session joined or moved");
                    self.publish();
                }
            }
            Err(refused) => {
                tracing::debug!(%from, reason = %refused, "bind refused");
                *self.refused.entry(refused.name()).or_default() += 1;
            }
        }
    }

    fn expire(&mut self) {
        if self.sessions.expire(Instant::now(), unix_now()) {
            self.publish();
        }
    }

    /// Builds the route table from the sessions and swaps it in. A direction that already
    /// had a route keeps its byte budget and counters.
    fn publish(&self) {
        let old = self.relay.routes().load();
        let mut table = RouteTable::new();
        for r in self.sessions.routes() {
            let route = match old.get(r.channel) {
                Some(previous) if previous.out_channel == r.out_channel => Route {
                    from: r.from,
                    to: r.to,
                    ..previous.clone()
                },
                _ => Route::new(
                    r.from,
                    r.to,
                    r.out_channel,
                    Arc::new(if self.rate == 0 {
                        Gcra::unlimited()
                    } else {
                        // A quarter second of traffic as burst: a game's burst passes, a
                        // flood does not.
                        Gcra::new(self.rate, (self.rate / 4).max(64 << 10))
                    }),
                ),
            };
            table.insert(r.channel, route);
        }
        self.relay.routes().store(Arc::new(table));
    }

    fn report(&self) {
        let (sessions, joined) = self.sessions.counts();
        let counters = self.relay.counters();
        let drops: Vec<String> = RelayDrop::ALL
            .iter()
            .map(|&r| (r.name(), counters.get(r)))
            .chain(self.refused.iter().map(|(&n, &c)| (n, c)))
            .filter(|&(_, c)| c > 0)
            .map(|(n, c)| format!("{n}={c}"))
            .collect();
        tracing::info!(
            sessions,
            joined,
            forwarded_packets = counters.forwarded_packets(),
            forwarded_bytes = counters.forwarded_bytes(),
            drops = %drops.join(" "),
            "relay counters"
        );
    }
}

/// Registers with the control server now and every [`REGISTER_EVERY`] until `stop`.
fn spawn_registrar(
    server: String,
    addr: SocketAddr,
    secret: RelaySecret,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    let url = format!("{}/v1/relays", server.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    std::thread::Builder::new()
        .name("lanrage-register".into())
        .spawn(move || {
            let mut registered = false;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    next = Instant::now() + REGISTER_EVERY;
                    let unix_time = unix_now();
                    let body = RelayRegistration {
                        addr,
                        unix_time,
                        mac: hex::encode(secret.registration_mac(&addr.to_string(), unix_time)),
                    };
                    match agent.post(&url).send_json(&body) {
                        Ok(mut response) => match crate::json_api::read::<()>(&mut response) {
                            Ok(()) => {
                                if !registered {
                                    tracing::info!(server = %server, "registered with the control server");
                                }
                                registered = true;
                            }
                            Err(e) => {
                                tracing::warn!(server = %server, status = %e.status, error = %e.message, "control server refused the relay");
                                registered = false;
                            }
                        },
                        Err(e) => {
                            tracing::warn!(server = %server, error = %e, "cannot reach the control server; retrying");
                            registered = false;
                            next = Instant::now() + Duration::from_secs(2);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .context("cannot start the registration thread")
}

fn random_channel() -> u32 {
    getrandom::u32().expect("the system's random source failed")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
