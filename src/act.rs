//! Stage 5, act: carry out a gated `Action` through a typed D-Bus call, and
//! judge it by the unit's state afterwards, not by the call returning.
//!
//! This is the only module that changes the system.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::ActConfig;
use crate::decide::ActionKind;
use crate::gate::Action;
use crate::observe::systemd::{Systemd, UnitState};

/// A unit's state in brief, before and after an action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Brief {
    pub active_state: String,
    pub sub_state: String,
    pub result: Option<String>,
    pub n_restarts: Option<u32>,
    pub invocation_id: String,
}

impl From<&UnitState> for Brief {
    fn from(u: &UnitState) -> Self {
        Self {
            active_state: u.active_state.clone(),
            sub_state: u.sub_state.clone(),
            result: u.result.clone(),
            n_restarts: u.n_restarts,
            invocation_id: u.invocation_id.clone(),
        }
    }
}

/// How an executed action ended.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub succeeded: bool,
    pub detail: String,
    pub before: Option<Brief>,
    pub after: Option<Brief>,
}

/// Why an action that is due cannot run any more (checked right before
/// running a queued action).
pub fn still_applies(action: &Action, state: Option<&UnitState>) -> Result<(), String> {
    let Some(state) = state else {
        return Err(format!("{} no longer exists", action.unit));
    };
    match action.kind {
        ActionKind::RestartUnit if matches!(state.active_state.as_str(), "active" | "activating" | "reloading") => {
            Err(format!("{} is already {} (nothing to restart)", action.unit, state.active_state))
        }
        ActionKind::ResetFailed if !state.is_failed() => {
            Err(format!("{} is no longer failed (it is {})", action.unit, state.active_state))
        }
        _ => Ok(()),
    }
}

pub async fn execute(systemd: &Systemd, action: &Action, cfg: &ActConfig) -> Report {
    let before = systemd.unit_state(&action.unit).await.ok().flatten();
    let before_brief = before.as_ref().map(Brief::from);
    let failed =
        |detail: String, after: Option<Brief>| Report { succeeded: false, detail, before: before_brief.clone(), after };
    match action.kind {
        ActionKind::RestartUnit => {
            let job = match systemd.restart(&action.unit, Duration::from_secs(cfg.job_timeout)).await {
                Ok(job) => job,
                Err(e) => return failed(e.to_string(), None),
            };
            let (after, seen_failed) = settle(systemd, action, Duration::from_secs(cfg.settle_time)).await;
            let after_brief = after.as_ref().map(Brief::from);
            let Some(after) = after else {
                return failed(format!("{} disappeared after the restart", action.unit), None);
            };
            if !job.is_done() {
                return failed(
                    format!("systemd's restart job for {} ended with {:?}", action.unit, job.0),
                    after_brief,
                );
            }
            if seen_failed || after.is_failed() {
                return failed(
                    format!(
                        "{} failed again after the restart ({})",
                        action.unit,
                        after.result.as_deref().unwrap_or("unknown")
                    ),
                    after_brief,
                );
            }
            if after.active_state == "inactive" && after.result.as_deref() != Some("success") {
                return failed(format!("{} stopped after the restart", action.unit), after_brief);
            }
            Report {
                succeeded: true,
                detail: format!("{} restarted and {} for {} s", action.unit, after.active_state, cfg.settle_time),
                before: before_brief,
                after: after_brief,
            }
        }
        ActionKind::ResetFailed => {
            if let Err(e) = systemd.reset_failed(&action.unit).await {
                return failed(e.to_string(), None);
            }
            let after = systemd.unit_state(&action.unit).await.ok().flatten();
            let after_brief = after.as_ref().map(Brief::from);
            match after {
                Some(a) if a.is_failed() => {
                    failed(format!("{} is still failed after reset-failed", action.unit), after_brief)
                }
                _ => Report {
                    succeeded: true,
                    detail: format!("failed state of {} cleared", action.unit),
                    before: before_brief,
                    after: after_brief,
                },
            }
        }
        // The gate never yields an `Action` for these; if one arrives, nothing is done.
        ActionKind::NotifyOnly | ActionKind::ProposeConfigChange => {
            failed(format!("{} has nothing to carry out", action.kind.as_str()), None)
        }
    }
}

/// Watches the unit for `window`; returns its last state and whether it was
/// seen failed at any point (a `Type=simple` service is "active" at once and
/// fails a moment later).
async fn settle(systemd: &Systemd, action: &Action, window: Duration) -> (Option<UnitState>, bool) {
    let started = Instant::now();
    let mut seen_failed = false;
    loop {
        let state = systemd.unit_state(&action.unit).await.ok().flatten();
        seen_failed |= state.as_ref().is_some_and(UnitState::is_failed);
        if started.elapsed() >= window || state.is_none() {
            return (state, seen_failed);
        }
        tokio::time::sleep(Duration::from_millis(250).min(window)).await;
    }
}
