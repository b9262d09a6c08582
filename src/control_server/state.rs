//! The server's state behind one lock: the registry, its storage, the rate limits and the
//! push subscribers. Every change is stored before the request is answered, and the notices
//! it produced are handed to the members' event streams.
//!
//! Every per-source limit is keyed by the client address the HTTP layer resolved (the TCP
//! peer, or what a trusted proxy says: see `lanrage_control::party::source`). Refusals are
//! HTTP 429 with `Retry-After` (this client must slow down) or 503 (the server is full), each
//! counted and logged at most every few seconds per kind.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::http::StatusCode;
use lanrage_control::auth::{self, AuthError, Challenge, Proof, ServerAuth, Token};
use lanrage_control::party::code::PartyCode;
use lanrage_control::party::limits::{LogThrottle, PartyQuota, Refusal, SlotLimits};
use lanrage_control::party::rate_limit::{RateLimiter, RetryAfter, SourceKey};
use lanrage_control::party::store::PartyStore;
use lanrage_control::party::{PartyError, Registry, RegistryConfig};
use lanrage_control::peer_id::PeerId;
use lanrage_control::relay::RelaySecret;
use lanrage_control::server_api::{
    ChallengeResponse, CreateParty, EventJson, Heartbeat, JoinParty, PartyJson, RelayRegistration,
    RelaysJson, TokenRequest, TokenResponse,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{Receiver, Sender, channel};

use super::relays::RelayDirectory;

/// Keys each rate limiter tracks at most (a few MiB each); past that, new keys are refused
/// until old buckets have refilled (fail closed).
const LIMITER_KEYS: usize = 100_000;
/// How often idle rate-limit buckets are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// At most one log line per kind of refusal in this time.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// `Retry-After` for refusals that end when something else does (a party, a stream).
const RETRY_WHEN_FULL_SECS: u64 = 30;

/// A token bucket: `burst` at once, then `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub per_minute: u32,
}

impl Rate {
    fn limiter<K: std::hash::Hash + Eq>(self) -> RateLimiter<K> {
        RateLimiter::new(self.burst, self.per_minute, LIMITER_KEYS)
    }
}

/// What one client may take. The defaults let a party of a few hundred members share one
/// address (a LAN center behind one NAT; a test lab on 127.0.0.1) while a flood from one
/// address gets a small share of the server and nothing more.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Join attempts per source. With 80-bit codes this makes guessing hopeless while a
    /// player who mistypes a code a few times is not locked out.
    pub joins: Rate,
    /// Challenges, and token requests, per source: each costs the server a MAC or an X25519
    /// agreement. Not per key: anyone may ask for a challenge for anyone's (public) key, so a
    /// per-key limit would let them lock that player out.
    pub auth_per_source: Rate,
    /// Tokens issued per key: only proofs that verified count, which only the key's holder
    /// can make.
    pub tokens_per_key: Rate,
    /// Party creates per source and per key.
    pub creates_per_source: Rate,
    pub creates_per_key: Rate,
    /// Parties one source may hold at once: a small share of `RegistryConfig::max_parties`.
    pub max_parties_per_source: usize,
    /// Heartbeats per member. The daemon sends one every 30 s, and one when its endpoints
    /// change; far more is a bug or an attack, and each changing one is stored and pushed to
    /// every other member.
    pub heartbeats: Rate,
    /// Event streams (WebSockets) in all and per source; one per member, a new one replacing
    /// the old.
    pub max_streams: usize,
    pub max_streams_per_source: usize,
    /// Events waiting for one member's stream. A member that does not read its stream has it
    /// dropped when this fills: it reconnects and resyncs from the snapshot every stream
    /// begins with, and the server's memory stays bounded.
    pub event_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            joins: Rate {
                burst: 10,
                per_minute: 20,
            },
            auth_per_source: Rate {
                burst: 600,
                per_minute: 600,
            },
            tokens_per_key: Rate {
                burst: 10,
                per_minute: 10,
            },
            creates_per_source: Rate {
                burst: 30,
                per_minute: 30,
            },
            creates_per_key: Rate {
                burst: 5,
                per_minute: 5,
            },
            max_parties_per_source: 100,
            heartbeats: Rate {
                burst: 20,
                per_minute: 60,
            },
            max_streams: 3072,
            max_streams_per_source: 512,
            event_queue: 256,
        }
    }
}

