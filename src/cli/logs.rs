//! `macha-logs`: the audit trail (`decisions`, `actions`, `memory`), the daemon's own
//! log file (`orchestrator`) and its journal lines (`service`), for people
//! (`--json` for scripts), the last N (`-n`) and live (`--follow`).
//! People see each audit line read as the library's record type; `--json`
//! prints the line's JSON as read, whatever version wrote it.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::output::{self, outln, shown};
use macha::audit::{self, ActionRecord, DecisionRecord, MemoryRecord};
use macha::config::Config;
use macha::decide::Severity;
use macha::logging::ORCHESTRATOR_LOG;
use macha::observe::journal::Entry;
use macha::state_dir::StateDir;

#[derive(clap::Args)]
pub struct Args {
    /// Which log to show.
    #[arg(value_enum)]
    which: Which,
    /// Print records as JSON, one per line.
    #[arg(long)]
    json: bool,
    /// How many of the most recent records to show (at most 10000).
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 20,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=MAX_LINES))]
    lines: usize,
    /// Keep printing new records as they are written.
    #[arg(short, long)]
    follow: bool,
}

/// The most records `-n` asks for: enough for a person, and what is held
/// to print them stays small (a journal entry is at most a few KiB).
const MAX_LINES: u64 = 10_000;

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Which {
    /// What the model was asked and what the gate made of it.
    Decisions,
    /// What was carried out, queued, refused or rejected.
    Actions,
    /// What people did to incident memory: memories forgotten, imports (`macha kb`).
    Memory,
    /// What controllers asked of this host (`macha remote serve`): sessions, actions, refusals.
    Remote,
    /// What Alertmanager's webhook brought: each post taken or refused, and why.
    Alerts,
    /// The daemon's own log file.
    Orchestrator,
    /// The daemon's journal lines (its systemd unit).
    Service,
    /// Check the hash chains of the audit files; names the first broken record.
    Verify,
}

