//! Gotify notifications against the receiver double and the container: one
//! message per state change, no storms, a digest that matches the audit
//! trail, delivery that survives Gotify being down, and a token that never
//! leaks.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{decision, files_containing, stop_daemon, wait_until, Bed, WEB};
use macha_testbed::gotify::{GotifyReceiver, Mode, ReceivedMessage, TokenSource};
use macha_testbed::ollama::Reply;
use serde_json::Value;

const TOKEN: &str = "AqZ8-macha-test-token-4711";

/// Starts a receiver and points the bed's config at it.
fn gotify(bed: &Bed, extra: &str) -> GotifyReceiver {
    let g = GotifyReceiver::start(&[TOKEN]).unwrap();
    configure(bed, &g.url(), extra);
    g
}

fn configure(bed: &Bed, url: &str, extra: &str) {
    let token_file = bed.state.path().join("gotify-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    bed.append_config(&format!(
        "[gotify]\nurl = \"{url}\"\ntoken_file = \"{}\"\nresolve_after = 0\nretry_max = 1\n{extra}\n",
        token_file.display()
    ));
}

fn titles(g: &GotifyReceiver) -> Vec<String> {
    g.messages().into_iter().map(|m| m.title).collect()
}

fn find<'a>(msgs: &'a [ReceivedMessage], needle: &str) -> &'a ReceivedMessage {
    msgs.iter().find(|m| m.title.contains(needle)).unwrap_or_else(|| panic!("no message titled *{needle}*: {msgs:#?}"))
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned()
}

#[test]
fn each_state_change_sends_exactly_one_message() {
    let bed = Bed::new("notify-states", "suggest");
    let g = gotify(&bed, "");
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));

    let (code, _) = bed.check();
    assert_eq!(code, 1);
    let msgs = g.messages();
    assert_eq!(msgs.len(), 2, "{:#?}", titles(&g));
    let opened = find(&msgs, "demo-web.service failed");
    assert!(opened.title.starts_with(&format!("{}: ", host())), "the title names the host: {}", opened.title);
    assert_eq!(opened.priority, 5);
    assert!(opened.message.contains("unit-failed:demo-web.service"));
    assert_eq!(opened.extras["client::display"]["contentType"], "text/markdown");
    assert_eq!(opened.token_source, TokenSource::Header);
    let queued = find(&msgs, "approval needed: restart_unit demo-web.service");
    assert_eq!(queued.priority, 5);
    assert!(queued.message.contains("`macha-approve approve 1`"), "{}", queued.message);

    // The same state again: nothing new.
    bed.check();
    bed.check();
    assert_eq!(g.messages().len(), 2, "{:#?}", titles(&g));

    bed.heal_web();
    assert!(bed.run("macha-approve", &["approve", "1"]).status.success());
    let msgs = g.messages();
    let done = find(&msgs, "done: restart_unit demo-web.service");
    assert_eq!(done.priority, 2);
    assert!(done.title.contains("approval 1 by root"));

    bed.check();
    let msgs = g.messages();
    let resolved = find(&msgs, "resolved: unit-failed:demo-web.service");
    assert_eq!(resolved.priority, 2);
    assert_eq!(msgs.len(), 4, "{:#?}", titles(&g));
    bed.check();
    assert_eq!(g.messages().len(), 4);
}

#[test]
fn failures_and_escalations_need_a_human_now() {
    let bed = Bed::new("notify-urgent", "auto-safe");
    let g = gotify(&bed, "");
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    bed.check();
    let msgs = g.messages();
    let failed = find(&msgs, "FAILED: restart_unit demo-web.service");
    assert_eq!(failed.priority, 8);
    assert!(failed.message.contains("failed again after the restart"), "{}", failed.message);

    bed.c
        .install_unit("disk-check.service", "[Service]\nExecStart=/bin/sh -c 'echo \"I/O error\" >&2; exit 1'\n")
        .unwrap();
    bed.c.start_unit("disk-check.service").unwrap();
    bed.c.wait_unit_state("disk-check.service", "failed", Duration::from_secs(10)).unwrap();
    // demo-web.service failed anew after the restart, so it is asked about again too.
    bed.double.set_default(Reply::Json(serde_json::json!({
        "diagnosis": "the disk reports I/O errors", "severity": "critical",
        "actions": [{"kind": "notify_only", "unit": null, "reason": "hardware needs a person"}]
    })));
    bed.check();
    let msgs = g.messages();
    let human = find(&msgs, "needs a human: disk-check.service failed");
    assert_eq!(human.priority, 8);
    assert!(human.message.contains("hardware needs a person") && human.message.contains("I/O errors"));
}

