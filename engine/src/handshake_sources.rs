//! What one source address may cost us in handshake initiations. Each initiation that passes
//! the MAC checks costs a Diffie-Hellman or two; boringtun's limiter demands cookies once the
//! whole device is busy, but a source that answers its cookies (it owns its address) could
//! still send initiations as fast as it likes, and a flood from one host kept the engine at
//! 1.2 cores and made a real peer's re-handshake fail. So, as wireguard-go does, each source
//! gets a budget of its own (a GCRA per address, an IPv6 /64 counting as one), checked after
//! the MACs and before the expensive part.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Initiations per second one source may have processed, on average...
pub const PER_SECOND: u32 = 20;
/// ...and at once.
pub const BURST: u32 = 5;
/// Sources tracked at once: only those within their burst of now are kept, so this is the
/// number of addresses handshaking in the same quarter-second. Past it, new sources wait.
const MAX_SOURCES: usize = 4096;

/// The budgets of the sources seen lately; see the module documentation.
#[derive(Debug)]
pub struct HandshakeSources {
    /// When each source has paid off what it was admitted (its theoretical arrival time).
    paid_off: Mutex<HashMap<IpAddr, Instant>>,
}

impl Default for HandshakeSources {
    fn default() -> Self {
        HandshakeSources {
            paid_off: Mutex::new(HashMap::new()),
        }
    }
}

impl HandshakeSources {
    /// Whether an initiation from `from` may be processed at `now`; one that may is charged.
    pub fn allow(&self, from: IpAddr, now: Instant) -> bool {
        let interval = Duration::from_secs(1) / PER_SECOND;
        let burst = interval * BURST;
        let source = source_of(from);
        let mut table = self.paid_off.lock().unwrap_or_else(PoisonError::into_inner);
        if table.len() >= MAX_SOURCES && !table.contains_key(&source) {
            table.retain(|_, &mut paid_off| paid_off > now);
            if table.len() >= MAX_SOURCES {
                return false;
            }
        }
        let paid_off = table.get(&source).map_or(now, |&t| t.max(now)) + interval;
        if paid_off.saturating_duration_since(now) > burst {
            return false;
        }
        table.insert(source, paid_off);
        true
    }
}

/// The address a budget belongs to: an IPv6 host usually has a whole /64.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let t = Instant::now();
        let sources = HandshakeSources::default();
        let flooder = ip("198.51.100.7");
        let allowed = (0..100).filter(|_| sources.allow(flooder, t)).count();
        assert_eq!(allowed, BURST as usize);
        assert!(sources.allow(ip("203.0.113.9"), t), "another source");
        // Over the next second, at most its rate more.
        let later: usize = (1..=100)
            .map(|ms| {
                let now = t + Duration::from_millis(10 * ms);
                (0..10).filter(|_| sources.allow(flooder, now)).count()
            })
            .sum();
        assert!(
            (PER_SECOND as usize - 1..=PER_SECOND as usize + 1).contains(&later),
            "{later} in the next second"
        );
        // One IPv6 /64 is one source.
        let v6 = (0..100)
            .filter(|n| sources.allow(ip(&format!("2001:db8:1:2::{n:x}")), t))
            .count();
        assert_eq!(v6, BURST as usize);
    }

    #[test]
    fn the_table_stays_bounded_and_forgets_paid_off_sources() {
        let t = Instant::now();
        let sources = HandshakeSources::default();
        for n in 0..MAX_SOURCES as u32 {
            assert!(sources.allow(IpAddr::from(n.to_be_bytes()), t));
        }
        assert!(!sources.allow(ip("203.0.113.1"), t), "full");
        let later = t + Duration::from_secs(1);
        assert!(
            sources.allow(ip("203.0.113.1"), later),
            "the paid-off are forgotten"
        );
        assert_eq!(sources.paid_off.lock().unwrap().len(), 1);
    }
}
