//! Incident memory in ChromaDB (`kb::chroma_store`) against a real Chroma
//! server (`chroma run`, from `tests/chroma/setup.sh`; set
//! `MACHA_CHROMA_DIR`) and the Ollama double's `/api/embed`: memories
//! stored with their embeddings, found, updated in place and forgotten; the
//! same memories as the embedded store from the same trail; nothing lost
//! or doubled when Chroma or the embedding model goes away in the middle;
//! no secret of the redaction corpus in what Chroma or `knowledge.db` holds.

#[path = "corpus/secrets.rs"]
mod secrets;

use std::future::Future;
use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use macha::audit;
use macha::config::{Config, RetentionConfig};
use macha::kb::chroma::{Client, ClientOptions, Entry, GetRequest, Include, MetadataValue};
use macha::kb::{self, Backend, Memory, Store};
use macha::model::ModelService;
use macha::redact::redact;
use macha::remember::{self, RememberError};
use macha::state_dir::StateDir;
use macha_testbed::chroma::Chroma;
use macha_testbed::ollama::{EmbedFault, OllamaDouble};
use serde_json::{json, Value};

const MODEL: &str = "llama3.1:70b";
const EMBEDDER: &str = "nomic-embed-text";
const COLLECTION: &str = "macha-incidents";
const HOST: &str = "web1";
const BACKUP: &str = "unit-failed:backup.service";
const NGINX: &str = "unit-failed:nginx.service";

/// Runs `test` on a single-threaded runtime with a `LocalSet`, as the daemon runs.
fn local<F: Future>(test: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, test)
}

/// A state directory, and the configuration of a daemon that keeps its
/// memory in `chroma` (the embedded store when `None`) and embeds with the
/// double.
struct Host {
    _dir: tempfile::TempDir,
    state: StateDir,
    config: Config,
}

impl Host {
    fn new(double: &OllamaDouble, chroma: Option<&Chroma>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state_path = dir.path().join("state");
        let state = StateDir::create(&state_path).unwrap();
        let backend = match chroma {
            Some(c) => format!("backend = \"chroma\"\n[knowledge_base.chroma]\nurl = \"{}\"\ntimeout = 5\n", c.url()),
            None => "backend = \"embedded\"\n".to_owned(),
        };
        let text = format!(
            "state_dir = \"{}\"\n[ollama]\nurl = \"{}\"\nmodel = \"{MODEL}\"\nembedding_model = \"{EMBEDDER}\"\ntimeout = 5\n\
             [knowledge_base]\n{backend}",
            state_path.display(),
            double.url()
        );
        Self { _dir: dir, state, config: Config::parse(&text).unwrap() }
    }

    fn store(&self) -> Store {
        Store::open(&self.config, &self.state).unwrap()
    }

    fn model(&self) -> ModelService {
        ModelService::new(&self.config).unwrap()
    }

    fn append(&self, trail: &str, record: Value) {
        audit::append(&self.state, trail, &record, RetentionConfig::default().audit()).unwrap();
    }

    fn opened(&self, at: DateTime<Utc>, fingerprint: &str, summary: &str) {
        let record = json!({"time": at, "host": HOST, "incident": fingerprint, "event": "opened", "summary": summary});
        self.append(audit::INCIDENTS, record);
    }

    fn resolved(&self, at: DateTime<Utc>, fingerprint: &str) {
        self.append(audit::INCIDENTS, json!({"time": at, "host": HOST, "incident": fingerprint, "event": "resolved"}));
    }

    /// An action on `fingerprint`'s unit: carried out (`succeeded`,
    /// `failed`, with what the verify probe found) or reviewed
    /// (`rejected`, with the reason).
    fn action(&self, at: DateTime<Utc>, fingerprint: &str, outcome: &str, by: Option<&str>, detail: &str) {
        let unit = fingerprint.trim_start_matches("unit-failed:");
        let mut record = json!({
            "time": at, "host": HOST, "incident": fingerprint, "action": "restart_unit", "target": unit,
            "origin": "automatic", "outcome": outcome, "detail": detail,
        });
        if let Some(by) = by {
            record["by"] = json!(by);
        }
        self.append(audit::ACTIONS, record);
    }

