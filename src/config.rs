//! The configuration file: one TOML document, every key optional with a
//! documented default, unknown keys and bad values refused at start-up.
//!
//! The NixOS module renders exactly this file; `macha.example.toml` at the
//! repository root lists every key with its default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bounded::{self, FileKind, Size};
use crate::rotation::{self, Rotation};
use crate::unit::UnitName;

/// How far macha may go on its own. See the matrix in `gate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AutonomyLevel {
    /// Watch and record; never act, never queue.
    Observe,
    /// Queue every proposed action for a human.
    Suggest,
    /// Carry out low-risk actions; queue the rest.
    AutoSafe,
    /// Carry out low- and high-risk actions, except the ones that always
    /// need a human.
    AutoFull,
}

impl AutonomyLevel {
    pub const ALL: [AutonomyLevel; 4] = [Self::Observe, Self::Suggest, Self::AutoSafe, Self::AutoFull];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Observe => "observe",
            Self::Suggest => "suggest",
            Self::AutoSafe => "auto-safe",
            Self::AutoFull => "auto-full",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `observe`, `suggest`, `auto-safe` or `auto-full`.
    pub autonomy_level: AutonomyLevel,
    /// Seconds between two cycles of the daemon.
    pub check_interval: u64,
    /// Where the queue, the audit trail and the journal cursor live.
    pub state_dir: PathBuf,
    /// Units never touched, in addition to the built-in list.
    pub protected_units: Vec<UnitName>,
    /// D-Bus address of the systemd to watch; absent means the system bus.
    pub dbus_address: Option<String>,
    /// Journal directory to read; absent means the local system journal.
    pub journal_dir: Option<PathBuf>,
    /// The unit macha itself runs as (for `macha-logs service`).
    pub service_unit: UnitName,
    pub ollama: OllamaConfig,
    pub model: ModelConfig,
    pub detect: DetectConfig,
    pub act: ActConfig,
    pub gotify: GotifyConfig,
    pub nixos: NixosConfig,
    pub retention: RetentionConfig,
    pub knowledge_base: KnowledgeBaseConfig,
    pub remote: RemoteConfig,
    pub metrics: MetricsConfig,
    pub alertmanager: AlertmanagerConfig,
    pub ntfy: NtfyConfig,
    pub matrix: MatrixConfig,
}

/// Notifications through ntfy, besides or instead of Gotify: the same
/// messages, with `gotify`'s limits, digest and priorities.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NtfyConfig {
    /// Base URL of the ntfy server (`https://ntfy.sh` or your own); none: off.
    pub url: Option<String>,
    /// The topic messages are published to.
    pub topic: Option<String>,
    /// File holding an access token (`tk_...`), for a topic that needs one.
    pub token_file: Option<PathBuf>,
}

/// Notifications into a Matrix room, besides or instead of Gotify.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatrixConfig {
    /// Base URL of the homeserver's client-server API; none: off.
    pub homeserver: Option<String>,
    /// The room's id (`!abc:example.org`), which macha's user has joined.
    pub room_id: Option<String>,
    /// File holding the access token of macha's Matrix user.
    pub token_file: Option<PathBuf>,
}

/// Alertmanager's webhook as a source of incidents (`alerts`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertmanagerConfig {
    /// Where the daemon takes Alertmanager's webhook, `POST /alertmanager`
    /// (may be `metrics.listen`: one listener then serves both); none: off.
    pub listen: Option<std::net::SocketAddr>,
    /// The bearer token Alertmanager sends (`http_config.authorization`),
    /// read from this file at start-up; required with `listen`.
    pub token_file: Option<PathBuf>,
    /// The labels that may name the host an alert is about; `instance` is
    /// taken without its port.
    pub host_labels: Vec<String>,
    /// The names this host goes by in those labels, besides its hostname.
    pub host_names: Vec<String>,
}

impl Default for AlertmanagerConfig {
    fn default() -> Self {
        Self {
            listen: None,
            token_file: None,
            host_labels: ["host", "hostname", "instance", "nodename"].map(String::from).to_vec(),
            host_names: Vec::new(),
        }
    }
}

/// The Prometheus exposition (`exporter`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where the daemon serves `GET /metrics` (`127.0.0.1:9469`); none: off.
    pub listen: Option<std::net::SocketAddr>,
}

/// The most hosts one controller lists.
pub const MAX_REMOTE_HOSTS: usize = 10_000;

/// Other hosts this one reaches over SSH, as a controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// The hosts (`[[remote.hosts]]`).
    pub hosts: Vec<RemoteHost>,
    /// The controller's private key (OpenSSH format), read as root before
    /// the daemon's user is taken; with the module, a systemd credential.
    pub private_key_file: Option<PathBuf>,
    /// Seconds to connect, exchange keys and log in.
    pub connect_timeout: u64,
    /// Seconds one request may take to be answered.
    pub command_timeout: u64,
    /// Hosts talked to at once.
    pub max_parallel: u32,
    /// Hosts acted on automatically within `acting_window`, all together;
    /// beyond, a person decides.
    pub max_hosts_acting: u32,
    /// Seconds over which `max_hosts_acting` counts.
    pub acting_window: u64,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            private_key_file: None,
            connect_timeout: 10,
            command_timeout: 120,
            max_parallel: 8,
            max_hosts_acting: 1,
            acting_window: 3600,
        }
    }
}

/// One host reached over SSH. Its key is given (`host_key`, as in
/// `known_hosts`: "ssh-ed25519 AAAA...") or looked up in a `known_hosts`
/// file; a host whose key is unknown or another is not talked to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteHost {
    /// The name incidents carry (`web1/unit-failed:nginx.service`).
    pub name: String,
    /// A host name or IP address.
    pub address: String,
    #[serde(default = "RemoteHost::default_port")]
    pub port: u16,
    #[serde(default = "RemoteHost::default_user")]
    pub user: String,
    #[serde(default)]
    pub host_key: Option<String>,
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
}

impl RemoteHost {
    fn default_port() -> u16 {
        22
    }

    fn default_user() -> String {
        "macha".into()
    }
}

/// Incident memory (`kb`): past incidents, what was tried for them and what
/// came of it, kept in `knowledge.db` in the state directory and shown to
/// decisions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnowledgeBaseConfig {
    /// Keep memory and use it in decisions.
    pub enable: bool,
    /// Past incidents shown to one decision, at most.
    pub recall: u32,
    /// The share of a decision's input budget they may take, in percent.
    pub prompt_share_percent: u64,
    /// A fix (one action on one target) verified this many times in a row
    /// for an incident, and neither failed nor rejected since, is proposed
    /// again without asking the model; 0 never does.
    pub known_fix_after: u32,
    /// Days during which an action whose verification failed for an
    /// incident is not carried out automatically for it again (it is
    /// queued for a human instead); 0 turns this off.
    pub failed_fix_days: u64,
    /// Memories kept; the least recently seen go first.
    pub max_memories: u64,
    /// Days a memory is kept after it was last seen.
    pub max_age_days: u64,
    /// Where memories are kept: `embedded` (`knowledge.db`) or `chroma`.
    pub backend: KbBackend,
    /// The Chroma server, for `backend = "chroma"`.
    pub chroma: ChromaConfig,
    /// A directory of the operator's runbooks: markdown files (`*.md`),
    /// each split into sections on its headings, indexed in `knowledge.db`
    /// again when a file changes, and shown to decisions like past
    /// incidents.
    pub runbooks: Option<PathBuf>,
}

