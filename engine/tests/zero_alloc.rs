//! The packet path allocates nothing per packet in steady state: a counting global allocator
//! watches 100 000 packets go through the engine's per-packet API (encrypt at one peer,
//! classify, route, decrypt and source-check at the other, both directions, 64 and 1400
//! bytes) and the allocation count must not grow with the packet count. The same holds for
//! coalescing decrypted packets into TUN writes. Allocations are counted per thread, so the
//! test harness's own threads do not count against a test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use lanrage_engine::dataplane::{Inbound, Outbound, decapsulate, encapsulate};
use lanrage_engine::loopback::{Loopback, Side};

struct Counting;

thread_local! {
    /// Counted per thread: the test harness's own threads (starting tests, reporting
    /// results) allocate while a test measures, and must not count against it.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // A const-initialised Cell has no destructor, so this works at any point of a thread's
    // life; `try_with` keeps the allocator from ever panicking regardless.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

/// Allocations made by the calling thread so far.
fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: defers every operation to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Sends `count` packets each way and returns how many allocations that took.
fn allocations_for(pair: &Loopback, count: usize, packets: &[(Vec<u8>, Vec<u8>)]) -> u64 {
    let mut wire = vec![0u8; 2048];
    let mut plain = vec![0u8; 2048];
    let before = allocations();
    for i in 0..count {
        let (a_to_b, b_to_a) = &packets[i % packets.len()];
        for (from, to, packet) in [(&pair.a, &pair.b, a_to_b), (&pair.b, &pair.a, b_to_a)] {
            one_way(from, to, packet, &mut wire, &mut plain);
        }
    }
    allocations() - before
}

fn one_way(from: &Side, to: &Side, packet: &[u8], wire: &mut [u8], plain: &mut [u8]) {
    let Outbound::Send { datagram, .. } = encapsulate(&from.table, packet, wire) else {
        panic!("packet not sent");
    };
    match decapsulate(&to.table, from.addr, datagram, plain) {
        Inbound::ToTun(p) => assert_eq!(p.len(), packet.len()),
        other => panic!("packet not delivered: {other:?}"),
    }
}

#[test]
fn steady_state_packet_path_does_not_allocate() {
    let pair = Loopback::connected();
    let packets: Vec<(Vec<u8>, Vec<u8>)> = [64, 1400]
        .into_iter()
        .map(|len| {
            (
                pair.a.packet_to(&pair.b, len),
                pair.b.packet_to(&pair.a, len),
            )
        })
        .collect();
    // Warm up: lazily built state (thread-locals, the peer table's first load).
    allocations_for(&pair, 1_000, &packets);
    let small = allocations_for(&pair, 10_000, &packets);
    let large = allocations_for(&pair, 100_000, &packets);
    assert_eq!(
        (small, large),
        (0, 0),
        "allocations per run of 10k and 100k packets each way"
    );
}

/// A UDP/IPv4 datagram of `payload` bytes with its checksums filled in, so that the coalescer
/// may merge it.
fn checksummed_udp(payload: usize) -> Vec<u8> {
    let mut p =
        lanrage_engine::loopback::ipv4_packet([100, 64, 0, 1], [100, 64, 0, 2], 28 + payload);
    let udp_len = (8 + payload) as u16;
    let ip_check = !tun_rs::checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_check.to_be_bytes());
    p[20..22].copy_from_slice(&6112u16.to_be_bytes());
    p[22..24].copy_from_slice(&6112u16.to_be_bytes());
    p[24..26].copy_from_slice(&udp_len.to_be_bytes());
    let pseudo = tun_rs::checksum_no_fold(&p[12..20], 17 + u64::from(udp_len));
    let check = !tun_rs::checksum(&p[20..], pseudo);
    p[26..28].copy_from_slice(&check.to_be_bytes());
    p
}

#[test]
fn coalescing_tun_writes_does_not_allocate() {
    use lanrage_engine::io::gro::{Coalescer, MAX_SEGMENTS};
    use lanrage_engine::io::tun::OFFLOAD_HEADROOM;
    use std::io::IoSlice;

    let packet = checksummed_udp(100);
    let mut slots: Vec<Vec<u8>> = (0..128)
        .map(|_| [&[0u8; OFFLOAD_HEADROOM][..], &packet].concat())
        .collect();
    let mut coalescer = Coalescer::new(slots.len(), true);
    let mut run = |rounds: usize| {
        let before = allocations();
        let mut writes = 0;
        for _ in 0..rounds {
            // Each round starts from unmerged packets, as a fresh batch would.
            for slot in &mut slots {
                slot[OFFLOAD_HEADROOM..].copy_from_slice(&packet);
            }
            coalescer.plan(&mut slots);
            for group in coalescer.groups() {
                let mut iov = [IoSlice::new(&[]); MAX_SEGMENTS];
                writes += coalescer.gather(group, &slots, &mut iov).min(1);
            }
        }
        (allocations() - before, writes)
    };
    run(10);
    let (allocations, writes) = run(1_000);
    // 128 datagrams of one flow: two super-packets of 64 per batch.
    assert_eq!(writes, 2_000);
    assert_eq!(
        allocations, 0,
        "allocations across 1000 batches of 128 packets"
    );
}
