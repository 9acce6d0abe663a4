//! The health check of a system change macha carried out: after a switch,
//! a test activation or a rollback changed the running system, the units
//! that were active before it and the units it added or changed are
//! watched for `act.switch_watch` seconds. One of them failing, or caught
//! between two of systemd's own restarts (`auto-restart`), fails the
//! check at once; a unit that had failed before the change and still has
//! is not the change's doing, and a unit the change removed is stopped,
//! not failed.
//!
//! What the check decides is only whether the change broke the host;
//! reverting it is `change_system`'s, in the parent module.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::observe::systemd::{Listed, ReadUnits};

/// How often the units are listed while watched (one `ListUnits` each).
const POLL: Duration = Duration::from_millis(500);

/// The most failing units named in a check (more are counted).
const MAX_NAMED: usize = 20;

/// The units as they were right before the change.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    active: BTreeSet<String>,
    failed: BTreeSet<String>,
    /// Why the units could not be listed (then only the changed ones are watched).
    error: Option<String>,
}

/// Lists the units before the change.
pub async fn baseline(host: &impl ReadUnits) -> Baseline {
    match host.list_units().await {
        Ok(listed) => Baseline {
            active: listed.iter().filter(|l| l.active_state == "active").map(|l| l.unit.clone()).collect(),
            failed: listed.iter().filter(|l| l.active_state == "failed").map(|l| l.unit.clone()).collect(),
            error: None,
        },
        Err(e) => Baseline { error: Some(e.to_string()), ..Baseline::default() },
    }
}

/// A watched unit that failed after the change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failing {
    pub unit: String,
    pub active_state: String,
    pub sub_state: String,
    /// Whether it was active before the change (else the change added or changed it).
    pub was_active: bool,
}

/// How a health check ended, as the audit trail keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthCheck {
    /// Units watched: active before the change, or added or changed by it.
    pub watched: usize,
    /// Seconds watched: the whole window, or until the first failure.
    pub seconds: u64,
    /// The watched units that failed (at most 20 named), none when healthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<Failing>,
    /// Failing units beyond those named.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more: usize,
    /// What limited the check (units not listed before, a listing that
    /// failed meanwhile, a partial diff of the units).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Whether the units could be listed at least once while watched.
    pub looked: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl HealthCheck {
    /// Whether a watched unit failed.
    pub fn failed(&self) -> bool {
        !self.failed.is_empty()
    }

    /// One line for an action's detail.
    pub fn text(&self) -> String {
        let notes = if self.notes.is_empty() { String::new() } else { format!(" ({})", self.notes.join("; ")) };
        if !self.looked {
            return format!("health check not done: the units could not be listed{notes}");
        }
        if !self.failed() {
            let units = if self.watched == 1 { "unit" } else { "units" };
            return format!("health check passed: {} {units} watched for {} s{notes}", self.watched, self.seconds);
        }
        let mut named: Vec<String> =
            self.failed.iter().map(|f| format!("{} ({}/{})", f.unit, f.active_state, f.sub_state)).collect();
        if self.more > 0 {
            named.push(format!("{} more", self.more));
        }
        format!(
            "health check failed {} s after the change: {} of {} watched units failed: {}{notes}",
            self.seconds,
            self.failed.len() + self.more,
            self.watched,
            named.join(", ")
        )
    }
}

/// The units to watch: those active before, and those the change added or
/// changed (`changed`).
pub fn watched(baseline: &Baseline, changed: &[String]) -> BTreeSet<String> {
    baseline.active.iter().chain(changed).cloned().collect()
}

/// The watched units that are failing in `listed`: failed, or waiting to
/// be restarted by systemd after they died; never one that had failed
/// before the change already.
pub fn failing(listed: &[Listed], watched: &BTreeSet<String>, baseline: &Baseline) -> Vec<Failing> {
    listed
        .iter()
        .filter(|l| watched.contains(&l.unit) && !baseline.failed.contains(&l.unit))
        .filter(|l| l.active_state == "failed" || l.sub_state == "auto-restart")
        .map(|l| Failing {
            unit: l.unit.clone(),
            active_state: l.active_state.clone(),
            sub_state: l.sub_state.clone(),
            was_active: baseline.active.contains(&l.unit),
        })
        .collect()
}

