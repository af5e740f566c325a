//! Durable queues: the broker's side of the store (`drover-store`).
//!
//! One store per drover, opened when the config first has a durable queue.
//! The loop never waits for it: every turn, what the queues changed goes
//! to the store thread as one [`Batch`] ([`Broker::end_turn`]), and the
//! thread's eventfd brings the results back ([`Broker::on_store`]).
//!
//! - **Accepting.** A producer's message to a durable queue gets an id,
//!   goes into this turn's batch and is *staged* in its queue with the
//!   turn's gate. Staged messages count toward `capacity` but are not
//!   handed out, and their producers' `ok` waits behind the same gate (see
//!   [`super::confirm`]). When the batch's commit is on disk, the gate
//!   opens: the messages take their place in the queue, the `ok`s go out.
//!   Batches commit in order, so one fsync serves a whole turn (and more:
//!   the store thread folds every batch queued during an fsync into the
//!   next one).
//! - **Handing out and settling.** A delivery writes the message's attempt
//!   count (at-least-once) or deletes it (at-most-once); an `ack` or a
//!   dead letter deletes it. These ride the next batch: a crash before
//!   that commit redelivers, never loses.
//! - **Memory.** A queue holds at most [`WINDOW`] ready messages in memory
//!   beyond what consumers hold; later ones stay in the store only and are
//!   read back a window at a time when the ready ones run low, so a million
//!   stored messages cost disk, not memory, and a restart serves at once.
//! - **Restart.** What the store holds is read back per queue in id
//!   (arrival) order; a message's stored attempt count is its failed
//!   deliveries (an attempt that was under way when drover stopped is one),
//!   so `max_deliveries` holds across restarts. A stored queue that the
//!   config does not have is kept untouched, with a warning, until a
//!   config has it again.
//! - **Reload.** Setting `durable` stores every message the queue holds,
//!   in order; clearing it reads everything back into memory and then
//!   deletes it from the store. A removed durable queue dead-letters what
//!   it holds, including what is only in the store.
//! - **Failures.** A failed commit (disk full, permission denied, I/O
//!   error) is kept and submitted again with backoff; meanwhile producers
//!   of durable queues wait (back-pressure), nothing accepted is lost, and
//!   `status` shows the error. Nothing else of drover waits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_store::{Batch, Recovered, Store, StoreError, Ticket};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

use super::Broker;
use super::confirm::Gate;
use super::queue::{DeadLetter, Message, QueueCore, StoreOps, WINDOW};
use crate::config::Config;
use crate::config::names::QueueName;
use crate::text::wording::plural;

/// The first wait before a failed commit or read is tried again; it
/// doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long drover waits at exit for its last commits.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// The open store and what is under way in it.
#[derive(Debug)]
pub(super) struct Durable {
    pub(super) store: Store,
    /// The next message id (one counter per store).
    next_id: u64,
    /// What this turn changed.
    batch: Batch,
    /// Something waits for this turn's gate even if the batch is empty.
    used: bool,
    /// The gate of this turn's batch: gates count batches from 1.
    gate: u64,
    /// Submitted batches not known to be on disk, in gate order.
    pub(super) pending: VecDeque<Pending>,
    /// Reads of the store under way.
    loads: HashMap<Ticket, Load>,
    /// The last failure, while the store is failing (for `status`).
    error: Option<String>,
    /// When to try again what failed, and the wait after that.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Stored queues the config does not have, with their message counts.
    unconfigured: BTreeMap<String, u64>,
}

#[derive(Debug)]
pub(super) struct Pending {
    ticket: Ticket,
    gate: u64,
    pub(super) batch: Arc<Batch>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Submitted,
    Done,
    Failed,
}

#[derive(Debug)]
struct Load {
    queue: QueueName,
    /// For the removed incarnation of the queue (see `super::retire`).
    retired: bool,
    asked: usize,
}

