//! A faithful double of a Gotify server's message API (the "receiver").
//!
//! No Gotify server can be installed on the machines that run macha's tests,
//! so the tests send their notifications here. It reproduces what a client
//! can observe of the real server (`reference/protocols.md`, "Gotify"):
//!
//! - `POST /message` takes the application token from the first of query
//!   `?token=`, header `X-Gotify-Key`, header `Authorization: Bearer` that is
//!   non-empty; a later source is never consulted, so a wrong query token
//!   fails even with a right header. No token, a wrong one, or a *client*
//!   token answers 401 with Gotify's exact error body.
//! - The body is decoded the way Gotify's framework (gin) does: as JSON only
//!   when the media type is exactly `application/json` (parameters such as
//!   `charset` allowed, compared case-sensitively); anything else, a missing
//!   `Content-Type` included, is form binding, which reads a
//!   `application/x-www-form-urlencoded` body and the query string, so a JSON
//!   body sent without its content type is a 400 "Field 'message' is
//!   required". JSON follows Go's decoder: only the first value of the body
//!   is read, keys match case-insensitively, unknown keys are ignored, a
//!   wrong type is a 400 naming the Go field, and `extras` numbers come back
//!   as Go's `float64` (large integers lose precision).
//! - A blank title (after trimming) becomes the application's name, an
//!   absent or `null` priority the application's default; client-sent `id`,
//!   `appid` and `date` are type-checked, then ignored.
//! - Answers are Go-encoded: `application/json; charset=utf-8`, `<`, `>` and
//!   `&` escaped as `\u003c`, `\u003e`, `\u0026`, `extras` omitted when
//!   absent or empty, `date` in RFC 3339 with trailing zeros of the fraction
//!   trimmed (in UTC, as in a container).
//! - `POST /message/` answers 307 to `/message` (gin's trailing-slash
//!   redirect, query kept); `GET /health`, `GET /version`; anything else is
//!   gin's `404 page not found`.
//!
//! Not reproduced: users and basic auth (any credentials are unknown, so
//! 401), XML/YAML/multipart bodies (treated as form binding without a body),
//! the listing and deletion routes, the WebSocket stream, persistence across
//! a restart (a restarted receiver starts with an empty database, ids from 1).
//! Go's JSON syntax-error texts are approximated.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::serve::Server;
use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use serde_json::{Map, Number, Value};

/// Where the token of a request was found; tests assert that macha keeps it
/// out of the URL (and so out of proxy and access logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `?token=T` in the request target.
    Query,
    /// The `X-Gotify-Key: T` header.
    Header,
    /// The `Authorization: Bearer T` header.
    Bearer,
}

impl TokenSource {
    /// `"query"`, `"header"` or `"bearer"`, for messages and comparisons.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Query => "query",
            TokenSource::Header => "header",
            TokenSource::Bearer => "bearer",
        }
    }
}

/// A message the receiver accepted, as Gotify stored it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedMessage {
    /// 1 for the first accepted message, then increasing.
    pub id: u64,
    /// The application whose token was used: its 1-based position among the
    /// configured applications.
    pub appid: u64,
    pub message: String,
    /// As stored: a blank or absent title is the application's name.
    pub title: String,
    /// As stored: an absent priority is the application's default.
    pub priority: i64,
    /// As answered: `Null` when absent, `null` or `{}` (Gotify omits them).
    pub extras: Value,
    /// RFC 3339, the same text as in the answer.
    pub date: String,
    pub token_source: TokenSource,
}

/// One `POST /message` (or `/message/`) request, rejected ones included, so
/// tests can assert what macha sent, how often, and where the token went.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The status the receiver answered.
    pub status: u16,
    /// The token the receiver used, if it found one.
    pub token: Option<String>,
    pub token_source: Option<TokenSource>,
    /// The request body, decoded as UTF-8 (lossily).
    pub body: String,
    /// The request target as sent: path and query, e.g. `/message?token=T`.
    pub target: String,
    /// When the request arrived, for asserting retry spacing.
    pub at: Instant,
}

