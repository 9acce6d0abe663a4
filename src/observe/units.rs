//! The units as systemd's signals tell them, each against its previous
//! state: what changed (`Transition`) and which units systemd keeps
//! restarting by itself.
//!
//! systemd repeats an interface's whole state on every change, so the
//! table holds each unit's last active and sub state and restart count, and
//! a signal that repeats them is no transition. A unit in `auto-restart`
//! is one systemd is about to start again: it is counted here, not failed;
//! `detect` calls it a restart loop once it restarted often enough within
//! the window. Pure state, no I/O: the daemon feeds it `events::Signal`s.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::events::{Interface, Listed, Signal};

/// Restarts of one unit kept in the window; more than this are counted as
/// this many (a loop is a loop long before).
const MAX_RESTARTS_KEPT: usize = 256;

/// What a signal changed about a unit that matters to macha.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// It entered `failed`.
    Failed,
    /// It left `failed`, to this active state.
    LeftFailed(String),
    /// systemd restarted it by itself (`Restart=`); `in_window` restarts
    /// are now within the window.
    Restarted { in_window: usize },
    /// Its active state changed otherwise (from, to).
    State(String, String),
    /// systemd unloaded it.
    Gone,
}

/// A unit systemd restarted by itself within the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Restarting {
    pub unit: String,
    /// Restarts within the window.
    pub restarts: usize,
    /// systemd's own count (`NRestarts`), when a signal told it.
    pub n_restarts: Option<u32>,
    /// The first restart within the window.
    pub since: DateTime<Utc>,
    /// Its active and sub state now.
    pub active_state: String,
    pub sub_state: String,
}

#[derive(Debug, Default)]
struct Known {
    active: String,
    sub: String,
    n_restarts: Option<u32>,
    restarts: VecDeque<DateTime<Utc>>,
}

/// The table of units, fed by signals.
#[derive(Debug)]
pub struct Units {
    table: HashMap<String, Known>,
    window: TimeDelta,
}

impl Units {
    /// A table whose restart counts look back `window`.
    pub fn new(window: TimeDelta) -> Self {
        Self { table: HashMap::new(), window }
    }

    /// How many units it holds.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Brings the table in line with a listing of every unit (at start, at
    /// a reconnect, and at each reconciliation); returns the transitions of
    /// the units whose state differed, which a missed signal would explain.
    /// Restart counts are kept.
    pub fn reconcile(&mut self, listed: &[Listed], now: DateTime<Utc>) -> Vec<(String, Transition)> {
        let mut changed = Vec::new();
        for l in listed {
            let known = self.table.entry(l.unit.clone()).or_default();
            changed.extend(transition(&known.active, &l.active_state).map(|t| (l.unit.clone(), t)));
            known.active.clone_from(&l.active_state);
            known.sub.clone_from(&l.sub_state);
        }
        let gone: Vec<String> = self.table.keys().filter(|u| !listed.iter().any(|l| &l.unit == *u)).cloned().collect();
        for unit in gone {
            self.table.remove(&unit);
            changed.push((unit, Transition::Gone));
        }
        self.forget_old(now);
        changed
    }

    /// Applies one signal; the transition it makes, if any.
    pub fn apply(&mut self, signal: &Signal, now: DateTime<Utc>) -> Option<(String, Transition)> {
        match signal {
            Signal::Changed { unit, interface: Interface::Unit, props } => {
                let active: Option<String> = props.maybe("ActiveState").ok().flatten();
                let sub: Option<String> = props.maybe("SubState").ok().flatten();
                let known = self.table.entry(unit.clone()).or_default();
                let mut t = None;
                if let Some(active) = active {
                    t = transition(&known.active, &active);
                    known.active = active;
                }
                if let Some(sub) = sub {
                    let entered_restart = sub == "auto-restart" && known.sub != "auto-restart";
                    known.sub = sub;
                    // Without a count from systemd yet, entering auto-restart is one restart.
                    if entered_restart && known.n_restarts.is_none() {
                        let in_window = count(known, 1, now, self.window);
                        t = Some(Transition::Restarted { in_window });
                    }
                }
                t.map(|t| (unit.clone(), t))
            }
            Signal::Changed { unit, interface: Interface::Service, props } => {
                let n: u32 = props.maybe("NRestarts").ok().flatten()?;
                let known = self.table.entry(unit.clone()).or_default();
                let before = known.n_restarts.replace(n);
                match before {
                    Some(b) if n > b => {
                        let in_window = count(known, (n - b) as usize, now, self.window);
                        Some((unit.clone(), Transition::Restarted { in_window }))
                    }
                    // The first count seen: the restart that brought the
                    // unit into auto-restart was counted then.
                    _ => None,
                }
            }
            Signal::Changed { .. } | Signal::JobRemoved { .. } | Signal::Reloading(_) | Signal::Other => None,
            Signal::New { unit } => {
                self.table.entry(unit.clone()).or_default();
                None
            }
            Signal::Removed { unit } => self.table.remove(unit).map(|_| (unit.clone(), Transition::Gone)),
        }
    }

