//! Incident memory against a real systemd: what was tried for an incident
//! and what came of it is remembered from the audit trail, shown to the
//! next decision about it, and a fix whose verification failed is not
//! carried out automatically again.

mod common;

use common::{signal, wait_exit, wait_until, Bed, WEB};
use macha_testbed::ollama::Reply;
use serde_json::{json, Value};

/// The user messages of the decision requests the double received.
fn decision_prompts(bed: &Bed) -> Vec<String> {
    common::chats(&bed.double)
        .iter()
        .map(|c| {
            c["messages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["role"] == "user")
                .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|users| users.iter().any(|u| u.starts_with("Incident: ")))
        .map(|users| users.join("\n"))
        .collect()
}

#[test]
fn a_fix_that_failed_is_shown_to_the_next_decision_and_not_carried_out_automatically_again() {
    let bed = Bed::new("memory-failed-fix", "auto-safe");
    bed.failing_web();
    bed.double.set_default(Reply::Json(common::decision("restart_unit", &[WEB])));

    // The restart is carried out, and its verification fails: the unit
    // cannot start until its configuration exists.
    let (_, first) = bed.check();
    let result = &first["incidents"][0]["decision"]["actions"][0];
    assert_eq!(result["result"], "failed", "{first:#}");
    assert_eq!(decision_prompts(&bed).len(), 1);
    assert!(!decision_prompts(&bed)[0].contains("<past-incidents>"), "nothing to remember the first time");

    // The unit failed again: the incident is decided again, with what came
    // of the restart in front of the model.
    let (_, second) = bed.check();
    let prompts = decision_prompts(&bed);
    assert_eq!(prompts.len(), 2, "{second:#}");
    let shown = &prompts[1];
    assert!(shown.contains("<past-incidents>"), "{shown}");
    assert!(shown.contains(&format!("unit-failed:{WEB} on ")), "{shown}");
    assert!(
        shown.contains(&format!("restart_unit {WEB}: proposed 1, carried out 1 (verified 0, failed 1)")),
        "{shown}"
    );
    assert!(shown.contains("verify failed: demo-web.service failed again after the restart"), "{shown}");

    // The model proposes the same restart; it goes to a human instead.
    let result = &second["incidents"][0]["decision"]["actions"][0];
    assert_eq!(result["result"], "escalated", "{second:#}");
    let detail = result["detail"].as_str().unwrap();
    assert!(detail.contains("its verification failed for this incident"), "{detail}");
    assert!(detail.contains("knowledge_base.failed_fix_days"), "{detail}");
    assert_eq!(bed.pending().len(), 1, "queued for a human");
    let restarts = bed.prop(WEB, "NRestarts");
    let record = bed.audit("decisions.jsonl").pop().unwrap();
    let memories: Vec<&str> =
        record["trail"]["memories"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert!(memories[0].ends_with(&format!("/unit-failed:{WEB}")), "the decision's trail names it: {record:#}");
    assert!(record["trail"]["evidence"].as_str().unwrap().contains("cannot open /etc/demo-web.conf"), "{record:#}");

    // Memory is kept in its own file, and says nothing the trail did not.
    assert!(bed.state_dir().join("knowledge.db").is_file());
    assert_eq!(bed.prop(WEB, "NRestarts"), restarts, "nothing restarted it since");
}

#[test]
fn with_memory_off_nothing_is_remembered_or_shown() {
    let bed = Bed::new("memory-off", "auto-safe");
    bed.append_config("[knowledge_base]\nenable = false\n");
    bed.failing_web();
    bed.double.set_default(Reply::Json(common::decision("restart_unit", &[WEB])));
    bed.check();
    let (_, second) = bed.check();
    let prompts = decision_prompts(&bed);
    assert!(prompts.iter().all(|p| !p.contains("<past-incidents>")), "{prompts:?}");
    let result: &Value = &second["incidents"][0]["decision"]["actions"][0];
    assert!(!result["detail"].as_str().unwrap_or_default().contains("failed_fix_days"), "{second:#}");
    assert!(!bed.state_dir().join("knowledge.db").exists());
}

#[test]
fn a_fix_verified_three_times_in_a_row_is_proposed_from_memory_without_the_model_and_queued_at_suggest() {
    use macha::audit::{self, ActionOutcome, ActionRecord, Origin};
    let bed = Bed::new("memory-known-fix", "suggest");
    // Three earlier restarts of the unit for this incident, each verified.
    let state = macha::state_dir::StateDir::create(&bed.state_dir()).unwrap();
    for hours in [72, 48, 24] {
        let rec = ActionRecord {
            time: chrono::Utc::now() - chrono::TimeDelta::hours(hours),
            host: macha::observe::hostname(),
            incident: format!("unit-failed:{WEB}").into(),
            action: "restart_unit".into(),
            target: Some(WEB.into()),
            origin: Origin::Approval,
            approval_id: None,
            by: Some("alice".into()),
            auto_id: None,
            outcome: ActionOutcome::Succeeded,
            detail: format!("{WEB} restarted and active for 2 s"),
            before: None,
            after: None,
            health: None,
        };
        audit::append(&state, audit::ACTIONS, &rec, macha::config::RetentionConfig::default().audit()).unwrap();
    }
    bed.failing_web();

    let (code, report) = bed.check();
    assert_eq!(code, 1, "{report:#}");
    assert!(decision_prompts(&bed).is_empty(), "the model was not asked");
    assert!(common::chats(&bed.double).is_empty(), "no model call at all");
    let decision = &report["incidents"][0]["decision"];
    assert_eq!(decision["source"], "memory", "{report:#}");
    assert_eq!(decision["actions"][0]["action"], "restart_unit");
    assert_eq!(decision["actions"][0]["result"], "queued", "it still goes through the gate: {report:#}");
    assert_eq!(bed.pending().len(), 1);
    let record = bed.audit("decisions.jsonl").pop().unwrap();
    assert_eq!(record["model"], "memory", "{record:#}");
    assert!(record["trail"]["from_memory"].as_str().unwrap().ends_with(&format!("/unit-failed:{WEB}")));

    // It fails again after the incident resolved: macha-check says the
    // decision came from memory, and macha stats counts both.
    bed.c.sh_ok(&format!("systemctl reset-failed {WEB}")).unwrap();
    bed.check();
    bed.c.start_unit(WEB).unwrap();
    bed.c.wait_unit_state(WEB, "failed", std::time::Duration::from_secs(20)).unwrap();
    let out = bed.run("macha-check", &[]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("1 incident (1 decided from incident memory, no model asked):"), "{said}");
    assert!(said.contains("diagnosis (a known fix from memory; no model asked)"), "{said}");
    let out = bed.run("macha", &["stats", "--json"]);
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&stats["overall"]["decisions"], &stats["overall"]["from_memory"]), (&json!(2), &json!(2)), "{stats:#}");
    assert!(common::chats(&bed.double).is_empty(), "still no model call");
    let out = bed.run("macha", &["stats"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.lines().next().unwrap().contains("decisions     memory"), "{said}");
}

#[test]
fn the_runbook_section_nearest_to_the_incident_is_shown_and_a_changed_runbook_is_indexed_again() {
    let bed = Bed::new("memory-runbooks", "suggest");
    let dir = tempfile::tempdir().unwrap();
    let runbook = dir.path().join("web.md");
    let write = |text: &str| {
        std::fs::write(&runbook, text).unwrap();
        std::fs::set_permissions(&runbook, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    };
    write(&format!(
        "# Web\n\n## {WEB} cannot open /etc/demo-web.conf\n\nThe deploy job writes the config; restarting the unit \
         cannot help. Tell the web team.\n\n## Certificates\n\nRenewed by acme every 60 days.\n"
    ));
    std::fs::write(dir.path().join("other.md"), "# Printers\n\nThe printer queue is cleared on Mondays.\n").unwrap();
    bed.append_config(&format!("[knowledge_base]\nrunbooks = \"{}\"\n", dir.path().display()));
    bed.failing_web();
    bed.double.set_default(Reply::Json(common::decision("notify_only", &[])));

    bed.check();
    let prompts = decision_prompts(&bed);
    assert_eq!(prompts.len(), 1);
    assert!(prompts[0].contains("<runbooks>"), "shown at the first decision: {}", prompts[0]);
    assert!(prompts[0].contains(&format!("Runbook Web › {WEB} cannot open /etc/demo-web.conf (runbook:web.md#1)")));
    assert!(prompts[0].contains("restarting the unit cannot help"), "{}", prompts[0]);
    let record = bed.audit("decisions.jsonl").pop().unwrap();
    let memories = record["trail"]["memories"].as_array().unwrap();
    assert_eq!(memories[0], "runbook:web.md#1", "the trail names the section: {record:#}");

    // The runbook changes, and the unit fails again after the incident
    // resolved: the next decision is shown what the runbook says now.
    bed.c.sh_ok(&format!("systemctl reset-failed {WEB}")).unwrap();
    bed.check();
    bed.c.start_unit(WEB).unwrap();
    bed.c.wait_unit_state(WEB, "failed", std::time::Duration::from_secs(20)).unwrap();
    write(&format!("# Web\n\n## {WEB} cannot open /etc/demo-web.conf\n\nRun deploy-web.service again.\n"));
    bed.check();
    let prompts = decision_prompts(&bed);
    assert_eq!(prompts.len(), 2);
    assert!(prompts[1].contains("Run deploy-web.service again."), "{}", prompts[1]);
    assert!(!prompts[1].contains("restarting the unit cannot help"), "{}", prompts[1]);
}

/// The daemon's status file, when it wrote one.
fn status(bed: &Bed) -> Value {
    std::fs::read(bed.state_dir().join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The decision records of `unit`'s failure.
fn decided(bed: &Bed, unit: &str) -> Vec<Value> {
    let fp = format!("unit-failed:{unit}");
    bed.audit("decisions.jsonl").into_iter().filter(|r| r["incident"] == fp.as_str()).collect()
}

#[test]
fn with_chroma_stopped_the_daemon_decides_without_memory_says_so_and_the_held_records_arrive_when_it_is_back() {
    use macha::kb::chroma::{Client, ClientOptions, GetRequest};
    use macha_testbed::chroma::Chroma;
    use macha_testbed::ollama::OllamaDouble;
    use std::time::Duration;

    let mut chroma = Chroma::start().unwrap();
    let mut bed = Bed::new("memory-chroma-down", "suggest");
    bed.double = OllamaDouble::start(&[common::MODEL, "nomic-embed-text"]).unwrap();
    bed.write_config("suggest", "");
    bed.append_config(&format!(
        "[knowledge_base]\nbackend = \"chroma\"\n[knowledge_base.chroma]\nurl = \"{}\"\ntimeout = 2\n",
        chroma.url()
    ));
    bed.double.set_default(Reply::Json(common::decision("notify_only", &[])));
    let log = std::fs::File::create(bed.state.path().join("daemon.log")).unwrap();
    let mut daemon = bed.daemon(log);
    let daemon_log = || std::fs::read_to_string(bed.state.path().join("daemon.log")).unwrap_or_default();
    let chroma_ids = |url: String| -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let client = Client::new(ClientOptions::new(url)).unwrap();
            let Some(collection) = client.existing("macha-incidents", "nomic-embed-text").await.unwrap() else {
                return Vec::new();
            };
            collection.get(&GetRequest::default()).await.unwrap().into_iter().map(|e| e.id).collect()
        })
    };

    // Chroma up: the first failure is decided, with memory working.
    common::failing_app(&bed.c, "alpha.service");
    wait_until(Duration::from_secs(60), "alpha decided", || !decided(&bed, "alpha.service").is_empty());
    wait_until(Duration::from_secs(10), "memory in the status", || {
        status(&bed)["watching"]["memory"]["state"] == "working"
    });

    // Chroma down: the next failure is still decided by the model, the
    // trail and the status say memory was unavailable.
    chroma.stop().unwrap();
    common::failing_app(&bed.c, "beta.service");
    wait_until(Duration::from_secs(60), "beta decided", || !decided(&bed, "beta.service").is_empty());
    let beta = decided(&bed, "beta.service").pop().unwrap();
    assert_eq!(beta["outcome"], "decided", "{beta:#}\n{}", daemon_log());
    let note = beta["trail"]["memory_note"].as_str().unwrap_or_else(|| panic!("{beta:#}"));
    assert!(note.starts_with("decided without incident memory: ") && note.contains("cannot reach"), "{note}");
    wait_until(Duration::from_secs(10), "memory unavailable in the status", || {
        status(&bed)["watching"]["memory"]["state"] == "unavailable"
    });
    let said = String::from_utf8_lossy(&bed.run("macha", &["status"]).stdout).into_owned();
    assert!(said.contains("memory: chroma store, UNAVAILABLE for "), "{said}");

    // Chroma back: the next decision takes in every held record first.
    chroma.start_again().unwrap();
    common::failing_app(&bed.c, "gamma.service");
    wait_until(Duration::from_secs(60), "gamma decided", || !decided(&bed, "gamma.service").is_empty());
    let gamma = decided(&bed, "gamma.service").pop().unwrap();
    assert!(gamma["trail"]["memory_note"].is_null(), "{gamma:#}");
    let ids = chroma_ids(chroma.url());
    for unit in ["alpha.service", "beta.service"] {
        assert!(ids.iter().any(|id| id.ends_with(&format!("/unit-failed:{unit}"))), "{unit} in {ids:?}");
    }
    wait_until(Duration::from_secs(10), "memory working again", || {
        status(&bed)["watching"]["memory"]["state"] == "working"
    });
    assert!(daemon_log().contains("incident memory works again"), "{}", daemon_log());
    signal(&daemon, nix::sys::signal::Signal::SIGTERM);
    wait_exit(&mut daemon, Duration::from_secs(20));
}