/// Where incident memory is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KbBackend {
    /// SQLite in the state directory, no service to run.
    Embedded,
    /// A ChromaDB server (v2 API), for a memory shared by a fleet.
    Chroma,
}

/// A Chroma server and the collection macha keeps memories in there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChromaConfig {
    /// The server's base URL, without `/api/v2`.
    pub url: Option<String>,
    pub tenant: String,
    pub database: String,
    pub collection: String,
    /// A file holding the token Chroma (or a proxy in front of it) checks;
    /// the token itself is never in this file.
    pub token_file: Option<PathBuf>,
    /// Seconds one request to Chroma may take.
    pub timeout: u64,
}

impl Default for ChromaConfig {
    fn default() -> Self {
        Self {
            url: None,
            tenant: "default_tenant".into(),
            database: "default_database".into(),
            collection: "macha-incidents".into(),
            token_file: None,
            timeout: 10,
        }
    }
}

impl Default for KnowledgeBaseConfig {
    fn default() -> Self {
        Self {
            enable: true,
            recall: 3,
            prompt_share_percent: 20,
            known_fix_after: 3,
            failed_fix_days: 7,
            max_memories: 10_000,
            max_age_days: 365,
            backend: KbBackend::Embedded,
            chroma: ChromaConfig::default(),
            runbooks: None,
        }
    }
}

/// How much of what macha writes in its state directory is kept. The
/// record of model calls (`model.calls`) and the metrics
/// (`model.metrics_max_kb`) have their limits in `[model]`; everything else
/// that grows has its limit here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// An audit file (`decisions.jsonl`, `actions.jsonl`,
    /// `incidents.jsonl`) is moved to `NAME.1.jsonl` past this size in KiB.
    pub audit_max_kb: u64,
    /// Files kept of each audit trail, the current one included; the oldest
    /// is deleted when another is moved aside.
    pub audit_files: u32,
    /// `orchestrator.log` is moved to `orchestrator.log.1` past this size in KiB.
    pub log_max_kb: u64,
    /// Files kept of `orchestrator.log`, the current one included.
    pub log_files: u32,
    /// Days a file is kept in `notes/archive/`, `evidence/` and `proposals/`.
    pub kept_days: u64,
    /// Files kept in each of those directories; the oldest go first.
    pub kept_files: u32,
    /// Days `state.db` keeps resolved incidents, decided or expired
    /// approvals and the rows of finished automatic actions.
    pub db_days: u64,
    /// Seconds between two records of a failure that repeats unchanged (the
    /// same error deciding the same incident, an endpoint failing the same
    /// way): it is recorded once, then counted, and the count is recorded
    /// when the state changes and at least this often.
    pub repeat_every: u64,
}

/// The host's NixOS configuration and system profile, as macha may refer to them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NixosConfig {
    /// The directory (a git checkout, usually a flake) holding the NixOS
    /// configuration; `propose_config_change` may only name files in it.
    /// Unset: configuration changes are not proposed.
    pub config_dir: Option<PathBuf>,
    /// The flake `nixos_rebuild` builds, as `nixos-rebuild --flake` takes it
    /// (`/etc/nixos#web1`). Unset: `nixos_rebuild` is refused.
    pub flake: Option<String>,
    /// The system profile whose `NAME-N-link` siblings are the generations.
    pub profile: PathBuf,
    /// The link to the running system.
    pub current_system: PathBuf,
    /// Hours after a switch during which the failure of a unit that changed
    /// in it is linked to it, and the rollback proposed.
    pub suspect_window_hours: u64,
    /// Minutes after a switch during which any incident is linked to it,
    /// as a weaker suspect (shown to the decision, no rollback proposed).
    pub suspect_nearby_minutes: u64,
}

impl Default for NixosConfig {
    fn default() -> Self {
        Self {
            config_dir: None,
            flake: None,
            profile: PathBuf::from("/nix/var/nix/profiles/system"),
            current_system: PathBuf::from("/run/current-system"),
            suspect_window_hours: 24,
            suspect_nearby_minutes: 10,
        }
    }
}

/// Notifications through a Gotify server; off while `url` is unset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GotifyConfig {
    /// Base URL of the Gotify server.
    pub url: Option<String>,
    /// File holding the application token; never the token itself.
    pub token_file: Option<PathBuf>,
    /// Hour of the day (0-23, local time) at which the daily digest is sent.
    pub digest_hour: u8,
    /// Most messages sent in one hour; the rest are rolled into the next digest.
    pub max_per_hour: u32,
    /// Seconds an incident must stay gone before "resolved" is sent; failing
    /// again sooner counts as a flap, not a new incident.
    pub resolve_after: u64,
    /// Seconds the model may be unreachable or answer garbage before a
    /// human is told.
    pub model_outage_after: u64,
    /// Messages kept for delivery while Gotify is unreachable; beyond this
    /// the oldest are dropped (and counted in the digest).
    pub max_queued: u32,
    /// Longest wait in seconds between two delivery attempts while Gotify
    /// is unreachable (the wait doubles from 5 s up to this).
    pub retry_max: u64,
    pub priorities: Priorities,
}

/// Gotify priorities per kind of message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Priorities {
    /// Something got better: resolved, carried out, recovered, digest.
    pub info: u8,
    /// Someone should look: an incident opened, an action waits for approval.
    pub attention: u8,
    /// A human is needed now: an action failed, an escalation, the model is down.
    pub urgent: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OllamaConfig {
    /// Base URL of the Ollama server.
    pub url: String,
    pub model: String,
    /// The model that turns texts into vectors (`POST /api/embed`) for the
    /// incident memory; on the same server, never on the fallback.
    pub embedding_model: String,
    /// Seconds before one request to the model is abandoned.
    pub timeout: u64,
    /// Context window requested from Ollama (`options.num_ctx`).
    pub num_ctx: u32,
    /// Cap on the answer's length in tokens (`options.num_predict`).
    pub num_predict: u32,
    pub temperature: f32,
    /// The sampler's seed (`options.seed`): the same prompt gets the same
    /// answer from the same model and server. None: the server picks one.
    pub seed: Option<u64>,
    /// Directory whose `*.md` files replace the built-in prompt templates.
    pub prompts_dir: Option<PathBuf>,
}

/// The model service in front of the endpoints: the queue, the fallback
/// endpoint, the record of calls and the per-cycle metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Requests this process sends to the model at once; the others wait,
    /// interactive first, then autonomous, then batch.
    pub concurrency: u32,
    /// Rounds of read-only tool calls a decision may take before it must
    /// answer; 0 offers no tools (single-shot decisions).
    pub tool_rounds: u32,
    /// Tokens kept free of the prompt in `ollama.num_ctx`, besides
    /// `ollama.num_predict`: the chat template, the tool definitions, the
    /// retry message.
    pub prompt_margin: u32,
    /// Size in KiB past which `metrics.jsonl` is moved to `metrics.1.jsonl`.
    pub metrics_max_kb: u64,
    /// Longest wait in seconds before the daemon asks again about an
    /// incident whose decision failed: the wait starts at `check_interval`
    /// and doubles with each failure in a row, up to this.
    pub retry_max: u64,
    pub calls: CallRecordConfig,
    /// A second endpoint, asked when the primary (`[ollama]`) cannot answer.
    pub fallback: Option<FallbackConfig>,
}

/// Limits of the record of model calls in `state_dir/model-calls/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallRecordConfig {
    /// A record file is closed past this size in KiB.
    pub max_file_kb: u64,
    /// The oldest files are deleted while all together exceed this many MiB.
    pub max_total_mb: u64,
    /// Files whose last record is older than this many days are deleted.
    pub max_age_days: u64,
}

