//! LANrage as a library: [`daemon::Daemon`] runs a member in-process (the C ABI in `ffi/` and
//! GUI shells embed it this way), and the other modules are the commands of the `lanrage`
//! binary, which is a thin command line over them.

/// `println!` for the command line's output, which ends the command quietly when the reader
/// has gone ([`cli::output`]).
macro_rules! say {
    () => {
        $crate::cli::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

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
