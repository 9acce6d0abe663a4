//! Bounded reading of what macha takes in from outside its state directory:
//! files named by the configuration or the command line (the configuration
//! itself, secret files, prompt templates, eval fixtures, a file a proposal
//! changes) and HTTP bodies (the model's answers, Gotify's).
//!
//! Every read has a limit and stops there with an error that names it, so
//! neither a 2 GiB answer nor `/dev/zero` can take the memory macha runs in.
//! A file is opened without blocking and refused unless it is a regular file,
//! before anything is read, so a FIFO cannot hang a command either. Files in
//! the state directory are read through the state directory's own code.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::libc;

/// A number of bytes, shown as people write limits (`4 MiB`, `64 KiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(u64);

impl Size {
    pub const fn bytes(n: u64) -> Self {
        Self(n)
    }

    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }

    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: u64 = 1024 * 1024;
        match self.0 {
            n if n >= MIB && n % MIB == 0 => write!(f, "{} MiB", n / MIB),
            n if n >= 1024 && n % 1024 == 0 => write!(f, "{} KiB", n / 1024),
            n => write!(f, "{n} bytes"),
        }
    }
}

/// A kind of file macha reads: what it is to macha (for messages) and the
/// most macha reads of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKind {
    /// As a message names it after "cannot read": `config file`, `the
    /// Gotify token file`.
    pub name: &'static str,
    pub limit: Size,
}

/// Why a file was not read: `cannot read KIND PATH: REASON`.
#[derive(Debug)]
pub struct FileError {
    kind: FileKind,
    path: PathBuf,
    problem: Problem,
}

#[derive(Debug)]
enum Problem {
    Io(std::io::Error),
    /// What it is instead: `a FIFO`, `a directory`.
    NotRegular(&'static str),
    TooLarge,
}

impl FileError {
    fn new(kind: FileKind, path: &Path, problem: Problem) -> Self {
        Self { kind, path: path.to_path_buf(), problem }
    }

    /// Whether the file does not exist (some callers fall back to a default).
    pub fn is_not_found(&self) -> bool {
        matches!(&self.problem, Problem::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }

    /// What is wrong, without the file's kind and path (for messages that
    /// name the file already).
    pub fn reason(&self) -> String {
        match &self.problem {
            Problem::Io(e) => e.to_string(),
            Problem::NotRegular(what) => format!("it is {what}, not a regular file"),
            Problem::TooLarge => format!("it is larger than the {} limit", self.kind.limit),
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read {} {}: {}", self.kind.name, self.path.display(), self.reason())
    }
}

/// The cause is in the message already, so there is no `source`.
impl std::error::Error for FileError {}

/// Reads the regular file `path`, at most `kind.limit` bytes of it.
pub fn read(path: &Path, kind: FileKind) -> Result<Vec<u8>, FileError> {
    let io = |e| FileError::new(kind, path, Problem::Io(e));
    // Non-blocking, so that opening a FIFO returns at once (and is refused
    // below) instead of waiting for a writer; no effect on a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let file_type = meta.file_type();
    if !file_type.is_file() {
        let what = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_char_device() {
            "a character device"
        } else if file_type.is_block_device() {
            "a block device"
        } else if file_type.is_socket() {
            "a socket"
        } else {
            "a special file"
        };
        return Err(FileError::new(kind, path, Problem::NotRegular(what)));
    }
    let limit = kind.limit.get();
    if meta.len() > limit {
        return Err(FileError::new(kind, path, Problem::TooLarge));
    }
    // The size can change after fstat (and /proc files say 0): read one byte
    // past the limit to tell.
    let mut content = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut content).map_err(io)?;
    if content.len() as u64 > limit {
        return Err(FileError::new(kind, path, Problem::TooLarge));
    }
    Ok(content)
}

/// [`read`], as UTF-8 text.
pub fn read_to_string(path: &Path, kind: FileKind) -> Result<String, FileError> {
    String::from_utf8(read(path, kind)?).map_err(|_| {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8 text");
        FileError::new(kind, path, Problem::Io(e))
    })
}

/// Why an HTTP body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than {0}, the most macha reads of it")]
    TooLarge(Size),
    /// The connection failed or timed out while the body was read.
    #[error("{0}")]
    Transport(reqwest::Error),
}

/// Reads `response`'s body as it arrives, at most `limit` bytes: a larger
/// body (announced or not) stops the read there, so memory holds at most the
/// limit and one chunk; a body that never ends is cut by the limit or the
/// client's timeout, whichever comes first.
pub async fn read_body(mut response: reqwest::Response, limit: Size) -> Result<Vec<u8>, BodyError> {
    let announced = response.content_length().unwrap_or(0);
    if announced > limit.get() {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = Vec::with_capacity(announced as usize);
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if (body.len() + chunk.len()) as u64 > limit.get() {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A secret kept in a file (a token, an API key): the file's first line,
/// trimmed, read within 64 KiB; `name` says which file in the errors, an
/// empty one included.
pub fn read_secret(path: &Path, name: &'static str) -> Result<String, String> {
    let kind = FileKind { name, limit: Size::kib(64) };
    let text = read_to_string(path, kind).map_err(|e| e.to_string())?;
    let secret = text.lines().next().unwrap_or("").trim().to_owned();
    if secret.is_empty() {
        return Err(format!("{name} {} is empty", path.display()));
    }
    Ok(secret)
}

/// Reads `path`, bounded by `kind`, when it is trusted: owned by root or
/// by the user macha runs as, and writable by no one else (its group and
/// others may not write it); a `secret` also readable by no one else.
/// Anyone else could have put a file there that macha would act on.
pub fn read_trusted(path: &Path, kind: FileKind, secret: bool) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!("owned by uid {}, neither root nor the user macha runs as (uid {me})", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("writable by its group or by others (mode {:o})", meta.mode() & 0o7777));
    }
    if secret && meta.mode() & 0o044 != 0 {
        return Err(format!(
            "readable by its group or by others (mode {:o}); it must be private",
            meta.mode() & 0o7777
        ));
    }
    read(path, kind).map_err(|e| e.reason())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_others_may_write_or_a_secret_others_may_read_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        let kind = FileKind { name: "a test file", limit: Size::kib(1) };
        let mode = |m: u32| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
        mode(0o644);
        assert_eq!(read_trusted(&path, kind, false).unwrap(), b"x");
        assert!(read_trusted(&path, kind, true).unwrap_err().contains("readable by its group or by others"));
        mode(0o600);
        assert_eq!(read_trusted(&path, kind, true).unwrap(), b"x");
        mode(0o664);
        assert!(read_trusted(&path, kind, false).unwrap_err().contains("writable by its group or by others"));
    }

    const SMALL: FileKind = FileKind { name: "test file", limit: Size::kib(4) };

    #[test]
    fn a_regular_file_within_its_limit_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x".repeat(4096)).unwrap();
        assert_eq!(read_to_string(&path, SMALL).unwrap().len(), 4096);
    }

