//! The queue broker: named queues living in the supervisor (DESIGN §3).
//!
//! Every child gets, per queue its group names, its own end of a
//! `SOCK_SEQPACKET` pair; the broker holds the other end, non-blocking, in
//! the event loop. One packet is one message. Producers are read only while
//! their queue is below `capacity`, so a full queue leaves their packets in
//! the socket and their sends block: back-pressure, never a drop, and the
//! broker's memory is bounded by `capacity`. Consumers get messages round
//! robin among those with free `prefetch`; `ack`/`nack` packets settle the
//! oldest unsettled message. What to do is decided by [`queue::QueueCore`];
//! this module moves the bytes.

mod deadletter;
pub mod queue;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{MsgFlags, recv, send};

use crate::config::{Config, Delivery, QueueSpec};
use crate::names::{GroupName, QueueName};
use crate::status::QueueStatus;
use crate::supervisor::Pid;
use queue::{DeadLetter, Message, QueueCore};

/// Largest packet the broker reads in one piece. SEQPACKET messages are
/// bounded by the sender's socket buffer (about 208 KiB by default), so
/// anything a child can send fits unless it raised its own `SO_SNDBUF`.
const MAX_PACKET: usize = 1 << 20;

/// `SIOCOUTQ` below this means the peer has read everything: the kernel
/// sends its write-space wake-up while it still holds one unit of the last
/// packet's accounting, and any real packet accounts for hundreds of bytes.
const NOTHING_UNREAD: i32 = 64;

/// Which way an endpoint carries messages, seen from the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `DROVER_IN_<QUEUE>`: the child consumes.
    In,
    /// `DROVER_OUT_<QUEUE>`: the child produces.
    Out,
}

/// The broker's end of one child's queue socket.
#[derive(Debug)]
struct Endpoint {
    fd: OwnedFd,
    queue: QueueName,
    pid: Pid,
    group: GroupName,
    direction: Direction,
    /// Interest currently registered in epoll (empty: not registered).
    interest: EpollFlags,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Broker {
    queues: BTreeMap<QueueName, QueueCore>,
    endpoints: HashMap<u64, Endpoint>,
    state_dir: PathBuf,
    scratch: Vec<u8>,
    /// Producers not watched because their queue was full, per queue: the
    /// ones to re-arm once it has room, without scanning every endpoint.
    paused: HashMap<QueueName, Vec<u64>>,
}

impl Broker {
    pub fn new(config: &Config) -> Broker {
        Broker {
            queues: config
                .queues
                .iter()
                .map(|(name, spec)| (name.clone(), QueueCore::new(spec.clone())))
                .collect(),
            endpoints: HashMap::new(),
            state_dir: config.supervisor.state_dir.clone(),
            scratch: Vec::new(),
            paused: HashMap::new(),
        }
    }

    /// Takes a reloaded config: new queues appear, changed settings apply
    /// in place (messages stay), and a removed queue hands what it still
    /// holds to its dead-letter destination, with a log line.
    pub fn apply(&mut self, config: &Config, epoll: &Epoll) {
        let removed: Vec<QueueName> = self
            .queues
            .keys()
            .filter(|q| !config.queues.contains_key(*q))
            .cloned()
            .collect();
        for (name, spec) in &config.queues {
            match self.queues.get_mut(name) {
                Some(q) => q.spec = spec.clone(),
                None => {
                    self.queues
                        .insert(name.clone(), QueueCore::new(spec.clone()));
                }
            }
        }
        for name in removed {
            let mut q = self.queues.remove(&name).expect("listed above");
            let left = q.drain_all();
            if !left.is_empty() {
                tracing::warn!(
                    "queue {name} was removed while holding {} messages; dead-lettering them",
                    left.len()
                );
            }
            // Dead letters go where the removed queue said, if that still exists.
            self.queues
                .insert(name.clone(), QueueCore::new(q.spec.clone()));
            for message in left {
                let letter = DeadLetter {
                    message,
                    reason: "its queue was removed from the config".into(),
                };
                self.dead_letter(epoll, &name, letter);
            }
            self.queues.remove(&name);
            // Its producers are read (into dead letters) from now on.
            for token in self.paused.remove(&name).unwrap_or_default() {
                self.refresh_interest(epoll, token);
            }
        }
        for queue in config.queues.keys() {
            self.resume_producers(epoll, queue);
            self.deliver(epoll, queue);
        }
    }

    pub fn owns(&self, token: u64) -> bool {
        self.endpoints.contains_key(&token)
    }

