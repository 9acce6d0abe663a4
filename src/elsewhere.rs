//! Another host the controller decides for: what the cycle and the
//! approval workflow need of it, whatever carries it there (`remote`, over
//! SSH). Its probes are offered to the model as tools, and an action for
//! one of its incidents is *asked* of it: the host judges it with its own
//! gate and answers with an [`Acted`], the one type both ends of the
//! protocol speak.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::act;
use crate::catalog::Action;
use crate::decide::tools::Toolbox;
use crate::ids::{ApprovalId, Fingerprint};

/// How an action asked of a host ended there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActedOutcome {
    /// Carried out, whether it worked or not (`succeeded` says).
    Executed,
    /// Refused by the host's own gate (a unit it protects, its bounds).
    Refused,
    /// The host's level does not carry it out by itself, or its own storm
    /// control held it, and no person approved it: a person must.
    NeedsApproval,
}

/// A host's answer to an action asked of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acted {
    pub outcome: ActedOutcome,
    /// The action as the host carried it out or judged it.
    pub action: Option<String>,
    pub succeeded: bool,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<act::Observed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<act::Observed>,
}

impl Acted {
    /// The report of it as the controller keeps it: done on `host`, the
    /// host's detail named so.
    pub fn report(&self, host: &str) -> act::Report {
        let detail = match self.outcome {
            ActedOutcome::Executed => format!("on {host}: {}", self.detail),
            ActedOutcome::Refused => format!("refused by {host}: {}", self.detail),
            ActedOutcome::NeedsApproval => format!("not carried out by {host}: {}", self.detail),
        };
        act::Report {
            succeeded: self.outcome == ActedOutcome::Executed && self.succeeded,
            before: self.before.clone(),
            after: self.after.clone(),
            ..act::Report::failed(detail)
        }
    }
}

/// A person's approval on the controller, as the host records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The item's id in the controller's queue.
    pub id: i64,
    /// Who approved it there, as the controller recorded them.
    pub by: String,
}

impl Approval {
    pub fn new(id: ApprovalId, by: &str) -> Self {
        Self { id: id.get(), by: by.to_owned() }
    }
}

/// What is asked of a host, answered later.
pub type Asking<'a> = Pin<Box<dyn Future<Output = Result<Acted, String>> + 'a>>;

/// A remote host, as the controller reaches it.
pub trait Elsewhere {
    /// Its name in the controller's configuration (`web1`): what its
    /// incidents' fingerprints and records carry.
    fn name(&self) -> &str;
    /// Its read-only probes, run there, as tools for the model.
    fn toolbox(&self) -> &dyn Toolbox;
    /// Asks it to carry out `action` for its incident `incident` (as the
    /// host names it: `Fingerprint::on_host`), for `reason`, with a person's approval
    /// on the controller when there is one. `Err`: it could not be asked
    /// (unreachable, a broken answer), so nothing is known to be done.
    fn act<'a>(
        &'a self,
        incident: &'a Fingerprint,
        action: &'a Action,
        reason: &'a str,
        approval: Option<Approval>,
    ) -> Asking<'a>;
}
