//! Where messages go: Gotify, ntfy and a Matrix room, each optional, in
//! any combination. Each channel has its own rows in the outbox and its own
//! sender, so one that is down holds only its own messages. Every token is
//! read from a file, sent in a header, and never shown: an error quotes
//! the server's words with the token taken out.

use std::time::Duration;

use serde_json::{json, Value};

use super::gotify::{Gotify, Token};
use super::{Message, NotifyError};
use crate::bounded::{self, BodyError, Size};
use crate::config::Config;
use crate::errors::chain;

/// The most read of a server's answer.
const ANSWER_LIMIT: Size = Size::mib(1);

/// One configured channel.
pub enum Channel {
    Gotify(Gotify),
    Ntfy(Ntfy),
    Matrix(Matrix),
}

/// The configured channels, their tokens read now (a missing or unreadable
/// file stops start-up, and a command run as root reads them before it
/// gives up root). Empty when notifications are off.
pub fn configured(config: &Config) -> Result<Vec<Channel>, NotifyError> {
    let mut out = Vec::new();
    if let Some(g) = super::gotify(config)? {
        out.push(Channel::Gotify(g));
    }
    let n = &config.ntfy;
    if let (Some(url), Some(topic)) = (&n.url, &n.topic) {
        let token = match &n.token_file {
            Some(path) => Some(Token::read_named(path, "the ntfy token file").map_err(NotifyError::Setup)?),
            None => None,
        };
        out.push(Channel::Ntfy(Ntfy {
            http: client(),
            url: url.trim_end_matches('/').to_owned(),
            topic: topic.clone(),
            token,
        }));
    }
    let m = &config.matrix;
    if let (Some(homeserver), Some(room), Some(path)) = (&m.homeserver, &m.room_id, &m.token_file) {
        let token = Token::read_named(path, "the Matrix token file").map_err(NotifyError::Setup)?;
        let homeserver = homeserver.trim_end_matches('/').to_owned();
        out.push(Channel::Matrix(Matrix { http: client(), homeserver, room: room.clone(), token }));
    }
    Ok(out)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("a TLS backend is compiled in")
}

impl Channel {
    /// Its name in the outbox, the log and `macha notify test`.
    pub fn name(&self) -> &'static str {
        match self {
            Channel::Gotify(_) => "gotify",
            Channel::Ntfy(_) => "ntfy",
            Channel::Matrix(_) => "matrix",
        }
    }

    /// Where it delivers, for the log.
    pub fn url(&self) -> &str {
        match self {
            Channel::Gotify(g) => g.url(),
            Channel::Ntfy(n) => &n.url,
            Channel::Matrix(m) => &m.homeserver,
        }
    }

    /// Delivers `m`, the outbox's row `id` (a Matrix transaction id: a
    /// retry of the same row is one message in the room). Says what the
    /// server made of it: the message or event it stored.
    pub async fn send(&self, m: &Message, id: i64) -> Result<String, String> {
        match self {
            Channel::Gotify(g) => match g.send(m).await {
                Ok(stored) => Ok(format!("the server stored message {}", stored["id"])),
                Err(e) => Err(e.to_string()),
            },
            Channel::Ntfy(n) => n.send(m).await.map(|id| format!("the server published message {id}")),
            Channel::Matrix(x) => x.send(m, id).await.map(|id| format!("the room got event {id}")),
        }
    }
}

