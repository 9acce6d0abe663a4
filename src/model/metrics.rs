//! One line per cycle in `state_dir/metrics.jsonl`: what the model cost
//! (calls, tokens, latencies), how it went (failures, fallbacks, answers
//! that did not parse) and how long the cycle took. `macha stats` sums the
//! lines per day and overall.
//!
//! Past `model.metrics_max_kb` the file is moved to `metrics.1.jsonl`
//! (replacing the one before), so the two files together hold between one
//! and two limits' worth of history.

use std::collections::BTreeMap;
use std::io::Write;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::provider::Endpoint;
use crate::state_dir::{StateDir, StateError};

pub const METRICS_FILE: &str = "metrics.jsonl";
const PREVIOUS_FILE: &str = "metrics.1.jsonl";

/// The most of each metrics file `read` takes: a file is moved aside at
/// `model.metrics_max_kb` (4 MiB by default), so this is far beyond any
/// file macha wrote.
pub const MAX_READ_BYTES: u64 = 64 * 1024 * 1024;

/// The model calls of one stretch of time (a cycle), as the service counted them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallTally {
    /// Requests made (each may have asked two endpoints).
    pub calls: u32,
    /// Requests that got no answer from any endpoint.
    pub failures: u32,
    /// Requests the fallback answered.
    pub fallbacks: u32,
    pub prompt_tokens: u64,
    pub answer_tokens: u64,
    /// Answers per endpoint.
    pub answered_by: BTreeMap<Endpoint, u32>,
    /// Wall time of each request without its queue wait, failover included.
    pub call_ms: Vec<u64>,
}

/// The metrics line of one cycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CycleMetrics {
    pub time: DateTime<Utc>,
    /// The remote host the pass was for (`remote`); absent for this host's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub wall_ms: u64,
    pub incidents: u32,
    /// Incidents decided: the model asked, or a known fix from memory.
    pub decisions: u32,
    /// Of them, known fixes proposed from incident memory, no model asked
    /// (absent from lines written before memory).
    #[serde(default)]
    pub from_memory: u32,
    pub failed_decisions: u32,
    /// Answers that did not parse or validate as a decision.
    pub parse_failures: u32,
    /// Rounds of tool calls before the decisions (none yet: decisions are single-shot).
    pub tool_rounds: u32,
    #[serde(flatten)]
    pub calls: CallTally,
}

/// Appends one line, moving a full file aside first.
pub fn append(state: &StateDir, line: &CycleMetrics, max_bytes: u64) -> std::io::Result<()> {
    let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
    text.push('\n');
    let mut file = state.append(METRICS_FILE)?;
    let len = file.metadata()?.len();
    // Moved aside before the line would take it past the limit, so neither
    // file is ever larger (unless a single line is).
    if len > 0 && len.saturating_add(text.len() as u64) > max_bytes {
        state.rename(METRICS_FILE, PREVIOUS_FILE)?;
        file = state.append(METRICS_FILE)?;
    }
    // One write of a whole line: the daemon and `macha-check` may append at once.
    file.write_all(text.as_bytes())
}

/// A metrics file that exists but cannot be read (the cause names it).
#[derive(Debug, thiserror::Error)]
#[error("cannot read the metrics: {source}")]
pub struct ReadError {
    source: StateError,
}

/// Every line of both files, oldest first, and how many lines could not be
/// read (a torn last line after a crash).
pub fn read(state: &StateDir) -> Result<(Vec<CycleMetrics>, usize), ReadError> {
    let (mut lines, mut unreadable) = (Vec::new(), 0);
    for name in [PREVIOUS_FILE, METRICS_FILE] {
        let Some(bytes) = state.read(name, MAX_READ_BYTES).map_err(|source| ReadError { source })? else { continue };
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str(line) {
                Ok(m) => lines.push(m),
                Err(_) => unreadable += 1,
            }
        }
    }
    Ok((lines, unreadable))
}

/// Sums over a set of cycles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub cycles: u64,
    pub incidents: u64,
    pub decisions: u64,
    pub from_memory: u64,
    pub failed_decisions: u64,
    pub calls: u64,
    pub call_failures: u64,
    pub fallbacks: u64,
    pub prompt_tokens: u64,
    pub answer_tokens: u64,
    pub parse_failures: u64,
    pub tool_rounds: u64,
    pub latency_p50_ms: Option<u64>,
    pub latency_p95_ms: Option<u64>,
}

