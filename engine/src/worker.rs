//! One worker per core: its own `mio::Poll`, its own UDP socket and TUN queue, and buffers
//! allocated once at start. It moves batches: a TUN read (a GSO super-packet split into
//! segments) becomes one UDP send per run of same-sized datagrams to one peer (UDP GSO); a UDP
//! read (recvmmsg, GRO) becomes one coalescing TUN write.
//!
//! Between turns of bulk work it empties its TUN ring and UDP socket into slots of its own
//! (`receive_queue`): the latency lane's packets are handled as soon as they are read, bulk
//! waits there in arrival order, bounded, instead of in the kernel's queues.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tun_rs::SyncDevice;

use crate::config::Event;
use crate::dataplane::{self, Inbound, Outbound};
use crate::io::cpu::{self, Governor, Placement, Steering};
use crate::io::gro::{Coalescer, MAX_SEGMENTS};
use crate::io::tun::{Frame, MAX_FRAME, MAX_MTU, OFFLOAD_HEADROOM};
use crate::io::udp::{
    RECV_BUF_LEN as UDP_RECV_BUF_LEN, Received, canonical, for_socket, gro_stride, recv_into,
};
use crate::priority::PriorityPolicy;
use crate::receive_queue::{self, BULK_LIMIT, ReceiveQueue};
use crate::shared::Shared;
use crate::stats::{DropCounters, DropReason};
use crate::table::PeerTable;
use crate::wire::{self, Datagram};

const UDP: Token = Token(0);
const TUN: Token = Token(1);
const WAKE: Token = Token(2);

/// Packets per TUN batch (tun-rs's ideal batch) and per coalesced TUN write.
const BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;
/// UDP receive slots (recvmmsg buffers of `UDP_RECV_BUF_LEN`) per worker.
const RECV_SLOTS: usize = 16;
/// TUN frames (up to 64 KiB each) a worker reads ahead: the bulk bound's worth and room to
/// keep reading past it.
const TUN_SLOTS: usize = 12;
/// Most TUN reads per turn, so a flood of small packets cannot starve the other direction.
const TUN_READS_PER_TURN: usize = 2 * TUN_SLOTS;
/// Bulk handled per turn before the worker looks for packets in the latency lane again: one
/// GRO train or super-packet, or as many lone packets as fit.
const TURN_BYTES: usize = 64 << 10;
/// Largest datagram the engine produces: an MTU-sized packet plus WireGuard overhead.
const MAX_DATAGRAM: usize = MAX_MTU + wire::TRANSPORT_OVERHEAD;
/// The kernel accepts at most 64 segments per GSO send.
pub(crate) const MAX_GSO_SEGMENTS: usize = 64;
/// How long a send may wait for room in a full socket buffer before the datagram is dropped:
/// enough to ride out a burst, short enough that nothing queues behind it for long.
const SEND_PATIENCE: Duration = Duration::from_millis(2);

/// What the engine keeps to stop and wake a worker.
pub struct WorkerHandle {
    pub stop: Arc<AtomicBool>,
    pub waker: Arc<Waker>,
    pub thread: std::thread::JoinHandle<()>,
}

impl WorkerHandle {
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        let _ = self.thread.join();
    }
}

/// Where one queued datagram sits in the send buffer.
#[derive(Clone, Copy)]
struct Pending {
    start: usize,
    len: usize,
    to: SocketAddr,
    /// In the latency lane: sent before the bulk of the batch.
    priority: bool,
}

pub struct Worker {
    shared: Arc<Shared>,
    udp: Arc<UdpSocket>,
    udp_state: UdpSocketState,
    dual_stack: bool,
    tun: Arc<SyncDevice>,
    stop: Arc<AtomicBool>,
    poll: Poll,

    // TUN → UDP
    /// Whether TUN reads carry virtio-net headers.
    offload: bool,
    /// Frames read ahead, `MAX_FRAME` bytes each, back to back; `tun_queue` keeps their books.
    tun_frames: Vec<u8>,
    tun_frame_len: [usize; TUN_SLOTS],
    tun_queue: ReceiveQueue,
    tun_packets: Vec<Vec<u8>>,
    tun_sizes: Vec<usize>,
    send_buf: Vec<u8>,
    pending: Vec<Pending>,

