//! One endpoint that serves the model: who it is (`ProviderInfo`), how it
//! fails (`ProviderError`, and which failures send a request on to the
//! fallback), and the HTTP exchange itself, the answer read whole or as a
//! stream. What goes over the wire is `ollama.rs`'s or `openai.rs`'s
//! business, and putting a stream together `stream.rs`'s; this file only
//! sends and reads, within limits.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chat::{Answer, ChatRequest};
use super::stream::{Assembly, Lines, StreamError};
use super::{ollama, openai};
use crate::bounded::{self, BodyError, Size};
use crate::config::Api;
use crate::errors::chain;

/// Which of the configured endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `[ollama]`: asked first.
    Primary,
    /// `[model.fallback]`: asked when the primary cannot answer.
    Fallback,
}

/// Who answered (or was asked): recorded with every decision and call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInfo {
    pub endpoint: Endpoint,
    pub api: Api,
    /// Base URL as configured (for `openai`, the one ending in `/v1`).
    pub url: String,
    pub model: String,
}

impl ProviderInfo {
    /// "Ollama at URL" or "the OpenAI-compatible server at URL", for errors.
    pub fn server(&self) -> String {
        match self.api {
            Api::Ollama => format!("Ollama at {}", self.url),
            Api::Openai => format!("the OpenAI-compatible server at {}", self.url),
        }
    }
}

impl fmt::Display for ProviderInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoint = match self.endpoint {
            Endpoint::Primary => "primary",
            Endpoint::Fallback => "fallback",
        };
        write!(f, "{endpoint} {} (model {})", self.server(), self.model)
    }
}

/// Sampling options from the configuration, the same for every request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Options {
    pub num_ctx: u32,
    pub num_predict: u32,
    pub temperature: f32,
    pub seed: Option<u64>,
}

/// Why one endpoint gave no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    #[error("{server} is unreachable: {detail}")]
    Unreachable { server: String, detail: String },
    #[error("{server} did not answer within {secs} s")]
    Timeout { server: String, secs: u64 },
    #[error("model {model:?} is not available on {server}: {hint}")]
    ModelNotFound { server: String, model: String, hint: String },
    #[error("{server} answered HTTP {status}: {message}")]
    Http { server: String, status: u16, message: String },
    #[error("{server} sent a response that is not a chat response: {detail}")]
    BadResponse { server: String, detail: String },
    #[error("{server} sent an answer larger than {limit}, the most macha reads {of}; the server, or a proxy in front of it, does not answer as it should")]
    TooLarge { server: String, limit: Size, of: String },
    #[error("{server} stopped mid-answer with an error: {message}")]
    MidAnswer { server: String, message: String },
}

/// What kind of failure a `ProviderError` is, without its detail: the same
/// kind twice in a row is the same state (see `repeat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Unreachable,
    Timeout,
    ModelNotFound,
    /// An HTTP error status.
    Http(u16),
    BadResponse,
    TooLarge,
    MidAnswer,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable => f.write_str("unreachable"),
            Self::Timeout => f.write_str("no answer in time"),
            Self::ModelNotFound => f.write_str("model not available"),
            Self::Http(status) => write!(f, "HTTP {status}"),
            Self::BadResponse => f.write_str("not a chat response"),
            Self::TooLarge => f.write_str("answer too large"),
            Self::MidAnswer => f.write_str("error mid-answer"),
        }
    }
}

impl ProviderError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unreachable { .. } => ErrorKind::Unreachable,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::ModelNotFound { .. } => ErrorKind::ModelNotFound,
            Self::Http { status, .. } => ErrorKind::Http(*status),
            Self::BadResponse { .. } => ErrorKind::BadResponse,
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::MidAnswer { .. } => ErrorKind::MidAnswer,
        }
    }

    /// Whether the next endpoint should be asked: the server is down, broken
    /// (5xx, a cut-off or garbled body, an error mid-answer), too slow, or
    /// lacks the model. A 4xx
    /// means the request itself is wrong, and another server would refuse it
    /// too.
    pub fn fails_over(&self) -> bool {
        match self {
            Self::Http { status, .. } => *status >= 500,
            Self::Unreachable { .. }
            | Self::Timeout { .. }
            | Self::ModelNotFound { .. }
            | Self::BadResponse { .. }
            | Self::TooLarge { .. }
            | Self::MidAnswer { .. } => true,
        }
    }
}

/// What `/api/show` (Ollama) or `/v1/models/MODEL` (OpenAI) said about the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Check {
    /// Not asked yet.
    Unchecked,
    Ready {
        /// Whether the model takes `tools`; `None` when the server does not say
        /// (OpenAI-compatible servers have no such field).
        tools: Option<bool>,
        /// The model's trained context length, when the server says.
        context_length: Option<u64>,
    },
    /// The server answers but does not have the model; `error` says how to get it.
    MissingModel { error: String },
    /// The server could not be asked, or answered with an error.
    Failed { error: String },
}