pub fn run(config: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    macha::logging::init_cli();
    let config = Config::load(config)?;
    let (name, format): (&str, fn(&Value) -> String) = match args.which {
        Which::Verify => return verify(&config, args.json),
        Which::Decisions => (audit::DECISIONS, human_decision),
        Which::Actions => (audit::ACTIONS, human_action),
        Which::Memory => (audit::MEMORY, human_memory),
        Which::Remote => (audit::REMOTE, human_remote),
        Which::Alerts => (audit::ALERTS, human_alert),
        Which::Orchestrator => (ORCHESTRATOR_LOG, human_log),
        Which::Service => {
            let (dir, unit) = (config.journal_dir.as_deref(), config.service_unit.as_str());
            if macha::observe::journal::unit_tail(dir, unit, 1)?.is_empty() {
                // On stderr, so that `--json` output stays what it is.
                eprintln!(
                    "macha-logs: the journal has no entries of {unit} yet{} (`service_unit` in the configuration names the daemon's unit)",
                    if args.follow { "; waiting for new ones" } else { "" }
                );
                if !args.follow {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            let shown = macha::observe::journal::show_unit(dir, unit, args.lines, args.follow, |e| {
                if args.json {
                    outln!("{}", serde_json::to_string(e)?)?;
                } else {
                    outln!("{}", human_entry(e))?;
                }
                // Following ends when the reader has gone.
                if output::closed() {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
                Ok(())
            });
            match shown {
                Err(_) if output::closed() => {}
                shown => shown?,
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    let emit = |v: &Value| -> std::io::Result<()> {
        if args.json {
            outln!("{v}")
        } else {
            outln!("{}", format(v))
        }
    };
    let Some(state) = super::existing_state_dir(&config)? else {
        let dir = config.state_dir.display();
        anyhow::ensure!(!args.follow, "{dir} does not exist: macha has not run here, there is nothing to follow");
        eprintln!("macha-logs: no records in {} yet", config.state_dir.join(name).display());
        return Ok(ExitCode::SUCCESS);
    };
    let file = state.path_of(name);
    // The audit trail is read across the files it was moved aside to, as
    // far back as `-n` asks; the daemon's log is its current file.
    let (records, torn) = if args.which == Which::Orchestrator {
        audit::read_all(&state, name)?
    } else {
        let kept = audit::read_kept(&state, name, args.lines)?;
        (kept.records, kept.torn)
    };
    for t in &torn {
        eprintln!(
            "macha-logs: {} line {} is not a complete record ({}); skipped",
            state.path_of(&t.file).display(),
            t.line,
            t.error
        );
    }
    if records.is_empty() && !args.follow {
        eprintln!("macha-logs: no records in {} yet", file.display());
    }
    for v in records.iter().skip(records.len().saturating_sub(args.lines)) {
        emit(v)?;
    }
    if args.follow {
        follow(&state, name, emit)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let mut intact = true;
    let state = super::existing_state_dir(config)?;
    for name in audit::TRAILS {
        let r = match &state {
            Some(state) => audit::verify(state, name)?,
            None => audit::ChainReport::default(),
        };
        intact &= r.broken.is_none();
        let note = (!r.notes.is_empty()).then(|| r.notes.join("; "));
        if json {
            let broken =
                r.broken.as_ref().map(|b| serde_json::json!({"file": b.file, "line": b.line, "reason": b.why}));
            outln!(
                "{}",
                serde_json::json!({"file": name, "records": r.records, "files": r.files, "broken": broken, "note": note})
            )?;
            continue;
        }
        let files = if r.files > 1 { format!(" in {} files", r.files) } else { String::new() };
        match &r.broken {
            None => outln!("{name}: {} records{files}, chain intact", r.records)?,
            // A break in the current file is named by its line, as before the trail had files.
            Some(b) if b.file == name => outln!("{name}: BROKEN at line {}: {}", b.line, b.why)?,
            Some(b) => outln!("{name}: BROKEN at {} line {}: {}", b.file, b.line, b.why)?,
        }
        for note in &r.notes {
            outln!("{name}: note: {note}")?;
        }
    }
    Ok(if intact { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Longest line `--follow` holds while it waits for the line's end; a
/// longer one (a file written without line ends) is skipped and said so,
/// so memory stays bounded.
const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// Prints each complete line appended to `name` from now on, until the
/// reader goes away. A partial line is kept until its end arrives, up to
/// `MAX_RECORD_BYTES`.
fn follow(state: &StateDir, name: &str, emit: impl Fn(&Value) -> std::io::Result<()>) -> anyhow::Result<()> {
    let mut offset = state.metadata(name)?.map_or(0, |m| m.len());
    // The file followed (device and inode): another one at the name means
    // it was moved aside.
    let mut following = None;
    let mut pending = Vec::new();
    // Set while the rest of an over-long line is read and dropped.
    let mut skipping = false;
    while !output::closed() {
        std::thread::sleep(Duration::from_millis(300));
        let Some(file) = state.open_read(name)? else { continue };
        let meta = file.metadata()?;
        let len = meta.len();
        let id = (meta.dev(), meta.ino());
        if len < offset || following.is_some_and(|f| f != id) {
            // Moved aside (or truncated): start from the beginning of the new file.
            offset = 0;
            pending.clear();
            skipping = false;
        }
        following = Some(id);
        if len == offset {
            continue;
        }
        let mut reader = BufReader::new(file);
        reader.seek(SeekFrom::Start(offset))?;
        loop {
            let room = (MAX_RECORD_BYTES + 1).saturating_sub(pending.len()) as u64;
            let n = (&mut reader).take(room).read_until(b'\n', &mut pending)?;
            if n == 0 {
                break;
            }
            offset += n as u64;
            let ended = pending.ends_with(b"\n");
            if ended && !skipping {
                if let Ok(v) = serde_json::from_slice::<Value>(&pending) {
                    emit(&v)?;
                }
            } else if !ended && pending.len() > MAX_RECORD_BYTES && !skipping {
                eprintln!(
                    "macha-logs: a line of {name} is longer than {} MiB; it is skipped",
                    MAX_RECORD_BYTES / (1024 * 1024)
                );
                skipping = true;
            }
            if ended {
                skipping = false;
                pending.clear();
            } else if skipping {
                pending.clear();
            }
        }
    }
    Ok(())
}

/// How a time is shown: to the second, without its zone (the records' times are UTC).
const TIME: &str = "%Y-%m-%d %H:%M:%S";

fn when(t: &DateTime<Utc>) -> String {
    t.format(TIME).to_string()
}

/// A line of `decisions.jsonl` for people, read as the decision record it
/// is, so a field renamed in the record is a compile error here. A line
/// that is JSON but no such record (edited by hand, written by a newer
/// version) is still shown, field by field as far as they go.
fn human_decision(v: &Value) -> String {
    DecisionRecord::deserialize(v).map_or_else(|_| loose::decision(v), |r| decision_line(&r))
}

/// A line of `actions.jsonl` for people, as [`human_decision`].
fn human_action(v: &Value) -> String {
    ActionRecord::deserialize(v).map_or_else(|_| loose::action(v), |r| action_line(&r))
}

/// A line of `remote.jsonl` for people,
/// "TIME  controller CTL  VERB  OUTCOME (ERROR): DETAIL", read loosely:
/// each field as far as it is there.
fn human_remote(v: &Value) -> String {
    let text = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or("-");
    let time = text("time").get(..19).unwrap_or(text("time")).replace('T', " ");
    let error = v.get("error").and_then(Value::as_str).map(|e| format!(" ({e})")).unwrap_or_default();
    format!(
        "{}  controller {}  {}  {}{}: {}",
        shown(&time),
        shown(text("controller")),
        shown(text("verb")),
        shown(text("outcome")),
        shown(&error),
        shown(text("detail"))
    )
}

/// A line of `alerts.jsonl` for people,
/// "TIME  OUTCOME HTTP STATUS  N firing, N resolved, N about another host, N left out: DETAIL",
/// read loosely.
fn human_alert(v: &Value) -> String {
    let text = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or("-");
    let n = |key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
    let time = text("time").get(..19).unwrap_or(text("time")).replace('T', " ");
    format!(
        "{}  {} HTTP {}  {} firing, {} resolved, {} about another host, {} left out: {}",
        shown(&time),
        shown(text("outcome")),
        n("status"),
        n("firing"),
        n("resolved"),
        n("elsewhere"),
        n("left_out"),
        shown(text("detail"))
    )
}

/// A line of `memory.jsonl` for people, as [`human_decision`].
fn human_memory(v: &Value) -> String {
    MemoryRecord::deserialize(v).map_or_else(|_| loose::memory(v), |r| memory_line(&r))
}

/// Every text of a record goes through `shown`: records quote the model,
/// the journal, unit and mount names, people's reasons (and the files
/// could have been edited).
fn decision_line(r: &DecisionRecord) -> String {
    let mut line = format!("{}  {}  {}", when(&r.time), shown(r.incident.as_str()), r.outcome);
    if let Some(d) = &r.decision {
        line.push_str(&format!(" ({}): {}", severity(d.severity), shown(&d.diagnosis)));
    }
    if let Some(error) = &r.error {
        line.push_str(&format!(": {}", shown(error)));
    }
    if let Some(repeats) = &r.repeated {
        line.push_str(&format!(
            " (the same {} more times from {} to {}, counted, not recorded one by one)",
            repeats.count,
            when(&repeats.first),
            when(&repeats.last)
        ));
    }
    for g in &r.gated {
        let p = &g.proposed;
        let unit = p.unit.as_deref().map(|u| format!(" {}", shown(u))).unwrap_or_default();
        line.push_str(&format!("\n    {}{unit} -> {}", p.kind.as_str(), shown(&g.verdict)));
        if let Some(detail) = &g.detail {
            line.push_str(&format!(": {}", shown(detail)));
        }
    }
    line
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

fn action_line(r: &ActionRecord) -> String {
    let mut target = r.target.as_deref().map(|t| format!(" {}", shown(t))).unwrap_or_default();
    // A remote host's incident: the action is that host's.
    if let Some(host) = r.incident.host() {
        target.push_str(&format!(" on {}", shown(host)));
    }
    let who = match (r.approval_id, &r.by) {
        (Some(id), Some(by)) => format!("approval {id} by {}", shown(by)),
        (Some(id), None) => format!("approval {id}"),
        (None, _) => r.origin.as_str().to_owned(),
    };
    format!("{}  {}{target}  {}  [{who}]  {}", when(&r.time), shown(&r.action), r.outcome, shown(&r.detail))
}

fn memory_line(r: &MemoryRecord) -> String {
    let memory = r.memory.as_deref().map(|m| format!(" {}", shown(m))).unwrap_or_default();
    format!("{}  {}{memory}  [by {}]  {}", when(&r.time), r.event.as_str(), shown(&r.by), shown(&r.detail))
}

/// A text field of a line read as JSON (the daemon's log, a line of the
/// trail that is no record), as a terminal may show it.
fn s<'a>(v: &'a Value, key: &str) -> Cow<'a, str> {
    shown(v.get(key).and_then(Value::as_str).unwrap_or(""))
}

fn time(v: &Value, key: &str) -> String {
    let t = s(v, key);
    chrono::DateTime::parse_from_rfc3339(&t).map(|t| t.format(TIME).to_string()).unwrap_or_else(|_| t.into_owned())
}

/// A line of the trail that is JSON but not a record of its file, shown
/// field by field: the fields it has, by the names records have, each as
/// far as it is of the type a record gives it; a missing one is empty.
/// For a record it gives what [`decision_line`], [`action_line`] and
/// [`memory_line`] give.
mod loose {
    use serde_json::Value;

    use super::{s, time};

    pub(super) fn decision(v: &Value) -> String {
        let mut line = format!("{}  {}  {}", time(v, "time"), s(v, "incident"), s(v, "outcome"));
        if let Some(d) = v.get("decision") {
            line.push_str(&format!(" ({}): {}", s(d, "severity"), s(d, "diagnosis")));
        }
        if v.get("error").is_some() {
            line.push_str(&format!(": {}", s(v, "error")));
        }
        if let Some(n) = v.pointer("/repeated/count").and_then(Value::as_u64) {
            let r = &v["repeated"];
            line.push_str(&format!(
                " (the same {n} more times from {} to {}, counted, not recorded one by one)",
                time(r, "first"),
                time(r, "last")
            ));
        }
        for g in v.get("gated").and_then(Value::as_array).into_iter().flatten() {
            let p = &g["proposed"];
            let unit =
                if p.get("unit").is_some_and(Value::is_string) { format!(" {}", s(p, "unit")) } else { String::new() };
            line.push_str(&format!("\n    {}{unit} -> {}", s(p, "kind"), s(g, "verdict")));
            if g.get("detail").is_some_and(Value::is_string) {
                line.push_str(&format!(": {}", s(g, "detail")));
            }
        }
        line
    }

    pub(super) fn action(v: &Value) -> String {
        let mut target =
            if v.get("target").is_some_and(Value::is_string) { format!(" {}", s(v, "target")) } else { String::new() };
        let incident = macha::ids::Fingerprint::from(v["incident"].as_str().unwrap_or_default());
        if let Some(host) = incident.host() {
            target.push_str(&format!(" on {}", super::shown(host)));
        }
        let who = match (v.get("approval_id").and_then(Value::as_i64), v.get("by").is_some_and(Value::is_string)) {
            (Some(id), true) => format!("approval {id} by {}", s(v, "by")),
            (Some(id), false) => format!("approval {id}"),
            _ => s(v, "origin").into_owned(),
        };
        format!("{}  {}{target}  {}  [{who}]  {}", time(v, "time"), s(v, "action"), s(v, "outcome"), s(v, "detail"))
    }

    pub(super) fn memory(v: &Value) -> String {
        let memory =
            if v.get("memory").is_some_and(Value::is_string) { format!(" {}", s(v, "memory")) } else { String::new() };
        format!("{}  {}{memory}  [by {}]  {}", time(v, "time"), s(v, "event"), s(v, "by"), s(v, "detail"))
    }
}

/// `TIME PROGRAM[PID] PRIORITY: MESSAGE`, as syslog names the writer; the
/// program's name and its message as a terminal may show them.
fn human_entry(e: &Entry) -> String {
    const PRIORITIES: [&str; 8] = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"];
    let pid = e.pid.map(|p| format!("[{p}]")).unwrap_or_default();
    format!(
        "{} {}{pid} {}: {}",
        e.time.format("%Y-%m-%d %H:%M:%S"),
        shown(e.identifier.as_deref().or(e.comm.as_deref()).unwrap_or("-")),
        PRIORITIES.get(usize::from(e.priority)).copied().unwrap_or("unknown"),
        shown(&e.message)
    )
}

fn human_log(v: &Value) -> String {
    let fields = v.get("fields").and_then(Value::as_object);
    let message = shown(fields.and_then(|f| f.get("message")).and_then(Value::as_str).unwrap_or(""));
    let extra: Vec<String> = fields
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "message")
        .map(|(k, v)| {
            format!("{}={}", shown(k), shown(&v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
        })
        .collect();
    format!("{} {:>5} {message} {}", time(v, "timestamp"), s(v, "level"), extra.join(" ")).trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records written by the code of issue 11, one `Value` a line.
    fn fixture(name: &str) -> Vec<Value> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit-issue11").join(name);
        let text = std::fs::read_to_string(path).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn with(mut v: Value, pointer: &str, key: &str, value: Value) -> Value {
        v.pointer_mut(pointer).and_then(Value::as_object_mut).unwrap().insert(key.into(), value);
        v
    }

    #[test]
    fn each_record_of_the_version_before_is_read_typed_and_shown_as_before() {
        let decisions = fixture(audit::DECISIONS);
        for v in &decisions {
            let typed = decision_line(&DecisionRecord::deserialize(v).unwrap());
            assert_eq!(typed, loose::decision(v), "{v}");
        }
        let shown: Vec<String> = decisions.iter().map(human_decision).collect();
        assert_eq!(
            shown,
            [
                "2026-05-28 20:26:50  unit-failed:demo-web.service  decided (critical): demo-web cannot read its config\n    restart_unit demo-web.service -> execute\n    collect_garbage -> queue\n    nixos_rebuild -> refuse: switch waits for a human",
                "2026-05-28 20:27:00  unit-failed:demo-web.service  failed: invalid answer: expected value",
                "2026-05-28 20:27:21  unit-failed:demo-web.service  failed: HTTP 500 (the same 4 more times from 2026-05-28 20:27:10 to 2026-05-28 20:27:20, counted, not recorded one by one)",
            ]
        );
        let actions = fixture(audit::ACTIONS);
        for v in &actions {
            let typed = action_line(&ActionRecord::deserialize(v).unwrap());
            assert_eq!(typed, loose::action(v), "{v}");
        }
        let shown: Vec<String> = actions.iter().map(human_action).collect();
        assert_eq!(
            shown,
            [
                "2026-05-28 20:27:30  restart_unit demo-web.service  started  [automatic]  carrying out restart_unit demo-web.service",
                "2026-05-28 20:27:35  restart_unit demo-web.service  succeeded  [automatic]  demo-web.service is active (running)",
                "2026-05-28 20:27:40  restart_unit demo-web.service  interrupted  [automatic]  macha stopped during it",
                "2026-05-28 20:27:41  restart_unit demo-web.service  deferred  [automatic]  not acted now because of the cooldown",
                "2026-05-28 20:27:42  collect_garbage older_than_days=14  queued  [approval 3]  run `macha-approve approve 3` to carry it out",
                "2026-05-28 20:27:43  restart_unit demo-web.service  already_queued  [approval 3]  already waiting for approval as item 3",
                "2026-05-28 20:27:44  restart_unit demo-web.service  escalated  [approval 4]  not acted automatically because it restarted too often",
                "2026-05-28 20:27:45  propose_config_change file=hosts/web1.nix  proposed  [automatic]  written to /var/lib/macha/proposals/x.patch",
                "2026-05-28 20:27:46  restart_unit demo-web.service  refused  [automatic]  nginx.service is protected",
                "2026-05-28 20:27:50  restart_unit demo-web.service  approved  [approval 3 by alice]  carrying out nix_gc older than 14 days",
                "2026-05-28 20:27:51  restart_unit demo-web.service  failed  [approval 3 by alice]  the helper failed",
                "2026-05-28 20:27:52  restart_unit demo-web.service  rejected  [approval 4 by bob]  not now",
            ]
        );
    }

    #[test]
    fn a_record_with_a_field_this_version_does_not_know_is_shown_as_without_it() {
        let decided = fixture(audit::DECISIONS).swap_remove(0);
        let action = fixture(audit::ACTIONS).swap_remove(9);
        // Beside the record's own fields the field is passed over.
        let newer = with(decided.clone(), "", "confidence", 0.9.into());
        assert!(DecisionRecord::deserialize(&newer).is_ok());
        assert_eq!(human_decision(&newer), human_decision(&decided));
        let newer = with(action.clone(), "", "host_group", "web".into());
        assert!(ActionRecord::deserialize(&newer).is_ok());
        assert_eq!(human_action(&newer), human_action(&action));
        // In a proposed action, which takes no unknown field, the line is
        // no record of this version and still shows the same.
        let newer = with(decided.clone(), "/gated/0/proposed", "priority", 1.into());
        assert!(DecisionRecord::deserialize(&newer).is_err());
        assert_eq!(human_decision(&newer), human_decision(&decided));
    }

    #[test]
    fn an_action_on_a_remote_host_names_the_host_typed_or_not() {
        let action = fixture(audit::ACTIONS).swap_remove(1);
        let remote = with(action, "", "incident", "h2/unit-failed:demo-web.service".into());
        let line = "2026-05-28 20:27:35  restart_unit demo-web.service on h2  succeeded  [automatic]  demo-web.service is active (running)";
        assert_eq!(human_action(&remote), line);
        assert_eq!(loose::action(&remote), line);
    }

    #[test]
    fn a_line_that_is_json_but_no_record_is_still_shown() {
        // An outcome of a newer version: shown by its name.
        let action = fixture(audit::ACTIONS).swap_remove(11);
        let newer = with(action, "", "outcome", "postponed".into());
        assert!(ActionRecord::deserialize(&newer).is_err());
        assert_eq!(
            human_action(&newer),
            "2026-05-28 20:27:52  restart_unit demo-web.service  postponed  [approval 4 by bob]  not now"
        );
        // Edited by hand: the fields there are, the time as written when it is none.
        let edited = serde_json::json!({"time": "yesterday", "incident": "disk-full:/var", "outcome": "decided"});
        assert!(DecisionRecord::deserialize(&edited).is_err());
        assert_eq!(human_decision(&edited), "yesterday  disk-full:/var  decided");
        let other = serde_json::json!({"n": 1});
        assert_eq!(human_decision(&other), "    ");
        assert_eq!(human_action(&other), "      []  ");
    }

    #[test]
    fn the_text_of_a_typed_record_is_shown_as_a_terminal_may_show_it() {
        let decided = fixture(audit::DECISIONS).swap_remove(0);
        let v = with(decided, "/decision", "diagnosis", "red \u{1b}[31m alert".into());
        assert!(DecisionRecord::deserialize(&v).is_ok());
        let line = human_decision(&v);
        assert!(!line.contains('\u{1b}') && line.contains("red "), "{line}");
    }
}
