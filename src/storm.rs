//! Storm control: whether an action the gate allows to run automatically may
//! run *now*. A unit that keeps failing is not restarted forever: each
//! automatic action on an incident waits longer than the one before, a
//! global budget caps automatic actions per hour, `macha pause` stops them
//! all, and what cannot be fixed automatically goes to a human.
//!
//! Pure code: what happened before (`History`) and what systemd says about
//! the unit (`UnitSignals`) are read by the caller and passed in.

use chrono::{DateTime, Utc};

use crate::config::ActConfig;

/// Automatic actions taken before, as the store remembers them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Automatic actions on this incident in the last 24 hours.
    pub recent: u32,
    /// When the last one ran.
    pub last: Option<DateTime<Utc>>,
    /// Whether the last one failed its check (or its outcome could not be seen).
    pub last_failed: bool,
    /// Whether the last one has started and not finished: another process
    /// is carrying it out, or its end is not recorded yet.
    pub in_flight: bool,
    /// Automatic actions on any incident in the last hour.
    pub last_hour: u32,
    /// Why automatic actions are paused, if they are.
    pub paused: Option<String>,
}

/// What systemd itself says about the unit's restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitSignals {
    /// `NRestarts`: restarts systemd did by itself (`Restart=`).
    pub n_restarts: Option<u32>,
    /// `Result`; `start-limit-hit` means systemd gave up on the unit.
    pub result: Option<String>,
}

/// Whether an automatic action may run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Run it.
    Go,
    /// Not now: it is cooling down. Reconsidered when the incident changes.
    Wait(String),
    /// Not automatically: queue it for a human and say so.
    Escalate(String),
}

/// The wait after `n` automatic actions on one incident: `cooldown`,
/// doubled for each earlier action, at most a day.
pub fn cooldown_after(n: u32, cfg: &ActConfig) -> chrono::Duration {
    let secs = cfg.cooldown.saturating_mul(1u64 << n.saturating_sub(1).min(20)).min(86_400);
    chrono::Duration::seconds(secs as i64)
}

pub fn admit(h: &History, unit: &UnitSignals, cfg: &ActConfig, now: DateTime<Utc>) -> Admission {
    if let Some(why) = &h.paused {
        return Admission::Escalate(format!("automatic actions are paused ({why}); `macha resume` restarts them"));
    }
    if h.in_flight {
        return Admission::Wait(
            "the previous automatic action on this incident has not finished (or its end is not recorded yet)".into(),
        );
    }
    if h.last_failed {
        return Admission::Escalate(
            "the previous automatic action on this incident failed its check; not repeating it automatically".into(),
        );
    }
    if h.recent >= cfg.max_auto_restarts {
        return Admission::Escalate(format!("still failing after {} automatic actions in 24 hours", h.recent));
    }
    if unit.result.as_deref() == Some("start-limit-hit") {
        return Admission::Escalate(
            "systemd stopped restarting the unit (start limit hit); restarting it again would defeat that limit".into(),
        );
    }
    if let Some(n) = unit.n_restarts.filter(|n| *n >= cfg.max_auto_restarts) {
        return Admission::Escalate(format!("systemd already restarted the unit {n} times by itself"));
    }
    if h.last_hour >= cfg.max_auto_per_hour {
        return Admission::Escalate(format!(
            "the budget of {} automatic actions per hour is used up",
            cfg.max_auto_per_hour
        ));
    }
    if let Some(last) = h.last {
        let until = last + cooldown_after(h.recent, cfg);
        if now < until {
            return Admission::Wait(format!(
                "cooling down after {} automatic actions; next one possible at {}",
                h.recent,
                until.to_rfc3339()
            ));
        }
    }
    Admission::Go
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ActConfig {
        ActConfig { cooldown: 60, max_auto_per_hour: 10, max_auto_restarts: 3, ..ActConfig::default() }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn is_escalation(a: &Admission, text: &str) -> bool {
        matches!(a, Admission::Escalate(r) if r.contains(text))
    }

    #[test]
    fn a_first_action_goes() {
        assert_eq!(admit(&History::default(), &UnitSignals::default(), &cfg(), now()), Admission::Go);
    }

    #[test]
    fn pause_stops_everything() {
        let h = History { paused: Some("maintenance".into()), ..History::default() };
        assert!(is_escalation(&admit(&h, &UnitSignals::default(), &cfg(), now()), "paused (maintenance)"));
    }

    #[test]
    fn a_failed_check_is_not_repeated_automatically() {
        let h = History {
            recent: 1,
            last: Some(now() - chrono::Duration::days(1)),
            last_failed: true,
            ..History::default()
        };
        assert!(is_escalation(&admit(&h, &UnitSignals::default(), &cfg(), now()), "failed its check"));
    }

    #[test]
    fn nothing_runs_while_the_previous_action_is_in_flight() {
        let h =
            History { recent: 1, last: Some(now() - chrono::Duration::days(1)), in_flight: true, ..History::default() };
        assert!(
            matches!(admit(&h, &UnitSignals::default(), &cfg(), now()), Admission::Wait(r) if r.contains("not finished"))
        );
    }

    #[test]
    fn after_the_configured_number_of_actions_a_human_takes_over() {
        let h = History { recent: 3, last: Some(now() - chrono::Duration::days(1)), ..History::default() };
        assert!(is_escalation(&admit(&h, &UnitSignals::default(), &cfg(), now()), "after 3 automatic actions"));
    }

    #[test]
    fn systemds_own_limits_are_respected() {
        let hit = UnitSignals { result: Some("start-limit-hit".into()), ..UnitSignals::default() };
        assert!(is_escalation(&admit(&History::default(), &hit, &cfg(), now()), "start limit"));
        let looping = UnitSignals { n_restarts: Some(5), ..UnitSignals::default() };
        assert!(is_escalation(&admit(&History::default(), &looping, &cfg(), now()), "5 times by itself"));
    }

    #[test]
    fn the_hourly_budget_caps_all_incidents_together() {
        let h = History { last_hour: 10, ..History::default() };
        assert!(is_escalation(&admit(&h, &UnitSignals::default(), &cfg(), now()), "budget of 10"));
    }

    #[test]
    fn the_cooldown_doubles_with_each_action() {
        assert_eq!(cooldown_after(1, &cfg()).num_seconds(), 60);
        assert_eq!(cooldown_after(2, &cfg()).num_seconds(), 120);
        let h =
            |recent, ago| History { recent, last: Some(now() - chrono::Duration::seconds(ago)), ..History::default() };
        assert!(matches!(admit(&h(1, 30), &UnitSignals::default(), &cfg(), now()), Admission::Wait(_)));
        assert_eq!(admit(&h(1, 61), &UnitSignals::default(), &cfg(), now()), Admission::Go);
        assert!(matches!(admit(&h(2, 61), &UnitSignals::default(), &cfg(), now()), Admission::Wait(_)));
        assert_eq!(admit(&h(2, 121), &UnitSignals::default(), &cfg(), now()), Admission::Go);
    }
}