    /// A decision about `fingerprint` that was shown `evidence`.
    fn decided(&self, at: DateTime<Utc>, fingerprint: &str, evidence: &str, diagnosis: &str) {
        let unit = fingerprint.trim_start_matches("unit-failed:");
        let record = json!({
            "time": at, "host": HOST, "incident": fingerprint, "summary": format!("{unit} failed"),
            "model": MODEL, "outcome": "decided", "attempts": 1, "wall_ms": 10,
            "decision": {"diagnosis": diagnosis, "severity": "warning", "actions": []},
            "trail": {"prompt_tokens": 100, "budget_tokens": 1000, "evidence": evidence},
            "gated": [],
        });
        self.append(audit::DECISIONS, record);
    }

    /// The first part of a trail: backup.service fails for want of space
    /// and a restart does not help; nginx.service cannot bind its port.
    fn first_week(&self, t: DateTime<Utc>) -> usize {
        self.opened(t, BACKUP, "backup.service failed: No space left on device");
        self.action(t + secs(5), BACKUP, "failed", None, "backup.service failed again after the restart");
        self.action(t + secs(9), BACKUP, "rejected", Some("alice"), "the disk, not the unit: free /var");
        self.resolved(t + secs(60), BACKUP);
        self.opened(t + secs(70), NGINX, "nginx.service failed: bind() to 0.0.0.0:80 failed (Address in use)");
        5
    }

