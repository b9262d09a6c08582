//! The command line's output. `println!` panics when the reader has gone
//! (`lanrage games --known | head -1`); a command here ends quietly instead, with the status
//! a shell reports for a program that SIGPIPE ended, as `ls` or `cat` would.

use std::io::{ErrorKind, Write};

/// Writes `text` to standard output; see the module documentation.
pub fn write(text: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(text).and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(128 + 13);
        }
        eprintln!("lanrage: cannot write the output: {e}");
        std::process::exit(1);
    }
}
