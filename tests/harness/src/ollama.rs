//! A faithful double of Ollama's HTTP API.
//!
//! Ollama cannot be installed on the machines that run macha's tests, so the
//! tests talk to this server instead. It reproduces what a client can observe
//! of the real one (`reference/protocols.md`, "Ollama HTTP API"): the routes
//! `/`, `/api/version`, `/api/tags`, `/api/show` and `/api/chat`, the error
//! bodies and statuses, streaming as the default, durations in nanoseconds, a
//! structured answer as a *string* in `message.content`, tool-call arguments
//! as a JSON object, and unknown request fields ignored. What the model says
//! is scripted by the test with [`Reply`]; when nothing is scripted the double
//! answers with a small built-in responder ([`Reply::Demo`]).
//!
//! `/api/embed`, `/api/generate`, `/api/ps` and the model-management routes
//! are absent (404, as Ollama answers any unknown route): macha does not use
//! them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::serve::Server;
use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// What the double knows about one model it pretends to have pulled.
#[derive(Clone, Copy, Debug)]
pub struct ModelCaps {
    /// Whether the model's template handles tools; without it, a chat that
    /// sends `tools` is refused with 400, as Ollama refuses it.
    pub tools: bool,
    /// Reported by `/api/show` as `llama.context_length`.
    pub context_length: u64,
}

impl Default for ModelCaps {
    fn default() -> Self {
        ModelCaps { tools: true, context_length: 131_072 }
    }
}

/// One scripted answer to `POST /api/chat`.
///
/// Deserialises from the script-file forms that `ollama-double --script`
/// reads, one JSON object per line: `{"content": "..."}`, `{"json": {..}}`,
/// `{"tool_calls": [{"name": "..", "arguments": {..}}]}`,
/// `{"status": 500, "error": "boom"}`, `{"hang_ms": 5000}`,
/// `{"invalid_json": true}`, `{"garbage": true}`, `{"stream_error": ".."}`,
/// `{"demo": true}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "ScriptLine")]
pub enum Reply {
    /// 200 with this text as `message.content`: the normal case, where a test
    /// passes a JSON decision serialised to a string.
    Content(String),
    /// Shorthand for `Content(value.to_string())`.
    Json(Value),
    /// 200 with `content: ""` and `message.tool_calls`, each `(name, arguments)`
    /// with the arguments as a JSON object, as Ollama sends them.
    ToolCalls(Vec<(String, Value)>),
    /// That HTTP status with the body `{"error": text}`.
    Status(u16, String),
    /// 200 whose content is prose with a broken JSON fragment, as a model
    /// sometimes answers despite `format`.
    InvalidJson,
    /// Accept the request and send nothing until the duration has passed
    /// (meant to be longer than the client's timeout); a client still
    /// waiting then gets the [`Reply::Demo`] answer, as from a slow model.
    Hang(Duration),
    /// 200 with a body that is not valid Ollama JSON (cut off mid-object, as
    /// when a proxy or the server dies mid-answer).
    Garbage,
    /// Streaming: 200, a content fragment, then the line `{"error": text}`,
    /// as Ollama reports a failure after the stream has begun. Not streaming:
    /// 500 `{"error": text}`.
    StreamError(String),
    /// The built-in responder: proposes restarting the unit named by an
    /// incident fingerprint `unit-failed:NAME` in the last user message, and
    /// otherwise only notifies. Lets the README demo run without a model.
    Demo,
}

/// The content [`Reply::InvalidJson`] answers.
pub const INVALID_JSON_CONTENT: &str = "Sure! Here is my analysis: {broken";

impl Reply {
    /// Reads a script: one reply per non-blank line, in the forms listed on
    /// [`Reply`]. Errors name the line that does not parse.
    pub fn parse_script(text: &str) -> anyhow::Result<Vec<Reply>> {
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| serde_json::from_str(line).with_context(|| format!("script line {}: {line}", i + 1)))
            .collect()
    }

    /// A short description for the request log.
    fn label(&self) -> String {
        match self {
            Reply::Content(c) => format!("content ({} chars)", c.chars().count()),
            Reply::Json(_) => "json".into(),
            Reply::ToolCalls(calls) => {
                let names: Vec<&str> = calls.iter().map(|(n, _)| n.as_str()).collect();
                format!("tool_calls [{}]", names.join(", "))
            }
            Reply::Status(code, _) => format!("status {code}"),
            Reply::InvalidJson => "invalid_json".into(),
            Reply::Hang(d) => format!("hang {}ms", d.as_millis()),
            Reply::Garbage => "garbage".into(),
            Reply::StreamError(_) => "stream_error".into(),
            Reply::Demo => "demo".into(),
        }
    }
}

