//! Per-datagram cost of the relay's forwarding decision (`lanrage_engine::relay::forward`):
//! header parse, route lookup, source check, byte budget (a compare-exchange on the route's
//! limiter), channel rewrite and route counters, for small and full-size frames, with route
//! tables from one route to a hundred thousand.
//!
//! Frames go round many sessions, so a large table is measured with its lookups spread over
//! memory as a busy relay's are, and each frame goes back the way it came next time (the
//! relay's answer for one direction is the source of the other), as a session's traffic does.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lanrage_engine::relay::{Forward, Gcra, Route, RouteTable, forward};
use lanrage_engine::wire::{RELAY_HEADER_LEN, write_relay_header};

const FRAME_SIZES: [usize; 2] = [100, 1400];
const TABLE_SIZES: [usize; 3] = [1, 1_000, 100_000];
/// Frames in flight, each on its own session (fewer when the table has fewer).
const FRAMES: usize = 1024;
/// Simulated time between two frames: with the budget below, no route is ever limited, so
/// every iteration takes the whole path.
const TICK_NS: u64 = 1_000;

fn addr(i: usize) -> SocketAddr {
    let i = i as u32;
    SocketAddr::from((
        Ipv4Addr::from(0x0a00_0000 | (i >> 8)),
        (i & 0xff) as u16 + 1024,
    ))
}

/// A frame in flight: its bytes and who sends it next.
struct InFlight {
    bytes: Vec<u8>,
    from: SocketAddr,
}

/// A table of `routes` routes (two per session; a single route loops back to its sender) and
/// frames on up to [`FRAMES`] of its sessions, spread over the table.
fn setup(routes: usize, frame_len: usize) -> (RouteTable, Vec<InFlight>) {
    // 10 GB/s per route and a 1 MB burst: the limiter runs but never refuses.
    let limiter = || Arc::new(Gcra::new(10_000_000_000, 1 << 20));
    let channel = |i: usize| (i as u32).wrapping_mul(0x9e37_79b9) | 1;
    let mut table = RouteTable::with_capacity(routes);
    let mut starts = Vec::new();
    if routes == 1 {
        table.insert(
            channel(0),
            Route::new(addr(0), addr(0), channel(0), limiter()),
        );
        starts.push((channel(0), addr(0)));
    } else {
        let sessions = routes / 2;
        for s in 0..sessions {
            let (a, b) = (2 * s, 2 * s + 1);
            table.insert(
                channel(a),
                Route::new(addr(a), addr(b), channel(b), limiter()),
            );
            table.insert(
                channel(b),
                Route::new(addr(b), addr(a), channel(a), limiter()),
            );
        }
        let step = (sessions / FRAMES).max(1);
        for s in (0..sessions).step_by(step).take(FRAMES) {
            starts.push((channel(2 * s), addr(2 * s)));
        }
    }
    let frames = starts
        .into_iter()
        .map(|(channel, from)| {
            let mut bytes = vec![0x5a; frame_len.max(RELAY_HEADER_LEN)];
            assert!(write_relay_header(&mut bytes, channel));
            InFlight { bytes, from }
        })
        .collect();
    (table, frames)
}

fn forward_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay_forward");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for frame_len in FRAME_SIZES {
        for routes in TABLE_SIZES {
            let (table, mut frames) = setup(routes, frame_len);
            assert_eq!(table.len(), routes);
            let id = BenchmarkId::new(format!("{frame_len}B"), format!("{routes}_routes"));
            let in_flight = frames.len();
            let (mut now, mut next) = (0u64, 0usize);
            group.bench_function(id, |bench| {
                bench.iter(|| {
                    let frame = &mut frames[next];
                    next = (next + 1) % in_flight;
                    now += TICK_NS;
                    match forward(&table, now, frame.from, black_box(&mut frame.bytes)) {
                        Forward::To(to) => frame.from = to,
                        other => panic!("frame not forwarded: {other:?}"),
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, forward_bench);
criterion_main!(benches);
