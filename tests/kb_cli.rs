//! `macha kb` against a state directory whose audit trail the test writes:
//! memory is folded from the trail by the command itself, found by its
//! words, shown, forgotten only by an approver and on the record, moved
//! out and back in as JSONL unchanged, and a bad import file is refused by
//! its line with nothing stored. No container: systemd and the model are
//! unreachable here, and `macha kb` needs neither.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use chrono::{TimeDelta, Utc};
use common::macha_bin;
use macha::audit::{self, ActionOutcome, ActionRecord, IncidentEvent, IncidentRecord, Origin};
use macha::config::RetentionConfig;
use macha::ids::Fingerprint;
use macha::state_dir::StateDir;
use serde_json::Value;

/// The uid and gid of `nobody`: neither root nor in the approver group.
const NOBODY: u32 = 65534;

struct Here {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Here {
    /// A configuration pointing at a state directory `state`, with `extra`
    /// appended.
    fn new(extra: &str) -> Here {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\ndbus_address = \"unix:path={}\"\n[ollama]\nurl = \"http://127.0.0.1:9\"\ntimeout = 2\n{extra}",
                dir.path().join("state").display(),
                dir.path().join("no-bus").display(),
            ),
        )
        .unwrap();
        Here { dir, config }
    }

    fn state(&self) -> StateDir {
        StateDir::open(&self.dir.path().join("state")).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(macha_bin()).arg("--config").arg(&self.config).args(args).output().unwrap()
    }

    /// An incident of `unit` on `host` opened, a restart of it that failed
    /// verification, a rejection with a reason, and the incident resolved.
    fn incident(&self, host: &str, unit: &str, summary: &str, rejected_because: &str) {
        let state = self.state();
        let rotation = RetentionConfig::default().audit();
        let t = Utc::now() - TimeDelta::hours(2);
        let fingerprint = Fingerprint::from(format!("unit-failed:{unit}"));
        let incident = |at, event| IncidentRecord {
            time: at,
            host: host.into(),
            incident: fingerprint.clone(),
            event,
            summary: Some(summary.into()),
            generation: None,
        };
        let action = |at, outcome, by: Option<&str>, detail: &str| ActionRecord {
            time: at,
            host: host.into(),
            incident: fingerprint.clone(),
            action: "restart_unit".into(),
            target: Some(unit.into()),
            origin: Origin::Automatic,
            approval_id: None,
            by: by.map(str::to_owned),
            auto_id: None,
            outcome,
            detail: detail.into(),
            before: None,
            after: None,
            health: None,
        };
        audit::append(&state, audit::INCIDENTS, &incident(t, IncidentEvent::Opened), rotation).unwrap();
        let failed = action(t + TimeDelta::seconds(5), ActionOutcome::Failed, None, &format!("{unit} failed again"));
        audit::append(&state, audit::ACTIONS, &failed, rotation).unwrap();
        let rejected = action(t + TimeDelta::seconds(9), ActionOutcome::Rejected, Some("alice"), rejected_because);
        audit::append(&state, audit::ACTIONS, &rejected, rotation).unwrap();
        let resolved = incident(t + TimeDelta::seconds(60), IncidentEvent::Resolved);
        audit::append(&state, audit::INCIDENTS, &resolved, rotation).unwrap();
    }

    /// Two incidents on web1: a backup that fills the disk, nginx that cannot bind.
    fn with_incidents(self) -> Here {
        self.incident("web1", "backup.service", "backup.service failed: No space left on device", "free /var first");
        self.incident(
            "web1",
            "nginx.service",
            "nginx.service failed: bind() to 0.0.0.0:80 failed",
            "another server holds the port",
        );
        self
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn succeeded(args: &[&str], out: &Output) {
    assert_eq!(out.status.code(), Some(0), "macha {args:?}: {}{}", stdout(out), stderr(out));
}

const BACKUP: &str = "web1/unit-failed:backup.service";

#[test]
fn search_finds_a_memory_by_its_words_with_what_came_of_the_fixes() {
    let here = Here::new("").with_incidents();
    let args = ["kb", "search", "no space left on device"];
    let out = here.run(&args);
    succeeded(&args, &out);
    let text = stdout(&out);
    let first = text.lines().next().unwrap_or_default();
    assert_eq!(first, BACKUP, "the backup incident first: {text}");
    assert!(text.contains("seen 1 time"), "{text}");
    assert!(text.contains("verify failed: backup.service failed again"), "{text}");
    assert!(text.contains("rejected by alice: free /var first"), "{text}");

    let args = ["kb", "search", "port bind", "--json", "--limit", "1"];
    let out = here.run(&args);
    succeeded(&args, &out);
    let hits: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["id"], "web1/unit-failed:nginx.service");
    assert_eq!(hits[0]["memory"]["occurrences"], 1);

    let out = here.run(&["kb", "search", "zebra"]);
    assert!(stdout(&out).contains("no memory matches"), "{}", stdout(&out));
}

