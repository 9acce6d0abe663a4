//! The incident memory kept up with the audit trail.
//!
//! Everything memory holds is already in the trail: incidents opened and
//! resolved (`incidents.jsonl`), decisions with the gate's verdicts
//! (`decisions.jsonl`), actions carried out and verified or failed,
//! approved or rejected and why (`actions.jsonl`). [`catch_up`] reads what
//! was written since it last ran, turns it into memory events
//! ([`events_of`]) and folds them into the store; the trail's records are
//! marked remembered only once the store took them, so a store that is
//! down loses nothing: the same records are read again next time.
//! [`reindex`] builds the whole memory again from the trail.
//!
//! Each memory that changed is stored with the embedding of its text
//! (`ModelService::embed`). When the embedding model does not answer, the
//! embedded store takes the memories with their full text alone, and the
//! failure comes back as a warning ([`Remembered::unembedded`]) for the
//! caller to log; Chroma, which finds memories only by their embeddings,
//! refuses them, and the catch-up fails ([`RememberError::Unembedded`]):
//! nothing is marked, and the records are taken in when the model answers.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::{params, Connection};
use serde_json::Value;

use crate::audit::{
    self, ActionOutcome, ActionRecord, DecisionOutcome, DecisionRecord, IncidentEvent, IncidentRecord, Origin,
};
use crate::kb::embedded::KB_FILE;
use crate::kb::runbook::Runbooks;
use crate::kb::{self, Backend, Event, KbError, Memory, Proposed, What};
use crate::model::{EmbedError, ModelService};
use crate::sqlite::{self, open_retrying};
use crate::state_dir::StateDir;

/// The trails memory reads, in the order their events are applied when two
/// have the same time (an incident opens before it is decided, and is
/// decided before its action is recorded).
const TRAILS: [&str; 3] = [audit::INCIDENTS, audit::DECISIONS, audit::ACTIONS];

/// How far back each catch-up reads again before its mark: records are
/// appended in time order only within the moments writers wait for the
/// file's lock. Records already remembered are known by their mark.
const OVERLAP: TimeDelta = TimeDelta::minutes(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS remembered_until (trail TEXT PRIMARY KEY, time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS remembered (trail TEXT NOT NULL, mark TEXT NOT NULL, time TEXT NOT NULL,
    PRIMARY KEY (trail, mark));
";

#[derive(Debug, thiserror::Error)]
pub enum RememberError {
    #[error(transparent)]
    Kb(#[from] KbError),
    #[error("the memory's place in the trail ({path}): {source}")]
    Cursor { path: String, source: rusqlite::Error },
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error("cannot take the memory's lock ({path}): {why}")]
    Lock { path: String, why: String },
    /// The store needs embeddings (Chroma), and none could be made.
    #[error("{source}; incident memory in Chroma is stored with embeddings only, so the records wait in the audit trail until the embedding model answers")]
    Unembedded { source: EmbedError },
}

/// What was remembered.
#[derive(Debug, Default)]
pub struct Remembered {
    /// Memories changed ([`apply`]), or trail records taken in
    /// ([`catch_up`], [`reindex`]).
    pub count: usize,
    /// Why the memories were stored with their full text alone, when the
    /// embedding model did not answer (the embedded store takes them so).
    pub unembedded: Option<EmbedError>,
}

/// How incident memory fared the last time a decision used it. The daemon
/// says it when it changes, not at every decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Health {
    /// Memories stored and searched with their embeddings.
    #[default]
    Working,
    /// The embedding model did not answer (why): full text alone.
    TextAlone(String),
    /// The store (or, for Chroma, the embedding model) failed (why):
    /// decisions go on without memory, and the trail's records wait.
    Unavailable(String),
}

/// The memory events of one record of trail `trail`; none for a record
/// that says nothing memory keeps (an action queued, a failed decision).
pub fn events_of(trail: &str, record: &Value) -> Vec<Event> {
    let event = |at, host: &str, fingerprint: &crate::ids::Fingerprint, what| Event {
        at,
        host: host.to_owned(),
        fingerprint: fingerprint.clone(),
        what,
    };
    match trail {
        audit::INCIDENTS => {
            let Ok(r) = serde_json::from_value::<IncidentRecord>(record.clone()) else { return Vec::new() };
            let what = match r.event {
                IncidentEvent::Opened => {
                    What::Opened { summary: r.summary.unwrap_or_default(), generation: r.generation }
                }
                IncidentEvent::Resolved => What::Resolved,
            };
            vec![event(r.time, &r.host, &r.incident, what)]
        }
        audit::DECISIONS => {
            let Ok(r) = serde_json::from_value::<DecisionRecord>(record.clone()) else { return Vec::new() };
            let (DecisionOutcome::Decided, Some(decision)) = (r.outcome, &r.decision) else { return Vec::new() };
            let actions = r
                .gated
                .iter()
                .map(|g| Proposed {
                    action: g.proposed.kind.as_str().to_owned(),
                    target: g.proposed.target(),
                    verdict: g.verdict.clone(),
                })
                .collect();
            let evidence = r.trail.as_ref().map(|t| t.evidence.clone()).filter(|e| !e.is_empty());
            let what =
                What::Decided { summary: r.summary.clone(), evidence, diagnosis: decision.diagnosis.clone(), actions };
            vec![event(r.time, &r.host, &r.incident, what)]
        }
        audit::ACTIONS => {
            let Ok(r) = serde_json::from_value::<ActionRecord>(record.clone()) else { return Vec::new() };
            // A revert takes back a change that broke the host; it is not a
            // fix of the incident (the change's own record says it failed).
            if r.origin == Origin::Revert {
                return Vec::new();
            }
            let what = match r.outcome {
                ActionOutcome::Succeeded | ActionOutcome::Failed => What::CarriedOut {
                    action: r.action.clone(),
                    target: r.target.clone(),
                    verified: r.outcome == ActionOutcome::Succeeded,
                    detail: r.detail.clone(),
                },
                ActionOutcome::Approved | ActionOutcome::Rejected => What::Reviewed {
                    action: r.action.clone(),
                    target: r.target.clone(),
                    by: r.by.clone().unwrap_or_default(),
                    approved: r.outcome == ActionOutcome::Approved,
                    reason: (r.outcome == ActionOutcome::Rejected).then(|| r.detail.clone()),
                },
                _ => return Vec::new(),
            };
            vec![event(r.time, &r.host, &r.incident, what)]
        }
        _ => Vec::new(),
    }
}

/// A record's identity in its trail: the hash it carries of the record
/// before it, unique to its place in the chain.
fn mark_of(record: &Value) -> Option<String> {
    record.get(audit::PREV_HASH).and_then(Value::as_str).map(str::to_owned)
}

fn time_of(record: &Value) -> Option<DateTime<Utc>> {
    let t = record.get("time")?.as_str()?;
    DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&Utc))
}

