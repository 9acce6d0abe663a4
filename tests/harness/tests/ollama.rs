//! Pins the Ollama double to the behaviour of the real server
//! (`reference/protocols.md`, "Ollama HTTP API"): macha's tests are only as
//! good as this double is faithful.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use macha_testbed::ollama::{demo_decision, ModelCaps, OllamaDouble, Reply, INVALID_JSON_CONTENT};
use serde_json::{json, Value};

const MODEL: &str = "llama3.1:70b";

fn chat_body(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [
            { "role": "system", "content": "You keep NixOS hosts healthy." },
            { "role": "user", "content": "incident unit-failed:nginx.service: exit code 1" },
        ],
        "stream": stream,
        "options": { "num_ctx": 16384, "temperature": 0 },
        "keep_alive": "5m",
        "some_future_field": 1,
    })
}

async fn post(url: &str, body: &Value) -> (u16, String, String) {
    let response = reqwest::Client::new().post(url).json(body).send().await.expect("request sent");
    let status = response.status().as_u16();
    let kind = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, kind, response.text().await.expect("body read"))
}

/// Posts a non-streaming chat and returns the status and parsed body.
async fn chat(double: &OllamaDouble, body: &Value) -> (u16, Value) {
    let (status, _, text) = post(&format!("{}/api/chat", double.url()), body).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

fn content(answer: &Value) -> &str {
    answer["message"]["content"].as_str().expect("content is a string")
}

#[tokio::test]
async fn root_version_and_tags_answer_like_ollama() {
    let double = OllamaDouble::start(&[MODEL, "qwen2.5:7b"]).unwrap();
    let root = reqwest::get(double.url()).await.unwrap();
    assert_eq!(root.status(), 200);
    assert_eq!(root.text().await.unwrap(), "Ollama is running");

    let version: Value = reqwest::get(format!("{}/api/version", double.url())).await.unwrap().json().await.unwrap();
    assert_eq!(version, json!({ "version": "0.12.6" }));

    let tags: Value = reqwest::get(format!("{}/api/tags", double.url())).await.unwrap().json().await.unwrap();
    let names: Vec<&str> = tags["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, [MODEL, "qwen2.5:7b"]);
    let first = &tags["models"][0];
    assert_eq!(first["digest"].as_str().unwrap().len(), 64);
    assert_eq!(first["details"]["parameter_size"], "70.0B");
    assert_eq!(first["details"]["quantization_level"], "Q4_K_M");

    let missing = reqwest::get(format!("{}/api/nothing", double.url())).await.unwrap();
    assert_eq!(missing.status(), 404);
}

async fn show(double: &OllamaDouble, model: &str) -> (u16, String, String) {
    post(&format!("{}/api/show", double.url()), &json!({ "model": model })).await
}

#[tokio::test]
async fn show_reports_context_length_and_tool_capability() {
    let double = OllamaDouble::builder()
        .model(MODEL, ModelCaps { tools: true, context_length: 131_072 })
        .model("tiny:1b", ModelCaps { tools: false, context_length: 2048 })
        .start()
        .unwrap();

    let (status, _, text) = show(&double, MODEL).await;
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(info["model_info"]["llama.context_length"], 131_072);
    assert_eq!(info["model_info"]["general.architecture"], "llama");
    assert_eq!(info["capabilities"], json!(["completion", "tools"]));
    assert_eq!(info["details"]["family"], "llama");
    for key in ["modelfile", "parameters", "template"] {
        assert!(info[key].is_string(), "{key} missing: {info}");
    }

    let (_, _, text) = show(&double, "tiny:1b").await;
    let info: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(info["capabilities"], json!(["completion"]));
    assert_eq!(info["model_info"]["llama.context_length"], 2048);

    let (status, _, _) = show(&double, "mistral:7b").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn content_reply_is_a_string_in_message_content_with_stats_in_nanoseconds() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let decision = json!({ "diagnosis": "disk full", "severity": "critical", "actions": [] });
    double.push(Reply::Content(decision.to_string()));

    let (status, answer) = chat(&double, &chat_body(false)).await;
    assert_eq!(status, 200);
    assert_eq!(answer["model"], MODEL);
    assert_eq!(answer["message"]["role"], "assistant");
    assert_eq!(serde_json::from_str::<Value>(content(&answer)).unwrap(), decision);
    assert_eq!(answer["done"], true);
    assert_eq!(answer["done_reason"], "stop");
    assert!(chrono::DateTime::parse_from_rfc3339(answer["created_at"].as_str().unwrap()).is_ok());
    let eval_count = answer["eval_count"].as_u64().unwrap();
    assert_eq!(eval_count, decision.to_string().len() as u64 / 4);
    assert!(answer["prompt_eval_count"].as_u64().unwrap() > 0);
    // Nanoseconds: a generation of this size takes well over a millisecond.
    assert!(answer["eval_duration"].as_u64().unwrap() > 1_000_000);
    let parts: u64 =
        ["load_duration", "prompt_eval_duration", "eval_duration"].iter().map(|k| answer[k].as_u64().unwrap()).sum();
    assert!(answer["total_duration"].as_u64().unwrap() >= parts);
}

#[tokio::test]
async fn json_reply_is_serialised_into_content() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::Json(json!({ "severity": "info" })));
    let (_, answer) = chat(&double, &chat_body(false)).await;
    assert_eq!(content(&answer), r#"{"severity":"info"}"#);
}

#[tokio::test]
async fn tool_calls_come_with_empty_content_and_object_arguments() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::ToolCalls(vec![("unit_status".into(), json!({ "unit": "nginx.service" }))]));
    let (status, answer) = chat(&double, &chat_body(false)).await;
    assert_eq!(status, 200);
    assert_eq!(answer["message"]["content"], "");
    let call = &answer["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "unit_status");
    assert_eq!(call["arguments"], json!({ "unit": "nginx.service" }));
}