    #[test]
    fn a_file_over_its_limit_is_refused_naming_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, "x".repeat(4097)).unwrap();
        let e = read(&path, SMALL).unwrap_err().to_string();
        assert_eq!(e, format!("cannot read test file {}: it is larger than the 4 KiB limit", path.display()));
    }

    #[test]
    fn devices_fifos_and_directories_are_refused_before_anything_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        for (path, what) in
            [(Path::new("/dev/zero"), "a character device"), (fifo.as_path(), "a FIFO"), (dir.path(), "a directory")]
        {
            let started = std::time::Instant::now();
            let e = read(path, SMALL).unwrap_err().to_string();
            assert_eq!(e, format!("cannot read test file {}: it is {what}, not a regular file", path.display()));
            assert!(started.elapsed() < std::time::Duration::from_secs(1), "{what}: at once");
        }
    }

    #[test]
    fn a_missing_file_says_so_with_its_path() {
        let e = read(Path::new("/nonexistent/f"), SMALL).unwrap_err();
        assert!(e.is_not_found());
        assert!(e.to_string().starts_with("cannot read test file /nonexistent/f: "), "{e}");
    }

    /// POSTs a chat to the Ollama double answering with `reply` and reads
    /// the body with `limit`.
    fn read_answer(reply: macha_testbed::ollama::Reply, limit: Size) -> Result<Vec<u8>, BodyError> {
        let double = macha_testbed::ollama::OllamaDouble::builder()
            .model("m", Default::default())
            .default_reply(reply)
            .start()
            .unwrap();
        let chat = serde_json::json!({"model": "m", "stream": false, "messages": [{"role": "user", "content": "?"}]});
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let url = format!("{}/api/chat", double.url());
            let response = reqwest::Client::new().post(url).json(&chat).send().await.unwrap();
            read_body(response, limit).await
        })
    }

    #[test]
    fn a_body_past_its_limit_stops_the_read_there() {
        let e = read_answer(macha_testbed::ollama::Reply::Oversized(64 << 20), Size::mib(1)).unwrap_err();
        assert_eq!(e.to_string(), "the answer is larger than 1 MiB, the most macha reads of it");
        let whole = read_answer(macha_testbed::ollama::Reply::Content("fine".into()), Size::mib(1)).unwrap();
        assert!(String::from_utf8(whole).unwrap().contains("\"content\":\"fine\""));
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(Size::mib(4).to_string(), "4 MiB");
        assert_eq!(Size::kib(1088).to_string(), "1088 KiB");
        assert_eq!(Size::bytes(1000).to_string(), "1000 bytes");
    }
}
