//! Load generator for `scripts/relay-bench.sh`: small datagrams between two network namespaces,
//! either straight (plain UDP) or through a `lanrage relay`, sent and counted by the same code
//! on both paths so that the two rates compare.
//!
//! It is a `harness = false` bench so that it builds against the workspace and never ships.
//! `cargo bench` (which passes `--bench`) and `cargo test --benches` run it without a mode: it
//! then prints its usage and exits 0.
//!
//! One process per side, each in its own namespace:
//!
//! - `recv --listen IP:PORT --seconds N`: counts data datagrams for N seconds after the first
//!   one arrives (batched receive with GRO, so the receiver is cheap), echoes pings back the way
//!   they came, and prints datagrams per second.
//! - `send --to IP:PORT --seconds N --size 100 --rate max`: sends `--size`-byte payloads as
//!   fast as it can (or at `--rate` per second), `--batch` at a time: one `sendmmsg` of separate
//!   datagrams, or with `--gso` one UDP GSO `sendmsg` whose segments the kernel cuts apart.
//! - `ping --to IP:PORT --count N --interval-ms 1`: one ping at a time, each waiting for its
//!   echo; prints round-trip percentiles in microseconds.
//!
//! Through a relay (`--relay IP:PORT --secret FILE --side low|high --party N`), each side
//! derives its own grant from the relay secret (two made-up peer ids in party N, as the control
//! server would), binds its side at the relay from its data socket exactly as a member does
//! (46-byte bind, retried every 200 ms until acked; senders and pingers also wait until the
//! ack says the other side is bound), and puts the 8-byte relay header with its own channel in
//! front of every payload; the relay rewrites it to the other side's. The payload is the same
//! size on both paths, so the relayed datagrams are 8 bytes longer on the wire.
//!
//! Datagram payloads start with `D` (data) or `P` (ping: then an 8-byte sequence number);
//! pings are echoed, data is counted.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use lanrage_control::peer_id::PeerId;
use lanrage_control::relay::frame::{Ack, Bind, is_relay_control};
use lanrage_control::relay::{Grant, RelaySecret, Side};
use lanrage_engine::wire::{RELAY_HEADER_LEN, relay_data, write_relay_header};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use serde_json::json;

const DATA: u8 = b'D';
const PING: u8 = b'P';
/// A bind is sent again this often until the relay answers (and the other side is bound).
const BIND_RETRY: Duration = Duration::from_millis(200);
/// Once bound, a side binds again this often (the relay forgets a side after 60 s).
const BIND_REFRESH: Duration = Duration::from_secs(10);
/// No usable ack within this: the relay is not there (or refuses the grant).
const BIND_GIVE_UP: Duration = Duration::from_secs(15);
/// How long the grants derived here stay valid.
const GRANT_LIFETIME_S: u64 = 6 * 3600;
/// Receive buffers per batch, each large enough for a GRO train.
const RECV_BATCH: usize = 32;
const RECV_BUF_LEN: usize = 1 << 16;

#[derive(Parser, Debug)]
#[command(
    name = "relay_load",
    about = "Load generator for scripts/relay-bench.sh: plain UDP or through a lanrage relay",
    after_help = "Run one process per side, e.g. `recv` in one namespace and `send` or `ping` \
                  in another. Through a relay both sides pass the same --relay, --secret and \
                  --party, and opposite --side."
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Count data datagrams for --seconds after the first; echo pings.
    Recv(RecvArgs),
    /// Send data datagrams for --seconds.
    Send(SendArgs),
    /// Measure round trips to a `recv`.
    Ping(PingArgs),
}

