//! Log output: `tracing` to stderr, level from `LOG_LEVEL` (as wireguard-go) or `RUST_LOG`.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("LOG_LEVEL"))
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A daemon's stderr is a pipe to the process that started it, which goes away once
        // the daemon is ready: a failed log write must not turn into a panic.
        .log_internal_errors(false)
        .try_init();
}
