//! How much of what macha writes is kept. A home server must not lose its
//! disk to macha, and an administrator must still be able to audit a month
//! of decisions; so every file in the state directory has a limit from
//! the configuration (`[retention]`, `model.metrics_max_kb`,
//! `[model.calls]`), enforced where it is written when that is cheap (the
//! audit trail, the log, the metrics and the record of calls move a full
//! file aside), and here otherwise.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit;
use crate::config::Config;
use crate::model::{self, metrics};
use crate::rotation::Naming;
use crate::state_dir::{StateDir, StateError};
use crate::store::Store;

/// How often the state database's old rows and the kept documents are
/// looked at (`keep`): their limits are in days, and looking costs a scan.
pub const HOUSEKEEPING_EVERY: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// The directories of documents kept by age and count
/// (`retention.kept_days`, `retention.kept_files`): read operator notes,
/// evidence kept before a journal vacuum, proposed configuration changes.
/// Pending notes are not among them: they wait to be read.
pub const KEPT: [&[&str]; 3] = [&["notes", "archive"], &["evidence"], &[crate::propose::DIR]];

/// What `keep` deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kept {
    pub rows: usize,
    pub files: usize,
}

/// Deletes what is past its age or count limit: the state database's rows
/// older than `retention.db_days`, the kept documents older than
/// `retention.kept_days` or beyond `retention.kept_files` per directory,
/// and temporary files a process that died left behind.
/// The daemon calls it through `Engine` once per `HOUSEKEEPING_EVERY`.
pub fn keep(state: &StateDir, store: &Store, config: &Config, now: DateTime<Utc>) -> Result<Kept, String> {
    let r = &config.retention;
    let before = now.checked_sub_signed(crate::config::hours(r.db_days.saturating_mul(24))).unwrap_or(now);
    let rows = store.prune(before).map_err(|e| format!("cannot delete old rows: {e}"))?;
    let max_age = Duration::from_secs(r.kept_days.saturating_mul(86_400));
    let mut files = stale_temporaries(state, SystemTime::from(now))
        .map_err(|e| format!("cannot delete stale temporary files: {e}"))?;
    for path in KEPT {
        let Some(dir) = existing(state, path).map_err(|e| format!("cannot look at kept documents: {e}"))? else {
            continue;
        };
        files += prune_dir(&dir, max_age, r.kept_files, SystemTime::from(now))
            .map_err(|e| format!("cannot delete old kept documents: {e}"))?;
    }
    Ok(Kept { rows, files })
}

/// A temporary file older than this was left by a process that died
/// before it renamed it (`StateDir::replace` names them `NAME.PID.tmp`).
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

