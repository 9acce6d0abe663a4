//! Alertmanager's webhook as a source of incidents (`alertmanager.listen`,
//! route `POST /alertmanager`). Each firing alert whose labels name this
//! host (`alertmanager.host_labels`: `instance` without its port, or a
//! name's first DNS label) is kept in `state.db` until Alertmanager says it
//! resolved; a pass reads them, and `detect` makes one incident per alert
//! name (`alert:NAME`), however many alerts of that name fire.
//!
//! A post without the bearer token of `alertmanager.token_file` is 401;
//! one larger than [`MAX_BODY`], 413; one whose body does not arrive within
//! 30 s, 408; one that is not Alertmanager's webhook (version 4), 400; each
//! is recorded in `alerts.jsonl` with why, and nothing of it is kept.
//! Within a good post, an alert without a valid name or fingerprint is left
//! out and said; labels and annotations are bounded in count, cut in length
//! and redacted (a secret in a label never reaches `state.db`), and
//! annotations reach the model only as untrusted evidence.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit;
use crate::config::Config;
use crate::observe::alerts::Alert;
use crate::rotation::Rotation;
use crate::state_dir::StateDir;
use crate::store::Store;

/// The largest post taken, in bytes.
pub const MAX_BODY: usize = 1024 * 1024;
/// How long a post's body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Alerts taken from one post.
const MAX_ALERTS_PER_POST: usize = 1000;
/// Labels and annotations kept of one alert; more are left out.
const MAX_LABELS: usize = 64;
const MAX_ANNOTATIONS: usize = 32;
/// Characters kept of a label's value and of an annotation.
const MAX_LABEL_VALUE: usize = 1024;
const MAX_ANNOTATION: usize = 4096;

/// Alertmanager's webhook, as much of it as is read (version 4; the
/// fields it has besides are passed over).
#[derive(Debug, Deserialize)]
struct Webhook {
    version: String,
    alerts: Vec<WireAlert>,
}

#[derive(Debug, Deserialize)]
struct WireAlert {
    status: String,
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    starts_at: DateTime<Utc>,
    fingerprint: String,
}

/// How a post ended, in `alerts.jsonl`.
#[derive(Debug, Serialize)]
pub struct AlertRecord {
    pub time: DateTime<Utc>,
    /// `taken` or `refused`.
    pub outcome: &'static str,
    pub status: u16,
    /// Alerts kept firing, forgotten as resolved, about another host, left out.
    pub firing: usize,
    pub resolved: usize,
    pub elsewhere: usize,
    pub left_out: usize,
    pub detail: String,
}

/// What a post brought, sorted.
#[derive(Debug, Default, PartialEq)]
struct Taken {
    firing: Vec<Alert>,
    resolved: Vec<String>,
    elsewhere: usize,
    /// Why each alert left out was.
    left_out: Vec<String>,
}

/// The receiver of the webhook.
pub struct Receiver {
    /// SHA-256 of the token, compared with that of what is sent.
    token: [u8; 32],
    store: RefCell<Store>,
    /// The names this host goes by, lowercase.
    names: Vec<String>,
    labels: Vec<String>,
    /// Woken when alerts changed: the watcher makes a pass.
    wake: Rc<tokio::sync::Notify>,
    state: StateDir,
    rotation: Rotation,
}

impl Receiver {
    /// Reads the token (`alertmanager.token_file`); the error names the file.
    pub fn new(config: &Config, state: &StateDir, wake: Rc<tokio::sync::Notify>) -> anyhow::Result<Receiver> {
        let a = &config.alertmanager;
        let file = a.token_file.as_deref().ok_or_else(|| anyhow::anyhow!("alertmanager.token_file is not set"))?;
        let token = crate::bounded::read_secret(file, "alertmanager.token_file")
            .map_err(|e| anyhow::anyhow!("alertmanager.token_file: {e}"))?;
        let mut names: Vec<String> = a.host_names.iter().map(|n| n.to_lowercase()).collect();
        names.push(crate::observe::hostname().to_lowercase());
        Ok(Receiver {
            token: Sha256::digest(token.as_bytes()).into(),
            store: RefCell::new(Store::open(state)?),
            names,
            labels: a.host_labels.clone(),
            wake,
            state: state.clone(),
            rotation: config.retention.audit(),
        })
    }

