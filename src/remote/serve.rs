//! `macha remote serve`: this host's side of the protocol, run by sshd as
//! the forced command of the controller's key (so as the daemon's user,
//! with its rights and no more). It answers one request line with one
//! reply line until the controller closes its side.
//!
//! Every `act` is judged by this host's own gate: its autonomy level, its
//! protected units, its bounds, whatever the controller says; an action
//! it would carry out by itself passes its own storm control too (its
//! pause, cooldowns, budgets). An action the level would not carry out by
//! itself is carried out only with the approval of a person on the
//! controller, and even then never on a unit protected here. A command sshd was asked to run, a line that
//! is too long, malformed or an unknown verb gets a typed error and is
//! recorded in this host's `remote.jsonl`; the session goes on, but for a
//! command (there is no session then) or another protocol version.

use std::io::{BufRead, Write};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::protocol::{self, Approval, ErrorKind, ProtocolError, Request, MAX_MESSAGE, VERBS, VERSION};
use crate::act;
use crate::audit::{self, ActionOutcome, ActionRecord, Origin};
use crate::carry::{self, Bookkeeping, Books};
use crate::catalog;
use crate::config::Config;
use crate::cycle::unit_facts;
use crate::decide::ProposedAction;
use crate::detect::{self, Incident};
use crate::elsewhere::{Acted, ActedOutcome};
use crate::gate::{self, Policy, UnitFacts, Verdict};
use crate::ids::Fingerprint;
use crate::ledger::Ledger;
use crate::observe::systemd::{Systemd, SystemdLink};
use crate::observe::{Observer, Scope};
use crate::state_dir::StateDir;
use crate::store::Store;
use crate::storm::{self, Admission, UnitSignals};
use crate::unit::UnitName;

/// One reply.
#[derive(Debug, Serialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        version: u32,
        host: String,
        capabilities: Vec<&'static str>,
        actions: Vec<&'static str>,
        autonomy_level: String,
    },
    Observed {
        snapshot: serde_json::Value,
        incidents: Vec<Incident>,
    },
    Probed {
        summary: String,
        text: String,
    },
    Acted(Box<Acted>),
    Approvals {
        items: Vec<serde_json::Value>,
    },
    Error(ProtocolError),
}

/// What a controller asked, and how it ended, in `remote.jsonl`: the
/// sessions opened, the actions asked for and everything refused.
#[derive(Debug, Serialize)]
pub struct RemoteRecord {
    pub time: DateTime<Utc>,
    pub host: String,
    /// The controller, as its hello named it (none before a hello).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verb: Option<String>,
    /// `session`, `acted`, `refused`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorKind>,
    pub detail: String,
}

/// The trail of what controllers asked of this host.
pub const REMOTE: &str = audit::REMOTE;

/// The longest detail recorded of a refused line, in characters.
const MAX_SHOWN: usize = 200;

/// A line as read: whole, or too long (its length so far; the rest was
/// read and dropped).
enum Line {
    Whole(Vec<u8>),
    TooLong(usize),
}

/// Reads one line of at most `max` bytes; `None` at the end of input.
fn read_line(input: &mut impl BufRead, max: usize) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut seen = 0usize;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(match (seen, seen > max) {
                (0, _) => None,
                (n, true) => Some(Line::TooLong(n)),
                _ => Some(Line::Whole(line)),
            });
        }
        let (chunk, end) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        seen = seen.saturating_add(chunk.len());
        if seen <= max {
            line.extend_from_slice(chunk);
        } else {
            line = Vec::new();
        }
        let used = end.unwrap_or(buf.len());
        input.consume(used);
        if end.is_some() {
            return Ok(Some(if seen > max { Line::TooLong(seen) } else { Line::Whole(line) }));
        }
    }
}

