//! The control server's counting limits, sans-IO: how many connections (or event streams) a
//! source and everyone together may hold, how many parties one source may keep, and how often
//! a refusal is logged. Time-based limits are [`super::rate_limit`]'s token buckets.
//!
//! Why: one client must not be able to take a server's file descriptors, memory or party
//! capacity from everyone else. Each limit here is a plain counter the I/O shell consults
//! before it spends the resource and gives back when it is done with it.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use super::rate_limit::SourceKey;
use super::registry::PartyId;

/// Which cap refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Everyone together holds `max`: the server is full (HTTP 503).
    Total { max: usize },
    /// This source holds `max`: it must wait for one of its own to end (HTTP 429).
    Source { max: usize },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Total { max } => write!(f, "the server is at its limit ({max})"),
            Refusal::Source { max } => write!(f, "too many from this address (at most {max})"),
        }
    }
}

/// Slots held per source and in total: TCP connections, or event streams.
///
/// A slot taken with source `None` counts only toward the total: a trusted proxy speaks for
/// many clients, whose own addresses are known only once a request's headers are read.
#[derive(Debug)]
pub struct SlotLimits {
    max_total: usize,
    max_per_source: usize,
    total: usize,
    by_source: HashMap<SourceKey, usize>,
}

impl SlotLimits {
    pub fn new(max_total: usize, max_per_source: usize) -> Self {
        SlotLimits {
            max_total,
            max_per_source,
            total: 0,
            by_source: HashMap::new(),
        }
    }

    /// Takes a slot for `source`, or says which cap is reached (the total first: a full
    /// server is full for everyone). A refusal takes nothing.
    pub fn acquire(&mut self, source: Option<SourceKey>) -> Result<(), Refusal> {
        if self.total >= self.max_total {
            return Err(Refusal::Total {
                max: self.max_total,
            });
        }
        if let Some(source) = source {
            let held = self.by_source.entry(source).or_insert(0);
            if *held >= self.max_per_source {
                if *held == 0 {
                    self.by_source.remove(&source);
                }
                return Err(Refusal::Source {
                    max: self.max_per_source,
                });
            }
            *held += 1;
        }
        self.total += 1;
        Ok(())
    }

    /// Gives back a slot taken by [`acquire`](Self::acquire) with the same `source`. Sources
    /// that hold nothing are forgotten, so the table is no larger than what is held.
    pub fn release(&mut self, source: Option<SourceKey>) {
        self.total = self.total.saturating_sub(1);
        if let Some(source) = source {
            if let Some(held) = self.by_source.get_mut(&source) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    self.by_source.remove(&source);
                }
            }
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn held_by(&self, source: SourceKey) -> usize {
        self.by_source.get(&source).copied().unwrap_or(0)
    }

    /// Sources holding at least one slot.
    pub fn sources(&self) -> usize {
        self.by_source.len()
    }
}

/// Parties kept per creating source, so one address cannot take the server's whole party
/// capacity (`RegistryConfig::max_parties`) with a fresh key per create.
///
/// Parties restored after a restart have no known source and count toward none.
#[derive(Debug)]
pub struct PartyQuota {
    max_per_source: usize,
    owner: HashMap<PartyId, SourceKey>,
    held: HashMap<SourceKey, usize>,
}

impl PartyQuota {
    pub fn new(max_per_source: usize) -> Self {
        PartyQuota {
            max_per_source,
            owner: HashMap::new(),
            held: HashMap::new(),
        }
    }

    /// Whether `source` may create another party.
    pub fn allows(&self, source: SourceKey) -> bool {
        self.held_by(source) < self.max_per_source
    }

    /// `source` created party `id`.
    pub fn created(&mut self, id: PartyId, source: SourceKey) {
        if self.owner.insert(id, source).is_none() {
            *self.held.entry(source).or_insert(0) += 1;
        }
    }

