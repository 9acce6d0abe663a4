//! The journal source under hostile conditions: journal files cut short
//! while macha reads them (journald does this when it rotates and vacuums),
//! and a SIGBUS that is not macha's to catch.

mod common;

use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{macha_bin, MODEL};
use macha_testbed::journal::{error_line, write_file};
use macha_testbed::ollama::OllamaDouble;
use serde_json::Value;

/// Config for `macha-check` reading the journal in `journal` alone: systemd
/// is out of reach (that source fails, exit code 2), the lookback is an
/// hour, and no line count makes an incident.
fn journal_only_config(state: &Path, journal: &Path, model_url: &str) -> String {
    format!(
        "autonomy_level = \"observe\"
check_interval = 3600
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
error_burst_lines = 4000000000
",
        state.display(),
        journal.display()
    )
}

#[test]
fn macha_check_survives_journal_files_cut_short_while_it_reads_them() {
    let journal = tempfile::tempdir().unwrap();
    let file = journal.path().join("system.journal");
    write_file(&file, (0..20_000).map(|i| error_line("app.service", &format!("request {i} failed")))).unwrap();
    let whole = std::fs::read(&file).unwrap();
    let state = tempfile::tempdir().unwrap();
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let config = state.path().join("config.toml");
    std::fs::write(&config, journal_only_config(&state.path().join("state"), journal.path(), &double.url())).unwrap();

    // Cut the file to a few pages and make it whole again, over and over,
    // in place (the same inode, as journald's ftruncate does).
    let stop = Arc::new(AtomicBool::new(false));
    let cutter = {
        let (stop, file) = (stop.clone(), file.clone());
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
            Some(error) if error.contains("a journal file was cut short while it was being read") => cut_short += 1,
            // A file read while it is made whole again can also look corrupt.
            Some(error) => other_errors.push(error.to_owned()),
            None => read += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let cuts = cutter.join().unwrap();
    eprintln!(
        "{RUNS} runs, {cuts} cuts: {cut_short} caught a cut, {read} read the journal, other errors: {other_errors:?}"
    );
    assert_eq!(died, Vec::<String>::new(), "runs killed by a signal");
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
