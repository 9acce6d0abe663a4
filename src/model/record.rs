//! The record of every model call, for forensics: each try at an endpoint
//! (a failover is two records) with the request and response bodies as they
//! went over the wire, timings, token counts, the endpoint and the priority.
//! Every string in a record, keys included, passes through
//! `redact::redact` before it is written.
//!
//! Records are JSON lines in `state_dir/model-calls/`, one file per process
//! and size step (`calls-TIME-PID.jsonl`), so the daemon and `macha-check`
//! never write the same file. A file is closed past `model.calls.max_file_kb`;
//! whenever a process opens a new one, the oldest files are deleted until all
//! of them fit in `model.calls.max_total_mb` with room for the new one, and
//! files whose last record is older than `model.calls.max_age_days` go too.
//! A record larger than a whole file keeps its facts and loses its bodies.

use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::provider::ProviderInfo;
use super::queue::Priority;
use crate::config::CallRecordConfig;
use crate::redact::redact;
use crate::state_dir::StateDir;

pub const CALLS_DIR: &str = "model-calls";

/// One try at one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord<'a> {
    pub time: DateTime<Utc>,
    pub purpose: &'a str,
    pub priority: Priority,
    pub provider: &'a ProviderInfo,
    /// `answered` or `failed`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub queue_ms: u64,
    pub elapsed_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_tokens: Option<u64>,
    pub request: &'a Value,
    /// The body as JSON when it is JSON, else as text; absent when nothing came back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
}

/// Writes records and keeps the directory within its limits.
pub struct Recorder {
    state_dir: PathBuf,
    max_file: u64,
    max_total: u64,
    max_age: Duration,
    open: Mutex<Open>,
}

/// The state directory, opened (created if need be) at the first record: a
/// command run as root gives up root before it calls the model, not before
/// it makes the service. And the file being written.
#[derive(Default)]
struct Open {
    state: Option<StateDir>,
    current: Option<Current>,
}

struct Current {
    name: String,
    file: File,
    size: u64,
}

impl Recorder {
    pub fn new(state_dir: &Path, limits: &CallRecordConfig) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            max_file: limits.max_file_kb.saturating_mul(1024),
            max_total: limits.max_total_mb.saturating_mul(1024 * 1024),
            max_age: Duration::from_secs(limits.max_age_days.saturating_mul(86_400)),
            open: Mutex::new(Open::default()),
        }
    }

    /// Redacts and appends one record.
    pub fn write(&self, record: &CallRecord<'_>) -> std::io::Result<()> {
        let mut value = serde_json::to_value(record).map_err(std::io::Error::other)?;
        redact_value(&mut value);
        let mut line = serde_json::to_string(&value).map_err(std::io::Error::other)?;
        if line.len() as u64 >= self.max_file {
            line = without_bodies(value, line.len())?;
        }
        line.push('\n');
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let state = match &open.state {
            Some(s) => s.clone(),
            None => open.state.insert(StateDir::create(&self.state_dir)?).clone(),
        };
        let dir = state.subdir(CALLS_DIR)?;
        // Another process's pruning may have deleted the file this one writes.
        let full = |c: &Current| c.size + line.len() as u64 > self.max_file;
        if open.current.as_ref().is_none_or(|c| full(c) || !dir.metadata(&c.name).is_ok_and(|m| m.is_some())) {
            open.current = Some(self.open_next(&dir)?);
        }
        let c = open.current.as_mut().expect("a file was just opened");
        c.file.write_all(line.as_bytes())?;
        c.size += line.len() as u64;
        Ok(())
    }

    /// Makes room, then starts a new file.
    fn open_next(&self, dir: &StateDir) -> std::io::Result<Current> {
        self.prune(dir)?;
        let name = format!("calls-{}-{}.jsonl", Utc::now().format("%Y%m%dT%H%M%S%.6f"), std::process::id());
        let file = dir.create_new(&name)?;
        Ok(Current { name, file, size: 0 })
    }

    /// Deletes files older than the age limit, then the oldest until the rest
    /// and a full new file fit in the total.
    fn prune(&self, dir: &StateDir) -> std::io::Result<()> {
        let mut files = Vec::new();
        for name in dir.list()? {
            if !(name.starts_with("calls-") && name.ends_with(".jsonl")) {
                continue;
            }
            let Some(meta) = dir.metadata(&name)?.filter(|m| m.is_file()) else { continue };
            files.push((name, meta.len(), meta.modified()));
        }
        // The names start with the time the file was opened.
        files.sort();
        let now = SystemTime::now();
        let budget = self.max_total.saturating_sub(self.max_file);
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        for (name, size, modified) in files {
            let too_old = now.duration_since(modified).is_ok_and(|age| age > self.max_age);
            if too_old || total > budget {
                dir.remove(&name)?;
                total -= size;
            }
        }
        Ok(())
    }
}

