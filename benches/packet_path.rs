//! Per-packet cost of the engine's packet path beside bare `boringtun::noise::Tunn`, so the
//! engine's own overhead (classification, allowed-IPs routing, peer lookup and lock, source
//! check, counters) is visible.
//!
//! `encapsulate`: TUN packet → encrypted datagram. `round_trip`: encrypt at one peer and
//! decrypt at the other (decryption cannot be measured alone: replay protection refuses a
//! datagram seen before).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lanrage_engine::dataplane::{Inbound, Outbound, decapsulate, encapsulate};
use lanrage_engine::loopback::Loopback;

const SIZES: [usize; 2] = [64, 1400];

/// Two bare sessions with a completed handshake.
fn bare_pair() -> (Tunn, Tunn) {
    let (sa, sb) = (StaticSecret::from([1; 32]), StaticSecret::from([2; 32]));
    let (pa, pb) = (PublicKey::from(&sa), PublicKey::from(&sb));
    let mut a = Tunn::new(sa, pb, None, None, 1, None);
    let mut b = Tunn::new(sb, pa, None, None, 2, None);
    let (mut x, mut y) = (vec![0u8; 2048], vec![0u8; 2048]);
    let TunnResult::WriteToNetwork(init) = a.format_handshake_initiation(&mut x, false) else {
        panic!("no initiation");
    };
    let TunnResult::WriteToNetwork(response) = b.decapsulate(None, init, &mut y) else {
        panic!("no response");
    };
    let TunnResult::WriteToNetwork(keepalive) = a.decapsulate(None, response, &mut x) else {
        panic!("no keepalive");
    };
    let mut z = vec![0u8; 2048];
    let _ = b.decapsulate(None, keepalive, &mut z);
    (a, b)
}

fn packet(len: usize) -> Vec<u8> {
    lanrage_engine::loopback::ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], len)
}

fn encapsulate_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("encapsulate");
    for len in SIZES {
        group.throughput(Throughput::Bytes(len as u64));
        let plain = packet(len);
        let mut out = vec![0u8; 2048];

        let (mut a, _b) = bare_pair();
        group.bench_with_input(BenchmarkId::new("bare_tunn", len), &plain, |bench, p| {
            bench.iter(|| match a.encapsulate(black_box(p), &mut out) {
                TunnResult::WriteToNetwork(d) => d.len(),
                _ => 0,
            })
        });

        let pair = Loopback::connected();
        group.bench_with_input(BenchmarkId::new("engine", len), &plain, |bench, p| {
            bench.iter(
                || match encapsulate(&pair.a.table, black_box(p), &mut out) {
                    Outbound::Send { datagram, .. } => datagram.len(),
                    _ => 0,
                },
            )
        });
    }
    group.finish();
}

fn round_trip_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip");
    let from = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    for len in SIZES {
        group.throughput(Throughput::Bytes(len as u64));
        let plain = packet(len);
        let (mut wire, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);

        let (mut a, mut b) = bare_pair();
        group.bench_with_input(BenchmarkId::new("bare_tunn", len), &plain, |bench, p| {
            bench.iter(|| {
                let TunnResult::WriteToNetwork(d) = a.encapsulate(black_box(p), &mut wire) else {
                    return 0;
                };
                match b.decapsulate(Some(from), d, &mut out) {
                    TunnResult::WriteToTunnelV4(p, _) => p.len(),
                    _ => 0,
                }
            })
        });

        let pair = Loopback::connected();
        group.bench_with_input(BenchmarkId::new("engine", len), &plain, |bench, p| {
            bench.iter(|| {
                let Outbound::Send { datagram, .. } =
                    encapsulate(&pair.a.table, black_box(p), &mut wire)
                else {
                    return 0;
                };
                match decapsulate(&pair.b.table, pair.a.addr, datagram, &mut out) {
                    Inbound::ToTun(p) => p.len(),
                    _ => 0,
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encapsulate_bench, round_trip_bench);
criterion_main!(benches);
