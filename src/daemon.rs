//! The daemon: a cycle every `check_interval`, one daemon per state
//! directory, a prompt stop on SIGTERM or SIGINT, also mid-sleep, and the
//! model service's status in `status.json` for `macha status`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::cycle::{ensure_state_dir, Engine};
use crate::model::status::{self, DaemonStatus};
use crate::notify::{self, outbox::Outbox};

const LOCK_FILE: &str = "daemon.lock";

/// Holds the state directory's lock for as long as it lives.
pub struct StateLock {
    _file: File,
}

/// Takes the exclusive lock of `dir`, or says which process holds it.
pub fn lock_state_dir(dir: &Path) -> anyhow::Result<StateLock> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    if file.try_lock().is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        anyhow::bail!(
            "another macha daemon{} is already running on {}; stop it first (systemctl stop macha-autonomous)",
            if holder.is_empty() { String::new() } else { format!(" (pid {holder})") },
            dir.display()
        );
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(StateLock { _file: file })
}

/// Runs until SIGTERM or SIGINT. Must be polled inside a `tokio::task::LocalSet`.
pub async fn run(config: Config) -> anyhow::Result<()> {
    ensure_state_dir(&config.state_dir)?;
    let _lock = lock_state_dir(&config.state_dir)?;
    let interval = config.check_interval();
    tracing::info!(
        autonomy = config.autonomy_level.as_str(),
        interval_secs = interval.as_secs(),
        model = %config.ollama.model,
        state_dir = %config.state_dir.display(),
        "macha daemon started"
    );
    let (notifier, gotify) = match notify::setup(&config)? {
        Some((n, g)) => (Some(n), Some(g)),
        None => (None, None),
    };
    if let (Some(n), Some(g)) = (&notifier, gotify) {
        tracing::info!(url = %g.url(), "notifications to Gotify on");
        // The sender shares the daemon's single thread; its SQLite handle is not `Sync`.
        tokio::task::spawn_local(notify::run_sender(
            Outbox::open(&config.state_dir)?,
            g,
            config.gotify.retry_max,
            n.wake(),
        ));
    }
    let state_dir = config.state_dir.clone();
    let mut engine = Engine::new(config, notifier)?;
    let started_at = chrono::Utc::now();
    tokio::task::spawn_local(status::publish(engine.model().clone(), state_dir.clone(), started_at));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            result = engine.run_cycle() => {
                if let Err(e) = result {
                    // The daemon outlives a bad cycle; the next one tries again.
                    tracing::error!(error = format!("{e:#}"), "cycle failed");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("macha daemon stopped by signal");
    let last = DaemonStatus::of(engine.model(), started_at, Some(chrono::Utc::now()));
    if let Err(e) = status::write(&state_dir, &last) {
        tracing::warn!(error = %e, "cannot write the stopped status");
    }
    Ok(())
}
