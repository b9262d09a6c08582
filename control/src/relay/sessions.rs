//! A relay's sessions, sans-IO: binds in, acknowledgements and forwarding routes out.
//!
//! The relay's per-packet path never consults this: it reads an immutable route table that
//! the relay's control thread rebuilds from [`RelaySessions::routes`] whenever a bind or an
//! expiry changes who is where.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::frame::{ACK_LEN, Ack, Bind, FrameError};
use super::grant::{RelaySecret, SessionId, Side};

/// A side not bound again within this is forgotten; members re-bind every
/// [`super::client::BIND_REFRESH`].
pub const BIND_TIMEOUT: Duration = Duration::from_secs(60);

/// Sessions a relay holds by default before refusing new ones.
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindRefused {
    Frame(FrameError),
    /// The grant's expiry has passed: the member must fetch a new one.
    Expired,
    /// The counter did not grow: a replay, or a member whose clock went back.
    Replayed,
    /// The relay holds as many sessions as it may.
    Full,
}

impl BindRefused {
    /// Stable snake_case name, for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            BindRefused::Frame(FrameError::Malformed) => "bind_malformed",
            BindRefused::Frame(FrameError::BadMac) => "bind_bad_mac",
            BindRefused::Expired => "bind_expired",
            BindRefused::Replayed => "bind_replayed",
            BindRefused::Full => "bind_full",
        }
    }
}

impl fmt::Display for BindRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindRefused::Frame(e) => e.fmt(f),
            BindRefused::Expired => f.write_str("bind with an expired grant"),
            BindRefused::Replayed => f.write_str("bind whose counter did not grow (replay?)"),
            BindRefused::Full => f.write_str("relay full: no room for another session"),
        }
    }
}

/// One direction of a session with both sides bound: datagrams on `channel` from `from` go
/// to `to`, their channel rewritten to `out_channel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRoute {
    pub session: SessionId,
    pub channel: u32,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub out_channel: u32,
}

/// What a valid bind produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// Send this back to the bind's source.
    pub ack: [u8; ACK_LEN],
    /// Routes changed (a side arrived, moved or was replaced): publish a new table.
    pub routes_changed: bool,
    pub session: SessionId,
    pub side: Side,
}

#[derive(Debug, Clone)]
struct SideState {
    addr: SocketAddr,
    channel: u32,
    counter: u64,
    expires_unix: u64,
    last_bind: Instant,
}

#[derive(Debug, Default)]
struct Session {
    sides: [Option<SideState>; 2],
}

pub struct RelaySessions {
    secret: RelaySecret,
    max_sessions: usize,
    sessions: HashMap<SessionId, Session>,
    channels: HashMap<u32, (SessionId, Side)>,
    random_channel: Box<dyn FnMut() -> u32 + Send>,
}

impl RelaySessions {
    /// `random_channel` draws channel numbers; unpredictable ones make a guessed channel
    /// useless, though a channel alone admits nobody (the source must be the bound one).
    pub fn new(
        secret: RelaySecret,
        max_sessions: usize,
        random_channel: impl FnMut() -> u32 + Send + 'static,
    ) -> Self {
        RelaySessions {
            secret,
            max_sessions,
            sessions: HashMap::new(),
            channels: HashMap::new(),
            random_channel: Box::new(random_channel),
        }
    }

