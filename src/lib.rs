//! LANrage as a library: [`daemon::Daemon`] runs a member in-process (the C ABI in `ffi/` and
//! GUI shells embed it this way), and the other modules are the commands of the `lanrage`
//! binary, which is a thin command line over them.

pub mod cli;
pub mod config;
pub mod control_server;
pub mod daemon;
pub mod demo;
mod json_api;
mod local_api;
mod logging;
pub mod netcheck;
pub mod relay;
pub mod wg;
