//! `state_dir/status.json`: what the running daemon's model service looks
//! like from outside (the queue, whether the endpoints have the model), for
//! `macha status`, which is another process. The daemon rewrites the file
//! atomically after every change of the queue or the model's readiness, at
//! least every `REFRESH` (so a reader can tell a live daemon from a dead
//! one), and once more when it stops.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ModelService, QueueStatus, Readiness};

pub const STATUS_FILE: &str = "status.json";

/// How often the file is rewritten when nothing changes. A status older than
/// a few of these, from a daemon that did not say it stopped, is stale.
pub const REFRESH: Duration = Duration::from_secs(30);

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
}

impl DaemonStatus {
    /// The service now, for the daemon started at `started_at`.
    pub fn of(service: &ModelService, started_at: DateTime<Utc>, stopped_at: Option<DateTime<Utc>>) -> Self {
        Self {
            pid: std::process::id(),
            started_at,
            updated_at: Utc::now(),
            stopped_at,
            model: service.readiness(),
            supports_tools: service.supports_tools(),
            queue: service.queue(),
        }
    }
}

/// Replaces the file so a reader sees the old or the new status, never a mix.
pub fn write(state_dir: &Path, status: &DaemonStatus) -> std::io::Result<()> {
    let path = state_dir.join(STATUS_FILE);
    let tmp = state_dir.join(format!("{STATUS_FILE}.tmp"));
    let text = serde_json::to_string_pretty(status).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

/// The last status the daemon wrote; `None` when it never wrote one.
pub fn read(state_dir: &Path) -> Result<Option<DaemonStatus>, String> {
    let path = state_dir.join(STATUS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).map(Some).map_err(|e| format!("{} cannot be read: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Keeps the file current for as long as the daemon runs: after each change
/// of the queue or the readiness, and every `REFRESH`.
pub async fn publish(service: ModelService, state_dir: PathBuf, started_at: DateTime<Utc>) {
    let mut failing = false;
    loop {
        match write(&state_dir, &DaemonStatus::of(&service, started_at, None)) {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot write {STATUS_FILE}; `macha status` shows an old state");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = service.changed().notified() => {}
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
}
