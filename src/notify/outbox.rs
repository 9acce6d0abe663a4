//! The notification state kept in SQLite (the same `state.db` as the queue):
//! per-incident notification state, the outbox of messages not yet
//! delivered, the send log for the rate limit, messages rolled into the next
//! digest, and a few counters.
//!
//! Keeping the outbox here means a message survives Gotify being down and
//! the daemon restarting, and the monitoring loop only ever writes a row.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::Message;
use crate::ids::Fingerprint;
use crate::state_dir::StateDir;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS notify_incidents (
    fingerprint TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('open', 'resolving')),
    since TEXT NOT NULL,
    flaps INTEGER NOT NULL DEFAULT 0,
    summary TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    priority INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt TEXT NOT NULL,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS notify_accepted (time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notify_rolled (time TEXT NOT NULL, kind TEXT NOT NULL, title TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notify_kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

#[derive(Debug, thiserror::Error)]
#[error("notification state in {path}: {source}")]
pub struct OutboxError {
    path: String,
    source: rusqlite::Error,
}

/// An incident's notification state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    /// `open`, or `resolving` (gone, but not for long enough to say so).
    pub state: String,
    pub since: DateTime<Utc>,
    pub flaps: u32,
    pub summary: String,
}

/// A message waiting for delivery.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub message: Message,
    pub attempts: u32,
}

pub struct Outbox {
    conn: Connection,
    path: String,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).unwrap_or_default()
}

impl Outbox {
    pub fn open(state: &StateDir) -> Result<Self, OutboxError> {
        let shown = state.path_of(crate::store::DB_FILE).display().to_string();
        let wrap = |source| OutboxError { path: shown.clone(), source };
        let conn = crate::sqlite::open_retrying(|| {
            let conn = crate::store::connect(state)?;
            conn.execute_batch(SCHEMA)?;
            // Rows of an outbox from before channels are Gotify's.
            let has: bool = conn.query_row(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('outbox') WHERE name = 'channel'",
                [],
                |r| r.get(0),
            )?;
            if !has {
                conn.execute_batch("ALTER TABLE outbox ADD COLUMN channel TEXT NOT NULL DEFAULT 'gotify'")?;
            }
            Ok(conn)
        })
        .map_err(wrap)?;
        Ok(Self { conn, path: shown })
    }

