//! systemd's own signals, as they happen: the daemon's first source.
//!
//! `Events::subscribe` opens a connection of its own, asks the bus for
//! every signal systemd sends under its object tree, and calls
//! `Manager.Subscribe` (systemd sends unit signals only while a client is
//! subscribed); then it lists the units once, so that what follows can be
//! compared with something. The connection does nothing but read signals:
//! no method call waits behind a full signal queue.
//!
//! A signal is turned into a `Signal` here, typed; what it means for the
//! host (a unit entered `failed`, systemd restarted one) is `units`' to say.
//! A message that does not parse is a `SignalError`, counted and skipped by
//! the caller: one odd message never ends the stream.

use std::collections::HashMap;

use futures_util::StreamExt;
use zbus::message::Type as MessageType;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{Connection, MatchRule, MessageStream};

pub use super::systemd::Listed;
use super::systemd::{call_err, Props, SystemdError};

const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
const UNIT_PATH: &str = "/org/freedesktop/systemd1/unit/";

/// Signals the bus may hold for this connection before it makes systemd's
/// side wait (the queue never drops one: zbus applies back-pressure).
const MAX_QUEUED: usize = 16 * 1024;

/// Which of a unit's interfaces a `PropertiesChanged` is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    /// `org.freedesktop.systemd1.Unit`: the active and sub state, timestamps.
    Unit,
    /// `org.freedesktop.systemd1.Service`: `NRestarts`, `Result`, ...
    Service,
    /// Another type's interface (socket, timer, ...), or the manager's.
    Other,
}

/// One signal from systemd.
#[derive(Debug)]
pub enum Signal {
    /// Properties of `unit` changed; systemd sends every property of the
    /// interface that emits changes, with its value, each time.
    Changed { unit: String, interface: Interface, props: Props },
    /// systemd loaded `unit`.
    New { unit: String },
    /// systemd unloaded `unit`.
    Removed { unit: String },
    /// A job of `unit` ended with `result` (`done`, `failed`, `canceled`,
    /// `timeout`, `dependency`, `skipped`).
    JobRemoved { unit: String, result: String },
    /// systemd starts (`true`) or ends (`false`) reloading its units.
    Reloading(bool),
    /// A signal macha has no use for (another member or object).
    Other,
}

/// A message that is not the signal it says it is.
#[derive(Debug, thiserror::Error)]
#[error("a {member} signal from systemd that does not parse: {why}")]
pub struct SignalError {
    member: String,
    why: String,
}

/// The signal stream of one connection to the bus.
pub struct Events {
    conn: Connection,
    stream: MessageStream,
}

impl Events {
    /// Connects to `address` (the system bus when `None`), subscribes, and
    /// lists the units as they are now.
    pub async fn subscribe(address: Option<&str>) -> Result<(Self, Vec<Listed>), SystemdError> {
        let (conn, _) = super::systemd::connect(address).await?;
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(SYSTEMD)
            .and_then(|b| b.path_namespace(MANAGER_PATH))
            .map_err(call_err("match rule"))?
            .build();
        // The rule first: a change between the listing and the rule is not missed.
        let stream =
            MessageStream::for_match_rule(rule, &conn, Some(MAX_QUEUED)).await.map_err(call_err("AddMatch"))?;
        conn.call_method(Some(SYSTEMD), MANAGER_PATH, Some(MANAGER_IFACE), "Subscribe", &())
            .await
            .map_err(call_err("Subscribe"))?;
        let events = Self { conn, stream };
        let listed = events.list().await?;
        Ok((events, listed))
    }

    /// Every unit systemd has loaded, with its state (`ListUnits`).
    pub async fn list(&self) -> Result<Vec<Listed>, SystemdError> {
        super::systemd::list_units(&self.conn).await
    }

    /// The next signal; `None` once the connection is gone (the bus went
    /// away or systemd's side closed it).
    pub async fn next(&mut self) -> Option<Result<Signal, SignalError>> {
        loop {
            match self.stream.next().await? {
                Ok(msg) => return Some(parse(&msg)),
                // A message the connection could not read: the stream goes on.
                Err(e) => tracing::debug!(error = %e, "unreadable message on the signal connection"),
            }
        }
    }
}

/// The signal `msg` is.
fn parse(msg: &zbus::Message) -> Result<Signal, SignalError> {
    let header = msg.header();
    let member = header.member().map(|m| m.as_str()).unwrap_or_default().to_owned();
    let path = header.path().map(|p| p.as_str()).unwrap_or_default();
    let fail = |why: String| SignalError { member: member.clone(), why };
    let body = msg.body();
    match member.as_str() {
        "PropertiesChanged" => {
            let Some(unit) = path.strip_prefix(UNIT_PATH).map(unescape) else { return Ok(Signal::Other) };
            let unit = unit.map_err(fail)?;
            let (interface, changed, _invalidated): (String, HashMap<String, OwnedValue>, Vec<String>) =
                body.deserialize().map_err(|e| fail(e.to_string()))?;
            let interface = match interface.as_str() {
                "org.freedesktop.systemd1.Unit" => Interface::Unit,
                "org.freedesktop.systemd1.Service" => Interface::Service,
                _ => Interface::Other,
            };
            Ok(Signal::Changed { unit, interface, props: Props(changed) })
        }
        "UnitNew" | "UnitRemoved" => {
            let (unit, _path): (String, OwnedObjectPath) = body.deserialize().map_err(|e| fail(e.to_string()))?;
            Ok(if member == "UnitNew" { Signal::New { unit } } else { Signal::Removed { unit } })
        }
        "JobRemoved" => {
            let (_id, _job, unit, result): (u32, OwnedObjectPath, String, String) =
                body.deserialize().map_err(|e| fail(e.to_string()))?;
            Ok(Signal::JobRemoved { unit, result })
        }
        "Reloading" => Ok(Signal::Reloading(body.deserialize().map_err(|e| fail(e.to_string()))?)),
        _ => Ok(Signal::Other),
    }
}

/// A unit's name from the last element of its object path, where systemd
/// writes every byte that is not a letter or a digit as `_` and two hex
/// digits (`nginx_2eservice`).
fn unescape(label: &str) -> Result<String, String> {
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex =
                label.get(i + 1..i + 3).ok_or_else(|| format!("object path label {label:?} ends in an escape"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("object path label {label:?} has a bad escape"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("object path label {label:?} is not UTF-8 once unescaped"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_path_label_unescapes_to_its_name() {
        assert_eq!(unescape("nginx_2eservice").unwrap(), "nginx.service");
        assert_eq!(unescape("getty_40tty1_2eservice").unwrap(), "getty@tty1.service");
        assert_eq!(unescape("dev_2dsda1_2edevice").unwrap(), "dev-sda1.device");
        assert!(unescape("bad_2").unwrap_err().contains("ends in an escape"));
        assert!(unescape("bad_zz").unwrap_err().contains("bad escape"));
        assert!(unescape("_ff").unwrap_err().contains("not UTF-8"));
    }
}
