//! The relays a control server knows: those that registered lately, proving they hold the
//! relay secret. Members receive, for each live relay, a grant per other member of their
//! party, derived from that secret, so relays verify binds without asking the server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use lanrage_control::peer_id::PeerId;
use lanrage_control::relay::RelaySecret;
use lanrage_control::relay::grant::same_mac_hex;
use lanrage_control::server_api::{GrantJson, PartyJson, RelayJson, RelayRegistration, RelaysJson};

use super::state::ApiError;

/// A relay that has not registered again within this is no longer offered.
pub const RELAY_TTL: Duration = Duration::from_secs(30);
/// How far a registration's clock may be from ours.
const CLOCK_SKEW_SECS: u64 = 60;
/// Grants last this long; members fetch fresh ones well before.
pub const GRANT_LIFETIME_SECS: u64 = 3600;
/// Relays the server keeps track of at most.
const MAX_RELAYS: usize = 64;

pub struct RelayDirectory {
    secret: Option<RelaySecret>,
    live: Mutex<HashMap<SocketAddr, Instant>>,
}

impl RelayDirectory {
    /// Without a secret, no relay can register and members get none.
    pub fn new(secret: Option<RelaySecret>) -> Self {
        RelayDirectory {
            secret,
            live: Mutex::new(HashMap::new()),
        }
    }

    pub fn register(
        &self,
        registration: &RelayRegistration,
        now: Instant,
        now_unix: u64,
    ) -> Result<bool, ApiError> {
        let Some(secret) = &self.secret else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this control server takes no relays (start it with --relay-secret-file)",
            ));
        };
        let expected =
            secret.registration_mac(&registration.addr.to_string(), registration.unix_time);
        if !same_mac_hex(&expected, &registration.mac) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "relay registration with a bad MAC (is the relay's secret file the server's?)",
            ));
        }
        if registration.unix_time.abs_diff(now_unix) > CLOCK_SKEW_SECS {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "relay registration too old or from the future (check both clocks)",
            ));
        }
        let addr = registration.addr;
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{addr} is not an address members can reach"),
            ));
        }
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, seen| now.saturating_duration_since(*seen) < RELAY_TTL);
        if !live.contains_key(&addr) && live.len() >= MAX_RELAYS {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many relays registered",
            ));
        }
        Ok(live.insert(addr, now).is_none())
    }

    /// The live relays, each with `me`'s grant for every other member of `party`.
    pub fn grants(&self, party: &PartyJson, me: PeerId, now: Instant, now_unix: u64) -> RelaysJson {
        let Some(secret) = &self.secret else {
            return RelaysJson::default();
        };
        let mut addrs: Vec<SocketAddr> = {
            let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            live.iter()
                .filter(|(_, seen)| now.saturating_duration_since(**seen) < RELAY_TTL)
                .map(|(addr, _)| *addr)
                .collect()
        };
        addrs.sort();
        let expires = now_unix + GRANT_LIFETIME_SECS;
        let grants: Vec<GrantJson> = party
            .members
            .iter()
            .filter(|m| m.peer != me)
            .map(|m| GrantJson::from_grant(m.peer, &secret.grant(party.id, &me, &m.peer, expires)))
            .collect();
        RelaysJson {
            relays: addrs
                .into_iter()
                .map(|addr| RelayJson {
                    addr,
                    grants: grants.clone(),
                })
                .collect(),
        }
    }
}
