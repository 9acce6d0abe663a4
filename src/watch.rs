//! The daemon's watch on systemd's signals: the stream kept alive, the
//! table of units fed, and what happened said in the terms the daemon acts
//! on.
//!
//! When the bus goes away (dbus-daemon restarted, systemd re-executed) the
//! stream ends; the watch says so once, tries again after 0.1 s, doubling
//! up to `MAX_BACKOFF`, and once subscribed again it lists the units,
//! counts what changed meanwhile as missed, and says it is back
//! (`Happened::Back`), so the daemon reconciles at once: nothing is lost,
//! and since the table is compared against the listing, nothing is counted
//! twice.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use futures_util::FutureExt;

use crate::config::Config;
use crate::model::status::Shared;
use crate::observe::events::{Events, Listed, Signal};
use crate::observe::units::{Restarting, Transition, Units};

/// The longest wait between two tries to subscribe again.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Signals taken in one go before the daemon gets to act on them: a burst
/// is one pass, not one per signal, and a stop is heard in between.
const BATCH: usize = 256;

/// What the watch saw.
#[derive(Debug)]
pub enum Happened {
    /// Units changed as signals told (never empty).
    Changed(Vec<(String, Transition)>),
    /// The stream is lost; the reason.
    Lost(String),
    /// The stream is (again) live; what changed meanwhile is counted as
    /// missed, and a pass reads it.
    Back,
}

pub struct Watch {
    address: Option<String>,
    events: Option<Events>,
    units: Units,
    shared: Shared,
    /// The next wait before a try to subscribe, while down.
    backoff: Duration,
    /// Whether the stream was ever live (a first subscription is no reconnect).
    was_live: bool,
}

impl Watch {
    pub fn new(config: &Config, shared: Shared) -> Self {
        let window = TimeDelta::seconds(i64::try_from(config.detect.restart_loop_window).unwrap_or(i64::MAX));
        Self {
            address: config.dbus_address.clone(),
            events: None,
            units: Units::new(window),
            shared,
            backoff: Duration::ZERO,
            was_live: false,
        }
    }

    /// Whether the stream is live now.
    pub fn live(&self) -> bool {
        self.events.is_some()
    }

    /// The units systemd is restarting by itself, as the signals told.
    pub fn restarting(&mut self) -> Vec<Restarting> {
        self.units.restarting(Utc::now())
    }

    /// Waits for what happens next: signals (taken in batches), the stream
    /// lost, or, while it is down, the next try to subscribe again.
    pub async fn next(&mut self) -> Happened {
        loop {
            let Some(events) = &mut self.events else {
                tokio::time::sleep(self.backoff).await;
                match self.subscribe().await {
                    Ok(()) => return Happened::Back,
                    Err(why) => {
                        if self.backoff.is_zero() {
                            // The first try at start-up: said once; the tries go on quietly.
                            tracing::warn!("cannot follow systemd's signals yet ({why}); trying again with backoff");
                        }
                        self.backoff = (self.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                        self.shared.tell(|w| w.events.last_error = Some(why));
                        continue;
                    }
                }
            };
            let mut signals = Vec::new();
            match events.next().await {
                Some(s) => signals.push(s),
                None => return self.lost("the connection to the bus closed".into()),
            }
            // What is already queued joins this batch.
            while signals.len() < BATCH {
                match events.next().now_or_never() {
                    Some(Some(s)) => signals.push(s),
                    Some(None) => return self.lost("the connection to the bus closed".into()),
                    None => break,
                }
            }
            let changed = self.apply(signals);
            if !changed.is_empty() {
                return Happened::Changed(changed);
            }
        }
    }

    /// Lists the units and brings the table in line (a reconciliation, before
    /// a full pass reads systemd itself): what the signals missed is logged
    /// and counted. Nothing when the stream is down.
    pub async fn reconcile(&mut self) {
        let Some(events) = &self.events else { return };
        match events.list().await {
            Ok(listed) => {
                let missed = self.units.reconcile(&listed, Utc::now()).len();
                if missed > 0 {
                    tracing::warn!(units = missed, "the reconciliation found unit changes no signal told");
                    self.shared.update(|w| w.events.missed += missed as u64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the units to reconcile"),
        }
    }

    fn apply(
        &mut self,
        signals: Vec<Result<Signal, crate::observe::events::SignalError>>,
    ) -> Vec<(String, Transition)> {
        let now = Utc::now();
        let mut changed = Vec::new();
        let mut unreadable = 0;
        let count = signals.len() as u64;
        for s in signals {
            match s {
                Ok(s) => changed.extend(self.units.apply(&s, now)),
                Err(e) => {
                    unreadable += 1;
                    tracing::debug!(error = %e, "a signal skipped");
                }
            }
        }
        self.shared.count(|w| {
            w.events.signals += count;
            w.events.unreadable += unreadable;
        });
        changed
    }

    /// Subscribes (again), and brings the table in line with the listing.
    async fn subscribe(&mut self) -> Result<(), String> {
        let (events, listed): (Events, Vec<Listed>) =
            Events::subscribe(self.address.as_deref()).await.map_err(|e| e.to_string())?;
        let missed = self.units.reconcile(&listed, Utc::now()).len() as u64;
        self.events = Some(events);
        self.backoff = FIRST_BACKOFF;
        let reconnect = self.was_live;
        self.was_live = true;
        tracing::info!(units = listed.len(), reconnect, "following systemd's signals");
        self.shared.tell(|w| {
            w.events.live = true;
            w.events.since = Some(Utc::now());
            w.events.last_error = None;
            w.events.missed += missed;
            if reconnect {
                w.events.reconnects += 1;
                w.events.last_reconnect = Some(Utc::now());
            }
        });
        Ok(())
    }

    fn lost(&mut self, why: String) -> Happened {
        self.events = None;
        self.backoff = FIRST_BACKOFF;
        tracing::warn!("systemd's signal stream is lost ({why}); reconnecting with backoff, periodic checks go on");
        self.shared.tell(|w| {
            w.events.live = false;
            w.events.since = Some(Utc::now());
            w.events.last_error = Some(why.clone());
        });
        Happened::Lost(why)
    }
}
