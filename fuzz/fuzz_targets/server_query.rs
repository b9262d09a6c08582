//! Replies to the server browser's status query (`lanrage_games::a2s`), as a server on this
//! host (or anything that reached the query socket) sends them: a challenge, server info
//! whose texts are whatever bytes came, or a refusal. Never a panic.
#![no_main]

use lanrage_games::a2s::{Reply, info_request, parse_reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_reply(data) {
        Ok(Reply::Challenge(challenge)) => {
            // The query sent back carries the challenge at its end.
            assert!(info_request(Some(challenge)).ends_with(&challenge));
        }
        Ok(Reply::Info(info)) => {
            // Lossy decoding can only grow invalid bytes to three; never beyond that.
            assert!(info.name.len() + info.map.len() <= 3 * data.len());
        }
        Err(_) => {}
    }
});
