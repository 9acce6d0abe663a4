//! macha's Chroma client (`kb::chroma`) against a real Chroma server
//! (`chroma run` of chromadb, from `tests/chroma/setup.sh`; set
//! `MACHA_CHROMA_DIR`), each test with a server of its own; and against an
//! impostor for the answers a real Chroma never gives. The embeddings are
//! made by hand: Chroma never computes one.

use std::time::{Duration, Instant};

use macha::bounded::Size;
use macha::kb::chroma::{
    ChromaError, Client, ClientOptions, Collection, EmbeddingSpace, Entry, GetRequest, Include, Limits, Metadata,
    MetadataValue, Operation, QueryRequest, Record, Selection, Where,
};
use macha_testbed::chroma::{Chroma, Impostor, Reply};

fn space(model: &str, dimension: usize) -> EmbeddingSpace {
    EmbeddingSpace { model: model.to_owned(), dimension }
}

fn client(url: &str) -> Client {
    Client::new(ClientOptions { timeout: Duration::from_secs(2), ..ClientOptions::new(url) }).unwrap()
}

fn record(id: &str, embedding: &[f32], document: Option<&str>, host: &str) -> Record {
    let metadata: Metadata = [("host".to_owned(), MetadataValue::from(host))].into();
    Record {
        id: id.to_owned(),
        embedding: embedding.to_vec(),
        document: document.map(str::to_owned),
        metadata: Some(metadata),
    }
}

/// Three incidents along the three axes.
fn three() -> Vec<Record> {
    vec![
        record("disk-full", &[1.0, 0.0, 0.0], Some("/var is full"), "alpha"),
        record("unit-failed", &[0.0, 1.0, 0.0], None, "alpha"),
        record("memory-pressure", &[0.0, 0.0, 1.0], Some("swap thrashing"), "beta"),
    ]
}

async fn open(chroma: &Chroma, name: &str) -> Collection {
    client(&chroma.url()).collection(name, &space("nomic-embed-text", 3)).await.unwrap()
}

async fn all(collection: &Collection) -> Vec<Entry> {
    let request = GetRequest { include: vec![Include::Documents, Include::Metadatas], ..Default::default() };
    let mut entries = collection.get(&request).await.unwrap();
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    entries
}

fn ids(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.id.as_str()).collect()
}

#[tokio::test]
async fn records_round_trip_through_add_get_upsert_delete_and_count() {
    let chroma = Chroma::start().unwrap();
    let kb = open(&chroma, "incidents").await;
    assert_eq!(kb.count().await.unwrap(), 0);
    kb.add(&three()).await.unwrap();
    assert_eq!(kb.count().await.unwrap(), 3);

    let request = GetRequest {
        selection: Some(Selection::Ids(vec!["disk-full".into(), "unit-failed".into(), "never-stored".into()])),
        include: vec![Include::Documents, Include::Metadatas, Include::Embeddings],
        ..Default::default()
    };
    let mut got = kb.get(&request).await.unwrap();
    got.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(ids(&got), ["disk-full", "unit-failed"], "an id never stored is left out");
    assert_eq!(got[0].document.as_deref(), Some("/var is full"));
    assert_eq!(got[0].embedding.as_deref(), Some(&[1.0, 0.0, 0.0][..]));
    assert_eq!(got[0].metadata.as_ref().unwrap()["host"], MetadataValue::from("alpha"));
    assert_eq!(got[1].document, None, "a record without a document reads back without one");

    // add leaves an existing id alone; upsert replaces it and adds new ones.
    kb.add(&[record("disk-full", &[1.0, 0.0, 0.0], Some("changed by add"), "alpha")]).await.unwrap();
    assert_eq!(all(&kb).await[0].document.as_deref(), Some("/var is full"));
    let mut replaced = record("disk-full", &[1.0, 0.1, 0.0], Some("/var is full, again"), "alpha");
    replaced.metadata.as_mut().unwrap().insert("count".into(), MetadataValue::Int(2));
    kb.upsert(&[replaced, record("new-one", &[0.5, 0.5, 0.0], Some("new"), "gamma")]).await.unwrap();
    assert_eq!(kb.count().await.unwrap(), 4);
    let entries = all(&kb).await;
    assert_eq!(entries[0].document.as_deref(), Some("/var is full, again"));
    assert_eq!(entries[0].metadata.as_ref().unwrap()["count"], MetadataValue::Int(2));

    kb.delete(&Selection::Ids(vec!["new-one".into()])).await.unwrap();
    kb.delete(&Selection::Where(Where::eq("host", "beta"))).await.unwrap();
    assert_eq!(ids(&all(&kb).await), ["disk-full", "unit-failed"]);
    assert_eq!(kb.count().await.unwrap(), 2);
}

