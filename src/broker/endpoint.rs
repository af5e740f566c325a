//! The broker's side of the sockets: reading producers' messages and
//! consumers' settlements, writing messages to consumers, and the epoll
//! interest each endpoint needs.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{MsgFlags, recv, setsockopt, sockopt};

use super::confirm::{Gate, Reply};
use super::queue::{DeadLetter, Message, QueueCore};
use super::timers::AckTimers;
use super::{Broker, Direction, Endpoint, READ_BUDGET};
use crate::config::names::QueueName;
use crate::config::{Delivery, QueueSpec};
use crate::text::wording::plural;
use drover_sys::mmsg::{self, MAX_BATCH};

/// `SIOCOUTQ` below this means the peer has read everything: the kernel
/// sends its write-space wake-up while it still holds one unit of the last
/// packet's accounting, and any real packet accounts for hundreds of bytes.
pub(super) const NOTHING_UNREAD: i32 = 64;

/// What a Unix socket's send buffer needs beyond one packet's payload.
const SNDBUF_OVERHEAD: usize = 32;

/// The smallest slot of a producer's packet in a batched read: a
/// SEQPACKET packet is bounded by its sender's socket buffer (about
/// 208 KiB by default), so even an oversized one is kept whole for its
/// dead-letter record unless the child raised its own `SO_SNDBUF`.
const MIN_SLOT: usize = 256 << 10;

/// The bytes of one batched read of a producer's packets, at most.
const BATCH_BYTES: usize = 4 << 20;

/// The slot of each packet and the packets per call of a batched read for
/// a queue whose messages are at most `max` bytes: one byte more than
/// `max` (a longer packet is seen to be longer), at least [`MIN_SLOT`];
/// as many as fit in [`BATCH_BYTES`], at least one.
fn batch_shape(max: usize) -> (usize, usize) {
    let slot = max.saturating_add(1).max(MIN_SLOT);
    (slot, (BATCH_BYTES / slot).clamp(1, MAX_BATCH))
}

/// Makes the broker's end of a consumer's socket able to send one message
/// of the queue's `max_message_bytes`, as far as `net.core.wmem_max` lets
/// it (a message that still does not fit is dead-lettered when it is
/// delivered, see [`Broker::deliver`]).
pub(super) fn fit_send_buffer(fd: &OwnedFd, spec: &QueueSpec) {
    let need = (spec.max_message_bytes as usize).saturating_add(SNDBUF_OVERHEAD);
    if nix::sys::socket::getsockopt(fd, sockopt::SndBuf).is_ok_and(|have| have >= need) {
        return;
    }
    // The kernel doubles the value asked for, capped by wmem_max.
    if let Err(e) = setsockopt(fd, sockopt::SndBuf, &need) {
        tracing::debug!("queue {}: cannot size a consumer's socket: {e}", spec.name);
    }
}

/// After a `recv` of 0 on `fd`: true when that was the end of the stream
/// (every holder of the other end has closed it), false when it was a
/// zero-length packet.
///
/// SEQPACKET returns 0 for both. While the peer is open, a non-blocking
/// `recv` with nothing queued fails with EAGAIN, so a 0 is a packet. Once
/// it has closed, a 0 is either the end or an empty packet; packets with a
/// payload behind it show in `SIOCINQ`, so they are still read. What stays
/// indistinguishable is an empty packet sent just before the close with
/// nothing but empty packets after it: it is taken for the end, which
/// loses nothing (it carried nothing), only its count in `refused`.
fn end_of_stream(fd: &OwnedFd) -> bool {
    match crate::sys::peer_closed(fd) {
        Ok(false) => false,
        Ok(true) => !crate::sys::unread_by_us(fd).is_ok_and(|n| n > 0),
        // Cannot tell: take it for the end rather than read it forever.
        Err(_) => true,
    }
}

