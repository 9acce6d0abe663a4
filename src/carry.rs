//! The one step from an action allowed to run to its record: carry it out
//! (`act`), queue its undo when it changed the system generation, and write
//! how it ended. The cycle takes it for an automatic action, after the
//! ledger recorded its start; the approval workflow takes it for an
//! approved item, after the approval was recorded. Both end the same way:
//! the same undo item, the same outcome record, the bookkeeping of their
//! origin (the ledger's row or the approval queue's item).

use chrono::Utc;

use crate::act;
use crate::audit::{self, ActionOutcome, ActionRecord, AuditError};
use crate::catalog::Action;
use crate::config::Config;
use crate::ids::ApprovalId;
use crate::ledger::Ledger;
use crate::state_dir::StateDir;
use crate::store::{ApprovalStatus, Store, StoreError};

/// Where the end of an action is kept besides the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bookkeeping {
    /// An automatic action counted by storm control (`ledger`) under this
    /// id; its end, should the trail refuse it, is kept for `Ledger::recover`.
    Automatic(i64),
    /// An approved item of the approval queue, claimed by this process.
    Approval(ApprovalId),
    /// An action a controller asked for with a person's approval there
    /// (`macha remote serve`): its request is in the trail already, its end
    /// goes there too, and nothing else keeps it.
    Remote,
}

/// Why the end of an approved item could not be kept. An automatic
/// action's end is never lost to an error: the ledger keeps it.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Where a step writes and reads.
pub struct Books<'a> {
    pub config: &'a Config,
    pub state: &'a StateDir,
    pub store: &'a Store,
}

/// Carries out `action` on `host` and records its end: `rec` is the record of the
/// action so far (who, what, for which incident); its outcome, detail and
/// what was observed before and after are filled in here. A rebuild or
/// rollback that moved the boot default leaves an undo item in the queue,
/// named in the detail (or why it could not be queued: the outcome is
/// recorded whatever happens to the undo). Returns the act's report, its
/// detail as recorded, and whether its end was kept (an automatic action's
/// always is: what the trail refuses, the ledger keeps).
pub async fn carry_out(
    books: &Books<'_>,
    host: &impl act::Executor,
    action: &Action,
    rec: &ActionRecord,
    keep: Bookkeeping,
) -> (act::Report, Result<(), RecordError>) {
    let open = books.store.open_incidents().map_err(|e| e.to_string());
    let report = host.execute(action, books.config, open).await;
    record_end(books, report, action, rec, keep)
}

/// The second half of `carry_out`: queues the undo `report` names and
/// records its end (a test gives it the report of a fake host).
pub(crate) fn record_end(
    books: &Books<'_>,
    mut report: act::Report,
    action: &Action,
    rec: &ActionRecord,
    keep: Bookkeeping,
) -> (act::Report, Result<(), RecordError>) {
    // The boot default now: after a revert that failed, where it left it.
    let now = report.revert.as_ref().and_then(|r| r.report.after.as_ref()).or(report.after.as_ref());
    let mut undo_item = None;
    if let (Some(undo), Some(from)) = (&report.undo, now.and_then(profile_of)) {
        let why = match keep {
            Bookkeeping::Automatic(_) => format!("undo {action}: go back to the system that ran before it"),
            Bookkeeping::Approval(id) => {
                format!("undo {action} (approval {id}): go back to the system that ran before it")
            }
            Bookkeeping::Remote => {
                format!("undo {action} (asked by a controller): go back to the system that ran before it")
            }
        };
        let ttl = books.config.act.approval_ttl();
        report.detail = match books.store.enqueue_undo(&rec.incident, from, undo, &why, ttl) {
            Ok((id, _)) => {
                undo_item = Some(id);
                format!("{}; to undo it: `macha-approve approve {id}`", report.detail)
            }
            Err(e) => format!("{}; its undo could not be queued: {e}", report.detail),
        };
    }
    let done = rec.ended(&report);
    let rotation = books.config.retention.audit();
    let reverted = revert_records(&report, rec, undo_item);
    let kept = match keep {
        Bookkeeping::Automatic(id) => {
            let done = ActionRecord { auto_id: Some(id), ..done };
            if let Err(e) = Ledger::new(books.store, books.state, rotation).finish(id, &done, report.succeeded) {
                tracing::error!(%action, "{e}");
            }
            Ok(())
        }
        Bookkeeping::Remote => audit::append(books.state, audit::ACTIONS, &done, rotation).map_err(RecordError::from),
        Bookkeeping::Approval(id) => {
            let status = if report.succeeded { ApprovalStatus::Executed } else { ApprovalStatus::Failed };
            books
                .store
                .finish(id, status, &report.detail)
                .map_err(RecordError::from)
                .and_then(|()| Ok(audit::append(books.state, audit::ACTIONS, &done, rotation)?))
        }
    };
    let kept = kept.and_then(|()| {
        for r in &reverted {
            if let Err(e) = audit::append(books.state, audit::ACTIONS, r, rotation) {
                tracing::error!(%action, "the record of its revert could not be written: {e}");
                return Err(e.into());
            }
        }
        Ok(())
    });
    (report, kept)
}