/// Serves one session on `input` and `output`. `command` is what sshd
/// was asked to run (`SSH_ORIGINAL_COMMAND`): anything there is refused
/// before a line is read.
pub async fn serve(
    config: &Config,
    state: &StateDir,
    mut input: impl BufRead,
    mut output: impl Write,
    command: Option<&str>,
) -> anyhow::Result<()> {
    let mut session = Session { config, state, controller: None, host: crate::observe::hostname() };
    if let Some(command) = command.filter(|c| !c.trim().is_empty()) {
        let shown: String = command.chars().take(MAX_SHOWN).collect();
        let e = ProtocolError::new(
            ErrorKind::CommandRefused,
            format!("this key runs nothing but macha's protocol; the command {shown:?} is refused"),
        );
        reply(&mut output, &session.refuse(None, e))?;
        return Ok(());
    }
    while let Some(line) = read_line(&mut input, MAX_MESSAGE)? {
        let request = match line {
            Line::TooLong(n) => Err(protocol::too_large(n)),
            Line::Whole(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Whole(bytes) => protocol::parse(&bytes),
        };
        let answer = match request {
            Err(e) => session.refuse(None, e),
            Ok(r) => session.handle(r).await,
        };
        let close = matches!(&answer, Reply::Error(e) if e.kind == ErrorKind::Version);
        reply(&mut output, &answer)?;
        if close {
            break;
        }
    }
    Ok(())
}

fn reply(output: &mut impl Write, r: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    line.push(b'\n');
    output.write_all(&line)?;
    output.flush()
}

struct Session<'a> {
    config: &'a Config,
    state: &'a StateDir,
    controller: Option<String>,
    host: String,
}

