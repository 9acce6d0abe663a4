//! `macha ask "QUESTION"`: the model answers a person's question about this
//! host and about macha's own past decisions, looking things up with
//! read-only tools (the probes, and macha's records; a model without tools
//! gets a summary of what they would read), then the command prints the
//! answer and what it looked at. While the model works, a terminal shows
//! how long and what it is doing (`progress.rs`), and an answer without
//! tool calls is printed as it is written.
//!
//! Who may ask: root, members of the approver group, and the user that owns
//! the state directory (the daemon's). The answers draw on macha's
//! decisions and on the journal, which are theirs to read, so others are
//! refused by name before anything is opened, as `macha note` does.
//! Exit status: 0 answered, 2 on an error (the message says which), 130
//! after Ctrl-C, which drops the request (the model's slot is freed).

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use super::output::{out, shown, shown_lines};
use super::progress::{watching, Display, Interrupted, INTERRUPTED_STATUS};
use macha::ask::memory::MemorySearch;
use macha::ask::records::Records;
use macha::ask::{self, Answer, AskTools, Conversation};
use macha::config::Config;
use macha::decide::prompt::Prompts;
use macha::decide::tools::HostTools;
use macha::model::{ModelError, ModelService};
use macha::observe::systemd::{Systemd, SystemdLink};
use macha::state_dir::{StateDir, StateError};

#[derive(clap::Args)]
pub struct Args {
    /// The question, for example "why did nginx fail last night?" (several words are joined).
    #[arg(required = true, num_args = 1.., value_name = "QUESTION")]
    question: Vec<String>,
}

pub fn run(config: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    macha::logging::init_cli();
    let config = Config::load(config)?;
    may_ask(&config)?;
    let question = ask::check_question(&args.question.join(" ")).map_err(|e| anyhow::anyhow!("nothing asked: {e}"))?;
    // Reads the fallback's key file, which may be root's alone.
    let model = ModelService::new(&config)?;
    let state = super::state_dir(&config).map_err(|e| match e.downcast::<StateError>() {
        Ok(e @ StateError::Io { .. }) => anyhow::anyhow!("cannot read macha's state directory {e}; {HINT}"),
        Ok(e) => e.into(),
        Err(e) => e,
    })?;
    state_readable(&state)?;
    let prompts = Prompts::load(config.ollama.prompts_dir.as_deref())?;
    super::runtime()?.block_on(async {
        let mut sigint = interrupts()?;
        let session = tokio::select! {
            session = Session::open(&config, model) => session?,
            _ = sigint.recv() => {
                eprintln!("macha: cancelled");
                return Ok(ExitCode::from(INTERRUPTED_STATUS));
            }
        };
        let tools = session.tools(&config, &state);
        let system = format!("{}\n\n{}", prompts.ask.trim_end(), ask::facts(&config, &macha::observe::hostname()));
        let mut conversation = Conversation::new(&session.model, &tools, "ask", &system);
        let display = Display::new();
        match watching(&display, &mut sigint, conversation.ask(&question, &display)).await {
            Ok(answer) => {
                let streamed = display.finish()?;
                let answer = answer.map_err(|e| anyhow::anyhow!(model_failed(&e)))?;
                out!("{}", answer_shown(&answer, &session.model, streamed))?;
                Ok(ExitCode::SUCCESS)
            }
            Err(Interrupted) => {
                display.cancelled();
                eprintln!("macha: cancelled");
                Ok(ExitCode::from(INTERRUPTED_STATUS))
            }
        }
    })
}

/// SIGINT (Ctrl-C) as a stream, from now on instead of ending the process.
pub fn interrupts() -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| anyhow::anyhow!("cannot catch Ctrl-C (SIGINT): {e}"))
}

/// Root, the approver group, or the owner of the state directory (the
/// daemon's user) may ask; anyone else is told who may.
pub fn may_ask(config: &Config) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let group = &config.act.approver_group;
    if super::approver::is_approver(group) {
        return Ok(());
    }
    let uid = super::Caller::get().uid().as_raw();
    if std::fs::metadata(&config.state_dir).is_ok_and(|m| m.uid() == uid) {
        return Ok(());
    }
    anyhow::bail!(
        "{} may not ask macha: its answers draw on macha's decisions and this host's journal, which only root, the user owning {} (the daemon's) and members of the group {group:?} (config key act.approver_group) may read",
        super::approver::current_user(),
        config.state_dir.display()
    )
}

const HINT: &str = "run it as root, as the daemon's user, or as a member of act.approver_group with read access to the state directory";

