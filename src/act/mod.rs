//! Stages 5 and 6, act and verify: carry out a gated `Action` through a
//! typed path (a D-Bus call, an in-process probe, or starting a root helper
//! unit), then judge it by the state of the host afterwards, never by the
//! call returning: the unit stays up, the disk has room, the expected
//! generation runs.
//!
//! This is the only module that changes the system. `request` and `root`
//! are the two sides of the helper units: the arguments file the daemon
//! writes, and the root program that reads it.

mod control;
pub mod health;
pub mod request;
pub mod root;

#[cfg(test)]
pub(crate) mod fake;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::catalog::{Action, RebuildMode, Verify};
use crate::config::{ActConfig, Config};
use crate::ids::Fingerprint;
use crate::observe::host;
use crate::observe::nixos::{self, Generations};
use crate::observe::systemd::{ReadUnits, Systemd, SystemdLink, UnitState};
use crate::unit::UnitName;

pub use self::control::{Control, Host, JobResult};

/// A unit's state in brief, before and after an action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Brief {
    pub active_state: String,
    pub sub_state: String,
    pub result: Option<String>,
    pub n_restarts: Option<u32>,
    pub invocation_id: String,
    /// When it last became inactive (for a failed unit: its failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive_enter_timestamp: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<&UnitState> for Brief {
    fn from(u: &UnitState) -> Self {
        Self {
            active_state: u.active_state.clone(),
            sub_state: u.sub_state.clone(),
            result: u.result.clone(),
            n_restarts: u.n_restarts,
            invocation_id: u.invocation_id.clone(),
            inactive_enter_timestamp: u.inactive_enter_timestamp,
        }
    }
}

/// Free space of the filesystem a cleanup is for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Space {
    pub path: String,
    pub used_percent: f64,
    pub available_bytes: u64,
}

/// Which generation is the boot default and which one runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GenerationState {
    pub profile_generation: Option<u32>,
    pub running_generation: Option<u32>,
    pub running_system: Option<String>,
}

impl From<&Generations> for GenerationState {
    fn from(g: &Generations) -> Self {
        Self {
            profile_generation: g.profile,
            running_generation: g.running_generation(),
            running_system: g.running.clone(),
        }
    }
}

/// What the verify probe looked at, before and after.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Observed {
    Unit(Brief),
    Space(Space),
    Generations(GenerationState),
}

/// How an executed action ended.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub succeeded: bool,
    pub detail: String,
    pub before: Option<Observed>,
    pub after: Option<Observed>,
    /// The action that takes it back (after a rebuild or rollback that
    /// changed the system): queued so that undoing is one approval. None
    /// once a revert took the system back.
    pub undo: Option<Action>,
    /// The health check of the system a switch, test or rollback moved to.
    pub health: Option<health::HealthCheck>,
    /// The revert of a change whose health check failed.
    pub revert: Option<Box<Reverted>>,
}

/// The revert of a system change whose health check failed: the rollback
/// to the generation that ran before, carried out at once and verified
/// like any rollback, but never health-checked and reverted in turn.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Reverted {
    /// The rollback, or none when there was no generation to go back to.
    pub action: Option<Action>,
    pub report: Report,
}

impl Report {
    pub fn failed(detail: impl Into<String>) -> Self {
        Self {
            succeeded: false,
            detail: detail.into(),
            before: None,
            after: None,
            undo: None,
            health: None,
            revert: None,
        }
    }

    /// Whether a revert was needed and did not bring the system back: a
    /// human must look, and nothing tries again by itself.
    pub fn revert_failed(&self) -> bool {
        self.revert.as_ref().is_some_and(|r| !r.report.succeeded)
    }
}

/// Why an action that is due cannot run any more (checked right before
/// running a queued action). `state` is the unit's, for unit actions.
pub fn still_applies(action: &Action, state: Option<&UnitState>, config: &Config) -> Result<(), String> {
    match action {
        Action::RestartUnit { unit } | Action::ResetFailed { unit } => {
            let Some(state) = state else {
                return Err(format!("{unit} no longer exists"));
            };
            match action {
                Action::RestartUnit { .. }
                    if matches!(state.active_state.as_str(), "active" | "activating" | "reloading") =>
                {
                    Err(format!("{unit} is already {} (nothing to restart)", state.active_state))
                }
                Action::ResetFailed { .. } if !state.is_failed() => {
                    Err(format!("{unit} is no longer failed (it is {})", state.active_state))
                }
                _ => Ok(()),
            }
        }
        Action::RollbackGeneration { generation } => generations(config)?.rollback_target(*generation).map(drop),
        _ => Ok(()),
    }
}

fn generations(config: &Config) -> Result<Generations, String> {
    nixos::read(&config.nixos.profile, &config.nixos.current_system)
        .map_err(|e| format!("cannot read the system generations of {}: {e}", config.nixos.profile.display()))
}

/// Carries out `action` and verifies it. `systemd` is the connection, or
/// why there is none; the handle that changes units (`Control`) is made
/// from it here, and only here. `open_incidents` are the incidents whose
/// evidence a journal vacuum keeps first, as the caller's store has them
/// (or why it could not read them: then no vacuum).
pub async fn execute(
    systemd: &SystemdLink<'_>,
    action: &Action,
    config: &Config,
    open_incidents: Result<Vec<(Fingerprint, String)>, String>,
) -> Report {
    // Written out, not `map(Control::new)`: `tests/invariants.rs` finds
    // the one place that makes a `Control` by its call.
    let control = match systemd.get() {
        Ok(s) => Ok(Control::new(s)),
        Err(e) => Err(e),
    };
    execute_on(control.as_ref().map_err(|e| *e), systemd, action, config, open_incidents).await
}

