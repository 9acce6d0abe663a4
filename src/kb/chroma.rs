//! A small typed client for Chroma's v2 REST API: the ChromaDB backend of
//! the incident memory talks to Chroma through this and nothing else.
//!
//! macha speaks the REST API itself rather than through the `chromadb`
//! crate: the API is about ten calls, and the crate (2.3.0) brings a second
//! HTTP stack, still calls the removed v1 API for its heartbeat and version,
//! and fails to decode a query whose hits lack a document (measured; see the
//! ChromaDB notes of the protocol reference).
//!
//! What this client keeps, whatever Chroma answers:
//! - Every answer is read within a limit ([`Limits`]), and every call within
//!   the client's timeout; a server that cannot be reached, one that does
//!   not answer in time, one that refuses, and one that answers nonsense are
//!   told apart ([`ChromaError`]), each naming the operation.
//! - A collection records the embedding model and dimension it was made
//!   for (`macha:embedding_model`, `macha:dimension` in its metadata, with
//!   `hnsw:space` = `cosine`); macha never writes into, or queries, a
//!   collection that records another model or dimension, nor one that
//!   records none.
//! - Chroma never computes an embedding: every record and query carries
//!   its own, checked against the collection's dimension before it is sent.
//! - The token is read from a file, sent as `x-chroma-token` (Chroma Cloud,
//!   and Chroma's own token authentication when set to that header) and as
//!   `Authorization: Bearer` (that authentication's default, and what an
//!   authenticating proxy in front of `chroma run`, which checks no token
//!   itself, usually reads), both marked sensitive, and never shown in a
//!   message or a `Debug`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::bounded::{self, BodyError, Size};
use crate::errors::chain;
use crate::text;

/// Chroma's defaults, the tenant and database of a server nobody set up.
pub const DEFAULT_TENANT: &str = "default_tenant";
pub const DEFAULT_DATABASE: &str = "default_database";

/// Where Chroma is, which tenant and database macha uses there, and how long
/// and how much macha waits and reads.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The server's base URL, without `/api/v2` (`http://127.0.0.1:8000`).
    pub url: String,
    pub tenant: String,
    pub database: String,
    pub token: Option<Token>,
    /// For each call, from connecting to the last byte of the answer.
    pub timeout: Duration,
    pub limits: Limits,
}

impl ClientOptions {
    /// `url`, the default tenant and database, no token, a 10 s timeout and
    /// the default limits.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tenant: DEFAULT_TENANT.to_owned(),
            database: DEFAULT_DATABASE.to_owned(),
            token: None,
            timeout: Duration::from_secs(10),
            limits: Limits::default(),
        }
    }
}

/// The most macha reads of Chroma's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Records: what `get` and `query` return (with embeddings, 1 000
    /// records of 768 dimensions are about 10 MiB).
    pub records: Size,
    /// Anything else: a heartbeat, a version, a count, a collection's
    /// description (about 2 KiB), an error.
    pub other: Size,
}

impl Default for Limits {
    fn default() -> Self {
        Self { records: Size::mib(64), other: Size::kib(256) }
    }
}

/// The token Chroma (or a proxy in front of it) checks. Its `Debug` never
/// shows it.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token([redacted])")
    }
}

impl Token {
    /// Reads the token from `path`: its first line, trimmed.
    pub fn read(path: &Path) -> Result<Self, ChromaError> {
        let token = bounded::read_secret(path, "the Chroma token file").map_err(ChromaError::Token)?;
        if HeaderValue::from_str(&token).is_err() {
            let reason = "its first line holds characters an HTTP header cannot carry";
            return Err(ChromaError::Token(format!("the Chroma token file {}: {reason}", path.display())));
        }
        Ok(Self(token.to_owned()))
    }
}

/// The embedding model a collection holds embeddings of, and their
/// dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingSpace {
    pub model: String,
    pub dimension: usize,
}

impl fmt::Display for EmbeddingSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "model {:?} ({} dimensions)", self.model, self.dimension)
    }
}

const SPACE: &str = "hnsw:space";
const MODEL_KEY: &str = "macha:embedding_model";
const DIMENSION_KEY: &str = "macha:dimension";

/// A metadata value, as Chroma stores them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetadataValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl From<&str> for MetadataValue {
    fn from(s: &str) -> Self {
        Self::Str(s.to_owned())
    }
}

