//! The operator's runbooks: markdown files in the directory
//! `knowledge_base.runbooks` names, split into sections on their headings
//! and indexed in `knowledge.db` next to the embedded memories (whichever
//! backend keeps the incidents: runbooks are this host's files), so that a
//! decision is shown the sections nearest to its incident.
//!
//! [`split`] is pure. [`Runbooks::sync`] takes in what changed since it
//! last looked: a file whose size and modification time are as recorded is
//! not read again, one whose content is unchanged is not split again, one
//! that is gone takes its sections with it. Every read is bounded (files,
//! bytes per file, sections per file, characters per section) and a file is
//! read only when the user macha runs as, or root, owns it and no one else
//! may write it: runbooks are shown to the model, so no other user may put
//! words there. What cannot be read is recorded with the reason and said
//! once, until the file changes. Sections are redacted before they are
//! stored. Embeddings are added apart (`remember::embed_runbooks`): the
//! index works with full text alone.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::embedded::{connect, search, to_blob, KB_FILE};
use super::KbError;
use crate::bounded::{self, FileKind, Size};
use crate::redact::redact;
use crate::state_dir::StateDir;
use crate::text::cut;

/// Runbook files indexed, at most; the rest (in path order) are skipped.
pub const MAX_FILES: usize = 500;
/// Largest runbook file read.
pub const MAX_FILE: Size = Size::mib(1);
/// Sections taken from one file, at most.
pub const MAX_SECTIONS: usize = 200;
/// Longest section body kept, in characters.
pub const MAX_SECTION_CHARS: usize = 4000;
/// Directory levels below the runbooks directory searched.
pub const MAX_DEPTH: usize = 4;
/// Longest heading path kept, in characters.
const MAX_HEADING_CHARS: usize = 300;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runbook_files (
    name TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    sha256 TEXT,
    skipped TEXT
);
CREATE TABLE IF NOT EXISTS runbook_sections (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    heading TEXT NOT NULL,
    body TEXT NOT NULL,
    vector BLOB
);
CREATE INDEX IF NOT EXISTS runbook_sections_name ON runbook_sections (name);
CREATE VIRTUAL TABLE IF NOT EXISTS runbook_text USING fts5(id UNINDEXED, text);
";

/// One section of a runbook: the text under one heading, up to the next.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Section {
    /// `runbook:NAME#N`: the file's path in the directory and the section's
    /// place in it (from 1).
    pub id: String,
    /// The file's path in the runbooks directory.
    pub name: String,
    /// The headings above it, outermost first, joined by ` › `; the file's
    /// name for text before the first heading.
    pub heading: String,
    pub body: String,
}

impl Section {
    /// What is indexed and embedded: the headings and the body.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.heading, self.body)
    }
}

/// Splits a markdown file into sections on its ATX headings (`#` to
/// `######`), outside fenced code blocks. A section with no text under its
/// heading (only subsections) is left out; its heading stays in its
/// subsections' heading paths.
pub fn split(name: &str, text: &str) -> Vec<Section> {
    let mut sections = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut heading = name.to_owned();
    let mut body = String::new();
    let mut fence: Option<(char, usize)> = None;
    let flush = |heading: &str, body: &mut String, sections: &mut Vec<Section>| {
        let trimmed = body.trim();
        if !trimmed.is_empty() && sections.len() < MAX_SECTIONS {
            let n = sections.len() + 1;
            sections.push(Section {
                id: format!("runbook:{name}#{n}"),
                name: name.to_owned(),
                heading: cut(heading, MAX_HEADING_CHARS, "…"),
                body: redact(&cut(trimmed, MAX_SECTION_CHARS, "\n[… cut]")).into_owned(),
            });
        }
        body.clear();
    };
    for line in text.lines() {
        let indented = line.len() - line.trim_start_matches(' ').len();
        let rest = line.trim_start_matches(' ');
        if indented <= 3 {
            if let Some(marker) = fence_marker(rest) {
                match fence {
                    None => fence = Some(marker),
                    Some((c, n)) if c == marker.0 && marker.1 >= n && rest.trim_end().chars().all(|x| x == c) => {
                        fence = None
                    }
                    Some(_) => {}
                }
                body.push_str(line);
                body.push('\n');
                continue;
            }
        }
        if fence.is_none() && indented <= 3 {
            if let Some((level, title)) = atx_heading(rest) {
                flush(&heading, &mut body, &mut sections);
                stack.retain(|(l, _)| *l < level);
                stack.push((level, title));
                heading = stack.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join(" › ");
                continue;
            }
        }
        body.push_str(line);
        body.push('\n');
    }
    flush(&heading, &mut body, &mut sections);
    sections
}

