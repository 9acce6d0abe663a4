//! `macha remote serve`: this host's side of the remote protocol on stdin
//! and stdout, for sshd to run as the forced command of a controller's
//! key (`macha::remote`). What sshd was asked to run arrives in
//! `SSH_ORIGINAL_COMMAND` and is refused.

use std::path::Path;
use std::process::ExitCode;

use super::output::{outln, shown};
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
    /// Look at every host of `[[remote.hosts]]` now: reachable or why not, its level and its incidents.
    Hosts {
        /// Print the hosts as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Verb::Serve => serve(config),
        Verb::Hosts { json } => hosts(config, json),
    }
}

/// Exit 0 when every host answered with no incident, 1 otherwise.
fn hosts(config: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    macha::logging::init_cli();
    let config = Config::load(config)?;
    if config.remote.hosts.is_empty() {
        eprintln!("no hosts: add [[remote.hosts]] to the configuration");
        return Ok(ExitCode::from(1));
    }
    let views = super::runtime()?.block_on(macha::remote::fleet::observe_all(&config));
    if json {
        outln!("{}", serde_json::to_string_pretty(&views)?)?;
    } else {
        for v in &views {
            let state = match (&v.autonomy_level, v.reachable) {
                (Some(level), true) => format!("{level}, answered in {} ms", v.elapsed_ms),
                _ => "UNREACHABLE".to_owned(),
            };
            outln!("{} ({}): {state}", shown(&v.name), shown(&v.address))?;
            for i in &v.incidents {
                outln!("  {}: {}", shown(&i.fingerprint), shown(&i.summary))?;
            }
        }
    }
    let healthy = views.iter().all(|v| v.reachable && v.incidents.is_empty());
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn serve(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let state = super::state_dir(&config)?;
    macha::logging::init_orchestrator(&state, "error", config.retention.log())?;
    let command = std::env::var("SSH_ORIGINAL_COMMAND").ok();
    let stdin = std::io::stdin().lock();
    let stdout = super::output::Stream;
    super::runtime()?.block_on(macha::remote::serve::serve(&config, &state, stdin, stdout, command.as_deref()))?;
    Ok(if command.is_some_and(|c| !c.trim().is_empty()) { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
