//! The root side of the helper units: `macha helper NAME`, run as root by
//! `macha-action-NAME.service` and by nothing else.
//!
//! It takes the request the daemon wrote (`request::take`), checks the
//! action against the configuration a second time, and runs it. This is the
//! only code in macha that starts a program: a fixed program name, resolved
//! through the unit's own `PATH`, with arguments built from typed values;
//! never a shell, never text from the model. Its output goes to the unit's
//! journal.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::Utc;

use crate::act::request::{self, Refused};
use crate::catalog::Action;
use crate::config::Config;
use crate::gate;
use crate::observe::nixos;

/// The helpers, by the name `macha helper` takes.
pub const HELPERS: [(&str, &str); 4] = [
    ("gc", "macha-action-gc.service"),
    ("vacuum-journal", "macha-action-vacuum-journal.service"),
    ("rebuild", "macha-action-rebuild.service"),
    ("rollback", "macha-action-rollback.service"),
];

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("refused: {0}")]
    Refused(#[from] Refused),
    #[error("refused: {0}")]
    OutOfBounds(String),
    #[error("{0}")]
    Failed(String),
}

/// Runs helper `name` once: the request, the second check, the work.
/// Returns a one-line summary of what was done.
pub fn serve(config: &Config, name: &str) -> Result<String, HelperError> {
    let Some((_, unit)) = HELPERS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<_> = HELPERS.iter().map(|(n, _)| *n).collect();
        return Err(HelperError::OutOfBounds(format!("no helper named {name:?} (helpers: {})", names.join(", "))));
    };
    let req = request::take(&config.state_dir, unit, Utc::now())?;
    eprintln!("macha helper {name}: request {} ({})", req.id, req.action);
    check_again(config, &req.action)?;
    match &req.action {
        Action::CollectGarbage { older_than_days } => collect_garbage(*older_than_days),
        Action::VacuumJournal { max_size_mb } => {
            let dir = config.journal_dir.clone().unwrap_or_else(|| PathBuf::from("/var/log/journal"));
            let floor = floor_bytes(config.act.journal_floor_mb, *max_size_mb);
            let r = vacuum(&dir, floor, &CurrentBoot::read()?).map_err(|e| HelperError::Failed(e.to_string()))?;
            Ok(r.summary())
        }
        Action::NixosRebuild { mode } => {
            let flake = config.nixos.flake.as_deref().expect("checked again above");
            if *mode != crate::catalog::RebuildMode::DryBuild {
                // Dry-build first: an evaluation or build plan that fails
                // stops here, before anything is activated.
                run("nixos-rebuild", &["dry-build", "--flake", flake])
                    .map_err(|e| HelperError::Failed(format!("dry-build failed, nothing was changed: {e}")))?;
            }
            run("nixos-rebuild", &[mode.as_str(), "--flake", flake]).map_err(HelperError::Failed)?;
            Ok(format!("nixos-rebuild {} --flake {flake} succeeded", mode.as_str()))
        }
        Action::RollbackGeneration { generation } => rollback(config, *generation),
        other => Err(HelperError::OutOfBounds(format!("{other} is not a helper action"))),
    }
}

/// The same bounds the gate applied, read from the configuration again: a
/// request is data, however it got into the file.
fn check_again(config: &Config, action: &Action) -> Result<(), HelperError> {
    if let Action::RollbackGeneration { generation } = action {
        let gens = nixos::read(&config.nixos.profile, &config.nixos.current_system)
            .map_err(|e| HelperError::Failed(format!("cannot read the generations: {e}")))?;
        return gens.rollback_target(*generation).map(drop).map_err(HelperError::OutOfBounds);
    }
    let limits = gate::Policy::from_config(config).limits;
    gate::check_bounds(action, &limits).map_err(|e| HelperError::OutOfBounds(e.replace("not acted because ", "")))
}

/// Runs `program` with `args`; its output goes to the unit's journal.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    eprintln!("macha helper: running {program} {}", args.join(" "));
    let status = Command::new(program).args(args).status().map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} {} ended with {status}", args.join(" ")))
    }
}

fn collect_garbage(days: u32) -> Result<String, HelperError> {
    let age = format!("{days}d");
    run("nix-collect-garbage", &["--delete-older-than", &age]).map_err(HelperError::Failed)?;
    Ok(format!("nix-collect-garbage --delete-older-than {age} succeeded"))
}

