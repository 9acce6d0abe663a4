//! Stage 2, detect: deterministic rules that turn a `Snapshot` into
//! `Incident`s with stable fingerprints.
//!
//! This is plain code over data: no I/O, no model. A healthy snapshot yields
//! no incident, and no incident means no call to the model.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::DetectConfig;
use crate::ids::Fingerprint;
use crate::observe::systemd::UnitState;
use crate::observe::{Scope, Snapshot, Source};

/// What kind of problem an incident is; each kind has its own fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum IncidentKind {
    UnitFailed {
        unit: String,
    },
    /// systemd keeps restarting the unit by itself (`Restart=`).
    RestartLoop {
        unit: String,
    },
    DiskFull {
        mount: String,
    },
    MemoryPressure,
    ErrorBurst {
        unit: String,
    },
    /// A remote host the controller could not talk to (`remote`): nothing
    /// is decided for it, it is recorded and told.
    HostUnreachable {
        host: String,
    },
    /// Alertmanager's alerts of one name firing for this host
    /// (`alertmanager.listen`): one incident however many there are.
    Alert {
        name: String,
    },
}

/// The source whose reading an incident depends on. An incident is only
/// resolved when that source was read successfully and no longer shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    Systemd,
    /// systemd's signals, which tell its own restarts of a unit.
    Restarts,
    Journal,
    Host,
    /// Alertmanager's webhook (`alertmanager.listen`).
    Alerts,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Incident {
    /// Stable identity across cycles, for example `unit-failed:nginx.service`.
    pub fingerprint: Fingerprint,
    #[serde(flatten)]
    pub kind: IncidentKind,
    /// One line for humans.
    pub summary: String,
    /// Changes when the same incident happens again in a new way (the unit
    /// failed once more), so that it is decided again.
    pub evidence_key: String,
}

impl IncidentKind {
    pub fn fingerprint(&self) -> Fingerprint {
        match self {
            Self::UnitFailed { unit } => format!("unit-failed:{unit}").into(),
            Self::RestartLoop { unit } => format!("restart-loop:{unit}").into(),
            Self::DiskFull { mount } => format!("disk-full:{mount}").into(),
            Self::MemoryPressure => "memory-pressure".into(),
            Self::ErrorBurst { unit } => format!("error-burst:{unit}").into(),
            Self::HostUnreachable { host } => format!("{}{host}", crate::ids::HOST_UNREACHABLE).into(),
            Self::Alert { name } => format!("alert:{name}").into(),
        }
    }

    /// The unit an incident is about, the only one its actions may touch.
    pub fn unit(&self) -> Option<&str> {
        match self {
            Self::UnitFailed { unit } | Self::RestartLoop { unit } | Self::ErrorBurst { unit } => Some(unit),
            Self::DiskFull { .. } | Self::MemoryPressure | Self::HostUnreachable { .. } | Self::Alert { .. } => None,
        }
    }

    pub fn basis(&self) -> Basis {
        match self {
            Self::UnitFailed { .. } => Basis::Systemd,
            Self::RestartLoop { .. } => Basis::Restarts,
            Self::ErrorBurst { .. } => Basis::Journal,
            Self::DiskFull { .. } | Self::MemoryPressure | Self::HostUnreachable { .. } => Basis::Host,
            Self::Alert { .. } => Basis::Alerts,
        }
    }
}

/// The unit a stored fingerprint is about (`unit-failed:X`,
/// `restart-loop:X`, `error-burst:X`).
pub fn unit_of(fingerprint: &Fingerprint) -> Option<&str> {
    match fingerprint.as_str().split_once(':') {
        Some(("unit-failed" | "restart-loop" | "error-burst", unit)) => Some(unit),
        _ => None,
    }
}

