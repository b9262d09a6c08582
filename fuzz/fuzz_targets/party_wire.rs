//! What hostile peers and clients send the party code: local-party announcements from the LAN,
//! party codes as typed, the control server's JSON bodies and events (and what a member makes
//! of a server's party), names shown to players, forwarding headers behind a proxy, and the
//! text forms of challenges, proofs and tokens it checks. Nothing may panic, and a code that
//! parses must print back to a code that parses to itself.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use lanrage_control::auth::{Challenge, Proof, ServerAuth, Token};
use lanrage_control::ipam::DEFAULT_SUBNET;
use lanrage_control::party::code::PartyCode;
use lanrage_control::party::local::LocalParty;
use lanrage_control::party::scope;
use lanrage_control::party::source::{TrustedProxies, TrustedProxy};
use lanrage_control::peer_id::PeerId;
use lanrage_control::server_api::{EventJson, Heartbeat, JoinParty, PartyJson, TokenRequest};
use lanrage_control::shown_text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut party = LocalParty::new(
        now,
        PartyCode::from_bytes([7; 10]),
        x25519_dalek::StaticSecret::from([1; 32]),
        "me",
        51820,
        DEFAULT_SUBNET,
        1,
    );
    let from = SocketAddr::from(([192, 168, 1, 2], 8668));
    let _ = party.receive(now, from, data);
    let _ = party.poll(now);

    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(code) = text.parse::<PartyCode>() {
            assert_eq!(code.to_string().parse::<PartyCode>().ok(), Some(code));
        }
        let _ = serde_json::from_str::<EventJson>(text);
        if let Ok(party) = serde_json::from_str::<PartyJson>(text) {
            // What a hostile server's party may make of the tunnel.
            if let Ok(subnet) = scope::check(&party, PeerId([1; 32]), scope::Allowed::Private) {
                assert!(subnet.prefix_len() >= scope::WIDEST_PREFIX);
            }
            if let Ok(subnet) = scope::check(&party, PeerId([1; 32]), scope::Allowed::Any) {
                assert!(subnet.prefix_len() >= scope::WIDEST_ALLOWED_PREFIX);
            }
        }
        // Names as other players chose them, and forwarding headers as a proxy passes them.
        let shown = shown_text::clean(text, 64);
        assert!(shown.chars().count() <= 64 && !shown.chars().any(shown_text::is_hidden));
        let _ = shown_text::likeness(text);
        let proxies = TrustedProxies::new(["10.0.0.0/8".parse::<TrustedProxy>().unwrap()]);
        let (xff, fwd) = text.split_once('\n').unwrap_or((text, ""));
        let client = proxies.client("10.1.2.3".parse().unwrap(), [xff], [fwd]);
        let _ = proxies.contains(client);
        let _ = serde_json::from_str::<Heartbeat>(text);
        let _ = serde_json::from_str::<JoinParty>(text);
        let _ = serde_json::from_str::<TokenRequest>(text);
        let auth = ServerAuth::new([3; 32], [4; 32]);
        if let Ok(token) = text.parse::<Token>() {
            assert!(
                auth.check_token(0, &token).is_err(),
                "a forged token was accepted"
            );
        }
        if let (Ok(challenge), Ok(proof)) = (text.parse::<Challenge>(), text.parse::<Proof>()) {
            let _ = auth.verify(0, &PeerId([1; 32]), &challenge, &proof);
        }
    }
});
