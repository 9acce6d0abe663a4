//! The model service against the Ollama double (and, for whole cycles, the
//! container): failover to a second Ollama and to an OpenAI-compatible
//! endpoint, recorded in the decision; the priority queue (an interactive
//! request goes next, failed, timed-out and dropped requests free their
//! slot, and a dropped one its connection); answers streamed to a watcher
//! from both APIs, and streams that fail, never end or are not streams;
//! the record of calls (no secret, within its size limit); the per-cycle
//! metrics behind `macha stats`; `macha status`; and the start-up check
//! that names `ollama pull MODEL`.

mod common;

use std::cell::RefCell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{decision, macha_bin, read_jsonl, stop_daemon, wait_until, Bed, MODEL, WEB};
use macha::config::{Api, Config};
use macha::model::status::{self, DaemonStatus};
use macha::model::{
    ChatRequest, Check, Message, ModelError, ModelService, Priority, Progress, ProviderError, Tool, ToolCall, Watch,
};
use macha_testbed::ollama::{ModelCaps, OllamaDouble, Reply};
use serde_json::{json, Value};

const FALLBACK_MODEL: &str = "qwen2.5:7b";

/// A URL where nothing listens: every connection is refused.
fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// A config for the service alone: the primary at `primary`, plus `extra` TOML tables.
fn config_text(state: &Path, primary: &str, model: &str, timeout: u64, extra: &str) -> String {
    format!(
        "state_dir = \"{}\"\n[ollama]\nurl = \"{primary}\"\nmodel = \"{model}\"\ntimeout = {timeout}\n{extra}",
        state.display()
    )
}

fn service(state: &Path, primary: &str, model: &str, timeout: u64, extra: &str) -> ModelService {
    ModelService::new(&Config::parse(&config_text(state, primary, model, timeout, extra)).unwrap()).unwrap()
}

/// Runs `test` on a single-threaded runtime with a `LocalSet`, as the daemon runs.
fn local<F: Future>(test: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, test)
}

/// A request whose only message (and purpose) is `text`.
fn ask(text: &str) -> ChatRequest {
    ChatRequest::new(text, vec![Message::user(text)])
}

/// Polls `cond` on the runtime until it holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn spawn_chat(
    svc: &ModelService,
    priority: Priority,
    text: &'static str,
) -> tokio::task::JoinHandle<Result<macha::model::ChatReply, ModelError>> {
    let svc = svc.clone();
    tokio::task::spawn_local(async move { svc.chat(priority, &ask(text)).await })
}

