//! A helper process that starts children on drover's request — the fork
//! server, a group's Python template — driven without ever blocking the
//! event loop.
//!
//! Requests and replies follow [`crate::sys::wire`]. A request is queued
//! and sent at once if the socket takes it (never waiting for room: what
//! does not fit is sent after the next reply, which frees room); replies
//! arrive as readiness events on the helper's socket, and each is matched,
//! in order, with the oldest request sent. Whatever a helper does wrong —
//! it closes its socket, answers out of order or with garbage, says it
//! cannot get ready, or leaves a request unanswered past [`REPLY_TIMEOUT`]
//! — makes it *broken*: the launcher kills it, fails or re-routes the
//! requests it held, and starts a new one. A slow helper delays only its
//! own group's starts.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::supervisor::after;
use crate::sys::wire::{self, Received, Reply};

/// How long a ready helper may take to answer a request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a helper is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Started; its hello has not arrived yet (a template imports).
    Starting,
    Ready,
}

/// Why a helper can no longer be used: what it did, as a phrase that
/// follows its name ("exited", "did not answer within 10s").
#[derive(Debug)]
pub struct Broken(pub String);

/// What a helper's socket said.
#[derive(Debug)]
pub enum Event<T> {
    /// Its hello: it is ready to serve.
    Ready,
    /// The answer to the request that carried `T`: a PID, or why not.
    Answer(T, Result<i32, io::Error>),
}

/// One queued request.
#[derive(Debug)]
struct Request<T> {
    seq: u64,
    packet: Vec<u8>,
    /// The fds to pass; `payload` keeps them open until the answer.
    fds: Vec<RawFd>,
    payload: T,
    /// When it was sent (its answer is due [`REPLY_TIMEOUT`] later).
    sent: Option<Instant>,
}

/// A running helper and the requests it holds; `T` is what the launcher
/// needs back with each answer.
#[derive(Debug)]
pub struct Helper<T> {
    pid: i32,
    socket: OwnedFd,
    readiness: Readiness,
    /// When it was started, and how long it may take to say hello.
    launched: Instant,
    ready_within: Duration,
    /// Requests may be sent before the hello (the fork server reads them
    /// once it runs); a template is sent nothing before it has imported.
    early: bool,
    next_seq: u64,
    /// Oldest first; the sent ones are a prefix.
    queue: VecDeque<Request<T>>,
    sent: usize,
    /// The loop token of its socket, once watched.
    pub token: Option<u64>,
}

