//! A controller and three hosts, each a container with a real systemd and a
//! real OpenSSH server, in a network namespace this test makes: the hosts'
//! sshd listen on 127.0.0.2, .3 and .4 of that namespace's loopback, and
//! nothing else can reach them. Each host's `macha` user has the
//! controller's key in `authorized_keys` with `restrict` and the forced
//! command `macha remote serve`, as the module writes it.
//!
//! What is shown: `macha remote hosts` on the controller checks each host
//! key before it sends anything, sees a failed unit on host 2 as
//! `h2/unit-failed:...`, names a host whose key changed and a host that is
//! down as unreachable with the reason while the others answer; and the
//! controller's key gets nothing but the protocol: no command, no PTY
//! shell, no forwarding.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{build_double_bin, failing_app, macha_bin, POLKIT_RULE};
use macha_testbed::container::Container;
use macha_testbed::fleet::{self, Fleet, CONFIG, KEY, STATE};
use serde_json::Value;

const HOST_CONFIG: &str = "autonomy_level = \"auto-safe\"\n\n[detect]\ndisk_full_percent = 100\nmemory_pressure_percent = 100\nerror_burst_lines = 100000\n";

fn hosts_json(controller: &Container) -> (Vec<Value>, Duration) {
    let started = Instant::now();
    let out = controller.exec(&["/opt/macha/macha", "--config", CONFIG, "remote", "hosts", "--json"]).unwrap();
    let took = started.elapsed();
    let views: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("no JSON ({e}): {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (views, took)
}

fn incidents(view: &Value) -> Vec<String> {
    view["incidents"].as_array().unwrap().iter().map(|i| i["fingerprint"].as_str().unwrap().to_owned()).collect()
}

fn sessions(c: &Container) -> usize {
    let text = c.exec_ok(&["cat", &format!("{STATE}/remote.jsonl")]).unwrap_or_default();
    text.lines().filter(|l| l.contains("\"outcome\":\"session\"")).count()
}

#[test]
fn the_controller_sees_every_host_checks_each_key_and_a_host_down_delays_no_other() {
    build_double_bin();
    let bin = macha_bin().parent().unwrap().to_path_buf();
    let rule = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(POLKIT_RULE)).unwrap();
    let fleet = Fleet::boot("fleet", &bin, &rule, HOST_CONFIG, "autonomy_level = \"suggest\"\n", 3).unwrap();
    let (controller, hosts) = (&fleet.controller, &fleet.hosts);
    failing_app(&hosts[1], "web.service");

    let (views, _) = hosts_json(controller);
    let names: Vec<&str> = views.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["h1", "h2", "h3"]);
    assert!(views.iter().all(|v| v["reachable"] == true), "{views:#?}");
    assert_eq!(views[1]["autonomy_level"], "auto-safe");
    assert_eq!(incidents(&views[0]), Vec::<String>::new(), "{:#}", views[0]);
    assert_eq!(incidents(&views[1]), ["h2/unit-failed:web.service"], "{:#}", views[1]);
    assert_eq!(sessions(&hosts[2]), 1);

    // Host 3's key replaced, host 1 down: both named with the reason, and
    // nothing reaches host 3; host 2 answers as before.
    fleet::sshd(&hosts[2], 4).unwrap();
    hosts[0].exec_ok(&["systemctl", "stop", "ssh.service"]).unwrap();
    let (views, took) = hosts_json(controller);
    assert_eq!(incidents(&views[0]), ["host-unreachable:h1"], "{:#}", views[0]);
    assert!(views[0]["incidents"][0]["summary"].as_str().unwrap().contains("cannot connect to 127.0.0.2:22"));
    assert_eq!(incidents(&views[1]), ["h2/unit-failed:web.service"]);
    assert_eq!(incidents(&views[2]), ["host-unreachable:h3"]);
    let why = views[2]["incidents"][0]["summary"].as_str().unwrap();
    assert!(why.starts_with("host key refused, nothing sent: h3 showed the key SHA256:"), "{why}");
    assert_eq!(sessions(&hosts[2]), 1, "no session with a host whose key changed");
    assert!(took < Duration::from_secs(20), "{took:?}: a host down must not hold up the others");

    // The controller's key on its own, with OpenSSH's client: a command, a
    // PTY and a forward get nothing but the protocol's refusal.
    let ssh = |extra: &str| {
        controller
            .sh(&format!(
                "ssh -i {KEY} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
                 -o ConnectTimeout=5 {extra} </dev/null"
            ))
            .unwrap()
    };
    let out = ssh("macha@127.0.0.3 sh -c id");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("\"kind\":\"command_refused\""), "{said}");
    assert!(!said.contains("uid="), "{said}");
    let out = ssh("-tt macha@127.0.0.3");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("PTY allocation request failed"), "{said}");
    assert!(!said.contains("uid=") && !said.contains('$'), "{said}");
    let out = ssh("-W 127.0.0.3:22 macha@127.0.0.3");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("administratively prohibited") || said.contains("forwarding"), "{said}");
    let refused = hosts[1].exec_ok(&["cat", &format!("{STATE}/remote.jsonl")]).unwrap();
    assert!(refused.contains("\"error\":\"command_refused\""), "{refused}");

    // A private key others may read is not used: no host is logged in to.
    controller.exec_ok(&["chmod", "0644", KEY]).unwrap();
    let (views, _) = hosts_json(controller);
    let why = views[1]["incidents"][0]["summary"].as_str().unwrap();
    assert!(why.contains("readable by its group or by others"), "{why}");
    assert_eq!(sessions(&hosts[1]), 2, "no new session with a key that is not private");
}