/// Folds `events` (in order) into the memories they belong to, and stores
/// what changed, each with the embedding of its text when `embed` is given
/// and answers. Returns how many memories changed.
pub async fn apply(
    store: &impl Backend,
    events: &[Event],
    embed: Option<&ModelService>,
) -> Result<Remembered, RememberError> {
    let mut changed: BTreeMap<String, Memory> = BTreeMap::new();
    let ids: Vec<String> = {
        let mut seen = HashSet::new();
        events.iter().map(|e| kb::id_of(&e.host, &e.fingerprint)).filter(|id| seen.insert(id.clone())).collect()
    };
    for m in store.load(&ids).await? {
        changed.insert(m.id(), m);
    }
    for e in events {
        let id = kb::id_of(&e.host, &e.fingerprint);
        changed.entry(id).or_insert_with(|| Memory::new(&e.host, &e.fingerprint, e.at)).apply(e);
    }
    let memories: Vec<Memory> = changed.into_values().collect();
    let (mut vectors, unembedded) = match embed {
        None => (Vec::new(), None),
        Some(model) => match model.embed(&memories.iter().map(Memory::text).collect::<Vec<_>>()).await {
            Ok(embeddings) => (embeddings.vectors, None),
            Err(e) => (Vec::new(), Some(e)),
        },
    };
    vectors.resize(memories.len(), Vec::new());
    let rows: Vec<(Memory, Option<Vec<f32>>)> =
        memories.into_iter().zip(vectors).map(|(m, v)| (m, (!v.is_empty()).then_some(v))).collect();
    match (store.store(&rows).await, unembedded) {
        (Ok(()), unembedded) => Ok(Remembered { count: rows.len(), unembedded }),
        (Err(KbError::NeedsEmbeddings { .. }), Some(source)) => Err(RememberError::Unembedded { source }),
        (Err(e), _) => Err(e.into()),
    }
}

/// Where memory is in the trail, in `knowledge.db`.
struct Cursor {
    conn: Connection,
    path: String,
}

impl Cursor {
    fn open(state: &StateDir) -> Result<Self, RememberError> {
        let path = state.path_of(KB_FILE).display().to_string();
        let conn = open_retrying(|| {
            let conn = sqlite::connect(state, KB_FILE)?;
            conn.execute_batch(SCHEMA)?;
            Ok(conn)
        })
        .map_err(|source| RememberError::Cursor { path: path.clone(), source })?;
        Ok(Self { conn, path })
    }

