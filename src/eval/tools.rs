//! The model's read-only tools, answered from a fixture instead of a host.
//!
//! The model is offered the same tools as on a host, and every call goes
//! through `decide::tools::parse_call`, so a call a host would refuse is
//! refused here with the same reason. A call that passes is answered from
//! the fixture, in the text a host's probe would give (`investigate`'s
//! findings). What the fixture does not record (another unit's state, the
//! generations, the processes, the sockets) is an error that says so, as a
//! probe that cannot read says so on a host: never an invented answer.

use serde_json::Value;

use super::fixture::{Fixture, NOT_RECORDED};
use crate::catalog::{Action, Probe};
use crate::decide::tools::{self, finding_text, ToolError, ToolFuture, Toolbox};
use crate::investigate;
use crate::model::Tool;
use crate::observe::journal::Entry;
use crate::unit::UnitName;

/// The tools of one fixture.
pub struct FixtureTools<'a> {
    fixture: &'a Fixture,
}

impl<'a> FixtureTools<'a> {
    pub fn new(fixture: &'a Fixture) -> Self {
        Self { fixture }
    }

    /// The answer to a checked call.
    fn answer(&self, action: &Action) -> Result<String, String> {
        let Action::Investigate { probe, unit, path } = action else {
            return Err(format!("{} is not an investigation; only investigate runs a probe", action.kind().as_str()));
        };
        let name = probe.as_str();
        let not_recorded = |what: String| format!("{name}: {what} is {NOT_RECORDED}");
        let unit = || unit.as_ref().ok_or_else(|| format!("{name}: needs a unit"));
        let finding = match probe {
            Probe::UnitStatus => {
                let unit = unit()?;
                let state = self.unit_state(unit).ok_or_else(|| not_recorded(format!("the state of {unit}")))?;
                investigate::status_finding(state)
            }
            Probe::UnitLogs => {
                let unit = unit()?;
                let lines = self.unit_lines(unit).ok_or_else(|| not_recorded(format!("the journal of {unit}")))?;
                investigate::logs_finding(unit, &lines)
            }
            Probe::FailedUnits => {
                let unit = self.fixture.unit.as_ref().ok_or_else(|| not_recorded("the list of failed units".into()))?;
                investigate::failed_finding(vec![unit.clone()].into_iter().filter(|u| u.is_failed()).collect())
            }
            Probe::DiskUsage => {
                let path = path.as_deref().ok_or_else(|| format!("{name}: needs a path"))?;
                let fs =
                    self.filesystem_of(path).ok_or_else(|| not_recorded(format!("the file system holding {path}")))?;
                investigate::disk_finding(path, fs)
            }
            Probe::Generations => return Err(not_recorded("the list of system generations".into())),
            Probe::TopProcesses => return Err(not_recorded("the process table".into())),
            Probe::ListeningSockets => return Err(not_recorded("the socket table".into())),
        };
        Ok(finding_text(&finding))
    }

    fn unit_state(&self, unit: &UnitName) -> Option<&crate::observe::systemd::UnitState> {
        self.fixture.unit.as_ref().filter(|u| u.names.iter().any(|n| n == unit.as_str()))
    }

    /// The journal lines of `unit`: for the incident's own unit every line
    /// of the fixture (its evidence, as the prompt shows it), for another
    /// the lines it wrote. `None` when the fixture holds none of its lines:
    /// that it wrote none is not something a fixture records.
    fn unit_lines(&self, unit: &UnitName) -> Option<Vec<Entry>> {
        let journal = &self.fixture.journal;
        let lines: Vec<Entry> = if self.fixture.incident_unit() == Some(unit.as_str()) {
            journal.clone()
        } else {
            journal.iter().filter(|e| e.unit.as_deref() == Some(unit.as_str())).cloned().collect()
        };
        (!lines.is_empty()).then_some(lines)
    }

    /// The recorded file system holding `path`: the one with the longest
    /// mount point that contains it.
    fn filesystem_of(&self, path: &str) -> Option<&crate::observe::host::Filesystem> {
        let holds = |mount: &str| {
            mount == "/" || path == mount || path.strip_prefix(mount).is_some_and(|rest| rest.starts_with('/'))
        };
        self.fixture.host.as_ref()?.filesystems.iter().filter(|fs| holds(&fs.mount)).max_by_key(|fs| fs.mount.len())
    }
}