    /// Takes a bind that arrived from `from`.
    pub fn handle(
        &mut self,
        now: Instant,
        now_unix: u64,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<Bound, BindRefused> {
        let bind = Bind::parse(datagram).map_err(BindRefused::Frame)?;
        let key = self
            .secret
            .side_key(bind.session, bind.side, bind.expires_unix);
        Bind::verify(datagram, &key).map_err(BindRefused::Frame)?;
        if bind.expires_unix <= now_unix {
            return Err(BindRefused::Expired);
        }
        if !self.sessions.contains_key(&bind.session) && self.sessions.len() >= self.max_sessions {
            return Err(BindRefused::Full);
        }
        let session = self.sessions.entry(bind.session).or_default();
        let routes_changed;
        let channel = match &mut session.sides[bind.side.index()] {
            Some(side) => {
                if bind.counter <= side.counter {
                    return Err(BindRefused::Replayed);
                }
                routes_changed = side.addr != from;
                side.addr = from;
                side.counter = bind.counter;
                side.expires_unix = bind.expires_unix;
                side.last_bind = now;
                side.channel
            }
            slot @ None => {
                let channel = loop {
                    let c = (self.random_channel)();
                    if c != 0 && !self.channels.contains_key(&c) {
                        break c;
                    }
                };
                self.channels.insert(channel, (bind.session, bind.side));
                *slot = Some(SideState {
                    addr: from,
                    channel,
                    counter: bind.counter,
                    expires_unix: bind.expires_unix,
                    last_bind: now,
                });
                routes_changed = true;
                channel
            }
        };
        let peer_bound = session.sides[bind.side.other().index()].is_some();
        let ack = Ack {
            session: bind.session,
            side: bind.side,
            counter: bind.counter,
            channel,
            peer_bound,
        }
        .encode(&key);
        Ok(Bound {
            ack,
            routes_changed: routes_changed && peer_bound,
            session: bind.session,
            side: bind.side,
        })
    }

    /// Forgets sides not bound again within [`BIND_TIMEOUT`] or whose grant expired. Returns
    /// whether any route went away.
    pub fn expire(&mut self, now: Instant, now_unix: u64) -> bool {
        let mut changed = false;
        let channels = &mut self.channels;
        self.sessions.retain(|_, session| {
            let both = session.sides.iter().all(Option::is_some);
            for slot in &mut session.sides {
                let stale = slot.as_ref().is_some_and(|s| {
                    now.saturating_duration_since(s.last_bind) >= BIND_TIMEOUT
                        || s.expires_unix <= now_unix
                });
                if stale {
                    if let Some(s) = slot.take() {
                        channels.remove(&s.channel);
                    }
                    changed |= both;
                }
            }
            session.sides.iter().any(Option::is_some)
        });
        changed
    }

    /// Both directions of every session whose two sides are bound.
    pub fn routes(&self) -> impl Iterator<Item = SessionRoute> + '_ {
        self.sessions.iter().flat_map(|(&id, s)| {
            let pair = match &s.sides {
                [Some(a), Some(b)] => Some((a, b)),
                _ => None,
            };
            pair.into_iter().flat_map(move |(a, b)| {
                [(a, b), (b, a)].map(|(x, y)| SessionRoute {
                    session: id,
                    channel: x.channel,
                    from: x.addr,
                    to: y.addr,
                    out_channel: y.channel,
                })
            })
        })
    }

