//! The queue broker: named queues living in the supervisor.
//!
//! Every child gets, per queue its group names, its own end of a
//! `SOCK_SEQPACKET` pair; the broker holds the other end, non-blocking, in
//! the event loop. One packet is one message. Producers are read only while
//! their queue is below `capacity` (and [`queue::MAX_READY_BYTES`]), so a
//! full queue leaves their packets in the socket and their sends block:
//! back-pressure, never a drop, and the broker's memory stays bounded.
//! Consumers get messages round robin among those with free `prefetch`;
//! `ack`/`nack` packets settle the oldest unsettled message. What to do is
//! decided by [`queue::QueueCore`]; this module moves the bytes, in
//! batches: a producer's packets and a consumer's settlements are read up
//! to 64 per `recvmmsg`, a consumer's messages written up to 64 per
//! `sendmmsg`, and a producer paused on a full queue is read again only
//! once the queue is down to a low-water mark
//! ([`queue::QueueCore::below_low_water`]), not at every freed slot.
//!
//! Everything a child sends is untrusted: any packet, any number of them,
//! at any time, also on the socket of a queue a reload removed, and from a
//! grandchild that inherited the socket. None of it can make the broker
//! panic, spin or grow: reading is bounded per event, dead letters are
//! bounded by the dead-letter queue's capacity and then by
//! `dead_letter_max_bytes`, and per-packet log lines go through a
//! [`RateLimit`].
//!
//! With `confirm = true`, every packet read from a producer of the queue
//! is answered on its socket (see [`confirm`]); a producer that does not
//! read its replies is not read either.
//!
//! The pieces: `endpoint` reads and writes the sockets, `confirm` answers
//! producers, `letters` routes dead letters and `recorder` writes their
//! records off the loop, `retire` applies reloads, `timers` keeps the ack
//! deadlines.

mod confirm;
mod deadletter;
mod durable;
pub use durable::open_store_files;
mod endpoint;
mod letters;
pub mod queue;
mod recorder;
mod redis;
mod retire;
mod timers;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollFlags};

use crate::config::Config;
use crate::config::names::{GroupName, QueueName};
use crate::control::status::QueueStatus;
use crate::supervisor::Pid;
use crate::text::ratelimit::RateLimit;
use crate::text::wording::plural;
use confirm::Replies;
use queue::QueueCore;
use timers::AckTimers;

/// The smallest scratch buffer for producers' packets. A SEQPACKET message
/// is bounded by its sender's socket buffer (about 208 KiB by default), so
/// even an oversized one is kept whole for its dead-letter record unless
/// the child raised its own `SO_SNDBUF`.
const MIN_SCRATCH: usize = 1 << 20;

/// The largest `max_message_bytes` the broker honours (the config's own
/// bound). The scratch buffer never grows past this plus one byte.
const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Packets read from one socket per event: a child that sends without end
/// (into a removed queue, or bogus acks) cannot hold the loop. Level
/// triggering brings the rest at the next turn.
const READ_BUDGET: usize = 1024;

/// Packets read from a consumer's socket when its child has exited: what
/// a dead child left there is bounded by the socket buffer, far below this.
const EXIT_BUDGET: usize = 1 << 16;
/// Sockets of exited producers that may wait, with their packets, for room
/// in a full queue (see [`Broker::child_exited`]).
pub const EXITED_WAITING: usize = 32;

/// Which way an endpoint carries messages, seen from the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `DROVER_IN_<QUEUE>`: the child consumes.
    In,
    /// `DROVER_OUT_<QUEUE>`: the child produces.
    Out,
}

/// The broker's end of one child's queue socket, as the child was told
/// about it: what the launcher hands to [`Broker::attach`].
#[derive(Debug)]
pub struct QueueEnd {
    pub queue: QueueName,
    pub direction: Direction,
    /// A producer's end whose packets are answered: its child's
    /// environment has `DROVER_CONFIRM_<QUEUE>=1`. Fixed for the life of
    /// the endpoint, whatever a reload does to the queue.
    pub confirm: bool,
    pub fd: OwnedFd,
}

