//! Stage 7, record: the audit trail, `decisions.jsonl` and `actions.jsonl`
//! in the state directory, one JSON object per line.
//!
//! Each record is appended with a single write under an exclusive lock and
//! synced before the call returns. A crash can at worst leave a torn last
//! line; the next append starts on a fresh line, and readers report torn
//! lines instead of failing on them, so no later record is lost.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::act::Brief;
use crate::decide::{Decision, Outcome, ProposedAction};
use crate::gate::Verdict;

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
            Outcome::Failed { error, attempts, last_answer, wall_ms } => Self {
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
    /// `succeeded`, `failed`, `queued`, `refused` or `rejected`.
    pub outcome: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Brief>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Brief>,
}

#[derive(Debug, thiserror::Error)]
#[error("audit file {path}: {source}")]
pub struct AuditError {
    path: String,
    source: std::io::Error,
}

/// Appends one record to `dir/name`.
pub fn append<T: Serialize>(dir: &Path, name: &str, record: &T) -> Result<(), AuditError> {
    let path = dir.join(name);
    let err = |source| AuditError { path: path.display().to_string(), source };
    let mut line = serde_json::to_vec(record).map_err(|e| err(e.into()))?;
    line.push(b'\n');
    let mut file = OpenOptions::new().create(true).append(true).read(true).mode(0o640).open(&path).map_err(err)?;
    file.lock().map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1)).map_err(err)?;
        file.read_exact(&mut last).map_err(err)?;
        if last[0] != b'\n' {
            // A torn line from a crash: end it, so this record starts clean.
            line.insert(0, b'\n');
        }
    }
    file.write_all(&line).map_err(err)?;
    file.sync_data().map_err(err)?;
    Ok(())
}

/// A line of an audit file that is not a complete JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Torn {
    pub line: usize,
    pub error: String,
}

/// Reads every record of an audit file; torn or corrupted lines are
/// returned apart, with their line number.
pub fn read_all(path: &Path) -> Result<(Vec<serde_json::Value>, Vec<Torn>), AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(source) => return Err(AuditError { path: path.display().to_string(), source }),
    };
    let (mut records, mut torn) = (Vec::new(), Vec::new());
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|source| AuditError { path: path.display().to_string(), source })?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<serde_json::Value>(&line) {
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

    #[test]
    fn a_torn_line_does_not_hide_later_records() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), "a.jsonl", &serde_json::json!({"n": 1})).unwrap();
        // Simulate a crash in the middle of a write.
        let mut f = OpenOptions::new().append(true).open(dir.path().join("a.jsonl")).unwrap();
        f.write_all(br#"{"n": 2, "half"#).unwrap();
        drop(f);
        append(dir.path(), "a.jsonl", &serde_json::json!({"n": 3})).unwrap();
        let (records, torn) = read_all(&dir.path().join("a.jsonl")).unwrap();
        assert_eq!(records, vec![serde_json::json!({"n": 1}), serde_json::json!({"n": 3})]);
        assert_eq!(torn.len(), 1);
        assert_eq!(torn[0].line, 2);
    }

    #[test]
    fn concurrent_appends_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let big = "x".repeat(64 * 1024);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (dir, big) = (dir.path(), &big);
                s.spawn(move || {
                    for n in 0..25 {
                        append(dir, "a.jsonl", &serde_json::json!({"t": t, "n": n, "pad": big})).unwrap();
                    }
                });
            }
        });
        let (records, torn) = read_all(&dir.path().join("a.jsonl")).unwrap();
        assert_eq!((records.len(), torn.len()), (100, 0));
    }
}
