//! `propose_config_change`: a change to the NixOS configuration, written as
//! a patch into the state directory for a human to review and apply. macha
//! never applies it.
//!
//! The proposal must name a file inside the configured configuration
//! directory, and its diff must apply cleanly to that file as it is now, so
//! what a person reads is a change they could make, not a story.

use std::path::{Component, Path, PathBuf};

use crate::bounded::{self, FileKind, Size};
use crate::ids::Fingerprint;
use crate::state_dir::StateDir;

/// Where proposals are written, below the state directory.
pub const DIR: &str = "proposals";

/// The most read of the file a proposal changes: NixOS modules are a few KiB.
const TARGET_FILE: FileKind = FileKind { name: "configuration file", limit: Size::mib(4) };

/// Checks a proposed change and writes it as `proposals/NNNN-FILE.patch`.
/// The error is the reason recorded in the audit trail.
pub fn write(
    config_dir: Option<&Path>,
    state: &StateDir,
    incident: &Fingerprint,
    file: &str,
    diff: &str,
    reason: &str,
) -> Result<PathBuf, String> {
    let refuse = |why: String| format!("not proposed because {why}");
    let root =
        config_dir.ok_or_else(|| refuse("no configuration directory is configured (key `nixos.config_dir`)".into()))?;
    let rel = Path::new(file);
    if file.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(refuse(format!("{file:?} is not a plain path inside the configuration directory")));
    }
    let root = root
        .canonicalize()
        .map_err(|e| refuse(format!("the configuration directory {} cannot be read: {e}", root.display())))?;
    let target = root
        .join(rel)
        .canonicalize()
        .map_err(|e| refuse(format!("{file} does not exist in {}: {e}", root.display())))?;
    if !target.starts_with(&root) || !target.is_file() {
        return Err(refuse(format!("{file} is not a file inside {}", root.display())));
    }
    let original = bounded::read_to_string(&target, TARGET_FILE)
        .map_err(|e| refuse(format!("{file} cannot be read: {}", e.reason())))?;
    let patch = diffy::Patch::from_str(diff).map_err(|e| refuse(format!("the diff is not a unified diff: {e}")))?;
    for name in [patch.original(), patch.modified()].into_iter().flatten() {
        let name = name.strip_prefix("a/").or_else(|| name.strip_prefix("b/")).unwrap_or(name);
        if name != file && name != "/dev/null" {
            return Err(refuse(format!("the diff is about {name:?}, not {file:?}")));
        }
    }
    if patch.hunks().is_empty() {
        return Err(refuse("the diff has no hunk: it is not a unified diff of the file".into()));
    }
    let changed = diffy::apply(&original, &patch)
        .map_err(|e| refuse(format!("the diff does not apply to {file} as it is now: {e}")))?;
    if changed == original {
        return Err(refuse("the diff changes nothing".into()));
    }

    let dir = state.subdir(DIR).map_err(|e| format!("cannot write the proposal: {e}"))?;
    // After the highest number there: older proposals are deleted by age
    // (`retention.kept_days`), so counting them would reuse a number.
    let n = dir
        .list()
        .unwrap_or_default()
        .iter()
        .filter_map(|name| name.split_once('-').and_then(|(n, _)| n.parse::<u32>().ok()))
        .max()
        .unwrap_or(0)
        + 1;
    let flat: String =
        file.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    let name = format!("{n:04}-{flat}.patch");
    let path = dir.path_of(&name);
    let header = format!(
        "# Proposed by macha for incident {incident}; never applied by macha.\n# File: {}\n# Why: {}\n# Review, then apply in {} with: git apply {}\n",
        target.display(),
        crate::text::one_line(reason),
        root.display(),
        path.display()
    );
    let mut out = dir.create_new(&name).map_err(|e| format!("cannot write the proposal: {e}"))?;
    std::io::Write::write_all(&mut out, format!("{header}{}", patch).as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIX: &str = "{ config, ... }:\n{\n  services.nginx.enable = true;\n  services.nginx.workers = 2;\n}\n";
    const DIFF: &str = "--- a/hosts/web.nix\n+++ b/hosts/web.nix\n@@ -2,4 +2,4 @@\n {\n   services.nginx.enable = true;\n-  services.nginx.workers = 2;\n+  services.nginx.workers = 4;\n }\n";

    fn setup() -> (tempfile::TempDir, tempfile::TempDir) {
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join("hosts")).unwrap();
        std::fs::write(repo.path().join("hosts/web.nix"), NIX).unwrap();
        (repo, tempfile::tempdir().unwrap())
    }

    #[test]
    fn a_change_that_applies_is_written_and_the_file_is_untouched() {
        let (repo, state) = setup();
        let path = write(
            Some(repo.path()),
            &StateDir::open(state.path()).unwrap(),
            &"unit-failed:nginx.service".into(),
            "hosts/web.nix",
            DIFF,
            "more workers",
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("never applied by macha") && text.contains("+  services.nginx.workers = 4;"), "{text}");
        assert_eq!(std::fs::read_to_string(repo.path().join("hosts/web.nix")).unwrap(), NIX);
    }

    #[test]
    fn a_proposal_after_older_ones_were_deleted_takes_the_next_number() {
        let (repo, state) = setup();
        let st = StateDir::open(state.path()).unwrap();
        let propose = || write(Some(repo.path()), &st, &"i".into(), "hosts/web.nix", DIFF, "more workers").unwrap();
        let first = propose();
        let second = propose();
        std::fs::remove_file(&first).unwrap();
        let third = propose();
        assert!(third.file_name().unwrap().to_string_lossy().starts_with("0003-"), "{}", third.display());
        assert!(second.exists() && third.exists());
    }

    #[test]
    fn paths_outside_the_configuration_are_refused() {
        let (repo, state) = setup();
        std::os::unix::fs::symlink("/etc/passwd", repo.path().join("hosts/link.nix")).unwrap();
        for bad in
            ["../../etc/passwd", "/etc/passwd", "hosts/../../x", "", "hosts/link.nix", "hosts/missing.nix", "hosts"]
        {
            let err = write(Some(repo.path()), &StateDir::open(state.path()).unwrap(), &"i".into(), bad, DIFF, "r")
                .unwrap_err();
            assert!(err.starts_with("not proposed because"), "{bad:?}: {err}");
        }
        assert!(!state.path().join(DIR).exists() || std::fs::read_dir(state.path().join(DIR)).unwrap().count() == 0);
    }

    #[test]
    fn a_diff_that_does_not_apply_or_names_another_file_is_refused() {
        let (repo, state) = setup();
        let stale = DIFF.replace("workers = 2", "workers = 3");
        assert!(write(
            Some(repo.path()),
            &StateDir::open(state.path()).unwrap(),
            &"i".into(),
            "hosts/web.nix",
            &stale,
            "r"
        )
        .unwrap_err()
        .contains("does not apply"));
        let other = DIFF.replace("a/hosts/web.nix", "a/etc/shadow");
        assert!(write(
            Some(repo.path()),
            &StateDir::open(state.path()).unwrap(),
            &"i".into(),
            "hosts/web.nix",
            &other,
            "r"
        )
        .unwrap_err()
        .contains("not \"hosts/web.nix\""));
        assert!(write(
            Some(repo.path()),
            &StateDir::open(state.path()).unwrap(),
            &"i".into(),
            "hosts/web.nix",
            "rm -rf /",
            "r"
        )
        .is_err());
        assert!(write(None, &StateDir::open(state.path()).unwrap(), &"i".into(), "hosts/web.nix", DIFF, "r")
            .unwrap_err()
            .contains("nixos.config_dir"));
    }
}
