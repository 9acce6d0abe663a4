//! The OpenAI-compatible API on the wire (`POST /v1/chat/completions`, as
//! served by vLLM, llama.cpp's server, LiteLLM, and Ollama itself): the
//! request (structured output through `response_format`, the output cap as
//! `max_tokens`), the answer (`choices[0].message`, `usage`) whole or
//! streamed as server-sent events (`data: {"choices": [{"delta": ...}]}`
//! lines, the usage in a last chunk when asked for, then `data: [DONE]`),
//! tool-call arguments as a JSON *string*, and the error body
//! `{"error": {"message", "type"}}`, also as an event after a stream began.
//! Pure functions; `provider.rs` does the HTTP.
//!
//! The API has no context-window option: `ollama.num_ctx` is not sent, the
//! server's own setting applies.

use serde::Deserialize;
use serde_json::{json, Value};

use super::chat::{Answer, ChatRequest, Message, Role, ToolCall, Usage};
use super::provider::{excerpt, Options};
use super::stream::{Chunk, StreamError};

/// The request body for `POST {url}/chat/completions`; `stream` asks for
/// the answer as events, with the token counts in the last one.
pub(crate) fn chat_body(model: &str, request: &ChatRequest, options: &Options, stream: bool) -> Value {
    let mut body = json!({
        "model": model,
        "messages": request.messages.iter().map(wire_message).collect::<Vec<_>>(),
        "stream": stream,
        "temperature": options.temperature,
        "max_tokens": request.num_predict.unwrap_or(options.num_predict),
    });
    if let Some(seed) = options.seed {
        body["seed"] = seed.into();
    }
    if stream {
        body["stream_options"] = json!({ "include_usage": true });
    }
    if let Some(schema) = &request.format {
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": { "name": "answer", "schema": schema },
        });
    }
    if let Some(tools) = &request.tools {
        body["tools"] = tools.iter().map(|t| t.wire()).collect();
    }
    body
}

/// A message as the OpenAI API reads it: tool-call arguments as a string, a
/// tool result tied to its call by `tool_call_id`.
fn wire_message(m: &Message) -> Value {
    let mut v = json!({ "role": m.role.as_str(), "content": m.content });
    if !m.tool_calls.is_empty() {
        let calls: Vec<Value> = m
            .tool_calls
            .iter()
            .map(|c| {
                let arguments = match &c.arguments {
                    Value::String(raw) => raw.clone(),
                    other => other.to_string(),
                };
                json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": arguments } })
            })
            .collect();
        v["tool_calls"] = Value::Array(calls);
    }
    if m.role == Role::Tool {
        if let Some(id) = &m.tool_call_id {
            v["tool_call_id"] = Value::String(id.clone());
        }
        if let Some(name) = &m.tool_name {
            v["name"] = Value::String(name.clone());
        }
    }
    v
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: WireMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    /// `null` from OpenAI itself when only tool calls come back, `""` from Ollama.
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: Option<String>,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    /// A string holding JSON, by the specification; some servers send the object.
    #[serde(default)]
    arguments: Value,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// Reads a non-streaming chat completion.
pub(crate) fn read_chat(body: &str) -> Result<Answer, String> {
    let c: Completion =
        serde_json::from_str(body).map_err(|e| format!("{e} (body starts {:?})", excerpt(body, 120)))?;
    let Some(choice) = c.choices.into_iter().next() else {
        return Err("the completion has no choices".into());
    };
    let tool_calls = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, call)| ToolCall {
            id: call.id.filter(|id| !id.is_empty()).unwrap_or_else(|| format!("call_{i}")),
            name: call.function.name,
            arguments: arguments(call.function.arguments),
        })
        .collect();
    let usage = c
        .usage
        .map_or_else(Usage::default, |u| Usage { prompt_tokens: u.prompt_tokens, answer_tokens: u.completion_tokens });
    Ok(Answer {
        message: Message { tool_calls, ..Message::assistant(choice.message.content.unwrap_or_default()) },
        // OpenAI names why every completion ended; Ollama's compatible API
        // leaves it null when its repeat guard stopped the answer.
        ended: choice.finish_reason.is_some(),
        done_reason: choice.finish_reason,
        usage,
        server_ms: None,
    })
}

