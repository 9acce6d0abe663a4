//! The `Decision` type: the only shape of answer macha accepts from the
//! model. Its JSON Schema, generated from these types, is sent as Ollama's
//! `format`, and every answer is parsed and validated back into them.

use serde::{Deserialize, Serialize};

use crate::catalog::{ActionKind, Arg, Probe, RebuildMode, ALL_KINDS};

/// How serious the model judges the incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// `action` as a proposal, for a host that judges it again with its own
    /// gate (`remote`). `None` for what no proposal can name: a rollback to
    /// a numbered generation, which only macha's own undo holds.
    pub fn of(action: &crate::catalog::Action, reason: &str) -> Option<Self> {
        use crate::catalog::Action as A;
        let mut p = ProposedAction::new(action.kind(), None, reason);
        match action {
            A::RestartUnit { unit } | A::ResetFailed { unit } => p.unit = Some(unit.to_string()),
            A::CollectGarbage { older_than_days } => p.older_than_days = Some(*older_than_days),
            A::VacuumJournal { max_size_mb } => p.max_size_mb = Some(*max_size_mb),
            A::Investigate { probe, unit, path } => {
                p.probe = Some(*probe);
                p.unit = unit.as_ref().map(ToString::to_string);
                p.path = path.clone();
            }
            A::NixosRebuild { mode } => p.mode = Some(*mode),
            A::RollbackGeneration { generation: None } => {}
            A::RollbackGeneration { generation: Some(_) } => return None,
        }
        Some(p)
    }

    /// The target of a proposal as the model wrote it, for records and reports:
    /// its unit, or its arguments.
    pub fn target(&self) -> Option<String> {
        if let Some(unit) = self.unit.as_deref().filter(|u| !u.is_empty()) {
            return Some(unit.to_owned());
        }
        let mut parts = Vec::new();
        if let Some(d) = self.older_than_days {
            parts.push(format!("older_than_days={d}"));
        }
        if let Some(m) = self.max_size_mb {
            parts.push(format!("max_size_mb={m}"));
        }
        if let Some(m) = self.mode {
            parts.push(format!("mode={}", m.as_str()));
        }
        if let Some(pr) = self.probe {
            parts.push(format!("probe={}", pr.as_str()));
        }
        if let Some(path) = &self.path {
            parts.push(format!("path={path}"));
        }
        if let Some(file) = &self.file {
            parts.push(format!("file={file}"));
        }
        (!parts.is_empty()).then(|| parts.join(" "))
    }

    /// The proposal that [`target`](Self::target) describes, for the kinds
    /// incident memory replays (a unit restarted or reset, garbage
    /// collected, the journal vacuumed); `None` for any other kind or a
    /// target that does not read back.
    pub fn from_target(kind: ActionKind, target: Option<&str>, reason: &str) -> Option<Self> {
        let target = target?;
        let number = |key: &str| target.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok();
        let mut p = Self::new(kind, None, reason);
        match kind {
            ActionKind::RestartUnit | ActionKind::ResetFailed if !target.contains(char::is_whitespace) => {
                p.unit = Some(target.to_owned());
            }
            ActionKind::CollectGarbage => p.older_than_days = Some(u32::try_from(number("older_than_days")?).ok()?),
            ActionKind::VacuumJournal => p.max_size_mb = Some(number("max_size_mb")?),
            _ => return None,
        }
        (p.target().as_deref() == Some(target)).then_some(p)
    }

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

    /// The arguments that are set (an empty string counts as not set).
    fn args_set(&self) -> Vec<Arg> {
        let non_empty = |s: &Option<String>| s.as_deref().is_some_and(|v| !v.is_empty());
        Arg::ALL
            .into_iter()
            .filter(|arg| match arg {
                Arg::Unit => non_empty(&self.unit),
                Arg::OlderThanDays => self.older_than_days.is_some(),
                Arg::MaxSizeMb => self.max_size_mb.is_some(),
                Arg::Mode => self.mode.is_some(),
                Arg::Probe => self.probe.is_some(),
                Arg::Path => non_empty(&self.path),
                Arg::File => non_empty(&self.file),
                Arg::Diff => non_empty(&self.diff),
            })
            .collect()
    }

    /// The text of a string argument, if it is one and set.
    fn text(&self, arg: Arg) -> Option<&str> {
        match arg {
            Arg::Unit => self.unit.as_deref(),
            Arg::Path => self.path.as_deref(),
            Arg::File => self.file.as_deref(),
            Arg::Diff => self.diff.as_deref(),
            _ => None,
        }
    }

    /// A number argument, if it is one and set.
    fn number(&self, arg: Arg) -> Option<u64> {
        match arg {
            Arg::OlderThanDays => self.older_than_days.map(u64::from),
            Arg::MaxSizeMb => self.max_size_mb,
            _ => None,
        }
    }
}

