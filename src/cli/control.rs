//! `macha pause` and `macha resume`: stop and restart every automatic action
//! at once. The switch lives in the state database, so it holds across a
//! restart of the daemon; while paused, what would have run is queued for a
//! human instead.

use std::path::Path;
use std::process::ExitCode;

use super::output::{outln, shown};
use macha::config::Config;
use macha::store::Store;

pub fn pause(config: Option<&Path>, reason: Option<String>) -> anyhow::Result<ExitCode> {
    macha::logging::init_cli();
    let config = Config::load(config)?;
    let store = Store::open(&super::state_dir(&config)?)?;
    let reason = reason.unwrap_or_else(|| "paused by an operator".into());
    store.set_paused(Some(&reason))?;
    outln!(
        "automatic actions paused ({}); proposals are queued for `macha-approve` until `macha resume`",
        shown(&reason)
    )?;
    Ok(ExitCode::SUCCESS)
}

pub fn resume(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    macha::logging::init_cli();
    let config = Config::load(config)?;
    let store = Store::open(&super::required_state_dir(&config)?)?;
    match store.paused()? {
        Some(reason) => {
            store.set_paused(None)?;
            outln!("automatic actions resumed (were paused: {})", shown(&reason))?;
        }
        None => outln!("automatic actions were not paused")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `macha note "TEXT"`: an instruction for the next decision, read once as
/// the operator's words and then archived. Only those who may approve may
/// leave one.
pub fn note(config: Option<&Path>, text: &str) -> anyhow::Result<ExitCode> {
    macha::logging::init_cli();
    let config = Config::load(config)?;
    super::approver::only_approvers(&config.act.approver_group, "leave notes for macha's decisions")?;
    let state = super::state_dir(&config)?;
    let path = macha::note::leave(&state, text, &super::approver::current_user())
        .map_err(|e| anyhow::anyhow!("note not left: {e}"))?;
    outln!("note left for the next decision ({}); it is archived once read", path.display())?;
    Ok(ExitCode::SUCCESS)
}
