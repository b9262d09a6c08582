//! Server-browser announcements as members send them (`lanrage_control::servers`): a hostile
//! member's bytes are refused or give an announcement within the limits, which encodes back
//! to one that decodes the same; never a panic.
#![no_main]

use lanrage_control::servers::{Announcement, MAX_DATAGRAM, MAX_SERVERS, MAX_TEXT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(announcement) = Announcement::decode(data) else {
        return;
    };
    assert!(announcement.servers.len() <= MAX_SERVERS);
    assert!(
        announcement
            .servers
            .iter()
            .all(|s| s.game.len() <= MAX_TEXT && s.name.len() <= MAX_TEXT)
    );
    let bytes = announcement.encode();
    assert!(bytes.len() <= MAX_DATAGRAM);
    let back = Announcement::decode(&bytes).expect("what we send is accepted");
    // Within the limits nothing is cut; only a list too long for one datagram is shortened.
    assert_eq!(back.servers[..], announcement.servers[..back.servers.len()]);
});
