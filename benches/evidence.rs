//! Measures what BENCHMARKS.md reports under "Evidence compaction": a burst
//! of 100 000 error lines of 50 kinds written into the test container's
//! journal, read by macha's observer, folded and rendered into a prompt.
//! Run as root: `cargo bench --bench evidence`.
//!
//! Method: boot the test container; generate the burst
//! (`benches/support/burst.rs`: 50 kinds, each line with its own numbers,
//! ids, hashes, paths and addresses) and have one unit `cat` it into the
//! journal, with journald's rate limit off for that unit. Then, in a fresh
//! process each time (this program run again as a child, so its peak memory
//! is macha's alone):
//!
//! - `fold`, 5 runs: connect to the container's systemd, then time
//!   `Observer::observe` from the cursor before the burst, `detect` and
//!   `Prompts::render_within` with the default budget (wall, and CPU from
//!   getrusage). Memory: the heap's peak over that span, from a counting
//!   global allocator, and `VmHWM`, `RssAnon` and `RssFile` from /proc
//!   (libsystemd maps the journal files, so RSS also counts their pages).
//! - `lines`, once, for comparison: the same entries read as lines
//!   (`journal::unit_tail`), as a reader that keeps every entry would.
//! - `check`, once: the release `macha check --json` binary against the
//!   container and the Ollama double; its peak RSS from getrusage of its
//!   parent, which starts nothing else.
//!
//! Template recall is counted on the prompt the double received: a kind is
//! named when its masked template appears on a template line with the
//! number of lines the kind had. That request is then sent to the double
//! again, and the `prompt_eval_count` it answers (its own count: a token
//! per four characters) is set against `estimate_tokens`. Folding alone
//! (redact, mask, push, no journal) is timed in this process over the
//! generated lines.

#[path = "support/burst.rs"]
mod burst;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use macha::config::Config;
use macha::decide::prompt::{Prompts, DEFAULT_INPUT_BUDGET};
use macha::decide::tokens::estimate_tokens;
use macha::detect::detect;
use macha::observe::fold::{Folded, Writer};
use macha::observe::{journal, Observer};
use macha_testbed::container::Container;
use macha_testbed::ollama::{OllamaDouble, Reply};
use nix::sys::resource::{getrusage, UsageWho};
use serde_json::{json, Value};

use self::burst::{Burst, KINDS, UNIT};

const LINES: usize = 100_000;
const RUNS: usize = 5;
const MODEL: &str = "llama3.1:70b";
/// The first argument that makes this program a measuring child.
const CHILD: &str = "--evidence-child";