#[tokio::test]
async fn status_reply_sends_that_status_with_an_error_body() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::Status(503, "server busy".into()));
    let (status, answer) = chat(&double, &chat_body(false)).await;
    assert_eq!((status, answer), (503, json!({ "error": "server busy" })));
}

#[tokio::test]
async fn invalid_json_reply_is_prose_not_json() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::InvalidJson);
    let (status, answer) = chat(&double, &chat_body(false)).await;
    assert_eq!(status, 200);
    assert_eq!(content(&answer), INVALID_JSON_CONTENT);
    assert!(serde_json::from_str::<Value>(content(&answer)).is_err());
}

#[tokio::test]
async fn garbage_reply_is_not_parseable() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::Garbage);
    let (status, _, text) = post(&format!("{}/api/chat", double.url()), &chat_body(false)).await;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
}

#[tokio::test]
async fn an_oversized_reply_is_a_whole_answer_sent_without_a_length() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::Oversized(3 << 20));
    let response =
        reqwest::Client::new().post(format!("{}/api/chat", double.url())).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(response.content_length(), None, "chunked: the client learns the size only by reading");
    let answer: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(content(&answer).len(), 3 << 20);
    assert_eq!(answer["done"], true);
}

#[tokio::test]
async fn an_endless_reply_keeps_sending_until_the_client_gives_up() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::Endless(Duration::from_millis(10)));
    let mut response =
        reqwest::Client::new().post(format!("{}/api/chat", double.url())).json(&chat_body(false)).send().await.unwrap();
    let mut read = 0;
    while read < 256 * 1024 {
        read += response.chunk().await.unwrap().expect("the body has no end").len();
    }
}

#[tokio::test]
async fn a_streamed_endless_reply_is_well_formed_chunks_none_of_them_the_last() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::Endless(Duration::ZERO));
    let mut response =
        reqwest::Client::new().post(format!("{}/api/chat", double.url())).json(&chat_body(true)).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut body = Vec::new();
    while body.len() < 256 * 1024 {
        body.extend_from_slice(&response.chunk().await.unwrap().expect("the stream has no end"));
    }
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    // Every complete line is a chunk with 4 KiB of content, never `done`.
    for line in &lines[..lines.len() - 1] {
        let chunk: Value = serde_json::from_slice(line).unwrap();
        assert_eq!((chunk["done"].as_bool(), content(&chunk).len()), (Some(false), 4096));
    }
}