    // UDP → TUN
    /// Receive slots of `UDP_RECV_BUF_LEN` bytes, back to back; `receive` keeps their books.
    recv_bufs: Vec<u8>,
    recv_meta: [RecvMeta; RECV_SLOTS],
    receive: ReceiveQueue,
    tun_out: Vec<Vec<u8>>,
    gro: Coalescer,
    scratch: Vec<u8>,
    /// Packets handled since the governor last heard.
    handled: usize,
    locality: Option<Locality>,
}

/// A worker's CPUs (see `io::cpu`).
pub struct WorkerCpus {
    /// Where it runs at light load.
    pub own: Vec<usize>,
    /// Where it runs under heavy load.
    pub all: Vec<usize>,
    /// Told of every change, to steer datagrams accordingly.
    pub steering: Arc<Steering>,
}

/// A worker's CPUs and when to keep to them.
struct Locality {
    cpus: WorkerCpus,
    governor: Governor,
}

impl Worker {
    /// Builds a worker and its buffers; everything the packet path needs is allocated here.
    /// `cpus`: given with CPU locality.
    pub fn spawn(
        id: usize,
        shared: Arc<Shared>,
        udp: Arc<UdpSocket>,
        tun: Arc<SyncDevice>,
        cpus: Option<WorkerCpus>,
    ) -> io::Result<WorkerHandle> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        poll.registry()
            .register(&mut SourceFd(&udp.as_raw_fd()), UDP, Interest::READABLE)?;
        poll.registry()
            .register(&mut SourceFd(&tun.as_raw_fd()), TUN, Interest::READABLE)?;
        let udp_state = UdpSocketState::new(UdpSockRef::from(&*udp))?;
        let dual_stack = udp.local_addr()?.is_ipv6();
        let stop = Arc::new(AtomicBool::new(false));
        let offload = tun.tcp_gso();
        let udp_gro = offload && tun.udp_gso();
        let packet_buf = OFFLOAD_HEADROOM + MAX_MTU;
        let mut worker = Worker {
            shared,
            udp,
            udp_state,
            dual_stack,
            tun,
            stop: stop.clone(),
            poll,
            offload,
            tun_frames: vec![0; TUN_SLOTS * MAX_FRAME],
            tun_frame_len: [0; TUN_SLOTS],
            tun_queue: ReceiveQueue::new(TUN_SLOTS, BULK_LIMIT),
            tun_packets: (0..BATCH).map(|_| vec![0; packet_buf]).collect(),
            tun_sizes: vec![0; BATCH],
            send_buf: vec![0; BATCH * (MAX_DATAGRAM + dataplane::MIN_OUTPUT_LEN)],
            pending: Vec::with_capacity(BATCH),
            recv_bufs: vec![0; RECV_SLOTS * UDP_RECV_BUF_LEN],
            recv_meta: [RecvMeta::default(); RECV_SLOTS],
            receive: ReceiveQueue::new(RECV_SLOTS, BULK_LIMIT),
            // A slot holds one decrypted packet (or a handshake reply, which may be longer).
            tun_out: (0..BATCH)
                .map(|_| {
                    let mut b = Vec::with_capacity(
                        OFFLOAD_HEADROOM + MAX_DATAGRAM + dataplane::MIN_OUTPUT_LEN,
                    );
                    b.resize(packet_buf, 0);
                    b
                })
                .collect(),
            gro: Coalescer::new(BATCH, udp_gro),
            scratch: vec![0; MAX_DATAGRAM + dataplane::MIN_OUTPUT_LEN],
            handled: 0,
            locality: None,
        };
        let thread = std::thread::Builder::new()
            // Thread names are cut at 15 bytes: "lanrage-worker-N" lost its number.
            .name(format!("lanrage-wk{id}"))
            .spawn(move || {
                worker.locality = cpus.and_then(|cpus| {
                    cpu::pin_current_thread(&cpus.own)
                        .inspect_err(|e| {
                            tracing::warn!(worker = id, error = %e, "cannot pin worker to its CPUs")
                        })
                        .ok()?;
                    Some(Locality {
                        cpus,
                        governor: Governor::new(Instant::now()),
                    })
                });
                worker.run()
            })?;
        Ok(WorkerHandle {
            stop,
            waker,
            thread,
        })
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(16);
        // Drain whatever arrived before registration (edge-triggered readiness).
        let (mut udp_ready, mut tun_ready) = (true, true);
        while !self.stop.load(Ordering::Acquire) {
            let busy =
                udp_ready || tun_ready || self.receive.has_bulk() || self.tun_queue.has_bulk();
            let timeout = busy.then_some(Duration::ZERO);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "worker poll failed; worker stops");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    UDP => udp_ready = true,
                    TUN => tun_ready = true,
                    _ => {}
                }
            }
            // Alternate batches so neither direction starves the other.
            if udp_ready || self.receive.has_bulk() {
                udp_ready = self.udp_batch(udp_ready);
            }
            if tun_ready || self.tun_queue.has_bulk() {
                tun_ready = self.tun_batch(tun_ready);
            }
            self.govern();
        }
    }

    /// Pins or floats the worker as its load changes.
    fn govern(&mut self) {
        let Some(locality) = &mut self.locality else {
            return;
        };
        locality.governor.record(std::mem::take(&mut self.handled));
        let Some(placement) = locality.governor.poll(Instant::now()) else {
            return;
        };
        let cpus = match placement {
            Placement::Pinned => &locality.cpus.own,
            Placement::Floating => &locality.cpus.all,
        };
        match cpu::pin_current_thread(cpus) {
            Ok(()) => locality.cpus.steering.placement_changed(placement),
            Err(e) => {
                tracing::warn!(error = %e, ?placement, "cannot change the worker's CPUs");
                self.locality = None;
            }
        }
    }

    /// Empties the TUN queue's ring into the free frame slots (when `read`), encrypting the
    /// latency lane's packets at once, then encrypts the oldest bulk frame. Returns whether
    /// the ring may have more.
    fn tun_batch(&mut self, read: bool) -> bool {
        let policy = self.shared.priority.load();
        let more = read && self.read_frames(&policy);
        let turn = self.tun_queue.pop_turn(TURN_BYTES, TUN_SLOTS);
        if !turn.is_empty() {
            self.encrypt_frames(&policy, turn.slots());
            self.tun_queue.release_turn(&turn);
        }
        more
    }

    /// Reads frames into free slots until the ring is empty, the slots are full of bulk, or
    /// the turn is over. Returns whether the ring may have more.
    fn read_frames(&mut self, policy: &PriorityPolicy) -> bool {
        for _ in 0..TUN_READS_PER_TURN {
            let Some(slot) = receive_queue::slots(self.tun_queue.free()).next() else {
                // Full of bulk: encrypt some first. The ring keeps what it has.
                return true;
            };
            let buf = &mut self.tun_frames[slot * MAX_FRAME..(slot + 1) * MAX_FRAME];
            let len = match self.tun.recv(buf) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The device itself failed (deleted, detached): wait for the next edge
                    // rather than spin on an error.
                    tracing::warn!(error = %e, "TUN read failed");
                    return false;
                }
            };
            self.tun_frame_len[slot] = len;
            let frame = Frame {
                bytes: &mut buf[..len],
                offload: self.offload,
            };
            if policy.is_priority_packet(frame.packet()) {
                // The latency lane: encrypted and sent now; the slot stays free.
                self.encrypt_frames(policy, std::iter::once(slot));
                continue;
            }
            self.tun_queue.push_bulk(slot, len);
            while let Some(oldest) = self.tun_queue.pop_overflow() {
                let len = self.tun_frame_len[oldest];
                let bytes = &mut self.tun_frames[oldest * MAX_FRAME..oldest * MAX_FRAME + len];
                let packets = Frame {
                    bytes,
                    offload: self.offload,
                }
                .packets();
                self.shared.drops.add(DropReason::QueueFull, packets as u64);
                self.tun_queue.release(oldest);
            }
        }
        true
    }

    /// Splits the frames in `slots` into packets, encrypts them, sends them.
    fn encrypt_frames(&mut self, policy: &PriorityPolicy, slots: impl Iterator<Item = usize>) {
        let mut n = 0;
        for slot in slots {
            let len = self.tun_frame_len[slot];
            let frame = Frame {
                bytes: &mut self.tun_frames[slot * MAX_FRAME..slot * MAX_FRAME + len],
                offload: self.offload,
            };
            match frame.split(
                &mut self.tun_packets[n..],
                &mut self.tun_sizes[n..],
                OFFLOAD_HEADROOM,
            ) {
                Ok(split) => n += split,
                Err(e) => {
                    // A malformed offload header, more segments than buffers, an oversized
                    // packet: that frame is lost.
                    tracing::debug!(error = %e, "TUN frame refused");
                    self.shared.drops.record(DropReason::InvalidTunPacket);
                }
            }
        }
        self.handled += n;
        let table = self.shared.table.load();
        let mut at = 0;
        self.pending.clear();
        for i in 0..n {
            let size = self.tun_sizes[i];
            let packet = &self.tun_packets[i][OFFLOAD_HEADROOM..OFFLOAD_HEADROOM + size];
            let room = size + dataplane::MIN_OUTPUT_LEN;
            let Some(out) = self.send_buf.get_mut(at..at + room) else {
                self.shared.drops.record(DropReason::InvalidTunPacket);
                continue;
            };
            let priority = policy.is_priority_packet(packet);
            let drops = &self.shared.drops;
            let outbound = dataplane::encapsulate(&table, packet, out);
            if book(&mut self.pending, &mut at, outbound, priority, drops) {
                // A LAN broadcast: one copy per member, each in its own session.
                for peer in table.fanout(crate::lan::ipv4_group(packet)) {
                    let Some(out) = self.send_buf.get_mut(at..at + room) else {
                        drops.record(DropReason::QueueFull);
                        break;
                    };
                    let outbound = dataplane::encapsulate_to(peer, packet, out);
                    book(&mut self.pending, &mut at, outbound, priority, drops);
                }
            }
        }
        drop(table);
        self.send_pending();
    }

    /// Sends the queued datagrams: the latency lane first, one at a time; then the bulk, one
    /// GSO send per run of equal-sized datagrams to the same endpoint (the last of a run may
    /// be shorter).
    fn send_pending(&mut self) {
        for p in self.pending.iter().filter(|p| p.priority) {
            let datagram = &self.send_buf[p.start..p.start + p.len];
            if !send_one(&self.udp, datagram, p.to, self.dual_stack) {
                self.shared.drops.record(DropReason::UdpSendFailed);
            }
        }
        let max_segments = self.udp_state.max_gso_segments().clamp(1, MAX_GSO_SEGMENTS);
        let mut i = 0;
        while i < self.pending.len() {
            let first = self.pending[i];
            if first.priority {
                i += 1;
                continue;
            }
            let mut end = i + 1;
            let mut bytes = first.len;
            while end < self.pending.len() && end - i < max_segments {
                let next = self.pending[end];
                let contiguous = next.start == first.start + bytes;
                if next.priority
                    || next.to != first.to
                    || next.len > first.len
                    || !contiguous
                    || bytes + next.len > 65_000
                {
                    break;
                }
                bytes += next.len;
                end += 1;
                if next.len < first.len {
                    break;
                }
            }
            let contents = &self.send_buf[first.start..first.start + bytes];
            let transmit = Transmit {
                destination: for_socket(first.to, self.dual_stack),
                ecn: None,
                contents,
                segment_size: (end - i > 1).then_some(first.len),
                src_ip: None,
            };
            if !send_with_patience(&self.udp_state, &self.udp, &transmit) {
                self.shared
                    .drops
                    .add(DropReason::UdpSendFailed, (end - i) as u64);
            }
            i = end;
        }
        self.pending.clear();
    }

    /// Empties the socket into the free receive slots (when `read`), decrypting the latency
    /// lane's datagrams at once, then decrypts the oldest slot of bulk. Returns whether the
    /// socket may have more.
    fn udp_batch(&mut self, read: bool) -> bool {
        let policy = self.shared.priority.load();
        let (more, urgent) = if read {
            self.receive_slots(&policy)
        } else {
            (false, 0)
        };
        if urgent != 0 {
            self.decrypt(&policy, receive_queue::slots(urgent));
        }
        let turn = self.receive.pop_turn(TURN_BYTES, RECV_SLOTS);
        if !turn.is_empty() {
            self.decrypt(&policy, turn.slots());
            self.receive.release_turn(&turn);
        }
        more
    }

    /// One batched receive into the free slots. Bulk joins the queue (its oldest dropped when
    /// over the bound); returns whether the socket may have more, and the slots of the
    /// latency lane, to decrypt now.
    fn receive_slots(&mut self, policy: &PriorityPolicy) -> (bool, u32) {
        let free = self.receive.free();
        if free == 0 {
            // Full of bulk: decrypt some first. The socket keeps what it has.
            return (true, 0);
        }
        let offered = free.count_ones() as usize;
        let mut meta = [RecvMeta::default(); RECV_SLOTS];
        let n = {
            let mut bufs = self
                .recv_bufs
                .chunks_exact_mut(UDP_RECV_BUF_LEN)
                .enumerate()
                .filter(|(slot, _)| free & (1 << slot) != 0)
                .map(|(_, buf)| buf);
            let mut slices: [IoSliceMut<'_>; RECV_SLOTS] =
                std::array::from_fn(|_| IoSliceMut::new(bufs.next().unwrap_or_default()));
            match recv_into(
                &self.udp_state,
                &self.udp,
                &mut slices[..offered],
                &mut meta[..offered],
            ) {
                Received::Batch(n) => n.min(offered),
                Received::Empty => return (false, 0),
                Received::Retry => return (true, 0),
            }
        };
        let mut urgent = 0u32;
        for (meta, slot) in meta[..n].iter().zip(receive_queue::slots(free)) {
            self.recv_meta[slot] = *meta;
            let len = meta.len.min(UDP_RECV_BUF_LEN);
            // A GRO train holds datagrams of one size (the last may be shorter).
            if policy.is_small_datagram(gro_stride(meta)) {
                urgent |= 1 << slot;
            } else {
                self.receive.push_bulk(slot, len);
            }
        }
        while let Some(slot) = self.receive.pop_overflow() {
            let meta = &self.recv_meta[slot];
            let datagrams = meta.len.min(UDP_RECV_BUF_LEN).div_ceil(gro_stride(meta));
            self.shared
                .drops
                .add(DropReason::QueueFull, datagrams as u64);
            self.receive.release(slot);
        }
        // recvmmsg stops early only when the socket is empty, and every later arrival raises
        // a new edge: a short batch saves the extra receive and poll that would confirm it.
        (n == offered, urgent)
    }

    /// Decrypts the datagrams of the given slots, in that order, and writes their packets to
    /// the TUN queue.
    fn decrypt(&mut self, policy: &PriorityPolicy, slots: impl Iterator<Item = usize>) {
        let table = self.shared.table.load();
        let mut sink = TunSink {
            shared: &self.shared,
            udp: &self.udp,
            dual_stack: self.dual_stack,
            tun: &self.tun,
            tun_out: &mut self.tun_out,
            tun_out_len: 0,
            offload: self.offload,
            gro: &mut self.gro,
            scratch: &mut self.scratch,
        };
        for slot in slots {
            let meta = &self.recv_meta[slot];
            let from = canonical(meta.addr);
            let base = slot * UDP_RECV_BUF_LEN;
            let received = &self.recv_bufs[base..base + meta.len.min(UDP_RECV_BUF_LEN)];
            for datagram in received.chunks(gro_stride(meta)) {
                self.handled += 1;
                sink.handle(&table, policy, from, datagram);
            }
        }
        sink.flush();
    }
}

