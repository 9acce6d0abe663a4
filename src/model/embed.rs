//! Embeddings: texts turned into vectors by the embedding model
//! (`ollama.embedding_model`, `nomic-embed-text` unless set) through
//! Ollama's `POST /api/embed`, so that the incident memory can find past
//! incidents and runbook sections by meaning as well as by their words.
//!
//! Only the primary endpoint (`ollama.url`) is asked, never the fallback,
//! and never an OpenAI-compatible server (`/v1/embeddings` is not built):
//! vectors can be compared only when one model made them all, and a memory
//! filled by two servers could hold vectors of two models that look alike
//! and mean nothing to each other.
//!
//! What comes back is checked before anyone compares it: one vector per
//! text, every vector of the same length (the dimension is read from the
//! answer, not configured), finite, not all zeros, and L2-normalised here
//! when the server did not (Ollama does; a proxy or another server may
//! not). A request holds at most [`BATCH_TEXTS`] texts and [`BATCH_BYTES`]
//! of text; a longer list is sent in batches, in order, each a batch request
//! of the model service's queue (`Priority::Batch`), so a decision waiting
//! for the model goes before the next batch. A text longer than
//! [`MAX_TEXT_BYTES`] is cut there first: the models read far less (2048
//! tokens for nomic-embed-text) and Ollama cuts the rest anyway
//! (`truncate`). The answer read is bounded by what that many vectors of at
//! most [`MAX_DIMENSION`] numbers can take.
//!
//! Each request is written to the record of calls like a chat (purpose
//! `embed`), its texts redacted there; the vectors themselves are left out
//! of the record (their count and dimension are kept): thousands of numbers
//! tell a reader nothing.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::ollama::error_text;
use super::provider::{excerpt, ErrorKind};
use crate::bounded::{self, BodyError, Size};
use crate::errors::chain;

/// The most texts sent in one request.
pub const BATCH_TEXTS: usize = 64;

/// The most bytes of text sent in one request (a single text is cut to
/// [`MAX_TEXT_BYTES`], so any one fits).
pub const BATCH_BYTES: usize = 256 * 1024;

/// A text is cut to this many bytes (at a character boundary) before it is
/// sent: more than any embedding model reads.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// The longest vector accepted (the largest embedding models have 4096).
pub const MAX_DIMENSION: usize = 8192;

/// Bytes a number of a vector may take in JSON (`-0.012345678,` is 13; an
/// f32 written in full, with an exponent, fewer than 24).
const BYTES_PER_NUMBER: u64 = 24;

/// Bytes allowed besides the numbers: the envelope, or an error text.
const ENVELOPE: Size = Size::mib(1);

/// Texts turned into vectors, in the order of the texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// The embedding model that made them (`ollama.embedding_model`).
    pub model: String,
    /// The length of every vector, as the server answered.
    pub dimension: usize,
    /// One L2-normalised vector per text.
    pub vectors: Vec<Vec<f32>>,
}

/// Why texts were not embedded. Each message says what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbedError {
    #[error("cannot embed: Ollama at {url} is unreachable: {detail}; start it, or check `ollama.url`")]
    Unreachable { url: String, detail: String },
    #[error("cannot embed: Ollama at {url} did not answer within {secs} s (`ollama.timeout`)")]
    Timeout { url: String, secs: u64 },
    #[error("cannot embed: the embedding model {model:?} is not on Ollama at {url}: run `ollama pull {model}` there, or set `ollama.embedding_model` to a model it has")]
    MissingModel { url: String, model: String },
    #[error("cannot embed: model {model:?} on Ollama at {url} cannot embed ({message}); set `ollama.embedding_model` to an embedding model such as nomic-embed-text (`ollama pull nomic-embed-text`)")]
    NotAnEmbeddingModel { url: String, model: String, message: String },
    #[error("cannot embed: Ollama at {url} answered HTTP {status}: {message}")]
    Http { url: String, status: u16, message: String },
    #[error(
        "cannot embed: Ollama at {url} sent an answer larger than {limit}, the most macha reads for {texts} vectors"
    )]
    TooLarge { url: String, limit: Size, texts: usize },
    #[error("cannot embed: Ollama at {url} sent something else than embeddings: {detail}")]
    BadResponse { url: String, detail: String },
}

impl EmbedError {
    /// The kind of failure, for the record of calls (a failure like the one
    /// before it is counted there, not written again).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unreachable { .. } => ErrorKind::Unreachable,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::MissingModel { .. } => ErrorKind::ModelNotFound,
            Self::NotAnEmbeddingModel { .. } => ErrorKind::BadResponse,
            Self::Http { status, .. } => ErrorKind::Http(*status),
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::BadResponse { .. } => ErrorKind::BadResponse,
        }
    }
}

