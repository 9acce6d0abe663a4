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

use std::path::Path;
use std::time::{Duration, Instant};

use common::{build_double_bin, failing_app, macha_bin, POLKIT_RULE};
use macha_testbed::container::Container;
use macha_testbed::fleet::{self, Fleet, CONFIG, KEY, STATE};
use serde_json::Value;

const HOST_CONFIG: &str = "autonomy_level = \"auto-safe\"\n\n[detect]\ndisk_full_percent = 100\nmemory_pressure_percent = 100\nerror_burst_lines = 100000\n";

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
    let bin = macha_bin().parent().unwrap().to_path_buf();
    let rule = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(POLKIT_RULE)).unwrap();
    let fleet = Fleet::boot("fleet", &bin, &rule, HOST_CONFIG, "autonomy_level = \"suggest\"\n", 3).unwrap();
    let (controller, hosts) = (&fleet.controller, &fleet.hosts);
    failing_app(&hosts[1], "web.service");

    let (views, _) = hosts_json(controller);
    let names: Vec<&str> = views.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["h1", "h2", "h3"]);
    assert!(views.iter().all(|v| v["reachable"] == true), "{views:#?}");
    assert_eq!(views[1]["autonomy_level"], "auto-safe");
    assert_eq!(incidents(&views[0]), Vec::<String>::new(), "{:#}", views[0]);
    assert_eq!(incidents(&views[1]), ["h2/unit-failed:web.service"], "{:#}", views[1]);
    assert_eq!(sessions(&hosts[2]), 1);

    // Host 3's key replaced, host 1 down: both named with the reason, and
    // nothing reaches host 3; host 2 answers as before.
    fleet::sshd(&hosts[2], 4).unwrap();
    hosts[0].exec_ok(&["systemctl", "stop", "ssh.service"]).unwrap();
    let (views, took) = hosts_json(controller);
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

    // A private key others may read is not used: no host is logged in to.
    controller.exec_ok(&["chmod", "0644", KEY]).unwrap();
    let (views, _) = hosts_json(controller);
    let why = views[1]["incidents"][0]["summary"].as_str().unwrap();
    assert!(why.contains("readable by its group or by others"), "{why}");
    assert_eq!(sessions(&hosts[1]), 2, "no new session with a key that is not private");
}
