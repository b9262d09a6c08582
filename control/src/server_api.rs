//! The control server's wire format: JSON bodies of its HTTP API and of the events it pushes
//! over WebSocket. Shared by the server and the daemon's client so the two cannot drift.
//!
//! Endpoints (all bodies JSON; errors are `{"error": "..."}` with a 4xx/5xx status):
//! - `POST /v1/auth/challenge` [`ChallengeRequest`] → [`ChallengeResponse`]
//! - `POST /v1/auth/token` [`TokenRequest`] → [`TokenResponse`]
//! - with `Authorization: Bearer TOKEN`:
//!   `POST /v1/parties` [`CreateParty`] → [`PartyJson`];
//!   `POST /v1/parties/join` [`JoinParty`] → [`PartyJson`];
//!   `POST /v1/parties/leave` → 204;
//!   `GET /v1/party` → [`PartyJson`] (404 when in none);
//!   `POST /v1/heartbeat` [`Heartbeat`] → 204;
//!   `GET /v1/events` → WebSocket of [`EventJson`] text frames, a snapshot first;
//!   `GET /v1/relays` → [`RelaysJson`], the live relays with a grant for each other member.
//! - from relays, MAC'd with the relay secret: `POST /v1/relays` [`RelayRegistration`] → 204.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::nat::NatType;
use crate::party::{LeaveReason, Member, PartyEvent, PartyView};
use crate::peer_id::PeerId;
use crate::relay::{Grant, SessionId, Side};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeRequest {
    pub peer: PeerId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeResponse {
    pub challenge: String,
    /// The server's X25519 public key, base64: the other half of the proof's DH.
    pub server_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    pub peer: PeerId,
    pub challenge: String,
    pub proof: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub expires_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateParty {
    pub name: String,
    pub member_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinParty {
    pub code: String,
    pub member_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<SocketAddr>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatType>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberJson {
    pub peer: PeerId,
    pub name: String,
    pub virtual_ip: Ipv4Addr,
    pub endpoints: Vec<SocketAddr>,
    pub nat: NatType,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartyJson {
    pub id: u64,
    pub name: String,
    /// As players type it: `XXXX-XXXX-XXXX-XXXX`.
    pub code: String,
    pub subnet: String,
    pub members: Vec<MemberJson>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventJson {
    /// The party as it is when the stream starts.
    Snapshot {
        party: Option<PartyJson>,
    },
    Joined {
        member: MemberJson,
    },
    Left {
        peer: PeerId,
        reason: String,
    },
    Updated {
        member: MemberJson,
    },
}

/// A relay announcing itself; it does so again every few seconds, or is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRegistration {
    /// Where members reach it.
    pub addr: SocketAddr,
    pub unix_time: u64,
    /// Hex of [`crate::relay::RelaySecret::registration_mac`] over `addr` and `unix_time`.
    pub mac: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelaysJson {
    pub relays: Vec<RelayJson>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayJson {
    pub addr: SocketAddr,
    /// One per other member of the caller's party.
    pub grants: Vec<GrantJson>,
}

/// The caller's side of its session with `peer` (see [`crate::relay::Grant`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantJson {
    pub peer: PeerId,
    pub session: u64,
    pub side: u8,
    pub expires_unix: u64,
    /// The side key, hex. Secret: only the member it is for receives it.
    pub key: String,
}

impl GrantJson {
    pub fn from_grant(peer: PeerId, grant: &Grant) -> Self {
        GrantJson {
            peer,
            session: grant.session.0,
            side: grant.side as u8,
            expires_unix: grant.expires_unix,
            key: hex::encode(grant.key),
        }
    }

    pub fn to_grant(&self) -> Option<Grant> {
        let mut key = [0; 32];
        hex::decode_to_slice(&self.key, &mut key).ok()?;
        Some(Grant {
            session: SessionId(self.session),
            side: Side::from_byte(self.side)?,
            expires_unix: self.expires_unix,
            key,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorJson {
    pub error: String,
}

impl From<&Member> for MemberJson {
    fn from(m: &Member) -> Self {
        MemberJson {
            peer: m.peer,
            name: m.name.clone(),
            virtual_ip: m.virtual_ip,
            endpoints: m.endpoints.clone(),
            nat: m.nat,
        }
    }
}

impl From<&PartyView> for PartyJson {
    fn from(p: &PartyView) -> Self {
        PartyJson {
            id: p.id.0,
            name: p.name.clone(),
            code: p.code.to_string(),
            subnet: p.subnet.to_string(),
            members: p.members.iter().map(MemberJson::from).collect(),
        }
    }
}

impl From<&PartyEvent> for EventJson {
    fn from(e: &PartyEvent) -> Self {
        match e {
            PartyEvent::Joined(m) => EventJson::Joined { member: m.into() },
            PartyEvent::Updated(m) => EventJson::Updated { member: m.into() },
            PartyEvent::Left { peer, reason } => EventJson::Left {
                peer: *peer,
                reason: match reason {
                    LeaveReason::Left => "left",
                    LeaveReason::Expired => "expired",
                    LeaveReason::Moved => "moved",
                }
                .to_owned(),
            },
        }
    }
}

impl Serialize for PeerId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for NatType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for NatType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_and_keys_are_base64() {
        let event = EventJson::Left {
            peer: PeerId([1; 32]),
            reason: "expired".into(),
        };
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"event":"left","peer":"{}","reason":"expired"}}"#,
                PeerId([1; 32])
            )
        );
        assert_eq!(serde_json::from_str::<EventJson>(&text).unwrap(), event);
    }

    #[test]
    fn bad_keys_and_nat_types_are_refused_with_a_reason() {
        let err = serde_json::from_str::<ChallengeRequest>(r#"{"peer":"abc"}"#).unwrap_err();
        assert!(err.to_string().contains("WireGuard public key"), "{err}");
        let err = serde_json::from_str::<Heartbeat>(r#"{"nat":"cone"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown NAT type"), "{err}");
        assert_eq!(
            serde_json::from_str::<Heartbeat>("{}").unwrap(),
            Heartbeat::default()
        );
    }
}