/// A record too large for a file: its facts, with the bodies replaced by a note.
fn without_bodies(mut value: Value, size: usize) -> std::io::Result<String> {
    let note = Value::String(format!("[omitted: the record was {size} bytes, more than a whole file]"));
    for key in ["request", "response"] {
        if value.get(key).is_some() {
            value[key] = note.clone();
        }
    }
    serde_json::to_string(&value).map_err(std::io::Error::other)
}

/// Masks secrets in every string of `v`, object keys included.
pub(crate) fn redact_value(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Cow::Owned(masked) = redact(s) {
                *s = masked;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        Value::Object(map) => {
            for (key, mut value) in std::mem::take(map) {
                redact_value(&mut value);
                map.insert(redact(&key).into_owned(), value);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Api;
    use crate::model::provider::Endpoint;

    fn provider() -> ProviderInfo {
        ProviderInfo { endpoint: Endpoint::Primary, api: Api::Ollama, url: "http://x".into(), model: "m".into() }
    }

    fn record<'a>(provider: &'a ProviderInfo, request: &'a Value) -> CallRecord<'a> {
        CallRecord {
            time: Utc::now(),
            purpose: "test",
            priority: Priority::Autonomous,
            provider,
            outcome: "answered",
            error: None,
            queue_ms: 0,
            elapsed_ms: 1,
            server_ms: None,
            prompt_tokens: Some(1),
            answer_tokens: Some(1),
            request,
            response: Some(json!({"message": {"content": "ok"}})),
        }
    }

    fn dir_size(dir: &Path) -> u64 {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
    }

    #[test]
    fn every_string_is_redacted_keys_included() {
        let mut v =
            json!({"messages": [{"content": "db password=hunter2-Correct-Horse"}], "password=s3cr3t-Value-99": 1});
        redact_value(&mut v);
        let text = v.to_string();
        assert!(!text.contains("hunter2-Correct-Horse") && !text.contains("s3cr3t-Value-99"), "{text}");
    }

    #[test]
    fn the_directory_stays_within_its_total_and_an_oversized_record_loses_its_bodies() {
        let state = tempfile::tempdir().unwrap();
        let limits = CallRecordConfig { max_file_kb: 16, max_total_mb: 1, max_age_days: 30 };
        let p = provider();
        let request = json!({"messages": [{"content": "x".repeat(3000)}]});
        let recorder = Recorder::new(state.path(), &limits);
        for _ in 0..600 {
            recorder.write(&record(&p, &request)).unwrap();
        }
        let dir = state.path().join(CALLS_DIR);
        assert!(dir_size(&dir) <= 1024 * 1024, "{} bytes", dir_size(&dir));

        let huge = json!({"messages": [{"content": "y".repeat(40_000)}]});
        recorder.write(&record(&p, &huge)).unwrap();
        let newest = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).max().unwrap();
        let text = std::fs::read_to_string(newest).unwrap();
        assert!(text.contains("[omitted: the record was") && text.contains("\"purpose\":\"test\""), "{text}");
    }
}