    /// The units systemd restarted by itself within the window, most
    /// restarts first. One shown `failed` may be between a crash and its
    /// restart (systemd shows `failed` for an instant before
    /// `auto-restart`), or given up on: only systemd's own answer tells,
    /// which `detect` has.
    pub fn restarting(&mut self, now: DateTime<Utc>) -> Vec<Restarting> {
        self.forget_old(now);
        let mut out: Vec<Restarting> = self
            .table
            .iter()
            .filter(|(_, k)| !k.restarts.is_empty())
            .map(|(unit, k)| Restarting {
                unit: unit.clone(),
                restarts: k.restarts.len(),
                n_restarts: k.n_restarts,
                since: k.restarts[0],
                active_state: k.active.clone(),
                sub_state: k.sub.clone(),
            })
            .collect();
        out.sort_by(|a, b| b.restarts.cmp(&a.restarts).then_with(|| a.unit.cmp(&b.unit)));
        out
    }

    /// The active state the table holds for `unit`.
    pub fn active_state(&self, unit: &str) -> Option<&str> {
        self.table.get(unit).map(|k| k.active.as_str())
    }

    fn forget_old(&mut self, now: DateTime<Utc>) {
        for k in self.table.values_mut() {
            while k.restarts.front().is_some_and(|t| now.signed_duration_since(*t) > self.window) {
                k.restarts.pop_front();
            }
        }
    }
}

/// Records `n` restarts at `now`; the count within the window after.
fn count(known: &mut Known, n: usize, now: DateTime<Utc>, window: TimeDelta) -> usize {
    for _ in 0..n.min(MAX_RESTARTS_KEPT) {
        if known.restarts.len() == MAX_RESTARTS_KEPT {
            known.restarts.pop_front();
        }
        known.restarts.push_back(now);
    }
    while known.restarts.front().is_some_and(|t| now.signed_duration_since(*t) > window) {
        known.restarts.pop_front();
    }
    known.restarts.len()
}

