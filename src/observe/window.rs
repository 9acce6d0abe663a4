//! The journal's err-or-worse entries of the last `span`, per unit, as the
//! daemon's journal follower takes them (`journal::follow`): a count in
//! time buckets that slide, and the entries folded into templates as
//! evidence. A pass reads it as an `ErrorScan` whenever it runs, so an
//! error burst is a count over a sliding window, not over the time since
//! the previous pass. Pure data; bounded in units, buckets and folds.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, TimeDelta, Utc};

use super::fold::{Folded, Limits, Writer};
use super::journal::ErrorScan;

/// Units counted at once; entries of further units count in the total only.
const MAX_UNITS: usize = 200;

/// Buckets a unit's count is kept in over the span.
const BUCKETS: i64 = 120;

#[derive(Debug)]
struct UnitErrors {
    /// (start of the bucket in seconds since the epoch, entries in it), oldest first.
    buckets: VecDeque<(i64, u64)>,
    /// The entries since the unit's count was last zero, folded.
    fold: Folded,
}

impl UnitErrors {
    fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, n)| n).sum()
    }
}

/// The window. `threshold` is the count that makes a burst: `take_turns`
/// says when a unit crossed it, either way.
#[derive(Debug)]
pub struct ErrorWindow {
    span: TimeDelta,
    /// Seconds per bucket.
    width: i64,
    limits: Limits,
    threshold: u64,
    units: BTreeMap<String, UnitErrors>,
    /// Units at or over the threshold when `take_turns` was last called.
    over: Vec<String>,
    /// Entries taken since the follower started.
    pub taken: u64,
    /// The position of the last entry taken, for the next start.
    pub cursor: Option<String>,
    /// Why the stored cursor was not used, as the follower found at start.
    pub refused_cursor: Option<String>,
    /// Why the journal cannot be followed now; `None` while it is.
    pub error: Option<String>,
}

impl ErrorWindow {
    /// A window of `span`; a unit with `threshold` entries in it is a burst;
    /// `keep` entries of a unit are kept as written before folding.
    pub fn new(span: TimeDelta, threshold: u64, keep: usize) -> Self {
        let width = (span.num_seconds() / BUCKETS).max(1);
        Self {
            span,
            width,
            limits: Limits { verbatim: keep, ..Limits::DEFAULT },
            threshold,
            units: BTreeMap::new(),
            over: Vec::new(),
            taken: 0,
            cursor: None,
            refused_cursor: None,
            error: None,
        }
    }

    /// Takes one entry of `writer` (whose unit it is counted under), at
    /// `time`; an entry older than the span (read at start, from before)
    /// is not counted.
    pub fn push(&mut self, writer: Writer, priority: u8, time: DateTime<Utc>, message: &str, now: DateTime<Utc>) {
        self.taken += 1;
        let Some(unit) = writer.unit.clone() else { return };
        if now.signed_duration_since(time) > self.span {
            return;
        }
        if !self.units.contains_key(&unit) && self.units.len() >= MAX_UNITS {
            return;
        }
        let limits = self.limits;
        let errors = self
            .units
            .entry(unit)
            .or_insert_with(|| UnitErrors { buckets: VecDeque::new(), fold: Folded::new(limits) });
        let start = time.timestamp() - time.timestamp().rem_euclid(self.width);
        match errors.buckets.iter_mut().rev().find(|(s, _)| *s == start) {
            Some((_, n)) => *n += 1,
            None => {
                // Entries arrive in journal order; one out of order opens its own bucket in place.
                let at = errors.buckets.iter().position(|(s, _)| *s > start).unwrap_or(errors.buckets.len());
                errors.buckets.insert(at, (start, 1));
            }
        }
        errors.fold.push(writer, priority, time, message);
    }

    /// Drops what is older than the span; a unit left with nothing goes,
    /// with its evidence.
    pub fn expire(&mut self, now: DateTime<Utc>) {
        let oldest = (now - self.span).timestamp();
        let width = self.width;
        self.units.retain(|_, e| {
            while e.buckets.front().is_some_and(|(s, _)| s + width <= oldest) {
                e.buckets.pop_front();
            }
            !e.buckets.is_empty()
        });
    }

    /// Whether the set of units at or over the threshold changed since the
    /// last call (a burst began or ended).
    pub fn take_turns(&mut self, now: DateTime<Utc>) -> bool {
        self.expire(now);
        let over: Vec<String> =
            self.units.iter().filter(|(_, e)| e.count() >= self.threshold).map(|(u, _)| u.clone()).collect();
        let turned = over != self.over;
        self.over = over;
        turned
    }

    /// The window as a pass reads it.
    pub fn scan(&mut self, now: DateTime<Utc>) -> ErrorScan {
        self.expire(now);
        let per_unit: BTreeMap<String, u64> = self.units.iter().map(|(u, e)| (u.clone(), e.count())).collect();
        ErrorScan {
            total: per_unit.values().sum(),
            per_unit,
            evidence: self.units.iter().map(|(u, e)| (u.clone(), e.fold.clone())).collect(),
            cursor: self.cursor.clone(),
            refused_cursor: self.refused_cursor.clone(),
            window_secs: Some(self.span.num_seconds().max(0) as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn writer(unit: &str) -> Writer {
        Writer { unit: Some(unit.into()), comm: Some("app".into()), uid: Some(0) }
    }

    #[test]
    fn a_burst_is_counted_over_the_last_span_and_ends_when_it_slides_out() {
        let mut w = ErrorWindow::new(TimeDelta::seconds(60), 20, 5);
        for i in 0..19 {
            w.push(writer("a.service"), 3, at(i), &format!("request {i} failed"), at(i));
        }
        assert!(!w.take_turns(at(19)), "19 is not yet a burst");
        w.push(writer("a.service"), 3, at(20), "request 19 failed", at(20));
        assert!(w.take_turns(at(20)), "20 is");
        assert!(!w.take_turns(at(30)), "no change");
        let scan = w.scan(at(30));
        assert_eq!(scan.per_unit["a.service"], 20);
        assert_eq!(scan.evidence["a.service"].entries(), 20);
        assert_eq!(scan.window_secs, Some(60));
        // The first entries slide out: under the threshold again.
        assert!(w.take_turns(at(62)));
        assert!(w.scan(at(62)).per_unit["a.service"] < 20);
        // All of them out: the unit and its evidence go.
        assert!(w.scan(at(200)).per_unit.is_empty());
    }

    #[test]
    fn entries_older_than_the_span_and_without_a_unit_are_not_counted() {
        let mut w = ErrorWindow::new(TimeDelta::seconds(60), 1, 5);
        w.push(writer("a.service"), 3, at(0), "old", at(100));
        w.push(Writer { unit: None, comm: None, uid: None }, 3, at(100), "kernel", at(100));
        assert_eq!(w.taken, 2);
        assert!(w.scan(at(100)).per_unit.is_empty());
    }

    #[test]
    fn units_and_buckets_are_bounded() {
        let mut w = ErrorWindow::new(TimeDelta::seconds(86_400), 1, 5);
        for u in 0..(MAX_UNITS + 50) {
            w.push(writer(&format!("u{u}.service")), 3, at(0), "x", at(0));
        }
        assert_eq!(w.scan(at(0)).per_unit.len(), MAX_UNITS);
        for s in 0..86_400 {
            w.push(writer("u0.service"), 3, at(s), "x", at(s));
        }
        assert!(w.units["u0.service"].buckets.len() <= BUCKETS as usize + 1);
    }
}
