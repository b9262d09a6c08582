//! Relay control frames as anyone can send them to a relay, and acks as anyone can send them
//! to a member: the frame parsers, a relay's sessions and a member's relay client take any
//! bytes without panicking, and
//!
//! - an ack is never longer than the bind it answers (no amplification toward a forged source),
//!   and only binds MAC'd with the key the relay derives from its secret are acked;
//! - every route goes from an address that sent a valid bind for its side to the address that
//!   sent the last valid bind for the other side, with distinct non-zero channels that pair up;
//! - a member's client only ever sends well-formed binds and takes only acks that decode with
//!   the key of a grant it holds.
//!
//! The input is a little program: each operation byte picks what happens next (a raw
//! datagram to the relay or to the client, a genuine bind with fuzzed fields, possibly
//! tampered, the client's own binds and the relay's acks going round, time passing and
//! expiring sides, grants replaced), so that the fuzzer reaches the states behind the MAC
//! checks too.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lanrage_control::peer_id::PeerId;
use lanrage_control::relay::frame::{ACK_LEN, Ack, BIND_LEN, Bind};
use lanrage_control::relay::{Grant, RelayClient, RelaySecret, RelaySessions, SessionId, Side};
use libfuzzer_sys::fuzz_target;

#[path = "common/input.rs"]
mod input;
use input::Input;

/// Sessions the relay holds at most: small, so the fuzzer fills it and meets refusals.
const MAX_SESSIONS: usize = 3;
const UNIX_T0: u64 = 1_700_000_000;

fn addrs() -> [SocketAddr; 6] {
    [
        "198.51.100.1:4000",
        "198.51.100.1:4001",
        "203.0.113.2:5000",
        "[2001:db8::7]:6000",
        "[::ffff:198.51.100.9]:7000",
        "192.0.2.66:6666",
    ]
    .map(|s| s.parse().unwrap())
}

