//! One queue's state, free of I/O: ready messages, consumers with their
//! unsettled messages, round-robin hand-out and the delivery rules (acks,
//! nacks, failed deliveries, dead letters). The [`super::Broker`] moves
//! bytes; this decides.
//!
//! A queue that a reload removes is *retired*, not dropped: what was ready
//! leaves at once for the dead letters, and what its consumers still hold
//! stays settleable here — an `ack` drops the message (counted in `acked`),
//! a `nack` or the consumer's exit dead-letters it, whatever
//! `max_deliveries` says (there is no queue to return it to).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::config::{Delivery, QueueSpec};
use crate::text::wording::plural;

/// Identifies a consumer endpoint (its event-loop token).
pub type ConsumerId = u64;

/// Bytes of ready messages a queue holds before its producers are paused,
/// whatever `capacity` says: `capacity` alone would let 10,000 messages of
/// 4 MiB each pile up in drover.
pub const MAX_READY_BYTES: usize = 64 << 20;

/// How far below `capacity` a full queue must fall before its producers
/// are read again (see [`QueueCore::below_low_water`]).
pub const RESUME_GAP: usize = 64;

/// A message and how many times it has been delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub bytes: Box<[u8]>,
    pub deliveries: u32,
    /// Its id in the store, while it is stored (durable queues).
    pub id: Option<u64>,
}

impl Message {
    pub fn new(bytes: &[u8]) -> Message {
        Message {
            bytes: bytes.into(),
            deliveries: 0,
            id: None,
        }
    }
}

/// Messages of a durable queue held in memory at most, beyond those read
/// back for consumers: the rest stays in the store until it is needed.
pub const WINDOW: usize = 1024;

/// A durable queue with messages in the store reads the next ones once
/// fewer than this many are ready in memory.
pub const LOW_WATER: usize = WINDOW / 4;

/// What the store must learn from a queue: attempt counts of stored
/// messages that were handed out, and ids of stored messages that left
/// (acked, dead-lettered, read at most once, or moved out of the store).
#[derive(Debug, Default)]
pub struct StoreOps {
    pub attempts: Vec<(u64, u32)>,
    pub forget: Vec<u64>,
}

/// A message leaving its queue for the dead letters, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message: Message,
    pub reason: String,
}

impl DeadLetter {
    /// A packet of `n` bytes of which `kept` could be read, dead-lettered
    /// for `reason` (which then says what was cut).
    pub fn of_packet(kept: &[u8], n: usize, mut reason: String) -> DeadLetter {
        if kept.len() < n {
            let _ = write!(
                reason,
                " (only the first {} bytes could be kept)",
                kept.len()
            );
        }
        DeadLetter {
            message: Message::new(kept),
            reason,
        }
    }
}

/// Counters shown by `drover status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub delivered: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
    /// At-most-once messages that a consumer died holding (not yet read).
    pub lost: u64,
    /// Packets that were not taken: empty or oversized ones from producers,
    /// and from consumers anything but a due `ack` or `nack`.
    pub refused: u64,
    /// `ok` replies sent to producers (`confirm = true`).
    pub confirmed: u64,
}

impl Counters {
    fn add(&mut self, other: Counters) {
        self.delivered += other.delivered;
        self.acked += other.acked;
        self.redelivered += other.redelivered;
        self.dead_lettered += other.dead_lettered;
        self.lost += other.lost;
        self.refused += other.refused;
        self.confirmed += other.confirmed;
    }
}

/// A message handed to a consumer and not settled yet.
#[derive(Debug)]
struct InFlight {
    message: Message,
    /// When it was written to the consumer's socket; `None` while the
    /// queue had no `ack_timeout` (stamped when one is set by a reload).
    since: Option<Instant>,
}

#[derive(Debug)]
struct Consumer {
    /// Handed over and not settled, oldest first: not yet acked
    /// (at-least-once), or not yet read from the socket (at-most-once).
    unsettled: VecDeque<InFlight>,
    /// Its socket is full; no hand-out until it drains.
    blocked: bool,
    /// Taken for it and not yet written to its socket (the broker writes
    /// a consumer's messages in batches): they count against `prefetch`.
    reserved: usize,
}

