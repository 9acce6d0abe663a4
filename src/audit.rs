//! Stage 7, record: the audit trail, `decisions.jsonl` and `actions.jsonl`
//! in the state directory, one JSON object per line.
//!
//! Each record is appended with a single write under an exclusive lock and
//! synced before the call returns. A crash can at worst leave a torn last
//! line; the next append starts on a fresh line, and readers report torn
//! lines instead of failing on them, so no later record is lost.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::act::Observed;
use crate::decide::{Decision, Outcome, ProposedAction};
use crate::gate::Verdict;
use crate::state_dir::{StateDir, StateError};

pub const DECISIONS: &str = "decisions.jsonl";
pub const ACTIONS: &str = "actions.jsonl";
pub const INCIDENTS: &str = "incidents.jsonl";

/// An incident opened or resolved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IncidentRecord {
    pub time: DateTime<Utc>,
    pub host: String,
    pub incident: String,
    /// `opened` or `resolved`.
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// One decision: the incident, what the model said (or why it could not),
/// and what the gate made of each proposed action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DecisionRecord {
    pub time: DateTime<Utc>,
    pub host: String,
    pub incident: String,
    pub summary: String,
    pub model: String,
    pub outcome: String,
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
            outcome: String::new(),
            attempts: 0,
            wall_ms: 0,
            decision: None,
            error: None,
            last_answer: None,
            provider: outcome.provider().cloned(),
            trail: Some(outcome.trail().clone()),
            gated,
        };
        match outcome {
            Outcome::Decided { decision, attempts, wall_ms, .. } => Self {
                outcome: "decided".into(),
                attempts: *attempts,
                wall_ms: *wall_ms,
                decision: Some(decision.clone()),
                ..base
            },
            Outcome::Failed { error, attempts, last_answer, wall_ms, .. } => Self {
                outcome: "failed".into(),
                attempts: *attempts,
                wall_ms: *wall_ms,
                error: Some(error.clone()),
                last_answer: last_answer.clone(),
                ..base
            },
        }
    }
}

/// What happened to one action: carried out, queued, refused, rejected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActionRecord {
    pub time: DateTime<Utc>,
    pub host: String,
    pub incident: String,
    /// Catalog entry, for example `restart_unit`.
    pub action: String,
    /// The target exactly as proposed (it may not be a valid unit name).
    pub target: Option<String>,
    /// `automatic` or `approval`.
    pub origin: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// An automatic action's id in storm control's history: its `started`
    /// record and its one outcome record carry the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_id: Option<i64>,
    /// `started` (an automatic action, before it runs), `succeeded`,
    /// `failed`, `interrupted` (its end could not be seen), `queued`,
    /// `refused` or `rejected`, among others.
    pub outcome: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Observed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Observed>,
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

/// The most of an audit file that is read at once (`read_all`, `verify`).
pub const MAX_READ_BYTES: u64 = 256 * 1024 * 1024;

/// A seal holds one hash.
const MAX_SEAL_BYTES: u64 = 1024;

/// The field that chains each record to the one before it: the SHA-256 of
/// the previous record's line, as written.
pub const PREV_HASH: &str = "prev_hash";

/// `prev_hash` of the first record of a file.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn is_record(line: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|v| v.is_object())
}

/// The last complete record of the file (a torn tail is skipped), read
/// backwards from the end so that appending stays cheap on a long trail.
fn last_record(file: &mut File, len: u64) -> std::io::Result<Option<Vec<u8>>> {
    const CHUNK: u64 = 64 * 1024;
    let (mut start, mut buf) = (len, Vec::new());
    loop {
        let segments: Vec<&[u8]> = buf.split(|b| *b == b'\n').collect();
        // The first segment is only a whole line when it starts the file.
        let skip = usize::from(start > 0);
        if let Some(line) = segments.iter().skip(skip).rev().find(|l| !l.is_empty() && is_record(l)) {
            return Ok(Some(line.to_vec()));
        }
        if start == 0 {
            return Ok(None);
        }
        let from = start.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        (start, buf) = (from, chunk);
    }
}

/// Appends one record to `name` in the state directory, chained to the
/// record before it, and seals the file's end in `name.head`.
pub fn append<T: Serialize>(state: &StateDir, name: &str, record: &T) -> Result<(), AuditError> {
    let op = "append to the audit trail";
    let fail = |source| AuditError { op, source };
    let err = |e: std::io::Error| fail(StateError::Io { path: state.path_of(name).display().to_string(), error: e });
    let mut value = serde_json::to_value(record).map_err(|e| err(e.into()))?;
    let mut file = state.append(name).map_err(fail)?;
    file.lock().map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    let prev = last_record(&mut file, len).map_err(err)?.map_or_else(|| GENESIS.to_owned(), |l| sha256_hex(&l));
    if let Some(map) = value.as_object_mut() {
        map.insert(PREV_HASH.into(), prev.into());
    }
    let body = serde_json::to_vec(&value).map_err(|e| err(e.into()))?;
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

/// Writes the hash of the newest record to `name.head`, replacing it whole.
fn seal(state: &StateDir, name: &str, hash: &str) -> Result<(), StateError> {
    state.replace(&format!("{name}.head"), hash.as_bytes())
}

/// The result of checking one file's chain.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainReport {
    pub records: usize,
    /// The first record that breaks the chain: its line and why.
    pub broken: Option<(usize, String)>,
    /// A note that does not break the chain (the newest record was written
    /// but its seal was not, as when a crash interrupts an append).
    pub note: Option<String>,
}

