//! The redaction corpus: realistic journal lines from sshd, nginx, postgres,
//! docker, systemd, application JSON logs, curl command lines, environment
//! dumps and stack traces. Every secret in them (`tests/corpus/secrets.rs`)
//! must be gone after `macha::redact::redact`, and every line without one
//! (here) must come out unchanged, because macha's model needs the unit
//! names, ids and paths in them.

use std::borrow::Cow;
use std::collections::HashSet;

use macha::redact::redact;

#[path = "corpus/secrets.rs"]
mod secrets;
use secrets::{line_of, SECRETS};

/// Lines that carry no secret and must reach the model exactly as logged.
const KEPT: &[&str] = &[
    "systemd[1]: Started nginx.service - A high performance web server and a reverse proxy server.",
    "systemd[1]: postgresql.service: Main process exited, code=exited, status=1/FAILURE",
    "systemd[1]: docker-7ab0b5b1bc5e2ecb1ac96d484899cfddb7da5d916041595686476b20557cf6cf.scope: Deactivated successfully.",
    r"systemd[1]: Activating swap dev-disk-by\x2duuid-48108eaf\x2df9ee\x2d41a0\x2d9a54\x2db361035c3a27.swap...",
    "systemd-logind[812]: New session 4 of user alice.",
    "sshd[2201]: Failed password for invalid user admin from 198.51.100.23 port 40022 ssh2",
    "sshd[2205]: Accepted publickey for alice from 203.0.113.7 port 52144 ssh2: ED25519 SHA256:Zk9vQ2mXp4Lr8Ts1Wb6Y/c0Nd3He7Jf5Ga2Ki9Ou4Py",
    "sshd[2205]: pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)",
    "sudo[3311]:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/run/current-system/sw/bin/systemctl restart nginx.service",
    r#"postgres[1402]: [1402] FATAL:  password authentication failed for user "app""#,
    "mysqld[700]: [Warning] Access denied for user 'root'@'localhost' (using password: YES)",
    "nix-daemon[1100]: building '/nix/store/839r612l32jk658ppc0560jc8dxgcgmz-nixos-system-web01-24.05.20240517.drv'...",
    "nixos-rebuild[4000]: error: hash mismatch in fixed-output derivation '/nix/store/4q1kn8ahdvqmxz2gpcby0sw3fc5ljri9-source.drv': specified: sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= got: sha256-kP3vZ8qLx2Rm7Tn1Wc9Yb4Hd6Jf0Gs5Aa1Ue3Io8Qw=",
    "kernel: EXT4-fs (nvme0n1p2): mounted filesystem 48108eaf-f9ee-41a0-9a54-b361035c3a27 r/w with ordered data mode. Quota mode: none.",
    "systemd-journald[400]: Journal started; boot id c4abba00fd77f22b2441d18c86409df8, machine id 7d1e6e0c9a1b4f5e8c2d3a4b5c6d7e8f",
    "nixos-upgrade[4000]: HEAD is now at 61a459decef63f0a50973047fb494694c2324768 flake.lock: Update",
    r#"nginx[812]: 203.0.113.7 - - [17/May/2024:03:00:01 +0000] "GET /api/v1/health HTTP/1.1" 200 17 "-" "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36""#,
    r#"dockerd[1187]: time="2024-05-17T03:00:06.123456789Z" level=info msg="Loading containers: done.""#,
    "kernel: Out of memory: Killed process 4242 (postgres) total-vm:8123456kB, anon-rss:7012345kB, file-rss:0kB, shmem-rss:0kB, UID:71 pgtables:15000kB oom_score_adj:0",
    "java[4100]: \tat org.springframework.beans.factory.support.AbstractAutowireCapableBeanFactory.createBean(AbstractAutowireCapableBeanFactory.java:517)",
    r#"app[2201]:   File "/nix/store/839r612l32jk658ppc0560jc8dxgcgmz-python3-3.11.9/lib/python3.11/site-packages/requests/adapters.py", line 519, in send"#,
    r#"myapp[3001]: {"level":"info","msg":"login ok","user":"bob","password_changed_at":"2024-01-02T03:04:05Z","token_type":"bearer","expires_in":3600}"#,
    "gnome-keyring-daemon[1500]: The Secret Service was already initialized",
    "NetworkManager[900]: <info>  [1715911201.1234] device (wlp2s0): state change: activated -> deactivated (reason 'connection-removed')",
    "dbus-daemon[700]: [system] Successfully activated service 'org.freedesktop.nm_dispatcher'",
    "ollama[2500]: llama_model_loader: - kv  22: tokenizer.ggml.eos_token_id u32 = 128009",
    r#"ollama[2500]: [GIN] 2024/05/17 - 03:00:10 | 200 |  2.345678901s |       127.0.0.1 | POST     "/api/chat""#,
    "polkitd[1200]: Registered Authentication Agent for unix-session:3 (system bus name :1.42 [/usr/bin/gnome-shell], object path /org/freedesktop/PolicyKit1/AuthenticationAgent, locale en_US.UTF-8)",
    "backup.sh[1990]: reading password from /run/agenix/restic-password (password_file=/run/agenix/restic-password)",
];

