//! The engine and its owner's handle: a control loop thread that owns the configuration, runs
//! WireGuard's timers and starts the workers; the owner talks to it over crossbeam channels.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::PublicKey;
use crossbeam_channel::{Receiver, Sender, bounded, select, tick};

use crate::config::{
    DeviceStatus, DeviceUpdate, EngineConfig, Event, Key, PeerStatus, PeerUpdate, Prefix,
    UpdateError,
};
use crate::dataplane::framed;
use crate::io::cpu::{CpuLayout, Steering};
use crate::io::tun::TunDevice;
use crate::io::udp;
use crate::lan::{Groups, Lan, LanScope};
use crate::peer::Peer;
use crate::priority::PriorityPolicy;
use crate::shared::Shared;
use crate::stats::DropCounters;
use crate::table::{Identity, PeerTable};
use crate::worker::{Worker, WorkerCpus, WorkerHandle, send_one};

/// WireGuard's timers (handshake retry, keepalive, rekey) are specified in seconds; ticking
/// every 100 ms keeps them accurate to well within that.
const TIMER_TICK: Duration = Duration::from_millis(100);

/// Events waiting for the owner before new ones are dropped.
const EVENT_QUEUE: usize = 4096;

enum Command {
    Update(DeviceUpdate, Sender<Result<(), UpdateError>>),
    Status(Sender<DeviceStatus>),
    SendDatagram(SocketAddr, Vec<u8>),
    SetPriority(PriorityPolicy),
    SetLan(Option<LanScope>),
    SetGroups(Key, Option<Groups>),
    Shutdown,
}

/// A running engine. Dropping it stops the workers and the control loop.
pub struct Engine {
    handle: EngineHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A cheap, cloneable way to reconfigure and query the engine from any thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: Sender<Command>,
}

impl Engine {
    /// Binds the UDP port, starts one worker per TUN queue (up to `config.threads`) and the
    /// control loop. Events arrive on the returned receiver.
    pub fn start(
        tun: TunDevice,
        config: EngineConfig,
    ) -> Result<(Engine, Receiver<Event>), UpdateError> {
        let threads = config.threads.clamp(1, tun.queue_count());
        let sockets = udp::bind_group(
            config.listen_port,
            threads,
            config.fwmark,
            config.recv_buffer,
        )
        .map_err(|e| UpdateError::PortUnavailable {
            port: config.listen_port,
            reason: e.to_string(),
        })?;
        let (event_tx, event_rx) = bounded(EVENT_QUEUE);
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(PeerTable::default()),
            priority: ArcSwap::from_pointee(config.priority.clone()),
            drops: DropCounters::default(),
            events: event_tx,
        });
        let mut control = Control {
            shared,
            tun,
            threads,
            fwmark: config.fwmark,
            recv_buffer: config.recv_buffer,
            cpu_locality: config.cpu_locality,
            sockets: Vec::new(),
            dual_stack: false,
            listen_port: 0,
            workers: Vec::new(),
            private_key: None,
            identity: None,
            peers: BTreeMap::new(),
            lan: None,
        };
        control
            .install_sockets(sockets)
            .map_err(|e| UpdateError::Invalid(format!("cannot start workers: {e}")))?;
        let (commands, command_rx) = bounded(64);
        let thread = std::thread::Builder::new()
            .name("lanrage-engine".into())
            .spawn(move || control.run(command_rx))
            .map_err(|e| UpdateError::Invalid(format!("cannot start engine thread: {e}")))?;
        Ok((
            Engine {
                handle: EngineHandle { commands },
                thread: Some(thread),
            },
            event_rx,
        ))
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.handle.commands.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl EngineHandle {
    /// Applies a batch of changes as one step: all of it, or (on error) none of it.
    pub fn update(&self, update: DeviceUpdate) -> Result<(), UpdateError> {
        let (tx, rx) = bounded(1);
        self.commands
            .send(Command::Update(update, tx))
            .map_err(|_| UpdateError::Stopped)?;
        rx.recv().map_err(|_| UpdateError::Stopped)?
    }

    pub fn status(&self) -> Result<DeviceStatus, UpdateError> {
        let (tx, rx) = bounded(1);
        self.commands
            .send(Command::Status(tx))
            .map_err(|_| UpdateError::Stopped)?;
        rx.recv().map_err(|_| UpdateError::Stopped)
    }

    /// Changes which packets take the latency lane; takes effect with the workers' next batch.
    pub fn set_priority(&self, policy: PriorityPolicy) -> Result<(), UpdateError> {
        self.commands
            .send(Command::SetPriority(policy))
            .map_err(|_| UpdateError::Stopped)
    }

    /// Makes the peers one LAN: broadcasts and multicast read from the TUN go to every peer
    /// (see `lan`); `None` (the default) keeps WireGuard's routing by allowed-IPs alone.
    pub fn set_lan(&self, scope: Option<LanScope>) -> Result<(), UpdateError> {
        self.commands
            .send(Command::SetLan(scope))
            .map_err(|_| UpdateError::Stopped)
    }

    /// Sends `peer` only the LAN multicast to `groups` (IPv4; the groups its host listens to);
    /// `None` (the default) sends it every group. Broadcasts go to every peer regardless.
    pub fn set_multicast_groups(
        &self,
        peer: Key,
        groups: Option<Vec<Ipv4Addr>>,
    ) -> Result<(), UpdateError> {
        self.commands
            .send(Command::SetGroups(peer, groups.map(Groups::from)))
            .map_err(|_| UpdateError::Stopped)
    }

    /// Sends a non-WireGuard datagram (STUN, the project's frames) from the WireGuard port.
    pub fn send_datagram(&self, to: SocketAddr, data: Vec<u8>) -> Result<(), UpdateError> {
        self.commands
            .send(Command::SendDatagram(to, data))
            .map_err(|_| UpdateError::Stopped)
    }
}

