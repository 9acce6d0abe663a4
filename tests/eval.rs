//! `macha eval` against the Ollama double: fixtures decided by the daemon's
//! own decision code and judged against their `expect`, the reasons of a
//! failed run printed, runs counted per fixture and overall, the JSON
//! report, tool calls answered from the fixture, and the set-up errors (a
//! missing model, an endpoint that cannot be reached, a malformed fixture).
//! No container: the double runs in this process, the binary in another.

use std::path::{Path, PathBuf};
use std::process::Command;

use macha_testbed::ollama::{CutBy, OllamaDouble, Reply};
use serde_json::{json, Value};

const MODEL: &str = "llama3.1:70b";

fn shipped(id: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("eval/fixtures/{id}.json"))
}

/// A directory holding copies of the shipped fixtures `ids`.
fn fixtures(ids: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for id in ids {
        std::fs::copy(shipped(id), dir.path().join(format!("{id}.json"))).unwrap();
    }
    dir
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// `macha eval --url URL --model MODEL ARGS...`, run in the source tree.
fn eval(url: &str, model: &str, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_macha"))
        .args(["eval", "--url", url, "--model", model, "--timeout", "10"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("$ macha eval {}\n-> {}\n{}{}", args.join(" "), run.code, run.stdout, run.stderr);
    run
}

fn decision(kind: &str, unit: Option<&str>) -> Value {
    json!({
        "diagnosis": "queue.service panics at start-up and systemd gave up restarting it",
        "severity": "warning",
        "actions": [{"kind": kind, "unit": unit, "reason": "test answer"}]
    })
}

/// The chat requests the double received, as their message lists.
fn chats(double: &OllamaDouble) -> Vec<Vec<Value>> {
    double
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/chat")
        .map(|r| r.body["messages"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn an_answer_that_meets_the_fixture_passes_and_the_model_saw_the_fixtures_evidence() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.set_default(Reply::Json(decision("notify_only", None)));
    let dir = fixtures(&["restart-loop"]);
    let run = eval(&double.url(), MODEL, &["--fixtures", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let row = run.stdout.lines().find(|l| l.starts_with("restart-loop")).expect("a row for the fixture");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[1..3], ["1/1", "100%"], "{row}");
    assert!(run.stdout.lines().last().unwrap().starts_with("overall"), "{}", run.stdout);
    assert!(!run.stdout.contains("failed:"), "{}", run.stdout);

    // The prompt was made from the fixture by the daemon's own code.
    let asked = chats(&double);
    let user = asked[0].iter().rev().find(|m| m["role"] == "user").and_then(|m| m["content"].as_str()).unwrap();
    assert!(user.starts_with("Incident: unit-failed:queue.service\n"), "{user}");
    assert!(user.contains("automatic restarts so far (NRestarts): 9"), "{user}");
    assert!(user.contains("Start request repeated too quickly."), "{user}");
}

#[test]
fn a_failed_run_says_why() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.set_default(Reply::Json(decision("restart_unit", Some("queue.service"))));
    let dir = fixtures(&["restart-loop"]);
    let run = eval(&double.url(), MODEL, &["--fixtures", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, 0, "a low pass rate is a result, not an error: {}", run.stderr);
    let row = run.stdout.lines().find(|l| l.starts_with("restart-loop")).unwrap();
    assert_eq!(row.split_whitespace().nth(1), Some("0/1"), "{row}");
    assert!(
        run.stdout.contains(
            "  run 1 failed: action 1: restart_unit is forbidden here (proposed: restart_unit queue.service)"
        ),
        "{}",
        run.stdout
    );

    // An answer that never parses is a failed decision, and says so; both
    // answers count against the valid-answer rate, and its floor fails the run.
    double.set_default(Reply::InvalidJson);
    let args = ["--fixtures", dir.path().to_str().unwrap(), "--json", "--seed", "7", "--min-valid-rate", "50"];
    let run = eval(&double.url(), MODEL, &args);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("the valid-answer rate 0.0% is below --min-valid-rate 50%"), "{}", run.stderr);
    let report = run.json();
    let result = &report["fixtures"][0]["results"][0];
    assert_eq!(result["passed"], false);
    assert_eq!(result["outcome"], "failed");
    assert!(result["reasons"][0].as_str().unwrap().starts_with("no decision: invalid answer"), "{result:#}");
    assert_eq!(result["last_invalid_answer"], macha_testbed::ollama::INVALID_JSON_CONTENT);
    let overall = &report["overall"];
    assert_eq!((overall["answers"].as_u64(), overall["valid_answers"].as_u64()), (Some(2), Some(0)), "{overall:#}");
    assert_eq!(report["seed"], 7);
    let sent = double.requests().into_iter().rfind(|r| r.path == "/api/chat").unwrap();
    assert_eq!(sent.body["options"]["seed"], 7, "the seed goes with every request");
}

#[test]
fn an_answer_cut_off_is_retried_once_without_showing_it_back_and_says_why() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let dir = fixtures(&["restart-loop"]);
    let args = ["--fixtures", dir.path().to_str().unwrap(), "--json"];
    // What a small model wrote before Ollama's repeat guard stopped it.
    let looped = format!("{{\"diagnosis\": \"> 1{}", "0".repeat(40));
    for (by, why) in [
        (CutBy::Length, "cut off at its length limit (ollama.num_predict)"),
        (CutBy::Repeat, "stopped by the server because it repeated itself"),
    ] {
        double.push(Reply::CutOff { content: looped.clone(), by });
        double.push(Reply::Json(decision("notify_only", None)));
        let report = eval(&double.url(), MODEL, &args).json();
        let result = &report["fixtures"][0]["results"][0];
        assert_eq!((result["outcome"].as_str(), result["attempts"].as_u64()), (Some("decided"), Some(2)), "{result:#}");
        assert_eq!(result["invalid_answers"], 1, "{result:#}");
        // The refused answer stays in the trail, with why.
        let refused = &result["trail"]["refused"][0];
        assert_eq!(refused["answer"], looped.as_str(), "{result:#}");
        assert!(refused["reason"].as_str().unwrap().contains(why), "{refused}");
        let retry = chats(&double).pop().unwrap();
        assert!(retry.iter().all(|m| !m["content"].as_str().unwrap_or("").contains("1000000000")), "{retry:#?}");
        let last = retry.last().unwrap();
        assert_eq!(last["role"], "user");
        assert!(last["content"].as_str().unwrap().starts_with(&format!("Your answer was {why}, before")), "{last}");
    }
    // Cut off twice: the decision fails, and says how.
    double.push(Reply::CutOff { content: looped.clone(), by: CutBy::Repeat });
    double.push(Reply::CutOff { content: looped.clone(), by: CutBy::Repeat });
    let report = eval(&double.url(), MODEL, &args).json();
    let result = &report["fixtures"][0]["results"][0];
    let reason = result["reasons"][0].as_str().unwrap();
    assert!(
        reason.starts_with(
            "no decision: invalid answer from the model (stopped by the server because it repeated itself): "
        ),
        "{reason}"
    );
    assert_eq!(result["last_invalid_answer"], looped.as_str());
}

#[test]
fn runs_are_counted_per_fixture_and_overall_in_the_json_report() {
    // The double's built-in responder restarts the failed unit: forbidden
    // after a restart loop, right after a transient crash.
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.set_default(Reply::Demo);
    let dir = fixtures(&["restart-loop", "transient-crash"]);
    let run = eval(&double.url(), MODEL, &["--fixtures", dir.path().to_str().unwrap(), "--runs", "3", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["model"], MODEL);
    assert_eq!(report["url"], double.url());
    assert_eq!(report["runs_per_fixture"], 3);
    let by_id = |id: &str| report["fixtures"].as_array().unwrap().iter().find(|f| f["id"] == id).unwrap().clone();
    let (looping, crash) = (by_id("restart-loop"), by_id("transient-crash"));
    assert_eq!((looping["runs"].as_u64(), looping["passes"].as_u64()), (Some(3), Some(0)), "{looping:#}");
    assert_eq!((crash["runs"].as_u64(), crash["passes"].as_u64()), (Some(3), Some(3)), "{crash:#}");
    assert_eq!(crash["pass_rate_percent"], 100.0);
    assert_eq!(crash["results"].as_array().unwrap().len(), 3);
    assert_eq!(crash["results"][2]["run"], 3);
    assert_eq!(crash["results"][0]["actions"], json!(["restart_unit worker.service"]));
    let overall = &report["overall"];
    assert_eq!((overall["runs"].as_u64(), overall["passes"].as_u64()), (Some(6), Some(3)), "{overall:#}");
    assert_eq!(overall["pass_rate_percent"], 50.0);
    let (median, max) = (overall["latency_median_ms"].as_u64().unwrap(), overall["latency_max_ms"].as_u64().unwrap());
    assert!(median <= max, "{overall:#}");
    let slowest = report["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["results"].as_array().unwrap())
        .map(|r| r["wall_ms"].as_u64().unwrap())
        .max();
    assert_eq!(slowest, Some(max), "the overall maximum is the slowest run");
    assert!(chats(&double).len() >= 6, "each run asked the model");

    // For CI: a pass rate below the floor is exit 1, with the rate said.
    let dir_arg = dir.path().to_str().unwrap();
    let strict = eval(&double.url(), MODEL, &["--fixtures", dir_arg, "--min-pass-rate", "60"]);
    assert_eq!(strict.code, 1);
    assert!(strict.stderr.contains("the pass rate 50.0% is below --min-pass-rate 60%"), "{}", strict.stderr);
    assert_eq!(eval(&double.url(), MODEL, &["--fixtures", dir_arg, "--min-pass-rate", "50"]).code, 0);
}

#[test]
fn a_missing_model_says_how_to_get_it_and_nothing_runs() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let dir = fixtures(&["restart-loop"]);
    let run = eval(&double.url(), "qwen2.5:7b", &["--fixtures", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("ollama pull qwen2.5:7b"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(chats(&double).is_empty());
}

#[test]
fn an_endpoint_that_cannot_be_reached_is_named() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let dir = fixtures(&["restart-loop"]);
    let run = eval(&url, MODEL, &["--fixtures", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains(&format!("Ollama at {url} is unreachable")), "{}", run.stderr);

    let run = eval("ftp://example.org", MODEL, &["--fixtures", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("is not an http:// or https:// URL") && run.stderr.contains("--url"), "{}", run.stderr);
}

#[test]
fn a_malformed_fixture_is_named_with_its_field_and_nothing_runs() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let dir = fixtures(&["restart-loop", "segfault"]);
    let text =
        std::fs::read_to_string(shipped("segfault")).unwrap().replace("\"restart_unit\"", "\"restart_the_unit\"");
    let bad = dir.path().join("segfault.json");
    std::fs::write(&bad, text).unwrap();
    let run = eval(&double.url(), MODEL, &["--fixtures", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains(&format!("{}: field `expect.acceptable[0]`: unknown variant `restart_the_unit`", bad.display())),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("restart-loop.json"), "the valid fixture is not reported: {}", run.stderr);
    assert!(double.requests().is_empty(), "no model was asked");
}

#[test]
fn tool_calls_are_answered_from_the_fixture() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::ToolCalls(vec![
        ("unit_status".into(), json!({"unit": "queue.service"})),
        ("unit_logs".into(), json!({"unit": "queue.service"})),
        ("generations".into(), json!({})),
        ("unit_status".into(), json!({"unit": "queue.service; reboot"})),
    ]));
    double.set_default(Reply::Json(decision("notify_only", None)));
    let dir = fixtures(&["restart-loop"]);
    let run = eval(&double.url(), MODEL, &["--fixtures", dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["tool_calling"], true);
    assert_eq!(report["fixtures"][0]["passes"], 1, "{report:#}");
    assert_eq!(report["overall"]["tool_calls"], 4);
    let trail = &report["fixtures"][0]["results"][0]["trail"];
    assert_eq!(trail["tool_rounds"], 1, "{trail:#}");
    let outcomes: Vec<&str> =
        trail["tools"].as_array().unwrap().iter().map(|t| t["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["ok", "ok", "failed", "refused"], "{trail:#}");

    let results: Vec<String> = chats(&double)
        .iter()
        .flatten()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(results.len(), 4, "{results:#?}");
    assert!(results[0].contains("NRestarts=9") && results[0].contains("Result=start-limit-hit"), "{}", results[0]);
    assert!(results[1].contains("queue: panic: runtime error"), "{}", results[1]);
    assert!(
        results[2].contains("generations: the list of system generations is not recorded in this fixture"),
        "{}",
        results[2]
    );
    assert!(results[3].starts_with("Error: ") && results[3].contains("not a unit name"), "{}", results[3]);
}

#[test]
fn every_shipped_fixture_runs_from_the_source_tree() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.set_default(Reply::Demo);
    let run = eval(&double.url(), MODEL, &["--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    let fixtures = report["fixtures"].as_array().unwrap();
    let shipped = std::fs::read_dir(shipped("x").parent().unwrap()).unwrap().count();
    assert_eq!(fixtures.len(), shipped);
    assert_eq!(report["overall"]["runs"].as_u64(), Some(shipped as u64));
    for f in fixtures {
        assert_eq!(f["results"][0]["outcome"], "decided", "{f:#}");
    }
}

#[test]
fn a_fixtures_history_is_shown_to_the_model_and_a_known_fix_is_replayed_without_it_unless_memory_is_off() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.set_default(Reply::Json(decision("notify_only", None)));
    let dir = fixtures(&["mem-known-fix-restart", "mem-restart-never-helped"]);
    let args = ["--fixtures", dir.path().to_str().unwrap(), "--json"];
    let report = eval(&double.url(), MODEL, &args).json();
    assert_eq!(report["memory"], true);
    let asked = chats(&double);
    assert_eq!(asked.len(), 1, "the known fix asked no model: {asked:#?}");
    let shown: String = asked[0].iter().filter_map(|m| m["content"].as_str()).collect();
    assert!(shown.contains("<past-incidents>"), "{shown}");
    assert!(shown.contains("restart_unit backup.service: proposed 3, carried out 3 (verified 0, failed 3)"), "{shown}");
    let known = report["fixtures"].as_array().unwrap().iter().find(|f| f["id"] == "mem-known-fix-restart").unwrap();
    let result = &known["results"][0];
    assert_eq!(
        (result["passed"].as_bool(), result["trail"]["from_memory"].as_str()),
        (Some(true), Some("eval-host/unit-failed:worker.service")),
        "{result:#}"
    );

    // Without memory, both are the model's.
    let report = eval(&double.url(), MODEL, &[&args[..], &["--no-memory"]].concat()).json();
    assert_eq!(report["memory"], false);
    let asked = chats(&double);
    assert_eq!(asked.len(), 3, "two more decisions asked");
    assert!(asked[1..].iter().flatten().all(|m| !m["content"].as_str().unwrap_or("").contains("<past-incidents>")));
}
