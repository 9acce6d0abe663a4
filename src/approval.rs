//! The approval workflow: what happens when a person approves or rejects
//! an item of the approval queue, whoever asks (`macha-approve`, its
//! `discuss`, and later other hosts). Approving claims the item against
//! the binding the person saw, refuses it when it expired, was changed, or
//! no longer applies or is no longer allowed (the gate's target checks,
//! the bounds and the action's preconditions again), records the approval
//! before anything is done, carries it out through `carry`, and queues the
//! message. Each verb returns a typed outcome; printing it is the caller's.
//!
//! Who may decide is not checked here: the caller knows who asks (the CLI
//! checks the Unix identity before it opens anything) and passes the name
//! recorded as the approver.

use std::fmt;
use std::ops::ControlFlow;

use chrono::{DateTime, Utc};

use crate::act;
use crate::audit::{self, ActionOutcome, ActionRecord, AuditError, Origin};
use crate::carry::{self, Bookkeeping, Books, RecordError};
use crate::catalog::Action;
use crate::config::Config;
use crate::cycle::unit_facts;
use crate::elsewhere::{ActedOutcome, Elsewhere};
use crate::gate::{check_target, Policy};
use crate::ids::{ApprovalId, Fingerprint};
use crate::notify::{Notifier, NotifyError};
use crate::observe::systemd::{ReadUnits, Systemd};
use crate::state_dir::StateDir;
use crate::store::{Approval, ApprovalStatus, IncidentStatus, Store, StoreError};

/// How an `approve` ended.
#[derive(Debug)]
pub enum Approved {
    /// Carried out, whether it worked or not.
    Done(Box<Done>),
    /// Not waiting for approval: already decided (by whom, when known).
    NotWaiting { status: ApprovalStatus, decided_by: Option<String> },
    /// The binding given is not the item's: the item is what it was and
    /// still waits.
    NotAsShown { binding: String, expected: String },
    /// The daemon brought the item up to date (new evidence) since it was
    /// read: nothing done, it waits for an approval of what it is now.
    ChangedMeanwhile,
    /// Another approve or reject took it first.
    Taken,
    /// Claimed, then refused (recorded, the item ends `refused`).
    Refused(Refusal),
    /// systemd could not be reached: nothing done, the item waits again.
    Unreachable { error: String },
}

/// An approved item carried out.
#[derive(Debug)]
pub struct Done {
    pub action: Action,
    /// `succeeded` says whether it worked; the detail names the undo item
    /// when one was queued.
    pub report: act::Report,
    /// The message that could not be queued (the action stands).
    pub notify_error: Option<NotifyError>,
}

/// Why a claimed item was refused; its text is the one recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Expired {
        at: DateTime<Utc>,
    },
    /// The stored fields no longer hash to the stored binding.
    Altered,
    InvalidAction(String),
    /// The gate's checks or the action's preconditions, again, refuse it.
    NotAllowed(String),
    /// An undo whose generation is no longer the boot default.
    GenerationMoved {
        from: u32,
        now: Option<u32>,
    },
    IncidentResolved {
        incident: crate::ids::Fingerprint,
    },
    IncidentChanged {
        incident: crate::ids::Fingerprint,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Expired { at } => {
                write!(f, "it expired at {} (queued items expire after act.approval_ttl_hours)", at.to_rfc3339())
            }
            Refusal::Altered => {
                f.write_str("its stored content no longer matches its binding: it was changed after it was queued")
            }
            Refusal::InvalidAction(e) => write!(f, "the stored action is not valid: {e}"),
            Refusal::NotAllowed(reason) => f.write_str(reason),
            Refusal::GenerationMoved { from, now } => write!(
                f,
                "no longer applies: the boot default is generation {}, not {from} as when this undo was queued",
                now.map(|n| n.to_string()).unwrap_or_else(|| "none".into())
            ),
            Refusal::IncidentResolved { incident } => {
                write!(f, "no longer applies: incident {incident} was resolved meanwhile")
            }
            Refusal::IncidentChanged { incident } => write!(
                f,
                "incident {incident} changed since this was queued (new evidence); the next cycle decides again"
            ),
        }
    }
}

