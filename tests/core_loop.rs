//! The core loop end to end against a real systemd in a container and the
//! Ollama double: detect, decide, gate, act or queue, approve, audit.

mod common;

use std::time::Duration;

use common::{decision, Bed, WEB};
use macha_testbed::ollama::Reply;
use serde_json::Value;

#[test]
fn suggest_queues_a_restart_and_approve_restarts_the_unit() {
    let bed = Bed::new("suggest", "suggest");
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));

    let (code, report) = bed.check();
    assert_eq!(code, 1, "incidents found: {report:#}");
    let incident = &report["incidents"][0];
    assert_eq!(incident["fingerprint"], "unit-failed:demo-web.service");
    let action = &incident["decision"]["actions"][0];
    assert_eq!(action["result"], "queued");
    let id = action["approval_id"].as_i64().unwrap();

    // The model saw the unit's own error line, quoted as journal data, and
    // the read-only tools (the schema goes with the requests that offer no
    // tools: tests/agent.rs).
    let requests = bed.double.requests();
    let chat = requests.iter().find(|r| r.path == "/api/chat").unwrap();
    let prompt = chat.body["messages"].to_string();
    assert!(prompt.contains("cannot open /etc/demo-web.conf"), "{prompt}");
    assert!(prompt.contains("<journal>"));
    assert_eq!(chat.body["stream"], false);
    assert_eq!(chat.body["tools"].as_array().map(Vec::len), Some(7));
    assert!(chat.body["options"]["num_ctx"].as_u64().unwrap() >= 512);
    assert!(chat.body["options"]["temperature"].is_number());

    // Nothing happened yet: the unit is still failed.
    assert_eq!(bed.prop(WEB, "ActiveState"), "failed");
    let listed = bed.run("macha-approve", &["list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains(&id.to_string()) && text.contains("restart_unit") && text.contains(WEB), "{text}");
    let shown = bed.run("macha-approve", &["show", &id.to_string()]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("unit-failed:demo-web.service"));

    bed.heal_web();
    let invocation_before = bed.prop(WEB, "InvocationID");
    let out = bed.run("macha-approve", &["approve", &id.to_string()]);
    assert!(out.status.success(), "approve failed");
    assert!(String::from_utf8_lossy(&out.stdout).contains("succeeded"));
    assert_eq!(bed.prop(WEB, "ActiveState"), "active");
    assert_ne!(bed.prop(WEB, "InvocationID"), invocation_before, "systemd shows a new invocation");
    assert!(bed.pending().is_empty());

    let decisions = bed.audit("decisions.jsonl");
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0]["incident"], "unit-failed:demo-web.service");
    assert_eq!(decisions[0]["outcome"], "decided");
    assert_eq!(decisions[0]["gated"][0]["verdict"], "queue");
    let actions = bed.audit("actions.jsonl");
    let outcomes: Vec<&str> = actions.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["queued", "approved", "succeeded"], "the intent is recorded before the act");
    assert_eq!(actions[2]["origin"], "approval");
    assert_eq!(actions[2]["approval_id"], id);
    assert!(actions[2]["by"].as_str().unwrap().contains("root"));
    assert_ne!(actions[2]["before"]["invocation_id"], actions[2]["after"]["invocation_id"]);

    // The next cycle sees the unit healthy and resolves the incident.
    let (code, report) = bed.check();
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["resolved"][0], "unit-failed:demo-web.service");
}

#[test]
fn auto_safe_restarts_without_approval() {
    let bed = Bed::new("autosafe", "auto-safe");
    bed.failing_web();
    bed.heal_web();
    let restarts_before = bed.prop(WEB, "InvocationID");
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));

    let (code, report) = bed.check();
    assert_eq!(code, 1);
    assert_eq!(report["incidents"][0]["decision"]["actions"][0]["result"], "executed", "{report:#}");
    assert_eq!(bed.prop(WEB, "ActiveState"), "active");
    assert_ne!(bed.prop(WEB, "InvocationID"), restarts_before);
    assert!(bed.pending().is_empty());
    let actions = bed.audit("actions.jsonl");
    let outcomes: Vec<&str> = actions.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["started", "succeeded"], "recorded before it runs, and once it ran");
    assert!(actions.iter().all(|a| a["origin"] == "automatic" && a["auto_id"] == actions[0]["auto_id"]));
}

