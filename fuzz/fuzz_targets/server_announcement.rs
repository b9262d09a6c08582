//! Server-browser announcements as members send them (`lanrage_control::servers`): a hostile
//! member's bytes are refused or give an announcement within the limits, which encodes back
//! to one that decodes the same (multicast groups included); read as a Minecraft LAN-world announcement, they give a
//! bounded name and a port or nothing. Never a panic.
#![no_main]

use lanrage_control::servers::{
    Announcement, MAX_DATAGRAM, MAX_GROUPS, MAX_SERVERS, MAX_TEXT, minecraft_lan_world,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((name, port)) = minecraft_lan_world(data) {
        assert!(name.len() <= MAX_TEXT && port != 0);
    }
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
    if let Some(groups) = &announcement.groups {
        assert!(groups.len() <= MAX_GROUPS && groups.iter().all(|g| g.is_multicast()));
    }
    let bytes = announcement.encode();
    assert!(bytes.len() <= MAX_DATAGRAM);
    let back = Announcement::decode(&bytes).expect("what we send is accepted");
    // Within the limits nothing is cut; only a list too long for one datagram is shortened.
    assert_eq!(back.servers[..], announcement.servers[..back.servers.len()]);
    assert_eq!(back.groups, announcement.groups);
});
