//! Path probe frames as anyone on the internet can send them to the WireGuard port: the
//! selector must take any bytes from any address without panicking, and only frames that
//! carry a peer's valid MAC may be taken. The first byte picks whether the input is sealed
//! with the real pair key first (to reach the paths behind the MAC check), and whether it
//! arrives directly or through a relay channel.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lanrage_control::path::PathAddr;
use lanrage_control::path::frame::{self, Frame, PONG_LEN, PairKey};
use lanrage_control::path::selector::PathSelector;
use lanrage_control::peer_id::PeerId;
use libfuzzer_sys::fuzz_target;
use x25519_dalek::{PublicKey, StaticSecret};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let ours = StaticSecret::from([1; 32]);
    let theirs = StaticSecret::from([2; 32]);
    let (me, peer) = (
        PeerId(PublicKey::from(&ours).to_bytes()),
        PeerId(PublicKey::from(&theirs).to_bytes()),
    );
    let t0 = Instant::now();
    let mut n = 0u8;
    let mut selector = PathSelector::new(ours, move || {
        n = n.wrapping_add(1);
        [n; 12]
    });
    let peer_addr: SocketAddr = "198.51.100.2:51820".parse().unwrap();
    let relay: SocketAddr = "192.0.2.7:3479".parse().unwrap();
    selector.set_peer(
        t0,
        peer,
        &[PathAddr::direct(peer_addr), PathAddr::relayed(relay, 1)],
    );
    while selector.poll_transmit(t0).is_some() {}
    let from: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let mut sealed = [0; PONG_LEN];
    let datagram: &[u8] = if mode & 1 == 1 && rest.len() >= 13 {
        // A genuine frame from the peer, with fuzzed transaction and observed address.
        let mut transaction = [0; 12];
        transaction.copy_from_slice(&rest[..12]);
        let frame = if mode & 2 == 2 {
            Frame::Ping { sender: peer, transaction }
        } else {
            Frame::Pong { sender: peer, transaction, observed: from }
        };
        let len = frame::encode(&frame, &PairKey::new(&theirs, &me), &mut sealed);
        &sealed[..len]
    } else {
        rest
    };
    let later = t0 + Duration::from_millis(u64::from(mode));
    let path = if mode & 4 == 4 {
        PathAddr::relayed(relay, u32::from(mode >> 3))
    } else {
        PathAddr::direct(from)
    };
    let _ = selector.handle(later, path, datagram);
    while selector.poll_transmit(later).is_some() {}
    while selector.poll_event().is_some() {}
    let _ = selector.path(&peer, later);
});
