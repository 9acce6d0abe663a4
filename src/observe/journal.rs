//! The journal through libsystemd (the `systemd` crate): err-or-worse entries
//! since a persisted cursor, and the last lines of a given unit.
//!
//! Entries that become evidence for the model are folded into templates as
//! they are read (`observe::fold::Folded`), so a pass over a burst of a
//! hundred thousand lines holds a few hundred templates, never the lines.
//!
//! libsystemd gives cursors, seeking, matches and tolerance of corrupted
//! files; see DESIGN.md for why no pure-Rust reader is used. A `Journal`
//! handle is neither `Send` nor `Sync`, so it is opened, used and dropped
//! inside one call.
//!
//! libsystemd reads journal files through memory mappings, so a file that
//! journald cuts short while it is read (rotation, vacuum) raises SIGBUS.
//! Every call goes through `Reader`, which turns that into an error of the
//! pass (`sigbus.rs` catches the fault); the next pass opens the journal
//! again.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use systemd::journal::{Journal, OpenDirectoryOptions, OpenOptions};

use super::fold::{Folded, Limits, Writer};
use super::sigbus;
use super::window::ErrorWindow;

/// Units whose recent error lines are kept in one pass.
const MAX_UNITS: usize = 200;

/// Longest message text kept from one entry; the rest is cut with a marker.
const MAX_MESSAGE_CHARS: usize = 2000;

/// One journal entry, with the fields a client cannot forge (`_UID`,
/// `_SYSTEMD_UNIT`, `_COMM`) kept apart from the text it wrote.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Entry {
    pub time: DateTime<Utc>,
    pub priority: u8,
    /// `_SYSTEMD_UNIT`: the unit the writing process belongs to.
    pub unit: Option<String>,
    /// `UNIT`: the unit a systemd message is about.
    pub about_unit: Option<String>,
    pub identifier: Option<String>,
    pub comm: Option<String>,
    pub uid: Option<u32>,
    /// `_PID`: the writing process.
    pub pid: Option<u32>,
    pub message: String,
}

/// Err-or-worse entries read in one pass.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default, PartialEq)]
pub struct ErrorScan {
    /// Entries read in this pass.
    pub total: u64,
    /// Per `_SYSTEMD_UNIT`, how many entries it wrote in this pass.
    pub per_unit: BTreeMap<String, u64>,
    /// Per `_SYSTEMD_UNIT`, its entries of this pass folded into templates
    /// (all of them as written while there are few). Kept per unit so that
    /// one noisy writer cannot push another unit's evidence out.
    pub evidence: BTreeMap<String, Folded>,
    /// Where the next pass starts.
    pub cursor: Option<String>,
    /// Why the cursor this pass was given was not used (the lookback window
    /// was read instead); `None` when it was used or there was none.
    pub refused_cursor: Option<String>,
    /// Counted over the last this many seconds (the daemon follows the
    /// journal); `None`: since the previous pass (`macha-check`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("journal {what} failed{}: {source}", .dir.as_ref().map(|d| format!(" for {d}")).unwrap_or_default())]
pub struct JournalError {
    what: &'static str,
    dir: Option<String>,
    source: std::io::Error,
}

/// What a pass says when a journal file was cut short under it.
const SHRUNK: &str = "a journal file was cut short while it was being read (journald does this when it rotates or \
                      vacuums files); this pass skips the journal and the next one opens it again";

/// An open journal whose every libsystemd call, and every copy out of its
/// mappings, runs under [`sigbus::guard`]: a file cut short under it becomes
/// an error of this pass instead of killing the process. After that the
/// handle is spent (each later call fails the same way); dropping it closes
/// the journal, the zero pages go with its mappings, and the next pass opens
/// the journal again.
struct Reader {
    journal: Journal,
    dir: Option<String>,
    shrunk: bool,
}

impl Reader {
    fn open(dir: Option<&Path>) -> Result<Self, JournalError> {
        let shown = dir.map(|d| d.display().to_string());
        let opened = sigbus::guard(|| match dir {
            Some(d) => OpenDirectoryOptions::default().open_directory(d.as_os_str().as_encoded_bytes()),
            None => OpenOptions::default().system(true).local_only(true).open(),
        });
        match opened {
            Ok(Ok(journal)) => Ok(Self { journal, dir: shown, shrunk: false }),
            Ok(Err(e)) => Err(JournalError { what: "open", dir: shown, source: e.into() }),
            Err(sigbus::Fault) => Err(JournalError { what: "open", dir: shown, source: std::io::Error::other(SHRUNK) }),
        }
    }

