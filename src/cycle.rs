//! One cycle of the pipeline: observe -> detect -> decide -> gate -> act ->
//! record. The daemon runs it on a timer; `macha-check` runs it once.
//!
//! Ordering rule: a decision, with the gate's verdict on each action, is
//! written to the audit trail before anything is carried out, and an
//! automatic action is recorded as started before it runs (`ledger`), so
//! nothing is ever done that was not recorded first.
//!
//! A daemon told to stop (`Engine::stop_on`) stops observing and deciding at
//! once, but an action already started runs to the end of its check and is
//! recorded.

use std::future::Future;
use std::rc::Rc;
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;

use crate::act;
use crate::audit::{
    self, ActionOutcome, ActionRecord, DecisionOutcome, DecisionRecord, GatedAction, IncidentEvent, IncidentRecord,
    Origin,
};
use crate::carry::{self, Bookkeeping, Books};
use crate::catalog::{Action, ActionKind};
use crate::config::{AutonomyLevel, Config};
use crate::decide::prompt::Prompts;
use crate::decide::tools::HostTools;
use crate::decide::{self, FailureKind, Outcome, ProposedAction};
use crate::detect::{detect, Incident, IncidentKind, OpenIncident};
use crate::elsewhere::{ActedOutcome, Elsewhere};
use crate::gate::{gate, Known, Policy, UnitFacts, Verdict};
use crate::ids::{ApprovalId, Fingerprint};
use crate::kb::{self, Backend as _};
use crate::ledger::Ledger;
use crate::model::metrics::{self, CycleMetrics};
use crate::model::ModelService;
use crate::notify::Notifier;
use crate::observe::systemd::{ReadUnits, UnitState};
use crate::observe::units::Restarting;
use crate::observe::{Observer, Scope, Snapshot};
use crate::propose;
use crate::remember;
use crate::repeat::{Repeating, Repeats, Write};
use crate::report::{ActionReport, ActionResult, CycleReport, DecisionReport, FailedSource, IncidentReport};
use crate::retention;
use crate::state_dir::StateDir;
use crate::store::{Due, Failing, Novelty, Store};
use crate::storm::{self, Admission, UnitSignals};
use crate::suspect::SuspectChange;
use crate::unit::UnitName;

const CURSOR_FILE: &str = "journal.cursor";

/// A journal cursor is a line of about 150 bytes; anything larger is not one.
const MAX_CURSOR_BYTES: u64 = 4096;

/// Everything a cycle needs, kept between cycles.
pub struct Engine {
    config: Config,
    state: StateDir,
    observer: Observer,
    store: Store,
    model: ModelService,
    prompts: Prompts,
    policy: Policy,
    notifier: Option<Notifier>,
    /// Turns true when the daemon is told to stop.
    stop: Option<watch::Receiver<bool>>,
    /// Whether a failed decision waits before it is asked again (the daemon).
    pace: bool,
    /// Whether the model's problems are logged (the daemon) or left to the
    /// caller's report (`macha-check`), so a person reads each once.
    log_model_problems: bool,
    /// Whether the model's check failed at the last cycle.
    model_was_down: bool,
    /// The model passed its check again since the last decision.
    model_back: bool,
    /// The model's problems as last logged, when, and how many times.
    said: Option<Said>,
    /// The journal cursor this engine last saved.
    saved_cursor: Option<String>,
    /// Incident memory (`knowledge_base`); `None` when it is off or its
    /// store could not be opened (decisions go on without it).
    kb: Option<kb::Store>,
    /// The operator's runbooks (`knowledge_base.runbooks`), indexed in
    /// `knowledge.db`; `None` when none are configured or memory is off.
    runbooks: Option<kb::runbook::Runbooks>,
    /// The last switch as last read, and what it was read from (the running
    /// system, the profile's generation and every generation's link).
    last_switch: Option<(SwitchKey, Option<crate::observe::generations::GenerationDiff>)>,
    /// How memory fared when last used, logged when it changes, and since when.
    memory_health: remember::Health,
    memory_since: DateTime<Utc>,
    /// Decisions that were a known fix from memory, since the engine was made.
    from_memory: u64,
    /// The remote host decided for now (`remote_pass`); `None`: this host.
    at: Option<At>,
    /// What each cycle did, counted for Prometheus (`metrics.listen`).
    counters: Option<std::sync::Arc<crate::counters::Counters>>,
    /// The host a unit test puts where systemd is (`act::fake`): what the
    /// gate's facts, storm control's signals and the carrying out reach.
    #[cfg(test)]
    fake: Option<crate::act::fake::FakeHost>,
}

/// The memory store, when memory is on; a store that cannot be opened is
/// logged and left out, and the daemon runs without memory.
fn open_memory(config: &Config, state: &StateDir) -> Option<kb::Store> {
    if !config.knowledge_base.enable {
        return None;
    }
    match kb::Store::open(config, state) {
        Ok(kb) => Some(kb),
        Err(e) => {
            tracing::warn!(error = %e, "incident memory is off: its store cannot be opened");
            None
        }
    }
}

/// The runbook index, when memory is on and a runbooks directory is
/// configured; one that cannot be opened is logged and left out.
fn open_runbooks(config: &Config, state: &StateDir) -> Option<kb::runbook::Runbooks> {
    let dir = config.knowledge_base.runbooks.as_ref().filter(|_| config.knowledge_base.enable)?;
    match kb::runbook::Runbooks::open(state, dir) {
        Ok(runbooks) => Some(runbooks),
        Err(e) => {
            tracing::warn!(error = %e, "runbooks are not used: their index cannot be opened");
            None
        }
    }
}

/// A remote host being decided for, and the units it reported (what the
/// controller's gate and storm control know of them).
struct At {
    host: Rc<dyn Elsewhere>,
    units: Vec<UnitState>,
}

impl At {
    fn unit(&self, name: &str) -> Option<&UnitState> {
        self.units.iter().find(|u| u.id == name || u.names.iter().any(|n| n == name))
    }
}

/// What the controller saw of a remote host: its snapshot and the
/// incidents found in it (fingerprints carrying its name), or why it could
/// not be seen.
pub type Seen = Result<(Snapshot, Vec<Incident>), String>;

/// What a last switch was read from.
type SwitchKey = (Option<String>, Option<u32>, Vec<(u32, String)>);

/// Problems logged, and when they are due to be logged again.
struct Said {
    problems: Vec<String>,
    /// First logged.
    since: DateTime<Utc>,
    /// Last logged.
    at: DateTime<Utc>,
    times: u32,
}

impl Engine {
    /// `state` is the open state directory, `model` the model service (it
    /// reads its key file when made, so it is made first), `notifier` comes
    /// from `notify::setup`; `None` means notifications are off.
    pub fn new(
        config: Config,
        state: StateDir,
        model: ModelService,
        notifier: Option<Notifier>,
    ) -> anyhow::Result<Self> {
        let kb = open_memory(&config, &state);
        let runbooks = open_runbooks(&config, &state);
        Ok(Self {
            observer: Observer::new(&config),
            store: Store::open(&state)?,
            model,
            state,
            prompts: Prompts::load(config.ollama.prompts_dir.as_deref())?,
            policy: Policy::from_config(&config),
            notifier,
            config,
            stop: None,
            pace: false,
            log_model_problems: true,
            model_was_down: false,
            model_back: false,
            said: None,
            saved_cursor: None,
            kb,
            runbooks,
            memory_health: remember::Health::default(),
            memory_since: Utc::now(),
            last_switch: None,
            from_memory: 0,
            at: None,
            counters: None,
            #[cfg(test)]
            fake: None,
        })
    }

    /// From now on an incident whose decision failed is asked about again
    /// only after a wait: `check_interval` after its first failure, doubling
    /// with each further failure in a row, at most `model.retry_max`; and at
    /// once when the model passes its check again after failing it. The
    /// daemon paces its retries so; `macha-check`, run by a person, asks at
    /// once. `macha status` shows when the next try is.
    pub fn pace_retries(&mut self) {
        self.pace = true;
    }

    /// The model's problems are not logged: the caller shows the cycle's
    /// report, which names them (`CycleReport::model_problems`).
    pub fn leave_model_problems_to_the_report(&mut self) {
        self.log_model_problems = false;
    }

    /// From now on, each cycle's report and the model's requests are
    /// counted into `counters` (the daemon's Prometheus exposition).
    pub fn count_into(&mut self, counters: std::sync::Arc<crate::counters::Counters>) {
        self.counters = Some(counters);
    }

    /// From now on, a cycle stops observing and deciding once `stop` turns
    /// true, and ends after the action it carries out, if any.
    pub fn stop_on(&mut self, stop: watch::Receiver<bool>) {
        self.stop = Some(stop);
    }

    /// Records the end of the automatic actions a stopped macha (or this
    /// process, when it could not write) left unrecorded (`ledger`).
    async fn recover(&mut self) {
        let systemd = self.observer.link().await;
        let ledger = Ledger::new(&self.store, &self.state, self.config.retention.audit());
        let said = ledger.recover(&systemd, &self.config).await;
        for line in said {
            tracing::warn!("{line}");
        }
    }

    /// The model service, shared with whoever publishes its status.
    pub fn model(&self) -> &ModelService {
        &self.model
    }

    /// Asks the endpoints about the model at the first cycle (start-up), and
    /// again each cycle while one lacks it or cannot be asked. Returns what is
    /// wrong; decisions are still tried meanwhile (a fallback may answer).
    /// The same problems are logged when they appear, then again after one
    /// `check_interval`, two, four, ... at most every `retention.repeat_every`.
    async fn check_model(&mut self) -> Vec<String> {
        if self.model.readiness().all_ready() {
            return Vec::new();
        }
        let readiness = self.model.check().await;
        let problems = readiness.problems();
        if !self.log_model_problems {
            return problems;
        }
        let now = Utc::now();
        match &mut self.said {
            _ if problems.is_empty() => {
                tracing::info!(model = %self.model.primary(), tools = readiness.supports_tools(), "the model is ready");
                self.said = None;
            }
            Some(said) if said.problems == problems => {
                let every = crate::config::seconds(self.config.check_interval);
                let wait = every
                    .checked_mul(1 << said.times.min(24))
                    .unwrap_or(TimeDelta::MAX)
                    .min(self.config.repeat_every());
                if now.signed_duration_since(said.at) >= wait {
                    for p in &problems {
                        tracing::error!(
                            "{p}; so since {}, checked each cycle",
                            said.since.format("%Y-%m-%d %H:%M:%S UTC")
                        );
                    }
                    said.at = now;
                    said.times += 1;
                }
            }
            _ => {
                for p in &problems {
                    tracing::error!("{p}; macha keeps running and checks the model again next cycle");
                }
                self.said = Some(Said { problems: problems.clone(), since: now, at: now, times: 0 });
            }
        }
        problems
    }