fn peer(i: u8) -> PeerId {
    PeerId([i % 4 + 1; 32])
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let secret = RelaySecret::new([7; 32]);
    // Channel numbers from a tiny cycle that includes 0 and repeats, so that the relay's
    // "non-zero and unused" loop is exercised; 7 candidates outnumber the 2 × MAX_SESSIONS
    // sides that can hold one, so it always ends.
    let mut next_channel = 0u32;
    let mut relay = RelaySessions::new(secret.clone(), MAX_SESSIONS, move || {
        next_channel = (next_channel + 1) % 8;
        next_channel
    });
    let addrs = addrs();
    let relay_addrs: [SocketAddr; 2] =
        ["192.0.2.7:3479", "[2001:db8::1]:3479"].map(|s| s.parse().unwrap());
    let client_addr = addrs[0];
    let t0 = Instant::now();
    let mut now = t0;
    let mut unix = UNIX_T0;
    // The last address a valid bind for each side came from.
    let mut bound_from: HashMap<(SessionId, Side), SocketAddr> = HashMap::new();
    let mut client = RelayClient::new(1_000);
    // The client's grants: peer 1 with peers 2 and 3, at either relay.
    let mut client_grants: Vec<Grant> = Vec::new();

    let feed_relay = |relay: &mut RelaySessions,
                      bound_from: &mut HashMap<(SessionId, Side), SocketAddr>,
                      now: Instant,
                      unix: u64,
                      from: SocketAddr,
                      datagram: &[u8]|
     -> Option<[u8; ACK_LEN]> {
        // The parsers on their own, on whatever arrives.
        let parsed = Bind::parse(datagram);
        if let Ok(bind) = parsed {
            let key = secret.side_key(bind.session, bind.side, bind.expires_unix);
            let _ = Bind::verify(datagram, &key);
        }
        let _ = Bind::verify(datagram, &[0; 32]);
        if let Ok((session, side)) = Ack::claimed(datagram) {
            let _ = Ack::decode(datagram, &secret.side_key(session, side, unix));
        }
        let _ = Ack::decode(datagram, &[0; 32]);

        let bound = relay.handle(now, unix, from, datagram).ok()?;
        // Only a genuine bind, MAC'd with the key the secret gives its claims, is acked.
        let bind = parsed.expect("an unparseable bind was acked");
        let key = secret.side_key(bind.session, bind.side, bind.expires_unix);
        assert_eq!(
            Bind::verify(datagram, &key),
            Ok(()),
            "a forged bind was acked"
        );
        assert!(bind.expires_unix > unix, "an expired grant was acked");
        // No amplification.
        assert!(
            bound.ack.len() <= datagram.len(),
            "ack longer than its bind"
        );
        let ack = Ack::decode(&bound.ack, &key).expect("the relay's ack does not decode");
        assert_eq!(
            (ack.session, ack.side, ack.counter),
            (bind.session, bind.side, bind.counter)
        );
        assert_ne!(ack.channel, 0);
        assert_eq!((bound.session, bound.side), (bind.session, bind.side));
        bound_from.insert((bind.session, bind.side), from);
        Some(bound.ack)
    };

    while !input.is_empty() {
        let op = input.byte();
        match op % 8 {
            // Raw bytes to the relay from some address.
            0 => {
                let from = addrs[usize::from(input.byte()) % addrs.len()];
                let len = usize::from(input.byte() % 64);
                let datagram = input.bytes(len).to_vec();
                feed_relay(&mut relay, &mut bound_from, now, unix, from, &datagram);
            }
            // A genuine bind with fuzzed fields, possibly tampered with or cut short.
            1 => {
                let (me, other) = (input.byte(), input.byte());
                let (me, other) = (peer(me), peer(other));
                if me == other {
                    continue;
                }
                let party = u64::from(input.byte() % 2);
                // Grants that expired up to ~1 min ago or expire within ~4 min.
                let expires = (unix + u64::from(input.byte())).saturating_sub(60);
                let counter = u64::from(input.byte());
                let from = addrs[usize::from(input.byte()) % addrs.len()];
                let grant = secret.grant(party, &me, &other, expires);
                let mut frame = Bind {
                    session: grant.session,
                    side: grant.side,
                    expires_unix: grant.expires_unix,
                    counter,
                }
                .encode(&grant.key)
                .to_vec();
                let tamper = input.byte();
                if tamper & 0x80 != 0 {
                    let at = usize::from(tamper & 0x3f) % BIND_LEN;
                    frame[at] ^= input.byte() | 1;
                }
                if tamper & 0x40 != 0 {
                    frame.truncate(usize::from(input.byte()) % BIND_LEN);
                }
                feed_relay(&mut relay, &mut bound_from, now, unix, from, &frame);
            }
            // Time passes; stale sides go.
            2 => {
                let ms = u64::from(input.byte()) * 250;
                now += Duration::from_millis(ms);
                unix = UNIX_T0 + now.duration_since(t0).as_secs();
                relay.expire(now, unix);
            }
            // The client's due binds go to the relay; its acks come back (maybe from
            // elsewhere, or late).
            3 => {
                let step = input.byte();
                let mut sent = 0;
                while let Some((to, frame)) = client.poll_transmit(now) {
                    assert_eq!(frame.len(), BIND_LEN, "the client sent a malformed bind");
                    let bind = Bind::parse(&frame).expect("the client sent an unparseable bind");
                    assert!(
                        client_grants.iter().any(|g| g.session == bind.session
                            && g.side == bind.side
                            && g.expires_unix == bind.expires_unix
                            && Bind::verify(&frame, &g.key).is_ok()),
                        "the client sent a bind for no grant of its own"
                    );
                    let from = if step & 1 == 0 { client_addr } else { addrs[1] };
                    if let Some(ack) =
                        feed_relay(&mut relay, &mut bound_from, now, unix, from, &frame)
                    {
                        let ack_from = if step & 2 == 0 { to } else { addrs[2] };
                        let later = now + Duration::from_millis(u64::from(step >> 2));
                        let _ = client.handle(later, ack_from, &ack);
                    }
                    sent += 1;
                    if sent > 16 {
                        break;
                    }
                }
            }
            // Raw bytes to the client, as from a relay or elsewhere.
            4 => {
                let pick = usize::from(input.byte());
                let from = if pick & 1 == 0 {
                    relay_addrs[(pick >> 1) % 2]
                } else {
                    addrs[(pick >> 1) % addrs.len()]
                };
                let len = usize::from(input.byte() % 64);
                let datagram = input.bytes(len).to_vec();
                if client.handle(now, from, &datagram).is_ok() {
                    // Taken: it decodes with one of the client's grant keys.
                    assert!(
                        client_grants
                            .iter()
                            .any(|g| Ack::decode(&datagram, &g.key).is_ok()),
                        "the client took an ack no grant of its own signs"
                    );
                }
            }
            // New grants for the client.
            5 => {
                let mask = input.byte();
                let expires = unix + 60 + u64::from(input.byte());
                let mut grants = Vec::new();
                for (i, other) in [2u8, 3].into_iter().enumerate() {
                    for (j, relay_addr) in relay_addrs.iter().enumerate() {
                        if mask & (1 << (i * 2 + j)) != 0 {
                            let g = secret.grant(
                                u64::from(mask >> 7),
                                &PeerId([1; 32]),
                                &PeerId([other; 32]),
                                expires,
                            );
                            grants.push((PeerId([other; 32]), *relay_addr, g));
                        }
                    }
                }
                client_grants = grants.iter().map(|(_, _, g)| g.clone()).collect();
                client.set_grants(now, &grants);
            }
            // The client's view, and time for the client.
            6 => {
                now += Duration::from_millis(u64::from(input.byte()) * 100);
                unix = UNIX_T0 + now.duration_since(t0).as_secs();
                let _ = client.poll_timeout();
                for other in [2u8, 3] {
                    for path in client.paths(&PeerId([other; 32]), now) {
                        assert!(path.is_relayed());
                        assert!(relay_addrs.contains(&path.addr));
                    }
                }
                let _ = client.status(now);
                client.remove_peer(&PeerId([input.byte() % 4 + 1; 32]));
            }
            // A genuine ack, for one of the client's grants, from one of the relays.
            _ => {
                if client_grants.is_empty() {
                    continue;
                }
                let grant = &client_grants[usize::from(input.byte()) % client_grants.len()];
                let ack = Ack {
                    session: grant.session,
                    side: grant.side,
                    counter: 1_000 + u64::from(input.byte()),
                    channel: u32::from(input.byte()),
                    peer_bound: input.byte() & 1 == 1,
                }
                .encode(&grant.key);
                let from = relay_addrs[usize::from(input.byte()) % 2];
                let _ = client.handle(now, from, &ack);
            }
        }

        // Routes: from the last valid binder of one side to that of the other, channels
        // distinct, non-zero and paired.
        let routes: Vec<_> = relay.routes().collect();
        let mut channels = HashSet::new();
        for r in &routes {
            assert_ne!(r.channel, 0);
            assert!(
                channels.insert(r.channel),
                "two routes share channel {}",
                r.channel
            );
            let sides = [Side::Low, Side::High];
            assert!(
                sides.iter().any(|&s| {
                    bound_from.get(&(r.session, s)) == Some(&r.from)
                        && bound_from.get(&(r.session, s.other())) == Some(&r.to)
                }),
                "route {r:?} does not join the last valid binders of its session"
            );
            assert!(
                routes.iter().any(|back| back.channel == r.out_channel
                    && back.out_channel == r.channel
                    && back.from == r.to
                    && back.to == r.from),
                "route {r:?} has no way back"
            );
        }
        let (sessions, joined) = relay.counts();
        assert!(joined <= sessions && sessions <= MAX_SESSIONS);
        assert_eq!(routes.len(), 2 * joined);
    }
});