/// The texts in batches of at most [`BATCH_TEXTS`] texts and [`BATCH_BYTES`]
/// bytes, in order; each text already cut to [`MAX_TEXT_BYTES`].
pub(crate) fn batches(texts: &[String]) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    let mut bytes = 0;
    for text in texts {
        let text = cut(text, MAX_TEXT_BYTES);
        match out.last_mut() {
            Some(batch) if batch.len() < BATCH_TEXTS && bytes + text.len() <= BATCH_BYTES => {
                bytes += text.len();
                batch.push(text);
            }
            _ => {
                bytes = text.len();
                out.push(vec![text]);
            }
        }
    }
    out
}

/// `text` within `max` bytes, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let end = (0..=max).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
    &text[..end]
}

/// The most read of an answer to `texts` texts.
fn answer_limit(texts: usize) -> Size {
    Size::bytes(ENVELOPE.get() + texts as u64 * MAX_DIMENSION as u64 * BYTES_PER_NUMBER)
}

/// One request's answer: the vectors checked, and what the record keeps.
#[derive(Debug)]
pub(crate) struct Batch {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: Option<u64>,
    pub server_ms: Option<u64>,
}

/// One exchange with the server: the request body as sent, the response as
/// the record keeps it, and how it ended.
pub(crate) struct Exchange {
    pub request: Value,
    pub response: Option<Value>,
    pub result: Result<Batch, EmbedError>,
}

/// The embedding model on the primary Ollama endpoint, with its HTTP client.
pub(crate) struct Embedder {
    pub url: String,
    pub model: String,
    http: reqwest::Client,
    timeout_secs: u64,
}

impl Embedder {
    pub fn new(url: &str, model: &str, timeout_secs: u64) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(timeout_secs))
            .connect_timeout(Duration::from_secs(timeout_secs.min(10)))
            .build()
            .expect("a TLS backend is compiled in");
        Self { url: url.to_owned(), model: model.to_owned(), http, timeout_secs }
    }

    /// Sends one batch and reads its vectors.
    pub async fn embed(&self, texts: &[&str]) -> Exchange {
        let request = json!({ "model": self.model, "input": texts, "truncate": true });
        let url = format!("{}/api/embed", self.url.trim_end_matches('/'));
        let sent = match self.http.post(url).json(&request).send().await {
            Ok(response) => response,
            Err(e) => return Exchange { request, response: None, result: Err(self.transport(&e, false)) },
        };
        let status = sent.status().as_u16();
        let body = match bounded::read_body(sent, answer_limit(texts.len())).await {
            Ok(body) => String::from_utf8_lossy(&body).into_owned(),
            Err(BodyError::TooLarge(limit)) => {
                let error = EmbedError::TooLarge { url: self.url.clone(), limit, texts: texts.len() };
                return Exchange { request, response: None, result: Err(error) };
            }
            Err(BodyError::Transport(e)) => {
                return Exchange { request, response: None, result: Err(self.transport(&e, true)) }
            }
        };
        if !(200..300).contains(&status) {
            let response = serde_json::from_str(&body).unwrap_or_else(|_| Value::from(excerpt(&body, 300)));
            return Exchange { request, response: Some(response), result: Err(self.refusal(status, &body)) };
        }
        let result = read_embeddings(&body, texts.len())
            .map_err(|detail| EmbedError::BadResponse { url: self.url.clone(), detail });
        let response = match &result {
            Ok(batch) => json!({
                "vectors": batch.vectors.len(),
                "dimension": batch.vectors.first().map_or(0, Vec::len),
                "prompt_eval_count": batch.prompt_tokens,
            }),
            Err(_) => Value::from(excerpt(&body, 300)),
        };
        Exchange { request, response: Some(response), result }
    }

    fn transport(&self, e: &reqwest::Error, reading: bool) -> EmbedError {
        let url = self.url.clone();
        if e.is_timeout() {
            EmbedError::Timeout { url, secs: self.timeout_secs }
        } else if reading {
            EmbedError::BadResponse { url, detail: chain(e) }
        } else {
            EmbedError::Unreachable { url, detail: chain(e) }
        }
    }

    /// A non-2xx answer. Ollama says `model 'x' not found` (404) for a model
    /// it does not have, and `this model does not support embeddings` for a
    /// chat model (500 from 0.12, 501 later); a server without the route
    /// answers `404 page not found`.
    fn refusal(&self, status: u16, body: &str) -> EmbedError {
        let message = error_text(body);
        let lower = message.to_lowercase();
        let (url, model) = (self.url.clone(), self.model.clone());
        if status == 404 && lower.contains("model") && lower.contains("not found") {
            EmbedError::MissingModel { url, model }
        } else if lower.contains("does not support embedding") {
            EmbedError::NotAnEmbeddingModel { url, model, message }
        } else if status == 404 {
            let message = format!("{message} (it does not serve /api/embed: Ollama older than 0.3.0, or not Ollama)");
            EmbedError::Http { url, status, message }
        } else {
            EmbedError::Http { url, status, message }
        }
    }
}