/// The first message of each chat the double received on `path`, in arrival order.
fn asked(double: &OllamaDouble, path: &str) -> Vec<String> {
    double
        .requests()
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.body["messages"][0]["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// What a watched request told, in order: `queued`, `sent primary`,
/// `text PIECE`, `broke off: ERROR`.
#[derive(Default)]
struct Told(RefCell<Vec<String>>);

impl Watch for Told {
    fn progress(&self, event: Progress<'_>) {
        let said = match event {
            Progress::Queued => "queued".to_owned(),
            Progress::Sent(p) => format!("sent {}", if p.api == Api::Openai { "openai" } else { "ollama" }),
            Progress::Text(text) => format!("text {text}"),
            Progress::BrokeOff(e) => format!("broke off: {e}"),
            Progress::Calling { round, call } => format!("round {round}: {}", call.name),
        };
        self.0.borrow_mut().push(said);
    }
}

impl Told {
    fn texts(&self) -> Vec<String> {
        self.0.borrow().iter().filter_map(|t| t.strip_prefix("text ")).map(str::to_owned).collect()
    }
}

/// A service whose primary is refused and whose fallback is `double`'s
/// OpenAI-compatible endpoint.
fn openai_service(state: &Path, double: &OllamaDouble, timeout: u64) -> ModelService {
    let fallback = format!(
        "[model.fallback]\napi = \"openai\"\nurl = \"{}/v1\"\nmodel = \"{MODEL}\"\ntimeout = {timeout}\n",
        double.url()
    );
    service(state, &refused_url(), MODEL, timeout, &fallback)
}

fn call_files(state_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state_dir.join("model-calls"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Every record of a model call, oldest first (incident memory's
/// embedding calls, to a model the double does not have, left out).
fn call_records(state_dir: &Path) -> Vec<Value> {
    call_files(state_dir).iter().flat_map(|f| read_jsonl(f)).filter(|c| c["purpose"] != "embed").collect()
}

fn set_primary(bed: &Bed, url: &str) {
    let text = std::fs::read_to_string(&bed.config).unwrap().replace(&bed.double.url(), url);
    std::fs::write(&bed.config, text).unwrap();
}

fn set_fallback(bed: &Bed, api: &str, url: &str, model: &str) {
    bed.append_config(&format!(
        "[model.fallback]\napi = \"{api}\"\nurl = \"{url}\"\nmodel = \"{model}\"\ntimeout = 10\n"
    ));
}

/// One `macha-check` of a failed `demo-web.service`; returns its decision record.
fn decide_once(bed: &Bed) -> Value {
    bed.failing_web();
    let (code, report) = bed.check();
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["incidents"][0]["decision"]["outcome"], "decided", "{report:#}");
    let decisions = bed.audit("decisions.jsonl");
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    decisions[0].clone()
}

#[test]
fn a_refused_primary_fails_over_to_a_second_ollama_and_the_decision_says_so() {
    let bed = Bed::new("fo-refused", "suggest");
    let fallback = OllamaDouble::start(&[FALLBACK_MODEL]).unwrap();
    set_primary(&bed, &refused_url());
    set_fallback(&bed, "ollama", &fallback.url(), FALLBACK_MODEL);
    fallback.push(Reply::Json(decision("restart_unit", &[WEB])));

    let record = decide_once(&bed);
    assert_eq!(record["provider"]["endpoint"], "fallback", "{record:#}");
    assert_eq!(record["provider"]["api"], "ollama");
    assert_eq!(record["provider"]["model"], FALLBACK_MODEL);
    assert_eq!(record["model"], FALLBACK_MODEL);
    assert_eq!(fallback.chat_requests(), 1);
    assert_eq!(bed.pending().len(), 1, "the fallback's proposal was queued");

    // Both tries are in the record of calls.
    let calls = call_records(&bed.state_dir());
    let tries: Vec<(&str, &str)> =
        calls.iter().map(|c| (c["provider"]["endpoint"].as_str().unwrap(), c["outcome"].as_str().unwrap())).collect();
    assert_eq!(tries, [("primary", "failed"), ("fallback", "answered")]);
    assert!(calls[0]["error"].as_str().unwrap().contains("unreachable"), "{:#}", calls[0]);
    let metrics = read_jsonl(&bed.state_dir().join("metrics.jsonl"));
    assert_eq!((metrics[0]["fallbacks"].as_u64(), metrics[0]["answered_by"]["fallback"].as_u64()), (Some(1), Some(1)));
}

#[test]
fn a_primary_answering_500_fails_over_to_an_openai_compatible_endpoint() {
    let bed = Bed::new("fo-500", "suggest");
    let fallback = OllamaDouble::start(&[MODEL]).unwrap();
    set_fallback(&bed, "openai", &format!("{}/v1", fallback.url()), MODEL);
    // Single-shot, so that the decision's schema is in the first request.
    bed.append_config("[model]\ntool_rounds = 0\n");
    bed.double.push(Reply::Status(500, "CUDA error: out of memory".into()));
    fallback.push(Reply::Json(decision("restart_unit", &[WEB])));

    let record = decide_once(&bed);
    assert_eq!(record["provider"]["endpoint"], "fallback", "{record:#}");
    assert_eq!(record["provider"]["api"], "openai");
    assert_eq!(bed.double.chat_requests(), 1);
    let sent = fallback.requests().into_iter().find(|r| r.path == "/v1/chat/completions").unwrap();
    assert_eq!(sent.body["response_format"]["type"], "json_schema");
    assert_eq!(sent.format_schema_valid, Some(true), "the decision's schema went as response_format");
    assert!(sent.body["messages"].to_string().contains("cannot open /etc/demo-web.conf"));
    // The start-up check asked the OpenAI endpoint for the model.
    assert!(fallback.requests().iter().any(|r| r.path == format!("/v1/models/{MODEL}")));
    let calls = call_records(&bed.state_dir());
    assert!(calls[0]["error"].as_str().unwrap().contains("HTTP 500"), "{:#}", calls[0]);
}

#[test]
fn a_primary_that_hangs_past_its_timeout_fails_over() {
    let bed = Bed::new("fo-hang", "suggest");
    let fallback = OllamaDouble::start(&[FALLBACK_MODEL]).unwrap();
    set_fallback(&bed, "ollama", &fallback.url(), FALLBACK_MODEL);
    bed.double.push(Reply::Hang(Duration::from_secs(8)));
    fallback.push(Reply::Json(decision("restart_unit", &[WEB])));

    let record = decide_once(&bed);
    assert_eq!(record["provider"]["endpoint"], "fallback", "{record:#}");
    let calls = call_records(&bed.state_dir());
    assert!(calls[0]["error"].as_str().unwrap().contains("did not answer within 2 s"), "{:#}", calls[0]);
}

#[test]
fn without_a_fallback_the_decision_records_the_primary() {
    let bed = Bed::new("fo-none", "suggest");
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let record = decide_once(&bed);
    assert_eq!(record["provider"]["endpoint"], "primary");
    assert_eq!(record["provider"]["url"], bed.double.url());
}

#[test]
fn tool_calls_come_back_with_object_arguments_from_both_apis() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let native = service(state.path(), &double.url(), MODEL, 10, "");
    let openai_extra = format!(
        "[model.fallback]\napi = \"openai\"\nurl = \"{}/v1\"\nmodel = \"{MODEL}\"\ntimeout = 10\n",
        double.url()
    );
    let via_openai = service(state.path(), &refused_url(), MODEL, 10, &openai_extra);
    let tools = vec![Tool {
        name: "unit_status".into(),
        description: "the state of one unit".into(),
        parameters: json!({"type": "object", "properties": {"unit": {"type": "string"}}, "required": ["unit"]}),
    }];
    let request = ChatRequest { tools: Some(tools), ..ask("why did nginx fail?") };

    local(async {
        for svc in [&native, &via_openai] {
            double.push(Reply::ToolCalls(vec![("unit_status".into(), json!({"unit": "nginx.service"}))]));
            let reply = svc.chat(Priority::Interactive, &request).await.unwrap();
            let call: &ToolCall = &reply.message.tool_calls[0];
            assert_eq!((call.name.as_str(), &call.arguments), ("unit_status", &json!({"unit": "nginx.service"})));
            assert!(!call.id.is_empty());
            // The result goes back as a `tool` message; the double accepts the conversation.
            let mut next = request.clone();
            next.messages.push(reply.message.clone());
            next.messages.push(Message::tool_result(call, "nginx.service: failed (exit 1)"));
            svc.chat(Priority::Interactive, &next).await.unwrap();
        }
    });
    let openai: Vec<_> = double.requests().into_iter().filter(|r| r.path == "/v1/chat/completions").collect();
    let round_two = &openai[1].body["messages"];
    assert!(round_two[1]["tool_calls"][0]["function"]["arguments"].is_string(), "{round_two:#}");
    assert_eq!(round_two[2]["tool_call_id"], round_two[1]["tool_calls"][0]["id"]);
    let native_two = double.requests().into_iter().filter(|r| r.path == "/api/chat").nth(1).unwrap();
    assert!(native_two.body["messages"][1]["tool_calls"][0]["function"]["arguments"].is_object());
    assert_eq!(native_two.body["messages"][2]["tool_name"], "unit_status");
}

#[test]
fn a_watched_answer_streams_in_pieces_from_both_apis_and_comes_back_whole() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let native = service(state.path(), &double.url(), MODEL, 10, "");
    let via_openai = openai_service(state.path(), &double, 10);
    let answer = "The disk /var is full.\nRun `nix-collect-garbage -d` to free it.";
    local(async {
        for svc in [&native, &via_openai] {
            double.push(Reply::Content(answer.into()));
            let told = Told::default();
            let reply = svc.chat_watched(Priority::Interactive, &ask("why?"), &told).await.unwrap();
            assert_eq!(reply.message.content, answer);
            assert_eq!(reply.done_reason.as_deref(), Some("stop"));
            assert!(reply.usage.prompt_tokens > 0 && reply.usage.answer_tokens > 0, "{:?}", reply.usage);
            let texts = told.texts();
            assert!(texts.len() > 10, "the text came in pieces: {texts:?}");
            assert_eq!(texts.concat(), answer);
            let said = told.0.borrow();
            assert_eq!(said[0], "sent ollama", "no other request held the slot");
            assert!(!said.iter().any(|s| s.starts_with("broke off")), "nothing was told before the failover: {said:?}");
        }
    });
    let native_sent = double.requests().into_iter().find(|r| r.path == "/api/chat").unwrap();
    assert_eq!(native_sent.body["stream"], true);
    let openai_sent = double.requests().into_iter().find(|r| r.path == "/v1/chat/completions").unwrap();
    assert_eq!(
        (&openai_sent.body["stream"], &openai_sent.body["stream_options"]["include_usage"]),
        (&json!(true), &json!(true))
    );
    // The record keeps the stream as it came.
    let calls = call_records(state.path());
    let answered: Vec<&Value> = calls.iter().filter(|c| c["outcome"] == "answered").collect();
    assert_eq!(answered.len(), 2);
    assert!(answered[0]["response"].as_str().unwrap().contains("\"done\":true"), "{:#}", answered[0]);
    assert!(answered[1]["response"].as_str().unwrap().ends_with("data: [DONE]\n\n"), "{:#}", answered[1]);
    assert!(answered.iter().all(|c| c["answer_tokens"].as_u64() > Some(0)));
}

#[test]
fn requests_with_tools_or_a_format_are_not_streamed_even_when_watched() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let svc = service(state.path(), &double.url(), MODEL, 10, "");
    double.push(Reply::Json(json!({"ok": true})));
    let told = Told::default();
    let request = ask("why?").with_format(json!({"type": "object"}));
    let reply = local(svc.chat_watched(Priority::Interactive, &request, &told)).unwrap();
    assert_eq!(reply.message.content, r#"{"ok":true}"#);
    assert_eq!(*told.0.borrow(), ["sent ollama"]);
    assert_eq!(double.requests().into_iter().find(|r| r.path == "/api/chat").unwrap().body["stream"], false);
}

#[test]
fn a_watched_request_behind_a_busy_slot_is_told_it_waits_in_the_queue() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let svc = service(state.path(), &double.url(), MODEL, 10, "");
    double.hold_answers();
    local(async {
        let busy = spawn_chat(&svc, Priority::Autonomous, "first");
        until("the first at the model", || double.chat_requests() == 1).await;
        let told = Told::default();
        let second = ask("second");
        let mut watched = std::pin::pin!(svc.chat_watched(Priority::Interactive, &second, &told));
        tokio::select! {
            _ = &mut watched => panic!("answered while the slot was taken"),
            _ = until("the second waiting", || svc.queue().waiting() == 1) => {}
        }
        assert_eq!(*told.0.borrow(), ["queued"]);
        double.release_answers();
        busy.await.unwrap().unwrap();
        watched.await.unwrap();
        assert_eq!(told.0.borrow()[1], "sent ollama");
    });
}

#[test]
fn an_error_mid_stream_is_named_and_the_fallback_answers_from_the_start() {
    let state = tempfile::tempdir().unwrap();
    let primary = OllamaDouble::start(&[MODEL]).unwrap();
    let alone = service(state.path(), &primary.url(), MODEL, 10, "");
    primary.push(Reply::StreamError("an error was encountered while running the model: CUDA error".into()));
    let err = local(alone.chat_watched(Priority::Interactive, &ask("why?"), &Told::default())).unwrap_err();
    assert!(matches!(err, ModelError::Primary(ProviderError::MidAnswer { .. })), "{err}");
    assert_eq!(
        err.to_string(),
        format!("Ollama at {} stopped mid-answer with an error: an error was encountered while running the model: CUDA error", primary.url())
    );

    let fallback = OllamaDouble::start(&[MODEL]).unwrap();
    let extra = format!(
        "[model.fallback]\napi = \"openai\"\nurl = \"{}/v1\"\nmodel = \"{MODEL}\"\ntimeout = 10\n",
        fallback.url()
    );
    let svc = service(state.path(), &primary.url(), MODEL, 10, &extra);
    primary.push(Reply::StreamError("CUDA error".into()));
    fallback.push(Reply::Content("The unit failed.".into()));
    let told = Told::default();
    let reply = local(svc.chat_watched(Priority::Interactive, &ask("why?"), &told)).unwrap();
    assert_eq!(reply.message.content, "The unit failed.");
    let said = told.0.take();
    let broke = said.iter().position(|s| s.starts_with("broke off: ")).unwrap_or_else(|| panic!("{said:?}"));
    assert_eq!(said[..broke], ["sent ollama", "text The"], "{said:?}");
    assert!(said[broke].ends_with("stopped mid-answer with an error: CUDA error"), "{said:?}");
    assert_eq!(said[broke + 1], "sent openai");
    let after: String = said[broke + 2..].iter().map(|s| s.strip_prefix("text ").unwrap()).collect();
    assert_eq!(after, "The unit failed.", "from the start");
}

#[test]
fn a_stream_that_never_ends_trickles_or_is_not_a_stream_is_cut_with_the_reason() {
    let state = tempfile::tempdir().unwrap();
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let svc = service(state.path(), &double.url(), MODEL, 30, "");
    let via_openai = openai_service(state.path(), &double, 30);
    let watched = |svc: &ModelService, reply: Reply| {
        double.push(reply);
        let started = Instant::now();
        let err = local(svc.chat_watched(Priority::Interactive, &ask("why?"), &Told::default())).unwrap_err();
        (err.to_string(), started.elapsed())
    };
    for svc in [&svc, &via_openai] {
        let (err, took) = watched(svc, Reply::Endless(Duration::ZERO));
        assert!(err.contains("larger than 2 MiB") && err.contains("streamed answer of at most 2048 tokens"), "{err}");
        assert!(took < Duration::from_secs(10), "cut by the limit, not the 30 s timeout");
    }
    // One chunk that never ends its line: cut at what a whole answer may hold.
    let (err, _) = watched(&svc, Reply::Oversized(8 << 20));
    assert!(err.contains("a line of the stream runs past 1152 KiB without ending"), "{err}");
    let (err, _) = watched(&svc, Reply::Garbage);
    assert!(err.contains("a line of the stream is not a chat chunk"), "{err}");
    let (err, _) = watched(&via_openai, Reply::Garbage);
    assert!(err.contains("not a completion chunk"), "{err}");

    let slow = service(state.path(), &double.url(), MODEL, 2, "");
    let (err, took) = watched(&slow, Reply::Endless(Duration::from_millis(100)));
    assert!(err.contains("did not answer within 2 s"), "{err}");
    assert!(took < Duration::from_secs(5));
}

#[test]
fn api_show_says_whether_the_model_takes_tools_and_names_a_missing_one() {
    let double = OllamaDouble::builder()
        .model(MODEL, ModelCaps::default())
        .model("plain:7b", ModelCaps { tools: false, context_length: 8192 })
        .start()
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    local(async {
        let with_tools = service(state.path(), &double.url(), MODEL, 10, "");
        assert!(!with_tools.supports_tools(), "false until checked");
        let r = with_tools.check().await;
        assert_eq!(r.primary.check, Check::Ready { tools: Some(true), context_length: Some(131_072) });
        assert!(with_tools.supports_tools());

        let plain = service(state.path(), &double.url(), "plain:7b", 10, "");
        plain.check().await;
        assert!(!plain.supports_tools());

        let missing = service(state.path(), &double.url(), "missing:1b", 10, "");
        let r = missing.check().await;
        assert!(matches!(r.primary.check, Check::MissingModel { .. }), "{r:?}");
        assert!(r.problems()[0].contains("run `ollama pull missing:1b` there"), "{:?}", r.problems());
        assert!(!missing.supports_tools());
    });
}

#[test]
fn an_interactive_request_arriving_while_autonomous_work_waits_is_served_next() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.hold_answers();
    let state = tempfile::tempdir().unwrap();
    let svc = service(state.path(), &double.url(), MODEL, 30, "");
    local(async {
        let mut tasks = vec![spawn_chat(&svc, Priority::Autonomous, "auto-1")];
        until("the first request at the model", || double.chat_requests() == 1).await;
        for (text, priority) in
            [("auto-2", Priority::Autonomous), ("batch-1", Priority::Batch), ("auto-3", Priority::Autonomous)]
        {
            tasks.push(spawn_chat(&svc, priority, text));
        }
        until("three waiting", || svc.queue().waiting() == 3).await;
        tasks.push(spawn_chat(&svc, Priority::Interactive, "ask-1"));
        until("four waiting", || svc.queue().waiting() == 4).await;
        assert_eq!(svc.queue().running.len(), 1, "one slot, busy");
        double.release_answers();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    assert_eq!(asked(&double, "/api/chat"), ["auto-1", "ask-1", "auto-2", "auto-3", "batch-1"]);
    let q = svc.queue();
    assert_eq!((q.running.len(), q.waiting()), (0, 0));
}

#[test]
fn a_request_that_fails_times_out_or_is_dropped_frees_its_slot() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::Status(500, "CUDA error: out of memory".into()));
    double.push(Reply::Hang(Duration::from_secs(5)));
    let state = tempfile::tempdir().unwrap();
    let svc = service(state.path(), &double.url(), MODEL, 1, "");
    local(async {
        let failed = svc.chat(Priority::Autonomous, &ask("first")).await.unwrap_err();
        assert!(matches!(failed, ModelError::Primary(ProviderError::Http { status: 500, .. })), "{failed}");
        let timed_out = svc.chat(Priority::Autonomous, &ask("second")).await.unwrap_err();
        assert!(matches!(timed_out, ModelError::Primary(ProviderError::Timeout { .. })), "{timed_out}");
        assert!(timed_out.to_string().contains("did not answer within 1 s"), "{timed_out}");
        svc.chat(Priority::Autonomous, &ask("third")).await.unwrap();

        // A caller dropped mid-call, and one dropped while waiting behind it.
        double.hold_answers();
        let in_flight = spawn_chat(&svc, Priority::Autonomous, "fourth");
        until("the fourth at the model", || double.chat_requests() == 4).await;
        let dropped_waiting = spawn_chat(&svc, Priority::Interactive, "fifth");
        until("one waiting", || svc.queue().waiting() == 1).await;
        let behind = spawn_chat(&svc, Priority::Batch, "sixth");
        until("two waiting", || svc.queue().waiting() == 2).await;
        // The second's connection closed at its timeout, before its answer.
        until("the second's answer abandoned", || double.abandoned_answers() == 1).await;
        in_flight.abort();
        dropped_waiting.abort();
        until("the sixth at the model", || double.chat_requests() == 5).await;
        // The dropped call's connection closed too: the model stopped that answer.
        until("the fourth's answer abandoned", || double.abandoned_answers() == 2).await;
        double.release_answers();
        behind.await.unwrap().unwrap();
    });
    assert_eq!(asked(&double, "/api/chat"), ["first", "second", "third", "fourth", "sixth"]);
    let q = svc.queue();
    assert_eq!((q.running.len(), q.waiting()), (0, 0), "nothing holds a slot");
    let tally = svc.take_tally();
    assert_eq!((tally.calls, tally.failures), (4, 2), "{tally:?}");
}

