//! `macha generations`: the NixOS system generations, when each was
//! switched to, which runs, which the profile boots and which booted, and
//! what changed in each against the one before it: units added, removed
//! and changed, with their packages' versions, commands, environment and
//! dependencies, the system path's packages, the system's own parts
//! (kernel, systemd, ...) and its `/etc` files (`observe::generations`),
//! and the incidents macha linked to the switch to each (from the
//! decisions' trail). Read from the profile's
//! links and the store, and the audit trail; nothing is run.

use std::collections::BTreeMap;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::output::{out, outln, shown};
use macha::config::Config;
use macha::observe::generations::{diff_packages, diff_system, diff_units, Change, UnitsDiff};
use macha::observe::nixos;

#[derive(clap::Args)]
pub struct Args {
    /// Print the generations as JSON.
    #[arg(long)]
    json: bool,
    /// The newest N generations (1 to 100).
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100))]
    last: usize,
}

pub fn run(config: Option<&std::path::Path>, args: Args) -> anyhow::Result<ExitCode> {
    macha::logging::init_cli();
    let config = Config::load(config)?;
    let (profile, current) = (&config.nixos.profile, &config.nixos.current_system);
    let generations = nixos::read(profile, current)
        .map_err(|e| anyhow::anyhow!("cannot read the system profile {}: {e}", profile.display()))?;
    if generations.list.is_empty() {
        eprintln!(
            "macha generations: no generations of {} (`nixos.profile`): this is not a NixOS host, or its profile is elsewhere",
            profile.display()
        );
        return Ok(ExitCode::from(1));
    }
    let running = generations.running_generation();
    let booted = std::fs::read_link(current.with_file_name("booted-system"))
        .ok()
        .and_then(|b| generations.list.iter().rev().find(|g| std::path::Path::new(&g.target) == b))
        .map(|g| g.number);
    let linked = linked_incidents(&config);
    let list = &generations.list;
    let shown_from = list.len().saturating_sub(args.last);
    let mut rows = Vec::new();
    for (i, g) in list.iter().enumerate().skip(shown_from).rev() {
        let before = i.checked_sub(1).map(|j| &list[j]);
        let diff = before.map(|b| {
            let (from, to) = (b.target.as_ref(), g.target.as_ref());
            (diff_units(from, to), diff_packages(from, to), diff_system(from, to))
        });
        rows.push((g, before.map(|b| b.number), diff));
    }
    if args.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(g, before, diff)| {
                json!({
                    "number": g.number,
                    "system": g.target,
                    "switched_at": g.created,
                    "running": running == Some(g.number),
                    "profile": generations.profile == Some(g.number),
                    "booted": booted == Some(g.number),
                    "changed_since": before,
                    "units": diff.as_ref().map(|d| &d.0),
                    "packages": diff.as_ref().map(|d| &d.1),
                    "system": diff.as_ref().map(|d| &d.2),
                    "incidents": linked.as_ref().ok().map(|l| l.get(&g.number).cloned().unwrap_or_default()),
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    for (g, before, diff) in &rows {
        let mut marks = Vec::new();
        for (mark, n) in [("running", running), ("profile", generations.profile), ("booted", booted)] {
            if n == Some(g.number) {
                marks.push(mark);
            }
        }
        let marks = if marks.is_empty() { String::new() } else { format!(" ({})", marks.join(", ")) };
        outln!("generation {}{marks}: switched {}, {}", g.number, when(g.created), shown(&g.target))?;
        match (before, diff) {
            (Some(before), Some((units, packages, system))) => {
                changes(*before, units)?;
                for p in packages {
                    if let Change::Package { name, from, to } = p {
                        let v = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                        outln!("  package {}: {} -> {}", shown(name), shown(&v(from)), shown(&v(to)))?;
                    }
                }
                for line in system.lines() {
                    outln!("  {}", shown(&line))?;
                }
            }
            _ => outln!("  the first generation kept: nothing to compare it with")?,
        }
        match &linked {
            Ok(linked) => {
                for l in linked.get(&g.number).into_iter().flatten() {
                    let weak = if l.strength == "unit_changed" { "" } else { " (weaker: its unit did not change)" };
                    outln!("  incident linked to this switch: {} at {}{weak}", shown(&l.incident), l.time)?;
                }
            }
            Err(why) => outln!("  incidents linked: not known ({})", shown(why))?,
        }
    }
    if shown_from > 0 {
        outln!("{shown_from} older generation(s) not shown (--last N)")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// An incident a decision linked to the switch to a generation.
#[derive(Debug, Clone, serde::Serialize)]
struct Linked {
    incident: String,
    /// When it was decided.
    time: String,
    /// `unit_changed` or `soon_after`.
    strength: String,
}

/// The incidents the decisions linked to each generation's switch, each
/// once (its last decision), from the decisions' trail; why not, when it
/// cannot be read (the generations are shown without them).
fn linked_incidents(config: &Config) -> Result<BTreeMap<u32, Vec<Linked>>, String> {
    let Some(state) = super::existing_state_dir(config).map_err(|e| e.to_string())? else {
        return Ok(BTreeMap::new());
    };
    let kept = macha::audit::read_kept(&state, macha::audit::DECISIONS, usize::MAX).map_err(|e| e.to_string())?;
    let mut out: BTreeMap<u32, Vec<Linked>> = BTreeMap::new();
    for r in kept.records {
        let suspect = &r["trail"]["suspect"];
        let Some(generation) = suspect["generation"].as_u64().and_then(|g| u32::try_from(g).ok()) else { continue };
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let linked =
            Linked { incident: text(&r["incident"]), time: text(&r["time"]), strength: text(&suspect["strength"]) };
        let list = out.entry(generation).or_default();
        list.retain(|l| l.incident != linked.incident);
        list.push(linked);
    }
    Ok(out)
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "at an unknown time".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

fn changes(before: u32, diff: &UnitsDiff) -> std::io::Result<()> {
    if diff.units.is_empty() {
        outln!("  units: none changed since generation {before}")?;
    } else {
        outln!("  units changed since generation {before}:")?;
    }
    for unit in &diff.units {
        for line in unit.text().lines() {
            outln!("    {}", shown(line))?;
        }
    }
    if diff.more > 0 {
        outln!("    ... {} more units changed (--json shows the same first ones)", diff.more)?;
    }
    if diff.unread > 0 {
        out!("    ({} entries of the unit directories were not read: past the limit)\n", diff.unread)?;
    }
    Ok(())
}