#[tokio::test]
async fn an_answer_whose_client_went_away_is_counted_as_abandoned() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.hold_answers();
    let url = format!("{}/api/chat", double.url());
    let held = tokio::spawn(async move { post(&url, &chat_body(false)).await });
    while double.chat_requests() == 0 {
        tokio::task::yield_now().await;
    }
    held.abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while double.abandoned_answers() == 0 {
        assert!(std::time::Instant::now() < deadline, "the closed connection was not noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    double.release_answers();
    let (status, answer) = chat(&double, &chat_body(false)).await;
    assert_eq!((status, content(&answer).is_empty()), (200, false));
    assert_eq!(double.abandoned_answers(), 1, "an answer sent whole is not abandoned");
}

#[tokio::test]
async fn hang_outlasts_a_short_client_timeout() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::Hang(Duration::from_secs(5)));
    let client = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let started = std::time::Instant::now();
    let err = client.post(format!("{}/api/chat", double.url())).json(&chat_body(false)).send().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Dropping the double while the request still hangs must not wait for it.
    let dropped = std::time::Instant::now();
    drop(double);
    assert!(dropped.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn unknown_model_is_404_with_ollamas_body_and_keeps_the_script() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::Content("scripted".into()));
    let mut body = chat_body(false);
    body["model"] = json!("x");
    let (status, _, text) = post(&format!("{}/api/chat", double.url()), &body).await;
    assert_eq!(status, 404);
    assert_eq!(text, r#"{"error":"model \"x\" not found, try pulling it first"}"#);

    let (_, answer) = chat(&double, &chat_body(false)).await;
    assert_eq!(content(&answer), "scripted");
}

#[tokio::test]
async fn untagged_model_name_means_latest() {
    let double = OllamaDouble::start(&["llama3.1:latest"]).unwrap();
    let mut body = chat_body(false);
    body["model"] = json!("llama3.1");
    let (status, answer) = chat(&double, &body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["model"], "llama3.1");
}

#[tokio::test]
async fn format_accepts_json_and_schema_objects_and_rejects_other_values() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let with_format = |format: Value| {
        let mut body = chat_body(false);
        body["format"] = format;
        body
    };
    let schema =
        json!({ "type": "object", "properties": { "severity": { "type": "string" } }, "required": ["severity"] });
    assert_eq!(chat(&double, &with_format(schema)).await.0, 200);
    assert_eq!(chat(&double, &with_format(json!("json"))).await.0, 200);
    // Plausible but not a valid schema: answered, and recorded as invalid.
    assert_eq!(chat(&double, &with_format(json!({ "type": 12 }))).await.0, 200);

    for bad in [json!(42), json!("yaml"), json!({ "severity": "string" }), json!([])] {
        let (status, answer) = chat(&double, &with_format(bad.clone())).await;
        assert_eq!(status, 400, "{bad}");
        assert!(answer["error"].as_str().unwrap().starts_with("invalid format: "), "{answer}");
    }

    let validity: Vec<Option<bool>> = double.requests().iter().take(3).map(|r| r.format_schema_valid).collect();
    assert_eq!(validity, [Some(true), None, Some(false)]);
}

#[tokio::test]
async fn tools_are_refused_for_a_model_without_tool_support() {
    let double = OllamaDouble::builder()
        .model(MODEL, ModelCaps::default())
        .model("tiny:1b", ModelCaps { tools: false, context_length: 2048 })
        .start()
        .unwrap();
    let tool = json!({ "type": "function", "function": { "name": "unit_status", "description": "d", "parameters": { "type": "object" } } });
    let mut body = chat_body(false);
    body["tools"] = json!([tool]);
    assert_eq!(chat(&double, &body).await.0, 200);

    body["model"] = json!("tiny:1b");
    let (status, _, text) = post(&format!("{}/api/chat", double.url()), &body).await;
    assert_eq!(status, 400);
    assert_eq!(text, r#"{"error":"registry.ollama.ai/library/tiny:1b does not support tools"}"#);
}

#[tokio::test]
async fn malformed_requests_are_400_and_empty_messages_only_load() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let mut body = chat_body(false);
    body["messages"] = json!("hello");
    let (status, answer) = chat(&double, &body).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("messages"), "{answer}");

    body["messages"] = json!([]);
    let (status, answer) = chat(&double, &body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["done_reason"], "load");

    let (status, answer) = chat(&double, &json!({ "messages": [] })).await;
    assert_eq!((status, answer), (400, json!({ "error": "model is required" })));
}