/// One line of a streamed completion: a `data:` event with a delta of the
/// text, the stop reason or the usage, `data: [DONE]` (the end), or an
/// error, as an event or as a bare JSON line (some servers write the error
/// body into the stream as it is). Blank lines, comments (`:`) and the other
/// fields of an event (`event:`, `id:`, `retry:`) are `None`.
pub(crate) fn read_event(line: &str) -> Result<Option<Chunk>, StreamError> {
    #[derive(Deserialize)]
    struct Event {
        #[serde(default)]
        choices: Vec<Delta>,
        usage: Option<WireUsage>,
        error: Option<Value>,
    }
    #[derive(Deserialize)]
    struct Delta {
        delta: Option<DeltaMessage>,
        finish_reason: Option<String>,
    }
    #[derive(Deserialize)]
    struct DeltaMessage {
        content: Option<String>,
    }
    let line = line.trim_end();
    if line.is_empty() || line.starts_with(':') || ["event:", "id:", "retry:"].iter().any(|f| line.starts_with(f)) {
        return Ok(None);
    }
    let data = match line.strip_prefix("data:") {
        Some(data) => data.trim_start(),
        None if line.starts_with('{') => line,
        None => {
            return Err(StreamError::Bad(format!(
                "a line of the stream is not a server-sent event (it starts {:?})",
                excerpt(line, 120)
            )))
        }
    };
    if data == "[DONE]" {
        return Ok(Some(Chunk { end: true, ..Chunk::default() }));
    }
    let event: Event = serde_json::from_str(data).map_err(|e| {
        StreamError::Bad(format!(
            "an event of the stream is not a completion chunk: {e} (it starts {:?})",
            excerpt(data, 120)
        ))
    })?;
    if let Some(error) = event.error {
        let message = error.get("message").and_then(Value::as_str).or_else(|| error.as_str());
        return Err(StreamError::Server(message.map_or_else(|| error.to_string(), str::to_owned)));
    }
    if !line.starts_with("data:") {
        return Err(StreamError::Bad(format!(
            "a line of the stream is not a server-sent event (it starts {:?})",
            excerpt(line, 120)
        )));
    }
    let choice = event.choices.into_iter().next();
    let (text, done_reason) = match choice {
        Some(c) => (c.delta.and_then(|d| d.content).unwrap_or_default(), c.finish_reason),
        None => (String::new(), None),
    };
    Ok(Some(Chunk {
        text,
        done_reason,
        usage: event.usage.map(|u| Usage { prompt_tokens: u.prompt_tokens, answer_tokens: u.completion_tokens }),
        server_ms: None,
        end: false,
    }))
}

/// The arguments object of a call: parsed from its JSON string, taken as is
/// when the server sent an object, and kept as the raw string when that
/// string is not a JSON object.
fn arguments(wire: Value) -> Value {
    match wire {
        Value::String(raw) => match serde_json::from_str::<Value>(&raw) {
            Ok(parsed @ Value::Object(_)) => parsed,
            _ => Value::String(raw),
        },
        Value::Null => Value::Object(Default::default()),
        other => other,
    }
}