/// The basis of a stored fingerprint, without re-parsing its kind; a
/// remote host's incident has the basis it has on that host.
pub fn basis_of(fingerprint: &Fingerprint) -> Basis {
    let fingerprint = fingerprint.on_host();
    match fingerprint.split_once(':').map_or(fingerprint, |(k, _)| k) {
        "unit-failed" => Basis::Systemd,
        "restart-loop" => Basis::Restarts,
        "error-burst" => Basis::Journal,
        "alert" => Basis::Alerts,
        _ => Basis::Host,
    }
}

impl Snapshot {
    /// Whether the source an incident kind depends on was read this pass.
    pub fn saw(&self, basis: Basis) -> bool {
        match basis {
            Basis::Systemd => matches!((&self.failed_units, &self.watched_units), (Source::Ok(_), Source::Ok(_))),
            Basis::Restarts => self.restarting.is_some() && self.saw(Basis::Systemd),
            Basis::Journal => matches!(self.journal, Source::Ok(_)) && self.scope == Scope::Full,
            Basis::Host => matches!(self.host, Source::Ok(_)),
            Basis::Alerts => self.alerts.is_some(),
        }
    }
}

fn incident(kind: IncidentKind, summary: String, evidence_key: String) -> Incident {
    Incident { fingerprint: kind.fingerprint(), kind, summary, evidence_key }
}

/// An incident the store holds open, as `detect` needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenIncident {
    pub fingerprint: Fingerprint,
    pub evidence_key: String,
}

/// The evidence key of a unit's failure: when it became inactive (the
/// failure) and systemd's own restart count, so that failing again, or
/// being restarted by systemd, is new evidence.
fn failure_key(unit: &UnitState) -> String {
    let when = unit.inactive_enter_timestamp.map(|t| t.timestamp_micros()).unwrap_or_default();
    format!("{when}/{}", unit.n_restarts.unwrap_or_default())
}

/// When the failure an evidence key of `failure_key` is about happened.
fn failed_at(evidence_key: &str) -> Option<DateTime<Utc>> {
    let micros: i64 = evidence_key.split_once('/')?.0.parse().ok()?;
    (micros > 0).then(|| DateTime::from_timestamp_micros(micros)).flatten()
}

/// The state the unit of a `unit-failed` incident must be back in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// Running: a target wants it, or it was running before (the reason).
    Running(String),
    /// A successful run after the failure: a oneshot, or a unit started on
    /// demand by a timer, socket or path.
    SuccessfulRun,
    /// Only not failed: nothing wants it running and it never was.
    NotFailed,
}

/// What `unit` should be doing, from how it is defined and wanted.
pub fn expected(unit: &UnitState) -> Expected {
    let oneshot = unit.service_type.as_deref() == Some("oneshot") && !unit.remain_after_exit;
    if oneshot || !unit.triggered_by.is_empty() {
        return Expected::SuccessfulRun;
    }
    if let Some(target) = unit.wanted_by.iter().find(|u| u.ends_with(".target")) {
        return Expected::Running(format!("wanted by {target}"));
    }
    if unit.active_enter_timestamp.is_some() {
        return Expected::Running("it was running before it failed".into());
    }
    Expected::NotFailed
}

/// Why `unit`, which failed at `failed_at` (its `InactiveEnterTimestamp`
/// then), is not yet back in the state it should be in; `None` once it is.
/// Clearing the failed state is not a repair: a unit that should run must
/// run, and a oneshot must have run successfully since.
pub fn still_down(unit: &UnitState, failed_at: Option<DateTime<Utc>>) -> Option<String> {
    let id = &unit.id;
    match unit.active_state.as_str() {
        "active" | "reloading" => return None,
        "failed" => return Some(format!("{id} is failed")),
        "activating" | "deactivating" => {
            return Some(format!("{id} is {} ({}): not settled yet", unit.active_state, unit.sub_state))
        }
        _ => {}
    }
    // Inactive. Only a run since the failure moves this timestamp: a reset
    // of the failed state leaves it as it was.
    let ran_since = unit.inactive_enter_timestamp != failed_at;
    let clean = unit.result.as_deref().is_none_or(|r| r == "success") && unit.exec_main_status.unwrap_or(0) == 0;
    match expected(unit) {
        Expected::NotFailed => None,
        Expected::SuccessfulRun if ran_since && clean => None,
        Expected::SuccessfulRun => {
            let status = unit.exec_main_status.filter(|s| *s != 0).map(|s| format!(", exit status {s}"));
            Some(format!(
                "{id} has not run successfully since it failed (it is {}{})",
                unit.active_state,
                status.unwrap_or_default()
            ))
        }
        Expected::Running(why) => Some(format!(
            "{id} is {} and nothing started it again since it failed; it should be running ({why})",
            unit.active_state
        )),
    }
}