/// Which HTTP API an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// Ollama's own `/api/chat`.
    Ollama,
    /// An OpenAI-compatible `/v1/chat/completions` (vLLM, llama.cpp, LiteLLM,
    /// Ollama's `/v1`).
    Openai,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Ollama => "ollama",
            Api::Openai => "openai",
        }
    }
}

/// The fallback endpoint. `url` and `model` are required.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    #[serde(default = "FallbackConfig::default_api")]
    pub api: Api,
    /// For `ollama`, the server's base URL; for `openai`, the base URL that
    /// ends in `/v1`.
    pub url: String,
    pub model: String,
    /// Seconds before one request to it is abandoned.
    #[serde(default = "FallbackConfig::default_timeout")]
    pub timeout: u64,
    /// A file holding a key sent as `Authorization: Bearer` (never the key itself).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
}

impl FallbackConfig {
    fn default_api() -> Api {
        Api::Ollama
    }

    fn default_timeout() -> u64 {
        120
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// A filesystem at or above this percentage of used space is `disk-full`.
    pub disk_full_percent: u8,
    /// Used memory at or above this percentage of total is `memory-pressure`.
    pub memory_pressure_percent: u8,
    /// This many err-or-worse journal lines from one unit within
    /// `error_burst_window` (the daemon) or since the previous check
    /// (`macha-check`) make an `error-burst`.
    pub error_burst_lines: u32,
    /// Seconds over which the daemon, following the journal, counts a
    /// unit's error lines.
    pub error_burst_window: u64,
    /// Journal lines of a failed unit given to the model as evidence.
    pub unit_log_lines: usize,
    /// A unit systemd restarted by itself (`Restart=`) this many times
    /// within `restart_loop_window` is a `restart-loop` incident.
    pub restart_loop_restarts: u32,
    /// Seconds over which a unit's restarts by systemd are counted.
    pub restart_loop_window: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActConfig {
    /// Seconds a unit is watched after a restart before it counts as healthy.
    pub settle_time: u64,
    /// Seconds to wait for systemd to finish the job of an action.
    pub job_timeout: u64,
    /// Seconds between two automatic actions on one incident; doubles with
    /// each further action.
    pub cooldown: u64,
    /// Automatic actions per hour, all incidents together; beyond, a human decides.
    pub max_auto_per_hour: u32,
    /// Automatic actions on one incident (in 24 hours) before it goes to a
    /// human; also the `NRestarts` beyond which systemd's own restarts count
    /// as a loop.
    pub max_auto_restarts: u32,
    /// Hours a queued action waits for approval before it expires.
    pub approval_ttl_hours: u64,
    /// Besides root, members of this group may approve and reject.
    pub approver_group: String,
    /// `collect_garbage` never deletes generations younger than this many
    /// days: they are what a rollback goes back to.
    pub gc_min_days: u32,
    /// `vacuum_journal` never shrinks the journal below this many MiB.
    pub journal_floor_mb: u64,
    /// Seconds to wait for a root helper unit (garbage collection, journal
    /// vacuum, rebuild, rollback) to finish.
    pub helper_timeout: u64,
    /// Seconds the units are watched after a switch, test or rollback that
    /// macha carried out (those active before and those it changed).
    pub switch_watch: u64,
    /// Whether a switch, test or rollback whose health check fails is
    /// reverted at once to the generation that ran before it.
    pub revert_failed_switch: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            autonomy_level: AutonomyLevel::Suggest,
            check_interval: 300,
            state_dir: PathBuf::from("/var/lib/macha-autonomous"),
            protected_units: Vec::new(),
            dbus_address: None,
            journal_dir: None,
            service_unit: UnitName::parse("macha-autonomous.service").expect("valid built-in name"),
            ollama: OllamaConfig::default(),
            model: ModelConfig::default(),
            detect: DetectConfig::default(),
            act: ActConfig::default(),
            gotify: GotifyConfig::default(),
            nixos: NixosConfig::default(),
            retention: RetentionConfig::default(),
            knowledge_base: KnowledgeBaseConfig::default(),
            remote: RemoteConfig::default(),
            metrics: MetricsConfig::default(),
            alertmanager: AlertmanagerConfig::default(),
            ntfy: NtfyConfig::default(),
            matrix: MatrixConfig::default(),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            audit_max_kb: 4096,
            audit_files: 8,
            log_max_kb: 16384,
            log_files: 2,
            kept_days: 90,
            kept_files: 1000,
            db_days: 90,
            repeat_every: 3600,
        }
    }
}

impl RetentionConfig {
    /// The audit trail's rotation (`audit_max_kb`, `audit_files`).
    pub fn audit(&self) -> Rotation {
        Rotation { max_bytes: self.audit_max_kb.saturating_mul(1024), files: self.audit_files }
    }

    /// `orchestrator.log`'s rotation (`log_max_kb`, `log_files`).
    pub fn log(&self) -> Rotation {
        Rotation { max_bytes: self.log_max_kb.saturating_mul(1024), files: self.log_files }
    }
}

impl Default for GotifyConfig {
    fn default() -> Self {
        Self {
            url: None,
            token_file: None,
            digest_hour: 8,
            max_per_hour: 20,
            resolve_after: 600,
            model_outage_after: 900,
            max_queued: 200,
            retry_max: 300,
            priorities: Priorities::default(),
        }
    }
}

impl Default for Priorities {
    fn default() -> Self {
        Self { info: 2, attention: 5, urgent: 8 }
    }
}

impl Default for OllamaConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:11434".into(),
            model: "llama3.1:70b".into(),
            embedding_model: "nomic-embed-text".into(),
            timeout: 120,
            num_ctx: 8192,
            num_predict: MIN_NUM_PREDICT,
            temperature: 0.1,
            seed: None,
            prompts_dir: None,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            concurrency: 1,
            tool_rounds: 4,
            prompt_margin: 1024,
            metrics_max_kb: 4096,
            retry_max: 900,
            calls: CallRecordConfig::default(),
            fallback: None,
        }
    }
}

impl Default for CallRecordConfig {
    fn default() -> Self {
        Self { max_file_kb: 1024, max_total_mb: 64, max_age_days: 30 }
    }
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            disk_full_percent: 90,
            memory_pressure_percent: 90,
            error_burst_lines: 20,
            error_burst_window: 300,
            unit_log_lines: 30,
            restart_loop_restarts: 3,
            restart_loop_window: 600,
        }
    }
}

impl Default for ActConfig {
    fn default() -> Self {
        Self {
            settle_time: 5,
            job_timeout: 60,
            cooldown: 300,
            max_auto_per_hour: 10,
            max_auto_restarts: 3,
            approval_ttl_hours: 24,
            approver_group: "wheel".into(),
            gc_min_days: 7,
            journal_floor_mb: 256,
            helper_timeout: 1800,
            switch_watch: 60,
            revert_failed_switch: true,
        }
    }
}

/// A configuration file that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Missing, not a regular file, or larger than [`FILE`] allows.
    #[error("{0}")]
    Read(bounded::FileError),
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: Invalid },
}

