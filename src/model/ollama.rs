//! Ollama's native API on the wire: the body of `POST /api/chat`
//! (`format` for structured output, sampling in `options`), its answer
//! whole or streamed (one JSON object per line, the last `done: true`; an
//! error after the stream began is a line `{"error": "..."}`), its error
//! body, and `POST /api/show`. Pure functions; `provider.rs` does the HTTP.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::chat::{Answer, ChatRequest, Message, Role, ToolCall, Usage};
use super::provider::{excerpt, Check, Options};
use super::stream::{Chunk, StreamError};

/// The request body for `POST /api/chat`; `stream` asks for the answer in pieces.
pub(crate) fn chat_body(model: &str, request: &ChatRequest, options: &Options, stream: bool) -> Value {
    let mut body = json!({
        "model": model,
        "messages": request.messages.iter().map(wire_message).collect::<Vec<_>>(),
        "stream": stream,
        "options": {
            "num_ctx": options.num_ctx,
            "num_predict": request.num_predict.unwrap_or(options.num_predict),
            "temperature": options.temperature,
        },
    });
    if let Some(seed) = options.seed {
        body["options"]["seed"] = seed.into();
    }
    if let Some(format) = &request.format {
        body["format"] = format.clone();
    }
    if let Some(tools) = &request.tools {
        body["tools"] = tools.iter().map(|t| t.wire()).collect();
    }
    body
}

/// A message as Ollama reads it: tool-call arguments as an object, a tool
/// result named by `tool_name`.
fn wire_message(m: &Message) -> Value {
    let mut v = json!({ "role": m.role.as_str(), "content": m.content });
    if !m.tool_calls.is_empty() {
        let calls: Vec<Value> =
            m.tool_calls.iter().map(|c| json!({ "function": { "name": c.name, "arguments": c.arguments } })).collect();
        v["tool_calls"] = Value::Array(calls);
    }
    if m.role == Role::Tool {
        if let Some(name) = &m.tool_name {
            v["tool_name"] = Value::String(name.clone());
        }
    }
    v
}

/// The parts of a chat response macha reads; unknown fields are ignored.
#[derive(Deserialize)]
struct ChatResponse {
    message: WireMessage,
    done: Option<bool>,
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: u64,
    #[serde(default)]
    eval_count: u64,
    /// Nanoseconds.
    total_duration: Option<u64>,
}

#[derive(Deserialize)]
struct WireMessage {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: Option<String>,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: Value,
}

/// Reads a `stream: false` chat response.
pub(crate) fn read_chat(body: &str) -> Result<Answer, String> {
    let r: ChatResponse =
        serde_json::from_str(body).map_err(|e| format!("{e} (body starts {:?})", excerpt(body, 120)))?;
    let tool_calls = r
        .message
        .tool_calls
        .into_iter()
        .enumerate()
        .map(|(i, c)| ToolCall {
            id: c.id.unwrap_or_else(|| format!("call_{i}")),
            name: c.function.name,
            arguments: c.function.arguments,
        })
        .collect();
    Ok(Answer {
        message: Message { tool_calls, ..Message::assistant(r.message.content.unwrap_or_default()) },
        done_reason: r.done_reason,
        ended: r.done != Some(false),
        usage: Usage { prompt_tokens: r.prompt_eval_count, answer_tokens: r.eval_count },
        server_ms: r.total_duration.map(|ns| ns / 1_000_000),
    })
}

/// One line of a streamed chat: `{"message": {"content": ...}, "done": false}`,
/// the last one with `done: true`, the stop reason and the counts, or
/// `{"error": "..."}` when the answer failed after the stream began. A
/// blank line is `None`.
pub(crate) fn read_chunk(line: &str) -> Result<Option<Chunk>, StreamError> {
    #[derive(Deserialize)]
    struct WireChunk {
        message: Option<WireMessage>,
        #[serde(default)]
        done: bool,
        done_reason: Option<String>,
        prompt_eval_count: Option<u64>,
        eval_count: Option<u64>,
        total_duration: Option<u64>,
        error: Option<Value>,
    }
    if line.trim().is_empty() {
        return Ok(None);
    }
    let c: WireChunk = serde_json::from_str(line).map_err(|e| {
        StreamError::Bad(format!("a line of the stream is not a chat chunk: {e} (it starts {:?})", excerpt(line, 120)))
    })?;
    if let Some(error) = c.error {
        return Err(StreamError::Server(error.as_str().map_or_else(|| error.to_string(), str::to_owned)));
    }
    let usage = (c.done && (c.prompt_eval_count.is_some() || c.eval_count.is_some()))
        .then(|| Usage { prompt_tokens: c.prompt_eval_count.unwrap_or(0), answer_tokens: c.eval_count.unwrap_or(0) });
    Ok(Some(Chunk {
        text: c.message.and_then(|m| m.content).unwrap_or_default(),
        done_reason: c.done_reason,
        usage,
        server_ms: c.total_duration.map(|ns| ns / 1_000_000),
        end: c.done,
    }))
}

/// The text of an error body `{"error": "..."}`, or the start of the body.
pub(crate) fn error_text(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| excerpt(body, 300))
}

