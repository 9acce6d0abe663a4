//! The daemon against the container: it outlives every kind of model
//! failure, stops promptly on a signal, and refuses to run twice.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{decision, signal, wait_exit, wait_until, Bed, WEB};
use macha_testbed::ollama::Reply;
use nix::sys::signal::Signal;
use serde_json::json;

#[test]
fn the_daemon_survives_every_model_failure_and_the_next_cycle_succeeds() {
    let bed = Bed::new("modelfail", "suggest");
    bed.failing_web();
    let schema_violation =
        json!({"diagnosis": "x", "severity": "warning", "actions": [{"kind": "rm_rf", "unit": "/", "reason": "r"}]});
    for reply in [
        Reply::Status(500, "CUDA error: out of memory".into()),
        Reply::Garbage,
        Reply::Hang(Duration::from_secs(6)),
        Reply::InvalidJson,
        Reply::InvalidJson,
        Reply::Json(schema_violation.clone()),
        Reply::Json(schema_violation),
        Reply::Json(decision("restart_unit", &[WEB])),
    ] {
        bed.double.push(reply);
    }
    let mut daemon = bed.daemon(Stdio::piped());
    wait_until(Duration::from_secs(60), "a decided record", || {
        bed.audit("decisions.jsonl").iter().any(|d| d["outcome"] == "decided")
    });
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon is still running");

    let decisions = bed.audit("decisions.jsonl");
    let errors: Vec<String> = decisions.iter().filter_map(|d| d["error"].as_str().map(str::to_owned)).collect();
    assert_eq!(decisions.len(), 6, "{decisions:#?}");
    assert!(errors[0].contains("HTTP 500") && errors[0].contains("out of memory"), "{errors:?}");
    assert!(errors[1].contains("not a chat response"), "{errors:?}");
    assert!(errors[2].contains("did not answer within 2 s"), "{errors:?}");
    assert!(errors[3].contains("invalid answer"), "{errors:?}");
    assert!(errors[4].contains("invalid answer") && errors[4].contains("rm_rf"), "{errors:?}");
    assert!(decisions[..5].iter().all(|d| d["outcome"] == "failed"));
    assert_eq!(decisions[5]["outcome"], "decided");
    // The decision is recorded before its action is queued.
    wait_until(Duration::from_secs(10), "the queued restart", || bed.pending().len() == 1);

    signal(&daemon, Signal::SIGTERM);
    let (code, _) = wait_exit(&mut daemon, Duration::from_secs(10));
    assert_eq!(code, Some(0));
}

#[test]
fn a_signal_stops_the_daemon_promptly_mid_sleep_and_a_second_daemon_refuses() {
    let bed = Bed::new("signals", "suggest");
    let text = std::fs::read_to_string(&bed.config).unwrap().replace("check_interval = 1", "check_interval = 3600");
    std::fs::write(&bed.config, text).unwrap();
    let log = bed.state_dir().join("orchestrator.log");

    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let _ = std::fs::remove_file(&log);
        let mut daemon = bed.daemon(Stdio::piped());
        wait_until(Duration::from_secs(20), "the first cycle", || {
            std::fs::read_to_string(&log).unwrap_or_default().contains("cycle done")
        });

        let second = bed.command("macha", &["daemon"]).output().unwrap();
        assert_eq!(second.status.code(), Some(2));
        let err = String::from_utf8_lossy(&second.stderr);
        assert!(err.contains("already running") && err.contains(&daemon.id().to_string()), "{err}");

        signal(&daemon, sig);
        let (code, took) = wait_exit(&mut daemon, Duration::from_secs(10));
        assert_eq!(code, Some(0));
        assert!(took < Duration::from_secs(3), "stopping took {took:?}");
        assert!(std::fs::read_to_string(&log).unwrap().contains("stopped by signal"));
    }
}
