//! The ledger of automatic actions: an action macha carries out on its own
//! is counted by storm control and recorded as `started` in `actions.jsonl`
//! before the call that makes it happen, and its outcome is recorded exactly
//! once afterwards: by the process that carried it out, or, when that
//! process stopped first (killed, or its state directory full), by the next
//! one.
//!
//! Two stores, one order. The row in `state.db` (`Store::begin_auto`) comes
//! first, and storm control counts it from then on; the `started` record
//! comes second; nothing is carried out unless both were written. An
//! outcome is kept in the row, appended to the audit trail, then the row is
//! marked logged. A row not marked logged whose process no longer runs is
//! taken over by one process and settled by its `recover`, which looks for
//! the row's id in the audit trail:
//! an outcome there is only marked; no `started` record means the action
//! was never carried out, and it stops counting; otherwise the outcome kept
//! in the row is written, or, when there is none, the action is judged by
//! the host as it is now (`act::judge_unfinished`), and never carried out
//! again. Each step can be cut short anywhere and the next `recover` still
//! writes one outcome, no more.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};

use crate::act::{self, Brief, Observed, Unfinished};
use crate::audit::{self, ActionOutcome, ActionRecord, Origin};
use crate::catalog::Action;
use crate::config::Config;
use crate::ids::Fingerprint;
use crate::observe::systemd::SystemdLink;
use crate::rotation::Rotation;
use crate::state_dir::StateDir;
use crate::store::{AutoAction, Store};

/// How far before an action's row its records are looked for: writers of
/// the audit trail append in time order, give or take their wait for its
/// lock.
const RECORD_SLACK_MINUTES: i64 = 10;

/// The automatic actions of one state directory.
pub struct Ledger<'a> {
    store: &'a Store,
    state: &'a StateDir,
    /// How `actions.jsonl` is moved aside (`retention.audit_*`).
    rotation: Rotation,
}

/// This process as the owner of the actions it starts: boot, pid and start
/// time, so that another process can tell whether it still runs.
pub fn owner() -> &'static str {
    static OWNER: OnceLock<String> = OnceLock::new();
    OWNER.get_or_init(|| {
        let pid = std::process::id();
        process_token(pid).unwrap_or_else(|| format!("unknown-boot {pid} unknown-start"))
    })
}

/// `BOOT_ID PID START_TIME` of a running process, from `/proc`.
fn process_token(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the
    // fields after its closing parenthesis start with field 3.
    let start = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().nth(19)?.to_owned();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(format!("{} {pid} {start}", boot.trim()))
}

/// Whether `owner` is another process that still runs. This process has no
/// action in flight while it settles the ledger, so its own count as ended.
fn runs_elsewhere(owner: &str) -> bool {
    let Some(pid) = owner.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok()) else { return false };
    if owner == self::owner() {
        return false;
    }
    match process_token(pid) {
        Some(now) => now == owner,
        // Not readable (another user's process under `hidepid`): it runs if
        // the pid exists, as far as this process can tell.
        None => {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
            matches!(nix::sys::signal::kill(pid, None), Ok(()) | Err(nix::errno::Errno::EPERM))
        }
    }
}

impl<'a> Ledger<'a> {
    pub fn new(store: &'a Store, state: &'a StateDir, rotation: Rotation) -> Self {
        Self { store, state, rotation }
    }

