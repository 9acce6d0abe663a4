//! A generated burst of error lines for the evidence benchmark
//! (`benches/evidence.rs`) and its functional test (`tests/evidence.rs`):
//! `KINDS` kinds of event, each line with its own numbers, ids, hashes, paths
//! and addresses, mixed in a fixed pseudo-random order, and a way to write
//! them into the test container's journal quickly.

use std::time::{Duration, Instant};

use macha_testbed::container::Container;

/// Distinct kinds of event in a burst.
pub const KINDS: usize = 50;

/// The unit that writes the burst.
pub const UNIT: &str = "macha-burst.service";

/// Where the burst file lives in the container.
const FILE: &str = "/var/tmp/macha-burst.txt";

/// The last line, at priority info: not part of the burst (which is
/// err-or-worse), it tells when journald has read everything.
const DONE: &str = "macha-burst: all lines written";

const SUBSYSTEMS: [&str; 10] =
    ["archive", "billing", "cache", "gateway", "ingest", "mailer", "payments", "queue", "search", "storage"];

/// One kind of event in a burst.
pub struct Kind {
    /// The text macha shows for every line of this kind, its variable parts
    /// masked.
    pub template: String,
    pub priority: u8,
    /// Lines of this kind in the burst.
    pub count: u64,
}

/// A burst: the text `cat` writes (one `<PRIORITY>MESSAGE` line per entry)
/// and what it holds.
pub struct Burst {
    pub text: String,
    pub kinds: Vec<Kind>,
}

/// A deterministic pseudo-random sequence (64-bit LCG, Knuth's constants).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn hex(&mut self, digits: usize) -> String {
        (0..digits).map(|_| char::from_digit(self.below(16) as u32, 16).unwrap()).collect()
    }

    fn base36(&mut self, digits: usize) -> String {
        (0..digits).map(|_| char::from_digit(self.below(36) as u32, 36).unwrap()).collect()
    }
}

/// Kind `k`: subsystem `k % 10`, shape `k / 10`.
fn shape(k: usize) -> usize {
    k / SUBSYSTEMS.len()
}

fn priority(k: usize) -> u8 {
    [3, 3, 3, 2, 1][shape(k)]
}

fn template(k: usize) -> String {
    let sub = SUBSYSTEMS[k % SUBSYSTEMS.len()];
    match shape(k) {
        0 => format!("{sub}: connection to <ip>:<num> refused after <num> ms"),
        1 => format!("{sub}: cannot open <path>: No such file or directory"),
        2 => format!("{sub}: request <uuid> failed with status <num> after <num>ms"),
        3 => format!("{sub}: worker <num> crashed at address <hex> (signal <num>)"),
        _ => format!("{sub}: checksum mismatch for object <hex> in session <id>"),
    }
}

/// One line of kind `k`, with fresh variable parts.
fn message(k: usize, r: &mut Lcg) -> String {
    let sub = SUBSYSTEMS[k % SUBSYSTEMS.len()];
    match shape(k) {
        0 => format!(
            "{sub}: connection to 10.{}.{}.{}:{} refused after {} ms",
            r.below(256),
            r.below(256),
            r.below(256),
            1024 + r.below(60000),
            r.below(30000)
        ),
        1 => format!(
            "{sub}: cannot open /var/lib/{sub}/shard-{}/seg{}.db: No such file or directory",
            r.below(64),
            r.below(100000)
        ),
        2 => format!(
            "{sub}: request {}-{}-4{}-a{}-{} failed with status {} after {}ms",
            r.hex(8),
            r.hex(4),
            r.hex(3),
            r.hex(3),
            r.hex(12),
            500 + r.below(4),
            r.below(90000)
        ),
        3 => format!(
            "{sub}: worker {} crashed at address 0x{:x} (signal {})",
            r.below(512),
            r.next(),
            [6, 11, 7][r.below(3) as usize]
        ),
        _ => format!(
            "{sub}: checksum mismatch for object {}a{} in session {}k{}",
            r.below(10),
            r.hex(38),
            r.below(10),
            r.base36(18)
        ),
    }
}

/// The index whose share of the weights' sum holds `x`.
fn pick(weights: &[u64], mut x: u64) -> usize {
    for (k, w) in weights.iter().enumerate() {
        if x < *w {
            return k;
        }
        x -= w;
    }
    unreachable!("x is below the sum of the weights")
}

impl Burst {
    /// `lines` lines of `KINDS` kinds; kind `k` is drawn with weight
    /// `1 + (7k mod 13)`, so the counts differ from kind to kind.
    pub fn generate(lines: usize) -> Burst {
        let weights: Vec<u64> = (0..KINDS as u64).map(|k| 1 + (7 * k) % 13).collect();
        let total: u64 = weights.iter().sum();
        let mut r = Lcg(0x006d_6163_6861);
        let mut kinds: Vec<Kind> =
            (0..KINDS).map(|k| Kind { template: template(k), priority: priority(k), count: 0 }).collect();
        let mut text = String::with_capacity(lines * 100);
        for _ in 0..lines {
            let k = pick(&weights, r.below(total));
            kinds[k].count += 1;
            text.push_str(&format!("<{}>{}\n", kinds[k].priority, message(k, &mut r)));
        }
        text.push_str(&format!("<6>{DONE}\n"));
        Burst { text, kinds }
    }

    /// Writes the burst into the container's journal: one unit `cat`s the
    /// file (journald's rate limit off for it, as a burst from a real
    /// service would need to be kept whole), then waits until journald has
    /// read the last line and synced. Returns how long journald took.
    pub fn plant(&self, c: &Container) -> Duration {
        c.write_file(FILE, &self.text).expect("write the burst file");
        c.install_unit(
            UNIT,
            &format!("[Service]\nType=oneshot\nExecStart=/bin/cat {FILE}\nLogRateLimitIntervalSec=0\n"),
        )
        .expect("install the burst unit");
        let started = Instant::now();
        c.exec_ok(&["systemctl", "start", UNIT]).expect("run the burst unit");
        c.wait_for(Duration::from_secs(120), || {
            c.exec_ok(&["journalctl", "-q", "-u", UNIT, "-n", "1", "-o", "cat"]).is_ok_and(|last| last.trim() == DONE)
        })
        .expect("journald reads the whole burst");
        c.sync_journal().expect("journalctl --sync");
        started.elapsed()
    }
}

/// The cursor of the container's newest journal entry: a cycle that starts
/// there reads exactly what is written after.
pub fn journal_tail(c: &Container) -> String {
    let tail = c.exec_ok(&["journalctl", "-q", "-n", "1", "--show-cursor", "-o", "cat"]).expect("journal tail");
    tail.lines().find_map(|l| l.strip_prefix("-- cursor: ")).expect("journalctl shows a cursor").to_owned()
}
