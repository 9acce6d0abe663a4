//! Error text for people: an error with the chain of its causes.
//!
//! HTTP clients in particular hide the useful part in a source: reqwest says
//! "error sending request", its cause says "Connection refused".

/// `e`, then each of its sources, joined with ": ".
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
