//! `macha notify`: check the Gotify set-up by sending a test message, or
//! send the daily digest now.

use std::path::Path;
use std::process::ExitCode;

use chrono::Utc;
use clap::Subcommand;

use super::output::{outln, shown, shown_lines};
use macha::config::Config;
use macha::notify::{Kind, Message};
use macha::store::Store;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send a test message now and print what the server answered.
    Test,
    /// Send the daily digest now (everything since the previous one) and print it.
    Digest,
}

pub fn run(config: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    macha::logging::init_cli();
    let config = Config::load(config)?;
    let gotify = macha::notify::gotify(&config)?;
    let state = super::state_dir(&config)?;
    let (Some(notifier), Some(gotify)) = super::notifications(&config, &state, gotify)? else {
        anyhow::bail!("notifications are off: set gotify.url and gotify.token_file in the configuration");
    };
    let host = macha::observe::hostname();
    match args.command {
        Cmd::Test => {
            let m = Message {
                kind: Kind::Test,
                title: format!("{host}: test message from macha"),
                body: format!("**Test.** If you read this, macha on `{host}` can reach you."),
                priority: config.gotify.priorities.info,
            };
            match super::runtime()?.block_on(gotify.send(&m)) {
                Ok(stored) => {
                    // The server's answer, as a terminal may show it.
                    outln!("sent to {}: the server stored message {}", gotify.url(), shown(&stored["id"].to_string()))?;
                    outln!("{}", shown_lines(&serde_json::to_string_pretty(&stored)?))?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    outln!("not sent: {}", shown(&e.to_string()))?;
                    Ok(ExitCode::from(2))
                }
            }
        }
        Cmd::Digest => {
            let pending = Store::open(&state)?.pending()?.len();
            let m = notifier.send_digest(&state, &host, pending, Utc::now())?;
            outln!("{}\n\n{}", shown(&m.title), shown_lines(&m.body))?;
            super::runtime()?.block_on(super::deliver_now(&config, &state, &gotify));
            Ok(ExitCode::SUCCESS)
        }
    }
}
