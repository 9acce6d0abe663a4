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

/// What is kept of a host's answer: its incidents, and of each the
/// fingerprint and summary, each cut to this many characters.
const MAX_INCIDENTS: usize = 1000;
const MAX_FINGERPRINT: usize = 300;
const MAX_SUMMARY: usize = 1000;

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
    let observed = client.request(&Request::Observe {})?;
    let text =
        |v: &serde_json::Value, max: usize| v.as_str().unwrap_or("unknown").chars().take(max).collect::<String>();
    let incidents = observed["incidents"]
        .as_array()
        .ok_or_else(|| RemoteError::Answer("an observation without incidents".into()))?
        .iter()
        .take(MAX_INCIDENTS)
        .map(|i| RemoteIncident {
            fingerprint: format!("{}/{}", host.name, text(&i["fingerprint"], MAX_FINGERPRINT)),
            summary: text(&i["summary"], MAX_SUMMARY),
        })
        .collect();
    Ok(HostView {
        name: host.name.clone(),
        address: format!("{}:{}", host.address, host.port),
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        autonomy_level: client.hello["autonomy_level"].as_str().map(|l| l.chars().take(MAX_FINGERPRINT).collect()),
        incidents,
        reachable: true,
    })
}

fn unreachable(host: &RemoteHost, why: String, elapsed: Duration) -> HostView {
    HostView {
        name: host.name.clone(),
        address: format!("{}:{}", host.address, host.port),
        elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        autonomy_level: None,
        incidents: vec![RemoteIncident { fingerprint: format!("host-unreachable:{}", host.name), summary: why }],
        reachable: false,
    }
}

/// Looks at every configured host, `remote.max_parallel` at once; the
/// views in the configured order.
pub async fn observe_all(config: &Config) -> Vec<HostView> {
    let Some(key) = config.remote.private_key_file.clone() else { return Vec::new() };
    let controller = crate::observe::hostname();
    let permits = Arc::new(tokio::sync::Semaphore::new(config.remote.max_parallel.max(1) as usize));
    // A host's own timeouts bound it; this is the backstop past both.
    let limit = Duration::from_secs(config.remote.connect_timeout + config.remote.command_timeout * 2 + 5);
    let mut tasks = Vec::new();
    for host in config.remote.hosts.clone() {
        let (permits, key, controller, config) = (permits.clone(), key.clone(), controller.clone(), config.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.expect("the semaphore is never closed");
            let started = Instant::now();
            let h = host.clone();
            let work = tokio::task::spawn_blocking(move || look(&h, &key, &controller, &config));
            match tokio::time::timeout(limit, work).await {
                Ok(Ok(Ok(view))) => view,
                Ok(Ok(Err(e))) => unreachable(&host, e.to_string(), started.elapsed()),
                Ok(Err(e)) => unreachable(&host, format!("the session ended abnormally: {e}"), started.elapsed()),
                Err(_) => unreachable(&host, format!("no answer within {} s", limit.as_secs()), started.elapsed()),
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
