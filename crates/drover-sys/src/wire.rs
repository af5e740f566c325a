//! The one request/reply protocol between drover and the helpers that start
//! children for it: the fork server and the Python templates (and the fork
//! server of the context library).
//!
//! Transport: a `SOCK_SEQPACKET` socket pair, one message per packet, so a
//! message is never split or merged. Integers are little-endian.
//!
//! - **Request** (drover → helper): `seq` (u64, never 0), then *fields*, each
//!   a u32 length and that many bytes. What the fields mean is the helper's
//!   business (the fork server: program, working directory, argv, envp; a
//!   template: the worker's variables). The fds the new process gets ride
//!   along as SCM_RIGHTS.
//! - **Reply** (helper → drover, one per request, in request order): `seq`
//!   (u64), `errno` (i32, 0 for success), `pid` (i32, the new process), then
//!   optional UTF-8 text: what went wrong, when `errno` is not 0.
//! - **Hello**: a reply with `seq` 0, sent once by a helper when it is ready
//!   to serve (`errno` 0), or when it cannot be (`errno` not 0, the text says
//!   why — a Python import that failed).
//!
//! The sequence numbers let the requester match each reply to its request
//! and refuse anything else: a helper runs code drover does not control (a
//! template is user code's process), so every reply is checked, never
//! trusted.
//!
//! Besides [`send`] and [`recv`] for these packets (fds attached),
//! [`recv_packet`] takes a packet that carries no fds as a vector: a queue
//! message, or a helper's later notice about a child it started.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// The most fds one request may carry ([`recv`] refuses more).
pub const MAX_FDS: usize = 64;
/// The most fds one packet can carry at all (the kernel's `SCM_MAX_FD`):
/// the limit of [`recv_up_to`].
pub const SCM_MAX_FD: usize = 253;
/// The largest request (a command's argv and environment).
pub const MAX_REQUEST: usize = 1 << 20;
/// The largest reply: the header and at most [`MAX_TEXT`] bytes of text.
pub const MAX_REPLY: usize = HEADER + MAX_TEXT;
/// The most text a reply carries; longer text is cut.
pub const MAX_TEXT: usize = 1000;
/// Bytes of a reply before its text.
const HEADER: usize = 16;

/// Builds a request packet: `seq`, then each field with its length.
#[derive(Debug)]
pub struct RequestBuilder {
    packet: Vec<u8>,
}

impl RequestBuilder {
    pub fn new(seq: u64) -> Self {
        RequestBuilder {
            packet: seq.to_le_bytes().to_vec(),
        }
    }

    /// Appends one field.
    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.packet.extend_from_slice(&len.to_le_bytes());
        self.packet
            .extend_from_slice(&bytes[..bytes.len().min(len as usize)]);
        self
    }

    /// Appends a count (of the fields that follow) as a 4-byte field.
    pub fn count(&mut self, n: usize) -> &mut Self {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.field(&n.to_le_bytes())
    }

    pub fn finish(self) -> Vec<u8> {
        self.packet
    }
}

/// Reads a request packet's fields in order; `None` from any method means
/// the packet is malformed.
#[derive(Debug)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

/// Splits a request packet into its sequence number and fields.
pub fn parse_request(packet: &[u8]) -> Option<(u64, Fields<'_>)> {
    let seq = u64::from_le_bytes(packet.get(..8)?.try_into().ok()?);
    Some((
        seq,
        Fields {
            rest: packet.get(8..)?,
        },
    ))
}

impl<'a> Fields<'a> {
    /// The next field.
    pub fn next_field(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.rest.get(..4)?.try_into().ok()?) as usize;
        let bytes = self.rest.get(4..4usize.checked_add(len)?)?;
        self.rest = &self.rest[4 + len..];
        Some(bytes)
    }

    /// The next field as a count written by [`RequestBuilder::count`].
    pub fn next_count(&mut self) -> Option<usize> {
        let bytes: [u8; 4] = self.next_field()?.try_into().ok()?;
        Some(u32::from_le_bytes(bytes) as usize)
    }

    /// Whether every field has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// A helper's answer to one request (or its hello, `seq` 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub seq: u64,
    /// The new process's PID, or the errno and text of what failed.
    pub result: Result<i32, Refusal>,
}

/// Why a helper could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Never 0.
    pub errno: i32,
    pub text: String,
}

impl Refusal {
    /// The refusal as an error: its text when it has one, else the errno's.
    pub fn into_error(self) -> io::Error {
        if self.text.is_empty() {
            io::Error::from_raw_os_error(self.errno)
        } else {
            io::Error::other(self.text)
        }
    }
}

impl Reply {
    /// A success reply (or a ready hello, with `seq` 0 and `pid` 0).
    pub fn ok(seq: u64, pid: i32) -> Reply {
        Reply {
            seq,
            result: Ok(pid),
        }
    }

