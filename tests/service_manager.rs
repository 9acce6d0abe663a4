//! What the daemon tells systemd (`sd_notify`), read off the socket systemd
//! would listen on: `READY=1` once started, a `STATUS=` line per cycle,
//! `WATCHDOG=1` pings more often than half the watchdog timeout, also while
//! a cycle waits on a slow model, and `STOPPING=1` on SIGTERM.
//! `tests/service_unit.rs` runs the same daemon under the container's real
//! systemd as a `Type=notify` unit with a watchdog.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Bed, WEB};
use macha_testbed::ollama::Reply;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Every datagram received, with the time it arrived.
type Received = Arc<Mutex<Vec<(Instant, String)>>>;

fn listen(socket: &std::path::Path) -> Received {
    let sock = UnixDatagram::bind(socket).unwrap();
    let received: Received = Arc::default();
    let sink = received.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            sink.lock().unwrap().push((Instant::now(), text));
        }
    });
    received
}

fn fields(received: &Received) -> Vec<(Instant, String)> {
    received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(t, d)| d.lines().map(|l| (*t, l.to_owned())).collect::<Vec<_>>())
        .collect()
}

#[test]
fn the_daemon_reports_ready_status_watchdog_and_stopping() {
    let bed = Bed::new("sdnotify", "suggest");
    // One slow answer (4 s) with a client timeout long enough to wait for it:
    // a cycle that takes longer than the watchdog timeout (3 s).
    bed.write_config("suggest", "timeout = 8\ncheck_interval = 3600");
    bed.failing_web();
    bed.double.push(Reply::Hang(Duration::from_secs(4)));

    let socket = bed.state.path().join("notify.sock");
    let received = listen(&socket);
    let mut daemon = bed
        .command("macha", &["daemon"])
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "3000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    while !fields(&received).iter().any(|(_, f)| f.starts_with("STATUS=idle")) {
        assert!(Instant::now() < deadline, "no idle status after the first cycle: {:#?}", fields(&received));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The slow decision happened (apart from the pass, after it): it
    // outlasted the watchdog timeout.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (queued, decided) = loop {
        let queued = bed.pending();
        if !queued.is_empty() || Instant::now() > deadline {
            break (queued, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(queued.len(), 1, "{queued:#?}");
    assert_eq!(queued[0]["target"], WEB);
    std::thread::sleep(Duration::from_secs(2));
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    std::thread::sleep(Duration::from_millis(200));

    let all = fields(&received);
    let names: Vec<&str> = all.iter().map(|(_, f)| f.as_str()).collect();
    assert_eq!(names.iter().position(|f| *f == "READY=1"), Some(0), "READY=1 comes first: {names:#?}");
    let running = all.iter().position(|(_, f)| f.starts_with("STATUS=cycle running since")).expect("a running status");
    let idle = all.iter().position(|(_, f)| f.starts_with("STATUS=idle; cycle at")).expect("an idle status");
    assert!(running < idle, "{names:#?}");
    assert!(all[idle].1.contains("1 incident") && all[idle].1.contains("next in 3600 s"), "{}", all[idle].1);
    assert_eq!(names.last(), Some(&"STATUS=stopping"), "{names:#?}");
    assert!(names.contains(&"STOPPING=1"), "{names:#?}");

    // Pings every second (a third of 3 s); none more than 1.5 s apart, the
    // slow decision included.
    let pings: Vec<Instant> = all.iter().filter(|(_, f)| f == "WATCHDOG=1").map(|(t, _)| *t).collect();
    let during_decision = pings.iter().filter(|t| **t > all[running].0 && **t < decided).count();
    assert!(during_decision >= 3, "{during_decision} pings during a decision of over 4 s");
    let widest = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(widest < Duration::from_millis(1500), "pings {widest:?} apart");
}

#[test]
fn without_notify_socket_the_daemon_runs_as_before() {
    let bed = Bed::new("nosocket", "suggest");
    bed.write_config("suggest", "check_interval = 3600");
    let log = bed.state_dir().join("orchestrator.log");
    let daemon = bed.command("macha", &["daemon"]).env_remove("NOTIFY_SOCKET").stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("cycle done") {
        assert!(Instant::now() < deadline, "no cycle");
        std::thread::sleep(Duration::from_millis(100));
    }
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM).unwrap();
    let out = daemon.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("cannot notify systemd"), "{stderr}");
}
