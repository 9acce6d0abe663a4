//! An incident on a unit is resolved only when the unit is back in the state
//! it should be in, against a real systemd: running for a unit a target
//! wants, a successful run after the failure for a oneshot. Clearing the
//! failed state alone repairs nothing, as an action or as a resolution.

mod common;

use std::time::Duration;

use common::{decision, Bed, WEB};
use macha_testbed::ollama::Reply;
use serde_json::Value;

const PAYMENTS: &str = "payments-api.service";

/// A service `multi-user.target` wants, failing at every start.
const PAYMENTS_UNIT: &str = "[Unit]
StartLimitIntervalSec=0

[Service]
ExecStart=/bin/sh -c 'echo \"payments-api: cannot reach the ledger\" >&2; exit 2'

[Install]
WantedBy=multi-user.target
";

const REPORT: &str = "report.service";

/// A oneshot run at boot that fails until `/run/report.ok` exists.
/// (A oneshot nothing refers to is unloaded by systemd once it is not
/// failed, its last run forgotten: gone, its incident resolves.)
const REPORT_UNIT: &str = "[Service]
Type=oneshot
ExecStart=/bin/sh -c 'test -e /run/report.ok || { echo \"report: no data yet\" >&2; exit 1; }'

[Install]
WantedBy=multi-user.target
";

fn incident<'a>(report: &'a Value, unit: &str) -> Option<&'a Value> {
    let fp = format!("unit-failed:{unit}");
    report["incidents"].as_array()?.iter().find(|i| i["fingerprint"] == fp.as_str())
}

fn resolved(report: &Value, unit: &str) -> bool {
    let fp = format!("unit-failed:{unit}");
    report["resolved"].as_array().is_some_and(|r| r.iter().any(|f| f == fp.as_str()))
}

fn resolutions(bed: &Bed, unit: &str) -> usize {
    let fp = format!("unit-failed:{unit}");
    bed.audit("incidents.jsonl").iter().filter(|r| r["incident"] == fp.as_str() && r["event"] == "resolved").count()
}

#[test]
fn a_reset_that_leaves_a_wanted_unit_down_is_a_failed_action_and_the_incident_stays_open() {
    let bed = Bed::new("res-reset", "auto-safe");
    bed.c.install_unit(PAYMENTS, PAYMENTS_UNIT).unwrap();
    bed.c.exec_ok(&["systemctl", "enable", PAYMENTS]).unwrap();
    bed.c.start_unit(PAYMENTS).unwrap();
    bed.c.wait_unit_state(PAYMENTS, "failed", Duration::from_secs(20)).unwrap();

    bed.double.push(Reply::Json(decision("reset_failed", &[PAYMENTS])));
    let (code, report) = bed.check();
    assert_eq!(code, 1, "{report:#}");
    let action = &incident(&report, PAYMENTS).expect("the incident")["decision"]["actions"][0];
    assert_eq!(action["action"], "reset_failed", "{report:#}");
    assert_eq!(action["result"], "failed", "{report:#}");
    let detail = action["detail"].as_str().unwrap();
    assert!(detail.contains("inactive") && detail.contains("multi-user.target"), "{detail}");
    assert_eq!(bed.prop(PAYMENTS, "ActiveState"), "inactive", "the reset did run");
    let outcomes: Vec<Value> = bed
        .audit("actions.jsonl")
        .into_iter()
        .filter(|a| a["action"] == "reset_failed" && a["outcome"] != "started")
        .map(|a| a["outcome"].clone())
        .collect();
    assert_eq!(outcomes, ["failed"]);

    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1100));
        let (code, report) = bed.check();
        assert_eq!(code, 1, "the unit is still down: {report:#}");
        let open = incident(&report, PAYMENTS).expect("the incident stays open");
        assert!(open["summary"].as_str().unwrap().contains("inactive"), "{open:#}");
        assert!(!resolved(&report, PAYMENTS), "{report:#}");
    }
    assert_eq!(resolutions(&bed, PAYMENTS), 0);
    assert_eq!(bed.double.chat_requests(), 1, "nothing new to decide while it stays down");
}

#[test]
fn a_oneshot_resolves_on_a_successful_rerun_and_not_on_a_reset() {
    let bed = Bed::new("res-oneshot", "suggest");
    bed.c.install_unit(REPORT, REPORT_UNIT).unwrap();
    bed.c.exec_ok(&["systemctl", "enable", REPORT]).unwrap();
    bed.c.start_unit(REPORT).unwrap();
    bed.c.wait_unit_state(REPORT, "failed", Duration::from_secs(20)).unwrap();
    bed.double.push(Reply::Json(decision("notify_only", &[])));
    let (code, report) = bed.check();
    assert_eq!(code, 1);
    assert!(incident(&report, REPORT).is_some(), "{report:#}");

    // Someone clears the failed state; the report never ran again.
    bed.c.exec_ok(&["systemctl", "reset-failed", REPORT]).unwrap();
    let (code, report) = bed.check();
    assert_eq!(code, 1, "{report:#}");
    assert!(incident(&report, REPORT).is_some(), "a reset is not a successful run: {report:#}");
    assert_eq!(resolutions(&bed, REPORT), 0);

    // It runs again, successfully.
    bed.c.write_file("/run/report.ok", "").unwrap();
    bed.c.exec_ok(&["systemctl", "start", REPORT]).unwrap();
    assert_eq!(bed.prop(REPORT, "Result"), "success");
    let (code, report) = bed.check();
    assert!(resolved(&report, REPORT), "{report:#}");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(resolutions(&bed, REPORT), 1);
}

#[test]
fn a_restart_that_brings_the_unit_up_resolves() {
    let bed = Bed::new("res-restart", "auto-safe");
    bed.failing_web();
    bed.heal_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let (_, report) = bed.check();
    let action = &incident(&report, WEB).expect("the incident")["decision"]["actions"][0];
    assert_eq!(action["result"], "executed", "{report:#}");
    let (code, report) = bed.check();
    assert!(resolved(&report, WEB), "{report:#}");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(resolutions(&bed, WEB), 1);
}