    /// Counts `action` on `fingerprint` for storm control and records it as
    /// `started` (the record `started`, with its outcome and id set here).
    /// Returns the action's id; without it, the action must not be carried
    /// out, and the error says why.
    pub fn begin(
        &self,
        fingerprint: &Fingerprint,
        now: DateTime<Utc>,
        action: &Action,
        started: &ActionRecord,
    ) -> Result<i64, String> {
        let not_started = |e: &dyn std::fmt::Display| format!("not carried out: its start could not be recorded: {e}");
        let id = match self.store.begin_auto(fingerprint, now, action, owner()) {
            Ok(id) => id,
            Err(e) => {
                // Nothing counts it or keeps it: say so in the trail if it can be written.
                let why = not_started(&e);
                let refused = ActionRecord { outcome: ActionOutcome::Refused, detail: why.clone(), ..started.clone() };
                if let Err(e) = audit::append(self.state, audit::ACTIONS, &refused, self.rotation) {
                    tracing::error!(error = %e, "cannot record that an automatic action was not carried out");
                }
                return Err(why);
            }
        };
        let rec = ActionRecord { auto_id: Some(id), outcome: ActionOutcome::Started, ..started.clone() };
        if let Err(e) = audit::append(self.state, audit::ACTIONS, &rec, self.rotation) {
            let why = not_started(&e);
            // The record may have reached the file before the error: this
            // refusal is then its outcome, written by `recover`.
            let refused =
                ActionRecord { time: Utc::now(), outcome: ActionOutcome::Refused, detail: why.clone(), ..rec };
            if let Err(e) = self.store.void_auto(id, Some(&to_json(&refused))) {
                tracing::error!(error = %e, id, "cannot take the automatic action back from storm control's count");
            }
            return Err(why);
        }
        Ok(id)
    }

    /// Records how action `id` ended, once. When the audit trail cannot be
    /// written, the outcome is kept in the state database and written by
    /// the next `recover`; the error says so.
    pub fn finish(&self, id: i64, rec: &ActionRecord, succeeded: bool) -> Result<(), String> {
        if let Err(e) = self.store.finish_auto(id, succeeded, &to_json(rec)) {
            tracing::warn!(error = %e, id, "cannot keep the outcome of an automatic action in the state database");
        }
        self.log(id, rec, succeeded)
    }

    fn log(&self, id: i64, rec: &ActionRecord, succeeded: bool) -> Result<(), String> {
        audit::append(self.state, audit::ACTIONS, rec, self.rotation).map_err(|e| {
            format!("the outcome of automatic action {id} could not be recorded ({e}); it is recorded once the state directory can be written")
        })?;
        if let Err(e) = self.store.settle_auto(id, succeeded) {
            // The next `recover` finds the outcome in the trail and marks it.
            tracing::warn!(error = %e, id, "cannot mark the outcome of an automatic action as recorded");
        }
        Ok(())
    }

