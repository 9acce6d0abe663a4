//! What the last switch changed: the units of two NixOS system generations
//! compared (`GenerationDiff`).
//!
//! A generation is a store path whose `etc/systemd/system` holds the unit
//! files systemd loads, each a link into the store (`nginx.service ->
//! /nix/store/...-unit-nginx.service/nginx.service`), with drop-in
//! directories (`NAME.d/*.conf`) and dependency directories (`NAME.wants/`,
//! `NAME.requires/`). Two generations' units are compared by those links'
//! targets first (the same target is the same file: the store is
//! immutable), so only a unit that changed is read; its `ExecStart`,
//! `Environment` and dependencies are compared line by line, and the store
//! paths it names are read as packages (name and version from the store
//! path's name, as Nix's `parseDrvName` splits them). Links are read and
//! files opened for reading, never executed. Everything is bounded: the
//! entries read, the bytes of a unit file, the units detailed, the values
//! kept. The store is world-readable, so the daemon's unprivileged user
//! reads all of it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use chrono::{DateTime, Utc};

use super::nixos::{self, Generations};
use crate::bounded::{self, FileKind, Size};
use crate::text::cut;

/// Entries of a generation's `etc/systemd/system` (and of its
/// subdirectories) read, at most.
pub const MAX_ENTRIES: usize = 10_000;
/// Largest unit file or drop-in read.
pub const UNIT_FILE: FileKind = FileKind { name: "the unit file", limit: Size::kib(64) };
/// Units whose changes are detailed; the others are counted.
pub const MAX_DETAILED: usize = 100;
/// Values kept per directive, per side.
const MAX_VALUES: usize = 16;
/// Longest value kept, in characters.
const MAX_VALUE_CHARS: usize = 300;

/// The directives compared: what a unit runs, its environment, and what it
/// depends on.
const DIRECTIVES: [&str; 13] = [
    "ExecStart",
    "ExecStartPre",
    "ExecStartPost",
    "ExecReload",
    "ExecStop",
    "Environment",
    "EnvironmentFile",
    "After",
    "Requires",
    "Wants",
    "BindsTo",
    "Requisite",
    "PartOf",
];

/// What the last switch changed: the running generation against the one
/// before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationDiff {
    pub from: GenerationInfo,
    pub to: GenerationInfo,
    /// The profile's generation (what boots next; the running one unless
    /// a `boot` or a `test` switch left them apart).
    pub profile: Option<u32>,
    /// The generation the host booted into (`/run/booted-system`, next to
    /// the current system's link), and when it booted.
    pub booted: Option<u32>,
    pub boot_time: Option<DateTime<Utc>>,
    pub units: UnitsDiff,
    /// The packages of the system path (`sw`: what the system puts on
    /// `PATH`) whose version changed, or that came or went.
    #[serde(default)]
    pub packages: Vec<Change>,
    /// The rest of the system closure, as far as its links tell: its own
    /// parts (kernel, initrd, systemd, ...) and the files of its `etc`.
    #[serde(default)]
    pub system: SystemDiff,
}

/// One generation: its number, its system's store path, and when the
/// profile was switched to it (its link's time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationInfo {
    pub number: u32,
    pub system: String,
    pub switched_at: Option<DateTime<Utc>>,
}

/// The diff of the running generation against the newest one before it;
/// `None` when this is no NixOS host (no profile), the running system is no
/// generation of the profile, or it is the first.
pub fn last_switch(profile: &Path, current_system: &Path) -> std::io::Result<Option<GenerationDiff>> {
    Ok(last_switch_of(&nixos::read(profile, current_system)?, current_system))
}

/// [`last_switch`] of generations already read (`current_system` names
/// the link `booted-system` sits beside).
pub fn last_switch_of(generations: &Generations, current_system: &Path) -> Option<GenerationDiff> {
    let booted_link = current_system.with_file_name("booted-system");
    let booted_system = std::fs::read_link(&booted_link).ok().map(|p| p.display().to_string());
    between(generations, booted_system.as_deref(), boot_time())
}

/// [`last_switch`] of generations already read.
pub fn between(
    generations: &Generations,
    booted_system: Option<&str>,
    boot_time: Option<DateTime<Utc>>,
) -> Option<GenerationDiff> {
    let running = generations.running_generation()?;
    let before = generations.list.iter().rev().find(|g| g.number < running)?;
    let now = generations.get(running)?;
    let info =
        |g: &nixos::Generation| GenerationInfo { number: g.number, system: g.target.clone(), switched_at: g.created };
    let booted = booted_system.and_then(|b| generations.list.iter().rev().find(|g| g.target == b)).map(|g| g.number);
    Some(GenerationDiff {
        from: info(before),
        to: info(now),
        profile: generations.profile,
        booted,
        boot_time,
        units: diff_units(Path::new(&before.target), Path::new(&now.target)),
        packages: diff_packages(Path::new(&before.target), Path::new(&now.target)),
        system: diff_system(Path::new(&before.target), Path::new(&now.target)),
    })
}