/// How the receiver answers `POST /message`; switchable while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Behave like Gotify.
    Normal,
    /// Answer every `POST /message` with this status (200 to 599) and a
    /// Gotify-style error body, storing nothing: a failing server or proxy.
    Status(u16),
    /// Handle requests normally (a valid message is stored at once), then
    /// answer only after this delay: a slow server, where a client that
    /// times out cannot know its message was delivered.
    Delay(Duration),
}

/// An application: what its token resolves to.
#[derive(Clone, Debug)]
struct App {
    token: String,
    name: String,
    default_priority: i64,
}

/// Configures a [`GotifyReceiver`] before it starts.
pub struct Builder {
    apps: Vec<App>,
    clients: Vec<String>,
    listen: SocketAddr,
}

impl Builder {
    /// Adds an application with this token, named `macha-app-<appid>`, with
    /// default priority 0.
    pub fn app(self, token: &str) -> Self {
        let name = format!("macha-app-{}", self.apps.len() + 1);
        self.app_with(token, &name, 0)
    }

    /// Adds an application with its own name (the stored title of untitled
    /// messages) and default priority (the stored priority when none is sent).
    pub fn app_with(mut self, token: &str, name: &str, default_priority: i64) -> Self {
        self.apps.push(App { token: token.to_owned(), name: name.to_owned(), default_priority });
        self
    }

    /// Client (user) tokens: valid on the real server, but not for sending,
    /// so `POST /message` refuses them with 401.
    pub fn client_tokens(mut self, tokens: &[&str]) -> Self {
        self.clients.extend(tokens.iter().map(|t| (*t).to_owned()));
        self
    }

    /// The address to bind; `127.0.0.1:0` (any free port) unless set. A busy
    /// fixed port is retried for up to two seconds, so a receiver can be
    /// restarted on the port of one just stopped.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Binds, then serves on a runtime of its own on a dedicated thread, so
    /// the caller need not be inside a tokio runtime.
    pub fn start(self) -> anyhow::Result<GotifyReceiver> {
        let listener = bind_listener(self.listen)?;
        let state = Arc::new(Shared {
            apps: self.apps,
            clients: self.clients,
            inner: Mutex::new(Inner { mode: Mode::Normal, messages: Vec::new(), attempts: Vec::new() }),
        });
        let server = Server::start("gotify-receiver", listener, router(state.clone()))?;
        Ok(GotifyReceiver { state, server })
    }
}

/// Binds `addr`, retrying briefly while a fixed port is still in use.
fn bind_listener(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    // std sets SO_REUSEADDR on Unix, so closed connections in TIME_WAIT do not
    // block the port; the retry covers a listener still being torn down.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() != 0 && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("binding the Gotify receiver to {addr}")),
        }
    }
}

/// A running Gotify receiver; stops serving when dropped.
pub struct GotifyReceiver {
    state: Arc<Shared>,
    server: Server,
}

impl GotifyReceiver {
    /// A builder with no applications, no client tokens, and any free port
    /// on 127.0.0.1.
    pub fn builder() -> Builder {
        Builder { apps: Vec::new(), clients: Vec::new(), listen: SocketAddr::from(([127, 0, 0, 1], 0)) }
    }

    /// Starts a receiver on any free port with one application per token
    /// (appid = position + 1, default priority 0).
    pub fn start(app_tokens: &[&str]) -> anyhow::Result<GotifyReceiver> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), app_tokens)
    }

    /// Like [`GotifyReceiver::start`] on a given address, typically the one
    /// [`GotifyReceiver::stop`] returned, to bring the "server" back.
    pub fn start_on(addr: SocketAddr, app_tokens: &[&str]) -> anyhow::Result<GotifyReceiver> {
        app_tokens.iter().fold(Self::builder().listen(addr), |b, token| b.app(token)).start()
    }

    /// The base URL to configure as macha's `gotify.url` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Every accepted message, oldest first.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.state.lock().messages.clone()
    }

    /// Every `POST /message` request, rejected ones included, oldest first.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.state.lock().attempts.clone()
    }

    /// Changes how later requests are answered.
    ///
    /// Panics on a `Mode::Status` outside 200..=599, which HTTP cannot carry
    /// as a final answer.
    pub fn set_mode(&self, mode: Mode) {
        if let Mode::Status(code) = mode {
            assert!((200..=599).contains(&code), "Mode::Status({code}): not a final HTTP status");
        }
        self.state.lock().mode = mode;
    }

    /// Waits until at least `n` messages were accepted, for tests that drive
    /// a daemon asynchronously; false if `timeout` passed first.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |inner| inner.messages.len() >= n)
    }

    /// Waits until at least `n` requests arrived, rejected ones included (in
    /// a failure mode nothing is accepted); false if `timeout` passed first.
    pub fn wait_for_attempts(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |inner| inner.attempts.len() >= n)
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&Inner) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.state.lock()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops serving (the port refuses connections once this returns) and
    /// gives the address back for [`GotifyReceiver::start_on`].
    pub fn stop(mut self) -> SocketAddr {
        self.server.shutdown();
        self.server.addr()
    }
}

