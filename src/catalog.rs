//! What can ever happen to the host: the catalog of actions.
//!
//! Every stage speaks of actions in these types. `decide` parses the model's
//! answer into an `ActionKind` (a kind that is not here is a parse error,
//! never an action), `gate` turns a proposal into a checked `Action` and
//! judges it, `act` carries it out, the helpers' root side checks it again.
//! What is fixed per entry lives here with it: its arguments, its risk, the
//! helper unit that carries out a root-only entry, and the syntactic checks
//! of its arguments (a flake reference, a probe's path). Whether an action is
//! allowed on this host, now, is the gate's question, not this module's.
//!
//! Pure data and pure functions; this module knows nothing of the pipeline.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::unit::{UnitName, UnitNameError};

/// The catalog entries a decision may propose. Anything else fails to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Restart a failed unit (`unit` required).
    RestartUnit,
    /// Clear a unit's failed state without starting it (`unit` required).
    ResetFailed,
    /// Delete Nix store paths no longer in use, and system generations
    /// older than `older_than_days` (required).
    CollectGarbage,
    /// Shrink the journal's archived files to `max_size_mb` (required).
    VacuumJournal,
    /// Read something about the host, changing nothing (`probe` required;
    /// `unit` for unit_status and unit_logs, `path` for disk_usage).
    Investigate,
    /// Rebuild the NixOS system from the configured flake (`mode` required).
    NixosRebuild,
    /// Go back to the previous NixOS system generation.
    RollbackGeneration,
    /// Propose a change to a file of the NixOS configuration as a unified
    /// diff (`file` and `diff` required, no `unit`). Written for a human
    /// to review; never applied by macha.
    ProposeConfigChange,
    /// Nothing to carry out: a human should look (no `unit`).
    NotifyOnly,
}

/// Every catalog entry, in the order of the catalog.
pub const ALL_KINDS: [ActionKind; 9] = [
    ActionKind::RestartUnit,
    ActionKind::ResetFailed,
    ActionKind::CollectGarbage,
    ActionKind::VacuumJournal,
    ActionKind::Investigate,
    ActionKind::NixosRebuild,
    ActionKind::RollbackGeneration,
    ActionKind::ProposeConfigChange,
    ActionKind::NotifyOnly,
];

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RestartUnit => "restart_unit",
            Self::ResetFailed => "reset_failed",
            Self::CollectGarbage => "collect_garbage",
            Self::VacuumJournal => "vacuum_journal",
            Self::Investigate => "investigate",
            Self::NixosRebuild => "nixos_rebuild",
            Self::RollbackGeneration => "rollback_generation",
            Self::ProposeConfigChange => "propose_config_change",
            Self::NotifyOnly => "notify_only",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ALL_KINDS.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the action is about one systemd unit it changes.
    pub fn needs_unit(self) -> bool {
        matches!(self, Self::RestartUnit | Self::ResetFailed)
    }

    /// The arguments a proposal of this kind carries besides its reason:
    /// every one of them, and no other. For `investigate` they depend on
    /// the probe (`None`: no probe named, so only `probe` itself).
    pub fn args(self, probe: Option<Probe>) -> &'static [Arg] {
        match self {
            Self::RestartUnit | Self::ResetFailed => &[Arg::Unit],
            Self::CollectGarbage => &[Arg::OlderThanDays],
            Self::VacuumJournal => &[Arg::MaxSizeMb],
            Self::NixosRebuild => &[Arg::Mode],
            Self::Investigate => match probe {
                Some(p) if p.needs_unit() => &[Arg::Probe, Arg::Unit],
                Some(Probe::DiskUsage) => &[Arg::Probe, Arg::Path],
                _ => &[Arg::Probe],
            },
            Self::ProposeConfigChange => &[Arg::File, Arg::Diff],
            Self::RollbackGeneration | Self::NotifyOnly => &[],
        }
    }
}

/// An argument of a proposed action, by the name the model writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arg {
    Unit,
    OlderThanDays,
    MaxSizeMb,
    Mode,
    Probe,
    Path,
    File,
    Diff,
}

impl Arg {
    pub const ALL: [Arg; 8] =
        [Arg::Unit, Arg::OlderThanDays, Arg::MaxSizeMb, Arg::Mode, Arg::Probe, Arg::Path, Arg::File, Arg::Diff];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unit => "unit",
            Self::OlderThanDays => "older_than_days",
            Self::MaxSizeMb => "max_size_mb",
            Self::Mode => "mode",
            Self::Probe => "probe",
            Self::Path => "path",
            Self::File => "file",
            Self::Diff => "diff",
        }
    }
}