impl<T> Helper<T> {
    /// A helper just started as `pid`, talking on `socket`.
    pub fn new(
        pid: i32,
        socket: OwnedFd,
        now: Instant,
        ready_within: Duration,
        early: bool,
    ) -> Self {
        Helper {
            pid,
            socket,
            readiness: Readiness::Starting,
            launched: now,
            ready_within,
            early,
            next_seq: 1,
            queue: VecDeque::new(),
            sent: 0,
            token: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    pub fn is_ready(&self) -> bool {
        self.readiness == Readiness::Ready
    }

    /// Requests not yet answered.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Queues a request (built by `build` from its sequence number and
    /// payload) with `fds` attached, and sends what the socket takes.
    pub fn submit(
        &mut self,
        build: impl FnOnce(u64, &T) -> Vec<u8>,
        fds: Vec<RawFd>,
        payload: T,
        now: Instant,
    ) -> Result<(), Broken> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push_back(Request {
            seq,
            packet: build(seq, &payload),
            fds,
            payload,
            sent: None,
        });
        self.pump(now)
    }

    /// Sends queued requests until the socket is full.
    fn pump(&mut self, now: Instant) -> Result<(), Broken> {
        if !(self.early || self.is_ready()) {
            return Ok(());
        }
        while let Some(request) = self.queue.get_mut(self.sent) {
            match wire::send(self.socket.as_fd(), &request.packet, &request.fds, true) {
                Ok(()) => {
                    request.sent = Some(now);
                    // Sent: the packet's bytes are the kernel's now.
                    request.packet = Vec::new();
                    self.sent += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Broken(format!("could not be sent a request: {e}"))),
            }
        }
        Ok(())
    }

    /// Reads every packet waiting on the socket into `events`; more
    /// requests are sent as replies free room.
    pub fn on_readable(&mut self, now: Instant, events: &mut Vec<Event<T>>) -> Result<(), Broken> {
        let mut buf = [0u8; wire::MAX_REPLY];
        loop {
            let n = match wire::recv(self.socket.as_fd(), &mut buf, true) {
                Ok(Received::Packet(n, _fds)) => n,
                Ok(Received::Eof) => return Err(Broken("exited".into())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Broken(format!("sent an unreadable answer: {e}"))),
            };
            let reply = Reply::decode(&buf[..n])
                .ok_or_else(|| Broken(format!("sent a malformed answer ({n} bytes)")))?;
            if reply.seq == 0 {
                match reply.result {
                    Ok(_) if self.readiness == Readiness::Starting => {
                        self.readiness = Readiness::Ready;
                        events.push(Event::Ready);
                    }
                    Ok(_) => return Err(Broken("said hello twice".into())),
                    Err(refusal) => {
                        return Err(Broken(format!(
                            "could not get ready: {}",
                            refusal.into_error()
                        )));
                    }
                }
                continue;
            }
            let expected = self.queue.front().filter(|_| self.sent > 0).map(|r| r.seq);
            if expected != Some(reply.seq) {
                return Err(Broken(format!(
                    "answered request {} when {} was due",
                    reply.seq,
                    expected.map_or_else(|| "none".into(), |s| s.to_string())
                )));
            }
            let request = self.queue.pop_front().expect("matched above");
            self.sent -= 1;
            events.push(Event::Answer(
                request.payload,
                reply.result.map_err(|r| r.into_error()),
            ));
        }
        self.pump(now)
    }

    /// When this helper has kept drover waiting too long: its hello, or
    /// the answer to its oldest request.
    pub fn deadline(&self) -> Option<Instant> {
        let hello = (self.readiness == Readiness::Starting)
            .then(|| after(self.launched, self.ready_within));
        let answer = self
            .queue
            .front()
            .and_then(|r| r.sent)
            .map(|sent| after(sent, REPLY_TIMEOUT));
        hello.into_iter().chain(answer).min()
    }

    /// Why it is late at `now`, if it is.
    pub fn overdue(&self, now: Instant) -> Option<Broken> {
        if self.deadline().is_none_or(|d| d > now) {
            return None;
        }
        Some(Broken(if self.readiness == Readiness::Starting {
            format!("did not get ready within {:?}", self.ready_within)
        } else {
            format!("did not answer within {REPLY_TIMEOUT:?}")
        }))
    }

    /// Puts back the payload of an answer that turned out to be wrong,
    /// first in line, so that [`Self::take_requests`] returns it too.
    pub fn push_front_answered(&mut self, payload: T) {
        self.queue.push_front(Request {
            seq: 0,
            packet: Vec::new(),
            fds: Vec::new(),
            payload,
            sent: None,
        });
        self.sent += 1;
    }

    /// The payloads of every request it still holds, oldest first (the
    /// helper is being dropped).
    pub fn take_requests(&mut self) -> Vec<T> {
        self.sent = 0;
        self.queue.drain(..).map(|r| r.payload).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn pair(early: bool) -> (Helper<u32>, OwnedFd, Instant) {
        let (ours, theirs) = crate::sys::seqpacket_pair().unwrap();
        let now = Instant::now();
        (
            Helper::new(1, ours, now, Duration::from_secs(5), early),
            theirs,
            now,
        )
    }

    fn reply(to: &OwnedFd, r: Reply) {
        wire::send(to.as_fd(), &r.encode(), &[], false).unwrap();
    }

    /// Reads the request the helper sent; its sequence number.
    fn request_seq(from: &OwnedFd) -> u64 {
        let mut buf = vec![0u8; wire::MAX_REQUEST];
        match wire::recv(from.as_fd(), &mut buf, true).unwrap() {
            Received::Packet(n, _) => wire::parse_request(&buf[..n]).unwrap().0,
            Received::Eof => panic!("closed"),
        }
    }

    fn build(seq: u64, _: &u32) -> Vec<u8> {
        wire::RequestBuilder::new(seq).finish()
    }

    #[test]
    fn answers_are_matched_in_order_and_hello_makes_it_ready() {
        let (mut h, peer, now) = pair(false);
        h.submit(build, vec![], 10, now).unwrap();
        assert!(
            wire::recv(peer.as_fd(), &mut [0; 64], true).is_err(),
            "nothing is sent before the hello"
        );
        reply(&peer, Reply::ok(0, 0));
        let mut events = Vec::new();
        h.on_readable(now, &mut events).unwrap();
        assert!(matches!(events[..], [Event::Ready]));
        h.submit(build, vec![], 11, now).unwrap();
        assert_eq!((request_seq(&peer), request_seq(&peer)), (1, 2));
        reply(&peer, Reply::ok(1, 100));
        reply(&peer, Reply::refused(2, libc::EAGAIN, "no"));
        events.clear();
        h.on_readable(now, &mut events).unwrap();
        match &events[..] {
            [Event::Answer(10, Ok(100)), Event::Answer(11, Err(e))] => {
                assert_eq!(e.to_string(), "no")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(h.pending(), 0);
        assert_eq!(h.deadline(), None);
    }

    #[test]
    fn a_reply_out_of_order_or_garbage_or_eof_breaks_it() {
        let (mut h, peer, now) = pair(true);
        h.submit(build, vec![], 1, now).unwrap();
        reply(&peer, Reply::ok(7, 100));
        assert!(h.on_readable(now, &mut Vec::new()).is_err());

        let (mut h, peer, now) = pair(true);
        wire::send(peer.as_fd(), b"garbage", &[], false).unwrap();
        assert!(h.on_readable(now, &mut Vec::new()).is_err());

        let (mut h, peer, now) = pair(true);
        reply(
            &peer,
            Reply::refused(0, 1, "ImportError: no module named x"),
        );
        let Err(Broken(why)) = h.on_readable(now, &mut Vec::new()) else {
            panic!("a refused hello breaks it")
        };
        assert!(why.contains("ImportError"), "{why}");

        let (mut h, peer, now) = pair(true);
        h.submit(build, vec![], 1, now).unwrap();
        drop(peer);
        assert!(h.on_readable(now, &mut Vec::new()).is_err());
        assert_eq!(h.take_requests(), vec![1]);
    }

    #[test]
    fn deadlines_cover_the_hello_and_the_oldest_request() {
        let (mut h, peer, now) = pair(true);
        assert_eq!(h.deadline(), Some(now + Duration::from_secs(5)));
        reply(&peer, Reply::ok(0, 0));
        h.on_readable(now, &mut Vec::new()).unwrap();
        assert_eq!(h.deadline(), None);
        h.submit(build, vec![], 1, now).unwrap();
        assert_eq!(h.deadline(), Some(now + REPLY_TIMEOUT));
        assert!(h.overdue(now).is_none());
        assert!(h.overdue(now + REPLY_TIMEOUT).is_some());
    }

    #[test]
    fn a_full_socket_holds_requests_until_replies_free_room() {
        let (mut h, peer, now) = pair(true);
        let big = |seq, _: &u32| {
            let mut b = wire::RequestBuilder::new(seq);
            b.field(&[0u8; 60_000]);
            b.finish()
        };
        let mut submitted = 0u32;
        while h.sent == h.queue.len() {
            h.submit(big, vec![peer.as_raw_fd()], submitted, now)
                .unwrap();
            submitted += 1;
            assert!(submitted < 10_000, "the socket never filled");
        }
        let held = h.queue.len() - h.sent;
        assert_eq!(held, 1, "one request waits for room");
        let seq = request_seq(&peer);
        reply(&peer, Reply::ok(seq, 5));
        let mut events = Vec::new();
        h.on_readable(now, &mut events).unwrap();
        assert_eq!(h.sent, h.queue.len(), "the reply made room for it");
    }
}
