//! Game-profile files as a user or a download might leave them in the data directory: any
//! text is either reported or loaded, never a panic, and every profile that loads satisfies
//! the rules the loader promises (so detection and the engine can rely on them).
#![no_main]

use lanrage_games::profile::ProfileSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut set = ProfileSet::default();
    let errors = set.extend_from_json("fuzz.json", text);
    for error in &errors {
        assert!(!error.to_string().is_empty());
        assert_eq!(error.source, "fuzz.json");
    }
    for profile in set.iter() {
        assert!(!profile.id.is_empty());
        assert!(
            profile
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        );
        assert!(!profile.name.trim().is_empty() && !profile.executable.trim().is_empty());
        assert!(!profile.ports.is_empty() && !profile.ports.contains(&0));
        assert!((1280..=1500).contains(&profile.mtu));
        for d in &profile.discovery {
            let broadcast = matches!(d.address, std::net::IpAddr::V4(v4) if v4.is_broadcast());
            assert!(broadcast || d.address.is_multicast());
        }
        assert!(set.by_executable(&profile.executable).is_some());
    }
});
