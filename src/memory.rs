//! Memory the daemon gives back when it falls idle.
//!
//! Two kinds of page stay resident after work that is rarely done again
//! (start-up, a decision):
//!
//! - the heap's freed pages, which glibc keeps for reuse; `malloc_trim`
//!   returns them to the kernel;
//! - pages of the program and of its shared libraries that the work ran or
//!   read. The kernel maps code 64 KiB around each page first run
//!   (fault-around), so after start-up most of the binary is resident,
//!   while an idle daemon runs a fraction of it. `MADV_PAGEOUT` on these
//!   mappings reclaims the pages no other process maps; the ones still
//!   used come back from their file on their next run.
//!
//! After that, a fault in the program reads only the page it needs: no
//! read-ahead around it (`MADV_RANDOM`; a device may read ahead 8 MB), and
//! the program's pages cached but mapped by no process are dropped
//! (`POSIX_FADV_DONTNEED`), so the kernel's fault-around (64 KiB, which
//! `MADV_RANDOM` does not turn off) finds no neighbours to map. Another
//! run of the program (`macha status`, `macha-approve`) caches it again;
//! the daemon's next faults then map the cached pages around each page it
//! runs, up to about a megabyte (measured in BENCHMARKS.md).
//!
//! Only pages the kernel can read back from their file are asked for: a
//! private mapping that is not writable and holds no page the process
//! wrote (`Anonymous: 0 kB` in `/proc/self/smaps`; the loader's relocated
//! tables do). The heap, stacks, writable data and shared mappings (the
//! journal's files) are left alone. Reclaiming never loses data in any
//! case; this keeps it from swapping out what is in use. Measured in
//! BENCHMARKS.md ("Detection latency").

/// Resident memory before and after giving back, in KiB (`VmRSS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GivenBack {
    pub before_kib: u64,
    pub after_kib: u64,
}

/// Returns the heap's free pages and pages out the file-backed read-only
/// mappings (see the module's documentation). Costs a few milliseconds;
/// call it when the daemon falls idle, not on every event.
pub fn give_back() -> GivenBack {
    let before_kib = resident_kib();
    trim_heap();
    if let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") {
        for range in file_backed_read_only_ranges(&smaps) {
            page_out(range);
        }
    }
    drop_program_cache();
    GivenBack { before_kib, after_kib: resident_kib() }
}

#[cfg(target_env = "gnu")]
fn trim_heap() {
    // SAFETY: malloc_trim only returns free memory of glibc's arenas to the
    // kernel; it takes the arenas' locks and touches no allocated block.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn trim_heap() {}

fn page_out(range: std::ops::Range<usize>) {
    let Some(len) = std::num::NonZeroUsize::new(range.end - range.start) else { return };
    let Some(addr) = std::ptr::NonNull::new(range.start as *mut std::ffi::c_void) else { return };
    // SAFETY: the range is a whole file-backed mapping of this process that
    // is not writable and holds no page the process wrote (checked by
    // `file_backed_read_only_ranges`); MADV_PAGEOUT only drops pages the
    // kernel can read back from the file, and never changes their content.
    // An error (an old kernel without MADV_PAGEOUT, a mapping gone
    // meanwhile) leaves the pages where they are.
    let _ = unsafe { nix::sys::mman::madvise(addr, len.get(), nix::sys::mman::MmapAdvise::MADV_PAGEOUT) };
    // SAFETY: as above; MADV_RANDOM only turns off read-ahead for later
    // faults in the range, and changes no page.
    let _ = unsafe { nix::sys::mman::madvise(addr, len.get(), nix::sys::mman::MmapAdvise::MADV_RANDOM) };
}

/// Drops the pages of the program's file that are cached and mapped by no
/// process, so that a later fault maps only the page it needs and not the
/// neighbours read ahead around it (see the module's documentation).
fn drop_program_cache() {
    // The program's own file, not a path that may name another by now.
    if let Ok(file) = std::fs::File::open("/proc/self/exe") {
        let _ = nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    }
}

/// The address ranges of the mappings in `smaps` (the text of
/// `/proc/self/smaps`) that may be paged out: private, not writable,
/// backed by a file (an inode, a path), with no anonymous page in them.
fn file_backed_read_only_ranges(smaps: &str) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    // The mapping being read, while it may still qualify.
    let mut current: Option<std::ops::Range<usize>> = None;
    for line in smaps.lines() {
        if let Some((range, pageable)) = mapping_header(line) {
            current = pageable.then_some(range);
            continue;
        }
        let Some(anonymous) = line.strip_prefix("Anonymous:") else { continue };
        if let Some(range) = current.take() {
            if anonymous.trim().trim_end_matches("kB").trim() == "0" {
                ranges.push(range);
            }
        }
    }
    ranges
}

