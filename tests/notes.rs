//! `macha note`: an operator's instruction that the next decision reads,
//! marked as the operator's, and that is archived once read.

mod common;

use common::Bed;

#[test]
fn the_next_decision_reads_the_note_as_the_operators_then_it_is_archived() {
    let bed = Bed::new("note", "suggest");
    let out = bed.run("macha", &["note", "demo-web is being migrated until 14:00; do not restart it"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    bed.failing_web();

    let (code, report) = bed.check();
    assert_eq!(code, 1, "{report}");
    let chats: Vec<serde_json::Value> =
        bed.double.requests().into_iter().filter(|r| r.path == "/api/chat").map(|r| r.body).collect();
    let first = chats.first().expect("the model was asked");
    let messages = first["messages"].as_array().unwrap();
    let note = messages
        .iter()
        .find(|m| m["content"].as_str().is_some_and(|c| c.contains("<operator-note")))
        .expect("the note reached the model");
    assert_eq!(note["role"], "user");
    let text = note["content"].as_str().unwrap();
    assert!(text.contains("do not restart it") && text.contains("Notes from the operator"), "{text}");
    // Its own message, before the incident's evidence.
    let incident = messages.iter().rposition(|m| m["role"] == "user").unwrap();
    assert!(messages[incident]["content"].as_str().unwrap().contains("demo-web"));
    let note_at = messages.iter().position(|m| m == note).unwrap();
    assert!(note_at < incident);

    // Read once: archived with the incident, not sent again.
    let archive = bed.state_dir().join("notes/archive");
    let archived: Vec<_> = std::fs::read_dir(&archive).unwrap().flatten().collect();
    assert_eq!(archived.len(), 1);
    let n: serde_json::Value = serde_json::from_slice(&std::fs::read(archived[0].path()).unwrap()).unwrap();
    assert_eq!(n["read_for"], "unit-failed:demo-web.service");
    let before = bed.double.requests().len();
    bed.c.exec_ok(&["systemctl", "restart", common::WEB]).ok();
    bed.c.wait_unit_state(common::WEB, "failed", std::time::Duration::from_secs(20)).unwrap();
    bed.check();
    let later: Vec<_> = bed.double.requests()[before..].iter().filter(|r| r.path == "/api/chat").cloned().collect();
    assert!(later.iter().all(|r| !r.body.to_string().contains("operator-note")));
}

#[test]
fn an_empty_note_is_refused_with_the_reason() {
    let bed = Bed::new("note-bad", "suggest");
    let out = bed.run("macha", &["note", "   "]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the note is empty"));
}
