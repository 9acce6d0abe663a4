//! The catalog entry `investigate`: typed, read-only probes of the host.
//!
//! Each probe reads one thing (a unit's state, its journal lines, the failed
//! units, a file system's usage, the busiest processes, the system
//! generations, the listening sockets) through the same typed sources
//! observe uses: D-Bus, the journal through libsystemd, `statvfs`, `/proc`
//! through sysinfo, the kernel's socket tables in `/proc/net` and the
//! profile's links. No process is started and nothing is written; unit
//! lookups use `GetUnit`, which never loads a unit.
//!
//! What a probe finds goes to people and, later, back to the model, so its
//! text is treated like journal text everywhere else: untrusted strings
//! (log messages, process names, descriptions) lose their control
//! characters, every text passes through [`redact`], and every text is
//! bounded, cut at a line boundary with a marker that says how much is left
//! out.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

use crate::catalog::{self, Action, ActionKind, Probe};
use crate::config::Config;
use crate::observe::fold::priority_name;
use crate::observe::host::{self, Filesystem};
use crate::observe::journal::{self, Entry, JournalError};
use crate::observe::nixos::{self, Generations};
use crate::observe::systemd::{Systemd, SystemdError, SystemdLink, UnitState};
use crate::redact::redact;
use crate::text::{cut, one_line};
use crate::unit::UnitName;

/// Longest `text` of a finding, in characters, marker included.
pub const MAX_TEXT_CHARS: usize = 4000;

/// Longest `summary` of a finding, in characters.
pub const MAX_SUMMARY_CHARS: usize = 200;

/// Most journal lines `unit_logs` reads, whatever `detect.unit_log_lines` says.
pub const MAX_LOG_LINES: usize = 200;

/// Longest message kept from one journal line, so that one long line cannot
/// fill the whole text.
const MAX_LOG_MESSAGE_CHARS: usize = 500;

/// Processes listed per ranking by `top_processes`.
const TOP_PROCESSES: usize = 5;

/// Longest process name shown.
const MAX_PROCESS_NAME_CHARS: usize = 64;

/// How long `disk_usage` waits for `statvfs`: a hung network file system
/// blocks it for ever, and the probe must not.
const STATVFS_TIMEOUT: Duration = Duration::from_secs(10);

/// Room kept for the cut marker (`[... N more lines]`) when bounding a text.
const MARKER_ROOM: usize = 32;

/// What a probe found: one line for lists and notifications, and the text (bounded, redacted).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub probe: Probe,
    pub summary: String,
    pub text: String,
}

impl Finding {
    /// A finding from raw texts: redacted, the summary on one line, both bounded.
    /// Log lines keep their newest end (`keep_end`), everything else its start.
    fn new(probe: Probe, summary: &str, text: &str, keep_end: bool) -> Self {
        let summary = cut_chars(&one_line(&redact(summary)), MAX_SUMMARY_CHARS);
        let text = redact(text);
        let text = if keep_end { bound_tail(&text, MAX_TEXT_CHARS) } else { bound(&text, MAX_TEXT_CHARS) };
        Self { probe, summary, text }
    }
}

/// Why an investigation gave no finding.
#[derive(Debug, thiserror::Error)]
pub enum InvestigateError {
    #[error("{} is not an investigation; only investigate runs a probe", .0.as_str())]
    NotAnInvestigation(ActionKind),
    /// The probe failed. The text goes where findings go, so it is redacted;
    /// the cause is therefore not a `source` (an error chain would say it
    /// again, unredacted).
    #[error("{}: {}", .probe.as_str(), redact(&.error.to_string()))]
    Probe { probe: Probe, error: ProbeError },
}

