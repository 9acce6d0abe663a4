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
use crate::observe::systemd::SystemdLink;
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

/// Carries out `action` and records its end: `rec` is the record of the
/// action so far (who, what, for which incident); its outcome, detail and
/// what was observed before and after are filled in here. A rebuild or
/// rollback that moved the boot default leaves an undo item in the queue,
/// named in the detail (or why it could not be queued: the outcome is
/// recorded whatever happens to the undo). Returns the act's report, its
/// detail as recorded, and whether its end was kept (an automatic action's
/// always is: what the trail refuses, the ledger keeps).
pub async fn carry_out(
    books: &Books<'_>,
    systemd: &SystemdLink<'_>,
    action: &Action,
    rec: &ActionRecord,
    keep: Bookkeeping,
) -> (act::Report, Result<(), RecordError>) {
    let open = books.store.open_incidents().map_err(|e| e.to_string());
    let report = act::execute(systemd, action, books.config, open).await;
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
    if let (Some(undo), Some(from)) = (&report.undo, report.after.as_ref().and_then(profile_of)) {
        let why = match keep {
            Bookkeeping::Automatic(_) => format!("undo {action}: go back to the system that ran before it"),
            Bookkeeping::Approval(id) => {
                format!("undo {action} (approval {id}): go back to the system that ran before it")
            }
        };
        let ttl = books.config.act.approval_ttl();
        report.detail = match books.store.enqueue_undo(&rec.incident, from, undo, &why, ttl) {
            Ok((id, _)) => format!("{}; to undo it: `macha-approve approve {id}`", report.detail),
            Err(e) => format!("{}; its undo could not be queued: {e}", report.detail),
        };
    }
    let done = ActionRecord {
        time: Utc::now(),
        outcome: ActionOutcome::of_run(report.succeeded),
        detail: report.detail.clone(),
        before: report.before.clone(),
        after: report.after.clone(),
        ..rec.clone()
    };
    let rotation = books.config.retention.audit();
    let kept = match keep {
        Bookkeeping::Automatic(id) => {
            let done = ActionRecord { auto_id: Some(id), ..done };
            if let Err(e) = Ledger::new(books.store, books.state, rotation).finish(id, &done, report.succeeded) {
                tracing::error!(%action, "{e}");
            }
            Ok(())
        }
        Bookkeeping::Approval(id) => {
            let status = if report.succeeded { ApprovalStatus::Executed } else { ApprovalStatus::Failed };
            books
                .store
                .finish(id, status, &report.detail)
                .map_err(RecordError::from)
                .and_then(|()| Ok(audit::append(books.state, audit::ACTIONS, &done, rotation)?))
        }
    };
    (report, kept)
}

/// The boot-default generation recorded by a verify probe.
pub fn profile_of(o: &act::Observed) -> Option<u32> {
    match o {
        act::Observed::Generations(g) => g.profile_generation,
        _ => None,
    }
}
