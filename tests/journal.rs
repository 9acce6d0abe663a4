//! The journal source under hostile conditions: journal files cut short
//! while macha reads them (journald does this when it rotates and vacuums),
//! a SIGBUS that is not macha's to catch, and a `journal.cursor` that is
//! garbage.

mod common;

use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{macha_bin, Bed, MODEL};
use macha_testbed::journal::{error_line, write_file, write_file_until};
use macha_testbed::ollama::OllamaDouble;
use serde_json::Value;

/// Config for macha reading the journal in `journal` alone: systemd is out
/// of reach (that source fails, exit code 2), the lookback is `interval`,
/// and no line count makes an incident.
fn journal_only_config(state: &Path, journal: &Path, model_url: &str, interval: u64) -> String {
    format!(
        "autonomy_level = \"observe\"
check_interval = {interval}
state_dir = \"{}\"
dbus_address = \"unix:path=/nonexistent/bus\"
journal_dir = \"{}\"

[ollama]
url = \"{model_url}\"
model = \"{MODEL}\"
timeout = 2

[detect]
disk_full_percent = 100
memory_pressure_percent = 100
error_burst_lines = 1000000
",
        state.display(),
        journal.display()
    )
}

/// A journal directory with one file of 20 000 err lines stamped up to
/// `newest`, and a thread that cuts the file to a few pages and makes it
/// whole again, over and over, in place (the same inode, as journald's
/// ftruncate does).
struct Cutter {
    dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Cutter {
    fn start(newest: std::time::SystemTime) -> Cutter {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("system.journal");
        let lines = (0..20_000).map(|i| error_line("app.service", &format!("request {i} failed")));
        write_file_until(&file, newest, lines).unwrap();
        let whole = std::fs::read(&file).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
                let mut cuts = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    f.set_len(4096 * (1 + cuts % 16)).unwrap();
                    std::thread::sleep(Duration::from_millis(15));
                    f.write_all_at(&whole, 0).unwrap();
                    std::thread::sleep(Duration::from_millis(15));
                    cuts += 1;
                }
                cuts
            })
        };
        Cutter { dir, stop, thread: Some(thread) }
    }

    fn journal(&self) -> &Path {
        self.dir.path()
    }

    /// Stops cutting; how many cuts there were.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

