//! `macha stats`: what the model cost and how it went, per day (local time)
//! and overall, summed from the metrics line each cycle writes: cycles,
//! decisions, calls, tokens in and out, call latency (p50, p95), calls no
//! endpoint answered, calls the fallback answered, answers that did not
//! parse. And what the state directory takes, kind by kind, against the
//! configured limits (`retention::usage`).

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use chrono::{DateTime, Local, NaiveDate, Utc};
use serde_json::json;

use super::output::{out, outln, shown};
use macha::config::Config;
use macha::model::metrics::{self, Summary, Totals};
use macha::retention::{self, Usage};

#[derive(clap::Args)]
pub struct Args {
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Only the last N days (today included; 1 to 3650).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: Option<u32>,
}

pub fn run(config: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    macha::logging::init_cli();
    let config = Config::load(config)?;
    let state = super::existing_state_dir(&config)?;
    let (mut lines, unreadable) = match &state {
        Some(state) => metrics::read(state)?,
        None => (Vec::new(), 0),
    };
    let usage = state.as_ref().map(|s| retention::usage(s, &config));
    if let Some(days) = args.days {
        let today = Local::now().date_naive();
        let first =
            today.checked_sub_days(chrono::Days::new(u64::from(days.saturating_sub(1)))).unwrap_or(NaiveDate::MIN);
        lines.retain(|m| local_day(m.time) >= first);
    }
    let summary = metrics::summarise(&lines, local_day);
    if args.json {
        let mut value = serde_json::to_value(&summary)?;
        value["unreadable_lines"] = json!(unreadable);
        value["state_dir"] = json!({"path": config.state_dir, "usage": usage});
        outln!("{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        out!("{}", human(&summary, unreadable))?;
        if let Some(usage) = &usage {
            out!("{}", usage_lines(&config.state_dir, usage))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn local_day(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&Local).date_naive()
}

const HEADER: [&str; 11] = [
    "cycles",
    "decisions",
    "memory",
    "calls",
    "tokens in",
    "tokens out",
    "p50 ms",
    "p95 ms",
    "failed",
    "fallback",
    "invalid",
];

fn human(s: &Summary, unreadable: usize) -> String {
    let mut out = String::new();
    if s.overall.cycles == 0 {
        out.push_str("no cycles recorded yet (metrics.jsonl is empty or absent)\n");
        return out;
    }
    let _ = write!(out, "{:<10}", "day");
    for h in HEADER {
        let _ = write!(out, " {h:>10}");
    }
    out.push('\n');
    for d in &s.days {
        out.push_str(&row(&d.day.to_string(), &d.totals));
    }
    out.push_str(&row("overall", &s.overall));
    out.push_str(
        "memory: decisions that were a known fix from incident memory (no model asked); failed: calls no endpoint \
         answered; fallback: calls the fallback answered; invalid: answers that did not parse\n",
    );
    if unreadable > 0 {
        let _ = writeln!(out, "{unreadable} unreadable line(s) in the metrics files were skipped");
    }
    out
}

/// Bytes for a person: "812 B", "3.4 KiB", "12.0 MiB".
pub fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}

/// The state directory's size, kind by kind, against the limits.
fn usage_lines(dir: &Path, u: &Usage) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nstate directory {}: {}; the kinds with a size limit may take {} together",
        shown(&dir.display().to_string()),
        size(u.bytes),
        size(u.limit_bytes)
    );
    let _ = writeln!(out, "  {:<24} {:>6} {:>11}  limit", "kind", "files", "size");
    for k in &u.kinds {
        let kind = k.kind.split(" (").next().unwrap_or(&k.kind);
        let _ = writeln!(out, "  {kind:<24} {:>6} {:>11}  {}", k.files, size(k.bytes), k.limit);
        if let Some(e) = &k.error {
            let _ = writeln!(out, "    not measured: {}", shown(e));
        }
    }
    out.push_str("  other: status.json, journal.cursor, daemon.lock, requests/, notes/pending/ (notes not read yet)\n");
    out
}

fn row(label: &str, t: &Totals) -> String {
    let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    let cells = [
        t.cycles.to_string(),
        t.decisions.to_string(),
        t.from_memory.to_string(),
        t.calls.to_string(),
        t.prompt_tokens.to_string(),
        t.answer_tokens.to_string(),
        ms(t.latency_p50_ms),
        ms(t.latency_p95_ms),
        t.call_failures.to_string(),
        t.fallbacks.to_string(),
        t.parse_failures.to_string(),
    ];
    let mut line = format!("{label:<10}");
    for c in cells {
        let _ = write!(line, " {c:>10}");
    }
    line.push('\n');
    line
}
