//! `macha-logs`: the audit trail (`decisions`, `actions`), the daemon's own
//! log file (`orchestrator`) and its journal lines (`service`), for people
//! (`--json` for scripts), the last N (`-n`) and live (`--follow`).

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use super::output::{self, outln, shown};
use macha::audit;
use macha::config::Config;
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
        Which::Orchestrator => (ORCHESTRATOR_LOG, human_log),
        Which::Service => {
            let shown = macha::observe::journal::show_unit(
                config.journal_dir.as_deref(),
                config.service_unit.as_str(),
                args.lines,
                args.follow,
                |e| {
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
                },
            );
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
    for name in [audit::DECISIONS, audit::ACTIONS, audit::INCIDENTS] {
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

/// A text field of a record, as a terminal may show it: records quote the
/// model, the journal, unit and mount names, people's reasons (and the
/// files could have been edited), so every field goes through `shown`.
fn s<'a>(v: &'a Value, key: &str) -> Cow<'a, str> {
    shown(v.get(key).and_then(Value::as_str).unwrap_or(""))
}

fn time(v: &Value, key: &str) -> String {
    let t = s(v, key);
    chrono::DateTime::parse_from_rfc3339(&t)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| t.into_owned())
}

fn human_decision(v: &Value) -> String {
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

fn human_action(v: &Value) -> String {
    let target =
        if v.get("target").is_some_and(Value::is_string) { format!(" {}", s(v, "target")) } else { String::new() };
    let who = match (v.get("approval_id").and_then(Value::as_i64), v.get("by").is_some_and(Value::is_string)) {
        (Some(id), true) => format!("approval {id} by {}", s(v, "by")),
        (Some(id), false) => format!("approval {id}"),
        _ => s(v, "origin").into_owned(),
    };
    format!("{}  {}{target}  {}  [{who}]  {}", time(v, "time"), s(v, "action"), s(v, "outcome"), s(v, "detail"))
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