impl Durable {
    /// Adds what a queue told the store to this turn's batch.
    fn record(&mut self, name: &QueueName, ops: StoreOps) {
        for (id, attempts) in ops.attempts {
            self.batch.attempts.push((name.to_string(), id, attempts));
        }
        for id in ops.forget {
            self.batch.delete.push((name.to_string(), id));
        }
    }
}

/// Opens the queue store under `state_dir` (creating it if need be) and
/// reads the first messages of each queue: the wait for the disk, done
/// wherever that may take long (before the loop runs, or on the config
/// reader's thread).
pub fn open_store_files(state_dir: &Path) -> Result<(Store, Recovered), StoreError> {
    Store::open_paged(state_dir, WINDOW)
}

impl Broker {
    /// A queue is about to be forgotten (a removed one that has nothing
    /// left): what it still had to tell the store goes into this turn's
    /// batch first.
    pub(super) fn last_ops(&mut self, name: &QueueName, ops: StoreOps) {
        if self.old_remotes.contains_key(name) {
            self.close_old_remotes(name, &ops);
            return;
        }
        if let Some(d) = self.durable.as_mut() {
            d.record(name, ops);
        }
    }

    /// Opens the store under `state_dir` if `config` has a durable queue
    /// and it is not open yet, and puts back what it holds. This waits for
    /// the disk (at start; a reload that adds the first durable queue has
    /// the config reader open it, see [`open_store_files`], and hands it to
    /// [`Broker::adopt_store`]). An error (another drover holds the store,
    /// the file cannot be written or is damaged) leaves the broker as it
    /// was. `token`: the loop's token for the store's eventfd (see
    /// [`Broker::on_store`]).
    pub fn open_store(
        &mut self,
        config: &Config,
        state_dir: &Path,
        epoll: &Epoll,
        token: u64,
    ) -> Result<(), StoreError> {
        if self.durable.is_some() || !config.queues.values().any(|q| q.durable) {
            return Ok(());
        }
        let opened = open_store_files(state_dir)?;
        self.adopt_store(opened, epoll, token)
    }

    /// Whether no queue store is open (none was needed yet).
    pub fn has_no_store(&self) -> bool {
        self.durable.is_none()
    }

    /// Takes the store [`open_store_files`] opened, and puts back what it
    /// holds. A store is open already: `opened` is closed again.
    pub fn adopt_store(
        &mut self,
        opened: (Store, Recovered),
        epoll: &Epoll,
        token: u64,
    ) -> Result<(), StoreError> {
        if self.durable.is_some() {
            return Ok(());
        }
        let (store, recovered) = opened;
        let notify = EpollEvent::new(EpollFlags::EPOLLIN, token);
        if let Err(e) = epoll.add(store.notify_fd(), notify) {
            return Err(StoreError::Io {
                op: "watching",
                path: store.path().to_path_buf(),
                detail: e.to_string(),
            });
        }
        let total: u64 = recovered.stored.values().sum();
        tracing::info!(
            "queue store {}: {} stored",
            store.path().display(),
            plural(total as usize, "message", "messages")
        );
        self.durable = Some(Durable {
            store,
            next_id: recovered.next_id,
            batch: Batch::default(),
            used: false,
            gate: 1,
            pending: VecDeque::new(),
            loads: HashMap::new(),
            error: None,
            retry_at: None,
            backoff: FIRST_BACKOFF,
            unconfigured: BTreeMap::new(),
        });
        let mut heads = recovered.queues;
        for (name, count) in recovered.stored {
            let head = heads.remove(&name).unwrap_or_default();
            let known = QueueName::new(&name)
                .ok()
                .filter(|q| self.queues.contains_key(q));
            let Some(queue) = known else {
                tracing::warn!(
                    "queue store: queue {name} has {} stored but is not in the config; \
                     they are kept until a config defines it again",
                    plural(count as usize, "message", "messages")
                );
                if let Some(d) = self.durable.as_mut() {
                    d.unconfigured.insert(name, count);
                }
                continue;
            };
            let asked = head.len();
            let messages = head
                .into_iter()
                .map(|m| (m.id, m.attempts, m.bytes))
                .collect();
            let dead = match self.queues.get_mut(&queue) {
                Some(q) => {
                    q.adopt_stored(count);
                    q.set_loading();
                    q.loaded(Some(messages), asked.max(WINDOW.min(count as usize)))
                }
                None => Vec::new(),
            };
            tracing::info!(
                "queue {queue}: {} back from the store",
                plural(count as usize, "message", "messages")
            );
            self.dead_letters(&queue, dead);
            self.to_deliver.push(queue);
        }
        Ok(())
    }

