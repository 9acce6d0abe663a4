//! Serves the Ollama double out of process, for the README demo and manual
//! runs where no real Ollama is available.
//!
//! ```text
//! ollama-double [--listen 127.0.0.1:11434] [--model NAME ...] [--script FILE]
//! ```
//!
//! Prints `listening on http://ADDR` once ready, logs one line per request on
//! stderr, and exits cleanly on SIGTERM or SIGINT.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use macha_testbed::ollama::{ModelCaps, OllamaDouble, Reply};
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: ollama-double [--listen ADDR] [--model NAME ...] [--script FILE]

  --listen ADDR   address to serve on (default 127.0.0.1:11434)
  --model NAME    a model to claim, with tool support (repeatable; default llama3.1:70b)
  --script FILE   replies to /api/chat, one JSON object a line, e.g. {\"content\": \"...\"},
                  {\"status\": 500, \"error\": \"boom\"}, {\"hang_ms\": 5000}, {\"invalid_json\": true};
                  once they are used up, a demo responder answers";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ollama-double: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:11434".parse()?;
    let mut models = Vec::new();
    let mut script = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value\n\n{USAGE}"));
        match arg.as_str() {
            "--listen" => listen = value()?.parse().context("--listen takes an address such as 127.0.0.1:11434")?,
            "--model" => models.push(value()?),
            "--script" => {
                let path = value()?;
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading the script {path}"))?;
                script = Reply::parse_script(&text).with_context(|| format!("in the script {path}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => bail!("unknown argument {arg:?}\n\n{USAGE}"),
        }
    }
    if models.is_empty() {
        models.push("llama3.1:70b".to_owned());
    }

    let double = models
        .iter()
        .fold(OllamaDouble::builder(), |b, name| b.model(name, ModelCaps::default()))
        .listen(listen)
        .script(script)
        .log_requests(true)
        .start()?;
    println!("listening on {}", double.url());
    std::io::stdout().flush()?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let signal_name = runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        anyhow::Ok(tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        })
    })?;
    eprintln!("ollama-double: {signal_name} received, stopping");
    drop(double);
    Ok(())
}
