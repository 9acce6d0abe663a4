//! Alerts from Alertmanager that name this host, as the webhook receiver
//! (`alerts`) keeps them in `state.db` and a pass reads them: each firing
//! alert with its labels and annotations, bounded when received.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One firing alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Its `alertname` label.
    pub name: String,
    /// Alertmanager's fingerprint of its labels: which alert it is.
    pub fingerprint: String,
    pub labels: BTreeMap<String, String>,
    /// The rule's words about it (`summary`, `description`, ...): text from
    /// elsewhere, shown to the model as untrusted evidence.
    pub annotations: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
}
