//! Journal entries folded into templates as they are read.
//!
//! A unit can write a hundred thousand error lines between two checks; the
//! model reads a few thousand tokens. Lines that differ only in their variable
//! parts (numbers, ids, hex, UUIDs, paths, addresses, times) report the same
//! kind of event, so they are folded into one template per writer and
//! priority, with a count, the first and last time and a few examples. Memory
//! is bounded by [`Limits`] however many entries are read, and whatever does
//! not fit is counted, never dropped silently.
//!
//! The fold is what observe reads the journal into (`observe::journal`);
//! how a fold becomes the `<journal>` block of a prompt is `decide::evidence`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use regex_automata::meta;
use serde::Serialize;

use crate::redact::redact;

/// Bounds of one fold: what it keeps however many entries it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Limits {
    /// Entries kept exactly as written; past this many, a template keeps only
    /// its most recent `examples`.
    pub verbatim: usize,
    /// Templates in one fold; entries of a new kind past this are counted per
    /// priority, not folded.
    pub templates: usize,
    /// Examples a template keeps once the fold is past `verbatim`.
    pub examples: usize,
    /// Bytes of template text and examples one fold keeps.
    pub bytes: usize,
}

impl Limits {
    /// 50 entries as written (what the snapshot kept per unit before
    /// folding), 256 templates of 3 examples, 128 KiB: a fold of 100 000
    /// entries of 50 kinds stays under 100 KiB.
    pub const DEFAULT: Limits = Limits { verbatim: 50, templates: 256, examples: 3, bytes: 128 * 1024 };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The fields journald records about the writer of an entry. A client cannot
/// forge the unit or the uid; the command name is the process's own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize, Default)]
pub struct Writer {
    /// `_SYSTEMD_UNIT`.
    pub unit: Option<String>,
    /// `_COMM`.
    pub comm: Option<String>,
    /// `_UID`.
    pub uid: Option<u32>,
}

/// One entry as written (redacted), kept as an example of its template.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Example {
    pub time: DateTime<Utc>,
    pub message: String,
}

/// Entries of one writer and priority whose messages differ only in their
/// masked parts.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Template {
    pub writer: Writer,
    pub priority: u8,
    /// The message with its variable parts masked (see [`mask`]).
    pub text: String,
    /// Entries folded into this template.
    pub count: u64,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    /// The most recent entries, oldest first: all of them while the fold is
    /// verbatim, at most `Limits::examples` after.
    pub examples: VecDeque<Example>,
}

impl Template {
    fn is(&self, writer: &Writer, priority: u8, text: &str) -> bool {
        self.priority == priority && self.text == text && &self.writer == writer
    }
}

/// Entries folded into templates as they are read, within [`Limits`].
///
/// Every entry pushed is counted exactly once: in its template's `count`, or
/// in [`unfolded`](Self::unfolded) when the table was full. So the counts add
/// up to [`entries`](Self::entries).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Folded {
    templates: Vec<Template>,
    /// Template positions by the hash of writer, priority and text.
    #[serde(skip)]
    index: HashMap<u64, Vec<usize>>,
    entries: u64,
    unfolded: BTreeMap<u8, u64>,
    /// Every entry so far is kept as an example.
    verbatim: bool,
    bytes: usize,
    limits: Limits,
}

impl Default for Folded {
    fn default() -> Self {
        Self::new(Limits::DEFAULT)
    }
}

impl Folded {
    pub fn new(limits: Limits) -> Self {
        Self {
            templates: Vec::new(),
            index: HashMap::new(),
            entries: 0,
            unfolded: BTreeMap::new(),
            verbatim: true,
            bytes: 0,
            limits,
        }
    }

    /// Entries pushed.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The templates, in the order their first entry arrived.
    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// Per priority, entries counted but not folded: their kind was new when
    /// the template table or its bytes were full.
    pub fn unfolded(&self) -> &BTreeMap<u8, u64> {
        &self.unfolded
    }

