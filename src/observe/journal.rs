//! The journal through libsystemd (the `systemd` crate): err-or-worse entries
//! since a persisted cursor, and the last lines of a given unit.
//!
//! Entries that become evidence for the model are folded into templates as
//! they are read (`decide::evidence::Folded`), so a pass over a burst of a
//! hundred thousand lines holds a few hundred templates, never the lines.
//!
//! libsystemd gives cursors, seeking, matches and tolerance of corrupted
//! files; see DESIGN.md for why no pure-Rust reader is used. A `Journal`
//! handle is neither `Send` nor `Sync`, so it is opened, used and dropped
//! inside one call.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use systemd::journal::{Journal, OpenDirectoryOptions, OpenOptions};

use crate::decide::evidence::{Folded, Limits, Writer};

/// Units whose recent error lines are kept in one pass.
const MAX_UNITS: usize = 200;

/// Longest message text kept from one entry; the rest is cut with a marker.
const MAX_MESSAGE_CHARS: usize = 2000;

/// One journal entry, with the fields a client cannot forge (`_UID`,
/// `_SYSTEMD_UNIT`, `_COMM`) kept apart from the text it wrote.
#[derive(Debug, Clone, Serialize, PartialEq)]
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
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
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
}

#[derive(Debug, thiserror::Error)]
#[error("journal {what} failed{}: {source}", .dir.as_ref().map(|d| format!(" for {d}")).unwrap_or_default())]
pub struct JournalError {
    what: &'static str,
    dir: Option<String>,
    source: std::io::Error,
}

fn open(dir: Option<&Path>) -> Result<Journal, JournalError> {
    let shown = dir.map(|d| d.display().to_string());
    let journal = match dir {
        Some(d) => OpenDirectoryOptions::default().open_directory(d.as_os_str().as_encoded_bytes()),
        None => OpenOptions::default().system(true).local_only(true).open(),
    };
    journal.map_err(|e| JournalError { what: "open", dir: shown, source: e.into() })
}

fn err(what: &'static str, dir: Option<&Path>) -> impl FnOnce(systemd::Error) -> JournalError {
    let dir = dir.map(|d| d.display().to_string());
    move |e| JournalError { what, dir, source: e.into() }
}

fn field(j: &mut Journal, name: &str) -> Option<String> {
    let data = j.get_data(name).ok()??;
    Some(String::from_utf8_lossy(data.value()?).into_owned())
}

fn message(j: &mut Journal) -> String {
    let mut message = field(j, "MESSAGE").unwrap_or_default();
    if message.chars().count() > MAX_MESSAGE_CHARS {
        message = message.chars().take(MAX_MESSAGE_CHARS).collect::<String>() + " [...cut]";
    }
    message
}

fn time(j: &mut Journal) -> DateTime<Utc> {
    j.timestamp_usec().ok().and_then(|u| DateTime::from_timestamp_micros(u as i64)).unwrap_or_default()
}

fn priority(j: &mut Journal) -> u8 {
    field(j, "PRIORITY").and_then(|p| p.parse().ok()).unwrap_or(6)
}

fn read_entry(j: &mut Journal) -> Entry {
    Entry {
        time: time(j),
        priority: priority(j),
        unit: field(j, "_SYSTEMD_UNIT"),
        about_unit: field(j, "UNIT"),
        identifier: field(j, "SYSLOG_IDENTIFIER"),
        comm: field(j, "_COMM"),
        uid: field(j, "_UID").and_then(|u| u.parse().ok()),
        pid: field(j, "_PID").and_then(|p| p.parse().ok()),
        message: message(j),
    }
}

