//! Answers that arrive in pieces, so that a person waiting sees the answer
//! as the model writes it (`macha ask`, `macha-approve discuss`): Ollama's
//! `stream: true` (one JSON object per line, the last with `done: true`)
//! and the OpenAI-compatible API's server-sent events (`data: {...}` lines,
//! the last `data: [DONE]`).
//!
//! Nothing in HTTP promises that a body chunk holds whole lines, so
//! [`Lines`] cuts them out of the bytes as they come; each API reads its
//! own lines into a [`Chunk`] (`ollama.rs`, `openai.rs`), and [`Assembly`]
//! puts the answer back together. A line is bounded ([`Lines`] refuses one
//! longer than its limit before holding more of it), the whole stream is
//! bounded by the provider as a whole answer is, and a stream that stops
//! before its last chunk is an error, never a shorter answer. Pure; the
//! HTTP is `provider.rs`'s.

use super::chat::{Answer, Message, Usage};
use crate::bounded::Size;

/// Why a stream could not be read; the provider names the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamError {
    /// The stream is not what the API sends: the detail says how.
    Bad(String),
    /// The server said, in the stream, that the answer failed.
    Server(String),
}

/// Complete lines cut out of a byte stream, `\n` or `\r\n` ended.
pub(crate) struct Lines {
    partial: Vec<u8>,
    max_line: Size,
}

impl Lines {
    /// Lines of at most `max_line`.
    pub fn new(max_line: Size) -> Self {
        Self { partial: Vec::new(), max_line }
    }

    /// The lines `bytes` completes, in order. A line longer than the limit
    /// is an error as soon as that many bytes of it have come.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, StreamError> {
        let mut lines = Vec::new();
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&rest[..end]);
            self.check()?;
            lines.push(self.take());
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        self.check()?;
        Ok(lines)
    }

    /// What is left after the body ended: a last line without its line end,
    /// if any.
    pub fn finish(mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| self.take())
    }

    fn check(&self) -> Result<(), StreamError> {
        if self.partial.len() as u64 > self.max_line.get() {
            return Err(StreamError::Bad(format!(
                "a line of the stream runs past {} without ending (one chunk of an answer is far smaller)",
                self.max_line
            )));
        }
        Ok(())
    }

    fn take(&mut self) -> String {
        let mut line = std::mem::take(&mut self.partial);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8_lossy(&line).into_owned()
    }
}

/// What one line of a stream says.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Chunk {
    /// A piece of the answer's text (may be empty).
    pub text: String,
    /// Why the model stopped, when this line says it.
    pub done_reason: Option<String>,
    /// Tokens counted, when this line says them.
    pub usage: Option<Usage>,
    /// The server's own time, in milliseconds (Ollama).
    pub server_ms: Option<u64>,
    /// This line ends the stream (Ollama's `done: true`, OpenAI's `[DONE]`).
    pub end: bool,
}

/// An answer put back together from its chunks.
#[derive(Debug, Default)]
pub(crate) struct Assembly {
    text: String,
    done_reason: Option<String>,
    usage: Option<Usage>,
    server_ms: Option<u64>,
    ended: bool,
    chunks: usize,
}

impl Assembly {
    /// Adds a chunk; its text is the caller's to show.
    pub fn add(&mut self, chunk: Chunk) {
        self.chunks += 1;
        self.text.push_str(&chunk.text);
        self.done_reason = chunk.done_reason.or(self.done_reason.take());
        self.usage = chunk.usage.or(self.usage);
        self.server_ms = chunk.server_ms.or(self.server_ms);
        self.ended |= chunk.end;
    }

    /// Whether the last chunk has come.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The answer, once the stream ended as it should. `finish_is_end`:
    /// a stop reason counts as the end (OpenAI-compatible servers, some of
    /// which, or the proxies in front of them, leave out `[DONE]`).
    pub fn answer(self, finish_is_end: bool) -> Result<Answer, StreamError> {
        let ended = self.ended || (finish_is_end && self.done_reason.is_some());
        if !ended {
            return Err(StreamError::Bad(format!(
                "the stream stopped after {} chunk{} without its last one: the answer is incomplete",
                self.chunks,
                if self.chunks == 1 { "" } else { "s" }
            )));
        }
        Ok(Answer {
            message: Message::assistant(self.text),
            done_reason: self.done_reason,
            ended: true,
            usage: self.usage.unwrap_or_default(),
            server_ms: self.server_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_wherever_the_body_chunks_end() {
        let mut lines = Lines::new(Size::bytes(64));
        assert!(lines.push(b"{\"a\":").unwrap().is_empty());
        assert_eq!(lines.push(b"1}\n{\"b\"").unwrap(), ["{\"a\":1}"]);
        assert_eq!(lines.push(b":2}\r\n\n").unwrap(), ["{\"b\":2}", ""]);
        assert_eq!(lines.finish(), None);
        let mut lines = Lines::new(Size::bytes(64));
        lines.push(b"tail without end").unwrap();
        assert_eq!(lines.finish().as_deref(), Some("tail without end"));
    }

    #[test]
    fn a_line_over_its_limit_is_refused_before_it_ends() {
        let mut lines = Lines::new(Size::bytes(8));
        assert!(lines.push(b"12345678").unwrap().is_empty());
        let StreamError::Bad(why) = lines.push(b"9").unwrap_err() else { panic!("not Bad") };
        assert!(why.contains("runs past 8 bytes"), "{why}");
        assert!(Lines::new(Size::bytes(8)).push(b"123456789\n").is_err(), "also when the end comes in the same chunk");
    }

    #[test]
    fn an_answer_needs_its_last_chunk() {
        let piece = |text: &str| Chunk { text: text.into(), ..Chunk::default() };
        let mut a = Assembly::default();
        a.add(piece("The disk "));
        a.add(piece("is full."));
        let StreamError::Bad(why) = a.answer(false).unwrap_err() else { panic!("not Bad") };
        assert!(why.contains("stopped after 2 chunks without its last one"), "{why}");

        let mut a = Assembly::default();
        a.add(piece("The disk "));
        let usage = Usage { prompt_tokens: 10, answer_tokens: 3 };
        a.add(Chunk { done_reason: Some("stop".into()), usage: Some(usage), end: true, ..piece("is full.") });
        let answer = a.answer(false).unwrap();
        assert_eq!(answer.message.content, "The disk is full.");
        assert_eq!((answer.done_reason.as_deref(), answer.usage), (Some("stop"), usage));

        let mut a = Assembly::default();
        a.add(Chunk { done_reason: Some("length".into()), ..piece("cut") });
        assert!(a.answer(true).is_ok(), "a stop reason ends an OpenAI stream");
    }
}
