//! Incident memory in ChromaDB, for a memory shared by a fleet: one Chroma
//! record per memory, its id [`Memory::id`] (`HOST/FINGERPRINT`), its
//! document [`Memory::text`], its embedding that text's, and in its
//! metadata `host`, `fingerprint`, `kind`, `last_seen` (Unix seconds, so
//! that Chroma can filter on it) and the whole memory as JSON (`memory`),
//! which is what is read back. A recurring incident is an upsert of the
//! same id, never a second record.
//!
//! Chroma finds records by their embeddings only: a memory without one is
//! refused ([`KbError::NeedsEmbeddings`]) before anything is sent, and so is
//! a search without a query vector. `remember` then leaves the trail's
//! records unmarked, and they are stored when the embedding model answers
//! again.
//!
//! The collection records the embedding model and dimension it was made
//! for (`kb::chroma`). It is opened when first needed, never at start-up
//! (a Chroma that is down must not hold up the daemon): a reader opens it
//! as it exists, with the space it records, and finds nothing when there is
//! none; only a store creates it, with the configured embedding model
//! (`ollama.embedding_model`, the one `ModelService::embed` asks) and the
//! length of the vectors it was given. So a collection is never made with a
//! dimension guessed or configured, and one made for another model is
//! refused by name.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::chroma::{
    ChromaError, Client, ClientOptions, Collection, EmbeddingSpace, Entry, GetRequest, Include, Metadata,
    MetadataValue, QueryRequest, Record, Selection, Token, Where,
};
use super::{Backend, Hit, KbError, Memory, Stats};
use crate::config::ChromaConfig;

/// Metadata keys of a record.
const HOST: &str = "host";
const FINGERPRINT: &str = "fingerprint";
const KIND: &str = "kind";
const LAST_SEEN: &str = "last_seen";
const MEMORY: &str = "memory";

/// The most bytes of a memory as JSON. A memory is bounded by what it
/// keeps (`MAX_EVIDENCE_CHARS`, `MAX_TEXT_CHARS`, `MAX_ACTIONS`,
/// `MAX_REVIEWS`), far below this; one past it is refused, never cut into
/// JSON that does not read back.
pub const MAX_MEMORY_BYTES: usize = 256 * 1024;

/// Records read per `get` when reading them all (`all`, `prune`).
const PAGE: u32 = 256;

pub struct ChromaStore {
    client: Client,
    name: String,
    /// The embedding model the vectors come from (`ollama.embedding_model`).
    model: String,
    /// The collection once opened (or created); dropped after a failed
    /// call, so the next one opens it again (Chroma may have been replaced).
    open: Mutex<Option<Collection>>,
}

impl ChromaStore {
    /// A store in the configured collection (`knowledge_base.chroma`), for
    /// vectors of `model`; the token is read now, nothing is sent yet.
    pub fn new(config: &ChromaConfig, model: &str) -> Result<Self, KbError> {
        let url = config.url.clone().ok_or_else(|| {
            KbError::Chroma(ChromaError::Invalid(
                "knowledge_base.backend is \"chroma\" but knowledge_base.chroma.url is not set".into(),
            ))
        })?;
        let token = config.token_file.as_deref().map(Token::read).transpose()?;
        let client = Client::new(ClientOptions {
            tenant: config.tenant.clone(),
            database: config.database.clone(),
            token,
            timeout: Duration::from_secs(config.timeout),
            ..ClientOptions::new(url)
        })?;
        Ok(Self { client, name: config.collection.clone(), model: model.to_owned(), open: Mutex::new(None) })
    }

    fn cached(&self) -> Option<Collection> {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn keep(&self, collection: Option<Collection>) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = collection;
    }

    /// The collection as it exists, or `None` when there is none yet.
    async fn existing(&self) -> Result<Option<Collection>, KbError> {
        if let Some(c) = self.cached() {
            return Ok(Some(c));
        }
        let found = self.client.existing(&self.name, &self.model).await?;
        self.keep(found.clone());
        Ok(found)
    }

    /// The collection, created for vectors of `dimension` when missing.
    async fn for_vectors(&self, dimension: usize) -> Result<Collection, KbError> {
        if let Some(c) = self.existing().await? {
            return Ok(c);
        }
        let space = EmbeddingSpace { model: self.model.clone(), dimension };
        let c = self.client.collection(&self.name, &space).await?;
        self.keep(Some(c.clone()));
        Ok(c)
    }

