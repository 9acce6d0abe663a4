//! Stage 8, notify: Gotify messages an admin keeps switched on.
//!
//! One message per state change (incident opened, resolved; action queued,
//! carried out, failed; escalation; the model down for too long, and back),
//! never twice for the same state. An incident that fails again before it
//! has stayed gone for `resolve_after` is a flap: counted, and reported with
//! its resolution, not paged again. Beyond `max_per_hour`, messages are
//! rolled into the daily digest. Messages go through an outbox in SQLite and
//! are delivered by a separate task, so a slow or absent Gotify never holds
//! up monitoring and nothing is lost across a restart.

pub mod channel;
pub use channel::Channel;
pub mod gotify;
pub mod outbox;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local, TimeZone, Utc};
use serde_json::Value;

use self::gotify::{Gotify, Token};
use self::outbox::{Outbox, OutboxError, Tracked};
use crate::audit::{self, ActionOutcome, DecisionOutcome, IncidentEvent};
use crate::config::{Config, GotifyConfig};
use crate::ids::Fingerprint;
use crate::redact::redact;
use crate::report::{ActionReport, ActionResult, CycleReport, DecisionReport, IncidentReport};
use crate::state_dir::StateDir;

/// What a message is about; fixes its priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Opened,
    Resolved,
    Queued,
    Executed,
    Failed,
    Escalation,
    ModelDown,
    ModelRecovered,
    Digest,
    Test,
}

impl Kind {
    const ALL: [Kind; 10] = [
        Kind::Opened,
        Kind::Resolved,
        Kind::Queued,
        Kind::Executed,
        Kind::Failed,
        Kind::Escalation,
        Kind::ModelDown,
        Kind::ModelRecovered,
        Kind::Digest,
        Kind::Test,
    ];

    /// Its name in the outbox.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Opened => "opened",
            Kind::Resolved => "resolved",
            Kind::Queued => "queued",
            Kind::Executed => "executed",
            Kind::Failed => "failed",
            Kind::Escalation => "escalation",
            Kind::ModelDown => "model_down",
            Kind::ModelRecovered => "model_recovered",
            Kind::Digest => "digest",
            Kind::Test => "test",
        }
    }

    /// The kind named `name`; a name no version wrote is delivered as a
    /// test message rather than dropped.
    pub fn from_name(name: &str) -> Kind {
        Self::ALL.into_iter().find(|k| k.name() == name).unwrap_or(Kind::Test)
    }

    fn priority(self, cfg: &GotifyConfig) -> u8 {
        let p = cfg.priorities;
        match self {
            Kind::Resolved | Kind::Executed | Kind::ModelRecovered | Kind::Digest | Kind::Test => p.info,
            Kind::Opened | Kind::Queued => p.attention,
            Kind::Failed | Kind::Escalation | Kind::ModelDown => p.urgent,
        }
    }
}

impl rusqlite::ToSql for Kind {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.name().into())
    }
}

/// One Gotify message: a title naming the host, a markdown body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: Kind,
    pub title: String,
    pub body: String,
    pub priority: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
}

const MODEL_FAILING_SINCE: &str = "model_failing_since";
const MODEL_LAST_ERROR: &str = "model_last_error";
const MODEL_DOWN_NOTIFIED: &str = "model_down_notified";
const LAST_DIGEST: &str = "last_digest";
const DROPPED: &str = "dropped";