    /// Runs `f` on the journal; only a file cut short is an error.
    fn run<T>(&mut self, what: &'static str, f: impl FnOnce(&mut Journal) -> T) -> Result<T, JournalError> {
        if !self.shrunk {
            match sigbus::guard(|| f(&mut self.journal)) {
                Ok(value) => return Ok(value),
                Err(sigbus::Fault) => self.shrunk = true,
            }
        }
        Err(JournalError { what, dir: self.dir.clone(), source: std::io::Error::other(SHRUNK) })
    }

    /// Runs `f` on the journal; its error is `what` failing.
    fn call<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Journal) -> Result<T, systemd::Error>,
    ) -> Result<T, JournalError> {
        self.run(what, f)?.map_err(|e| JournalError { what, dir: self.dir.clone(), source: e.into() })
    }

    /// The fields macha reads of the entry at the current position, copied
    /// out of the mapping in one walk over the entry's data (asking for
    /// each field by name walks the entry once per field).
    fn fields(&mut self) -> Result<Fields, JournalError> {
        self.run("read", |j| {
            let mut f = Fields::default();
            j.restart_data();
            while let Ok(Some(data)) = j.enumerate_data() {
                f.take(data.name(), data.value().unwrap_or_default());
            }
            f.time =
                j.timestamp_usec().ok().and_then(|u| DateTime::from_timestamp_micros(u as i64)).unwrap_or_default();
            f
        })
    }

    fn read_entry(&mut self) -> Result<Entry, JournalError> {
        Ok(self.fields()?.into_entry())
    }

    fn next(&mut self) -> Result<bool, JournalError> {
        Ok(self.call("read", |j| j.next())? > 0)
    }

    fn previous(&mut self) -> Result<bool, JournalError> {
        Ok(self.call("read", |j| j.previous())? > 0)
    }
}

/// An entry's fields as macha reads them; each is the first of its name
/// in the entry, as `sd_journal_get_data` would give. Numbers are parsed
/// as they are read (`Some(None)`: there, but not a number).
#[derive(Default)]
struct Fields {
    time: DateTime<Utc>,
    priority: Option<Option<u8>>,
    uid: Option<Option<u32>>,
    pid: Option<Option<u32>>,
    unit: Option<String>,
    about_unit: Option<String>,
    identifier: Option<String>,
    comm: Option<String>,
    message: Option<String>,
}

