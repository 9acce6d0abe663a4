//! The capability to change units: `Control`, made only inside `act` from
//! the read handle `observe::systemd::Systemd` and wrapping the same
//! connection. It declares the three calls that change the system
//! (`RestartUnit`, `StartUnit` of a helper, `ResetFailedUnit`); no other
//! module can obtain it, so "nothing but act changes the system" holds by
//! type (`tests/invariants.rs` checks the source as well).
//!
//! `Host` is the host as the stages that act reach it: the read side
//! (`ReadUnits`) and the act side. `Control` is its one implementation in
//! the library; a test can put a fake host behind the same trait.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use zbus::zvariant::OwnedObjectPath;

use crate::observe::systemd::{call_err, Listed, ReadUnits, Systemd, SystemdError, UnitState};
use crate::unit::UnitName;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Changes {
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn subscribe(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: zbus::zvariant::ObjectPath<'_>, unit: &str, result: &str) -> zbus::Result<()>;
}

/// The outcome of a systemd job, as reported by its `JobRemoved` signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobResult(pub String);

impl JobResult {
    pub fn is_done(&self) -> bool {
        self.0 == "done"
    }
}

/// The host as the act stage reaches it: what it reads, and what it changes.
pub trait Host: ReadUnits {
    /// Restarts `unit` ("replace" mode) and waits for systemd to finish the job.
    fn restart(
        &self,
        unit: &UnitName,
        timeout: Duration,
    ) -> impl Future<Output = Result<JobResult, SystemdError>> + Send;
    /// Starts one of macha's helper units ("replace" mode) and waits for
    /// systemd to finish the job: for a oneshot, until its program exits.
    fn start_helper(
        &self,
        unit: &UnitName,
        timeout: Duration,
    ) -> impl Future<Output = Result<JobResult, SystemdError>> + Send;
    /// Clears the failed state of `unit`.
    fn reset_failed(&self, unit: &UnitName) -> impl Future<Output = Result<(), SystemdError>> + Send;
}

/// The handle that changes units, over the read handle's connection.
pub struct Control<'a> {
    systemd: &'a Systemd,
}

impl<'a> Control<'a> {
    /// Only `act` makes one.
    pub(super) fn new(systemd: &'a Systemd) -> Self {
        Self { systemd }
    }

    async fn changes(&self) -> Result<ChangesProxy<'static>, SystemdError> {
        ChangesProxy::new(self.systemd.bus()).await.map_err(call_err("Manager proxy"))
    }

    async fn job(&self, verb: Verb, unit: &UnitName, timeout: Duration) -> Result<JobResult, SystemdError> {
        let manager = self.changes().await?;
        match manager.subscribe().await {
            Ok(()) => {}
            // A long-lived connection subscribes once; later calls say so.
            Err(zbus::Error::MethodError(name, ..))
                if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => {}
            Err(e) => return Err(call_err("Subscribe")(e)),
        }
        // Listen before asking, so the job's end cannot be missed.
        let mut removed = manager.receive_job_removed().await.map_err(call_err("match JobRemoved"))?;
        let job = match verb {
            Verb::Restart => manager.restart_unit(unit.as_str(), "replace").await,
            Verb::Start => manager.start_unit(unit.as_str(), "replace").await,
        }
        .map_err(call_err(format!("{}({unit})", verb.method())))?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                if let Ok(args) = signal.args() {
                    if args.job.as_str() == job.as_str() {
                        return Some(JobResult(args.result.to_owned()));
                    }
                }
            }
            None
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(result)) => Ok(result),
            Ok(None) => {
                Err(call_err(format!("JobRemoved for {unit}"))(zbus::Error::Failure("signal stream ended".into())))
            }
            Err(_) => {
                Err(SystemdError::JobTimeout { verb: verb.name(), unit: unit.to_string(), secs: timeout.as_secs() })
            }
        }
    }
}

impl ReadUnits for Control<'_> {
    fn failed_units(&self) -> impl Future<Output = Result<Vec<UnitState>, SystemdError>> + Send {
        self.systemd.failed_units()
    }
    fn unit_state(&self, unit: &UnitName) -> impl Future<Output = Result<Option<UnitState>, SystemdError>> + Send {
        self.systemd.unit_state(unit)
    }
    fn list_units(&self) -> impl Future<Output = Result<Vec<Listed>, SystemdError>> + Send {
        ReadUnits::list_units(self.systemd)
    }
}

impl Host for Control<'_> {
    fn restart(
        &self,
        unit: &UnitName,
        timeout: Duration,
    ) -> impl Future<Output = Result<JobResult, SystemdError>> + Send {
        self.job(Verb::Restart, unit, timeout)
    }

    fn start_helper(
        &self,
        unit: &UnitName,
        timeout: Duration,
    ) -> impl Future<Output = Result<JobResult, SystemdError>> + Send {
        self.job(Verb::Start, unit, timeout)
    }

    async fn reset_failed(&self, unit: &UnitName) -> Result<(), SystemdError> {
        self.changes()
            .await?
            .reset_failed_unit(unit.as_str())
            .await
            .map_err(call_err(format!("ResetFailedUnit({unit})")))
    }
}

#[derive(Clone, Copy)]
enum Verb {
    Restart,
    Start,
}

impl Verb {
    fn name(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::Start => "start",
        }
    }

    fn method(self) -> &'static str {
        match self {
            Self::Restart => "RestartUnit",
            Self::Start => "StartUnit",
        }
    }
}
