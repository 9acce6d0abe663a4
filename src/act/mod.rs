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
pub mod request;
pub mod root;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::catalog::{Action, RebuildMode};
use crate::config::{ActConfig, Config};
use crate::observe::host;
use crate::observe::nixos::{self, Generations};
use crate::observe::systemd::{ReadUnits, SystemdLink, UnitState};
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
    /// changed the system): queued so that undoing is one approval.
    pub undo: Option<Action>,
}

impl Report {
    pub fn failed(detail: impl Into<String>) -> Self {
        Self { succeeded: false, detail: detail.into(), before: None, after: None, undo: None }
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
    open_incidents: Result<Vec<(String, String)>, String>,
) -> Report {
    let cfg = &config.act;
    match action {
        Action::RestartUnit { unit } | Action::ResetFailed { unit } => match systemd.get() {
            Ok(s) => execute_on_unit(&Control::new(s), action, unit, cfg).await,
            Err(e) => Report::failed(e),
        },
        Action::Investigate { .. } => match crate::investigate::run(action, systemd, config).await {
            Ok(f) => Report { succeeded: true, detail: format!("{}\n{}", f.summary, f.text), ..Report::failed("") },
            Err(e) => Report::failed(format!("the probe failed: {e}")),
        },
        Action::CollectGarbage { .. } | Action::VacuumJournal { .. } => match systemd.get() {
            Ok(s) => cleanup(&Control::new(s), action, config, open_incidents).await,
            Err(e) => Report::failed(e),
        },
        Action::NixosRebuild { .. } | Action::RollbackGeneration { .. } => match systemd.get() {
            Ok(s) => change_system(&Control::new(s), action, config).await,
            Err(e) => Report::failed(e),
        },
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
    incident: String,
    summary: String,
    /// The unit's last journal lines (redacted), for incidents about a unit.
    lines: Vec<String>,
}

/// Writes the evidence of every open incident (fingerprint and summary, as
/// the caller's store has them) to
/// `STATE_DIR/evidence/TIME-before-vacuum.json` (synced), so a journal
/// vacuum can never destroy what an open incident is based on.
pub fn preserve_evidence(config: &Config, open: Vec<(String, String)>) -> Result<PathBuf, String> {
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
    open_incidents: Result<Vec<(String, String)>, String>,
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
        undo: None,
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
    let result = run_helper(host, &action, config).await;
    let after = generations(config);
    let mut report = Report {
        succeeded: false,
        detail: String::new(),
        before: Some(Observed::Generations((&before).into())),
        after: after.as_ref().ok().map(|g| Observed::Generations(g.into())),
        undo: None,
    };
    let after = match (result, after) {
        (Err(e), _) => {
            report.detail = e;
            return report;
        }
        (Ok(()), Err(e)) => {
            report.detail = format!("{action} ran, but {e}");
            return report;
        }
        (Ok(()), Ok(a)) => a,
    };
    let verdict = verify_generation(&action, &before, &after);
    report.succeeded = verdict.is_ok();
    report.detail = match verdict {
        Ok(text) | Err(text) => format!("{text} ({})", after.summary()),
    };
    // Whatever the probe says, a system that changed can be taken back.
    let changed = after.profile != before.profile || after.running != before.running;
    if changed {
        if let Some(n) = before.running_generation().or(before.profile) {
            report.undo = Some(Action::RollbackGeneration { generation: Some(n) });
        }
    }
    report
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
        undo: None,
    };
    let report = |verdict: Result<String, String>, after: Option<Observed>| match verdict {
        Ok(detail) => Report { succeeded: true, detail, before: before_brief.clone(), after, undo: None },
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
    Judged(Report),
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
        Unfinished::Judged(Report {
            succeeded,
            detail: format!("{detail} (judged after macha stopped during it)"),
            before: before_brief.clone(),
            after: after.map(|a| Observed::Unit(a.into())),
            undo: None,
        })
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