impl Fields {
    /// Keeps `value` when `name` is a field macha reads and not yet taken.
    fn take(&mut self, name: &[u8], value: &[u8]) {
        fn number<T: std::str::FromStr>(slot: &mut Option<Option<T>>, value: &[u8]) {
            if slot.is_none() {
                *slot = Some(std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()));
            }
        }
        let slot = match name {
            b"MESSAGE" => &mut self.message,
            b"PRIORITY" => return number(&mut self.priority, value),
            b"_UID" => return number(&mut self.uid, value),
            b"_PID" => return number(&mut self.pid, value),
            b"_SYSTEMD_UNIT" => &mut self.unit,
            b"UNIT" => &mut self.about_unit,
            b"SYSLOG_IDENTIFIER" => &mut self.identifier,
            b"_COMM" => &mut self.comm,
            _ => return,
        };
        if slot.is_none() {
            *slot = Some(String::from_utf8_lossy(value).into_owned());
        }
    }

    fn priority(&self) -> u8 {
        self.priority.flatten().unwrap_or(6)
    }

    fn uid(&self) -> Option<u32> {
        self.uid.flatten()
    }

    /// The message, cut at `MAX_MESSAGE_CHARS` with a marker.
    fn message(&mut self) -> String {
        let mut message = self.message.take().unwrap_or_default();
        // No longer in characters than in bytes: most are not counted.
        if message.len() <= MAX_MESSAGE_CHARS {
            return message;
        }
        if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
            message.truncate(cut);
            message.push_str(" [...cut]");
        }
        message
    }

    /// Folds the entry into `fold`.
    fn fold_into(mut self, fold: &mut Folded) {
        let (priority, time, message) = (self.priority(), self.time, self.message());
        fold.push(self.writer(), priority, time, &message);
    }

    fn writer(&mut self) -> Writer {
        Writer { unit: self.unit.take(), comm: self.comm.take(), uid: self.uid() }
    }

    fn into_entry(mut self) -> Entry {
        Entry {
            time: self.time,
            priority: self.priority(),
            uid: self.uid(),
            pid: self.pid.flatten(),
            message: self.message(),
            unit: self.unit,
            about_unit: self.about_unit,
            identifier: self.identifier,
            comm: self.comm,
        }
    }
}

/// Reads entries at priority err (3) or worse that came after `cursor`, or,
/// without a cursor, within the last `lookback`. Each unit's entries are
/// folded as they are read; up to `keep` of them are kept as written.
pub fn scan_errors(
    dir: Option<&Path>,
    cursor: Option<&str>,
    lookback: Duration,
    keep: usize,
) -> Result<ErrorScan, JournalError> {
    let mut j = Reader::open(dir)?;
    let (refused_cursor, skip) = seek_errors(&mut j, cursor, lookback)?;
    let cursor = cursor.filter(|_| refused_cursor.is_none());
    let mut scan = ErrorScan { cursor: cursor.map(str::to_owned), refused_cursor, ..Default::default() };
    let limits = Limits { verbatim: keep, ..Limits::DEFAULT };
    let mut skip = skip;
    while j.next()? {
        if let Some(c) = skip.take() {
            if j.run("read", |j| j.test_cursor(&c).unwrap_or(false))? {
                continue;
            }
        }
        scan.total += 1;
        let fields = j.fields()?;
        if let Some(unit) = fields.unit.clone() {
            *scan.per_unit.entry(unit.clone()).or_default() += 1;
            // Bounded: at most MAX_UNITS units, one bounded fold each.
            if scan.evidence.len() < MAX_UNITS || scan.evidence.contains_key(&unit) {
                fields.fold_into(scan.evidence.entry(unit).or_insert_with(|| Folded::new(limits)));
            }
        }
        scan.cursor = j.run("read", |j| j.cursor().ok())?;
    }
    if scan.cursor.is_none() {
        // Nothing to read yet: remember the end, so the next pass does not
        // re-read the lookback window.
        j.call("match", |j| j.match_flush().map(drop))?;
        j.call("seek to end", |j| j.seek_tail())?;
        if j.previous()? {
            scan.cursor = j.run("read", |j| j.cursor().ok())?;
        }
    }
    Ok(scan)
}

