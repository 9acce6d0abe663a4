//! Journal files written by systemd's own code, for tests that need a journal
//! of a chosen size and content without a running journald: the entries go
//! to `systemd-journal-remote` in the journal export format, and it writes a
//! real journal file (uncompressed, so every field lies in the mapped file).

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// Where Debian and NixOS install the writer.
const JOURNAL_REMOTE: [&str; 2] =
    ["/lib/systemd/systemd-journal-remote", "/run/current-system/sw/lib/systemd/systemd-journal-remote"];

/// One entry: its fields as a client or journald sets them (`MESSAGE`,
/// `PRIORITY`, `_SYSTEMD_UNIT`, ...). The timestamps and the boot ID are
/// added by [`write_file`].
pub type Fields = Vec<(&'static str, String)>;

/// An err (priority 3) entry written by a process of `unit`.
pub fn error_line(unit: &str, message: &str) -> Fields {
    vec![
        ("PRIORITY", "3".into()),
        ("_SYSTEMD_UNIT", unit.into()),
        ("_COMM", "app".into()),
        ("_UID", "0".into()),
        ("SYSLOG_IDENTIFIER", "app".into()),
        ("MESSAGE", message.into()),
    ]
}

/// Writes `entries` as the journal file `path` (its name must end in
/// `.journal`), in order; the last one is stamped now and each one before it
/// a millisecond earlier, all of one boot. Values must not hold a newline.
pub fn write_file(path: &Path, entries: impl ExactSizeIterator<Item = Fields>) -> Result<()> {
    write_file_until(path, SystemTime::now(), entries)
}

/// [`write_file`], with the last entry stamped `newest` (in the future, the
/// entries stay within any look-back window for that long).
pub fn write_file_until(path: &Path, newest: SystemTime, entries: impl ExactSizeIterator<Item = Fields>) -> Result<()> {
    let program = JOURNAL_REMOTE
        .iter()
        .find(|p| Path::new(p).exists())
        .context("systemd-journal-remote is not installed (Debian: apt install systemd-journal-remote)")?;
    let mut child = Command::new(program)
        .arg(format!("--output={}", path.display()))
        .args(["--split-mode=none", "--compress=no", "--seal=no", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let now = newest.duration_since(UNIX_EPOCH)?.as_micros() as u64;
    let count = entries.len() as u64;
    let boot_id = format!("{:032x}", u128::from(now) * 0x9e37_79b9);
    {
        let mut stdin = BufWriter::new(child.stdin.take().context("stdin of systemd-journal-remote")?);
        for (i, fields) in (0u64..).zip(entries) {
            let realtime = now - (count - 1 - i) * 1000;
            write!(
                stdin,
                "__REALTIME_TIMESTAMP={realtime}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID={boot_id}\n",
                1_000_000 + i * 1000
            )?;
            for (key, value) in fields {
                if value.contains('\n') {
                    bail!("field {key} holds a newline, which the export format needs in binary form");
                }
                writeln!(stdin, "{key}={value}")?;
            }
            writeln!(stdin)?;
        }
        stdin.flush()?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{program} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
