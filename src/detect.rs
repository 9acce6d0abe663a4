//! Stage 2, detect: deterministic rules that turn a `Snapshot` into
//! `Incident`s with stable fingerprints.
//!
//! This is plain code over data: no I/O, no model. A healthy snapshot yields
//! no incident, and no incident means no call to the model.

use serde::Serialize;

use crate::config::DetectConfig;
use crate::observe::{Snapshot, Source};

/// What kind of problem an incident is; each kind has its own fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum IncidentKind {
    UnitFailed { unit: String },
    DiskFull { mount: String },
    MemoryPressure,
    ErrorBurst { unit: String },
}

/// The source whose reading an incident depends on. An incident is only
/// resolved when that source was read successfully and no longer shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    Systemd,
    Journal,
    Host,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    /// Stable identity across cycles, for example `unit-failed:nginx.service`.
    pub fingerprint: String,
    #[serde(flatten)]
    pub kind: IncidentKind,
    /// One line for humans.
    pub summary: String,
    /// Changes when the same incident happens again in a new way (the unit
    /// failed once more), so that it is decided again.
    pub evidence_key: String,
}

impl IncidentKind {
    pub fn fingerprint(&self) -> String {
        match self {
            Self::UnitFailed { unit } => format!("unit-failed:{unit}"),
            Self::DiskFull { mount } => format!("disk-full:{mount}"),
            Self::MemoryPressure => "memory-pressure".into(),
            Self::ErrorBurst { unit } => format!("error-burst:{unit}"),
        }
    }

    /// The unit an incident is about, the only one its actions may touch.
    pub fn unit(&self) -> Option<&str> {
        match self {
            Self::UnitFailed { unit } | Self::ErrorBurst { unit } => Some(unit),
            Self::DiskFull { .. } | Self::MemoryPressure => None,
        }
    }

    pub fn basis(&self) -> Basis {
        match self {
            Self::UnitFailed { .. } => Basis::Systemd,
            Self::ErrorBurst { .. } => Basis::Journal,
            Self::DiskFull { .. } | Self::MemoryPressure => Basis::Host,
        }
    }
}

/// The unit a stored fingerprint is about (`unit-failed:X`, `error-burst:X`).
pub fn unit_of(fingerprint: &str) -> Option<&str> {
    match fingerprint.split_once(':') {
        Some(("unit-failed" | "error-burst", unit)) => Some(unit),
        _ => None,
    }
}

/// The basis of a stored fingerprint, without re-parsing its kind.
pub fn basis_of(fingerprint: &str) -> Basis {
    match fingerprint.split_once(':').map_or(fingerprint, |(k, _)| k) {
        "unit-failed" => Basis::Systemd,
        "error-burst" => Basis::Journal,
        _ => Basis::Host,
    }
}

impl Snapshot {
    /// Whether the source an incident kind depends on was read this pass.
    pub fn saw(&self, basis: Basis) -> bool {
        match basis {
            Basis::Systemd => matches!(self.failed_units, Source::Ok(_)),
            Basis::Journal => matches!(self.journal, Source::Ok(_)),
            Basis::Host => matches!(self.host, Source::Ok(_)),
        }
    }
}

fn incident(kind: IncidentKind, summary: String, evidence_key: String) -> Incident {
    Incident { fingerprint: kind.fingerprint(), kind, summary, evidence_key }
}

/// Applies every rule to `snap`.
pub fn detect(snap: &Snapshot, cfg: &DetectConfig) -> Vec<Incident> {
    let mut out = Vec::new();
    let failed: Vec<&str> = snap.failed_units.ok().into_iter().flatten().map(|u| u.id.as_str()).collect();
    // A failed helper unit (macha-action-*) is reported by the action that
    // started it, in its record and notification; as an incident of its own
    // macha would be asked to act on its own action.
    let own = |unit: &str| unit.starts_with(crate::gate::HELPER_PREFIX);
    for unit in snap.failed_units.ok().into_iter().flatten().filter(|u| !own(&u.id)) {
        let result = unit.result.as_deref().unwrap_or("unknown");
        let summary = match unit.exec_main_status {
            Some(status) if status != 0 => format!("{} failed ({result}, exit status {status})", unit.id),
            _ => format!("{} failed ({result})", unit.id),
        };
        let when = unit.inactive_enter_timestamp.map(|t| t.timestamp_micros()).unwrap_or_default();
        let key = format!("{when}/{}", unit.n_restarts.unwrap_or_default());
        out.push(incident(IncidentKind::UnitFailed { unit: unit.id.clone() }, summary, key));
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
    if let Some(scan) = snap.journal.ok() {
        for (unit, &count) in &scan.per_unit {
            // A failed unit's errors are evidence of that failure, not a second incident.
            if count >= u64::from(cfg.error_burst_lines) && !failed.contains(&unit.as_str()) && !own(unit) {
                let summary = format!("{unit} logged {count} errors since the previous check");
                out.push(incident(IncidentKind::ErrorBurst { unit: unit.clone() }, summary, String::new()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::observe::host::{Filesystem, HostStats};
    use crate::observe::journal::ErrorScan;
    use crate::observe::systemd::UnitState;

    fn healthy() -> Snapshot {
        Snapshot {
            taken_at: chrono::Utc::now(),
            hostname: "h".into(),
            failed_units: Source::Ok(vec![]),
            journal: Source::Ok(ErrorScan::default()),
            unit_logs: BTreeMap::new(),
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
            invocation_id: String::new(),
            refuse_manual_stop: false,
            success_action: "none".into(),
            failure_action: "none".into(),
        }
    }

    #[test]
    fn healthy_snapshot_has_no_incident() {
        assert!(detect(&healthy(), &DetectConfig::default()).is_empty());
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
        let fps: Vec<String> = detect(&s, &DetectConfig::default()).into_iter().map(|i| i.fingerprint).collect();
        assert_eq!(fps, ["unit-failed:web.service", "disk-full:/", "memory-pressure", "error-burst:noisy.service"]);
    }

    #[test]
    fn thresholds_come_from_the_config() {
        let mut s = healthy();
        if let Source::Ok(h) = &mut s.host {
            h.filesystems[0].available = 30; // 70% used
        }
        assert!(detect(&s, &DetectConfig::default()).is_empty());
        let strict = DetectConfig { disk_full_percent: 70, ..DetectConfig::default() };
        assert_eq!(detect(&s, &strict)[0].fingerprint, "disk-full:/");
    }

    #[test]
    fn a_new_failure_of_the_same_unit_changes_the_evidence_key() {
        let mut s = healthy();
        s.failed_units = Source::Ok(vec![failed_unit("web.service", 1)]);
        let first = detect(&s, &DetectConfig::default()).remove(0);
        s.failed_units = Source::Ok(vec![failed_unit("web.service", 2)]);
        let second = detect(&s, &DetectConfig::default()).remove(0);
        assert_eq!(first.fingerprint, second.fingerprint);
        assert_ne!(first.evidence_key, second.evidence_key);
    }

    #[test]
    fn a_failed_source_yields_no_incident_from_it() {
        let mut s = healthy();
        s.failed_units = Source::Failed("bus down".into());
        assert!(detect(&s, &DetectConfig::default()).is_empty());
        assert!(!s.saw(Basis::Systemd) && s.saw(Basis::Host));
    }
}
