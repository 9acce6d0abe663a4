//! What the daemon did, counted since it started, for Prometheus
//! (`metrics.listen`; served by `exporter`): incidents opened and
//! resolved, decisions, actions, model requests, cycles. Fed from each
//! cycle's report and the model's tally (`Engine::after_cycle`); atomics,
//! so the engines and the scrape share them without a lock.
//!
//! Every label is from a bounded set: an incident's kind (the catalog of
//! detections), a decision's outcome and source, an action's kind and
//! result, an endpoint's role. Never a unit name, a host name from the
//! journal, or any other free text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::ids::Fingerprint;
use crate::model::metrics::CallTally;
use crate::report::CycleReport;
use crate::store::Novelty;

/// The kinds an incident's label may take; anything else is `other`.
const KINDS: [&str; 7] =
    ["unit-failed", "restart-loop", "error-burst", "disk-full", "memory-pressure", "host-unreachable", "alert"];

/// An incident's kind, as a label: the part of its fingerprint before the
/// `:`, without a remote host's name.
pub fn kind_of(fingerprint: &Fingerprint) -> &'static str {
    let own = fingerprint.on_host();
    let kind = own.split_once(':').map_or(own, |(k, _)| k);
    KINDS.into_iter().find(|k| *k == kind).unwrap_or("other")
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    outcome: &'static str,
    source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// What a report holds, for the counters: the daemon's watcher reports a
/// pass (what it opened and resolved), its decider each decision (the
/// incident was counted by its pass); `macha-check` and a remote host's
/// pass report both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Pass,
    Decisions,
    Both,
}

/// The counters, registered once.
pub struct Counters {
    registry: Registry,
    incidents_opened: Family<KindLabel, Counter>,
    incidents_resolved: Family<KindLabel, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    actions: Family<ActionLabels, Counter>,
    model_requests: Counter,
    model_failures: Counter,
    model_fallbacks: Counter,
    model_answers: Family<EndpointLabel, Counter>,
    model_tokens: Family<DirectionLabel, Counter>,
    model_duration: Histogram,
    cycles: Counter,
    cycle_duration: Histogram,
    last_cycle: Gauge,
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

impl Counters {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("macha");
        let c = Counters {
            incidents_opened: Family::default(),
            incidents_resolved: Family::default(),
            decisions: Family::default(),
            actions: Family::default(),
            model_requests: Counter::default(),
            model_failures: Counter::default(),
            model_fallbacks: Counter::default(),
            model_answers: Family::default(),
            model_tokens: Family::default(),
            // 0.1 s to about 7 min: a small model on a GPU to a 70B on a CPU.
            model_duration: Histogram::new(exponential_buckets(0.1, 2.0, 13)),
            cycles: Counter::default(),
            // 5 ms to about 80 s.
            cycle_duration: Histogram::new(exponential_buckets(0.005, 2.0, 15)),
            last_cycle: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("incidents_opened", "Incidents opened, by kind", c.incidents_opened.clone());
        registry.register("incidents_resolved", "Incidents resolved, by kind", c.incidents_resolved.clone());
        registry.register(
            "decisions",
            "Decisions made, by outcome (decided, failed) and source (model, memory)",
            c.decisions.clone(),
        );
        registry.register(
            "actions",
            "Proposed actions, by kind and what came of each (executed, failed, queued, refused, ...)",
            c.actions.clone(),
        );
        registry.register("model_requests", "Requests to the model", c.model_requests.clone());
        registry.register("model_failures", "Requests to the model no endpoint answered", c.model_failures.clone());
        registry.register("model_fallbacks", "Requests the fallback endpoint answered", c.model_fallbacks.clone());
        registry.register("model_answers", "Answers of the model, by endpoint", c.model_answers.clone());
        registry.register("model_tokens", "Tokens of the model's requests, by direction", c.model_tokens.clone());
        registry.register_with_unit(
            "model_request_duration",
            "Wall time of a request to the model, failover included, without its wait in the queue",
            Unit::Seconds,
            c.model_duration.clone(),
        );
        registry.register("cycles", "Cycles and passes that ended (this host's and remote hosts')", c.cycles.clone());
        registry.register_with_unit(
            "cycle_duration",
            "Wall time of a cycle or pass",
            Unit::Seconds,
            c.cycle_duration.clone(),
        );
        registry.register(
            "last_cycle_timestamp_seconds",
            "When the last cycle or pass ended, in seconds since the epoch",
            c.last_cycle.clone(),
        );
        let build = Family::<VersionLabel, Gauge>::default();
        build.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("build_info", "The version of macha running; always 1", build);
        Counters { registry, ..c }
    }

