//! An item of the approval queue and the outcomes of the approval
//! workflow (`macha::approval`), as `macha-approve` and its `discuss`
//! print them: the same words and exit status from both.

use std::process::ExitCode;

use macha::approval::{Approved, Done, Rejected, Workflow};
use macha::ids::ApprovalId;
use macha::notify::Channel;
use macha::notify::Notifier;
use macha::store::Approval;

use super::output::{outln, shown};

/// Everything about one item, a field a line; the model's words, the
/// names and the outcome's text through `shown`, so that none of them can
/// clear the screen or fake another field.
pub fn print_item(a: &Approval) -> std::io::Result<()> {
    outln!("id:         {}", a.id)?;
    outln!("status:     {}", a.status)?;
    outln!("queued:     {} ({} ago)", a.created_at.to_rfc3339(), super::age(a.created_at))?;
    outln!("incident:   {}", shown(a.incident.as_str()))?;
    outln!("action:     {} {}", a.kind.as_str(), shown(&a.target))?;
    outln!("reason:     {}", shown(&a.reason))?;
    outln!("diagnosis:  {}", shown(&a.diagnosis))?;
    outln!("binding:    {}", shown(&a.binding))?;
    outln!("expires:    {}", a.expires_at.to_rfc3339())?;
    if let Some(by) = &a.decided_by {
        outln!("decided by: {} at {}", shown(by), a.decided_at.map(|t| t.to_rfc3339()).unwrap_or_default())?;
    }
    if let Some(o) = &a.outcome {
        outln!("outcome:    {}", shown(o))?;
    }
    Ok(())
}

/// Approves item `id` as the caller (who may decide is checked before),
/// prints how it ended and delivers its message at once.
pub async fn approve(
    workflow: &Workflow<'_>,
    id: ApprovalId,
    expect: Option<&str>,
    notify: (Option<Notifier>, Vec<Channel>),
) -> anyhow::Result<ExitCode> {
    let by = super::approver::current_user();
    let (notifier, channels) = notify;
    let item = workflow.find(id)?;
    let approved = match item.incident.host() {
        // An item of a remote host's incident runs there, through its executor.
        Some(name) => {
            let host = macha::remote::controller::Reach::named(workflow.config, name)
                .map_err(|why| anyhow::anyhow!("{why}; approval {id} is still pending"))?;
            workflow.approve_elsewhere(&host, id, &by, expect, notifier.as_ref()).await?
        }
        None => workflow.approve(id, &by, expect, notifier.as_ref()).await?,
    };
    match approved {
        Approved::NotWaiting { status, decided_by } => outln!(
            "approval {id} is not waiting: it is {status}{}",
            decided_by.as_ref().map(|b| format!(" (by {})", shown(b))).unwrap_or_default()
        )?,
        Approved::NotAsShown { binding, expected } => outln!(
            "approval {id} not carried out: its binding is {}, not \"{}\": it is not what you looked at (see `macha-approve show {id}`); the item is still waiting",
            binding.get(..16).unwrap_or(&binding),
            shown(&expected)
        )?,
        Approved::ChangedMeanwhile => outln!(
            "approval {id} changed just now (new evidence); nothing done: see `macha-approve show {id}` and approve it again"
        )?,
        Approved::Taken => outln!("approval {id} was just taken by another approve or reject; nothing done")?,
        Approved::Refused(refusal) => outln!("approval {id} refused: {}", shown(&refusal.to_string()))?,
        Approved::Unreachable { error } => anyhow::bail!("{error}; approval {id} is still pending"),
        Approved::Done(done) => {
            let Done { action, report, notify_error } = *done;
            let outcome = if report.succeeded { "succeeded" } else { "failed" };
            outln!("approval {id}: {}: {outcome}: {}", shown(&action.to_string()), shown(&report.detail))?;
            if let Some(e) = notify_error {
                return Err(e.into());
            }
            if notifier.is_some() {
                super::deliver_now(workflow.config, workflow.state, &channels).await;
            }
            return Ok(if report.succeeded { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
    }
    Ok(ExitCode::from(1))
}

/// Rejects item `id` as the caller (who may decide is checked before) and
/// prints how it ended.
pub fn reject(workflow: &Workflow<'_>, id: ApprovalId, reason: Option<String>) -> anyhow::Result<ExitCode> {
    let by = super::approver::current_user();
    match workflow.reject(id, &by, reason)? {
        Rejected::Done { reason } => {
            outln!("approval {id} rejected: {}", shown(&reason))?;
            Ok(ExitCode::SUCCESS)
        }
        Rejected::NotWaiting { status } => {
            outln!("approval {id} is not waiting: it is {status}")?;
            Ok(ExitCode::from(1))
        }
    }
}
