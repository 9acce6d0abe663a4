//! The protocol a controller speaks with `macha remote serve` over SSH:
//! JSON lines, one request and one reply each, typed and versioned. A
//! line is at most [`MAX_MESSAGE`] bytes; a request names its `verb` and
//! carries nothing else than that verb's fields (`deny_unknown_fields`).
//! Parsing is pure: what a line is, or the typed error a reply carries.

use serde::{Deserialize, Serialize};

use crate::catalog::Probe;
use crate::decide::ProposedAction;
use crate::ids::Fingerprint;

/// The protocol's version; a hello with another is refused.
pub const VERSION: u32 = 1;

/// The longest request line read, in bytes (the newline aside).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// The verbs, in the order `hello` lists them as capabilities.
pub const VERBS: [&str; 5] = ["hello", "observe", "probe", "act", "approvals"];

/// One request from the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Opens the session: the controller's protocol version and its name
    /// (recorded with every request that follows).
    Hello { version: u32, controller: String },
    /// This host's snapshot and the incidents detected in it.
    Observe {},
    /// One read-only probe, as the catalog's `investigate` names them.
    Probe {
        probe: Probe,
        #[serde(default)]
        unit: Option<String>,
        #[serde(default)]
        path: Option<String>,
    },
    /// One catalog action for `incident`, as proposed; judged here by this
    /// host's own gate. `approval` is the person who approved it on the
    /// controller, when one did.
    Act {
        incident: Fingerprint,
        proposed: ProposedAction,
        #[serde(default)]
        approval: Option<Approval>,
    },
    /// The items waiting in this host's own approval queue.
    Approvals {},
}

impl Request {
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Observe {} => "observe",
            Request::Probe { .. } => "probe",
            Request::Act { .. } => "act",
            Request::Approvals {} => "approvals",
        }
    }
}

pub use crate::elsewhere::Approval;

/// Why a request got no answer but an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not JSON, not an object, or a verb's fields wrong.
    Malformed,
    /// Longer than [`MAX_MESSAGE`] bytes.
    TooLarge,
    /// A verb this version does not have.
    UnknownVerb,
    /// The first request was not `hello`.
    HelloFirst,
    /// A `hello` with another protocol version.
    Version,
    /// sshd was asked to run a command: only the protocol is served.
    CommandRefused,
    /// This host could not do what was asked (systemd down, a store error).
    Failed,
}

/// A typed error, as the reply to a request that has none other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ProtocolError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

/// Parses one request line (without its newline).
pub fn parse(line: &[u8]) -> Result<Request, ProtocolError> {
    if line.len() > MAX_MESSAGE {
        return Err(too_large(line.len()));
    }
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| ProtocolError::new(ErrorKind::Malformed, format!("not a JSON request: {e}")))?;
    let Some(verb) = value.get("verb") else {
        return Err(ProtocolError::new(ErrorKind::Malformed, "a request is an object with a \"verb\""));
    };
    let Some(verb) = verb.as_str().map(str::to_owned) else {
        return Err(ProtocolError::new(ErrorKind::Malformed, "\"verb\" is not a string"));
    };
    if !VERBS.contains(&verb.as_str()) {
        let shown: String = verb.chars().take(40).collect();
        return Err(ProtocolError::new(
            ErrorKind::UnknownVerb,
            format!("unknown verb {shown:?} (protocol {VERSION} has: {})", VERBS.join(", ")),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ProtocolError::new(ErrorKind::Malformed, format!("the fields of {verb:?} are wrong: {e}")))
}

pub fn too_large(len: usize) -> ProtocolError {
    ProtocolError::new(ErrorKind::TooLarge, format!("a request of {len} bytes or more; at most {MAX_MESSAGE} are read"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(line: &str) -> ErrorKind {
        parse(line.as_bytes()).unwrap_err().kind
    }

    #[test]
    fn each_verb_parses_with_its_fields_and_nothing_else() {
        assert_eq!(
            parse(br#"{"verb":"hello","version":1,"controller":"ctl"}"#).unwrap(),
            Request::Hello { version: 1, controller: "ctl".into() }
        );
        assert_eq!(parse(br#"{"verb":"observe"}"#).unwrap(), Request::Observe {});
        assert_eq!(parse(br#"{"verb":"approvals"}"#).unwrap().verb(), "approvals");
        let probe = parse(br#"{"verb":"probe","probe":"unit_status","unit":"web.service"}"#).unwrap();
        assert_eq!(probe.verb(), "probe");
        let act = r#"{"verb":"act","incident":"unit-failed:web.service","proposed":{"kind":"restart_unit","unit":"web.service","reason":"r"},"approval":{"id":3,"by":"alice"}}"#;
        let Request::Act { incident, approval, .. } = parse(act.as_bytes()).unwrap() else { panic!() };
        assert_eq!((incident.as_str(), approval.unwrap().by.as_str()), ("unit-failed:web.service", "alice"));
        // Fields another verb has, or none has, are refused.
        assert_eq!(kind(r#"{"verb":"observe","controller":"x"}"#), ErrorKind::Malformed);
        assert_eq!(kind(r#"{"verb":"hello","version":1,"controller":"c","shell":"id"}"#), ErrorKind::Malformed);
    }

    #[test]
    fn bad_lines_get_the_error_that_names_what_is_wrong() {
        assert_eq!(kind("sh -c id"), ErrorKind::Malformed);
        assert_eq!(kind("[1,2]"), ErrorKind::Malformed);
        assert_eq!(kind(r#"{"verb":7}"#), ErrorKind::Malformed);
        assert_eq!(kind(r#"{"verb":"exec","command":"id"}"#), ErrorKind::UnknownVerb);
        assert!(parse(br#"{"verb":"exec"}"#).unwrap_err().message.contains("hello, observe, probe, act, approvals"));
        assert_eq!(kind(r#"{"verb":"probe","probe":"read_file","unit":"x"}"#), ErrorKind::Malformed);
        let long = format!(r#"{{"verb":"observe","x":"{}"}}"#, "a".repeat(MAX_MESSAGE));
        assert_eq!(kind(&long), ErrorKind::TooLarge);
    }
}
