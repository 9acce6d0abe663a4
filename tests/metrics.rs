//! `metrics.listen`: the daemon's state for Prometheus, scraped by a real
//! Prometheus (Debian's `prometheus`, started here on loopback) while the
//! daemon restarts a failed unit in the test container: the target is up,
//! the values are what macha did, and `promtool check metrics` accepts the
//! exposition. Nothing but `GET /metrics` is served.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{decision, free_port, wait_until, Bed, WEB};
use macha_testbed::ollama::Reply;
use serde_json::Value;

/// One HTTP/1.0 request: the status line's code, and the body; code 0
/// when nothing listens (yet).
fn http(port: u16, request: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let code = answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

fn get(port: u16, path: &str) -> (u16, String) {
    http(port, &format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"))
}

/// A Prometheus of its own, scraping 127.0.0.1:`target` every second;
/// killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: macha\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's package; tests/setup.sh installs it)");
        Prometheus { child, port, _dir: dir }
    }

    /// The value of an instant query's only sample, if there is one.
    fn value(&self, query: &str) -> Option<f64> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = get(self.port, &format!("/api/v1/query?query={encoded}"));
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_what_the_daemon_did_and_promtool_accepts_it() {
    let bed = Bed::new("metrics", "auto-safe");
    let port = free_port();
    // Alertmanager's webhook on the same address: one listener serves both.
    let token = bed.state.path().join("alertmanager-token");
    std::fs::write(&token, "am-token\n").unwrap();
    bed.append_config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[alertmanager]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
        token.display()
    ));
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let mut daemon = bed.daemon(Stdio::piped());
    // What the daemon did: the failed unit restarted.
    bed.c.write_file("/run/demo-web.ok", "").unwrap();
    wait_until(Duration::from_secs(60), "the restart recorded", || {
        bed.audit("actions.jsonl").iter().any(|a| a["outcome"] == "succeeded")
    });

    let (code, body) = get(port, "/metrics");
    assert_eq!(code, 200, "{body}");
    for line in [
        "macha_incidents_opened_total{kind=\"unit-failed\"} 1",
        "macha_actions_total{kind=\"restart_unit\",result=\"executed\"} 1",
        "macha_decisions_total{outcome=\"decided\",source=\"model\"} 1",
        "macha_model_requests_total 1",
        "macha_event_stream_up 1",
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in\n{body}");
    }
    // Prometheus's own linter reads it as Prometheus would.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success() && said.trim().is_empty(), "promtool: {said}");

    // A real Prometheus scrapes it: the target is up, the values are macha's.
    let prometheus = Prometheus::start(port);
    wait_until(Duration::from_secs(30), "the target up in Prometheus", || {
        prometheus.value("up{job=\"macha\"}") == Some(1.0)
    });
    let executed = "macha_actions_total{job=\"macha\",kind=\"restart_unit\",result=\"executed\"}";
    wait_until(Duration::from_secs(10), "the action in Prometheus", || prometheus.value(executed) == Some(1.0));
    assert_eq!(prometheus.value("macha_incidents_opened_total{kind=\"unit-failed\"}"), Some(1.0));
    assert_eq!(prometheus.value("macha_approvals_pending"), Some(0.0));
    assert_eq!(prometheus.value("macha_build_info"), Some(1.0));

    // The webhook beside it, and nothing else.
    let (code, said) = http(port, "POST /alertmanager HTTP/1.0\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!(code, 401, "{said}");
    let (code, said) = get(port, "/nothing");
    assert_eq!(code, 404);
    assert!(said.contains("only /metrics and /alertmanager"), "{said}");
    assert_eq!(get(port, "/").0, 404);
    assert_eq!(get(port, "/api/v1/query").0, 404);
    let (code, _) = http(port, "POST /metrics HTTP/1.0\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(code, 405);
    assert_eq!(http(port, "this is not http\r\n\r\n").0, 400);
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon is still running");
    common::stop_daemon(daemon);
}

#[test]
fn an_address_taken_is_said_at_start() {
    let bed = Bed::new("metrics-taken", "suggest");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    bed.append_config(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let out = bed.run("macha", &["daemon"]);
    assert!(!out.status.success());
    let said = common::stderr(&out);
    assert!(said.contains(&format!("metrics.listen = \"127.0.0.1:{port}\": cannot listen there")), "{said}");
}