/// Why a probe failed: what it could not read, and where.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("needs systemd, which cannot be reached: {0}")]
    NoSystemd(String),
    #[error("needs a unit")]
    NoUnit,
    #[error("needs a path")]
    NoPath,
    #[error(transparent)]
    Path(#[from] catalog::CatalogError),
    #[error(transparent)]
    Systemd(#[from] Box<SystemdError>),
    #[error("the journal reader stopped: {0}")]
    JournalStopped(tokio::task::JoinError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("statvfs of {path} stopped: {source}")]
    StatvfsStopped { path: String, source: tokio::task::JoinError },
    #[error("cannot read the file system holding {path}: {source}")]
    Filesystem { path: String, source: std::io::Error },
    #[error("statvfs of {path} did not answer within {} s (a hung network file system?)", STATVFS_TIMEOUT.as_secs())]
    StatvfsTimeout { path: String },
    #[error("reading /proc stopped: {0}")]
    ProcStopped(tokio::task::JoinError),
    #[error("no process could be read from /proc")]
    NoProcess,
    #[error("cannot read the generations of {}: {source}", .profile.display())]
    Generations { profile: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    SocketTable { path: &'static str, source: std::io::Error },
    #[error("no socket table in /proc/net could be read")]
    NoSocketTable,
    #[error("reading /proc/net stopped: {0}")]
    NetStopped(tokio::task::JoinError),
}

/// Runs the probe of an `Action::Investigate`. `systemd` is the connection, or why there is none
/// (unit probes then fail with that reason; the others still run). Any other action is an error.
pub async fn run(action: &Action, systemd: &SystemdLink<'_>, config: &Config) -> Result<Finding, InvestigateError> {
    let Action::Investigate { probe, unit, path } = action else {
        return Err(InvestigateError::NotAnInvestigation(action.kind()));
    };
    // Errors go where findings go, so they are redacted too (by the Display of `Probe`).
    run_probe(*probe, unit.as_ref(), path.as_deref(), systemd, config)
        .await
        .map_err(|error| InvestigateError::Probe { probe: *probe, error })
}

async fn run_probe(
    probe: Probe,
    unit: Option<&UnitName>,
    path: Option<&str>,
    systemd: &SystemdLink<'_>,
    config: &Config,
) -> Result<Finding, ProbeError> {
    let systemd = || systemd.get().map_err(|why| ProbeError::NoSystemd(why.to_owned()));
    let unit = || unit.ok_or(ProbeError::NoUnit);
    match probe {
        Probe::UnitStatus => unit_status(systemd()?, unit()?).await,
        Probe::UnitLogs => unit_logs(config, unit()?).await,
        Probe::FailedUnits => failed_units(systemd()?).await,
        Probe::DiskUsage => disk_usage(&catalog::check_probe_path(path.ok_or(ProbeError::NoPath)?)?).await,
        Probe::TopProcesses => top_processes().await,
        Probe::Generations => generations(config),
        Probe::ListeningSockets => listening_sockets().await,
    }
}

async fn unit_status(systemd: &Systemd, unit: &UnitName) -> Result<Finding, ProbeError> {
    let Some(state) = systemd.unit_state(unit).await.map_err(Box::new)? else {
        let text = format!("no unit named {unit} is loaded");
        return Ok(Finding::new(Probe::UnitStatus, &text, &text, false));
    };
    Ok(status_finding(&state))
}

/// What `unit_status` shows of a unit's state. Apart from the probe so that
/// `macha eval` shows a fixture's unit exactly as a host's.
pub(crate) fn status_finding(state: &UnitState) -> Finding {
    let mut summary = format!("{}: {} ({})", state.id, state.active_state, state.sub_state);
    if let Some(result) = &state.result {
        let _ = write!(summary, ", result {result}");
    }
    if let Some(n) = state.n_restarts {
        let _ = write!(summary, ", {n} restarts");
    }
    Finding::new(Probe::UnitStatus, &summary, &status_text(state), false)
}

/// A unit's state as `Key=value` lines, named as systemd names the properties.
fn status_text(s: &UnitState) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut lines = vec![
        format!("Id={}", s.id),
        format!("Names={}", s.names.join(" ")),
        format!("Description={}", one_line(&s.description)),
        format!("LoadState={}", s.load_state),
        format!("ActiveState={}", s.active_state),
        format!("SubState={}", s.sub_state),
    ];
    if let Some(result) = &s.result {
        lines.push(format!("Result={result}"));
    }
    if let Some(n) = s.n_restarts {
        lines.push(format!("NRestarts={n}"));
    }
    if let Some(status) = s.exec_main_status {
        lines.push(format!("ExecMainStatus={status}"));
    }
    if let Some(t) = s.inactive_enter_timestamp {
        lines.push(format!("InactiveEnterTimestamp={}", timestamp(t)));
    }
    if !s.invocation_id.is_empty() {
        lines.push(format!("InvocationID={}", s.invocation_id));
    }
    lines.push(format!("RefuseManualStop={}", yes_no(s.refuse_manual_stop)));
    lines.push(format!("SuccessAction={}", s.success_action));
    lines.push(format!("FailureAction={}", s.failure_action));
    lines.join("\n")
}

async fn unit_logs(config: &Config, unit: &UnitName) -> Result<Finding, ProbeError> {
    let n = config.detect.unit_log_lines.min(MAX_LOG_LINES);
    let dir = config.journal_dir.clone();
    let name = unit.to_string();
    // libsystemd reads files synchronously; keep it off the async threads.
    let entries = tokio::task::spawn_blocking(move || journal::unit_tail(dir.as_deref(), &name, n))
        .await
        .map_err(ProbeError::JournalStopped)??;
    Ok(logs_finding(unit, &entries))
}

/// What `unit_logs` shows of a unit's journal entries (oldest first).
pub(crate) fn logs_finding(unit: &UnitName, entries: &[Entry]) -> Finding {
    let summary = match entries.len() {
        0 => format!("{unit}: no journal lines"),
        1 => format!("{unit}: the last journal line"),
        k => format!("{unit}: the last {k} journal lines"),
    };
    let text = if entries.is_empty() {
        format!("no journal lines from or about {unit}")
    } else {
        entries.iter().map(log_line).collect::<Vec<_>>().join("\n")
    };
    Finding::new(Probe::UnitLogs, &summary, &text, true)
}

/// One journal entry on one line: `TIME PRIORITY COMM[UID]: MESSAGE`.
/// `COMM` and `UID` are what journald recorded about the writer; the
/// message is the writer's own text, so it loses its control characters and
/// line separators and cannot start a line of its own.
fn log_line(e: &Entry) -> String {
    let comm = e.comm.as_deref().or(e.identifier.as_deref()).map(one_line).unwrap_or_else(|| "-".into());
    let uid = e.uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into());
    let message = cut_chars(&one_line(&e.message), MAX_LOG_MESSAGE_CHARS);
    format!("{} {} {comm}[{uid}]: {message}", timestamp(e.time), priority_name(e.priority))
}

async fn failed_units(systemd: &Systemd) -> Result<Finding, ProbeError> {
    let units = systemd.failed_units().await.map_err(Box::new)?;
    Ok(failed_finding(units))
}

/// What `failed_units` shows of the failed units, by name.
pub(crate) fn failed_finding(mut units: Vec<UnitState>) -> Finding {
    units.sort_by(|a, b| a.id.cmp(&b.id));
    if units.is_empty() {
        return Finding::new(Probe::FailedUnits, "no failed units", "no failed units", false);
    }
    let names = units.iter().map(|u| u.id.as_str()).collect::<Vec<_>>().join(", ");
    let summary = match units.len() {
        1 => format!("1 failed unit: {names}"),
        k => format!("{k} failed units: {names}"),
    };
    let text = units.iter().map(failed_line).collect::<Vec<_>>().join("\n");
    Finding::new(Probe::FailedUnits, &summary, &text, false)
}

/// A failed unit on one line: its name, then `Key=value` for what systemd
/// says about how it ended.
fn failed_line(s: &UnitState) -> String {
    let mut line = format!("{} Result={}", s.id, s.result.as_deref().unwrap_or("-"));
    if let Some(status) = s.exec_main_status {
        let _ = write!(line, " ExecMainStatus={status}");
    }
    if let Some(n) = s.n_restarts {
        let _ = write!(line, " NRestarts={n}");
    }
    if let Some(t) = s.inactive_enter_timestamp {
        let _ = write!(line, " InactiveEnterTimestamp={}", timestamp(t));
    }
    line
}

async fn disk_usage(path: &str) -> Result<Finding, ProbeError> {
    let owned = PathBuf::from(path);
    let read = tokio::task::spawn_blocking(move || host::filesystem_of(&owned));
    let fs = match tokio::time::timeout(STATVFS_TIMEOUT, read).await {
        Ok(joined) => joined
            .map_err(|source| ProbeError::StatvfsStopped { path: path.to_owned(), source })?
            .map_err(|source| ProbeError::Filesystem { path: path.to_owned(), source })?,
        Err(_) => return Err(ProbeError::StatvfsTimeout { path: path.to_owned() }),
    };
    Ok(disk_finding(path, &fs))
}

/// What `disk_usage` shows of the file system holding `path`.
pub(crate) fn disk_finding(path: &str, fs: &Filesystem) -> Finding {
    let (summary, text) = disk_text(path, fs);
    Finding::new(Probe::DiskUsage, &summary, &text, false)
}

/// The usage of the file system holding `path`. `Used` is `Size` minus
/// `Available` (blocks reserved for root count as used), so `UsedPercent`
/// is the number the disk-full rule compares with its threshold.
fn disk_text(path: &str, fs: &Filesystem) -> (String, String) {
    let used = fs.total - fs.available.min(fs.total);
    let percent = fs.used_percent();
    let summary = format!("{path}: {percent:.1}% used, {} available of {}", bytes(fs.available), bytes(fs.total));
    let text = format!(
        "Path={path}\nSize={}\nUsed={}\nAvailable={}\nUsedPercent={percent:.1}",
        bytes(fs.total),
        bytes(used),
        bytes(fs.available)
    );
    (summary, text)
}

/// One process as `top_processes` shows it.
#[derive(Debug, Clone, PartialEq)]
struct ProcessUse {
    pid: u32,
    name: String,
    /// Percent of one CPU over the sampling interval.
    cpu: f32,
    /// Resident memory, in bytes.
    rss: u64,
}

async fn top_processes() -> Result<Finding, ProbeError> {
    fn refresh(system: &mut System) {
        // Without tasks: a thread is not listed as a process of its own
        // (with the whole process's memory); a process's CPU use covers its threads.
        let kind = ProcessRefreshKind::nothing().with_cpu().with_memory().without_tasks();
        system.refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
    }
    // CPU use is the difference between two samples.
    let mut system = tokio::task::spawn_blocking(|| {
        let mut system = System::new();
        refresh(&mut system);
        system
    })
    .await
    .map_err(ProbeError::ProcStopped)?;
    tokio::time::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL).await;
    let system = tokio::task::spawn_blocking(move || {
        refresh(&mut system);
        system
    })
    .await
    .map_err(ProbeError::ProcStopped)?;
    let processes: Vec<ProcessUse> = system
        .processes()
        .values()
        .map(|p| ProcessUse {
            pid: p.pid().as_u32(),
            name: process_name(&p.name().to_string_lossy()),
            cpu: p.cpu_usage(),
            rss: p.memory(),
        })
        .collect();
    if processes.is_empty() {
        return Err(ProbeError::NoProcess);
    }
    let (summary, text) = top_text(processes, sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
    Ok(Finding::new(Probe::TopProcesses, &summary, &text, false))
}

/// A process name as shown: untrusted (a process names itself), so on one
/// line, trimmed and bounded.
fn process_name(raw: &str) -> String {
    let name = one_line(raw);
    let name = cut_chars(name.trim(), MAX_PROCESS_NAME_CHARS);
    if name.is_empty() {
        "-".into()
    } else {
        name
    }
}

/// The two rankings; ties go to the lower pid so the text is stable.
fn top_text(mut processes: Vec<ProcessUse>, interval: Duration) -> (String, String) {
    let row = |p: &ProcessUse| format!("{:>8} {:>6.1}% {:>10}  {}", p.pid, p.cpu, bytes(p.rss), p.name);
    let header = format!("{:>8} {:>7} {:>10}  NAME", "PID", "CPU", "RSS");
    let mut text =
        format!("Top {TOP_PROCESSES} by CPU (percent of one CPU over {} ms):\n{header}\n", interval.as_millis());
    processes.sort_by(|a, b| b.cpu.total_cmp(&a.cpu).then(a.pid.cmp(&b.pid)));
    let busiest = processes[0].clone();
    for p in processes.iter().take(TOP_PROCESSES) {
        text.push_str(&row(p));
        text.push('\n');
    }
    let _ = write!(text, "Top {TOP_PROCESSES} by resident memory:\n{header}");
    processes.sort_by(|a, b| b.rss.cmp(&a.rss).then(a.pid.cmp(&b.pid)));
    for p in processes.iter().take(TOP_PROCESSES) {
        text.push('\n');
        text.push_str(&row(p));
    }
    let largest = &processes[0];
    let summary = format!(
        "busiest {} ({}) at {:.1}% CPU; largest {} ({}) at {} resident",
        busiest.name,
        busiest.pid,
        busiest.cpu,
        largest.name,
        largest.pid,
        bytes(largest.rss)
    );
    (summary, text)
}

fn generations(config: &Config) -> Result<Finding, ProbeError> {
    let profile = &config.nixos.profile;
    let g = nixos::read(profile, &config.nixos.current_system)
        .map_err(|source| ProbeError::Generations { profile: profile.clone(), source })?;
    let (summary, text) = generations_text(&profile.display().to_string(), &g);
    Ok(Finding::new(Probe::Generations, &summary, &text, false))
}

/// The generations newest first, each with its creation time and store
/// path, marked `profile` (the boot default) and `running`.
fn generations_text(profile: &str, g: &Generations) -> (String, String) {
    let running = g.running_generation();
    let mut lines = Vec::with_capacity(g.list.len() + 2);
    if g.list.is_empty() {
        lines.push(format!("no system profile at {profile}: not a NixOS host, or nixos.profile names another path"));
    } else {
        lines.push(format!("Generations of {profile}, newest first:"));
    }
    for gen in g.list.iter().rev() {
        let created = gen.created.map(timestamp).unwrap_or_else(|| "unknown-time".into());
        let mut marks = Vec::new();
        if g.profile == Some(gen.number) {
            marks.push("profile");
        }
        if running == Some(gen.number) {
            marks.push("running");
        }
        let marks = if marks.is_empty() { String::new() } else { format!(" ({})", marks.join(", ")) };
        lines.push(format!("{:>5} {created} {}{marks}", gen.number, one_line(&gen.target)));
    }
    match (&g.running, running) {
        (Some(path), None) => lines.push(format!("running {}, which is no generation of the profile", one_line(path))),
        (None, _) if !g.list.is_empty() => lines.push("the running system is unknown".into()),
        _ => {}
    }
    let summary = if g.list.is_empty() { format!("no system profile at {profile}") } else { g.summary() };
    (summary, lines.join("\n"))
}

/// The kernel's socket tables, read as they are: no `ss`, no netlink.
const SOCKET_TABLES: [(&str, &str); 4] =
    [("tcp", "/proc/net/tcp"), ("tcp6", "/proc/net/tcp6"), ("udp", "/proc/net/udp"), ("udp6", "/proc/net/udp6")];

/// Sockets listed at most; a host with more shows the count of the rest.
const MAX_SOCKETS: usize = 200;

/// One socket that takes connections (TCP in `LISTEN`) or datagrams (UDP
/// bound, not connected).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Listening {
    protocol: &'static str,
    port: u16,
    address: std::net::IpAddr,
    uid: u32,
}