    fn wrap(&self) -> impl Fn(rusqlite::Error) -> RememberError + '_ {
        |source| RememberError::Cursor { path: self.path.clone(), source }
    }

    fn until(&self, trail: &str) -> Result<Option<DateTime<Utc>>, RememberError> {
        let mut stmt = self.conn.prepare("SELECT time FROM remembered_until WHERE trail = ?1").map_err(self.wrap())?;
        let mut rows = stmt.query([trail]).map_err(self.wrap())?;
        let Some(row) = rows.next().map_err(self.wrap())? else { return Ok(None) };
        let time: String = row.get(0).map_err(self.wrap())?;
        Ok(DateTime::parse_from_rfc3339(&time).ok().map(|t| t.with_timezone(&Utc)))
    }

    fn known(&self, trail: &str) -> Result<HashSet<String>, RememberError> {
        let mut stmt = self.conn.prepare("SELECT mark FROM remembered WHERE trail = ?1").map_err(self.wrap())?;
        let marks = stmt
            .query_map([trail], |r| r.get(0))
            .map_err(self.wrap())?
            .collect::<Result<HashSet<String>, _>>()
            .map_err(self.wrap())?;
        Ok(marks)
    }

    /// Marks the records remembered, moves each trail's mark on, and
    /// forgets the marks older than the overlap.
    fn advance(&self, taken: &[(String, String, DateTime<Utc>)]) -> Result<(), RememberError> {
        let tx = self.conn.unchecked_transaction().map_err(self.wrap())?;
        let mut newest: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
        for (trail, mark, time) in taken {
            tx.execute(
                "INSERT OR IGNORE INTO remembered (trail, mark, time) VALUES (?1, ?2, ?3)",
                params![trail, mark, time.to_rfc3339()],
            )
            .map_err(self.wrap())?;
            let n = newest.entry(trail).or_insert(*time);
            *n = (*n).max(*time);
        }
        for (trail, time) in newest {
            tx.execute(
                "INSERT INTO remembered_until (trail, time) VALUES (?1, ?2)
                 ON CONFLICT (trail) DO UPDATE SET time = MAX(time, ?2)",
                params![trail, time.to_rfc3339()],
            )
            .map_err(self.wrap())?;
            tx.execute(
                "DELETE FROM remembered WHERE trail = ?1 AND time < ?2",
                params![trail, (time - OVERLAP * 2).to_rfc3339()],
            )
            .map_err(self.wrap())?;
        }
        tx.commit().map_err(self.wrap())
    }

    fn reset(&self) -> Result<(), RememberError> {
        self.conn.execute_batch("DELETE FROM remembered; DELETE FROM remembered_until;").map_err(self.wrap())
    }
}

/// Folds into `store` the trail's records written since the last catch-up
/// (all of them the first time, as far back as the trail reads), with
/// embeddings from `embed`. Returns how many records were remembered. When
/// the store fails (or refuses memories without embeddings), nothing is
/// marked, and the same records are read again next time.
pub async fn catch_up(
    state: &StateDir,
    store: &impl Backend,
    embed: Option<&ModelService>,
) -> Result<Remembered, RememberError> {
    let _held = lock(state).await?;
    catch_up_locked(state, store, embed).await
}

/// The file whose lock one process holds while it folds the trail into
/// memory: two at once (the daemon, and `macha kb search`) would both read
/// the same unmarked records and count them twice.
const LOCK_FILE: &str = "knowledge.lock";

/// How long a catch-up waits for another one to finish.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Takes the memory's lock (see [`LOCK_FILE`]), waiting without blocking
/// the runtime; it is let go when the file is dropped.
async fn lock(state: &StateDir) -> Result<std::fs::File, RememberError> {
    let path = state.path_of(LOCK_FILE).display().to_string();
    let fail = |why: String| RememberError::Lock { path: path.clone(), why };
    let file = state.append(LOCK_FILE).map_err(|e| fail(e.to_string()))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(fail(format!("another process has held it for {} s", LOCK_WAIT.as_secs())))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(fail(e.to_string())),
        }
    }
}