/// How a `reject` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Rejected and recorded, with the reason recorded.
    Done { reason: String },
    /// Not waiting (nor interrupted): it is `status` now.
    NotWaiting { status: ApprovalStatus },
}

/// What kept a verb from reaching an outcome.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("no approval item with id {0} (see `macha-approve list`)")]
    NotFound(ApprovalId),
    /// An item of a remote host's incident is carried out there
    /// (`approve_elsewhere`), never on this host.
    #[error("approval {id} is for host {host}: it is carried out there, never here")]
    Elsewhere { id: ApprovalId, host: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The system generations could not be read to re-check an undo.
    #[error(transparent)]
    Generations(#[from] std::io::Error),
}

impl From<RecordError> for ApprovalError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Store(e) => ApprovalError::Store(e),
            RecordError::Audit(e) => ApprovalError::Audit(e),
        }
    }
}

/// What a verb works on.
pub struct Workflow<'a> {
    pub config: &'a Config,
    pub state: &'a StateDir,
    pub store: &'a Store,
}

impl Workflow<'_> {
    /// The item `id`; an error naming it when there is none.
    pub fn find(&self, id: ApprovalId) -> Result<Approval, ApprovalError> {
        self.store.approval(id)?.ok_or(ApprovalError::NotFound(id))
    }

    /// When a claimed item counts as interrupted: longer ago than any
    /// execution can take.
    pub fn stale_before(&self) -> DateTime<Utc> {
        Utc::now().checked_sub_signed(self.config.act.execution_limit()).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// Items whose `approve` was stopped while carrying them out.
    pub fn interrupted(&self) -> Result<Vec<Approval>, ApprovalError> {
        Ok(self.store.interrupted(self.stale_before())?)
    }

    /// `by` approves item `id`. With `expect` (the binding, or at least its
    /// first 8 characters, as the person saw it), an item that is not that
    /// any more is left waiting. The message of how it ended is queued on
    /// `notifier`, when there is one.
    pub async fn approve(
        &self,
        id: ApprovalId,
        by: &str,
        expect: Option<&str>,
        notifier: Option<&Notifier>,
    ) -> Result<Approved, ApprovalError> {
        if let Some(host) = self.find(id)?.incident.host() {
            return Err(ApprovalError::Elsewhere { id, host: host.to_owned() });
        }
        let (item, action) = match self.claim(id, by, expect)? {
            ControlFlow::Continue(claimed) => claimed,
            ControlFlow::Break(ended) => return Ok(ended),
        };
        let systemd = match Systemd::connect(self.config.dbus_address.as_deref()).await {
            Ok(s) => s,
            Err(e) => {
                // Nothing was done: put the item back for a later attempt.
                self.store.release(id)?;
                return Ok(Approved::Unreachable { error: e.to_string() });
            }
        };
        self.carry_claimed(&systemd, &item, action, by, notifier).await
    }

    /// `by` approves item `id`, an incident of remote host `host`: claimed
    /// and checked here as any item (binding, expiry, its incident as it
    /// was), the approval recorded, then asked of the host with the
    /// approver's name; the host judges it again with its own gate (its
    /// protected units, its bounds, its preconditions) and records it with
    /// the approver. Its answer ends the item here.
    pub async fn approve_elsewhere(
        &self,
        host: &dyn Elsewhere,
        id: ApprovalId,
        by: &str,
        expect: Option<&str>,
        notifier: Option<&Notifier>,
    ) -> Result<Approved, ApprovalError> {
        let (item, action) = match self.claim(id, by, expect)? {
            ControlFlow::Continue(claimed) => claimed,
            ControlFlow::Break(ended) => return Ok(ended),
        };
        if let Err(refusal) = self.incident_as_queued(&item)? {
            return self.refuse(&item, by, refusal);
        }
        let name = host.name();
        let rec = ActionRecord {
            host: name.to_owned(),
            ..self.record(&item, by, ActionOutcome::Approved, &format!("asking {name} to carry out {action}"))
        };
        // Recorded before it is asked: the intent is in the trail whatever follows.
        audit::append(self.state, audit::ACTIONS, &rec, self.config.retention.audit())?;
        let on_host = Fingerprint::from(item.incident.on_host());
        let approval = crate::elsewhere::Approval::new(item.id, by);
        let (report, refused) = match host.act(&on_host, &action, &item.reason, Some(approval)).await {
            Ok(acted) => (acted.report(name), acted.outcome != ActedOutcome::Executed),
            Err(why) => (
                act::Report::failed(format!(
                    "{name} could not be asked: {why}; whether it did anything, its `macha-logs actions` says"
                )),
                false,
            ),
        };
        if refused {
            let done = ActionRecord {
                time: Utc::now(),
                outcome: ActionOutcome::Refused,
                detail: report.detail.clone(),
                ..rec
            };
            self.store.finish(item.id, ApprovalStatus::Refused, &report.detail)?;
            audit::append(self.state, audit::ACTIONS, &done, self.config.retention.audit())?;
            return Ok(Approved::Refused(Refusal::NotAllowed(report.detail)));
        }
        let status = if report.succeeded { ApprovalStatus::Executed } else { ApprovalStatus::Failed };
        self.store.finish(item.id, status, &report.detail)?;
        audit::append(self.state, audit::ACTIONS, &rec.ended(&report), self.config.retention.audit())?;
        let notify_error = notifier.and_then(|n| {
            let what = format!("{action} (approval {} by {by})", item.id);
            n.system_change(name, &item.incident, &what, &report, Utc::now()).err()
        });
        Ok(Approved::Done(Box::new(Done { action, report, notify_error })))
    }

    /// The first half of `approve`, up to reaching the host: claims item
    /// `id` for `by` and checks what it holds. Breaks with how `approve`
    /// ended when it goes no further.
    fn claim(
        &self,
        id: ApprovalId,
        by: &str,
        expect: Option<&str>,
    ) -> Result<ControlFlow<Approved, (Approval, Action)>, ApprovalError> {
        let item = self.find(id)?;
        if item.status != ApprovalStatus::Pending {
            return Ok(ControlFlow::Break(Approved::NotWaiting { status: item.status, decided_by: item.decided_by }));
        }
        if let Some(expected) = expect {
            // A mismatch refuses this command only: the item is what it was,
            // and waits for an approval of what it is.
            if expected.len() < 8 || !item.binding.starts_with(expected) {
                let shown = Approved::NotAsShown { binding: item.binding, expected: expected.to_owned() };
                return Ok(ControlFlow::Break(shown));
            }
        }
        // Claimed only with the binding checked above: an item brought up to
        // date meanwhile is not carried out on the strength of an older look.
        if !self.store.claim(id, by, &item.binding)? {
            return Ok(ControlFlow::Break(match self.store.approval(id)? {
                Some(now) if now.status == ApprovalStatus::Pending => Approved::ChangedMeanwhile,
                _ => Approved::Taken,
            }));
        }
        Ok(match self.checked(&item) {
            Ok(action) => ControlFlow::Continue((item, action)),
            Err(refusal) => ControlFlow::Break(self.refuse(&item, by, refusal)?),
        })
    }

    /// The second half of `approve`, on `host` (systemd; a fake host in a
    /// unit test): re-checks the claimed item, records the approval, carries
    /// it out and queues its message.
    async fn carry_claimed(
        &self,
        host: &(impl ReadUnits + act::Executor),
        item: &Approval,
        action: Action,
        by: &str,
        notifier: Option<&Notifier>,
    ) -> Result<Approved, ApprovalError> {
        if let Err(refusal) = self.applies(host, item, &action).await? {
            return self.refuse(item, by, refusal);
        }
        // Recorded before it is done: a crash from here on leaves the intent in
        // the audit trail and the item in `executing`, never run twice.
        let rec = self.record(item, by, ActionOutcome::Approved, &format!("carrying out {action}"));
        audit::append(self.state, audit::ACTIONS, &rec, self.config.retention.audit())?;
        let books = Books { config: self.config, state: self.state, store: self.store };
        let (report, kept) = carry::carry_out(&books, host, &action, &rec, Bookkeeping::Approval(item.id)).await;
        kept?;
        let notify_error = notifier.and_then(|n| {
            let what = format!("{action} (approval {} by {by})", item.id);
            let host = crate::observe::hostname();
            n.system_change(&host, &item.incident, &what, &report, Utc::now()).err()
        });
        Ok(Approved::Done(Box::new(Done { action, report, notify_error })))
    }

    /// `by` rejects item `id`, which must be waiting or interrupted.
    pub fn reject(&self, id: ApprovalId, by: &str, reason: Option<String>) -> Result<Rejected, ApprovalError> {
        let item = self.find(id)?;
        let reason = reason.unwrap_or_else(|| "rejected without a reason".into());
        if !self.store.reject(id, by, &reason, self.stale_before())? {
            let now = self.find(id)?;
            return Ok(Rejected::NotWaiting { status: now.status });
        }
        let rec = self.record(&item, by, ActionOutcome::Rejected, &reason);
        audit::append(self.state, audit::ACTIONS, &rec, self.config.retention.audit())?;
        Ok(Rejected::Done { reason })
    }

    /// What the item holds, unless it expired or was altered since it was
    /// queued: no systemd needed to tell.
    fn checked(&self, item: &Approval) -> Result<Action, Refusal> {
        if Utc::now() > item.expires_at {
            return Err(Refusal::Expired { at: item.expires_at });
        }
        if !item.binding_holds() {
            return Err(Refusal::Altered);
        }
        item.action().map_err(Refusal::InvalidAction)
    }

    /// Whether the claimed item still applies and is still allowed: the
    /// gate's target checks and the action's preconditions, again, right
    /// before it runs; an undo only while its generation is the boot
    /// default, anything else only while its incident is as it was.
    async fn applies(
        &self,
        systemd: &impl ReadUnits,
        item: &Approval,
        action: &Action,
    ) -> Result<Result<(), Refusal>, ApprovalError> {
        if let Err(reason) = recheck(self.config, systemd, item, action).await {
            return Ok(Err(Refusal::NotAllowed(reason)));
        }
        if let Some(from) = item.undoes_generation() {
            let now = crate::observe::nixos::read(&self.config.nixos.profile, &self.config.nixos.current_system)?;
            if now.profile != Some(from) {
                return Ok(Err(Refusal::GenerationMoved { from, now: now.profile }));
            }
            return Ok(Ok(()));
        }
        self.incident_as_queued(item)
    }

    /// Whether the item's incident is still open with the evidence it was
    /// queued for.
    fn incident_as_queued(&self, item: &Approval) -> Result<Result<(), Refusal>, ApprovalError> {
        let incident = item.incident.clone();
        Ok(match self.store.incident_state(&item.incident)? {
            Some((IncidentStatus::Open, key)) if key == item.evidence_key => Ok(()),
            Some((IncidentStatus::Resolved, _)) => Err(Refusal::IncidentResolved { incident }),
            _ => Err(Refusal::IncidentChanged { incident }),
        })
    }

    /// Ends a claimed item as refused, and records why.
    fn refuse(&self, item: &Approval, by: &str, refusal: Refusal) -> Result<Approved, ApprovalError> {
        let reason = refusal.to_string();
        self.store.finish(item.id, ApprovalStatus::Refused, &reason)?;
        let rec = self.record(item, by, ActionOutcome::Refused, &reason);
        audit::append(self.state, audit::ACTIONS, &rec, self.config.retention.audit())?;
        Ok(Approved::Refused(refusal))
    }

    /// The record of what `by` did with `item`.
    fn record(&self, item: &Approval, by: &str, outcome: ActionOutcome, detail: &str) -> ActionRecord {
        ActionRecord {
            time: Utc::now(),
            host: crate::observe::hostname(),
            incident: item.incident.clone(),
            action: item.kind.as_str().into(),
            target: Some(item.target.clone()),
            origin: Origin::Approval,
            approval_id: Some(item.id),
            by: Some(by.into()),
            auto_id: None,
            outcome,
            detail: detail.into(),
            before: None,
            after: None,
            health: None,
        }
    }
}