/// Reads a streamed body chunk by chunk, as it arrives.
async fn read_chunks(response: reqwest::Response) -> Vec<Vec<u8>> {
    let mut response = response;
    let mut chunks = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        chunks.push(chunk.to_vec());
    }
    chunks
}

#[tokio::test]
async fn streaming_is_the_default_and_sends_ndjson_fragments_then_done() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let decision = json!({ "diagnosis": "nginx crashed", "severity": "warning" }).to_string();
    double.push(Reply::Content(decision.clone()));
    let mut body = chat_body(true);
    body.as_object_mut().unwrap().remove("stream");

    let response = reqwest::Client::new().post(format!("{}/api/chat", double.url())).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let chunks = read_chunks(response).await;
    // Chunks do not align with lines: a client must buffer up to each newline.
    assert!(chunks.iter().any(|c| serde_json::from_slice::<Value>(c).is_err()));

    let text = String::from_utf8(chunks.concat()).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (last, fragments) = lines.split_last().unwrap();
    assert!(fragments.len() > 1);
    assert!(fragments.iter().all(|l| l["done"] == false));
    let joined: String = fragments.iter().map(content).collect();
    assert_eq!(joined, decision);
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["message"]["content"], "");
    assert!(last["eval_duration"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn stream_error_arrives_as_a_line_after_200() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::StreamError("model runner crashed".into()));
    double.push(Reply::StreamError("model runner crashed".into()));
    let (status, _, text) = post(&format!("{}/api/chat", double.url()), &chat_body(true)).await;
    assert_eq!(status, 200);
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last, json!({ "error": "model runner crashed" }));

    let (status, answer) = chat(&double, &chat_body(false)).await;
    assert_eq!((status, answer), (500, json!({ "error": "model runner crashed" })));
}

#[tokio::test]
async fn script_is_fifo_then_the_default_reply() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::Content("first".into()));
    double.push(Reply::Content("second".into()));
    double.set_default(Reply::Content("default".into()));
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(content(&chat(&double, &chat_body(false)).await.1).to_owned());
    }
    assert_eq!(seen, ["first", "second", "default"]);
}

#[tokio::test]
async fn demo_responder_restarts_the_failed_unit_or_only_notifies() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::Demo);
    let (_, answer) = chat(&double, &chat_body(false)).await;
    let decision: Value = serde_json::from_str(content(&answer)).unwrap();
    assert_eq!(decision["severity"], "warning");
    assert_eq!(decision["actions"][0]["kind"], "restart_unit");
    assert_eq!(decision["actions"][0]["unit"], "nginx.service");
    assert!(decision["diagnosis"].as_str().unwrap().starts_with("nginx.service failed;"));

    // The demo is also the default reply.
    let mut body = chat_body(false);
    body["messages"][1]["content"] = json!("disk usage at 91% on /");
    let (_, answer) = chat(&double, &body).await;
    let decision: Value = serde_json::from_str(content(&answer)).unwrap();
    assert_eq!(
        decision["actions"],
        json!([{ "kind": "notify_only", "unit": null, "reason": "nothing a catalog action can fix" }])
    );

    assert_eq!(demo_decision("see unit-failed:backup@daily.timer.")["actions"][0]["unit"], "backup@daily.timer");
    assert_eq!(demo_decision("unit-failed:not-a-unit")["severity"], "info");
}

#[tokio::test]
async fn requests_are_recorded_in_order_with_their_bodies() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    reqwest::get(format!("{}/api/version", double.url())).await.unwrap();
    chat(&double, &chat_body(false)).await;
    let mut unknown = chat_body(false);
    unknown["model"] = json!("x");
    chat(&double, &unknown).await;

    let requests = double.requests();
    let paths: Vec<(&str, &str)> = requests.iter().map(|r| (r.method.as_str(), r.path.as_str())).collect();
    assert_eq!(paths, [("GET", "/api/version"), ("POST", "/api/chat"), ("POST", "/api/chat")]);
    assert_eq!(requests[1].body["options"]["num_ctx"], 16384);
    assert_eq!(requests[2].body["model"], "x");
    assert!(requests[1].at <= requests[2].at);
    assert_eq!(double.chat_requests(), 2);
    assert!(double.wait_for_chat_requests(2, Duration::ZERO));
    assert!(!double.wait_for_chat_requests(3, Duration::from_millis(50)));
}

