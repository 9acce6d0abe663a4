//! The `Decision` type: the only shape of answer macha accepts from the
//! model. Its JSON Schema, generated from these types, is sent as Ollama's
//! `format`, and every answer is parsed and validated back into them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::{ActionKind, Probe, RebuildMode};

/// How serious the model judges the incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// One proposed action, exactly as the model wrote it. `unit` stays a plain
/// string here: whether it names a real, unprotected unit is the gate's
/// question, and a refusal is recorded with the reason. Which of the other
/// fields an action takes depends on its kind; a field it does not take is
/// an invalid answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposedAction {
    pub kind: ActionKind,
    /// The systemd unit the action applies to, for example `nginx.service`.
    pub unit: Option<String>,
    /// Why this action helps, in one sentence.
    pub reason: String,
    /// For `collect_garbage`: delete generations older than this many days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than_days: Option<u32>,
    /// For `vacuum_journal`: the size, in MiB, to shrink archived journal files to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size_mb: Option<u64>,
    /// For `nixos_rebuild`: `dry-build`, `test`, `switch` or `boot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RebuildMode>,
    /// For `investigate`: which probe to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
    /// For `investigate` with `disk_usage`: an absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// For `propose_config_change`: the file, relative to the configuration
    /// directory, for example `hosts/web.nix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// For `propose_config_change`: the change as a unified diff of `file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

impl ProposedAction {
    /// An action with only a kind, a unit and a reason.
    pub fn new(kind: ActionKind, unit: Option<&str>, reason: &str) -> Self {
        Self {
            kind,
            unit: unit.map(str::to_owned),
            reason: reason.into(),
            older_than_days: None,
            max_size_mb: None,
            mode: None,
            probe: None,
            path: None,
            file: None,
            diff: None,
        }
    }

    /// The optional fields that are set, by name.
    fn fields_set(&self) -> Vec<&'static str> {
        let non_empty = |s: &Option<String>| s.as_deref().is_some_and(|v| !v.is_empty());
        let mut set = Vec::new();
        if non_empty(&self.unit) {
            set.push("unit");
        }
        if self.older_than_days.is_some() {
            set.push("older_than_days");
        }
        if self.max_size_mb.is_some() {
            set.push("max_size_mb");
        }
        if self.mode.is_some() {
            set.push("mode");
        }
        if self.probe.is_some() {
            set.push("probe");
        }
        if non_empty(&self.path) {
            set.push("path");
        }
        if non_empty(&self.file) {
            set.push("file");
        }
        if non_empty(&self.diff) {
            set.push("diff");
        }
        set
    }

    /// The fields this action must carry, given its kind (and probe).
    fn fields_required(&self) -> Vec<&'static str> {
        match self.kind {
            ActionKind::RestartUnit | ActionKind::ResetFailed => vec!["unit"],
            ActionKind::CollectGarbage => vec!["older_than_days"],
            ActionKind::VacuumJournal => vec!["max_size_mb"],
            ActionKind::NixosRebuild => vec!["mode"],
            ActionKind::Investigate => match self.probe {
                Some(p) if p.needs_unit() => vec!["probe", "unit"],
                Some(Probe::DiskUsage) => vec!["probe", "path"],
                _ => vec!["probe"],
            },
            ActionKind::ProposeConfigChange => vec!["file", "diff"],
            ActionKind::RollbackGeneration | ActionKind::NotifyOnly => vec![],
        }
    }
}

/// The model's diagnosis of one incident and what it proposes to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// What is wrong and why, in one to three sentences.
    pub diagnosis: String,
    pub severity: Severity,
    /// Proposed actions in order; empty when nothing should be done.
    pub actions: Vec<ProposedAction>,
}

/// Most actions a single decision may propose.
pub const MAX_ACTIONS: usize = 5;