    /// The journal cursor the last cycle saved (where a pass, or the
    /// daemon's journal follower, starts); none when there is none or it
    /// cannot be read (then the look-back window applies).
    pub fn cursor(&self) -> Option<String> {
        match self.state.read(CURSOR_FILE, MAX_CURSOR_BYTES) {
            Ok(c) => c.map(|c| String::from_utf8_lossy(&c).trim().to_owned()).filter(|c| !c.is_empty()),
            Err(e) => {
                tracing::warn!(error = %e, "the journal cursor cannot be read; reading the look-back window");
                None
            }
        }
    }

    /// One whole cycle, as `macha-check` runs it: a full pass, then a
    /// decision on each incident that needs one.
    pub async fn run_cycle(&mut self) -> anyhow::Result<CycleReport> {
        self.recover().await;
        let mut stop = self.stop.clone();
        let Some((model_problems, model_back)) = self.model_state(&mut stop).await else {
            anyhow::bail!("stopped before this cycle observed anything");
        };
        let Some(pass) = self.pass(Scope::Full, None).await? else {
            anyhow::bail!("stopped before this cycle observed anything");
        };
        let Pass { started, started_at, snap, incidents, novelty, resolved, failed_sources } = pass;
        let (reports, asked) = self.decide_all(&mut stop, &snap, &incidents, novelty, model_back).await?;
        let report = CycleReport {
            started_at,
            host: snap.hostname.clone(),
            autonomy_level: self.config.autonomy_level,
            model_problems,
            failed_sources,
            incidents: reports,
            resolved,
            wall_ms: started.elapsed().as_millis() as u64,
        };
        self.after_cycle(&report, asked, crate::counters::Counted::Both).await;
        Ok(report)
    }

    /// Checks the model when it is not known to be ready: its problems, and
    /// whether it is back after failing its check (then failed decisions
    /// are asked at once). `None` when told to stop first.
    async fn model_state(&mut self, stop: &mut Option<watch::Receiver<bool>>) -> Option<(Vec<String>, bool)> {
        let problems = unless_stopped(stop.as_mut(), self.check_model()).await?;
        if self.model_was_down && problems.is_empty() {
            self.model_back = true;
        }
        self.model_was_down = !problems.is_empty();
        Some((problems, std::mem::take(&mut self.model_back)))
    }

    /// Checks the model when it is not known to be ready (the daemon does
    /// at start-up and at each full pass, decisions or not), so that
    /// `macha status` and the log tell a missing model before an incident
    /// needs it. That it came back is kept for the next decision.
    pub async fn check_model_now(&mut self) {
        let mut stop = self.stop.clone();
        if let Some((_, back)) = self.model_state(&mut stop).await {
            self.model_back |= back;
        }
    }

    /// Observes, detects, and records what changed: the incidents opened
    /// and resolved (store, incidents.jsonl), and the journal cursor. The
    /// daemon runs one for each signal that matters (`Scope::Units`) and a
    /// full one every `check_interval`; `restarting` are the units systemd
    /// restarts by itself, as its signals told. `None` when told to stop
    /// first.
    pub async fn pass(&mut self, scope: Scope, restarting: Option<Vec<Restarting>>) -> anyhow::Result<Option<Pass>> {
        let started = Instant::now();
        let started_at = Utc::now();
        let mut stop = self.stop.clone();
        let Some((open, mut snap)) = self.observe(&mut stop, scope).await? else { return Ok(None) };
        snap.restarting = restarting;
        let failed_sources = failed_sources(&snap);
        let incidents = detect(&snap, &open, &self.config.detect);
        let (novelty, resolved) = self.sync_incidents(&incidents, &snap, None)?;
        // Saved by the full passes only: one write (and sync) per check.
        if scope == Scope::Full {
            self.save_cursor(&snap)?;
        }
        Ok(Some(Pass { started, started_at, snap: Rc::new(snap), incidents, novelty, resolved, failed_sources }))
    }

    /// After a pass of the daemon: what it opened and resolved is notified
    /// and counted in the metrics, as a cycle without decisions.
    pub async fn after_pass(&self, pass: &Pass) -> CycleReport {
        let report = CycleReport {
            started_at: pass.started_at,
            host: pass.snap.hostname.clone(),
            autonomy_level: self.config.autonomy_level,
            model_problems: Vec::new(),
            failed_sources: pass.failed_sources.clone(),
            incidents: pass
                .incidents
                .iter()
                .zip(&pass.novelty)
                .map(|(i, n)| IncidentReport {
                    fingerprint: i.fingerprint.clone(),
                    summary: i.summary.clone(),
                    novelty: *n,
                    decision: None,
                })
                .collect(),
            resolved: pass.resolved.clone(),
            wall_ms: pass.started.elapsed().as_millis() as u64,
        };
        self.after_cycle(&report, Asked::default(), crate::counters::Counted::Pass).await;
        report
    }

    /// A remote host's pass, as the controller makes it (`remote`): its
    /// incidents recorded (only its own resolved), each that needs it
    /// decided with its evidence and its probes, its actions asked of it,
    /// and what came of it notified; a host that could not be seen is the
    /// incident `host-unreachable:NAME`, recorded and told, never decided.
    pub async fn remote_pass(&mut self, host: Rc<dyn Elsewhere>, seen: Seen) -> anyhow::Result<CycleReport> {
        let started = Instant::now();
        let started_at = Utc::now();
        let name = host.name().to_owned();
        let (snap, incidents, failed_sources) = match seen {
            Ok((snap, incidents)) => {
                let failed = failed_sources(&snap);
                (snap, incidents, failed)
            }
            Err(why) => {
                let kind = IncidentKind::HostUnreachable { host: name.clone() };
                let fingerprint = kind.fingerprint();
                let unreachable = Incident { fingerprint, kind, summary: why, evidence_key: String::new() };
                // The incident says why; no source is told failed besides.
                (Snapshot::unread(&name, "the host could not be reached"), vec![unreachable], Vec::new())
            }
        };
        let (novelty, resolved) = self.sync_incidents(&incidents, &snap, Some(&name))?;
        let mut stop = self.stop.clone();
        let Some((model_problems, model_back)) = self.model_state(&mut stop).await else {
            anyhow::bail!("stopped before {name} was decided for");
        };
        let units = snap.failed_units.ok().into_iter().chain(snap.watched_units.ok()).flatten().cloned().collect();
        self.at = Some(At { host, units });
        let decided = self.decide_all(&mut stop, &snap, &incidents, novelty, model_back).await;
        self.at = None;
        let (reports, asked) = decided?;
        let report = CycleReport {
            started_at,
            host: name,
            autonomy_level: self.config.autonomy_level,
            model_problems,
            failed_sources,
            incidents: reports,
            resolved,
            wall_ms: started.elapsed().as_millis() as u64,
        };
        self.after_cycle(&report, asked, crate::counters::Counted::Both).await;
        Ok(report)
    }

    /// The name of the host decided for: a remote one's, or this one's.
    fn host_name(&self) -> String {
        match &self.at {
            Some(at) => at.host.name().to_owned(),
            None => crate::observe::hostname(),
        }
    }

    /// Decides one incident a pass recorded, unless it cleared (or was
    /// decided, by `macha-check`) before its turn came: then `None`, and
    /// nothing is asked.
    pub async fn decide_job(&mut self, job: &Job) -> anyhow::Result<Option<CycleReport>> {
        let started = Instant::now();
        let started_at = Utc::now();
        self.recover().await;
        let fp = &job.incident.fingerprint;
        // A changed or flapping incident is decided again at most once per check.
        let recent = Utc::now() - crate::config::seconds(self.config.check_interval);
        match self.store.decision_due(fp, &job.incident.evidence_key, recent)? {
            Due::Yes => {}
            Due::Decided => return Ok(None),
            Due::Later(at) => {
                tracing::debug!(incident = %fp, decided_at = %at, "changed since its last decision; decided again later");
                return Ok(None);
            }
            Due::Gone => {
                tracing::info!(incident = %fp, "not decided: it cleared or changed before its decision started");
                return Ok(None);
            }
        }
        let mut stop = self.stop.clone();
        let Some((model_problems, model_back)) = self.model_state(&mut stop).await else { return Ok(None) };
        let incidents = std::slice::from_ref(&job.incident);
        let (reports, asked) = self.decide_all(&mut stop, &job.snap, incidents, vec![job.novelty], model_back).await?;
        if reports.iter().all(|r| r.decision.is_none()) {
            return Ok(None);
        }
        let report = CycleReport {
            started_at,
            host: job.snap.hostname.clone(),
            autonomy_level: self.config.autonomy_level,
            model_problems,
            failed_sources: Vec::new(),
            incidents: reports,
            resolved: Vec::new(),
            wall_ms: started.elapsed().as_millis() as u64,
        };
        self.after_cycle(&report, asked, crate::counters::Counted::Decisions).await;
        Ok(Some(report))
    }

    /// From now on, passes read the journal's errors from `window`, which
    /// the daemon's journal follower keeps current.
    pub fn follow_journal(&mut self, window: std::sync::Arc<std::sync::Mutex<crate::observe::window::ErrorWindow>>) {
        self.observer.follow_journal(window);
    }

