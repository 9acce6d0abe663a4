//! NixOS system generations, read from the system profile's links.
//!
//! `/nix/var/nix/profiles/system` is a link to `system-N-link`, which links
//! to the generation's store path; `/run/current-system` links to the store
//! path that is running. Links are read, never followed: the answer does not
//! depend on the store being reachable from here (the tests read a
//! container's profile from the host).

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub number: u32,
    /// The store path the generation's link points to.
    pub target: String,
    /// When the link was made (its modification time).
    pub created: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generations {
    /// The generation the profile points to: the boot default.
    pub profile: Option<u32>,
    /// The store path `current_system` points to.
    pub running: Option<String>,
    /// All generations, oldest first.
    pub list: Vec<Generation>,
}

impl Generations {
    pub fn get(&self, number: u32) -> Option<&Generation> {
        self.list.iter().find(|g| g.number == number)
    }

    /// The generation whose store path is running, if any is.
    pub fn running_generation(&self) -> Option<u32> {
        let running = self.running.as_deref()?;
        // Newest first: two generations can share a store path.
        self.list.iter().rev().find(|g| g.target == running).map(|g| g.number)
    }

    /// The newest generation older than the profile's: what a rollback goes to.
    pub fn previous(&self) -> Option<u32> {
        let current = self.profile?;
        self.list.iter().rev().map(|g| g.number).find(|n| *n < current)
    }

    /// The generation a rollback goes to: `requested` if it exists, else the
    /// one before the current; why there is none otherwise.
    pub fn rollback_target(&self, requested: Option<u32>) -> Result<u32, String> {
        match requested.or_else(|| self.previous()) {
            Some(n) if self.get(n).is_some() => Ok(n),
            Some(n) => Err(format!("generation {n} does not exist")),
            None => Err("there is no generation before the current one".into()),
        }
    }

    /// One line: "profile 42, running 42 (of 5 generations)".
    pub fn summary(&self) -> String {
        let show = |n: Option<u32>| n.map(|n| n.to_string()).unwrap_or_else(|| "none".into());
        let running = match (self.running_generation(), &self.running) {
            (Some(n), _) => n.to_string(),
            (None, Some(path)) => format!("{path} (no generation)"),
            (None, None) => "unknown".into(),
        };
        format!("profile {}, running {running} (of {} generations)", show(self.profile), self.list.len())
    }
}

/// The generation number in a link name `NAME-N-link`.
fn number_of(link: &str, name: &str) -> Option<u32> {
    link.strip_prefix(name)?.strip_prefix('-')?.strip_suffix("-link")?.parse().ok()
}

/// Reads the generations of `profile` and what `current_system` runs. A
/// profile that does not exist gives no generations (not a NixOS host),
/// not an error.
pub fn read(profile: &Path, current_system: &Path) -> std::io::Result<Generations> {
    let running = std::fs::read_link(current_system).ok().map(|p| p.display().to_string());
    let (Some(dir), Some(name)) = (profile.parent(), profile.file_name().and_then(|n| n.to_str())) else {
        return Ok(Generations { running, ..Generations::default() });
    };
    let profile_link = match std::fs::read_link(profile) {
        Ok(l) => Some(l),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let profile_number = profile_link
        .as_ref()
        .and_then(|l| l.file_name()?.to_str().map(str::to_owned))
        .and_then(|l| number_of(&l, name));
    let mut list = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Generations { profile: None, running, list }),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(number) = entry.file_name().to_str().and_then(|l| number_of(l, name)) else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let created =
            std::fs::symlink_metadata(entry.path()).and_then(|m| m.modified()).ok().map(DateTime::<Utc>::from);
        list.push(Generation { number, target: target.display().to_string(), created });
    }
    list.sort_by_key(|g| g.number);
    Ok(Generations { profile: profile_number, running, list })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn reads_links_without_following_them() {
        let dir = tempfile::tempdir().unwrap();
        let profiles = dir.path().join("profiles");
        std::fs::create_dir(&profiles).unwrap();
        for n in [1, 2, 3] {
            symlink(format!("/nix/store/{n}{n}{n}-nixos-system"), profiles.join(format!("system-{n}-link"))).unwrap();
        }
        symlink("/nix/store/999-other", profiles.join("other-1-link")).unwrap();
        symlink("system-3-link", profiles.join("system")).unwrap();
        let current = dir.path().join("current-system");
        symlink("/nix/store/222-nixos-system", &current).unwrap();

        let g = read(&profiles.join("system"), &current).unwrap();
        assert_eq!(g.profile, Some(3));
        assert_eq!(g.list.iter().map(|g| g.number).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(g.running_generation(), Some(2));
        assert_eq!(g.previous(), Some(2));
        assert_eq!(g.rollback_target(None), Ok(2));
        assert_eq!(g.rollback_target(Some(1)), Ok(1));
        assert!(g.rollback_target(Some(9)).unwrap_err().contains("does not exist"));
        assert_eq!(g.summary(), "profile 3, running 2 (of 3 generations)");
    }

    #[test]
    fn a_host_without_a_profile_has_no_generations() {
        let dir = tempfile::tempdir().unwrap();
        let g = read(&dir.path().join("nix/profiles/system"), &dir.path().join("current")).unwrap();
        assert_eq!(g, Generations::default());
        assert_eq!(g.previous(), None);
    }
}
