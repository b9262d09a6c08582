//! Frames from the local Discord client's IPC socket (`lanrage_control::discord::ipc`), as
//! the Rich Presence reader takes them: a frame and what it used, "not yet", or a refusal;
//! never more than was given, never a panic. Also Discord's rate-limit answers.
#![no_main]

use lanrage_control::discord::ipc::{MAX_FRAME, decode, encode, error_message};
use lanrage_control::discord::notify::retry_after;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Some((op, value, used))) => {
            assert!(used <= data.len() && used <= MAX_FRAME + 8);
            let _ = error_message(&value);
            // What we would write back (a pong echoes a ping) is one whole frame. (Values
            // are not compared: JSON floats need not survive a round trip to the last bit.)
            let again = encode(op, &value);
            let (op2, _, used2) = decode(&again).unwrap().unwrap();
            assert_eq!((op2, used2), (op, again.len()));
        }
        Ok(None) | Err(_) => {}
    }
    let text = String::from_utf8_lossy(data);
    let wait = retry_after(&text, Some(&text));
    assert!(wait.as_secs() <= 300);
});
