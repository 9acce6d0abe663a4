//! Measures what BENCHMARKS.md reports: the CPU and wall time of one
//! observe + detect pass against a real systemd, and the resident memory of
//! the idle daemon. Run as root: `cargo bench --bench cycle`.
//!
//! Method: boot the test container with one failed unit; run the pass
//! `PASSES` times in this process and divide this process's user+system CPU
//! time (getrusage) and the wall time by `PASSES`; then start the release
//! `macha daemon` (check interval 1 h) against the same container, wait for
//! its first cycle, let it idle 3 s, and read VmRSS and VmHWM from /proc.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use macha::config::Config;
use macha::detect::detect;
use macha::observe::Observer;
use macha_testbed::container::Container;
use nix::sys::resource::{getrusage, UsageWho};

const PASSES: u32 = 200;

fn cpu() -> Duration {
    let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let t = |tv: nix::sys::time::TimeVal| Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000);
    t(u.user_time()) + t(u.system_time())
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    let c = Container::boot("bench").expect("boot the container (run as root)");
    // MACHA_BENCH_HEALTHY=1 measures a host with nothing to decide.
    let healthy = std::env::var_os("MACHA_BENCH_HEALTHY").is_some();
    if !healthy {
        c.install_unit("bench-fail.service", "[Service]\nExecStart=/bin/sh -c 'echo broken >&2; exit 1'\n").unwrap();
        c.start_unit("bench-fail.service").unwrap();
        c.wait_unit_state("bench-fail.service", "failed", Duration::from_secs(10)).unwrap();
    }
    c.sync_journal().unwrap();
    let state = tempfile::tempdir().unwrap();
    let toml = format!(
        "state_dir = \"{}\"\ncheck_interval = 3600\ndbus_address = \"{}\"\njournal_dir = \"{}\"\n",
        state.path().display(),
        c.bus_address(),
        c.journal_dir().display()
    );
    let config = Config::parse(&toml).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut observer = Observer::new(&config);
    let (incidents, cursor) = rt.block_on(async {
        // Warm up: connect, fill caches.
        let snap = observer.observe(None, &[], macha::observe::Scope::Full).await;
        let cursor = snap.journal.ok().and_then(|j| j.cursor.clone());
        (detect(&snap, &[], &config.detect).len(), cursor)
    });
    let (cpu0, wall0) = (cpu(), Instant::now());
    rt.block_on(async {
        for _ in 0..PASSES {
            let snap = observer.observe(cursor.as_deref(), &[], macha::observe::Scope::Full).await;
            std::hint::black_box(detect(&snap, &[], &config.detect));
        }
    });
    let cpu_per = (cpu() - cpu0) / PASSES;
    let wall_per = wall0.elapsed() / PASSES;

    let macha = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/macha");
    let built = Command::new("cargo").args(["build", "--release", "--bin", "macha", "-q"]).status().unwrap();
    assert!(built.success());
    let cfg_path = state.path().join("config.toml");
    std::fs::write(&cfg_path, &toml).unwrap();
    let mut daemon = Command::new(&macha)
        .args(["--config".as_ref(), cfg_path.as_os_str(), "daemon".as_ref()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = state.path().join("orchestrator.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("cycle done") {
        if Instant::now() > deadline {
            daemon.kill().unwrap();
            panic!("the daemon never finished a cycle; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let (rss, hwm) = (status_kb(daemon.id(), "VmRSS:"), status_kb(daemon.id(), "VmHWM:"));
    let (anon, file) = (status_kb(daemon.id(), "RssAnon:"), status_kb(daemon.id(), "RssFile:"));
    let threads = status_kb(daemon.id(), "Threads:");
    daemon.kill().unwrap();
    daemon.wait().unwrap();

    println!("| measure | value |");
    println!("|---|---|");
    println!("| observe + detect pass, CPU (user+sys) | {:.2} ms |", cpu_per.as_secs_f64() * 1000.0);
    println!("| observe + detect pass, wall | {:.2} ms |", wall_per.as_secs_f64() * 1000.0);
    println!("| incidents per pass | {incidents} |");
    println!("| idle daemon VmRSS (release) | {:.1} MB |", rss as f64 / 1024.0);
    println!("| idle daemon VmHWM (peak, release) | {:.1} MB |", hwm as f64 / 1024.0);
    println!("| of which anonymous / file-backed | {:.1} MB / {:.1} MB |", anon as f64 / 1024.0, file as f64 / 1024.0);
    println!("| daemon threads | {threads} |");
}