/// The serialised forms of [`Reply`]; each struct admits exactly one shape so
/// that a typo in a script is an error rather than a different reply.
#[derive(Deserialize)]
#[serde(untagged)]
enum ScriptLine {
    Content(ContentLine),
    Json(JsonLine),
    ToolCalls(ToolCallsLine),
    Status(StatusLine),
    Hang(HangLine),
    InvalidJson(InvalidJsonLine),
    Garbage(GarbageLine),
    StreamError(StreamErrorLine),
    Demo(DemoLine),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentLine {
    content: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    json: Value,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolCallsLine {
    tool_calls: Vec<ToolCallLine>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolCallLine {
    name: String,
    arguments: Map<String, Value>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusLine {
    status: u16,
    error: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HangLine {
    hang_ms: u64,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidJsonLine {
    invalid_json: bool,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GarbageLine {
    garbage: bool,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamErrorLine {
    stream_error: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoLine {
    demo: bool,
}

impl TryFrom<ScriptLine> for Reply {
    type Error = &'static str;

    fn try_from(line: ScriptLine) -> Result<Self, Self::Error> {
        let flag = |set: bool, reply: Reply| {
            if set {
                Ok(reply)
            } else {
                Err("a flag reply must be `true`")
            }
        };
        match line {
            ScriptLine::Content(l) => Ok(Reply::Content(l.content)),
            ScriptLine::Json(l) => Ok(Reply::Json(l.json)),
            ScriptLine::ToolCalls(l) => {
                Ok(Reply::ToolCalls(l.tool_calls.into_iter().map(|c| (c.name, Value::Object(c.arguments))).collect()))
            }
            ScriptLine::Status(l) => Ok(Reply::Status(l.status, l.error)),
            ScriptLine::Hang(l) => Ok(Reply::Hang(Duration::from_millis(l.hang_ms))),
            ScriptLine::InvalidJson(l) => flag(l.invalid_json, Reply::InvalidJson),
            ScriptLine::Garbage(l) => flag(l.garbage, Reply::Garbage),
            ScriptLine::StreamError(l) => Ok(Reply::StreamError(l.stream_error)),
            ScriptLine::Demo(l) => flag(l.demo, Reply::Demo),
        }
    }
}

/// One request the double received, kept so tests can assert what macha sent.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The parsed JSON body; `Null` when there was none or it was not JSON.
    pub body: Value,
    pub at: Instant,
    /// For a chat whose `format` is a schema object: whether it compiles as
    /// a JSON Schema. `None` without `format` or with `"json"`.
    pub format_schema_valid: Option<bool>,
}

/// Configures an [`OllamaDouble`] before it starts.
pub struct Builder {
    models: Vec<(String, ModelCaps)>,
    listen: SocketAddr,
    script: Vec<Reply>,
    default: Reply,
    log: bool,
}

impl Builder {
    /// Adds a model the double claims to have pulled.
    pub fn model(mut self, name: &str, caps: ModelCaps) -> Self {
        self.models.push((name.to_owned(), caps));
        self
    }

    /// The address to bind; `127.0.0.1:0` (any free port) unless set.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Replies to queue before the first request.
    pub fn script(mut self, replies: impl IntoIterator<Item = Reply>) -> Self {
        self.script.extend(replies);
        self
    }

    /// The reply used when the script is empty; [`Reply::Demo`] unless set.
    pub fn default_reply(mut self, reply: Reply) -> Self {
        self.default = reply;
        self
    }

    /// Log one line per request on stderr (the binary does; tests need not).
    pub fn log_requests(mut self, on: bool) -> Self {
        self.log = on;
        self
    }

    /// Binds, then serves on a runtime of its own on a dedicated thread, so
    /// the caller need not be inside a tokio runtime.
    pub fn start(self) -> anyhow::Result<OllamaDouble> {
        let listener = std::net::TcpListener::bind(self.listen)
            .with_context(|| format!("binding the Ollama double to {}", self.listen))?;
        let state = Arc::new(Shared {
            models: self.models,
            log: self.log,
            inner: Mutex::new(Inner { script: self.script.into(), default: self.default, requests: Vec::new() }),
        });
        let server = Server::start("ollama-double", listener, router(state.clone()))?;
        Ok(OllamaDouble { state, server })
    }
}

/// A running Ollama double; stops serving when dropped.
pub struct OllamaDouble {
    state: Arc<Shared>,
    server: Server,
}

impl OllamaDouble {
    /// A builder with no models, any free port on 127.0.0.1, and
    /// [`Reply::Demo`] as the default reply.
    pub fn builder() -> Builder {
        Builder {
            models: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            script: Vec::new(),
            default: Reply::Demo,
            log: false,
        }
    }

    /// Starts a double with these models, all supporting tools.
    pub fn start(models: &[&str]) -> anyhow::Result<OllamaDouble> {
        models.iter().fold(Self::builder(), |b, name| b.model(name, ModelCaps::default())).start()
    }

    /// The base URL to configure as macha's Ollama endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Queues the answer to a later chat request (first in, first out).
    pub fn push(&self, reply: Reply) {
        self.state.lock().script.push_back(reply);
    }

    /// Sets the reply used whenever the script is empty.
    pub fn set_default(&self, reply: Reply) {
        self.state.lock().default = reply;
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().requests.clone()
    }

    /// How many `POST /api/chat` requests arrived, rejected ones included.
    pub fn chat_requests(&self) -> usize {
        self.state.lock().requests.iter().filter(|r| r.path == "/api/chat").count()
    }

    /// Waits until at least `n` chat requests arrived, for tests that drive a
    /// daemon asynchronously; false if `timeout` passed first.
    pub fn wait_for_chat_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.chat_requests() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// State shared between the handle and the server.
struct Shared {
    models: Vec<(String, ModelCaps)>,
    log: bool,
    inner: Mutex<Inner>,
}

struct Inner {
    script: VecDeque<Reply>,
    default: Reply,
    requests: Vec<RecordedRequest>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the double's state from others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks a model up as Ollama does: a name without a tag means `:latest`.
    fn model(&self, name: &str) -> Option<(&str, ModelCaps)> {
        let wanted = canonical(name);
        self.models.iter().find(|(n, _)| canonical(n) == wanted).map(|(n, c)| (n.as_str(), *c))
    }

    fn record(&self, method: &Method, path: &str, body: Value, format_schema_valid: Option<bool>, outcome: &str) {
        if self.log {
            let model = body.get("model").and_then(Value::as_str).map(|m| format!(" model={m}")).unwrap_or_default();
            eprintln!("ollama-double: {method} {path}{model} -> {outcome}");
        }
        self.lock().requests.push(RecordedRequest {
            method: method.to_string(),
            path: path.to_owned(),
            body,
            at: Instant::now(),
            format_schema_valid,
        });
    }

    /// The next scripted reply, or the default one.
    fn next_reply(&self) -> Reply {
        let mut inner = self.lock();
        inner.script.pop_front().unwrap_or_else(|| inner.default.clone())
    }
}

/// `llama3.1` and `llama3.1:latest` name the same model.
fn canonical(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    if base.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// The fully qualified name Ollama uses in some error messages.
fn qualified(name: &str) -> String {
    let name = canonical(name);
    match name.matches('/').count() {
        0 => format!("registry.ollama.ai/library/{name}"),
        1 => format!("registry.ollama.ai/{name}"),
        _ => name,
    }
}

fn router(state: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/api/version", get(version))
        .route("/api/tags", get(tags))
        .route("/api/show", post(show))
        .route("/api/chat", post(chat))
        // Ollama (gin) answers an unknown route and a wrong method alike.
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(state)
}

const JSON_TYPE: &str = "application/json; charset=utf-8";

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, JSON_TYPE)], body.to_string()).into_response()
}

fn error_response(status: StatusCode, text: &str) -> Response {
    json_response(status, &json!({ "error": text }))
}

async fn root(State(s): State<Arc<Shared>>, method: Method) -> Response {
    s.record(&method, "/", Value::Null, None, "200");
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "Ollama is running").into_response()
}

async fn version(State(s): State<Arc<Shared>>, method: Method) -> Response {
    s.record(&method, "/api/version", Value::Null, None, "200");
    json_response(StatusCode::OK, &json!({ "version": "0.12.6" }))
}

async fn not_found(State(s): State<Arc<Shared>>, method: Method, uri: Uri, body: Bytes) -> Response {
    s.record(&method, uri.path(), serde_json::from_slice(&body).unwrap_or(Value::Null), None, "404");
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain")], "404 page not found").into_response()
}

/// Fixed facts derived from a model's name, the same on every route.
struct Facts {
    parameters: f64,
    digest: String,
}

fn facts(name: &str) -> Facts {
    // "llama3.1:70b" -> 70e9 parameters; an unsized tag counts as 8B.
    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
    let size: String = tag.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let billions = if tag[size.len()..].starts_with(['b', 'B']) { size.parse().unwrap_or(8.0) } else { 8.0 };
    // A stable fake sha256: FNV-1a of the name, stretched to 64 hex digits.
    let mut digest = String::new();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for round in 0..4u8 {
        for b in name.bytes().chain([round]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        digest.push_str(&format!("{h:016x}"));
    }
    Facts { parameters: billions * 1e9, digest }
}

const MODIFIED_AT: &str = "2025-10-14T09:30:12.345678901Z";

fn details(facts: &Facts) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": format!("{:.1}B", facts.parameters / 1e9),
        "quantization_level": "Q4_K_M",
    })
}

async fn tags(State(s): State<Arc<Shared>>, method: Method) -> Response {
    s.record(&method, "/api/tags", Value::Null, None, "200");
    let models: Vec<Value> = s
        .models
        .iter()
        .map(|(name, _)| {
            let f = facts(name);
            json!({
                "name": name,
                "model": name,
                "modified_at": MODIFIED_AT,
                // Q4_K_M stores about 4.85 bits per parameter.
                "size": (f.parameters * 0.606) as u64,
                "digest": f.digest,
                "details": details(&f),
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "models": models }))
}

const TEMPLATE_TOOLS: &str = "{{- if .Messages }}{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>\n{{- if .System }}\n\n{{ .System }}{{- end }}\n{{- if .Tools }}\n\nYou have access to the following functions:\n{{ range .Tools }}{{ . }}\n{{ end }}{{- end }}<|eot_id|>{{- end }}\n{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}";
const TEMPLATE_PLAIN: &str = "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n";
const STOP_WORDS: [&str; 3] = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"];

async fn show(State(s): State<Arc<Shared>>, method: Method, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // Older clients send `name`; Ollama still accepts it.
    let name = ["model", "name"]
        .iter()
        .find_map(|k| request.get(k).and_then(Value::as_str).filter(|n| !n.is_empty()))
        .map(str::to_owned);
    let Some(name) = name else {
        s.record(&method, "/api/show", request, None, "400");
        return error_response(StatusCode::BAD_REQUEST, "model is required");
    };
    let Some((_, caps)) = s.model(&name) else {
        s.record(&method, "/api/show", request, None, "404");
        return error_response(StatusCode::NOT_FOUND, &format!("model '{name}' not found"));
    };
    s.record(&method, "/api/show", request, None, "200");
    let f = facts(&name);
    let template = if caps.tools { TEMPLATE_TOOLS } else { TEMPLATE_PLAIN };
    let stops: String = STOP_WORDS.iter().map(|w| format!("PARAMETER stop {w}\n")).collect();
    let modelfile = format!(
        "# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM {name}\n\nFROM /usr/share/ollama/.ollama/models/blobs/sha256-{}\nTEMPLATE \"\"\"{template}\"\"\"\n{stops}",
        f.digest
    );
    let parameters: Vec<String> = STOP_WORDS.iter().map(|w| format!("{:<31}\"{w}\"", "stop")).collect();
    let capabilities: &[&str] = if caps.tools { &["completion", "tools"] } else { &["completion"] };
    json_response(
        StatusCode::OK,
        &json!({
            "modelfile": modelfile,
            "parameters": parameters.join("\n"),
            "template": template,
            "details": details(&f),
            "model_info": {
                "general.architecture": "llama",
                "general.file_type": 15,
                "general.parameter_count": f.parameters as u64,
                "llama.context_length": caps.context_length,
                "llama.embedding_length": 8192,
                "llama.block_count": 80,
            },
            "capabilities": capabilities,
            "modified_at": MODIFIED_AT,
        }),
    )
}

/// What a chat request turned into once validated.
enum Plan {
    Reject(StatusCode, String),
    /// No messages: Ollama only loads the model and says so.
    Load {
        model: String,
    },
    Answer {
        model: String,
        stream: bool,
        prompt_chars: usize,
        last_user: String,
        reply: Reply,
    },
}

/// The JSON kind names Go's decoder uses in its errors.
fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks a request the way Ollama's chat handler does, in the same order:
/// decoding, model, tools support, empty messages, format. Only a request
/// that passes all of them consumes a scripted reply.
fn plan_chat(s: &Shared, request: &Value) -> (Plan, Option<bool>) {
    let reject = |status, text: String| (Plan::Reject(status, text), None);
    let unmarshal = |v: &Value, field: &str, ty: &str| {
        reject(
            StatusCode::BAD_REQUEST,
            format!("json: cannot unmarshal {} into Go struct field {field} of type {ty}", go_kind(v)),
        )
    };
    let Value::Object(req) = request else {
        return reject(
            StatusCode::BAD_REQUEST,
            format!("json: cannot unmarshal {} into Go value of type api.ChatRequest", go_kind(request)),
        );
    };
    let field = |k: &str| req.get(k).filter(|v| !v.is_null());
    let model = match field("model") {
        None => None,
        Some(Value::String(m)) => Some(m.as_str()),
        Some(v) => return unmarshal(v, "ChatRequest.model", "string"),
    };
    let stream = match field("stream") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => return unmarshal(v, "ChatRequest.stream", "bool"),
    };
    let messages = match field("messages") {
        None => &[][..],
        Some(Value::Array(m)) => m.as_slice(),
        Some(v) => return unmarshal(v, "ChatRequest.messages", "[]api.Message"),
    };
    for message in messages {
        let Value::Object(m) = message else {
            return unmarshal(message, "ChatRequest.messages", "api.Message");
        };
        for key in ["role", "content"] {
            if let Some(v) = m.get(key).filter(|v| !v.is_null() && !v.is_string()) {
                return unmarshal(v, &format!("Message.messages.{key}"), "string");
            }
        }
    }
    let tools = match field("tools") {
        None => &[][..],
        Some(Value::Array(t)) => t.as_slice(),
        Some(v) => return unmarshal(v, "ChatRequest.tools", "api.Tools"),
    };

    let Some(model) = model.filter(|m| !m.is_empty()) else {
        return reject(StatusCode::BAD_REQUEST, "model is required".into());
    };
    let Some((_, caps)) = s.model(model) else {
        return reject(StatusCode::NOT_FOUND, format!("model \"{model}\" not found, try pulling it first"));
    };
    if !tools.is_empty() && !caps.tools {
        return reject(StatusCode::BAD_REQUEST, format!("{} does not support tools", qualified(model)));
    }
    if messages.is_empty() {
        return (Plan::Load { model: model.to_owned() }, None);
    }

    let mut schema_valid = None;
    match field("format") {
        None => {}
        Some(Value::String(f)) if f == "json" => {}
        Some(Value::Object(schema)) if looks_like_schema(schema) => {
            schema_valid = Some(jsonschema::validator_for(&Value::Object(schema.clone())).is_ok());
        }
        Some(other) => {
            return reject(
                StatusCode::BAD_REQUEST,
                format!("invalid format: {other}; expected \"json\" or a valid JSON Schema object"),
            );
        }
    }

    let text = |m: &Value, k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let prompt_chars = messages.iter().map(|m| text(m, "content").chars().count()).sum::<usize>()
        + tools.iter().map(|t| t.to_string().len()).sum::<usize>();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| text(m, "content"))
        .unwrap_or_default();
    let plan = Plan::Answer { model: model.to_owned(), stream, prompt_chars, last_user, reply: s.next_reply() };
    (plan, schema_valid)
}

/// A schema object must say something a schema says; `{"foo": 1}` is not one.
fn looks_like_schema(schema: &Map<String, Value>) -> bool {
    ["type", "properties", "$schema", "oneOf", "anyOf", "allOf", "$ref", "enum", "const"]
        .iter()
        .any(|k| schema.contains_key(*k))
}

async fn chat(State(s): State<Arc<Shared>>, method: Method, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let text = if body.iter().all(u8::is_ascii_whitespace) {
                "missing request body".to_owned()
            } else {
                e.to_string()
            };
            s.record(&method, "/api/chat", Value::Null, None, "400");
            return error_response(StatusCode::BAD_REQUEST, &text);
        }
    };
    let (plan, schema_valid) = plan_chat(&s, &request);
    let outcome = match &plan {
        Plan::Reject(status, _) => status.as_u16().to_string(),
        Plan::Load { .. } => "200 (load)".into(),
        Plan::Answer { reply, .. } => reply.label(),
    };
    s.record(&method, "/api/chat", request, schema_valid, &outcome);
    match plan {
        Plan::Reject(status, text) => error_response(status, &text),
        Plan::Load { model } => json_response(
            StatusCode::OK,
            &json!({
                "model": model,
                "created_at": now(),
                "message": { "role": "assistant", "content": "" },
                "done_reason": "load",
                "done": true,
            }),
        ),
        Plan::Answer { model, stream, prompt_chars, last_user, reply } => {
            answer(Answer { model, stream, prompt_chars, last_user }, reply).await
        }
    }
}