/// See the module documentation.
#[derive(Debug)]
pub struct QueueCore {
    pub spec: QueueSpec,
    ready: VecDeque<Message>,
    /// Bytes of the messages in `ready`.
    ready_bytes: usize,
    /// By id: a consumer's messages are found without a scan.
    consumers: BTreeMap<ConsumerId, Consumer>,
    /// The consumers that can take a message now (not blocked, below
    /// `prefetch`), so a hand-out never scans the full ones.
    room: BTreeSet<ConsumerId>,
    /// Round robin: the next hand-out goes to the first consumer with room
    /// from this id on.
    next: ConsumerId,
    /// Removed from the config by a reload (see the module documentation).
    retired: bool,
    pub counters: Counters,
    /// Accepted messages waiting for a disk commit (or, in a queue that is
    /// not durable, for one that messages before them wait for), oldest
    /// first, each with the gate of its commit (see `super::durable`).
    staged: VecDeque<(u64, Message)>,
    /// Stored messages after `ready` that are not held in memory.
    behind: u64,
    /// Messages after `behind` held in memory only: they arrived after
    /// `durable` was cleared, while the store was still being read back.
    tail: VecDeque<Message>,
    /// Bytes in `staged` and `tail`.
    held_bytes: usize,
    /// The highest id read back or placed in `ready`: the next read of the
    /// store starts above it.
    cursor: Option<u64>,
    /// A read of the store is under way.
    loading: bool,
    /// Some of its messages may be in the store.
    in_store: bool,
    /// The store cannot commit: producers wait (back-pressure).
    pub store_blocked: bool,
    /// For the store, drained by the broker every turn.
    ops: StoreOps,
}

impl QueueCore {
    pub fn new(spec: QueueSpec) -> QueueCore {
        QueueCore {
            spec,
            ready: VecDeque::new(),
            ready_bytes: 0,
            consumers: BTreeMap::new(),
            room: BTreeSet::new(),
            next: 0,
            retired: false,
            counters: Counters::default(),
            staged: VecDeque::new(),
            behind: 0,
            tail: VecDeque::new(),
            held_bytes: 0,
            cursor: None,
            loading: false,
            in_store: false,
            store_blocked: false,
            ops: StoreOps::default(),
        }
    }

    /// Messages waiting for a consumer (in memory, being committed, or in
    /// the store).
    pub fn depth(&self) -> usize {
        self.ready.len() + self.staged.len() + self.tail.len() + self.behind as usize
    }

    /// Messages held in memory: ready, being committed, or after those
    /// only in the store.
    #[cfg(test)]
    pub fn in_memory(&self) -> usize {
        self.ready.len() + self.staged.len() + self.tail.len()
    }

    /// Messages in the store (or on their way there): those after `ready`
    /// and those in memory that have an id.
    pub fn stored(&self) -> u64 {
        let in_memory = self
            .ready
            .iter()
            .chain(self.staged.iter().map(|(_, m)| m))
            .chain(
                self.consumers
                    .values()
                    .flat_map(|c| c.unsettled.iter().map(|f| &f.message)),
            )
            .filter(|m| m.id.is_some())
            .count();
        self.behind + in_memory as u64
    }

    /// Messages delivered and not yet settled.
    pub fn in_flight(&self) -> usize {
        self.consumers.values().map(|c| c.unsettled.len()).sum()
    }

    /// Producers are not read while this holds (back-pressure).
    pub fn is_full(&self) -> bool {
        self.store_blocked
            || self.depth() >= self.spec.capacity as usize
            || self.ready_bytes + self.held_bytes >= MAX_READY_BYTES
    }

    /// Whether paused producers may be read again: the queue is below its
    /// low-water mark, [`RESUME_GAP`] (at most a quarter of `capacity`)
    /// under `capacity`. Resuming at once when a slot frees would cost two
    /// `epoll_ctl` calls and a read per message while a queue stays full.
    pub fn below_low_water(&self) -> bool {
        let capacity = self.spec.capacity as usize;
        let gap = RESUME_GAP.min(capacity / 4);
        !self.is_full() && self.depth() + gap <= capacity
    }

    /// How many more packets of up to `slot` bytes each producers may be
    /// read now: none while the queue [is full](QueueCore::is_full), else
    /// what `capacity` leaves, and no more than fit below
    /// [`MAX_READY_BYTES`] (at least one, as one at a time would read).
    pub fn room(&self, slot: usize) -> usize {
        if self.is_full() {
            return 0;
        }
        let by_count = (self.spec.capacity as usize).saturating_sub(self.depth());
        let free_bytes = MAX_READY_BYTES.saturating_sub(self.ready_bytes + self.held_bytes);
        by_count.min((free_bytes / slot.max(1)).max(1))
    }

    /// Nothing waiting and nothing in flight.
    pub fn is_drained(&self) -> bool {
        self.depth() == 0 && self.consumers.values().all(|c| c.unsettled.is_empty())
    }

    /// Takes what the store must learn (see [`StoreOps`]).
    pub fn take_ops(&mut self) -> StoreOps {
        std::mem::take(&mut self.ops)
    }

    fn forget(&mut self, message: &mut Message) {
        if let Some(id) = message.id.take() {
            self.ops.forget.push(id);
        }
    }

    /// An accepted message that must wait for the commit `gate` before it
    /// is handed out: a durable queue's (with its id), or one that arrived
    /// behind such messages.
    pub fn stage(&mut self, gate: u64, message: Message) {
        self.in_store |= message.id.is_some();
        self.held_bytes += message.bytes.len();
        self.staged.push_back((gate, message));
    }