/// When this host booted (`btime` of `/proc/stat`).
fn boot_time() -> Option<DateTime<Utc>> {
    let stat = bounded::read(Path::new("/proc/stat"), FileKind { name: "/proc/stat", limit: Size::kib(256) }).ok()?;
    let text = String::from_utf8_lossy(&stat);
    let secs = text.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    DateTime::from_timestamp(secs, 0)
}

/// Entries of a system path's `bin` read, at most.
pub const MAX_PROGRAMS: usize = 5_000;

/// The packages a system's `sw/bin` links into, by name, with their
/// versions (a name can come in more than one version).
fn packages_of(system: &Path) -> BTreeMap<String, BTreeSet<Option<String>>> {
    let mut out: BTreeMap<String, BTreeSet<Option<String>>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(system.join("sw/bin")) else { return out };
    for entry in entries.flatten().take(MAX_PROGRAMS) {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        if let Some(p) = target.to_str().and_then(package_of) {
            out.entry(p.name).or_default().insert(p.version);
        }
    }
    out
}

/// How the packages of system `to`'s path differ from `from`'s: one change
/// per package name, its newest version on each side.
pub fn diff_packages(from: &Path, to: &Path) -> Vec<Change> {
    package_changes(&packages_of(from), &packages_of(to))
}

fn package_changes(
    before: &BTreeMap<String, BTreeSet<Option<String>>>,
    after: &BTreeMap<String, BTreeSet<Option<String>>>,
) -> Vec<Change> {
    let newest = |v: Option<&BTreeSet<Option<String>>>| v.and_then(|s| s.iter().flatten().next_back().cloned());
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter(|n| before.get(*n) != after.get(*n))
        .take(MAX_DETAILED)
        .map(|n| Change::Package { name: n.clone(), from: newest(before.get(n)), to: newest(after.get(n)) })
        .collect()
}

/// The parts of a system compared as a whole: the system path (`sw`) and
/// `etc` are compared in detail instead (`diff_packages`, the units and
/// [`SystemDiff::etc`]).
const DETAILED_PARTS: [&str; 2] = ["sw", "etc"];
/// Depth of `etc` read, at most.
const MAX_ETC_DEPTH: usize = 12;

/// How the rest of two systems' closures differ, as far as links tell
/// without running anything: the Nix database (the closure's full list of
/// store paths) is not read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemDiff {
    /// The system's own links (`kernel`, `initrd`, `systemd`, `firmware`,
    /// `kernel-modules`, ...) that point at another store path, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartChange>,
    /// Files of the system's `etc` (its unit files aside) added, removed or
    /// linked to another store path, by their path under `/etc`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etc: Vec<EtcChange>,
    /// Changes beyond those listed (at most [`MAX_DETAILED`] of each).
    #[serde(default)]
    pub more: usize,
    /// Entries left unread past [`MAX_ENTRIES`] (then the diff is partial).
    #[serde(default)]
    pub unread: usize,
}

/// A part of the system that points at another store path: the store
/// path names (`linux-6.6.30`), none where it is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartChange {
    pub name: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// A file of `/etc` that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcChange {
    /// Its path under `/etc` (`nginx/nginx.conf`).
    pub path: String,
    pub kind: ChangeKind,
}

impl SystemDiff {
    /// One line per change, for a person or a prompt.
    pub fn lines(&self) -> Vec<String> {
        let v = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let mut out: Vec<String> =
            self.parts.iter().map(|p| format!("{}: {} -> {}", p.name, v(&p.from), v(&p.to))).collect();
        out.extend(self.etc.iter().map(|e| format!("/etc/{} ({})", e.path, e.kind.as_str())));
        if self.more > 0 {
            out.push(format!("{} more changes not listed", self.more));
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty() && self.etc.is_empty() && self.more == 0
    }
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Changed => "changed",
        }
    }
}

