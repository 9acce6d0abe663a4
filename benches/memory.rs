//! Measures what BENCHMARKS.md reports under "Incident memory": how well
//! the memory stores find a past incident of the same cause, and what the
//! embedded store costs (insert, query, disk, resident memory) at 1 000,
//! 10 000 and 100 000 records beside Chroma on the same records. Run:
//! `cargo bench --bench memory`, with `MACHA_CHROMA_DIR` set for the
//! Chroma rows (`tests/chroma/setup.sh` builds what it names).
//!
//! Everything is generated from fixed seeds: `FAMILIES` causes, each with a
//! past incident (stored, with the diagnosis a decision gave it) and a new
//! one of the same cause on another unit or host, worded as another log
//! line would word it; and distractors of other causes. The embeddings are
//! the test harness's deterministic ones (a hashing trick over words and
//! character trigrams, `macha_testbed::ollama::embedding`, served by the
//! Ollama double's `/api/embed`), not a model's: no embedding model can be
//! run on the machines this is measured on.
//!
//! The embedded store at each size runs in a child process of its own (this
//! benchmark run again with `MACHA_BENCH_MEMORY_CHILD=N`), so the resident
//! memory it reports is the store's alone.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use macha::config::Config;
use macha::ids::Fingerprint;
use macha::kb::{self, Backend, Event, Memory, Proposed, Store, What};
use macha::model::ModelService;
use macha::state_dir::StateDir;
use macha_testbed::chroma::Chroma;
use macha_testbed::ollama::{embedding, OllamaDouble};

/// The embedding model the double answers for, and its dimension.
const EMBEDDER: &str = "nomic-embed-text";
const DIMENSION: usize = 768;
/// The hits a decision is shown (`knowledge_base.recall`'s default).
const RECALL: usize = 3;
/// The hits asked for when ranking: MRR counts a family's memory found
/// below this as not found.
const RANKED: usize = 10;
/// Distractors stored beside the families' past incidents.
const DISTRACTORS: usize = 250;
/// Records written per `store` call in the cost part.
const BATCH: usize = 1000;
/// Queries timed at each size.
const QUERIES: usize = 200;
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
/// Chroma goes on to 100 000 records only when 10 000 took less than this
/// (so that 100 000 may be expected within about ten minutes).
const CHROMA_10K_BUDGET: Duration = Duration::from_secs(60);
/// The longest the embedded store's `store` is timed at one size. Its time
/// per record grows with the records it holds (BENCHMARKS.md says why): at
/// 100 000 the whole insert would take over half an hour. Past this, the
/// rest of the records are written straight into `knowledge.db`, as
/// `store` writes them, so that the queries still run on all of them.
const EMBEDDED_INSERT_BUDGET: Duration = Duration::from_secs(120);
const CHILD: &str = "MACHA_BENCH_MEMORY_CHILD";

/// A tiny deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// What kind of incident `detect` opens, which makes its fingerprint and
/// summary as `detect` words them.
#[derive(Clone, Copy)]
enum Kind {
    /// `unit-failed:UNIT`, "UNIT failed (RESULT...)", with systemd's Result.
    Failed(&'static str),
    /// `error-burst:UNIT`, "UNIT logged N errors in the last 300 s".
    Burst,
    /// `restart-loop:UNIT`.
    Loop,
    /// `disk-full:MOUNT`; the family's units are its mounts.
    Disk,
    /// `memory-pressure`; its family's one unit is "".
    Memory,
}

/// One cause: the units (or mounts) it happens to, the journal lines of a
/// past occurrence and the diagnosis a decision gave it, and the lines of
/// a new occurrence, worded differently. `{…}` are values filled in per
/// incident (see [`fill`]).
struct Cause {
    kind: Kind,
    units: &'static [&'static str],
    past: &'static str,
    diagnosis: &'static str,
    now: &'static str,
}

const WEB: &[&str] = &["nginx.service", "caddy.service", "haproxy.service", "traefik.service"];
const DB: &[&str] = &["postgresql.service", "mysql.service", "mariadb.service"];
const APPS: &[&str] = &[
    "gitea.service",
    "grafana.service",
    "nextcloud-cron.service",
    "jellyfin.service",
    "matrix-synapse.service",
    "vaultwarden.service",
    "home-assistant.service",
    "jenkins.service",
];
const BACKUPS: &[&str] = &["backup.service", "restic-backups-daily.service", "borgbackup-job-home.service"];
const MOUNTS: &[&str] = &["/var", "/var/lib", "/srv", "/"];

/// Every unit of the causes, which distractors fail with too.
const UNITS: &[&str] = &[
    "nginx.service",
    "caddy.service",
    "postgresql.service",
    "mysql.service",
    "redis.service",
    "gitea.service",
    "grafana.service",
    "prometheus.service",
    "loki.service",
    "backup.service",
    "restic-backups-daily.service",
    "docker.service",
    "containerd.service",
    "sshd.service",
    "postfix.service",
    "dovecot2.service",
    "unbound.service",
    "jellyfin.service",
    "home-assistant.service",
    "mosquitto.service",
    "tailscaled.service",
    "nix-gc.service",
    "k3s.service",
    "jenkins.service",
];