/// Bytes allowed for each token an answer may hold (`num_predict`): a token
/// is 3 to 4 characters of text, and even escaped in JSON (`\u003c` for
/// `<`) few take more than a few dozen bytes.
const ANSWER_BYTES_PER_TOKEN: u64 = 64;

/// Bytes allowed besides the tokens: the JSON envelope, timing fields, the
/// framing of tool calls, an error text.
const ANSWER_ENVELOPE: Size = Size::mib(1);

/// Whatever `num_predict` says, no answer is read past this.
const ANSWER_CEILING: Size = Size::mib(64);

/// The most read of an answer to `/api/show` or `/v1/models/MODEL`: model
/// facts (template, parameters, license) are tens of KiB.
const FACTS_LIMIT: Size = Size::mib(8);

/// Bytes allowed for each token of a streamed answer: each chunk carries a
/// token or a few, wrapped in its own envelope (model, time, role, flags:
/// 120 to 250 bytes from Ollama, vLLM and OpenAI), with room for long model
/// names and escaped text.
const STREAM_BYTES_PER_TOKEN: u64 = 512;

/// The most read of a chat answer of at most `num_predict` tokens:
/// [`ANSWER_ENVELOPE`] + [`ANSWER_BYTES_PER_TOKEN`] × `num_predict`, at most
/// [`ANSWER_CEILING`] (1152 KiB for the default 2048 tokens). One line of a
/// streamed answer may be as long, no longer.
pub(crate) fn answer_limit(num_predict: u32) -> Size {
    let bytes = ANSWER_ENVELOPE.get().saturating_add(u64::from(num_predict) * ANSWER_BYTES_PER_TOKEN);
    Size::bytes(bytes.min(ANSWER_CEILING.get()))
}

/// The most read of a streamed answer of at most `num_predict` tokens, all
/// its chunks together: [`ANSWER_ENVELOPE`] + [`STREAM_BYTES_PER_TOKEN`] ×
/// `num_predict`, at most [`ANSWER_CEILING`] (1.5 MiB for the default 1024
/// tokens). A stream that never ends is cut by this, or by the timeout.
pub(crate) fn stream_limit(num_predict: u32) -> Size {
    let bytes = ANSWER_ENVELOPE.get().saturating_add(u64::from(num_predict) * STREAM_BYTES_PER_TOKEN);
    Size::bytes(bytes.min(ANSWER_CEILING.get()))
}

/// A key for an OpenAI-compatible server, sent as `Authorization: Bearer`.
/// Its `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

impl ApiKey {
    /// Reads the key from `path` (the first line, trimmed).
    pub fn read(path: &Path) -> Result<Self, String> {
        bounded::read_secret(path, "the API key file").map(Self)
    }
}

/// One try at one endpoint: what was sent, what came back, and how it ended.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub provider: ProviderInfo,
    /// The request body as sent.
    pub request: Value,
    /// The response body as received, when one was.
    pub response: Option<String>,
    pub result: Result<Answer, ProviderError>,
    pub elapsed_ms: u64,
}

/// A configured endpoint with its HTTP client.
pub(crate) struct Provider {
    pub info: ProviderInfo,
    http: reqwest::Client,
    timeout_secs: u64,
    key: Option<ApiKey>,
}

/// A response's status and body text.
struct Exchange {
    status: u16,
    body: String,
}

