//! The daemon: systemd's signals followed and a full pass every
//! `check_interval`, decisions apart from observation, one daemon per state
//! directory, a prompt stop on SIGTERM or SIGINT, also mid-sleep, except
//! that an action in flight is let finish and recorded first (within
//! `act.job_timeout + act.settle_time`), the
//! model service's status in `status.json` for `macha status`, and systemd
//! told when it is ready, what it does and that it is alive
//! (`service_manager`).

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::cycle::{Engine, Job};
use crate::ids::Fingerprint;
use crate::model::status::{self, DaemonStatus};
use crate::model::ModelService;
use crate::notify::{self, outbox::Outbox, Notifier};
use crate::observe::journal;
use crate::observe::units::Transition;
use crate::observe::window::ErrorWindow;
use crate::observe::{Scope, KEPT_ERROR_ENTRIES};
use crate::report::CycleReport;
use crate::service_manager::ServiceManager;
use crate::state_dir::StateDir;
use crate::store::Novelty;
use crate::watch::{Happened, Watch};

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
/// the model service and the notification channels (their tokens read)
/// made before.
/// Must be polled inside a `tokio::task::LocalSet`.
///
/// Two tasks: this one watches (systemd's signals, the journal's errors,
/// and a full pass every `check_interval`) and records each incident as
/// soon as it is seen; the decider (`decide`) takes the incidents that need
/// a decision one at a time, so a slow or dead model delays only decisions.
pub async fn run(
    config: Config,
    state: StateDir,
    model: ModelService,
    channels: Vec<notify::Channel>,
) -> anyhow::Result<()> {
    let _lock = lock_state_dir(&state)?;
    tracing::info!(
        autonomy = config.autonomy_level.as_str(),
        interval_secs = config.check_interval().as_secs(),
        model = %config.ollama.model,
        state_dir = %config.state_dir.display(),
        "macha daemon started"
    );
    let notifier = start_notifications(&config, &state, channels)?;
    let watcher_notifier = notifier.as_ref().map(|n| n.another(&state)).transpose()?;
    let mut engine = Engine::new(config.clone(), state.clone(), model.clone(), watcher_notifier)?;
    let mut decider = Engine::new(config.clone(), state.clone(), model, notifier)?;
    // Bound before anything starts: an address taken is said at once.
    let (metrics, alerts) = (config.metrics.listen, config.alertmanager.listen);
    let metrics_listener = match metrics {
        Some(addr) => Some(crate::exporter::listen(addr, "metrics.listen").await?),
        None => None,
    };
    let alerts_listener = match alerts {
        Some(addr) if metrics != Some(addr) => Some(crate::exporter::listen(addr, "alertmanager.listen").await?),
        _ => None,
    };
    let wake = Rc::new(tokio::sync::Notify::new());
    let receiver = match alerts {
        Some(_) => Some(Rc::new(crate::alerts::Receiver::new(&config, &state, wake.clone())?)),
        None => None,
    };
    let (stop, stopping) = tokio::sync::watch::channel(false);
    engine.stop_on(stopping.clone());
    decider.stop_on(stopping);
    decider.pace_retries();
    let started_at = chrono::Utc::now();
    let shared = status::Shared::default();
    shared.update(|w| w.memory = decider.memory_status());
    tokio::task::spawn_local(status::publish(decider.model().clone(), shared.clone(), state.clone(), started_at));
    let mut routes = crate::exporter::Routes::default();
    if let Some(addr) = metrics {
        let counters = Arc::new(crate::counters::Counters::new());
        engine.count_into(counters.clone());
        decider.count_into(counters.clone());
        let store = crate::store::Store::open(&state)?;
        routes.metrics = Some(crate::exporter::Exporter::new(counters, store, shared.clone()));
        tracing::info!(%addr, "serving metrics for Prometheus at /metrics");
    }
    if let Some(addr) = alerts {
        tracing::info!(%addr, "taking Alertmanager's webhook at /alertmanager");
    }
    match (metrics_listener, alerts_listener) {
        (Some(m), Some(a)) => {
            let alert_routes = crate::exporter::Routes { metrics: None, alerts: receiver };
            tokio::task::spawn_local(crate::exporter::serve(m, Rc::new(routes)));
            tokio::task::spawn_local(crate::exporter::serve(a, Rc::new(alert_routes)));
        }
        (Some(listener), None) | (None, Some(listener)) => {
            routes.alerts = receiver;
            tokio::task::spawn_local(crate::exporter::serve(listener, Rc::new(routes)));
        }
        (None, None) => {}
    }
    let line = Line::new(shared.clone());
    let deciding = tokio::task::spawn_local(decide(decider, line.clone(), config.clone()));
    tokio::task::spawn_local(give_back_when_quiet(line.clone()));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let manager = ServiceManager::from_env();
    if let Some(every) = manager.ping_every() {
        tracing::info!(every_ms = every.as_millis() as u64, "pinging systemd's watchdog");
    }
    tokio::task::spawn_local(manager.keep_watchdog_alive());
    // Ready once the lock is held and the state, the model service and the
    // notifier are open: what can fail at start-up has failed by now.
    manager.ready("started; first pass now");
    let mut watcher = Watcher::start(&config, engine, line, manager, shared.clone(), wake)?;
    tokio::select! {
        () = watcher.run() => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    // Observing and deciding stop now; an action in flight ends and is
    // recorded first, within the grace.
    stop.send_replace(true);
    watcher.stop();
    // How long a stop waits for an action in flight: its job, its check,
    // and a little for writing its record.
    let grace = std::time::Duration::from_secs(config.act.job_timeout.saturating_add(config.act.settle_time))
        .saturating_add(std::time::Duration::from_secs(5));
    let last_model = match tokio::time::timeout(grace, deciding).await {
        Ok(Ok(model)) => model,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the decider ended abnormally");
            watcher.engine.model().clone()
        }
        Err(_) => {
            tracing::error!(
                grace_secs = grace.as_secs(),
                "an action was still running when the stop's grace ran out; the next start records how it ended"
            );
            watcher.engine.model().clone()
        }
    };
    watcher.manager.stopping();
    tracing::info!("macha daemon stopped by signal");
    let mut last = DaemonStatus::of(&last_model, Some(shared.get()), started_at, Some(chrono::Utc::now()));
    if let Some(w) = &mut last.watching {
        w.events.live = false;
    }
    if let Err(e) = status::write(&state, &last) {
        tracing::warn!(error = %e, "cannot write the stopped status");
    }
    Ok(())
}