/// Checks that every record of `name` carries the hash of the one before
/// it, and that the file ends where its seal says.
pub fn verify(state: &StateDir, name: &str) -> Result<ChainReport, AuditError> {
    let fail = |source| AuditError { op: "verify the audit trail", source };
    let data = state.read(name, MAX_READ_BYTES).map_err(fail)?.unwrap_or_default();
    let mut report = ChainReport { records: 0, broken: None, note: None };
    let mut prev = GENESIS.to_owned();
    let mut prev_line = 0;
    let mut before_last = GENESIS.to_owned();
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        let value: Option<serde_json::Value> = serde_json::from_slice(line).ok().filter(serde_json::Value::is_object);
        let Some(value) = value else {
            report.broken.get_or_insert((n, "not a complete record (a torn write, or the line was damaged)".into()));
            continue;
        };
        report.records += 1;
        match value.get(PREV_HASH).and_then(serde_json::Value::as_str) {
            Some(h) if h == prev => {}
            Some(_) if prev_line == 0 => {
                report.broken.get_or_insert((
                    n,
                    "the first record does not start the chain: records before it were removed".into(),
                ));
            }
            Some(_) => {
                report.broken.get_or_insert((
                    n,
                    format!("its prev_hash does not match line {prev_line}: that record was changed, or records were removed or inserted between them"),
                ));
            }
            None => {
                report.broken.get_or_insert((n, format!("it has no {PREV_HASH}")));
            }
        }
        before_last = std::mem::replace(&mut prev, sha256_hex(line));
        prev_line = n;
    }
    let head = state
        .read(&format!("{name}.head"), MAX_SEAL_BYTES)
        .map_err(fail)?
        .map(|h| String::from_utf8_lossy(&h).into_owned());
    match head {
        Some(head) if head.trim() == prev => {}
        Some(head) if head.trim() == before_last => {
            report.note =
                Some(format!("line {prev_line} was written but not sealed (an append was interrupted); it is intact"));
        }
        Some(_) => {
            report.broken.get_or_insert((prev_line, "the file does not end where its seal says: records were removed from its end, or the newest one was changed".into()));
        }
        None if report.records == 0 => {}
        None => {
            report.broken.get_or_insert((prev_line, format!("its seal {name}.head is missing")));
        }
    }
    Ok(report)
}

/// The records of `name` written at `since` or later, oldest first, read
/// backwards from the end of the file so that the cost is what was written
/// since, not the file's length (at most `MAX_READ_BYTES` of it). Records
/// are appended in time order, give or take the moments writers wait for
/// the lock.
pub fn read_since(state: &StateDir, name: &str, since: DateTime<Utc>) -> Result<Vec<serde_json::Value>, AuditError> {
    const CHUNK: u64 = 64 * 1024;
    let fail = |source| AuditError { op: "read the records", source };
    let err = |e: std::io::Error| fail(StateError::Io { path: state.path_of(name).display().to_string(), error: e });
    let Some(mut file) = state.open_read(name).map_err(fail)? else { return Ok(Vec::new()) };
    let len = file.metadata().map_err(err)?.len();
    let (mut start, mut rest) = (len, Vec::new());
    let mut found = Vec::new();
    loop {
        if len - start > MAX_READ_BYTES {
            let path = state.path_of(name).display().to_string();
            return Err(fail(StateError::TooLarge { path, limit: MAX_READ_BYTES }));
        }
        let from = start.saturating_sub(CHUNK);
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
                found.reverse();
                return Ok(found);
            }
            found.push(record);
        }
        if from == 0 {
            found.reverse();
            return Ok(found);
        }
        (start, rest) = (from, head);
    }
}

/// A line of an audit file that is not a complete JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Torn {
    pub line: usize,
    pub error: String,
}