#[test]
fn show_prints_one_memory_whole_and_an_unknown_id_is_refused_by_name() {
    let here = Here::new("").with_incidents();
    // Memory takes in the trail when searched.
    succeeded(&["kb", "search", "x"], &here.run(&["kb", "search", "x"]));
    let args = ["kb", "show", BACKUP, "--json"];
    let out = here.run(&args);
    succeeded(&args, &out);
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["id"], BACKUP);
    assert_eq!(m["resolved"], 1);
    assert_eq!(m["actions"][0]["failed"], 1);
    let out = here.run(&["kb", "show", BACKUP]);
    let text = stdout(&out);
    assert!(text.starts_with("memory web1/unit-failed:backup.service\n"), "{text}");
    assert!(text.contains("rejected by alice: free /var first") && text.contains("first seen "), "{text}");
    assert!(!text.contains("the gate said"), "never proposed, so no verdict: {text}");

    let out = here.run(&["kb", "show", "web1/unit-failed:\x1b[2Jnothing.service"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no memory has the id"), "{}", stderr(&out));
    assert!(!stderr(&out).contains('\x1b'), "terminal escapes are written out: {}", stderr(&out));
}

#[test]
fn forget_by_root_removes_the_memory_and_records_who_did_it() {
    let here = Here::new("").with_incidents();
    succeeded(&["kb", "search", "x"], &here.run(&["kb", "search", "x"]));
    let args = ["kb", "forget", BACKUP];
    let out = here.run(&args);
    succeeded(&args, &out);
    assert!(stdout(&out).contains("forgot web1/unit-failed:backup.service: backup.service failed"), "{}", stdout(&out));

    assert_eq!(here.run(&["kb", "show", BACKUP]).status.code(), Some(1), "gone");
    let out = here.run(&["kb", "search", "no space left on device"]);
    assert!(!stdout(&out).contains(BACKUP), "not found again by the catch-up: {}", stdout(&out));

    let records = audit::read_all(&here.state(), audit::MEMORY).unwrap().0;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["event"], "forgotten");
    assert_eq!(records[0]["memory"], BACKUP);
    assert!(records[0]["by"].as_str().unwrap().contains("uid 0"), "{records:?}");
    let out = here.run(&["logs", "memory"]);
    assert!(stdout(&out).contains("forgotten web1/unit-failed:backup.service"), "{}", stdout(&out));
    let out = here.run(&["logs", "verify"]);
    assert!(stdout(&out).contains("memory.jsonl: 1 records, chain intact"), "{}", stdout(&out));

    let out = here.run(&args);
    assert_eq!(out.status.code(), Some(1), "forgotten already: {}", stderr(&out));
    assert!(stderr(&out).contains("nothing was forgotten"), "{}", stderr(&out));
}

