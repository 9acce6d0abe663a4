//! The command-line front ends, one file per command. They parse arguments,
//! call the library and print; they decide nothing themselves.

pub mod approval;
pub mod approve;
pub mod approver;
pub mod ask;
pub mod check;
pub mod control;
pub mod discuss;
pub mod docs;
pub mod eval;
pub mod generations;
pub mod kb;
pub mod logs;
pub mod notify;
pub mod output;
pub mod progress;
pub mod remote;
pub mod stats;
pub mod status;

use std::path::Path;
use std::process::ExitCode;
use std::sync::OnceLock;

use nix::unistd::{Gid, Uid};

use macha::config::Config;
use macha::model::ModelService;
use macha::notify::Channel;
use macha::notify::Notifier;
use macha::state_dir::StateDir;

use output::{outln, shown};

/// A single-threaded runtime: macha's work is I/O-bound and sequential, and
/// one thread keeps the idle daemon small.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub fn daemon(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let model = ModelService::new(&config)?;
    let channels = macha::notify::channel::configured(&config)?;
    let state = state_dir(&config)?;
    macha::logging::init_orchestrator(&state, "info", config.retention.log())?;
    runtime()?.block_on(tokio::task::LocalSet::new().run_until(macha::daemon::run(config, state, model, channels)))?;
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

/// Notifications as configured, with `channels` from
/// `macha::notify::channel::configured` (which reads the token files: a bad
/// one is an error at start-up).
pub fn notifications(
    config: &Config,
    state: &StateDir,
    channels: Vec<Channel>,
) -> anyhow::Result<(Option<Notifier>, Vec<Channel>)> {
    Ok(match macha::notify::setup(config, state, channels)? {
        Some((n, c)) => (Some(n), c),
        None => (None, Vec::new()),
    })
}

/// One delivery pass of each channel, all at once, for commands that exit
/// right after (the daemon has its own delivery tasks). What cannot be
/// delivered stays in the outbox for the daemon; the user is told.
pub async fn deliver_now(config: &Config, state: &StateDir, channels: &[Channel]) {
    let each = channels.iter().map(|channel| async move {
        let result = async {
            let outbox = macha::notify::outbox::Outbox::open(state)?;
            macha::notify::deliver_due(&outbox, channel, config.gotify.retry_max).await
        };
        let name = channel.name();
        match tokio::time::timeout(std::time::Duration::from_secs(20), result).await {
            Ok(Ok(d)) if d.held > 0 => eprintln!(
                "notifications ({name}): {} held for later delivery ({})",
                d.held,
                shown(&d.error.unwrap_or_default())
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("notifications ({name}): {}", shown(&e.to_string())),
            Err(_) => eprintln!("notifications ({name}): no answer in time; messages held for later delivery"),
        }
    });
    futures_util::future::join_all(each).await;
}

/// Who ran this command, as they were before `state_dir` made this process
/// the state directory's owner: whether they may decide, and the name
/// recorded as the approver, are theirs.
pub struct Caller {
    uid: Uid,
    gids: Vec<Gid>,
    name: String,
}

impl Caller {
    /// The caller, as first seen by this process.
    pub fn get() -> &'static Caller {
        static CALLER: OnceLock<Caller> = OnceLock::new();
        CALLER.get_or_init(|| {
            use nix::unistd::{getegid, getgid, getgroups, getuid, User};
            let uid = getuid();
            let mut gids = getgroups().unwrap_or_default();
            gids.extend([getgid(), getegid()]);
            let name = match User::from_uid(uid) {
                Ok(Some(u)) => format!("{} (uid {uid})", u.name),
                _ => format!("uid {uid}"),
            };
            Caller { uid, gids, name }
        })
    }

    pub fn is_root(&self) -> bool {
        self.uid.is_root()
    }

    pub fn uid(&self) -> Uid {
        self.uid
    }

    /// Whether `gid` is the caller's group, primary or supplementary.
    pub fn in_group(&self, gid: Gid) -> bool {
        self.gids.contains(&gid)
    }

    /// "alice (uid 1000)".
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The state directory, open, created (owner-only) if it does not exist.
/// See `enter_state_dir` for what happens when root runs the command.
pub fn state_dir(config: &Config) -> anyhow::Result<StateDir> {
    enter_state_dir(config)?;
    let state = StateDir::create(&config.state_dir)?;
    warn_if_open(&state);
    Ok(state)
}

/// The state directory, open, if it exists (commands that only read).
pub fn existing_state_dir(config: &Config) -> anyhow::Result<Option<StateDir>> {
    enter_state_dir(config)?;
    match StateDir::open(&config.state_dir) {
        Ok(state) => {
            warn_if_open(&state);
            Ok(Some(state))
        }
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The state directory, open; an error naming it when it does not exist
/// (commands about what macha did, which there is nothing of yet).
pub fn required_state_dir(config: &Config) -> anyhow::Result<StateDir> {
    existing_state_dir(config)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the state directory {} does not exist: macha has not run here yet (or `state_dir` names another directory)",
            config.state_dir.display()
        )
    })
}

/// When root runs a command against a state directory that belongs to
/// another user (the daemon's), this process becomes that user, for good
/// (user, primary group and supplementary groups, as a login would), before
/// it opens anything there: whatever that user planted in the directory
/// can then do nothing to root's files, and what the command creates there
/// is the daemon's, as the daemon needs. The caller is noted first (the
/// approver check and the approver's name are theirs), and everything only
/// root may read (the Gotify token, the fallback's key) must be read before
/// this is called, as must no thread or runtime have started.
fn enter_state_dir(config: &Config) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    Caller::get();
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    match std::fs::symlink_metadata(&config.state_dir) {
        // A link is refused when the directory is opened.
        Ok(meta) if meta.is_dir() && meta.uid() != 0 => become_owner(&config.state_dir, meta.uid(), meta.gid()),
        _ => Ok(()),
    }
}

fn become_owner(dir: &Path, uid: u32, dir_gid: u32) -> anyhow::Result<()> {
    use nix::unistd::{initgroups, setgroups, setresgid, setresuid, User};
    let uid = Uid::from_raw(uid);
    let user = User::from_uid(uid).ok().flatten();
    let gid = user.as_ref().map_or(Gid::from_raw(dir_gid), |u| u.gid);
    let who = user.as_ref().map_or_else(|| format!("uid {uid}"), |u| format!("{} (uid {uid})", u.name));
    let fail = |e: nix::Error| {
        anyhow::anyhow!("cannot work as {who}, the owner of the state directory {}: {e}", dir.display())
    };
    match &user {
        Some(u) => initgroups(&std::ffi::CString::new(u.name.as_str())?, gid).map_err(fail)?,
        None => setgroups(&[gid]).map_err(fail)?,
    }
    setresgid(gid, gid, gid).map_err(fail)?;
    setresuid(uid, uid, uid).map_err(fail)?;
    if setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok() {
        anyhow::bail!("gave up root for {who}, but could take it back: refusing to go on");
    }
    Ok(())
}

/// Says so, once, when others than the owner may write the state directory:
/// they could replace anything in it.
fn warn_if_open(state: &StateDir) {
    if let Ok(meta) = state.own_metadata() {
        let mode = meta.permissions();
        if mode & 0o022 != 0 {
            eprintln!(
                "macha: warning: the state directory {} can be written by {} (mode {mode:04o}); only its owner should write it: chmod go-w {}",
                state.path().display(),
                if mode & 0o002 != 0 { "every user" } else { "its group" },
                state.path().display()
            );
        }
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
