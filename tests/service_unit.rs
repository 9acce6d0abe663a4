//! The service exactly as the NixOS module renders it: the files in
//! `tests/nix/rendered/` are what `tests/nix/eval.sh` got from evaluating
//! `module/` with nixpkgs' lib (that script checks they are still current).
//! Here the configuration must be one the daemon accepts, and the unit, with
//! all its hardening, must run the daemon under the container's systemd 252:
//! `Type=notify` reaching `active`, the Gotify token through
//! `LoadCredential=`, watchdog pings, a repair through the generated polkit
//! rule, a clean stop, and a `systemd-analyze security` exposure of at most
//! 2.5.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{build_double_bin, macha_bin};
use macha::config::{AutonomyLevel, Config};
use macha_testbed::container::{BootOptions, Container};
use serde_json::{json, Value};

const UNIT: &str = "macha-autonomous.service";
const APP: &str = "app.service";
/// Where the container sees the directory holding the built `macha`, as the
/// package's `bin/`: the unit's `@package@/bin/macha` becomes `/opt/macha/bin/macha`.
const PACKAGE: &str = "/opt/macha";
const CONFIG: &str = "/etc/macha-autonomous/config.toml";
/// The highest `systemd-analyze security` exposure accepted for the unit.
const MAX_EXPOSURE: f64 = 2.5;

fn rendered(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nix/rendered").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rendered_settings() -> Value {
    serde_json::from_str(&rendered("config.json")).unwrap()
}

fn to_toml(settings: &Value) -> String {
    toml::to_string(&toml::Value::try_from(settings).unwrap()).unwrap()
}

#[test]
fn the_rendered_configuration_is_accepted_and_says_what_the_options_set() {
    let config = Config::parse(&to_toml(&rendered_settings())).unwrap_or_else(|e| panic!("the daemon refuses it: {e}"));
    assert_eq!(config.autonomy_level, AutonomyLevel::AutoSafe);
    assert_eq!(config.check_interval, 120);
    assert_eq!(config.ollama.model, "qwen2.5:32b");
    assert_eq!(config.ollama.url, "http://10.0.0.7:11434");
    let protected: Vec<String> = config.protected_units.iter().map(|u| u.to_string()).collect();
    assert_eq!(protected, ["postgresql.service", "backup.timer"]);
    assert_eq!(config.act.approver_group, "ops");
    assert_eq!(config.act.cooldown, 600);
    assert_eq!(config.detect.disk_full_percent, 85);
    assert_eq!(config.gotify.url.as_deref(), Some("https://gotify.example.org"));
    assert_eq!(config.gotify.token_file, Some(PathBuf::from("/run/credentials/macha-autonomous.service/gotify-token")));
    assert_eq!(config.nixos.flake.as_deref(), Some("/etc/nixos#web1"));
    // The module's fixed keys agree with the unit: its state directory and name.
    assert_eq!(config.state_dir, PathBuf::from("/var/lib/macha-autonomous"));
    assert_eq!(config.service_unit.to_string(), UNIT);
    assert!(rendered(UNIT).contains("StateDirectory=macha-autonomous\n"));
}

/// The container with the module's files in place: the user, the polkit
/// rule, the helper units, the unit (with a 3 s watchdog instead of 60 s, to
/// see it work within the test), the Ollama double, a failing unit, and the
/// rendered configuration pointed at the double.
fn setup() -> Container {
    let bin = macha_bin().parent().unwrap().to_path_buf();
    build_double_bin();
    let c = Container::boot_with(BootOptions::new("module").bind_ro(&bin, &format!("{PACKAGE}/bin"))).unwrap();
    c.exec_ok(&["useradd", "--system", "--groups", "systemd-journal", "macha"]).unwrap();
    c.write_file("/etc/polkit-1/rules.d/50-macha-autonomous.rules", rendered("50-macha-autonomous.rules")).unwrap();
    c.exec_ok(&["systemctl", "restart", "polkit.service"]).unwrap();
    for helper in ["gc", "rebuild", "rollback", "vacuum-journal"] {
        let name = format!("macha-action-{helper}.service");
        let text = rendered(&name).replace("@package@", PACKAGE).replace("@config@", CONFIG);
        c.install_unit(&name, &text).unwrap();
    }
    c.install_unit(
        "ollama.service",
        &format!("[Service]\nExecStart={PACKAGE}/bin/ollama-double --listen 127.0.0.1:11434 --model qwen2.5:32b\n"),
    )
    .unwrap();
    c.exec_ok(&["systemctl", "start", "ollama.service"]).unwrap();
    common::failing_app(&c, APP);

    let mut settings = rendered_settings();
    settings["ollama"]["url"] = json!("http://127.0.0.1:11434");
    settings["check_interval"] = json!(2);
    // Incidents come from the container's units, not this machine's disk.
    settings["detect"] = json!({"disk_full_percent": 100, "memory_pressure_percent": 100});
    settings["act"]["settle_time"] = json!(1);
    c.write_file(CONFIG, to_toml(&settings)).unwrap();
    // The token stays root's; the service reads its credential copy.
    c.write_file("/run/secrets/gotify-token", "AbCdEf0123456789\n").unwrap();
    c.exec_ok(&["chmod", "0600", "/run/secrets/gotify-token"]).unwrap();

    let unit = rendered(UNIT).replace("@package@", PACKAGE).replace("@config@", CONFIG);
    assert!(!unit.contains("@package@") && !unit.contains("@config@"), "a placeholder is left in the unit:\n{unit}");
    c.install_unit(UNIT, &unit).unwrap();
    c.write_file(&format!("/etc/systemd/system/{UNIT}.d/watchdog.conf"), "[Service]\nWatchdogSec=3s\n").unwrap();
    c.exec_ok(&["systemctl", "daemon-reload"]).unwrap();
    c
}

