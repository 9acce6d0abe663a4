//! The embedded memory store: SQLite in the state directory
//! (`knowledge.db`), no service to run. A memory is found by its words
//! (FTS5, ranked by BM25) and, when it has one, by its vector (compared
//! exactly with every stored vector: cosine of normalised vectors); the two
//! rankings are merged by reciprocal rank (each list gives `1 / (60 +
//! rank)`), so a memory found both ways ranks first and either way alone
//! still counts. Without an embedding model it is full text alone.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{Backend, Hit, KbError, Memory, Stats};
use crate::sqlite::{self, open_retrying};
use crate::state_dir::StateDir;

/// The database file in the state directory.
pub const KB_FILE: &str = "knowledge.db";

/// Words of a query searched for; the rest of a long text adds little.
const MAX_QUERY_WORDS: usize = 128;

/// The constant of reciprocal rank fusion (the usual 60).
const FUSION_K: f64 = 60.0;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS memories (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    record TEXT NOT NULL,
    vector BLOB
);
CREATE INDEX IF NOT EXISTS memories_last_seen ON memories (last_seen);
CREATE VIRTUAL TABLE IF NOT EXISTS memories_text USING fts5(id UNINDEXED, text);
";

/// `PRAGMA user_version` of `knowledge.db`: 1 since the text of a memory is
/// kept under its row's rowid in `memories_text` (found by the rowid's
/// index; before, by a scan of the whole table for its `id`).
const VERSION: i64 = 1;

pub struct Embedded {
    conn: Connection,
    path: String,
}

impl Embedded {
    /// Opens (creating) `knowledge.db` in the state directory.
    pub fn open(state: &StateDir) -> Result<Self, KbError> {
        let path = state.path_of(KB_FILE).display().to_string();
        let conn = connect(state, SCHEMA, &path)?;
        let kb = Self { conn, path };
        kb.upgrade()?;
        Ok(kb)
    }

    /// Brings a `knowledge.db` of an older version to [`VERSION`]: the
    /// text table is written again, each memory's text under its rowid.
    fn upgrade(&self) -> Result<(), KbError> {
        let version: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(self.wrap())?;
        if version >= VERSION {
            return Ok(());
        }
        let tx = self.conn.unchecked_transaction().map_err(self.wrap())?;
        tx.execute("DELETE FROM memories_text", []).map_err(self.wrap())?;
        let rows: Vec<(i64, String, String)> = {
            let mut stmt = tx.prepare("SELECT rowid, id, record FROM memories").map_err(self.wrap())?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(self.wrap())?
                .collect::<Result<Vec<_>, _>>()
                .map_err(self.wrap())?;
            rows
        };
        for (rowid, id, record) in rows {
            let text = self.decode(&id, &record)?.text();
            tx.execute("INSERT INTO memories_text (rowid, id, text) VALUES (?1, ?2, ?3)", params![rowid, id, text])
                .map_err(self.wrap())?;
        }
        tx.execute_batch(&format!("PRAGMA user_version = {VERSION}")).map_err(self.wrap())?;
        tx.commit().map_err(self.wrap())
    }

    fn wrap(&self) -> impl Fn(rusqlite::Error) -> KbError + '_ {
        |source| KbError::Sqlite { path: self.path.clone(), source }
    }

    fn decode(&self, id: &str, record: &str) -> Result<Memory, KbError> {
        serde_json::from_str(record)
            .map_err(|e| KbError::Corrupt { path: self.path.clone(), why: format!("memory {id}: {e}") })
    }

    /// Forgets the memories not seen since `before`, then the least
    /// recently seen beyond `max`. Returns how many were forgotten.
    pub fn prune(&self, max: u64, before: DateTime<Utc>) -> Result<u64, KbError> {
        let tx = self.conn.unchecked_transaction().map_err(self.wrap())?;
        let mut gone = 0;
        gone += tx
            .execute(
                "DELETE FROM memories_text WHERE rowid IN (SELECT rowid FROM memories WHERE last_seen < ?1)",
                [before.to_rfc3339()],
            )
            .map_err(self.wrap())? as u64;
        tx.execute("DELETE FROM memories WHERE last_seen < ?1", [before.to_rfc3339()]).map_err(self.wrap())?;
        let over = "SELECT rowid FROM memories ORDER BY last_seen DESC LIMIT -1 OFFSET ?1";
        gone += tx
            .execute(&format!("DELETE FROM memories_text WHERE rowid IN ({over})"), [max as i64])
            .map_err(self.wrap())? as u64;
        tx.execute(&format!("DELETE FROM memories WHERE rowid IN ({over})"), [max as i64]).map_err(self.wrap())?;
        tx.commit().map_err(self.wrap())?;
        Ok(gone)
    }
}