    /// A failure reply; an `errno` of 0 becomes `EIO`.
    pub fn refused(seq: u64, errno: i32, text: impl Into<String>) -> Reply {
        Reply {
            seq,
            result: Err(Refusal {
                errno: if errno == 0 { libc::EIO } else { errno },
                text: text.into(),
            }),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut packet = Vec::with_capacity(HEADER);
        packet.extend_from_slice(&self.seq.to_le_bytes());
        let (errno, pid, text) = match &self.result {
            Ok(pid) => (0, *pid, ""),
            Err(r) => (r.errno, 0, r.text.as_str()),
        };
        packet.extend_from_slice(&errno.to_le_bytes());
        packet.extend_from_slice(&pid.to_le_bytes());
        packet.extend_from_slice(cut(text, MAX_TEXT).as_bytes());
        packet
    }

    /// `None` for a packet that is not a reply: too short, too long, or
    /// text that is not UTF-8.
    pub fn decode(packet: &[u8]) -> Option<Reply> {
        if packet.len() < HEADER || packet.len() > MAX_REPLY {
            return None;
        }
        let word = |at: usize| i32::from_le_bytes(packet[at..at + 4].try_into().expect("4 bytes"));
        let seq = u64::from_le_bytes(packet[..8].try_into().expect("8 bytes"));
        let (errno, pid) = (word(8), word(12));
        let text = std::str::from_utf8(&packet[HEADER..]).ok()?;
        Some(if errno == 0 {
            Reply::ok(seq, pid)
        } else {
            Reply::refused(seq, errno, text)
        })
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Sends one packet with `fds` attached (SCM_RIGHTS), never raising
/// SIGPIPE. With `dontwait`, a full socket is `WouldBlock` instead of a wait.
pub fn send(
    socket: BorrowedFd<'_>,
    packet: &[u8],
    fds: &[RawFd],
    dontwait: bool,
) -> io::Result<()> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let mut flags = MsgFlags::MSG_NOSIGNAL;
    if dontwait {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    loop {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &[io::IoSlice::new(packet)],
            cmsgs,
            flags,
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => return Ok(()),
        }
    }
}

/// What [`recv`] got.
#[derive(Debug)]
pub enum Received {
    /// A packet of this many bytes (in the buffer) and the fds it carried,
    /// each close-on-exec.
    Packet(usize, Vec<OwnedFd>),
    /// The other end is closed.
    Eof,
}

/// Receives one packet into `buf`. A packet longer than `buf`, or with more
/// fds than [`MAX_FDS`], is consumed and refused (`InvalidData`); its fds
/// are closed. With `dontwait`, no packet is `WouldBlock`.
pub fn recv(socket: BorrowedFd<'_>, buf: &mut [u8], dontwait: bool) -> io::Result<Received> {
    recv_up_to(socket, buf, MAX_FDS, dontwait)
}

/// [`recv`] for packets that may carry up to `max_fds` fds (at most
/// [`SCM_MAX_FD`]) rather than [`MAX_FDS`].
pub fn recv_up_to(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    dontwait: bool,
) -> io::Result<Received> {
    let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if dontwait {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let (len, raw, truncated) = loop {
        let mut iov = [io::IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => other?,
        };
        let mut raw = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                raw.extend(fds);
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_CTRUNC | MsgFlags::MSG_TRUNC);
        break (msg.bytes, raw, truncated);
    };
    let fds: Vec<OwnedFd> = raw
        .into_iter()
        // SAFETY: the kernel installed these fds in this process for this
        // message; nothing else knows their numbers, so each gets exactly
        // one owner.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if truncated || fds.len() > max_fds {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a packet or its fds did not fit and were cut",
        ));
    }
    if len == 0 && fds.is_empty() {
        return Ok(Received::Eof);
    }
    Ok(Received::Packet(len, fds))
}

/// What [`recv_packet`] got.
#[derive(Debug)]
pub enum Packet {
    Data(Vec<u8>),
    /// A packet longer than the limit (its real length); it is consumed.
    TooLong(usize),
    /// The other end is closed.
    Eof,
}

