//! Secret redaction: the last filter before text leaves macha's hands.
//!
//! Journal lines go into the model's prompt, into Gotify notifications and
//! into the log of model calls. Programs log credentials by mistake (a
//! connection string, a `curl -H "Authorization: ..."`, an environment dump),
//! and none of those destinations should ever see them. [`redact`] replaces
//! each secret it recognises with a marker that names its kind
//! (`[redacted:password]`) and keeps the text around it, so the line still
//! says what happened: `password=hunter2` becomes
//! `password=[redacted:password]`.
//!
//! Recognition runs from precise to heuristic, and an earlier rule's marker is
//! never touched by a later one:
//!
//! 1. PEM private key blocks, also flattened onto one line; a `BEGIN` line
//!    without its `END` is masked to the end of its line.
//! 2. Token formats with a recognisable prefix (AWS key ids, GitHub, GitLab,
//!    Slack, Stripe, Google, OpenAI-style `sk-`, JWTs, npm, PyPI, Tailscale,
//!    age, Vault, Docker Hub, Hugging Face).
//! 3. Context: credentials in URLs, `Authorization` and `Cookie` headers,
//!    `curl -u user:pass`, `mysql -pSECRET`, SQL `PASSWORD '...'`, and
//!    `key=value`, `key: value`, `"key": "value"`, `<key>value</key>` and
//!    `--key value` where the key names a secret (password, token, secret, api key, auth, credentials, session,
//!    cookie, ...). Placeholders (`true`, `none`, `****`, `${VAR}`) and
//!    absolute paths (`secret=/run/secrets/db`) are values that are kept.
//! 4. Long random-looking strings with no context at all (see
//!    `is_random` and `hex_is_secret` for the thresholds and why).
//!
//! Things that look random but are not secret and that macha needs stay as
//! they are: canonical UUIDs, 32-hex boot, machine and invocation ids, 40-hex
//! commit hashes (unless a secret-ish word is right before them), Nix store
//! hashes, digests labelled with their algorithm (`sha256:...`,
//! `sha256-...=`), SSH public keys and systemd unit names.
//!
//! The function is idempotent (a marker is never masked again, and passes are
//! repeated until one finds nothing) and never panics on any UTF-8 input.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::{LazyLock, OnceLock};

use regex::{Captures, Regex, RegexSet};

/// Every marker starts with this; a candidate secret that does is one a
/// previous rule or pass already masked.
const MARKER_PREFIX: &str = "[redacted:";

/// Upper bound on passes over the text. Each pass that changes the text turns
/// unmasked characters into a marker, so the sequence ends on its own; in
/// practice the second pass finds nothing. The bound keeps a rule bug from
/// becoming a hang in the daemon.
const MAX_PASSES: usize = 8;

/// `text` with every recognised secret replaced by `[redacted:KIND]`.
/// Borrows `text` when nothing was found, which is the common case.
pub fn redact(text: &str) -> Cow<'_, str> {
    let Some(mut current) = pass(text) else {
        return Cow::Borrowed(text);
    };
    for _ in 1..MAX_PASSES {
        match pass(&current) {
            Some(next) => current = next,
            None => break,
        }
    }
    Cow::Owned(current)
}

/// One secret found in a text: where it is and what kind it is.
struct Found {
    span: Range<usize>,
    kind: &'static str,
}

/// Runs every rule once, in order, each on the previous one's output.
/// `None` when no rule found anything.
fn pass(text: &str) -> Option<String> {
    // One scan tells which rules match at all; most lines match none. A rule
    // that only matches after an earlier rule's change is caught by the next
    // pass, which scans again.
    let matching = RULE_SET.matches(text);
    let mut current = Cow::Borrowed(text);
    let mut found = Vec::new();
    for rule in matching.iter().map(|i| &RULES[i]) {
        rule.find(&current, &mut found);
        if !found.is_empty() {
            current = Cow::Owned(mask(&current, &found));
            found.clear();
        }
    }
    high_entropy(&current, &mut found);
    if !found.is_empty() {
        current = Cow::Owned(mask(&current, &found));
    }
    match current {
        Cow::Borrowed(_) => None,
        Cow::Owned(text) => Some(text),
    }
}

/// `text` with each span of `found` (in order, not overlapping) replaced by
/// its marker.
fn mask(text: &str, found: &[Found]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for secret in found {
        debug_assert!(secret.span.start >= last, "overlapping spans");
        out.push_str(&text[last..secret.span.start]);
        out.push_str(MARKER_PREFIX);
        out.push_str(secret.kind);
        out.push(']');
        last = secret.span.end;
    }
    out.push_str(&text[last..]);
    out
}

/// A pattern and how to pick the secret out of one of its matches. The
/// pattern is compiled the first time a line may match it (`RULE_SET` says
/// so): most hosts' logs need few of the rules, and each compiled rule
/// costs tens of KiB for as long as the daemon runs.
struct Rule {
    pattern: &'static str,
    regex: OnceLock<Regex>,
    pick: Pick,
}

