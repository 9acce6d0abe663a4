//! Storm control against a real systemd: a unit failing in a loop is not
//! restarted beyond the budget, a failed check is not repeated, and
//! `macha pause` stops every automatic action.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{decision, Bed, WEB};
use macha_testbed::ollama::Reply;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const LOOP: &str = "loop.service";

/// Starts, runs for 2 s (longer than the 1 s settle time, so a restart
/// counts as a success), then crashes: a unit that fails in a loop.
const LOOP_UNIT: &str = "[Unit]
StartLimitIntervalSec=0

[Service]
ExecStart=/bin/sh -c 'sleep 2; echo \"<3>worker crashed\"; exit 1'
";

fn automatic(actions: &[Value]) -> Vec<&Value> {
    actions
        .iter()
        .filter(|a| a["origin"] == "automatic" && (a["outcome"] == "succeeded" || a["outcome"] == "failed"))
        .collect()
}

fn starts(bed: &Bed, unit: &str) -> usize {
    bed.c.sync_journal().unwrap();
    let log = bed.c.exec_ok(&["journalctl", "-u", unit, "-o", "cat", "--no-pager"]).unwrap();
    log.lines().filter(|l| l.starts_with("Started ")).count()
}

fn run_daemon_for(bed: &Bed, secs: u64) {
    let mut daemon = bed.command("macha", &["daemon"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(secs));
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM).unwrap();
    let started = Instant::now();
    while daemon.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(30), "daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_unit_failing_in_a_loop_is_restarted_no_more_than_the_budget_allows() {
    let bed = Bed::new("storm-budget", "auto-safe");
    bed.without_failed_fix_rule();
    // The bed's config ends with its [act] table, so these keys land there.
    bed.append_config("cooldown = 0\nmax_auto_per_hour = 3\nmax_auto_restarts = 10\n");
    bed.c.install_unit(LOOP, LOOP_UNIT).unwrap();
    bed.c.start_unit(LOOP).unwrap();
    bed.c.wait_unit_state(LOOP, "failed", Duration::from_secs(10)).unwrap();

    run_daemon_for(&bed, 25);

    let actions = bed.audit("actions.jsonl");
    let auto = automatic(&actions);
    assert_eq!(auto.len(), 3, "restarts within the budget: {actions:#?}");
    assert_eq!(starts(&bed, LOOP), 1 + 3, "systemd saw exactly the budgeted restarts");
    let escalated: Vec<&Value> = actions.iter().filter(|a| a["outcome"] == "escalated").collect();
    assert_eq!(escalated.len(), 1, "{actions:#?}");
    assert!(escalated[0]["detail"].as_str().unwrap().contains("budget of 3 automatic actions per hour"));
    assert_eq!(bed.pending().len(), 1, "handed to a human, once");
}

#[test]
fn after_the_configured_number_of_automatic_restarts_a_human_takes_over() {
    let bed = Bed::new("storm-count", "auto-safe");
    bed.without_failed_fix_rule();
    bed.append_config("cooldown = 0\nmax_auto_per_hour = 100\nmax_auto_restarts = 2\n");
    bed.c.install_unit(LOOP, LOOP_UNIT).unwrap();
    bed.c.start_unit(LOOP).unwrap();
    bed.c.wait_unit_state(LOOP, "failed", Duration::from_secs(10)).unwrap();

    run_daemon_for(&bed, 20);

    let actions = bed.audit("actions.jsonl");
    assert_eq!(automatic(&actions).len(), 2, "{actions:#?}");
    assert_eq!(starts(&bed, LOOP), 3);
    let escalated = actions.iter().find(|a| a["outcome"] == "escalated").expect("escalated");
    assert!(escalated["detail"].as_str().unwrap().contains("still failing after 2 automatic actions"));
}

#[test]
fn a_failed_check_is_not_repeated_automatically_and_the_cooldown_holds() {
    let bed = Bed::new("storm-check", "auto-safe");
    bed.without_failed_fix_rule();
    bed.append_config("cooldown = 3600\n");
    bed.failing_web();
    for _ in 0..3 {
        bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
        bed.check();
    }
    let actions = bed.audit("actions.jsonl");
    let outcomes: Vec<&str> = actions.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["started", "failed", "escalated"], "{actions:#?}");
    assert!(actions[2]["detail"].as_str().unwrap().contains("failed its check"));
    assert_eq!(starts(&bed, WEB), 2, "one automatic restart only");
}

#[test]
fn pause_stops_every_automatic_action_until_resume() {
    let bed = Bed::new("storm-pause", "auto-safe");
    bed.without_failed_fix_rule();
    bed.failing_web();
    bed.heal_web();
    let out = bed.run("macha", &["pause", "--reason", "database migration"]);
    assert!(out.status.success());
    let invocation = bed.prop(WEB, "InvocationID");
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let (_, report) = bed.check();
    let a = &report["incidents"][0]["decision"]["actions"][0];
    assert_eq!(a["result"], "escalated", "{report:#}");
    assert!(a["detail"].as_str().unwrap().contains("paused (database migration)"));
    assert_eq!(bed.prop(WEB, "InvocationID"), invocation, "nothing ran");
    assert_eq!(bed.pending().len(), 1);

    // Still paused in a new process (the daemon or another check).
    bed.c.exec_ok(&["systemctl", "restart", WEB]).unwrap();
    bed.c.exec_ok(&["rm", "/run/demo-web.ok"]).unwrap();
    bed.c.exec_ok(&["systemctl", "restart", "--no-block", WEB]).unwrap();
    bed.c.wait_unit_state(WEB, "failed", Duration::from_secs(10)).unwrap();
    bed.heal_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let (_, report) = bed.check();
    assert_eq!(report["incidents"][0]["decision"]["actions"][0]["result"], "already_queued", "{report:#}");

    assert!(bed.run("macha", &["resume"]).status.success());
    bed.c.exec_ok(&["rm", "/run/demo-web.ok"]).unwrap();
    bed.c.exec_ok(&["systemctl", "restart", "--no-block", WEB]).unwrap();
    bed.c.wait_for(Duration::from_secs(10), || bed.prop(WEB, "ActiveState") == "failed").unwrap();
    bed.heal_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let (_, report) = bed.check();
    assert_eq!(report["incidents"][0]["decision"]["actions"][0]["result"], "executed", "{report:#}");
    assert_eq!(bed.prop(WEB, "ActiveState"), "active");
}
