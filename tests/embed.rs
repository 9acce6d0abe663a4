//! Embeddings against the Ollama double: vectors of the dimension the
//! server answers, near for similar texts; errors that say what to do (a
//! missing model names `ollama pull`, a chat model cannot embed, a server
//! down says so at once, a slow one is given up at `ollama.timeout`); long
//! lists sent in bounded batches, in order; embedding as batch work that
//! waits behind a decision. And the double's `/api/embed` itself, as Ollama
//! 0.12.6 answers it.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use macha::config::Config;
use macha::model::embed::{BATCH_TEXTS, MAX_TEXT_BYTES};
use macha::model::{ChatRequest, EmbedError, Message, ModelService, Priority};
use macha_testbed::ollama::{embedding, EmbedCaps, EmbedFault, OllamaDouble};
use serde_json::{json, Value};

const MODEL: &str = "llama3.1:70b";
const EMBEDDER: &str = "nomic-embed-text";

fn service(state: &Path, url: &str, embedding_model: &str, timeout: u64) -> ModelService {
    let text = format!(
        "state_dir = \"{}\"\n[ollama]\nurl = \"{url}\"\nmodel = \"{MODEL}\"\nembedding_model = \"{embedding_model}\"\ntimeout = {timeout}\n",
        state.display()
    );
    ModelService::new(&Config::parse(&text).unwrap()).unwrap()
}

/// Runs `test` on a single-threaded runtime with a `LocalSet`, as the daemon runs.
fn local<F: Future>(test: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, test)
}

