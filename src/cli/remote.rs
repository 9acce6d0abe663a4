//! `macha remote serve`: this host's side of the remote protocol on stdin
//! and stdout, for sshd to run as the forced command of a controller's
//! key (`macha::remote`). What sshd was asked to run arrives in
//! `SSH_ORIGINAL_COMMAND` and is refused.

use std::path::Path;
use std::process::ExitCode;

use macha::config::Config;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Verb,
}

#[derive(clap::Subcommand)]
enum Verb {
    /// Speak the remote protocol on stdin and stdout until the controller closes (run by sshd).
    Serve,
}

pub fn run(config: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    let Verb::Serve = args.command;
    let config = Config::load(config)?;
    let state = super::state_dir(&config)?;
    macha::logging::init_orchestrator(&state, "error", config.retention.log())?;
    let command = std::env::var("SSH_ORIGINAL_COMMAND").ok();
    let stdin = std::io::stdin().lock();
    let stdout = super::output::Stream;
    super::runtime()?.block_on(macha::remote::serve::serve(&config, &state, stdin, stdout, command.as_deref()))?;
    Ok(if command.is_some_and(|c| !c.trim().is_empty()) { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