/// Turns what happened into messages, with the state that keeps them to one
/// per change.
pub struct Notifier {
    cfg: GotifyConfig,
    outbox: Outbox,
    /// Each channel's name, and the wake of its delivery task.
    channels: Vec<(&'static str, Arc<tokio::sync::Notify>)>,
}

/// The Gotify client as configured: `None` when `gotify.url` is unset.
/// Reads the token file now, so a missing or unreadable one stops start-up
/// (and a command run as root reads it before it gives up root).
pub fn gotify(config: &Config) -> Result<Option<Gotify>, NotifyError> {
    let g = &config.gotify;
    let Some(url) = &g.url else { return Ok(None) };
    let path = g
        .token_file
        .as_deref()
        .ok_or_else(|| NotifyError::Setup("gotify.url is set but gotify.token_file is not".into()))?;
    let token = Token::read(path).map_err(NotifyError::Setup)?;
    Ok(Some(Gotify::new(url, token)))
}

/// Notifications through `channels` (from `channel::configured`), with
/// their outbox in the state directory: `None` when there is no channel.
pub fn setup(
    config: &Config,
    state: &StateDir,
    channels: Vec<Channel>,
) -> Result<Option<(Notifier, Vec<Channel>)>, NotifyError> {
    if channels.is_empty() {
        return Ok(None);
    }
    let notifier = Notifier {
        cfg: config.gotify.clone(),
        outbox: Outbox::open(state)?,
        channels: channels.iter().map(|c| (c.name(), Arc::new(tokio::sync::Notify::new()))).collect(),
    };
    Ok(Some((notifier, channels)))
}

fn code(text: &str) -> String {
    format!("`{}`", text.replace('`', "'"))
}

impl Notifier {
    /// Another notifier on the same outbox (a connection of its own to
    /// `state.db`) that wakes the same delivery task: for the daemon's
    /// watcher, which records incidents while the decider decides.
    pub fn another(&self, state: &StateDir) -> Result<Self, NotifyError> {
        Ok(Self { cfg: self.cfg.clone(), outbox: Outbox::open(state)?, channels: self.channels.clone() })
    }

    /// What wakes `channel`'s delivery task when a message is queued.
    pub fn wake(&self, channel: &str) -> Option<Arc<tokio::sync::Notify>> {
        self.channels.iter().find(|(name, _)| *name == channel).map(|(_, wake)| wake.clone())
    }

    /// Every message passes through `redact`: diagnoses and summaries may
    /// quote log text.
    fn message(&self, kind: Kind, host: &str, title: &str, body: String) -> Message {
        Message {
            kind,
            title: redact(&format!("{host}: {title}")).into_owned(),
            body: redact(&body).into_owned(),
            priority: kind.priority(&self.cfg),
        }
    }

    /// Queues `m` unless the hourly limit is reached, in which case it is
    /// kept for the next digest.
    pub fn emit(&self, m: Message, now: DateTime<Utc>) -> Result<(), NotifyError> {
        let sent_last_hour = self.outbox.accepted_since(now - chrono::Duration::hours(1))?;
        if m.kind != Kind::Digest && sent_last_hour >= self.cfg.max_per_hour {
            tracing::info!(title = %m.title, "notification rolled into the next digest (hourly limit)");
            self.outbox.roll(&m, now)?;
            return Ok(());
        }
        let names: Vec<&str> = self.channels.iter().map(|(name, _)| *name).collect();
        let dropped = self.outbox.enqueue(&m, now, self.cfg.max_queued, &names)?;
        if dropped > 0 {
            tracing::warn!(dropped, "outbox full: oldest undelivered notifications dropped");
        }
        for (_, wake) in &self.channels {
            wake.notify_one();
        }
        Ok(())
    }

    /// The messages for what one cycle saw and did.
    pub fn after_cycle(&self, r: &CycleReport, now: DateTime<Utc>) -> Result<(), NotifyError> {
        let host = r.host.as_str();
        self.mark_resolving(&r.resolved, now)?;
        for inc in &r.incidents {
            self.track_incident(host, inc, now)?;
            if let Some(d) = &inc.decision {
                self.decision_messages(host, inc, d, now)?;
            }
        }
        self.resolve_settled(host, now)?;
        self.check_model_outage(host, now)
    }

    /// The incidents resolved this cycle start to settle: the message that
    /// they are resolved waits until they stay gone (`resolve_settled`).
    fn mark_resolving(&self, resolved: &[Fingerprint], now: DateTime<Utc>) -> Result<(), NotifyError> {
        for fp in resolved {
            if let Some(mut t) = self.outbox.tracked(fp)? {
                t.state = "resolving".into();
                t.since = now;
                self.outbox.track(fp, &t)?;
            }
        }
        Ok(())
    }

