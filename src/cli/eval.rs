//! `macha eval`: decides every fixture of a directory with a model at any
//! Ollama endpoint, and prints the pass rate per fixture and overall, with
//! the latency of the decisions.
//!
//! The evaluation reads nothing of this host's macha: no configuration file
//! (the settings are the built-in defaults with `--url` and `--model`), no
//! state directory (the record of calls goes to a private temporary
//! directory, removed at the end). Exit status: 0 when every fixture ran,
//! whatever the pass rate; 1 when `--min-pass-rate` was given and the
//! overall rate is below it; 2 when it could not run (bad fixtures, the
//! endpoint unreachable, the model missing).

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use super::output::{out, outln, shown};
use macha::config::Config;
use macha::decide::prompt::Prompts;
use macha::eval::{self, FixtureReport, Report, Totals};
use macha::model::{Check, ModelService};

#[derive(clap::Args)]
pub struct Args {
    /// The Ollama endpoint, for example http://127.0.0.1:11434.
    #[arg(long)]
    url: String,
    /// The model, as Ollama names it, for example llama3.1:70b.
    #[arg(long)]
    model: String,
    /// Decisions per fixture.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The directory of fixtures (*.json).
    #[arg(long, value_name = "DIR", default_value = "eval/fixtures")]
    fixtures: PathBuf,
    /// Seconds to wait for one answer of the model (1 to 3600, as ollama.timeout).
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// Exit 1 when the overall pass rate, in percent, is below this (for CI).
    #[arg(long, value_name = "PERCENT", value_parser = percent)]
    min_pass_rate: Option<f64>,
    /// Exit 1 when the answers that parse into a decision, in percent of all
    /// answers, are below this.
    #[arg(long, value_name = "PERCENT", value_parser = percent)]
    min_valid_rate: Option<f64>,
    /// The sampler's seed sent with every request (ollama.seed), so that a
    /// run can be repeated answer for answer on the same server.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Decide without the fixtures' history (incident memory off), to
    /// compare the pass rate with and without it.
    #[arg(long)]
    no_memory: bool,
}

fn percent(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{raw:?} is not a percentage (0 to 100)")),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    macha::logging::init_cli();
    let fixtures = eval::fixture::load_dir(&args.fixtures).map_err(|e| match e {
        eval::fixture::LoadError::Dir { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            anyhow::anyhow!("{e} (run from macha's source tree, or pass --fixtures DIR)")
        }
        e => e.into(),
    })?;
    let state = PrivateDir::create()?;
    let config = settings(&args, state.path())?;
    let model = ModelService::new(&config)?;
    let prompts = Prompts::load(None)?;
    super::runtime()?.block_on(async {
        ready(&model).await?;
        let watching = std::io::stderr().is_terminal();
        let total = fixtures.len();
        let mut done = 0;
        let memory = (!args.no_memory).then_some(&config.knowledge_base);
        let report = eval::run(&model, &prompts, &fixtures, args.runs, memory, |f| {
            done += 1;
            if watching {
                eprintln!("[{done}/{total}] {}: {}/{} passed", shown(&f.id), f.totals.passes, f.totals.runs);
            }
        })
        .await;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&report)?)?;
        } else {
            out!("{}", human(&report))?;
        }
        let mut code = ExitCode::SUCCESS;
        if let Some(min) = args.min_pass_rate.filter(|&min| report.overall.pass_rate_percent < min) {
            eprintln!(
                "macha eval: the pass rate {:.1}% is below --min-pass-rate {min}%",
                report.overall.pass_rate_percent
            );
            code = ExitCode::from(1);
        }
        if let Some(min) = args.min_valid_rate.filter(|&min| report.overall.valid_answer_rate_percent < min) {
            let rate = report.overall.valid_answer_rate_percent;
            eprintln!("macha eval: the valid-answer rate {rate:.1}% is below --min-valid-rate {min}%");
            code = ExitCode::from(1);
        }
        Ok(code)
    })
}