#[test]
fn a_restart_that_leaves_the_unit_failed_is_a_failed_action() {
    let bed = Bed::new("failagain", "auto-safe");
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));

    let (_, report) = bed.check();
    let action = &report["incidents"][0]["decision"]["actions"][0];
    assert_eq!(action["result"], "failed", "{report:#}");
    assert!(action["detail"].as_str().unwrap().contains("failed again"));
    assert_eq!(bed.prop(WEB, "ActiveState"), "failed");
    assert_eq!(bed.audit("actions.jsonl").last().unwrap()["outcome"], "failed");
}

#[test]
fn observe_neither_queues_nor_acts() {
    let bed = Bed::new("observe", "observe");
    bed.failing_web();
    bed.heal_web();
    let invocation = bed.prop(WEB, "InvocationID");
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));

    let (code, report) = bed.check();
    assert_eq!(code, 1);
    assert_eq!(report["incidents"][0]["decision"]["actions"][0]["result"], "refused");
    assert_eq!(bed.prop(WEB, "ActiveState"), "failed");
    assert_eq!(bed.prop(WEB, "InvocationID"), invocation);
    assert!(bed.pending().is_empty());
    let gated = &bed.audit("decisions.jsonl")[0]["gated"][0];
    assert_eq!(gated["verdict"], "refuse");
    assert!(gated["detail"].as_str().unwrap().contains("observe"));
}

#[test]
fn protected_missing_and_shell_text_targets_are_refused_and_recorded() {
    let bed = Bed::new("refuse", "auto-full");
    bed.failing_web();
    bed.heal_web();
    let ssh_before = bed.prop("ssh.service", "InvocationID");
    let web_before = bed.prop(WEB, "InvocationID");
    let targets = [
        "ssh.service",
        "sshd.service",
        "ghost-does-not-exist.service",
        "demo-web.service; systemctl stop ssh.service",
        "$(reboot)",
    ];
    bed.double.push(Reply::Json(decision("restart_unit", &targets)));

    let (_, report) = bed.check();
    let actions = report["incidents"][0]["decision"]["actions"].as_array().unwrap();
    assert_eq!(actions.len(), targets.len(), "{report:#}");
    assert!(actions.iter().all(|a| a["result"] == "refused"), "{report:#}");

    assert_eq!(bed.prop("ssh.service", "ActiveState"), "active");
    assert_eq!(bed.prop("ssh.service", "InvocationID"), ssh_before, "ssh.service was not touched");
    assert_eq!(bed.prop(WEB, "InvocationID"), web_before, "demo-web.service was not touched");
    assert_eq!(bed.prop(WEB, "ActiveState"), "failed");

    let recorded = bed.audit("actions.jsonl");
    assert_eq!(recorded.len(), targets.len());
    let reasons: Vec<&str> = recorded.iter().map(|r| r["detail"].as_str().unwrap()).collect();
    for r in &recorded {
        assert_eq!(r["outcome"], "refused");
    }
    assert!(reasons[0].contains("protected"), "{reasons:?}");
    assert!(reasons[1].contains("protected"), "{reasons:?}");
    assert!(reasons[2].contains("no unit named ghost-does-not-exist.service is loaded"), "{reasons:?}");
    for r in &reasons[3..] {
        assert!(r.contains("not a unit name"), "{reasons:?}");
    }
    let gated = bed.audit("decisions.jsonl")[0]["gated"].as_array().unwrap().clone();
    assert!(gated.iter().all(|g| g["verdict"] == "refuse"));
}

