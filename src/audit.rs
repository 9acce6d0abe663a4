//! Stage 7, record: the audit trail, `decisions.jsonl`, `actions.jsonl`,
//! `incidents.jsonl` and `memory.jsonl` in the state directory, one JSON
//! object per line, each chained to the one before by its hash.
//!
//! Each record is appended with a single write under an exclusive lock and
//! synced before the call returns. A crash can at worst leave a torn last
//! line; the next append starts on a fresh line, and readers report torn
//! lines instead of failing on them, so no later record is lost.
//!
//! A trail is bounded: past `retention.audit_max_kb` its file is moved
//! aside (`decisions.1.jsonl`, the one before to `decisions.2.jsonl`, the
//! oldest beyond `retention.audit_files` deleted), only ever by an append,
//! under the same lock, and the chain runs on: the new file's first record
//! carries the hash of the last record of the file before. Readers hold
//! the lock shared while they read across the files, so no file moves
//! under them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::act::Observed;
use crate::decide::{Decision, Outcome, ProposedAction};
use crate::gate::Verdict;
use crate::ids::{ApprovalId, Fingerprint};
use crate::repeat::Repeats;
use crate::rotation::{self, Naming, Rotation, MAX_READ_BYTES};
use crate::state_dir::{StateDir, StateError};

pub const DECISIONS: &str = "decisions.jsonl";
pub const ACTIONS: &str = "actions.jsonl";
pub const INCIDENTS: &str = "incidents.jsonl";
/// What people did to incident memory (`macha kb forget`, `macha kb import`).
pub const MEMORY: &str = "memory.jsonl";
/// What controllers asked of this host over `macha remote serve`: the
/// sessions, the actions asked for, and everything refused.
pub const REMOTE: &str = "remote.jsonl";

/// What Alertmanager's webhook brought (`alerts`): each post taken or
/// refused, and why.
pub const ALERTS: &str = "alerts.jsonl";

/// Every trail, in the order `macha-logs verify` checks them.
pub const TRAILS: [&str; 6] = [DECISIONS, ACTIONS, INCIDENTS, MEMORY, REMOTE, ALERTS];

/// An incident opened or resolved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IncidentRecord {
    pub time: DateTime<Utc>,
    pub host: String,
    pub incident: Fingerprint,
    pub event: IncidentEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The NixOS system generation running when it opened, when the
    /// profile could be read (absent in records of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
}

/// What happened to an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentEvent {
    Opened,
    Resolved,
}

impl IncidentEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentEvent::Opened => "opened",
            IncidentEvent::Resolved => "resolved",
        }
    }
}

/// Whether the model's answer became a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionOutcome {
    Decided,
    Failed,
}

impl DecisionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionOutcome::Decided => "decided",
            DecisionOutcome::Failed => "failed",
        }
    }
}

impl std::fmt::Display for DecisionOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who set an action going: the daemon on its own, a person's approval,
/// the revert of a system change whose health check failed (macha's own
/// doing, whatever set the change going), or a controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Automatic,
    Approval,
    Revert,
    /// Asked by a controller over `macha remote serve`.
    Remote,
}

impl Origin {
    /// Its name in the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Automatic => "automatic",
            Origin::Approval => "approval",
            Origin::Revert => "revert",
            Origin::Remote => "remote",
        }
    }
}

/// Where an action stands in `actions.jsonl`: an automatic one is
/// `started` before it runs and an approved one `approved`, then each
/// ends once (`succeeded`, `failed`, `interrupted` when its end could not
/// be seen); one not carried out says why (`queued`, `already_queued`,
/// `escalated`, `deferred`, `proposed`, `refused`, `rejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionOutcome {
    Started,
    Approved,
    Succeeded,
    Failed,
    Interrupted,
    Queued,
    AlreadyQueued,
    Escalated,
    Deferred,
    Proposed,
    Refused,
    Rejected,
}

impl ActionOutcome {
    /// Its name in the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionOutcome::Started => "started",
            ActionOutcome::Approved => "approved",
            ActionOutcome::Succeeded => "succeeded",
            ActionOutcome::Failed => "failed",
            ActionOutcome::Interrupted => "interrupted",
            ActionOutcome::Queued => "queued",
            ActionOutcome::AlreadyQueued => "already_queued",
            ActionOutcome::Escalated => "escalated",
            ActionOutcome::Deferred => "deferred",
            ActionOutcome::Proposed => "proposed",
            ActionOutcome::Refused => "refused",
            ActionOutcome::Rejected => "rejected",
        }
    }

    /// How an action that ran ended.
    pub fn of_run(succeeded: bool) -> Self {
        if succeeded {
            ActionOutcome::Succeeded
        } else {
            ActionOutcome::Failed
        }
    }
}

impl std::fmt::Display for ActionOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decision: the incident, what the model said (or why it could not),
/// and what the gate made of each proposed action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DecisionRecord {
    pub time: DateTime<Utc>,
    pub host: String,
    pub incident: Fingerprint,
    pub summary: String,
    pub model: String,
    pub outcome: DecisionOutcome,
    pub attempts: u32,
    pub wall_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_answer: Option<String>,
    /// The endpoint that answered (absent in records older than the fallback,
    /// and when none answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<crate::model::ProviderInfo>,
    /// How the decision was reached: prompt size and budget, summaries, tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trail: Option<crate::decide::Trail>,
    pub gated: Vec<GatedAction>,
    /// Set on a record of repeats: it stands for `count` failed decisions
    /// of this incident, failing as the one recorded before them (the same
    /// kind of error), counted instead of recorded one by one; they have no
    /// attempts, trail or actions of their own (`repeat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeated: Option<Repeats>,
}

