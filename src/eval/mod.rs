//! `macha eval`: how well a model decides, measured on fixed incidents.
//!
//! Each fixture (`eval/fixtures/*.json`, see `fixture.rs`) becomes the
//! incident and snapshot the daemon would have, and is decided by the
//! daemon's own code, `decide::decide`, with the same prompts, schema,
//! retry and tool rounds; the tools answer from the fixture (`tools.rs`).
//! Nothing is gated or carried out: the answer is only judged against the
//! fixture's `expect` (`judge.rs`). A fixture runs `runs` times, because a
//! model at a non-zero temperature does not answer the same way each time;
//! the report gives passes per fixture and overall, with the latency of the
//! decisions (retries and tool rounds included).

pub mod fixture;
pub mod judge;
pub mod tools;

use serde::Serialize;

use self::fixture::Fixture;
use self::judge::{judge, Verdict};
use self::tools::FixtureTools;
use crate::config::KnowledgeBaseConfig;
use crate::decide::prompt::Prompts;
use crate::decide::{self, Outcome, ProposedAction, Trail};
use crate::kb;
use crate::model::ModelService;

/// What an evaluation found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub model: String,
    /// Whether the model was offered tools (it takes them).
    pub tool_calling: bool,
    pub runs_per_fixture: u32,
    /// The sampler's seed sent with every request, if one was.
    pub seed: Option<u64>,
    /// Whether the fixtures' history was used (incident memory on).
    pub memory: bool,
    pub fixtures: Vec<FixtureReport>,
    pub overall: Totals,
}

/// One fixture's runs.
#[derive(Debug, Clone, Serialize)]
pub struct FixtureReport {
    pub id: String,
    pub file: String,
    #[serde(flatten)]
    pub totals: Totals,
    pub results: Vec<RunReport>,
}

/// Passes, valid answers, latency and tokens over a set of runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Totals {
    pub runs: u32,
    pub passes: u32,
    /// `passes` in percent of `runs`.
    pub pass_rate_percent: f64,
    /// Answers the model gave for a decision (the first, and the retry
    /// after an invalid one; not an HTTP error or a timeout).
    pub answers: u32,
    /// Of `answers`, those that parsed and validated into a decision.
    pub valid_answers: u32,
    /// `valid_answers` in percent of `answers`.
    pub valid_answer_rate_percent: f64,
    /// Median wall time of a decision, in milliseconds.
    pub latency_median_ms: u64,
    /// The 95th percentile (nearest rank) of the same.
    pub latency_p95_ms: u64,
    pub latency_max_ms: u64,
    /// Median tokens of a decision's prompts and of its answers, over the
    /// decided runs (a failed decision does not count its tokens).
    pub prompt_tokens_median: u64,
    pub answer_tokens_median: u64,
    /// Tool calls the model made, over all runs.
    pub tool_calls: u32,
}

/// One decision and its judgement.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// 1 for the first run of the fixture.
    pub run: u32,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// `decided` or `failed`.
    pub outcome: &'static str,
    pub diagnosis: Option<String>,
    /// The proposed actions, each as `kind` and its arguments.
    pub actions: Vec<String>,
    /// Answers asked for (1, or 2 after an invalid one).
    pub attempts: u32,
    /// Answers that did not parse or validate.
    pub invalid_answers: u32,
    /// The model's last invalid answer (secrets masked), and why it was
    /// refused, when the decision failed on one.
    pub last_invalid_answer: Option<String>,
    pub wall_ms: u64,
    /// Tokens of every answer, tool rounds and summaries included; `None`
    /// for a failed decision, whose outcome does not count them.
    pub prompt_tokens: Option<u64>,
    pub answer_tokens: Option<u64>,
    /// How the decision was reached: the prompt's size and budget, the
    /// summaries made to fit it, the tools called and what they returned.
    pub trail: Trail,
}

/// Decides each fixture `runs` times and judges every answer. `progress` is
/// told about each fixture when its runs are done (for a person watching a
/// slow model). The fixtures are decided one after another: a local model
/// serves one request at a time, and the latencies measure a decision, not
/// a queue.
pub async fn run(
    model: &ModelService,
    prompts: &Prompts,
    fixtures: &[Fixture],
    runs: u32,
    memory: Option<&KnowledgeBaseConfig>,
    mut progress: impl FnMut(&FixtureReport),
) -> Report {
    let mut reports = Vec::with_capacity(fixtures.len());
    for fixture in fixtures {
        let snapshot = fixture.snapshot();
        let tools = FixtureTools::new(fixture);
        let mut results = Vec::with_capacity(runs as usize);
        let (history, known) = remembered(fixture, model, memory);
        let suspect = linked(fixture, &snapshot);
        for run in 1..=runs {
            let outcome = match &known {
                Some(outcome) => decide::linked(outcome.clone(), &fixture.incident, suspect.as_ref()),
                None => {
                    let context = decide::Context { history: history.as_ref(), suspect: suspect.as_ref(), notes: None };
                    decide::decide(model, prompts, &fixture.incident, &snapshot, context, Some(&tools)).await
                }
            };
            results.push(run_report(run, judge(&fixture.expect, &outcome), &outcome));
        }
        let report = FixtureReport {
            id: fixture.id.clone(),
            file: fixture.file.display().to_string(),
            totals: Totals::of(&results),
            results,
        };
        progress(&report);
        reports.push(report);
    }
    let all: Vec<RunReport> = reports.iter().flat_map(|f| f.results.iter().cloned()).collect();
    let primary = model.primary();
    Report {
        url: primary.url.clone(),
        model: primary.model.clone(),
        tool_calling: model.tool_rounds() > 0,
        runs_per_fixture: runs,
        seed: model.seed(),
        memory: memory.is_some_and(|c| c.enable),
        overall: Totals::of(&all),
        fixtures: reports,
    }
}

