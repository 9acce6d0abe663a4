//! The controller's side of one session with a host: SSH (libssh2, through
//! `ssh2`) with the host key checked before anything is sent, public-key
//! login (the key and a `known_hosts` file read only when no one else could
//! have written them), and the protocol on a session channel with no
//! command (the key's forced command on the host is `macha remote serve`).
//! No agent, no PTY, no forwarding is ever asked for. Blocking: it runs on a thread of its
//! own (`fleet`), bounded by the connect and command timeouts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use ssh2::{CheckResult, KnownHostFileKind, Session};

use super::protocol::{ErrorKind, ProtocolError, Request, VERSION};
use crate::bounded::{self, FileKind, Size};
use crate::config::RemoteHost;
use crate::sshkey;

/// The longest reply line read, in bytes: an `observe` with many failed
/// units and their logs fits.
pub const MAX_REPLY: usize = 16 * 1024 * 1024;

/// The controller's private key, read only when root or macha's user owns
/// it and no one else may read or write it.
const PRIVATE_KEY: FileKind = FileKind { name: "the controller's private key", limit: Size::kib(64) };
/// A `known_hosts` file, read only when no one but its owner may write it.
const KNOWN_HOSTS: FileKind = FileKind { name: "the known_hosts file", limit: Size::mib(4) };

/// Why a host could not be talked to, or did not answer.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot connect to {address}: {source}")]
    Connect { address: String, source: std::io::Error },
    /// The host's key is not the one configured: nothing was sent.
    #[error("host key refused, nothing sent: {0}")]
    HostKey(String),
    #[error("SSH: {0}")]
    Ssh(String),
    #[error("login as {user} with the controller's key refused: {why}")]
    Login { user: String, why: String },
    /// The host answered with a typed error.
    #[error("the host refused the request ({:?}): {}", .0.kind, .0.message)]
    Refused(ProtocolError),
    #[error("the host's answer is not the protocol's: {0}")]
    Answer(String),
    #[error("the host closed the session")]
    Closed,
}

impl From<ssh2::Error> for RemoteError {
    fn from(e: ssh2::Error) -> Self {
        RemoteError::Ssh(e.to_string())
    }
}

/// An open session with a host, past the hello.
pub struct Client {
    // Kept alive as long as the channel.
    _session: Session,
    channel: BufReader<ssh2::Channel>,
    /// What the host's hello said.
    pub hello: serde_json::Value,
}

/// Checks `key` (the blob the host showed) against `host`'s configured key
/// or its `known_hosts` file.
fn check_host_key(session: &Session, host: &RemoteHost, key: &[u8]) -> Result<(), RemoteError> {
    let shown = sshkey::fingerprint(key);
    match (&host.host_key, &host.known_hosts) {
        (Some(text), _) => {
            let want = sshkey::parse_public(text).map_err(RemoteError::HostKey)?;
            if want.blob == key {
                Ok(())
            } else {
                Err(RemoteError::HostKey(format!(
                    "{} showed the key {shown}, not the configured {} (it changed, or this is another host)",
                    host.name,
                    sshkey::fingerprint(&want.blob)
                )))
            }
        }
        (None, Some(file)) => {
            let unread = |why: String| RemoteError::HostKey(format!("{} is not used: {why}", file.display()));
            let text = bounded::read_trusted(file, KNOWN_HOSTS, false).map_err(unread)?;
            let text = String::from_utf8(text).map_err(|_| unread("it is not UTF-8 text".into()))?;
            let mut known = session.known_hosts()?;
            known.read_str(&text, KnownHostFileKind::OpenSSH).map_err(|e| unread(e.to_string()))?;
            match known.check_port(&host.address, host.port, key) {
                CheckResult::Match => Ok(()),
                CheckResult::Mismatch => Err(RemoteError::HostKey(format!(
                    "{} showed the key {shown}, which is not the one {} holds for {} (it changed)",
                    host.name,
                    file.display(),
                    host.address
                ))),
                CheckResult::NotFound => Err(RemoteError::HostKey(format!(
                    "{} showed the key {shown}, and {} holds none for {}",
                    host.name,
                    file.display(),
                    host.address
                ))),
                CheckResult::Failure => Err(RemoteError::HostKey(format!(
                    "the key {shown} could not be checked against {}",
                    file.display()
                ))),
            }
        }
        (None, None) => Err(RemoteError::HostKey(format!("no key is configured for {}", host.name))),
    }
}

