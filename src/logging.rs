//! The daemon's own log: human lines on stderr (which systemd puts in the
//! journal) and JSON lines in `orchestrator.log` in the state directory,
//! which `macha-logs orchestrator` reads.

use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::state_dir::StateDir;

pub const ORCHESTRATOR_LOG: &str = "orchestrator.log";

/// Past this size, `orchestrator.log` is moved to `orchestrator.log.1`
/// (replacing the previous one) when the log is opened.
const ROTATE_BYTES: u64 = 16 * 1024 * 1024;

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("MACHA_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// Logging for commands that talk to a person: warnings and errors only.
pub fn init_cli() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter("warn"))
        .without_time()
        .try_init();
}

/// Logging for the daemon and for `macha-check`: stderr plus `orchestrator.log`.
pub fn init_orchestrator(state: &StateDir, stderr_level: &str) -> anyhow::Result<()> {
    let open = || state.append(ORCHESTRATOR_LOG).map_err(|e| anyhow::anyhow!("cannot open the log: {e}"));
    let mut file = open()?;
    if file.metadata().is_ok_and(|m| m.len() > ROTATE_BYTES) {
        // Moved aside under its open handle; logging goes to a new file.
        let _ = state.rename(ORCHESTRATOR_LOG, &format!("{ORCHESTRATOR_LOG}.1"));
        file = open()?;
    }
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_filter(filter(stderr_level));
    let json = fmt::layer().json().with_writer(Mutex::new(file)).with_current_span(false).with_filter(filter("info"));
    let _ = tracing_subscriber::registry().with(stderr).with(json).try_init();
    Ok(())
}
