//! The relay's threads: one per SO_REUSEPORT socket, each with its own `mio::Poll` and its own
//! buffers, allocated once. A worker receives a batch (recvmmsg, GRO), decides each datagram
//! in place in the receive buffer, and sends each run of same-sized datagrams to one address
//! as one GSO send: trains that GRO coalesced straight out of that buffer, lone datagrams
//! gathered into a staging buffer first (one small copy instead of one system call each).

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};

use crate::io::udp::{
    self, RECV_BUF_LEN, RECV_BUFS, Received, canonical, for_socket, gro_stride, recv_batch,
};
use crate::rate_limit;
use crate::relay::forward::{Forward, RelayCounters, RelayDrop, forward};
use crate::relay::route::RouteTable;
use crate::worker::{MAX_GSO_SEGMENTS, WorkerHandle, send_with_patience};

const UDP: Token = Token(0);
const WAKE: Token = Token(1);

/// Forwarded datagrams queued before they are sent. A batch can hold far more tiny datagrams
/// than this; the queue is sent whenever it fills, so it never grows.
const PENDING: usize = 1024;
/// Largest GSO send: the kernel refuses a super-datagram over 64 KiB with its headers.
const MAX_GSO_BYTES: usize = 65_000;

/// How the relay runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// UDP port for every socket (0 picks a free one).
    pub port: u16,
    /// Worker threads, one SO_REUSEPORT socket each (0 means 1).
    pub threads: usize,
    /// Receive buffer per socket, in bytes (see [`udp::DEFAULT_RECV_BUFFER`] for why small).
    pub recv_buffer: usize,
    /// Control frames queued for the control thread before new ones are dropped (0 means 1).
    pub event_queue: usize,
}

/// What the workers hand to the relay's control thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// A control frame (starting with [`crate::wire::RELAY_CONTROL_MAGIC`]) from `from`
    /// (canonical: IPv4 rather than IPv4-mapped IPv6), sent to our address `local` (answer
    /// from there: a NAT in front of the client admits nothing from another address).
    Datagram {
        from: SocketAddr,
        local: Option<IpAddr>,
        data: Vec<u8>,
    },
}

/// A running relay. Dropping it stops and joins its workers.
pub struct Relay {
    routes: Arc<ArcSwap<RouteTable>>,
    counters: Arc<RelayCounters>,
    /// The first worker's socket, shared for the control thread's replies: they leave from
    /// the relay's port, where clients expect them.
    socket: Arc<UdpSocket>,
    state: UdpSocketState,
    dual_stack: bool,
    port: u16,
    workers: Vec<WorkerHandle>,
}

impl Relay {
    /// Binds `config.threads` sockets to `config.port` and starts one worker on each, with an
    /// empty route table. Control frames arrive on the returned receiver.
    pub fn start(config: RelayConfig) -> io::Result<(Relay, Receiver<RelayEvent>)> {
        let sockets = udp::bind_group(config.port, config.threads.max(1), 0, config.recv_buffer)?;
        let sockets: Vec<Arc<UdpSocket>> = sockets.into_iter().map(Arc::new).collect();
        let socket = sockets
            .first()
            .cloned()
            .ok_or_else(|| io::Error::other("relay: no socket bound"))?;
        let local = socket.local_addr()?;
        let (events, receiver) = crossbeam_channel::bounded(config.event_queue.max(1));
        let state = UdpSocketState::new(UdpSockRef::from(&*socket))?;
        let mut relay = Relay {
            routes: Arc::new(ArcSwap::from_pointee(RouteTable::new())),
            counters: Arc::default(),
            socket,
            state,
            dual_stack: local.is_ipv6(),
            port: local.port(),
            workers: Vec::with_capacity(sockets.len()),
        };
        for (id, socket) in sockets.into_iter().enumerate() {
            // On failure, dropping `relay` stops the workers already started.
            let worker = RelayWorker::spawn(
                id,
                socket,
                relay.routes.clone(),
                relay.counters.clone(),
                events.clone(),
            )?;
            relay.workers.push(worker);
        }
        Ok((relay, receiver))
    }