/// The model's diagnosis of one incident and what it proposes to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
/// Most actions a decision that proposes a configuration change may
/// propose: the change and one more (a `nixos_rebuild` to try it, a probe).
/// A diff is by far the longest thing an answer holds, and a person reviews
/// it as the plan; five of them would not fit the answer's token budget.
pub const MAX_ACTIONS_WITH_CONFIG_CHANGE: usize = 2;

/// Longest diagnosis, in characters: three long sentences.
pub const MAX_DIAGNOSIS_CHARS: usize = 800;
/// Longest reason of an action, in characters: one sentence.
pub const MAX_REASON_CHARS: usize = 200;

/// The longest text of a string argument, in characters: a unit name as
/// systemd bounds it (255: `UNIT_NAME_MAX` less its NUL); a path and a
/// configuration file as macha bounds them; a diff of some 30 lines, what
/// a person reviews as one proposal. With these, the longest answer the
/// schema allows fits `config::MIN_NUM_PREDICT` tokens (a test counts it).
pub fn max_chars(arg: Arg) -> usize {
    match arg {
        Arg::Unit => 255,
        Arg::Path => 512,
        Arg::File => 256,
        Arg::Diff => 1800,
        _ => 0,
    }
}

/// The range of a number argument (`older_than_days`: up to ten years;
/// `max_size_mb`: up to a TiB of journal).
pub fn number_range(arg: Arg) -> std::ops::RangeInclusive<u64> {
    match arg {
        Arg::OlderThanDays => 0..=3650,
        Arg::MaxSizeMb => 0..=1_048_576,
        _ => 0..=0,
    }
}

/// Why an answer of the model was not accepted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidAnswer {
    #[error("the answer is not valid JSON for a decision: {0}")]
    Parse(String),
    #[error("the diagnosis is empty")]
    EmptyDiagnosis,
    #[error("{0} actions proposed; at most {MAX_ACTIONS} are allowed")]
    TooManyActions(usize),
    #[error("{0} actions proposed with a propose_config_change; with one, at most {MAX_ACTIONS_WITH_CONFIG_CHANGE} are allowed")]
    TooManyWithConfigChange(usize),
    #[error("action {index} ({kind}) has no {field}, but needs one")]
    MissingField { index: usize, kind: &'static str, field: &'static str },
    #[error("action {index} ({kind}) carries {field}, which it does not take")]
    UnexpectedField { index: usize, kind: &'static str, field: &'static str },
    #[error("action {index} ({kind}) gives no reason")]
    MissingReason { index: usize, kind: &'static str },
    #[error("{what} is {chars} characters long; at most {max} are allowed")]
    TooLong { what: String, chars: usize, max: usize },
    #[error("action {index} ({kind}): {field} {value} is out of range {min}..={max}")]
    OutOfRange { index: usize, kind: &'static str, field: &'static str, value: u64, min: u64, max: u64 },
}