    pub fn spec(&self, queue: &QueueName) -> Option<&QueueSpec> {
        self.queues.get(queue).map(|q| &q.spec)
    }

    /// True when `queue` holds nothing and has nothing in flight.
    pub fn is_drained(&self, queue: &QueueName) -> bool {
        self.queues.get(queue).is_none_or(QueueCore::is_drained)
    }

    /// Takes over a child's queue sockets; `token` allocates loop tokens.
    pub fn attach(
        &mut self,
        epoll: &Epoll,
        pid: Pid,
        group: &GroupName,
        sockets: Vec<(QueueName, Direction, OwnedFd)>,
        mut token: impl FnMut() -> u64,
    ) {
        for (queue, direction, fd) in sockets {
            let id = token();
            let endpoint = Endpoint {
                fd,
                queue: queue.clone(),
                pid,
                group: group.clone(),
                direction,
                interest: EpollFlags::empty(),
            };
            self.endpoints.insert(id, endpoint);
            if direction == Direction::In
                && let Some(q) = self.queues.get_mut(&queue)
            {
                q.add_consumer(id);
            }
            self.refresh_interest(epoll, id);
            if direction == Direction::In {
                self.deliver(epoll, &queue);
            }
        }
    }

    /// An event on one of the broker's sockets.
    pub fn on_event(&mut self, epoll: &Epoll, token: u64, flags: EpollFlags) {
        let Some(ep) = self.endpoints.get(&token) else {
            return;
        };
        let queue = ep.queue.clone();
        match ep.direction {
            Direction::Out => {
                self.read_producer(epoll, token, false);
            }
            Direction::In => {
                if flags.contains(EpollFlags::EPOLLOUT)
                    && let Some(q) = self.queues.get_mut(&queue)
                {
                    q.set_blocked(token, false);
                    if q.spec.delivery == Delivery::AtMostOnce
                        && crate::sys::unread_by_peer(&self.endpoints[&token].fd)
                            .is_ok_and(|n| n < NOTHING_UNREAD)
                    {
                        // The consumer has read everything it was handed.
                        q.all_read(token);
                    }
                    self.refresh_interest(epoll, token);
                }
                if flags
                    .intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
                {
                    self.read_settlements(epoll, token);
                }
            }
        }
        self.deliver(epoll, &queue);
    }

    /// A child exited: what it produced is read to the end, what it was
    /// given and had not acknowledged goes back to its queue.
    pub fn child_exited(&mut self, epoll: &Epoll, pid: Pid) {
        let tokens: Vec<u64> = self
            .endpoints
            .iter()
            .filter(|(_, ep)| ep.pid == pid)
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            // What it sent before dying is still in our receive queue:
            // messages of a producer, the last acks of a consumer.
            match self.endpoints[&token].direction {
                Direction::Out => self.read_producer(epoll, token, true),
                Direction::In => self.read_settlements(epoll, token),
            }
            self.detach(epoll, token);
        }
    }