#[tokio::test]
async fn a_query_finds_the_nearest_record_first_within_its_filter() {
    let chroma = Chroma::start().unwrap();
    let kb = open(&chroma, "incidents").await;
    kb.add(&three()).await.unwrap();

    let request = QueryRequest {
        embeddings: vec![vec![0.1, 0.9, 0.05], vec![0.0, 0.2, 0.9]],
        n_results: 2,
        filter: None,
        include: vec![Include::Documents, Include::Metadatas, Include::Distances],
    };
    let found = kb.query(&request).await.unwrap();
    assert_eq!(found.len(), 2, "one list of hits per query embedding");
    assert_eq!(found[0][0].entry.id, "unit-failed");
    assert_eq!(found[0][0].entry.document, None, "a hit without a document is still a hit");
    assert_eq!(found[1][0].entry.id, "memory-pressure");
    assert_eq!(found[1][0].entry.document.as_deref(), Some("swap thrashing"));
    let (near, far) = (found[0][0].distance.unwrap(), found[0][1].distance.unwrap());
    assert!(near < 0.05 && near < far, "cosine distances, nearest first: {near} then {far}");

    let only_beta = QueryRequest {
        embeddings: vec![vec![1.0, 0.0, 0.0]],
        n_results: 3,
        filter: Some(Where::eq("host", "beta")),
        include: vec![Include::Distances],
    };
    let found = kb.query(&only_beta).await.unwrap();
    assert_eq!(found[0].iter().map(|h| h.entry.id.as_str()).collect::<Vec<_>>(), ["memory-pressure"]);
}

#[tokio::test]
async fn a_second_client_on_the_same_collection_sees_the_data() {
    let chroma = Chroma::start().unwrap();
    let first = open(&chroma, "fleet-memory").await;
    first.add(&three()).await.unwrap();
    let second = open(&chroma, "fleet-memory").await;
    assert_eq!(second.id(), first.id());
    assert_eq!(second.count().await.unwrap(), 3);
    second.upsert(&[record("from-host-b", &[0.6, 0.0, 0.8], Some("seen on b"), "b")]).await.unwrap();
    let got = first
        .get(&GetRequest {
            selection: Some(Selection::Where(Where::eq("host", "b"))),
            include: vec![Include::Documents],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&got), ["from-host-b"]);
}

#[tokio::test]
async fn a_tenant_and_database_that_do_not_exist_are_created_on_first_use() {
    let chroma = Chroma::start().unwrap();
    let options = ClientOptions {
        tenant: "macha-fleet".into(),
        database: "incidents-db".into(),
        ..ClientOptions::new(chroma.url())
    };
    let kb = Client::new(options.clone()).unwrap().collection("memory", &space("m", 3)).await.unwrap();
    kb.add(&three()).await.unwrap();
    // Opened again (the tenant and database exist now), the data is there;
    // the default database has no such collection.
    let again = Client::new(options).unwrap().collection("memory", &space("m", 3)).await.unwrap();
    assert_eq!(again.count().await.unwrap(), 3);
    let default = client(&chroma.url()).collection("memory", &space("m", 3)).await.unwrap();
    assert_eq!(default.count().await.unwrap(), 0);
}