    /// Observes the host from the saved journal cursor, watching the units
    /// of the open incidents; `None` when told to stop first.
    async fn observe(
        &mut self,
        stop: &mut Option<watch::Receiver<bool>>,
        scope: Scope,
    ) -> anyhow::Result<Option<(Vec<OpenIncident>, Snapshot)>> {
        let cursor = self.cursor();
        // The units of open incidents are watched until they are back where they should be.
        let mut open = self.store.open_evidence()?;
        // Remote hosts' incidents are theirs to watch.
        open.retain(|o| o.fingerprint.host().is_none());
        let watch: Vec<UnitName> = open
            .iter()
            .filter_map(|o| crate::detect::unit_of(&o.fingerprint))
            .filter_map(|u| UnitName::parse(u).ok())
            .collect();
        let observing = self.observer.observe(cursor.as_deref(), &watch, scope);
        let Some(mut snap) = unless_stopped(stop.as_mut(), observing).await else {
            return Ok(None);
        };
        // Alertmanager's alerts, as its webhook brought them.
        if self.config.alertmanager.listen.is_some() {
            snap.alerts = match self.store.firing_alerts() {
                Ok(alerts) => Some(alerts),
                Err(e) => {
                    tracing::warn!(error = %e, "the alerts cannot be read; they are neither opened nor resolved now");
                    None
                }
            };
        }
        if let Some(why) = snap.journal.ok().and_then(|j| j.refused_cursor.as_deref()) {
            tracing::warn!(
                "{} {why}: this cycle read the journal of the last {} s instead, and replaces the file with a good cursor",
                self.state.path_of(CURSOR_FILE).display(),
                self.config.check_interval
            );
        }
        Ok(Some((open, snap)))
    }

    /// Brings the store's open incidents in line with those detected, and
    /// records each one opened or resolved. Returns how new each incident
    /// is, and the fingerprints resolved.
    fn sync_incidents(
        &mut self,
        incidents: &[Incident],
        snap: &Snapshot,
        remote: Option<&str>,
    ) -> anyhow::Result<(Vec<Novelty>, Vec<Fingerprint>)> {
        let (novelty, resolved) = self.store.sync_incidents(incidents, snap, remote)?;
        // The generation running, read once when something opened: memory
        // keeps which generations an incident happened in.
        let mut generation = None;
        for (incident, _) in incidents.iter().zip(&novelty).filter(|(_, n)| **n == Novelty::New) {
            tracing::info!(incident = %incident.fingerprint, summary = %incident.summary, "incident opened");
            // A remote host's generations are its own to read.
            let running = remote.is_none().then(|| {
                *generation.get_or_insert_with(|| {
                    let nixos = &self.config.nixos;
                    crate::observe::nixos::read(&nixos.profile, &nixos.current_system)
                        .ok()
                        .and_then(|g| g.running_generation())
                })
            });
            self.record_incident(
                &snap.hostname,
                &incident.fingerprint,
                IncidentEvent::Opened,
                Some(&incident.summary),
                running.flatten(),
            )?;
        }
        for fp in &resolved {
            tracing::info!(incident = %fp, "incident resolved");
            // The failures counted and not recorded yet end with it.
            if let Some(failing) = self.store.failing(fp)? {
                self.record_repeats(&snap.hostname, fp, &failing, Repeating::ended(Some(failing.repeat.clone())))?;
                self.store.set_failing(fp, None)?;
            }
            self.record_incident(&snap.hostname, fp, IncidentEvent::Resolved, None, None)?;
        }
        Ok((novelty, resolved))
    }

    /// Asks the model about each incident that is due, and handles its
    /// answer; the operator's notes are read by these decisions, then
    /// archived.
    async fn decide_all(
        &mut self,
        stop: &mut Option<watch::Receiver<bool>>,
        snap: &Snapshot,
        incidents: &[Incident],
        novelty: Vec<Novelty>,
        model_back: bool,
    ) -> anyhow::Result<(Vec<IncidentReport>, Asked)> {
        let mut reports = Vec::with_capacity(incidents.len());
        let mut asked = Asked::default();
        let notes = crate::note::pending(&self.state);
        let notes_text = crate::note::render(&notes);
        let mut read_for = Vec::new();
        for (incident, novelty) in incidents.iter().zip(novelty) {
            // A stopping daemon decides nothing new: the next start does.
            let stopping = stop.as_ref().is_some_and(|s| *s.borrow());
            let failing = match novelty {
                Novelty::Retry => self.store.failing(&incident.fingerprint)?,
                _ => None,
            };
            let waits = self.waits(&snap.hostname, incident, failing.as_ref(), model_back)?;
            // Nothing in the catalog acts on a host that cannot be reached.
            let undecidable = matches!(incident.kind, IncidentKind::HostUnreachable { .. });
            let decision = if novelty == Novelty::Known || stopping || waits || undecidable {
                None
            } else {
                if failing.is_some() {
                    // Asked again about a failing decision: logged when it ends or changes.
                    tracing::debug!(incident = %incident.fingerprint, "asking the model again");
                } else {
                    tracing::info!(incident = %incident.fingerprint, ?novelty, "asking the model");
                }
                match self.ask(stop, snap, incident, notes_text.as_deref()).await? {
                    None => None,
                    Some((outcome, report)) => {
                        if matches!(outcome, Outcome::Decided { .. }) {
                            read_for.push(incident.fingerprint.as_str());
                        }
                        asked.count(&outcome);
                        Some(report)
                    }
                }
            };
            reports.push(IncidentReport {
                fingerprint: incident.fingerprint.clone(),
                summary: incident.summary.clone(),
                novelty,
                decision,
            });
        }
        if !read_for.is_empty() {
            if let Err(e) = crate::note::archive(&self.state, &notes, &read_for.join(", ")) {
                tracing::error!(error = %e, "operator notes could not be archived; they are read again next time");
            }
        }
        Ok((reports, asked))
    }

    /// Whether a failing decision waits before it is asked again
    /// (`pace_retries`). While it waits, its count of failures is still
    /// recorded at least every `retention.repeat_every`.
    fn waits(
        &self,
        host: &str,
        incident: &Incident,
        failing: Option<&Failing>,
        model_back: bool,
    ) -> anyhow::Result<bool> {
        let waits = failing
            .filter(|_| self.pace && !model_back)
            .map(|f| {
                f.next_try(
                    crate::config::seconds(self.config.check_interval),
                    crate::config::seconds(self.config.model.retry_max),
                )
            })
            .filter(|next| Utc::now() < *next);
        if let (Some(_), Some(mut f)) = (waits, failing.cloned()) {
            // Not asked now, but the count is recorded at least every `retention.repeat_every`.
            if let Some(due) = f.repeat.take_due(Utc::now(), self.config.repeat_every()) {
                self.record_repeats(host, &incident.fingerprint, &f, Some((f.repeat.kind, due)))?;
                self.store.set_failing(&incident.fingerprint, Some(&f))?;
            }
        }
        Ok(waits.is_some())
    }

    /// Asks the model about one incident and handles its answer; `None`
    /// when told to stop before it answers.
    async fn ask(
        &mut self,
        stop: &mut Option<watch::Receiver<bool>>,
        snap: &Snapshot,
        incident: &Incident,
        notes: Option<&str>,
    ) -> anyhow::Result<Option<(Outcome, DecisionReport)>> {
        let asking = self.decide(incident, snap, notes);
        let Some(outcome) = unless_stopped(stop.as_mut(), asking).await else { return Ok(None) };
        let report = self.handle(incident, &snap.hostname, &outcome).await?;
        Ok(Some((outcome, report)))
    }

    /// Saves the journal cursor this cycle read up to, for the next one.
    fn save_cursor(&mut self, snap: &Snapshot) -> anyhow::Result<()> {
        let Some(c) = snap.journal.ok().and_then(|j| j.cursor.as_deref()) else { return Ok(()) };
        // Unchanged (no new error since): no write, no sync.
        if self.saved_cursor.as_deref() == Some(c) {
            return Ok(());
        }
        self.state
            .replace(CURSOR_FILE, c.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot save the journal cursor: {e}"))?;
        self.saved_cursor = Some(c.to_owned());
        Ok(())
    }

    /// Logs the cycle's end, then writes what follows from its report: the
    /// model's counts, the counters (`counted`: what of the report they
    /// take, so that a pass's openings and a decision are each counted
    /// once), the metrics line, the notifications, and the housekeeping
    /// when due.
    async fn after_cycle(&self, report: &CycleReport, asked: Asked, counted: crate::counters::Counted) {
        tracing::info!(
            incidents = report.incidents.len(),
            resolved = report.resolved.len(),
            wall_ms = report.wall_ms,
            "cycle done"
        );
        self.model.write_due_counts();
        if let Some(c) = &self.counters {
            c.cycle(report, counted);
        }
        self.write_metrics(report, asked);
        self.notify(report);
        self.housekeeping().await;
    }

    /// Once an hour (of all macha processes on this state directory, one):
    /// deletes the state database's rows, kept documents and records of
    /// model calls past their age or count (`retention`). A failure is
    /// logged; the cycle's work stands.
    async fn housekeeping(&self) {
        let now = Utc::now();
        match self.store.take_housekeeping(now, retention::HOUSEKEEPING_EVERY) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell whether old records are due to be deleted");
                return;
            }
        }
        match retention::keep(&self.state, &self.store, &self.config, now) {
            Ok(kept) if kept.rows + kept.files > 0 => {
                tracing::info!(rows = kept.rows, files = kept.files, "deleted what is past its retention");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("{e}"),
        }
        self.model.prune_records();
        if let Some(kb) = &self.kb {
            let k = &self.config.knowledge_base;
            let before = now - chrono::TimeDelta::days(k.max_age_days as i64);
            match kb.prune(k.max_memories, before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(memories = n, "forgot incident memories past knowledge_base's limits"),
                Err(e) => tracing::warn!(error = %e, "cannot prune incident memory"),
            }
        }
    }

    /// Appends the cycle's line to `metrics.jsonl`; a failure is logged, the
    /// cycle's work stands.
    fn write_metrics(&self, report: &CycleReport, asked: Asked) {
        let calls = self.model.take_tally();
        if let Some(c) = &self.counters {
            c.model(&calls);
        }
        let line = CycleMetrics {
            time: report.started_at,
            host: self.at.as_ref().map(|at| at.host.name().to_owned()),
            wall_ms: report.wall_ms,
            incidents: report.incidents.len() as u32,
            decisions: asked.decisions,
            from_memory: asked.from_memory,
            failed_decisions: asked.failed,
            parse_failures: asked.invalid_answers,
            tool_rounds: asked.tool_rounds,
            calls,
        };
        let max_bytes = self.config.model.metrics_max_kb.saturating_mul(1024);
        if let Err(e) = metrics::append(&self.state, &line, max_bytes) {
            tracing::warn!(error = %e, "cannot write {}", metrics::METRICS_FILE);
        }
    }