/// The broker's end of one child's queue socket.
#[derive(Debug)]
struct Endpoint {
    fd: OwnedFd,
    queue: QueueName,
    /// The child it was made for (a producer's endpoint outlives it while
    /// a grandchild still holds the other end).
    pid: Pid,
    group: GroupName,
    direction: Direction,
    /// Interest currently registered in epoll (empty: not registered).
    interest: EpollFlags,
    /// A producer's replies, when it has confirms.
    replies: Option<Replies>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Broker {
    /// The queues of the current config.
    queues: BTreeMap<QueueName, QueueCore>,
    /// Queues a reload removed, kept while consumers hold their messages
    /// or endpoints still name them (see [`queue`]).
    retired: BTreeMap<QueueName, QueueCore>,
    endpoints: HashMap<u64, Endpoint>,
    /// The endpoints of each running child, so that an exit costs its own
    /// endpoints, not a scan of all of them.
    by_pid: HashMap<Pid, Vec<u64>>,
    /// How many endpoints name each queue, live or retired.
    named: HashMap<QueueName, usize>,
    state_dir: PathBuf,
    /// Writes dead-letter records off the loop.
    recorder: recorder::Recorder,
    /// Producers' packets land here; allocated at the first read.
    scratch: Vec<u8>,
    scratch_len: usize,
    /// Producers' packets read in batches land here (see
    /// `endpoint::batch_shape`); allocated at the first batch.
    batch: Vec<u8>,
    /// Producers not watched because their queue was full, per queue: the
    /// ones to re-arm once it has room, without scanning every endpoint.
    paused: HashMap<QueueName, Vec<u64>>,
    /// Paused producers whose child exited with packets still in the
    /// socket, oldest first, per queue: at most [`EXITED_WAITING`] wait for
    /// room (see [`Broker::child_exited`]).
    exited: HashMap<QueueName, std::collections::VecDeque<u64>>,
    /// Queues that may have something to hand out. Delivered at the end of
    /// every entry point, as a work list rather than by recursion, so that
    /// a chain of dead letters and failing consumers cannot grow the stack.
    to_deliver: Vec<QueueName>,
    timers: AckTimers,
    /// Replies whose gate is at or before this may be sent (see
    /// [`confirm`]): the last disk commit that ended.
    committed: confirm::Committed,
    /// Producers with replies waiting for a commit.
    gated: BTreeSet<u64>,
    /// The store of durable queues, once the config has one.
    durable: Option<durable::Durable>,
    /// The Redis side, once the config has a queue on Redis.
    redis: Option<redis::Redis>,
    /// The streams of the live queues on Redis.
    remotes: HashMap<QueueName, redis::Remote>,
    /// The streams of removed queues on Redis whose consumers still hold
    /// entries.
    old_remotes: HashMap<QueueName, Vec<redis::Remote>>,
    /// Lines about single packets or messages (a bogus `ack`, a dead letter).
    lines: RateLimit,
    /// Lines about a condition that lasts (a full dead-letter queue, a full
    /// or unwritable record file): one per window, then a count.
    bursts: RateLimit,
}

impl Broker {
    pub fn new(config: &Config) -> Broker {
        let queues: BTreeMap<QueueName, QueueCore> = config
            .queues
            .iter()
            .map(|(name, spec)| (name.clone(), QueueCore::new(spec.clone())))
            .collect();
        Broker {
            scratch_len: scratch_len(&queues),
            queues,
            retired: BTreeMap::new(),
            endpoints: HashMap::new(),
            by_pid: HashMap::new(),
            named: HashMap::new(),
            state_dir: config.supervisor.state_dir.clone(),
            recorder: recorder::Recorder::new(
                config.supervisor.state_dir.clone(),
                config.supervisor.dead_letter_max_bytes,
            ),
            scratch: Vec::new(),
            batch: Vec::new(),
            paused: HashMap::new(),
            exited: HashMap::new(),
            to_deliver: Vec::new(),
            timers: AckTimers::default(),
            committed: confirm::Committed::default(),
            gated: BTreeSet::new(),
            durable: None,
            redis: None,
            remotes: HashMap::new(),
            old_remotes: HashMap::new(),
            lines: RateLimit::default(),
            bursts: RateLimit::new(1, crate::text::ratelimit::DEFAULT_WINDOW),
        }
    }

