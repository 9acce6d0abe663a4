//! A controller and three hosts, each a container with a real systemd and a
//! real OpenSSH server, in a network namespace this test makes: the hosts'
//! sshd listen on 127.0.0.2, .3 and .4 of that namespace's loopback, and
//! nothing else can reach them. Each host's `macha` user has the
//! controller's key in `authorized_keys` with `restrict` and the forced
//! command `macha remote serve`, as the module writes it.
//!
//! What is shown: `macha remote hosts` on the controller checks each host
//! key before it sends anything, sees a failed unit on host 2 as
//! `h2/unit-failed:...`, names a host whose key changed and a host that is
//! down as unreachable with the reason while the others answer; and the
//! controller's key gets nothing but the protocol: no command, no PTY
//! shell, no forwarding.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{build_double_bin, failing_app, macha_bin, POLKIT_RULE};
use macha_testbed::container::{BootOptions, Container};
use serde_json::Value;

const CONFIG: &str = "/etc/macha-autonomous/config.toml";
const STATE: &str = "/var/lib/macha-autonomous";
const KEY: &str = "/etc/macha-autonomous/controller_key";

/// A network namespace of the test's own, with its loopback up; deleted
/// when dropped.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("macha-fleet-{}", std::process::id());
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip (iproute2)");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn boot(ns: &Netns, name: &str) -> Container {
    let bin = macha_bin().parent().unwrap().to_path_buf();
    Container::boot_with(BootOptions::new(name).bind_ro(&bin, "/opt/macha").network_namespace(ns.path())).unwrap()
}