    /// Queues the messages for this cycle and, when due, the daily digest.
    /// A failure here is logged: monitoring goes on without notifications.
    fn notify(&self, report: &CycleReport) {
        let Some(notifier) = &self.notifier else { return };
        let now = Utc::now();
        let result = notifier.after_cycle(report, now).and_then(|()| {
            if notifier.digest_due(report.started_at, now)? {
                let pending = self.store.pending().map(|p| p.len()).unwrap_or_default();
                notifier.send_digest(&self.state, &report.host, pending, now)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "notifications could not be queued");
        }
    }

    fn record_incident(
        &self,
        host: &str,
        fingerprint: &Fingerprint,
        event: IncidentEvent,
        summary: Option<&str>,
        generation: Option<u32>,
    ) -> anyhow::Result<()> {
        let rec = IncidentRecord {
            time: Utc::now(),
            host: host.into(),
            incident: fingerprint.clone(),
            event,
            summary: summary.map(str::to_owned),
            generation,
        };
        Ok(audit::append(&self.state, audit::INCIDENTS, &rec, self.config.retention.audit())?)
    }

    /// Writes the record of `repeats` (failed decisions of `fingerprint`
    /// counted, not recorded), when there are any.
    fn record_repeats(
        &self,
        host: &str,
        fingerprint: &Fingerprint,
        failing: &Failing,
        repeats: Option<(FailureKind, Repeats)>,
    ) -> anyhow::Result<()> {
        let Some((kind, repeats)) = repeats else { return Ok(()) };
        tracing::info!(
            incident = %fingerprint,
            %kind,
            count = repeats.count,
            since = %repeats.first.to_rfc3339(),
            "decisions failed again as before; recorded as one record of repeats"
        );
        let model = &self.model.primary().model;
        let record = DecisionRecord::repeats(host, fingerprint, &failing.summary, model, &failing.error, repeats);
        Ok(audit::append(&self.state, audit::DECISIONS, &record, self.config.retention.audit())?)
    }

    /// Records a decision: a failure that repeats the one before is counted
    /// (`repeat`); the count is recorded before a different failure or an
    /// answer, and at least every `retention.repeat_every`.
    fn record_decision(&self, incident: &Incident, record: &DecisionRecord, outcome: &Outcome) -> anyhow::Result<()> {
        let fp = &incident.fingerprint;
        let before = self.store.failing(fp)?;
        let rotation = self.config.retention.audit();
        let Outcome::Failed { error, kind, .. } = outcome else {
            if let Some(failing) = &before {
                self.record_repeats(&record.host, fp, failing, Repeating::ended(Some(failing.repeat.clone())))?;
                self.store.set_failing(fp, None)?;
            }
            return Ok(audit::append(&self.state, audit::DECISIONS, record, rotation)?);
        };
        let now = record.time;
        let (repeat, write) =
            Repeating::failed(before.as_ref().map(|f| f.repeat.clone()), *kind, now, self.config.repeat_every());
        let failing = Failing {
            summary: incident.summary.clone(),
            repeat,
            error: error.clone(),
            failures: before.as_ref().map_or(1, |f| f.failures.saturating_add(1)),
            since: before.as_ref().map_or(now, |f| f.since),
            last: now,
        };
        match write {
            Write::Record { ended } => {
                if let Some(before) = &before {
                    self.record_repeats(&record.host, fp, before, ended)?;
                }
                tracing::warn!(incident = %fp, %error, "decision failed; the incident stays open");
                audit::append(&self.state, audit::DECISIONS, record, rotation)?;
            }
            Write::Count => {
                tracing::debug!(incident = %fp, %kind, "decision failed again as before; counted");
            }
            Write::Repeats(repeats) => self.record_repeats(&record.host, fp, &failing, Some((*kind, repeats)))?,
        }
        self.store.set_failing(fp, Some(&failing))?;
        Ok(())
    }

    /// Gates, records, and carries out (or queues) what the model proposed.
    async fn handle(&mut self, incident: &Incident, host: &str, outcome: &Outcome) -> anyhow::Result<DecisionReport> {
        let proposed: &[ProposedAction] = match outcome {
            Outcome::Decided { decision, .. } => &decision.actions,
            Outcome::Failed { .. } => &[],
        };
        let from_memory = outcome.trail().from_memory.is_some();
        let suspect_line = outcome.trail().suspect.as_ref().map(SuspectChange::line);
        self.from_memory += u64::from(from_memory);
        let verdicts = self.gate_all(incident, proposed).await;
        self.record_gated(incident, host, outcome, proposed, &verdicts)?;

        let diagnosis = match outcome {
            Outcome::Decided { decision, .. } => Some(decision.diagnosis.clone()),
            Outcome::Failed { .. } => None,
        };
        let mut actions = Vec::with_capacity(proposed.len());
        for (p, verdict) in proposed.iter().zip(verdicts) {
            actions.push(self.handle_action(incident, host, diagnosis.as_deref(), p, verdict).await?);
        }
        let (outcome, error) = match outcome {
            Outcome::Decided { .. } => (DecisionOutcome::Decided, None),
            Outcome::Failed { error, .. } => (DecisionOutcome::Failed, Some(error.clone())),
        };
        let source = from_memory.then_some("memory");
        let suspect = suspect_line;
        Ok(DecisionReport { outcome, source, diagnosis, suspect, error, actions })
    }

    /// The gate's verdict on each proposed action, with what systemd says of
    /// its unit.
    async fn gate_all(&mut self, incident: &Incident, proposed: &[ProposedAction]) -> Vec<Verdict> {
        let mut verdicts = Vec::with_capacity(proposed.len());
        for p in proposed {
            let facts = match p.unit.as_deref() {
                Some(raw) if p.kind.needs_unit() => self.facts(raw).await,
                _ => UnitFacts::Missing,
            };
            verdicts.push(gate(self.config.autonomy_level, p, &facts, incident.kind.unit(), &self.policy));
        }
        verdicts
    }

    /// Records the decision with the gate's verdict on each action, before
    /// anything is carried out, and marks the incident decided.
    fn record_gated(
        &self,
        incident: &Incident,
        host: &str,
        outcome: &Outcome,
        proposed: &[ProposedAction],
        verdicts: &[Verdict],
    ) -> anyhow::Result<()> {
        let gated = proposed.iter().zip(verdicts).map(|(p, v)| GatedAction::new(p, v)).collect();
        // A fix replayed from memory asked no model: its record says so.
        let model = match (outcome.provider(), &outcome.trail().from_memory) {
            (Some(p), _) => p.model.as_str(),
            (None, Some(_)) => "memory",
            (None, None) => self.model.primary().model.as_str(),
        };
        let record = DecisionRecord::new(host, incident, model, outcome, gated);
        self.record_decision(incident, &record, outcome)?;
        self.store.mark_decided(incident, matches!(outcome, Outcome::Decided { .. }))?;
        Ok(())
    }

    /// Follows one verdict of the gate, records what came of it (unless the
    /// ledger did) and reports it.
    async fn handle_action(
        &mut self,
        incident: &Incident,
        host: &str,
        diagnosis: Option<&str>,
        p: &ProposedAction,
        verdict: Verdict,
    ) -> anyhow::Result<ActionReport> {
        let mut rec = ActionRecord {
            time: Utc::now(),
            host: host.into(),
            incident: incident.fingerprint.clone(),
            action: p.kind.as_str().into(),
            target: p.target(),
            origin: Origin::Automatic,
            approval_id: None,
            by: None,
            auto_id: None,
            // Set below, once known.
            outcome: ActionOutcome::Started,
            detail: String::new(),
            before: None,
            after: None,
            health: None,
        };
        let handled = match verdict {
            Verdict::Inform => Handled::new(ActionResult::Informed, p.reason.clone(), None),
            Verdict::Propose { file, diff } => self.propose(incident, p, &file, &diff),
            Verdict::Refuse { reason } => Handled::new(ActionResult::Refused, reason, None),
            Verdict::Queue { action } => self.queue(incident, p, diagnosis, &action)?,
            Verdict::Execute { action } if self.at.is_some() => {
                self.ask_elsewhere(incident, p, diagnosis, &action, &rec).await?
            }
            Verdict::Execute { action } if action.kind() == ActionKind::Investigate => {
                // Read-only: no budget, no cooldown.
                let report = self.carry_out(&action).await;
                Handled::new(ActionResult::of_run(report.succeeded), report.detail, None)
            }
            Verdict::Execute { action } => self.execute(incident, p, diagnosis, &action, &rec).await?,
        };
        let Handled { result, detail, approval_id, recorded } = handled;
        if let (Some(outcome), false) = (result.outcome(), recorded) {
            rec.outcome = outcome;
            rec.detail = detail.clone();
            rec.approval_id = approval_id;
            audit::append(&self.state, audit::ACTIONS, &rec, self.config.retention.audit())?;
        }
        Ok(ActionReport {
            action: p.kind.as_str().into(),
            target: p.target(),
            result,
            detail,
            reason: p.reason.clone(),
            approval_id,
        })
    }

    /// `Verdict::Propose`: writes the proposed change of configuration for
    /// a person to review.
    fn propose(&self, incident: &Incident, p: &ProposedAction, file: &str, diff: &str) -> Handled {
        let dir = self.config.nixos.config_dir.as_deref();
        match propose::write(dir, &self.state, &incident.fingerprint, file, diff, &p.reason) {
            Ok(path) => Handled::new(
                ActionResult::Proposed,
                format!("written to {}: review it, then apply it yourself; macha never does", path.display()),
                None,
            ),
            Err(reason) => Handled::new(ActionResult::Refused, reason, None),
        }
    }

    /// `Verdict::Queue`: queues the action for approval, once.
    fn queue(
        &self,
        incident: &Incident,
        p: &ProposedAction,
        diagnosis: Option<&str>,
        action: &Action,
    ) -> anyhow::Result<Handled> {
        let diag = diagnosis.unwrap_or_default();
        let (id, new) = self.store.enqueue(incident, action, &p.reason, diag, self.approval_ttl())?;
        Ok(if new {
            Handled::new(ActionResult::Queued, format!("run `macha-approve approve {id}` to carry it out"), Some(id))
        } else {
            Handled::new(ActionResult::AlreadyQueued, format!("already waiting for approval as item {id}"), Some(id))
        })
    }

    /// `Verdict::Execute` of an action that changes the system: storm
    /// control admits it, defers it or hands it to a human.
    async fn execute(
        &mut self,
        incident: &Incident,
        p: &ProposedAction,
        diagnosis: Option<&str>,
        action: &Action,
        rec: &ActionRecord,
    ) -> anyhow::Result<Handled> {
        let now = Utc::now();
        if let Some(reason) = self.failed_before(incident, p, now).await {
            return self.escalate(incident, p, diagnosis, action, &reason);
        }
        let history = self.store.auto_history(&incident.fingerprint, now)?;
        let unit_now = self.unit_now(action).await;
        let signals = unit_now
            .as_ref()
            .map(|u| UnitSignals { n_restarts: u.n_restarts, result: u.result.clone() })
            .unwrap_or_default();
        Ok(match storm::admit(&history, &signals, &self.config.act, now) {
            // Told to stop: what runs finishes, nothing new starts.
            Admission::Go if self.stop.as_ref().is_some_and(|s| *s.borrow()) => {
                self.store.mark_decided(incident, false)?;
                tracing::info!(%action, "automatic action not started: macha is stopping");
                let detail = "not acted now because macha is stopping; it decides again when it starts";
                Handled::new(ActionResult::Deferred, detail.to_string(), None)
            }
            Admission::Go => self.begin_and_carry_out(incident, action, rec, now, unit_now.as_ref()).await,
            Admission::Wait(reason) => {
                tracing::info!(%action, %reason, "automatic action deferred");
                Handled::new(ActionResult::Deferred, format!("not acted now because {reason}"), None)
            }
            Admission::Escalate(reason) => self.escalate(incident, p, diagnosis, action, &reason)?,
        })
    }

    /// `Verdict::Execute` for a remote host: a probe is run there; an
    /// action that changes it passes this controller's pause and budget,
    /// then the fleet's limit (`remote.max_hosts_acting`), is recorded as
    /// asked, and is asked of the host, which judges it with its own gate
    /// and storm control. What the host would not do by itself goes to a
    /// person here.
    async fn ask_elsewhere(
        &mut self,
        incident: &Incident,
        p: &ProposedAction,
        diagnosis: Option<&str>,
        action: &Action,
        rec: &ActionRecord,
    ) -> anyhow::Result<Handled> {
        let Some(at) = &self.at else { anyhow::bail!("no remote host is being decided for") };
        let (host, name) = (at.host.clone(), at.host.name().to_owned());
        let on_host = Fingerprint::from(incident.fingerprint.on_host());
        if action.kind() == ActionKind::Investigate {
            return Ok(match host.act(&on_host, action, &p.reason, None).await {
                Ok(acted) => {
                    let report = acted.report(&name);
                    Handled::new(ActionResult::of_run(report.succeeded), report.detail, None)
                }
                Err(why) => Handled::new(ActionResult::Failed, format!("{name} could not be asked: {why}"), None),
            });
        }
        let now = Utc::now();
        let history = self.store.auto_history(&incident.fingerprint, now)?;
        let signals = action
            .unit()
            .and_then(|u| at.unit(u.as_str()))
            .map(|u| UnitSignals { n_restarts: u.n_restarts, result: u.result.clone() })
            .unwrap_or_default();
        match storm::admit(&history, &signals, &self.config.act, now) {
            Admission::Go if self.stop.as_ref().is_some_and(|s| *s.borrow()) => {
                self.store.mark_decided(incident, false)?;
                let detail = "not asked now because macha is stopping; it decides again when it starts";
                return Ok(Handled::new(ActionResult::Deferred, detail.to_string(), None));
            }
            Admission::Go => {}
            Admission::Wait(reason) => {
                return Ok(Handled::new(ActionResult::Deferred, format!("not asked now because {reason}"), None));
            }
            Admission::Escalate(reason) => return self.escalate(incident, p, diagnosis, action, &reason),
        }
        let r = &self.config.remote;
        let since = now - crate::config::seconds(r.acting_window);
        let fp = &incident.fingerprint;
        let place = match self.store.claim_fleet_act(
            &name,
            fp,
            action.kind().as_str(),
            now,
            since,
            r.max_hosts_acting,
        )? {
            Ok(place) => place,
            Err(acted) => {
                let acted = if acted.is_empty() { "none may be".to_owned() } else { acted.join(", ") };
                let reason = format!(
                    "at most {} host(s) are acted on automatically within {} s (remote.max_hosts_acting), and {acted} already were",
                    r.max_hosts_acting, r.acting_window
                );
                return self.escalate(incident, p, diagnosis, action, &reason);
            }
        };
        // Recorded before it is asked: never an action without its record first.
        let asked = ActionRecord { detail: format!("asking {name} to carry out {action}"), ..rec.clone() };
        audit::append(&self.state, audit::ACTIONS, &asked, self.config.retention.audit())?;
        let acted = match host.act(&on_host, action, &p.reason, None).await {
            Ok(acted) => acted,
            Err(why) => {
                tracing::warn!(host = %name, %action, %why, "a remote host could not be asked");
                return Ok(Handled::new(ActionResult::Failed, format!("{name} could not be asked: {why}"), None));
            }
        };
        let report = acted.report(&name);
        tracing::info!(host = %name, %action, outcome = ?acted.outcome, detail = %report.detail, "asked of a remote host");
        if acted.outcome != ActedOutcome::Executed {
            // Not acted on: the place in the fleet's limit is given back.
            self.store.release_fleet_act(place)?;
        }
        Ok(match acted.outcome {
            ActedOutcome::Executed => Handled::new(ActionResult::of_run(report.succeeded), report.detail, None),
            ActedOutcome::Refused => Handled::new(ActionResult::Refused, report.detail, None),
            ActedOutcome::NeedsApproval => self.escalate(incident, p, diagnosis, action, &report.detail)?,
        })
    }

    /// Why memory says this automatic action must go to a human
    /// (`gate::failed_before`); `None` when it may run, or memory is off or
    /// cannot be read (storm control still applies).
    async fn failed_before(&mut self, incident: &Incident, p: &ProposedAction, now: DateTime<Utc>) -> Option<String> {
        let kb = self.kb.as_ref()?;
        let days = self.config.knowledge_base.failed_fix_days;
        if days == 0 {
            return None;
        }
        let caught = remember::catch_up(&self.state, kb, Some(&self.model)).await;
        let own = kb::id_of(&self.host_name(), &incident.fingerprint);
        let loaded = kb.load(std::slice::from_ref(&own)).await;
        self.note_memory(match &caught {
            Ok(c) => c.unembedded.as_ref().map(|e| remember::Health::TextAlone(e.to_string())).unwrap_or_default(),
            Err(e) => remember::Health::Unavailable(e.to_string()),
        });
        let memory = match loaded {
            Ok(mut found) => found.pop(),
            Err(e) => {
                tracing::warn!(error = %e, "incident memory unavailable; the action is judged without it");
                return None;
            }
        };
        crate::gate::failed_before(memory.as_ref(), p.kind, p.target().as_deref(), now, days)
    }

    /// Logs how memory fares when that changed since it was last said.
    fn note_memory(&mut self, now: remember::Health) {
        if now == self.memory_health {
            return;
        }
        match &now {
            remember::Health::Working => tracing::info!("incident memory works again, with embeddings"),
            remember::Health::TextAlone(why) => {
                tracing::warn!(error = %why, "incident memory goes on with full text alone, without embeddings");
            }
            remember::Health::Unavailable(why) => {
                tracing::warn!(error = %why, "incident memory unavailable; decisions go on without it, the trail's records wait");
            }
        }
        self.memory_health = now;
        self.memory_since = Utc::now();
    }

    /// How memory fares, for `macha status`; `None` when it is off.
    pub fn memory_status(&self) -> Option<crate::model::status::MemoryStatus> {
        self.kb.as_ref()?;
        let (state, why) = match &self.memory_health {
            remember::Health::Working => ("working", None),
            remember::Health::TextAlone(why) => ("text-alone", Some(why.clone())),
            remember::Health::Unavailable(why) => ("unavailable", Some(why.clone())),
        };
        let backend = match self.config.knowledge_base.backend {
            crate::config::KbBackend::Embedded => "embedded",
            crate::config::KbBackend::Chroma => "chroma",
        };
        Some(crate::model::status::MemoryStatus {
            backend: backend.to_owned(),
            state: state.to_owned(),
            why,
            since: self.memory_since,
            from_memory: self.from_memory,
        })
    }

    /// An admitted automatic action: the ledger records it as started, then
    /// it is carried out and its end recorded.
    async fn begin_and_carry_out(
        &mut self,
        incident: &Incident,
        action: &Action,
        rec: &ActionRecord,
        now: DateTime<Utc>,
        unit_now: Option<&UnitState>,
    ) -> Handled {
        let started = ActionRecord {
            detail: format!("carrying out {action}"),
            before: unit_now.map(|u| act::Observed::Unit(u.into())),
            ..rec.clone()
        };
        let begun = Ledger::new(&self.store, &self.state, self.config.retention.audit()).begin(
            &incident.fingerprint,
            now,
            action,
            &started,
        );
        let mut handled = match begun {
            Err(why) => {
                tracing::error!(%action, %why, "automatic action not carried out");
                Handled::new(ActionResult::Refused, why, None)
            }
            Ok(id) => {
                let report = self.carry_out_recorded(action, rec, id).await;
                // A change whose revert failed waits for a human.
                let result = if report.revert_failed() {
                    ActionResult::Escalated
                } else {
                    ActionResult::of_run(report.succeeded)
                };
                tracing::info!(%action, %result, detail = %report.detail, "action carried out");
                Handled::new(result, report.detail, None)
            }
        };
        // An automatic action records itself (`ledger`), before and after.
        handled.recorded = true;
        handled
    }

    /// Storm control would not let it run automatically: it is queued for a
    /// human instead.
    fn escalate(
        &self,
        incident: &Incident,
        p: &ProposedAction,
        diagnosis: Option<&str>,
        action: &Action,
        reason: &str,
    ) -> anyhow::Result<Handled> {
        let diag = diagnosis.unwrap_or_default();
        let (id, new) = self.store.enqueue(incident, action, &p.reason, diag, self.approval_ttl())?;
        tracing::warn!(%action, %reason, approval = id.get(), "handed to a human");
        let detail =
            format!("not acted automatically because {reason}; run `macha-approve approve {id}` to carry it out");
        let result = if new { ActionResult::Escalated } else { ActionResult::AlreadyQueued };
        Ok(Handled::new(result, detail, Some(id)))
    }

    /// Asks the model about one incident, offering the read-only probes as
    /// tools, except at `observe`, where nothing is run, probes included (the
    /// decision is single-shot).
    async fn decide(&mut self, incident: &Incident, snap: &Snapshot, notes: Option<&str>) -> Outcome {
        // A remote host's generations are not read from here.
        let suspect = if self.at.is_none() { self.suspect(incident, snap) } else { None };
        let (history, own) = self.recall(incident, snap).await;
        let known_fix_after = self.config.knowledge_base.known_fix_after;
        if let Some(outcome) = own.as_ref().and_then(|m| decide::from_memory(m, known_fix_after)) {
            tracing::info!(incident = %incident.fingerprint, "a known fix from incident memory; the model is not asked");
            return decide::linked(outcome, incident, suspect.as_ref());
        }
        let context = decide::Context { notes, history: history.as_ref(), suspect: suspect.as_ref() };
        let mut outcome = if self.config.autonomy_level == AutonomyLevel::Observe {
            decide::decide(&self.model, &self.prompts, incident, snap, context, None).await
        } else if let Some(at) = &self.at {
            // Its probes run there.
            let host = at.host.clone();
            decide::decide(&self.model, &self.prompts, incident, snap, context, Some(host.toolbox())).await
        } else {
            let host = HostTools { systemd: self.observer.link().await, config: &self.config };
            decide::decide(&self.model, &self.prompts, incident, snap, context, Some(&host)).await
        };
        outcome.trail_mut().memory_note = match &self.memory_health {
            _ if self.kb.is_none() => None,
            remember::Health::Working => None,
            remember::Health::TextAlone(why) => Some(format!("memory searched by words alone: {why}")),
            remember::Health::Unavailable(why) => Some(format!("decided without incident memory: {why}")),
        };
        outcome
    }

    /// The incident's link to the last NixOS switch, if the switch is a
    /// suspect (`suspect::link`). The generations are read each time (the
    /// profile's links), the units of the two compared only when they
    /// changed. A failed unit's incident began when the unit failed
    /// (`InactiveEnterTimestamp`), a restart loop's when the restarts began;
    /// any other, at the latest, when this snapshot saw it.
    fn suspect(&mut self, incident: &Incident, snap: &Snapshot) -> Option<SuspectChange> {
        let nixos = &self.config.nixos;
        let generations = crate::observe::nixos::read(&nixos.profile, &nixos.current_system).ok()?;
        let key: Vec<(u32, String)> = generations.list.iter().map(|g| (g.number, g.target.clone())).collect();
        let key = (generations.running.clone(), generations.profile, key);
        if self.last_switch.as_ref().is_none_or(|(k, _)| *k != key) {
            let diff = crate::observe::generations::last_switch_of(&generations, &nixos.current_system);
            self.last_switch = Some((key, diff));
        }
        let diff = self.last_switch.as_ref()?.1.as_ref()?;
        let window = chrono::TimeDelta::hours(nixos.suspect_window_hours as i64);
        let nearby = chrono::TimeDelta::minutes(nixos.suspect_nearby_minutes as i64);
        let began = match &incident.kind {
            IncidentKind::UnitFailed { unit } => {
                let mut units = snap.failed_units.ok().into_iter().flatten();
                units.find(|u| u.id == *unit).and_then(|u| u.inactive_enter_timestamp)
            }
            IncidentKind::RestartLoop { unit } => {
                snap.restarting.iter().flatten().find(|r| r.unit == *unit).map(|r| r.since)
            }
            _ => None,
        };
        crate::suspect::link(incident, diff, began.unwrap_or(snap.taken_at), window, nearby)
    }

    /// The past incidents nearest to this one, and the runbook sections,
    /// within the share of the input budget memory may take: its own
    /// history first. Memory first takes in what the audit trail recorded
    /// since it last looked, and the runbooks what changed. A store that
    /// fails is said in the log, and the decision goes on without it.
    /// Also returns the incident's own memory, for a known fix.
    async fn recall(&mut self, incident: &Incident, snap: &Snapshot) -> (Option<kb::Recalled>, Option<kb::Memory>) {
        if self.kb.is_none() && self.runbooks.is_none() {
            return (None, None);
        }
        let limit = self.config.knowledge_base.recall as usize;
        let query = decide::prompt::memory_query(incident, snap, kb::MAX_EVIDENCE_CHARS);
        let caught = match self.kb.as_ref() {
            Some(kb) => Some(remember::catch_up(&self.state, kb, Some(&self.model)).await),
            None => None,
        };
        let runbooks_embedded = match self.runbooks.as_ref() {
            Some(runbooks) => remember::sync_runbooks(runbooks, Some(&self.model)).await,
            None => Ok(None),
        };
        // The model that just failed to embed the memories is not asked again.
        let mut unembedded = match (&caught, &runbooks_embedded) {
            (Some(Ok(c)), _) if c.unembedded.is_some() => c.unembedded.clone(),
            (_, Ok(Some(e))) => Some(e.clone()),
            _ => None,
        };
        let vector = match &unembedded {
            Some(_) => None,
            None => match self.model.embed(std::slice::from_ref(&query)).await {
                Ok(mut embeddings) => embeddings.vectors.pop(),
                Err(e) => {
                    unembedded = Some(e);
                    None
                }
            },
        };
        let sections = match (self.runbooks.as_ref(), runbooks_embedded) {
            (Some(runbooks), Ok(_)) => match runbooks.search(&query, vector.as_deref(), limit) {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(error = %e, "deciding without the runbooks: their index cannot be searched");
                    Vec::new()
                }
            },
            (Some(_), Err(e)) => {
                tracing::warn!(error = %e, "deciding without the runbooks: they cannot be indexed");
                Vec::new()
            }
            (None, _) => Vec::new(),
        };
        let found = match (self.kb.as_ref(), caught) {
            (Some(kb), Some(Ok(_))) => {
                self.memories(kb, incident, snap, &query, vector.as_deref(), unembedded.clone(), limit).await
            }
            (_, Some(Err(e))) => Err(e),
            _ => Ok((Vec::new(), unembedded.clone())),
        };
        let share = self.model.input_budget() * self.config.knowledge_base.prompt_share_percent as usize / 100;
        match found {
            Ok((mut hits, unembedded)) => {
                self.note_memory(unembedded.map(|e| remember::Health::TextAlone(e.to_string())).unwrap_or_default());
                let own = hits.first().filter(|h| h.score.is_infinite()).map(|h| h.memory.clone());
                hits.truncate(limit);
                (kb::recall(&hits, &sections, share, decide::tokens::estimate_tokens), own)
            }
            Err(e) => {
                tracing::debug!(incident = %incident.fingerprint, error = %e, "deciding without incident memory");
                self.note_memory(remember::Health::Unavailable(e.to_string()));
                (kb::recall(&[], &sections, share, decide::tokens::estimate_tokens), None)
            }
        }
    }