    /// Party `id` ended: its source may create another.
    pub fn ended(&mut self, id: PartyId) {
        let Some(source) = self.owner.remove(&id) else {
            return;
        };
        if let Some(held) = self.held.get_mut(&source) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                self.held.remove(&source);
            }
        }
    }

    pub fn held_by(&self, source: SourceKey) -> usize {
        self.held.get(&source).copied().unwrap_or(0)
    }

    pub fn max_per_source(&self) -> usize {
        self.max_per_source
    }
}

/// At most one log line per `every` for a kind of refusal, with the count of those not logged,
/// so that a flood is visible in the log without the log becoming the flood.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    next: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    pub fn new(every: Duration) -> Self {
        LogThrottle {
            every,
            next: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when this event should be logged, `n` being how many were not since the last
    /// line; `None` when it should only be counted.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.next = now.checked_add(self.every);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn source(last: u8) -> SourceKey {
        SourceKey::from(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)))
    }

    #[test]
    fn one_source_cannot_take_every_slot() {
        let mut slots = SlotLimits::new(5, 2);
        assert_eq!(slots.acquire(Some(source(1))), Ok(()));
        assert_eq!(slots.acquire(Some(source(1))), Ok(()));
        assert_eq!(
            slots.acquire(Some(source(1))),
            Err(Refusal::Source { max: 2 })
        );
        // The others still get in, until the server as a whole is full.
        assert_eq!(slots.acquire(Some(source(2))), Ok(()));
        assert_eq!(slots.acquire(None), Ok(()));
        assert_eq!(slots.acquire(None), Ok(()));
        assert_eq!(
            slots.acquire(Some(source(3))),
            Err(Refusal::Total { max: 5 })
        );
        assert_eq!(slots.total(), 5);
        assert_eq!(slots.held_by(source(3)), 0);
        assert_eq!(slots.sources(), 2, "a refused source is not remembered");
        // A slot given back is there for the next.
        slots.release(Some(source(1)));
        assert_eq!(slots.held_by(source(1)), 1);
        assert_eq!(slots.acquire(Some(source(3))), Ok(()));
        for s in [
            Some(source(1)),
            Some(source(2)),
            Some(source(3)),
            None,
            None,
        ] {
            slots.release(s);
        }
        assert_eq!((slots.total(), slots.sources()), (0, 0));
        // Releasing more than was taken does not wrap around.
        slots.release(Some(source(1)));
        assert_eq!(slots.total(), 0);
    }

    #[test]
    fn zero_caps_refuse_everything() {
        let mut slots = SlotLimits::new(10, 0);
        assert_eq!(
            slots.acquire(Some(source(1))),
            Err(Refusal::Source { max: 0 })
        );
        assert_eq!(slots.sources(), 0);
        let mut full = SlotLimits::new(0, 10);
        assert_eq!(full.acquire(None), Err(Refusal::Total { max: 0 }));
    }

    #[test]
    fn party_quota_counts_live_parties_per_source() {
        let mut quota = PartyQuota::new(2);
        quota.created(PartyId(1), source(1));
        assert!(quota.allows(source(1)));
        quota.created(PartyId(2), source(1));
        assert!(!quota.allows(source(1)));
        assert!(quota.allows(source(2)));
        // Counting the same party twice does not take two places.
        quota.created(PartyId(2), source(1));
        quota.ended(PartyId(1));
        assert!(quota.allows(source(1)));
        assert_eq!(quota.held_by(source(1)), 1);
        // A party of unknown origin (restored) ends without effect.
        quota.ended(PartyId(99));
        quota.ended(PartyId(2));
        assert_eq!(quota.held_by(source(1)), 0);
        assert!(quota.held.is_empty() && quota.owner.is_empty());
    }

    #[test]
    fn log_throttle_logs_once_per_period_with_the_count_missed() {
        let t = Instant::now();
        let mut log = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(log.hit(t), Some(0));
        for i in 1..=1000 {
            assert_eq!(log.hit(t + Duration::from_millis(i)), None);
        }
        assert_eq!(log.hit(t + Duration::from_secs(10)), Some(1000));
        assert_eq!(log.hit(t + Duration::from_secs(11)), None);
        assert_eq!(log.hit(t + Duration::from_secs(30)), Some(1));
    }
}