/// Points the system profile at `generation` (default: the one before the
/// current) and activates it; on a failed activation the profile goes back.
fn rollback(config: &Config, generation: Option<u32>) -> Result<String, HelperError> {
    let profile = &config.nixos.profile;
    let gens = nixos::read(profile, &config.nixos.current_system)
        .map_err(|e| HelperError::Failed(format!("cannot read the generations: {e}")))?;
    let from = gens.profile.ok_or_else(|| HelperError::Failed(format!("{} is not a profile", profile.display())))?;
    let to = gens.rollback_target(generation).map_err(HelperError::OutOfBounds)?;
    let p = profile.display().to_string();
    let switch = |n: u32| run("nix-env", &["--profile", &p, "--switch-generation", &n.to_string()]);
    switch(to).map_err(HelperError::Failed)?;
    let activate = profile.join("bin/switch-to-configuration");
    if let Err(e) = run(&activate.display().to_string(), &["switch"]) {
        let back = match switch(from) {
            Ok(()) => format!("the profile points at generation {from} again"),
            Err(e2) => format!("and the profile could not be set back to generation {from}: {e2}"),
        };
        return Err(HelperError::Failed(format!("activating generation {to} failed ({e}); {back}")));
    }
    Ok(format!("generation {to} is the system now (was {from})"))
}

const MIB: u64 = 1024 * 1024;

/// The journal size a vacuum keeps, in bytes: the larger of the configured
/// floor and the size asked for. A size past what bytes can count keeps
/// everything; wrapping around would have kept almost nothing.
fn floor_bytes(floor_mb: u64, asked_mb: u64) -> u64 {
    floor_mb.max(asked_mb).saturating_mul(MIB)
}

/// What "the current boot" is, for the journal vacuum.
pub struct CurrentBoot {
    /// `/proc/sys/kernel/random/boot_id` as 16 bytes.
    pub id: [u8; 16],
    /// Boot time in microseconds since the epoch.
    pub started_us: u64,
}

impl CurrentBoot {
    pub fn read() -> Result<Self, HelperError> {
        let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map_err(|e| HelperError::Failed(format!("cannot read the boot id: {e}")))?;
        let id = parse_boot_id(text.trim())
            .ok_or_else(|| HelperError::Failed(format!("boot id {:?} is not 32 hex digits", text.trim())))?;
        let started_us = sysinfo::System::boot_time() * 1_000_000;
        Ok(Self { id, started_us })
    }
}

fn parse_boot_id(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

/// The part of a journal file's header the vacuum reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalHeader {
    /// Boot of the newest entry in the file.
    pub tail_boot_id: [u8; 16],
    /// Time of the newest entry, microseconds since the epoch.
    pub tail_realtime_us: u64,
}

/// Reads the header of a journal file (systemd's on-disk format: signature
/// "LPKSHHRH", the boot ID of the last entry at offset 56, the realtime of
/// the last entry at offset 192).
pub fn journal_header(path: &Path) -> std::io::Result<JournalHeader> {
    use std::io::Read;
    let mut buf = [0u8; 200];
    std::fs::File::open(path)?.read_exact(&mut buf)?;
    if &buf[..8] != b"LPKSHHRH" {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a journal file"));
    }
    let mut tail_boot_id = [0u8; 16];
    tail_boot_id.copy_from_slice(&buf[56..72]);
    let tail_realtime_us = u64::from_le_bytes(buf[192..200].try_into().expect("8 bytes"));
    Ok(JournalHeader { tail_boot_id, tail_realtime_us })
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct VacuumReport {
    pub before_bytes: u64,
    pub after_bytes: u64,
    pub deleted: Vec<String>,
    /// Archived files kept because they hold entries of the current boot
    /// (or could not be read).
    pub kept_current_boot: usize,
    pub limit_bytes: u64,
}

impl VacuumReport {
    pub fn summary(&self) -> String {
        format!(
            "journal {} MiB -> {} MiB (limit {} MiB): {} archived files deleted, {} kept because they hold the current boot",
            self.before_bytes / MIB,
            self.after_bytes / MIB,
            self.limit_bytes / MIB,
            self.deleted.len(),
            self.kept_current_boot
        )
    }
}

/// Deletes archived journal files, oldest first, until the journal in `dir`
/// takes at most `limit` bytes. Active files are never deleted, nor is an
/// archived file whose newest entry belongs to the current boot or is newer
/// than its start, nor one whose header cannot be read.
pub fn vacuum(dir: &Path, limit: u64, boot: &CurrentBoot) -> std::io::Result<VacuumReport> {
    let mut files = Vec::new();
    collect_journal_files(dir, 2, &mut files)?;
    let size = |m: &std::fs::Metadata| m.blocks() * 512;
    let total: u64 = files.iter().map(|(_, m)| size(m)).sum();
    let mut report = VacuumReport { before_bytes: total, after_bytes: total, limit_bytes: limit, ..Default::default() };
    let mut candidates = Vec::new();
    for (path, meta) in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !is_archived(name) {
            continue;
        }
        match journal_header(path) {
            Ok(h) if h.tail_boot_id != boot.id && h.tail_realtime_us < boot.started_us => {
                candidates.push((h.tail_realtime_us, path.clone(), size(meta)))
            }
            _ => report.kept_current_boot += 1,
        }
    }
    candidates.sort();
    for (_, path, bytes) in candidates {
        if report.after_bytes <= limit {
            break;
        }
        std::fs::remove_file(&path)?;
        eprintln!("macha helper: deleted {} ({} KiB)", path.display(), bytes / 1024);
        report.after_bytes -= bytes;
        report.deleted.push(path.display().to_string());
    }
    Ok(report)
}

