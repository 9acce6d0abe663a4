//! Pins the Gotify receiver to the behaviour of the real server
//! (`reference/protocols.md`, "Gotify"): macha's notification tests are only
//! as good as this double is faithful.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use macha_testbed::gotify::{GotifyReceiver, Mode, TokenSource};
use serde_json::{json, Value};

const APP: &str = "AppToken.secret1";
const APP2: &str = "AppToken.secret2";
const CLIENT: &str = "CliToken.secret3";

const UNAUTHORIZED: &str = r#"{"error":"Unauthorized","errorCode":401,"errorDescription":"you need to provide a valid access token or user credentials to access this api"}"#;
const MESSAGE_REQUIRED: &str =
    r#"{"error":"Bad Request","errorCode":400,"errorDescription":"Field 'message' is required"}"#;

fn receiver() -> GotifyReceiver {
    GotifyReceiver::builder().app(APP).app(APP2).client_tokens(&[CLIENT]).start().unwrap()
}

/// Sends a request and returns status, content type and body text.
async fn send(request: reqwest::RequestBuilder) -> (u16, String, String) {
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let kind = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, kind, response.text().await.expect("body read"))
}

fn post(r: &GotifyReceiver, target: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new().post(format!("{}{target}", r.url()))
}

/// Posts JSON with the token in `X-Gotify-Key`; returns status and body.
async fn post_json(r: &GotifyReceiver, body: &Value) -> (u16, String) {
    let (status, _, text) = send(post(r, "/message").header("X-Gotify-Key", APP).json(body)).await;
    (status, text)
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn each_token_source_is_accepted_and_recorded() {
    let r = receiver();
    let body = json!({ "message": "hello" });
    let requests = [
        (post(&r, &format!("/message?token={APP}")), TokenSource::Query, 1),
        (post(&r, "/message").header("X-Gotify-Key", APP2), TokenSource::Header, 2),
        (post(&r, "/message").header("Authorization", format!("Bearer {APP}")), TokenSource::Bearer, 1),
        // The scheme is compared case-insensitively.
        (post(&r, "/message").header("Authorization", format!("bearer {APP2}")), TokenSource::Bearer, 2),
    ];
    for (i, (request, source, appid)) in requests.into_iter().enumerate() {
        let (status, kind, text) = send(request.json(&body)).await;
        assert_eq!(status, 200, "{source:?}: {text}");
        assert_eq!(kind, "application/json; charset=utf-8");
        let answer = parse(&text);
        assert_eq!(answer["id"], i + 1);
        assert_eq!(answer["appid"], appid);
        assert_eq!(answer["message"], "hello");
        let stored = &r.messages()[i];
        assert_eq!((stored.id, stored.appid, stored.token_source), (i as u64 + 1, appid, source));
        assert_eq!(answer["date"], stored.date.as_str());
        assert_eq!(source.as_str(), ["query", "header", "bearer", "bearer"][i]);
    }
    let attempts = r.attempts();
    assert_eq!(attempts.len(), 4);
    assert!(attempts.iter().all(|a| a.status == 200));
    assert_eq!(attempts[0].target, format!("/message?token={APP}"));
    assert_eq!(attempts[1].target, "/message");
    assert!(!attempts[1].target.contains(APP2), "a header token stays out of the target");
    assert_eq!(attempts[2].token.as_deref(), Some(APP));
}

#[tokio::test]
async fn missing_wrong_and_client_tokens_are_401_with_gotifys_body() {
    let r = receiver();
    let body = json!({ "message": "hello" });
    let requests = [
        post(&r, "/message"),
        post(&r, "/message?token=nope"),
        post(&r, "/message").header("X-Gotify-Key", "nope"),
        post(&r, "/message").header("Authorization", format!("Bearer {CLIENT}")),
        post(&r, &format!("/message?token={CLIENT}")),
        // Basic auth is user credentials, which the receiver has none of.
        post(&r, "/message").basic_auth("admin", Some("admin")),
        // "Bearer " with nothing after it is no token.
        post(&r, "/message").header("Authorization", "Bearer "),
        // The first non-empty source wins: a wrong query token is not
        // rescued by a right header.
        post(&r, "/message?token=nope").header("X-Gotify-Key", APP),
    ];
    for (i, request) in requests.into_iter().enumerate() {
        let (status, kind, text) = send(request.json(&body)).await;
        assert_eq!((status, text.as_str()), (401, UNAUTHORIZED), "request {i}");
        assert_eq!(kind, "application/json; charset=utf-8");
    }
    assert!(r.messages().is_empty());
    let attempts = r.attempts();
    assert!(attempts.iter().all(|a| a.status == 401));
    assert_eq!(attempts[0].token_source, None);
    assert_eq!(attempts[3].token_source, Some(TokenSource::Bearer));
    assert_eq!(attempts[7].token_source, Some(TokenSource::Query));
    assert_eq!(attempts[7].token.as_deref(), Some("nope"));
    // An empty query token falls through to the header.
    let (status, _, _) = send(post(&r, "/message?token=").header("X-Gotify-Key", APP).json(&body)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_missing_or_empty_message_is_400_with_gotifys_body() {
    let r = receiver();
    for body in [json!({ "title": "t" }), json!({ "message": "" }), json!({ "message": null }), json!(null)] {
        assert_eq!(post_json(&r, &body).await, (400, MESSAGE_REQUIRED.to_owned()), "{body}");
    }
    // A JSON body without its content type is form-bound, as gin does.
    let request = post(&r, "/message").header("X-Gotify-Key", APP).body(r#"{"message":"hi"}"#);
    assert_eq!(send(request).await.2, MESSAGE_REQUIRED);
    // Authentication comes first.
    let (status, _, text) = send(post(&r, "/message").json(&json!({}))).await;
    assert_eq!((status, text.as_str()), (401, UNAUTHORIZED));
    assert!(r.messages().is_empty());
    assert!(r.attempts().iter().all(|a| a.status != 200));
}

#[tokio::test]
async fn bodies_that_are_not_a_message_are_400_in_gotifys_form() {
    let r = receiver();
    let bad = |text: &'static str| {
        post(&r, "/message").header("X-Gotify-Key", APP).header("Content-Type", "application/json").body(text)
    };
    let cases = [
        ("", "EOF"),
        ("hello", "invalid character 'h' looking for beginning of value"),
        ("not json", "invalid character 'o' in literal null (expecting 'u')"),
        (r#"{"message":"hi",}"#, "invalid character '}' looking for beginning of object key string"),
        (r#"{"message": "hi""#, "unexpected EOF"),
        ("[1]", "json: cannot unmarshal array into Go value of type model.MessageExternal"),
        (
            r#"{"message":"hi","priority":"high"}"#,
            "json: cannot unmarshal string into Go struct field MessageExternal.priority of type int",
        ),
        (
            r#"{"message":"hi","priority":1.5}"#,
            "json: cannot unmarshal number 1.5 into Go struct field MessageExternal.priority of type int",
        ),
        (
            r#"{"message":"hi","extras":"x"}"#,
            "json: cannot unmarshal string into Go struct field MessageExternal.extras of type map[string]interface {}",
        ),
        (
            r#"{"message":5}"#,
            "json: cannot unmarshal number into Go struct field MessageExternal.message of type string",
        ),
    ];
    for (body, description) in cases {
        let (status, kind, text) = send(bad(body)).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(kind, "application/json; charset=utf-8");
        assert_eq!(parse(&text), json!({ "error": "Bad Request", "errorCode": 400, "errorDescription": description }));
    }
    // Go reads only the first value; keys match case-insensitively.
    let (status, _, text) = send(bad(r#"{"Message":"first"} trailing"#)).await;
    assert_eq!((status, parse(&text)["message"].clone()), (200, json!("first")));
    assert_eq!(r.attempts()[0].body, "");
    assert_eq!(r.attempts()[2].body, "not json");
}

#[tokio::test]
async fn json_with_a_charset_and_form_bodies_are_accepted() {
    let r = receiver();
    let request = post(&r, "/message")
        .header("X-Gotify-Key", APP)
        .header("Content-Type", "application/json; charset=utf-8")
        .body(r#"{"message":"with charset","id":99,"appid":7}"#);
    let (status, _, text) = send(request).await;
    assert_eq!(status, 200, "{text}");
    // Client-sent ids are ignored.
    assert_eq!((parse(&text)["id"].clone(), parse(&text)["appid"].clone()), (json!(1), json!(1)));

    let form = post(&r, &format!("/message?token={APP}&priority=3"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("message=from+a%20form&title=T");
    let (status, _, text) = send(form).await;
    assert_eq!(status, 200, "{text}");
    let stored = r.messages().pop().unwrap();
    assert_eq!((stored.message.as_str(), stored.title.as_str(), stored.priority), ("from a form", "T", 3));
}

#[tokio::test]
async fn title_and_priority_default_to_the_applications() {
    let r = GotifyReceiver::builder().app(APP).app_with(APP2, "Backups", 5).start().unwrap();
    let cases = [
        (APP, json!({ "message": "m" }), "macha-app-1", 0),
        (APP, json!({ "message": "m", "title": "   ", "priority": null }), "macha-app-1", 0),
        (APP2, json!({ "message": "m", "title": "" }), "Backups", 5),
        (APP2, json!({ "message": "m", "title": " Disk full ", "priority": 0 }), " Disk full ", 0),
        (APP, json!({ "message": "m", "title": "t", "priority": 8 }), "t", 8),
    ];
    for (i, (token, body, title, priority)) in cases.iter().enumerate() {
        let (status, _, text) = send(post(&r, "/message").header("X-Gotify-Key", *token).json(body)).await;
        assert_eq!(status, 200, "{text}");
        let answer = parse(&text);
        assert_eq!((answer["title"].as_str().unwrap(), answer["priority"].as_i64().unwrap()), (*title, *priority));
        let stored = &r.messages()[i];
        assert_eq!((stored.title.as_str(), stored.priority), (*title, *priority));
    }
}

#[tokio::test]
async fn extras_round_trip_and_are_omitted_when_absent() {
    let r = receiver();
    let extras = json!({
        "client::display": { "contentType": "text/markdown" },
        "client::notification": { "click": { "url": "https://example.org/a?b=1&c=2" } },
        "macha::incident": { "count": 3, "ratio": 0.25 },
    });
    let (status, text) = post_json(&r, &json!({ "message": "**<disk>** full", "extras": extras })).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(parse(&text)["extras"], extras);
    assert_eq!(parse(&text)["message"], "**<disk>** full");
    // Go escapes HTML characters in its JSON.
    assert!(text.contains(r#"\u003cdisk\u003e"#) && text.contains(r#"?b=1\u0026c=2"#), "{text}");
    assert_eq!(r.messages()[0].extras, extras);

    for body in [json!({ "message": "plain" }), json!({ "message": "plain", "extras": {} })] {
        let (status, text) = post_json(&r, &body).await;
        assert_eq!(status, 200);
        assert!(parse(&text).get("extras").is_none(), "{text}");
    }
    assert_eq!(r.messages()[1].extras, Value::Null);
    assert_eq!(r.messages()[2].extras, Value::Null);
}

#[tokio::test]
async fn status_mode_fails_every_message_until_back_to_normal() {
    let r = receiver();
    r.set_mode(Mode::Status(500));
    let (status, text) = post_json(&r, &json!({ "message": "m" })).await;
    assert_eq!(status, 500);
    let answer = parse(&text);
    assert_eq!((answer["error"].clone(), answer["errorCode"].clone()), (json!("Internal Server Error"), json!(500)));
    assert!(answer["errorDescription"].is_string());
    r.set_mode(Mode::Status(503));
    assert_eq!(parse(&post_json(&r, &json!({ "message": "m" })).await.1)["error"], "Service Unavailable");
    assert!(r.messages().is_empty());

    r.set_mode(Mode::Normal);
    let (status, text) = post_json(&r, &json!({ "message": "m" })).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(parse(&text)["id"], 1);
    let statuses: Vec<u16> = r.attempts().iter().map(|a| a.status).collect();
    assert_eq!(statuses, [500, 503, 200]);
}

#[tokio::test]
async fn delay_mode_outlasts_a_short_client_timeout_but_stores_the_message() {
    let r = receiver();
    r.set_mode(Mode::Delay(Duration::from_millis(1500)));
    let client = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().unwrap();
    let started = Instant::now();
    let err = client
        .post(format!("{}/message", r.url()))
        .header("X-Gotify-Key", APP)
        .json(&json!({ "message": "slow" }))
        .send()
        .await
        .expect_err("the client times out");
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_millis(1000));
    // The server had stored it: a retry would duplicate it.
    assert_eq!(r.messages().len(), 1);
    assert_eq!(r.attempts()[0].status, 200);

    r.set_mode(Mode::Delay(Duration::from_millis(100)));
    let started = Instant::now();
    let (status, _) = post_json(&r, &json!({ "message": "patient" })).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn a_stopped_receiver_refuses_connections_and_restarts_on_its_port() {
    let r = receiver();
    assert_eq!(post_json(&r, &json!({ "message": "before" })).await.0, 200);
    let url = r.url();
    let addr = r.stop();
    assert_eq!(format!("http://{addr}"), url);
    let err = reqwest::Client::new().post(format!("{url}/message")).send().await.expect_err("nothing listens");
    assert!(err.is_connect(), "{err}");

    let r = GotifyReceiver::start_on(addr, &[APP]).unwrap();
    assert_eq!(r.url(), url);
    let (status, text) = post_json(&r, &json!({ "message": "after" })).await;
    assert_eq!(status, 200, "{text}");
    // A fresh database: ids start again.
    assert_eq!(parse(&text)["id"], 1);
}

#[tokio::test]
async fn health_version_redirect_and_unknown_routes() {
    let r = receiver();
    let get = |path: &str| reqwest::get(format!("{}{path}", r.url()));
    let health = get("/health").await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), r#"{"health":"green","database":"green"}"#);
    let version: Value = get("/version").await.unwrap().json().await.unwrap();
    assert_eq!(version["version"], "2.6.1");
    assert!(version["commit"].is_string() && version["buildDate"].is_string());
    let missing = get("/nope").await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.text().await.unwrap(), "404 page not found");
    assert_eq!(get("/message").await.unwrap().status(), 404);

    // gin redirects a trailing slash with 307; a client re-posts the body.
    let (status, _, text) = send(post(&r, &format!("/message/?token={APP}")).json(&json!({ "message": "m" }))).await;
    assert_eq!(status, 200, "{text}");
    let attempts = r.attempts();
    assert_eq!(attempts.iter().map(|a| a.status).collect::<Vec<_>>(), [307, 200]);
    assert_eq!(attempts[0].target, format!("/message/?token={APP}"));
    assert_eq!(attempts[1].target, format!("/message?token={APP}"));
}

/// Sends one raw HTTP/1.1 request and returns the whole answer.
fn raw(r: &GotifyReceiver, request: &str) -> String {
    let mut stream = TcpStream::connect(r.addr()).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// The receiver serves plain `#[test]` functions, with no runtime around.
#[test]
fn works_from_sync_tests_and_waits_for_messages() {
    let r = receiver();
    let body = r#"{"message":"from a thread","priority":4}"#;
    let request = format!(
        "POST /message HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {APP}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let sender = std::thread::spawn({
        let addr = r.addr();
        move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        }
    });
    assert!(r.wait_for_messages(1, Duration::from_secs(5)));
    let answer = sender.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("content-type: application/json; charset=utf-8\r\n"));
    let stored = &r.messages()[0];
    let expected = format!(
        r#"{{"id":1,"appid":1,"message":"from a thread","title":"macha-app-1","priority":4,"date":"{}"}}"#,
        stored.date
    );
    assert!(answer.ends_with(&expected), "{answer}");
    assert!(chrono::DateTime::parse_from_rfc3339(&stored.date).is_ok(), "{}", stored.date);
    assert!(!r.wait_for_messages(2, Duration::from_millis(50)));

    // A token only in the query, a message only in the query: form binding.
    let answer = raw(
        &r,
        &format!(
            "POST /message?token={APP}&message=q HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(r.wait_for_attempts(2, Duration::from_secs(1)));
    assert_eq!(r.messages()[1].message, "q");
}
