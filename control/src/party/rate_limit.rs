//! Per-client rate limits: join attempts (so party codes cannot be brute-forced online), and
//! the control server's other per-source and per-key limits (challenges, tokens, creates,
//! heartbeats), all token buckets of the same kind.
//!
//! Sans-IO: the caller passes its clock reading to every call, which also makes refill testable
//! without sleeping. Arithmetic is integer-only; a token is [`UNITS_PER_TOKEN`] units so that a
//! refill of `per_minute` tokens per minute is exactly `per_minute` units per nanosecond.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// Nanoseconds in a minute: one token in the fixed-point unit described above.
const UNITS_PER_TOKEN: u128 = 60_000_000_000;

/// Wait reported when nothing will ever refill (`burst` or `per_minute` of zero). Finite so the
/// value still fits an HTTP `Retry-After` header and callers' timers.
const NEVER_REFILLS: Duration = Duration::from_secs(60 * 60);

/// A refused attempt and how long until the client's next token, for HTTP 429 `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds, rounded up: `Retry-After` takes integer seconds, and rounding down to 0
    /// would invite an immediate retry that is certain to fail.
    pub fn secs_rounded_up(&self) -> u64 {
        let whole = self.0.as_secs();
        if self.0.subsec_nanos() > 0 {
            whole.saturating_add(1)
        } else {
            whole
        }
    }
}

impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "too many attempts; retry after {} s",
            self.secs_rounded_up()
        )
    }
}

impl std::error::Error for RetryAfter {}

/// Token buckets for join attempts, one per client network, in bounded memory.
pub type JoinLimiter = RateLimiter<SourceKey>;

/// Token buckets, one per key (a client network, a peer), in bounded memory.
///
/// Keys live in std's `HashMap`, whose per-process random hash key stops an attacker from
/// choosing keys that collide.
#[derive(Debug)]
pub struct RateLimiter<K> {
    burst: u32,
    per_minute: u32,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
    /// No stored bucket is full before this instant; `None` when none ever will be. Lets a full
    /// table refuse a flood of new clients without rescanning every bucket per request.
    next_idle: Option<Instant>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// Each key may make `burst` attempts at once, then `per_minute` per minute. At most
    /// `max_keys` keys are tracked; past that, new ones are refused (fail closed).
    pub fn new(burst: u32, per_minute: u32, max_keys: usize) -> Self {
        Self {
            burst,
            per_minute,
            max_keys,
            // Not preallocated: `max_keys` is a ceiling, possibly a huge one.
            buckets: HashMap::new(),
            next_idle: None,
        }
    }

    /// Spends one of `key`'s tokens, or says how long until one is available. A refused
    /// attempt spends nothing.
    pub fn check(&mut self, now: Instant, key: impl Into<K>) -> Result<(), RetryAfter> {
        if self.burst == 0 {
            return Err(RetryAfter(NEVER_REFILLS));
        }
        let capacity = self.capacity();
        let key = key.into();
        if let Some(bucket) = self.buckets.get_mut(&key) {
            bucket.refill(now, self.per_minute, capacity);
            return bucket.take(self.per_minute);
        }

        if self.buckets.len() >= self.max_keys {
            if self.next_idle.is_some_and(|idle| now >= idle) {
                self.prune(now);
            }
            if self.buckets.len() >= self.max_keys {
                return Err(RetryAfter(self.refill_interval()));
            }
        }
        let bucket = Bucket {
            tokens: capacity - UNITS_PER_TOKEN,
            updated: now,
        };
        self.next_idle = earliest(self.next_idle, bucket.full_at(self.per_minute, capacity));
        self.buckets.insert(key, bucket);
        Ok(())
    }

    /// Forgets clients whose bucket has refilled: a full bucket is what a new client gets, so
    /// dropping it loses nothing.
    pub fn prune(&mut self, now: Instant) {
        let (per_minute, capacity) = (self.per_minute, self.capacity());
        let mut next_idle = None;
        self.buckets.retain(|_, bucket| {
            bucket.refill(now, per_minute, capacity);
            let full_at = bucket.full_at(per_minute, capacity);
            let keep = full_at.is_none_or(|full| full > now);
            if keep {
                next_idle = earliest(next_idle, full_at);
            }
            keep
        });
        self.next_idle = next_idle;
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    fn capacity(&self) -> u128 {
        u128::from(self.burst) * UNITS_PER_TOKEN
    }

    /// Time for one token to refill: what a client refused for lack of table space should wait.
    fn refill_interval(&self) -> Duration {
        nanos_for(UNITS_PER_TOKEN, self.per_minute)
    }
}

/// A client network, as every per-source limit counts it.
///
/// IPv6 is grouped by /64 because that is the smallest prefix routed to a site: one attacker
/// holds 2^64 addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4(Ipv4Addr),
    V6Prefix(u64),
}

