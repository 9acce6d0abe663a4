//! The controller's side of the fleet: each configured host looked at
//! (`fleet`), its incidents recorded and decided by this controller's
//! engine with the host's evidence, its probes run there as the model's
//! tools, and its actions asked of it ([`Reach`], one SSH session each).
//! The host judges every action again with its own gate, whatever the
//! controller says: the stricter side wins.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use super::client::Client;
use super::fleet;
use super::protocol::Request;
use crate::catalog::Action;
use crate::config::{Config, RemoteHost};
use crate::cycle::Engine;
use crate::decide::tools::{parse_call, probe_tools, ToolError, ToolFuture, Toolbox};
use crate::decide::ProposedAction;
use crate::elsewhere::{Acted, Approval, Asking, Elsewhere};
use crate::ids::Fingerprint;
use crate::model::Tool;
use crate::report::CycleReport;
use crate::text::cut;

/// The most of a probe's result or an action's detail kept from a host,
/// in characters.
const MAX_TEXT: usize = 64 * 1024;

/// One configured host, as the controller reaches it: each request a
/// session of its own, on a thread of its own, bounded by the timeouts.
pub struct Reach {
    host: RemoteHost,
    key: PathBuf,
    controller: String,
    connect: Duration,
    command: Duration,
}

impl Reach {
    /// The host named `name` in `config`, or why it cannot be reached.
    pub fn named(config: &Config, name: &str) -> Result<Reach, String> {
        let host = config.remote.hosts.iter().find(|h| h.name == name).ok_or_else(|| {
            format!("no host named {name:?} in [[remote.hosts]]: it was removed from the configuration")
        })?;
        Self::of(config, host)
    }

    pub fn of(config: &Config, host: &RemoteHost) -> Result<Reach, String> {
        let key = config.remote.private_key_file.clone().ok_or("remote.private_key_file is not set")?;
        Ok(Reach {
            host: host.clone(),
            key,
            controller: crate::observe::hostname(),
            connect: Duration::from_secs(config.remote.connect_timeout),
            command: Duration::from_secs(config.remote.command_timeout),
        })
    }

    /// One request in a session of its own: its reply, or why there is none.
    async fn ask(&self, request: Request) -> Result<serde_json::Value, String> {
        let (host, key, controller) = (self.host.clone(), self.key.clone(), self.controller.clone());
        let (connect, command) = (self.connect, self.command);
        fleet::bounded(connect, command, move || {
            let mut client = Client::connect(&host, &key, &controller, connect, command)?;
            client.request(&request)
        })
        .await
    }
}

/// Text a host sent, as the controller keeps it: redacted again (it is the
/// host's word), cut to size.
fn kept(text: &str) -> String {
    cut(&crate::redact::redact(text), MAX_TEXT, " [cut]")
}

impl Toolbox for Reach {
    fn tools(&self) -> Vec<Tool> {
        probe_tools()
    }

    fn call<'a>(&'a self, name: &'a str, arguments: &'a serde_json::Value) -> ToolFuture<'a> {
        Box::pin(async move {
            let Action::Investigate { probe, unit, path } = parse_call(name, arguments).map_err(ToolError::Refused)?
            else {
                return Err(ToolError::Refused(format!("{name} is not a probe")));
            };
            let request = Request::Probe { probe, unit: unit.map(|u| u.to_string()), path };
            let reply = self.ask(request).await.map_err(|e| ToolError::Failed(format!("{}: {e}", self.host.name)))?;
            let text = |k: &str| reply[k].as_str().unwrap_or_default().to_owned();
            Ok(kept(&format!("on {}: {}\n\n{}", self.host.name, text("summary"), text("text"))))
        })
    }
}

impl Elsewhere for Reach {
    fn name(&self) -> &str {
        &self.host.name
    }

    fn toolbox(&self) -> &dyn Toolbox {
        self
    }

    fn act<'a>(
        &'a self,
        incident: &'a Fingerprint,
        action: &'a Action,
        reason: &'a str,
        approval: Option<Approval>,
    ) -> Asking<'a> {
        Box::pin(async move {
            let proposed = ProposedAction::of(action, reason)
                .ok_or_else(|| format!("{action} cannot be asked of another host"))?;
            let mut reply = self.ask(Request::Act { incident: incident.clone(), proposed, approval }).await?;
            if reply["reply"] != "acted" {
                return Err(format!("its answer is not the protocol's: {}", cut(&reply.to_string(), 200, "...")));
            }
            if let Some(fields) = reply.as_object_mut() {
                fields.remove("reply");
            }
            let mut acted: Acted =
                serde_json::from_value(reply).map_err(|e| format!("its answer to \"act\" is not one: {e}"))?;
            acted.detail = kept(&acted.detail);
            acted.action = acted.action.map(|a| cut(&a, 300, "..."));
            Ok(acted)
        })
    }
}

/// Looks at every configured host and makes each one's pass on `engine`:
/// a report per host, in the configured order. A host whose pass fails
/// (the state database) is logged and looked at again next time.
pub async fn pass(engine: &mut Engine, config: &Config) -> Vec<CycleReport> {
    if config.remote.hosts.is_empty() {
        return Vec::new();
    }
    let views = fleet::observe_all(config).await;
    let mut reports = Vec::with_capacity(views.len());
    for (host, view) in config.remote.hosts.iter().zip(views) {
        let reach = match Reach::of(config, host) {
            Ok(r) => r,
            Err(why) => {
                tracing::error!(host = %host.name, %why, "the host is not looked at");
                continue;
            }
        };
        let seen = match view.seen {
            Some(seen) => Ok(seen),
            None => Err(view.incidents.into_iter().next().map(|i| i.summary).unwrap_or_default()),
        };
        match engine.remote_pass(Rc::new(reach), seen).await {
            Ok(report) => reports.push(report),
            Err(e) => tracing::error!(
                host = %host.name,
                error = crate::errors::chain(e.as_ref()),
                "the host's pass failed; it is looked at again next time"
            ),
        }
    }
    reports
}