impl Decision {
    /// The JSON Schema sent as Ollama's `format`: every rule `parse`
    /// checks, stated so that a constrained decoder keeps a model inside
    /// them (one shape per catalog entry with exactly its arguments, closed
    /// sets as enums, every string and list bounded). It keeps to what
    /// llama.cpp's converter of schemas to grammars supports (Ollama's
    /// `format` goes through it): no `$ref`, `anyOf` of objects, `const`,
    /// `enum`, `minLength`/`maxLength`, `minimum`/`maximum`, `maxItems`,
    /// and patterns anchored at both ends.
    pub fn json_schema() -> serde_json::Value {
        serde_json::json!({
            "type": "object",
            "properties": {
                "diagnosis": prose("What is wrong and why, in one to three sentences.", MAX_DIAGNOSIS_CHARS),
                "severity": { "enum": [Severity::Info, Severity::Warning, Severity::Critical] },
                "actions": {
                    "description": "Proposed actions in order; empty when nothing should be done. With a propose_config_change, at most 2.",
                    "anyOf": [
                        {
                            "type": "array",
                            "maxItems": MAX_ACTIONS,
                            "items": { "anyOf": action_variants(|kind| kind != ActionKind::ProposeConfigChange) },
                        },
                        {
                            "type": "array",
                            "maxItems": MAX_ACTIONS_WITH_CONFIG_CHANGE,
                            "items": { "anyOf": action_variants(|_| true) },
                        },
                    ],
                },
            },
            "required": ["diagnosis", "severity", "actions"],
            "additionalProperties": false,
        })
    }

