//! Event-driven detection against a real systemd: the signals themselves
//! (what `observe::events` and `observe::units` make of them), then the
//! daemon, which turns a failure into an incident long before its next
//! periodic cycle.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{chats, said, signal, stop_daemon, wait_exit, wait_until, Bed, WEB};
use macha::observe::events::Events;
use macha::observe::units::{Transition, Units};
use macha::state_dir::StateDir;
use macha::store::Store;
use macha_testbed::container::Container;
use macha_testbed::gotify::{GotifyReceiver, ReceivedMessage};
use macha_testbed::ollama::Reply;
use nix::sys::signal::Signal;
use serde_json::Value;

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

/// A bed whose periodic cycle is an hour away: whatever is seen sooner was
/// seen by the signals.
fn hourly(name: &str, level: &str) -> Bed {
    let bed = Bed::new(name, level);
    bed.write_config(level, "check_interval = 3600");
    bed
}

/// `macha status --json`'s status of the daemon.
fn status(bed: &Bed) -> Value {
    let out = bed.run("macha", &["status", "--json"]);
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["status"].clone()
}

/// Waits until the daemon follows the container's signals and did its first pass.
fn until_live(bed: &Bed) {
    wait_until(Duration::from_secs(30), "the daemon following systemd's signals", || {
        status(bed)["watching"]["events"]["live"] == true && !bed.audit("metrics.jsonl").is_empty()
    });
}

/// Waits until the daemon's count of signals stays put for 3 s (it is
/// written at most once a second).
fn settle(bed: &Bed) {
    let signals = || status(bed)["watching"]["events"]["signals"].as_u64().unwrap();
    wait_until(Duration::from_secs(30), "the daemon's count of signals to settle", || {
        let a = signals();
        std::thread::sleep(Duration::from_millis(3000));
        a == signals()
    });
}