#[test]
fn starts_and_stops_outside_any_runtime() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let mut stream = std::net::TcpStream::connect(double.addr()).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("Ollama is running"), "{response}");
    drop(double);
}

#[test]
fn script_lines_parse_into_replies_and_typos_are_errors() {
    let script = r#"{"content": "hi"}
{"json": {"a": 1}}
{"tool_calls": [{"name": "unit_status", "arguments": {"unit": "a.service"}}]}

{"status": 500, "error": "boom"}
{"hang_ms": 5000}
{"invalid_json": true}
{"garbage": true}
{"stream_error": "oops"}
{"oversized_bytes": 1048576}
{"endless_every_ms": 100}
{"demo": true}"#;
    let replies = Reply::parse_script(script).unwrap();
    assert_eq!(
        replies,
        [
            Reply::Content("hi".into()),
            Reply::Json(json!({ "a": 1 })),
            Reply::ToolCalls(vec![("unit_status".into(), json!({ "unit": "a.service" }))]),
            Reply::Status(500, "boom".into()),
            Reply::Hang(Duration::from_secs(5)),
            Reply::InvalidJson,
            Reply::Garbage,
            Reply::StreamError("oops".into()),
            Reply::Oversized(1 << 20),
            Reply::Endless(Duration::from_millis(100)),
            Reply::Demo,
        ]
    );
    let err = Reply::parse_script("{\"content\": \"ok\"}\n{\"status\": 500, \"eror\": \"x\"}").unwrap_err();
    assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    assert!(Reply::parse_script(r#"{"garbage": false}"#).is_err());
}

#[tokio::test]
async fn binary_serves_its_script_then_the_demo_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("ollama-double-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script.jsonl");
    std::fs::write(&script, "{\"content\": \"from the script\"}\n").unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_ollama-double"))
        .args(["--listen", "127.0.0.1:0", "--model", MODEL, "--script"])
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();

    let (status, _, text) = post(&format!("{url}/api/chat"), &chat_body(false)).await;
    assert_eq!(status, 200);
    assert_eq!(content(&serde_json::from_str(&text).unwrap()), "from the script");
    let (_, _, text) = post(&format!("{url}/api/chat"), &chat_body(false)).await;
    let decision: Value = serde_json::from_str(content(&serde_json::from_str(&text).unwrap())).unwrap();
    assert_eq!(decision["actions"][0]["unit"], "nginx.service");

    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("POST /api/chat")).count(), 2, "{log}");
    std::fs::remove_dir_all(dir).unwrap();
}

// The OpenAI-compatible routes, as Ollama serves them.

/// An OpenAI chat request for the double's model.
fn openai_body(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [
            { "role": "system", "content": "You keep NixOS hosts healthy." },
            { "role": "user", "content": "incident unit-failed:nginx.service: exit code 1" },
        ],
        "stream": stream,
        "temperature": 0.1,
        "max_tokens": 256,
    })
}

async fn openai_chat(double: &OllamaDouble, body: &Value) -> (u16, Value) {
    let (status, _, text) = post(&format!("{}/v1/chat/completions", double.url()), body).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

#[tokio::test]
async fn openai_chat_answers_with_choices_and_usage() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::Json(json!({ "diagnosis": "nginx crashed" })));
    let mut body = openai_body(false);
    body["response_format"] =
        json!({ "type": "json_schema", "json_schema": { "name": "d", "schema": { "type": "object" } } });
    let (status, answer) = openai_chat(&double, &body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["object"], "chat.completion");
    assert!(answer["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(answer["system_fingerprint"], "fp_ollama");
    let choice = &answer["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], json!({ "diagnosis": "nginx crashed" }).to_string());
    assert_eq!(choice["finish_reason"], "stop");
    let usage = &answer["usage"];
    let (prompt, completion) = (usage["prompt_tokens"].as_u64().unwrap(), usage["completion_tokens"].as_u64().unwrap());
    assert!(prompt > 0 && completion > 0);
    assert_eq!(usage["total_tokens"].as_u64(), Some(prompt + completion));
    assert!(answer.get("total_duration").is_none(), "no nanosecond stats on this API");
    let recorded = double.requests().pop().unwrap();
    assert_eq!(recorded.path, "/v1/chat/completions");
    assert_eq!(recorded.format_schema_valid, Some(true), "response_format became the schema");
}

#[tokio::test]
async fn openai_tool_calls_carry_their_arguments_as_a_string() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::ToolCalls(vec![("disk_usage".into(), json!({ "path": "/var" }))]));
    let (status, answer) = openai_chat(&double, &openai_body(false)).await;
    assert_eq!(status, 200);
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    let arguments = call["function"]["arguments"].as_str().expect("a string");
    assert_eq!(serde_json::from_str::<Value>(arguments).unwrap(), json!({ "path": "/var" }));

    // Sent back, the call's arguments must be a string holding JSON.
    let mut body = openai_body(false);
    let messages = body["messages"].as_array_mut().unwrap();
    messages.push(json!({ "role": "assistant", "content": null, "tool_calls": [call] }));
    messages.push(json!({ "role": "tool", "tool_call_id": call["id"], "content": "12 GiB free" }));
    assert_eq!(openai_chat(&double, &body).await.0, 200);
    body["messages"][2]["tool_calls"][0]["function"]["arguments"] = json!("{not json");
    let (status, answer) = openai_chat(&double, &body).await;
    assert_eq!((status, &answer["error"]["message"]), (400, &json!("invalid tool call arguments")));
}

