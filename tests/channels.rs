//! Notifications through ntfy and Matrix besides Gotify: doubles that speak
//! their real APIs (`macha_testbed::chat`, errors as the real servers
//! answer them) take what macha sends. Each state change arrives once per
//! channel; a channel answering 500, or slow, delays no other and gets its
//! messages later; `macha notify test` tries each channel and says how
//! each went; no token is in a file macha wrote.

mod common;

use std::time::{Duration, Instant};

use common::{decision, files_containing, Bed, WEB};
use macha_testbed::chat::{MatrixReceiver, Mode, NtfyReceiver};
use macha_testbed::gotify::GotifyReceiver;
use macha_testbed::ollama::Reply;

const GOTIFY_TOKEN: &str = "AgotifyTokenXYZ";
const NTFY_TOKEN: &str = "tk_ntfytokenabcdefghijklmnopqrs";
const MATRIX_TOKEN: &str = "syt_bWFjaGE_matrixtokenQWERTY";
const TOPIC: &str = "macha-test";
const ROOM: &str = "!ops:test";

struct Channels {
    gotify: GotifyReceiver,
    ntfy: NtfyReceiver,
    matrix: MatrixReceiver,
}

fn channels(bed: &Bed) -> Channels {
    let (gotify, ntfy, matrix) = (
        GotifyReceiver::start(&[GOTIFY_TOKEN]).unwrap(),
        NtfyReceiver::start(TOPIC, NTFY_TOKEN).unwrap(),
        MatrixReceiver::start(ROOM, MATRIX_TOKEN).unwrap(),
    );
    let file = |name: &str, token: &str| {
        let path = bed.state.path().join(name);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        path.display().to_string()
    };
    bed.append_config(&format!(
        "[gotify]\nurl = \"{}\"\ntoken_file = \"{}\"\nresolve_after = 0\nretry_max = 1\n\n[ntfy]\nurl = \"{}\"\ntopic = \"{TOPIC}\"\ntoken_file = \"{}\"\n\n[matrix]\nhomeserver = \"{}\"\nroom_id = \"{ROOM}\"\ntoken_file = \"{}\"\n",
        gotify.url(),
        file("gotify-token", GOTIFY_TOKEN),
        ntfy.url(),
        file("ntfy-token", NTFY_TOKEN),
        matrix.url(),
        file("matrix-token", MATRIX_TOKEN),
    ));
    Channels { gotify, ntfy, matrix }
}

fn sorted(mut titles: Vec<String>) -> Vec<String> {
    titles.sort();
    titles
}

#[test]
fn each_state_change_arrives_once_per_channel_and_one_down_holds_up_no_other() {
    let bed = Bed::new("channels", "suggest");
    let c = channels(&bed);
    bed.failing_web();
    bed.double.push(Reply::Json(decision("restart_unit", &[WEB])));

    // An incident and its approval: two messages, on every channel alike.
    let (code, _) = bed.check();
    assert_eq!(code, 1);
    let gotify: Vec<String> = c.gotify.messages().into_iter().map(|m| m.title).collect();
    let ntfy: Vec<String> = c.ntfy.taken().into_iter().map(|m| m.title).collect();
    let matrix: Vec<String> = c.matrix.taken().into_iter().map(|m| m.title).collect();
    assert_eq!(gotify.len(), 2, "{gotify:#?}");
    assert_eq!(sorted(ntfy.clone()), sorted(gotify.clone()));
    assert_eq!(sorted(matrix.clone()), sorted(gotify.clone()));
    // As each service wants it: ntfy's priority and tags, Matrix's HTML.
    let n = &c.ntfy.taken()[0];
    assert!((1..=5).contains(&n.priority) && n.tags.contains(&"macha".to_owned()) && n.formatted == "true", "{n:?}");
    let m = c.matrix.taken().into_iter().find(|m| m.title.contains("failed")).unwrap();
    assert!(m.formatted.starts_with("<p><strong>") && m.formatted.contains("<code>"), "{}", m.formatted);

    // ntfy answers 500 and Matrix is slow: the approval's outcome reaches
    // Gotify and Matrix, and waits for ntfy; so does the resolution.
    c.ntfy.set_mode(Mode::Status(500));
    c.matrix.set_mode(Mode::Delay(Duration::from_secs(2)));
    bed.heal_web();
    let started = Instant::now();
    let out = bed.run("macha-approve", &["approve", "1"]);
    assert!(out.status.success(), "{}", common::said(&out));
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    bed.check();
    let count = |c: &Channels| (c.gotify.messages().len(), c.matrix.taken().len(), c.ntfy.taken().len());
    assert_eq!(count(&c), (4, 4, 2));
    assert_eq!(c.ntfy.statuses().iter().filter(|s| **s == 500).count(), 2, "{:?}", c.ntfy.statuses());

    // ntfy is back: what it missed arrives, once, and nothing twice anywhere
    // (the digest goes to every channel too).
    c.ntfy.set_mode(Mode::Normal);
    c.matrix.set_mode(Mode::Normal);
    std::thread::sleep(Duration::from_secs(3));
    let out = bed.run("macha", &["notify", "digest"]);
    assert!(out.status.success(), "{}", common::said(&out));
    assert_eq!(count(&c), (5, 5, 5));
    let gotify = sorted(c.gotify.messages().into_iter().map(|m| m.title).collect());
    assert_eq!(sorted(c.ntfy.taken().into_iter().map(|m| m.title).collect()), gotify);
    assert_eq!(sorted(c.matrix.taken().into_iter().map(|m| m.title).collect()), gotify);

    // No token in any file macha wrote.
    for token in [GOTIFY_TOKEN, NTFY_TOKEN, MATRIX_TOKEN] {
        assert_eq!(files_containing(bed.state.path(), token), Vec::<String>::new(), "{token}");
    }
}

#[test]
fn notify_test_tries_every_channel_and_says_how_each_went() {
    let bed = Bed::new("channels-test", "suggest");
    let c = channels(&bed);
    let out = bed.run("macha", &["notify", "test"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(said.contains("gotify: sent to") && said.contains("the server stored message 1"), "{said}");
    assert!(said.contains("ntfy: sent to") && said.contains("the server published message"), "{said}");
    assert!(said.contains("matrix: sent to") && said.contains("the room got event $1:test"), "{said}");

    // A wrong token for Matrix, a topic ntfy forbids: each said as the server
    // said it, the others still sent, no token shown.
    std::fs::write(bed.state.path().join("matrix-token"), "syt_wrong_one\n").unwrap();
    let text =
        std::fs::read_to_string(&bed.config).unwrap().replace(&format!("topic = \"{TOPIC}\""), "topic = \"other\"");
    std::fs::write(&bed.config, text).unwrap();
    let out = bed.run("macha", &["notify", "test"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("gotify: sent to"), "{said}");
    assert!(said.contains("ntfy: not sent:") && said.contains("HTTP 403: forbidden"), "{said}");
    assert!(said.contains("matrix: not sent:") && said.contains("HTTP 401: M_UNKNOWN_TOKEN"), "{said}");
    assert!(!said.contains("syt_wrong_one") && !said.contains(NTFY_TOKEN), "{said}");
    assert_eq!(c.gotify.messages().len(), 2);

    // A room that is not a room id is refused when the configuration loads.
    let text = std::fs::read_to_string(&bed.config).unwrap().replace(ROOM, "#ops:test");
    std::fs::write(&bed.config, text).unwrap();
    let out = bed.run("macha", &["notify", "test"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(common::stderr(&out).contains("matrix.room_id"), "{}", common::stderr(&out));
}