/// The notifier, and its delivery task started; `None` when notifications
/// are off.
fn start_notifications(
    config: &Config,
    state: &StateDir,
    channels: Vec<notify::Channel>,
) -> anyhow::Result<Option<Notifier>> {
    let Some((notifier, channels)) = notify::setup(config, state, channels)? else { return Ok(None) };
    for channel in channels {
        tracing::info!(channel = channel.name(), url = %channel.url(), "notifications on");
        // Each sender shares the daemon's single thread; its SQLite handle is not `Sync`.
        let outbox = Outbox::open(state)?;
        let wake = notifier.wake(channel.name()).expect("a wake per channel");
        tokio::task::spawn_local(notify::run_sender(outbox, channel, config.gotify.retry_max, wake));
    }
    Ok(Some(notifier))
}

/// The watching task: what starts a pass, the passes, and what they put in
/// line for the decider.
struct Watcher {
    engine: Engine,
    watch: Watch,
    line: Line,
    manager: ServiceManager,
    /// Woken by the journal follower when a burst begins or ends.
    bursts: Arc<tokio::sync::Notify>,
    /// Woken by Alertmanager's webhook when alerts changed.
    alerts: Rc<tokio::sync::Notify>,
    /// Stops the journal follower.
    journal: Arc<AtomicBool>,
    interval: std::time::Duration,
    /// How long a resolved incident must stay gone before it is told.
    settle: std::time::Duration,
    /// When the next full pass is due.
    next_full: tokio::time::Instant,
    /// When incidents resolved lately have stayed gone long enough to be
    /// told resolved (a pass tells it): no waiting for the next full pass.
    settle_at: Option<tokio::time::Instant>,
    /// The units of the incidents the last pass saw: any change of theirs
    /// may resolve one.
    units: HashSet<String>,
    /// Restarts within the window that make a restart loop.
    loop_at: usize,
}