impl From<String> for MetadataValue {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}

impl From<i64> for MetadataValue {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

impl From<f64> for MetadataValue {
    fn from(x: f64) -> Self {
        Self::Float(x)
    }
}

impl From<bool> for MetadataValue {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

/// A record's metadata: keys to values.
pub type Metadata = BTreeMap<String, MetadataValue>;

/// One record to add or upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub embedding: Vec<f32>,
    pub document: Option<String>,
    pub metadata: Option<Metadata>,
}

/// A filter on metadata, in Chroma's `where` language.
#[derive(Debug, Clone, PartialEq)]
pub struct Where(Value);

impl Where {
    /// `key` equals `value`.
    pub fn eq(key: &str, value: impl Into<MetadataValue>) -> Self {
        Self(json!({ key: { "$eq": value.into() } }))
    }

    /// `key` differs from `value` (or is absent).
    pub fn ne(key: &str, value: impl Into<MetadataValue>) -> Self {
        Self(json!({ key: { "$ne": value.into() } }))
    }

    /// `key` is one of `values`.
    pub fn is_in(key: &str, values: impl IntoIterator<Item = impl Into<MetadataValue>>) -> Self {
        let values: Vec<MetadataValue> = values.into_iter().map(Into::into).collect();
        Self(json!({ key: { "$in": values } }))
    }

    /// `key` is a number below `value`.
    pub fn lt(key: &str, value: impl Into<MetadataValue>) -> Self {
        Self(json!({ key: { "$lt": value.into() } }))
    }

    /// Every one of `filters` holds (Chroma wants at least two under `$and`:
    /// one is itself).
    pub fn all(filters: Vec<Where>) -> Self {
        Self::combine("$and", filters)
    }

    /// At least one of `filters` holds.
    pub fn any(filters: Vec<Where>) -> Self {
        Self::combine("$or", filters)
    }

    fn combine(operator: &str, mut filters: Vec<Where>) -> Self {
        if filters.len() == 1 {
            return filters.remove(0);
        }
        let filters: Vec<Value> = filters.into_iter().map(|w| w.0).collect();
        Self(json!({ operator: filters }))
    }
}

/// Which records an operation is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    Ids(Vec<String>),
    Where(Where),
    /// Those of the ids that also match the filter.
    IdsWhere(Vec<String>, Where),
}

impl Selection {
    fn write(&self, body: &mut serde_json::Map<String, Value>) {
        let (ids, filter) = match self {
            Self::Ids(ids) => (Some(ids), None),
            Self::Where(w) => (None, Some(w)),
            Self::IdsWhere(ids, w) => (Some(ids), Some(w)),
        };
        if let Some(ids) = ids {
            body.insert("ids".into(), json!(ids));
        }
        if let Some(w) = filter {
            body.insert("where".into(), w.0.clone());
        }
    }
}

/// What a `get` or `query` returns besides the ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    Documents,
    Metadatas,
    Embeddings,
    /// `query` only.
    Distances,
}

impl Include {
    fn name(self) -> &'static str {
        match self {
            Self::Documents => "documents",
            Self::Metadatas => "metadatas",
            Self::Embeddings => "embeddings",
            Self::Distances => "distances",
        }
    }
}

/// A `get`: which records (all of them without a selection), which fields,
/// and which page.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GetRequest {
    pub selection: Option<Selection>,
    pub include: Vec<Include>,
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

/// A `query`: the nearest `n_results` records to each embedding, among
/// those the filter lets through.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRequest {
    pub embeddings: Vec<Vec<f32>>,
    pub n_results: u32,
    pub filter: Option<Where>,
    pub include: Vec<Include>,
}

/// A stored record as read back; a field not asked for (or never set) is
/// `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    pub document: Option<String>,
    pub metadata: Option<Metadata>,
    pub embedding: Option<Vec<f32>>,
}

/// A record found by a query, nearest first; `distance` is the cosine
/// distance (0 = same direction) when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub entry: Entry,
    pub distance: Option<f32>,
}

