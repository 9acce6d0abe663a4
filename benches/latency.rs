//! Measures what BENCHMARKS.md reports under "Detection latency: systemd
//! signal to incident record, beside Monit": how long after systemd records
//! a unit's failure macha's incident record says it was seen, against a bare
//! D-Bus subscriber (the floor) and Monit at its usual and its shortest
//! interval; and what watching costs: the daemon's idle CPU, its CPU per
//! 1000 unit state changes, its resident memory, beside Monit's. Run as
//! root: `cargo bench --bench latency`.
//!
//! Everything runs in one container, one phase after another, so that no
//! watcher's work shows in another's numbers: macha and the floor (both on
//! the same failures), then the load, then Monit. `MACHA_BENCH_IDLE_SECS`
//! (default 600) is the length of each idle window; `MACHA_BENCH_FAILURES`
//! (default 50) the number of failures per watcher.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use macha::observe::events::Events;
use macha::observe::units::{Transition, Units};
use macha_testbed::container::{BootOptions, Container};
use macha_testbed::ollama::OllamaDouble;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const MODEL: &str = "llama3.1:70b";
/// Every failing unit is an instance of this template: it exits 3 at once.
const FAIL_UNIT: &str = "[Service]\nExecStart=/bin/sh -c 'exit 3'\n";
/// The load's units: each start is two state changes (activating, inactive).
const TICK_UNIT: &str = "[Service]\nType=oneshot\nExecStart=/bin/true\n";
const TICKS: u32 = 3000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a number")))
        .unwrap_or(default)
}

/// `/proc/PID/stat`'s fields after the command name: index 0 is field 3
/// (state), so utime (field 14) is index 11.
fn stat_fields(pid: u32) -> Vec<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &text[text.rfind(')').unwrap() + 2..];
    after.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect()
}

/// CPU time of `pid` itself (utime + stime) and of its waited-for children
/// (cutime + cstime), in seconds.
fn cpu(pid: u32, tick: f64) -> (f64, f64) {
    let f = stat_fields(pid);
    ((f[11] + f[12]) as f64 / tick, (f[13] + f[14]) as f64 / tick)
}

fn clock_tick() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// VmRSS, RssAnon, RssFile of `pid`, in KiB.
#[derive(Clone, Copy)]
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
}

fn rss(pid: u32) -> Rss {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |field: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    Rss { total: kb("VmRSS:"), anon: kb("RssAnon:"), file: kb("RssFile:") }
}

impl Rss {
    fn shown(self) -> String {
        let mb = |k: u64| k as f64 / 1024.0;
        format!("{:.1} MiB ({:.1} anon / {:.1} file)", mb(self.total), mb(self.anon), mb(self.file))
    }
}

fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Median, p99 (nearest rank) and maximum of `ms`.
struct Summary {
    median: f64,
    p99: f64,
    max: f64,
    min: f64,
    n: usize,
}

fn summary(mut ms: Vec<f64>) -> Summary {
    assert!(!ms.is_empty());
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median = if n.is_multiple_of(2) { (ms[n / 2 - 1] + ms[n / 2]) / 2.0 } else { ms[n / 2] };
    let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n);
    Summary { median, p99: ms[rank - 1], max: ms[n - 1], min: ms[0], n }
}

/// A transition the floor subscriber saw, and when it arrived.
struct Seen {
    unit: String,
    transition: Transition,
    at: DateTime<Utc>,
}

/// The floor: a bare subscriber to the container's signals in this process
/// (`Events` + `Units`, what the daemon itself is built on), noting the
/// wall clock as each signal arrives. Returns once it is subscribed.
fn floor_subscriber(address: String) -> Arc<Mutex<Vec<Seen>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (ready, subscribed) = std::sync::mpsc::channel();
    let out = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (mut events, listed) = Events::subscribe(Some(&address)).await.expect("subscribe");
            let mut units = Units::new(chrono::TimeDelta::seconds(600));
            units.reconcile(&listed, Utc::now());
            ready.send(()).unwrap();
            while let Some(Ok(signal)) = events.next().await {
                let at = Utc::now();
                if let Some((unit, transition)) = units.apply(&signal, at) {
                    out.lock().unwrap().push(Seen { unit, transition, at });
                }
            }
        });
    });
    subscribed.recv().unwrap();
    seen
}

