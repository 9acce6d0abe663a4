//! `macha-approve discuss ID`: a person asks the model about one queued
//! action, then approves or rejects it from the same prompt.
//!
//! Lines come from standard input, a terminal or a pipe (the prompt
//! `discuss ID> ` is printed only on a terminal). `approve` and
//! `reject [REASON]` are read here, before anything reaches the model, and
//! run exactly what `macha-approve approve ID` and `macha-approve reject ID`
//! run: the same permission check, re-check and audit. An approval is bound
//! to the item as it was shown when the discussion began (`--expect` with
//! its binding), so an item the daemon changed meanwhile is refused rather
//! than carried out unseen. `quit`, `exit` or the end of input (Ctrl-D)
//! leave the item queued. Anything else is a question; the model gets the
//! item, its incident and the decision that proposed it as data, plus the
//! read-only tools of `macha ask`, and has no tool that decides.
//!
//! As in a shell, Ctrl-C while the model answers drops that answer (its
//! request is dropped, the model's slot freed) and returns to the prompt;
//! Ctrl-C at the prompt ends the discussion, the item queued, with status
//! 130. An approval, once typed, is carried out to its recorded end.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use macha::approval::Workflow;
use macha::ask::records::Records;
use macha::ask::{self, Conversation};
use macha::decide::prompt::Prompts;
use macha::ids::ApprovalId;
use macha::model::ModelService;
use macha::notify::Channel;
use macha::notify::Notifier;
use macha::store::ApprovalStatus;

use super::approval::print_item;
use super::approver::may_decide;
use super::ask::{answer_shown, interrupts, model_failed, Session};
use super::output::{self, out, outln, shown};
use super::progress::{watching, Display, Interrupted, INTERRUPTED_STATUS};

/// What one line of input asks for.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Empty,
    Approve,
    Reject(Option<String>),
    Quit,
    Help,
    Question(String),
}

/// Only the bare word `approve` approves: a sentence that starts with it
/// ("approve it? what would happen") is a question. `reject` takes the rest
/// of the line as its reason.
fn parse_line(line: &str) -> Line {
    let line = line.trim();
    let (word, rest) = line.split_once(char::is_whitespace).map_or((line, ""), |(w, r)| (w, r.trim()));
    match (word.to_ascii_lowercase().as_str(), rest.is_empty()) {
        ("", _) => Line::Empty,
        ("approve", true) => Line::Approve,
        ("reject", true) => Line::Reject(None),
        ("reject", false) => Line::Reject(Some(rest.to_owned())),
        ("quit" | "exit", true) => Line::Quit,
        ("help" | "?", true) => Line::Help,
        _ => Line::Question(line.to_owned()),
    }
}

const HELP: &str =
    "Ask anything about this action; `approve` carries it out, `reject [REASON]` drops it, `quit` leaves it queued.";

