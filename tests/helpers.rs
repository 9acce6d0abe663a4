//! The root-only half of the catalog, end to end inside the container, as in
//! production: the daemon's user `macha` (unprivileged, in
//! `systemd-journal`), the polkit rule and the helper units of `module/`,
//! a real Nix (Debian's nix-bin) with the NixOS stand-in of
//! `tests/testbed/nixos` for what only NixOS has, and the Ollama double
//! running in the container with a script.
//!
//! What is shown here: the helper units are the only way from the daemon's
//! user to root, and each checks its request again; garbage collection and
//! journal vacuum run and are verified by free space; the vacuum keeps the
//! current boot and records the evidence of open incidents first; rebuilds
//! dry-build first; switch and rollback wait for a human at auto-full; the
//! generation before and after is recorded, and undoing is one approval.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{build_double_bin, macha_bin, manager_call_as};
use macha_testbed::container::{BootOptions, Container, SYSTEM_PROFILE};
use serde_json::{json, Value};

const RULE: &str = "module/polkit/50-macha-autonomous.rules";
const HELPERS: [&str; 4] = [
    "macha-action-gc.service",
    "macha-action-vacuum-journal.service",
    "macha-action-rebuild.service",
    "macha-action-rollback.service",
];
const STATE: &str = "/var/lib/macha-autonomous";
const CONFIG: &str = "/etc/macha-autonomous/config.toml";
const MACHA: &str = "/opt/macha/macha";
const APP: &str = "store-user.service";

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// One model answer proposing `actions`.
fn answer(actions: Value) -> Value {
    let decision = json!({"diagnosis": "see the journal", "severity": "critical", "actions": actions});
    json!({"content": decision.to_string()})
}

/// A container set up as a NixOS host running macha: the user, the polkit
/// rule, the helper units with their placeholders filled in, the state
/// directory, the NixOS stand-in at generation 1, a failed unit `APP`, and
/// the config (`extra` is appended as TOML).
fn host(name: &str, level: &str, extra: &str) -> Container {
    let bin = macha_bin().parent().unwrap().to_path_buf();
    build_double_bin();
    let c = Container::boot_with(BootOptions::new(name).bind_ro(&bin, "/opt/macha")).unwrap();
    c.exec_ok(&["useradd", "--system", "--groups", "systemd-journal", "macha"]).unwrap();
    c.write_file("/etc/polkit-1/rules.d/50-macha-autonomous.rules", std::fs::read(repo(RULE)).unwrap()).unwrap();
    c.exec_ok(&["systemctl", "restart", "polkit.service"]).unwrap();
    for unit in HELPERS {
        let text = std::fs::read_to_string(repo("module/helpers").join(unit)).unwrap();
        let text = text
            .replace("@macha@", MACHA)
            .replace("@config@", CONFIG)
            .replace("@stateDir@", STATE)
            .replace("@path@", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        let left =
            text.split('@').skip(1).step_by(2).find(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphabetic()));
        assert!(left.is_none(), "placeholder @{}@ left in {unit}", left.unwrap_or_default());
        c.install_unit(unit, &text).unwrap();
    }
    c.exec_ok(&["install", "-d", "-o", "macha", "-g", "macha", "-m", "0750", STATE]).unwrap();
    c.install_nixos_standin().unwrap();
    c.install_unit(
        APP,
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/sh -c 'echo \"store-user: write failed: No space left on device\" >&2; exit 1'\n",
    )
    .unwrap();
    c.start_unit(APP).unwrap();
    c.wait_unit_state(APP, "failed", Duration::from_secs(20)).unwrap();
    c.write_file(
        CONFIG,
        format!(
            "autonomy_level = \"{level}\"\n\n[detect]\ndisk_full_percent = 100\nmemory_pressure_percent = 100\n\n[act]\nsettle_time = 1\nhelper_timeout = 120\nswitch_watch = 8\n{extra}"
        ),
    )
    .unwrap();
    c
}

/// Starts the Ollama double in the container with these scripted answers.
fn model(c: &Container, answers: &[Value]) {
    let script: Vec<String> = answers.iter().map(Value::to_string).collect();
    c.write_file("/etc/macha-autonomous/script.jsonl", script.join("\n")).unwrap();
    c.install_unit(
        "ollama.service",
        "[Service]\nExecStart=/opt/macha/ollama-double --listen 127.0.0.1:11434 --model llama3.1:70b --script /etc/macha-autonomous/script.jsonl\n",
    )
    .unwrap();
    c.exec_ok(&["systemctl", "restart", "ollama.service"]).unwrap();
    c.wait_for(Duration::from_secs(10), || {
        c.exec(&["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/11434"]).is_ok_and(|o| o.status.success())
    })
    .unwrap();
}

