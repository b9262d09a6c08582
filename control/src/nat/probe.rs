//! The NAT probe: which STUN Binding requests to send, when to resend them, and what the
//! answers say about our NAT, as a sans-IO state machine. The owner sends what
//! [`NatProbe::poll_transmit`] hands out from the socket under test (the WireGuard port, so the
//! mapping found is the one peers will use), feeds back every STUN datagram that socket
//! receives, and reads the [`NetReport`] once [`NatProbe::is_done`].
//!
//! Tests (RFC 5780 §4, simplified to what hole punching needs):
//! - a Binding to every server: our reflexive address as each saw it; different answers mean
//!   a mapping per destination (symmetric NAT);
//! - at the first server that names an alternate address (OTHER-ADDRESS, RFC 5780), two
//!   filtering tests: CHANGE-REQUEST for the other address and port (answered: anyone may
//!   send to our mapping), and for the other port only (answered: anyone at an address we
//!   sent to may);
//! - once those are over, a Binding to that server's alternate IP address at its primary port
//!   (RFC 5780's mapping test II), so one RFC 5780 server is enough to see a mapping that
//!   varies. Not sooner: our request would open the hole the filtering test looks for, and an
//!   address-dependent NAT would look full-cone. Not to the alternate port either: the
//!   filtering test's unsolicited answer came from there, and Linux's NAT, finding that
//!   connection already tracked, gives our request a new port: every NAT would look symmetric.
//!
//! Every request is resent on a fixed schedule until answered or given up, so the probe ends
//! within two [`GIVE_UP`]s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::stun::{self, Change};
use super::{Filtering, NatFacts, NatType, classify};

/// When a request is (re)sent, counted from its first send; it is given up at [`GIVE_UP`].
const SEND_AT: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_millis(750),
    Duration::from_millis(1500),
];
/// How long a request may go unanswered: past it, the server is unreachable or, for a
/// filtering test, our NAT dropped the answer.
pub const GIVE_UP: Duration = Duration::from_millis(2500);
/// At most this many servers are asked (each may add a test).
pub const MAX_SERVERS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Our mapping as `to` sees it; `server` is the index of the server asked (directly or at
    /// its alternate address).
    Mapping { alternate: bool },
    /// A filtering test with this CHANGE-REQUEST.
    Filtering(Change),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting { sends: usize },
    Answered { mapped: SocketAddr, rtt: Duration },
    GivenUp,
}

#[derive(Debug, Clone)]
struct Test {
    server: usize,
    to: SocketAddr,
    purpose: Purpose,
    transaction: [u8; 12],
    started: Instant,
    state: State,
}

/// One server's part of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReport {
    pub server: SocketAddr,
    /// Our address as it saw us; `None`: no answer.
    pub mapped: Option<SocketAddr>,
    pub rtt: Option<Duration>,
    /// Its alternate IP address at its primary port, where it named an alternate address
    /// (RFC 5780).
    pub alternate: Option<SocketAddr>,
    /// Our address as the alternate address saw us.
    pub alternate_mapped: Option<SocketAddr>,
}

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetReport {
    pub nat: NatType,
    pub facts: NatFacts,
    pub servers: Vec<ServerReport>,
}

/// The probe's state; see the module documentation.
#[derive(Debug)]
pub struct NatProbe {
    local: Vec<SocketAddr>,
    servers: Vec<SocketAddr>,
    /// Alternate address per server, once known.
    alternates: Vec<Option<SocketAddr>>,
    tests: Vec<Test>,
    /// Transaction ids not yet used (drawn by the owner, at random).
    ids: Vec<[u8; 12]>,
    /// Whether the first RFC 5780 server has been taken up (for filtering and alternate tests).
    filtering_started: bool,
    /// Whether to run the filtering tests at all (see [`NatProbe::mapping_only`]).
    measure_filtering: bool,
    /// The alternate address to ask once the filtering tests are over: (server, address).
    alternate_due: Option<(usize, SocketAddr)>,
}