/// Watches the units for `window`, listing them every half second; ends
/// at the first listing in which a watched unit fails. `notes` say what
/// limits the check (a partial diff of the units).
pub async fn watch(
    host: &impl ReadUnits,
    baseline: &Baseline,
    changed: &[String],
    window: Duration,
    mut notes: Vec<String>,
) -> HealthCheck {
    let watched = watched(baseline, changed);
    if let Some(e) = &baseline.error {
        notes.push(format!("the units active before could not be listed ({e}): only those changed were watched"));
    }
    let start = Instant::now();
    let mut looked = false;
    let mut last_error = None;
    loop {
        match host.list_units().await {
            Ok(listed) => {
                looked = true;
                let mut failed = failing(&listed, &watched, baseline);
                if !failed.is_empty() {
                    let more = failed.len().saturating_sub(MAX_NAMED);
                    failed.truncate(MAX_NAMED);
                    let seconds = start.elapsed().as_secs();
                    return HealthCheck { watched: watched.len(), seconds, failed, more, notes, looked };
                }
            }
            Err(e) => last_error = Some(e.to_string()),
        }
        let elapsed = start.elapsed();
        if elapsed >= window {
            break;
        }
        tokio::time::sleep(POLL.min(window - elapsed)).await;
    }
    if let Some(e) = last_error {
        notes.push(format!("a listing of the units failed: {e}"));
    }
    HealthCheck { watched: watched.len(), seconds: window.as_secs(), failed: Vec::new(), more: 0, notes, looked }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(unit: &str, active: &str, sub: &str) -> Listed {
        Listed { unit: unit.into(), active_state: active.into(), sub_state: sub.into() }
    }

    fn base() -> Baseline {
        Baseline {
            active: ["web.service", "db.service"].map(String::from).into(),
            failed: ["old.service"].map(String::from).into(),
            error: None,
        }
    }

    #[test]
    fn a_unit_active_before_or_changed_that_fails_or_waits_to_restart_is_failing() {
        let b = base();
        let w = watched(&b, &["new.service".into(), "old.service".into()]);
        let now = [
            listed("web.service", "failed", "failed"),
            listed("db.service", "activating", "auto-restart"),
            listed("new.service", "failed", "failed"),
            // Failed before the change already: not the change's doing.
            listed("old.service", "failed", "failed"),
            // Not watched: neither active before nor changed.
            listed("other.service", "failed", "failed"),
        ];
        let f = failing(&now, &w, &b);
        let names: Vec<(&str, bool)> = f.iter().map(|f| (f.unit.as_str(), f.was_active)).collect();
        assert_eq!(names, [("web.service", true), ("db.service", true), ("new.service", false)]);
    }

    #[test]
    fn stopped_or_restarting_normally_is_not_failing() {
        let b = base();
        let w = watched(&b, &[]);
        let now = [
            // Removed by the change: stopped, not failed.
            listed("web.service", "inactive", "dead"),
            listed("db.service", "activating", "start"),
        ];
        assert!(failing(&now, &w, &b).is_empty());
    }

    #[test]
    fn the_text_names_the_units_and_counts_the_rest() {
        let failed = vec![Failing {
            unit: "web.service".into(),
            active_state: "failed".into(),
            sub_state: "failed".into(),
            was_active: true,
        }];
        let c = HealthCheck { watched: 40, seconds: 3, failed, more: 2, notes: Vec::new(), looked: true };
        assert_eq!(
            c.text(),
            "health check failed 3 s after the change: 3 of 40 watched units failed: web.service (failed/failed), 2 more"
        );
        let ok = HealthCheck { failed: Vec::new(), more: 0, seconds: 60, ..c.clone() };
        assert_eq!(ok.text(), "health check passed: 40 units watched for 60 s");
        let blind = HealthCheck { looked: false, notes: vec!["a listing of the units failed: x".into()], ..ok };
        assert_eq!(
            blind.text(),
            "health check not done: the units could not be listed (a listing of the units failed: x)"
        );
    }
}