/// What macha asked Chroma to do, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Heartbeat,
    Version,
    GetTenant,
    CreateTenant,
    GetDatabase,
    CreateDatabase,
    OpenCollection,
    Add,
    Upsert,
    Get,
    Query,
    Delete,
    Count,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Heartbeat => "heartbeat",
            Self::Version => "version",
            Self::GetTenant => "get tenant",
            Self::CreateTenant => "create tenant",
            Self::GetDatabase => "get database",
            Self::CreateDatabase => "create database",
            Self::OpenCollection => "get or create collection",
            Self::Add => "add",
            Self::Upsert => "upsert",
            Self::Get => "get",
            Self::Query => "query",
            Self::Delete => "delete",
            Self::Count => "count",
        })
    }
}

/// Why a call to Chroma gave no result. `at` says where: the server, and the
/// collection when there is one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChromaError {
    #[error("cannot reach {at} for {operation}: {detail}")]
    Unreachable { operation: Operation, at: String, detail: String },
    #[error("{at} did not answer {operation} within {secs} s")]
    Timeout { operation: Operation, at: String, secs: u64 },
    /// An error status; `kind` and `message` are Chroma's own (`{"error":
    /// KIND, "message": MESSAGE}`), or the start of the body when it is not
    /// Chroma's error shape.
    #[error("{at} refused {operation}: HTTP {status} {kind}: {message}")]
    Refused { operation: Operation, at: String, status: u16, kind: String, message: String },
    /// Embeddings of another dimension than the collection's: found by macha
    /// before sending (`message` says which), or by Chroma (`message` is
    /// Chroma's words).
    #[error("{at} cannot take the embeddings of this {operation}: {message}")]
    DimensionMismatch { operation: Operation, at: String, message: String },
    /// The collection exists and records other embeddings than macha's.
    #[error(
        "{at} holds embeddings of {recorded}, not of {wanted}; macha keeps one model's embeddings per collection: \
         name another collection, or delete this one and index again"
    )]
    WrongEmbeddingSpace { at: String, recorded: String, wanted: EmbeddingSpace },
    /// The same, found when opening a collection without embeddings at
    /// hand: only the model is known.
    #[error(
        "{at} holds embeddings of {recorded}, not of model {wanted:?}; macha keeps one model's embeddings per \
         collection: name another collection, or delete this one and index again"
    )]
    WrongModel { at: String, recorded: String, wanted: String },
    #[error("{at} sent an answer to {operation} larger than {limit}, the most macha reads of it")]
    TooLarge { operation: Operation, at: String, limit: Size },
    #[error("{at} sent an answer to {operation} that is not Chroma's: {detail}")]
    BadResponse { operation: Operation, at: String, detail: String },
    /// A tenant, database or collection name Chroma would refuse, or a
    /// request macha will not send.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Token(String),
}

/// A connection to one Chroma server, one tenant and one database there.
/// Cheap to clone (the HTTP client is shared).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `URL/api/v2`.
    api: String,
    url: String,
    tenant: String,
    database: String,
    timeout_secs: u64,
    limits: Limits,
}