/// A proposed action and the gate's verdict on it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GatedAction {
    pub proposed: ProposedAction,
    /// `execute`, `queue`, `inform` or `refuse`.
    pub verdict: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl GatedAction {
    pub fn new(proposed: &ProposedAction, verdict: &Verdict) -> Self {
        let (v, detail) = match verdict {
            Verdict::Execute { .. } => ("execute", None),
            Verdict::Queue { .. } => ("queue", None),
            Verdict::Inform => ("inform", None),
            Verdict::Propose { .. } => ("propose", None),
            Verdict::Refuse { reason } => ("refuse", Some(reason.clone())),
        };
        Self { proposed: proposed.clone(), verdict: v.into(), detail }
    }
}

impl DecisionRecord {
    pub fn new(
        host: &str,
        incident: &crate::detect::Incident,
        model: &str,
        outcome: &Outcome,
        gated: Vec<GatedAction>,
    ) -> Self {
        let base = Self {
            time: Utc::now(),
            host: host.into(),
            incident: incident.fingerprint.clone(),
            summary: incident.summary.clone(),
            model: model.into(),
            outcome: DecisionOutcome::Failed,
            attempts: 0,
            wall_ms: 0,
            decision: None,
            error: None,
            last_answer: None,
            provider: outcome.provider().cloned(),
            trail: Some(outcome.trail().clone()),
            gated,
            repeated: None,
        };
        match outcome {
            Outcome::Decided { decision, attempts, wall_ms, .. } => Self {
                outcome: DecisionOutcome::Decided,
                attempts: *attempts,
                wall_ms: *wall_ms,
                decision: Some(decision.clone()),
                ..base
            },
            Outcome::Failed { error, attempts, last_answer, wall_ms, .. } => Self {
                outcome: DecisionOutcome::Failed,
                attempts: *attempts,
                wall_ms: *wall_ms,
                error: Some(error.clone()),
                last_answer: last_answer.clone(),
                ..base
            },
        }
    }
}

impl DecisionRecord {
    /// The record of `repeats`: failed decisions of `incident` (whose
    /// summary is `summary`) that failed as the one recorded before them,
    /// the newest with `error`.
    pub fn repeats(
        host: &str,
        incident: &Fingerprint,
        summary: &str,
        model: &str,
        error: &str,
        repeats: Repeats,
    ) -> Self {
        Self {
            time: Utc::now(),
            host: host.into(),
            incident: incident.clone(),
            summary: summary.into(),
            model: model.into(),
            outcome: DecisionOutcome::Failed,
            attempts: 0,
            wall_ms: 0,
            decision: None,
            error: Some(error.into()),
            last_answer: None,
            provider: None,
            trail: None,
            gated: Vec::new(),
            repeated: Some(repeats),
        }
    }
}

/// What happened to one action: carried out, queued, refused, rejected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActionRecord {
    pub time: DateTime<Utc>,
    pub host: String,
    pub incident: Fingerprint,
    /// Catalog entry, for example `restart_unit`.
    pub action: String,
    /// The target exactly as proposed (it may not be a valid unit name).
    pub target: Option<String>,
    pub origin: Origin,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<ApprovalId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// An automatic action's id in storm control's history: its `started`
    /// record and its one outcome record carry the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_id: Option<i64>,
    pub outcome: ActionOutcome,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Observed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Observed>,
    /// The health check of the system a switch, test or rollback moved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::act::health::HealthCheck>,
}

impl ActionRecord {
    /// The record of how the action this records ended, as `report` says.
    pub fn ended(&self, report: &crate::act::Report) -> ActionRecord {
        ActionRecord {
            time: Utc::now(),
            outcome: ActionOutcome::of_run(report.succeeded),
            detail: report.detail.clone(),
            before: report.before.clone(),
            after: report.after.clone(),
            health: report.health.clone(),
            ..self.clone()
        }
    }
}

/// A person changed incident memory: forgot one memory, or imported
/// memories from a file. Memory is otherwise folded from the other trails
/// alone (`remember`), so these are the only changes to it they do not show.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemoryRecord {
    pub time: DateTime<Utc>,
    /// The host the command ran on.
    pub host: String,
    pub event: MemoryEvent,
    /// The person, as `macha-approve` records an approver: "alice (uid 1000)".
    pub by: String,
    /// The memory forgotten (`host/fingerprint`); none for an import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// What it was (a forgotten memory's summary and counts), or what was
    /// imported from where.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryEvent {
    Forgotten,
    Imported,
}

impl MemoryEvent {
    /// Its name in the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryEvent::Forgotten => "forgotten",
            MemoryEvent::Imported => "imported",
        }
    }
}

/// A file that could not be appended to, verified or read: what was being
/// done (`read_all` is also how `macha-logs` reads the daemon's log, which
/// is no audit file), and why, which names the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op}: {source}")]
pub struct AuditError {
    op: &'static str,
    source: StateError,
}