enum Pick {
    /// The whole match is the secret.
    Whole(&'static str),
    /// The whole match is the secret if the check accepts it.
    WholeIf(&'static str, fn(&str) -> bool),
    /// Capture group 1 is the secret.
    Group(&'static str),
    /// Capture group 1 is the secret if the check accepts it.
    GroupIf(&'static str, fn(&str) -> bool),
    /// The function picks the span and the kind, or declines.
    With(fn(&Captures<'_>) -> Option<Found>),
}

impl Rule {
    fn new(pattern: &'static str, pick: Pick) -> Self {
        Self { pattern, regex: OnceLock::new(), pick }
    }

    /// The compiled pattern. Every pattern compiled once already, in
    /// `RULE_SET`, before any rule is asked for.
    fn regex(&self) -> &Regex {
        self.regex.get_or_init(|| {
            Regex::new(self.pattern).unwrap_or_else(|e| panic!("built-in redaction pattern {:?}: {e}", self.pattern))
        })
    }

    fn find(&self, text: &str, found: &mut Vec<Found>) {
        for caps in self.regex().captures_iter(text) {
            let secret = match self.pick {
                Pick::Whole(kind) => caps.get(0).map(|m| Found { span: m.range(), kind }),
                Pick::WholeIf(kind, check) => {
                    caps.get(0).filter(|m| check(m.as_str())).map(|m| Found { span: m.range(), kind })
                }
                Pick::Group(kind) => caps.get(1).map(|m| Found { span: m.range(), kind }),
                Pick::GroupIf(kind, check) => {
                    caps.get(1).filter(|m| check(m.as_str())).map(|m| Found { span: m.range(), kind })
                }
                Pick::With(pick) => pick(&caps),
            };
            if let Some(secret) = secret {
                let value = &text[secret.span.clone()];
                if !value.is_empty() && !value.starts_with(MARKER_PREFIX) {
                    found.push(secret);
                }
            }
        }
    }
}

/// The rules before the entropy scan, in the order they run. `(?-u:\b)` is an
/// ASCII word boundary: every pattern anchors on ASCII text, and it keeps the
/// fast regex engines usable on lines with non-ASCII characters.
static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    use Pick::{Group, GroupIf, Whole, WholeIf, With};
    vec![
        // 1. Private keys. The block first, then a BEGIN whose END is not in
        // the text (a truncated line, or one journal entry per PEM line).
        Rule::new(
            r"(?s)-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----",
            Whole("private-key"),
        ),
        Rule::new(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----[^\r\n]*", Whole("private-key")),
        // 2. Token formats.
        Rule::new(
            r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|AROA|ANPA|ANVA|APKA)[A-Z0-9]{16}(?-u:\b)",
            Whole("aws-key"),
        ),
        Rule::new(r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})", Whole("github-token")),
        Rule::new(r"(?-u:\b)gl(?:pat|dt|rt|ptt|ft|soat|cbt|imt|oas)-[A-Za-z0-9_-]{20,}", Whole("gitlab-token")),
        Rule::new(r"(?-u:\b)(?:xox[abposr]|xapp)-[A-Za-z0-9-]{10,}", Whole("slack-token")),
        Rule::new(r"hooks\.slack\.com/services/([A-Za-z0-9_/-]+)", Group("slack-webhook")),
        Rule::new(r"(?-u:\b)(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{24,})", Whole("stripe-key")),
        Rule::new(r"(?-u:\b)AIza[A-Za-z0-9_-]{30,}", Whole("google-api-key")),
        // `sk-` alone is too common a prefix (`sk-ssh-ed25519@openssh.com`):
        // the rest must mix upper case, lower case and digits.
        Rule::new(r"(?-u:\b)sk-[A-Za-z0-9_-]{20,}", WholeIf("openai-key", |s| mixes_cases_and_digits(&s[3..]))),
        Rule::new(r"(?-u:\b)eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*", Whole("jwt")),
        Rule::new(r"(?-u:\b)npm_[A-Za-z0-9]{36}(?-u:\b)", Whole("npm-token")),
        Rule::new(r"(?-u:\b)pypi-[A-Za-z0-9_-]{32,}", WholeIf("pypi-token", |s| mixes_cases_and_digits(&s[5..]))),
        Rule::new(r"(?-u:\b)tskey-[A-Za-z0-9_-]{16,}", Whole("tailscale-key")),
        Rule::new(r"(?-u:\b)AGE-SECRET-KEY-1[0-9A-Z]{50,}", Whole("age-key")),
        Rule::new(r"(?-u:\b)hv[sbr]\.[A-Za-z0-9_-]{24,}", Whole("vault-token")),
        Rule::new(r"(?-u:\b)dckr_pat_[A-Za-z0-9_-]{20,}", Whole("docker-token")),
        Rule::new(r"(?-u:\b)hf_[A-Za-z0-9]{30,}", WholeIf("huggingface-token", |s| mixes_cases_and_digits(&s[3..]))),
        // 3. Context. `scheme://user:password@host`: userinfo cannot contain
        // `/` or `@` unescaped (RFC 3986), which bounds the password.
        Rule::new(r#"(?-u:\b)[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'"]*:([^\s@/'"]+)@"#, Group("url-password")),
        Rule::new(
            r#"(?i)(?-u:\b)(?:proxy-)?authorization["']?[ \t]*[:=][ \t]*["']?(?:(?P<scheme>bearer|basic|token|digest|negotiate|ntlm|apikey|key|sso-key)[ \t]+)?(?P<v>[^\s"',]+)"#,
            With(authorization),
        ),
        Rule::new(r#"(?i)(?-u:\b)(?:set-)?cookie[ \t]*:[ \t]*(?P<v>[^\r\n"']+)"#, With(cookie_header)),
        Rule::new(r"(?i)(?-u:\b)bearer[ \t]+(?P<v>[A-Za-z0-9._~+/-]+=*)", With(bare_bearer)),
        Rule::new(
            r#"(?:^|\s)(?:-u|--user|--proxy-user)[ \t]+["']?[^\s:"']*:([^\s"']+)"#,
            GroupIf("password", |s| !s.bytes().all(|b| b.is_ascii_digit())),
        ),
        // `mysql -pSECRET`: the client's password flag takes its value attached.
        Rule::new(
            r"(?-u:\b)(?:mysql|mysqldump|mysqladmin|mariadb|mariadb-dump)(?-u:\b)[^\n]*?[ \t]-p([^\s'\x22]+)",
            Group("password"),
        ),
        Rule::new(
            r#"(?i)(?-u:\b)(?:password|identified[ \t]+by)[ \t]+(?:'(?P<sq>(?:[^'\\]|\\.|'')*)'|"(?P<dq>(?:[^"\\]|\\.)*)")"#,
            With(|caps| quoted_value(caps).map(|m| Found { span: m.range(), kind: "password" })),
        ),
        Rule::new(
            concat!(
                r#"(?i)(?P<key>[a-z0-9_.-]*"#,
                r"(?:pass(?:word|wd|phrase)?|pwd|secret|token|key|auth(?:orization)?|credentials?|creds",
                r"|session(?:[_-]?id)?|sessid|cookie|psk|bearer))",
                r#"(?P<sep>(?:\\?["'])?[ \t]*(?::=|=>|[:=])[ \t]*)"#,
                r#"(?:"(?P<dq>(?:[^"\\]|\\.)*)"|'(?P<sq>(?:[^'\\]|\\.)*)'|\\"(?P<eq>(?:[^"\\]|\\[^"])*)\\""#,
                r#"|(?P<bare>(?:[^\s"',;]|[,;][^\s"',;])+))"#,
            ),
            With(key_value),
        ),
        Rule::new(
            concat!(
                r"(?i)<(?P<key>[a-z0-9_.:-]*(?:pass(?:word|wd|phrase)?|pwd|secret|token|key|auth|credentials?|creds|psk))>",
                r"(?P<bare>[^<]+)</",
            ),
            With(xml_value),
        ),
        Rule::new(
            concat!(
                r#"(?i)(?:^|[\s"'])(?P<key>--?(?:[a-z][a-z0-9_.-]*)?"#,
                r"(?:pass(?:word|wd|phrase)?|pwd|secret|token|key|auth|credentials?|creds|psk|bearer))[ \t]+",
                r#"(?:"(?P<dq>(?:[^"\\]|\\.)*)"|'(?P<sq>(?:[^'\\]|\\.)*)'|(?P<bare>[^\s"'-][^\s"']*))"#,
            ),
            With(flag_value),
        ),
    ]
});

/// All rule patterns at once, to skip the rules that cannot match.
static RULE_SET: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new(RULES.iter().map(|rule| rule.pattern)).expect("the built-in redaction patterns compile")
});

/// Upper case, lower case and a digit: what generated tokens have and words
/// and names almost never do.
fn mixes_cases_and_digits(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_uppercase())
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && s.bytes().any(|b| b.is_ascii_digit())
}

/// The inner text of whichever quoted or bare value alternative matched.
fn quoted_value<'h>(caps: &Captures<'h>) -> Option<regex::Match<'h>> {
    ["dq", "sq", "eq", "bare"].into_iter().find_map(|name| caps.name(name))
}