    /// The incident's own memory (with its history) first, then the
    /// memories nearest to `query`, at most `limit` in all; with why they
    /// were searched without embeddings, if they were.
    #[allow(clippy::too_many_arguments)]
    async fn memories(
        &self,
        kb: &kb::Store,
        incident: &Incident,
        snap: &Snapshot,
        query: &str,
        vector: Option<&[f32]>,
        unembedded: Option<crate::model::EmbedError>,
        limit: usize,
    ) -> Result<(Vec<kb::Hit>, Option<crate::model::EmbedError>), remember::RememberError> {
        let own = kb::id_of(&snap.hostname, &incident.fingerprint);
        let mut hits = kb
            .load(std::slice::from_ref(&own))
            .await?
            .into_iter()
            .filter(kb::Memory::has_history)
            .map(|memory| kb::Hit { memory, score: f64::INFINITY })
            .collect::<Vec<_>>();
        let found = match (kb.search(query, vector, limit.max(1)).await, unembedded) {
            (Ok(found), unembedded) => (found, unembedded),
            (Err(kb::KbError::NeedsEmbeddings { .. }), Some(source)) => {
                return Err(remember::RememberError::Unembedded { source })
            }
            (Err(e), _) => return Err(e.into()),
        };
        for hit in found.0 {
            if hits.len() < limit.max(1) && hit.memory.id() != own {
                hits.push(hit);
            }
        }
        Ok((hits, found.1))
    }

