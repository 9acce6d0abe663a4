//! A real systemd, booted with `systemd-nspawn` from a cached Debian bookworm
//! rootfs, so that macha's integration tests talk to real systemd state over
//! real D-Bus and read a real journal.
//!
//! How it works (see `tests/testbed/README.md` and DESIGN.md "Booting a real
//! systemd for tests"):
//! - the rootfs is built once by `tests/testbed/build-rootfs.sh` and cached;
//! - each [`Container`] boots it with
//!   `timeout 600 systemd-nspawn -q -D DIR -M NAME --boot --register=no --keep-unit --private-network --volatile=overlay`
//!   in a new session (`setsid`) and in cgroups of its own, so several
//!   containers can run at once and nothing written inside reaches the cache;
//! - the host reaches the container through its init process: the file system
//!   is `/proc/INIT/root`, commands run with `nsenter -t INIT -a`;
//! - dropping the [`Container`] powers it off and kills whatever is left;
//! - the rootfs has a real Nix (Debian's nix-bin 2.8, local store) and
//!   [`Container::install_nixos_standin`] adds a stand-in for NixOS's
//!   nixos-rebuild and system profile (`tests/testbed/nixos/`).
//!
//! Everything needs root.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long [`Container::boot`] waits for the system to be up.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a command run with [`Container::exec`] may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a container runs unless its `BootOptions` say otherwise.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// How long `Drop` waits for a clean poweroff before killing.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(10);
/// PATH for commands run inside the container (the host's PATH is meaningless there).
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to boot. Exists so tests can add read-only bind mounts (e.g. the
/// directory holding the macha binary) without growing `boot`'s signature.
#[derive(Debug, Clone, Default)]
pub struct BootOptions {
    /// Start of the machine name; the harness appends the pid and a counter.
    pub name_hint: String,
    /// Host directories or files mounted read-only into the container:
    /// (absolute host path, absolute path inside the container).
    pub bind_ro: Vec<(PathBuf, String)>,
    /// How long the container may run before `timeout` stops it; `None` is
    /// ten minutes, enough for any test. A benchmark with long idle windows
    /// sets more.
    pub lifetime: Option<Duration>,
    /// A network namespace the test made (`/run/netns/NAME`) to join
    /// instead of a private network of its own: containers that join the
    /// same one share its loopback, and reach each other on 127.0.0.N.
    pub network_namespace: Option<PathBuf>,
}

impl BootOptions {
    /// Options with just a name hint.
    pub fn new(name_hint: &str) -> Self {
        BootOptions { name_hint: name_hint.to_string(), bind_ro: Vec::new(), lifetime: None, network_namespace: None }
    }

    /// Joins the network namespace at `path` instead of a private network.
    pub fn network_namespace(mut self, path: impl Into<PathBuf>) -> Self {
        self.network_namespace = Some(path.into());
        self
    }

    /// Lets the container run for `lifetime` instead of ten minutes.
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// Adds a read-only bind mount of `host` at `container_path`.
    pub fn bind_ro(mut self, host: impl Into<PathBuf>, container_path: &str) -> Self {
        self.bind_ro.push((host.into(), container_path.to_string()));
        self
    }
}

/// A booted container running systemd as its PID 1. Dropping it tears it down.
pub struct Container {
    name: String,
    /// The container's init (systemd) as a host pid; `None` only while booting.
    init: Option<u32>,
    /// The `timeout` process we spawned: session and process group leader.
    launcher: Child,
    /// The cgroups we created for this container (one per hierarchy).
    cgroups: Vec<PathBuf>,
    /// nspawn's and the container's console output.
    console_log: PathBuf,
}

impl Container {
    /// Boots a container with default options. `name_hint` makes the machine
    /// name (and the console log's name) recognisable.
    pub fn boot(name_hint: &str) -> Result<Container> {
        Container::boot_with(BootOptions::new(name_hint))
    }

    /// Boots a container and returns once systemd reports the system is up
    /// (`running` or `degraded`) and the system bus socket exists.
    pub fn boot_with(opts: BootOptions) -> Result<Container> {
        if unsafe { libc::geteuid() } != 0 {
            bail!("the container test bed needs root (systemd-nspawn, cgroups, nsenter); run the tests as root");
        }
        let rootfs = rootfs()?;
        let name = machine_name(&opts.name_hint);
        let log_dir = std::env::temp_dir().join("macha-testbed");
        fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        let console_log = log_dir.join(format!("{name}.console.log"));
        let log = fs::File::create(&console_log)
            .with_context(|| format!("creating console log {}", console_log.display()))?;

        let mut binds = Vec::new();
        for (host, inside) in &opts.bind_ro {
            let host_s = host.to_str().context("bind_ro host path is not UTF-8")?;
            if !host.is_absolute() || !inside.starts_with('/') {
                bail!("bind_ro paths must be absolute: {host_s} -> {inside}");
            }
            if host_s.contains(':') || inside.contains(':') {
                bail!("bind_ro paths must not contain ':': {host_s} -> {inside}");
            }
            if !host.exists() {
                bail!("bind_ro host path {host_s} does not exist");
            }
            binds.push(format!("--bind-ro={host_s}:{inside}"));
        }

        let cgroups = create_cgroups(&name)?;

        let mut cmd = Command::new("timeout");
        let lifetime = opts.lifetime.unwrap_or(DEFAULT_LIFETIME).as_secs().to_string();
        cmd.arg(lifetime).arg("systemd-nspawn").arg("-q").arg("-D").arg(&rootfs).args(["-M", &name]).args([
            "--boot",
            "--register=no",
            "--keep-unit",
            "--volatile=overlay",
        ]);
        match &opts.network_namespace {
            Some(ns) => cmd.arg(format!("--network-namespace-path={}", ns.display())),
            None => cmd.arg("--private-network"),
        };
        cmd.args(&binds);
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);

        // In the child, before exec: a new session (our process group, which
        // `Drop` kills) and the container's own cgroups (nspawn creates its
        // `payload`/`supervisor` cgroups below the one it starts in; two
        // nspawns in the same cgroup collide). Writing "0" moves the writer.
        let procs: Vec<CString> = cgroups
            .iter()
            .map(|d| CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap())
            .collect();
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if r != 1 {
                        return Err(err);
                    }
                }
                Ok(())
            });
        }

        let started = Instant::now();
        let launcher = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                remove_cgroups(&cgroups);
                return Err(e).context("spawning `timeout 600 systemd-nspawn ...` (is systemd-container installed?)");
            }
        };
        // From here on, `Drop` cleans up if anything fails.
        let mut c = Container { name, init: None, launcher, cgroups, console_log };
        c.wait_ready(started + BOOT_TIMEOUT)?;
        eprintln!(
            "macha-testbed: container {} (init pid {}) ready in {} ms",
            c.name,
            c.init_pid(),
            started.elapsed().as_millis()
        );
        Ok(c)
    }

    /// Finds init, then waits for the bus socket and `is-system-running`.
    fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        let launcher = self.launcher.id();
        let init = loop {
            if let Some(pid) = find_init(launcher) {
                break pid;
            }
            self.check_alive("while waiting for the container's init to appear")?;
            if Instant::now() > deadline {
                bail!("{}", self.failure("the container's init did not appear"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.init = Some(init);

        let socket = self.root().join("run/dbus/system_bus_socket");
        while !socket.exists() {
            self.check_alive("while waiting for the system bus socket")?;
            if Instant::now() > deadline {
                bail!("{}", self.failure(&format!("{} did not appear", socket.display())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }

        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let out =
            run_bounded(self.nsenter(&["systemctl", "is-system-running", "--wait"]), None, left).map_err(|e| {
                anyhow::anyhow!("{}", self.failure(&format!("`systemctl is-system-running --wait`: {e:#}")))
            })?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if state != "running" && state != "degraded" {
            bail!(
                "{}",
                self.failure(&format!("systemd reports the system is {state:?}, expected running or degraded"))
            );
        }
        Ok(())
    }

    /// Errors (with the console log) if nspawn has already exited.
    fn check_alive(&mut self, what: &str) -> Result<()> {
        if let Ok(Some(status)) = self.launcher.try_wait() {
            bail!("{}", self.failure(&format!("systemd-nspawn exited ({status}) {what}")));
        }
        Ok(())
    }

    /// A boot failure message with the tail of the console log.
    fn failure(&self, what: &str) -> String {
        let log = fs::read_to_string(&self.console_log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!(
            "booting container {} failed: {what}.\nConsole log ({}), last lines:\n{tail}\n\
             To debug, boot by hand as described in tests/testbed/README.md.",
            self.name,
            self.console_log.display()
        )
    }

    /// The machine name (also the container's hostname and cgroup name);
    /// unique per container, for messages and `ps` matching.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host pid of the container's systemd (its PID 1); everything else
    /// (root, bus, nsenter) is reached through it.
    pub fn init_pid(&self) -> u32 {
        self.init.expect("container init pid is known once boot returned")
    }

    /// The container's root file system as seen from the host
    /// (`/proc/INIT/root`). Absolute symlinks inside the container resolve
    /// against the host's root when followed through this path.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.init_pid()))
    }

    /// D-Bus address of the container's system bus, usable from the host
    /// (EXTERNAL auth as uid 0): give it to macha / zbus instead of the host bus.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}/run/dbus/system_bus_socket", self.root().display())
    }

    /// The container's persistent journal directory (`/var/log/journal`) as
    /// seen from the host; journal files are in `<machine-id>/system.journal`
    /// below it. Read it with `journalctl -D` or sd_journal_open_directory.
    /// It lives in the container's tmpfs overlay: gone once it is dropped.
    pub fn journal_dir(&self) -> PathBuf {
        self.root().join("var/log/journal")
    }

    /// The file receiving nspawn's and the container's console output; kept
    /// after a panicking test (removed otherwise) so failures can be debugged.
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    /// A command entering all of the container's namespaces, with a clean
    /// environment.
    fn nsenter(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t").arg(self.init_pid().to_string()).arg("-a").args(args);
        cmd.env_clear().env("PATH", CONTAINER_PATH).env("LANG", "C.UTF-8").env("TERM", "dumb");
        cmd
    }

    /// Runs a command inside the container (`nsenter -t INIT -a ARGS`) and
    /// returns its output whatever its exit status; errors only if it could
    /// not run or took longer than 60 s.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        run_bounded(self.nsenter(args), None, EXEC_TIMEOUT)
            .with_context(|| format!("running {args:?} in container {}", self.name))
    }

    /// Like [`exec`](Self::exec) but fails (with stderr and stdout) on a
    /// non-zero exit; returns stdout.
    pub fn exec_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.exec(args)?;
        checked(&self.name, args, out)
    }

    /// Runs a shell script inside the container (`sh -c SCRIPT`).
    pub fn sh(&self, script: &str) -> Result<Output> {
        self.exec(&["sh", "-c", script])
    }

    /// Like [`sh`](Self::sh) but fails on a non-zero exit; returns stdout.
    pub fn sh_ok(&self, script: &str) -> Result<String> {
        self.exec_ok(&["sh", "-c", script])
    }

    /// Writes a file inside the container (mode 0644, parents created), e.g.
    /// a test script or a config file. `path` is absolute in the container.
    pub fn write_file(&self, path: &str, contents: impl AsRef<[u8]>) -> Result<()> {
        let rel = path.strip_prefix('/').with_context(|| format!("{path}: path in container must be absolute"))?;
        let host = self.root().join(rel);
        if let Some(parent) = host.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("creating {} in container {}", parent.display(), self.name))?;
        }
        fs::write(&host, contents).with_context(|| format!("writing {path} in container {}", self.name))?;
        fs::set_permissions(&host, fs::Permissions::from_mode(0o644))?;
        Ok(())
    }

    /// Installs `/etc/systemd/system/NAME` and runs `systemctl daemon-reload`,
    /// so tests can create units that succeed, fail or flap.
    pub fn install_unit(&self, name: &str, text: &str) -> Result<()> {
        self.write_file(&format!("/etc/systemd/system/{name}"), text)?;
        self.exec_ok(&["systemctl", "daemon-reload"])?;
        Ok(())
    }

    /// Queues a start job (`systemctl start --no-block NAME`) and returns
    /// without waiting, so tests observe the transitions themselves (pair it
    /// with [`wait_unit_state`](Self::wait_unit_state)). Errors only if the
    /// job cannot be queued (e.g. unknown unit).
    pub fn start_unit(&self, name: &str) -> Result<()> {
        self.exec_ok(&["systemctl", "start", "--no-block", name]).map(drop)
    }

    /// One unit property as systemd reports it (`systemctl show -p PROP
    /// --value NAME`), trimmed: lets tests assert on real systemd state.
    pub fn unit_property(&self, name: &str, prop: &str) -> Result<String> {
        let out = self.exec_ok(&["systemctl", "show", "-p", prop, "--value", name])?;
        Ok(out.trim().to_string())
    }

    /// Polls `cond` every 50 ms until it returns true; errors after `timeout`.
    pub fn wait_for(&self, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if cond() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("condition not met within {timeout:?} in container {}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until unit `name` has ActiveState `active_state` (e.g. "active",
    /// "failed"); the error shows the last state and `systemctl status`.
    pub fn wait_unit_state(&self, name: &str, active_state: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.unit_property(name, "ActiveState")?;
            if state == active_state {
                return Ok(());
            }
            if Instant::now() > deadline {
                let status = self.exec(&["systemctl", "status", "--no-pager", "-n", "20", name])?;
                bail!(
                    "unit {name} in container {} is {state:?}, not {active_state:?}, after {timeout:?}:\n{}",
                    self.name,
                    String::from_utf8_lossy(&status.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Plants a line in the container's journal with identifier `tag` and
    /// `priority` ("err", "warning", "info", or "0".."7"), via `systemd-cat`.
    /// Returns once journald has written it (`journalctl --sync`), so the
    /// line can be read at once.
    pub fn log(&self, tag: &str, priority: &str, message: &str) -> Result<()> {
        let args = ["systemd-cat", "-t", tag, "-p", priority];
        let out = run_bounded(self.nsenter(&args), Some(message.as_bytes()), EXEC_TIMEOUT)?;
        checked(&self.name, &args, out)?;
        self.sync_journal()
    }

    /// Makes journald write everything it has received to the journal files
    /// (`journalctl --sync`), before reading them from the host.
    pub fn sync_journal(&self) -> Result<()> {
        self.exec_ok(&["journalctl", "--sync"]).map(drop)
    }
}

/// The system profile NixOS keeps its generations in
/// (`system -> system-N-link -> /nix/store/...-nixos-system-...`).
pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";
/// Where [`Container::install_nixos_standin`] puts `make-system.sh`
/// (`nixos-rebuild` looks for it there).
pub const MAKE_SYSTEM: &str = "/usr/local/lib/nixos-standin/make-system.sh";
/// Where [`Container::install_nixos_standin`] puts the stand-in `nixos-rebuild`.
pub const NIXOS_REBUILD: &str = "/usr/local/sbin/nixos-rebuild";
/// The stand-in's scripts, compiled into the harness (see their headers).
const MAKE_SYSTEM_SH: &str = include_str!("../../testbed/nixos/make-system.sh");
const NIXOS_REBUILD_SH: &str = include_str!("../../testbed/nixos/nixos-rebuild");
/// `/etc/nixos` as the stand-in installs it: a plausible flake for host
/// `testhost` that nothing evaluates (the stand-in nixos-rebuild only checks
/// that flake.nix exists), and a configuration file tests can propose changes to.
const STANDIN_FLAKE: &str = r#"# macha test bed: the stand-in nixos-rebuild (tests/testbed/nixos) checks that
# this file exists but never evaluates it.
{
  description = "macha test bed host";
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";
  outputs = { self, nixpkgs }: {
    nixosConfigurations.testhost = nixpkgs.lib.nixosSystem {
      system = "x86_64-linux";
      modules = [ ./configuration.nix ];
    };
  };
}
"#;
const STANDIN_CONFIGURATION: &str = r#"{ config, pkgs, ... }:
{
  networking.hostName = "testhost";
  services.openssh.enable = true;
  system.stateVersion = "24.05";
}
"#;

/// Nix and NixOS's system profile inside the container.
///
/// The rootfs has a real Nix (Debian's nix-bin 2.8, local store, no
/// nix-daemon) but cannot run NixOS.
/// [`install_nixos_standin`](Self::install_nixos_standin) adds the stand-in
/// from `tests/testbed/nixos/`: `nixos-rebuild` and `make-system.sh`, which
/// build tiny "systems" into the
/// real store and switch the real system profile, so nix-env, generations,
/// GC roots and nix-collect-garbage behave as on NixOS. Facts measured with
/// nix 2.8 that tests depend on:
/// - a generation's age (`--list-generations`, `--delete-older-than`) is the
///   mtime of its `system-N-link` symlink (lstat), see
///   [`age_generation`](Self::age_generation);
/// - `--delete-older-than` keeps the newest generation older than the cutoff
///   (it was the current one at that time) and the current generation;
/// - profiles are GC roots (`/nix/var/nix/gcroots/profiles`), and so, as on
///   NixOS, are `/run/current-system` and `/run/booted-system` (through
///   `/nix/var/nix/gcroots/{current,booted}-system`); a store path added
///   with `nix-store --add` and referred to by none of them is garbage.
impl Container {
    /// Installs the NixOS stand-in and makes the container look like a booted
    /// NixOS host at its first generation: `/usr/local/sbin/nixos-rebuild`,
    /// `make-system.sh`, `/etc/nixos/{flake.nix,configuration.nix}` (host
    /// `testhost`), system `testhost-1` built into the store, the profile
    /// `/nix/var/nix/profiles/system -> system-1-link -> /nix/store/...`;
    /// then what NixOS's stage 2 does at boot: `/nix/store` becomes a
    /// read-only bind mount (so, as on NixOS, writing to the store takes
    /// CAP_SYS_ADMIN: nix remounts it writable in a private mount namespace,
    /// and a process without that capability fails with "error: remounting
    /// /nix/store writable: Operation not permitted"), `/run/booted-system`
    /// and its GC root are set; finally `/run/current-system` (by the
    /// system's `switch-to-configuration switch`).
    /// Returns generation 1's store path. Errors if a system profile exists.
    pub fn install_nixos_standin(&self) -> Result<String> {
        self.write_executable(MAKE_SYSTEM, MAKE_SYSTEM_SH)?;
        self.write_executable(NIXOS_REBUILD, NIXOS_REBUILD_SH)?;
        self.write_file("/etc/nixos/flake.nix", STANDIN_FLAKE)?;
        self.write_file("/etc/nixos/configuration.nix", STANDIN_CONFIGURATION)?;
        let script = format!(
            r#"set -eu
if [ -e {SYSTEM_PROFILE} ] || [ -L {SYSTEM_PROFILE} ]; then
    echo "{SYSTEM_PROFILE} exists: the NixOS stand-in is already installed" >&2
    exit 1
fi
system=$({MAKE_SYSTEM} testhost-1)
nix-env -p {SYSTEM_PROFILE} --set "$system"
# What NixOS's stage 2 does at boot: the store becomes a read-only bind mount
# (nix, as root, remounts it writable in a mount namespace of its own, which
# takes CAP_SYS_ADMIN), and the booted system is remembered and rooted.
mount --bind /nix/store /nix/store
mount -o remount,ro,bind /nix/store
ln -sfn "$system" /run/booted-system
ln -sfn /run/booted-system /nix/var/nix/gcroots/booted-system
"$system/bin/switch-to-configuration" switch
echo "$system"
"#
        );
        let out = self.sh_ok(&script).context("installing the NixOS stand-in")?;
        Ok(out.trim().to_string())
    }

    /// The system profile's generation numbers, ascending
    /// (`nix-env -p /nix/var/nix/profiles/system --list-generations`).
    pub fn system_generations(&self) -> Result<Vec<u32>> {
        Ok(self.list_generations()?.into_iter().map(|(n, _)| n).collect())
    }

    /// The system profile's current generation (the one `--list-generations`
    /// marks `(current)`, i.e. what `/nix/var/nix/profiles/system` points to).
    pub fn current_generation(&self) -> Result<u32> {
        self.list_generations()?
            .into_iter()
            .find_map(|(n, current)| current.then_some(n))
            .with_context(|| format!("no current generation of {SYSTEM_PROFILE} in container {}", self.name))
    }

    /// `(number, is current)` per generation of the system profile.
    fn list_generations(&self) -> Result<Vec<(u32, bool)>> {
        let out = self.exec_ok(&["nix-env", "-p", SYSTEM_PROFILE, "--list-generations"])?;
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let n = l.split_whitespace().next().and_then(|w| w.parse().ok());
                let n = n.with_context(|| format!("unexpected line from nix-env --list-generations: {l:?}"))?;
                Ok((n, l.contains("(current)")))
            })
            .collect()
    }

    /// The store path `/run/current-system` points to: the system that was
    /// activated last (`switch-to-configuration switch` or `test`).
    pub fn current_system(&self) -> Result<String> {
        Ok(self.exec_ok(&["readlink", "/run/current-system"])?.trim().to_string())
    }

    /// The store path generation `generation` of the system profile points to.
    pub fn generation_system(&self, generation: u32) -> Result<String> {
        let link = format!("{SYSTEM_PROFILE}-{generation}-link");
        Ok(self.exec_ok(&["readlink", &link])?.trim().to_string())
    }

    /// True if Nix's database holds `path` as a valid store path
    /// (`nix-store --check-validity`); false once it has been collected.
    pub fn store_path_valid(&self, path: &str) -> Result<bool> {
        Ok(self.exec(&["nix-store", "--check-validity", path])?.status.success())
    }

    /// Adds `megabytes` MiB of random data to the store as one file that no
    /// GC root refers to, and returns its store path: garbage that
    /// `nix-collect-garbage` must delete.
    pub fn add_store_garbage(&self, megabytes: u32) -> Result<String> {
        let script = format!(
            r#"set -eu
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
head -c {megabytes}M /dev/urandom >"$dir/macha-test-garbage"
nix-store --add "$dir/macha-test-garbage"
"#
        );
        Ok(self.sh_ok(&script).context("adding garbage to the Nix store")?.trim().to_string())
    }

    /// Makes generation `generation` of the system profile `days` days old by
    /// setting the mtime of its `system-N-link` symlink (`touch -h`), which is
    /// what nix 2.8 reads as the generation's creation time, so
    /// `nix-collect-garbage --delete-older-than 14d` treats it as old.
    ///
    /// Mind nix 2.8's rules: it keeps the newest generation older than the
    /// cutoff (it was current at the cutoff), so to see a generation deleted,
    /// age it and a later one too. And ages must not increase with generation
    /// numbers: if an older generation ends up newer than a later aged one,
    /// nix-collect-garbage aborts on an assertion (exit 134, SIGABRT).
    pub fn age_generation(&self, generation: u32, days: u32) -> Result<()> {
        let link = format!("{SYSTEM_PROFILE}-{generation}-link");
        let when = format!("{days} days ago");
        self.exec_ok(&["touch", "-h", "-d", &when, &link]).map(drop)
    }

    /// Like [`write_file`](Self::write_file), with mode 0755.
    fn write_executable(&self, path: &str, contents: &str) -> Result<()> {
        self.write_file(path, contents)?;
        let host = self.root().join(path.trim_start_matches('/'));
        fs::set_permissions(&host, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {path} executable in container {}", self.name))
    }
}

impl Drop for Container {
    /// Clean poweroff (`SIGRTMIN+4` to init, up to 10 s); failing that,
    /// SIGKILL init (its parent nspawn then reaps it and exits); failing
    /// that, kill everything in the container's cgroups and process group.
    /// Kills are ordered so that every process is reaped by its own parent
    /// (this host's PID 1 reaps orphans only late). Reaps the launcher,
    /// removes the cgroups. Runs on panics too.
    fn drop(&mut self) {
        let mut exited = false;
        if let Some(init) = self.init {
            unsafe { libc::kill(init as libc::pid_t, libc::SIGRTMIN() + 4) };
            exited = self.wait_launcher(POWEROFF_TIMEOUT);
            if !exited {
                eprintln!(
                    "macha-testbed: container {} did not power off in {POWEROFF_TIMEOUT:?}, killing it",
                    self.name
                );
                unsafe { libc::kill(init as libc::pid_t, libc::SIGKILL) };
                exited = self.wait_launcher(Duration::from_secs(5));
            }
        }
        if !exited {
            for cg in &self.cgroups {
                let _ = fs::write(cg.join("cgroup.kill"), "1");
            }
            // Not reaped yet, so its pid still names our process group.
            unsafe { libc::killpg(self.launcher.id() as libc::pid_t, libc::SIGKILL) };
            let _ = self.launcher.wait();
        }
        // Nothing of this container may survive, whatever happened above.
        for cg in &self.cgroups {
            let _ = fs::write(cg.join("cgroup.kill"), "1");
        }
        remove_cgroups(&self.cgroups);
        // Keep the console log of failed tests for debugging.
        if !std::thread::panicking() {
            let _ = fs::remove_file(&self.console_log);
        }
    }
}

impl Container {
    /// Waits up to `timeout` for the launcher (and so nspawn) to exit; reaps it.
    fn wait_launcher(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = self.launcher.try_wait() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The rootfs to boot: `$MACHA_TESTBED_ROOTFS`, or what build-rootfs.sh
/// builds/caches (run once per process).
fn rootfs() -> Result<PathBuf> {
    static ROOTFS: Mutex<Option<PathBuf>> = Mutex::new(None);
    if let Some(dir) = std::env::var_os("MACHA_TESTBED_ROOTFS") {
        return Ok(PathBuf::from(dir));
    }
    let mut cached = ROOTFS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = cached.as_ref() {
        return Ok(dir.clone());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testbed/build-rootfs.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({}); see its output above", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().rev().find(|l| !l.trim().is_empty()).context("build-rootfs.sh printed no path")?;
    let dir = PathBuf::from(dir.trim());
    *cached = Some(dir.clone());
    Ok(dir)
}

/// `hint-PID-N` restricted to characters valid in machine names and cgroup
/// names, at most 64 characters.
fn machine_name(hint: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut clean: String = hint
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' })
        .take(40)
        .collect();
    clean = clean.trim_matches('-').to_string();
    if clean.is_empty() {
        clean = "macha-test".to_string();
    }
    format!("{clean}-{}-{n}", std::process::id())
}

/// Creates the container's cgroup in each hierarchy nspawn uses: on this
/// hybrid host `/sys/fs/cgroup/unified` (v2) and `/sys/fs/cgroup/systemd`
/// (v1 name=systemd); on a pure cgroup v2 host `/sys/fs/cgroup` itself.
fn create_cgroups(name: &str) -> Result<Vec<PathBuf>> {
    let base = Path::new("/sys/fs/cgroup");
    let roots: Vec<PathBuf> = if base.join("cgroup.controllers").exists() {
        vec![base.to_path_buf()]
    } else {
        ["unified", "systemd"].iter().map(|h| base.join(h)).filter(|p| p.join("cgroup.procs").exists()).collect()
    };
    if roots.is_empty() {
        bail!("no usable cgroup hierarchy under /sys/fs/cgroup (need cgroup2 at /sys/fs/cgroup or /sys/fs/cgroup/unified)");
    }
    let mut made = Vec::new();
    for root in roots {
        let dir = root.join(name);
        if let Err(e) = fs::create_dir(&dir) {
            remove_cgroups(&made);
            return Err(e).with_context(|| format!("creating cgroup {}", dir.display()));
        }
        made.push(dir);
    }
    Ok(made)
}

/// Removes cgroup trees bottom-up, retrying briefly while dying processes leave.
fn remove_cgroups(dirs: &[PathBuf]) {
    fn subdirs_first(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    subdirs_first(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    for dir in dirs {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut all = Vec::new();
            subdirs_first(dir, &mut all);
            let mut ok = true;
            for d in &all {
                if let Err(e) = fs::remove_dir(d) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        ok = false;
                    }
                }
            }
            if ok || Instant::now() > deadline {
                if !ok {
                    eprintln!("macha-testbed: could not remove cgroup {}", dir.display());
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Host pids whose parent is `ppid`.
fn children(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may contain spaces and parens.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if rest.split_whitespace().nth(1).and_then(|s| s.parse::<u32>().ok()) == Some(ppid) {
            out.push(pid);
        }
    }
    out
}

/// The container's init: the child of nspawn (itself the child of our
/// `timeout`) that is PID 1 in its own pid namespace.
fn find_init(launcher: u32) -> Option<u32> {
    for nspawn in children(launcher) {
        for pid in children(nspawn) {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap_or("");
            let ids: Vec<&str> = nspid.split_whitespace().collect();
            if ids.len() >= 2 && ids.last() == Some(&"1") {
                return Some(pid);
            }
        }
    }
    None
}

/// Runs `cmd` with optional stdin, capturing output, killing it after `timeout`.
fn run_bounded(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data).context("writing stdin")?;
    }
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out_t = reader(Box::new(child.stdout.take().unwrap()));
    let err_t = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Output { status, stdout: out_t.join().unwrap_or_default(), stderr: err_t.join().unwrap_or_default() })
}

/// Stdout of a successful command, or an error with its stderr and stdout.
fn checked(container: &str, args: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{args:?} in container {container} failed ({}):\nstderr: {}\nstdout: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