/// Applies every rule to `snap`. `open` are the incidents the store holds
/// open: a unit incident stays while its unit is not back where it should
/// be, even once it is no longer failed.
pub fn detect(snap: &Snapshot, open: &[OpenIncident], cfg: &DetectConfig) -> Vec<Incident> {
    let mut out = Vec::new();
    let failed: Vec<&str> = snap.failed_units.ok().into_iter().flatten().map(|u| u.id.as_str()).collect();
    // A failed helper unit (macha-action-*) is reported by the action that
    // started it, in its record and notification; as an incident of its own
    // macha would be asked to act on its own action.
    let own = |unit: &str| unit.starts_with(crate::catalog::HELPER_PREFIX);
    for unit in snap.failed_units.ok().into_iter().flatten().filter(|u| !own(&u.id)) {
        let result = unit.result.as_deref().unwrap_or("unknown");
        let summary = match unit.exec_main_status {
            Some(status) if status != 0 => format!("{} failed ({result}, exit status {status})", unit.id),
            _ => format!("{} failed ({result})", unit.id),
        };
        out.push(incident(IncidentKind::UnitFailed { unit: unit.id.clone() }, summary, failure_key(unit)));
    }
    for open in open {
        let Some(unit) = open.fingerprint.as_str().strip_prefix("unit-failed:") else { continue };
        // A unit that no longer exists is absent, and its incident resolves.
        let Some(state) = snap.watched_units.ok().into_iter().flatten().find(|u| u.id == unit) else { continue };
        if let Some(why) = still_down(state, failed_at(&open.evidence_key)) {
            // The same evidence as when it failed: nothing new to decide.
            out.push(incident(IncidentKind::UnitFailed { unit: unit.to_owned() }, why, open.evidence_key.clone()));
        }
    }
    for r in snap.restarting.iter().flatten().filter(|r| !own(&r.unit) && !failed.contains(&r.unit.as_str())) {
        if r.restarts >= cfg.restart_loop_restarts as usize {
            let summary = format!(
                "{} was restarted by systemd {} times in {} s (now {}/{})",
                r.unit, r.restarts, cfg.restart_loop_window, r.active_state, r.sub_state
            );
            out.push(incident(IncidentKind::RestartLoop { unit: r.unit.clone() }, summary, String::new()));
        }
    }
    if let Some(host) = snap.host.ok() {
        for fs in &host.filesystems {
            let used = fs.used_percent();
            if used >= f64::from(cfg.disk_full_percent) {
                let summary = format!("{} is {used:.0}% full ({} of {} bytes free)", fs.mount, fs.available, fs.total);
                out.push(incident(IncidentKind::DiskFull { mount: fs.mount.clone() }, summary, String::new()));
            }
        }
        let mem = host.memory_percent();
        if mem >= f64::from(cfg.memory_pressure_percent) {
            let summary = format!("memory is {mem:.0}% used ({} of {} bytes)", host.memory_used, host.memory_total);
            out.push(incident(IncidentKind::MemoryPressure, summary, String::new()));
        }
    }
    out.extend(alert_incidents(snap.alerts.iter().flatten()));
    if let Some(scan) = snap.journal.ok() {
        for (unit, &count) in &scan.per_unit {
            // A failed unit's errors are evidence of that failure, not a second incident.
            if count >= u64::from(cfg.error_burst_lines) && !failed.contains(&unit.as_str()) && !own(unit) {
                let summary = match scan.window_secs {
                    Some(secs) => format!("{unit} logged {count} errors in the last {secs} s"),
                    None => format!("{unit} logged {count} errors since the previous check"),
                };
                out.push(incident(IncidentKind::ErrorBurst { unit: unit.clone() }, summary, String::new()));
            }
        }
    }
    out
}