fn authorization(caps: &Captures<'_>) -> Option<Found> {
    let value = caps.name("v")?;
    let scheme = caps.name("scheme").map(|m| m.as_str().to_ascii_lowercase());
    let kind = match scheme.as_deref() {
        Some("bearer") => "bearer",
        Some("basic") => "basic-auth",
        _ => "authorization",
    };
    plausible_value(value.as_str(), kind).then(|| Found { span: value.range(), kind })
}

fn cookie_header(caps: &Captures<'_>) -> Option<Found> {
    let value = caps.name("v")?;
    let trimmed = value.as_str().trim_end();
    let span = value.start()..value.start() + trimmed.len();
    plausible_value(trimmed, "cookie").then_some(Found { span, kind: "cookie" })
}

/// `Bearer X` outside an `Authorization` header (`token: Bearer X`, a
/// client's debug line). "Bearer realm=..." and English text must stay, so
/// the value has to look generated: long, with letters and digits.
fn bare_bearer(caps: &Captures<'_>) -> Option<Found> {
    let value = caps.name("v")?;
    let s = value.as_str();
    let generated =
        s.len() >= 16 && s.bytes().any(|b| b.is_ascii_digit()) && s.bytes().any(|b| b.is_ascii_alphabetic());
    generated.then(|| Found { span: value.range(), kind: "bearer" })
}

fn key_value(caps: &Captures<'_>) -> Option<Found> {
    let key = caps.name("key")?.as_str();
    let kind = key_kind(key)?;
    let sep = caps.name("sep").map_or("", |s| s.as_str());
    // `pam_unix(passwd:chauthtok)`, `passwd: password updated successfully`:
    // the program, not a key.
    if sep.trim() == ":" && PASSWORD_PROGRAMS.iter().any(|p| key.eq_ignore_ascii_case(p)) {
        return None;
    }
    let value = quoted_value(caps)?;
    let mut span = value.range();
    if let Some(bare) = caps.name("bare") {
        // `"auth": {"user": ...}`: a nested object, whose own keys are judged.
        if bare.as_str().starts_with(['{', '[']) {
            return None;
        }
        // `token= user=root`: the key has no value and the next field follows.
        let spaced = sep.ends_with([' ', '\t']);
        if spaced && looks_like_assignment(bare.as_str()) {
            return None;
        }
        // `?token=abc&user=bob`: a query string goes on after `&`; a `&`
        // not followed by `name=` is part of the password.
        let text = bare.as_str();
        if let Some(cut) = text.match_indices('&').map(|(i, _)| i).find(|&i| looks_like_assignment(&text[i + 1..])) {
            span.end = span.start + cut;
        }
    }
    let text = &value.as_str()[..span.len()];
    // `{"token": null}`: judge the value without the brackets that close
    // around it, but mask them with it.
    let unbracketed = text.trim_end_matches([')', ']', '}', '>']);
    (plausible_value(text, kind) && plausible_value(unbracketed, kind)).then_some(Found { span, kind })
}

/// `<password>hunter2</password>`: the element's name is the key.
fn xml_value(caps: &Captures<'_>) -> Option<Found> {
    let kind = key_kind(caps.name("key")?.as_str())?;
    let value = caps.name("bare")?;
    plausible_value(value.as_str(), kind).then(|| Found { span: value.range(), kind })
}

fn flag_value(caps: &Captures<'_>) -> Option<Found> {
    let key = caps.name("key")?.as_str().trim_start_matches('-');
    let lower = key.to_ascii_lowercase();
    if lower.starts_with("no-") || lower.starts_with("ask-") {
        return None;
    }
    let kind = key_kind(key)?;
    let value = quoted_value(caps)?;
    plausible_value(value.as_str(), kind).then(|| Found { span: value.range(), kind })
}

/// Programs whose name ends like a secret key and that log `NAME: ...`.
const PASSWORD_PROGRAMS: &[&str] = &["passwd", "chpasswd", "gpasswd", "lpasswd", "smbpasswd", "htpasswd"];

/// `ident=...`: the start of another key=value pair.
fn looks_like_assignment(value: &str) -> bool {
    let ident = value.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
    ident > 0 && value.as_bytes().get(ident) == Some(&b'=')
}

/// Words that qualify a `...key` as a secret key; a bare `key=` or
/// `primary_key=` or `ssh_host_key=` is not one.
const KEY_QUALIFIERS: &[&str] = &[
    "api",
    "access",
    "private",
    "secret",
    "auth",
    "gotify",
    "master",
    "encryption",
    "encrypt",
    "signing",
    "client",
    "license",
    "app",
    "account",
    "storage",
    "webhook",
    "shared",
    "session",
    "hmac",
    "jwt",
];

/// The kind of secret a key names, from how it ends; `None` for a key that
/// names no secret. Ends-with, not contains: `password_file`, `token_type`,
/// `secret_path` and `max_tokens` name things that are not secrets.
fn key_kind(key: &str) -> Option<&'static str> {
    let key = key.trim_start_matches('-').to_ascii_lowercase();
    let ends_word = |word: &str| {
        key == word
            || key.strip_suffix(word).is_some_and(|stem| stem.ends_with(['_', '-', '.']) || stem.ends_with("db"))
    };
    if ["password", "passwd", "passphrase"].iter().any(|w| key.ends_with(w)) || ends_word("pass") || ends_word("pwd") {
        Some("password")
    } else if key.ends_with("secret") {
        Some(if key.contains("aws") { "aws-secret" } else { "secret" })
    } else if key.ends_with("token") {
        Some("token")
    } else if let Some(stem) = key.strip_suffix("key") {
        let stem = stem.trim_end_matches(['_', '-', '.']);
        if !(key.starts_with("x-") || KEY_QUALIFIERS.iter().any(|q| stem.ends_with(q))) {
            None
        } else if key.contains("aws") && key.contains("secret") {
            Some("aws-secret")
        } else if key.contains("private") {
            Some("private-key")
        } else if key.contains("api") {
            Some("api-key")
        } else {
            Some("secret-key")
        }
    } else if key.ends_with("auth") || key.ends_with("authorization") {
        Some("auth")
    } else if key.ends_with("credential") || key.ends_with("credentials") || key.ends_with("creds") {
        Some("credential")
    } else if ["session", "sessionid", "session_id", "session-id", "sessid"].iter().any(|s| key.ends_with(s)) {
        Some("session")
    } else if key.ends_with("cookie") {
        Some("cookie")
    } else if key.ends_with("psk") {
        Some("psk")
    } else if key.ends_with("bearer") {
        Some("bearer")
    } else {
        None
    }
}

/// Values after a secret-naming key that are not secrets: booleans, states,
/// the words of an English sentence ("secret: not set"), auth schemes, and
/// what other tools print instead of a secret.
const NOT_SECRETS: &[&str] = &[
    "true",
    "false",
    "yes",
    "no",
    "on",
    "off",
    "ok",
    "null",
    "nil",
    "none",
    "undefined",
    "empty",
    "unset",
    "set",
    "required",
    "optional",
    "invalid",
    "expired",
    "missing",
    "denied",
    "incorrect",
    "wrong",
    "failed",
    "failure",
    "not",
    "is",
    "was",
    "the",
    "for",
    "to",
    "of",
    "from",
    "with",
    "and",
    "or",
    "in",
    "bearer",
    "basic",
    "digest",
    "negotiate",
    "ntlm",
    "password",
    "passwd",
    "secret",
    "token",
    "redacted",
    "[redacted]",
    "<redacted>",
    "[filtered]",
    "hidden",
    "masked",
    "(null)",
    "<nil>",
    "-",
    "0",
    "1",
];