/// The controller's configuration head: `auto-safe`, the Ollama double
/// inside the controller (its demo answer restarts the failed unit), and
/// nothing from the controller's own disk or memory.
const CONTROLLER_HEAD: &str = "autonomy_level = \"auto-safe\"\nstate_dir = \"/var/lib/macha-autonomous\"\n\n[ollama]\nurl = \"http://127.0.0.1:11434\"\nmodel = \"llama3.1:70b\"\ntimeout = 30\n\n[detect]\ndisk_full_percent = 100\nmemory_pressure_percent = 100\nerror_burst_lines = 100000\n\n[act]\nsettle_time = 1\njob_timeout = 20\n";

/// `macha check --json` on the controller: its report of every host.
fn check(controller: &Container) -> Value {
    let out = controller.exec(&["/opt/macha/macha", "--config", CONFIG, "check", "--json"]).unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("no JSON ({e}): {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

/// The first action of incident `fingerprint` in a check's report.
fn first_action<'a>(report: &'a Value, fingerprint: &str) -> &'a Value {
    let incident = report["incidents"].as_array().unwrap().iter().find(|i| i["fingerprint"] == fingerprint);
    let incident = incident.unwrap_or_else(|| panic!("no incident {fingerprint}: {report:#}"));
    &incident["decision"]["actions"][0]
}

