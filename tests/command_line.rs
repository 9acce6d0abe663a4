//! Odd command lines: a number argument out of its range is refused by
//! name with its range, never a panic or an allocation the size of the
//! number; a reader that closes the pipe early (`| head`) ends the command
//! the way it ends other Unix tools, by SIGPIPE, quietly, after the command
//! finished its own work. No container: systemd and the model are
//! unreachable here, which these commands survive.

mod common;

use std::io::BufRead;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{macha_bin, WEB};
use macha::audit;
use macha::catalog::{Action, ActionKind};
use macha::config::RetentionConfig;
use macha::detect::{Incident, IncidentKind};
use macha::state_dir::StateDir;
use macha::store::Store;
use macha::unit::UnitName;

/// A state directory with records in it, and a configuration pointing at
/// nothing that answers.
struct Here {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Here {
    fn new() -> Here {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::create_dir(dir.path().join("journal")).unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\njournal_dir = \"{}\"\ndbus_address = \"unix:path={}\"\n[ollama]\nurl = \"http://127.0.0.1:9\"\ntimeout = 2\n",
                state.display(),
                dir.path().join("journal").display(),
                dir.path().join("no-bus").display()
            ),
        )
        .unwrap();
        Here { dir, config }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn open_state(&self) -> StateDir {
        StateDir::open(&self.state()).unwrap()
    }

    /// A queued restart, a decision and an action in the audit trail.
    fn with_records(self) -> Here {
        let store = Store::open(&self.open_state()).unwrap();
        let kind = IncidentKind::UnitFailed { unit: WEB.into() };
        let incident = Incident {
            fingerprint: kind.fingerprint(),
            kind,
            summary: format!("{WEB} failed"),
            evidence_key: "k".into(),
        };
        let action = Action::on_unit(ActionKind::RestartUnit, UnitName::parse(WEB).unwrap()).unwrap();
        store
            .enqueue(&incident, &action, "the unit failed", "demo-web cannot start", chrono::Duration::hours(1))
            .unwrap();
        let record = |n: usize| {
            serde_json::json!({"time": "2026-01-01T00:00:00Z", "incident": format!("unit-failed:app{n}.service"),
                "outcome": "decided", "decision": {"severity": "warning", "diagnosis": "the application failed"}})
        };
        audit::append(&self.open_state(), audit::DECISIONS, &record(0), RetentionConfig::default().audit()).unwrap();
        audit::append(
            &self.open_state(),
            audit::ACTIONS,
            &serde_json::json!({"time": "2026-01-01T00:00:00Z", "action": "restart_unit", "outcome": "queued"}),
            RetentionConfig::default().audit(),
        )
        .unwrap();
        std::fs::write(
            self.state().join("orchestrator.log"),
            "{\"timestamp\":\"2026-01-01T00:00:00Z\",\"level\":\"INFO\",\"fields\":{\"message\":\"cycle done\"}}\n",
        )
        .unwrap();
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(macha_bin());
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }
}

fn wait(child: &mut std::process::Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut std::process::Child) -> String {
    let mut text = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut text).unwrap();
    text
}

/// Ended without a word, with the status a shell gives `yes` in
/// `yes | head` (128 + SIGPIPE), and no core.
fn ended_quietly_by_sigpipe(args: &[&str], status: ExitStatus, stderr: &str) {
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "macha {args:?}: {stderr}");
    assert!(!stderr.contains("macha: error"), "macha {args:?}: {stderr}");
    assert_eq!(
        status.code(),
        Some(128 + nix::sys::signal::Signal::SIGPIPE as i32),
        "macha {args:?}: {status:?} {stderr}"
    );
    assert!(!status.core_dumped(), "macha {args:?}");
}