/// State shared between the handle and the server.
struct Shared {
    apps: Vec<App>,
    clients: Vec<String>,
    inner: Mutex<Inner>,
}

struct Inner {
    mode: Mode,
    messages: Vec<ReceivedMessage>,
    attempts: Vec<Attempt>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the receiver's state from others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn router(state: Arc<Shared>) -> Router {
    Router::new()
        .route("/message", post(post_message))
        .route("/message/", post(redirect_message))
        .route("/health", get(health))
        .route("/version", get(version))
        // gin answers an unknown route and a wrong method alike.
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        // Gotify sets no body limit; axum's default (2 MB) would answer 413.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

const JSON_TYPE: &str = "application/json; charset=utf-8";

/// Serialises as Go's `json.Marshal` does (gin's `ctx.JSON`): compact, with
/// `<`, `>`, `&`, U+2028 and U+2029 escaped. Those characters only occur
/// inside strings in JSON text, so replacing them afterwards is exact.
fn go_json(value: &impl Serialize) -> String {
    let text = serde_json::to_string(value).expect("serialisable");
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Gotify's `model.Error`, in its field order.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(rename = "errorCode")]
    error_code: u16,
    #[serde(rename = "errorDescription")]
    error_description: &'a str,
}

/// Gotify's `model.MessageExternal`, in its field order.
#[derive(Serialize)]
struct MessageBody<'a> {
    id: u64,
    appid: u64,
    message: &'a str,
    title: &'a str,
    priority: i64,
    #[serde(skip_serializing_if = "Value::is_null")]
    extras: &'a Value,
    date: &'a str,
}

const UNAUTHORIZED: &str = "you need to provide a valid access token or user credentials to access this api";

/// `{"error": <Go's reason phrase>, "errorCode": N, "errorDescription": ..}`.
fn error_text(status: u16, description: &str) -> String {
    let reason = StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    go_json(&ErrorBody { error: reason, error_code: status, error_description: description })
}

fn json_response(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, JSON_TYPE)], body).into_response()
}

async fn health() -> Response {
    json_response(200, r#"{"health":"green","database":"green"}"#.to_owned())
}

async fn version() -> Response {
    // The commit and build date are placeholders in the real format.
    json_response(
        200,
        r#"{"version":"2.6.1","commit":"0000000000000000000000000000000000000000","buildDate":"2024-11-16-14:52:03"}"#
            .to_owned(),
    )
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain")], "404 page not found").into_response()
}

/// The request target as sent (path and query).
fn target(uri: &Uri) -> String {
    uri.path_and_query().map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned())
}

/// gin's trailing-slash redirect: 307 (the method and body are kept) to the
/// path without the slash, query included, with no body.
async fn redirect_message(State(s): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let (token, token_source) = token_of(uri.query().unwrap_or(""), &headers).unzip();
    let location = match uri.query() {
        Some(q) => format!("/message?{q}"),
        None => "/message".to_owned(),
    };
    s.lock().attempts.push(Attempt {
        status: 307,
        token,
        token_source,
        body: String::from_utf8_lossy(&body).into_owned(),
        target: target(&uri),
        at: Instant::now(),
    });
    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response()
}