/// The name of the store path `target` is in (`/nix/store/HASH-NAME/...`
/// gives `NAME`); the target itself for anything else.
fn store_name(target: &str) -> String {
    target
        .strip_prefix("/nix/store/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|c| c.split_once('-'))
        .map(|(_, name)| name.to_owned())
        .unwrap_or_else(|| target.to_owned())
}

/// The links at the top of `system`, by name (its parts), but for those
/// compared in detail.
fn parts_of(system: &Path, budget: &mut usize) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(system) else { return out };
    for entry in entries.flatten() {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        let name = entry.file_name().to_string_lossy().into_owned();
        if DETAILED_PARTS.contains(&name.as_str()) {
            continue;
        }
        if let Ok(target) = std::fs::read_link(entry.path()) {
            out.insert(name, target.display().to_string());
        }
    }
    out
}

/// The links under `dir` (a system's `etc`), by path relative to it,
/// without descending into `systemd/system` (the units) or through a link;
/// `unread` counts what the budget left out.
fn etc_links(dir: &Path, rel: &str, depth: usize, budget: &mut usize, out: &mut BTreeMap<String, String>) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut unread = 0;
    for entry in entries.flatten() {
        if *budget == 0 {
            unread += 1;
            continue;
        }
        *budget -= 1;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_symlink() {
            if let Ok(target) = std::fs::read_link(entry.path()) {
                out.insert(path, target.display().to_string());
            }
        } else if kind.is_dir() && path != "systemd/system" && depth < MAX_ETC_DEPTH {
            unread += etc_links(&entry.path(), &path, depth + 1, budget, out);
        }
    }
    unread
}

/// How the rest of system `to`'s closure differs from `from`'s: its parts
/// and the files of its `etc`, compared by their links' targets.
pub fn diff_system(from: &Path, to: &Path) -> SystemDiff {
    let mut diff = SystemDiff::default();
    let (mut budget_from, mut budget_to) = (MAX_ENTRIES, MAX_ENTRIES);
    let (before, after) = (parts_of(from, &mut budget_from), parts_of(to, &mut budget_to));
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names.into_iter().filter(|n| before.get(*n) != after.get(*n)) {
        if diff.parts.len() >= MAX_DETAILED {
            diff.more += 1;
            continue;
        }
        let (b, a) = (before.get(name).map(|t| store_name(t)), after.get(name).map(|t| store_name(t)));
        diff.parts.push(PartChange { name: name.clone(), from: b, to: a });
    }
    let (mut etc_before, mut etc_after) = (BTreeMap::new(), BTreeMap::new());
    diff.unread += etc_links(&from.join("etc"), "", 0, &mut budget_from, &mut etc_before);
    diff.unread += etc_links(&to.join("etc"), "", 0, &mut budget_to, &mut etc_after);
    let paths: BTreeSet<&String> = etc_before.keys().chain(etc_after.keys()).collect();
    for path in paths {
        let kind = match (etc_before.get(path), etc_after.get(path)) {
            (Some(b), Some(a)) if b == a => continue,
            (Some(_), Some(_)) => ChangeKind::Changed,
            (None, _) => ChangeKind::Added,
            (_, None) => ChangeKind::Removed,
        };
        if diff.etc.len() >= MAX_DETAILED {
            diff.more += 1;
            continue;
        }
        diff.etc.push(EtcChange { path: path.clone(), kind });
    }
    diff
}

/// How two generations' units differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitsDiff {
    /// The units that differ, by name, at most [`MAX_DETAILED`].
    pub units: Vec<UnitChange>,
    /// Units that differ beyond those detailed.
    pub more: usize,
    /// Entries left unread past [`MAX_ENTRIES`] (then the diff is partial).
    pub unread: usize,
}

/// One unit that differs between the generations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitChange {
    pub unit: String,
    pub kind: ChangeKind,
    /// What differs, for a unit in both; what it runs, for one added or removed.
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

/// One difference of a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Change {
    /// A package the unit names (in its commands or environment), by name:
    /// its version before and after (`None`: not named on that side, or
    /// named without a version).
    Package { name: String, from: Option<String>, to: Option<String> },
    /// The values of one directive, removed and added.
    Directive { key: String, removed: Vec<String>, added: Vec<String> },
    /// Drop-in files (`NAME.d/*.conf`) removed and added.
    DropIns { removed: Vec<String>, added: Vec<String> },
    /// Units it pulls in through `NAME.wants/` or `NAME.requires/`.
    PullsIn { removed: Vec<String>, added: Vec<String> },
}

