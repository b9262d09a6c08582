//! UAPI text from an untrusted local client: framing, parsing and formatting must never panic,
//! what parses must format back to itself, and framing must not depend on how reads are cut.
#![no_main]

use lanrage_control::uapi::{
    AllowedIp, RequestFramer, format_errno, format_get_response, format_request,
    parse_get_response, parse_request, parse_set_response,
};
use libfuzzer_sys::fuzz_target;

/// Small enough that the size limit is reached often.
const MAX_REQUEST_LEN: usize = 4096;

/// Stands in for `if_nametoindex` so named link-local scopes get parsed too.
fn fake_scope(name: &str) -> Option<u32> {
    (!name.is_empty() && name.len() < 16 && name.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| u32::try_from(name.len()).unwrap_or(0))
}

fn framer() -> RequestFramer {
    RequestFramer::with_max_request_len(MAX_REQUEST_LEN).with_scope_resolver(fake_scope)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };

    if let Ok(text) = std::str::from_utf8(stream) {
        if let Ok(request) = parse_request(text) {
            assert_eq!(parse_request(&format_request(&request)), Ok(request));
        }
        if let Ok(info) = parse_get_response(text) {
            assert_eq!(parse_get_response(&format_get_response(&info)), Ok(info));
        }
        let _ = parse_set_response(text);
        for line in text.lines() {
            if let Ok(ip) = line.parse::<AllowedIp>() {
                assert_eq!(ip.to_string().parse::<AllowedIp>(), Ok(ip));
            }
        }
    }

    let mut whole = framer();
    let whole_result = whole
        .push(stream)
        .map(|()| std::iter::from_fn(|| whole.next_request()).collect::<Vec<_>>());

    let mut pieces = framer();
    let mut results = Vec::new();
    let mut failed = None;
    for piece in stream.chunks(usize::from(split) + 1) {
        if let Err(err) = pieces.push(piece) {
            failed = Some(err);
            break;
        }
        results.extend(std::iter::from_fn(|| pieces.next_request()));
    }
    match (&whole_result, &failed) {
        (Ok(expected), None) => assert_eq!(&results, expected),
        (Err(a), Some(b)) => assert_eq!(a, b),
        _ => panic!("framing depends on read size: {whole_result:?} vs {failed:?}"),
    }
    for result in &results {
        let reply = match result {
            Ok(request) => format_request(request),
            Err(err) => format_errno(err),
        };
        assert!(reply.ends_with("\n\n"));
    }
});