async fn post_message(State(s): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let query = uri.query().unwrap_or("");
    let found = token_of(query, &headers);
    let (status, text, mode) = {
        let mut inner = s.lock();
        let mode = inner.mode;
        let (status, text) = match mode {
            Mode::Status(code) => {
                (code, error_text(code, &format!("the Gotify receiver is set to answer {code} to every message")))
            }
            Mode::Normal | Mode::Delay(_) => handle(&s, &mut inner, found.clone(), query, &headers, &body),
        };
        let (token, token_source) = found.unzip();
        inner.attempts.push(Attempt {
            status,
            token,
            token_source,
            body: String::from_utf8_lossy(&body).into_owned(),
            target: target(&uri),
            at: Instant::now(),
        });
        (status, text, mode)
    };
    if let Mode::Delay(delay) = mode {
        tokio::time::sleep(delay).await;
    }
    json_response(status, text)
}

/// Gotify's `POST /message`: authentication, then binding, then storing.
fn handle(
    s: &Shared,
    inner: &mut Inner,
    found: Option<(String, TokenSource)>,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> (u16, String) {
    // A client token is known to the real server, but the application
    // check fails on it exactly as on an unknown token: 401, not 403.
    let app = found.as_ref().filter(|(token, _)| !s.clients.contains(token)).and_then(|(token, _)| {
        s.apps.iter().enumerate().find(|(_, a)| a.token == *token).map(|(i, a)| (i as u64 + 1, a))
    });
    let (Some((appid, app)), Some((_, token_source))) = (app, found) else {
        return (401, error_text(401, UNAUTHORIZED));
    };
    let fields = match bind(query, headers, body) {
        Ok(fields) => fields,
        Err(description) => return (400, error_text(400, &description)),
    };
    // Stored extras are read back into a Go map: `{}` is then omitted.
    let extras = match fields.extras {
        Some(map) if !map.is_empty() => go_value(Value::Object(map)),
        _ => Value::Null,
    };
    let message = ReceivedMessage {
        id: inner.messages.len() as u64 + 1,
        appid,
        title: if fields.title.trim().is_empty() { app.name.clone() } else { fields.title },
        message: fields.message,
        priority: fields.priority.unwrap_or(app.default_priority),
        extras,
        date: go_time(chrono::Utc::now()),
        token_source,
    };
    let text = go_json(&MessageBody {
        id: message.id,
        appid: message.appid,
        message: &message.message,
        title: &message.title,
        priority: message.priority,
        extras: &message.extras,
        date: &message.date,
    });
    inner.messages.push(message);
    (200, text)
}

/// The token as Gotify reads it: the first non-empty of query `token`,
/// `X-Gotify-Key`, `Authorization: Bearer` (prefix case-insensitive).
fn token_of(query: &str, headers: &HeaderMap) -> Option<(String, TokenSource)> {
    let header = |name: header::HeaderName| {
        headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default()
    };
    let from_query = parse_pairs(query).0.into_iter().find(|(k, _)| k == "token").map(|(_, v)| v).unwrap_or_default();
    if !from_query.is_empty() {
        return Some((from_query, TokenSource::Query));
    }
    let key = header(header::HeaderName::from_static("x-gotify-key"));
    if !key.is_empty() {
        return Some((key, TokenSource::Header));
    }
    let auth = header(header::AUTHORIZATION);
    match auth.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") && auth.len() > 7 => {
            Some((auth[7..].to_owned(), TokenSource::Bearer))
        }
        _ => None,
    }
}

/// The fields of Gotify's `MessageExternal` a client may set.
#[derive(Default)]
struct Fields {
    message: String,
    title: String,
    priority: Option<i64>,
    extras: Option<Map<String, Value>>,
}

/// gin's `ctx.Bind`: JSON binding for exactly `application/json`, form
/// binding otherwise; then `binding:"required"` on `message`.
fn bind(query: &str, headers: &HeaderMap, body: &[u8]) -> Result<Fields, String> {
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    // gin keeps the content type up to the first space or semicolon and
    // compares it as is.
    let media = content_type.as_deref().unwrap_or("").split([' ', ';']).next().unwrap_or("");
    let fields =
        if media == "application/json" { bind_json(body)? } else { bind_form(content_type.as_deref(), query, body)? };
    if fields.message.is_empty() {
        return Err("Field 'message' is required".to_owned());
    }
    Ok(fields)
}

/// Go's name for the kind of a JSON value in an unmarshal error.
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

