//! Chunked map-reduce: evidence still over budget after compaction is cut
//! into chunks on record boundaries, each chunk is summarised, and the
//! summaries are merged the same way, level by level, until the result fits.
//!
//! The summariser is a parameter, so this module knows nothing of the model:
//! the caller passes a function that asks it, and writes the returned
//! [`Step`]s to the audit. Termination is part of the contract: a summary
//! that is not smaller than its chunk is an error, and there are at most
//! [`MAX_LEVELS`] levels, so a model that only paraphrases cannot loop.

use std::fmt::Display;
use std::future::Future;

use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use super::tokens::estimate_tokens;

/// Levels of summaries at most: the chunk summaries, then up to three rounds
/// of merging them. Each level must shrink every chunk, and in practice a
/// level divides the text by the chunk count, so more would only mean a
/// summariser that barely shrinks.
pub const MAX_LEVELS: u32 = 4;

/// One call of the summariser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Step {
    /// 1 for the summaries of the records, 2 and up for merges of summaries.
    pub level: u32,
    /// The chunk's place in its level, from 0.
    pub chunk: usize,
    /// Estimated tokens sent (the chunk) and received (its summary).
    pub input_tokens: usize,
    pub output_tokens: usize,
}

/// Evidence that fits: the records themselves or the last level's summaries,
/// one per line, and every call that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reduced {
    pub text: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReduceError {
    #[error("record {index} alone is {tokens} tokens, over the budget of {budget}; records are never split")]
    RecordTooLarge { index: usize, tokens: usize, budget: usize },
    #[error("summarising chunk {chunk} at level {level} failed: {error}")]
    Summarise { level: u32, chunk: usize, error: String },
    #[error(
        "the summary of chunk {chunk} at level {level} is no smaller than the chunk ({input} tokens in, {output} out)"
    )]
    NoShrink { level: u32, chunk: usize, input: usize, output: usize },
    #[error("still {tokens} tokens after {levels} levels of summaries, over the budget of {budget}")]
    TooManyLevels { levels: u32, tokens: usize, budget: usize },
}

/// A reduction that failed, with the calls made before it did, so the audit
/// still shows what was spent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ReduceFailure {
    pub error: ReduceError,
    pub steps: Vec<Step>,
}

/// Reduces `records` (for example `evidence::records`) to a text of at most
/// `budget_tokens` (`tokens::estimate_tokens`), calling `summarise` on
/// chunks of at most `budget_tokens` each, at most `concurrency` at a time
/// (0 counts as 1). Records that already fit come back joined, without a
/// call. The chunks of a level are summarised in order and their summaries
/// kept in that order.
pub async fn reduce<F, Fut, E>(
    records: Vec<String>,
    budget_tokens: usize,
    concurrency: usize,
    summarise: F,
) -> Result<Reduced, ReduceFailure>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<String, E>>,
    E: Display,
{
    let mut steps = Vec::new();
    let mut records = records;
    let mut level = 0;
    loop {
        let text = records.join("\n");
        let tokens = estimate_tokens(&text);
        if tokens <= budget_tokens {
            return Ok(Reduced { text, steps });
        }
        if level == MAX_LEVELS {
            let error = ReduceError::TooManyLevels { levels: MAX_LEVELS, tokens, budget: budget_tokens };
            return Err(ReduceFailure { error, steps });
        }
        level += 1;
        let chunks = match chunks(&records, budget_tokens) {
            Ok(chunks) => chunks,
            Err(error) => return Err(ReduceFailure { error, steps }),
        };
        records = match summarise_level(level, chunks, concurrency, &summarise, &mut steps).await {
            Ok(summaries) => summaries,
            Err(error) => return Err(ReduceFailure { error, steps }),
        };
    }
}

/// `records` packed in order into chunks of at most `budget_tokens`, one
/// record per line, never splitting a record.
fn chunks(records: &[String], budget_tokens: usize) -> Result<Vec<String>, ReduceError> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut current_tokens = 0;
    for (index, record) in records.iter().enumerate() {
        let tokens = estimate_tokens(record);
        if tokens > budget_tokens {
            return Err(ReduceError::RecordTooLarge { index, tokens, budget: budget_tokens });
        }
        // The estimate of a joined text is at most the sum of its parts'
        // plus one token per line break, so this bound is safe.
        if !current.is_empty() && current_tokens + 1 + tokens > budget_tokens {
            chunks.push(std::mem::take(&mut current));
            current_tokens = 0;
        }
        if !current.is_empty() {
            current.push('\n');
            current_tokens += 1;
        }
        current.push_str(record);
        current_tokens += tokens;
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    Ok(chunks)
}