struct Answer {
    model: String,
    stream: bool,
    prompt_chars: usize,
    last_user: String,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

async fn answer(a: Answer, reply: Reply) -> Response {
    let (content, tool_calls) = match reply {
        Reply::Content(c) => (c, None),
        Reply::Json(v) => (v.to_string(), None),
        Reply::InvalidJson => (INVALID_JSON_CONTENT.to_owned(), None),
        Reply::Demo => (demo_decision(&a.last_user).to_string(), None),
        Reply::ToolCalls(calls) => (String::new(), Some(tool_calls_json(calls))),
        Reply::Hang(duration) => {
            tokio::time::sleep(duration).await;
            (demo_decision(&a.last_user).to_string(), None)
        }
        Reply::Status(code, text) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error_response(status, &text);
        }
        Reply::Garbage => {
            let cut =
                format!("{{\"model\":\"{}\",\"created_at\":\"{}\",\"message\":{{\"role\":\"assis", a.model, now());
            let kind = if a.stream { "application/x-ndjson" } else { JSON_TYPE };
            return (StatusCode::OK, [(header::CONTENT_TYPE, kind)], cut).into_response();
        }
        Reply::StreamError(text) => {
            if !a.stream {
                return error_response(StatusCode::INTERNAL_SERVER_ERROR, &text);
            }
            let lines = vec![chunk(&a.model, "The", None), json!({ "error": text })];
            return ndjson(lines);
        }
    };
    let stats = stats(a.prompt_chars, content.chars().count() + tool_calls.as_ref().map_or(0, |t| t.to_string().len()));
    let final_object = |content: &str, tool_calls: Option<Value>| {
        let mut done = chunk(&a.model, content, tool_calls);
        let map = done.as_object_mut().expect("chunk is an object");
        map.insert("done".into(), Value::Bool(true));
        map.insert("done_reason".into(), "stop".into());
        map.extend(stats.clone());
        done
    };
    if !a.stream {
        return json_response(StatusCode::OK, &final_object(&content, tool_calls));
    }
    let mut lines: Vec<Value> = fragments(&content).map(|f| chunk(&a.model, f, None)).collect();
    if let Some(calls) = tool_calls {
        lines.push(chunk(&a.model, "", Some(calls)));
    }
    lines.push(final_object("", None));
    ndjson(lines)
}