impl UnitChange {
    /// A few lines for a person or a prompt.
    pub fn text(&self) -> String {
        let mut out = format!("{} ({})\n", self.unit, self.kind.as_str());
        for c in &self.changes {
            let line = match c {
                Change::Package { name, from, to } => {
                    let v = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                    format!("package {name}: {} -> {}", v(from), v(to))
                }
                Change::Directive { key, removed, added } => format!("{key}: {}", changed(removed, added)),
                Change::DropIns { removed, added } => format!("drop-ins: {}", changed(removed, added)),
                Change::PullsIn { removed, added } => format!("pulls in: {}", changed(removed, added)),
            };
            let _ = writeln!(out, "  {line}");
        }
        out
    }
}

fn changed(removed: &[String], added: &[String]) -> String {
    let mut parts: Vec<String> = removed.iter().map(|v| format!("- {v}")).collect();
    parts.extend(added.iter().map(|v| format!("+ {v}")));
    parts.join("; ")
}

/// A package named by a store path: the name and version Nix's
/// `parseDrvName` gives its store path's name (the version starts at the
/// first `-` followed by a digit).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    pub name: String,
    pub version: Option<String>,
}

/// The package of a store path `/nix/store/HASH-NAME[/...]`; `None` for
/// anything else.
pub fn package_of(path: &str) -> Option<Package> {
    let rest = path.strip_prefix("/nix/store/")?;
    let component = rest.split('/').next()?;
    let (hash, name) = component.split_once('-')?;
    if hash.len() != 32 || !hash.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()) || name.is_empty() {
        return None;
    }
    let split = name.char_indices().find(|(i, c)| *c == '-' && name[i + 1..].starts_with(|d: char| d.is_ascii_digit()));
    Some(match split {
        Some((i, _)) => Package { name: name[..i].to_owned(), version: Some(name[i + 1..].to_owned()) },
        None => Package { name: name.to_owned(), version: None },
    })
}

/// The store paths named in `text`.
fn store_paths(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("/nix/store/") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ';' | ':' | '=' | ','))
            .unwrap_or(tail.len());
        out.push(&tail[..end]);
        rest = &tail[end.max(1)..];
    }
    out
}

/// A file in the units directory: the store path it links to, or the
/// digest of its content when it is no link (equal either way means the
/// same file).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sig {
    Link(PathBuf),
    Content(String),
    Unreadable(String),
}

/// One unit of a generation, as its directory shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entry {
    file: Option<(PathBuf, Sig)>,
    dropins: BTreeMap<String, (PathBuf, Sig)>,
    pulls_in: BTreeSet<String>,
}

impl Entry {
    fn same(&self, other: &Entry) -> bool {
        let sigs = |e: &Entry| -> (Option<Sig>, Vec<(String, Sig)>) {
            (
                e.file.as_ref().map(|(_, s)| s.clone()),
                e.dropins.iter().map(|(n, (_, s))| (n.clone(), s.clone())).collect(),
            )
        };
        sigs(self) == sigs(other) && self.pulls_in == other.pulls_in
    }

    /// The unit's directives, from its file then its drop-ins in name order.
    fn directives(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let files = self.file.iter().chain(self.dropins.values());
        for (path, _) in files {
            let Ok(text) = bounded::read(path, UNIT_FILE) else { continue };
            let text = String::from_utf8_lossy(&text);
            for line in text.lines() {
                let Some((key, value)) = line.trim().split_once('=') else { continue };
                let key = key.trim();
                if !DIRECTIVES.contains(&key) {
                    continue;
                }
                let values = out.entry(key.to_owned()).or_default();
                let value = value.trim();
                // An empty assignment resets the list, as systemd reads it.
                if value.is_empty() {
                    values.clear();
                } else if values.len() < MAX_VALUES {
                    values.push(cut(value, MAX_VALUE_CHARS, "…"));
                }
            }
        }
        out
    }
}

fn is_unit_name(name: &str) -> bool {
    const SUFFIXES: [&str; 11] = [
        ".service",
        ".socket",
        ".timer",
        ".target",
        ".mount",
        ".automount",
        ".path",
        ".slice",
        ".scope",
        ".swap",
        ".device",
    ];
    SUFFIXES.iter().any(|s| name.len() > s.len() && name.ends_with(s))
}

fn sig_of(path: &Path) -> Sig {
    match std::fs::read_link(path) {
        Ok(target) => Sig::Link(target),
        Err(_) => match bounded::read(path, UNIT_FILE) {
            Ok(bytes) => Sig::Content(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()),
            Err(e) => Sig::Unreadable(e.reason()),
        },
    }
}