/// Summarises one level's chunks, `concurrency` at a time, in order; records
/// a step per summary. Stops at the first failure (the calls still running
/// are dropped).
async fn summarise_level<F, Fut, E>(
    level: u32,
    chunks: Vec<String>,
    concurrency: usize,
    summarise: &F,
    steps: &mut Vec<Step>,
) -> Result<Vec<String>, ReduceError>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<String, E>>,
    E: Display,
{
    let calls = stream::iter(chunks.into_iter().enumerate())
        .map(|(chunk, text)| {
            let input_tokens = estimate_tokens(&text);
            let call = summarise(text);
            async move { (chunk, input_tokens, call.await) }
        })
        .buffered(concurrency.max(1));
    let mut calls = std::pin::pin!(calls);
    let mut summaries = Vec::new();
    while let Some((chunk, input, answer)) = calls.next().await {
        let summary = answer.map_err(|e| ReduceError::Summarise { level, chunk, error: e.to_string() })?;
        let output = estimate_tokens(&summary);
        steps.push(Step { level, chunk, input_tokens: input, output_tokens: output });
        if output >= input {
            return Err(ReduceError::NoShrink { level, chunk, input, output });
        }
        summaries.push(summary);
    }
    Ok(summaries)
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;

    /// 200 records of about 30 tokens each (6000 in all).
    fn records() -> Vec<String> {
        (0..200)
            .map(|i| format!("record {i}: the disk reports read errors on the device at sector {}", i * 7))
            .collect()
    }

    /// Keeps the first quarter of the chunk's words: shrinks, deterministic.
    async fn quarter(chunk: String) -> Result<String, String> {
        let words: Vec<&str> = chunk.split_whitespace().collect();
        Ok(words[..words.len().div_ceil(4)].join(" "))
    }

    #[tokio::test]
    async fn records_that_fit_come_back_without_a_call() {
        let r = reduce(vec!["a".into(), "b".into()], 100, 2, |_| async { Err::<String, _>("called") }).await.unwrap();
        assert_eq!(r, Reduced { text: "a\nb".into(), steps: vec![] });
    }

    #[tokio::test]
    async fn summaries_are_merged_level_by_level_until_they_fit() {
        let r = reduce(records(), 400, 3, quarter).await.unwrap();
        assert!(estimate_tokens(&r.text) <= 400, "{}", r.text);
        let levels: Vec<u32> = r.steps.iter().map(|s| s.level).collect();
        assert!(levels.windows(2).all(|w| w[0] <= w[1]), "{levels:?}");
        assert!(*levels.last().unwrap() >= 2, "more than one level: {levels:?}");
        for s in &r.steps {
            assert!(s.input_tokens <= 400 && s.output_tokens < s.input_tokens, "{s:?}");
        }
        // Chunks of a level are numbered 0.. in order.
        for level in 1..=*levels.last().unwrap() {
            let chunks: Vec<usize> = r.steps.iter().filter(|s| s.level == level).map(|s| s.chunk).collect();
            assert_eq!(chunks, (0..chunks.len()).collect::<Vec<_>>());
        }
        assert!(r.text.starts_with("record 0:"), "the order is kept: {}", r.text);
    }

    #[tokio::test]
    async fn a_chunk_never_splits_a_record() {
        let seen = RefCell::new(Vec::new());
        let originals = records();
        let reduced = reduce(originals.clone(), 400, 1, |chunk| {
            seen.borrow_mut().push(chunk.clone());
            quarter(chunk)
        })
        .await
        .unwrap();
        let first_level = reduced.steps.iter().filter(|s| s.level == 1).count();
        let lines: Vec<String> =
            seen.borrow()[..first_level].iter().flat_map(|c| c.lines().map(str::to_owned)).collect();
        assert!(lines == originals, "the chunks of level 1 are the records, whole and in order");
    }

    #[tokio::test]
    async fn at_most_concurrency_summaries_run_at_once() {
        for concurrency in [1, 3] {
            let running = Cell::new(0);
            let most = Cell::new(0);
            reduce(records(), 400, concurrency, |chunk| {
                let (running, most) = (&running, &most);
                async move {
                    running.set(running.get() + 1);
                    most.set(most.get().max(running.get()));
                    for _ in 0..3 {
                        tokio::task::yield_now().await;
                    }
                    running.set(running.get() - 1);
                    quarter(chunk).await
                }
            })
            .await
            .unwrap();
            assert_eq!(most.get(), concurrency);
        }
    }

    #[tokio::test]
    async fn a_summary_that_does_not_shrink_is_an_error() {
        let err = reduce(records(), 400, 2, |chunk| async move { Ok::<_, String>(chunk) }).await.unwrap_err();
        assert!(matches!(err.error, ReduceError::NoShrink { level: 1, chunk: 0, .. }), "{err}");
        assert_eq!(err.steps.len(), 1);
    }

    #[tokio::test]
    async fn a_summariser_that_barely_shrinks_stops_after_the_last_level() {
        let calls = Cell::new(0);
        let err = reduce(records(), 400, 2, |chunk: String| {
            calls.set(calls.get() + 1);
            async move { Ok::<_, String>(chunk[..chunk.len() * 9 / 10].to_owned()) }
        })
        .await
        .unwrap_err();
        assert!(matches!(err.error, ReduceError::TooManyLevels { levels: MAX_LEVELS, .. }), "{err}");
        assert_eq!(err.steps.len(), calls.get());
        assert_eq!(err.steps.last().unwrap().level, MAX_LEVELS);
    }

    #[tokio::test]
    async fn a_record_over_the_budget_is_refused_not_cut() {
        let err = reduce(vec!["x ".repeat(2000)], 100, 1, quarter).await.unwrap_err();
        assert!(matches!(err.error, ReduceError::RecordTooLarge { index: 0, .. }), "{err}");
        assert!(err.steps.is_empty());
    }

    #[tokio::test]
    async fn a_failing_summariser_names_the_chunk() {
        let err = reduce(records(), 400, 2, |chunk: String| async move {
            if chunk.starts_with("record 0:") {
                quarter(chunk).await
            } else {
                Err("model timed out".to_owned())
            }
        })
        .await
        .unwrap_err();
        assert_eq!(err.error, ReduceError::Summarise { level: 1, chunk: 1, error: "model timed out".into() });
        assert_eq!(err.steps.len(), 1, "the successful call is recorded");
    }
}
