//! LANrage control plane.
//!
//! Protocol logic lives here as sans-IO code: parsers and state machines that take input and
//! return output, with sockets, clocks and databases left to the caller.

pub mod auth;
pub mod discord;
pub mod ipam;
pub mod nat;
pub mod party;
pub mod path;
pub mod peer_id;
pub mod relay;
pub mod server_api;
pub mod servers;
pub mod settings;
pub mod shown_text;
pub mod sqlite;
pub mod uapi;