impl Client {
    /// A client for `options`; nothing is sent yet.
    pub fn new(options: ClientOptions) -> Result<Self, ChromaError> {
        check_name("tenant", &options.tenant)?;
        check_name("database", &options.database)?;
        let url = options.url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| ChromaError::Invalid(format!("the Chroma URL {url:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
            return Err(ChromaError::Invalid(format!("the Chroma URL {url:?} is not an http(s) URL without a query")));
        }
        let mut headers = HeaderMap::new();
        if let Some(Token(token)) = &options.token {
            let mut x_token = HeaderValue::from_str(token)
                .map_err(|_| ChromaError::Token("the Chroma token cannot be sent in an HTTP header".into()))?;
            x_token.set_sensitive(true);
            let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ChromaError::Token("the Chroma token cannot be sent in an HTTP header".into()))?;
            bearer.set_sensitive(true);
            headers.insert("x-chroma-token", x_token);
            headers.insert(AUTHORIZATION, bearer);
        }
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(10)))
            .default_headers(headers)
            .build()
            .map_err(|e| ChromaError::Invalid(format!("cannot build an HTTP client for Chroma: {}", chain(&e))))?;
        Ok(Self {
            http,
            api: format!("{url}/api/v2"),
            url,
            tenant: options.tenant,
            database: options.database,
            timeout_secs: options.timeout.as_secs().max(1),
            limits: options.limits,
        })
    }

    /// The server's clock in nanoseconds: it answers.
    pub async fn heartbeat(&self) -> Result<u64, ChromaError> {
        #[derive(Deserialize)]
        struct Beat {
            #[serde(rename = "nanosecond heartbeat")]
            nanoseconds: u64,
        }
        let at = self.server();
        let call = Call { client: self, operation: Operation::Heartbeat, at: &at, limit: self.limits.other };
        let beat: Beat = call.send(self.http.get(format!("{}/heartbeat", self.api))).await?;
        Ok(beat.nanoseconds)
    }

    /// The server's version (`1.0.0` for `chroma run` of chromadb 1.5).
    pub async fn version(&self) -> Result<String, ChromaError> {
        let at = self.server();
        let call = Call { client: self, operation: Operation::Version, at: &at, limit: self.limits.other };
        call.send(self.http.get(format!("{}/version", self.api))).await
    }

    /// The collection `name` of this tenant and database, made for `space`:
    /// created (with the tenant and database, when they are missing) if it
    /// does not exist, refused if it records another embedding model or
    /// dimension, or none.
    pub async fn collection(&self, name: &str, space: &EmbeddingSpace) -> Result<Collection, ChromaError> {
        check_name("collection", name)?;
        if space.dimension == 0 || space.model.trim().is_empty() {
            return Err(ChromaError::Invalid(format!("an embedding space needs a model and a dimension, not {space}")));
        }
        self.ensure_database().await?;
        let at = self.server();
        let call = Call { client: self, operation: Operation::OpenCollection, at: &at, limit: self.limits.other };
        let body = json!({
            "name": name,
            "metadata": { SPACE: "cosine", MODEL_KEY: space.model, DIMENSION_KEY: space.dimension },
            "get_or_create": true,
        });
        let described: Described = call.send(self.http.post(self.collections_url()).json(&body)).await?;
        check_collection_id(&call, &described.id)?;
        let at = self.collection_at(name);
        let metadata = described.metadata.unwrap_or_default();
        let recorded = recorded_space(&metadata);
        if recorded.as_ref() != Some(space) {
            let recorded = describe_recorded(recorded.as_ref());
            return Err(ChromaError::WrongEmbeddingSpace { at, recorded, wanted: space.clone() });
        }
        Ok(Collection { client: self.clone(), id: described.id, name: name.to_owned(), space: space.clone(), at })
    }

    /// The collection `name` as it exists, with the embedding space it
    /// records, when it was made for `model`; `None` when there is no such
    /// collection (nor tenant or database). Nothing is created: this is how
    /// a reader that has no embeddings yet, and so no dimension, opens it.
    pub async fn existing(&self, name: &str, model: &str) -> Result<Option<Collection>, ChromaError> {
        check_name("collection", name)?;
        let at = self.server();
        let call = Call { client: self, operation: Operation::OpenCollection, at: &at, limit: self.limits.other };
        let (status, body) = call.exchange(self.http.get(format!("{}/{name}", self.collections_url()))).await?;
        if status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(call.refused(status, &body));
        }
        let described: Described = call.parse(&body)?;
        check_collection_id(&call, &described.id)?;
        let at = self.collection_at(name);
        let metadata = described.metadata.unwrap_or_default();
        let recorded = recorded_space(&metadata);
        match recorded {
            Some(space) if space.model == model => {
                Ok(Some(Collection { client: self.clone(), id: described.id, name: name.to_owned(), space, at }))
            }
            _ => Err(ChromaError::WrongModel {
                at,
                recorded: describe_recorded(recorded.as_ref()),
                wanted: model.to_owned(),
            }),
        }
    }

    /// Creates the tenant and the database when they are missing (Chroma
    /// has only `default_tenant`/`default_database` at first).
    async fn ensure_database(&self) -> Result<(), ChromaError> {
        let at = self.server();
        let tenant_url = format!("{}/tenants/{}", self.api, self.tenant);
        let get = Call { client: self, operation: Operation::GetTenant, at: &at, limit: self.limits.other };
        if get.exists(self.http.get(&tenant_url)).await? == Exists::No {
            let create = Call { operation: Operation::CreateTenant, ..get };
            create
                .created(self.http.post(format!("{}/tenants", self.api)).json(&json!({ "name": self.tenant })))
                .await?;
        }
        let database_url = format!("{tenant_url}/databases/{}", self.database);
        let get = Call { operation: Operation::GetDatabase, ..get };
        if get.exists(self.http.get(&database_url)).await? == Exists::No {
            let create = Call { operation: Operation::CreateDatabase, ..get };
            let body = json!({ "name": self.database });
            create.created(self.http.post(format!("{tenant_url}/databases")).json(&body)).await?;
        }
        Ok(())
    }

    fn collections_url(&self) -> String {
        format!("{}/tenants/{}/databases/{}/collections", self.api, self.tenant, self.database)
    }

    fn server(&self) -> String {
        format!("Chroma at {}", self.url)
    }

    fn collection_at(&self, name: &str) -> String {
        let place = if self.tenant == DEFAULT_TENANT && self.database == DEFAULT_DATABASE {
            String::new()
        } else {
            format!(" (tenant {}, database {})", self.tenant, self.database)
        };
        format!("collection {name:?} of Chroma at {}{place}", self.url)
    }
}