async fn listening_sockets() -> Result<Finding, ProbeError> {
    let read = tokio::task::spawn_blocking(|| {
        let mut found = Vec::new();
        let mut readable = 0;
        for (protocol, path) in SOCKET_TABLES {
            // Line by line: a busy host's tables run to many MiB.
            match std::fs::File::open(path) {
                Ok(table) => {
                    readable += 1;
                    let table = parse_socket_table(protocol, std::io::BufReader::new(table));
                    found.extend(table.map_err(|source| ProbeError::SocketTable { path, source })?);
                }
                // No IPv6 on this host: its tables do not exist.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ProbeError::SocketTable { path, source }),
            }
        }
        if readable == 0 {
            return Err(ProbeError::NoSocketTable);
        }
        Ok(found)
    });
    let mut sockets = read.await.map_err(ProbeError::NetStopped)??;
    sockets.sort();
    sockets.dedup();
    let (summary, text) = sockets_text(&sockets);
    Ok(Finding::new(Probe::ListeningSockets, &summary, &text, false))
}

/// The listening entries of one table of `/proc/net/{tcp,tcp6,udp,udp6}`.
/// Lines that do not parse are skipped: the header, and anything a future
/// kernel adds.
fn parse_socket_table(protocol: &'static str, table: impl std::io::BufRead) -> std::io::Result<Vec<Listening>> {
    // TCP_LISTEN, and TCP_CLOSE, which is how a bound, unconnected UDP socket shows.
    let wanted = if protocol.starts_with("tcp") { "0A" } else { "07" };
    let family = if protocol.starts_with("tcp") { "tcp" } else { "udp" };
    let mut found = Vec::new();
    for line in table.lines().skip(1) {
        let line = line?;
        let listening = || {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, uid) = (fields.get(1)?, fields.get(3)?, fields.get(7)?);
            if *state != wanted {
                return None;
            }
            let (address, port) = parse_socket_address(local)?;
            Some(Listening { protocol: family, port, address, uid: uid.parse().ok()? })
        };
        found.extend(listening());
    }
    Ok(found)
}