/// Deletes the temporary files at the top of the state directory that a
/// process left when it died between writing and renaming them.
fn stale_temporaries(state: &StateDir, now: SystemTime) -> Result<usize, StateError> {
    let mut deleted = 0;
    for name in state.list()?.into_iter().filter(|n| n.ends_with(".tmp")) {
        let Some(meta) = state.metadata(&name)?.filter(|m| !m.is_dir()) else { continue };
        if now.duration_since(meta.modified()).is_ok_and(|age| age > STALE_TEMPORARY) {
            state.remove(&name)?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// The directory at `path` below `state`, if it exists.
fn existing(state: &StateDir, path: &[&str]) -> Result<Option<StateDir>, StateError> {
    let mut dir = state.clone();
    for name in path {
        match dir.existing_subdir(name)? {
            Some(d) => dir = d,
            None => return Ok(None),
        }
    }
    Ok(Some(dir))
}

/// Deletes the files of `dir` last changed more than `max_age` before
/// `now`, then the oldest beyond `max_files`. Returns how many went.
fn prune_dir(dir: &StateDir, max_age: Duration, max_files: u32, now: SystemTime) -> Result<usize, StateError> {
    let mut files = Vec::new();
    for name in dir.list()? {
        let Some(meta) = dir.metadata(&name)?.filter(|m| m.is_file()) else { continue };
        files.push((meta.modified(), name));
    }
    // Oldest first.
    files.sort();
    let beyond = files.len().saturating_sub(max_files as usize);
    let mut deleted = 0;
    for (i, (modified, name)) in files.iter().enumerate() {
        let too_old = now.duration_since(*modified).is_ok_and(|age| age > max_age);
        if too_old || i < beyond {
            dir.remove(name)?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// What one kind of file in the state directory takes, against its limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindUsage {
    /// `decisions.jsonl` (with the files it was moved to and its seal),
    /// `model-calls/`, `state.db` (with its `-wal` and `-shm`), ...
    pub kind: String,
    pub files: usize,
    pub bytes: u64,
    /// The limit in words, as configured.
    pub limit: String,
    /// The most it may take, when its limit is a size.
    pub limit_bytes: Option<u64>,
    /// Why it could not be measured (a link where a directory should be).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the state directory takes, kind by kind (`macha stats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    pub bytes: u64,
    /// The sum of the limits that are sizes: what the kinds with one may
    /// take together.
    pub limit_bytes: u64,
    pub kinds: Vec<KindUsage>,
}

/// The kinds of files at the top of the state directory, other than the
/// subdirectories: which kind a name belongs to.
fn kind_of(name: &str) -> &'static str {
    for trail in audit::TRAILS {
        let seal = format!("{trail}.head");
        if name == trail || name == seal || Naming::BeforeExtension.number(trail, name).is_some() {
            return trail;
        }
    }
    let log = crate::logging::ORCHESTRATOR_LOG;
    if name == log || Naming::Appended.number(log, name).is_some() {
        return log;
    }
    if name.starts_with(metrics::METRICS_FILE.trim_end_matches(".jsonl")) && name.ends_with(".jsonl") {
        return metrics::METRICS_FILE;
    }
    if name.starts_with(crate::store::DB_FILE) {
        return crate::store::DB_FILE;
    }
    OTHER
}

const OTHER: &str = "other (status.json, journal.cursor, daemon.lock, requests/, notes/pending/)";

/// Measures the state directory, never following a link: every name is
/// looked at with `lstat`, every subdirectory entered through `StateDir`.
pub fn usage(state: &StateDir, config: &Config) -> Usage {
    let r = &config.retention;
    let mib = |kb: u64| format!("{} MiB", kb / 1024);
    let audit = r.audit();
    let audit_limit = format!("{} files of {}", r.audit_files, mib(r.audit_max_kb));
    let audit_bytes = audit.max_bytes.saturating_mul(u64::from(audit.files)).saturating_add(1024);
    let calls = &config.model.calls;
    let kept_limit = format!("{} days, {} files", r.kept_days, r.kept_files);
    let mut kinds: Vec<KindUsage> = [
        (audit::DECISIONS.to_owned(), audit_limit.clone(), Some(audit_bytes)),
        (audit::ACTIONS.to_owned(), audit_limit.clone(), Some(audit_bytes)),
        (audit::INCIDENTS.to_owned(), audit_limit.clone(), Some(audit_bytes)),
        (audit::MEMORY.to_owned(), audit_limit, Some(audit_bytes)),
        (
            crate::logging::ORCHESTRATOR_LOG.to_owned(),
            format!("{} files of {}", r.log_files, mib(r.log_max_kb)),
            Some(r.log().max_bytes.saturating_mul(u64::from(r.log_files))),
        ),
        (
            metrics::METRICS_FILE.to_owned(),
            format!("2 files of {}", mib(config.model.metrics_max_kb)),
            Some(config.model.metrics_max_kb.saturating_mul(2048)),
        ),
        (
            format!("{}/", model::record::CALLS_DIR),
            format!("{} MiB, {} days", calls.max_total_mb, calls.max_age_days),
            Some(calls.max_total_mb.saturating_mul(1024 * 1024)),
        ),
        ("notes/archive/".to_owned(), kept_limit.clone(), None),
        ("evidence/".to_owned(), kept_limit.clone(), None),
        (format!("{}/", crate::propose::DIR), kept_limit, None),
        (crate::store::DB_FILE.to_owned(), format!("rows of {} days; its -wal cut back to 4 MiB", r.db_days), None),
        (OTHER.to_owned(), "replaced whole, or read and removed".to_owned(), None),
    ]
    .into_iter()
    .map(|(kind, limit, limit_bytes)| KindUsage { kind, files: 0, bytes: 0, limit, limit_bytes, error: None })
    .collect();
    let mut add = |kind: &str, files: usize, bytes: u64, error: Option<String>| {
        if let Some(k) = kinds.iter_mut().find(|k| k.kind == kind) {
            k.files += files;
            k.bytes = k.bytes.saturating_add(bytes);
            if let Some(e) = error {
                k.error.get_or_insert(e);
            }
        }
    };
    let subdirs: [(&[&str], String); 6] = [
        (&[model::record::CALLS_DIR], format!("{}/", model::record::CALLS_DIR)),
        (&["notes", "archive"], "notes/archive/".to_owned()),
        (&["notes", "pending"], OTHER.to_owned()),
        (&["evidence"], "evidence/".to_owned()),
        (&[crate::propose::DIR], format!("{}/", crate::propose::DIR)),
        (&[crate::act::request::REQUESTS_DIR], OTHER.to_owned()),
    ];
    match state.list() {
        Ok(names) => {
            for name in names {
                match state.metadata(&name) {
                    Ok(Some(m)) if !m.is_dir() => add(kind_of(&name), 1, m.len(), None),
                    Ok(_) => {}
                    Err(e) => add(OTHER, 0, 0, Some(e.to_string())),
                }
            }
        }
        Err(e) => add(OTHER, 0, 0, Some(e.to_string())),
    }
    for (path, kind) in subdirs {
        let (files, bytes, error) = match existing(state, path).and_then(|d| d.map(|d| files_in(&d)).transpose()) {
            Ok(Some((files, bytes))) => (files, bytes, None),
            Ok(None) => (0, 0, None),
            Err(e) => (0, 0, Some(e.to_string())),
        };
        add(&kind, files, bytes, error);
    }
    let bytes = kinds.iter().map(|k| k.bytes).fold(0, u64::saturating_add);
    let limit_bytes = kinds.iter().filter_map(|k| k.limit_bytes).fold(0, u64::saturating_add);
    Usage { bytes, limit_bytes, kinds }
}

/// The files directly in `dir` and what they take.
fn files_in(dir: &StateDir) -> Result<(usize, u64), StateError> {
    let (mut files, mut bytes) = (0, 0u64);
    for name in dir.list()? {
        if let Some(m) = dir.metadata(&name)?.filter(|m| !m.is_dir()) {
            files += 1;
            bytes = bytes.saturating_add(m.len());
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetentionConfig;

    fn age(path: &std::path::Path, days: u64) {
        let when = SystemTime::now() - Duration::from_secs(days * 86_400);
        std::fs::File::options().write(true).open(path).unwrap().set_modified(when).unwrap();
    }

    fn write_aged(path: &std::path::Path, days: u64) {
        std::fs::write(path, "{}").unwrap();
        age(path, days);
    }

    #[test]
    fn kept_documents_go_by_age_and_beyond_their_count() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let config = Config {
            retention: RetentionConfig { kept_days: 30, kept_files: 3, ..RetentionConfig::default() },
            ..Config::default()
        };
        let store = Store::open(&state).unwrap();
        for sub in ["notes/archive", "notes/pending", "evidence", "proposals"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            for (n, days) in [(1, 40), (2, 10), (3, 5), (4, 3), (5, 1)] {
                write_aged(&dir.path().join(sub).join(format!("{n}.json")), days);
            }
        }
        // A temporary file a dead process left, and one being written now.
        write_aged(&dir.path().join("status.json.4242.tmp"), 1);
        std::fs::write(dir.path().join("status.json.4243.tmp"), "{").unwrap();
        let kept = keep(&state, &store, &config, Utc::now()).unwrap();
        assert_eq!(
            kept.files, 7,
            "the 40-day-old file and one more beyond 3, in each of three directories; the stale temporary"
        );
        assert!(dir.path().join("status.json.4243.tmp").exists());
        for sub in ["notes/archive", "evidence", "proposals"] {
            let mut left: Vec<String> = std::fs::read_dir(dir.path().join(sub))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            left.sort();
            assert_eq!(left, ["3.json", "4.json", "5.json"], "{sub}");
        }
        assert_eq!(std::fs::read_dir(dir.path().join("notes/pending")).unwrap().count(), 5, "notes not read yet stay");
    }

    #[test]
    fn the_state_directory_is_measured_by_kind_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let write = |name: &str, bytes: usize| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, vec![b'x'; bytes]).unwrap();
        };
        for (name, bytes) in [
            ("decisions.jsonl", 100),
            ("decisions.1.jsonl", 200),
            ("decisions.jsonl.head", 64),
            ("orchestrator.log.1", 50),
            ("metrics.1.jsonl", 7),
            ("state.db-wal", 30),
            ("status.json", 5),
            ("model-calls/calls-1.jsonl", 1000),
            ("notes/pending/n.json", 3),
        ] {
            write(name, bytes);
        }
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), vec![0u8; 100_000]).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("evidence")).unwrap();
        let u = usage(&state, &Config::default());
        let of = |kind: &str| u.kinds.iter().find(|k| k.kind == kind).unwrap().clone();
        assert_eq!((of("decisions.jsonl").files, of("decisions.jsonl").bytes), (3, 364));
        assert_eq!(of("orchestrator.log").bytes, 50);
        assert_eq!(of("metrics.jsonl").bytes, 7);
        assert_eq!(of("state.db").bytes, 30);
        assert_eq!(of("model-calls/").bytes, 1000);
        assert!(of("evidence/").error.unwrap().contains("is a symbolic link"), "not followed");
        let link = std::fs::symlink_metadata(dir.path().join("evidence")).unwrap().len();
        assert_eq!(of(OTHER).bytes, 5 + 3 + link, "status.json, the pending note, and the link itself");
        assert!(u.bytes < 100_000);
        assert_eq!(of("decisions.jsonl").limit_bytes, Some(8 * 4 * 1024 * 1024 + 1024));
    }
}