/// A collection, made for one embedding space.
#[derive(Debug, Clone)]
pub struct Collection {
    client: Client,
    id: String,
    name: String,
    space: EmbeddingSpace,
    at: String,
}

impl Collection {
    /// Chroma's id of the collection (a UUID).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn space(&self) -> &EmbeddingSpace {
        &self.space
    }

    /// Adds `records`; an id that exists already is left as it was (Chroma's
    /// `add`), see [`Collection::upsert`].
    pub async fn add(&self, records: &[Record]) -> Result<(), ChromaError> {
        self.write(Operation::Add, "add", records).await
    }

    /// Adds `records`, replacing those whose ids exist.
    pub async fn upsert(&self, records: &[Record]) -> Result<(), ChromaError> {
        self.write(Operation::Upsert, "upsert", records).await
    }

    /// The records `request` selects, in Chroma's order; ids that do not
    /// exist are left out.
    pub async fn get(&self, request: &GetRequest) -> Result<Vec<Entry>, ChromaError> {
        let mut body = serde_json::Map::new();
        if let Some(selection) = &request.selection {
            selection.write(&mut body);
        }
        body.insert("include".into(), include(&request.include));
        if let Some(limit) = request.limit {
            body.insert("limit".into(), json!(limit));
        }
        if let Some(offset) = request.offset {
            body.insert("offset".into(), json!(offset));
        }
        let call = self.call(Operation::Get, self.client.limits.records);
        let got: Columns = call.send(self.post("get").json(&body)).await?;
        rows(&got, None).map_err(|detail| call.bad(detail))
    }

    /// For each of `request.embeddings`, the nearest records, nearest first.
    pub async fn query(&self, request: &QueryRequest) -> Result<Vec<Vec<Hit>>, ChromaError> {
        self.check_dimensions(Operation::Query, "query embedding", request.embeddings.iter())?;
        let mut body = serde_json::Map::new();
        body.insert("query_embeddings".into(), json!(request.embeddings));
        body.insert("n_results".into(), json!(request.n_results));
        if let Some(filter) = &request.filter {
            body.insert("where".into(), filter.0.clone());
        }
        body.insert("include".into(), include(&request.include));
        let call = self.call(Operation::Query, self.client.limits.records);
        let found: QueryColumns = call.send(self.post("query").json(&body)).await?;
        let per_query = found.ids.len();
        if per_query != request.embeddings.len() {
            let asked = request.embeddings.len();
            return Err(call.bad(format!("{per_query} lists of results for {asked} query embeddings")));
        }
        (0..per_query)
            .map(|q| {
                let columns = Columns {
                    ids: found.ids[q].clone(),
                    documents: nth(&found.documents, q)?,
                    metadatas: nth(&found.metadatas, q)?,
                    embeddings: nth(&found.embeddings, q)?,
                };
                let distances = nth(&found.distances, q)?;
                let entries = rows(&columns, distances.as_ref().map(Vec::len))?;
                Ok(entries
                    .into_iter()
                    .zip(0..)
                    .map(|(entry, i)| Hit { entry, distance: distances.as_ref().and_then(|d| d[i]) })
                    .collect())
            })
            .collect::<Result<_, String>>()
            .map_err(|detail| call.bad(detail))
    }

    /// Deletes the records `selection` selects.
    pub async fn delete(&self, selection: &Selection) -> Result<(), ChromaError> {
        let mut body = serde_json::Map::new();
        selection.write(&mut body);
        let call = self.call(Operation::Delete, self.client.limits.other);
        let _: Value = call.send(self.post("delete").json(&body)).await?;
        Ok(())
    }

    /// How many records the collection holds.
    pub async fn count(&self) -> Result<u64, ChromaError> {
        let call = self.call(Operation::Count, self.client.limits.other);
        let url = format!("{}/{}/count", self.client.collections_url(), self.id);
        call.send(self.client.http.get(url)).await
    }

    async fn write(&self, operation: Operation, path: &str, records: &[Record]) -> Result<(), ChromaError> {
        if records.is_empty() {
            return Ok(());
        }
        self.check_dimensions(operation, "record", records.iter().map(|r| &r.embedding))?;
        let body = json!({
            "ids": records.iter().map(|r| &r.id).collect::<Vec<_>>(),
            "embeddings": records.iter().map(|r| &r.embedding).collect::<Vec<_>>(),
            "documents": records.iter().map(|r| &r.document).collect::<Vec<_>>(),
            "metadatas": records.iter().map(|r| &r.metadata).collect::<Vec<_>>(),
        });
        let call = self.call(operation, self.client.limits.other);
        let _: Value = call.send(self.post(path).json(&body)).await?;
        Ok(())
    }

    /// Refuses, before anything is sent, an embedding whose dimension is not
    /// the collection's (or that holds a NaN or an infinity, which JSON
    /// cannot carry).
    fn check_dimensions<'a>(
        &self,
        operation: Operation,
        what: &str,
        embeddings: impl Iterator<Item = &'a Vec<f32>>,
    ) -> Result<(), ChromaError> {
        for (i, embedding) in embeddings.enumerate() {
            let message = if embedding.len() != self.space.dimension {
                format!(
                    "{what} {} has {} dimensions; the collection holds embeddings of {}",
                    i + 1,
                    embedding.len(),
                    self.space
                )
            } else if !embedding.iter().all(|x| x.is_finite()) {
                format!("{what} {} holds a value that is not a finite number", i + 1)
            } else {
                continue;
            };
            return Err(ChromaError::DimensionMismatch { operation, at: self.at.clone(), message });
        }
        Ok(())
    }

    fn call(&self, operation: Operation, limit: Size) -> Call<'_> {
        Call { client: &self.client, operation, at: &self.at, limit }
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.http.post(format!("{}/{}/{path}", self.client.collections_url(), self.id))
    }
}

