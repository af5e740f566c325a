//! Reloads: new queues appear, changed settings apply in place (messages
//! stay), and a removed queue is retired (see [`super::queue`]): what it
//! held goes to its dead-letter destination at once, with one log line,
//! and what its consumers hold stays settleable until they settle it or
//! exit. A queue that is added back while old consumers still hold
//! messages of its previous incarnation is a new queue; those consumers
//! consume from it too, after settling what they held.

use std::time::Instant;

use nix::sys::epoll::Epoll;

use super::letters::Tally;
use super::queue::{DeadLetter, Message, QueueCore};
use super::{Broker, Direction, deadletter, scratch_len};
use crate::config::names::QueueName;
use crate::config::{Config, QueueSpec};
use crate::text::wording::plural;

/// What a reload did to the queues, for its summary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueueChanges {
    pub added: Vec<QueueName>,
    pub removed: Vec<QueueName>,
    /// Queues kept with a new setting (the file that defines a queue is
    /// not a setting).
    pub changed: Vec<QueueName>,
}

/// Whether two definitions of a queue keep it in the same place: both
/// local, or both on the same stream of the same server.
fn same_place(a: &QueueSpec, b: &QueueSpec) -> bool {
    match (&a.redis, &b.redis) {
        (None, None) => true,
        (Some(x), Some(y)) => x.target.server() == y.target.server() && x.stream == y.stream,
        _ => false,
    }
}

/// Where a queue lives, for a log line.
fn place(spec: &QueueSpec) -> String {
    match &spec.redis {
        None => "this drover".into(),
        Some(r) => format!("Redis {} stream {}", r.target, r.stream),
    }
}

/// Whether two definitions of a queue set the same; moving a queue to
/// another file changes nothing.
fn same_settings(a: &QueueSpec, b: &QueueSpec) -> bool {
    let moved = QueueSpec {
        file: b.file.clone(),
        ..a.clone()
    };
    moved == *b
}