/// Reads every record of the file of JSON lines `name` (an audit file, or
/// the daemon's log); torn or corrupted lines are returned apart, with
/// their line number.
pub fn read_all(state: &StateDir, name: &str) -> Result<(Vec<serde_json::Value>, Vec<Torn>), AuditError> {
    let fail = |source| AuditError { op: "read the records", source };
    let data = state.read(name, MAX_READ_BYTES).map_err(fail)?.unwrap_or_default();
    let (mut records, mut torn) = (Vec::new(), Vec::new());
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => records.push(v),
            Ok(_) => torn.push(Torn { line: i + 1, error: "not a JSON object".into() }),
            Err(e) => torn.push(Torn { line: i + 1, error: e.to_string() }),
        }
    }
    Ok((records, torn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::path::Path;

    fn state(dir: &tempfile::TempDir) -> StateDir {
        StateDir::open(dir.path()).unwrap()
    }

    #[test]
    fn a_torn_line_does_not_hide_later_records() {
        let dir = tempfile::tempdir().unwrap();
        append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 1})).unwrap();
        // Simulate a crash in the middle of a write.
        let mut f = OpenOptions::new().append(true).open(dir.path().join("a.jsonl")).unwrap();
        f.write_all(br#"{"n": 2, "half"#).unwrap();
        drop(f);
        append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 3})).unwrap();
        let (records, torn) = read_all(&state(&dir), "a.jsonl").unwrap();
        let ns: Vec<&serde_json::Value> = records.iter().map(|r| &r["n"]).collect();
        assert_eq!(ns, [1, 3]);
        assert_eq!(torn.len(), 1);
        assert_eq!(torn[0].line, 2);
    }

    fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let mut lines: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect();
        f(&mut lines);
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn three(state: &StateDir) {
        for n in 1..=3 {
            append(state, "a.jsonl", &serde_json::json!({"n": n, "what": "restart"})).unwrap();
        }
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        three(&state(&dir));
        let r = verify(&state(&dir), "a.jsonl").unwrap();
        assert_eq!((r.records, r.broken, r.note), (3, None, None));
    }

    #[test]
    fn a_changed_record_is_named() {
        let dir = tempfile::tempdir().unwrap();
        three(&state(&dir));
        rewrite(&dir.path().join("a.jsonl"), |l| l[1] = l[1].replace("restart", "nothing"));
        let (line, why) = verify(&state(&dir), "a.jsonl").unwrap().broken.unwrap();
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
            assert_eq!(broken.map(|b| b.0), Some(expect_line), "removing record {}", remove + 1);
        }
    }

    #[test]
    fn an_unsealed_last_record_is_a_note_not_a_break() {
        let dir = tempfile::tempdir().unwrap();
        append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 1})).unwrap();
        let head = std::fs::read(dir.path().join("a.jsonl.head")).unwrap();
        append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 2})).unwrap();
        std::fs::write(dir.path().join("a.jsonl.head"), head).unwrap();
        let r = verify(&state(&dir), "a.jsonl").unwrap();
        assert_eq!(r.broken, None);
        assert!(r.note.unwrap().contains("line 2 was written but not sealed"));
    }

    #[test]
    fn the_chain_continues_past_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 1})).unwrap();
        let mut f = OpenOptions::new().append(true).open(dir.path().join("a.jsonl")).unwrap();
        f.write_all(br#"{"n": 2, "ha"#).unwrap();
        drop(f);
        append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 3})).unwrap();
        let r = verify(&state(&dir), "a.jsonl").unwrap();
        assert_eq!(r.records, 2);
        assert_eq!(r.broken.map(|b| b.0), Some(2), "the torn line is named, the rest chains");
    }

    #[test]
    fn read_since_returns_the_records_from_a_time_on_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let pad = "x".repeat(10_000);
        for n in 0..40 {
            let time = t0 + chrono::Duration::seconds(n);
            append(&state(&dir), "a.jsonl", &serde_json::json!({"time": time, "n": n, "pad": pad})).unwrap();
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
                        append(&st, "a.jsonl", &serde_json::json!({"t": t, "n": n, "pad": big})).unwrap();
                    }
                });
            }
        });
        let (records, torn) = read_all(&state(&dir), "a.jsonl").unwrap();
        assert_eq!((records.len(), torn.len()), (100, 0));
        assert_eq!(verify(&state(&dir), "a.jsonl").unwrap().broken, None, "the chain holds under concurrency");
    }

    #[test]
    fn a_link_at_the_trail_or_its_seal_is_refused_and_not_followed() {
        for name in ["a.jsonl", "a.jsonl.head"] {
            let dir = tempfile::tempdir().unwrap();
            let elsewhere = tempfile::tempdir().unwrap();
            let target = elsewhere.path().join("precious");
            std::fs::write(&target, "precious\n").unwrap();
            append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 1})).unwrap();
            std::fs::remove_file(dir.path().join(name)).unwrap();
            std::os::unix::fs::symlink(&target, dir.path().join(name)).unwrap();
            let refused = format!("{name} is a symbolic link: refused");
            let e = append(&state(&dir), "a.jsonl", &serde_json::json!({"n": 2})).unwrap_err().to_string();
            assert!(e.contains(&refused), "{e}");
            let e = verify(&state(&dir), "a.jsonl").unwrap_err().to_string();
            assert!(e.contains(&refused), "{e}");
            assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n", "{name}");
        }
    }
}