#[tokio::test]
async fn openai_errors_use_openais_error_body() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let mut body = openai_body(false);
    body["model"] = json!("nothing:1b");
    let (status, answer) = openai_chat(&double, &body).await;
    assert_eq!(status, 404);
    assert_eq!(
        answer,
        json!({ "error": { "message": "model \"nothing:1b\" not found, try pulling it first", "type": "not_found_error", "param": null, "code": null } })
    );

    body = openai_body(false);
    body["messages"] = json!([]);
    let (status, answer) = openai_chat(&double, &body).await;
    assert_eq!((status, &answer["error"]["type"]), (400, &json!("invalid_request_error")));
    assert_eq!(answer["error"]["message"], "[] is too short - 'messages'");

    body = openai_body(false);
    body["messages"][1]["content"] = Value::Null;
    let (status, answer) = openai_chat(&double, &body).await;
    assert_eq!((status, &answer["error"]["message"]), (400, &json!("invalid message content type: <nil>")));

    double.push(Reply::Status(503, "server busy".into()));
    let (status, answer) = openai_chat(&double, &openai_body(false)).await;
    assert_eq!(
        (status, &answer["error"]["type"], &answer["error"]["message"]),
        (503, &json!("api_error"), &json!("server busy"))
    );
}

#[tokio::test]
async fn openai_streaming_sends_events_then_usage_then_done() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.push(Reply::Content("nginx crashed twice".into()));
    let mut body = openai_body(true);
    body["stream_options"] = json!({ "include_usage": true });
    let response =
        reqwest::Client::new().post(format!("{}/v1/chat/completions", double.url())).json(&body).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8(read_chunks(response).await.concat()).unwrap();
    let events: Vec<&str> =
        text.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").unwrap()).collect();
    let (done, rest) = events.split_last().unwrap();
    assert_eq!(*done, "[DONE]");
    let chunks: Vec<Value> = rest.iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let (usage, deltas) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let joined: String = deltas.iter().map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap()).collect();
    assert_eq!(joined, "nginx crashed twice");
    assert!(deltas.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(deltas.last().unwrap()["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn openai_models_lists_and_retrieves_the_models() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let list: Value = reqwest::get(format!("{}/v1/models", double.url())).await.unwrap().json().await.unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], MODEL);
    let one = reqwest::get(format!("{}/v1/models/{MODEL}", double.url())).await.unwrap();
    assert_eq!(one.status(), 200);
    assert_eq!(one.json::<Value>().await.unwrap()["owned_by"], "library");
    let missing = reqwest::get(format!("{}/v1/models/nothing:1b", double.url())).await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn held_answers_wait_for_the_release() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    double.hold_answers();
    let url = format!("{}/api/chat", double.url());
    let pending = tokio::spawn(async move { post(&url, &chat_body(false)).await.0 });
    while double.chat_requests() == 0 {
        tokio::task::yield_now().await;
    }
    assert!(!pending.is_finished(), "the request arrived and is held");
    double.release_answers();
    assert_eq!(pending.await.unwrap(), 200);
}