/// Folds the entry at the journal's position, written by a process of
/// `unit`, reading only the fields a template keeps.
fn fold_entry(j: &mut Journal, unit: Option<String>, fold: &mut Folded) {
    let writer = Writer { unit, comm: field(j, "_COMM"), uid: field(j, "_UID").and_then(|u| u.parse().ok()) };
    let (priority, time, message) = (priority(j), time(j), message(j));
    fold.push(writer, priority, time, &message);
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
    let mut j = open(dir)?;
    for p in ["0", "1", "2", "3"] {
        j.match_add("PRIORITY", p).map_err(err("match", dir))?;
    }
    let mut skip_first = false;
    match cursor {
        // A cursor that no longer exists (journal vacuumed) seeks to the
        // nearest entry, which is what we want.
        Some(c) => {
            j.seek_cursor(c).map_err(err("seek to cursor", dir))?;
            skip_first = true;
        }
        None => {
            // A look-back longer than the clock's past reads from the start.
            let since = std::time::SystemTime::now().checked_sub(lookback).unwrap_or(std::time::UNIX_EPOCH);
            let usec = since.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
            j.seek_realtime_usec(usec).map_err(err("seek by time", dir))?;
        }
    }
    let mut scan = ErrorScan { cursor: cursor.map(str::to_owned), ..Default::default() };
    let limits = Limits { verbatim: keep, ..Limits::DEFAULT };
    while j.next().map_err(err("read", dir))? > 0 {
        if skip_first {
            skip_first = false;
            if let Some(c) = cursor {
                if j.test_cursor(c).unwrap_or(false) {
                    continue;
                }
            }
        }
        scan.total += 1;
        if let Some(unit) = field(&mut j, "_SYSTEMD_UNIT") {
            *scan.per_unit.entry(unit.clone()).or_default() += 1;
            // Bounded: at most MAX_UNITS units, one bounded fold each.
            if scan.evidence.len() < MAX_UNITS || scan.evidence.contains_key(&unit) {
                let fold = scan.evidence.entry(unit.clone()).or_insert_with(|| Folded::new(limits));
                fold_entry(&mut j, Some(unit), fold);
            }
        }
        scan.cursor = j.cursor().ok();
    }
    if scan.cursor.is_none() {
        // Nothing to read yet: remember the end, so the next pass does not
        // re-read the lookback window.
        j.match_flush().map_err(err("match", dir))?;
        j.seek_tail().map_err(err("seek to end", dir))?;
        if j.previous().map_err(err("read", dir))? > 0 {
            scan.cursor = j.cursor().ok();
        }
    }
    Ok(scan)
}

/// Matches the entries written by `unit` or by systemd (PID 1) about it.
/// `UNIT=` alone is not enough: any client may set it.
fn match_unit(j: &mut Journal, dir: Option<&Path>, unit: &str) -> Result<(), JournalError> {
    j.match_add("_SYSTEMD_UNIT", unit).map_err(err("match", dir))?;
    j.match_or().map_err(err("match", dir))?;
    j.match_add("UNIT", unit).map_err(err("match", dir))?;
    j.match_add("_PID", "1").map_err(err("match", dir))?;
    Ok(())
}

/// The last `n` entries written by `unit` or by systemd (PID 1) about it,
/// oldest first, as they were written (for probes and kept evidence, which
/// ask for few).
pub fn unit_tail(dir: Option<&Path>, unit: &str, n: usize) -> Result<Vec<Entry>, JournalError> {
    let mut j = open(dir)?;
    match_unit(&mut j, dir, unit)?;
    j.seek_tail().map_err(err("seek to end", dir))?;
    let mut lines = Vec::with_capacity(n.min(64));
    while lines.len() < n && j.previous().map_err(err("read", dir))? > 0 {
        lines.push(read_entry(&mut j));
    }
    lines.reverse();
    Ok(lines)
}

/// The last `n` entries written by `unit` or by systemd (PID 1) about it,
/// folded as they are read: memory stays within [`Limits::DEFAULT`]
/// whatever `n` is.
pub fn unit_evidence(dir: Option<&Path>, unit: &str, n: usize) -> Result<Folded, JournalError> {
    let mut j = open(dir)?;
    match_unit(&mut j, dir, unit)?;
    j.seek_tail().map_err(err("seek to end", dir))?;
    // Step back over the last `n` entries without reading them, then fold
    // them oldest first.
    let mut back = 0;
    while back < n && j.previous().map_err(err("read", dir))? > 0 {
        back += 1;
    }
    let mut fold = Folded::new(Limits::DEFAULT);
    for read in 0..back {
        if read > 0 && j.next().map_err(err("read", dir))? == 0 {
            break;
        }
        let writer_unit = field(&mut j, "_SYSTEMD_UNIT");
        fold_entry(&mut j, writer_unit, &mut fold);
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
    let mut j = open(dir)?;
    j.match_add("_SYSTEMD_UNIT", unit).map_err(err("match", dir))?;
    j.seek_tail().map_err(err("seek to end", dir))?;
    // After seek_tail, previous() positions on the last entry, so next()
    // yields only entries written from now on.
    j.previous().map_err(err("read", dir))?;
    loop {
        while j.next().map_err(err("read", dir))? > 0 {
            emit(&read_entry(&mut j)).map_err(|source| JournalError { what: "print", dir: None, source })?;
        }
        j.wait(Some(Duration::from_millis(500))).map_err(err("wait", dir))?;
    }
}