/// `encoding/json` decoding one value into `model.MessageExternal`.
fn bind_json(body: &[u8]) -> Result<Fields, String> {
    // Go's Decoder reads the first value and ignores what follows it.
    let value = match serde_json::Deserializer::from_slice(body).into_iter::<Value>().next() {
        None => return Err("EOF".to_owned()),
        Some(Err(e)) => return Err(go_syntax_error(body, &e)),
        Some(Ok(value)) => value,
    };
    let object = match value {
        // Decoding null into a struct leaves it empty.
        Value::Null => return Ok(Fields::default()),
        Value::Object(object) => object,
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into Go value of type model.MessageExternal",
                go_kind(&other)
            ))
        }
    };
    // Go matches keys case-insensitively, preferring an exact match.
    let field = |name: &str| {
        object.get(name).or_else(|| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
    };
    let mismatch = |v: &Value, name: &str, ty: &str| {
        let kind = match v {
            // An integer field names the offending literal.
            Value::Number(n) if ty == "int" || ty == "uint" => format!("number {n}"),
            v => go_kind(v).to_owned(),
        };
        format!("json: cannot unmarshal {kind} into Go struct field MessageExternal.{name} of type {ty}")
    };
    let string = |name: &str| match field(name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(mismatch(v, name, "string")),
    };
    for name in ["id", "appid"] {
        match field(name) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.is_u64() => {}
            Some(v) => return Err(mismatch(v, name, "uint")),
        }
    }
    let message = string("message")?;
    let title = string("title")?;
    let priority = match field("priority") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.is_i64() => n.as_i64(),
        Some(v) => return Err(mismatch(v, "priority", "int")),
    };
    let extras = match field("extras") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map.clone()),
        Some(v) => return Err(mismatch(v, "extras", "map[string]interface {}")),
    };
    match field("date") {
        None | Some(Value::Null) => {}
        Some(Value::String(d)) => {
            if chrono::DateTime::parse_from_rfc3339(d).is_err() {
                return Err(format!(
                    "parsing time {} as \"2006-01-02T15:04:05Z07:00\": cannot parse {} as \"2006\"",
                    Value::String(d.clone()),
                    Value::String(d.clone())
                ));
            }
        }
        Some(_) => return Err("Time.UnmarshalJSON: input is not a JSON string".to_owned()),
    }
    Ok(Fields { message, title, priority, extras })
}

/// An approximation of Go's `SyntaxError` text for a body serde rejected.
fn go_syntax_error(body: &[u8], e: &serde_json::Error) -> String {
    if e.classify() == serde_json::error::Category::Eof {
        return "unexpected EOF".to_owned();
    }
    // serde reports a 1-based line and column (in bytes) of the offending byte.
    let line_start: usize = body.split(|b| *b == b'\n').take(e.line().saturating_sub(1)).map(|l| l.len() + 1).sum();
    let offset = (line_start + e.column().saturating_sub(1)).min(body.len().saturating_sub(1));
    let first = body.iter().position(|b| !b" \t\r\n".contains(b)).unwrap_or(0);
    let byte = body.get(offset).copied().unwrap_or(b' ');
    let what = e.to_string();
    let context = if offset == first || what.contains("expected value") {
        "looking for beginning of value"
    } else if what.contains("key must be a string") || (what.contains("trailing comma") && byte == b'}') {
        "looking for beginning of object key string"
    } else if what.contains("trailing comma") {
        "looking for beginning of value"
    } else if what.contains("expected `:`") {
        "after object key"
    } else if what.contains("expected `,` or `}`") {
        "after object key:value pair"
    } else if what.contains("expected `,` or `]`") {
        "after array element"
    } else if what.contains("control character") {
        "in string literal"
    } else if what.contains("escape") {
        "in string escape code"
    } else if what.contains("number") {
        "in numeric literal"
    } else if what.contains("ident") {
        // Go names the literal and the letter it expected next.
        let start = body[..offset].iter().rposition(|b| b"tfn".contains(b)).unwrap_or(offset);
        let literal = match body.get(start) {
            Some(b't') => "true",
            Some(b'f') => "false",
            _ => "null",
        };
        let expected = literal.as_bytes().get(offset - start).copied().unwrap_or(b' ');
        return format!(
            "invalid character {} in literal {literal} (expecting {})",
            go_quote_byte(byte),
            go_quote_byte(expected)
        );
    } else {
        "after top-level value"
    };
    format!("invalid character {} {context}", go_quote_byte(byte))
}

