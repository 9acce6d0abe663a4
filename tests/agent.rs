//! The decision as an agent: read-only tool rounds against the real
//! systemd and journal of the test container before the decision, the
//! bound on rounds, the single-shot decision for a model without tools, and
//! evidence too large for the input budget summarised (map-reduce) before
//! the decision. The model is the Ollama double, scripted.

mod common;

use macha_testbed::ollama::Reply;
use serde_json::{json, Value};

use self::common::{chats, Bed, MODEL, WEB};

fn messages(chat: &Value) -> &Vec<Value> {
    chat["messages"].as_array().expect("messages")
}

/// The `tool` messages of a request, as `(tool_name, content)`.
fn tool_results(chat: &Value) -> Vec<(String, String)> {
    messages(chat)
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| (m["tool_name"].as_str().unwrap_or("").to_owned(), m["content"].as_str().unwrap_or("").to_owned()))
        .collect()
}

fn tool_calls(calls: &[(&str, Value)]) -> Reply {
    Reply::ToolCalls(calls.iter().map(|(n, a)| ((*n).to_owned(), a.clone())).collect())
}

#[test]
fn the_model_investigates_over_several_tool_rounds_before_it_decides() {
    let bed = Bed::new("agent-rounds", "suggest");
    bed.failing_web();
    bed.double.push(tool_calls(&[("unit_status", json!({"unit": WEB}))]));
    bed.double.push(tool_calls(&[
        ("unit_logs", json!({"unit": WEB})),
        ("disk_usage", json!({"path": "/"})),
        // Not a tool, and a unit name that is shell text: refused, the conversation goes on.
        ("shell", json!({"command": "systemctl reboot"})),
        ("unit_status", json!({"unit": "x.service; reboot"})),
    ]));
    bed.double.push(Reply::Json(common::decision("restart_unit", &[WEB])));

    let (code, report) = bed.check();
    assert_eq!(code, 1, "{report:#}");
    let chats = chats(&bed.double);
    assert_eq!(chats.len(), 3, "two tool rounds, then the answer: {chats:#?}");
    for chat in &chats {
        assert!(chat["tools"].as_array().is_some_and(|t| t.len() == 7), "every probe offered: {chat}");
        assert!(chat.get("format").is_none(), "no format with tools (Ollama cannot combine them)");
    }
    assert!(messages(&chats[0])[0]["content"].as_str().unwrap().contains("read-only tools"));

    // Round 1's result, read from the container's systemd, is in request 2.
    let first = tool_results(&chats[1]);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, "unit_status");
    assert!(first[0].1.contains("ActiveState=failed") && first[0].1.contains("ExecMainStatus=3"), "{}", first[0].1);
    assert!(first[0].1.contains("never instructions"), "framed as data: {}", first[0].1);

    // Round 2's results: the unit's journal, the disk, and two refusals.
    let second = &tool_results(&chats[2])[1..];
    assert_eq!(second.len(), 4, "{second:#?}");
    assert!(second[0].1.contains("cannot open /etc/demo-web.conf"), "the unit's own journal lines: {}", second[0].1);
    assert!(second[1].1.contains("UsedPercent="), "{}", second[1].1);
    assert!(second[2].1.starts_with("Error: there is no such tool"), "{}", second[2].1);
    assert!(second[3].1.starts_with("Error:") && !second[3].1.contains("reboot"), "{}", second[3].1);
    // The assistant turns that asked for the calls are in the conversation.
    let asked: Vec<&Value> = messages(&chats[2]).iter().filter(|m| m["role"] == "assistant").collect();
    assert_eq!(asked.len(), 2);
    assert!(asked.iter().all(|m| m["tool_calls"].as_array().is_some_and(|c| !c.is_empty())));

    // The decision stands, and its record says how it was reached.
    let pending = bed.pending();
    assert_eq!(pending.len(), 1, "{pending:#?}");
    let record = bed.audit("decisions.jsonl").pop().expect("a decision record");
    assert_eq!(record["outcome"], "decided");
    let trail = &record["trail"];
    assert_eq!(trail["tool_rounds"], 2, "{trail:#}");
    let outcomes: Vec<&str> =
        trail["tools"].as_array().unwrap().iter().map(|t| t["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["ok", "ok", "ok", "refused", "refused"], "{trail:#}");
    assert!(trail["prompt_tokens"].as_u64().unwrap() <= trail["budget_tokens"].as_u64().unwrap());
    let metrics = common::read_jsonl(&bed.state_dir().join("metrics.jsonl"));
    assert_eq!(metrics.last().unwrap()["tool_rounds"], 2);
}

#[test]
fn when_the_rounds_run_out_the_model_must_answer_with_the_schema_and_no_tools() {
    let bed = Bed::new("agent-bound", "suggest");
    bed.append_config("[model]\ntool_rounds = 1\n");
    bed.failing_web();
    bed.double.push(tool_calls(&[("failed_units", json!({}))]));
    // It would go on calling tools; the next request offers none.
    bed.double.push(Reply::Json(common::decision("restart_unit", &[WEB])));

    let (code, report) = bed.check();
    assert_eq!(code, 1, "{report:#}");
    let chats = chats(&bed.double);
    assert_eq!(chats.len(), 2, "{chats:#?}");
    assert!(chats[1].get("tools").is_none_or(Value::is_null), "no tools after the last round");
    assert!(chats[1]["format"].is_object(), "the decision is asked for with the schema");
    let recorded = bed.double.requests().into_iter().filter(|r| r.path == "/api/chat").nth(1).unwrap();
    assert_eq!(recorded.format_schema_valid, Some(true), "a schema Ollama accepts");
    let last = messages(&chats[1]).last().unwrap();
    assert_eq!(last["role"], "user");
    assert!(last["content"].as_str().unwrap().starts_with("No more tool calls"));
    let failed = &tool_results(&chats[1])[0].1;
    assert!(failed.contains(WEB), "the failed units, read from systemd: {failed}");
    assert_eq!(bed.audit("decisions.jsonl").pop().unwrap()["trail"]["tool_rounds"], 1);
}

#[test]
fn a_model_without_tools_gets_a_single_shot_decision() {
    let bed = Bed::new("agent-plain", "suggest");
    let plain = macha_testbed::ollama::OllamaDouble::builder()
        .model(MODEL, macha_testbed::ollama::ModelCaps { tools: false, context_length: 8192 })
        .start()
        .unwrap();
    let config = std::fs::read_to_string(&bed.config).unwrap().replace(&bed.double.url(), &plain.url());
    std::fs::write(&bed.config, config).unwrap();
    bed.failing_web();
    plain.push(Reply::Json(common::decision("restart_unit", &[WEB])));

    let (code, report) = bed.check();
    assert_eq!(code, 1, "{report:#}");
    let chats: Vec<Value> = plain.requests().into_iter().filter(|r| r.path == "/api/chat").map(|r| r.body).collect();
    assert_eq!(chats.len(), 1);
    assert!(chats[0].get("tools").is_none_or(Value::is_null));
    assert!(chats[0]["format"].is_object());
    assert!(!messages(&chats[0])[0]["content"].as_str().unwrap().contains("read-only tools"));
    assert_eq!(bed.pending().len(), 1);
}

#[test]
fn at_observe_no_probe_runs_and_the_decision_is_single_shot() {
    let bed = Bed::new("agent-observe", "observe");
    bed.failing_web();
    bed.double.push(Reply::Json(common::decision("restart_unit", &[WEB])));
    bed.check();
    let chats = chats(&bed.double);
    assert_eq!(chats.len(), 1);
    assert!(chats[0].get("tools").is_none_or(Value::is_null), "{}", chats[0]);
}

/// Words with no digits or hex-only spellings, so that no mask merges two kinds.
const WORDS: [&str; 12] = [
    "quartz", "willow", "jumping", "lantern", "mirror", "orchard", "pepper", "rhythm", "saddle", "thunder", "violin",
    "yonder",
];

#[test]
fn evidence_over_the_budget_is_summarised_as_batch_work_before_the_decision() {
    let bed = Bed::new("agent-reduce", "suggest");
    // A small context: 5632 less 2048 for the answer and 512 of margin
    // leaves 3072 tokens, of which the system prompt takes a third.
    bed.append_config("[model]\nprompt_margin = 512\n");
    let model_line = format!("model = \"{MODEL}\"\n");
    let config = std::fs::read_to_string(&bed.config).unwrap().replacen(
        &model_line,
        &format!("{model_line}num_ctx = 5632\nnum_predict = 2048\n"),
        1,
    );
    std::fs::write(&bed.config, config).unwrap();
    // 100 kinds of error, all at the same priority (so none may be left
    // out), each a long line of its own words: far over the budget.
    let mut text = String::new();
    for i in 0..100 {
        let (a, b, c) = (WORDS[i % 12], WORDS[(i / 12) % 12], WORDS[(i * 7 + 3) % 12]);
        text.push_str(&format!(
            "<3>storage {a} {b} {c}: the {a} replica refused the {b} handshake while the {c} ledger was sealed, abandoning the transfer and keeping the previous state\n"
        ));
    }
    let cursor = bed.c.exec_ok(&["journalctl", "-q", "-n", "1", "--show-cursor", "-o", "cat"]).unwrap();
    let cursor = cursor.lines().find_map(|l| l.strip_prefix("-- cursor: ")).unwrap().to_owned();
    bed.c.write_file("/var/tmp/kinds.txt", &text).unwrap();
    bed.c
        .install_unit(
            "macha-kinds.service",
            "[Service]\nType=oneshot\nExecStart=/bin/cat /var/tmp/kinds.txt\nLogRateLimitIntervalSec=0\n",
        )
        .unwrap();
    bed.c.exec_ok(&["systemctl", "start", "macha-kinds.service"]).unwrap();
    bed.c.sync_journal().unwrap();
    std::fs::create_dir_all(bed.state_dir()).unwrap();
    std::fs::write(bed.state_dir().join("journal.cursor"), &cursor).unwrap();
    // Every answer is the double's built-in one: a short decision, which
    // also serves as a (short) summary.
    let (_, report) = bed.check();

    let chats = chats(&bed.double);
    let is_summary = |c: &Value| messages(c)[0]["content"].as_str().unwrap().starts_with("You condense evidence");
    let summaries: Vec<&Value> = chats.iter().filter(|c| is_summary(c)).collect();
    assert!(summaries.len() >= 2, "the evidence was cut into chunks: {report:#}");
    for s in &summaries {
        let user = messages(s)[1]["content"].as_str().unwrap();
        assert!(user.starts_with("<evidence>\n") && user.trim_end().ends_with("</evidence>"), "{user}");
        assert!(s.get("format").is_none() && s.get("tools").is_none_or(Value::is_null));
    }
    let decide = chats.iter().find(|c| !is_summary(c)).expect("the decision request");
    let user = messages(decide).iter().rev().find(|m| m["role"] == "user").unwrap()["content"].as_str().unwrap();
    assert!(user.contains("<journal-summary>") && user.contains("macha-kinds.service"), "{user}");
    assert!(!user.contains("<journal>\n"), "the journal block is replaced, not sent as well");
    // Summaries wait behind decisions: they are batch work in the record of calls.
    let calls = std::fs::read_dir(bed.state_dir().join("model-calls")).unwrap();
    let records: Vec<Value> = calls.flatten().flat_map(|f| common::read_jsonl(&f.path())).collect();
    // Incident memory's embedding calls are batch work too; only the summaries count here.
    let batch = records.iter().filter(|r| r["priority"] == "batch" && r["purpose"] != "embed").count();
    assert_eq!(batch, summaries.len(), "{records:#?}");
    // The decision's record keeps every summariser call.
    let record = bed
        .audit("decisions.jsonl")
        .into_iter()
        .find(|r| r["incident"] == "error-burst:macha-kinds.service")
        .expect("a decision about the burst");
    let steps = record["trail"]["summaries"].as_array().expect("summaries in the trail");
    assert_eq!(steps.len(), summaries.len());
    assert!(steps.iter().all(|s| s["output_tokens"].as_u64() < s["input_tokens"].as_u64()));
    assert!(record["trail"]["prompt_tokens"].as_u64().unwrap() <= 3072, "{record:#}");
}

#[test]
fn an_invalid_answer_after_the_tools_is_retried_once_with_the_schema_and_no_tools() {
    let bed = Bed::new("agent-retry", "suggest");
    bed.failing_web();
    bed.double.push(tool_calls(&[("unit_status", json!({"unit": WEB}))]));
    bed.double.push(Reply::InvalidJson);
    bed.double.push(Reply::Json(common::decision("restart_unit", &[WEB])));

    let (code, report) = bed.check();
    assert_eq!(code, 1, "{report:#}");
    let chats = chats(&bed.double);
    assert_eq!(chats.len(), 3);
    assert!(chats[2].get("tools").is_none_or(Value::is_null) && chats[2]["format"].is_object());
    let last = messages(&chats[2]).last().unwrap()["content"].as_str().unwrap().to_owned();
    assert!(last.starts_with("That answer was rejected"), "{last}");
    let record = bed.audit("decisions.jsonl").pop().unwrap();
    assert_eq!((record["outcome"].as_str(), record["attempts"].as_u64()), (Some("decided"), Some(2)));
    assert_eq!(bed.pending().len(), 1);
}
