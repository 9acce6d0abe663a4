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

/// Whether the reader of standard output has gone away.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
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
