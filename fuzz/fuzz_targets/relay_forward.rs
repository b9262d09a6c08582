//! Datagrams as anyone can send them to a relay's port, through the relay's per-datagram
//! decision (`lanrage_engine::relay::forward`) over a small route table built from the input:
//! it never panics, and
//!
//! - the datagram keeps its length and nothing past it is written (the relay never sends more
//!   than it received);
//! - a forwarded datagram differs from what arrived in its 4 channel bytes at most, and now
//!   carries the route's outgoing channel;
//! - `Forward::To` goes only to the `to` of the route of the datagram's channel, and only when
//!   the datagram came from that route's `from` (IPv4-mapped sources matching their IPv4 form);
//! - anything not forwarded is left untouched, and only `LRrb` frames go to the control thread.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;

use lanrage_engine::io::udp::canonical;
use lanrage_engine::relay::{Forward, Gcra, Route, RouteTable, forward};
use lanrage_engine::wire::{RELAY_CONTROL_MAGIC, RELAY_DATA_MAGIC, RELAY_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

#[path = "common/input.rs"]
mod input;
use input::Input;

fn addrs() -> [SocketAddr; 6] {
    [
        "198.51.100.1:4000",
        "198.51.100.1:4001",
        "[::ffff:198.51.100.1]:4000",
        "203.0.113.2:5000",
        "[2001:db8::7]:6000",
        "192.0.2.66:6666",
    ]
    .map(|s| s.parse().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let addrs = addrs();
    let pick = |b: u8| addrs[usize::from(b) % addrs.len()];

    // One to four routes, channels and addresses from the input (so that datagrams can name
    // them), some rate-limited.
    let mut table = RouteTable::new();
    let routes = input.byte() % 4 + 1;
    for _ in 0..routes {
        let channel = input.u32();
        let (from, to) = (pick(input.byte()), pick(input.byte()));
        let out_channel = input.u32();
        let limit = input.byte();
        let limiter = if limit & 0x80 == 0 {
            Gcra::unlimited()
        } else {
            Gcra::new(
                u64::from(limit & 0x7f) * 1_000,
                u64::from(input.byte()) * 16,
            )
        };
        table.insert(
            channel,
            Route::new(from, to, out_channel, Arc::new(limiter)),
        );
    }

    let mut now_ns = 0u64;
    let mut buf = [0u8; 1600];
    while !input.is_empty() {
        let from = pick(input.byte());
        now_ns += u64::from(input.byte()) * 100_000;
        let shape = input.byte();
        let len = usize::from(input.byte()) % 200 + if shape & 0x80 != 0 { 1300 } else { 0 };
        buf.fill(0xee);
        let body = input.bytes(len);
        let len = body.len();
        buf[..len].copy_from_slice(body);
        // Often make it look like a data frame on a known channel, so the checks behind the
        // header are reached.
        match shape % 4 {
            0 if len >= RELAY_HEADER_LEN => {
                buf[..4].copy_from_slice(&RELAY_DATA_MAGIC);
                let known: Vec<u32> = table.iter().map(|(c, _)| c).collect();
                let channel = known[usize::from(shape >> 2) % known.len()];
                buf[4..8].copy_from_slice(&channel.to_be_bytes());
            }
            1 if len >= 4 => buf[..4].copy_from_slice(&RELAY_DATA_MAGIC),
            _ => {}
        }
        let before = buf;

        let decision = forward(&table, now_ns, from, &mut buf[..len]);

        assert_eq!(buf[len..], before[len..], "written past the datagram");
        match decision {
            Forward::To(to) => {
                assert!(len >= RELAY_HEADER_LEN);
                assert_eq!(buf[..4], RELAY_DATA_MAGIC);
                assert_eq!(buf[..4], before[..4]);
                assert_eq!(buf[8..len], before[8..len], "payload changed");
                let channel = u32::from_be_bytes(before[4..8].try_into().unwrap());
                let route = table
                    .get(channel)
                    .expect("forwarded on a channel with no route");
                assert_eq!(canonical(from), route.from, "forwarded from a stranger");
                assert_eq!(
                    to, route.to,
                    "forwarded somewhere else than the route's peer"
                );
                assert_eq!(buf[4..8], route.out_channel.to_be_bytes());
            }
            Forward::Control => {
                assert_eq!(buf, before, "a control frame was rewritten");
                assert!(buf[..len].starts_with(&RELAY_CONTROL_MAGIC));
            }
            Forward::Drop(_) => assert_eq!(buf, before, "a dropped datagram was rewritten"),
        }
    }
});
