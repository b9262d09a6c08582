//! The relay on real sockets (loopback, no privileges): frames cross between two clients with
//! their channel rewritten, everything else is counted and dropped, control frames reach the
//! control thread, GSO batches come out intact, and the per-datagram decision allocates
//! nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanrage_engine::relay::{
    Forward, Gcra, Relay, RelayConfig, RelayDrop, RelayEvent, Route, RouteTable, forward,
};
use lanrage_engine::wire::{RELAY_HEADER_LEN, write_relay_header};

/// Counts allocations made by the current thread only, so tests running beside each other in
/// this binary do not disturb each other's counts.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: defers every operation to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const A: u32 = 0x5eed_0001;
const B: u32 = 0xcafe_f00d;
const WAIT: Duration = Duration::from_secs(3);

fn frame(channel: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0; RELAY_HEADER_LEN + payload.len()];
    assert!(write_relay_header(&mut f, channel));
    f[RELAY_HEADER_LEN..].copy_from_slice(payload);
    f
}

fn client() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a client socket");
    socket
        .set_read_timeout(Some(WAIT))
        .expect("set a read timeout");
    let addr = socket.local_addr().expect("client address");
    (socket, addr)
}

fn start(threads: usize) -> (Relay, crossbeam_channel::Receiver<RelayEvent>, SocketAddr) {
    let (relay, events) = Relay::start(RelayConfig {
        port: 0,
        threads,
        recv_buffer: 1 << 20,
        event_queue: 64,
    })
    .expect("start the relay");
    let addr = SocketAddr::from(([127, 0, 0, 1], relay.local_port()));
    (relay, events, addr)
}

/// Publishes one session: `one` sends on channel A, `two` on channel B.
fn publish_session(relay: &Relay, one: SocketAddr, two: SocketAddr, limiter: Gcra) {
    let mut table = RouteTable::new();
    table.insert(A, Route::new(one, two, B, Arc::new(limiter)));
    table.insert(B, Route::new(two, one, A, Arc::new(Gcra::unlimited())));
    relay.routes().store(Arc::new(table));
}

/// The next datagram on `socket`, which must come from the relay.
fn receive(socket: &UdpSocket, relay: SocketAddr, what: &str) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    match socket.recv_from(&mut buf) {
        Ok((n, from)) => {
            assert_eq!(from, relay, "{what}: datagram from {from}, not the relay");
            buf.truncate(n);
            buf
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("{what}: nothing arrived within {WAIT:?}")
        }
        Err(e) => panic!("{what}: receive failed: {e}"),
    }
}

