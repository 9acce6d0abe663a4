//! What an approver's terminal receives: text that macha did not write (the
//! model's diagnosis, reasons and answers, journal lines, names, people's
//! reasons, a server's errors) never reaches it raw. A clear-screen, an
//! OSC 52 clipboard write, a carriage return, a forged line break, C1 and
//! bidirectional controls are shown as visible escapes by every command,
//! and kept exact in `--json`. Most tests run here with the Ollama double
//! and planted records; `macha-check` and `macha-logs service` run against
//! the container.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{macha_bin, Bed, MODEL, WEB};
use macha::audit;
use macha::catalog::{Action, ActionKind};
use macha::config::{Api, RetentionConfig};
use macha::detect::{Incident, IncidentKind};
use macha::model::status::{DaemonStatus, Stream, Waiting, Watching};
use macha::model::{Check, Endpoint, EndpointCheck, ProviderInfo, QueueStatus, Readiness};
use macha::state_dir::StateDir;
use macha::store::Store;
use macha::unit::UnitName;
use macha_testbed::ollama::{OllamaDouble, Reply};
use serde_json::{json, Value};

/// Clears the screen, writes "hi" to the clipboard (OSC 52), goes back to
/// the start of the line to overwrite it, fakes a second item on a line of
/// its own, then C1 CSI, a right-to-left override, a line separator, DEL,
/// backspace and a tab.
const HOSTILE: &str = "\x1b[2J\x1b]52;c;aGk=\x07 fine\rOVERWRITTEN\n    99     1m  forged:item\u{9b}31m\u{202e}evil\u{2028}x\x7f\x08\tend";

/// The visible form of the start of [`HOSTILE`], which every command must show.
const SHOWN: &str = "\\x1b[2J\\x1b]52;c;aGk=\\x07 fine\\rOVERWRITTEN";

fn is_layout_control(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// No character a terminal acts on, but macha's own line breaks; no forged
/// line; and the hostile text shown, made visible (not dropped).
fn shown_safely(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for c in text.chars() {
        assert!(
            c == '\n' || !(c.is_control() || is_layout_control(c)),
            "{what}: a raw {c:?} reached the terminal:\n{text}"
        );
    }
    assert!(!text.lines().any(|l| l.trim_start().starts_with("99 ")), "{what}: a forged line:\n{text}");
    assert!(text.contains(SHOWN), "{what}: the text is not shown as visible escapes:\n{text}");
}

/// `--json` keeps what was written, byte for byte.
fn contains_exact(what: &str, value: &Value) {
    fn walk(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains(HOSTILE),
            Value::Array(a) => a.iter().any(walk),
            Value::Object(o) => o.values().any(walk),
            _ => false,
        }
    }
    assert!(walk(value), "{what}: the text is not kept exact: {value:#}");
}

fn json_lines(what: &str, out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let values: Vec<Value> = match serde_json::from_str(&text) {
        Ok(v) => vec![v],
        Err(_) => {
            text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: {e}: {l}"))).collect()
        }
    };
    Value::Array(values)
}