impl Client {
    /// Connects to `host`, checks its key, logs in with `private_key`, and
    /// says hello as `controller`.
    pub fn connect(
        host: &RemoteHost,
        private_key: &Path,
        controller: &str,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Client, RemoteError> {
        let address = format!("{}:{}", host.address, host.port);
        let connect = |source| RemoteError::Connect { address: address.clone(), source };
        let addr = address
            .to_socket_addrs()
            .map_err(connect)?
            .next()
            .ok_or_else(|| connect(std::io::Error::other("the name has no address")))?;
        let tcp = TcpStream::connect_timeout(&addr, connect_timeout).map_err(connect)?;
        let mut session = Session::new()?;
        session.set_tcp_stream(tcp);
        session.set_timeout(u32::try_from(connect_timeout.as_millis()).unwrap_or(u32::MAX));
        session.handshake()?;
        let (key, _) = session.host_key().ok_or_else(|| RemoteError::HostKey("the host showed no key".into()))?;
        let key = key.to_vec();
        check_host_key(&session, host, &key)?;
        let login = |why: String| RemoteError::Login { user: host.user.clone(), why };
        let key = bounded::read_trusted(private_key, PRIVATE_KEY, true)
            .map_err(|why| login(format!("the key {} is not used: {why}", private_key.display())))?;
        let key = String::from_utf8(key).map_err(|_| login("the key is not an OpenSSH text key".into()))?;
        session.userauth_pubkey_memory(&host.user, None, &key, None).map_err(|e| login(e.to_string()))?;
        if !session.authenticated() {
            return Err(RemoteError::Login { user: host.user.clone(), why: "not authenticated".into() });
        }
        session.set_timeout(u32::try_from(command_timeout.as_millis()).unwrap_or(u32::MAX));
        let mut channel = session.channel_session()?;
        // No command: the key's forced command runs; no PTY is asked for.
        channel.shell()?;
        let mut client = Client { _session: session, channel: BufReader::new(channel), hello: serde_json::Value::Null };
        let hello = Request::Hello { version: VERSION, controller: controller.to_owned() };
        client.hello = client.request(&hello)?;
        Ok(client)
    }

    /// Sends `request` and reads its reply; a typed error from the host is
    /// `Refused`.
    pub fn request(&mut self, request: &Request) -> Result<serde_json::Value, RemoteError> {
        let mut line = serde_json::to_vec(request).map_err(|e| RemoteError::Answer(e.to_string()))?;
        line.push(b'\n');
        let channel = self.channel.get_mut();
        channel.write_all(&line).map_err(|e| RemoteError::Ssh(e.to_string()))?;
        channel.flush().map_err(|e| RemoteError::Ssh(e.to_string()))?;
        let mut reply = Vec::new();
        let read = (&mut self.channel)
            .take(MAX_REPLY as u64 + 1)
            .read_until(b'\n', &mut reply)
            .map_err(|e| RemoteError::Ssh(e.to_string()))?;
        if read == 0 {
            return Err(RemoteError::Closed);
        }
        if reply.len() > MAX_REPLY {
            return Err(RemoteError::Answer(format!("a reply longer than {MAX_REPLY} bytes")));
        }
        let value: serde_json::Value =
            serde_json::from_slice(&reply).map_err(|e| RemoteError::Answer(format!("not JSON: {e}")))?;
        if value["reply"] == "error" {
            let e: ProtocolError = serde_json::from_value(value.clone())
                .unwrap_or_else(|_| ProtocolError::new(ErrorKind::Failed, value.to_string()));
            return Err(RemoteError::Refused(e));
        }
        Ok(value)
    }
}