/// The labelled causes: each is one family.
const FAMILIES: &[Cause] = &[
    Cause {
        kind: Kind::Disk,
        units: &["/var"],
        past: "{unit2}[{pid}]: could not write /var/lib/{name}/data.{n}: No space left on device",
        diagnosis: "/var is full, so the service cannot write its data; free space on /var (old journals, caches)",
        now: "{unit2}[{pid}]: ENOSPC when appending to /var/log/{name}/current.log, write failed",
    },
    Cause {
        kind: Kind::Disk,
        units: &["/srv"],
        past: "minio[{pid}]: Disk /srv/minio is full, cannot store object bucket-{n}/chunk",
        diagnosis: "The object store's disk /srv is full; delete expired objects or grow the volume",
        now: "minio[{pid}]: Storage /srv/minio reached capacity, PutObject rejected (insufficient space)",
    },
    Cause {
        kind: Kind::Memory,
        units: &[""],
        past: "kernel: Out of memory: Killed process {pid} ({name}) total-vm:{n}kB, anon-rss:{n}kB",
        diagnosis: "A process used all memory and the kernel OOM killer ended it; find the leaking service",
        now: "kernel: oom-kill:constraint=CONSTRAINT_NONE,task={name},pid={pid} invoked oom-killer",
    },
    Cause {
        kind: Kind::Failed("oom-kill"),
        units: &["redis.service", "elasticsearch.service", "prometheus.service", "loki.service"],
        past: "systemd[1]: {unit}: A process of this unit has been killed by the OOM killer.",
        diagnosis: "The unit ran out of memory and was OOM-killed; raise MemoryMax or lower its cache size",
        now: "kernel: Memory cgroup out of memory: Killed process {pid} ({name}) in {unit}",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: WEB,
        past: "{name}[{pid}]: bind() to 0.0.0.0:{port} failed (98: Address already in use)",
        diagnosis: "Another process holds the port, so the server cannot listen; stop the other listener",
        now: "{name}[{pid}]: listen tcp :{port}: bind: address already in use",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: WEB,
        past: "{name}[{pid}]: SSL_CTX_use_certificate: certificate has expired (notAfter={date})",
        diagnosis: "The TLS certificate expired; the ACME renewal did not run. Renew the certificate",
        now: "{name}[{pid}]: tls: failed to load x509 keypair: x509: certificate has expired or is not yet valid",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["acme-example.org.service", "acme-mail.example.org.service", "acme-git.example.org.service"],
        past: "lego[{pid}]: acme: error: 429 :: urn:ietf:params:acme:error:rateLimited :: too many certificates",
        diagnosis: "Let's Encrypt rate limit hit by repeated renewals; wait a week or use the staging server",
        now: "lego[{pid}]: obtain: acme: error 429 rateLimited, too many failed authorizations recently",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: APPS,
        past: "{name}[{pid}]: dial tcp 10.0.{n}.5:5432: connect: connection refused (database)",
        diagnosis: "The database it depends on is down; start postgresql first, the app then recovers",
        now: "{name}[{pid}]: could not connect to server: Connection refused. Is the server running on port 5432?",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: APPS,
        past: "{name}[{pid}]: lookup db.internal on 127.0.0.53:53: server misbehaving",
        diagnosis: "DNS resolution fails: systemd-resolved cannot reach its upstream resolver",
        now: "{name}[{pid}]: getaddrinfo ENOTFOUND api.internal: Temporary failure in name resolution",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: APPS,
        past: "{name}[{pid}]: open /var/lib/{name}/state.db: permission denied",
        diagnosis: "The state directory is owned by root after a manual restore; chown it to the service user",
        now: "{name}[{pid}]: mkdir /var/lib/{name}/tmp: EACCES, operation not permitted for user {name}",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: DB,
        past: "{name}[{pid}]: FATAL: could not create lock file \"/run/{name}/.s.PGSQL.5432.lock\": Permission denied",
        diagnosis: "The socket directory /run has the wrong owner; RuntimeDirectory= is missing",
        now: "{name}[{pid}]: FATAL: could not open lock file /run/{name}/.s.PGSQL.5432.lock: Permission denied",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: DB,
        past: "{name}[{pid}]: FATAL: database files are incompatible with server: initialized by version {n}",
        diagnosis: "A major upgrade without migrating the data directory; run pg_upgrade or pin the old version",
        now: "{name}[{pid}]: DETAIL: The data directory was initialized by PostgreSQL version {n}, not compatible",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: DB,
        past: "{name}[{pid}]: FATAL: sorry, too many clients already (max_connections={n})",
        diagnosis: "Connection pool exhausted; an app leaks connections. Raise max_connections or add pgbouncer",
        now: "{name}[{pid}]: remaining connection slots are reserved for non-replication superuser connections",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: BACKUPS,
        past: "{name}[{pid}]: Fatal: unable to open repository at sftp:backup@{ip}: ssh: connect: Connection timed out",
        diagnosis: "The backup target host is unreachable over SSH; check the network path and the remote sshd",
        now: "{name}[{pid}]: ssh: connect to host {ip} port 22: Connection timed out; repository not reachable",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: BACKUPS,
        past: "{name}[{pid}]: Failed to create/acquire the lock /repo/lock.exclusive (timeout)",
        diagnosis: "A stale repository lock from an interrupted run; remove it after checking no backup runs",
        now: "{name}[{pid}]: unable to create lock in backend: repository is already locked exclusively by PID {pid}",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: BACKUPS,
        past: "{name}[{pid}]: wrong password or no key found for repository",
        diagnosis: "The repository password file changed or is missing; restore passwordFile",
        now: "{name}[{pid}]: Fatal: unable to open config file: ciphertext verification failed, wrong password?",
    },
    Cause {
        kind: Kind::Failed("timeout"),
        units: &["docker.service", "containerd.service", "k3s.service"],
        past: "systemd[1]: {unit}: start operation timed out. Terminating. (waiting for /var/run/{name}.sock)",
        diagnosis: "The daemon hangs on start on a corrupted overlay store; prune the storage and restart",
        now: "systemd[1]: {unit}: Start-pre job timed out after {n}s, daemon did not answer on its socket",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["sshd.service"],
        past: "sshd[{pid}]: /etc/ssh/sshd_config line {n}: Bad configuration option: {name}",
        diagnosis: "A bad option in sshd_config after an edit; sshd refuses to start. Revert the option",
        now: "sshd[{pid}]: /etc/ssh/sshd_config: terminating, 1 bad configuration options (line {n})",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["sshd.service"],
        past: "sshd[{pid}]: error: Could not load host key: /etc/ssh/ssh_host_ed25519_key",
        diagnosis: "The host keys are missing after a reinstall; regenerate them with ssh-keygen -A",
        now: "sshd[{pid}]: sshd: no hostkeys available -- exiting.",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["postfix.service", "dovecot2.service"],
        past: "{name}[{pid}]: fatal: open /etc/{name}/main.cf: No such file or directory",
        diagnosis: "The mail configuration file is missing from the generation; rebuild the system",
        now: "{name}[{pid}]: fatal: configuration file /etc/{name}/main.cf not found (ENOENT)",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["unbound.service", "dnsmasq.service"],
        past: "{name}[{pid}]: error: bind: address already in use [::1] port 53",
        diagnosis: "systemd-resolved's stub listener holds port 53; disable DNSStubListener",
        now: "{name}[{pid}]: failed to create listening socket for port 53: Address in use",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["unbound.service"],
        past: "unbound[{pid}]: error: could not read root.key trust anchor: validation failure <. DNSKEY IN>",
        diagnosis: "The DNSSEC root trust anchor is stale; run unbound-anchor to refresh root.key",
        now: "unbound[{pid}]: trust anchor . has no DNSKEY, validation failure, key file expired",
    },
    Cause {
        kind: Kind::Burst,
        units: &["nginx.service", "caddy.service"],
        past: "{name}[{pid}]: upstream timed out (110: Connection timed out) while reading response header from upstream {ip}:{port}",
        diagnosis: "The backend behind the proxy is too slow or hung; restart the upstream app",
        now: "{name}[{pid}]: 504 Gateway Timeout, upstream {ip}:{port} took longer than {n}s to answer",
    },
    Cause {
        kind: Kind::Burst,
        units: &["nginx.service", "haproxy.service"],
        past: "{name}[{pid}]: {n} worker_connections are not enough while connecting to upstream",
        diagnosis: "The worker connection limit is reached under load; raise worker_connections and LimitNOFILE",
        now: "{name}[{pid}]: accept4() failed (24: Too many open files)",
    },
    Cause {
        kind: Kind::Burst,
        units: APPS,
        past: "{name}[{pid}]: java.lang.OutOfMemoryError: Java heap space at {name}.Worker.run",
        diagnosis: "The JVM heap is too small for the workload; raise -Xmx",
        now: "{name}[{pid}]: Exception in thread worker-{n}: OutOfMemoryError: GC overhead limit exceeded",
    },
    Cause {
        kind: Kind::Burst,
        units: &["redis.service"],
        past: "redis[{pid}]: Can't save in background: fork: Cannot allocate memory",
        diagnosis: "Background save cannot fork with overcommit off; set vm.overcommit_memory=1",
        now: "redis[{pid}]: MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk (fork failed: ENOMEM)",
    },
    Cause {
        kind: Kind::Burst,
        units: DB,
        past: "{name}[{pid}]: ERROR: deadlock detected: Process {pid} waits for ShareLock on transaction {n}",
        diagnosis: "Two jobs update the same rows in opposite order; the app must order its updates",
        now: "{name}[{pid}]: Deadlock found when trying to get lock; try restarting transaction",
    },
    Cause {
        kind: Kind::Burst,
        units: DB,
        past: "{name}[{pid}]: LOG: checkpoints are occurring too frequently ({n} seconds apart)",
        diagnosis: "Write load outgrows max_wal_size; raise max_wal_size",
        now: "{name}[{pid}]: HINT: Consider increasing the configuration parameter max_wal_size, checkpoints too frequent",
    },
    Cause {
        kind: Kind::Loop,
        units: APPS,
        past: "{name}[{pid}]: panic: runtime error: invalid memory address or nil pointer dereference",
        diagnosis: "The app crashes on start on a nil pointer after the update; roll back to the previous version",
        now: "{name}[{pid}]: fatal error: SIGSEGV: segmentation violation, goroutine {n} [running] nil pointer",
    },
    Cause {
        kind: Kind::Loop,
        units: APPS,
        past: "{name}[{pid}]: Error: Cannot find module '/var/lib/{name}/node_modules/express'",
        diagnosis: "Dependencies are missing after the deploy; npm install did not run",
        now: "{name}[{pid}]: MODULE_NOT_FOUND: require stack /var/lib/{name}/server.js, module not found",
    },
    Cause {
        kind: Kind::Loop,
        units: APPS,
        past: "{name}[{pid}]: ModuleNotFoundError: No module named 'psycopg2'",
        diagnosis: "The Python environment lacks a package after the upgrade; rebuild the environment",
        now: "{name}[{pid}]: ImportError: cannot import name psycopg2 from site-packages, package not installed",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: APPS,
        past: "{name}[{pid}]: config: invalid value for key listen_port in /etc/{name}/config.yaml line {n}",
        diagnosis: "A syntax error in the app's YAML configuration after the last change; fix the file",
        now: "{name}[{pid}]: yaml: line {n}: mapping values are not allowed in this context (config.yaml)",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: APPS,
        past: "{name}[{pid}]: environment variable SECRET_KEY_FILE points to a missing file /run/secrets/{name}",
        diagnosis: "The secret file is absent: the secrets service did not decrypt it (agenix key missing)",
        now: "{name}[{pid}]: cannot read /run/secrets/{name}: no such file; credentials not provisioned",
    },
    Cause {
        kind: Kind::Failed("start-limit-hit"),
        units: APPS,
        past: "systemd[1]: {unit}: Start request repeated too quickly. Failed with result 'start-limit-hit'.",
        diagnosis: "The unit restarted too often in the interval; fix the crash, then reset-failed",
        now: "systemd[1]: Failed to start {unit}: start request repeated too quickly, StartLimitBurst reached",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["nix-gc.service", "nixos-upgrade.service"],
        past: "nix-collect-garbage[{pid}]: error: cannot delete path '/nix/store/{hex}-{name}': Read-only file system",
        diagnosis: "The Nix store is mounted read-only; remount it read-write",
        now: "nix[{pid}]: error: opening lock file /nix/store/.lock: EROFS read-only file system",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["nixos-upgrade.service"],
        past: "nixos-upgrade[{pid}]: error: unable to download 'https://cache.nixos.org/{hex}.narinfo': HTTP error 503",
        diagnosis: "The binary cache was unreachable during the upgrade; retry later",
        now: "nixos-rebuild[{pid}]: warning: error: unable to download https://cache.nixos.org: Couldn't resolve host name",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["nixos-upgrade.service"],
        past: "nixos-upgrade[{pid}]: error: builder for '/nix/store/{hex}-{name}.drv' failed with exit code 137",
        diagnosis: "A build was killed for want of memory (exit 137); limit max-jobs or add swap",
        now: "nix-daemon[{pid}]: build of {name}.drv killed: signal 9 (out of memory), exit code 137",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["tailscaled.service", "wireguard-wg0.service"],
        past: "{name}[{pid}]: RTNETLINK answers: Operation not supported (wireguard module not loaded)",
        diagnosis: "The kernel module is not loaded after a kernel upgrade without reboot; reboot",
        now: "{name}[{pid}]: modprobe: FATAL: Module wireguard not found in directory /lib/modules/{ver}",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["mosquitto.service", "rabbitmq.service"],
        past: "{name}[{pid}]: Error: Unable to open log file /var/log/{name}/{name}.log for writing",
        diagnosis: "The log directory does not exist or belongs to root; create it with the unit's user",
        now: "{name}[{pid}]: cannot open log /var/log/{name}/{name}.log: Permission denied",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["home-assistant.service", "zigbee2mqtt.service"],
        past: "{name}[{pid}]: Error: Failed to connect to the adapter /dev/ttyUSB0: No such file or directory",
        diagnosis: "The USB radio stick was unplugged or renamed; use /dev/serial/by-id",
        now: "{name}[{pid}]: SerialPortError: cannot open /dev/ttyACM0, device disconnected",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["grafana.service", "prometheus.service", "loki.service"],
        past: "{name}[{pid}]: level=error msg=\"opening storage failed\" err=\"lock DB directory: resource temporarily unavailable\"",
        diagnosis: "Another instance holds the TSDB lock (a leftover process); kill it",
        now: "{name}[{pid}]: err=\"open DB in /var/lib/{name}/data: lock file held by another process\"",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["prometheus.service", "loki.service"],
        past: "{name}[{pid}]: err=\"corruption in segment /var/lib/{name}/wal/{n}: unexpected checksum\"",
        diagnosis: "The write-ahead log is corrupt after a power loss; move the bad segment away",
        now: "{name}[{pid}]: WAL replay failed: invalid checksum in wal segment {n}, data corrupted",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["jellyfin.service", "nextcloud-cron.service", "gitea.service"],
        past: "{name}[{pid}]: database disk image is malformed (SQLITE_CORRUPT) on /var/lib/{name}/data.db",
        diagnosis: "The SQLite database is corrupted; restore it from the last backup",
        now: "{name}[{pid}]: sqlite3: file is not a database, corruption detected in data.db",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["nextcloud-cron.service", "php-fpm.service"],
        past: "php[{pid}]: PHP Fatal error: Allowed memory size of {n} bytes exhausted (tried to allocate {n} bytes)",
        diagnosis: "PHP memory_limit too low for the job; raise memory_limit",
        now: "php-fpm[{pid}]: PHP Fatal error: memory_limit exhausted in /var/lib/nextcloud/lib/private/{name}.php",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["gitea.service", "jenkins.service"],
        past: "{name}[{pid}]: remote: fatal: unable to access 'https://github.com/org/{name}.git/': SSL certificate problem: unable to get local issuer certificate",
        diagnosis: "The CA bundle is missing in the unit's environment; set SSL_CERT_FILE",
        now: "{name}[{pid}]: x509: certificate signed by unknown authority while fetching https://github.com",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["chronyd.service", "systemd-timesyncd.service"],
        past: "{name}[{pid}]: System clock wrong by {n} seconds, no reachable NTP sources",
        diagnosis: "No time source is reachable (UDP 123 blocked); open the firewall for NTP",
        now: "{name}[{pid}]: Can't synchronise: no selectable sources, clock offset {n}s, timeout on ntp servers",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["cups.service", "avahi-daemon.service"],
        past: "{name}[{pid}]: Failed to create socket: Address family not supported by protocol (IPv6 disabled)",
        diagnosis: "IPv6 is disabled in the kernel but the daemon binds [::]; bind IPv4 only",
        now: "{name}[{pid}]: socket(AF_INET6) failed: EAFNOSUPPORT, ipv6 is disabled",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: WEB,
        past: "{name}[{pid}]: [emerg] open() \"/etc/{name}/sites/{name}.conf\" failed (2: No such file or directory) in /etc/{name}/{name}.conf:{n}",
        diagnosis: "An include points to a site file that was removed; drop the include",
        now: "{name}[{pid}]: [emerg] unknown directive \"proxy_passs\" in /etc/{name}/sites/app.conf:{n}, configuration test failed",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["docker.service", "containerd.service"],
        past: "{name}[{pid}]: failed to start daemon: error initializing graphdriver: driver not supported: overlay2",
        diagnosis: "The overlay module or backing filesystem does not support overlay2; load overlay",
        now: "{name}[{pid}]: storage driver overlay2 failed: backing filesystem xfs without d_type support",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["k3s.service"],
        past: "k3s[{pid}]: etcd cluster is unavailable or misconfigured; error #0: dial tcp {ip}:2379: i/o timeout",
        diagnosis: "The etcd peer is down and quorum is lost; bring the other control plane node back",
        now: "k3s[{pid}]: rafthttp: failed to reach the peer {ip}:2380, etcdserver: no leader",
    },
    Cause {
        kind: Kind::Failed("signal"),
        units: APPS,
        past: "systemd-coredump[{pid}]: Process {pid} ({name}) of user {n} dumped core. Stack trace: #0 libssl.so.3",
        diagnosis: "The app crashes in libssl after the OpenSSL update; rebuild it against the new library",
        now: "kernel: {name}[{pid}]: segfault at 0 ip {hex} error 4 in libssl.so.3 (SIGSEGV)",
    },
    Cause {
        kind: Kind::Failed("exit-code"),
        units: &["mysql.service", "mariadb.service"],
        past: "{name}[{pid}]: [ERROR] InnoDB: Unable to lock ./ibdata1 error: 11, Check that you do not already have another mysqld process",
        diagnosis: "A second mysqld holds ibdata1; kill the stale process",
        now: "{name}[{pid}]: InnoDB: Operating system error number 11 in a file operation, ibdata1 locked by another process",
    },
    Cause {
        kind: Kind::Disk,
        units: &["/"],
        past: "systemd-journald[{pid}]: Failed to write entry to /var/log/journal, ignoring: No space left on device (root filesystem)",
        diagnosis: "The root filesystem filled with old Nix generations; run nix-collect-garbage -d",
        now: "nix-daemon[{pid}]: error: writing to file: No space left on device while building {name}",
    },
    Cause {
        kind: Kind::Disk,
        units: &["/var/lib"],
        past: "docker[{pid}]: write /var/lib/docker/overlay2/{hex}/diff: no space left on device",
        diagnosis: "Docker images and volumes filled /var/lib; docker system prune",
        now: "containerd[{pid}]: failed to extract layer sha256:{hex}: no space left on device under /var/lib/containerd",
    },
];