/// `0100007F:0035` is 127.0.0.1 port 53: the address is the kernel's
/// 32-bit words printed in hex in host byte order, the port in hex.
fn parse_socket_address(raw: &str) -> Option<(std::net::IpAddr, u16)> {
    let (address, port) = raw.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| u32::from_str_radix(address.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
    let address = match address.len() {
        8 => std::net::IpAddr::from(word(0)?),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            std::net::IpAddr::from(bytes)
        }
        _ => return None,
    };
    Some((address, port))
}

fn sockets_text(sockets: &[Listening]) -> (String, String) {
    if sockets.is_empty() {
        let none = "no listening sockets in this network namespace";
        return (none.to_owned(), none.to_owned());
    }
    let ports = |family: &str| {
        let mut ports: Vec<u16> = sockets.iter().filter(|s| s.protocol == family).map(|s| s.port).collect();
        ports.dedup();
        ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
    };
    let mut summary = format!("{} listening sockets", sockets.len());
    for family in ["tcp", "udp"] {
        let list = ports(family);
        if !list.is_empty() {
            let _ = write!(summary, "; {family} {list}");
        }
    }
    let mut lines = vec![format!("{:<5} {:<41} {:>5}  UID", "PROTO", "ADDRESS", "PORT")];
    for s in sockets.iter().take(MAX_SOCKETS) {
        lines.push(format!("{:<5} {:<41} {:>5}  {}", s.protocol, s.address, s.port, s.uid));
    }
    if sockets.len() > MAX_SOCKETS {
        lines.push(format!("[... {} more sockets]", sockets.len() - MAX_SOCKETS));
    }
    (summary, lines.join("\n"))
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A byte count in binary units, one decimal.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `text` cut to at most `max` characters, ending in `[...cut]` when cut.
fn cut_chars(text: &str, max: usize) -> String {
    cut(text, max, " [...cut]")
}

/// `text` within `max` characters: whole lines from the start, then a line
/// `[... N more lines]`. A first line longer than the bound is itself cut.
fn bound(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    let budget = max.saturating_sub(MARKER_ROOM);
    let mut out = String::new();
    let mut used = 0;
    let mut kept = 0;
    for line in &lines {
        let n = line.chars().count() + 1;
        if used + n > budget {
            break;
        }
        out.push_str(line);
        out.push('\n');
        used += n;
        kept += 1;
    }
    if kept == 0 {
        out = cut_chars(lines[0], budget) + "\n";
        kept = 1;
    }
    let _ = write!(out, "[... {} more lines]", lines.len() - kept);
    out
}

/// Like [`bound`], but keeps the last lines: for logs, the newest matter.
fn bound_tail(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    let budget = max.saturating_sub(MARKER_ROOM);
    let mut kept: Vec<String> = Vec::new();
    let mut used = 0;
    for line in lines.iter().rev() {
        let n = line.chars().count() + 1;
        if used + n > budget {
            break;
        }
        kept.push((*line).to_owned());
        used += n;
    }
    if kept.is_empty() {
        kept.push(cut_chars(lines[lines.len() - 1], budget));
    }
    kept.reverse();
    format!("[... {} earlier lines]\n{}", lines.len() - kept.len(), kept.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn entry(message: &str) -> Entry {
        Entry {
            time: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            priority: 3,
            unit: Some("demo-web.service".into()),
            about_unit: None,
            identifier: Some("demo-web".into()),
            comm: Some("demo-web".into()),
            uid: Some(0),
            pid: Some(812),
            message: message.into(),
        }
    }

    #[test]
    fn socket_tables_are_read_as_the_kernel_writes_them() {
        // Lines as Linux prints them, on a little-endian machine.
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000   995        0 1235 1 0 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000   995        0 1236 1 0 100 0 0 10 0
garbage line
";
        let udp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  10: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000   153        0 99 2 0 0
";
        let mut found = parse_socket_table("tcp", tcp.as_bytes()).unwrap();
        found.extend(parse_socket_table("udp6", udp6.as_bytes()).unwrap());
        let shown: Vec<String> =
            found.iter().map(|s| format!("{} {} {} {}", s.protocol, s.address, s.port, s.uid)).collect();
        if cfg!(target_endian = "little") {
            assert_eq!(shown, ["tcp 0.0.0.0 22 0", "tcp 127.0.0.1 8080 995", "udp ::1 53 153"]);
        }
        let (summary, text) = sockets_text(&found);
        assert_eq!(summary, "3 listening sockets; tcp 22, 8080; udp 53");
        assert_eq!(text.lines().count(), 4, "{text}");
        assert_eq!(sockets_text(&[]).0, "no listening sockets in this network namespace");
    }

    #[test]
    fn a_short_text_is_left_as_it_is() {
        assert_eq!(bound("a\nb", 10), "a\nb");
        assert_eq!(bound_tail("a\nb", 10), "a\nb");
    }

    #[test]
    fn a_long_text_is_cut_at_a_line_boundary_with_the_count_of_lines_left_out() {
        let text = (0..500).map(|i| format!("line {i:03}")).collect::<Vec<_>>().join("\n");
        let cut = bound(&text, MAX_TEXT_CHARS);
        assert!(cut.chars().count() <= MAX_TEXT_CHARS, "{}", cut.len());
        let lines: Vec<&str> = cut.lines().collect();
        let (marker, kept) = lines.split_last().unwrap();
        assert_eq!(kept[0], "line 000");
        assert!(kept.iter().all(|l| l.len() == 8), "only whole lines are kept");
        assert_eq!(*marker, format!("[... {} more lines]", 500 - kept.len()));
    }

    #[test]
    fn logs_keep_their_newest_lines_when_cut() {
        let text = (0..500).map(|i| format!("line {i:03}")).collect::<Vec<_>>().join("\n");
        let cut = bound_tail(&text, MAX_TEXT_CHARS);
        assert!(cut.chars().count() <= MAX_TEXT_CHARS);
        let lines: Vec<&str> = cut.lines().collect();
        assert_eq!(lines.last(), Some(&"line 499"));
        assert_eq!(lines[0], format!("[... {} earlier lines]", 500 - (lines.len() - 1)));
    }

    #[test]
    fn one_line_longer_than_the_bound_is_cut_inside() {
        let text = format!("{}\nsecond", "x".repeat(10_000));
        let cut = bound(&text, 100);
        assert!(cut.chars().count() <= 100, "{cut}");
        assert!(cut.ends_with("[...cut]\n[... 1 more lines]"), "{cut}");
        let cut = bound_tail(&format!("first\n{}", "é".repeat(10_000)), 100);
        assert!(cut.chars().count() <= 100 && cut.starts_with("[... 1 earlier lines]\néé"), "{cut}");
    }

    #[test]
    fn a_log_line_cannot_forge_another_line() {
        let line = log_line(&entry("bad thing\n2023-11-14T22:13:20Z emerg sshd[0]: forged\r\u{2028}x\u{1b}[31m"));
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.starts_with("2023-11-14T22:13:20Z err demo-web[0]: bad thing 2023-11-14T22:13:20Z emerg"),
            "{line}"
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }

    #[test]
    fn a_long_log_message_is_cut() {
        let line = log_line(&entry(&"y".repeat(2000)));
        assert!(line.chars().count() < MAX_LOG_MESSAGE_CHARS + 40, "{}", line.len());
        assert!(line.ends_with("[...cut]"));
    }

    #[test]
    fn a_secret_in_a_log_line_is_redacted() {
        let text = log_line(&entry("connecting with password=hunter2 to db"));
        let finding = Finding::new(Probe::UnitLogs, "demo-web.service: the last journal line", &text, true);
        assert!(!finding.text.contains("hunter2"), "{}", finding.text);
        assert!(finding.text.contains("password=[redacted:password]"), "{}", finding.text);
    }

    #[test]
    fn process_names_are_one_bounded_line() {
        assert_eq!(process_name("evil\nname\u{7}"), "evil name");
        assert_eq!(process_name(" \t"), "-");
        let long = process_name(&"p".repeat(1000));
        assert!(long.chars().count() <= MAX_PROCESS_NAME_CHARS && long.ends_with("[...cut]"));
    }

    #[test]
    fn disk_usage_agrees_with_the_disk_full_rule() {
        let fs = Filesystem { mount: "/var".into(), fs_type: String::new(), total: 100 << 30, available: 25 << 30 };
        let (summary, text) = disk_text("/var/lib", &fs);
        assert_eq!(summary, "/var/lib: 75.0% used, 25.0 GiB available of 100.0 GiB");
        assert_eq!(text, "Path=/var/lib\nSize=100.0 GiB\nUsed=75.0 GiB\nAvailable=25.0 GiB\nUsedPercent=75.0");
        let odd = Filesystem { total: 3, available: 1, ..fs };
        assert!(disk_text("/", &odd).1.ends_with(&format!("UsedPercent={:.1}", odd.used_percent())));
    }

    #[test]
    fn byte_counts_use_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn top_processes_ranks_by_cpu_and_by_memory() {
        let p = |pid, cpu, rss: u64| ProcessUse { pid, name: format!("p{pid}"), cpu, rss };
        let procs = (1..=8).map(|i| p(i, i as f32, (9 - i as u64) << 20)).collect();
        let (summary, text) = top_text(procs, Duration::from_millis(200));
        assert_eq!(summary, "busiest p8 (8) at 8.0% CPU; largest p1 (1) at 8.0 MiB resident");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 * (2 + TOP_PROCESSES), "{text}");
        assert!(lines[2].trim_start().starts_with("8 ") && lines[2].ends_with("p8"), "{text}");
        assert!(lines[9].trim_start().starts_with("1 ") && lines[9].ends_with("p1"), "{text}");
    }

    #[test]
    fn generations_are_listed_newest_first_with_profile_and_running_marked() {
        let dir = tempfile::tempdir().unwrap();
        let profiles = dir.path().join("profiles");
        std::fs::create_dir(&profiles).unwrap();
        for n in [1, 2, 3] {
            symlink(format!("/nix/store/{n}{n}{n}-nixos-system"), profiles.join(format!("system-{n}-link"))).unwrap();
        }
        symlink("system-3-link", profiles.join("system")).unwrap();
        let current = dir.path().join("current-system");
        symlink("/nix/store/222-nixos-system", &current).unwrap();
        let mut config = Config::default();
        config.nixos.profile = profiles.join("system");
        config.nixos.current_system = current;

        let f = generations(&config).unwrap();
        assert_eq!(f.summary, "profile 3, running 2 (of 3 generations)");
        let lines: Vec<&str> = f.text.lines().collect();
        assert_eq!(lines.len(), 4, "{}", f.text);
        assert!(lines[1].trim_start().starts_with("3 ") && lines[1].ends_with("/nix/store/333-nixos-system (profile)"));
        assert!(lines[2].trim_start().starts_with("2 ") && lines[2].ends_with("/nix/store/222-nixos-system (running)"));
        assert!(lines[3].trim_start().starts_with("1 ") && lines[3].ends_with("/nix/store/111-nixos-system"));
        let year = Utc::now().format("%Y").to_string();
        assert!(lines[1].contains(&format!(" {year}-")), "the creation date is shown: {}", lines[1]);
    }

    #[test]
    fn a_host_without_a_profile_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.nixos.profile = dir.path().join("nix/var/nix/profiles/system");
        config.nixos.current_system = dir.path().join("run/current-system");
        let f = generations(&config).unwrap();
        // A probe's text is redacted, and a temporary directory's random
        // name may look like a secret to the high-entropy rule.
        let want = format!("no system profile at {}", config.nixos.profile.display());
        assert_eq!(f.summary, crate::redact::redact(&want));
        assert!(f.text.starts_with("no system profile at "), "{}", f.text);
    }

    #[tokio::test]
    async fn only_an_investigate_action_runs_a_probe() {
        let restart = Action::RestartUnit { unit: UnitName::parse("web.service").unwrap() };
        let err =
            run(&restart, &SystemdLink::Down("not needed".into()), &Config::default()).await.unwrap_err().to_string();
        assert!(err.contains("restart_unit is not an investigation"), "{err}");
    }

    #[tokio::test]
    async fn unit_probes_fail_with_the_reason_systemd_is_missing() {
        let action = Action::Investigate {
            probe: Probe::UnitStatus,
            unit: Some(UnitName::parse("web.service").unwrap()),
            path: None,
        };
        let err = run(&action, &SystemdLink::Down("cannot connect to D-Bus at /x".into()), &Config::default())
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(err, "unit_status: needs systemd, which cannot be reached: cannot connect to D-Bus at /x");
    }

    #[tokio::test]
    async fn a_path_that_does_not_exist_is_named_in_the_error() {
        let action =
            Action::Investigate { probe: Probe::DiskUsage, unit: None, path: Some("/nonexistent/macha-probe".into()) };
        let err =
            run(&action, &SystemdLink::Down("no systemd".into()), &Config::default()).await.unwrap_err().to_string();
        assert!(err.contains("/nonexistent/macha-probe") && err.contains("No such file"), "{err}");
    }
}