/// The fixture's incident linked to its last switch, as the daemon links
/// it (with the default windows of `[nixos]`): a failed unit's incident
/// began when the unit failed.
fn linked(fixture: &Fixture, snapshot: &crate::observe::Snapshot) -> Option<crate::suspect::SuspectChange> {
    let switch = fixture.switch.as_ref()?;
    let nixos = crate::config::NixosConfig::default();
    let began = fixture.unit.as_ref().and_then(|u| u.inactive_enter_timestamp).unwrap_or(snapshot.taken_at);
    crate::suspect::link(
        &fixture.incident,
        switch,
        began,
        chrono::TimeDelta::hours(nixos.suspect_window_hours as i64),
        chrono::TimeDelta::minutes(nixos.suspect_nearby_minutes as i64),
    )
}

/// What incident memory gives a fixture's decision, as the daemon's cycle
/// does: the fixture's own history first and the other incidents of its
/// history, within `knowledge_base.prompt_share_percent` of the input
/// budget; or, when its own history has a known fix, that fix, with no
/// model asked. Nothing with memory off (`--no-memory`).
fn remembered(
    fixture: &Fixture,
    model: &ModelService,
    memory: Option<&KnowledgeBaseConfig>,
) -> (Option<kb::Recalled>, Option<Outcome>) {
    let Some(config) = memory.filter(|c| c.enable) else { return (None, None) };
    let mut memories: Vec<kb::Memory> = Vec::new();
    for event in &fixture.history {
        let id = kb::id_of(&event.host, &event.fingerprint);
        match memories.iter_mut().find(|m| m.id() == id) {
            Some(m) => m.apply(event),
            None => {
                let mut m = kb::Memory::new(&event.host, &event.fingerprint, event.at);
                m.apply(event);
                memories.push(m);
            }
        }
    }
    let own = kb::id_of(fixture::HOSTNAME, &fixture.incident.fingerprint);
    memories.sort_by_key(|m| (m.id() != own, std::cmp::Reverse(m.last_seen)));
    if let Some(m) = memories.first().filter(|m| m.id() == own) {
        if let Some(outcome) = decide::from_memory(m, config.known_fix_after) {
            return (None, Some(outcome));
        }
    }
    let sections: Vec<_> = fixture.runbooks.iter().take(config.recall as usize).cloned().collect();
    let hits: Vec<kb::Hit> = memories
        .into_iter()
        .filter(kb::Memory::has_history)
        .take(config.recall as usize)
        .map(|memory| kb::Hit { memory, score: 1.0 })
        .collect();
    let share = model.input_budget() * config.prompt_share_percent as usize / 100;
    (kb::recall(&hits, &sections, share, decide::tokens::estimate_tokens), None)
}

fn run_report(run: u32, verdict: Verdict, outcome: &Outcome) -> RunReport {
    match outcome {
        Outcome::Decided { decision, attempts, prompt_tokens, answer_tokens, wall_ms, trail, .. } => RunReport {
            run,
            verdict,
            outcome: "decided",
            diagnosis: Some(decision.diagnosis.clone()),
            actions: decision.actions.iter().map(describe).collect(),
            attempts: *attempts,
            invalid_answers: outcome.invalid_answers(),
            last_invalid_answer: None,
            wall_ms: *wall_ms,
            prompt_tokens: Some(*prompt_tokens),
            answer_tokens: Some(*answer_tokens),
            trail: trail.clone(),
        },
        Outcome::Failed { attempts, wall_ms, trail, last_answer, .. } => RunReport {
            run,
            verdict,
            outcome: "failed",
            diagnosis: None,
            actions: Vec::new(),
            attempts: *attempts,
            invalid_answers: outcome.invalid_answers(),
            last_invalid_answer: last_answer.clone(),
            wall_ms: *wall_ms,
            prompt_tokens: None,
            answer_tokens: None,
            trail: trail.clone(),
        },
    }
}