    /// Tracks an incident seen this cycle: a new one is announced, one that
    /// was settling counts a flap.
    fn track_incident(&self, host: &str, inc: &IncidentReport, now: DateTime<Utc>) -> Result<(), NotifyError> {
        let fp = &inc.fingerprint;
        match self.outbox.tracked(fp)? {
            Some(mut t) if t.state == "resolving" => {
                // Back before it stayed gone: a flap, not a new incident.
                t.state = "open".into();
                t.flaps += 1;
                self.outbox.track(fp, &t)?;
            }
            Some(_) => {}
            None => {
                let t = Tracked { state: "open".into(), since: now, flaps: 0, summary: inc.summary.clone() };
                self.outbox.track(fp, &t)?;
                let body = format!(
                    "**Incident opened:** {}\n\n{}\n\n`macha-logs decisions` shows what was decided.",
                    code(fp.as_str()),
                    inc.summary
                );
                self.emit(self.message(Kind::Opened, host, &inc.summary, body), now)?;
            }
        }
        Ok(())
    }

    /// The messages for one decision: the model's outage or return, then
    /// one per action a person should hear of.
    fn decision_messages(
        &self,
        host: &str,
        inc: &IncidentReport,
        d: &DecisionReport,
        now: DateTime<Utc>,
    ) -> Result<(), NotifyError> {
        if d.outcome == DecisionOutcome::Failed {
            return self.model_failed(host, d.error.as_deref().unwrap_or("unknown error"), now);
        }
        self.model_answered(host, now)?;
        let diagnosis = d.diagnosis.as_deref().unwrap_or("");
        for a in &d.actions {
            self.action_message(host, inc, diagnosis, a, now)?;
        }
        Ok(())
    }

    /// The message for one action of a decision, when a person should hear
    /// of it.
    fn action_message(
        &self,
        host: &str,
        inc: &IncidentReport,
        diagnosis: &str,
        a: &ActionReport,
        now: DateTime<Utc>,
    ) -> Result<(), NotifyError> {
        let fp = &inc.fingerprint;
        let target = a.target.as_deref().unwrap_or("");
        let what = format!("{} {target}", a.action).trim_end().to_owned();
        match a.result {
            ActionResult::Queued => {
                let id = a.approval_id.map(|id| id.to_string()).unwrap_or_else(|| "0".into());
                let body = format!(
                    "**Approval needed** for {} on incident {}\n\n**Diagnosis:** {diagnosis}\n\n**Why:** {}\n\nTo carry it out: `macha-approve approve {id}`\n\nTo drop it: `macha-approve reject {id} --reason \"...\"`",
                    code(&what),
                    code(fp.as_str()),
                    a.reason
                );
                self.emit(self.message(Kind::Queued, host, &format!("approval needed: {what}"), body), now)?;
            }
            ActionResult::Escalated => {
                let body = format!(
                    "**A human is needed** for {} on incident {}\n\n{}\n\n**Diagnosis:** {diagnosis}",
                    code(&what),
                    code(fp.as_str()),
                    a.detail
                );
                self.emit(self.message(Kind::Escalation, host, &format!("needs a human: {what}"), body), now)?;
            }
            ActionResult::Proposed => {
                let body = format!(
                    "**Configuration change proposed** for incident {}\n\n**Why:** {}\n\n{}\n\n**Diagnosis:** {diagnosis}",
                    code(fp.as_str()),
                    a.reason,
                    a.detail
                );
                self.emit(self.message(Kind::Queued, host, "configuration change proposed", body), now)?;
            }
            ActionResult::Executed => self.action_result(host, fp, &what, true, &a.detail, now)?,
            ActionResult::Failed => self.action_result(host, fp, &what, false, &a.detail, now)?,
            ActionResult::Informed => {
                let body = format!(
                    "**A human is needed** for incident {}\n\n{}\n\n**Diagnosis:** {diagnosis}\n\n**Why no automatic action:** {}",
                    code(fp.as_str()),
                    inc.summary,
                    a.reason
                );
                self.emit(self.message(Kind::Escalation, host, &format!("needs a human: {}", inc.summary), body), now)?;
            }
            // Nothing new for a person: the item already waits, the
            // refusal is in the records, and a deferred action is
            // decided again.
            ActionResult::AlreadyQueued | ActionResult::Refused | ActionResult::Deferred => {}
        }
        Ok(())
    }