    /// Whether a message accepted now must be staged rather than pushed:
    /// messages before it wait for a commit or are in the store.
    pub fn must_stage(&self) -> bool {
        self.spec.durable || !self.staged.is_empty() || self.behind > 0
    }

    /// Commits up to `gate` are on disk: the messages staged for them take
    /// their place in the queue. Returns those that leave at once (the
    /// queue was removed meanwhile).
    pub fn committed(&mut self, gate: u64) -> Vec<DeadLetter> {
        let mut dead = Vec::new();
        while self.staged.front().is_some_and(|(g, _)| *g <= gate) {
            let Some((_, message)) = self.staged.pop_front() else {
                break;
            };
            self.held_bytes = self.held_bytes.saturating_sub(message.bytes.len());
            if self.retired {
                dead.extend(self.fail(message, "it was committed after its queue was removed"));
                continue;
            }
            self.place(message);
        }
        dead
    }

    /// A committed message goes to the end of the queue: into `ready`
    /// while nothing of the queue is only in the store and the window has
    /// room, else (durable) into the store only, or (no longer durable)
    /// into `tail`.
    fn place(&mut self, message: Message) {
        if self.behind == 0 && (!self.spec.durable || self.ready.len() < WINDOW) {
            if let Some(id) = message.id {
                self.cursor = Some(self.cursor.map_or(id, |c| c.max(id)));
            }
            self.push(message);
        } else if self.spec.durable && message.id.is_some() {
            self.behind += 1;
        } else {
            self.held_bytes += message.bytes.len();
            self.tail.push_back(message);
        }
    }

    /// The read of the store this queue needs now, if any: (above which
    /// id, at most how many). A durable queue reads a window when its
    /// ready messages run low; one no longer durable reads all it has
    /// there, to hold it in memory.
    pub fn wanted_load(&self) -> Option<(Option<u64>, usize)> {
        if self.behind == 0 || self.loading {
            return None;
        }
        let all = self.behind.min(usize::MAX as u64) as usize;
        if self.retired || !self.spec.durable {
            Some((self.cursor, all))
        } else if self.ready.len() < LOW_WATER {
            Some((self.cursor, all.min(WINDOW)))
        } else {
            None
        }
    }

    pub fn set_loading(&mut self) {
        self.loading = true;
    }

    /// A read of the store ended (`None`: it failed, and is tried again).
    /// `asked`: how many were asked for; fewer means the store has no more.
    /// Returns the messages that leave at once: those delivered
    /// `max_deliveries` times before a restart, or all of a removed queue.
    pub fn loaded(
        &mut self,
        messages: Option<Vec<(u64, u32, Vec<u8>)>>,
        asked: usize,
    ) -> Vec<DeadLetter> {
        self.loading = false;
        let Some(messages) = messages else {
            return Vec::new();
        };
        let got = messages.len();
        let mut dead = Vec::new();
        for (id, attempts, bytes) in messages {
            self.behind = self.behind.saturating_sub(1);
            self.cursor = Some(self.cursor.map_or(id, |c| c.max(id)));
            let message = Message {
                bytes: bytes.into_boxed_slice(),
                deliveries: attempts,
                id: Some(id),
            };
            if self.retired {
                dead.extend(self.fail(message, "it was read back from the store"));
            } else if attempts >= self.spec.max_deliveries {
                let mut message = message;
                self.forget(&mut message);
                self.counters.dead_lettered += 1;
                let reason = format!(
                    "delivered {attempts} times (counting deliveries cut short by a stop of drover)"
                );
                dead.push(DeadLetter { message, reason });
            } else {
                self.push(message);
            }
        }
        if got < asked {
            // The store has no more than this (a read of fewer than were
            // counted): nothing is left to read.
            self.behind = 0;
        }
        if self.behind == 0 {
            while let Some(m) = self.tail.pop_front() {
                self.held_bytes = self.held_bytes.saturating_sub(m.bytes.len());
                if self.retired {
                    dead.extend(self.fail(m, "its queue was removed"));
                } else {
                    self.push(m);
                }
            }
        }
        dead
    }

    /// At start (or when a queue with stored messages is configured): the
    /// queue has `stored` messages in the store, none read yet.
    pub fn adopt_stored(&mut self, stored: u64) {
        self.in_store = true;
        self.behind += stored;
    }

    /// `durable` was set by a reload: every message in memory is stored,
    /// in-flight ones first (they are older), each under a new id from
    /// `next_id`. Returns (id, bytes) to append.
    pub fn store_all(&mut self, next_id: &mut u64) -> Vec<(u64, Vec<u8>)> {
        self.in_store = true;
        let mut out = Vec::new();
        let mut take = |m: &mut Message, ops: &mut StoreOps| {
            if let Some(old) = m.id.take() {
                ops.forget.push(old);
            }
            let id = *next_id;
            *next_id += 1;
            m.id = Some(id);
            out.push((id, m.bytes.to_vec()));
        };
        for c in self.consumers.values_mut() {
            for f in &mut c.unsettled {
                take(&mut f.message, &mut self.ops);
            }
        }
        for m in self.ready.iter_mut() {
            take(m, &mut self.ops);
        }
        for (_, m) in self.staged.iter_mut() {
            take(m, &mut self.ops);
        }
        // `tail` is empty here: it exists only while a queue that is not
        // durable reads its store back, and that read ends first.
        for m in self.tail.iter_mut() {
            take(m, &mut self.ops);
        }
        // (With messages still behind, being read back, their ids are
        // older than these: the read must still find them.)
        if let (Some(last), 0) = (out.last(), self.behind) {
            self.cursor = Some(last.0);
        }
        out
    }

