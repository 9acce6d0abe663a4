//! How fast the state directory grows while a unit stays failed and the
//! model cannot answer, file by file; a failing model recorded once per
//! state change with a count, and its retries paced.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{decision, read_jsonl, Bed, WEB};
use macha::config::Config;
use macha::cycle::{CycleReport, Engine};
use macha::model::ModelService;
use macha::state_dir::StateDir;
use macha_testbed::ollama::Reply;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

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

/// Cycles run in this process, as the daemon runs them (without its sleep).
struct Cycles {
    rt: tokio::runtime::Runtime,
    engine: Engine,
}

impl Cycles {
    /// An engine on the bed's configuration; `paced` as the daemon's.
    fn new(bed: &Bed, paced: bool) -> Self {
        let config = Config::load(Some(&bed.config)).unwrap();
        let state = StateDir::create(&config.state_dir).unwrap();
        let model = ModelService::new(&config).unwrap();
        let mut engine = Engine::new(config, state, model, None).unwrap();
        if paced {
            engine.pace_retries();
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Self { rt, engine }
    }

    fn run(&mut self) -> CycleReport {
        self.rt.block_on(self.engine.run_cycle()).unwrap()
    }
}

fn outcome(report: &CycleReport) -> Option<String> {
    report.incidents.first().and_then(|i| i.decision.as_ref()).map(|d| d.outcome.clone())
}

/// (outcome, error kind in a word, repeats counted) of each decision record.
fn decisions(bed: &Bed) -> Vec<(String, String, Option<u64>)> {
    bed.audit("decisions.jsonl")
        .iter()
        .map(|r| {
            let error = r["error"].as_str().unwrap_or_default();
            let kind = if error.contains("HTTP 500") {
                "500"
            } else if error.contains("invalid answer") {
                "invalid"
            } else {
                ""
            };
            (r["outcome"].as_str().unwrap().to_owned(), kind.to_owned(), r["repeated"]["count"].as_u64())
        })
        .collect()
}

fn call_records(bed: &Bed) -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(bed.state_dir().join("model-calls"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().flat_map(|f| read_jsonl(f)).collect()
}

#[test]
fn a_failing_model_is_recorded_once_per_state_change_with_the_count() {
    let bed = Bed::new("repeats", "suggest");
    bed.failing_web();
    let mut cycles = Cycles::new(&bed, false);
    let crashed = || Reply::Status(500, "model runner crashed".into());
    // Three cycles of HTTP 500: one record, two counted.
    for _ in 0..3 {
        bed.double.push(crashed());
        assert_eq!(outcome(&cycles.run()).as_deref(), Some("failed"));
    }
    assert_eq!(decisions(&bed), [("failed".into(), "500".into(), None)]);
    // Garbage twice (one decision, retried once), in two cycles: the count
    // of the 500s, then the new failure, then one counted.
    for _ in 0..2 {
        bed.double.push(Reply::InvalidJson);
        bed.double.push(Reply::InvalidJson);
        assert_eq!(outcome(&cycles.run()).as_deref(), Some("failed"));
    }
    // The model answers: the count of the garbage, then the decision.
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    assert_eq!(outcome(&cycles.run()).as_deref(), Some("decided"));
    assert_eq!(
        decisions(&bed),
        [
            ("failed".into(), "500".into(), None),
            ("failed".into(), "500".into(), Some(2)),
            ("failed".into(), "invalid".into(), None),
            ("failed".into(), "invalid".into(), Some(1)),
            ("decided".into(), "".into(), None),
        ]
    );
    // The record of calls: the first 500 with its request, the two after it counted.
    let calls = call_records(&bed);
    let failed: Vec<&Value> = calls.iter().filter(|c| c["outcome"] == "failed").collect();
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert!(failed[0]["request"].is_object() && failed[0]["repeated"].is_null());
    assert_eq!((failed[1]["repeated"]["count"].as_u64(), failed[1].get("request")), (Some(2), None));
    // The log says the failure once, not each time.
    let log = std::fs::read_to_string(bed.state_dir().join("orchestrator.log")).unwrap_or_default();
    assert!(log.matches("decision failed; the incident stays open").count() <= 2, "{log}");
    // `macha-logs decisions` shows the count.
    let out = bed.run("macha-logs", &["decisions"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("the same 2 more times from"));
}

#[test]
fn the_daemon_waits_longer_after_each_failed_decision_and_says_when_it_asks_again() {
    let bed = Bed::new("paced", "suggest");
    bed.double.set_default(Reply::Status(500, "model runner crashed".into()));
    bed.failing_web();
    let mut cycles = Cycles::new(&bed, true);
    let started = Instant::now();
    let mut n = 0;
    // check_interval is 1 s: asked at 0 s, then 1 s after, then 2 s after that.
    while started.elapsed() < Duration::from_millis(3500) {
        cycles.run();
        n += 1;
    }
    let asked = bed.double.chat_requests();
    eprintln!("{n} cycles, {asked} decisions asked");
    assert!(n >= 10, "{n} cycles");
    assert!((2..=3).contains(&asked), "{asked} asked in {n} cycles");
    // One failure recorded, the rest counted.
    assert_eq!(decisions(&bed)[..], [("failed".into(), "500".into(), None)]);
    let out = bed.run("macha", &["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let failing = &status["failing"][0];
    assert_eq!(failing["incident"], format!("unit-failed:{WEB}"), "{status:#}");
    assert_eq!(failing["failures"].as_u64(), Some(asked as u64));
    assert_eq!(failing["kind"], "HTTP 500");
    let text = String::from_utf8(bed.run("macha", &["status"]).stdout).unwrap();
    assert!(text.contains("decisions failing") && text.contains("asked again at"), "{text}");
}