    /// An action was carried out, by the daemon or through an approval.
    pub fn action_result(
        &self,
        host: &str,
        incident: &Fingerprint,
        what: &str,
        succeeded: bool,
        detail: &str,
        now: DateTime<Utc>,
    ) -> Result<(), NotifyError> {
        let (kind, title, head) = if succeeded {
            (Kind::Executed, format!("done: {what}"), "**Carried out**")
        } else {
            (Kind::Failed, format!("FAILED: {what}"), "**Failed**")
        };
        let body = format!("{head}: {} for incident {}\n\n{detail}", code(what), code(incident.as_str()));
        self.emit(self.message(kind, host, &title, body), now)
    }

    /// A system change (switch, test, rollback) carried out through an
    /// approval: its result, or, when its health check failed, that it was
    /// reverted, or that a human is needed because the revert failed.
    pub fn system_change(
        &self,
        host: &str,
        incident: &Fingerprint,
        what: &str,
        report: &crate::act::Report,
        now: DateTime<Utc>,
    ) -> Result<(), NotifyError> {
        let Some(revert) = &report.revert else {
            return self.action_result(host, incident, what, report.succeeded, &report.detail, now);
        };
        let (kind, title, head) = if revert.report.succeeded {
            (Kind::Failed, format!("REVERTED: {what}"), "**Reverted** after its health check failed")
        } else {
            (
                Kind::Escalation,
                format!("needs a human: {what} broke the host, and its revert failed"),
                "**A human is needed**: the health check failed and the revert failed; it is not tried again",
            )
        };
        let body = format!("{head}: {} for incident {}\n\n{}", code(what), code(incident.as_str()), report.detail);
        self.emit(self.message(kind, host, &title, body), now)
    }

    fn resolve_settled(&self, host: &str, now: DateTime<Utc>) -> Result<(), NotifyError> {
        let cutoff =
            now.checked_sub_signed(crate::config::seconds(self.cfg.resolve_after)).unwrap_or(DateTime::<Utc>::MIN_UTC);
        for (fp, t) in self.outbox.resolving_since_before(cutoff)? {
            let flaps = if t.flaps > 0 {
                format!(
                    "\n\nIt failed again {} time{} before it stayed healthy (flapping).",
                    t.flaps,
                    if t.flaps == 1 { "" } else { "s" }
                )
            } else {
                String::new()
            };
            let body = format!("**Resolved:** {}\n\nWas: {}{flaps}", code(fp.as_str()), t.summary);
            let title =
                if t.flaps > 0 { format!("resolved after {} flaps: {fp}", t.flaps) } else { format!("resolved: {fp}") };
            self.emit(self.message(Kind::Resolved, host, &title, body), now)?;
            self.outbox.untrack(&fp)?;
        }
        Ok(())
    }

    fn model_failed(&self, _host: &str, error: &str, now: DateTime<Utc>) -> Result<(), NotifyError> {
        if self.outbox.get_time(MODEL_FAILING_SINCE)?.is_none() {
            self.outbox.set_time(MODEL_FAILING_SINCE, Some(now))?;
        }
        self.outbox.set(MODEL_LAST_ERROR, Some(error))?;
        Ok(())
    }

