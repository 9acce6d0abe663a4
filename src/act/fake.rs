//! A fake host for unit tests: it implements the same traits as the real
//! one (`ReadUnits` and `Host`), so `act` and the steps above it can be
//! tested without systemd or root. It holds the units' states, records
//! every call, and is told how each job ends and what state a unit is in
//! afterwards; and a system profile whose generations a fake helper can
//! move. Compiled for tests only.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::{Executor, Host, JobResult, Report};
use crate::catalog::Action;
use crate::config::Config;
use crate::ids::Fingerprint;
use crate::observe::systemd::{Listed, ReadUnits, SystemdError, SystemdLink, UnitState};
use crate::unit::UnitName;

/// How a job (or a reset) on a unit ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobEnd {
    /// systemd finished the job with this result (`done`, `failed`, ...).
    Result(&'static str),
    /// The job did not end within the timeout.
    Timeout,
    /// The D-Bus call itself failed, with this message; nothing changes.
    Dbus(&'static str),
}

/// One call made to the fake host, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    FailedUnits,
    UnitState(String),
    Restart(String),
    StartHelper(String),
    ResetFailed(String),
    ListUnits,
}

type HelperRun = Box<dyn Fn(&UnitName) + Send>;

/// The states units are left in by one run of a helper.
type Leaves = Vec<(String, Option<UnitState>)>;

#[derive(Default)]
struct Inner {
    /// What each read of a unit returns, in turn; the last one stays.
    states: HashMap<String, VecDeque<Option<UnitState>>>,
    /// What a unit's reads return once a job or reset on it ran.
    after: HashMap<String, VecDeque<Option<UnitState>>>,
    ends: HashMap<String, JobEnd>,
    calls: Vec<Call>,
    /// What a helper's program does to the host when it runs.
    helper: Option<HelperRun>,
    /// The states units are in once a helper ran, by helper, in turn.
    on_helper: HashMap<String, VecDeque<Leaves>>,
}

#[derive(Default)]
pub(crate) struct FakeHost {
    inner: Mutex<Inner>,
}

impl FakeHost {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// `unit` is in `state` (none: systemd has no such unit).
    pub(crate) fn with_unit(self, unit: &str, state: Option<UnitState>) -> Self {
        self.lock().states.insert(unit.into(), VecDeque::from([state]));
        self
    }

    /// Once a job or reset on `unit` ran, its reads return `states` in
    /// turn, the last one from then on.
    pub(crate) fn then(self, unit: &str, states: Vec<Option<UnitState>>) -> Self {
        self.lock().after.insert(unit.into(), states.into());
        self
    }

    /// A job or reset on `unit` ends so (by default: `done`).
    pub(crate) fn ending(self, unit: &str, end: JobEnd) -> Self {
        self.lock().ends.insert(unit.into(), end);
        self
    }

    /// A started helper unit runs `program` before its job ends.
    pub(crate) fn helper_does(self, program: impl Fn(&UnitName) + Send + 'static) -> Self {
        self.lock().helper = Some(Box::new(program));
        self
    }

    /// Each run of `helper` leaves these units in these states, one list per
    /// run in turn (the last list for every run after).
    pub(crate) fn helper_leaves(self, helper: &str, runs: Vec<Vec<(&str, Option<UnitState>)>>) -> Self {
        let runs = runs.into_iter().map(|r| r.into_iter().map(|(u, s)| (u.to_owned(), s)).collect()).collect();
        self.lock().on_helper.insert(helper.into(), runs);
        self
    }

    /// Every call made so far, in order.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Only the calls that could change the system.
    pub(crate) fn changes(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| !matches!(c, Call::FailedUnits | Call::UnitState(_) | Call::ListUnits))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// Records `call` and ends the job on `unit` as told; a job that ran
    /// moves the unit to its `then` states.
    fn job(
        &self,
        call: Call,
        verb: &'static str,
        unit: &UnitName,
        timeout: Duration,
    ) -> Result<JobResult, SystemdError> {
        let mut inner = self.lock();
        inner.calls.push(call);
        let result = match inner.ends.get(unit.as_str()).cloned().unwrap_or(JobEnd::Result("done")) {
            JobEnd::Dbus(message) => {
                return Err(SystemdError::Call {
                    call: format!("{verb}({unit})"),
                    source: Box::new(zbus::Error::Failure(message.into())),
                })
            }
            JobEnd::Timeout => Err(SystemdError::JobTimeout { verb, unit: unit.to_string(), secs: timeout.as_secs() }),
            JobEnd::Result(r) => Ok(JobResult(r.into())),
        };
        if let Some(states) = inner.after.remove(unit.as_str()) {
            inner.states.insert(unit.to_string(), states);
        }
        result
    }
}

impl ReadUnits for FakeHost {
    async fn failed_units(&self) -> Result<Vec<UnitState>, SystemdError> {
        let mut inner = self.lock();
        inner.calls.push(Call::FailedUnits);
        let failed = inner.states.values().filter_map(|s| s.front().cloned().flatten()).filter(UnitState::is_failed);
        Ok(failed.collect())
    }

