//! The client side: one request, one answer, within a time limit.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Request, Response};

/// How long a client waits for the supervisor's answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of a control client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no drover is listening on {0} (is `drover run` running? see --socket)")]
    NotListening(PathBuf),
    #[error(
        "control socket {}: no answer within {}s (is the supervisor stopped or stuck?)",
        .0.display(), .1.as_secs()
    )]
    Timeout(PathBuf, Duration),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket {0}: the supervisor sent an answer this client cannot read")]
    BadAnswer(PathBuf),
}

/// Sends one request and waits up to [`CLIENT_TIMEOUT`] for the answer.
pub fn request(path: &Path, request: &Request) -> Result<Response, ClientError> {
    request_within(path, request, CLIENT_TIMEOUT)
}

/// Sends one request and waits up to `timeout` for the whole answer.
pub fn request_within(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let fail = failure(path, timeout);
    let mut stream = send(path, request, timeout)?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout(path.to_owned(), timeout));
        }
        stream.set_read_timeout(Some(left)).map_err(fail)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(e)),
        }
        if answer.ends_with(b"\n") {
            break;
        }
    }
    serde_json::from_slice(&answer).map_err(|_| ClientError::BadAnswer(path.to_owned()))
}

/// An I/O error on the socket at `path`, as the client reports it (a
/// timeout after `timeout`).
fn failure(path: &Path, timeout: Duration) -> impl Fn(io::Error) -> ClientError + Copy + '_ {
    move |source: io::Error| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            ClientError::Timeout(path.to_owned(), timeout)
        }
        _ => ClientError::Io {
            path: path.to_owned(),
            source,
        },
    }
}

/// Connects to `path` and writes `request` as one line (within `timeout`).
fn send(path: &Path, request: &Request, timeout: Duration) -> Result<UnixStream, ClientError> {
    let fail = failure(path, timeout);
    let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotListening(path.to_owned())
        }
        _ => fail(e),
    })?;
    let mut line = serde_json::to_vec(request).map_err(|e| fail(e.into()))?;
    line.push(b'\n');
    stream.set_write_timeout(Some(timeout)).map_err(fail)?;
    stream.write_all(&line).map_err(fail)?;
    Ok(stream)
}

/// Sends a request whose answer is a response line followed by a stream
/// (`logs`): waits up to [`CLIENT_TIMEOUT`] for the response line; when it
/// is `ok`, copies what follows to `out` until the supervisor closes the
/// connection (with no time limit: a follower waits for new lines) or `out`
/// refuses (a closed pipe: the reader went away). Returns the response.
pub fn stream(
    path: &Path,
    request: &Request,
    out: &mut dyn Write,
) -> Result<Response, ClientError> {
    let fail = failure(path, CLIENT_TIMEOUT);
    let stream = send(path, request, CLIENT_TIMEOUT)?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(fail)?;
    let mut reader = io::BufReader::with_capacity(64 * 1024, stream);
    let mut first = Vec::new();
    io::BufRead::read_until(&mut reader, b'\n', &mut first).map_err(fail)?;
    let response: Response =
        serde_json::from_slice(&first).map_err(|_| ClientError::BadAnswer(path.to_owned()))?;
    if !response.ok {
        return Ok(response);
    }
    reader.get_ref().set_read_timeout(None).map_err(fail)?;
    loop {
        let chunk = match io::BufRead::fill_buf(&mut reader) {
            Ok([]) => break,
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(e)),
        };
        let n = chunk.len();
        if out.write_all(chunk).and_then(|()| out.flush()).is_err() {
            break;
        }
        io::BufRead::consume(&mut reader, n);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_supervisor_that_never_answers_is_a_timeout() {
        let dir = std::env::temp_dir().join(format!("drover-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mute.sock");
        let _ = std::fs::remove_file(&path);
        // Accepts nothing: the connection waits in the backlog, like one to
        // a stopped drover.
        let _listener = UnixListener::bind(&path).unwrap();
        let started = Instant::now();
        let err = request_within(&path, &Request::Status, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, ClientError::Timeout(..)), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(err.to_string().contains("no answer within"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nobody_listening_is_said_in_one_line() {
        let path = Path::new("/nonexistent/drover.sock");
        let err = request(path, &Request::Status).unwrap_err();
        assert!(matches!(err, ClientError::NotListening(_)));
        assert_eq!(err.to_string().lines().count(), 1);
    }
}