#[test]
fn the_record_of_calls_keeps_within_its_size_limit() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let limits = "[model.calls]\nmax_file_kb = 64\nmax_total_mb = 1\n";
    let svc = service(state.path(), &double.url(), MODEL, 10, limits);
    local(async {
        for i in 0..80 {
            let request = ChatRequest::new(format!("bulk {i}"), vec![Message::user("x".repeat(20_000))]);
            svc.chat(Priority::Batch, &request).await.unwrap();
        }
    });
    let files = call_files(state.path());
    let total: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    assert!(total <= 1024 * 1024, "{total} bytes in {} files", files.len());
    assert!(files.len() > 1, "the record was rotated");
    assert!(files.iter().all(|f| std::fs::metadata(f).unwrap().len() <= 64 * 1024));
    let last = call_records(state.path()).pop().unwrap();
    assert_eq!(last["purpose"], "bulk 79", "the newest records are kept");
    assert_eq!(last["priority"], "batch");
}

#[test]
fn the_record_of_calls_holds_no_secret_from_the_journal_or_the_answer() {
    let bed = Bed::new("callsecrets", "suggest");
    let secrets = [
        "Zebra-Quartz-Lantern-77",
        "AKIAQ3W8E5R2T7Y4U9IP",
        "xoxp-5820193746-1738264950-Pq7rL2mN9sX4vB8k",
        "ghp_R8mK2vQ9xL4pW7nZ3tY6sB1cF5hJ0dG2aE4u",
    ];
    let script = format!(
        "echo \"backup: login with password={}\" >&2; echo \"aws key {} refused\" >&2; echo \"slack {} revoked\" >&2; echo \"git token {} expired\" >&2; exit 4",
        secrets[0], secrets[1], secrets[2], secrets[3]
    );
    bed.c.install_unit("leaky.service", &format!("[Service]\nExecStart=/bin/sh -c '{script}'\n")).unwrap();
    bed.c.start_unit("leaky.service").unwrap();
    bed.c.wait_unit_state("leaky.service", "failed", Duration::from_secs(10)).unwrap();
    // The model reads the unit's journal through a tool first: the result
    // goes back to it, and into the record, masked.
    bed.double.push(Reply::ToolCalls(vec![("unit_logs".into(), json!({"unit": "leaky.service"}))]));
    // The model repeats secrets in its answer, which the record keeps too.
    bed.double.push(Reply::Json(json!({
        "diagnosis": format!("the backup used password={} and token {}", secrets[0], secrets[3]),
        "severity": "warning",
        "actions": [{"kind": "notify_only", "unit": null, "reason": format!("rotate {} and {}", secrets[1], secrets[2])}]
    })));
    bed.check();

    let records = call_records(&bed.state_dir());
    let record =
        records.iter().rfind(|r| r["purpose"].as_str().unwrap().contains("unit-failed:leaky.service")).unwrap();
    assert_eq!(record["priority"], "autonomous");
    assert_eq!(record["provider"]["endpoint"], "primary");
    assert!(record["prompt_tokens"].as_u64().unwrap() > 0 && record["answer_tokens"].as_u64().unwrap() > 0);
    let request = record["request"]["messages"].to_string();
    assert!(request.contains("backup: login with password=[redacted"), "the line is there, masked: {request}");
    let tool = record["request"]["messages"].as_array().unwrap().iter().find(|m| m["role"] == "tool").unwrap();
    assert!(tool["content"].as_str().unwrap().contains("password=[redacted"), "the tool's result, masked: {tool}");
    assert!(record["response"]["message"]["content"].as_str().unwrap().contains("[redacted"), "{record:#}");
    let files: String = call_files(&bed.state_dir()).iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    for s in secrets {
        assert!(!files.contains(s), "{s} is in the record of calls");
    }
    let trail = std::fs::read_to_string(bed.state_dir().join("decisions.jsonl")).unwrap();
    assert!(trail.contains("unit_logs"), "{trail}");
    for s in secrets {
        let at = trail.find(s).map(|i| &trail[i.saturating_sub(200)..(i + 80).min(trail.len())]);
        assert!(at.is_none(), "{s} is in the decision's record: {at:?}");
    }
}