/// macha on this machine: the Ollama double, a state directory, systemd
/// unreachable.
struct Host {
    double: OllamaDouble,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Host {
    fn new() -> Host {
        let double = OllamaDouble::start(&[MODEL]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::create_dir(dir.path().join("journal")).unwrap();
        let config = dir.path().join("config.toml");
        let text = format!(
            "state_dir = \"{}\"\ndbus_address = \"unix:path={}\"\njournal_dir = \"{}\"\n\n[ollama]\nurl = \"{}\"\nmodel = \"{MODEL}\"\ntimeout = 5\n",
            dir.path().join("state").display(),
            dir.path().join("no-bus").display(),
            dir.path().join("journal").display(),
            double.url(),
        );
        std::fs::write(&config, text).unwrap();
        Host { double, dir, config }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(macha_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        eprintln!("$ macha {args:?} -> {:?}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
        out
    }

    /// A queued restart whose incident, reason and diagnosis carry `HOSTILE`.
    fn queue_hostile(&self) -> i64 {
        let store = Store::open(&StateDir::open(&self.state()).unwrap()).unwrap();
        let kind = IncidentKind::DiskFull { mount: format!("/srv/{HOSTILE}") };
        let incident =
            Incident { fingerprint: kind.fingerprint(), kind, summary: HOSTILE.into(), evidence_key: "k1".into() };
        let action = Action::on_unit(ActionKind::RestartUnit, UnitName::parse(WEB).unwrap()).unwrap();
        store.enqueue(&incident, &action, HOSTILE, HOSTILE, chrono::Duration::hours(24)).unwrap().0.get()
    }
}

#[test]
fn approve_list_show_and_reject_show_the_models_words_made_visible() {
    let host = Host::new();
    let id = host.queue_hostile().to_string();
    for args in [&["approve", "list"][..], &["approve", "show", &id]] {
        let out = host.run(args, "");
        assert!(out.status.success());
        shown_safely(&format!("{args:?}"), &out.stdout);
    }
    for args in [&["approve", "list", "--json"][..], &["approve", "show", &id, "--json"]] {
        contains_exact(&format!("{args:?}"), &json_lines("json", &host.run(args, "")));
    }
    let out = host.run(&["approve", "reject", &id, "--reason", HOSTILE], "");
    assert!(out.status.success());
    shown_safely("approve reject", &out.stdout);
    shown_safely("logs actions", &host.run(&["logs", "actions"], "").stdout);
    contains_exact("logs actions --json", &json_lines("json", &host.run(&["logs", "actions", "--json"], "")));
}

#[test]
fn discuss_and_ask_show_the_models_answer_made_visible() {
    let host = Host::new();
    let id = host.queue_hostile().to_string();
    host.double.push(Reply::Content(HOSTILE.into()));
    let out = host.run(&["approve", "discuss", &id], "what would it do?\nquit\n");
    assert!(out.status.success());
    shown_safely("approve discuss", &out.stdout);

    // A tool call whose arguments carry the text, then the answer.
    host.double.push(Reply::ToolCalls(vec![("unit_status".into(), json!({"unit": HOSTILE}))]));
    host.double.push(Reply::Content(format!("{HOSTILE}\nsecond line of the answer")));
    let out = host.run(&["ask", "what is wrong?"], "");
    assert!(out.status.success());
    shown_safely("ask", &out.stdout);
    let text = String::from_utf8_lossy(&out.stdout);
    // The answer keeps its lines, each quoted, so none passes for macha's own.
    assert!(text.contains("\n> second line of the answer\n"), "{text}");
    assert!(text.lines().any(|l| l.starts_with(">     99     1m  forged:item")), "{text}");
    let looked_at = text.lines().find(|l| l.trim_start().starts_with("unit_status")).expect("the call is listed");
    assert!(looked_at.contains("unit=\\x1b[2J"), "{looked_at}");
}

/// A decision record, an action record and a log line, each carrying `HOSTILE`.
fn plant_records(state: &Path) {
    let decision = json!({
        "time": "2026-01-01T00:00:00Z", "host": "web1", "incident": format!("unit-failed:{HOSTILE}"),
        "summary": HOSTILE, "model": MODEL, "outcome": "decided", "attempts": 1, "wall_ms": 5,
        "decision": {"severity": "warning", "diagnosis": HOSTILE, "actions": []},
        "error": HOSTILE,
        "gated": [{"proposed": {"kind": "restart_unit", "unit": HOSTILE, "reason": HOSTILE},
                   "verdict": "refuse", "detail": HOSTILE}],
    });
    let dir = StateDir::open(state).unwrap();
    audit::append(&dir, audit::DECISIONS, &decision, RetentionConfig::default().audit()).unwrap();
    let action = json!({"time": "2026-01-01T00:00:00Z", "action": "restart_unit", "target": HOSTILE,
        "origin": "approval", "approval_id": 1, "by": HOSTILE, "outcome": "rejected", "detail": HOSTILE});
    audit::append(&dir, audit::ACTIONS, &action, RetentionConfig::default().audit()).unwrap();
    let log = json!({"timestamp": "2026-01-01T00:00:00Z", "level": "WARN",
        "fields": {"message": HOSTILE, "unit": HOSTILE, "error": HOSTILE}});
    std::fs::write(state.join("orchestrator.log"), format!("{log}\n")).unwrap();
}

#[test]
fn the_logs_show_records_made_visible_and_json_exact() {
    let host = Host::new();
    plant_records(&host.state());
    for which in ["decisions", "actions", "orchestrator"] {
        let out = host.run(&["logs", which], "");
        assert!(out.status.success());
        shown_safely(which, &out.stdout);
        contains_exact(which, &json_lines(which, &host.run(&["logs", which, "--json"], "")));
    }
}

#[test]
fn following_the_logs_shows_new_records_made_visible() {
    let host = Host::new();
    let mut child = Command::new(macha_bin())
        .arg("--config")
        .arg(&host.config)
        .args(["logs", "decisions", "--follow", "-n", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 || tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    plant_records(&host.state());
    let (mut seen, deadline) = (Vec::new(), Instant::now() + Duration::from_secs(10));
    while !String::from_utf8_lossy(&seen).contains(" -> refuse") {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => seen.extend(line),
            Err(e) => panic!("no record followed: {e}: {}", String::from_utf8_lossy(&seen)),
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    shown_safely("logs decisions --follow", &seen);
}

#[test]
fn status_shows_an_endpoints_error_made_visible() {
    let host = Host::new();
    let now = Utc::now();
    let provider =
        ProviderInfo { endpoint: Endpoint::Primary, api: Api::Ollama, url: host.double.url(), model: MODEL.into() };
    let status = DaemonStatus {
        pid: std::process::id(),
        started_at: now,
        updated_at: now,
        stopped_at: Some(now),
        model: Readiness {
            primary: EndpointCheck { provider, check: Check::Failed { error: HOSTILE.into() } },
            fallback: None,
        },
        supports_tools: false,
        queue: QueueStatus { slots: 1, running: Vec::new(), lanes: Vec::new() },
        watching: Some(Watching {
            events: Stream { last_error: Some(HOSTILE.into()), ..Stream::default() },
            waiting: vec![Waiting { incident: format!("unit-failed:{HOSTILE}"), since: now }],
            deciding: Some(Waiting { incident: format!("error-burst:{HOSTILE}"), since: now }),
            memory: Some(macha::model::status::MemoryStatus {
                backend: HOSTILE.into(),
                state: "unavailable".into(),
                why: Some(HOSTILE.into()),
                since: now,
                from_memory: 0,
            }),
        }),
    };
    macha::model::status::write(&StateDir::open(&host.state()).unwrap(), &status).unwrap();
    shown_safely("status", &host.run(&["status"], "").stdout);
    contains_exact("status --json", &json_lines("status --json", &host.run(&["status", "--json"], "")));
}

#[test]
fn eval_shows_fixture_names_and_the_model_made_visible() {
    let hostile_name = "web\x1b[2J\x1b]52;c;aGk=\x07\rforged\u{202e}";
    let model = format!("llama\x1b[2J{HOSTILE}");
    let double = OllamaDouble::start(&[model.as_str()]).unwrap();
    double.set_default(Reply::Content(HOSTILE.into()));
    let dir = tempfile::tempdir().unwrap();
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/fixtures/restart-loop.json"))
            .unwrap()
            .replacen("\"id\": \"restart-loop\"", &format!("\"id\": {}", json!(hostile_name)), 1);
    std::fs::write(dir.path().join(format!("{hostile_name}.json")), shipped).unwrap();
    let out = Command::new(macha_bin())
        .args(["eval", "--url", &double.url(), "--model", &model, "--timeout", "10", "--fixtures"])
        .arg(dir.path())
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    shown_safely("eval", &out.stdout);
    assert!(String::from_utf8_lossy(&out.stdout).contains("web\\x1b[2J"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn check_and_the_service_log_show_the_models_words_and_journal_lines_made_visible() {
    let bed = Bed::new("terminal", "suggest");
    bed.failing_web();
    bed.double.push(Reply::Json(json!({
        "diagnosis": HOSTILE,
        "severity": "warning",
        "actions": [{"kind": "restart_unit", "unit": WEB, "reason": HOSTILE}]
    })));
    bed.c.sync_journal().unwrap();
    let out = bed.run("macha-check", &[]);
    assert_eq!(out.status.code(), Some(1));
    shown_safely("macha-check", &out.stdout);
    assert!(String::from_utf8_lossy(&out.stdout).contains("diagnosis: \\x1b[2J"), "the diagnosis is there");
    shown_safely("macha-approve list", &bed.run("macha-approve", &["list"]).stdout);
    shown_safely("macha-logs decisions", &bed.run("macha-logs", &["decisions"]).stdout);

    // A process of the service's unit writes the text to the journal.
    bed.c
        .exec_ok(&[
            "systemd-run",
            "--unit=macha-autonomous.service",
            "--wait",
            "--quiet",
            "/usr/bin/printf",
            "%s\n",
            HOSTILE,
        ])
        .unwrap();
    bed.c.sync_journal().unwrap();
    let out = bed.run("macha-logs", &["service", "-n", "50"]);
    assert!(out.status.success());
    shown_safely("macha-logs service", &out.stdout);
    let json = json_lines("service --json", &bed.run("macha-logs", &["service", "-n", "50", "--json"]));
    let first_line = HOSTILE.split('\n').next().unwrap();
    assert!(
        json.as_array().unwrap().iter().any(|e| e["message"] == first_line),
        "the journal line is kept exact: {json:#}"
    );
}