/// Whether `value`, found after a key of `kind`, can be a secret.
fn plausible_value(value: &str, kind: &str) -> bool {
    if value.is_empty() || value.starts_with(MARKER_PREFIX) {
        return false;
    }
    // `Authorization: 'Bearer [redacted:bearer]'`: an earlier rule masked the
    // secret in this value; what is left decides.
    if value.contains(MARKER_PREFIX) {
        return plausible_value(without_markers(value).trim(), kind);
    }
    if NOT_SECRETS.iter().any(|w| value.eq_ignore_ascii_case(w)) {
        return false;
    }
    // Already masked by whoever logged it.
    if value.len() >= 3 && value.bytes().all(|b| matches!(b, b'*' | b'x' | b'X' | b'.')) {
        return false;
    }
    // A reference to the secret, not the secret: `secret=/run/secrets/db`,
    // `PWD=/root`, `password=${DB_PASSWORD}`, `password=$DB_PASSWORD`, `%s`.
    if value.starts_with('/') || value.starts_with("${") || value.starts_with("{{") || value == "%s" {
        return false;
    }
    if let Some(var) = value.strip_prefix('$') {
        if !var.is_empty() && var.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') {
            return false;
        }
    }
    if value.starts_with('<') && value.ends_with('>') {
        return false;
    }
    // A session number (`unix-session:3`) is not a session secret; session
    // ids that are secrets are long.
    if kind == "session" && value.len() < 8 {
        return false;
    }
    true
}

/// `text` without the markers in it (an unclosed one runs to the end).
fn without_markers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(MARKER_PREFIX) {
        out.push_str(&rest[..start]);
        rest = rest[start..].find(']').map_or("", |end| &rest[start + end + 1..]);
    }
    out.push_str(rest);
    out
}

/// Runs of characters that base64, base64url, base32 and hex secrets are
/// made of; shorter than 24, a random string has too little entropy to tell
/// apart from a word.
static CANDIDATE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[A-Za-z0-9+/=_-]{24,}").expect("valid pattern"));

static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}").expect("valid pattern")
});

/// Shortest piece the entropy scan considers, without `=` padding.
const MIN_RANDOM_LEN: usize = 24;

/// The entropy scan: every candidate run is cut into the pieces a reader
/// would see (fields of `key=value`, segments of a path, the parts around a
/// UUID), and each piece that looks random is masked as `high-entropy`.
fn high_entropy(text: &str, found: &mut Vec<Found>) {
    for candidate in CANDIDATE.find_iter(text) {
        let before = &text[..candidate.start()];
        if names_a_unit(&text[candidate.end()..])
            || is_labelled_digest(before, candidate.as_str())
            || is_ssh_public_key(before, candidate.as_str())
        {
            continue;
        }
        let start = candidate.start();
        // Right after `/` or `/.`, the run goes on with a path (`/tmp/.tmpX/nix/...`).
        let in_path = before.ends_with('/') || before.ends_with("/.");
        let bytes = candidate.as_str().as_bytes();
        // An `=` followed by something other than padding separates a key
        // from its value (`INVOCATION_ID=...`); base64 has `=` only at the end.
        let mut field_start = 0;
        for i in 0..=bytes.len() {
            let ends_field = i == bytes.len() || (bytes[i] == b'=' && bytes.get(i + 1).is_some_and(|b| *b != b'='));
            if ends_field {
                if i > field_start {
                    field(text, start + field_start..start + i, in_path && field_start == 0, found);
                }
                field_start = i + 1;
            }
        }
    }
}

/// One `=`-free field of a candidate. A field with `/` is a path or base64
/// (which uses `/` too). Base64 is judged whole, so that no part of it
/// survives between two slashes; an absolute path, the rest of one
/// (`in_path`: the field goes on from a `/` or `/.` before it), or one with
/// a Nix store hash in it, is judged segment by segment, so that
/// `/var/lib/<random>` keeps its directories and a random directory name
/// does not take the whole path with it.
fn field(text: &str, range: Range<usize>, in_path: bool, found: &mut Vec<Found>) {
    let field = &text[range.clone()];
    let in_nix = field.contains('/') && field.split('/').any(|segment| segment == "nix" || segment == "store");
    let by_segment = field.starts_with('/') || in_path || (in_nix && field.split('/').any(is_nix_hash));
    if !by_segment {
        piece(text, range, found);
        return;
    }
    let mut offset = range.start;
    for segment in field.split('/') {
        if !(in_nix && is_nix_hash(segment)) {
            piece(text, offset..offset + segment.len(), found);
        }
        offset += segment.len() + 1;
    }
}

/// `<32 chars of Nix's base32>` or `<hash>-<name>`: a store path's hash.
fn is_nix_hash(segment: &str) -> bool {
    const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let bytes = segment.as_bytes();
    bytes.len() >= 32 && bytes[..32].iter().all(|b| NIX_BASE32.contains(b)) && (bytes.len() == 32 || bytes[32] == b'-')
}

/// Judges the parts of `range` around canonical UUIDs.
fn piece(text: &str, range: Range<usize>, found: &mut Vec<Found>) {
    let mut last = range.start;
    for uuid in UUID.find_iter(&text[range.clone()]) {
        judge(text, last..range.start + uuid.start(), found);
        last = range.start + uuid.end();
    }
    judge(text, last..range.end, found);
}

/// Masks `range` (trimmed of joining punctuation) if it looks like a secret.
fn judge(text: &str, range: Range<usize>, found: &mut Vec<Found>) {
    let s = &text[range.clone()];
    let lead = s.len() - s.trim_start_matches(['-', '_', '/', '+', '=']).len();
    let s = s.trim_start_matches(['-', '_', '/', '+', '=']).trim_end_matches(['-', '_', '/', '+']);
    let span = range.start + lead..range.start + lead + s.len();
    let core = s.trim_end_matches('=');
    if core.len() < MIN_RANDOM_LEN {
        return;
    }
    let before = &text[..span.start];
    if is_labelled_digest(before, s) || is_ssh_public_key(before, s) {
        return;
    }
    let hex = core.strip_prefix("0x").unwrap_or(core);
    let secret = if hex.bytes().all(|b| b.is_ascii_hexdigit()) { hex_is_secret(hex, before) } else { is_random(core) };
    if secret {
        found.push(Found { span, kind: "high-entropy" });
    }
}

/// Hex strings. Decimal numbers are never secrets. 32 hex digits is the form
/// of boot, machine and invocation ids and 40 the form of a Git commit: macha
/// needs those, and they are kept unless a secret-naming word is right before
/// them (`token 3f2a...`). Longer hex (64 digits is the usual `openssl rand
/// -hex 32` key) is masked. A string with less than 3 bits per digit
/// (`0000...`, `ffff...`) is padding, not a key.
fn hex_is_secret(hex: &str, before: &str) -> bool {
    if hex.bytes().all(|b| b.is_ascii_digit()) || entropy(hex) < 3.0 {
        return false;
    }
    hex.len() > 40 || secret_word_before(before)
}

