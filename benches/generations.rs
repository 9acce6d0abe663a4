//! Measures what BENCHMARKS.md reports under "Generation diff": the cost of
//! comparing the units of two NixOS generations of 500 units each
//! (`observe::generations::diff_units`), beside `diff -r` of the same two
//! unit directories, which an admin would run instead.
//!
//! Method: in a temporary directory, two systems laid out as NixOS lays
//! them out: each unit file in a store path of its own (named by a hash of
//! its content, so an unchanged unit is the same path in both), linked from
//! the system's `etc/systemd/system`, with drop-in directories for some and
//! a `multi-user.target.wants` pulling in every service. Between the two:
//! 50 units bumped to a new package version (their `ExecStart` names
//! another store path), 10 with a changed `Environment`, 10 added, 10
//! removed, 20 with a drop-in added. Then, with the files in the page cache
//! (one untimed run first): 100 runs of `diff_units`, wall and CPU
//! (getrusage) per run; the heap's peak over one run (a counting global
//! allocator); and 20 runs of `diff -r` (GNU diffutils) of the two
//! `etc/systemd/system` directories, wall per run. Besides, each system
//! has 300 `/etc` files (links into the store, in ten directories; 30
//! differ) and its parts (`kernel`, which differs, and `systemd`): 100 runs
//! of `diff_system`, wall, and its heap peak. Run: `cargo bench --bench
//! generations`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use macha::observe::generations::{diff_system, diff_units};

/// Counts the bytes allocated now and the most at once since `reset`.
struct Counting;

static NOW: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = NOW.fetch_add(layout.size() as isize, Ordering::Relaxed) + layout.size() as isize;
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        NOW.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const UNITS: usize = 500;
/// Files of each system's `etc` besides its units; the first 30 differ.
const ETC_FILES: usize = 300;
const RUNS: usize = 100;
const DIFF_RUNS: usize = 20;

/// A hash-like name for `text` (32 characters of Nix's base-32 alphabet).
fn hash_of(text: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut out = String::new();
    for round in 0..32u64 {
        for b in text.bytes().chain(round.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        // The top bits: the low bits of FNV depend only on the low bits of the input.
        out.push(ALPHABET[(h >> 59) as usize] as char);
    }
    out
}

/// The unit file of unit `i` in generation `g` (1 or 2).
fn unit_text(i: usize, g: u32) -> Option<String> {
    let (added, removed) = ((490..500).contains(&i), (480..490).contains(&i));
    if (g == 1 && added) || (g == 2 && removed) {
        return None;
    }
    let version = if g == 2 && i < 50 { "2.1.0" } else { "2.0.9" };
    let package = format!("/nix/store/{}-app{i}-{version}", hash_of(&format!("app{i}-{version}")));
    let workers = if g == 2 && (50..60).contains(&i) { 8 } else { 4 };
    Some(format!(
        "[Unit]\nDescription=service {i}\nAfter=network.target\nRequires=db{}.service\n\n[Service]\n\
         ExecStart={package}/bin/app{i} --config /etc/app{i}.conf\nEnvironment=WORKERS={workers}\n\
         Environment=PATH={package}/bin\nRestart=on-failure\n",
        i % 7
    ))
}

fn system(root: &Path, g: u32) -> PathBuf {
    let store = root.join("store");
    let sys = store.join(format!("{}-nixos-system-bench-{g}", hash_of(&format!("system{g}"))));
    let dir = sys.join("etc/systemd/system");
    std::fs::create_dir_all(dir.join("multi-user.target.wants")).unwrap();
    let link = |text: &str, name: &str, to: &Path| {
        let path = store.join(format!("{}-unit-{name}", hash_of(text)));
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join(name), text).unwrap();
        symlink(path.join(name), to).unwrap();
    };
    for i in 0..UNITS {
        let Some(text) = unit_text(i, g) else { continue };
        let name = format!("app{i}.service");
        link(&text, &name, &dir.join(&name));
        symlink(dir.join(&name), dir.join("multi-user.target.wants").join(&name)).unwrap();
        if g == 2 && (60..80).contains(&i) {
            std::fs::create_dir_all(dir.join(format!("{name}.d"))).unwrap();
            let conf = "[Service]\nLimitNOFILE=65536\n";
            link(conf, "overrides.conf", &dir.join(format!("{name}.d/overrides.conf")));
        }
    }
    // The system's parts (the kernel differs) and its /etc files, each a
    // link into a store path of its own, in ten directories.
    let kernel = if g == 2 { "6.6.31" } else { "6.6.30" };
    for (name, path) in [("kernel", format!("linux-{kernel}/bzImage")), ("systemd", "systemd-255.4".into())] {
        symlink(format!("/nix/store/{}-{path}", hash_of(&path)), sys.join(name)).unwrap();
    }
    for i in 0..ETC_FILES {
        let content = if g == 2 && i < 30 { format!("etc {i} new") } else { format!("etc {i}") };
        let at = sys.join(format!("etc/conf{}/file{i}.conf", i % 10));
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        symlink(format!("/nix/store/{}-file{i}.conf", hash_of(&content)), at).unwrap();
    }
    sys
}