/// A seal holds one hash.
const MAX_SEAL_BYTES: u64 = 1024;

/// The field that chains each record to the one before it: the SHA-256 of
/// the previous record's line, as written.
pub const PREV_HASH: &str = "prev_hash";

/// `prev_hash` of the first record of a trail.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How the files an audit file is moved to are named: `decisions.1.jsonl`.
const NAMING: Naming = Naming::BeforeExtension;

/// Tries at opening the current file of a trail before giving up: each
/// retry means another process moved it aside in between.
const OPEN_TRIES: u32 = 100;

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn is_record(line: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|v| v.is_object())
}

fn io_error(state: &StateDir, name: &str, error: std::io::Error) -> StateError {
    StateError::Io { path: state.path_of(name).display().to_string(), error }
}

/// The files of the trail `name` that are kept, oldest first: the ones
/// moved aside (`NAME.N.jsonl`, highest `N` first), then `name` itself.
pub fn kept_files(state: &StateDir, name: &str) -> Result<Vec<String>, StateError> {
    let mut files: Vec<String> =
        rotation::numbers(state, name, NAMING)?.iter().rev().map(|n| NAMING.name(name, *n)).collect();
    files.push(name.to_owned());
    Ok(files)
}

/// The current file of the trail, locked: exclusively for appending (and
/// created if missing), shared for reading (`None` when it does not exist).
/// A file another process moved aside between the open and the lock is
/// let go and the name opened again, so the lock held is always on the file
/// the name holds; nobody moves it aside while it is held.
fn open_current(state: &StateDir, name: &str, for_append: bool) -> Result<Option<File>, StateError> {
    for _ in 0..OPEN_TRIES {
        let file = if for_append {
            state.append(name)?
        } else {
            match state.open_read(name)? {
                Some(f) => f,
                None => return Ok(None),
            }
        };
        let locked = if for_append { file.lock() } else { file.lock_shared() };
        locked.map_err(|e| io_error(state, name, e))?;
        let open = file.metadata().map_err(|e| io_error(state, name, e))?;
        if state.metadata(name)?.is_some_and(|m| m.is_same_file(&open)) {
            return Ok(Some(file));
        }
    }
    Err(io_error(state, name, std::io::Error::other("it keeps being moved aside while it is opened")))
}

/// The last complete record of the file (a torn tail is skipped), read
/// backwards from the end so that appending stays cheap on a long trail.
fn last_record(file: &mut File, len: u64) -> std::io::Result<Option<Vec<u8>>> {
    const CHUNK: u64 = 64 * 1024;
    let mut chunk = vec![0u8; CHUNK as usize];
    // The end of the line looked at next, and how far back the file has
    // been scanned for line ends: each byte is scanned once and a line
    // read whole only when it may be a record, so a long line without end
    // costs one pass, not one per chunk.
    let (mut end, mut pos) = (len, len);
    while pos > 0 {
        let from = pos.saturating_sub(CHUNK);
        let n = (pos - from) as usize;
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk[..n])?;
        for i in (0..n).rev().filter(|&i| chunk[i] == b'\n') {
            let newline = from + i as u64;
            if let Some(line) = record_between(file, newline + 1, end)? {
                return Ok(Some(line));
            }
            end = newline;
        }
        pos = from;
    }
    record_between(file, 0, end)
}

/// The bytes from `start` to `end` of `file` when they are one record.
fn record_between(file: &mut File, start: u64, end: u64) -> std::io::Result<Option<Vec<u8>>> {
    if end <= start {
        return Ok(None);
    }
    // A record starts with `{` (or blanks): anything else is passed over unread.
    let mut first = [0u8; 1];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut first)?;
    if first[0] != b'{' && !first[0].is_ascii_whitespace() {
        return Ok(None);
    }
    let mut line = vec![0u8; (end - start) as usize];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut line)?;
    Ok(is_record(&line).then_some(line))
}

/// The hash the next record of a trail whose current file holds no record
/// chains to: that of the last record of the newest file moved aside, or
/// `GENESIS` when the trail is new.
fn end_of_rotated(state: &StateDir, name: &str) -> Result<String, StateError> {
    for n in rotation::numbers(state, name, NAMING)? {
        let rotated = NAMING.name(name, n);
        let Some(mut file) = state.open_read(&rotated)? else { continue };
        let len = file.metadata().map_err(|e| io_error(state, &rotated, e))?.len();
        if let Some(line) = last_record(&mut file, len).map_err(|e| io_error(state, &rotated, e))? {
            return Ok(sha256_hex(&line));
        }
    }
    Ok(GENESIS.to_owned())
}