#[test]
fn macha_stats_sums_the_metrics_of_real_cycles() {
    let bed = Bed::new("stats", "suggest");
    bed.failing_web();
    bed.double.push(Reply::InvalidJson);
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    bed.check();
    bed.check();

    let lines = read_jsonl(&bed.state_dir().join("metrics.jsonl"));
    assert_eq!(lines.len(), 2, "one line per cycle: {lines:#?}");
    assert_eq!((lines[0]["calls"].as_u64(), lines[0]["parse_failures"].as_u64()), (Some(2), Some(1)));
    assert_eq!(lines[0]["tool_rounds"], 0);
    assert_eq!((lines[1]["calls"].as_u64(), lines[1]["incidents"].as_u64()), (Some(0), Some(1)), "already decided");

    let out = bed.run("macha", &["stats", "--json"]);
    assert!(out.status.success());
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    let overall = &stats["overall"];
    assert_eq!(overall["cycles"], 2);
    assert_eq!(overall["decisions"], 1);
    assert_eq!(overall["calls"], 2);
    assert_eq!(overall["parse_failures"], 1);
    assert_eq!((overall["call_failures"].as_u64(), overall["fallbacks"].as_u64()), (Some(0), Some(0)));
    let sent: u64 = lines.iter().map(|l| l["prompt_tokens"].as_u64().unwrap()).sum();
    assert!(sent > 0 && overall["prompt_tokens"] == sent && overall["answer_tokens"].as_u64().unwrap() > 0);
    assert!(overall["latency_p50_ms"].is_u64() && overall["latency_p95_ms"].is_u64());
    let per_day: u64 = stats["days"].as_array().unwrap().iter().map(|d| d["cycles"].as_u64().unwrap()).sum();
    assert_eq!(per_day, 2);

    let text = String::from_utf8(bed.run("macha", &["stats"]).stdout).unwrap();
    assert!(text.contains("tokens in") && text.contains("overall"), "{text}");
}

