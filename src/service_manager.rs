//! What the daemon tells systemd about itself (`sd_notify(3)`): that it is
//! ready, what it is doing, that it is still alive, and that it is stopping.
//!
//! The unit is `Type=notify` with `WatchdogSec=`: systemd considers the
//! service started only once it sent `READY=1`, and kills and restarts it
//! when the `WATCHDOG=1` pings stop. Outside systemd (`NOTIFY_SOCKET`
//! unset: a terminal, the tests) every call here does nothing.
//!
//! Why the pings come from a task of the daemon's own runtime and not from a
//! thread: the runtime has one thread, and a cycle that blocks it (a hung
//! synchronous call) should stop the pings so systemd restarts the daemon.
//! A cycle that merely waits (on the model, on a helper unit) yields, and
//! the pings go on however long it waits.

use std::time::Duration;

use crate::text::one_line;

/// The daemon's line to systemd's service manager.
#[derive(Debug, Clone, Copy)]
pub struct ServiceManager {
    /// How often to ping the watchdog: a third of `WatchdogSec`, so one late
    /// ping still leaves a margin. `None` when the unit has no watchdog.
    ping_every: Option<Duration>,
}

impl ServiceManager {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`, which must be this process
    /// when set) from the environment systemd gave the service.
    pub fn from_env() -> Self {
        let usec = systemd::daemon::watchdog_enabled().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the watchdog settings (WATCHDOG_USEC); not pinging systemd's watchdog");
            0
        });
        Self { ping_every: (usec > 0).then(|| Duration::from_micros(usec) / 3) }
    }

    /// The interval between two watchdog pings, if systemd asked for them.
    pub fn ping_every(&self) -> Option<Duration> {
        self.ping_every
    }

    /// Start-up is done: systemd marks the unit active. `status` is shown by
    /// `systemctl status`.
    pub fn ready(&self, status: &str) {
        send(&[("READY", "1"), ("STATUS", status)]);
    }

    /// A line for `systemctl status` (the unit's `StatusText`).
    pub fn status(&self, status: &str) {
        send(&[("STATUS", status)]);
    }

    /// The daemon received a stop signal and is cleaning up.
    pub fn stopping(&self) {
        send(&[("STOPPING", "1"), ("STATUS", "stopping")]);
    }

    /// Pings the watchdog for as long as the runtime that polls it is alive.
    /// Never returns; drop or abort the task to stop it.
    pub async fn keep_watchdog_alive(self) {
        let Some(every) = self.ping_every else {
            return std::future::pending().await;
        };
        let mut ticks = tokio::time::interval(every);
        // After a stall, one ping is enough: a burst would hide nothing and
        // change nothing.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            send(&[("WATCHDOG", "1")]);
        }
    }
}

/// One notification datagram. A failure to send is logged, never fatal: the
/// daemon's work does not depend on systemd hearing about it (a missed
/// `READY=1` or ping shows up in systemd's own log as a timeout).
fn send(fields: &[(&str, &str)]) {
    // The datagram is one `KEY=VALUE` a line: a line break inside a value
    // (an error text in STATUS) would be read as a field of its own.
    let fields: Vec<(&str, String)> = fields.iter().map(|(k, v)| (*k, one_line(v))).collect();
    match systemd::daemon::notify(fields.iter()) {
        Ok(_) => {}
        Err(e) => {
            let what: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
            tracing::warn!(error = %e, fields = ?what, "cannot notify systemd (NOTIFY_SOCKET)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_cannot_add_a_field_of_its_own() {
        assert_eq!(one_line("failed: boom\nREADY=1\r\tx"), "failed: boom READY=1  x");
    }
}
