//! The model service: the one way macha talks to a model. Every request
//! goes through a priority queue (`queue.rs`) to the primary endpoint
//! (`[ollama]`) and, when that cannot answer, to the optional fallback
//! (`[model.fallback]`, Ollama or an OpenAI-compatible server); every try is
//! written, redacted, to the record of calls (`record.rs`), and the service
//! counts what each cycle cost (`metrics.rs`). At start-up, and each cycle
//! until it succeeds, `check` asks each endpoint whether it has the model
//! and whether the model takes tools. A person's request can be watched as
//! it goes (`watch.rs`), its answer streamed to them as it is written
//! (`stream.rs`). Texts are turned into vectors by the embedding model of
//! the primary endpoint (`embed.rs`), as batch work of the same queue.
//!
//! # Across processes
//!
//! The queue orders the requests of one process. The daemon, `macha-check`
//! and the commands a person runs are separate processes, each with its own
//! queue and no lock between them: a request from the command line goes
//! straight to the endpoint. With a single model slot that still keeps a
//! person's wait short, because the daemon never has more than
//! `model.concurrency` requests at the endpoint (one by default) and sends
//! its next only after one has ended; Ollama queues what it cannot start yet
//! (`OLLAMA_MAX_QUEUE`) and starts it when a slot (`OLLAMA_NUM_PARALLEL`)
//! frees, in arrival order as far as its scheduler keeps it (not measured
//! here: Ollama cannot be installed on these machines). So a request from
//! the command line waits behind the daemon's requests already running,
//! never behind the daemon's queue. What is not solved: a running daemon
//! request is not interrupted (it may take up to `ollama.timeout`), two
//! commands are served in arrival order whatever their priority, and a
//! fallback server schedules as it does. A shared gate, a lock file in the
//! state directory that the daemon checks before it sends autonomous or
//! batch work while a person waits, would close the first gap; it is not
//! built.

pub mod chat;
pub mod embed;
pub mod metrics;
mod ollama;
mod openai;
pub mod provider;
pub mod queue;
pub mod record;
pub mod status;
mod stream;
mod watch;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use self::chat::{ChatReply, ChatRequest, CutOff, Message, Role, Tool, ToolCall, Usage};
use self::embed::Embedder;
pub use self::embed::{EmbedError, Embeddings};
use self::metrics::CallTally;
use self::provider::{ApiKey, Attempt, Options, Provider};
pub use self::provider::{Check, Endpoint, ErrorKind, ProviderError, ProviderInfo};
pub use self::queue::{Priority, QueueStatus};
use self::record::{CallRecord, Recorder, Written};
pub use self::watch::{Progress, Watch};
use crate::config::{Api, Config};

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// The primary failed, and no fallback was asked: none is configured, or
    /// the failure was one another server would repeat (a 4xx).
    #[error("{0}")]
    Primary(ProviderError),
    #[error("{primary}; the fallback failed too: {fallback}")]
    Both { primary: ProviderError, fallback: ProviderError },
}

impl ModelError {
    /// The kind of the primary's failure, and of the fallback's when it was asked.
    pub fn kinds(&self) -> (ErrorKind, Option<ErrorKind>) {
        match self {
            Self::Primary(p) => (p.kind(), None),
            Self::Both { primary, fallback } => (primary.kind(), Some(fallback.kind())),
        }
    }
}

/// A configuration the service cannot start with.
#[derive(Debug, thiserror::Error)]
#[error("key `model.fallback.api_key_file`: {0}")]
pub struct SetupError(String);

/// One endpoint and what it said about the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointCheck {
    pub provider: ProviderInfo,
    pub check: Check,
}

/// Whether the endpoints have the model, as last checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    pub primary: EndpointCheck,
    pub fallback: Option<EndpointCheck>,
}

impl Readiness {
    /// Every configured endpoint answered the check and has the model.
    pub fn all_ready(&self) -> bool {
        self.endpoints().all(|e| matches!(e.check, Check::Ready { .. }))
    }

