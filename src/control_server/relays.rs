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

#[cfg(test)]
mod tests {
    use super::*;
    use lanrage_control::nat::NatType;
    use lanrage_control::server_api::MemberJson;

    fn registration(secret: &RelaySecret, addr: &str, unix_time: u64) -> RelayRegistration {
        let addr: SocketAddr = addr.parse().unwrap();
        RelayRegistration {
            addr,
            unix_time,
            mac: hex::encode(secret.registration_mac(&addr.to_string(), unix_time)),
        }
    }

    fn party(members: &[u8]) -> PartyJson {
        PartyJson {
            id: 7,
            name: "lan".into(),
            code: "AAAA-AAAA-AAAA-AAAA".into(),
            subnet: "10.66.0.0/16".into(),
            members: members
                .iter()
                .map(|&k| MemberJson {
                    peer: PeerId([k; 32]),
                    name: format!("m{k}"),
                    virtual_ip: [10, 66, 0, k].into(),
                    endpoints: Vec::new(),
                    nat: NatType::Unknown,
                })
                .collect(),
        }
    }

    #[test]
    fn relays_that_prove_the_secret_are_offered_until_they_fall_silent() {
        let secret = RelaySecret::new([4; 32]);
        let dir = RelayDirectory::new(Some(secret.clone()));
        let t = Instant::now();
        assert_eq!(
            dir.register(&registration(&secret, "203.0.113.5:3479", 1000), t, 1010)
                .ok(),
            Some(true)
        );
        assert_eq!(
            dir.register(&registration(&secret, "203.0.113.5:3479", 1011), t, 1011)
                .ok(),
            Some(false)
        );
        // Wrong secret, stale clock, unreachable address: refused with a reason.
        let other = RelaySecret::new([5; 32]);
        let e = dir
            .register(&registration(&other, "203.0.113.6:3479", 1000), t, 1000)
            .unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        let e = dir
            .register(&registration(&secret, "203.0.113.6:3479", 800), t, 1000)
            .unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        let e = dir
            .register(&registration(&secret, "0.0.0.0:3479", 1000), t, 1000)
            .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);

        let me = PeerId([1; 32]);
        let offered = dir.grants(&party(&[1, 2, 3]), me, t, 1000);
        assert_eq!(offered.relays.len(), 1);
        let grants = &offered.relays[0].grants;
        assert_eq!(grants.len(), 2, "one per other member");
        for g in grants {
            let grant = g.to_grant().unwrap();
            assert_eq!(
                grant,
                secret.grant(7, &me, &g.peer, 1000 + GRANT_LIFETIME_SECS)
            );
        }
        assert!(
            dir.grants(&party(&[1, 2]), me, t + RELAY_TTL, 1000)
                .relays
                .is_empty()
        );
    }

    #[test]
    fn without_a_secret_no_relay_registers_and_none_is_offered() {
        let dir = RelayDirectory::new(None);
        let secret = RelaySecret::new([4; 32]);
        let e = dir
            .register(
                &registration(&secret, "203.0.113.5:3479", 1000),
                Instant::now(),
                1000,
            )
            .unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(
            dir.grants(&party(&[1, 2]), PeerId([1; 32]), Instant::now(), 1000)
                .relays
                .is_empty()
        );
    }
}
