//! One control connection: its request line being read, then its response
//! being written. I/O only; what is allowed and when is decided by
//! [`super::Clients`].

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use super::{MAX_REQUEST, Request, Response, parse_request};

/// Where a connection is in its one exchange.
#[derive(Debug)]
enum Phase {
    /// Reading the request line; `input` never holds more than
    /// [`MAX_REQUEST`] bytes.
    Reading { input: Vec<u8> },
    /// The request went to the runtime; the answer has not come yet.
    Handling,
    /// Writing the response line.
    Writing { output: Vec<u8>, written: usize },
    /// `drover logs -f`: new lines of `groups` (all when empty) are
    /// appended as they come and written as the client takes them. Once it
    /// is more than [`FOLLOW_BEHIND`] bytes behind, it gets a notice
    /// (`behind`) and is closed when that is out.
    Following {
        output: Vec<u8>,
        written: usize,
        groups: Vec<String>,
        behind: bool,
    },
}

/// The most a `logs -f` client may fall behind before it is dropped.
pub(super) const FOLLOW_BEHIND: usize = 1 << 20;

/// What a read produced.
#[derive(Debug, PartialEq)]
pub(super) enum Incoming {
    /// Nothing complete yet.
    Pending,
    /// A whole line, parsed (or what was wrong with it).
    Request(Result<Request, String>),
    /// The client went away (or the socket failed) before a request.
    Closed,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) stream: UnixStream,
    phase: Phase,
    /// Bytes the client has taken, all told: a follower that takes none
    /// for a while is stuck.
    sent: u64,
}

impl Conn {
    pub(super) fn new(stream: UnixStream) -> io::Result<Conn> {
        stream.set_nonblocking(true)?;
        Ok(Conn {
            stream,
            phase: Phase::Reading { input: Vec::new() },
            sent: 0,
        })
    }

    /// True while the request line is still being read.
    /// The request went to the runtime and its answer has not come.
    pub(super) fn is_handling(&self) -> bool {
        matches!(self.phase, Phase::Handling)
    }

    pub(super) fn is_reading(&self) -> bool {
        matches!(self.phase, Phase::Reading { .. })
    }

    /// Reads what is available; a request once its line is complete. The
    /// end of input also ends a line, so `printf '{"cmd":"status"}' | nc -N`
    /// works. Bytes after the newline are never looked at.
    pub(super) fn read_request(&mut self) -> Incoming {
        let Phase::Reading { input } = &mut self.phase else {
            return Incoming::Pending;
        };
        let mut buf = [0u8; 8192];
        loop {
            let n = match self.stream.read(&mut buf) {
                Ok(0) if input.is_empty() => return Incoming::Closed,
                Ok(0) => return self.finish_line(),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Incoming::Pending,
                Err(_) => return Incoming::Closed,
            };
            let Some(chunk) = buf.get(..n) else {
                return Incoming::Closed;
            };
            let newline = chunk.iter().position(|&b| b == b'\n');
            let data = match newline {
                Some(end) => chunk.get(..end).unwrap_or_default(),
                None => chunk,
            };
            let len = input.len() + data.len();
            if len > MAX_REQUEST {
                self.phase = Phase::Handling;
                return Incoming::Request(Err(format!("request: longer than {MAX_REQUEST} bytes")));
            }
            // Grow in powers of two up to the limit, never past it.
            let wanted = len.next_power_of_two().min(MAX_REQUEST);
            if input.capacity() < wanted {
                input.reserve_exact(wanted - input.len());
            }
            input.extend_from_slice(data);
            if newline.is_some() {
                return self.finish_line();
            }
        }
    }

    fn finish_line(&mut self) -> Incoming {
        match std::mem::replace(&mut self.phase, Phase::Handling) {
            Phase::Reading { input } => Incoming::Request(parse_request(&input)),
            other => {
                self.phase = other;
                Incoming::Pending
            }
        }
    }

    /// Queues the response line.
    pub(super) fn respond(&mut self, response: &Response) {
        self.respond_bytes(response.to_line());
    }

    /// Queues a whole answer (a response line and what follows it).
    pub(super) fn respond_bytes(&mut self, output: Vec<u8>) {
        self.phase = Phase::Writing { output, written: 0 };
    }

    /// Turns the connection into a follower of `groups` (all when empty),
    /// with `first` to write before any new line.
    pub(super) fn follow(&mut self, first: Vec<u8>, groups: Vec<String>) {
        self.phase = Phase::Following {
            output: first,
            written: 0,
            groups,
            behind: false,
        };
    }

    pub(super) fn is_following(&self) -> bool {
        matches!(self.phase, Phase::Following { .. })
    }

    /// Whether a follower has bytes the client has not taken yet.
    pub(super) fn has_output(&self) -> bool {
        matches!(self.phase, Phase::Following { .. }) && self.pending() > 0
    }

    /// Bytes of an answer (or of a follower's lines) not taken yet.
    pub(super) fn pending(&self) -> usize {
        match &self.phase {
            Phase::Writing { output, written }
            | Phase::Following {
                output, written, ..
            } => output.len().saturating_sub(*written),
            _ => 0,
        }
    }