/// The fence character and its run's length when `line` opens or closes a
/// fenced code block (three or more backticks or tildes).
fn fence_marker(line: &str) -> Option<(char, usize)> {
    let c = line.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let n = line.chars().take_while(|x| *x == c).count();
    (n >= 3).then_some((c, n))
}

/// The level and title of an ATX heading: one to six `#`, then a space or
/// the end of the line; closing `#`s are not part of the title.
fn atx_heading(line: &str) -> Option<(usize, String)> {
    let level = line.chars().take_while(|c| *c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &line[level..];
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    let title = rest.trim().trim_end_matches('#').trim_end();
    let title = if title.is_empty() { "(untitled)" } else { title };
    Some((level, crate::text::one_line(title)))
}

/// What one [`Runbooks::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    /// Runbook files in the directory (indexed or skipped).
    pub files: usize,
    /// Files read and split again because their content changed (or new).
    pub indexed: usize,
    /// Files gone since the last look, with their sections.
    pub removed: usize,
    /// Files newly found unreadable or untrusted, and why (said once, until
    /// the file changes).
    pub skipped: Vec<String>,
    /// Markdown files beyond [`MAX_FILES`], not indexed.
    pub over_limit: usize,
}

impl Synced {
    pub fn changed(&self) -> bool {
        self.indexed > 0 || self.removed > 0
    }
}

/// What the index holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunbookStats {
    pub files: u64,
    /// Files that could not be indexed (`macha kb stats` names them).
    pub skipped: Vec<String>,
    pub sections: u64,
    pub with_vectors: u64,
}

/// A file found in the directory: its name there, size and modification
/// time (nanoseconds), as `lstat` of the final path gives them.
struct Found {
    name: String,
    path: PathBuf,
    size: u64,
    mtime: i64,
}

/// The runbook index in `knowledge.db`, for the directory `dir`.
pub struct Runbooks {
    conn: Connection,
    path: String,
    dir: PathBuf,
}

impl Runbooks {
    /// Opens (creating) the index in the state directory's `knowledge.db`.
    pub fn open(state: &StateDir, dir: &Path) -> Result<Self, KbError> {
        let path = state.path_of(KB_FILE).display().to_string();
        let conn = connect(state, SCHEMA, &path)?;
        Ok(Self { conn, path, dir: dir.to_path_buf() })
    }

