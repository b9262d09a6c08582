//! Arbitrary datagrams on the WireGuard port and arbitrary packets from the TUN device, through
//! demultiplexing and the whole packet path of a peer with an established session, the two
//! members on one party LAN (so broadcasts and multicast fan out).
#![no_main]

use std::sync::{Arc, OnceLock};

use lanrage_engine::dataplane::{Inbound, decapsulate, encapsulate};
use lanrage_engine::lan::{Lan, LanScope};
use lanrage_engine::loopback::Loopback;
use lanrage_engine::wire::{Datagram, IpHeader, classify, relay_data};
use libfuzzer_sys::fuzz_target;

static PAIR: OnceLock<Loopback> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let pair = PAIR.get_or_init(|| {
        let mut pair = Loopback::connected();
        let scope = LanScope::containing(pair.a.inner.into(), 24);
        pair.a.table.set_lan(Some(Arc::new(Lan::new(scope))));
        pair.b.table.set_lan(Some(Arc::new(Lan::new(scope))));
        pair
    });
    let kind = classify(data);
    let _ = IpHeader::parse(data);
    let mut out = vec![0u8; data.len() + 256];
    let inbound = decapsulate(&pair.b.table, pair.a.addr, data, &mut out);
    // Only WireGuard-shaped datagrams may reach the crypto path; the rest go to control. A
    // relayed datagram is judged by what it carries.
    let carried = relay_data(data).map(|(_, payload)| classify(payload));
    match (&inbound, kind) {
        (Inbound::Control, Datagram::Control) => {}
        (Inbound::Control, Datagram::Relayed { .. }) if carried == Some(Datagram::Control) => {}
        (Inbound::Control, other) => panic!("{other:?} handed to control"),
        (_, Datagram::Relayed { .. }) if carried == Some(Datagram::Control) => {
            panic!("a relayed control datagram took the crypto path")
        }
        (_, Datagram::Control) => panic!("control datagram took the crypto path"),
        _ => {}
    }
    if let Inbound::ToTun(packet) = inbound {
        assert!(packet.len() <= data.len());
    }
    let _ = encapsulate(&pair.a.table, data, &mut out);
});