/// A peer's configuration, as the control loop keeps it.
struct PeerEntry {
    peer: Arc<Peer>,
    preshared_key: Option<Key>,
    persistent_keepalive: u16,
    /// When we last saw our traffic to the peer move (the persistent keepalive's clock).
    quiet: Quiet,
    /// The LAN multicast groups it wants, when known.
    groups: Option<Groups>,
    allowed_ips: Vec<Prefix>,
}

/// Persistent keepalive is timed here, not by boringtun, whose sessions fix the interval when
/// they are created: a game's profile or the NAT changes it while traffic flows, and a new
/// session would cost a handshake. As WireGuard does, a keepalive goes out when nothing was
/// sent for the interval; only what we send counts, since that is what refreshes our NAT's
/// mapping. The workers' transmit counter tells, so the packet path pays nothing for it.
#[derive(Debug, Clone, Copy)]
struct Quiet {
    tx_bytes: u64,
    since: Instant,
}

impl Quiet {
    fn new(peer: &Peer) -> Self {
        Quiet {
            tx_bytes: peer.tx_bytes(),
            since: Instant::now(),
        }
    }

    /// Whether a keepalive is due: nothing sent for `interval` seconds (0: never).
    fn keepalive_due(&mut self, peer: &Peer, interval: u16, now: Instant) -> bool {
        let sent = peer.tx_bytes();
        if sent != self.tx_bytes {
            *self = Quiet {
                tx_bytes: sent,
                since: now,
            };
            return false;
        }
        interval > 0 && now.duration_since(self.since) >= Duration::from_secs(interval.into())
    }
}

struct Control {
    shared: Arc<Shared>,
    tun: TunDevice,
    threads: usize,
    fwmark: u32,
    recv_buffer: usize,
    cpu_locality: bool,
    sockets: Vec<Arc<UdpSocket>>,
    /// Whether the sockets are IPv6 with IPv4 mapped (then IPv4 destinations need mapping).
    dual_stack: bool,
    /// The bound port, kept so status and timers need no system call.
    listen_port: u16,
    workers: Vec<WorkerHandle>,
    private_key: Option<Key>,
    identity: Option<Arc<Identity>>,
    peers: BTreeMap<Key, PeerEntry>,
    lan: Option<Arc<Lan>>,
}