/// When systemd recorded `unit` entering its inactive or failed state: its
/// `InactiveEnterTimestamp`, microseconds of the wall clock, over D-Bus.
async fn failed_at(bus: &zbus::Connection, unit: &str) -> DateTime<Utc> {
    let reply = bus
        .call_method(
            Some("org.freedesktop.systemd1"),
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.systemd1.Manager"),
            "GetUnit",
            &(unit,),
        )
        .await
        .unwrap();
    let path: zbus::zvariant::OwnedObjectPath = reply.body().deserialize().unwrap();
    let reply = bus
        .call_method(
            Some("org.freedesktop.systemd1"),
            path.as_str(),
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &("org.freedesktop.systemd1.Unit", "InactiveEnterTimestamp"),
        )
        .await
        .unwrap();
    let value: zbus::zvariant::OwnedValue = reply.body().deserialize().unwrap();
    let micros = u64::try_from(value).unwrap();
    DateTime::from_timestamp_micros(micros as i64).unwrap()
}

/// Starts `fail@PREFIX-1.service` .. `fail@PREFIX-N.service`, one a second
/// (`systemctl start --no-block`); their names.
fn fail_units(c: &Container, prefix: &str, n: u64) -> Vec<String> {
    let started = Instant::now();
    (1..=n)
        .map(|i| {
            let wait = (started + Duration::from_secs(i - 1)).saturating_duration_since(Instant::now());
            std::thread::sleep(wait);
            let unit = format!("fail@{prefix}-{i}.service");
            c.start_unit(&unit).unwrap();
            unit
        })
        .collect()
}

/// Polls `cond` every 100 ms until it holds; panics with `what` after `timeout`.
fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The time of each `opened` record in incidents.jsonl, by unit.
fn opened(state: &Path) -> HashMap<String, DateTime<Utc>> {
    read_jsonl(&state.join("incidents.jsonl"))
        .iter()
        .filter(|r| r["event"] == "opened")
        .filter_map(|r| {
            let unit = r["incident"].as_str()?.strip_prefix("unit-failed:")?.to_owned();
            let time = DateTime::parse_from_rfc3339(r["time"].as_str()?).ok()?.with_timezone(&Utc);
            Some((unit, time))
        })
        .collect()
}

fn stop(child: &mut Child) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    child.wait().unwrap();
}

/// The release daemon against the container and the double.
struct Daemon {
    bin: PathBuf,
    config: PathBuf,
    state: PathBuf,
    child: Child,
}

impl Daemon {
    fn start(c: &Container, double: &OllamaDouble, dir: &Path) -> Daemon {
        let state = dir.join("state");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "autonomy_level = \"observe\"
check_interval = 3600
state_dir = \"{state}\"
dbus_address = \"{bus}\"
journal_dir = \"{journal}\"

[ollama]
url = \"{url}\"
model = \"{MODEL}\"
timeout = 30

# Incidents come from the container, not from this machine's disk or memory.
[detect]
disk_full_percent = 100
memory_pressure_percent = 100
",
                state = state.display(),
                bus = c.bus_address(),
                journal = c.journal_dir().display(),
                url = double.url(),
            ),
        )
        .unwrap();
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_macha"));
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .arg("daemon")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let daemon = Daemon { bin, config, state, child };
        wait_until(Duration::from_secs(60), "the daemon following systemd's signals", || {
            daemon.events()["live"] == true && !read_jsonl(&daemon.state.join("metrics.jsonl")).is_empty()
        });
        daemon
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `macha status --json`'s `status.watching.events`.
    fn events(&self) -> Value {
        let out =
            Command::new(&self.bin).arg("--config").arg(&self.config).args(["status", "--json"]).output().unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)["status"]["watching"]["events"].clone()
    }

    /// Waits until the daemon's count of signals stays put for 1.5 s (it is
    /// written at most once a second).
    fn settle(&self) {
        let signals = || self.events()["signals"].as_u64().unwrap_or(0);
        wait_until(Duration::from_secs(60), "the daemon's count of signals to settle", || {
            let a = signals();
            std::thread::sleep(Duration::from_millis(1500));
            a == signals()
        });
    }
}

