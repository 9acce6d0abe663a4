//! `macha kb`: incident memory for people: search it, show one memory,
//! forget one, see what the store holds, build it again from the audit
//! trail, and move it between hosts and backends as JSONL.
//!
//! Memory is folded from the audit trail (`remember`); these commands read
//! it through `kb::Backend` and change it only in two ways the trail does
//! not show, both recorded in `memory.jsonl` with the person who did it:
//! forgetting a memory and importing memories. Whoever may approve may do
//! those (root and the approver group); reading is open to whoever may
//! open the state directory. What an import brings is checked line by
//! line, redacted and bounded again before anything is stored, and stored
//! in one write: all of it or none.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde_json::json;

use super::approver::{current_user, only_approvers};
use super::output::{outln, shown};
use macha::audit::{self, MemoryEvent, MemoryRecord};
use macha::bounded::{FileKind, Size};
use macha::config::Config;
use macha::kb::runbook::{Runbooks, Section};
use macha::kb::{self, Backend, Hit, KbError, Memory, Stats};
use macha::model::ModelService;
use macha::redact::redact;
use macha::remember;
use macha::state_dir::StateDir;
use macha::text::{cut, one_line};

#[derive(clap::Args)]
#[command(after_help = "\
Exit status: 0 done; 1 refused: memory is off, no memory has that id, or an import file is not \
a memory export; 2 any other error.

Memory off ([knowledge_base] enable = false): search, show, stats and reindex say so and exit 1, \
since nothing keeps that memory up to date; export, import and forget still work on the store \
(knowledge.db), so that what memory holds can be taken out, brought in before it is turned on, \
or removed.")]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

/// The most hits `search` prints.
const MAX_LIMIT: u64 = 100;

/// The largest file `import` reads, and its longest line: a memory is
/// bounded (`kb::MAX_*`) to far less than a line may be, and a store at
/// its default limit (10 000 memories) exports to far less than a file.
const IMPORT_FILE: FileKind = FileKind { name: "memory export", limit: Size::mib(256) };
const MAX_LINE: Size = Size::mib(1);