#[test]
fn a_healthy_container_costs_no_model_call() {
    let bed = Bed::new("healthy", "auto-safe");
    let (code, report) = bed.check();
    assert_eq!(code, 0, "{report:#}");
    assert!(report["incidents"].as_array().unwrap().is_empty());
    assert!(report["failed_sources"].as_array().unwrap().is_empty(), "{report:#}");
    let human = bed.run("macha-check", &[]);
    assert_eq!(human.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&human.stdout).contains("healthy"));
    assert_eq!(bed.double.chat_requests(), 0);
    assert!(bed.audit("decisions.jsonl").is_empty());
}

#[test]
fn an_error_burst_is_read_once_thanks_to_the_cursor() {
    let bed = Bed::new("burst", "suggest");
    bed.c
        .install_unit(
            "noisy.service",
            "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'for i in $(seq 1 30); do echo \"<3>disk read error at sector $i\"; done'\n",
        )
        .unwrap();
    bed.c.exec_ok(&["systemctl", "start", "noisy.service"]).unwrap();
    bed.double.push(Reply::Json(serde_json::json!({
        "diagnosis": "the disk reports read errors", "severity": "critical",
        "actions": [{"kind": "notify_only", "unit": null, "reason": "a human must check the disk"}]
    })));

    let (code, report) = bed.check();
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["incidents"][0]["fingerprint"], "error-burst:noisy.service");
    assert_eq!(report["incidents"][0]["decision"]["actions"][0]["result"], "informed");
    let prompt = bed.double.requests().iter().find(|r| r.path == "/api/chat").unwrap().body["messages"].to_string();
    assert!(prompt.contains("disk read error at sector 30"), "{prompt}");

    // The cursor moved past those lines: the next cycle sees no burst.
    let (code, report) = bed.check();
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["resolved"][0], "error-burst:noisy.service");
    assert_eq!(bed.double.chat_requests(), 1);
}

#[test]
fn an_invalid_answer_is_retried_once_then_recorded_as_failed_and_the_incident_stays_open() {
    let bed = Bed::new("invalid", "suggest");
    bed.failing_web();
    bed.double.push(Reply::InvalidJson);
    bed.double.push(Reply::Json(serde_json::json!({"status": "healthy"})));

    let (code, report) = bed.check();
    assert_eq!(code, 1, "a failed decision is never healthy: {report:#}");
    let d = &report["incidents"][0]["decision"];
    assert_eq!(d["outcome"], "failed");
    assert!(d["error"].as_str().unwrap().contains("invalid answer"), "{d:#}");
    assert_eq!(bed.double.chat_requests(), 2, "one retry");
    let rec = &bed.audit("decisions.jsonl")[0];
    assert_eq!(rec["outcome"], "failed");
    assert_eq!(rec["attempts"], 2);
    assert!(bed.pending().is_empty());

    // The incident is still open and asked again; this time the answer is good.
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let (_, report) = bed.check();
    assert_eq!(report["incidents"][0]["novelty"], "retry");
    assert_eq!(report["incidents"][0]["decision"]["outcome"], "decided");
    assert_eq!(bed.pending().len(), 1);
}

#[test]
fn an_unknown_model_is_a_failed_decision_that_says_how_to_fix_it() {
    let bed = Bed::new("nomodel", "suggest");
    bed.write_config("suggest", "");
    let text = std::fs::read_to_string(&bed.config).unwrap().replace("llama3.1:70b", "qwen-missing:7b");
    std::fs::write(&bed.config, text).unwrap();
    bed.failing_web();
    let (code, report) = bed.check();
    assert_eq!(code, 1);
    let err = report["incidents"][0]["decision"]["error"].as_str().unwrap().to_owned();
    assert!(err.contains("ollama pull qwen-missing:7b"), "{err}");
}