    fn approval_ttl(&self) -> chrono::Duration {
        self.config.act.approval_ttl()
    }

    async fn carry_out(&mut self, action: &Action) -> act::Report {
        let open = self.store.open_incidents().map_err(|e| e.to_string());
        act::execute(&self.observer.link().await, action, &self.config, open).await
    }

    /// Carries out an automatic action the ledger recorded as started
    /// (`id`), and records its end (`carry`).
    async fn carry_out_recorded(&mut self, action: &Action, rec: &ActionRecord, id: i64) -> act::Report {
        let books = Books { config: &self.config, state: &self.state, store: &self.store };
        let keep = Bookkeeping::Automatic(id);
        // Never an error: what the trail refuses, the ledger keeps.
        #[cfg(test)]
        if let Some(fake) = &self.fake {
            return carry::carry_out(&books, fake, action, rec, keep).await.0;
        }
        let (report, _) = carry::carry_out(&books, &self.observer.link().await, action, rec, keep).await;
        report
    }

    /// The state of the unit `action` names, right now, when it can be read.
    async fn unit_now(&mut self, action: &Action) -> Option<UnitState> {
        #[cfg(test)]
        if let (Some(fake), Some(unit)) = (&self.fake, action.unit()) {
            return fake.unit_state(unit).await.ok().flatten();
        }
        match (action.unit(), self.observer.systemd().await) {
            (Some(unit), Ok(s)) => s.unit_state(unit).await.ok().flatten(),
            _ => None,
        }
    }

