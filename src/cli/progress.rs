//! What a person sees while the model works on their question (`macha ask`,
//! `macha-approve discuss`): a model takes seconds to minutes, and a silent
//! terminal looks hung.
//!
//! On a terminal, standard error carries one line, redrawn in place every
//! second and at each event: the seconds since the question, and what is
//! happening (waiting in the model's queue, waiting for the model, the tool
//! call of each round as it is carried out, the answer coming in). When
//! standard error is not a terminal nothing is drawn, so logs and pipes stay
//! clean. An answer that streams goes to standard output as it arrives,
//! quoted exactly as a whole answer is (`> ` before each line, control
//! characters made visible, no blank lines at either end); while it streams
//! to a terminal the progress line steps aside.
//!
//! Ctrl-C (SIGINT) while the model works is the caller's to catch
//! ([`Interrupted`]): the request's future is dropped, which frees its slot
//! in the queue and closes the connection, and [`Display::cancelled`] leaves
//! the terminal tidy.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use macha::model::{Progress, Watch};
use serde_json::Value;
use tokio::signal::unix::Signal;

use super::output::{out, shown, shown_lines};

/// Longest progress line drawn, in characters: a longer one would wrap,
/// and a carriage return cannot take back a wrapped line.
const LINE_CHARS: usize = 72;

/// The person pressed Ctrl-C (or the process got SIGINT) before the work ended.
#[derive(Debug)]
pub struct Interrupted;

/// The exit status after Ctrl-C: 128 + SIGINT, as a shell reports it.
pub const INTERRUPTED_STATUS: u8 = 130;

/// Runs `work`, redrawing `display` every second, until it ends or SIGINT
/// comes (then `work` is dropped).
pub async fn watching<T>(
    display: &Display,
    sigint: &mut Signal,
    work: impl Future<Output = T>,
) -> Result<T, Interrupted> {
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            done = &mut work => return Ok(done),
            _ = tick.tick() => display.redraw(),
            _ = sigint.recv() => return Err(Interrupted),
        }
    }
}

/// The progress line and the streamed answer of one question.
pub struct Display {
    started: Instant,
    /// Standard error is a terminal: the progress line is drawn.
    draw: bool,
    /// Standard output is a terminal: it shares the screen with the line.
    stdout_tty: bool,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    doing: String,
    /// The last round whose tool calls were carried out.
    rounds: u32,
    /// The progress line is on the screen.
    drawn: bool,
    quoter: Quoter,
    /// Characters of the answer received.
    chars: usize,
    /// A failure to write the answer to standard output, said at the end.
    failed: Option<std::io::Error>,
}

impl Display {
    pub fn new() -> Self {
        let state = State { doing: "preparing the question".into(), ..State::default() };
        Self {
            started: Instant::now(),
            draw: std::io::stderr().is_terminal(),
            stdout_tty: super::output::is_terminal(),
            state: RefCell::new(state),
        }
    }

    /// Draws the line again (with the seconds now).
    pub fn redraw(&self) {
        let mut s = self.state.borrow_mut();
        if !self.draw || (s.quoter.started() && self.stdout_tty) {
            return;
        }
        let line = progress_line(self.started.elapsed(), &s.doing);
        let _ = write!(std::io::stderr(), "\r{line}\x1b[K");
        s.drawn = true;
    }

    fn clear(&self, s: &mut State) {
        if s.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            s.drawn = false;
        }
    }

    /// Ends the display after the work ended: the line cleared, a streamed
    /// answer's last line ended. Whether any of the answer was shown
    /// (then it is not to be printed again), or why writing it failed.
    pub fn finish(&self) -> std::io::Result<bool> {
        let mut s = self.state.borrow_mut();
        self.clear(&mut s);
        let end = s.quoter.finish();
        if let Some(e) = s.failed.take() {
            return Err(e);
        }
        out!("{end}")?;
        Ok(s.quoter.started())
    }

    /// Ends the display after Ctrl-C: the line cleared, a streamed answer
    /// cut where it was, on a line of its own.
    pub fn cancelled(&self) {
        let mut s = self.state.borrow_mut();
        self.clear(&mut s);
        let end = s.quoter.finish();
        let _ = out!("{end}");
    }
}