    /// Records the outcome of every automatic action whose end is not
    /// recorded and whose process no longer runs (see the module's
    /// documentation). Returns what it recorded or could not, one line
    /// each, for the log.
    pub async fn recover(&self, systemd: &SystemdLink<'_>, config: &Config) -> Vec<String> {
        let rows = match self.store.unlogged_auto() {
            Ok(rows) => rows,
            Err(e) => return vec![format!("cannot read the unfinished automatic actions: {e}")],
        };
        let mut said = Vec::new();
        for row in rows.into_iter().filter(|r| !runs_elsewhere(&r.owner)) {
            // One process settles it: whoever takes it over first.
            match self.store.take_over_auto(row.id, &row.owner, owner()) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    said.push(format!("cannot take over automatic action {}: {e}", row.id));
                    continue;
                }
            }
            match self.settle(&row, systemd, config).await {
                Ok(Some(text)) => said.push(text),
                Ok(None) => {}
                Err(e) => said.push(e),
            }
        }
        said
    }

    async fn settle(
        &self,
        row: &AutoAction,
        systemd: &SystemdLink<'_>,
        config: &Config,
    ) -> Result<Option<String>, String> {
        let id = row.id;
        let since = row.time.checked_sub_signed(chrono::Duration::minutes(RECORD_SLACK_MINUTES)).unwrap_or(row.time);
        let trail = audit::read_since(self.state, audit::ACTIONS, since)
            .map_err(|e| format!("cannot look for the records of automatic action {id}: {e}"))?;
        let mine: Vec<&serde_json::Value> =
            trail.iter().filter(|r| r.get("auto_id").and_then(serde_json::Value::as_i64) == Some(id)).collect();
        let outcome_of =
            |r: &serde_json::Value| r.get("outcome").and_then(serde_json::Value::as_str).map(str::to_owned);
        if let Some(done) = mine.iter().filter_map(|r| outcome_of(r)).find(|o| o != ActionOutcome::Started.as_str()) {
            // Written; only its mark was lost.
            self.store.settle_auto(id, done == ActionOutcome::Succeeded.as_str()).map_err(|e| e.to_string())?;
            return Ok(None);
        }
        let kept = row.record.as_deref().and_then(|r| serde_json::from_str::<ActionRecord>(r).ok());
        if row.state == "void" {
            // Not carried out because its start could not be recorded: the
            // refusal is its record, whether the start reached the trail or not.
            let Some(refused) = kept else {
                self.store.settle_auto(id, false).map_err(|e| e.to_string())?;
                return Ok(None);
            };
            self.log(id, &refused, false)?;
            return Ok(Some(format!("automatic action {id} on {}: {}", row.fingerprint, refused.detail)));
        }
        let started: ActionRecord =
            match mine.iter().find(|r| outcome_of(r).as_deref() == Some(ActionOutcome::Started.as_str())) {
                Some(started) => serde_json::from_value((*started).clone())
                    .map_err(|e| format!("the started record of automatic action {id} cannot be read: {e}"))?,
                // The records of its time are no longer kept: it may have run.
                None if self.rotated_away_after(since)? => started_from_row(row),
                None => {
                    // Never recorded as started, so never carried out.
                    self.store.void_auto(id, None).map_err(|e| e.to_string())?;
                    return Ok(Some(format!("automatic action {id} on {} was never carried out", row.fingerprint)));
                }
            };
        let (rec, succeeded) = match kept {
            Some(rec) => {
                let succeeded = rec.outcome == ActionOutcome::Succeeded;
                (rec, succeeded)
            }
            // Judged when systemd can be asked; until then it stays in flight.
            None if systemd.get().is_err() => return Ok(None),
            None => {
                let rec = judged(&started, row, systemd, config).await;
                let succeeded = rec.outcome == ActionOutcome::Succeeded;
                if let Err(e) = self.store.finish_auto(id, succeeded, &to_json(&rec)) {
                    tracing::warn!(error = %e, id, "cannot keep the outcome of an automatic action");
                }
                (rec, succeeded)
            }
        };
        self.log(id, &rec, succeeded)?;
        Ok(Some(format!(
            "automatic action {id} ({} {}), whose end was not recorded in time: {}: {}",
            rec.action,
            rec.target.as_deref().unwrap_or_default(),
            rec.outcome,
            rec.detail
        )))
    }
}

impl Ledger<'_> {
    /// Whether records of `actions.jsonl` written after `since` were
    /// deleted by its rotation (`retention.audit_files`).
    fn rotated_away_after(&self, since: DateTime<Utc>) -> Result<bool, String> {
        let oldest = audit::rotated_away_before(self.state, audit::ACTIONS)
            .map_err(|e| format!("cannot tell how far back the action records go: {e}"))?;
        Ok(oldest.is_some_and(|oldest| oldest > since))
    }
}

/// The `started` record of an action whose own record was rotated away, as
/// far as its row in the state database tells.
fn started_from_row(row: &AutoAction) -> ActionRecord {
    let action = serde_json::from_str::<Action>(&row.action).ok();
    ActionRecord {
        time: row.time,
        host: crate::observe::hostname(),
        incident: row.fingerprint.clone(),
        action: action.as_ref().map_or_else(|| "unknown".to_owned(), |a| a.kind().as_str().to_owned()),
        target: action.as_ref().map(Action::target),
        origin: Origin::Automatic,
        approval_id: None,
        by: None,
        auto_id: Some(row.id),
        outcome: ActionOutcome::Started,
        detail: "its started record is no longer kept (the action records were rotated away since)".into(),
        before: None,
        after: None,
        health: None,
    }
}

