//! `state_dir/status.json`: what the running daemon's model service looks
//! like from outside (the queue, whether the endpoints have the model), for
//! `macha status`, which is another process. The daemon rewrites the file
//! atomically after every change of the queue or the model's readiness, and
//! once more when it stops; at least every `REFRESH` it sets the file's
//! time (so a reader can tell a live daemon from a stuck one; `read` takes
//! the newer of that time and `updated_at`). Besides the model it tells
//! how the daemon watches: whether systemd's signal stream is live, how many
//! signals it took, its reconnects, and the incidents waiting for a
//! decision (`Watching`, kept by the daemon's watcher).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ModelService, QueueStatus, Readiness};
use crate::state_dir::StateDir;

pub const STATUS_FILE: &str = "status.json";

/// A status is a few KiB; anything much larger is not one.
const MAX_READ_BYTES: u64 = 1024 * 1024;

/// How often the file's time is set when nothing changes. A status older
/// than a few of these, from a daemon that did not say it stopped, is stale.
pub const REFRESH: Duration = Duration::from_secs(30);

/// How often changed counters (signals taken) are written at most.
const COUNTERS_EVERY: Duration = Duration::from_secs(1);

/// How long the writer waits after a change for the changes that follow it.
const COALESCE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set in the last write of a daemon that stopped.
    pub stopped_at: Option<DateTime<Utc>>,
    pub model: Readiness,
    pub supports_tools: bool,
    pub queue: QueueStatus,
    /// How the daemon watches; absent in the status of an older version.
    #[serde(default)]
    pub watching: Option<Watching>,
}

/// How the daemon watches the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Watching {
    /// systemd's signal stream.
    pub events: Stream,
    /// Incidents recorded and waiting for their decision, oldest first.
    pub waiting: Vec<Waiting>,
    /// The incident being decided now.
    #[serde(default)]
    pub deciding: Option<Waiting>,
    /// How incident memory fares; absent when it is off (or in the status
    /// of an older version).
    #[serde(default)]
    pub memory: Option<MemoryStatus>,
}

/// How incident memory fared when a decision last used it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryStatus {
    /// `embedded` or `chroma`.
    pub backend: String,
    /// `working` (with embeddings), `text-alone` (the embedding model did
    /// not answer: found by words alone) or `unavailable` (the store, or
    /// for Chroma the embedding model, failed: decisions go on without
    /// memory, and the trail's records wait).
    pub state: String,
    /// Why, when not `working`.
    pub why: Option<String>,
    /// Since when it is in this state.
    pub since: DateTime<Utc>,
    /// Decisions since the daemon started that were a known fix from
    /// memory, with no model asked.
    pub from_memory: u64,
}

/// The state of systemd's signal stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    /// Subscribed and reading now.
    pub live: bool,
    /// Since when it is live, or down.
    pub since: Option<DateTime<Utc>>,
    /// Signals taken since the daemon started.
    pub signals: u64,
    /// Signals that did not parse (skipped).
    pub unreadable: u64,
    /// Units whose state a reconciliation found other than the signals
    /// said (a missed signal).
    pub missed: u64,
    /// Times the stream was lost and made again.
    pub reconnects: u32,
    pub last_reconnect: Option<DateTime<Utc>>,
    /// Why it was last lost, or why it cannot be made now.
    pub last_error: Option<String>,
}

/// An incident waiting for its decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    pub incident: String,
    pub since: DateTime<Utc>,
}

/// `Watching`, shared between the daemon's watcher (which changes it) and
/// the task that writes the status; `changed` wakes the writer for what a
/// reader should see at once (the stream lost or back, the waiting list).
#[derive(Debug, Clone, Default)]
pub struct Shared {
    watching: Rc<RefCell<Watching>>,
    changed: Rc<tokio::sync::Notify>,
    /// When counters last woke the writer.
    counted_at: Rc<std::cell::Cell<Option<std::time::Instant>>>,
}

impl Shared {
    /// Reads it.
    pub fn get(&self) -> Watching {
        self.watching.borrow().clone()
    }

    /// Changes it quietly: the next write shows it.
    pub fn update(&self, f: impl FnOnce(&mut Watching)) {
        f(&mut self.watching.borrow_mut());
    }

    /// Changes counters: the writer is woken at most once a second for
    /// them, so a busy stream costs one write a second and an idle one none.
    pub fn count(&self, f: impl FnOnce(&mut Watching)) {
        f(&mut self.watching.borrow_mut());
        let now = std::time::Instant::now();
        if self.counted_at.get().is_none_or(|at| now.duration_since(at) >= COUNTERS_EVERY) {
            self.counted_at.set(Some(now));
            self.changed.notify_one();
        }
    }

    /// Changes it and has the status written now.
    pub fn tell(&self, f: impl FnOnce(&mut Watching)) {
        f(&mut self.watching.borrow_mut());
        self.changed.notify_one();
    }
}

impl DaemonStatus {
    /// The service now, for the daemon started at `started_at`.
    pub fn of(
        service: &ModelService,
        watching: Option<Watching>,
        started_at: DateTime<Utc>,
        stopped_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            pid: std::process::id(),
            started_at,
            updated_at: Utc::now(),
            stopped_at,
            model: service.readiness(),
            supports_tools: service.supports_tools(),
            queue: service.queue(),
            watching,
        }
    }
}

/// Replaces the file so a reader sees the old or the new status, never a mix.
pub fn write(state: &StateDir, status: &DaemonStatus) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(status).map_err(std::io::Error::other)?;
    Ok(state.replace(STATUS_FILE, text.as_bytes())?)
}