impl Control {
    fn run(&mut self, commands: Receiver<Command>) {
        let timers = tick(TIMER_TICK);
        let mut last_reset = Instant::now();
        let mut buf = vec![0u8; 2048];
        loop {
            select! {
                recv(commands) -> command => match command {
                    Ok(Command::Update(update, reply)) => {
                        let _ = reply.send(self.update(update));
                    }
                    Ok(Command::Status(reply)) => {
                        let _ = reply.send(self.status());
                    }
                    Ok(Command::SendDatagram(to, data)) => {
                        if let Some(socket) = self.sockets.first() {
                            send_one(socket, &data, to, self.dual_stack);
                        }
                    }
                    Ok(Command::SetPriority(policy)) => {
                        self.shared.priority.store(Arc::new(policy));
                    }
                    Ok(Command::SetLan(scope)) => {
                        if self.lan.as_ref().map(|lan| lan.scope) != scope {
                            self.lan = scope.map(|scope| Arc::new(Lan::new(scope)));
                            self.publish();
                        }
                    }
                    Ok(Command::SetGroups(key, groups)) => {
                        if let Some(entry) = self.peers.get_mut(&key)
                            && entry.groups != groups
                        {
                            entry.groups = groups;
                            self.publish();
                        }
                    }
                    Ok(Command::Shutdown) | Err(_) => break,
                },
                recv(timers) -> _ => {
                    if last_reset.elapsed() >= Duration::from_secs(1) {
                        last_reset = Instant::now();
                        if let Some(identity) = &self.identity {
                            identity.rate_limiter.reset_count();
                        }
                    }
                    self.run_timers(&mut buf);
                }
            }
        }
        for worker in self.workers.drain(..) {
            worker.stop();
        }
    }

    /// Drives every session's timers: handshake retries, rekeys, expiry, and the persistent
    /// keepalive (see [`Quiet`]).
    fn run_timers(&mut self, buf: &mut [u8]) {
        let Some(socket) = self.sockets.first() else {
            return;
        };
        let dual_stack = self.dual_stack;
        let now = Instant::now();
        for entry in self.peers.values_mut() {
            let peer = &entry.peer;
            let mut state = peer.state.lock();
            let endpoint = state.endpoint;
            let Some(tunn) = state.tunn.as_mut() else {
                continue;
            };
            let Some(to) = endpoint else {
                let _ = tunn.update_timers(buf);
                continue;
            };
            let head = to.header_len();
            if let TunnResult::WriteToNetwork(message) = tunn.update_timers(&mut buf[head..]) {
                let len = message.len();
                let datagram = framed(buf, to, len);
                peer.add_tx(datagram.len());
                send_one(socket, datagram, to.addr, dual_stack);
            }
            if entry
                .quiet
                .keepalive_due(peer, entry.persistent_keepalive, now)
            {
                // An empty packet, or the handshake initiation a session must begin with.
                if let TunnResult::WriteToNetwork(message) = tunn.encapsulate(&[], &mut buf[head..])
                {
                    let len = message.len();
                    let datagram = framed(buf, to, len);
                    peer.add_tx(datagram.len());
                    send_one(socket, datagram, to.addr, dual_stack);
                }
                entry.quiet = Quiet::new(peer);
            }
        }
    }

    fn status(&self) -> DeviceStatus {
        let now = SystemTime::now();
        let peers = self
            .peers
            .values()
            .map(|entry| {
                let state = entry.peer.state.lock();
                let last_handshake = state
                    .tunn
                    .as_ref()
                    .and_then(|t| t.time_since_last_handshake())
                    .and_then(|since| now.checked_sub(since));
                PeerStatus {
                    public_key: entry.peer.public_key,
                    preshared_key: entry.preshared_key,
                    endpoint: state.endpoint,
                    last_handshake,
                    rx_bytes: entry.peer.rx_bytes(),
                    tx_bytes: entry.peer.tx_bytes(),
                    rx_packets: entry.peer.rx_packets(),
                    tx_packets: entry.peer.tx_packets(),
                    persistent_keepalive: entry.persistent_keepalive,
                    allowed_ips: entry.allowed_ips.clone(),
                }
            })
            .collect();
        DeviceStatus {
            private_key: self.private_key,
            public_key: self.identity.as_ref().map(|i| i.public.to_bytes()),
            listen_port: self.listen_port,
            fwmark: self.fwmark,
            peers,
            drops: self.shared.drops.snapshot(),
        }
    }