impl NatProbe {
    /// A probe of `servers` (the first [`MAX_SERVERS`], duplicates dropped) from a socket bound
    /// to `local`. `random_id` draws transaction ids: they must be unpredictable, since an
    /// answer is recognised by its id alone (a filtering test's answer comes from elsewhere).
    pub fn new(
        now: Instant,
        servers: &[SocketAddr],
        local: Vec<SocketAddr>,
        mut random_id: impl FnMut() -> [u8; 12],
    ) -> NatProbe {
        let mut unique = Vec::new();
        for &s in servers {
            if !unique.contains(&s) && unique.len() < MAX_SERVERS {
                unique.push(s);
            }
        }
        // One test per server, one alternate per server, two filtering tests.
        let ids = (0..unique.len() * 2 + 2).map(|_| random_id()).collect();
        let mut probe = NatProbe {
            local,
            alternates: vec![None; unique.len()],
            servers: unique,
            tests: Vec::new(),
            ids,
            filtering_started: false,
            measure_filtering: true,
            alternate_due: None,
        };
        for i in 0..probe.servers.len() {
            let to = probe.servers[i];
            probe.start(now, i, to, Purpose::Mapping { alternate: false });
        }
        probe
    }

    fn start(&mut self, now: Instant, server: usize, to: SocketAddr, purpose: Purpose) {
        let Some(transaction) = self.ids.pop() else {
            return;
        };
        self.tests.push(Test {
            server,
            to,
            purpose,
            transaction,
            started: now,
            state: State::Waiting { sends: 0 },
        });
    }

    /// Skips the filtering tests: a quick re-check of the mappings (the filtering tests wait
    /// out [`GIVE_UP`] behind most NATs, and filtering rarely changes while mappings do).
    /// The report's filtering is then unknown.
    pub fn mapping_only(mut self) -> NatProbe {
        self.measure_filtering = false;
        self
    }

    /// Starts the alternate-address test once no filtering test is waiting.
    fn advance(&mut self, now: Instant) {
        let filtering_waiting = self.tests.iter().any(|t| {
            matches!(t.purpose, Purpose::Filtering(_)) && matches!(t.state, State::Waiting { .. })
        });
        if !filtering_waiting {
            if let Some((server, other)) = self.alternate_due.take() {
                self.start(now, server, other, Purpose::Mapping { alternate: true });
            }
        }
    }

