//! STUN responses as any host on the internet can send them to the WireGuard port: parsing
//! must never panic, what parses keeps its transaction id, and the NAT probe takes anything
//! without panicking, answering only its own transactions.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lanrage_control::nat::probe::NatProbe;
use lanrage_control::nat::stun::parse_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = parse_response(data);
    if let Ok(response) = &parsed {
        assert_eq!(&data[8..20], &response.transaction);
    }
    let server: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    let t0 = Instant::now();
    // The probe's one transaction id is the datagram's own, when it has one: the fuzzer
    // then reaches the answered paths too.
    let id: [u8; 12] = data.get(8..20).and_then(|b| b.try_into().ok()).unwrap_or([0; 12]);
    let mut probe = NatProbe::new(t0, &[server], vec![], || id);
    while probe.poll_transmit(t0).is_some() {}
    let taken = probe.handle_datagram(t0 + Duration::from_millis(5), data);
    assert!(!taken || parsed.is_ok());
    while probe.poll_transmit(t0 + Duration::from_millis(5)).is_some() {}
    let _ = probe.report();
});
