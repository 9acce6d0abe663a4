//! The arguments of a root helper: a file the daemon writes into a
//! directory only its own user can write, and the helper reads and checks
//! again before doing anything.
//!
//! `STATE_DIR/requests/macha-action-NAME.json` holds one `Request`. The
//! helper refuses it unless the state directory, the requests directory and
//! the file belong to the same user and nobody else can write them, the file
//! is a regular file (not a link) that is fresh and small, and its action is
//! the one that helper runs, within the configured bounds. It deletes the
//! file once read, so a request runs at most once.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::Action;
use crate::state_dir::{StateDir, StateError};

/// The directory under the state directory that holds requests.
pub const REQUESTS_DIR: &str = "requests";

/// A request older than this is refused: it was not written for this start.
pub const MAX_AGE_SECS: i64 = 600;

/// Requests are a few hundred bytes; anything larger is not one.
const MAX_SIZE: u64 = 16 * 1024;

const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub version: u32,
    /// Unique per request, echoed in the helper's log.
    pub id: String,
    pub written_at: DateTime<Utc>,
    pub action: Action,
}

/// The file name of the request for `helper_unit` in `REQUESTS_DIR`.
fn file_name(helper_unit: &str) -> String {
    let stem = helper_unit.strip_suffix(".service").unwrap_or(helper_unit);
    format!("{stem}.json")
}

/// Where the request for `helper_unit` lives.
pub fn path(state_dir: &Path, helper_unit: &str) -> PathBuf {
    state_dir.join(REQUESTS_DIR).join(file_name(helper_unit))
}

/// Writes the request for `action`'s helper unit, replacing any older one.
/// It is written as the owner of the state directory (a command run as root
/// works as that user there), as the helper requires.
pub fn write(state: &StateDir, action: &Action) -> Result<Request, String> {
    let unit = action.helper_unit().ok_or_else(|| format!("{action} does not run as a helper"))?;
    let dir = state.subdir(REQUESTS_DIR).map_err(|e| format!("cannot write the request: {e}"))?;
    let now = Utc::now();
    let request = Request {
        version: VERSION,
        id: format!("{}-{}", now.format("%Y%m%dT%H%M%S%.6fZ"), std::process::id()),
        written_at: now,
        action: action.clone(),
    };
    let body = serde_json::to_vec_pretty(&request).expect("a request serialises");
    dir.replace(&file_name(unit), &body).map_err(|e| format!("cannot write the request: {e}"))?;
    Ok(request)
}

/// Why a request was not accepted by the helper.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refused {
    #[error("{0}")]
    Unsafe(String),
    #[error("no request at {0}: macha did not ask for this (the helper runs only on a fresh request)")]
    Missing(String),
    #[error("the request is not valid: {0}")]
    Invalid(String),
    #[error("the request was written at {0}, more than {MAX_AGE_SECS} s ago (or in the future): refused as stale")]
    Stale(String),
    #[error("the request asks for {asked}, but this helper runs {runs}")]
    WrongHelper { asked: String, runs: String },
}

/// Checks that `what` (owned by `owner`, with permission bits `mode`)
/// belongs to `uid` and that nobody else may write it.
fn owned_and_private(what: &Path, owner: u32, mode: u32, uid: u32) -> Result<(), Refused> {
    if owner != uid {
        return Err(Refused::Unsafe(format!(
            "{} belongs to uid {owner}, not to the owner of the state directory (uid {uid})",
            what.display()
        )));
    }
    if mode & 0o022 != 0 {
        return Err(Refused::Unsafe(format!("{} can be written by others (mode {:o}): refused", what.display(), mode)));
    }
    Ok(())
}