/// The records of a revert, after those of the change it took back: the
/// rollback (origin `revert`) and, when it failed, its escalation to a
/// human; once, since nothing tries a revert again.
fn revert_records(report: &act::Report, rec: &ActionRecord, undo: Option<ApprovalId>) -> Vec<ActionRecord> {
    let Some(revert) = &report.revert else { return Vec::new() };
    let base = ActionRecord {
        time: Utc::now(),
        action: crate::catalog::ActionKind::RollbackGeneration.as_str().into(),
        target: Some(revert.action.as_ref().map(Action::target).unwrap_or_else(|| "none".into())),
        origin: audit::Origin::Revert,
        by: None,
        auto_id: None,
        outcome: ActionOutcome::of_run(revert.report.succeeded),
        detail: revert.report.detail.clone(),
        before: revert.report.before.clone(),
        after: revert.report.after.clone(),
        health: None,
        ..rec.clone()
    };
    if revert.report.succeeded {
        return vec![base];
    }
    let again = match undo {
        Some(id) => format!("; once the cause is fixed, `macha-approve approve {id}` goes back"),
        None => String::new(),
    };
    let escalated = ActionRecord {
        outcome: ActionOutcome::Escalated,
        approval_id: undo.or(rec.approval_id),
        detail: format!(
            "a human is needed: {} broke the host and the revert failed ({}); it is not tried again{again}",
            rec.action, revert.report.detail
        ),
        ..base.clone()
    };
    vec![base, escalated]
}

