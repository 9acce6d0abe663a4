//! Standard output of every command, through one writer.
//!
//! A reader that goes away early (`macha-approve list | head -1`) closes the
//! pipe; Rust ignores SIGPIPE, so `println!` would panic on the next line.
//! Everything a command prints goes through [`write`] instead (the `outln!`
//! and `out!` macros): once the pipe is closed it writes nothing more and
//! remembers it, the command still finishes its own work (a record written,
//! a notification queued, files handed back), and `main` then ends with the
//! status a shell gives a tool that SIGPIPE ended (141), quietly. SIGPIPE
//! itself stays ignored, so no process of macha, the daemon least, can die
//! of a peer that closed a socket. Commands that would print forever
//! (`--follow`) stop when [`closed`] says so.

use std::borrow::Cow;
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// The exit status of a command whose reader went away: 128 + SIGPIPE, as a
/// shell reports a tool that SIGPIPE ended (`set -o pipefail` sees it).
pub const CLOSED_STATUS: u8 = 141;

/// Writes to standard output and flushes. A closed pipe is not an error:
/// the text is dropped, and so is everything after it. Any other failure
/// (a full disk behind a redirection) is returned.
pub fn write(args: std::fmt::Arguments) -> std::io::Result<()> {
    if closed() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {
            CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        result => result.map_err(|e| std::io::Error::new(e.kind(), format!("cannot write to standard output: {e}"))),
    }
}

/// Standard output as an `io::Write`, for a command that writes a stream
/// of its own (`macha remote serve`), with the same rule as [`write`]: a
/// closed pipe drops what follows.
pub struct Stream;

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if closed() {
            return Ok(buf.len());
        }
        match std::io::stdout().lock().write_all(buf) {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                CLOSED.store(true, Ordering::Relaxed);
                Ok(buf.len())
            }
            result => result.map(|()| buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if closed() {
            return Ok(());
        }
        match std::io::stdout().lock().flush() {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                CLOSED.store(true, Ordering::Relaxed);
                Ok(())
            }
            result => result,
        }
    }
}

/// Whether the reader of standard output has gone away.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// Whether standard output is a terminal (a person reads it as it comes).
pub fn is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdout())
}

/// `println!` through [`write`].
macro_rules! outln {
    () => {
        $crate::cli::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` through [`write`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!($($arg)*))
    };
}

pub(crate) use {out, outln};

/// Text that macha did not write (the model's words, journal lines, unit
/// and mount names, notes, reasons, other programs' errors) as a terminal
/// shows it: every character a terminal would act on instead of print is
/// written out, never sent. That is the C0 controls (ESC, CR, LF, TAB,
/// BS ...), DEL and the C1 controls, which clear the screen, write the
/// clipboard (OSC 52), overwrite a line or fake a new one; and the Unicode
/// line and paragraph separators and bidirectional controls, which reorder
/// or break what is shown. `--json` output stays exact instead: JSON
/// escapes the C0 controls itself, and the value is what was written.
pub fn shown(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// [`shown`] for a block of text meant as lines (the model's answer to a
/// question): line feeds are kept, everything else is made visible.
pub fn shown_lines(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

fn escape(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let acted_on = |c: char| !(keep_newlines && c == '\n') && (c.is_control() || is_layout_control(c));
    if !text.chars().any(acted_on) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if !acted_on(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x80 => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        }
    }
    Cow::Owned(out)
}

/// Line and paragraph separators and the bidirectional controls (marks,
/// embeddings, overrides, isolates): not controls to Rust, but they move
/// or break what a terminal shows.
fn is_layout_control(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_terminal_would_act_on_is_written_out() {
        let hostile =
            "\x1b[2J\x1b]52;c;cm0gLXJmIH4=\x07ok\rfake\nline\ttab\x08\x7f\u{9b}31m\u{202e}evil\u{2028}end\u{2066}";
        assert_eq!(
            shown(hostile),
            "\\x1b[2J\\x1b]52;c;cm0gLXJmIH4=\\x07ok\\rfake\\nline\\ttab\\x08\\x7f\\u{9b}31m\\u{202e}evil\\u{2028}end\\u{2066}"
        );
        assert_eq!(shown_lines("one\x1b[31m\ntwo\r"), "one\\x1b[31m\ntwo\\r");
    }

    #[test]
    fn ordinary_text_is_left_as_it_is() {
        for text in ["nginx.service failed (exit-code, exit status 1)", "Grüße, 日本語, emoji 🚀", r"C:\path\x1b"]
        {
            assert!(matches!(shown(text), Cow::Borrowed(t) if t == text), "{text}");
        }
    }
}