/// Receives one packet of at most `max` bytes as a vector (without
/// blocking if `dontwait`; then `WouldBlock` is an error). Fds attached to
/// it are not taken: the kernel closes them.
pub fn recv_packet(socket: BorrowedFd<'_>, max: usize, dontwait: bool) -> io::Result<Packet> {
    let mut buf = Vec::<u8>::with_capacity(max);
    let flags = libc::MSG_TRUNC | if dontwait { libc::MSG_DONTWAIT } else { 0 };
    loop {
        // SAFETY: the pointer is valid for writes of `max` bytes (the
        // vector's capacity) and recv writes at most `max` bytes there.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), max, flags) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // With MSG_TRUNC a packet socket reports the packet's real length.
        let n = n as usize;
        return Ok(if n == 0 {
            Packet::Eof
        } else if n > max {
            Packet::TooLong(n)
        } else {
            // SAFETY: recv initialised the first n ≤ capacity bytes.
            unsafe { buf.set_len(n) };
            Packet::Data(buf)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_refuse_truncation() {
        let mut b = RequestBuilder::new(7);
        b.field(b"/bin/echo").count(2).field(b"echo").field(b"");
        let packet = b.finish();
        let (seq, mut fields) = parse_request(&packet).unwrap();
        assert_eq!(seq, 7);
        assert_eq!(fields.next_field(), Some(&b"/bin/echo"[..]));
        assert_eq!(fields.next_count(), Some(2));
        assert_eq!(fields.next_field(), Some(&b"echo"[..]));
        assert_eq!(fields.next_field(), Some(&b""[..]));
        assert!(fields.is_empty());
        assert_eq!(fields.next_field(), None);
        let (_, mut cut) = parse_request(&packet[..packet.len() - 3]).unwrap();
        cut.next_field();
        cut.next_count();
        cut.next_field();
        assert_eq!(cut.next_field(), None, "a truncated field is refused");
        assert!(parse_request(&packet[..5]).is_none());
        // A length that would overflow is refused, not a panic.
        let mut huge = 1u64.to_le_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_request(&huge).unwrap().1.next_field(), None);
    }

    #[test]
    fn replies_round_trip_and_bad_ones_are_refused() {
        for reply in [
            Reply::ok(3, 4242),
            Reply::ok(0, 0),
            Reply::refused(9, libc::ENOENT, ""),
            Reply::refused(1, 0, "ModuleNotFoundError: no module named 'x'"),
        ] {
            assert_eq!(Reply::decode(&reply.encode()), Some(reply));
        }
        let long = Reply::refused(1, 1, "é".repeat(MAX_TEXT));
        let decoded = Reply::decode(&long.encode()).unwrap();
        assert!(decoded.result.unwrap_err().text.len() <= MAX_TEXT);
        assert_eq!(Reply::decode(&[0; 15]), None, "too short");
        assert_eq!(Reply::decode(&vec![0; MAX_REPLY + 1]), None, "too long");
        let mut bad = Reply::refused(1, 1, "x").encode();
        *bad.last_mut().unwrap() = 0xff;
        assert_eq!(Reply::decode(&bad), None, "text that is not UTF-8");
    }

    #[test]
    fn packets_carry_fds_and_eof_is_seen() {
        use std::os::fd::AsFd;
        let (a, b) = crate::seqpacket_pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send(a.as_fd(), b"hi", &[r.as_raw_fd(), w.as_raw_fd()], false).unwrap();
        let mut buf = [0u8; 16];
        match recv(b.as_fd(), &mut buf, false).unwrap() {
            Received::Packet(n, fds) => {
                assert_eq!(&buf[..n], b"hi");
                assert_eq!(fds.len(), 2);
            }
            Received::Eof => panic!("a packet was sent"),
        }
        let err = recv(b.as_fd(), &mut buf, true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        send(a.as_fd(), &[1; 32], &[], false).unwrap();
        let err = recv(b.as_fd(), &mut buf, true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "too long");
        drop(a);
        assert!(matches!(recv(b.as_fd(), &mut buf, true), Ok(Received::Eof)));
    }

    #[test]
    fn more_fds_than_max_fds_are_refused_by_recv_and_taken_by_recv_up_to() {
        use std::os::fd::AsFd;
        let (a, b) = crate::seqpacket_pair().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let many = vec![null.as_raw_fd(); MAX_FDS + 1];
        let mut buf = [0u8; 16];
        send(a.as_fd(), b"many", &many, false).unwrap();
        let err = recv(b.as_fd(), &mut buf, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        send(a.as_fd(), b"many", &many, false).unwrap();
        match recv_up_to(b.as_fd(), &mut buf, SCM_MAX_FD, false).unwrap() {
            Received::Packet(n, fds) => {
                assert_eq!(&buf[..n], b"many");
                assert_eq!(fds.len(), MAX_FDS + 1);
            }
            Received::Eof => panic!("a packet was sent"),
        }
    }

    #[test]
    fn recv_packet_returns_data_the_length_of_a_long_packet_and_eof() {
        use std::os::fd::AsFd;
        let (a, b) = crate::seqpacket_pair().unwrap();
        send(a.as_fd(), b"hello", &[], false).unwrap();
        assert!(matches!(
            recv_packet(b.as_fd(), 5, false).unwrap(),
            Packet::Data(bytes) if bytes == b"hello"
        ));
        send(a.as_fd(), b"hello!", &[], false).unwrap();
        assert!(matches!(
            recv_packet(b.as_fd(), 5, false).unwrap(),
            Packet::TooLong(6)
        ));
        let err = recv_packet(b.as_fd(), 5, true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        assert!(matches!(recv_packet(b.as_fd(), 5, true), Ok(Packet::Eof)));
    }
}