#[test]
fn macha_check_survives_journal_files_cut_short_while_it_reads_them() {
    let cutter = Cutter::start(std::time::SystemTime::now());
    let state = tempfile::tempdir().unwrap();
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let config = state.path().join("config.toml");
    let text = journal_only_config(&state.path().join("state"), cutter.journal(), &double.url(), 3600);
    std::fs::write(&config, text).unwrap();

    let (mut died, mut cut_short, mut other_errors, mut read) = (Vec::new(), 0, Vec::new(), 0);
    const RUNS: usize = 30;
    for run in 0..RUNS {
        // No cursor: each run reads the whole file again.
        std::fs::remove_file(state.path().join("state/journal.cursor")).ok();
        let out = Command::new(macha_bin()).arg("--config").arg(&config).args(["check", "--json"]).output().unwrap();
        if let Some(signal) = out.status.signal() {
            died.push(format!("run {run}: signal {signal}: {}", String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        assert_eq!(out.status.code(), Some(2), "systemd is out of reach: {}", String::from_utf8_lossy(&out.stderr));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let sources = report["failed_sources"].as_array().unwrap();
        match sources.iter().find(|s| s["source"] == "journal").map(|s| s["error"].as_str().unwrap()) {
            Some(error) if error.contains(CUT_SHORT) => cut_short += 1,
            // A file read while it is made whole again can also look corrupt.
            Some(error) => other_errors.push(error.to_owned()),
            None => read += 1,
        }
    }
    let cuts = cutter.stop();
    eprintln!(
        "{RUNS} runs, {cuts} cuts: {cut_short} caught a cut, {read} read the journal, other errors: {other_errors:?}"
    );
    assert_eq!(died, Vec::<String>::new(), "runs killed by a signal");
}

/// How a pass reports a file cut short under it.
const CUT_SHORT: &str = "a journal file was cut short while it was being read";

#[test]
fn the_daemon_survives_journal_files_cut_short_while_it_reads_them() {
    // Stamped an hour ahead, the entries stay in the daemon's one-second
    // look-back window: each cycle without a cursor reads all of them.
    let cutter = Cutter::start(std::time::SystemTime::now() + Duration::from_secs(3600));
    let state = tempfile::tempdir().unwrap();
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let config = state.path().join("config.toml");
    std::fs::write(&config, journal_only_config(&state.path().join("state"), cutter.journal(), &double.url(), 1))
        .unwrap();
    let log = state.path().join("stderr");
    let mut daemon = Command::new(macha_bin())
        .arg("--config")
        .arg(&config)
        .arg("daemon")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut exited = None;
    while started.elapsed() < Duration::from_secs(12) && exited.is_none() {
        std::fs::remove_file(state.path().join("state/journal.cursor")).ok();
        std::thread::sleep(Duration::from_millis(100));
        exited = daemon.try_wait().unwrap();
    }
    let cuts = cutter.stop();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(exited, None, "the daemon ended while files were cut: {stderr}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = daemon.wait().unwrap();
    let caught = stderr.matches(CUT_SHORT).count();
    eprintln!("{cuts} cuts, {} cycles, {caught} caught a cut", stderr.matches("cycle done").count());
    assert_eq!(status.code(), Some(0), "stopped cleanly: {status:?}");
    assert!(caught > 0, "the cuts reached the reader: {stderr}");
}

/// What the child of [`a_sigbus_that_is_not_a_journal_read_still_ends_the_process`] does.
const CHILD: &str = "MACHA_TEST_SIGBUS_CHILD";

#[test]
fn a_sigbus_that_is_not_a_journal_read_still_ends_the_process() {
    if let Some(how) = std::env::var_os(CHILD) {
        // Reading a journal installs macha's handler.
        let journal = tempfile::tempdir().unwrap();
        write_file(&journal.path().join("system.journal"), (0..10).map(|i| error_line("a.service", &i.to_string())))
            .unwrap();
        macha::observe::journal::scan_errors(Some(journal.path()), None, Duration::from_secs(60), 1).unwrap();
        if how == "fault" {
            // A mapping of a file cut short, touched outside any journal call.
            let file = tempfile::tempfile().unwrap();
            file.set_len(8192).unwrap();
            let length = std::num::NonZeroUsize::new(8192).unwrap();
            let prot = nix::sys::mman::ProtFlags::PROT_READ;
            let flags = nix::sys::mman::MapFlags::MAP_SHARED;
            let map = unsafe { nix::sys::mman::mmap(None, length, prot, flags, &file, 0) }.unwrap();
            file.set_len(0).unwrap();
            let byte = unsafe { std::ptr::read_volatile(map.as_ptr().cast::<u8>().add(4096)) };
            println!("read {byte} from a page past the end of the file");
        } else {
            nix::sys::signal::raise(nix::sys::signal::Signal::SIGBUS).unwrap();
        }
        std::process::exit(0);
    }
    for how in ["fault", "raise"] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "a_sigbus_that_is_not_a_journal_read_still_ends_the_process", "--nocapture"])
            .env(CHILD, how)
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(nix::libc::SIGBUS),
            "{how}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// The state directory's cursor file.
fn cursor_file(bed: &Bed) -> std::path::PathBuf {
    bed.state_dir().join("journal.cursor")
}

/// Writes 25 err lines from `noisy.service` in the container.
fn noisy(bed: &Bed) {
    bed.c.exec_ok(&["systemctl", "start", "noisy.service"]).unwrap();
}

/// `macha-check --json`: the report and what it wrote on stderr.
fn check(bed: &Bed) -> (Value, String) {
    bed.c.sync_journal().unwrap();
    let out = bed.run("macha-check", &["--json"]);
    (serde_json::from_slice(&out.stdout).unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn burst_seen(report: &Value) -> bool {
    report["incidents"].as_array().unwrap().iter().any(|i| i["fingerprint"] == "error-burst:noisy.service")
}

#[test]
fn a_garbage_journal_cursor_is_replaced_and_the_journal_read_from_the_lookback_window() {
    let bed = Bed::new("cursor", "observe");
    // Look back ten minutes when there is no usable cursor.
    bed.write_config("observe", "check_interval = 600");
    bed.c
        .install_unit(
            "noisy.service",
            "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'for i in $(seq 1 25); do echo \"<3>write error $i\"; done'\n",
        )
        .unwrap();
    noisy(&bed);
    let (report, _) = check(&bed);
    assert!(burst_seen(&report), "{report:#}");
    let good = std::fs::read_to_string(cursor_file(&bed)).unwrap();
    assert!(good.starts_with("s="), "{good}");

    let ahead = (chrono::Utc::now() + chrono::Duration::days(1)).timestamp_micros();
    let garbage: [(&str, String); 4] = [
        ("random text", "\u{1b}[2Jnot a cursor at all; rm -rf /\n".into()),
        (
            "another journal's cursor",
            format!(
                "s=5b1e2c8d9f0a4b3c8d7e6f5a4b3c2d1e;i=1f2;b=0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f;m=2a3b4c;t={ahead:x};x=9d8c7b6a5f4e3d2c"
            ),
        ),
        ("an empty file", String::new()),
        ("a huge file", "A".repeat(4 << 20)),
    ];
    for (what, text) in garbage {
        std::fs::write(cursor_file(&bed), &text).unwrap();
        let (report, stderr) = check(&bed);
        assert_eq!(report["failed_sources"], serde_json::json!([]), "{what}: {report:#}");
        assert!(burst_seen(&report), "{what}: the lookback window was read: {report:#}");
        let warnings = stderr.matches("journal.cursor").count();
        assert_eq!(warnings, usize::from(!text.is_empty()), "{what}: said once: {stderr}");
        assert!(
            !stderr.contains("rm -rf") && !stderr.contains('\u{1b}'),
            "{what}: the content is not echoed: {stderr}"
        );
        let written = std::fs::read_to_string(cursor_file(&bed)).unwrap();
        assert!(written.starts_with("s=") && written != text, "{what}: a good cursor is written: {written:?}");

        // The next cycle starts from the new cursor: nothing to warn about,
        // no line read twice, new lines read.
        let (report, stderr) = check(&bed);
        assert!(!stderr.contains("journal.cursor"), "{what}: {stderr}");
        assert!(!burst_seen(&report), "{what}: read from the new cursor: {report:#}");
        noisy(&bed);
        let (report, _) = check(&bed);
        assert!(burst_seen(&report), "{what}: {report:#}");
    }
}

#[test]
fn a_cursor_whose_entry_was_vacuumed_is_still_used() {
    let bed = Bed::new("vacuumed", "observe");
    bed.write_config("observe", "check_interval = 600");
    bed.c
        .install_unit("noisy.service", "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo \"<3>write error\"'\n")
        .unwrap();
    for _ in 0..3 {
        noisy(&bed);
    }
    let (_, _) = check(&bed);
    let cursor = std::fs::read_to_string(cursor_file(&bed)).unwrap();
    // journald archives the file holding the cursor's entry and deletes it.
    bed.c.exec_ok(&["journalctl", "--rotate"]).unwrap();
    bed.c.exec_ok(&["journalctl", "--vacuum-size=1"]).unwrap();
    let from = bed.c.exec(&["journalctl", "-q", "-o", "export", "--cursor", cursor.trim()]).unwrap();
    let first = String::from_utf8_lossy(&from.stdout).lines().next().unwrap_or_default().to_owned();
    assert!(
        first.starts_with("__CURSOR=s=") && first != format!("__CURSOR={}", cursor.trim()),
        "the entry is gone: {first}"
    );
    for _ in 0..25 {
        noisy(&bed);
    }
    let (report, stderr) = check(&bed);
    assert!(!stderr.contains("journal.cursor"), "the cursor is this journal's: {stderr}");
    assert_eq!(report["failed_sources"], serde_json::json!([]), "{report:#}");
    assert!(burst_seen(&report), "the lines after it were read: {report:#}");
}