/// `macha status --json`: exit code and document.
fn status_json(bed: &Bed) -> (Option<i32>, Value) {
    let out = bed.command("macha", &["status", "--json"]).output().unwrap();
    (out.status.code(), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

#[test]
fn macha_status_without_a_daemon_says_so_and_checks_the_model_now() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let status = |primary: &str, json: bool| {
        std::fs::write(&config, config_text(&dir.path().join("state"), primary, MODEL, 30, "")).unwrap();
        let mut cmd = Command::new(macha_bin());
        cmd.arg("--config").arg(&config).arg("status");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };

    let (code, text) = status(&double.url(), false);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("daemon: not running here"), "{text}");
    assert!(text.contains("model (checked now, as no daemon runs):") && text.contains(": ready"), "{text}");
    let (_, json) = status(&double.url(), true);
    let s: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (s["daemon"].as_str(), s["model_checked_now"]["primary"]["check"]["state"].as_str()),
        (Some("never_ran"), Some("ready")),
        "{s:#}"
    );

    let (code, text) = status(&refused_url(), false);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("cannot be checked") && text.contains("unreachable"), "{text}");
}

#[test]
fn macha_status_shows_the_daemons_busy_slot_and_then_that_it_stopped() {
    let bed = Bed::new("status", "suggest");
    bed.failing_web();
    bed.double.hold_answers();
    let daemon = bed.daemon(Stdio::null());
    wait_until(Duration::from_secs(60), "the daemon's decision at the model", || bed.double.chat_requests() == 1);
    wait_until(Duration::from_secs(60), "the busy slot in status.json", || {
        status_json(&bed).1["status"]["queue"]["running"][0].is_object()
    });

    let (code, s) = status_json(&bed);
    assert_eq!((code, s["daemon"].as_str()), (Some(0), Some("running")), "{s:#}");
    assert_eq!(s["status"]["queue"]["running"][0]["priority"], "autonomous");
    assert_eq!(s["status"]["model"]["primary"]["check"]["state"], "ready");
    assert_eq!(s["status"]["supports_tools"], true);
    let text = String::from_utf8(bed.run("macha", &["status"]).stdout).unwrap();
    assert!(text.contains("daemon: running") && text.contains("1 of 1 slot busy, 0 waiting"), "{text}");
    assert!(text.contains("running: autonomous request"), "{text}");

    bed.double.release_answers();
    wait_until(Duration::from_secs(60), "the decision", || !bed.audit("decisions.jsonl").is_empty());
    stop_daemon(daemon);
    let (code, s) = status_json(&bed);
    assert_eq!((code, s["daemon"].as_str()), (Some(1), Some("stopped")), "{s:#}");
    assert!(String::from_utf8(bed.run("macha", &["status"]).stdout).unwrap().contains("daemon: stopped"));
}