    /// The live queue `name`, else its removed incarnation.
    fn core_mut(&mut self, name: &QueueName) -> Option<&mut QueueCore> {
        match self.queues.get_mut(name) {
            Some(q) => Some(q),
            None => self.retired.get_mut(name),
        }
    }

    pub fn owns(&self, token: u64) -> bool {
        self.endpoints.contains_key(&token)
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
        sockets: Vec<QueueEnd>,
        mut token: impl FnMut() -> u64,
    ) {
        for end in sockets {
            let QueueEnd {
                queue,
                direction,
                confirm,
                fd,
            } = end;
            let id = token();
            if direction == Direction::In
                && let Some(q) = self.queues.get_mut(&queue)
            {
                endpoint::fit_send_buffer(&fd, &q.spec);
                q.add_consumer(id);
                self.to_deliver.push(queue.clone());
            }
            *self.named.entry(queue.clone()).or_insert(0) += 1;
            self.by_pid.entry(pid).or_default().push(id);
            let endpoint = Endpoint {
                fd,
                queue,
                pid,
                group: group.clone(),
                direction,
                interest: EpollFlags::empty(),
                replies: (confirm && direction == Direction::Out).then(Replies::default),
            };
            self.endpoints.insert(id, endpoint);
            self.refresh_interest(epoll, id);
        }
        self.run_deliveries(epoll);
    }

    /// An event on one of the broker's sockets.
    pub fn on_event(&mut self, epoll: &Epoll, token: u64, flags: EpollFlags) {
        let Some(ep) = self.endpoints.get(&token) else {
            return;
        };
        let queue = ep.queue.clone();
        match ep.direction {
            Direction::Out => {
                let answers = ep.replies.is_some();
                let writable = EpollFlags::EPOLLOUT | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
                if answers && flags.intersects(writable) {
                    self.flush_replies(token);
                }
                self.read_producer(epoll, token, &queue);
            }
            Direction::In => {
                if flags.contains(EpollFlags::EPOLLOUT) {
                    self.writable(epoll, token, &queue);
                }
                if flags
                    .intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
                {
                    self.read_settlements(epoll, token, &queue, READ_BUDGET);
                }
            }
        }
        self.deliver(epoll, &queue);
        self.run_deliveries(epoll);
    }

    /// A child exited. What it was given and had not acknowledged goes
    /// back to its queue, after its last acks are read. Its producer
    /// sockets stay: a grandchild may hold them and keep producing, so
    /// they are read as usual (with back-pressure) until every holder has
    /// closed them.
    ///
    /// A producer paused on a full queue is not watched, so the end of its
    /// stream would be seen only once the queue has room: one that nobody
    /// holds any more is closed now when it is empty; with packets in it
    /// (sent before the exit, so not to be lost) it waits for room, but at
    /// most [`EXITED_WAITING`] of them per queue: past that the oldest one's
    /// packets are dead-lettered and it is closed. Without that bound, a
    /// producer restarted while its queue stays full (consumers down, Redis
    /// unreachable) would leave an fd and a socket buffer of kernel memory
    /// behind at every restart.
    pub fn child_exited(&mut self, epoll: &Epoll, pid: Pid) {
        for token in self.by_pid.remove(&pid).unwrap_or_default() {
            let Some(ep) = self.endpoints.get(&token) else {
                continue;
            };
            if ep.direction == Direction::In {
                let queue = ep.queue.clone();
                self.read_settlements(epoll, token, &queue, EXIT_BUDGET);
                self.detach(epoll, token, "its consumer exited before acknowledging it");
            } else if ep.interest.is_empty() && crate::sys::peer_closed(&ep.fd).unwrap_or(true) {
                let queue = ep.queue.clone();
                if crate::sys::unread_by_us(&ep.fd).is_ok_and(|n| n > 0) {
                    self.exited_waiting(epoll, token, &queue);
                } else {
                    self.detach(epoll, token, "its producer exited");
                }
            }
        }
        self.run_deliveries(epoll);
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
            self.detach(
                epoll,
                token,
                "its consumer's queue was closed before it acknowledged it",
            );
        }
        self.run_deliveries(epoll);
    }

