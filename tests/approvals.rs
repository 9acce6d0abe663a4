//! Approvals are bound to what was approved: a binding hash over the action,
//! its target and the evidence, an expiry, a re-check of preconditions, and
//! only root or the approver group may decide.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{decision, macha_bin, said, Bed, WEB};
use macha_testbed::ollama::Reply;
use serde_json::json;

fn queued(bed: &Bed) -> String {
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let (_, report) = bed.check();
    let web =
        report["incidents"].as_array().unwrap().iter().find(|i| i["fingerprint"] == "unit-failed:demo-web.service");
    web.unwrap()["decision"]["actions"][0]["approval_id"].as_i64().unwrap().to_string()
}

fn db(bed: &Bed) -> rusqlite::Connection {
    rusqlite::Connection::open(bed.state_dir().join("state.db")).unwrap()
}

#[test]
fn an_expired_item_is_refused_with_the_reason() {
    let bed = Bed::new("appr-expiry", "suggest");
    let id = queued(&bed);
    let item = &bed.pending()[0];
    let created = chrono::DateTime::parse_from_rfc3339(item["created_at"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(item["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_hours(), 24, "the default expiry is 24 hours");

    db(&bed).execute("UPDATE approvals SET expires_at = '2020-01-01T00:00:00+00:00'", []).unwrap();
    bed.heal_web();
    let out = bed.run("macha-approve", &["approve", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(said(&out).contains("expired at 2020-01-01"), "{}", said(&out));
    assert_eq!(bed.prop(WEB, "ActiveState"), "failed");
    assert_eq!(bed.audit("actions.jsonl").last().unwrap()["outcome"], "refused");
}

#[test]
fn a_mistyped_expect_refuses_that_command_and_the_item_still_waits() {
    let bed = Bed::new("appr-expect", "suggest");
    let id = queued(&bed);
    let shown = String::from_utf8_lossy(&bed.run("macha-approve", &["show", &id]).stdout).into_owned();
    let binding = shown.lines().find_map(|l| l.strip_prefix("binding:")).unwrap().trim().to_owned();
    assert_eq!(binding.len(), 64);
    bed.heal_web();

    for wrong in ["deadbeef", "0123456789abcdef"] {
        let out = bed.run("macha-approve", &["approve", &id, "--expect", wrong]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(bed.prop(WEB, "ActiveState"), "failed", "nothing was carried out");
        let pending = bed.pending();
        assert_eq!(pending.len(), 1, "the item still waits after --expect {wrong}");
        assert_eq!(pending[0]["id"].as_i64().unwrap().to_string(), id);
        let text = said(&out);
        assert!(text.contains("not what you looked at") && text.contains(&binding[..16]), "{text}");
        assert!(text.contains("still waiting"), "{text}");
    }
    assert!(
        bed.audit("actions.jsonl").iter().all(|a| a["outcome"] != "refused"),
        "a mistyped hash does not refuse the item"
    );

    // What was shown can still be approved, with or without --expect.
    let out = bed.run("macha-approve", &["approve", &id, "--expect", &binding[..16]]);
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(bed.prop(WEB, "ActiveState"), "active");
}

#[test]
fn an_item_changed_in_the_database_is_refused() {
    let bed = Bed::new("appr-tamper", "suggest");
    bed.c.install_unit("other.service", "[Service]\nExecStart=/bin/sleep infinity\n").unwrap();
    bed.c.exec_ok(&["systemctl", "start", "other.service"]).unwrap();
    bed.c.exec_ok(&["systemctl", "kill", "--signal=KILL", "other.service"]).unwrap();
    bed.c.wait_unit_state("other.service", "failed", Duration::from_secs(10)).unwrap();
    let id = queued(&bed);
    let invocation = bed.prop("other.service", "InvocationID");
    // The action as stored, and the target shown to people: either changed is refused.
    for (column, value) in [
        ("unit", "other.service".to_owned()),
        ("args", json!({"kind": "restart_unit", "unit": "other.service"}).to_string()),
    ] {
        db(&bed).execute(&format!("UPDATE approvals SET {column} = ?2 WHERE id = ?1"), [&id, &value]).unwrap();
        db(&bed).execute("UPDATE approvals SET status = 'pending', outcome = NULL WHERE id = ?1", [&id]).unwrap();
        let out = bed.run("macha-approve", &["approve", &id]);
        assert_eq!(out.status.code(), Some(1));
        assert!(said(&out).contains("changed after it was queued"), "{column}: {}", said(&out));
        assert_eq!(bed.prop("other.service", "InvocationID"), invocation);
        let original = json!({"kind": "restart_unit", "unit": WEB}).to_string();
        db(&bed)
            .execute("UPDATE approvals SET unit = ?2, args = ?3 WHERE id = ?1", rusqlite::params![id, WEB, original])
            .unwrap();
    }
}

#[test]
fn new_evidence_updates_the_item_and_its_binding() {
    let bed = Bed::new("appr-evidence", "suggest");
    let id = queued(&bed);
    let before = bed.pending()[0]["binding"].as_str().unwrap().to_owned();
    // The unit fails anew: a new decision, the same item, brought up to date.
    bed.c.exec_ok(&["systemctl", "restart", "--no-block", WEB]).unwrap();
    bed.c.wait_for(Duration::from_secs(10), || bed.prop(WEB, "ActiveState") == "failed").unwrap();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let (_, report) = bed.check();
    assert_eq!(report["incidents"][0]["novelty"], "changed");
    let pending = bed.pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["id"].as_i64().unwrap().to_string(), id);
    assert_ne!(pending[0]["binding"].as_str().unwrap(), before);
    bed.heal_web();
    let out = bed.run("macha-approve", &["approve", &id, "--expect", &before[..16]]);
    assert_eq!(out.status.code(), Some(1), "the old binding is no longer what would run");
}

#[test]
fn only_root_and_the_approver_group_may_decide() {
    let bed = Bed::new("appr-who", "suggest");
    let id = queued(&bed);
    // A config file nobody can read, outside the bed's private directory.
    let public = tempfile::Builder::new().prefix("macha-who").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = public.path().join("config.toml");
    std::fs::copy(&bed.config, &config).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    for verb in [vec!["approve", id.as_str()], vec!["reject", id.as_str()]] {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(macha_bin())
            .arg("--config")
            .arg(&config)
            .arg("approve")
            .args(&verb)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", said(&out));
        assert!(said(&out).contains("may not approve or reject") && said(&out).contains("\"wheel\""), "{}", said(&out));
    }
    assert_eq!(bed.pending().len(), 1, "nothing changed");
}
