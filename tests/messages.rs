//! What a person reads when a command fails: each cause said once, the
//! file named, the file called what it is, the refusal naming what was
//! refused and who may. No container: the commands read only files here.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{macha_bin, stderr};

/// The uid and gid of `nobody`: neither root nor in the approver group.
const NOBODY: u32 = 65534;

/// A configuration and a state directory in a directory others may enter.
struct Here {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Here {
    fn new() -> Here {
        let dir = tempfile::Builder::new().prefix("macha-messages").tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.path().join("config.toml");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(&config, format!("state_dir = \"{}\"\n", state.display())).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        Here { dir, config }
    }

    fn state(&self, name: &str) -> PathBuf {
        self.dir.path().join("state").join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        said(Command::new(macha_bin()).arg("--config").arg(&self.config).args(args).output().unwrap(), args)
    }

    fn run_as_nobody(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("setpriv");
        cmd.args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()]);
        said(cmd.arg(macha_bin()).arg("--config").arg(&self.config).args(args).output().unwrap(), args)
    }
}

fn said(out: Output, args: &[&str]) -> Output {
    eprintln!(
        "$ macha {}\n-> {:?}\n{}{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The message's parts (`what: cause: its cause`) are all different.
fn each_cause_once(message: &str) {
    let parts: Vec<&str> = message.trim().split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(part), "{part:?} is said twice in {message:?}");
    }
}

fn make_dir(path: &Path) {
    std::fs::create_dir(path).unwrap();
}

#[test]
fn an_io_error_says_its_cause_once() {
    let here = Here::new();
    // The configuration file is a directory.
    let out = Command::new(macha_bin()).args(["--config", "/tmp", "status"]).output().unwrap();
    let out = said(out, &["--config", "/tmp", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/tmp"), "{}", stderr(&out));
    each_cause_once(&stderr(&out));

    // An audit file is a directory.
    make_dir(&here.state("decisions.jsonl"));
    let out = here.run(&["logs", "decisions"]);
    assert_eq!(out.status.code(), Some(2));
    // Refused by macha itself: it opens only regular files in its state directory.
    let text = stderr(&out).to_lowercase();
    assert!(text.contains("decisions.jsonl") && text.contains("is a directory"), "{}", stderr(&out));
    each_cause_once(&stderr(&out));

    // The state database is a directory.
    make_dir(&here.state("state.db"));
    let out = here.run(&["approve", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("state.db"), "{}", stderr(&out));
    each_cause_once(&stderr(&out));
}

#[test]
fn stats_names_the_metrics_file_it_cannot_read() {
    let here = Here::new();
    std::fs::write(here.state("metrics.jsonl"), "{}\n").unwrap();
    std::fs::set_permissions(here.state("metrics.jsonl"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = here.run_as_nobody(&["stats"]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(text.contains("Permission denied"), "{text}");
    assert!(text.contains(&here.state("metrics.jsonl").display().to_string()), "the file is named: {text}");
    each_cause_once(&text);
}

#[test]
fn the_orchestrator_log_is_not_called_an_audit_file() {
    let here = Here::new();
    make_dir(&here.state("orchestrator.log"));
    let out = here.run(&["logs", "orchestrator"]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(text.contains(&here.state("orchestrator.log").display().to_string()), "{text}");
    assert!(!text.contains("audit"), "orchestrator.log is the daemon's log, not part of the audit trail: {text}");
    each_cause_once(&text);
}

#[test]
fn a_note_from_someone_outside_the_approver_group_is_refused_as_a_note() {
    let here = Here::new();
    let out = here.run_as_nobody(&["note", "do not restart postgresql"]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(text.contains("may not leave notes"), "{text}");
    assert!(!text.contains("approve or reject"), "{text}");
    assert!(text.contains("only root and members of the group \"wheel\""), "{text}");
    assert!(!here.state("notes").exists(), "no note was left");
}

#[test]
fn macha_check_says_the_models_problem_once() {
    let here = Here::new();
    let dir = here.dir.path();
    std::fs::create_dir(dir.join("journal")).unwrap();
    // No bus and an empty journal here, and nothing listens for the model.
    std::fs::write(
        &here.config,
        format!(
            "state_dir = \"{}/state\"\ndbus_address = \"unix:path={}/no-bus\"\njournal_dir = \"{}/journal\"\n[ollama]\nurl = \"http://127.0.0.1:9\"\ntimeout = 1\n\
             # This machine's own disk and memory are no incident here.\n[detect]\ndisk_full_percent = 100\nmemory_pressure_percent = 100\n",
            dir.display(),
            dir.display(),
            dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(macha_bin()).arg("--config").arg(&here.config).arg("check").output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(all.matches("127.0.0.1:9 is unreachable").count(), 1, "{all}");
    assert!(!all.contains("next cycle"), "a one-shot check has no next cycle: {all}");
}
