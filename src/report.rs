//! What one cycle saw and did: the report the cycle builds, `macha-check`
//! prints (as text or JSON), the daemon logs and notify turns into messages.
//!
//! It sits below the cycle so that notify, which the cycle calls, reads it
//! without importing the cycle.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{ActionOutcome, DecisionOutcome};
use crate::config::AutonomyLevel;
use crate::ids::{ApprovalId, Fingerprint};
use crate::store::Novelty;

/// What one cycle saw and did, for `macha-check` and the daemon's log.
#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    pub started_at: DateTime<Utc>,
    pub host: String,
    pub autonomy_level: AutonomyLevel,
    /// Model endpoints that lack the model or could not be asked, with what
    /// to do; empty when every endpoint is ready.
    pub model_problems: Vec<String>,
    /// Sources that could not be read, with the reason.
    pub failed_sources: Vec<FailedSource>,
    pub incidents: Vec<IncidentReport>,
    /// Incidents seen before and gone now.
    pub resolved: Vec<Fingerprint>,
    pub wall_ms: u64,
}

impl CycleReport {
    /// Takes in a remote host's pass (`remote`), made after this one,
    /// whose incidents and resolutions carry its name: one view of the
    /// fleet. The sources it could not read stay out: they are the host's,
    /// not this one's (its `macha status` tells them).
    pub fn absorb(&mut self, remote: CycleReport) {
        self.incidents.extend(remote.incidents);
        self.resolved.extend(remote.resolved);
        self.wall_ms = self.wall_ms.saturating_add(remote.wall_ms);
        for p in remote.model_problems {
            if !self.model_problems.contains(&p) {
                self.model_problems.push(p);
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedSource {
    pub source: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IncidentReport {
    pub fingerprint: Fingerprint,
    pub summary: String,
    pub novelty: Novelty,
    /// Absent when the incident was already decided in an earlier cycle.
    pub decision: Option<DecisionReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecisionReport {
    pub outcome: DecisionOutcome,
    /// `memory` for a fix replayed from incident memory (no model asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    pub diagnosis: Option<String>,
    /// The incident's link to the last NixOS switch, in one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspect: Option<String>,
    pub error: Option<String>,
    pub actions: Vec<ActionReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionReport {
    pub action: String,
    pub target: Option<String>,
    pub result: ActionResult,
    pub detail: String,
    /// The model's reason for proposing it.
    pub reason: String,
    pub approval_id: Option<ApprovalId>,
}

/// What the cycle did with one proposed action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionResult {
    /// Carried out, and it worked.
    Executed,
    /// Carried out, and it did not work.
    Failed,
    /// Waiting for a human's approval.
    Queued,
    /// The same action already waits for approval.
    AlreadyQueued,
    /// Allowed alone, but storm control handed it to a human.
    Escalated,
    /// Allowed alone, not now (storm control, or macha stopping).
    Deferred,
    /// A configuration change written as a patch for a human.
    Proposed,
    Refused,
    /// Nothing to carry out: a human is told.
    Informed,
}

impl ActionResult {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionResult::Executed => "executed",
            ActionResult::Failed => "failed",
            ActionResult::Queued => "queued",
            ActionResult::AlreadyQueued => "already_queued",
            ActionResult::Escalated => "escalated",
            ActionResult::Deferred => "deferred",
            ActionResult::Proposed => "proposed",
            ActionResult::Refused => "refused",
            ActionResult::Informed => "informed",
        }
    }

    /// How an action that ran ended.
    pub fn of_run(succeeded: bool) -> Self {
        if succeeded {
            ActionResult::Executed
        } else {
            ActionResult::Failed
        }
    }

    /// Its outcome in `actions.jsonl`; an action only informed about has
    /// no record.
    pub fn outcome(self) -> Option<ActionOutcome> {
        Some(match self {
            ActionResult::Executed => ActionOutcome::Succeeded,
            ActionResult::Failed => ActionOutcome::Failed,
            ActionResult::Queued => ActionOutcome::Queued,
            ActionResult::AlreadyQueued => ActionOutcome::AlreadyQueued,
            ActionResult::Escalated => ActionOutcome::Escalated,
            ActionResult::Deferred => ActionOutcome::Deferred,
            ActionResult::Proposed => ActionOutcome::Proposed,
            ActionResult::Refused => ActionOutcome::Refused,
            ActionResult::Informed => return None,
        })
    }
}

impl std::fmt::Display for ActionResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl CycleReport {
    pub fn is_healthy(&self) -> bool {
        self.incidents.is_empty()
    }
}
