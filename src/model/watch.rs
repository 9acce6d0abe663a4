//! A request as it goes, for a person waiting for it: whether it waits for
//! a slot or is at the model, the tool calls the model asked for, and the
//! answer's text as it arrives. A model takes seconds to minutes to answer;
//! `macha ask` shows this on a progress line instead of a silent terminal.
//! The daemon's requests are not watched.

use super::chat::ToolCall;
use super::provider::{ProviderError, ProviderInfo};

/// What happened to a watched request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress<'a> {
    /// Waiting for a slot in the queue in front of the model: every slot
    /// is taken.
    Queued,
    /// Sent to this endpoint; nothing of the answer has come yet.
    Sent(&'a ProviderInfo),
    /// A piece of the answer's text, as it came (streamed answers only).
    Text(&'a str),
    /// The endpoint failed after part of its answer had come; the next
    /// endpoint answers from the beginning.
    BrokeOff(&'a ProviderError),
    /// The model asked for this tool call in this round; it is being
    /// carried out.
    Calling { round: u32, call: &'a ToolCall },
}

/// Whoever watches a request. Called on the task that runs the request;
/// it must not block.
pub trait Watch {
    fn progress(&self, event: Progress<'_>);
}