fn trail(c: &Container, file: &str) -> Vec<Value> {
    let text = c.exec_ok(&["cat", &format!("{STATE}/{file}")]).unwrap_or_default();
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn the_controller_decides_for_each_host_which_judges_for_itself_and_the_fleet_limit_holds() {
    build_double_bin();
    let bin = macha_bin().parent().unwrap().to_path_buf();
    let rule = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(POLKIT_RULE)).unwrap();
    // Every host protects vault.service; the controller does not.
    let host_config = format!("protected_units = [\"vault.service\"]\n{HOST_CONFIG}");
    let fleet = Fleet::boot("fleetd", &bin, &rule, &host_config, CONTROLLER_HEAD, 3).unwrap();
    let (controller, hosts) = (&fleet.controller, &fleet.hosts);
    controller.exec_ok(&["install", "-d", "-m", "0750", STATE]).unwrap();
    controller
        .exec_ok(&["systemd-run", "--unit=ollama-double", "/opt/macha/ollama-double", "--listen", "127.0.0.1:11434"])
        .unwrap();

    // Host 1's protected unit fails: the controller, at auto-safe, asks
    // host 1 to restart it, and host 1 refuses.
    failing_app(&hosts[0], "vault.service");
    let report = check(controller);
    let vault = first_action(&report, "h1/unit-failed:vault.service");
    assert_eq!(vault["result"], "refused", "{report:#}");
    assert!(
        vault["detail"]
            .as_str()
            .unwrap()
            .starts_with("refused by h1: refused by this host: not acted because vault.service is protected"),
        "{vault:#}"
    );
    assert_eq!(hosts[0].unit_property("vault.service", "ActiveState").unwrap(), "failed");
    let refused = trail(&hosts[0], "remote.jsonl");
    assert!(refused.iter().any(|r| r["verb"] == "act" && r["outcome"] == "refused"), "{refused:#?}");

    // The same unit fails on all three hosts at once: one host is acted on,
    // the two others are queued here for a person (a refusal took no place).
    for h in hosts {
        failing_app(h, "web.service");
    }
    for h in hosts {
        // A restart would bring it back now.
        h.exec_ok(&["touch", "/run/app.ok"]).unwrap();
    }
    let report = check(controller);
    let results: Vec<(&str, &str)> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| {
            let a = first_action(&report, &format!("{h}/unit-failed:web.service"));
            (a["result"].as_str().unwrap(), a["detail"].as_str().unwrap())
        })
        .collect();
    assert_eq!(results[0].0, "executed", "{report:#}");
    assert!(results[0].1.starts_with("on h1: "), "{results:?}");
    for (result, detail) in &results[1..] {
        assert_eq!(*result, "escalated", "{report:#}");
        assert!(detail.contains("remote.max_hosts_acting") && detail.contains("and h1 already were"), "{detail}");
    }
    assert_eq!(hosts[0].unit_property("web.service", "ActiveState").unwrap(), "active");
    assert_eq!(hosts[1].unit_property("web.service", "ActiveState").unwrap(), "failed");

    // Host 2's item approved from the controller: carried out on host 2,
    // re-checked there, the approver recorded on both sides.
    let id = first_action(&report, "h2/unit-failed:web.service")["approval_id"].as_i64().unwrap().to_string();
    let listed = controller.exec_ok(&["/opt/macha/macha", "--config", CONFIG, "approve", "list"]).unwrap();
    assert!(listed.contains("h2/unit-failed:web.service") && listed.contains("h3/unit-failed:web.service"), "{listed}");
    let out = controller.exec(&["/opt/macha/macha", "--config", CONFIG, "approve", "approve", &id]).unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("succeeded: on h2:"), "{said}");
    assert_eq!(hosts[1].unit_property("web.service", "ActiveState").unwrap(), "active");
    assert_eq!(hosts[2].unit_property("web.service", "ActiveState").unwrap(), "failed", "h3 waits for its person");
    let theirs = trail(&hosts[1], "actions.jsonl");
    let approved = theirs.iter().find(|r| r["outcome"] == "approved").unwrap_or_else(|| panic!("{theirs:#?}"));
    assert_eq!(approved["origin"], "remote");
    assert!(
        approved["by"].as_str().unwrap().starts_with(&format!("root (uid 0) (approval {id} on controller ")),
        "{approved:#}"
    );
    assert!(theirs.iter().any(|r| r["outcome"] == "succeeded"), "{theirs:#?}");
    let ours = trail(controller, "actions.jsonl");
    let ended = ours.iter().rev().find(|r| r["approval_id"].as_i64().map(|i| i.to_string()) == Some(id.clone()));
    let ended = ended.unwrap();
    assert_eq!(
        (ended["outcome"].as_str(), ended["host"].as_str(), ended["by"].as_str()),
        (Some("succeeded"), Some("h2"), Some("root (uid 0)"))
    );

    // Paused on the controller: nothing is asked of any host by itself,
    // even of host 1, which the fleet limit would let through.
    controller.exec_ok(&["/opt/macha/macha", "--config", CONFIG, "pause", "--reason", "maintenance"]).unwrap();
    hosts[0].exec_ok(&["rm", "/run/app.ok"]).unwrap();
    failing_app(&hosts[0], "worker.service");
    let report = check(controller);
    let worker = first_action(&report, "h1/unit-failed:worker.service");
    assert_eq!(worker["result"], "escalated", "{report:#}");
    assert!(worker["detail"].as_str().unwrap().contains("paused (maintenance)"), "{worker:#}");
    assert_eq!(hosts[0].unit_property("worker.service", "ActiveState").unwrap(), "failed");

    // Host 2 healthy again: its incident resolved, the others' stay open.
    assert!(report["resolved"].as_array().unwrap().iter().any(|r| r == "h2/unit-failed:web.service"), "{report:#}");
    let out = controller.exec(&["/opt/macha/macha", "--config", CONFIG, "status"]).unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("  h2: no open incident\n"), "{status}");
    assert!(status.contains("  h3: 1 open incident\n    h3/unit-failed:web.service: web.service failed"), "{status}");
}