/// Appends one record to the trail `name` in the state directory, chained
/// to the record before it, and seals the trail's end in `name.head`. A
/// current file that would grow past `rotation.max_bytes` is moved aside
/// first (`NAME.1.jsonl`, the oldest beyond `rotation.files` deleted), and
/// the new file's first record chains to the last one of the file before.
pub fn append<T: Serialize>(state: &StateDir, name: &str, record: &T, rotation: Rotation) -> Result<(), AuditError> {
    let op = "append to the audit trail";
    let fail = |source| AuditError { op, source };
    let err = |e: std::io::Error| fail(io_error(state, name, e));
    let mut value = serde_json::to_value(record).map_err(|e| err(e.into()))?;
    let chained = |value: &mut serde_json::Value, prev: &str| -> Result<Vec<u8>, AuditError> {
        if let Some(map) = value.as_object_mut() {
            map.insert(PREV_HASH.into(), prev.into());
        }
        serde_json::to_vec(value).map_err(|e| err(e.into()))
    };
    // Every hash has the same length: the line's size is known before its
    // hash is, and with it whether the file must be moved aside first.
    let size = chained(&mut value, GENESIS)?.len() as u64 + 2;
    let (mut file, len) = loop {
        let Some(file) = open_current(state, name, true).map_err(fail)? else {
            return Err(err(std::io::Error::other("it could not be created")));
        };
        let len = file.metadata().map_err(err)?.len();
        if len == 0 || len.saturating_add(size) <= rotation.max_bytes {
            break (file, len);
        }
        rotation::move_aside(state, name, NAMING, rotation.files).map_err(fail)?;
        // The file moved aside is let go here (its lock with it); the next
        // turn takes the new one.
    };
    let prev = match last_record(&mut file, len).map_err(err)? {
        Some(line) => sha256_hex(&line),
        None => end_of_rotated(state, name).map_err(fail)?,
    };
    let body = chained(&mut value, &prev)?;
    let mut line = Vec::with_capacity(body.len() + 2);
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1)).map_err(err)?;
        file.read_exact(&mut last).map_err(err)?;
        if last[0] != b'\n' {
            // A torn line from a crash: end it, so this record starts clean.
            line.push(b'\n');
        }
    }
    line.extend_from_slice(&body);
    line.push(b'\n');
    if let Err(e) = file.write_all(&line).and_then(|()| file.sync_data()) {
        // A write cut short (a full disk) leaves no torn line behind.
        let _ = file.set_len(len);
        return Err(err(e));
    }
    seal(state, name, &sha256_hex(&body)).map_err(fail)
}

/// Writes the hash of the trail's newest record to `name.head`, replacing it whole.
fn seal(state: &StateDir, name: &str, hash: &str) -> Result<(), StateError> {
    state.replace(&format!("{name}.head"), hash.as_bytes())
}

/// The first record that breaks a chain: the file, its line and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Break {
    pub file: String,
    pub line: usize,
    pub why: String,
}

/// The result of checking a trail's chain across its kept files.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChainReport {
    pub records: usize,
    /// The kept files that hold records.
    pub files: usize,
    pub broken: Option<Break>,
    /// What does not break the chain: history before the oldest kept
    /// record rotated away, the newest record written but its seal not (as
    /// when a crash interrupts an append).
    pub notes: Vec<String>,
}

/// Checks that every kept record of the trail `name` carries the hash of
/// the one before it, across the files it was moved aside to, and that the
/// trail ends where its seal says. The oldest kept record may follow
/// records no longer kept (history rotated away: a note); a file's first
/// record that does not follow the last of the file before it is a break.
pub fn verify(state: &StateDir, name: &str) -> Result<ChainReport, AuditError> {
    let fail = |source| AuditError { op: "verify the audit trail", source };
    let _held = open_current(state, name, false).map_err(fail)?;
    let files = kept_files(state, name).map_err(fail)?;
    let mut report = ChainReport::default();
    // The newest record so far (its hash, file and line), and the hash of the one before it.
    let mut last: Option<(String, &String, usize)> = None;
    let mut before_last = GENESIS.to_owned();
    let rotated = files.len() > 1;
    for file in &files {
        let data = state.read(file, MAX_READ_BYTES).map_err(fail)?.unwrap_or_default();
        let mut file_records = 0;
        for (i, line) in data.split(|b| *b == b'\n').enumerate() {
            let n = i + 1;
            if line.is_empty() {
                continue;
            }
            let broken = |why: String| Break { file: file.clone(), line: n, why };
            let value: Option<serde_json::Value> =
                serde_json::from_slice(line).ok().filter(serde_json::Value::is_object);
            let Some(value) = value else {
                report
                    .broken
                    .get_or_insert(broken("not a complete record (a torn write, or the line was damaged)".into()));
                continue;
            };
            report.records += 1;
            file_records += 1;
            let found = value.get(PREV_HASH).and_then(serde_json::Value::as_str);
            match (found, &last) {
                (None, _) => {
                    report.broken.get_or_insert(broken(format!("it has no {PREV_HASH}")));
                }
                (Some(h), Some((p, _, _))) if h == p => {}
                (Some(h), None) if h == GENESIS => {}
                (Some(_), None) if rotated && file != name => report.notes.push(format!(
                    "earlier history was rotated away: the oldest kept record ({file} line {n}) follows records no longer kept"
                )),
                (Some(_), None) => {
                    report.broken.get_or_insert(broken("the first record does not start the chain: records before it were removed".into()));
                }
                (Some(_), Some((_, before, line))) if *before == file => {
                    report.broken.get_or_insert(broken(format!("its prev_hash does not match line {line}: that record was changed, or records were removed or inserted between them")));
                }
                (Some(_), Some((_, before, line))) => {
                    report.broken.get_or_insert(broken(format!("its prev_hash does not match the last record of {before} (line {line}): that record was changed, or records (or a whole file) were removed between the two files")));
                }
            }
            let hash = sha256_hex(line);
            before_last = last.replace((hash, file, n)).map_or_else(|| GENESIS.to_owned(), |(h, _, _)| h);
        }
        report.files += usize::from(file_records > 0);
    }
    let head = state
        .read(&format!("{name}.head"), MAX_SEAL_BYTES)
        .map_err(fail)?
        .map(|h| String::from_utf8_lossy(&h).into_owned());
    let (newest, last_file, last_line) = match &last {
        Some((hash, file, line)) => (hash.clone(), (*file).clone(), *line),
        None => (GENESIS.to_owned(), name.to_owned(), 0),
    };
    match head {
        Some(head) if head.trim() == newest => {}
        Some(head) if head.trim() == before_last => {
            report.notes.push(format!(
                "{last_file} line {last_line} was written but not sealed (an append was interrupted); it is intact"
            ));
        }
        Some(_) => {
            report.broken.get_or_insert(Break {
                file: last_file,
                line: last_line,
                why: "the trail does not end where its seal says: records were removed from its end, or the newest one was changed".into(),
            });
        }
        None if report.records == 0 => {}
        None => {
            report.broken.get_or_insert(Break {
                file: last_file,
                line: last_line,
                why: format!("its seal {name}.head is missing"),
            });
        }
    }
    Ok(report)
}