/// Positions `j` on the err-or-worse entries after `cursor` (when it is one
/// of this journal's) or, without one, within the last `lookback`. Returns
/// why the cursor was refused, and the cursor whose own entry the first
/// read lands on and must skip.
fn seek_errors(
    j: &mut Reader,
    cursor: Option<&str>,
    lookback: Duration,
) -> Result<(Option<String>, Option<String>), JournalError> {
    // A stored cursor is used only when it is one of this journal's; any
    // other (garbage, another journal's, one past the end) is set aside and
    // the lookback window read instead, so a bad file cannot stop the source.
    let refused_cursor = match cursor {
        Some(c) => refuse_cursor(j, c)?,
        None => None,
    };
    let cursor = cursor.filter(|_| refused_cursor.is_none());
    for p in ["0", "1", "2", "3"] {
        j.call("match", |j| j.match_add("PRIORITY", p).map(drop))?;
    }
    match cursor {
        // A cursor that no longer exists (journal vacuumed) seeks to the
        // nearest entry, which is what we want.
        Some(c) => j.call("seek to cursor", |j| j.seek_cursor(c))?,
        None => {
            // A look-back longer than the clock's past reads from the start.
            let since = std::time::SystemTime::now().checked_sub(lookback).unwrap_or(std::time::UNIX_EPOCH);
            let usec = since.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
            j.call("seek by time", |j| j.seek_realtime_usec(usec))?;
        }
    }
    Ok((refused_cursor, cursor.map(str::to_owned)))
}

/// Most entries, and most bytes of their messages, the reading thread hands
/// over at once; with at most `QUEUED` batches waiting, what is read and not
/// yet folded stays under about a megabyte.
const BATCH: usize = 1024;
const BATCH_BYTES: usize = 256 * 1024;
const QUEUED: usize = 2;

/// The longest wait between two tries to open the journal again.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Follows the journal's err-or-worse entries as journald writes them (its
/// own wait, not a timer), from `cursor` (or the last `lookback`), into
/// `window`, until `stop` is set. `wake` is called when a unit's burst
/// begins or ends, and when the journal cannot be read (the reason is in the
/// window; the follower opens it again after a backoff, from where it was).
///
/// Two threads: one reads the journal (a libsystemd handle never leaves the
/// thread that opened it), the other folds what it read into the window, so
/// a burst is read and folded at once on two cores. The returned thread is
/// the reader; it ends after the folder.
pub fn follow(
    dir: Option<std::path::PathBuf>,
    cursor: Option<String>,
    lookback: Duration,
    window: Arc<Mutex<ErrorWindow>>,
    stop: Arc<AtomicBool>,
    wake: impl Fn() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUED);
    let folder = std::thread::Builder::new().name("macha-fold".into()).spawn(move || fold(&rx, &window, &wake))?;
    std::thread::Builder::new().name("macha-journal".into()).spawn(move || {
        read(dir.as_deref(), cursor, lookback, &stop, &tx);
        drop(tx);
        let _ = folder.join();
    })
}

/// What the reading thread hands the folding thread.
enum Read {
    /// The journal was opened (again); the first time, why the stored
    /// cursor was refused.
    Opened { first: bool, refused: Option<String> },
    /// Entries in journal order, and the position of the last.
    Batch(Vec<(Writer, u8, DateTime<Utc>, String)>, Option<String>),
    /// A second passed with nothing new.
    Idle,
    /// The journal cannot be read now.
    Failed(String),
}

/// The reading thread: follows the journal from `at`, opening it again
/// after a backoff when it fails, until `stop` is set or the folder is gone.
fn read(dir: Option<&Path>, mut at: Option<String>, lookback: Duration, stop: &AtomicBool, tx: &SyncSender<Read>) {
    let mut first = true;
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Ordering::Relaxed) {
        match take(dir, &mut at, lookback, first, stop, tx) {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "the journal cannot be followed; trying again");
                if tx.send(Read::Failed(e.to_string())).is_err() {
                    return;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        first = false;
    }
}

