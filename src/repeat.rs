//! A failure that repeats is recorded once, then counted. While the model
//! is unreachable every try fails the same way; writing each one out (the
//! decision, the request that was refused) fills a disk and tells a reader
//! nothing new. So the first failure of a kind is recorded in full, the same
//! kind again is only counted, and the count is recorded when the state
//! changes (another kind of failure, an answer, the incident resolved) and
//! at least every `retention.repeat_every`, so a person reading the trail
//! sees it is still failing.
//!
//! Pure bookkeeping: the callers keep a `Repeating` where it must live (the
//! state database for decisions, memory for the record of calls) and write
//! what `failed` and `ended` tell them to.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// The failure being repeated, and what of it is not recorded yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repeating<K> {
    pub kind: K,
    /// When this failure (or its count) was last recorded.
    pub recorded: DateTime<Utc>,
    /// Repeats counted since, not recorded.
    pub count: u32,
    /// The first and the last of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<DateTime<Utc>>,
}

/// Failures of one kind counted instead of recorded one by one: what a
/// record of repeats says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repeats {
    pub count: u32,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

/// What to write for a failure that just happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write<K> {
    /// A new state: record this failure in full, after the count of the
    /// failure it replaces (`ended`), when that count is not recorded yet.
    Record { ended: Option<(K, Repeats)> },
    /// The same failure again: counted, nothing written.
    Count,
    /// The same failure again, and `repeat_every` has passed since it was
    /// last recorded: record the count, this failure included.
    Repeats(Repeats),
}

impl<K: PartialEq + Clone> Repeating<K> {
    /// A failure of `kind` at `now`, after `before` (the state so far, if
    /// one was failing): the state after it, and what to write.
    pub fn failed(before: Option<Self>, kind: K, now: DateTime<Utc>, every: TimeDelta) -> (Self, Write<K>) {
        let fresh = |kind| Self { kind, recorded: now, count: 0, first: None, last: None };
        match before {
            Some(mut same) if same.kind == kind => {
                same.count = same.count.saturating_add(1);
                same.first.get_or_insert(now);
                same.last = Some(now);
                if now.signed_duration_since(same.recorded) < every {
                    return (same, Write::Count);
                }
                let repeats = Repeats { count: same.count, first: same.first.unwrap_or(now), last: now };
                (fresh(kind), Write::Repeats(repeats))
            }
            Some(other) => {
                let ended = Self::ended(Some(other));
                (fresh(kind), Write::Record { ended })
            }
            None => (fresh(kind), Write::Record { ended: None }),
        }
    }

    /// The count not recorded yet, when the failure ends (an answer, the
    /// incident resolved) or the caller goes away.
    pub fn ended(state: Option<Self>) -> Option<(K, Repeats)> {
        let mut state = state?;
        let repeats = state.take()?;
        Some((state.kind, repeats))
    }

    /// Whether the count is due to be recorded at `now` without a new
    /// failure (a caller that can look between failures).
    pub fn due(&self, now: DateTime<Utc>, every: TimeDelta) -> bool {
        self.count > 0 && now.signed_duration_since(self.recorded) >= every
    }

    /// The count, when it is due at `now` (see `due`): taken, and `now`
    /// becomes the time it was last recorded.
    pub fn take_due(&mut self, now: DateTime<Utc>, every: TimeDelta) -> Option<Repeats> {
        if !self.due(now, every) {
            return None;
        }
        self.recorded = now;
        self.take()
    }

    /// The count not recorded yet, reset.
    pub fn take(&mut self) -> Option<Repeats> {
        let (first, last) = (self.first.take()?, self.last.take()?);
        let count = std::mem::take(&mut self.count);
        (count > 0).then_some(Repeats { count, first, last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    const HOUR: TimeDelta = TimeDelta::hours(1);

    #[test]
    fn the_first_failure_is_recorded_the_same_again_only_counted() {
        let (s, w) = Repeating::failed(None, "refused", at(0), HOUR);
        assert_eq!(w, Write::Record { ended: None });
        let (s, w) = Repeating::failed(Some(s), "refused", at(5), HOUR);
        assert_eq!(w, Write::Count);
        let (s, w) = Repeating::failed(Some(s), "refused", at(10), HOUR);
        assert_eq!(w, Write::Count);
        assert_eq!((s.count, s.first, s.last), (2, Some(at(5)), Some(at(10))));
    }

    #[test]
    fn the_count_is_recorded_once_the_interval_has_passed() {
        let mut s = Repeating::failed(None, "refused", at(0), HOUR).0;
        for t in (5..3600).step_by(5) {
            s = Repeating::failed(Some(s), "refused", at(t), HOUR).0;
        }
        assert!(s.due(at(3600), HOUR) && !s.due(at(3599), HOUR));
        let (s, w) = Repeating::failed(Some(s), "refused", at(3600), HOUR);
        assert_eq!(w, Write::Repeats(Repeats { count: 720, first: at(5), last: at(3600) }));
        assert_eq!((s.count, s.recorded), (0, at(3600)));
        assert_eq!(Repeating::failed(Some(s), "refused", at(3605), HOUR).1, Write::Count);
    }

    #[test]
    fn a_count_not_followed_by_a_failure_is_taken_once_due() {
        let s = Repeating::failed(None, "refused", at(0), HOUR).0;
        let mut s = Repeating::failed(Some(s), "refused", at(60), HOUR).0;
        assert_eq!(s.take_due(at(3599), HOUR), None);
        assert_eq!(s.take_due(at(3600), HOUR), Some(Repeats { count: 1, first: at(60), last: at(60) }));
        assert_eq!((s.count, s.recorded), (0, at(3600)));
        assert_eq!(s.take_due(at(7300), HOUR), None, "nothing counted since");
    }

    #[test]
    fn another_kind_of_failure_records_the_count_of_the_one_before_then_itself() {
        let s = Repeating::failed(None, "refused", at(0), HOUR).0;
        let s = Repeating::failed(Some(s), "refused", at(5), HOUR).0;
        let (s, w) = Repeating::failed(Some(s), "HTTP 500", at(10), HOUR);
        assert_eq!(w, Write::Record { ended: Some(("refused", Repeats { count: 1, first: at(5), last: at(5) })) });
        assert_eq!((s.kind, s.count), ("HTTP 500", 0));
        // Nothing counted yet: nothing to record of it.
        let (_, w) = Repeating::failed(Some(s), "refused", at(15), HOUR);
        assert_eq!(w, Write::Record { ended: None });
    }

    #[test]
    fn an_end_gives_the_count_not_recorded_yet() {
        let s = Repeating::failed(None, "refused", at(0), HOUR).0;
        assert_eq!(Repeating::ended(Some(s.clone())), None);
        let s = Repeating::failed(Some(s), "refused", at(5), HOUR).0;
        assert_eq!(Repeating::ended(Some(s)), Some(("refused", Repeats { count: 1, first: at(5), last: at(5) })));
        assert_eq!(Repeating::<&str>::ended(None), None);
    }
}