    /// `result`, the cached collection forgotten when it is an error.
    fn settle<T>(&self, result: Result<T, ChromaError>) -> Result<T, KbError> {
        result.map_err(|e| {
            self.keep(None);
            KbError::Chroma(e)
        })
    }

    fn decode(&self, entry: &Entry) -> Result<Memory, KbError> {
        let corrupt = |why: String| KbError::Corrupt {
            path: format!("Chroma collection {:?}", self.name),
            why: format!("record {:?}: {why}", entry.id),
        };
        let Some(MetadataValue::Str(json)) = entry.metadata.as_ref().and_then(|m| m.get(MEMORY)) else {
            return Err(corrupt(format!("no {MEMORY:?} string in its metadata")));
        };
        let memory: Memory = serde_json::from_str(json).map_err(|e| corrupt(e.to_string()))?;
        if memory.id() != entry.id {
            return Err(corrupt(format!("it holds the memory of {:?}", memory.id())));
        }
        Ok(memory)
    }

    /// Every record's id and when it was last seen, a page at a time.
    async fn every(&self, collection: &Collection) -> Result<Vec<Entry>, KbError> {
        let mut out = Vec::new();
        loop {
            let request = GetRequest {
                include: vec![Include::Metadatas],
                limit: Some(PAGE),
                offset: Some(u32::try_from(out.len()).unwrap_or(u32::MAX)),
                ..Default::default()
            };
            let page = self.settle(collection.get(&request).await)?;
            let n = page.len();
            out.extend(page);
            if n < PAGE as usize {
                return Ok(out);
            }
        }
    }

    /// Forgets the memories not seen since `before`, then the least
    /// recently seen beyond `max`; how many were forgotten. Reading every
    /// record's metadata to find the oldest happens only when there are
    /// more than `max`.
    pub async fn prune(&self, max: u64, before: DateTime<Utc>) -> Result<u64, KbError> {
        let Some(collection) = self.existing().await? else { return Ok(0) };
        let old = Selection::Where(Where::lt(LAST_SEEN, before.timestamp()));
        let request = GetRequest { selection: Some(old.clone()), include: vec![], ..Default::default() };
        let mut gone = self.settle(collection.get(&request).await)?.len() as u64;
        if gone > 0 {
            self.settle(collection.delete(&old).await)?;
        }
        let count = self.settle(collection.count().await)?;
        if count > max {
            let mut seen: Vec<(i64, String)> =
                self.every(&collection).await?.into_iter().map(|e| (last_seen_of(&e), e.id)).collect();
            seen.sort();
            let over: Vec<String> = seen.into_iter().take((count - max) as usize).map(|(_, id)| id).collect();
            gone += over.len() as u64;
            self.settle(collection.delete(&Selection::Ids(over)).await)?;
        }
        Ok(gone)
    }
}

fn last_seen_of(entry: &Entry) -> i64 {
    match entry.metadata.as_ref().and_then(|m| m.get(LAST_SEEN)) {
        Some(MetadataValue::Int(t)) => *t,
        _ => i64::MIN,
    }
}

