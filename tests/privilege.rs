//! The least-privilege layer: `module/polkit/50-macha-autonomous.rules`
//! installed in a real systemd 252 + polkitd 122 container, exercised as the
//! `macha` user with plain `busctl` calls (macha itself is bypassed, so what
//! is refused here is refused by polkit). Every verdict is checked against
//! the unit's real state (InvocationID, ActiveState), not only the exit code.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use macha::gate::BUILT_IN_PROTECTED;
use macha_testbed::container::Container;

const RULE_FILE: &str = "module/polkit/50-macha-autonomous.rules";
const RULE_PATH: &str = "/etc/polkit-1/rules.d/50-macha-autonomous.rules";
const MACHA: &str = "macha";
const ROOT: &str = "root";

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";

/// Fails with exit 3 at once; stays `failed`.
const FAILING: &str = "macha-test-failing.service";
/// Runs until stopped.
const RUNNING: &str = "macha-test-running.service";
const HELPER: &str = "macha-action-gc.service";

const FAILING_UNIT: &str = "[Unit]
Description=ordinary unit that fails (privilege test)
StartLimitIntervalSec=0

[Service]
ExecStart=/bin/sh -c 'exit 3'
";

const RUNNING_UNIT: &str = "[Unit]
Description=ordinary unit that runs (privilege test)
StartLimitIntervalSec=0

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
";

/// A oneshot that stays `active` once it ran, so a start and a refused stop
/// both show in ActiveState (a finished oneshot would be garbage-collected).
const ONESHOT_UNIT: &str = "[Unit]
Description=helper-like oneshot (privilege test)

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
";

/// The outcome of one D-Bus call made with busctl inside the container.
struct Call {
    ok: bool,
    text: String,
}

impl Call {
    fn refused(&self) -> bool {
        !self.ok && (self.text.contains("Access denied") || self.text.contains("Interactive authentication required"))
    }
}

/// `busctl call org.freedesktop.systemd1 PATH IFACE METHOD [SIG ARGS...]` as
/// `user` (through `runuser`, no polkit agent: nothing can be answered
/// interactively).
fn call(c: &Container, user: &str, path: &str, iface: &str, method: &str, args: &[&str]) -> Call {
    let mut argv = vec!["runuser", "-u", user, "--", "busctl", "call", DEST, path, iface, method];
    argv.extend_from_slice(args);
    let out: Output = c.exec(&argv).expect("run busctl");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).trim().to_string();
    eprintln!("$ [{user}] {method} {} -> {} {text}", args.join(" "), out.status);
    Call { ok: out.status.success(), text }
}

fn manager(c: &Container, user: &str, method: &str, args: &[&str]) -> Call {
    call(c, user, MANAGER_PATH, MANAGER, method, args)
}

fn restart(c: &Container, user: &str, unit: &str) -> Call {
    manager(c, user, "RestartUnit", &["ss", unit, "replace"])
}

fn start(c: &Container, user: &str, unit: &str) -> Call {
    manager(c, user, "StartUnit", &["ss", unit, "replace"])
}

/// The D-Bus object path systemd gives a unit (`sshd.service` ->
/// `/org/freedesktop/systemd1/unit/sshd_2eservice`).
fn unit_path(unit: &str) -> String {
    let mut p = String::from("/org/freedesktop/systemd1/unit/");
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphanumeric() && !(i == 0 && b.is_ascii_digit()) {
            p.push(b as char);
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    p
}

fn prop(c: &Container, unit: &str, name: &str) -> String {
    c.unit_property(unit, name).unwrap()
}

/// (InvocationID, ActiveState): what a refused call must leave unchanged.
fn state(c: &Container, unit: &str) -> (String, String) {
    (prop(c, unit, "InvocationID"), prop(c, unit, "ActiveState"))
}

/// A refused call queues no job; give systemd a moment anyway before
/// comparing states, so a wrongly accepted job would have shown.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

fn rule_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(RULE_FILE)).expect("read the rule file")
}

