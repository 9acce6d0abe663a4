//! Memory the daemon gives back when it falls idle.
//!
//! Two kinds of page stay resident after work that is rarely done again
//! (start-up, a decision):
//!
//! - the heap's freed pages, which glibc keeps for reuse; `malloc_trim`
//!   returns them to the kernel;
//! - the pages of the daemon's own program that the work ran or read. The
//!   kernel maps a program's code 64 KiB around each page first run
//!   (fault-around), so after start-up about three quarters of a 10 MB
//!   binary is resident, while an idle daemon runs a fraction of it.
//!   `MADV_PAGEOUT` on the program's read-only mappings reclaims the pages
//!   no other process maps; the ones still used come back from the file on
//!   their next run.
//!
//! Only mappings that are never written are paged out: the code and the
//! read-only data before it. Writable data, the relocated read-only data
//! after the code, the heap, stacks and shared libraries are left alone,
//! so nothing the process wrote can be lost. Measured in BENCHMARKS.md
//! ("Event-driven detection").

use std::path::Path;

/// Resident memory before and after giving back, in KiB (`VmRSS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GivenBack {
    pub before_kib: u64,
    pub after_kib: u64,
}

/// Returns the heap's free pages and pages out the program's read-only
/// mappings (see the module's documentation). Costs a few milliseconds;
/// call it when the daemon falls idle, not on every event.
pub fn give_back() -> GivenBack {
    let before_kib = resident_kib();
    trim_heap();
    if let (Ok(maps), Ok(exe)) = (std::fs::read_to_string("/proc/self/maps"), std::fs::read_link("/proc/self/exe")) {
        for range in read_only_program_ranges(&maps, &exe) {
            page_out(range);
        }
    }
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
    // SAFETY: the range is a whole mapping of this process's own program
    // that is not writable (checked by `read_only_program_ranges`), so no
    // page of it holds data the process wrote; MADV_PAGEOUT only drops
    // pages the kernel can read back from the file. An error (an old
    // kernel without MADV_PAGEOUT) leaves the pages where they are.
    let _ = unsafe { nix::sys::mman::madvise(addr, len.get(), nix::sys::mman::MmapAdvise::MADV_PAGEOUT) };
}

/// The address ranges of `exe`'s mappings in `maps` (the text of
/// `/proc/self/maps`) that may be paged out: the executable code, and the
/// read-only mapping at the file's start (headers, read-only data, unwind
/// tables). Never a writable mapping, nor the read-only one after the code,
/// whose pages the loader wrote (relocations) before it made them read-only.
fn read_only_program_ranges(maps: &str, exe: &Path) -> Vec<std::ops::Range<usize>> {
    let exe = exe.as_os_str().as_encoded_bytes();
    let mut ranges = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut fields = line.split_ascii_whitespace();
        let (Some(span), Some(perms), Some(offset), Some(_dev), Some(_inode)) =
            (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path: Vec<&str> = fields.collect();
        if path.join(" ").as_bytes() != exe {
            continue;
        }
        let pageable = match perms.as_bytes() {
            [b'r', b'-', b'x', b'p'] => true,
            [b'r', b'-', b'-', b'p'] => offset.bytes().all(|b| b == b'0'),
            _ => false,
        };
        let Some((start, end)) = span.split_once('-') else { continue };
        if let (true, Ok(start), Ok(end)) = (pageable, usize::from_str_radix(start, 16), usize::from_str_radix(end, 16))
        {
            if start < end {
                ranges.push(start..end);
            }
        }
    }
    ranges
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

    const MAPS: &str = "\
55d0c8a00000-55d0c8c9b000 r--p 00000000 fd:01 1234 /nix/store/abc-macha/bin/macha
55d0c8c9b000-55d0c9360000 r-xp 0029b000 fd:01 1234 /nix/store/abc-macha/bin/macha
55d0c9360000-55d0c93b0000 r--p 00960000 fd:01 1234 /nix/store/abc-macha/bin/macha
55d0c93b0000-55d0c93b7000 rw-p 009b0000 fd:01 1234 /nix/store/abc-macha/bin/macha
55d0ca000000-55d0ca100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000020000 r--p 00000000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000020000-7f0000180000 r-xp 00020000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000201000 r-xp 00000000 fd:01 77 /nix/store/abc-macha/bin/macha-other
garbage line
7fff00000000-7fff00021000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn only_the_programs_code_and_leading_read_only_data_are_paged_out() {
        let ranges = read_only_program_ranges(MAPS, Path::new("/nix/store/abc-macha/bin/macha"));
        assert_eq!(ranges, vec![0x55d0c8a00000..0x55d0c8c9b000, 0x55d0c8c9b000..0x55d0c9360000]);
    }

    #[test]
    fn a_program_replaced_on_disk_is_still_recognised_by_its_path_as_mapped() {
        let maps = "1000-2000 r-xp 00001000 fd:01 5 /nix/store/x/bin/macha (deleted)\n";
        let ranges = read_only_program_ranges(maps, Path::new("/nix/store/x/bin/macha (deleted)"));
        assert_eq!(ranges, vec![0x1000..0x2000]);
        assert!(read_only_program_ranges(maps, Path::new("/nix/store/x/bin/macha")).is_empty());
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