async fn catch_up_locked(
    state: &StateDir,
    store: &impl Backend,
    embed: Option<&ModelService>,
) -> Result<Remembered, RememberError> {
    let cursor = Cursor::open(state)?;
    let mut records: Vec<(DateTime<Utc>, usize, String, String, Value)> = Vec::new();
    for (order, trail) in TRAILS.iter().enumerate() {
        let since = cursor.until(trail)?.map_or(DateTime::<Utc>::MIN_UTC, |t| t - OVERLAP);
        let known = cursor.known(trail)?;
        for record in audit::read_since(state, trail, since)? {
            let (Some(mark), Some(time)) = (mark_of(&record), time_of(&record)) else { continue };
            if !known.contains(&mark) {
                records.push((time, order, trail.to_string(), mark, record));
            }
        }
    }
    // Oldest first; at the same moment, in the trails' order.
    records.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let forgotten = forgotten(state)?;
    let events: Vec<Event> = records
        .iter()
        .flat_map(|(_, _, trail, _, r)| events_of(trail, r))
        .filter(|e| forgotten.get(&kb::id_of(&e.host, &e.fingerprint)).is_none_or(|t| e.at > *t))
        .collect();
    let unembedded = if events.is_empty() { None } else { apply(store, &events, embed).await?.unembedded };
    let taken: Vec<(String, String, DateTime<Utc>)> =
        records.into_iter().map(|(time, _, trail, mark, _)| (trail, mark, time)).collect();
    cursor.advance(&taken)?;
    Ok(Remembered { count: taken.len(), unembedded })
}

/// When each memory was last forgotten (`macha kb forget`, recorded in
/// `memory.jsonl`): what the trail holds of it up to then is not folded
/// into memory again, by a catch-up or a reindex; what happens after
/// starts a new memory. A record that does not parse is skipped (the
/// trail's reader says which lines are torn).
fn forgotten(state: &StateDir) -> Result<std::collections::HashMap<String, DateTime<Utc>>, RememberError> {
    let mut out = std::collections::HashMap::new();
    for record in audit::read_since(state, audit::MEMORY, DateTime::<Utc>::MIN_UTC)? {
        let Ok(r) = serde_json::from_value::<audit::MemoryRecord>(record) else { continue };
        if let (audit::MemoryEvent::Forgotten, Some(id)) = (r.event, r.memory) {
            let at = out.entry(id).or_insert(r.time);
            *at = (*at).max(r.time);
        }
    }
    Ok(out)
}

/// Runbook sections embedded per look, at most: a large runbooks
/// directory is embedded over several looks, never all in one decision's
/// way.
const RUNBOOK_EMBED_BATCH: usize = 32;

/// Takes in what changed in the runbooks directory ([`Runbooks::sync`]),
/// saying in the log what was indexed and which files were not (once each,
/// until they change), then embeds sections that have no embedding yet
/// with `embed`, when given. Returns why they stay without one when the
/// embedding model did not answer: the sections are still found by their
/// words.
pub async fn sync_runbooks(runbooks: &Runbooks, embed: Option<&ModelService>) -> Result<Option<EmbedError>, KbError> {
    let synced = runbooks.sync()?;
    if synced.changed() {
        tracing::info!(
            files = synced.files,
            indexed = synced.indexed,
            removed = synced.removed,
            "runbooks indexed again: files changed"
        );
        if synced.over_limit > 0 {
            tracing::warn!(
                left_out = synced.over_limit,
                limit = kb::runbook::MAX_FILES,
                "more runbook files than are indexed; the last in path order are left out"
            );
        }
    }
    for why in &synced.skipped {
        tracing::warn!(runbook = %why, "a runbook is not indexed");
    }
    let Some(model) = embed else { return Ok(None) };
    let missing = runbooks.unembedded(RUNBOOK_EMBED_BATCH)?;
    if missing.is_empty() {
        return Ok(None);
    }
    let texts: Vec<String> = missing.iter().map(|(_, text)| text.clone()).collect();
    match model.embed(&texts).await {
        Ok(embeddings) => {
            let vectors: Vec<(String, Vec<f32>)> =
                missing.into_iter().map(|(id, _)| id).zip(embeddings.vectors).collect();
            runbooks.set_vectors(&vectors)?;
            Ok(None)
        }
        Err(e) => Ok(Some(e)),
    }
}

