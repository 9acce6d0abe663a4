//! Stage 4, gate: the policy. For each proposed action it says execute,
//! queue for a human, or refuse, and why.
//!
//! Pure code: no I/O, no clock. What the gate needs to know about the host
//! (does the unit exist, what are all its names) is looked up beforehand and
//! passed in as `UnitFacts`. Risk comes from the catalog entry, never from a
//! label the model gives.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};

use serde::Serialize;

use crate::catalog::{investigation, Action, ActionKind, Risk, HELPER_PREFIX};
use crate::config::AutonomyLevel;
use crate::decide::ProposedAction;
use crate::kb::Memory;
use crate::unit::UnitName;

/// Units macha never touches, whatever the configuration says: remote
/// access, networking, name resolution, the bus, logging, logins,
/// authorisation, the model, and macha itself.
pub const BUILT_IN_PROTECTED: &[&str] = &[
    "ssh.service",
    "sshd.service",
    "ssh.socket",
    "sshd.socket",
    "ssh@.service",
    "sshd@.service",
    "systemd-networkd.service",
    "systemd-networkd.socket",
    "NetworkManager.service",
    "wpa_supplicant.service",
    "networking.service",
    "systemd-resolved.service",
    "dbus.service",
    "dbus.socket",
    "dbus-broker.service",
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
    "systemd-journald-audit.socket",
    "systemd-journald@.service",
    "systemd-journald@.socket",
    "systemd-journald-varlink@.socket",
    "systemd-logind.service",
    "polkit.service",
    "ollama.service",
    "macha-autonomous.service",
];

/// Services whose start powers off, reboots, suspends or rescues the
/// machine, or opens a root shell: a restart of an inactive unit starts it.
/// Kept equal to `NEVER_RESTART` in `module/polkit/50-macha-autonomous.rules`,
/// which enforces the same a second time.
pub const NEVER_RESTART: &[&str] = &[
    "systemd-poweroff.service",
    "systemd-reboot.service",
    "systemd-halt.service",
    "systemd-kexec.service",
    "systemd-soft-reboot.service",
    "systemd-suspend.service",
    "systemd-hibernate.service",
    "systemd-hybrid-sleep.service",
    "systemd-suspend-then-hibernate.service",
    "emergency.service",
    "rescue.service",
    "debug-shell.service",
    "systemd-exit.service",
];

/// Unit types a restart may target. Restarting a target, slice, mount or
/// device propagates to units that depend on it (restarting `sysinit.target`
/// restarts `ssh.service`) without polkit being asked for them.
pub const RESTART_TYPES: &[&str] = &["service", "socket", "timer", "path"];

/// Bounds on the arguments of the root-only actions, from the configuration.
/// The helper units check them a second time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub gc_min_days: u32,
    pub journal_floor_mb: u64,
    /// Whether `nixos.flake` is set.
    pub flake_configured: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self { gc_min_days: 7, journal_floor_mb: 256, flake_configured: false }
    }
}

/// Longest `older_than_days` accepted (a hundred years).
const MAX_DAYS: u32 = 36_500;

/// What systemd says about a unit that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// The primary name.
    pub id: String,
    /// All names, aliases included.
    pub names: Vec<String>,
    pub refuse_manual_stop: bool,
    /// `SuccessAction` and `FailureAction`; anything but `none` acts on the
    /// whole machine when the unit ends.
    pub success_action: String,
    pub failure_action: String,
}

impl Known {
    /// A plain unit with no special properties (for tests and callers that
    /// only know the name).
    pub fn named(id: &str) -> Self {
        Self {
            id: id.into(),
            names: vec![id.into()],
            refuse_manual_stop: false,
            success_action: "none".into(),
            failure_action: "none".into(),
        }
    }
}

/// What the host says about the unit an action names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitFacts {
    /// The unit is loaded.
    Exists(Known),
    /// systemd has no such unit loaded.
    Missing,
    /// systemd could not be asked.
    Unknown(String),
}

/// `foo@.service` for `foo@bar.service`.
fn template_of(name: &str) -> Option<String> {
    let (prefix, rest) = name.split_once('@')?;
    let (_, kind) = rest.rsplit_once('.')?;
    Some(format!("{prefix}@.{kind}"))
}

/// The set of protected unit names: built-in plus configured (macha's own
/// helper units are protected by their prefix).
#[derive(Debug, Clone)]
pub struct Protected(BTreeSet<String>);

