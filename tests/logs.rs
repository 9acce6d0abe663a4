//! `macha-logs`: the audit trail and the daemon's logs, for people and for
//! scripts, the last N, and live.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::{decision, macha_bin, Bed, WEB};
use macha_testbed::container::BootOptions;
use macha_testbed::ollama::Reply;
use serde_json::Value;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Spawns `macha-logs ... --follow` and hands its lines over a channel.
fn follow(bed: &Bed, args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = bed.command("macha-logs", args).stdout(Stdio::piped()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => continue,
            Err(e) => panic!("no line containing {needle:?}: {e}"),
        }
    }
}

#[test]
fn decisions_actions_and_orchestrator_for_people_and_scripts() {
    let bed = Bed::new("logs", "suggest");
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB, "ssh.service"])));
    bed.check();

    let human = stdout(&bed.run("macha-logs", &["decisions"]));
    assert!(human.contains("unit-failed:demo-web.service") && human.contains("decided"), "{human}");
    assert!(human.contains("restart_unit demo-web.service -> queue"), "{human}");
    assert!(
        human.contains("restart_unit ssh.service -> refuse: not acted because ssh.service is protected"),
        "{human}"
    );

    let json = stdout(&bed.run("macha-logs", &["actions", "--json"]));
    let records: Vec<Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["outcome"], "queued");
    assert_eq!(records[1]["outcome"], "refused");

    let last = stdout(&bed.run("macha-logs", &["actions", "-n", "1"]));
    assert_eq!(last.lines().count(), 1);
    assert!(last.contains("ssh.service") && last.contains("refused"), "{last}");

    let orch = stdout(&bed.run("macha-logs", &["orchestrator"]));
    assert!(orch.contains("asking the model") && orch.contains("incident=unit-failed:demo-web.service"), "{orch}");
    let orch_json = stdout(&bed.run("macha-logs", &["orchestrator", "--json", "-n", "1"]));
    let v: Value = serde_json::from_str(orch_json.trim()).unwrap();
    assert_eq!(v["fields"]["message"], "cycle done");
}

#[test]
fn follow_prints_records_as_they_are_written() {
    let bed = Bed::new("follow", "suggest");
    bed.check();
    let (mut child, rx) = follow(&bed, &["decisions", "--follow"]);
    std::thread::sleep(Duration::from_millis(500));
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    bed.check();
    let line = wait_line(&rx, "unit-failed:demo-web.service");
    assert!(line.contains("decided"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn follow_skips_a_line_without_end_and_holds_no_more_than_its_limit() {
    let bed = Bed::new("follow-long", "suggest");
    bed.check();
    let (mut child, rx) = follow(&bed, &["decisions", "--follow"]);
    std::thread::sleep(Duration::from_millis(500));
    // 64 MiB without a line end, as a writer that never ends its line would leave.
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(bed.state_dir().join("decisions.jsonl")).unwrap();
    for _ in 0..64 {
        f.write_all(&[b'x'; 1 << 20]).unwrap();
    }
    drop(f);
    std::thread::sleep(Duration::from_secs(2));
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    bed.check();
    let line = wait_line(&rx, "unit-failed:demo-web.service");
    assert!(line.contains("decided"), "{line}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(peak_kb < 48 * 1024, "macha-logs --follow held {peak_kb} kB for a 64 MiB line");
}

#[test]
fn a_torn_audit_line_is_reported_and_skipped() {
    let bed = Bed::new("torn", "suggest");
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    bed.check();
    let path = bed.state_dir().join("actions.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"time\":\"2026-");
    std::fs::write(&path, text).unwrap();
    let out = bed.run("macha-logs", &["actions", "--json"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).lines().count(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2 is not a complete record"));
}

#[test]
fn service_shows_the_daemons_own_journal_lines() {
    // Run the real daemon as macha-autonomous.service inside the container.
    let bin_dir = macha_bin().parent().unwrap().to_path_buf();
    let bed = Bed::with_boot(BootOptions::new("service").bind_ro(bin_dir, "/opt/macha"), "suggest");
    bed.c
        .write_file(
            "/etc/macha-autonomous/config.toml",
            "state_dir = \"/var/lib/macha-autonomous\"\ncheck_interval = 3600\n",
        )
        .unwrap();
    bed.c
        .install_unit(
            "macha-autonomous.service",
            "[Service]\nExecStart=/opt/macha/macha daemon\nEnvironment=MACHA_LOG=info\n",
        )
        .unwrap();
    // Before the unit ever ran, its journal is empty, and that is said.
    let out = bed.run("macha-logs", &["service"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout(&out).is_empty(), "{said}");
    assert!(said.contains("the journal has no entries of macha-autonomous.service"), "{said}");

    bed.c.exec_ok(&["systemctl", "start", "macha-autonomous.service"]).unwrap();
    bed.c.wait_unit_state("macha-autonomous.service", "active", Duration::from_secs(10)).unwrap();
    bed.c
        .wait_for(Duration::from_secs(20), || {
            bed.c.sync_journal().unwrap();
            bed.c
                .exec_ok(&["journalctl", "-u", "macha-autonomous.service", "-o", "cat"])
                .unwrap()
                .contains("cycle done")
        })
        .unwrap();

    let out = bed.run("macha-logs", &["service", "-n", "50"]);
    let text = stdout(&out);
    assert!(out.status.success());
    assert!(text.contains("macha daemon started"), "{text}");
    // As syslog and journalctl write it: the program, then its PID.
    let pid = bed.prop("macha-autonomous.service", "MainPID");
    let started = text.lines().find(|l| l.contains("macha daemon started")).unwrap();
    assert!(started.contains(&format!(" macha[{pid}] info: ")), "{started}");
    assert!(text.contains("systemd[1] info: Started macha-autonomous.service"), "{text}");
    let json = stdout(&bed.run("macha-logs", &["service", "--json"]));
    let entries: Vec<Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Its own lines, and systemd's lines about it, as `journalctl -u` shows them.
    assert!(entries
        .iter()
        .any(|e| e["unit"] == "macha-autonomous.service"
            && e["message"].as_str().unwrap().contains("macha daemon started")));
    assert!(entries.iter().any(|e| e["about_unit"] == "macha-autonomous.service"));

    let (mut child, rx) = follow(&bed, &["service", "--follow", "-n", "0"]);
    std::thread::sleep(Duration::from_millis(500));
    bed.c.exec_ok(&["systemctl", "stop", "macha-autonomous.service"]).unwrap();
    bed.c.sync_journal().unwrap();
    wait_line(&rx, "stopped by signal");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn verify_checks_the_chains_and_names_the_first_broken_record() {
    let bed = Bed::new("verify", "suggest");
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB, "ssh.service"])));
    bed.check();
    bed.heal_web();
    assert!(bed.run("macha-approve", &["approve", "1"]).status.success());
    let out = bed.run("macha-logs", &["verify"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("actions.jsonl: 4 records, chain intact"), "{text}");
    assert!(text.contains("decisions.jsonl: 1 records, chain intact"), "{text}");

    // Someone edits the audit trail to hide that ssh.service was asked for.
    let path = bed.state_dir().join("actions.jsonl");
    let text = std::fs::read_to_string(&path).unwrap().replace("ssh.service", "web2.service");
    std::fs::write(&path, text).unwrap();
    let out = bed.run("macha-logs", &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let said = stdout(&out);
    assert!(said.contains("actions.jsonl: BROKEN at line 3") && said.contains("line 2"), "{said}");
    let json = stdout(&bed.run("macha-logs", &["verify", "--json"]));
    let broken: Vec<Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(broken[1]["broken"]["line"], 3);
}