impl Watcher {
    fn start(
        config: &Config,
        mut engine: Engine,
        line: Line,
        manager: ServiceManager,
        shared: status::Shared,
        alerts: Rc<tokio::sync::Notify>,
    ) -> anyhow::Result<Self> {
        // The journal's errors, followed on a thread of their own: a burst
        // beginning or ending wakes a pass.
        let (journal, bursts) = follow_journal(config, &mut engine)?;
        Ok(Self {
            engine,
            watch: Watch::new(config, shared),
            line,
            manager,
            bursts,
            alerts,
            journal,
            interval: config.check_interval(),
            settle: std::time::Duration::from_secs(config.gotify.resolve_after.saturating_add(1)),
            next_full: tokio::time::Instant::now(),
            settle_at: None,
            units: HashSet::new(),
            loop_at: config.detect.restart_loop_restarts as usize,
        })
    }

    /// Watches until the engine is told to stop.
    async fn run(&mut self) {
        loop {
            let mut settling = false;
            let scope = tokio::select! {
                happened = self.watch.next() => {
                    // Signals read are work too, a pass or not.
                    self.line.worked();
                    self.scope_for(happened)
                }
                _ = tokio::time::sleep_until(self.next_full) => Some(Scope::Full),
                _ = self.bursts.notified() => Some(Scope::Units),
                // Alertmanager's webhook brought alerts that changed.
                _ = self.alerts.notified() => Some(Scope::Units),
                _ = sleep_until(self.settle_at) => {
                    self.settle_at = None;
                    settling = true;
                    Some(Scope::Units)
                }
            };
            let Some(scope) = scope else { continue };
            if !self.pass(scope, settling).await {
                return;
            }
        }
    }

    /// One pass; its incidents that need a decision go in line. False once
    /// told to stop.
    async fn pass(&mut self, scope: Scope, settling: bool) -> bool {
        if scope == Scope::Full {
            self.next_full = tokio::time::Instant::now() + self.interval;
            self.manager.status(&format!("cycle running since {}", chrono::Local::now().format("%H:%M:%S")));
            self.line.check_model();
            self.line.look_at_fleet();
            self.watch.reconcile().await;
        }
        let restarting = self.watch.live().then(|| self.watch.restarting());
        match self.engine.pass(scope, restarting).await {
            Ok(Some(pass)) => {
                self.units = pass.incidents.iter().filter_map(|i| i.kind.unit().map(str::to_owned)).collect();
                if !pass.resolved.is_empty() {
                    self.settle_at = Some(tokio::time::Instant::now() + self.settle);
                }
                let noteworthy = !pass.resolved.is_empty() || pass.novelty.iter().any(|n| *n != Novelty::Known);
                if scope == Scope::Full || noteworthy || settling {
                    let report = self.engine.after_pass(&pass).await;
                    self.manager.status(&idle_status(&report, self.interval));
                }
                for job in pass.jobs() {
                    self.line.push(job);
                }
            }
            Ok(None) => return false,
            Err(e) => {
                // The daemon outlives a bad pass; the next one tries again.
                tracing::error!(error = crate::errors::chain(e.as_ref()), "pass failed");
                self.manager.status(&format!("last pass failed: {e}; next in {} s", self.interval.as_secs()));
            }
        }
        self.line.worked();
        true
    }