    /// Answers one request to `/alertmanager`.
    pub async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::POST {
            let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "only POST\n".into());
            r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("POST"));
            return r;
        }
        let sent = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
        let sent = sent.strip_prefix("Bearer ").unwrap_or("");
        if <[u8; 32]>::from(Sha256::digest(sent.as_bytes())) != self.token {
            let why = if sent.is_empty() { "no bearer token" } else { "a bearer token that is not this one" };
            return self.refuse(StatusCode::UNAUTHORIZED, format!("{why}: see alertmanager.token_file"));
        }
        // A body that trickles in is not waited for past BODY_TIMEOUT.
        let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(request.into_body(), MAX_BODY).collect());
        let body = match collected.await {
            Err(_) => {
                let why = format!("the post's body did not arrive within {} s", BODY_TIMEOUT.as_secs());
                return self.refuse(StatusCode::REQUEST_TIMEOUT, why);
            }
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return self.refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("a post larger than {MAX_BODY} bytes"));
            }
            Ok(Err(e)) => return self.refuse(StatusCode::BAD_REQUEST, format!("the post could not be read: {e}")),
        };
        let taken = match self.read(&body) {
            Ok(t) => t,
            Err(why) => return self.refuse(StatusCode::BAD_REQUEST, why),
        };
        let kept = self.store.borrow_mut().alerts_changed(&taken.firing, &taken.resolved, Utc::now());
        let full = match kept {
            Ok(n) => n,
            Err(e) => {
                // Alertmanager sends it again: nothing is lost.
                tracing::error!(error = %e, "alerts could not be kept");
                return reply(StatusCode::SERVICE_UNAVAILABLE, format!("the alerts could not be kept: {e}\n"));
            }
        };
        let mut left_out = taken.left_out;
        if full > 0 {
            left_out.push(format!("{full} firing alert(s) past the {} kept", crate::store::MAX_ALERTS));
        }
        let detail =
            if left_out.is_empty() { "taken".to_owned() } else { format!("left out: {}", left_out.join("; ")) };
        let rec = AlertRecord {
            time: Utc::now(),
            outcome: "taken",
            status: 200,
            firing: taken.firing.len() - full,
            resolved: taken.resolved.len(),
            elsewhere: taken.elsewhere,
            left_out: left_out.len(),
            detail: crate::text::cut(&detail, 2000, "..."),
        };
        self.record(&rec);
        if !taken.firing.is_empty() || !taken.resolved.is_empty() {
            self.wake.notify_one();
        }
        reply(
            StatusCode::OK,
            format!(
                "{} firing, {} resolved, {} about another host, {} left out\n",
                rec.firing, rec.resolved, rec.elsewhere, rec.left_out
            ),
        )
    }

    /// The post, parsed and sorted: firing and resolved alerts of this
    /// host, the others counted; `Err` when it is not the webhook.
    fn read(&self, body: &[u8]) -> Result<Taken, String> {
        let hook: Webhook =
            serde_json::from_slice(body).map_err(|e| format!("not Alertmanager's webhook (JSON of version 4): {e}"))?;
        if hook.version != "4" {
            let v: String = hook.version.chars().take(20).collect();
            return Err(format!("webhook version {v:?}: only version 4 is read"));
        }
        if hook.alerts.len() > MAX_ALERTS_PER_POST {
            return Err(format!("{} alerts in one post; at most {MAX_ALERTS_PER_POST}", hook.alerts.len()));
        }
        let mut taken = Taken::default();
        for wire in hook.alerts {
            match checked(wire) {
                Err(why) => taken.left_out.push(why),
                Ok((alert, _)) if !self.names_this_host(&alert.labels) => taken.elsewhere += 1,
                Ok((alert, true)) => taken.firing.push(alert),
                Ok((alert, false)) => taken.resolved.push(alert.fingerprint),
            }
        }
        Ok(taken)
    }

    /// Whether one of the host labels names this host.
    fn names_this_host(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().filter_map(|l| labels.get(l).map(|v| (l, v))).any(|(label, value)| {
            let value = value.to_lowercase();
            let host = if label == "instance" { strip_port(&value) } else { value.as_str() };
            self.names
                .iter()
                .any(|n| host == n || host.strip_prefix(n.as_str()).is_some_and(|rest| rest.starts_with('.')))
        })
    }

    fn refuse(&self, status: StatusCode, why: String) -> Response<Full<Bytes>> {
        tracing::warn!(status = status.as_u16(), %why, "an Alertmanager post was refused");
        self.record(&AlertRecord {
            time: Utc::now(),
            outcome: "refused",
            status: status.as_u16(),
            firing: 0,
            resolved: 0,
            elsewhere: 0,
            left_out: 0,
            detail: crate::text::cut(&why, 2000, "..."),
        });
        reply(status, format!("{why}\n"))
    }

    fn record(&self, rec: &AlertRecord) {
        if let Err(e) = audit::append(&self.state, audit::ALERTS, rec, self.rotation) {
            tracing::error!("the record of an Alertmanager post could not be written: {e}");
        }
    }
}