/// One cycle as the daemon's user; the JSON report.
fn check_as_macha(c: &Container) -> Value {
    let out = c.exec(&["runuser", "-u", "macha", "--", MACHA, "--config", CONFIG, "check", "--json"]).unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "macha check printed no report ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `macha-approve` as root (an administrator); exit status and output.
fn approve(c: &Container, args: &[&str]) -> (bool, String) {
    let mut argv = vec![MACHA, "--config", CONFIG, "approve"];
    argv.extend_from_slice(args);
    let out = c.exec(&argv).unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn actions(c: &Container) -> Vec<Value> {
    let text = c.exec_ok(&["cat", &format!("{STATE}/actions.jsonl")]).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn pending(c: &Container) -> Vec<Value> {
    let out = c.exec_ok(&[MACHA, "--config", CONFIG, "approve", "list", "--json"]).unwrap();
    serde_json::from_str(&out).unwrap()
}

fn helper_log(c: &Container, unit: &str) -> String {
    c.exec_ok(&["journalctl", "-u", unit, "-o", "cat", "--no-pager"]).unwrap_or_default()
}

/// `busctl call` on systemd's manager as the daemon's user.
fn as_macha_call(c: &Container, method: &str, unit: &str) -> (bool, String) {
    manager_call_as(c, "macha", method, unit)
}

/// Writes a request file as the daemon's user would (or worse).
fn plant_request(c: &Container, helper: &str, body: &str) {
    let stem = helper.trim_end_matches(".service");
    let script =
        format!("umask 077; mkdir -p {STATE}/requests && cat > {STATE}/requests/{stem}.json <<'EOF'\n{body}\nEOF\n");
    let out = c.exec(&["runuser", "-u", "macha", "--", "sh", "-c", &script]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn request(action: Value, age_secs: i64) -> String {
    let t = chrono::Utc::now() - chrono::Duration::seconds(age_secs);
    json!({"version": 1, "id": "test", "written_at": t.to_rfc3339(), "action": action}).to_string()
}

/// Starts a helper as the daemon's user (through polkit) and waits for it
/// to end (`systemctl start` waits for the oneshot); whether it succeeded.
fn start_as_macha(c: &Container, helper: &str) -> bool {
    // This test starts a helper more often than systemd's default start
    // limit (5 in 10 s) allows; clearing the failed state resets the count.
    let _ = c.exec(&["systemctl", "reset-failed", helper]);
    let out = c.exec(&["runuser", "-u", "macha", "--", "systemctl", "start", "--no-ask-password", helper]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("Access denied") && !err.contains("authentication"), "polkit refused {helper}: {err}");
    out.status.success()
}

#[test]
fn the_helper_units_are_the_only_way_to_root_and_check_every_request_again() {
    let c = host("helpers-root", "observe", "");
    let gc = "macha-action-gc.service";

    // The daemon's user cannot start anything else, nor restart a helper.
    for unit in ["debug-shell.service", "store-user.service", "macha-action-gc.socket", "ssh.service"] {
        let (ok, _) = as_macha_call(&c, "StartUnit", unit);
        assert!(!ok, "macha may not start {unit}");
    }
    for unit in HELPERS {
        let (ok, _) = as_macha_call(&c, "RestartUnit", unit);
        assert!(!ok, "macha may not restart {unit}");
    }
    // Nor run the helper's root side itself.
    let out = c.exec(&["runuser", "-u", "macha", "--", MACHA, "--config", CONFIG, "helper", "gc"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("runs as root"));

    let garbage = c.add_store_garbage(2).unwrap();

    // Started without a request: refused, nothing done.
    assert!(!start_as_macha(&c, gc));
    assert!(helper_log(&c, gc).contains("macha did not ask for this"), "{}", helper_log(&c, gc));

    // Arguments outside the configured bounds: refused by the helper itself.
    plant_request(&c, gc, &request(json!({"kind": "collect_garbage", "older_than_days": 1}), 0));
    assert!(!start_as_macha(&c, gc));
    assert!(helper_log(&c, gc).contains("act.gc_min_days"), "{}", helper_log(&c, gc));

    // A request for another helper's action.
    plant_request(&c, gc, &request(json!({"kind": "rollback_generation"}), 0));
    assert!(!start_as_macha(&c, gc));
    assert!(helper_log(&c, gc).contains("but this helper runs"), "{}", helper_log(&c, gc));

    // Stale.
    plant_request(&c, gc, &request(json!({"kind": "collect_garbage", "older_than_days": 30}), 3600));
    assert!(!start_as_macha(&c, gc));
    assert!(helper_log(&c, gc).contains("refused as stale"), "{}", helper_log(&c, gc));

    // A link to a file of root's choosing.
    c.exec_ok(&[
        "runuser",
        "-u",
        "macha",
        "--",
        "ln",
        "-sfn",
        "/etc/shadow",
        &format!("{STATE}/requests/macha-action-gc.json"),
    ])
    .unwrap();
    assert!(!start_as_macha(&c, gc));
    assert!(helper_log(&c, gc).contains("is a symbolic link: refused"), "{}", helper_log(&c, gc));
    // A requests directory opened up to others.
    c.exec_ok(&["rm", "-f", &format!("{STATE}/requests/macha-action-gc.json")]).unwrap();
    plant_request(&c, gc, &request(json!({"kind": "collect_garbage", "older_than_days": 30}), 0));
    c.exec_ok(&["runuser", "-u", "macha", "--", "chmod", "0777", &format!("{STATE}/requests")]).unwrap();
    assert!(!start_as_macha(&c, gc));
    assert!(helper_log(&c, gc).contains("requests can be written by others"), "{}", helper_log(&c, gc));
    c.exec_ok(&["runuser", "-u", "macha", "--", "chmod", "0700", &format!("{STATE}/requests")]).unwrap();
    assert!(c.store_path_valid(&garbage).unwrap(), "nothing was collected by a refused request");

    // A good request: the real nix-collect-garbage runs, as root, once.
    plant_request(&c, gc, &request(json!({"kind": "collect_garbage", "older_than_days": 30}), 0));
    assert!(start_as_macha(&c, gc), "{}", helper_log(&c, gc));
    assert!(!c.store_path_valid(&garbage).unwrap(), "the garbage was collected");
    assert!(helper_log(&c, gc).contains("nix-collect-garbage --delete-older-than 30d succeeded"));
    // Consumed: starting it again does nothing.
    assert!(!start_as_macha(&c, gc));
}

#[test]
fn collect_garbage_runs_through_its_helper_and_is_verified_by_free_space() {
    let c = host("helpers-gc", "auto-safe", "");
    // Generations 1 and 2 aged past the cutoff, 3 current: nix keeps the newest
    // generation older than the cutoff (2) and deletes 1.
    c.exec_ok(&["nixos-rebuild", "switch", "--flake", "/etc/nixos#testhost"]).unwrap();
    c.exec_ok(&["nixos-rebuild", "switch", "--flake", "/etc/nixos#testhost"]).unwrap();
    c.age_generation(1, 40).unwrap();
    c.age_generation(2, 30).unwrap();
    let gen1 = c.generation_system(1).unwrap();
    let garbage = c.add_store_garbage(3).unwrap();
    model(
        &c,
        &[answer(
            json!([{"kind": "collect_garbage", "unit": null, "reason": "the store is full", "older_than_days": 14}]),
        )],
    );

    let report = check_as_macha(&c);
    let a = &report["incidents"][0]["decision"]["actions"][0];
    assert_eq!(a["result"], "executed", "{report:#}\n{}", helper_log(&c, "macha-action-gc.service"));
    assert!(a["detail"].as_str().unwrap().contains("MiB freed"), "{a}");

    assert!(!c.store_path_valid(&garbage).unwrap());
    assert_eq!(c.system_generations().unwrap(), [2, 3]);
    // As on NixOS, the booted system is a GC root of its own: generation 1's
    // link is gone, its system stays until the next boot.
    assert!(c.store_path_valid(&gen1).unwrap());
    assert_eq!(c.current_generation().unwrap(), 3);

    let rec = actions(&c).into_iter().find(|r| r["action"] == "collect_garbage" && r["outcome"] != "started").unwrap();
    assert_eq!(rec["outcome"], "succeeded");
    assert_eq!(rec["before"]["path"], "/nix/store");
    assert!(rec["after"]["available_bytes"].as_u64() >= rec["before"]["available_bytes"].as_u64());
}

#[test]
fn a_cleanup_that_leaves_the_disk_full_fails_its_probe_and_is_not_repeated_automatically() {
    // Any used space counts as full here, so the probe cannot pass.
    let c = host("helpers-probe", "auto-safe", "");
    c.exec_ok(&["sed", "-i", "s/^disk_full_percent = 100/disk_full_percent = 1/", CONFIG]).unwrap();
    // Fill the store's filesystem past 1% with a path that is still in use.
    let size_mb: u32 = c
        .exec_ok(&["df", "--output=size", "-BM", "/nix/store"])
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .trim_end_matches('M')
        .parse()
        .unwrap();
    let in_use = c.add_store_garbage(size_mb / 100 + 16).unwrap();
    c.exec_ok(&["ln", "-s", &in_use, "/nix/var/nix/gcroots/macha-test-in-use"]).unwrap();
    let gc = answer(json!([{"kind": "collect_garbage", "unit": null, "reason": "full", "older_than_days": 14}]));
    model(&c, &vec![gc; 40]);
    let fp = format!("unit-failed:{APP}");
    let find = |report: &Value| -> Value {
        let incidents = report["incidents"].as_array().cloned().unwrap_or_default();
        incidents.into_iter().find(|i| i["fingerprint"] == fp.as_str()).unwrap_or_else(|| panic!("no {fp}: {report:#}"))
    };
    let runs = |c: &Container| helper_log(c, "macha-action-gc.service").matches("running nix-collect-garbage").count();

    let first = find(&check_as_macha(&c));
    let a = &first["decision"]["actions"][0];
    assert_eq!(a["result"], "failed", "{first:#}");
    assert!(a["detail"].as_str().unwrap().contains("still at or above detect.disk_full_percent"), "{a}");
    let rec = actions(&c).into_iter().find(|r| r["incident"] == fp.as_str() && r["outcome"] != "started").unwrap();
    assert_eq!(rec["outcome"], "failed");
    let runs_after_first = runs(&c);
    assert!(runs_after_first >= 1);

    // The unit fails again: the incident is decided again, the same cleanup
    // is proposed, and it goes to a human instead of running again.
    let invocation = c.unit_property(APP, "InvocationID").unwrap();
    c.exec_ok(&["systemctl", "restart", APP]).unwrap();
    c.wait_for(Duration::from_secs(20), || {
        c.unit_property(APP, "InvocationID").unwrap() != invocation
            && c.unit_property(APP, "ActiveState").unwrap() == "failed"
    })
    .unwrap();
    let second = find(&check_as_macha(&c));
    let a = &second["decision"]["actions"][0];
    assert_eq!(a["result"], "escalated", "{second:#}");
    assert!(a["detail"].as_str().unwrap().contains("macha-approve approve"), "{a}");
    assert_eq!(runs(&c), runs_after_first, "no second automatic run");
}

/// Writes a journal file of an earlier boot into the container's journal
/// directory: `n` entries of about 1 KiB, with a boot ID that is not this
/// one and timestamps of two days ago, through systemd-journal-remote (the
/// real journal file writer). Returns its path inside the container.
fn plant_old_boot_journal(c: &Container, n: usize) -> String {
    let machine = c.exec_ok(&["cat", "/etc/machine-id"]).unwrap().trim().to_owned();
    let old = (chrono::Utc::now() - chrono::Duration::days(2)).timestamp_micros();
    let mut export = Vec::new();
    let pad = "x".repeat(1000);
    for i in 0..n {
        let t = old + i as i64 * 1000;
        export.extend_from_slice(
            format!(
                "__REALTIME_TIMESTAMP={t}\n__MONOTONIC_TIMESTAMP={i}\n_BOOT_ID=0123456789abcdef0123456789abcdef\n_MACHINE_ID={machine}\nPRIORITY=6\nSYSLOG_IDENTIFIER=oldboot\nMESSAGE=old boot line {i} {pad}\n\n"
            )
            .as_bytes(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("old.export");
    std::fs::write(&input, export).unwrap();
    let name = format!("system@00000000000000000000000000000001-0000000000000001-{:016x}.journal", old);
    let out_file = dir.path().join(&name);
    let out = Command::new("/lib/systemd/systemd-journal-remote")
        .arg(format!("--output={}", out_file.display()))
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "systemd-journal-remote: {}", String::from_utf8_lossy(&out.stderr));
    let inside = format!("/var/log/journal/{machine}/{name}");
    c.write_file(&inside, std::fs::read(&out_file).unwrap()).unwrap();
    c.exec_ok(&["chown", "root:systemd-journal", &inside]).unwrap();
    c.exec_ok(&["chmod", "0640", &inside]).unwrap();
    inside
}

#[test]
fn vacuum_keeps_the_current_boot_and_records_open_evidence_first() {
    let c = host("helpers-vacuum", "auto-safe", "journal_floor_mb = 16\n");
    let old = plant_old_boot_journal(&c, 30_000);
    // An archived file of this boot, which must survive whatever the limit.
    c.log("current-boot", "err", "current boot line before rotation").unwrap();
    c.exec_ok(&["journalctl", "--rotate"]).unwrap();
    let archived_now: Vec<String> = c
        .sh_ok("ls /var/log/journal/*/system@*.journal | grep -v @00000000000000000000000000000001-")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(!archived_now.is_empty());
    model(
        &c,
        &[answer(json!([{"kind": "vacuum_journal", "unit": null, "reason": "the log is full", "max_size_mb": 16}]))],
    );

    let report = check_as_macha(&c);
    let a = &report["incidents"][0]["decision"]["actions"][0];
    assert_eq!(a["result"], "executed", "{report:#}\n{}", helper_log(&c, "macha-action-vacuum-journal.service"));
    let detail = a["detail"].as_str().unwrap();
    assert!(detail.contains("evidence of open incidents kept in"), "{detail}");

    assert!(c.exec(&["test", "-e", &old]).unwrap().status.code() == Some(1), "the old boot's file was deleted");
    for f in &archived_now {
        c.exec_ok(&["test", "-e", f]).unwrap_or_else(|_| panic!("{f} of the current boot was deleted"));
    }
    let log = helper_log(&c, "macha-action-vacuum-journal.service");
    assert!(log.contains("1 archived files deleted"), "{log}");
    assert!(log.contains("kept because they hold the current boot"), "{log}");
    let now = c.exec_ok(&["journalctl", "-b", "-o", "cat", "--no-pager"]).unwrap();
    assert!(now.contains("current boot line before rotation"));

    // The evidence was written before the vacuum and names the incident.
    let evidence = c.sh_ok(&format!("cat {STATE}/evidence/*-before-vacuum.json")).unwrap();
    assert!(evidence.contains("unit-failed:store-user.service"), "{evidence}");
    assert!(evidence.contains("No space left on device"), "{evidence}");
}

#[test]
fn rebuilds_dry_build_first_switches_wait_for_a_human_and_undo_is_one_approval() {
    let c = host("helpers-rebuild", "auto-full", "\n[nixos]\nflake = \"/etc/nixos#testhost\"\n");
    let gen1 = c.current_system().unwrap();
    model(
        &c,
        &[answer(json!([
            {"kind": "nixos_rebuild", "unit": null, "reason": "check it builds", "mode": "dry-build"},
            {"kind": "nixos_rebuild", "unit": null, "reason": "apply the fix", "mode": "switch"},
        ]))],
    );
    let report = check_as_macha(&c);
    let acts = report["incidents"][0]["decision"]["actions"].as_array().unwrap().clone();
    assert_eq!(acts[0]["result"], "executed", "{report:#}\n{}", helper_log(&c, "macha-action-rebuild.service"));
    assert!(acts[0]["detail"].as_str().unwrap().contains("dry-build succeeded; nothing changed"), "{:#}", acts[0]);
    assert_eq!(acts[1]["result"], "queued", "switch waits for a human even at auto-full: {:#}", acts[1]);
    assert_eq!(c.current_generation().unwrap(), 1);

    // Approved by root: dry-build, then switch; generation 2 runs.
    let id = acts[1]["approval_id"].as_i64().unwrap().to_string();
    let (ok, out) = approve(&c, &["approve", &id]);
    assert!(ok, "{out}\n{}", helper_log(&c, "macha-action-rebuild.service"));
    assert_eq!(c.current_generation().unwrap(), 2);
    assert_eq!(c.current_system().unwrap(), c.generation_system(2).unwrap());
    let log = helper_log(&c, "macha-action-rebuild.service");
    let dry = log.find("running nixos-rebuild dry-build").unwrap();
    let switch = log.find("running nixos-rebuild switch").unwrap();
    assert!(dry < switch, "dry-build first:\n{log}");
    let rec = actions(&c).into_iter().rev().find(|r| r["action"] == "nixos_rebuild").unwrap();
    assert_eq!(rec["outcome"], "succeeded");
    assert_eq!(rec["before"]["profile_generation"], 1);
    assert_eq!(rec["after"]["profile_generation"], 2);
    assert_eq!(rec["after"]["running_generation"], 2);

    // Undoing it is one approval, already queued.
    let undo = pending(&c).into_iter().find(|p| p["kind"] == "rollback_generation").expect("an undo item");
    assert_eq!(undo["target"], "generation 1");
    assert!(out.contains(&format!("macha-approve approve {}", undo["id"])), "{out}");
    let (ok, out) = approve(&c, &["approve", &undo["id"].to_string()]);
    assert!(ok, "{out}\n{}", helper_log(&c, "macha-action-rollback.service"));
    assert_eq!(c.current_generation().unwrap(), 1);
    assert_eq!(c.current_system().unwrap(), gen1);
    // And that undo can itself be undone.
    assert!(pending(&c).iter().any(|p| p["kind"] == "rollback_generation" && p["target"] == "generation 2"));
}

#[test]
fn a_broken_flake_stops_at_dry_build_and_a_rollback_always_waits_for_a_human() {
    let c = host("helpers-broken", "auto-full", "\n[nixos]\nflake = \"/etc/nixos#testhost\"\n");
    c.exec_ok(&["nixos-rebuild", "switch", "--flake", "/etc/nixos#testhost"]).unwrap();
    assert_eq!(c.current_generation().unwrap(), 2);
    c.write_file("/etc/nixos/broken", "error: attribute 'servces' missing\n").unwrap();
    model(
        &c,
        &[answer(json!([
            {"kind": "nixos_rebuild", "unit": null, "reason": "apply", "mode": "test"},
            {"kind": "rollback_generation", "unit": null, "reason": "generation 2 broke it"},
        ]))],
    );
    let report = check_as_macha(&c);
    let acts = report["incidents"][0]["decision"]["actions"].as_array().unwrap().clone();
    assert_eq!(acts[0]["result"], "failed", "{:#}", acts[0]);
    assert!(acts[0]["detail"].as_str().unwrap().contains("ended with"), "{:#}", acts[0]);
    let log = helper_log(&c, "macha-action-rebuild.service");
    assert!(log.contains("dry-build failed, nothing was changed"), "{log}");
    assert!(!log.contains("running nixos-rebuild test"), "{log}");
    assert_eq!(c.current_generation().unwrap(), 2);
    assert_eq!(acts[1]["result"], "queued", "{:#}", acts[1]);
    assert_eq!(c.current_generation().unwrap(), 2, "nothing rolled back without a human");

    // The human approves the rollback; it goes to generation 1 and runs it.
    let id = acts[1]["approval_id"].as_i64().unwrap().to_string();
    let (ok, out) = approve(&c, &["approve", &id]);
    assert!(ok, "{out}\n{}", helper_log(&c, "macha-action-rollback.service"));
    assert_eq!(c.current_generation().unwrap(), 1);
    assert_eq!(c.current_system().unwrap(), c.generation_system(1).unwrap());
    let rec = actions(&c).into_iter().rev().find(|r| r["action"] == "rollback_generation").unwrap();
    assert_eq!(rec["before"]["profile_generation"], 2);
    assert_eq!(rec["after"]["profile_generation"], 1);
    assert!(c.exec_ok(&["readlink", SYSTEM_PROFILE]).unwrap().contains("system-1-link"));
}

/// Generation-aware diagnosis end to end: a unit whose file changed in the
/// last switch fails; the incident is linked to that switch, the decision
/// is shown what changed, the rollback is proposed by rule next to the
/// model's proposal and queued even at auto-full; approving it switches
/// back, and the unit runs again. A unit that failed before the switch and
/// did not change in it gets no link and no rollback.
#[test]
fn a_unit_changed_by_the_last_switch_that_fails_gets_the_link_and_the_rollback_that_brings_it_back() {
    let c = host("helpers-suspect", "auto-full", "");
    c.exec_ok(&["mkdir", "-p", "/etc/nixos/units"]).unwrap();
    c.write_file("/etc/nixos/units/web.service", "[Service]\nExecStart=/bin/sleep infinity\n").unwrap();
    c.exec_ok(&["nixos-rebuild", "switch", "--flake", "/etc/nixos#testhost"]).unwrap();
    c.wait_unit_state("web.service", "active", Duration::from_secs(20)).unwrap();
    c.write_file(
        "/etc/nixos/units/web.service",
        "[Service]\nExecStart=/bin/sh -c 'echo \"web: unknown option --turbo\" >&2; exit 2'\nEnvironment=MODE=turbo\n",
    )
    .unwrap();
    let out = c.exec(&["nixos-rebuild", "switch", "--flake", "/etc/nixos#testhost"]).unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.current_generation().unwrap(), 3);
    c.wait_unit_state("web.service", "failed", Duration::from_secs(20)).unwrap();

    let notify = answer(json!([{"kind": "notify_only", "unit": null, "reason": "tell a person"}]));
    model(&c, &[notify.clone(), notify]);
    let report = check_as_macha(&c);
    let incidents = report["incidents"].as_array().unwrap();
    let web = incidents.iter().find(|i| i["fingerprint"] == "unit-failed:web.service").expect("web's incident");
    let decision = &web["decision"];
    let suspect = decision["suspect"].as_str().unwrap_or_else(|| panic!("{report:#}"));
    assert!(suspect.starts_with("suspect change: the switch to generation 3 (from 2)"), "{suspect}");
    assert!(suspect.ends_with("web.service changed in it"), "{suspect}");
    let acts = decision["actions"].as_array().unwrap();
    assert_eq!(acts.len(), 2, "{decision:#}");
    assert_eq!((&acts[1]["action"], &acts[1]["result"]), (&json!("rollback_generation"), &json!("queued")));
    let store_user = incidents.iter().find(|i| i["fingerprint"] == format!("unit-failed:{APP}")).unwrap();
    assert!(store_user["decision"]["suspect"].is_null(), "it failed before the switch: {store_user:#}");
    assert_eq!(store_user["decision"]["actions"].as_array().unwrap().len(), 1, "no rollback: {store_user:#}");

    // The model was shown the link, with what changed in the unit.
    let records = c.exec_ok(&["cat", &format!("{STATE}/decisions.jsonl")]).unwrap();
    let record: Value = records
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["incident"] == "unit-failed:web.service")
        .unwrap();
    assert_eq!(record["trail"]["suspect"]["generation"], 3, "{record:#}");
    let changes = record["trail"]["suspect"]["unit"]["changes"].to_string();
    assert!(changes.contains("MODE=turbo") && changes.contains("--turbo"), "{changes}");

    // `macha generations` shows the change and the incident linked to it.
    let listed = c.exec_ok(&[MACHA, "--config", CONFIG, "generations"]).unwrap();
    assert!(listed.starts_with("generation 3 (running, profile): switched "), "{listed}");
    assert!(listed.contains("    web.service (changed)\n"), "{listed}");
    assert!(listed.contains("  incident linked to this switch: unit-failed:web.service at "), "{listed}");

    // Approved: back to generation 2, whose web.service runs.
    let id = acts[1]["approval_id"].as_i64().unwrap().to_string();
    let (ok, out) = approve(&c, &["approve", &id]);
    assert!(ok, "{out}\n{}", helper_log(&c, "macha-action-rollback.service"));
    assert_eq!(c.current_generation().unwrap(), 2);
    c.wait_unit_state("web.service", "active", Duration::from_secs(20)).unwrap();
}

/// A host at generation 2 whose `web.service` (a unit of the system) runs;
/// the configuration then changes it to `broken` and the model proposes
/// the switch that applies it, queued for a human.
fn about_to_break(name: &str, broken: &str) -> (Container, String) {
    let c = host(name, "auto-full", "\n[nixos]\nflake = \"/etc/nixos#testhost\"\n");
    c.exec_ok(&["mkdir", "-p", "/etc/nixos/units"]).unwrap();
    c.write_file("/etc/nixos/units/web.service", "[Service]\nExecStart=/bin/sleep infinity\n").unwrap();
    c.exec_ok(&["nixos-rebuild", "switch", "--flake", "/etc/nixos#testhost"]).unwrap();
    assert_eq!(c.current_generation().unwrap(), 2);
    c.wait_unit_state("web.service", "active", Duration::from_secs(20)).unwrap();
    c.write_file("/etc/nixos/units/web.service", broken).unwrap();
    model(
        &c,
        &[answer(
            json!([{"kind": "nixos_rebuild", "unit": null, "reason": "apply the new configuration", "mode": "switch"}]),
        )],
    );
    let report = check_as_macha(&c);
    let act = &report["incidents"][0]["decision"]["actions"][0];
    assert_eq!(act["result"], "queued", "{report:#}");
    (c, act["approval_id"].as_i64().unwrap().to_string())
}

/// The records of `actions.jsonl` after the approval of `id` was recorded.
fn records_since_approval(c: &Container, id: &str) -> Vec<Value> {
    let all = actions(c);
    let at = all
        .iter()
        .position(|r| r["outcome"] == "approved" && r["approval_id"] == id.parse::<i64>().unwrap())
        .expect("the approval is recorded");
    all[at..].to_vec()
}

/// A switch macha carried out is health-checked: `web.service`, running
/// before, passes the activation (it starts) but dies three seconds later.
/// Within the watch, macha sees it fail and reverts to generation 2 by
/// itself, where web.service runs again; the audit trail holds the approved
/// switch, its failed health check and the revert; no undo waits, the
/// revert having done it.
#[test]
fn an_approved_switch_that_breaks_a_running_unit_is_reverted_by_macha_and_the_unit_runs_again() {
    let broken = "[Service]\nExecStart=/bin/sh -c 'sleep 3; echo \"web: bad listen address\" >&2; exit 1'\n";
    let (c, id) = about_to_break("helpers-revert", broken);
    let (ok, out) = approve(&c, &["approve", &id]);
    assert!(!ok, "the switch broke the host: the approval ends failed\n{out}");
    assert!(out.contains("health check failed"), "{out}");
    assert!(out.contains("web.service (failed/failed)"), "{out}");
    assert!(out.contains("; reverted: generation 2 is the boot default and runs"), "{out}");
    assert_eq!(c.current_generation().unwrap(), 2);
    assert_eq!(c.current_system().unwrap(), c.generation_system(2).unwrap());
    c.wait_unit_state("web.service", "active", Duration::from_secs(20)).unwrap();
    assert!(c.generation_system(3).is_ok(), "generation 3 was made and is kept for later");

    let records = records_since_approval(&c, &id);
    let steps: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| (r["action"].as_str().unwrap(), r["origin"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("nixos_rebuild", "approval", "approved"),
            ("nixos_rebuild", "approval", "failed"),
            ("rollback_generation", "revert", "succeeded"),
        ],
        "{records:#?}"
    );
    let switch = &records[1];
    assert_eq!(switch["after"]["profile_generation"], 3);
    assert_eq!(switch["health"]["failed"][0]["unit"], "web.service");
    assert_eq!(switch["health"]["failed"][0]["was_active"], true);
    let revert = &records[2];
    assert_eq!(revert["target"], "generation 2");
    assert_eq!(revert["before"]["profile_generation"], 3);
    assert_eq!(revert["after"]["running_generation"], 2);
    assert!(!pending(&c).iter().any(|p| p["kind"] == "rollback_generation"), "{:#?}", pending(&c));
    let log = helper_log(&c, "macha-action-rollback.service");
    assert_eq!(log.matches("macha helper rollback: request").count(), 1, "{log}");
}

/// The new web.service breaks activation itself for whatever comes next:
/// the revert's activation fails. macha records it, escalates once, leaves
/// the rollback queued for a human, and tries nothing again.
#[test]
fn a_revert_that_fails_is_escalated_once_and_never_retried() {
    let broken = "[Service]\nExecStart=/bin/sh -c 'touch /etc/nixos/activation-fails; sleep 3; exit 1'\n";
    let (c, id) = about_to_break("helpers-revert-fails", broken);
    let (ok, out) = approve(&c, &["approve", &id]);
    assert!(!ok, "{out}");
    assert!(out.contains("; the revert failed: macha-action-rollback.service ended with"), "{out}");
    assert_eq!(c.current_generation().unwrap(), 3, "the failed activation left generation 3 in place");

    let records = records_since_approval(&c, &id);
    let steps: Vec<(&str, &str)> =
        records.iter().map(|r| (r["origin"].as_str().unwrap(), r["outcome"].as_str().unwrap())).collect();
    assert_eq!(
        steps,
        [("approval", "approved"), ("approval", "failed"), ("revert", "failed"), ("revert", "escalated")],
        "{records:#?}"
    );
    let undo = pending(&c).into_iter().find(|p| p["kind"] == "rollback_generation").expect("the undo waits");
    assert_eq!(undo["target"], "generation 2");
    assert_eq!(records[3]["approval_id"], undo["id"]);
    assert!(records[3]["detail"].as_str().unwrap().contains("it is not tried again"), "{:#}", records[3]);

    // Nothing tries again: another cycle proposes, it does not revert.
    std::thread::sleep(Duration::from_secs(2));
    check_as_macha(&c);
    let log = helper_log(&c, "macha-action-rollback.service");
    assert_eq!(log.matches("macha helper rollback: request").count(), 1, "{log}");
    assert_eq!(actions(&c).iter().filter(|r| r["origin"] == "revert").count(), 2);
    assert_eq!(c.current_generation().unwrap(), 3);
}