    async fn facts(&mut self, raw: &str) -> UnitFacts {
        let Ok(name) = UnitName::parse(raw) else {
            // The gate refuses it on the name alone.
            return UnitFacts::Missing;
        };
        if let Some(at) = &self.at {
            // What the host reported; the host's own gate judges it again.
            return match at.unit(name.as_str()) {
                Some(s) => known(s.clone()),
                None => UnitFacts::Unknown(format!("{} reported nothing of {name}", at.host.name())),
            };
        }
        #[cfg(test)]
        if let Some(fake) = &self.fake {
            return unit_facts(fake, &name).await;
        }
        match self.observer.systemd().await {
            Ok(s) => unit_facts(s, &name).await,
            Err(e) => UnitFacts::Unknown(e.to_string()),
        }
    }
}

/// Runs `work` unless `stop` turns true first (`None` then). Without a
/// `stop`, it runs to its end.
async fn unless_stopped<T>(stop: Option<&mut watch::Receiver<bool>>, work: impl Future<Output = T>) -> Option<T> {
    let Some(stop) = stop else { return Some(work.await) };
    tokio::select! {
        out = work => Some(out),
        Ok(_) = stop.wait_for(|stopping| *stopping) => None,
    }
}

/// The sources of a snapshot that could not be read, each logged.
fn failed_sources(snap: &Snapshot) -> Vec<FailedSource> {
    let failed: Vec<FailedSource> = snap
        .failed_sources()
        .into_iter()
        .map(|(source, error)| FailedSource { source: source.into(), error: error.into() })
        .collect();
    for f in &failed {
        tracing::warn!(source = %f.source, error = %f.error, "source could not be read");
    }
    failed
}

/// What came of one verdict of the gate, for its record and its report.
struct Handled {
    result: ActionResult,
    detail: String,
    approval_id: Option<ApprovalId>,
    /// Whether the ledger recorded it already (an automatic action records
    /// itself, before and after).
    recorded: bool,
}

impl Handled {
    fn new(result: ActionResult, detail: String, approval_id: Option<ApprovalId>) -> Self {
        Self { result, detail, approval_id, recorded: false }
    }
}

/// What one pass saw and recorded.
pub struct Pass {
    started: Instant,
    started_at: DateTime<Utc>,
    pub snap: Rc<Snapshot>,
    pub incidents: Vec<Incident>,
    /// How new each incident is, in the same order.
    pub novelty: Vec<Novelty>,
    pub resolved: Vec<Fingerprint>,
    failed_sources: Vec<FailedSource>,
}

impl Job {
    /// How `macha status` shows it.
    pub fn waiting(&self) -> crate::model::status::Waiting {
        crate::model::status::Waiting { incident: self.incident.fingerprint.to_string(), since: self.snap.taken_at }
    }
}

impl Pass {
    /// The decisions this pass calls for: each incident that is new,
    /// changed, or whose last decision failed, with what the pass saw.
    pub fn jobs(&self) -> Vec<Job> {
        self.incidents
            .iter()
            .zip(&self.novelty)
            .filter(|(_, n)| **n != Novelty::Known)
            .map(|(incident, novelty)| Job { incident: incident.clone(), novelty: *novelty, snap: self.snap.clone() })
            .collect()
    }
}

/// An incident waiting for its decision, with the snapshot that saw it.
#[derive(Clone)]
pub struct Job {
    pub incident: Incident,
    pub novelty: Novelty,
    pub snap: Rc<Snapshot>,
}

/// The decisions of one cycle, for its metrics line.
#[derive(Debug, Default, Clone, Copy)]
struct Asked {
    decisions: u32,
    from_memory: u32,
    failed: u32,
    invalid_answers: u32,
    tool_rounds: u32,
}

impl Asked {
    fn count(&mut self, outcome: &Outcome) {
        self.decisions += 1;
        self.from_memory += u32::from(outcome.trail().from_memory.is_some());
        self.failed += u32::from(matches!(outcome, Outcome::Failed { .. }));
        self.invalid_answers += outcome.invalid_answers();
        self.tool_rounds += outcome.trail().tool_rounds;
    }
}

/// Asks systemd what the gate needs to know about `name`.
pub async fn unit_facts(systemd: &impl ReadUnits, name: &UnitName) -> UnitFacts {
    match systemd.unit_state(name).await {
        Ok(Some(s)) => known(s),
        Ok(None) => UnitFacts::Missing,
        Err(e) => UnitFacts::Unknown(e.to_string()),
    }
}

fn known(s: UnitState) -> UnitFacts {
    UnitFacts::Exists(Known {
        id: s.id,
        names: s.names,
        refuse_manual_stop: s.refuse_manual_stop,
        success_action: s.success_action,
        failure_action: s.failure_action,
    })
}

#[cfg(test)]
mod tests {
    //! The cycle's handling of each gate verdict, with no systemd to reach
    //! (a bus address that does not exist): what it needs of the host then
    //! is only the reason it cannot be reached; or with a fake host in its
    //! place (`Engine::fake`), for an action that runs.

    use serde_json::Value;

    use super::*;
    use crate::config::Api;
    use crate::decide::{Decision, Severity, Trail};
    use crate::detect::IncidentKind;
    use crate::model::provider::{Endpoint, ProviderInfo};

    struct Setup {
        _dir: tempfile::TempDir,
        engine: Engine,
        incident: Incident,
    }

    impl Setup {
        fn new(level: AutonomyLevel) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut config = crate::act::fake::config(dir.path(), 0);
            config.autonomy_level = level;
            config.dbus_address = Some(format!("unix:path={}", dir.path().join("no-bus").display()));
            let state = StateDir::open(&config.state_dir).unwrap();
            let model = ModelService::new(&config).unwrap();
            let engine = Engine::new(config, state, model, None).unwrap();
            let kind = IncidentKind::DiskFull { mount: "/".into() };
            let incident = Incident {
                fingerprint: kind.fingerprint(),
                kind,
                summary: "/ is 97% full".into(),
                evidence_key: "97".into(),
            };
            Self { _dir: dir, engine, incident }
        }

        /// The cycle's handling of a decision that proposes `proposed`.
        async fn handle(&mut self, proposed: ProposedAction) -> ActionReport {
            let outcome = Outcome::Decided {
                decision: Decision {
                    diagnosis: "the disk is full".into(),
                    severity: Severity::Warning,
                    actions: vec![proposed],
                },
                attempts: 1,
                prompt_tokens: 0,
                answer_tokens: 0,
                wall_ms: 0,
                provider: Some(ProviderInfo {
                    endpoint: Endpoint::Primary,
                    api: Api::Ollama,
                    url: "http://127.0.0.1:9".into(),
                    model: "test".into(),
                }),
                trail: Trail::default(),
            };
            let incident = self.incident.clone();
            let mut report = self.engine.handle(&incident, "testhost", &outcome).await.unwrap();
            assert_eq!(report.actions.len(), 1);
            report.actions.remove(0)
        }