/// When records older than the oldest kept one were deleted by rotation:
/// that oldest record's time. `None` when the kept files hold the whole
/// trail (or none of it).
pub fn rotated_away_before(state: &StateDir, name: &str) -> Result<Option<DateTime<Utc>>, AuditError> {
    let fail = |source| AuditError { op: "read the records", source };
    let files = kept_files(state, name).map_err(fail)?;
    for file in &files {
        let Some(f) = state.open_read(file).map_err(fail)? else { continue };
        let mut first = Vec::new();
        // A record is at most what one append writes; its first line is enough.
        let mut reader = std::io::BufReader::new(f.take(MAX_READ_BYTES));
        std::io::BufRead::read_until(&mut reader, b'\n', &mut first).map_err(|e| fail(io_error(state, file, e)))?;
        let Ok(record) = serde_json::from_slice::<serde_json::Value>(&first) else { continue };
        if record.get(PREV_HASH).and_then(serde_json::Value::as_str) == Some(GENESIS) {
            return Ok(None);
        }
        return Ok(record
            .get("time")
            .and_then(|t| t.as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)));
    }
    Ok(None)
}

/// The records of the trail `name` written at `since` or later, oldest
/// first, read backwards from its end, across the files it was moved aside
/// to as far as needed, so that the cost is what was written since, not the
/// trail's length (at most `MAX_READ_BYTES` of it). Records are appended in
/// time order, give or take the moments writers wait for the lock.
pub fn read_since(state: &StateDir, name: &str, since: DateTime<Utc>) -> Result<Vec<serde_json::Value>, AuditError> {
    let fail = |source| AuditError { op: "read the records", source };
    let _held = open_current(state, name, false).map_err(fail)?;
    let mut found = Vec::new();
    let mut budget = MAX_READ_BYTES;
    for file in kept_files(state, name).map_err(fail)?.iter().rev() {
        if back_to(state, file, since, &mut found, &mut budget).map_err(fail)? {
            break;
        }
    }
    found.reverse();
    Ok(found)
}

/// Pushes the records of `name` newest first onto `found` until one older
/// than `since`; true when that one was reached. Each byte read counts
/// against `budget`.
fn back_to(
    state: &StateDir,
    name: &str,
    since: DateTime<Utc>,
    found: &mut Vec<serde_json::Value>,
    budget: &mut u64,
) -> Result<bool, StateError> {
    const CHUNK: u64 = 64 * 1024;
    let err = |e: std::io::Error| io_error(state, name, e);
    let Some(mut file) = state.open_read(name)? else { return Ok(false) };
    let len = file.metadata().map_err(err)?.len();
    let (mut start, mut rest) = (len, Vec::new());
    while start > 0 {
        let from = start.saturating_sub(CHUNK);
        if start - from > *budget {
            let path = state.path_of(name).display().to_string();
            return Err(StateError::TooLarge { path, limit: MAX_READ_BYTES });
        }
        *budget -= start - from;
        let mut chunk = vec![0u8; (start - from) as usize];
        file.seek(SeekFrom::Start(from)).map_err(err)?;
        file.read_exact(&mut chunk).map_err(err)?;
        chunk.extend_from_slice(&rest);
        // The first line is only whole when the chunk starts the file.
        let mut lines: Vec<&[u8]> = chunk.split(|b| *b == b'\n').collect();
        let head = if from > 0 { lines.remove(0).to_vec() } else { Vec::new() };
        for line in lines.into_iter().rev() {
            let Some(record) = serde_json::from_slice::<serde_json::Value>(line).ok().filter(|v| v.is_object()) else {
                continue;
            };
            let time = record.get("time").and_then(|t| t.as_str()).and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            if time.is_some_and(|t| t < since) {
                return Ok(true);
            }
            found.push(record);
        }
        (start, rest) = (from, head);
    }
    Ok(false)
}

/// A line of an audit file that is not a complete JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Torn {
    pub file: String,
    pub line: usize,
    pub error: String,
}