    /// The route table: the control thread publishes a new one with `store`; workers load it
    /// once per receive batch.
    pub fn routes(&self) -> &Arc<ArcSwap<RouteTable>> {
        &self.routes
    }

    pub fn counters(&self) -> &Arc<RelayCounters> {
        &self.counters
    }

    pub fn local_port(&self) -> u16 {
        self.port
    }

    /// Sends one datagram from the relay's port and from `local` (the address the request
    /// came to; `None`: the kernel's choice), for bind acknowledgements and other control
    /// replies, waiting briefly for room in a full socket buffer.
    pub fn send_datagram(
        &self,
        to: SocketAddr,
        local: Option<IpAddr>,
        data: &[u8],
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination: for_socket(to, self.dual_stack),
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: local,
        };
        if send_with_patience(&self.state, &self.socket, &transmit) {
            Ok(())
        } else {
            Err(io::Error::other("socket buffer full or send refused"))
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Ask every worker first, so that they wind down together.
        for worker in &self.workers {
            worker.stop.store(true, Ordering::Release);
        }
        for worker in self.workers.drain(..) {
            worker.stop();
        }
    }
}

/// Where one forwarded datagram sits in the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    start: usize,
    len: usize,
    to: SocketAddr,
    /// The address it came to: it leaves from there too, because the other side sent to
    /// that same announced address and its NAT admits nothing from another (a relay host
    /// has several addresses, and the kernel would pick by route).
    src: Option<IpAddr>,
    /// Gathered into the staging buffer (a lone datagram) rather than left in the receive
    /// buffer (a GRO train).
    staged: bool,
}

/// Counts gathered over one batch and added to the shared counters once at its end.
#[derive(Default)]
struct Tally {
    drops: [u64; RelayDrop::ALL.len()],
    packets: u64,
    bytes: u64,
}

impl Tally {
    fn count_drop(&mut self, reason: RelayDrop, n: u64) {
        self.drops[reason as usize] += n;
    }

    fn flush(&mut self, counters: &RelayCounters) {
        for (reason, n) in RelayDrop::ALL.into_iter().zip(&mut self.drops) {
            if *n != 0 {
                counters.add(reason, std::mem::take(n));
            }
        }
        if self.packets != 0 {
            counters.add_forwarded(self.packets, self.bytes);
            (self.packets, self.bytes) = (0, 0);
        }
    }
}

struct RelayWorker {
    socket: Arc<UdpSocket>,
    state: UdpSocketState,
    dual_stack: bool,
    routes: Arc<ArcSwap<RouteTable>>,
    counters: Arc<RelayCounters>,
    events: Sender<RelayEvent>,
    stop: Arc<AtomicBool>,
    poll: Poll,
    recv_bufs: Vec<u8>,
    recv_meta: Vec<RecvMeta>,
    /// Lone datagrams copied back to back, so that a burst to one address leaves in one GSO
    /// send instead of one system call each (trains that GRO coalesced stay where they are).
    stage: Vec<u8>,
    staged_len: usize,
    pending: Vec<Pending>,
    tally: Tally,
}

