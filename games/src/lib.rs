//! Games on the virtual LAN: profiles of known games (embedded data, overridable from the
//! data directory) and detection of the ones running.

pub mod a2s;
pub mod detect;
pub mod processes;
pub mod profile;
pub mod sockets;
pub mod tuning;
