//! A client for Ollama's `POST /api/chat`, non-streaming, with structured
//! output (`format` = a JSON Schema) and explicit options.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::OllamaConfig;
use crate::errors::chain;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Self { role: "system".into(), content: content.into() }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self { role: "user".into(), content: content.into() }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self { role: "assistant".into(), content: content.into() }
    }
}

/// The parts of a chat response macha uses; unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
struct ChatResponse {
    message: ResponseMessage,
    #[serde(default)]
    prompt_eval_count: u64,
    #[serde(default)]
    eval_count: u64,
    #[serde(default)]
    total_duration: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct ResponseMessage {
    #[serde(default)]
    content: String,
}

/// The text of an answer and what it cost.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Reply {
    pub content: String,
    pub prompt_tokens: u64,
    pub answer_tokens: u64,
    /// Server-side time in milliseconds (Ollama reports nanoseconds).
    pub server_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OllamaError {
    #[error("Ollama at {url} is unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("Ollama at {url} did not answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("model {model:?} is not available on {url}: run `ollama pull {model}` there")]
    ModelNotFound { model: String, url: String },
    #[error("Ollama at {url} answered HTTP {status}: {message}")]
    Http { url: String, status: u16, message: String },
    #[error("Ollama at {url} sent a response that is not a chat response: {detail}")]
    BadResponse { url: String, detail: String },
}

pub struct OllamaClient {
    http: reqwest::Client,
    config: OllamaConfig,
}

impl OllamaClient {
    pub fn new(config: &OllamaConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout))
            .connect_timeout(Duration::from_secs(config.timeout.min(10)))
            .build()
            .expect("a TLS backend is compiled in");
        Self { http, config: config.clone() }
    }

    pub fn model(&self) -> &str {
        &self.config.model
    }

    /// Sends one chat request and returns the assistant's text.
    pub async fn chat(&self, messages: &[Message], format: &Value) -> Result<Reply, OllamaError> {
        let url = self.config.url.trim_end_matches('/').to_owned();
        let body = json!({
            "model": self.config.model,
            "messages": messages,
            "stream": false,
            "format": format,
            "options": {
                "num_ctx": self.config.num_ctx,
                "num_predict": self.config.num_predict,
                "temperature": self.config.temperature,
            },
        });
        let response = self.http.post(format!("{url}/api/chat")).json(&body).send().await.map_err(|e| {
            if e.is_timeout() {
                OllamaError::Timeout { url: url.clone(), secs: self.config.timeout }
            } else {
                OllamaError::Unreachable { url: url.clone(), detail: chain(&e) }
            }
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            if e.is_timeout() {
                OllamaError::Timeout { url: url.clone(), secs: self.config.timeout }
            } else {
                OllamaError::BadResponse { url: url.clone(), detail: chain(&e) }
            }
        })?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| text.chars().take(300).collect());
            if status.as_u16() == 404 && message.contains("not found") {
                return Err(OllamaError::ModelNotFound { model: self.config.model.clone(), url });
            }
            return Err(OllamaError::Http { url, status: status.as_u16(), message });
        }
        let parsed: ChatResponse = serde_json::from_str(&text).map_err(|e| OllamaError::BadResponse {
            url: url.clone(),
            detail: format!("{e} (body starts {:?})", text.chars().take(120).collect::<String>()),
        })?;
        Ok(Reply {
            content: parsed.message.content,
            prompt_tokens: parsed.prompt_eval_count,
            answer_tokens: parsed.eval_count,
            server_ms: parsed.total_duration / 1_000_000,
        })
    }
}
