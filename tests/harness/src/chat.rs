//! Doubles of the two other notification services macha speaks to, each
//! answering as the real server does (`reference/protocols.md`), errors
//! included, and recording what it took.
//!
//! - [`NtfyReceiver`]: ntfy's publish API. `POST /` with a JSON message
//!   (`topic`, `message`, `title`, `priority` 1-5, `tags`, `markdown`), or
//!   `POST`/`PUT /TOPIC` with the body as the message and the `Title`,
//!   `Priority`, `Tags` and `Markdown` headers. The topic is protected: no
//!   token or a wrong one is 401 `{"code":40101,"http":401,"error":"unauthorized",...}`,
//!   another topic 403 (40301), a message over 4 096 bytes 413 (41301).
//!   Answers the stored message as JSON (`id`, `time`, `event`, `topic`, ...).
//! - [`MatrixReceiver`]: the client-server API's
//!   `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}` with
//!   `Authorization: Bearer`: no token is 401 `M_MISSING_TOKEN`, a wrong one
//!   401 `M_UNKNOWN_TOKEN`, a room the user is not in 403 `M_FORBIDDEN`, a
//!   body that is not JSON 400 `M_NOT_JSON`, one without `msgtype` and
//!   `body` strings 400 `M_BAD_JSON`. A transaction id seen before answers
//!   the same `event_id` and stores nothing again (idempotent retries).
//!
//! Both take a [`Mode`] like the Gotify double: a status to answer with
//! instead (the server's own error body for it), or a delay.
//! Not reproduced: ntfy's attachments, e-mail and caching options, Matrix's
//! room aliases, sync and rate limiting.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::Router;
use serde_json::{json, Value};

pub use crate::gotify::Mode;
use crate::serve::Server;

/// A message a double took.
#[derive(Clone, Debug, PartialEq)]
pub struct Taken {
    pub title: String,
    pub body: String,
    /// ntfy: the priority (1-5); Matrix: 0.
    pub priority: u64,
    /// ntfy: the tags; Matrix: none.
    pub tags: Vec<String>,
    /// Matrix: the HTML of `formatted_body`; ntfy: whether markdown was asked.
    pub formatted: String,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    mode: Option<Mode>,
    taken: Vec<Taken>,
    /// Every request's status, rejected ones included.
    statuses: Vec<u16>,
    /// Matrix: the transaction ids seen, and their event ids.
    txns: Vec<(String, String)>,
}

struct Shared {
    token: String,
    /// ntfy: the topic; Matrix: the room id.
    place: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mode's delay, slept; or its status, to answer with.
    async fn mode(&self) -> Option<u16> {
        let mode = self.lock().mode.unwrap_or(Mode::Normal);
        match mode {
            Mode::Normal => None,
            Mode::Status(code) => Some(code),
            Mode::Delay(d) => {
                tokio::time::sleep(d).await;
                None
            }
        }
    }