/// Opens (creating) `knowledge.db` at `path` in the state directory, with
/// the tables of `schema`.
pub(super) fn connect(state: &StateDir, schema: &str, path: &str) -> Result<Connection, KbError> {
    open_retrying(|| {
        let conn = sqlite::connect(state, KB_FILE)?;
        conn.execute_batch(schema)?;
        Ok(conn)
    })
    .map_err(|source| KbError::Sqlite { path: path.to_owned(), source })
}

/// The ids of the FTS5 table `table` (columns `id`, `text`) matching any
/// word of `text`, best first by BM25.
fn by_text(conn: &Connection, table: &str, text: &str, limit: usize) -> rusqlite::Result<Vec<String>> {
    let Some(query) = fts_query(text) else { return Ok(Vec::new()) };
    let mut stmt =
        conn.prepare(&format!("SELECT id FROM {table} WHERE {table} MATCH ?1 ORDER BY bm25({table}) LIMIT ?2"))?;
    let ids = stmt.query_map(params![query, limit as i64], |r| r.get(0))?.collect();
    ids
}

/// The ids of the table `table` (columns `id`, `vector`) whose vectors are
/// nearest to `vector` by cosine, nearest first.
fn by_vector(conn: &Connection, table: &str, vector: &[f32], limit: usize) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("SELECT id, vector FROM {table} WHERE vector IS NOT NULL"))?;
    let mut scored = Vec::new();
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let blob: Vec<u8> = row.get(1)?;
        // A vector of another length (another embedding model) is not comparable.
        if blob.len() != vector.len() * 4 {
            continue;
        }
        scored.push((cosine(vector, &blob), id));
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(scored.into_iter().take(limit).map(|(_, id)| id).collect())
}

/// The ids nearest to `text` in the FTS5 table `fts` and, when `vector` is
/// given, to `vector` in `table`, the two rankings fused; best first.
pub(super) fn search(
    conn: &Connection,
    fts: &str,
    table: &str,
    text: &str,
    vector: Option<&[f32]>,
    limit: usize,
) -> rusqlite::Result<Vec<(String, f64)>> {
    // Each list is longer than the result, so that one ranked a little
    // lower in one list can still win with the other.
    let depth = limit.saturating_mul(4).max(20);
    let mut lists = vec![by_text(conn, fts, text, depth)?];
    if let Some(vector) = vector {
        lists.push(by_vector(conn, table, vector, depth)?);
    }
    Ok(fuse(lists, limit))
}

/// Merges rankings by reciprocal rank: each list gives its `n`th id
/// `1 / (60 + n)`; the best `limit` ids, with their scores (ties by id).
fn fuse(lists: Vec<Vec<String>>, limit: usize) -> Vec<(String, f64)> {
    let mut scores: HashMap<String, f64> = HashMap::new();
    for ids in lists {
        for (rank, id) in ids.into_iter().enumerate() {
            *scores.entry(id).or_default() += 1.0 / (FUSION_K + rank as f64 + 1.0);
        }
    }
    let mut ranked: Vec<(String, f64)> = scores.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(limit);
    ranked
}

/// An FTS5 query matching any word of `text`: each word quoted (so that
/// nothing in it is FTS5 syntax), at most `MAX_QUERY_WORDS`; `None` when
/// it has no words.
fn fts_query(text: &str) -> Option<String> {
    let mut seen = std::collections::BTreeSet::new();
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() > 1)
        .map(str::to_lowercase)
        .filter(|w| seen.insert(w.clone()))
        .take(MAX_QUERY_WORDS)
        .map(|w| format!("\"{w}\""))
        .collect();
    (!words.is_empty()).then(|| words.join(" OR "))
}