    /// Whether every entry is kept as written, so the lines can be shown
    /// exactly as they were.
    pub fn is_verbatim(&self) -> bool {
        self.verbatim
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Folds one entry. The message is redacted before anything of it is
    /// kept, so no secret is held in memory longer than the read.
    pub fn push(&mut self, writer: Writer, priority: u8, time: DateTime<Utc>, message: &str) {
        self.entries += 1;
        if self.verbatim && self.entries > self.limits.verbatim as u64 {
            self.end_verbatim();
        }
        let message = redact(message);
        let text = mask(&message);
        let Some(i) = self.template_for(writer, priority, &text, time) else {
            *self.unfolded.entry(priority).or_default() += 1;
            self.end_verbatim();
            return;
        };
        let t = &mut self.templates[i];
        t.count += 1;
        t.first = t.first.min(time);
        t.last = t.last.max(time);
        if !self.keep_example(i, Example { time, message: message.into_owned() }) {
            self.end_verbatim();
        }
    }

    /// The template `text` of `writer` at `priority` belongs to, made if
    /// there is room; `None` if there is none.
    fn template_for(&mut self, writer: Writer, priority: u8, text: &str, time: DateTime<Utc>) -> Option<usize> {
        let mut hasher = std::hash::DefaultHasher::new();
        (&writer, priority, text).hash(&mut hasher);
        let key = hasher.finish();
        if let Some(i) = self
            .index
            .get(&key)
            .and_then(|c| c.iter().copied().find(|&i| self.templates[i].is(&writer, priority, text)))
        {
            return Some(i);
        }
        if self.templates.len() >= self.limits.templates || self.bytes + text.len() > self.limits.bytes {
            return None;
        }
        self.bytes += text.len();
        self.templates.push(Template {
            writer,
            priority,
            text: text.to_owned(),
            count: 0,
            first: time,
            last: time,
            examples: VecDeque::new(),
        });
        let i = self.templates.len() - 1;
        self.index.entry(key).or_default().push(i);
        Some(i)
    }

    /// Keeps `example` among template `i`'s most recent ones, in time order.
    /// False when it is not kept: older than those kept, or no bytes left.
    fn keep_example(&mut self, i: usize, example: Example) -> bool {
        let cap = if self.verbatim { usize::MAX } else { self.limits.examples };
        let examples = &mut self.templates[i].examples;
        let mut at = examples.partition_point(|e| e.time <= example.time);
        if examples.len() >= cap {
            if at == 0 {
                return false;
            }
            self.bytes -= examples.pop_front().map_or(0, |e| e.message.len());
            at -= 1;
        }
        if self.bytes + example.message.len() > self.limits.bytes {
            return false;
        }
        self.bytes += example.message.len();
        examples.insert(at, example);
        true
    }

    /// Past `Limits::verbatim`: each template keeps only its most recent
    /// examples from now on.
    fn end_verbatim(&mut self) {
        if !self.verbatim {
            return;
        }
        self.verbatim = false;
        for t in &mut self.templates {
            while t.examples.len() > self.limits.examples {
                let dropped = t.examples.pop_front().map_or(0, |e| e.message.len());
                self.bytes -= dropped;
            }
        }
    }
}

/// The variable parts masked, by kind, tried at each position in this order
/// (the first kind that matches where the leftmost match starts wins).
/// Matches without a digit are left as they are (`deadbeef`, `std::io`),
/// and so are short digit runs inside a word (`ext4`, `sha256`).
const KINDS: [(Kind, &str); 9] = [
    (Kind::Uuid, r"(?-u:\b)[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?-u:\b)"),
    (Kind::Url, r"(?-u:\b)[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'`<>]+"),
    (Kind::Mac, r"(?-u:\b)[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}(?-u:\b)"),
    (
        Kind::Time,
        r"(?-u:\b)[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?(?-u:\b)|(?-u:\b)[0-9]{1,2}:[0-9]{2}:[0-9]{2}(?:[.,][0-9]+)?(?-u:\b)",
    ),
    (
        Kind::Ip,
        r"(?-u:\b)[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?-u:\b)|(?-u:\b)(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}(?-u:\b)|(?-u:\b)(?:[0-9a-fA-F]{1,4}:){1,6}:(?:[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{1,4})*)?|::[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{1,4})*(?-u:\b)",
    ),
    // A path starts the message or follows a separator, which the match
    // includes and the mask keeps (it is never one of `~./`).
    (Kind::Path, r#"(?:^|[\s=:'"(\[<,])(?:~|\.\.?)?/[A-Za-z0-9_.@%+~-]+(?:/[A-Za-z0-9_.@%+~-]*)*"#),
    (Kind::Hex, r"(?-u:\b)(?:0[xX][0-9a-fA-F]+|[0-9a-fA-F]{6,})(?-u:\b)"),
    (Kind::Id, r"(?-u:\b)[A-Za-z0-9_]{16,}(?-u:\b)"),
    (Kind::Num, r"[0-9]+(?:[.,][0-9]+)*"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Uuid,
    Url,
    Mac,
    Time,
    Ip,
    Path,
    Hex,
    Id,
    Num,
}

/// All of [`KINDS`] in one matcher that says which kind matched, without
/// resolving capture groups (which cost most of the masking when this was
/// one pattern with a group per kind).
static VARIABLE: LazyLock<meta::Regex> =
    LazyLock::new(|| meta::Regex::new_many(&KINDS.map(|(_, pattern)| pattern)).expect("the masks compile"));

/// Longest digit run inside a word that stays as it is (`ext4`, `sha256`,
/// `x86`): a name, not a value.
const NAME_DIGITS: usize = 3;

/// `message` with its variable parts masked: `<uuid>`, `<url>`, `<time>`,
/// `<mac>`, `<ip>`, `<path>`, `<hex>`, `<id>` (a long mix of letters and
/// digits) and `<num>`. Two messages with the same mask report the same kind
/// of event.
pub fn mask(message: &str) -> Cow<'_, str> {
    if !message.bytes().any(|b| b.is_ascii_digit() || b == b'/') {
        return Cow::Borrowed(message);
    }
    let mut out = String::new();
    let mut last = 0;
    for m in VARIABLE.find_iter(message) {
        out.push_str(&message[last..m.start()]);
        push_masked(&mut out, message, KINDS[m.pattern().as_usize()].0, m.range());
        last = m.end();
    }
    if last == 0 && out.is_empty() {
        return Cow::Borrowed(message);
    }
    out.push_str(&message[last..]);
    Cow::Owned(out)
}

/// Appends the mask of `message[span]`, a match of `kind`.
fn push_masked(out: &mut String, message: &str, kind: Kind, span: std::ops::Range<usize>) {
    let whole = &message[span.clone()];
    let has_digit = whole.bytes().any(|b| b.is_ascii_digit());
    let mask = match kind {
        Kind::Path => {
            let at = whole.find(['~', '.', '/']).unwrap_or(0);
            out.push_str(&whole[..at]);
            "<path>"
        }
        Kind::Uuid => "<uuid>",
        Kind::Url => "<url>",
        Kind::Mac => "<mac>",
        Kind::Time => "<time>",
        _ if !has_digit => whole,
        Kind::Ip => "<ip>",
        Kind::Id if whole.bytes().any(|b| b.is_ascii_alphabetic()) => "<id>",
        Kind::Hex if !whole.bytes().all(|b| b.is_ascii_digit()) => "<hex>",
        Kind::Id | Kind::Hex => "<num>",
        Kind::Num => {
            let in_word =
                message[..span.start].chars().next_back().is_some_and(|p| p.is_ascii_alphabetic() || p == '_');
            if in_word && whole.len() <= NAME_DIGITS {
                whole
            } else {
                "<num>"
            }
        }
    };
    out.push_str(mask);
}

/// Syslog's names of the priorities.
pub fn priority_name(priority: u8) -> &'static str {
    match priority {
        0 => "emerg",
        1 => "alert",
        2 => "crit",
        3 => "err",
        4 => "warning",
        5 => "notice",
        6 => "info",
        _ => "debug",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + second, 0).unwrap()
    }

