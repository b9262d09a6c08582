//! Which member a player means by a name on the command line. Names are other players'
//! choice: two may look alike ("Bob" and "bob", or one with an invisible character), and
//! picking one of them silently would ping or join the wrong player.

use lanrage_control::shown_text;

use crate::local_api::PeerInfo;

/// The member `query` names: by virtual IP, or by a name only one member's looks like.
pub fn find<'a>(peers: &'a [PeerInfo], query: &str) -> Result<&'a PeerInfo, String> {
    if let Some(p) = peers.iter().find(|p| p.virtual_ip.to_string() == query) {
        return Ok(p);
    }
    let wanted = shown_text::likeness(query);
    let alike: Vec<&PeerInfo> = peers
        .iter()
        .filter(|p| shown_text::likeness(&p.name) == wanted)
        .collect();
    match alike.as_slice() {
        [one] => Ok(one),
        [] => {
            let names: Vec<String> = peers
                .iter()
                .map(|p| shown_text::clean(&p.name, usize::MAX))
                .collect();
            Err(format!(
                "no member {:?} in the party (members: {})",
                shown_text::clean(query, 64),
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ))
        }
        several => {
            let which: Vec<String> = several
                .iter()
                .map(|p| {
                    format!(
                        "{:?} at {}",
                        shown_text::clean(&p.name, usize::MAX),
                        p.virtual_ip
                    )
                })
                .collect();
            Err(format!(
                "{} members have a name like {:?} ({}): name one by its virtual IP",
                several.len(),
                shown_text::clean(query, 64),
                which.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, last_octet: u8) -> PeerInfo {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "public_key": "",
            "virtual_ip": format!("10.66.0.{last_octet}"),
            "endpoint": null,
            "handshake_age_secs": null,
            "rx_bytes": 0,
            "tx_bytes": 0,
        }))
        .expect("a peer")
    }

    #[test]
    fn look_alike_names_are_refused_and_a_virtual_ip_always_works() {
        let peers = [peer("Bob", 2), peer("b\u{200B}ob", 3), peer("alice", 4)];
        let err = find(&peers, "bob").unwrap_err();
        assert!(err.contains("2 members have a name like \"bob\""), "{err}");
        assert!(
            err.contains("10.66.0.2") && err.contains("10.66.0.3"),
            "{err}"
        );
        assert_eq!(
            find(&peers, "10.66.0.3").map(|p| p.virtual_ip.octets()[3]),
            Ok(3)
        );
        assert_eq!(find(&peers, "ALICE").map(|p| p.name.as_str()), Ok("alice"));
        let err = find(&peers, "carol\u{1b}[2J").unwrap_err();
        assert!(
            err.contains("no member \"carol[2J\"") && !err.contains('\u{1b}'),
            "{err}"
        );
    }
}