/// A request's answer: its status and body, or why there is none.
async fn answer(
    what: &str,
    token: Option<&Token>,
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<(u16, String), String> {
    let redact = |t: String| token.map_or(t.clone(), |k| k.redact(&t));
    let response = sent.map_err(|e| format!("{what} is unreachable: {}", redact(chain(&e))))?;
    let status = response.status().as_u16();
    match bounded::read_body(response, ANSWER_LIMIT).await {
        Ok(body) => Ok((status, String::from_utf8_lossy(&body).into_owned())),
        Err(BodyError::Transport(e)) => Err(format!("{what} answered with a broken body: {}", redact(chain(&e)))),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// ntfy keeps a message of at most 4 096 bytes as a message (larger ones
/// are refused or made attachments); macha's are cut to fit, the rest is in
/// its records.
const NTFY_MAX_MESSAGE: usize = 4000;

/// `text` in at most `max` bytes, cut at a character and marked when cut.
fn cut_bytes(text: &str, max: usize) -> String {
    const MARK: &str = "\n\n[cut: the rest is in `macha-logs`]";
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

/// ntfy's priority (1 to 5) for a Gotify priority (0 to 10).
fn ntfy_priority(gotify: u8) -> u8 {
    match gotify {
        0..=3 => 2,
        4..=6 => 3,
        7..=8 => 4,
        _ => 5,
    }
}

/// An ntfy server and topic: `POST /` with the message as JSON (title,
/// priority 1-5, tags, markdown), the token as `Authorization: Bearer`.
pub struct Ntfy {
    http: reqwest::Client,
    url: String,
    topic: String,
    token: Option<Token>,
}

impl Ntfy {
    async fn send(&self, m: &Message) -> Result<String, String> {
        let what = format!("ntfy at {}", self.url);
        let body = json!({
            "topic": self.topic,
            "title": m.title,
            "message": cut_bytes(&m.body, NTFY_MAX_MESSAGE),
            "priority": ntfy_priority(m.priority),
            "tags": ["macha", m.kind.name()],
            "markdown": true,
        });
        let mut request = self.http.post(format!("{}/", self.url)).json(&body);
        if let Some(t) = &self.token {
            request = request.bearer_auth(t.secret());
        }
        let (status, text) = answer(&what, self.token.as_ref(), request.send().await).await?;
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        if !(200..300).contains(&status) {
            // ntfy's errors: {"code":40101,"http":401,"error":"unauthorized",...}
            let why = parsed
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| text.chars().take(200).collect());
            let why = self.token.as_ref().map_or(why.clone(), |t| t.redact(&why));
            return Err(format!("{what} refused the message: HTTP {status}: {why}"));
        }
        match parsed.as_ref().and_then(|v| v.get("id")).and_then(Value::as_str) {
            Some(id) => Ok(id.chars().take(64).collect()),
            None => Err(format!("{what} answered something that is not a published message")),
        }
    }
}

/// A Matrix room: `PUT /_matrix/client/v3/rooms/ROOM/send/m.room.message/TXN`,
/// the markdown as HTML in `formatted_body`, the access token as
/// `Authorization: Bearer`.
pub struct Matrix {
    http: reqwest::Client,
    homeserver: String,
    room: String,
    token: Token,
}

impl Matrix {
    async fn send(&self, m: &Message, id: i64) -> Result<String, String> {
        let what = format!("Matrix at {}", self.homeserver);
        let mut url = reqwest::Url::parse(&self.homeserver).map_err(|e| format!("{what}: {e}"))?;
        url.path_segments_mut().map_err(|()| format!("{what}: not a base URL"))?.pop_if_empty().extend([
            "_matrix",
            "client",
            "v3",
            "rooms",
            &self.room,
            "send",
            "m.room.message",
            &format!("macha-{id}"),
        ]);
        let markdown = format!("**{}**\n\n{}", m.title, m.body);
        // A notice: the spec's message type for a bot, which clients do not
        // answer automatically.
        let body = json!({
            "msgtype": "m.notice",
            "body": format!("{}\n\n{}", m.title, m.body),
            "format": "org.matrix.custom.html",
            "formatted_body": html(&markdown),
        });
        let request = self.http.put(url).bearer_auth(self.token.secret()).json(&body);
        let (status, text) = answer(&what, Some(&self.token), request.send().await).await?;
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        if !(200..300).contains(&status) {
            // The spec's errors: {"errcode":"M_UNKNOWN_TOKEN","error":"..."}
            let field = |k: &str| parsed.as_ref().and_then(|v| v.get(k)).and_then(Value::as_str).unwrap_or("");
            let why = self.token.redact(&format!("{} {}", field("errcode"), field("error")));
            return Err(format!("{what} refused the message: HTTP {status}: {}", why.trim()));
        }
        match parsed.as_ref().and_then(|v| v.get("event_id")).and_then(Value::as_str) {
            Some(id) => Ok(id.chars().take(255).collect()),
            None => Err(format!("{what} answered something that is not a sent event")),
        }
    }
}

/// `markdown` as HTML, for Matrix; HTML written in it is shown as text,
/// never passed on (it may quote a log line).
pub fn html(markdown: &str) -> String {
    use pulldown_cmark::{Event, Parser};
    let events = Parser::new(markdown).map(|e| match e {
        Event::Html(t) | Event::InlineHtml(t) => Event::Text(t),
        e => e,
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_html_and_html_in_it_stays_text() {
        assert_eq!(html("**web1**: `a<b>`"), "<p><strong>web1</strong>: <code>a&lt;b&gt;</code></p>\n");
        let shown = html("<script>alert(1)</script> and <b>x</b>");
        assert!(!shown.contains("<script>") && !shown.contains("<b>"), "{shown}");
        assert!(shown.contains("&lt;script&gt;"), "{shown}");
    }

    #[test]
    fn a_long_message_is_cut_to_ntfys_size_at_a_character() {
        let long = "é".repeat(5000);
        let cut = cut_bytes(&long, NTFY_MAX_MESSAGE);
        assert!(cut.len() <= NTFY_MAX_MESSAGE && cut.ends_with("`macha-logs`]"), "{}", cut.len());
        assert_eq!(cut_bytes("short", NTFY_MAX_MESSAGE), "short");
    }

    #[test]
    fn priorities_map_onto_ntfys_five() {
        assert_eq!([0, 3, 5, 8, 10].map(ntfy_priority), [2, 2, 3, 4, 5]);
    }
}