impl Provider {
    pub fn new(info: ProviderInfo, timeout_secs: u64, key: Option<ApiKey>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(timeout_secs))
            .connect_timeout(Duration::from_secs(timeout_secs.min(10)))
            .build()
            .expect("a TLS backend is compiled in");
        Self { info, http, timeout_secs, key }
    }

    /// Sends one chat request and reads the answer. With `on_text`, the
    /// answer is asked for as a stream and each piece of its text goes to
    /// `on_text` as it comes; the answer returned is the whole of it.
    pub async fn chat(
        &self,
        request: &ChatRequest,
        options: &Options,
        on_text: Option<&mut (dyn FnMut(&str) + '_)>,
    ) -> Attempt {
        let started = Instant::now();
        let stream = on_text.is_some();
        let (path, body) = match self.info.api {
            Api::Ollama => ("/api/chat", ollama::chat_body(&self.info.model, request, options, stream)),
            Api::Openai => ("/chat/completions", openai::chat_body(&self.info.model, request, options, stream)),
        };
        let num_predict = request.num_predict.unwrap_or(options.num_predict);
        let post = self.http.post(self.url(path)).json(&body);
        let (response, result) = match on_text {
            None => {
                let of = format!("for an answer of at most {num_predict} tokens (`ollama.num_predict`)");
                let sent = self.send(post, answer_limit(num_predict), &of).await;
                let response = sent.as_ref().ok().map(|e| e.body.clone());
                (response, sent.and_then(|e| self.read_answer(e)))
            }
            Some(on_text) => self.stream(post, num_predict, on_text).await,
        };
        Attempt {
            provider: self.info.clone(),
            request: body,
            response,
            result,
            elapsed_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// Asks the server about the model: present? tools?
    pub async fn check(&self) -> Check {
        let sent = match self.info.api {
            Api::Ollama => {
                let body = serde_json::json!({ "model": self.info.model });
                self.send(self.http.post(self.url("/api/show")).json(&body), FACTS_LIMIT, "of model facts").await
            }
            Api::Openai => {
                let url = self.url(&format!("/models/{}", self.info.model));
                self.send(self.http.get(url), FACTS_LIMIT, "of model facts").await
            }
        };
        let exchange = match sent {
            Ok(e) => e,
            Err(e) => return Check::Failed { error: e.to_string() },
        };
        if exchange.status == 404 {
            return Check::MissingModel { error: self.model_not_found().to_string() };
        }
        if !(200..300).contains(&exchange.status) {
            return Check::Failed { error: self.http_error(&exchange).to_string() };
        }
        match self.info.api {
            Api::Ollama => ollama::read_show(&exchange.body),
            Api::Openai => Check::Ready { tools: None, context_length: None },
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.info.url.trim_end_matches('/'))
    }

    /// Sends `request` and reads the answer's body, at most `limit` bytes
    /// of it (`of` says what that limit is for, in the error).
    async fn send(&self, request: reqwest::RequestBuilder, limit: Size, of: &str) -> Result<Exchange, ProviderError> {
        let response = self.authorized(request).send().await.map_err(|e| self.transport_error(&e, false))?;
        self.read_whole(response, limit, of).await
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(ApiKey(key)) => request.bearer_auth(key),
            None => request,
        }
    }

    async fn read_whole(&self, response: reqwest::Response, limit: Size, of: &str) -> Result<Exchange, ProviderError> {
        let status = response.status().as_u16();
        let body = bounded::read_body(response, limit).await.map_err(|e| match e {
            BodyError::TooLarge(limit) => ProviderError::TooLarge { server: self.info.server(), limit, of: of.into() },
            BodyError::Transport(e) => self.transport_error(&e, true),
        })?;
        Ok(Exchange { status, body: String::from_utf8_lossy(&body).into_owned() })
    }

    /// Sends a streamed chat request and reads the stream as it comes, each
    /// piece of text to `on_text`: at most [`stream_limit`] bytes in all and
    /// [`answer_limit`] in one line, and only up to the chunk that ends it.
    /// An error status comes before any stream and is read as a whole body.
    /// Returns the body as read (for the record of calls) and the answer.
    async fn stream(
        &self,
        request: reqwest::RequestBuilder,
        num_predict: u32,
        on_text: &mut (dyn FnMut(&str) + '_),
    ) -> (Option<String>, Result<Answer, ProviderError>) {
        let mut response = match self.authorized(request).send().await {
            Ok(response) => response,
            Err(e) => return (None, Err(self.transport_error(&e, false))),
        };
        if !response.status().is_success() {
            let of = "of an error answer";
            return match self.read_whole(response, answer_limit(num_predict), of).await {
                Ok(exchange) => (Some(exchange.body.clone()), Err(self.http_error(&exchange))),
                Err(e) => (None, Err(e)),
            };
        }
        let limit = stream_limit(num_predict);
        let mut body = Vec::new();
        let mut lines = Lines::new(answer_limit(num_predict));
        let mut assembly = Assembly::default();
        let mut feed = |line: &str, assembly: &mut Assembly| -> Result<(), ProviderError> {
            let chunk = match self.info.api {
                Api::Ollama => ollama::read_chunk(line),
                Api::Openai => openai::read_event(line),
            };
            if let Some(chunk) = chunk.map_err(|e| self.stream_error(e))? {
                if !chunk.text.is_empty() && !assembly.ended() {
                    on_text(&chunk.text);
                }
                assembly.add(chunk);
            }
            Ok(())
        };
        let read = loop {
            let bytes = match response.chunk().await {
                Ok(Some(bytes)) => bytes,
                // The last line may lack its line end.
                Ok(None) => break lines.finish().map_or(Ok(()), |last| feed(&last, &mut assembly)),
                Err(e) => break Err(self.transport_error(&e, true)),
            };
            if (body.len() + bytes.len()) as u64 > limit.get() {
                let of = format!("for a streamed answer of at most {num_predict} tokens (`ollama.num_predict`)");
                break Err(ProviderError::TooLarge { server: self.info.server(), limit, of });
            }
            body.extend_from_slice(&bytes);
            let fed = match lines.push(&bytes) {
                Ok(complete) => complete.iter().try_for_each(|line| feed(line, &mut assembly)),
                Err(e) => Err(self.stream_error(e)),
            };
            if fed.is_err() || assembly.ended() {
                break fed;
            }
        };
        let body = String::from_utf8_lossy(&body).into_owned();
        let result = read.and_then(|()| {
            let finish_is_end = self.info.api == Api::Openai;
            assembly.answer(finish_is_end).map_err(|e| self.stream_error(e))
        });
        (Some(body), result)
    }

    fn stream_error(&self, e: StreamError) -> ProviderError {
        let server = self.info.server();
        match e {
            StreamError::Bad(detail) => ProviderError::BadResponse { server, detail },
            StreamError::Server(message) => ProviderError::MidAnswer { server, message },
        }
    }

    fn transport_error(&self, e: &reqwest::Error, reading: bool) -> ProviderError {
        let server = self.info.server();
        if e.is_timeout() {
            ProviderError::Timeout { server, secs: self.timeout_secs }
        } else if reading {
            ProviderError::BadResponse { server, detail: chain(e) }
        } else {
            ProviderError::Unreachable { server, detail: chain(e) }
        }
    }

    fn read_answer(&self, exchange: Exchange) -> Result<Answer, ProviderError> {
        if !(200..300).contains(&exchange.status) {
            return Err(self.http_error(&exchange));
        }
        let parsed = match self.info.api {
            Api::Ollama => ollama::read_chat(&exchange.body),
            Api::Openai => openai::read_chat(&exchange.body),
        };
        parsed.map_err(|detail| ProviderError::BadResponse { server: self.info.server(), detail })
    }

    /// A non-2xx answer: the server's own error text, and a missing model
    /// named as such.
    fn http_error(&self, exchange: &Exchange) -> ProviderError {
        let message = match self.info.api {
            Api::Ollama => ollama::error_text(&exchange.body),
            Api::Openai => openai::error_text(&exchange.body),
        };
        if exchange.status == 404 && names_a_missing_model(&message) {
            return self.model_not_found();
        }
        ProviderError::Http { server: self.info.server(), status: exchange.status, message }
    }

    fn model_not_found(&self) -> ProviderError {
        let model = &self.info.model;
        let hint = match self.info.api {
            Api::Ollama => format!("run `ollama pull {model}` there"),
            Api::Openai => "check the model name against what the server lists at /v1/models".to_owned(),
        };
        ProviderError::ModelNotFound { server: self.info.server(), model: model.clone(), hint }
    }
}

/// Whether a 404's text is about the model rather than the route: Ollama
/// says `model "x" not found, try pulling it first`, OpenAI says ``The model
/// `x` does not exist``; a wrong URL gets `404 page not found`.
fn names_a_missing_model(message: &str) -> bool {
    let m = message.to_lowercase();
    m.contains("model") && (m.contains("not found") || m.contains("does not exist"))
}

/// The first `max` characters of `text`, for error messages that quote a body.
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> ProviderError {
        ProviderError::Http { server: "s".into(), status, message: "m".into() }
    }

    #[test]
    fn only_server_side_failures_fail_over() {
        assert!(http(500).fails_over() && http(503).fails_over());
        assert!(!http(400).fails_over() && !http(401).fails_over());
        assert!(ProviderError::Timeout { server: "s".into(), secs: 1 }.fails_over());
        assert!(ProviderError::Unreachable { server: "s".into(), detail: "refused".into() }.fails_over());
    }

    #[test]
    fn a_404_is_a_missing_model_only_when_it_says_so() {
        assert!(names_a_missing_model("model \"x:7b\" not found, try pulling it first"));
        assert!(names_a_missing_model("The model `gpt-x` does not exist or you do not have access to it."));
        assert!(!names_a_missing_model("404 page not found"));
    }

    #[test]
    fn an_api_key_file_that_is_a_device_or_too_large_is_refused() {
        let err = ApiKey::read(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(err, "cannot read the API key file /dev/zero: it is a character device, not a regular file");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "k".repeat(65 * 1024)).unwrap();
        assert!(ApiKey::read(&dir.path().join("key")).unwrap_err().ends_with("larger than the 64 KiB limit"));
    }

    #[test]
    fn an_answer_may_hold_64_bytes_a_token_and_a_mib_more_up_to_a_ceiling() {
        assert_eq!(answer_limit(1024).to_string(), "1088 KiB");
        assert_eq!(answer_limit(0), ANSWER_ENVELOPE);
        assert_eq!(answer_limit(u32::MAX), ANSWER_CEILING);
    }

    #[test]
    fn an_api_key_never_prints() {
        let key = ApiKey("sk-very-secret".into());
        assert_eq!(format!("{key:?}"), "ApiKey([redacted])");
    }
}