/// Fails, naming the file, when macha's records exist but cannot be read by
/// this user; absent records are fine (the tools say there are none).
pub fn state_readable(state: &StateDir) -> anyhow::Result<()> {
    state.list().map_err(|e| anyhow::anyhow!("cannot read macha's state directory {e}; {HINT}"))?;
    for name in [macha::audit::DECISIONS, macha::audit::ACTIONS, macha::audit::INCIDENTS, macha::store::DB_FILE] {
        match state.open_read(name) {
            Ok(_) => {}
            Err(e @ StateError::Io { .. }) => anyhow::bail!("cannot read {e}; {HINT}"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The model, checked, and the connection to systemd (or why there is none:
/// the unit probes then say so, the others still answer).
pub struct Session {
    pub model: ModelService,
    systemd: Result<Systemd, String>,
}

impl Session {
    /// `model` is made before the state directory is entered (it reads the
    /// fallback's key file).
    pub async fn open(config: &Config, model: ModelService) -> anyhow::Result<Self> {
        ask::model_ready(&model).await.map_err(anyhow::Error::msg)?;
        let systemd = Systemd::connect(config.dbus_address.as_deref()).await.map_err(|e| e.to_string());
        if let Err(e) = &systemd {
            eprintln!("macha: {e}; the unit probes will say so, the others still answer");
        }
        Ok(Self { model, systemd })
    }

    fn link(&self) -> SystemdLink<'_> {
        match &self.systemd {
            Ok(s) => SystemdLink::Up(s),
            Err(why) => SystemdLink::Down(why.clone()),
        }
    }

    /// The tools; incident memory's only when memory is on and opens (why
    /// not is said).
    pub fn tools<'a>(&'a self, config: &'a Config, state: &'a StateDir) -> AskTools<'a> {
        let memory = match MemorySearch::open(config, state, &self.model) {
            Some(Ok(memory)) => Some(memory),
            Some(Err(why)) => {
                eprintln!("macha: incident memory cannot be opened ({}); it is not searched", shown(&why));
                None
            }
            None => None,
        };
        AskTools { host: HostTools { systemd: self.link(), config }, remote: None, records: Records { state }, memory }
    }
}

/// A failed request, with where to look next.
pub fn model_failed(e: &ModelError) -> String {
    format!("the model could not answer: {e}; `macha status` shows the model endpoints and their state")
}

/// The answer for a terminal, then what was looked at, each call on one
/// line. The answer keeps its lines, each quoted with `> ` and every other
/// control character made visible (the text may quote log lines): no line
/// the model writes can pass for one of macha's, which never start so.
/// `streamed`: the answer was already written as it came (`progress::Quoter`,
/// which quotes the same way), and is not written again.
pub fn answer_shown(answer: &Answer, model: &ModelService, streamed: bool) -> String {
    let text = shown_lines(answer.text.trim_end());
    let mut out = String::new();
    if text.is_empty() {
        out.push_str("(the model gave an empty answer)\n");
    }
    for line in text.lines().filter(|_| !streamed) {
        let _ = writeln!(out, ">{}{line}", if line.is_empty() { "" } else { " " });
    }
    if let Some(why) = answer.cut_off {
        let _ = writeln!(out, "[the answer was {why}]");
    }
    if answer.uses.is_empty() {
        let why = if model.tool_rounds() == 0 {
            " (this model takes no tools; it answered from a summary macha read of this host and its records)"
        } else {
            ""
        };
        let _ = writeln!(out, "\nlooked at: nothing{why}");
        return out;
    }
    out.push_str("\nlooked at:\n");
    for u in &answer.uses {
        let args = arguments(&u.arguments);
        let outcome = if u.outcome == "ok" {
            String::new()
        } else {
            format!(" -> {}: {}", shown(&u.outcome), shown(&cut(&u.detail, 100)))
        };
        let _ = writeln!(out, "  {}{args}{outcome}", shown(&u.tool));
    }
    out
}

/// A call's arguments as ` key=value ...`, on one short line.
fn arguments(v: &serde_json::Value) -> String {
    let Some(map) = v.as_object() else {
        return match v {
            serde_json::Value::Null => String::new(),
            other => format!(" {}", shown(&cut(&other.to_string(), 80))),
        };
    };
    let pairs: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
        .collect();
    if pairs.is_empty() {
        return String::new();
    }
    format!(" {}", shown(&cut(&pairs.join(" "), 80)))
}

fn cut(text: &str, max: usize) -> String {
    macha::text::cut(text, max, "...")
}