/// Go's `quoteChar`: a byte as a single-quoted Go character literal.
fn go_quote_byte(b: u8) -> String {
    let inner = match b {
        b'\'' => "\\'".to_owned(),
        b'\n' => "\\n".to_owned(),
        b'\r' => "\\r".to_owned(),
        b'\t' => "\\t".to_owned(),
        b'\\' => "\\\\".to_owned(),
        0x20..=0x7e => char::from(b).to_string(),
        0x00..=0x1f | 0x7f => format!("\\x{b:02x}"),
        0x80..=0x9f | 0xad => format!("\\u{b:04x}"),
        _ => char::from(b).to_string(),
    };
    format!("'{inner}'")
}

/// gin's form binding: `http.Request.ParseForm` (an urlencoded body first,
/// then the query string), first value of each key.
fn bind_form(content_type: Option<&str>, query: &str, body: &[u8]) -> Result<Fields, String> {
    let media = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let mut pairs = Vec::new();
    let mut error = None;
    if media == "application/x-www-form-urlencoded" {
        let (body_pairs, body_error) = parse_pairs(&String::from_utf8_lossy(body));
        pairs.extend(body_pairs);
        error = body_error;
    }
    let (query_pairs, query_error) = parse_pairs(query);
    pairs.extend(query_pairs);
    if let Some(e) = error.or(query_error) {
        return Err(e);
    }
    let value = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let priority = match value("priority") {
        None => None,
        Some(p) if p.is_empty() => Some(0),
        Some(p) => Some(p.parse::<i64>().map_err(|e| {
            let why = if matches!(e.kind(), std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow) {
                "value out of range"
            } else {
                "invalid syntax"
            };
            format!("strconv.ParseInt: parsing {}: {why}", Value::String(p.clone()))
        })?),
    };
    Ok(Fields {
        message: value("message").unwrap_or_default(),
        title: value("title").unwrap_or_default(),
        priority,
        extras: None,
    })
}

/// Go's `url.ParseQuery`: the pairs it keeps and its first error. A pair
/// with a semicolon or a bad escape is dropped.
fn parse_pairs(query: &str) -> (Vec<(String, String)>, Option<String>) {
    let mut pairs = Vec::new();
    let mut error = None;
    for part in query.split('&').filter(|p| !p.is_empty()) {
        if part.contains(';') {
            error.get_or_insert_with(|| "invalid semicolon separator in query".to_owned());
            continue;
        }
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        match (unescape(key), unescape(value)) {
            (Ok(key), Ok(value)) => pairs.push((key, value)),
            (Err(e), _) | (_, Err(e)) => {
                error.get_or_insert(e);
            }
        }
    }
    (pairs, error)
}

/// Go's `url.QueryUnescape`.
fn unescape(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit())) {
                    Some(h) => out.push(u8::from_str_radix(h, 16).expect("hex digits")),
                    None => {
                        let bad = String::from_utf8_lossy(&bytes[i..(i + 3).min(bytes.len())]).into_owned();
                        return Err(format!("invalid URL escape {}", Value::String(bad)));
                    }
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A JSON value as it comes back from a Go `map[string]interface{}`: keys
/// sorted, every number a `float64` (integral ones print without a fraction).
fn go_value(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, go_value(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(go_value).collect()),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            // Within i64's range an integral float64 is exactly an i64.
            if f.fract() == 0.0 && f.abs() < 9.2e18 {
                Value::Number(Number::from(f as i64))
            } else {
                Number::from_f64(f).map_or(Value::Null, Value::Number)
            }
        }
        other => other,
    }
}

/// Go's `time.Time` JSON form (RFC 3339 with trailing zeros of the fraction
/// trimmed), for a UTC time.
fn go_time(t: chrono::DateTime<chrono::Utc>) -> String {
    let base = t.format("%Y-%m-%dT%H:%M:%S");
    let nanos = t.timestamp_subsec_nanos();
    if nanos == 0 {
        format!("{base}Z")
    } else {
        let fraction = format!("{nanos:09}");
        format!("{base}.{}Z", fraction.trim_end_matches('0'))
    }
}
