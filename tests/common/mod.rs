//! Shared fixture of the integration tests: a booted container, the Ollama
//! double, a state directory, a config file pointing macha at all three, and
//! the `macha-*` names as symlinks to the built binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use macha_testbed::container::{BootOptions, Container};
use macha_testbed::ollama::OllamaDouble;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

pub const MODEL: &str = "llama3.1:70b";
pub const WEB: &str = "demo-web.service";

/// A unit that fails (exit 3, with an error on stderr) until
/// `/run/demo-web.ok` exists, then runs.
pub const WEB_UNIT: &str = "[Unit]
Description=demo web application (test)
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart=/bin/sh -c 'if [ -e /run/demo-web.ok ]; then exec sleep infinity; fi; echo \"demo-web: cannot open /etc/demo-web.conf: No such file or directory\" >&2; exit 3'
";

pub struct Bed {
    pub c: Container,
    pub double: OllamaDouble,
    pub state: tempfile::TempDir,
    pub config: PathBuf,
    bin: tempfile::TempDir,
}

pub fn macha_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_macha"))
}

impl Bed {
    pub fn new(name: &str, level: &str) -> Bed {
        Self::with_boot(BootOptions::new(name), level)
    }

    pub fn with_boot(opts: BootOptions, level: &str) -> Bed {
        let c = Container::boot_with(opts).expect("boot the test container");
        let double = OllamaDouble::start(&[MODEL]).expect("start the Ollama double");
        let state = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        for name in ["macha", "macha-check", "macha-approve", "macha-logs"] {
            std::os::unix::fs::symlink(macha_bin(), bin.path().join(name)).unwrap();
        }
        let config = state.path().join("config.toml");
        let bed = Bed { c, double, state, config, bin };
        bed.write_config(level, "");
        bed
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state.path().join("state")
    }

    /// Writes the config; each line of `extra` (`key = value`, top-level
    /// keys) replaces the bed's line for that key, or is added.
    pub fn write_config(&self, level: &str, extra: &str) {
        let mut text = format!(
            "autonomy_level = \"{level}\"
check_interval = 1
state_dir = \"{state}\"
dbus_address = \"{bus}\"
journal_dir = \"{journal}\"

[ollama]
url = \"{url}\"
model = \"{MODEL}\"
timeout = 2

# Incidents come from the container, not from this machine's disk or memory.
[detect]
disk_full_percent = 100
memory_pressure_percent = 100

[act]
settle_time = 1
job_timeout = 20
",
            state = self.state_dir().display(),
            bus = self.c.bus_address(),
            journal = self.c.journal_dir().display(),
            url = self.double.url(),
        );
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            let key = line.split('=').next().unwrap().trim();
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            match lines.iter().position(|l| l.starts_with(&format!("{key} ="))) {
                Some(i) => lines[i] = line.to_owned(),
                None => lines.insert(0, line.to_owned()),
            }
            text = lines.join("\n") + "\n";
        }
        std::fs::write(&self.config, text).unwrap();
    }

    /// Turns off incident memory's rule that a fix whose verification
    /// failed goes to a human (`knowledge_base.failed_fix_days = 0`), for
    /// tests of storm control's own rules, which it would otherwise
    /// pre-empt. The `[act]` table stays last, so `append_config` of act
    /// keys still lands there.
    pub fn without_failed_fix_rule(&self) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text.replacen("[act]\n", "[knowledge_base]\nfailed_fix_days = 0\n\n[act]\n", 1);
        std::fs::write(&self.config, text).unwrap();
    }

    /// Appends TOML (tables such as `[gotify]`) to the config.
    pub fn append_config(&self, text: &str) {
        let mut config = std::fs::read_to_string(&self.config).unwrap();
        config.push('\n');
        config.push_str(text);
        std::fs::write(&self.config, config).unwrap();
    }

    /// Runs `prog` (`macha`, `macha-check`, ...) with the bed's config.
    pub fn run(&self, prog: &str, args: &[&str]) -> Output {
        let out = Command::new(self.bin.path().join(prog))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("MACHA_LOG", "info")
            .output()
            .unwrap();
        eprintln!(
            "$ {prog} {}\n-> {:?}\n{}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `macha daemon` with the bed's config, its standard error to `stderr`.
    pub fn daemon(&self, stderr: impl Into<Stdio>) -> Child {
        self.command("macha", &["daemon"]).stdout(Stdio::null()).stderr(stderr).spawn().unwrap()
    }

    pub fn command(&self, prog: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin.path().join(prog));
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }

    /// `macha-check --json`: the exit code and the parsed report.
    pub fn check(&self) -> (i32, Value) {
        self.c.sync_journal().unwrap();
        let out = self.run("macha-check", &["--json"]);
        let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), report)
    }

    pub fn audit(&self, file: &str) -> Vec<Value> {
        read_jsonl(&self.state_dir().join(file))
    }

    pub fn pending(&self) -> Vec<Value> {
        let out = self.run("macha-approve", &["list", "--json"]);
        assert!(out.status.success());
        serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    }

    /// Installs `demo-web.service`, starts it and waits until it failed.
    pub fn failing_web(&self) {
        self.c.install_unit(WEB, WEB_UNIT).unwrap();
        self.c.start_unit(WEB).unwrap();
        self.c.wait_unit_state(WEB, "failed", Duration::from_secs(20)).unwrap();
    }

    /// Lets `demo-web.service` start successfully from now on.
    pub fn heal_web(&self) {
        self.c.write_file("/run/demo-web.ok", "").unwrap();
    }

    pub fn prop(&self, unit: &str, prop: &str) -> String {
        self.c.unit_property(unit, prop).unwrap()
    }
}

