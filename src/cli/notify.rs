//! `macha notify`: check every configured channel (Gotify, ntfy, Matrix)
//! by sending each a test message, or send the daily digest now.

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
    /// Send a test message through every configured channel now and say how each went.
    Test,
    /// Send the daily digest now (everything since the previous one) and print it.
    Digest,
}

pub fn run(config: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    macha::logging::init_cli();
    let config = Config::load(config)?;
    let channels = macha::notify::channel::configured(&config)?;
    let state = super::state_dir(&config)?;
    let (Some(notifier), channels) = super::notifications(&config, &state, channels)? else {
        anyhow::bail!(
            "notifications are off: set gotify.url and gotify.token_file, ntfy.url and ntfy.topic, or matrix.homeserver, matrix.room_id and matrix.token_file in the configuration"
        );
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
            // Every channel at once: one that hangs holds up only its own line.
            let m = &m;
            let txn = Utc::now().timestamp_micros();
            let sent = super::runtime()?.block_on(futures_util::future::join_all(
                channels.iter().map(|c| async move { (c, c.send(m, txn).await) }),
            ));
            let mut all = true;
            for (channel, result) in sent {
                match result {
                    Ok(said) => outln!("{}: sent to {}: {}", channel.name(), shown(channel.url()), shown(&said))?,
                    Err(e) => {
                        all = false;
                        outln!("{}: not sent: {}", channel.name(), shown(&e))?;
                    }
                }
            }
            Ok(if all { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        Cmd::Digest => {
            let pending = Store::open(&state)?.pending()?.len();
            let m = notifier.send_digest(&state, &host, pending, Utc::now())?;
            outln!("{}\n\n{}", shown(&m.title), shown_lines(&m.body))?;
            super::runtime()?.block_on(super::deliver_now(&config, &state, &channels));
            Ok(ExitCode::SUCCESS)
        }
    }
}