#[test]
fn a_flapping_unit_is_one_message_then_one_resolution_with_the_count() {
    let bed = Bed::new("notify-flap", "observe");
    let g = gotify(&bed, "");
    let text = std::fs::read_to_string(&bed.config).unwrap().replace("resolve_after = 0", "resolve_after = 3600");
    std::fs::write(&bed.config, text).unwrap();

    bed.failing_web();
    bed.check();
    for _ in 0..3 {
        bed.heal_web();
        bed.c.exec_ok(&["systemctl", "restart", WEB]).unwrap();
        bed.c.wait_unit_state(WEB, "active", Duration::from_secs(10)).unwrap();
        bed.check();
        bed.c.exec_ok(&["rm", "/run/demo-web.ok"]).unwrap();
        bed.c.exec_ok(&["systemctl", "restart", "--no-block", WEB]).unwrap();
        bed.c.wait_unit_state(WEB, "failed", Duration::from_secs(10)).unwrap();
        bed.check();
    }
    assert_eq!(titles(&g).len(), 1, "one message while flapping: {:#?}", titles(&g));

    let text = std::fs::read_to_string(&bed.config).unwrap().replace("resolve_after = 3600", "resolve_after = 0");
    std::fs::write(&bed.config, text).unwrap();
    bed.heal_web();
    bed.c.exec_ok(&["systemctl", "restart", WEB]).unwrap();
    bed.check();
    let msgs = g.messages();
    assert_eq!(msgs.len(), 2, "{:#?}", titles(&g));
    let resolved = find(&msgs, "resolved after 3 flaps");
    assert!(resolved.message.contains("failed again 3 times"), "{}", resolved.message);
}

#[test]
fn a_model_outage_is_told_once_and_so_is_the_recovery() {
    let bed = Bed::new("notify-model", "suggest");
    let g = gotify(&bed, "model_outage_after = 0");
    bed.failing_web();
    bed.double.push(Reply::Status(500, "model runner crashed".into()));
    bed.check();
    bed.double.push(Reply::Status(500, "model runner crashed".into()));
    bed.check();
    let msgs = g.messages();
    let down: Vec<_> = msgs.iter().filter(|m| m.title.contains("the model is not answering")).collect();
    assert_eq!(down.len(), 1, "{:#?}", titles(&g));
    assert_eq!(down[0].priority, 8);
    assert!(down[0].message.contains("model runner crashed"));

    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    bed.check();
    let msgs = g.messages();
    let back = find(&msgs, "macha recovered");
    assert_eq!(back.priority, 2);
    assert_eq!(msgs.iter().filter(|m| m.title.contains("recovered")).count(), 1);
}

fn count(records: &[Value], key: &str, value: &str) -> usize {
    records.iter().filter(|r| r[key] == value).count()
}