/// The units of a system (a generation's store path): its
/// `etc/systemd/system`, read as far as [`MAX_ENTRIES`]; how many entries
/// were left unread. A system without that directory has no units.
fn units_of(system: &Path, budget: &mut usize) -> (BTreeMap<String, Entry>, usize) {
    let dir = system.join("etc/systemd/system");
    let mut units: BTreeMap<String, Entry> = BTreeMap::new();
    let mut unread = 0;
    let Ok(entries) = std::fs::read_dir(&dir) else { return (units, 0) };
    let mut names: Vec<(String, PathBuf)> =
        entries.flatten().filter_map(|e| Some((e.file_name().to_str()?.to_owned(), e.path()))).collect();
    names.sort();
    for (name, path) in names {
        if *budget == 0 {
            unread += 1;
            continue;
        }
        *budget -= 1;
        if is_unit_name(&name) {
            units.entry(name).or_default().file = Some((path.clone(), sig_of(&path)));
            continue;
        }
        // NAME.d, NAME.wants, NAME.requires: directories (links followed, read only).
        let (unit, what) = match name.rsplit_once('.') {
            Some((unit, what @ ("d" | "wants" | "requires"))) if is_unit_name(unit) => (unit.to_owned(), what),
            _ => continue,
        };
        let Ok(inner) = std::fs::read_dir(&path) else { continue };
        let mut inner: Vec<(String, PathBuf)> =
            inner.flatten().filter_map(|e| Some((e.file_name().to_str()?.to_owned(), e.path()))).collect();
        inner.sort();
        let entry = units.entry(unit).or_default();
        for (file, path) in inner {
            if *budget == 0 {
                unread += 1;
                continue;
            }
            *budget -= 1;
            match what {
                "d" if file.ends_with(".conf") => {
                    entry.dropins.insert(file, (path.clone(), sig_of(&path)));
                }
                "wants" | "requires" if is_unit_name(&file) => {
                    entry.pulls_in.insert(file);
                }
                _ => {}
            }
        }
    }
    (units, unread)
}

/// How the units of system `to` differ from those of system `from`.
pub fn diff_units(from: &Path, to: &Path) -> UnitsDiff {
    let mut budget = MAX_ENTRIES;
    let (before, unread_before) = units_of(from, &mut budget);
    let mut budget_to = MAX_ENTRIES;
    let (after, unread_after) = units_of(to, &mut budget_to);
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let mut diff = UnitsDiff { unread: unread_before + unread_after, ..UnitsDiff::default() };
    let empty = Entry::default();
    for name in names {
        let (b, a) = (before.get(name), after.get(name));
        let kind = match (b, a) {
            (Some(b), Some(a)) if b.same(a) => continue,
            (Some(_), Some(_)) => ChangeKind::Changed,
            (None, Some(_)) => ChangeKind::Added,
            (Some(_), None) => ChangeKind::Removed,
            (None, None) => continue,
        };
        if diff.units.len() >= MAX_DETAILED {
            diff.more += 1;
            continue;
        }
        let changes = changes(b.unwrap_or(&empty), a.unwrap_or(&empty));
        diff.units.push(UnitChange { unit: name.clone(), kind, changes });
    }
    diff
}

