//! A byte-rate limiter that every worker thread can use without a lock.
//!
//! A relay pays for every byte it forwards, so each route gets a budget; a member's LAN
//! broadcasts reach everyone, so each member gets one too (see `lan`). The limiter is the
//! generic cell rate algorithm (GCRA): a single "theoretical arrival time" (TAT) says when the
//! route will have paid off everything admitted so far at the configured rate. A datagram is
//! admitted when, with its own cost added, the TAT runs ahead of now by no more than the
//! burst allowance. That is a token bucket without a refill step: one `AtomicU64` and one
//! compare-exchange per datagram, so workers on different cores share a route's budget
//! without a lock and without any background timer.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const NANOS_PER_SEC: u128 = 1_000_000_000;
/// Fixed-point shift of `ns_per_byte`: the cost of a datagram is one multiplication instead of
/// a 64-bit division on the packet path.
const FRACTION_BITS: u32 = 32;

/// A lock-free byte-rate limiter (GCRA on one atomic). Shared by all workers through an
/// `Arc`, and carried from one route table to the next so that republishing the table does
/// not refill a route's budget.
#[derive(Debug)]
pub struct Gcra {
    /// When everything admitted so far is paid off at the configured rate, in nanoseconds on
    /// the caller's clock. Starts at 0: a new limiter has its whole burst available.
    tat: AtomicU64,
    /// Nanoseconds one byte costs, in 32.32 fixed point, rounded up so that rounding can only
    /// make the limiter stricter. 0 means unlimited.
    ns_per_byte: u64,
    /// How far the TAT may run ahead of now: the burst in nanoseconds at the configured rate,
    /// rounded down (again, stricter).
    burst_ns: u64,
}

impl Gcra {
    /// A limiter admitting `bytes_per_sec` on average with bursts of up to `burst_bytes`.
    /// `bytes_per_sec == 0` means unlimited.
    ///
    /// `burst_bytes` is also the largest datagram that can ever pass: a datagram bigger than
    /// the burst is refused even by an idle route, so it should be at least the largest
    /// datagram the relay carries (a full-MTU WireGuard datagram in a relay frame).
    pub fn new(bytes_per_sec: u64, burst_bytes: u64) -> Self {
        if bytes_per_sec == 0 {
            return Gcra::unlimited();
        }
        let rate = u128::from(bytes_per_sec);
        let ns_per_byte = ((NANOS_PER_SEC << FRACTION_BITS).div_ceil(rate))
            .try_into()
            .unwrap_or(u64::MAX);
        let burst_ns = (u128::from(burst_bytes) * NANOS_PER_SEC / rate)
            .try_into()
            .unwrap_or(u64::MAX);
        Gcra {
            tat: AtomicU64::new(0),
            // At 1 B/s a byte costs 10^9 × 2^32, which fits; rounding up never gives 0, which
            // would read as unlimited.
            ns_per_byte,
            burst_ns,
        }
    }

    /// A limiter that admits everything without touching its atomic.
    pub fn unlimited() -> Self {
        Gcra {
            tat: AtomicU64::new(0),
            ns_per_byte: 0,
            burst_ns: u64::MAX,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.ns_per_byte == 0
    }

    /// Whether a datagram of `bytes` may pass at `now_ns` (any monotonic clock in nanoseconds,
    /// the same for every caller of this limiter); an admitted datagram is charged to the
    /// budget, a refused one is not.
    ///
    /// Over any interval, whatever the threads and the interleaving, the bytes admitted never
    /// exceed the rate times the interval's length plus the burst.
    #[inline]
    pub fn admit(&self, now_ns: u64, bytes: usize) -> bool {
        if self.ns_per_byte == 0 {
            return true;
        }
        // Rounded up, like `ns_per_byte`: exact rates stay exact, others err on the strict side.
        let cost = (bytes as u128 * u128::from(self.ns_per_byte)).div_ceil(1 << FRACTION_BITS);
        let cost = u64::try_from(cost).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            // Past the end of the clock (584 years of nanoseconds) nothing is admitted.
            let Some(new_tat) = tat.max(now_ns).checked_add(cost) else {
                return false;
            };
            // `new_tat >= now_ns`, so the subtraction cannot wrap.
            if new_tat - now_ns > self.burst_ns {
                return false;
            }
            // Relaxed is enough: the TAT is the only state, and the compare-exchange orders
            // every update to it.
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(current) => tat = current,
            }
        }
    }
}