/// Other causes, stored as distractors: none of them is a family's.
const OTHERS: &[(Kind, &str, &str)] = &[
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: migration {n} failed: column \"user_id\" does not exist",
        "A failed schema migration; run it by hand",
    ),
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: invalid license key, trial expired on {date}",
        "The licence expired; renew it",
    ),
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: SMTP 535 5.7.8 authentication failed for {user}",
        "The mail relay rejects the password; update the credentials",
    ),
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: S3 upload failed: AccessDenied for bucket backups-{n}",
        "The bucket policy changed; restore the IAM policy",
    ),
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: rate limited by upstream API (HTTP 429), retry after {n}s",
        "The external API throttles us; back off",
    ),
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: LDAP bind failed: invalid credentials for cn={user}",
        "The LDAP service account password rotated",
    ),
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: unsupported schema version {n} in config, expected {ver}",
        "The config was written for a newer version",
    ),
    (
        Kind::Failed("timeout"),
        "systemd[1]: {unit}: Stopping timed out after {n}s. Killing.",
        "The service ignores SIGTERM; it flushes a large queue on stop",
    ),
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: GPG signature verification failed for release {ver}",
        "The signing key rotated upstream; import the new key",
    ),
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: plugin {name}-exporter version {ver} is incompatible with API level {n}",
        "A plugin is too old for the new release",
    ),
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: cannot parse cron expression '*/{n} * * *' in schedule",
        "A typo in the timer's schedule",
    ),
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: locale en_US.UTF-8 not available, falling back failed",
        "The locale is not generated; add it to i18n.supportedLocales",
    ),
    (Kind::Failed("exit-code"), "{name}[{pid}]: timezone Europe/{user} unknown", "The tzdata package lacks the zone"),
    (
        Kind::Burst,
        "{name}[{pid}]: slow query ({n} ms): SELECT * FROM events WHERE ts > now() - interval",
        "A missing index on events.ts",
    ),
    (
        Kind::Burst,
        "{name}[{pid}]: client {ip} sent invalid HTTP request: header too large",
        "A client with a huge cookie; raise the header buffer",
    ),
    (
        Kind::Burst,
        "{name}[{pid}]: authentication failure for user {user} from {ip}",
        "A brute-force attempt; fail2ban should block it",
    ),
    (
        Kind::Burst,
        "{name}[{pid}]: webhook delivery to https://hooks.example.org/{n} returned 410 Gone",
        "The webhook target was removed; delete the hook",
    ),
    (
        Kind::Burst,
        "{name}[{pid}]: cache miss rate {n}% above threshold, evicting keys",
        "The cache is too small for the working set",
    ),
    (Kind::Burst, "{name}[{pid}]: replication lag {n}s on replica {ip}", "The replica is behind after a bulk import"),
    (
        Kind::Burst,
        "{name}[{pid}]: deprecated API v1 called by client {ip}, will be removed in {ver}",
        "An old client; upgrade it",
    ),
    (
        Kind::Loop,
        "{name}[{pid}]: health check /healthz returned 500 after {n} ms",
        "The readiness probe fails while the app warms its cache",
    ),
    (
        Kind::Loop,
        "{name}[{pid}]: exit status 3: invalid command-line flag --{name}-mode",
        "A flag removed in the new release",
    ),
    (Kind::Loop, "{name}[{pid}]: leader election lost, shutting down", "Two instances compete for the lease"),
    (
        Kind::Memory,
        "kernel: khugepaged: page allocation stall for {n}ms, order:9",
        "Memory is fragmented; huge pages cannot be allocated",
    ),
    (
        Kind::Memory,
        "{name}[{pid}]: page cache pressure, {n} MB swapped out in the last minute",
        "Swapping under a batch job",
    ),
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: json: cannot unmarshal string into Go struct field .{name}.timeout of type int",
        "A quoted number in the JSON settings",
    ),
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: ERROR: relation \"{name}_sessions\" already exists",
        "A migration ran twice",
    ),
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: Invalid redirect_uri https://{name}.example.org/oauth/callback",
        "The OAuth client's callback URL changed",
    ),
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: Python 3.{n} is not supported, requires >= 3.12",
        "The interpreter is too old for the release",
    ),
    (
        Kind::Failed("exit-code"),
        "{name}[{pid}]: checksum mismatch for downloaded asset {name}-{ver}.tar.gz",
        "A corrupted download in the cache; clear it",
    ),
];