    fn model_answered(&self, host: &str, now: DateTime<Utc>) -> Result<(), NotifyError> {
        if self.outbox.get(MODEL_DOWN_NOTIFIED)?.is_some() {
            let since = self.outbox.get_time(MODEL_FAILING_SINCE)?.unwrap_or(now);
            let minutes = (now - since).num_minutes();
            let body = format!("**Recovered:** the model answers again after about {minutes} minutes; open incidents are being decided.");
            self.emit(self.message(Kind::ModelRecovered, host, "macha recovered: the model answers again", body), now)?;
        }
        self.outbox.set(MODEL_DOWN_NOTIFIED, None)?;
        self.outbox.set(MODEL_FAILING_SINCE, None)?;
        self.outbox.set(MODEL_LAST_ERROR, None)?;
        Ok(())
    }

    fn check_model_outage(&self, host: &str, now: DateTime<Utc>) -> Result<(), NotifyError> {
        let Some(since) = self.outbox.get_time(MODEL_FAILING_SINCE)? else { return Ok(()) };
        if self.outbox.get(MODEL_DOWN_NOTIFIED)?.is_some()
            || now - since < crate::config::seconds(self.cfg.model_outage_after)
        {
            return Ok(());
        }
        let error = self.outbox.get(MODEL_LAST_ERROR)?.unwrap_or_default();
        let body = format!(
            "**The model has not given a usable answer for {} minutes.** Incidents stay open and nothing is carried out until it does.\n\nLast error: {error}",
            (now - since).num_minutes()
        );
        self.emit(self.message(Kind::ModelDown, host, "the model is not answering", body), now)?;
        self.outbox.set(MODEL_DOWN_NOTIFIED, Some("1"))?;
        Ok(())
    }

    /// Whether the daily digest is due at `now`. The first call only starts
    /// the first digest's window, at `window_start` (the start of the cycle
    /// that asks, so that cycle's records count).
    pub fn digest_due(&self, window_start: DateTime<Utc>, now: DateTime<Utc>) -> Result<bool, NotifyError> {
        let Some(last) = self.outbox.get_time(LAST_DIGEST)? else {
            self.outbox.set_time(LAST_DIGEST, Some(window_start))?;
            return Ok(false);
        };
        Ok(digest_due_at(&Local, last, now, self.cfg.digest_hour))
    }

    /// Builds the digest of everything since the previous one and queues it.
    pub fn send_digest(
        &self,
        state: &StateDir,
        host: &str,
        pending: usize,
        now: DateTime<Utc>,
    ) -> Result<Message, NotifyError> {
        let since = self.outbox.get_time(LAST_DIGEST)?.unwrap_or(now - chrono::Duration::hours(24));
        let counts = DigestCounts::from_audit(state, since, now)?;
        let rolled = self.outbox.take_rolled()?;
        let dropped: u32 = self.outbox.get(DROPPED)?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let body = counts.render(since, now, pending, &rolled, dropped);
        let m = self.message(Kind::Digest, host, "daily digest", body);
        self.emit(m.clone(), now)?;
        self.outbox.set_time(LAST_DIGEST, Some(now))?;
        self.outbox.set(DROPPED, None)?;
        Ok(m)
    }
}

/// The digest is due once a day, at the first check at or after
/// `hour` (local time) on a day later than the previous digest's.
pub fn digest_due_at<Tz: TimeZone>(tz: &Tz, last: DateTime<Utc>, now: DateTime<Utc>, hour: u8) -> bool {
    let (last, now) = (last.with_timezone(tz), now.with_timezone(tz));
    now.date_naive() > last.date_naive() && now.time().format("%H").to_string().parse::<u8>().unwrap_or(0) >= hour
}

/// What happened in a digest's window, counted from the audit files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DigestCounts {
    pub opened: usize,
    pub resolved: usize,
    pub executed: usize,
    pub failed: usize,
    pub queued: usize,
    pub refused: usize,
    pub model_failures: usize,
}