    fn writer(unit: &str, uid: u32) -> Writer {
        Writer { unit: Some(unit.into()), comm: Some("app".into()), uid: Some(uid) }
    }

    #[test]
    fn variable_parts_are_masked_and_names_kept() {
        let cases = [
            ("disk error at sector 1234 on /dev/sda1", "disk error at sector <num> on <path>"),
            ("connect to 10.0.0.7:5432 failed after 12ms", "connect to <ip>:<num> failed after <num>ms"),
            ("session 3f2a9c1e-0b4d-4e8f-9a6b-7c5d3e2f1a0b closed", "session <uuid> closed"),
            ("object 0x7ffd5e3c at deadbeef", "object <hex> at deadbeef"),
            ("commit 9fceb02d0ae598e95dc970b74767f19372d61af8 built", "commit <hex> built"),
            ("fe80::1ff:fe23:4567:890a is up", "<ip> is up"),
            ("mac 00:1a:2b:3c:4d:5e joined", "mac <mac> joined"),
            ("mac 00:11:22:33:44:55 joined", "mac <mac> joined"),
            ("started at 2026-01-01T12:00:00Z, again 12:00:05", "started at <time>, again <time>"),
            ("GET https://api.example.org/v1/x?id=5 failed", "GET <url> failed"),
            ("ext4 and sha256 and x86_64 on eth0", "ext4 and sha256 and x86_64 on eth0"),
            ("worker 12 of 16, job 3/5", "worker <num> of <num>, job <num>/<num>"),
            ("std::io::Error and I/O error", "std::io::Error and I/O error"),
            ("token abc123def456ghi789jkl0 expired", "token <id> expired"),
            ("cannot open /etc/demo-web.conf: No such file", "cannot open <path>: No such file"),
            ("pid=4242 path=/var/lib/x", "pid=<num> path=<path>"),
        ];
        for (line, want) in cases {
            assert_eq!(mask(line), want, "{line}");
        }
    }