/// Chroma's description of a collection: what macha reads of it.
#[derive(Deserialize)]
struct Described {
    id: String,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, Value>>,
}

/// The embedding space a collection's metadata records, if it records one.
fn recorded_space(metadata: &serde_json::Map<String, Value>) -> Option<EmbeddingSpace> {
    let model = metadata.get(MODEL_KEY).and_then(Value::as_str)?;
    let dimension = metadata.get(DIMENSION_KEY).and_then(Value::as_u64)?;
    Some(EmbeddingSpace { model: model.to_owned(), dimension: dimension as usize })
}

fn describe_recorded(recorded: Option<&EmbeddingSpace>) -> String {
    match recorded {
        Some(space) => space.to_string(),
        None => format!("no recorded model ({MODEL_KEY} and {DIMENSION_KEY} are not both in its metadata)"),
    }
}

/// A collection id goes into URL paths: a UUID, nothing else.
fn check_collection_id(call: &Call<'_>, id: &str) -> Result<(), ChromaError> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(call.bad(format!("the collection id {:?} is not a UUID", text::cut(id, 80, "..."))));
    }
    Ok(())
}

/// Chroma's name rule for tenants, databases and collections
/// (`config::chroma_name`), checked here as well, since the names go into
/// URL paths.
fn check_name(what: &str, name: &str) -> Result<(), ChromaError> {
    if crate::config::chroma_name(name) {
        Ok(())
    } else {
        Err(ChromaError::Invalid(format!(
            "the Chroma {what} name {:?} is not one Chroma accepts: 3 to 512 letters, digits, '.', '_' or '-', \
             beginning and ending with a letter or digit",
            text::cut(name, 80, "...")
        )))
    }
}