impl Protected {
    pub fn new(extra: &[UnitName], own_unit: &UnitName) -> Self {
        let mut set: BTreeSet<String> = BUILT_IN_PROTECTED.iter().map(|s| s.to_string()).collect();
        set.extend(extra.iter().map(|u| u.to_string()));
        set.insert(own_unit.to_string());
        Self(set)
    }

    /// The protected name that covers `name`: itself, or the template it is
    /// an instance of (`sshd@7-10.0.0.1:22.service` -> `sshd@.service`).
    pub fn covering(&self, name: &str) -> Option<String> {
        if self.0.contains(name) {
            return Some(name.to_owned());
        }
        if name.starts_with(HELPER_PREFIX) {
            return Some(format!("{HELPER_PREFIX}*"));
        }
        template_of(name).filter(|t| self.0.contains(t))
    }
}

/// The gate's answer for one proposed action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Execute {
        action: Action,
    },
    Queue {
        action: Action,
    },
    /// Nothing to carry out; recorded and notified.
    Inform,
    /// A configuration change to write down for a human; never applied.
    Propose {
        file: String,
        diff: String,
    },
    Refuse {
        reason: String,
    },
}

/// Checks that `raw` names a real unit that macha may touch: a valid unit
/// name, loaded in systemd, the unit the incident is about, and neither
/// protected by name (any of its names, aliases and its template included)
/// nor by `RefuseManualStop=yes`. The error is the reason recorded in the
/// audit trail.
pub fn check_target(
    kind: ActionKind,
    raw: &str,
    facts: &UnitFacts,
    scope: Option<&str>,
    protected: &Protected,
) -> Result<UnitName, String> {
    let unit = UnitName::parse(raw).map_err(|e| format!("not acted because the target is not a unit name: {e}"))?;
    let is_protected = |name: &str| {
        protected
            .covering(name)
            .map(|p| format!("not acted because {unit} is protected ({p} is on the protected list)"))
    };
    // By name first: a protected unit, or a restart that can never be
    // allowed, is refused as such even when the unit is not loaded.
    if let Some(reason) = is_protected(unit.as_str()) {
        return Err(reason);
    }
    if kind == ActionKind::RestartUnit {
        if !RESTART_TYPES.contains(&unit.kind()) {
            return Err(format!(
                "not acted because {unit} is a .{} unit: restarting it would restart the units that depend on it (only .{} units are restarted)",
                unit.kind(),
                RESTART_TYPES.join(", .")
            ));
        }
        if NEVER_RESTART.contains(&unit.as_str()) {
            return Err(format!("not acted because starting {unit} changes the state of the whole machine"));
        }
    }
    let known = match facts {
        UnitFacts::Missing => return Err(format!("not acted because no unit named {unit} is loaded on this host")),
        UnitFacts::Unknown(e) => {
            return Err(format!("not acted because systemd could not confirm that {unit} exists: {e}"));
        }
        UnitFacts::Exists(k) => k,
    };
    let mut names = std::iter::once(known.id.as_str()).chain(known.names.iter().map(String::as_str));
    if let Some(reason) = names.clone().find_map(is_protected) {
        return Err(reason);
    }
    if known.refuse_manual_stop {
        return Err(format!("not acted because {unit} is protected (RefuseManualStop=yes)"));
    }
    if kind == ActionKind::RestartUnit {
        if NEVER_RESTART.contains(&known.id.as_str()) {
            return Err(format!("not acted because starting {unit} changes the state of the whole machine"));
        }
        if known.success_action != "none" || known.failure_action != "none" {
            return Err(format!(
                "not acted because the end of {unit} acts on the whole machine (SuccessAction={}, FailureAction={})",
                known.success_action, known.failure_action
            ));
        }
    }
    match scope {
        Some(incident_unit) if unit.as_str() == incident_unit || names.any(|n| n == incident_unit) => Ok(unit),
        Some(incident_unit) => {
            Err(format!("not acted because {unit} is not the unit this incident is about ({incident_unit})"))
        }
        None => Err(format!("not acted because this incident is not about a unit, so {unit} is out of its scope")),
    }
}

/// What the gate needs besides the proposal: the protected units and the
/// bounds on arguments, both from the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub protected: Protected,
    pub limits: Limits,
}

impl Policy {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            protected: Protected::new(&config.protected_units, &config.service_unit),
            limits: Limits {
                gc_min_days: config.act.gc_min_days,
                journal_floor_mb: config.act.journal_floor_mb,
                flake_configured: config.nixos.flake.is_some(),
            },
        }
    }
}