/// An action as `kind` followed by the arguments it carries.
fn describe(a: &ProposedAction) -> String {
    let mut parts = vec![a.kind.as_str().to_owned()];
    parts.extend(a.probe.map(|p| p.as_str().to_owned()));
    parts.extend(a.unit.clone());
    parts.extend(a.path.clone());
    parts.extend(a.mode.map(|m| m.as_str().to_owned()));
    parts.extend(a.older_than_days.map(|d| format!("older_than_days={d}")));
    parts.extend(a.max_size_mb.map(|m| format!("max_size_mb={m}")));
    parts.extend(a.file.clone());
    parts.join(" ")
}

impl Totals {
    fn of(results: &[RunReport]) -> Self {
        let runs = results.len() as u32;
        let passes = results.iter().filter(|r| r.verdict.passed).count() as u32;
        let valid_answers = results.iter().filter(|r| r.outcome == "decided").count() as u32;
        let answers = valid_answers + results.iter().map(|r| r.invalid_answers).sum::<u32>();
        let sorted = |f: &dyn Fn(&RunReport) -> Option<u64>| {
            let mut v: Vec<u64> = results.iter().filter_map(f).collect();
            v.sort_unstable();
            v
        };
        let ms = sorted(&|r| Some(r.wall_ms));
        Totals {
            runs,
            passes,
            pass_rate_percent: percent(passes, runs),
            answers,
            valid_answers,
            valid_answer_rate_percent: percent(valid_answers, answers),
            latency_median_ms: median(&ms),
            latency_p95_ms: nearest_rank(&ms, 95),
            latency_max_ms: ms.last().copied().unwrap_or(0),
            prompt_tokens_median: median(&sorted(&|r| r.prompt_tokens)),
            answer_tokens_median: median(&sorted(&|r| r.answer_tokens)),
            tool_calls: results.iter().map(|r| r.trail.tools.len() as u32).sum(),
        }
    }
}

/// `part` in percent of `whole`; 0 for none.
fn percent(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) * 100.0 / f64::from(whole)
    }
}

/// The `p`th percentile of sorted values by nearest rank: the smallest
/// value with at least `p` percent of them at or below it; 0 for none.
fn nearest_rank(sorted: &[u64], p: usize) -> u64 {
    match sorted.len() {
        0 => 0,
        n => sorted[(p * n).div_ceil(100).clamp(1, n) - 1],
    }
}

/// The median of sorted values: the middle one, or the mean of the two
/// middle ones; 0 for none.
fn median(sorted: &[u64]) -> u64 {
    match sorted.len() {
        0 => 0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{ActionKind, Probe};

    fn result(passed: bool, wall_ms: u64) -> RunReport {
        RunReport {
            run: 1,
            verdict: Verdict { passed, reasons: vec![] },
            outcome: "decided",
            diagnosis: None,
            actions: vec![],
            attempts: 1,
            invalid_answers: 0,
            last_invalid_answer: None,
            wall_ms,
            prompt_tokens: None,
            answer_tokens: None,
            trail: Trail::default(),
        }
    }

    #[test]
    fn totals_count_passes_and_latency() {
        let t = Totals::of(&[result(true, 30), result(false, 10), result(true, 20), result(true, 50)]);
        assert_eq!((t.runs, t.passes, t.latency_median_ms, t.latency_max_ms), (4, 3, 25, 50));
        assert_eq!(t.pass_rate_percent, 75.0);
        assert_eq!(Totals::of(&[]).pass_rate_percent, 0.0);
        assert_eq!(median(&[1, 2, 9]), 2);
        assert_eq!((t.answers, t.valid_answers, t.valid_answer_rate_percent), (4, 4, 100.0));
        assert_eq!((nearest_rank(&[], 95), nearest_rank(&[7], 95)), (0, 7));
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!((nearest_rank(&hundred, 95), nearest_rank(&hundred[..20], 95)), (95, 19));
    }

    #[test]
    fn invalid_answers_count_against_the_valid_answer_rate() {
        let mut retried = result(true, 10);
        retried.attempts = 2;
        retried.invalid_answers = 1;
        let mut failed = result(false, 10);
        (failed.outcome, failed.attempts, failed.invalid_answers) = ("failed", 2, 2);
        let mut timed_out = result(false, 10);
        (timed_out.outcome, timed_out.attempts) = ("failed", 1);
        let t = Totals::of(&[result(true, 10), retried, failed, timed_out]);
        assert_eq!((t.answers, t.valid_answers), (5, 2), "a timeout is no answer");
        assert_eq!(t.valid_answer_rate_percent, 40.0);
    }

    #[test]
    fn an_action_is_described_with_its_arguments() {
        let mut a = ProposedAction::new(ActionKind::Investigate, Some("web.service"), "look");
        a.probe = Some(Probe::UnitLogs);
        assert_eq!(describe(&a), "investigate unit_logs web.service");
        let mut gc = ProposedAction::new(ActionKind::CollectGarbage, None, "space");
        gc.older_than_days = Some(14);
        assert_eq!(describe(&gc), "collect_garbage older_than_days=14");
    }
}