impl Broker {
    /// Takes a reloaded config (see the module documentation) and says
    /// which queues it added, removed and changed.
    /// What [`Self::apply`] would report for `config`, changing nothing
    /// (`drover reload --dry-run`).
    pub fn plan(&self, config: &Config) -> QueueChanges {
        let mut plan = QueueChanges::default();
        for (name, spec) in &config.queues {
            match self.queues.get(name) {
                None => plan.added.push(name.clone()),
                Some(q) if !same_place(&q.spec, spec) => {
                    plan.added.push(name.clone());
                    plan.changed.push(name.clone());
                }
                Some(q) if !same_settings(&q.spec, spec) => plan.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        plan.removed = self
            .queues
            .keys()
            .filter(|q| !config.queues.contains_key(*q))
            .cloned()
            .collect();
        plan
    }

    pub fn apply(&mut self, config: &Config, epoll: &Epoll) -> QueueChanges {
        let now = Instant::now();
        let mut added = Vec::new();
        let mut changed = Vec::new();
        let mut retimed = Vec::new();
        let mut settings = Vec::new();
        let mut stored = Vec::new();
        let mut moved = Vec::new();
        for (name, spec) in &config.queues {
            // Another backend (local, or another stream or server): the
            // old queue is retired and a new one takes its place.
            let elsewhere = self
                .queues
                .get(name)
                .is_some_and(|q| !same_place(&q.spec, spec));
            if elsewhere && let Some(old) = self.queues.remove(name) {
                tracing::info!(
                    "queue {name} moves from {} to {}",
                    place(&old.spec),
                    place(spec)
                );
                let left = self.retire(epoll, name, old, now, false);
                self.queues
                    .insert(name.clone(), QueueCore::new(spec.clone()));
                added.push(name.clone());
                settings.push(name.clone());
                moved.push((name.clone(), left));
                continue;
            }
            match self.queues.get_mut(name) {
                Some(q) => {
                    let old = q.set_spec(spec.clone());
                    if old.durable != spec.durable {
                        stored.push((name.clone(), Some(old.durable)));
                    }
                    if !same_settings(&old, spec) {
                        settings.push(name.clone());
                    }
                    if old.delivery != spec.delivery {
                        changed.push(name.clone());
                    }
                    if old.ack_timeout != spec.ack_timeout || old.delivery != spec.delivery {
                        q.stamp_unsettled(now);
                        retimed.push(name.clone());
                    }
                }
                None => {
                    let q = QueueCore::new(spec.clone());
                    self.queues.insert(name.clone(), q);
                    added.push(name.clone());
                    stored.push((name.clone(), None));
                }
            }
        }
        for (name, was) in stored {
            self.durable_changed(&name, was);
        }
        self.start_remotes();
        // What a moved queue held and had not handed out follows it.
        for (name, left) in moved {
            for m in left {
                self.enqueue(&name, &m.bytes);
            }
        }
        let removed: Vec<QueueName> = self
            .queues
            .keys()
            .filter(|q| !config.queues.contains_key(*q))
            .cloned()
            .collect();
        for name in &removed {
            if let Some(q) = self.queues.remove(name) {
                self.retire(epoll, name, q, now, true);
            }
        }
        self.scratch_len = scratch_len(&self.queues);
        if self.scratch.len() > self.scratch_len {
            // Freed, not kept at the size of a queue that is gone.
            self.scratch = Vec::new();
        }
        self.rebind(epoll, &added, &changed);
        for name in &retimed {
            self.rearm(name);
        }
        for name in &added {
            self.gc_retired(name);
        }
        for queue in config.queues.keys() {
            self.resume_producers(epoll, queue);
            self.to_deliver.push(queue.clone());
        }
        self.run_deliveries(epoll);
        QueueChanges {
            added,
            removed,
            changed: settings,
        }
    }

    /// Retires the removed queue `name` (see the module documentation).
    /// `dead_letter`: what it held goes to its dead letters (a removed
    /// queue), else it is returned (a queue moved to another backend takes
    /// it). A queue on Redis returns nothing: what it read and had not
    /// handed out stays pending in its stream.
    fn retire(
        &mut self,
        epoll: &Epoll,
        name: &QueueName,
        mut q: QueueCore,
        now: Instant,
        dead_letter: bool,
    ) -> Vec<Message> {
        let left = match self.retire_remote(name, &mut q) {
            Some(kept) => {
                if kept > 0 {
                    tracing::info!(
                        "queue {name} left Redis with {} read and not handed out: they stay \
                         pending in the stream for another instance to claim after claim_idle",
                        plural(kept, "message", "messages")
                    );
                }
                Vec::new()
            }
            None => q.retire(),
        };
        let (left, keep) = if dead_letter {
            (left, Vec::new())
        } else {
            (Vec::new(), left)
        };
        let held = q.in_flight();
        q.counters.dead_lettered += left.len() as u64;
        let target = q.spec.dead_letter.clone();
        match self.retired.get_mut(name) {
            Some(older) => older.absorb(q),
            None => {
                self.retired.insert(name.clone(), q);
            }
        }
        if !left.is_empty() {
            let count = left.len();
            let mut tally = Tally::default();
            for message in left {
                let letter = DeadLetter {
                    message,
                    reason: "its queue was removed from the config".into(),
                };
                tally.add(self.route(name, target.as_ref(), letter, now));
            }
            let file = deadletter::path(&self.state_dir, name);
            tracing::warn!(
                "queue {name} was removed while holding {}; dead-lettering them: {}",
                plural(count, "message", "messages"),
                tally.describe(&file)
            );
        }
        if held > 0 {
            tracing::warn!(
                "queue {name} was removed while its consumers held {}: an ack drops \
                 them, a nack or the consumer's exit dead-letters them",
                plural(held, "message", "messages")
            );
        }
        // Its producers are read (into dead letters) from now on.
        self.exited.remove(name);
        for token in self.paused.remove(name).unwrap_or_default() {
            self.refresh_interest(epoll, token);
        }
        self.gc_retired(name);
        keep
    }

    /// After a reload: consumers of a queue added back consume from it;
    /// every endpoint of a queue whose delivery mode changed gets the
    /// interest the new mode needs. One pass over the endpoints, and only
    /// when there is something to do.
    fn rebind(&mut self, epoll: &Epoll, added: &[QueueName], changed: &[QueueName]) {
        let names = |ep: &super::Endpoint| added.contains(&ep.queue) || changed.contains(&ep.queue);
        if added.iter().all(|q| !self.named.contains_key(q)) && changed.is_empty() {
            return;
        }
        let tokens: Vec<u64> = self
            .endpoints
            .iter()
            .filter(|(_, ep)| names(ep))
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            let Some(ep) = self.endpoints.get(&token) else {
                continue;
            };
            if ep.direction == Direction::In
                && added.contains(&ep.queue)
                && let Some(q) = self.queues.get_mut(&ep.queue)
            {
                super::endpoint::fit_send_buffer(&ep.fd, &q.spec);
                q.add_consumer(token);
            }
            self.refresh_interest(epoll, token);
        }
    }

    /// `name`'s ack_timeout changed: its holders' deadlines are armed anew
    /// (an armed time may be later than a shorter timeout's deadline).
    fn rearm(&mut self, name: &QueueName) {
        let Some(q) = self.queues.get(name) else {
            return;
        };
        let due: Vec<_> = q
            .holders()
            .filter_map(|id| q.ack_deadline(id).map(|at| (id, at)))
            .collect();
        for (id, at) in due {
            self.timers.arm(id, at);
        }
    }

    /// Forgets the retired `name` once nothing needs it: its consumers hold
    /// nothing more, and no endpoint produces into it (or the queue is back
    /// and takes their messages).
    pub(super) fn gc_retired(&mut self, name: &QueueName) {
        let Some(r) = self.retired.get(name) else {
            return;
        };
        let named = self.named.contains_key(name) && !self.queues.contains_key(name);
        if r.is_drained() && !named {
            tracing::debug!("queue {name} (removed): nothing left in flight");
            if let Some(mut r) = self.retired.remove(name) {
                let ops = r.take_ops();
                self.last_ops(name, ops);
            }
        }
    }
}
