//! Files moved aside by size: the audit trail and `orchestrator.log` grow
//! by appends, and past their limit the current file becomes number 1 of
//! its series and the oldest beyond the count is deleted.
//!
//! Only the mechanism lives here, below everything that writes such a file
//! (`audit`, `logging`); how much of each series is kept comes from the
//! configuration, and what the whole state directory holds is `retention`'s.

use crate::state_dir::{StateDir, StateError};

/// The most of a series read at once: one audit file by `verify`, all the
/// kept audit files together by the other readers of the trail, the log by
/// `macha-logs orchestrator`. The sizes a file is moved aside at
/// (`retention.audit_max_kb`, `retention.log_max_kb`) are at most this.
pub const MAX_READ_BYTES: u64 = 256 * 1024 * 1024;

/// A file moved aside past a size: `NAME` becomes `NAME.1` (the one before
/// becomes `NAME.2`, and so on), and the oldest beyond `files` (the current
/// one included) is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: u64,
    pub files: u32,
}

/// How the files moved aside of a series are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `decisions.jsonl` -> `decisions.1.jsonl` (the audit trail).
    BeforeExtension,
    /// `orchestrator.log` -> `orchestrator.log.1`.
    Appended,
}

impl Naming {
    /// The name of number `n` of `name`'s series.
    pub fn name(self, name: &str, n: u32) -> String {
        match (self, name.rsplit_once('.')) {
            (Naming::BeforeExtension, Some((stem, ext))) if !stem.is_empty() => format!("{stem}.{n}.{ext}"),
            _ => format!("{name}.{n}"),
        }
    }

    /// Which number of `name`'s series `candidate` is, if it is one.
    pub fn number(self, name: &str, candidate: &str) -> Option<u32> {
        let n = match (self, name.rsplit_once('.')) {
            (Naming::BeforeExtension, Some((stem, ext))) if !stem.is_empty() => {
                candidate.strip_prefix(stem)?.strip_prefix('.')?.strip_suffix(ext)?.strip_suffix('.')?
            }
            _ => candidate.strip_prefix(name)?.strip_prefix('.')?,
        };
        // Only what this names: "1", never "01" or "+1".
        let parsed: u32 = n.parse().ok()?;
        (parsed >= 1 && parsed.to_string() == n).then_some(parsed)
    }
}

/// The numbers of `name`'s files moved aside, newest (1) first.
pub fn numbers(state: &StateDir, name: &str, naming: Naming) -> Result<Vec<u32>, StateError> {
    let mut found: Vec<u32> = state.list()?.iter().filter_map(|n| naming.number(name, n)).collect();
    found.sort_unstable();
    Ok(found)
}

/// Moves `name` aside as number 1 of its series, after moving the ones
/// before it up a number as far as the first free one; what would be
/// number `files` or higher is deleted (`files` counts `name` itself). A
/// move cut short by a crash leaves a gap, never a lost file: the next one
/// fills the gap first. The caller holds whatever keeps others from
/// writing `name` meanwhile.
pub fn move_aside(state: &StateDir, name: &str, naming: Naming, files: u32) -> Result<(), StateError> {
    let last = files.max(2) - 1;
    let taken = numbers(state, name, naming)?;
    for n in taken.iter().filter(|n| **n > last) {
        state.remove(&naming.name(name, *n))?;
    }
    let mut free = (1..=last).find(|n| !taken.contains(n));
    if free.is_none() {
        state.remove(&naming.name(name, last))?;
        free = Some(last);
    }
    for n in (1..free.unwrap_or(1)).rev() {
        state.rename(&naming.name(name, n), &naming.name(name, n + 1))?;
    }
    state.rename(name, &naming.name(name, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_a_series_are_recognised_exactly() {
        let b = Naming::BeforeExtension;
        assert_eq!(b.name("decisions.jsonl", 3), "decisions.3.jsonl");
        assert_eq!(Naming::Appended.name("orchestrator.log", 1), "orchestrator.log.1");
        assert_eq!(b.number("decisions.jsonl", "decisions.12.jsonl"), Some(12));
        for not in
            ["decisions.jsonl", "decisions.0.jsonl", "decisions.01.jsonl", "decisions.x.jsonl", "actions.1.jsonl"]
        {
            assert_eq!(b.number("decisions.jsonl", not), None, "{not}");
        }
        assert_eq!(Naming::Appended.number("orchestrator.log", "orchestrator.log.2"), Some(2));
    }

    #[test]
    fn a_move_fills_a_gap_first_and_deletes_only_beyond_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let write = |name: &str| std::fs::write(dir.path().join(name), name).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).ok();
        // A move cut short left a gap at 2; a smaller limit left 9 behind.
        for name in ["a.log", "a.log.1", "a.log.3", "a.log.9"] {
            write(name);
        }
        move_aside(&state, "a.log", Naming::Appended, 5).unwrap();
        assert_eq!(read("a.log.1").as_deref(), Some("a.log"));
        assert_eq!(read("a.log.2").as_deref(), Some("a.log.1"));
        assert_eq!(read("a.log.3").as_deref(), Some("a.log.3"), "the gap was filled, nothing beyond it moved");
        assert_eq!((read("a.log"), read("a.log.9")), (None, None));
        // Full: the oldest goes.
        write("a.log");
        write("a.log.4");
        move_aside(&state, "a.log", Naming::Appended, 5).unwrap();
        assert_eq!(numbers(&state, "a.log", Naming::Appended).unwrap(), [1, 2, 3, 4]);
        assert_eq!(read("a.log.4").as_deref(), Some("a.log.3"));
    }
}