/// Reads a `200` answer of `/api/embed` for `texts` texts: checks the
/// vectors (see the module's documentation) and normalises them.
fn read_embeddings(body: &str, texts: usize) -> Result<Batch, String> {
    #[derive(Deserialize)]
    struct Response {
        embeddings: Vec<Vec<f32>>,
        prompt_eval_count: Option<u64>,
        /// Nanoseconds.
        total_duration: Option<u64>,
    }
    let r: Response = serde_json::from_str(body).map_err(|e| format!("{e} (body starts {:?})", excerpt(body, 120)))?;
    if r.embeddings.len() != texts {
        return Err(format!("{} vectors for {texts} texts", r.embeddings.len()));
    }
    let dimension = r.embeddings.first().map_or(0, Vec::len);
    if dimension == 0 || dimension > MAX_DIMENSION {
        return Err(format!("vectors of {dimension} numbers (macha accepts 1 to {MAX_DIMENSION})"));
    }
    let mut vectors = Vec::with_capacity(texts);
    for (i, v) in r.embeddings.into_iter().enumerate() {
        if v.len() != dimension {
            return Err(format!("vector {i} has {} numbers, the first has {dimension}", v.len()));
        }
        vectors.push(normalise(v).ok_or_else(|| format!("vector {i} is all zeros or not finite"))?);
    }
    Ok(Batch { vectors, prompt_tokens: r.prompt_eval_count, server_ms: r.total_duration.map(|ns| ns / 1_000_000) })
}

/// `v` scaled to length 1 (unchanged when it nearly is); `None` when it is
/// all zeros or holds a number that is not finite.
fn normalise(mut v: Vec<f32>) -> Option<Vec<f32>> {
    if !v.iter().all(|x| x.is_finite()) {
        return None;
    }
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return None;
    }
    if (norm - 1.0).abs() > 1e-4 {
        v.iter_mut().for_each(|x| *x = (f64::from(*x) / norm) as f32);
    }
    Some(v)
}

/// Several batches put back together, checked to share one dimension.
pub(crate) fn join(model: &str, url: &str, batches: Vec<Vec<Vec<f32>>>) -> Result<Embeddings, EmbedError> {
    let vectors: Vec<Vec<f32>> = batches.into_iter().flatten().collect();
    let dimension = vectors.first().map_or(0, Vec::len);
    if let Some(other) = vectors.iter().find(|v| v.len() != dimension) {
        let detail = format!(
            "one batch had vectors of {dimension} numbers, another of {}: the model changed between requests",
            other.len()
        );
        return Err(EmbedError::BadResponse { url: url.to_owned(), detail });
    }
    Ok(Embeddings { model: model.to_owned(), dimension, vectors })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_order_within_their_count_and_byte_limits() {
        let texts: Vec<String> = (0..150).map(|i| format!("text {i}")).collect();
        let b = batches(&texts);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [64, 64, 22]);
        assert_eq!(b.concat(), texts.iter().map(String::as_str).collect::<Vec<_>>());

        let big: Vec<String> = (0..7).map(|_| "x".repeat(60 * 1024)).collect();
        let b = batches(&big);
        assert!(b.iter().all(|batch| batch.iter().map(|t| t.len()).sum::<usize>() <= BATCH_BYTES), "byte bound");
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [4, 3]);
    }

    #[test]
    fn a_text_longer_than_any_model_reads_is_cut_at_a_character_boundary() {
        let text = format!("{}é", "x".repeat(MAX_TEXT_BYTES - 1));
        let b = batches(std::slice::from_ref(&text));
        assert_eq!(b[0][0].len(), MAX_TEXT_BYTES - 1);
    }

    #[test]
    fn vectors_are_normalised_and_must_share_one_dimension() {
        let batch = read_embeddings(r#"{"model":"m","embeddings":[[3,4],[0,2]]}"#, 2).unwrap();
        assert_eq!(batch.vectors, vec![vec![0.6, 0.8], vec![0.0, 1.0]]);
        let uneven = read_embeddings(r#"{"embeddings":[[1,0],[1,0,0]]}"#, 2).unwrap_err();
        assert_eq!(uneven, "vector 1 has 3 numbers, the first has 2");
        assert_eq!(read_embeddings(r#"{"embeddings":[[1,0]]}"#, 2).unwrap_err(), "1 vectors for 2 texts");
        assert!(read_embeddings(r#"{"embeddings":[[0,0]]}"#, 1).unwrap_err().contains("all zeros"));
        assert!(read_embeddings(r#"{"embeddings":[[]]}"#, 1).unwrap_err().contains("0 numbers"));
    }
}