#[test]
fn macha_status_shows_how_many_requests_wait_in_each_lane() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.hold_answers();
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("config.toml");
    std::fs::write(&config, config_text(state.path(), &double.url(), MODEL, 30, "")).unwrap();
    let svc = ModelService::new(&Config::load(Some(&config)).unwrap()).unwrap();
    let out = local(async {
        let mut tasks = vec![spawn_chat(&svc, Priority::Autonomous, "a")];
        until("the first at the model", || double.chat_requests() == 1).await;
        for (text, priority) in [("b", Priority::Autonomous), ("c", Priority::Autonomous), ("d", Priority::Batch)] {
            tasks.push(spawn_chat(&svc, priority, text));
        }
        until("three waiting", || svc.queue().waiting() == 3).await;
        status::write(
            &macha::state_dir::StateDir::open(state.path()).unwrap(),
            &DaemonStatus::of(&svc, None, chrono::Utc::now(), None),
        )
        .unwrap();
        let json = Command::new(macha_bin()).arg("--config").arg(&config).args(["status", "--json"]).output().unwrap();
        let text = Command::new(macha_bin()).arg("--config").arg(&config).arg("status").output().unwrap();
        double.release_answers();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        (json, text)
    });
    let (json, text) = out;
    let s: Value = serde_json::from_slice(&json.stdout).unwrap();
    let lanes = &s["status"]["queue"]["lanes"];
    let waiting: Vec<(&str, u64)> = lanes
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["priority"].as_str().unwrap(), l["waiting"].as_u64().unwrap()))
        .collect();
    assert_eq!(waiting, [("interactive", 0), ("autonomous", 2), ("batch", 1)]);
    assert!(lanes[1]["oldest_wait_ms"].is_u64());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("1 of 1 slot busy, 3 waiting"), "{text}");
    assert!(text.contains("autonomous   2 waiting (oldest"), "{text}");
}

