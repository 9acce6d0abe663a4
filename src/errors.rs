//! Error text for people: an error with the chain of its causes, each said
//! once.
//!
//! HTTP clients in particular hide the useful part in a source: reqwest says
//! "error sending request", its cause says "Connection refused". macha's own
//! errors do the opposite: they end their text with their cause (so `{e}`
//! alone, as records and log fields use it, is complete) and still return
//! it from `source()` (so it can be inspected). Walking such a chain naively
//! (anyhow's `{:#}`) says every cause twice: "cannot read config file
//! /tmp: Is a directory (os error 21): Is a directory (os error 21)". This
//! is the one place that walks a chain, and it skips what was just said.

/// `e`, then each of its sources that its text does not already end with,
/// joined with ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Says {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot send")]
    struct Hides {
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    enum Wraps {
        #[error("{0}")]
        Says(#[from] Says),
    }

    fn is_dir() -> std::io::Error {
        std::io::Error::from_raw_os_error(21)
    }

    #[test]
    fn a_cause_the_error_already_says_is_not_said_again() {
        let e = Says { path: "/tmp".into(), source: is_dir() };
        assert_eq!(chain(&e), "cannot read /tmp: Is a directory (os error 21)");
        let wrapped = Wraps::from(e);
        assert_eq!(chain(&wrapped), "cannot read /tmp: Is a directory (os error 21)");
        let anyhow = anyhow::Error::from(wrapped).context("the command failed");
        assert_eq!(chain(anyhow.as_ref()), "the command failed: cannot read /tmp: Is a directory (os error 21)");
    }

    #[test]
    fn a_cause_the_error_hides_is_said() {
        let e = Hides { source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused) };
        assert_eq!(chain(&e), "cannot send: connection refused");
    }
}