/// Nanoseconds on one monotonic clock shared by every limiter of this process: a limiter
/// used from several threads needs them all to read the same clock.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    const START: u64 = 1_000_000_000_000;

    /// Admits `bytes`-sized datagrams at `now` until one is refused; returns how many passed.
    fn drain(limiter: &Gcra, now: u64, bytes: usize) -> usize {
        let mut n = 0;
        while limiter.admit(now, bytes) {
            n += 1;
            assert!(n < 1_000_000, "limiter never refuses");
        }
        n
    }

    #[test]
    fn burst_then_refusal_then_refill_at_the_rate() {
        // 1000 B/s, 10 000 B burst: ten 1000-byte datagrams at once, then one per second.
        let limiter = Gcra::new(1_000, 10_000);
        assert_eq!(drain(&limiter, START, 1_000), 10);
        assert!(!limiter.admit(START, 1_000));
        assert!(
            !limiter.admit(START + 500_000_000, 1_000),
            "half a second is not enough"
        );
        assert!(
            limiter.admit(START + 1_000_000_010, 1_000),
            "one second pays one datagram"
        );
        assert!(!limiter.admit(START + 1_000_000_010, 1_000));
        // Idle for a long time: the burst is back, and no more than the burst.
        let later = START + 3_600_000_000_000;
        assert_eq!(drain(&limiter, later, 1_000), 10);
    }

    #[test]
    fn inexact_rates_round_towards_strict() {
        // 3 B/s: a byte costs 333 333 333.3 ns, charged as 333 333 334, so a 3-byte burst
        // admits 2 bytes at once rather than risk admitting more than the rate allows.
        let limiter = Gcra::new(3, 3);
        assert_eq!(
            drain(&limiter, START, 1),
            2,
            "rounding up costs part of the third byte"
        );
        assert!(limiter.admit(START + 1_000_000_000, 1));
    }

    #[test]
    fn small_datagrams_use_the_burst_in_bytes() {
        let limiter = Gcra::new(1_000_000, 64_000);
        assert_eq!(drain(&limiter, START, 100), 640);
    }

    #[test]
    fn a_datagram_larger_than_the_burst_never_passes() {
        let limiter = Gcra::new(1_000_000, 1_000);
        assert!(!limiter.admit(START, 1_001));
        assert!(limiter.admit(START, 900));
    }

    #[test]
    fn refused_datagrams_cost_nothing() {
        let limiter = Gcra::new(1_000, 2_000);
        assert!(limiter.admit(START, 1_500));
        for _ in 0..100 {
            assert!(!limiter.admit(START, 1_500));
        }
        // 1.5 s later the first is paid off; the refusals did not add to the debt.
        assert!(limiter.admit(START + 1_500_000_001, 1_500));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let limiter = Gcra::new(0, 0);
        assert!(limiter.is_unlimited());
        for _ in 0..10_000 {
            assert!(limiter.admit(START, 65_535));
        }
        assert!(!Gcra::new(1, 1).is_unlimited());
    }

    #[test]
    fn extreme_parameters_do_not_overflow() {
        let slow = Gcra::new(1, u64::MAX);
        assert!(slow.admit(0, 1 << 40));
        assert!(
            !slow.admit(0, usize::MAX),
            "a cost past the end of the clock"
        );
        assert!(!slow.admit(u64::MAX, 1));
        let fast = Gcra::new(u64::MAX, 0);
        assert!(fast.admit(u64::MAX, 0));
        let tight = Gcra::new(1, 0);
        assert!(!tight.admit(START, 1));
        assert!(!tight.admit(u64::MAX, usize::MAX));
    }

    #[test]
    fn concurrent_use_never_exceeds_rate_times_time_plus_burst() {
        const RATE: u64 = 50_000_000; // 50 MB/s
        const BURST: u64 = 100_000;
        const DATAGRAM: usize = 1_200;
        let limiter = Arc::new(Gcra::new(RATE, BURST));
        let admitted = Arc::new(AtomicUsize::new(0));
        let epoch = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (limiter, admitted) = (limiter.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..200_000 {
                        let now = epoch.elapsed().as_nanos() as u64;
                        if limiter.admit(now, DATAGRAM) {
                            admitted.fetch_add(DATAGRAM, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let elapsed = epoch.elapsed().as_nanos();
        let bound = u128::from(RATE) * elapsed / 1_000_000_000 + u128::from(BURST);
        let admitted = admitted.load(Ordering::Relaxed) as u128;
        assert!(
            admitted <= bound,
            "admitted {admitted} B, more than {bound} B in {elapsed} ns"
        );
        assert!(admitted > 0);
    }

    #[test]
    fn concurrent_use_at_one_instant_admits_exactly_the_burst() {
        // With time standing still, the threads race for the burst and nothing more.
        let limiter = Arc::new(Gcra::new(1_000, 100_000));
        let admitted = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (limiter, admitted) = (limiter.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if limiter.admit(START, 100) {
                            admitted.fetch_add(100, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 100_000);
    }
}