/// The gate's target checks and the action's preconditions, again, right
/// before a queued action runs.
async fn recheck(config: &Config, systemd: &impl ReadUnits, item: &Approval, action: &Action) -> Result<(), String> {
    let policy = Policy::from_config(config);
    let state = match action.unit() {
        Some(unit) => {
            let scope = crate::detect::unit_of(&item.incident);
            check_target(action.kind(), unit.as_str(), &unit_facts(systemd, unit).await, scope, &policy.protected)?;
            systemd.unit_state(unit).await.map_err(|e| e.to_string())?
        }
        None => None,
    };
    // The bounds may have been tightened since it was queued.
    crate::gate::check_bounds(action, &policy.limits)?;
    act::still_applies(action, state.as_ref(), config).map_err(|r| format!("no longer applies: {r}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::fake::{self, boot_and_run, generation, unit, Call, FakeHost};
    use crate::detect::{Incident, IncidentKind};
    use crate::unit::UnitName;

    const WEB: &str = "web.service";

    struct Bed {
        _dir: tempfile::TempDir,
        state: StateDir,
        store: Store,
        config: Config,
    }

    /// A state directory and a system profile of its own, and a bus
    /// address where no bus is: systemd cannot be reached (a test that gets
    /// further puts a fake host in its place, `approve_on`).
    fn bed() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let mut config = fake::config(dir.path(), 0);
        config.dbus_address = Some(format!("unix:path={}", dir.path().join("no-bus").display()));
        let state = StateDir::open(&config.state_dir).unwrap();
        let store = Store::open(&state).unwrap();
        Bed { _dir: dir, state, store, config }
    }

    impl Bed {
        fn workflow(&self) -> Workflow<'_> {
            Workflow { config: &self.config, state: &self.state, store: &self.store }
        }

        /// An item queued for `ttl` (an undo: no incident needed).
        fn queue(&self, ttl: chrono::Duration) -> Approval {
            let restart = Action::RestartUnit { unit: UnitName::parse("web.service").unwrap() };
            let (id, _) =
                self.store.enqueue_undo(&"unit-failed:web.service".into(), 7, &restart, "go back", ttl).unwrap();
            self.store.approval(id).unwrap().unwrap()
        }

        fn item(&self, id: ApprovalId) -> Approval {
            self.store.approval(id).unwrap().unwrap()
        }

        /// (outcome, approval id, by) of each action record.
        fn records(&self) -> Vec<(String, Option<i64>, Option<String>)> {
            let kept = audit::read_kept(&self.state, audit::ACTIONS, usize::MAX).unwrap();
            kept.records
                .iter()
                .map(|r| {
                    let text = |k: &str| r[k].as_str().map(str::to_owned);
                    (text("outcome").unwrap(), r["approval_id"].as_i64(), text("by"))
                })
                .collect()
        }

        fn approve(&self, id: ApprovalId, expect: Option<&str>) -> Approved {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(self.workflow().approve(id, "alice", expect, None)).unwrap()
        }

        /// alice approves item `id` as `approve` does, with `host` where
        /// systemd would be.
        fn approve_on(&self, host: &FakeHost, id: ApprovalId) -> Approved {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let w = self.workflow();
                match w.claim(id, "alice", None).unwrap() {
                    ControlFlow::Continue((item, action)) => {
                        w.carry_claimed(host, &item, action, "alice", None).await.unwrap()
                    }
                    ControlFlow::Break(ended) => ended,
                }
            })
        }

        /// `fingerprint` is open in the store with evidence `key`.
        fn open_incident(&self, fingerprint: &crate::ids::Fingerprint, key: &str) {
            let db = rusqlite::Connection::open(self.config.state_dir.join(crate::store::DB_FILE)).unwrap();
            db.execute(
                "INSERT INTO incidents (fingerprint, summary, status, opened_at, last_seen, evidence_key)
                 VALUES (?1, 'a test incident', 'open', ?2, ?2, ?3)",
                rusqlite::params![fingerprint, Utc::now().to_rfc3339(), key],
            )
            .unwrap();
        }

        /// Sets the stored incident `fingerprint`'s `column` to `value`, as
        /// a later cycle would.
        fn update_incident(&self, fingerprint: &str, column: &str, value: &str) {
            let db = rusqlite::Connection::open(self.config.state_dir.join(crate::store::DB_FILE)).unwrap();
            let sql = format!("UPDATE incidents SET {column} = ?2 WHERE fingerprint = ?1");
            assert_eq!(db.execute(&sql, [fingerprint, value]).unwrap(), 1);
        }

        /// `action` queued by a cycle for `incident` (open, evidence `k1`).
        fn queue_for(&self, kind: IncidentKind, action: &Action) -> Approval {
            let incident = Incident {
                fingerprint: kind.fingerprint(),
                kind,
                summary: "a test incident".into(),
                evidence_key: "k1".into(),
            };
            self.open_incident(&incident.fingerprint, &incident.evidence_key);
            let (id, _) = self.store.enqueue(&incident, action, "bring it back", "it failed", DAY).unwrap();
            self.item(id)
        }

        /// A restart of web.service queued for its failure.
        fn queue_restart(&self) -> Approval {
            self.queue_for(IncidentKind::UnitFailed { unit: WEB.into() }, &restart())
        }

        /// Asserts that `item` ended refused for `refusal`: its outcome
        /// says why, one record says who, and `host` was not changed.
        fn assert_refused(&self, item: &Approval, refusal: &Refusal, host: &FakeHost) {
            let now = self.item(item.id);
            assert_eq!(now.status, ApprovalStatus::Refused);
            assert_eq!(now.decided_by.as_deref(), Some("alice"));
            assert_eq!(now.outcome, Some(refusal.to_string()));
            assert_eq!(self.records(), [("refused".into(), Some(item.id.get()), Some("alice".into()))]);
            let trail = audit::read_kept(&self.state, audit::ACTIONS, usize::MAX).unwrap().records;
            assert_eq!(trail[0]["detail"], refusal.to_string());
            assert_eq!(host.changes(), []);
        }
    }

    fn restart() -> Action {
        Action::RestartUnit { unit: UnitName::parse(WEB).unwrap() }
    }

    /// A host where web.service failed, and a restart brings it up.
    fn web_failed() -> FakeHost {
        FakeHost::new()
            .with_unit(WEB, Some(unit(WEB, "failed", "failed", "exit-code", "aa", 100)))
            .then(WEB, vec![Some(unit(WEB, "active", "running", "success", "bb", 100))])
    }

    const DAY: chrono::Duration = chrono::Duration::hours(24);

    #[test]
    fn approval_expires_after_its_ttl_and_the_refusal_is_recorded() {
        let b = bed();
        let item = b.queue(chrono::Duration::hours(-1));
        let got = b.approve(item.id, None);
        assert!(matches!(got, Approved::Refused(Refusal::Expired { at }) if at == item.expires_at), "{got:?}");
        let now = b.item(item.id);
        assert_eq!(now.status, ApprovalStatus::Refused);
        assert!(now.outcome.unwrap().starts_with("it expired at "));
        assert_eq!(b.records(), [("refused".into(), Some(item.id.get()), Some("alice".into()))]);
    }

    #[test]
    fn an_item_altered_in_the_database_after_it_was_queued_is_refused() {
        let b = bed();
        let item = b.queue(DAY);
        let db = rusqlite::Connection::open(b.config.state_dir.join(crate::store::DB_FILE)).unwrap();
        db.execute("UPDATE approvals SET incident = 'unit-failed:other.service' WHERE id = ?1", [item.id]).unwrap();
        assert!(matches!(b.approve(item.id, None), Approved::Refused(Refusal::Altered)));
        assert_eq!(b.item(item.id).status, ApprovalStatus::Refused);
        assert_eq!(b.records().len(), 1);
    }

    #[test]
    fn a_binding_that_is_not_the_items_leaves_it_waiting_and_unrecorded() {
        let b = bed();
        let item = b.queue(DAY);
        for expect in ["0123456789abcdef", &item.binding[..7]] {
            let got = b.approve(item.id, Some(expect));
            assert!(
                matches!(&got, Approved::NotAsShown { binding, expected } if *binding == item.binding && expected == expect),
                "{got:?}"
            );
        }
        assert_eq!(b.item(item.id), item);
        assert!(b.records().is_empty());
    }

    #[test]
    fn without_systemd_nothing_is_done_and_the_item_waits_again() {
        let b = bed();
        let item = b.queue(DAY);
        let got = b.approve(item.id, Some(&item.binding[..8]));
        assert!(matches!(&got, Approved::Unreachable { error } if error.contains("no-bus")), "{got:?}");
        assert_eq!(b.item(item.id), item, "released: pending, nobody's");
        assert!(b.records().is_empty());
    }

    #[test]
    fn a_second_approve_finds_the_item_decided_and_does_nothing() {
        let b = bed();
        let item = b.queue(chrono::Duration::hours(-1));
        assert!(matches!(b.approve(item.id, None), Approved::Refused(_)));
        let got = b.approve(item.id, None);
        assert!(
            matches!(&got, Approved::NotWaiting { status: ApprovalStatus::Refused, decided_by: Some(by) } if by == "alice"),
            "{got:?}"
        );
        // Claimed by another approve that is still carrying it out.
        let other = b.queue(DAY);
        assert!(b.store.claim(other.id, "bob", &other.binding).unwrap());
        let got = b.approve(other.id, None);
        assert!(
            matches!(&got, Approved::NotWaiting { status: ApprovalStatus::Executing, decided_by: Some(by) } if by == "bob"),
            "{got:?}"
        );
        assert_eq!(b.records().len(), 1, "only the first refusal");
    }

    #[test]
    fn a_rejected_item_is_recorded_once_and_cannot_be_approved() {
        let b = bed();
        let item = b.queue(DAY);
        let w = b.workflow();
        assert_eq!(
            w.reject(item.id, "alice", None).unwrap(),
            Rejected::Done { reason: "rejected without a reason".into() }
        );
        assert_eq!(
            w.reject(item.id, "bob", Some("late".into())).unwrap(),
            Rejected::NotWaiting { status: ApprovalStatus::Rejected }
        );
        assert!(matches!(b.approve(item.id, None), Approved::NotWaiting { status: ApprovalStatus::Rejected, .. }));
        assert_eq!(b.records(), [("rejected".into(), Some(item.id.get()), Some("alice".into()))]);
    }

    #[test]
    fn an_unknown_id_is_an_error_that_names_it() {
        let b = bed();
        let err = b.workflow().reject(ApprovalId::new(42), "alice", None).unwrap_err();
        assert_eq!(err.to_string(), "no approval item with id 42 (see `macha-approve list`)");
    }

    #[test]
    fn refusals_read_as_recorded_before() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let cases = [
            (
                Refusal::Expired { at },
                "it expired at 2027-01-15T08:00:00+00:00 (queued items expire after act.approval_ttl_hours)",
            ),
            (
                Refusal::GenerationMoved { from: 7, now: None },
                "no longer applies: the boot default is generation none, not 7 as when this undo was queued",
            ),
            (
                Refusal::IncidentResolved { incident: "disk-full:/".into() },
                "no longer applies: incident disk-full:/ was resolved meanwhile",
            ),
        ];
        for (refusal, text) in cases {
            assert_eq!(refusal.to_string(), text);
        }
    }

    #[test]
    fn a_target_protected_since_it_was_queued_is_refused_and_not_touched() {
        let mut b = bed();
        let item = b.queue_restart();
        b.config.protected_units = vec![UnitName::parse(WEB).unwrap()];
        let host = web_failed();
        let got = b.approve_on(&host, item.id);
        let reason = "not acted because web.service is protected (web.service is on the protected list)";
        let Approved::Refused(refusal) = got else { panic!("{got:?}") };
        assert_eq!(refusal, Refusal::NotAllowed(reason.into()));
        b.assert_refused(&item, &refusal, &host);
    }

    #[test]
    fn bounds_tightened_since_it_was_queued_refuse_it() {
        let mut b = bed();
        let gc = Action::CollectGarbage { older_than_days: 30 };
        let item = b.queue_for(IncidentKind::DiskFull { mount: "/".into() }, &gc);
        b.config.act.gc_min_days = 60;
        let host = FakeHost::new();
        let got = b.approve_on(&host, item.id);
        let Approved::Refused(refusal) = got else { panic!("{got:?}") };
        assert_eq!(
            refusal,
            Refusal::NotAllowed(
                "not acted because older_than_days 30 is below act.gc_min_days (60): younger generations are kept for rollback"
                    .into()
            )
        );
        b.assert_refused(&item, &refusal, &host);
    }

    #[test]
    fn an_incident_with_new_evidence_or_resolved_since_it_was_queued_refuses_it() {
        let incident = "unit-failed:web.service";
        for (column, value, expected) in [
            ("evidence_key", "k2", Refusal::IncidentChanged { incident: incident.into() }),
            ("status", "resolved", Refusal::IncidentResolved { incident: incident.into() }),
        ] {
            let b = bed();
            let item = b.queue_restart();
            b.update_incident(incident, column, value);
            let host = web_failed();
            let got = b.approve_on(&host, item.id);
            let Approved::Refused(refusal) = got else { panic!("{got:?}") };
            assert_eq!(refusal, expected);
            b.assert_refused(&item, &refusal, &host);
            // The re-check read the unit, and went no further.
            assert_eq!(host.calls(), [Call::UnitState(WEB.into()), Call::UnitState(WEB.into())]);
        }
    }

    #[test]
    fn an_undo_whose_generation_is_no_longer_the_boot_default_is_refused() {
        let b = bed();
        let profile = &b.config.nixos.profile;
        for n in [1, 2] {
            generation(profile, n);
        }
        boot_and_run(&b.config, 2);
        let back = Action::RollbackGeneration { generation: Some(1) };
        let (id, _) = b.store.enqueue_undo(&"unit-failed:web.service".into(), 2, &back, "go back", DAY).unwrap();
        let item = b.item(id);
        // Another rebuild since: generation 3 is the boot default.
        generation(profile, 3);
        boot_and_run(&b.config, 3);
        let host = FakeHost::new();
        let got = b.approve_on(&host, id);
        let Approved::Refused(refusal) = got else { panic!("{got:?}") };
        assert_eq!(refusal, Refusal::GenerationMoved { from: 2, now: Some(3) });
        b.assert_refused(&item, &refusal, &host);
    }

    #[test]
    fn an_approved_restart_that_still_applies_is_carried_out_and_recorded() {
        let b = bed();
        let item = b.queue_restart();
        let host = web_failed();
        let got = b.approve_on(&host, item.id);
        let Approved::Done(done) = got else { panic!("{got:?}") };
        assert_eq!(done.action, restart());
        assert!(done.report.succeeded, "{:?}", done.report);
        assert!(done.notify_error.is_none());
        assert_eq!(host.changes(), [Call::Restart(WEB.into())]);
        let now = b.item(item.id);
        assert_eq!(now.status, ApprovalStatus::Executed);
        assert_eq!(now.decided_by.as_deref(), Some("alice"));
        assert_eq!(now.outcome.as_deref(), Some(done.report.detail.as_str()));
        let by = |outcome: &str| (outcome.to_owned(), Some(item.id.get()), Some("alice".to_owned()));
        assert_eq!(b.records(), [by("approved"), by("succeeded")]);
        let trail = audit::read_kept(&b.state, audit::ACTIONS, usize::MAX).unwrap().records;
        assert_eq!(trail[0]["detail"], "carrying out restart_unit web.service");
        assert_eq!(trail[1]["origin"], "approval");
        assert_eq!(trail[1]["detail"], done.report.detail.as_str());
        assert_eq!(trail[1]["before"]["active_state"], "failed");
        assert_eq!(trail[1]["after"]["active_state"], "active");
    }
}