impl Session<'_> {
    fn record(&self, verb: Option<&str>, outcome: &'static str, error: Option<ErrorKind>, detail: &str) {
        let rec = RemoteRecord {
            time: Utc::now(),
            host: self.host.clone(),
            controller: self.controller.clone(),
            verb: verb.map(str::to_owned),
            outcome,
            error,
            detail: crate::redact::redact(detail).into_owned(),
        };
        if let Err(e) = audit::append(self.state, REMOTE, &rec, self.config.retention.audit()) {
            tracing::error!("the record of a controller's request could not be written: {e}");
        }
    }

    /// The typed error `e` as the reply to a `verb` request (none: a line
    /// that is no request), recorded as refused.
    fn refuse(&self, verb: Option<&str>, e: ProtocolError) -> Reply {
        self.record(verb, "refused", Some(e.kind), &e.message);
        Reply::Error(e)
    }

    fn failed(&self, verb: &str, e: impl std::fmt::Display) -> Reply {
        self.refuse(Some(verb), ProtocolError::new(ErrorKind::Failed, e.to_string()))
    }

    async fn handle(&mut self, request: Request) -> Reply {
        let verb = request.verb();
        if self.controller.is_none() && !matches!(request, Request::Hello { .. }) {
            let e = ProtocolError::new(ErrorKind::HelloFirst, format!("{verb:?} before \"hello\": say hello first"));
            return self.refuse(Some(verb), e);
        }
        match request {
            Request::Hello { version, controller } => self.hello(version, controller),
            Request::Observe {} => self.observe().await,
            Request::Probe { probe, unit, path } => {
                let action = match catalog::investigation(probe, unit.as_deref(), path.as_deref()) {
                    Ok(a) => a,
                    Err(e) => {
                        let e = ProtocolError::new(ErrorKind::Malformed, format!("not a probe to run: {e}"));
                        return self.refuse(Some(verb), e);
                    }
                };
                let systemd = Systemd::connect(self.config.dbus_address.as_deref()).await;
                let link = match &systemd {
                    Ok(s) => SystemdLink::Up(s),
                    Err(e) => SystemdLink::Down(e.to_string()),
                };
                match crate::investigate::run(&action, &link, self.config).await {
                    Ok(f) => Reply::Probed { summary: f.summary, text: f.text },
                    Err(e) => self.failed(verb, e),
                }
            }
            Request::Act { incident, proposed, approval } => self.act(incident, proposed, approval).await,
            Request::Approvals {} => match Store::open(self.state).and_then(|s| s.pending()) {
                Ok(items) => Reply::Approvals {
                    items: items
                        .into_iter()
                        .map(|a| {
                            serde_json::json!({
                                "id": a.id, "incident": a.incident, "kind": a.kind.as_str(), "target": a.target,
                                "reason": a.reason, "created_at": a.created_at, "expires_at": a.expires_at,
                            })
                        })
                        .collect(),
                },
                Err(e) => self.failed(verb, e),
            },
        }
    }

    fn hello(&mut self, version: u32, controller: String) -> Reply {
        let name: String = controller.chars().filter(|c| !c.is_control()).take(64).collect();
        if version != VERSION {
            let e = ProtocolError::new(
                ErrorKind::Version,
                format!("protocol version {version} is not served here: this host speaks version {VERSION}"),
            );
            self.record(Some("hello"), "refused", Some(e.kind), &format!("{} (controller {name:?})", e.message));
            return Reply::Error(e);
        }
        self.controller = Some(name);
        self.record(Some("hello"), "session", None, &format!("protocol version {VERSION}"));
        Reply::Hello {
            version: VERSION,
            host: self.host.clone(),
            capabilities: VERBS.to_vec(),
            actions: catalog::ALL_KINDS.iter().map(|k| k.as_str()).collect(),
            autonomy_level: self.config.autonomy_level.as_str().to_owned(),
        }
    }

    async fn observe(&mut self) -> Reply {
        let mut observer = Observer::new(self.config);
        let snap = observer.observe(None, &[], Scope::Full).await;
        let incidents = detect::detect(&snap, &[], &self.config.detect);
        match serde_json::to_value(&snap) {
            Ok(snapshot) => Reply::Observed { snapshot, incidents },
            Err(e) => self.failed("observe", e),
        }
    }

    /// Judges the proposed action with this host's gate and carries it
    /// out when that allows it; records the request and how it ended in
    /// `actions.jsonl` (origin `remote`) and `remote.jsonl`.
    async fn act(&mut self, incident: Fingerprint, proposed: ProposedAction, approval: Option<Approval>) -> Reply {
        let controller = self.controller.clone().unwrap_or_default();
        let systemd = match Systemd::connect(self.config.dbus_address.as_deref()).await {
            Ok(s) => s,
            Err(e) => return self.failed("act", e),
        };
        let facts = match proposed.unit.as_deref().map(UnitName::parse) {
            Some(Ok(name)) => unit_facts(&systemd, &name).await,
            _ => UnitFacts::Missing,
        };
        let scope = detect::unit_of(&incident);
        let policy = Policy::from_config(self.config);
        let verdict = gate::gate(self.config.autonomy_level, &proposed, &facts, scope, &policy);
        let asked = format!("asked by controller {controller}");
        let action = match (verdict, &approval) {
            (Verdict::Execute { action }, _) | (Verdict::Queue { action }, Some(_)) => action,
            (Verdict::Queue { action }, None) => {
                let detail = format!(
                    "this host's autonomy level ({}) does not carry out {action} by itself: it needs a person's approval",
                    self.config.autonomy_level.as_str()
                );
                return self.refused(&incident, &proposed, Some(action), ActedOutcome::NeedsApproval, detail);
            }
            (Verdict::Refuse { reason }, _) => {
                return self.refused(
                    &incident,
                    &proposed,
                    None,
                    ActedOutcome::Refused,
                    format!("refused by this host: {reason}"),
                );
            }
            (Verdict::Inform | Verdict::Propose { .. }, _) => {
                let detail = format!("{} is not carried out on a host", proposed.kind.as_str());
                return self.refused(&incident, &proposed, None, ActedOutcome::Refused, detail);
            }
        };
        let link = SystemdLink::Up(&systemd);
        if action.kind() == catalog::ActionKind::Investigate {
            // Read-only: no budget, no cooldown, nothing to record but the request.
            let report = act::execute(&link, &action, self.config, Ok(Vec::new())).await;
            self.record(Some("act"), "acted", None, &format!("{action} for {incident}: {}", report.detail));
            return acted(&action, report);
        }
        let store = match Store::open(self.state) {
            Ok(s) => s,
            Err(e) => return self.failed("act", format!("not acted: {e}")),
        };
        let by = approval.as_ref().map(|a| format!("{} (approval {} on controller {controller})", a.by, a.id));
        let rec = ActionRecord {
            time: Utc::now(),
            host: self.host.clone(),
            incident: incident.clone(),
            action: action.kind().as_str().into(),
            target: Some(action.target()),
            origin: Origin::Remote,
            approval_id: None,
            by,
            auto_id: None,
            outcome: if approval.is_some() { ActionOutcome::Approved } else { ActionOutcome::Started },
            detail: format!("carrying out {action}, {asked}"),
            before: None,
            after: None,
            health: None,
        };
        let books = Books { config: self.config, state: self.state, store: &store };
        let report = if approval.is_some() {
            // Recorded before it is done: never an action without its record first.
            if let Err(e) = audit::append(self.state, audit::ACTIONS, &rec, self.config.retention.audit()) {
                return self.failed("act", format!("not acted: the request could not be recorded: {e}"));
            }
            let (report, kept) = carry::carry_out(&books, &link, &action, &rec, Bookkeeping::Remote).await;
            if let Err(e) = kept {
                tracing::error!("the end of {action}, {asked}, could not be recorded: {e}");
            }
            report
        } else {
            // Automatic here: this host's own storm control admits it, or
            // hands it to a person; its ledger counts and records it.
            let now = Utc::now();
            let history = match store.auto_history(&incident, now) {
                Ok(h) => h,
                Err(e) => return self.failed("act", format!("not acted: {e}")),
            };
            let unit_now = match action.unit() {
                Some(u) => systemd.unit_state(u).await.ok().flatten(),
                None => None,
            };
            let signals = unit_now
                .as_ref()
                .map(|u| UnitSignals { n_restarts: u.n_restarts, result: u.result.clone() })
                .unwrap_or_default();
            if let Admission::Wait(why) | Admission::Escalate(why) =
                storm::admit(&history, &signals, &self.config.act, now)
            {
                let detail = format!("not acted automatically by this host because {why}");
                return self.refused(&incident, &proposed, Some(action), ActedOutcome::NeedsApproval, detail);
            }
            let ledger = Ledger::new(&store, self.state, self.config.retention.audit());
            let id = match ledger.begin(&incident, now, &action, &rec) {
                Ok(id) => id,
                Err(why) => return self.failed("act", format!("not acted: {why}")),
            };
            carry::carry_out(&books, &link, &action, &rec, Bookkeeping::Automatic(id)).await.0
        };
        self.record(Some("act"), "acted", None, &format!("{action} for {incident}: {}", report.detail));
        acted(&action, report)
    }

    /// An `act` not carried out here, recorded with why.
    fn refused(
        &self,
        incident: &Fingerprint,
        proposed: &ProposedAction,
        action: Option<catalog::Action>,
        outcome: ActedOutcome,
        detail: String,
    ) -> Reply {
        let what = action.as_ref().map(ToString::to_string).unwrap_or_else(|| proposed.kind.as_str().to_owned());
        self.record(Some("act"), "refused", None, &format!("{what} for {incident}: {detail}"));
        Reply::Acted(Box::new(Acted {
            outcome,
            action: action.map(|a| a.to_string()),
            succeeded: false,
            detail,
            before: None,
            after: None,
        }))
    }
}

