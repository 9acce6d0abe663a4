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
//! A failed call that repeats the one recorded before it (the same
//! endpoint, purpose and kind of error: the model still unreachable) is
//! counted, not recorded again with its request; its count is recorded
//! when that ends, and at least every `retention.repeat_every` (`repeat`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use serde_json::Value;

use super::provider::{Endpoint, ErrorKind, ProviderInfo};
use super::queue::Priority;
use crate::config::CallRecordConfig;
use crate::redact::redact;
use crate::repeat::{Repeating, Repeats, Write as RepeatWrite};
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

/// Calls that failed as the one recorded before them (the same endpoint,
/// purpose and kind of error), counted instead of recorded one by one
/// (`repeat`): what a record of repeats holds. No bodies: they were those
/// of the call recorded before.
#[derive(Debug, Clone, Serialize)]
pub struct RepeatRecord<'a> {
    pub time: DateTime<Utc>,
    pub purpose: &'a str,
    pub priority: Priority,
    pub provider: &'a ProviderInfo,
    pub outcome: &'static str,
    /// The newest of their errors.
    pub error: &'a str,
    pub repeated: Repeats,
}

/// Whether a record was written, or the call only counted as a repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Recorded,
    Counted,
}

/// Writes records and keeps the directory within its limits.
pub struct Recorder {
    state_dir: PathBuf,
    max_file: u64,
    max_total: u64,
    max_age: Duration,
    repeat_every: TimeDelta,
    open: Mutex<Open>,
}

/// The state directory, opened (created if need be) at the first record: a
/// command run as root gives up root before it calls the model, not before
/// it makes the service. The file being written, and the failures that
/// repeat, per endpoint and purpose.
#[derive(Default)]
struct Open {
    state: Option<StateDir>,
    current: Option<Current>,
    repeating: HashMap<(Endpoint, String), Quiet>,
}

/// A failure of one endpoint for one purpose that may repeat.
struct Quiet {
    repeat: Repeating<ErrorKind>,
    priority: Priority,
    provider: ProviderInfo,
    error: String,
}

struct Current {
    name: String,
    file: File,
    size: u64,
}