    /// Bytes the client has taken since the connection was accepted.
    pub(super) fn sent(&self) -> u64 {
        self.sent
    }

    /// Appends new lines of `group` for a follower of it; true when
    /// something was added. A follower that fell too far behind gets a
    /// notice instead, and nothing more.
    pub(super) fn push_lines(&mut self, group: &str, chunk: &[u8]) -> bool {
        let Phase::Following {
            output,
            written,
            groups,
            behind,
        } = &mut self.phase
        else {
            return false;
        };
        if *behind || !(groups.is_empty() || groups.iter().any(|g| g == group)) {
            return false;
        }
        if *written > 0 {
            output.drain(..*written);
            *written = 0;
        }
        if output.len() + chunk.len() > FOLLOW_BEHIND {
            *behind = true;
            let notice = format!(
                "drover: logs: this client fell more than {} KiB behind; disconnected\n",
                FOLLOW_BEHIND >> 10
            );
            output.extend_from_slice(notice.as_bytes());
        } else {
            output.extend_from_slice(chunk);
        }
        true
    }

    /// For a follower: reads and drops what the client sends; true when it
    /// closed its end (or the socket failed).
    pub(super) fn peer_gone(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
    }

    /// Writes what the socket takes; true once the response is out (or can
    /// never be: the client went away). A follower is done only once it
    /// fell behind and its notice is out, or the client went away.
    pub(super) fn flush(&mut self) -> bool {
        let (output, written, ends) = match &mut self.phase {
            Phase::Writing { output, written } => (output, written, true),
            Phase::Following {
                output,
                written,
                behind,
                ..
            } => (output, written, *behind),
            _ => return false,
        };
        while let Some(rest) = output.get(*written..).filter(|r| !r.is_empty()) {
            match self.stream.write(rest) {
                Ok(0) => return true,
                Ok(n) => {
                    *written += n;
                    self.sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
        if !ends {
            // Everything is out: the buffer starts over.
            output.clear();
            *written = 0;
        }
        ends
    }

    /// Writes `response` once, without waiting, before the connection is
    /// dropped: a client turned away or timed out learns why when the
    /// socket has room, and nothing is owed to it when not.
    pub(super) fn farewell(mut self, response: &Response) {
        self.respond(response);
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Conn, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        (Conn::new(server).unwrap(), client)
    }

    /// Blocks until more arrives: the test's own wait.
    fn wait_readable(stream: &UnixStream) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::NONE).unwrap();
    }

    fn input_capacity(conn: &Conn) -> usize {
        match &conn.phase {
            Phase::Reading { input } => input.capacity(),
            _ => 0,
        }
    }

    #[test]
    fn a_line_may_arrive_in_pieces_and_garbage_after_it_is_ignored() {
        let (mut conn, mut client) = pair();
        assert_eq!(conn.read_request(), Incoming::Pending);
        client.write_all(br#"{"cmd":"sta"#).unwrap();
        assert_eq!(conn.read_request(), Incoming::Pending);
        client.write_all(b"tus\"}\n\xff\xffgarbage{{{").unwrap();
        assert_eq!(conn.read_request(), Incoming::Request(Ok(Request::Status)));
        assert_eq!(
            conn.read_request(),
            Incoming::Pending,
            "nothing more is read"
        );
    }

    #[test]
    fn the_end_of_input_ends_a_line_and_nothing_is_closed() {
        let (mut conn, mut client) = pair();
        client.write_all(br#"{"cmd":"reload"}"#).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(
            conn.read_request(),
            Incoming::Request(Ok(Request::Reload {
                dry_run: false,
                path: None
            }))
        );

        let (mut conn, client) = pair();
        drop(client);
        assert_eq!(conn.read_request(), Incoming::Closed);
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused_without_buffering_it() {
        let (mut conn, client) = pair();
        let writer = std::thread::spawn(move || {
            let mut client = client;
            // Stops with EPIPE once the server side is dropped.
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..160 {
                if client.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let mut most = 0;
        let outcome = loop {
            match conn.read_request() {
                Incoming::Pending => {
                    most = most.max(input_capacity(&conn));
                    wait_readable(&conn.stream);
                }
                other => break other,
            }
        };
        assert_eq!(
            outcome,
            Incoming::Request(Err(format!("request: longer than {MAX_REQUEST} bytes")))
        );
        assert!(most <= MAX_REQUEST, "the buffer grew to {most}");
        drop(conn);
        writer.join().unwrap();
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_read() {
        let (mut conn, mut client) = pair();
        let mut line = br#"{"cmd":"stop","group":""#.to_vec();
        line.resize(MAX_REQUEST - 2, b'g');
        line.extend_from_slice(b"\"}\n");
        assert_eq!(line.len(), MAX_REQUEST + 1);
        let writer = std::thread::spawn(move || client.write_all(&line).unwrap());
        let outcome = loop {
            match conn.read_request() {
                Incoming::Pending => wait_readable(&conn.stream),
                other => break other,
            }
        };
        writer.join().unwrap();
        assert!(
            matches!(outcome, Incoming::Request(Ok(Request::Stop { ref group })) if group.len() == MAX_REQUEST - 25),
            "{outcome:?}"
        );
    }
}
