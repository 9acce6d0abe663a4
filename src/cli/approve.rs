//! `macha-approve`: the human side of the approval queue. Items are named by
//! their stable id; approving one runs the approval workflow
//! (`macha::approval`: re-checks that it still applies, carries it out) and
//! prints how it ended. `discuss` (in `discuss.rs`) asks the model about an
//! item first, and approves or rejects through the same functions
//! (`approval.rs`).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::approval::print_item;
use super::approver::may_decide;
use super::output::{outln, shown};
use macha::approval::Workflow;
use macha::config::Config;
use macha::ids::ApprovalId;
use macha::model::ModelService;
use macha::store::{ApprovalStatus, Store};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

/// Item ids start at 1.
fn id() -> clap::builder::RangedI64ValueParser<ApprovalId> {
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
        id: ApprovalId,
        #[arg(long)]
        json: bool,
    },
    /// Carry out an item now and print the outcome.
    Approve {
        #[arg(value_parser = id())]
        id: ApprovalId,
        /// The binding (or its first characters) shown by `show`: refuse if
        /// the item changed since.
        #[arg(long, value_name = "BINDING")]
        expect: Option<String>,
    },
    /// Drop an item without carrying it out.
    Reject {
        #[arg(value_parser = id())]
        id: ApprovalId,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show an item, ask the model about it, then approve or reject it from the same prompt.
    Discuss {
        #[arg(value_parser = id())]
        id: ApprovalId,
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
    let (model, channels) = match args.command {
        Cmd::Approve { .. } => (None, macha::notify::channel::configured(&config)?),
        Cmd::Discuss { .. } => (Some(ModelService::new(&config)?), macha::notify::channel::configured(&config)?),
        _ => (None, Vec::new()),
    };
    let state = super::required_state_dir(&config)?;
    if matches!(args.command, Cmd::Discuss { .. }) {
        super::ask::state_readable(&state)?;
    }
    let store = Store::open(&state)?;
    let notify = super::notifications(&config, &state, channels)?;
    let workflow = Workflow { config: &config, state: &state, store: &store };
    match args.command {
        Cmd::List { json } => list(&workflow, json),
        Cmd::Show { id, json } => show(&workflow, id, json),
        Cmd::Approve { id, expect } => {
            super::runtime()?.block_on(super::approval::approve(&workflow, id, expect.as_deref(), notify))
        }
        Cmd::Reject { id, reason } => super::approval::reject(&workflow, id, reason),
        Cmd::Discuss { id } => {
            let model = model.expect("made above for discuss");
            super::discuss::run(&workflow, id, model, notify)
        }
    }
}

fn list(workflow: &Workflow<'_>, json: bool) -> anyhow::Result<ExitCode> {
    let items = workflow.store.pending()?;
    let interrupted = workflow.interrupted()?;
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
            shown(a.incident.as_str()),
            a.kind.as_str(),
            shown(&a.target),
            shown(&a.reason)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn show(workflow: &Workflow<'_>, id: ApprovalId, json: bool) -> anyhow::Result<ExitCode> {
    let a = workflow.find(id)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&a)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_item(&a)?;
    if a.status == ApprovalStatus::Pending {
        outln!(
            "\nto carry it out: macha-approve approve {}\nto drop it:      macha-approve reject {} --reason TEXT",
            a.id,
            a.id
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
