//! Incident state and the approval queue, in SQLite (WAL), so the daemon and
//! the CLI can read and write at once without losing or repeating an item.
//!
//! Approval ids are SQLite `AUTOINCREMENT` keys: never reused, never a list
//! position. Claiming an approval is one conditional `UPDATE`, so two
//! `approve` calls for the same id execute it once.

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::catalog::Action;
use crate::catalog::ActionKind;
use crate::decide::FailureKind;
use crate::detect::{basis_of, Incident, OpenIncident};
use crate::ids::{ApprovalId, Fingerprint};
use crate::observe::Snapshot;
use crate::repeat::Repeating;
use crate::sqlite::{self, open_retrying};
use crate::state_dir::StateDir;
use crate::storm::History;
use crate::unit::UnitName;

#[derive(Debug, thiserror::Error)]
#[error("state database {path}: {source}")]
pub struct StoreError {
    path: String,
    source: rusqlite::Error,
}

pub struct Store {
    conn: Connection,
    path: String,
}

/// Whether an incident needs a (new) decision this cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Novelty {
    /// First seen now.
    New,
    /// Seen before, but it changed (for example the unit failed again).
    Changed,
    /// The previous decision failed; ask again.
    Retry,
    /// Already decided; nothing to ask.
    Known,
}

/// Whether an incident a pass saw still needs its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Yes,
    /// Decided for this evidence already (by `macha-check`, or a view of
    /// it that waited in line before).
    Decided,
    /// Resolved, or seen again with other evidence, since.
    Gone,
    /// Decided lately (at this time) on other evidence: decided again at a
    /// later full pass, not at each change.
    Later(DateTime<Utc>),
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Approval {
    pub id: ApprovalId,
    pub created_at: DateTime<Utc>,
    pub incident: Fingerprint,
    pub kind: ActionKind,
    /// The target in words (a unit name, "older than 14 days", ...).
    pub target: String,
    /// The action exactly, as JSON (see `catalog::Action`).
    pub args: String,
    pub reason: String,
    pub diagnosis: String,
    pub status: ApprovalStatus,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    /// The incident's evidence when the action was proposed.
    pub evidence_key: String,
    /// SHA-256 over the action, its target, the incident and its evidence:
    /// what a human approves.
    pub binding: String,
    pub expires_at: DateTime<Utc>,
}

/// Where an item of the approval queue stands: waiting, claimed by an
/// `approve` that carries it out, or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Executing,
    Executed,
    Failed,
    Refused,
    Rejected,
}

impl ApprovalStatus {
    /// Its name in `state.db` and in `--json`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Executing => "executing",
            ApprovalStatus::Executed => "executed",
            ApprovalStatus::Failed => "failed",
            ApprovalStatus::Refused => "refused",
            ApprovalStatus::Rejected => "rejected",
        }
    }

    const ALL: [ApprovalStatus; 6] = [
        ApprovalStatus::Pending,
        ApprovalStatus::Executing,
        ApprovalStatus::Executed,
        ApprovalStatus::Failed,
        ApprovalStatus::Refused,
        ApprovalStatus::Rejected,
    ];
}

impl std::fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl rusqlite::ToSql for ApprovalStatus {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for ApprovalStatus {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        // The table's CHECK admits exactly these.
        let name = value.as_str()?;
        Self::ALL.into_iter().find(|s| s.as_str() == name).ok_or(rusqlite::types::FromSqlError::InvalidType)
    }
}

/// Whether an incident is still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentStatus {
    Open,
    Resolved,
}

impl IncidentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Resolved => "resolved",
        }
    }
}

impl std::fmt::Display for IncidentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl rusqlite::types::FromSql for IncidentStatus {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        // The table's CHECK admits exactly these.
        match value.as_str()? {
            "open" => Ok(IncidentStatus::Open),
            "resolved" => Ok(IncidentStatus::Resolved),
            _ => Err(rusqlite::types::FromSqlError::InvalidType),
        }
    }
}

/// What an approval is bound to: the action, its target and arguments, the
/// incident and the evidence it was based on.
pub fn binding(action: &Action, incident: &Fingerprint, evidence_key: &str) -> String {
    use sha2::{Digest, Sha256};
    let target = match action.unit() {
        Some(u) => u.to_string(),
        None => action.to_json(),
    };
    let mut h = Sha256::new();
    for part in [action.kind().as_str(), target.as_str(), incident.as_str(), evidence_key] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Approval {
    /// Whether the stored fields still hash to the stored binding.
    pub fn binding_holds(&self) -> bool {
        self.action()
            .is_ok_and(|a| a.target() == self.target && binding(&a, &self.incident, &self.evidence_key) == self.binding)
    }

    pub fn action(&self) -> Result<Action, String> {
        if self.args.is_empty() {
            // Queued before actions carried their arguments: a unit action.
            let unit = UnitName::parse(&self.target).map_err(|e| e.to_string())?;
            return Action::on_unit(self.kind, unit).ok_or_else(|| format!("{} needs arguments", self.kind.as_str()));
        }
        let action: Action = serde_json::from_str(&self.args).map_err(|e| format!("stored action: {e}"))?;
        if action.kind() != self.kind {
            return Err(format!("stored action is {}, not {}", action.kind().as_str(), self.kind.as_str()));
        }
        Ok(action)
    }

    /// Whether this item undoes an earlier rebuild or rollback (its evidence
    /// is then the generation it undoes, not an incident's evidence).
    pub fn undoes_generation(&self) -> Option<u32> {
        self.evidence_key.strip_prefix(UNDO_PREFIX)?.parse().ok()
    }
}

/// One row of the automatic actions (see `Store::begin_auto`).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoAction {
    pub id: i64,
    pub time: DateTime<Utc>,
    pub fingerprint: Fingerprint,
    /// `started`, `finished` or `void`.
    pub state: String,
    pub succeeded: bool,
    /// The action exactly, as JSON (see `catalog::Action`).
    pub action: String,
    /// The process that carries it out (see `ledger::owner`).
    pub owner: String,
    /// The outcome's audit record (JSON), once known.
    pub record: Option<String>,
}

/// An open incident whose decisions keep failing: what paces the daemon's
/// retries and keeps a repeated failure to one record (`repeat`). Kept
/// until the model decides about it or the incident resolves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failing {
    /// The incident's summary, for the record of repeats.
    pub summary: String,
    pub repeat: Repeating<FailureKind>,
    /// The newest failure's error.
    pub error: String,
    /// Failed decisions in a row, of any kind.
    pub failures: u32,
    /// When the first of them and the newest failed.
    pub since: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

impl Failing {
    /// When the daemon asks again: `interval` after the newest failure when
    /// it was the first, twice that after the second, and so on, at most
    /// `max` after it.
    pub fn next_try(&self, interval: TimeDelta, max: TimeDelta) -> DateTime<Utc> {
        let doubling = 1i32 << self.failures.saturating_sub(1).min(24);
        let wait = interval.checked_mul(doubling).unwrap_or(max).min(max);
        self.last.checked_add_signed(wait).unwrap_or(self.last)
    }
}