impl Recorder {
    pub fn new(state_dir: &Path, limits: &CallRecordConfig, repeat_every: TimeDelta) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            max_file: limits.max_file_kb.saturating_mul(1024),
            max_total: limits.max_total_mb.saturating_mul(1024 * 1024),
            max_age: Duration::from_secs(limits.max_age_days.saturating_mul(86_400)),
            repeat_every,
            open: Mutex::new(Open::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one call, `failure` the kind of its error when it failed. A
    /// failure that repeats the one before it (same endpoint, purpose and
    /// kind) is counted, not written; the count is written before a record
    /// that ends it (an answer, another kind of failure) and at least every
    /// `retention.repeat_every`.
    pub fn write(&self, record: &CallRecord<'_>, failure: Option<ErrorKind>) -> std::io::Result<Written> {
        let mut open = self.lock();
        let key = (record.provider.endpoint, record.purpose.to_owned());
        let before = open.repeating.remove(&key);
        let Some(kind) = failure else {
            if let Some(q) = before {
                self.write_repeats(&mut open, &key.1, &q, Repeating::ended(Some(q.repeat.clone())))?;
            }
            self.write_full(&mut open, record)?;
            return Ok(Written::Recorded);
        };
        let (repeat, write) =
            Repeating::failed(before.as_ref().map(|q| q.repeat.clone()), kind, record.time, self.repeat_every);
        let quiet = Quiet {
            repeat,
            priority: record.priority,
            provider: record.provider.clone(),
            error: record.error.clone().unwrap_or_default(),
        };
        let written = match write {
            RepeatWrite::Record { ended } => {
                if let Some(before) = &before {
                    self.write_repeats(&mut open, &key.1, before, ended)?;
                }
                self.write_full(&mut open, record)?;
                Written::Recorded
            }
            RepeatWrite::Count => Written::Counted,
            RepeatWrite::Repeats(repeats) => {
                self.write_repeats(&mut open, &key.1, &quiet, Some((kind, repeats)))?;
                Written::Recorded
            }
        };
        open.repeating.insert(key, quiet);
        Ok(written)
    }

    /// Writes the counts of repeated failures that are due
    /// (`retention.repeat_every` since their last record), or, with `all`,
    /// every count not written yet (the process is about to stop).
    pub fn write_counts(&self, all: bool) -> std::io::Result<()> {
        let mut open = self.lock();
        let now = Utc::now();
        let keys: Vec<(Endpoint, String)> = open.repeating.keys().cloned().collect();
        for key in keys {
            let Some(mut q) = open.repeating.remove(&key) else { continue };
            let repeats = if all { q.repeat.take() } else { q.repeat.take_due(now, self.repeat_every) };
            self.write_repeats(&mut open, &key.1, &q, repeats.map(|r| (q.repeat.kind, r)))?;
            // A failure not repeated for a whole interval is forgotten (its
            // next one is recorded in full): the map does not grow with
            // every incident that ever failed.
            let quiet = q.repeat.count == 0 && now.signed_duration_since(q.repeat.recorded) >= self.repeat_every;
            if !all && !quiet {
                open.repeating.insert(key, q);
            }
        }
        Ok(())
    }

    fn write_repeats(
        &self,
        open: &mut Open,
        purpose: &str,
        q: &Quiet,
        repeats: Option<(ErrorKind, Repeats)>,
    ) -> std::io::Result<()> {
        let Some((_, repeated)) = repeats else { return Ok(()) };
        let record = RepeatRecord {
            time: Utc::now(),
            purpose,
            priority: q.priority,
            provider: &q.provider,
            outcome: "failed",
            error: &q.error,
            repeated,
        };
        let mut value = serde_json::to_value(&record).map_err(std::io::Error::other)?;
        redact_value(&mut value);
        let line = serde_json::to_string(&value).map_err(std::io::Error::other)?;
        self.append_line(open, line)
    }

    /// Redacts and appends one record in full.
    fn write_full(&self, open: &mut Open, record: &CallRecord<'_>) -> std::io::Result<()> {
        let mut value = serde_json::to_value(record).map_err(std::io::Error::other)?;
        redact_value(&mut value);
        let mut line = serde_json::to_string(&value).map_err(std::io::Error::other)?;
        if line.len() as u64 >= self.max_file {
            line = without_bodies(value, line.len())?;
        }
        self.append_line(open, line)
    }

    fn append_line(&self, open: &mut Open, mut line: String) -> std::io::Result<()> {
        line.push('\n');
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
        let Some(c) = open.current.as_mut() else { return Err(std::io::Error::other("no record file is open")) };
        c.file.write_all(line.as_bytes())?;
        c.size += line.len() as u64;
        Ok(())
    }

    /// Applies the limits now, without opening a new file: the files past
    /// their age go (and the oldest beyond the total).
    pub fn prune_now(&self) -> std::io::Result<()> {
        let state = match &self.lock().state {
            Some(s) => s.clone(),
            None => match StateDir::open(&self.state_dir) {
                Ok(s) => s,
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e.into()),
            },
        };
        match state.existing_subdir(CALLS_DIR)? {
            Some(dir) => self.prune(&dir),
            None => Ok(()),
        }
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

impl Drop for Recorder {
    /// The counts not written yet are written when the service goes away
    /// (the process ends), as far as the directory can be written.
    fn drop(&mut self) {
        let _ = self.write_counts(true);
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

    const HOUR: TimeDelta = TimeDelta::hours(1);

    fn refused<'a>(provider: &'a ProviderInfo, request: &'a Value, time: DateTime<Utc>) -> CallRecord<'a> {
        CallRecord {
            time,
            outcome: "failed",
            error: Some("Ollama at http://x is unreachable: connection refused".into()),
            response: None,
            ..record(provider, request)
        }
    }

    fn records(state: &Path) -> Vec<Value> {
        let mut files: Vec<_> = std::fs::read_dir(state.join(CALLS_DIR)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<Value>>()
            })
            .collect()
    }

    #[test]
    fn a_failure_that_repeats_is_recorded_once_then_counted() {
        let state = tempfile::tempdir().unwrap();
        let (p, request) = (provider(), json!({"messages": [{"content": "x".repeat(3000)}]}));
        let recorder = Recorder::new(state.path(), &CallRecordConfig::default(), HOUR);
        let t0 = Utc::now();
        let unreachable = Some(ErrorKind::Unreachable);
        for i in 0..100 {
            let at = t0 + TimeDelta::seconds(i * 5);
            let written = recorder.write(&refused(&p, &request, at), unreachable).unwrap();
            assert_eq!(written == Written::Recorded, i == 0, "call {i}");
        }
        // Another kind of failure: the count of the first, then the new one in full.
        recorder.write(&refused(&p, &request, t0 + TimeDelta::seconds(500)), Some(ErrorKind::Http(500))).unwrap();
        // An answer ends the second (nothing counted of it).
        recorder.write(&record(&p, &request), None).unwrap();
        let r = records(state.path());
        let shape: Vec<(&str, Option<u64>, bool)> = r
            .iter()
            .map(|r| (r["outcome"].as_str().unwrap(), r["repeated"]["count"].as_u64(), r.get("request").is_some()))
            .collect();
        assert_eq!(
            shape,
            [("failed", None, true), ("failed", Some(99), false), ("failed", None, true), ("answered", None, true)]
        );
        assert!(r[1]["error"].as_str().unwrap().contains("connection refused"));
    }

    #[test]
    fn a_count_is_written_at_the_interval_and_when_the_recorder_goes_away() {
        let state = tempfile::tempdir().unwrap();
        let (p, request) = (provider(), json!({"messages": []}));
        let recorder = Recorder::new(state.path(), &CallRecordConfig::default(), HOUR);
        let t0 = Utc::now() - TimeDelta::hours(2);
        for i in 0..3 {
            recorder.write(&refused(&p, &request, t0 + TimeDelta::seconds(i)), Some(ErrorKind::Unreachable)).unwrap();
        }
        // An hour and more since the first was recorded: due without a new failure.
        recorder.write_counts(false).unwrap();
        recorder.write(&refused(&p, &request, Utc::now()), Some(ErrorKind::Unreachable)).unwrap();
        drop(recorder);
        let counts: Vec<Option<u64>> = records(state.path()).iter().map(|r| r["repeated"]["count"].as_u64()).collect();
        assert_eq!(counts, [None, Some(2), Some(1)]);
        // A failure not repeated for an interval is forgotten: the next one is recorded in full.
        let state = tempfile::tempdir().unwrap();
        let recorder = Recorder::new(state.path(), &CallRecordConfig::default(), HOUR);
        recorder.write(&refused(&p, &request, t0), Some(ErrorKind::Unreachable)).unwrap();
        recorder.write_counts(false).unwrap();
        assert!(recorder.lock().repeating.is_empty());
        let again = recorder.write(&refused(&p, &request, Utc::now()), Some(ErrorKind::Unreachable)).unwrap();
        assert_eq!(again, Written::Recorded);
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
        let recorder = Recorder::new(state.path(), &limits, HOUR);
        for _ in 0..600 {
            recorder.write(&record(&p, &request), None).unwrap();
        }
        let dir = state.path().join(CALLS_DIR);
        assert!(dir_size(&dir) <= 1024 * 1024, "{} bytes", dir_size(&dir));

        let huge = json!({"messages": [{"content": "y".repeat(40_000)}]});
        recorder.write(&record(&p, &huge), None).unwrap();
        let newest = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).max().unwrap();
        let text = std::fs::read_to_string(newest).unwrap();
        assert!(text.contains("[omitted: the record was") && text.contains("\"purpose\":\"test\""), "{text}");
    }
}