/// The last status the daemon wrote; `None` when it never wrote one.
pub fn read(state: &StateDir) -> Result<Option<DaemonStatus>, String> {
    match state.read(STATUS_FILE, MAX_READ_BYTES) {
        Ok(Some(text)) => {
            let mut status: DaemonStatus = serde_json::from_slice(&text)
                .map_err(|e| format!("{} cannot be read: {e}", state.path_of(STATUS_FILE).display()))?;
            // A live daemon's refresh sets the file's time, not its text.
            if let Ok(Some(meta)) = state.metadata(STATUS_FILE) {
                match time_of(meta.modified()) {
                    Some(touched) if meta.is_file() && touched > status.updated_at => status.updated_at = touched,
                    _ => {}
                }
            }
            Ok(Some(status))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(format!("cannot read the daemon's status: {e}")),
    }
}

/// `at` as a `DateTime`; `None` out of chrono's range (a file's time may be
/// anything its owner set, and `DateTime::from` panics on that).
fn time_of(at: std::time::SystemTime) -> Option<DateTime<Utc>> {
    let since = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    DateTime::from_timestamp(i64::try_from(since.as_secs()).ok()?, since.subsec_nanos())
}

/// Keeps the file current for as long as the daemon runs: written after each
/// change of the queue, the readiness or what `watching` tells, its time set
/// every `REFRESH`.
pub async fn publish(service: ModelService, watching: Shared, state: StateDir, started_at: DateTime<Utc>) {
    let mut failing = false;
    let mut signals = 0;
    let mut written: Option<DaemonStatus> = None;
    let mut told_at = std::time::Instant::now();
    loop {
        let now = watching.get();
        // While signals come, once more a second after the last: the
        // final count is written, not one a second short of it.
        let busy = now.events.signals != signals;
        signals = now.events.signals;
        let status = DaemonStatus::of(&service, Some(now), started_at, None);
        let changed = written.as_ref().is_none_or(|was| !same(was, &status));
        let refresh = told_at.elapsed() >= REFRESH;
        // What a reader would see differently is written. The refresh that
        // tells a live daemon only sets the file's time (`read` takes it):
        // an idle daemon neither rewrites nor syncs a file every `REFRESH`,
        // nor runs the code that writes one. The whole status is written
        // again only when that fails.
        if changed || (refresh && !matches!(state.touch(STATUS_FILE), Ok(true))) {
            match write(&state, &status) {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot write {STATUS_FILE}; `macha status` shows an old state");
                }
                Err(_) => {}
            }
            written = Some(status);
            told_at = std::time::Instant::now();
        } else if refresh {
            told_at = std::time::Instant::now();
        }
        tokio::select! {
            _ = service.changed().notified() => {}
            _ = watching.changed.notified() => {}
            _ = tokio::time::sleep(if busy { COUNTERS_EVERY } else { REFRESH }) => {}
        }
        // Changes come in bursts (an incident put in line, taken, decided):
        // one write for the burst.
        tokio::time::sleep(COALESCE).await;
    }
}

/// Whether two statuses tell a reader the same (the time written aside).
fn same(a: &DaemonStatus, b: &DaemonStatus) -> bool {
    DaemonStatus { updated_at: b.updated_at, ..a.clone() } == *b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Api;
    use crate::model::{Check, Endpoint, EndpointCheck, ProviderInfo};

    fn status(at: DateTime<Utc>) -> DaemonStatus {
        let provider = ProviderInfo {
            endpoint: Endpoint::Primary,
            api: Api::Ollama,
            url: "http://127.0.0.1:1".into(),
            model: "m".into(),
        };
        DaemonStatus {
            pid: std::process::id(),
            started_at: at,
            updated_at: at,
            stopped_at: None,
            model: Readiness { primary: EndpointCheck { provider, check: Check::Unchecked }, fallback: None },
            supports_tools: false,
            queue: QueueStatus { slots: 1, running: Vec::new(), lanes: Vec::new() },
            watching: Some(Watching::default()),
        }
    }

    #[test]
    fn the_refresh_that_sets_the_files_time_is_read_as_the_time_of_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let hour_ago = Utc::now() - chrono::TimeDelta::hours(1);
        write(&state, &status(hour_ago)).unwrap();
        let file = std::fs::File::options().write(true).open(dir.path().join(STATUS_FILE)).unwrap();
        file.set_modified((hour_ago - chrono::TimeDelta::hours(1)).into()).unwrap();
        assert_eq!(read(&state).unwrap().unwrap().updated_at, hour_ago, "an older file time is not taken");

        let before = Utc::now();
        assert!(state.touch(STATUS_FILE).unwrap());
        let read_back = read(&state).unwrap().unwrap();
        assert!(read_back.updated_at >= before - chrono::TimeDelta::seconds(1), "{read_back:?}");
        assert_eq!(DaemonStatus { updated_at: hour_ago, ..read_back }, status(hour_ago), "nothing else changes");
    }

    #[test]
    fn a_file_time_out_of_range_is_not_taken_and_no_panic() {
        let far = std::time::UNIX_EPOCH + Duration::from_secs(i64::MAX as u64);
        assert_eq!(time_of(far), None);
        let at = std::time::UNIX_EPOCH + Duration::new(1_800_000_000, 5);
        assert_eq!(time_of(at), DateTime::from_timestamp(1_800_000_000, 5));
    }
}