#[test]
fn a_missing_model_is_named_with_ollama_pull_at_start_up_and_the_daemon_keeps_checking() {
    let bed = Bed::new("pullhint", "suggest");
    let text = std::fs::read_to_string(&bed.config).unwrap().replace(MODEL, "qwen-missing:7b");
    std::fs::write(&bed.config, text).unwrap();
    let log = bed.state_dir().join("orchestrator.log");
    let mut daemon = bed.daemon(Stdio::null());
    wait_until(Duration::from_secs(60), "the hint in two cycles", || {
        std::fs::read_to_string(&log).unwrap_or_default().matches("ollama pull qwen-missing:7b").count() >= 2
    });
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon keeps running");
    let (_, s) = status_json(&bed);
    let primary = &s["status"]["model"]["primary"]["check"];
    assert_eq!(primary["state"], "missing_model", "{s:#}");
    assert!(primary["error"].as_str().unwrap().contains("run `ollama pull qwen-missing:7b` there"), "{s:#}");
    assert_eq!(s["status"]["supports_tools"], false);
    let text = String::from_utf8(bed.run("macha", &["status"]).stdout).unwrap();
    assert!(text.contains("MISSING MODEL") && text.contains("ollama pull qwen-missing:7b"), "{text}");
    stop_daemon(daemon);

    let out = bed.run("macha-check", &[]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("model: model \"qwen-missing:7b\" is not available"), "{text}");
    assert!(text.contains("ollama pull qwen-missing:7b"), "{text}");
    let shows = bed.double.requests().iter().filter(|r| r.path == "/api/show").count();
    assert!(shows >= 3, "checked at start-up, again each cycle, and by macha-check: {shows}");
}