    /// Counts what one cycle, pass or decision did, from its report: what
    /// `counted` says it holds.
    pub fn cycle(&self, report: &CycleReport, counted: Counted) {
        if counted != Counted::Decisions {
            self.pass(report);
        }
        if counted == Counted::Pass {
            return;
        }
        for i in &report.incidents {
            let Some(d) = &i.decision else { continue };
            let source = d.source.unwrap_or("model");
            self.decisions.get_or_create(&DecisionLabels { outcome: d.outcome.as_str(), source }).inc();
            for a in &d.actions {
                let kind = crate::catalog::ActionKind::parse(&a.action).map_or("other", |k| k.as_str());
                self.actions.get_or_create(&ActionLabels { kind, result: a.result.as_str() }).inc();
            }
        }
    }

    /// The incidents a pass opened and resolved, and the pass itself.
    fn pass(&self, report: &CycleReport) {
        for i in report.incidents.iter().filter(|i| i.novelty == Novelty::New) {
            self.incidents_opened.get_or_create(&KindLabel { kind: kind_of(&i.fingerprint) }).inc();
        }
        for fp in &report.resolved {
            self.incidents_resolved.get_or_create(&KindLabel { kind: kind_of(fp) }).inc();
        }
        self.cycles.inc();
        self.cycle_duration.observe(report.wall_ms as f64 / 1000.0);
        self.last_cycle.set(chrono::Utc::now().timestamp());
    }

    /// Counts the model's requests since the last tally.
    pub fn model(&self, tally: &CallTally) {
        self.model_requests.inc_by(u64::from(tally.calls));
        self.model_failures.inc_by(u64::from(tally.failures));
        self.model_fallbacks.inc_by(u64::from(tally.fallbacks));
        for (endpoint, n) in &tally.answered_by {
            let endpoint = match endpoint {
                crate::model::provider::Endpoint::Primary => "primary",
                crate::model::provider::Endpoint::Fallback => "fallback",
            };
            self.model_answers.get_or_create(&EndpointLabel { endpoint }).inc_by(u64::from(*n));
        }
        self.model_tokens.get_or_create(&DirectionLabel { direction: "prompt" }).inc_by(tally.prompt_tokens);
        self.model_tokens.get_or_create(&DirectionLabel { direction: "answer" }).inc_by(tally.answer_tokens);
        for ms in &tally.call_ms {
            self.model_duration.observe(*ms as f64 / 1000.0);
        }
    }

    /// The counters in the Prometheus text format (0.0.4).
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::prometheus_text::encode(out, &self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::DecisionOutcome;
    use crate::report::{ActionReport, ActionResult, DecisionReport, IncidentReport};

    #[test]
    fn a_cycle_is_counted_with_bounded_labels_only() {
        let c = Counters::new();
        let incident = |fp: &str, novelty, action: Option<(&str, ActionResult)>| IncidentReport {
            fingerprint: fp.into(),
            summary: "s".into(),
            novelty,
            decision: action.map(|(kind, result)| DecisionReport {
                outcome: DecisionOutcome::Decided,
                source: None,
                diagnosis: None,
                suspect: None,
                error: None,
                actions: vec![ActionReport {
                    action: kind.into(),
                    target: Some("nginx.service".into()),
                    result,
                    detail: "d".into(),
                    reason: "r".into(),
                    approval_id: None,
                }],
            }),
        };
        let report = CycleReport {
            started_at: chrono::Utc::now(),
            host: "h".into(),
            autonomy_level: crate::config::AutonomyLevel::AutoSafe,
            model_problems: Vec::new(),
            failed_sources: Vec::new(),
            incidents: vec![
                incident("unit-failed:nginx.service", Novelty::New, Some(("restart_unit", ActionResult::Executed))),
                incident("web1/disk-full:/var", Novelty::New, None),
                incident("weird:thing", Novelty::Known, Some(("made_up", ActionResult::Refused))),
            ],
            resolved: vec!["h2/unit-failed:db.service".into()],
            wall_ms: 1500,
        };
        c.cycle(&report, Counted::Both);
        // The same report as a decision alone: its openings are not counted again.
        c.cycle(&report, Counted::Decisions);
        let mut out = String::new();
        c.encode(&mut out).unwrap();
        for line in [
            "macha_incidents_opened_total{kind=\"unit-failed\"} 1",
            "macha_incidents_opened_total{kind=\"disk-full\"} 1",
            "macha_incidents_resolved_total{kind=\"unit-failed\"} 1",
            "macha_decisions_total{outcome=\"decided\",source=\"model\"} 4",
            "macha_actions_total{kind=\"restart_unit\",result=\"executed\"} 2",
            "macha_actions_total{kind=\"other\",result=\"refused\"} 2",
            "macha_cycles_total 1",
            "macha_cycle_duration_seconds_count 1",
            "macha_cycle_duration_seconds_sum 1.5",
            "# TYPE macha_model_request_duration_seconds histogram",
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
        }
        assert!(out.contains("macha_build_info{version=\""), "{out}");
        // No unit, mount or host name ever becomes a label.
        for free in ["nginx", "/var", "web1", "db.service", "weird"] {
            assert!(!out.contains(free), "{free} in\n{out}");
        }
    }
}
