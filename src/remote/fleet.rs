//! The controller's look at every configured host: each one's hello and
//! observation, at most `remote.max_parallel` at once, each on a thread of
//! its own (libssh2 blocks) and bounded by `remote.connect_timeout` and
//! `remote.command_timeout`, so a host that is down or slow delays only
//! its own answer. Incidents carry the host's name (`web1/unit-failed:x`);
//! a host that cannot be talked to is the incident `host-unreachable:NAME`,
//! saying why.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::{Client, RemoteError};
use super::protocol::Request;
use crate::config::{Config, RemoteHost};
use crate::detect::{Incident, IncidentKind};
use crate::ids::Fingerprint;
use crate::observe::Snapshot;

/// What is kept of a host's answer: its incidents, and of each the
/// fingerprint and summary, each cut to this many characters.
const MAX_INCIDENTS: usize = 1000;
const MAX_FINGERPRINT: usize = 300;
const MAX_SUMMARY: usize = 1000;
/// The longest unit name or mount an incident of a host names.
const MAX_NAME: usize = 256;

/// One host as the controller saw it.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    pub name: String,
    pub address: String,
    /// Milliseconds from connecting to the last answer (or the failure).
    pub elapsed_ms: u64,
    /// The host's autonomy level, as its hello said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autonomy_level: Option<String>,
    /// Its incidents, fingerprints prefixed with its name; or the one
    /// incident that it could not be reached.
    pub incidents: Vec<RemoteIncident>,
    /// Whether it answered.
    pub reachable: bool,
    /// What it answered, typed: its snapshot and its incidents (for the
    /// controller's decisions).
    #[serde(skip)]
    pub seen: Option<(Snapshot, Vec<Incident>)>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RemoteIncident {
    pub fingerprint: String,
    pub summary: String,
}

/// What one host said: its hello and its observation.
fn look(host: &RemoteHost, key: &std::path::Path, controller: &str, config: &Config) -> Result<HostView, RemoteError> {
    let r = &config.remote;
    let started = Instant::now();
    let mut client = Client::connect(
        host,
        key,
        controller,
        Duration::from_secs(r.connect_timeout),
        Duration::from_secs(r.command_timeout),
    )?;
    let mut observed = client.request(&Request::Observe {})?;
    let answer = |what: &str, e: serde_json::Error| RemoteError::Answer(format!("{what} is not one: {e}"));
    let mut snap: Snapshot =
        serde_json::from_value(observed["snapshot"].take()).map_err(|e| answer("its snapshot", e))?;
    // Named as the controller names it, in every record of it.
    snap.hostname.clone_from(&host.name);
    let sent: Vec<serde_json::Value> =
        serde_json::from_value(observed["incidents"].take()).map_err(|e| answer("its list of incidents", e))?;
    let incidents: Vec<Incident> =
        sent.into_iter().take(MAX_INCIDENTS).filter_map(|i| incident(&host.name, i)).collect();
    Ok(HostView {
        name: host.name.clone(),
        address: format!("{}:{}", host.address, host.port),
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        autonomy_level: client.hello["autonomy_level"].as_str().map(|l| l.chars().take(MAX_FINGERPRINT).collect()),
        incidents: incidents
            .iter()
            .map(|i| RemoteIncident { fingerprint: i.fingerprint.to_string(), summary: i.summary.clone() })
            .collect(),
        reachable: true,
        seen: Some((snap, incidents)),
    })
}

/// One incident a host sent, as the controller keeps it: its kind as sent
/// (a kind this version does not know, one about yet another host, or a
/// name too long, is left out), its fingerprint made here from that kind
/// and the host's name (never taken as sent), its summary and evidence key
/// cut to size.
fn incident(host: &str, sent: serde_json::Value) -> Option<Incident> {
    let text = |v: &serde_json::Value, max: usize| v.as_str().unwrap_or_default().chars().take(max).collect::<String>();
    let (summary, evidence_key) = (text(&sent["summary"], MAX_SUMMARY), text(&sent["evidence_key"], MAX_FINGERPRINT));
    let sent: Incident = match serde_json::from_value(sent) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(host, error = %e, "an incident of a kind this macha does not know is left out");
            return None;
        }
    };
    let named = match &sent.kind {
        IncidentKind::HostUnreachable { .. } => return None,
        IncidentKind::UnitFailed { unit } | IncidentKind::RestartLoop { unit } | IncidentKind::ErrorBurst { unit } => {
            unit
        }
        IncidentKind::DiskFull { mount } => mount,
        IncidentKind::Alert { name } => name,
        IncidentKind::MemoryPressure => "",
    };
    if named.len() > MAX_NAME {
        return None;
    }
    let fingerprint = Fingerprint::of_host(host, &sent.kind.fingerprint());
    Some(Incident { fingerprint, kind: sent.kind, summary, evidence_key })
}

fn unreachable(host: &RemoteHost, why: String, elapsed: Duration) -> HostView {
    HostView {
        name: host.name.clone(),
        address: format!("{}:{}", host.address, host.port),
        elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        autonomy_level: None,
        incidents: vec![RemoteIncident { fingerprint: format!("host-unreachable:{}", host.name), summary: why }],
        reachable: false,
        seen: None,
    }
}

/// How long one session may take in all: its own timeouts bound it, this
/// is the backstop past both.
fn limit(connect: Duration, command: Duration) -> Duration {
    connect + command * 2 + Duration::from_secs(5)
}

/// Runs `session` (blocking: libssh2) on a thread of its own, for at most
/// [`limit`]; its result, or why there is none.
pub async fn bounded<T: Send + 'static>(
    connect: Duration,
    command: Duration,
    session: impl FnOnce() -> Result<T, RemoteError> + Send + 'static,
) -> Result<T, String> {
    let limit = limit(connect, command);
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(session)).await {
        Ok(Ok(Ok(done))) => Ok(done),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(e)) => Err(format!("the session ended abnormally: {e}")),
        Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
    }
}

/// Looks at every configured host, `remote.max_parallel` at once; the
/// views in the configured order.
pub async fn observe_all(config: &Config) -> Vec<HostView> {
    let Some(key) = config.remote.private_key_file.clone() else { return Vec::new() };
    let controller = crate::observe::hostname();
    let permits = Arc::new(tokio::sync::Semaphore::new(config.remote.max_parallel.max(1) as usize));
    let (connect, command) =
        (Duration::from_secs(config.remote.connect_timeout), Duration::from_secs(config.remote.command_timeout));
    let mut tasks = Vec::new();
    for host in config.remote.hosts.clone() {
        let (permits, key, controller, config) = (permits.clone(), key.clone(), controller.clone(), config.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.expect("the semaphore is never closed");
            let started = Instant::now();
            let h = host.clone();
            match bounded(connect, command, move || look(&h, &key, &controller, &config)).await {
                Ok(view) => view,
                Err(why) => unreachable(&host, why, started.elapsed()),
            }
        }));
    }
    let mut views = Vec::with_capacity(tasks.len());
    for (host, t) in config.remote.hosts.iter().zip(tasks) {
        views.push(match t.await {
            Ok(view) => view,
            Err(e) => unreachable(host, format!("the look at this host ended abnormally: {e}"), Duration::ZERO),
        });
    }
    views
}