/// One streamed object (`done: false`); the final one is built on top of it.
fn chunk(model: &str, content: &str, tool_calls: Option<Value>) -> Value {
    let mut message = json!({ "role": "assistant", "content": content });
    if let Some(calls) = tool_calls {
        message["tool_calls"] = calls;
    }
    json!({ "model": model, "created_at": now(), "message": message, "done": false })
}

/// Newer servers add `id` and `function.index`; clients must ignore them.
fn tool_calls_json(calls: Vec<(String, Value)>) -> Value {
    let calls: Vec<Value> = calls
        .into_iter()
        .enumerate()
        .map(|(i, (name, arguments))| {
            json!({ "id": format!("call_{i}"), "function": { "index": i, "name": name, "arguments": arguments } })
        })
        .collect();
    Value::Array(calls)
}

/// Token-sized pieces of the content, as a model emits them.
fn fragments(content: &str) -> impl Iterator<Item = &str> {
    let mut rest = content;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.char_indices().nth(4).map_or(rest.len(), |(i, _)| i);
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// Timing stats in nanoseconds, with a token counted as about four characters.
fn stats(prompt_chars: usize, output_chars: usize) -> Map<String, Value> {
    let prompt_tokens = (prompt_chars / 4).max(1) as u64;
    let eval_tokens = (output_chars / 4).max(1) as u64;
    let load = 12_345_678u64;
    let prompt_eval = prompt_tokens * 400_000;
    let eval = eval_tokens * 25_000_000;
    [
        ("total_duration", load + prompt_eval + eval + 1_234_567),
        ("load_duration", load),
        ("prompt_eval_count", prompt_tokens),
        ("prompt_eval_duration", prompt_eval),
        ("eval_count", eval_tokens),
        ("eval_duration", eval),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), Value::from(value)))
    .collect()
}