#[test]
fn the_corpus_is_well_formed() {
    let distinct: HashSet<&str> = SECRETS.iter().map(|c| c.secret).collect();
    assert_eq!(distinct.len(), SECRETS.len(), "a secret is listed twice");
    assert!(SECRETS.len() >= 30, "{} secrets", SECRETS.len());
    assert!(KEPT.len() >= 15, "{} kept lines", KEPT.len());
    for case in SECRETS {
        assert_eq!(case.line.matches("{}").count(), 1, "{}", case.line);
    }
}

#[test]
fn no_secret_in_the_corpus_survives() {
    let mut leaks = Vec::new();
    for case in SECRETS {
        let line = line_of(case);
        let out = redact(&line);
        if out.contains(case.secret) {
            leaks.push(format!("{}\n  -> {out}", case.secret));
        }
    }
    assert!(leaks.is_empty(), "secrets survived redaction:\n{}", leaks.join("\n"));
}

#[test]
fn each_masked_secret_names_its_kind() {
    for case in SECRETS {
        let out = redact(&line_of(case)).into_owned();
        let marker = format!("[redacted:{}]", case.kind);
        assert!(out.contains(&marker), "expected {marker} in {out}");
    }
}

/// The marker replaces the secret and little else (a PEM block's armour of
/// about 70 bytes, the rest of a `Cookie:` header): the line stays readable.
#[test]
fn masking_takes_little_beyond_the_secret() {
    for case in SECRETS {
        let line = line_of(case);
        let out = redact(&line);
        let marker = format!("[redacted:{}]", case.kind);
        let kept = out.len() - marker.len();
        assert!(kept + case.secret.len() + 80 >= line.len(), "too much masked:\n{line}\n  -> {out}");
        assert!(out.starts_with(case.line.split(':').next().unwrap()), "{out}");
    }
}

#[test]
fn lines_without_secrets_come_out_unchanged_and_borrowed() {
    for line in KEPT {
        let out = redact(line);
        assert_eq!(out, *line);
        assert!(matches!(out, Cow::Borrowed(_)), "{line} was copied");
    }
}

#[test]
fn redacting_the_corpus_twice_changes_nothing() {
    let all: Vec<String> = SECRETS.iter().map(line_of).chain(KEPT.iter().map(|l| l.to_string())).collect();
    for line in &all {
        let once = redact(line).into_owned();
        assert_eq!(redact(&once), once.as_str(), "{line}");
    }
    let joined = all.join("\n");
    let once = redact(&joined).into_owned();
    assert_eq!(redact(&once), once.as_str());
    for case in SECRETS {
        assert!(!once.contains(case.secret), "{} survived in the joined text", case.secret);
    }
}
