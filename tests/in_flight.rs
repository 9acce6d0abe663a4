//! An automatic action is recorded before it starts and exactly once when it
//! ends, whatever happens to the daemon meanwhile: a stop signal lets it
//! finish, a kill leaves it to the next daemon (which neither forgets nor
//! repeats it), a full state disk delays its record but loses nothing, and
//! an action whose start cannot be recorded is not carried out.
//!
//! Real restarts are counted from the container: each start of the unit
//! appends a line to a file from its `ExecStartPre=`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{decision, signal, wait_exit, wait_until, Bed, WEB};
use macha_testbed::ollama::Reply;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const SLOW: &str = "slowstart.service";

/// Takes 3 s to start (its `ExecStartPre=` counts the start, then sleeps),
/// runs for 2 s (longer than the bed's 1 s settle time, so a restart
/// succeeds), then crashes.
const SLOW_THEN_CRASH: &str = "[Unit]
StartLimitIntervalSec=0

[Service]
ExecStartPre=/bin/sh -c 'echo start >> /run/slowstart.starts; sleep 3'
ExecStart=/bin/sh -c 'sleep 2; echo \"slowstart: worker crashed\" >&2; exit 1'
";

/// Takes 3 s to start, then fails at once: every restart fails its check.
const SLOW_THEN_FAIL: &str = "[Unit]
StartLimitIntervalSec=0

[Service]
ExecStartPre=/bin/sh -c 'echo start >> /run/slowstart.starts; sleep 3'
ExecStart=/bin/sh -c 'echo \"slowstart: cannot open its database\" >&2; exit 1'
";

fn slow_unit(bed: &Bed, text: &str) {
    bed.c.install_unit(SLOW, text).unwrap();
    bed.c.start_unit(SLOW).unwrap();
    bed.c.wait_unit_state(SLOW, "failed", Duration::from_secs(30)).unwrap();
    assert_eq!(starts(bed), 1);
}

/// How often the unit was started, as the unit itself counted.
fn starts(bed: &Bed) -> usize {
    std::fs::read_to_string(bed.c.root().join("run/slowstart.starts")).unwrap_or_default().lines().count()
}

/// Starts `macha daemon`; its stderr goes to `daemon.log` beside the
/// config, for a failing test's reader.
fn spawn_daemon(bed: &Bed) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(bed.state.path().join("daemon.log")).unwrap();
    bed.command("macha", &["daemon"]).env("MACHA_LOG", "info").stdout(Stdio::null()).stderr(log).spawn().unwrap()
}

fn automatic(bed: &Bed) -> Vec<Value> {
    bed.audit("actions.jsonl").into_iter().filter(|a| a["origin"] == "automatic").collect()
}

fn escalated(bed: &Bed) -> bool {
    automatic(bed).iter().any(|a| a["outcome"] == "escalated")
}