impl From<IpAddr> for SourceKey {
    fn from(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(v4) => Self::V4(v4),
            // Dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d; all of those share one
            // /64, so grouping them by prefix would put every IPv4 client in one bucket.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4),
                None => Self::V6Prefix((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKey::V4(v4) => v4.fmt(f),
            SourceKey::V6Prefix(prefix) => {
                let net = std::net::Ipv6Addr::from_bits(u128::from(*prefix) << 64);
                write!(f, "{net}/64")
            }
        }
    }
}

/// One client's tokens, in units of 1/[`UNITS_PER_TOKEN`] token, as of `updated`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u128,
    updated: Instant,
}

impl Bucket {
    /// Adds what has refilled since `updated`. A clock reading earlier than `updated` adds
    /// nothing and does not move `updated` back, so it cannot mint tokens later.
    fn refill(&mut self, now: Instant, per_minute: u32, capacity: u128) {
        let elapsed = now.saturating_duration_since(self.updated).as_nanos();
        let added = elapsed.saturating_mul(u128::from(per_minute));
        self.tokens = self.tokens.saturating_add(added).min(capacity);
        self.updated = self.updated.max(now);
    }

    fn take(&mut self, per_minute: u32) -> Result<(), RetryAfter> {
        match self.tokens.checked_sub(UNITS_PER_TOKEN) {
            Some(rest) => {
                self.tokens = rest;
                Ok(())
            }
            None => Err(RetryAfter(nanos_for(
                UNITS_PER_TOKEN - self.tokens,
                per_minute,
            ))),
        }
    }

    /// When the bucket will be full if left alone; `None` if never (or centuries away).
    fn full_at(&self, per_minute: u32, capacity: u128) -> Option<Instant> {
        let missing = capacity.saturating_sub(self.tokens);
        if missing == 0 {
            return Some(self.updated);
        }
        if per_minute == 0 {
            return None;
        }
        let nanos = missing.div_ceil(u128::from(per_minute));
        let wait = Duration::from_nanos(u64::try_from(nanos).ok()?);
        self.updated.checked_add(wait)
    }
}

/// Time to refill `units` at `per_minute`, rounded up so a client that waits it is admitted.
fn nanos_for(units: u128, per_minute: u32) -> Duration {
    if per_minute == 0 {
        return NEVER_REFILLS;
    }
    let nanos = units.div_ceil(u128::from(per_minute));
    u64::try_from(nanos).map_or(NEVER_REFILLS, Duration::from_nanos)
}