#[test]
fn the_daemon_looks_at_the_fleet_at_each_full_pass_and_acts_through_the_host() {
    build_double_bin();
    let bin = macha_bin().parent().unwrap().to_path_buf();
    let rule = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(POLKIT_RULE)).unwrap();
    let head = format!("check_interval = 2\n{CONTROLLER_HEAD}");
    let fleet = Fleet::boot("fleetdaemon", &bin, &rule, HOST_CONFIG, &head, 1).unwrap();
    let (controller, host) = (&fleet.controller, &fleet.hosts[0]);
    controller.exec_ok(&["install", "-d", "-m", "0750", STATE]).unwrap();
    controller
        .exec_ok(&["systemd-run", "--unit=ollama-double", "/opt/macha/ollama-double", "--listen", "127.0.0.1:11434"])
        .unwrap();
    controller
        .exec_ok(&["systemd-run", "--unit=macha-controller", "/opt/macha/macha", "--config", CONFIG, "daemon"])
        .unwrap();

    failing_app(host, "web.service");
    host.exec_ok(&["touch", "/run/app.ok"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let ours = trail(controller, "actions.jsonl");
        if let Some(done) = ours.iter().find(|r| r["outcome"] == "succeeded") {
            break done.clone();
        }
        assert!(Instant::now() < deadline, "nothing done for h1 within 60 s: {ours:#?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(done["incident"], "h1/unit-failed:web.service");
    assert_eq!(done["host"], "h1");
    assert!(done["detail"].as_str().unwrap().starts_with("on h1: web.service restarted"), "{done:#}");
    assert_eq!(host.unit_property("web.service", "ActiveState").unwrap(), "active");
    let opened = trail(controller, "incidents.jsonl");
    assert!(opened.iter().any(|r| r["incident"] == "h1/unit-failed:web.service" && r["host"] == "h1"), "{opened:#?}");
    // The host recorded it as automatic, asked by the controller, through its own ledger.
    let theirs = trail(host, "actions.jsonl");
    assert!(theirs.iter().any(|r| r["origin"] == "remote" && r["outcome"] == "succeeded"), "{theirs:#?}");

    // The host goes down: the daemon says so as an incident, and goes on.
    host.exec_ok(&["systemctl", "stop", "ssh.service"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !trail(controller, "incidents.jsonl").iter().any(|r| r["incident"] == "host-unreachable:h1") {
        assert!(Instant::now() < deadline, "h1 down not told within 60 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(controller.exec_ok(&["systemctl", "is-active", "macha-controller.service"]).unwrap().trim(), "active");
}
