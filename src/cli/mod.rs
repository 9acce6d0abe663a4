//! The command-line front ends, one file per command. They parse arguments,
//! call the library and print; they decide nothing themselves.

pub mod approve;
pub mod ask;
pub mod check;
pub mod control;
pub mod discuss;
pub mod docs;
pub mod eval;
pub mod logs;
pub mod notify;
pub mod output;
pub mod stats;
pub mod status;

use std::path::Path;
use std::process::ExitCode;

use macha::config::Config;
use macha::notify::gotify::Gotify;
use macha::notify::Notifier;

use output::{outln, shown};

/// A single-threaded runtime: macha's work is I/O-bound and sequential, and
/// one thread keeps the idle daemon small.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub fn daemon(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    macha::cycle::ensure_state_dir(&config.state_dir)?;
    macha::logging::init_orchestrator(&config.state_dir, "info")?;
    runtime()?.block_on(tokio::task::LocalSet::new().run_until(macha::daemon::run(config)))?;
    Ok(ExitCode::SUCCESS)
}

/// `macha helper NAME`: the root side of a `macha-action-NAME.service`.
/// Exit 0 when the work was done, 1 when it failed or was refused.
pub fn helper(config: Option<&Path>, name: &str) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("macha helper runs as root, from its unit macha-action-{name}.service");
    }
    let config = Config::load(config)?;
    match macha::act::root::serve(&config, name) {
        Ok(summary) => {
            outln!("macha helper {name}: {}", shown(&summary))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("macha helper {name}: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Notifications as configured; a bad token file is an error here, at start-up.
pub fn notifications(config: &Config) -> anyhow::Result<(Option<Notifier>, Option<Gotify>)> {
    Ok(match macha::notify::setup(config)? {
        Some((n, g)) => (Some(n), Some(g)),
        None => (None, None),
    })
}

/// One delivery pass for commands that exit right after (the daemon has its
/// own delivery task). What cannot be delivered stays in the outbox for the
/// daemon; the user is told.
pub async fn deliver_now(config: &Config, gotify: &Gotify) {
    let result = async {
        let outbox = macha::notify::outbox::Outbox::open(&config.state_dir)?;
        macha::notify::deliver_due(&outbox, gotify, config.gotify.retry_max).await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(20), result).await {
        Ok(Ok(d)) if d.held > 0 => {
            eprintln!("notifications: {} held for later delivery ({})", d.held, shown(&d.error.unwrap_or_default()))
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("notifications: {}", shown(&e.to_string())),
        Err(_) => eprintln!("notifications: Gotify did not answer in time; messages held for later delivery"),
    }
}

/// When root runs a command on a state directory that belongs to the
/// daemon's user, the files it creates or replaces there (SQLite's `-wal` and
/// `-shm`, audit files and their seals, proposals) must stay the daemon's,
/// or the daemon could no longer write them. Dropping this hands them back.
pub struct KeepOwnership {
    dir: std::path::PathBuf,
    uid: u32,
    gid: u32,
}

impl KeepOwnership {
    pub fn new(dir: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let meta = std::fs::metadata(dir).ok()?;
        (meta.uid() != 0).then(|| Self { dir: dir.to_path_buf(), uid: meta.uid(), gid: meta.gid() })
    }

    fn restore(&self, dir: &Path, depth: u32) {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.uid() != self.uid || meta.gid() != self.gid {
                if let Err(e) = std::os::unix::fs::lchown(&path, Some(self.uid), Some(self.gid)) {
                    eprintln!("macha: cannot give {} back to uid {}: {e}", path.display(), self.uid);
                }
            }
            if meta.is_dir() && depth > 0 {
                self.restore(&path, depth - 1);
            }
        }
    }
}

impl Drop for KeepOwnership {
    fn drop(&mut self) {
        self.restore(&self.dir, 1);
    }
}

/// "3m", "5h", "2d": how long ago something happened.
pub fn age(since: chrono::DateTime<chrono::Utc>) -> String {
    let secs = (chrono::Utc::now() - since).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}