/// Builds memory again from the whole trail: every memory the trail
/// speaks of is forgotten first, then folded anew (with embeddings from
/// `embed`).
pub async fn reindex(
    state: &StateDir,
    store: &impl Backend,
    embed: Option<&ModelService>,
) -> Result<Remembered, RememberError> {
    let _held = lock(state).await?;
    let cursor = Cursor::open(state)?;
    let mut ids = HashSet::new();
    for trail in TRAILS {
        for record in audit::read_since(state, trail, DateTime::<Utc>::MIN_UTC)? {
            for e in events_of(trail, &record) {
                ids.insert(kb::id_of(&e.host, &e.fingerprint));
            }
        }
    }
    for id in &ids {
        store.forget(id).await?;
    }
    cursor.reset()?;
    catch_up_locked(state, store, embed).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{ActionRecord, IncidentRecord, Origin};
    use crate::config::RetentionConfig;
    use crate::ids::Fingerprint;
    use crate::kb::embedded::Embedded;

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    fn fp() -> Fingerprint {
        "unit-failed:web.service".into()
    }

    fn incident(state: &StateDir, at: DateTime<Utc>, event: IncidentEvent) {
        let rec = IncidentRecord {
            time: at,
            host: "web1".into(),
            incident: fp(),
            event,
            summary: Some("web failed".into()),
            generation: None,
        };
        audit::append(state, audit::INCIDENTS, &rec, RetentionConfig::default().audit()).unwrap();
    }

    fn action(state: &StateDir, at: DateTime<Utc>, outcome: ActionOutcome, by: Option<&str>, detail: &str) {
        let rec = ActionRecord {
            time: at,
            host: "web1".into(),
            incident: fp(),
            action: "restart_unit".into(),
            target: Some("web.service".into()),
            origin: Origin::Automatic,
            approval_id: None,
            by: by.map(str::to_owned),
            auto_id: None,
            outcome,
            detail: detail.into(),
            before: None,
            after: None,
            health: None,
        };
        audit::append(state, audit::ACTIONS, &rec, RetentionConfig::default().audit()).unwrap();
    }

    #[test]
    fn the_trail_is_remembered_once_however_often_memory_catches_up_and_a_reindex_gives_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::create(&dir.path().join("state")).unwrap();
        let kb = Embedded::open(&state).unwrap();
        let t = Utc::now() - TimeDelta::hours(1);
        incident(&state, t, IncidentEvent::Opened);
        action(
            &state,
            t + TimeDelta::seconds(5),
            ActionOutcome::Failed,
            None,
            "web.service failed again after the restart",
        );
        action(&state, t + TimeDelta::seconds(6), ActionOutcome::Queued, None, "queued");
        action(&state, t + TimeDelta::seconds(9), ActionOutcome::Rejected, Some("alice"), "the disk, not the unit");
        incident(&state, t + TimeDelta::seconds(60), IncidentEvent::Resolved);

        assert_eq!(block(catch_up(&state, &kb, None)).unwrap().count, 5);
        assert_eq!(block(catch_up(&state, &kb, None)).unwrap().count, 0, "nothing new");
        let id = kb::id_of("web1", &fp());
        let first = block(kb.load(std::slice::from_ref(&id))).unwrap().pop().unwrap();
        assert_eq!((first.occurrences, first.resolved, first.last_resolve_secs), (1, 1, Some(60)));
        let a = &first.actions[0];
        assert_eq!((a.failed, a.verified, a.reviews.len()), (1, 0, 1));
        assert_eq!(a.reviews[0].reason.as_deref(), Some("the disk, not the unit"));

        // Written since: taken in once, on top.
        incident(&state, t + TimeDelta::seconds(120), IncidentEvent::Opened);
        assert_eq!(block(catch_up(&state, &kb, None)).unwrap().count, 1);
        let now = block(kb.load(std::slice::from_ref(&id))).unwrap().pop().unwrap();
        assert_eq!(now.occurrences, 2);

        // Built again from the trail: the same memory.
        assert_eq!(block(reindex(&state, &kb, None)).unwrap().count, 6);
        assert_eq!(block(kb.load(std::slice::from_ref(&id))).unwrap().pop().unwrap(), now);

        // Forgotten (as `macha kb forget` records it): a reindex does not
        // bring it back; what happens after starts a new memory.
        let forgot = audit::MemoryRecord {
            time: t + TimeDelta::seconds(200),
            host: "web1".into(),
            event: audit::MemoryEvent::Forgotten,
            by: "root (uid 0)".into(),
            memory: Some(id.clone()),
            detail: "wrong lesson".into(),
        };
        audit::append(&state, audit::MEMORY, &forgot, RetentionConfig::default().audit()).unwrap();
        assert!(block(kb.forget(&id)).unwrap());
        block(reindex(&state, &kb, None)).unwrap();
        assert!(block(kb.load(std::slice::from_ref(&id))).unwrap().is_empty(), "not brought back");
        incident(&state, t + TimeDelta::seconds(300), IncidentEvent::Opened);
        block(catch_up(&state, &kb, None)).unwrap();
        let new = block(kb.load(std::slice::from_ref(&id))).unwrap().pop().unwrap();
        assert_eq!((new.occurrences, new.actions.len()), (1, 0), "a new memory: {new:?}");
    }
}