/// Boots a container with the rule installed for user `macha`, an ordinary
/// failed unit, an ordinary running unit and the helper unit.
fn setup(name: &str) -> Container {
    let c = Container::boot(name).expect("boot the test container");
    c.exec_ok(&["useradd", "--system", "--groups", "systemd-journal", MACHA]).unwrap();
    c.write_file(RULE_PATH, rule_text()).unwrap();
    // polkit is D-Bus activated (static); restart makes it (re)read the rules.
    c.exec_ok(&["systemctl", "restart", "polkit.service"]).unwrap();
    assert_eq!(prop(&c, "polkit.service", "ActiveState"), "active");
    let status = c.exec_ok(&["systemctl", "status", "--no-pager", "polkit.service"]).unwrap();
    assert!(status.contains("polkitd"), "{status}");
    let log = c.exec_ok(&["journalctl", "-u", "polkit.service", "--no-pager", "-o", "cat"]).unwrap();
    assert!(!log.contains("Error"), "polkitd reported an error loading the rules:\n{log}");

    c.write_file(&format!("/etc/systemd/system/{FAILING}"), FAILING_UNIT).unwrap();
    c.write_file(&format!("/etc/systemd/system/{RUNNING}"), RUNNING_UNIT).unwrap();
    c.install_unit(HELPER, ONESHOT_UNIT).unwrap();
    c.start_unit(FAILING).unwrap();
    c.start_unit(RUNNING).unwrap();
    c.wait_unit_state(FAILING, "failed", Duration::from_secs(20)).unwrap();
    c.wait_unit_state(RUNNING, "active", Duration::from_secs(20)).unwrap();
    c
}

/// The JavaScript array between the generator markers, as a list of names.
fn protected_in_rule(text: &str) -> Vec<String> {
    let begin = text.find("// BEGIN GENERATED: PROTECTED_UNITS").expect("begin marker");
    let end = text.find("// END GENERATED: PROTECTED_UNITS").expect("end marker");
    let block = &text[begin..end];
    let array = &block[block.find('[').unwrap() + 1..block.rfind(']').unwrap()];
    array.split(',').map(|s| s.trim().trim_matches('"').to_string()).filter(|s| !s.is_empty()).collect()
}

#[test]
fn the_rule_carries_the_built_in_protected_list() {
    let listed = protected_in_rule(&rule_text());
    let built_in: Vec<String> = BUILT_IN_PROTECTED.iter().map(|s| s.to_string()).collect();
    assert_eq!(listed, built_in, "the rule's PROTECTED_UNITS must equal gate::BUILT_IN_PROTECTED");
}

#[test]
fn macha_may_restart_and_reset_an_ordinary_unit() {
    let c = setup("priv-allowed");

    let before = prop(&c, FAILING, "InvocationID");
    let r = restart(&c, MACHA, FAILING);
    assert!(r.ok, "restart of an ordinary unit refused: {}", r.text);
    c.wait_for(Duration::from_secs(10), || prop(&c, FAILING, "InvocationID") != before).unwrap();
    c.wait_unit_state(FAILING, "failed", Duration::from_secs(10)).unwrap();

    let r = manager(&c, MACHA, "ResetFailedUnit", &["s", FAILING]);
    assert!(r.ok, "reset-failed refused: {}", r.text);
    assert_eq!(prop(&c, FAILING, "ActiveState"), "inactive", "reset-failed cleared the failed state");

    // The same verbs through the unit's object path.
    c.start_unit(FAILING).unwrap();
    c.wait_unit_state(FAILING, "failed", Duration::from_secs(10)).unwrap();
    let before = prop(&c, FAILING, "InvocationID");
    let r = call(&c, MACHA, &unit_path(FAILING), UNIT, "Restart", &["s", "replace"]);
    assert!(r.ok, "Unit.Restart refused: {}", r.text);
    c.wait_for(Duration::from_secs(10), || prop(&c, FAILING, "InvocationID") != before).unwrap();
    c.wait_unit_state(FAILING, "failed", Duration::from_secs(10)).unwrap();
    let r = call(&c, MACHA, &unit_path(FAILING), UNIT, "ResetFailed", &[]);
    assert!(r.ok, "Unit.ResetFailed refused: {}", r.text);
    assert_eq!(prop(&c, FAILING, "ActiveState"), "inactive");

    // A running ordinary unit may be restarted too.
    let before = prop(&c, RUNNING, "InvocationID");
    assert!(restart(&c, MACHA, RUNNING).ok);
    c.wait_for(Duration::from_secs(10), || prop(&c, RUNNING, "InvocationID") != before).unwrap();
    c.wait_unit_state(RUNNING, "active", Duration::from_secs(10)).unwrap();
}

