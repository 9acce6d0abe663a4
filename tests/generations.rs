//! `macha generations` on a system profile the test lays out as NixOS does:
//! generations linked from the profile, each a system whose
//! `etc/systemd/system` links its unit files into the store. Read as any
//! user; no container, nothing run.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::macha_bin;
use serde_json::{json, Value};

/// A system in `root/store` with `units` (name, text), each linked from its
/// `etc/systemd/system` into a store path of its own.
fn system(root: &Path, label: &str, units: &[(&str, &str)]) -> PathBuf {
    let store = root.join("store");
    let sys = store.join(format!("00000000000000000000000000000{label:0>3}-nixos-system-web1-{label}"));
    let dir = sys.join("etc/systemd/system");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in units {
        // The store path of a file is a hash of its content: the same unit is the same path.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(text, &mut hasher);
        let unit = store.join(format!("{:016x}-unit-{name}", std::hash::Hasher::finish(&hasher)));
        std::fs::create_dir_all(&unit).unwrap();
        std::fs::write(unit.join(name), text).unwrap();
        symlink(unit.join(name), dir.join(name)).unwrap();
    }
    sys
}

fn run(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(macha_bin()).arg("--config").arg(config).args(args).output().unwrap()
}

#[test]
fn generations_lists_each_with_its_switch_time_and_what_changed_in_its_units() {
    let dir = tempfile::tempdir().unwrap();
    let nginx =
        |v: &str| format!("[Service]\nExecStart=/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nginx-{v}/bin/nginx\n");
    let one = system(
        dir.path(),
        "1",
        &[("nginx.service", &nginx("1.24.0")), ("cron.service", "[Service]\nExecStart=/bin/cron\n")],
    );
    let two = system(
        dir.path(),
        "2",
        &[("nginx.service", &nginx("1.25.3")), ("cron.service", "[Service]\nExecStart=/bin/cron\n")],
    );
    for (sys, version) in [(&one, "1.7"), (&two, "1.7.1")] {
        std::fs::create_dir_all(sys.join("sw/bin")).unwrap();
        let jq = format!("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-jq-{version}/bin/jq");
        symlink(jq, sys.join("sw/bin/jq")).unwrap();
    }
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    symlink(&one, profiles.join("system-1-link")).unwrap();
    symlink(&two, profiles.join("system-2-link")).unwrap();
    symlink("system-2-link", profiles.join("system")).unwrap();
    symlink(&two, dir.path().join("current-system")).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[nixos]\nprofile = \"{}\"\ncurrent_system = \"{}\"\n",
            dir.path().join("state").display(),
            profiles.join("system").display(),
            dir.path().join("current-system").display()
        ),
    )
    .unwrap();

    let out = run(&config, &["generations"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = said.lines().collect();
    assert!(lines[0].starts_with("generation 2 (running, profile): switched 20"), "{said}");
    assert_eq!(lines[1], "  units changed since generation 1:");
    assert_eq!(lines[2], "    nginx.service (changed)");
    assert_eq!(lines[3], "      package nginx: 1.24.0 -> 1.25.3");
    assert!(said.contains("\n  package jq: 1.7 -> 1.7.1\n"), "the system path's packages: {said}");
    assert!(said.contains("generation 1: switched "), "{said}");
    assert!(said.contains("  the first generation kept: nothing to compare it with"), "{said}");
    assert!(!said.contains("cron.service"), "an unchanged unit is not listed: {said}");

    let out = run(&config, &["generations", "--json", "--last", "1"]);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0]["number"].as_u64(), rows[0]["running"].as_bool()), (Some(2), Some(true)));
    assert_eq!(rows[0]["changed_since"], 1);
    assert_eq!(rows[0]["units"]["units"][0]["changes"][0]["what"], "package");
    assert_eq!(rows[0]["packages"][0]["name"], "jq");

    // Not a NixOS host: said, exit 1.
    std::fs::write(&config, "[nixos]\nprofile = \"/nonexistent/system\"\n").unwrap();
    let out = run(&config, &["generations"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a NixOS host"));
    let out = run(&config, &["generations", "--last", "0"]);
    assert_eq!(out.status.code(), Some(2), "--last is bounded");
}

/// In the test container with the NixOS stand-in: a switch to a generation
/// whose unit file changed breaks the unit; `macha generations`, run there
/// as on a NixOS host, names the change; the rollback brings the unit back.
#[test]
fn on_the_stand_in_a_switch_that_changed_a_unit_is_shown_and_rolled_back() {
    use macha_testbed::container::{BootOptions, Container};
    let bin = macha_bin().parent().unwrap().to_path_buf();
    let c = Container::boot_with(BootOptions::new("generations").bind_ro(&bin, "/opt/macha")).unwrap();
    c.install_nixos_standin().unwrap();
    let switch = |args: &[&str]| {
        let mut argv = vec!["nixos-rebuild"];
        argv.extend_from_slice(args);
        c.exec(&argv).unwrap()
    };
    c.exec_ok(&["mkdir", "-p", "/etc/nixos/units"]).unwrap();
    c.write_file("/etc/nixos/units/web.service", "[Service]\nExecStart=/bin/sleep infinity\nEnvironment=MODE=old\n")
        .unwrap();
    assert!(switch(&["switch", "--flake", "/etc/nixos#testhost"]).status.success());
    c.wait_unit_state("web.service", "active", std::time::Duration::from_secs(20)).unwrap();

    c.write_file("/etc/nixos/units/web.service", "[Service]\nExecStart=/bin/false\nEnvironment=MODE=new\n").unwrap();
    // And a file of /etc the configuration makes.
    c.exec_ok(&["mkdir", "-p", "/etc/nixos/etc"]).unwrap();
    c.write_file("/etc/nixos/etc/web.conf", "listen 8080\n").unwrap();
    let out = switch(&["switch", "--flake", "/etc/nixos#testhost"]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the following units failed: web.service"));
    c.wait_unit_state("web.service", "failed", std::time::Duration::from_secs(20)).unwrap();

    let out = c.exec(&["/opt/macha/macha", "generations", "--json", "--last", "2"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((rows[0]["number"].as_u64(), rows[0]["running"].as_bool()), (Some(3), Some(true)), "{rows:#?}");
    assert_eq!(rows[0]["changed_since"], 2);
    let units = rows[0]["units"]["units"].as_array().unwrap();
    assert_eq!(units.len(), 1, "{units:#?}");
    assert_eq!((units[0]["unit"].as_str(), units[0]["kind"].as_str()), (Some("web.service"), Some("changed")));
    let said = units[0]["changes"].to_string();
    assert!(said.contains("/bin/sleep infinity") && said.contains("/bin/false") && said.contains("MODE=new"), "{said}");
    assert_eq!(rows[1]["units"]["units"][0]["kind"], "added", "generation 2 added the unit: {rows:#?}");
    assert_eq!(rows[0]["system"]["etc"], json!([{"path": "web.conf", "kind": "added"}]), "{rows:#?}");
    assert!(rows[1]["system"].get("etc").is_none(), "{rows:#?}");
    let said = c.exec_ok(&["/opt/macha/macha", "generations", "--last", "1"]).unwrap();
    assert!(said.contains("\n  /etc/web.conf (added)\n"), "{said}");

    assert!(switch(&["switch", "--rollback"]).status.success());
    c.wait_unit_state("web.service", "active", std::time::Duration::from_secs(20)).unwrap();
}
