//! The server's state behind one lock: the registry, its storage, the join limiter and the
//! push subscribers. Every change is stored before the request is answered, and the notices
//! it produced are handed to the members' event streams.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::http::StatusCode;
use lanrage_control::auth::{self, AuthError, Challenge, Proof, ServerAuth, Token};
use lanrage_control::party::code::PartyCode;
use lanrage_control::party::rate_limit::JoinLimiter;
use lanrage_control::party::store::PartyStore;
use lanrage_control::party::{PartyError, Registry, RegistryConfig};
use lanrage_control::peer_id::PeerId;
use lanrage_control::relay::RelaySecret;
use lanrage_control::server_api::{
    ChallengeResponse, CreateParty, EventJson, Heartbeat, JoinParty, PartyJson, RelayRegistration,
    RelaysJson, TokenRequest, TokenResponse,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::relays::RelayDirectory;

/// Join attempts per client address: a burst, then a steady rate. With 80-bit codes this makes
/// guessing hopeless while a player who mistypes a code a few times is not locked out.
const JOIN_BURST: u32 = 10;
const JOINS_PER_MINUTE: u32 = 20;
const LIMITER_KEYS: usize = 100_000;

/// An error as the HTTP layer sends it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds, for 429.
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
        ApiError::new(status, e.to_string())
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
    limiter: JoinLimiter,
    /// Each peer's event stream: one at a time (see [`ServerState::subscribe`]).
    subscribers: HashMap<PeerId, UnboundedSender<EventJson>>,
}

impl ServerState {
    /// Opens the database and brings back every stored party.
    pub fn open(
        db: &Path,
        config: RegistryConfig,
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
                limiter: JoinLimiter::new(JOIN_BURST, JOINS_PER_MINUTE, LIMITER_KEYS),
                subscribers: HashMap::new(),
            }),
            relays: RelayDirectory::new(relay_secret),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug; the state itself stays usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn challenge(&self, peer: &PeerId) -> Result<ChallengeResponse, ApiError> {
        let mut nonce = [0u8; 16];
        fill_random(&mut nonce)?;
        Ok(ChallengeResponse {
            challenge: self.auth.challenge(unix_now(), nonce, peer).to_string(),
            server_key: PeerId(self.auth.public_key()).to_string(),
        })
    }

    pub fn token(&self, request: &TokenRequest) -> Result<TokenResponse, ApiError> {
        let challenge: Challenge = request.challenge.parse()?;
        let proof: Proof = request.proof.parse()?;
        let now = unix_now();
        self.auth.verify(now, &request.peer, &challenge, &proof)?;
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

    pub fn create(&self, peer: PeerId, request: &CreateParty) -> Result<PartyJson, ApiError> {
        let mut inner = self.lock();
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
        if let Err(retry) = inner.limiter.check(Instant::now(), client) {
            return Err(ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: retry.to_string(),
                retry_after: Some(retry.secs_rounded_up()),
            });
        }
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
        inner
            .registry
            .heartbeat(Instant::now(), peer, beat.endpoints, beat.nat)?;
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

    /// A stream of `peer`'s events, starting with a snapshot of its party.
    pub fn subscribe(&self, peer: PeerId) -> UnboundedReceiver<EventJson> {
        let mut inner = self.lock();
        let (tx, rx) = unbounded_channel();
        let party = inner.registry.party_of(peer).map(|v| PartyJson::from(&v));
        // The receiver is alive: this cannot fail.
        let _ = tx.send(EventJson::Snapshot { party });
        // One stream per peer: a new one replaces the old, whose sender drops here and so ends
        // it. A client that reconnects leaves nothing behind, and no peer can pile streams up.
        inner.subscribers.insert(peer, tx);
        rx
    }

    /// Removes silent members; returns when to call again.
    pub fn expire(&self) -> Option<Instant> {
        let mut inner = self.lock();
        let removed = inner.registry.expire(Instant::now());
        if removed > 0 {
            tracing::info!(members = removed, "removed members without a heartbeat");
            if let Err(e) = inner.commit() {
                tracing::error!(error = %e.message, "cannot store expired members");
            }
        }
        inner.registry.next_expiry()
    }
}

impl Inner {
    /// Stores what changed, then tells the members.
    fn commit(&mut self) -> Result<(), ApiError> {
        let changed = self.registry.drain_changed();
        for (i, &id) in changed.iter().enumerate() {
            let result = match self.registry.record(id) {
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
            if let Some(stream) = self.subscribers.get(&notice.to) {
                if stream.send(EventJson::from(&notice.event)).is_err() {
                    self.subscribers.remove(&notice.to);
                }
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