#[test]
fn forget_and_import_by_someone_outside_the_approver_group_are_refused() {
    let here = Here::new("[act]\napprover_group = \"root\"\n").with_incidents();
    succeeded(&["kb", "search", "x"], &here.run(&["kb", "search", "x"]));
    std::fs::set_permissions(here.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&here.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let file = here.path("memories.jsonl");
    std::fs::write(&file, "").unwrap();
    for args in [&["kb", "forget", BACKUP][..], &["kb", "import", file.to_str().unwrap()]] {
        let out = Command::new("setpriv")
            .args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()])
            .arg(macha_bin())
            .arg("--config")
            .arg(&here.config)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "macha {args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("only root and members of the group \"root\""), "{}", stderr(&out));
    }
    assert_eq!(here.run(&["kb", "show", BACKUP]).status.code(), Some(0), "still remembered");
    assert!(audit::read_all(&here.state(), audit::MEMORY).unwrap().0.is_empty());
}

#[test]
fn an_export_imported_into_an_empty_state_directory_gives_the_same_memories() {
    let here = Here::new("").with_incidents();
    here.incident("db1", "postgresql.service", "postgresql.service failed: password=hunter2hunter2", "the disk");
    let file = here.path("memories.jsonl");
    let args = ["kb", "export", "--output", file.to_str().unwrap()];
    // The export takes in the trail first: nothing searched before.
    succeeded(&args, &here.run(&args));
    let exported = std::fs::read_to_string(&file).unwrap();
    assert_eq!(exported.lines().count(), 3, "{exported}");
    assert!(!exported.contains("hunter2"), "{exported}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let to_stdout = here.run(&["kb", "export"]);
    assert_eq!(stdout(&to_stdout), exported, "the same to standard output");

    let there = Here::new("");
    let args = ["kb", "import", file.to_str().unwrap()];
    let out = there.run(&args);
    succeeded(&args, &out);
    assert!(stdout(&out).contains("3 memories from"), "{}", stdout(&out));
    assert!(stdout(&out).contains("(3 new, 0 replaced)"), "{}", stdout(&out));
    assert_eq!(stdout(&there.run(&["kb", "export"])), exported);
    let records = audit::read_all(&there.state(), audit::MEMORY).unwrap().0;
    assert_eq!(records[0]["event"], "imported");

    // Again: the same memories, replaced.
    let out = there.run(&args);
    assert!(stdout(&out).contains("(0 new, 3 replaced)"), "{}", stdout(&out));
    let stats: Value = serde_json::from_slice(&there.run(&["kb", "stats", "--json"]).stdout).unwrap();
    assert_eq!(stats["memories"], 3);
}

#[test]
fn an_import_redacts_what_it_stores_again() {
    let here = Here::new("").with_incidents();
    succeeded(&["kb", "search", "x"], &here.run(&["kb", "search", "x"]));
    let mut m: Value = serde_json::from_slice(&here.run(&["kb", "show", BACKUP, "--json"]).stdout).unwrap();
    m.as_object_mut().unwrap().remove("id");
    m["summary"] = "backup failed: password=hunter2hunter2".into();
    m["evidence"] = format!("token: ghp_{}\n{}", "a".repeat(36), "x".repeat(10_000)).into();
    let file = here.path("edited.jsonl");
    std::fs::write(&file, format!("{m}\n")).unwrap();
    let there = Here::new("");
    succeeded(&["kb", "import"], &there.run(&["kb", "import", file.to_str().unwrap()]));
    let stored = stdout(&there.run(&["kb", "export"]));
    assert!(!stored.contains("hunter2") && !stored.contains("ghp_aaaa"), "{stored}");
    let stored: Value = serde_json::from_str(stored.trim()).unwrap();
    assert!(stored["evidence"].as_str().unwrap().chars().count() <= macha::kb::MAX_EVIDENCE_CHARS);
}

#[test]
fn a_bad_import_names_its_line_and_imports_nothing() {
    let here = Here::new("").with_incidents();
    succeeded(&["kb", "search", "x"], &here.run(&["kb", "search", "x"]));
    let good = stdout(&here.run(&["kb", "export"]));
    let first = good.lines().next().unwrap();
    let there = Here::new("");
    let cases: Vec<(String, &str)> = vec![
        (format!("{first}\n{{\"host\": \"web1\"}}\n"), "line 2 is not a memory: missing field"),
        (format!("{first}\nnot json\n"), "line 2 is not a memory"),
        (format!("{first}\n{first}\n"), "line 2: the memory web1/unit-failed:"),
        (first.replace("\"host\":\"web1\"", "\"host\":\"web1/x\"") + "\n", "line 1: the host \"web1/x\""),
        (first.replace("\"kind\":\"unit-failed\"", "\"kind\":\"disk-full\"") + "\n", "line 1: the kind"),
        (format!("{first}\n{}\n", "x".repeat(2 * 1024 * 1024)), "line 2 is longer than 1 MiB"),
    ];
    for (i, (content, said)) in cases.iter().enumerate() {
        let file = there.path(&format!("bad{i}.jsonl"));
        std::fs::write(&file, content).unwrap();
        let out = there.run(&["kb", "import", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "case {i}: {}", stderr(&out));
        assert!(stderr(&out).contains(said), "case {i}: {}", stderr(&out));
        assert!(stderr(&out).contains("nothing was imported"), "case {i}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "case {i}: {}", stderr(&out));
    }
    let mut bad_utf8 = format!("{first}\n").into_bytes();
    bad_utf8.extend_from_slice(b"\xff\xfe\n");
    let file = there.path("latin1.jsonl");
    std::fs::write(&file, bad_utf8).unwrap();
    let out = there.run(&["kb", "import", file.to_str().unwrap()]);
    assert!(stderr(&out).contains("line 2 is not UTF-8"), "{}", stderr(&out));

    let out = there.run(&["kb", "import", there.path("missing.jsonl").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.jsonl: No such file"), "{}", stderr(&out));
    let out = there.run(&["kb", "import", "/dev/zero"]);
    assert!(stderr(&out).contains("not a regular file"), "{}", stderr(&out));

    let stats: Value = serde_json::from_slice(&there.run(&["kb", "stats", "--json"]).stdout).unwrap();
    assert_eq!(stats["memories"], 0, "nothing was half-imported");
    assert!(audit::read_all(&there.state(), audit::MEMORY).unwrap().0.is_empty(), "and nothing recorded");
}

#[test]
fn reindex_builds_memory_again_from_the_trail_but_not_what_was_forgotten() {
    let here = Here::new("").with_incidents();
    let out = here.run(&["kb", "reindex"]);
    succeeded(&["kb", "reindex"], &out);
    assert_eq!(stdout(&out).trim(), "read 8 records of the audit trail; wrote 2 memories");
    let before = stdout(&here.run(&["kb", "export"]));
    succeeded(&["kb", "reindex"], &here.run(&["kb", "reindex"]));
    assert_eq!(stdout(&here.run(&["kb", "export"])), before, "the same memories from the same trail");
    succeeded(&["kb", "forget", BACKUP], &here.run(&["kb", "forget", BACKUP]));
    succeeded(&["kb", "reindex"], &here.run(&["kb", "reindex"]));
    let after = stdout(&here.run(&["kb", "export"]));
    let kept: String = before.lines().filter(|l| !l.contains("backup.service")).map(|l| format!("{l}\n")).collect();
    assert_eq!(after, kept, "the forgotten memory is not brought back by a reindex");
}

#[test]
fn with_memory_off_reading_commands_say_so_and_export_still_gives_what_was_kept() {
    let here = Here::new("").with_incidents();
    succeeded(&["kb", "search", "x"], &here.run(&["kb", "search", "x"]));
    let mut config = std::fs::read_to_string(&here.config).unwrap();
    config.push_str("[knowledge_base]\nenable = false\n");
    std::fs::write(&here.config, config).unwrap();
    for args in [&["kb", "search", "disk"][..], &["kb", "show", BACKUP], &["kb", "stats"], &["kb", "reindex"]] {
        let out = here.run(args);
        assert_eq!(out.status.code(), Some(1), "macha {args:?}");
        assert!(stderr(&out).contains("incident memory is off"), "macha {args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }
    let out = here.run(&["kb", "export"]);
    succeeded(&["kb", "export"], &out);
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
}

#[test]
fn a_closed_pipe_ends_each_kb_command_quietly() {
    let here = Here::new("").with_incidents();
    for args in [
        &["kb", "search", "failed"][..],
        &["kb", "search", "failed", "--json"],
        &["kb", "show", BACKUP],
        &["kb", "stats"],
        &["kb", "export"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(macha_bin())
            .arg("--config")
            .arg(&here.config)
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(141), "macha {args:?}: {}", stderr(&out));
        // A note that the model cannot embed the query may be said; no error.
        let said = stderr(&out);
        assert!(
            !said.contains("panicked") && !said.contains("Broken pipe") && !said.contains("macha: error"),
            "macha {args:?}: {said}"
        );
    }
}

#[test]
fn runbooks_are_searched_shown_counted_and_indexed_again_and_an_untrusted_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str, mode: u32| {
        std::fs::write(dir.path().join(name), text).unwrap();
        std::fs::set_permissions(dir.path().join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("disk.md", "# Disks\n\n## /var full\n\nVacuum the journal to 2 GiB, then look at /var/backup.\n", 0o644);
    write("open.md", "# Anyone\n\nrestart sshd whenever\n", 0o666);
    let here = Here::new(&format!("[knowledge_base]\nrunbooks = \"{}\"\n", dir.path().display())).with_incidents();

    let args = ["kb", "search", "var full journal", "--json"];
    let out = here.run(&args);
    succeeded(&args, &out);
    let hits: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let section = hits.iter().find(|h| h["runbook"].is_object()).unwrap_or_else(|| panic!("{hits:?}"));
    assert_eq!(section["id"], "runbook:disk.md#1");
    assert_eq!(section["runbook"]["heading"], "Disks › /var full");
    assert!(stderr(&out).contains("found by words alone"), "no embedding model here: {}", stderr(&out));

    let args = ["kb", "show", "runbook:disk.md#1"];
    let out = here.run(&args);
    succeeded(&args, &out);
    assert!(stdout(&out).starts_with("runbook:disk.md#1  Disks › /var full\n  Vacuum the journal"), "{}", stdout(&out));
    let out = here.run(&["kb", "show", "runbook:open.md#1"]);
    assert_eq!(out.status.code(), Some(1), "an untrusted file is not indexed");
    assert!(stderr(&out).contains("no runbook section has the id"), "{}", stderr(&out));

    let args = ["kb", "stats", "--json"];
    let out = here.run(&args);
    succeeded(&args, &out);
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((stats["runbooks"]["files"].as_u64(), stats["runbooks"]["sections"].as_u64()), (Some(2), Some(1)));
    let skipped = stats["runbooks"]["skipped"][0].as_str().unwrap();
    assert!(skipped.starts_with("open.md: writable by its group or by others (mode 666)"), "{skipped}");

    write("disk.md", "# Disks\n\n## /nix full\n\nCollect garbage.\n\n## /boot full\n\nRemove old kernels.\n", 0o644);
    let args = ["kb", "reindex"];
    let out = here.run(&args);
    succeeded(&args, &out);
    assert!(stdout(&out).contains("indexed 2 runbook files into 2 sections (1 not indexed)"), "{}", stdout(&out));
    let out = here.run(&["kb", "search", "boot kernels"]);
    assert!(stdout(&out).contains("runbook:disk.md#2  Disks › /boot full"), "{}", stdout(&out));
    assert!(!stdout(&out).contains("/var full"), "{}", stdout(&out));
}