#[derive(Deserialize)]
struct ShowResponse {
    /// Newer servers: `completion`, `tools`, `embedding`, `vision`, `thinking`.
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    template: String,
    #[serde(default)]
    model_info: Map<String, Value>,
}

/// Reads a `200` answer of `POST /api/show`. Servers older than the
/// `capabilities` field are judged by the template: a model takes tools when
/// its template renders `.Tools`.
pub(crate) fn read_show(body: &str) -> Check {
    let show: ShowResponse = match serde_json::from_str(body) {
        Ok(s) => s,
        Err(e) => return Check::Failed { error: format!("/api/show sent something else than model facts: {e}") },
    };
    let tools = match &show.capabilities {
        Some(caps) => caps.iter().any(|c| c == "tools"),
        None => show.template.contains(".Tools"),
    };
    let context_length =
        show.model_info.iter().find(|(k, _)| k.ends_with(".context_length")).and_then(|(_, v)| v.as_u64());
    Check::Ready { tools: Some(tools), context_length }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::chat::Tool;

    const OPTIONS: Options = Options { num_ctx: 8192, num_predict: 512, temperature: 0.1, seed: None };

    #[test]
    fn the_body_keeps_sampling_in_options_and_tool_arguments_as_objects() {
        let call =
            ToolCall { id: "call_0".into(), name: "unit_status".into(), arguments: json!({"unit": "a.service"}) };
        let mut request = ChatRequest::new(
            "test",
            vec![
                Message::user("why?"),
                Message { tool_calls: vec![call.clone()], ..Message::assistant("") },
                Message::tool_result(&call, "active"),
            ],
        )
        .with_format(json!({"type": "object"}));
        request.tools = Some(vec![Tool { name: "unit_status".into(), description: "d".into(), parameters: json!({}) }]);
        let body = chat_body("m", &request, &OPTIONS, false);
        assert_eq!(body["options"], json!({"num_ctx": 8192, "num_predict": 512, "temperature": 0.1f32}));
        let seeded = chat_body("m", &request, &Options { seed: Some(42), ..OPTIONS }, false);
        assert_eq!(seeded["options"]["seed"], 42, "a seed goes with the sampling options");
        assert_eq!(body["stream"], false);
        assert_eq!(body["format"]["type"], "object");
        assert_eq!(body["messages"][1]["tool_calls"][0]["function"]["arguments"]["unit"], "a.service");
        assert_eq!(body["messages"][2]["role"], "tool");
        assert_eq!(body["messages"][2]["tool_name"], "unit_status");
        assert_eq!(body["tools"][0]["function"]["name"], "unit_status");
        assert!(body.get("temperature").is_none(), "sampling is read only from options");
    }

    #[test]
    fn a_tool_call_answer_has_empty_content_and_object_arguments() {
        let body = r#"{"model":"m","message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"disk_usage","arguments":{"path":"/var"}}}]},"done":true,"done_reason":"stop","prompt_eval_count":10,"eval_count":3,"total_duration":2500000000}"#;
        let a = read_chat(body).unwrap();
        assert_eq!(a.message.content, "");
        assert_eq!(a.message.tool_calls[0].id, "call_0");
        assert_eq!(a.message.tool_calls[0].arguments["path"], "/var");
        assert_eq!(a.usage, Usage { prompt_tokens: 10, answer_tokens: 3 });
        assert_eq!(a.server_ms, Some(2500));
    }

    #[test]
    fn streamed_lines_give_text_then_the_end_with_counts_or_the_servers_error() {
        let first = read_chunk(r#"{"model":"m","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":"The"},"done":false}"#)
            .unwrap()
            .unwrap();
        assert_eq!((first.text.as_str(), first.end, first.usage), ("The", false, None));
        let last = read_chunk(r#"{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":2500000000,"prompt_eval_count":10,"eval_count":3}"#)
            .unwrap()
            .unwrap();
        assert!(last.end);
        assert_eq!(last.usage, Some(Usage { prompt_tokens: 10, answer_tokens: 3 }));
        assert_eq!((last.done_reason.as_deref(), last.server_ms), (Some("stop"), Some(2500)));
        assert_eq!(read_chunk("").unwrap(), None);
        assert_eq!(
            read_chunk(r#"{"error":"an error was encountered while running the model: CUDA error"}"#).unwrap_err(),
            StreamError::Server("an error was encountered while running the model: CUDA error".into())
        );
        let StreamError::Bad(why) = read_chunk("data: {not ndjson}").unwrap_err() else { panic!("not Bad") };
        assert!(why.starts_with("a line of the stream is not a chat chunk: ") && why.contains("data: {not"), "{why}");
    }

    #[test]
    fn show_reads_capabilities_or_the_template() {
        let with_caps = r#"{"template":"","capabilities":["completion"],"model_info":{"llama.context_length":131072}}"#;
        assert_eq!(read_show(with_caps), Check::Ready { tools: Some(false), context_length: Some(131072) });
        let old = r#"{"template":"{{ if .Tools }}tools{{ end }}","model_info":{}}"#;
        assert_eq!(read_show(old), Check::Ready { tools: Some(true), context_length: None });
    }
}