/// Books an encrypted datagram that was written at `*at` in the send buffer, and moves `*at`
/// past it; counts a drop. Returns whether the packet is a LAN broadcast, for every member.
fn book(
    pending: &mut Vec<Pending>,
    at: &mut usize,
    outbound: Outbound<'_>,
    priority: bool,
    drops: &DropCounters,
) -> bool {
    match outbound {
        Outbound::Send { datagram, to } => {
            let len = datagram.len();
            pending.push(Pending {
                start: *at,
                len,
                to,
                priority,
            });
            *at += len;
        }
        Outbound::Dropped(reason) => drops.record(reason),
        Outbound::Queued => {}
        Outbound::Fanout => return true,
    }
    false
}

/// Where decrypted datagrams go: the TUN write batch, or back out (handshake replies).
struct TunSink<'w> {
    shared: &'w Shared,
    udp: &'w UdpSocket,
    dual_stack: bool,
    tun: &'w SyncDevice,
    tun_out: &'w mut [Vec<u8>],
    /// Packets waiting in `tun_out`; every batch ends with a flush, so a sink starts empty.
    tun_out_len: usize,
    offload: bool,
    gro: &'w mut Coalescer,
    scratch: &'w mut [u8],
}

impl TunSink<'_> {
    fn handle(
        &mut self,
        table: &PeerTable,
        policy: &PriorityPolicy,
        from: SocketAddr,
        datagram: &[u8],
    ) {
        if self.tun_out_len == self.tun_out.len() {
            self.flush();
        }
        let slot = &mut self.tun_out[self.tun_out_len];
        // Plaintext is never longer than its datagram; handshake replies need MIN_OUTPUT_LEN.
        // Sizing to that keeps the zero-fill short.
        slot.resize(
            OFFLOAD_HEADROOM + datagram.len().max(dataplane::MIN_OUTPUT_LEN),
            0,
        );
        match dataplane::decapsulate(table, from, datagram, &mut slot[OFFLOAD_HEADROOM..]) {
            Inbound::ToTun(packet) => {
                let len = packet.len();
                // A large packet on a game's port goes out now, with what is queued before it.
                let urgent = !policy.ports.is_empty() && policy.is_priority_packet(packet);
                slot.truncate(OFFLOAD_HEADROOM + len);
                self.tun_out_len += 1;
                if urgent {
                    self.flush();
                }
            }
            Inbound::Reply {
                datagram: reply,
                to,
                peer,
            } => {
                if !send_one(self.udp, reply, to, self.dual_stack) {
                    self.shared.drops.record(DropReason::UdpSendFailed);
                }
                if let Some(peer) = peer {
                    if matches!(
                        wire::classify(datagram),
                        Datagram::HandshakeInit | Datagram::HandshakeResponse { .. }
                    ) {
                        let _ = self.shared.events.try_send(Event::HandshakeCompleted {
                            public_key: peer.public_key,
                        });
                    }
                    while let Some((queued, to)) = dataplane::flush_queued(&peer, self.scratch) {
                        if !send_one(self.udp, queued, to, self.dual_stack) {
                            self.shared.drops.record(DropReason::UdpSendFailed);
                        }
                    }
                }
            }
            Inbound::Consumed => {}
            Inbound::Control => {
                let (from, payload) = dataplane::control_payload(from, datagram);
                let event = Event::Datagram {
                    from,
                    data: payload.to_vec(),
                };
                if self.shared.events.try_send(event).is_err() {
                    self.shared.drops.record(DropReason::ControlQueueFull);
                }
            }
            Inbound::Dropped(reason) => self.shared.drops.record(reason),
        }
    }

    /// Writes the decrypted packets: with offload, consecutive segments of a flow as one
    /// super-packet gathered in place (`io::gro`); without, one write per packet.
    fn flush(&mut self) {
        let len = std::mem::take(&mut self.tun_out_len);
        let (tun, drops) = (self.tun, &self.shared.drops);
        if !self.offload {
            for slot in &self.tun_out[..len] {
                write_tun(tun, drops, &[IoSlice::new(&slot[OFFLOAD_HEADROOM..])], 1);
            }
            return;
        }
        self.gro.plan(&mut self.tun_out[..len]);
        let batch = &self.tun_out[..len];
        for group in self.gro.groups() {
            let mut iov = [IoSlice::new(&[]); MAX_SEGMENTS];
            let n = self.gro.gather(group, batch, &mut iov);
            write_tun(tun, drops, &iov[..n], group.segments);
        }
    }
}