/// The most alert names that are incidents at once; the alerts of further
/// names wait until one resolves (a flood of alerts of many names is never
/// as many decisions).
pub const MAX_ALERT_INCIDENTS: usize = 20;

/// The alerts firing for this host, one incident per alert name (the
/// earliest-started names first, at most [`MAX_ALERT_INCIDENTS`]). Its
/// evidence key changes with the set of alerts of that name, so that a new
/// one makes it decided again.
fn alert_incidents<'a>(alerts: impl Iterator<Item = &'a crate::observe::alerts::Alert>) -> Vec<Incident> {
    let mut by_name: std::collections::BTreeMap<&str, Vec<&crate::observe::alerts::Alert>> = Default::default();
    for a in alerts {
        by_name.entry(a.name.as_str()).or_default().push(a);
    }
    let mut groups: Vec<_> = by_name.into_iter().collect();
    groups.sort_by_key(|(name, alerts)| (alerts.iter().map(|a| a.starts_at).min(), *name));
    groups
        .into_iter()
        .take(MAX_ALERT_INCIDENTS)
        .map(|(name, alerts)| {
            let said =
                alerts.iter().find_map(|a| a.annotations.get("summary")).map(|s| crate::text::cut(s, 200, "..."));
            let summary = match (alerts.len(), said) {
                (1, Some(s)) => format!("alert {name} firing: {}", crate::text::one_line(&s)),
                (1, None) => format!("alert {name} firing"),
                (n, Some(s)) => format!("alert {name} firing for {n} targets: {}", crate::text::one_line(&s)),
                (n, None) => format!("alert {name} firing for {n} targets"),
            };
            let mut key: Vec<String> =
                alerts.iter().map(|a| format!("{}@{}", a.fingerprint, a.starts_at.timestamp())).collect();
            key.sort();
            let key =
                format!("{:x}", sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(key.join(","))));
            incident(IncidentKind::Alert { name: name.to_owned() }, summary, key[..16].to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::observe::host::{Filesystem, HostStats};
    use crate::observe::journal::ErrorScan;
    use crate::observe::systemd::UnitState;

    #[test]
    fn alerts_are_one_incident_per_name_bounded_and_decided_again_when_a_new_one_fires() {
        use crate::observe::alerts::Alert;
        let alert = |name: &str, fp: &str, minute: u32| Alert {
            name: name.into(),
            fingerprint: fp.into(),
            labels: BTreeMap::new(),
            annotations: [("summary".to_owned(), format!("{name} is down"))].into(),
            starts_at: chrono::DateTime::parse_from_rfc3339(&format!("2026-12-07T00:{minute:02}:00Z")).unwrap().into(),
        };
        let mut snap = healthy();
        snap.alerts = Some((0..300).map(|i| alert("Down", &format!("d{i}"), 1)).collect());
        let one = detect(&snap, &[], &DetectConfig::default());
        assert_eq!(one.len(), 1);
        assert_eq!(
            (one[0].fingerprint.as_str(), one[0].summary.as_str()),
            ("alert:Down", "alert Down firing for 300 targets: Down is down")
        );
        assert_eq!(basis_of(&one[0].fingerprint), Basis::Alerts);
        // One more of the name: the same incident, with new evidence.
        snap.alerts.as_mut().unwrap().push(alert("Down", "d300", 2));
        let again = detect(&snap, &[], &DetectConfig::default());
        assert_eq!(again[0].fingerprint, one[0].fingerprint);
        assert_ne!(again[0].evidence_key, one[0].evidence_key);
        // Many names: the earliest first, no more than the bound.
        snap.alerts = Some((0..50).map(|i| alert(&format!("N{i:02}"), &format!("n{i}"), 59 - i)).collect());
        let many = detect(&snap, &[], &DetectConfig::default());
        assert_eq!(many.len(), MAX_ALERT_INCIDENTS);
        assert_eq!(many[0].fingerprint, "alert:N49");
        // No alerts read (no webhook): nothing opens, nothing resolves.
        snap.alerts = None;
        assert!(detect(&snap, &[], &DetectConfig::default()).is_empty());
        assert!(!snap.saw(Basis::Alerts));
    }

    fn healthy() -> Snapshot {
        Snapshot {
            taken_at: chrono::Utc::now(),
            hostname: "h".into(),
            failed_units: Source::Ok(vec![]),
            watched_units: Source::Ok(vec![]),
            journal: Source::Ok(ErrorScan::default()),
            unit_logs: BTreeMap::new(),
            restarting: None,
            alerts: None,
            scope: Scope::Full,
            host: Source::Ok(HostStats {
                cpu_count: 2,
                cpu_percent: Some(3.0),
                load: [0.1, 0.1, 0.1],
                memory_total: 1000,
                memory_used: 300,
                swap_total: 0,
                swap_used: 0,
                filesystems: vec![Filesystem { mount: "/".into(), fs_type: "ext4".into(), total: 100, available: 50 }],
                uptime_secs: 10,
                boot_id: "b".into(),
            }),
        }
    }

    fn failed_unit(id: &str, restarts: u32) -> UnitState {
        UnitState {
            id: id.into(),
            names: vec![id.into()],
            description: String::new(),
            load_state: "loaded".into(),
            active_state: "failed".into(),
            sub_state: "failed".into(),
            result: Some("exit-code".into()),
            n_restarts: Some(restarts),
            exec_main_status: Some(3),
            inactive_enter_timestamp: None,
            active_enter_timestamp: None,
            invocation_id: String::new(),
            service_type: Some("simple".into()),
            remain_after_exit: false,
            wanted_by: Vec::new(),
            triggered_by: Vec::new(),
            has_job: false,
            refuse_manual_stop: false,
            success_action: "none".into(),
            failure_action: "none".into(),
        }
    }

    fn at(secs: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0)
    }

    /// `id` failed at `at(0)` (exit status 2) after running a while.
    fn failed_service(id: &str) -> UnitState {
        UnitState {
            exec_main_status: Some(2),
            inactive_enter_timestamp: at(0),
            active_enter_timestamp: at(-60),
            ..failed_unit(id, 0)
        }
    }

    /// `unit` after `systemctl reset-failed`: inactive, `Result` reset to
    /// success, its timestamps and exit status as they were.
    fn reset(unit: &UnitState) -> UnitState {
        UnitState {
            active_state: "inactive".into(),
            sub_state: "dead".into(),
            result: Some("success".into()),
            n_restarts: Some(0),
            ..unit.clone()
        }
    }

    fn open(unit: &UnitState) -> OpenIncident {
        OpenIncident { fingerprint: format!("unit-failed:{}", unit.id).into(), evidence_key: failure_key(unit) }
    }

    #[test]
    fn healthy_snapshot_has_no_incident() {
        assert!(detect(&healthy(), &[], &DetectConfig::default()).is_empty());
    }

    #[test]
    fn each_rule_produces_its_fingerprint() {
        let mut s = healthy();
        s.failed_units = Source::Ok(vec![failed_unit("web.service", 0)]);
        if let Source::Ok(h) = &mut s.host {
            h.filesystems[0].available = 5;
            h.memory_used = 950;
        }
        let mut scan = ErrorScan::default();
        scan.per_unit.insert("noisy.service".into(), 25);
        scan.per_unit.insert("quiet.service".into(), 2);
        scan.per_unit.insert("web.service".into(), 40);
        s.journal = Source::Ok(scan);
        let fps: Vec<Fingerprint> =
            detect(&s, &[], &DetectConfig::default()).into_iter().map(|i| i.fingerprint).collect();
        assert_eq!(fps, ["unit-failed:web.service", "disk-full:/", "memory-pressure", "error-burst:noisy.service"]);
    }

    #[test]
    fn thresholds_come_from_the_config() {
        let mut s = healthy();
        if let Source::Ok(h) = &mut s.host {
            h.filesystems[0].available = 30; // 70% used
        }
        assert!(detect(&s, &[], &DetectConfig::default()).is_empty());
        let strict = DetectConfig { disk_full_percent: 70, ..DetectConfig::default() };
        assert_eq!(detect(&s, &[], &strict)[0].fingerprint, "disk-full:/");
    }

    #[test]
    fn a_restart_loop_is_told_by_the_signals_and_ends_in_a_failure_when_systemd_gives_up() {
        use crate::observe::units::Restarting;
        let looping = |restarts: usize, active: &str| Restarting {
            unit: "crashy.service".into(),
            restarts,
            n_restarts: Some(restarts as u32),
            since: chrono::Utc::now(),
            active_state: active.into(),
            sub_state: "auto-restart".into(),
        };
        let cfg = DetectConfig::default();
        let mut s = healthy();
        s.restarting = Some(vec![looping(2, "activating")]);
        assert!(detect(&s, &[], &cfg).is_empty(), "two restarts are watched, not decided");
        s.restarting = Some(vec![looping(3, "activating")]);
        let found = detect(&s, &[], &cfg);
        assert_eq!(found[0].fingerprint, "restart-loop:crashy.service");
        assert!(found[0].summary.contains("restarted by systemd 3 times"), "{}", found[0].summary);
        // Shown failed by the signals between a crash and its restart: systemd's
        // own list says it is not failed, so it is still a loop.
        s.restarting = Some(vec![looping(3, "failed")]);
        assert_eq!(detect(&s, &[], &cfg)[0].fingerprint, "restart-loop:crashy.service");
        // systemd gave up: a failure, and no loop.
        s.failed_units = Source::Ok(vec![failed_unit("crashy.service", 3)]);
        let found: Vec<String> = detect(&s, &[], &cfg).iter().map(|i| i.fingerprint.to_string()).collect();
        assert_eq!(found, ["unit-failed:crashy.service"]);
        // Without signals (macha-check) restart loops are neither seen nor resolved.
        s.restarting = None;
        assert!(!s.saw(Basis::Restarts));
    }

    #[test]
    fn a_new_failure_of_the_same_unit_changes_the_evidence_key() {
        let mut s = healthy();
        s.failed_units = Source::Ok(vec![failed_unit("web.service", 1)]);
        let first = detect(&s, &[], &DetectConfig::default()).remove(0);
        s.failed_units = Source::Ok(vec![failed_unit("web.service", 2)]);
        let second = detect(&s, &[], &DetectConfig::default()).remove(0);
        assert_eq!(first.fingerprint, second.fingerprint);
        assert_ne!(first.evidence_key, second.evidence_key);
    }

    #[test]
    fn clearing_the_failed_state_of_a_wanted_service_is_no_repair() {
        let failed = UnitState { wanted_by: vec!["multi-user.target".into()], ..failed_service("pay.service") };
        assert_eq!(expected(&failed), Expected::Running("wanted by multi-user.target".into()));
        let why = still_down(&reset(&failed), failed.inactive_enter_timestamp).expect("still down");
        assert!(why.contains("inactive") && why.contains("wanted by multi-user.target"), "{why}");
    }

    #[test]
    fn a_service_that_ran_before_it_failed_must_run_again() {
        let failed = failed_service("web.service");
        assert_eq!(expected(&failed), Expected::Running("it was running before it failed".into()));
        assert!(still_down(&reset(&failed), failed.inactive_enter_timestamp).is_some());
        let running = UnitState { active_state: "active".into(), sub_state: "running".into(), ..reset(&failed) };
        assert_eq!(still_down(&running, failed.inactive_enter_timestamp), None);
    }

    #[test]
    fn a_unit_mid_restart_is_not_settled() {
        let failed = failed_service("web.service");
        let starting = UnitState {
            active_state: "activating".into(),
            sub_state: "start-pre".into(),
            has_job: true,
            ..reset(&failed)
        };
        assert!(still_down(&starting, failed.inactive_enter_timestamp).unwrap().contains("not settled"));
    }

    #[test]
    fn a_oneshot_is_repaired_by_a_successful_run_after_the_failure_only() {
        let failed = UnitState { service_type: Some("oneshot".into()), ..failed_service("report.service") };
        assert_eq!(expected(&failed), Expected::SuccessfulRun);
        let cleared = reset(&failed);
        assert!(still_down(&cleared, failed.inactive_enter_timestamp).unwrap().contains("exit status 2"));
        // Failed in ExecStartPre: the main process's status is an older one.
        let pre = UnitState { exec_main_status: Some(0), ..cleared.clone() };
        assert!(still_down(&pre, failed.inactive_enter_timestamp).is_some(), "no run since the failure");
        let rerun = UnitState { exec_main_status: Some(0), inactive_enter_timestamp: at(30), ..cleared.clone() };
        assert_eq!(still_down(&rerun, failed.inactive_enter_timestamp), None);
        let failed_rerun = UnitState { inactive_enter_timestamp: at(30), ..cleared };
        assert!(still_down(&failed_rerun, failed.inactive_enter_timestamp).is_some(), "exit status 2 again");
    }

    #[test]
    fn a_timers_service_and_a_oneshot_that_remains_follow_their_kind() {
        let timed = UnitState { triggered_by: vec!["backup.timer".into()], ..failed_service("backup.service") };
        assert_eq!(expected(&timed), Expected::SuccessfulRun);
        let remains = UnitState {
            service_type: Some("oneshot".into()),
            remain_after_exit: true,
            wanted_by: vec!["multi-user.target".into()],
            ..failed_service("setup.service")
        };
        assert!(matches!(expected(&remains), Expected::Running(_)));
    }

    #[test]
    fn a_unit_nothing_wants_that_never_ran_is_repaired_once_not_failed() {
        let failed = UnitState { active_enter_timestamp: None, ..failed_service("once.service") };
        assert_eq!(expected(&failed), Expected::NotFailed);
        assert_eq!(still_down(&reset(&failed), failed.inactive_enter_timestamp), None);
    }

    #[test]
    fn an_open_unit_incident_stays_while_its_unit_is_down_with_the_same_evidence() {
        let failed = UnitState { wanted_by: vec!["multi-user.target".into()], ..failed_service("pay.service") };
        let open = [open(&failed)];
        let mut s = healthy();
        s.watched_units = Source::Ok(vec![reset(&failed)]);
        let incidents = detect(&s, &open, &DetectConfig::default());
        assert_eq!(incidents.len(), 1);
        assert_eq!(incidents[0].fingerprint, "unit-failed:pay.service");
        assert_eq!(incidents[0].evidence_key, open[0].evidence_key, "nothing new to decide");
        assert!(incidents[0].summary.contains("should be running"), "{}", incidents[0].summary);

        let running = UnitState { active_state: "active".into(), ..reset(&failed) };
        s.watched_units = Source::Ok(vec![running]);
        assert!(detect(&s, &open, &DetectConfig::default()).is_empty(), "back up: resolved");
        s.watched_units = Source::Ok(vec![]);
        assert!(detect(&s, &open, &DetectConfig::default()).is_empty(), "gone: resolved");
        s.watched_units = Source::Failed("bus down".into());
        assert!(detect(&s, &open, &DetectConfig::default()).is_empty());
        assert!(!s.saw(Basis::Systemd), "unread: not resolved either");
    }

    #[test]
    fn a_failed_source_yields_no_incident_from_it() {
        let mut s = healthy();
        s.failed_units = Source::Failed("bus down".into());
        assert!(detect(&s, &[], &DetectConfig::default()).is_empty());
        assert!(!s.saw(Basis::Systemd) && s.saw(Basis::Host));
    }
}