/// Opens the journal, seeks past `at`, and hands entries over until stopped
/// (`Ok`) or the journal fails; `at` follows the last entry handed over.
fn take(
    dir: Option<&Path>,
    at: &mut Option<String>,
    lookback: Duration,
    first: bool,
    stop: &AtomicBool,
    tx: &SyncSender<Read>,
) -> Result<(), JournalError> {
    let mut j = Reader::open(dir)?;
    let (refused, mut skip) = seek_errors(&mut j, at.as_deref(), lookback)?;
    // A send fails only when the folder is gone: then there is nothing to do.
    if tx.send(Read::Opened { first, refused }).is_err() {
        return Ok(());
    }
    loop {
        let (mut batch, mut bytes) = (Vec::with_capacity(64), 0);
        while batch.len() < BATCH && bytes < BATCH_BYTES && j.next()? {
            if let Some(c) = skip.take() {
                if j.run("read", |j| j.test_cursor(&c).unwrap_or(false))? {
                    continue;
                }
            }
            let mut f = j.fields()?;
            let message = f.message();
            bytes += message.len();
            batch.push((f.writer(), f.priority(), f.time, message));
        }
        let read = if batch.is_empty() {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            j.call("wait", |j| j.wait(Some(Duration::from_secs(1))).map(drop))?;
            // Seek to the last entry taken again (and skip it), so that the
            // next read starts from what the files hold now: entries written
            // into a file as it was being added (journald starting a new
            // one) were seen here to stay unread until the next write,
            // however long that took.
            if let Some(c) = at.as_deref() {
                j.call("seek to cursor", |j| j.seek_cursor(c))?;
                skip = Some(c.to_owned());
            }
            // A second passed, or entries came: a burst may have slid out.
            Read::Idle
        } else {
            *at = j.run("read", |j| j.cursor().ok())?.or(at.take());
            Read::Batch(batch, at.clone())
        };
        if tx.send(read).is_err() {
            return Ok(());
        }
    }
}

/// The folding thread: takes what the reader hands over into the window,
/// and wakes the daemon when a burst begins or ends or the journal fails.
fn fold(rx: &Receiver<Read>, window: &Mutex<ErrorWindow>, wake: &impl Fn()) {
    for read in rx {
        let now = Utc::now();
        let mut w = lock(window);
        match read {
            Read::Opened { first, refused } => {
                if first {
                    w.refused_cursor = refused;
                }
                if w.error.take().is_some() {
                    tracing::info!("following the journal again");
                }
                continue;
            }
            Read::Batch(entries, cursor) => {
                for (writer, priority, time, message) in entries {
                    w.push(writer, priority, time, &message, now);
                }
                w.cursor = cursor;
            }
            Read::Idle => {}
            Read::Failed(error) => {
                w.error = Some(error);
                drop(w);
                wake();
                continue;
            }
        }
        let turned = w.take_turns(now);
        drop(w);
        if turned {
            wake();
        }
    }
}

fn lock(window: &Mutex<ErrorWindow>) -> std::sync::MutexGuard<'_, ErrorWindow> {
    // A panic while it was held left a count, not a broken invariant.
    window.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Longest cursor taken from the state file; libsystemd's are about 150
/// bytes.
const MAX_CURSOR_BYTES: usize = 512;

/// Why `cursor` is not a position in this journal, or `None` when it is:
/// its entry is there, or, when the journal was vacuumed since, the entry
/// it seeks to belongs to the same journal (sequence number ID). Leaves the
/// journal at an unknown position, with no match.
fn refuse_cursor(j: &mut Reader, cursor: &str) -> Result<Option<String>, JournalError> {
    if cursor.len() > MAX_CURSOR_BYTES {
        return Ok(Some(format!("is {} bytes long, longer than any journal cursor", cursor.len())));
    }
    if j.run("seek to cursor", |j| j.seek_cursor(cursor))?.is_err() {
        return Ok(Some("is not a journal cursor".into()));
    }
    if !j.next()? {
        return Ok(Some(
            "points past the newest entry of this journal (it comes from another journal, or from a clock that was ahead)"
                .into(),
        ));
    }
    if j.run("read", |j| j.test_cursor(cursor).unwrap_or(false))? {
        return Ok(None);
    }
    let here = j.run("read", |j| j.cursor().ok())?;
    let seqnum_id = |c: &str| c.split(';').find_map(|f| f.strip_prefix("s=")).map(str::to_owned);
    match (seqnum_id(cursor), here.as_deref().and_then(seqnum_id)) {
        (Some(ours), Some(here)) if ours == here => Ok(None),
        _ => Ok(Some("belongs to another journal".into())),
    }
}