/// The transition from active state `from` to `to`; none when they are the
/// same, or `from` is not known yet (a unit first seen).
fn transition(from: &str, to: &str) -> Option<Transition> {
    if from.is_empty() || from == to {
        return None;
    }
    Some(match (from == "failed", to == "failed") {
        (false, true) => Transition::Failed,
        (true, false) => Transition::LeftFailed(to.to_owned()),
        _ => Transition::State(from.to_owned(), to.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use zbus::zvariant::{OwnedValue, Value};

    use super::*;
    use crate::observe::systemd::Props;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn secs(s: i64) -> DateTime<Utc> {
        t0() + TimeDelta::seconds(s)
    }

    fn unit_props(unit: &str, active: &str, sub: &str) -> Signal {
        let mut map = HashMap::new();
        map.insert("ActiveState".to_owned(), OwnedValue::try_from(Value::from(active)).unwrap());
        map.insert("SubState".to_owned(), OwnedValue::try_from(Value::from(sub)).unwrap());
        map.insert("Id".to_owned(), OwnedValue::try_from(Value::from(unit)).unwrap());
        Signal::Changed { unit: unit.into(), interface: Interface::Unit, props: Props(map) }
    }

    fn restarts(unit: &str, n: u32) -> Signal {
        let mut map = HashMap::new();
        map.insert("NRestarts".to_owned(), OwnedValue::from(n));
        map.insert("Result".to_owned(), OwnedValue::try_from(Value::from("exit-code")).unwrap());
        Signal::Changed { unit: unit.into(), interface: Interface::Service, props: Props(map) }
    }

    fn listed(unit: &str, active: &str, sub: &str) -> Listed {
        Listed { unit: unit.into(), active_state: active.into(), sub_state: sub.into() }
    }

    #[test]
    fn entering_and_leaving_failed_are_transitions_and_a_repeated_state_is_none() {
        let mut units = Units::new(TimeDelta::seconds(60));
        assert!(units.reconcile(&[listed("web.service", "active", "running")], t0()).is_empty());
        let failed = unit_props("web.service", "failed", "failed");
        assert_eq!(units.apply(&failed, t0()), Some(("web.service".into(), Transition::Failed)));
        // systemd repeats the whole state on every change: no second transition.
        assert_eq!(units.apply(&failed, secs(1)), None);
        let back = unit_props("web.service", "active", "running");
        assert_eq!(units.apply(&back, secs(2)), Some(("web.service".into(), Transition::LeftFailed("active".into()))));
        assert_eq!(
            units.apply(&unit_props("web.service", "deactivating", "stop"), secs(3)),
            Some(("web.service".into(), Transition::State("active".into(), "deactivating".into())))
        );
    }

    #[test]
    fn restarts_by_systemd_are_counted_within_the_window_not_failed() {
        let mut units = Units::new(TimeDelta::seconds(60));
        units.reconcile(&[listed("loop.service", "active", "running")], t0());
        // The first crash: auto-restart, before systemd's count is known.
        let r = units.apply(&unit_props("loop.service", "activating", "auto-restart"), secs(1));
        assert_eq!(r, Some(("loop.service".into(), Transition::Restarted { in_window: 1 })));
        assert_eq!(units.apply(&restarts("loop.service", 1), secs(1)), None, "the same restart, counted once");
        units.apply(&unit_props("loop.service", "active", "running"), secs(2));
        units.apply(&unit_props("loop.service", "activating", "auto-restart"), secs(3));
        assert_eq!(
            units.apply(&restarts("loop.service", 2), secs(3)),
            Some(("loop.service".into(), Transition::Restarted { in_window: 2 }))
        );
        assert_eq!(
            units.apply(&restarts("loop.service", 4), secs(5)),
            Some(("loop.service".into(), Transition::Restarted { in_window: 4 })),
            "two restarts between two signals count two"
        );
        let now = units.restarting(secs(6));
        assert_eq!(now.len(), 1);
        assert_eq!((now[0].restarts, now[0].n_restarts, now[0].since), (4, Some(4), secs(1)));
        // Past the window they are forgotten.
        assert!(units.restarting(secs(200)).is_empty());
    }

    #[test]
    fn a_unit_shown_failed_is_still_told_with_its_restarts() {
        let mut units = Units::new(TimeDelta::seconds(60));
        units.reconcile(&[listed("loop.service", "active", "running")], t0());
        units.apply(&unit_props("loop.service", "activating", "auto-restart"), secs(1));
        units.apply(&restarts("loop.service", 5), secs(1));
        units.apply(&restarts("loop.service", 6), secs(2));
        assert_eq!(units.restarting(secs(2)).len(), 1);
        let r = units.apply(&unit_props("loop.service", "failed", "failed"), secs(3));
        assert_eq!(r, Some(("loop.service".into(), Transition::Failed)));
        // Between a crash and its restart, or given up on: detect asks systemd.
        let now = units.restarting(secs(3));
        assert_eq!((now[0].restarts, now[0].active_state.as_str()), (2, "failed"));
    }

    #[test]
    fn a_reconciliation_tells_what_the_signals_missed() {
        let mut units = Units::new(TimeDelta::seconds(60));
        units.reconcile(&[listed("a.service", "active", "running"), listed("b.service", "active", "running")], t0());
        let changed = units
            .reconcile(&[listed("a.service", "failed", "failed"), listed("c.service", "inactive", "dead")], secs(1));
        assert!(changed.contains(&("a.service".into(), Transition::Failed)));
        assert!(changed.contains(&("b.service".into(), Transition::Gone)));
        assert_eq!(units.len(), 2);
        assert_eq!(units.active_state("a.service"), Some("failed"));
        assert_eq!(units.apply(&Signal::Removed { unit: "a.service".into() }, secs(2)).unwrap().1, Transition::Gone);
    }

    #[test]
    fn restarts_kept_per_unit_are_bounded() {
        let mut units = Units::new(TimeDelta::seconds(60));
        units.apply(&restarts("x.service", 0), t0());
        units.apply(&restarts("x.service", 1_000_000), t0());
        assert_eq!(units.restarting(t0())[0].restarts, MAX_RESTARTS_KEPT);
    }
}