fn texts(items: &[&str]) -> Vec<String> {
    items.iter().map(|t| t.to_string()).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// A URL where nothing listens: every connection is refused.
fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

#[test]
fn vectors_come_one_per_text_normalised_with_the_dimension_the_server_answers() {
    let double = OllamaDouble::start(&[MODEL, EMBEDDER, "all-minilm"]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let input = texts(&["nginx.service failed", "disk /var is full"]);

    let nomic = local(service(state.path(), &double.url(), EMBEDDER, 30).embed(&input)).unwrap();
    assert_eq!((nomic.model.as_str(), nomic.dimension, nomic.vectors.len()), (EMBEDDER, 768, 2));
    let minilm = local(service(state.path(), &double.url(), "all-minilm", 30).embed(&input)).unwrap();
    assert_eq!(minilm.dimension, 384, "the dimension is read from the answer, not configured");
    for v in nomic.vectors.iter().chain(&minilm.vectors) {
        assert!((norm(v) - 1.0).abs() < 1e-4, "not normalised: {}", norm(v));
    }
    let sent = double.requests().into_iter().find(|r| r.path == "/api/embed").unwrap();
    assert_eq!(sent.body["model"], EMBEDDER);
    assert_eq!(sent.body["input"], json!(["nginx.service failed", "disk /var is full"]));
}

#[test]
fn similar_texts_are_nearer_than_unrelated_ones() {
    let double = OllamaDouble::start(&[EMBEDDER]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let input = texts(&[
        "nginx.service failed: bind() to 0.0.0.0:80 failed (98: Address already in use)",
        "nginx.service failed again: bind() to port 80 failed, address already in use",
        "the filesystem /var is 97% full; journald stopped writing",
    ]);
    let e = local(service(state.path(), &double.url(), EMBEDDER, 30).embed(&input)).unwrap();
    let (same, other) = (cosine(&e.vectors[0], &e.vectors[1]), cosine(&e.vectors[0], &e.vectors[2]));
    assert!(same > 0.5 && same > other + 0.3, "similar {same}, unrelated {other}");
}

#[test]
fn a_missing_embedding_model_says_to_pull_it() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let err = local(service(state.path(), &double.url(), EMBEDDER, 30).embed(&texts(&["x"]))).unwrap_err();
    assert!(matches!(err, EmbedError::MissingModel { .. }), "{err:?}");
    assert!(err.to_string().contains("run `ollama pull nomic-embed-text` there"), "{err}");
}

#[test]
fn a_chat_model_configured_to_embed_is_refused_as_unable_to() {
    let double = OllamaDouble::start(&[MODEL]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let err = local(service(state.path(), &double.url(), MODEL, 30).embed(&texts(&["x"]))).unwrap_err();
    assert!(matches!(err, EmbedError::NotAnEmbeddingModel { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("\"llama3.1:70b\"") && text.contains("cannot embed"), "{text}");
    assert!(text.contains("set `ollama.embedding_model` to an embedding model"), "{text}");
}

#[test]
fn a_missing_model_is_not_asked_again_within_the_backoff() {
    let double = OllamaDouble::start(&["llama3.1:70b"]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let svc = service(state.path(), &double.url(), EMBEDDER, 30);
    for _ in 0..3 {
        let err = local(svc.embed(&texts(&["x"]))).unwrap_err();
        assert!(matches!(err, EmbedError::MissingModel { .. }), "{err:?}");
        assert!(err.to_string().contains("ollama pull nomic-embed-text"), "{err}");
    }
    assert_eq!(double.embed_requests(), 1, "asked once; the backoff is {:?}", macha::model::EMBED_BACKOFF);
    assert!(local(svc.embed(&[])).unwrap().vectors.is_empty(), "no texts: no request, no error");
}

#[test]
fn a_server_that_is_down_is_said_to_be_unreachable_at_once() {
    let state = tempfile::tempdir().unwrap();
    let url = refused_url();
    let started = Instant::now();
    let err = local(service(state.path(), &url, EMBEDDER, 30).embed(&texts(&["x"]))).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert!(matches!(err, EmbedError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("Ollama at {url} is unreachable")), "{err}");
}

#[test]
fn a_server_that_hangs_is_given_up_at_the_timeout_and_one_that_fails_is_quoted() {
    let double = OllamaDouble::start(&[EMBEDDER]).unwrap();
    double.push_embed(EmbedFault::Hang(Duration::from_secs(30)));
    double.push_embed(EmbedFault::Status(
        503,
        "server busy, please try again.  maximum pending requests exceeded".into(),
    ));
    let state = tempfile::tempdir().unwrap();
    let svc = service(state.path(), &double.url(), EMBEDDER, 1);
    let started = Instant::now();
    let hung = local(svc.embed(&texts(&["x"]))).unwrap_err();
    assert!(matches!(hung, EmbedError::Timeout { secs: 1, .. }), "{hung:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Not asked again for a while: the next texts do not wait on it.
    let started = Instant::now();
    let again = local(svc.embed(&texts(&["y"]))).unwrap_err();
    assert!(matches!(again, EmbedError::Timeout { .. }) && started.elapsed() < Duration::from_millis(200), "{again:?}");
    assert_eq!(double.embed_requests(), 1, "no second request within the backoff");
    // A failure that mends by itself (busy) is not held against the model.
    let svc = service(state.path(), &double.url(), EMBEDDER, 1);
    let busy = local(svc.embed(&texts(&["x"]))).unwrap_err();
    assert!(busy.to_string().contains("HTTP 503: server busy"), "{busy}");
    local(svc.embed(&texts(&["x"]))).expect("the next request is answered again");
}

#[test]
fn a_long_list_is_sent_in_bounded_batches_and_keeps_its_order() {
    let double = OllamaDouble::start(&[EMBEDDER]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let input: Vec<String> =
        (0..2 * BATCH_TEXTS + 10).map(|i| format!("incident {i}: unit-{i}.service failed")).collect();
    let e = local(service(state.path(), &double.url(), EMBEDDER, 30).embed(&input)).unwrap();
    assert_eq!(double.embed_requests(), 3);
    let sizes: Vec<usize> = double
        .requests()
        .iter()
        .filter(|r| r.path == "/api/embed")
        .map(|r| r.body["input"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [BATCH_TEXTS, BATCH_TEXTS, 10]);
    assert_eq!(e.vectors.len(), input.len());
    for (text, v) in input.iter().zip(&e.vectors) {
        assert!(cosine(v, &embedding(text, 768)) > 0.9999, "the vector of {text:?} is not in its place");
    }
}

#[test]
fn a_text_longer_than_any_model_reads_is_cut_before_it_is_sent() {
    let double = OllamaDouble::start(&[EMBEDDER]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let e = local(service(state.path(), &double.url(), EMBEDDER, 30).embed(&["y".repeat(1 << 20)])).unwrap();
    assert_eq!(e.vectors.len(), 1);
    let sent = double.requests().into_iter().find(|r| r.path == "/api/embed").unwrap();
    assert_eq!(sent.body["input"][0].as_str().unwrap().len(), MAX_TEXT_BYTES);
}

#[test]
fn no_texts_send_no_request() {
    let double = OllamaDouble::start(&[EMBEDDER]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let e = local(service(state.path(), &double.url(), EMBEDDER, 30).embed(&[])).unwrap();
    assert_eq!((e.dimension, e.vectors.len(), double.embed_requests()), (0, 0, 0));
}

#[test]
fn an_embedding_waits_behind_a_decision_queued_after_it() {
    let double = OllamaDouble::start(&[MODEL, EMBEDDER]).unwrap();
    double.hold_answers();
    let state = tempfile::tempdir().unwrap();
    let svc = service(state.path(), &double.url(), EMBEDDER, 30);
    let decide = |text: &'static str| {
        let svc = svc.clone();
        tokio::task::spawn_local(async move {
            svc.chat(Priority::Autonomous, &ChatRequest::new(text, vec![Message::user(text)])).await
        })
    };
    local(async {
        let running = decide("decision-1");
        while double.chat_requests() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let embedding = {
            let svc = svc.clone();
            tokio::task::spawn_local(async move { svc.embed(&texts(&["past incident"])).await })
        };
        while svc.queue().waiting() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let queued = decide("decision-2");
        while svc.queue().waiting() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        double.release_answers();
        running.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        embedding.await.unwrap().unwrap();
    });
    let order: Vec<String> = double
        .requests()
        .iter()
        .filter(|r| r.path == "/api/chat" || r.path == "/api/embed")
        .map(|r| r.body["messages"][0]["content"].as_str().unwrap_or(&r.path).to_owned())
        .collect();
    assert_eq!(order, ["decision-1", "decision-2", "/api/embed"]);
}

#[test]
fn embedding_calls_are_in_the_record_of_calls_without_their_vectors() {
    let double = OllamaDouble::start(&[EMBEDDER]).unwrap();
    let state = tempfile::tempdir().unwrap();
    local(service(state.path(), &double.url(), EMBEDDER, 30).embed(&texts(&["a", "b"]))).unwrap();
    let dir = state.path().join("model-calls");
    let records: Vec<Value> = std::fs::read_dir(&dir)
        .unwrap()
        .flat_map(|f| {
            std::fs::read_to_string(f.unwrap().path()).unwrap().lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!((r["purpose"].as_str(), r["priority"].as_str()), (Some("embed"), Some("batch")));
    assert_eq!(r["provider"]["model"], EMBEDDER);
    assert_eq!(r["response"], json!({ "vectors": 2, "dimension": 768, "prompt_eval_count": 2 }));
}

// The double's /api/embed, as Ollama 0.12.6 answers it.

async fn post(double: &OllamaDouble, path: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new().post(format!("{}{path}", double.url())).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[test]
fn the_double_answers_embed_with_ollamas_shapes_statuses_and_texts() {
    let double = OllamaDouble::builder()
        .model(MODEL, Default::default())
        .embedding_model("tiny-embed", EmbedCaps { dimension: 16, context_length: 8 })
        .start()
        .unwrap();
    local(async {
        let (status, one) = post(&double, "/api/embed", &json!({ "model": "tiny-embed", "input": "disk full" })).await;
        assert_eq!(status, 200);
        assert_eq!(one["model"], "tiny-embed");
        assert_eq!(one["embeddings"].as_array().unwrap().len(), 1);
        assert_eq!(one["embeddings"][0].as_array().unwrap().len(), 16);
        for key in ["total_duration", "load_duration", "prompt_eval_count"] {
            assert!(one[key].is_u64(), "{key} missing: {one}");
        }
        let (_, cut) =
            post(&double, "/api/embed", &json!({ "model": "tiny-embed", "input": ["disk full"], "dimensions": 4 }))
                .await;
        assert_eq!(cut["embeddings"][0].as_array().unwrap().len(), 4);

        let (status, empty) = post(&double, "/api/embed", &json!({ "model": "tiny-embed", "input": [] })).await;
        assert_eq!((status, empty), (200, json!({ "model": "tiny-embed", "embeddings": [] })));

        let (status, missing) =
            post(&double, "/api/embed", &json!({ "model": "nomic-embed-text", "input": "x" })).await;
        assert_eq!((status, missing), (404, json!({ "error": "model 'nomic-embed-text' not found" })));

        let (status, chat) = post(&double, "/api/embed", &json!({ "model": MODEL, "input": "x" })).await;
        assert_eq!((status, chat), (500, json!({ "error": "this model does not support embeddings" })));

        let long = "word ".repeat(20);
        let (status, refused) =
            post(&double, "/api/embed", &json!({ "model": "tiny-embed", "input": long, "truncate": false })).await;
        assert_eq!((status, refused), (400, json!({ "error": "input exceeds maximum context length" })));
        let (status, _) = post(&double, "/api/embed", &json!({ "model": "tiny-embed", "input": long })).await;
        assert_eq!(status, 200, "truncated by default");

        let (status, bad) = post(&double, "/api/embed", &json!({ "model": "tiny-embed", "input": [1] })).await;
        assert_eq!((status, bad), (400, json!({ "error": "invalid input type" })));

        let (_, show) = post(&double, "/api/show", &json!({ "model": "tiny-embed" })).await;
        assert_eq!(show["capabilities"], json!(["embedding"]));
        assert_eq!(show["model_info"]["bert.embedding_length"], 16);
        let (status, chat) = post(
            &double,
            "/api/chat",
            &json!({ "model": "tiny-embed", "messages": [{"role": "user", "content": "hi"}], "stream": false }),
        )
        .await;
        assert_eq!(
            (status, chat),
            (400, json!({ "error": "registry.ollama.ai/library/tiny-embed:latest does not support completion" }))
        );
    });
    assert_eq!(double.embed_requests(), 8);
}

#[test]
fn the_doubles_embeddings_are_deterministic_normalised_and_near_for_shared_words() {
    let a = embedding("nginx.service failed to start", 768);
    assert_eq!(a, embedding("nginx.service failed to start", 768));
    assert!((norm(&a) - 1.0).abs() < 1e-5);
    let near = cosine(&a, &embedding("nginx.service failed to start again", 768));
    let far = cosine(&a, &embedding("backup of /home completed", 768));
    assert!(near > 0.8 && far < 0.2, "near {near}, far {far}");
}