impl Broker {
    /// Reads a producer's packets while its queue has room (and, with
    /// confirms, while its replies go out), up to [`READ_BUDGET`] of them;
    /// detaches it at the end of its stream.
    pub(super) fn read_producer(&mut self, epoll: &Epoll, token: u64, queue: &QueueName) {
        let Some(ep) = self.endpoints.get(&token) else {
            return;
        };
        let closed = if ep.replies.is_some() {
            self.read_one_by_one(token, queue)
        } else {
            self.read_batches(token, queue)
        };
        if closed {
            self.detach(epoll, token, "its producer closed its socket");
        } else {
            self.refresh_interest(epoll, token);
        }
    }

    /// How many packets a producer of `queue` may be read now, each taking
    /// up to `slot` bytes: none while the queue is full, else up to
    /// `capacity`, and about as many as the byte bound leaves room for (at
    /// least one). A removed queue is read without bound: its packets are
    /// dead-lettered, not left to spin the loop.
    fn room(&self, queue: &QueueName, slot: usize) -> usize {
        self.queues.get(queue).map_or(usize::MAX, |q| q.room(slot))
    }

    /// [`Broker::read_producer`] for a producer without confirms: its
    /// packets in batches, one `recvmmsg` each. Returns whether its stream
    /// ended.
    fn read_batches(&mut self, token: u64, queue: &QueueName) -> bool {
        let Some(fd) = self.endpoints.get(&token).map(|ep| ep.fd.as_raw_fd()) else {
            return false;
        };
        let max = self
            .queues
            .get(queue)
            .or_else(|| self.retired.get(queue))
            .map_or(0, |q| q.spec.max_message_bytes as usize);
        let (slot, per_call) = batch_shape(max);
        if self.batch.len() < slot * per_call {
            // Zeroed by the allocator: pages are touched only as packets
            // land in them.
            self.batch = vec![0; slot * per_call];
        }
        let mut batch = std::mem::take(&mut self.batch);
        let mut lens = [0usize; MAX_BATCH];
        let mut read = 0;
        let mut closed = false;
        'calls: while read < READ_BUDGET {
            let want = per_call.min(READ_BUDGET - read).min(self.room(queue, slot));
            if want == 0 {
                break;
            }
            // `fd` stays open for the whole loop: only `detach` closes an
            // endpoint, and nothing below detaches.
            let got = match mmsg::recv_batch(fd, &mut batch, slot, &mut lens[..want]) {
                Ok(got) => got,
                // (Counted, so that no error can hold the loop.)
                Err(Errno::EINTR | Errno::ECONNRESET) => {
                    read += 1;
                    continue;
                }
                Err(Errno::EAGAIN) => break,
                Err(e) => {
                    tracing::debug!("queue {queue}: reading a producer: {e}");
                    closed = true;
                    break;
                }
            };
            read += got;
            for i in 0..got {
                let n = lens[i];
                if n == 0 {
                    // The end of the stream fills the rest of the batch
                    // with zeroes; a packet with a payload after it shows
                    // that this one was an empty packet.
                    let payload_follows = lens[i + 1..got].iter().any(|&l| l > 0);
                    if !payload_follows && self.stream_ended(token) {
                        closed = true;
                        break 'calls;
                    }
                    self.refuse_empty(queue);
                    continue;
                }
                let at = i * slot;
                let kept = &batch[at..at + n.min(slot)];
                self.accept(queue, kept, n);
            }
            if got < want {
                // The socket had no more: no call just to hear EAGAIN.
                // (Level triggering reports whatever comes next.)
                break;
            }
        }
        self.batch = batch;
        closed
    }

    /// [`Broker::read_producer`] for a producer with confirms: one packet
    /// at a time, each answered before the next is read. Returns whether
    /// its stream ended.
    fn read_one_by_one(&mut self, token: u64, queue: &QueueName) -> bool {
        let Some(fd) = self.endpoints.get(&token).map(|ep| ep.fd.as_raw_fd()) else {
            return false;
        };
        if self.scratch.len() < self.scratch_len {
            self.scratch = vec![0; self.scratch_len];
        }
        // `fd` stays open for the whole loop: only `detach` closes an
        // endpoint, and nothing below detaches (deliveries are deferred to
        // the work list).
        for _ in 0..READ_BUDGET {
            if self.room(queue, 1) == 0 {
                break;
            }
            // With confirms, a producer is read only while its replies go
            // out: one that does not read them is not read either.
            let answering = self
                .endpoints
                .get(&token)
                .and_then(|ep| ep.replies.as_ref());
            if answering.is_some_and(|r| !r.can_read()) {
                break;
            }
            match recv(
                fd,
                &mut self.scratch,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
            ) {
                Ok(0) => {
                    if self.stream_ended(token) {
                        return true;
                    }
                    self.refuse_empty(queue);
                    self.reply(token, Reply::Empty, Gate::OPEN);
                }
                Ok(n) => {
                    let scratch = std::mem::take(&mut self.scratch);
                    let (reply, gate) = self.accept(queue, &scratch[..n.min(scratch.len())], n);
                    self.scratch = scratch;
                    self.reply(token, reply, gate);
                }
                // (ECONNRESET: see read_settlements; a producer is sent
                // nothing but confirms, and a reset must not cost what
                // follows.)
                Err(Errno::EINTR | Errno::ECONNRESET) => continue,
                Err(Errno::EAGAIN) => break,
                Err(e) => {
                    tracing::debug!("queue {queue}: reading a producer: {e}");
                    return true;
                }
            }
        }
        false
    }

    /// After a `recv` of 0 from the producer `token`: whether that was the
    /// end of its stream (see [`end_of_stream`]).
    fn stream_ended(&self, token: u64) -> bool {
        self.endpoints
            .get(&token)
            .is_none_or(|ep| end_of_stream(&ep.fd))
    }

    fn refuse_empty(&mut self, queue: &QueueName) {
        self.refuse(
            queue,
            "zero-length packets from producers refused",
            "refused a zero-length packet from a producer: it is not a message (a consumer could not tell it from the queue closing)",
        );
    }

    /// One packet from a producer of `queue`, `n` bytes long, of which
    /// `kept` could be read; returns the answer it gets with confirms, and
    /// the commit it waits for.
    fn accept(&mut self, queue: &QueueName, kept: &[u8], n: usize) -> (Reply, Gate) {
        let fits = self
            .queues
            .get(queue)
            .is_some_and(|q| n <= q.spec.max_message_bytes as usize && kept.len() == n);
        if fits {
            let gate = self.enqueue(queue, kept);
            return (Reply::Accepted, gate);
        }
        let (target, reason, reply) = match self.queues.get_mut(queue) {
            Some(q) => {
                // (Too large: `fits` said no.)
                q.counters.refused += 1;
                q.counters.dead_lettered += 1;
                let max = q.spec.max_message_bytes;
                let reason = if n > max as usize {
                    format!("refused: {n} bytes is over max_message_bytes = {max}")
                } else {
                    format!("refused: {n} bytes is more than drover reads in one packet")
                };
                (q.spec.dead_letter.clone(), reason, Reply::TooLarge)
            }
            None => {
                // Sent to a queue a reload removed (by a child still wired
                // to it, or a grandchild): never dropped silently.
                let target = self.retired.get_mut(queue).and_then(|q| {
                    q.counters.dead_lettered += 1;
                    q.spec.dead_letter.clone()
                });
                (
                    target,
                    "its queue was removed from the config".to_owned(),
                    Reply::QueueRemoved,
                )
            }
        };
        let letter = DeadLetter::of_packet(kept, n, reason);
        self.dead_letter(queue, target.as_ref(), letter);
        (reply, Gate::OPEN)
    }

    /// Reads `ack` / `nack` packets from a consumer, up to `budget`.
    pub(super) fn read_settlements(
        &mut self,
        epoll: &Epoll,
        token: u64,
        queue: &QueueName,
        budget: usize,
    ) {
        let Some(fd) = self.endpoints.get(&token).map(|ep| ep.fd.as_raw_fd()) else {
            return;
        };
        // As in read_producer, `fd` stays open until the detach below.
        // Settlements are 3 or 4 bytes; a slot keeps enough of anything
        // else to show it in the log.
        const SLOT: usize = 16;
        let mut buf = [0u8; SLOT * MAX_BATCH];
        let mut lens = [0usize; MAX_BATCH];
        let mut read = 0;
        while read < budget {
            let want = MAX_BATCH.min(budget - read);
            let got = match mmsg::recv_batch(fd, &mut buf, SLOT, &mut lens[..want]) {
                Ok(got) => got,
                // ECONNRESET: the consumer exited with messages unread in
                // its socket. The kernel says so once, before the packets
                // it sent last (its final acks), which are still there to
                // read. (Counted, so that no error can hold the loop.)
                Err(Errno::EINTR | Errno::ECONNRESET) => {
                    read += 1;
                    continue;
                }
                Err(Errno::EAGAIN) => return,
                Err(e) => {
                    tracing::debug!("queue {queue}: reading a consumer: {e}");
                    return self.detach(
                        epoll,
                        token,
                        "its consumer's socket failed before it acknowledged it",
                    );
                }
            };
            read += got;
            for i in 0..got {
                let n = lens[i];
                let kept = &buf[i * SLOT..i * SLOT + n.min(SLOT)];
                match kept {
                    b"ack" => self.settle(token, queue, true),
                    b"nack" => self.settle(token, queue, false),
                    b"" => {
                        // As in read_batches: zeroes to the end of the
                        // batch may be the end of the stream.
                        let payload_follows = lens[i + 1..got].iter().any(|&l| l > 0);
                        if !payload_follows && self.stream_ended(token) {
                            return self.detach(
                                epoll,
                                token,
                                "its consumer closed its socket before acknowledging it",
                            );
                        }
                        self.refuse(
                            queue,
                            "packets from consumers ignored",
                            "ignoring a zero-length packet from a consumer; only `ack` and `nack` are understood",
                        );
                    }
                    other => {
                        let shown = String::from_utf8_lossy(other);
                        let what = format!(
                            "ignoring a packet of {n} bytes ({shown:?}) from a consumer; only `ack` and `nack` are understood"
                        );
                        self.refuse(queue, "packets from consumers ignored", &what);
                    }
                }
            }
            if got < want {
                // The socket had no more (level triggering, or the re-arm
                // of an edge-triggered endpoint below, covers the rest).
                return;
            }
        }
        // The budget is spent with packets left. Level triggering reports
        // them again; an edge-triggered (at-most-once) endpoint is re-armed,
        // which makes epoll look at it afresh.
        self.rearm_edge(epoll, token);
    }

    /// Re-registers an edge-triggered endpoint with the same interest, so
    /// that epoll reports it again if it is still ready.
    fn rearm_edge(&mut self, epoll: &Epoll, token: u64) {
        let Some(ep) = self.endpoints.get(&token) else {
            return;
        };
        if ep.interest.contains(EpollFlags::EPOLLET) {
            let mut event = EpollEvent::new(ep.interest, token);
            if let Err(e) = epoll.modify(ep.fd.as_fd(), &mut event) {
                tracing::warn!("queue {}: cannot watch a child's socket: {e}", ep.queue);
            }
        }
    }

    /// One `ack` (true) or `nack` from the consumer `token`. A consumer of
    /// a queue that was removed (and maybe added again) settles what it
    /// holds from the removed one first: it got those messages earlier.
    fn settle(&mut self, token: u64, queue: &QueueName, ack: bool) {
        let verb = if ack { "ack" } else { "nack" };
        if let Some(r) = self.retired.get_mut(queue).filter(|r| r.holds(token)) {
            match r.settle(token, ack) {
                Ok(None) => {
                    let key =
                        format!("queue {queue} (removed): in-flight messages dropped by an ack");
                    if self.lines.allow(&key, Instant::now()) {
                        tracing::info!(
                            "queue {queue} (removed from the config): an ack dropped a message its consumer held"
                        );
                    }
                }
                Ok(Some(letter)) => {
                    let target = r.spec.dead_letter.clone();
                    self.dead_letter(queue, target.as_ref(), letter);
                }
                // `holds` was checked just above.
                Err(why) => tracing::debug!("queue {queue} (removed): {verb} ignored: {why}"),
            }
            self.gc_retired(queue);
            return;
        }
        let Some(q) = self.queues.get_mut(queue) else {
            let what = format!("{verb} ignored: its queue was removed from the config");
            return self.refuse(queue, "packets from consumers ignored", &what);
        };
        match q.settle(token, ack) {
            Ok(None) => {}
            Ok(Some(letter)) => {
                let target = q.spec.dead_letter.clone();
                self.dead_letter(queue, target.as_ref(), letter);
            }
            Err(why) => {
                let what = format!("{verb} ignored: {why}");
                self.refuse(queue, "packets from consumers ignored", &what);
            }
        }
    }

    /// Counts a packet that was not taken in `refused` and logs it, rate
    /// limited under `kind`.
    fn refuse(&mut self, queue: &QueueName, kind: &str, what: &str) {
        if let Some(q) = self.core_mut(queue) {
            q.counters.refused += 1;
        }
        let key = format!("queue {queue}: {kind}");
        if self.lines.allow(&key, Instant::now()) {
            tracing::warn!("queue {queue}: {what}");
        }
    }

    /// A consumer's socket has room again (or, at-most-once, the consumer
    /// read a packet).
    pub(super) fn writable(&mut self, epoll: &Epoll, token: u64, queue: &QueueName) {
        let at_most_once = |q: &QueueCore| q.spec.delivery == Delivery::AtMostOnce;
        let watched = self.queues.get(queue).is_some_and(at_most_once)
            || self.retired.get(queue).is_some_and(at_most_once);
        let read_all = watched
            && self.endpoints.get(&token).is_some_and(|ep| {
                crate::sys::unread_by_peer(&ep.fd).is_ok_and(|n| n < NOTHING_UNREAD)
            });
        if let Some(q) = self.queues.get_mut(queue) {
            q.set_blocked(token, false);
        }
        if read_all {
            // The consumer has read everything it was handed.
            let cores = [self.queues.get_mut(queue), self.retired.get_mut(queue)];
            for q in cores.into_iter().flatten() {
                q.all_read(token);
            }
            self.gc_retired(queue);
        }
        self.refresh_interest(epoll, token);
    }

    /// Hands out what `queue` holds to its consumers with room: taken
    /// round robin, message by message, then written to each consumer's
    /// socket in batches (one `sendmmsg` for up to [`MAX_BATCH`]).
    pub(super) fn deliver(&mut self, epoll: &Epoll, queue: &QueueName) {
        let mut blocked = Vec::new();
        let mut gone = Vec::new();
        let mut too_big = Vec::new();
        if let Some(q) = self.queues.get_mut(queue) {
            // Each consumer's messages in the order they were taken, and
            // where each consumer is in that list.
            let mut taken: Vec<(u64, VecDeque<Message>)> = Vec::new();
            let mut index: HashMap<u64, usize> = HashMap::new();
            let mut out = Outcome {
                blocked: &mut blocked,
                gone: &mut gone,
                too_big: &mut too_big,
            };
            while let Some((id, message)) = q.take_for_delivery() {
                if !self.endpoints.contains_key(&id) {
                    // Cannot happen (a consumer leaves its queue when its
                    // endpoint is detached); if it did, drop the consumer.
                    q.undeliverable(id, message);
                    out.gone.push(id);
                    continue;
                }
                let at = *index.entry(id).or_insert_with(|| {
                    taken.push((id, VecDeque::new()));
                    taken.len() - 1
                });
                let batch = &mut taken[at].1;
                batch.push_back(message);
                if batch.len() >= MAX_BATCH {
                    let full = (id, std::mem::take(batch));
                    write_batch(q, &mut self.timers, &self.endpoints, full, &mut out);
                }
            }
            for batch in taken {
                write_batch(q, &mut self.timers, &self.endpoints, batch, &mut out);
            }
        }
        for id in blocked {
            self.refresh_interest(epoll, id);
        }
        for id in gone {
            if self.endpoints.contains_key(&id) {
                self.detach(epoll, id, "its consumer's socket failed");
            } else if let Some(q) = self.queues.get_mut(queue) {
                let dead = q.remove_consumer(id, "its consumer is gone");
                let target = q.spec.dead_letter.clone();
                for letter in dead {
                    self.dead_letter(queue, target.as_ref(), letter);
                }
                self.to_deliver.push(queue.clone());
            }
        }
        for message in too_big {
            let target = self.queues.get_mut(queue).and_then(|q| {
                q.counters.dead_lettered += 1;
                q.spec.dead_letter.clone()
            });
            let reason = format!(
                "{} bytes is more than a consumer's socket can take (raise net.core.wmem_max)",
                message.bytes.len()
            );
            let letter = DeadLetter { message, reason };
            self.dead_letter(queue, target.as_ref(), letter);
        }
        self.resume_producers(epoll, queue);
    }

    /// Delivers every queue on the work list (see `Broker::to_deliver`).
    /// It ends: a round either hands messages out, or finds consumers
    /// blocked, or detaches one (of finitely many).
    pub(super) fn run_deliveries(&mut self, epoll: &Epoll) {
        while let Some(queue) = self.to_deliver.pop() {
            self.deliver(epoll, &queue);
        }
    }

    /// The paused producer `token` of `queue` exited, leaving packets in
    /// its socket: it waits for room, and if more than
    /// [`super::EXITED_WAITING`] wait, the oldest one's packets are
    /// dead-lettered and it is closed.
    pub(super) fn exited_waiting(&mut self, epoll: &Epoll, token: u64, queue: &QueueName) {
        let endpoints = &self.endpoints;
        let waiting = self.exited.entry(queue.clone()).or_default();
        // Those read since (the queue had room) are gone or watched.
        waiting.retain(|t| endpoints.get(t).is_some_and(|ep| ep.interest.is_empty()));
        waiting.push_back(token);
        if waiting.len() <= super::EXITED_WAITING {
            return;
        }
        let Some(oldest) = waiting.pop_front() else {
            return;
        };
        let n = self.drain_to_dead_letters(oldest, queue);
        self.detach(epoll, oldest, "its producer exited");
        let key = format!("queue {queue}: sockets of exited producers dead-lettered");
        if self.bursts.allow(&key, Instant::now()) {
            tracing::warn!(
                "queue {queue} is full and {} sockets of exited producers wait for room: \
                 the oldest one's {} dead-lettered",
                super::EXITED_WAITING,
                plural(n, "message is", "messages are")
            );
        }
    }

    /// Reads every packet left in the socket of `token` (a producer that
    /// exited) into dead letters; returns how many.
    fn drain_to_dead_letters(&mut self, token: u64, queue: &QueueName) -> usize {
        let Some(fd) = self.endpoints.get(&token).map(|ep| ep.fd.as_raw_fd()) else {
            return 0;
        };
        if self.scratch.len() < self.scratch_len {
            self.scratch = vec![0; self.scratch_len];
        }
        let target = self
            .core_mut(queue)
            .and_then(|q| q.spec.dead_letter.clone());
        let mut count = 0;
        // Bounded by what one socket buffer holds; the budget only guards
        // against a socket some other process still writes to.
        for _ in 0..READ_BUDGET {
            let n = match recv(
                fd,
                &mut self.scratch,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
            ) {
                Ok(0) => break,
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            };
            let kept = &self.scratch[..n.min(self.scratch.len())];
            let reason = format!(
                "its producer exited while the queue was full, behind {} other exited producers' sockets",
                super::EXITED_WAITING
            );
            let letter = DeadLetter::of_packet(kept, n, reason);
            if let Some(q) = self.core_mut(queue) {
                q.counters.dead_lettered += 1;
            }
            self.dead_letter(queue, target.as_ref(), letter);
            count += 1;
        }
        count
    }

    /// Re-arms the producers of `queue` once it is below its low-water
    /// mark.
    pub(super) fn resume_producers(&mut self, epoll: &Epoll, queue: &QueueName) {
        if self.queues.get(queue).is_none_or(|q| !q.below_low_water()) {
            return;
        }
        for token in self.paused.remove(queue).unwrap_or_default() {
            self.refresh_interest(epoll, token);
        }
    }

    /// Closes an endpoint. A consumer's unsettled messages are failed
    /// deliveries (`why` says why, in their dead-letter reason), or dead
    /// letters at once when they belong to a removed queue.
    pub(super) fn detach(&mut self, epoll: &Epoll, token: u64, why: &str) {
        let Some(ep) = self.endpoints.remove(&token) else {
            return;
        };
        if !ep.interest.is_empty() {
            let _ = epoll.delete(ep.fd.as_fd());
        }
        self.timers.disarm(token);
        if let Some(tokens) = self.by_pid.get_mut(&ep.pid) {
            tokens.retain(|t| *t != token);
            if tokens.is_empty() {
                self.by_pid.remove(&ep.pid);
            }
        }
        if let Some(n) = self.named.get_mut(&ep.queue) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.named.remove(&ep.queue);
            }
        }
        if ep.direction == Direction::In {
            for retired in [true, false] {
                let core = if retired {
                    self.retired.get_mut(&ep.queue)
                } else {
                    self.queues.get_mut(&ep.queue)
                };
                let Some(q) = core else {
                    continue;
                };
                let dead = q.remove_consumer(token, why);
                if dead.is_empty() {
                    continue;
                }
                let target = q.spec.dead_letter.clone();
                for letter in dead {
                    self.dead_letter(&ep.queue, target.as_ref(), letter);
                }
            }
            if self.queues.contains_key(&ep.queue) {
                self.to_deliver.push(ep.queue.clone());
            }
        }
        self.gc_retired(&ep.queue);
    }

    /// Registers the interest an endpoint needs now: producers are read
    /// while their queue has room, and, with confirms, while their replies
    /// go out (a producer whose socket is full of replies is watched for
    /// `EPOLLOUT` instead); at-least-once consumers are always read
    /// (acks, EOF) and watched for writability only while their socket is
    /// full (a level-triggered writable socket would wake us forever).
    pub(super) fn refresh_interest(&mut self, epoll: &Epoll, token: u64) {
        let Some(ep) = self.endpoints.get(&token) else {
            return;
        };
        let live = self.queues.get(&ep.queue);
        let wanted = match ep.direction {
            Direction::Out if ep.replies.as_ref().is_some_and(|r| r.blocked()) => {
                EpollFlags::EPOLLOUT
            }
            // A producer of a removed queue is read too: its packets become
            // dead letters.
            Direction::Out if live.is_some_and(QueueCore::is_full) => EpollFlags::empty(),
            // Replies held at a closed gate (see `confirm`): whoever opens
            // it refreshes the interest.
            Direction::Out if ep.replies.as_ref().is_some_and(|r| !r.can_read()) => {
                EpollFlags::empty()
            }
            Direction::Out => EpollFlags::EPOLLIN,
            Direction::In => {
                let core = live.or_else(|| self.retired.get(&ep.queue));
                match core {
                    // At-most-once has no acks: the kernel's write-space
                    // wake-up, sent each time the consumer reads a packet,
                    // says when to look whether it has read everything
                    // (edge-triggered: once per read).
                    Some(q) if q.spec.delivery == Delivery::AtMostOnce => {
                        EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLET
                    }
                    Some(q) if q.is_blocked(token) => EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT,
                    _ => EpollFlags::EPOLLIN,
                }
            }
        };
        if ep.direction == Direction::Out && wanted.is_empty() {
            let paused = self.paused.entry(ep.queue.clone()).or_default();
            if !paused.contains(&token) {
                paused.push(token);
            }
        }
        self.set_interest(epoll, token, wanted);
    }

    fn set_interest(&mut self, epoll: &Epoll, token: u64, wanted: EpollFlags) {
        let Some(ep) = self.endpoints.get_mut(&token) else {
            return;
        };
        if wanted == ep.interest {
            return;
        }
        let result = match (ep.interest.is_empty(), wanted.is_empty()) {
            (true, false) => epoll.add(ep.fd.as_fd(), EpollEvent::new(wanted, token)),
            (false, true) => epoll.delete(ep.fd.as_fd()),
            (false, false) => epoll.modify(ep.fd.as_fd(), &mut EpollEvent::new(wanted, token)),
            (true, true) => Ok(()),
        };
        match result {
            Ok(()) => ep.interest = wanted,
            Err(e) => tracing::warn!("queue {}: cannot watch a child's socket: {e}", ep.queue),
        }
    }
}