/// One incident as `detect` and a decision see it.
struct Incident {
    host: String,
    fingerprint: String,
    summary: String,
    evidence: String,
    diagnosis: String,
    unit: String,
}

impl Incident {
    /// What the daemon searched memory with until 2026-12-06: the
    /// fingerprint and the summary.
    fn query(&self) -> String {
        format!("{} {}", self.fingerprint, self.summary)
    }

    /// The same with the evidence a decision is shown: what the daemon
    /// searches with now (`decide::prompt::memory_query`).
    fn query_with_evidence(&self) -> String {
        format!("{} {}\n{}", self.fingerprint, self.summary, self.evidence)
    }

    /// Its memory after it opened and a decision was made (it proposed a
    /// restart), as `remember` folds them from the audit trail.
    fn memory(&self, at: DateTime<Utc>) -> Memory {
        let fp = Fingerprint::from(self.fingerprint.as_str());
        let mut m = Memory::new(&self.host, &fp, at);
        let event = |what| Event { at, host: self.host.clone(), fingerprint: fp.clone(), what };
        m.apply(&event(What::Opened { summary: self.summary.clone(), generation: None }));
        m.apply(&event(What::Decided {
            summary: self.summary.clone(),
            evidence: Some(self.evidence.clone()),
            diagnosis: self.diagnosis.clone(),
            actions: vec![Proposed {
                action: "restart_unit".into(),
                target: (!self.unit.is_empty()).then(|| self.unit.clone()),
                verdict: "queue".into(),
            }],
        }));
        m
    }
}