#[test]
fn protected_units_and_their_aliases_are_refused() {
    let c = setup("priv-protected");
    // On Debian sshd.service is an alias of ssh.service.
    assert_eq!(prop(&c, "sshd.service", "Id"), "ssh.service");
    assert_eq!(prop(&c, "ssh.service", "ActiveState"), "active");

    // Templates are covered through their instances, below.
    for &unit in BUILT_IN_PROTECTED.iter().filter(|u| !u.contains("@.")) {
        let exists = prop(&c, unit, "LoadState") == "loaded";
        let id = prop(&c, unit, "Id");
        let before = state(&c, &id);
        let by_name = restart(&c, MACHA, unit);
        let by_path = call(&c, MACHA, &unit_path(unit), UNIT, "Restart", &["s", "replace"]);
        let reset = manager(&c, MACHA, "ResetFailedUnit", &["s", unit]);
        settle();
        for (how, r) in [("RestartUnit", &by_name), ("Unit.Restart", &by_path), ("ResetFailedUnit", &reset)] {
            assert!(!r.ok, "{how} {unit} succeeded as macha: {}", r.text);
            // Manager.ResetFailedUnit looks the unit up without loading it:
            // a unit systemd has not loaded is "not loaded" before polkit is asked.
            if exists && !(how == "ResetFailedUnit" && r.text.contains("not loaded")) {
                assert!(r.refused(), "{how} {unit} (exists) not refused by polkit: {}", r.text);
            } else {
                assert!(
                    r.refused() || r.text.contains("not found") || r.text.contains("not loaded"),
                    "{how} {unit} (absent): {}",
                    r.text
                );
            }
        }
        assert_eq!(state(&c, &id), before, "{unit} ({id}) changed after refused calls");
    }

    // An instance of a protected template is protected: Debian's ssh@.service
    // serves socket-activated connections, one instance each.
    for instance in ["ssh@7-10.0.0.1:22-10.0.0.2:50000.service", "systemd-journald@evil.service"] {
        let r = restart(&c, MACHA, instance);
        settle();
        assert!(!r.ok && r.refused(), "RestartUnit {instance} as macha: {}", r.text);
        assert_ne!(prop(&c, instance, "ActiveState"), "active", "{instance} was started");
    }

    // Restarting a unit restarts what Requires it without a second polkit
    // check (sysinit.target -> ssh.service); an inactive unit's restart is a
    // start (poweroff). Neither may be reachable.
    let ssh_before = state(&c, "ssh.service");
    for unit in [
        "sysinit.target",
        "basic.target",
        "multi-user.target",
        "poweroff.target",
        "reboot.target",
        "rescue.target",
        "emergency.target",
        "systemd-poweroff.service",
        "systemd-reboot.service",
        "systemd-halt.service",
        "rescue.service",
        "emergency.service",
        "debug-shell.service",
        "system.slice",
    ] {
        let before = state(&c, unit);
        let r = restart(&c, MACHA, unit);
        assert!(r.refused(), "restart of {unit} not refused by polkit: {}", r.text);
        settle();
        assert_eq!(state(&c, unit), before, "{unit} changed");
    }
    assert_eq!(state(&c, "ssh.service"), ssh_before, "ssh.service was restarted");
    let system = c.exec(&["systemctl", "is-system-running"]).unwrap();
    let system = String::from_utf8_lossy(&system.stdout).trim().to_string();
    assert!(system == "running" || system == "degraded", "the system is {system}");
}

