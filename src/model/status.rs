//! `state_dir/status.json`: what the running daemon's model service looks
//! like from outside (the queue, whether the endpoints have the model), for
//! `macha status`, which is another process. The daemon rewrites the file
//! atomically after every change of the queue or the model's readiness, at
//! least every `REFRESH` (so a reader can tell a live daemon from a dead
//! one), and once more when it stops.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ModelService, QueueStatus, Readiness};
use crate::state_dir::StateDir;

pub const STATUS_FILE: &str = "status.json";

/// A status is a few KiB; anything much larger is not one.
const MAX_READ_BYTES: u64 = 1024 * 1024;

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
pub fn write(state: &StateDir, status: &DaemonStatus) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(status).map_err(std::io::Error::other)?;
    Ok(state.replace(STATUS_FILE, text.as_bytes())?)
}

/// The last status the daemon wrote; `None` when it never wrote one.
pub fn read(state: &StateDir) -> Result<Option<DaemonStatus>, String> {
    match state.read(STATUS_FILE, MAX_READ_BYTES) {
        Ok(Some(text)) => serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| format!("{} cannot be read: {e}", state.path_of(STATUS_FILE).display())),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("cannot read the daemon's status: {e}")),
    }
}

/// Keeps the file current for as long as the daemon runs: after each change
/// of the queue or the readiness, and every `REFRESH`.
pub async fn publish(service: ModelService, state: StateDir, started_at: DateTime<Utc>) {
    let mut failing = false;
    loop {
        match write(&state, &DaemonStatus::of(&service, started_at, None)) {
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