    fn update(&mut self, update: DeviceUpdate) -> Result<(), UpdateError> {
        validate(&update)?;
        let fwmark = update.fwmark.unwrap_or(self.fwmark);
        // The only step that can fail for reasons outside the request: do it first, so a
        // refused port leaves the rest unapplied.
        let new_sockets = match update.listen_port {
            Some(port) if port != self.listen_port => Some(
                udp::bind_group(port, self.threads, fwmark, self.recv_buffer).map_err(|e| {
                    UpdateError::PortUnavailable {
                        port,
                        reason: e.to_string(),
                    }
                })?,
            ),
            _ => None,
        };
        if fwmark != self.fwmark && new_sockets.is_none() {
            for socket in &self.sockets {
                udp::set_fwmark(&socket2::SockRef::from(socket.as_ref()), fwmark).map_err(|e| {
                    UpdateError::Invalid(format!("cannot set fwmark {fwmark}: {e}"))
                })?;
            }
        }
        self.fwmark = fwmark;
        if let Some(private_key) = update.private_key {
            self.set_private_key(private_key.filter(|k| *k != [0; 32]));
        }
        let mut changes = update.peers;
        if update.replace_peers {
            // Peers named again keep their sessions (no traffic lost to `wg setconf` or
            // `wg syncconf`) but start from a fresh configuration, as a new peer would.
            let kept: HashSet<Key> = changes
                .iter()
                .filter(|c| !c.remove)
                .map(|c| c.public_key)
                .collect();
            self.peers.retain(|key, _| kept.contains(key));
            for entry in self.peers.values_mut() {
                entry.allowed_ips.clear();
            }
            for change in &mut changes {
                change.preshared_key.get_or_insert(None);
                change.persistent_keepalive.get_or_insert(0);
            }
        }
        let mut keepalives_on = Vec::new();
        let mut moved = Vec::new();
        for change in changes {
            let key = change.public_key;
            let endpoint = change.endpoint;
            let before = self
                .peers
                .get(&key)
                .and_then(|e| e.peer.state.lock().endpoint);
            if self.update_peer(change) {
                keepalives_on.push(key);
            }
            if endpoint.is_some() && before.is_some() && endpoint != before {
                moved.push(key);
            }
        }
        self.publish();
        // A handshake sent to an address that turned out wrong (the owner found the path
        // since) would otherwise be retried only after WireGuard's 5 s: start one at the new
        // address now, if there is no session yet.
        for key in moved {
            self.initiate_if_no_session(key);
        }
        // As wireguard-go does: turning persistent keepalive on sends one at once, which
        // starts a handshake if there is no session. A peer that restarted (and lost its
        // sessions) is thereby reachable again without waiting for a timer.
        for key in keepalives_on {
            self.send_keepalive(key);
        }
        if let Some(sockets) = new_sockets {
            self.install_sockets(sockets)
                .map_err(|e| UpdateError::Invalid(format!("cannot restart workers: {e}")))?;
        }
        Ok(())
    }

    fn set_private_key(&mut self, key: Option<Key>) {
        if key == self.private_key {
            return;
        }
        self.private_key = key;
        self.identity = key.map(|k| Arc::new(Identity::new(k)));
        // A peer that is ourselves cannot be talked to.
        if let Some(identity) = &self.identity {
            let own = identity.public.to_bytes();
            self.peers.remove(&own);
        }
        for entry in self.peers.values() {
            let mut state = entry.peer.state.lock();
            state.tunn = match (&self.identity, state.tunn.take()) {
                (Some(identity), Some(mut tunn)) => {
                    tunn.set_static_private(
                        identity.secret.clone(),
                        identity.public,
                        Some(identity.rate_limiter.clone()),
                    );
                    Some(tunn)
                }
                (Some(_), None) => self.new_tunn(entry),
                (None, _) => None,
            };
        }
    }

    fn new_tunn_for(&self, public_key: Key, index: u32, psk: Option<Key>) -> Option<Tunn> {
        let identity = self.identity.as_ref()?;
        Some(Tunn::new(
            identity.secret.clone(),
            PublicKey::from(public_key),
            psk,
            // Timed by the control loop instead (see `Quiet`).
            None,
            index,
            Some(identity.rate_limiter.clone()),
        ))
    }

    fn new_tunn(&self, entry: &PeerEntry) -> Option<Tunn> {
        self.new_tunn_for(entry.peer.public_key, entry.peer.index, entry.preshared_key)
    }