/// Turns a proposal into a catalog action with a checked target, or says why
/// it cannot be one. `facts` and `scope` as for `gate`.
pub fn build_action(
    proposed: &ProposedAction,
    facts: &UnitFacts,
    scope: Option<&str>,
    policy: &Policy,
) -> Result<Action, String> {
    let kind = proposed.kind;
    let action = match kind {
        ActionKind::RestartUnit | ActionKind::ResetFailed => {
            let raw = proposed.unit.as_deref().unwrap_or_default();
            let unit = check_target(kind, raw, facts, scope, &policy.protected)?;
            Action::on_unit(kind, unit).expect("a unit action")
        }
        ActionKind::CollectGarbage => {
            Action::CollectGarbage { older_than_days: proposed.older_than_days.unwrap_or_default() }
        }
        ActionKind::VacuumJournal => Action::VacuumJournal { max_size_mb: proposed.max_size_mb.unwrap_or_default() },
        ActionKind::Investigate => {
            let probe = proposed.probe.ok_or("not acted because no probe was named")?;
            investigation(probe, proposed.unit.as_deref(), proposed.path.as_deref())
                .map_err(|e| format!("not acted because {e}"))?
        }
        ActionKind::NixosRebuild => {
            Action::NixosRebuild { mode: proposed.mode.ok_or("not acted because no rebuild mode was named")? }
        }
        // The model can only ask for the previous generation.
        ActionKind::RollbackGeneration => Action::RollbackGeneration { generation: None },
        ActionKind::NotifyOnly | ActionKind::ProposeConfigChange => {
            return Err(format!("{} is not carried out", kind.as_str()));
        }
    };
    check_bounds(&action, &policy.limits)?;
    Ok(action)
}

/// Checks the arguments of an action against the configured bounds. The
/// gate applies it to proposals; approval applies it again to queued items
/// (the bounds may have been tightened since), and the helper units to the
/// requests they read.
pub fn check_bounds(action: &Action, limits: &Limits) -> Result<(), String> {
    match *action {
        Action::CollectGarbage { older_than_days: days } if days < limits.gc_min_days => Err(format!(
            "not acted because older_than_days {days} is below act.gc_min_days ({}): younger generations are kept for rollback",
            limits.gc_min_days
        )),
        Action::CollectGarbage { older_than_days: days } if days > MAX_DAYS => {
            Err(format!("not acted because older_than_days {days} is more than {MAX_DAYS}"))
        }
        Action::VacuumJournal { max_size_mb: mb } if mb < limits.journal_floor_mb => Err(format!(
            "not acted because max_size_mb {mb} is below act.journal_floor_mb ({}), the least journal kept",
            limits.journal_floor_mb
        )),
        Action::NixosRebuild { .. } if !limits.flake_configured => {
            Err("not acted because no flake is configured for rebuilds (key nixos.flake)".into())
        }
        _ => Ok(()),
    }
}

/// Decides what happens to `proposed` at `level`. `facts` is what systemd
/// said about the unit the action names (ignored for actions without one).
/// `scope` is the unit the incident is about (`None` for incidents that are
/// not about one unit, such as a full disk).
pub fn gate(
    level: AutonomyLevel,
    proposed: &ProposedAction,
    facts: &UnitFacts,
    scope: Option<&str>,
    policy: &Policy,
) -> Verdict {
    match proposed.kind {
        ActionKind::ProposeConfigChange => {
            let file = proposed.file.clone().unwrap_or_default();
            return match level {
                AutonomyLevel::Observe => Verdict::Refuse {
                    reason: format!(
                        "not acted because the autonomy level is observe (would have proposed a change to {file})"
                    ),
                },
                _ => Verdict::Propose { file, diff: proposed.diff.clone().unwrap_or_default() },
            };
        }
        ActionKind::NotifyOnly => return Verdict::Inform,
        _ => {}
    }
    let action = match build_action(proposed, facts, scope, policy) {
        Ok(a) => a,
        Err(reason) => return Verdict::Refuse { reason },
    };
    verdict_for(level, action)
}

/// Why an action the autonomy level would carry out automatically must go
/// to a human instead: incident memory says its verification failed for
/// this incident (`memory`) within `days` before `now`. `None` lets it run.
/// A failed fix is not tried again unattended; a person may still approve
/// it.
pub fn failed_before(
    memory: Option<&Memory>,
    kind: ActionKind,
    target: Option<&str>,
    now: DateTime<Utc>,
    days: u64,
) -> Option<String> {
    if days == 0 {
        return None;
    }
    let since = now - TimeDelta::days(days as i64);
    let failed = memory?.failed_since(since).find(|a| a.action == kind.as_str() && a.target.as_deref() == target)?;
    let last = failed.last_failure.as_ref()?;
    Some(format!(
        "its verification failed for this incident on {} ({}), less than {days} days ago (knowledge_base.failed_fix_days)",
        last.at.format("%Y-%m-%d %H:%M UTC"),
        last.text
    ))
}

