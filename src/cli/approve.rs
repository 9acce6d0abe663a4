//! `macha-approve`: the human side of the approval queue. Items are named by
//! their stable id; approving one re-checks that it still applies, carries it
//! out, and prints how it ended. `discuss` (in `discuss.rs`) asks the model
//! about an item first, and approves or rejects through the same functions.

use std::path::Path;
use std::process::ExitCode;

use chrono::Utc;
use clap::Subcommand;

use super::output::{outln, shown};
use macha::act;
use macha::audit::{self, ActionRecord};
use macha::config::Config;
use macha::cycle::unit_facts;
use macha::gate::{check_target, Action, Policy};
use macha::model::ModelService;
use macha::notify::gotify::Gotify;
use macha::notify::Notifier;
use macha::observe::systemd::{Systemd, SystemdLink};
use macha::state_dir::StateDir;
use macha::store::{Approval, Store};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

/// Item ids start at 1.
fn id() -> clap::builder::RangedI64ValueParser<i64> {
    clap::builder::RangedI64ValueParser::new().range(1..)
}

#[derive(Subcommand)]
enum Cmd {
    /// Items waiting for approval: id, age, incident, action, target, reason.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Everything about one item.
    Show {
        #[arg(value_parser = id())]
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Carry out an item now and print the outcome.
    Approve {
        #[arg(value_parser = id())]
        id: i64,
        /// The binding (or its first characters) shown by `show`: refuse if
        /// the item changed since.
        #[arg(long, value_name = "BINDING")]
        expect: Option<String>,
    },
    /// Drop an item without carrying it out.
    Reject {
        #[arg(value_parser = id())]
        id: i64,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show an item, ask the model about it, then approve or reject it from the same prompt.
    Discuss {
        #[arg(value_parser = id())]
        id: i64,
    },
}

pub fn run(config: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    macha::logging::init_cli();
    let config = Config::load(config)?;
    if matches!(args.command, Cmd::Approve { .. } | Cmd::Reject { .. }) {
        // Before the database is opened, so the refusal is about who, not about file modes.
        may_decide(&config.act.approver_group)?;
    }
    if matches!(args.command, Cmd::Discuss { .. }) {
        // Discussing reads the records and the journal; deciding is checked when asked for.
        super::ask::may_ask(&config)?;
    }
    // What only root may read is read before `state_dir`.
    let (model, gotify) = match args.command {
        Cmd::Approve { .. } => (None, macha::notify::gotify(&config)?),
        Cmd::Discuss { .. } => (Some(ModelService::new(&config)?), macha::notify::gotify(&config)?),
        _ => (None, None),
    };
    let state = super::required_state_dir(&config)?;
    if matches!(args.command, Cmd::Discuss { .. }) {
        super::ask::state_readable(&state)?;
    }
    let store = Store::open(&state)?;
    let notify = super::notifications(&config, &state, gotify)?;
    match args.command {
        Cmd::List { json } => list(&config, &store, json),
        Cmd::Show { id, json } => show(&store, id, json),
        Cmd::Approve { id, expect } => {
            super::runtime()?.block_on(approve(&config, &state, &store, id, expect.as_deref(), notify))
        }
        Cmd::Reject { id, reason } => reject(&config, &state, &store, id, reason),
        Cmd::Discuss { id } => {
            let model = model.expect("made above for discuss");
            super::discuss::run(&config, &state, &store, id, model, notify)
        }
    }
}

/// When a claimed item counts as interrupted: longer ago than any
/// execution can take.
fn stale_before(config: &Config) -> chrono::DateTime<Utc> {
    Utc::now().checked_sub_signed(config.act.execution_limit()).unwrap_or(chrono::DateTime::<Utc>::MIN_UTC)
}

fn list(config: &Config, store: &Store, json: bool) -> anyhow::Result<ExitCode> {
    let items = store.pending()?;
    let interrupted = store.interrupted(stale_before(config))?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&items)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    for a in &interrupted {
        outln!(
            "interrupted: item {} ({} {}) was being carried out when its approve was stopped; check the unit, then `macha-approve reject {}`",
            a.id,
            a.kind.as_str(),
            shown(&a.target),
            a.id
        )?;
    }
    if items.is_empty() {
        outln!("nothing is waiting for approval")?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{:>5}  {:>4}  {:<32}  {:<13}  {:<28}  REASON", "ID", "AGE", "INCIDENT", "ACTION", "TARGET")?;
    for a in items {
        outln!(
            "{:>5}  {:>4}  {:<32}  {:<13}  {:<28}  {}",
            a.id,
            super::age(a.created_at),
            shown(&a.incident),
            a.kind.as_str(),
            shown(&a.target),
            shown(&a.reason)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn find(store: &Store, id: i64) -> anyhow::Result<Approval> {
    store.approval(id)?.ok_or_else(|| anyhow::anyhow!("no approval item with id {id} (see `macha-approve list`)"))
}

fn show(store: &Store, id: i64, json: bool) -> anyhow::Result<ExitCode> {
    let a = find(store, id)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&a)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_item(&a)?;
    if a.status == "pending" {
        outln!(
            "\nto carry it out: macha-approve approve {}\nto drop it:      macha-approve reject {} --reason TEXT",
            a.id,
            a.id
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Everything about one item, a field a line; the model's words, the
/// names and the outcome's text through `shown`, so that none of them can
/// clear the screen or fake another field.
pub(super) fn print_item(a: &Approval) -> std::io::Result<()> {
    outln!("id:         {}", a.id)?;
    outln!("status:     {}", shown(&a.status))?;
    outln!("queued:     {} ({} ago)", a.created_at.to_rfc3339(), super::age(a.created_at))?;
    outln!("incident:   {}", shown(&a.incident))?;
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

/// Whether the user running this command is root or a member of `group`.
pub fn is_approver(group: &str) -> bool {
    let caller = super::Caller::get();
    if caller.is_root() {
        return true;
    }
    nix::unistd::Group::from_name(group).ok().flatten().is_some_and(|g| caller.in_group(g.gid))
}

/// Only root and members of the approver group may approve or reject.
pub fn may_decide(group: &str) -> anyhow::Result<()> {
    only_approvers(group, "approve or reject")
}

/// Only root and members of the approver group may do `what`; anyone else
/// is told what they may not do and who may.
pub fn only_approvers(group: &str, what: &str) -> anyhow::Result<()> {
    if !is_approver(group) {
        anyhow::bail!(
            "{} may not {what}: only root and members of the group {group:?} may (config key act.approver_group)",
            current_user()
        );
    }
    Ok(())
}

/// The Unix user running this command, recorded as the approver.
pub fn current_user() -> String {
    super::Caller::get().name().to_owned()
}

fn record(
    config: &Config,
    state: &StateDir,
    a: &Approval,
    by: &str,
    outcome: &str,
    detail: &str,
    report: Option<&act::Report>,
) -> anyhow::Result<()> {
    let rec = ActionRecord {
        time: Utc::now(),
        host: macha::observe::hostname(),
        incident: a.incident.clone(),
        action: a.kind.as_str().into(),
        target: Some(a.target.clone()),
        origin: "approval".into(),
        approval_id: Some(a.id),
        by: Some(by.into()),
        auto_id: None,
        outcome: outcome.into(),
        detail: detail.into(),
        before: report.and_then(|r| r.before.clone()),
        after: report.and_then(|r| r.after.clone()),
    };
    Ok(audit::append(state, audit::ACTIONS, &rec, config.retention.audit())?)
}

pub(super) async fn approve(
    config: &Config,
    state: &StateDir,
    store: &Store,
    id: i64,
    expect: Option<&str>,
    notify: (Option<Notifier>, Option<Gotify>),
) -> anyhow::Result<ExitCode> {
    let item = find(store, id)?;
    let by = current_user();
    if item.status != "pending" {
        outln!(
            "approval {id} is not waiting: it is {}{}",
            shown(&item.status),
            item.decided_by.as_ref().map(|b| format!(" (by {})", shown(b))).unwrap_or_default()
        )?;
        return Ok(ExitCode::from(1));
    }
    if let Some(expected) = expect {
        // A mismatch refuses this command only: the item is what it was,
        // and waits for an approval of what it is.
        if expected.len() < 8 || !item.binding.starts_with(expected) {
            outln!(
                "approval {id} not carried out: its binding is {}, not \"{}\": it is not what you looked at (see `macha-approve show {id}`); the item is still waiting",
                item.binding.get(..16).unwrap_or(&item.binding),
                shown(expected)
            )?;
            return Ok(ExitCode::from(1));
        }
    }
    // Claimed only with the binding checked above: an item brought up to
    // date meanwhile is not carried out on the strength of an older look.
    if !store.claim(id, &by, &item.binding)? {
        match store.approval(id)? {
            Some(now) if now.status == "pending" => outln!(
                "approval {id} changed just now (new evidence); nothing done: see `macha-approve show {id}` and approve it again"
            )?,
            _ => outln!("approval {id} was just taken by another approve or reject; nothing done")?,
        }
        return Ok(ExitCode::from(1));
    }
    let refuse = |reason: String| -> anyhow::Result<ExitCode> {
        store.finish(id, "refused", &reason)?;
        record(config, state, &item, &by, "refused", &reason, None)?;
        outln!("approval {id} refused: {}", shown(&reason))?;
        Ok(ExitCode::from(1))
    };
    if Utc::now() > item.expires_at {
        return refuse(format!(
            "it expired at {} (queued items expire after act.approval_ttl_hours)",
            item.expires_at.to_rfc3339()
        ));
    }
    if !item.binding_holds() {
        return refuse("its stored content no longer matches its binding: it was changed after it was queued".into());
    }
    let action = match item.action() {
        Ok(a) => a,
        Err(e) => return refuse(format!("the stored action is not valid: {e}")),
    };
    let systemd = match Systemd::connect(config.dbus_address.as_deref()).await {
        Ok(s) => s,
        Err(e) => {
            // Nothing was done: put the item back for a later attempt.
            store.release(id)?;
            anyhow::bail!("{e}; approval {id} is still pending");
        }
    };
    if let Err(reason) = recheck(config, &systemd, &item, &action).await {
        return refuse(reason);
    }
    if let Some(from) = item.undoes_generation() {
        let now = macha::observe::nixos::read(&config.nixos.profile, &config.nixos.current_system)?;
        if now.profile != Some(from) {
            return refuse(format!(
                "no longer applies: the boot default is generation {}, not {from} as when this undo was queued",
                now.profile.map(|n| n.to_string()).unwrap_or_else(|| "none".into())
            ));
        }
    } else {
        match store.incident_state(&item.incident)? {
            Some((status, key)) if status == "open" && key == item.evidence_key => {}
            Some((status, _)) if status == "resolved" => {
                return refuse(format!("no longer applies: incident {} was resolved meanwhile", item.incident));
            }
            _ => {
                return refuse(format!(
                    "incident {} changed since this was queued (new evidence); the next cycle decides again",
                    item.incident
                ));
            }
        }
    }
    // Recorded before it is done: a crash from here on leaves the intent in
    // the audit trail and the item in `executing`, never run twice.
    record(config, state, &item, &by, "approved", &format!("carrying out {action}"), None)?;
    let mut report = act::execute(&SystemdLink::Up(&systemd), &action, config).await;
    if let (Some(undo), Some(from)) = (&report.undo, report.after.as_ref().and_then(macha::cycle::profile_of)) {
        let why = format!("undo {action} (approval {id}): go back to the system that ran before it");
        let ttl = config.act.approval_ttl();
        let (undo_id, _) = store.enqueue_undo(&item.incident, from, undo, &why, ttl)?;
        report.detail = format!("{}; to undo it: `macha-approve approve {undo_id}`", report.detail);
    }
    let (status, outcome) = if report.succeeded { ("executed", "succeeded") } else { ("failed", "failed") };
    store.finish(id, status, &report.detail)?;
    record(config, state, &item, &by, outcome, &report.detail, Some(&report))?;
    outln!("approval {id}: {}: {outcome}: {}", shown(&action.to_string()), shown(&report.detail))?;
    if let (Some(notifier), Some(gotify)) = notify {
        let what = format!("{action} (approval {id} by {by})");
        let host = macha::observe::hostname();
        notifier.action_result(&host, &item.incident, &what, report.succeeded, &report.detail, Utc::now())?;
        super::deliver_now(config, state, &gotify).await;
    }
    Ok(if report.succeeded { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The gate's target checks and the action's preconditions, again, right
/// before a queued action runs.
async fn recheck(config: &Config, systemd: &Systemd, item: &Approval, action: &Action) -> Result<(), String> {
    let policy = Policy::from_config(config);
    let state = match action.unit() {
        Some(unit) => {
            let scope = macha::detect::unit_of(&item.incident);
            check_target(action.kind(), unit.as_str(), &unit_facts(systemd, unit).await, scope, &policy.protected)?;
            systemd.unit_state(unit).await.map_err(|e| e.to_string())?
        }
        None => None,
    };
    // The bounds may have been tightened since it was queued.
    macha::gate::check_bounds(action, &policy.limits)?;
    act::still_applies(action, state.as_ref(), config).map_err(|r| format!("no longer applies: {r}"))
}

pub(super) fn reject(
    config: &Config,
    state: &StateDir,
    store: &Store,
    id: i64,
    reason: Option<String>,
) -> anyhow::Result<ExitCode> {
    let item = find(store, id)?;
    let by = current_user();
    let reason = reason.unwrap_or_else(|| "rejected without a reason".into());
    if !store.reject(id, &by, &reason, stale_before(config))? {
        let now = find(store, id)?;
        outln!("approval {id} is not waiting: it is {}", shown(&now.status))?;
        return Ok(ExitCode::from(1));
    }
    record(config, state, &item, &by, "rejected", &reason, None)?;
    outln!("approval {id} rejected: {}", shown(&reason))?;
    Ok(ExitCode::SUCCESS)
}