impl RelayWorker {
    /// Builds a worker and its buffers (everything the packet path needs is allocated here)
    /// and starts its thread.
    fn spawn(
        id: usize,
        socket: Arc<UdpSocket>,
        routes: Arc<ArcSwap<RouteTable>>,
        counters: Arc<RelayCounters>,
        events: Sender<RelayEvent>,
    ) -> io::Result<WorkerHandle> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        poll.registry()
            .register(&mut SourceFd(&socket.as_raw_fd()), UDP, Interest::READABLE)?;
        let state = UdpSocketState::new(UdpSockRef::from(&*socket))?;
        let dual_stack = socket.local_addr()?.is_ipv6();
        let stop = Arc::new(AtomicBool::new(false));
        let mut worker = RelayWorker {
            socket,
            state,
            dual_stack,
            routes,
            counters,
            events,
            stop: stop.clone(),
            poll,
            recv_bufs: vec![0; RECV_BUFS * RECV_BUF_LEN],
            stage: vec![0; RECV_BUFS * RECV_BUF_LEN],
            staged_len: 0,
            recv_meta: vec![RecvMeta::default(); RECV_BUFS],
            pending: Vec::with_capacity(PENDING),
            tally: Tally::default(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("lanrage-rl{id}"))
            .spawn(move || worker.run())?;
        Ok(WorkerHandle {
            stop,
            waker,
            thread,
        })
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(4);
        // Drain whatever arrived before registration (edge-triggered readiness).
        let mut ready = true;
        while !self.stop.load(Ordering::Acquire) {
            let timeout = ready.then_some(Duration::ZERO);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "relay worker poll failed; worker stops");
                return;
            }
            ready |= events.iter().any(|e| e.token() == UDP);
            if ready {
                ready = self.batch();
            }
        }
    }

    /// Receives one batch, forwards it, hands control frames over. Returns whether the socket
    /// may have more.
    fn batch(&mut self) -> bool {
        let n = match recv_batch(
            &self.state,
            &self.socket,
            &mut self.recv_bufs,
            &mut self.recv_meta,
        ) {
            Received::Batch(n) => n,
            Received::Empty => return false,
            Received::Retry => return true,
        };
        let table = self.routes.load();
        // One clock for every worker: the routes' limiters are shared between them.
        let now_ns = rate_limit::now_ns();
        for m in 0..n.min(RECV_BUFS) {
            let meta = self.recv_meta[m];
            let from = canonical(meta.addr);
            let start = m * RECV_BUF_LEN;
            let end = start + meta.len.min(RECV_BUF_LEN);
            // GRO: equal-sized datagrams back to back, the last one possibly shorter.
            let stride = gro_stride(&meta);
            let mut at = start;
            loop {
                let next = at.saturating_add(stride).min(end);
                let datagram = &mut self.recv_bufs[at..next];
                match forward(&table, now_ns, from, datagram) {
                    Forward::To(to) => {
                        if self.pending.len() == PENDING {
                            self.send_pending();
                        }
                        let len = next - at;
                        // A datagram alone in its receive buffer: copy it (at most one MTU,
                        // cheaper than the system call it saves) beside the others.
                        let lone = len == end - start;
                        let (start, staged) = if lone {
                            let s = self.staged_len;
                            self.stage[s..s + len].copy_from_slice(&self.recv_bufs[at..next]);
                            self.staged_len += len;
                            (s, true)
                        } else {
                            (at, false)
                        };
                        self.pending.push(Pending {
                            start,
                            len,
                            to,
                            src: meta.dst_ip,
                            staged,
                        });
                    }
                    Forward::Control => {
                        let event = RelayEvent::Datagram {
                            from,
                            local: meta.dst_ip.map(|ip| canonical(SocketAddr::new(ip, 0)).ip()),
                            data: datagram.to_vec(),
                        };
                        // Full, or the control thread is gone: either way nobody will read it.
                        if self.events.try_send(event).is_err() {
                            self.tally.count_drop(RelayDrop::ControlQueueFull, 1);
                        }
                    }
                    Forward::Drop(reason) => self.tally.count_drop(reason, 1),
                }
                at = next;
                if at >= end {
                    break;
                }
            }
        }
        self.send_pending();
        drop(table);
        self.tally.flush(&self.counters);
        // recvmmsg stops early only when the socket is empty, and every later arrival raises
        // a new edge: a short batch saves the extra receive and poll that would confirm it.
        n == RECV_BUFS
    }

    /// Sends the queued datagrams, GRO trains straight from the receive buffer and lone
    /// datagrams from the staging buffer: one GSO send per run.
    fn send_pending(&mut self) {
        let max_segments = self.state.max_gso_segments().clamp(1, MAX_GSO_SEGMENTS);
        let mut rest = &self.pending[..];
        while let Some(first) = rest.first() {
            let (count, bytes) = gso_run(rest, max_segments);
            let buf = if first.staged {
                &self.stage
            } else {
                &self.recv_bufs
            };
            let transmit = Transmit {
                destination: for_socket(first.to, self.dual_stack),
                ecn: None,
                contents: &buf[first.start..first.start + bytes],
                segment_size: (count > 1).then_some(first.len),
                src_ip: first.src,
            };
            if send_with_patience(&self.state, &self.socket, &transmit) {
                self.tally.packets += count as u64;
                self.tally.bytes += bytes as u64;
            } else {
                self.tally.count_drop(RelayDrop::SendFailed, count as u64);
            }
            rest = &rest[count..];
        }
        self.pending.clear();
        self.staged_len = 0;
    }
}

