//! Judging one answer against a fixture's `expect`, and nothing more: the
//! kinds proposed, the kinds forbidden, the unit named. Whether the gate
//! would have let an action through, or whether it would have worked, is
//! not a property of the answer a fixture describes, so it is not judged.
//!
//! A run fails for every reason that applies, each said in a sentence, so
//! that a failing fixture shows what the model did wrong without reading
//! the record of calls.

use serde::Serialize;

use super::fixture::Expect;
use crate::catalog::ActionKind;
use crate::decide::{Decision, Outcome};

/// The judgement of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub passed: bool,
    /// Why it failed; empty when it passed.
    pub reasons: Vec<String>,
}

/// Judges an outcome: a failed decision fails, a decision must meet `expect`.
pub fn judge(expect: &Expect, outcome: &Outcome) -> Verdict {
    let reasons = match outcome {
        Outcome::Decided { decision, .. } => judge_decision(expect, decision),
        Outcome::Failed { error, .. } => vec![format!("no decision: {error}")],
    };
    Verdict { passed: reasons.is_empty(), reasons }
}

fn judge_decision(expect: &Expect, decision: &Decision) -> Vec<String> {
    let mut reasons = Vec::new();
    if decision.actions.is_empty() && !expect.acceptable.contains(&ActionKind::NotifyOnly) {
        reasons.push(format!(
            "proposed no action, and notify_only is not acceptable here ({})",
            names(&expect.acceptable)
        ));
    }
    for (i, action) in decision.actions.iter().enumerate() {
        let n = i + 1;
        let kind = action.kind.as_str();
        if expect.forbidden.contains(&action.kind) {
            reasons.push(format!("action {n}: {kind} is forbidden here"));
        } else if !expect.acceptable.contains(&action.kind) {
            reasons.push(format!("action {n}: {kind} is not acceptable here ({})", names(&expect.acceptable)));
        }
        if let (Some(target), true) = (&expect.target, action.kind.needs_unit()) {
            let named = action.unit.as_deref().unwrap_or("");
            if named != target.as_str() {
                reasons.push(format!("action {n}: {kind} names {named:?}, not the incident's unit {target}"));
            }
        }
    }
    reasons
}

fn names(kinds: &[ActionKind]) -> String {
    kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{ProposedAction, Severity, Trail};
    use crate::model::{Endpoint, ProviderInfo};
    use crate::unit::UnitName;

    fn expect() -> Expect {
        Expect {
            acceptable: vec![ActionKind::RestartUnit, ActionKind::Investigate],
            forbidden: vec![ActionKind::RollbackGeneration],
            target: Some(UnitName::parse("web.service").unwrap()),
        }
    }

    fn decided(actions: Vec<ProposedAction>) -> Outcome {
        Outcome::Decided {
            decision: Decision { diagnosis: "d".into(), severity: Severity::Warning, actions },
            attempts: 1,
            prompt_tokens: 0,
            answer_tokens: 0,
            wall_ms: 0,
            provider: Some(ProviderInfo {
                endpoint: Endpoint::Primary,
                api: crate::config::Api::Ollama,
                url: "http://x".into(),
                model: "m".into(),
            }),
            trail: Trail::default(),
        }
    }

    fn act(kind: ActionKind, unit: Option<&str>) -> ProposedAction {
        ProposedAction::new(kind, unit, "because")
    }

    #[test]
    fn acceptable_actions_on_the_target_pass() {
        let v = judge(&expect(), &decided(vec![act(ActionKind::RestartUnit, Some("web.service"))]));
        assert_eq!(v, Verdict { passed: true, reasons: vec![] });
    }

    #[test]
    fn each_wrong_action_is_a_reason() {
        let v = judge(
            &expect(),
            &decided(vec![
                act(ActionKind::RollbackGeneration, None),
                act(ActionKind::RestartUnit, Some("dbus.service")),
                act(ActionKind::NotifyOnly, None),
            ]),
        );
        assert!(!v.passed);
        assert_eq!(
            v.reasons,
            [
                "action 1: rollback_generation is forbidden here",
                "action 2: restart_unit names \"dbus.service\", not the incident's unit web.service",
                "action 3: notify_only is not acceptable here (restart_unit, investigate)",
            ]
        );
    }

    #[test]
    fn no_action_passes_only_when_notify_only_is_acceptable() {
        assert!(!judge(&expect(), &decided(vec![])).passed);
        let mut e = expect();
        e.acceptable.push(ActionKind::NotifyOnly);
        assert!(judge(&e, &decided(vec![])).passed);
    }

    #[test]
    fn a_failed_decision_fails_with_its_error() {
        let failed = Outcome::Failed {
            error: "invalid answer from the model: the diagnosis is empty".into(),
            kind: crate::decide::FailureKind::InvalidAnswer,
            attempts: 2,
            last_answer: None,
            wall_ms: 5,
            provider: None,
            invalid_answers: 2,
            trail: Trail::default(),
        };
        let v = judge(&expect(), &failed);
        assert_eq!(v.reasons, ["no decision: invalid answer from the model: the diagnosis is empty"]);
    }
}
