//! The control protocol and its client: line-delimited JSON over a Unix
//! socket.
//!
//! A client connects, writes one [`Request`] as a JSON line and reads one
//! [`Response`] line; the server then closes the connection. The server
//! side lives in the event loop (`runtime::control`); [`request`]
//! is the client side used by the CLI, [`status`] the shape of a `status`
//! answer, and [`wait`] decides when a `start`, `stop` or `restart` it sent
//! has reached its state.
//!
//! Everything a client sends is bounded: at most `MAX_CLIENTS` connections
//! (plus `RESERVED` kept for `status` and `shutdown`), a request line of at
//! most [`MAX_REQUEST`] bytes, `REQUEST_TIMEOUT` to send it and
//! `WRITE_TIMEOUT` to read the answer (see `runtime::control`).

mod client;
pub mod status;
pub mod wait;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::control::status::Status;

pub use client::{CLIENT_TIMEOUT, ClientError, request, request_within, stream};

/// Largest request line accepted, without its newline.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A control request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Start {
        group: String,
    },
    Stop {
        group: String,
    },
    Restart {
        group: String,
    },
    /// Read the config again and apply the difference; with `dry_run`,
    /// only say what would change.
    Reload {
        #[serde(default)]
        dry_run: bool,
        /// With `dry_run`: compare this config (absolute) instead of the
        /// running one's path.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
    },
    Shutdown,
    /// `drover logs`: the last `lines` kept lines of `groups` (all groups
    /// when empty; all kept lines without `lines`), then with `follow` new
    /// lines as they come. The answer is a response line, then the log
    /// lines as drover writes them.
    Logs {
        #[serde(default)]
        groups: Vec<String>,
        #[serde(default)]
        lines: Option<u32>,
        #[serde(default)]
        follow: bool,
    },
    /// `drover signal`: signal number `signal` to each live process of
    /// `group` (its own PID, or its process group with `process_group`).
    Signal {
        group: String,
        signal: i32,
        #[serde(default)]
        process_group: bool,
    },
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

    /// The response as one line, newline included.
    pub(crate) fn to_line(&self) -> Vec<u8> {
        // Strings, numbers and options only: serde_json cannot fail on them,
        // but a fixed line is still better than a panic in PID 1.
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"ok":false,"message":"response: cannot be serialised"}"#.to_vec()
        });
        line.push(b'\n');
        line
    }
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice::<Request>(line).map_err(|e| format!("request: {e}"))
}

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

    /// What a hostile client can send is an error, never a panic.
    #[test]
    fn hostile_lines_are_errors() {
        let deep = "[".repeat(MAX_REQUEST);
        let long_group = format!(r#"{{"cmd":"restart","group":"{}"}}"#, "x".repeat(60_000));
        let lines: Vec<&[u8]> = vec![
            b"",
            b"\xff\xfe\xfd",
            b"{\"cmd\":\"st\xffatus\"}",
            b"not json",
            b"[]",
            b"{}",
            b"{\"cmd\":null}",
            b"{\"cmd\":\"restart\"}",
            b"{\"cmd\":\"restart\",\"group\":1e999999}",
            b"{\"cmd\":\"restart\",\"group\":123456789012345678901234567890}",
            b"{\"cmd\":\"nope\"}",
            b"\"status\"",
            b"{\"cmd\":\"status\"} trailing",
            deep.as_bytes(),
        ];
        for line in lines {
            let parsed = parse_request(line);
            let err = parsed.expect_err(&String::from_utf8_lossy(line));
            assert!(err.starts_with("request: "), "{err}");
        }
        assert!(matches!(
            parse_request(long_group.as_bytes()),
            Ok(Request::Restart { .. })
        ));
        // Unknown fields are ignored: clients may be newer than the server.
        assert_eq!(
            parse_request(br#"{"cmd":"status","extra":[1,2,{"a":null}]}"#),
            Ok(Request::Status)
        );
    }
}