/// The outcome record of an action nobody saw end, judged now.
async fn judged(started: &ActionRecord, row: &AutoAction, systemd: &SystemdLink<'_>, config: &Config) -> ActionRecord {
    let before: Option<Brief> = match &started.before {
        Some(Observed::Unit(b)) => Some(b.clone()),
        _ => None,
    };
    let verdict = match serde_json::from_str::<Action>(&row.action) {
        Ok(action) => act::judge_unfinished(systemd, &action, before.as_ref(), config).await,
        Err(e) => Unfinished::Unseen {
            detail: format!("macha stopped during it, and its action cannot be read: {e}"),
            after: None,
        },
    };
    let (outcome, detail, after) = match verdict {
        Unfinished::Judged(r) => (ActionOutcome::of_run(r.succeeded), r.detail, r.after),
        Unfinished::Unseen { detail, after } => (ActionOutcome::Interrupted, detail, after),
    };
    ActionRecord { time: Utc::now(), outcome, detail, after, ..started.clone() }
}

fn to_json(rec: &ActionRecord) -> String {
    serde_json::to_string(rec).expect("an action record serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::UnitName;

    struct Bed {
        dir: tempfile::TempDir,
        state: StateDir,
        store: Store,
        config: Config,
    }

    fn bed() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let store = Store::open(&state).unwrap();
        let config = Config { state_dir: dir.path().to_owned(), ..Config::default() };
        Bed { dir, state, store, config }
    }

    const FP: &str = "unit-failed:web.service";

    fn restart() -> Action {
        Action::RestartUnit { unit: UnitName::parse("web.service").unwrap() }
    }

    fn started() -> ActionRecord {
        ActionRecord {
            time: Utc::now(),
            host: "h".into(),
            incident: FP.into(),
            action: "restart_unit".into(),
            target: Some("web.service".into()),
            origin: Origin::Automatic,
            approval_id: None,
            by: None,
            auto_id: None,
            outcome: ActionOutcome::Started,
            detail: "carrying out restart_unit web.service".into(),
            before: None,
            after: None,
            health: None,
        }
    }

    fn outcomes(b: &Bed) -> Vec<String> {
        let kept = audit::read_kept(&b.state, audit::ACTIONS, usize::MAX).unwrap();
        assert!(kept.torn.is_empty());
        kept.records.iter().map(|r| r["outcome"].as_str().unwrap().to_owned()).collect()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// Settles the ledger as a later process would, with systemd out of reach.
    fn recover(b: &Bed) -> Vec<String> {
        rt().block_on(
            Ledger::new(&b.store, &b.state, b.config.retention.audit())
                .recover(&SystemdLink::Down("no bus here".into()), &b.config),
        )
    }

    /// An owner that no longer runs: another boot.
    const GONE: &str = "00000000-0000-0000-0000-000000000000 1 1";

    #[test]
    fn an_action_whose_start_never_reached_the_trail_stops_counting_and_leaves_no_record() {
        let b = bed();
        // Killed between counting it and recording it as started.
        b.store.begin_auto(&FP.into(), Utc::now(), &restart(), GONE).unwrap();
        assert_eq!(b.store.auto_history(&FP.into(), Utc::now()).unwrap().recent, 1);
        let said = recover(&b);
        assert!(said[0].contains("never carried out"), "{said:?}");
        assert_eq!(b.store.auto_history(&FP.into(), Utc::now()).unwrap().recent, 0);
        assert!(outcomes(&b).is_empty());
        assert!(b.store.unlogged_auto().unwrap().is_empty());
    }

    #[test]
    fn an_outcome_already_in_the_trail_is_marked_not_written_again() {
        let b = bed();
        let ledger = Ledger::new(&b.store, &b.state, b.config.retention.audit());
        let id = ledger.begin(&FP.into(), Utc::now(), &restart(), &started()).unwrap();
        // The outcome was appended, then the process died before marking it.
        let done = ActionRecord { auto_id: Some(id), outcome: ActionOutcome::Failed, ..started() };
        audit::append(&b.state, audit::ACTIONS, &done, b.config.retention.audit()).unwrap();
        for _ in 0..2 {
            recover(&b);
        }
        assert_eq!(outcomes(&b), ["started", "failed"]);
        let h = b.store.auto_history(&FP.into(), Utc::now()).unwrap();
        assert_eq!((h.recent, h.in_flight, h.last_failed), (1, false, true), "counted, and failed its check");
    }

    #[test]
    fn a_kept_outcome_is_written_once_when_the_trail_can_be_written_again() {
        let b = bed();
        let ledger = Ledger::new(&b.store, &b.state, b.config.retention.audit());
        let id = ledger.begin(&FP.into(), Utc::now(), &restart(), &started()).unwrap();
        // The outcome reached the database, not the trail (a full disk).
        let done = ActionRecord { auto_id: Some(id), outcome: ActionOutcome::Succeeded, ..started() };
        b.store.finish_auto(id, true, &to_json(&done)).unwrap();
        for _ in 0..2 {
            recover(&b);
        }
        assert_eq!(outcomes(&b), ["started", "succeeded"]);
        assert!(b.store.unlogged_auto().unwrap().is_empty());
    }

    #[test]
    fn an_unfinished_action_waits_for_systemd_to_be_judged() {
        let b = bed();
        let ledger = Ledger::new(&b.store, &b.state, b.config.retention.audit());
        ledger.begin(&FP.into(), Utc::now(), &restart(), &started()).unwrap();
        // Nothing kept, systemd out of reach: no outcome is made up.
        assert!(recover(&b).is_empty());
        assert_eq!(outcomes(&b), ["started"]);
        assert!(b.store.auto_history(&FP.into(), Utc::now()).unwrap().in_flight, "and nothing else runs meanwhile");
    }

    #[test]
    fn a_start_that_cannot_be_recorded_is_refused_and_the_refusal_recorded_later() {
        let b = bed();
        let trail = b.dir.path().join(audit::ACTIONS);
        std::fs::create_dir(&trail).unwrap();
        let ledger = Ledger::new(&b.store, &b.state, b.config.retention.audit());
        let why = ledger.begin(&FP.into(), Utc::now(), &restart(), &started()).unwrap_err();
        assert!(why.starts_with("not carried out: its start could not be recorded"), "{why}");
        assert_eq!(b.store.auto_history(&FP.into(), Utc::now()).unwrap().recent, 0, "not counted: it did not run");
        std::fs::remove_dir(&trail).unwrap();
        for _ in 0..2 {
            recover(&b);
        }
        assert_eq!(outcomes(&b), ["refused"]);
    }

    #[test]
    fn an_action_whose_start_was_rotated_away_is_not_taken_for_one_never_carried_out() {
        let b = bed();
        // Two small files: the started record is deleted by the records after it.
        let small = Rotation { max_bytes: 2048, files: 2 };
        let ledger = Ledger::new(&b.store, &b.state, small);
        ledger.begin(&FP.into(), Utc::now(), &restart(), &started()).unwrap();
        for _ in 0..20 {
            let other = ActionRecord { outcome: ActionOutcome::Queued, ..started() };
            audit::append(&b.state, audit::ACTIONS, &other, small).unwrap();
        }
        assert!(!outcomes(&b).contains(&"started".to_owned()), "the started record is gone");
        // Nothing kept, systemd out of reach: it stays in flight, counted.
        let said = rt().block_on(ledger.recover(&SystemdLink::Down("no bus here".into()), &b.config));
        assert!(said.is_empty(), "{said:?}");
        let h = b.store.auto_history(&FP.into(), Utc::now()).unwrap();
        assert!(h.in_flight && h.recent == 1, "{h:?}");
    }

    #[test]
    fn an_action_of_a_process_that_still_runs_is_left_to_it() {
        let b = bed();
        let parent = process_token(std::os::unix::process::parent_id()).expect("the parent process runs");
        b.store.begin_auto(&FP.into(), Utc::now(), &restart(), &parent).unwrap();
        assert!(recover(&b).is_empty());
        assert_eq!(b.store.unlogged_auto().unwrap().len(), 1, "still its own");
        assert!(runs_elsewhere(&parent) && !runs_elsewhere(owner()) && !runs_elsewhere(GONE));
    }
}