impl DigestCounts {
    pub fn from_audit(state: &StateDir, since: DateTime<Utc>, until: DateTime<Utc>) -> Result<Self, NotifyError> {
        let in_window = |v: &Value| {
            v.get("time")
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t > since && t <= until)
        };
        let read = |name: &str| -> Result<Vec<Value>, NotifyError> {
            Ok(audit::read_since(state, name, since)?.into_iter().filter(in_window).collect())
        };
        let count = |records: &[Value], key: &str, value: &str| records.iter().filter(|r| r[key] == value).count();
        let actions_that = |records: &[Value], outcome: ActionOutcome| count(records, "outcome", outcome.as_str());
        // A record of repeats stands for that many failed decisions.
        let failures = |records: &[Value]| -> usize {
            records
                .iter()
                .filter(|r| r["outcome"] == DecisionOutcome::Failed.as_str())
                .map(|r| r["repeated"]["count"].as_u64().map_or(1, |n| usize::try_from(n).unwrap_or(usize::MAX)))
                .fold(0, usize::saturating_add)
        };
        let incidents = read(audit::INCIDENTS)?;
        let actions = read(audit::ACTIONS)?;
        let decisions = read(audit::DECISIONS)?;
        Ok(Self {
            opened: count(&incidents, "event", IncidentEvent::Opened.as_str()),
            resolved: count(&incidents, "event", IncidentEvent::Resolved.as_str()),
            executed: actions_that(&actions, ActionOutcome::Succeeded),
            failed: actions_that(&actions, ActionOutcome::Failed),
            queued: actions_that(&actions, ActionOutcome::Queued),
            refused: actions_that(&actions, ActionOutcome::Refused),
            model_failures: failures(&decisions),
        })
    }

    fn render(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        pending: usize,
        rolled: &[(String, String)],
        dropped: u32,
    ) -> String {
        use std::fmt::Write as _;
        let mut out = format!(
            "**Daily digest** from {} to {}\n\n| | count |\n|---|---|\n",
            since.with_timezone(&Local).format("%Y-%m-%d %H:%M"),
            until.with_timezone(&Local).format("%Y-%m-%d %H:%M")
        );
        for (label, n) in [
            ("incidents opened", self.opened),
            ("incidents resolved", self.resolved),
            ("actions carried out", self.executed),
            ("actions failed", self.failed),
            ("actions queued for approval", self.queued),
            ("actions refused", self.refused),
            ("still waiting for approval", pending),
            ("model failures", self.model_failures),
        ] {
            let _ = writeln!(out, "| {label} | {n} |");
        }
        if pending > 0 {
            let _ = write!(out, "\n`macha-approve list` shows what waits for you.\n");
        }
        if !rolled.is_empty() {
            let _ = write!(out, "\n**Held back by the hourly limit ({}):**\n\n", rolled.len());
            for (_, title) in rolled {
                let _ = writeln!(out, "- {title}");
            }
        }
        if dropped > 0 {
            let _ = write!(out, "\n{dropped} messages were dropped while Gotify was unreachable (outbox full).\n");
        }
        out
    }
}

/// The outcome of one delivery pass.
#[derive(Debug, Default)]
pub struct Delivery {
    pub sent: usize,
    pub held: usize,
    pub error: Option<String>,
}

/// Retry delays: 5 s, 10 s, 20 s ... up to `max` seconds.
fn backoff(attempts: u32, max: u64) -> chrono::Duration {
    crate::config::seconds((5u64 << attempts.saturating_sub(1).min(16)).min(max))
}

/// Sends every message due on `channel`, oldest first. On the first
/// failure the rest wait: the server is down, and hammering it helps
/// nobody. The other channels' messages are not its business.
pub async fn deliver_due(outbox: &Outbox, channel: &Channel, retry_max: u64) -> Result<Delivery, NotifyError> {
    let mut d = Delivery::default();
    let due = outbox.due(Utc::now(), channel.name())?;
    for (i, p) in due.iter().enumerate() {
        match channel.send(&p.message, p.id).await {
            Ok(_) => {
                outbox.delivered(p.id)?;
                d.sent += 1;
            }
            Err(e) => {
                let attempts = p.attempts + 1;
                outbox.failed(p.id, attempts, Utc::now() + backoff(attempts, retry_max), &e.to_string())?;
                d.held = due.len() - i;
                d.error = Some(e.to_string());
                break;
            }
        }
    }
    Ok(d)
}