    /// The pass that what happened calls for, if any: one of the units
    /// (`Scope::Units`) for a unit that entered or left `failed`, one that
    /// became a restart loop, or any change of a unit with an incident; and
    /// after the stream came back. A lost stream calls for none: the full
    /// passes go on meanwhile.
    fn scope_for(&self, happened: Happened) -> Option<Scope> {
        let changed = match happened {
            Happened::Changed(changed) => changed,
            Happened::Back => return Some(Scope::Units),
            Happened::Lost(_) => return None,
        };
        let matters = |(unit, t): &(String, Transition)| match t {
            Transition::Failed | Transition::LeftFailed(_) => true,
            Transition::Restarted { in_window } => *in_window == self.loop_at,
            Transition::State(..) | Transition::Gone => self.units.contains(unit),
        };
        changed.iter().any(matters).then_some(Scope::Units)
    }

    /// Stops the journal follower and closes the line: the decider ends
    /// once it finished what it does now.
    fn stop(&self) {
        self.journal.store(true, Ordering::Relaxed);
        self.line.close();
        self.manager.status("stopping: an action in flight, if any, ends and is recorded first");
    }
}

/// Starts following the journal's errors from where the last full pass
/// left off, into a window `watcher`'s passes read; returns the flag that
/// stops the follower and what it wakes.
fn follow_journal(
    config: &Config,
    watcher: &mut Engine,
) -> anyhow::Result<(Arc<AtomicBool>, Arc<tokio::sync::Notify>)> {
    let d = &config.detect;
    let span = chrono::TimeDelta::seconds(i64::try_from(d.error_burst_window).unwrap_or(i64::MAX));
    let window = Arc::new(Mutex::new(ErrorWindow::new(span, u64::from(d.error_burst_lines), KEPT_ERROR_ENTRIES)));
    let stop = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(tokio::sync::Notify::new());
    let waker = wake.clone();
    journal::follow(
        config.journal_dir.clone(),
        watcher.cursor(),
        config.check_interval(),
        window.clone(),
        stop.clone(),
        move || waker.notify_one(),
    )
    .map_err(|e| anyhow::anyhow!("cannot start the journal follower: {e}"))?;
    watcher.follow_journal(window);
    Ok((stop, wake))
}

/// Sleeps until `at`; forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The incidents waiting for a decision, oldest first, shared by the
/// watcher (which puts them in line) and the decider (which takes them);
/// each change is told to `macha status`.
#[derive(Clone)]
struct Line {
    jobs: Rc<RefCell<VecDeque<Job>>>,
    /// The model is to be checked (a full pass asked).
    check: Rc<Cell<bool>>,
    /// The remote hosts are to be looked at (a full pass asked).
    fleet: Rc<Cell<bool>>,
    added: Rc<tokio::sync::Notify>,
    /// Told after each pass, signals read and each piece of the decider's work.
    worked: Rc<tokio::sync::Notify>,
    closed: Rc<Cell<bool>>,
    /// The incident being decided, and the evidence it is decided on.
    deciding: Rc<RefCell<Option<(Fingerprint, String)>>>,
    shared: status::Shared,
}

impl Line {
    fn new(shared: status::Shared) -> Self {
        Self {
            jobs: Rc::default(),
            check: Rc::default(),
            fleet: Rc::default(),
            added: Rc::default(),
            worked: Rc::default(),
            closed: Rc::default(),
            deciding: Rc::default(),
            shared,
        }
    }

    /// Puts `job` in line, in the place of an older one of the same
    /// incident (the newer pass saw more).
    fn push(&self, job: Job) {
        let seen = (&job.incident.fingerprint, &job.incident.evidence_key);
        if self.deciding.borrow().as_ref().is_some_and(|(fp, key)| (fp, key) == seen) {
            // Being decided on this very evidence.
            return;
        }
        {
            let mut jobs = self.jobs.borrow_mut();
            match jobs.iter_mut().find(|w| w.incident.fingerprint == job.incident.fingerprint) {
                Some(older) => *older = job,
                None => jobs.push_back(job),
            }
        }
        self.tell_waiting();
        self.added.notify_one();
    }

    /// Asks the decider to check the model (when it is not known to be ready).
    fn check_model(&self) {
        self.check.set(true);
        self.added.notify_one();
    }