pub(super) fn to_blob(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Cosine of `a` and the vector stored as `blob` (little-endian f32).
fn cosine(a: &[f32], blob: &[u8]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, chunk) in a.iter().zip(blob.chunks_exact(4)) {
        let y = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as f64;
        let x = *x as f64;
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

impl Backend for Embedded {
    async fn load(&self, ids: &[String]) -> Result<Vec<Memory>, KbError> {
        let mut stmt = self.conn.prepare("SELECT record FROM memories WHERE id = ?1").map_err(self.wrap())?;
        let mut out = Vec::new();
        for id in ids {
            let record: Option<String> = stmt.query_row([id], |r| r.get(0)).optional().map_err(self.wrap())?;
            if let Some(record) = record {
                out.push(self.decode(id, &record)?);
            }
        }
        Ok(out)
    }

    async fn store(&self, memories: &[(Memory, Option<Vec<f32>>)]) -> Result<(), KbError> {
        let tx = self.conn.unchecked_transaction().map_err(self.wrap())?;
        for (m, vector) in memories {
            let id = m.id();
            let record = serde_json::to_string(m).expect("a memory serialises");
            tx.execute(
                "INSERT INTO memories (id, host, fingerprint, last_seen, record, vector) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET last_seen = ?4, record = ?5,
                     vector = COALESCE(?6, memories.vector)",
                params![id, m.host, m.fingerprint.as_str(), m.last_seen.to_rfc3339(), record, vector.as_deref().map(to_blob)],
            )
            .map_err(self.wrap())?;
            let rowid: i64 =
                tx.query_row("SELECT rowid FROM memories WHERE id = ?1", [&id], |r| r.get(0)).map_err(self.wrap())?;
            tx.execute("DELETE FROM memories_text WHERE rowid = ?1", [rowid]).map_err(self.wrap())?;
            tx.execute("INSERT INTO memories_text (rowid, id, text) VALUES (?1, ?2, ?3)", params![rowid, id, m.text()])
                .map_err(self.wrap())?;
        }
        tx.commit().map_err(self.wrap())
    }

    async fn search(&self, text: &str, vector: Option<&[f32]>, limit: usize) -> Result<Vec<Hit>, KbError> {
        let ranked = search(&self.conn, "memories_text", "memories", text, vector, limit).map_err(self.wrap())?;
        let ids: Vec<String> = ranked.iter().map(|(id, _)| id.clone()).collect();
        let found = self.load(&ids).await?;
        Ok(ranked
            .into_iter()
            .filter_map(|(id, score)| found.iter().find(|m| m.id() == id).map(|m| Hit { memory: m.clone(), score }))
            .collect())
    }

    async fn forget(&self, id: &str) -> Result<bool, KbError> {
        let tx = self.conn.unchecked_transaction().map_err(self.wrap())?;
        tx.execute("DELETE FROM memories_text WHERE rowid IN (SELECT rowid FROM memories WHERE id = ?1)", [id])
            .map_err(self.wrap())?;
        let gone = tx.execute("DELETE FROM memories WHERE id = ?1", [id]).map_err(self.wrap())? > 0;
        tx.commit().map_err(self.wrap())?;
        Ok(gone)
    }

    async fn stats(&self) -> Result<Stats, KbError> {
        let (memories, with_vectors): (i64, i64) = self
            .conn
            .query_row("SELECT COUNT(*), COUNT(vector) FROM memories", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.wrap())?;
        let bytes: i64 = self
            .conn
            .query_row("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()", [], |r| r.get(0))
            .map_err(self.wrap())?;
        Ok(Stats { memories: memories as u64, with_vectors: with_vectors as u64, bytes: bytes as u64 })
    }

    async fn all(&self) -> Result<Vec<Memory>, KbError> {
        let mut stmt = self.conn.prepare("SELECT id, record FROM memories ORDER BY last_seen").map_err(self.wrap())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(self.wrap())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.wrap())?;
        rows.iter().map(|(id, record)| self.decode(id, record)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Event, What};
    use super::*;
    use crate::ids::Fingerprint;

    fn at(day: u32) -> DateTime<Utc> {
        chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 11, day, 3, 0, 0).unwrap()
    }

    fn memory(host: &str, fp: &str, summary: &str, day: u32) -> Memory {
        let fp = Fingerprint::from(fp);
        let mut m = Memory::new(host, &fp, at(day));
        m.apply(&Event {
            at: at(day),
            host: host.into(),
            fingerprint: fp,
            what: What::Opened { summary: summary.into(), generation: None },
        });
        m
    }

    fn open() -> (tempfile::TempDir, Embedded) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::create(&dir.path().join("state")).unwrap();
        let kb = Embedded::open(&state).unwrap();
        (dir, kb)
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn a_memory_is_found_by_its_words_and_stored_once_per_incident() {
        let (_dir, kb) = open();
        let backup = memory("web1", "unit-failed:backup.service", "backup.service failed: No space left on device", 2);
        let nginx = memory("web1", "unit-failed:nginx.service", "nginx.service failed: bind() to 0.0.0.0:80 failed", 3);
        block(kb.store(&[(backup.clone(), None), (nginx.clone(), None)])).unwrap();
        // The same incident again: a new version, not a second memory.
        let mut again = backup.clone();
        again.occurrences = 2;
        block(kb.store(&[(again.clone(), None)])).unwrap();
        assert_eq!(block(kb.stats()).unwrap().memories, 2);

        let hits = block(kb.search("cannot write: no space left on the device", None, 3)).unwrap();
        assert_eq!(hits[0].memory, again, "{hits:?}");
        let hits = block(kb.search("port 80 bind failed", None, 3)).unwrap();
        assert_eq!(hits[0].memory.fingerprint.as_str(), "unit-failed:nginx.service");
        // FTS5 syntax in the text is only words.
        assert!(block(kb.search("\"unbalanced AND OR NEAR( *", None, 3)).is_ok());
        assert!(block(kb.search("", None, 3)).unwrap().is_empty());

        assert!(block(kb.forget(&again.id())).unwrap());
        assert!(!block(kb.forget(&again.id())).unwrap());
        assert_eq!(block(kb.search("no space left", None, 3)).unwrap().len(), 0);
    }

    #[test]
    fn vectors_find_what_the_words_do_not_and_both_together_rank_first() {
        let (_dir, kb) = open();
        let a = memory("web1", "unit-failed:a.service", "alpha", 1);
        let b = memory("web1", "unit-failed:b.service", "bravo", 1);
        let c = memory("web1", "unit-failed:c.service", "charlie", 1);
        block(kb.store(&[
            (a.clone(), Some(vec![1.0, 0.0, 0.0])),
            (b.clone(), Some(vec![0.0, 1.0, 0.0])),
            (c.clone(), Some(vec![0.0, 0.0, 1.0])),
        ]))
        .unwrap();
        let hits = block(kb.search("nothing in common", Some(&[0.1, 0.9, 0.0]), 1)).unwrap();
        assert_eq!(hits[0].memory, b);
        // Words say c, the vector says c: c first; the vector's second is a.
        let hits = block(kb.search("charlie", Some(&[0.3, 0.0, 0.9]), 3)).unwrap();
        assert_eq!(hits[0].memory, c);
        assert_eq!(hits[1].memory, a);
        // A vector of another model's length is not compared.
        assert!(block(kb.search("x", Some(&[1.0, 0.0]), 3)).unwrap().is_empty());
        assert_eq!(block(kb.stats()).unwrap().with_vectors, 3);
    }

    #[test]
    fn pruning_forgets_the_oldest_beyond_the_limit_and_the_ones_not_seen_for_long() {
        let (_dir, kb) = open();
        let ms: Vec<_> =
            (1..=5).map(|d| (memory("web1", &format!("unit-failed:u{d}.service"), "failed", d), None)).collect();
        block(kb.store(&ms)).unwrap();
        assert_eq!(kb.prune(3, at(2)).unwrap(), 2, "day 1 is too old, then one more beyond 3");
        let left: Vec<String> = block(kb.all()).unwrap().iter().map(|m| m.fingerprint.to_string()).collect();
        assert_eq!(left, ["unit-failed:u3.service", "unit-failed:u4.service", "unit-failed:u5.service"]);
        assert!(block(kb.search("u1", None, 5)).unwrap().is_empty());
    }

    #[test]
    fn a_knowledge_db_of_the_first_version_gets_its_text_keyed_by_rowid_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::create(&dir.path().join("state")).unwrap();
        let a = memory("web1", "unit-failed:a.service", "alpha exploded", 1);
        let b = memory("web1", "unit-failed:b.service", "bravo melted", 2);
        {
            let kb = Embedded::open(&state).unwrap();
            block(kb.store(&[(a.clone(), None), (b.clone(), None)])).unwrap();
            // As the first version wrote it: text rows under rowids of their own.
            kb.conn
                .execute_batch(
                    "DELETE FROM memories_text;
                     INSERT INTO memories_text (rowid, id, text) VALUES (70, 'web1/unit-failed:b.service', 'bravo melted');
                     INSERT INTO memories_text (rowid, id, text) VALUES (71, 'web1/unit-failed:a.service', 'alpha exploded');
                     PRAGMA user_version = 0;",
                )
                .unwrap();
        }
        let kb = Embedded::open(&state).unwrap();
        let version: i64 = kb.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, VERSION);
        assert_eq!(block(kb.search("alpha", None, 5)).unwrap()[0].memory, a);
        assert!(block(kb.forget(&a.id())).unwrap());
        assert!(block(kb.search("alpha", None, 5)).unwrap().is_empty(), "its text went with it");
        assert_eq!(block(kb.search("bravo", None, 5)).unwrap()[0].memory, b);
        let texts: i64 = kb.conn.query_row("SELECT COUNT(*) FROM memories_text", [], |r| r.get(0)).unwrap();
        assert_eq!(texts, 1);
        // Removing a text is a rowid lookup (FTS5's plan `INDEX 0:=`), not a
        // scan of every row for its `id` (`INDEX 0:`).
        let plan = |sql: &str| -> String {
            kb.conn.query_row(&format!("EXPLAIN QUERY PLAN {sql}"), [], |r| r.get(3)).unwrap()
        };
        assert!(plan("DELETE FROM memories_text WHERE rowid = 1").ends_with("INDEX 0:="));
        assert!(plan("DELETE FROM memories_text WHERE id = 'x'").ends_with("INDEX 0:"), "the slow form, for contrast");
    }
}
