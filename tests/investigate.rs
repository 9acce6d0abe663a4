//! The `investigate` probes against a real systemd and journal in the test
//! container: what each one finds, and that a secret a unit logs comes out
//! redacted. `disk_usage` and `top_processes` read the machine the test runs
//! on; `generations` reads the container's (absent) system profile.

mod common;

use std::time::Duration;

use common::Bed;
use macha::catalog::{Action, Probe};
use macha::config::Config;
use macha::investigate::{self, Finding, MAX_TEXT_CHARS};
use macha::observe::systemd::{Systemd, SystemdLink};
use macha::unit::UnitName;

const UNIT: &str = "probe-target.service";

/// Logs a line with a password in it and an error, then fails with status 3.
const UNIT_TEXT: &str = "[Unit]
Description=investigate probe target (test)

[Service]
Type=simple
ExecStart=/bin/sh -c 'echo \"probe-target: connecting with password=hunter2\"; echo \"probe-target: cannot open /etc/probe-target.conf\" >&2; exit 3'
";

/// Macha's config pointed at the bed's container.
fn config(bed: &Bed) -> Config {
    let mut config =
        Config { dbus_address: Some(bed.c.bus_address()), journal_dir: Some(bed.c.journal_dir()), ..Config::default() };
    config.nixos.profile = bed.c.root().join("nix/var/nix/profiles/system");
    config.nixos.current_system = bed.c.root().join("run/current-system");
    config
}

fn action(probe: Probe, unit: Option<&str>, path: Option<&str>) -> Action {
    Action::Investigate { probe, unit: unit.map(|u| UnitName::parse(u).unwrap()), path: path.map(str::to_owned) }
}

async fn probe(
    probe: Probe,
    unit: Option<&str>,
    path: Option<&str>,
    systemd: &SystemdLink<'_>,
    config: &Config,
) -> Finding {
    let finding = investigate::run(&action(probe, unit, path), systemd, config).await.unwrap();
    eprintln!("== {} | {}\n{}\n", probe.as_str(), finding.summary, finding.text);
    assert_eq!(finding.probe, probe);
    assert!(finding.text.chars().count() <= MAX_TEXT_CHARS);
    assert!(!finding.summary.contains('\n'));
    finding
}

#[tokio::test]
async fn unit_probes_show_a_failed_units_state_and_redacted_logs() {
    let bed = Bed::new("investigate-unit", "suggest");
    bed.c.install_unit(UNIT, UNIT_TEXT).unwrap();
    bed.c.start_unit(UNIT).unwrap();
    bed.c.wait_unit_state(UNIT, "failed", Duration::from_secs(20)).unwrap();
    bed.c.sync_journal().unwrap();
    let config = config(&bed);
    let systemd = Systemd::connect(config.dbus_address.as_deref()).await.unwrap();

    let status = probe(Probe::UnitStatus, Some(UNIT), None, &SystemdLink::Up(&systemd), &config).await;
    assert_eq!(status.summary, format!("{UNIT}: failed (failed), result exit-code, 0 restarts"));
    for line in ["Id=probe-target.service", "ActiveState=failed", "Result=exit-code", "ExecMainStatus=3"] {
        assert!(status.text.lines().any(|l| l == line), "{line} in:\n{}", status.text);
    }
    assert!(status.text.lines().any(|l| l.starts_with("InactiveEnterTimestamp=20")), "{}", status.text);

    let logs = probe(Probe::UnitLogs, Some(UNIT), None, &SystemdLink::Up(&systemd), &config).await;
    assert!(logs.text.contains("]: probe-target: cannot open /etc/probe-target.conf"), "{}", logs.text);
    assert!(!logs.text.contains("hunter2"), "the password is redacted:\n{}", logs.text);
    assert!(logs.text.contains("probe-target: connecting with password=[redacted:password]"), "{}", logs.text);
    assert!(logs.text.lines().all(|l| l.starts_with("20")), "each line starts with its time:\n{}", logs.text);

    let failed = probe(Probe::FailedUnits, None, None, &SystemdLink::Up(&systemd), &config).await;
    assert!(failed.summary.contains(UNIT), "{}", failed.summary);
    assert!(
        failed.text.lines().any(|l| l.starts_with(&format!("{UNIT} Result=exit-code ExecMainStatus=3"))),
        "{}",
        failed.text
    );

    let absent =
        probe(Probe::UnitStatus, Some("no-such-probe.service"), None, &SystemdLink::Up(&systemd), &config).await;
    assert_eq!(absent.text, "no unit named no-such-probe.service is loaded");

    let err =
        investigate::run(&action(Probe::FailedUnits, None, None), &SystemdLink::Down("no bus here".into()), &config)
            .await
            .unwrap_err()
            .to_string();
    assert_eq!(err, "failed_units: needs systemd, which cannot be reached: no bus here");
}

#[tokio::test]
async fn host_probes_need_no_systemd() {
    let bed = Bed::new("investigate-host", "suggest");
    let config = config(&bed);
    let no_systemd = &SystemdLink::Down("not connected in this test".into());

    let disk = probe(Probe::DiskUsage, None, Some("/"), no_systemd, &config).await;
    let percent = disk.text.lines().find_map(|l| l.strip_prefix("UsedPercent=")).expect("a percentage");
    let percent: f64 = percent.parse().unwrap();
    assert!((0.0..=100.0).contains(&percent), "{}", disk.text);
    assert!(disk.summary.starts_with("/: ") && disk.summary.contains("% used"), "{}", disk.summary);
    let err = investigate::run(&action(Probe::DiskUsage, None, Some("/nonexistent/probe")), no_systemd, &config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/probe"), "{err}");

    let top = probe(Probe::TopProcesses, None, None, no_systemd, &config).await;
    let rows = top.text.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).count();
    assert!(rows >= 2, "at least one process in each ranking:\n{}", top.text);
    assert!(top.summary.starts_with("busiest "), "{}", top.summary);

    let generations = probe(Probe::Generations, None, None, no_systemd, &config).await;
    let profile = config.nixos.profile.display().to_string();
    assert_eq!(generations.summary, format!("no system profile at {profile}"));
    assert!(generations.text.starts_with(&format!("no system profile at {profile}")), "{}", generations.text);
}