    /// `durable` is cleared and nothing is left only in the store: every
    /// message leaves the store (it stays in memory).
    pub fn unstore_all(&mut self) {
        self.in_store = false;
        let ops = &mut self.ops;
        let mut drop_id = |m: &mut Message| {
            if let Some(id) = m.id.take() {
                ops.forget.push(id);
            }
        };
        for c in self.consumers.values_mut() {
            c.unsettled.iter_mut().for_each(|f| drop_id(&mut f.message));
        }
        self.ready.iter_mut().for_each(&mut drop_id);
        self.staged.iter_mut().for_each(|(_, m)| drop_id(m));
        self.tail.iter_mut().for_each(&mut drop_id);
    }

    /// `durable` was cleared and everything is read back: time for
    /// [`QueueCore::unstore_all`].
    pub fn leaves_store(&self) -> bool {
        !self.spec.durable && !self.retired && self.in_store && self.behind == 0 && !self.loading
    }

    /// A message from a producer (or a dead letter from another queue).
    pub fn push(&mut self, message: Message) {
        self.ready_bytes += message.bytes.len();
        self.ready.push_back(message);
    }

    fn push_front(&mut self, message: Message) {
        self.ready_bytes += message.bytes.len();
        self.ready.push_front(message);
    }

    fn pop_front(&mut self) -> Option<Message> {
        let message = self.ready.pop_front()?;
        self.ready_bytes = self.ready_bytes.saturating_sub(message.bytes.len());
        Some(message)
    }

    /// Takes every message out (when drover exits).
    pub fn drain_all(&mut self) -> Vec<Message> {
        let mut all: Vec<Message> = self
            .consumers
            .values_mut()
            .flat_map(|c| c.unsettled.drain(..).map(|f| f.message))
            .collect();
        all.extend(self.ready.drain(..));
        all.extend(self.staged.drain(..).map(|(_, m)| m));
        all.extend(self.tail.drain(..));
        self.refresh_all();
        self.ready_bytes = 0;
        self.held_bytes = 0;
        all
    }

    /// The queue was removed by a reload: returns its ready messages (for
    /// the dead letters) and keeps only what consumers hold, settleable.
    pub fn retire(&mut self) -> Vec<Message> {
        let mut left = self.retire_keeping_ids();
        for m in &mut left {
            self.forget(m);
        }
        left
    }

    /// [`QueueCore::retire`] for a queue on Redis: the ready messages keep
    /// their ids and nothing is told to forget them (they stay pending in
    /// the stream, for another instance to claim).
    pub fn retire_keeping_ids(&mut self) -> Vec<Message> {
        self.retired = true;
        self.consumers.retain(|_, c| !c.unsettled.is_empty());
        self.refresh_all();
        self.ready_bytes = 0;
        let mut left: Vec<Message> = self.ready.drain(..).collect();
        // Read back from the store before `behind`; what is still only in
        // the store is read back and dead-lettered after this, and what is
        // staged when its commit ends.
        if self.behind == 0 {
            self.held_bytes = self
                .held_bytes
                .saturating_sub(self.tail.iter().map(|m| m.bytes.len()).sum());
            left.extend(self.tail.drain(..));
        }
        left
    }

    /// A queue on Redis: the batch `gate` is in the stream, so the messages
    /// staged for it leave drover (they come back through the stream).
    /// Returns how many.
    pub fn sent(&mut self, gate: u64) -> usize {
        let mut n = 0;
        while self.staged.front().is_some_and(|(g, _)| *g <= gate) {
            if let Some((_, m)) = self.staged.pop_front() {
                self.held_bytes = self.held_bytes.saturating_sub(m.bytes.len());
                n += 1;
            }
        }
        n
    }

    /// Messages the consumers can take now: free prefetch of those not
    /// blocked, less what is ready for them already.
    pub fn wants(&self) -> u64 {
        let prefetch = self.spec.prefetch as usize;
        let free: usize = self
            .room
            .iter()
            .filter_map(|id| self.consumers.get(id))
            .map(|c| prefetch.saturating_sub(c.unsettled.len() + c.reserved))
            .sum();
        free.saturating_sub(self.ready.len()) as u64
    }