#[test]
fn a_number_argument_out_of_its_range_is_refused_by_name() {
    let here = Here::new();
    for (args, name, range) in [
        (&["logs", "service", "-n", "18446744073709551615"][..], "--lines", "0..=10000"),
        (&["logs", "service", "-n", "1000000000000"], "--lines", "0..=10000"),
        (&["logs", "decisions", "-n", "10001"], "--lines", "0..=10000"),
        (&["stats", "--days", "4294967295"], "--days", "1..=3650"),
        (&["stats", "--days", "0"], "--days", "1..=3650"),
        (&["approve", "show", "0"], "<ID>", "1.."),
        (&["approve", "approve", "-5"], "<ID>", ""),
        (&["approve", "reject", "99999999999999999999"], "<ID>", ""),
        (&["approve", "discuss", "0"], "<ID>", "1.."),
        (&["kb", "search", "disk", "--limit", "0"], "--limit", "1..=100"),
        (&["kb", "search", "disk", "--limit", "101"], "--limit", "1..=100"),
        (&["kb", "search", "disk", "--limit", "18446744073709551616"], "--limit", ""),
        (
            &["eval", "--url", "http://127.0.0.1:9", "--model", "m", "--timeout", "18446744073709551615"],
            "--timeout",
            "1..=3600",
        ),
        (&["eval", "--url", "http://127.0.0.1:9", "--model", "m", "--runs", "0"], "--runs", "1..=100"),
    ] {
        let out = here.command(args).output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "macha {args:?}: {:?} {said}", out.status);
        assert!(said.contains(name) && said.contains(range), "macha {args:?}: {said}");
        assert!(!said.contains("panicked"), "macha {args:?}: {said}");
    }
}

#[test]
fn a_pipe_closed_before_the_first_line_ends_each_command_quietly() {
    let here = Here::new().with_records();
    for args in [
        &["approve", "list"][..],
        &["approve", "list", "--json"],
        &["approve", "show", "1"],
        &["logs", "verify"],
        &["logs", "decisions"],
        &["logs", "actions", "--json"],
        &["logs", "orchestrator"],
        &["logs", "decisions", "--follow"],
        &["stats"],
        &["status"],
        &["pause", "--reason", "maintenance"],
        &["resume"],
        &["check"],
        &["check", "--json"],
        &["kb", "search", "failed"],
        &["kb", "search", "failed", "--json"],
        &["kb", "stats"],
        &["kb", "stats", "--json"],
        &["kb", "reindex"],
    ] {
        // The reading end is closed before the command starts: closed after
        // the spawn, a child that another test forks at that moment holds it
        // open for an instant, and a short output fits in the pipe unseen.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut child = here.command(args).stdout(writer).stderr(Stdio::piped()).spawn().unwrap();
        let status = wait(&mut child, Duration::from_secs(30));
        ended_quietly_by_sigpipe(args, status, &stderr_of(&mut child));
    }
    // The commands did their work before their output was lost.
    assert!(Store::open(&here.open_state()).unwrap().paused().unwrap().is_none(), "paused, then resumed");
    assert!(std::fs::read_to_string(here.state().join("orchestrator.log")).unwrap().contains("cycle done"));
}

#[test]
fn a_reader_that_takes_one_line_and_leaves_ends_a_long_listing_quietly() {
    let here = Here::new();
    let line = "{\"time\":\"2026-01-01T00:00:00Z\",\"incident\":\"unit-failed:app.service\",\"outcome\":\"decided\"}\n";
    std::fs::write(here.state().join(audit::DECISIONS), line.repeat(5000)).unwrap();
    for args in [&["logs", "decisions", "-n", "5000"][..], &["logs", "decisions", "-n", "5000", "--json"]] {
        let mut child = here.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        assert!(first.contains("unit-failed:app.service"), "{first}");
        let status = wait(&mut child, Duration::from_secs(30));
        ended_quietly_by_sigpipe(args, status, &stderr_of(&mut child));
    }
}

#[test]
fn nothing_writes_to_standard_output_but_the_one_writer() {
    fn sources(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let writer = root.join("src/cli/output.rs");
    for file in files.iter().filter(|f| **f != writer) {
        let text = std::fs::read_to_string(file).unwrap();
        for needle in ["println!(", "print!(", "stdout()"] {
            let found = text.match_indices(needle).any(|(i, _)| !text[..i].ends_with('e'));
            assert!(!found, "{} uses {needle}; print through cli::output (outln!, out!)", file.display());
        }
    }
}