/// Matches the entries written by `unit` or by systemd (PID 1) about it.
/// `UNIT=` alone is not enough: any client may set it.
fn match_unit(j: &mut Reader, unit: &str) -> Result<(), JournalError> {
    j.call("match", |j| {
        j.match_add("_SYSTEMD_UNIT", unit)?;
        j.match_or()?;
        j.match_add("UNIT", unit)?;
        j.match_add("_PID", "1")?;
        Ok(())
    })
}

/// The last `n` entries written by `unit` or by systemd (PID 1) about it,
/// oldest first, as they were written (for probes and kept evidence, which
/// ask for few).
pub fn unit_tail(dir: Option<&Path>, unit: &str, n: usize) -> Result<Vec<Entry>, JournalError> {
    let mut j = Reader::open(dir)?;
    match_unit(&mut j, unit)?;
    j.call("seek to end", |j| j.seek_tail())?;
    let mut lines = Vec::with_capacity(n.min(64));
    while lines.len() < n && j.previous()? {
        lines.push(j.read_entry()?);
    }
    lines.reverse();
    Ok(lines)
}

/// The last `n` entries written by `unit` or by systemd (PID 1) about it,
/// folded as they are read: memory stays within [`Limits::DEFAULT`]
/// whatever `n` is.
pub fn unit_evidence(dir: Option<&Path>, unit: &str, n: usize) -> Result<Folded, JournalError> {
    let mut j = Reader::open(dir)?;
    match_unit(&mut j, unit)?;
    j.call("seek to end", |j| j.seek_tail())?;
    // Step back over the last `n` entries without reading them, then fold
    // them oldest first.
    let mut back = 0;
    while back < n && j.previous()? {
        back += 1;
    }
    let mut fold = Folded::new(Limits::DEFAULT);
    for read in 0..back {
        if read > 0 && !j.next()? {
            break;
        }
        j.fields()?.fold_into(&mut fold);
    }
    Ok(fold)
}