/// What is wrong in a configuration's text: the key, and what it accepts.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// Not TOML; the parser's own words, which name the line.
    #[error("{0}")]
    Syntax(String),
    /// A key of the wrong type or name; the deserializer's words, after the key.
    #[error("{}{message}", .key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Field { key: Option<String>, message: String },
    #[error("key `{}`: {value} is out of range (accepted: {} to {} {})", .bound.key, .bound.min, .bound.max, .bound.unit)]
    OutOfRange { bound: Bound, value: u64 },
    #[error("key `{key}`: {url:?} is not an http:// or https:// URL")]
    NotHttp { key: &'static str, url: String },
    #[error("key `{key}`: {path:?} is not an absolute path")]
    NotAbsolute { key: &'static str, path: PathBuf },
    #[error("key `nixos.flake`: {0}")]
    Flake(crate::catalog::CatalogError),
    /// A key that breaks a fixed rule; `rule` says what it must be.
    #[error("key `{key}`: {rule}")]
    Rule { key: &'static str, rule: &'static str },
    #[error("key `model.prompt_margin`: {margin} leaves less than 1024 tokens of `ollama.num_ctx` ({num_ctx}) for the prompt once `ollama.num_predict` ({num_predict}) is kept free")]
    PromptMargin { margin: u32, num_ctx: u32, num_predict: u32 },

    #[error("key `remote.hosts` ({host}): {message}")]
    RemoteHost { host: String, message: String },
    #[error("key `model.calls.max_total_mb`: {total_mb} MiB cannot hold two files of `model.calls.max_file_kb` ({file_kb} KiB); raise it or lower the file size")]
    CallsTotal { total_mb: u64, file_kb: u64 },
}

impl Invalid {
    const fn rule(key: &'static str, rule: &'static str) -> Self {
        Self::Rule { key, rule }
    }
}

/// What a numeric key accepts: the range, and what the number counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub key: &'static str,
    pub min: u64,
    pub max: u64,
    /// What one unit of the value is: "seconds", "hours", "KiB" ...
    pub unit: &'static str,
}

impl Bound {
    const fn new(key: &'static str, min: u64, max: u64, unit: &'static str) -> Self {
        Self { key, min, max, unit }
    }

    fn check(&self, value: u64) -> Result<(), Invalid> {
        if (self.min..=self.max).contains(&value) {
            return Ok(());
        }
        Err(Invalid::OutOfRange { bound: *self, value })
    }
}

/// Chroma's rule for the names of tenants, databases and collections: 3 to
/// 512 of `[a-zA-Z0-9._-]`, beginning and ending with a letter or digit.
/// The Chroma client (`kb::chroma`) checks its names by this rule too,
/// since they go into URL paths.
pub fn chroma_name(name: &str) -> bool {
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    (3..=512).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && ends_ok(name.chars().next())
        && ends_ok(name.chars().last())
}

/// A number of seconds from this file as a span of time. The ranges keep
/// every accepted value far inside what a span holds; anything larger
/// saturates rather than wrapping negative or panicking.
pub fn seconds(n: u64) -> chrono::TimeDelta {
    i64::try_from(n).ok().and_then(chrono::TimeDelta::try_seconds).unwrap_or(chrono::TimeDelta::MAX)
}

/// A number of hours from this file as a span of time, saturating like
/// [`seconds`].
pub fn hours(n: u64) -> chrono::TimeDelta {
    i64::try_from(n).ok().and_then(chrono::TimeDelta::try_hours).unwrap_or(chrono::TimeDelta::MAX)
}

impl ActConfig {
    /// How long a queued action waits for approval.
    pub fn approval_ttl(&self) -> chrono::TimeDelta {
        hours(self.approval_ttl_hours)
    }

    /// The longest an action can take once started, and a margin: a unit's
    /// job and its check, or a helper, the health check of the system it
    /// switched to and the helper of the revert. An approval claimed longer
    /// ago than this was interrupted.
    pub fn execution_limit(&self) -> chrono::TimeDelta {
        let unit = self.job_timeout.saturating_add(self.settle_time);
        let helper = self.helper_timeout.saturating_mul(2).saturating_add(self.switch_watch);
        seconds(unit.max(helper).saturating_add(30))
    }
}

/// The least `ollama.num_predict` accepted: the longest decision the
/// decision schema allows fits in it (a test in `decide::decision` counts
/// it), so a model held to the schema is never cut off mid-answer.
pub const MIN_NUM_PREDICT: u32 = 2048;

/// Default location of the file written by the NixOS module.
pub const DEFAULT_PATH: &str = "/etc/macha-autonomous/config.toml";

/// The most read of a config file: a few MiB is far more than every key
/// with long lists of protected units.
pub const FILE: FileKind = FileKind { name: "config file", limit: Size::mib(4) };