    /// Messages accepted and not yet handed on (to the store or Redis).
    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// Messages ready for a consumer in memory.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Merges `newer`, a later incarnation of the same queue, retired too
    /// (removed, added again, removed again), into this retired one.
    /// A consumer of both settles what it got from this one first: it got
    /// those messages earlier.
    pub fn absorb(&mut self, mut newer: QueueCore) {
        self.spec = newer.spec.clone();
        self.counters.add(newer.counters);
        self.staged.append(&mut newer.staged);
        self.tail.append(&mut newer.tail);
        self.held_bytes += newer.held_bytes;
        self.behind += newer.behind;
        // Both read back from the store under one name: from the lower
        // cursor, so that neither's messages are skipped.
        self.cursor = match (self.cursor, newer.cursor) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => None,
        };
        self.loading |= newer.loading;
        self.ops.attempts.append(&mut newer.ops.attempts);
        self.ops.forget.append(&mut newer.ops.forget);
        for (id, mut c) in newer.consumers {
            match self.consumers.get_mut(&id) {
                Some(old) => old.unsettled.append(&mut c.unsettled),
                None => {
                    self.consumers.insert(id, c);
                }
            }
        }
        self.refresh_all();
    }

    /// A reload changed the queue's settings (its `prefetch` among them).
    pub fn set_spec(&mut self, spec: QueueSpec) -> QueueSpec {
        let old = std::mem::replace(&mut self.spec, spec);
        self.refresh_all();
        old
    }

    /// Whether consumer `id` can take a message now, kept in `room`.
    fn refresh(&mut self, id: ConsumerId) {
        let prefetch = self.spec.prefetch as usize;
        match self.consumers.get(&id) {
            Some(c) if !c.blocked && c.unsettled.len() + c.reserved < prefetch => {
                self.room.insert(id);
            }
            _ => {
                self.room.remove(&id);
            }
        }
    }

    fn refresh_all(&mut self) {
        self.room.clear();
        let ids: Vec<ConsumerId> = self.consumers.keys().copied().collect();
        for id in ids {
            self.refresh(id);
        }
    }

    pub fn add_consumer(&mut self, id: ConsumerId) {
        if self.consumers.contains_key(&id) {
            return;
        }
        self.consumers.insert(
            id,
            Consumer {
                unsettled: VecDeque::new(),
                blocked: false,
                reserved: 0,
            },
        );
        self.refresh(id);
    }

    /// A consumer went away: its unsettled messages are failed deliveries
    /// (at-least-once), or lost with it (at-most-once, counted in `lost`).
    pub fn remove_consumer(&mut self, id: ConsumerId, why: &str) -> Vec<DeadLetter> {
        let Some(consumer) = self.consumers.remove(&id) else {
            return Vec::new();
        };
        self.room.remove(&id);
        if self.spec.delivery == Delivery::AtMostOnce {
            let lost = consumer.unsettled.len();
            if lost > 0 {
                self.counters.lost += lost as u64;
                tracing::warn!(
                    "queue {}: {} handed to a consumer that exited before reading them are lost (at-most-once)",
                    self.spec.name,
                    plural(lost, "message", "messages")
                );
            }
            return Vec::new();
        }
        let mut dead = Vec::new();
        // Back to the head in their original order: push the newest first.
        for f in consumer.unsettled.into_iter().rev() {
            dead.extend(self.fail(f.message, why));
        }
        // Pushed newest first; the log and the records read better oldest first.
        dead.reverse();
        dead
    }

    /// A failed delivery: back to the head, or to the dead letters after
    /// the `max_deliveries`-th (at once when the queue is retired).
    fn fail(&mut self, mut message: Message, why: &str) -> Option<DeadLetter> {
        if self.retired || message.deliveries >= self.spec.max_deliveries {
            // It leaves the queue, and the store.
            self.forget(&mut message);
        }
        if self.retired {
            self.counters.dead_lettered += 1;
            let reason = format!("its queue was removed from the config; {why}");
            Some(DeadLetter { message, reason })
        } else if message.deliveries >= self.spec.max_deliveries {
            self.counters.dead_lettered += 1;
            let reason = format!("delivered {} times; {why}", message.deliveries);
            Some(DeadLetter { message, reason })
        } else {
            self.push_front(message);
            None
        }
    }

    /// The next consumer with room, round robin, and the message for it.
    /// The message counts against the consumer's `prefetch` until it is
    /// [`delivered`](QueueCore::delivered), found
    /// [`undeliverable`](QueueCore::undeliverable) or
    /// [`dropped`](QueueCore::dropped).
    pub fn take_for_delivery(&mut self) -> Option<(ConsumerId, Message)> {
        if self.ready.is_empty() {
            return None;
        }
        let id = self
            .room
            .range(self.next..)
            .next()
            .or_else(|| self.room.iter().next())
            .copied()?;
        self.next = id.wrapping_add(1);
        let message = self.pop_front()?;
        self.reserve(id, true);
        Some((id, message))
    }

    /// Counts one message taken for `id` (true) or no longer (false).
    fn reserve(&mut self, id: ConsumerId, taken: bool) {
        if let Some(c) = self.consumers.get_mut(&id) {
            c.reserved = if taken {
                c.reserved + 1
            } else {
                c.reserved.saturating_sub(1)
            };
        }
        self.refresh(id);
    }

    /// A message taken for `id` that no consumer could ever take (larger
    /// than a socket can hold): it leaves the queue (and the store, or its
    /// stream) for the dead letters, and `id` keeps its room.
    pub fn dropped(&mut self, id: ConsumerId, message: &mut Message) {
        self.reserve(id, false);
        self.forget(message);
    }

    /// The message was written to the consumer's socket at `now` (`None`:
    /// the clock was not read because the queue has no `ack_timeout`).
    pub fn delivered(&mut self, id: ConsumerId, mut message: Message, now: Option<Instant>) {
        if message.deliveries > 0 {
            self.counters.redelivered += 1;
        }
        message.deliveries += 1;
        self.counters.delivered += 1;
        if let Some(c) = self.consumers.get_mut(&id) {
            c.reserved = c.reserved.saturating_sub(1);
        }
        if let Some(id) = message.id {
            if self.spec.delivery == Delivery::AtMostOnce {
                // Handed over is settled: it leaves the store.
                self.forget(&mut message);
            } else {
                self.ops.attempts.push((id, message.deliveries));
            }
        }
        match self.consumers.get_mut(&id) {
            Some(c) => c.unsettled.push_back(InFlight {
                message,
                since: now,
            }),
            // Cannot happen (the id came from take_for_delivery just now);
            // if it did, the message must not vanish.
            None => self.push_front(message),
        }
        self.refresh(id);
    }

    /// At-most-once: the consumer has read everything it was handed.
    pub fn all_read(&mut self, id: ConsumerId) {
        if let Some(c) = self.consumers.get_mut(&id) {
            c.unsettled.clear();
        }
        self.refresh(id);
    }

    /// The consumer's socket was full: the message goes back to the head and
    /// the consumer gets nothing until it is writable again.
    pub fn undeliverable(&mut self, id: ConsumerId, message: Message) {
        self.push_front(message);
        if let Some(c) = self.consumers.get_mut(&id) {
            c.reserved = c.reserved.saturating_sub(1);
        }
        self.set_blocked(id, true);
    }

    pub fn is_blocked(&self, id: ConsumerId) -> bool {
        self.consumers.get(&id).is_some_and(|c| c.blocked)
    }

    pub fn set_blocked(&mut self, id: ConsumerId, blocked: bool) {
        if let Some(c) = self.consumers.get_mut(&id) {
            c.blocked = blocked;
        }
        self.refresh(id);
    }

    /// True when `id` holds messages of this queue.
    pub fn holds(&self, id: ConsumerId) -> bool {
        self.consumers
            .get(&id)
            .is_some_and(|c| !c.unsettled.is_empty())
    }

    /// `ack` (true) or `nack` (false) settles the consumer's oldest
    /// unsettled message. Returns an error text for a settle with nothing
    /// to settle, or a dead letter when a nack used up the deliveries.
    pub fn settle(
        &mut self,
        id: ConsumerId,
        ack: bool,
    ) -> Result<Option<DeadLetter>, &'static str> {
        if self.spec.delivery == Delivery::AtMostOnce {
            return Err("this queue is at-most-once: acks are not expected");
        }
        let c = self.consumers.get_mut(&id).ok_or("unknown consumer")?;
        let f = c.unsettled.pop_front().ok_or("nothing to settle")?;
        if self.retired && c.unsettled.is_empty() {
            // It will get nothing more from here.
            self.consumers.remove(&id);
        }
        self.refresh(id);
        if ack {
            self.counters.acked += 1;
            let mut message = f.message;
            self.forget(&mut message);
            Ok(None)
        } else {
            Ok(self.fail(f.message, "its consumer sent nack"))
        }
    }

    /// When `id` will have held its oldest message for `ack_timeout`, if
    /// the queue has one (at-least-once only: at-most-once has no acks).
    pub fn ack_deadline(&self, id: ConsumerId) -> Option<Instant> {
        let timeout = self.ack_timeout()?;
        let c = self.consumers.get(&id)?;
        let since = c.unsettled.front()?.since?;
        // A deadline past the clock's range never comes.
        since.checked_add(timeout)
    }

    /// `ack_timeout` when it applies to this queue.
    pub fn ack_timeout(&self) -> Option<Duration> {
        let t = self.spec.ack_timeout;
        (t > Duration::ZERO && self.spec.delivery == Delivery::AtLeastOnce).then_some(t)
    }

    /// Gives messages delivered while the queue had no `ack_timeout` a
    /// delivery time (`now`), so that one set by a reload applies to them.
    pub fn stamp_unsettled(&mut self, now: Instant) {
        for c in self.consumers.values_mut() {
            for f in &mut c.unsettled {
                f.since.get_or_insert(now);
            }
        }
    }

    /// How many messages `id` holds.
    pub fn held_by(&self, id: ConsumerId) -> usize {
        self.consumers.get(&id).map_or(0, |c| c.unsettled.len())
    }

    /// The consumers holding messages.
    pub fn holders(&self) -> impl Iterator<Item = ConsumerId> + '_ {
        self.consumers
            .iter()
            .filter(|(_, c)| !c.unsettled.is_empty())
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::names::QueueName;

    fn spec(delivery: Delivery, prefetch: u32, max_deliveries: u32) -> QueueSpec {
        QueueSpec {
            name: QueueName::new("jobs").unwrap(),
            capacity: 3,
            max_message_bytes: 100,
            delivery,
            prefetch,
            max_deliveries,
            dead_letter: None,
            ack_timeout: std::time::Duration::ZERO,
            confirm: false,
            durable: false,
            redis: None,
            file: "t.toml".into(),
        }
    }

    fn msg(s: &str) -> Message {
        Message::new(s.as_bytes())
    }

    fn text(m: &Message) -> &str {
        std::str::from_utf8(&m.bytes).unwrap()
    }

    /// The consumers with room, by a scan: what `room` must always hold.
    fn scanned_room(q: &QueueCore) -> BTreeSet<ConsumerId> {
        let prefetch = q.spec.prefetch as usize;
        q.consumers
            .iter()
            .filter(|(_, c)| !c.blocked && c.unsettled.len() + c.reserved < prefetch)
            .map(|(id, _)| *id)
            .collect()
    }

    #[test]
    fn the_room_index_matches_a_scan_through_random_events() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut s = spec(Delivery::AtLeastOnce, 2, 3);
        s.capacity = 1000;
        let mut q = QueueCore::new(s);
        let mut handed = [0u32; 8];
        for _ in 0..5000 {
            let id = rnd(8);
            match rnd(8) {
                0 => q.add_consumer(id),
                1 => {
                    q.remove_consumer(id, "gone");
                }
                2 => q.set_blocked(id, rnd(2) == 0),
                3 => {
                    let _ = q.settle(id, rnd(3) != 0);
                }
                4 => {
                    let mut spec = q.spec.clone();
                    spec.prefetch = 1 + rnd(3) as u32;
                    q.set_spec(spec);
                }
                _ => {
                    q.push(msg("m"));
                    let room = scanned_room(&q);
                    if let Some((to, m)) = q.take_for_delivery() {
                        assert!(room.contains(&to), "handed to a consumer without room");
                        handed[to as usize] += 1;
                        q.delivered(to, m, None);
                    }
                }
            }
            assert_eq!(q.room, scanned_room(&q));
        }
        assert!(
            handed.iter().filter(|&&n| n > 0).count() > 1,
            "round robin reached several consumers"
        );
    }

    #[test]
    fn hands_out_round_robin_within_prefetch() {
        let mut q = QueueCore::new(spec(Delivery::AtLeastOnce, 1, 5));
        for s in ["a", "b", "c"] {
            q.push(msg(s));
        }
        assert!(q.is_full());
        q.add_consumer(1);
        q.add_consumer(2);
        let (c1, m1) = q.take_for_delivery().unwrap();
        q.delivered(c1, m1, None);
        let (c2, m2) = q.take_for_delivery().unwrap();
        q.delivered(c2, m2, None);
        assert_eq!((c1, c2), (1, 2));
        assert_eq!(q.take_for_delivery(), None, "prefetch 1 each, both busy");
        assert_eq!(q.in_flight(), 2);
        q.settle(2, true).unwrap();
        let (c, m) = q.take_for_delivery().unwrap();
        assert_eq!((c, text(&m)), (2, "c"));
    }

    #[test]
    fn a_dead_consumer_returns_its_messages_to_the_head_in_order() {
        let mut q = QueueCore::new(spec(Delivery::AtLeastOnce, 2, 5));
        for s in ["a", "b", "c"] {
            q.push(msg(s));
        }
        q.add_consumer(1);
        for _ in 0..2 {
            let (c, m) = q.take_for_delivery().unwrap();
            q.delivered(c, m, None);
        }
        assert!(q.remove_consumer(1, "it exited").is_empty());
        q.add_consumer(2);
        let (_, m) = q.take_for_delivery().unwrap();
        assert_eq!((text(&m), m.deliveries), ("a", 1));
        q.delivered(2, m, None);
        assert_eq!(q.counters.redelivered, 1);
    }

    #[test]
    fn the_max_deliveries_th_failure_dead_letters() {
        let mut q = QueueCore::new(spec(Delivery::AtLeastOnce, 1, 2));
        q.push(msg("poison"));
        q.add_consumer(1);
        let (c, m) = q.take_for_delivery().unwrap();
        q.delivered(c, m, None);
        assert_eq!(q.settle(1, false), Ok(None), "first failure: requeued");
        let (c, m) = q.take_for_delivery().unwrap();
        q.delivered(c, m, None);
        let dead = q.settle(1, false).unwrap().expect("second failure");
        assert_eq!(text(&dead.message), "poison");
        assert_eq!(dead.message.deliveries, 2);
        assert!(dead.reason.contains("delivered 2 times"), "{}", dead.reason);
        assert_eq!(q.counters.dead_lettered, 1);
        assert!(q.is_drained());
    }

    #[test]
    fn at_most_once_hands_out_prefetch_unread_messages_and_counts_losses() {
        let mut q = QueueCore::new(spec(Delivery::AtMostOnce, 2, 5));
        for s in ["a", "b", "c"] {
            q.push(msg(s));
        }
        q.add_consumer(1);
        for _ in 0..2 {
            let (c, m) = q.take_for_delivery().unwrap();
            q.delivered(c, m, None);
        }
        assert_eq!(q.take_for_delivery(), None, "two unread: prefetch reached");
        assert_eq!(q.in_flight(), 2);
        q.all_read(1);
        let (c, m) = q.take_for_delivery().unwrap();
        q.delivered(c, m, None);
        assert!(q.settle(1, true).is_err(), "no acks in at-most-once");
        assert!(
            q.remove_consumer(1, "it exited").is_empty(),
            "never redelivered"
        );
        assert_eq!(q.counters.lost, 1);
        assert_eq!(q.counters.redelivered, 0);
    }

    #[test]
    fn a_full_socket_blocks_only_that_consumer() {
        let mut q = QueueCore::new(spec(Delivery::AtLeastOnce, 5, 5));
        q.push(msg("a"));
        q.push(msg("b"));
        q.add_consumer(1);
        q.add_consumer(2);
        let (c, m) = q.take_for_delivery().unwrap();
        assert_eq!(c, 1);
        q.undeliverable(c, m);
        let (c, m) = q.take_for_delivery().unwrap();
        assert_eq!(
            (c, text(&m)),
            (2, "a"),
            "the head goes to the next consumer"
        );
        q.set_blocked(1, false);
    }

    #[test]
    fn a_retired_queue_dead_letters_every_failure_at_once() {
        let mut q = QueueCore::new(spec(Delivery::AtLeastOnce, 2, 5));
        for s in ["a", "b", "c"] {
            q.push(msg(s));
        }
        q.add_consumer(1);
        q.add_consumer(2);
        let (c, m) = q.take_for_delivery().unwrap();
        q.delivered(c, m, None);
        let left = q.retire();
        assert_eq!(left.iter().map(text).collect::<Vec<_>>(), ["b", "c"]);
        assert!(q.holds(1) && !q.holds(2));
        assert_eq!(
            q.take_for_delivery(),
            None,
            "a retired queue hands out nothing"
        );
        let dead = q
            .settle(1, false)
            .unwrap()
            .expect("no queue to return it to");
        assert_eq!(text(&dead.message), "a");
        assert!(dead.reason.contains("removed"), "{}", dead.reason);
        assert!(q.is_drained());
        assert_eq!(q.settle(1, true), Err("unknown consumer"));
    }

    #[test]
    fn ready_bytes_bound_a_queue_whatever_its_capacity() {
        let mut s = spec(Delivery::AtLeastOnce, 1, 5);
        s.capacity = u32::MAX;
        let mut q = QueueCore::new(s);
        let big = vec![0u8; MAX_READY_BYTES / 4];
        for _ in 0..3 {
            q.push(Message::new(&big));
        }
        assert!(!q.is_full());
        q.push(Message::new(&big));
        assert!(q.is_full());
        q.add_consumer(1);
        let (c, m) = q.take_for_delivery().unwrap();
        assert!(!q.is_full(), "room again once one is handed out");
        q.delivered(c, m, None);
    }

    #[test]
    fn the_ack_deadline_is_the_oldest_unsettled_message_s() {
        let mut s = spec(Delivery::AtLeastOnce, 2, 5);
        s.ack_timeout = Duration::from_secs(10);
        let mut q = QueueCore::new(s);
        let t0 = Instant::now();
        q.push(msg("a"));
        q.push(msg("b"));
        q.add_consumer(1);
        let (c, m) = q.take_for_delivery().unwrap();
        q.delivered(c, m, Some(t0));
        let (c, m) = q.take_for_delivery().unwrap();
        q.delivered(c, m, Some(t0 + Duration::from_secs(3)));
        assert_eq!(q.ack_deadline(1), Some(t0 + Duration::from_secs(10)));
        q.settle(1, true).unwrap();
        assert_eq!(q.ack_deadline(1), Some(t0 + Duration::from_secs(13)));
        q.settle(1, true).unwrap();
        assert_eq!(q.ack_deadline(1), None);
        q.spec.delivery = Delivery::AtMostOnce;
        assert_eq!(
            q.ack_timeout(),
            None,
            "at-most-once has no acks to wait for"
        );
    }
}