const HOSTS: &[&str] = &["web", "db", "app", "mail", "edge", "nas", "build", "mon"];
const USERS: &[&str] = &["alice", "bob", "deploy", "backup", "svc", "admin"];

/// `template` with each `{key}` replaced by a value for this incident.
fn fill(template: &str, unit: &str, rng: &mut Rng) -> String {
    let name = unit.trim_end_matches(".service").trim_start_matches('/');
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else { break };
        let key = &rest[start + 1..start + len];
        let value = match key {
            "unit" => unit.to_owned(),
            "unit2" => rng.pick(UNITS).to_owned(),
            "name" => if name.is_empty() { "root" } else { name }.to_owned(),
            "pid" => rng.between(1000, 99_999).to_string(),
            "n" => rng.between(2, 9999).to_string(),
            "port" => ["80", "443", "8080", "8443", "3000", "9090"][rng.below(6)].to_owned(),
            "ip" => format!("10.{}.{}.{}", rng.below(256), rng.below(256), rng.between(1, 254)),
            "hex" => format!("{:016x}", rng.next()),
            "ver" => format!("{}.{}.{}", rng.between(1, 9), rng.below(20), rng.below(30)),
            "date" => format!("2026-{:02}-{:02}", rng.between(1, 12), rng.between(1, 28)),
            "user" => rng.pick(USERS).to_owned(),
            _ => panic!("unknown placeholder {{{key}}} in {template:?}"),
        };
        out.push_str(&value);
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

/// An incident of `kind` on `unit` (or mount) of `host`, with `lines` of
/// evidence: two lines of the cause, among the unit's usual start and stop
/// lines.
fn incident(kind: Kind, unit: &str, host: String, lines: &str, diagnosis: &str, rng: &mut Rng) -> Incident {
    let (fingerprint, summary, unit) = match kind {
        Kind::Failed(result) => {
            let summary = match result {
                "exit-code" => format!("{unit} failed (exit-code, exit status {})", rng.between(1, 2)),
                other => format!("{unit} failed ({other})"),
            };
            (format!("unit-failed:{unit}"), summary, unit.to_owned())
        }
        Kind::Burst => (
            format!("error-burst:{unit}"),
            format!("{unit} logged {} errors in the last 300 s", rng.between(20, 5000)),
            unit.to_owned(),
        ),
        Kind::Loop => (
            format!("restart-loop:{unit}"),
            format!(
                "{unit} was restarted by systemd {} times in 300 s (now activating/auto-restart)",
                rng.between(5, 40)
            ),
            unit.to_owned(),
        ),
        Kind::Disk => {
            let total = rng.between(20, 2000) * 1_073_741_824;
            let free = total / 100 * rng.between(0, 4);
            let pct = 100 - free * 100 / total;
            (
                format!("disk-full:{unit}"),
                format!("{unit} is {pct}% full ({free} of {total} bytes free)"),
                String::new(),
            )
        }
        Kind::Memory => {
            let total = rng.between(2, 64) * 1_073_741_824;
            let pct = rng.between(92, 99);
            (
                "memory-pressure".to_owned(),
                format!("memory is {pct}% used ({} of {total} bytes)", total / 100 * pct),
                String::new(),
            )
        }
    };
    let shown = if unit.is_empty() { rng.pick(UNITS).to_owned() } else { unit.clone() };
    let cause = format!("{}\n{}", fill(lines, &shown, rng), fill(lines, &shown, rng));
    // A unit that stopped shows systemd's lines around the cause.
    let evidence = match kind {
        Kind::Failed(_) | Kind::Loop => format!(
            "systemd[1]: Starting {shown}...\n{cause}\nsystemd[1]: {shown}: Main process exited, code=exited, status=1/FAILURE"
        ),
        _ => cause,
    };
    Incident { host, fingerprint, summary, evidence, diagnosis: fill(diagnosis, &shown, rng), unit }
}

fn host(rng: &mut Rng) -> String {
    format!("{}{}", rng.pick(HOSTS), rng.between(1, 40))
}

/// A family's past incident and its new one: another unit of the cause
/// when it has more than one, another host always.
fn family(cause: &Cause, rng: &mut Rng) -> (Incident, Incident) {
    let a = rng.below(cause.units.len());
    let b = if cause.units.len() > 1 { (a + 1 + rng.below(cause.units.len() - 1)) % cause.units.len() } else { a };
    let unit = |i: usize| cause.units[i];
    let past = incident(cause.kind, unit(a), host(rng), cause.past, cause.diagnosis, rng);
    let mut now_host = host(rng);
    while now_host == past.host {
        now_host = host(rng);
    }
    let now = incident(cause.kind, unit(b), now_host, cause.now, "", rng);
    (past, now)
}

fn distractor(rng: &mut Rng) -> Incident {
    let (kind, lines, diagnosis) = OTHERS[rng.below(OTHERS.len())];
    let unit = match kind {
        Kind::Disk => rng.pick(MOUNTS),
        Kind::Memory => "",
        _ => rng.pick(UNITS),
    };
    incident(kind, unit, host(rng), lines, diagnosis, rng)
}

/// The `i`th record of the cost part: a family's past or new incident or a
/// distractor, on a host of its own (so that every record is a memory of
/// its own), the same in every process.
fn record(i: usize) -> Incident {
    let mut rng = Rng(0x6d61_6368_6100_0000 ^ i as u64);
    let mut inc = match rng.below(3) {
        0 => family(&FAMILIES[rng.below(FAMILIES.len())], &mut rng).0,
        1 => family(&FAMILIES[rng.below(FAMILIES.len())], &mut rng).1,
        _ => distractor(&mut rng),
    };
    inc.host = format!("{}-{i}", inc.host);
    inc
}

fn at(i: usize) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap() + TimeDelta::seconds(i as i64)
}

