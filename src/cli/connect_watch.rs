//! What `party create` and `party join` show while members connect, and when they stop
//! watching: pure, so that the end condition is tested without a daemon.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use lanrage_control::party::local::ANNOUNCE_EVERY;
use lanrage_control::shown_text;

use crate::local_api::PeerInfo;

/// How long a local party is watched at least: its members appear only as they announce
/// themselves, each once per [`ANNOUNCE_EVERY`], so before two periods have passed "every
/// member we know of is connected" may still leave out one not yet heard.
pub const LOCAL_SETTLE: Duration = ANNOUNCE_EVERY.saturating_mul(2);

/// Members shown as connected so far, and what the watch waits for.
pub struct ConnectWatch {
    /// Members besides us that the party's answer named (a control server's party lists
    /// them all; a local party's answer knows none yet).
    expected: usize,
    /// The watch does not end before this, even with everyone known connected.
    settle: Duration,
    shown: HashSet<Ipv4Addr>,
    said_waiting: bool,
}

/// What one look at the peers gives.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// Lines to print, in order.
    pub lines: Vec<String>,
    /// Every member is connected and none can still be missing: stop watching.
    pub done: bool,
}

impl ConnectWatch {
    pub fn new(expected: usize, settle: Duration) -> ConnectWatch {
        ConnectWatch {
            expected,
            settle,
            shown: HashSet::new(),
            said_waiting: false,
        }
    }

    /// Takes the peers as the daemon shows them `elapsed` after the party was joined.
    pub fn step(&mut self, elapsed: Duration, peers: &[PeerInfo]) -> Step {
        let mut lines = Vec::new();
        for p in peers {
            if p.path != "searching" && self.shown.insert(p.virtual_ip) {
                let ping = p
                    .rtt_ms
                    .map_or_else(String::new, |ms| format!(", {ms:.1} ms"));
                lines.push(format!(
                    "  connected to {} ({}): {}{ping}",
                    shown_text::clean(&p.name, 64),
                    p.virtual_ip,
                    p.path
                ));
            }
        }
        let waiting: Vec<String> = peers
            .iter()
            .filter(|p| !self.shown.contains(&p.virtual_ip))
            .map(|p| shown_text::clean(&p.name, 64))
            .collect();
        if !waiting.is_empty() && !self.said_waiting {
            lines.push(format!("  finding a path to {}…", waiting.join(", ")));
            self.said_waiting = true;
        }
        let done = !peers.is_empty()
            && waiting.is_empty()
            && peers.len() >= self.expected
            && elapsed >= self.settle;
        Step { lines, done }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, last_octet: u8, path: &str) -> PeerInfo {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "public_key": "",
            "virtual_ip": Ipv4Addr::new(10, 66, 0, last_octet),
            "endpoint": null,
            "handshake_age_secs": null,
            "rx_bytes": 0,
            "tx_bytes": 0,
            "rtt_ms": 0.4,
            "path": path,
        }))
        .expect("a peer")
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// The race a slow machine showed: in a local party, the first member heard was already
    /// connected before the second had announced itself, and the watch ended without it.
    #[test]
    fn a_local_party_is_watched_until_every_member_has_had_time_to_announce() {
        let mut watch = ConnectWatch::new(0, LOCAL_SETTLE);
        assert!(!watch.step(secs(0.0), &[]).done);
        let one = [peer("player1", 1, "direct")];
        let step = watch.step(secs(0.3), &one);
        assert_eq!(
            step.lines,
            ["  connected to player1 (10.66.0.1): direct, 0.4 ms"]
        );
        assert!(!step.done, "ended before player2 could announce itself");
        let two = [
            peer("player1", 1, "direct"),
            peer("player2", 2, "searching"),
        ];
        let step = watch.step(secs(0.9), &two);
        assert_eq!(step.lines, ["  finding a path to player2…"]);
        assert!(!step.done);
        let both = [peer("player1", 1, "direct"), peer("player2", 2, "direct")];
        let step = watch.step(secs(1.1), &both);
        assert_eq!(
            step.lines,
            ["  connected to player2 (10.66.0.2): direct, 0.4 ms"]
        );
        assert!(!step.done, "two announcement periods have not passed");
        assert_eq!(
            watch.step(LOCAL_SETTLE, &both),
            Step {
                lines: vec![],
                done: true
            }
        );
    }

    /// A control server's party names its members in the answer: the watch ends as soon as
    /// all of them are connected, and not before all are known.
    #[test]
    fn a_server_party_is_watched_until_the_members_it_named_are_connected() {
        let mut watch = ConnectWatch::new(2, Duration::ZERO);
        let one = [peer("alice", 1, "direct")];
        assert!(!watch.step(secs(0.1), &one).done);
        let both = [peer("alice", 1, "direct"), peer("bob", 2, "relayed")];
        let step = watch.step(secs(0.2), &both);
        assert_eq!(
            step.lines,
            ["  connected to bob (10.66.0.2): relayed, 0.4 ms"]
        );
        assert!(step.done);
    }
}