/// The daemon's delivery task of one channel: delivers its due messages,
/// waits for the next one to be due or for a new one, forever.
pub async fn run_sender(outbox: Outbox, channel: Channel, retry_max: u64, wake: Arc<tokio::sync::Notify>) {
    let mut failing = false;
    let name = channel.name();
    loop {
        match deliver_due(&outbox, &channel, retry_max).await {
            Ok(d) if d.error.is_some() => {
                if !failing {
                    tracing::warn!(
                        channel = name,
                        held = d.held,
                        error = d.error.as_deref().unwrap_or(""),
                        "notifications held: delivery failed; retrying with backoff"
                    );
                }
                failing = true;
            }
            Ok(d) => {
                if failing && d.sent > 0 {
                    tracing::info!(channel = name, sent = d.sent, "reachable again; held notifications delivered");
                }
                failing = failing && d.sent == 0 && outbox.queued(name).unwrap_or(0) > 0;
            }
            Err(e) => tracing::error!(error = %e, "notification outbox unusable"),
        }
        let wait = match outbox.next_due(name) {
            Ok(Some(t)) => (t - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(Duration::from_secs(60)),
            _ => Duration::from_secs(60),
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    #[test]
    fn the_digest_is_due_once_a_day_at_the_configured_hour() {
        let tz = FixedOffset::east_opt(3600).unwrap();
        let at = |d: u32, h: u32| tz.with_ymd_and_hms(2026, 11, d, h, 5, 0).unwrap().with_timezone(&Utc);
        assert!(!digest_due_at(&tz, at(20, 9), at(20, 23), 8), "already sent today");
        assert!(!digest_due_at(&tz, at(20, 9), at(21, 7), 8), "not yet the hour");
        assert!(digest_due_at(&tz, at(20, 9), at(21, 8), 8));
        assert!(digest_due_at(&tz, at(18, 9), at(21, 15), 8), "late is still due");
    }

    #[test]
    fn a_reverted_change_is_one_failure_and_a_failed_revert_one_escalation() {
        use crate::act::{Report, Reverted};
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let n = Notifier {
            cfg: GotifyConfig::default(),
            outbox: Outbox::open(&state).unwrap(),
            channels: vec![("gotify", Arc::new(tokio::sync::Notify::new()))],
        };
        let now = Utc::now();
        let incident: Fingerprint = "unit-failed:web.service".into();
        let change = |revert_ok: bool| Report {
            detail: "health check failed".into(),
            revert: Some(Box::new(Reverted {
                action: None,
                report: Report { succeeded: revert_ok, ..Report::failed("rollback") },
            })),
            ..Report::failed("")
        };
        n.system_change("h", &incident, "nixos_rebuild switch", &change(true), now).unwrap();
        n.system_change("h", &incident, "nixos_rebuild switch", &change(false), now).unwrap();
        // No revert: the action's result as for any action.
        n.system_change("h", &incident, "nixos_rebuild switch", &Report::failed("x"), now).unwrap();
        let sent: Vec<(Kind, String)> =
            n.outbox.due(now, "gotify").unwrap().into_iter().map(|p| (p.message.kind, p.message.title)).collect();
        assert_eq!(
            sent,
            [
                (Kind::Failed, "h: REVERTED: nixos_rebuild switch".to_owned()),
                (
                    Kind::Escalation,
                    "h: needs a human: nixos_rebuild switch broke the host, and its revert failed".into()
                ),
                (Kind::Failed, "h: FAILED: nixos_rebuild switch".into()),
            ]
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1, 300).num_seconds(), 5);
        assert_eq!(backoff(2, 300).num_seconds(), 10);
        assert_eq!(backoff(4, 300).num_seconds(), 40);
        assert_eq!(backoff(30, 300).num_seconds(), 300);
        assert_eq!(backoff(3, 2).num_seconds(), 2);
        // The longest wait a configuration could ever name stays a wait.
        assert_eq!(backoff(3, u64::MAX).num_seconds(), 20);
        assert_eq!(backoff(u32::MAX, u64::MAX).num_seconds(), 5 << 16);
    }
}