/// `system@...journal` and `...journal~` are archived; `system.journal` and
/// `user-1000.journal` are being written.
fn is_archived(name: &str) -> bool {
    (name.ends_with(".journal") && name.contains('@')) || name.ends_with(".journal~")
}

fn collect_journal_files(dir: &Path, depth: u32, out: &mut Vec<(PathBuf, std::fs::Metadata)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if meta.is_dir() && depth > 0 {
            collect_journal_files(&entry.path(), depth - 1, out)?;
        } else if meta.is_file() && (name.ends_with(".journal") || name.ends_with(".journal~")) {
            out.push((entry.path(), meta));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vacuum_size_past_what_bytes_can_count_keeps_everything() {
        assert_eq!(floor_bytes(256, 512), 512 * MIB);
        assert_eq!(floor_bytes(256, 16), 256 * MIB);
        // (2^44 + 1) MiB would wrap around to 1 MiB.
        assert_eq!(floor_bytes(256, (1 << 44) + 1), u64::MAX);
    }

    /// A file shaped like a journal header with the given tail.
    fn fake_journal(path: &Path, boot: [u8; 16], realtime_us: u64, size: usize) {
        let mut buf = vec![0u8; size.max(200)];
        buf[..8].copy_from_slice(b"LPKSHHRH");
        buf[56..72].copy_from_slice(&boot);
        buf[192..200].copy_from_slice(&realtime_us.to_le_bytes());
        std::fs::write(path, buf).unwrap();
    }

    #[test]
    fn boot_ids_parse_with_or_without_dashes() {
        let id = parse_boot_id("0123456789ab-cdef-0123-456789abcdef").unwrap();
        assert_eq!(id[0], 0x01);
        assert_eq!(id[15], 0xef);
        assert!(parse_boot_id("xyz").is_none());
    }

    #[test]
    fn vacuum_deletes_old_boots_oldest_first_and_never_the_current_boot_or_active_files() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("0123456789abcdef0123456789abcdef");
        std::fs::create_dir(&m).unwrap();
        let now = [9u8; 16];
        let old = [1u8; 16];
        let boot = CurrentBoot { id: now, started_us: 1_000_000_000 };
        fake_journal(&m.join("system.journal"), now, 1_000_000_500, MIB as usize);
        fake_journal(&m.join("system@a-1-1.journal"), old, 100, MIB as usize);
        fake_journal(&m.join("system@a-2-2.journal"), old, 200, MIB as usize);
        fake_journal(&m.join("system@a-3-3.journal"), now, 1_000_000_100, MIB as usize);
        // Written in an old boot but ending after this boot started: kept.
        fake_journal(&m.join("user-1000@b-1-1.journal"), old, 1_000_000_001, MIB as usize);
        std::fs::write(m.join("system@c-1-1.journal~"), b"garbage").unwrap();

        let r = vacuum(d.path(), 3 * MIB + MIB / 2, &boot).unwrap();
        assert_eq!(r.deleted.len(), 2, "{r:?}");
        assert!(r.deleted[0].ends_with("system@a-1-1.journal"));
        assert!(r.deleted[1].ends_with("system@a-2-2.journal"));
        assert!(m.join("system.journal").exists() && m.join("system@a-3-3.journal").exists());
        assert!(m.join("user-1000@b-1-1.journal").exists() && m.join("system@c-1-1.journal~").exists());
        assert_eq!(r.kept_current_boot, 3);

        // Nothing more may go, however low the limit.
        let r = vacuum(d.path(), 0, &boot).unwrap();
        assert!(r.deleted.is_empty());
        assert!(r.after_bytes > 0);
    }

    #[test]
    fn vacuum_stops_at_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let boot = CurrentBoot { id: [9; 16], started_us: 1_000_000_000 };
        for i in 1..=4u64 {
            fake_journal(&d.path().join(format!("system@x-{i}-{i}.journal")), [1; 16], i, MIB as usize);
        }
        let r = vacuum(d.path(), 3 * MIB, &boot).unwrap();
        assert_eq!(r.deleted.len(), 1);
        assert!(r.deleted[0].ends_with("system@x-1-1.journal"));
    }
}