#[derive(Args, Debug, Clone)]
struct RelayOpts {
    /// Go through the lanrage relay at this address (default: plain UDP).
    #[arg(long, value_name = "IP:PORT", requires = "secret")]
    relay: Option<SocketAddr>,
    /// The relay secret file (64 hex digits) the grants are derived from.
    #[arg(long, value_name = "FILE")]
    secret: Option<PathBuf>,
    /// Which side of the relay session this process binds.
    #[arg(long, value_enum, default_value_t = SideArg::Low)]
    side: SideArg,
    /// Party the session is derived for: a fresh number gives a fresh session.
    #[arg(long, default_value_t = 1)]
    party: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SideArg {
    Low,
    High,
}

#[derive(Args, Debug)]
struct RecvArgs {
    /// Address to receive on.
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,
    #[command(flatten)]
    relay: RelayOpts,
    /// Count for this long after the first datagram.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Stop early after this long without a datagram (once one arrived).
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    idle_ms: u64,
    /// Give up when nothing arrived this long after start.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    first_wait: f64,
    /// Create this file once the socket is bound (and, relayed, the relay acked the bind).
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// Socket receive buffer in bytes (SO_RCVBUFFORCE when root).
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    sock_buf: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct SendArgs {
    /// Where to send (plain UDP); ignored with --relay.
    #[arg(long, value_name = "IP:PORT", required_unless_present = "relay")]
    to: Option<SocketAddr>,
    #[command(flatten)]
    relay: RelayOpts,
    /// Send for this long.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Payload bytes per datagram (the relay header comes on top when relayed).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(16..=1400))]
    size: u16,
    /// Datagrams per second, or "max".
    #[arg(long, default_value = "max")]
    rate: String,
    /// Datagrams per system call.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    batch: u16,
    /// One UDP GSO sendmsg per batch (at most 64 segments) instead of sendmmsg of separate
    /// datagrams.
    #[arg(long)]
    gso: bool,
    /// Socket send buffer in bytes (SO_SNDBUFFORCE when root).
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    sock_buf: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct PingArgs {
    /// Where the `recv` that echoes is (plain UDP); ignored with --relay.
    #[arg(long, value_name = "IP:PORT", required_unless_present = "relay")]
    to: Option<SocketAddr>,
    #[command(flatten)]
    relay: RelayOpts,
    /// Pings measured.
    #[arg(long, default_value_t = 1000)]
    count: u32,
    /// Pings sent first and not measured (caches, ARP, route tables).
    #[arg(long, default_value_t = 20)]
    warmup: u32,
    /// Time from one ping to the next (one ping in flight at a time).
    #[arg(long, value_name = "MS", default_value_t = 1.0)]
    interval_ms: f64,
    /// A ping not echoed within this is lost.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    timeout_ms: u64,
    /// Payload bytes per ping.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(16..=1400))]
    size: u16,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() {
    // `cargo bench` passes --bench to harness = false benches; nothing else is ours to parse.
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if args.len() <= 1 {
        let mut cmd = Cli::command();
        println!("{}", cmd.render_help());
        println!("(no mode given: nothing to run; scripts/relay-bench.sh drives this)");
        return;
    }
    let cli = Cli::parse_from(args);
    let result = match cli.mode {
        Mode::Recv(args) => recv(args),
        Mode::Send(args) => send(args),
        Mode::Ping(args) => ping(args),
    };
    if let Err(e) = result {
        eprintln!("relay_load: error: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// the relay session

/// This process's side of a relay session.
struct RelayLink {
    relay: SocketAddr,
    grant: Grant,
    /// Our channel, from the last ack: what our data frames carry.
    channel: Option<u32>,
    peer_bound: bool,
    first_counter: u64,
    next_counter: u64,
    next_bind: Instant,
}

impl RelayLink {
    fn new(opts: &RelayOpts) -> Result<Option<RelayLink>> {
        let Some(relay) = opts.relay else {
            return Ok(None);
        };
        let path = opts.secret.as_ref().context("--relay needs --secret")?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the relay secret {}", path.display()))?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes)
            .with_context(|| format!("{} does not hold 64 hex digits", path.display()))?;
        let (low, high) = (PeerId([1; 32]), PeerId([2; 32]));
        let (me, peer) = match opts.side {
            SideArg::Low => (low, high),
            SideArg::High => (high, low),
        };
        let grant = RelaySecret::new(bytes).grant(
            opts.party,
            &me,
            &peer,
            unix_now().as_secs() + GRANT_LIFETIME_S,
        );
        let expected = match opts.side {
            SideArg::Low => Side::Low,
            SideArg::High => Side::High,
        };
        assert_eq!(grant.side, expected, "made-up peer ids give the wrong side");
        // Above anything an earlier run used: the relay refuses counters that do not grow.
        let counter = unix_now().as_micros() as u64;
        Ok(Some(RelayLink {
            relay,
            grant,
            channel: None,
            peer_bound: false,
            first_counter: counter,
            next_counter: counter,
            next_bind: Instant::now(),
        }))
    }

    /// The next bind frame; schedules the one after.
    fn bind_frame(&mut self, now: Instant) -> [u8; 46] {
        let counter = self.next_counter;
        self.next_counter += 1;
        self.next_bind = now
            + if self.channel.is_some() && self.peer_bound {
                BIND_REFRESH
            } else {
                BIND_RETRY
            };
        Bind {
            session: self.grant.session,
            side: self.grant.side,
            expires_unix: self.grant.expires_unix,
            counter,
        }
        .encode(&self.grant.key)
    }

    /// Sends a bind if one is due (errors are the retry's problem).
    fn maybe_bind(&mut self, socket: &UdpSocket, now: Instant) {
        if now >= self.next_bind {
            let frame = self.bind_frame(now);
            let _ = socket.send_to(&frame, self.relay);
        }
    }

    /// Takes what may be an ack for one of our binds. Returns whether it was one.
    fn handle_ack(&mut self, now: Instant, datagram: &[u8]) -> bool {
        let Ok(ack) = Ack::decode(datagram, &self.grant.key) else {
            return false;
        };
        if ack.session != self.grant.session
            || ack.side != self.grant.side
            || ack.counter < self.first_counter
            || ack.counter >= self.next_counter
        {
            return false;
        }
        let was_ready = self.channel.is_some() && self.peer_bound;
        self.channel = Some(ack.channel);
        self.peer_bound = ack.peer_bound;
        if ack.peer_bound && !was_ready {
            self.next_bind = now + BIND_REFRESH;
        }
        true
    }

    fn header(&self) -> [u8; RELAY_HEADER_LEN] {
        let mut h = [0; RELAY_HEADER_LEN];
        write_relay_header(&mut h, self.channel.unwrap_or(0));
        h
    }

    /// Binds until the relay acks (and, with `need_peer`, says the other side is bound too).
    fn bind_until(&mut self, socket: &UdpSocket, need_peer: bool) -> Result<()> {
        let give_up = Instant::now() + BIND_GIVE_UP;
        let mut buf = [0u8; 2048];
        loop {
            let now = Instant::now();
            if self.channel.is_some() && (self.peer_bound || !need_peer) {
                return Ok(());
            }
            if now >= give_up {
                bail!(
                    "no {} from the relay at {} within {:?}",
                    if self.channel.is_some() {
                        "ack saying the other side is bound"
                    } else {
                        "ack"
                    },
                    self.relay,
                    BIND_GIVE_UP
                );
            }
            self.maybe_bind(socket, now);
            let wait = self.next_bind.saturating_duration_since(now);
            if !wait_fd(socket.as_raw_fd(), libc::POLLIN, wait)? {
                continue;
            }
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                if from == self.relay || is_relay_control(&buf[..n]) {
                    self.handle_ack(Instant::now(), &buf[..n]);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// recv

fn recv(args: RecvArgs) -> Result<()> {
    let socket =
        UdpSocket::bind(args.listen).with_context(|| format!("cannot bind {}", args.listen))?;
    let rcvbuf = set_buffer(
        &socket,
        libc::SO_RCVBUFFORCE,
        libc::SO_RCVBUF,
        args.sock_buf,
    );
    // Non-blocking, GRO on.
    let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
    let mut link = RelayLink::new(&args.relay)?;
    if let Some(link) = &mut link {
        link.bind_until(&socket, false)?;
    }
    if let Some(path) = &args.ready_file {
        std::fs::write(path, "ready\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    let mut bufs = vec![0u8; RECV_BATCH * RECV_BUF_LEN];
    let mut meta = vec![RecvMeta::default(); RECV_BATCH];
    let window = Duration::from_secs_f64(args.seconds);
    let idle = Duration::from_millis(args.idle_ms);
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = started;
    let mut full_window = false;
    let (mut packets, mut bytes, mut echoed, mut foreign, mut recv_calls) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut echo = Vec::with_capacity(2048);
    loop {
        let now = Instant::now();
        match first {
            Some(f) if now >= f + window => {
                full_window = true;
                break;
            }
            Some(_) if now >= last + idle => break,
            None if now.duration_since(started).as_secs_f64() >= args.first_wait => break,
            _ => {}
        }
        if let Some(link) = &mut link {
            link.maybe_bind(&socket, now);
        }
        if !wait_fd(socket.as_raw_fd(), libc::POLLIN, Duration::from_millis(20))? {
            continue;
        }
        let n = {
            let mut chunks = bufs.chunks_exact_mut(RECV_BUF_LEN);
            let mut slices: [IoSliceMut<'_>; RECV_BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            match state.recv(UdpSockRef::from(&socket), &mut slices, &mut meta) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // ICMP errors and the like: nothing to do with what is queued.
                Err(_) => continue,
            }
        };
        recv_calls += 1;
        let now = Instant::now();
        for (m, buf) in meta[..n].iter().zip(bufs.chunks_exact(RECV_BUF_LEN)) {
            let stride = if m.stride == 0 {
                m.len.max(1)
            } else {
                m.stride
            };
            for segment in buf[..m.len].chunks(stride) {
                let payload = match &mut link {
                    Some(link) => {
                        if is_relay_control(segment) {
                            link.handle_ack(now, segment);
                            continue;
                        }
                        match relay_data(segment) {
                            Some((_, payload)) => payload,
                            None => {
                                foreign += 1;
                                continue;
                            }
                        }
                    }
                    None => segment,
                };
                match payload.first() {
                    Some(&DATA) => {
                        packets += 1;
                        bytes += payload.len() as u64;
                    }
                    Some(&PING) => {
                        // Back the way it came: to the relay, under our channel.
                        echo.clear();
                        let to = match &link {
                            Some(link) => {
                                echo.extend_from_slice(&link.header());
                                link.relay
                            }
                            None => m.addr,
                        };
                        echo.extend_from_slice(payload);
                        if socket.send_to(&echo, to).is_ok() {
                            echoed += 1;
                        }
                    }
                    _ => {
                        foreign += 1;
                        continue;
                    }
                }
                if first.is_none() {
                    first = Some(now);
                }
                last = now;
            }
        }
    }
    let seconds = match first {
        None => 0.0,
        Some(_) if full_window => window.as_secs_f64(),
        Some(f) => last.duration_since(f).as_secs_f64(),
    };
    let pps = if seconds > 0.0 {
        packets as f64 / seconds
    } else {
        0.0
    };
    let drops = socket_drops(&socket);
    let cpu = cpu_seconds();
    if args.json {
        println!(
            "{}",
            json!({
                "mode": "recv",
                "relayed": link.is_some(),
                "packets": packets,
                "payload_bytes": bytes,
                "seconds": seconds,
                "pps": pps,
                "full_window": full_window,
                "pings_echoed": echoed,
                "foreign": foreign,
                "recv_calls": recv_calls,
                "gro_segments": state.gro_segments(),
                "rcvbuf": rcvbuf,
                "cpu_user_s": cpu.0,
                "cpu_sys_s": cpu.1,
                "socket_drops": drops,
            })
        );
    } else {
        println!(
            "recv{}: {packets} datagrams in {seconds:.2} s = {pps:.0}/s; {echoed} pings echoed, \
             {foreign} foreign; {recv_calls} receive calls; rcvbuf {rcvbuf} B; socket drops {}",
            if link.is_some() { " (relayed)" } else { "" },
            drops.map_or("?".to_string(), |d| d.to_string()),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// send

fn send(args: SendArgs) -> Result<()> {
    let rate: Option<f64> = match args.rate.as_str() {
        "max" | "0" => None,
        r => Some(
            r.parse::<f64>()
                .ok()
                .filter(|r| *r > 0.0)
                .with_context(|| format!("--rate: '{r}' is neither a positive number nor max"))?,
        ),
    };
    let mut link = RelayLink::new(&args.relay)?;
    let dest = match (&link, args.to) {
        (Some(link), _) => link.relay,
        (None, Some(to)) => to,
        (None, None) => bail!("--to or --relay is needed"),
    };
    let socket = bind_any(dest)?;
    let sndbuf = set_buffer(
        &socket,
        libc::SO_SNDBUFFORCE,
        libc::SO_SNDBUF,
        args.sock_buf,
    );
    let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
    if let Some(link) = &mut link {
        link.bind_until(&socket, true)?;
    }
    let header = link.as_ref().map_or(0, |_| RELAY_HEADER_LEN);
    let datagram_len = header + usize::from(args.size);
    let batch = if args.gso {
        usize::from(args.batch)
            .min(state.max_gso_segments())
            .clamp(1, 64)
    } else {
        usize::from(args.batch)
    };
    let mut buf = vec![0u8; datagram_len * batch];
    let fill = |buf: &mut [u8], relay_header: Option<[u8; RELAY_HEADER_LEN]>| {
        for d in buf.chunks_exact_mut(datagram_len) {
            if let Some(h) = relay_header {
                d[..RELAY_HEADER_LEN].copy_from_slice(&h);
            }
            d[header] = DATA;
        }
    };
    fill(&mut buf, link.as_ref().map(RelayLink::header));
    let mut mmsg = (!args.gso).then(|| Mmsg::new(dest, batch));

    let duration = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let end = start + duration;
    let (mut sent, mut calls, mut blocked, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut last_error = None;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        // (No let chains: the workspace's rust-version is 1.85.)
        if let Some(link) = link.as_mut().filter(|l| now >= l.next_bind) {
            let channel = link.channel;
            link.maybe_bind(&socket, now);
            // Take in any acks (a channel never changes for a side, but be exact).
            let mut ack = [0u8; 128];
            while let Ok((n, _)) = socket.recv_from(&mut ack) {
                link.handle_ack(now, &ack[..n]);
            }
            if link.channel != channel {
                fill(&mut buf, Some(link.header()));
            }
        }
        let mut want = batch;
        if let Some(rate) = rate {
            let due = (rate * now.duration_since(start).as_secs_f64()) as u64 + 1;
            if sent >= due {
                let next = Duration::from_secs_f64((sent + 1) as f64 / rate);
                std::thread::sleep((start + next).saturating_duration_since(now));
                continue;
            }
            want = want.min((due - sent) as usize);
        }
        let result = match &mut mmsg {
            Some(m) => m.send(socket.as_raw_fd(), &buf[..datagram_len], want),
            None => {
                let transmit = Transmit {
                    destination: dest,
                    ecn: None,
                    contents: &buf[..datagram_len * want],
                    segment_size: (want > 1).then_some(datagram_len),
                    src_ip: None,
                };
                state
                    .try_send(UdpSockRef::from(&socket), &transmit)
                    .map(|()| want)
            }
        };
        calls += 1;
        match result {
            Ok(k) => sent += k as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                blocked += 1;
                wait_fd(socket.as_raw_fd(), libc::POLLOUT, Duration::from_millis(10))?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                errors += 1;
                last_error = Some(e.to_string());
                if errors > 1000 && sent == 0 {
                    bail!("sending to {dest} fails: {e}");
                }
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let pps = sent as f64 / seconds;
    let cpu = cpu_seconds();
    let how = if args.gso {
        format!("gso x{batch}")
    } else {
        format!("sendmmsg x{batch}")
    };
    if args.json {
        println!(
            "{}",
            json!({
                "mode": "send",
                "relayed": link.is_some(),
                "to": dest.to_string(),
                "batching": how,
                "payload_size": args.size,
                "datagram_size": datagram_len,
                "packets": sent,
                "seconds": seconds,
                "pps": pps,
                "calls": calls,
                "blocked": blocked,
                "errors": errors,
                "last_error": last_error,
                "sndbuf": sndbuf,
                "cpu_user_s": cpu.0,
                "cpu_sys_s": cpu.1,
            })
        );
    } else {
        println!(
            "send{} to {dest} ({how}, {datagram_len}-byte datagrams): {sent} in {seconds:.2} s = \
             {pps:.0}/s; {calls} calls, {blocked} would-block, {errors} errors{}",
            if link.is_some() { " (relayed)" } else { "" },
            last_error.map_or(String::new(), |e| format!(" (last: {e})")),
        );
    }
    Ok(())
}

/// `sendmmsg` of up to `batch` copies of one datagram to one address.
struct Mmsg {
    // Kept alive (and not moved: boxed) for the raw pointers in `hdrs`.
    _addr: Box<socket2::SockAddr>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Mmsg {
    fn new(dest: SocketAddr, batch: usize) -> Mmsg {
        let addr = Box::new(socket2::SockAddr::from(dest));
        let iovs = vec![
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            };
            batch
        ];
        // SAFETY: mmsghdr is plain old data; all zeroes is a valid (empty) value.
        let mut hdrs: Vec<libc::mmsghdr> =
            (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect();
        for h in &mut hdrs {
            h.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = addr.len();
            h.msg_hdr.msg_iovlen = 1;
        }
        Mmsg {
            _addr: addr,
            iovs,
            hdrs,
        }
    }

    /// Sends `n` copies of `datagram`; returns how many the kernel took.
    fn send(&mut self, fd: RawFd, datagram: &[u8], n: usize) -> io::Result<usize> {
        let n = n.min(self.hdrs.len());
        for (iov, hdr) in self.iovs.iter_mut().zip(&mut self.hdrs).take(n) {
            iov.iov_base = datagram.as_ptr() as *mut libc::c_void;
            iov.iov_len = datagram.len();
            hdr.msg_hdr.msg_iov = iov;
        }
        // SAFETY: `hdrs[..n]` point at `iovs` (alive, not reallocated), at `datagram` (borrowed
        // for the call) and at the boxed address; the kernel only reads them.
        let sent = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), n as u32, 0) };
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(sent as usize)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ping

fn ping(args: PingArgs) -> Result<()> {
    let mut link = RelayLink::new(&args.relay)?;
    let dest = match (&link, args.to) {
        (Some(link), _) => link.relay,
        (None, Some(to)) => to,
        (None, None) => bail!("--to or --relay is needed"),
    };
    let socket = bind_any(dest)?;
    socket.set_nonblocking(true)?;
    if let Some(link) = &mut link {
        link.bind_until(&socket, true)?;
    }
    let header = link.as_ref().map_or(0, |_| RELAY_HEADER_LEN);
    let mut frame = vec![0u8; header + usize::from(args.size)];
    if let Some(link) = &link {
        frame[..header].copy_from_slice(&link.header());
    }
    frame[header] = PING;
    let interval = Duration::from_secs_f64(args.interval_ms / 1000.0);
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut rtts_us: Vec<f64> = Vec::with_capacity(args.count as usize);
    let mut lost = 0u32;
    let mut buf = [0u8; 2048];
    for seq in 0..u64::from(args.warmup + args.count) {
        frame[header + 1..header + 9].copy_from_slice(&seq.to_be_bytes());
        let t0 = Instant::now();
        if let Some(link) = &mut link {
            link.maybe_bind(&socket, t0);
        }
        let _ = socket.send_to(&frame, dest);
        let deadline = t0 + timeout;
        let mut rtt = None;
        'wait: while rtt.is_none() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if !wait_fd(socket.as_raw_fd(), libc::POLLIN, deadline - now)? {
                continue;
            }
            while let Ok((n, _)) = socket.recv_from(&mut buf) {
                let got = Instant::now();
                let datagram = &buf[..n];
                let payload = match &mut link {
                    Some(link) => {
                        if is_relay_control(datagram) {
                            link.handle_ack(got, datagram);
                            continue;
                        }
                        match relay_data(datagram) {
                            Some((_, p)) => p,
                            None => continue,
                        }
                    }
                    None => datagram,
                };
                if payload.len() >= 9 && payload[0] == PING && payload[1..9] == seq.to_be_bytes() {
                    rtt = Some(got.duration_since(t0));
                    break 'wait;
                }
            }
        }
        if seq >= u64::from(args.warmup) {
            match rtt {
                Some(rtt) => rtts_us.push(rtt.as_secs_f64() * 1e6),
                None => lost += 1,
            }
        }
        let next = t0 + interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    rtts_us.sort_by(f64::total_cmp);
    let pct = |p: f64| -> Option<f64> {
        if rtts_us.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * rtts_us.len() as f64).ceil() as usize;
        Some(rtts_us[rank.clamp(1, rtts_us.len()) - 1])
    };
    let mean = (!rtts_us.is_empty()).then(|| rtts_us.iter().sum::<f64>() / rtts_us.len() as f64);
    let round = |v: Option<f64>| v.map(|v| (v * 10.0).round() / 10.0);
    if args.json {
        println!(
            "{}",
            json!({
                "mode": "ping",
                "relayed": link.is_some(),
                "to": dest.to_string(),
                "count": args.count,
                "received": rtts_us.len(),
                "lost": lost,
                "min_us": round(pct(0.0)),
                "mean_us": round(mean),
                "p50_us": round(pct(50.0)),
                "p90_us": round(pct(90.0)),
                "p99_us": round(pct(99.0)),
                "max_us": round(pct(100.0)),
            })
        );
    } else {
        let f = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1}"));
        println!(
            "ping{} {dest}: {} of {} answered; RTT µs min {} p50 {} p90 {} p99 {} max {}",
            if link.is_some() { " (relayed)" } else { "" },
            rtts_us.len(),
            args.count,
            f(pct(0.0)),
            f(pct(50.0)),
            f(pct(90.0)),
            f(pct(99.0)),
            f(pct(100.0)),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// helpers

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A socket on any address and a free port, of `dest`'s family.
fn bind_any(dest: SocketAddr) -> Result<UdpSocket> {
    let any: SocketAddr = if dest.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    UdpSocket::bind(any).context("cannot bind a UDP socket")
}

/// Sets a socket buffer: `force` (root: past net.core.[rw]mem_max) or else `plain`. Returns the
/// size the kernel reports (twice what was asked, for its bookkeeping).
fn set_buffer(socket: &UdpSocket, force: libc::c_int, plain: libc::c_int, bytes: usize) -> usize {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |opt| {
        // SAFETY: a c_int option value of the right size, on a socket we own.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(force) != 0 {
        set(plain);
    }
    let mut got: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above, reading back into a c_int.
    unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            plain,
            (&raw mut got).cast(),
            &mut len,
        );
    }
    got.max(0) as usize
}

/// Datagrams the kernel dropped on this socket (full receive buffer), from SO_MEMINFO.
fn socket_drops(socket: &UdpSocket) -> Option<u64> {
    let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = size_of_val(&info) as libc::socklen_t;
    // SAFETY: an array of the size we pass; the kernel fills at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize >= size_of_val(&info))
        .then(|| u64::from(info[libc::SK_MEMINFO_DROPS as usize]))
}

/// CPU seconds (user, system) this process has used so far.
fn cpu_seconds() -> (f64, f64) {
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return (0.0, 0.0);
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(usage.ru_utime), s(usage.ru_stime))
}

/// Waits until `fd` is ready for `events` or `timeout` passes; returns whether it is ready.
fn wait_fd(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // Round up: a wait of 0.3 ms must not become a busy loop of zero-timeout polls.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one pollfd, ours.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0)
}
