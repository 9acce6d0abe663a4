//! SQLite databases in the state directory: opened without following a
//! link, owner-only, in WAL mode with full syncs, and retried while another
//! process creates them. The state database (`store`), the notification
//! outbox and the memory store (`kb::embedded`) open theirs here.

use std::path::PathBuf;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::state_dir::{StateDir, StateError};

/// The files SQLite keeps beside the database.
const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// The database file, checked: created owner-only when it does not exist
/// (SQLite gives its `-wal` and `-shm` files the database's mode), and
/// refused, with the reason, when it or a file SQLite keeps beside it is a
/// link or not a regular file. Returns the path to give SQLite, which is
/// also told not to follow a link in it (and opens its side files with
/// `O_NOFOLLOW` itself).
fn database_file(state: &StateDir, file: &str) -> Result<PathBuf, StateError> {
    match state.metadata(file)? {
        // Never opened here when it exists: closing a second descriptor of
        // the file would drop SQLite's locks on it in this process.
        Some(_) => {}
        None => match state.create_new(file) {
            Ok(_) => {}
            Err(e) if matches!(&e, StateError::Io { error, .. } if error.kind() == std::io::ErrorKind::AlreadyExists) =>
                {}
            Err(e) => return Err(e),
        },
    }
    for name in std::iter::once(file.to_owned()).chain(SIDE_FILES.iter().map(|s| format!("{file}{s}"))) {
        match state.metadata(&name)? {
            Some(m) if m.is_link() => {
                return Err(StateError::Link { path: state.path_of(&name).display().to_string() })
            }
            Some(m) if !m.is_file() => {
                return Err(StateError::WrongType {
                    path: state.path_of(&name).display().to_string(),
                    found: m.described(),
                    wanted: "a regular file",
                })
            }
            _ => {}
        }
    }
    Ok(state.real_path_of(file))
}

/// Opens the database `file` of `state` (see `database_file`).
///
/// The database keeps a write-ahead log (`journal_mode = WAL`, so the
/// daemon and a command read and write at once) with `synchronous = FULL`:
/// the log is synced at every commit, so a transaction that returned
/// survives a power cut (with `NORMAL`, the store's setting before, the
/// last ones could be lost; the outbox already had `FULL`). A writer waits
/// up to 10 s for another one (`busy_timeout`).
pub(crate) fn connect(state: &StateDir, file: &str) -> Result<Connection, rusqlite::Error> {
    let path = database_file(state, file).map_err(|e| {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN), Some(e.to_string()))
    })?;
    let conn = Connection::open_with_flags(path, OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW)?;
    // The write-ahead log is checkpointed every 1000 pages (4 MiB) and cut
    // back to this after a checkpoint: it never stays larger.
    conn.pragma_update(None, "journal_size_limit", WAL_LIMIT)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// The size a database's `-wal` file is cut back to after a checkpoint.
pub const WAL_LIMIT: i64 = 4 * 1024 * 1024;

/// How long opening the database keeps trying while another process holds
/// it locked in a way SQLite does not wait for by itself (its first opener
/// creating it and switching it to WAL).
const OPEN_BUSY_FOR: Duration = Duration::from_secs(10);

/// Runs `open` (a connection and its tables) again while the database is
/// busy, for up to `OPEN_BUSY_FOR`: a command run while a daemon starts
/// waits instead of failing.
pub(crate) fn open_retrying<T>(mut open: impl FnMut() -> Result<T, rusqlite::Error>) -> Result<T, rusqlite::Error> {
    let deadline = std::time::Instant::now() + OPEN_BUSY_FOR;
    loop {
        match open() {
            Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            opened => return opened,
        }
    }
}

/// Another connection holds the database locked.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}
