//! The packet path allocates nothing per packet in steady state: a counting global allocator
//! watches 100 000 packets go through the engine's per-packet API (encrypt at one peer,
//! classify, route, decrypt and source-check at the other, both directions, 64 and 1400
//! bytes) and the allocation count must not grow with the packet count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use lanrage_engine::dataplane::{Inbound, Outbound, decapsulate, encapsulate};
use lanrage_engine::loopback::{Loopback, Side};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: defers every operation to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
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
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 0..count {
        let (a_to_b, b_to_a) = &packets[i % packets.len()];
        for (from, to, packet) in [(&pair.a, &pair.b, a_to_b), (&pair.b, &pair.a, b_to_a)] {
            one_way(from, to, packet, &mut wire, &mut plain);
        }
    }
    ALLOCATIONS.load(Ordering::Relaxed) - before
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
