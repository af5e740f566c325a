//! Where dead letters go: the source queue's `dead_letter` queue while it
//! has room (a full one does not grow), else the source's record file
//! under `state_dir`, written by the [`super::recorder`] thread (which
//! stops at `dead_letter_max_bytes`), else — while that thread is too far
//! behind — nowhere but the counters and the log. Lines about single dead
//! letters are rate limited; a lasting condition (a full queue, a writer
//! behind) is logged once per window, with a count at its end.

use std::fmt::Write as _;
use std::time::Instant;

use super::Broker;
use super::deadletter;
use super::queue::DeadLetter;
use super::recorder::{RECORDER_BYTES, Refused};
use crate::config::names::QueueName;
use crate::text::wording::plural;

/// Where one dead letter went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Routed {
    Queue(QueueName),
    /// Handed to the record writer.
    File,
    /// Counted, not recorded: the record writer is behind (or missing).
    Dropped,
}

/// Where a batch of dead letters went, for one log line.
#[derive(Debug, Default)]
pub(super) struct Tally {
    to_queue: Option<(QueueName, usize)>,
    recorded: usize,
    dropped: usize,
}

impl Tally {
    pub(super) fn add(&mut self, routed: Routed) {
        match routed {
            Routed::Queue(q) => self.to_queue.get_or_insert((q, 0)).1 += 1,
            Routed::File => self.recorded += 1,
            Routed::Dropped => self.dropped += 1,
        }
    }

    /// "3 to queue dead, 2 recorded in FILE".
    pub(super) fn describe(&self, file: &std::path::Path) -> String {
        let mut parts = Vec::new();
        if let Some((q, n)) = &self.to_queue {
            parts.push(format!("{n} to queue {q}"));
        }
        if self.recorded > 0 {
            parts.push(format!("{} recorded in {}", self.recorded, file.display()));
        }
        if self.dropped > 0 {
            parts.push(format!(
                "{} not recorded (the dead-letter writer is behind)",
                self.dropped
            ));
        }
        let mut out = String::new();
        for (i, p) in parts.iter().enumerate() {
            let _ = write!(out, "{}{p}", if i == 0 { "" } else { ", " });
        }
        out
    }
}

impl Broker {
    /// Sends one dead letter of `source` on its way, with a (rate-limited)
    /// log line naming where it went and why. The caller has counted it.
    pub(super) fn dead_letter(
        &mut self,
        source: &QueueName,
        target: Option<&QueueName>,
        letter: DeadLetter,
    ) {
        let now = Instant::now();
        let n = letter.message.bytes.len();
        let key = format!("queue {source}: dead letters");
        // The line is decided first: the letter moves on below.
        let line = self.lines.allow(&key, now).then(|| letter.reason.clone());
        let routed = self.route(source, target, letter, now);
        let Some(reason) = line else {
            return;
        };
        match routed {
            Routed::Queue(t) => tracing::warn!(
                "queue {source}: message of {n} bytes dead-lettered to queue {t}: {reason}"
            ),
            Routed::File => tracing::warn!(
                "queue {source}: message of {n} bytes dead-lettered to {}: {reason}",
                deadletter::path(&self.state_dir, source).display()
            ),
            Routed::Dropped => tracing::warn!(
                "queue {source}: message of {n} bytes dead-lettered, counted but not recorded: {reason}"
            ),
        }
    }

    /// Puts one dead letter where it belongs (see the module documentation)
    /// without a line of its own; lasting conditions are logged here.
    pub(super) fn route(
        &mut self,
        source: &QueueName,
        target: Option<&QueueName>,
        letter: DeadLetter,
        now: Instant,
    ) -> Routed {
        if let Some(t) = target
            && let Some(q) = self.queues.get_mut(t)
        {
            if !q.is_full() {
                let t = t.clone();
                self.enqueue(&t, &letter.message.bytes);
                self.to_deliver.push(t.clone());
                return Routed::Queue(t);
            }
            let key = format!("queue {source}: dead-letter queue {t} is full");
            if self.bursts.allow(&key, now) {
                tracing::warn!(
                    "{key} ({}); dead letters are recorded in {} until it has room",
                    plural(q.depth(), "message", "messages"),
                    deadletter::path(&self.state_dir, source).display()
                );
            }
        }
        match self.recorder.record(source, letter) {
            Ok(()) => Routed::File,
            Err(Refused::Behind) => {
                let key = format!("queue {source}: the dead-letter writer is behind");
                if self.bursts.allow(&key, now) {
                    let waiting = self.recorder.queued_bytes() >> 20;
                    let most = RECORDER_BYTES >> 20;
                    tracing::warn!(
                        "{key} ({waiting} MiB of records wait for the disk under {}, at most {most} MiB); \
                         dead letters are counted in dead_lettered, not recorded",
                        self.state_dir.display()
                    );
                }
                Routed::Dropped
            }
            // Logged once by the recorder.
            Err(Refused::NoThread) => Routed::Dropped,
        }
    }
}