/// What differs between two versions of a unit: its packages first, then
/// its directives, drop-ins and the units it pulls in.
fn changes(before: &Entry, after: &Entry) -> Vec<Change> {
    let (db, da) = (before.directives(), after.directives());
    let mut out = Vec::new();
    // Packages, by name, from every store path the directives name.
    let packages = |d: &BTreeMap<String, Vec<String>>| -> BTreeMap<String, BTreeSet<Option<String>>> {
        let mut out: BTreeMap<String, BTreeSet<Option<String>>> = BTreeMap::new();
        for value in d.values().flatten() {
            for p in store_paths(value).into_iter().filter_map(package_of) {
                out.entry(p.name).or_default().insert(p.version);
            }
        }
        out
    };
    out.extend(package_changes(&packages(&db), &packages(&da)));
    for key in DIRECTIVES {
        let none = Vec::new();
        let (vb, va) = (db.get(key).unwrap_or(&none), da.get(key).unwrap_or(&none));
        let removed: Vec<String> = vb.iter().filter(|v| !va.contains(v)).cloned().collect();
        let added: Vec<String> = va.iter().filter(|v| !vb.contains(v)).cloned().collect();
        if !removed.is_empty() || !added.is_empty() {
            out.push(Change::Directive { key: key.to_owned(), removed, added });
        }
    }
    let names = |e: &Entry| e.dropins.keys().cloned().collect::<BTreeSet<_>>();
    let (nb, na) = (names(before), names(after));
    if nb != na {
        out.push(Change::DropIns {
            removed: nb.difference(&na).cloned().collect(),
            added: na.difference(&nb).cloned().collect(),
        });
    }
    if before.pulls_in != after.pulls_in {
        out.push(Change::PullsIn {
            removed: before.pulls_in.difference(&after.pulls_in).cloned().collect(),
            added: after.pulls_in.difference(&before.pulls_in).cloned().collect(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const H1: &str = "0123456789abcdfghijklmnpqrsvwxyz";
    const H2: &str = "zyxwvsrqpnmlkjihgfdcba9876543210";

    #[test]
    fn store_path_names_split_into_package_and_version_as_nix_splits_them() {
        let p = |s: &str| package_of(s).map(|p| (p.name, p.version));
        let v = |n: &str, v: &str| Some((n.to_owned(), Some(v.to_owned())));
        assert_eq!(p(&format!("/nix/store/{H1}-nginx-1.24.0/bin/nginx")), v("nginx", "1.24.0"));
        assert_eq!(p(&format!("/nix/store/{H1}-python3-3.11.6-env")), v("python3", "3.11.6-env"));
        assert_eq!(p(&format!("/nix/store/{H1}-unit-nginx.service")), Some(("unit-nginx.service".into(), None)));
        assert_eq!(p("/usr/bin/nginx"), None);
        assert_eq!(p("/nix/store/short-nginx-1.0"), None);
        let text = format!("ExecStart=/nix/store/{H1}-nginx-1.24.0/bin/nginx -c '/nix/store/{H2}-nginx.conf'");
        assert_eq!(store_paths(&text).len(), 2);
    }

    /// A store in `root` and a system there whose units are `units`: each a
    /// (name, unit file text) linked from `etc/systemd/system`, as NixOS links them.
    fn system(root: &Path, label: &str, units: &[(&str, &str)], wants: &[(&str, &str)]) -> PathBuf {
        let store = root.join("store");
        let sys = store.join(format!("system-{label}"));
        let dir = sys.join("etc/systemd/system");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in units {
            let (unit, file) = name.split_once('/').map_or((*name, None), |(u, f)| (u, Some(f)));
            let digest: String = Sha256::digest(text.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
            let target = store.join(format!("{digest}-unit-{unit}"));
            std::fs::create_dir_all(&target).unwrap();
            let leaf = target.join(file.unwrap_or(unit));
            std::fs::write(&leaf, text).unwrap();
            match file {
                None => symlink(&leaf, dir.join(unit)).unwrap(),
                Some(f) => {
                    std::fs::create_dir_all(dir.join(format!("{unit}.d"))).unwrap();
                    symlink(&leaf, dir.join(format!("{unit}.d/{f}"))).unwrap();
                }
            }
        }
        for (target, unit) in wants {
            std::fs::create_dir_all(dir.join(format!("{target}.wants"))).unwrap();
            symlink(dir.join(unit), dir.join(format!("{target}.wants/{unit}"))).unwrap();
        }
        sys
    }

    /// Links `sys/rel` to `target`, making the directories on the way.
    fn link(sys: &Path, rel: &str, target: &str) {
        let at = sys.join(rel);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        symlink(target, at).unwrap();
    }

    #[test]
    fn the_system_s_parts_and_etc_files_that_point_elsewhere_are_found_its_units_and_sw_left_to_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let a = system(dir.path(), "a", &[("web.service", "[Service]\nExecStart=/bin/true\n")], &[]);
        let b = system(dir.path(), "b", &[("web.service", "[Service]\nExecStart=/bin/false\n")], &[]);
        for (sys, kernel, conf, only) in [(&a, "6.6.30", "1", "old.conf"), (&b, "6.6.31", "2", "new.conf")] {
            link(sys, "kernel", &format!("/nix/store/{H1}-linux-{kernel}/bzImage"));
            link(sys, "systemd", &format!("/nix/store/{H2}-systemd-255.4"));
            link(sys, "sw", &format!("/nix/store/{H1}-system-path-{conf}"));
            link(sys, "etc/nginx/nginx.conf", &format!("/nix/store/{H2}-nginx-{conf}.conf"));
            link(sys, "etc/hosts", &format!("/nix/store/{H2}-hosts"));
            link(sys, &format!("etc/{only}"), &format!("/nix/store/{H2}-{only}"));
        }
        // A directory linked as a whole is one entry, not read through.
        link(&a, "etc/ssl", &format!("/nix/store/{H1}-certs"));
        let d = diff_system(&a, &b);
        assert_eq!(
            d.parts,
            [PartChange { name: "kernel".into(), from: Some("linux-6.6.30".into()), to: Some("linux-6.6.31".into()) }]
        );
        let etc: Vec<(&str, ChangeKind)> = d.etc.iter().map(|e| (e.path.as_str(), e.kind)).collect();
        assert_eq!(
            etc,
            [
                ("new.conf", ChangeKind::Added),
                ("nginx/nginx.conf", ChangeKind::Changed),
                ("old.conf", ChangeKind::Removed),
                ("ssl", ChangeKind::Removed),
            ],
            "the unit files and sw are compared elsewhere: {d:?}"
        );
        assert_eq!((d.more, d.unread), (0, 0));
        assert_eq!(d.lines()[0], "kernel: linux-6.6.30 -> linux-6.6.31");
        assert_eq!(d.lines()[2], "/etc/nginx/nginx.conf (changed)");
        assert!(diff_system(&a, &a).is_empty());
    }

    #[test]
    fn past_the_bounds_the_system_diff_counts_what_it_did_not_list_or_read() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        for i in 0..MAX_DETAILED + 5 {
            link(&a, &format!("etc/f{i}"), &format!("/nix/store/{H1}-f{i}"));
            link(&b, &format!("etc/f{i}"), &format!("/nix/store/{H2}-f{i}"));
        }
        let d = diff_system(&a, &b);
        assert_eq!((d.etc.len(), d.more, d.unread), (MAX_DETAILED, 5, 0));
        assert_eq!(d.lines().last().unwrap(), "5 more changes not listed");
    }

    #[test]
    fn a_package_bump_a_changed_option_an_added_and_a_removed_unit_are_found_and_the_rest_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let nginx = |v: &str, extra: &str| {
            format!("[Unit]\nAfter=network.target\n[Service]\nExecStart=/nix/store/{H1}-nginx-{v}/bin/nginx -c /etc/nginx.conf\n{extra}")
        };
        let same = "[Service]\nExecStart=/nix/store/{H2}-sshd-9.6/bin/sshd -D\n";
        let a = system(
            dir.path(),
            "1",
            &[
                ("nginx.service", &nginx("1.24.0", "Environment=WORKERS=4\n")),
                ("sshd.service", same),
                ("old.service", "[Service]\nExecStart=/bin/true\n"),
                ("app.service", "[Service]\nExecStart=/bin/app\n"),
            ],
            &[("multi-user.target", "nginx.service")],
        );
        let b = system(
            dir.path(),
            "2",
            &[
                ("nginx.service", &nginx("1.25.3", "Environment=WORKERS=8\n")),
                ("sshd.service", same),
                ("new.service", "[Unit]\nRequires=db.service\n[Service]\nExecStart=/bin/new\n"),
                ("app.service", "[Service]\nExecStart=/bin/app\n"),
                ("app.service/override.conf", "[Service]\nExecStart=\nExecStart=/bin/app --fast\n"),
            ],
            &[("multi-user.target", "nginx.service"), ("multi-user.target", "new.service")],
        );
        let d = diff_units(&a, &b);
        let names: Vec<(&str, ChangeKind)> = d.units.iter().map(|u| (u.unit.as_str(), u.kind)).collect();
        assert_eq!(
            names,
            [
                ("app.service", ChangeKind::Changed),
                ("multi-user.target", ChangeKind::Changed),
                ("new.service", ChangeKind::Added),
                ("nginx.service", ChangeKind::Changed),
                ("old.service", ChangeKind::Removed),
            ]
        );
        let nginx = &d.units[3];
        assert_eq!(
            nginx.changes[0],
            Change::Package { name: "nginx".into(), from: Some("1.24.0".into()), to: Some("1.25.3".into()) }
        );
        assert!(nginx.changes.contains(&Change::Directive {
            key: "Environment".into(),
            removed: vec!["WORKERS=4".into()],
            added: vec!["WORKERS=8".into()],
        }));
        let text = nginx.text();
        assert!(text.starts_with("nginx.service (changed)\n  package nginx: 1.24.0 -> 1.25.3\n"), "{text}");
        // The drop-in resets ExecStart, as systemd reads it.
        let app = &d.units[0];
        assert!(app.changes.contains(&Change::Directive {
            key: "ExecStart".into(),
            removed: vec!["/bin/app".into()],
            added: vec!["/bin/app --fast".into()],
        }));
        assert!(app.changes.contains(&Change::DropIns { removed: vec![], added: vec!["override.conf".into()] }));
        assert_eq!(
            d.units[1].changes,
            [Change::PullsIn { removed: vec![], added: vec!["new.service".into()] }],
            "{:?}",
            d.units[1]
        );
        assert!(d.units[2].changes.contains(&Change::Directive {
            key: "Requires".into(),
            removed: vec![],
            added: vec!["db.service".into()]
        }));
        assert_eq!((d.more, d.unread), (0, 0));
        assert_eq!(diff_units(&a, &a), UnitsDiff::default(), "a generation against itself");
    }

    #[test]
    fn the_diff_is_bounded_and_a_system_without_units_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let many: Vec<(String, String)> = (0..MAX_DETAILED + 5)
            .map(|i| (format!("u{i:03}.service"), format!("[Service]\nExecStart=/bin/u{i}\n")))
            .collect();
        let units: Vec<(&str, &str)> = many.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
        let b = system(dir.path(), "b", &units, &[]);
        let none = dir.path().join("store/not-a-system");
        std::fs::create_dir_all(&none).unwrap();
        let d = diff_units(&none, &b);
        assert_eq!((d.units.len(), d.more), (MAX_DETAILED, 5));
        assert!(d.units.iter().all(|u| u.kind == ChangeKind::Added));
        let long = format!("[Service]\nEnvironment={}\n", "X".repeat(5000));
        let c = system(dir.path(), "c", &[("long.service", &long)], &[]);
        let d = diff_units(&none, &c);
        let Change::Directive { added, .. } = &d.units[0].changes[0] else { panic!("{d:?}") };
        assert!(added[0].chars().count() <= MAX_VALUE_CHARS + 1);
    }

    #[test]
    fn the_last_switch_is_the_running_generation_against_the_one_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let one = system(dir.path(), "1", &[("a.service", "[Service]\nExecStart=/bin/a\n")], &[]);
        let two = system(dir.path(), "2", &[("a.service", "[Service]\nExecStart=/bin/a -v\n")], &[]);
        let three = system(dir.path(), "3", &[], &[]);
        let profiles = dir.path().join("profiles");
        std::fs::create_dir(&profiles).unwrap();
        for (n, sys) in [(1, &one), (2, &two), (3, &three)] {
            symlink(sys, profiles.join(format!("system-{n}-link"))).unwrap();
        }
        symlink("system-3-link", profiles.join("system")).unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        symlink(&two, run.join("current-system")).unwrap();
        symlink(&one, run.join("booted-system")).unwrap();

        // Generation 3 is built but not running (a `boot`): the switch that
        // counts is the one to what runs, 2, from 1.
        let d = last_switch(&profiles.join("system"), &run.join("current-system")).unwrap().unwrap();
        assert_eq!((d.from.number, d.to.number, d.booted), (1, 2, Some(1)));
        assert!(d.to.switched_at.is_some() && d.boot_time.is_some());
        assert_eq!(d.units.units.len(), 1);
        assert_eq!(d.units.units[0].unit, "a.service");

        // The system path's packages: one bumped, one added, one gone, one the same.
        for (sys, programs) in [
            (&one, [("nginx", "nginx-1.24.0"), ("jq", "jq-1.7"), ("htop", "htop-3.2.2")]),
            (&two, [("nginx", "nginx-1.25.3"), ("jq", "jq-1.7"), ("ripgrep", "ripgrep-14.1.0")]),
        ] {
            std::fs::create_dir_all(sys.join("sw/bin")).unwrap();
            for (program, package) in programs {
                symlink(format!("/nix/store/{H1}-{package}/bin/{program}"), sys.join("sw/bin").join(program)).unwrap();
            }
        }
        let d = last_switch(&profiles.join("system"), &run.join("current-system")).unwrap().unwrap();
        let package = |name: &str, from: Option<&str>, to: Option<&str>| Change::Package {
            name: name.into(),
            from: from.map(Into::into),
            to: to.map(Into::into),
        };
        assert_eq!(
            d.packages,
            [
                package("htop", Some("3.2.2"), None),
                package("nginx", Some("1.24.0"), Some("1.25.3")),
                package("ripgrep", None, Some("14.1.0")),
            ]
        );

        // The first generation has no switch before it; no profile, no NixOS.
        std::fs::remove_file(run.join("current-system")).unwrap();
        symlink(&one, run.join("current-system")).unwrap();
        assert_eq!(last_switch(&profiles.join("system"), &run.join("current-system")).unwrap(), None);
        assert_eq!(last_switch(&dir.path().join("none/system"), &run.join("current-system")).unwrap(), None);
    }
}