/// The `event` records of `incident` in incidents.jsonl.
fn events_of(bed: &Bed, incident: &str) -> Vec<String> {
    bed.audit("incidents.jsonl")
        .iter()
        .filter(|r| r["incident"] == incident)
        .map(|r| r["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The incident's status in the state database.
fn stored(bed: &Bed, incident: &str) -> Option<String> {
    let state = StateDir::open(&bed.state_dir()).unwrap();
    let store = Store::open(&state).unwrap();
    store.incident_state(&incident.into()).unwrap().map(|(s, _)| s.as_str().to_owned())
}

#[test]
fn a_failure_is_an_incident_at_once_not_at_the_next_cycle() {
    let bed = hourly("ev-fail", "observe");
    let daemon = bed.daemon(Stdio::piped());
    until_live(&bed);
    let incident = format!("unit-failed:{WEB}");
    let started = Instant::now();
    bed.failing_web();
    wait_until(Duration::from_secs(20), "the incident's record", || events_of(&bed, &incident) == ["opened"]);
    let took = started.elapsed();
    eprintln!("failure to incident record: {took:?} (the next cycle is an hour away)");
    assert_eq!(stored(&bed, &incident).as_deref(), Some("open"));
    // And it is decided, in the background.
    wait_until(Duration::from_secs(20), "its decision", || {
        bed.audit("decisions.jsonl").iter().any(|d| d["incident"] == incident.as_str())
    });
    // Repaired by hand: resolved as soon as systemd says so.
    bed.heal_web();
    bed.c.exec_ok(&["systemctl", "restart", WEB]).unwrap();
    wait_until(Duration::from_secs(20), "the resolution", || events_of(&bed, &incident) == ["opened", "resolved"]);
    let err = stop_daemon(daemon);
    assert!(!err.contains("ERROR"), "{err}");
}

#[test]
fn an_error_burst_is_an_incident_as_it_happens_and_ends_as_the_window_slides_on() {
    let bed = hourly("ev-burst", "observe");
    let config =
        std::fs::read_to_string(&bed.config).unwrap().replace("[detect]\n", "[detect]\nerror_burst_window = 5\n");
    std::fs::write(&bed.config, config).unwrap();
    let daemon = bed.daemon(Stdio::piped());
    until_live(&bed);
    bed.c
        .install_unit(
            "noisy.service",
            "[Service]\nExecStart=/bin/sh -c 'for i in $(seq 25); do echo \"<3>noisy: cannot reach the database (try $i)\"; done; exec sleep infinity'\n",
        )
        .unwrap();
    let started = Instant::now();
    bed.c.start_unit("noisy.service").unwrap();
    let incident = "error-burst:noisy.service";
    wait_until(Duration::from_secs(10), "the burst's incident", || events_of(&bed, incident) == ["opened"]);
    eprintln!("burst to incident record: {:?}", started.elapsed());
    let opened = bed.audit("incidents.jsonl").into_iter().find(|r| r["incident"] == incident).unwrap();
    assert_eq!(opened["summary"], "noisy.service logged 25 errors in the last 5 s", "{opened}");
    // No more errors: five seconds on, the window holds none.
    wait_until(Duration::from_secs(20), "the burst to slide out", || {
        events_of(&bed, incident) == ["opened", "resolved"]
    });
    stop_daemon(daemon);
}

#[test]
fn a_restart_loop_is_one_incident_and_giving_up_is_one_failure() {
    let bed = hourly("ev-loop", "observe");
    let daemon = bed.daemon(Stdio::piped());
    until_live(&bed);
    // Restarts 300 ms apart, until systemd gives up (six starts in a minute).
    bed.c
        .install_unit(
            "crashy.service",
            "[Unit]\nStartLimitIntervalSec=60\nStartLimitBurst=6\n[Service]\nExecStart=/bin/sh -c 'echo crashy: lost the database >&2; sleep 0.3; exit 1'\nRestart=on-failure\nRestartSec=300ms\n",
        )
        .unwrap();
    bed.c.exec_ok(&["systemctl", "start", "--no-block", "crashy.service"]).unwrap();
    wait_until(Duration::from_secs(30), "the restart loop", || {
        events_of(&bed, "restart-loop:crashy.service").first().map(String::as_str) == Some("opened")
    });
    wait_until(Duration::from_secs(30), "systemd giving up", || {
        events_of(&bed, "unit-failed:crashy.service") == ["opened"]
    });
    // Settled: no further record of either.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(events_of(&bed, "restart-loop:crashy.service"), ["opened", "resolved"]);
    assert_eq!(events_of(&bed, "unit-failed:crashy.service"), ["opened"]);
    // Each is decided once; the loop's prompt tells the restarts.
    wait_until(Duration::from_secs(20), "both decisions", || bed.audit("decisions.jsonl").len() == 2);
    let prompts: Vec<String> = chats(&bed.double).iter().map(|c| c["messages"].to_string()).collect();
    assert!(
        prompts.iter().any(|p| p.contains("restart-loop:crashy.service") && p.contains("restarted by systemd itself")),
        "{prompts:?}"
    );
    stop_daemon(daemon);
}

#[test]
fn a_hanging_model_delays_only_decisions() {
    let bed = hourly("ev-hang", "observe");
    // The model gets a minute per answer, and the first answer never comes in time.
    bed.write_config("observe", "check_interval = 3600\ntimeout = 60");
    bed.double.push(Reply::Hang(Duration::from_secs(50)));
    let mut daemon = bed.daemon(Stdio::piped());
    until_live(&bed);
    bed.failing_web();
    wait_until(Duration::from_secs(20), "the model asked about the first failure", || !chats(&bed.double).is_empty());
    let started = Instant::now();
    common::failing_app(&bed.c, "second.service");
    wait_until(Duration::from_secs(10), "the second incident's record", || {
        events_of(&bed, "unit-failed:second.service") == ["opened"]
    });
    eprintln!("second failure recorded {:?} after it failed, while the model hangs", started.elapsed());
    assert_eq!(chats(&bed.double).len(), 1, "still the first decision");
    wait_until(Duration::from_secs(10), "the status to show it waiting", || {
        status(&bed)["watching"]["waiting"]
            .as_array()
            .is_some_and(|w| w.iter().any(|i| i["incident"] == "unit-failed:second.service"))
    });
    let out = bed.run("macha", &["status"]);
    let shown = said(&out);
    assert!(shown.contains(&format!("deciding: unit-failed:{WEB}")), "{shown}");
    assert!(shown.contains("waiting for a decision: 1\n  unit-failed:second.service"), "{shown}");
    // A stop does not wait for the model.
    signal(&daemon, Signal::SIGTERM);
    let (code, took) = wait_exit(&mut daemon, Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
}

#[test]
fn the_daemon_reconnects_after_dbus_restarts_and_says_so() {
    let bed = hourly("ev-dbus", "observe");
    let daemon = bed.daemon(Stdio::piped());
    until_live(&bed);
    bed.c.exec_ok(&["systemctl", "restart", "dbus.service"]).unwrap();
    wait_until(Duration::from_secs(30), "the reconnect", || {
        let s = status(&bed);
        s["watching"]["events"]["reconnects"] == 1 && s["watching"]["events"]["live"] == true
    });
    let out = bed.run("macha", &["status"]);
    assert!(said(&out).contains("1 reconnect, last"), "{}", said(&out));
    bed.failing_web();
    let incident = format!("unit-failed:{WEB}");
    wait_until(Duration::from_secs(20), "the failure after the reconnect", || events_of(&bed, &incident) == ["opened"]);
    signal(&daemon, Signal::SIGTERM);
    let out = daemon.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("signal stream is lost"), "{err}");
    assert!(err.contains("following systemd's signals") && err.contains("reconnect=true"), "{err}");
}

#[test]
fn two_hundred_state_changes_a_second_are_followed_and_none_is_lost() {
    let bed = Bed::new("ev-load", "observe");
    bed.write_config("observe", "check_interval = 5");
    let daemon = bed.daemon(Stdio::piped());
    until_live(&bed);
    let pid = daemon.id();
    let rss = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let signals = |bed: &Bed| status(bed)["watching"]["events"]["signals"].as_u64().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (taken, seen, changes, rss_early) = rt.block_on(async {
        // A subscriber of the test's own sees what the daemon should.
        let (mut events, listed) = Events::subscribe(Some(&bed.c.bus_address())).await.unwrap();
        let mut units = Units::new(chrono::TimeDelta::seconds(600));
        units.reconcile(&listed, chrono::Utc::now());
        // Takes what has come, until `quiet` without a signal: how many.
        async fn drain(events: &mut Events, units: &mut Units, quiet: Duration) -> (u64, u64) {
            let (mut seen, mut changes) = (0, 0);
            while let Ok(Some(signal)) = tokio::time::timeout(quiet, events.next()).await {
                seen += 1;
                if let Some((_, Transition::State(..) | Transition::Failed | Transition::LeftFailed(_))) =
                    units.apply(&signal.unwrap(), chrono::Utc::now())
                {
                    changes += 1;
                }
            }
            (seen, changes)
        }
        // Both quiet before counting: what came before is nobody's. The
        // daemon's count is read between two quiet spells of the test's own.
        let before = loop {
            settle(&bed);
            drain(&mut events, &mut units, Duration::from_millis(500)).await;
            let before = signals(&bed);
            if drain(&mut events, &mut units, Duration::from_millis(500)).await.0 == 0 && signals(&bed) == before {
                break before;
            }
        };
        // A oneshot that exits at once, started as a new instance every 9 ms
        // for 27 s: each start is two state changes (activating, inactive),
        // besides the unit loaded and unloaded and its job. Installed after
        // the baseline: the signals of its daemon-reload are both counts'
        // (a daemon busy with a pass may take them seconds late).
        bed.c.install_unit("tick@.service", "[Service]\nType=oneshot\nExecStart=/bin/true\n").unwrap();
        let bus = zbus::connection::Builder::address(bed.c.bus_address().as_str()).unwrap().build().await.unwrap();
        let started = tokio::time::Instant::now();
        let load = async {
            let mut rss_early = 0;
            for i in 0..3000u32 {
                tokio::time::sleep_until(started + Duration::from_millis(9) * i).await;
                let unit = format!("tick@{i}.service");
                bus.call_method(
                    Some("org.freedesktop.systemd1"),
                    "/org/freedesktop/systemd1",
                    Some("org.freedesktop.systemd1.Manager"),
                    "StartUnit",
                    &(unit.as_str(), "replace"),
                )
                .await
                .unwrap();
                if i == 1000 {
                    rss_early = rss();
                }
            }
            rss_early
        };
        tokio::pin!(load);
        let (mut seen, mut changes) = (0u64, 0u64);
        let rss_early = loop {
            tokio::select! {
                rss_early = &mut load => break rss_early,
                Some(signal) = events.next() => {
                    seen += 1;
                    if let Some((_, Transition::State(..) | Transition::Failed | Transition::LeftFailed(_))) = units.apply(&signal.unwrap(), chrono::Utc::now()) {
                        changes += 1;
                    }
                }
            }
        };
        let took = started.elapsed();
        eprintln!("{changes} state changes in {took:?}: {:.0}/s", changes as f64 / took.as_secs_f64());
        // What is still on its way, to both: the test's subscriber goes on
        // listening while the daemon works through what is queued for it (on
        // a busy machine a pass takes a while), until the two agree with
        // nothing more coming.
        let deadline = Instant::now() + Duration::from_secs(90);
        let taken = loop {
            let (more, more_changes) = drain(&mut events, &mut units, Duration::from_secs(2)).await;
            seen += more;
            changes += more_changes;
            let taken = signals(&bed) - before;
            if (taken == seen && more == 0) || Instant::now() > deadline {
                break taken;
            }
        };
        (taken, seen, changes, rss_early)
    });
    assert!(changes >= 6000, "the load is what the test says: {changes} state changes");
    let rss_late = rss();
    eprintln!("the daemon took {taken} signals, the test's subscriber {seen}; RSS {rss_early} KiB a third in, {rss_late} KiB after");
    assert_eq!(taken, seen, "every signal taken, none lost");
    let s = status(&bed);
    assert_eq!(s["watching"]["events"]["unreadable"], 0, "{s}");
    assert!(rss_late < rss_early + 4 * 1024, "memory grew from {rss_early} KiB to {rss_late} KiB");
    // It kept up: a failure now is recorded at once.
    bed.failing_web();
    let incident = format!("unit-failed:{WEB}");
    wait_until(Duration::from_secs(10), "the failure after the load", || events_of(&bed, &incident) == ["opened"]);
    stop_daemon(daemon);
}

#[test]
fn a_flapping_unit_is_one_incident_one_decision_and_one_message_per_state_change() {
    let bed = hourly("ev-flap", "observe");
    let g = GotifyReceiver::start(&["flap-token"]).unwrap();
    let token_file = bed.state.path().join("gotify-token");
    std::fs::write(&token_file, "flap-token\n").unwrap();
    bed.append_config(&format!(
        "[gotify]\nurl = \"{}\"\ntoken_file = \"{}\"\nresolve_after = 4\nretry_max = 1\n",
        g.url(),
        token_file.display()
    ));
    let daemon = bed.daemon(Stdio::piped());
    until_live(&bed);
    // It runs for a moment, then fails; started again and again.
    bed.c
        .install_unit(
            "flappy.service",
            "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/sh -c 'if [ -e /run/flappy.ok ]; then exec sleep infinity; fi; sleep 0.3; echo flappy: lost its lock >&2; exit 2'\n",
        )
        .unwrap();
    let incident = "unit-failed:flappy.service";
    for _ in 0..6 {
        bed.c.exec_ok(&["systemctl", "start", "--no-block", "flappy.service"]).unwrap();
        bed.c.wait_unit_state("flappy.service", "failed", Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_millis(700));
    }
    let records = events_of(&bed, incident);
    assert!(records.len() >= 9, "every change is recorded at once: {records:?}");
    // Repaired: it stays up; told resolved once it stayed gone 4 s.
    bed.c.write_file("/run/flappy.ok", "").unwrap();
    bed.c.exec_ok(&["systemctl", "start", "flappy.service"]).unwrap();
    let resolved = |m: &ReceivedMessage| m.title.contains(&format!("flaps: {incident}"));
    wait_until(Duration::from_secs(20), "the resolved message", || g.messages().iter().any(resolved));
    let msgs = g.messages();
    let titles: Vec<&str> = msgs.iter().map(|m| m.title.as_str()).collect();
    assert_eq!(titles.len(), 2, "one message when it opened, one when it stayed resolved: {titles:?}");
    assert!(titles[0].ends_with("flappy.service failed (exit-code, exit status 2)"), "{titles:?}");
    let told = msgs.iter().find(|m| resolved(m)).unwrap();
    assert!(told.title.contains("resolved after 5 flaps"), "{titles:?}");
    // Decided once: a flap is decided again at a later full pass, not at each failure.
    let decisions = bed.audit("decisions.jsonl").into_iter().filter(|d| d["incident"] == incident).count();
    assert_eq!(decisions, 1);
    stop_daemon(daemon);
}