/// Sends the lines as `application/x-ndjson`, deliberately cutting each line
/// across two body chunks: nothing in HTTP promises that a chunk holds whole
/// lines, and a client that assumes it must fail here, not in production.
fn ndjson(lines: Vec<Value>) -> Response {
    let mut pieces: VecDeque<Bytes> = VecDeque::new();
    for line in lines {
        let text = format!("{line}\n");
        let mid = text.len() / 2;
        let mid = (mid..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
        pieces.push_back(Bytes::copy_from_slice(&text.as_bytes()[..mid]));
        pieces.push_back(Bytes::copy_from_slice(&text.as_bytes()[mid..]));
    }
    let stream = futures_util::stream::unfold(pieces, |mut pieces| async move {
        let piece = pieces.pop_front()?;
        // A pause lets each piece leave as its own write.
        tokio::time::sleep(Duration::from_millis(1)).await;
        Some((Ok::<_, std::convert::Infallible>(piece), pieces))
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response()
}

/// The decision [`Reply::Demo`] answers for a chat whose last user message is
/// `last_user`.
pub fn demo_decision(last_user: &str) -> Value {
    match failed_unit(last_user) {
        Some(unit) => json!({
            "diagnosis": format!("{unit} failed; its journal shows the error above. A restart is the first remedy."),
            "severity": "warning",
            "actions": [{
                "kind": "restart_unit",
                "unit": unit,
                "reason": "the unit failed; restarting it is the standard first remedy",
            }],
        }),
        None => json!({
            "diagnosis": "no action is needed",
            "severity": "info",
            "actions": [{ "kind": "notify_only", "unit": null, "reason": "nothing a catalog action can fix" }],
        }),
    }
}

const UNIT_SUFFIXES: [&str; 11] = [
    ".service",
    ".socket",
    ".timer",
    ".mount",
    ".automount",
    ".target",
    ".path",
    ".slice",
    ".scope",
    ".device",
    ".swap",
];

/// The NAME in the first `unit-failed:NAME` fingerprint that names a unit.
fn failed_unit(text: &str) -> Option<&str> {
    text.match_indices("unit-failed:").find_map(|(i, marker)| {
        let rest = &text[i + marker.len()..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || ":_.\\@-".contains(c))).unwrap_or(rest.len());
        // A sentence may end right after the name.
        let name = rest[..end].trim_end_matches(['.', ':']);
        UNIT_SUFFIXES.iter().any(|s| name.len() > s.len() && name.ends_with(s)).then_some(name)
    })
}