/// Why an answer of the model was not accepted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidAnswer {
    #[error("the answer is not valid JSON for a decision: {0}")]
    Parse(String),
    #[error("the diagnosis is empty")]
    EmptyDiagnosis,
    #[error("{0} actions proposed; at most {MAX_ACTIONS} are allowed")]
    TooManyActions(usize),
    #[error("action {index} ({kind}) has no {field}, but needs one")]
    MissingField { index: usize, kind: &'static str, field: &'static str },
    #[error("action {index} ({kind}) carries {field}, which it does not take")]
    UnexpectedField { index: usize, kind: &'static str, field: &'static str },
    #[error("action {index} ({kind}) gives no reason")]
    MissingReason { index: usize, kind: &'static str },
}

impl Decision {
    /// The JSON Schema sent as Ollama's `format`.
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Decision)).expect("a schema serialises")
    }

    /// Parses and validates the text the model returned.
    pub fn parse(text: &str) -> Result<Decision, InvalidAnswer> {
        let mut d: Decision = serde_json::from_str(text.trim()).map_err(|e| InvalidAnswer::Parse(e.to_string()))?;
        d.validate()?;
        // The model may repeat a secret it read in its prose; its prose goes
        // to the audit, approvals and notifications, so it loses them here.
        // Targets, arguments and diffs stay as written: the gate judges them.
        d.diagnosis = crate::redact::redact(&d.diagnosis).into_owned();
        for a in &mut d.actions {
            a.reason = crate::redact::redact(&a.reason).into_owned();
        }
        Ok(d)
    }

    fn validate(&self) -> Result<(), InvalidAnswer> {
        if self.diagnosis.trim().is_empty() {
            return Err(InvalidAnswer::EmptyDiagnosis);
        }
        if self.actions.len() > MAX_ACTIONS {
            return Err(InvalidAnswer::TooManyActions(self.actions.len()));
        }
        for (index, a) in self.actions.iter().enumerate() {
            let kind = a.kind.as_str();
            let (set, required) = (a.fields_set(), a.fields_required());
            if let Some(field) = required.iter().find(|f| !set.contains(f)) {
                return Err(InvalidAnswer::MissingField { index, kind, field });
            }
            if let Some(field) = set.iter().find(|f| !required.contains(f)) {
                return Err(InvalidAnswer::UnexpectedField { index, kind, field });
            }
            if a.reason.trim().is_empty() {
                return Err(InvalidAnswer::MissingReason { index, kind });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_an_object_schema_naming_every_field_and_kind() {
        let s = Decision::json_schema();
        assert_eq!(s["type"], "object");
        let text = s.to_string();
        for needle in
            ["diagnosis", "severity", "actions", "restart_unit", "reset_failed", "notify_only", "additionalProperties"]
        {
            assert!(text.contains(needle), "schema lacks {needle}: {text}");
        }
    }

    #[test]
    fn a_well_formed_answer_parses() {
        let d = Decision::parse(
            r#"{"diagnosis":"web died","severity":"warning","actions":[{"kind":"restart_unit","unit":"web.service","reason":"it failed"}]}"#,
        )
        .unwrap();
        assert_eq!(d.actions[0].kind, ActionKind::RestartUnit);
    }

    #[test]
    fn prose_unknown_kinds_and_extra_fields_are_invalid() {
        for bad in [
            "Sure! The system looks healthy.",
            r#"{"diagnosis":"x","severity":"warning","actions":[{"kind":"run_shell","unit":"a.service","reason":"r"}]}"#,
            r#"{"diagnosis":"x","severity":"warning","actions":[],"autonomy":"auto-full"}"#,
            r#"{"diagnosis":"x","severity":"fine","actions":[]}"#,
            r#"{"status":"healthy"}"#,
        ] {
            assert!(matches!(Decision::parse(bad), Err(InvalidAnswer::Parse(_))), "{bad}");
        }
    }

    #[test]
    fn semantic_rules_are_checked() {
        let restart_without_unit =
            r#"{"diagnosis":"x","severity":"info","actions":[{"kind":"restart_unit","unit":null,"reason":"r"}]}"#;
        assert_eq!(
            Decision::parse(restart_without_unit),
            Err(InvalidAnswer::MissingField { index: 0, kind: "restart_unit", field: "unit" })
        );
        let notify_with_unit =
            r#"{"diagnosis":"x","severity":"info","actions":[{"kind":"notify_only","unit":"a.service","reason":"r"}]}"#;
        assert!(matches!(Decision::parse(notify_with_unit), Err(InvalidAnswer::UnexpectedField { field: "unit", .. })));
        assert_eq!(
            Decision::parse(r#"{"diagnosis":" ","severity":"info","actions":[]}"#),
            Err(InvalidAnswer::EmptyDiagnosis)
        );
    }

    fn one(action: &str) -> Result<Decision, InvalidAnswer> {
        Decision::parse(&format!(r#"{{"diagnosis":"x","severity":"info","actions":[{action}]}}"#))
    }

    #[test]
    fn every_kind_takes_exactly_its_own_fields() {
        let good = [
            r#"{"kind":"collect_garbage","unit":null,"reason":"r","older_than_days":14}"#,
            r#"{"kind":"vacuum_journal","unit":null,"reason":"r","max_size_mb":512}"#,
            r#"{"kind":"nixos_rebuild","unit":null,"reason":"r","mode":"dry-build"}"#,
            r#"{"kind":"rollback_generation","unit":null,"reason":"r"}"#,
            r#"{"kind":"investigate","unit":"web.service","reason":"r","probe":"unit_logs"}"#,
            r#"{"kind":"investigate","unit":null,"reason":"r","probe":"disk_usage","path":"/var"}"#,
            r#"{"kind":"investigate","unit":null,"reason":"r","probe":"generations"}"#,
        ];
        for a in good {
            one(a).unwrap_or_else(|e| panic!("{a}: {e}"));
        }
        let bad = [
            (r#"{"kind":"collect_garbage","unit":null,"reason":"r"}"#, "has no older_than_days"),
            (r#"{"kind":"collect_garbage","unit":"nix-gc.service","reason":"r","older_than_days":1}"#, "carries unit"),
            (r#"{"kind":"vacuum_journal","unit":null,"reason":"r","older_than_days":3}"#, "has no max_size_mb"),
            (r#"{"kind":"nixos_rebuild","unit":null,"reason":"r"}"#, "has no mode"),
            (r#"{"kind":"restart_unit","unit":"a.service","reason":"r","mode":"switch"}"#, "carries mode"),
            (
                r#"{"kind":"rollback_generation","unit":null,"reason":"r","older_than_days":1}"#,
                "carries older_than_days",
            ),
            (r#"{"kind":"investigate","unit":null,"reason":"r","probe":"unit_logs"}"#, "has no unit"),
            (r#"{"kind":"investigate","unit":null,"reason":"r","probe":"disk_usage"}"#, "has no path"),
            (r#"{"kind":"investigate","unit":null,"reason":"r","probe":"generations","path":"/"}"#, "carries path"),
            (r#"{"kind":"investigate","unit":null,"reason":"r"}"#, "has no probe"),
            (r#"{"kind":"notify_only","unit":null,"reason":"r","file":"a.nix"}"#, "carries file"),
        ];
        for (a, want) in bad {
            let e = one(a).expect_err(a).to_string();
            assert!(e.contains(want), "{a}: {e}");
        }
        for a in [
            r#"{"kind":"nixos_rebuild","unit":null,"reason":"r","mode":"switch --flake /tmp/evil#x"}"#,
            r#"{"kind":"investigate","unit":null,"reason":"r","probe":"shell"}"#,
            r#"{"kind":"collect_garbage","unit":null,"reason":"r","older_than_days":-1}"#,
            r#"{"kind":"collect_garbage","unit":null,"reason":"r","older_than_days":"14d; rm -rf /"}"#,
        ] {
            assert!(matches!(one(a), Err(InvalidAnswer::Parse(_))), "{a}");
        }
    }
}
