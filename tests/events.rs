//! Event-driven detection against a real systemd: the signals themselves
//! (what `observe::events` and `observe::units` make of them), then the
//! daemon, which turns a failure into an incident long before its next
//! periodic cycle.

mod common;

use std::time::Duration;

use macha::observe::events::Events;
use macha::observe::units::{Transition, Units};
use macha_testbed::container::Container;

/// Subscribes to `c`'s signals, runs `act` (which returns once what it
/// does has settled), then takes every signal that came meanwhile, until
/// none came for half a second; the transitions they make, in order.
async fn follow(c: &Container, act: impl FnOnce()) -> Vec<(String, Transition)> {
    let (mut events, listed) = Events::subscribe(Some(&c.bus_address())).await.expect("subscribe");
    let mut units = Units::new(chrono::TimeDelta::seconds(600));
    assert!(units.reconcile(&listed, chrono::Utc::now()).is_empty());
    assert!(units.len() > 20, "the listing holds the container's units: {}", units.len());
    act();
    let mut seen = Vec::new();
    while let Ok(Some(signal)) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
        if let Some(t) = units.apply(&signal.expect("every signal parses"), chrono::Utc::now()) {
            seen.push(t);
        }
    }
    seen
}

#[tokio::test(flavor = "current_thread")]
async fn a_failure_and_systemds_own_restarts_arrive_as_transitions() {
    let c = Container::boot("events-signals").unwrap();
    c.install_unit("once.service", "[Service]\nExecStart=/bin/sh -c 'exit 3'\n").unwrap();
    c.install_unit(
        "loop.service",
        "[Unit]\nStartLimitIntervalSec=60\nStartLimitBurst=4\n[Service]\nExecStart=/bin/sh -c 'sleep 0.2; exit 1'\nRestart=on-failure\nRestartSec=100ms\n",
    )
    .unwrap();
    let seen = follow(&c, || {
        c.exec_ok(&["systemctl", "start", "--no-block", "once.service", "loop.service"]).unwrap();
        // Failed, and still failed past RestartSec: systemd gave up.
        let settled = || c.unit_property("loop.service", "ActiveState").unwrap() == "failed";
        c.wait_for(Duration::from_secs(30), || {
            settled() && {
                std::thread::sleep(Duration::from_millis(500));
                settled()
            }
        })
        .unwrap();
    })
    .await;
    let of = |unit: &str| seen.iter().filter(|(u, _)| u == unit).map(|(_, t)| t.clone()).collect::<Vec<_>>();
    let once = of("once.service");
    assert_eq!(
        (once.last(), once.iter().filter(|t| **t == Transition::Failed).count()),
        (Some(&Transition::Failed), 1)
    );
    let looped = of("loop.service");
    let restarts: Vec<usize> = looped
        .iter()
        .filter_map(|t| if let Transition::Restarted { in_window } = t { Some(*in_window) } else { None })
        .collect();
    // StartLimitBurst=4: the start and three restarts, then systemd gives up. Each crash
    // shows `failed` for an instant before `auto-restart`: a failure is
    // only one once systemd does not restart the unit (what the daemon
    // asks systemd before it records one).
    assert_eq!(restarts[..3], [1, 2, 3], "{looped:?}");
    assert_eq!(looped.last(), Some(&Transition::Failed), "{looped:?}");
    assert_eq!(c.unit_property("loop.service", "ActiveState").unwrap(), "failed");
    let n: usize = c.unit_property("loop.service", "NRestarts").unwrap().parse().unwrap();
    assert_eq!(restarts.len(), n, "every restart systemd counted, counted once: {looped:?}");
}