    /// Applies one peer's changes; returns whether they turned persistent keepalive on.
    fn update_peer(&mut self, change: PeerUpdate) -> bool {
        let key = change.public_key;
        if change.remove {
            self.peers.remove(&key);
            return false;
        }
        if self
            .identity
            .as_ref()
            .is_some_and(|i| i.public.to_bytes() == key)
        {
            return false;
        }
        let keepalive_before = self.peers.get(&key).map_or(0, |e| e.persistent_keepalive);
        if !self.peers.contains_key(&key) {
            if change.update_only {
                return false;
            }
            let index = self.free_index();
            let psk = change.preshared_key.flatten();
            let keepalive = change.persistent_keepalive.unwrap_or(0);
            let tunn = self.new_tunn_for(key, index, psk);
            let peer = Arc::new(Peer::new(key, index, tunn, change.endpoint));
            let entry = PeerEntry {
                quiet: Quiet::new(&peer),
                groups: None,
                peer,
                preshared_key: psk,
                persistent_keepalive: keepalive,
                allowed_ips: Vec::new(),
            };
            self.peers.insert(key, entry);
        }
        let mut rebuild_session = false;
        if let Some(entry) = self.peers.get_mut(&key) {
            if let Some(psk) = change.preshared_key {
                let psk = psk.filter(|k| *k != [0; 32]);
                rebuild_session |= psk != entry.preshared_key;
                entry.preshared_key = psk;
            }
            if let Some(keepalive) = change.persistent_keepalive {
                entry.persistent_keepalive = keepalive;
            }
            if let Some(endpoint) = change.endpoint {
                entry.peer.state.lock().endpoint = Some(endpoint);
            }
            if change.replace_allowed_ips {
                entry.allowed_ips.clear();
            }
        }
        // An allowed-IPs prefix belongs to one peer: adding it here takes it from any other.
        for prefix in &change.allowed_ips {
            let prefix = normalize(*prefix);
            for (other, entry) in self.peers.iter_mut() {
                if *other == key {
                    if !entry.allowed_ips.contains(&prefix) {
                        entry.allowed_ips.push(prefix);
                    }
                } else {
                    entry.allowed_ips.retain(|p| *p != prefix);
                }
            }
        }
        if rebuild_session {
            // boringtun fixes the pre-shared key at session creation.
            if let Some(entry) = self.peers.get(&key) {
                let tunn = self.new_tunn(entry);
                entry.peer.state.lock().tunn = tunn;
            }
        }
        keepalive_before == 0 && change.persistent_keepalive.is_some_and(|k| k > 0)
    }

    /// Sends `key` a keepalive, or the handshake initiation that must come first.
    fn send_keepalive(&self, key: Key) {
        self.send_from_session(key, |tunn, buf| tunn.encapsulate(&[], buf));
    }

    /// Sends `key` a fresh handshake initiation unless a session is up.
    fn initiate_if_no_session(&self, key: Key) {
        self.send_from_session(key, |tunn, buf| {
            if tunn.time_since_last_handshake().is_some() {
                TunnResult::Done
            } else {
                tunn.format_handshake_initiation(buf, true)
            }
        });
    }