/// Base64-ish strings with no context: the threshold has two parts, tuned on
/// random strings against unit names, Java class names, paths and
/// identifiers.
///
/// - Shannon entropy of at least 4.0 bits per character when both cases occur
///   (base64: a random 24-character string has about 4.25, 95% above 4.0),
///   3.6 when only one case does (base32, base36: random 24 characters have
///   about 4.0). `AbstractAutowireCapableBeanFactory` reaches 4.0 too, which
///   is why entropy alone is not enough:
/// - at least 20% of adjacent alphanumeric pairs switch class (lower to upper
///   case, or letter to digit). Random text switches in 40-60% of pairs;
///   names, words and `sys-devices-platform-serial8250-tty-ttyS2` in under 15%.
///
/// Together they mask about 95% of random 24-character strings and over 99%
/// of 32-character base64; the rest is what the context rules are for.
fn is_random(s: &str) -> bool {
    let has_upper = s.bytes().any(|b| b.is_ascii_uppercase());
    let has_lower = s.bytes().any(|b| b.is_ascii_lowercase());
    let threshold = if has_upper && has_lower { 4.0 } else { 3.6 };
    entropy(s) >= threshold && class_switches(s) >= 0.2
}

/// Shannon entropy in bits per character of an ASCII string.
fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let len = s.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| f64::from(c) / len).map(|p| -p * p.log2()).sum()
}

/// Share of adjacent alphanumeric pairs that go from lower to upper case or
/// between letter and digit.
fn class_switches(s: &str) -> f64 {
    let (mut pairs, mut switches) = (0u32, 0u32);
    for pair in s.as_bytes().windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() {
            pairs += 1;
            if (a.is_ascii_lowercase() && b.is_ascii_uppercase()) || a.is_ascii_digit() != b.is_ascii_digit() {
                switches += 1;
            }
        }
    }
    if pairs == 0 {
        0.0
    } else {
        f64::from(switches) / f64::from(pairs)
    }
}

/// Words that make the hex string right after them a secret. Bare `key` is
/// not one: "GPG key <fingerprint>" is public.
const SECRET_WORDS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "apikey",
    "api_key",
    "api-key",
    "api key",
    "access_key",
    "access-key",
    "access key",
    "accesskey",
    "private_key",
    "private-key",
    "private key",
    "secret_key",
    "secret-key",
    "secret key",
    "secretkey",
    "auth",
    "credential",
    "credentials",
    "bearer",
    "psk",
];

/// Whether the text right before a candidate (across separators only, so a
/// marker in between breaks the link) ends with a secret-naming word.
fn secret_word_before(before: &str) -> bool {
    let trimmed = before.trim_end_matches([' ', '\t', ':', '=', '"', '\'', '_', '-']);
    if trimmed.len() == before.len() {
        // Directly attached to something that is not a separator.
        return false;
    }
    let tail_start = trimmed.char_indices().rev().nth(23).map_or(0, |(i, _)| i);
    let tail = trimmed[tail_start..].to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| tail.ends_with(w))
}

/// `sha256:...`, `sha256=...` (a label before) or `sha256-...=` (Nix and
/// Subresource Integrity): a content digest, not a secret.
fn is_labelled_digest(before: &str, piece: &str) -> bool {
    const ALGORITHMS: &[&str] = &["md5", "sha1", "sha224", "sha256", "sha384", "sha512", "blake2b", "blake3"];
    let ends_with = |s: &[u8], a: &str, sep: u8| {
        s.len() > a.len()
            && s[s.len() - 1] == sep
            && s[s.len() - 1 - a.len()..s.len() - 1].eq_ignore_ascii_case(a.as_bytes())
    };
    let (before, piece) = (before.as_bytes(), piece.as_bytes());
    ALGORITHMS.iter().any(|a| {
        ends_with(before, a, b':')
            || ends_with(before, a, b'=')
            || (piece.len() > a.len() + 1 && ends_with(&piece[..=a.len()], a, b'-'))
    })
}

/// `ssh-ed25519 AAAA...`, `ecdsa-sha2-nistp256 AAAA...`: a public key.
fn is_ssh_public_key(before: &str, piece: &str) -> bool {
    if !piece.starts_with("AAAA") {
        return false;
    }
    let Some(rest) = before.strip_suffix(' ') else {
        return false;
    };
    let word = rest.rsplit(char::is_whitespace).next().unwrap_or("");
    ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"].iter().any(|p| word.starts_with(p))
}