    /// The earliest moment [`Self::on_deadline`] has something to do: an
    /// ack timeout that may expire, or a summary of suppressed log lines.
    pub fn deadline(&self) -> Option<Instant> {
        [
            self.timers.next(),
            self.lines.deadline(),
            self.bursts.deadline(),
            self.store_deadline(),
            self.touch_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Handles what is due at `now`. Consumers that held a message longer
    /// than their queue's `ack_timeout` are hung: their unsettled messages
    /// go back to the queue as failed deliveries and their input socket is
    /// closed. Returns their PIDs, for the supervisor to restart.
    pub fn on_deadline(&mut self, epoll: &Epoll, now: Instant) -> Vec<Pid> {
        self.store_retry(epoll, now);
        self.touch_due(now);
        let mut hung = Vec::new();
        for token in self.timers.due(now) {
            match self.ack_deadline(token) {
                None => {}
                Some(at) if at > now => self.timers.arm(token, at),
                Some(_) => {
                    if let Some(pid) = self.hung(epoll, token)
                        && !hung.contains(&pid)
                    {
                        hung.push(pid);
                    }
                }
            }
        }
        let due = self.lines.due(now).into_iter().chain(self.bursts.due(now));
        for s in due {
            tracing::warn!("{s}");
        }
        self.run_deliveries(epoll);
        hung
    }

    /// Per-queue numbers for `drover status`: the queues of the config,
    /// then removed ones whose consumers still hold messages.
    pub fn status(&self) -> Vec<QueueStatus> {
        let live = self.queues.values().map(|q| self.queue_status(q, false));
        let retired = self
            .retired
            .values()
            .filter(|q| q.in_flight() > 0 || q.depth() > 0)
            .map(|q| self.queue_status(q, true));
        live.chain(retired).collect()
    }

    /// At exit: writes the dead-letter records still on their way, commits
    /// and closes the store, and logs what is lost (held in memory only)
    /// or kept (in the store).
    pub fn report_leftovers(&mut self) {
        self.recorder.finish(recorder::FINISH_WAIT);
        for q in self.queues.values() {
            if let Some(n) = self.pending_in_stream(q) {
                tracing::info!(
                    "queue {}: {} read from Redis and not acknowledged stay pending in stream {} \
                     (this drover takes them back when it starts again on this host; others \
                     after claim_idle)",
                    q.spec.name,
                    plural(n, "message", "messages"),
                    q.spec.redis.as_ref().map_or("?", |r| r.stream.as_str())
                );
            }
        }
        self.close_remotes();
        let all = self.queues.values_mut().chain(self.retired.values_mut());
        for q in all {
            let on_redis = q.spec.redis.is_some();
            let stored = if on_redis { 0 } else { q.stored() };
            let lost = q.drain_all().iter().filter(|m| m.id.is_none()).count();
            if stored > 0 {
                tracing::info!(
                    "queue {}: {} stay in the store for the next start",
                    q.spec.name,
                    plural(stored as usize, "message", "messages")
                );
            }
            if lost > 0 {
                let why = if on_redis {
                    "Redis had not taken them yet; none was confirmed"
                } else if q.spec.durable {
                    "they were not stored yet"
                } else {
                    "the queue is not durable"
                };
                tracing::warn!(
                    "queue {}: {} still queued at exit are lost ({why})",
                    q.spec.name,
                    plural(lost, "message", "messages")
                );
            }
        }
        self.close_store();
    }

    /// When the consumer `token` will have held its oldest message (of the
    /// live queue or of a retired one) for `ack_timeout`.
    fn ack_deadline(&self, token: u64) -> Option<Instant> {
        let queue = &self.endpoints.get(&token)?.queue;
        let cores = [self.retired.get(queue), self.queues.get(queue)];
        cores
            .into_iter()
            .flatten()
            .filter_map(|q| q.ack_deadline(token))
            .min()
    }

    /// Declares the consumer `token` hung: logs, detaches its input (its
    /// messages are failed deliveries) and returns its child's PID.
    fn hung(&mut self, epoll: &Epoll, token: u64) -> Option<Pid> {
        let ep = self.endpoints.get(&token)?;
        let (pid, queue) = (ep.pid, ep.queue.clone());
        let cores = [self.retired.get(&queue), self.queues.get(&queue)];
        let held: usize = cores.iter().flatten().map(|q| q.held_by(token)).sum();
        let timeout = cores
            .iter()
            .flatten()
            .filter_map(|q| q.ack_timeout())
            .min()
            .unwrap_or(Duration::ZERO);
        tracing::warn!(
            "queue {queue}: consumer {}[pid {}] held a message longer than ack_timeout = {timeout:?}: \
             it is hung; its {held} unsettled messages go back to the queue and it is restarted",
            ep.group,
            pid.0
        );
        self.detach(epoll, token, "its consumer held it longer than ack_timeout");
        Some(pid)
    }
}

impl Broker {
    fn queue_status(&self, q: &QueueCore, removed: bool) -> QueueStatus {
        let (stored, store_error) = self.store_status(q);
        let mut s = queue_status(q, removed, stored, store_error);
        if let Some(r) = &q.spec.redis {
            s.backend = "redis".into();
            s.stream = Some(r.stream.clone());
            s.url = Some(r.target.shown().to_owned());
            if let Some((error, depth)) = self.remote_status(q) {
                s.backend_error = error;
                s.depth = depth;
            }
        }
        s
    }
}

fn queue_status(
    q: &QueueCore,
    removed: bool,
    stored: u64,
    store_error: Option<String>,
) -> QueueStatus {
    QueueStatus {
        name: q.spec.name.to_string(),
        depth: q.depth() as u64,
        in_flight: q.in_flight() as u64,
        delivered: q.counters.delivered,
        acked: q.counters.acked,
        redelivered: q.counters.redelivered,
        dead_lettered: q.counters.dead_lettered,
        lost: q.counters.lost,
        refused: q.counters.refused,
        removed,
        confirm: q.spec.confirm,
        confirmed: q.counters.confirmed,
        durable: q.spec.durable,
        stored,
        store_error,
        backend: "local".into(),
        backend_error: None,
        stream: None,
        url: None,
    }
}

/// The scratch buffer for `queues`: large enough for the largest message
/// any of them accepts plus one byte (so that a longer one is seen to be
/// longer), at least [`MIN_SCRATCH`], at most [`MAX_MESSAGE_BYTES`] + 1.
fn scratch_len(queues: &BTreeMap<QueueName, QueueCore>) -> usize {
    let largest = queues
        .values()
        .map(|q| q.spec.max_message_bytes as usize)
        .max()
        .unwrap_or(0);
    (largest.min(MAX_MESSAGE_BYTES) + 1).max(MIN_SCRATCH)
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
mod tests;