/// What `nixos_rebuild` does, as `nixos-rebuild` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebuildMode {
    /// Evaluate and build nothing: shows what would be built.
    DryBuild,
    /// Build and activate, without making it the boot default.
    Test,
    /// Build, activate, and make it the boot default.
    Switch,
    /// Build and make it the boot default from the next boot on.
    Boot,
}

impl RebuildMode {
    pub const ALL: [RebuildMode; 4] = [Self::DryBuild, Self::Test, Self::Switch, Self::Boot];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DryBuild => "dry-build",
            Self::Test => "test",
            Self::Switch => "switch",
            Self::Boot => "boot",
        }
    }
}

/// The read-only probes `investigate` may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// A unit's state, result, restarts and timestamps (`unit` required).
    UnitStatus,
    /// A unit's most recent journal lines (`unit` required).
    UnitLogs,
    /// The units systemd lists as failed.
    FailedUnits,
    /// Size and free space of the file system holding `path` (required).
    DiskUsage,
    /// The processes using the most CPU and memory.
    TopProcesses,
    /// The NixOS system generations and which one is running.
    Generations,
    /// The TCP ports listened on and the UDP ports bound, with their owners' uids.
    ListeningSockets,
}

impl Probe {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnitStatus => "unit_status",
            Self::UnitLogs => "unit_logs",
            Self::FailedUnits => "failed_units",
            Self::DiskUsage => "disk_usage",
            Self::TopProcesses => "top_processes",
            Self::Generations => "generations",
            Self::ListeningSockets => "listening_sockets",
        }
    }

    /// Every probe, in catalog order.
    pub const ALL: [Probe; 7] = [
        Self::UnitStatus,
        Self::UnitLogs,
        Self::FailedUnits,
        Self::DiskUsage,
        Self::TopProcesses,
        Self::Generations,
        Self::ListeningSockets,
    ];

    pub fn needs_unit(self) -> bool {
        matches!(self, Self::UnitStatus | Self::UnitLogs)
    }
}

/// Helper units: the only units macha may start, each running one root-only
/// catalog entry. They are never a target of restart or reset-failed.
pub const HELPER_PREFIX: &str = "macha-action-";

/// How much harm an action can do; fixed per catalog entry and target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Reads the host, changes nothing; runs at every level but observe.
    ReadOnly,
    /// Undone by itself or by systemd (a restart, clearing a failed state),
    /// or removes only what is no longer in use (old store paths, archived
    /// journal files above a floor).
    Low,
    /// Changes the running system (a rebuild, a rollback).
    High,
}

/// A catalog action with a validated target: what act carries out and what
/// an approval is bound to. Built only by the gate (and read back from the
/// queue, where it was stored by the gate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    RestartUnit {
        unit: UnitName,
    },
    ResetFailed {
        unit: UnitName,
    },
    CollectGarbage {
        older_than_days: u32,
    },
    VacuumJournal {
        max_size_mb: u64,
    },
    Investigate {
        probe: Probe,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unit: Option<UnitName>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
    NixosRebuild {
        mode: RebuildMode,
    },
    /// `generation: None` is the generation before the current one; a
    /// number comes only from macha itself (the undo of a rebuild or a
    /// rollback), never from the model.
    RollbackGeneration {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        generation: Option<u32>,
    },
}

impl Action {
    /// A unit action (`restart_unit` or `reset_failed`).
    pub fn on_unit(kind: ActionKind, unit: UnitName) -> Option<Self> {
        match kind {
            ActionKind::RestartUnit => Some(Self::RestartUnit { unit }),
            ActionKind::ResetFailed => Some(Self::ResetFailed { unit }),
            _ => None,
        }
    }

    pub fn kind(&self) -> ActionKind {
        match self {
            Self::RestartUnit { .. } => ActionKind::RestartUnit,
            Self::ResetFailed { .. } => ActionKind::ResetFailed,
            Self::CollectGarbage { .. } => ActionKind::CollectGarbage,
            Self::VacuumJournal { .. } => ActionKind::VacuumJournal,
            Self::Investigate { .. } => ActionKind::Investigate,
            Self::NixosRebuild { .. } => ActionKind::NixosRebuild,
            Self::RollbackGeneration { .. } => ActionKind::RollbackGeneration,
        }
    }

    /// The unit the action changes, if it changes one.
    pub fn unit(&self) -> Option<&UnitName> {
        match self {
            Self::RestartUnit { unit } | Self::ResetFailed { unit } => Some(unit),
            _ => None,
        }
    }