    /// Parses and validates the text the model returned.
    pub fn parse(text: &str) -> Result<Decision, InvalidAnswer> {
        let mut d: Decision = serde_json::from_str(text.trim()).map_err(|e| InvalidAnswer::Parse(e.to_string()))?;
        d.validate()?;
        // The same action proposed twice (small models repeat themselves)
        // is one proposal: the first, with its reason.
        let mut kept: Vec<ProposedAction> = Vec::new();
        d.actions.retain(|a| {
            let same = ProposedAction { reason: String::new(), ..a.clone() };
            let repeated = kept.contains(&same);
            kept.push(same);
            !repeated
        });
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
        if is_blank(&self.diagnosis) {
            return Err(InvalidAnswer::EmptyDiagnosis);
        }
        within("the diagnosis", &self.diagnosis, MAX_DIAGNOSIS_CHARS)?;
        if self.actions.len() > MAX_ACTIONS {
            return Err(InvalidAnswer::TooManyActions(self.actions.len()));
        }
        let config_change = self.actions.iter().any(|a| a.kind == ActionKind::ProposeConfigChange);
        if config_change && self.actions.len() > MAX_ACTIONS_WITH_CONFIG_CHANGE {
            return Err(InvalidAnswer::TooManyWithConfigChange(self.actions.len()));
        }
        for (index, a) in self.actions.iter().enumerate() {
            let kind = a.kind.as_str();
            let (set, required) = (a.args_set(), a.kind.args(a.probe));
            if let Some(arg) = required.iter().find(|arg| !set.contains(arg)) {
                return Err(InvalidAnswer::MissingField { index, kind, field: arg.as_str() });
            }
            if let Some(arg) = set.iter().find(|arg| !required.contains(arg)) {
                return Err(InvalidAnswer::UnexpectedField { index, kind, field: arg.as_str() });
            }
            if is_blank(&a.reason) {
                return Err(InvalidAnswer::MissingReason { index, kind });
            }
            within(&format!("action {index}'s reason"), &a.reason, MAX_REASON_CHARS)?;
            for &arg in required {
                if let Some(text) = a.text(arg) {
                    within(&format!("action {index}'s {}", arg.as_str()), text, max_chars(arg))?;
                }
                if let Some(value) = a.number(arg) {
                    let range = number_range(arg);
                    if !range.contains(&value) {
                        let (min, max) = (*range.start(), *range.end());
                        return Err(InvalidAnswer::OutOfRange { index, kind, field: arg.as_str(), value, min, max });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Blank: nothing but ASCII white space, the only white space the schema's
/// patterns keep out of a text's first character.
fn is_blank(text: &str) -> bool {
    text.trim_matches([' ', '\t', '\r', '\n']).is_empty()
}

fn within(what: &str, text: &str, max: usize) -> Result<(), InvalidAnswer> {
    let chars = text.chars().count();
    if chars > max {
        return Err(InvalidAnswer::TooLong { what: what.to_owned(), chars, max });
    }
    Ok(())
}

/// A string of 1 to `max` characters on one line, starting with a
/// character that is not white space, without `"` or `\\`: the pattern says
/// it (with the escapes llama.cpp's converter of schemas to grammars
/// knows), because a pattern takes the place of `minLength` and
/// `maxLength` there. llama.cpp matches a pattern against the string's raw
/// JSON text, not its value: a `"` it allowed would end the string there
/// and let the model write fields of its own after it (`"reason": "x",
/// "state": "..."`), and a `\\` would begin an escape the pattern does not
/// know. Without both, the raw text and the value are the same. The
/// parser still takes quotes from a model that is not held to the schema.
fn prose(description: &str, max: usize) -> serde_json::Value {
    serde_json::json!({
        "type": "string",
        "description": description,
        "pattern": format!("^[^ \\t\\r\\n\"\\\\][^\\r\\n\"\\\\]{{0,{}}}$", max - 1),
    })
}

/// The schema of one argument.
fn arg_schema(arg: Arg, probe: Option<Probe>) -> serde_json::Value {
    use serde_json::json;
    let text = |description: &str| json!({ "type": "string", "description": description, "minLength": 1, "maxLength": max_chars(arg) });
    let number = |description: &str| {
        let range = number_range(arg);
        json!({ "type": "integer", "description": description, "minimum": range.start(), "maximum": range.end() })
    };
    match arg {
        Arg::Unit => text("The systemd unit, for example `nginx.service`."),
        Arg::Path => text("An absolute path."),
        Arg::File => text("The file, relative to the configuration directory, for example `hosts/web.nix`."),
        Arg::Diff => text("The change as a unified diff of `file`."),
        Arg::OlderThanDays => number("Delete generations older than this many days."),
        Arg::MaxSizeMb => number("The size, in MiB, to shrink archived journal files to."),
        Arg::Mode => json!({ "enum": RebuildMode::ALL.map(RebuildMode::as_str) }),
        Arg::Probe => json!({ "const": probe.map(Probe::as_str) }),
    }
}

/// The schema of an action of `kind` (with `probe`, for `investigate`):
/// exactly its arguments, each required.
fn action_schema(kind: ActionKind, probe: Option<Probe>) -> serde_json::Value {
    let mut properties = serde_json::Map::new();
    properties.insert("kind".into(), serde_json::json!({ "const": kind.as_str() }));
    let args = kind.args(probe);
    for &arg in args {
        properties.insert(arg.as_str().into(), arg_schema(arg, probe));
    }
    properties.insert("reason".into(), prose("Why this action helps, in one sentence.", MAX_REASON_CHARS));
    let required: Vec<&str> = ["kind"].into_iter().chain(args.iter().map(|a| a.as_str())).chain(["reason"]).collect();
    serde_json::json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// Every shape an action of the kinds `keep` keeps may take: one per
/// catalog entry, and one per probe for `investigate`.
fn action_variants(keep: impl Fn(ActionKind) -> bool) -> Vec<serde_json::Value> {
    let mut variants = Vec::new();
    for kind in ALL_KINDS.into_iter().filter(|&k| keep(k)) {
        if kind == ActionKind::Investigate {
            variants.extend(Probe::ALL.map(|p| action_schema(kind, Some(p))));
        } else {
            variants.push(action_schema(kind, None));
        }
    }
    variants
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::tokens::estimate_tokens;

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
    fn the_same_action_proposed_twice_is_one_proposal() {
        let d = Decision::parse(
            r#"{"diagnosis":"web died","severity":"warning","actions":[
                {"kind":"restart_unit","unit":"web.service","reason":"it failed"},
                {"kind":"restart_unit","unit":"web.service","reason":"it failed, really"},
                {"kind":"restart_unit","unit":"api.service","reason":"it failed too"},
                {"kind":"restart_unit","unit":"web.service","reason":"again"}]}"#,
        )
        .unwrap();
        let units: Vec<_> = d.actions.iter().map(|a| (a.unit.as_deref(), a.reason.as_str())).collect();
        assert_eq!(units, [(Some("web.service"), "it failed"), (Some("api.service"), "it failed too")]);
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

    /// A small deterministic generator of the instances a schema allows,
    /// for the keywords `json_schema` uses.
    struct Gen(u64);

    /// Characters strings are made of: letters, white space, quotes,
    /// backslashes, line breaks, and characters outside ASCII.
    const POOL: &[char] =
        &['a', 'Z', '0', ' ', '\t', '\n', '\r', '"', '\\', '/', '.', 'é', '\u{a0}', '\u{2028}', '🦀', '\u{0}'];

    impl Gen {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n.max(1)
        }

        /// A length in `min..=max`, often one of the bounds.
        fn len(&mut self, min: u64, max: u64) -> u64 {
            match self.below(4) {
                0 => min,
                1 => max,
                _ => min + self.below(max - min + 1),
            }
        }

        fn chars(&mut self, n: u64, allowed: impl Fn(char) -> bool) -> String {
            let pool: Vec<char> = POOL.iter().copied().filter(|&c| allowed(c)).collect();
            (0..n).map(|_| pool[self.below(pool.len() as u64) as usize]).collect()
        }

        fn instance(&mut self, schema: &Value) -> Value {
            if let Some(c) = schema.get("const") {
                return c.clone();
            }
            if let Some(e) = schema["enum"].as_array() {
                return e[self.below(e.len() as u64) as usize].clone();
            }
            if let Some(variants) = schema["anyOf"].as_array() {
                let v = &variants[self.below(variants.len() as u64) as usize];
                return self.instance(v);
            }
            let bound = |key: &str| schema[key].as_u64();
            match schema["type"].as_str() {
                Some("object") => {
                    let props = schema["properties"].as_object().unwrap();
                    Value::Object(props.iter().map(|(k, v)| (k.clone(), self.instance(v))).collect())
                }
                Some("array") => {
                    let n = self.len(bound("minItems").unwrap_or(0), bound("maxItems").unwrap());
                    Value::Array((0..n).map(|_| self.instance(&schema["items"])).collect())
                }
                Some("integer") => Value::from(self.len(bound("minimum").unwrap(), bound("maximum").unwrap())),
                Some("string") => match schema["pattern"].as_str() {
                    // `^[^ \t\r\n"\\][^\r\n"\\]{0,N}$`
                    Some(_) => {
                        let first = self.chars(1, |c| !matches!(c, ' ' | '\t' | '\r' | '\n' | '"' | '\\'));
                        let n = self.len(0, longest_string(schema) - 1);
                        Value::from(first + &self.chars(n, |c| !matches!(c, '\r' | '\n' | '"' | '\\')))
                    }
                    None => {
                        let n = self.len(bound("minLength").unwrap(), longest_string(schema));
                        Value::from(self.chars(n, |_| true))
                    }
                },
                other => panic!("the generator does not know {other:?}: {schema}"),
            }
        }
    }

    use serde_json::{json, Value};

    /// The most characters a string schema allows: its `maxLength`, or the
    /// bound of its pattern `^[^ \t\r\n"\\][^\r\n"\\]{0,N}$` plus the first.
    fn longest_string(schema: &Value) -> u64 {
        match schema["pattern"].as_str() {
            Some(p) => 1 + p.rsplit_once(',').unwrap().1.trim_end_matches("}$").parse::<u64>().unwrap(),
            None => schema["maxLength"].as_u64().unwrap(),
        }
    }

    /// The longest instance of `schema`: every list at its most items, every
    /// string at its most characters of [`FILL`], the alternative that costs
    /// the most tokens.
    fn longest(schema: &Value) -> Value {
        let tokens = |v: &Value| estimate_tokens(&serde_json::to_string_pretty(v).unwrap());
        if let Some(c) = schema.get("const") {
            return c.clone();
        }
        if let Some(e) = schema["enum"].as_array() {
            return e.iter().max_by_key(|v| tokens(v)).unwrap().clone();
        }
        if let Some(variants) = schema["anyOf"].as_array() {
            return variants.iter().map(longest).max_by_key(tokens).unwrap();
        }
        match schema["type"].as_str() {
            Some("object") => {
                let props = schema["properties"].as_object().unwrap();
                Value::Object(props.iter().map(|(k, v)| (k.clone(), longest(v))).collect())
            }
            Some("array") => {
                Value::Array(vec![longest(&schema["items"]); schema["maxItems"].as_u64().unwrap() as usize])
            }
            Some("integer") => schema["maximum"].clone(),
            Some("string") => {
                Value::from(FILL.chars().cycle().take(longest_string(schema) as usize).collect::<String>())
            }
            other => panic!("no longest instance of {other:?}: {schema}"),
        }
    }

    /// What fills a string at its longest, for counting tokens: Nix code as
    /// a diff holds it, denser in tokens than prose (symbols, quotes that
    /// JSON escapes, numbers, short words).
    const FILL: &str =
        "+  services.nginx.virtualHosts.\"example.org\".listen = [ { addr = \"0.0.0.0\"; port = 8080; } ]; ";

    #[test]
    fn prose_in_the_schema_has_no_quote_that_could_end_its_string() {
        // llama.cpp matches a pattern against the raw JSON text: a `"` there
        // would end the string, and the model could write fields after it.
        let smuggled = json!({"diagnosis": "web died", "severity": "info",
            "actions": [{"kind": "notify_only", "reason": "x\", \"state\": \"failed"}]});
        assert!(!validator().is_valid(&smuggled), "the schema keeps quotes out of prose");
        let backslash = json!({"diagnosis": "C:\\dir", "severity": "info", "actions": []});
        assert!(!validator().is_valid(&backslash), "and backslashes");
        // A model that is not held to the schema may quote: that is no reason to refuse it.
        let quoted = r#"{"diagnosis": "the unit \"web\" died", "severity": "info", "actions": []}"#;
        assert!(Decision::parse(quoted).is_ok());
    }

    #[test]
    fn the_longest_answer_fits_the_smallest_num_predict() {
        let answer = serde_json::to_string_pretty(&longest(&Decision::json_schema())).unwrap();
        assert!(Decision::parse(&answer).is_ok(), "the longest answer is a valid one: {answer}");
        let tokens = estimate_tokens(&answer);
        eprintln!("the longest answer: {} characters, {tokens} tokens", answer.chars().count());
        assert!(
            tokens <= crate::config::MIN_NUM_PREDICT as usize,
            "the longest answer ({tokens} tokens) does not fit `ollama.num_predict` {}",
            crate::config::MIN_NUM_PREDICT
        );
    }

    fn validator() -> jsonschema::Validator {
        jsonschema::validator_for(&Decision::json_schema()).expect("the schema compiles")
    }

    #[test]
    fn the_parser_accepts_everything_the_schema_allows() {
        let (schema, validator) = (Decision::json_schema(), validator());
        let mut gen = Gen(0x6d61_6368_6120);
        let mut shapes = std::collections::BTreeSet::new();
        for _ in 0..5000 {
            let answer = gen.instance(&schema);
            assert!(validator.is_valid(&answer), "the generator left the schema: {answer}");
            for a in answer["actions"].as_array().unwrap() {
                shapes.insert((a["kind"].to_string(), a.get("probe").map(Value::to_string)));
            }
            if let Err(e) = Decision::parse(&answer.to_string()) {
                panic!("the schema allows what the parser refuses ({e}): {answer}");
            }
        }
        assert_eq!(shapes.len(), ALL_KINDS.len() - 1 + Probe::ALL.len(), "every shape was tried: {shapes:?}");
    }

    #[test]
    fn the_schema_refuses_what_the_parser_refuses() {
        let validator = validator();
        let decision = |actions: Value| json!({"diagnosis": "web died", "severity": "warning", "actions": actions});
        let one = |action: Value| decision(json!([action]));
        let restart = json!({"kind": "restart_unit", "unit": "web.service", "reason": "it failed"});
        let long = |n: usize| "x".repeat(n);
        let cases = [
            json!({"diagnosis": " ", "severity": "info", "actions": []}),
            json!({"diagnosis": "", "severity": "info", "actions": []}),
            json!({"diagnosis": long(MAX_DIAGNOSIS_CHARS + 1), "severity": "info", "actions": []}),
            json!({"diagnosis": "x", "severity": "fine", "actions": []}),
            json!({"diagnosis": "x", "severity": "info", "actions": [], "autonomy": "auto-full"}),
            json!({"diagnosis": "x", "severity": "info"}),
            decision(json!(vec![restart.clone(); MAX_ACTIONS + 1])),
            one(json!({"kind": "run_shell", "unit": "a.service", "reason": "r"})),
            one(json!({"kind": "restart_unit", "reason": "r"})),
            one(json!({"kind": "restart_unit", "unit": "", "reason": "r"})),
            one(json!({"kind": "restart_unit", "unit": long(256), "reason": "r"})),
            one(json!({"kind": "restart_unit", "unit": "a.service", "reason": " \t"})),
            one(json!({"kind": "restart_unit", "unit": "a.service", "reason": long(MAX_REASON_CHARS + 1)})),
            one(json!({"kind": "restart_unit", "unit": "a.service", "reason": "r", "mode": "switch"})),
            one(json!({"kind": "notify_only", "unit": "a.service", "reason": "r"})),
            one(json!({"kind": "collect_garbage", "reason": "r"})),
            one(json!({"kind": "collect_garbage", "older_than_days": 3651, "reason": "r"})),
            one(json!({"kind": "collect_garbage", "older_than_days": -1, "reason": "r"})),
            one(json!({"kind": "collect_garbage", "older_than_days": "14d; rm -rf /", "reason": "r"})),
            one(json!({"kind": "vacuum_journal", "max_size_mb": 1_048_577, "reason": "r"})),
            one(json!({"kind": "nixos_rebuild", "mode": "switch --flake /tmp/evil#x", "reason": "r"})),
            one(json!({"kind": "investigate", "reason": "r"})),
            one(json!({"kind": "investigate", "probe": "shell", "reason": "r"})),
            one(json!({"kind": "investigate", "probe": "unit_logs", "reason": "r"})),
            one(json!({"kind": "investigate", "probe": "disk_usage", "reason": "r"})),
            one(json!({"kind": "investigate", "probe": "generations", "path": "/", "reason": "r"})),
            one(json!({"kind": "investigate", "probe": "disk_usage", "path": long(513), "reason": "r"})),
            one(json!({"kind": "propose_config_change", "file": "a.nix", "reason": "r"})),
            decision(json!([
                {"kind": "propose_config_change", "file": "a.nix", "diff": "-a\n+b", "reason": "r"},
                {"kind": "nixos_rebuild", "mode": "test", "reason": "r"},
                restart.clone(),
            ])),
            one(json!({"kind": "propose_config_change", "file": "a.nix", "diff": long(1801), "reason": "r"})),
        ];
        for answer in cases {
            assert!(Decision::parse(&answer.to_string()).is_err(), "the parser accepts {answer}");
            assert!(!validator.is_valid(&answer), "the schema allows what the parser refuses: {answer}");
        }
    }

    #[test]
    fn the_schema_keeps_to_what_grammar_converters_support() {
        fn walk(v: &Value, path: &str) {
            const KNOWN: [&str; 15] = [
                "type",
                "properties",
                "required",
                "additionalProperties",
                "items",
                "anyOf",
                "const",
                "enum",
                "description",
                "minLength",
                "maxLength",
                "minimum",
                "maximum",
                "maxItems",
                "pattern",
            ];
            match v {
                Value::Object(m) => {
                    for (k, child) in m {
                        if path.ends_with("/properties") {
                            walk(child, &format!("{path}/{k}"));
                            continue;
                        }
                        assert!(KNOWN.contains(&k.as_str()), "{path}: keyword {k}");
                        if k == "pattern" {
                            let p = child.as_str().unwrap();
                            assert!(p.starts_with('^') && p.ends_with('$'), "{path}: {p}");
                        }
                        walk(child, &format!("{path}/{k}"));
                    }
                }
                Value::Array(items) => items.iter().for_each(|i| walk(i, path)),
                _ => {}
            }
        }
        walk(&Decision::json_schema(), "");
    }
}