    /// The next datagram to send and where, if one is due at `now`. Call until `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        self.expire(now);
        self.advance(now);
        for test in &mut self.tests {
            let State::Waiting { sends } = test.state else {
                continue;
            };
            let elapsed = now.saturating_duration_since(test.started);
            if SEND_AT.get(sends).is_some_and(|&at| elapsed >= at) {
                test.state = State::Waiting { sends: sends + 1 };
                let change = match test.purpose {
                    Purpose::Mapping { .. } => Change::None,
                    Purpose::Filtering(change) => change,
                };
                return Some((test.to, stun::binding_request(test.transaction, change)));
            }
        }
        None
    }

    /// Gives up the requests unanswered for [`GIVE_UP`].
    fn expire(&mut self, now: Instant) {
        for test in &mut self.tests {
            if matches!(test.state, State::Waiting { .. })
                && now.saturating_duration_since(test.started) >= GIVE_UP
            {
                test.state = State::GivenUp;
            }
        }
    }

    /// When [`NatProbe::poll_transmit`] next has something to do; `None` once done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.tests
            .iter()
            .filter_map(|t| match t.state {
                State::Waiting { sends } => {
                    Some(t.started + SEND_AT.get(sends).copied().unwrap_or(GIVE_UP).min(GIVE_UP))
                }
                _ => None,
            })
            .min()
    }

    /// Takes a datagram that arrived on the socket under test. Returns whether it answered
    /// one of our requests; anything else (another transaction, not STUN, an error
    /// response) is the caller's to count.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> bool {
        let Ok(response) = stun::parse_response(datagram) else {
            return false;
        };
        let Some(i) = self.tests.iter().position(|t| {
            t.transaction == response.transaction && matches!(t.state, State::Waiting { .. })
        }) else {
            return false;
        };
        let test = &mut self.tests[i];
        test.state = State::Answered {
            mapped: response.mapped,
            rtt: now.saturating_duration_since(test.started),
        };
        let (server, purpose) = (test.server, test.purpose);
        if purpose == (Purpose::Mapping { alternate: false }) {
            // An alternate address is only worth testing if it differs in address: the same
            // address on another port says nothing about a mapping per destination address.
            if let Some(other) = response.other.filter(|o| {
                o.ip() != self.servers[server].ip() && o.is_ipv4() == self.servers[server].is_ipv4()
            }) {
                let alternate = SocketAddr::new(other.ip(), self.servers[server].port());
                self.alternates[server] = Some(alternate);
                if !self.filtering_started {
                    self.filtering_started = true;
                    if self.measure_filtering {
                        let to = self.servers[server];
                        self.start(now, server, to, Purpose::Filtering(Change::AddressAndPort));
                        self.start(now, server, to, Purpose::Filtering(Change::Port));
                    }
                    self.alternate_due = Some((server, alternate));
                }
            }
        }
        self.advance(now);
        true
    }

    /// Whether every test has been answered or given up.
    pub fn is_done(&self) -> bool {
        self.alternate_due.is_none()
            && self
                .tests
                .iter()
                .all(|t| !matches!(t.state, State::Waiting { .. }))
    }

    fn answer(&self, server: usize, purpose: Purpose) -> Option<(SocketAddr, Duration)> {
        self.tests.iter().find_map(|t| match t.state {
            State::Answered { mapped, rtt } if t.server == server && t.purpose == purpose => {
                Some((mapped, rtt))
            }
            _ => None,
        })
    }

    /// What is known so far; final once [`NatProbe::is_done`].
    pub fn report(&self) -> NetReport {
        let mut facts = NatFacts {
            local: self.local.clone(),
            ..NatFacts::default()
        };
        let mut servers = Vec::with_capacity(self.servers.len());
        for (i, &server) in self.servers.iter().enumerate() {
            let direct = self.answer(i, Purpose::Mapping { alternate: false });
            let alternate = self.answer(i, Purpose::Mapping { alternate: true });
            if let Some((mapped, _)) = direct {
                facts.mappings.push((server, mapped));
            }
            if let (Some(other), Some((mapped, _))) = (self.alternates[i], alternate) {
                facts.mappings.push((other, mapped));
            }
            servers.push(ServerReport {
                server,
                mapped: direct.map(|(m, _)| m),
                rtt: direct.map(|(_, r)| r),
                alternate: self.alternates[i],
                alternate_mapped: alternate.map(|(m, _)| m),
            });
        }
        let filtering_test = |change| {
            self.tests
                .iter()
                .find_map(|t| (t.purpose == Purpose::Filtering(change)).then_some(t.state))
        };
        let both = (
            filtering_test(Change::AddressAndPort),
            filtering_test(Change::Port),
        );
        facts.filtering = match both {
            (Some(State::Answered { .. }), _) => Some(Filtering::EndpointIndependent),
            (Some(State::GivenUp), Some(State::Answered { .. })) => {
                Some(Filtering::AddressDependent)
            }
            (Some(State::GivenUp), Some(State::GivenUp)) => {
                Some(Filtering::AddressAndPortDependent)
            }
            _ => None,
        };
        NetReport {
            nat: classify(&facts),
            facts,
            servers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun_codec::rfc5389::attributes::XorMappedAddress;
    use stun_codec::rfc5389::methods::BINDING;
    use stun_codec::rfc5780::attributes::{ChangeRequest, OtherAddress};
    use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};

    use bytecodec::{DecodeExt, EncodeExt};

    stun_codec::define_attribute_enums!(
        Attr,
        AttrDecoder,
        AttrEncoder,
        [XorMappedAddress, ChangeRequest, OtherAddress]
    );

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// CHANGE-REQUEST's (change IP, change port) flags, read off the wire (RFC 5780 §7.2:
    /// 0x4 and 0x2). stun_codec 0.4 encodes them so but decodes them one bit off, so the lab
    /// reads them itself.
    fn change_flags(request: &[u8]) -> Option<(bool, bool)> {
        let mut at = 20;
        while at + 4 <= request.len() {
            let kind = u16::from_be_bytes([request[at], request[at + 1]]);
            let len = usize::from(u16::from_be_bytes([request[at + 2], request[at + 3]]));
            if kind == ChangeRequest::CODEPOINT && len == 4 {
                let flags = request[at + 7];
                return Some((flags & 0x4 != 0, flags & 0x2 != 0));
            }
            at += 4 + len.next_multiple_of(4);
        }
        None
    }

    /// A STUN server with an alternate address behind a simulated NAT, as the tests need.
    struct Lab {
        /// Primary address → alternate address of each server (RFC 5780 where `Some`).
        servers: Vec<(SocketAddr, Option<SocketAddr>)>,
        /// Our mapping as seen by destination `to`.
        mapping: fn(SocketAddr) -> SocketAddr,
        /// Whether the NAT lets an answer from `from` in, given every destination we sent to
        /// so far (its connection tracking).
        admits: fn(sent: &[SocketAddr], from: SocketAddr) -> bool,
        sent: std::cell::RefCell<Vec<SocketAddr>>,
        /// Servers that never answer.
        silent: Vec<SocketAddr>,
    }

    impl Lab {
        /// The server's answer to `request` sent to `to`: from where, and the datagram.
        fn answer(&self, to: SocketAddr, request: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
            self.sent.borrow_mut().push(to);
            if self.silent.contains(&to) {
                return None;
            }
            let (primary, other) = self.servers.iter().copied().find(|(p, o)| {
                *p == to || o.is_some_and(|o| o == to || (o.ip(), p.port()) == (to.ip(), to.port()))
            })?;
            let message = MessageDecoder::<Attr>::new()
                .decode_from_bytes(request)
                .unwrap()
                .unwrap();
            let from = match (change_flags(request), other) {
                (None | Some((false, false)), _) => to,
                (Some(_), None) => return None, // no RFC 5780: the request is refused
                (Some((true, true)), Some(o)) => o,
                (Some((false, true)), Some(o)) => SocketAddr::new(to.ip(), o.port()),
                (Some(_), Some(_)) => return None,
            };
            let mapped = (self.mapping)(to);
            if !(self.admits)(&self.sent.borrow(), from) {
                return None;
            }
            let mut answer = Message::<Attr>::new(
                MessageClass::SuccessResponse,
                BINDING,
                TransactionId::new(*message.transaction_id().as_bytes()),
            );
            answer.add_attribute(XorMappedAddress::new(mapped));
            if let Some(o) = other {
                if to == primary {
                    answer.add_attribute(OtherAddress::new(o));
                }
            }
            Some((
                from,
                MessageEncoder::new().encode_into_bytes(answer).unwrap(),
            ))
        }

        /// Runs a probe against the lab to its end; returns the report and when it ended.
        fn run(&self, servers: &[SocketAddr], local: &str) -> (NetReport, Duration) {
            let t0 = Instant::now();
            let mut n = 0u8;
            let mut probe = NatProbe::new(t0, servers, vec![addr(local)], || {
                n += 1;
                [n; 12]
            });
            let mut now = t0;
            for _ in 0..1000 {
                while let Some((to, request)) = probe.poll_transmit(now) {
                    if let Some((_, answer)) = self.answer(to, &request) {
                        now += Duration::from_millis(10);
                        assert!(probe.handle_datagram(now, &answer));
                    }
                }
                if probe.is_done() {
                    return (probe.report(), now - t0);
                }
                let next = probe.poll_timeout().expect("not done, so a timeout");
                assert!(next >= now, "timeout in the past");
                now = next;
            }
            panic!("probe never ended");
        }
    }

    const S1: &str = "198.51.100.1:3478";
    const S1_OTHER: &str = "198.51.100.2:3479";
    const S2: &str = "203.0.113.50:3478";

    fn rfc5780_lab(
        mapping: fn(SocketAddr) -> SocketAddr,
        admits: fn(&[SocketAddr], SocketAddr) -> bool,
    ) -> Lab {
        Lab {
            servers: vec![(addr(S1), Some(addr(S1_OTHER))), (addr(S2), None)],
            mapping,
            admits,
            sent: Default::default(),
            silent: Vec::new(),
        }
    }

    fn anyone(_: &[SocketAddr], _: SocketAddr) -> bool {
        true
    }
    fn addresses_sent_to(sent: &[SocketAddr], from: SocketAddr) -> bool {
        sent.iter().any(|s| s.ip() == from.ip())
    }
    fn endpoints_sent_to(sent: &[SocketAddr], from: SocketAddr) -> bool {
        sent.contains(&from)
    }

    fn stable(_: SocketAddr) -> SocketAddr {
        addr("192.0.2.7:40000")
    }
    fn per_destination(to: SocketAddr) -> SocketAddr {
        let last = match to.ip() {
            std::net::IpAddr::V4(v4) => v4.octets()[3],
            std::net::IpAddr::V6(v6) => v6.octets()[15],
        };
        SocketAddr::from((
            [192, 0, 2, 7],
            40000 + u16::from(last) * 10 + to.port() % 10,
        ))
    }

    #[test]
    fn each_nat_behaviour_gets_its_name() {
        let servers = [addr(S1), addr(S2)];
        type Mapping = fn(SocketAddr) -> SocketAddr;
        type Admits = fn(&[SocketAddr], SocketAddr) -> bool;
        let cases: [(Mapping, Admits, NatType); 4] = [
            (stable, anyone, NatType::FullCone),
            (stable, addresses_sent_to, NatType::Restricted),
            (stable, endpoints_sent_to, NatType::PortRestricted),
            (per_destination, endpoints_sent_to, NatType::Symmetric),
        ];
        for (mapping, admits, want) in cases {
            let (report, took) = rfc5780_lab(mapping, admits).run(&servers, "10.0.0.2:51820");
            assert_eq!(report.nat, want, "{report:#?}");
            assert!(took <= 2 * GIVE_UP, "took {took:?}");
        }
    }

    #[test]
    fn the_report_carries_the_facts() {
        let lab = rfc5780_lab(stable, endpoints_sent_to);
        let (report, _) = lab.run(&[addr(S1), addr(S2)], "10.0.0.2:51820");
        assert_eq!(
            report.facts.filtering,
            Some(Filtering::AddressAndPortDependent)
        );
        let s1 = &report.servers[0];
        assert_eq!(s1.mapped, Some(addr("192.0.2.7:40000")));
        assert_eq!(s1.alternate, Some(addr("198.51.100.2:3478")));
        assert_eq!(s1.alternate_mapped, Some(addr("192.0.2.7:40000")));
        assert!(s1.rtt.is_some());
        assert_eq!(report.servers[1].alternate, None);
        assert_eq!(report.facts.mappings.len(), 3);
    }

    #[test]
    fn a_public_address_is_open() {
        let lab = rfc5780_lab(|_| addr("192.0.2.7:51820"), anyone);
        let (report, _) = lab.run(&[addr(S1)], "192.0.2.7:51820");
        assert_eq!(report.nat, NatType::Open, "{report:#?}");
    }

    #[test]
    fn without_rfc5780_a_stable_mapping_is_called_port_restricted() {
        let lab = Lab {
            servers: vec![(addr(S1), None), (addr(S2), None)],
            mapping: stable,
            admits: anyone,
            sent: Default::default(),
            silent: Vec::new(),
        };
        let (report, took) = lab.run(&[addr(S1), addr(S2)], "10.0.0.2:51820");
        assert_eq!(report.nat, NatType::PortRestricted);
        assert_eq!(report.facts.filtering, None);
        // Every answer came at once: nothing was waited for.
        assert!(took < Duration::from_millis(100), "took {took:?}");
    }

    #[test]
    fn silence_is_udp_blocked_and_a_silent_server_is_skipped() {
        let mut lab = rfc5780_lab(stable, anyone);
        lab.silent = vec![addr(S1), addr(S2)];
        let (report, took) = lab.run(&[addr(S1), addr(S2)], "10.0.0.2:51820");
        assert_eq!(report.nat, NatType::UdpBlocked);
        assert_eq!(took, GIVE_UP);
        lab.silent = vec![addr(S2)];
        let (report, _) = lab.run(&[addr(S1), addr(S2)], "10.0.0.2:51820");
        assert_eq!(report.nat, NatType::FullCone);
        assert_eq!(report.servers[1].mapped, None);
    }

    #[test]
    fn a_mapping_only_probe_is_quick_and_still_sees_a_varying_mapping() {
        let servers = [addr(S1), addr(S2)];
        let lab = rfc5780_lab(per_destination, endpoints_sent_to);
        let t0 = Instant::now();
        let mut n = 0u8;
        let mut probe = NatProbe::new(t0, &servers, vec![], || {
            n += 1;
            [n; 12]
        })
        .mapping_only();
        let mut now = t0;
        while !probe.is_done() {
            while let Some((to, request)) = probe.poll_transmit(now) {
                if let Some((_, answer)) = lab.answer(to, &request) {
                    now += Duration::from_millis(10);
                    probe.handle_datagram(now, &answer);
                }
            }
            if let Some(next) = probe.poll_timeout() {
                now = now.max(next);
            }
        }
        let report = probe.report();
        assert_eq!(report.nat, NatType::Symmetric);
        assert_eq!(report.facts.filtering, None);
        assert!(now - t0 < Duration::from_millis(100), "took {:?}", now - t0);
    }

    #[test]
    fn unanswered_requests_are_resent_then_given_up() {
        let t0 = Instant::now();
        let mut probe = NatProbe::new(t0, &[addr(S1)], vec![], || [7; 12]);
        let mut sends = Vec::new();
        let mut now = t0;
        while let Some(next) = probe.poll_timeout() {
            now = next.max(now);
            while let Some((to, _)) = probe.poll_transmit(now) {
                assert_eq!(to, addr(S1));
                sends.push(now - t0);
            }
        }
        assert_eq!(sends, SEND_AT.to_vec());
        assert!(probe.is_done());
    }

    #[test]
    fn foreign_and_garbage_datagrams_are_not_taken() {
        let t0 = Instant::now();
        let mut probe = NatProbe::new(t0, &[addr(S1)], vec![], || [7; 12]);
        let _ = probe.poll_transmit(t0);
        assert!(!probe.handle_datagram(t0, b"garbage"));
        assert!(!probe.handle_datagram(t0, &[]));
        // A well-formed answer to a transaction we never started.
        let mut answer = Message::<Attr>::new(
            MessageClass::SuccessResponse,
            BINDING,
            TransactionId::new([9; 12]),
        );
        answer.add_attribute(XorMappedAddress::new(addr("192.0.2.66:1")));
        let answer = MessageEncoder::new().encode_into_bytes(answer).unwrap();
        assert!(!probe.handle_datagram(t0, &answer));
        assert!(!probe.is_done());
        assert_eq!(probe.report().servers[0].mapped, None);
    }

    #[test]
    fn servers_are_deduplicated_and_capped() {
        let many: Vec<SocketAddr> = (1..=20)
            .map(|i| SocketAddr::from(([198, 51, 100, i], 3478)))
            .chain([addr(S1), addr(S1)])
            .collect();
        let probe = NatProbe::new(Instant::now(), &many, vec![], || [1; 12]);
        assert_eq!(probe.report().servers.len(), MAX_SERVERS);
    }
}
