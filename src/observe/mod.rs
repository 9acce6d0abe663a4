//! Stage 1, observe: a typed `Snapshot` of the host from systemd, the journal
//! and the kernel's counters.
//!
//! Each source is read on its own; one that fails is reported as failed in
//! the snapshot and the others still count, so a broken journal never hides
//! a failed unit.

pub mod alerts;
pub mod events;
pub mod fold;
pub mod generations;
pub mod host;
pub mod journal;
pub mod nixos;
mod sigbus;
pub mod systemd;
pub mod units;
pub mod window;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use self::fold::Folded;
use self::host::{HostProbe, HostStats};
use self::journal::ErrorScan;
use self::systemd::{Systemd, SystemdLink, UnitState};
use self::window::ErrorWindow;
use crate::config::Config;
use crate::unit::UnitName;

/// Err-or-worse entries of a unit kept in a snapshot as written; past this
/// many they are only folded into templates.
pub const KEPT_ERROR_ENTRIES: usize = 50;

/// A source's reading, or why it could not be read.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Source<T> {
    Ok(T),
    Failed(String),
}

impl<T> Source<T> {
    pub fn ok(&self) -> Option<&T> {
        match self {
            Source::Ok(v) => Some(v),
            Source::Failed(_) => None,
        }
    }

    fn from_result<E: std::fmt::Display>(r: Result<T, E>) -> Self {
        r.map_or_else(|e| Source::Failed(e.to_string()), Source::Ok)
    }
}

/// Everything one pass saw.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Snapshot {
    pub taken_at: DateTime<Utc>,
    pub hostname: String,
    /// Units whose `ActiveState` is `failed`.
    pub failed_units: Source<Vec<UnitState>>,
    /// The other units of open unit incidents, as they are now (a unit that
    /// no longer exists is absent): whether they are back where they should be.
    pub watched_units: Source<Vec<UnitState>>,
    /// Err-or-worse journal entries since the previous pass.
    pub journal: Source<ErrorScan>,
    /// The last journal lines of each failed or watched unit, folded into templates.
    pub unit_logs: BTreeMap<String, Source<Folded>>,
    pub host: Source<HostStats>,
    /// Units systemd restarted by itself within the restart-loop window,
    /// as its signals told the daemon; `None` where no signals are followed
    /// (`macha-check`): then restart loops are neither seen nor resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarting: Option<Vec<units::Restarting>>,
    /// Alertmanager's firing alerts that name this host, as its webhook
    /// brought them (`alertmanager.listen`); `None` where no webhook is
    /// taken or they could not be read: then alerts are neither opened nor
    /// resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Vec<alerts::Alert>>,
    /// What this pass read.
    #[serde(skip)]
    pub scope: Scope,
}

/// What a pass reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Everything: the periodic pass (and `macha-check`).
    #[default]
    Full,
    /// systemd, the failed and watched units' logs and the host, but not
    /// the journal's errors since the last pass: a pass a signal started.
    /// Error bursts are counted over the time between full passes, so such
    /// a pass neither opens nor resolves one, and leaves the cursor.
    Units,
}

impl Snapshot {
    /// A snapshot of host `hostname` of which nothing could be read, and
    /// why: nothing it depends on is resolved by it.
    pub fn unread(hostname: &str, why: &str) -> Self {
        Snapshot {
            taken_at: Utc::now(),
            hostname: hostname.to_owned(),
            failed_units: Source::Failed(why.to_owned()),
            watched_units: Source::Failed(why.to_owned()),
            journal: Source::Failed(why.to_owned()),
            unit_logs: BTreeMap::new(),
            host: Source::Failed(why.to_owned()),
            restarting: None,
            alerts: None,
            scope: Scope::Full,
        }
    }

    /// Names of the sources that could not be read, with the reason.
    pub fn failed_sources(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        if let Source::Failed(e) = &self.failed_units {
            out.push(("systemd", e.as_str()));
        }
        if let Source::Failed(e) = &self.journal {
            out.push(("journal", e.as_str()));
        }
        if let Source::Failed(e) = &self.host {
            out.push(("host", e.as_str()));
        }
        out
    }
}

