//! A real model behind Ollama's API: Gemma 3 270M served by llama.cpp
//! through `tests/llm/ollama_server.py`, from the cache `tests/llm/setup.sh`
//! builds once. `tests/setup.sh` builds it and exports its folder as
//! `MACHA_LLM_DIR`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};

/// The name the model is served under, as Ollama's library names it.
pub const NAME: &str = "gemma3:270m";

/// The model file inside the cache.
const MODEL_FILE: &str = "model/gemma-3-270m-q4_k_m.gguf";

/// Loading the model takes about two seconds; a busy machine gets more.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// What llama.cpp's schema converter writes when it could not carry a part
/// of a schema into the grammar (and let anything through there instead).
const INCOMPLETE: &str = "WARNING: JSON schema conversion was incomplete";

/// The server, stopped when dropped. Its log (one line per request) goes to
/// the test's standard error.
pub struct RealModel {
    child: Child,
    url: String,
    incomplete: Arc<Mutex<Vec<String>>>,
}

impl RealModel {
    pub fn start() -> anyhow::Result<RealModel> {
        let dir = std::env::var_os("MACHA_LLM_DIR").map(PathBuf::from).context(
            "MACHA_LLM_DIR is not set: run the tests with tests/run.sh, or first \
             export MACHA_LLM_DIR=$(sudo bash tests/llm/setup.sh | tail -n 1)",
        )?;
        let python = dir.join("venv/bin/python");
        let model = dir.join(MODEL_FILE);
        if !python.is_file() || !model.is_file() {
            bail!("{} holds no venv/bin/python or {MODEL_FILE}: build it with tests/llm/setup.sh", dir.display());
        }
        let server = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../llm/ollama_server.py");
        let mut child = Command::new(&python)
            .arg(&server)
            .arg("--model-file")
            .arg(&model)
            .args(["--name", NAME, "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {} {}", python.display(), server.display()))?;
        let incomplete = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        let seen = Arc::clone(&incomplete);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                if line.contains(INCOMPLETE) {
                    seen.lock().unwrap().push(line);
                }
            }
        });
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => Ok(RealModel { child, url, incomplete }),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                bail!("the model server did not say where it listens within {START_TIMEOUT:?} (exit: {status:?})")
            }
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The converter's warnings so far: each names a part of a `format`
    /// schema that the grammar does not hold the model to.
    pub fn incomplete_conversions(&self) -> Vec<String> {
        self.incomplete.lock().unwrap().clone()
    }
}

impl Drop for RealModel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