/// A benchmark that panics leaves no daemon behind (one already stopped
/// is not signalled again: its status is known).
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Monit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Monit, run in the foreground on the host (`monit -I`), checking units in
/// the container through `nsenter`.
struct Monit {
    child: Child,
    detected: PathBuf,
}

impl Monit {
    /// Starts Monit polling every `interval` seconds, with one `check
    /// program` per unit; each writes its detection time with nanoseconds
    /// (`date +%s.%N`) to a file when `systemctl is-failed` first says
    /// failed.
    fn start(monit: &Path, c: &Container, interval: u64, units: &[String], dir: &Path) -> Monit {
        std::fs::create_dir_all(dir).unwrap();
        let detected = dir.join("detected");
        let note = dir.join("note.sh");
        std::fs::write(&note, format!("#!/bin/sh\necho \"$(date +%s.%N) $1\" >> {}\n", detected.display())).unwrap();
        std::fs::set_permissions(&note, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut rc = format!(
            "set daemon {interval}\nset logfile {log}\nset pidfile {dir}/monit.pid\nset idfile {dir}/monit.id\nset statefile {dir}/monit.state\n",
            log = dir.join("monit.log").display(),
            dir = dir.display(),
        );
        for (i, unit) in units.iter().enumerate() {
            rc.push_str(&format!(
                "check program u{i} with path \"/usr/bin/nsenter -t {pid} -a systemctl is-failed --quiet {unit}\"\n  if status = 0 then exec \"{note} {unit}\"\n",
                pid = c.init_pid(),
                note = note.display(),
            ));
        }
        let rc_path = dir.join("monitrc");
        std::fs::write(&rc_path, rc).unwrap();
        // Monit refuses a control file others can read.
        std::fs::set_permissions(&rc_path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let out = std::fs::File::create(dir.join("monit.out")).unwrap();
        let child = Command::new(monit)
            .arg("-I")
            .arg("-c")
            .arg(&rc_path)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        // Its first cycles: every program started once and collected once.
        std::thread::sleep(Duration::from_secs(2 * interval + 1));
        assert!(!std::fs::exists(&detected).unwrap(), "Monit saw a failure before any: see {}", dir.display());
        Monit { child, detected }
    }

    /// The detection times written so far, by unit.
    fn detected(&self) -> HashMap<String, DateTime<Utc>> {
        std::fs::read_to_string(&self.detected)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (time, unit) = l.split_once(' ')?;
                let (secs, nanos) = time.split_once('.')?;
                Some((unit.to_owned(), DateTime::from_timestamp(secs.parse().ok()?, nanos.parse().ok()?)?))
            })
            .collect()
    }
}

/// The Monit binary: `MACHA_BENCH_MONIT`, else `monit` on the PATH.
fn monit_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MACHA_BENCH_MONIT") {
        return Some(PathBuf::from(p));
    }
    let out = Command::new("sh").args(["-c", "command -v monit"]).output().ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Latencies in ms of `seen` against `failed`, for every unit of `units`.
fn latencies(
    units: &[String],
    failed: &HashMap<String, DateTime<Utc>>,
    seen: &HashMap<String, DateTime<Utc>>,
) -> Vec<f64> {
    units.iter().map(|u| (seen[u] - failed[u]).num_microseconds().unwrap() as f64 / 1000.0).collect()
}

fn row(name: &str, s: &Summary) {
    println!("| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |", s.n, s.median, s.p99, s.max, s.min);
}