#[test]
fn other_verbs_and_manager_calls_are_refused() {
    let c = setup("priv-verbs");
    let running = state(&c, RUNNING);
    assert_eq!(running.1, "active");

    for (method, args) in [
        ("StopUnit", vec!["ss", RUNNING, "replace"]),
        ("KillUnit", vec!["ssi", RUNNING, "all", "15"]),
        ("TryRestartUnit", vec!["ss", RUNNING, "replace"]),
        ("ReloadOrRestartUnit", vec!["ss", RUNNING, "replace"]),
        ("ReloadOrTryRestartUnit", vec!["ss", RUNNING, "replace"]),
        ("ReloadUnit", vec!["ss", RUNNING, "replace"]),
        ("SetUnitProperties", vec!["sba(sv)", RUNNING, "true", "1", "CPUWeight", "t", "50"]),
    ] {
        let r = manager(&c, MACHA, method, &args);
        assert!(r.refused(), "{method} {RUNNING} not refused by polkit: {}", r.text);
    }
    let r = call(&c, MACHA, &unit_path(RUNNING), UNIT, "Stop", &["s", "replace"]);
    assert!(r.refused(), "Unit.Stop not refused: {}", r.text);
    settle();
    assert_eq!(state(&c, RUNNING), running, "the running unit was touched");
    assert_eq!(prop(&c, RUNNING, "CPUWeight"), prop(&c, "ssh.service", "CPUWeight"));

    // Start of an ordinary (non-helper) unit.
    let failing = state(&c, FAILING);
    let r = start(&c, MACHA, FAILING);
    assert!(r.refused(), "StartUnit {FAILING} not refused: {}", r.text);
    let r = call(&c, MACHA, &unit_path(FAILING), UNIT, "Start", &["s", "replace"]);
    assert!(r.refused(), "Unit.Start {FAILING} not refused: {}", r.text);
    settle();
    assert_eq!(state(&c, FAILING), failing);

    // Unit files and the manager itself.
    assert_eq!(prop(&c, RUNNING, "UnitFileState"), "disabled");
    let r = manager(&c, MACHA, "EnableUnitFiles", &["asbb", "1", RUNNING, "false", "false"]);
    assert!(r.refused(), "EnableUnitFiles not refused: {}", r.text);
    let r = manager(&c, MACHA, "MaskUnitFiles", &["asbb", "1", FAILING, "false", "false"]);
    assert!(r.refused(), "MaskUnitFiles not refused: {}", r.text);
    assert_eq!(prop(&c, RUNNING, "UnitFileState"), "disabled");
    assert_eq!(prop(&c, FAILING, "UnitFileState"), "static");

    c.write_file(&format!("/etc/systemd/system/{RUNNING}"), RUNNING_UNIT.replace("runs", "runs, edited")).unwrap();
    assert_eq!(prop(&c, RUNNING, "NeedDaemonReload"), "yes");
    let r = manager(&c, MACHA, "Reload", &[]);
    assert!(r.refused(), "Reload (daemon-reload) not refused: {}", r.text);
    settle();
    assert_eq!(prop(&c, RUNNING, "NeedDaemonReload"), "yes", "the daemon was reloaded");

    // manage-units without a unit: no unit detail, never allowed.
    let r = manager(&c, MACHA, "ResetFailed", &[]);
    assert!(r.refused(), "Manager.ResetFailed not refused: {}", r.text);
    assert_eq!(prop(&c, FAILING, "ActiveState"), "failed");
    let r = manager(
        &c,
        MACHA,
        "StartTransientUnit",
        &[
            "ssa(sv)a(sa(sv))",
            "macha-transient.service",
            "fail",
            "1",
            "ExecStart",
            "a(sasb)",
            "1",
            "/bin/true",
            "1",
            "/bin/true",
            "false",
            "0",
        ],
    );
    assert!(r.refused(), "StartTransientUnit not refused: {}", r.text);
    assert_eq!(prop(&c, "macha-transient.service", "LoadState"), "not-found");
}

