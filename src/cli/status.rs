//! `macha status`: the daemon as it last described itself in `status.json`
//! (whether it runs, whether the model endpoints have the model, the queue
//! in front of the model), its last cycle from `metrics.jsonl`, and the
//! incidents whose decisions keep failing, with when the daemon asks again
//! (`state.db`). When the daemon does not run, the model endpoints are
//! checked now instead (what the daemon last said of them may be old).
//! Exit status: 0 when the daemon runs, 1 when it does not, 2 on an error.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use chrono::{DateTime, Local, Utc};
use serde::Serialize;
use serde_json::json;

use super::output::{out, outln, shown};
use macha::config::{seconds, Config};
use macha::ids::Fingerprint;
use macha::model::metrics::{self, CycleMetrics};
use macha::model::status::{self, DaemonStatus, MemoryStatus, Watching};
use macha::model::{Check, EndpointCheck, ModelService, QueueStatus, Readiness};
use macha::state_dir::StateDir;
use macha::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

/// A status older than this, from a daemon that did not say it stopped,
/// means the daemon is stuck or gone (it sets the file's time every
/// `status::REFRESH`).
const STALE_SECS: i64 = 4 * status::REFRESH.as_secs() as i64;

pub fn run(config: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    macha::logging::init_cli();
    let config = Config::load(config)?;
    let (status, last_cycle, failing, fleet) = match super::existing_state_dir(&config)? {
        Some(state) => (
            status::read(&state).map_err(anyhow::Error::msg)?,
            // This host's own: a remote host's pass writes a line of its own.
            metrics::read(&state)?.0.into_iter().rev().find(|m| m.host.is_none()),
            failing(&state, &config)?,
            fleet(&state, &config)?,
        ),
        None => (None, None, Vec::new(), fleet_unseen(&config)),
    };
    let state = status.as_ref().map(liveness);
    // Without a running daemon nobody checks the model: check it now.
    let checked_now = match state {
        Some(Liveness::Running) => None,
        _ => Some(check_model(&config)?),
    };
    if args.json {
        let value = json!({
            "daemon": state.map(Liveness::as_str).unwrap_or("never_ran"),
            "status": status,
            "model_checked_now": checked_now,
            "last_cycle": last_cycle,
            "failing": failing,
            "remote_hosts": fleet,
        });
        outln!("{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        out!("{}", human(&config, status.as_ref(), checked_now.as_ref(), last_cycle.as_ref()))?;
        out!("{}", failing_lines(&failing))?;
        out!("{}", fleet_lines(&fleet))?;
    }
    Ok(if state == Some(Liveness::Running) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The longest `macha status` waits for the model endpoints.
const CHECK_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The model endpoints, asked now; one that does not answer within
/// `CHECK_WITHIN` is said to be so.
fn check_model(config: &Config) -> anyhow::Result<Readiness> {
    let model = ModelService::new(config)?;
    let checked = super::runtime()?.block_on(async { tokio::time::timeout(CHECK_WITHIN, model.check()).await });
    Ok(checked.unwrap_or_else(|_| {
        let mut r = model.readiness();
        for e in std::iter::once(&mut r.primary).chain(r.fallback.as_mut()) {
            if e.check == Check::Unchecked {
                e.check = Check::Failed { error: format!("no answer within {} s", CHECK_WITHIN.as_secs()) };
            }
        }
        r
    }))
}

/// An open incident whose decisions keep failing, and when the daemon asks again.
#[derive(Debug, Clone, Serialize)]
struct FailingDecision {
    incident: Fingerprint,
    /// The kind of failure, as the records of repeats count it.
    kind: String,
    error: String,
    /// Failed decisions in a row.
    failures: u32,
    since: DateTime<Utc>,
    last: DateTime<Utc>,
    next_try: DateTime<Utc>,
}

/// The incidents whose decisions are failing, from the state database
/// (none when macha never ran here).
fn failing(state: &StateDir, config: &Config) -> anyhow::Result<Vec<FailingDecision>> {
    if state.metadata(macha::store::DB_FILE)?.is_none() {
        return Ok(Vec::new());
    }
    let store = Store::open(state)?;
    let (every, max) = (seconds(config.check_interval), seconds(config.model.retry_max));
    Ok(store
        .failing_open()?
        .into_iter()
        .map(|(incident, f)| FailingDecision {
            incident,
            kind: f.repeat.kind.to_string(),
            next_try: f.next_try(every, max),
            error: f.error,
            failures: f.failures,
            since: f.since,
            last: f.last,
        })
        .collect())
}

/// A configured remote host, and its incidents open on this controller.
#[derive(Debug, Serialize)]
struct RemoteHostState {
    name: String,
    open: Vec<(Fingerprint, String)>,
}

/// Every configured remote host with its open incidents (its fingerprint
/// carries its name; `host-unreachable:NAME` when it could not be talked to).
fn fleet(state: &StateDir, config: &Config) -> anyhow::Result<Vec<RemoteHostState>> {
    let mut hosts = fleet_unseen(config);
    if hosts.is_empty() || state.metadata(macha::store::DB_FILE)?.is_none() {
        return Ok(hosts);
    }
    for (fp, summary) in Store::open(state)?.open_incidents()? {
        if let Some(h) = hosts.iter_mut().find(|h| fp.host() == Some(h.name.as_str())) {
            h.open.push((fp, summary));
        }
    }
    Ok(hosts)
}

fn fleet_unseen(config: &Config) -> Vec<RemoteHostState> {
    config.remote.hosts.iter().map(|h| RemoteHostState { name: h.name.clone(), open: Vec::new() }).collect()
}

fn fleet_lines(fleet: &[RemoteHostState]) -> String {
    let mut out = String::new();
    if fleet.is_empty() {
        return out;
    }
    let _ = writeln!(out, "remote hosts (as this controller last saw them):");
    for h in fleet {
        let open = match h.open.len() {
            0 => "no open incident".to_owned(),
            1 => "1 open incident".to_owned(),
            n => format!("{n} open incidents"),
        };
        let _ = writeln!(out, "  {}: {open}", shown(&h.name));
        for (fp, summary) in &h.open {
            let _ = writeln!(out, "    {}: {}", shown(fp.as_str()), shown(summary));
        }
    }
    out
}

fn failing_lines(failing: &[FailingDecision]) -> String {
    let mut out = String::new();
    if failing.is_empty() {
        return out;
    }
    let _ = writeln!(out, "decisions failing (the daemon waits longer after each failure, up to model.retry_max):");
    let local = |t: DateTime<Utc>| t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S").to_string();
    for f in failing {
        let next = if f.next_try > Utc::now() {
            format!("asked again at {}", local(f.next_try))
        } else {
            "asked again at the next cycle".to_owned()
        };
        let _ = writeln!(
            out,
            "  {}: {} failed in a row since {} ({}); {next}",
            shown(f.incident.as_str()),
            f.failures,
            local(f.since),
            shown(&f.kind)
        );
        let _ = writeln!(out, "    last error: {}", shown(&f.error));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Running,
    /// It said it stopped.
    Stopped,
    /// Its process is gone without saying so (killed, crashed).
    Gone,
    /// Its process exists, but it has not written for a while.
    Stale,
}

impl Liveness {
    fn as_str(self) -> &'static str {
        match self {
            Liveness::Running => "running",
            Liveness::Stopped => "stopped",
            Liveness::Gone => "gone",
            Liveness::Stale => "stale",
        }
    }
}

fn liveness(s: &DaemonStatus) -> Liveness {
    if s.stopped_at.is_some() {
        Liveness::Stopped
    } else if !Path::new("/proc").join(s.pid.to_string()).exists() {
        Liveness::Gone
    } else if (Utc::now() - s.updated_at).num_seconds() > STALE_SECS {
        Liveness::Stale
    } else {
        Liveness::Running
    }
}

fn human(
    config: &Config,
    status: Option<&DaemonStatus>,
    checked_now: Option<&Readiness>,
    last_cycle: Option<&CycleMetrics>,
) -> String {
    let mut out = String::new();
    match status {
        None => {
            let path = config.state_dir.join(status::STATUS_FILE);
            let _ = writeln!(out, "daemon: not running here ({} does not exist)", path.display());
        }
        Some(s) => {
            let _ = writeln!(out, "daemon: {}", daemon_line(s));
            if let Some(w) = &s.watching {
                out.push_str(&watching_lines(w));
            }
        }
    }
    match (checked_now, status) {
        (Some(r), _) => {
            let _ = writeln!(out, "model (checked now, as no daemon runs):");
            for e in std::iter::once(&r.primary).chain(r.fallback.as_ref()) {
                let _ = writeln!(out, "  {}", endpoint_line(e));
            }
        }
        (None, Some(s)) => {
            let _ = writeln!(out, "model:");
            for e in std::iter::once(&s.model.primary).chain(s.model.fallback.as_ref()) {
                let _ = writeln!(out, "  {}", endpoint_line(e));
            }
            let tools = if s.supports_tools { "on" } else { "off (single-shot decisions)" };
            let _ = writeln!(out, "  tool calling: {tools}");
            out.push_str(&queue_lines(&s.queue, since_written(s)));
        }
        (None, None) => {}
    }
    if let Some(m) = last_cycle {
        let _ = writeln!(out, "{}", cycle_line(m));
    }
    out
}

fn daemon_line(s: &DaemonStatus) -> String {
    let written = super::age(s.updated_at);
    match liveness(s) {
        Liveness::Running => format!("running (pid {}, up {}, status written {written} ago)", s.pid, super::age(s.started_at)),
        Liveness::Stopped => format!("stopped {} ago (was pid {})", super::age(s.stopped_at.unwrap_or(s.updated_at)), s.pid),
        Liveness::Gone => format!("not running: pid {} is gone without stopping cleanly (last status {written} ago)", s.pid),
        Liveness::Stale => format!(
            "not responding: pid {} has not written its status for {written} (stuck, or the pid now belongs to another program)",
            s.pid
        ),
    }
}

/// The signal stream and the incidents waiting for a decision.
fn watching_lines(w: &Watching) -> String {
    let e = &w.events;
    let since = e.since.map(|t| format!(" for {}", super::age(t))).unwrap_or_default();
    let mut line = if e.live {
        format!("events: live{since} ({} signals from systemd", e.signals)
    } else {
        let why = e.last_error.as_deref().map(|w| format!(": {}", shown(w))).unwrap_or_default();
        format!("events: DOWN{since}{why}; reconnecting, periodic checks go on ({} signals before", e.signals)
    };
    if e.reconnects > 0 {
        let last = e.last_reconnect.map(|t| format!(", last {} ago", super::age(t))).unwrap_or_default();
        line.push_str(&format!(", {} reconnect{}{last}", e.reconnects, if e.reconnects == 1 { "" } else { "s" }));
    }
    if e.missed > 0 {
        line.push_str(&format!(", {} missed and caught by reconciliation", e.missed));
    }
    if e.unreadable > 0 {
        line.push_str(&format!(", {} unreadable", e.unreadable));
    }
    line.push_str(")\n");
    if let Some(d) = &w.deciding {
        line.push_str(&format!("deciding: {} (recorded {} ago)\n", shown(&d.incident), super::age(d.since)));
    }
    if w.waiting.is_empty() {
        line.push_str("waiting for a decision: none\n");
    } else {
        line.push_str(&format!("waiting for a decision: {}\n", w.waiting.len()));
        for item in &w.waiting {
            line.push_str(&format!("  {} (recorded {} ago)\n", shown(&item.incident), super::age(item.since)));
        }
    }
    if let Some(m) = &w.memory {
        line.push_str(&memory_line(m));
    }
    line
}

/// How incident memory fares, and how many decisions it made.
fn memory_line(m: &MemoryStatus) -> String {
    let since = super::age(m.since);
    let why = m.why.as_deref().map(|w| format!(": {}", shown(w))).unwrap_or_default();
    let state = match m.state.as_str() {
        "working" => format!("working for {since}"),
        "text-alone" => format!("by words alone for {since}, without embeddings{why}"),
        _ => format!("UNAVAILABLE for {since}{why}; decisions go on without it, the trail's records wait"),
    };
    let backend = shown(&m.backend);
    format!("memory: {backend} store, {state}; {} decision(s) a known fix from memory\n", m.from_memory)
}

fn endpoint_line(e: &EndpointCheck) -> String {
    let state = match &e.check {
        Check::Unchecked => "not checked yet".to_owned(),
        Check::Ready { tools, context_length } => {
            let tools = match tools {
                Some(true) => ", takes tools",
                Some(false) => ", no tools",
                None => "",
            };
            let context = context_length.map(|c| format!(", context {c} tokens")).unwrap_or_default();
            format!("ready{tools}{context}")
        }
        Check::MissingModel { error } => format!("MISSING MODEL: {}", shown(error)),
        Check::Failed { error } => format!("cannot be checked: {}", shown(error)),
    };
    format!("{}: {state}", shown(&e.provider.to_string()))
}

/// Milliseconds since the status was written: waits and running times in it
/// have grown by this much since.
fn since_written(s: &DaemonStatus) -> u64 {
    if s.stopped_at.is_some() {
        return 0;
    }
    (Utc::now() - s.updated_at).num_milliseconds().max(0) as u64
}

fn queue_lines(q: &QueueStatus, later_ms: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "queue: {} of {} slot{} busy, {} waiting",
        q.running.len(),
        q.slots,
        if q.slots == 1 { "" } else { "s" },
        q.waiting()
    );
    for r in &q.running {
        let _ = writeln!(out, "  running: {} request for {}", r.priority.as_str(), secs(r.running_ms + later_ms));
    }
    for lane in &q.lanes {
        let oldest = lane.oldest_wait_ms.map(|ms| format!(" (oldest {})", secs(ms + later_ms))).unwrap_or_default();
        let waits = match (lane.wait_p50_ms, lane.wait_p95_ms) {
            (Some(p50), Some(p95)) => {
                format!(", waited p50 {} p95 {} max {}", secs(p50), secs(p95), secs(lane.wait_max_ms))
            }
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  {:<12} {} waiting{oldest}; {} served{waits}",
            lane.priority.as_str(),
            lane.waiting,
            lane.served
        );
    }
    out
}

/// The last cycle, its age counted from its end (a cycle that waited
/// minutes on the model ended long after it began).
fn cycle_line(m: &CycleMetrics) -> String {
    let ended = m.time + chrono::TimeDelta::milliseconds(i64::try_from(m.wall_ms).unwrap_or(i64::MAX));
    format!(
        "last cycle: ended {} ago, {} incident{}, {} model call{}, {} ms",
        super::age(ended),
        m.incidents,
        if m.incidents == 1 { "" } else { "s" },
        m.calls.calls,
        if m.calls.calls == 1 { "" } else { "s" },
        m.wall_ms
    )
}

/// Milliseconds as seconds with one decimal: "12.3s".
fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_cycle_is_aged_from_its_end() {
        let line = CycleMetrics {
            host: None,
            time: Utc::now() - chrono::TimeDelta::seconds(300),
            wall_ms: 290_000,
            incidents: 1,
            decisions: 1,
            from_memory: 0,
            failed_decisions: 0,
            parse_failures: 0,
            tool_rounds: 0,
            calls: Default::default(),
        };
        let shown = cycle_line(&line);
        assert!(
            shown.starts_with("last cycle: ended 10s ago") || shown.starts_with("last cycle: ended 9s ago"),
            "{shown}"
        );
    }
}
