//! How fast the state directory grows while a unit stays failed and the
//! model cannot answer, file by file.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::Bed;
use macha_testbed::ollama::Reply;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A URL where nothing listens: every connection is refused.
fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// Every file below `dir` with its size, by its path relative to `dir`.
fn sizes(dir: &Path) -> BTreeMap<String, u64> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().display().to_string(), meta.len());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Cycles the daemon finished: one metrics line each.
fn cycles(state: &Path) -> usize {
    std::fs::read_to_string(state.join("metrics.jsonl")).unwrap_or_default().lines().count()
}

fn wait_cycles(state: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while cycles(state) < n {
        assert!(Instant::now() < deadline, "timed out waiting for {n} cycles");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(daemon: Child) {
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM).unwrap();
    let out = daemon.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

/// The daemon at a 1 s interval with `demo-web.service` failed: the bytes
/// each file of the state directory grew per cycle between cycle `WARM`
/// and cycle `WARM + CYCLES`, printed as a table (BENCHMARKS.md).
fn measure(name: &str, unreachable: bool) -> BTreeMap<String, f64> {
    const WARM: usize = 5;
    const CYCLES: usize = 60;
    let bed = Bed::new(name, "suggest");
    if unreachable {
        let text = std::fs::read_to_string(&bed.config).unwrap().replace(&bed.double.url(), &refused_url());
        std::fs::write(&bed.config, text).unwrap();
    } else {
        bed.double.set_default(Reply::Status(500, "model runner crashed".into()));
    }
    bed.failing_web();
    let state = bed.state_dir();
    let daemon = bed.command("macha", &["daemon"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_cycles(&state, WARM);
    let (before, from) = (sizes(&state), cycles(&state));
    wait_cycles(&state, WARM + CYCLES);
    let (after, to) = (sizes(&state), cycles(&state));
    stop(daemon);
    let n = (to - from) as f64;
    let mut growth = BTreeMap::new();
    for (file, size) in &after {
        let grew = *size as f64 - *before.get(file).unwrap_or(&0) as f64;
        growth.insert(file.clone(), grew / n);
    }
    let total: f64 = growth.values().sum();
    eprintln!("{name}: {} cycles measured; bytes per cycle by file:", to - from);
    for (file, per) in &growth {
        eprintln!("  {file:<60} {per:>10.0}");
    }
    eprintln!("  {:<60} {total:>10.0}", "total");
    growth
}

/// Measures the growth per cycle and file (BENCHMARKS.md, "State
/// directory growth"); run with `--ignored --nocapture`.
#[test]
#[ignore = "a measurement for BENCHMARKS.md, two minutes of cycles"]
fn measure_growth_per_cycle_and_file() {
    measure("growth-refused", true);
    measure("growth-500", false);
}