fn reply(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r
}

/// `host:port`, `[v6]:port` or a bare host: the host.
fn strip_port(instance: &str) -> &str {
    if let Some(rest) = instance.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    match instance.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => instance,
    }
}

/// One alert as kept, and whether it fires; `Err` with why it is left out.
fn checked(wire: WireAlert) -> Result<(Alert, bool), String> {
    let firing = match wire.status.as_str() {
        "firing" => true,
        "resolved" => false,
        other => return Err(format!("an alert of status {:?}", other.chars().take(20).collect::<String>())),
    };
    let name = wire.labels.get("alertname").cloned().unwrap_or_default();
    let name_ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '-'));
    if !name_ok {
        return Err(format!("an alert whose alertname {:?} is not a name", name.chars().take(40).collect::<String>()));
    }
    let fp_ok = !wire.fingerprint.is_empty()
        && wire.fingerprint.len() <= 64
        && wire.fingerprint.bytes().all(|b| b.is_ascii_alphanumeric());
    if !fp_ok {
        return Err(format!("alert {name} without a fingerprint"));
    }
    let cut = |map: BTreeMap<String, String>, max: usize, len: usize| -> BTreeMap<String, String> {
        map.into_iter()
            .filter(|(k, _)| k.len() <= 128)
            .take(max)
            .map(|(k, v)| (k, crate::text::cut(&crate::redact::redact(&v), len, "...")))
            .collect()
    };
    let alert = Alert {
        name,
        fingerprint: wire.fingerprint,
        labels: cut(wire.labels, MAX_LABELS, MAX_LABEL_VALUE),
        annotations: cut(wire.annotations, MAX_ANNOTATIONS, MAX_ANNOTATION),
        starts_at: wire.starts_at,
    };
    Ok((alert, firing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_is_its_host_without_the_port() {
        for (instance, host) in [
            ("web1:9100", "web1"),
            ("web1", "web1"),
            ("10.0.0.1:9100", "10.0.0.1"),
            ("[::1]:9100", "::1"),
            ("web1.example.org:443", "web1.example.org"),
        ] {
            assert_eq!(strip_port(instance), host);
        }
    }

    #[test]
    fn an_alert_without_a_name_or_fingerprint_is_left_out_and_long_values_are_cut() {
        let wire = |labels: &[(&str, &str)], fp: &str, status: &str| WireAlert {
            status: status.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            annotations: [("summary".to_owned(), "x".repeat(10_000))].into(),
            starts_at: Utc::now(),
            fingerprint: fp.into(),
        };
        assert!(checked(wire(&[("host", "a")], "ab12", "firing")).unwrap_err().contains("alertname"));
        assert!(checked(wire(&[("alertname", "x y")], "ab12", "firing")).is_err());
        assert!(checked(wire(&[("alertname", "Down")], "", "firing")).unwrap_err().contains("fingerprint"));
        assert!(checked(wire(&[("alertname", "Down")], "ab12", "pending")).is_err());
        let (alert, firing) =
            checked(wire(&[("alertname", "Down"), ("dsn", "db password=hunter2")], "ab12", "firing")).unwrap();
        assert!(firing);
        assert_eq!(alert.labels["dsn"], "db password=[redacted:password]", "a secret in a label is not kept");
        assert_eq!(alert.annotations["summary"].chars().count(), MAX_ANNOTATION);
        assert!(!checked(wire(&[("alertname", "Down")], "ab12", "resolved")).unwrap().1);
    }
}