fn include(fields: &[Include]) -> Value {
    json!(fields.iter().map(|f| f.name()).collect::<Vec<_>>())
}

/// One field of each record, in the order of the ids; absent (or null) when
/// not asked for, and null for a record that has none.
type Column<T> = Option<Vec<Option<T>>>;

/// Chroma's column-wise answer to `get` (and one query's part of a `query`
/// answer).
#[derive(Deserialize)]
struct Columns {
    ids: Vec<String>,
    #[serde(default)]
    documents: Column<String>,
    #[serde(default)]
    metadatas: Column<Metadata>,
    #[serde(default)]
    embeddings: Column<Vec<f32>>,
}

/// Chroma's answer to `query`: each column holds one column per query
/// embedding.
#[derive(Deserialize)]
struct QueryColumns {
    ids: Vec<Vec<String>>,
    #[serde(default)]
    documents: Option<Vec<Column<String>>>,
    #[serde(default)]
    metadatas: Option<Vec<Column<Metadata>>>,
    #[serde(default)]
    embeddings: Option<Vec<Column<Vec<f32>>>>,
    #[serde(default)]
    distances: Option<Vec<Column<f32>>>,
}

/// The column of query embedding `q` in a query answer's `columns`.
fn nth<T: Clone>(columns: &Option<Vec<Column<T>>>, q: usize) -> Result<Column<T>, String> {
    match columns {
        None => Ok(None),
        Some(columns) => match columns.get(q) {
            Some(column) => Ok(column.clone()),
            None => Err(format!("a column lacks the results of query embedding {}", q + 1)),
        },
    }
}

/// The columns turned into rows, every present column (and `other_column`,
/// a length) as long as `ids`.
fn rows(columns: &Columns, other_column: Option<usize>) -> Result<Vec<Entry>, String> {
    let n = columns.ids.len();
    let lengths = [
        columns.documents.as_ref().map(Vec::len),
        columns.metadatas.as_ref().map(Vec::len),
        columns.embeddings.as_ref().map(Vec::len),
        other_column,
    ];
    if let Some(len) = lengths.into_iter().flatten().find(|&len| len != n) {
        return Err(format!("{n} ids but a column of {len} values"));
    }
    fn at<T: Clone>(column: &Column<T>, i: usize) -> Option<T> {
        column.as_ref().and_then(|c| c[i].clone())
    }
    Ok((0..n)
        .map(|i| Entry {
            id: columns.ids[i].clone(),
            document: at(&columns.documents, i),
            metadata: at(&columns.metadatas, i),
            embedding: at(&columns.embeddings, i),
        })
        .collect())
}

/// Whether a tenant or database exists.
#[derive(Debug, PartialEq, Eq)]
enum Exists {
    Yes,
    No,
}

/// One request: what it is for (errors name it) and the most read of its
/// answer.
#[derive(Clone, Copy)]
struct Call<'a> {
    client: &'a Client,
    operation: Operation,
    at: &'a str,
    limit: Size,
}