/// The reply to an `act` carried out here.
fn acted(action: &catalog::Action, report: act::Report) -> Reply {
    Reply::Acted(Box::new(Acted {
        outcome: ActedOutcome::Executed,
        action: Some(action.to_string()),
        succeeded: report.succeeded,
        detail: report.detail,
        before: report.before,
        after: report.after,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[u8], max: usize) -> Vec<Result<String, usize>> {
        let mut input = std::io::BufReader::with_capacity(8, text);
        let mut out = Vec::new();
        while let Some(line) = read_line(&mut input, max).unwrap() {
            out.push(match line {
                Line::Whole(b) => Ok(String::from_utf8(b).unwrap()),
                Line::TooLong(n) => Err(n),
            });
        }
        out
    }

    #[test]
    fn lines_are_read_whole_up_to_the_limit_and_a_longer_one_is_dropped_not_kept() {
        let text = b"short\nthis one is far too long\nok\nlast-without-newline-too-long";
        assert_eq!(
            lines(text, 10),
            [Ok("short".into()), Err(24), Ok("ok".into()), Err(29)],
            "the line after a long one is read as it is"
        );
        assert_eq!(lines(b"", 10), []);
        assert_eq!(lines(b"a\n\nb", 10), [Ok("a".into()), Ok(String::new()), Ok("b".into())]);
    }
}
