//! The command-line front ends, one file per command. They parse arguments,
//! call the library and print; they decide nothing themselves.

pub mod approve;
pub mod check;
pub mod control;
pub mod logs;
pub mod notify;

use std::path::Path;
use std::process::ExitCode;

use macha::config::Config;
use macha::notify::gotify::Gotify;
use macha::notify::Notifier;

/// A single-threaded runtime: macha's work is I/O-bound and sequential, and
/// one thread keeps the idle daemon small.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub fn daemon(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    macha::cycle::ensure_state_dir(&config.state_dir)?;
    macha::logging::init_orchestrator(&config.state_dir, "info")?;
    runtime()?.block_on(tokio::task::LocalSet::new().run_until(macha::daemon::run(config)))?;
    Ok(ExitCode::SUCCESS)
}

/// Notifications as configured; a bad token file is an error here, at start-up.
pub fn notifications(config: &Config) -> anyhow::Result<(Option<Notifier>, Option<Gotify>)> {
    Ok(match macha::notify::setup(config)? {
        Some((n, g)) => (Some(n), Some(g)),
        None => (None, None),
    })
}

/// One delivery pass for commands that exit right after (the daemon has its
/// own delivery task). What cannot be delivered stays in the outbox for the
/// daemon; the user is told.
pub async fn deliver_now(config: &Config, gotify: &Gotify) {
    let result = async {
        let outbox = macha::notify::outbox::Outbox::open(&config.state_dir)?;
        macha::notify::deliver_due(&outbox, gotify, config.gotify.retry_max).await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(20), result).await {
        Ok(Ok(d)) if d.held > 0 => {
            eprintln!("notifications: {} held for later delivery ({})", d.held, d.error.unwrap_or_default())
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("notifications: {e}"),
        Err(_) => eprintln!("notifications: Gotify did not answer in time; messages held for later delivery"),
    }
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