impl Toolbox for FixtureTools<'_> {
    fn tools(&self) -> Vec<Tool> {
        tools::probe_tools()
    }

    fn call<'a>(&'a self, name: &'a str, arguments: &'a Value) -> ToolFuture<'a> {
        Box::pin(async move {
            let action = tools::parse_call(name, arguments).map_err(ToolError::Refused)?;
            self.answer(&action).map_err(ToolError::Failed)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::eval::fixture::load;

    fn fixture(id: &str) -> Fixture {
        load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("eval/fixtures/{id}.json"))).unwrap()
    }

    fn call(f: &Fixture, name: &str, args: Value) -> Result<String, String> {
        let tools = FixtureTools::new(f);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(tools.call(name, &args)).map_err(|e| e.reason().to_owned())
    }

    #[test]
    fn the_tools_are_the_hosts() {
        let f = fixture("restart-loop");
        let names: Vec<String> = FixtureTools::new(&f).tools().into_iter().map(|t| t.name).collect();
        let host: Vec<String> = tools::probe_tools().into_iter().map(|t| t.name).collect();
        assert_eq!(names, host);
    }

    #[test]
    fn unit_status_and_logs_come_from_the_fixture() {
        let f = fixture("restart-loop");
        let status = call(&f, "unit_status", json!({"unit": "queue.service"})).unwrap();
        assert!(status.starts_with("queue.service: failed (failed), result start-limit-hit, 9 restarts\n"), "{status}");
        assert!(status.contains("NRestarts=9") && status.contains("ExecMainStatus=1"), "{status}");
        let logs = call(&f, "unit_logs", json!({"unit": "queue.service"})).unwrap();
        assert!(logs.starts_with("queue.service: the last 2 journal lines"), "{logs}");
        assert!(logs.contains("err queue[0]: queue: panic: runtime error"), "{logs}");
        let other = call(&f, "unit_status", json!({"unit": "postgresql.service"})).unwrap_err();
        assert_eq!(other, "unit_status: the state of postgresql.service is not recorded in this fixture");
    }

    #[test]
    fn failed_units_and_disk_usage_come_from_the_fixture() {
        let f = fixture("restart-loop");
        let failed = call(&f, "failed_units", json!({})).unwrap();
        assert!(failed.starts_with("1 failed unit: queue.service"), "{failed}");
        let disk = fixture("disk-full-writer");
        let usage = call(&disk, "disk_usage", json!({"path": "/var/lib/postgresql"})).unwrap();
        assert!(usage.contains("Path=/var/lib/postgresql") && usage.contains("UsedPercent=100.0"), "{usage}");
        let elsewhere = call(&disk, "disk_usage", json!({"path": "/varnish"})).unwrap_err();
        assert!(elsewhere.contains("the file system holding /varnish is not recorded"), "{elsewhere}");
        let memory = fixture("memory-pressure");
        assert!(call(&memory, "failed_units", json!({})).unwrap_err().contains("not recorded in this fixture"));
    }

    #[test]
    fn what_a_fixture_does_not_record_is_said_not_invented() {
        let f = fixture("restart-loop");
        for probe in ["generations", "top_processes", "listening_sockets"] {
            let e = call(&f, probe, json!({})).unwrap_err();
            assert!(e.starts_with(&format!("{probe}: ")) && e.ends_with("is not recorded in this fixture"), "{e}");
        }
    }

    #[test]
    fn calls_are_checked_as_on_a_host() {
        let f = fixture("restart-loop");
        let host = tools::parse_call("unit_status", &json!({"unit": "x; reboot"})).unwrap_err();
        assert_eq!(call(&f, "unit_status", json!({"unit": "x; reboot"})).unwrap_err(), host);
        assert!(call(&f, "shell", json!({"command": "id"})).unwrap_err().contains("no such tool"));
        assert!(call(&f, "disk_usage", json!({"path": "/var/../etc"})).is_err());
    }
}