/// Runs `work` on a single-threaded runtime with a `LocalSet`, as the daemon runs.
fn local<F: Future>(work: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, work)
}

fn config(state: &Path, ollama: &str, chroma: Option<&str>) -> Config {
    let backend = match chroma {
        Some(url) => format!("backend = \"chroma\"\n[knowledge_base.chroma]\nurl = \"{url}\"\ntimeout = 120\n"),
        None => "backend = \"embedded\"\n".to_owned(),
    };
    Config::parse(&format!(
        "state_dir = \"{}\"\n[ollama]\nurl = \"{ollama}\"\nmodel = \"llama3.1:8b\"\nembedding_model = \"{EMBEDDER}\"\n\
         timeout = 30\n[knowledge_base]\n{backend}",
        state.display()
    ))
    .unwrap()
}

/// `field` of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `pid` and every process below it.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() && i < 10_000 {
        let parent = all[i];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: the comm may hold spaces, so read after its ')'.
            let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(parent) && !all.contains(&child) {
                all.push(child);
            }
        }
        i += 1;
    }
    all
}

fn tree_kib(pid: u32, field: &str) -> u64 {
    tree(pid).into_iter().map(|p| status_kib(p, field)).sum()
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        total += if meta.is_dir() { dir_bytes(&entry.path()) } else { meta.len() };
    }
    total
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Median and 95th percentile, in milliseconds.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.95))
}

// ---- Retrieval quality ----

/// Recall@RECALL and MRR@RANKED of the past incidents' ids.
struct Quality {
    found_in_recall: usize,
    reciprocal: f64,
    queries: usize,
}

impl Quality {
    fn row(&self) -> String {
        format!(
            "{:.2} ({}/{}) | {:.3}",
            self.found_in_recall as f64 / self.queries as f64,
            self.found_in_recall,
            self.queries,
            self.reciprocal / self.queries as f64
        )
    }
}

async fn quality(store: &Store, queries: &[(String, Option<Vec<f32>>, String)]) -> Quality {
    let mut q = Quality { found_in_recall: 0, reciprocal: 0.0, queries: queries.len() };
    for (text, vector, wanted) in queries {
        let hits = store.search(text, vector.as_deref(), RANKED).await.unwrap();
        if let Some(rank) = hits.iter().position(|h| &h.memory.id() == wanted) {
            q.found_in_recall += usize::from(rank < RECALL);
            q.reciprocal += 1.0 / (rank + 1) as f64;
        }
    }
    q
}