    /// The target in words, for lists, records and messages.
    pub fn target(&self) -> String {
        match self {
            Self::RestartUnit { unit } | Self::ResetFailed { unit } => unit.to_string(),
            Self::CollectGarbage { older_than_days } => format!("older than {older_than_days} days"),
            Self::VacuumJournal { max_size_mb } => format!("down to {max_size_mb} MiB"),
            Self::Investigate { probe, unit, path } => {
                let arg = unit.as_ref().map(|u| u.to_string()).or_else(|| path.clone());
                match arg {
                    Some(a) => format!("{} {a}", probe.as_str()),
                    None => probe.as_str().to_owned(),
                }
            }
            Self::NixosRebuild { mode } => mode.as_str().to_owned(),
            Self::RollbackGeneration { generation: None } => "the previous generation".into(),
            Self::RollbackGeneration { generation: Some(n) } => format!("generation {n}"),
        }
    }

    /// Canonical JSON: what is stored in the queue and hashed into a binding.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an action serialises")
    }

    pub fn risk(&self) -> Risk {
        match self {
            Self::Investigate { .. } => Risk::ReadOnly,
            Self::RestartUnit { .. } | Self::ResetFailed { .. } => Risk::Low,
            Self::CollectGarbage { .. } | Self::VacuumJournal { .. } => Risk::Low,
            Self::NixosRebuild { .. } | Self::RollbackGeneration { .. } => Risk::High,
        }
    }

    /// Whether a human must approve it at every level: making another
    /// system the boot default, or going back to an older one.
    pub fn always_needs_approval(&self) -> bool {
        matches!(
            self,
            Self::NixosRebuild { mode: RebuildMode::Switch | RebuildMode::Boot } | Self::RollbackGeneration { .. }
        )
    }

    /// The root helper unit that carries it out, for actions that need root.
    pub fn helper_unit(&self) -> Option<&'static str> {
        helper_unit(self.kind())
    }

    /// How act judges it after it ran: its verify probe.
    pub fn verify(&self) -> Verify {
        match self {
            Self::Investigate { .. } => Verify::Answer,
            Self::RestartUnit { .. } | Self::ResetFailed { .. } => Verify::UnitSettles,
            Self::CollectGarbage { .. } | Self::VacuumJournal { .. } => Verify::FreeSpace,
            Self::NixosRebuild { .. } | Self::RollbackGeneration { .. } => Verify::Generation,
        }
    }
}

/// How a catalog entry is judged after it ran: its verify probe. Which
/// probe judges which entry is fixed here; reading the host for it is
/// `act`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The probe's own answer is the result (`investigate`).
    Answer,
    /// The unit, watched for `act.settle_time`, must end where it should
    /// be: running, or a run after the failure (`restart_unit`,
    /// `reset_failed`).
    UnitSettles,
    /// Free space where the cleanup works, before and after
    /// (`collect_garbage`, `vacuum_journal`).
    FreeSpace,
    /// The system profile's generations before and after: the expected one
    /// is the boot default, and running for a rollback (`nixos_rebuild`,
    /// `rollback_generation`).
    Generation,
}

/// The helper unit of a root-only catalog entry.
pub fn helper_unit(kind: ActionKind) -> Option<&'static str> {
    match kind {
        ActionKind::CollectGarbage => Some("macha-action-gc.service"),
        ActionKind::VacuumJournal => Some("macha-action-vacuum-journal.service"),
        ActionKind::NixosRebuild => Some("macha-action-rebuild.service"),
        ActionKind::RollbackGeneration => Some("macha-action-rollback.service"),
        _ => None,
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind().as_str(), self.target())
    }
}

/// Why an argument does not fit its catalog entry. The text says which
/// argument and what it should look like; it is shown to people and given
/// back to the model.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{flake:?} is not a flake reference such as \"/etc/nixos#web1\"")]
    NotAFlake { flake: String },
    #[error("{flake:?} contains {c:?}, which a flake reference does not need")]
    FlakeCharacter { flake: String, c: char },
    #[error("{raw:?} is not an absolute path")]
    NotAbsolute { raw: String },
    #[error("the path is too long or contains control characters")]
    UnprintablePath,
    #[error("{raw:?} is not a normalised path (no '.', '..' or '//')")]
    NotNormalised { raw: String },
    #[error("the target is not a unit name: {source}")]
    NotAUnit { source: UnitNameError },
    #[error("{} needs a unit", .0.as_str())]
    NeedsUnit(Probe),
    #[error("disk_usage needs a path")]
    NeedsPath,
}

