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
//! answers with a small built-in responder ([`Reply::Demo`]). Like Ollama,
//! it stops an answer whose client went away (closed the connection before
//! the answer was whole), and counts it ([`OllamaDouble::abandoned_answers`]).
//!
//! It also serves the OpenAI-compatible routes as Ollama does
//! (`/v1/chat/completions`, `/v1/models`, `/v1/models/MODEL`; see "The
//! OpenAI-compatible endpoint" below): the request is translated to a native
//! chat and answered from the same script, in OpenAI's shape.
//!
//! `POST /api/embed` answers for the embedding models it has (see
//! "Embeddings" below), with Ollama 0.12.6's checks, statuses and error
//! texts. `/api/embeddings` (the older route), `/api/generate`, `/api/ps`,
//! `/v1/completions`, `/v1/embeddings` and the model-management routes are
//! absent (404, as Ollama answers any unknown route): macha does not use
//! them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::serve::Server;
use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

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

/// What the double knows about one embedding model it pretends to have
/// pulled: `/api/show` gives it the capability `embedding` (and not
/// `completion`), `/api/embed` answers with vectors of `dimension` numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbedCaps {
    /// The length of every vector (`<arch>.embedding_length`).
    pub dimension: usize,
    /// Tokens of input the model reads (`<arch>.context_length`); longer
    /// input is cut to it, or refused when the request says `truncate: false`.
    pub context_length: u64,
}

impl EmbedCaps {
    /// The facts of the embedding models [`OllamaDouble::start`] recognises
    /// by name (any tag): `nomic-embed-text` (768 numbers, 2048 tokens),
    /// `mxbai-embed-large` (1024, 512) and `all-minilm` (384, 512), as the
    /// real models have them.
    pub fn known(name: &str) -> Option<EmbedCaps> {
        let base = name.rsplit('/').next().unwrap_or(name);
        let base = base.split(':').next().unwrap_or(base);
        let (dimension, context_length) = match base {
            "nomic-embed-text" => (768, 2048),
            "mxbai-embed-large" => (1024, 512),
            "all-minilm" => (384, 512),
            _ => return None,
        };
        Some(EmbedCaps { dimension, context_length })
    }
}

/// A scripted failure of `POST /api/embed`, taken by the next embed request
/// that passes Ollama's checks ([`OllamaDouble::push_embed`]); without one,
/// the double answers with vectors.
#[derive(Clone, Debug, PartialEq)]
pub enum EmbedFault {
    /// That HTTP status with the body `{"error": text}`.
    Status(u16, String),
    /// Send nothing until the duration has passed, then the vectors, as a
    /// model that is slow to load.
    Hang(Duration),
}

/// One scripted answer to `POST /api/chat`.
///
/// Deserialises from the script-file forms that `ollama-double --script`
/// reads, one JSON object per line: `{"content": "..."}`, `{"json": {..}}`,
/// `{"tool_calls": [{"name": "..", "arguments": {..}}]}`,
/// `{"status": 500, "error": "boom"}`, `{"hang_ms": 5000}`,
/// `{"invalid_json": true}`, `{"garbage": true}`, `{"stream_error": ".."}`,
/// `{"oversized_bytes": 157286400}`, `{"endless_every_ms": 100}`,
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
    /// 200 with a well-formed answer whose content is this many bytes, sent
    /// as it is made (chunked, no `Content-Length`, 64 KiB at a time), as a
    /// runaway server or a broken proxy would: a client must stop reading
    /// rather than hold it all. Shaped as a non-streaming answer of either
    /// API whatever the request asked.
    Oversized(u64),
    /// 200 with the start of an answer, then 4 KiB more of its content every
    /// interval (zero: as fast as the connection takes it), forever: only the
    /// client's size limit or its timeout ends it. Not streaming: one JSON
    /// object that never closes. Streaming: well-formed chunks of 4 KiB of
    /// content each (events on the OpenAI-compatible API), none of them the
    /// last, as a model that never stops.
    Endless(Duration),
    /// 200 with this content, ended before it was complete: at `num_predict`
    /// (`done_reason: length`; OpenAI's `finish_reason: length`), or by
    /// Ollama's repeat guard, which sends no final object: not streaming,
    /// the last chunk (`done: false`, no reason, no counts); streaming, the
    /// chunks and no `done: true` line (OpenAI-compatible: `finish_reason`
    /// null, no `[DONE]`).
    CutOff { content: String, by: CutBy },
    /// The built-in responder: proposes restarting the unit named by an
    /// incident fingerprint `unit-failed:NAME` in the last user message, and
    /// otherwise only notifies. Lets the README demo run without a model.
    Demo,
}

