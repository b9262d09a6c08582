//! The control server's party state driven by a hostile client mix: creates, joins with right
//! and wrong codes, heartbeats with any endpoints, leaves, expiry, and a restart from the
//! stored records. Whatever the order, a peer is in one party at most, no two members of a
//! party share a virtual IP, no party outgrows its limit, and a restart keeps every party.
#![no_main]

#[path = "common/input.rs"]
mod input;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use input::Input;
use lanrage_control::nat::NatType;
use lanrage_control::party::code::PartyCode;
use lanrage_control::party::{Registry, RegistryConfig};
use lanrage_control::peer_id::PeerId;
use lanrage_control::server_api::Heartbeat;
use libfuzzer_sys::fuzz_target;

const PEERS: u8 = 12;

fn config() -> RegistryConfig {
    RegistryConfig {
        // A /29 holds six members: small enough for the fuzzer to fill.
        subnet: "10.66.0.0/29".parse().expect("a valid subnet"),
        max_members: 5,
        stale_after: Duration::from_secs(60),
        first_heartbeat_within: Duration::from_secs(20),
        max_parties: 4,
    }
}

fn name(input: &mut Input) -> String {
    let len = usize::from(input.byte() % 40);
    String::from_utf8_lossy(input.bytes(len)).into_owned()
}

fn check(registry: &Registry) {
    let mut parties = BTreeMap::new();
    for p in 0..PEERS {
        if let Some(view) = registry.party_of(PeerId([p; 32])) {
            assert!(view.members.iter().any(|m| m.peer == PeerId([p; 32])));
            parties.insert(view.id, view);
        }
    }
    for view in parties.values() {
        assert!(view.members.len() <= config().max_members);
        let ips: HashSet<_> = view.members.iter().map(|m| m.virtual_ip).collect();
        assert_eq!(
            ips.len(),
            view.members.len(),
            "two members share an address"
        );
        assert!(ips.iter().all(|ip| view.subnet.contains(ip)));
        for m in &view.members {
            let theirs = registry.party_of(m.peer).map(|v| v.id);
            assert_eq!(theirs, Some(view.id), "a member is listed in two parties");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let mut registry = Registry::new(config()).expect("a valid configuration");
    let mut codes: Vec<PartyCode> = Vec::new();
    let mut input = Input(data);
    while !input.is_empty() {
        let op = input.byte();
        let peer = PeerId([input.byte() % PEERS; 32]);
        match op % 7 {
            0 => {
                let code = PartyCode::from_bytes([input.byte() % 4; 10]);
                let (party, member) = (name(&mut input), name(&mut input));
                if registry.create(now, peer, &member, &party, code).is_ok() {
                    codes.push(code);
                }
            }
            1 => {
                let known = codes
                    .get(usize::from(input.byte()) % codes.len().max(1))
                    .copied();
                let code = known.unwrap_or(PartyCode::from_bytes([input.byte(); 10]));
                let member = name(&mut input);
                let _ = registry.join(now, &code, peer, &member);
            }
            2 => {
                // A heartbeat body as the HTTP layer would parse it.
                let len = usize::from(input.byte());
                let body = input.bytes(len);
                if let Ok(beat) = serde_json::from_slice::<Heartbeat>(body) {
                    let _ = registry.heartbeat(now, peer, beat.endpoints, beat.nat);
                }
            }
            3 => {
                let count = usize::from(input.byte() % 10);
                let endpoints: Vec<SocketAddr> = (0..count)
                    .map(|i| SocketAddr::from(([192, 0, 2, input.byte()], 51820 + i as u16)))
                    .collect();
                let nat = [NatType::Open, NatType::Symmetric, NatType::Unknown]
                    [usize::from(input.byte() % 3)];
                let _ = registry.heartbeat(now, peer, Some(endpoints), Some(nat));
            }
            4 => {
                let _ = registry.leave(peer);
            }
            5 => {
                now += Duration::from_secs(u64::from(input.byte()));
                registry.expire(now);
            }
            _ => {
                // A restart: every party comes back from its stored record.
                let records = registry.records();
                let mut restored = Registry::new(config()).expect("a valid configuration");
                for record in records.clone() {
                    restored
                        .restore(now, record)
                        .expect("a stored party restores");
                }
                assert_eq!(restored.records(), records, "a restart changed a party");
                registry = restored;
            }
        }
        registry.drain_notices().for_each(drop);
        registry.drain_changed();
        check(&registry);
    }
});
