//! Evidence compaction against the real journal: a burst of 100 000 error
//! lines of 50 kinds, written into the test container's journal by a unit,
//! is read by macha's observer and becomes a prompt within the token budget
//! that names every kind, with counts that add up to the lines written. The
//! same is checked on the prompt the `macha-check` binary sends to the model
//! double. Timing and memory are measured in `benches/evidence.rs`, never
//! asserted here.

#[path = "../benches/support/burst.rs"]
mod burst;
mod common;

use std::collections::BTreeMap;

use macha::config::Config;
use macha::decide::prompt::{Prompts, DEFAULT_INPUT_BUDGET};
use macha::decide::tokens::estimate_tokens;
use macha::detect::detect;
use macha::observe::{Observer, Scope};
use macha_testbed::ollama::Reply;

use self::burst::{Burst, KINDS, UNIT};
use self::common::Bed;

const LINES: usize = 100_000;

/// The template lines of the `<journal>` block in `user`: text -> count.
fn template_counts(user: &str) -> BTreeMap<String, u64> {
    let block = user.lines().skip_while(|l| *l != "<journal>").skip(1).take_while(|l| *l != "</journal>");
    let mut counts = BTreeMap::new();
    for line in block {
        let Some((_, text)) = line.split_once("] ") else { panic!("a block line without trusted fields: {line}") };
        let Some((count, rest)) = text.split_once(" times, last ") else { continue };
        let (_, template) = rest.split_once(": ").expect("`last TIME: TEMPLATE`");
        let previous = counts.insert(template.to_owned(), count.parse::<u64>().expect("a count"));
        assert!(previous.is_none(), "one template line per kind: {template}");
    }
    counts
}

/// Every kind is named, once, with the number of lines it had; the counts
/// shown and the counts left out add up to the lines written.
fn assert_names_every_kind(user: &str, burst: &Burst) {
    let counts = template_counts(user);
    for kind in &burst.kinds {
        assert_eq!(counts.get(&kind.template), Some(&kind.count), "{}: {user}", kind.template);
    }
    assert_eq!(counts.len(), KINDS, "{user}");
    assert_eq!(counts.values().sum::<u64>(), LINES as u64);
    assert!(!user.contains("Left out to fit") && !user.contains("Counted, not folded"), "{user}");
}

#[test]
fn a_burst_of_100000_lines_of_50_kinds_becomes_a_prompt_within_budget_naming_every_kind() {
    let bed = Bed::new("evidence", "suggest");
    let cursor = burst::journal_tail(&bed.c);
    let burst = Burst::generate(LINES);
    burst.plant(&bed.c);

    // The observer and the prompt, in this process.
    let config = Config::load(Some(bed.config.as_path())).expect("the bed's config");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let snap = rt.block_on(Observer::new(&config).observe(Some(&cursor), &[], Scope::Full));
    let scan = snap.journal.ok().expect("the journal was read");
    assert_eq!(scan.per_unit.get(UNIT), Some(&(LINES as u64)), "journald kept every line of the burst");
    let fold = &scan.evidence[UNIT];
    assert_eq!(fold.templates().len(), KINDS);
    let incident = detect(&snap, &[], &config.detect)
        .into_iter()
        .find(|i| i.fingerprint == format!("error-burst:{UNIT}"))
        .expect("the burst is an incident");
    let rendered = Prompts::load(None).unwrap().render_within(&incident, &snap, DEFAULT_INPUT_BUDGET);
    assert!(rendered.fits(), "{} tokens, budget {}", rendered.tokens, rendered.budget);
    let compaction = rendered.compaction.as_ref().expect("journal evidence");
    assert_eq!((compaction.entries, compaction.templates, compaction.shown), (LINES as u64, KINDS, KINDS));
    assert_names_every_kind(&rendered.user, &burst);
    // Most severe first: the alert kinds, then crit, then err.
    let priorities: Vec<u8> = rendered
        .user
        .lines()
        .filter(|l| l.contains(" times, last "))
        .map(|l| l.split(" prio=").nth(1).unwrap()[..1].parse().unwrap())
        .collect();
    assert!(priorities.is_sorted(), "{priorities:?}");

    // The binary: the prompt the model double received.
    std::fs::create_dir_all(bed.state_dir()).unwrap();
    std::fs::write(bed.state_dir().join("journal.cursor"), &cursor).unwrap();
    bed.double.set_default(Reply::Json(serde_json::json!({
        "diagnosis": "a burst of errors", "severity": "warning",
        "actions": [{"kind": "notify_only", "unit": null, "reason": "a human should look"}]
    })));
    let (_, report) = bed.check();
    let requests = bed.double.requests();
    let chat = requests
        .iter()
        .filter(|r| r.path == "/api/chat")
        .find(|r| {
            r.body["messages"][1]["content"]
                .as_str()
                .is_some_and(|u| u.starts_with(&format!("Incident: error-burst:{UNIT}")))
        })
        .unwrap_or_else(|| panic!("no prompt about the burst; report: {report:#}"));
    let text = |i: usize| chat.body["messages"][i]["content"].as_str().unwrap().to_owned();
    let (system, user) = (text(0), text(1));
    assert_names_every_kind(&user, &burst);
    // Whatever margin the caller keeps, the input stays within the default
    // context less the default answer cap (num_ctx 8192, num_predict 2048).
    let tokens = estimate_tokens(&system) + estimate_tokens(&user);
    assert!(tokens <= 8192 - 2048, "{tokens} tokens");
}