    /// True only when the primary's model takes tools and a fallback Ollama
    /// (when one is configured and checked) does too. An OpenAI-compatible
    /// fallback does not say; tool calling is part of that API.
    pub fn supports_tools(&self) -> bool {
        let primary = matches!(self.primary.check, Check::Ready { tools: Some(true), .. });
        let fallback_refuses =
            self.fallback.as_ref().is_some_and(|f| matches!(f.check, Check::Ready { tools: Some(false), .. }));
        primary && !fallback_refuses
    }

    /// One sentence per endpoint that is not ready, for logs and `macha-check`.
    pub fn problems(&self) -> Vec<String> {
        self.endpoints()
            .filter_map(|e| match &e.check {
                Check::Ready { .. } => None,
                Check::Unchecked => Some(format!("{} has not been checked yet", e.provider)),
                Check::MissingModel { error } => Some(error.clone()),
                Check::Failed { error } => Some(format!("cannot check the model on {}: {error}", e.provider)),
            })
            .collect()
    }

    fn endpoints(&self) -> impl Iterator<Item = &EndpointCheck> {
        std::iter::once(&self.primary).chain(self.fallback.as_ref())
    }
}

/// The service. Cheap to clone; clones share the queue, the record and the counts.
#[derive(Clone)]
pub struct ModelService {
    inner: Arc<Inner>,
}

struct Inner {
    primary: Provider,
    fallback: Option<Provider>,
    /// `ollama.embedding_model` on the primary endpoint.
    embedder: Embedder,
    /// The last failure of the embedding model that does not mend by
    /// itself within seconds (the model missing or not an embedding model,
    /// or no answer within the timeout), and when: it is not asked again
    /// for [`EMBED_BACKOFF`], so each decision does not wait on it.
    embed_down: Mutex<Option<(Instant, EmbedError)>>,
    options: Options,
    /// Tokens of `num_ctx` kept free besides `num_predict` (`model.prompt_margin`).
    prompt_margin: u32,
    /// `model.tool_rounds`.
    tool_rounds: u32,
    queue: Arc<queue::Queue>,
    recorder: Recorder,
    readiness: Mutex<Readiness>,
    tally: Mutex<CallTally>,
}