#[test]
fn an_api_key_file_that_cannot_be_read_stops_start_up_with_the_key_named() {
    let state = tempfile::tempdir().unwrap();
    let extra = "[model.fallback]\napi = \"openai\"\nurl = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\napi_key_file = \"/nonexistent/key\"\n";
    let config = Config::parse(&config_text(state.path(), "http://127.0.0.1:9", MODEL, 5, extra)).unwrap();
    let err = ModelService::new(&config).err().expect("refused").to_string();
    assert!(err.contains("model.fallback.api_key_file") && err.contains("/nonexistent/key"), "{err}");
    assert_eq!(config.model.fallback.as_ref().map(|f| f.api), Some(Api::Openai));
}

/// Runs `cmd` (its output into files) and waits for it with `wait4`: its
/// exit status, stdout, stderr, and its peak resident memory in KiB.
#[allow(clippy::zombie_processes, reason = "reaped by wait4, which also gives its resource usage")]
fn run_measured(cmd: &mut Command) -> (std::process::ExitStatus, String, String, i64) {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let child =
        cmd.stdout(std::fs::File::create(&out).unwrap()).stderr(std::fs::File::create(&err).unwrap()).spawn().unwrap();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<nix::libc::rusage>() });
    let pid = unsafe { nix::libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    (std::process::ExitStatus::from_raw(status), read(&out), read(&err), usage.ru_maxrss)
}

#[test]
fn an_oversized_answer_fails_the_decision_naming_the_limit_and_memory_stays_small() {
    // An error burst in a journal of its own makes the incident; systemd is
    // out of reach (that source fails), which this test does not need.
    let journal = tempfile::tempdir().unwrap();
    let lines = (0..40).map(|i| macha_testbed::journal::error_line("app.service", &format!("write error {i}")));
    macha_testbed::journal::write_file(&journal.path().join("system.journal"), lines).unwrap();
    let double = OllamaDouble::builder()
        .model(MODEL, ModelCaps::default())
        .default_reply(Reply::Oversized(150 << 20))
        .start()
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("config.toml");
    let text = format!(
        "state_dir = \"{}\"\ncheck_interval = 600\ndbus_address = \"unix:path=/nonexistent/bus\"\njournal_dir = \"{}\"\n[ollama]\nurl = \"{}\"\nmodel = \"{MODEL}\"\ntimeout = 60\n",
        state.path().join("state").display(),
        journal.path().display(),
        double.url()
    );
    std::fs::write(&config, text).unwrap();

    let (status, stdout, stderr, peak_kib) =
        run_measured(Command::new(macha_bin()).arg("--config").arg(&config).args(["check", "--json"]));
    eprintln!("{stderr}\npeak resident memory: {} MiB", peak_kib / 1024);
    assert!(status.code().is_some(), "{status:?}");
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let decision = &report["incidents"][0]["decision"];
    assert_eq!(decision["outcome"], "failed", "{report:#}");
    let error = decision["error"].as_str().unwrap();
    assert!(error.contains("larger than 1152 KiB") && error.contains("2048 tokens"), "names the limit: {error}");
    assert!(peak_kib < 100 * 1024, "a 150 MiB answer is not held: peak {peak_kib} KiB");
}

#[test]
fn an_answer_that_never_ends_is_cut_at_the_limit_before_the_timeout() {
    let state = tempfile::tempdir().unwrap();
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::Endless(Duration::ZERO));
    let svc = service(state.path(), &double.url(), MODEL, 30, "");
    let started = Instant::now();
    let err = local(svc.chat(Priority::Autonomous, &ask("why?"))).unwrap_err().to_string();
    assert!(err.contains("larger than 1152 KiB"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "cut by the limit, not the 30 s timeout");
}

#[test]
fn an_answer_that_trickles_without_end_is_cut_by_the_timeout() {
    let state = tempfile::tempdir().unwrap();
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::Endless(Duration::from_millis(100)));
    let svc = service(state.path(), &double.url(), MODEL, 2, "");
    let started = Instant::now();
    let err = local(svc.chat(Priority::Autonomous, &ask("why?"))).unwrap_err().to_string();
    assert!(err.contains("did not answer within 2 s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