/// The boot-default generation recorded by a verify probe.
pub fn profile_of(o: &act::Observed) -> Option<u32> {
    match o {
        act::Observed::Generations(g) => g.profile_generation,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::act::fake::{boot_and_run, config, generation, unit, FakeHost};
    use crate::audit::Origin;
    use crate::catalog::RebuildMode;
    use crate::observe::systemd::SystemdLink;
    use crate::store::ApprovalStatus;
    use crate::unit::UnitName;

    const WEB: &str = "web.service";
    const INCIDENT: &str = "unit-failed:web.service";

    struct Setup {
        _dir: tempfile::TempDir,
        config: Config,
        state: StateDir,
        store: Store,
    }

    impl Setup {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let config = config(dir.path(), 0);
            let state = StateDir::open(&config.state_dir).unwrap();
            let store = Store::open(&state).unwrap();
            Self { _dir: dir, config, state, store }
        }

        fn books(&self) -> Books<'_> {
            Books { config: &self.config, state: &self.state, store: &self.store }
        }

        /// The records of `actions.jsonl`, oldest first.
        fn trail(&self) -> Vec<Value> {
            let (records, torn) = audit::read_all(&self.state, audit::ACTIONS).unwrap();
            assert!(torn.is_empty());
            records
        }

        /// An automatic action counted and recorded as started by the ledger.
        fn begin(&self, action: &Action, rec: &ActionRecord) -> i64 {
            let ledger = Ledger::new(&self.store, &self.state, self.config.retention.audit());
            ledger.begin(&INCIDENT.into(), Utc::now(), action, rec).unwrap()
        }

        /// A pending item of the approval queue, claimed by alice.
        fn claimed(&self, action: &Action) -> ApprovalId {
            let (id, _) = self
                .store
                .enqueue_undo(&INCIDENT.into(), 7, action, "a test item", chrono::Duration::hours(1))
                .unwrap();
            let binding = self.store.approval(id).unwrap().unwrap().binding;
            assert!(self.store.claim(id, "alice", &binding).unwrap());
            id
        }

        /// What `action` does on `host`.
        async fn run(&self, host: &FakeHost, action: &Action) -> act::Report {
            let down = SystemdLink::Down("no systemd in a unit test".into());
            act::execute_on(Ok(host), &down, action, &self.config, Ok(Vec::new())).await
        }
    }

    fn record(action: &Action, origin: Origin) -> ActionRecord {
        ActionRecord {
            time: Utc::now(),
            host: "testhost".into(),
            incident: INCIDENT.into(),
            action: action.kind().as_str().into(),
            target: Some(action.target()),
            origin,
            approval_id: None,
            by: None,
            auto_id: None,
            outcome: ActionOutcome::Started,
            detail: String::new(),
            before: None,
            after: None,
            health: None,
        }
    }

    fn restart() -> Action {
        Action::RestartUnit { unit: UnitName::parse(WEB).unwrap() }
    }

    /// A host where restarting web.service brings it up (`up`) or not.
    fn host(up: bool) -> FakeHost {
        let failed = unit(WEB, "failed", "failed", "exit-code", "aa", 100);
        let after = if up { unit(WEB, "active", "running", "success", "bb", 100) } else { failed.clone() };
        FakeHost::new().with_unit(WEB, Some(failed)).then(WEB, vec![Some(after)])
    }

    /// A host whose rebuild helper moves the system from generation 1 to 2.
    fn switching(config: &Config) -> FakeHost {
        generation(&config.nixos.profile, 1);
        boot_and_run(config, 1);
        let after = config.clone();
        FakeHost::new().helper_does(move |_| {
            generation(&after.nixos.profile, 2);
            boot_and_run(&after, 2);
        })
    }

    #[tokio::test]
    async fn an_automatic_action_s_end_is_recorded_once_with_its_id_whether_it_worked_or_not() {
        for (up, outcome) in [(true, "succeeded"), (false, "failed")] {
            let s = Setup::new();
            let (action, rec) = (restart(), record(&restart(), Origin::Automatic));
            let id = s.begin(&action, &rec);
            let report = s.run(&host(up), &action).await;
            let (report, kept) = record_end(&s.books(), report, &action, &rec, Bookkeeping::Automatic(id));
            assert!(kept.is_ok());
            assert_eq!(report.succeeded, up);
            let trail = s.trail();
            assert_eq!(trail.len(), 2, "{trail:?}");
            assert_eq!(trail[0]["outcome"], "started");
            let end = &trail[1];
            assert_eq!(end["outcome"], outcome);
            assert_eq!(end["auto_id"], id);
            assert_eq!(end["origin"], "automatic");
            assert_eq!(end["detail"], report.detail.as_str());
            assert_eq!(end["before"]["active_state"], "failed");
            assert_eq!(end["after"]["active_state"], if up { "active" } else { "failed" });
            assert!(end.get("approval_id").is_none());
            // Nothing is queued for a unit action.
            assert!(s.store.pending().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn an_approved_item_ends_executed_or_failed_with_the_detail_and_a_record() {
        for (up, status, outcome) in
            [(true, ApprovalStatus::Executed, "succeeded"), (false, ApprovalStatus::Failed, "failed")]
        {
            let s = Setup::new();
            let action = restart();
            let id = s.claimed(&action);
            let rec =
                ActionRecord { approval_id: Some(id), by: Some("alice".into()), ..record(&action, Origin::Approval) };
            let report = s.run(&host(up), &action).await;
            let (report, kept) = record_end(&s.books(), report, &action, &rec, Bookkeeping::Approval(id));
            assert!(kept.is_ok());
            let item = s.store.approval(id).unwrap().unwrap();
            assert_eq!(item.status, status);
            assert_eq!(item.outcome.as_deref(), Some(report.detail.as_str()));
            let trail = s.trail();
            assert_eq!(trail.len(), 1, "{trail:?}");
            assert_eq!(trail[0]["outcome"], outcome);
            assert_eq!(trail[0]["origin"], "approval");
            assert_eq!(trail[0]["approval_id"], id.get());
            assert_eq!(trail[0]["by"], "alice");
            assert!(trail[0].get("auto_id").is_none());
        }
    }

    #[tokio::test]
    async fn a_switch_queues_its_undo_and_names_it_in_the_detail() {
        let s = Setup::new();
        let action = Action::NixosRebuild { mode: RebuildMode::Switch };
        let rec = record(&action, Origin::Automatic);
        let id = s.begin(&action, &rec);
        let report = s.run(&switching(&s.config), &action).await;
        assert!(report.succeeded, "{report:?}");
        let (report, kept) = record_end(&s.books(), report, &action, &rec, Bookkeeping::Automatic(id));
        assert!(kept.is_ok());
        let pending = s.store.pending().unwrap();
        assert_eq!(pending.len(), 1, "{pending:?}");
        let undo = &pending[0];
        assert_eq!(undo.args, Action::RollbackGeneration { generation: Some(1) }.to_json());
        assert_eq!(undo.evidence_key, format!("{}2", crate::store::UNDO_PREFIX));
        assert_eq!(undo.incident.as_str(), INCIDENT);
        assert_eq!(undo.reason, "undo nixos_rebuild switch: go back to the system that ran before it");
        let named = format!("; to undo it: `macha-approve approve {}`", undo.id);
        assert!(report.detail.ends_with(&named), "{}", report.detail);
        let trail = s.trail();
        assert_eq!(trail[1]["outcome"], "succeeded");
        assert_eq!(trail[1]["detail"], report.detail.as_str());
        assert_eq!(trail[1]["after"]["profile_generation"], 2);
    }

    #[tokio::test]
    async fn an_approved_switch_names_its_approval_in_the_undo() {
        let s = Setup::new();
        let action = Action::NixosRebuild { mode: RebuildMode::Switch };
        let id = s.claimed(&action);
        let rec = ActionRecord { approval_id: Some(id), ..record(&action, Origin::Approval) };
        let report = s.run(&switching(&s.config), &action).await;
        let (report, kept) = record_end(&s.books(), report, &action, &rec, Bookkeeping::Approval(id));
        assert!(kept.is_ok());
        assert_eq!(s.store.approval(id).unwrap().unwrap().status, ApprovalStatus::Executed);
        let pending = s.store.pending().unwrap();
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_eq!(
            pending[0].reason,
            format!("undo nixos_rebuild switch (approval {id}): go back to the system that ran before it")
        );
        assert!(report.detail.contains(&format!("macha-approve approve {}", pending[0].id)), "{}", report.detail);
    }

    /// A host whose switch to generation 2 breaks web.service; the
    /// rollback helper goes back to 1 (`revert_works`) or fails.
    fn breaking(config: &Config, revert_works: bool) -> FakeHost {
        generation(&config.nixos.profile, 1);
        boot_and_run(config, 1);
        let c = config.clone();
        let running = unit(WEB, "active", "running", "success", "bb", 100);
        let host = FakeHost::new()
            .with_unit(WEB, Some(running.clone()))
            .helper_does(move |helper| {
                if helper.as_str() == "macha-action-rebuild.service" {
                    generation(&c.nixos.profile, 2);
                    boot_and_run(&c, 2);
                } else if revert_works {
                    boot_and_run(&c, 1);
                }
            })
            .helper_leaves(
                "macha-action-rebuild.service",
                vec![vec![(WEB, Some(unit(WEB, "failed", "failed", "exit-code", "cc", 200)))]],
            )
            .helper_leaves("macha-action-rollback.service", vec![vec![(WEB, Some(running))]]);
        if revert_works {
            host
        } else {
            host.ending("macha-action-rollback.service", crate::act::fake::JobEnd::Result("failed"))
        }
    }

    #[tokio::test]
    async fn a_switch_that_failed_its_health_check_is_recorded_then_its_revert_and_no_undo_waits() {
        let s = Setup::new();
        let action = Action::NixosRebuild { mode: RebuildMode::Switch };
        let id = s.claimed(&action);
        let rec = ActionRecord { approval_id: Some(id), by: Some("alice".into()), ..record(&action, Origin::Approval) };
        let report = s.run(&breaking(&s.config, true), &action).await;
        let (report, kept) = record_end(&s.books(), report, &action, &rec, Bookkeeping::Approval(id));
        assert!(kept.is_ok());
        assert_eq!(s.store.approval(id).unwrap().unwrap().status, ApprovalStatus::Failed);
        let trail = s.trail();
        assert_eq!(trail.len(), 2, "{trail:#?}");
        let (switch, revert) = (&trail[0], &trail[1]);
        assert_eq!((&switch["action"], &switch["outcome"]), (&"nixos_rebuild".into(), &"failed".into()));
        assert_eq!(switch["health"]["failed"][0]["unit"], WEB);
        assert_eq!(switch["after"]["profile_generation"], 2);
        assert_eq!(switch["detail"], report.detail.as_str());
        assert_eq!((&revert["action"], &revert["origin"]), (&"rollback_generation".into(), &"revert".into()));
        assert_eq!((&revert["target"], &revert["outcome"]), (&"generation 1".into(), &"succeeded".into()));
        assert_eq!(revert["approval_id"], id.get(), "tied to the approval that set the switch going");
        assert!(revert.get("by").is_none(), "macha reverted, not alice");
        assert_eq!(revert["after"]["profile_generation"], 1);
        // The revert went back already: no undo waits.
        assert!(s.store.pending().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_revert_that_failed_is_escalated_once_with_the_undo_left_for_a_human() {
        let s = Setup::new();
        let action = Action::NixosRebuild { mode: RebuildMode::Switch };
        let rec = record(&action, Origin::Automatic);
        let id = s.begin(&action, &rec);
        let report = s.run(&breaking(&s.config, false), &action).await;
        let (report, kept) = record_end(&s.books(), report, &action, &rec, Bookkeeping::Automatic(id));
        assert!(kept.is_ok());
        assert!(report.revert_failed());
        let pending = s.store.pending().unwrap();
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_eq!(pending[0].args, Action::RollbackGeneration { generation: Some(1) }.to_json());
        let outcomes: Vec<(String, String)> = s
            .trail()
            .iter()
            .map(|r| (r["origin"].as_str().unwrap().into(), r["outcome"].as_str().unwrap().into()))
            .collect();
        let expected =
            [("automatic", "started"), ("automatic", "failed"), ("revert", "failed"), ("revert", "escalated")];
        assert_eq!(outcomes, expected.map(|(a, b)| (a.to_owned(), b.to_owned())));
        let escalated = &s.trail()[3];
        assert_eq!(escalated["approval_id"], pending[0].id.get());
        let detail = escalated["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("a human is needed: nixos_rebuild broke the host and the revert failed ("),
            "{detail}"
        );
        assert!(
            detail.ends_with(&format!(
                "it is not tried again; once the cause is fixed, `macha-approve approve {}` goes back",
                pending[0].id
            )),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn a_failed_helper_queues_no_undo() {
        let s = Setup::new();
        generation(&s.config.nixos.profile, 1);
        boot_and_run(&s.config, 1);
        let action = Action::NixosRebuild { mode: RebuildMode::Switch };
        let rec = record(&action, Origin::Automatic);
        let id = s.begin(&action, &rec);
        let host = FakeHost::new().ending("macha-action-rebuild.service", crate::act::fake::JobEnd::Result("failed"));
        let report = s.run(&host, &action).await;
        let (report, _) = record_end(&s.books(), report, &action, &rec, Bookkeeping::Automatic(id));
        assert!(!report.succeeded);
        assert!(s.store.pending().unwrap().is_empty());
        assert_eq!(s.trail()[1]["outcome"], "failed");
    }
}
