//! The relay's per-datagram decision, sans IO: given the route table and one received
//! datagram, either rewrite its channel in place and say where it goes, hand it to the control
//! thread, or say why it is dropped. It allocates nothing and never panics, whatever the bytes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::io::udp::canonical;
use crate::relay::route::RouteTable;
use crate::wire::{self, RELAY_CONTROL_MAGIC, RELAY_DATA_MAGIC};

/// What to do with one datagram received on the relay port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Send the datagram, now carrying the other side's channel number, to this address.
    /// It has the same length as received: the relay never amplifies.
    To(SocketAddr),
    /// A bind request or another control frame: the control thread handles it.
    Control,
    /// Refused, for this reason.
    Drop(RelayDrop),
}

/// Why the relay dropped a datagram. Counted per reason, so an operator can tell a scan of
/// the port from a stale client from a session over its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayDrop {
    /// Neither a relay data frame nor a control frame.
    NotRelayFrame,
    /// Starts with the data magic but is shorter than a relay header.
    Malformed,
    /// No session has this channel (never bound, or expired).
    UnknownChannel,
    /// The channel exists but is bound to another source address: a forged or stale frame.
    WrongSource,
    /// The route is over its byte budget.
    RateLimited,
    /// A control frame arrived while the control thread's queue was full (or closed).
    ControlQueueFull,
    /// The socket refused the forwarded datagram (buffer full for too long, or an error).
    SendFailed,
}

impl RelayDrop {
    pub const ALL: [RelayDrop; 7] = [
        RelayDrop::NotRelayFrame,
        RelayDrop::Malformed,
        RelayDrop::UnknownChannel,
        RelayDrop::WrongSource,
        RelayDrop::RateLimited,
        RelayDrop::ControlQueueFull,
        RelayDrop::SendFailed,
    ];

    /// Stable snake_case name, for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            RelayDrop::NotRelayFrame => "not_relay_frame",
            RelayDrop::Malformed => "malformed",
            RelayDrop::UnknownChannel => "unknown_channel",
            RelayDrop::WrongSource => "wrong_source",
            RelayDrop::RateLimited => "rate_limited",
            RelayDrop::ControlQueueFull => "control_queue_full",
            RelayDrop::SendFailed => "send_failed",
        }
    }
}

/// Decides what happens to `datagram`, received from `from` at `now_ns` (the clock the routes'
/// limiters use). For [`Forward::To`] the channel has already been rewritten in place;
/// otherwise the datagram is untouched.
///
/// The source is checked before the budget is charged, so that frames forged with a known
/// channel from elsewhere cannot use up a session's budget.
#[inline]
pub fn forward(table: &RouteTable, now_ns: u64, from: SocketAddr, datagram: &mut [u8]) -> Forward {
    let Some((channel, _payload)) = wire::relay_data(datagram) else {
        return if datagram.starts_with(&RELAY_DATA_MAGIC) {
            Forward::Drop(RelayDrop::Malformed)
        } else if datagram.starts_with(&RELAY_CONTROL_MAGIC) {
            Forward::Control
        } else {
            Forward::Drop(RelayDrop::NotRelayFrame)
        };
    };
    let Some(route) = table.get(channel) else {
        return Forward::Drop(RelayDrop::UnknownChannel);
    };
    if canonical(from) != route.from {
        return Forward::Drop(RelayDrop::WrongSource);
    }
    if !route.limiter.admit(now_ns, datagram.len()) {
        route.stats.record_rate_limited();
        return Forward::Drop(RelayDrop::RateLimited);
    }
    // Cannot fail: `relay_data` saw a whole header.
    if !wire::write_relay_header(datagram, route.out_channel) {
        return Forward::Drop(RelayDrop::Malformed);
    }
    route.stats.record_forwarded(datagram.len());
    Forward::To(route.to)
}

/// Relay-wide counters: datagrams forwarded and dropped by reason.
///
/// Workers add to them once per receive batch, not per datagram, so that several cores
/// forwarding at full rate do not fight over these cache lines.
#[derive(Debug, Default)]
pub struct RelayCounters {
    drops: [AtomicU64; RelayDrop::ALL.len()],
    forwarded_packets: AtomicU64,
    forwarded_bytes: AtomicU64,
}

/// A copy of [`RelayCounters`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayCountersSnapshot {
    /// Datagrams the relay sent on (the kernel accepted them).
    pub forwarded_packets: u64,
    /// Their bytes, relay header included.
    pub forwarded_bytes: u64,
    /// Every reason with its count, in [`RelayDrop::ALL`] order.
    pub drops: [(RelayDrop, u64); RelayDrop::ALL.len()],
}

