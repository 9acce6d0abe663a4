//! A real Chroma server (`chroma run` of the `chromadb` package), from the
//! cache `tests/chroma/setup.sh` builds once; `tests/run.sh` exports its
//! folder as `MACHA_CHROMA_DIR`. The server keeps its data in a folder of its
//! own, removed when the handle is dropped; it can be stopped and started
//! again on the same data and port, as a server that goes away and comes back.
//!
//! Beside it, [`Impostor`]: a server that answers every request with one fixed
//! reply, for what a real Chroma never sends (a body too large, not JSON).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::serve::Server;

/// `chroma run` answers in 1 to 2 s; a busy machine gets more.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stop waits for the server to exit after SIGTERM before it is
/// killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The running server (or a stopped one that can start again), killed and its
/// data removed when dropped. Its output goes to `chroma.log` in its folder,
/// shown in the error when it does not start.
pub struct Chroma {
    program: PathBuf,
    /// Holds `data/` (the server's `--path`) and `chroma.log`.
    dir: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Chroma {
    /// Starts a server with an empty data folder on a free loopback port and
    /// waits until it answers `GET /api/v2/heartbeat`.
    pub fn start() -> anyhow::Result<Chroma> {
        let cache = std::env::var_os("MACHA_CHROMA_DIR").map(PathBuf::from).context(
            "MACHA_CHROMA_DIR is not set: run the tests with tests/run.sh, or first \
             export MACHA_CHROMA_DIR=$(sudo bash tests/chroma/setup.sh | tail -n 1)",
        )?;
        let program = cache.join("venv/bin/chroma");
        if !program.is_file() {
            bail!("MACHA_CHROMA_DIR={} holds no venv/bin/chroma: build it with tests/chroma/setup.sh", cache.display());
        }
        let dir = fresh_dir()?;
        std::fs::create_dir(dir.join("data")).with_context(|| format!("creating {}/data", dir.display()))?;
        // The port is free now; the server binds it a moment later. Nothing
        // else in the tests takes fixed loopback ports.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free loopback port for Chroma")?;
        let mut chroma = Chroma { program, dir, addr, child: None };
        chroma.start_again()?;
        Ok(chroma)
    }

    /// `http://127.0.0.1:PORT`, the same across [`Chroma::stop`] and
    /// [`Chroma::start_again`].
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server process's id while it runs (for reading its memory in
    /// `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The folder the server keeps its data in (`--path`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Stops the server (SIGTERM, then SIGKILL after a grace period); its
    /// data stays. Connections to its port are refused until
    /// [`Chroma::start_again`].
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        // SAFETY: kill(2) on our own child's pid, which has not been reaped
        // (`wait` below is the only reaping), so the pid is still ours.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts the server again on the same data and port (after
    /// [`Chroma::stop`]) and waits until it answers; does nothing if it runs.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log_path = self.dir.join("chroma.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut child = Command::new(&self.program)
            .arg("run")
            .arg("--path")
            .arg(self.dir.join("data"))
            .args(["--host", "127.0.0.1", "--port", &self.addr.port().to_string()])
            // No attempt to reach a telemetry service from a test.
            .env("ANONYMIZED_TELEMETRY", "False")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if heartbeat(self.addr) {
                self.child = Some(child);
                return Ok(());
            }
            let exited = child.try_wait()?;
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait()?;
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
                bail!(
                    "chroma run on {} did not answer its heartbeat within {START_TIMEOUT:?} ({status}); the end of its log:\n{}",
                    self.addr,
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Chroma {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new empty folder under the system's temporary folder.
fn fresh_dir() -> anyhow::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("macha-chroma-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
}

/// Whether `GET /api/v2/heartbeat` on `addr` answers 200 with a heartbeat
/// (plain HTTP/1.1 on a socket: the harness needs no HTTP client for this).
fn heartbeat(addr: SocketAddr) -> bool {
    let ask = || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(
            format!("GET /api/v2/heartbeat HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut answer = String::new();
        stream.take(64 * 1024).read_to_string(&mut answer)?;
        Ok(answer)
    };
    matches!(ask(), Ok(a) if a.starts_with("HTTP/1.1 200") && a.contains("heartbeat"))
}

/// What an [`Impostor`] answers to every request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status and body, as `application/json`.
    Json(u16, String),
    /// 200 with a body of at least this many bytes (`[[[...`, never valid
    /// JSON), sent without announcing its length (a chunked stream).
    Huge(usize),
    /// Nothing: the request is read and never answered.
    Never,
}

/// A server on a free loopback port that answers every request, whatever its
/// method and path, with one [`Reply`]: what a broken server or a proxy in
/// front of Chroma might send. Stops when dropped.
pub struct Impostor {
    server: Server,
}

impl Impostor {
    pub fn start(reply: Reply) -> anyhow::Result<Impostor> {
        use axum::response::IntoResponse;
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the Chroma impostor")?;
        let app = axum::Router::new().fallback(move || {
            let reply = reply.clone();
            async move {
                match reply {
                    Reply::Json(status, body) => {
                        let status = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK);
                        (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
                    }
                    Reply::Huge(bytes) => {
                        let chunk = axum::body::Bytes::from(vec![b'['; 64 * 1024]);
                        let chunks = bytes.div_ceil(chunk.len());
                        let stream = futures_util::stream::iter(
                            (0..chunks).map(move |_| Ok::<_, std::convert::Infallible>(chunk.clone())),
                        );
                        axum::body::Body::from_stream(stream).into_response()
                    }
                    Reply::Never => std::future::pending().await,
                }
            }
        });
        Ok(Impostor { server: Server::start("chroma-impostor", listener, app)? })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }
}
