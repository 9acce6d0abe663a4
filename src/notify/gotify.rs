//! The Gotify client: `POST /message` with the application token in the
//! `X-Gotify-Key` header (never in the URL, so it cannot leak through an
//! error message that quotes the URL), markdown bodies.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::Message;
use crate::bounded::{self, BodyError, Size};
use crate::errors::chain;

/// The application token. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token([redacted])")
    }
}

impl Token {
    /// Reads the token from `path` (the first line, trimmed).
    pub fn read(path: &Path) -> Result<Self, String> {
        Self::read_named(path, "the Gotify token file")
    }

    /// Reads a token from `path`; `name` says which file in the errors.
    pub fn read_named(path: &Path, name: &'static str) -> Result<Self, String> {
        bounded::read_secret(path, name).map(Self)
    }

    /// The token itself, for the header that carries it.
    pub(super) fn secret(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the token replaced.
    pub fn redact(&self, text: &str) -> String {
        text.replace(&self.0, "[redacted]")
    }
}

/// Why a message was not delivered; the text never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("Gotify at {url} is unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("Gotify at {url} rejected the message: HTTP {status}: {description}")]
    Rejected { url: String, status: u16, description: String },
    #[error("Gotify at {url} answered something that is not a stored message: {detail}")]
    BadResponse { url: String, detail: String },
}

/// The most read of Gotify's answer: the stored message, echoed (macha's
/// messages are a few KiB), or an error.
const ANSWER_LIMIT: Size = Size::mib(1);

pub struct Gotify {
    http: reqwest::Client,
    url: String,
    token: Token,
}

impl Gotify {
    pub fn new(url: &str, token: Token) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("a TLS backend is compiled in");
        Self { http, url: url.trim_end_matches('/').to_owned(), token }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one message; returns the message as the server stored it.
    pub async fn send(&self, m: &Message) -> Result<Value, SendError> {
        let url = self.url.clone();
        let body = json!({
            "title": m.title,
            "message": m.body,
            "priority": m.priority,
            "extras": {"client::display": {"contentType": "text/markdown"}},
        });
        let response = self
            .http
            .post(format!("{url}/message"))
            .header("X-Gotify-Key", &self.token.0)
            .json(&body)
            .send()
            .await
            .map_err(|e| SendError::Unreachable { url: url.clone(), detail: self.token.redact(&chain(&e)) })?;
        let status = response.status();
        let text = match bounded::read_body(response, ANSWER_LIMIT).await {
            Ok(body) => String::from_utf8_lossy(&body).into_owned(),
            Err(BodyError::Transport(e)) => {
                return Err(SendError::BadResponse { url, detail: self.token.redact(&chain(&e)) });
            }
            Err(e) => return Err(SendError::BadResponse { url, detail: e.to_string() }),
        };
        if !status.is_success() {
            let parsed: Option<Value> = serde_json::from_str(&text).ok();
            let description = parsed
                .as_ref()
                .and_then(|v| v.get("errorDescription").or_else(|| v.get("error")))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(SendError::Rejected {
                url,
                status: status.as_u16(),
                description: self.token.redact(&description),
            });
        }
        let stored: Value = serde_json::from_str(&text)
            .map_err(|e| SendError::BadResponse { url: url.clone(), detail: e.to_string() })?;
        if stored.get("id").and_then(Value::as_i64).is_none() {
            return Err(SendError::BadResponse { url, detail: "no message id in the answer".into() });
        }
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_shows_in_debug_or_redacted_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "AbCdEf123secret\n").unwrap();
        let token = Token::read(&path).unwrap();
        assert!(!format!("{token:?}").contains("secret"));
        assert_eq!(token.redact("x AbCdEf123secret y"), "x [redacted] y");
    }

    #[test]
    fn a_missing_or_empty_token_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Token::read(&dir.path().join("nope")).unwrap_err();
        assert!(err.contains("cannot read the Gotify token file") && err.contains("nope"), "{err}");
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        assert!(Token::read(&dir.path().join("empty")).unwrap_err().contains("is empty"));
    }

    #[test]
    fn a_token_file_that_is_a_fifo_or_too_large_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = Token::read(&fifo).unwrap_err();
        assert!(err.contains("the Gotify token file") && err.contains("it is a FIFO"), "{err}");
        let big = dir.path().join("big");
        std::fs::write(&big, "t".repeat(65 * 1024)).unwrap();
        let err = Token::read(&big).unwrap_err();
        assert!(err.ends_with("it is larger than the 64 KiB limit"), "{err}");
    }
}