/// Whether the text right after a candidate makes it a systemd unit name
/// (`docker-<64 hex>.scope`, `dev-disk-by\x2duuid-....device`).
fn names_a_unit(after: &str) -> bool {
    const UNIT_SUFFIXES: &[&str] =
        &["service", "socket", "target", "device", "mount", "automount", "swap", "timer", "path", "slice", "scope"];
    let Some(rest) = after.strip_prefix('.') else {
        return false;
    };
    UNIT_SUFFIXES.iter().any(|suffix| {
        rest.strip_prefix(suffix).is_some_and(|tail| !tail.starts_with(|c: char| c.is_ascii_alphanumeric()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fake secrets with a vendor prefix are split with `concat!` so that
    // secret scanners do not flag this file; none of them is a real credential.

    fn r(text: &str) -> String {
        redact(text).into_owned()
    }

    fn assert_kept(text: &str) {
        let out = redact(text);
        assert!(matches!(out, Cow::Borrowed(_)), "changed {text:?} into {out:?}");
    }

    #[test]
    fn text_without_secrets_is_borrowed_unchanged() {
        assert_kept("Started nginx.service - A high performance web server.");
        assert_kept("");
    }

    #[test]
    fn password_value_is_masked_and_its_key_kept() {
        assert_eq!(r("login ok password=hunter2 user=bob"), "login ok password=[redacted:password] user=bob");
    }

    #[test]
    fn key_value_forms_are_recognised() {
        assert_eq!(r(r#"{"user":"bob","password":"hunter 2"}"#), r#"{"user":"bob","password":"[redacted:password]"}"#);
        assert_eq!(r("{'api_key': 'Zx81kd0Lq'}"), "{'api_key': '[redacted:api-key]'}");
        assert_eq!(r("client_secret: 4fXk9q2Lw"), "client_secret: [redacted:secret]");
        assert_eq!(r("DB_PASSWORD = s3cr3t"), "DB_PASSWORD = [redacted:password]");
        assert_eq!(r("export GITHUB_TOKEN=abc123def"), "export GITHUB_TOKEN=[redacted:token]");
        assert_eq!(r("PassWord: Tr0ub4dor&3"), "PassWord: [redacted:password]");
        assert_eq!(r("{\"token\": aGk9x2Lq}"), "{\"token\": [redacted:token]");
        assert_eq!(r("GET /reset?token=9fKq1x&user=bob"), "GET /reset?token=[redacted:token]&user=bob");
        assert_eq!(r("Server=db;Uid=sa;Pwd=Xy7;Pq;"), "Server=db;Uid=sa;Pwd=[redacted:password];");
        assert_eq!(r("password := \"gopher42\""), "password := \"[redacted:password]\"");
        assert_eq!(r("sessionid=8f2kQ9xL0pZ"), "sessionid=[redacted:session]");
        assert_eq!(r("credentials=alice:wonder1and"), "credentials=[redacted:credential]");
        assert_eq!(r("wg0: PresharedKey = Kx9vQ2m"), "wg0: PresharedKey = [redacted:secret-key]");
    }

    #[test]
    fn escaped_json_inside_a_message_is_masked() {
        assert_eq!(
            r(r#"msg="payload {\"password\":\"hunter2\",\"user\":\"bob\"}""#),
            r#"msg="payload {\"password\":\"[redacted:password]\",\"user\":\"bob\"}""#
        );
    }

    #[test]
    fn xml_elements_named_like_secrets_are_masked() {
        assert_eq!(
            r("<user>bob</user><password>hunter2</password>"),
            "<user>bob</user><password>[redacted:password]</password>"
        );
        assert_eq!(r("<ns:apiKey>Zx81kd0Lq</ns:apiKey>"), "<ns:apiKey>[redacted:api-key]</ns:apiKey>");
        assert_kept("<key>nginx.service</key><token>true</token>");
    }

    #[test]
    fn command_line_flags_are_recognised() {
        assert_eq!(r("mysqldump --password hunter2 --user bob"), "mysqldump --password [redacted:password] --user bob");
        assert_eq!(r("restic --password 'a b c' backup"), "restic --password '[redacted:password]' backup");
        assert_eq!(r("tool --api-key=Zx81kd0Lq"), "tool --api-key=[redacted:api-key]");
        assert_eq!(r("tool --auth-token Zx81kd0Lq run"), "tool --auth-token [redacted:token] run");
        assert_kept("tool --no-password --user bob");
        assert_kept("docker login --password-stdin --username bob");
    }

    #[test]
    fn keys_that_name_no_secret_are_kept() {
        assert_kept("password_file=/run/agenix/db token_type=bearer max_tokens=4096");
        assert_kept("primary_key=id ssh_host_key=/etc/ssh/ssh_host_ed25519_key key=nginx.service");
        assert_kept("sudo: alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/run/current-system/sw/bin/ls");
        assert_kept("bypass=1 compass=north monkey=banana author=bob");
        assert_kept("polkitd: Registered Authentication Agent for unix-session:3");
    }

    #[test]
    fn placeholder_values_are_kept() {
        assert_kept("password=**** token=xxxx secret=[REDACTED]");
        assert_kept("password=${DB_PASSWORD} token=$GITHUB_TOKEN api_key=<your-key>");
        assert_kept("secret: not set; password: none; auth: required; PasswordAuth=true");
        assert_kept("secret=/run/secrets/db credentials=/run/credentials/app.service");
        assert_kept(r#"{"password": "", "token": null}"#);
    }

    #[test]
    fn aws_keys_are_masked() {
        let id = concat!("AKIA", "7WFDKKXJM9JGKGVF");
        assert_eq!(r(&format!("using key {id} for s3")), "using key [redacted:aws-key] for s3");
        let sts = concat!("ASIA", "A76L8YX8TEVJW3US");
        assert_eq!(r(&format!("id={sts}")), "id=[redacted:aws-key]");
        assert_eq!(
            r("aws_secret_access_key = ogKa2RISQU/bi74H7Es1QJFMT89mgQ5g5FFkYex8"),
            "aws_secret_access_key = [redacted:aws-secret]"
        );
    }

    #[test]
    fn vendor_tokens_are_masked_by_their_prefix() {
        let cases = [
            (concat!("gh", "p_JcwTR011VreG2GYXt4FozXCOC9p8NYeDUf1z"), "github-token"),
            (concat!("gh", "o_Dn3eXpKDumiTQzCuax5wj7ixFpf3HHWhnXni"), "github-token"),
            (concat!("gh", "u_g5PS0Te18UPWW1IEe7taX4KgnJttZoXyJOi0"), "github-token"),
            (concat!("gh", "s_g5PS0Te18UPWW1IEe7taX4KgnJttZoXyJOi0"), "github-token"),
            (concat!("gh", "r_g5PS0Te18UPWW1IEe7taX4KgnJttZoXyJOi0"), "github-token"),
            (concat!("github", "_pat_Ld4PXf6zGgRtCaXh4QwSJ4_o1JpuFUn8OrTN3jKWsUA22DhYa5nvN9CYo"), "github-token"),
            (concat!("gl", "pat-t2KkGoTO85SkUIW_Q4bs"), "gitlab-token"),
            (concat!("xo", "xb-840837056297-4519462053655-kyUuJJR2FRUjMv3AmmsSpngi"), "slack-token"),
            (concat!("sk", "_live_ju1lCiGSvBcD8v2CjaIffaNk"), "stripe-key"),
            (concat!("rk", "_live_LfwFDgiyxyoru00yjlKKuSEI"), "stripe-key"),
            (concat!("sk", "_test_nQ9QOnUfzJ3GAgNM6sTbrZoH"), "stripe-key"),
            (concat!("AI", "zaq8cBa_GnTObzfdKpUlgH8CUUdRQOXHvfAeS"), "google-api-key"),
            (concat!("sk", "-proj-dWfKgmBGcFq9ZwJbfJyLHtN32TLyJkX9pkETJ-7e0QBLUM2C"), "openai-key"),
            (concat!("sk", "-Jtq7pRSYiKxnwbxloxcLjbf0LNikXXC5LZVlpASw3qQ0CT3u"), "openai-key"),
            (concat!("np", "m_Mgh09lxGc0zIEy3LesvdcTw8a5kR8Mcxpf72"), "npm-token"),
            (concat!("py", "pi-AgEIcHlwaS5vcmcrpDi0sPvbbZ1mtkKijVwwSnT74aAD3c9Od9e6OQT"), "pypi-token"),
            (concat!("ts", "key-auth-ko37J8ZVCaQKCNTRL-E083ZU4qPNYEGLlFbw4LWB3rOh6Y5p1zc"), "tailscale-key"),
            (concat!("AGE-SECRET", "-KEY-10EPLV8FQ27PH3AMYTW4FLP9FY3FWXJ0JSE4UU6V5PAAK42N38MT9AX5H79"), "age-key"),
            (concat!("hv", "s.zZucC3DRPTWrD9xbvrRAvAJG"), "vault-token"),
            (concat!("dc", "kr_pat_ZL4e3xuiTFTOD5VuznVTzqWhu4o"), "docker-token"),
            (concat!("hf", "_70NRtbN2zhpBhyIrLxmS7OarfpqPA7CwyL"), "huggingface-token"),
        ];
        for (token, kind) in cases {
            assert_eq!(r(&format!("using {token} now")), format!("using [redacted:{kind}] now"), "{token}");
        }
    }

    #[test]
    fn sk_prefix_without_a_generated_tail_is_kept() {
        assert_kept("key type sk-ssh-ed25519@openssh.com accepted");
        assert_kept("unit sk-replication-worker-main failed");
    }

    #[test]
    fn jwt_is_masked_whole() {
        let jwt = concat!(
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.",
            "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6InN2Yy1iYWNrdXAifQ.",
            "2EPnWNmvn-JGRl7URsmABHDhy_G9wd_EWsR3IDhg9cs"
        );
        assert_eq!(r(&format!("rejected jwt {jwt} (expired)")), "rejected jwt [redacted:jwt] (expired)");
    }

    #[test]
    fn authorization_headers_keep_their_scheme() {
        assert_eq!(r("Authorization: Bearer abc.def-ghi"), "Authorization: Bearer [redacted:bearer]");
        assert_eq!(r("authorization: Basic ZGVwbG95Omh6QlZM"), "authorization: Basic [redacted:basic-auth]");
        assert_eq!(r("Proxy-Authorization: Zx81kd0Lq"), "Proxy-Authorization: [redacted:authorization]");
        assert_eq!(
            r(r#"curl -H "Authorization: token 3nk2Lq8" https://api"#),
            r#"curl -H "Authorization: token [redacted:authorization]" https://api"#
        );
        assert_eq!(r("token: Bearer 7fKq0ZxP1mLw92Ra"), "token: Bearer [redacted:bearer]");
        assert_kept(r#"WWW-Authenticate: Bearer realm="api", error="invalid_token""#);
        assert_kept("HTTP basic authentication failed for user bob");
    }

    #[test]
    fn a_value_an_earlier_rule_masked_is_not_masked_again() {
        assert_eq!(
            r("headers: { Authorization: 'Bearer 7fKq0ZxP1mLw92Ra' }"),
            "headers: { Authorization: 'Bearer [redacted:bearer]' }"
        );
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlc2lnbmF0dXJl";
        assert_eq!(r(&format!("password=\"hunter2 {jwt}\"")), "password=\"[redacted:password]\"");
    }

    #[test]
    fn cookies_are_masked() {
        assert_eq!(r("Cookie: sid=8f2kQ; theme=dark"), "Cookie: [redacted:cookie]");
        assert_eq!(r("set-cookie: a=b; Path=/\nnext line"), "set-cookie: [redacted:cookie]\nnext line");
    }

    #[test]
    fn url_credentials_mask_only_the_password() {
        assert_eq!(
            r("DATABASE_URL=postgres://app:S3cr3t!@db.internal:5432/app"),
            "DATABASE_URL=postgres://app:[redacted:url-password]@db.internal:5432/app"
        );
        assert_eq!(r("redis://:hunter2@10.0.0.5:6379/0"), "redis://:[redacted:url-password]@10.0.0.5:6379/0");
        assert_kept("fetching https://example.com:8443/path/@alice and ssh://git@github.com/org/repo");
    }

    #[test]
    fn pam_program_names_are_not_keys() {
        assert_kept("chpasswd[1]: pam_unix(chpasswd:chauthtok): password changed for alice");
        assert_kept("passwd[4242]: passwd: password updated successfully");
        assert_eq!(r("passwd=hunter2"), "passwd=[redacted:password]");
    }

    #[test]
    fn nested_objects_under_a_secret_key_are_judged_by_their_own_keys() {
        assert_eq!(
            r(r#"{"auth":{"username":"bob","password":"p@ss w0rd"}}"#),
            r#"{"auth":{"username":"bob","password":"[redacted:password]"}}"#
        );
    }

    #[test]
    fn mysql_attached_password_flag_is_masked() {
        assert_eq!(r("mysql -uroot -phunter2 -e 'select 1'"), "mysql -uroot -p[redacted:password] -e 'select 1'");
        assert_kept("mysqld: ready for connections. port: 3306 -P 3306");
    }

    #[test]
    fn curl_user_and_sql_passwords_are_masked() {
        assert_eq!(r("curl -u admin:pa55word https://x"), "curl -u admin:[redacted:password] https://x");
        assert_kept("docker exec -u 1000:1000 web ls");
        assert_eq!(
            r("statement: ALTER ROLE app WITH PASSWORD 'it''s S3cret'"),
            "statement: ALTER ROLE app WITH PASSWORD '[redacted:password]'"
        );
        assert_eq!(
            r(r#"CREATE USER 'u'@'%' IDENTIFIED BY "Pa55!";"#),
            r#"CREATE USER 'u'@'%' IDENTIFIED BY "[redacted:password]";"#
        );
        assert_kept("FATAL:  password authentication failed for user \"app\"");
    }

    #[test]
    fn gotify_tokens_are_masked_in_key_value_context() {
        assert_eq!(r("X-Gotify-Key: AURzYOApCRIDnFP"), "X-Gotify-Key: [redacted:secret-key]");
        assert_eq!(
            r("POST https://push.example.org/message?token=AURzYOApCRIDnFP failed"),
            "POST https://push.example.org/message?token=[redacted:token] failed"
        );
    }

    const PEM_BODY: &str = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n\
                            VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK";

    #[test]
    fn pem_private_key_blocks_are_masked_whole() {
        for label in ["RSA ", "OPENSSH ", "EC ", "ENCRYPTED ", ""] {
            let block = format!("-----BEGIN {label}PRIVATE KEY-----\n{PEM_BODY}\n-----END {label}PRIVATE KEY-----");
            assert_eq!(r(&format!("key:\n{block}\ndone")), "key:\n[redacted:private-key]\ndone");
        }
    }

    #[test]
    fn flattened_pem_blocks_are_masked() {
        let flat = PEM_BODY.replace('\n', " ");
        let line = format!("app: -----BEGIN RSA PRIVATE KEY----- {flat} -----END RSA PRIVATE KEY----- loaded");
        assert_eq!(r(&line), "app: [redacted:private-key] loaded");
        let escaped = PEM_BODY.replace('\n', "\\n");
        let json = format!(r#"{{"key":"-----BEGIN PRIVATE KEY-----\n{escaped}\n-----END PRIVATE KEY-----\n"}}"#);
        assert_eq!(r(&json), r#"{"key":"[redacted:private-key]\n"}"#);
    }

    #[test]
    fn pem_begin_without_end_masks_the_rest_of_the_line() {
        let text = format!("-----BEGIN OPENSSH PRIVATE KEY----- {}\nnext entry", PEM_BODY.replace('\n', ""));
        assert_eq!(r(&text), "[redacted:private-key]\nnext entry");
        // One journal entry per line of the key: the body lines are random.
        assert_eq!(r("I3cdttc2BU2mB7EXvb0a30z11kX6Zzzqtg7+X89iN6ahk/hKg8UWha7pdy1SPBx5"), "[redacted:high-entropy]");
    }

    #[test]
    fn random_base64_without_context_is_masked() {
        assert_eq!(r("blob b8kzFiwuQXL3Cdc+fSn+VL5kHPNRKMXZPhbIAIh8UCc= end"), "blob [redacted:high-entropy] end");
        assert_eq!(r("x 1SjnHAqd6aJKpmZY+lzriE/cEnAMh6zD y"), "x [redacted:high-entropy] y");
        assert_eq!(r("sig D_aJ6TZXI3BMp9a1-hsLGpck-OI_EsqR"), "sig [redacted:high-entropy]");
        assert_eq!(
            r("GET /files/dQlt4_y62nUQGW0kAhcXTid33GX2vi8ax9wLHPITKB0/raw"),
            "GET /files/[redacted:high-entropy]/raw"
        );
    }

    #[test]
    fn long_hex_is_masked_and_ids_are_kept() {
        let hex64 = "2da323f88357ff0ace855efdb9677a9a15591b82c6fcef083d3cdd000002d22e";
        assert_eq!(r(&format!("key {hex64}")), "key [redacted:high-entropy]");
        let hex40 = "61a459decef63f0a50973047fb494694c2324768";
        assert_kept(&format!("HEAD is now at {hex40} Merge branch 'main'"));
        assert_eq!(r(&format!("api token {hex40}")), "api token [redacted:high-entropy]");
        assert_eq!(r(&format!("secret key = \"{hex40}\"")), "secret key = \"[redacted:high-entropy]\"");
        assert_kept("_BOOT_ID=c4abba00fd77f22b2441d18c86409df8 INVOCATION_ID=0f3e9a1c2b4d4e6f8a0b1c2d3e4f5a6b");
        assert_kept("zero 0000000000000000000000000000000000000000000000000000000000000000");
        assert_kept("bigint 123456789012345678901234567890123456789012345678901234567890");
    }

    #[test]
    fn identifiers_that_look_random_are_kept() {
        assert_kept("mounted filesystem 48108eaf-f9ee-41a0-9a54-b361035c3a27 r/w");
        assert_kept("/dev/disk/by-uuid/48108eaf-f9ee-41a0-9a54-b361035c3a27");
        assert_kept("building '/nix/store/839r612l32jk658ppc0560jc8dxgcgmz-nginx-1.24.0.drv'...");
        assert_kept("/nix/var/nix/gcroots/auto/839r612l32jk658ppc0560jc8dxgcgmz");
        assert_kept("-I/nix/store/839r612l32jk658ppc0560jc8dxgcgmz-glibc-2.39-dev/include");
        assert_kept("got:    sha256-b8kzFiwuQXL3Cdc+fSn+VL5kHPNRKMXZPhbIAIh8UCc=");
        assert_kept("fingerprint SHA256:Zk9vQ2mXp4Lr8Ts1Wb6Y/c0Nd3He7Jf5Ga2Ki9Ou4Py");
        assert_kept("Accepted publickey for bob from 203.0.113.7 port 52144 ssh2: ED25519 SHA256:Zk9vQ2mXp4Lr8Ts1Wb6Yc0Nd3He7Jf5Ga2Ki9Ou4Py");
        assert_kept("image sha256:2da323f88357ff0ace855efdb9677a9a15591b82c6fcef083d3cdd000002d22e pulled");
        assert_kept(
            "authorized ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIepNfc/pC4Dadbdn5y9lkzkePwPq1rQ1VmXiqtLaLCsp bob@laptop",
        );
        assert_kept("Started docker-2da323f88357ff0ace855efdb9677a9a15591b82c6fcef083d3cdd000002d22e.scope.");
    }

    #[test]
    fn unit_names_paths_and_code_names_are_kept() {
        assert_kept("systemd-tmpfiles-setup-dev-early.service: Deactivated successfully.");
        assert_kept("Found device sys-devices-platform-serial8250-tty-ttyS2.device");
        assert_kept("at org.springframework.beans.factory.support.AbstractAutowireCapableBeanFactory.createBean");
        assert_kept("open /var/lib/postgresql/16/data/base/PG_VERSION: Permission denied");
        assert_kept("File \"/usr/lib/python3.11/site-packages/requests/adapters.py\", line 519, in send");
        assert_kept("/home/alice/Documents/QuarterlyReportDrafts2023/final");
        assert_kept("read /tmp/.tmp8nS0m4/nix/var/nix/profiles/per-user/root/channels-1-link: not found");
        assert_kept("open /tmp/.tmpXk3/build-output-directory/result-of-a-long-build: no such file");
        assert_eq!(
            r("open /tmp/.cache/Zk9vQ2mXp4Lr8Ts1Wb6Yc0Nd3He7Jf5/db failed"),
            "open /tmp/.cache/[redacted:high-entropy]/db failed",
            "a random segment goes, the directories around it stay"
        );
        assert_kept("NetworkManager-wait-online.service TransactionRollbackException1 ERR_CONNECTION_REFUSED_BY_PEER");
    }

    #[test]
    fn ordinary_log_text_is_kept() {
        assert_kept("Failed password for invalid user admin from 198.51.100.23 port 40022 ssh2");
        assert_kept("pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)");
        assert_kept("2024-05-17T03:00:01.123456+00:00 kernel: EXT4-fs (nvme0n1p2): re-mounted. Quota mode: none.");
        assert_kept("eth0: link up 1000Mbps, fe80::1ff:fe23:4567:890a/64, 192.168.1.10/24");
        assert_kept("Out of memory: Killed process 4242 (postgres) total-vm:8123456kB, anon-rss:7012345kB");
        assert_kept("The secret to a long uptime is patience; the token ring network is gone.");
    }

    #[test]
    fn redaction_is_idempotent() {
        let inputs = [
            "password=hunter2 token=abc ghp_JcwTR011VreG2GYXt4FozXCOC9p8NYeDUf1z",
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlc2lnbmF0dXJl",
            "postgres://app:S3cr3t!@db/app?password=x&token=y",
            "secret b8kzFiwuQXL3Cdc+fSn+VL5kHPNRKMXZPhbIAIh8UCc= and token 61a459decef63f0a50973047fb494694c2324768",
            "Cookie: a=b\n-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----",
            "password: [redacted:password] token=[redacted:token]",
        ];
        for input in inputs {
            let once = r(input);
            assert_eq!(r(&once), once, "second pass changed {input:?}");
        }
    }

    /// A small deterministic generator, so the test needs no extra crate.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    #[test]
    fn arbitrary_input_never_panics_and_stays_idempotent() {
        let fragments = [
            "password",
            "=",
            ": ",
            "\"",
            "'",
            "\\",
            " ",
            "\n",
            "token",
            "Bearer ",
            "-----BEGIN RSA PRIVATE KEY-----",
            "-----END RSA PRIVATE KEY-----",
            "://",
            "@",
            "/",
            "b8kzFiwuQXL3Cdc+fSn+VL5k",
            "2da323f88357ff0ace855efdb9677a9a",
            "é",
            "💥",
            "\u{feff}",
            "e\u{301}",
            "Ω",
            "ſ",
            "\u{212a}ey",
            "[redacted:",
            "]",
            "sha256:",
            "--",
            "sk-",
            "eyJ",
            ".",
            ";",
            "&",
            "AKIA",
            "0123456789ABCDEF",
            "\t",
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            let len = rng.next() % 24;
            let input: String = (0..len).map(|_| rng.pick(&fragments)).collect();
            let once = r(&input);
            assert_eq!(r(&once), once, "second pass changed {input:?}");
        }
    }

    #[test]
    fn markers_name_distinct_kinds() {
        let out = r("password=a1b2c3 AKIA7WFDKKXJM9JGKGVF api_key=zz9");
        assert!(
            out.contains("[redacted:password]")
                && out.contains("[redacted:aws-key]")
                && out.contains("[redacted:api-key]"),
            "{out}"
        );
    }
}