/// The earlier of two optional instants, where `None` means never.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    const SECOND: Duration = Duration::from_secs(1);

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn v6(text: &str) -> IpAddr {
        IpAddr::V6(text.parse::<Ipv6Addr>().unwrap())
    }

    #[test]
    fn burst_then_refusal_with_retry_after() {
        let t0 = Instant::now();
        // 60 per minute: one token per second.
        let mut limiter = JoinLimiter::new(3, 60, 100);
        for _ in 0..3 {
            assert_eq!(limiter.check(t0, v4(1)), Ok(()));
        }
        assert_eq!(limiter.check(t0, v4(1)), Err(RetryAfter(SECOND)));
        // Refusals spend nothing, and the wait shrinks as time passes.
        let later = t0 + Duration::from_millis(250);
        assert_eq!(
            limiter.check(later, v4(1)),
            Err(RetryAfter(Duration::from_millis(750)))
        );
    }

    #[test]
    fn retry_after_rounds_up_for_uneven_rates() {
        let t0 = Instant::now();
        // 7 per minute: 60/7 s = 8.571428572 s, rounded up to the nanosecond.
        let mut limiter = JoinLimiter::new(1, 7, 100);
        assert_eq!(limiter.check(t0, v4(1)), Ok(()));
        let Err(retry) = limiter.check(t0, v4(1)) else {
            panic!("second attempt admitted");
        };
        assert_eq!(retry, RetryAfter(Duration::from_nanos(8_571_428_572)));
        assert_eq!(retry.secs_rounded_up(), 9);
        assert_eq!(
            limiter.check(t0 + retry.0 - Duration::from_nanos(1), v4(1)),
            Err(RetryAfter(Duration::from_nanos(1)))
        );
        assert_eq!(limiter.check(t0 + retry.0, v4(1)), Ok(()));
    }

    #[test]
    fn refill_is_continuous_and_capped_at_burst() {
        let t0 = Instant::now();
        let mut limiter = JoinLimiter::new(2, 60, 100);
        assert_eq!(limiter.check(t0, v4(1)), Ok(()));
        assert_eq!(limiter.check(t0, v4(1)), Ok(()));
        // Half a second refills half a token: not enough.
        let half = t0 + SECOND / 2;
        assert_eq!(limiter.check(half, v4(1)), Err(RetryAfter(SECOND / 2)));
        assert_eq!(limiter.check(t0 + SECOND, v4(1)), Ok(()));
        assert!(limiter.check(t0 + SECOND, v4(1)).is_err());
        // A long idle period refills only up to `burst`.
        let hour = t0 + Duration::from_secs(3600);
        assert_eq!(limiter.check(hour, v4(1)), Ok(()));
        assert_eq!(limiter.check(hour, v4(1)), Ok(()));
        assert_eq!(limiter.check(hour, v4(1)), Err(RetryAfter(SECOND)));
    }

    #[test]
    fn ipv6_is_grouped_by_64() {
        let t0 = Instant::now();
        let mut limiter = JoinLimiter::new(1, 60, 100);
        assert_eq!(limiter.check(t0, v6("2001:db8:1:2::1")), Ok(()));
        assert!(
            limiter
                .check(t0, v6("2001:db8:1:2:ffff:ffff:ffff:ffff"))
                .is_err()
        );
        assert_eq!(limiter.check(t0, v6("2001:db8:1:3::1")), Ok(()));
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn ipv4_addresses_are_separate() {
        let t0 = Instant::now();
        let mut limiter = JoinLimiter::new(1, 60, 100);
        for last in 1..=10 {
            assert_eq!(limiter.check(t0, v4(last)), Ok(()));
        }
        assert!(limiter.check(t0, v4(1)).is_err());
        assert_eq!(limiter.len(), 10);
    }

    #[test]
    fn any_key_type_gets_its_own_buckets() {
        // The server limits heartbeats per member (keyed by peer) as well as per network.
        let t0 = Instant::now();
        let mut limiter: RateLimiter<u32> = RateLimiter::new(2, 60, 100);
        assert_eq!(limiter.check(t0, 7u32), Ok(()));
        assert_eq!(limiter.check(t0, 7u32), Ok(()));
        assert_eq!(limiter.check(t0, 7u32), Err(RetryAfter(SECOND)));
        assert_eq!(limiter.check(t0, 8u32), Ok(()));
        assert_eq!(limiter.check(t0 + SECOND, 7u32), Ok(()));
    }

    #[test]
    fn source_keys_print_as_networks() {
        assert_eq!(SourceKey::from(v4(1)).to_string(), "192.0.2.1");
        assert_eq!(
            SourceKey::from(v6("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let t0 = Instant::now();
        let mut limiter = JoinLimiter::new(1, 60, 100);
        assert_eq!(limiter.check(t0, v6("::ffff:192.0.2.1")), Ok(()));
        assert_eq!(limiter.check(t0, v6("::ffff:192.0.2.2")), Ok(()));
        // The same client seen on an IPv4 socket shares the bucket.
        assert!(limiter.check(t0, v4(1)).is_err());
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn full_table_evicts_idle_keys_then_fails_closed() {
        let t0 = Instant::now();
        let mut limiter = JoinLimiter::new(2, 60, 2);
        assert_eq!(limiter.check(t0, v4(1)), Ok(()));
        assert_eq!(limiter.check(t0 + SECOND / 2, v4(2)), Ok(()));
        // Both buckets are still refilling: a new client is refused, not tracked.
        assert_eq!(limiter.check(t0, v4(3)), Err(RetryAfter(SECOND)));
        assert_eq!(limiter.len(), 2);
        // Known clients are unaffected.
        assert_eq!(limiter.check(t0, v4(1)), Ok(()));
        // By t0 + 2 s both have refilled (client 1 spent two tokens at t0, client 2 one at
        // t0 + 0.5 s); both are dropped to make room.
        let t2 = t0 + 2 * SECOND;
        assert_eq!(limiter.check(t2, v4(3)), Ok(()));
        assert_eq!(limiter.len(), 1);
        assert_eq!(limiter.check(t2, v4(4)), Ok(()));
        assert_eq!(limiter.check(t2, v4(5)), Err(RetryAfter(SECOND)));
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn full_table_refuses_until_the_earliest_bucket_refills() {
        let t0 = Instant::now();
        let mut limiter = JoinLimiter::new(1, 60, 2);
        assert_eq!(limiter.check(t0, v4(1)), Ok(()));
        assert_eq!(limiter.check(t0 + SECOND / 2, v4(2)), Ok(()));
        let just_before = t0 + SECOND - Duration::from_nanos(1);
        assert!(limiter.check(just_before, v4(3)).is_err());
        assert_eq!(limiter.check(t0 + SECOND, v4(3)), Ok(()));
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn prune_removes_only_refilled_buckets() {
        let t0 = Instant::now();
        let mut limiter = JoinLimiter::new(2, 60, 100);
        assert_eq!(limiter.check(t0, v4(1)), Ok(()));
        assert_eq!(limiter.check(t0, v4(2)), Ok(()));
        assert_eq!(limiter.check(t0, v4(2)), Ok(()));
        limiter.prune(t0 + SECOND / 2);
        assert_eq!(limiter.len(), 2);
        limiter.prune(t0 + SECOND);
        assert_eq!(limiter.len(), 1);
        limiter.prune(t0 + 2 * SECOND);
        assert!(limiter.is_empty());
        // A pruned client starts over with a full bucket.
        assert_eq!(limiter.check(t0 + 2 * SECOND, v4(2)), Ok(()));
        assert_eq!(limiter.check(t0 + 2 * SECOND, v4(2)), Ok(()));
    }

    #[test]
    fn zero_burst_refuses_everything_and_stores_nothing() {
        let t0 = Instant::now();
        let mut limiter = JoinLimiter::new(0, 60, 100);
        for offset in [0, 1, 3600, 86_400] {
            let now = t0 + Duration::from_secs(offset);
            assert_eq!(limiter.check(now, v4(1)), Err(RetryAfter(NEVER_REFILLS)));
        }
        assert!(limiter.is_empty());
    }

    #[test]
    fn zero_per_minute_never_refills() {
        let t0 = Instant::now();
        let mut limiter = JoinLimiter::new(2, 0, 1);
        assert_eq!(limiter.check(t0, v4(1)), Ok(()));
        assert_eq!(limiter.check(t0, v4(1)), Ok(()));
        let week = t0 + Duration::from_secs(7 * 86_400);
        assert_eq!(limiter.check(week, v4(1)), Err(RetryAfter(NEVER_REFILLS)));
        // The spent bucket is never idle, so the one slot stays taken.
        limiter.prune(week);
        assert_eq!(limiter.len(), 1);
        assert_eq!(limiter.check(week, v4(2)), Err(RetryAfter(NEVER_REFILLS)));
    }

    #[test]
    fn zero_max_keys_refuses_every_client() {
        let t0 = Instant::now();
        let mut limiter = JoinLimiter::new(5, 60, 0);
        assert_eq!(limiter.check(t0, v4(1)), Err(RetryAfter(SECOND)));
        assert!(limiter.is_empty());
    }

    #[test]
    fn clock_going_back_mints_no_tokens() {
        let t1 = Instant::now() + Duration::from_secs(10);
        let t0 = t1 - Duration::from_secs(10);
        let mut limiter = JoinLimiter::new(1, 60, 100);
        assert_eq!(limiter.check(t1, v4(1)), Ok(()));
        assert!(limiter.check(t0, v4(1)).is_err());
        // Still a full second after the last real reading, not after the earlier one.
        assert!(limiter.check(t0 + SECOND, v4(1)).is_err());
        assert_eq!(limiter.check(t1 + SECOND, v4(1)), Ok(()));
    }

    #[test]
    fn extreme_parameters_do_not_panic() {
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(100 * 365 * 86_400);
        for (burst, per_minute) in [
            (u32::MAX, u32::MAX),
            (u32::MAX, 1),
            (1, u32::MAX),
            (u32::MAX, 0),
        ] {
            let mut limiter = JoinLimiter::new(burst, per_minute, usize::MAX);
            for now in [t0, far, t0] {
                let _ = limiter.check(now, v4(1));
                let _ = limiter.check(now, v6("2001:db8::1"));
                limiter.prune(now);
            }
        }
        let mut tiny = JoinLimiter::new(1, 1, 1);
        assert_eq!(tiny.check(t0, v4(1)), Ok(()));
        assert_eq!(
            tiny.check(t0, v4(1)),
            Err(RetryAfter(Duration::from_secs(60)))
        );
    }

    #[test]
    fn retry_after_header_seconds_round_up() {
        assert_eq!(RetryAfter(Duration::ZERO).secs_rounded_up(), 0);
        assert_eq!(RetryAfter(Duration::from_millis(1)).secs_rounded_up(), 1);
        assert_eq!(RetryAfter(SECOND).secs_rounded_up(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(1001)).secs_rounded_up(), 2);
        assert_eq!(RetryAfter(Duration::MAX).secs_rounded_up(), u64::MAX);
    }
}