    fn wrap(&self) -> impl Fn(rusqlite::Error) -> KbError + '_ {
        |source| KbError::Sqlite { path: self.path.clone(), source }
    }

    /// The markdown files of the directory and its subdirectories (at most
    /// [`MAX_DEPTH`] levels down, links to directories not followed), in
    /// path order, and how many there were beyond [`MAX_FILES`]. A
    /// directory that is missing or unreadable is an error that names it.
    fn list(&self) -> Result<(Vec<Found>, usize), String> {
        let mut found = Vec::new();
        let mut over = 0;
        let mut dirs = vec![(self.dir.clone(), String::new(), 0usize)];
        while let Some((dir, prefix, depth)) = dirs.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| format!("the runbooks directory {}: {e}", dir.display()));
            let entries = match entries {
                Ok(entries) => entries,
                // The top directory must be there; a subdirectory that cannot be read is left out.
                Err(e) if depth == 0 => return Err(e),
                Err(_) => continue,
            };
            for entry in entries.flatten() {
                let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else { continue };
                if file_name.starts_with('.') {
                    continue;
                }
                let path = entry.path();
                let name = format!("{prefix}{file_name}");
                // `stat`, not `lstat`: a link to a file (as a Nix-built
                // directory holds) is its target; links to directories are
                // not walked.
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
                if meta.is_dir() {
                    if !is_link && depth + 1 < MAX_DEPTH {
                        dirs.push((path, format!("{name}/"), depth + 1));
                    }
                } else if file_name.ends_with(".md") {
                    if found.len() >= MAX_FILES {
                        over += 1;
                        continue;
                    }
                    found.push(Found { name, path, size: meta.len(), mtime: mtime_ns(&meta) });
                }
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        if found.len() > MAX_FILES {
            over += found.len() - MAX_FILES;
            found.truncate(MAX_FILES);
        }
        Ok((found, over))
    }

    /// Takes in what changed in the directory since the last look.
    pub fn sync(&self) -> Result<Synced, KbError> {
        let (found, over_limit) =
            self.list().map_err(|why| KbError::Corrupt { path: self.dir.display().to_string(), why })?;
        let mut synced = Synced { files: found.len(), over_limit, ..Synced::default() };
        let known: Vec<(String, i64, i64, Option<String>)> = {
            let mut stmt =
                self.conn.prepare("SELECT name, size, mtime, sha256 FROM runbook_files").map_err(self.wrap())?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(self.wrap())?
                .collect::<Result<Vec<_>, _>>()
                .map_err(self.wrap())?;
            rows
        };
        let tx = self.conn.unchecked_transaction().map_err(self.wrap())?;
        for (name, ..) in known.iter().filter(|k| !found.iter().any(|f| f.name == k.0)) {
            remove_sections(&tx, name).map_err(self.wrap())?;
            tx.execute("DELETE FROM runbook_files WHERE name = ?1", [name]).map_err(self.wrap())?;
            synced.removed += 1;
        }
        for file in &found {
            let before = known.iter().find(|k| k.0 == file.name);
            if before.is_some_and(|k| k.1 == file.size as i64 && k.2 == file.mtime) {
                continue;
            }
            let read = bounded::read_trusted(&file.path, FileKind { name: "the runbook", limit: MAX_FILE }, false).map(
                |bytes| {
                    let sha = hex(&Sha256::digest(&bytes));
                    (String::from_utf8_lossy(&bytes).into_owned(), sha)
                },
            );
            let (sha, skipped) = match &read {
                Ok((_, sha)) => (Some(sha.clone()), None),
                Err(why) => (None, Some(why.clone())),
            };
            let same = matches!((before.and_then(|k| k.3.as_ref()), &sha), (Some(a), Some(b)) if a == b);
            if !same {
                remove_sections(&tx, &file.name).map_err(self.wrap())?;
                match &read {
                    Ok((text, _)) => {
                        for section in split(&file.name, text) {
                            tx.execute(
                                "INSERT INTO runbook_sections (id, name, heading, body) VALUES (?1, ?2, ?3, ?4)",
                                params![section.id, section.name, section.heading, section.body],
                            )
                            .map_err(self.wrap())?;
                            tx.execute(
                                "INSERT INTO runbook_text (id, text) VALUES (?1, ?2)",
                                params![section.id, section.text()],
                            )
                            .map_err(self.wrap())?;
                        }
                        synced.indexed += 1;
                    }
                    Err(why) => synced.skipped.push(format!("{}: {why}", file.name)),
                }
            }
            tx.execute(
                "INSERT INTO runbook_files (name, size, mtime, sha256, skipped) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name) DO UPDATE SET size = ?2, mtime = ?3, sha256 = ?4, skipped = ?5",
                params![file.name, file.size as i64, file.mtime, sha, skipped],
            )
            .map_err(self.wrap())?;
        }
        tx.commit().map_err(self.wrap())?;
        Ok(synced)
    }

    /// Forgets the whole index, so that the next [`Runbooks::sync`] reads
    /// every file again (`macha kb reindex`).
    pub fn clear(&self) -> Result<(), KbError> {
        self.conn
            .execute_batch("DELETE FROM runbook_text; DELETE FROM runbook_sections; DELETE FROM runbook_files;")
            .map_err(self.wrap())
    }

    /// Sections without an embedding, at most `limit`, with their texts.
    pub fn unembedded(&self, limit: usize) -> Result<Vec<(String, String)>, KbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, heading, body FROM runbook_sections WHERE vector IS NULL ORDER BY id LIMIT ?1")
            .map_err(self.wrap())?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok((r.get::<_, String>(0)?, format!("{}\n{}", r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            })
            .map_err(self.wrap())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.wrap())?;
        Ok(rows)
    }

    /// Stores the embeddings of sections (by id).
    pub fn set_vectors(&self, vectors: &[(String, Vec<f32>)]) -> Result<(), KbError> {
        let tx = self.conn.unchecked_transaction().map_err(self.wrap())?;
        for (id, vector) in vectors {
            tx.execute("UPDATE runbook_sections SET vector = ?2 WHERE id = ?1", params![id, to_blob(vector)])
                .map_err(self.wrap())?;
        }
        tx.commit().map_err(self.wrap())
    }

    /// The sections nearest to `text` (and `vector`, when given), nearest
    /// first, as the embedded store ranks memories.
    pub fn search(&self, text: &str, vector: Option<&[f32]>, limit: usize) -> Result<Vec<Section>, KbError> {
        let ranked =
            search(&self.conn, "runbook_text", "runbook_sections", text, vector, limit).map_err(self.wrap())?;
        let mut out = Vec::new();
        for (id, _) in ranked {
            out.extend(self.get(&id)?);
        }
        Ok(out)
    }

    /// One section by its id.
    pub fn get(&self, id: &str) -> Result<Option<Section>, KbError> {
        self.conn
            .query_row("SELECT id, name, heading, body FROM runbook_sections WHERE id = ?1", [id], |r| {
                Ok(Section { id: r.get(0)?, name: r.get(1)?, heading: r.get(2)?, body: r.get(3)? })
            })
            .optional()
            .map_err(self.wrap())
    }

    pub fn stats(&self) -> Result<RunbookStats, KbError> {
        let (sections, with_vectors): (i64, i64) = self
            .conn
            .query_row("SELECT COUNT(*), COUNT(vector) FROM runbook_sections", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.wrap())?;
        let files: i64 =
            self.conn.query_row("SELECT COUNT(*) FROM runbook_files", [], |r| r.get(0)).map_err(self.wrap())?;
        let mut stmt = self
            .conn
            .prepare("SELECT name, skipped FROM runbook_files WHERE skipped IS NOT NULL ORDER BY name")
            .map_err(self.wrap())?;
        let skipped = stmt
            .query_map([], |r| Ok(format!("{}: {}", r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(self.wrap())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.wrap())?;
        Ok(RunbookStats { files: files as u64, skipped, sections: sections as u64, with_vectors: with_vectors as u64 })
    }
}

fn remove_sections(tx: &rusqlite::Transaction<'_>, name: &str) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM runbook_text WHERE rowid IN (SELECT rowid FROM runbook_sections WHERE name = ?1)", [name])?;
    tx.execute("DELETE FROM runbook_sections WHERE name = ?1", [name])?;
    Ok(())
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runbook_is_split_on_its_headings_with_their_path_and_code_blocks_kept_whole() {
        let text =
            "intro line\n\n# Disk\n\n## /var full\nFree /var:\n```sh\n# not a heading\nnix-collect-garbage\n```\n\
                    ## Inodes ##\nCheck df -i.\n# Network\n### DNS\nrestart resolved\n#nospace\n";
        let s = split("ops.md", text);
        let got: Vec<(&str, &str)> = s.iter().map(|s| (s.id.as_str(), s.heading.as_str())).collect();
        assert_eq!(
            got,
            [
                ("runbook:ops.md#1", "ops.md"),
                ("runbook:ops.md#2", "Disk › /var full"),
                ("runbook:ops.md#3", "Disk › Inodes"),
                ("runbook:ops.md#4", "Network › DNS"),
            ]
        );
        assert!(s[1].body.contains("# not a heading\nnix-collect-garbage"), "{}", s[1].body);
        assert!(s[3].body.ends_with("#nospace"), "{}", s[3].body);
    }

    #[test]
    fn sections_are_bounded_and_redacted() {
        let many: String = (0..MAX_SECTIONS + 50).map(|i| format!("# h{i}\nbody\n")).collect();
        assert_eq!(split("many.md", &many).len(), MAX_SECTIONS);
        let long = format!("# big\n{}", "x".repeat(MAX_SECTION_CHARS * 3));
        assert!(split("big.md", &long)[0].body.chars().count() <= MAX_SECTION_CHARS + 10);
        let secret = "# db\nconnect with password=hunter2hunter2 to the db\n";
        let body = &split("db.md", secret)[0].body;
        assert!(!body.contains("hunter2hunter2"), "{body}");
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }

    #[test]
    fn the_index_takes_in_new_changed_and_removed_files_and_reads_an_unchanged_one_never_again() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::create(&tmp.path().join("state")).unwrap();
        let dir = tmp.path().join("runbooks");
        write(&dir.join("disk.md"), "# Disk\n## /var full\nVacuum the journal.\n");
        write(&dir.join("team/ledger.md"), "# ledger\nNever restart ledger while fenced; page the DBA.\n");
        write(&dir.join("notes.txt"), "# not markdown\nignored\n");
        write(&dir.join("deep/a/b/c/d/too-deep.md"), "# deep\nbeyond the depth\n");
        let rb = Runbooks::open(&state, &dir).unwrap();

        let first = rb.sync().unwrap();
        assert_eq!((first.files, first.indexed, first.removed), (2, 2, 0), "{first:?}");
        let hits = rb.search("ledger fenced restart", None, 3).unwrap();
        assert_eq!(hits[0].id, "runbook:team/ledger.md#1", "{hits:?}");
        assert_eq!(hits[0].heading, "ledger");
        assert_eq!(rb.sync().unwrap(), Synced { files: 2, ..Synced::default() }, "nothing changed");

        // Changed: the old sections go, the new ones are found.
        write(&dir.join("disk.md"), "# Disk\n## /nix full\nCollect garbage, keep 5 generations.\n");
        let changed = rb.sync().unwrap();
        assert_eq!((changed.indexed, changed.removed), (1, 0));
        assert!(rb.search("vacuum journal", None, 3).unwrap().iter().all(|s| s.name != "disk.md"));
        assert_eq!(rb.search("garbage generations", None, 3).unwrap()[0].heading, "Disk › /nix full");

        // Untrusted: writable by others; said once, indexed when fixed.
        std::fs::set_permissions(dir.join("disk.md"), std::fs::Permissions::from_mode(0o666)).unwrap();
        write(&dir.join("disk.md"), "# Disk\nrestart sshd now\n");
        std::fs::set_permissions(dir.join("disk.md"), std::fs::Permissions::from_mode(0o666)).unwrap();
        let untrusted = rb.sync().unwrap();
        assert_eq!(untrusted.skipped.len(), 1, "{untrusted:?}");
        assert!(untrusted.skipped[0].starts_with("disk.md: writable by its group or by others"), "{untrusted:?}");
        assert!(rb.search("sshd", None, 3).unwrap().is_empty(), "an untrusted file is not indexed");
        assert!(rb.sync().unwrap().skipped.is_empty(), "said once until it changes");
        assert_eq!(rb.stats().unwrap().skipped.len(), 1);

        // Removed: its sections go with it.
        std::fs::remove_file(dir.join("team/ledger.md")).unwrap();
        assert_eq!(rb.sync().unwrap().removed, 1);
        assert!(rb.search("ledger", None, 3).unwrap().is_empty());

        // Embeddings are kept per section and used.
        write(&dir.join("dns.md"), "# DNS\nRestart systemd-resolved.\n");
        rb.sync().unwrap();
        let missing = rb.unembedded(10).unwrap();
        assert_eq!(missing.len(), 1);
        rb.set_vectors(&[(missing[0].0.clone(), vec![1.0, 0.0])]).unwrap();
        assert_eq!(rb.search("zzz", Some(&[1.0, 0.0]), 3).unwrap()[0].name, "dns.md");
        assert_eq!(rb.stats().unwrap().with_vectors, 1);

        // A missing directory is an error that names it.
        let gone = Runbooks::open(&state, &tmp.path().join("nowhere")).unwrap();
        let err = gone.sync().unwrap_err().to_string();
        assert!(err.contains("the runbooks directory") && err.contains("nowhere"), "{err}");
    }
}
