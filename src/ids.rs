//! The names of things that outlive one process: an approval item's id and
//! an incident's fingerprint. Each is its own type so that an id is never
//! passed where a count goes, nor a fingerprint where a unit name or a
//! summary goes; both are written exactly as the bare value they wrap (in
//! JSON and in SQLite), so records and databases of older versions read.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The stable id of an item of the approval queue (its row id in
/// `state.db`), as people type it: `macha-approve approve 12`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApprovalId(i64);

impl ApprovalId {
    pub fn new(id: i64) -> Self {
        Self(id)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl From<i64> for ApprovalId {
    fn from(id: i64) -> Self {
        Self(id)
    }
}

impl fmt::Display for ApprovalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl rusqlite::ToSql for ApprovalId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

impl rusqlite::types::FromSql for ApprovalId {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        i64::column_result(value).map(Self)
    }
}

/// What names an incident across cycles (`unit-failed:nginx.service`,
/// `disk-full:/var`, ...): made by `detect`, kept in `state.db`, written in
/// every record about the incident.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

/// The fingerprint of a host the controller cannot reach; it belongs to
/// that host, like the incidents it reports (`remote`).
pub const HOST_UNREACHABLE: &str = "host-unreachable:";

impl Fingerprint {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The remote host an incident is on: `web1` for `web1/unit-failed:x`
    /// and for `host-unreachable:web1`; `None` for this host's own (a
    /// fingerprint's kind never holds a `/`, a unit name never does either,
    /// a mount's path comes after the `:`).
    pub fn host(&self) -> Option<&str> {
        if let Some(name) = self.0.strip_prefix(HOST_UNREACHABLE) {
            return Some(name);
        }
        let (host, _) = self.0.split_once('/')?;
        (!host.contains(':')).then_some(host)
    }

    /// The fingerprint as its own host knows it: without the host's name.
    pub fn on_host(&self) -> &str {
        match self.host() {
            Some(_) if self.0.starts_with(HOST_UNREACHABLE) => &self.0,
            Some(host) => &self.0[host.len() + 1..],
            None => &self.0,
        }
    }

    /// `incident` of host `host`, as the controller names it.
    pub fn of_host(host: &str, incident: &Fingerprint) -> Fingerprint {
        Fingerprint(format!("{host}/{incident}"))
    }
}

impl From<String> for Fingerprint {
    fn from(fingerprint: String) -> Self {
        Self(fingerprint)
    }
}

impl From<&str> for Fingerprint {
    fn from(fingerprint: &str) -> Self {
        Self(fingerprint.to_owned())
    }
}

impl PartialEq<str> for Fingerprint {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Fingerprint {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Fingerprint {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

impl AsRef<str> for Fingerprint {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl rusqlite::ToSql for Fingerprint {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

impl rusqlite::types::FromSql for Fingerprint {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        String::column_result(value).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::Fingerprint;

    #[test]
    fn a_fingerprint_names_its_host_or_none() {
        let cases = [
            ("unit-failed:nginx.service", None, "unit-failed:nginx.service"),
            ("disk-full:/var/lib", None, "disk-full:/var/lib"),
            ("memory-pressure", None, "memory-pressure"),
            ("web1/unit-failed:nginx.service", Some("web1"), "unit-failed:nginx.service"),
            ("web1/disk-full:/var", Some("web1"), "disk-full:/var"),
            ("host-unreachable:web1", Some("web1"), "host-unreachable:web1"),
        ];
        for (fp, host, own) in cases {
            let fp = Fingerprint::from(fp);
            assert_eq!((fp.host(), fp.on_host()), (host, own), "{fp}");
        }
        assert_eq!(Fingerprint::of_host("h2", &"unit-failed:a.service".into()), "h2/unit-failed:a.service");
    }
}