/// The message of an error body `{"error": {"message": ...}}` (some servers
/// send `{"error": "..."}`), or the start of the body.
pub(crate) fn error_text(body: &str) -> String {
    let v: Option<Value> = serde_json::from_str(body).ok();
    let error = v.as_ref().and_then(|v| v.get("error"));
    error
        .and_then(|e| e.get("message").and_then(Value::as_str).or_else(|| e.as_str()))
        .map(str::to_owned)
        .unwrap_or_else(|| excerpt(body, 300))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: Options = Options { num_ctx: 8192, num_predict: 512, temperature: 0.1, seed: None };

    #[test]
    fn the_body_asks_for_a_json_schema_and_sends_arguments_as_a_string() {
        let call = ToolCall { id: "call_7".into(), name: "unit_logs".into(), arguments: json!({"unit": "a.service"}) };
        let request = ChatRequest::new(
            "test",
            vec![
                Message::user("why?"),
                Message { tool_calls: vec![call.clone()], ..Message::assistant("") },
                Message::tool_result(&call, "no lines"),
            ],
        )
        .with_format(json!({"type": "object"}));
        let body = chat_body("m", &request, &OPTIONS, false);
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert_eq!(body["response_format"]["json_schema"]["schema"]["type"], "object");
        assert_eq!(body["max_tokens"], 512);
        let args = body["messages"][1]["tool_calls"][0]["function"]["arguments"].as_str().unwrap();
        assert_eq!(serde_json::from_str::<Value>(args).unwrap()["unit"], "a.service");
        assert_eq!(body["messages"][2]["tool_call_id"], "call_7");
        assert!(body.get("options").is_none());
        assert!(body.get("stream_options").is_none());
        assert_eq!(chat_body("m", &request, &OPTIONS, true)["stream_options"]["include_usage"], true);
    }

    #[test]
    fn events_give_text_the_stop_reason_the_usage_and_the_end() {
        let text = read_event(r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"The"},"finish_reason":null}]}"#)
            .unwrap()
            .unwrap();
        assert_eq!((text.text.as_str(), text.done_reason, text.end), ("The", None, false));
        let stop = read_event(r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#).unwrap().unwrap();
        assert_eq!(stop.done_reason.as_deref(), Some("stop"));
        let usage =
            read_event(r#"data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":4}}"#).unwrap().unwrap();
        assert_eq!(usage.usage, Some(Usage { prompt_tokens: 12, answer_tokens: 4 }));
        assert!(read_event("data: [DONE]").unwrap().unwrap().end);
        for quiet in ["", ": keep-alive", "event: message", "id: 7", "retry: 1000"] {
            assert_eq!(read_event(quiet).unwrap(), None, "{quiet}");
        }
    }

    #[test]
    fn an_error_in_the_stream_is_the_servers_and_other_lines_are_refused() {
        let event = r#"data: {"error":{"message":"the model crashed","type":"api_error"}}"#;
        assert_eq!(read_event(event).unwrap_err(), StreamError::Server("the model crashed".into()));
        let bare = r#"{"error":{"message":"out of memory","type":"api_error","param":null,"code":null}}"#;
        assert_eq!(read_event(bare).unwrap_err(), StreamError::Server("out of memory".into()));
        for bad in ["data: {cut", "<html>502 Bad Gateway</html>", r#"{"choices":[]}"#] {
            assert!(matches!(read_event(bad), Err(StreamError::Bad(_))), "{bad}");
        }
    }

    #[test]
    fn string_arguments_are_parsed_and_bad_ones_kept_raw() {
        let body = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_a","type":"function","function":{"name":"disk_usage","arguments":"{\"path\":\"/var\"}"}},{"id":"call_b","type":"function","function":{"name":"x","arguments":"{broken"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16}}"#;
        let a = read_chat(body).unwrap();
        assert_eq!(a.message.content, "");
        assert_eq!(a.message.tool_calls[0].arguments, json!({"path": "/var"}));
        assert_eq!(a.message.tool_calls[1].arguments, json!("{broken"));
        assert_eq!(a.done_reason.as_deref(), Some("tool_calls"));
        assert_eq!(a.usage, Usage { prompt_tokens: 12, answer_tokens: 4 });
    }

    #[test]
    fn error_bodies_give_their_message() {
        let body = r#"{"error":{"message":"model \"x\" not found, try pulling it first","type":"not_found_error","param":null,"code":null}}"#;
        assert_eq!(error_text(body), "model \"x\" not found, try pulling it first");
        assert_eq!(error_text(r#"{"error":"plain"}"#), "plain");
        assert_eq!(error_text("Bad Gateway"), "Bad Gateway");
    }
}