/// The totals of one calendar day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayTotals {
    pub day: NaiveDate,
    #[serde(flatten)]
    pub totals: Totals,
}

/// What `macha stats` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Oldest first.
    pub days: Vec<DayTotals>,
    pub overall: Totals,
}

/// Sums `lines` per day (as `day_of` places each time) and overall.
pub fn summarise(lines: &[CycleMetrics], day_of: impl Fn(DateTime<Utc>) -> NaiveDate) -> Summary {
    let mut by_day: BTreeMap<NaiveDate, Vec<&CycleMetrics>> = BTreeMap::new();
    for line in lines {
        by_day.entry(day_of(line.time)).or_default().push(line);
    }
    let days = by_day.into_iter().map(|(day, lines)| DayTotals { day, totals: totals(&lines) }).collect();
    Summary { days, overall: totals(&lines.iter().collect::<Vec<_>>()) }
}

fn totals(lines: &[&CycleMetrics]) -> Totals {
    let mut t = Totals { cycles: lines.len() as u64, ..Totals::default() };
    let mut latencies = Vec::new();
    for m in lines {
        t.incidents += u64::from(m.incidents);
        t.decisions += u64::from(m.decisions);
        t.from_memory += u64::from(m.from_memory);
        t.failed_decisions += u64::from(m.failed_decisions);
        t.parse_failures += u64::from(m.parse_failures);
        t.tool_rounds += u64::from(m.tool_rounds);
        t.calls += u64::from(m.calls.calls);
        t.call_failures += u64::from(m.calls.failures);
        t.fallbacks += u64::from(m.calls.fallbacks);
        t.prompt_tokens += m.calls.prompt_tokens;
        t.answer_tokens += m.calls.answer_tokens;
        latencies.extend_from_slice(&m.calls.call_ms);
    }
    latencies.sort_unstable();
    t.latency_p50_ms = percentile(&latencies, 50);
    t.latency_p95_ms = percentile(&latencies, 95);
    t
}

/// The `p`th percentile (nearest rank) of sorted values; `None` when empty.
pub fn percentile(sorted: &[u64], p: u32) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (sorted.len() * p as usize).div_ceil(100).max(1);
    Some(sorted[rank.min(sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(time: &str, call_ms: Vec<u64>, fallbacks: u32) -> CycleMetrics {
        CycleMetrics {
            host: None,
            time: time.parse().unwrap(),
            wall_ms: 10,
            incidents: 1,
            decisions: 1,
            from_memory: 0,
            failed_decisions: 0,
            parse_failures: 1,
            tool_rounds: 0,
            calls: CallTally {
                calls: call_ms.len() as u32,
                fallbacks,
                prompt_tokens: 100,
                answer_tokens: 10,
                call_ms,
                ..CallTally::default()
            },
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 95), Some(95));
        assert_eq!(percentile(&[7], 95), Some(7));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn lines_are_summed_per_day_and_overall() {
        let lines = [
            line("2025-03-01T10:00:00Z", vec![100, 300], 1),
            line("2025-03-01T11:00:00Z", vec![200], 0),
            line("2025-03-02T09:00:00Z", vec![], 0),
        ];
        let s = summarise(&lines, |t| t.date_naive());
        assert_eq!(s.days.len(), 2);
        let first = &s.days[0].totals;
        assert_eq!((first.cycles, first.calls, first.fallbacks, first.prompt_tokens), (2, 3, 1, 200));
        assert_eq!((first.latency_p50_ms, first.latency_p95_ms), (Some(200), Some(300)));
        assert_eq!(s.days[1].totals.latency_p50_ms, None);
        assert_eq!((s.overall.cycles, s.overall.parse_failures, s.overall.calls), (3, 3, 3));
    }

    #[test]
    fn a_full_file_moves_aside_and_both_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        for i in 0..5 {
            append(&state, &line("2025-03-01T10:00:00Z", vec![i], 0), 300).unwrap();
        }
        assert!(dir.path().join(PREVIOUS_FILE).exists());
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(METRICS_FILE))
            .unwrap()
            .write_all(b"{\"torn")
            .unwrap();
        let (lines, unreadable) = read(&state).unwrap();
        assert_eq!(unreadable, 1);
        assert!(!lines.is_empty() && lines.len() < 5, "the oldest lines went with the replaced file");
        assert_eq!(lines.last().unwrap().calls.call_ms, [4]);
    }
}
