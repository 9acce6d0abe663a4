//! Surviving a journal file that shrinks under the reader.
//!
//! libsystemd maps journal files into memory (8 MiB windows). journald cuts
//! files short when it rotates and vacuums them, and touching a mapped page
//! past the new end of a file raises SIGBUS, whose default action kills the
//! process. journald and journalctl survive this with a handler that maps an
//! anonymous zero page over the faulting one, so the access completes and
//! reads zeros (sd-journal takes that for a corrupt object); libsystemd does
//! not install it for library users. This module does the same for macha,
//! and is the only `unsafe` code in it.
//!
//! The handler is process-wide and installed once, but it only takes faults
//! that are ours: a bad address (`BUS_ADRERR`) raised on a thread while it
//! is inside [`guard`]. Any other SIGBUS (another cause, another thread,
//! code outside a journal call) restores the default action and is raised
//! again, so it kills the process exactly as it would have without macha's
//! handler. The caller learns of a caught fault from [`guard`]'s result and
//! must drop the journal handle: its windows hold zero pages now, and
//! closing the handle unmaps them with the rest.

use std::cell::Cell;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use nix::libc;
use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
use nix::sys::signal::{raise, sigaction, signal, SaFlags, SigAction, SigHandler, SigSet, Signal};

thread_local! {
    /// Set while this thread is inside [`guard`]. Const-initialised and
    /// without a destructor, so reading it in the handler touches no lazy
    /// initialisation (it compiles to a plain thread-local variable).
    static INSIDE: Cell<bool> = const { Cell::new(false) };
    /// Set by the handler when it caught a fault on this thread.
    static FAULTED: Cell<bool> = const { Cell::new(false) };
}

/// The page size, read once before the handler can run (`sysconf` is not
/// async-signal-safe).
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

static INSTALL: Once = Once::new();

/// A journal file was cut short under a call made in [`guard`]: the call
/// read zeros for the missing pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fault;

/// Runs `f` (calls into libsystemd, and copies out of its mappings) so that
/// a journal file cut short under it does not kill the process: the pages
/// past the file's new end read as zeros, and the fault is reported as
/// [`Fault`] once `f` returns (its result, read from zeros, is dropped).
pub(super) fn guard<T>(f: impl FnOnce() -> T) -> Result<T, Fault> {
    INSTALL.call_once(install);
    let inside = Inside(INSIDE.replace(true));
    let value = f();
    drop(inside);
    if FAULTED.replace(false) {
        return Err(Fault);
    }
    Ok(value)
}

/// Marks the thread as inside [`guard`] until dropped (also on a panic).
struct Inside(bool);

impl Drop for Inside {
    fn drop(&mut self) {
        INSIDE.set(self.0);
    }
}

fn install() {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    PAGE_SIZE.store(usize::try_from(page).unwrap_or(4096), Ordering::Relaxed);
    let action =
        SigAction::new(SigHandler::SigAction(on_sigbus), SaFlags::SA_SIGINFO | SaFlags::SA_ONSTACK, SigSet::empty());
    // SAFETY: the handler only calls async-signal-safe functions (mmap,
    // sigaction, raise) and reads thread-locals that need no initialisation.
    // Should installing fail, SIGBUS keeps its default action, as before.
    if let Err(e) = unsafe { sigaction(Signal::SIGBUS, &action) } {
        tracing::warn!(error = %e, "cannot install the SIGBUS handler: a journal file cut short while it is read will stop macha");
    }
}

extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code == libc::BUS_ADRERR && INSIDE.get() && cover_with_zeros(addr) {
        FAULTED.set(true);
        return;
    }
    // Not ours: die of it as if no handler had been installed. The signal is
    // blocked while this runs, so the raised one arrives on return.
    // SAFETY: restoring the default action has no preconditions.
    let _ = unsafe { signal(Signal::SIGBUS, SigHandler::SigDfl) };
    let _ = raise(Signal::SIGBUS);
}

/// Maps a private anonymous page (zeros) over the page holding `addr`.
fn cover_with_zeros(addr: usize) -> bool {
    let page = PAGE_SIZE.load(Ordering::Relaxed);
    let (Some(start), Some(length)) = (NonZeroUsize::new(addr & !(page - 1)), NonZeroUsize::new(page)) else {
        return false;
    };
    // SAFETY: MAP_FIXED replaces the page of the file mapping that faulted,
    // which belongs to libsystemd's window (the fault came from inside a
    // journal call on this thread); it stays the window's memory and is
    // unmapped with it when the journal is closed.
    let mapped = unsafe {
        mmap_anonymous(
            Some(start),
            length,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_FIXED,
        )
    };
    mapped.is_ok()
}
