//! Ack deadlines: the moment a consumer will have held its oldest unsettled
//! message for its queue's `ack_timeout`.
//!
//! Each consumer has at most one *armed* time, never later than its real
//! deadline, in a min-heap. Nothing is updated when a consumer settles a
//! message: its oldest message then is a later one, so the armed time can
//! only be early. When an armed time comes, the broker recomputes the real
//! deadline and either arms again (the consumer settled in the meantime)
//! or declares the consumer hung. So a busy consumer costs one heap entry
//! and at most one wake-up per `ack_timeout`, not one per message, and the
//! loop never scans messages to find the next deadline.
//!
//! Entries of disarmed or re-armed consumers stay in the heap until they
//! surface (lazy deletion); the heap is rebuilt when they outnumber the
//! live ones, so its size stays proportional to the consumers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use super::queue::ConsumerId;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct AckTimers {
    heap: BinaryHeap<Reverse<(Instant, ConsumerId)>>,
    armed: HashMap<ConsumerId, Instant>,
}

impl AckTimers {
    /// Makes sure `id` is looked at by `at`: a no-op when it already is.
    pub fn arm(&mut self, id: ConsumerId, at: Instant) {
        if self.armed.get(&id).is_some_and(|t| *t <= at) {
            return;
        }
        self.armed.insert(id, at);
        self.heap.push(Reverse((at, id)));
        if self.heap.len() > 2 * self.armed.len() + 64 {
            self.heap = self
                .armed
                .iter()
                .map(|(id, at)| Reverse((*at, *id)))
                .collect();
        }
    }

    /// `id` is gone or holds nothing that can time out.
    pub fn disarm(&mut self, id: ConsumerId) {
        self.armed.remove(&id);
    }

    /// The earliest armed time (possibly of a stale entry: then the wake-up
    /// just drops it).
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// The consumers whose armed time has come by `now`; they are disarmed.
    pub fn due(&mut self, now: Instant) -> Vec<ConsumerId> {
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.armed.get(&id) == Some(&at) {
                self.armed.remove(&id);
                due.push(id);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_earlier_time_wins_and_stale_entries_are_dropped() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut timers = AckTimers::default();
        timers.arm(1, t0 + 5 * s);
        timers.arm(1, t0 + 9 * s);
        assert_eq!(timers.next(), Some(t0 + 5 * s), "a later arm is a no-op");
        timers.arm(1, t0 + 2 * s);
        timers.arm(2, t0 + 3 * s);
        assert_eq!(timers.due(t0 + s), Vec::<u64>::new());
        assert_eq!(timers.due(t0 + 3 * s), vec![1, 2]);
        assert_eq!(timers.due(t0 + 10 * s), Vec::<u64>::new(), "stale");
        assert_eq!(timers.next(), None);
        timers.arm(3, t0 + s);
        timers.disarm(3);
        assert!(timers.due(t0 + 10 * s).is_empty());
    }

    #[test]
    fn the_heap_stays_proportional_to_the_armed_consumers() {
        let t0 = Instant::now();
        let mut timers = AckTimers::default();
        for i in 0..10_000u64 {
            timers.arm(7, t0 + Duration::from_secs(10_000 - i));
        }
        assert!(timers.heap.len() <= 2 + 64 + 1, "{}", timers.heap.len());
        assert_eq!(timers.due(t0 + Duration::from_secs(1)), vec![7]);
    }
}