    /// The same incidents again a week later.
    fn second_week(&self, t: DateTime<Utc>) -> usize {
        let t = t + TimeDelta::days(7);
        self.opened(t, BACKUP, "backup.service failed: No space left on device");
        self.action(t + secs(5), BACKUP, "succeeded", None, "backup.service is active");
        self.resolved(t + secs(30), BACKUP);
        self.resolved(t + secs(40), NGINX);
        4
    }
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

fn start() -> DateTime<Utc> {
    Utc::now() - TimeDelta::days(30)
}

/// What Chroma holds, read with macha's client as it stands on the server.
async fn chroma_records(chroma: &Chroma) -> Vec<Entry> {
    let client = Client::new(ClientOptions::new(chroma.url())).unwrap();
    let Some(collection) = client.existing(COLLECTION, EMBEDDER).await.unwrap() else { return Vec::new() };
    let request = GetRequest { include: vec![Include::Documents, Include::Metadatas], ..Default::default() };
    let mut entries = collection.get(&request).await.unwrap();
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    entries
}

/// Every memory, ordered by id.
async fn memories(store: &Store) -> Vec<Memory> {
    let mut all = store.all().await.unwrap();
    all.sort_by_key(Memory::id);
    all
}

async fn memory(store: &Store, fingerprint: &str) -> Memory {
    let id = kb::id_of(HOST, &fingerprint.into());
    store.load(std::slice::from_ref(&id)).await.unwrap().pop().expect("remembered")
}

#[test]
fn a_memory_is_stored_with_its_embedding_found_updated_in_place_and_forgotten() {
    let double = OllamaDouble::start(&[MODEL, EMBEDDER]).unwrap();
    let chroma = Chroma::start().unwrap();
    let host = Host::new(&double, Some(&chroma));
    let t = start();
    local(async {
        let (store, model) = (host.store(), host.model());
        let written = host.first_week(t);
        let caught = remember::catch_up(&host.state, &store, Some(&model)).await.unwrap();
        assert_eq!(caught.count, written);
        assert!(caught.unembedded.is_none());
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.memories, stats.with_vectors), (2, 2));

        // The collection was made for the embedding model and the dimension it answered.
        let client = Client::new(ClientOptions::new(chroma.url())).unwrap();
        let collection = client.existing(COLLECTION, EMBEDDER).await.unwrap().unwrap();
        assert_eq!(collection.space().dimension, 768);

        // Each record: the memory's text, its host, fingerprint and kind, the memory itself.
        let records = chroma_records(&chroma).await;
        let backup = memory(&store, BACKUP).await;
        assert_eq!(records[0].id, backup.id());
        assert_eq!(records[0].document.as_deref(), Some(backup.text().as_str()));
        let metadata = records[0].metadata.as_ref().unwrap();
        assert_eq!(metadata["host"], MetadataValue::from(HOST));
        assert_eq!(metadata["fingerprint"], MetadataValue::from(BACKUP));
        assert_eq!(metadata["kind"], MetadataValue::from("unit-failed"));
        assert_eq!(metadata["last_seen"], MetadataValue::from(backup.last_seen.timestamp()));
        let a = &backup.actions[0];
        assert_eq!((a.failed, a.reviews.len()), (1, 1), "{backup:?}");

        // Found by meaning: the query's embedding is nearest to backup's.
        let query = "backup.service: write failed, no space left on device /var".to_owned();
        let vector = model.embed(std::slice::from_ref(&query)).await.unwrap().vectors.pop().unwrap();
        let hits = store.search(&query, Some(&vector), 2).await.unwrap();
        assert_eq!(hits[0].memory, backup, "{hits:?}");
        assert!(hits[0].score > hits[1].score);
        let err = store.search(&query, None, 2).await.unwrap_err().to_string();
        assert!(err.contains("needs embeddings") && err.contains("ollama.embedding_model"), "{err}");

        // The same incidents again: the same two records, updated.
        let written = host.second_week(t);
        assert_eq!(remember::catch_up(&host.state, &store, Some(&model)).await.unwrap().count, written);
        assert_eq!(store.stats().await.unwrap().memories, 2);
        assert_eq!(chroma_records(&chroma).await.len(), 2, "a recurring incident is never a second record");
        let backup = memory(&store, BACKUP).await;
        assert_eq!((backup.occurrences, backup.resolved), (2, 2));
        assert_eq!((backup.actions[0].verified, backup.actions[0].failed), (1, 1));

        assert!(store.forget(&backup.id()).await.unwrap());
        assert!(!store.forget(&backup.id()).await.unwrap(), "forgotten already");
        assert_eq!(store.stats().await.unwrap().memories, 1);
        let hits = store.search(&query, Some(&vector), 5).await.unwrap();
        assert!(hits.iter().all(|h| h.memory.id() != backup.id()), "{hits:?}");
    });
}

#[test]
fn the_embedded_store_and_chroma_remember_the_same_from_the_same_trail() {
    let double = OllamaDouble::start(&[MODEL, EMBEDDER]).unwrap();
    let chroma = Chroma::start().unwrap();
    let (in_chroma, embedded) = (Host::new(&double, Some(&chroma)), Host::new(&double, None));
    let t = start();
    local(async {
        for host in [&in_chroma, &embedded] {
            host.first_week(t);
            host.decided(t + secs(2), BACKUP, "backup[991]: write /var/backup/db.tar: No space left on device", "full");
            host.second_week(t);
            let caught = remember::catch_up(&host.state, &host.store(), Some(&host.model())).await.unwrap();
            assert_eq!(caught.count, 10);
        }
        let (a, b) = (memories(&in_chroma.store()).await, memories(&embedded.store()).await);
        assert_eq!(a.len(), 2);
        assert_eq!(a, b);
        assert_eq!(embedded.store().stats().await.unwrap().with_vectors, 2, "the embedded store keeps the vectors too");
    });
}