        /// The records of `actions.jsonl`, oldest first.
        fn trail(&self) -> Vec<Value> {
            audit::read_all(&self.engine.state, audit::ACTIONS).unwrap().0
        }
    }

    /// A remote host that answers each action asked of it with the next
    /// of `answers`, and records what it was asked.
    struct FakeRemote {
        answers: std::cell::RefCell<Vec<Result<crate::elsewhere::Acted, String>>>,
        asked: std::cell::RefCell<Vec<(String, String, Option<crate::elsewhere::Approval>)>>,
    }

    impl crate::decide::tools::Toolbox for FakeRemote {
        fn tools(&self) -> Vec<crate::model::Tool> {
            Vec::new()
        }
        fn call<'a>(&'a self, _: &'a str, _: &'a Value) -> crate::decide::tools::ToolFuture<'a> {
            Box::pin(async { Ok(String::new()) })
        }
    }

    impl Elsewhere for FakeRemote {
        fn name(&self) -> &str {
            "h2"
        }
        fn toolbox(&self) -> &dyn crate::decide::tools::Toolbox {
            self
        }
        fn act<'a>(
            &'a self,
            incident: &'a Fingerprint,
            action: &'a Action,
            _: &'a str,
            approval: Option<crate::elsewhere::Approval>,
        ) -> crate::elsewhere::Asking<'a> {
            self.asked.borrow_mut().push((incident.to_string(), action.to_string(), approval));
            let answer = self.answers.borrow_mut().remove(0);
            Box::pin(async move { answer })
        }
    }

    fn acted(outcome: ActedOutcome, detail: &str) -> Result<crate::elsewhere::Acted, String> {
        Ok(crate::elsewhere::Acted {
            outcome,
            action: Some("restart web.service".into()),
            succeeded: outcome == ActedOutcome::Executed,
            detail: detail.into(),
            before: None,
            after: None,
        })
    }

    /// `Setup` deciding for remote host h2, whose web.service failed, at
    /// auto-safe; `answers` are h2's.
    fn on_h2(answers: Vec<Result<crate::elsewhere::Acted, String>>) -> (Setup, Rc<FakeRemote>) {
        let mut s = Setup::new(AutonomyLevel::AutoSafe);
        let kind = IncidentKind::UnitFailed { unit: "web.service".into() };
        s.incident = Incident {
            fingerprint: Fingerprint::of_host("h2", &kind.fingerprint()),
            kind,
            summary: "web.service failed".into(),
            evidence_key: "1/0".into(),
        };
        let remote = Rc::new(FakeRemote { answers: answers.into(), asked: Default::default() });
        let web = crate::act::fake::unit("web.service", "failed", "failed", "exit-code", "i", 1);
        s.engine.at = Some(At { host: remote.clone(), units: vec![web] });
        (s, remote)
    }

    fn restart_web() -> ProposedAction {
        ProposedAction::new(ActionKind::RestartUnit, Some("web.service"), "restart it")
    }

    #[tokio::test]
    async fn a_remote_hosts_action_is_asked_of_it_and_its_answer_kept() {
        let (mut s, remote) = on_h2(vec![acted(ActedOutcome::Executed, "web.service restarted")]);
        let report = s.handle(restart_web()).await;
        assert_eq!((report.result, report.detail.as_str()), (ActionResult::Executed, "on h2: web.service restarted"));
        let asked = remote.asked.borrow();
        assert_eq!(asked[0], ("unit-failed:web.service".into(), "restart_unit web.service".into(), None));
        let trail = s.trail();
        let outcomes: Vec<_> =
            trail.iter().map(|r| (r["outcome"].as_str().unwrap(), r["host"].as_str().unwrap())).collect();
        assert_eq!(outcomes, [("started", "testhost"), ("succeeded", "testhost")]);
        assert!(trail[0]["detail"].as_str().unwrap().starts_with("asking h2 to carry out restart_unit web.service"));
    }

    #[tokio::test]
    async fn what_a_remote_host_will_not_do_by_itself_goes_to_a_person_here_and_takes_no_place() {
        let (mut s, _) = on_h2(vec![
            acted(ActedOutcome::NeedsApproval, "this host's autonomy level (suggest) does not carry it out by itself"),
            acted(ActedOutcome::Refused, "not acted because web.service is protected"),
            Err("cannot connect to 127.0.0.3:22".into()),
        ]);
        let report = s.handle(restart_web()).await;
        assert_eq!(report.result, ActionResult::Escalated);
        assert!(
            report.detail.contains("not carried out by h2: this host's autonomy level (suggest)"),
            "{}",
            report.detail
        );
        assert!(report.approval_id.is_some());
        // Neither the one left to a person nor a refusal counts as acted on.
        let now = Utc::now();
        let other = Fingerprint::from("h3/unit-failed:web.service");
        let free =
            s.engine.store.claim_fleet_act("h3", &other, "restart_unit", now, now - TimeDelta::hours(1), 1).unwrap();
        s.engine.store.release_fleet_act(free.unwrap()).unwrap();
        let report = s.handle(restart_web()).await;
        assert_eq!(
            (report.result, report.detail.as_str()),
            (ActionResult::Refused, "refused by h2: not acted because web.service is protected")
        );
        let report = s.handle(restart_web()).await;
        assert_eq!(report.result, ActionResult::Failed);
        assert_eq!(report.detail, "h2 could not be asked: cannot connect to 127.0.0.3:22");
    }

    #[tokio::test]
    async fn a_host_that_cannot_be_reached_is_recorded_and_never_decided() {
        let mut s = Setup::new(AutonomyLevel::AutoSafe);
        let remote = Rc::new(FakeRemote { answers: Vec::new().into(), asked: Default::default() });
        let report = s.engine.remote_pass(remote.clone(), Err("cannot connect to 127.0.0.3:22".into())).await.unwrap();
        assert_eq!(report.host, "h2");
        assert_eq!(report.incidents.len(), 1);
        assert_eq!(report.incidents[0].fingerprint, "host-unreachable:h2");
        assert!(report.incidents[0].decision.is_none(), "nothing in the catalog acts on a host that cannot be reached");
        assert_eq!(report.incidents[0].summary, "cannot connect to 127.0.0.3:22");
        assert!(remote.asked.borrow().is_empty());
        let open = s.engine.store.open_incidents().unwrap();
        assert_eq!(open, [(Fingerprint::from("host-unreachable:h2"), "cannot connect to 127.0.0.3:22".to_owned())]);
        let incidents = audit::read_all(&s.engine.state, audit::INCIDENTS).unwrap().0;
        assert_eq!((incidents[0]["host"].as_str(), incidents[0]["event"].as_str()), (Some("h2"), Some("opened")));
    }

    fn gc() -> ProposedAction {
        ProposedAction {
            older_than_days: Some(30),
            ..ProposedAction::new(ActionKind::CollectGarbage, None, "free space")
        }
    }

    #[tokio::test]
    async fn inform_is_reported_and_leaves_no_action_record() {
        let mut s = Setup::new(AutonomyLevel::AutoSafe);
        let report = s.handle(ProposedAction::new(ActionKind::NotifyOnly, None, "tell a human")).await;
        assert_eq!(report.result, ActionResult::Informed);
        assert_eq!(report.detail, "tell a human");
        assert!(s.trail().is_empty());
    }

    #[tokio::test]
    async fn refuse_is_recorded_with_its_reason() {
        let mut s = Setup::new(AutonomyLevel::Observe);
        let report = s.handle(gc()).await;
        assert_eq!(report.result, ActionResult::Refused);
        assert!(report.detail.starts_with("not acted because the autonomy level is observe"), "{}", report.detail);
        let trail = s.trail();
        assert_eq!(trail.len(), 1);
        assert_eq!(trail[0]["outcome"], "refused");
        assert_eq!(trail[0]["detail"], report.detail.as_str());
    }

    #[tokio::test]
    async fn queue_enqueues_once_and_says_so_the_second_time() {
        let mut s = Setup::new(AutonomyLevel::Suggest);
        let first = s.handle(gc()).await;
        assert_eq!(first.result, ActionResult::Queued);
        let id = first.approval_id.expect("an approval id");
        assert_eq!(first.detail, format!("run `macha-approve approve {id}` to carry it out"));
        let again = s.handle(gc()).await;
        assert_eq!(again.result, ActionResult::AlreadyQueued);
        assert_eq!(again.approval_id, Some(id));
        let pending = s.engine.store.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].diagnosis, "the disk is full");
        let outcomes: Vec<_> = s.trail().iter().map(|r| r["outcome"].clone()).collect();
        assert_eq!(outcomes, ["queued", "already_queued"]);
    }

    #[tokio::test]
    async fn execute_is_counted_recorded_and_ends_failed_without_systemd_then_escalates() {
        let mut s = Setup::new(AutonomyLevel::AutoSafe);
        let report = s.handle(gc()).await;
        assert_eq!(report.result, ActionResult::Failed);
        assert!(report.detail.starts_with("cannot connect to D-Bus at unix:path="), "{}", report.detail);
        assert_eq!(report.approval_id, None);
        let trail = s.trail();
        assert_eq!(trail.len(), 2, "{trail:?}");
        assert_eq!(trail[0]["outcome"], "started");
        assert_eq!(trail[1]["outcome"], "failed");
        assert_eq!(trail[0]["auto_id"], trail[1]["auto_id"]);
        // The same again: storm control hands it to a human.
        let again = s.handle(gc()).await;
        assert_eq!(again.result, ActionResult::Escalated);
        let id = again.approval_id.expect("an approval id");
        assert!(
            again.detail.starts_with("not acted automatically because the previous automatic action"),
            "{}",
            again.detail
        );
        assert!(again.detail.ends_with(&format!("run `macha-approve approve {id}` to carry it out")));
        assert_eq!(s.trail()[2]["outcome"], "escalated");
    }

    #[tokio::test]
    async fn execute_is_deferred_by_storm_control_while_one_is_in_flight() {
        let mut s = Setup::new(AutonomyLevel::AutoSafe);
        let action = Action::CollectGarbage { older_than_days: 30 };
        s.engine.store.begin_auto(&s.incident.fingerprint, Utc::now(), &action, crate::ledger::owner()).unwrap();
        let report = s.handle(gc()).await;
        assert_eq!(report.result, ActionResult::Deferred);
        assert!(report.detail.starts_with("not acted now because the previous automatic action"), "{}", report.detail);
        let trail = s.trail();
        assert_eq!(trail.len(), 1);
        assert_eq!(trail[0]["outcome"], "deferred");
    }

    #[tokio::test]
    async fn execute_is_deferred_when_macha_is_stopping() {
        let mut s = Setup::new(AutonomyLevel::AutoSafe);
        let (_tx, rx) = watch::channel(true);
        s.engine.stop_on(rx);
        let report = s.handle(gc()).await;
        assert_eq!(report.result, ActionResult::Deferred);
        assert_eq!(report.detail, "not acted now because macha is stopping; it decides again when it starts");
        assert_eq!(s.engine.store.auto_history(&s.incident.fingerprint, Utc::now()).unwrap().recent, 0);
    }

    #[tokio::test]
    async fn execute_of_a_restart_that_works_is_counted_recorded_and_not_escalated() {
        use crate::act::fake::{unit, Call, FakeHost};
        const WEB: &str = "web.service";
        let mut s = Setup::new(AutonomyLevel::AutoSafe);
        let kind = IncidentKind::UnitFailed { unit: WEB.into() };
        s.incident = Incident {
            fingerprint: kind.fingerprint(),
            kind,
            summary: "web.service failed".into(),
            evidence_key: "1".into(),
        };
        s.engine.fake = Some(
            FakeHost::new()
                .with_unit(WEB, Some(unit(WEB, "failed", "failed", "exit-code", "aa", 100)))
                .then(WEB, vec![Some(unit(WEB, "active", "running", "success", "bb", 100))]),
        );
        let report = s.handle(ProposedAction::new(ActionKind::RestartUnit, Some(WEB), "bring it back")).await;
        assert_eq!(report.result, ActionResult::Executed, "{}", report.detail);
        assert_eq!(report.approval_id, None);
        let host = s.engine.fake.as_ref().unwrap();
        assert_eq!(host.changes(), [Call::Restart(WEB.into())]);
        // Counted by storm control.
        let history = s.engine.store.auto_history(&s.incident.fingerprint, Utc::now()).unwrap();
        assert_eq!(history.recent, 1);
        let trail = s.trail();
        assert_eq!(trail.len(), 2, "{trail:?}");
        assert_eq!(trail[0]["outcome"], "started");
        assert_eq!(trail[0]["before"]["active_state"], "failed");
        let end = &trail[1];
        assert_eq!(end["outcome"], "succeeded");
        assert_eq!(end["auto_id"], trail[0]["auto_id"]);
        assert_eq!(end["detail"], report.detail.as_str());
        assert_eq!(end["before"]["active_state"], "failed");
        assert_eq!(end["after"]["active_state"], "active");
        assert_eq!(end["after"]["invocation_id"], "bb");
        // Nothing handed to a human.
        assert!(s.engine.store.pending().unwrap().is_empty());
    }
}