/// One write to a TUN queue; a failure drops its `packets`, counted. (TUN writes never block:
/// the kernel takes the packet or drops it.)
fn write_tun(tun: &SyncDevice, drops: &DropCounters, iov: &[IoSlice<'_>], packets: usize) {
    if let Err(e) = tun.send_vectored(iov) {
        tracing::debug!(error = %e, "TUN write failed");
        drops.add(DropReason::TunWriteFailed, packets as u64);
    }
}

/// Runs one send, waiting briefly for room when the socket buffer is full: a tunnel that drops
/// under a burst makes TCP inside it back off far more than a short wait does.
pub(crate) fn with_patience(mut send: impl FnMut() -> io::Result<()>) -> bool {
    let mut deadline = None;
    loop {
        match send() {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + SEND_PATIENCE);
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::yield_now();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::trace!(error = %e, "UDP send failed");
                return false;
            }
        }
    }
}

pub(crate) fn send_with_patience(
    state: &UdpSocketState,
    socket: &UdpSocket,
    transmit: &Transmit<'_>,
) -> bool {
    with_patience(|| state.try_send(UdpSockRef::from(socket), transmit))
}

/// Sends a single datagram (handshakes, cookies, packets released after a handshake).
pub fn send_one(socket: &UdpSocket, datagram: &[u8], to: SocketAddr, dual_stack: bool) -> bool {
    let to = for_socket(to, dual_stack);
    with_patience(|| socket.send_to(datagram, to).map(drop))
}