impl Call<'_> {
    /// Sends `request`; a 2xx answer is parsed as `T`, anything else is an
    /// error.
    async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T, ChromaError> {
        let (status, body) = self.exchange(request).await?;
        if !(200..300).contains(&status) {
            return Err(self.refused(status, &body));
        }
        self.parse(&body)
    }

    /// A GET that answers 200 when the thing exists and 404 when not.
    async fn exists(&self, request: reqwest::RequestBuilder) -> Result<Exists, ChromaError> {
        match self.exchange(request).await? {
            (200..=299, _) => Ok(Exists::Yes),
            (404, _) => Ok(Exists::No),
            (status, body) => Err(self.refused(status, &body)),
        }
    }

    /// A POST that creates something; 409 (made meanwhile by another
    /// client) is as good.
    async fn created(&self, request: reqwest::RequestBuilder) -> Result<(), ChromaError> {
        match self.exchange(request).await? {
            (200..=299 | 409, _) => Ok(()),
            (status, body) => Err(self.refused(status, &body)),
        }
    }

    async fn exchange(&self, request: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), ChromaError> {
        let response = request.send().await.map_err(|e| self.transport(&e, false))?;
        let status = response.status().as_u16();
        let limit = if (200..300).contains(&status) { self.limit } else { self.client.limits.other };
        let body = bounded::read_body(response, limit).await.map_err(|e| match e {
            BodyError::TooLarge(limit) => {
                ChromaError::TooLarge { operation: self.operation, at: self.at.to_owned(), limit }
            }
            BodyError::Transport(e) => self.transport(&e, true),
        })?;
        Ok((status, body))
    }

    fn parse<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, ChromaError> {
        serde_json::from_slice(body).map_err(|e| {
            let start = text::one_line(&text::cut(&String::from_utf8_lossy(body), 200, "..."));
            self.bad(format!("{e} (the answer begins {start:?})"))
        })
    }

    /// An error status, with Chroma's own error kind and message when the
    /// body is Chroma's `{"error", "message"}`; a dimension mismatch named as
    /// such.
    fn refused(&self, status: u16, body: &[u8]) -> ChromaError {
        #[derive(Deserialize)]
        struct ChromaErrorBody {
            error: String,
            #[serde(default)]
            message: String,
        }
        let (kind, message) = match serde_json::from_slice::<ChromaErrorBody>(body) {
            Ok(e) => (e.error, e.message),
            Err(_) => {
                let start = text::one_line(&text::cut(&String::from_utf8_lossy(body), 300, "..."));
                (String::from("(not Chroma's error shape)"), start)
            }
        };
        let kind = text::one_line(&text::cut(&kind, 100, "..."));
        let message = text::one_line(&text::cut(&message, 1000, "..."));
        let at = self.at.to_owned();
        if status == 400 && message.contains("expecting embedding with dimension") {
            return ChromaError::DimensionMismatch { operation: self.operation, at, message };
        }
        ChromaError::Refused { operation: self.operation, at, status, kind, message }
    }

    fn transport(&self, e: &reqwest::Error, reading: bool) -> ChromaError {
        let at = self.at.to_owned();
        if e.is_timeout() {
            ChromaError::Timeout { operation: self.operation, at, secs: self.client.timeout_secs }
        } else if reading {
            ChromaError::BadResponse { operation: self.operation, at, detail: chain(e) }
        } else {
            ChromaError::Unreachable { operation: self.operation, at, detail: chain(e) }
        }
    }

    fn bad(&self, detail: String) -> ChromaError {
        ChromaError::BadResponse { operation: self.operation, at: self.at.to_owned(), detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_chroma_would_refuse_are_refused_before_they_reach_a_url() {
        for name in ["ab", "a/b/c", "../etc", "-abc", "abc-", "a b c", &"x".repeat(513)] {
            assert!(check_name("collection", name).is_err(), "{name}");
        }
        for name in ["abc", "macha.incidents", "host-1_memory", "A1b"] {
            check_name("collection", name).unwrap();
        }
    }

    #[test]
    fn a_token_never_prints_and_an_empty_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-token\nsecond line\n").unwrap();
        let token = Token::read(&path).unwrap();
        assert_eq!(token.0, "s3cret-token");
        assert!(!format!("{token:?}").contains("s3cret"));
        let options = ClientOptions { token: Some(token), ..ClientOptions::new("http://127.0.0.1:1") };
        let client = Client::new(options).unwrap();
        assert!(!format!("{client:?}").contains("s3cret"), "{client:?}");
        std::fs::write(&path, "  \n").unwrap();
        assert_eq!(
            Token::read(&path).unwrap_err().to_string(),
            format!("the Chroma token file {} is empty", path.display())
        );
    }

    #[test]
    fn a_single_filter_under_all_is_itself_and_several_are_joined() {
        let one = Where::all(vec![Where::eq("host", "a")]);
        assert_eq!(one.0, json!({"host": {"$eq": "a"}}));
        let two = Where::all(vec![Where::eq("host", "a"), Where::is_in("n", [1i64, 2])]);
        assert_eq!(two.0, json!({"$and": [{"host": {"$eq": "a"}}, {"n": {"$in": [1, 2]}}]}));
    }

    #[test]
    fn columns_of_different_lengths_are_a_bad_answer_not_a_panic() {
        let columns = Columns {
            ids: vec!["a".into(), "b".into()],
            documents: Some(vec![Some("x".into())]),
            metadatas: None,
            embeddings: None,
        };
        assert_eq!(rows(&columns, None).unwrap_err(), "2 ids but a column of 1 values");
    }
}