fn cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv =
        |t: nix::sys::time::TimeVal| Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64);
    tv(u.user_time()) + tv(u.system_time())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (system(dir.path(), 1), system(dir.path(), 2));
    let first = diff_units(&a, &b);
    let changed = first.units.len() + first.more;
    println!("two generations of {UNITS} units; {changed} units differ ({} detailed)", first.units.len());
    // 50 bumped, 10 with another environment, 10 added, 10 removed, 20 with
    // a drop-in, and multi-user.target, which pulls in other services.
    assert_eq!(changed, 101, "the generated generations differ as described");

    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let (w, c) = (Instant::now(), cpu());
        let d = diff_units(&a, &b);
        cpus.push(cpu() - c);
        walls.push(w.elapsed());
        assert_eq!(d, first);
    }
    let before = NOW.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let d = diff_units(&a, &b);
    let peak = PEAK.load(Ordering::Relaxed) - before;
    drop(d);

    let system_first = diff_system(&a, &b);
    assert_eq!((system_first.parts.len(), system_first.etc.len()), (1, 30), "{system_first:?}");
    let mut system_walls = Vec::new();
    for _ in 0..RUNS {
        let w = Instant::now();
        let d = diff_system(&a, &b);
        system_walls.push(w.elapsed());
        assert_eq!(d, system_first);
    }
    let before = NOW.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let d = diff_system(&a, &b);
    let system_peak = PEAK.load(Ordering::Relaxed) - before;
    drop(d);

    let mut diffs = Vec::new();
    for _ in 0..DIFF_RUNS {
        let w = Instant::now();
        let out = Command::new("diff")
            .arg("-r")
            .arg(a.join("etc/systemd/system"))
            .arg(b.join("etc/systemd/system"))
            .output()
            .expect("GNU diff");
        diffs.push(w.elapsed());
        assert_eq!(out.status.code(), Some(1), "the trees differ");
    }

    println!("\n| measure | value |\n|---|---|");
    println!("| diff_units, wall, median of {RUNS} | {:.2} ms |", median(walls).as_secs_f64() * 1e3);
    println!("| diff_units, CPU (user+sys), median of {RUNS} | {:.2} ms |", median(cpus).as_secs_f64() * 1e3);
    println!("| diff_units, heap peak of one run | {:.1} KiB |", peak as f64 / 1024.0);
    println!(
        "| `diff -r` of the two unit directories, wall, median of {DIFF_RUNS} | {:.2} ms |",
        median(diffs).as_secs_f64() * 1e3
    );
    println!(
        "| diff_system ({ETC_FILES} /etc files, 30 differ, and the parts), wall, median of {RUNS} | {:.2} ms |",
        median(system_walls).as_secs_f64() * 1e3
    );
    println!("| diff_system, heap peak of one run | {:.1} KiB |", system_peak as f64 / 1024.0);
}