/// What ended a [`Reply::CutOff`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutBy {
    Length,
    Repeat,
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
            Reply::Oversized(n) => format!("oversized ({n} bytes)"),
            Reply::Endless(every) => format!("endless (4 KiB every {}ms)", every.as_millis()),
            Reply::CutOff { content, by } => format!("cut off by {by:?} ({} chars)", content.chars().count()),
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
    Oversized(OversizedLine),
    Endless(EndlessLine),
    CutOff(CutOffLine),
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
struct OversizedLine {
    oversized_bytes: u64,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndlessLine {
    endless_every_ms: u64,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CutOffLine {
    cut_off: CutBy,
    content: String,
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
            ScriptLine::Oversized(l) => Ok(Reply::Oversized(l.oversized_bytes)),
            ScriptLine::Endless(l) => Ok(Reply::Endless(Duration::from_millis(l.endless_every_ms))),
            ScriptLine::CutOff(l) => Ok(Reply::CutOff { content: l.content, by: l.cut_off }),
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
    embedders: Vec<(String, EmbedCaps)>,
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

    /// Adds an embedding model the double claims to have pulled.
    pub fn embedding_model(mut self, name: &str, caps: EmbedCaps) -> Self {
        self.embedders.push((name.to_owned(), caps));
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
            embedders: self.embedders,
            log: self.log,
            held: watch::Sender::new(false),
            inner: Mutex::new(Inner {
                script: self.script.into(),
                default: self.default,
                requests: Vec::new(),
                abandoned: 0,
                embed_faults: VecDeque::new(),
            }),
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
            embedders: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            script: Vec::new(),
            default: Reply::Demo,
            log: false,
        }
    }

    /// Starts a double with these models: the embedding models
    /// [`EmbedCaps::known`] names as such, every other one a chat model
    /// supporting tools.
    pub fn start(models: &[&str]) -> anyhow::Result<OllamaDouble> {
        models
            .iter()
            .fold(Self::builder(), |b, name| match EmbedCaps::known(name) {
                Some(caps) => b.embedding_model(name, caps),
                None => b.model(name, ModelCaps::default()),
            })
            .start()
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

    /// How many chat answers (either API) were stopped because their client
    /// went away first: it closed the connection while the answer was held,
    /// being made, or being sent. Ollama stops generating then, and its
    /// slot serves the next request.
    pub fn abandoned_answers(&self) -> usize {
        self.state.lock().abandoned
    }

    /// How many `POST /api/chat` requests arrived, rejected ones included.
    pub fn chat_requests(&self) -> usize {
        self.state.lock().requests.iter().filter(|r| r.path == "/api/chat").count()
    }

    /// How many `POST /api/embed` requests arrived, rejected ones included.
    pub fn embed_requests(&self) -> usize {
        self.state.lock().requests.iter().filter(|r| r.path == "/api/embed").count()
    }

    /// Queues a failure for a later embed request (first in, first out);
    /// the requests after it are answered again.
    pub fn push_embed(&self, fault: EmbedFault) {
        self.state.lock().embed_faults.push_back(fault);
    }

    /// From now on, chat requests (either API) are received and recorded
    /// but not answered until [`OllamaDouble::release_answers`]: a model busy
    /// for as long as a test needs, with no clock involved.
    pub fn hold_answers(&self) {
        self.state.held.send_replace(true);
    }

    /// Answers every held chat request, and the later ones at once.
    pub fn release_answers(&self) {
        self.state.held.send_replace(false);
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
    embedders: Vec<(String, EmbedCaps)>,
    log: bool,
    /// True while answers are held (see [`OllamaDouble::hold_answers`]).
    held: watch::Sender<bool>,
    inner: Mutex<Inner>,
}

struct Inner {
    script: VecDeque<Reply>,
    default: Reply,
    requests: Vec<RecordedRequest>,
    /// Answers whose client went away before they were whole.
    abandoned: usize,
    embed_faults: VecDeque<EmbedFault>,
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

    /// Looks an embedding model up, as [`Shared::model`] does.
    fn embedder(&self, name: &str) -> Option<EmbedCaps> {
        let wanted = canonical(name);
        self.embedders.iter().find(|(n, _)| canonical(n) == wanted).map(|(_, c)| *c)
    }

    /// Every model's name, chat models first.
    fn names(&self) -> impl Iterator<Item = &str> {
        self.models.iter().map(|(n, _)| n.as_str()).chain(self.embedders.iter().map(|(n, _)| n.as_str()))
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

    /// Returns once answers are not held.
    async fn released(&self) {
        let mut held = self.held.subscribe();
        // The sender lives as long as `self`.
        let _ = held.wait_for(|h| !*h).await;
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
        .route("/api/embed", post(embed))
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/models", get(openai_models))
        .route("/v1/models/{*model}", get(openai_model))
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
        .names()
        .map(|name| {
            let f = facts(name);
            let (size, details) = match s.embedder(name) {
                // F16, two bytes a parameter.
                Some(_) => ((EMBED_PARAMETERS * 2.0) as u64, embed_details(name)),
                // Q4_K_M stores about 4.85 bits per parameter.
                None => ((f.parameters * 0.606) as u64, details(&f)),
            };
            json!({
                "name": name,
                "model": name,
                "modified_at": MODIFIED_AT,
                "size": size,
                "digest": f.digest,
                "details": details,
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
    if let Some(caps) = s.embedder(&name) {
        s.record(&method, "/api/show", request, None, "200");
        return json_response(StatusCode::OK, &show_embedder(&name, caps));
    }
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

/// Parameters of the embedding models the double knows (nomic-embed-text
/// has 137M).
const EMBED_PARAMETERS: f64 = 137e6;

/// The architecture Ollama names for an embedding model.
fn embed_architecture(name: &str) -> &'static str {
    if name.rsplit('/').next().unwrap_or(name).starts_with("nomic") {
        "nomic-bert"
    } else {
        "bert"
    }
}

fn embed_details(name: &str) -> Value {
    let arch = embed_architecture(name);
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch],
        "parameter_size": "137M",
        "quantization_level": "F16",
    })
}

/// `/api/show` of an embedding model: no template, the capability
/// `embedding` alone, and its length, context and pooling in `model_info`.
fn show_embedder(name: &str, caps: EmbedCaps) -> Value {
    let f = facts(name);
    let arch = embed_architecture(name);
    let modelfile = format!(
        "# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM {name}\n\nFROM /usr/share/ollama/.ollama/models/blobs/sha256-{}\nTEMPLATE {{{{ .Prompt }}}}\nPARAMETER num_ctx {}\n",
        f.digest, caps.context_length
    );
    let mut info = Map::new();
    info.insert("general.architecture".into(), json!(arch));
    info.insert("general.file_type".into(), json!(1));
    info.insert("general.parameter_count".into(), json!(EMBED_PARAMETERS as u64));
    info.insert(format!("{arch}.context_length"), json!(caps.context_length));
    info.insert(format!("{arch}.embedding_length"), json!(caps.dimension));
    info.insert(format!("{arch}.pooling_type"), json!(1));
    info.insert(format!("{arch}.block_count"), json!(12));
    json!({
        "modelfile": modelfile,
        "parameters": format!("{:<31}{}", "num_ctx", caps.context_length),
        "template": "{{ .Prompt }}",
        "details": embed_details(name),
        "model_info": info,
        "capabilities": ["embedding"],
        "modified_at": MODIFIED_AT,
    })
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
    if s.embedder(model).is_some() {
        // Ollama joins the capabilities it misses with a newline.
        let missing = if tools.is_empty() { "completion" } else { "completion\ntools" };
        return reject(StatusCode::BAD_REQUEST, format!("{} does not support {missing}", qualified(model)));
    }
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
    let mut reply = s.next_reply();
    if let (Some(_), Reply::ToolCalls(calls)) = (field("format"), &reply) {
        // With `format`, Ollama constrains the output to JSON, so the model
        // cannot emit the control tokens of a tool call: it writes the call
        // as text and `tool_calls` stays empty.
        let text = calls.iter().map(|(name, arguments)| json!({"name": name, "parameters": arguments})).collect();
        reply = Reply::Json(Value::Array(text));
    }
    let plan = Plan::Answer { model: model.to_owned(), stream, prompt_chars, last_user, reply };
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
            let watch = Answering::new(&s);
            s.released().await;
            watch.until_sent(answer(Answer { model, stream, prompt_chars, last_user }, reply).await)
        }
    }
}

// Embeddings, as Ollama 0.12.6's `EmbedHandler` makes them. The request
// `{model, input: string | [string], truncate (default true), dimensions,
// keep_alive, options}` is checked in the server's order: decoding (Go's
// errors for a field of the wrong type), `input` (a string, or a list of
// strings; anything else is `invalid input type`), the model (404 `model
// 'x' not found`, quoted as the embed route quotes it), then an empty
// input answers `{"model", "embeddings": []}` at once. Each text is counted
// at about four characters a token (as the chat stats count) against the
// context, `options.num_ctx` (default 4096) or the model's own if smaller:
// longer input is cut to it, or with `truncate: false` refused (400 `input
// exceeds maximum context length`). Only then does the runner embed: a chat
// model's runner cannot (0.12.6 answers 500 `this model does not support
// embeddings`; later releases send the same text with 501). `dimensions`
// below the model's length keeps the first numbers, normalised again.
//
// The vectors are deterministic and made from the text so that texts that
// share words are near: every word of the lowercased text (a run of letters
// and digits) counts 1.0 and each of its character trigrams (of the word
// with `^` and `$` around it, so short words and word edges count too)
// 0.5, hashed (FNV-1a, 64 bits) to one of `dimension` positions with a
// sign taken from another bit of the hash (the "hashing trick", so that
// collisions cancel rather than pile up); a text without letters or digits
// counts as one feature of its whole text. The sum is L2-normalised, as
// Ollama returns it. Cosine similarity is then the overlap of words and
// spellings, which is what tests of retrieval need; it knows no synonyms.

/// Ollama's default `num_ctx` (`OLLAMA_CONTEXT_LENGTH`) in 0.12.6.
const DEFAULT_NUM_CTX: u64 = 4096;

/// A deterministic embedding of `text` with `dimension` numbers (see the
/// comment above): the double's stand-in for a model's vector.
pub fn embedding(text: &str, dimension: usize) -> Vec<f32> {
    let mut v = vec![0f32; dimension.max(1)];
    let mut add = |feature: &str, weight: f32| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in feature.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let i = (h % v.len() as u64) as usize;
        v[i] += if h >> 63 == 0 { weight } else { -weight };
    };
    let lower = text.to_lowercase();
    let mut words = 0;
    for word in lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        words += 1;
        add(&format!("w:{word}"), 1.0);
        let padded: Vec<char> = std::iter::once('^').chain(word.chars()).chain(std::iter::once('$')).collect();
        for gram in padded.windows(3) {
            add(&format!("t:{}", gram.iter().collect::<String>()), 0.5);
        }
    }
    if words == 0 {
        add(&format!("x:{lower}"), 1.0);
    }
    normalised(v)
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// What an embed request turned into once checked.
enum EmbedPlan {
    Reject(StatusCode, String),
    Answer { model: String, texts: Vec<String>, caps: Option<EmbedCaps>, truncate: bool, num_ctx: u64, dimensions: u64 },
}

/// Checks an embed request as Ollama does (see the comment above), up to
/// the point where the model is loaded.
fn plan_embed(s: &Shared, request: &Value) -> EmbedPlan {
    let reject = |status, text: String| EmbedPlan::Reject(status, text);
    let Value::Object(req) = request else {
        return reject(
            StatusCode::BAD_REQUEST,
            format!("json: cannot unmarshal {} into Go value of type api.EmbedRequest", go_kind(request)),
        );
    };
    let field = |k: &str| req.get(k).filter(|v| !v.is_null());
    let unmarshal = |v: &Value, key: &str, ty: &str| {
        reject(
            StatusCode::BAD_REQUEST,
            format!("json: cannot unmarshal {} into Go struct field EmbedRequest.{key} of type {ty}", go_kind(v)),
        )
    };
    let model = match field("model") {
        None => "",
        Some(Value::String(m)) => m.as_str(),
        Some(v) => return unmarshal(v, "model", "string"),
    };
    let truncate = match field("truncate") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => return unmarshal(v, "truncate", "bool"),
    };
    let dimensions = match field("dimensions") {
        None => 0,
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.as_u64().unwrap_or(0),
        Some(v) => return unmarshal(v, "dimensions", "int"),
    };
    let options = match field("options") {
        None => None,
        Some(Value::Object(o)) => Some(o),
        Some(v) => return unmarshal(v, "options", "map[string]interface {}"),
    };
    let texts: Vec<String> = match field("input") {
        None => Vec::new(),
        Some(Value::String(t)) if t.is_empty() => Vec::new(),
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(items)) => {
            let strings: Option<Vec<String>> = items.iter().map(|i| i.as_str().map(str::to_owned)).collect();
            match strings {
                Some(strings) => strings,
                None => return reject(StatusCode::BAD_REQUEST, "invalid input type".into()),
            }
        }
        Some(_) => return reject(StatusCode::BAD_REQUEST, "invalid input type".into()),
    };
    let caps = s.embedder(model);
    let chat_model = !model.is_empty() && s.model(model).is_some();
    if caps.is_none() && !chat_model {
        return reject(StatusCode::NOT_FOUND, format!("model '{model}' not found"));
    }
    let num_ctx = options.and_then(|o| o.get("num_ctx")).and_then(Value::as_u64).unwrap_or(DEFAULT_NUM_CTX);
    EmbedPlan::Answer { model: model.to_owned(), texts, caps, truncate, num_ctx, dimensions }
}

async fn embed(State(s): State<Arc<Shared>>, method: Method, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let text = if body.iter().all(u8::is_ascii_whitespace) {
                "missing request body".to_owned()
            } else {
                e.to_string()
            };
            s.record(&method, "/api/embed", Value::Null, None, "400");
            return error_response(StatusCode::BAD_REQUEST, &text);
        }
    };
    let started = Instant::now();
    let (model, texts, caps, truncate, num_ctx, dimensions) = match plan_embed(&s, &request) {
        EmbedPlan::Reject(status, text) => {
            s.record(&method, "/api/embed", request, None, status.as_str());
            return error_response(status, &text);
        }
        EmbedPlan::Answer { model, texts, caps, truncate, num_ctx, dimensions } => {
            (model, texts, caps, truncate, num_ctx, dimensions)
        }
    };
    let fault = if texts.is_empty() { None } else { s.lock().embed_faults.pop_front() };
    let outcome = match &fault {
        None => format!("{} vectors", texts.len()),
        Some(EmbedFault::Status(code, _)) => format!("status {code}"),
        Some(EmbedFault::Hang(d)) => format!("hang {}ms", d.as_millis()),
    };
    s.record(&method, "/api/embed", request, None, &outcome);
    match fault {
        Some(EmbedFault::Status(code, text)) => {
            return error_response(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &text)
        }
        Some(EmbedFault::Hang(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    if texts.is_empty() {
        return json_response(StatusCode::OK, &json!({ "model": model, "embeddings": [] }));
    }
    // A chat model has a context too; its runner refuses afterwards.
    let context = caps.map_or(ModelCaps::default().context_length, |c| c.context_length);
    let limit = num_ctx.min(context);
    let mut tokens = 0u64;
    let mut cut = Vec::with_capacity(texts.len());
    for text in texts {
        let count = (text.chars().count() as u64).div_ceil(4);
        if count > limit {
            if !truncate {
                return error_response(StatusCode::BAD_REQUEST, "input exceeds maximum context length");
            }
            // Room for the begin and end tokens the tokenizer adds.
            let keep = limit.saturating_sub(2);
            tokens += keep;
            cut.push(text.chars().take((keep * 4) as usize).collect::<String>());
        } else {
            tokens += count;
            cut.push(text);
        }
    }
    let Some(caps) = caps else {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "this model does not support embeddings");
    };
    let embeddings: Vec<Vec<f32>> = cut
        .iter()
        .map(|text| {
            let v = embedding(text, caps.dimension);
            match usize::try_from(dimensions) {
                Ok(d) if d > 0 && d < v.len() => normalised(v[..d].to_vec()),
                _ => v,
            }
        })
        .collect();
    let load = 1_234_567u64;
    let total = load + started.elapsed().as_nanos() as u64 + tokens * 100_000;
    json_response(
        StatusCode::OK,
        &json!({
            "model": model,
            "embeddings": embeddings,
            "total_duration": total,
            "load_duration": load,
            "prompt_eval_count": tokens,
        }),
    )
}

/// An answer on its way to its client. Dropped before it was sent whole
/// (hyper drops the handler, or the body, when the client closes the
/// connection), it counts as abandoned.
struct Answering {
    shared: Arc<Shared>,
    sent: bool,
}

impl Answering {
    fn new(shared: &Arc<Shared>) -> Self {
        Self { shared: shared.clone(), sent: false }
    }

    /// `response`, its body carrying this watch until the last byte is out.
    fn until_sent(self, response: Response) -> Response {
        let (parts, body) = response.into_parts();
        let stream =
            futures_util::stream::unfold((body.into_data_stream(), self), |(mut body, mut watch)| async move {
                use futures_util::StreamExt as _;
                match body.next().await {
                    Some(piece) => Some((piece, (body, watch))),
                    None => {
                        watch.done();
                        None
                    }
                }
            });
        Response::from_parts(parts, Body::from_stream(stream))
    }
}

impl Answering {
    fn done(&mut self) {
        self.sent = true;
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if !self.sent {
            self.shared.lock().abandoned += 1;
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

/// What a scripted reply comes to, before either API shapes it.
enum Produced {
    /// The model's message and the timing stats of the final object;
    /// `cut`: ended before it was complete.
    Message {
        content: String,
        tool_calls: Option<Value>,
        stats: Map<String, Value>,
        cut: Option<CutBy>,
    },
    Status(StatusCode, String),
    Garbage,
    StreamError(String),
    /// Content of this many bytes (`None`: without end), one piece of
    /// `piece` bytes every `every`.
    Flood {
        total: Option<u64>,
        piece: usize,
        every: Duration,
    },
}

/// Plays a reply: waits out a hang, builds the demo answer, counts tokens.
async fn produce(a: &Answer, reply: Reply) -> Produced {
    let mut cut = None;
    let (content, tool_calls) = match reply {
        Reply::Content(c) => (c, None),
        Reply::CutOff { content, by } => {
            cut = Some(by);
            (content, None)
        }
        Reply::Json(v) => (v.to_string(), None),
        Reply::InvalidJson => (INVALID_JSON_CONTENT.to_owned(), None),
        Reply::Demo => (demo_decision(&a.last_user).to_string(), None),
        Reply::ToolCalls(calls) => (String::new(), Some(tool_calls_json(calls))),
        Reply::Hang(duration) => {
            tokio::time::sleep(duration).await;
            (demo_decision(&a.last_user).to_string(), None)
        }
        Reply::Status(code, text) => {
            return Produced::Status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), text);
        }
        Reply::Garbage => return Produced::Garbage,
        Reply::StreamError(text) => return Produced::StreamError(text),
        Reply::Oversized(n) => return Produced::Flood { total: Some(n), piece: 64 * 1024, every: Duration::ZERO },
        Reply::Endless(every) => return Produced::Flood { total: None, piece: 4096, every },
    };
    let stats = stats(a.prompt_chars, content.chars().count() + tool_calls.as_ref().map_or(0, |t| t.to_string().len()));
    Produced::Message { content, tool_calls, stats, cut }
}

async fn answer(a: Answer, reply: Reply) -> Response {
    let (content, tool_calls, stats, cut) = match produce(&a, reply).await {
        Produced::Message { content, tool_calls, stats, cut } => (content, tool_calls, stats, cut),
        Produced::Status(status, text) => return error_response(status, &text),
        Produced::Garbage => {
            let cut =
                format!("{{\"model\":\"{}\",\"created_at\":\"{}\",\"message\":{{\"role\":\"assis", a.model, now());
            let kind = if a.stream { "application/x-ndjson" } else { JSON_TYPE };
            return (StatusCode::OK, [(header::CONTENT_TYPE, kind)], cut).into_response();
        }
        Produced::StreamError(text) => {
            if !a.stream {
                return error_response(StatusCode::INTERNAL_SERVER_ERROR, &text);
            }
            let lines = vec![chunk(&a.model, "The", None), json!({ "error": text })];
            return ndjson(lines);
        }
        Produced::Flood { total: None, piece, every } if a.stream => {
            let content = "x".repeat(piece);
            let model = a.model.clone();
            return endless("application/x-ndjson", every, move || format!("{}\n", chunk(&model, &content, None)));
        }
        Produced::Flood { total, piece, every } => {
            let prefix = format!(
                "{{\"model\":\"{}\",\"created_at\":\"{}\",\"message\":{{\"role\":\"assistant\",\"content\":\"",
                a.model,
                now()
            );
            let suffix = "\"},\"done\":true,\"done_reason\":\"length\"}";
            return flood(prefix, suffix, total, piece, every);
        }
    };
    let final_object = |content: &str, tool_calls: Option<Value>| {
        let mut done = chunk(&a.model, content, tool_calls);
        let map = done.as_object_mut().expect("chunk is an object");
        map.insert("done".into(), Value::Bool(true));
        map.insert("done_reason".into(), if cut == Some(CutBy::Length) { "length" } else { "stop" }.into());
        map.extend(stats.clone());
        done
    };
    if !a.stream {
        if cut == Some(CutBy::Repeat) {
            return json_response(StatusCode::OK, &chunk(&a.model, &content, None));
        }
        return json_response(StatusCode::OK, &final_object(&content, tool_calls));
    }
    let mut lines: Vec<Value> = fragments(&content).map(|f| chunk(&a.model, f, None)).collect();
    if let Some(calls) = tool_calls {
        lines.push(chunk(&a.model, "", Some(calls)));
    }
    if cut != Some(CutBy::Repeat) {
        lines.push(final_object("", None));
    }
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
    split_stream("application/x-ndjson", lines.into_iter().map(|line| format!("{line}\n")).collect())
}

/// Streams the texts, each cut in two body chunks (see [`ndjson`]).
fn split_stream(content_type: &'static str, texts: Vec<String>) -> Response {
    let mut pieces: VecDeque<Bytes> = VecDeque::new();
    for text in texts {
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
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], Body::from_stream(stream)).into_response()
}

/// A JSON answer sent as it is made: `prefix`, then content (`x`) in pieces
/// of `piece` bytes, one every `every`, `total` bytes of it (then `suffix`)
/// or without end. Nothing of it is held in memory but one piece.
fn flood(prefix: String, suffix: &'static str, total: Option<u64>, piece: usize, every: Duration) -> Response {
    struct Flood {
        prefix: Option<Bytes>,
        left: Option<u64>,
        suffix: Option<Bytes>,
        piece: Bytes,
        every: Duration,
    }
    let start = Flood {
        prefix: Some(Bytes::from(prefix)),
        left: total,
        suffix: Some(Bytes::from_static(suffix.as_bytes())),
        piece: Bytes::from(vec![b'x'; piece]),
        every,
    };
    let stream = futures_util::stream::unfold(start, |mut f| async move {
        if let Some(prefix) = f.prefix.take() {
            return Some((Ok::<_, std::convert::Infallible>(prefix), f));
        }
        let next = match f.left {
            Some(0) => f.suffix.take()?,
            Some(left) => {
                let n = left.min(f.piece.len() as u64);
                f.left = Some(left - n);
                f.piece.slice(..n as usize)
            }
            None => f.piece.clone(),
        };
        if !f.every.is_zero() {
            tokio::time::sleep(f.every).await;
        }
        Some((Ok(next), f))
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, JSON_TYPE)], Body::from_stream(stream)).into_response()
}