#[test]
fn with_chroma_stopped_the_records_wait_and_arrive_once_when_it_is_back() {
    let double = OllamaDouble::start(&[MODEL, EMBEDDER]).unwrap();
    let mut chroma = Chroma::start().unwrap();
    let (host, reference) = (Host::new(&double, Some(&chroma)), Host::new(&double, None));
    let t = start();
    local(async {
        let (store, model) = (host.store(), host.model());
        host.first_week(t);
        remember::catch_up(&host.state, &store, Some(&model)).await.unwrap();

        chroma.stop().unwrap();
        let held = host.second_week(t);
        for _ in 0..2 {
            let err = remember::catch_up(&host.state, &store, Some(&model)).await.unwrap_err();
            let said = err.to_string();
            assert!(matches!(err, RememberError::Kb(kb::KbError::Chroma(_))), "{said}");
            assert!(said.contains("cannot reach") && said.contains(&chroma.url()), "{said}");
        }
        assert!(store.load(&[kb::id_of(HOST, &BACKUP.into())]).await.is_err(), "Chroma is down");

        chroma.start_again().unwrap();
        let caught = remember::catch_up(&host.state, &store, Some(&model)).await.unwrap();
        assert_eq!(caught.count, held, "every held record, and none taken in before");
        assert_eq!(remember::catch_up(&host.state, &store, Some(&model)).await.unwrap().count, 0);

        // The same memories as a store that never went away.
        reference.first_week(t);
        reference.second_week(t);
        remember::catch_up(&reference.state, &reference.store(), None).await.unwrap();
        assert_eq!(memories(&store).await, memories(&reference.store()).await);
        assert_eq!(chroma_records(&chroma).await.len(), 2);
    });
}

#[test]
fn without_embeddings_chroma_holds_the_records_back_and_the_embedded_store_keeps_full_text() {
    let double = OllamaDouble::start(&[MODEL, EMBEDDER]).unwrap();
    let chroma = Chroma::start().unwrap();
    let (in_chroma, embedded) = (Host::new(&double, Some(&chroma)), Host::new(&double, None));
    let t = start();
    local(async {
        for host in [&in_chroma, &embedded] {
            host.first_week(t);
        }
        let down = || EmbedFault::Status(500, "model runner has unexpectedly stopped".into());

        double.push_embed(down());
        let (store, model) = (in_chroma.store(), in_chroma.model());
        let err = remember::catch_up(&in_chroma.state, &store, Some(&model)).await.unwrap_err();
        assert!(matches!(err, RememberError::Unembedded { .. }), "{err}");
        assert!(err.to_string().contains("wait in the audit trail"), "{err}");
        assert_eq!(store.stats().await.unwrap().memories, 0, "nothing stored without its embedding");
        let caught = remember::catch_up(&in_chroma.state, &store, Some(&model)).await.unwrap();
        assert_eq!(caught.count, 5, "the held records, once the model answers");
        assert_eq!(store.stats().await.unwrap().memories, 2);

        double.push_embed(down());
        let (store, model) = (embedded.store(), embedded.model());
        let caught = remember::catch_up(&embedded.state, &store, Some(&model)).await.unwrap();
        assert_eq!(caught.count, 5, "taken in with full text alone");
        let warning = caught.unembedded.expect("the failure, for the caller to log").to_string();
        assert!(warning.contains("cannot embed") && warning.contains("HTTP 500"), "{warning}");
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.memories, stats.with_vectors), (2, 0));
        let hits = store.search("no space left on device", None, 1).await.unwrap();
        assert_eq!(hits[0].memory.fingerprint.as_str(), BACKUP);
    });
}

/// Everything in Chroma's records as one text: ids, documents and every
/// metadata string, unescaped.
fn stored_text(records: &[Entry]) -> String {
    let mut out = String::new();
    for r in records {
        out.push_str(&r.id);
        out.push_str(r.document.as_deref().unwrap_or_default());
        for value in r.metadata.iter().flat_map(|m| m.values()) {
            if let MetadataValue::Str(s) = value {
                out.push_str(s);
            }
        }
    }
    out
}