/// Reads every record of the file of JSON lines `name` (one file: the
/// daemon's log, or one file of a trail); torn or corrupted lines are
/// returned apart, with their line number.
pub fn read_all(state: &StateDir, name: &str) -> Result<(Vec<serde_json::Value>, Vec<Torn>), AuditError> {
    let fail = |source| AuditError { op: "read the records", source };
    let data = state.read(name, MAX_READ_BYTES).map_err(fail)?.unwrap_or_default();
    Ok(parse_lines(name, &data))
}

fn parse_lines(name: &str, data: &[u8]) -> (Vec<serde_json::Value>, Vec<Torn>) {
    let (mut records, mut torn) = (Vec::new(), Vec::new());
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let file = name.to_owned();
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => records.push(v),
            Ok(_) => torn.push(Torn { file, line: i + 1, error: "not a JSON object".into() }),
            Err(e) => torn.push(Torn { file, line: i + 1, error: e.to_string() }),
        }
    }
    (records, torn)
}

/// The newest records of a trail, read across its kept files.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    /// Oldest first.
    pub records: Vec<serde_json::Value>,
    pub torn: Vec<Torn>,
    /// Older kept files not read: the records asked for were there, or
    /// reading them would have passed `MAX_READ_BYTES`.
    pub files_left: usize,
}