/// A query of a new incident, by name.
type QueryForm = (&'static str, fn(&Incident) -> String);

fn retrieval(double: &OllamaDouble, chroma_dir: Option<&str>) {
    let mut rng = Rng(0x5eed_0001);
    let pairs: Vec<(Incident, Incident)> = FAMILIES.iter().map(|c| family(c, &mut rng)).collect();
    let distractors: Vec<Incident> = (0..DISTRACTORS).map(|_| distractor(&mut rng)).collect();
    let stored: Vec<Memory> =
        pairs.iter().map(|(p, _)| p).chain(&distractors).enumerate().map(|(i, inc)| inc.memory(at(i))).collect();
    let ids: BTreeSet<String> = stored.iter().map(Memory::id).collect();
    assert_eq!(ids.len(), stored.len(), "every stored incident is a memory of its own");

    let dir = tempfile::tempdir().unwrap();
    let model = ModelService::new(&config(dir.path(), &double.url(), None)).unwrap();
    let texts: Vec<String> = stored.iter().map(Memory::text).collect();
    let forms: [QueryForm; 2] = [
        ("fingerprint + summary (the daemon's until 2026-12-06)", Incident::query),
        ("+ evidence (the daemon's now)", Incident::query_with_evidence),
    ];
    let (vectors, query_vectors) = local(async {
        let vectors = model.embed(&texts).await.unwrap().vectors;
        let mut query_vectors = Vec::new();
        for (_, form) in forms {
            let qs: Vec<String> = pairs.iter().map(|(_, now)| form(now)).collect();
            query_vectors.push(model.embed(&qs).await.unwrap().vectors);
        }
        (vectors, query_vectors)
    });
    assert_eq!(vectors[0], embedding(&texts[0], DIMENSION), "the double serves the harness's embedding");
    assert_eq!(vectors[0].len(), DIMENSION);

    println!(
        "\nRetrieval: {} families (one past incident each, stored), {} distractors stored, one query per family",
        pairs.len(),
        distractors.len()
    );
    println!("\n| store | query | recall@{RECALL} | MRR@{RANKED} |");
    println!("|---|---|---|---|");
    let chroma = chroma_dir.map(|_| Chroma::start().expect("start chroma"));
    for (name, with_vectors) in [("embedded, full text only", false), ("embedded, full text + vectors", true)]
        .into_iter()
        .chain(chroma.as_ref().map(|_| ("Chroma, vectors", true)))
    {
        let state_dir = tempfile::tempdir().unwrap();
        let state = StateDir::create(&state_dir.path().join("state")).unwrap();
        let url = name.starts_with("Chroma").then(|| chroma.as_ref().unwrap().url());
        let store = Store::open(&config(state_dir.path(), &double.url(), url.as_deref()), &state).unwrap();
        let records: Vec<(Memory, Option<Vec<f32>>)> =
            stored.iter().zip(&vectors).map(|(m, v)| (m.clone(), with_vectors.then(|| v.clone()))).collect();
        local(async {
            store.store(&records).await.unwrap();
            for ((form_name, form), qv) in forms.iter().zip(&query_vectors) {
                let queries: Vec<(String, Option<Vec<f32>>, String)> = pairs
                    .iter()
                    .zip(qv)
                    .map(|((past, now), v)| {
                        (
                            form(now),
                            with_vectors.then(|| v.clone()),
                            kb::id_of(&past.host, &past.fingerprint.as_str().into()),
                        )
                    })
                    .collect();
                println!("| {name} | {form_name} | {} |", quality(&store, &queries).await.row());
            }
        });
    }
    if chroma.is_none() {
        println!("| Chroma, vectors | (skipped: no Chroma, see above) | | |");
    }
}

// ---- Cost at scale ----

/// What one store measured at one size.
struct Cost {
    insert: Duration,
    /// Records written by `store` within the budget, and the time of the
    /// last batch of them.
    inserted: usize,
    last_batch: Duration,
    median_ms: f64,
    p95_ms: f64,
    /// The embedded store's queries with the text alone (no vector).
    text_median_ms: f64,
    text_p95_ms: f64,
    disk_bytes: u64,
    /// Resident memory: after inserting, after the queries, the peak; and
    /// the process's before anything was opened (embedded only).
    rss_insert_kib: u64,
    rss_query_kib: u64,
    hwm_kib: u64,
    base_kib: u64,
}

impl Cost {
    fn line(&self) -> String {
        format!(
            "{} {} {} {} {} {} {} {} {} {} {} {}",
            self.insert.as_micros(),
            self.inserted,
            self.last_batch.as_micros(),
            self.median_ms,
            self.p95_ms,
            self.text_median_ms,
            self.text_p95_ms,
            self.disk_bytes,
            self.rss_insert_kib,
            self.rss_query_kib,
            self.hwm_kib,
            self.base_kib
        )
    }

    fn parse(line: &str) -> Option<Cost> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        let x = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        Some(Cost {
            insert: Duration::from_micros(n(0)?),
            inserted: n(1)? as usize,
            last_batch: Duration::from_micros(n(2)?),
            median_ms: x(3)?,
            p95_ms: x(4)?,
            text_median_ms: x(5)?,
            text_p95_ms: x(6)?,
            disk_bytes: n(7)?,
            rss_insert_kib: n(8)?,
            rss_query_kib: n(9)?,
            hwm_kib: n(10)?,
            base_kib: n(11)?,
        })
    }
}

/// The 200 timed queries: new incidents of the families and of other
/// causes, none of them stored, in the daemon's form, with their vectors.
fn timed_queries() -> Vec<(String, Vec<f32>)> {
    (0..QUERIES)
        .map(|i| {
            let mut q = record(usize::MAX - i);
            q.host = format!("query-{i}");
            let text = q.query_with_evidence();
            let v = embedding(&text, DIMENSION);
            (text, v)
        })
        .collect()
}

/// The record `i` and the vector of its text.
fn embedded_record(i: usize) -> (Memory, Vec<f32>) {
    let m = record(i).memory(at(i));
    let v = embedding(&m.text(), DIMENSION);
    (m, v)
}

/// Writes records `0..n` in batches of `BATCH`, embedding each batch as it
/// goes, so that no more than a batch is held, until `budget` is spent;
/// the time is the store's. Returns it, the records written and the time
/// of the last batch.
async fn fill_store(store: &Store, n: usize, budget: Duration) -> (Duration, usize, Duration) {
    let mut spent = Duration::ZERO;
    let mut last = Duration::ZERO;
    let mut next = 0;
    while next < n && spent < budget {
        let end = (next + BATCH).min(n);
        let batch: Vec<(Memory, Option<Vec<f32>>)> = (next..end)
            .map(|i| {
                let (m, v) = embedded_record(i);
                (m, Some(v))
            })
            .collect();
        let started = Instant::now();
        store.store(&batch).await.unwrap();
        last = started.elapsed();
        spent += last;
        next = end;
    }
    (spent, next, last)
}