#[test]
fn beyond_the_hourly_limit_messages_roll_into_the_digest_whose_counts_match_the_audit() {
    let bed = Bed::new("notify-digest", "suggest");
    let g = gotify(&bed, "max_per_hour = 2");
    bed.failing_web();
    for unit in ["demo-a.service", "demo-b.service"] {
        bed.c.install_unit(unit, "[Service]\nExecStart=/bin/false\n").unwrap();
        bed.c.start_unit(unit).unwrap();
        bed.c.wait_unit_state(unit, "failed", Duration::from_secs(10)).unwrap();
    }
    // The first incident asked about gets garbage twice (a failed decision);
    // the double's default answer queues a restart of the other two units.
    bed.double.push(Reply::InvalidJson);
    bed.double.push(Reply::InvalidJson);
    bed.check();
    assert_eq!(g.messages().len(), 2, "the limit holds: {:#?}", titles(&g));

    let out = bed.run("macha", &["notify", "digest"]);
    assert!(out.status.success());
    assert!(g.wait_for_messages(3, Duration::from_secs(5)));
    let msgs = g.messages();
    let digest = find(&msgs, "daily digest");
    assert_eq!(digest.priority, 2);

    let incidents = bed.audit("incidents.jsonl");
    let actions = bed.audit("actions.jsonl");
    let decisions = bed.audit("decisions.jsonl");
    let expected = [
        ("incidents opened", count(&incidents, "event", "opened")),
        ("incidents resolved", count(&incidents, "event", "resolved")),
        ("actions carried out", count(&actions, "outcome", "succeeded")),
        ("actions queued for approval", count(&actions, "outcome", "queued")),
        ("actions refused", count(&actions, "outcome", "refused")),
        ("still waiting for approval", bed.pending().len()),
        ("model failures", count(&decisions, "outcome", "failed")),
    ];
    assert_eq!(expected[0].1, 3);
    assert_eq!(expected[3].1, 2);
    assert_eq!(expected[6].1, 1);
    for (label, n) in expected {
        assert!(digest.message.contains(&format!("| {label} | {n} |")), "{label} = {n} in\n{}", digest.message);
    }
    // The held-back messages are listed in the digest instead of being lost.
    let sent: Vec<&str> = msgs.iter().map(|m| m.title.as_str()).collect();
    assert!(digest.message.contains("Held back by the hourly limit"), "{}", digest.message);
    assert!(
        digest.message.contains("demo-b.service failed") || sent.iter().any(|t| t.contains("demo-b.service failed"))
    );
}

fn cycles(bed: &Bed) -> usize {
    std::fs::read_to_string(bed.state_dir().join("orchestrator.log")).unwrap_or_default().matches("cycle done").count()
}

#[test]
fn while_gotify_is_down_monitoring_goes_on_and_held_messages_arrive_later() {
    let bed = Bed::new("notify-down", "suggest");
    let g = gotify(&bed, "");
    let addr = g.addr();
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let mut stderr = String::new();

    g.set_mode(Mode::Status(401));
    let daemon = bed.daemon(Stdio::piped());
    wait_until(Duration::from_secs(30), "rejected deliveries", || {
        g.attempts().iter().filter(|a| a.status == 401).count() >= 2
    });
    g.set_mode(Mode::Status(500));
    wait_until(Duration::from_secs(30), "failing deliveries", || {
        g.attempts().iter().filter(|a| a.status == 500).count() >= 2
    });
    let attempts = g.attempts();
    let addr_back = g.stop();
    assert_eq!(addr, addr_back);
    let before = cycles(&bed);
    wait_until(Duration::from_secs(30), "cycles while Gotify is not listening", || cycles(&bed) >= before + 3);
    stderr.push_str(&stop_daemon(daemon));
    assert!(stderr.contains("notifications held"), "{stderr}");

    // Nothing was delivered; every attempt carried the token in a header, never in the URL.
    for a in &attempts {
        assert_eq!(a.token_source, Some(TokenSource::Header));
        assert!(!a.target.contains(TOKEN));
    }

    // Gotify is back; a restarted daemon delivers what was held, once each.
    let g = GotifyReceiver::start_on(addr, &[TOKEN]).unwrap();
    let daemon = bed.daemon(Stdio::piped());
    assert!(g.wait_for_messages(2, Duration::from_secs(30)), "{:#?}", titles(&g));
    std::thread::sleep(Duration::from_secs(2));
    stderr.push_str(&stop_daemon(daemon));
    let msgs = g.messages();
    assert_eq!(msgs.len(), 2, "{:#?}", titles(&g));
    find(&msgs, "demo-web.service failed");
    find(&msgs, "approval needed");

    // The token is in no file macha wrote, and in none of its output.
    assert_eq!(files_containing(bed.state.path(), TOKEN), Vec::<String>::new());
    assert!(!stderr.contains(TOKEN));
}