/// An error as the HTTP layer sends it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429 from a rate limit: `what` was refused, and when to try again.
    fn too_many(what: &str, retry: RetryAfter) -> Self {
        let secs = retry.secs_rounded_up().max(1);
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("too many {what}; retry after {secs} s"),
            retry_after: Some(secs),
        }
    }

    /// 429 (this source holds its share) or 503 (the server is full).
    pub fn from_refusal(what: &str, refusal: Refusal) -> Self {
        let status = match refusal {
            Refusal::Total { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Source { .. } => StatusCode::TOO_MANY_REQUESTS,
        };
        ApiError {
            status,
            message: format!("{what}: {refusal}"),
            retry_after: Some(RETRY_WHEN_FULL_SECS),
        }
    }
}

impl From<PartyError> for ApiError {
    fn from(e: PartyError) -> Self {
        let status = match e {
            PartyError::WrongCode | PartyError::NotInParty => StatusCode::NOT_FOUND,
            PartyError::PartyFull { .. } | PartyError::Address(_) => StatusCode::CONFLICT,
            PartyError::InvalidName { .. } | PartyError::TooManyEndpoints { .. } => {
                StatusCode::BAD_REQUEST
            }
            PartyError::TooManyParties => StatusCode::SERVICE_UNAVAILABLE,
            PartyError::CodeInUse => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut error = ApiError::new(status, e.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Parties end all the time (members leave, unconfirmed ones expire in a minute).
            error.retry_after = Some(RETRY_WHEN_FULL_SECS);
        }
        error
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match e {
            AuthError::Malformed(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        };
        ApiError::new(status, e.to_string())
    }
}

pub struct ServerState {
    auth: ServerAuth,
    inner: Mutex<Inner>,
    relays: RelayDirectory,
}

struct Inner {
    registry: Registry,
    store: PartyStore,
    limits: Limits,
    joins: RateLimiter<SourceKey>,
    auth_by_source: RateLimiter<SourceKey>,
    tokens_by_key: RateLimiter<PeerId>,
    creates_by_source: RateLimiter<SourceKey>,
    creates_by_key: RateLimiter<PeerId>,
    heartbeats: RateLimiter<PeerId>,
    parties_by_source: PartyQuota,
    /// Event streams held, per source and in all.
    streams: SlotLimits,
    /// Each peer's event stream: one at a time (see [`ServerState::subscribe`]).
    subscribers: HashMap<PeerId, Subscriber>,
    next_stream: u64,
    next_prune: Instant,
    refusals: Refusals,
}

struct Subscriber {
    id: u64,
    source: SourceKey,
    events: Sender<EventJson>,
}

/// An event stream handed to the WebSocket task.
#[derive(Debug)]
pub struct Subscription {
    /// Names this stream to [`ServerState::unsubscribe`], which must not end a newer one.
    pub id: u64,
    pub events: Receiver<EventJson>,
}

/// Refusals counted per kind, each kind logged at most once per [`LOG_EVERY`].
#[derive(Default)]
struct Refusals {
    kinds: HashMap<&'static str, (u64, Option<LogThrottle>)>,
}

impl Refusals {
    fn count(&mut self, now: Instant, kind: &'static str, source: &dyn std::fmt::Display) {
        let (total, throttle) = self.kinds.entry(kind).or_default();
        *total += 1;
        let throttle = throttle.get_or_insert_with(|| LogThrottle::new(LOG_EVERY));
        if let Some(unlogged) = throttle.hit(now) {
            tracing::warn!(
                kind,
                %source,
                total = *total,
                unlogged,
                "request refused by a limit"
            );
        }
    }

    #[cfg(test)]
    fn total(&self, kind: &str) -> u64 {
        self.kinds.get(kind).map_or(0, |(n, _)| *n)
    }
}

impl ServerState {
    /// Opens the database and brings back every stored party.
    pub fn open(
        db: &Path,
        config: RegistryConfig,
        limits: Limits,
        relay_secret: Option<RelaySecret>,
    ) -> Result<Self> {
        let mut store = PartyStore::open(db)
            .with_context(|| format!("cannot open the party database {}", db.display()))?;
        let mut registry = Registry::new(config).context("invalid party settings")?;
        let (records, bad) = store.load().context("cannot read the party database")?;
        for row in &bad {
            tracing::warn!(%row, "skipped a stored member that does not make sense");
        }
        let now = Instant::now();
        let mut restored = 0;
        for record in records {
            let id = record.id;
            match registry.restore(now, record) {
                Ok(()) => restored += 1,
                Err(e) => tracing::warn!(party = %id, error = %e, "skipped a stored party"),
            }
        }
        registry.drain_changed();
        tracing::info!(parties = restored, "parties restored");
        let (fresh_secret, fresh_token_key) = (random_key()?, random_key()?);
        let secret = store.secret("auth-key", || fresh_secret)?;
        let token_key = store.secret("token-key", || fresh_token_key)?;
        Ok(ServerState {
            auth: ServerAuth::new(secret, token_key),
            inner: Mutex::new(Inner {
                registry,
                store,
                joins: limits.joins.limiter(),
                auth_by_source: limits.auth_per_source.limiter(),
                tokens_by_key: limits.tokens_per_key.limiter(),
                creates_by_source: limits.creates_per_source.limiter(),
                creates_by_key: limits.creates_per_key.limiter(),
                heartbeats: limits.heartbeats.limiter(),
                parties_by_source: PartyQuota::new(limits.max_parties_per_source),
                streams: SlotLimits::new(limits.max_streams, limits.max_streams_per_source),
                subscribers: HashMap::new(),
                next_stream: 0,
                next_prune: now + PRUNE_EVERY,
                refusals: Refusals::default(),
                limits,
            }),
            relays: RelayDirectory::new(relay_secret),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug; the state itself stays usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn challenge(&self, client: IpAddr, peer: &PeerId) -> Result<ChallengeResponse, ApiError> {
        self.lock()
            .limit_source(Kind::Auth, Instant::now(), client)?;
        let mut nonce = [0u8; 16];
        fill_random(&mut nonce)?;
        Ok(ChallengeResponse {
            challenge: self.auth.challenge(unix_now(), nonce, peer).to_string(),
            server_key: PeerId(self.auth.public_key()).to_string(),
        })
    }

    pub fn token(&self, client: IpAddr, request: &TokenRequest) -> Result<TokenResponse, ApiError> {
        self.lock()
            .limit_source(Kind::Auth, Instant::now(), client)?;
        let challenge: Challenge = request.challenge.parse()?;
        let proof: Proof = request.proof.parse()?;
        let now = unix_now();
        self.auth.verify(now, &request.peer, &challenge, &proof)?;
        self.lock()
            .limit_key(Kind::Token, Instant::now(), request.peer)?;
        let lifetime = auth::DEFAULT_TOKEN_LIFETIME_SECS;
        Ok(TokenResponse {
            token: self
                .auth
                .issue_token(now, &request.peer, lifetime)
                .to_string(),
            expires_unix: now + lifetime,
        })
    }

    /// The peer a bearer token speaks for.
    pub fn authenticate(&self, bearer: &str) -> Result<PeerId, ApiError> {
        let token: Token = bearer.parse()?;
        Ok(self.auth.check_token(unix_now(), &token)?)
    }

    pub fn create(
        &self,
        peer: PeerId,
        client: IpAddr,
        request: &CreateParty,
    ) -> Result<PartyJson, ApiError> {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.limit_source(Kind::Create, now, client)?;
        inner.limit_key(Kind::Create, now, peer)?;
        let source = SourceKey::from(client);
        if !inner.parties_by_source.allows(source) {
            inner.refusals.count(now, "parties-per-source", &source);
            let max = inner.parties_by_source.max_per_source();
            return Err(ApiError::from_refusal(
                "cannot create a party",
                Refusal::Source { max },
            ));
        }
        // 80-bit codes do not collide in practice; a few draws make "in practice" certain.
        let mut result = Err(PartyError::CodeInUse);
        for _ in 0..4 {
            let mut bytes = [0u8; PartyCode::BYTES];
            fill_random(&mut bytes)?;
            result = inner.registry.create(
                Instant::now(),
                peer,
                &request.member_name,
                &request.name,
                PartyCode::from_bytes(bytes),
            );
            if !matches!(result, Err(PartyError::CodeInUse)) {
                break;
            }
        }
        let view = result?;
        inner.parties_by_source.created(view.id, source);
        inner.commit()?;
        Ok(PartyJson::from(&view))
    }

    pub fn join(
        &self,
        peer: PeerId,
        client: IpAddr,
        request: &JoinParty,
    ) -> Result<PartyJson, ApiError> {
        let mut inner = self.lock();
        // Every attempt counts, a malformed code too: it is a guess like any other.
        inner.limit_source(Kind::Join, Instant::now(), client)?;
        let code: PartyCode = request
            .code
            .parse()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}")))?;
        let view = inner
            .registry
            .join(Instant::now(), &code, peer, &request.member_name)?;
        inner.commit()?;
        Ok(PartyJson::from(&view))
    }

    pub fn leave(&self, peer: PeerId) -> Result<(), ApiError> {
        let mut inner = self.lock();
        inner.registry.leave(peer)?;
        inner.commit()
    }

    pub fn heartbeat(&self, peer: PeerId, beat: Heartbeat) -> Result<(), ApiError> {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.limit_key(Kind::Heartbeat, now, peer)?;
        inner
            .registry
            .heartbeat(now, peer, beat.endpoints, beat.nat)?;
        // Stores and pushes only what changed: a heartbeat that changes nothing costs no
        // write and no event.
        inner.commit()
    }

    pub fn party(&self, peer: PeerId) -> Result<PartyJson, ApiError> {
        let inner = self.lock();
        let view = inner
            .registry
            .party_of(peer)
            .ok_or(PartyError::NotInParty)?;
        Ok(PartyJson::from(&view))
    }

    pub fn register_relay(&self, registration: &RelayRegistration) -> Result<(), ApiError> {
        let new = self
            .relays
            .register(registration, Instant::now(), unix_now())?;
        if new {
            tracing::info!(relay = %registration.addr, "relay registered");
        }
        Ok(())
    }

    /// The live relays with `peer`'s grants for the other members of its party.
    pub fn relays(&self, peer: PeerId) -> Result<RelaysJson, ApiError> {
        let party = self.party(peer)?;
        Ok(self.relays.grants(&party, peer, Instant::now(), unix_now()))
    }

    /// A stream of `peer`'s events, starting with a snapshot of its party; refused when
    /// `client` holds its share of streams or the server holds all it may.
    pub fn subscribe(&self, peer: PeerId, client: IpAddr) -> Result<Subscription, ApiError> {
        let mut inner = self.lock();
        // One stream per peer: a new one replaces the old, whose sender drops here and so ends
        // it. A client that reconnects leaves nothing behind, and no peer can pile streams up.
        inner.drop_subscriber(peer);
        let source = SourceKey::from(client);
        if let Err(refusal) = inner.streams.acquire(Some(source)) {
            let kind = match refusal {
                Refusal::Total { .. } => "streams-total",
                Refusal::Source { .. } => "streams-per-source",
            };
            inner.refusals.count(Instant::now(), kind, &source);
            return Err(ApiError::from_refusal("no event stream", refusal));
        }
        let (tx, rx) = channel(inner.limits.event_queue.max(1));
        let party = inner.registry.party_of(peer).map(|v| PartyJson::from(&v));
        // The receiver is alive and the queue empty: this cannot fail.
        let _ = tx.try_send(EventJson::Snapshot { party });
        let id = inner.next_stream;
        inner.next_stream += 1;
        inner.subscribers.insert(
            peer,
            Subscriber {
                id,
                source,
                events: tx,
            },
        );
        Ok(Subscription { id, events: rx })
    }

    /// Stream `id` of `peer` has ended (or never started); a newer one is left alone.
    pub fn unsubscribe(&self, peer: PeerId, id: u64) {
        let mut inner = self.lock();
        if inner.subscribers.get(&peer).is_some_and(|s| s.id == id) {
            inner.drop_subscriber(peer);
        }
    }

    /// Removes silent members; returns when to call again.
    pub fn expire(&self) -> Option<Instant> {
        let mut inner = self.lock();
        let now = Instant::now();
        if now >= inner.next_prune {
            inner.prune(now);
        }
        let removed = inner.registry.expire(now);
        if removed > 0 {
            tracing::info!(members = removed, "removed members without a heartbeat");
            if let Err(e) = inner.commit() {
                tracing::error!(error = %e.message, "cannot store expired members");
            }
        }
        inner.registry.next_expiry()
    }
}

/// What a rate limit is for: its bucket, its name in refusals and logs.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Join,
    Auth,
    Token,
    Create,
    Heartbeat,
}

impl Kind {
    fn name(self, per_source: bool) -> &'static str {
        match (self, per_source) {
            (Kind::Join, _) => "join attempts",
            (Kind::Auth, _) => "authentication requests",
            (Kind::Token, _) => "tokens for this key",
            (Kind::Create, true) => "party creates from this address",
            (Kind::Create, false) => "party creates by this key",
            (Kind::Heartbeat, _) => "heartbeats",
        }
    }
}

impl Inner {
    /// Spends one of `client`'s tokens for `kind`, or refuses with 429.
    fn limit_source(&mut self, kind: Kind, now: Instant, client: IpAddr) -> Result<(), ApiError> {
        let limiter = match kind {
            Kind::Join => &mut self.joins,
            Kind::Auth => &mut self.auth_by_source,
            Kind::Create => &mut self.creates_by_source,
            Kind::Token | Kind::Heartbeat => return Ok(()),
        };
        limiter.check(now, client).map_err(|retry| {
            let source = SourceKey::from(client);
            self.refusals.count(now, kind.name(true), &source);
            ApiError::too_many(kind.name(true), retry)
        })
    }

    /// Spends one of `peer`'s tokens for `kind`, or refuses with 429.
    fn limit_key(&mut self, kind: Kind, now: Instant, peer: PeerId) -> Result<(), ApiError> {
        let limiter = match kind {
            Kind::Token => &mut self.tokens_by_key,
            Kind::Create => &mut self.creates_by_key,
            Kind::Heartbeat => &mut self.heartbeats,
            Kind::Join | Kind::Auth => return Ok(()),
        };
        limiter.check(now, peer).map_err(|retry| {
            self.refusals.count(now, kind.name(false), &peer);
            ApiError::too_many(kind.name(false), retry)
        })
    }

    /// Forgets rate-limit buckets that have refilled (they hold nothing a new one would not).
    fn prune(&mut self, now: Instant) {
        self.joins.prune(now);
        self.auth_by_source.prune(now);
        self.tokens_by_key.prune(now);
        self.creates_by_source.prune(now);
        self.creates_by_key.prune(now);
        self.heartbeats.prune(now);
        self.next_prune = now + PRUNE_EVERY;
    }

    /// Ends `peer`'s event stream, if any, and gives back its slot.
    fn drop_subscriber(&mut self, peer: PeerId) {
        if let Some(old) = self.subscribers.remove(&peer) {
            self.streams.release(Some(old.source));
        }
    }

    /// Stores what changed, then tells the members.
    fn commit(&mut self) -> Result<(), ApiError> {
        let changed = self.registry.drain_changed();
        for (i, &id) in changed.iter().enumerate() {
            let record = self.registry.record(id);
            if record.is_none() {
                self.parties_by_source.ended(id);
            }
            let result = match record {
                Some(record) => self.store.save(&record),
                None => self.store.delete(id),
            };
            if let Err(e) = result {
                // The change stands in memory and every party not yet stored is retried at
                // the next commit; the client learns that it was not made durable.
                for &unstored in &changed[i..] {
                    self.registry.mark_changed(unstored);
                }
                tracing::error!(party = %id, error = %e, "cannot store party");
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("party storage failed: {e}"),
                ));
            }
        }
        let notices: Vec<_> = self.registry.drain_notices().collect();
        for notice in notices {
            let Some(stream) = self.subscribers.get(&notice.to) else {
                continue;
            };
            match stream.events.try_send(EventJson::from(&notice.event)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    // The member does not read its stream: end it rather than queue without
                    // bound. It reconnects and starts again from a snapshot.
                    self.refusals
                        .count(Instant::now(), "event stream not read", &notice.to);
                    self.drop_subscriber(notice.to);
                }
                Err(TrySendError::Closed(_)) => self.drop_subscriber(notice.to),
            }
        }
        Ok(())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn fill_random(buf: &mut [u8]) -> Result<(), ApiError> {
    getrandom::fill(buf).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("no random numbers from the operating system: {e}"),
        )
    })
}

