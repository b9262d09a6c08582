//! STUN responses as any host on the internet can send them to the WireGuard port: parsing
//! must never panic, and what parses keeps its transaction id.
#![no_main]

use lanrage_control::nat::stun::parse_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = parse_response(data) {
        assert_eq!(&data[8..20], &response.transaction);
    }
});
