//! Numbers at their limits: a value of the configuration outside its range
//! stops every command at start-up with the key and the range named; the
//! code that once panicked, wrapped or stormed on such values (the journal's
//! look-back, the notifier's waits, Gotify's retries) stays sound even when
//! handed them directly; and a configuration at the edges of its ranges
//! runs a real cycle, queues, lists and notifies.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use common::{decision, macha_bin, said, Bed, WEB};
use macha::audit::DecisionOutcome;
use macha::config::Config;
use macha::notify::outbox::Outbox;
use macha::notify::{Kind, Message};
use macha::report::{CycleReport, DecisionReport, IncidentReport};
use macha::state_dir::StateDir;
use macha::store::Novelty;
use macha_testbed::gotify::{GotifyReceiver, Mode};
use macha_testbed::ollama::Reply;

const TOKEN: &str = "AqZ8-macha-limits-token";

/// A state directory, a journal directory and a token file, here.
struct Here {
    dir: tempfile::TempDir,
}

impl Here {
    fn new() -> Here {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        std::fs::create_dir(dir.path().join("journal")).unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        std::fs::set_permissions(dir.path().join("token"), std::fs::Permissions::from_mode(0o600)).unwrap();
        Here { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A configuration with `extra` appended, pointing at nothing that answers.
    fn config(&self, extra: &str) -> PathBuf {
        let path = self.path("config.toml");
        let text = format!(
            "state_dir = \"{}\"\njournal_dir = \"{}\"\ndbus_address = \"unix:path={}\"\n{extra}\n",
            self.path("state").display(),
            self.path("journal").display(),
            self.path("no-bus").display()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The built-in configuration with notifications to `url`, as a value:
    /// what a test changes in it bypasses `Config::parse`, as a value that
    /// slipped through validation would.
    fn notifying(&self, url: &str) -> Config {
        let mut config = Config { state_dir: self.path("state"), ..Config::default() };
        config.gotify.url = Some(url.into());
        config.gotify.token_file = Some(self.path("token"));
        config
    }
}

#[test]
fn the_reviewers_values_stop_the_commands_at_start_up_with_the_key_and_range_named() {
    let here = Here::new();
    for (extra, key, range) in [
        ("check_interval = 18446744073709551615", "check_interval", "1 to 86400 seconds"),
        ("[act]\napproval_ttl_hours = 9223372036854775807", "act.approval_ttl_hours", "1 to 720 hours"),
        ("[act]\napproval_ttl_hours = 18446744073709551615", "act.approval_ttl_hours", "1 to 720 hours"),
        ("[act]\njob_timeout = 9223372036854775807", "act.job_timeout", "1 to 3600 seconds"),
        ("[act]\nsettle_time = 100000000", "act.settle_time", "0 to 600 seconds"),
        ("[gotify]\nresolve_after = 9223372036854775807", "gotify.resolve_after", "0 to 86400 seconds"),
        ("[gotify]\nretry_max = 18446744073709551615", "gotify.retry_max", "1 to 86400 seconds"),
    ] {
        let config = here.config(extra);
        for command in [&["check"][..], &["approve", "list"], &["daemon"]] {
            let out = Command::new(macha_bin()).arg("--config").arg(&config).args(command).output().unwrap();
            let text = said(&out);
            assert_eq!(out.status.code(), Some(2), "{extra}, macha {command:?}: {text}");
            assert!(text.contains(&format!("key `{key}`")) && text.contains(range), "{extra}: {text}");
            assert!(!text.contains("panicked"), "{extra}: {text}");
        }
    }
}

#[test]
fn a_look_back_longer_than_the_clocks_past_reads_the_journal_from_its_start() {
    let here = Here::new();
    let scan = macha::observe::journal::scan_errors(Some(&here.path("journal")), None, Duration::MAX, 10).unwrap();
    assert_eq!(scan.total, 0);
}

#[test]
fn gotify_down_with_the_longest_retry_wait_is_asked_again_later_not_in_a_storm() {
    let here = Here::new();
    let g = GotifyReceiver::start(&[TOKEN]).unwrap();
    g.set_mode(Mode::Status(500));
    let mut config = here.notifying(&g.url());
    config.gotify.retry_max = u64::MAX;
    let state = StateDir::create(&config.state_dir).unwrap();
    let channels = macha::notify::channel::configured(&config).unwrap();
    let (notifier, mut channels) = macha::notify::setup(&config, &state, channels).unwrap().unwrap();
    let m = Message { kind: Kind::Test, title: "t".into(), body: "b".into(), priority: 2 };
    notifier.emit(m, Utc::now()).unwrap();
    let outbox = Outbox::open(&state).unwrap();
    let wake = notifier.wake("gotify").unwrap();
    let sender = macha::notify::run_sender(outbox, channels.remove(0), config.gotify.retry_max, wake);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(3), sender).await;
    });
    // The first attempt failed 3 s ago; the next one waits 5 s.
    assert_eq!(g.attempts().len(), 1, "attempts in 3 s: {}", g.attempts().len());
    let held = Outbox::open(&state).unwrap();
    assert!(held.due(Utc::now() + chrono::Duration::seconds(1), "gotify").unwrap().is_empty());
    assert_eq!(held.due(Utc::now() + chrono::Duration::seconds(3), "gotify").unwrap().len(), 1);
}

#[test]
fn the_notifier_with_the_longest_waits_neither_panics_nor_pages_at_once() {
    let here = Here::new();
    for wait in [i64::MAX as u64, u64::MAX] {
        let mut config = here.notifying("http://127.0.0.1:9");
        config.gotify.resolve_after = wait;
        config.gotify.model_outage_after = wait;
        let state = StateDir::create(&config.state_dir).unwrap();
        let channels = macha::notify::channel::configured(&config).unwrap();
        let (notifier, _) = macha::notify::setup(&config, &state, channels).unwrap().unwrap();
        let failed = IncidentReport {
            fingerprint: "unit-failed:demo-web.service".into(),
            summary: "demo-web.service failed".into(),
            novelty: Novelty::New,
            decision: Some(DecisionReport {
                outcome: DecisionOutcome::Failed,
                source: None,
                diagnosis: None,
                suspect: None,
                error: Some("the model is unreachable".into()),
                actions: Vec::new(),
            }),
        };
        let report = CycleReport {
            started_at: Utc::now(),
            host: "web1".into(),
            autonomy_level: config.autonomy_level,
            model_problems: Vec::new(),
            failed_sources: Vec::new(),
            incidents: vec![failed],
            resolved: Vec::new(),
            wall_ms: 1,
        };
        notifier.after_cycle(&report, Utc::now()).unwrap();
        // Gone the next cycle: "resolved" waits for resolve_after.
        let gone =
            CycleReport { incidents: Vec::new(), resolved: vec!["unit-failed:demo-web.service".into()], ..report };
        notifier.after_cycle(&gone, Utc::now()).unwrap();
        let queued = Outbox::open(&state).unwrap().due(Utc::now(), "gotify").unwrap();
        let titles: Vec<&str> = queued.iter().map(|p| p.message.title.as_str()).collect();
        assert!(titles.iter().all(|t| !t.contains("not answering") && !t.contains("resolved")), "{titles:?}");
    }
}

#[test]
fn a_configuration_at_the_longest_waits_it_accepts_runs_a_cycle_queues_and_lists() {
    let bed = Bed::new("limits-edges", "suggest");
    // Replaces the bed's lines, [act] included; then adds to [act], its last table.
    bed.write_config("suggest", "check_interval = 86400\nsettle_time = 600\njob_timeout = 3600");
    bed.append_config("approval_ttl_hours = 720\ncooldown = 86400\nhelper_timeout = 86400\n");
    let token = bed.state.path().join("gotify-token");
    std::fs::write(&token, TOKEN).unwrap();
    let g = GotifyReceiver::start(&[TOKEN]).unwrap();
    bed.append_config(&format!(
        "[gotify]\nurl = \"{}\"\ntoken_file = \"{}\"\nresolve_after = 86400\nmodel_outage_after = 86400\nretry_max = 86400\n",
        g.url(),
        token.display()
    ));
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));
    let (code, report) = bed.check();
    assert_eq!(code, 1, "{report:#}");
    let pending = bed.pending();
    assert_eq!(pending.len(), 1);
    let expires = chrono::DateTime::parse_from_rfc3339(pending[0]["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.with_timezone(&Utc) - Utc::now();
    assert!(left > chrono::Duration::hours(719) && left <= chrono::Duration::hours(720), "{left}");
    let out = bed.run("macha-approve", &["list"]);
    assert!(out.status.success() && said(&out).contains(WEB), "{}", said(&out));
    assert!(g.messages().iter().any(|m| m.title.contains("approval needed")), "{:?}", g.messages());
}