/// `evidence_key` of an undo item: `undo-from-generation:N`.
pub const UNDO_PREFIX: &str = "undo-from-generation:";

/// Columns added after the first release, added to older databases on open.
const MIGRATIONS: &[(&str, &str)] = &[
    ("approvals", "args TEXT NOT NULL DEFAULT ''"),
    ("auto_actions", "state TEXT NOT NULL DEFAULT 'finished'"),
    ("auto_actions", "action TEXT NOT NULL DEFAULT ''"),
    ("auto_actions", "owner TEXT NOT NULL DEFAULT ''"),
    ("auto_actions", "record TEXT"),
    ("auto_actions", "logged INTEGER NOT NULL DEFAULT 1"),
    ("incidents", "failing TEXT"),
    ("incidents", "decided_at TEXT"),
];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS incidents (
    fingerprint TEXT PRIMARY KEY,
    summary TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
    opened_at TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    resolved_at TEXT,
    evidence_key TEXT NOT NULL,
    decided_key TEXT,
    decision TEXT NOT NULL DEFAULT 'none' CHECK (decision IN ('none', 'decided', 'failed')),
    -- While its decisions keep failing: `Failing` as JSON.
    failing TEXT,
    -- When it was last decided; kept when it resolves and opens again.
    decided_at TEXT
);
-- The automatic actions, recorded before they start (see `ledger`):
-- `state` is `started` (counted, outcome not known yet), `finished`, or
-- `void` (never carried out, not counted); `record` is the outcome's audit
-- record once known, `logged` whether actions.jsonl holds it.
CREATE TABLE IF NOT EXISTS auto_actions (
    time TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    succeeded INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'finished',
    action TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '',
    record TEXT,
    logged INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS control (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Alertmanager's alerts firing for this host, as its webhook brought them
-- (`alerts`): one row per alert (Alertmanager's fingerprint), deleted when
-- it resolves.
CREATE TABLE IF NOT EXISTS alerts (
    fingerprint TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    alert TEXT NOT NULL, -- `observe::alerts::Alert` as JSON
    received_at TEXT NOT NULL
);
-- The remote hosts a controller acted on automatically, and when: what
-- `remote.max_hosts_acting` counts (see `claim_fleet_act`).
CREATE TABLE IF NOT EXISTS fleet_acts (
    time TEXT NOT NULL,
    host TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    action TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS approvals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    incident TEXT NOT NULL,
    kind TEXT NOT NULL,
    unit TEXT NOT NULL, -- the target in words
    args TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL,
    diagnosis TEXT NOT NULL,
    evidence_key TEXT NOT NULL,
    binding TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'executing', 'executed', 'failed', 'rejected', 'refused')),
    decided_by TEXT,
    decided_at TEXT,
    outcome TEXT
);
";

fn kind_from_str(s: &str) -> ActionKind {
    ActionKind::parse(s).unwrap_or(ActionKind::NotifyOnly)
}

impl Novelty {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Changed => "changed",
            Self::Retry => "retry",
            Self::Known => "known",
        }
    }
}

/// The most alerts kept firing at once; more are left out (and said).
pub const MAX_ALERTS: usize = 1000;

/// The state database in the state directory.
pub const DB_FILE: &str = "state.db";

/// Opens `state.db` (see `sqlite::connect`): the one opener of the state
/// database, for the store and for the notification outbox, so both write
/// with the same durability.
pub(crate) fn connect(state: &StateDir) -> Result<Connection, rusqlite::Error> {
    sqlite::connect(state, DB_FILE)
}

impl Store {
    /// Opens `state.db`, creating or migrating its tables (see
    /// [`open_retrying`] for a database busy at that moment).
    pub fn open(state: &StateDir) -> Result<Self, StoreError> {
        let shown = state.path_of(DB_FILE).display().to_string();
        let conn = open_retrying(|| Self::connect_and_migrate(state))
            .map_err(|source| StoreError { path: shown.clone(), source })?;
        Ok(Self { conn, path: shown })
    }