    fn wrap(&self) -> impl Fn(rusqlite::Error) -> OutboxError + '_ {
        |source| OutboxError { path: self.path.clone(), source }
    }

    pub fn tracked(&self, fingerprint: &Fingerprint) -> Result<Option<Tracked>, OutboxError> {
        self.conn
            .query_row(
                "SELECT state, since, flaps, summary FROM notify_incidents WHERE fingerprint = ?1",
                [fingerprint],
                |r| {
                    Ok(Tracked {
                        state: r.get(0)?,
                        since: parse_ts(&r.get::<_, String>(1)?),
                        flaps: r.get(2)?,
                        summary: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(self.wrap())
    }

    pub fn track(&self, fingerprint: &Fingerprint, t: &Tracked) -> Result<(), OutboxError> {
        self.conn
            .execute(
                "INSERT INTO notify_incidents (fingerprint, state, since, flaps, summary) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(fingerprint) DO UPDATE SET state = ?2, since = ?3, flaps = ?4, summary = ?5",
                params![fingerprint, t.state, ts(t.since), t.flaps, t.summary],
            )
            .map(drop)
            .map_err(self.wrap())
    }

    pub fn untrack(&self, fingerprint: &Fingerprint) -> Result<(), OutboxError> {
        self.conn
            .execute("DELETE FROM notify_incidents WHERE fingerprint = ?1", [fingerprint])
            .map(drop)
            .map_err(self.wrap())
    }

    /// Fingerprints gone since before `cutoff`, with their state.
    pub fn resolving_since_before(&self, cutoff: DateTime<Utc>) -> Result<Vec<(Fingerprint, Tracked)>, OutboxError> {
        let mut stmt = self
            .conn
            .prepare("SELECT fingerprint, state, since, flaps, summary FROM notify_incidents WHERE state = 'resolving' ORDER BY since")
            .map_err(self.wrap())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Fingerprint>(0)?,
                    Tracked {
                        state: r.get(1)?,
                        since: parse_ts(&r.get::<_, String>(2)?),
                        flaps: r.get(3)?,
                        summary: r.get(4)?,
                    },
                ))
            })
            .map_err(self.wrap())?;
        let all: Vec<(Fingerprint, Tracked)> = rows.collect::<Result<_, _>>().map_err(self.wrap())?;
        Ok(all.into_iter().filter(|(_, t)| t.since <= cutoff).collect())
    }

    /// Messages accepted for sending since `since` (the rate limit's window).
    pub fn accepted_since(&self, since: DateTime<Utc>) -> Result<u32, OutboxError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM notify_accepted WHERE time > ?1", [ts(since)], |r| r.get(0))
            .map_err(self.wrap())
    }

    /// Puts `m` in the outbox once for each of `channels`, counting it once
    /// against the rate limit, and drops each channel's oldest messages
    /// beyond `max_queued`. Returns how many were dropped.
    pub fn enqueue(
        &self,
        m: &Message,
        now: DateTime<Utc>,
        max_queued: u32,
        channels: &[&str],
    ) -> Result<u32, OutboxError> {
        for channel in channels {
            self.conn
                .execute(
                    "INSERT INTO outbox (created_at, kind, title, body, priority, next_attempt, channel)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?1, ?6)",
                    params![ts(now), m.kind, m.title, m.body, m.priority, channel],
                )
                .map_err(self.wrap())?;
        }
        self.conn.execute("INSERT INTO notify_accepted (time) VALUES (?1)", [ts(now)]).map_err(self.wrap())?;
        self.conn
            .execute("DELETE FROM notify_accepted WHERE time < ?1", [ts(now - chrono::Duration::hours(2))])
            .map_err(self.wrap())?;
        let mut dropped = 0;
        for channel in channels {
            dropped += self
                .conn
                .execute(
                    "DELETE FROM outbox WHERE id IN
                       (SELECT id FROM outbox WHERE channel = ?2 ORDER BY id DESC LIMIT -1 OFFSET ?1)",
                    params![max_queued, channel],
                )
                .map_err(self.wrap())? as u32;
        }
        if dropped > 0 {
            self.add_counter("dropped", dropped)?;
        }
        Ok(dropped)
    }

    /// Keeps a message that the rate limit held back, for the next digest.
    pub fn roll(&self, m: &Message, now: DateTime<Utc>) -> Result<(), OutboxError> {
        self.conn
            .execute(
                "INSERT INTO notify_rolled (time, kind, title) VALUES (?1, ?2, ?3)",
                params![ts(now), m.kind, m.title],
            )
            .map(drop)
            .map_err(self.wrap())
    }

    /// Takes (and forgets) the rolled-up messages: (kind, title), oldest first.
    pub fn take_rolled(&self) -> Result<Vec<(String, String)>, OutboxError> {
        let rolled = {
            let mut stmt =
                self.conn.prepare("SELECT kind, title FROM notify_rolled ORDER BY time").map_err(self.wrap())?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(self.wrap())?;
            rows.collect::<Result<Vec<_>, _>>().map_err(self.wrap())?
        };
        self.conn.execute("DELETE FROM notify_rolled", []).map_err(self.wrap())?;
        Ok(rolled)
    }

    /// `channel`'s messages due for a delivery attempt at `now`, oldest first.
    pub fn due(&self, now: DateTime<Utc>, channel: &str) -> Result<Vec<Pending>, OutboxError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, kind, title, body, priority, attempts FROM outbox
                 WHERE next_attempt <= ?1 AND channel = ?2 ORDER BY id",
            )
            .map_err(self.wrap())?;
        let rows = stmt
            .query_map(params![ts(now), channel], |r| {
                let kind: String = r.get(1)?;
                Ok(Pending {
                    id: r.get(0)?,
                    message: Message {
                        kind: super::Kind::from_name(&kind),
                        title: r.get(2)?,
                        body: r.get(3)?,
                        priority: r.get(4)?,
                    },
                    attempts: r.get(5)?,
                })
            })
            .map_err(self.wrap())?;
        rows.collect::<Result<_, _>>().map_err(self.wrap())
    }

    /// When `channel`'s next undelivered message is due, if any.
    pub fn next_due(&self, channel: &str) -> Result<Option<DateTime<Utc>>, OutboxError> {
        let next: Option<String> = self
            .conn
            .query_row("SELECT MIN(next_attempt) FROM outbox WHERE channel = ?1", [channel], |r| r.get(0))
            .map_err(self.wrap())?;
        Ok(next.map(|s| parse_ts(&s)))
    }

    /// `channel`'s undelivered messages.
    pub fn queued(&self, channel: &str) -> Result<u32, OutboxError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM outbox WHERE channel = ?1", [channel], |r| r.get(0))
            .map_err(self.wrap())
    }

    pub fn delivered(&self, id: i64) -> Result<(), OutboxError> {
        self.conn.execute("DELETE FROM outbox WHERE id = ?1", [id]).map(drop).map_err(self.wrap())
    }

    pub fn failed(&self, id: i64, attempts: u32, next: DateTime<Utc>, error: &str) -> Result<(), OutboxError> {
        self.conn
            .execute(
                "UPDATE outbox SET attempts = ?2, next_attempt = ?3, last_error = ?4 WHERE id = ?1",
                params![id, attempts, ts(next), error],
            )
            .map(drop)
            .map_err(self.wrap())
    }

    pub fn get(&self, key: &str) -> Result<Option<String>, OutboxError> {
        self.conn
            .query_row("SELECT value FROM notify_kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.wrap())
    }

    pub fn set(&self, key: &str, value: Option<&str>) -> Result<(), OutboxError> {
        match value {
            Some(v) => self.conn.execute(
                "INSERT INTO notify_kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
                params![key, v],
            ),
            None => self.conn.execute("DELETE FROM notify_kv WHERE key = ?1", [key]),
        }
        .map(drop)
        .map_err(self.wrap())
    }

    fn add_counter(&self, key: &str, n: u32) -> Result<(), OutboxError> {
        let now: u32 = self.get(key)?.and_then(|v| v.parse().ok()).unwrap_or(0);
        self.set(key, Some(&(now + n).to_string()))
    }

    pub fn get_time(&self, key: &str) -> Result<Option<DateTime<Utc>>, OutboxError> {
        Ok(self.get(key)?.map(|s| parse_ts(&s)))
    }

    pub fn set_time(&self, key: &str, t: Option<DateTime<Utc>>) -> Result<(), OutboxError> {
        self.set(key, t.map(ts).as_deref())
    }
}
