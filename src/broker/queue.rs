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

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{Delivery, QueueSpec};
use crate::text::wording::plural;

/// Identifies a consumer endpoint (its event-loop token).
pub type ConsumerId = u64;

/// Bytes of ready messages a queue holds before its producers are paused,
/// whatever `capacity` says: `capacity` alone would let 10,000 messages of
/// 4 MiB each pile up in drover.
pub const MAX_READY_BYTES: usize = 64 << 20;

/// A message and how many times it has been delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub bytes: Box<[u8]>,
    pub deliveries: u32,
}

impl Message {
    pub fn new(bytes: &[u8]) -> Message {
        Message {
            bytes: bytes.into(),
            deliveries: 0,
        }
    }
}

/// A message leaving its queue for the dead letters, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message: Message,
    pub reason: String,
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
}

impl Counters {
    fn add(&mut self, other: Counters) {
        self.delivered += other.delivered;
        self.acked += other.acked;
        self.redelivered += other.redelivered;
        self.dead_lettered += other.dead_lettered;
        self.lost += other.lost;
        self.refused += other.refused;
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
    id: ConsumerId,
    /// Handed over and not settled, oldest first: not yet acked
    /// (at-least-once), or not yet read from the socket (at-most-once).
    unsettled: VecDeque<InFlight>,
    /// Its socket is full; no hand-out until it drains.
    blocked: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct QueueCore {
    pub spec: QueueSpec,
    ready: VecDeque<Message>,
    /// Bytes of the messages in `ready`.
    ready_bytes: usize,
    consumers: Vec<Consumer>,
    next: usize,
    /// Removed from the config by a reload (see the module documentation).
    retired: bool,
    pub counters: Counters,
}

impl QueueCore {
    pub fn new(spec: QueueSpec) -> QueueCore {
        QueueCore {
            spec,
            ready: VecDeque::new(),
            ready_bytes: 0,
            consumers: Vec::new(),
            next: 0,
            retired: false,
            counters: Counters::default(),
        }
    }

    /// Messages waiting for a consumer.
    pub fn depth(&self) -> usize {
        self.ready.len()
    }

    /// Messages delivered and not yet settled.
    pub fn in_flight(&self) -> usize {
        self.consumers.iter().map(|c| c.unsettled.len()).sum()
    }

    /// Producers are not read while this holds (back-pressure).
    pub fn is_full(&self) -> bool {
        self.ready.len() >= self.spec.capacity as usize || self.ready_bytes >= MAX_READY_BYTES
    }

    /// Nothing waiting and nothing in flight.
    pub fn is_drained(&self) -> bool {
        self.ready.is_empty() && self.consumers.iter().all(|c| c.unsettled.is_empty())
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
            .iter_mut()
            .flat_map(|c| c.unsettled.drain(..).map(|f| f.message))
            .collect();
        all.extend(self.ready.drain(..));
        self.ready_bytes = 0;
        all
    }

    /// The queue was removed by a reload: returns its ready messages (for
    /// the dead letters) and keeps only what consumers hold, settleable.
    pub fn retire(&mut self) -> Vec<Message> {
        self.retired = true;
        self.consumers.retain(|c| !c.unsettled.is_empty());
        self.next = 0;
        self.ready_bytes = 0;
        self.ready.drain(..).collect()
    }

    /// Merges `newer`, a later incarnation of the same queue, retired too
    /// (removed, added again, removed again), into this retired one.
    /// A consumer of both settles what it got from this one first: it got
    /// those messages earlier.
    pub fn absorb(&mut self, mut newer: QueueCore) {
        self.spec = newer.spec.clone();
        self.counters.add(newer.counters);
        for mut c in newer.consumers.drain(..) {
            match self.consumers.iter_mut().find(|o| o.id == c.id) {
                Some(old) => old.unsettled.append(&mut c.unsettled),
                None => self.consumers.push(c),
            }
        }
    }

    pub fn add_consumer(&mut self, id: ConsumerId) {
        if self.consumers.iter().any(|c| c.id == id) {
            return;
        }
        self.consumers.push(Consumer {
            id,
            unsettled: VecDeque::new(),
            blocked: false,
        });
    }

    /// A consumer went away: its unsettled messages are failed deliveries
    /// (at-least-once), or lost with it (at-most-once, counted in `lost`).
    pub fn remove_consumer(&mut self, id: ConsumerId, why: &str) -> Vec<DeadLetter> {
        let Some(pos) = self.consumers.iter().position(|c| c.id == id) else {
            return Vec::new();
        };
        let consumer = self.consumers.remove(pos);
        if self.next > pos {
            self.next -= 1;
        }
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
    fn fail(&mut self, message: Message, why: &str) -> Option<DeadLetter> {
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
    pub fn take_for_delivery(&mut self) -> Option<(ConsumerId, Message)> {
        if self.ready.is_empty() || self.consumers.is_empty() {
            return None;
        }
        let prefetch = self.spec.prefetch as usize;
        let n = self.consumers.len();
        for step in 0..n {
            let i = (self.next + step) % n;
            let Some(c) = self.consumers.get(i) else {
                break;
            };
            if c.blocked || c.unsettled.len() >= prefetch {
                continue;
            }
            let id = c.id;
            self.next = (i + 1) % n;
            return self.pop_front().map(|m| (id, m));
        }
        None
    }

    /// The message was written to the consumer's socket at `now` (`None`:
    /// the clock was not read because the queue has no `ack_timeout`).
    pub fn delivered(&mut self, id: ConsumerId, mut message: Message, now: Option<Instant>) {
        if message.deliveries > 0 {
            self.counters.redelivered += 1;
        }
        message.deliveries += 1;
        self.counters.delivered += 1;
        match self.consumers.iter_mut().find(|c| c.id == id) {
            Some(c) => c.unsettled.push_back(InFlight {
                message,
                since: now,
            }),
            // Cannot happen (the id came from take_for_delivery just now);
            // if it did, the message must not vanish.
            None => self.push_front(message),
        }
    }

    /// At-most-once: the consumer has read everything it was handed.
    pub fn all_read(&mut self, id: ConsumerId) {
        if let Some(c) = self.consumers.iter_mut().find(|c| c.id == id) {
            c.unsettled.clear();
        }
    }

    /// The consumer's socket was full: the message goes back to the head and
    /// the consumer gets nothing until it is writable again.
    pub fn undeliverable(&mut self, id: ConsumerId, message: Message) {
        self.push_front(message);
        self.set_blocked(id, true);
    }

    pub fn is_blocked(&self, id: ConsumerId) -> bool {
        self.consumers.iter().any(|c| c.id == id && c.blocked)
    }

    pub fn set_blocked(&mut self, id: ConsumerId, blocked: bool) {
        if let Some(c) = self.consumers.iter_mut().find(|c| c.id == id) {
            c.blocked = blocked;
        }
    }

    /// True when `id` holds messages of this queue.
    pub fn holds(&self, id: ConsumerId) -> bool {
        self.consumers
            .iter()
            .any(|c| c.id == id && !c.unsettled.is_empty())
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
        let c = self
            .consumers
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or("unknown consumer")?;
        let f = c.unsettled.pop_front().ok_or("nothing to settle")?;
        if self.retired && c.unsettled.is_empty() {
            // It will get nothing more from here.
            self.consumers.retain(|c| c.id != id);
        }
        if ack {
            self.counters.acked += 1;
            Ok(None)
        } else {
            Ok(self.fail(f.message, "its consumer sent nack"))
        }
    }

    /// When `id` will have held its oldest message for `ack_timeout`, if
    /// the queue has one (at-least-once only: at-most-once has no acks).
    pub fn ack_deadline(&self, id: ConsumerId) -> Option<Instant> {
        let timeout = self.ack_timeout()?;
        let c = self.consumers.iter().find(|c| c.id == id)?;
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
        for c in &mut self.consumers {
            for f in &mut c.unsettled {
                f.since.get_or_insert(now);
            }
        }
    }

    /// How many messages `id` holds.
    pub fn held_by(&self, id: ConsumerId) -> usize {
        self.consumers
            .iter()
            .find(|c| c.id == id)
            .map_or(0, |c| c.unsettled.len())
    }

    /// The consumers holding messages.
    pub fn holders(&self) -> impl Iterator<Item = ConsumerId> + '_ {
        self.consumers
            .iter()
            .filter(|c| !c.unsettled.is_empty())
            .map(|c| c.id)
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
            file: "t.toml".into(),
        }
    }

    fn msg(s: &str) -> Message {
        Message::new(s.as_bytes())
    }

    fn text(m: &Message) -> &str {
        std::str::from_utf8(&m.bytes).unwrap()
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
