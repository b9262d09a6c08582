//! Parties: friends who share one virtual LAN. The control server keeps them in a
//! [`Registry`] (stored by [`store::PartyStore`]); a party is joined with its
//! [`code::PartyCode`], and join attempts are rate limited per client
//! ([`rate_limit::JoinLimiter`]); the server's other limits are [`rate_limit::RateLimiter`]s,
//! counters in [`limits`], and the client address behind a trusted proxy from [`source`]. A
//! member's daemon follows its party with a [`membership::Membership`].

pub mod code;
pub mod limits;
pub mod local;
pub mod membership;
pub mod rate_limit;
mod registry;
pub mod scope;
pub mod source;
pub mod store;

pub use registry::{
    LeaveReason, MAX_ENDPOINTS, MAX_NAME_CHARS, Member, Notice, PartyError, PartyEvent, PartyId,
    PartyRecord, PartyView, Registry, RegistryConfig,
};
