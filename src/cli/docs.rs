//! `macha generate-docs DIR`: shell completions and man pages written from
//! the command-line definition itself, so they cannot drift from it. The
//! package build runs it once (`nix/package.nix`); it is hidden from `--help`
//! because nobody needs it at a prompt.
//!
//! `macha-check`, `macha-approve` and `macha-logs` are the same program under
//! another name (`main.rs`): each gets completions of its own, made from its
//! subcommand, since a shell completes by the name typed.

use std::path::Path;
use std::process::ExitCode;

use super::output::outln;
use anyhow::Context as _;
use clap::Command;
use clap_complete::Shell;

/// The `macha-NAME` programs, as installed next to `macha`.
pub const ALIASES: [&str; 3] = ["check", "approve", "logs"];

const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes `DIR/completions/{bash,zsh,fish}/` and `DIR/man/` (section 1).
pub fn run(cli: Command, dir: &Path) -> anyhow::Result<ExitCode> {
    for shell in SHELLS {
        let out = dir.join("completions").join(shell.to_string());
        std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
        clap_complete::generate_to(shell, &mut cli.clone(), "macha", &out)
            .with_context(|| format!("writing {shell} completions for macha into {}", out.display()))?;
        for alias in ALIASES {
            let name = format!("macha-{alias}");
            let mut own = standalone(&cli, alias)?;
            clap_complete::generate_to(shell, &mut own, &name, &out)
                .with_context(|| format!("writing {shell} completions for {name} into {}", out.display()))?;
        }
    }
    let man = dir.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("cannot create {}", man.display()))?;
    // One page per visible command: macha.1, macha-check.1 (which is also
    // the page of the macha-check program), macha-approve-list.1, ...
    clap_mangen::generate_to(cli, &man).with_context(|| format!("writing man pages into {}", man.display()))?;
    outln!("completions in {}, man pages in {}", dir.join("completions").display(), man.display())?;
    Ok(ExitCode::SUCCESS)
}

/// The subcommand `alias` as a program of its own, `macha-ALIAS`, with the
/// options every command takes (`--config`). `cli` must not be built yet:
/// building fixes each subcommand's `macha ALIAS ...` path, which a renamed
/// copy would no longer match.
fn standalone(cli: &Command, alias: &str) -> anyhow::Result<Command> {
    let sub = cli
        .find_subcommand(alias)
        .with_context(|| format!("the command line has no subcommand {alias:?} for the program macha-{alias}"))?;
    let name = format!("macha-{alias}");
    let globals = cli.get_arguments().filter(|a| a.is_global_set()).cloned();
    let mut own = sub.clone().name(name.clone()).bin_name(name.clone()).display_name(name).args(globals);
    if let Some(version) = cli.get_version() {
        own = own.version(version.to_owned());
    }
    Ok(own)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    /// A small command line of the same shape as macha's: a global option,
    /// the aliased subcommands (one with its own subcommand), a hidden one.
    #[derive(Parser)]
    #[command(name = "macha", version = "1.0")]
    struct Cli {
        #[arg(long, global = true)]
        config: Option<String>,
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Subcommand)]
    enum Sub {
        Check {
            #[arg(long)]
            json: bool,
        },
        Approve {
            #[command(subcommand)]
            command: ApproveSub,
        },
        Logs,
        #[command(hide = true)]
        Helper,
    }

    #[derive(Subcommand)]
    enum ApproveSub {
        List,
    }

    #[test]
    fn every_program_name_gets_completions_and_every_visible_command_a_page() {
        let dir = tempfile::tempdir().unwrap();
        run(Cli::command(), dir.path()).unwrap();
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        for (shell, file) in [(Shell::Bash, "macha.bash"), (Shell::Zsh, "_macha"), (Shell::Fish, "macha.fish")] {
            assert!(read(&format!("completions/{shell}/{file}")).contains("approve"), "{shell}");
        }
        let check = read("completions/bash/macha-check.bash");
        assert!(check.contains("--json") && check.contains("--config"), "{check}");
        assert!(read("completions/fish/macha-approve.fish").contains("list"));
        for page in ["macha.1", "macha-check.1", "macha-approve.1", "macha-approve-list.1", "macha-logs.1"] {
            assert!(read(&format!("man/{page}")).contains(".TH"), "{page}");
        }
        assert!(!dir.path().join("man/macha-helper.1").exists(), "hidden commands get no page");
    }
}
