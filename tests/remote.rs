//! `macha remote serve`, the host's side of the remote protocol, in a
//! container with a real systemd, run as the daemon's user `macha` the
//! way sshd runs it for a controller's key (stdin and stdout, the command
//! the client asked for in `SSH_ORIGINAL_COMMAND`). What is shown: every
//! verb answers typed JSON; an `act` is judged by this host's own gate
//! (its level, its protected units) whatever the controller says, and
//! recorded here with the approver; bad lines and commands get typed
//! errors, are recorded, and the session goes on.
//!
//! Not here yet: the controller's side and real OpenSSH (issue 17).

mod common;

use std::time::Duration;

use common::{failing_app, macha_host};
use macha_testbed::container::Container;
use serde_json::{json, Value};

const STATE: &str = "/var/lib/macha-autonomous";
const CONFIG: &str = "/etc/macha-autonomous/config.toml";

/// A host at `level` whose `web.service` and `db.service` failed;
/// `db.service` is protected here.
fn host(name: &str, level: &str) -> Container {
    let c = macha_host(name);
    c.exec_ok(&["install", "-d", "-o", "macha", "-g", "macha", "-m", "0750", STATE]).unwrap();
    c.write_file(
        CONFIG,
        format!(
            "autonomy_level = \"{level}\"\nprotected_units = [\"db.service\"]\n\n[detect]\ndisk_full_percent = 100\nmemory_pressure_percent = 100\n\n[act]\nsettle_time = 1\n"
        ),
    )
    .unwrap();
    failing_app(&c, "web.service");
    failing_app(&c, "db.service");
    c.exec_ok(&["touch", "/run/app.ok"]).unwrap();
    c
}

/// Runs one session as `macha` with `lines` on stdin (and `command` as
/// what sshd was asked to run); its exit status and its replies.
fn session(c: &Container, lines: &[String], command: &str) -> (Option<i32>, Vec<Value>) {
    c.write_file("/tmp/requests.jsonl", lines.join("\n") + "\n").unwrap();
    let script = format!(
        "runuser -u macha -- env SSH_ORIGINAL_COMMAND='{command}' /opt/macha/macha --config {CONFIG} remote serve < /tmp/requests.jsonl"
    );
    let out = c.sh(&script).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let replies = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a reply that is no JSON ({e}): {l}")))
        .collect();
    (out.status.code(), replies)
}

fn hello() -> String {
    json!({"verb": "hello", "version": 1, "controller": "ctl"}).to_string()
}

fn act(unit: &str, approval: Option<Value>) -> String {
    let mut r = json!({
        "verb": "act",
        "incident": format!("unit-failed:{unit}"),
        "proposed": {"kind": "restart_unit", "unit": unit, "reason": "the controller's model says so"},
    });
    if let Some(a) = approval {
        r["approval"] = a;
    }
    r.to_string()
}

