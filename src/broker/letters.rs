//! Where dead letters go: the source queue's `dead_letter` queue while it
//! has room (a full one does not grow), else the source's record file
//! under `state_dir` while that is below `dead_letter_max_bytes`, else
//! nowhere but the counters and the log. Lines about single dead letters
//! are rate limited; a lasting condition (a full queue, a full or
//! unwritable file) is logged once per window, with a count at its end.

use std::fmt::Write as _;
use std::time::Instant;

use super::Broker;
use super::deadletter::{self, Appended};
use super::queue::DeadLetter;
use crate::config::names::QueueName;
use crate::text::wording::plural;

/// Where one dead letter went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Routed {
    Queue(QueueName),
    File,
    /// The record file is at `dead_letter_max_bytes`: counted, not written.
    OverLimit,
    /// The record file could not be written: counted, not written.
    Failed,
}

/// Where a batch of dead letters went, for one log line.
#[derive(Debug, Default)]
pub(super) struct Tally {
    to_queue: Option<(QueueName, usize)>,
    recorded: usize,
    over_limit: usize,
    failed: usize,
}

impl Tally {
    pub(super) fn add(&mut self, routed: Routed) {
        match routed {
            Routed::Queue(q) => self.to_queue.get_or_insert((q, 0)).1 += 1,
            Routed::File => self.recorded += 1,
            Routed::OverLimit => self.over_limit += 1,
            Routed::Failed => self.failed += 1,
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
        if self.over_limit > 0 {
            parts.push(format!(
                "{} not recorded ({} is at dead_letter_max_bytes)",
                self.over_limit,
                file.display()
            ));
        }
        if self.failed > 0 {
            parts.push(format!(
                "{} not recorded ({} cannot be written)",
                self.failed,
                file.display()
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
        letter: &DeadLetter,
    ) {
        let now = Instant::now();
        let routed = self.route(source, target, letter, now);
        let key = format!("queue {source}: dead letters");
        if !self.lines.allow(&key, now) {
            return;
        }
        let n = letter.message.bytes.len();
        let reason = &letter.reason;
        let file = deadletter::path(&self.state_dir, source);
        match routed {
            Routed::Queue(t) => tracing::warn!(
                "queue {source}: message of {n} bytes dead-lettered to queue {t}: {reason}"
            ),
            Routed::File => tracing::warn!(
                "queue {source}: message of {n} bytes dead-lettered to {}: {reason}",
                file.display()
            ),
            Routed::OverLimit | Routed::Failed => tracing::warn!(
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
        letter: &DeadLetter,
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
        let max = self.dead_letter_max_bytes;
        match deadletter::append(&self.state_dir, source, letter, max) {
            Ok(Appended::Written) => Routed::File,
            Ok(Appended::OverLimit) => {
                let file = deadletter::path(&self.state_dir, source);
                let key = format!(
                    "queue {source}: dead-letter file {} is full",
                    file.display()
                );
                if self.bursts.allow(&key, now) {
                    tracing::warn!(
                        "{key} (dead_letter_max_bytes = {max}); dead letters are counted in dead_lettered, not recorded"
                    );
                }
                Routed::OverLimit
            }
            Err(e) => {
                let file = deadletter::path(&self.state_dir, source);
                let key = format!(
                    "queue {source}: cannot record dead letters in {}",
                    file.display()
                );
                if self.bursts.allow(&key, now) {
                    tracing::error!("{key}: {e}; they are counted in dead_lettered, not recorded");
                }
                Routed::Failed
            }
        }
    }
}