/// A stream of `next()`'s texts, one every `every` (zero: as fast as the
/// connection takes them), without end.
fn endless(content_type: &'static str, every: Duration, next: impl Fn() -> String + Send + 'static) -> Response {
    let stream = futures_util::stream::unfold(next, move |next| async move {
        if !every.is_zero() {
            tokio::time::sleep(every).await;
        }
        let piece = Bytes::from(next());
        Some((Ok::<_, std::convert::Infallible>(piece), next))
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], Body::from_stream(stream)).into_response()
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

// The OpenAI-compatible endpoint, as Ollama serves it: its middleware
// translates the request into a native chat (the same checks and the same
// script answer it) and the native answer back into OpenAI's shape. What a
// client sees that differs from the native API: `choices[0].message`,
// `usage.prompt_tokens` / `completion_tokens`, no durations, tool-call
// arguments as a JSON *string* with an `id` and `type: "function"`,
// `finish_reason` `tool_calls` when calls come back, streaming only when
// asked (`"stream": true`, server-sent events ending in `data: [DONE]`), and
// errors as `{"error": {"message", "type", "param", "code"}}` with `type`
// `invalid_request_error` (400), `not_found_error` (404) or `api_error`.
// Unset `temperature` and `top_p` become 1.0, as Ollama sets them.
//
// One choice of the double: a [`Reply::StreamError`] is answered as HTTP 500
// with the error body on this API, also when streaming (what Ollama sends
// after an OpenAI stream has begun was not reproduced).

const OPENAI_CHAT: &str = "/v1/chat/completions";

/// An OpenAI-shaped error body with the status's error type.
fn openai_error(status: StatusCode, message: &str) -> Response {
    let kind = match status {
        StatusCode::BAD_REQUEST => "invalid_request_error",
        StatusCode::NOT_FOUND => "not_found_error",
        _ => "api_error",
    };
    json_response(status, &json!({ "error": { "message": message, "type": kind, "param": null, "code": null } }))
}

/// A chat completion request translated into a native one.
struct Translated {
    native: Value,
    include_usage: bool,
}

/// The Go type name `%T` prints for a decoded JSON value.
fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// Checks that each present, non-null field has the type Go's decoder wants.
fn check_types(object: &Map<String, Value>, path: &str, fields: &[(&str, &str)]) -> Result<(), String> {
    for (key, ty) in fields {
        let Some(v) = object.get(*key).filter(|v| !v.is_null()) else { continue };
        let fits = match *ty {
            "string" => v.is_string(),
            "bool" => v.is_boolean(),
            "number" => v.is_number(),
            "array" => v.is_array(),
            _ => v.is_object(),
        };
        if !fits {
            return Err(format!(
                "json: cannot unmarshal {} into Go struct field ChatCompletionRequest.{path}{key} of type {ty}",
                go_kind(v)
            ));
        }
    }
    Ok(())
}

/// Translates the request as Ollama's middleware does, with its error texts.
fn from_openai(request: &Value) -> Result<Translated, String> {
    let Value::Object(req) = request else {
        return Err(format!(
            "json: cannot unmarshal {} into Go value of type openai.ChatCompletionRequest",
            go_kind(request)
        ));
    };
    check_types(
        req,
        "",
        &[
            ("model", "string"),
            ("stream", "bool"),
            ("messages", "array"),
            ("max_tokens", "number"),
            ("temperature", "number"),
            ("top_p", "number"),
            ("seed", "number"),
            ("tools", "array"),
            ("response_format", "object"),
            ("stream_options", "object"),
        ],
    )?;
    let messages = req.get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if messages.is_empty() {
        return Err("[] is too short - 'messages'".into());
    }
    let mut native_messages = Vec::new();
    for m in messages {
        native_messages.extend(translate_message(m, messages)?);
    }
    let number = |k: &str| req.get(k).filter(|v| v.is_number()).cloned();
    let mut options = Map::new();
    if let Some(n) = number("max_tokens") {
        options.insert("num_predict".into(), n);
    }
    options.insert("temperature".into(), number("temperature").unwrap_or(json!(1.0)));
    options.insert("top_p".into(), number("top_p").unwrap_or(json!(1.0)));
    if let Some(seed) = number("seed") {
        options.insert("seed".into(), seed);
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let mut native = json!({
        "model": req.get("model").cloned().unwrap_or(Value::Null),
        "messages": native_messages,
        "stream": stream,
        "options": options,
    });
    if let Some(format) = response_format(req.get("response_format")) {
        native["format"] = format;
    }
    if let Some(tools) = req.get("tools").filter(|t| !t.is_null()) {
        native["tools"] = tools.clone();
    }
    let include_usage = request.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    Ok(Translated { native, include_usage })
}

/// `json_object` is format `"json"`; `json_schema` is its schema; any other type, none.
fn response_format(rf: Option<&Value>) -> Option<Value> {
    let rf = rf?;
    match rf.get("type").and_then(Value::as_str).map(|t| t.trim().to_lowercase()).as_deref() {
        Some("json_object") => Some(json!("json")),
        Some("json_schema") => rf.pointer("/json_schema/schema").cloned(),
        _ => None,
    }
}

/// One OpenAI message as native messages: text parts become messages of
/// their own, tool-call arguments are parsed from their string, and a tool
/// result is named by `name` or by the call its `tool_call_id` answers.
fn translate_message(m: &Value, all: &[Value]) -> Result<Vec<Value>, String> {
    let Value::Object(msg) = m else {
        return Err(format!(
            "json: cannot unmarshal {} into Go struct field ChatCompletionRequest.messages of type openai.Message",
            go_kind(m)
        ));
    };
    check_types(
        msg,
        "messages.",
        &[("role", "string"), ("name", "string"), ("tool_call_id", "string"), ("tool_calls", "array")],
    )?;
    let text = |k: &str| msg.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let role = text("role");
    let calls = msg.get("tool_calls").and_then(Value::as_array);
    let native_calls = match calls {
        Some(calls) => Some(calls.iter().map(native_tool_call).collect::<Result<Vec<_>, _>>()?),
        None => None,
    };
    let tool_name = if role.eq_ignore_ascii_case("tool") {
        let name = text("name");
        if name.is_empty() {
            tool_name_of(&text("tool_call_id"), all)
        } else {
            name
        }
    } else {
        String::new()
    };
    let base = |content: &str| {
        let mut v = json!({ "role": role, "content": content });
        if !tool_name.is_empty() {
            v["tool_name"] = json!(tool_name);
        }
        v
    };
    let mut out = match msg.get("content").unwrap_or(&Value::Null) {
        Value::String(content) => vec![base(content)],
        Value::Array(parts) => parts
            .iter()
            .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                (Some("text"), Some(t)) => Ok(base(t)),
                _ => Err("invalid message format".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Value::Null if native_calls.is_some() => vec![base("")],
        other => return Err(format!("invalid message content type: {}", go_type(other))),
    };
    if let (Some(calls), Some(last)) = (native_calls, out.last_mut()) {
        last["tool_calls"] = Value::Array(calls);
    }
    Ok(out)
}

/// An OpenAI tool call as a native one: the arguments string must hold JSON.
fn native_tool_call(call: &Value) -> Result<Value, String> {
    let name = call.pointer("/function/name").and_then(Value::as_str).unwrap_or("");
    let arguments = match call.pointer("/function/arguments") {
        None | Some(Value::Null) => "",
        Some(Value::String(a)) => a.as_str(),
        Some(other) => {
            return Err(format!(
                "json: cannot unmarshal {} into Go struct field ChatCompletionRequest.messages.tool_calls.function.arguments of type string",
                go_kind(other)
            ))
        }
    };
    let parsed: Map<String, Value> =
        serde_json::from_str(arguments).map_err(|_| "invalid tool call arguments".to_owned())?;
    Ok(json!({ "function": { "name": name, "arguments": parsed } }))
}

/// The function name of the last call with this id.
fn tool_name_of(id: &str, all: &[Value]) -> String {
    if id.is_empty() {
        return String::new();
    }
    all.iter()
        .rev()
        .filter_map(|m| m.get("tool_calls").and_then(Value::as_array))
        .flatten()
        .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
        .and_then(|c| c.pointer("/function/name").and_then(Value::as_str))
        .unwrap_or("")
        .to_owned()
}

async fn openai_chat(State(s): State<Arc<Shared>>, method: Method, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            s.record(&method, OPENAI_CHAT, Value::Null, None, "400");
            return openai_error(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    let translated = match from_openai(&request) {
        Ok(t) => t,
        Err(text) => {
            s.record(&method, OPENAI_CHAT, request, None, "400");
            return openai_error(StatusCode::BAD_REQUEST, &text);
        }
    };
    let (plan, schema_valid) = plan_chat(&s, &translated.native);
    let outcome = match &plan {
        Plan::Reject(status, _) => status.as_u16().to_string(),
        Plan::Load { .. } => "200 (load)".into(),
        Plan::Answer { reply, .. } => reply.label(),
    };
    s.record(&method, OPENAI_CHAT, request, schema_valid, &outcome);
    match plan {
        Plan::Reject(status, text) => openai_error(status, &text),
        // The middleware refuses empty `messages` first, so this is never reached.
        Plan::Load { model } => openai_error(StatusCode::BAD_REQUEST, &format!("nothing to answer for {model}")),
        Plan::Answer { model, stream, prompt_chars, last_user, reply } => {
            let watch = Answering::new(&s);
            s.released().await;
            let a = Answer { model, stream, prompt_chars, last_user };
            watch.until_sent(openai_answer(a, reply, translated.include_usage).await)
        }
    }
}

/// `chatcmpl-N`, N below 999, as Ollama numbers its completions.
fn completion_id() -> String {
    format!("chatcmpl-{}", chrono::Utc::now().timestamp_subsec_nanos() % 999)
}

async fn openai_answer(a: Answer, reply: Reply, include_usage: bool) -> Response {
    let (content, tool_calls, stats, cut) = match produce(&a, reply).await {
        Produced::Message { content, tool_calls, stats, cut } => (content, tool_calls, stats, cut),
        Produced::Status(status, text) => return openai_error(status, &text),
        Produced::StreamError(text) => return openai_error(StatusCode::INTERNAL_SERVER_ERROR, &text),
        Produced::Garbage => {
            let cut = format!(
                "{{\"id\":\"{}\",\"object\":\"chat.completion\",\"created\":{},\"model\":\"{}\",\"choi",
                completion_id(),
                chrono::Utc::now().timestamp(),
                a.model
            );
            let kind = if a.stream { "text/event-stream" } else { JSON_TYPE };
            return (StatusCode::OK, [(header::CONTENT_TYPE, kind)], cut).into_response();
        }
        Produced::Flood { total: None, piece, every } if a.stream => {
            let content = "x".repeat(piece);
            let model = a.model.clone();
            return endless("text/event-stream", every, move || {
                let event = json!({
                    "id": completion_id(),
                    "object": "chat.completion.chunk",
                    "created": chrono::Utc::now().timestamp(),
                    "model": model,
                    "choices": [{ "index": 0, "delta": { "role": "assistant", "content": content }, "finish_reason": null }],
                });
                format!("data: {event}\n\n")
            });
        }
        Produced::Flood { total, piece, every } => {
            let prefix = format!(
                "{{\"id\":\"{}\",\"object\":\"chat.completion\",\"created\":{},\"model\":\"{}\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"",
                completion_id(),
                chrono::Utc::now().timestamp(),
                a.model
            );
            return flood(prefix, "\"},\"finish_reason\":\"length\"}]}", total, piece, every);
        }
    };
    let count = |k: &str| stats.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (prompt, completion) = (count("prompt_eval_count"), count("eval_count"));
    let usage =
        json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion });
    let calls = tool_calls.map(openai_tool_calls);
    let finish = match cut {
        Some(CutBy::Repeat) => None,
        Some(CutBy::Length) => Some("length"),
        None if calls.is_some() => Some("tool_calls"),
        None => Some("stop"),
    };
    let envelope = |object: &str, choices: Value| {
        json!({
            "id": completion_id(),
            "object": object,
            "created": chrono::Utc::now().timestamp(),
            "model": a.model,
            "system_fingerprint": "fp_ollama",
            "choices": choices,
        })
    };
    if !a.stream {
        let mut message = json!({ "role": "assistant", "content": content });
        if let Some(calls) = calls {
            message["tool_calls"] = calls;
        }
        let mut completion =
            envelope("chat.completion", json!([{ "index": 0, "message": message, "finish_reason": finish }]));
        completion["usage"] = usage;
        return json_response(StatusCode::OK, &completion);
    }
    let delta = |content: &str, calls: Option<&Value>, finish: Option<&str>| {
        let mut delta = json!({ "role": "assistant", "content": content });
        if let Some(calls) = calls {
            delta["tool_calls"] = calls.clone();
        }
        envelope("chat.completion.chunk", json!([{ "index": 0, "delta": delta, "finish_reason": finish }]))
    };
    let mut events: Vec<Value> = fragments(&content).map(|f| delta(f, None, None)).collect();
    if let Some(calls) = &calls {
        events.push(delta("", Some(calls), None));
    }
    if finish.is_none() {
        let texts = events.into_iter().map(|e| format!("data: {e}\n\n")).collect();
        return split_stream("text/event-stream", texts);
    }
    events.push(delta("", None, finish));
    if include_usage {
        let mut last = envelope("chat.completion.chunk", json!([]));
        last["usage"] = usage;
        events.push(last);
    }
    let mut texts: Vec<String> = events.into_iter().map(|e| format!("data: {e}\n\n")).collect();
    texts.push("data: [DONE]\n\n".into());
    split_stream("text/event-stream", texts)
}

/// Native tool calls (arguments an object) in OpenAI's shape (a string).
fn openai_tool_calls(native: Value) -> Value {
    let calls = native.as_array().cloned().unwrap_or_default();
    Value::Array(
        calls
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let arguments = c.pointer("/function/arguments").cloned().unwrap_or_else(|| json!({}));
                json!({
                    "id": c.get("id").cloned().unwrap_or_else(|| json!(format!("call_{i}"))),
                    "index": i,
                    "type": "function",
                    "function": {
                        "name": c.pointer("/function/name").cloned().unwrap_or_default(),
                        "arguments": arguments.to_string(),
                    },
                })
            })
            .collect(),
    )
}

/// What `/v1/models` says about one model.
fn openai_model_entry(name: &str) -> Value {
    let created = chrono::DateTime::parse_from_rfc3339(MODIFIED_AT).map(|t| t.timestamp()).unwrap_or(0);
    json!({ "id": name, "object": "model", "created": created, "owned_by": "library" })
}

async fn openai_models(State(s): State<Arc<Shared>>, method: Method) -> Response {
    s.record(&method, "/v1/models", Value::Null, None, "200");
    let data: Vec<Value> = s.names().map(openai_model_entry).collect();
    json_response(StatusCode::OK, &json!({ "object": "list", "data": data }))
}

async fn openai_model(State(s): State<Arc<Shared>>, method: Method, Path(model): Path<String>) -> Response {
    let path = format!("/v1/models/{model}");
    if s.model(&model).is_none() && s.embedder(&model).is_none() {
        s.record(&method, &path, Value::Null, None, "404");
        return openai_error(StatusCode::NOT_FOUND, &format!("model '{model}' not found"));
    }
    s.record(&method, &path, Value::Null, None, "200");
    json_response(StatusCode::OK, &openai_model_entry(&model))
}