fn trail(c: &Container, file: &str) -> Vec<Value> {
    let text = c.exec_ok(&["cat", &format!("{STATE}/{file}")]).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn a_controller_observes_and_this_host_acts_only_as_its_own_gate_allows() {
    let c = host("remote-serve", "auto-safe");
    let observe = json!({"verb": "observe"}).to_string();
    let (status, replies) = session(&c, &[hello(), observe, act("web.service", None), act("db.service", None)], "");
    assert_eq!(status, Some(0));
    assert_eq!(replies.len(), 4, "{replies:#?}");
    assert_eq!((&replies[0]["reply"], &replies[0]["version"]), (&json!("hello"), &json!(1)));
    assert_eq!(replies[0]["autonomy_level"], "auto-safe");
    assert!(replies[0]["capabilities"].as_array().unwrap().contains(&json!("act")));
    let incidents: Vec<&str> =
        replies[1]["incidents"].as_array().unwrap().iter().map(|i| i["fingerprint"].as_str().unwrap()).collect();
    assert!(incidents.contains(&"unit-failed:web.service"), "{:#}", replies[1]);
    assert_eq!(replies[1]["snapshot"]["hostname"], replies[0]["host"]);

    // auto-safe here: the restart is carried out and verified.
    let web = &replies[2];
    assert_eq!(
        (&web["reply"], &web["outcome"], &web["succeeded"]),
        (&json!("acted"), &json!("executed"), &json!(true))
    );
    c.wait_unit_state("web.service", "active", Duration::from_secs(20)).unwrap();
    // db.service is protected here, whatever the controller thinks.
    let db = &replies[3];
    assert_eq!(db["outcome"], "refused", "{db:#}");
    assert!(db["detail"].as_str().unwrap().contains("protected"), "{db:#}");
    assert_eq!(c.unit_property("db.service", "ActiveState").unwrap(), "failed");

    // This host's own trail: the request, how it ended, and the refusal.
    let actions = trail(&c, "actions.jsonl");
    let seen: Vec<(&str, &str)> =
        actions.iter().map(|r| (r["origin"].as_str().unwrap(), r["outcome"].as_str().unwrap())).collect();
    assert_eq!(seen, [("remote", "started"), ("remote", "succeeded")], "{actions:#?}");
    assert!(actions[0]["detail"].as_str().unwrap().ends_with("asked by controller ctl"), "{:#}", actions[0]);
    let remote = trail(&c, "remote.jsonl");
    let seen: Vec<&str> = remote.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(seen, ["session", "acted", "refused"], "{remote:#?}");
    assert!(remote.iter().all(|r| r["controller"] == "ctl"));
}

#[test]
fn below_its_level_this_host_acts_only_with_a_person_s_approval_and_records_who() {
    let c = host("remote-approval", "suggest");
    let approval = json!({"id": 7, "by": "alice (uid 1000)"});
    let lines = [
        hello(),
        act("web.service", None),
        act("web.service", Some(approval.clone())),
        act("db.service", Some(approval)),
    ];
    let (_, replies) = session(&c, &lines, "");
    assert_eq!(replies[1]["outcome"], "needs_approval", "{:#}", replies[1]);
    assert!(replies[1]["detail"].as_str().unwrap().contains("autonomy level (suggest)"), "{:#}", replies[1]);
    assert_eq!(
        (&replies[2]["outcome"], &replies[2]["succeeded"]),
        (&json!("executed"), &json!(true)),
        "{:#}",
        replies[2]
    );
    assert_eq!(replies[3]["outcome"], "refused", "approved or not, a protected unit stays untouched: {:#}", replies[3]);
    let actions = trail(&c, "actions.jsonl");
    let seen: Vec<&str> = actions.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(seen, ["approved", "succeeded"], "{actions:#?}");
    assert_eq!(actions[0]["by"], "alice (uid 1000) (approval 7 on controller ctl)");
}

#[test]
fn anything_outside_the_protocol_gets_a_typed_error_is_recorded_and_the_session_goes_on() {
    let c = host("remote-refusals", "auto-safe");
    let lines = [
        json!({"verb": "observe"}).to_string(),
        "sh -c id".to_owned(),
        json!({"verb": "exec", "command": "id"}).to_string(),
        format!("{{\"verb\":\"observe\",\"pad\":\"{}\"}}", "x".repeat(70 * 1024)),
        json!({"verb": "hello", "version": 1, "controller": "ctl", "shell": true}).to_string(),
        hello(),
        json!({"verb": "approvals"}).to_string(),
        json!({"verb": "hello", "version": 2, "controller": "ctl"}).to_string(),
        json!({"verb": "observe"}).to_string(),
    ];
    let (status, replies) = session(&c, &lines, "");
    assert_eq!(status, Some(0));
    let kinds: Vec<String> = replies
        .iter()
        .map(|r| {
            if r["reply"] == "error" {
                format!("error:{}", r["kind"].as_str().unwrap())
            } else {
                r["reply"].as_str().unwrap().to_owned()
            }
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "error:hello_first",
            "error:malformed",
            "error:unknown_verb",
            "error:too_large",
            "error:malformed",
            "hello",
            "approvals",
            "error:version",
        ],
        "another version ends the session: the last line is not read"
    );
    let remote = trail(&c, "remote.jsonl");
    let refused = remote.iter().filter(|r| r["outcome"] == "refused").count();
    assert_eq!(refused, 6, "{remote:#?}");

    // A command for sshd to run: refused before anything is read.
    let (status, replies) = session(&c, &[hello()], "sh -c id");
    assert_eq!(status, Some(1));
    assert_eq!(replies.len(), 1, "{replies:#?}");
    assert_eq!(replies[0]["kind"], "command_refused");
    assert!(replies[0]["message"].as_str().unwrap().contains("\"sh -c id\""), "{:#}", replies[0]);
    let last = trail(&c, "remote.jsonl").pop().unwrap();
    assert_eq!((&last["outcome"], &last["error"]), (&json!("refused"), &json!("command_refused")));
    assert!(trail(&c, "actions.jsonl").is_empty(), "nothing was carried out");

    // And `macha-logs remote` shows it to a person.
    let shown = c.exec_ok(&["/opt/macha/macha", "--config", CONFIG, "logs", "remote"]).unwrap();
    assert!(shown.contains("  controller ctl  hello  session: protocol version 1\n"), "{shown}");
    assert!(shown.contains("  controller -  -  refused (command_refused): this key runs nothing but"), "{shown}");
    assert!(shown.contains("  unknown_verb") || shown.contains("(unknown_verb)"), "{shown}");
}

/// Asked again and again, this host's own storm control holds: a restart
/// that did not bring the unit back is not repeated automatically, and a
/// paused host acts on nothing by itself.
#[test]
fn this_host_s_storm_control_and_pause_hold_whatever_the_controller_asks() {
    let c = host("remote-storm", "auto-safe");
    // web.service fails again at every start from now on.
    c.exec_ok(&["rm", "-f", "/run/app.ok"]).unwrap();
    let (_, replies) = session(&c, &[hello(), act("web.service", None), act("web.service", None)], "");
    assert_eq!(
        (&replies[1]["outcome"], &replies[1]["succeeded"]),
        (&json!("executed"), &json!(false)),
        "{:#}",
        replies[1]
    );
    assert_eq!(replies[2]["outcome"], "needs_approval", "{:#}", replies[2]);
    assert!(replies[2]["detail"].as_str().unwrap().contains("failed its check"), "{:#}", replies[2]);

    c.exec_ok(&["/opt/macha/macha", "--config", CONFIG, "pause", "--reason", "maintenance"]).unwrap();
    c.exec_ok(&["touch", "/run/app.ok"]).unwrap();
    let (_, replies) = session(&c, &[hello(), act("db.service", None)], "");
    // db.service is protected: refused before the pause is even asked.
    assert_eq!(replies[1]["outcome"], "refused");
    c.write_file(CONFIG, "autonomy_level = \"auto-safe\"\n\n[act]\nsettle_time = 1\n").unwrap();
    let (_, replies) = session(&c, &[hello(), act("db.service", None)], "");
    assert_eq!(replies[1]["outcome"], "needs_approval", "{:#}", replies[1]);
    assert!(replies[1]["detail"].as_str().unwrap().contains("paused (maintenance)"), "{:#}", replies[1]);
    let outcomes: Vec<String> =
        trail(&c, "actions.jsonl").iter().map(|r| r["outcome"].as_str().unwrap().to_owned()).collect();
    assert_eq!(outcomes, ["started", "failed"], "one automatic action, recorded by this host's ledger");
}