/// Writes records `from..n` into `knowledge.db` as `Embedded::store` writes
/// a new memory (the same two rows), without its delete of an older
/// version of the text, which there is none of.
fn fill_direct(db: &Path, from: usize, n: usize) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut memories = tx
            .prepare("INSERT INTO memories (id, host, fingerprint, last_seen, record, vector) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
            .unwrap();
        let mut texts = tx.prepare("INSERT INTO memories_text (rowid, id, text) VALUES (?1, ?2, ?3)").unwrap();
        for i in from..n {
            let (m, v) = embedded_record(i);
            let blob: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let record = serde_json::to_string(&m).unwrap();
            memories
                .execute(rusqlite::params![
                    m.id(),
                    m.host,
                    m.fingerprint.as_str(),
                    m.last_seen.to_rfc3339(),
                    record,
                    blob
                ])
                .unwrap();
            texts.execute(rusqlite::params![tx.last_insert_rowid(), m.id(), m.text()]).unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Times the queries: with their text and vector (`Some(true)`), their
/// vector alone (`Some(false)`) or their text alone (`None`).
async fn time_queries(store: &Store, queries: &[(String, Vec<f32>)], with_text: Option<bool>) -> (f64, f64) {
    let mut samples = Vec::with_capacity(queries.len());
    for (text, v) in queries {
        let text_part = if with_text == Some(false) { "" } else { text };
        let started = Instant::now();
        let hits = store.search(text_part, with_text.map(|_| v.as_slice()), RECALL).await.unwrap();
        samples.push(started.elapsed());
        assert!(!hits.is_empty(), "a query finds something");
    }
    percentiles(samples)
}

/// The child: the embedded store with `n` records, this process alone.
fn embedded_child(n: usize) {
    let queries = timed_queries();
    let me = std::process::id();
    let base_kib = status_kib(me, "VmRSS:");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::create(&dir.path().join("state")).unwrap();
    let store = Store::open(&config(dir.path(), "http://127.0.0.1:9", None), &state).unwrap();
    let (insert, inserted, last_batch) = local(fill_store(&store, n, EMBEDDED_INSERT_BUDGET));
    if inserted < n {
        fill_direct(&state.path_of(kb::embedded::KB_FILE), inserted, n);
    }
    let rss_insert_kib = status_kib(me, "VmRSS:");
    let ((median_ms, p95_ms), (text_median_ms, text_p95_ms)) =
        local(async { (time_queries(&store, &queries, Some(true)).await, time_queries(&store, &queries, None).await) });
    let cost = Cost {
        insert,
        inserted,
        last_batch,
        median_ms,
        p95_ms,
        text_median_ms,
        text_p95_ms,
        disk_bytes: dir_bytes(state.path()),
        rss_insert_kib,
        rss_query_kib: status_kib(me, "VmRSS:"),
        hwm_kib: status_kib(me, "VmHWM:"),
        base_kib,
    };
    println!("COST {}", cost.line());
}

fn embedded_cost(n: usize) -> Cost {
    let out = Command::new(std::env::current_exe().unwrap()).env(CHILD, n.to_string()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the child for {n} records failed: {}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().find_map(|l| l.strip_prefix("COST ")).and_then(Cost::parse).expect("the child's COST line")
}

fn chroma_cost(double: &OllamaDouble, n: usize) -> Cost {
    let queries = timed_queries();
    let chroma = Chroma::start().expect("start chroma");
    let pid = chroma.pid().unwrap();
    let base_kib = tree_kib(pid, "VmRSS:");
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::create(&dir.path().join("state")).unwrap();
    let store = Store::open(&config(dir.path(), &double.url(), Some(&chroma.url())), &state).unwrap();
    local(async {
        let (insert, inserted, last_batch) = fill_store(&store, n, Duration::MAX).await;
        let rss_insert_kib = tree_kib(pid, "VmRSS:");
        let (median_ms, p95_ms) = time_queries(&store, &queries, Some(false)).await;
        Cost {
            insert,
            inserted,
            last_batch,
            median_ms,
            p95_ms,
            text_median_ms: 0.0,
            text_p95_ms: 0.0,
            disk_bytes: dir_bytes(&chroma.data_dir()),
            rss_insert_kib,
            rss_query_kib: tree_kib(pid, "VmRSS:"),
            hwm_kib: tree_kib(pid, "VmHWM:"),
            base_kib,
        }
    })
}

fn main() {
    if let Some(n) = std::env::var(CHILD).ok().and_then(|v| v.parse().ok()) {
        embedded_child(n);
        return;
    }
    let started = Instant::now();
    let chroma_dir = std::env::var("MACHA_CHROMA_DIR").ok().filter(|d| Path::new(d).join("venv/bin/chroma").is_file());
    if chroma_dir.is_none() {
        println!(
            "Chroma: skipped. MACHA_CHROMA_DIR is not set or holds no venv/bin/chroma; for the Chroma rows run \
             `export MACHA_CHROMA_DIR=$(sudo bash tests/chroma/setup.sh | tail -n 1)` first."
        );
    }
    let double = OllamaDouble::start(&[EMBEDDER]).unwrap();
    retrieval(&double, chroma_dir.as_deref());
    println!("\nretrieval part: {:.0} s", started.elapsed().as_secs_f64());

    println!("\nCost: records of {DIMENSION} dimensions, {QUERIES} queries of the daemon's form, {RECALL} hits each");
    println!(
        "\n| store | records | insert (total; last 1 000) | query median / p95 | text alone: median / p95 | on disk | RSS after insert / after queries / peak |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut chroma_10k: Option<Duration> = None;
    for n in SIZES {
        let e = embedded_cost(n);
        let insert = if e.inserted < n {
            format!(
                "stopped after {:.0} s at {} records; the last 1 000 took {:.1} s",
                e.insert.as_secs_f64(),
                e.inserted,
                e.last_batch.as_secs_f64()
            )
        } else {
            format!("{:.1} s; {:.2} s", e.insert.as_secs_f64(), e.last_batch.as_secs_f64())
        };
        println!(
            "| embedded (text + vector) | {n} | {insert} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.1} MiB | +{:.1} / +{:.1} / +{:.1} MiB over {:.1} MiB |",
            e.median_ms,
            e.p95_ms,
            e.text_median_ms,
            e.text_p95_ms,
            e.disk_bytes as f64 / 1_048_576.0,
            mib(e.rss_insert_kib.saturating_sub(e.base_kib)),
            mib(e.rss_query_kib.saturating_sub(e.base_kib)),
            mib(e.hwm_kib.saturating_sub(e.base_kib)),
            mib(e.base_kib),
        );
        if chroma_dir.is_none() {
            continue;
        }
        if n > 10_000 && chroma_10k.is_none_or(|t| t >= CHROMA_10K_BUDGET) {
            println!(
                "| Chroma (vector) | {n} | skipped: 10 000 records took {:.0} s, over the {} s that keeps {n} within ten minutes | | | | |",
                chroma_10k.unwrap_or_default().as_secs_f64(),
                CHROMA_10K_BUDGET.as_secs()
            );
            continue;
        }
        let c = chroma_cost(&double, n);
        if n == 10_000 {
            chroma_10k = Some(c.insert);
        }
        println!(
            "| Chroma (vector) | {n} | {:.1} s; {:.2} s | {:.2} / {:.2} ms | | {:.1} MiB | {:.1} / {:.1} / {:.1} MiB (server, from {:.1} MiB idle) |",
            c.insert.as_secs_f64(),
            c.last_batch.as_secs_f64(),
            c.median_ms,
            c.p95_ms,
            c.disk_bytes as f64 / 1_048_576.0,
            mib(c.rss_insert_kib),
            mib(c.rss_query_kib),
            mib(c.hwm_kib),
            mib(c.base_kib),
        );
    }
    println!("\nwhole benchmark: {:.0} s", started.elapsed().as_secs_f64());
}