/// Where [`write_batch`] reports consumers it found full or failing, and
/// messages no consumer's socket can take.
struct Outcome<'a> {
    blocked: &'a mut Vec<u64>,
    gone: &'a mut Vec<u64>,
    too_big: &'a mut Vec<Message>,
}

/// Writes the messages taken for one consumer to its socket, in order, in
/// as few `sendmmsg` calls as the socket allows. What the socket cannot
/// take now goes back to the head of the queue, in order, and the
/// consumer is blocked until it drains.
fn write_batch(
    q: &mut QueueCore,
    timers: &mut AckTimers,
    endpoints: &HashMap<u64, Endpoint>,
    (id, mut rest): (u64, VecDeque<Message>),
    out: &mut Outcome<'_>,
) {
    let Some(fd) = endpoints.get(&id).map(|ep| ep.fd.as_raw_fd()) else {
        return give_back(q, id, rest);
    };
    let timeout = q.ack_timeout();
    // Read once per batch, and only when an ack timeout needs it.
    let mut now = None;
    while !rest.is_empty() {
        let mut packets: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
        let n = rest.len().min(MAX_BATCH);
        for (p, m) in packets.iter_mut().zip(&rest) {
            *p = &m.bytes;
        }
        match mmsg::send_batch(fd, &packets[..n]) {
            // (Never 0 for packets to send; were it, that would be a full
            // socket, not a reason to try again.)
            Ok(0) | Err(Errno::EAGAIN | Errno::EINTR) => {
                out.blocked.push(id);
                return give_back(q, id, rest);
            }
            Ok(sent) => {
                let at = timeout.map(|_| *now.get_or_insert_with(Instant::now));
                for message in rest.drain(..sent) {
                    q.delivered(id, message, at);
                }
                if let Some(deadline) = at.zip(timeout).and_then(|(a, t)| a.checked_add(t)) {
                    timers.arm(id, deadline);
                }
                // Fewer than asked: the next call says why (or goes on).
            }
            // Larger than the socket can ever take (its buffer is capped by
            // wmem_max): no consumer could get it.
            Err(Errno::EMSGSIZE) => {
                if let Some(mut message) = rest.pop_front() {
                    q.dropped(id, &mut message);
                    out.too_big.push(message);
                }
            }
            Err(_) => {
                out.gone.push(id);
                return give_back(q, id, rest);
            }
        }
    }
}

/// Messages taken for `id` and not written: back to the head of the
/// queue in their order, `id` blocked.
fn give_back(q: &mut QueueCore, id: u64, rest: VecDeque<Message>) {
    for message in rest.into_iter().rev() {
        q.undeliverable(id, message);
    }
}
