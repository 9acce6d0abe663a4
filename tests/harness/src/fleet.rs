//! Several hosts on one machine for the remote tests: containers that join
//! one network namespace the test made (`Netns`), so that they share its
//! loopback and nothing else; each host's real OpenSSH server listens on an
//! address of its own there (127.0.0.N) with a host key of its own, and its
//! user `macha` has the controller's key restricted to
//! `macha remote serve`, as the module writes it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::container::{BootOptions, Container};

/// Where the hosts keep macha's configuration, state, and the controller its key.
pub const CONFIG: &str = "/etc/macha-autonomous/config.toml";
pub const STATE: &str = "/var/lib/macha-autonomous";
pub const KEY: &str = "/etc/macha-autonomous/controller_key";
/// The macha binaries inside each container (bound read-only).
pub const BIN: &str = "/opt/macha";

/// A network namespace of the caller's own, with its loopback up; deleted
/// when dropped.
pub struct Netns(String);

impl Netns {
    pub fn new(hint: &str) -> Result<Netns> {
        let name = format!("macha-{hint}-{}", std::process::id());
        let ip = |args: &[&str]| -> Result<()> {
            let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
            if !out.status.success() {
                bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        ip(&["netns", "add", &name])?;
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }

    /// Boots a container in this namespace with the macha binaries of
    /// `bin_dir` at [`BIN`].
    pub fn boot(&self, name: &str, bin_dir: &Path) -> Result<Container> {
        Container::boot_with(BootOptions::new(name).bind_ro(bin_dir, BIN).network_namespace(self.path()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The first two fields of a public key file ("TYPE BASE64").
fn key_of(text: &str) -> String {
    text.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// Makes the controller: its own sshd stopped (it would hold port 22 on
/// every address of the namespace) and a key of its own at [`KEY`];
/// returns the public key.
pub fn controller(c: &Container) -> Result<String> {
    c.exec_ok(&["systemctl", "stop", "ssh.service"])?;
    c.sh_ok(&format!("install -d -m 0700 /etc/macha-autonomous && ssh-keygen -q -t ed25519 -N '' -f {KEY}"))?;
    Ok(key_of(&c.exec_ok(&["cat", &format!("{KEY}.pub")])?))
}

/// Makes the host's sshd listen on 127.0.0.`n` only, with a new ed25519
/// host key (replaced when called again); returns the public host key.
pub fn sshd(c: &Container, n: u8) -> Result<String> {
    c.sh_ok("rm -f /etc/ssh/ssh_host_* && ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key")?;
    c.write_file(
        "/etc/ssh/sshd_config.d/macha-test.conf",
        format!(
            "ListenAddress 127.0.0.{n}\nHostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        ),
    )?;
    // Booted beside another host, it may have failed to bind at first.
    let _ = c.exec_ok(&["systemctl", "reset-failed", "ssh.service"]);
    c.exec_ok(&["systemctl", "restart", "ssh.service"])?;
    Ok(key_of(&c.exec_ok(&["cat", "/etc/ssh/ssh_host_ed25519_key.pub"])?))
}

/// Makes `c` a host a controller reaches: the user `macha` (login shell
/// `/bin/sh`, in `systemd-journal`) with `controller_key` restricted to
/// `macha remote serve`, the polkit rule `polkit_rule`, the configuration
/// `config` and the state directory, and sshd on 127.0.0.`n`. Returns the
/// host's public key.
pub fn host(c: &Container, n: u8, controller_key: &str, polkit_rule: &str, config: &str) -> Result<String> {
    c.exec_ok(&[
        "useradd",
        "--system",
        "--groups",
        "systemd-journal",
        "--create-home",
        "--home-dir",
        "/var/lib/macha-ssh",
        "--shell",
        "/bin/sh",
        "macha",
    ])?;
    c.write_file("/etc/polkit-1/rules.d/50-macha-autonomous.rules", polkit_rule)?;
    c.exec_ok(&["systemctl", "restart", "polkit.service"])?;
    c.exec_ok(&["install", "-d", "-o", "macha", "-g", "macha", "-m", "0750", STATE])?;
    c.write_file(CONFIG, config)?;
    let authorized =
        format!("restrict,command=\"{BIN}/macha --config {CONFIG} remote serve\" {controller_key} controller\n");
    c.exec_ok(&["install", "-d", "-o", "macha", "-g", "macha", "-m", "0700", "/var/lib/macha-ssh/.ssh"])?;
    c.write_file("/var/lib/macha-ssh/.ssh/authorized_keys", authorized)?;
    c.exec_ok(&["chown", "macha:macha", "/var/lib/macha-ssh/.ssh/authorized_keys"])?;
    c.exec_ok(&["chmod", "0600", "/var/lib/macha-ssh/.ssh/authorized_keys"])?;
    sshd(c, n)
}

/// The controller's configuration for `hosts` (name, address, host key),
/// after `head` (top-level keys).
pub fn controller_config(head: &str, hosts: &[(String, String, String)]) -> String {
    let mut text =
        format!("{head}\n[remote]\nprivate_key_file = \"{KEY}\"\nconnect_timeout = 5\ncommand_timeout = 30\n");
    for (name, address, key) in hosts {
        text.push_str(&format!(
            "\n[[remote.hosts]]\nname = \"{name}\"\naddress = \"{address}\"\nhost_key = \"{key}\"\n"
        ));
    }
    text
}

/// A controller and `hosts` hosts in a namespace of their own, set up by
/// [`controller`] and [`host`] (host `i`, from 1, is named `h{i}` and
/// listens on 127.0.0.`i + 1`), the controller's configuration written
/// with `controller_head` and every host's key.
pub struct Fleet {
    pub controller: Container,
    pub hosts: Vec<Container>,
    /// (name, address, host key) of each host, as the controller lists them.
    pub keys: Vec<(String, String, String)>,
    // Dropped last: the containers leave the namespace first.
    _ns: Netns,
}

impl Fleet {
    pub fn boot(
        hint: &str,
        bin_dir: &Path,
        polkit_rule: &str,
        host_config: &str,
        controller_head: &str,
        hosts: u8,
    ) -> Result<Fleet> {
        let ns = Netns::new(hint)?;
        let controller_box = ns.boot(&format!("{hint}-ctl"), bin_dir)?;
        let controller_key = controller(&controller_box)?;
        let (mut boxes, mut keys) = (Vec::new(), Vec::new());
        for i in 1..=hosts {
            let c = ns.boot(&format!("{hint}-h{i}"), bin_dir)?;
            let key = host(&c, i + 1, &controller_key, polkit_rule, host_config)?;
            keys.push((format!("h{i}"), format!("127.0.0.{}", i + 1), key));
            boxes.push(c);
        }
        controller_box.write_file(CONFIG, controller_config(controller_head, &keys))?;
        Ok(Fleet { controller: controller_box, hosts: boxes, keys, _ns: ns })
    }
}