    fn answer(&self, status: u16, body: Value) -> Response {
        self.lock().statuses.push(status);
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(str::to_owned)
}

macro_rules! receiver {
    ($name:ident) => {
        /// A running double; stops serving when dropped.
        pub struct $name {
            state: Arc<Shared>,
            server: Server,
        }

        impl $name {
            /// The base URL to configure (no trailing slash).
            pub fn url(&self) -> String {
                format!("http://{}", self.server.addr())
            }

            /// Every message taken, oldest first.
            pub fn taken(&self) -> Vec<Taken> {
                self.state.lock().taken.clone()
            }

            /// The status of every request, oldest first.
            pub fn statuses(&self) -> Vec<u16> {
                self.state.lock().statuses.clone()
            }

            /// Changes how later requests are answered.
            pub fn set_mode(&self, mode: Mode) {
                self.state.lock().mode = Some(mode);
            }

            /// Waits until `n` messages were taken; false if `timeout` passed first.
            pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
                let deadline = Instant::now() + timeout;
                while self.state.lock().taken.len() < n {
                    if Instant::now() > deadline {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                true
            }
        }
    };
}

receiver!(NtfyReceiver);
receiver!(MatrixReceiver);

fn start(router: Router, name: &'static str) -> anyhow::Result<Server> {
    let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    Server::start(name, listener, router)
}

impl NtfyReceiver {
    /// A server whose `topic` needs `token`.
    pub fn start(topic: &str, token: &str) -> anyhow::Result<NtfyReceiver> {
        let state = Arc::new(Shared { token: token.into(), place: topic.into(), inner: Mutex::default() });
        let router = Router::new()
            .route("/", post(ntfy_json))
            .route("/{topic}", post(ntfy_plain).put(ntfy_plain))
            .with_state(state.clone());
        Ok(NtfyReceiver { server: start(router, "ntfy-receiver")?, state })
    }
}

impl MatrixReceiver {
    /// A homeserver where the user of `token` has joined `room`.
    pub fn start(room: &str, token: &str) -> anyhow::Result<MatrixReceiver> {
        let state = Arc::new(Shared { token: token.into(), place: room.into(), inner: Mutex::default() });
        let router = Router::new()
            .route("/_matrix/client/v3/rooms/{room}/send/{event_type}/{txn}", put(matrix_send))
            .with_state(state.clone());
        Ok(MatrixReceiver { server: start(router, "matrix-receiver")?, state })
    }
}

fn ntfy_error(state: &Shared, http: u16, code: u32, error: &str) -> Response {
    state.answer(http, json!({"code": code, "http": http, "error": error, "link": "https://ntfy.sh/docs/publish/"}))
}

/// ntfy's checks and store, shared by its two ways of publishing.
async fn ntfy_publish(state: &Shared, headers: &HeaderMap, topic: &str, m: Taken) -> Response {
    if let Some(code) = state.mode().await {
        return ntfy_error(state, code, u32::from(code) * 100 + 1, "internal server error");
    }
    match bearer(headers) {
        None => return ntfy_error(state, 401, 40101, "unauthorized"),
        Some(t) if t != state.token => return ntfy_error(state, 401, 40101, "unauthorized"),
        Some(_) => {}
    }
    if topic != state.place {
        return ntfy_error(state, 403, 40301, "forbidden");
    }
    if m.body.len() > 4096 {
        return ntfy_error(state, 413, 41301, "message too large");
    }
    let id = format!("m{:011}", state.lock().taken.len() + 1);
    let answer = json!({
        "id": id, "time": chrono::Utc::now().timestamp(), "expires": chrono::Utc::now().timestamp() + 43200,
        "event": "message", "topic": topic, "title": m.title, "message": m.body, "priority": m.priority, "tags": m.tags,
    });
    state.lock().taken.push(m);
    state.answer(200, answer)
}

async fn ntfy_json(State(state): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return ntfy_error(&state, 400, 40024, "invalid request: request body must be message JSON");
    };
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let priority = v.get("priority").and_then(Value::as_u64).unwrap_or(3);
    if !(1..=5).contains(&priority) {
        return ntfy_error(&state, 400, 40007, "invalid request: priority invalid");
    }
    let tags = v
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let markdown = v.get("markdown").and_then(Value::as_bool).unwrap_or(false);
    let m = Taken {
        title: text("title"),
        body: text("message"),
        priority,
        tags,
        formatted: markdown.to_string(),
        at: Instant::now(),
    };
    let topic = text("topic");
    ntfy_publish(&state, &headers, &topic, m).await
}

async fn ntfy_plain(
    State(state): State<Arc<Shared>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let priority = match h("Priority").as_str() {
        "" | "3" | "default" => 3,
        "1" | "min" => 1,
        "2" | "low" => 2,
        "4" | "high" => 4,
        "5" | "max" | "urgent" => 5,
        _ => return ntfy_error(&state, 400, 40007, "invalid request: priority invalid"),
    };
    let tags = h("Tags").split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect();
    let m = Taken {
        title: h("Title"),
        body: String::from_utf8_lossy(&body).into_owned(),
        priority,
        tags,
        formatted: (h("Markdown") == "yes").to_string(),
        at: Instant::now(),
    };
    ntfy_publish(&state, &headers, &topic, m).await
}

fn matrix_error(state: &Shared, http: u16, errcode: &str, error: &str) -> Response {
    state.answer(http, json!({"errcode": errcode, "error": error}))
}

async fn matrix_send(
    State(state): State<Arc<Shared>>,
    Path((room, event_type, txn)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(code) = state.mode().await {
        return matrix_error(&state, code, "M_UNKNOWN", "Internal server error");
    }
    match bearer(&headers) {
        None => return matrix_error(&state, 401, "M_MISSING_TOKEN", "Missing access token."),
        Some(t) if t != state.token => {
            return matrix_error(&state, 401, "M_UNKNOWN_TOKEN", "Invalid access token passed.")
        }
        Some(_) => {}
    }
    if room != state.place {
        return matrix_error(&state, 403, "M_FORBIDDEN", &format!("User @macha:test not in room {room}"));
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return matrix_error(&state, 400, "M_NOT_JSON", "Content not JSON.");
    };
    let (Some(msgtype), Some(text)) = (v.get("msgtype").and_then(Value::as_str), v.get("body").and_then(Value::as_str))
    else {
        return matrix_error(&state, 400, "M_BAD_JSON", "'msgtype' and 'body' must be strings");
    };
    if event_type != "m.room.message" || !msgtype.starts_with("m.") {
        return matrix_error(&state, 400, "M_BAD_JSON", "not a message");
    }
    if let Some((_, event)) = state.lock().txns.iter().find(|(t, _)| *t == txn).cloned() {
        return state.answer(200, json!({"event_id": event}));
    }
    let event = format!("${}:test", state.lock().txns.len() + 1);
    let formatted = v.get("formatted_body").and_then(Value::as_str).unwrap_or_default().to_owned();
    let (title, rest) = text.split_once("\n\n").unwrap_or((text, ""));
    let m = Taken {
        title: title.to_owned(),
        body: rest.to_owned(),
        priority: 0,
        tags: Vec::new(),
        formatted,
        at: Instant::now(),
    };
    {
        let mut inner = state.lock();
        inner.txns.push((txn, event.clone()));
        inner.taken.push(m);
    }
    state.answer(200, json!({"event_id": event}))
}