/// The built-in settings with the endpoint, model and timeout given, checked
/// by the same rules as a configuration file.
fn settings(args: &Args, state_dir: &Path) -> anyhow::Result<Config> {
    let mut ollama = toml::Table::new();
    ollama.insert("url".into(), args.url.clone().into());
    ollama.insert("model".into(), args.model.clone().into());
    ollama.insert("timeout".into(), i64::try_from(args.timeout).unwrap_or(i64::MAX).into());
    if let Some(seed) = args.seed {
        // TOML integers are signed: a seed past i64::MAX is refused by the parser, named.
        let seed = i64::try_from(seed).map_err(|_| anyhow::anyhow!("--seed {seed}: at most {}", i64::MAX))?;
        ollama.insert("seed".into(), seed.into());
    }
    let mut table = toml::Table::new();
    table.insert("state_dir".into(), state_dir.display().to_string().into());
    table.insert("ollama".into(), ollama.into());
    Config::parse(&table.to_string())
        .map_err(|e| anyhow::anyhow!("{e} (--url sets ollama.url, --model ollama.model, --timeout ollama.timeout)"))
}

/// Asks the endpoint about the model before any decision: an endpoint that
/// cannot be reached or lacks the model would fail every run the same way.
async fn ready(model: &ModelService) -> anyhow::Result<()> {
    let readiness = model.check().await;
    match readiness.primary.check {
        Check::Ready { .. } => Ok(()),
        Check::MissingModel { error } => anyhow::bail!("{error}"),
        Check::Failed { error } => anyhow::bail!("cannot ask {} about the model: {error}", model.primary().server()),
        Check::Unchecked => anyhow::bail!("{} was not asked about the model", model.primary().server()),
    }
}

/// A directory only this user can read, removed when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create() -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let path = std::env::temp_dir().join(format!("macha-eval-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create the temporary state directory {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("macha eval: cannot remove {}: {e}", self.0.display());
        }
    }
}

const HEADER: [&str; 8] = ["passed", "rate", "valid", "median ms", "p95 ms", "max ms", "answer tok", "tool calls"];

/// The report as a table: a row per fixture, each failed run's reasons
/// under its fixture, then the overall row. Fixture names come from file
/// names and the reasons quote the model: both through `shown`.
fn human(r: &Report) -> String {
    let width = r.fixtures.iter().map(|f| shown(&f.id).chars().count()).max().unwrap_or(0).max("overall".len());
    let mut out = String::new();
    let tools = if r.tool_calling { "on" } else { "off" };
    let _ = writeln!(
        out,
        "macha eval: {} at {}, {} fixture(s), {} run(s) each, tool calling {tools}{}",
        shown(&r.model),
        shown(&r.url),
        r.fixtures.len(),
        r.runs_per_fixture,
        r.seed.map(|s| format!(", seed {s}")).unwrap_or_default()
    );
    let _ = write!(out, "{:<width$}", "fixture");
    for h in HEADER {
        let _ = write!(out, " {h:>10}");
    }
    out.push('\n');
    for f in &r.fixtures {
        out.push_str(&row(&shown(&f.id), &f.totals, width));
        out.push_str(&failures(f));
    }
    out.push_str(&row("overall", &r.overall, width));
    out
}

fn row(label: &str, t: &Totals, width: usize) -> String {
    let cells = [
        format!("{}/{}", t.passes, t.runs),
        format!("{:.0}%", t.pass_rate_percent),
        format!("{}/{}", t.valid_answers, t.answers),
        t.latency_median_ms.to_string(),
        t.latency_p95_ms.to_string(),
        t.latency_max_ms.to_string(),
        t.answer_tokens_median.to_string(),
        t.tool_calls.to_string(),
    ];
    let mut line = format!("{label:<width$}");
    for c in cells {
        let _ = write!(line, " {c:>10}");
    }
    line.push('\n');
    line
}

/// `  run N failed: REASON; REASON (proposed: ACTIONS)` for each failed run.
fn failures(f: &FixtureReport) -> String {
    let mut out = String::new();
    for r in f.results.iter().filter(|r| !r.verdict.passed) {
        let proposed = if r.outcome == "decided" {
            let actions = if r.actions.is_empty() { "nothing".to_owned() } else { r.actions.join(", ") };
            format!(" (proposed: {actions})")
        } else {
            String::new()
        };
        let _ = writeln!(out, "  run {} failed: {}{}", r.run, shown(&r.verdict.reasons.join("; ")), shown(&proposed));
    }
    out
}
