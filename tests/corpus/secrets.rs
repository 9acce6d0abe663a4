//! The secrets of the redaction corpus: realistic journal lines from
//! sshd, nginx, postgres, docker, systemd, application JSON logs, curl
//! command lines, environment dumps and stack traces, each with a secret
//! that must never leave macha unmasked. Read by `tests/redaction.rs` (the
//! masking itself) and `tests/memory_chroma.rs` (nothing of them reaches
//! the memory stores).
//!
//! All secrets here are random fakes made for this file. Those with a vendor
//! prefix are split with `concat!` so that secret scanners do not flag it.

/// A journal line with `{}` where the secret goes, the secret, and the kind
/// its marker must name.
pub struct Case {
    pub line: &'static str,
    pub secret: &'static str,
    pub kind: &'static str,
}

const fn case(line: &'static str, secret: &'static str, kind: &'static str) -> Case {
    Case { line, secret, kind }
}

pub const SECRETS: &[Case] = &[
    // sshd, sudo, cron
    case(
        "sudo[3311]:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/run/current-system/sw/bin/mysql -u root --password={}",
        "Qz8#vL2p!mR5",
        "password",
    ),
    case(
        r#"sshd[1720]: error: kex_exchange_identification: banner line contains invalid characters: "Authorization: Basic {}""#,
        "YWRtaW46Y2hhbmdlbWUxMjM=",
        "basic-auth",
    ),
    case(
        "CROND[991]: (root) CMD (curl -fsS -u backup:{} https://backup.example.org/ping >/dev/null)",
        "Bk7!uP2x9LmQ",
        "password",
    ),
    // nginx, haproxy
    case(
        r#"nginx[812]: 203.0.113.7 - - [17/May/2024:03:00:01 +0000] "GET /api/v2/export?access_token={}&format=csv HTTP/1.1" 200 5123 "-" "curl/8.6.0""#,
        "Yk3mP9qL2xV7nR4t",
        "token",
    ),
    case(
        r#"nginx[812]: 2024/05/17 03:00:02 [error] 812#812: *4411 upstream timed out (110: Connection timed out) while reading response header from upstream, client: 203.0.113.7, server: api.example.org, request: "POST /v1/charge HTTP/1.1", referrer: "https://shop.example.org/checkout?session_id={}""#,
        "cs_a1B2c3D4e5F6g7H8i9J0kLmN",
        "session",
    ),
    case(
        r#"haproxy[900]: 203.0.113.7:51522 [17/May/2024:03:00:01.123] fe be/srv1 0/0/1/2/3 200 512 - - ---- 1/1/0/0/0 0/0 {Cookie: sessionid={}; theme=dark} "GET / HTTP/1.1""#,
        "Q2x9LmK4vT7pR1zW8nY3",
        "cookie",
    ),
    case(
        r#"nginx[812]: 198.51.100.4 - - [17/May/2024:03:00:03 +0000] "GET /api/me?jwt={} HTTP/1.1" 401 0 "-" "python-requests/2.31.0""#,
        concat!(
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.",
            "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6InN2Yy1iYWNrdXAiLCJpYXQiOjE3MTU5MTEyMDF9.",
            "2EPnWNmvn-JGRl7URsmABHDhy_G9wd_EWsR3IDhg9cs"
        ),
        "jwt",
    ),
    // postgres, mysql, grafana, celery
    case("postgres[1402]: [1402] LOG:  statement: ALTER ROLE app_rw WITH LOGIN PASSWORD '{}'", "v9#Lm2!qRt7zX", "password"),
    case(
        r#"postgres[1402]: [1402] LOG:  parameter "primary_conninfo" changed to "host=10.0.0.4 port=5432 user=replicator password={} sslmode=require""#,
        "Rp1ic4t0r-Xk92",
        "password",
    ),
    case(
        r#"grafana[2210]: logger=sqlstore t=2024-05-17T03:00:05Z level=error msg="failed to connect" url=postgres://grafana:{}@db.internal:5432/grafana?sslmode=disable"#,
        "Gr4f4n4-Pg-2024",
        "url-password",
    ),
    case(
        "celery[3300]: [2024-05-17 03:00:09,001: ERROR/MainProcess] consumer: Cannot connect to redis://:{}@10.0.0.5:6379/0: Error 111 connecting to 10.0.0.5:6379. Connection refused.",
        "Rd1s-Pw-Qx82",
        "url-password",
    ),
    // docker
    case(
        r#"dockerd[1187]: time="2024-05-17T03:00:06.123456789Z" level=info msg="Container started" container=web env="[POSTGRES_PASSWORD={} POSTGRES_USER=app]""#,
        "Dk8@pLq3zN",
        "password",
    ),
    case(
        "docker-login-start[1190]: + docker login --username ci-bot --password {} registry.example.org",
        concat!("dckr", "_pat_ZL4e3xuiTFTOD5VuznVTzqWhu4o"),
        "docker-token",
    ),
    case(
        r#"inspect[1200]:     "Env": ["REDIS_PASSWORD={}","PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"],"#,
        "Rd5!sQ0mKx",
        "password",
    ),
    // systemd
    case("app-start[4410]: + export RESTIC_PASSWORD={}", "Rst-7Hq2Lp9Xv4Lk", "password"),
    case(
        r#"systemd[1]: Started run-u42.service - /run/current-system/sw/bin/curl -H "Authorization: Bearer {}" https://api.example.org/v1/sync."#,
        "7fKq0ZxP1mLw92RaT5sV",
        "bearer",
    ),
    // application JSON logs
    case(
        r#"myapp[3001]: {"level":"error","ts":1715911206.1,"msg":"login failed","user":"bob","password":"{}","ip":"203.0.113.7"}"#,
        "c0rrect-h0rse-B4ttery",
        "password",
    ),
    case(
        r#"myapp[3001]: {"level":"debug","msg":"calling upstream","headers":{"X-Api-Key":"{}","Accept":"application/json"}}"#,
        "ak_9Fq2LmZx8Rt4Vp1Kw7Ny",
        "api-key",
    ),
    case(
        r#"myapp[3001]: {"level":"info","msg":"oauth token refreshed","access_token":"{}","expires_in":3599}"#,
        "ya29.a0AfH6SMBx3Kq9LmZ2pR7tV1nW",
        "token",
    ),
    case(
        r#"worker[3002]: {"level":"warn","msg":"job payload","data":"{\"user\":\"svc\",\"client_secret\":\"{}\"}"}"#,
        "Cs3cr3t-9Lq2Zx",
        "secret",
    ),
    case(
        "api[2201]: 2024-05-17 03:00:07,123 DEBUG openai: request to https://api.openai.com/v1/chat/completions with key {}",
        concat!("sk-", "proj-dWfKgmBGcFq9ZwJbfJyLHtN32TLyJkX9pkETJ-7e0QBLUM2C"),
        "openai-key",
    ),
    case(
        "app[2201]: signing webhook payload with {} (hmac-sha256)",
        "b8kzFiwuQXL3Cdc+fSn+VL5kHPNRKMXZPhbIAIh8UCc=",
        "high-entropy",
    ),
    case(
        "charon[1000]: 05[CFG] loaded IKE shared key with id 'vpn-site-b' for: 'gw.example.org' {}",
        "2da323f88357ff0ace855efdb9677a9a15591b82c6fcef083d3cdd000002d22e",
        "high-entropy",
    ),
    // curl and notification scripts
    case(
        r#"backup.sh[1990]: + curl -sS -H "X-Gotify-Key: {}" -F title=backup https://push.example.org/message"#,
        "AURzYOApCRIDnFP",
        "secret-key",
    ),
    case("gotify-notify[2001]: POST https://push.example.org/message?token={} failed: connection refused", "AKx3.bN7-Lq2Zw9", "token"),
    case(
        r#"deploy[3002]: + curl --fail -H "PRIVATE-TOKEN: {}" https://gitlab.example.org/api/v4/projects/12/pipeline"#,
        concat!("gl", "pat-t2KkGoTO85SkUIW_Q4bs"),
        "gitlab-token",
    ),
    case(
        "alertmanager[1022]: level=error component=notifier msg=\"Notify failed\" integration=slack url=https://hooks.slack.com/services/{}",
        concat!("T04ABCD1234/B05EFGH5678/", "q8Lm2Zr7Kx4Vn9Pw1Ty6Bs3D"),
        "slack-webhook",
    ),
    case("curl[5000]: > Authorization: Basic {}", "ZGVwbG95Omh6QlZMWG1qMWI2NU5E", "basic-auth"),
    // environment dumps
    case("app-env[812]: AWS_ACCESS_KEY_ID={}", concat!("AKIA", "7WFDKKXJM9JGKGVF"), "aws-key"),
    case("app-env[812]: AWS_SECRET_ACCESS_KEY={}", "ogKa2RISQU/bi74H7Es1QJFMT89mgQ5g5FFkYex8", "aws-secret"),
    case("app-env[812]: AWS_SESSION_TOKEN={}", concat!("ASIA", "A76L8YX8TEVJW3US"), "aws-key"),
    case("app-env[812]: GITHUB_TOKEN={}", concat!("gh", "p_JcwTR011VreG2GYXt4FozXCOC9p8NYeDUf1z"), "github-token"),
    case("app-env[812]: NPM_TOKEN={}", concat!("np", "m_Mgh09lxGc0zIEy3LesvdcTw8a5kR8Mcxpf72"), "npm-token"),
    case(
        "app-env[812]: TWINE_PASSWORD={}",
        concat!("py", "pi-AgEIcHlwaS5vcmcrpDi0sPvbbZ1mtkKijVwwSnT74aAD3c9Od9e6OQT_UwFVcDCty1a5YAbg-Js"),
        "pypi-token",
    ),
    case(
        "app-env[812]: SLACK_BOT_TOKEN={}",
        concat!("xo", "xb-840837056297-4519462053655-kyUuJJR2FRUjMv3AmmsSpngi"),
        "slack-token",
    ),
    case("app-env[812]: GOOGLE_MAPS_KEY={}", concat!("AI", "zaq8cBa_GnTObzfdKpUlgH8CUUdRQOXHvfAeS"), "google-api-key"),
    case("app-env[812]: HF_TOKEN={}", concat!("hf", "_70NRtbN2zhpBhyIrLxmS7OarfpqPA7CwyL"), "huggingface-token"),
    case("app-env[812]: SESSION_SECRET={}", "3c9f1a7e5b2d8c4f6a0e9b1d7c3f5a2e8b4d6c0f1a3e5b7d9c2f4a6e8b0d1c3f", "secret"),
    case(
        "tailscaled[700]: + tailscale up --authkey={} --ssh",
        concat!("ts", "key-auth-ko37J8ZVCaQKCNTRL-E083ZU4qPNYEGLlFbw4LWB3rOh6Y5p1zc"),
        "tailscale-key",
    ),
    case(
        "agenix[610]: decrypting secrets with identity {}",
        concat!("AGE-SECRET", "-KEY-10EPLV8FQ27PH3AMYTW4FLP9FY3FWXJ0JSE4UU6V5PAAK42N38MT9AX5H79"),
        "age-key",
    ),
    case("vault-agent[1300]: renewed token {} (ttl 768h)", concat!("hv", "s.zZucC3DRPTWrD9xbvrRAvAJG"), "vault-token"),
    // stack traces
    case(
        r#"java[4100]: Caused by: org.postgresql.util.PSQLException: FATAL: password authentication failed for user "app" (jdbc:postgresql://db:5432/app?user=app&password={})"#,
        "J4va-Pg!x9Lm",
        "password",
    ),
    case(
        "node[5100]:     at Object.<anonymous> (/srv/app/index.js:12:9) { config: { url: 'https://api.example.org', headers: { Authorization: 'Bearer {}' } } }",
        "9Zk2Lm4Qx7Rt1Vp8Wn3Y",
        "bearer",
    ),
    case(
        "app[2201]: requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: https://api.example.org/v1/items?apikey={}",
        "Qm7Zx2Lk9Rt4Vp1W",
        "api-key",
    ),
    case(
        "app[2201]: stripe.error.AuthenticationError: Invalid API Key provided: {}",
        concat!("sk", "_live_ju1lCiGSvBcD8v2CjaIffaNk"),
        "stripe-key",
    ),
    case(
        "nixos-upgrade[4000]: fatal: unable to access 'https://x-access-token:{}@github.com/example/nixos-config.git/': The requested URL returned error: 403",
        concat!("gh", "s_g5PS0Te18UPWW1IEe7taX4KgnJttZoXyJOi0"),
        "github-token",
    ),
    // private keys, flattened by the logger
    case(
        "app[2201]: loaded TLS key: -----BEGIN EC PRIVATE KEY----- {} -----END EC PRIVATE KEY-----",
        "MHcCAQEEIIGlRHk3pQ2nT8vXq5mZ1cLw9yK4bR7sJ0uF6eD2aH3oAoGCCqGSM49AwEHoUQDQgAE",
        "private-key",
    ),
    case(
        r#"deploy[3002]: {"msg":"deploy key","key":"-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n"}"#,
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW",
        "private-key",
    ),
];

/// The journal line with its secret in place.
pub fn line_of(case: &Case) -> String {
    case.line.replacen("{}", case.secret, 1)
}