/// A mapping's header line: its range, and whether it is private, not
/// writable and file-backed; `None` for a line that is no header (a field
/// of the mapping).
fn mapping_header(line: &str) -> Option<(std::ops::Range<usize>, bool)> {
    // address perms offset dev inode path
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let (start, end) = (usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?);
    let perms = fields.next()?;
    let (_offset, _dev, inode) = (fields.next()?, fields.next()?, fields.next()?);
    let path = fields.next().unwrap_or("");
    let file_backed = inode != "0" && path.starts_with('/');
    let read_only_private = matches!(perms.as_bytes(), [b'r', b'-', _, b'p']);
    Some((start..end, file_backed && read_only_private && start < end))
}

/// This process's `VmRSS`, in KiB; 0 when it cannot be read.
pub fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    const SMAPS: &str = "\
55d0c8a00000-55d0c8c9b000 r--p 00000000 fd:01 1234 /nix/store/abc-macha/bin/macha
Size:               2668 kB
Rss:                 640 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
55d0c8c9b000-55d0c9360000 r-xp 0029b000 fd:01 1234 /nix/store/abc-macha/bin/macha
Rss:                2984 kB
Anonymous:             0 kB
55d0c9360000-55d0c93b0000 r--p 00960000 fd:01 1234 /nix/store/abc-macha/bin/macha
Rss:                 428 kB
Anonymous:           428 kB
55d0c93b0000-55d0c93b7000 rw-p 009b0000 fd:01 1234 /nix/store/abc-macha/bin/macha
Anonymous:            28 kB
55d0ca000000-55d0ca100000 rw-p 00000000 00:00 0 [heap]
Anonymous:           824 kB
7f0000000000-7f0000020000 r--p 00000000 fd:01 99 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
Anonymous:             0 kB
7f0000020000-7f0000180000 r-xp 00020000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f0000180000-7f0000190000 r--s 00000000 fd:01 42 /var/log/journal/x/system.journal
Anonymous:             0 kB
7f0000200000-7f0000201000 r-xp 00000000 fd:01 77 /nix/store/abc-macha/bin/macha (deleted)
Anonymous:             0 kB
7f0000300000-7f0000301000 r--p 00000000 00:00 0
Anonymous:             0 kB
garbage line
7fff00000000-7fff00021000 rw-p 00000000 00:00 0 [stack]
Anonymous:           132 kB
7fff00100000-7fff00102000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
";

    #[test]
    fn only_file_backed_read_only_pages_never_written_are_paged_out() {
        assert_eq!(
            file_backed_read_only_ranges(SMAPS),
            vec![
                0x55d0c8a00000..0x55d0c8c9b000,
                0x55d0c8c9b000..0x55d0c9360000,
                0x7f0000000000..0x7f0000020000,
                0x7f0000020000..0x7f0000180000,
                0x7f0000200000..0x7f0000201000,
            ]
        );
    }

    #[test]
    fn a_mapping_without_its_anonymous_line_is_left_alone() {
        let smaps = "1000-2000 r-xp 00000000 fd:01 5 /lib/x.so\nRss: 4 kB\n3000-4000 r-xp 00000000 fd:01 6 /lib/y.so\n";
        assert!(file_backed_read_only_ranges(smaps).is_empty());
    }

    static WRITTEN: AtomicU64 = AtomicU64::new(7);

    #[test]
    fn giving_back_loses_nothing_the_process_wrote() {
        WRITTEN.store(0x006d_6163_6861, Ordering::SeqCst);
        let heap: Vec<u64> = (0..100_000).collect();
        let given = give_back();
        assert!(given.before_kib > 0, "{given:?}");
        assert_eq!(WRITTEN.load(Ordering::SeqCst), 0x006d_6163_6861);
        assert_eq!(heap.iter().sum::<u64>(), 100_000 * 99_999 / 2);
        // The code paged out runs again.
        assert_eq!(crate::text::cut("given back", 6, "."), "given.");
    }
}