impl RelayCountersSnapshot {
    /// The count for one reason.
    pub fn dropped(&self, reason: RelayDrop) -> u64 {
        self.drops[reason as usize].1
    }
}

impl RelayCounters {
    pub fn record(&self, reason: RelayDrop) {
        self.add(reason, 1);
    }

    pub fn add(&self, reason: RelayDrop, n: u64) {
        self.drops[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, reason: RelayDrop) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// Counts `packets` datagrams of `bytes` in all as forwarded.
    pub fn add_forwarded(&self, packets: u64, bytes: u64) {
        self.forwarded_packets.fetch_add(packets, Ordering::Relaxed);
        self.forwarded_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn forwarded_packets(&self) -> u64 {
        self.forwarded_packets.load(Ordering::Relaxed)
    }

    pub fn forwarded_bytes(&self) -> u64 {
        self.forwarded_bytes.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> RelayCountersSnapshot {
        RelayCountersSnapshot {
            forwarded_packets: self.forwarded_packets(),
            forwarded_bytes: self.forwarded_bytes(),
            drops: RelayDrop::ALL.map(|r| (r, self.get(r))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::Gcra;
    use crate::relay::route::Route;
    use std::sync::Arc;

    const A: u32 = 0x1111_2222;
    const B: u32 = 0xdead_beef;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn one() -> SocketAddr {
        addr("192.0.2.1:40000")
    }

    fn two() -> SocketAddr {
        addr("[2001:db8::2]:50000")
    }

    /// A session between `one()` (channel A) and `two()` (channel B), with `limiter` on A.
    fn session(limiter: Gcra) -> RouteTable {
        let mut table = RouteTable::new();
        table.insert(A, Route::new(one(), two(), B, Arc::new(limiter)));
        table.insert(B, Route::new(two(), one(), A, Arc::new(Gcra::unlimited())));
        table
    }

    fn frame(channel: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0; wire::RELAY_HEADER_LEN + payload.len()];
        assert!(wire::write_relay_header(&mut f, channel));
        f[wire::RELAY_HEADER_LEN..].copy_from_slice(payload);
        f
    }

    #[test]
    fn forwards_both_ways_rewriting_the_channel() {
        let table = session(Gcra::unlimited());
        let mut f = frame(A, b"hello");
        assert_eq!(forward(&table, 0, one(), &mut f), Forward::To(two()));
        assert_eq!(f, frame(B, b"hello"));
        assert_eq!(forward(&table, 0, two(), &mut f), Forward::To(one()));
        assert_eq!(f, frame(A, b"hello"));
        let stats = &table.get(A).unwrap().stats;
        assert_eq!((stats.packets(), stats.bytes()), (1, 13));
        assert_eq!(table.get(B).unwrap().stats.packets(), 1);
    }

    #[test]
    fn a_bare_header_is_forwarded() {
        let table = session(Gcra::unlimited());
        let mut f = frame(A, b"");
        assert_eq!(forward(&table, 0, one(), &mut f), Forward::To(two()));
        assert_eq!(f, frame(B, b""));
    }

    #[test]
    fn mapped_ipv4_sources_match() {
        let table = session(Gcra::unlimited());
        let mut f = frame(A, b"x");
        let mapped = addr("[::ffff:192.0.2.1]:40000");
        assert_eq!(forward(&table, 0, mapped, &mut f), Forward::To(two()));
    }

    #[test]
    fn an_unknown_source_for_a_known_channel_is_refused() {
        let table = session(Gcra::unlimited());
        for from in [
            addr("192.0.2.1:40001"),
            addr("192.0.2.9:40000"),
            two(),
            addr("[::1]:40000"),
        ] {
            let mut f = frame(A, b"forged");
            assert_eq!(
                forward(&table, 0, from, &mut f),
                Forward::Drop(RelayDrop::WrongSource),
                "from {from}"
            );
            assert_eq!(f, frame(A, b"forged"), "a refused frame is untouched");
        }
        assert_eq!(table.get(A).unwrap().stats.packets(), 0);
    }

    #[test]
    fn wrong_sources_do_not_spend_the_budget() {
        let table = session(Gcra::new(1_000, 100));
        for _ in 0..100 {
            let mut f = frame(A, &[0; 92]);
            let refused = forward(&table, 0, two(), &mut f);
            assert_eq!(refused, Forward::Drop(RelayDrop::WrongSource));
        }
        let mut f = frame(A, &[0; 92]);
        assert_eq!(forward(&table, 0, one(), &mut f), Forward::To(two()));
    }

    #[test]
    fn over_budget_is_rate_limited() {
        // 1000 B/s, burst of two 100-byte frames.
        let table = session(Gcra::new(1_000, 200));
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            let mut f = frame(A, &[7; 92]);
            outcomes.push(forward(&table, 0, one(), &mut f));
        }
        let limited = Forward::Drop(RelayDrop::RateLimited);
        assert_eq!(outcomes, [Forward::To(two()), Forward::To(two()), limited]);
        let mut f = frame(A, &[7; 92]);
        assert_eq!(
            forward(&table, 100_000_000, one(), &mut f),
            Forward::To(two())
        );
        let stats = &table.get(A).unwrap().stats;
        assert_eq!((stats.packets(), stats.rate_limited()), (3, 1));
        // The other direction has its own budget.
        let mut f = frame(B, &[7; 92]);
        assert_eq!(forward(&table, 0, two(), &mut f), Forward::To(one()));
    }

    #[test]
    fn unknown_channels_control_frames_and_garbage() {
        let table = session(Gcra::unlimited());
        let cases: [(&[u8], Forward); 9] = [
            (
                &frame(0x0bad_0bad, b"x"),
                Forward::Drop(RelayDrop::UnknownChannel),
            ),
            (b"LRrb", Forward::Control),
            (b"LRrb bind request", Forward::Control),
            (b"LRrd", Forward::Drop(RelayDrop::Malformed)),
            (b"LRrd\x11\x11\x22", Forward::Drop(RelayDrop::Malformed)),
            (b"", Forward::Drop(RelayDrop::NotRelayFrame)),
            (b"LRr", Forward::Drop(RelayDrop::NotRelayFrame)),
            (
                b"lrrd\x11\x11\x22\x22",
                Forward::Drop(RelayDrop::NotRelayFrame),
            ),
            (
                &[4, 0, 0, 0, 1, 2, 3, 4],
                Forward::Drop(RelayDrop::NotRelayFrame),
            ),
        ];
        for (bytes, expected) in cases {
            let mut d = bytes.to_vec();
            assert_eq!(forward(&table, 0, one(), &mut d), expected, "{bytes:?}");
            assert_eq!(d, bytes, "only forwarded frames are rewritten");
        }
    }

    #[test]
    fn random_garbage_never_panics_and_never_grows() {
        let mut table = session(Gcra::new(1_000_000, 10_000));
        // Some channels that random frames will hit.
        for channel in 0..256u32 {
            let route = Route::new(one(), two(), channel ^ 1, Arc::new(Gcra::unlimited()));
            table.insert(channel << 24, route);
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut buf = [0u8; 2048];
        let mut forwarded = 0;
        for i in 0..200_000u64 {
            let len = (next() % 64) as usize + if i % 7 == 0 { 1400 } else { 0 };
            for b in &mut buf[..len] {
                *b = next() as u8;
            }
            // Make a fair share look like relay frames, with a known channel's top byte.
            match i % 4 {
                0 if len >= 4 => buf[..4].copy_from_slice(&RELAY_DATA_MAGIC),
                1 if len >= 5 => {
                    buf[..4].copy_from_slice(&RELAY_DATA_MAGIC);
                    buf[5..len.min(8)].fill(0);
                }
                2 if len >= 4 => buf[..4].copy_from_slice(&RELAY_CONTROL_MAGIC),
                _ => {}
            }
            let from = if next() % 2 == 0 { one() } else { two() };
            let before = buf;
            match forward(&table, i * 1_000, from, &mut buf[..len]) {
                Forward::To(to) => {
                    forwarded += 1;
                    assert_eq!(to, two());
                    assert_eq!(buf[8..len], before[8..len], "payload untouched");
                    assert_eq!(&buf[..4], &RELAY_DATA_MAGIC);
                }
                Forward::Control => assert!(buf[..len].starts_with(&RELAY_CONTROL_MAGIC)),
                Forward::Drop(_) => assert_eq!(buf, before),
            }
            assert_eq!(
                buf[len..],
                before[len..],
                "nothing written past the datagram"
            );
        }
        assert!(
            forwarded > 0,
            "the fuzz loop never reached the forwarding path"
        );
    }

    #[test]
    fn counters_by_reason() {
        let c = RelayCounters::default();
        c.record(RelayDrop::WrongSource);
        c.add(RelayDrop::UnknownChannel, 3);
        c.add_forwarded(2, 300);
        let s = c.snapshot();
        assert_eq!(s.dropped(RelayDrop::WrongSource), 1);
        assert_eq!(s.dropped(RelayDrop::UnknownChannel), 3);
        assert_eq!(s.dropped(RelayDrop::RateLimited), 0);
        assert_eq!((s.forwarded_packets, s.forwarded_bytes), (2, 300));
        assert_eq!(c.get(RelayDrop::UnknownChannel), 3);
        let names: std::collections::HashSet<_> = RelayDrop::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), RelayDrop::ALL.len());
        for (i, r) in RelayDrop::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(s.drops[i].0, *r);
        }
    }
}