/// The newest records of the trail `name`, at least `want` of them when
/// there are that many: its kept files read whole, newest first, until
/// `want` records are in or `MAX_READ_BYTES` would be passed.
pub fn read_kept(state: &StateDir, name: &str, want: usize) -> Result<Kept, AuditError> {
    let fail = |source| AuditError { op: "read the records", source };
    let _held = open_current(state, name, false).map_err(fail)?;
    let files = kept_files(state, name).map_err(fail)?;
    let (mut parts, mut torn, mut budget) = (Vec::new(), Vec::new(), MAX_READ_BYTES);
    let mut count = 0;
    let mut read = 0;
    for file in files.iter().rev() {
        if count >= want {
            break;
        }
        let len = state.metadata(file).map_err(fail)?.map_or(0, |m| m.len());
        if len > budget && read > 0 {
            break;
        }
        let data = state.read(file, budget).map_err(fail)?.unwrap_or_default();
        budget -= data.len() as u64;
        read += 1;
        let (records, file_torn) = parse_lines(file, &data);
        count += records.len();
        parts.push(records);
        torn.extend(file_torn);
    }
    let records = parts.into_iter().rev().flatten().collect();
    Ok(Kept { records, torn, files_left: files.len() - read })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::path::Path;

    fn state(dir: &tempfile::TempDir) -> StateDir {
        StateDir::open(dir.path()).unwrap()
    }

    /// A trail that is never moved aside in these tests.
    const WHOLE: Rotation = Rotation { max_bytes: u64::MAX, files: 2 };

    #[test]
    fn a_torn_line_does_not_hide_later_records() {
        let dir = tempfile::tempdir().unwrap();
        append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 1}), WHOLE).unwrap();
        // Simulate a crash in the middle of a write.
        let mut f = OpenOptions::new().append(true).open(dir.path().join("a.jsonl")).unwrap();
        f.write_all(br#"{"n": 2, "half"#).unwrap();
        drop(f);
        append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 3}), WHOLE).unwrap();
        let (records, torn) = read_all(&state(&dir), "a.jsonl").unwrap();
        let ns: Vec<&serde_json::Value> = records.iter().map(|r| &r["n"]).collect();
        assert_eq!(ns, [1, 3]);
        assert_eq!(torn.len(), 1);
        assert_eq!(torn[0].line, 2);
    }

    #[test]
    fn the_last_record_is_found_behind_torn_lines_of_any_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut f = OpenOptions::new().create(true).append(true).open(&path).unwrap();
        f.write_all(b"{\"n\":1}\n{\"n\":2}\n").unwrap();
        // Torn or foreign tails of every kind: short, one chunk and more,
        // a long one starting like a record, blank lines.
        f.write_all(&[b'x'; 64 * 1024 + 3]).unwrap();
        f.write_all(b"\n\n  \n{\"n\": 3, ").unwrap();
        f.write_all(&[b'y'; 200 * 1024]).unwrap();
        f.write_all(b"\n").unwrap();
        f.write_all(&[b'z'; 3 * 1024 * 1024]).unwrap();
        drop(f);
        let mut file = File::open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        assert_eq!(last_record(&mut file, len).unwrap().as_deref(), Some(&b"{\"n\":2}"[..]));
        // Only the first line left, and no record at all.
        assert_eq!(last_record(&mut file, 7).unwrap().as_deref(), Some(&b"{\"n\":1}"[..]));
        assert_eq!(last_record(&mut file, 6).unwrap(), None);
        assert_eq!(last_record(&mut file, 0).unwrap(), None);
    }

    fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let mut lines: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect();
        f(&mut lines);
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn three(state: &StateDir) {
        for n in 1..=3 {
            append(state, "a.jsonl", &serde_json::json!({"n": n, "what": "restart"}), WHOLE).unwrap();
        }
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        three(&state(&dir));
        let r = verify(&state(&dir), "a.jsonl").unwrap();
        assert_eq!((r.records, r.broken, r.notes), (3, None, vec![]));
    }

    #[test]
    fn a_changed_record_is_named() {
        let dir = tempfile::tempdir().unwrap();
        three(&state(&dir));
        rewrite(&dir.path().join("a.jsonl"), |l| l[1] = l[1].replace("restart", "nothing"));
        let Break { line, why, .. } = verify(&state(&dir), "a.jsonl").unwrap().broken.unwrap();
        assert_eq!(line, 3, "{why}");
        assert!(why.contains("line 2"), "{why}");
    }

    #[test]
    fn removed_records_are_noticed_at_the_start_middle_and_end() {
        for (remove, expect_line) in [(0, 1), (1, 2), (2, 2)] {
            let dir = tempfile::tempdir().unwrap();
            three(&state(&dir));
            rewrite(&dir.path().join("a.jsonl"), |l| {
                l.remove(remove);
            });
            let broken = verify(&state(&dir), "a.jsonl").unwrap().broken;
            assert_eq!(broken.map(|b| b.line), Some(expect_line), "removing record {}", remove + 1);
        }
    }

    #[test]
    fn an_unsealed_last_record_is_a_note_not_a_break() {
        let dir = tempfile::tempdir().unwrap();
        append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 1}), WHOLE).unwrap();
        let head = std::fs::read(dir.path().join("a.jsonl.head")).unwrap();
        append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 2}), WHOLE).unwrap();
        std::fs::write(dir.path().join("a.jsonl.head"), head).unwrap();
        let r = verify(&state(&dir), "a.jsonl").unwrap();
        assert_eq!(r.broken, None);
        assert!(r.notes[0].contains("a.jsonl line 2 was written but not sealed"), "{:?}", r.notes);
    }

    #[test]
    fn the_chain_continues_past_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 1}), WHOLE).unwrap();
        let mut f = OpenOptions::new().append(true).open(dir.path().join("a.jsonl")).unwrap();
        f.write_all(br#"{"n": 2, "ha"#).unwrap();
        drop(f);
        append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 3}), WHOLE).unwrap();
        let r = verify(&state(&dir), "a.jsonl").unwrap();
        assert_eq!(r.records, 2);
        assert_eq!(r.broken.map(|b| b.line), Some(2), "the torn line is named, the rest chains");
    }

    #[test]
    fn read_since_returns_the_records_from_a_time_on_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let pad = "x".repeat(10_000);
        for n in 0..40 {
            let time = t0 + chrono::Duration::seconds(n);
            append(&state(&dir), "a.jsonl", &serde_json::json!({"time": time, "n": n, "pad": pad}), WHOLE).unwrap();
        }
        let since = read_since(&state(&dir), "a.jsonl", t0 + chrono::Duration::seconds(25)).unwrap();
        let ns: Vec<i64> = since.iter().map(|r| r["n"].as_i64().unwrap()).collect();
        assert_eq!(ns, (25..40).collect::<Vec<_>>());
        assert_eq!(read_since(&state(&dir), "a.jsonl", t0).unwrap().len(), 40);
        assert!(read_since(&state(&dir), "none.jsonl", t0).unwrap().is_empty());
    }

    #[test]
    fn concurrent_appends_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let big = "x".repeat(64 * 1024);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (st, big) = (state(&dir), &big);
                s.spawn(move || {
                    for n in 0..25 {
                        append(&st, "a.jsonl", &serde_json::json!({"t": t, "n": n, "pad": big}), WHOLE).unwrap();
                    }
                });
            }
        });
        let (records, torn) = read_all(&state(&dir), "a.jsonl").unwrap();
        assert_eq!((records.len(), torn.len()), (100, 0));
        assert_eq!(verify(&state(&dir), "a.jsonl").unwrap().broken, None, "the chain holds under concurrency");
    }

    /// Small files: a few records each.
    const SMALL: Rotation = Rotation { max_bytes: 1024, files: 4 };

    fn numbered(state: &StateDir, n: usize) {
        for i in 0..n {
            let time = DateTime::from_timestamp(1_800_000_000 + i as i64, 0).unwrap();
            append(state, "a.jsonl", &serde_json::json!({"time": time, "n": i, "pad": "x".repeat(100)}), SMALL)
                .unwrap();
        }
    }

    fn ns(records: &[serde_json::Value]) -> Vec<i64> {
        records.iter().map(|r| r["n"].as_i64().unwrap()).collect()
    }

    #[test]
    fn a_full_file_is_moved_aside_the_oldest_deleted_and_the_chain_runs_on() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(&dir);
        numbered(&st, 60);
        let files = kept_files(&st, "a.jsonl").unwrap();
        assert_eq!(files, ["a.3.jsonl", "a.2.jsonl", "a.1.jsonl", "a.jsonl"]);
        for f in &files {
            let len = std::fs::metadata(dir.path().join(f)).unwrap().len();
            assert!(len <= SMALL.max_bytes, "{f} is {len} bytes");
        }
        let r = verify(&st, "a.jsonl").unwrap();
        assert_eq!(r.broken, None, "{r:?}");
        assert_eq!(r.files, 4);
        assert!(r.notes[0].starts_with("earlier history was rotated away: the oldest kept record (a.3.jsonl line 1)"));
        // The newest records, across files, oldest first and without a gap.
        let kept = read_kept(&st, "a.jsonl", usize::MAX).unwrap();
        let all = ns(&kept.records);
        assert_eq!(*all.last().unwrap(), 59);
        assert_eq!(all, (all[0]..60).collect::<Vec<_>>());
        assert!(all[0] > 0, "the oldest records were deleted");
        let few = read_kept(&st, "a.jsonl", 2).unwrap();
        assert!(few.records.len() >= 2 && few.files_left > 0, "only the newest file is read for two records");
        let since = read_since(&st, "a.jsonl", DateTime::from_timestamp(1_800_000_000 + 45, 0).unwrap()).unwrap();
        assert_eq!(ns(&since), (45..60).collect::<Vec<_>>(), "read back across files");
        let oldest = rotated_away_before(&st, "a.jsonl").unwrap().unwrap();
        assert_eq!(oldest.timestamp(), 1_800_000_000 + all[0]);
    }

    #[test]
    fn a_record_changed_in_a_file_moved_aside_is_named_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        numbered(&state(&dir), 60);
        rewrite(&dir.path().join("a.2.jsonl"), |l| l[1] = l[1].replace("xxxx", "yyyy"));
        let b = verify(&state(&dir), "a.jsonl").unwrap().broken.unwrap();
        assert_eq!((b.file.as_str(), b.line), ("a.2.jsonl", 3), "{b:?}");
        assert!(b.why.contains("does not match line 2"), "{b:?}");
        // The last record of a file: the next file's first record names it.
        let dir = tempfile::tempdir().unwrap();
        numbered(&state(&dir), 60);
        rewrite(&dir.path().join("a.2.jsonl"), |l| {
            let last = l.len() - 1;
            l[last] = l[last].replace("xxxx", "yyyy");
        });
        let b = verify(&state(&dir), "a.jsonl").unwrap().broken.unwrap();
        assert_eq!((b.file.as_str(), b.line), ("a.1.jsonl", 1), "{b:?}");
        assert!(b.why.contains("the last record of a.2.jsonl"), "{b:?}");
    }

    #[test]
    fn a_file_missing_between_kept_files_is_a_break_not_rotated_history() {
        let dir = tempfile::tempdir().unwrap();
        numbered(&state(&dir), 60);
        std::fs::remove_file(dir.path().join("a.2.jsonl")).unwrap();
        let b = verify(&state(&dir), "a.jsonl").unwrap().broken.unwrap();
        assert_eq!((b.file.as_str(), b.line), ("a.1.jsonl", 1), "{b:?}");
        assert!(b.why.contains("a.3.jsonl") && b.why.contains("a whole file"), "{b:?}");
        // Without files moved aside, a first record that does not start the chain is a removal.
        let dir = tempfile::tempdir().unwrap();
        three(&state(&dir));
        rewrite(&dir.path().join("a.jsonl"), |l| {
            l.remove(0);
        });
        let r = verify(&state(&dir), "a.jsonl").unwrap();
        assert!(r.broken.unwrap().why.contains("records before it were removed"));
    }

    #[test]
    fn the_seal_follows_the_trail_across_a_move() {
        let dir = tempfile::tempdir().unwrap();
        numbered(&state(&dir), 60);
        // Drop the newest record, in the newest file: the seal tells.
        rewrite(&dir.path().join("a.jsonl"), |l| {
            l.pop();
        });
        let b = verify(&state(&dir), "a.jsonl").unwrap().broken.unwrap();
        assert!(b.why.contains("does not end where its seal says"), "{b:?}");
    }

    #[test]
    fn concurrent_appends_never_interleave_across_moves() {
        let dir = tempfile::tempdir().unwrap();
        let keep_all = Rotation { max_bytes: 64 * 1024, files: 1000 };
        let big = "x".repeat(8 * 1024);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (st, big) = (state(&dir), &big);
                s.spawn(move || {
                    for n in 0..25 {
                        append(&st, "a.jsonl", &serde_json::json!({"t": t, "n": n, "pad": big}), keep_all).unwrap();
                    }
                });
            }
        });
        let kept = read_kept(&state(&dir), "a.jsonl", usize::MAX).unwrap();
        assert_eq!((kept.records.len(), kept.torn.len()), (100, 0));
        assert!(kept_files(&state(&dir), "a.jsonl").unwrap().len() > 5, "moved aside several times");
        let r = verify(&state(&dir), "a.jsonl").unwrap();
        assert_eq!((r.broken, r.records), (None, 100), "the chain holds under concurrency");
    }

    #[test]
    fn a_link_at_the_trail_or_its_seal_is_refused_and_not_followed() {
        for name in ["a.jsonl", "a.jsonl.head"] {
            let dir = tempfile::tempdir().unwrap();
            let elsewhere = tempfile::tempdir().unwrap();
            let target = elsewhere.path().join("precious");
            std::fs::write(&target, "precious\n").unwrap();
            append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 1}), WHOLE).unwrap();
            std::fs::remove_file(dir.path().join(name)).unwrap();
            std::os::unix::fs::symlink(&target, dir.path().join(name)).unwrap();
            let refused = format!("{name} is a symbolic link: refused");
            let e = append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 2}), WHOLE).unwrap_err().to_string();
            assert!(e.contains(&refused), "{e}");
            let e = verify(&state(&dir), "a.jsonl").unwrap_err().to_string();
            assert!(e.contains(&refused), "{e}");
            assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n", "{name}");
        }
    }
}
