//! Measures what BENCHMARKS.md reports for the Prometheus side: the cost of
//! one scrape of `/metrics` with 100 open incidents, beside Prometheus's
//! own node exporter in the same run, and how many alerts a second
//! Alertmanager's webhook takes without losing one.
//! Run: `cargo bench --bench exposition` (no root, no container).
//!
//! Method, scrape: a state directory of its own with 100 open incidents
//! (five kinds) and 10 approvals waiting, and counters fed 1 000 cycle
//! reports (so every histogram has samples); the routes served by
//! `exporter::serve` on this process's single thread, and `SCRAPES` scrapes
//! made one after another by a client thread over HTTP/1.0 (a new
//! connection each, as Prometheus's keep-alive aside). CPU per scrape is
//! this process's user+system time (getrusage) over the scrapes, the
//! client's own share included; bytes are the body's. The node exporter
//! (`prometheus-node-exporter`, Debian's, default collectors), when
//! installed, is scraped the same way and its CPU read from
//! /proc/PID/stat.
//!
//! Method, webhook: `POST /alertmanager` with the token, `POSTS` posts of
//! `PER_POST` alerts each, one after another: the first fill the store
//! with 1 000 distinct alerts (its bound), the rest send them again (each
//! an update, as Alertmanager's repeats are). Alerts a second is all the
//! alerts posted over the wall time; afterwards the store must hold all
//! 1 000 and the trail one record per post.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use macha::alerts::Receiver;
use macha::catalog::Action;
use macha::config::Config;
use macha::counters::{Counted, Counters};
use macha::detect::{Incident, IncidentKind};
use macha::exporter::{Exporter, Routes};
use macha::model::status::Shared;
use macha::observe::Snapshot;
use macha::report::CycleReport;
use macha::state_dir::StateDir;
use macha::store::Store;
use nix::sys::resource::{getrusage, UsageWho};

const SCRAPES: u32 = 500;
const POSTS: usize = 200;
const PER_POST: usize = 50;

fn cpu() -> Duration {
    let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let t = |tv: nix::sys::time::TimeVal| Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000);
    t(u.user_time()) + t(u.system_time())
}

