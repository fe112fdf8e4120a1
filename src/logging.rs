//! `-v` / `RUST_LOG`: every protocol step of a run, timestamped, on stderr,
//! so that a run that hangs shows where. Nothing is printed without them.
//!
//! `-v` logs the handshake, the transport's setup stages, each request's
//! go and done, missed heartbeats and teardown (debug); `-vv` adds every
//! message and heartbeat (trace). `RUST_LOG=kvxfer=debug` is the same as
//! `-v` and takes any filter `tracing-subscriber` knows.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the logger for `-v` counted `verbosity` times, or for
/// `RUST_LOG` when set; does nothing otherwise.
pub fn init(verbosity: u8) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.trim().is_empty() => EnvFilter::new(f),
        _ => match verbosity {
            0 => return,
            1 => EnvFilter::new("kvxfer=debug"),
            _ => EnvFilter::new("kvxfer=trace"),
        },
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Whether `init` installed a logger: the progress bar then stays off, as
/// both would write to stderr.
pub fn enabled() -> bool {
    tracing::enabled!(tracing::Level::DEBUG)
}
