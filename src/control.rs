//! The control socket: line-delimited JSON over a Unix socket (DESIGN §7).
//!
//! A client connects, writes one [`Request`] as a JSON line and reads one
//! [`Response`] line; the server then closes the connection. The server side
//! here is I/O only ([`Listener`], [`Conn`]); what a request does is decided
//! by the runtime.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::status::Status;

/// A control request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Start { group: String },
    Stop { group: String },
    Restart { group: String },
    Reload,
    Shutdown,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Self {
        Response {
            ok: true,
            message: Some(message.into()),
            status: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            message: Some(message.into()),
            status: None,
        }
    }

    pub fn status(status: Status) -> Self {
        Response {
            ok: true,
            message: None,
            status: Some(status),
        }
    }
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice::<Request>(line).map_err(|e| format!("bad request: {e}"))
}

/// Largest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// The default socket path when neither config nor CLI names one:
/// `$XDG_RUNTIME_DIR/drover.sock`, else `/run/drover.sock` for root, else
/// `./drover.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("drover.sock");
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/drover.sock");
    }
    PathBuf::from("drover.sock")
}

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("control socket {0}: another drover is already listening there")]
    InUse(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The listening control socket; removes its file when dropped.
#[derive(Debug)]
pub struct Listener {
    pub socket: UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Binds `path` with mode 0600. A stale socket file (nobody listening)
    /// is replaced; a live one is an error.
    pub fn bind(path: &Path) -> Result<Listener, BindError> {
        let io_err = |source| BindError::Io {
            path: path.to_owned(),
            source,
        };
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io_err)?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let socket = UnixListener::bind(path).map_err(io_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        socket.set_nonblocking(true).map_err(io_err)?;
        Ok(Listener {
            socket,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One accepted client: reads a request line, then writes the response.
#[derive(Debug)]
pub struct Conn {
    pub stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
}

/// What a readable connection produced.
#[derive(Debug)]
pub enum ConnEvent {
    /// Nothing complete yet.
    Pending,
    /// A whole request (or a request the client got wrong).
    Request(Result<Request, String>),
    /// The client went away.
    Closed,
}

impl Conn {
    pub fn new(stream: UnixStream) -> io::Result<Conn> {
        stream.set_nonblocking(true)?;
        Ok(Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
        })
    }

    /// Reads what is available and returns a request once a line is complete.
    pub fn on_readable(&mut self) -> ConnEvent {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return ConnEvent::Closed,
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return ConnEvent::Closed,
            }
            if let Some(nl) = self.input.iter().position(|&b| b == b'\n') {
                return ConnEvent::Request(parse_request(&self.input[..nl]));
            }
            if self.input.len() > MAX_REQUEST {
                return ConnEvent::Request(Err("request too long".into()));
            }
        }
        ConnEvent::Pending
    }

    /// Queues the response line.
    pub fn respond(&mut self, response: &Response) {
        self.output = serde_json::to_vec(response).expect("responses serialise");
        self.output.push(b'\n');
        self.written = 0;
    }

    /// Writes what it can; true once the whole response is out.
    pub fn flush(&mut self) -> bool {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
        true
    }
}

/// Errors of a control client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no drover is listening on {0} (is `drover run` running? see --socket)")]
    NotListening(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket {0}: the supervisor sent an answer this client cannot read")]
    BadAnswer(PathBuf),
}

/// Sends one request and waits for the answer.
pub fn request(path: &Path, request: &Request) -> Result<Response, ClientError> {
    let io_err = |source| ClientError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotListening(path.to_owned())
        }
        _ => io_err(e),
    })?;
    let mut line = serde_json::to_vec(request).expect("requests serialise");
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(io_err)?;
    serde_json::from_slice(&answer).map_err(|_| ClientError::BadAnswer(path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_use_the_cmd_tag() {
        let json = serde_json::to_string(&Request::Restart {
            group: "web".into(),
        })
        .unwrap();
        assert_eq!(json, r#"{"cmd":"restart","group":"web"}"#);
        let back: Request = serde_json::from_str(r#"{"cmd":"status"}"#).unwrap();
        assert_eq!(back, Request::Status);
    }
}