    /// Sessions held, and how many of them have both sides bound.
    pub fn counts(&self) -> (usize, usize) {
        let joined = self
            .sessions
            .values()
            .filter(|s| s.sides.iter().all(Option::is_some))
            .count();
        (self.sessions.len(), joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer_id::PeerId;
    use crate::relay::frame::Bind;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn relay(secret: &RelaySecret) -> RelaySessions {
        let mut next = 0x1000u32;
        RelaySessions::new(secret.clone(), 4, move || {
            next += 1;
            next
        })
    }

    fn bind(secret: &RelaySecret, me: u8, peer: u8, counter: u64, expires: u64) -> [u8; 46] {
        let g = secret.grant(1, &PeerId([me; 32]), &PeerId([peer; 32]), expires);
        Bind {
            session: g.session,
            side: g.side,
            expires_unix: g.expires_unix,
            counter,
        }
        .encode(&g.key)
    }

    #[test]
    fn two_sides_bind_and_get_routes_both_ways() {
        let secret = RelaySecret::new([9; 32]);
        let mut r = relay(&secret);
        let t = Instant::now();
        let (a, b) = (addr("198.51.100.1:1000"), addr("203.0.113.2:2000"));
        let first = r.handle(t, 100, a, &bind(&secret, 1, 2, 1, 200)).unwrap();
        assert!(!first.routes_changed);
        let ack = Ack::decode(
            &first.ack,
            &secret.grant(1, &PeerId([1; 32]), &PeerId([2; 32]), 200).key,
        )
        .unwrap();
        assert!(!ack.peer_bound);
        assert_eq!(r.routes().count(), 0);
        let second = r.handle(t, 100, b, &bind(&secret, 2, 1, 1, 300)).unwrap();
        assert!(second.routes_changed);
        let routes: Vec<_> = r.routes().collect();
        assert_eq!(routes.len(), 2);
        let ab = routes.iter().find(|x| x.from == a).unwrap();
        let ba = routes.iter().find(|x| x.from == b).unwrap();
        assert_eq!((ab.to, ab.out_channel), (b, ba.channel));
        assert_eq!((ba.to, ba.out_channel), (a, ab.channel));
        assert_eq!(ab.channel, ack.channel);
        assert_eq!(r.counts(), (1, 1));
    }

    #[test]
    fn replays_forgeries_and_expired_grants_are_refused() {
        let secret = RelaySecret::new([9; 32]);
        let mut r = relay(&secret);
        let t = Instant::now();
        let a = addr("198.51.100.1:1000");
        let frame = bind(&secret, 1, 2, 5, 200);
        r.handle(t, 100, a, &frame).unwrap();
        // The same bind from elsewhere (someone who saw it) does not move the side.
        let thief = addr("192.0.2.66:6666");
        assert_eq!(r.handle(t, 100, thief, &frame), Err(BindRefused::Replayed));
        // A bind made with another relay secret.
        let forged = bind(&RelaySecret::new([1; 32]), 1, 2, 6, 200);
        assert_eq!(
            r.handle(t, 100, thief, &forged),
            Err(BindRefused::Frame(FrameError::BadMac))
        );
        assert_eq!(
            r.handle(t, 200, a, &bind(&secret, 1, 2, 7, 200)),
            Err(BindRefused::Expired)
        );
        assert_eq!(
            r.handle(t, 100, a, b"LRrb garbage"),
            Err(BindRefused::Frame(FrameError::Malformed))
        );
        // A later bind from a new address (NAT rebinding) moves the side.
        let moved = addr("198.51.100.1:1001");
        r.handle(t, 100, moved, &bind(&secret, 1, 2, 8, 200))
            .unwrap();
        r.handle(
            t,
            100,
            addr("203.0.113.2:2000"),
            &bind(&secret, 2, 1, 1, 200),
        )
        .unwrap();
        assert!(r.routes().any(|x| x.from == moved));
        assert!(!r.routes().any(|x| x.from == a || x.from == thief));
    }

    #[test]
    fn silent_sides_and_expired_grants_go_away() {
        let secret = RelaySecret::new([9; 32]);
        let mut r = relay(&secret);
        let t = Instant::now();
        r.handle(t, 100, addr("198.51.100.1:1"), &bind(&secret, 1, 2, 1, 500))
            .unwrap();
        r.handle(t, 100, addr("198.51.100.2:2"), &bind(&secret, 2, 1, 1, 150))
            .unwrap();
        assert!(!r.expire(t + Duration::from_secs(1), 101));
        // Side 2's grant expires: the routes go, side 1 stays.
        assert!(r.expire(t + Duration::from_secs(2), 150));
        assert_eq!(r.counts(), (1, 0));
        assert!(!r.expire(t + BIND_TIMEOUT, 160));
        assert_eq!(r.counts(), (0, 0));
    }

    #[test]
    fn a_full_relay_refuses_new_sessions_but_serves_old_ones() {
        let secret = RelaySecret::new([9; 32]);
        let mut r = relay(&secret);
        let t = Instant::now();
        for peer in 2..6 {
            r.handle(
                t,
                100,
                addr("198.51.100.1:1"),
                &bind(&secret, 1, peer, 1, 500),
            )
            .unwrap();
        }
        assert_eq!(
            r.handle(t, 100, addr("198.51.100.1:1"), &bind(&secret, 1, 9, 1, 500)),
            Err(BindRefused::Full)
        );
        r.handle(t, 100, addr("198.51.100.3:3"), &bind(&secret, 2, 1, 1, 500))
            .unwrap();
    }
}
