//! Queues on Redis Streams: the broker's side of `drover-redis`.
//!
//! Children see no difference: the same sockets, packets and acks. What
//! changes is where a queue's messages wait: in a Redis stream shared by
//! every drover instance that names it, instead of in this drover.
//!
//! - **Producing.** A producer's message is *staged* in its queue (it
//!   counts toward `capacity`, so producers feel back-pressure while Redis
//!   is slow or down) and goes into this turn's [`WriteBatch`]; at the end
//!   of the turn the batch goes to the queue's writer thread (one pipelined
//!   round trip of `XADD`s). Once Redis has taken it, the staged messages
//!   leave drover and their producers' `ok`s go out (each queue on Redis
//!   has its own lane of gates, see [`super::confirm`]).
//! - **Consuming.** The reader thread is granted credit equal to the
//!   consumers' free prefetch, and reads no more than that: what it reads
//!   is pushed into the queue and handed out by the usual logic (round
//!   robin, prefetch, acks, `ack_timeout`). Each entry gets a local id; an
//!   `ack` (or a dead letter, or a read at most once) becomes `XACK` +
//!   `XDEL`. A `nack` or a dead consumer puts the entry back at the head,
//!   here, for the next consumer with room; its new delivery count is
//!   written to the group's pending list, so `max_deliveries` counts every
//!   delivery by every instance.
//! - **Failures.** Redis unreachable: the threads retry with backoff, the
//!   queue's producers wait, `status` shows the error; nothing accepted is
//!   dropped. A removed queue stops reading; what it read and had not
//!   handed out stays pending in the stream for another instance to claim.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_redis::{Backend, Entry, Spec, WriteBatch};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::Broker;
use super::confirm::Gate;
use super::queue::{DeadLetter, Message, QueueCore, StoreOps};
use crate::config::names::QueueName;

/// How long drover waits at exit for each queue's last writes.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Wakes the loop from the Redis threads.
struct Wake(Arc<EventFd>);

impl drover_redis::Notify for Wake {
    fn notify(&self) {
        let _ = self.0.write(1);
    }
}

/// The broker's Redis side: the eventfd all backends wake the loop with.
#[derive(Debug)]
pub(super) struct Redis {
    wake: Arc<EventFd>,
    /// The next confirm lane (lane 0 is the disk store's).
    next_lane: u32,
    /// Local ids of entries, unique across queues.
    next_id: u64,
}

/// One queue's stream.
#[derive(Debug)]
pub(super) struct Remote {
    backend: Backend,
    lane: u32,
    /// The last batch submitted; this turn's will be `seq + 1`.
    seq: u64,
    batch: WriteBatch,
    /// Local id → (entry id, delivery count Redis knows).
    entries: HashMap<u64, (String, u32)>,
    /// Entries settled here whose `XACK` is not written yet, by the batch
    /// that carries it: after a lost connection the reader may bring them
    /// back from this instance's pending list, and they are not handed out
    /// again.
    settling: VecDeque<(u64, Vec<String>)>,
    /// Credit granted to the reader and not yet used.
    asked: u64,
    /// The group's lag, last seen.
    lag: u64,
    /// When the entries held here get their idle time reset next (every
    /// `claim_idle / 2` while there are any).
    touch_at: Option<Instant>,
    touch_every: Duration,
    error: Option<String>,
}

impl Broker {
    /// Creates the eventfd the Redis threads wake the loop with, on the
    /// loop's `token`, if the config has a queue on Redis, and starts the
    /// queues' threads.
    pub fn open_remotes(
        &mut self,
        config: &crate::config::Config,
        epoll: &Epoll,
        token: u64,
    ) -> io::Result<()> {
        if self.redis.is_none() && config.queues.values().any(|q| q.redis.is_some()) {
            let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
            epoll.add(&fd, EpollEvent::new(EpollFlags::EPOLLIN, token))?;
            self.redis = Some(Redis {
                wake: Arc::new(fd),
                next_lane: 1,
                next_id: 1,
            });
        }
        self.start_remotes();
        Ok(())
    }