/// Holds what must live between passes: the D-Bus connection and the
/// sysinfo state for CPU deltas.
pub struct Observer {
    /// The daemon's journal follower's window, once it follows the journal:
    /// then every pass reads it instead of the journal.
    followed: Option<Arc<Mutex<ErrorWindow>>>,
    dbus_address: Option<String>,
    journal_dir: Option<PathBuf>,
    unit_log_lines: usize,
    lookback: Duration,
    systemd: Option<Systemd>,
    host: HostProbe,
}

impl Observer {
    pub fn new(config: &Config) -> Self {
        Self {
            followed: None,
            dbus_address: config.dbus_address.clone(),
            journal_dir: config.journal_dir.clone(),
            unit_log_lines: config.detect.unit_log_lines,
            lookback: config.check_interval(),
            systemd: None,
            host: HostProbe::default(),
        }
    }

    /// From now on, passes read the journal's errors from `window`, which a
    /// follower (`journal::follow`) keeps current.
    pub fn follow_journal(&mut self, window: Arc<Mutex<ErrorWindow>>) {
        self.followed = Some(window);
    }

    /// The systemd connection, made (again) if needed: at first, after a
    /// pass that could not read systemd, and once the bus closed it.
    pub async fn systemd(&mut self) -> Result<&Systemd, systemd::SystemdError> {
        if self.systemd.as_ref().is_some_and(Systemd::is_closed) {
            tracing::info!("the bus closed macha's connection; connecting again");
            self.systemd = None;
        }
        if self.systemd.is_none() {
            self.systemd = Some(Systemd::connect(self.dbus_address.as_deref()).await?);
        }
        Ok(self.systemd.as_ref().expect("connected above"))
    }

    /// The systemd connection, made (again) if needed, or why there is none.
    pub async fn link(&mut self) -> SystemdLink<'_> {
        self.systemd().await.into()
    }

    /// Takes a snapshot; `cursor` is where the previous pass stopped reading
    /// the journal, `watch` the units of open incidents, read even when
    /// they are no longer failed.
    pub async fn observe(&mut self, cursor: Option<&str>, watch: &[UnitName], scope: Scope) -> Snapshot {
        let units = match self.systemd().await {
            Ok(s) => read_units(s, watch).await,
            Err(e) => Err(e),
        };
        if units.is_err() {
            // A broken connection is remade on the next pass.
            self.systemd = None;
        }
        let (failed_units, watched_units) = match units {
            Ok((failed, watched)) => (Source::Ok(failed), Source::Ok(watched)),
            Err(e) => (Source::Failed(e.to_string()), Source::Failed(e.to_string())),
        };
        let dir = self.journal_dir.as_deref();
        let (journal, scope) = match (&self.followed, scope) {
            (Some(window), _) => {
                let mut w = window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let source = match &w.error {
                    Some(e) => Source::Failed(e.clone()),
                    None => Source::Ok(w.scan(Utc::now())),
                };
                (source, Scope::Full)
            }
            (None, Scope::Full) => {
                let scan = journal::scan_errors(dir, cursor, self.lookback, KEPT_ERROR_ENTRIES);
                (Source::from_result(scan), Scope::Full)
            }
            (None, Scope::Units) => (Source::Ok(ErrorScan::default()), Scope::Units),
        };
        let unit_logs = failed_units
            .ok()
            .into_iter()
            .chain(watched_units.ok())
            .flatten()
            .map(|u| (u.id.clone(), Source::from_result(journal::unit_evidence(dir, &u.id, self.unit_log_lines))))
            .collect();
        Snapshot {
            taken_at: Utc::now(),
            hostname: hostname(),
            failed_units,
            watched_units,
            journal,
            unit_logs,
            host: Source::from_result(self.host.sample()),
            restarting: None,
            alerts: None,
            scope,
        }
    }
}

/// The failed units, and the units of `watch` that are not among them.
async fn read_units(
    systemd: &Systemd,
    watch: &[UnitName],
) -> Result<(Vec<UnitState>, Vec<UnitState>), systemd::SystemdError> {
    let failed = systemd.failed_units().await?;
    let mut watched = Vec::new();
    for unit in watch.iter().filter(|u| !failed.iter().any(|f| f.id == u.as_str())) {
        watched.extend(systemd.unit_state(unit).await?);
    }
    Ok((failed, watched))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}