#[test]
fn approving_the_same_item_twice_at_once_executes_it_once() {
    let bed = Bed::new("race", "suggest");
    bed.failing_web();
    bed.heal_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let (_, report) = bed.check();
    let id = report["incidents"][0]["decision"]["actions"][0]["approval_id"].as_i64().unwrap().to_string();

    let children: Vec<_> = (0..2)
        .map(|_| bed.command("macha-approve", &["approve", &id]).stdout(std::process::Stdio::piped()).spawn().unwrap())
        .collect();
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let won = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(won, 1, "{outs:?}");
    let executed: Vec<Value> = bed
        .audit("actions.jsonl")
        .into_iter()
        .filter(|a| a["origin"] == "approval" && a["outcome"] == "succeeded")
        .collect();
    assert_eq!(executed.len(), 1, "{executed:?}");
    let loser = outs.iter().find(|o| !o.status.success()).unwrap();
    let said = String::from_utf8_lossy(&loser.stdout);
    assert!(said.contains("taken by another") || said.contains("not waiting"), "{said}");
    assert_eq!(bed.prop(WEB, "ActiveState"), "active");
}

#[test]
fn approving_an_item_that_no_longer_applies_is_refused_with_the_reason() {
    let bed = Bed::new("stale", "suggest");
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let (_, report) = bed.check();
    let id = report["incidents"][0]["decision"]["actions"][0]["approval_id"].as_i64().unwrap().to_string();

    // Someone fixed it by hand meanwhile.
    bed.heal_web();
    bed.c.exec_ok(&["systemctl", "start", WEB]).unwrap();
    bed.c.wait_unit_state(WEB, "active", Duration::from_secs(10)).unwrap();
    let invocation = bed.prop(WEB, "InvocationID");
    let out = bed.run("macha-approve", &["approve", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already active"));
    assert_eq!(bed.prop(WEB, "InvocationID"), invocation);
    let last = bed.audit("actions.jsonl").pop().unwrap();
    assert_eq!(last["outcome"], "refused");

    // A unit that is gone entirely.
    bed.double.push(Reply::Json(decision("reset_failed", &["gone.service"])));
    bed.c.install_unit("gone.service", "[Service]\nExecStart=/bin/false\n").unwrap();
    bed.c.start_unit("gone.service").unwrap();
    bed.c.wait_unit_state("gone.service", "failed", Duration::from_secs(10)).unwrap();
    let (_, report) = bed.check();
    let gone = report["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["fingerprint"] == "unit-failed:gone.service")
        .unwrap()
        .clone();
    let id = gone["decision"]["actions"][0]["approval_id"].as_i64().unwrap().to_string();
    bed.c
        .sh_ok("rm /etc/systemd/system/gone.service && systemctl reset-failed gone.service && systemctl daemon-reload")
        .unwrap();
    let out = bed.run("macha-approve", &["approve", &id]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no unit named gone.service is loaded") || text.contains("no longer exists"), "{text}");
}

#[test]
fn reject_drops_an_item_and_records_who_and_why() {
    let bed = Bed::new("reject", "suggest");
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let (_, report) = bed.check();
    let id = report["incidents"][0]["decision"]["actions"][0]["approval_id"].as_i64().unwrap().to_string();
    let out = bed.run("macha-approve", &["reject", &id, "--reason", "config is broken, restart will not help"]);
    assert!(out.status.success());
    assert!(bed.pending().is_empty());
    let last = bed.audit("actions.jsonl").pop().unwrap();
    assert_eq!(last["outcome"], "rejected");
    assert_eq!(last["detail"], "config is broken, restart will not help");
    assert!(last["by"].as_str().unwrap().contains("root"));
    // Approving a rejected item does nothing.
    let out = bed.run("macha-approve", &["approve", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(bed.prop(WEB, "ActiveState"), "failed");
    // An unknown id is an error naming it.
    let out = bed.run("macha-approve", &["approve", "9999"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no approval item with id 9999"));
}
