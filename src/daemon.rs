//! The daemon: a cycle every `check_interval`, one daemon per state
//! directory, a prompt stop on SIGTERM or SIGINT, also mid-sleep, except
//! that an action in flight is let finish and recorded first (within
//! `act.job_timeout + act.settle_time`), the
//! model service's status in `status.json` for `macha status`, and systemd
//! told when it is ready, what it does and that it is alive
//! (`service_manager`).

use std::fs::File;
use std::io::{Read, Seek, Write};

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::cycle::Engine;
use crate::model::status::{self, DaemonStatus};
use crate::model::ModelService;
use crate::notify::gotify::Gotify;
use crate::notify::{self, outbox::Outbox};
use crate::report::CycleReport;
use crate::service_manager::ServiceManager;
use crate::state_dir::StateDir;

const LOCK_FILE: &str = "daemon.lock";

/// Holds the state directory's lock for as long as it lives.
pub struct StateLock {
    _file: File,
}

/// Takes the exclusive lock of the state directory, or says which process
/// holds it.
pub fn lock_state_dir(state: &StateDir) -> anyhow::Result<StateLock> {
    let mut file = state.append(LOCK_FILE).map_err(|e| anyhow::anyhow!("cannot open the daemon's lock: {e}"))?;
    if file.try_lock().is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        anyhow::bail!(
            "another macha daemon{} is already running on {}; stop it first (systemctl stop macha-autonomous)",
            if holder.is_empty() { String::new() } else { format!(" (pid {holder})") },
            state.path().display()
        );
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(StateLock { _file: file })
}

/// Runs until SIGTERM or SIGINT, on the open state directory `state`, with
/// the model service and the Gotify client (its token read) made before.
/// Must be polled inside a `tokio::task::LocalSet`.
pub async fn run(config: Config, state: StateDir, model: ModelService, gotify: Option<Gotify>) -> anyhow::Result<()> {
    let _lock = lock_state_dir(&state)?;
    let interval = config.check_interval();
    tracing::info!(
        autonomy = config.autonomy_level.as_str(),
        interval_secs = interval.as_secs(),
        model = %config.ollama.model,
        state_dir = %config.state_dir.display(),
        "macha daemon started"
    );
    let (notifier, gotify) = match notify::setup(&config, &state, gotify)? {
        Some((n, g)) => (Some(n), Some(g)),
        None => (None, None),
    };
    if let (Some(n), Some(g)) = (&notifier, gotify) {
        tracing::info!(url = %g.url(), "notifications to Gotify on");
        // The sender shares the daemon's single thread; its SQLite handle is not `Sync`.
        tokio::task::spawn_local(notify::run_sender(Outbox::open(&state)?, g, config.gotify.retry_max, n.wake()));
    }
    // How long a stop waits for an action in flight: its job, its check,
    // and a little for writing its record.
    let grace = std::time::Duration::from_secs(config.act.job_timeout.saturating_add(config.act.settle_time))
        .saturating_add(std::time::Duration::from_secs(5));
    let mut engine = Engine::new(config, state.clone(), model, notifier)?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    engine.stop_on(stopping);
    engine.pace_retries();
    let started_at = chrono::Utc::now();
    tokio::task::spawn_local(status::publish(engine.model().clone(), state.clone(), started_at));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let manager = ServiceManager::from_env();
    if let Some(every) = manager.ping_every() {
        tracing::info!(every_ms = every.as_millis() as u64, "pinging systemd's watchdog");
    }
    tokio::task::spawn_local(manager.keep_watchdog_alive());
    // Ready once the lock is held and the state, the model service and the
    // notifier are open: what can fail at start-up has failed by now.
    manager.ready("started; first cycle now");
    loop {
        manager.status(&format!("cycle running since {}", chrono::Local::now().format("%H:%M:%S")));
        let cycle = engine.run_cycle();
        tokio::pin!(cycle);
        let signalled = tokio::select! {
            result = &mut cycle => {
                match result {
                    Ok(report) => manager.status(&idle_status(&report, interval)),
                    Err(e) => {
                        // The daemon outlives a bad cycle; the next one tries again.
                        tracing::error!(error = crate::errors::chain(e.as_ref()), "cycle failed");
                        manager.status(&format!("last cycle failed: {e}; next in {} s", interval.as_secs()));
                    }
                }
                false
            }
            _ = term.recv() => true,
            _ = int.recv() => true,
        };
        if signalled {
            // Observing and deciding stop now; an action in flight ends
            // and is recorded first, within the grace.
            stop.send_replace(true);
            manager.status("stopping: an action in flight, if any, ends and is recorded first");
            match tokio::time::timeout(grace, &mut cycle).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::info!(error = format!("{e:#}"), "cycle cut short by the stop signal"),
                Err(_) => tracing::error!(
                    grace_secs = grace.as_secs(),
                    "an action was still running when the stop's grace ran out; the next start records how it ended"
                ),
            }
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    manager.stopping();
    tracing::info!("macha daemon stopped by signal");
    let last = DaemonStatus::of(engine.model(), started_at, Some(chrono::Utc::now()));
    if let Err(e) = status::write(&state, &last) {
        tracing::warn!(error = %e, "cannot write the stopped status");
    }
    Ok(())
}

/// The unit's status line between two cycles, for `systemctl status`.
fn idle_status(report: &CycleReport, interval: std::time::Duration) -> String {
    let mut text = format!(
        "idle; cycle at {}: {} incident{}",
        report.started_at.with_timezone(&chrono::Local).format("%H:%M:%S"),
        report.incidents.len(),
        if report.incidents.len() == 1 { "" } else { "s" }
    );
    if !report.failed_sources.is_empty() {
        let names: Vec<&str> = report.failed_sources.iter().map(|f| f.source.as_str()).collect();
        text.push_str(&format!(", unreadable: {}", names.join(", ")));
    }
    if !report.model_problems.is_empty() {
        text.push_str(", model not ready (macha status)");
    }
    text.push_str(&format!("; next in {} s", interval.as_secs()));
    text
}