/// What an action is carried out on: the connection to systemd (from which
/// `execute` makes the `Control`, here and only here), or a fake host in a
/// unit test. The cycle and the approval workflow carry out through it.
pub trait Executor {
    /// Carries out `action` and verifies it, as `execute` does.
    fn execute(
        &self,
        action: &Action,
        config: &Config,
        open_incidents: Result<Vec<(Fingerprint, String)>, String>,
    ) -> impl std::future::Future<Output = Report> + Send;
}

impl Executor for SystemdLink<'_> {
    fn execute(
        &self,
        action: &Action,
        config: &Config,
        open_incidents: Result<Vec<(Fingerprint, String)>, String>,
    ) -> impl std::future::Future<Output = Report> + Send {
        execute(self, action, config, open_incidents)
    }
}

impl Executor for Systemd {
    async fn execute(
        &self,
        action: &Action,
        config: &Config,
        open_incidents: Result<Vec<(Fingerprint, String)>, String>,
    ) -> Report {
        execute(&SystemdLink::Up(self), action, config, open_incidents).await
    }
}

/// `execute` on any host: `host` changes the system (or why it cannot be
/// reached), `systemd` is what the read-only probes ask. The real path
/// passes `Control` over `systemd`; a test passes a fake host.
pub(crate) async fn execute_on(
    host: Result<&impl Host, &str>,
    systemd: &SystemdLink<'_>,
    action: &Action,
    config: &Config,
    open_incidents: Result<Vec<(Fingerprint, String)>, String>,
) -> Report {
    // The catalog says how each entry is judged; each probe's code is here.
    match (action.verify(), host) {
        (Verify::Answer, _) => match crate::investigate::run(action, systemd, config).await {
            Ok(f) => Report { succeeded: true, detail: format!("{}\n{}", f.summary, f.text), ..Report::failed("") },
            Err(e) => Report::failed(format!("the probe failed: {e}")),
        },
        (_, Err(e)) => Report::failed(e),
        (Verify::UnitSettles, Ok(host)) => match action.unit() {
            Some(unit) => execute_on_unit(host, action, unit, &config.act).await,
            None => Report::failed(format!("{action} names no unit to watch")),
        },
        (Verify::FreeSpace, Ok(host)) => cleanup(host, action, config, open_incidents).await,
        (Verify::Generation, Ok(host)) => change_system(host, action, config).await,
    }
}