/// The system allocator, counting the bytes in use and their peak while
/// `COUNTING` is set (only in the children that measure memory, so the
/// timed runs pay nothing for it).
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
/// Bytes allocated less bytes freed since counting began (blocks from
/// before that are freed make it lower), and its highest value.
static IN_USE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(bytes: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        let now = IN_USE.fetch_add(bytes as isize, Ordering::Relaxed) + bytes as isize;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

fn shrank(bytes: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        IN_USE.fetch_sub(bytes as isize, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Counts allocations from now on, from zero.
fn count_from_now() {
    IN_USE.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
}

fn cpu(who: UsageWho) -> Duration {
    let u = getrusage(who).unwrap();
    let t = |tv: nix::sys::time::TimeVal| Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000);
    t(u.user_time()) + t(u.system_time())
}

fn status_kb(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(CHILD) {
        let out = match args[2].as_str() {
            "fold" => fold(Path::new(&args[3]), &args[4], args[5] == "memory"),
            "lines" => lines(Path::new(&args[3])),
            "check" => check(Path::new(&args[3])),
            other => panic!("unknown child mode {other}"),
        };
        println!("{out}");
        return;
    }
    parent();
}

/// Observe, detect and render once, timed, or with its heap counted.
fn fold(config: &Path, cursor: &str, count_heap: bool) -> Value {
    let config = Config::load(Some(config)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let prompts = Prompts::load(None).unwrap();
    let mut observer = Observer::new(&config);
    rt.block_on(observer.systemd()).expect("connect to the container's systemd");
    if count_heap {
        count_from_now();
    }
    let (cpu0, wall0) = (cpu(UsageWho::RUSAGE_SELF), Instant::now());
    let snap = rt.block_on(observer.observe(Some(cursor), &[], macha::observe::Scope::Full));
    let incident = detect(&snap, &[], &config.detect)
        .into_iter()
        .find(|i| i.fingerprint == format!("error-burst:{UNIT}"))
        .expect("the burst is an incident");
    let rendered = prompts.render_within(&incident, &snap, DEFAULT_INPUT_BUDGET);
    let (wall, cpu_time) = (wall0.elapsed(), cpu(UsageWho::RUSAGE_SELF) - cpu0);
    let scan = snap.journal.ok().unwrap();
    json!({
        "wall_ms": wall.as_secs_f64() * 1e3,
        "cpu_ms": cpu_time.as_secs_f64() * 1e3,
        "heap_peak": PEAK.load(Ordering::Relaxed),
        "heap_after": IN_USE.load(Ordering::Relaxed),
        "hwm_kb": status_kb("VmHWM:"),
        "anon_kb": status_kb("RssAnon:"),
        "file_kb": status_kb("RssFile:"),
        "entries": scan.per_unit.get(UNIT),
        "templates": scan.evidence[UNIT].templates().len(),
        "tokens": rendered.tokens,
        "fits": rendered.fits(),
    })
}

/// The burst's entries read and kept as lines.
fn lines(config: &Path) -> Value {
    let config = Config::load(Some(config)).unwrap();
    count_from_now();
    let entries = journal::unit_tail(config.journal_dir.as_deref(), UNIT, LINES + 10).unwrap();
    json!({
        "entries": entries.len(),
        "heap_peak": PEAK.load(Ordering::Relaxed),
        "hwm_kb": status_kb("VmHWM:"),
    })
}

/// One `macha check --json`: wall time and peak RSS.
fn check(config: &Path) -> Value {
    let started = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_macha"))
        .args(["--config".as_ref(), config.as_os_str(), "check".as_ref(), "--json".as_ref()])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    let wall = started.elapsed();
    let maxrss_kb = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap().max_rss();
    json!({ "exit": status.code(), "wall_ms": wall.as_secs_f64() * 1e3, "maxrss_kb": maxrss_kb })
}

fn child(mode: &str, args: &[&str]) -> Value {
    let out = Command::new(std::env::current_exe().unwrap()).arg(CHILD).arg(mode).args(args).output().unwrap();
    assert!(out.status.success(), "child {mode}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The double's own token count for a chat request: it is sent again and
/// the answer's `prompt_eval_count` read.
fn double_count(url: &str, body: &Value) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answer: Value = rt.block_on(async {
        let response = reqwest::Client::new().post(format!("{url}/api/chat")).json(body).send().await.unwrap();
        response.json().await.unwrap()
    });
    answer["prompt_eval_count"].as_u64().expect("the double counts prompt tokens")
}

/// Folding alone: the generated lines pushed into a fold, no journal.
fn fold_only(burst: &Burst) -> Duration {
    let writer = Writer { unit: Some(UNIT.into()), comm: Some("cat".into()), uid: Some(0) };
    let lines: Vec<(u8, &str)> =
        burst.text.lines().map(|l| (l.as_bytes()[1] - b'0', &l[3..])).filter(|(p, _)| *p <= 3).collect();
    let now = chrono::Utc::now();
    let started = Instant::now();
    let mut fold = Folded::default();
    for (priority, message) in lines {
        fold.push(writer.clone(), priority, now, message);
    }
    assert_eq!(fold.templates().len(), KINDS);
    started.elapsed()
}

/// Bytes of the files under `dir` (the journal's files, which libsystemd
/// maps while reading them).
fn walk_sizes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walk_sizes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn parent() {
    let c = Container::boot("bench-evidence").expect("boot the container (run as root)");
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.set_default(Reply::Json(json!({
        "diagnosis": "a burst of errors", "severity": "warning",
        "actions": [{"kind": "notify_only", "unit": null, "reason": "a human should look"}]
    })));
    let cursor = burst::journal_tail(&c);
    let generated = Instant::now();
    let burst = Burst::generate(LINES);
    let generate_time = generated.elapsed();
    let ingest = burst.plant(&c);
    let journal_bytes: u64 = walk_sizes(&c.journal_dir());

    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("journal.cursor"), &cursor).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\ncheck_interval = 3600\ndbus_address = \"{}\"\njournal_dir = \"{}\"\n\
             [ollama]\nurl = \"{}\"\nmodel = \"{MODEL}\"\ntimeout = 30\n\
             [detect]\ndisk_full_percent = 100\nmemory_pressure_percent = 100\n",
            state.display(),
            c.bus_address(),
            c.journal_dir().display(),
            double.url()
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();

    let runs: Vec<Value> = (0..RUNS).map(|_| child("fold", &[config_arg, &cursor, "time"])).collect();
    let counted = child("fold", &[config_arg, &cursor, "memory"]);
    let first = &runs[0];
    assert_eq!(first["entries"], LINES, "journald kept every line");
    let kept_lines = child("lines", &[config_arg]);
    let checked = child("check", &[config_arg]);

    // The prompt the binary sent.
    let chat = double.requests().into_iter().find(|r| r.path == "/api/chat").expect("macha asked the double");
    let text = |i: usize| chat.body["messages"][i]["content"].as_str().unwrap().to_owned();
    let (system, user) = (text(0), text(1));
    let named = burst
        .kinds
        .iter()
        .filter(|k| {
            user.lines().any(|l| l.contains(&format!("] {} times, last ", k.count)) && l.ends_with(&k.template))
        })
        .count();
    let block: Vec<&str> =
        user.lines().skip_while(|l| !l.starts_with("recent error lines of")).take_while(|l| !l.is_empty()).collect();
    let block_bytes: usize = block.iter().map(|l| l.len() + 1).sum();
    let message_bytes: usize = burst.text.lines().map(|l| l.len() - l.find('>').map_or(0, |p| p + 1)).sum();
    let input_tokens = estimate_tokens(&burst.text);
    let prompt_tokens = estimate_tokens(&system) + estimate_tokens(&user);
    let double_tokens = double_count(&double.url(), &chat.body);
    let fold_time = fold_only(&burst);

    let mb = |kb: u64| kb as f64 / 1024.0;
    let kib = |v: &Value| v.as_i64().unwrap() as f64 / 1024.0;
    let most = |key: &str| runs.iter().map(|r| r[key].as_u64().unwrap()).max().unwrap();
    let fold_wall = median(runs.iter().map(|r| r["wall_ms"].as_f64().unwrap()).collect());
    let fold_cpu = median(runs.iter().map(|r| r["cpu_ms"].as_f64().unwrap()).collect());

    println!("| measure | value |");
    println!("|---|---|");
    println!("| burst: lines, kinds | {LINES}, {KINDS} |");
    println!("| burst: message bytes (without priority prefixes) | {message_bytes} |");
    println!("| burst: estimated tokens, as written | {input_tokens} |");
    println!(
        "| generating the burst / journald reading it | {:.0} ms / {:.1} s |",
        generate_time.as_secs_f64() * 1e3,
        ingest.as_secs_f64()
    );
    println!("| the container's journal files on disk after the burst | {:.1} MB |", journal_bytes as f64 / 1048576.0);
    println!("| entries read by observe / templates | {} / {} |", first["entries"], first["templates"]);
    println!("| observe + detect + render, wall (median of {RUNS}) | {fold_wall:.0} ms |");
    println!("| observe + detect + render, CPU (median of {RUNS}) | {fold_cpu:.0} ms |");
    println!("| of which folding (redact, mask, push; no journal) | {:.0} ms |", fold_time.as_secs_f64() * 1e3);
    println!("| heap peak during observe + render, above the start | {:.0} KiB |", kib(&counted["heap_peak"]));
    println!("| heap still held after (the snapshot and the prompt) | {:.0} KiB |", kib(&counted["heap_after"]));
    println!(
        "| process VmHWM / RssAnon / RssFile after (worst of {RUNS}) | {:.1} / {:.1} / {:.1} MB |",
        mb(most("hwm_kb")),
        mb(most("anon_kb")),
        mb(most("file_kb"))
    );
    println!("| for comparison: the same entries kept as lines (`unit_tail`): heap peak / VmHWM | {:.1} MB / {:.1} MB ({} entries) |", kib(&kept_lines["heap_peak"]) / 1024.0, mb(kept_lines["hwm_kb"].as_u64().unwrap()), kept_lines["entries"]);
    println!(
        "| `macha check` (release binary, whole cycle with the double): wall / peak RSS | {:.0} ms / {:.1} MB |",
        checked["wall_ms"].as_f64().unwrap(),
        mb(checked["maxrss_kb"].as_u64().unwrap())
    );
    println!("| template recall (kinds named with their exact count) | {named} / {KINDS} |");
    println!("| journal block: lines / bytes | {} / {block_bytes} |", block.len());
    println!("| prompt (system + user): bytes | {} |", system.len() + user.len());
    println!("| prompt: estimated tokens (budget {DEFAULT_INPUT_BUDGET}) | {prompt_tokens} |");
    println!(
        "| compaction: lines / message bytes / estimated tokens | {:.0}x / {:.0}x / {:.0}x |",
        LINES as f64 / block.len() as f64,
        message_bytes as f64 / block_bytes as f64,
        input_tokens as f64 / prompt_tokens as f64
    );
    println!(
        "| the double's prompt_eval_count / our estimate | {double_tokens} / {prompt_tokens} ({:.2}) |",
        double_tokens as f64 / prompt_tokens as f64
    );
}
