//! Tests of the container test bed itself: a real systemd boots, several can
//! run at once, the host sees real unit state and reads the journal files,
//! and nothing survives a dropped container. Needs root.

use std::process::Command;
use std::thread;
use std::time::Duration;

use macha_testbed::container::{BootOptions, Container};

/// Runs the host's journalctl on the container's journal directory.
fn host_journal(c: &Container, args: &[&str]) -> String {
    let out = Command::new("journalctl")
        .arg("-D")
        .arg(c.journal_dir())
        .args(["--no-pager", "-o", "cat"])
        .args(args)
        .output()
        .expect("run host journalctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True if some process runs `systemd-nspawn ... -M NAME ...`.
fn nspawn_running(name: &str) -> bool {
    let out = Command::new("ps").args(["-eo", "args"]).output().expect("run ps");
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        l.contains("systemd-nspawn") && words.windows(2).any(|w| w[0] == "-M" && w[1] == name)
    })
}

#[test]
fn boots_to_running_with_ssh_active() {
    let c = Container::boot("boot").unwrap();
    let state = c.exec(&["systemctl", "is-system-running"]).unwrap();
    let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
    assert!(state == "running" || state == "degraded", "system state {state:?}");
    assert_eq!(c.unit_property("ssh.service", "ActiveState").unwrap(), "active");
    assert_eq!(c.exec_ok(&["hostname"]).unwrap().trim(), c.name());
    assert!(c.root().join("run/dbus/system_bus_socket").exists());
    assert_eq!(c.bus_address(), format!("unix:path=/proc/{}/root/run/dbus/system_bus_socket", c.init_pid()));

    // Checked variants report stderr.
    let err = c.sh_ok("echo oops >&2; exit 4").unwrap_err().to_string();
    assert!(err.contains("oops") && err.contains("exit status: 4"), "{err}");
}

#[test]
fn two_containers_at_once_are_independent() {
    let boot = |hint: &'static str| thread::spawn(move || Container::boot(hint).unwrap());
    let (a, b) = (boot("twin-a"), boot("twin-b"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_ne!(a.init_pid(), b.init_pid());
    for c in [&a, &b] {
        assert_eq!(c.unit_property("ssh.service", "ActiveState").unwrap(), "active");
    }
    // Separate file systems (volatile overlays of the same rootfs)...
    a.write_file("/etc/only-in-a", "a\n").unwrap();
    assert!(a.exec(&["test", "-e", "/etc/only-in-a"]).unwrap().status.success());
    assert!(!b.exec(&["test", "-e", "/etc/only-in-a"]).unwrap().status.success());
    // ...separate machine ids, hence separate journal directories...
    let id = |c: &Container| c.exec_ok(&["cat", "/etc/machine-id"]).unwrap().trim().to_string();
    assert_ne!(id(&a), id(&b));
    assert!(a.journal_dir().join(id(&a)).join("system.journal").exists());
    // ...and separate systemd managers.
    a.install_unit("only-a.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n").unwrap();
    a.start_unit("only-a.service").unwrap();
    a.wait_unit_state("only-a.service", "active", Duration::from_secs(10)).unwrap();
    assert_eq!(b.unit_property("only-a.service", "LoadState").unwrap(), "not-found");
}

#[test]
fn failing_unit_is_failed_and_its_stderr_is_in_the_journal_read_from_the_host() {
    let c = Container::boot("fail").unwrap();
    c.install_unit(
        "boom.service",
        "[Unit]\nDescription=fails on purpose\n[Service]\nExecStart=/bin/sh -c 'echo boom >&2; exit 3'\n",
    )
    .unwrap();
    c.start_unit("boom.service").unwrap();
    c.wait_unit_state("boom.service", "failed", Duration::from_secs(10)).unwrap();
    assert_eq!(c.unit_property("boom.service", "Result").unwrap(), "exit-code");
    assert_eq!(c.unit_property("boom.service", "ExecMainStatus").unwrap(), "3");

    c.sync_journal().unwrap();
    c.wait_for(Duration::from_secs(10), || host_journal(&c, &["-u", "boom.service"]).lines().any(|l| l == "boom"))
        .unwrap_or_else(|e| panic!("{e}; journal: {}", host_journal(&c, &["-u", "boom.service"])));

    // Planted lines are readable at once, with their priority.
    c.log("planted", "err", "disk on fire").unwrap();
    let lines = host_journal(&c, &["-t", "planted", "-p", "err"]);
    assert!(lines.lines().any(|l| l == "disk on fire"), "{lines:?}");
}

#[test]
fn read_only_bind_mount_is_visible() {
    let dir = std::env::temp_dir().join(format!("macha-testbed-bind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello"), "from host\n").unwrap();
    let c = Container::boot_with(BootOptions::new("bind").bind_ro(&dir, "/opt/host")).unwrap();
    assert_eq!(c.exec_ok(&["cat", "/opt/host/hello"]).unwrap(), "from host\n");
    assert!(!c.exec(&["touch", "/opt/host/x"]).unwrap().status.success(), "bind mount must be read-only");
    drop(c);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nothing_survives_drop_even_after_a_panic() {
    let c = Container::boot("drop").unwrap();
    let (name, init) = (c.name().to_string(), c.init_pid());
    assert!(nspawn_running(&name));
    drop(c);
    assert!(!nspawn_running(&name), "systemd-nspawn -M {name} still running after drop");
    assert!(!std::path::Path::new(&format!("/proc/{init}")).exists(), "init {init} still exists");
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/unified/{name}")).exists());
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/systemd/{name}")).exists());

    // A test that panics while holding a container still tears it down.
    let (name, log) = thread::spawn(|| {
        let c = Container::boot("panic").unwrap();
        let name = c.name().to_string();
        let log = c.console_log().to_path_buf();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _c = c;
            panic!("test failure while the container runs");
        }));
        assert!(r.is_err());
        (name, log)
    })
    .join()
    .unwrap();
    assert!(!nspawn_running(&name), "systemd-nspawn -M {name} still running after a panic");
    assert!(log.exists(), "the console log of a panicking test is kept");
    std::fs::remove_file(log).unwrap();
}

#[test]
fn drop_kills_a_container_that_does_not_power_off() {
    let c = Container::boot("stuck").unwrap();
    let (name, init) = (c.name().to_string(), c.init_pid());
    // A stopped init cannot handle the poweroff signal: Drop must kill it.
    unsafe { libc::kill(init as libc::pid_t, libc::SIGSTOP) };
    let t = std::time::Instant::now();
    drop(c);
    assert!(t.elapsed() < Duration::from_secs(20), "drop took {:?}", t.elapsed());
    assert!(!nspawn_running(&name), "systemd-nspawn -M {name} still running after drop");
    assert!(!std::path::Path::new(&format!("/proc/{init}")).exists(), "init {init} still exists");
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/unified/{name}")).exists());
}
