//! The `Decision` type: the only shape of answer macha accepts from the
//! model. Its JSON Schema, generated from these types, is sent as Ollama's
//! `format`, and every answer is parsed and validated back into them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How serious the model judges the incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// The catalog entries a decision may propose. Anything else fails to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Restart a failed unit (`unit` required).
    RestartUnit,
    /// Clear a unit's failed state without starting it (`unit` required).
    ResetFailed,
    /// Nothing to carry out: a human should look (`unit` must be null).
    NotifyOnly,
    /// Propose a change to a file of the NixOS configuration as a unified
    /// diff (`file` and `diff` required, `unit` null). Written for a human
    /// to review; never applied by macha.
    ProposeConfigChange,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RestartUnit => "restart_unit",
            Self::ResetFailed => "reset_failed",
            Self::NotifyOnly => "notify_only",
            Self::ProposeConfigChange => "propose_config_change",
        }
    }

    pub fn needs_unit(self) -> bool {
        matches!(self, Self::RestartUnit | Self::ResetFailed)
    }
}

/// One proposed action, exactly as the model wrote it. `unit` stays a plain
/// string here: whether it names a real, unprotected unit is the gate's
/// question, and a refusal is recorded with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposedAction {
    pub kind: ActionKind,
    /// The systemd unit the action applies to, for example `nginx.service`.
    pub unit: Option<String>,
    /// Why this action helps, in one sentence.
    pub reason: String,
    /// For `propose_config_change`: the file, relative to the configuration
    /// directory, for example `hosts/web.nix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// For `propose_config_change`: the change as a unified diff of `file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
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
    #[error("action {index} ({kind}) has no unit, but needs one")]
    MissingUnit { index: usize, kind: &'static str },
    #[error("action {index} ({kind}) names a unit, but takes none")]
    UnexpectedUnit { index: usize, kind: &'static str },
    #[error("action {index} ({kind}) needs both `file` and `diff`")]
    MissingChange { index: usize, kind: &'static str },
    #[error("action {index} ({kind}) carries `file` or `diff`, which only propose_config_change takes")]
    UnexpectedChange { index: usize, kind: &'static str },
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
        let d: Decision = serde_json::from_str(text.trim()).map_err(|e| InvalidAnswer::Parse(e.to_string()))?;
        d.validate()?;
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
            let has_unit = a.unit.as_deref().is_some_and(|u| !u.is_empty());
            if a.kind.needs_unit() && !has_unit {
                return Err(InvalidAnswer::MissingUnit { index, kind });
            }
            if !a.kind.needs_unit() && has_unit {
                return Err(InvalidAnswer::UnexpectedUnit { index, kind });
            }
            let has_change =
                a.file.as_deref().is_some_and(|f| !f.is_empty()) && a.diff.as_deref().is_some_and(|d| !d.is_empty());
            match a.kind {
                ActionKind::ProposeConfigChange if !has_change => {
                    return Err(InvalidAnswer::MissingChange { index, kind })
                }
                ActionKind::ProposeConfigChange => {}
                _ if a.file.is_some() || a.diff.is_some() => {
                    return Err(InvalidAnswer::UnexpectedChange { index, kind })
                }
                _ => {}
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
            Err(InvalidAnswer::MissingUnit { index: 0, kind: "restart_unit" })
        );
        let notify_with_unit =
            r#"{"diagnosis":"x","severity":"info","actions":[{"kind":"notify_only","unit":"a.service","reason":"r"}]}"#;
        assert!(matches!(Decision::parse(notify_with_unit), Err(InvalidAnswer::UnexpectedUnit { .. })));
        assert_eq!(
            Decision::parse(r#"{"diagnosis":" ","severity":"info","actions":[]}"#),
            Err(InvalidAnswer::EmptyDiagnosis)
        );
    }
}
