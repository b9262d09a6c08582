//! Log output: `tracing` to stderr, level from `LOG_LEVEL` (as wireguard-go) or `RUST_LOG`;
//! the daemon also takes its level and an optional log file from its settings.

use std::io::IsTerminal;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

/// Logs to stderr at `info`, unless the environment says otherwise.
pub fn init() {
    init_with("info", "");
}

/// Logs at `level` (the environment still wins, for debugging a service), to stderr and, if
/// `file` is not empty, appended to `file` too. A file that cannot be opened is reported
/// and left out: logging never keeps the daemon from starting.
pub fn init_with(level: &str, file: &str) {
    let filter = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("LOG_LEVEL"))
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    let opened = (!file.is_empty()).then(|| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(file)
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A daemon's stderr is a pipe to the process that started it, which goes away once
        // the daemon is ready: a failed log write must not turn into a panic.
        .log_internal_errors(false);
    let (log, failed) = match opened {
        Some(Ok(log)) => (Some(log), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let _ = match log {
        Some(log) => builder
            .with_writer(std::io::stderr.and(Mutex::new(log)))
            .with_ansi(false)
            .try_init(),
        _ => builder
            .with_writer(std::io::stderr)
            // Colour codes only for a person at a terminal, not in log files and pipes.
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    if let Some(e) = failed {
        tracing::warn!(file, error = %e, "cannot open the log file; logging to standard error only");
    }
}
