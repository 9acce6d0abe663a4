//! Measures what BENCHMARKS.md reports under "Journal throughput": how fast
//! macha takes err-or-worse entries out of journal files, against
//! `journalctl` reading the same files. Run as root: `cargo bench --bench
//! journal`.
//!
//! Method: boot the test container and have journald write a burst of
//! `LINES` error lines of 50 kinds (`benches/support/burst.rs`, the same
//! generator as the evidence benchmark); copy the container's journal
//! directory out (so nothing writes to it while it is read) and stop the
//! container. Then, `RUNS` times in turn, each reader in a fresh process
//! from the first entry to the last, the files warm in the page cache:
//!
//! - `journalctl -D DIR -p err -o export > /dev/null` and `-o cat`: the
//!   tools an admin would pipe into something else;
//! - macha's journal follower (`journal::follow`, what the daemon runs:
//!   one thread reads, another folds) taking every entry into an error
//!   window of a day, where each entry is counted and folded into its
//!   unit's templates;
//! - macha's pass (`journal::scan_errors`, what `macha check` runs: one
//!   thread reads and folds).
//!
//! Each run: wall time, and user + system CPU from getrusage (of the child
//! for journalctl, of its own process for macha's). Reported: the median
//! of the runs, and entries per second of wall time. Every reader must
//! have taken the same number of entries.
//!
//! `MACHA_BENCH_JOURNAL=DIR` keeps the copied journal in DIR and reads it
//! from there in later runs; `MACHA_BENCH_ONLY=TEXT` runs only the readers
//! whose name contains TEXT.

// Only the lines are used here, not what the burst holds.
#[path = "support/burst.rs"]
#[allow(dead_code)]
mod burst;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use macha::observe::journal;
use macha::observe::window::ErrorWindow;
use macha_testbed::container::Container;
use nix::sys::resource::{getrusage, UsageWho};

use self::burst::Burst;

const LINES: usize = 500_000;
const RUNS: usize = 5;
/// The first argument that makes this program a measuring child.
const CHILD: &str = "--journal-child";
/// Reads from the beginning of the files, whatever their age.
const ALL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// One reader's run: entries taken, wall time, CPU time.
struct Run {
    entries: u64,
    wall: Duration,
    cpu: Duration,
}

fn cpu(who: UsageWho) -> Duration {
    let u = getrusage(who).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000);
    t(u.user_time()) + t(u.system_time())
}

/// The child: reads `dir` the way `how` says and prints `entries wall_ns cpu_ns`.
fn child(how: &str, dir: &Path) {
    let started = Instant::now();
    let (entries, wall) = match how {
        "follow" => follow_all(dir, started),
        "scan" => (journal::scan_errors(Some(dir), None, ALL, 10).expect("scan the journal").total, started.elapsed()),
        other => panic!("unknown reader {other}"),
    };
    println!("{entries} {} {}", wall.as_nanos(), cpu(UsageWho::RUSAGE_SELF).as_nanos());
}

/// The daemon's follower from the first entry, until it has taken every
/// err-or-worse entry there is (it then waits for more: that is when it is
/// stopped; the wall time is taken before).
fn follow_all(dir: &Path, started: Instant) -> (u64, Duration) {
    let expected: u64 = std::env::var("MACHA_BENCH_EXPECTED").ok().and_then(|n| n.parse().ok()).expect("expected");
    let window = Arc::new(Mutex::new(ErrorWindow::new(chrono::TimeDelta::days(1), 1000, 5)));
    let stop = Arc::new(AtomicBool::new(false));
    let (woke, _wakes) = std::sync::mpsc::channel();
    let thread = journal::follow(Some(dir.to_owned()), None, ALL, window.clone(), stop.clone(), move || {
        let _ = woke.send(());
    })
    .expect("start the follower");
    loop {
        let w = window.lock().unwrap();
        assert!(w.error.is_none(), "the follower failed: {:?}", w.error);
        if w.taken >= expected {
            break;
        }
        drop(w);
        std::thread::sleep(Duration::from_micros(500));
    }
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    thread.join().expect("the follower stops");
    let taken = window.lock().unwrap().taken;
    (taken, wall)
}

