//! Log set-up: plain or JSON lines on stderr, filtered by `RUST_LOG`/`LOG_LEVEL`.

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored), so
/// tests may start several daemons in one process.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A closed log pipe must not panic the daemon (eprintln! would), or stop its shutdown.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if config.json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