/// How many datagrams from the start of `pending` go out as one GSO send, and their bytes:
/// consecutive datagrams to the same address, back to back in the buffer, all the size of the
/// first but the last, which may be shorter (as the kernel splits a GSO send), within the
/// kernel's segment and size limits. At least one when `pending` is not empty.
fn gso_run(pending: &[Pending], max_segments: usize) -> (usize, usize) {
    let Some(first) = pending.first() else {
        return (0, 0);
    };
    let (mut count, mut bytes) = (1, first.len);
    for next in &pending[1..] {
        if count >= max_segments
            || next.to != first.to
            || next.src != first.src
            || next.staged != first.staged
            || next.len > first.len
            || next.start != first.start + bytes
            || bytes + next.len > MAX_GSO_BYTES
        {
            break;
        }
        count += 1;
        bytes += next.len;
        if next.len < first.len {
            break;
        }
    }
    (count, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn run(starts_lens: &[(usize, usize, u16)]) -> Vec<Pending> {
        starts_lens
            .iter()
            .map(|&(start, len, port)| Pending {
                start,
                len,
                to: to(port),
                src: None,
                staged: false,
            })
            .collect()
    }

    #[test]
    fn equal_contiguous_datagrams_to_one_address_make_one_run() {
        let p = run(&[(0, 100, 1), (100, 100, 1), (200, 100, 1), (300, 40, 1)]);
        assert_eq!(gso_run(&p, 64), (4, 340));
    }

    #[test]
    fn a_shorter_datagram_ends_the_run() {
        let p = run(&[(0, 100, 1), (100, 50, 1), (150, 50, 1)]);
        assert_eq!(gso_run(&p, 64), (2, 150));
        assert_eq!(gso_run(&p[2..], 64), (1, 50));
    }

    #[test]
    fn runs_break_on_address_size_gap_and_limits() {
        assert_eq!(gso_run(&run(&[(0, 100, 1), (100, 100, 2)]), 64), (1, 100));
        assert_eq!(gso_run(&run(&[(0, 100, 1), (100, 120, 1)]), 64), (1, 100));
        assert_eq!(gso_run(&run(&[(0, 100, 1), (108, 100, 1)]), 64), (1, 100));
        let many: Vec<_> = (0..100).map(|i| (i * 100, 100, 1)).collect();
        assert_eq!(gso_run(&run(&many), 64), (64, 6400));
        assert_eq!(gso_run(&run(&many), 1), (1, 100));
        let big: Vec<_> = (0..64).map(|i| (i * 1400, 1400, 1)).collect();
        assert_eq!(gso_run(&run(&big), 64), (46, 64_400));
        assert_eq!(gso_run(&[], 64), (0, 0));
    }

    #[test]
    fn tally_flushes_once_and_resets() {
        let counters = RelayCounters::default();
        let mut tally = Tally::default();
        tally.count_drop(RelayDrop::WrongSource, 2);
        tally.packets = 3;
        tally.bytes = 300;
        tally.flush(&counters);
        tally.flush(&counters);
        assert_eq!(counters.get(RelayDrop::WrongSource), 2);
        assert_eq!(counters.forwarded_packets(), 3);
        assert_eq!(counters.forwarded_bytes(), 300);
    }
}