#[derive(Subcommand)]
enum Cmd {
    /// Memories and runbook sections nearest to TEXT, with what came of each action tried.
    ///
    /// Each memory with its id, how often and when it was seen, its
    /// summary, and what came of each action tried for it; then the nearest
    /// sections of the runbooks (`knowledge_base.runbooks`), with their
    /// headings. Memory first takes in what the audit trail recorded since
    /// it last looked, and the runbooks what changed. Found by their words
    /// and, when the embedding model answers, by the query's vector.
    Search {
        /// Words of an incident: a unit, an error, a diagnosis.
        text: String,
        /// How many memories to show at most (1 to 100).
        #[arg(long, value_name = "N", default_value_t = 5,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_LIMIT))]
        limit: usize,
        /// Print the hits as JSON: id, score and the memory whole.
        #[arg(long)]
        json: bool,
    },
    /// One memory whole, or one runbook section, by its id (HOST/FINGERPRINT or runbook:FILE#N, as `search` shows them).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove one memory, recorded in the audit trail (root or the approver group).
    ///
    /// Recorded in memory.jsonl with who did it (`macha-logs memory`). New
    /// records of the incident start a new memory; `reindex` reads
    /// memory.jsonl and does not bring back what was forgotten, though the
    /// other trails still hold what it was made of.
    Forget { id: String },
    /// How many memories the store holds, how many with a vector, and its size; the runbooks indexed and those not.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Build memory again from the audit trail, and the runbook index from the files.
    ///
    /// Every memory of an incident the trail speaks of is forgotten and
    /// folded anew from it; the others (imported, or older than what the
    /// trail keeps) are left as they are. Every runbook file is read and
    /// split again, and every section embedded again.
    Reindex,
    /// Every memory as JSONL, one per line, least recently seen first.
    ///
    /// Vectors are not exported: they belong to the embedding model that
    /// made them.
    Export {
        /// Write to FILE (created owner-only, replaced if it exists) instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Store the memories of a file made by `export` (root or the approver group).
    ///
    /// A memory with the same id is replaced. Each line is checked first,
    /// and one bad line (named by its number) imports nothing. What is
    /// stored is redacted and bounded again; the import is recorded in
    /// memory.jsonl with who did it.
    Import {
        /// At most 256 MiB, one memory per line of at most 1 MiB.
        file: PathBuf,
    },
}

pub fn run(config: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    macha::logging::init_cli();
    let config = Config::load(config)?;
    let on = config.knowledge_base.enable;
    match args.command {
        Cmd::Search { .. } | Cmd::Show { .. } | Cmd::Stats { .. } | Cmd::Reindex if !on => {
            eprintln!(
                "macha kb: incident memory is off ([knowledge_base] enable = false): nothing keeps it up to date; \
                 turn it on to search it (export, import and forget still work on what it holds)"
            );
            Ok(ExitCode::from(1))
        }
        Cmd::Search { text, limit, json } => {
            let state = super::required_state_dir(&config)?;
            super::runtime()?.block_on(search(&config, &state, &text, limit, json))
        }
        Cmd::Show { id, json } => {
            let state = super::required_state_dir(&config)?;
            super::runtime()?.block_on(show(&config, &state, &id, json))
        }
        Cmd::Forget { id } => {
            // Before the state directory is opened, so the refusal is about who, not about file modes.
            only_approvers(&config.act.approver_group, "forget incident memories")?;
            let state = super::required_state_dir(&config)?;
            super::runtime()?.block_on(forget(&config, &state, &id))
        }
        Cmd::Stats { json } => {
            let state = super::required_state_dir(&config)?;
            super::runtime()?.block_on(stats(&config, &state, json))
        }
        Cmd::Reindex => {
            let state = super::required_state_dir(&config)?;
            super::runtime()?.block_on(reindex(&config, &state))
        }
        Cmd::Export { output } => {
            // Opened as the caller, before `state_dir` may make this process
            // the daemon's user, who may not write where the caller asked.
            let file = output.as_deref().map(create_export).transpose()?;
            let state = super::required_state_dir(&config)?;
            super::runtime()?.block_on(export(&config, &state, on, file.map(|f| (f, output.unwrap_or_default()))))
        }
        Cmd::Import { file } => {
            only_approvers(&config.act.approver_group, "import incident memories")?;
            // Read as the caller, as for export.
            let read = parse_import(&file);
            let state = super::state_dir(&config)?;
            match read {
                Ok(memories) => {
                    if !on {
                        eprintln!(
                            "macha kb: incident memory is off ([knowledge_base] enable = false): what is imported \
                             is kept, and used once memory is turned on"
                        );
                    }
                    super::runtime()?.block_on(import(&config, &state, &file, memories))
                }
                Err(refused) => {
                    eprintln!("macha kb: {}; nothing was imported", shown(&refused));
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

/// The model service that embeds memories and queries, when it can be
/// set up (a key file it cannot read leaves memory to words alone).
fn embedder(config: &Config) -> Option<ModelService> {
    ModelService::new(config).ok()
}

async fn search(config: &Config, state: &StateDir, text: &str, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let store = kb::Store::open(config, state)?;
    let model = embedder(config);
    let caught = remember::catch_up(state, &store, model.as_ref()).await?;
    // The query's vector, when the embedding model answers; the embedded
    // store then merges it with the words, and searches by words alone
    // without it.
    let query_vector = match (&model, caught.unembedded) {
        (Some(model), None) => match model.embed(&[text.to_owned()]).await {
            Ok(mut e) => e.vectors.pop(),
            Err(e) => {
                eprintln!("macha kb: searching by words alone: {}", shown(&e.to_string()));
                None
            }
        },
        (_, Some(e)) => {
            eprintln!("macha kb: searching by words alone: {}", shown(&e.to_string()));
            None
        }
        (None, None) => None,
    };
    let hits = store.search(text, query_vector.as_deref(), limit).await?;
    let sections = match runbooks(config, state, model.as_ref()).await? {
        Some(runbooks) => runbooks.search(text, query_vector.as_deref(), limit)?,
        None => Vec::new(),
    };
    if json {
        let hits = hits
            .iter()
            .map(|h| json!({"id": h.memory.id(), "score": h.score, "memory": h.memory}))
            .chain(sections.iter().map(|s| json!({"id": s.id, "runbook": s})));
        outln!("{}", serde_json::to_string_pretty(&hits.collect::<Vec<_>>())?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if hits.is_empty() && sections.is_empty() {
        outln!("no memory matches {:?}", shown(text).as_ref())?;
    }
    for (i, Hit { memory, .. }) in hits.iter().enumerate() {
        if i > 0 {
            outln!()?;
        }
        outln!("{}", shown(&memory.id()))?;
        print_shown(memory)?;
    }
    for (i, section) in sections.iter().enumerate() {
        if i > 0 || !hits.is_empty() {
            outln!()?;
        }
        print_section(section)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The runbook index, brought up to date with the directory (and its
/// sections embedded, when `model` answers), when runbooks are configured.
async fn runbooks(config: &Config, state: &StateDir, model: Option<&ModelService>) -> anyhow::Result<Option<Runbooks>> {
    let Some(dir) = &config.knowledge_base.runbooks else { return Ok(None) };
    let runbooks = Runbooks::open(state, dir)?;
    if let Some(e) = remember::sync_runbooks(&runbooks, model).await? {
        eprintln!("macha kb: runbook sections stay without vectors (found by words alone): {}", shown(&e.to_string()));
    }
    Ok(Some(runbooks))
}

/// A runbook section: its id, headings and text.
fn print_section(section: &Section) -> std::io::Result<()> {
    outln!("{}  {}", shown(&section.id), shown(&section.heading))?;
    for line in section.body.lines() {
        outln!("  {}", shown(line))?;
    }
    Ok(())
}

/// `Memory::shown`, the model's view of a memory, as a terminal may show it.
fn print_shown(memory: &Memory) -> std::io::Result<()> {
    for line in memory.shown().lines() {
        outln!("  {}", shown(line))?;
    }
    Ok(())
}

/// The memory with this id, or why there is none (to be said, exit 1).
async fn find(store: &impl Backend, id: &str) -> Result<Result<Memory, String>, KbError> {
    Ok(store.load(&[id.to_owned()]).await?.pop().ok_or_else(|| {
        format!(
            "no memory has the id {:?}; ids are HOST/FINGERPRINT, as `macha kb search` and `macha kb export` show them",
            shown(id).as_ref()
        )
    }))
}

async fn show(config: &Config, state: &StateDir, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    if id.starts_with("runbook:") {
        let section = match runbooks(config, state, None).await? {
            Some(runbooks) => runbooks.get(id)?,
            None => None,
        };
        let Some(section) = section else {
            eprintln!(
                "macha kb: no runbook section has the id {:?}; ids are runbook:FILE#N, as `macha kb search` shows them",
                shown(id).as_ref()
            );
            return Ok(ExitCode::from(1));
        };
        if json {
            outln!("{}", serde_json::to_string_pretty(&section)?)?;
        } else {
            print_section(&section)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let store = kb::Store::open(config, state)?;
    let memory = match find(&store, id).await? {
        Ok(m) => m,
        Err(why) => {
            eprintln!("macha kb: {why}");
            return Ok(ExitCode::from(1));
        }
    };
    if json {
        let mut value = serde_json::to_value(&memory)?;
        value["id"] = json!(memory.id());
        outln!("{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("memory {}", shown(&memory.id()))?;
    print_shown(&memory)?;
    outln!("  first seen {}, last seen {}", when(memory.first_seen), when(memory.last_seen))?;
    if let Some(since) = memory.open_since {
        outln!("  open since {}", when(since))?;
    }
    for a in &memory.actions {
        let target = a.target.as_deref().map(|t| format!(" {}", shown(t))).unwrap_or_default();
        let mut said = Vec::new();
        if a.proposed > 0 {
            said.push(format!("last proposed {}, the gate said {}", when(a.last_proposed), shown(&a.last_verdict)));
        }
        if let Some(t) = a.last_verified {
            said.push(format!("last verified {}", when(t)));
        }
        if !said.is_empty() {
            outln!("  {}{target}: {}", shown(&a.action), said.join("; "))?;
        }
    }
    if !memory.evidence.is_empty() {
        outln!("  evidence the last decision was shown:")?;
        for line in memory.evidence.lines() {
            outln!("    {}", shown(line))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

async fn forget(config: &Config, state: &StateDir, id: &str) -> anyhow::Result<ExitCode> {
    let store = kb::Store::open(config, state)?;
    let memory = match find(&store, id).await? {
        Ok(m) => m,
        Err(why) => {
            eprintln!("macha kb: {why}; nothing was forgotten");
            return Ok(ExitCode::from(1));
        }
    };
    let detail = format!(
        "{} (seen {} times, first {}, last {}; {} action(s) remembered)",
        memory.summary,
        memory.occurrences,
        memory.first_seen.format("%Y-%m-%d"),
        memory.last_seen.format("%Y-%m-%d"),
        memory.actions.len()
    );
    // Recorded before it is done: the trail never misses a change, at
    // worst it records one that then failed (and says so below).
    let record = MemoryRecord {
        time: Utc::now(),
        host: macha::observe::hostname(),
        event: MemoryEvent::Forgotten,
        by: current_user(),
        memory: Some(memory.id()),
        detail: detail.clone(),
    };
    audit::append(state, audit::MEMORY, &record, config.retention.audit())?;
    store.forget(&memory.id()).await.with_context(|| {
        format!("{} is recorded as forgotten in {}, but the store did not remove it", memory.id(), audit::MEMORY)
    })?;
    outln!("forgot {}: {}", shown(&memory.id()), shown(&detail))?;
    outln!(
        "recorded in {} (macha-logs memory); new records of this incident start a new memory, and `macha kb reindex` does not bring back what was forgotten",
        audit::MEMORY
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn stats(config: &Config, state: &StateDir, json: bool) -> anyhow::Result<ExitCode> {
    let store = kb::Store::open(config, state)?;
    let Stats { memories, with_vectors, bytes } = store.stats().await?;
    let runbooks = match runbooks(config, state, None).await? {
        Some(runbooks) => Some(runbooks.stats()?),
        None => None,
    };
    if json {
        let stats = json!({"memories": memories, "with_vectors": with_vectors, "bytes": bytes, "runbooks": runbooks});
        outln!("{}", serde_json::to_string_pretty(&stats)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{memories} memories, {with_vectors} with a vector; the store takes {}", super::stats::size(bytes))?;
    if let Some(r) = runbooks {
        outln!(
            "runbooks: {} files, {} sections, {} with a vector; {} not indexed",
            r.files,
            r.sections,
            r.with_vectors,
            r.skipped.len()
        )?;
        for why in &r.skipped {
            outln!("  not indexed: {}", shown(why))?;
        }
    }
    outln!("memory takes in the audit trail before each decision and each `macha kb search`")?;
    Ok(ExitCode::SUCCESS)
}

/// A store that counts the memories written through it.
struct Counting<'a, B> {
    inner: &'a B,
    written: std::cell::RefCell<std::collections::HashSet<String>>,
}

impl<B: Backend> Backend for Counting<'_, B> {
    async fn load(&self, ids: &[String]) -> Result<Vec<Memory>, KbError> {
        self.inner.load(ids).await
    }

    async fn store(&self, memories: &[(Memory, Option<Vec<f32>>)]) -> Result<(), KbError> {
        self.inner.store(memories).await?;
        self.written.borrow_mut().extend(memories.iter().map(|(m, _)| m.id()));
        Ok(())
    }

    async fn search(&self, text: &str, vector: Option<&[f32]>, limit: usize) -> Result<Vec<Hit>, KbError> {
        self.inner.search(text, vector, limit).await
    }

    async fn forget(&self, id: &str) -> Result<bool, KbError> {
        self.inner.forget(id).await
    }

    async fn stats(&self) -> Result<Stats, KbError> {
        self.inner.stats().await
    }

    async fn all(&self) -> Result<Vec<Memory>, KbError> {
        self.inner.all().await
    }
}

async fn reindex(config: &Config, state: &StateDir) -> anyhow::Result<ExitCode> {
    let store = kb::Store::open(config, state)?;
    let counting = Counting { inner: &store, written: Default::default() };
    let model = embedder(config);
    let done = remember::reindex(state, &counting, model.as_ref()).await?;
    if let Some(e) = &done.unembedded {
        eprintln!("macha kb: stored without vectors (found by words alone): {}", shown(&e.to_string()));
    }
    let records = done.count;
    let written = counting.written.borrow().len();
    outln!("read {records} records of the audit trail; wrote {written} memories")?;
    if let Some(dir) = &config.knowledge_base.runbooks {
        Runbooks::open(state, dir)?.clear()?;
        if let Some(runbooks) = runbooks(config, state, None).await? {
            // A batch a look: on until every section has its vector, or the model fails.
            let most = kb::runbook::MAX_FILES * kb::runbook::MAX_SECTIONS;
            for _ in 0..most {
                if runbooks.unembedded(1)?.is_empty() || model.is_none() {
                    break;
                }
                if let Some(e) = remember::sync_runbooks(&runbooks, model.as_ref()).await? {
                    eprintln!("macha kb: runbook sections stay without vectors: {}", shown(&e.to_string()));
                    break;
                }
            }
            let r = runbooks.stats()?;
            outln!("indexed {} runbook files into {} sections ({} not indexed)", r.files, r.sections, r.skipped.len())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The export file, created owner-only (memories hold evidence, redacted
/// but still the host's), replaced if it exists.
fn create_export(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create the export file {}", path.display()))
}

/// With memory on, what the trail recorded since memory last looked is
/// taken in first, so the export is as of now; off, it is what was kept.
async fn export(
    config: &Config,
    state: &StateDir,
    on: bool,
    file: Option<(std::fs::File, PathBuf)>,
) -> anyhow::Result<ExitCode> {
    let store = kb::Store::open(config, state)?;
    if on {
        remember::catch_up(state, &store, embedder(config).as_ref()).await?;
    }
    let memories = store.all().await?;
    match file {
        None => {
            for m in &memories {
                outln!("{}", serde_json::to_string(m)?)?;
            }
        }
        Some((file, path)) => {
            let fail = |e: std::io::Error| anyhow::anyhow!("cannot write the export file {}: {e}", path.display());
            let mut out = std::io::BufWriter::new(file);
            for m in &memories {
                serde_json::to_writer(&mut out, m).map_err(|e| fail(e.into()))?;
                out.write_all(b"\n").map_err(fail)?;
            }
            out.into_inner().map_err(|e| fail(e.into_error()))?.sync_all().map_err(fail)?;
            outln!("exported {} memories to {}", memories.len(), shown(&path.display().to_string()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The memories of an export file, each checked, redacted and bounded; or
/// what is wrong with it, naming the file and the line.
fn parse_import(path: &Path) -> Result<Vec<Memory>, String> {
    let bytes = macha::bounded::read(path, IMPORT_FILE).map_err(|e| e.to_string())?;
    let name = path.display();
    let mut memories = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        if line.len() as u64 > MAX_LINE.get() {
            return Err(format!("{name} line {n} is longer than {MAX_LINE}: not a memory of `macha kb export`"));
        }
        let line = std::str::from_utf8(line).map_err(|_| format!("{name} line {n} is not UTF-8 text"))?;
        if line.trim().is_empty() {
            continue;
        }
        let memory: Memory = serde_json::from_str(line).map_err(|e| format!("{name} line {n} is not a memory: {e}"))?;
        let memory = checked(memory).map_err(|why| format!("{name} line {n}: {why}"))?;
        if let Some(first) = seen.insert(memory.id(), n) {
            return Err(format!("{name} line {n}: the memory {} is on line {first} already", memory.id()));
        }
        memories.push(memory);
    }
    Ok(memories)
}

/// A memory read from outside, as memory keeps one: its names checked,
/// its texts redacted and bounded as `Memory::apply` keeps them.
fn checked(mut m: Memory) -> Result<Memory, String> {
    let name_ok = |s: &str, max: usize| {
        !s.is_empty() && s.chars().count() <= max && !s.chars().any(|c| c.is_control() || c.is_whitespace())
    };
    if !name_ok(&m.host, 253) || m.host.contains('/') {
        return Err(format!("the host {:?} is not a host name", m.host));
    }
    if !name_ok(m.fingerprint.as_str(), 512) {
        return Err(format!("the fingerprint {:?} is not one macha makes", m.fingerprint.as_str()));
    }
    if m.kind != kb::kind_of(&m.fingerprint) {
        return Err(format!("the kind {:?} is not that of the fingerprint {}", m.kind, m.fingerprint));
    }
    if m.first_seen > m.last_seen {
        return Err(format!("first seen ({}) after last seen ({})", m.first_seen, m.last_seen));
    }
    if m.actions.len() > kb::MAX_ACTIONS {
        return Err(format!("{} actions, more than the {} a memory keeps", m.actions.len(), kb::MAX_ACTIONS));
    }
    let kept = |text: &str, max: usize| cut(&one_line(&redact(text)), max, "…");
    m.summary = kept(&m.summary, kb::MAX_TEXT_CHARS);
    m.evidence = cut(&redact(&m.evidence), kb::MAX_EVIDENCE_CHARS, "…");
    m.diagnosis = m.diagnosis.map(|d| kept(&d, kb::MAX_TEXT_CHARS));
    for a in &mut m.actions {
        let kind_ok = !a.action.is_empty()
            && a.action.len() <= 64
            && a.action.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !kind_ok {
            return Err(format!("the action {:?} is not a catalog name", a.action));
        }
        if a.reviews.len() > kb::MAX_REVIEWS {
            return Err(format!(
                "{} reviews of {}, more than the {} a memory keeps",
                a.reviews.len(),
                a.action,
                kb::MAX_REVIEWS
            ));
        }
        if a.verified_since_failure > a.verified {
            return Err(format!(
                "{} verified {} times in a row but {} times in all",
                a.action, a.verified_since_failure, a.verified
            ));
        }
        a.target = a.target.as_deref().map(|t| kept(t, 255));
        a.last_verdict = kept(&a.last_verdict, 32);
        if let Some(f) = &mut a.last_failure {
            f.text = kept(&f.text, kb::MAX_TEXT_CHARS);
        }
        for r in &mut a.reviews {
            r.by = kept(&r.by, 64);
            r.reason = r.reason.as_deref().map(|w| kept(w, kb::MAX_TEXT_CHARS));
        }
    }
    Ok(m)
}

async fn import(config: &Config, state: &StateDir, path: &Path, memories: Vec<Memory>) -> anyhow::Result<ExitCode> {
    let store = kb::Store::open(config, state)?;
    let ids: Vec<String> = memories.iter().map(Memory::id).collect();
    let replaced = store.load(&ids).await?.len();
    let detail = format!(
        "{} memories from {} ({} new, {replaced} replaced)",
        memories.len(),
        path.display(),
        memories.len() - replaced
    );
    // Recorded before it is done, as a forget is.
    let record = MemoryRecord {
        time: Utc::now(),
        host: macha::observe::hostname(),
        event: MemoryEvent::Imported,
        by: current_user(),
        memory: None,
        detail: detail.clone(),
    };
    audit::append(state, audit::MEMORY, &record, config.retention.audit())?;
    let stored: Vec<(Memory, Option<Vec<f32>>)> = memories.into_iter().map(|m| (m, None)).collect();
    // One write: the embedded store takes all of them or none. A store
    // that took part of them takes the same import again, whole.
    store.store(&stored).await.with_context(|| {
        format!(
            "the import is recorded in {}, but the store failed (the embedded store took none of it); the same import again replaces by id",
            audit::MEMORY
        )
    })?;
    outln!("imported {}", shown(&detail))?;
    Ok(ExitCode::SUCCESS)
}