    #[test]
    fn near_identical_lines_fold_into_one_template_per_writer_and_priority() {
        let mut f = Folded::new(Limits { verbatim: 0, ..Limits::DEFAULT });
        for i in 0..1000 {
            f.push(writer("a.service", 0), 3, t(i), &format!("disk error at sector {i}"));
        }
        f.push(writer("a.service", 0), 2, t(5), "disk error at sector 7");
        f.push(writer("a.service", 1000), 3, t(6), "disk error at sector 8");
        assert_eq!(f.templates().len(), 3);
        let main = &f.templates()[0];
        assert_eq!((main.count, main.first, main.last), (1000, t(0), t(999)));
        let kept: Vec<&str> = main.examples.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(kept, ["disk error at sector 997", "disk error at sector 998", "disk error at sector 999"]);
        assert_eq!(f.entries(), 1002);
    }

    #[test]
    fn memory_is_bounded_by_the_byte_limit() {
        let mut f = Folded::new(Limits { bytes: 4096, ..Limits::DEFAULT });
        for i in 0..2000 {
            f.push(
                writer("a.service", 0),
                3,
                t(i),
                &format!("kind{} {}", "x".repeat(i as usize % 97), "y".repeat(300)),
            );
        }
        assert!(f.bytes <= 4096, "{}", f.bytes);
        let stored: usize = f
            .templates()
            .iter()
            .map(|t| t.text.len() + t.examples.iter().map(|e| e.message.len()).sum::<usize>())
            .sum();
        assert_eq!(stored, f.bytes);
        assert_eq!(f.templates().iter().map(|t| t.count).sum::<u64>() + f.unfolded().values().sum::<u64>(), 2000);
    }

    #[test]
    fn secrets_are_redacted_before_they_are_kept() {
        let mut f = Folded::default();
        f.push(writer("a.service", 0), 3, t(0), "login with password=hunter2hunter2 failed");
        assert!(!format!("{f:?}").contains("hunter2"));
    }
}