impl Watch for Display {
    fn progress(&self, event: Progress<'_>) {
        {
            let mut s = self.state.borrow_mut();
            match event {
                Progress::Queued => s.doing = "waiting in the model's queue".into(),
                Progress::Sent(_) => {
                    s.doing = match s.rounds {
                        0 => "waiting for the model".into(),
                        n => format!("waiting for the model (after tool round {n})"),
                    }
                }
                Progress::Calling { round, call } => {
                    s.rounds = round;
                    s.doing = format!("round {round}: checking {}{}", shown(&call.name), arguments(&call.arguments));
                }
                Progress::Text(text) => {
                    s.chars += text.chars().count();
                    s.doing = format!("the model is answering ({} characters)", s.chars);
                    if self.stdout_tty {
                        self.clear(&mut s);
                    }
                    let quoted = s.quoter.push(text);
                    if let Err(e) = out!("{quoted}") {
                        s.failed.get_or_insert(e);
                    }
                }
                Progress::BrokeOff(error) => {
                    self.clear(&mut s);
                    let end = s.quoter.finish();
                    let _ = out!("{end}");
                    s.quoter = Quoter::default();
                    s.chars = 0;
                    eprintln!(
                        "macha: the answer broke off ({}); the fallback answers from the start",
                        shown(&error.to_string())
                    );
                }
            }
        }
        self.redraw();
    }
}

/// `[12s] doing`, within [`LINE_CHARS`].
fn progress_line(elapsed: Duration, doing: &str) -> String {
    let line = format!("[{}s] {doing}", elapsed.as_secs());
    macha::text::cut(&line, LINE_CHARS, "...")
}

/// A tool call's argument values, as ` nginx.service`, made visible.
fn arguments(v: &Value) -> String {
    let values: Vec<String> = match v {
        Value::Object(map) => map.values().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect(),
        Value::Null => Vec::new(),
        other => vec![other.to_string()],
    };
    let mut out = String::new();
    for value in values {
        let _ = write!(out, " {}", shown(&value));
    }
    out
}

/// The model's answer as it streams, quoted as a whole answer is
/// (`ask::answer_shown`): `> ` before each line (`>` alone before an empty
/// one), every control character but the line feed made visible, and
/// whitespace at either end left out, which is held back until more text
/// shows it is not the end.
#[derive(Default)]
pub struct Quoter {
    started: bool,
    held: String,
    mid_line: bool,
}

impl Quoter {
    /// The text to write for the next piece of the answer.
    pub fn push(&mut self, piece: &str) -> String {
        let mut out = String::new();
        for c in piece.chars() {
            if c.is_whitespace() {
                if self.started {
                    self.held.push(c);
                }
                continue;
            }
            self.started = true;
            for held in std::mem::take(&mut self.held).chars() {
                self.put(held, &mut out);
            }
            self.put(c, &mut out);
        }
        out
    }

    fn put(&mut self, c: char, out: &mut String) {
        if c == '\n' {
            out.push_str(if self.mid_line { "\n" } else { ">\n" });
            self.mid_line = false;
            return;
        }
        if !self.mid_line {
            out.push_str("> ");
            self.mid_line = true;
        }
        out.push_str(&shown_lines(c.encode_utf8(&mut [0; 4])));
    }

    /// Whether any of the answer was written.
    pub fn started(&self) -> bool {
        self.started
    }

    /// What ends the answer: the end of its last line, if one is open.
    /// The whitespace held back is the answer's end, and left out.
    pub fn finish(&mut self) -> String {
        self.held.clear();
        if std::mem::take(&mut self.mid_line) {
            "\n".into()
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed form of `answer`, cut into pieces of `n` characters.
    fn streamed(answer: &str, n: usize) -> String {
        let mut q = Quoter::default();
        let chars: Vec<char> = answer.chars().collect();
        let mut out: String = chars.chunks(n).map(|piece| q.push(&piece.iter().collect::<String>())).collect();
        out.push_str(&q.finish());
        out
    }

    /// How `answer_shown` quotes a whole answer.
    fn whole(answer: &str) -> String {
        let text = shown_lines(answer.trim());
        text.lines().map(|l| format!(">{}{l}\n", if l.is_empty() { "" } else { " " })).collect()
    }

    #[test]
    fn a_streamed_answer_is_quoted_as_a_whole_one_however_it_is_cut() {
        for answer in [
            "\n\n  The disk is full.\n\nRun `nix-collect-garbage`.\n  \t\n",
            "one line",
            "a\n  \nb\r\nc\x1b[2J\u{202e}\u{2028}d   ",
            "> forged quote\n\n\n",
        ] {
            for n in [1, 2, 3, 7, 1000] {
                assert_eq!(streamed(answer, n), whole(answer), "{answer:?} in pieces of {n}");
            }
        }
        assert_eq!(streamed(" \n\t ", 1), "", "nothing but whitespace writes nothing");
    }

    #[test]
    fn the_progress_line_says_the_seconds_and_stays_short() {
        assert_eq!(
            progress_line(Duration::from_millis(12_400), "waiting for the model"),
            "[12s] waiting for the model"
        );
        let long = format!("round 2: checking unit_logs {}", "x".repeat(200));
        assert_eq!(progress_line(Duration::ZERO, &long).chars().count(), LINE_CHARS);
        let call = serde_json::json!({"unit": "nginx.service\x1b[2J"});
        assert_eq!(arguments(&call), " nginx.service\\x1b[2J");
    }
}
