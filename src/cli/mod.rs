//! The command-line front ends, one file per command. They parse arguments,
//! call the library and print; they decide nothing themselves.

pub mod approve;
pub mod check;
pub mod logs;

use std::path::Path;
use std::process::ExitCode;

use macha::config::Config;

/// A single-threaded runtime: macha's work is I/O-bound and sequential, and
/// one thread keeps the idle daemon small.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub fn daemon(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    macha::cycle::ensure_state_dir(&config.state_dir)?;
    macha::logging::init_orchestrator(&config.state_dir, "info")?;
    runtime()?.block_on(macha::daemon::run(config))?;
    Ok(ExitCode::SUCCESS)
}

/// "3m", "5h", "2d": how long ago something happened.
pub fn age(since: chrono::DateTime<chrono::Utc>) -> String {
    let secs = (chrono::Utc::now() - since).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}