#[test]
fn notify_test_prints_the_answer_and_token_problems_are_clear() {
    let bed = Bed::new("notify-test", "suggest");
    let g = gotify(&bed, "");
    let out = bed.run("macha", &["notify", "test"]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("the server stored message 1"), "{said}");
    assert!(g.messages()[0].title.contains("test message from macha"));

    std::fs::write(bed.state.path().join("gotify-token"), "wrong-token-xyz\n").unwrap();
    let out = bed.run("macha", &["notify", "test"]);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("HTTP 401") && said.contains("valid access token"), "{said}");
    assert!(!said.contains("wrong-token-xyz"));

    std::fs::remove_file(bed.state.path().join("gotify-token")).unwrap();
    for args in [vec!["check"], vec!["daemon"], vec!["notify", "test"]] {
        let out = bed.run("macha", &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot read the Gotify token file") && err.contains("gotify-token"), "{err}");
    }
}

#[test]
fn without_a_url_nothing_is_sent_and_nothing_is_needed() {
    let bed = Bed::new("notify-off", "suggest");
    bed.failing_web();
    let (code, _) = bed.check();
    assert_eq!(code, 1);
    let out = bed.run("macha", &["notify", "test"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("notifications are off"));
}

#[test]
fn a_cycle_sends_the_digest_at_the_configured_hour_once_a_day() {
    let bed = Bed::new("notify-daily", "suggest");
    let g = gotify(&bed, "digest_hour = 0");
    bed.check();
    assert!(g.messages().is_empty(), "the first cycle only starts the digest's window");
    // Pretend the last digest went out yesterday.
    let db = rusqlite::Connection::open(bed.state_dir().join("state.db")).unwrap();
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    db.execute("UPDATE notify_kv SET value = ?1 WHERE key = 'last_digest'", [yesterday]).unwrap();
    bed.check();
    bed.check();
    let msgs = g.messages();
    assert_eq!(msgs.len(), 1, "{:#?}", titles(&g));
    assert!(msgs[0].title.ends_with(": daily digest"));
}

#[test]
fn the_outbox_is_bounded_and_a_slow_gotify_does_not_hold_up_monitoring() {
    let bed = Bed::new("notify-bound", "observe");
    let g = gotify(&bed, "max_queued = 1");
    g.set_mode(Mode::Delay(Duration::from_secs(60)));
    bed.failing_web();
    bed.c.install_unit("demo-a.service", "[Service]\nExecStart=/bin/false\n").unwrap();
    bed.c.start_unit("demo-a.service").unwrap();
    bed.c.wait_unit_state("demo-a.service", "failed", Duration::from_secs(10)).unwrap();

    let daemon = bed.daemon(Stdio::piped());
    wait_until(Duration::from_secs(30), "a delivery attempt", || !g.attempts().is_empty());
    let before = cycles(&bed);
    wait_until(Duration::from_secs(30), "cycles while Gotify hangs", || cycles(&bed) >= before + 3);
    stop_daemon(daemon);

    let db = rusqlite::Connection::open(bed.state_dir().join("state.db")).unwrap();
    let queued: u32 = db.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0)).unwrap();
    assert!(queued <= 1, "{queued} messages kept");
    g.set_mode(Mode::Normal);
    let out = bed.run("macha", &["notify", "digest"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("dropped while Gotify was unreachable"));
}

#[test]
fn priorities_are_configurable() {
    let bed = Bed::new("notify-prio", "suggest");
    let g = gotify(&bed, "[gotify.priorities]\ninfo = 1\nattention = 6\nurgent = 10");
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    bed.check();
    let msgs = g.messages();
    assert_eq!(find(&msgs, "demo-web.service failed").priority, 6);
    bed.run("macha", &["notify", "test"]);
    assert_eq!(find(&g.messages(), "test message").priority, 1);
}