    fn connect_and_migrate(state: &StateDir) -> Result<Connection, rusqlite::Error> {
        let conn = connect(state)?;
        conn.execute_batch(SCHEMA)?;
        for (table, column) in MIGRATIONS {
            let name = column.split_whitespace().next().unwrap_or_default();
            let has: bool = conn.query_row(
                &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
                [name],
                |r| r.get(0),
            )?;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column}"))?;
            }
        }
        Ok(conn)
    }

    fn wrap(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError { path: self.path.clone(), source }
    }

    /// Records this cycle's incidents and resolves the open ones that are no
    /// longer seen (only when the source they depend on was read). Returns
    /// each current incident with whether it needs a decision, and the
    /// fingerprints resolved now. `host` is whose incidents these are: this
    /// host's own (`None`) or a remote host's (`Fingerprint::host`); only
    /// that host's open incidents are resolved.
    pub fn sync_incidents(
        &mut self,
        current: &[Incident],
        snap: &Snapshot,
        host: Option<&str>,
    ) -> Result<(Vec<Novelty>, Vec<Fingerprint>), StoreError> {
        let now = snap.taken_at.to_rfc3339();
        let hour_ago = (snap.taken_at - TimeDelta::hours(1)).to_rfc3339();
        let path = self.path.clone();
        let wrap = move |source| StoreError { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(&wrap)?;
        let mut novelty = Vec::with_capacity(current.len());
        for inc in current {
            let row: Option<(String, Option<String>, String)> = tx
                .query_row(
                    "SELECT status, decided_key, decision FROM incidents WHERE fingerprint = ?1",
                    [&inc.fingerprint],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(&wrap)?;
            let n = match &row {
                None => Novelty::New,
                Some((status, _, _)) if status == "resolved" => Novelty::New,
                Some((_, _, decision)) if decision == "failed" => Novelty::Retry,
                Some((_, decided_key, _)) if decided_key.as_deref() != Some(inc.evidence_key.as_str()) => {
                    Novelty::Changed
                }
                Some(_) => Novelty::Known,
            };
            if n == Novelty::New {
                tx.execute(
                    "INSERT INTO incidents (fingerprint, summary, status, opened_at, last_seen, evidence_key)
                     VALUES (?1, ?2, 'open', ?3, ?3, ?4)
                     ON CONFLICT(fingerprint) DO UPDATE SET summary = ?2, status = 'open', opened_at = ?3,
                       last_seen = ?3, resolved_at = NULL, evidence_key = ?4, decided_key = NULL, decision = 'none',
                       failing = NULL",
                    params![inc.fingerprint, inc.summary, now, inc.evidence_key],
                )
                .map_err(&wrap)?;
            } else {
                // Seen as before: written at most hourly, so a steady pass
                // writes (and syncs) nothing.
                tx.execute(
                    "UPDATE incidents SET summary = ?2, last_seen = ?3, evidence_key = ?4
                     WHERE fingerprint = ?1 AND (summary IS NOT ?2 OR evidence_key IS NOT ?4 OR last_seen < ?5)",
                    params![inc.fingerprint, inc.summary, now, inc.evidence_key, hour_ago],
                )
                .map_err(&wrap)?;
            }
            novelty.push(n);
        }
        let open: Vec<Fingerprint> = {
            let mut stmt = tx.prepare("SELECT fingerprint FROM incidents WHERE status = 'open'").map_err(&wrap)?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(&wrap)?;
            rows.collect::<Result<_, _>>().map_err(&wrap)?
        };
        let mut resolved = Vec::new();
        for fp in open {
            if fp.host() == host && !current.iter().any(|i| i.fingerprint == fp) && snap.saw(basis_of(&fp)) {
                tx.execute(
                    "UPDATE incidents SET status = 'resolved', resolved_at = ?2 WHERE fingerprint = ?1",
                    params![fp, now],
                )
                .map_err(&wrap)?;
                resolved.push(fp);
            }
        }
        tx.commit().map_err(&wrap)?;
        Ok((novelty, resolved))
    }

    /// Remembers that `incident` was decided (or that deciding failed) for
    /// its current evidence.
    pub fn mark_decided(&self, incident: &Incident, ok: bool) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE incidents SET decided_key = ?2, decision = ?3,
                   decided_at = CASE WHEN ?3 = 'decided' THEN ?4 ELSE decided_at END
                 WHERE fingerprint = ?1",
                params![
                    incident.fingerprint,
                    incident.evidence_key,
                    if ok { "decided" } else { "failed" },
                    Utc::now().to_rfc3339()
                ],
            )
            .map(drop)
            .map_err(self.wrap())
    }

    /// The failing state of `fingerprint`'s decisions, if they are failing.
    /// A value that does not parse (written by another version) counts as none.
    pub fn failing(&self, fingerprint: &Fingerprint) -> Result<Option<Failing>, StoreError> {
        let text: Option<Option<String>> = self
            .conn
            .query_row("SELECT failing FROM incidents WHERE fingerprint = ?1", [fingerprint], |r| r.get(0))
            .optional()
            .map_err(self.wrap())?;
        Ok(text.flatten().and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Remembers (or, with `None`, forgets) that `fingerprint`'s decisions are failing.
    pub fn set_failing(&self, fingerprint: &Fingerprint, failing: Option<&Failing>) -> Result<(), StoreError> {
        let text = failing.map(|f| serde_json::to_string(f).expect("a failing state serialises"));
        self.conn
            .execute("UPDATE incidents SET failing = ?2 WHERE fingerprint = ?1", params![fingerprint, text])
            .map(drop)
            .map_err(self.wrap())
    }

    /// The open incidents whose decisions are failing, oldest failure first.
    pub fn failing_open(&self) -> Result<Vec<(Fingerprint, Failing)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT fingerprint, failing FROM incidents WHERE status = 'open' AND failing IS NOT NULL")
            .map_err(self.wrap())?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, Fingerprint>(0)?, r.get::<_, String>(1)?))).map_err(self.wrap())?;
        let mut out: Vec<(Fingerprint, Failing)> = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.wrap())?
            .into_iter()
            .filter_map(|(fp, text)| serde_json::from_str(&text).ok().map(|f| (fp, f)))
            .collect();
        out.sort_by_key(|(_, f)| f.since);
        Ok(out)
    }

    /// What storm control needs to know about earlier automatic actions:
    /// every one that was started counts, finished or not.
    pub fn auto_history(&self, fingerprint: &Fingerprint, now: DateTime<Utc>) -> Result<History, StoreError> {
        let day = (now - chrono::Duration::hours(24)).to_rfc3339();
        let hour = (now - chrono::Duration::hours(1)).to_rfc3339();
        let (recent, last): (u32, Option<String>) = self
            .conn
            .query_row(
                "SELECT COUNT(*), MAX(time) FROM auto_actions WHERE fingerprint = ?1 AND time > ?2 AND state != 'void'",
                params![fingerprint, day],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(self.wrap())?;
        let (in_flight, last_failed): (bool, bool) = self
            .conn
            .query_row(
                "SELECT state = 'started', succeeded = 0 FROM auto_actions WHERE fingerprint = ?1 AND state != 'void'
                 ORDER BY time DESC LIMIT 1",
                [fingerprint],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.wrap())?
            .unwrap_or_default();
        let last_hour: u32 = self
            .conn
            .query_row("SELECT COUNT(*) FROM auto_actions WHERE time > ?1 AND state != 'void'", [hour], |r| r.get(0))
            .map_err(self.wrap())?;
        Ok(History {
            recent,
            last: last.and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc)),
            last_failed: last_failed && !in_flight,
            in_flight,
            last_hour,
            paused: self.paused()?,
        })
    }

    /// Counts an automatic action about to start, owned by the process
    /// `owner`; returns its id. Its outcome is still to be logged.
    pub fn begin_auto(
        &self,
        fingerprint: &Fingerprint,
        now: DateTime<Utc>,
        action: &Action,
        owner: &str,
    ) -> Result<i64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO auto_actions (time, fingerprint, succeeded, state, action, owner, logged)
                 VALUES (?1, ?2, 0, 'started', ?3, ?4, 0)",
                params![now.to_rfc3339(), fingerprint, action.to_json(), owner],
            )
            .map_err(self.wrap())?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Remembers how automatic action `id` ended, with its audit record
    /// (JSON) still to be logged.
    pub fn finish_auto(&self, id: i64, succeeded: bool, record: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE auto_actions SET state = 'finished', succeeded = ?2, record = ?3 WHERE rowid = ?1 AND state != 'void'",
                params![id, succeeded, record],
            )
            .map(drop)
            .map_err(self.wrap())
    }

    /// Takes automatic action `id` back from storm control's count: it was
    /// never carried out. `record`, if any, still has to be logged.
    pub fn void_auto(&self, id: i64, record: Option<&str>) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE auto_actions SET state = 'void', record = ?2, logged = (?2 IS NULL) WHERE rowid = ?1",
                params![id, record],
            )
            .map(drop)
            .map_err(self.wrap())
    }

    /// Remembers that the outcome of automatic action `id` is in the audit
    /// trail (and how it ended, had `finish_auto` not been remembered).
    pub fn settle_auto(&self, id: i64, succeeded: bool) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE auto_actions SET logged = 1, succeeded = ?2,
                   state = CASE state WHEN 'void' THEN 'void' ELSE 'finished' END
                 WHERE rowid = ?1",
                params![id, succeeded],
            )
            .map(drop)
            .map_err(self.wrap())
    }

    /// Makes `owner` the owner of automatic action `id` if `was` still is;
    /// `false` when another process took it first.
    pub fn take_over_auto(&self, id: i64, was: &str, owner: &str) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .execute("UPDATE auto_actions SET owner = ?3 WHERE rowid = ?1 AND owner = ?2", params![id, was, owner])
            .map_err(self.wrap())?;
        Ok(changed == 1)
    }

    /// Automatic actions whose outcome is not in the audit trail yet: still
    /// running, or left so by a process that stopped or could not write.
    pub fn unlogged_auto(&self) -> Result<Vec<AutoAction>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT rowid, time, fingerprint, state, succeeded, action, owner, record FROM auto_actions
                 WHERE logged = 0 ORDER BY rowid",
            )
            .map_err(self.wrap())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(AutoAction {
                    id: r.get(0)?,
                    time: DateTime::parse_from_rfc3339(&r.get::<_, String>(1)?)
                        .map(|t| t.with_timezone(&Utc))
                        .unwrap_or_default(),
                    fingerprint: r.get(2)?,
                    state: r.get(3)?,
                    succeeded: r.get(4)?,
                    action: r.get(5)?,
                    owner: r.get(6)?,
                    record: r.get(7)?,
                })
            })
            .map_err(self.wrap())?;
        rows.collect::<Result<_, _>>().map_err(self.wrap())
    }

    /// Deletes what only grows and is no longer needed, older than
    /// `before`: resolved incidents, approvals decided (or expired while
    /// waiting) and the rows of automatic actions whose end is recorded.
    /// Open incidents, waiting and executing items and actions in flight
    /// stay, however old. Returns how many rows went.
    pub fn prune(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let before = before.to_rfc3339();
        let mut deleted = 0;
        for sql in [
            "DELETE FROM incidents WHERE status = 'resolved' AND resolved_at < ?1",
            "DELETE FROM approvals WHERE status IN ('executed', 'failed', 'rejected', 'refused')
               AND COALESCE(decided_at, created_at) < ?1",
            "DELETE FROM approvals WHERE status = 'pending' AND expires_at < ?1",
            "DELETE FROM auto_actions WHERE logged = 1 AND state != 'started' AND time < ?1",
            "DELETE FROM fleet_acts WHERE time < ?1",
        ] {
            deleted += self.conn.execute(sql, [&before]).map_err(self.wrap())?;
        }
        Ok(deleted)
    }

    /// Whether the hourly housekeeping (`retention::keep`) is due at `now`,
    /// taking it when it is: of all macha processes, one does it per `every`.
    pub fn take_housekeeping(&self, now: DateTime<Utc>, every: TimeDelta) -> Result<bool, StoreError> {
        let cutoff = now.checked_sub_signed(every).unwrap_or(now).to_rfc3339();
        let taken = self
            .conn
            .execute(
                "INSERT INTO control (key, value) VALUES ('housekeeping', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = ?1 WHERE value < ?2",
                params![now.to_rfc3339(), cutoff],
            )
            .map_err(self.wrap())?;
        Ok(taken == 1)
    }

    /// Counts an automatic action on remote host `host` at `now`, unless
    /// it would make more than `max` hosts acted on automatically since
    /// `since` (a host already among them adds none). One statement: two
    /// processes cannot both take the last place. Its row, to give the
    /// place back when the host did nothing (`release_fleet_act`); `Err`
    /// with the hosts acted on in the window when there is no place.
    pub fn claim_fleet_act(
        &self,
        host: &str,
        incident: &Fingerprint,
        action: &str,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
        max: u32,
    ) -> Result<Result<i64, Vec<String>>, StoreError> {
        let since = since.to_rfc3339();
        let taken = self
            .conn
            .execute(
                "INSERT INTO fleet_acts (time, host, fingerprint, action) SELECT ?1, ?2, ?3, ?4
                 WHERE EXISTS (SELECT 1 FROM fleet_acts WHERE host = ?2 AND time >= ?5)
                    OR (SELECT COUNT(DISTINCT host) FROM fleet_acts WHERE time >= ?5) < ?6",
                params![now.to_rfc3339(), host, incident, action, since, max],
            )
            .map_err(self.wrap())?;
        if taken == 1 {
            return Ok(Ok(self.conn.last_insert_rowid()));
        }
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT host FROM fleet_acts WHERE time >= ?1 ORDER BY host")
            .map_err(self.wrap())?;
        let hosts = stmt.query_map([&since], |r| r.get(0)).map_err(self.wrap())?;
        Ok(Err(hosts.collect::<Result<_, _>>().map_err(self.wrap())?))
    }

    /// Gives back the place `claim_fleet_act` took as `row`: the host
    /// refused the action or left it to a person, so it was not acted on.
    pub fn release_fleet_act(&self, row: i64) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM fleet_acts WHERE rowid = ?1", [row]).map(drop).map_err(self.wrap())
    }

    /// Keeps `firing` (new, or as it is now), and forgets each of
    /// `resolved` (Alertmanager's fingerprints), in one transaction. An
    /// alert past the first [`MAX_ALERTS`] kept is not kept: returns how
    /// many were left out so.
    pub fn alerts_changed(
        &mut self,
        firing: &[crate::observe::alerts::Alert],
        resolved: &[String],
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let wrap = move |source| StoreError { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(&wrap)?;
        for fp in resolved {
            tx.execute("DELETE FROM alerts WHERE fingerprint = ?1", [fp]).map_err(&wrap)?;
        }
        let mut left_out = 0;
        for a in firing {
            let json = serde_json::to_string(a).map_err(|e| wrap(rusqlite::Error::ToSqlConversionFailure(e.into())))?;
            let kept = tx
                .execute(
                    "INSERT INTO alerts (fingerprint, name, alert, received_at) SELECT ?1, ?2, ?3, ?4
                     WHERE EXISTS (SELECT 1 FROM alerts WHERE fingerprint = ?1)
                        OR (SELECT COUNT(*) FROM alerts) < ?5
                     ON CONFLICT(fingerprint) DO UPDATE SET name = ?2, alert = ?3, received_at = ?4",
                    params![a.fingerprint, a.name, json, now.to_rfc3339(), MAX_ALERTS as i64],
                )
                .map_err(&wrap)?;
            left_out += usize::from(kept == 0);
        }
        tx.commit().map_err(&wrap)?;
        Ok(left_out)
    }

    /// The alerts firing for this host, oldest first.
    pub fn firing_alerts(&self) -> Result<Vec<crate::observe::alerts::Alert>, StoreError> {
        let mut stmt =
            self.conn.prepare("SELECT alert FROM alerts ORDER BY received_at, fingerprint").map_err(self.wrap())?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(self.wrap())?;
        let mut out = Vec::new();
        for row in rows {
            // A row this version cannot read is left out, not fatal.
            if let Ok(a) = serde_json::from_str(&row.map_err(self.wrap())?) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Why automatic actions are paused, if they are.
    pub fn paused(&self) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM control WHERE key = 'paused'", [], |r| r.get(0))
            .optional()
            .map_err(self.wrap())
    }

    /// Pauses (with the reason) or resumes automatic actions.
    pub fn set_paused(&self, reason: Option<&str>) -> Result<(), StoreError> {
        match reason {
            Some(r) => self.conn.execute(
                "INSERT INTO control (key, value) VALUES ('paused', ?1) ON CONFLICT(key) DO UPDATE SET value = ?1",
                [r],
            ),
            None => self.conn.execute("DELETE FROM control WHERE key = 'paused'", []),
        }
        .map(drop)
        .map_err(self.wrap())
    }

    /// Queues `action` for approval until `now + ttl`. An identical pending
    /// item (same action, same unit) is reused, not queued twice; if the
    /// incident's evidence changed since, the item is brought up to date,
    /// which changes its binding. Returns the item's id and whether it is new.
    pub fn enqueue(
        &self,
        incident: &Incident,
        action: &Action,
        reason: &str,
        diagnosis: &str,
        ttl: chrono::Duration,
    ) -> Result<(ApprovalId, bool), StoreError> {
        self.enqueue_for(&incident.fingerprint, &incident.evidence_key, action, reason, diagnosis, ttl)
    }

    /// Queues the undo of a rebuild or rollback that left the profile at
    /// generation `from`: approving it is all it takes to go back.
    pub fn enqueue_undo(
        &self,
        incident: &Fingerprint,
        from: u32,
        undo: &Action,
        reason: &str,
        ttl: chrono::Duration,
    ) -> Result<(ApprovalId, bool), StoreError> {
        self.enqueue_for(incident, &format!("{UNDO_PREFIX}{from}"), undo, reason, "", ttl)
    }

    fn enqueue_for(
        &self,
        fingerprint: &Fingerprint,
        evidence_key: &str,
        action: &Action,
        reason: &str,
        diagnosis: &str,
        ttl: chrono::Duration,
    ) -> Result<(ApprovalId, bool), StoreError> {
        let now = Utc::now();
        // An expiry past the end of time (a ttl no configuration accepts)
        // expires at once rather than never.
        let expires_at = now.checked_add_signed(ttl).unwrap_or(now).to_rfc3339();
        let binding = binding(action, fingerprint, evidence_key);
        // The same action on the same host: a remote host's is another's.
        let existing: Option<(ApprovalId, String)> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT id, binding, incident FROM approvals
                     WHERE status = 'pending' AND kind = ?1 AND unit = ?2 AND args = ?3 ORDER BY id",
                )
                .map_err(self.wrap())?;
            let rows = stmt
                .query_map(params![action.kind().as_str(), action.target(), action.to_json()], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get::<_, Fingerprint>(2)?))
                })
                .map_err(self.wrap())?;
            let mut found = None;
            for row in rows {
                let (id, binding, incident) = row.map_err(self.wrap())?;
                if incident.host() == fingerprint.host() {
                    found = Some((id, binding));
                    break;
                }
            }
            found
        };
        if let Some((id, old)) = existing {
            if old != binding {
                self.conn
                    .execute(
                        "UPDATE approvals SET incident = ?2, evidence_key = ?3, binding = ?4, reason = ?5, diagnosis = ?6,
                           expires_at = ?7 WHERE id = ?1",
                        params![
                            id,
                            fingerprint,
                            evidence_key,
                            binding,
                            reason,
                            diagnosis,
                            expires_at
                        ],
                    )
                    .map_err(self.wrap())?;
            }
            return Ok((id, false));
        }
        self.conn
            .execute(
                "INSERT INTO approvals (created_at, incident, kind, unit, args, reason, diagnosis, evidence_key, binding, expires_at, status)
                 VALUES (?1, ?2, ?3, ?4, ?10, ?5, ?6, ?7, ?8, ?9, 'pending')",
                params![
                    now.to_rfc3339(),
                    fingerprint,
                    action.kind().as_str(),
                    action.target(),
                    reason,
                    diagnosis,
                    evidence_key,
                    binding,
                    expires_at,
                    action.to_json()
                ],
            )
            .map_err(self.wrap())?;
        Ok((ApprovalId::new(self.conn.last_insert_rowid()), true))
    }

    /// Open incidents with their current evidence, for `detect`.
    pub fn open_evidence(&self) -> Result<Vec<OpenIncident>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT fingerprint, evidence_key FROM incidents WHERE status = 'open' ORDER BY opened_at")
            .map_err(self.wrap())?;
        let rows = stmt
            .query_map([], |r| Ok(OpenIncident { fingerprint: r.get(0)?, evidence_key: r.get(1)? }))
            .map_err(self.wrap())?;
        rows.collect::<Result<_, _>>().map_err(self.wrap())
    }

    /// Open incidents: fingerprint and summary, oldest first.
    pub fn open_incidents(&self) -> Result<Vec<(Fingerprint, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT fingerprint, summary FROM incidents WHERE status = 'open' ORDER BY opened_at")
            .map_err(self.wrap())?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(self.wrap())?;
        rows.collect::<Result<_, _>>().map_err(self.wrap())
    }

    /// Whether `fingerprint`, seen with `evidence_key`, still needs its
    /// decision: open with that evidence, and not decided for it (or its
    /// decision failed). One decided after `recent` (failing again, or
    /// open again after it resolved: a flap) waits.
    pub fn decision_due(
        &self,
        fingerprint: &Fingerprint,
        evidence_key: &str,
        recent: DateTime<Utc>,
    ) -> Result<Due, StoreError> {
        type Row = (IncidentStatus, String, Option<String>, String, Option<String>);
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT status, evidence_key, decided_key, decision, decided_at FROM incidents WHERE fingerprint = ?1",
                [fingerprint],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(self.wrap())?;
        let Some((IncidentStatus::Open, key, decided, decision, at)) = row else { return Ok(Due::Gone) };
        if key != evidence_key {
            return Ok(Due::Gone);
        }
        if decision == "failed" {
            return Ok(Due::Yes);
        }
        if decided.as_deref() == Some(evidence_key) {
            return Ok(Due::Decided);
        }
        let at = at.and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc));
        Ok(match at {
            Some(at) if at > recent => Due::Later(at),
            _ => Due::Yes,
        })
    }

    /// The incident's state and current evidence key, if it is known.
    pub fn incident_state(&self, fingerprint: &Fingerprint) -> Result<Option<(IncidentStatus, String)>, StoreError> {
        self.conn
            .query_row("SELECT status, evidence_key FROM incidents WHERE fingerprint = ?1", [fingerprint], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(self.wrap())
    }

    fn approval_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Approval> {
        let time =
            |s: Option<String>| s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok()).map(|t| t.with_timezone(&Utc));
        Ok(Approval {
            id: r.get(0)?,
            created_at: time(r.get(1)?).unwrap_or_default(),
            incident: r.get(2)?,
            kind: kind_from_str(&r.get::<_, String>(3)?),
            target: r.get(4)?,
            args: r.get(14)?,
            reason: r.get(5)?,
            diagnosis: r.get(6)?,
            status: r.get(7)?,
            decided_by: r.get(8)?,
            decided_at: time(r.get(9)?),
            outcome: r.get(10)?,
            evidence_key: r.get(11)?,
            binding: r.get(12)?,
            expires_at: time(r.get(13)?).unwrap_or_default(),
        })
    }

    const COLUMNS: &'static str =
        "id, created_at, incident, kind, unit, reason, diagnosis, status, decided_by, decided_at, \
        outcome, evidence_key, binding, expires_at, args";

    /// Items waiting for a human, oldest first.
    pub fn pending(&self) -> Result<Vec<Approval>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {} FROM approvals WHERE status = 'pending' ORDER BY id", Self::COLUMNS))
            .map_err(self.wrap())?;
        let rows = stmt.query_map([], Self::approval_from_row).map_err(self.wrap())?;
        rows.collect::<Result<_, _>>().map_err(self.wrap())
    }

    pub fn approval(&self, id: ApprovalId) -> Result<Option<Approval>, StoreError> {
        self.conn
            .query_row(&format!("SELECT {} FROM approvals WHERE id = ?1", Self::COLUMNS), [id], Self::approval_from_row)
            .optional()
            .map_err(self.wrap())
    }

    /// Takes a pending item for execution, if its binding is still
    /// `binding` (the one the caller checked). Only one caller can win: the
    /// others get `false`.
    pub fn claim(&self, id: ApprovalId, by: &str, binding: &str) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .execute(
                "UPDATE approvals SET status = 'executing', decided_by = ?2, decided_at = ?3
                 WHERE id = ?1 AND status = 'pending' AND binding = ?4",
                params![id, by, Utc::now().to_rfc3339(), binding],
            )
            .map_err(self.wrap())?;
        Ok(changed == 1)
    }

    /// Records how a claimed item ended: `executed`, `failed` or `refused`.
    pub fn finish(&self, id: ApprovalId, status: ApprovalStatus, outcome: &str) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE approvals SET status = ?2, outcome = ?3 WHERE id = ?1", params![id, status, outcome])
            .map(drop)
            .map_err(self.wrap())
    }

    /// Gives a claimed item back, untouched, when it could not be attempted
    /// (systemd unreachable): it waits for approval again.
    pub fn release(&self, id: ApprovalId) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE approvals SET status = 'pending', decided_by = NULL, decided_at = NULL WHERE id = ?1 AND status = 'executing'",
                [id],
            )
            .map(drop)
            .map_err(self.wrap())
    }

    /// Rejects a pending item, or one whose execution was interrupted
    /// (claimed before `stale_before` and never finished); `false` otherwise.
    pub fn reject(
        &self,
        id: ApprovalId,
        by: &str,
        reason: &str,
        stale_before: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .execute(
                "UPDATE approvals SET status = 'rejected', decided_by = ?2, decided_at = ?3, outcome = ?4
                 WHERE id = ?1 AND (status = 'pending' OR (status = 'executing' AND decided_at < ?5))",
                params![id, by, Utc::now().to_rfc3339(), reason, stale_before.to_rfc3339()],
            )
            .map_err(self.wrap())?;
        Ok(changed == 1)
    }

    /// Items claimed for execution before `stale_before` and never finished:
    /// the `approve` that took them was killed. They may or may not have run,
    /// so they are shown to a human, never retried automatically.
    pub fn interrupted(&self, stale_before: DateTime<Utc>) -> Result<Vec<Approval>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {} FROM approvals WHERE status = 'executing' AND decided_at < ?1 ORDER BY id",
                Self::COLUMNS
            ))
            .map_err(self.wrap())?;
        let rows = stmt.query_map([stale_before.to_rfc3339()], Self::approval_from_row).map_err(self.wrap())?;
        rows.collect::<Result<_, _>>().map_err(self.wrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};
    use std::path::Path;

    fn state(dir: &tempfile::TempDir) -> StateDir {
        StateDir::open(dir.path()).unwrap()
    }

    #[test]
    fn the_one_opener_keeps_a_write_ahead_log_synced_at_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        // The store and the outbox both open the database through it.
        let conn = connect(&state(&dir)).unwrap();
        let journal: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        let limit: i64 = conn.query_row("PRAGMA journal_size_limit", [], |r| r.get(0)).unwrap();
        assert_eq!((journal.as_str(), synchronous, limit), ("wal", 2, crate::sqlite::WAL_LIMIT), "2 is FULL");
    }

    /// A database that has been written to, closed: SQLite removes its
    /// side files when the last connection closes.
    fn written(dir: &tempfile::TempDir) {
        Store::open(&state(dir)).unwrap().set_paused(Some("test")).unwrap();
    }

    fn plant_link(at: &Path, to: &Path) {
        let _ = std::fs::remove_file(at);
        symlink(to, at).unwrap();
    }

    #[test]
    fn a_failing_decision_waits_twice_as_long_after_each_failure_up_to_the_limit() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let kind = FailureKind::InvalidAnswer;
        let failing = |failures| Failing {
            summary: String::new(),
            repeat: Repeating { kind, recorded: t0, count: 0, first: None, last: None },
            error: String::new(),
            failures,
            since: t0,
            last: t0,
        };
        let (every, max) = (TimeDelta::seconds(5), TimeDelta::seconds(900));
        let waits: Vec<i64> =
            [1, 2, 3, 8, 9, 1000].iter().map(|n| (failing(*n).next_try(every, max) - t0).num_seconds()).collect();
        assert_eq!(waits, [5, 10, 20, 640, 900, 900]);
    }

    #[test]
    fn a_failing_state_is_kept_with_its_incident_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&state(&dir)).unwrap();
        store
            .conn
            .execute(
                "INSERT INTO incidents (fingerprint, summary, status, opened_at, last_seen, evidence_key) VALUES ('f', 's', 'open', 't', 't', 'k')",
                [],
            )
            .unwrap();
        assert_eq!(store.failing(&"f".into()).unwrap(), None);
        let t0 = Utc::now();
        let f = Failing {
            summary: "s".into(),
            repeat: Repeating {
                kind: FailureKind::InvalidAnswer,
                recorded: t0,
                count: 3,
                first: Some(t0),
                last: Some(t0),
            },
            error: "invalid answer".into(),
            failures: 4,
            since: t0,
            last: t0,
        };
        store.set_failing(&"f".into(), Some(&f)).unwrap();
        assert_eq!(store.failing(&"f".into()).unwrap(), Some(f.clone()));
        assert_eq!(store.failing_open().unwrap(), [(Fingerprint::from("f"), f)]);
        store.set_failing(&"f".into(), None).unwrap();
        assert!(store.failing_open().unwrap().is_empty());
    }

    #[test]
    fn a_decision_is_due_once_per_evidence_and_a_flap_waits_for_a_later_pass() {
        use crate::detect::{Incident, IncidentKind};
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&state(&dir)).unwrap();
        let kind = IncidentKind::UnitFailed { unit: "web.service".into() };
        let incident = |key: &str| Incident {
            fingerprint: kind.fingerprint(),
            kind: kind.clone(),
            summary: "web.service failed".into(),
            evidence_key: key.into(),
        };
        let fp = kind.fingerprint();
        // systemd read, nothing else.
        let snap = |_: &[Incident]| {
            use crate::observe::{Scope, Snapshot, Source};
            Snapshot {
                taken_at: Utc::now(),
                hostname: "h".into(),
                failed_units: Source::Ok(Vec::new()),
                watched_units: Source::Ok(Vec::new()),
                journal: Source::Failed("not read".into()),
                unit_logs: Default::default(),
                host: Source::Failed("not read".into()),
                restarting: None,
                alerts: None,
                scope: Scope::Full,
            }
        };
        let long_ago = Utc::now() - TimeDelta::hours(1);
        let first = incident("1/0");
        store.sync_incidents(std::slice::from_ref(&first), &snap(&[]), None).unwrap();
        assert_eq!(store.decision_due(&fp, "1/0", long_ago).unwrap(), Due::Yes, "never decided");
        assert_eq!(store.decision_due(&fp, "other", long_ago).unwrap(), Due::Gone, "seen since with other evidence");
        store.mark_decided(&first, true).unwrap();
        assert_eq!(store.decision_due(&fp, "1/0", long_ago).unwrap(), Due::Decided);
        // It fails again at once: decided again, but not before a later pass.
        let again = incident("2/0");
        store.sync_incidents(std::slice::from_ref(&again), &snap(&[]), None).unwrap();
        assert!(matches!(store.decision_due(&fp, "2/0", long_ago).unwrap(), Due::Later(_)));
        assert_eq!(store.decision_due(&fp, "2/0", Utc::now() + TimeDelta::seconds(1)).unwrap(), Due::Yes);
        // Resolved, then open again (a flap): still waits.
        store.sync_incidents(&[], &snap(&[]), None).unwrap();
        assert_eq!(store.decision_due(&fp, "2/0", long_ago).unwrap(), Due::Gone, "resolved");
        let third = incident("3/0");
        store.sync_incidents(std::slice::from_ref(&third), &snap(&[]), None).unwrap();
        assert!(matches!(store.decision_due(&fp, "3/0", long_ago).unwrap(), Due::Later(_)));
        // A failed decision is asked again (its own pacing applies).
        store.mark_decided(&third, false).unwrap();
        assert_eq!(store.decision_due(&fp, "3/0", long_ago).unwrap(), Due::Yes);
    }

    #[test]
    fn a_hosts_pass_resolves_only_that_hosts_incidents() {
        use crate::detect::{Incident, IncidentKind};
        use crate::observe::{Scope, Snapshot, Source};
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&state(&dir)).unwrap();
        let of = |host: Option<&str>, kind: IncidentKind| {
            let own = kind.fingerprint();
            let fingerprint = host.map(|h| Fingerprint::of_host(h, &own)).unwrap_or(own);
            Incident { fingerprint, kind, summary: "s".into(), evidence_key: "k".into() }
        };
        let web = IncidentKind::UnitFailed { unit: "web.service".into() };
        let saw_all = Snapshot {
            taken_at: Utc::now(),
            hostname: "h".into(),
            failed_units: Source::Ok(Vec::new()),
            watched_units: Source::Ok(Vec::new()),
            journal: Source::Ok(Default::default()),
            unit_logs: Default::default(),
            host: Source::Failed("not read".into()),
            restarting: None,
            alerts: None,
            scope: Scope::Full,
        };
        let local = of(None, web.clone());
        let h1 = of(Some("h1"), web.clone());
        let h1_down = of(None, IncidentKind::HostUnreachable { host: "h1".into() });
        let h2 = of(Some("h2"), web);
        store.sync_incidents(std::slice::from_ref(&local), &saw_all, None).unwrap();
        store.sync_incidents(std::slice::from_ref(&h1), &saw_all, Some("h1")).unwrap();
        store.sync_incidents(std::slice::from_ref(&h2), &saw_all, Some("h2")).unwrap();
        // Each pass sees only its own: none resolves another host's.
        let open = |s: &Store| s.open_incidents().unwrap().into_iter().map(|(f, _)| f.to_string()).collect::<Vec<_>>();
        assert_eq!(
            open(&store),
            ["unit-failed:web.service", "h1/unit-failed:web.service", "h2/unit-failed:web.service"]
        );
        // h1 cannot be reached: its incidents stay open (nothing of it was read).
        let unread = Snapshot { failed_units: Source::Failed("unreachable".into()), ..saw_all.clone() };
        store.sync_incidents(std::slice::from_ref(&h1_down), &unread, Some("h1")).unwrap();
        assert_eq!(open(&store).len(), 4);
        // h1 answers again, healthy: its failure is resolved; its being
        // unreachable is resolved once its host statistics are read.
        let (_, resolved) = store.sync_incidents(&[], &saw_all, Some("h1")).unwrap();
        assert_eq!(resolved, ["h1/unit-failed:web.service"]);
        let read_host = Snapshot {
            host: Source::Ok(crate::observe::host::HostStats {
                cpu_count: 1,
                cpu_percent: None,
                load: [0.0; 3],
                memory_total: 1,
                memory_used: 0,
                swap_total: 0,
                swap_used: 0,
                filesystems: Vec::new(),
                uptime_secs: 1,
                boot_id: "b".into(),
            }),
            ..saw_all.clone()
        };
        let (_, resolved) = store.sync_incidents(&[], &read_host, Some("h1")).unwrap();
        assert_eq!(resolved, ["host-unreachable:h1"]);
        let (_, resolved) = store.sync_incidents(&[], &saw_all, None).unwrap();
        assert_eq!(resolved, ["unit-failed:web.service"]);
        assert_eq!(open(&store), ["h2/unit-failed:web.service"]);
    }

    #[test]
    fn the_same_action_waits_once_per_host() {
        use crate::detect::{Incident, IncidentKind};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&state(&dir)).unwrap();
        let kind = IncidentKind::UnitFailed { unit: "web.service".into() };
        let on = |host: &str| Incident {
            fingerprint: Fingerprint::of_host(host, &kind.fingerprint()),
            kind: kind.clone(),
            summary: "s".into(),
            evidence_key: "k".into(),
        };
        let restart = Action::RestartUnit { unit: crate::unit::UnitName::parse("web.service").unwrap() };
        let ttl = TimeDelta::hours(1);
        let (h2, new) = store.enqueue(&on("h2"), &restart, "r", "d", ttl).unwrap();
        assert!(new);
        let (h3, new) = store.enqueue(&on("h3"), &restart, "r", "d", ttl).unwrap();
        assert!(new && h3 != h2, "another host's restart is another item");
        assert_eq!(store.enqueue(&on("h2"), &restart, "r", "d", ttl).unwrap(), (h2, false));
        assert_eq!(store.pending().unwrap().len(), 2);
    }

    #[test]
    fn at_most_so_many_hosts_are_acted_on_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&state(&dir)).unwrap();
        let now = Utc::now();
        let since = now - TimeDelta::hours(1);
        let claim = |host: &str, at: DateTime<Utc>| {
            let fp = Fingerprint::of_host(host, &"unit-failed:a.service".into());
            store.claim_fleet_act(host, &fp, "restart_unit", at, since, 1).unwrap()
        };
        // h1 refused: its place is given back, and h2 takes it.
        store.release_fleet_act(claim("h1", now).unwrap()).unwrap();
        let h2 = claim("h2", now).unwrap();
        store.release_fleet_act(h2).unwrap();
        assert!(claim("h1", now).is_ok());
        assert!(claim("h1", now).is_ok(), "a host already acted on takes no new place");
        assert_eq!(claim("h2", now), Err(vec!["h1".to_owned()]));
        assert_eq!(claim("h3", now), Err(vec!["h1".to_owned()]));
        // Once h1's act is out of the window, another host may be acted on.
        let later = now + TimeDelta::hours(2);
        let claim_later = |host: &str| {
            let fp = Fingerprint::of_host(host, &"unit-failed:a.service".into());
            store.claim_fleet_act(host, &fp, "restart_unit", later, later - TimeDelta::hours(1), 1).unwrap()
        };
        assert!(claim_later("h2").is_ok());
        assert_eq!(claim_later("h3"), Err(vec!["h2".to_owned()]));
        // Zero: no new host is acted on automatically.
        let fp = Fingerprint::of_host("h9", &"unit-failed:a.service".into());
        let since = later + TimeDelta::seconds(1);
        assert_eq!(store.claim_fleet_act("h9", &fp, "restart_unit", later, since, 0).unwrap(), Err(Vec::new()));
    }

    #[test]
    fn rows_that_only_grow_are_pruned_by_age_and_what_is_still_needed_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&state(&dir)).unwrap();
        let (old, recent) = ((Utc::now() - TimeDelta::days(100)).to_rfc3339(), Utc::now().to_rfc3339());
        for (fp, status, at) in
            [("open-old", "open", &old), ("resolved-old", "resolved", &old), ("resolved-recent", "resolved", &recent)]
        {
            store
                .conn
                .execute(
                    "INSERT INTO incidents (fingerprint, summary, status, opened_at, last_seen, resolved_at, evidence_key)
                     VALUES (?1, 's', ?2, ?3, ?3, ?3, 'k')",
                    params![fp, status, at],
                )
                .unwrap();
        }
        for (status, at, expires) in [
            ("executed", &old, &old),
            ("rejected", &recent, &recent),
            ("pending", &old, &old),
            ("pending", &old, &recent),
            ("executing", &old, &old),
        ] {
            store
                .conn
                .execute(
                    "INSERT INTO approvals (created_at, incident, kind, unit, reason, diagnosis, evidence_key, binding,
                       expires_at, status, decided_at) VALUES (?1, 'i', 'restart_unit', 'u', 'r', 'd', 'k', 'b', ?2, ?3, ?1)",
                    params![at, expires, status],
                )
                .unwrap();
        }
        for (state, logged, at) in [("finished", 1, &old), ("started", 0, &old), ("finished", 1, &recent)] {
            store
                .conn
                .execute(
                    "INSERT INTO auto_actions (time, fingerprint, succeeded, state, logged) VALUES (?1, 'f', 1, ?2, ?3)",
                    params![at, state, logged],
                )
                .unwrap();
        }
        let pruned = store.prune(Utc::now() - TimeDelta::days(90)).unwrap();
        assert_eq!(pruned, 4);
        let left = |sql: &str| -> Vec<String> {
            let mut stmt = store.conn.prepare(sql).unwrap();
            let rows = stmt.query_map([], |r| r.get(0)).unwrap();
            rows.map(Result::unwrap).collect()
        };
        assert_eq!(left("SELECT fingerprint FROM incidents ORDER BY fingerprint"), ["open-old", "resolved-recent"]);
        assert_eq!(left("SELECT status FROM approvals ORDER BY id"), ["rejected", "pending", "executing"]);
        assert_eq!(left("SELECT state FROM auto_actions ORDER BY rowid"), ["started", "finished"]);
        // Once an hour, whichever process asks first.
        let now = Utc::now();
        assert!(store.take_housekeeping(now, TimeDelta::hours(1)).unwrap());
        assert!(!store.take_housekeeping(now + TimeDelta::minutes(59), TimeDelta::hours(1)).unwrap());
        assert!(store.take_housekeeping(now + TimeDelta::minutes(61), TimeDelta::hours(1)).unwrap());
    }

    #[test]
    fn the_database_and_the_files_beside_it_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&state(&dir)).unwrap();
        store.set_paused(Some("test")).unwrap();
        for name in ["state.db", "state.db-wal", "state.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(name)).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
    }

    #[test]
    fn a_link_at_the_database_or_beside_it_is_refused_and_not_followed() {
        for name in ["state.db", "state.db-wal", "state.db-shm", "state.db-journal"] {
            let dir = tempfile::tempdir().unwrap();
            let elsewhere = tempfile::tempdir().unwrap();
            let target = elsewhere.path().join("precious");
            std::fs::write(&target, "precious\n").unwrap();
            if name != "state.db" {
                written(&dir);
            }
            plant_link(&dir.path().join(name), &target);
            let Err(e) = Store::open(&state(&dir)) else { panic!("{name}: a link was opened") };
            assert!(e.to_string().contains(&format!("{name} is a symbolic link: refused")), "{name}: {e}");
            assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n", "{name}");
        }
    }

    /// What the check above stands in front of: SQLite opens its side
    /// files with `O_NOFOLLOW` and, asked to, refuses a link at the
    /// database, so a link planted between the check and the open is not
    /// followed either.
    #[test]
    fn sqlite_itself_follows_no_link_at_the_database_or_beside_it() {
        for name in ["state.db", "state.db-wal", "state.db-shm"] {
            let dir = tempfile::tempdir().unwrap();
            let elsewhere = tempfile::tempdir().unwrap();
            let target = elsewhere.path().join("precious");
            std::fs::write(&target, "precious\n").unwrap();
            if name != "state.db" {
                written(&dir);
            }
            plant_link(&dir.path().join(name), &target);
            let flags = rusqlite::OpenFlags::default() | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW;
            let used = Connection::open_with_flags(dir.path().join(DB_FILE), flags).and_then(|c| {
                c.execute_batch(
                    "PRAGMA journal_mode = WAL; CREATE TABLE IF NOT EXISTS t (x); INSERT INTO t VALUES (1);",
                )
            });
            assert!(used.is_err(), "{name}: SQLite used the link");
            assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n", "{name}");
            assert!(std::fs::symlink_metadata(dir.path().join(name)).unwrap().file_type().is_symlink(), "{name}");
        }
    }

    #[test]
    fn commands_opening_a_new_database_at_once_all_open_it() {
        // A daemon starting and `macha status` run at that moment both
        // create the database and switch it to WAL.
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let state = state(&dir);
            let openers: Vec<_> = (0..6)
                .map(|_| {
                    let state = state.clone();
                    std::thread::spawn(move || Store::open(&state).map(drop).map_err(|e| e.to_string()))
                })
                .collect();
            for opener in openers {
                opener.join().unwrap().unwrap();
            }
        }
    }
}