/// Makes host `n` listen on 127.0.0.`n` with an ed25519 key of its own
/// (replaced when called again); returns its public key.
fn sshd(c: &Container, n: u8) -> String {
    c.sh_ok(
        "rm -f /etc/ssh/ssh_host_* && ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && \
         cat /etc/ssh/ssh_host_ed25519_key.pub",
    )
    .unwrap();
    c.write_file(
        "/etc/ssh/sshd_config.d/macha-test.conf",
        format!(
            "ListenAddress 127.0.0.{n}\nHostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        ),
    )
    .unwrap();
    c.exec_ok(&["systemctl", "reset-failed", "ssh.service"]).ok();
    c.exec_ok(&["systemctl", "restart", "ssh.service"]).unwrap();
    let key = c.exec_ok(&["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).unwrap();
    key.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// A host as the module sets one up for a controller: the user `macha`
/// with the controller's key, restricted to `macha remote serve`, the
/// polkit rule, the configuration and state directory.
fn remote_host(ns: &Netns, n: u8, controller_key: &str) -> (Container, String) {
    let c = boot(ns, &format!("fleet-h{}", n - 1));
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
    ])
    .unwrap();
    let rule = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(POLKIT_RULE)).unwrap();
    c.write_file("/etc/polkit-1/rules.d/50-macha-autonomous.rules", rule).unwrap();
    c.exec_ok(&["systemctl", "restart", "polkit.service"]).unwrap();
    c.exec_ok(&["install", "-d", "-o", "macha", "-g", "macha", "-m", "0750", STATE]).unwrap();
    c.write_file(
        CONFIG,
        "autonomy_level = \"auto-safe\"\n\n[detect]\ndisk_full_percent = 100\nmemory_pressure_percent = 100\nerror_burst_lines = 100000\n",
    )
    .unwrap();
    let authorized =
        format!("restrict,command=\"/opt/macha/macha --config {CONFIG} remote serve\" {controller_key} controller\n");
    c.exec_ok(&["install", "-d", "-o", "macha", "-g", "macha", "-m", "0700", "/var/lib/macha-ssh/.ssh"]).unwrap();
    c.write_file("/var/lib/macha-ssh/.ssh/authorized_keys", authorized).unwrap();
    c.exec_ok(&["chown", "macha:macha", "/var/lib/macha-ssh/.ssh/authorized_keys"]).unwrap();
    c.exec_ok(&["chmod", "0600", "/var/lib/macha-ssh/.ssh/authorized_keys"]).unwrap();
    let key = sshd(&c, n);
    (c, key)
}

/// The controller's configuration for `hosts` (name, address, host key).
fn controller_config(hosts: &[(String, String, String)]) -> String {
    let mut text = format!("autonomy_level = \"suggest\"\n\n[remote]\nprivate_key_file = \"{KEY}\"\nconnect_timeout = 5\ncommand_timeout = 30\n");
    for (name, address, key) in hosts {
        text.push_str(&format!(
            "\n[[remote.hosts]]\nname = \"{name}\"\naddress = \"{address}\"\nhost_key = \"{key}\"\n"
        ));
    }
    text
}

fn hosts_json(controller: &Container) -> (Vec<Value>, Duration) {
    let started = Instant::now();
    let out = controller.exec(&["/opt/macha/macha", "--config", CONFIG, "remote", "hosts", "--json"]).unwrap();
    let took = started.elapsed();
    let views: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("no JSON ({e}): {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (views, took)
}

fn incidents(view: &Value) -> Vec<String> {
    view["incidents"].as_array().unwrap().iter().map(|i| i["fingerprint"].as_str().unwrap().to_owned()).collect()
}

fn sessions(c: &Container) -> usize {
    let text = c.exec_ok(&["cat", &format!("{STATE}/remote.jsonl")]).unwrap_or_default();
    text.lines().filter(|l| l.contains("\"outcome\":\"session\"")).count()
}

#[test]
fn the_controller_sees_every_host_checks_each_key_and_a_host_down_delays_no_other() {
    build_double_bin();
    let ns = Netns::new();
    let controller = boot(&ns, "fleet-ctl");
    // Its own sshd would hold port 22 on every address of the namespace.
    controller.exec_ok(&["systemctl", "stop", "ssh.service"]).unwrap();
    controller
        .sh_ok(&format!("install -d -m 0700 /etc/macha-autonomous && ssh-keygen -q -t ed25519 -N '' -f {KEY}"))
        .unwrap();
    let controller_key = controller.exec_ok(&["cat", &format!("{KEY}.pub")]).unwrap();
    let controller_key: String = controller_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let mut hosts = Vec::new();
    let mut keys = Vec::new();
    for n in 2..=4u8 {
        let (c, key) = remote_host(&ns, n, &controller_key);
        keys.push((format!("h{}", n - 1), format!("127.0.0.{n}"), key));
        hosts.push(c);
    }
    failing_app(&hosts[1], "web.service");
    controller.write_file(CONFIG, controller_config(&keys)).unwrap();

    let (views, _) = hosts_json(&controller);
    let names: Vec<&str> = views.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["h1", "h2", "h3"]);
    assert!(views.iter().all(|v| v["reachable"] == true), "{views:#?}");
    assert_eq!(views[1]["autonomy_level"], "auto-safe");
    assert_eq!(incidents(&views[0]), Vec::<String>::new(), "{:#}", views[0]);
    assert_eq!(incidents(&views[1]), ["h2/unit-failed:web.service"], "{:#}", views[1]);
    assert_eq!(sessions(&hosts[2]), 1);

    // Host 3's key replaced, host 1 down: both named with the reason, and
    // nothing reaches host 3; host 2 answers as before.
    sshd(&hosts[2], 4);
    hosts[0].exec_ok(&["systemctl", "stop", "ssh.service"]).unwrap();
    let (views, took) = hosts_json(&controller);
    assert_eq!(incidents(&views[0]), ["host-unreachable:h1"], "{:#}", views[0]);
    assert!(views[0]["incidents"][0]["summary"].as_str().unwrap().contains("cannot connect to 127.0.0.2:22"));
    assert_eq!(incidents(&views[1]), ["h2/unit-failed:web.service"]);
    assert_eq!(incidents(&views[2]), ["host-unreachable:h3"]);
    let why = views[2]["incidents"][0]["summary"].as_str().unwrap();
    assert!(why.starts_with("host key refused, nothing sent: h3 showed the key SHA256:"), "{why}");
    assert_eq!(sessions(&hosts[2]), 1, "no session with a host whose key changed");
    assert!(took < Duration::from_secs(20), "{took:?}: a host down must not hold up the others");

    // The controller's key on its own, with OpenSSH's client: a command, a
    // PTY and a forward get nothing but the protocol's refusal.
    let ssh = |extra: &str| {
        controller
            .sh(&format!(
                "ssh -i {KEY} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
                 -o ConnectTimeout=5 {extra} </dev/null"
            ))
            .unwrap()
    };
    let out = ssh("macha@127.0.0.3 sh -c id");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("\"kind\":\"command_refused\""), "{said}");
    assert!(!said.contains("uid="), "{said}");
    let out = ssh("-tt macha@127.0.0.3");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("PTY allocation request failed"), "{said}");
    assert!(!said.contains("uid=") && !said.contains('$'), "{said}");
    let out = ssh("-W 127.0.0.3:22 macha@127.0.0.3");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("administratively prohibited") || said.contains("forwarding"), "{said}");
    let refused = hosts[1].exec_ok(&["cat", &format!("{STATE}/remote.jsonl")]).unwrap();
    assert!(refused.contains("\"error\":\"command_refused\""), "{refused}");
}