    /// Starts the threads of every queue on Redis that has none yet.
    pub(super) fn start_remotes(&mut self) {
        let Some(redis) = self.redis.as_mut() else {
            return;
        };
        for (name, q) in &mut self.queues {
            let Some(r) = &q.spec.redis else {
                continue;
            };
            if self.remotes.contains_key(name) {
                continue;
            }
            let spec = Spec {
                target: r.target.clone(),
                stream: r.stream.clone(),
                group: name.to_string(),
                consumer: Spec::consumer_name(),
                claim_idle: r.claim_idle,
            };
            let consumer = spec.consumer.clone();
            match Backend::start(spec, Box::new(Wake(Arc::clone(&redis.wake)))) {
                Ok(backend) => {
                    tracing::info!(
                        "queue {name}: on Redis {} stream {} (group {name}, consumer {consumer})",
                        r.target,
                        r.stream
                    );
                    q.store_blocked = false;
                    let lane = redis.next_lane;
                    redis.next_lane += 1;
                    self.remotes.insert(
                        name.clone(),
                        Remote {
                            backend,
                            lane,
                            seq: 0,
                            batch: WriteBatch::default(),
                            entries: HashMap::new(),
                            settling: VecDeque::new(),
                            asked: 0,
                            lag: 0,
                            error: None,
                            touch_at: None,
                            touch_every: (r.claim_idle / 2).max(Duration::from_millis(50)),
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(
                        "queue {name}: cannot start its Redis threads ({e}); its producers wait \
                         until a reload tries again"
                    );
                    q.store_blocked = true;
                }
            }
        }
    }

    /// A message for a queue on Redis: staged until the stream has it.
    /// `None`: the queue is not on Redis.
    pub(super) fn enqueue_remote(&mut self, name: &QueueName, bytes: &[u8]) -> Option<Gate> {
        let r = self.remotes.get_mut(name)?;
        let q = self.queues.get_mut(name)?;
        let seq = r.seq + 1;
        r.batch.add.push(bytes.into());
        q.stage(seq, Message::new(bytes));
        Some(Gate { lane: r.lane, seq })
    }

    /// The end of a loop turn: each queue's batch goes to its writer, and
    /// readers are granted what consumers can take.
    pub(super) fn end_turn_remotes(&mut self) {
        let before = self.recorder.barrier();
        let mut now = None;
        for (name, r) in self.remotes.iter_mut() {
            match (r.entries.is_empty(), r.touch_at) {
                (false, None) => {
                    let now = *now.get_or_insert_with(Instant::now);
                    r.touch_at = Some(now + r.touch_every);
                }
                (true, Some(_)) => r.touch_at = None,
                _ => {}
            }
            if let Some(q) = self.queues.get_mut(name) {
                record(r, q.take_ops());
                let want = q.wants().saturating_sub(r.asked);
                if want > 0 {
                    r.asked += want;
                    r.backend.grant(want);
                }
            }
            submit(r, before.as_ref());
        }
        for (name, olds) in self.old_remotes.iter_mut() {
            let ops = self.retired.get_mut(name).map(QueueCore::take_ops);
            for r in olds.iter_mut() {
                if let Some(ops) = &ops {
                    record_owned(r, ops);
                }
                submit(r, before.as_ref());
            }
        }
    }

    /// When entries held here must have their idle time reset.
    pub(super) fn touch_deadline(&self) -> Option<Instant> {
        self.remotes.values().filter_map(|r| r.touch_at).min()
    }

    /// Resets the idle time of the entries held by queues whose time has
    /// come (see [`Remote::touch_at`]).
    pub(super) fn touch_due(&mut self, now: Instant) {
        for r in self.remotes.values_mut() {
            if r.touch_at.is_some_and(|t| t <= now) {
                r.batch
                    .touch
                    .extend(r.entries.values().map(|(id, _)| id.clone()));
                r.touch_at = (!r.entries.is_empty()).then(|| now + r.touch_every);
            }
        }
    }

    /// The Redis eventfd is readable: batches were written, entries read,
    /// errors came or went.
    pub fn on_redis(&mut self, epoll: &Epoll) {
        let Some(redis) = self.redis.as_mut() else {
            return;
        };
        let _ = redis.wake.read();
        let names: Vec<QueueName> = self.remotes.keys().cloned().collect();
        for name in names {
            let Some(r) = self.remotes.get_mut(&name) else {
                continue;
            };
            let events = r.backend.take();
            if let Some(error) = events.error {
                report(&name, &mut r.error, error);
            }
            if let Some(lag) = events.lag {
                r.lag = lag;
            }
            let lane = r.lane;
            if !events.entries.is_empty() {
                let dead = self.arrived(&name, events.entries);
                self.dead_letters(&name, dead);
                self.to_deliver.push(name.clone());
            }
            if let Some(seq) = events.committed {
                // After the entries: those may have been read before this
                // batch's XACKs were applied.
                if let Some(r) = self.remotes.get_mut(&name) {
                    while r.settling.front().is_some_and(|(s, _)| *s <= seq) {
                        r.settling.pop_front();
                    }
                }
                self.committed.set(lane, seq);
                if let Some(q) = self.queues.get_mut(&name) {
                    q.sent(seq);
                }
                self.resume_producers(epoll, &name);
                self.flush_gated(epoll);
            }
        }
        let mut opened = false;
        for (name, olds) in self.old_remotes.iter_mut() {
            for r in olds.iter_mut() {
                let events = r.backend.take();
                if let Some(error) = events.error {
                    report(name, &mut r.error, error);
                }
                // Entries read after the queue was removed stay pending in
                // the stream, for another instance (or this one, once the
                // queue is back, after claim_idle).
                if let Some(seq) = events.committed {
                    self.committed.set(r.lane, seq);
                    opened = true;
                }
            }
        }
        if opened {
            self.flush_gated(epoll);
        }
        self.run_deliveries(epoll);
    }

    /// Entries the reader brought: into the queue, or straight to the
    /// dead letters (delivered `max_deliveries` times already, or not a
    /// message drover can hand out).
    fn arrived(&mut self, name: &QueueName, entries: Vec<Entry>) -> Vec<DeadLetter> {
        let (Some(r), Some(redis)) = (self.remotes.get_mut(name), self.redis.as_mut()) else {
            return Vec::new();
        };
        let Some(q) = self.queues.get_mut(name) else {
            return Vec::new();
        };
        r.asked = r.asked.saturating_sub(entries.len() as u64);
        // Entries of this instance's own pending list read again after a
        // lost connection: those held here already are not taken twice.
        let held: HashSet<String> = if entries.iter().any(|e| e.ours) {
            let settling = r.settling.iter().flat_map(|(_, ids)| ids.iter().cloned());
            r.entries
                .values()
                .map(|(id, _)| id.clone())
                .chain(settling)
                .collect()
        } else {
            HashSet::new()
        };
        let mut dead = Vec::new();
        for e in entries {
            if e.ours && held.contains(&e.id) {
                continue;
            }
            let id = redis.next_id;
            redis.next_id += 1;
            r.entries.insert(id, (e.id.clone(), e.count));
            let deliveries = e.count.saturating_sub(1);
            let max = q.spec.max_deliveries;
            let (bytes, reason) = match e.data {
                None => (
                    e.fields,
                    Some(format!(
                        "stream entry {} has no `{}` field (not added by drover)",
                        e.id,
                        drover_redis::FIELD
                    )),
                ),
                Some(b) if b.is_empty() => (
                    b,
                    Some(format!("stream entry {} is empty: not a message", e.id)),
                ),
                Some(b) if b.len() > q.spec.max_message_bytes as usize => {
                    let reason = format!(
                        "stream entry {} has {} bytes, over max_message_bytes = {}",
                        e.id,
                        b.len(),
                        q.spec.max_message_bytes
                    );
                    (b, Some(reason))
                }
                Some(b) if deliveries >= max => (
                    b,
                    Some(format!(
                        "delivered {deliveries} times (by any drover instance, counting deliveries cut short by a stop)"
                    )),
                ),
                Some(b) => (b, None),
            };
            let message = Message {
                bytes: bytes.into_boxed_slice(),
                deliveries,
                id: Some(id),
            };
            match reason {
                None => q.push(message),
                Some(reason) => {
                    // Settled for good: acked once the dead letter is on its way.
                    r.entries.remove(&id);
                    r.batch.done.push(e.id);
                    q.counters.dead_lettered += 1;
                    let message = Message {
                        id: None,
                        ..message
                    };
                    dead.push(DeadLetter { message, reason });
                }
            }
        }
        dead
    }

    /// A removed queue on Redis stops reading; its threads stay for what
    /// its consumers still hold. Returns the messages it had read and not
    /// handed out: they stay pending in the stream.
    pub(super) fn retire_remote(&mut self, name: &QueueName, q: &mut QueueCore) -> Option<usize> {
        let r = self.remotes.remove(name)?;
        r.backend.revoke();
        let left = q.retire_keeping_ids();
        self.old_remotes.entry(name.clone()).or_default().push(r);
        Some(left.len())
    }

    /// A removed queue on Redis is forgotten: its last settlements go out,
    /// and its threads end once they are written.
    pub(super) fn close_old_remotes(&mut self, name: &QueueName, ops: &StoreOps) {
        let before = self.recorder.barrier();
        if let Some(olds) = self.old_remotes.remove(name) {
            for mut r in olds {
                record_owned(&mut r, ops);
                submit(&mut r, before.as_ref());
                // Dropping the backend ends its threads after the writer
                // has sent what it holds.
            }
        }
    }

    /// Whether `name` (a live queue) is on Redis, and its status fields:
    /// (backend error, depth as Redis sees it plus what waits here).
    pub(super) fn remote_status(&self, q: &QueueCore) -> Option<(Option<String>, u64)> {
        let r = self.remotes.get(&q.spec.name)?;
        let depth = r
            .lag
            .saturating_add((q.staged_len() + q.ready_len()) as u64);
        Some((r.error.clone().or_else(|| r.backend.error()), depth))
    }

    /// At exit: the last settlements go out (waiting at most
    /// [`CLOSE_WAIT`] per queue); what was read and not handed out stays
    /// pending in the stream.
    pub(super) fn close_remotes(&mut self) {
        self.end_turn_remotes();
        let deadline = Instant::now() + CLOSE_WAIT;
        let wait = || deadline.saturating_duration_since(Instant::now());
        let remotes: Vec<(QueueName, Remote)> = self.remotes.drain().collect();
        for (name, r) in remotes {
            if r.backend.close(wait()) {
                // Everything staged is in the stream now.
                if let Some(q) = self.queues.get_mut(&name) {
                    q.sent(u64::MAX);
                }
            } else {
                tracing::error!(
                    "queue {name}: Redis did not take drover's last writes within {CLOSE_WAIT:?}: \
                     acks not sent mean redeliveries; messages not added were never confirmed"
                );
            }
        }
        for (_, olds) in self.old_remotes.drain() {
            for r in olds {
                r.backend.close(wait());
            }
        }
    }

    /// Messages of `q` that are entries of its stream (read, not yet
    /// settled): they stay pending there when drover stops.
    pub(super) fn pending_in_stream(&self, q: &QueueCore) -> Option<usize> {
        self.remotes
            .get(&q.spec.name)
            .map(|r| r.entries.len())
            .filter(|n| *n > 0)
    }
}

/// Logs an error that came or went.
fn report(name: &QueueName, slot: &mut Option<String>, now: Option<String>) {
    match (&slot, &now) {
        (_, Some(e)) => tracing::error!(
            "queue {name}: Redis: {e}; its producers wait, nothing accepted is lost; trying again"
        ),
        (Some(_), None) => tracing::info!("queue {name}: Redis works again"),
        (None, None) => {}
    }
    *slot = now;
}

/// What the queue told us about its entries goes into the next batch:
/// settled ones are acked and deleted; ones handed out again get their
/// new delivery count.
fn record(r: &mut Remote, ops: StoreOps) {
    record_owned(r, &ops);
}

fn record_owned(r: &mut Remote, ops: &StoreOps) {
    for (id, attempts) in &ops.attempts {
        if let Some((entry, known)) = r.entries.get_mut(id)
            && *attempts > *known
        {
            *known = *attempts;
            r.batch.recount.push((entry.clone(), *attempts));
        }
    }
    for id in &ops.forget {
        if let Some((entry, _)) = r.entries.remove(id) {
            r.batch.done.push(entry);
        }
    }
}

/// Sends what `r` has to write; `before` (a recorder barrier) is
/// waited for by the writer first when the batch acks entries.
fn submit(r: &mut Remote, before: Option<&Arc<dyn Fn() + Send + Sync>>) {
    if r.batch.is_empty() {
        return;
    }
    r.seq += 1;
    let mut batch = std::mem::take(&mut r.batch);
    batch.seq = r.seq;
    if !batch.done.is_empty() {
        batch.before = before.map(|f| drover_redis::Before(Arc::clone(f)));
    }
    if !batch.done.is_empty() {
        r.settling.push_back((r.seq, batch.done.clone()));
    }
    r.backend.submit(batch);
}