#[tokio::test]
async fn a_collection_made_for_another_model_or_dimension_is_refused_naming_both() {
    let chroma = Chroma::start().unwrap();
    open(&chroma, "incidents").await;
    let kb = client(&chroma.url());
    for wanted in [space("all-minilm", 3), space("nomic-embed-text", 768)] {
        let e = kb.collection("incidents", &wanted).await.unwrap_err();
        assert!(matches!(e, ChromaError::WrongEmbeddingSpace { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(r#"collection "incidents""#), "{text}");
        assert!(text.contains(r#"model "nomic-embed-text" (3 dimensions)"#), "{text}");
        assert!(text.contains(&wanted.to_string()), "{text}");
    }
}

#[tokio::test]
async fn a_collection_that_records_no_model_is_refused() {
    let chroma = Chroma::start().unwrap();
    let url = format!("{}/api/v2/tenants/default_tenant/databases/default_database/collections", chroma.url());
    let made = reqwest::Client::new().post(url).json(&serde_json::json!({"name": "someone-elses"})).send().await;
    assert!(made.unwrap().status().is_success());
    let e = client(&chroma.url()).collection("someone-elses", &space("m", 3)).await.unwrap_err();
    assert!(e.to_string().contains("no recorded model"), "{e}");
}

#[tokio::test]
async fn an_embedding_of_another_dimension_is_refused_before_it_is_sent() {
    let chroma = Chroma::start().unwrap();
    let kb = open(&chroma, "incidents").await;
    let e = kb.add(&[record("a", &[1.0, 0.0], None, "h")]).await.unwrap_err();
    assert!(matches!(e, ChromaError::DimensionMismatch { operation: Operation::Add, .. }), "{e:?}");
    assert!(e.to_string().contains("record 1 has 2 dimensions"), "{e}");
    let query = QueryRequest { embeddings: vec![vec![1.0; 4]], n_results: 1, filter: None, include: vec![] };
    let e = kb.query(&query).await.unwrap_err();
    assert!(matches!(e, ChromaError::DimensionMismatch { operation: Operation::Query, .. }), "{e:?}");
    assert_eq!(kb.count().await.unwrap(), 0, "nothing was stored");
}

#[tokio::test]
async fn chroma_refusing_a_dimension_gives_the_typed_error_in_its_own_words() {
    // A collection whose metadata says 3 dimensions but whose first vector,
    // written by another client, had 4: Chroma holds it to 4.
    let chroma = Chroma::start().unwrap();
    let kb = open(&chroma, "incidents").await;
    let add = format!(
        "{}/api/v2/tenants/default_tenant/databases/default_database/collections/{}/add",
        chroma.url(),
        kb.id()
    );
    let body = serde_json::json!({"ids": ["other"], "embeddings": [[1.0, 0.0, 0.0, 0.0]]});
    assert!(reqwest::Client::new().post(add).json(&body).send().await.unwrap().status().is_success());

    let e = kb.add(&three()).await.unwrap_err();
    assert!(matches!(e, ChromaError::DimensionMismatch { operation: Operation::Add, .. }), "{e:?}");
    assert!(e.to_string().contains("Collection expecting embedding with dimension of 4, got 3"), "{e}");
}

#[tokio::test]
async fn chroma_refusing_a_request_is_reported_with_its_status_and_words() {
    let chroma = Chroma::start().unwrap();
    let kb = open(&chroma, "incidents").await;
    kb.add(&three()).await.unwrap();
    // Chroma refuses `$in` with no values.
    let nothing: [&str; 0] = [];
    let request = GetRequest { selection: Some(Selection::Where(Where::is_in("host", nothing))), ..Default::default() };
    let e = kb.get(&request).await.unwrap_err();
    let ChromaError::Refused { operation, status, ref kind, ref message, .. } = e else { panic!("{e:?}") };
    assert_eq!(
        (operation, status, kind.as_str(), message.as_str()),
        (Operation::Get, 400, "InvalidArgumentError", "Invalid where clause")
    );
    assert!(e.to_string().starts_with(r#"collection "incidents" of Chroma at http://127.0.0.1:"#), "{e}");
    assert!(e.to_string().ends_with("refused get: HTTP 400 InvalidArgumentError: Invalid where clause"), "{e}");
}

#[tokio::test]
async fn a_stopped_chroma_is_unreachable_at_once_and_the_data_is_there_when_it_is_back() {
    let mut chroma = Chroma::start().unwrap();
    let kb = open(&chroma, "incidents").await;
    kb.add(&three()).await.unwrap();
    chroma.stop().unwrap();

    let started = Instant::now();
    let e = kb.count().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert!(matches!(e, ChromaError::Unreachable { operation: Operation::Count, .. }), "{e:?}");
    assert!(e.to_string().starts_with(r#"cannot reach collection "incidents" of Chroma at http://127.0.0.1:"#), "{e}");
    let e = client(&chroma.url()).heartbeat().await.unwrap_err();
    assert!(e.to_string().starts_with("cannot reach Chroma at http://127.0.0.1:"), "{e}");

    chroma.start_again().unwrap();
    // The same handle works again: same URL, same collection id.
    assert_eq!(kb.count().await.unwrap(), 3);
    kb.upsert(&[record("after-restart", &[0.0, 0.6, 0.8], None, "alpha")]).await.unwrap();
    assert_eq!(kb.count().await.unwrap(), 4);
}

#[tokio::test]
async fn heartbeat_and_version_come_from_the_v2_api() {
    let chroma = Chroma::start().unwrap();
    let kb = client(&chroma.url());
    assert!(kb.heartbeat().await.unwrap() > 0);
    let version = kb.version().await.unwrap();
    assert!(version.chars().next().is_some_and(|c| c.is_ascii_digit()), "{version}");
}

#[tokio::test]
async fn a_server_that_never_answers_is_given_up_after_the_timeout() {
    let impostor = Impostor::start(Reply::Never).unwrap();
    let options = ClientOptions { timeout: Duration::from_secs(1), ..ClientOptions::new(impostor.url()) };
    let started = Instant::now();
    let e = Client::new(options).unwrap().heartbeat().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(matches!(e, ChromaError::Timeout { operation: Operation::Heartbeat, .. }), "{e:?}");
    assert_eq!(e.to_string(), format!("Chroma at {} did not answer heartbeat within 1 s", impostor.url()));
}

#[tokio::test]
async fn an_answer_larger_than_the_limit_is_refused_without_reading_it_whole() {
    let impostor = Impostor::start(Reply::Huge(64 << 20)).unwrap();
    let options = ClientOptions {
        limits: Limits { records: Size::mib(1), other: Size::kib(64) },
        ..ClientOptions::new(impostor.url())
    };
    let e = Client::new(options).unwrap().version().await.unwrap_err();
    assert!(matches!(e, ChromaError::TooLarge { operation: Operation::Version, .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "Chroma at {} sent an answer to version larger than 64 KiB, the most macha reads of it",
            impostor.url()
        )
    );
}

#[tokio::test]
async fn answers_that_are_not_chromas_are_refused_with_a_clear_error() {
    let wrong = [
        ("<html>ok</html>", "expected value"),
        (r#"{"nanosecond heartbeat": "soon"}"#, "invalid type"),
        ("[]", "invalid length"),
    ];
    for (body, says) in wrong {
        let impostor = Impostor::start(Reply::Json(200, body.into())).unwrap();
        let e = client(&impostor.url()).heartbeat().await.unwrap_err();
        assert!(matches!(e, ChromaError::BadResponse { operation: Operation::Heartbeat, .. }), "{e:?}");
        assert!(e.to_string().contains(says), "{e}");
    }
    // A collection whose id could steer later URLs elsewhere.
    let impostor = Impostor::start(Reply::Json(200, r#"{"id": "../../tenants", "metadata": {}}"#.into())).unwrap();
    let e = client(&impostor.url()).collection("incidents", &space("m", 3)).await.unwrap_err();
    assert!(e.to_string().contains("is not a UUID"), "{e}");
}

#[tokio::test]
async fn an_error_page_from_a_proxy_is_quoted_with_its_status() {
    let impostor = Impostor::start(Reply::Json(502, "<html>Bad Gateway</html>".into())).unwrap();
    let e = client(&impostor.url()).version().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "Chroma at {} refused version: HTTP 502 (not Chroma's error shape): <html>Bad Gateway</html>",
            impostor.url()
        )
    );
}