pub fn run(
    workflow: &Workflow<'_>,
    id: ApprovalId,
    model: ModelService,
    notify: (Option<Notifier>, Vec<Channel>),
) -> anyhow::Result<ExitCode> {
    let (config, state) = (workflow.config, workflow.state);
    let item = workflow.find(id)?;
    print_item(&item)?;
    if item.status != ApprovalStatus::Pending {
        outln!("\napproval {id} is not waiting (it is {}); there is nothing to decide", item.status)?;
        return Ok(ExitCode::from(1));
    }
    let prompts = Prompts::load(config.ollama.prompts_dir.as_deref())?;
    let rt = super::runtime()?;
    let mut sigint = rt.block_on(async { interrupts() })?;
    let opened = rt.block_on(async {
        tokio::select! {
            session = Session::open(config, model) => Ok(session),
            _ = sigint.recv() => Err(Interrupted),
        }
    });
    let Ok(session) = opened else {
        eprintln!("macha-approve: cancelled");
        return Ok(ExitCode::from(INTERRUPTED_STATUS));
    };
    let session = session?;
    // An item of a remote host is discussed with that host's probes, run there.
    let remote = match item.incident.host() {
        Some(name) => Some(macha::remote::controller::Reach::named(config, name).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let mut tools = session.tools(config, state);
    tools.remote = remote.as_ref().map(|r| r as &dyn macha::decide::tools::Toolbox);
    let host = item.incident.host().map(str::to_owned).unwrap_or_else(macha::observe::hostname);
    let system = format!("{}\n\n{}", prompts.discuss.trim_end(), ask::facts(config, &host));
    let mut conversation = Conversation::new(&session.model, &tools, format!("discuss approval {id}"), &system);
    conversation.add_context(ask::discussion_context(&item, &Records { state }));

    let tty = std::io::stdin().is_terminal();
    outln!("\n{HELP}")?;
    let mut lines = input_lines();
    // A refused approve or reject leaves the item queued; the exit status says so.
    let mut refused = false;
    let mut interrupted = false;
    loop {
        if tty {
            out!("discuss {id}> ")?;
        }
        if output::closed() {
            // Nobody sees the answers any more: the item stays queued.
            break;
        }
        let next = rt.block_on(async {
            tokio::select! {
                line = lines.recv() => Ok(line),
                _ = sigint.recv() => Err(Interrupted),
            }
        });
        let line = match next {
            Ok(Some(line)) => line?,
            Ok(None) => {
                if tty {
                    outln!()?;
                }
                break;
            }
            Err(Interrupted) => {
                interrupted = true;
                outln!()?;
                break;
            }
        };
        match parse_line(&line) {
            Line::Empty => {}
            Line::Help => outln!("{HELP}")?,
            Line::Quit => break,
            Line::Approve => match may_decide(&config.act.approver_group) {
                Ok(()) => return rt.block_on(super::approval::approve(workflow, id, Some(&item.binding), notify)),
                Err(e) => {
                    eprintln!("macha-approve: {}", shown(&macha::errors::chain(e.as_ref())));
                    refused = true;
                }
            },
            Line::Reject(reason) => match may_decide(&config.act.approver_group) {
                Ok(()) => return super::approval::reject(workflow, id, reason),
                Err(e) => {
                    eprintln!("macha-approve: {}", shown(&macha::errors::chain(e.as_ref())));
                    refused = true;
                }
            },
            Line::Question(text) => match ask::check_question(&text) {
                Err(e) => eprintln!("macha-approve: not asked: {}", shown(&e.to_string())),
                Ok(question) => {
                    let display = Display::new();
                    let asked = rt.block_on(watching(&display, &mut sigint, conversation.ask(&question, &display)));
                    match asked {
                        Ok(answer) => {
                            let streamed = display.finish()?;
                            match answer {
                                Ok(answer) => out!("{}", answer_shown(&answer, &session.model, streamed))?,
                                Err(e) => eprintln!("macha-approve: {}", shown(&model_failed(&e))),
                            }
                        }
                        Err(Interrupted) => {
                            display.cancelled();
                            eprintln!("macha-approve: cancelled; the answer was dropped");
                        }
                    }
                }
            },
        }
    }
    outln!("approval {id} stays queued (`macha-approve approve {id}` or `macha-approve reject {id}` later)")?;
    Ok(if interrupted {
        ExitCode::from(INTERRUPTED_STATUS)
    } else if refused {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Standard input's lines, read by a thread of their own so that waiting
/// for the next line can be given up for Ctrl-C. The channel ends with the
/// input.
fn input_lines() -> tokio::sync::mpsc::UnboundedReceiver<std::io::Result<String>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let failed = line.is_err();
            if tx.send(line).is_err() || failed {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bare_words_decide() {
        assert_eq!(parse_line("  approve "), Line::Approve);
        assert_eq!(parse_line("APPROVE"), Line::Approve);
        assert_eq!(parse_line("reject"), Line::Reject(None));
        assert_eq!(parse_line("reject  config is broken "), Line::Reject(Some("config is broken".into())));
        assert_eq!(parse_line("quit"), Line::Quit);
        assert_eq!(parse_line(""), Line::Empty);
        for question in ["approve it? what would happen", "approve?", "should I approve", "why reject"] {
            assert_eq!(parse_line(question), Line::Question(question.into()), "{question}");
        }
    }
}
