//! The daemon as it runs in production: an unprivileged user in
//! `systemd-journal`, allowed by the polkit rule, not by being root. It reads
//! the system journal, asks the model, and restarts a failed unit inside
//! the container, with the Ollama double running there too.

mod common;

use std::time::Duration;

use common::manager_call_as;
use macha_testbed::container::Container;

const APP: &str = "app.service";

fn setup() -> Container {
    let c = common::macha_host("leastpriv");
    common::failing_app(&c, APP);
    c.write_file(
        "/etc/macha-autonomous/config.toml",
        "autonomy_level = \"auto-safe\"\ncheck_interval = 2\n\n[detect]\ndisk_full_percent = 100\nmemory_pressure_percent = 100\n\n[act]\nsettle_time = 1\n",
    )
    .unwrap();
    c.install_unit(
        "macha-autonomous.service",
        "[Service]\nUser=macha\nGroup=macha\nSupplementaryGroups=systemd-journal\nStateDirectory=macha-autonomous\nEnvironment=MACHA_LOG=info\nExecStart=/opt/macha/macha daemon\n",
    )
    .unwrap();
    c
}

#[test]
fn the_unprivileged_daemon_restarts_a_failed_unit_through_polkit() {
    let c = setup();
    let invocation = c.unit_property(APP, "InvocationID").unwrap();
    c.write_file("/run/app.ok", "").unwrap();
    c.exec_ok(&["systemctl", "start", "macha-autonomous.service"]).unwrap();

    let wait = c.wait_for(Duration::from_secs(40), || {
        c.unit_property(APP, "ActiveState").unwrap() == "active"
            && c.unit_property(APP, "InvocationID").unwrap() != invocation
    });
    let log = c.exec_ok(&["journalctl", "-u", "macha-autonomous.service", "-o", "cat", "--no-pager"]).unwrap();
    wait.unwrap_or_else(|e| panic!("{e}\n{log}"));

    let pid = c.unit_property("macha-autonomous.service", "MainPID").unwrap();
    let owner = c.exec_ok(&["stat", "-c", "%U", &format!("/proc/{pid}")]).unwrap();
    assert_eq!(owner.trim(), "macha", "the daemon runs as macha");

    // The record follows the restart once the unit has stayed up (settle_time).
    let read = |f: &str| c.exec_ok(&["cat", &format!("/var/lib/macha-autonomous/{f}")]).unwrap_or_default();
    c.wait_for(Duration::from_secs(10), || read("actions.jsonl").contains("succeeded")).unwrap();
    let actions = read("actions.jsonl");
    let last: serde_json::Value = serde_json::from_str(actions.lines().last().unwrap()).unwrap();
    assert_eq!(last["outcome"], "succeeded", "{actions}");
    assert_eq!(last["origin"], "automatic");
    assert_eq!(last["target"], APP);
    let decisions = read("decisions.jsonl");
    assert!(decisions.contains("unit-failed:app.service"), "{decisions}");

    // The same user cannot stop anything or restart a protected unit, even by
    // calling systemd directly.
    let ssh = c.unit_property("ssh.service", "InvocationID").unwrap();
    let (ok, _) = manager_call_as(&c, "macha", "RestartUnit", "ssh.service");
    assert!(!ok);
    assert_eq!(c.unit_property("ssh.service", "InvocationID").unwrap(), ssh);
}
