//! The audit trail and the cycle's report of the version before typed
//! outcomes, read and written again by this one. `tests/fixtures/audit-issue11/`
//! was written by the code of issue 11 (main before issue 12): its
//! `audit::append` for every kind of record and outcome, and its
//! `CycleReport` as `macha-check --json` prints it. Needs no root.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use macha::audit::{
    self, ActionOutcome, ActionRecord, DecisionOutcome, DecisionRecord, IncidentEvent, IncidentRecord, Origin,
};
use macha::config::AutonomyLevel;
use macha::ids::ApprovalId;
use macha::report::{ActionReport, ActionResult, CycleReport, DecisionReport, FailedSource, IncidentReport};
use macha::rotation::Rotation;
use macha::state_dir::StateDir;
use macha::store::Novelty;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit-issue11").join(name)
}

fn lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(name)).unwrap().lines().map(str::to_owned).collect()
}

fn typed<T: serde::de::DeserializeOwned>(name: &str) -> Vec<T> {
    lines(name).iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}: {l}"))).collect()
}

#[test]
fn the_records_of_the_version_before_read_as_typed_records() {
    let actions: Vec<ActionRecord> = typed(audit::ACTIONS);
    let outcomes: Vec<ActionOutcome> = actions.iter().map(|r| r.outcome).collect();
    use ActionOutcome::*;
    assert_eq!(
        outcomes,
        [
            Started,
            Succeeded,
            Interrupted,
            Deferred,
            Queued,
            AlreadyQueued,
            Escalated,
            Proposed,
            Refused,
            Approved,
            Failed,
            Rejected
        ]
    );
    let approvals: Vec<(Origin, Option<ApprovalId>)> =
        actions.iter().filter(|r| r.by.is_some()).map(|r| (r.origin, r.approval_id)).collect();
    let (three, four) = (Some(ApprovalId::new(3)), Some(ApprovalId::new(4)));
    assert_eq!(approvals, [(Origin::Approval, three), (Origin::Approval, three), (Origin::Approval, four)]);

    let decisions: Vec<DecisionRecord> = typed(audit::DECISIONS);
    let outcomes: Vec<DecisionOutcome> = decisions.iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, [DecisionOutcome::Decided, DecisionOutcome::Failed, DecisionOutcome::Failed]);
    assert_eq!(decisions[2].repeated.as_ref().map(|r| r.count), Some(4));

    let incidents: Vec<IncidentRecord> = typed(audit::INCIDENTS);
    let events: Vec<IncidentEvent> = incidents.iter().map(|r| r.event).collect();
    assert_eq!(events, [IncidentEvent::Opened, IncidentEvent::Resolved]);
}

/// The fixture's records appended again by this version: the same bytes,
/// so the same hash chain (the chain hashes each line as written).
#[test]
fn the_same_records_are_written_as_the_version_before_wrote_them() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let rotation = Rotation { max_bytes: u64::MAX, files: 3 };
    fn again<T: serde::de::DeserializeOwned + serde::Serialize>(state: &StateDir, name: &str, rotation: Rotation) {
        for r in typed::<T>(name) {
            audit::append(state, name, &r, rotation).unwrap();
        }
    }
    again::<ActionRecord>(&state, audit::ACTIONS, rotation);
    again::<DecisionRecord>(&state, audit::DECISIONS, rotation);
    again::<IncidentRecord>(&state, audit::INCIDENTS, rotation);
    for name in [audit::ACTIONS, audit::DECISIONS, audit::INCIDENTS] {
        let written = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(written.lines().collect::<Vec<_>>(), lines(name), "{name}");
        let chain = audit::verify(&state, name).unwrap();
        assert!(chain.broken.is_none(), "{name}: {chain:?}");
    }
}

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_780_000_000 + s, 0).unwrap()
}

/// The report the version before printed for these outcomes, built with
/// the typed ones: the same JSON.
#[test]
fn the_cycle_report_prints_as_before() {
    use ActionResult::*;
    let fp = "unit-failed:demo-web.service";
    let results = [Executed, Failed, Queued, AlreadyQueued, Escalated, Deferred, Proposed, Refused, Informed];
    let actions = results
        .iter()
        .enumerate()
        .map(|(i, r)| ActionReport {
            action: "restart_unit".into(),
            target: Some("demo-web.service".into()),
            result: *r,
            detail: format!("detail {i}"),
            reason: "why".into(),
            approval_id: (i % 2 == 0).then(|| ApprovalId::new(i as i64 + 1)),
        })
        .collect();
    let report = CycleReport {
        started_at: t(0),
        host: "web1".into(),
        autonomy_level: AutonomyLevel::AutoSafe,
        model_problems: vec!["p".into()],
        failed_sources: vec![FailedSource { source: "journal".into(), error: "gone".into() }],
        incidents: vec![
            IncidentReport {
                fingerprint: fp.into(),
                summary: "demo-web.service failed".into(),
                novelty: Novelty::New,
                decision: Some(DecisionReport {
                    outcome: DecisionOutcome::Decided,
                    source: None,
                    diagnosis: Some("d".into()),
                    suspect: None,
                    error: None,
                    actions,
                }),
            },
            IncidentReport {
                fingerprint: "memory-pressure".into(),
                summary: "s".into(),
                novelty: Novelty::Retry,
                decision: Some(DecisionReport {
                    outcome: DecisionOutcome::Failed,
                    source: None,
                    diagnosis: None,
                    suspect: None,
                    error: Some("e".into()),
                    actions: vec![],
                }),
            },
        ],
        resolved: vec!["disk-full:/".into()],
        wall_ms: 7,
    };
    let before = std::fs::read_to_string(fixture("cycle-report.json")).unwrap();
    assert_eq!(serde_json::to_string_pretty(&report).unwrap() + "\n", before);
}
