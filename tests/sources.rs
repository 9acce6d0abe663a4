//! Sources and settings seen end to end: a source that fails does not hide
//! the others, resource thresholds come from the config, prompts can be
//! replaced, bad configuration stops start-up with the key named.

mod common;

use std::time::Duration;

use common::{decision, Bed, WEB};
use macha_testbed::ollama::Reply;
use serde_json::Value;

fn fingerprints(report: &Value) -> Vec<String> {
    report["incidents"].as_array().unwrap().iter().map(|i| i["fingerprint"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn a_failed_source_is_reported_and_the_others_still_count() {
    let bed = Bed::new("sources", "suggest");
    bed.c
        .install_unit("noisy.service", "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'for i in $(seq 1 25); do echo \"<3>write error $i\"; done'\n")
        .unwrap();
    bed.c.exec_ok(&["systemctl", "start", "noisy.service"]).unwrap();
    bed.write_config("suggest", "dbus_address = \"unix:path=/nonexistent/bus\"");
    bed.double.push(Reply::Json(decision("notify_only", &[])));

    let (code, report) = bed.check();
    assert_eq!(code, 2, "a source failed: {report:#}");
    assert_eq!(report["failed_sources"][0]["source"], "systemd");
    assert!(report["failed_sources"][0]["error"].as_str().unwrap().contains("/nonexistent/bus"));
    assert_eq!(fingerprints(&report), ["error-burst:noisy.service"], "the journal still counts");
}

#[test]
fn an_unread_source_never_resolves_its_incidents() {
    let bed = Bed::new("unresolved", "suggest");
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let (_, report) = bed.check();
    assert_eq!(fingerprints(&report), ["unit-failed:demo-web.service"]);

    bed.write_config("suggest", "dbus_address = \"unix:path=/nonexistent/bus\"");
    let (_, report) = bed.check();
    assert!(report["resolved"].as_array().unwrap().is_empty(), "systemd was not read: {report:#}");

    bed.write_config("suggest", "");
    let (_, report) = bed.check();
    assert_eq!(report["incidents"][0]["novelty"], "known", "still open, already decided: {report:#}");
    assert_eq!(bed.double.chat_requests(), 1);
}

#[test]
fn resource_thresholds_come_from_the_config() {
    let bed = Bed::new("thresholds", "suggest");
    let (code, _) = bed.check();
    assert_eq!(code, 0);
    let text = std::fs::read_to_string(&bed.config)
        .unwrap()
        .replace("disk_full_percent = 100", "disk_full_percent = 1")
        .replace("memory_pressure_percent = 100", "memory_pressure_percent = 1");
    std::fs::write(&bed.config, text).unwrap();
    let (code, report) = bed.check();
    assert_eq!(code, 1);
    let fps = fingerprints(&report);
    assert!(fps.iter().any(|f| f.starts_with("disk-full:/")), "{fps:?}");
    assert!(fps.contains(&"memory-pressure".to_string()), "{fps:?}");
    let prompt = bed.double.requests().iter().map(|r| r.body["messages"].to_string()).collect::<String>();
    assert!(prompt.contains("% used"), "the evidence names the usage: {prompt}");
}

#[test]
fn prompt_templates_can_be_replaced_from_a_directory() {
    let bed = Bed::new("prompts", "suggest");
    let dir = bed.state.path().join("prompts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("system.md"), "SITE-RULES for {{hostname}}: never restart anything on Fridays.").unwrap();
    let text = std::fs::read_to_string(&bed.config)
        .unwrap()
        .replace("[ollama]\n", &format!("[ollama]\nprompts_dir = \"{}\"\n", dir.display()));
    std::fs::write(&bed.config, text).unwrap();
    bed.failing_web();
    bed.double.push(Reply::Json(decision("notify_only", &[])));
    bed.check();
    let chat = bed.double.requests().into_iter().find(|r| r.path == "/api/chat").unwrap();
    let system = chat.body["messages"][0]["content"].as_str().unwrap().to_owned();
    assert!(system.starts_with("SITE-RULES for ") && !system.contains("{{hostname}}"), "{system}");
    let user = chat.body["messages"][1]["content"].as_str().unwrap();
    assert!(user.contains("unit-failed:demo-web.service"), "the built-in incident template is kept: {user}");
}

#[test]
fn reset_failed_clears_the_failed_state() {
    let bed = Bed::new("reset", "auto-safe");
    bed.failing_web();
    bed.double.push(Reply::Json(decision("reset_failed", &[WEB])));
    let (_, report) = bed.check();
    assert_eq!(report["incidents"][0]["decision"]["actions"][0]["result"], "executed", "{report:#}");
    bed.c.wait_unit_state(WEB, "inactive", Duration::from_secs(5)).unwrap();
    let (code, report) = bed.check();
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["resolved"][0], "unit-failed:demo-web.service");
}

#[test]
fn bad_configuration_stops_start_up_naming_the_key() {
    let bed = Bed::new("badconfig", "suggest");
    for (extra, key, accepted) in [
        ("autonomy_level = \"yolo\"", "autonomy_level", "auto-safe"),
        ("check_intervall = 10", "check_intervall", "check_interval"),
        ("protected_units = [\"ssh; reboot\"]", "protected_units[0]", "does not allow"),
    ] {
        bed.write_config("suggest", extra);
        let config = &bed.config;
        for args in [vec!["check"], vec!["daemon"], vec!["approve", "list"]] {
            let out = std::process::Command::new(common::macha_bin())
                .arg("--config")
                .arg(config)
                .args(&args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {extra}: {err}");
            assert!(err.contains(key) && err.contains(accepted), "{extra}: {err}");
        }
    }
    let out = std::process::Command::new(common::macha_bin())
        .args(["--config", "/nonexistent/macha.toml", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file /nonexistent/macha.toml"));
}

#[test]
fn approving_while_systemd_is_unreachable_keeps_the_item_pending() {
    let bed = Bed::new("unreachable", "suggest");
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let (_, report) = bed.check();
    let id = report["incidents"][0]["decision"]["actions"][0]["approval_id"].as_i64().unwrap().to_string();

    bed.write_config("suggest", "dbus_address = \"unix:path=/nonexistent/bus\"");
    let out = bed.run("macha-approve", &["approve", &id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("approval {id} is still pending")));
    let pending = bed.pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["decided_by"], Value::Null);

    bed.write_config("suggest", "");
    bed.heal_web();
    assert!(bed.run("macha-approve", &["approve", &id]).status.success());
    assert_eq!(bed.prop(WEB, "ActiveState"), "active");
}

#[test]
fn secrets_in_the_journal_never_reach_the_model_or_a_notification() {
    let bed = Bed::new("secrets", "suggest");
    let receiver = macha_testbed::gotify::GotifyReceiver::start(&["AppTok.macha.test"]).unwrap();
    let token_file = bed.state.path().join("gotify-token");
    std::fs::write(&token_file, "AppTok.macha.test\n").unwrap();
    bed.append_config(&format!("[gotify]\nurl = \"{}\"\ntoken_file = \"{}\"\n", receiver.url(), token_file.display()));
    let secrets = [
        "hunter2-Correct-Horse-42",
        "AKIAZ4X7Q2M9T6R3W8YP",
        "xoxb-2741590238-8836125907-Zq8vN3kLm2Pw7RtY5sXa",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXZhbHVlLWZha2U",
    ];
    let script = format!(
        "echo \"db: connecting with password={}\" >&2; echo \"aws key {} rejected\" >&2; echo \"slack token {} revoked\" >&2; echo \"Authorization: Bearer {}\" >&2; exit 4",
        secrets[0], secrets[1], secrets[2], secrets[3]
    );
    bed.c.install_unit("leaky.service", &format!("[Service]\nExecStart=/bin/sh -c '{script}'\n")).unwrap();
    bed.c.start_unit("leaky.service").unwrap();
    bed.c.wait_unit_state("leaky.service", "failed", Duration::from_secs(10)).unwrap();
    // A manipulated or careless model repeats one in its diagnosis.
    bed.double.push(Reply::Json(serde_json::json!({
        "diagnosis": format!("the database rejected password={}", secrets[0]),
        "severity": "warning",
        "actions": [{"kind": "notify_only", "unit": null, "reason": format!("rotate key {}", secrets[1])}]
    })));
    bed.check();

    let prompt = bed.double.requests().iter().map(|r| r.body.to_string()).collect::<String>();
    assert!(prompt.contains("db: connecting with password=[redacted"), "the line is there, masked: {prompt}");
    let messages: String = receiver.messages().iter().map(|m| format!("{} {}", m.title, m.message)).collect();
    assert!(!messages.is_empty());
    for s in secrets {
        assert!(!prompt.contains(s), "{s} reached the model");
        assert!(!messages.contains(s), "{s} reached a notification: {messages}");
    }
}

#[test]
fn a_config_that_is_not_a_regular_file_or_too_large_is_refused_at_once() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("config.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let big = dir.path().join("big.toml");
    std::fs::write(&big, format!("# {}\n", "x".repeat(5 << 20))).unwrap();
    for (path, why) in [
        (std::path::Path::new("/dev/zero"), "it is a character device, not a regular file"),
        (fifo.as_path(), "it is a FIFO, not a regular file"),
        (big.as_path(), "it is larger than the 4 MiB limit"),
    ] {
        let mut cmd = std::process::Command::new(common::macha_bin());
        cmd.arg("--config").arg(path).arg("check").stderr(std::process::Stdio::piped());
        // Reading /dev/zero whole would take all the memory there is: give
        // the program a gigabyte to fail in instead.
        let limit = || nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, 1 << 30, 1 << 30);
        unsafe { cmd.pre_exec(move || limit().map_err(std::io::Error::from)) };
        let mut child = cmd.spawn().unwrap();
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                child.kill().unwrap();
                panic!("macha --config {} check still runs after 10 s", path.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {:?} {err}", path.display(), out.status);
        assert!(err.contains(&format!("cannot read config file {}: {why}", path.display())), "{err}");
    }
}