/// user+system CPU of process `pid`, from /proc (clock ticks of 10 ms).
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One request; the body.
fn request(port: u16, head: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.") && answer.contains(" 200 "), "{}", &answer[..answer.len().min(300)]);
    answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

fn scrape(port: u16) -> usize {
    request(port, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n", b"").len()
}

/// A state directory with 100 open incidents and 10 approvals waiting.
fn state(dir: &std::path::Path) -> (Config, StateDir) {
    let config = Config { state_dir: dir.join("state"), ..Config::default() };
    std::fs::create_dir_all(&config.state_dir).unwrap();
    let state = StateDir::open(&config.state_dir).unwrap();
    let mut store = Store::open(&state).unwrap();
    let kinds = |i: usize| match i % 5 {
        0 => IncidentKind::UnitFailed { unit: format!("app{i}.service") },
        1 => IncidentKind::RestartLoop { unit: format!("app{i}.service") },
        2 => IncidentKind::ErrorBurst { unit: format!("app{i}.service") },
        3 => IncidentKind::DiskFull { mount: format!("/srv/{i}") },
        _ => IncidentKind::Alert { name: format!("Alert{i}") },
    };
    let incidents: Vec<Incident> = (0..100)
        .map(|i| {
            let kind = kinds(i);
            Incident { fingerprint: kind.fingerprint(), kind, summary: "s".into(), evidence_key: "k".into() }
        })
        .collect();
    let snap = Snapshot::unread("bench", "not read");
    store.sync_incidents(&incidents, &snap, None).unwrap();
    for (n, i) in incidents.iter().take(10).enumerate() {
        let unit = macha::unit::UnitName::parse(&format!("app{n}.service")).unwrap();
        let action = Action::RestartUnit { unit };
        store.enqueue(i, &action, "r", "d", chrono::TimeDelta::hours(1)).unwrap();
    }
    (config, state)
}

fn counters() -> Arc<Counters> {
    let c = Arc::new(Counters::new());
    let report = CycleReport {
        started_at: Utc::now(),
        host: "bench".into(),
        autonomy_level: macha::config::AutonomyLevel::AutoSafe,
        model_problems: Vec::new(),
        failed_sources: Vec::new(),
        incidents: Vec::new(),
        resolved: Vec::new(),
        wall_ms: 12,
    };
    let tally = macha::model::metrics::CallTally { calls: 1, call_ms: vec![4200], ..Default::default() };
    for _ in 0..1000 {
        c.cycle(&report, Counted::Both);
        c.model(&tally);
    }
    c
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, state) = state(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, "bench-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    config.alertmanager.token_file = Some(token);
    config.alertmanager.host_names = vec!["bench-host".into()];

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    let port = free_port();
    local.block_on(&rt, async {
        let listener = macha::exporter::listen(format!("127.0.0.1:{port}").parse().unwrap(), "bench").await.unwrap();
        let exporter = Exporter::new(counters(), Store::open(&state).unwrap(), Shared::default());
        let wake = Rc::new(tokio::sync::Notify::new());
        let receiver = Rc::new(Receiver::new(&config, &state, wake).unwrap());
        let routes = Routes { metrics: Some(exporter), alerts: Some(receiver) };
        tokio::task::spawn_local(macha::exporter::serve(listener, Rc::new(routes)));

        // Scrapes.
        let bytes = tokio::task::spawn_blocking(move || scrape(port)).await.unwrap();
        let (c0, w0) = (cpu(), Instant::now());
        tokio::task::spawn_blocking(move || (0..SCRAPES).for_each(|_| {
            scrape(port);
        })).await.unwrap();
        let (cpu_s, wall) = (cpu() - c0, w0.elapsed());
        println!(
            "macha /metrics, 100 open incidents: {bytes} bytes; {:.3} ms CPU and {:.3} ms wall per scrape ({SCRAPES} scrapes)",
            cpu_s.as_secs_f64() * 1000.0 / f64::from(SCRAPES),
            wall.as_secs_f64() * 1000.0 / f64::from(SCRAPES)
        );

        // Webhook.
        let posts: Vec<Vec<u8>> = (0..POSTS)
            .map(|p| {
                let alerts: Vec<serde_json::Value> = (0..PER_POST)
                    .map(|a| {
                        let n = (p * PER_POST + a) % 1000;
                        serde_json::json!({"status": "firing", "labels": {"alertname": format!("A{}", n % 7), "host": "bench-host"},
                            "annotations": {"summary": "bench"}, "startsAt": "2026-12-07T00:00:00Z", "fingerprint": format!("{n:016x}")})
                    })
                    .collect();
                serde_json::to_vec(&serde_json::json!({"version": "4", "alerts": alerts})).unwrap()
            })
            .collect();
        let w0 = Instant::now();
        tokio::task::spawn_blocking(move || {
            for body in posts {
                let head = format!(
                    "POST /alertmanager HTTP/1.0\r\nAuthorization: Bearer bench-token\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                request(port, &head, &body);
            }
        })
        .await
        .unwrap();
        let wall = w0.elapsed();
        let kept = Store::open(&state).unwrap().firing_alerts().unwrap().len();
        let records = macha::audit::read_kept(&state, macha::audit::ALERTS, usize::MAX).unwrap().records.len();
        assert_eq!((kept, records), (1000, POSTS), "every alert kept, every post recorded");
        println!(
            "macha webhook: {} alerts in {POSTS} posts in {:.0} ms: {:.0} alerts/s; all {kept} kept",
            POSTS * PER_POST,
            wall.as_secs_f64() * 1000.0,
            (POSTS * PER_POST) as f64 / wall.as_secs_f64()
        );
    });

    // The node exporter, scraped the same way.
    let node_port = free_port();
    match std::process::Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address=127.0.0.1:{node_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Err(_) => println!("node exporter: not installed (apt install prometheus-node-exporter)"),
        Ok(mut child) => {
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", node_port)).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let bytes = scrape(node_port);
            let (c0, w0) = (cpu_of(child.id()), Instant::now());
            for _ in 0..SCRAPES {
                scrape(node_port);
            }
            let (cpu_s, wall) = (cpu_of(child.id()) - c0, w0.elapsed());
            println!(
                "node exporter /metrics: {bytes} bytes; {:.3} ms CPU (its own) and {:.3} ms wall per scrape ({SCRAPES} scrapes)",
                cpu_s.as_secs_f64() * 1000.0 / f64::from(SCRAPES),
                wall.as_secs_f64() * 1000.0 / f64::from(SCRAPES)
            );
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