fn main() {
    let idle = Duration::from_secs(env_u64("MACHA_BENCH_IDLE_SECS", 600));
    let n = env_u64("MACHA_BENCH_FAILURES", 50);
    let tick = clock_tick();
    println!("load average at the start: {}", load_average());

    // Three idle windows and about five minutes besides; the harness's
    // default lifetime (ten minutes) is a test's.
    let lifetime = 3 * idle + Duration::from_secs(1800);
    let c =
        Container::boot_with(BootOptions::new("latency").lifetime(lifetime)).expect("boot the container (run as root)");
    c.install_unit("fail@.service", FAIL_UNIT).unwrap();
    c.install_unit("tick@.service", TICK_UNIT).unwrap();
    let double = OllamaDouble::start(&[MODEL]).expect("start the Ollama double");
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let bus = rt.block_on(async {
        zbus::connection::Builder::address(c.bus_address().as_str()).unwrap().build().await.unwrap()
    });

    // 1. The daemon, idle on a healthy container.
    let mut daemon = Daemon::start(&c, &double, dir.path());
    let floor = floor_subscriber(c.bus_address());
    daemon.settle();
    let pid = daemon.pid();
    let (cpu0, wall0) = (cpu(pid, tick).0, Instant::now());
    std::thread::sleep(idle);
    let idle_cpu = (cpu(pid, tick).0 - cpu0) / wall0.elapsed().as_secs_f64();
    let idle_rss = rss(pid);
    println!(
        "macha idle: {:.4} % of a core over {:?}; RSS {}; load {}",
        idle_cpu * 100.0,
        idle,
        idle_rss.shown(),
        load_average()
    );

    // 2. and 3. Failures, seen by the daemon and by the floor at once.
    let units = fail_units(&c, "macha", n);
    wait_until(Duration::from_secs(60), "every failure's incident record", || {
        let o = opened(&daemon.state);
        units.iter().all(|u| o.contains_key(u))
    });
    let failed: HashMap<String, DateTime<Utc>> = rt.block_on(async { failure_times(&bus, &units).await });
    let macha = summary(latencies(&units, &failed, &opened(&daemon.state)));
    let floor_seen: HashMap<String, DateTime<Utc>> = floor
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.transition == Transition::Failed)
        .map(|s| (s.unit.clone(), s.at))
        .collect();
    let floor_lat = summary(latencies(&units, &failed, &floor_seen));
    println!("failures seen; load {}", load_average());
    wait_until(Duration::from_secs(300), "a decision of every failure", || {
        read_jsonl(&daemon.state.join("decisions.jsonl")).len() >= units.len()
    });
    std::thread::sleep(Duration::from_secs(3));
    let decided_rss = rss(pid);

    // 5. (second part) The load: tick@N.service started every 9 ms.
    daemon.settle();
    let before = floor.lock().unwrap().len();
    let cpu_load0 = cpu(pid, tick).0;
    rt.block_on(async {
        let started = tokio::time::Instant::now();
        for i in 0..TICKS {
            tokio::time::sleep_until(started + Duration::from_millis(9) * i).await;
            let unit = format!("tick@{i}.service");
            bus.call_method(
                Some("org.freedesktop.systemd1"),
                "/org/freedesktop/systemd1",
                Some("org.freedesktop.systemd1.Manager"),
                "StartUnit",
                &(unit.as_str(), "replace"),
            )
            .await
            .unwrap();
        }
    });
    daemon.settle();
    let load_cpu = cpu(pid, tick).0 - cpu_load0;
    let changes = floor.lock().unwrap()[before..]
        .iter()
        .filter(|s| s.unit.starts_with("tick@"))
        .filter(|s| matches!(s.transition, Transition::State(..) | Transition::Failed | Transition::LeftFailed(_)))
        .count();
    let after_load_rss = rss(pid);
    println!("load: {changes} state changes, {load_cpu:.3} s CPU; load {}", load_average());
    stop(&mut daemon.child);

    // 4. Monit, at its usual interval and at its shortest.
    let mut monit_rows = Vec::new();
    let mut monit_idle = Vec::new();
    match monit_bin() {
        None => println!("Monit: no binary (`monit` on the PATH or MACHA_BENCH_MONIT); not measured"),
        Some(bin) => {
            for interval in [5, 1] {
                let prefix = format!("monit{interval}");
                let names: Vec<String> = (1..=n).map(|i| format!("fail@{prefix}-{i}.service")).collect();
                let mut monit = Monit::start(&bin, &c, interval, &names, &dir.path().join(&prefix));
                let mpid = monit.child.id();
                let (own0, kids0) = cpu(mpid, tick);
                let wall = Instant::now();
                std::thread::sleep(idle);
                let (own1, kids1) = cpu(mpid, tick);
                let secs = wall.elapsed().as_secs_f64();
                monit_idle.push(((own1 - own0) / secs, (kids1 - kids0) / secs, rss(mpid)));
                let units = fail_units(&c, &prefix, n);
                wait_until(Duration::from_secs(3 * interval + 30), "Monit's detection of every failure", || {
                    let d = monit.detected();
                    units.iter().all(|u| d.contains_key(u))
                });
                let after = rss(mpid);
                let failed: HashMap<String, DateTime<Utc>> = rt.block_on(async { failure_times(&bus, &units).await });
                monit_rows.push((interval, summary(latencies(&units, &failed, &monit.detected())), after));
                stop(&mut monit.child);
                println!("Monit at {interval} s done; load {}", load_average());
            }
        }
    }

    println!();
    println!("| watcher | failures | median | p99 | max | min |");
    println!("|---|---|---|---|---|---|");
    row("bare D-Bus subscriber (floor)", &floor_lat);
    row("macha daemon (incident record)", &macha);
    for (interval, s, _) in &monit_rows {
        row(&format!("Monit, `set daemon {interval}`"), s);
    }
    if let Some((_, m5, _)) = monit_rows.iter().find(|(i, ..)| *i == 5) {
        println!("\nMonit at 5 s / macha, medians: {:.0} times", m5.median / macha.median);
    }
    println!();
    println!("| measure | macha | Monit (`set daemon 5`) | Monit (`set daemon 1`) |");
    println!("|---|---|---|---|");
    let monit = |i: usize, f: &dyn Fn(&(f64, f64, Rss)) -> String| monit_idle.get(i).map(f).unwrap_or("-".into());
    let own = |m: &(f64, f64, Rss)| format!("{:.4} %", m.0 * 100.0);
    let kids = |m: &(f64, f64, Rss)| format!("{:.4} %", m.1 * 100.0);
    let resident = |m: &(f64, f64, Rss)| m.2.shown();
    println!(
        "| idle CPU over {} s, own | {:.4} % | {} | {} |",
        idle.as_secs(),
        idle_cpu * 100.0,
        monit(0, &own),
        monit(1, &own)
    );
    println!("| idle CPU, its child processes (checks) | none | {} | {} |", monit(0, &kids), monit(1, &kids));
    println!("| RSS idle | {} | {} | {} |", idle_rss.shown(), monit(0, &resident), monit(1, &resident));
    let after = |i: u64| monit_rows.iter().find(|(n, ..)| *n == i).map(|(_, _, r)| r.shown()).unwrap_or("-".into());
    println!(
        "| RSS after {n} failures (macha: and their decisions) | {} | {} | {} |",
        decided_rss.shown(),
        after(5),
        after(1)
    );
    println!("| RSS after the load | {} | | |", after_load_rss.shown());
    println!(
        "| CPU per 1000 unit state changes | {:.1} ms ({changes} changes, {load_cpu:.2} s) | | |",
        load_cpu / changes as f64 * 1000.0 * 1000.0
    );
    println!("\nload average at the end: {}", load_average());
}

/// The failure time of each of `units`.
async fn failure_times(bus: &zbus::Connection, units: &[String]) -> HashMap<String, DateTime<Utc>> {
    let mut out = HashMap::new();
    for u in units {
        out.insert(u.clone(), failed_at(bus, u).await);
    }
    out
}
