//! Relays: the path of last resort between two members whose NATs admit no direct path.
//!
//! Trust is split three ways, and no relay needs a database:
//! - the control server and its relays share a [`RelaySecret`]; from it the server derives,
//!   for two members of one party, a session number and one [`Grant`] per side, each with a
//!   side key that only that member receives (over its authenticated control connection);
//! - a member binds its side of the session at a relay with a [`frame`] MAC'd by its side key
//!   and a counter that only grows, so the relay recomputes the key from the secret, learns the
//!   member's address, and nobody who merely sees a bind can replay it from elsewhere;
//! - the relay forwards a datagram only from a bound address to the other side's bound
//!   address ([`sessions`]), byte for byte, never larger than what it received.
//!
//! WireGuard inside stays end to end: a relay sees ciphertext, and the worst a hostile relay
//! can do is drop it. The member's half is [`client`].

pub mod client;
pub mod frame;
pub mod grant;
pub mod sessions;

pub use client::{AckRefused, RelayClient, RelayStatus};
pub use grant::{Grant, RelaySecret, SessionId, Side};
pub use sessions::{BindRefused, Bound, RelaySessions, SessionRoute};