/// Rows of storm control's history of automatic actions.
fn storm_rows(bed: &Bed) -> i64 {
    let db = rusqlite::Connection::open(bed.state_dir().join("state.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.query_row("SELECT COUNT(*) FROM auto_actions", [], |r| r.get(0)).unwrap()
}

/// The records of automatic restarts that ran (or were to run), by their id.
fn restart_records(bed: &Bed) -> BTreeMap<Option<i64>, Vec<String>> {
    let mut per_id: BTreeMap<Option<i64>, Vec<String>> = BTreeMap::new();
    for r in automatic(bed).iter().filter(|r| r["action"] == "restart_unit") {
        let outcome = r["outcome"].as_str().unwrap().to_owned();
        if !matches!(outcome.as_str(), "escalated" | "deferred" | "queued" | "already_queued") {
            per_id.entry(r["auto_id"].as_i64()).or_default().push(outcome);
        }
    }
    per_id
}

/// Whether some automatic restart ran and every one has its outcome.
fn restarts_recorded(bed: &Bed) -> bool {
    let records = restart_records(bed);
    !records.is_empty() && records.values().all(|o| o.len() >= 2)
}

/// Every automatic restart has one `started` record and exactly one
/// outcome after it; returns the outcomes in order.
fn outcomes_of_restarts(bed: &Bed) -> Vec<String> {
    let records = restart_records(bed);
    records
        .into_iter()
        .map(|(id, o)| {
            assert!(id.is_some(), "automatic restarts without their id: {o:?}");
            assert!(o.len() == 2 && o[0] == "started", "automatic action {id:?}: {o:?}");
            assert!(matches!(o[1].as_str(), "succeeded" | "failed" | "interrupted"), "action {id:?}: {o:?}");
            o[1].clone()
        })
        .collect()
}

fn resolutions(bed: &Bed) -> usize {
    let fp = format!("unit-failed:{SLOW}");
    bed.audit("incidents.jsonl").iter().filter(|r| r["incident"] == fp.as_str() && r["event"] == "resolved").count()
}

#[test]
fn sigterm_mid_restart_lets_it_finish_records_it_once_and_storm_control_counts_it() {
    let bed = Bed::new("inflight-term", "auto-safe");
    bed.without_failed_fix_rule();
    bed.append_config("cooldown = 0\nmax_auto_per_hour = 100\nmax_auto_restarts = 2\n");
    slow_unit(&bed, SLOW_THEN_CRASH);

    for round in 0..3 {
        let before = starts(&bed);
        let mut daemon = spawn_daemon(&bed);
        wait_until(Duration::from_secs(40), "a restart or an escalation", || starts(&bed) > before || escalated(&bed));
        let restarting = starts(&bed) > before;
        signal(&daemon, Signal::SIGTERM);
        let (code, took) = wait_exit(&mut daemon, Duration::from_secs(30));
        eprintln!("round {round}: restarting {restarting}, stopped after {took:?}");
        assert_eq!(code, Some(0));
        if !restarting {
            break;
        }
        // The daemon stopped after the restart's job and check, not before.
        assert_ne!(bed.prop(SLOW, "ActiveState"), "activating", "round {round}: stopped mid-restart");
        let outcomes = outcomes_of_restarts(&bed);
        assert_eq!(outcomes.len(), round + 1, "round {round}: {outcomes:?}");
    }

    let restarts = starts(&bed) - 1;
    assert_eq!(restarts, 2, "max_auto_restarts = 2 held across the stopped daemons");
    assert_eq!(outcomes_of_restarts(&bed), ["succeeded", "succeeded"]);
    assert_eq!(storm_rows(&bed), 2, "storm control counted both");
    let escalation = automatic(&bed).into_iter().find(|a| a["outcome"] == "escalated").expect("escalated");
    assert!(escalation["detail"].as_str().unwrap().contains("after 2 automatic actions"), "{escalation:#}");
}

#[test]
fn after_sigterm_the_action_in_flight_ends_and_no_further_one_starts() {
    let bed = Bed::new("inflight-rest", "auto-safe");
    bed.without_failed_fix_rule();
    bed.append_config("cooldown = 0\nmax_auto_per_hour = 100\nmax_auto_restarts = 10\n");
    slow_unit(&bed, SLOW_THEN_CRASH);
    // One decision, two actions: the second would run right after the first.
    let mut both = decision("restart_unit", &[SLOW]);
    both["actions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kind": "reset_failed", "unit": SLOW, "reason": "then clear it"}));
    bed.double.push(Reply::Json(both));

    let mut daemon = spawn_daemon(&bed);
    wait_until(Duration::from_secs(30), "the first restart", || starts(&bed) == 2);
    signal(&daemon, Signal::SIGTERM);
    let (code, _) = wait_exit(&mut daemon, Duration::from_secs(30));
    assert_eq!(code, Some(0));
    std::thread::sleep(Duration::from_secs(4));

    assert_eq!(starts(&bed), 2, "the second restart did not start");
    assert_eq!(outcomes_of_restarts(&bed), ["succeeded"]);
    let deferred = automatic(&bed).into_iter().find(|a| a["outcome"] == "deferred").expect("the second, deferred");
    assert!(deferred["detail"].as_str().unwrap().contains("stopping"), "{deferred:#}");
    assert_eq!(deferred["action"], "reset_failed", "{deferred:#}");
}

#[test]
fn sigkill_mid_restart_the_next_daemon_records_it_once_and_does_not_repeat_it() {
    let bed = Bed::new("inflight-kill", "auto-safe");
    bed.without_failed_fix_rule();
    slow_unit(&bed, SLOW_THEN_FAIL);

    let mut first = spawn_daemon(&bed);
    wait_until(Duration::from_secs(30), "the automatic restart", || starts(&bed) == 2);
    signal(&first, Signal::SIGKILL);
    first.wait().unwrap();
    assert_eq!(bed.prop(SLOW, "ActiveState"), "activating", "killed while the restart runs");

    let mut second = spawn_daemon(&bed);
    wait_until(Duration::from_secs(40), "the restart's outcome and the next decision", || {
        escalated(&bed) && restarts_recorded(&bed)
    });
    std::thread::sleep(Duration::from_secs(3));
    signal(&second, Signal::SIGTERM);
    wait_exit(&mut second, Duration::from_secs(30));

    eprintln!("{:#?}", automatic(&bed));
    assert_eq!(starts(&bed), 2, "restarted once, not again by the next daemon");
    assert_eq!(outcomes_of_restarts(&bed), ["failed"], "judged by the next daemon, once");
    let judged = automatic(&bed).into_iter().find(|a| a["outcome"] == "failed").unwrap();
    assert!(judged["detail"].as_str().unwrap().contains("judged after macha stopped"), "{judged:#}");
    assert_eq!(storm_rows(&bed), 1);
    assert_eq!(resolutions(&bed), 0, "never resolved while the restart ran");
    let escalation = automatic(&bed).into_iter().find(|a| a["outcome"] == "escalated").unwrap();
    assert!(escalation["detail"].as_str().unwrap().contains("failed its check"), "{escalation:#}");
    assert_eq!(bed.pending().len(), 1, "handed to a human");
}