/// Follows the journal lines of `unit`: prints the last `n`, then, when
/// `follow` is set, every new one as it arrives. Used by `macha-logs service`.
pub fn show_unit(
    dir: Option<&Path>,
    unit: &str,
    n: usize,
    follow: bool,
    mut emit: impl FnMut(&Entry) -> std::io::Result<()>,
) -> Result<(), JournalError> {
    for entry in unit_tail(dir, unit, n)? {
        emit(&entry).map_err(|source| JournalError { what: "print", dir: None, source })?;
    }
    if !follow {
        return Ok(());
    }
    let mut j = Reader::open(dir)?;
    j.call("match", |j| j.match_add("_SYSTEMD_UNIT", unit).map(drop))?;
    j.call("seek to end", |j| j.seek_tail())?;
    // After seek_tail, previous() positions on the last entry, so next()
    // yields only entries written from now on.
    j.previous()?;
    loop {
        while j.next()? {
            emit(&j.read_entry()?).map_err(|source| JournalError { what: "print", dir: None, source })?;
        }
        j.call("wait", |j| j.wait(Some(Duration::from_millis(500))).map(drop))?;
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use macha_testbed::journal::{error_line, write_file};

    use super::*;

    const ENTRIES: usize = 20_000;

    /// A journal directory holding one file of `n` err lines of `app.service`.
    fn journal_dir(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("system.journal");
        write_file(&file, (0..n).map(|i| error_line("app.service", &format!("request {i} failed")))).unwrap();
        (dir, file)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_cursor_of_another_journal_is_refused_and_the_lookback_window_read() {
        let (theirs, _) = journal_dir(5);
        let their_cursor = scan_errors(Some(theirs.path()), None, HOUR, 1).unwrap().cursor.unwrap();
        let (ours, _) = journal_dir(50);
        let scan = scan_errors(Some(ours.path()), Some(&their_cursor), HOUR, 1).unwrap();
        assert_eq!(scan.refused_cursor.as_deref(), Some("belongs to another journal"));
        assert_eq!(scan.total, 50, "the lookback window");
        let next = scan_errors(Some(ours.path()), scan.cursor.as_deref(), HOUR, 1).unwrap();
        assert_eq!((next.refused_cursor, next.total), (None, 0), "its own cursor is used");
        for garbage in ["", "s=;i=", "not a cursor", &"s=".repeat(1000)] {
            let scan = scan_errors(Some(ours.path()), Some(garbage), HOUR, 1).unwrap();
            assert!(scan.refused_cursor.is_some() && scan.total == 50, "{garbage:?}: {scan:?}");
        }
    }

    #[test]
    fn the_follower_takes_entries_as_they_come_and_wakes_when_a_burst_begins() {
        let (dir, _) = journal_dir(5);
        let window = Arc::new(Mutex::new(ErrorWindow::new(chrono::TimeDelta::seconds(600), 20, 5)));
        let stop = Arc::new(AtomicBool::new(false));
        let (woke, wakes) = std::sync::mpsc::channel();
        let thread = follow(Some(dir.path().to_owned()), None, HOUR, window.clone(), stop.clone(), move || {
            woke.send(()).unwrap()
        })
        .unwrap();
        let taken = |n: u64| {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while lock(&window).taken < n {
                assert!(std::time::Instant::now() < deadline, "taken {} of {n}", lock(&window).taken);
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        taken(5);
        assert!(wakes.try_recv().is_err(), "5 lines are no burst");
        // journald starts a new file: the follower's wait sees it.
        write_file(
            &dir.path().join("system@0001.journal"),
            (0..30).map(|i| error_line("app.service", &format!("late {i}"))),
        )
        .unwrap();
        taken(35);
        wakes.recv_timeout(Duration::from_secs(10)).expect("woken for the burst");
        let scan = lock(&window).scan(Utc::now());
        assert_eq!(scan.per_unit["app.service"], 35);
        assert!(scan.cursor.is_some());
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    }

    #[test]
    fn a_file_cut_short_under_the_reader_fails_the_pass_and_the_next_pass_reads_again() {
        let (dir, file) = journal_dir(ENTRIES);
        let mut reader = Reader::open(Some(dir.path())).unwrap();
        reader.call("seek", |j| j.seek_head()).unwrap();
        for _ in 0..10 {
            assert!(reader.next().unwrap());
            reader.read_entry().unwrap();
        }
        // journald cuts a file short under a reader when it vacuums or
        // rotates; the pages libsystemd mapped past the new end are gone.
        let whole = std::fs::read(&file).unwrap();
        std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(4096).unwrap();
        let mut read = 10;
        let error = loop {
            match reader.next().and_then(|_| reader.read_entry()) {
                Ok(_) if read < ENTRIES => read += 1,
                Ok(_) => panic!("every entry was read from a file cut to 4 KiB"),
                Err(e) => break e.to_string(),
            }
        };
        assert!(error.contains("cut short") && error.contains(&dir.path().display().to_string()), "{error}");
        assert!(reader.next().is_err(), "the handle is spent");
        drop(reader);

        // The next pass opens the journal again: the cut file is skipped...
        let scan = scan_errors(Some(dir.path()), None, HOUR, 10).unwrap();
        assert_eq!(scan.total, 0);
        // ...and once the file is whole again, it is read in full.
        std::fs::write(&file, whole).unwrap();
        let scan = scan_errors(Some(dir.path()), None, HOUR, 10).unwrap();
        assert_eq!(scan.total, ENTRIES as u64);
        assert_eq!(scan.per_unit["app.service"], ENTRIES as u64);
    }
}
