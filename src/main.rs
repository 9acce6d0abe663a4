//! The `macha` binary. Invoked as `macha-check`, `macha-approve`,
//! `macha-logs` or `macha-daemon` (symlinks to this file), it behaves as that
//! subcommand.

mod cli;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "macha",
    version,
    about = "Keeps a NixOS host healthy: watches systemd and the journal, asks a local model, acts through a gated catalog"
)]
struct Cli {
    /// Configuration file (default: /etc/macha-autonomous/config.toml when it exists, else built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a cycle every check interval until stopped.
    Daemon,
    /// Run one full cycle now and print what it found and did.
    Check(cli::check::Args),
    /// List, show, approve, reject or discuss actions waiting for a human.
    Approve(cli::approve::Args),
    /// Ask the model about this host and macha's own decisions; it looks things up with read-only tools.
    Ask(cli::ask::Args),
    /// Show the audit trail and macha's own logs.
    Logs(cli::logs::Args),
    /// Send a test message through every notification channel, or the daily digest now.
    Notify(cli::notify::Args),
    /// Whether the daemon runs, whether the model is there, and the queue in front of it.
    Status(cli::status::Args),
    /// What the model cost and how it went, per day and overall.
    Stats(cli::stats::Args),
    /// Incident memory: search it, show, forget, stats, reindex from the audit trail, export and import as JSONL.
    Kb(cli::kb::Args),
    /// Decide the evaluation fixtures with a model and print the pass rates and latencies.
    Eval(cli::eval::Args),
    /// The NixOS generations: when each was switched to, and what changed in each (units, packages, /etc, kernel).
    Generations(cli::generations::Args),
    /// Other hosts: `remote serve` is this host's side of the protocol, run by sshd for a controller's key.
    Remote(cli::remote::Args),
    /// Stop all automatic actions (they are queued for a human instead) until `macha resume`.
    Pause {
        /// Why (shown in every queued item and notification).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let automatic actions run again.
    Resume,
    /// Leave an instruction that the next decision reads as the operator's, then archives.
    Note {
        /// The instruction, for example "postgresql is being migrated until 14:00; do not restart it".
        text: String,
    },
    /// Run one root helper (gc, vacuum-journal, rebuild, rollback) on the
    /// request the daemon wrote. Run by the macha-action-NAME.service units.
    #[command(hide = true)]
    Helper {
        /// gc, vacuum-journal, rebuild or rollback.
        name: String,
    },
    /// Write shell completions and man pages into DIR (run by the package build).
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
}

/// `macha-check --json` becomes `macha check --json`.
fn with_subcommand_from_argv0(mut args: Vec<OsString>) -> Vec<OsString> {
    let name = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(sub) = name.strip_prefix("macha-") {
        if cli::docs::ALIASES.contains(&sub) || sub == "daemon" {
            args.insert(1, sub.into());
        }
    }
    args
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(with_subcommand_from_argv0(std::env::args_os().collect()));
    let result = match cli.command {
        Command::Daemon => cli::daemon(cli.config.as_deref()),
        Command::Check(args) => cli::check::run(cli.config.as_deref(), args),
        Command::Approve(args) => cli::approve::run(cli.config.as_deref(), args),
        Command::Ask(args) => cli::ask::run(cli.config.as_deref(), args),
        Command::Logs(args) => cli::logs::run(cli.config.as_deref(), args),
        Command::Notify(args) => cli::notify::run(cli.config.as_deref(), args),
        Command::Status(args) => cli::status::run(cli.config.as_deref(), args),
        Command::Stats(args) => cli::stats::run(cli.config.as_deref(), args),
        Command::Kb(args) => cli::kb::run(cli.config.as_deref(), args),
        Command::Eval(args) => cli::eval::run(args),
        Command::Generations(args) => cli::generations::run(cli.config.as_deref(), args),
        Command::Remote(args) => cli::remote::run(cli.config.as_deref(), args),
        Command::Pause { reason } => cli::control::pause(cli.config.as_deref(), reason),
        Command::Resume => cli::control::resume(cli.config.as_deref()),
        Command::Note { text } => cli::control::note(cli.config.as_deref(), &text),
        Command::Helper { name } => cli::helper(cli.config.as_deref(), &name),
        Command::GenerateDocs { dir } => cli::docs::run(Cli::command(), &dir),
    };
    match result {
        Err(e) => {
            // Errors quote what others wrote (a server's answer, a file's
            // text): shown like any such text, their line breaks kept.
            eprintln!("macha: error: {}", cli::output::shown_lines(&macha::errors::chain(e.as_ref())));
            ExitCode::from(2)
        }
        // The reader went away: the output was cut, say so as `| head` expects.
        Ok(_) if cli::output::closed() => ExitCode::from(cli::output::CLOSED_STATUS),
        Ok(code) => code,
    }
}
