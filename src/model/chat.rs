//! The conversation with the model, in macha's own types: messages (with the
//! tool-calling turns), the request and the reply. Each provider translates
//! them to and from its wire format (`ollama.rs`, `openai.rs`); nothing
//! outside `model` sees a wire format.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::provider::ProviderInfo;

/// Who speaks in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a tool call, sent back to the model.
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// Calls the assistant asked for (role `assistant` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For role `tool`: the name of the tool whose result this is (Ollama
    /// reads it as `tool_name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    /// For role `tool`: the id of the call it answers (OpenAI-compatible
    /// servers match results to calls by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    fn plain(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), tool_calls: Vec::new(), tool_name: None, tool_call_id: None }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::plain(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::plain(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::plain(Role::Assistant, content)
    }

    /// The result of `call`, to send back to the model.
    pub fn tool_result(call: &ToolCall, content: impl Into<String>) -> Self {
        Self {
            tool_name: Some(call.name.clone()),
            tool_call_id: Some(call.id.clone()),
            ..Self::plain(Role::Tool, content)
        }
    }
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The server's id for the call, or `call_N` (its position in the
    /// answer) when the server gave none, so a result can always name it.
    pub id: String,
    pub name: String,
    /// The arguments as a JSON object. Ollama sends an object; an
    /// OpenAI-compatible server sends a string holding JSON, parsed here.
    /// A string that does not hold a JSON object is kept as
    /// `Value::String` (the raw text), for the caller to refuse with a reason
    /// the model can read.
    pub arguments: Value,
}

/// A tool offered to the model: `{"type": "function", "function": {...}}` on
/// the wire, the same for both APIs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// A JSON Schema of the arguments object.
    pub parameters: Value,
}

impl Tool {
    pub(crate) fn wire(&self) -> Value {
        serde_json::json!({
            "type": "function",
            "function": { "name": self.name, "description": self.description, "parameters": self.parameters },
        })
    }
}

/// One request to the model. Sampling options (`num_ctx`, `temperature`)
/// come from the configuration; the output cap may be lowered per request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// What the call is for, for the record of calls (`decide
    /// unit-failed:nginx.service, attempt 1`).
    pub purpose: String,
    pub messages: Vec<Message>,
    /// A JSON Schema the answer must follow (structured output).
    pub format: Option<Value>,
    /// Tools the model may call; send them only when
    /// `ModelService::supports_tools` is true.
    pub tools: Option<Vec<Tool>>,
    /// Cap on the answer in tokens; `None` is the configured
    /// `ollama.num_predict`.
    pub num_predict: Option<u32>,
}

impl ChatRequest {
    pub fn new(purpose: impl Into<String>, messages: Vec<Message>) -> Self {
        Self { purpose: purpose.into(), messages, format: None, tools: None, num_predict: None }
    }

    /// The answer must be JSON following `schema`.
    pub fn with_format(mut self, schema: Value) -> Self {
        self.format = Some(schema);
        self
    }
}

/// Tokens counted by the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub answer_tokens: u64,
}

/// Where the time of a call went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// Waiting for a slot in the queue.
    pub queue_ms: u64,
    /// From the first request sent to the answer read, failover included.
    pub call_ms: u64,
    /// What the answering server reports as its own time (Ollama only).
    pub server_ms: Option<u64>,
}

/// The model's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    /// Role `assistant`: text (a JSON string with `format`), tool calls, or both.
    pub message: Message,
    /// Why the model stopped: `stop`, `length` (the output cap was hit),
    /// `tool_calls`; as the server says it.
    pub done_reason: Option<String>,
    /// The server said the answer is complete. Ollama's repeat guard ends an
    /// answer that repeats one piece more than 30 times without saying so:
    /// its last object has `done: false` and no reason.
    pub ended: bool,
    pub usage: Usage,
    /// The endpoint that answered.
    pub provider: ProviderInfo,
    pub timing: Timing,
}

impl ChatReply {
    /// Why the answer stopped before it was complete, if it did.
    pub fn cut_off(&self) -> Option<CutOff> {
        if self.done_reason.as_deref() == Some("length") {
            Some(CutOff::Length)
        } else if !self.ended {
            Some(CutOff::Repetition)
        } else {
            None
        }
    }
}

/// Why an answer stopped before it was complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutOff {
    /// At the output cap (`ollama.num_predict`).
    Length,
    /// By the server, because the answer repeated one piece over and over
    /// (Ollama's repeat guard).
    Repetition,
}

impl std::fmt::Display for CutOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Length => "cut off at its length limit (ollama.num_predict)",
            Self::Repetition => "stopped by the server because it repeated itself",
        })
    }
}

/// What one endpoint answered, before the service adds who and how long.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    pub message: Message,
    pub done_reason: Option<String>,
    pub ended: bool,
    pub usage: Usage,
    pub server_ms: Option<u64>,
}