/// Waits until the relay has counted `n` drops for `reason`.
fn wait_for_drops(relay: &Relay, reason: RelayDrop, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = relay.counters().get(reason);
        if got >= n {
            assert_eq!(got, n, "more {} drops than expected", reason.name());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} drops: {got} after {WAIT:?}, expected {n}; counters: {:?}",
            reason.name(),
            relay.counters().snapshot()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the relay has counted `n` forwarded datagrams. Counters are added after a
/// batch's sends, so they may trail the datagrams' arrival a little.
fn wait_for_forwarded(relay: &Relay, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = relay.counters().forwarded_packets();
        if got >= n {
            assert_eq!(got, n, "more datagrams forwarded than sent");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{got} datagrams forwarded after {WAIT:?}, expected {n}; counters: {:?}",
            relay.counters().snapshot()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn frames_cross_with_the_channel_rewritten_and_the_rest_is_counted() {
    let (relay, events, relay_addr) = start(2);
    let (one, one_addr) = client();
    let (two, two_addr) = client();
    let (third, third_addr) = client();
    publish_session(&relay, one_addr, two_addr, Gcra::unlimited());

    for i in 0..50usize {
        let payload: Vec<u8> = (0..(i * 29) % 1400).map(|b| (b + i) as u8).collect();
        one.send_to(&frame(A, &payload), relay_addr).unwrap();
        let got = receive(&two, relay_addr, "client 1 → client 2");
        assert_eq!(got, frame(B, &payload), "client 1 → client 2, frame {i}");
        two.send_to(&frame(B, &payload), relay_addr).unwrap();
        let got = receive(&one, relay_addr, "client 2 → client 1");
        assert_eq!(got, frame(A, &payload), "client 2 → client 1, frame {i}");
    }

    // A third party that knows channel A gets nothing through.
    third.send_to(&frame(A, b"forged"), relay_addr).unwrap();
    wait_for_drops(&relay, RelayDrop::WrongSource, 1);
    one.send_to(&frame(A, b"marker"), relay_addr).unwrap();
    assert_eq!(
        receive(&two, relay_addr, "marker after a forged frame"),
        frame(B, b"marker"),
        "the forged frame (from {third_addr}) was delivered"
    );

    one.send_to(&frame(0x0bad_c0de, b"x"), relay_addr).unwrap();
    wait_for_drops(&relay, RelayDrop::UnknownChannel, 1);
    one.send_to(b"hello, relay", relay_addr).unwrap();
    wait_for_drops(&relay, RelayDrop::NotRelayFrame, 1);
    one.send_to(b"LRrd\x00", relay_addr).unwrap();
    wait_for_drops(&relay, RelayDrop::Malformed, 1);

    let bind = b"LRrb bind request".to_vec();
    one.send_to(&bind, relay_addr).unwrap();
    match events.recv_timeout(WAIT) {
        Ok(RelayEvent::Datagram { from, local, data }) => {
            assert_eq!(from, one_addr);
            assert_eq!(
                local,
                Some(relay_addr.ip()),
                "the address the frame came to"
            );
            assert_eq!(data, bind);
        }
        Err(e) => panic!("no control event within {WAIT:?}: {e}"),
    }

    wait_for_forwarded(&relay, 101);
    let counters = relay.counters().snapshot();
    assert_eq!(counters.dropped(RelayDrop::SendFailed), 0);
    assert_eq!(counters.dropped(RelayDrop::ControlQueueFull), 0);
    let table = relay.routes().load();
    assert_eq!(table.get(A).map(|r| r.stats.packets()), Some(51));
    assert_eq!(table.get(B).map(|r| r.stats.packets()), Some(50));
}

#[test]
fn a_route_over_its_budget_is_rate_limited() {
    let (relay, _events, relay_addr) = start(1);
    let (one, one_addr) = client();
    let (two, two_addr) = client();
    // A trickle of 1 B/s with room for two 100-byte frames.
    publish_session(&relay, one_addr, two_addr, Gcra::new(1, 200));
    for _ in 0..5 {
        one.send_to(&frame(A, &[1; 92]), relay_addr).unwrap();
    }
    wait_for_drops(&relay, RelayDrop::RateLimited, 3);
    for i in 0..2 {
        let got = receive(&two, relay_addr, "frame within the burst");
        assert_eq!(got, frame(B, &[1; 92]), "frame {i}");
    }
    assert_eq!(
        relay.routes().load().get(A).unwrap().stats.rate_limited(),
        3
    );
}

#[test]
fn gso_batches_are_forwarded_intact() {
    let (relay, _events, relay_addr) = start(1);
    let (one, one_addr) = client();
    let (two, two_addr) = client();
    publish_session(&relay, one_addr, two_addr, Gcra::unlimited());

    // Twenty 1000-byte frames and a shorter last one, sent as one GSO super-datagram when the
    // kernel allows, so the relay receives them coalesced (GRO) and forwards them as a run.
    const SEGMENT: usize = 1000;
    let frames: Vec<Vec<u8>> = (0..21)
        .map(|i| {
            let len = if i == 20 {
                300
            } else {
                SEGMENT - RELAY_HEADER_LEN
            };
            frame(A, &vec![i as u8; len])
        })
        .collect();
    let state = quinn_udp::UdpSocketState::new((&one).into()).expect("quinn-udp state");
    if state.max_gso_segments() >= frames.len() {
        let contents = frames.concat();
        let transmit = quinn_udp::Transmit {
            destination: relay_addr,
            ecn: None,
            contents: &contents,
            segment_size: Some(SEGMENT),
            src_ip: None,
        };
        state
            .try_send((&one).into(), &transmit)
            .expect("GSO send to the relay");
    } else {
        for f in &frames {
            one.send_to(f, relay_addr).unwrap();
        }
    }
    for (i, sent) in frames.iter().enumerate() {
        let got = receive(&two, relay_addr, "GSO batch");
        let mut expected = sent.clone();
        assert!(write_relay_header(&mut expected, B));
        assert_eq!(got, expected, "frame {i} of the batch");
    }
    wait_for_forwarded(&relay, 21);
    let counters = relay.counters().snapshot();
    assert_eq!(counters.forwarded_bytes, 20 * SEGMENT as u64 + 308);
}

#[test]
fn control_replies_leave_from_the_relay_port_and_drop_frees_it() {
    let (relay, _events, relay_addr) = start(2);
    let (one, one_addr) = client();
    relay
        .send_datagram(one_addr, Some(relay_addr.ip()), b"LRrb ack")
        .expect("send a control reply");
    assert_eq!(receive(&one, relay_addr, "control reply"), b"LRrb ack");
    let port = relay.local_port();
    drop(relay);
    // Every worker has been joined and every socket closed: the port is free again.
    UdpSocket::bind(("127.0.0.1", port)).expect("the relay's port is still held after drop");
}

#[test]
fn forwarding_allocates_nothing() {
    let one: SocketAddr = "192.0.2.1:1000".parse().unwrap();
    let two: SocketAddr = "192.0.2.2:2000".parse().unwrap();
    let mut table = RouteTable::new();
    table.insert(
        A,
        Route::new(one, two, B, Arc::new(Gcra::new(1 << 40, 1 << 20))),
    );
    table.insert(B, Route::new(two, one, A, Arc::new(Gcra::unlimited())));
    let mut frames = [frame(A, &[0; 92]), frame(A, &[0; 1392])];
    let mut garbage = *b"not a relay frame";
    let before = allocations();
    for i in 0..100_000u64 {
        let f = &mut frames[(i % 2) as usize];
        let from = if i % 4 < 2 { one } else { two };
        let expected = if from == one { two } else { one };
        assert_eq!(forward(&table, i * 1_000, from, f), Forward::To(expected));
        let refused = forward(&table, i * 1_000, one, &mut garbage);
        assert_eq!(refused, Forward::Drop(RelayDrop::NotRelayFrame));
    }
    assert_eq!(allocations() - before, 0, "forward allocated");
}