fn run_child(how: &str, dir: &Path, expected: u64) -> Run {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([CHILD, how])
        .arg(dir)
        .env("MACHA_BENCH_EXPECTED", expected.to_string())
        .output()
        .expect("run the child");
    assert!(out.status.success(), "{how}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Vec<u128> = text.split_whitespace().map(|n| n.parse().unwrap()).collect();
    Run { entries: v[0] as u64, wall: Duration::from_nanos(v[1] as u64), cpu: Duration::from_nanos(v[2] as u64) }
}

/// `journalctl -D dir -p err -o OUTPUT`, its output thrown away; the entries
/// are counted in a separate run.
fn run_journalctl(dir: &Path, output: &str, expected: u64) -> Run {
    let before = cpu(UsageWho::RUSAGE_CHILDREN);
    let started = Instant::now();
    let status = journalctl(dir, output).stdout(Stdio::null()).status().expect("run journalctl");
    let wall = started.elapsed();
    assert!(status.success());
    Run { entries: expected, wall, cpu: cpu(UsageWho::RUSAGE_CHILDREN) - before }
}

fn journalctl(dir: &Path, output: &str) -> Command {
    let mut cmd = Command::new("journalctl");
    cmd.arg("-D").arg(dir).args(["-q", "--no-pager", "-p", "err", "-o", output]);
    cmd
}

/// Entries `journalctl -p err` prints (one `__CURSOR=` line each in export
/// format).
fn count_entries(dir: &Path) -> u64 {
    let out = journalctl(dir, "export").output().expect("run journalctl");
    assert!(out.status.success());
    out.stdout.split(|b| *b == b'\n').filter(|l| l.starts_with(b"__CURSOR=")).count() as u64
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(CHILD) {
        return child(&args[2], Path::new(&args[3]));
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the journal benchmark boots a container: run it as root");
        std::process::exit(1);
    }
    // MACHA_BENCH_JOURNAL=DIR keeps the journal in DIR, and reads it from
    // there in a later run instead of planting the burst again.
    let kept = std::env::var_os("MACHA_BENCH_JOURNAL").map(PathBuf::from);
    let dir = tempfile::tempdir().expect("a directory for the journal");
    let journal: PathBuf = kept.unwrap_or_else(|| dir.path().join("journal"));
    if !journal.exists() {
        let burst = Burst::generate(LINES);
        let c = Container::boot("bench-journal").expect("boot the test container");
        let took = burst.plant(&c);
        println!("journald wrote {LINES} lines in {:.1} s", took.as_secs_f64());
        let status = Command::new("cp").arg("-a").arg(c.journal_dir()).arg(&journal).status().expect("cp");
        assert!(status.success(), "copy the journal out");
    }
    let bytes: u64 = walk(&journal).iter().map(|f| f.metadata().map(|m| m.len()).unwrap_or(0)).sum();
    let expected = count_entries(&journal);
    println!("journal files: {:.1} MB; err-or-worse entries: {expected}", bytes as f64 / 1e6);

    let readers = ["journalctl -o export", "journalctl -o cat", "macha follower", "macha pass"];
    let only = std::env::var("MACHA_BENCH_ONLY").ok();
    let mut runs: Vec<Vec<Run>> = readers.iter().map(|_| Vec::new()).collect();
    for _ in 0..RUNS {
        for (i, name) in readers.iter().enumerate() {
            if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
                continue;
            }
            runs[i].push(match i {
                0 => run_journalctl(&journal, "export", expected),
                1 => run_journalctl(&journal, "cat", expected),
                2 => run_child("follow", &journal, expected),
                _ => run_child("scan", &journal, expected),
            });
        }
    }
    println!("\n| reader | entries | wall (median of {RUNS}) | CPU (median) | entries/s |");
    println!("|---|---|---|---|---|");
    for (name, runs) in readers.iter().zip(runs).filter(|(_, r)| !r.is_empty()) {
        assert!(
            runs.iter().all(|r| r.entries == expected),
            "{name} took {:?}",
            runs.iter().map(|r| r.entries).collect::<Vec<_>>()
        );
        let wall = median(runs.iter().map(|r| r.wall).collect());
        let cpu = median(runs.iter().map(|r| r.cpu).collect());
        let rate = expected as f64 / wall.as_secs_f64();
        println!("| {name} | {expected} | {} ms | {} ms | {:.0} |", wall.as_millis(), cpu.as_millis(), rate);
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