/// The Chroma record of `memory` with its `vector`.
fn record_of(memory: &Memory, vector: Vec<f32>) -> Result<Record, KbError> {
    let json = serde_json::to_string(memory).expect("a memory serialises");
    if json.len() > MAX_MEMORY_BYTES {
        return Err(KbError::TooLarge { id: memory.id(), bytes: json.len(), limit: MAX_MEMORY_BYTES });
    }
    let metadata: Metadata = [
        (HOST, MetadataValue::from(memory.host.as_str())),
        (FINGERPRINT, MetadataValue::from(memory.fingerprint.as_str())),
        (KIND, MetadataValue::from(memory.kind.as_str())),
        (LAST_SEEN, MetadataValue::from(memory.last_seen.timestamp())),
        (MEMORY, MetadataValue::from(json)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok(Record { id: memory.id(), embedding: vector, document: Some(memory.text()), metadata: Some(metadata) })
}

impl Backend for ChromaStore {
    async fn load(&self, ids: &[String]) -> Result<Vec<Memory>, KbError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let Some(collection) = self.existing().await? else { return Ok(Vec::new()) };
        let request = GetRequest {
            selection: Some(Selection::Ids(ids.to_vec())),
            include: vec![Include::Metadatas],
            ..Default::default()
        };
        let found = self.settle(collection.get(&request).await)?;
        found.iter().map(|e| self.decode(e)).collect()
    }

    async fn store(&self, memories: &[(Memory, Option<Vec<f32>>)]) -> Result<(), KbError> {
        let unembedded = memories.iter().filter(|(_, v)| v.is_none()).count();
        if unembedded > 0 {
            return Err(KbError::NeedsEmbeddings { unembedded });
        }
        let records =
            memories.iter().map(|(m, v)| record_of(m, v.clone().unwrap_or_default())).collect::<Result<Vec<_>, _>>()?;
        let Some(first) = records.first() else { return Ok(()) };
        let collection = self.for_vectors(first.embedding.len()).await?;
        self.settle(collection.upsert(&records).await)
    }

    async fn search(&self, _text: &str, vector: Option<&[f32]>, limit: usize) -> Result<Vec<Hit>, KbError> {
        let Some(vector) = vector else { return Err(KbError::NeedsEmbeddings { unembedded: 1 }) };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some(collection) = self.existing().await? else { return Ok(Vec::new()) };
        let request = QueryRequest {
            embeddings: vec![vector.to_vec()],
            n_results: u32::try_from(limit).unwrap_or(u32::MAX),
            filter: None,
            include: vec![Include::Metadatas, Include::Distances],
        };
        let mut found = self.settle(collection.query(&request).await)?;
        let hits = found.pop().unwrap_or_default();
        hits.iter()
            .map(|h| {
                // Cosine distance to similarity: higher is nearer, as the trait says.
                let score = 1.0 - f64::from(h.distance.unwrap_or(1.0));
                Ok(Hit { memory: self.decode(&h.entry)?, score })
            })
            .collect()
    }

    async fn forget(&self, id: &str) -> Result<bool, KbError> {
        let Some(collection) = self.existing().await? else { return Ok(false) };
        let this = Selection::Ids(vec![id.to_owned()]);
        let request = GetRequest { selection: Some(this.clone()), include: vec![], ..Default::default() };
        if self.settle(collection.get(&request).await)?.is_empty() {
            return Ok(false);
        }
        self.settle(collection.delete(&this).await)?;
        Ok(true)
    }

    /// Every record has its embedding; `bytes` is 0: Chroma does not say
    /// what a collection takes.
    async fn stats(&self) -> Result<Stats, KbError> {
        let Some(collection) = self.existing().await? else { return Ok(Stats::default()) };
        let memories = self.settle(collection.count().await)?;
        Ok(Stats { memories, with_vectors: memories, bytes: 0 })
    }

    async fn all(&self) -> Result<Vec<Memory>, KbError> {
        let Some(collection) = self.existing().await? else { return Ok(Vec::new()) };
        let mut memories =
            self.every(&collection).await?.iter().map(|e| self.decode(e)).collect::<Result<Vec<_>, _>>()?;
        memories.sort_by(|a, b| a.last_seen.cmp(&b.last_seen).then_with(|| a.id().cmp(&b.id())));
        Ok(memories)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Event, Noted, Review, What, MAX_ACTIONS, MAX_EVIDENCE_CHARS, MAX_REVIEWS, MAX_TEXT_CHARS};
    use super::*;

    #[test]
    fn the_largest_memory_fits_in_a_record() {
        let at = Utc::now();
        let wide = |n: usize| "€".repeat(n);
        let fp = crate::ids::Fingerprint::from(format!("unit-failed:{}.service", "u".repeat(200)));
        let mut m = Memory::new(&"h".repeat(255), &fp, at);
        m.apply(&Event {
            at,
            host: m.host.clone(),
            fingerprint: fp.clone(),
            what: What::Decided {
                summary: wide(10_000),
                evidence: Some(wide(100_000)),
                diagnosis: wide(10_000),
                actions: (0..MAX_ACTIONS)
                    .map(|i| super::super::Proposed {
                        action: "restart_unit".into(),
                        target: Some(format!("{i}{}", wide(1000))),
                        verdict: "queue".into(),
                    })
                    .collect(),
            },
        });
        for a in &mut m.actions {
            a.last_failure = Some(Noted { at, text: wide(MAX_TEXT_CHARS) });
            a.reviews = (0..MAX_REVIEWS)
                .map(|_| Review { at, by: wide(64), approved: false, reason: Some(wide(MAX_TEXT_CHARS)) })
                .collect();
        }
        assert!(m.evidence.chars().count() <= MAX_EVIDENCE_CHARS);
        let record = record_of(&m, vec![0.5; 4]).unwrap();
        let MetadataValue::Str(json) = &record.metadata.as_ref().unwrap()[MEMORY] else { panic!() };
        assert!(json.len() < MAX_MEMORY_BYTES, "{} bytes", json.len());
        assert_eq!(serde_json::from_str::<Memory>(json).unwrap(), m);
    }
}