/// Installs `name` as a service that fails (exit 2, "database is not
/// ready") until `/run/app.ok` exists, starts it and waits until it failed:
/// the unit the tests of an installed macha repair.
pub fn failing_app(c: &Container, name: &str) {
    c.install_unit(
        name,
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/sh -c 'if [ -e /run/app.ok ]; then exec sleep infinity; fi; echo \"app: database is not ready\" >&2; exit 2'\n",
    )
    .unwrap();
    c.start_unit(name).unwrap();
    c.wait_unit_state(name, "failed", Duration::from_secs(20)).unwrap();
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A decision that proposes `kind` on each of `units`.
pub fn decision(kind: &str, units: &[&str]) -> Value {
    let actions: Vec<Value> =
        units.iter().map(|u| json!({"kind": kind, "unit": u, "reason": "test proposal"})).collect();
    json!({"diagnosis": "the unit failed", "severity": "warning", "actions": actions})
}

/// Builds the Ollama double program next to the `macha` binary (tests that
/// run it inside a container bind that directory).
pub fn build_double_bin() {
    let dir = macha_bin().parent().unwrap().to_path_buf();
    if !dir.join("ollama-double").exists() {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "macha-testbed", "--bin", "ollama-double"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap()
            .success();
        assert!(ok, "building the Ollama double");
    }
}

/// Calls `METHOD(unit, "replace")` on systemd's manager as `user`, straight
/// over D-Bus (busctl), bypassing macha; succeeded, and stderr.
pub fn manager_call_as(c: &Container, user: &str, method: &str, unit: &str) -> (bool, String) {
    let out = c
        .exec(&[
            "runuser",
            "-u",
            user,
            "--",
            "busctl",
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            method,
            "ss",
            unit,
            "replace",
        ])
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The polkit rule the NixOS module installs, as the repository holds it.
pub const POLKIT_RULE: &str = "module/polkit/50-macha-autonomous.rules";

/// A container set up as a host macha runs on in production: the built
/// binaries bound at `/opt/macha`, the daemon's user `macha` in
/// `systemd-journal`, the polkit rule, and the Ollama double running as
/// `ollama.service` on 127.0.0.1:11434 with the model `MODEL`.
pub fn macha_host(name: &str) -> Container {
    let bin = macha_bin().parent().unwrap().to_path_buf();
    build_double_bin();
    let c = Container::boot_with(BootOptions::new(name).bind_ro(&bin, "/opt/macha")).unwrap();
    c.exec_ok(&["useradd", "--system", "--groups", "systemd-journal", "macha"]).unwrap();
    let rule = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(POLKIT_RULE)).unwrap();
    c.write_file("/etc/polkit-1/rules.d/50-macha-autonomous.rules", rule).unwrap();
    c.exec_ok(&["systemctl", "restart", "polkit.service"]).unwrap();
    c.install_unit(
        "ollama.service",
        &format!("[Service]\nExecStart=/opt/macha/ollama-double --listen 127.0.0.1:11434 --model {MODEL}\n"),
    )
    .unwrap();
    c.exec_ok(&["systemctl", "start", "ollama.service"]).unwrap();
    c
}

/// Polls `cond` every 50 ms until it holds, failing the test with `what`
/// after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `child` to exit: its exit code and how long it took. A child
/// still running after `timeout` is killed and the test fails.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> (Option<i32>, Duration) {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), started.elapsed());
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            panic!("the process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `sig` to `child`.
pub fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).unwrap();
}

/// Stops a daemon started by `Bed::daemon` with SIGTERM, checks that it
/// exited 0, and returns what it wrote to a piped standard error.
pub fn stop_daemon(daemon: Child) -> String {
    signal(&daemon, Signal::SIGTERM);
    let out = daemon.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Standard output and standard error of a command, together.
pub fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The bodies of every chat request the double received, oldest first.
pub fn chats(double: &OllamaDouble) -> Vec<Value> {
    double.requests().into_iter().filter(|r| r.path == "/api/chat").map(|r| r.body).collect()
}

/// The files under `dir` holding `needle`, the token files (`*-token`)
/// aside: where a secret must never be written.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if !path.file_name().unwrap().to_string_lossy().ends_with("-token")
            && String::from_utf8_lossy(&std::fs::read(&path).unwrap()).contains(needle)
        {
            hits.push(path.display().to_string());
        }
    }
    hits
}

/// A port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