#[test]
fn only_helper_units_may_be_started() {
    let c = setup("priv-helpers");
    let lookalikes = ["macha-actionX.service", "evil-macha-action-gc.service", "macha-action-Gc.service"];
    for unit in lookalikes {
        c.write_file(&format!("/etc/systemd/system/{unit}"), ONESHOT_UNIT).unwrap();
    }
    c.install_unit("macha-action-gc@.service", ONESHOT_UNIT).unwrap();

    assert_eq!(prop(&c, HELPER, "ActiveState"), "inactive");
    let r = start(&c, MACHA, HELPER);
    assert!(r.ok, "start of the helper refused: {}", r.text);
    c.wait_unit_state(HELPER, "active", Duration::from_secs(10)).unwrap();
    let helper = state(&c, HELPER);
    assert!(!helper.0.is_empty());

    for (method, args) in [("StopUnit", vec!["ss", HELPER, "replace"]), ("KillUnit", vec!["ssi", HELPER, "all", "15"])]
    {
        let r = manager(&c, MACHA, method, &args);
        assert!(r.refused(), "{method} on the helper not refused: {}", r.text);
    }
    settle();
    assert_eq!(state(&c, HELPER), helper, "the helper was stopped");

    for unit in lookalikes.iter().copied().chain(["macha-action-gc@x.service"]) {
        let r = start(&c, MACHA, unit);
        assert!(r.refused(), "start of {unit} not refused by polkit: {}", r.text);
        settle();
        assert_eq!(prop(&c, unit, "ActiveState"), "inactive", "{unit} was started");
    }
    // Not even a valid unit name: systemd rejects it before polkit is asked.
    let r = start(&c, MACHA, "macha-action-gc.service.evil");
    assert!(!r.ok, "{}", r.text);
}

#[test]
fn other_users_get_nothing_and_root_everything() {
    let c = setup("priv-users");
    c.exec_ok(&["useradd", "nobody2"]).unwrap();

    let failing = state(&c, FAILING);
    for r in [
        restart(&c, "nobody2", FAILING),
        manager(&c, "nobody2", "ResetFailedUnit", &["s", FAILING]),
        start(&c, "nobody2", HELPER),
    ] {
        assert!(r.refused(), "nobody2 was not refused: {}", r.text);
    }
    settle();
    assert_eq!(state(&c, FAILING), failing);
    assert_eq!(prop(&c, HELPER, "ActiveState"), "inactive");

    // root bypasses polkit: the rule takes nothing away from it.
    let ssh = prop(&c, "ssh.service", "InvocationID");
    assert!(restart(&c, ROOT, "sshd.service").ok);
    c.wait_for(Duration::from_secs(10), || prop(&c, "ssh.service", "InvocationID") != ssh).unwrap();
    c.wait_unit_state("ssh.service", "active", Duration::from_secs(10)).unwrap();
    assert!(manager(&c, ROOT, "StopUnit", &["ss", RUNNING, "replace"]).ok);
    c.wait_unit_state(RUNNING, "inactive", Duration::from_secs(10)).unwrap();
    assert!(start(&c, ROOT, FAILING).ok);
    c.wait_for(Duration::from_secs(10), || prop(&c, FAILING, "InvocationID") != failing.0).unwrap();
    assert!(manager(&c, ROOT, "EnableUnitFiles", &["asbb", "1", RUNNING, "false", "false"]).ok);
    assert_eq!(prop(&c, RUNNING, "UnitFileState"), "enabled");
    assert!(manager(&c, ROOT, "Reload", &[]).ok);
}

