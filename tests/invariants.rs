//! Source-level checks of invariants named in ARCHITECTURE.md that are
//! about absences: things no code under `src/` may do.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn files_containing(needle: &str) -> Vec<String> {
    files_where(|text| text.contains(needle))
}

/// The files with `needle` outside comments (the compile-fail proofs in
/// documentation show calls that must not compile).
fn code_containing(needle: &str) -> Vec<String> {
    files_where(|text| text.lines().any(|l| !l.trim_start().starts_with("//") && l.contains(needle)))
}

fn files_where(matches: impl Fn(&str) -> bool) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let mut hits: Vec<String> = files
        .into_iter()
        .filter(|f| matches(&std::fs::read_to_string(f).unwrap()))
        .map(|f| f.strip_prefix(root).unwrap().display().to_string())
        .collect();
    hits.sort();
    hits
}

#[test]
fn no_code_starts_a_shell_and_only_the_root_helper_starts_a_program() {
    for needle in ["\"/bin/sh\"", "\"sh\"", "\"bash\"", "\"-c\"", "execv", "libc::system"] {
        assert_eq!(files_containing(needle), Vec::<String>::new(), "{needle} appears in src/");
    }
    // The helper units' root side runs fixed programs with typed arguments;
    // nothing else in macha starts a process.
    for needle in ["process::Command", "Command::new"] {
        assert_eq!(files_containing(needle), ["src/act/root.rs"], "{needle}");
    }
    let root = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/act/root.rs")).unwrap();
    let code = root.split("#[cfg(test)]").next().unwrap();
    let programs: Vec<&str> =
        code.match_indices("run(\"").map(|(i, _)| code[i + 5..].split('"').next().unwrap()).collect();
    assert_eq!(programs, ["nixos-rebuild", "nixos-rebuild", "nix-collect-garbage", "nix-env"], "fixed program names");
}

#[test]
fn only_the_daemon_side_of_act_starts_helper_units() {
    assert_eq!(files_containing("start_unit(unit"), ["src/act/control.rs"]);
    assert_eq!(files_containing(".start_helper("), ["src/act/mod.rs"]);
}

#[test]
fn only_the_executor_changes_units() {
    // A second check beside the types: only `act::Control` (made only in
    // `act`) declares the calls that change units, and only `act` uses them.
    for call in ["fn restart_unit", "fn start_unit", "fn reset_failed_unit"] {
        assert_eq!(files_containing(call), ["src/act/control.rs"], "{call}");
    }
    // `Manager.Subscribe` changes no unit (systemd sends signals to its
    // subscribers): act's job waits and the daemon's signal stream call it,
    // nothing else.
    assert_eq!(files_containing("fn subscribe(&self)"), ["src/act/control.rs"]);
    assert_eq!(files_containing("\"Subscribe\", &()"), ["src/observe/events.rs"]);
    assert_eq!(files_containing("restart_unit(unit"), ["src/act/control.rs"]);
    assert_eq!(files_containing("reset_failed_unit(unit"), ["src/act/control.rs"]);
    assert_eq!(code_containing(".restart("), ["src/act/mod.rs"]);
    assert_eq!(code_containing(".reset_failed("), ["src/act/mod.rs"]);
    assert_eq!(code_containing("Control::new("), ["src/act/mod.rs"]);
}

#[test]
fn policy_and_detection_do_no_io() {
    for file in ["src/catalog.rs", "src/gate.rs", "src/detect.rs"] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for needle in
            ["std::fs", "std::net", "tokio", "reqwest", "zbus", "rusqlite", "Utc::now", "SystemTime", "Instant"]
        {
            assert!(!code.contains(needle), "{file} uses {needle}");
        }
    }
}
