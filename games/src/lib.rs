//! Games on the virtual LAN: profiles of known games (embedded data, overridable from the
//! data directory).

pub mod profile;
