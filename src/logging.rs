//! The daemon's own log: human lines on stderr (which systemd puts in the
//! journal) and JSON lines in `orchestrator.log` in the state directory,
//! which `macha-logs orchestrator` reads.
//!
//! `orchestrator.log` is moved aside (`orchestrator.log.1`, ...) past
//! `retention.log_max_kb`, while the process runs, not only when it starts;
//! `retention.log_files` are kept.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::rotation::{self, Naming, Rotation};
use crate::state_dir::StateDir;

pub const ORCHESTRATOR_LOG: &str = "orchestrator.log";

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("MACHA_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// Logging for commands that talk to a person: warnings and errors only.
pub fn init_cli() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter("warn"))
        .without_time()
        .try_init();
}

/// Logging for the daemon and for `macha-check`: stderr plus `orchestrator.log`.
pub fn init_orchestrator(state: &StateDir, stderr_level: &str, rotation: Rotation) -> anyhow::Result<()> {
    let _ = orchestrator(state, stderr_level, rotation)?.try_init();
    Ok(())
}

/// What `init_orchestrator` installs for the whole process, for a caller
/// that installs it itself (a test, for one thread).
pub fn orchestrator(
    state: &StateDir,
    stderr_level: &str,
    rotation: Rotation,
) -> anyhow::Result<impl tracing::Subscriber + Send + Sync + 'static> {
    let log = RotatingLog::open(state, rotation).map_err(|e| anyhow::anyhow!("cannot open the log: {e}"))?;
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_filter(filter(stderr_level));
    let json = fmt::layer().json().with_writer(Mutex::new(log)).with_current_span(false).with_filter(filter("info"));
    Ok(tracing_subscriber::registry().with(stderr).with(json))
}

/// `orchestrator.log`, moved aside before a line would take it past its
/// size. The daemon and `macha-check` may write it at once: each looks at
/// the file's own size before a line, one moves it aside under the file's
/// lock, and the other, finding another file at the name, opens that one.
struct RotatingLog {
    state: StateDir,
    rotation: Rotation,
    file: File,
}

impl RotatingLog {
    fn open(state: &StateDir, rotation: Rotation) -> std::io::Result<Self> {
        let file = state.append(ORCHESTRATOR_LOG)?;
        Ok(Self { state: state.clone(), rotation, file })
    }

    /// Makes room for `incoming` bytes: the file at the name, moved aside
    /// first when the line would take it past its size.
    fn make_room(&mut self, incoming: u64) -> std::io::Result<()> {
        if !self.is_current()? {
            self.file = self.state.append(ORCHESTRATOR_LOG)?;
        }
        let len = self.file.metadata()?.len();
        if len == 0 || len.saturating_add(incoming) <= self.rotation.max_bytes {
            return Ok(());
        }
        self.file.lock()?;
        // Another process may have moved it aside while this one waited.
        let moved = if self.is_current()? {
            rotation::move_aside(&self.state, ORCHESTRATOR_LOG, Naming::Appended, self.rotation.files).map(drop)
        } else {
            Ok(())
        };
        self.file.unlock()?;
        moved?;
        self.file = self.state.append(ORCHESTRATOR_LOG)?;
        Ok(())
    }

    /// Whether the open file is the one the name holds.
    fn is_current(&self) -> std::io::Result<bool> {
        let open = self.file.metadata()?;
        Ok(self.state.metadata(ORCHESTRATOR_LOG)?.is_some_and(|m| m.is_same_file(&open)))
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A log line is never lost to its rotation: when the file cannot be
        // moved aside (or opened again), the line goes to the open one.
        let _ = self.make_room(buf.len() as u64);
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(process: u32, n: u32) -> String {
        format!("{{\"process\":{process},\"n\":{n},\"pad\":\"{}\"}}\n", "x".repeat(80))
    }

    #[test]
    fn the_log_moves_aside_while_two_processes_write_it_and_no_line_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let rotation = Rotation { max_bytes: 4096, files: 100 };
        // The daemon and `macha-check`, each with its own open file.
        let (mut a, mut b) =
            (RotatingLog::open(&state, rotation).unwrap(), RotatingLog::open(&state, rotation).unwrap());
        for n in 0..300 {
            a.write_all(line(1, n).as_bytes()).unwrap();
            if n % 3 == 0 {
                b.write_all(line(2, n).as_bytes()).unwrap();
            }
        }
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let len = std::fs::metadata(&path).unwrap().len();
            assert!(len <= rotation.max_bytes, "{} is {len} bytes", path.display());
            lines.extend(std::fs::read_to_string(&path).unwrap().lines().map(str::to_owned));
        }
        assert_eq!(lines.len(), 400, "every line, once");
        assert!(dir.path().join("orchestrator.log.9").exists(), "moved aside many times");
    }

    #[test]
    fn the_oldest_log_files_beyond_the_limit_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let rotation = Rotation { max_bytes: 1024, files: 3 };
        let mut log = RotatingLog::open(&state, rotation).unwrap();
        for n in 0..200 {
            log.write_all(line(1, n).as_bytes()).unwrap();
        }
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["orchestrator.log", "orchestrator.log.1", "orchestrator.log.2"]);
        let newest = std::fs::read_to_string(dir.path().join(ORCHESTRATOR_LOG)).unwrap();
        assert!(newest.ends_with(&line(1, 199)));
    }
}