fn random_key() -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| anyhow::anyhow!("no random numbers from the operating system: {e}"))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    /// A server on a fresh database in a directory removed on drop.
    struct Fixture {
        state: ServerState,
        dir: std::path::PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(name: &str, limits: Limits) -> Fixture {
        let dir = std::env::temp_dir().join(format!(
            "lanrage-state-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state = ServerState::open(
            &dir.join("control.db"),
            RegistryConfig::default(),
            limits,
            None,
        )
        .unwrap();
        Fixture { state, dir }
    }

    fn peer(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    fn addr(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn create(state: &ServerState, who: u8, from: IpAddr) -> Result<PartyJson, ApiError> {
        let request = CreateParty {
            name: "p".into(),
            member_name: format!("m{who}"),
        };
        state.create(peer(who), from, &request)
    }

    fn join(state: &ServerState, who: u8, code: &str) {
        let request = JoinParty {
            code: code.into(),
            member_name: format!("m{who}"),
        };
        state.join(peer(who), addr(who), &request).unwrap();
    }

    fn moved(port: u16) -> Heartbeat {
        Heartbeat {
            endpoints: Some(vec![SocketAddr::from(([192, 0, 2, 1], port))]),
            nat: None,
        }
    }

    #[test]
    fn a_member_that_never_reads_its_stream_is_dropped_not_queued_without_bound() {
        // Before: one member heartbeating in a loop grew another's unbounded queue by every
        // event, for as long as that member did not read (42 MiB in 30 s).
        let f = fixture(
            "unread",
            Limits {
                event_queue: 8,
                heartbeats: Rate {
                    burst: 100_000,
                    per_minute: 60,
                },
                ..Limits::default()
            },
        );
        let party = create(&f.state, 1, addr(1)).unwrap();
        join(&f.state, 2, &party.code);
        let mut stream = f.state.subscribe(peer(1), addr(1)).unwrap();
        for port in 0..1000 {
            f.state.heartbeat(peer(2), moved(port)).unwrap();
        }
        {
            let inner = f.state.lock();
            assert!(
                !inner.subscribers.contains_key(&peer(1)),
                "stream not dropped"
            );
            assert_eq!(inner.streams.total(), 0, "its slot is given back");
            assert_eq!(inner.refusals.total("event stream not read"), 1);
        }
        let mut queued = 0;
        while stream.events.try_recv().is_ok() {
            queued += 1;
        }
        assert!(queued <= 8, "{queued} events queued");
        // The stream ends; the member's reconnect starts again from a snapshot.
        assert!(stream.events.is_closed());
        let mut again = f.state.subscribe(peer(1), addr(1)).unwrap();
        assert!(matches!(
            again.events.try_recv(),
            Ok(EventJson::Snapshot { party: Some(p) }) if p.members.len() == 2
        ));
    }

    #[test]
    fn a_heartbeat_that_changes_nothing_pushes_nothing() {
        let f = fixture("unchanged", Limits::default());
        let party = create(&f.state, 1, addr(1)).unwrap();
        join(&f.state, 2, &party.code);
        f.state.heartbeat(peer(2), moved(7)).unwrap();
        let mut stream = f.state.subscribe(peer(1), addr(1)).unwrap();
        assert!(matches!(
            stream.events.try_recv(),
            Ok(EventJson::Snapshot { .. })
        ));
        for _ in 0..5 {
            f.state.heartbeat(peer(2), moved(7)).unwrap();
            f.state.heartbeat(peer(2), Heartbeat::default()).unwrap();
        }
        assert!(stream.events.try_recv().is_err(), "an event for no change");
    }

    #[test]
    fn heartbeats_are_rate_limited_per_member() {
        let f = fixture("beats", Limits::default());
        let party = create(&f.state, 1, addr(1)).unwrap();
        join(&f.state, 2, &party.code);
        let burst = Limits::default().heartbeats.burst;
        for _ in 0..burst {
            f.state.heartbeat(peer(2), Heartbeat::default()).unwrap();
        }
        let refused = f.state.heartbeat(peer(2), moved(1)).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.retry_after.is_some_and(|s| s >= 1));
        // Another member of the same party is not affected.
        f.state.heartbeat(peer(1), Heartbeat::default()).unwrap();
    }

    #[test]
    fn one_source_cannot_take_the_party_capacity() {
        // Before: one address created 10,000 parties with a fresh key each, after which every
        // create got 503.
        let f = fixture(
            "creates",
            Limits {
                max_parties_per_source: 3,
                ..Limits::default()
            },
        );
        let flood = addr(66);
        for who in 10..13 {
            create(&f.state, who, flood).unwrap();
        }
        let refused = create(&f.state, 13, flood).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.retry_after.is_some());
        // Everyone else still creates.
        create(&f.state, 1, addr(1)).unwrap();
        // A party from the flood that ends frees its place.
        f.state.leave(peer(10)).unwrap();
        create(&f.state, 13, flood).unwrap();

        // The rate: a fresh key per create does not get past the per-source bucket.
        let rate = fixture("create-rate", Limits::default());
        let burst = Limits::default().creates_per_source.burst;
        let mut created = 0;
        let refused = (0..=burst).find_map(|i| {
            let result = create(&rate.state, 100 + i as u8, flood);
            created += usize::from(result.is_ok());
            result.err()
        });
        let refused = refused.expect("creates from one address were never limited");
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(created, burst as usize);
        // Per key too: one key may not create parties in a loop from many addresses.
        let key = fixture("create-key", Limits::default());
        let per_key = Limits::default().creates_per_key.burst;
        for i in 0..per_key {
            create(&key.state, 1, addr(i as u8)).unwrap();
        }
        let refused = create(&key.state, 1, addr(200)).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn challenges_are_rate_limited_per_source() {
        let f = fixture(
            "auth",
            Limits {
                auth_per_source: Rate {
                    burst: 3,
                    per_minute: 1,
                },
                ..Limits::default()
            },
        );
        for _ in 0..3 {
            f.state.challenge(addr(1), &peer(1)).unwrap();
        }
        let refused = f.state.challenge(addr(1), &peer(2)).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        // Not per key: someone else asking for peer(1)'s challenges does not lock it out.
        f.state.challenge(addr(2), &peer(1)).unwrap();
    }

    #[test]
    fn event_streams_are_capped_per_source_and_one_per_member() {
        let f = fixture(
            "streams",
            Limits {
                max_streams: 3,
                max_streams_per_source: 2,
                ..Limits::default()
            },
        );
        let nat = addr(1);
        let first = f.state.subscribe(peer(1), nat).unwrap();
        // The same member again replaces its stream rather than taking another slot.
        let mut second = f.state.subscribe(peer(1), nat).unwrap();
        assert!(first.events.is_closed() || first.events.len() == 1);
        assert_eq!(f.state.lock().streams.held_by(SourceKey::from(nat)), 1);
        f.state.subscribe(peer(2), nat).unwrap();
        let refused = f.state.subscribe(peer(3), nat).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.retry_after.is_some());
        f.state.subscribe(peer(4), addr(2)).unwrap();
        let refused = f.state.subscribe(peer(5), addr(3)).unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        // A stale unsubscribe (the replaced stream ending late) leaves the new one alone.
        f.state.unsubscribe(peer(1), first.id);
        assert!(f.state.lock().subscribers.contains_key(&peer(1)));
        f.state.unsubscribe(peer(1), second.id);
        assert!(second.events.try_recv().is_ok(), "the snapshot");
        f.state.subscribe(peer(3), nat).unwrap();
    }
}