    /// A reload: `durable` set on a live queue (store what it holds) or a
    /// queue added that the store has messages of (adopt them). Clearing
    /// `durable` needs nothing here: [`Broker::end_turn`] reads the store
    /// back and then empties it.
    pub(super) fn durable_changed(&mut self, name: &QueueName, was: Option<bool>) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        let Some(q) = self.queues.get_mut(name) else {
            return;
        };
        if was.is_none()
            && let Some(count) = d.unconfigured.remove(name.as_str())
        {
            q.adopt_stored(count);
            tracing::info!(
                "queue {name}: {} in the store from before belong to it again",
                plural(count as usize, "message", "messages")
            );
        }
        if was == Some(false) && q.spec.durable {
            let appended = q.store_all(&mut d.next_id);
            if !appended.is_empty() {
                tracing::info!(
                    "queue {name} is durable now: its {} are being stored",
                    plural(appended.len(), "message", "messages")
                );
            }
            for (id, bytes) in appended {
                d.batch.append.push((name.to_string(), id, bytes));
            }
            d.used = true;
        }
    }

    /// Puts a message into `queue`: at once, or (durable, or behind
    /// messages that wait) staged for this turn's commit. Returns the gate
    /// a producer's `ok` waits for.
    pub(super) fn enqueue(&mut self, name: &QueueName, bytes: &[u8]) -> Gate {
        if let Some(gate) = self.enqueue_remote(name, bytes) {
            return gate;
        }
        let Some(q) = self.queues.get_mut(name) else {
            return Gate::OPEN;
        };
        let mut message = Message::new(bytes);
        match self.durable.as_mut() {
            Some(d) if q.must_stage() => {
                d.used = true;
                let gate = d.gate;
                if q.spec.durable {
                    let id = d.next_id;
                    d.next_id += 1;
                    d.batch.append.push((name.to_string(), id, bytes.to_vec()));
                    message.id = Some(id);
                    q.stage(gate, message);
                    Gate::store(gate)
                } else {
                    // In memory, but after messages that wait for a commit.
                    q.stage(gate, message);
                    Gate::OPEN
                }
            }
            _ => {
                q.push(message);
                Gate::OPEN
            }
        }
    }

    /// The end of a loop turn: what the queues changed goes to Redis and
    /// to the store.
    pub fn end_turn(&mut self) {
        self.end_turn_remotes();
        self.end_turn_store();
    }

    /// What the queues changed goes to the store as one batch, and queues
    /// that need messages read back get a read.
    fn end_turn_store(&mut self) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        let cores = self.queues.iter_mut().chain(self.retired.iter_mut());
        for (name, q) in cores.filter(|(_, q)| q.spec.redis.is_none()) {
            if q.leaves_store() {
                q.unstore_all();
                tracing::info!("queue {name} is no longer durable: it has left the store");
            }
            d.record(name, q.take_ops());
        }
        if d.used || !d.batch.is_empty() {
            let mut batch = std::mem::take(&mut d.batch);
            // Messages it deletes may have been dead-lettered to the
            // record file: the records come first.
            batch.before = self.recorder.barrier().map(drover_store::Before);
            let batch = Arc::new(batch);
            let ticket = d.store.submit(Arc::clone(&batch));
            d.pending.push_back(Pending {
                ticket,
                gate: d.gate,
                batch,
                state: State::Submitted,
            });
            d.gate += 1;
            d.used = false;
        }
        if d.retry_at.is_some() {
            return; // reads wait with the failed commits
        }
        let live = self.queues.iter_mut().map(|(n, q)| (n, q, false));
        let retired = self.retired.iter_mut().map(|(n, q)| (n, q, true));
        for (name, q, retired) in live.chain(retired) {
            if let Some((after, limit)) = q.wanted_load() {
                let ticket = d.store.load(name.as_str(), after, limit);
                d.loads.insert(
                    ticket,
                    Load {
                        queue: name.clone(),
                        retired,
                        asked: limit,
                    },
                );
                q.set_loading();
            }
        }
    }

    /// The store's eventfd is readable: commits and reads have ended.
    pub fn on_store(&mut self, epoll: &Epoll) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        let now = Instant::now();
        let completions = d.store.completions();
        let loads = d.store.loaded();
        let mut failure: Option<StoreError> = None;
        for (ticket, result) in completions {
            let Some(p) = d.pending.iter_mut().find(|p| p.ticket == ticket) else {
                continue;
            };
            match result {
                Ok(()) => p.state = State::Done,
                Err(e) => {
                    p.state = State::Failed;
                    failure = Some(e);
                }
            }
        }
        let mut read_back = Vec::new();
        for (ticket, result) in loads {
            let Some(load) = d.loads.remove(&ticket) else {
                continue;
            };
            match result {
                Ok(messages) => read_back.push((load, Some(messages))),
                Err(e) => {
                    failure = Some(e);
                    read_back.push((load, None));
                }
            }
        }
        let mut committed = None;
        while d.pending.front().is_some_and(|p| p.state == State::Done) {
            committed = d.pending.pop_front().map(|p| p.gate);
        }
        if let Some(e) = failure {
            self.store_failed(&e, now);
        } else if self.durable.as_ref().is_some_and(|d| {
            d.error.is_some() && d.pending.iter().all(|p| p.state != State::Failed)
        }) {
            self.store_recovered();
        }
        for (load, messages) in read_back {
            let cores = if load.retired {
                &mut self.retired
            } else {
                &mut self.queues
            };
            let Some(q) = cores.get_mut(&load.queue) else {
                continue;
            };
            let messages = messages.map(|ms| {
                ms.into_iter()
                    .map(|m| (m.id, m.attempts, m.bytes))
                    .collect()
            });
            let dead = q.loaded(messages, load.asked);
            self.dead_letters(&load.queue, dead);
            self.to_deliver.push(load.queue.clone());
        }
        if let Some(gate) = committed {
            self.gate_opened(epoll, gate);
        }
        self.run_deliveries(epoll);
    }

    /// Commits up to `gate` are on disk.
    fn gate_opened(&mut self, epoll: &Epoll, gate: u64) {
        self.committed.set(0, gate);
        let mut dead = Vec::new();
        for (name, q) in self.queues.iter_mut().chain(self.retired.iter_mut()) {
            let letters = q.committed(gate);
            if !letters.is_empty() {
                dead.push((name.clone(), letters));
            }
        }
        for (name, letters) in dead {
            self.dead_letters(&name, letters);
        }
        self.to_deliver.extend(self.queues.keys().cloned());
        let retired: Vec<QueueName> = self.retired.keys().cloned().collect();
        for name in retired {
            self.gc_retired(&name);
        }
        self.flush_gated(epoll);
    }

    /// A gate opened: the producers whose replies waited send what they may.
    pub(super) fn flush_gated(&mut self, epoll: &Epoll) {
        let waiting: Vec<u64> = std::mem::take(&mut self.gated).into_iter().collect();
        for token in waiting {
            self.flush_replies(token);
            if self.awaits_commit(token) {
                self.gated.insert(token);
            }
            self.refresh_interest(epoll, token);
        }
    }

    /// A commit or a read failed: logged (once per kind of failure), the
    /// producers of durable queues wait, and it is tried again later.
    fn store_failed(&mut self, e: &StoreError, now: Instant) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        let text = e.to_string();
        if d.error.as_deref() != Some(text.as_str()) {
            tracing::error!(
                "queue store: {text}; producers of durable queues wait, nothing accepted is lost; \
                 trying again in {:?}",
                d.backoff
            );
        }
        d.error = Some(text);
        d.retry_at.get_or_insert(now + d.backoff);
        d.backoff = (d.backoff * 2).min(MAX_BACKOFF);
        for q in self.queues.values_mut().filter(|q| q.spec.durable) {
            q.store_blocked = true;
        }
    }

    fn store_recovered(&mut self) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        if d.error.take().is_some() {
            tracing::info!("queue store: commits work again");
        }
        d.backoff = FIRST_BACKOFF;
        for q in self.queues.values_mut() {
            q.store_blocked = false;
        }
    }

    /// When failed commits or reads are tried again.
    pub(super) fn store_deadline(&self) -> Option<Instant> {
        self.durable.as_ref().and_then(|d| d.retry_at)
    }

    /// Submits again what failed, in order (every operation is
    /// idempotent), and lets reads be tried again.
    pub(super) fn store_retry(&mut self, epoll: &Epoll, now: Instant) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        if d.retry_at.is_none_or(|t| t > now) {
            return;
        }
        d.retry_at = None;
        for p in d.pending.iter_mut().filter(|p| p.state == State::Failed) {
            p.ticket = d.store.submit(Arc::clone(&p.batch));
            p.state = State::Submitted;
        }
        if d.pending.is_empty() && d.error.is_some() {
            // Only a read failed: it is tried again below; producers may
            // go on meanwhile.
            self.store_recovered();
        }
        for name in self.queues.keys().cloned().collect::<Vec<_>>() {
            self.resume_producers(epoll, &name);
        }
        self.end_turn_store();
    }

    /// Routes dead letters of `source`.
    pub(super) fn dead_letters(&mut self, source: &QueueName, dead: Vec<DeadLetter>) {
        if dead.is_empty() {
            return;
        }
        let target = self
            .queues
            .get(source)
            .or_else(|| self.retired.get(source))
            .and_then(|q| q.spec.dead_letter.clone());
        for letter in dead {
            self.dead_letter(source, target.as_ref(), letter);
        }
    }

    /// `status` fields of a queue: (stored, store error).
    pub(super) fn store_status(&self, q: &QueueCore) -> (u64, Option<String>) {
        match &self.durable {
            Some(_) if q.spec.redis.is_some() => (0, None),
            Some(d) if q.spec.durable || q.stored() > 0 => (q.stored(), d.error.clone()),
            _ => (0, None),
        }
    }

    /// At exit: commits what the last turns changed (waiting at most
    /// [`CLOSE_WAIT`]) and closes the store. Durable messages stay in it.
    pub fn close_store(&mut self) {
        self.end_turn_store();
        let Some(d) = self.durable.take() else {
            return;
        };
        let path = d.store.path().to_path_buf();
        let failed_before = d.pending.iter().any(|p| p.state == State::Failed);
        match d.store.close(CLOSE_WAIT) {
            Ok(done) => {
                if let Some((_, Err(e))) = done.iter().find(|(_, r)| r.is_err()) {
                    tracing::error!(
                        "queue store {}: the last commit failed ({e}): messages accepted in \
                         drover's last moments may be missing from it (none was confirmed)",
                        path.display()
                    );
                } else if failed_before {
                    tracing::error!(
                        "queue store {}: commits were failing at exit: messages accepted \
                         since the failure are not stored (none was confirmed)",
                        path.display()
                    );
                }
            }
            Err(e) => tracing::error!("queue store {}: {e}", path.display()),
        }
    }
}