/// Starts `action`'s helper unit with a fresh request and waits for it.
/// On failure the error carries the helper's last journal lines.
async fn run_helper(host: &impl Host, action: &Action, config: &Config) -> Result<(), String> {
    let unit = action.helper_unit().ok_or_else(|| format!("{action} has no helper unit"))?;
    let name = UnitName::parse(unit).map_err(|e| e.to_string())?;
    let state = crate::state_dir::StateDir::open(&config.state_dir).map_err(|e| e.to_string())?;
    let req = request::write(&state, action)?;
    let started = chrono::Utc::now();
    let job = host
        .start_helper(&name, Duration::from_secs(config.act.helper_timeout))
        .await
        .map_err(|e| format!("{e} (request {})", req.id))?;
    if job.is_done() {
        return Ok(());
    }
    let lines = crate::observe::journal::unit_tail(config.journal_dir.as_deref(), unit, 5)
        .map(|entries| {
            entries
                .into_iter()
                .filter(|e| e.time >= started - chrono::Duration::seconds(1))
                .map(|e| e.message)
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .unwrap_or_default();
    let said = if lines.is_empty() { String::new() } else { format!(": {lines}") };
    Err(format!("{unit} ended with {:?}{said}", job.0))
}

fn space_of(path: &std::path::Path) -> Option<Space> {
    let fs = host::filesystem_of(path).ok()?;
    Some(Space { path: path.display().to_string(), used_percent: fs.used_percent(), available_bytes: fs.available })
}

/// Evidence kept of one open incident before the journal is vacuumed.
#[derive(Debug, Serialize)]
struct KeptEvidence {
    incident: Fingerprint,
    summary: String,
    /// The unit's last journal lines (redacted), for incidents about a unit.
    lines: Vec<String>,
}

/// Writes the evidence of every open incident (fingerprint and summary, as
/// the caller's store has them) to
/// `STATE_DIR/evidence/TIME-before-vacuum.json` (synced), so a journal
/// vacuum can never destroy what an open incident is based on.
pub fn preserve_evidence(config: &Config, open: Vec<(Fingerprint, String)>) -> Result<PathBuf, String> {
    let state = crate::state_dir::StateDir::open(&config.state_dir).map_err(|e| e.to_string())?;
    let mut kept = Vec::with_capacity(open.len());
    for (incident, summary) in open {
        let lines = match crate::detect::unit_of(&incident) {
            Some(unit) => crate::observe::journal::unit_tail(
                config.journal_dir.as_deref(),
                unit,
                config.detect.unit_log_lines.max(1),
            )
            .map_err(|e| format!("cannot read the evidence of {incident}: {e}"))?
            .into_iter()
            .map(|e| {
                let line = format!("{} <{}> {}", e.time.to_rfc3339(), e.priority, e.message);
                crate::redact::redact(&line).into_owned()
            })
            .collect(),
            None => Vec::new(),
        };
        kept.push(KeptEvidence { incident, summary, lines });
    }
    let dir = state.subdir("evidence").map_err(|e| format!("cannot keep the evidence: {e}"))?;
    let name = format!("{}-before-vacuum.json", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"));
    let body = serde_json::to_vec_pretty(&kept).expect("evidence serialises");
    dir.replace(&name, &body).map_err(|e| format!("cannot keep the evidence: {e}"))?;
    Ok(dir.path_of(&name))
}

/// Garbage collection and journal vacuum, verified by free space.
async fn cleanup(
    host: &impl Host,
    action: &Action,
    config: &Config,
    open_incidents: Result<Vec<(Fingerprint, String)>, String>,
) -> Report {
    let mut kept = String::new();
    if let Action::VacuumJournal { .. } = action {
        match open_incidents.and_then(|open| preserve_evidence(config, open)) {
            Ok(file) => kept = format!("; evidence of open incidents kept in {}", file.display()),
            Err(e) => {
                return Report::failed(format!(
                    "not acted because the evidence of open incidents could not be recorded first: {e}"
                ))
            }
        }
    }
    let path = match action {
        Action::VacuumJournal { .. } => config.journal_dir.clone().unwrap_or_else(|| PathBuf::from("/var/log/journal")),
        _ => PathBuf::from("/nix/store"),
    };
    let before = space_of(&path);
    let result = run_helper(host, action, config).await;
    let after = space_of(&path);
    let (b, a) = (before.clone().map(Observed::Space), after.clone().map(Observed::Space));
    let report = |succeeded: bool, detail: String| Report {
        succeeded,
        detail: format!("{detail}{kept}"),
        before: b.clone(),
        after: a.clone(),
        ..Report::failed("")
    };
    if let Err(e) = result {
        return report(false, e);
    }
    let threshold = f64::from(config.detect.disk_full_percent);
    match (before, after) {
        (Some(before), Some(after)) => {
            let freed = after.available_bytes.saturating_sub(before.available_bytes);
            let text = format!(
                "{} is {:.1}% used after {} ({} MiB freed)",
                after.path,
                after.used_percent,
                action,
                freed / (1024 * 1024)
            );
            if after.used_percent >= threshold {
                report(false, format!("{text}: still at or above detect.disk_full_percent ({threshold}%)"))
            } else {
                report(true, text)
            }
        }
        _ => report(false, format!("{action} ran, but the free space of {} could not be read", path.display())),
    }
}

/// A rebuild or rollback, verified by the generation that is current after
/// it, and recorded with the generation before so that it can be undone.
/// One that changed the running system (a switch, a test, a rollback) is
/// health-checked, and reverted at once when the check fails
/// (`act.revert_failed_switch`); then its undo is not queued, the revert
/// having done it.
async fn change_system(host: &impl Host, action: &Action, config: &Config) -> Report {
    let before = match generations(config) {
        Ok(g) => g,
        Err(e) => return Report::failed(e),
    };
    // The target of a rollback is fixed before the helper runs, so the
    // verify probe knows what to expect.
    let action = match action {
        Action::RollbackGeneration { generation } => match before.rollback_target(*generation) {
            Ok(n) => Action::RollbackGeneration { generation: Some(n) },
            Err(e) => return Report::failed(e),
        },
        other => other.clone(),
    };
    let activates = matches!(
        action,
        Action::NixosRebuild { mode: RebuildMode::Switch | RebuildMode::Test } | Action::RollbackGeneration { .. }
    );
    let baseline = if activates { Some(health::baseline(host).await) } else { None };
    let (mut report, after) = run_change(host, &action, &before, config).await;
    let Some(after) = after else { return report };
    // Whatever the probe says, a system that changed can be taken back.
    if after.profile != before.profile || after.running != before.running {
        let back_to = before.running_generation().or(before.profile);
        report.undo = back_to.map(|n| Action::RollbackGeneration { generation: Some(n) });
    }
    let (Some(baseline), true) = (baseline, after.running != before.running) else {
        return report;
    };
    let check = check_health(host, &baseline, &before, &after, config).await;
    report.detail = format!("{}; {}", report.detail, check.text());
    if check.failed() {
        report.succeeded = false;
        if config.act.revert_failed_switch {
            let reverted = revert(host, before.running_generation(), &check, &after, config).await;
            report.detail = if reverted.report.succeeded {
                report.undo = None;
                format!("{}; reverted: {}", report.detail, reverted.report.detail)
            } else {
                format!("{}; the revert failed: {}", report.detail, reverted.report.detail)
            };
            report.revert = Some(Box::new(reverted));
        } else {
            report.detail = format!("{}; not reverted (act.revert_failed_switch is off)", report.detail);
        }
    }
    report.health = Some(check);
    report
}

/// Runs the helper of `action` (a rebuild or rollback) and judges it by
/// the generations after it, compared with `before`: the report so far,
/// and the generations after when they could be read and the helper
/// succeeded or the running system changed nonetheless (an activation that
/// reports failed units has still switched).
async fn run_change(
    host: &impl Host,
    action: &Action,
    before: &Generations,
    config: &Config,
) -> (Report, Option<Generations>) {
    let result = run_helper(host, action, config).await;
    let after = generations(config);
    let mut report = Report {
        before: Some(Observed::Generations(before.into())),
        after: after.as_ref().ok().map(|g| Observed::Generations(g.into())),
        ..Report::failed("")
    };
    let after = match (result, after) {
        (Err(e), Ok(a)) if a.running != before.running => {
            report.detail = format!("{e}; the running system changed nonetheless ({})", a.summary());
            a
        }
        (Err(e), _) => {
            report.detail = e;
            return (report, None);
        }
        (Ok(()), Err(e)) => {
            report.detail = format!("{action} ran, but {e}");
            return (report, None);
        }
        (Ok(()), Ok(a)) => {
            let verdict = verify_generation(action, before, &a);
            report.succeeded = verdict.is_ok();
            let (Ok(text) | Err(text)) = verdict;
            report.detail = format!("{text} ({})", a.summary());
            a
        }
    };
    (report, Some(after))
}

/// Watches the units that were active before a change and those it added
/// or changed (read from the two systems' unit trees) for
/// `act.switch_watch` seconds.
async fn check_health(
    host: &impl Host,
    baseline: &health::Baseline,
    before: &Generations,
    after: &Generations,
    config: &Config,
) -> health::HealthCheck {
    let mut notes = Vec::new();
    let changed: Vec<String> = match (&before.running, &after.running) {
        (Some(from), Some(to)) => {
            let diff = crate::observe::generations::diff_units(Path::new(from), Path::new(to));
            if diff.more > 0 || diff.unread > 0 {
                notes.push(
                    "the diff of the units was partial: changed units beyond it were watched only if active before"
                        .into(),
                );
            }
            diff.units
                .into_iter()
                .filter(|u| u.kind != crate::observe::generations::ChangeKind::Removed)
                .map(|u| u.unit)
                .collect()
        }
        _ => Vec::new(),
    };
    let window = Duration::from_secs(config.act.switch_watch);
    health::watch(host, baseline, &changed, window, notes).await
}

/// Takes the system back to generation `to` (the one that ran before a
/// change whose health check failed): the rollback helper, verified like
/// any rollback, then the units that failed are looked at once more. A
/// revert is never health-checked and reverted in turn: it is tried once.
async fn revert(
    host: &impl Host,
    to: Option<u32>,
    check: &health::HealthCheck,
    changed_to: &Generations,
    config: &Config,
) -> Reverted {
    let Some(n) = to else {
        let why = "the system that ran before is not a generation of the profile: there is nothing to revert to";
        return Reverted { action: None, report: Report::failed(why) };
    };
    let action = Action::RollbackGeneration { generation: Some(n) };
    let (mut report, after) = run_change(host, &action, changed_to, config).await;
    if after.is_none() {
        return Reverted { action: Some(action), report };
    }
    // How the units that failed are now, after a settle.
    tokio::time::sleep(Duration::from_secs(config.act.settle_time)).await;
    if let Ok(listed) = host.list_units().await {
        let now: Vec<String> = check
            .failed
            .iter()
            .map(|f| match listed.iter().find(|l| l.unit == f.unit) {
                Some(l) => format!("{} is {}/{}", f.unit, l.active_state, l.sub_state),
                None => format!("{} is not loaded", f.unit),
            })
            .collect();
        if !now.is_empty() {
            report.detail = format!("{}; {}", report.detail, now.join(", "));
        }
    }
    Reverted { action: Some(action), report }
}

/// Whether the expected generation is current after `action`.
fn verify_generation(action: &Action, before: &Generations, after: &Generations) -> Result<String, String> {
    let running_profile = after.running_generation() == after.profile && after.profile.is_some();
    match action {
        Action::NixosRebuild { mode: RebuildMode::DryBuild } => {
            if after.profile == before.profile && after.running == before.running {
                Ok("dry-build succeeded; nothing changed".into())
            } else {
                Err("dry-build succeeded, but the system changed meanwhile".into())
            }
        }
        Action::NixosRebuild { mode: RebuildMode::Switch } => match (before.profile, after.profile) {
            (b, Some(a)) if Some(a) > b.or(Some(0)) && running_profile => {
                Ok(format!("generation {a} is the boot default and runs"))
            }
            _ => Err("switch ran, but no new generation is both the boot default and running".into()),
        },
        Action::NixosRebuild { mode: RebuildMode::Boot } => match (before.profile, after.profile) {
            (b, Some(a)) if Some(a) > b.or(Some(0)) && after.running == before.running => {
                Ok(format!("generation {a} is the boot default from the next boot on"))
            }
            _ => Err("boot ran, but no new generation became the boot default".into()),
        },
        Action::NixosRebuild { mode: RebuildMode::Test } => {
            if after.running.is_some() && after.running != before.running && after.profile == before.profile {
                Ok("a new system runs; the boot default is unchanged".into())
            } else {
                Err("test ran, but the running system did not change".into())
            }
        }
        Action::RollbackGeneration { generation: Some(n) } => {
            if after.profile == Some(*n) && running_profile {
                Ok(format!("generation {n} is the boot default and runs"))
            } else {
                Err(format!("rollback ran, but generation {n} is not both the boot default and running"))
            }
        }
        other => Err(format!("{other} does not change the system")),
    }
}

async fn execute_on_unit(host: &impl Host, action: &Action, unit: &UnitName, cfg: &ActConfig) -> Report {
    let before = host.unit_state(unit).await.ok().flatten();
    let before_brief = before.as_ref().map(|b| Observed::Unit(b.into()));
    // The failure the action is to repair: a run since then moves this.
    let failed_at = before.as_ref().and_then(|b| b.inactive_enter_timestamp);
    let failed = |detail: String, after: Option<Observed>| Report {
        succeeded: false,
        detail,
        before: before_brief.clone(),
        after,
        ..Report::failed("")
    };
    let report = |verdict: Result<String, String>, after: Option<Observed>| match verdict {
        Ok(detail) => Report { succeeded: true, detail, before: before_brief.clone(), after, ..Report::failed("") },
        Err(detail) => failed(detail, after),
    };
    match action {
        Action::RestartUnit { .. } => {
            let job = match host.restart(unit, Duration::from_secs(cfg.job_timeout)).await {
                Ok(job) => job,
                Err(e) => return failed(e.to_string(), None),
            };
            let (after, seen_failed) = settle(host, unit, Duration::from_secs(cfg.settle_time)).await;
            let after_brief = after.as_ref().map(|a| Observed::Unit(a.into()));
            let Some(after) = after else {
                return failed(format!("{unit} disappeared after the restart"), None);
            };
            if !job.is_done() {
                return failed(format!("systemd's restart job for {unit} ended with {:?}", job.0), after_brief);
            }
            report(judge_restart(unit, &after, seen_failed, failed_at, cfg), after_brief)
        }
        _ => {
            if let Err(e) = host.reset_failed(unit).await {
                return failed(e.to_string(), None);
            }
            let after = host.unit_state(unit).await.ok().flatten();
            let after_brief = after.as_ref().map(|a| Observed::Unit(a.into()));
            report(judge_reset(unit, after.as_ref(), failed_at), after_brief)
        }
    }
}

/// A restart's verdict, from the unit's state once settled: it must not
/// have failed again, and must be where it should be (`detect::still_down`).
fn judge_restart(
    unit: &UnitName,
    after: &UnitState,
    seen_failed: bool,
    failed_at: Option<chrono::DateTime<chrono::Utc>>,
    cfg: &ActConfig,
) -> Result<String, String> {
    if seen_failed || after.is_failed() {
        return Err(format!(
            "{unit} failed again after the restart ({})",
            after.result.as_deref().unwrap_or("unknown")
        ));
    }
    if after.active_state == "inactive" {
        if let Some(why) = crate::detect::still_down(after, failed_at) {
            return Err(format!("{unit} stopped after the restart: {why}"));
        }
    }
    Ok(format!("{unit} restarted and {} for {} s", after.active_state, cfg.settle_time))
}

/// A reset's verdict: clearing the failed state repairs only a unit that
/// then is where it should be; a unit that should run and does not is a
/// failed action (`detect::still_down`).
fn judge_reset(
    unit: &UnitName,
    after: Option<&UnitState>,
    failed_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<String, String> {
    match after {
        Some(a) if a.is_failed() => Err(format!("{unit} is still failed after reset-failed")),
        Some(a) => match crate::detect::still_down(a, failed_at) {
            Some(why) => Err(format!("failed state of {unit} cleared, but {why}")),
            None => Ok(format!("failed state of {unit} cleared; it is {}", a.active_state)),
        },
        None => Ok(format!("failed state of {unit} cleared; systemd no longer has the unit loaded")),
    }
}

/// How an action a stopped macha left unfinished ended, or what was seen
/// when that cannot be told.
#[derive(Debug, Clone, PartialEq)]
pub enum Unfinished {
    /// Judged as it would have been had macha seen it through.
    Judged(Box<Report>),
    /// Its end could not be seen: the detail says what was.
    Unseen { detail: String, after: Option<Observed> },
}

/// Judges `action`, started by a macha that stopped before its end was
/// recorded, by the host now. `before` is the unit as it was recorded
/// before the action. A restart whose job still runs is waited for
/// (`act.job_timeout`), then watched (`act.settle_time`) and judged as
/// usual; nothing is carried out again.
pub async fn judge_unfinished(
    systemd: &SystemdLink<'_>,
    action: &Action,
    before: Option<&Brief>,
    config: &Config,
) -> Unfinished {
    let cfg = &config.act;
    let unseen = |detail: String, after: Option<&UnitState>| Unfinished::Unseen {
        detail,
        after: after.map(|a| Observed::Unit(a.into())),
    };
    let systemd = match systemd.get() {
        Ok(s) => s,
        Err(e) => {
            return unseen(format!("macha stopped while {action} ran, and systemd cannot be asked now: {e}"), None)
        }
    };
    let unit = match action {
        Action::RestartUnit { unit } | Action::ResetFailed { unit } => unit,
        other => {
            // A helper's work is judged by its own verify probe, which needs
            // the state from before it: say what the helper did.
            let seen = match other.helper_unit().and_then(|h| UnitName::parse(h).ok()) {
                Some(h) => match systemd.unit_state(&h).await {
                    Ok(Some(s)) => {
                        format!(
                            "; its helper {h} is {} ({})",
                            s.active_state,
                            s.result.as_deref().unwrap_or("no result")
                        )
                    }
                    _ => format!("; its helper {h} cannot be read"),
                },
                None => String::new(),
            };
            return unseen(format!("macha stopped while {action} ran{seen}: check the host"), None);
        }
    };
    let before_brief = before.cloned().map(Observed::Unit);
    let judged = |verdict: Result<String, String>, after: Option<&UnitState>| {
        let (succeeded, detail) = match verdict {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        Unfinished::Judged(Box::new(Report {
            succeeded,
            detail: format!("{detail} (judged after macha stopped during it)"),
            before: before_brief.clone(),
            after: after.map(|a| Observed::Unit(a.into())),
            ..Report::failed("")
        }))
    };
    if let Action::ResetFailed { .. } = action {
        return match systemd.unit_state(unit).await {
            Ok(now) => judged(judge_reset(unit, now.as_ref(), failed_at_of(before)), now.as_ref()),
            Err(e) => unseen(format!("macha stopped while {action} ran, and {unit} cannot be read: {e}"), None),
        };
    }
    // A restart: its job may still run.
    let deadline = Instant::now() + Duration::from_secs(cfg.job_timeout);
    let now = loop {
        match systemd.unit_state(unit).await {
            Err(e) => return unseen(format!("macha stopped while {action} ran, and {unit} cannot be read: {e}"), None),
            Ok(None) => {
                return unseen(format!("macha stopped while {action} ran, and {unit} is no longer loaded"), None)
            }
            Ok(Some(s)) if s.has_job && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Ok(Some(s)) if s.has_job => {
                return unseen(
                    format!("macha stopped while {action} ran, and its job still runs after {} s", cfg.job_timeout),
                    Some(&s),
                )
            }
            Ok(Some(s)) => break s,
        }
    };
    if before.is_some_and(|b| !b.invocation_id.is_empty() && b.invocation_id == now.invocation_id) {
        return unseen(
            format!("macha stopped before {unit} was restarted: nothing was done (it is {})", now.active_state),
            Some(&now),
        );
    }
    let (after, seen_failed) = settle(systemd, unit, Duration::from_secs(cfg.settle_time)).await;
    let Some(after) = after else {
        return unseen(format!("{unit} is no longer loaded after the restart"), None);
    };
    judged(judge_restart(unit, &after, seen_failed || now.is_failed(), failed_at_of(before), cfg), Some(&after))
}

/// The failure a unit action was to repair, from the unit's state before it.
fn failed_at_of(before: Option<&Brief>) -> Option<chrono::DateTime<chrono::Utc>> {
    before.and_then(|b| b.inactive_enter_timestamp)
}

/// Watches the unit for `window`; returns its last state and whether it was
/// seen failed at any point (a `Type=simple` service is "active" at once and
/// fails a moment later).
async fn settle(systemd: &impl ReadUnits, unit: &UnitName, window: Duration) -> (Option<UnitState>, bool) {
    let started = Instant::now();
    let mut seen_failed = false;
    loop {
        let state = systemd.unit_state(unit).await.ok().flatten();
        seen_failed |= state.as_ref().is_some_and(UnitState::is_failed);
        if started.elapsed() >= window || state.is_none() {
            return (state, seen_failed);
        }
        tokio::time::sleep(Duration::from_millis(250).min(window)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{boot_and_run, config, generation, unit, Call, FakeHost, JobEnd};
    use super::*;

    const WEB: &str = "web.service";

    fn failed_web() -> UnitState {
        unit(WEB, "failed", "failed", "exit-code", "aa", 100)
    }

    fn running_web() -> UnitState {
        unit(WEB, "active", "running", "success", "bb", 100)
    }

    fn restart() -> Action {
        Action::RestartUnit { unit: UnitName::parse(WEB).unwrap() }
    }

    fn reset() -> Action {
        Action::ResetFailed { unit: UnitName::parse(WEB).unwrap() }
    }

    async fn run(host: &FakeHost, action: &Action, config: &Config) -> Report {
        execute_on(Ok(host), &SystemdLink::Down("no systemd in a unit test".into()), action, config, Ok(Vec::new()))
            .await
    }

    #[tokio::test]
    async fn a_restart_that_leaves_the_unit_active_succeeds_with_before_and_after() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 0);
        let host = FakeHost::new().with_unit(WEB, Some(failed_web())).then(WEB, vec![Some(running_web())]);
        let report = run(&host, &restart(), &config).await;
        assert!(report.succeeded, "{report:?}");
        assert_eq!(report.detail, "web.service restarted and active for 0 s");
        assert_eq!(report.before, Some(Observed::Unit((&failed_web()).into())));
        assert_eq!(report.after, Some(Observed::Unit((&running_web()).into())));
        assert_eq!(report.undo, None);
        assert_eq!(host.calls(), [Call::UnitState(WEB.into()), Call::Restart(WEB.into()), Call::UnitState(WEB.into())]);
    }

    #[tokio::test]
    async fn a_restart_whose_unit_fails_again_within_the_settle_time_fails_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 1);
        let again = unit(WEB, "failed", "failed", "signal", "cc", 200);
        let host = FakeHost::new()
            .with_unit(WEB, Some(failed_web()))
            .then(WEB, vec![Some(running_web()), Some(again.clone())]);
        let report = run(&host, &restart(), &config).await;
        assert!(!report.succeeded);
        assert_eq!(report.detail, "web.service failed again after the restart (signal)");
        assert_eq!(report.after, Some(Observed::Unit((&again).into())));
    }

    #[tokio::test]
    async fn a_restart_seen_failed_while_settling_fails_even_if_it_is_back_up() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 1);
        let flapping = unit(WEB, "failed", "failed", "exit-code", "cc", 200);
        let host =
            FakeHost::new().with_unit(WEB, Some(failed_web())).then(WEB, vec![Some(flapping), Some(running_web())]);
        let report = run(&host, &restart(), &config).await;
        assert!(!report.succeeded);
        assert_eq!(report.detail, "web.service failed again after the restart (success)");
    }

    #[tokio::test]
    async fn a_restart_job_that_fails_is_a_failure_naming_the_job_result() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 0);
        let host = FakeHost::new()
            .with_unit(WEB, Some(failed_web()))
            .then(WEB, vec![Some(running_web())])
            .ending(WEB, JobEnd::Result("failed"));
        let report = run(&host, &restart(), &config).await;
        assert!(!report.succeeded);
        assert_eq!(report.detail, "systemd's restart job for web.service ended with \"failed\"");
        assert_eq!(report.after, Some(Observed::Unit((&running_web()).into())));
    }

    #[tokio::test]
    async fn a_restart_job_that_times_out_or_a_dbus_error_is_a_failure_with_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 0);
        let host = FakeHost::new().with_unit(WEB, Some(failed_web())).ending(WEB, JobEnd::Timeout);
        let report = run(&host, &restart(), &config).await;
        assert!(!report.succeeded);
        assert_eq!(report.detail, "systemd did not finish the restart job for web.service within 7 s");
        assert_eq!(report.before, Some(Observed::Unit((&failed_web()).into())));
        assert_eq!(report.after, None);

        let host = FakeHost::new()
            .with_unit(WEB, Some(failed_web()))
            .then(WEB, vec![Some(running_web())])
            .ending(WEB, JobEnd::Dbus("access denied"));
        let report = run(&host, &restart(), &config).await;
        assert!(!report.succeeded);
        assert!(report.detail.contains("systemd D-Bus call restart(web.service) failed"), "{}", report.detail);
        assert!(report.detail.contains("access denied"), "{}", report.detail);
        // Nothing ran: the unit is as it was.
        assert_eq!(host.unit_state(&UnitName::parse(WEB).unwrap()).await.unwrap(), Some(failed_web()));
    }

    #[tokio::test]
    async fn a_restarted_unit_that_disappears_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 0);
        let host = FakeHost::new().with_unit(WEB, Some(failed_web())).then(WEB, vec![None]);
        let report = run(&host, &restart(), &config).await;
        assert!(!report.succeeded);
        assert_eq!(report.detail, "web.service disappeared after the restart");
    }

    #[tokio::test]
    async fn reset_failed_on_a_unit_no_longer_failed_is_judged_by_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 0);
        // It ran since it failed, and runs now: cleared, and repaired.
        let host = FakeHost::new().with_unit(WEB, Some(running_web()));
        let report = run(&host, &reset(), &config).await;
        assert!(report.succeeded, "{report:?}");
        assert_eq!(report.detail, "failed state of web.service cleared; it is active");
        assert_eq!(host.changes(), [Call::ResetFailed(WEB.into())]);

        // Failed, and after the reset stopped with nothing started since:
        // a unit that should run and does not is no repair.
        let stopped = unit(WEB, "inactive", "dead", "exit-code", "aa", 100);
        let host = FakeHost::new().with_unit(WEB, Some(failed_web())).then(WEB, vec![Some(stopped.clone())]);
        let report = run(&host, &reset(), &config).await;
        assert!(!report.succeeded);
        assert!(
            report.detail.starts_with("failed state of web.service cleared, but web.service is inactive"),
            "{}",
            report.detail
        );
        assert_eq!(report.after, Some(Observed::Unit((&stopped).into())));

        // Still failed after it.
        let host = FakeHost::new().with_unit(WEB, Some(failed_web()));
        let report = run(&host, &reset(), &config).await;
        assert!(!report.succeeded);
        assert_eq!(report.detail, "web.service is still failed after reset-failed");

        // Gone from systemd: nothing is failed any more.
        let host = FakeHost::new().with_unit(WEB, Some(failed_web())).then(WEB, vec![None]);
        let report = run(&host, &reset(), &config).await;
        assert!(report.succeeded);
        assert_eq!(report.detail, "failed state of web.service cleared; systemd no longer has the unit loaded");
    }

    #[tokio::test]
    async fn without_a_connection_an_action_fails_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 0);
        let down = SystemdLink::Down("cannot connect to D-Bus at the system bus: refused".into());
        for action in [restart(), reset(), Action::NixosRebuild { mode: RebuildMode::Switch }] {
            let report = execute(&down, &action, &config, Ok(Vec::new())).await;
            assert_eq!(report, Report::failed("cannot connect to D-Bus at the system bus: refused"), "{action}");
        }
    }

    #[tokio::test]
    async fn a_switch_that_makes_a_new_generation_current_succeeds_and_names_its_undo() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 0);
        generation(&config.nixos.profile, 1);
        boot_and_run(&config, 1);
        let after = config.clone();
        let host = FakeHost::new().helper_does(move |helper| {
            // The helper finds the request written for it, then switches.
            let written = std::fs::read_to_string(request::path(&after.state_dir, helper.as_str())).unwrap();
            assert!(written.contains("\"switch\""), "{written}");
            generation(&after.nixos.profile, 2);
            boot_and_run(&after, 2);
        });
        let report = run(&host, &Action::NixosRebuild { mode: RebuildMode::Switch }, &config).await;
        assert!(report.succeeded, "{report:?}");
        assert_eq!(
            report.detail,
            "generation 2 is the boot default and runs (profile 2, running 2 (of 2 generations)); \
             health check passed: 0 units watched for 1 s"
        );
        let state = |n: u32| {
            Some(Observed::Generations(GenerationState {
                profile_generation: Some(n),
                running_generation: Some(n),
                running_system: Some(format!("/nix/store/{n}-system")),
            }))
        };
        assert_eq!((report.before, report.after), (state(1), state(2)));
        assert_eq!(report.undo, Some(Action::RollbackGeneration { generation: Some(1) }));
        assert_eq!(host.changes(), [Call::StartHelper("macha-action-rebuild.service".into())]);
    }

    #[tokio::test]
    async fn a_rollback_goes_to_the_generation_before_and_its_undo_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 0);
        generation(&config.nixos.profile, 1);
        generation(&config.nixos.profile, 2);
        boot_and_run(&config, 2);
        let after = config.clone();
        let host = FakeHost::new().helper_does(move |_| boot_and_run(&after, 1));
        let report = run(&host, &Action::RollbackGeneration { generation: None }, &config).await;
        assert!(report.succeeded, "{report:?}");
        assert!(report.detail.starts_with("generation 1 is the boot default and runs"), "{}", report.detail);
        assert_eq!(report.undo, Some(Action::RollbackGeneration { generation: Some(2) }));
        assert_eq!(host.changes(), [Call::StartHelper("macha-action-rollback.service".into())]);
    }

    const REBUILD: &str = "macha-action-rebuild.service";
    const ROLLBACK: &str = "macha-action-rollback.service";

    /// At generation 1 with web.service running; the rebuild helper moves
    /// the system to generation 2 and leaves web.service `after_switch`;
    /// the rollback helper goes back to the generation asked for (it
    /// reads the request: here, always 1) and leaves web.service running.
    fn switch_host(config: &Config, after_switch: UnitState) -> FakeHost {
        generation(&config.nixos.profile, 1);
        boot_and_run(config, 1);
        let c = config.clone();
        FakeHost::new()
            .with_unit(WEB, Some(running_web()))
            .with_unit("old.service", Some(unit("old.service", "failed", "failed", "exit-code", "o", 50)))
            .helper_does(move |helper| {
                if helper.as_str() == REBUILD {
                    generation(&c.nixos.profile, 2);
                    boot_and_run(&c, 2);
                } else {
                    boot_and_run(&c, 1);
                }
            })
            .helper_leaves(REBUILD, vec![vec![(WEB, Some(after_switch))]])
            .helper_leaves(ROLLBACK, vec![vec![(WEB, Some(running_web()))]])
    }

    fn switch() -> Action {
        Action::NixosRebuild { mode: RebuildMode::Switch }
    }

    #[tokio::test]
    async fn a_switch_that_breaks_a_unit_active_before_is_reverted_at_once_and_not_left_to_undo() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 0);
        let host = switch_host(&config, failed_web());
        let report = run(&host, &switch(), &config).await;
        assert!(!report.succeeded, "{report:?}");
        let health = report.health.as_ref().unwrap();
        assert_eq!(health.failed.len(), 1, "{health:?}");
        assert_eq!((health.failed[0].unit.as_str(), health.failed[0].was_active), (WEB, true));
        assert_eq!(health.seconds, 0, "the first look saw it: not watched to the end");
        let revert = report.revert.as_ref().unwrap();
        assert!(revert.report.succeeded, "{revert:?}");
        assert_eq!(revert.action, Some(Action::RollbackGeneration { generation: Some(1) }));
        assert!(revert.report.detail.contains("web.service is active/running"), "{}", revert.report.detail);
        assert_eq!(report.undo, None, "the revert already went back");
        assert!(
            report.detail.contains(
                "health check failed 0 s after the change: 1 of 1 watched units failed: web.service (failed/failed)"
            ),
            "{}",
            report.detail
        );
        assert!(report.detail.contains("; reverted: generation 1 is the boot default and runs"), "{}", report.detail);
        assert_eq!(host.changes(), [Call::StartHelper(REBUILD.into()), Call::StartHelper(ROLLBACK.into())]);
    }

    #[tokio::test]
    async fn a_revert_that_fails_is_tried_once_and_leaves_the_undo_for_a_human() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 0);
        let host = switch_host(&config, failed_web()).ending(ROLLBACK, JobEnd::Result("failed"));
        let report = run(&host, &switch(), &config).await;
        assert!(!report.succeeded);
        assert!(report.revert_failed(), "{report:?}");
        assert!(
            report.detail.contains("; the revert failed: macha-action-rollback.service ended with"),
            "{}",
            report.detail
        );
        assert_eq!(report.undo, Some(Action::RollbackGeneration { generation: Some(1) }));
        assert_eq!(host.changes(), [Call::StartHelper(REBUILD.into()), Call::StartHelper(ROLLBACK.into())]);
    }

    #[tokio::test]
    async fn a_healthy_switch_is_watched_to_the_end_and_keeps_its_undo() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 0);
        // old.service had failed before the switch: not the switch's doing.
        let host = switch_host(&config, running_web());
        let report = run(&host, &switch(), &config).await;
        assert!(report.succeeded, "{report:?}");
        assert_eq!(report.health.as_ref().map(|h| (h.failed(), h.seconds, h.watched)), Some((false, 1, 1)));
        assert!(report.detail.ends_with("; health check passed: 1 unit watched for 1 s"), "{}", report.detail);
        assert_eq!(report.revert, None);
        assert_eq!(report.undo, Some(Action::RollbackGeneration { generation: Some(1) }));
        assert_eq!(host.changes(), [Call::StartHelper(REBUILD.into())]);
    }

    #[tokio::test]
    async fn with_reverts_off_a_failed_check_is_reported_and_the_undo_waits() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path(), 0);
        config.act.revert_failed_switch = false;
        let host = switch_host(&config, failed_web());
        let report = run(&host, &switch(), &config).await;
        assert!(!report.succeeded);
        assert!(report.detail.ends_with("; not reverted (act.revert_failed_switch is off)"), "{}", report.detail);
        assert_eq!(report.undo, Some(Action::RollbackGeneration { generation: Some(1) }));
        assert_eq!(host.changes(), [Call::StartHelper(REBUILD.into())]);
    }

    #[tokio::test]
    async fn an_activation_that_reports_failed_units_has_switched_and_is_checked_too() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 0);
        let host = switch_host(&config, failed_web()).ending(REBUILD, JobEnd::Result("failed"));
        let report = run(&host, &switch(), &config).await;
        assert!(!report.succeeded);
        assert!(
            report.detail.contains("; the running system changed nonetheless (profile 2, running 2"),
            "{}",
            report.detail
        );
        assert!(report.revert.as_ref().is_some_and(|r| r.report.succeeded), "{report:?}");
        assert_eq!(report.undo, None);
    }

    #[tokio::test]
    async fn a_boot_or_dry_build_changes_nothing_that_runs_and_is_not_watched() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 0);
        let host = switch_host(&config, failed_web());
        let report = run(&host, &Action::NixosRebuild { mode: RebuildMode::DryBuild }, &config).await;
        // The fake helper switched anyway: the probe says so, and no check runs for a dry-build.
        assert_eq!(report.health, None);
        assert_eq!(host.calls().iter().filter(|c| **c == Call::ListUnits).count(), 0);
    }

    #[tokio::test]
    async fn a_helper_job_that_fails_is_a_failure_with_nothing_to_undo() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 0);
        generation(&config.nixos.profile, 1);
        boot_and_run(&config, 1);
        let helper = "macha-action-rebuild.service";
        let host = FakeHost::new().ending(helper, JobEnd::Result("failed"));
        let report = run(&host, &Action::NixosRebuild { mode: RebuildMode::Switch }, &config).await;
        assert!(!report.succeeded);
        assert_eq!(report.detail, "macha-action-rebuild.service ended with \"failed\"");
        assert_eq!(report.undo, None);
        assert_eq!(report.before, report.after);

        let host = FakeHost::new().ending(helper, JobEnd::Timeout);
        let report = run(&host, &Action::NixosRebuild { mode: RebuildMode::Boot }, &config).await;
        assert!(!report.succeeded);
        assert!(
            report.detail.starts_with("systemd did not finish the start job for macha-action-rebuild.service within"),
            "{}",
            report.detail
        );

        // A cleanup's helper the same way.
        let host = FakeHost::new().ending("macha-action-gc.service", JobEnd::Dbus("unit masked"));
        let report = run(&host, &Action::CollectGarbage { older_than_days: 14 }, &config).await;
        assert!(!report.succeeded);
        assert!(report.detail.contains("unit masked"), "{}", report.detail);
        assert_eq!(host.changes(), [Call::StartHelper("macha-action-gc.service".into())]);
    }

    #[tokio::test]
    async fn a_rollback_with_nowhere_to_go_starts_no_helper() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 0);
        generation(&config.nixos.profile, 1);
        boot_and_run(&config, 1);
        let host = FakeHost::new();
        let report = run(&host, &Action::RollbackGeneration { generation: None }, &config).await;
        assert_eq!(report, Report::failed("there is no generation before the current one"));
        assert_eq!(host.changes(), []);
    }
}
