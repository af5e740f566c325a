//! Producer confirms (`confirm = true`): every packet read from a producer
//! of such a queue is answered on the same socket, in order, with one
//! packet: `ok` once the message is accepted, or `no REASON`.
//!
//! A reply is sent at once (`MSG_DONTWAIT`) when nothing is waiting before
//! it. When the socket is full (the producer does not read its replies),
//! the reply waits in the endpoint's [`Replies`] backlog and the producer
//! is not read any more: the endpoint is watched for `EPOLLOUT` instead,
//! the backlog is flushed when it has room, and then reading resumes. So a
//! producer that ignores its replies is throttled by its own socket, never
//! dropped, and the backlog holds at most [`BACKLOG`] replies.
//!
//! Each reply carries a [`Gate`]: it may go out once the broker's
//! committed gate ([`Broker::committed`]) has reached it. An in-memory
//! queue's `ok` is [`Gate::OPEN`] (true as soon as the message is held); a
//! durable queue's `ok` gets the gate of the disk commit that holds its
//! message, and the broker raises `committed` (then flushes the endpoints
//! waiting on it) once that commit is on disk (see [`super::durable`]);
//! the replies behind a closed gate wait with it, so the order is kept.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, send};

use super::Broker;

/// The most replies an endpoint holds unsent. Reading a producer stops at
/// this many (and as soon as its socket refuses one), so the broker's
/// memory per producer stays bounded whatever it does.
pub(super) const BACKLOG: usize = 64;

/// One answer to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    /// The message is accepted (held in drover's memory).
    Accepted,
    /// A zero-length packet: not a message.
    Empty,
    /// Over `max_message_bytes`, or more than drover reads in one packet;
    /// dead-lettered.
    TooLarge,
    /// Sent on the socket of a queue a reload removed; dead-lettered.
    QueueRemoved,
}

impl Reply {
    /// The packet sent: ASCII, no newline.
    pub(super) fn bytes(self) -> &'static [u8] {
        match self {
            Reply::Accepted => b"ok",
            Reply::Empty => b"no empty",
            Reply::TooLarge => b"no too large",
            Reply::QueueRemoved => b"no queue removed",
        }
    }
}

/// What a reply waits for before it may be sent: a point in the sequence
/// of commits of one lane (see the module documentation). Lane 0 is the
/// disk store; each queue on Redis has a lane of its own, so a Redis that
/// is down holds back only its own queues' confirms. A reply goes out once
/// [`Broker::committed`] of its lane is at or past its gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Gate {
    pub(super) lane: u32,
    pub(super) seq: u64,
}

impl Gate {
    /// Nothing to wait for.
    pub(super) const OPEN: Gate = Gate { lane: 0, seq: 0 };

    /// The disk store's commit `seq`.
    pub(super) fn store(seq: u64) -> Gate {
        Gate { lane: 0, seq }
    }
}

/// The last commit of each lane.
#[derive(Debug, Default)]
pub(super) struct Committed(HashMap<u32, u64>);

impl Committed {
    pub(super) fn passed(&self, gate: Gate) -> bool {
        gate.seq == 0 || self.0.get(&gate.lane).is_some_and(|c| *c >= gate.seq)
    }

    pub(super) fn set(&mut self, lane: u32, seq: u64) {
        self.0.insert(lane, seq);
    }
}

/// The replies of one producer endpoint with confirms.
#[derive(Debug, Default)]
pub(super) struct Replies {
    /// Replies not sent yet, oldest first, each with its gate.
    backlog: VecDeque<(Reply, Gate)>,
    /// The socket refused the oldest one (it is full): the endpoint waits
    /// for `EPOLLOUT` and is not read.
    blocked: bool,
    /// Sending failed for good (no one holds the other end any more, or it
    /// is shut down): replies are no longer kept or sent.
    gone: bool,
}

impl Replies {
    /// Whether the producer may be read: each packet read costs a reply.
    pub(super) fn can_read(&self) -> bool {
        !self.blocked && self.backlog.len() < BACKLOG
    }

    /// Waiting for the socket to have room (`EPOLLOUT`).
    pub(super) fn blocked(&self) -> bool {
        self.blocked
    }

    #[cfg(test)]
    pub(super) fn backlog_len(&self) -> usize {
        self.backlog.len()
    }
}

impl Broker {
    /// Answers the packet just read from the producer `token`, if its
    /// endpoint has confirms; the reply is sent now if it can be, else
    /// once `gate` is committed and the socket has room.
    pub(super) fn reply(&mut self, token: u64, reply: Reply, gate: Gate) {
        let Some(replies) = self
            .endpoints
            .get_mut(&token)
            .and_then(|ep| ep.replies.as_mut())
        else {
            return;
        };
        if replies.gone {
            return;
        }
        replies.backlog.push_back((reply, gate));
        if !self.committed.passed(gate) {
            self.gated.insert(token);
        }
        self.flush_replies(token);
    }

    /// Whether the oldest unsent reply of `token` waits for a commit.
    pub(super) fn awaits_commit(&self, token: u64) -> bool {
        self.endpoints
            .get(&token)
            .and_then(|ep| ep.replies.as_ref())
            .and_then(|r| r.backlog.front())
            .is_some_and(|(_, gate)| !self.committed.passed(*gate))
    }

    /// Sends what the backlog of `token` may send, oldest first, until a
    /// closed gate or a full socket (which blocks the endpoint). The caller
    /// refreshes the epoll interest (`read_producer` does).
    pub(super) fn flush_replies(&mut self, token: u64) {
        let committed = &self.committed;
        let Some(ep) = self.endpoints.get_mut(&token) else {
            return;
        };
        let fd = ep.fd.as_raw_fd();
        let Some(replies) = ep.replies.as_mut() else {
            return;
        };
        let mut accepted = 0u64;
        let mut failed = None;
        replies.blocked = false;
        while let Some(&(reply, gate)) = replies.backlog.front() {
            if !committed.passed(gate) {
                break;
            }
            match send(
                fd,
                reply.bytes(),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(_) => {
                    replies.backlog.pop_front();
                    if reply == Reply::Accepted {
                        accepted += 1;
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    replies.blocked = true;
                    break;
                }
                Err(e) => {
                    // Nothing will read them: forget them and keep none.
                    replies.gone = true;
                    replies.backlog = VecDeque::new();
                    failed = Some(e);
                    break;
                }
            }
        }
        let queue = ep.queue.clone();
        if accepted > 0
            && let Some(q) = self.core_mut(&queue)
        {
            q.counters.confirmed += accepted;
        }
        if let Some(e) = failed {
            let key = format!("queue {queue}: confirms not sent");
            if self.lines.allow(&key, Instant::now()) {
                tracing::info!(
                    "queue {queue}: cannot send confirms to a producer ({e}); \
                     its further packets are still read, without replies"
                );
            }
        }
    }
}