/// How long the embedding model is not asked again after a failure that
/// does not mend by itself (see [`ModelService::embed`]).
pub const EMBED_BACKOFF: std::time::Duration = std::time::Duration::from_secs(300);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ModelService {
    /// The service as configured. Reads the fallback's key file, if any.
    pub fn new(config: &Config) -> Result<Self, SetupError> {
        let o = &config.ollama;
        let primary_info =
            ProviderInfo { endpoint: Endpoint::Primary, api: Api::Ollama, url: o.url.clone(), model: o.model.clone() };
        let primary = Provider::new(primary_info, o.timeout, None);
        let fallback = match &config.model.fallback {
            None => None,
            Some(f) => {
                let key = f.api_key_file.as_deref().map(ApiKey::read).transpose().map_err(SetupError)?;
                let info = ProviderInfo {
                    endpoint: Endpoint::Fallback,
                    api: f.api,
                    url: f.url.clone(),
                    model: f.model.clone(),
                };
                Some(Provider::new(info, f.timeout, key))
            }
        };
        let unchecked = |p: &Provider| EndpointCheck { provider: p.info.clone(), check: Check::Unchecked };
        let readiness = Readiness { primary: unchecked(&primary), fallback: fallback.as_ref().map(unchecked) };
        Ok(Self {
            inner: Arc::new(Inner {
                options: Options {
                    num_ctx: o.num_ctx,
                    num_predict: o.num_predict,
                    temperature: o.temperature,
                    seed: o.seed,
                },
                prompt_margin: config.model.prompt_margin,
                tool_rounds: config.model.tool_rounds,
                queue: queue::Queue::new(config.model.concurrency as usize),
                recorder: Recorder::new(&config.state_dir, &config.model.calls, config.repeat_every()),
                readiness: Mutex::new(readiness),
                tally: Mutex::new(CallTally::default()),
                embedder: Embedder::new(&o.url, &o.embedding_model, o.timeout),
                embed_down: Mutex::new(None),
                primary,
                fallback,
            }),
        })
    }

    /// Tokens a request's messages may take: `ollama.num_ctx` less
    /// `ollama.num_predict` less `model.prompt_margin`, counted before sending.
    pub fn input_budget(&self) -> usize {
        let o = &self.inner.options;
        (o.num_ctx.saturating_sub(o.num_predict).saturating_sub(self.inner.prompt_margin)) as usize
    }

    /// The sampler's seed sent with every request (`ollama.seed`).
    pub fn seed(&self) -> Option<u64> {
        self.inner.options.seed
    }

    /// Rounds of tool calls a decision may take (`model.tool_rounds`); 0
    /// when the endpoints do not take tools.
    pub fn tool_rounds(&self) -> u32 {
        if self.supports_tools() {
            self.inner.tool_rounds
        } else {
            0
        }
    }

    /// Requests this process sends at once (`model.concurrency`).
    pub fn concurrency(&self) -> usize {
        self.inner.queue.status().slots
    }

    /// The primary endpoint.
    pub fn primary(&self) -> &ProviderInfo {
        &self.inner.primary.info
    }

    /// Asks every endpoint about its model (`POST /api/show`, or
    /// `GET /v1/models/MODEL`) and keeps the answers.
    pub async fn check(&self) -> Readiness {
        let primary = self.inner.primary.check().await;
        let fallback = match &self.inner.fallback {
            Some(f) => Some(f.check().await),
            None => None,
        };
        let mut readiness = lock(&self.inner.readiness);
        readiness.primary.check = primary;
        if let (Some(slot), Some(check)) = (readiness.fallback.as_mut(), fallback) {
            slot.check = check;
        }
        self.inner.queue.changed().notify_one();
        readiness.clone()
    }

    /// The endpoints as last checked.
    pub fn readiness(&self) -> Readiness {
        lock(&self.inner.readiness).clone()
    }

    /// Whether requests may carry `tools` (see `Readiness::supports_tools`);
    /// false until a check said so.
    pub fn supports_tools(&self) -> bool {
        lock(&self.inner.readiness).supports_tools()
    }

    /// Sends one request when the queue lets it through: to the primary,
    /// and to the fallback if the primary is down, answers 5xx or garbage,
    /// times out, or lacks the model. The slot is held for both tries and
    /// freed however the call ends, dropped callers included: dropping the
    /// future also drops the connection, which makes Ollama stop the answer.
    pub async fn chat(&self, priority: Priority, request: &ChatRequest) -> Result<ChatReply, ModelError> {
        self.request(priority, request, None).await
    }

    /// [`ModelService::chat`], telling `watch` how it goes. A request that
    /// offers no tools and asks for no `format` is answered as a stream,
    /// its text told to `watch` as it comes; the others are read whole.
    pub async fn chat_watched(
        &self,
        priority: Priority,
        request: &ChatRequest,
        watch: &dyn Watch,
    ) -> Result<ChatReply, ModelError> {
        self.request(priority, request, Some(watch)).await
    }

    async fn request(
        &self,
        priority: Priority,
        request: &ChatRequest,
        watch: Option<&dyn Watch>,
    ) -> Result<ChatReply, ModelError> {
        let tell = |event: Progress<'_>| {
            if let Some(watch) = watch {
                watch.progress(event);
            }
        };
        if watch.is_some() {
            let queue = self.inner.queue.status();
            if queue.running.len() >= queue.slots {
                tell(Progress::Queued);
            }
        }
        let permit = self.inner.queue.acquire(priority).await;
        let queue_ms = permit.waited.as_millis() as u64;
        let started = Instant::now();
        let stream = watch.is_some() && request.tools.is_none() && request.format.is_none();
        // Whether any of the answer's text was told, for the fallback to say it starts again.
        let mut told = false;
        let mut on_text = |text: &str| {
            told = true;
            tell(Progress::Text(text));
        };
        let on_text = stream.then_some(&mut on_text as &mut dyn FnMut(&str));
        tell(Progress::Sent(&self.inner.primary.info));
        let (first, written) = self.attempt(&self.inner.primary, priority, request, queue_ms, on_text).await;
        let result = match (first.result, &self.inner.fallback) {
            (Ok(answer), _) => Ok((answer, first.provider)),
            (Err(primary), Some(fallback)) if primary.fails_over() => {
                // Said when it is recorded: not again for each repeat.
                if written == Written::Recorded {
                    tracing::warn!(error = %primary, fallback = %fallback.info, "the primary model endpoint failed; asking the fallback");
                }
                if told {
                    tell(Progress::BrokeOff(&primary));
                }
                tell(Progress::Sent(&fallback.info));
                let mut on_text = |text: &str| tell(Progress::Text(text));
                let on_text = stream.then_some(&mut on_text as &mut dyn FnMut(&str));
                let (second, _) = self.attempt(fallback, priority, request, queue_ms, on_text).await;
                match second.result {
                    Ok(answer) => Ok((answer, second.provider)),
                    Err(fallback) => Err(ModelError::Both { primary, fallback }),
                }
            }
            (Err(primary), _) => Err(ModelError::Primary(primary)),
        };
        drop(permit);
        let call_ms = started.elapsed().as_millis() as u64;
        self.count(&result, call_ms);
        result.map(|(answer, provider)| ChatReply {
            message: answer.message,
            done_reason: answer.done_reason,
            ended: answer.ended,
            usage: answer.usage,
            provider,
            timing: chat::Timing { queue_ms, call_ms, server_ms: answer.server_ms },
        })
    }

    /// One try at one endpoint, written to the record of calls (or, when it
    /// failed as the one before, counted there); streamed when `on_text`
    /// takes the text as it comes.
    async fn attempt(
        &self,
        provider: &Provider,
        priority: Priority,
        request: &ChatRequest,
        queue_ms: u64,
        on_text: Option<&mut (dyn FnMut(&str) + '_)>,
    ) -> (Attempt, Written) {
        let attempt = provider.chat(request, &self.inner.options, on_text).await;
        let answer = attempt.result.as_ref().ok();
        let record = CallRecord {
            time: Utc::now(),
            purpose: &request.purpose,
            priority,
            provider: &attempt.provider,
            outcome: if answer.is_some() { "answered" } else { "failed" },
            error: attempt.result.as_ref().err().map(ToString::to_string),
            queue_ms,
            elapsed_ms: attempt.elapsed_ms,
            server_ms: answer.and_then(|a| a.server_ms),
            prompt_tokens: answer.map(|a| a.usage.prompt_tokens),
            answer_tokens: answer.map(|a| a.usage.answer_tokens),
            request: &attempt.request,
            response: attempt
                .response
                .as_deref()
                .map(|body| serde_json::from_str(body).unwrap_or_else(|_| body.into())),
        };
        let failure = attempt.result.as_ref().err().map(ProviderError::kind);
        let written = match self.inner.recorder.write(&record, failure) {
            Ok(written) => written,
            Err(e) => {
                // The record is for later; a full disk must not stop a decision.
                tracing::warn!(error = %e, "cannot write the record of a model call");
                Written::Recorded
            }
        };
        (attempt, written)
    }

    /// The vectors of `texts`, in their order, from the embedding model
    /// (`ollama.embedding_model`) of the primary endpoint only (see
    /// `embed.rs` for why never the fallback). Sent in bounded batches, each
    /// waiting in the queue as batch work, so a decision or a person's
    /// question goes before the next batch; each batch is written to the
    /// record of calls. No texts: no request, no vectors (dimension 0).
    ///
    /// After a failure that does not mend by itself (the model missing, not
    /// an embedding model, or too slow), the model is not asked again for
    /// [`EMBED_BACKOFF`]: the same error comes back at once.
    pub async fn embed(&self, texts: &[String]) -> Result<Embeddings, EmbedError> {
        if !texts.is_empty() {
            if let Some((at, e)) = lock(&self.inner.embed_down).as_ref() {
                if at.elapsed() < EMBED_BACKOFF {
                    return Err(e.clone());
                }
            }
        }
        let result = self.embed_now(texts).await;
        let mut down = lock(&self.inner.embed_down);
        match &result {
            Ok(_) => *down = None,
            Err(
                e @ (EmbedError::MissingModel { .. }
                | EmbedError::NotAnEmbeddingModel { .. }
                | EmbedError::Timeout { .. }),
            ) => *down = Some((Instant::now(), e.clone())),
            Err(_) => {}
        }
        result
    }

    async fn embed_now(&self, texts: &[String]) -> Result<Embeddings, EmbedError> {
        let embedder = &self.inner.embedder;
        let info = ProviderInfo {
            endpoint: Endpoint::Primary,
            api: Api::Ollama,
            url: embedder.url.clone(),
            model: embedder.model.clone(),
        };
        let mut vectors = Vec::new();
        for batch in embed::batches(texts) {
            let permit = self.inner.queue.acquire(Priority::Batch).await;
            let queue_ms = permit.waited.as_millis() as u64;
            let started = Instant::now();
            let exchange = embedder.embed(&batch).await;
            drop(permit);
            let ok = exchange.result.as_ref().ok();
            let record = CallRecord {
                time: Utc::now(),
                purpose: "embed",
                priority: Priority::Batch,
                provider: &info,
                outcome: if ok.is_some() { "answered" } else { "failed" },
                error: exchange.result.as_ref().err().map(ToString::to_string),
                queue_ms,
                elapsed_ms: started.elapsed().as_millis() as u64,
                server_ms: ok.and_then(|b| b.server_ms),
                prompt_tokens: ok.and_then(|b| b.prompt_tokens),
                answer_tokens: None,
                request: &exchange.request,
                response: exchange.response.clone(),
            };
            let failure = exchange.result.as_ref().err().map(EmbedError::kind);
            if let Err(e) = self.inner.recorder.write(&record, failure) {
                tracing::warn!(error = %e, "cannot write the record of a model call");
            }
            vectors.push(exchange.result?.vectors);
        }
        embed::join(&embedder.model, &embedder.url, vectors)
    }

    /// Deletes the records of calls past their age (`model.calls.max_age_days`)
    /// even when no new file is opened.
    pub fn prune_records(&self) {
        if let Err(e) = self.inner.recorder.prune_now() {
            tracing::warn!(error = %e, "cannot delete old records of model calls");
        }
    }

    /// Writes the counts of repeated failed calls that are due
    /// (`retention.repeat_every` since their last record); once a cycle.
    pub fn write_due_counts(&self) {
        if let Err(e) = self.inner.recorder.write_counts(false) {
            tracing::warn!(error = %e, "cannot write the record of repeated model calls");
        }
    }

    fn count(&self, result: &Result<(chat::Answer, ProviderInfo), ModelError>, call_ms: u64) {
        let mut t = lock(&self.inner.tally);
        t.calls += 1;
        t.call_ms.push(call_ms);
        match result {
            Ok((answer, provider)) => {
                t.prompt_tokens += answer.usage.prompt_tokens;
                t.answer_tokens += answer.usage.answer_tokens;
                *t.answered_by.entry(provider.endpoint).or_default() += 1;
                if provider.endpoint == Endpoint::Fallback {
                    t.fallbacks += 1;
                }
            }
            Err(_) => t.failures += 1,
        }
    }

    /// The counts since the last call of this (for one cycle's metrics line).
    pub fn take_tally(&self) -> CallTally {
        std::mem::take(&mut *lock(&self.inner.tally))
    }

    /// The queue now.
    pub fn queue(&self) -> QueueStatus {
        self.inner.queue.status()
    }

    /// Signalled when the queue or the readiness changes.
    pub fn changed(&self) -> &Notify {
        self.inner.queue.changed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(endpoint: Endpoint, api: Api, check: Check) -> EndpointCheck {
        EndpointCheck { provider: ProviderInfo { endpoint, api, url: "http://x".into(), model: "m".into() }, check }
    }

    fn ready(tools: Option<bool>) -> Check {
        Check::Ready { tools, context_length: None }
    }

    #[test]
    fn tools_are_offered_only_when_every_known_endpoint_takes_them() {
        let with =
            |fallback| Readiness { primary: endpoint(Endpoint::Primary, Api::Ollama, ready(Some(true))), fallback };
        assert!(with(None).supports_tools());
        assert!(with(Some(endpoint(Endpoint::Fallback, Api::Openai, ready(None)))).supports_tools());
        assert!(!with(Some(endpoint(Endpoint::Fallback, Api::Ollama, ready(Some(false))))).supports_tools());
        let unchecked =
            Readiness { primary: endpoint(Endpoint::Primary, Api::Ollama, Check::Unchecked), fallback: None };
        assert!(!unchecked.supports_tools());
        assert!(!unchecked.all_ready());
    }
}