    /// Asks the decider to look at the remote hosts and decide for them
    /// (`remote::controller`), after this host's incidents in line.
    fn look_at_fleet(&self) {
        self.fleet.set(true);
        self.added.notify_one();
    }

    /// The next thing to do; `None` once the line is closed and empty.
    async fn next(&self) -> Option<Work> {
        loop {
            if self.check.take() {
                return Some(Work::CheckModel);
            }
            if let Some(job) = self.jobs.borrow_mut().pop_front() {
                return Some(Work::Decide(job));
            }
            if self.fleet.take() && !self.closed.get() {
                return Some(Work::Fleet);
            }
            if self.closed.get() {
                return None;
            }
            self.added.notified().await;
        }
    }

    /// Whether the decider has nothing to do and does nothing.
    fn is_idle(&self) -> bool {
        self.jobs.borrow().is_empty() && self.deciding.borrow().is_none() && !self.check.get() && !self.fleet.get()
    }

    /// A pass, signals read or a piece of the decider's work is done.
    fn worked(&self) {
        self.worked.notify_one();
    }

    /// No more jobs come; the decider ends once it took them all.
    fn close(&self) {
        self.closed.set(true);
        self.added.notify_one();
    }

    /// Tells the status what waits.
    fn tell_waiting(&self) {
        let now: Vec<status::Waiting> = self.jobs.borrow().iter().map(Job::waiting).collect();
        self.shared.tell(|w| w.waiting = now);
    }

    /// Tells the status what is being decided now (`None`: nothing).
    fn tell_deciding(&self, job: Option<&Job>) {
        *self.deciding.borrow_mut() = job.map(|j| (j.incident.fingerprint.clone(), j.incident.evidence_key.clone()));
        let deciding = job.map(Job::waiting);
        self.shared.tell(|w| w.deciding = deciding);
        self.tell_waiting();
    }
}

/// What the decider does next.
enum Work {
    CheckModel,
    Decide(Job),
    Fleet,
}

/// The decider: decides the incidents in line, one at a time, until the
/// line is closed; returns the model service for the last status.
async fn decide(mut engine: Engine, line: Line, config: Config) -> ModelService {
    while let Some(work) = line.next().await {
        let job = match work {
            Work::CheckModel => {
                engine.check_model_now().await;
                line.worked();
                continue;
            }
            Work::Fleet => {
                // Each host on a thread of its own, bounded by the timeouts;
                // this host's incidents seen meanwhile wait in line.
                crate::remote::controller::pass(&mut engine, &config).await;
                line.worked();
                continue;
            }
            Work::Decide(job) => job,
        };
        line.tell_deciding(Some(&job));
        if let Err(e) = engine.decide_job(&job).await {
            tracing::error!(
                incident = %job.incident.fingerprint,
                error = crate::errors::chain(e.as_ref()),
                "deciding failed; the incident stays open and is decided again"
            );
        }
        let memory = engine.memory_status();
        line.shared.update(|w| w.memory = memory);
        line.tell_deciding(None);
        line.worked();
    }
    engine.model().clone()
}

/// How long the daemon does nothing before it gives back memory.
const QUIET: std::time::Duration = std::time::Duration::from_secs(2);

/// Gives back the memory work left resident (see `memory`) whenever the
/// daemon falls quiet: `QUIET` after the last pass, signal or decision, with
/// nothing in line or being decided. Waiting that long lets what follows
/// the work (the status written, a notification sent) run first, instead
/// of faulting back at once what was just given back.
async fn give_back_when_quiet(line: Line) {
    loop {
        line.worked.notified().await;
        // More work within `QUIET` starts the wait again.
        while tokio::time::timeout(QUIET, line.worked.notified()).await.is_ok() {}
        if line.is_idle() {
            let given = crate::memory::give_back();
            tracing::debug!(before_kib = given.before_kib, after_kib = given.after_kib, "quiet: memory given back");
        }
    }
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