    /// Sends `key`, at its endpoint, the datagram `write` makes with its session, if any.
    fn send_from_session(
        &self,
        key: Key,
        write: impl for<'a> FnOnce(&mut Tunn, &'a mut [u8]) -> TunnResult<'a>,
    ) {
        let (Some(entry), Some(socket)) = (self.peers.get(&key), self.sockets.first()) else {
            return;
        };
        let mut buf = [0u8; 256];
        let mut state = entry.peer.state.lock();
        let Some(to) = state.endpoint else {
            return;
        };
        let Some(tunn) = state.tunn.as_mut() else {
            return;
        };
        if let TunnResult::WriteToNetwork(message) = write(tunn, &mut buf[to.header_len()..]) {
            let len = message.len();
            let datagram = framed(&mut buf, to, len);
            entry.peer.add_tx(datagram.len());
            send_one(socket, datagram, to.addr, self.dual_stack);
        }
    }

    /// A random unused 24-bit index, so indices reveal nothing about peer count or order.
    fn free_index(&self) -> u32 {
        loop {
            let index = getrandom::u32().unwrap_or_else(|_| fallback_random()) & 0x00ff_ffff;
            if !self.peers.values().any(|e| e.peer.index == index) {
                return index;
            }
        }
    }

    /// Publishes a fresh snapshot for the workers.
    fn publish(&self) {
        let mut table = PeerTable::new(self.identity.clone());
        table.set_lan(self.lan.clone());
        for (key, entry) in &self.peers {
            table.insert(entry.peer.clone());
            if let Some(groups) = &entry.groups {
                table.set_groups(*key, groups.clone());
            }
            for prefix in &entry.allowed_ips {
                table.route(prefix.addr, prefix.cidr, entry.peer.clone());
            }
        }
        self.shared.table.store(Arc::new(table));
    }

    /// Sets up CPU locality for the current sockets (see `io::cpu`), or says why not.
    fn cpu_layout(&self) -> Option<(CpuLayout, Arc<Steering>)> {
        if !self.cpu_locality {
            return None;
        }
        let layout = CpuLayout::detect(self.sockets.len())?;
        match Steering::attach(self.sockets[0].clone(), layout.workers()) {
            Ok(steering) => Some((layout, Arc::new(steering))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot steer datagrams by CPU; workers float");
                None
            }
        }
    }

    /// Replaces the sockets and restarts the workers on them (start-up, listen-port change).
    fn install_sockets(&mut self, sockets: Vec<UdpSocket>) -> std::io::Result<()> {
        for worker in self.workers.drain(..) {
            worker.stop();
        }
        self.sockets = sockets.into_iter().map(Arc::new).collect();
        let local = self.sockets.first().and_then(|s| s.local_addr().ok());
        self.dual_stack = local.is_some_and(|a| a.is_ipv6());
        self.listen_port = local.map_or(0, |a| a.port());
        let layout = self.cpu_layout();
        for (i, socket) in self.sockets.iter().enumerate() {
            let cpus = layout.as_ref().map(|(l, steering)| WorkerCpus {
                own: l.cpus(i).to_vec(),
                all: l.all().to_vec(),
                steering: steering.clone(),
            });
            let worker = Worker::spawn(
                i,
                self.shared.clone(),
                socket.clone(),
                self.tun.queue(i),
                cpus,
            )?;
            self.workers.push(worker);
        }
        tracing::info!(
            port = self.listen_port,
            workers = self.workers.len(),
            offload = self.tun.offload(),
            cpu_locality = layout.is_some(),
            "engine listening"
        );
        Ok(())
    }
}

fn validate(update: &DeviceUpdate) -> Result<(), UpdateError> {
    for peer in &update.peers {
        for prefix in &peer.allowed_ips {
            let max = if prefix.addr.is_ipv4() { 32 } else { 128 };
            if prefix.cidr > max {
                return Err(UpdateError::Invalid(format!(
                    "allowed IP {prefix}: prefix length above {max}"
                )));
            }
        }
    }
    Ok(())
}

/// Masks host bits, so `10.0.0.5/24` and `10.0.0.0/24` are one prefix.
fn normalize(prefix: Prefix) -> Prefix {
    Prefix {
        addr: crate::allowed_ips::network(prefix.addr, prefix.cidr),
        cidr: prefix.cidr,
    }
}

/// Only reached if the OS random source fails; indices need uniqueness, not secrecy.
fn fallback_random() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_masked() {
        let p = |s: &str, c| Prefix {
            addr: s.parse().unwrap(),
            cidr: c,
        };
        assert_eq!(normalize(p("10.0.0.5", 24)), p("10.0.0.0", 24));
        assert_eq!(normalize(p("10.0.0.5", 0)), p("0.0.0.0", 0));
        assert_eq!(normalize(p("10.0.0.5", 32)), p("10.0.0.5", 32));
        assert_eq!(normalize(p("fd00::1:2", 112)), p("fd00::1:0", 112));
        assert_eq!(normalize(p("fd00::1", 0)), p("::", 0));
    }

    #[test]
    fn overlong_prefixes_are_refused() {
        let mut peer = PeerUpdate::new([1; 32]);
        peer.allowed_ips.push(Prefix {
            addr: "10.0.0.0".parse().unwrap(),
            cidr: 33,
        });
        let update = DeviceUpdate {
            peers: vec![peer],
            ..Default::default()
        };
        assert!(matches!(validate(&update), Err(UpdateError::Invalid(_))));
    }
}