/// Reads, checks and consumes the request for `helper_unit`. Called by the
/// helper, as root: the state directory and everything below it are
/// entered through handles, never through a link.
pub fn take(state_dir: &Path, helper_unit: &str, now: DateTime<Utc>) -> Result<Request, Refused> {
    let unsafe_ = |e: StateError| Refused::Unsafe(e.to_string());
    let state = StateDir::open(state_dir).map_err(unsafe_)?;
    let state_meta = state.own_metadata().map_err(unsafe_)?;
    let uid = state_meta.uid();
    owned_and_private(state_dir, uid, state_meta.permissions(), uid)?;
    let missing = || Refused::Missing(path(state_dir, helper_unit).display().to_string());
    let Some(dir) = state.existing_subdir(REQUESTS_DIR).map_err(unsafe_)? else { return Err(missing()) };
    let dir_meta = dir.own_metadata().map_err(unsafe_)?;
    owned_and_private(dir.path(), dir_meta.uid(), dir_meta.permissions(), uid)?;
    if dir_meta.permissions() & 0o077 != 0 {
        return Err(Refused::Unsafe(format!(
            "{} is open to others (mode {:o}); it must be 0700",
            dir.path().display(),
            dir_meta.permissions()
        )));
    }
    let name = file_name(helper_unit);
    let file = dir.path_of(&name);
    let Some(f) = dir.open_read(&name).map_err(unsafe_)? else { return Err(missing()) };
    let meta = f.metadata().map_err(|e| Refused::Unsafe(format!("{}: {e}", file.display())))?;
    if meta.nlink() != 1 {
        return Err(Refused::Unsafe(format!("{} is not a plain file with a single name", file.display())));
    }
    owned_and_private(&file, meta.uid(), meta.mode() & 0o7777, uid)?;
    if meta.len() > MAX_SIZE {
        return Err(Refused::Invalid(format!(
            "{} is {} bytes; a request is at most {MAX_SIZE}",
            file.display(),
            meta.len()
        )));
    }
    let mut body = Vec::new();
    f.take(MAX_SIZE).read_to_end(&mut body).map_err(|e| Refused::Unsafe(format!("{}: {e}", file.display())))?;
    // Consumed: whatever it says, it is not read twice.
    dir.remove(&name).map_err(unsafe_)?;
    let request: Request = serde_json::from_slice(&body).map_err(|e| Refused::Invalid(e.to_string()))?;
    if request.version != VERSION {
        return Err(Refused::Invalid(format!("version {} (this helper reads version {VERSION})", request.version)));
    }
    let age = now - request.written_at;
    if age > chrono::Duration::seconds(MAX_AGE_SECS) || age < chrono::Duration::seconds(-60) {
        return Err(Refused::Stale(request.written_at.to_rfc3339()));
    }
    let runs = helper_unit.to_owned();
    match request.action.helper_unit() {
        Some(u) if u == runs => Ok(request),
        _ => Err(Refused::WrongHelper { asked: request.action.to_string(), runs }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const GC: &str = "macha-action-gc.service";

    fn state() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        d
    }

    fn gc() -> Action {
        Action::CollectGarbage { older_than_days: 14 }
    }

    #[test]
    fn a_written_request_is_taken_once() {
        let d = state();
        let written = write(&StateDir::open(d.path()).unwrap(), &gc()).unwrap();
        let mode = std::fs::metadata(d.path().join(REQUESTS_DIR)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let taken = take(d.path(), GC, Utc::now()).unwrap();
        assert_eq!(taken, written);
        assert!(matches!(take(d.path(), GC, Utc::now()), Err(Refused::Missing(_))));
    }

    #[test]
    fn a_request_for_another_helper_is_refused() {
        let d = state();
        write(&StateDir::open(d.path()).unwrap(), &gc()).unwrap();
        std::fs::rename(path(d.path(), GC), path(d.path(), "macha-action-rebuild.service")).unwrap();
        let e = take(d.path(), "macha-action-rebuild.service", Utc::now()).unwrap_err();
        assert!(matches!(e, Refused::WrongHelper { .. }), "{e}");
    }

    #[test]
    fn stale_and_future_requests_are_refused() {
        let d = state();
        write(&StateDir::open(d.path()).unwrap(), &gc()).unwrap();
        let later = Utc::now() + chrono::Duration::seconds(MAX_AGE_SECS + 5);
        assert!(matches!(take(d.path(), GC, later), Err(Refused::Stale(_))));
        write(&StateDir::open(d.path()).unwrap(), &gc()).unwrap();
        let earlier = Utc::now() - chrono::Duration::seconds(120);
        assert!(matches!(take(d.path(), GC, earlier), Err(Refused::Stale(_))));
    }

    #[test]
    fn links_open_modes_and_foreign_fields_are_refused() {
        let d = state();
        write(&StateDir::open(d.path()).unwrap(), &gc()).unwrap();
        let file = path(d.path(), GC);
        // A link to some other file.
        let elsewhere = d.path().join("elsewhere.json");
        std::fs::rename(&file, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        let e = take(d.path(), GC, Utc::now()).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        std::fs::remove_file(&file).unwrap();

        // A file others may write.
        write(&StateDir::open(d.path()).unwrap(), &gc()).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = take(d.path(), GC, Utc::now()).unwrap_err();
        assert!(e.to_string().contains("written by others"), "{e}");
        std::fs::remove_file(&file).unwrap();

        // A requests directory others may enter.
        write(&StateDir::open(d.path()).unwrap(), &gc()).unwrap();
        std::fs::set_permissions(d.path().join(REQUESTS_DIR), std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = take(d.path(), GC, Utc::now()).unwrap_err();
        assert!(e.to_string().contains("must be 0700"), "{e}");
        std::fs::set_permissions(d.path().join(REQUESTS_DIR), std::fs::Permissions::from_mode(0o700)).unwrap();

        // Anything but the request's own fields.
        let text = std::fs::read_to_string(&file).unwrap().replacen("\"version\"", "\"shell\": \"id\", \"version\"", 1);
        std::fs::write(&file, text).unwrap();
        let e = take(d.path(), GC, Utc::now()).unwrap_err();
        assert!(matches!(e, Refused::Invalid(_)), "{e}");
    }

    #[test]
    fn an_action_with_fields_it_does_not_take_is_invalid() {
        let d = state();
        write(&StateDir::open(d.path()).unwrap(), &gc()).unwrap();
        let file = path(d.path(), GC);
        let text = std::fs::read_to_string(&file).unwrap().replacen(
            "\"older_than_days\"",
            "\"flake\": \"/tmp/evil#x\", \"older_than_days\"",
            1,
        );
        std::fs::write(&file, text).unwrap();
        assert!(matches!(take(d.path(), GC, Utc::now()), Err(Refused::Invalid(_))));
    }
}