/// The bytes of `knowledge.db` and its journal files.
fn knowledge_db_bytes(state: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(state).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("knowledge.db") {
            out.extend(std::fs::read(&path).unwrap());
        }
    }
    assert!(!out.is_empty(), "no knowledge.db in {}", state.display());
    out
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn no_secret_of_the_redaction_corpus_reaches_chroma_or_knowledge_db() {
    let double = OllamaDouble::start(&[MODEL, EMBEDDER]).unwrap();
    let chroma = Chroma::start().unwrap();
    let (in_chroma, embedded) = (Host::new(&double, Some(&chroma)), Host::new(&double, None));
    let t = start();
    // Each line of the corpus as the summary, the evidence, the diagnosis,
    // a failed verification and a rejection reason of an incident of its own.
    for host in [&in_chroma, &embedded] {
        for (i, case) in secrets::SECRETS.iter().enumerate() {
            let (line, fp, at) = (secrets::line_of(case), format!("unit-failed:leak{i}.service"), t + secs(i as i64));
            host.opened(at, &fp, &line);
            host.decided(at, &fp, &line, &line);
            host.action(at, &fp, "failed", None, &line);
            host.action(at, &fp, "rejected", Some("alice"), &line);
        }
    }
    local(async {
        for host in [&in_chroma, &embedded] {
            remember::catch_up(&host.state, &host.store(), Some(&host.model())).await.unwrap();
        }
    });
    let in_chroma_text = stored_text(&local(chroma_records(&chroma)));
    assert_eq!(local(chroma_records(&chroma)).len(), secrets::SECRETS.len());
    let db = knowledge_db_bytes(embedded.state.path());
    let embedded_requests: String = double
        .requests()
        .iter()
        .filter(|r| r.path == "/api/embed")
        .flat_map(|r| r.body["input"].as_array().cloned().unwrap_or_default())
        .filter_map(|text| text.as_str().map(str::to_owned))
        .collect();
    for case in secrets::SECRETS {
        assert!(!in_chroma_text.contains(case.secret), "Chroma received {:?}", case.secret);
        assert!(!holds(&db, case.secret), "knowledge.db holds {:?}", case.secret);
        assert!(!embedded_requests.contains(case.secret), "the embedding model was sent {:?}", case.secret);
        // The line arrived, masked (where it fits a kept text whole).
        let masked = redact(&secrets::line_of(case)).into_owned();
        if masked.chars().count() <= kb::MAX_TEXT_CHARS && !masked.contains('\n') {
            let marker = format!("[redacted:{}]", case.kind);
            assert!(in_chroma_text.contains(&marker), "no {marker} in Chroma for {:?}", case.line);
            assert!(holds(&db, &marker), "no {marker} in knowledge.db for {:?}", case.line);
        }
    }
}

#[test]
fn pruning_in_chroma_forgets_the_ones_not_seen_for_long_then_the_oldest_beyond_the_limit() {
    let double = OllamaDouble::start(&[MODEL, EMBEDDER]).unwrap();
    let chroma = Chroma::start().unwrap();
    let host = Host::new(&double, Some(&chroma));
    let t = start();
    local(async {
        let (store, model) = (host.store(), host.model());
        assert_eq!(store.prune(3, t).await.unwrap(), 0, "no collection yet: nothing to prune");
        for day in 1..=5 {
            host.opened(t + TimeDelta::days(day), &format!("unit-failed:u{day}.service"), "failed");
        }
        remember::catch_up(&host.state, &store, Some(&model)).await.unwrap();
        assert_eq!(store.stats().await.unwrap().memories, 5);
        // Day 1 is before the age limit; then one more is beyond 3.
        assert_eq!(store.prune(3, t + TimeDelta::days(2)).await.unwrap(), 2);
        let left: Vec<String> = memories(&store).await.iter().map(|m| m.fingerprint.to_string()).collect();
        assert_eq!(left, ["unit-failed:u3.service", "unit-failed:u4.service", "unit-failed:u5.service"]);
        assert_eq!(chroma_records(&chroma).await.len(), 3);
        assert_eq!(store.prune(3, t).await.unwrap(), 0, "within both limits: nothing more");
    });
}