/// The autonomy matrix for an action whose target was checked.
pub fn verdict_for(level: AutonomyLevel, action: Action) -> Verdict {
    match (level, action.risk()) {
        (AutonomyLevel::Observe, _) => Verdict::Refuse {
            reason: format!("not acted because the autonomy level is observe (would have done: {action})"),
        },
        (_, Risk::ReadOnly) => Verdict::Execute { action },
        (AutonomyLevel::Suggest, _) => Verdict::Queue { action },
        (AutonomyLevel::AutoSafe, Risk::Low) => Verdict::Execute { action },
        (AutonomyLevel::AutoSafe, Risk::High) => Verdict::Queue { action },
        (AutonomyLevel::AutoFull, _) if action.always_needs_approval() => Verdict::Queue { action },
        (AutonomyLevel::AutoFull, _) => Verdict::Execute { action },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Probe, RebuildMode};
    use AutonomyLevel::*;

    #[test]
    fn a_fix_whose_verification_failed_lately_goes_to_a_human_and_nothing_else_does() {
        use crate::kb::{Event, What};
        let day = |d: u32| chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 11, d, 12, 0, 0).unwrap();
        let fp = crate::ids::Fingerprint::from("unit-failed:web.service");
        let mut memory = Memory::new("web1", &fp, day(1));
        let carried = |target: &str, verified: bool| What::CarriedOut {
            action: "restart_unit".into(),
            target: Some(target.into()),
            verified,
            detail: "web.service failed again after the restart".into(),
        };
        memory.apply(&Event {
            at: day(1),
            host: "web1".into(),
            fingerprint: fp.clone(),
            what: carried("web.service", false),
        });
        let restart = ActionKind::RestartUnit;
        let why = failed_before(Some(&memory), restart, Some("web.service"), day(5), 7).expect("failed 4 days ago");
        assert!(why.contains("2026-11-01 12:00 UTC (web.service failed again after the restart)"), "{why}");
        // Not within the window, not this action, not this target, the rule
        // off, or no memory: nothing stops it here.
        assert_eq!(failed_before(Some(&memory), restart, Some("web.service"), day(9), 7), None);
        assert_eq!(failed_before(Some(&memory), ActionKind::ResetFailed, Some("web.service"), day(5), 7), None);
        assert_eq!(failed_before(Some(&memory), restart, Some("other.service"), day(5), 7), None);
        assert_eq!(failed_before(Some(&memory), restart, Some("web.service"), day(5), 0), None);
        assert_eq!(failed_before(None, restart, Some("web.service"), day(5), 7), None);
        // A verification since does not erase the failure within the window:
        // a fix that failed lately is not trusted unattended.
        memory.apply(&Event { at: day(3), host: "web1".into(), fingerprint: fp, what: carried("web.service", true) });
        assert!(failed_before(Some(&memory), restart, Some("web.service"), day(5), 7).is_some());
    }

    #[test]
    fn an_action_asked_of_another_host_is_the_action_its_gate_builds_again() {
        let web = UnitName::parse("web.service").unwrap();
        let actions = [
            Action::RestartUnit { unit: web.clone() },
            Action::ResetFailed { unit: web.clone() },
            Action::CollectGarbage { older_than_days: 30 },
            Action::VacuumJournal { max_size_mb: 512 },
            Action::Investigate { probe: Probe::UnitLogs, unit: Some(web.clone()), path: None },
            Action::Investigate { probe: Probe::DiskUsage, unit: None, path: Some("/var".into()) },
            Action::NixosRebuild { mode: RebuildMode::Switch },
            Action::RollbackGeneration { generation: None },
        ];
        for action in actions {
            let proposed = ProposedAction::of(&action, "asked").unwrap();
            match gate(AutoFull, &proposed, &exists("web.service"), Some("web.service"), &policy()) {
                Verdict::Execute { action: built } | Verdict::Queue { action: built } => assert_eq!(built, action),
                other => panic!("{action}: {other:?}"),
            }
        }
        // An undo's numbered generation is macha's own: never asked of another host.
        assert_eq!(ProposedAction::of(&Action::RollbackGeneration { generation: Some(7) }, "undo"), None);
    }

    fn policy() -> Policy {
        Policy {
            protected: Protected::new(
                &[UnitName::parse("payroll.service").unwrap()],
                &UnitName::parse("macha-autonomous.service").unwrap(),
            ),
            limits: Limits { gc_min_days: 7, journal_floor_mb: 256, flake_configured: true },
        }
    }

    fn proposed(kind: ActionKind, unit: Option<&str>) -> ProposedAction {
        ProposedAction::new(kind, unit, "r")
    }

    fn exists(id: &str) -> UnitFacts {
        UnitFacts::Exists(Known::named(id))
    }

    fn verdict(level: AutonomyLevel, kind: ActionKind) -> Verdict {
        let unit = kind.needs_unit().then_some("web.service");
        gate(level, &proposed(kind, unit), &exists("web.service"), Some("web.service"), &policy())
    }

    fn action(kind: ActionKind) -> Action {
        Action::on_unit(kind, UnitName::parse("web.service").unwrap()).unwrap()
    }

    fn is_refusal_containing(v: &Verdict, text: &str) -> bool {
        matches!(v, Verdict::Refuse { reason } if reason.contains(text))
    }

    // The matrix: one test per (level, catalog entry) cell.

    #[test]
    fn observe_restart_is_recorded_not_done() {
        assert!(is_refusal_containing(&verdict(Observe, ActionKind::RestartUnit), "observe"));
    }
    #[test]
    fn observe_reset_failed_is_recorded_not_done() {
        assert!(is_refusal_containing(&verdict(Observe, ActionKind::ResetFailed), "observe"));
    }
    #[test]
    fn observe_notify_only_informs() {
        assert_eq!(verdict(Observe, ActionKind::NotifyOnly), Verdict::Inform);
    }
    #[test]
    fn suggest_restart_is_queued() {
        assert_eq!(
            verdict(Suggest, ActionKind::RestartUnit),
            Verdict::Queue { action: action(ActionKind::RestartUnit) }
        );
    }
    #[test]
    fn suggest_reset_failed_is_queued() {
        assert_eq!(
            verdict(Suggest, ActionKind::ResetFailed),
            Verdict::Queue { action: action(ActionKind::ResetFailed) }
        );
    }
    #[test]
    fn suggest_notify_only_informs() {
        assert_eq!(verdict(Suggest, ActionKind::NotifyOnly), Verdict::Inform);
    }
    #[test]
    fn auto_safe_restart_is_executed() {
        assert_eq!(
            verdict(AutoSafe, ActionKind::RestartUnit),
            Verdict::Execute { action: action(ActionKind::RestartUnit) }
        );
    }
    #[test]
    fn auto_safe_reset_failed_is_executed() {
        assert_eq!(
            verdict(AutoSafe, ActionKind::ResetFailed),
            Verdict::Execute { action: action(ActionKind::ResetFailed) }
        );
    }
    #[test]
    fn auto_safe_notify_only_informs() {
        assert_eq!(verdict(AutoSafe, ActionKind::NotifyOnly), Verdict::Inform);
    }
    #[test]
    fn auto_full_restart_is_executed() {
        assert_eq!(
            verdict(AutoFull, ActionKind::RestartUnit),
            Verdict::Execute { action: action(ActionKind::RestartUnit) }
        );
    }
    #[test]
    fn auto_full_reset_failed_is_executed() {
        assert_eq!(
            verdict(AutoFull, ActionKind::ResetFailed),
            Verdict::Execute { action: action(ActionKind::ResetFailed) }
        );
    }
    #[test]
    fn auto_full_notify_only_informs() {
        assert_eq!(verdict(AutoFull, ActionKind::NotifyOnly), Verdict::Inform);
    }

    fn propose(level: AutonomyLevel) -> Verdict {
        let p = ProposedAction {
            file: Some("hosts/web.nix".into()),
            diff: Some("d".into()),
            ..ProposedAction::new(ActionKind::ProposeConfigChange, None, "r")
        };
        gate(level, &p, &UnitFacts::Missing, None, &policy())
    }
    #[test]
    fn observe_propose_config_change_is_recorded_not_written() {
        assert!(is_refusal_containing(&propose(Observe), "observe"));
    }
    #[test]
    fn suggest_auto_safe_and_auto_full_write_a_proposal_never_apply_it() {
        for level in [Suggest, AutoSafe, AutoFull] {
            assert_eq!(propose(level), Verdict::Propose { file: "hosts/web.nix".into(), diff: "d".into() });
        }
    }

    // Attempts to get past the gate.

    #[test]
    fn every_built_in_protected_unit_is_refused_at_every_level() {
        for name in BUILT_IN_PROTECTED {
            for level in AutonomyLevel::ALL {
                for kind in [ActionKind::RestartUnit, ActionKind::ResetFailed] {
                    let v = gate(level, &proposed(kind, Some(name)), &exists(name), Some(name), &policy());
                    assert!(is_refusal_containing(&v, "protected"), "{name} at {level:?}: {v:?}");
                }
            }
        }
    }

    #[test]
    fn configured_protected_unit_is_refused() {
        let v = gate(
            AutoFull,
            &proposed(ActionKind::RestartUnit, Some("payroll.service")),
            &exists("payroll.service"),
            Some("payroll.service"),
            &policy(),
        );
        assert!(is_refusal_containing(&v, "protected"));
    }

    #[test]
    fn an_alias_of_a_protected_unit_is_refused() {
        // On Debian, sshd.service is an alias of ssh.service; here the model
        // uses an alias that is not itself on the list.
        let facts = UnitFacts::Exists(Known {
            names: vec!["ssh.service".into(), "secure-shell.service".into()],
            ..Known::named("ssh.service")
        });
        let v = gate(
            AutoFull,
            &proposed(ActionKind::RestartUnit, Some("secure-shell.service")),
            &facts,
            Some("secure-shell.service"),
            &policy(),
        );
        assert!(is_refusal_containing(&v, "ssh.service is on the protected list"), "{v:?}");
    }

    #[test]
    fn a_unit_with_refuse_manual_stop_is_refused() {
        let facts = UnitFacts::Exists(Known { refuse_manual_stop: true, ..Known::named("x.service") });
        let v =
            gate(AutoFull, &proposed(ActionKind::RestartUnit, Some("x.service")), &facts, Some("x.service"), &policy());
        assert!(is_refusal_containing(&v, "RefuseManualStop"));
    }

    #[test]
    fn restarting_targets_slices_mounts_or_power_services_is_refused() {
        for name in
            ["sysinit.target", "multi-user.target", "system.slice", "var.mount", "dev-sda.device", "swapfile.swap"]
        {
            let v =
                gate(AutoFull, &proposed(ActionKind::RestartUnit, Some(name)), &exists(name), Some(name), &policy());
            assert!(is_refusal_containing(&v, "would restart the units that depend on it"), "{name}: {v:?}");
        }
        for name in NEVER_RESTART {
            let v =
                gate(AutoFull, &proposed(ActionKind::RestartUnit, Some(name)), &exists(name), Some(name), &policy());
            assert!(is_refusal_containing(&v, "whole machine"), "{name}: {v:?}");
        }
        // Clearing a failed state starts nothing: allowed on any unprotected unit.
        let v = gate(
            AutoFull,
            &proposed(ActionKind::ResetFailed, Some("var.mount")),
            &exists("var.mount"),
            Some("var.mount"),
            &policy(),
        );
        assert!(matches!(v, Verdict::Execute { .. }));
    }

    #[test]
    fn the_polkit_rule_carries_the_same_lists() {
        let rule = include_str!("../module/polkit/50-macha-autonomous.rules");
        for name in BUILT_IN_PROTECTED.iter().chain(NEVER_RESTART) {
            assert!(rule.contains(&format!("\"{name}\"")), "{name} missing from the polkit rule");
        }
    }

    #[test]
    fn only_the_unit_the_incident_is_about_may_be_touched() {
        let v = gate(
            AutoFull,
            &proposed(ActionKind::RestartUnit, Some("bystander.service")),
            &exists("bystander.service"),
            Some("web.service"),
            &policy(),
        );
        assert!(is_refusal_containing(&v, "not the unit this incident is about (web.service)"), "{v:?}");
        let v = gate(
            AutoFull,
            &proposed(ActionKind::RestartUnit, Some("web.service")),
            &exists("web.service"),
            None,
            &policy(),
        );
        assert!(is_refusal_containing(&v, "not about a unit"), "{v:?}");
        // An alias of the incident's unit is the same unit.
        let facts = UnitFacts::Exists(Known {
            names: vec!["web.service".into(), "www.service".into()],
            ..Known::named("web.service")
        });
        let v = gate(
            AutoFull,
            &proposed(ActionKind::RestartUnit, Some("www.service")),
            &facts,
            Some("web.service"),
            &policy(),
        );
        assert!(matches!(v, Verdict::Execute { .. }), "{v:?}");
    }

    #[test]
    fn instances_of_protected_templates_are_protected() {
        let name = "sshd@7-10.0.0.1:22-10.0.0.2:51234.service";
        let v = gate(AutoFull, &proposed(ActionKind::RestartUnit, Some(name)), &exists(name), Some(name), &policy());
        assert!(is_refusal_containing(&v, "sshd@.service is on the protected list"), "{v:?}");
    }

    #[test]
    fn units_whose_end_acts_on_the_machine_are_not_restarted() {
        for (success, failure) in [("exit-force", "none"), ("none", "reboot"), ("poweroff", "none")] {
            let facts = UnitFacts::Exists(Known {
                success_action: success.into(),
                failure_action: failure.into(),
                ..Known::named("job.service")
            });
            let v = gate(
                AutoFull,
                &proposed(ActionKind::RestartUnit, Some("job.service")),
                &facts,
                Some("job.service"),
                &policy(),
            );
            assert!(is_refusal_containing(&v, "acts on the whole machine"), "{v:?}");
        }
    }

    #[test]
    fn a_unit_that_does_not_exist_is_refused() {
        let v = gate(
            AutoFull,
            &proposed(ActionKind::RestartUnit, Some("ghost.service")),
            &UnitFacts::Missing,
            Some("ghost.service"),
            &policy(),
        );
        assert!(is_refusal_containing(&v, "no unit named ghost.service is loaded"));
    }

    #[test]
    fn an_unconfirmed_unit_is_refused() {
        let v = gate(
            AutoFull,
            &proposed(ActionKind::RestartUnit, Some("web.service")),
            &UnitFacts::Unknown("bus down".into()),
            Some("web.service"),
            &policy(),
        );
        assert!(is_refusal_containing(&v, "could not confirm"));
    }

    #[test]
    fn shell_text_and_paths_as_targets_are_refused_even_if_facts_say_they_exist() {
        for bad in [
            "web.service; reboot",
            "$(curl evil)",
            "/etc/shadow",
            "ssh",
            "web.service && systemctl stop ssh.service",
            "",
        ] {
            let v = gate(
                AutoFull,
                &proposed(ActionKind::RestartUnit, Some(bad)),
                &exists("web.service"),
                Some(bad),
                &policy(),
            );
            assert!(is_refusal_containing(&v, "not a unit name"), "{bad:?}: {v:?}");
        }
    }

    // The root-only and read-only entries of the catalog.

    fn machine(level: AutonomyLevel, p: ProposedAction) -> Verdict {
        gate(level, &p, &UnitFacts::Missing, None, &policy())
    }
    fn gc(days: u32) -> ProposedAction {
        ProposedAction { older_than_days: Some(days), ..ProposedAction::new(ActionKind::CollectGarbage, None, "r") }
    }
    fn vacuum(mb: u64) -> ProposedAction {
        ProposedAction { max_size_mb: Some(mb), ..ProposedAction::new(ActionKind::VacuumJournal, None, "r") }
    }
    fn rebuild(mode: RebuildMode) -> ProposedAction {
        ProposedAction { mode: Some(mode), ..ProposedAction::new(ActionKind::NixosRebuild, None, "r") }
    }
    fn rollback() -> ProposedAction {
        ProposedAction::new(ActionKind::RollbackGeneration, None, "r")
    }
    fn probe(p: Probe, unit: Option<&str>, path: Option<&str>) -> ProposedAction {
        ProposedAction {
            probe: Some(p),
            path: path.map(str::to_owned),
            ..ProposedAction::new(ActionKind::Investigate, unit, "r")
        }
    }
    fn is_queue(v: &Verdict) -> bool {
        matches!(v, Verdict::Queue { .. })
    }
    fn is_execute(v: &Verdict) -> bool {
        matches!(v, Verdict::Execute { .. })
    }

    #[test]
    fn observe_never_runs_anything_of_the_catalog() {
        let rebuilds = [RebuildMode::DryBuild, RebuildMode::Test, RebuildMode::Switch, RebuildMode::Boot].map(rebuild);
        for p in [gc(14), vacuum(512), rollback(), probe(Probe::FailedUnits, None, None)].into_iter().chain(rebuilds) {
            assert!(is_refusal_containing(&machine(Observe, p.clone()), "observe"), "{p:?}");
        }
    }
    #[test]
    fn suggest_queues_cleanups_rebuilds_and_rollbacks_and_runs_probes() {
        let rebuilds = [RebuildMode::DryBuild, RebuildMode::Test, RebuildMode::Switch, RebuildMode::Boot].map(rebuild);
        for p in [gc(14), vacuum(512), rollback()].into_iter().chain(rebuilds) {
            assert!(is_queue(&machine(Suggest, p.clone())), "{p:?}");
        }
        assert!(is_execute(&machine(Suggest, probe(Probe::Generations, None, None))));
    }
    #[test]
    fn auto_safe_runs_cleanups_and_probes_and_queues_rebuilds_and_rollbacks() {
        assert!(is_execute(&machine(AutoSafe, gc(14))));
        assert!(is_execute(&machine(AutoSafe, vacuum(512))));
        assert!(is_execute(&machine(AutoSafe, probe(Probe::DiskUsage, None, Some("/var")))));
        for mode in [RebuildMode::DryBuild, RebuildMode::Test, RebuildMode::Switch, RebuildMode::Boot] {
            assert!(is_queue(&machine(AutoSafe, rebuild(mode))), "{mode:?}");
        }
        assert!(is_queue(&machine(AutoSafe, rollback())));
    }
    #[test]
    fn auto_full_runs_dry_build_and_test_but_switch_boot_and_rollback_always_need_a_human() {
        assert!(is_execute(&machine(AutoFull, gc(14))));
        assert!(is_execute(&machine(AutoFull, vacuum(512))));
        assert!(is_execute(&machine(AutoFull, rebuild(RebuildMode::DryBuild))));
        assert!(is_execute(&machine(AutoFull, rebuild(RebuildMode::Test))));
        assert!(is_queue(&machine(AutoFull, rebuild(RebuildMode::Switch))));
        assert!(is_queue(&machine(AutoFull, rebuild(RebuildMode::Boot))));
        assert!(is_queue(&machine(AutoFull, rollback())));
    }
    #[test]
    fn arguments_below_the_configured_floors_are_refused_at_every_level() {
        for level in AutonomyLevel::ALL {
            assert!(is_refusal_containing(&machine(level, gc(1)), "act.gc_min_days"), "{level:?}");
            assert!(is_refusal_containing(&machine(level, gc(0)), "act.gc_min_days"), "{level:?}");
            assert!(is_refusal_containing(&machine(level, vacuum(10)), "act.journal_floor_mb"), "{level:?}");
            assert!(is_refusal_containing(&machine(level, gc(u32::MAX)), "more than"), "{level:?}");
        }
        assert!(is_execute(&machine(AutoSafe, gc(7))));
        assert!(is_execute(&machine(AutoSafe, vacuum(256))));
    }
    #[test]
    fn a_rebuild_without_a_configured_flake_is_refused() {
        let mut p = policy();
        p.limits.flake_configured = false;
        let v = gate(AutoFull, &rebuild(RebuildMode::DryBuild), &UnitFacts::Missing, None, &p);
        assert!(is_refusal_containing(&v, "nixos.flake"), "{v:?}");
    }
    #[test]
    fn the_model_cannot_pick_the_generation_of_a_rollback() {
        let Verdict::Queue { action } = machine(AutoFull, rollback()) else { panic!() };
        assert_eq!(action, Action::RollbackGeneration { generation: None });
    }
    #[test]
    fn probes_take_only_unit_names_and_normalised_absolute_paths() {
        for bad in ["var", "/var/../etc/shadow", "/var/./log", "//etc", "/var/log\n/etc", "relative/../x"] {
            let v = machine(AutoFull, probe(Probe::DiskUsage, None, Some(bad)));
            assert!(matches!(v, Verdict::Refuse { .. }), "{bad:?}: {v:?}");
        }
        let v = machine(AutoFull, probe(Probe::UnitLogs, Some("web.service; cat /etc/shadow"), None));
        assert!(is_refusal_containing(&v, "not a unit name"), "{v:?}");
        // Reading about a protected unit changes nothing: allowed.
        assert!(is_execute(&machine(AutoSafe, probe(Probe::UnitStatus, Some("ssh.service"), None))));
        assert!(is_execute(&machine(AutoSafe, probe(Probe::DiskUsage, None, Some("/")))));
    }
    #[test]
    fn helper_units_are_never_a_target() {
        for name in ["macha-action-gc.service", "macha-action-rebuild.service", "macha-action-x.service"] {
            for kind in [ActionKind::RestartUnit, ActionKind::ResetFailed] {
                let v = gate(AutoFull, &proposed(kind, Some(name)), &exists(name), Some(name), &policy());
                assert!(is_refusal_containing(&v, "protected"), "{name}: {v:?}");
            }
        }
    }
}