impl Config {
    /// Reads and validates a config file. A missing file at the default path
    /// means "all defaults"; a missing file that was asked for is an error.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match bounded::read_to_string(&path, FILE) {
            Ok(t) => t,
            Err(e) if !required && e.is_not_found() => return Ok(Config::default()),
            Err(e) => return Err(ConfigError::Read(e)),
        };
        Self::parse(&text).map_err(|message| ConfigError::Invalid { path, message })
    }

    /// Parses TOML text; the error names the key and what it accepts.
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let de = toml::Deserializer::parse(text).map_err(|e| Invalid::Syntax(e.to_string().trim_end().to_owned()))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().message().to_owned();
            Invalid::Field { key: (key != ".").then_some(key), message }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Invalid> {
        for (bound, value) in self.numbers() {
            bound.check(value)?;
        }
        if !(self.ollama.url.starts_with("http://") || self.ollama.url.starts_with("https://")) {
            return Err(Invalid::NotHttp { key: "ollama.url", url: self.ollama.url.clone() });
        }
        if self.ollama.model.trim().is_empty() {
            return Err(Invalid::rule("ollama.model", "must name a model, for example \"llama3.1:70b\""));
        }
        if self.ollama.embedding_model.trim().is_empty() {
            return Err(Invalid::rule(
                "ollama.embedding_model",
                "must name an embedding model, for example \"nomic-embed-text\"",
            ));
        }
        if !(0.0..=2.0).contains(&self.ollama.temperature) {
            return Err(Invalid::rule("ollama.temperature", "accepted values are 0.0 to 2.0"));
        }
        self.validate_model()?;
        if self.dbus_address.as_deref().is_some_and(|a| !a.contains(':')) {
            return Err(Invalid::rule(
                "dbus_address",
                "expected a D-Bus address such as \"unix:path=/run/dbus/system_bus_socket\"",
            ));
        }
        if self.act.approver_group.trim().is_empty() {
            return Err(Invalid::rule("act.approver_group", "must name a Unix group"));
        }
        if let Some(flake) = &self.nixos.flake {
            crate::catalog::check_flake(flake).map_err(Invalid::Flake)?;
        }
        self.validate_remote()?;
        self.validate_alertmanager()?;
        for (key, p) in [("nixos.profile", &self.nixos.profile), ("nixos.current_system", &self.nixos.current_system)] {
            if !p.is_absolute() {
                return Err(Invalid::NotAbsolute { key, path: p.clone() });
            }
        }
        let g = &self.gotify;
        if let Some(url) = &g.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Invalid::NotHttp { key: "gotify.url", url: url.clone() });
            }
            if url.contains('?') || url.contains('@') {
                return Err(Invalid::rule("gotify.url", "must not carry a token or credentials; put the application token in the file named by `gotify.token_file`"));
            }
            if g.token_file.is_none() {
                return Err(Invalid::rule(
                    "gotify.token_file",
                    "required when `gotify.url` is set (a file holding the application token)",
                ));
            }
        }
        self.validate_channels()?;
        self.validate_knowledge_base()?;
        if !self.state_dir.is_absolute() {
            return Err(Invalid::NotAbsolute { key: "state_dir", path: self.state_dir.clone() });
        }
        if let Some(dir) = self.journal_dir.as_ref().filter(|d| !d.is_absolute()) {
            return Err(Invalid::NotAbsolute { key: "journal_dir", path: dir.clone() });
        }
        Ok(())
    }

    /// Every numeric key with its value and what it accepts: seconds of a
    /// wait that a cycle, an approval or a delivery sits through, hours,
    /// counts and sizes, each bounded to what makes sense, so that no
    /// accepted value overflows a computation or stalls the daemon.
    pub fn numbers(&self) -> Vec<(Bound, u64)> {
        const DAY: u64 = 86_400;
        let (o, m, d, a, g) = (&self.ollama, &self.model, &self.detect, &self.act, &self.gotify);
        let r = &self.retention;
        let k = &self.knowledge_base;
        let mut out = vec![
            (Bound::new("knowledge_base.recall", 0, 20, "incidents"), u64::from(k.recall)),
            (Bound::new("knowledge_base.prompt_share_percent", 1, 50, "percent"), k.prompt_share_percent),
            (Bound::new("knowledge_base.known_fix_after", 0, 100, "verifications"), u64::from(k.known_fix_after)),
            (Bound::new("knowledge_base.failed_fix_days", 0, 365, "days"), k.failed_fix_days),
            (Bound::new("knowledge_base.max_memories", 100, 10_000_000, "memories"), k.max_memories),
            (Bound::new("knowledge_base.max_age_days", 1, 36_500, "days"), k.max_age_days),
            (Bound::new("knowledge_base.chroma.timeout", 1, 600, "seconds"), k.chroma.timeout),
            (Bound::new("nixos.suspect_window_hours", 1, 720, "hours"), self.nixos.suspect_window_hours),
            (Bound::new("nixos.suspect_nearby_minutes", 0, 1440, "minutes"), self.nixos.suspect_nearby_minutes),
            (Bound::new("check_interval", 1, DAY, "seconds"), self.check_interval),
            (Bound::new("ollama.timeout", 1, 3_600, "seconds"), o.timeout),
            (Bound::new("ollama.num_ctx", 512, 1_048_576, "tokens"), u64::from(o.num_ctx)),
            // The longest decision the schema allows fits in the least.
            (Bound::new("ollama.num_predict", MIN_NUM_PREDICT as u64, 131_072, "tokens"), u64::from(o.num_predict)),
            (Bound::new("model.concurrency", 1, 64, "requests"), u64::from(m.concurrency)),
            (Bound::new("model.tool_rounds", 0, 10, "rounds"), u64::from(m.tool_rounds)),
            (Bound::new("model.prompt_margin", 0, 1_048_576, "tokens"), u64::from(m.prompt_margin)),
            (Bound::new("model.metrics_max_kb", 16, 1_048_576, "KiB"), m.metrics_max_kb),
            (Bound::new("model.retry_max", 1, DAY, "seconds"), m.retry_max),
            (Bound::new("model.calls.max_file_kb", 16, 1_048_576, "KiB"), m.calls.max_file_kb),
            (Bound::new("model.calls.max_total_mb", 1, 1_048_576, "MiB"), m.calls.max_total_mb),
            (Bound::new("model.calls.max_age_days", 1, 3_650, "days"), m.calls.max_age_days),
            (Bound::new("detect.disk_full_percent", 1, 100, "percent"), u64::from(d.disk_full_percent)),
            (Bound::new("detect.memory_pressure_percent", 1, 100, "percent"), u64::from(d.memory_pressure_percent)),
            (Bound::new("detect.error_burst_lines", 1, 1_000_000, "lines"), u64::from(d.error_burst_lines)),
            (Bound::new("detect.error_burst_window", 1, DAY, "seconds"), d.error_burst_window),
            (
                Bound::new("detect.unit_log_lines", 1, 1_000, "lines"),
                u64::try_from(d.unit_log_lines).unwrap_or(u64::MAX),
            ),
            (Bound::new("detect.restart_loop_restarts", 1, 10_000, "restarts"), u64::from(d.restart_loop_restarts)),
            (Bound::new("detect.restart_loop_window", 1, DAY, "seconds"), d.restart_loop_window),
            (Bound::new("act.settle_time", 0, 600, "seconds"), a.settle_time),
            (Bound::new("act.job_timeout", 1, 3_600, "seconds"), a.job_timeout),
            (Bound::new("act.cooldown", 0, DAY, "seconds"), a.cooldown),
            (Bound::new("act.max_auto_per_hour", 0, 1_000, "actions"), u64::from(a.max_auto_per_hour)),
            (Bound::new("act.max_auto_restarts", 0, 100, "actions"), u64::from(a.max_auto_restarts)),
            (Bound::new("act.approval_ttl_hours", 1, 720, "hours"), a.approval_ttl_hours),
            (Bound::new("act.gc_min_days", 1, 3_650, "days"), u64::from(a.gc_min_days)),
            (Bound::new("act.journal_floor_mb", 16, 1_048_576, "MiB"), a.journal_floor_mb),
            (Bound::new("act.helper_timeout", 1, DAY, "seconds"), a.helper_timeout),
            (Bound::new("act.switch_watch", 1, 3_600, "seconds"), a.switch_watch),
            (Bound::new("remote.connect_timeout", 1, 300, "seconds"), self.remote.connect_timeout),
            (Bound::new("remote.command_timeout", 1, 3_600, "seconds"), self.remote.command_timeout),
            (Bound::new("remote.max_parallel", 1, 256, "hosts"), u64::from(self.remote.max_parallel)),
            (Bound::new("remote.max_hosts_acting", 0, 10_000, "hosts"), u64::from(self.remote.max_hosts_acting)),
            (Bound::new("remote.acting_window", 60, 7 * DAY, "seconds"), self.remote.acting_window),
            (Bound::new("gotify.digest_hour", 0, 23, "(hour of the day)"), u64::from(g.digest_hour)),
            (Bound::new("gotify.max_per_hour", 0, 1_000, "messages"), u64::from(g.max_per_hour)),
            (Bound::new("gotify.resolve_after", 0, DAY, "seconds"), g.resolve_after),
            (Bound::new("gotify.model_outage_after", 0, DAY, "seconds"), g.model_outage_after),
            (Bound::new("gotify.max_queued", 1, 100_000, "messages"), u64::from(g.max_queued)),
            (Bound::new("gotify.retry_max", 1, DAY, "seconds"), g.retry_max),
            (Bound::new("gotify.priorities.info", 0, 10, "(Gotify priority)"), u64::from(g.priorities.info)),
            (Bound::new("gotify.priorities.attention", 0, 10, "(Gotify priority)"), u64::from(g.priorities.attention)),
            (Bound::new("gotify.priorities.urgent", 0, 10, "(Gotify priority)"), u64::from(g.priorities.urgent)),
            // An audit file is read whole by `macha-logs verify`: never past `rotation::MAX_READ_BYTES`.
            (Bound::new("retention.audit_max_kb", 16, rotation::MAX_READ_BYTES / 1024, "KiB"), r.audit_max_kb),
            (Bound::new("retention.audit_files", 2, 1_000, "files"), u64::from(r.audit_files)),
            // `macha-logs orchestrator` reads the log whole, as far as `rotation::MAX_READ_BYTES`.
            (Bound::new("retention.log_max_kb", 16, rotation::MAX_READ_BYTES / 1024, "KiB"), r.log_max_kb),
            (Bound::new("retention.log_files", 2, 100, "files"), u64::from(r.log_files)),
            (Bound::new("retention.kept_days", 1, 3_650, "days"), r.kept_days),
            (Bound::new("retention.kept_files", 1, 100_000, "files"), u64::from(r.kept_files)),
            // Storm control counts the automatic actions of the last 24 hours.
            (Bound::new("retention.db_days", 2, 3_650, "days"), r.db_days),
            (Bound::new("retention.repeat_every", 60, DAY, "seconds"), r.repeat_every),
        ];
        if let Some(f) = &m.fallback {
            out.push((Bound::new("model.fallback.timeout", 1, 3_600, "seconds"), f.timeout));
        }
        out
    }

    /// ntfy's and Matrix's keys: a URL with no credentials in it, a
    /// topic or room that is one, a token in a file.
    fn validate_channels(&self) -> Result<(), Invalid> {
        let url_ok = |key: &'static str, url: &String| {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Invalid::NotHttp { key, url: url.clone() });
            }
            if url.contains('?') || url.contains('@') {
                return Err(Invalid::rule(
                    key,
                    "must not carry a token or credentials; put the token in its token_file",
                ));
            }
            Ok(())
        };
        let n = &self.ntfy;
        if let Some(url) = &n.url {
            url_ok("ntfy.url", url)?;
            let topic_ok = n.topic.as_ref().is_some_and(|t| {
                !t.is_empty() && t.len() <= 64 && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            });
            if !topic_ok {
                return Err(Invalid::rule(
                    "ntfy.topic",
                    "required with `ntfy.url`: 1 to 64 letters, digits, '-' or '_'",
                ));
            }
        }
        let m = &self.matrix;
        if let Some(url) = &m.homeserver {
            url_ok("matrix.homeserver", url)?;
            let room_ok = m.room_id.as_ref().is_some_and(|r| {
                r.starts_with('!')
                    && r.contains(':')
                    && r.len() <= 255
                    && !r.chars().any(|c| c.is_whitespace() || c == '/')
            });
            if !room_ok {
                return Err(Invalid::rule(
                    "matrix.room_id",
                    "required with `matrix.homeserver`: a room id, `!abc:example.org`",
                ));
            }
            if m.token_file.is_none() {
                return Err(Invalid::rule(
                    "matrix.token_file",
                    "required with `matrix.homeserver`: a file holding the access token",
                ));
            }
        }
        for (key, path) in [("ntfy.token_file", &n.token_file), ("matrix.token_file", &m.token_file)] {
            if let Some(p) = path.as_ref().filter(|p| !p.is_absolute()) {
                return Err(Invalid::NotAbsolute { key, path: p.clone() });
            }
        }
        Ok(())
    }

    fn validate_alertmanager(&self) -> Result<(), Invalid> {
        let a = &self.alertmanager;
        match &a.token_file {
            None if a.listen.is_some() => {
                return Err(Invalid::rule(
                    "alertmanager.token_file",
                    "must name the file of the bearer token Alertmanager sends when `alertmanager.listen` is set",
                ))
            }
            Some(path) if !path.is_absolute() => {
                return Err(Invalid::NotAbsolute { key: "alertmanager.token_file", path: path.clone() });
            }
            _ => {}
        }
        let name_ok = |n: &String| {
            !n.is_empty()
                && n.len() <= 128
                && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if a.host_labels.is_empty() || a.host_labels.len() > 16 || !a.host_labels.iter().all(name_ok) {
            return Err(Invalid::rule(
                "alertmanager.host_labels",
                "1 to 16 label names, each of letters, digits and '_'",
            ));
        }
        if a.host_names.len() > 64 || !a.host_names.iter().all(name_ok) {
            return Err(Invalid::rule(
                "alertmanager.host_names",
                "at most 64 host names, each of letters, digits, '.', '_' or '-'",
            ));
        }
        Ok(())
    }

    fn validate_remote(&self) -> Result<(), Invalid> {
        let r = &self.remote;
        if !r.hosts.is_empty() && r.private_key_file.is_none() {
            return Err(Invalid::rule(
                "remote.private_key_file",
                "must name the controller's key when hosts are listed",
            ));
        }
        if r.private_key_file.as_ref().is_some_and(|p| !p.is_absolute()) {
            let path = r.private_key_file.clone().unwrap_or_default();
            return Err(Invalid::NotAbsolute { key: "remote.private_key_file", path });
        }
        if r.hosts.len() > MAX_REMOTE_HOSTS {
            return Err(Invalid::rule("remote.hosts", "at most 10000 hosts"));
        }
        let mut names = std::collections::BTreeSet::new();
        for h in &r.hosts {
            let bad = |message: String| Invalid::RemoteHost { host: h.name.chars().take(64).collect(), message };
            let name_ok = !h.name.is_empty()
                && h.name.len() <= 64
                && h.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !name_ok {
                return Err(bad("`name` must be 1 to 64 letters, digits, '.', '_' or '-'".into()));
            }
            if !names.insert(h.name.as_str()) {
                return Err(bad("another host has this name".into()));
            }
            if h.address.is_empty() || h.address.len() > 253 || h.address.chars().any(|c| c.is_whitespace() || c == '/')
            {
                return Err(bad(format!("`address` {:?} is not a host name or IP address", h.address)));
            }
            if h.port == 0 {
                return Err(bad("`port` must be 1 to 65535".into()));
            }
            if h.user.is_empty() || !h.user.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
                return Err(bad(format!("`user` {:?} is not a user name", h.user)));
            }
            match (&h.host_key, &h.known_hosts) {
                (Some(key), None) => {
                    crate::sshkey::parse_public(key).map_err(|e| bad(format!("`host_key`: {e}")))?;
                }
                (None, Some(path)) if path.is_absolute() => {}
                (None, Some(path)) => return Err(bad(format!("`known_hosts` {path:?} is not an absolute path"))),
                _ => return Err(bad("exactly one of `host_key` and `known_hosts` is needed".into())),
            }
        }
        Ok(())
    }

    fn validate_knowledge_base(&self) -> Result<(), Invalid> {
        let c = &self.knowledge_base.chroma;
        if let Some(url) = &c.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Invalid::NotHttp { key: "knowledge_base.chroma.url", url: url.clone() });
            }
            if url.contains('?') || url.contains('@') {
                return Err(Invalid::rule(
                    "knowledge_base.chroma.url",
                    "must not carry a token or credentials; put the token in the file named by \
                     `knowledge_base.chroma.token_file`",
                ));
            }
        }
        if self.knowledge_base.backend == KbBackend::Chroma && c.url.is_none() {
            return Err(Invalid::rule(
                "knowledge_base.chroma.url",
                "required when `knowledge_base.backend` is \"chroma\" (the server's base URL, for example \
                 \"http://127.0.0.1:8000\")",
            ));
        }
        if let Some(path) = c.token_file.as_ref().filter(|p| !p.is_absolute()) {
            return Err(Invalid::NotAbsolute { key: "knowledge_base.chroma.token_file", path: path.clone() });
        }
        if let Some(path) = self.knowledge_base.runbooks.as_ref().filter(|p| !p.is_absolute()) {
            return Err(Invalid::NotAbsolute { key: "knowledge_base.runbooks", path: path.clone() });
        }
        for (key, name) in [
            ("knowledge_base.chroma.tenant", &c.tenant),
            ("knowledge_base.chroma.database", &c.database),
            ("knowledge_base.chroma.collection", &c.collection),
        ] {
            if !chroma_name(name) {
                return Err(Invalid::rule(
                    key,
                    "must be a name Chroma accepts: 3 to 512 letters, digits, '.', '_' or '-', beginning and \
                     ending with a letter or digit",
                ));
            }
        }
        Ok(())
    }

    fn validate_model(&self) -> Result<(), Invalid> {
        let m = &self.model;
        let room = u64::from(self.ollama.num_ctx) - u64::from(self.ollama.num_predict.min(self.ollama.num_ctx));
        if u64::from(m.prompt_margin) + 1024 > room {
            return Err(Invalid::PromptMargin {
                margin: m.prompt_margin,
                num_ctx: self.ollama.num_ctx,
                num_predict: self.ollama.num_predict,
            });
        }
        if m.calls.max_total_mb * 1024 < 2 * m.calls.max_file_kb {
            return Err(Invalid::CallsTotal { total_mb: m.calls.max_total_mb, file_kb: m.calls.max_file_kb });
        }
        if let Some(f) = &m.fallback {
            if !(f.url.starts_with("http://") || f.url.starts_with("https://")) {
                return Err(Invalid::NotHttp { key: "model.fallback.url", url: f.url.clone() });
            }
            if f.url.contains('@') || f.url.contains('?') {
                return Err(Invalid::rule(
                    "model.fallback.url",
                    "must not carry credentials; put a key in the file named by `model.fallback.api_key_file`",
                ));
            }
            if f.model.trim().is_empty() {
                return Err(Invalid::rule("model.fallback.model", "must name a model"));
            }
        }
        Ok(())
    }

    pub fn check_interval(&self) -> Duration {
        Duration::from_secs(self.check_interval)
    }

    /// `retention.repeat_every` as a span of time.
    pub fn repeat_every(&self) -> chrono::TimeDelta {
        seconds(self.retention.repeat_every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.autonomy_level, AutonomyLevel::Suggest);
        assert_eq!(c.check_interval, 300);
        assert_eq!(c.ollama.model, "llama3.1:70b");
        assert_eq!(c.ollama.embedding_model, "nomic-embed-text");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/macha-autonomous"));
        assert!(c.dbus_address.is_none() && c.journal_dir.is_none());
    }

    #[test]
    fn a_blank_embedding_model_is_refused_naming_the_key() {
        let err = Config::parse("[ollama]\nembedding_model = \" \"\n").unwrap_err().to_string();
        assert!(err.contains("ollama.embedding_model") && err.contains("nomic-embed-text"), "{err}");
    }

    #[test]
    fn the_chroma_backend_needs_a_url_and_the_embedded_one_is_the_default() {
        assert_eq!(Config::parse("").unwrap().knowledge_base.backend, KbBackend::Embedded);
        let err = Config::parse("[knowledge_base]\nbackend = \"chroma\"\n").unwrap_err().to_string();
        assert!(err.starts_with("key `knowledge_base.chroma.url`: required when"), "{err}");
        let c = Config::parse(
            "[knowledge_base]\nbackend = \"chroma\"\n[knowledge_base.chroma]\nurl = \"http://10.0.0.5:8000\"\n",
        )
        .unwrap();
        assert_eq!(c.knowledge_base.backend, KbBackend::Chroma);
        assert_eq!(c.knowledge_base.chroma.collection, "macha-incidents");
    }

    #[test]
    fn example_file_lists_every_key_with_its_default() {
        let example = include_str!("../macha.example.toml");
        let parsed = Config::parse(example).unwrap();
        let as_toml = |c: &Config| toml::to_string(c).unwrap();
        assert_eq!(as_toml(&parsed), as_toml(&Config::default()));
        fn leaves(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
            for (key, value) in table {
                match value.as_table() {
                    Some(t) => {
                        let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                        out.push(format!("[{name}]"));
                        leaves(&name, t, out);
                    }
                    None => out.push(format!("{key} =")),
                }
            }
        }
        let mut expected = Vec::new();
        leaves("", &toml::from_str(&as_toml(&Config::default())).unwrap(), &mut expected);
        for k in expected {
            assert!(example.contains(&k), "macha.example.toml does not document `{k}`");
        }
    }

    #[test]
    fn the_reviewers_values_are_refused_with_the_key_and_its_range() {
        for (text, said) in [
            (
                "check_interval = 18446744073709551615",
                "key `check_interval`: 18446744073709551615 is out of range (accepted: 1 to 86400 seconds)",
            ),
            (
                "[act]\napproval_ttl_hours = 9223372036854775807",
                "key `act.approval_ttl_hours`: 9223372036854775807 is out of range (accepted: 1 to 720 hours)",
            ),
            (
                "[act]\napproval_ttl_hours = 18446744073709551615",
                "key `act.approval_ttl_hours`: 18446744073709551615 is out of range (accepted: 1 to 720 hours)",
            ),
            (
                "[gotify]\nresolve_after = 9223372036854775807",
                "key `gotify.resolve_after`: 9223372036854775807 is out of range (accepted: 0 to 86400 seconds)",
            ),
            (
                "[act]\njob_timeout = 9223372036854775807",
                "key `act.job_timeout`: 9223372036854775807 is out of range (accepted: 1 to 3600 seconds)",
            ),
            (
                "[act]\nsettle_time = 4294967296",
                "key `act.settle_time`: 4294967296 is out of range (accepted: 0 to 600 seconds)",
            ),
            (
                "[gotify]\nretry_max = 18446744073709551615",
                "key `gotify.retry_max`: 18446744073709551615 is out of range (accepted: 1 to 86400 seconds)",
            ),
            (
                "[model.calls]\nmax_total_mb = 18446744073709551615",
                "key `model.calls.max_total_mb`: 18446744073709551615 is out of range (accepted: 1 to 1048576 MiB)",
            ),
            (
                "[act]\njournal_floor_mb = 17592186044417",
                "key `act.journal_floor_mb`: 17592186044417 is out of range (accepted: 16 to 1048576 MiB)",
            ),
            ("journal_dir = \"var/log/journal\"", "key `journal_dir`: \"var/log/journal\" is not an absolute path"),
        ] {
            assert_eq!(Config::parse(text).unwrap_err().to_string(), said, "{text}");
        }
    }

    #[test]
    fn every_numeric_key_has_a_range() {
        let config = Config::parse("[model.fallback]\nurl = \"http://x:11434\"\nmodel = \"m\"").unwrap();
        fn numeric(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
            for (key, value) in table {
                let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                match value {
                    toml::Value::Table(t) => numeric(&name, t, out),
                    toml::Value::Integer(_) => out.push(name),
                    _ => {}
                }
            }
        }
        let mut keys = Vec::new();
        numeric("", &toml::from_str(&toml::to_string(&config).unwrap()).unwrap(), &mut keys);
        let mut bounded: Vec<String> = config.numbers().iter().map(|(b, _)| b.key.to_owned()).collect();
        keys.sort();
        bounded.sort();
        assert_eq!(keys, bounded);
        for (b, value) in config.numbers() {
            assert!(b.check(value).is_ok(), "the default of `{}` is out of its own range", b.key);
            assert!(b.check(b.min).is_ok() && b.check(b.max).is_ok() && b.check(b.max + 1).is_err(), "{}", b.key);
        }
    }

    #[test]
    fn example_file_gives_the_range_of_every_numeric_key() {
        let example = include_str!("../macha.example.toml");
        let config = Config::parse("[model.fallback]\nurl = \"http://x:11434\"\nmodel = \"m\"").unwrap();
        // The comment lines above `key =` (commented out or not) in its table.
        let comment_of = |key: &str| -> String {
            let (table, name) = key.rsplit_once('.').unwrap_or(("", key));
            let (mut current, mut comment) = (String::new(), Vec::new());
            for line in example.lines() {
                let bare = line.trim_start_matches('#').trim();
                if bare.starts_with('[') && bare.ends_with(']') {
                    current = bare[1..bare.len() - 1].to_owned();
                    comment.clear();
                } else if bare.split_once(" =").is_some_and(|(k, _)| !k.contains(' ')) {
                    if current == table && bare.starts_with(&format!("{name} =")) {
                        return comment.join(" ");
                    }
                    comment.clear();
                } else if line.starts_with('#') {
                    comment.push(bare.to_owned());
                }
            }
            panic!("macha.example.toml has no `{key}`")
        };
        for (b, _) in config.numbers() {
            let range = format!("{} to {}", b.min, b.max);
            assert!(
                comment_of(b.key).contains(&range),
                "macha.example.toml does not give `{}` its range {range}",
                b.key
            );
        }
    }

    #[test]
    fn spans_from_the_file_saturate_instead_of_overflowing() {
        assert_eq!(seconds(300), chrono::TimeDelta::seconds(300));
        assert_eq!(hours(24), chrono::TimeDelta::hours(24));
        assert_eq!(seconds(u64::MAX), chrono::TimeDelta::MAX);
        assert_eq!(hours(i64::MAX as u64), chrono::TimeDelta::MAX);
        let act = ActConfig { job_timeout: u64::MAX, settle_time: u64::MAX, ..ActConfig::default() };
        assert_eq!(act.execution_limit(), chrono::TimeDelta::MAX);
        // A rebuild, its health check and a revert: 1800 + 60 + 1800 + 30.
        assert_eq!(ActConfig::default().execution_limit(), chrono::TimeDelta::seconds(3690));
        let restarts_only = ActConfig { helper_timeout: 1, switch_watch: 1, ..ActConfig::default() };
        assert_eq!(restarts_only.execution_limit(), chrono::TimeDelta::seconds(95));
    }

    #[test]
    fn a_remote_host_without_a_checked_key_or_with_a_bad_name_is_refused_by_name() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GZT5";
        let with = |host: &str| {
            Config::parse(&format!("[remote]\nprivate_key_file = \"/k\"\n\n[[remote.hosts]]\n{host}"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(with(&format!("name = \"web1\"\naddress = \"10.0.0.1\"\nhost_key = \"{key}\"")), "");
        assert_eq!(with("name = \"web1\"\naddress = \"10.0.0.1\"\nknown_hosts = \"/etc/ssh/ssh_known_hosts\""), "");
        let cases = [
            ("name = \"web1\"\naddress = \"10.0.0.1\"", "exactly one of `host_key` and `known_hosts`"),
            (
                &format!("name = \"web1\"\naddress = \"a\"\nhost_key = \"{key}\"\nknown_hosts = \"/k\""),
                "exactly one of",
            ),
            ("name = \"web1\"\naddress = \"a\"\nhost_key = \"ssh-ed25519 AAAA\"", "(web1): `host_key`: the key's data"),
            ("name = \"web1\"\naddress = \"a\"\nknown_hosts = \"rel/known\"", "is not an absolute path"),
            (&format!("name = \"../x\"\naddress = \"a\"\nhost_key = \"{key}\""), "`name` must be"),
            (&format!("name = \"w\"\naddress = \"a b\"\nhost_key = \"{key}\""), "is not a host name"),
            (&format!("name = \"w\"\naddress = \"a\"\nuser = \"root;id\"\nhost_key = \"{key}\""), "is not a user name"),
            (&format!("name = \"w\"\naddress = \"a\"\nport = 0\nhost_key = \"{key}\""), "`port` must be"),
            (&format!("name = \"w\"\naddress = \"a\"\nhost_key = \"{key}\"\nshell = true"), "unknown field `shell`"),
        ];
        for (host, said) in cases {
            let e = with(host);
            assert!(e.contains(said), "{host}: {e}");
        }
        let twice = format!("name = \"w\"\naddress = \"a\"\nhost_key = \"{key}\"\n\n[[remote.hosts]]\nname = \"w\"\naddress = \"b\"\nhost_key = \"{key}\"");
        assert!(with(&twice).contains("another host has this name"), "{}", with(&twice));
        let e = Config::parse(&format!("[[remote.hosts]]\nname = \"w\"\naddress = \"a\"\nhost_key = \"{key}\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("remote.private_key_file"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("autonomy = \"observe\"").unwrap_err().to_string();
        assert!(err.contains("unknown field `autonomy`"), "{err}");
        assert!(err.contains("autonomy_level"), "{err}");
        let err = Config::parse("[ollama]\nmodell = \"x\"").unwrap_err().to_string();
        assert!(err.contains("ollama") && err.contains("modell"), "{err}");
    }

    #[test]
    fn bad_autonomy_level_names_key_and_accepted_values() {
        let err = Config::parse("autonomy_level = \"yolo\"").unwrap_err().to_string();
        assert!(err.contains("autonomy_level"), "{err}");
        for accepted in ["observe", "suggest", "auto-safe", "auto-full"] {
            assert!(err.contains(accepted), "{err}");
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        for (text, key) in [
            ("check_interval = 0", "check_interval"),
            ("check_interval = -5", "check_interval"),
            ("[detect]\ndisk_full_percent = 150", "detect.disk_full_percent"),
            ("[ollama]\nurl = \"localhost:11434\"", "ollama.url"),
            ("protected_units = [\"ssh; reboot\"]", "protected_units"),
            ("state_dir = \"relative/dir\"", "state_dir"),
            ("[gotify]\nurl = \"https://g.example\"", "gotify.token_file"),
            ("[gotify]\nurl = \"https://g.example/?token=abc\"\ntoken_file = \"/t\"", "gotify.url"),
            ("[gotify]\ndigest_hour = 24", "gotify.digest_hour"),
            ("[gotify.priorities]\nurgent = 11", "gotify.priorities.urgent"),
            ("[act]\ngc_min_days = 0", "act.gc_min_days"),
            ("[act]\njournal_floor_mb = 1", "act.journal_floor_mb"),
            ("[nixos]\nflake = \"/etc/nixos#web; reboot\"", "nixos.flake"),
            ("[nixos]\nflake = \"--option x y\"", "nixos.flake"),
            ("[nixos]\nprofile = \"system\"", "nixos.profile"),
            ("[model]\nconcurrency = 0", "model.concurrency"),
            ("[model]\ntool_rounds = 11", "model.tool_rounds"),
            ("[model]\nprompt_margin = 7000", "model.prompt_margin"),
            ("[model.calls]\nmax_total_mb = 1\nmax_file_kb = 1024", "model.calls.max_total_mb"),
            ("[model.fallback]\nurl = \"http://x:11434\"", "missing field `model`"),
            ("[model.fallback]\nurl = \"ftp://x\"\nmodel = \"m\"", "model.fallback.url"),
            ("[model.fallback]\napi = \"anthropic\"\nurl = \"http://x\"\nmodel = \"m\"", "model.fallback.api"),
            ("[knowledge_base]\nbackend = \"pinecone\"", "knowledge_base.backend"),
            ("[knowledge_base.chroma]\nurl = \"127.0.0.1:8000\"", "knowledge_base.chroma.url"),
            ("[knowledge_base.chroma]\nurl = \"http://admin:pw@chroma:8000\"", "knowledge_base.chroma.url"),
            ("[knowledge_base.chroma]\ncollection = \"a/b\"", "knowledge_base.chroma.collection"),
            ("[knowledge_base.chroma]\ntoken_file = \"token\"", "knowledge_base.chroma.token_file"),
            ("[knowledge_base.chroma]\ntimeout = 0", "knowledge_base.chroma.timeout"),
            ("[knowledge_base]\nrunbooks = \"runbooks\"", "knowledge_base.runbooks"),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