/// A tmpfs mounted for the length of a test.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0750"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs at {}", at.display());
        Mount(at.to_owned())
    }

    fn bind(from: &str, at: &Path) -> Mount {
        let ok = Command::new("mount").args(["--bind", from]).arg(at).status().unwrap().success();
        assert!(ok, "binding {from} to {}", at.display());
        Mount(at.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` with `dir/filler` until a write
/// fails for lack of space.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    for chunk in [64 * 1024, 512] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    let _ = f.sync_all();
}

#[test]
fn a_full_state_disk_mid_restart_loses_no_record_and_repeats_nothing() {
    let bed = Bed::new("inflight-full", "auto-safe");
    bed.without_failed_fix_rule();
    let _disk = Mount::tmpfs(&bed.state_dir(), "16m");
    // tmpfs gives out whole pages: a record that fits in the slack of the
    // trail's last page is written even on a full disk. A line before the
    // first record leaves the started record near the end of its page, so
    // its outcome needs a page the full disk does not have.
    let padding = format!("{{\"padding\":\"{}\"}}\n", "x".repeat(2850 - 15));
    std::fs::write(bed.state_dir().join("actions.jsonl"), padding).unwrap();
    slow_unit(&bed, SLOW_THEN_FAIL);

    let mut first = spawn_daemon(&bed);
    wait_until(Duration::from_secs(30), "the automatic restart", || starts(&bed) == 2);
    fill(&bed.state_dir());
    // The restart ends and fails while nothing can be written; the daemon
    // goes on, then is killed before the disk has room again.
    bed.c.wait_unit_state(SLOW, "failed", Duration::from_secs(20)).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(first.try_wait().unwrap().is_none(), "the daemon outlives a full disk");
    signal(&first, Signal::SIGKILL);
    first.wait().unwrap();
    let unrecorded = restart_records(&bed);
    assert_eq!(unrecorded.values().collect::<Vec<_>>(), [&["started"]], "nothing more could be written");

    std::fs::remove_file(bed.state_dir().join("filler")).unwrap();
    let mut second = spawn_daemon(&bed);
    wait_until(Duration::from_secs(40), "the restart's outcome and the next decision", || {
        escalated(&bed) && restarts_recorded(&bed)
    });
    std::thread::sleep(Duration::from_secs(3));
    signal(&second, Signal::SIGTERM);
    wait_exit(&mut second, Duration::from_secs(30));

    eprintln!("{:#?}", automatic(&bed));
    assert_eq!(starts(&bed), 2, "restarted once");
    assert_eq!(outcomes_of_restarts(&bed), ["failed"], "recorded once, after the disk had room again");
    assert_eq!(storm_rows(&bed), 1);
    let escalation = automatic(&bed).into_iter().find(|a| a["outcome"] == "escalated").unwrap();
    assert!(escalation["detail"].as_str().unwrap().contains("failed its check"), "{escalation:#}");
}

#[test]
fn an_action_whose_start_cannot_be_recorded_is_not_carried_out() {
    let bed = Bed::new("inflight-norecord", "auto-safe");
    bed.without_failed_fix_rule();
    bed.failing_web();
    bed.heal_web();
    // Every write to actions.jsonl fails as on a full disk.
    std::fs::create_dir_all(bed.state_dir()).unwrap();
    std::fs::write(bed.state_dir().join("actions.jsonl"), "").unwrap();
    let _full = Mount::bind("/dev/full", &bed.state_dir().join("actions.jsonl"));
    let invocation = bed.prop(WEB, "InvocationID");

    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let (code, report) = bed.check();
    assert_eq!(code, 1, "{report:#}");
    let action = &report["incidents"][0]["decision"]["actions"][0];
    assert_eq!(action["result"], "refused", "{report:#}");
    let detail = action["detail"].as_str().unwrap();
    assert!(detail.contains("not carried out") && detail.contains("actions.jsonl"), "{detail}");
    assert_eq!(bed.prop(WEB, "InvocationID"), invocation, "nothing was restarted");
    assert_eq!(bed.prop(WEB, "ActiveState"), "failed");
    let db = rusqlite::Connection::open(bed.state_dir().join("state.db")).unwrap();
    let counted: i64 = db
        .query_row("SELECT COUNT(*) FROM auto_actions WHERE state != 'void'", [], |r| r.get(0))
        .unwrap_or_else(|_| db.query_row("SELECT COUNT(*) FROM auto_actions", [], |r| r.get(0)).unwrap());
    assert_eq!(counted, 0, "storm control counts no action that did not run");
}
