//! Crash safety: the daemon and `macha-approve` are killed with SIGKILL at
//! random points during 1000 queue and approval operations. No item may be
//! lost, duplicated or carried out twice, nothing may run without an
//! "approved" record first, and the audit chain must still verify.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Bed;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const UNITS: usize = 10;
const OPERATIONS: usize = 1000;
const BATCH: usize = 8;

/// A small deterministic generator, seeded from the clock and printed, so a
/// failing run can be replayed with MACHA_CRASH_SEED.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn unit(i: usize) -> String {
    format!("crash{i:02}.service")
}

fn sigkill(child: &mut Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.wait();
}

fn max_id(bed: &Bed) -> i64 {
    let path = bed.state_dir().join("state.db");
    if !path.exists() {
        return 0;
    }
    let db = rusqlite::Connection::open(path).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.query_row("SELECT COALESCE(MAX(id), 0) FROM approvals", [], |r| r.get(0)).unwrap_or(0)
}

#[test]
fn sigkill_at_random_points_loses_duplicates_and_repeats_nothing() {
    let bed = Bed::new("crash", "suggest");
    // Fast actions, so that kills land before, during and after them.
    let text = std::fs::read_to_string(&bed.config).unwrap().replace("settle_time = 1", "settle_time = 0");
    std::fs::write(&bed.config, text).unwrap();
    for i in 0..UNITS {
        bed.c.install_unit(&unit(i), "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/false\n").unwrap();
        bed.c.start_unit(&unit(i)).unwrap();
    }
    for i in 0..UNITS {
        bed.c.wait_unit_state(&unit(i), "failed", Duration::from_secs(20)).unwrap();
    }
    let seed = std::env::var("MACHA_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("MACHA_CRASH_SEED={seed}");
    let mut rng = Lcg(seed);

    let mut daemon = bed.daemon(Stdio::null());
    let started = Instant::now();
    while max_id(&bed) == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "the daemon queued nothing");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mut ops, mut daemon_kills, mut cli_kills) = (0, 0, 0);
    let mut own_restarts = [0usize; UNITS];
    while ops < OPERATIONS {
        if rng.next(100) < 10 {
            // Kill the daemon wherever it is (observing, deciding, queueing, writing the audit).
            std::thread::sleep(Duration::from_millis(rng.next(300)));
            sigkill(&mut daemon);
            daemon = bed.daemon(Stdio::null());
            daemon_kills += 1;
            ops += 1;
            continue;
        }
        if rng.next(100) < 25 {
            // A unit fails anew: new evidence, so the daemon queues a new item.
            let i = rng.next(UNITS as u64) as usize;
            bed.c.exec_ok(&["systemctl", "restart", "--no-block", &unit(i)]).unwrap();
            own_restarts[i] += 1;
            ops += 1;
            continue;
        }
        let top = max_id(&bed);
        let mut batch: Vec<(Child, u64)> = (0..BATCH)
            .map(|_| {
                // Mostly the newest items, which are the ones still open.
                let back = rng.next((2 * UNITS as u64).min(top as u64));
                let id = (top - back as i64).to_string();
                let verb = if rng.next(10) < 7 { "approve" } else { "reject" };
                let child = Command::new(common::macha_bin())
                    .arg("--config")
                    .arg(&bed.config)
                    .args(["approve", verb, &id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                (child, if rng.next(2) == 0 { rng.next(120) } else { rng.next(400) })
            })
            .collect();
        let t0 = Instant::now();
        for (child, kill_after) in &mut batch {
            let at = Duration::from_millis(*kill_after);
            if let Some(left) = at.checked_sub(t0.elapsed()) {
                std::thread::sleep(left);
            }
            if child.try_wait().unwrap().is_none() {
                sigkill(child);
                cli_kills += 1;
            } else {
                child.wait().unwrap();
            }
        }
        ops += BATCH;
    }
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM).unwrap();
    daemon.wait().unwrap();
    eprintln!(
        "{ops} operations, {daemon_kills} daemon kills, {cli_kills} approve/reject kills, {} items",
        max_id(&bed)
    );

    // The queue: one open item per action and unit at most.
    let db = rusqlite::Connection::open(bed.state_dir().join("state.db")).unwrap();
    let mut stmt = db.prepare("SELECT id, unit, status FROM approvals").unwrap();
    let rows: Vec<(i64, String, String)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
    let mut open_per_unit: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, u, status) in &rows {
        if status == "pending" {
            *open_per_unit.entry(u).or_default() += 1;
        }
    }
    assert!(open_per_unit.values().all(|n| *n <= 1), "duplicate pending items: {open_per_unit:?}");

    let actions = bed.audit("actions.jsonl");
    let ids_in_db: BTreeSet<i64> = rows.iter().map(|r| r.0).collect();
    let mut outcomes_per_id: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for a in &actions {
        if let Some(id) = a["approval_id"].as_i64() {
            assert!(ids_in_db.contains(&id), "item {id} is in the audit trail but lost from the queue");
            outcomes_per_id.entry(id).or_default().push(a["outcome"].as_str().unwrap().to_owned());
        }
    }
    for (id, outcomes) in &outcomes_per_id {
        let approved = outcomes.iter().filter(|o| *o == "approved").count();
        let ran = outcomes.iter().filter(|o| *o == "succeeded" || *o == "failed").count();
        assert!(approved <= 1 && ran <= 1, "item {id} carried out twice: {outcomes:?}");
        assert!(ran == 0 || approved == 1, "item {id} ran without an approved record: {outcomes:?}");
    }
    for (id, _, status) in &rows {
        if status == "executed" || status == "failed" {
            let o = outcomes_per_id.get(id).cloned().unwrap_or_default();
            assert!(o.iter().any(|x| x == "approved"), "item {id} is {status} with no approved record: {o:?}");
        }
    }

    // systemd agrees: no unit started more often than approvals allowed.
    bed.c.sync_journal().unwrap();
    for (i, own) in own_restarts.iter().enumerate() {
        let u = unit(i);
        let log = bed.c.exec_ok(&["journalctl", "-u", &u, "-o", "cat", "--no-pager"]).unwrap();
        let starts = log.lines().filter(|l| l.starts_with("Started ")).count();
        let approved = actions.iter().filter(|a| a["target"] == u.as_str() && a["outcome"] == "approved").count();
        let allowed = 1 + own + approved;
        assert!(starts <= allowed, "{u} started {starts} times: 1 + {own} by the test + {approved} approvals");
    }

    // The audit trail still verifies, or names the one record a kill tore.
    let out = bed.run("macha-logs", &["verify", "--json"]);
    let reports: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let broken: Vec<&Value> = reports.iter().filter(|r| !r["broken"].is_null()).collect();
    assert!(broken.len() <= 1, "{reports:#?}");
    let ran = outcomes_per_id.values().filter(|o| o.iter().any(|x| x == "succeeded" || x == "failed")).count();
    eprintln!("{} items in the audit trail, {ran} carried out", outcomes_per_id.len());
    assert!(ran >= 10, "the run carried out approvals: {ran}");
}