/// What polkit is told, measured: a logging rule ahead of macha's records
/// the action, `unit` and `verb` of each check (polkitd runs without
/// `--no-debug` so that `polkit.log` reaches the journal).
#[test]
fn polkit_sees_the_primary_unit_name_and_the_job_verb() {
    let c = setup("priv-measure");
    c.write_file(
        "/etc/polkit-1/rules.d/00-measure.rules",
        "polkit.addRule(function (action, subject) {\n\
         \x20   polkit.log(\"MEASURE \" + action.id + \" user=\" + subject.user + \" unit=\" +\n\
         \x20       action.lookup(\"unit\") + \" verb=\" + action.lookup(\"verb\"));\n\
         });\n",
    )
    .unwrap();
    c.write_file(
        "/etc/systemd/system/polkit.service.d/debug.conf",
        "[Service]\nExecStart=\nExecStart=/usr/lib/polkit-1/polkitd\n",
    )
    .unwrap();
    // An alias that systemd has not loaded yet.
    c.write_file("/etc/systemd/system/macha-test-real.service", ONESHOT_UNIT).unwrap();
    c.exec_ok(&["ln", "-s", "macha-test-real.service", "/etc/systemd/system/macha-test-alias.service"]).unwrap();
    c.exec_ok(&["systemctl", "daemon-reload"]).unwrap();
    c.exec_ok(&["systemctl", "restart", "polkit.service"]).unwrap();

    let measured = |f: &dyn Fn() -> Call| -> String {
        let cursor = c.exec_ok(&["journalctl", "-n", "0", "--show-cursor", "--no-pager"]).unwrap();
        let cursor = cursor.lines().find_map(|l| l.strip_prefix("-- cursor: ")).unwrap().trim().to_string();
        f();
        let mut line = String::new();
        c.wait_for(Duration::from_secs(5), || {
            let log = c.exec_ok(&["journalctl", "--after-cursor", &cursor, "-o", "cat", "--no-pager"]).unwrap();
            match log.lines().find(|l| l.contains("MEASURE org.freedesktop.systemd1.manage-units")) {
                Some(l) => {
                    line = l[l.find("MEASURE").unwrap()..].to_string();
                    true
                }
                None => false,
            }
        })
        .unwrap_or_else(|e| {
            let log = c.exec_ok(&["journalctl", "--after-cursor", &cursor, "-o", "short-precise", "--no-pager"]);
            panic!("{e:#}: no manage-units check logged after {cursor}:\n{}", log.unwrap_or_default())
        });
        eprintln!("  {line}");
        line
    };
    let units = |unit: &str, verb: &str| format!("user=macha unit={unit} verb={verb}");

    let alias_by_name = measured(&|| restart(&c, MACHA, "sshd.service"));
    assert!(alias_by_name.ends_with(&units("ssh.service", "restart")), "{alias_by_name}");
    let alias_by_path = measured(&|| call(&c, MACHA, &unit_path("sshd.service"), UNIT, "Restart", &["s", "replace"]));
    assert!(alias_by_path.ends_with(&units("ssh.service", "restart")), "{alias_by_path}");
    let unloaded_alias = measured(&|| restart(&c, MACHA, "macha-test-alias.service"));
    assert!(unloaded_alias.ends_with(&units("macha-test-real.service", "restart")), "{unloaded_alias}");
    for (method, args, verb) in [
        ("ResetFailedUnit", vec!["s", FAILING], "reset-failed"),
        ("StartUnit", vec!["ss", FAILING, "replace"], "start"),
        ("StopUnit", vec!["ss", RUNNING, "replace"], "stop"),
        ("KillUnit", vec!["ssi", RUNNING, "all", "15"], "kill"),
        ("TryRestartUnit", vec!["ss", RUNNING, "replace"], "try-restart"),
        ("ReloadOrRestartUnit", vec!["ss", RUNNING, "replace"], "reload-or-restart"),
    ] {
        let line = measured(&|| manager(&c, MACHA, method, &args));
        let unit = args[1];
        assert!(line.ends_with(&units(unit, verb)), "{method}: {line}");
    }
    // Absent units are checked by polkit under the name asked for.
    let absent = measured(&|| restart(&c, MACHA, "NetworkManager.service"));
    assert!(absent.ends_with(&units("NetworkManager.service", "restart")), "{absent}");
    // Calls without a unit carry no details.
    let none = measured(&|| manager(&c, MACHA, "ResetFailed", &[]));
    assert!(none.ends_with(&units("undefined", "undefined")), "{none}");
}