    /// Closes the input sockets of `group`'s children (their `recv` returns
    /// 0), returning unsettled messages to their queues. Used at shutdown.
    pub fn close_inputs(&mut self, epoll: &Epoll, group: &GroupName) {
        let tokens: Vec<u64> = self
            .endpoints
            .iter()
            .filter(|(_, ep)| &ep.group == group && ep.direction == Direction::In)
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            self.detach(epoll, token);
        }
    }

    /// Per-queue numbers for `drover status`.
    pub fn status(&self) -> Vec<QueueStatus> {
        self.queues
            .values()
            .map(|q| QueueStatus {
                name: q.spec.name.to_string(),
                depth: q.depth() as u64,
                in_flight: q.in_flight() as u64,
                delivered: q.counters.delivered,
                acked: q.counters.acked,
                redelivered: q.counters.redelivered,
                dead_lettered: q.counters.dead_lettered,
                lost: q.counters.lost,
            })
            .collect()
    }

    /// At exit: logs what is still queued (queues are not durable yet).
    pub fn report_leftovers(&mut self) {
        for q in self.queues.values_mut() {
            let left = q.drain_all();
            if !left.is_empty() {
                tracing::warn!(
                    "queue {}: {} messages still queued at exit are lost (queues are not durable yet)",
                    q.spec.name,
                    left.len()
                );
            }
        }
    }

    fn detach(&mut self, epoll: &Epoll, token: u64) {
        let Some(ep) = self.endpoints.remove(&token) else {
            return;
        };
        if !ep.interest.is_empty() {
            let _ = epoll.delete(ep.fd.as_fd());
        }
        if ep.direction == Direction::In {
            let dead = self
                .queues
                .get_mut(&ep.queue)
                .map(|q| q.remove_consumer(token))
                .unwrap_or_default();
            for letter in dead {
                self.dead_letter(epoll, &ep.queue, letter);
            }
            self.deliver(epoll, &ep.queue);
        }
        self.resume_producers(epoll, &ep.queue);
    }

    /// Reads a producer's packets while its queue has room (all of them
    /// when `to_end`, at a child's exit, so nothing it sent is lost).
    fn read_producer(&mut self, epoll: &Epoll, token: u64, to_end: bool) {
        if self.scratch.len() < MAX_PACKET {
            self.scratch.resize(MAX_PACKET, 0);
        }
        let (queue, fd) = {
            let ep = &self.endpoints[&token];
            (ep.queue.clone(), ep.fd.as_raw_fd())
        };
        let mut closed = false;
        loop {
            // A queue removed by a reload is read too: its packets are
            // dead-lettered, not left to spin the loop.
            let full = self.queues.get(&queue).is_some_and(QueueCore::is_full);
            if full && !to_end {
                break;
            }
            let n = match recv(
                fd,
                &mut self.scratch,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
            ) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            };
            self.accept(epoll, &queue, n);
        }
        if closed {
            self.detach(epoll, token);
        } else if !to_end {
            self.refresh_interest(epoll, token);
        }
    }

    /// One packet of `n` bytes (in `scratch`) from a producer of `queue`.
    fn accept(&mut self, epoll: &Epoll, queue: &QueueName, n: usize) {
        let Some(q) = self.queues.get_mut(queue) else {
            // Sent by a child of a group still wired to a queue that a reload
            // removed: never dropped silently.
            let letter = DeadLetter {
                message: Message::new(&self.scratch[..n.min(self.scratch.len())]),
                reason: "its queue was removed from the config".into(),
            };
            self.dead_letter(epoll, queue, letter);
            return;
        };
        let max = q.spec.max_message_bytes as usize;
        if n <= max {
            q.push(Message::new(&self.scratch[..n]));
            return;
        }
        let kept = n.min(self.scratch.len());
        let mut reason = format!("refused: {n} bytes is over max_message_bytes = {max}");
        if kept < n {
            reason.push_str(&format!(" (only the first {kept} bytes could be kept)"));
        }
        q.counters.dead_lettered += 1;
        let letter = DeadLetter {
            message: Message::new(&self.scratch[..kept]),
            reason,
        };
        self.dead_letter(epoll, queue, letter);
    }

    /// Reads `ack` / `nack` packets from a consumer.
    fn read_settlements(&mut self, epoll: &Epoll, token: u64) {
        let (queue, fd) = {
            let ep = &self.endpoints[&token];
            (ep.queue.clone(), ep.fd.as_raw_fd())
        };
        let mut buf = [0u8; 16];
        loop {
            match recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return self.detach(epoll, token),
                Ok(n) => {
                    let ack = match &buf[..n] {
                        b"ack" => true,
                        b"nack" => false,
                        other => {
                            tracing::warn!(
                                "queue {queue}: ignoring {:?} from a consumer; only `ack` and `nack` are understood",
                                String::from_utf8_lossy(other)
                            );
                            continue;
                        }
                    };
                    let q = self
                        .queues
                        .get_mut(&queue)
                        .expect("endpoint's queue exists");
                    match q.settle(token, ack) {
                        Ok(Some(letter)) => self.dead_letter(epoll, &queue, letter),
                        Ok(None) => {}
                        Err(why) => tracing::warn!(
                            "queue {queue}: {} ignored: {why}",
                            if ack { "ack" } else { "nack" }
                        ),
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(_) => return self.detach(epoll, token),
            }
        }
    }

    /// Hands out what `queue` holds to its consumers with room.
    fn deliver(&mut self, epoll: &Epoll, queue: &QueueName) {
        let mut blocked = Vec::new();
        let mut gone = Vec::new();
        if let Some(q) = self.queues.get_mut(queue) {
            while let Some((id, message)) = q.take_for_delivery() {
                let fd = self.endpoints[&id].fd.as_raw_fd();
                match send(
                    fd,
                    &message.bytes,
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                ) {
                    Ok(_) => q.delivered(id, message),
                    Err(Errno::EAGAIN | Errno::EINTR) => {
                        q.undeliverable(id, message);
                        blocked.push(id);
                    }
                    Err(_) => {
                        q.undeliverable(id, message);
                        gone.push(id);
                    }
                }
            }
        }
        for id in blocked {
            self.refresh_interest(epoll, id);
        }
        for id in gone {
            self.detach(epoll, id);
        }
        self.resume_producers(epoll, queue);
    }

    /// Re-arms the producers of `queue` once it has room again.
    fn resume_producers(&mut self, epoll: &Epoll, queue: &QueueName) {
        if self.queues.get(queue).is_none_or(QueueCore::is_full) {
            return;
        }
        for token in self.paused.remove(queue).unwrap_or_default() {
            self.refresh_interest(epoll, token);
        }
    }

    /// Registers the interest an endpoint needs now: producers are read
    /// while their queue has room; at-least-once consumers are always read
    /// (acks, EOF) and watched for writability only while their socket is
    /// full (a level-triggered writable socket would wake us forever).
    fn refresh_interest(&mut self, epoll: &Epoll, token: u64) {
        let Some(ep) = self.endpoints.get(&token) else {
            return;
        };
        let Some(q) = self.queues.get(&ep.queue) else {
            // Its queue was removed by a reload: keep reading (producers'
            // packets become dead letters; consumers' EOF detaches them).
            self.set_interest(epoll, token, EpollFlags::EPOLLIN);
            return;
        };
        let wanted = match ep.direction {
            Direction::Out if q.is_full() => EpollFlags::empty(),
            Direction::Out => EpollFlags::EPOLLIN,
            // At-most-once has no acks: the kernel's write-space wake-up,
            // sent each time the consumer reads a packet, says when to look
            // whether it has read everything (edge-triggered: once per read).
            Direction::In if q.spec.delivery == Delivery::AtMostOnce => {
                EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLET
            }
            Direction::In if q.is_blocked(token) => EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT,
            Direction::In => EpollFlags::EPOLLIN,
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

    /// Sends a message to `queue`'s dead-letter destination, with a log line.
    fn dead_letter(&mut self, epoll: &Epoll, queue: &QueueName, letter: DeadLetter) {
        let target = self
            .queues
            .get(queue)
            .and_then(|q| q.spec.dead_letter.clone());
        match target.and_then(|t| self.queues.get_mut(&t).map(|q| (t.clone(), q))) {
            Some((target, q)) => {
                tracing::warn!(
                    "queue {queue}: message of {} bytes dead-lettered to queue {target}: {}",
                    letter.message.bytes.len(),
                    letter.reason
                );
                // Never dropped: a dead-letter queue may exceed its capacity.
                q.push(Message::new(&letter.message.bytes));
                self.deliver(epoll, &target);
            }
            None => match deadletter::append(&self.state_dir, queue, &letter) {
                Ok(file) => tracing::warn!(
                    "queue {queue}: message of {} bytes dead-lettered to {}: {}",
                    letter.message.bytes.len(),
                    file.display(),
                    letter.reason
                ),
                Err(e) => tracing::error!(
                    "queue {queue}: cannot write a dead letter under {}: {e}; message of {} bytes lost: {}",
                    self.state_dir.display(),
                    letter.message.bytes.len(),
                    letter.reason
                ),
            },
        }
    }
}

/// Creates one child's socket pair: (broker's end, child's end). The
/// broker's end is non-blocking; both are close-on-exec (the launcher
/// places the child's end).
pub fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = crate::sys::seqpacket_pair()?;
    nix::fcntl::fcntl(
        &ours,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((ours, theirs))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::net::UnixStream;

    use nix::sys::epoll::EpollCreateFlags;

    use super::*;
    use crate::config::{LogFormat, SupervisorConfig};

    fn config(delivery: Delivery) -> Config {
        let name = QueueName::new("jobs").unwrap();
        let spec = QueueSpec {
            name: name.clone(),
            capacity: 10,
            max_message_bytes: 100,
            delivery,
            prefetch: 4,
            max_deliveries: 5,
            dead_letter: None,
            ack_timeout: std::time::Duration::ZERO,
            file: "t.toml".into(),
        };
        Config {
            supervisor: SupervisorConfig {
                control_socket: None,
                log_format: LogFormat::Text,
                state_dir: std::env::temp_dir(),
                dead_letter_max_bytes: crate::config::DEFAULT_DEAD_LETTER_MAX_BYTES,
            },
            groups: BTreeMap::new(),
            queues: [(name, spec)].into(),
            files: vec![],
        }
    }

    /// A broker with one consumer child attached; returns the child's end.
    fn with_consumer(delivery: Delivery) -> (Broker, Epoll, UnixStream) {
        let cfg = config(delivery);
        let mut broker = Broker::new(&cfg);
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        let (ours, theirs) = socket_pair().unwrap();
        let jobs = QueueName::new("jobs").unwrap();
        let mut next = 100;
        broker.attach(
            &epoll,
            Pid(42),
            &GroupName::new("w").unwrap(),
            vec![(jobs.clone(), Direction::In, ours)],
            || {
                next += 1;
                next
            },
        );
        for m in [b"one".as_slice(), b"two"] {
            broker.queues.get_mut(&jobs).unwrap().push(Message::new(m));
        }
        broker.deliver(&epoll, &jobs);
        (broker, epoll, UnixStream::from(theirs))
    }

    #[test]
    fn acks_sent_just_before_a_consumer_exits_count() {
        let (mut broker, epoll, child) = with_consumer(Delivery::AtLeastOnce);
        let mut buf = [0u8; 16];
        for _ in 0..2 {
            assert!(
                nix::sys::socket::recv(child.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap() > 0
            );
            nix::sys::socket::send(child.as_raw_fd(), b"ack", MsgFlags::empty()).unwrap();
        }
        drop(child);
        // The exit is handled before the acks were read by the loop.
        broker.child_exited(&epoll, Pid(42));
        let q = &broker.status()[0];
        assert_eq!((q.acked, q.depth, q.in_flight, q.redelivered), (2, 0, 0, 0));
    }

    #[test]
    fn an_at_least_once_consumer_that_dies_returns_its_messages() {
        let (mut broker, epoll, child) = with_consumer(Delivery::AtLeastOnce);
        drop(child);
        broker.child_exited(&epoll, Pid(42));
        let q = &broker.status()[0];
        assert_eq!((q.delivered, q.depth, q.in_flight, q.lost), (2, 2, 0, 0));
    }

    #[test]
    fn an_at_most_once_consumer_that_dies_unread_loses_and_counts() {
        let (mut broker, epoll, child) = with_consumer(Delivery::AtMostOnce);
        drop(child);
        broker.child_exited(&epoll, Pid(42));
        let q = &broker.status()[0];
        assert_eq!((q.delivered, q.depth, q.lost, q.redelivered), (2, 0, 2, 0));
    }

    #[test]
    fn nothing_unread_means_the_consumer_read_it_all() {
        let (ours, theirs) = crate::sys::seqpacket_pair().unwrap();
        nix::sys::socket::send(ours.as_raw_fd(), b"x", MsgFlags::empty()).unwrap();
        let pending = crate::sys::unread_by_peer(&ours).unwrap();
        assert!(
            pending >= NOTHING_UNREAD,
            "one unread packet accounts for {pending}"
        );
        let mut buf = [0u8; 4];
        nix::sys::socket::recv(theirs.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
        assert!(crate::sys::unread_by_peer(&ours).unwrap() < NOTHING_UNREAD);
    }

    /// Regression: a producer paused on a full queue that a reload removes
    /// is read again, its packets dead-lettered rather than left unread.
    #[test]
    fn a_paused_producer_of_a_removed_queue_is_read_into_dead_letters() {
        let state = std::env::temp_dir().join(format!("drover-paused-{}", std::process::id()));
        let mut cfg = config(Delivery::AtLeastOnce);
        cfg.supervisor.state_dir = state.clone();
        let mut broker = Broker::new(&cfg);
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        let jobs = QueueName::new("jobs").unwrap();
        for _ in 0..10 {
            broker
                .queues
                .get_mut(&jobs)
                .unwrap()
                .push(Message::new(b"old"));
        }
        let (ours, theirs) = socket_pair().unwrap();
        broker.attach(
            &epoll,
            Pid(7),
            &GroupName::new("p").unwrap(),
            vec![(jobs.clone(), Direction::Out, ours)],
            || 200,
        );
        assert!(
            broker.endpoints[&200].interest.is_empty(),
            "paused: the queue is full"
        );
        nix::sys::socket::send(theirs.as_raw_fd(), b"new", MsgFlags::empty()).unwrap();
        let mut empty = cfg.clone();
        empty.queues.clear();
        broker.apply(&empty, &epoll);
        assert_eq!(broker.endpoints[&200].interest, EpollFlags::EPOLLIN);
        broker.on_event(&epoll, 200, EpollFlags::EPOLLIN);
        let file = deadletter::path(&state, &jobs);
        let records = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            records.lines().count(),
            11,
            "10 queued + the paused producer's packet"
        );
        assert!(
            records
                .lines()
                .last()
                .unwrap()
                .contains("\"message\":\"new\"")
        );
        let _ = std::fs::remove_dir_all(&state);
    }
}
