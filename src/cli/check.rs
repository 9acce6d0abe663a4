//! `macha-check`: one full cycle now, a short summary, and an exit status
//! for scripts: 0 healthy, 1 incidents found, 2 error.

use std::path::Path;
use std::process::ExitCode;

use super::output::{out, outln, shown};
use macha::config::Config;
use macha::cycle::Engine;
use macha::model::ModelService;
use macha::report::CycleReport;

#[derive(clap::Args)]
pub struct Args {
    /// Print the cycle's report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(config: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    // What only root may read (the key file, the token file) is read before
    // the state directory is entered.
    let model = ModelService::new(&config)?;
    let channels = macha::notify::channel::configured(&config)?;
    let state = super::state_dir(&config)?;
    macha::logging::init_orchestrator(&state, "error", config.retention.log())?;
    let (notifier, channels) = super::notifications(&config, &state, channels)?;
    let report = super::runtime()?.block_on(async {
        let mut engine = Engine::new(config.clone(), state.clone(), model, notifier)?;
        // The report below names the model's problems: said once.
        engine.leave_model_problems_to_the_report();
        let mut report = engine.run_cycle().await?;
        // Then every remote host, in one report: their incidents carry their names.
        for remote in macha::remote::controller::pass(&mut engine, &config).await {
            report.absorb(remote);
        }
        super::deliver_now(&config, &state, &channels).await;
        anyhow::Ok(report)
    })?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        out!("{}", human(&report))?;
    }
    Ok(if !report.failed_sources.is_empty() {
        ExitCode::from(2)
    } else if report.is_healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Lines of an action's detail shown after its first (a probe's result):
/// the rest is in `macha-logs actions` and in `--json`.
const DETAIL_LINES: usize = 8;

/// `rest` (the lines of a detail after its first), indented under it, at
/// most `max` of them, each through `shown`.
fn more_lines(rest: &str, max: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let lines: Vec<&str> = rest.lines().collect();
    for line in lines.iter().take(max) {
        let _ = writeln!(out, "      {}", shown(line));
    }
    if lines.len() > max {
        let _ = writeln!(out, "      ... {} more lines (`macha-logs actions`, or `--json`)", lines.len() - max);
    }
    out
}

/// The report for a person: what macha did not write itself (names from
/// the host, the model's words, other programs' errors) through `shown`.
fn human(r: &CycleReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ =
        writeln!(out, "macha check on {} (autonomy: {}, {} ms)", shown(&r.host), r.autonomy_level.as_str(), r.wall_ms);
    for p in &r.model_problems {
        let _ = writeln!(out, "  model: {}", shown(p));
    }
    for f in &r.failed_sources {
        let _ = writeln!(out, "  source {} could not be read: {}", shown(&f.source), shown(&f.error));
    }
    if r.incidents.is_empty() && !r.failed_sources.is_empty() {
        let _ = writeln!(out, "no incident in the sources that could be read; the others are unknown");
    } else if r.incidents.is_empty() {
        let _ = writeln!(out, "healthy: no incident");
    } else {
        let n = r.incidents.len();
        let remembered = r.incidents.iter().filter(|i| i.decision.as_ref().is_some_and(|d| d.source == Some("memory")));
        let from_memory = match remembered.count() {
            0 => String::new(),
            m => format!(" ({m} decided from incident memory, no model asked)"),
        };
        let _ = writeln!(out, "{n} incident{}{from_memory}:", if n == 1 { "" } else { "s" });
    }
    for i in &r.incidents {
        let _ = writeln!(out, "  {} [{}]", shown(i.fingerprint.as_str()), i.novelty.as_str());
        let _ = writeln!(out, "    {}", shown(&i.summary));
        let Some(d) = &i.decision else {
            let _ = writeln!(out, "    already decided in an earlier cycle (see `macha-logs decisions`)");
            continue;
        };
        if let Some(diag) = &d.diagnosis {
            let from = if d.source == Some("memory") { " (a known fix from memory; no model asked)" } else { "" };
            let _ = writeln!(out, "    diagnosis{from}: {}", shown(diag));
        }
        if let Some(suspect) = &d.suspect {
            let _ = writeln!(out, "    {}", shown(suspect));
        }
        if let Some(err) = &d.error {
            let _ = writeln!(
                out,
                "    decision failed: {} (the incident stays open and is asked again next cycle)",
                shown(err)
            );
        }
        if d.actions.is_empty() && d.error.is_none() {
            let _ = writeln!(out, "    no action proposed");
        }
        for a in &d.actions {
            let target = a.target.as_deref().map(|t| format!(" {}", shown(t))).unwrap_or_default();
            let (first, rest) = a.detail.split_once('\n').unwrap_or((&a.detail, ""));
            let _ = writeln!(out, "    {}{target} -> {}: {}", shown(&a.action), a.result, shown(first));
            out.push_str(&more_lines(rest, DETAIL_LINES));
        }
    }
    for fp in &r.resolved {
        let _ = writeln!(out, "  resolved: {}", shown(fp.as_str()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_detail_is_shown_as_a_few_lines() {
        let rest: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let shown = more_lines(&rest, DETAIL_LINES);
        assert_eq!(shown.lines().count(), DETAIL_LINES + 1, "{shown}");
        assert!(shown.starts_with("      line 1\n") && shown.contains("      line 8\n"), "{shown}");
        assert!(shown.ends_with("... 22 more lines (`macha-logs actions`, or `--json`)\n"), "{shown}");
        assert_eq!(more_lines("", DETAIL_LINES), "");
        assert_eq!(more_lines("a\x1b[31m\n", DETAIL_LINES), "      a\\x1b[31m\n", "through `shown`");
    }
}