    async fn unit_state(&self, unit: &UnitName) -> Result<Option<UnitState>, SystemdError> {
        let mut inner = self.lock();
        inner.calls.push(Call::UnitState(unit.to_string()));
        let Some(states) = inner.states.get_mut(unit.as_str()) else { return Ok(None) };
        let state = if states.len() > 1 { states.pop_front() } else { states.front().cloned() };
        Ok(state.flatten())
    }

    async fn list_units(&self) -> Result<Vec<Listed>, SystemdError> {
        let mut inner = self.lock();
        inner.calls.push(Call::ListUnits);
        let mut listed: Vec<Listed> = inner
            .states
            .iter()
            .filter_map(|(unit, s)| s.front().cloned().flatten().map(|s| (unit, s)))
            .map(|(unit, s)| Listed { unit: unit.clone(), active_state: s.active_state, sub_state: s.sub_state })
            .collect();
        listed.sort_by(|a, b| a.unit.cmp(&b.unit));
        Ok(listed)
    }
}

impl Host for FakeHost {
    async fn restart(&self, unit: &UnitName, timeout: Duration) -> Result<JobResult, SystemdError> {
        self.job(Call::Restart(unit.to_string()), "restart", unit, timeout)
    }

    async fn start_helper(&self, unit: &UnitName, timeout: Duration) -> Result<JobResult, SystemdError> {
        let ends_in_error = matches!(self.lock().ends.get(unit.as_str()), Some(JobEnd::Dbus(_)));
        if !ends_in_error {
            if let Some(program) = &self.lock().helper {
                program(unit);
            }
            let mut inner = self.lock();
            let leaves = inner.on_helper.get_mut(unit.as_str()).and_then(|runs| {
                if runs.len() > 1 {
                    runs.pop_front()
                } else {
                    runs.front().cloned()
                }
            });
            for (u, state) in leaves.unwrap_or_default() {
                inner.states.insert(u, VecDeque::from([state]));
            }
        }
        self.job(Call::StartHelper(unit.to_string()), "start", unit, timeout)
    }

    async fn reset_failed(&self, unit: &UnitName) -> Result<(), SystemdError> {
        self.job(Call::ResetFailed(unit.to_string()), "reset-failed", unit, Duration::ZERO).map(drop)
    }
}

impl Executor for FakeHost {
    async fn execute(
        &self,
        action: &Action,
        config: &Config,
        open_incidents: Result<Vec<(Fingerprint, String)>, String>,
    ) -> Report {
        let down = SystemdLink::Down("no systemd in a unit test".into());
        super::execute_on(Ok(self), &down, action, config, open_incidents).await
    }
}

/// A unit's state with the given `ActiveState`, `SubState` and `Result`,
/// wanted by `multi-user.target` (so it should run), failed or stopped at
/// `inactive_since` seconds after the epoch.
pub(crate) fn unit(
    id: &str,
    active: &str,
    sub: &str,
    result: &str,
    invocation: &str,
    inactive_since: i64,
) -> UnitState {
    UnitState {
        id: id.into(),
        names: vec![id.into()],
        description: format!("fake {id}"),
        load_state: "loaded".into(),
        active_state: active.into(),
        sub_state: sub.into(),
        result: Some(result.into()),
        n_restarts: Some(0),
        exec_main_status: Some(0),
        inactive_enter_timestamp: chrono::DateTime::from_timestamp(inactive_since, 0),
        active_enter_timestamp: None,
        invocation_id: invocation.into(),
        service_type: Some("simple".into()),
        remain_after_exit: false,
        wanted_by: vec!["multi-user.target".into()],
        triggered_by: Vec::new(),
        has_job: false,
        refuse_manual_stop: false,
        success_action: "none".into(),
        failure_action: "none".into(),
    }
}

/// A configuration whose state directory, journal and system profile
/// are in `dir`; units settle for `settle` seconds.
pub(crate) fn config(dir: &Path, settle: u64) -> Config {
    for sub in ["state", "journal", "profiles"] {
        std::fs::create_dir(dir.join(sub)).unwrap();
    }
    let mut config =
        Config { state_dir: dir.join("state"), journal_dir: Some(dir.join("journal")), ..Config::default() };
    config.nixos.profile = dir.join("profiles/system");
    config.nixos.current_system = dir.join("current-system");
    config.act.settle_time = settle;
    config.act.job_timeout = 7;
    config.act.switch_watch = 1;
    config
}

/// Generation `n` exists (`system-N-link` to a store path of its own).
pub(crate) fn generation(profile: &Path, n: u32) {
    symlink(format!("/nix/store/{n}-system"), profile.with_file_name(format!("system-{n}-link"))).unwrap();
}

/// The profile is at generation `n`, and its store path runs.
pub(crate) fn boot_and_run(config: &Config, n: u32) {
    let (profile, current) = (&config.nixos.profile, &config.nixos.current_system);
    let _ = std::fs::remove_file(profile);
    let _ = std::fs::remove_file(current);
    symlink(format!("system-{n}-link"), profile).unwrap();
    symlink(format!("/nix/store/{n}-system"), current).unwrap();
}
