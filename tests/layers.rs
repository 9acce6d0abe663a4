//! The import order is the pipeline order: no top-level module of `src/`
//! imports one above it, and none imports another that imports it back.
//!
//! Read from the source, so it needs no root and no container: every `.rs`
//! file under `src/` but the binary's (`src/main.rs`, `src/cli/`, the top)
//! is scanned for `use crate::...` and `crate::...::` paths, outside
//! comments, string literals and items under `#[cfg(test)]`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. A module may import modules of its own layer
/// or of a layer below it, never above; within a layer the circle check
/// keeps the order one-way. Placed differently from the picture in issue 12:
/// `report` (the cycle's report, read by notify) sits with the records,
/// below notify, because notify reads it and the cycle writes it.
const LAYERS: &[&[&str]] = &[
    &[
        "errors",
        "ids",
        "bounded",
        "text",
        "unit",
        "redact",
        "repeat",
        "state_dir",
        "sqlite",
        "sshkey",
        "rotation",
        "service_manager",
        "logging",
        "memory",
    ],
    &["catalog"],
    &["config"],
    &["observe"],
    &["detect", "storm", "suspect"],
    &["model"],
    &["investigate"],
    &["kb"],
    &["decide"],
    &["gate"],
    &["act"],
    &["audit", "store", "ledger", "note", "propose", "report", "remember", "counters"],
    // The one step that carries out an action, queues its undo and records
    // it: above the records it writes, below the cycle and the approval
    // workflow that call it.
    &["carry", "elsewhere"],
    &["notify"],
    &["cycle", "approval", "retention", "watch", "daemon", "remote", "exporter", "alerts"],
    &["ask", "eval"],
];

/// Where an edge comes from: the files that import across it.
type Edges = BTreeMap<(String, String), BTreeSet<String>>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules of the library: `src/NAME.rs` and `src/NAME/`.
fn modules() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if path.is_dir() && name != "cli" {
            found.insert(name);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if stem != "lib" && stem != "main" {
                found.insert(stem.to_owned());
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` with comments removed and string and character literals emptied,
/// so that what is left is code.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&chars, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            let closes = |k: usize| chars[k] == '"' && (1..=hashes).all(|h| chars.get(k + h) == Some(&'#'));
            while j < chars.len() && !closes(j) {
                j += 1;
            }
            i = j + 1 + hashes;
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('a', '\n', '\u{2028}'), or a lifetime.
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// `code` without the items under `#[cfg(test)]` (a test module, a test
/// helper, an import only tests use).
fn without_tests(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let item = &rest[at + MARK.len()..];
        // The item ends at its `;` or at the end of its first `{ ... }`; a
        // field (the last of its struct) at the brace that closes the struct.
        let mut depth = 0usize;
        let mut end = item.len();
        for (k, ch) in item.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = k;
                    break;
                }
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The first segment of each path a `use crate::{...}` group names.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (k, ch) in group.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                heads.push(group[start..k].to_owned());
                start = k + 1;
            }
            _ => {}
        }
    }
    heads.push(group[start..].to_owned());
    heads
        .iter()
        .map(|h| h.trim().split("::").next().unwrap_or("").trim().to_owned())
        .filter(|h| !h.is_empty())
        .collect()
}

/// The names `code` reaches through `crate::NAME` and `use crate::{NAME, ...}`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        let before = start.checked_sub(1).map(|b| bytes[b]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') {
            continue;
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1usize;
            let end = group
                .char_indices()
                .find(|&(_, ch)| {
                    match ch {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(group.len(), |(k, _)| k);
            names.extend(group_heads(&group[..end]));
        } else {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            names.insert(name);
        }
    }
    names
}

/// Every edge between two top-level modules, with its files.
fn edges(modules: &BTreeSet<String>) -> Edges {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges = Edges::new();
    for file in files {
        let rel = file.strip_prefix(src()).unwrap().to_string_lossy().into_owned();
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs").to_owned();
        if !modules.contains(&top) {
            continue; // lib.rs, main.rs, cli/
        }
        let code = without_tests(&code_only(&std::fs::read_to_string(&file).unwrap()));
        for name in crate_paths(&code) {
            if name != top && modules.contains(&name) {
                edges.entry((top.clone(), name)).or_default().insert(rel.clone());
            }
        }
    }
    edges
}

/// A circle through `start`, if there is one: the modules in order.
fn circle_from(start: &str, edges: &Edges) -> Option<Vec<String>> {
    fn walk(at: &str, start: &str, edges: &Edges, path: &mut Vec<String>, seen: &mut BTreeSet<String>) -> bool {
        for (_, to) in edges.keys().filter(|(from, _)| from == at) {
            if to == start {
                return true;
            }
            if seen.insert(to.clone()) {
                path.push(to.clone());
                if walk(to, start, edges, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    walk(start, start, edges, &mut path, &mut BTreeSet::new()).then_some(path)
}

fn describe(from: &str, to: &str, edges: &Edges) -> String {
    let files: Vec<&str> = edges[&(from.to_owned(), to.to_owned())].iter().map(String::as_str).collect();
    format!("{from} -> {to} ({})", files.join(", "))
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let modules = modules();
    let edges = edges(&modules);
    let mut circles = Vec::new();
    let mut in_a_circle = BTreeSet::new();
    for m in &modules {
        if in_a_circle.contains(m) {
            continue;
        }
        if let Some(circle) = circle_from(m, &edges) {
            in_a_circle.extend(circle.iter().cloned());
            let steps: Vec<String> = circle
                .iter()
                .zip(circle.iter().skip(1).chain(std::iter::once(&circle[0])))
                .map(|(a, b)| describe(a, b, &edges))
                .collect();
            circles.push(format!("circle {}:\n    {}", circle.join(" -> "), steps.join("\n    ")));
        }
    }
    assert!(circles.is_empty(), "import circles in src/:\n  {}", circles.join("\n  "));
}

#[test]
fn no_import_runs_up_the_layers() {
    let modules = modules();
    let layer: BTreeMap<&str, usize> =
        LAYERS.iter().enumerate().flat_map(|(i, names)| names.iter().map(move |n| (*n, i))).collect();
    let unplaced: Vec<&String> = modules.iter().filter(|m| !layer.contains_key(m.as_str())).collect();
    assert!(unplaced.is_empty(), "modules missing from LAYERS in tests/layers.rs: {unplaced:?}");
    let edges = edges(&modules);
    let upward: Vec<String> = edges
        .keys()
        .filter(|(from, to)| layer[from.as_str()] < layer[to.as_str()])
        .map(|(from, to)| {
            format!(
                "{} (layer {} imports layer {})",
                describe(from, to, &edges),
                layer[from.as_str()],
                layer[to.as_str()]
            )
        })
        .collect();
    assert!(upward.is_empty(), "imports that run up the layers:\n  {}", upward.join("\n  "));
}

#[test]
fn the_scan_sees_imports_and_nothing_else() {
    let code = code_only(
        "use crate::{a, b::{c, d}, e::f as g};\n// crate::h::x\nlet s = \"crate::i::y\";\n/* crate::j */ crate::k::z();\n#[cfg(test)]\nmod tests { use crate::l; }\n$crate::m::n!();\nlet c = '{';\n",
    );
    let names: Vec<String> = crate_paths(&without_tests(&code)).into_iter().collect();
    assert_eq!(names, ["a", "b", "e", "k"]);
}