fn journal(c: &Container) -> String {
    c.exec_ok(&["journalctl", "-u", UNIT, "-o", "cat", "--no-pager"]).unwrap_or_default()
}

#[test]
fn the_rendered_unit_runs_the_daemon_hardened_under_systemd() {
    let c = setup();
    let invocation = c.unit_property(APP, "InvocationID").unwrap();
    c.write_file("/run/app.ok", "").unwrap();

    // Type=notify: `start` returns once the daemon sent READY=1.
    if let Err(e) = c.exec_ok(&["systemctl", "start", UNIT]) {
        panic!("{e}\n{}", journal(&c));
    }
    assert_eq!(c.unit_property(UNIT, "ActiveState").unwrap(), "active", "{}", journal(&c));
    let pid = c.unit_property(UNIT, "MainPID").unwrap();
    let owner = c.exec_ok(&["stat", "-c", "%U", &format!("/proc/{pid}")]).unwrap();
    assert_eq!(owner.trim(), "macha", "the daemon runs as macha");

    // It repairs the failed unit through the generated polkit rule.
    let repaired = c.wait_for(Duration::from_secs(40), || {
        c.unit_property(APP, "ActiveState").unwrap() == "active"
            && c.unit_property(APP, "InvocationID").unwrap() != invocation
    });
    repaired.unwrap_or_else(|e| panic!("{e}\n{}", journal(&c)));
    c.wait_for(Duration::from_secs(20), || c.unit_property(UNIT, "StatusText").unwrap().starts_with("idle"))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", c.unit_property(UNIT, "StatusText").unwrap(), journal(&c)));

    // Watchdog pings: three watchdog periods later, the same process, never
    // restarted, and systemd saw a ping recently.
    let pinged = || c.unit_property(UNIT, "WatchdogTimestampMonotonic").unwrap().parse::<u64>().unwrap();
    let first = pinged();
    std::thread::sleep(Duration::from_secs(9));
    assert!(pinged() > first, "no watchdog ping reached systemd");
    assert_eq!(c.unit_property(UNIT, "MainPID").unwrap(), pid, "{}", journal(&c));
    assert_eq!(c.unit_property(UNIT, "NRestarts").unwrap(), "0");

    // The credential was read: the daemon announced notifications.
    let log = journal(&c);
    assert!(log.contains("notifications on channel=\"gotify\""), "{log}");
    assert!(!log.contains("Permission denied") && !log.contains("Operation not permitted"), "{log}");

    let security = c.exec(&["systemd-analyze", "security", "--no-pager", UNIT]).unwrap();
    let report = String::from_utf8_lossy(&security.stdout).into_owned();
    eprintln!("{report}");
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for"))
        .and_then(|(_, rest)| rest.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(exposure <= MAX_EXPOSURE, "exposure {exposure} is above {MAX_EXPOSURE}:\n{report}");

    c.exec_ok(&["systemctl", "stop", UNIT]).unwrap();
    assert_eq!(c.unit_property(UNIT, "ActiveState").unwrap(), "inactive");
    assert_eq!(c.unit_property(UNIT, "Result").unwrap(), "success", "{}", journal(&c));
}