/// Checks a flake reference as `nixos-rebuild --flake` takes it; it is never
/// passed through a shell, but it must not read as an option either.
pub fn check_flake(flake: &str) -> Result<(), CatalogError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "/._#:+@-=?&~".contains(c);
    if flake.is_empty() || flake.starts_with('-') || flake.len() > 512 {
        return Err(CatalogError::NotAFlake { flake: flake.to_owned() });
    }
    if let Some(c) = flake.chars().find(|c| !ok_char(*c)) {
        return Err(CatalogError::FlakeCharacter { flake: flake.to_owned(), c });
    }
    Ok(())
}

/// Checks a path given to the `disk_usage` probe: absolute, normalised, no
/// `.` or `..` components, printable.
pub fn check_probe_path(raw: &str) -> Result<String, CatalogError> {
    if !raw.starts_with('/') {
        return Err(CatalogError::NotAbsolute { raw: raw.to_owned() });
    }
    if raw.len() > 1024 || raw.chars().any(char::is_control) {
        return Err(CatalogError::UnprintablePath);
    }
    if raw.split('/').skip(1).any(|c| c == "." || c == ".." || (c.is_empty() && raw != "/")) {
        return Err(CatalogError::NotNormalised { raw: raw.to_owned() });
    }
    Ok(raw.to_owned())
}

/// The `investigate` action for `probe`, with its arguments checked: a unit
/// name that parses for the probes that read a unit, a normalised absolute
/// path for `disk_usage`. Arguments a probe does not read are ignored here;
/// the tool calls refuse them before (`decide::tools`). The one rule for
/// proposals and tool calls alike.
pub fn investigation(probe: Probe, unit: Option<&str>, path: Option<&str>) -> Result<Action, CatalogError> {
    let unit = match unit {
        Some(raw) if probe.needs_unit() => {
            Some(UnitName::parse(raw).map_err(|source| CatalogError::NotAUnit { source })?)
        }
        None if probe.needs_unit() => return Err(CatalogError::NeedsUnit(probe)),
        _ => None,
    };
    let path = match path {
        Some(raw) if probe == Probe::DiskUsage => Some(check_probe_path(raw)?),
        None if probe == Probe::DiskUsage => return Err(CatalogError::NeedsPath),
        _ => None,
    };
    Ok(Action::Investigate { probe, unit, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_has_its_verify_probe_and_a_watched_unit_is_named() {
        let unit = || UnitName::parse("web.service").unwrap();
        for (action, probe) in [
            (Action::RestartUnit { unit: unit() }, Verify::UnitSettles),
            (Action::ResetFailed { unit: unit() }, Verify::UnitSettles),
            (Action::CollectGarbage { older_than_days: 14 }, Verify::FreeSpace),
            (Action::VacuumJournal { max_size_mb: 512 }, Verify::FreeSpace),
            (Action::Investigate { probe: Probe::FailedUnits, unit: None, path: None }, Verify::Answer),
            (Action::NixosRebuild { mode: RebuildMode::Switch }, Verify::Generation),
            (Action::RollbackGeneration { generation: None }, Verify::Generation),
        ] {
            assert_eq!(action.verify(), probe, "{action}");
            // act watches the unit an entry names; every such entry names one.
            assert_eq!(probe == Verify::UnitSettles, action.unit().is_some(), "{action}");
            // What changes the system as root goes through a helper and is
            // judged by the host afterwards, never by the helper's word.
            if action.helper_unit().is_some() {
                assert!(matches!(probe, Verify::FreeSpace | Verify::Generation), "{action}");
            }
        }
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in ALL_KINDS {
            assert_eq!(ActionKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
    #[test]
    fn every_root_only_entry_has_a_helper_unit_the_polkit_rule_lets_macha_start() {
        let rule = include_str!("../module/polkit/50-macha-autonomous.rules");
        assert!(rule.contains("macha-action-[a-z0-9]+(-[a-z0-9]+)*\\.service"));
        for kind in [
            ActionKind::CollectGarbage,
            ActionKind::VacuumJournal,
            ActionKind::NixosRebuild,
            ActionKind::RollbackGeneration,
        ] {
            let unit = helper_unit(kind).unwrap();
            assert!(unit.starts_with(HELPER_PREFIX) && unit.ends_with(".service"));
            let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("module/helpers").join(unit);
            assert!(file.exists(), "{} is missing", file.display());
        }
    }
    #[test]
    fn flake_references_are_checked() {
        for good in ["/etc/nixos#web1", "git+file:///etc/nixos?ref=main#web1", "github:me/infra#host"] {
            check_flake(good).unwrap();
        }
        for bad in ["", "--impure", "/etc/nixos#web1 --option sandbox false", "/etc/nixos#$(id)", "/etc/nixos;reboot"] {
            assert!(check_flake(bad).is_err(), "{bad:?}");
        }
    }
}
