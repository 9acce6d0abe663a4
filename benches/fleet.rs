//! Measures what BENCHMARKS.md reports under "Fleet pass": one look at
//! three hosts over SSH (`macha remote hosts`, hello and observe on each),
//! and what `macha remote serve` costs on a host.
//!
//! Method: a network namespace of the benchmark's own with four containers
//! (a controller and three hosts, each host with a real OpenSSH server on
//! its own 127.0.0.N, a host key of its own and the controller's key
//! restricted to `macha remote serve`; a failed unit on host 2), the
//! release binaries. Controller: `PASSES` runs of `macha remote hosts
//! --json` inside the controller, each timed by bash's `time` (wall, user
//! and system CPU of the whole command: process start, three SSH sessions
//! at once, their replies). Host: `SESSIONS` sessions opened with
//! OpenSSH's client from the controller, each sending hello and observe and
//! then holding the session open, while the host's `macha remote serve`
//! process is read: its CPU time so far (`/proc/PID/schedstat`) and its
//! peak resident memory (`VmHWM`). Run as root: `cargo bench --bench fleet`.

use std::path::Path;
use std::time::Duration;

use macha_testbed::container::Container;
use macha_testbed::fleet::{Fleet, CONFIG, KEY};

const PASSES: usize = 20;
const SESSIONS: usize = 10;
const POLKIT_RULE: &str = "module/polkit/50-macha-autonomous.rules";
const HOST_CONFIG: &str =
    "autonomy_level = \"auto-safe\"\n\n[detect]\ndisk_full_percent = 100\nmemory_pressure_percent = 100\n";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One pass on the controller: (wall, user, system) seconds.
fn pass(controller: &Container) -> (f64, f64, f64) {
    let script = format!(
        "TIMEFORMAT='%R %U %S'; {{ time /opt/macha/macha --config {CONFIG} remote hosts --json >/tmp/views.json; }} 2>&1"
    );
    let out = controller.exec(&["bash", "-c", &script]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(f.len(), 3, "bash's time printed: {text}");
    (f[0], f[1], f[2])
}

/// One session held open on host 2 (127.0.0.3): the serve process's CPU
/// (ms) and peak resident memory (KiB) once it answered hello and observe.
fn session(controller: &Container, host: &Container) -> (f64, u64) {
    let hello = r#"{"verb":"hello","version":1,"controller":"bench"}"#;
    let observe = r#"{"verb":"observe"}"#;
    controller
        .sh(&format!(
            "rm -f /tmp/out; printf '%s\\n%s\\n' '{hello}' '{observe}' >/tmp/in; \
             setsid sh -c '( cat /tmp/in; sleep 4 ) | ssh -i {KEY} -o BatchMode=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null macha@127.0.0.3 >/tmp/out 2>/dev/null' </dev/null >/dev/null 2>&1 &"
        ))
        .unwrap();
    host.wait_for(Duration::from_secs(20), || {
        controller.sh_ok("wc -l < /tmp/out").map(|n| n.trim() == "2").unwrap_or(false)
    })
    .unwrap();
    let read = host
        .sh_ok("pid=$(pgrep -n -u macha -f '^/opt/macha/macha '); cut -d' ' -f1 /proc/$pid/schedstat; grep VmHWM /proc/$pid/status")
        .unwrap_or_else(|e| panic!("{e}\n{}", host.sh_ok("ps -eo pid,user,comm,args").unwrap_or_default()));
    let mut lines = read.lines();
    let ns: f64 = lines.next().unwrap().trim().parse().unwrap();
    let hwm: u64 = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    host.wait_for(Duration::from_secs(20), || {
        host.sh("pgrep -u macha -f '^/opt/macha/macha '").is_ok_and(|o| !o.status.success())
    })
    .unwrap();
    (ns / 1e6, hwm)
}

fn main() {
    let bin = Path::new(env!("CARGO_BIN_EXE_macha")).parent().unwrap().to_path_buf();
    let rule = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(POLKIT_RULE)).unwrap();
    let fleet = Fleet::boot("bench-fleet", &bin, &rule, HOST_CONFIG, "", 3).expect("the fleet (run as root)");
    let (controller, hosts) = (&fleet.controller, &fleet.hosts);
    hosts[1].install_unit("bench-fail.service", "[Service]\nExecStart=/bin/sh -c 'echo broken >&2; exit 1'\n").unwrap();
    hosts[1].start_unit("bench-fail.service").unwrap();
    hosts[1].wait_unit_state("bench-fail.service", "failed", Duration::from_secs(10)).unwrap();

    pass(controller); // warm: page cache, host keys generated
    let views = controller.exec_ok(&["cat", "/tmp/views.json"]).unwrap();
    assert!(views.contains("h2/unit-failed:bench-fail.service"), "{views}");
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    for _ in 0..PASSES {
        let (wall, user, sys) = pass(controller);
        walls.push(wall * 1e3);
        cpus.push((user + sys) * 1e3);
    }
    let (mut serve_cpu, mut serve_hwm) = (Vec::new(), Vec::new());
    for _ in 0..SESSIONS {
        let (cpu, hwm) = session(controller, &hosts[1]);
        serve_cpu.push(cpu);
        serve_hwm.push(hwm as f64);
    }

    println!("| measure | value |\n|---|---|");
    println!("| controller, one pass over 3 hosts, wall, median of {PASSES} | {:.0} ms |", median(walls));
    println!(
        "| controller, one pass over 3 hosts, CPU (user+sys), median of {PASSES} | {:.0} ms ({:.0} ms per host) |",
        median(cpus.clone()),
        median(cpus) / 3.0
    );
    println!(
        "| host, `macha remote serve` CPU for hello + observe, median of {SESSIONS} | {:.1} ms |",
        median(serve_cpu)
    );
    println!(
        "| host, `macha remote serve` peak resident memory, median of {SESSIONS} | {:.1} MiB |",
        median(serve_hwm) / 1024.0
    );
}
