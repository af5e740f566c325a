//! drover's durable queue store.
//!
//! All `durable = true` queues of one drover live in one SQLite file,
//! `<state_dir>/queues.sqlite` (WAL mode, `synchronous = FULL`, so a
//! returned commit has been fsynced), guarded by `<state_dir>/queues.lock`.
//! `bench/store/README.md` says why SQLite and not redb.
//!
//! # Threads and wake-ups
//!
//! The supervisor is a single-threaded epoll loop that must never wait for
//! a disk. [`Store::open`] reads what is stored (that one wait happens at
//! start, before the loop runs) and starts **one store thread** that owns
//! the SQLite connection. The loop hands it [`Batch`]es with
//! [`Store::submit`], which only pushes onto a channel and never blocks.
//! When a commit has finished the thread writes to an eventfd,
//! [`Store::notify_fd`]; the loop watches it with epoll and collects the
//! results with [`Store::completions`].
//!
//! # Group commit
//!
//! The thread takes every batch queued since its last commit and applies
//! them, in submission order, as **one transaction with one fsync**. The
//! loop submits one batch per turn (everything read from producers, every
//! ack); while a commit's fsync runs, the next turns' batches queue up and
//! go together in the next transaction. [`Store::stats`] counts
//! transactions and batches.
//!
//! # Failed commits and idempotent resubmission
//!
//! A commit that fails (disk full, permission denied, I/O error) is rolled
//! back and fails every ticket of its transaction with a typed
//! [`StoreError`]; what was committed before is untouched and the store
//! takes the next batch as usual. A failed ticket means "not known to be
//! stored", not "not stored": after a failed fsync the data may still reach
//! the disk. Every operation is therefore idempotent, and the caller simply
//! resubmits the same batch: an append of an id that is stored replaces its
//! queue and bytes and keeps its attempt count, deleting an id that is not
//! stored is no error, setting attempts is absolute.
//!
//! # Recovery
//!
//! [`Store::open`] returns [`Recovered`]: every stored message, per queue,
//! in id order (ids are assigned by the caller from one counter per store,
//! so id order is arrival order), with its attempt count. `attempts`
//! counts deliveries *started* (the caller writes it when it delivers), and
//! a message is deleted when acked, so after a restart every attempt of a
//! stored message ended without an ack: the failed-delivery count of each
//! recovered message is its `attempts`. That makes `max_deliveries` hold
//! across restarts, so a poison message cannot survive restarts forever.
//! [`Recovered::next_id`] is above every id ever appended (not just those
//! still stored).
//!
//! # Fork safety
//!
//! The supervisor forks (to start children, and the fork server). A fork
//! of a process with a second thread copies only the forking thread: any
//! lock the store thread held (the allocator's, SQLite's, a channel's)
//! stays locked forever in the child. The child must therefore only do
//! async-signal-safe work and exec, as drover's fork+exec path does; it
//! must never touch the store. Every descriptor the store opens (the
//! SQLite file and WAL, the lock file, the eventfd) is `O_CLOEXEC`, so no
//! exec'd child keeps them; a child forked and *not* exec'd would keep the
//! lock's open file description, and with it the lock, for its whole life,
//! so anything long-lived that forks without exec must be forked before
//! [`Store::open`].
//!
//! # Errors
//!
//! The thread never panics on an I/O error; a panic inside the engine is
//! caught, reported as [`StoreError::Panicked`] for that transaction's
//! tickets, and the thread goes on.

mod db;
mod error;
mod lock;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};

pub use db::STORE_FILE;
pub use error::StoreError;
pub use lock::LOCK_FILE;

/// A queue's name, as in the configuration.
pub type QueueName = String;

/// One batch of changes: everything one loop turn has to make durable.
///
/// Within a batch, changes apply in this order: `append`, `attempts`,
/// `delete`, `drop_queue`. Batches apply in submission order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Messages to store: queue, id, bytes. Ids come from one counter per
    /// store (start it at [`Recovered::next_id`]) and must be below 2^63.
    /// Appending a stored id replaces its queue and bytes (resubmission).
    pub append: Vec<(QueueName, u64, Vec<u8>)>,
    /// Sets the attempt count (deliveries started) of stored messages;
    /// ids not stored are ignored.
    pub attempts: Vec<(QueueName, u64, u32)>,
    /// Removes acked messages; ids not stored are ignored.
    pub delete: Vec<(QueueName, u64)>,
    /// Removes every message of these queues (a queue removed from the
    /// configuration, or no longer durable).
    pub drop_queue: Vec<QueueName>,
    /// Work outside the store that must be done before this batch is
    /// committed (dead-letter records of the messages it deletes): the
    /// store thread calls it, and waits for it, before the commit.
    pub before: Option<Before>,
}

/// A wait the store thread runs before committing a batch; see
/// [`Batch::before`]. Two are equal when they are the same function.
#[derive(Clone)]
pub struct Before(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Before {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Before(..)")
    }
}

impl PartialEq for Before {
    fn eq(&self, other: &Before) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Before {}

impl Batch {
    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.append.is_empty()
            && self.attempts.is_empty()
            && self.delete.is_empty()
            && self.drop_queue.is_empty()
    }
}

/// A stored message, as recovered at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The id given at append.
    pub id: u64,
    /// The message.
    pub bytes: Vec<u8>,
    /// Deliveries started and not acked: its failed-delivery count.
    pub attempts: u32,
}

/// What is stored, as read at open: each queue's first messages (all of
/// them with [`Store::open`], the first page with [`Store::open_paged`])
/// and how many it has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Per queue, its first messages in id (arrival) order.
    pub queues: BTreeMap<QueueName, Vec<StoredMessage>>,
    /// Per queue, how many messages it has stored (read or not).
    pub stored: BTreeMap<QueueName, u64>,
    /// The first id never used: above every id ever appended.
    pub next_id: u64,
}

/// Names one submitted batch; tickets increase in submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// Counters of the store thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Transactions attempted (committed or failed): one fsync each.
    pub transactions: u64,
    /// Batches those transactions carried.
    pub batches: u64,
    /// Transactions that failed.
    pub failures: u64,
}

/// What a submission asks the thread.
enum Request {
    Commit(Ticket, Arc<Batch>),
    Load(Ticket, Load),
}

/// A read of stored messages (see [`Store::load`]).
#[derive(Debug)]
struct Load {
    queue: QueueName,
    after: Option<u64>,
    limit: usize,
}

/// A finished [`Store::load`]: the messages read, or why not.
pub type Loaded = (Ticket, Result<Vec<StoredMessage>, StoreError>);

/// A ticket whose commit has ended, and how: `Ok` (durable) or the error.
pub type Completion = (Ticket, Result<(), StoreError>);

/// State shared by the store and its thread.
#[derive(Debug)]
struct Shared {
    notify: EventFd,
    transactions: AtomicU64,
    batches: AtomicU64,
    failures: AtomicU64,
    /// While true the thread waits before collecting batches, so that
    /// batches pile up (tests; see [`Store::pause`]).
    paused: Mutex<bool>,
    resume: Condvar,
}

/// Returned by [`Store::pause`]: the store thread resumes when it is dropped.
#[doc(hidden)]
#[derive(Debug)]
pub struct Paused {
    shared: Arc<Shared>,
}

impl Drop for Paused {
    fn drop(&mut self) {
        *self
            .shared
            .paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
        self.shared.resume.notify_all();
    }
}

/// The open queue store: the lock, and the thread that writes.
///
/// Dropping it without [`Store::close`] lets the thread commit what was
/// submitted and exit on its own, without waiting for it.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    tx: Option<Sender<Request>>,
    rx: Receiver<Completion>,
    loaded_rx: Receiver<Loaded>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    next_ticket: u64,
    /// Completions made here (the thread was gone at submit).
    local: Vec<Completion>,
    local_loaded: Vec<Loaded>,
}

impl Store {
    /// Opens (creating if need be) `<state_dir>/queues.sqlite`, taking an
    /// exclusive lock (`flock` on `<state_dir>/queues.lock`, which holds
    /// the holder's PID: a second drover gets [`StoreError::Locked`] naming
    /// it), checks the file, reads everything stored and starts the store
    /// thread. `state_dir` is created if missing.
    ///
    /// This waits for the disk: call it before the event loop runs.
    pub fn open(state_dir: &Path) -> Result<(Store, Recovered), StoreError> {
        Store::open_paged(state_dir, usize::MAX)
    }

    /// As [`Store::open`], but reads at most the first `page` messages of
    /// each queue (the rest with [`Store::load`]), so that opening a large
    /// store costs neither the time nor the memory of reading all of it.
    pub fn open_paged(state_dir: &Path, page: usize) -> Result<(Store, Recovered), StoreError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| StoreError::io("creating the state directory for", state_dir, &e))?;
        let lock = lock::Lock::acquire(state_dir)?;
        let (db, recovered) = db::Db::open(state_dir, page)?;
        let path = db.path().to_path_buf();
        let notify = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| StoreError::io("creating the eventfd of", &path, &e.into()))?;
        let shared = Arc::new(Shared {
            notify,
            transactions: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            paused: Mutex::new(false),
            resume: Condvar::new(),
        });
        let (tx, thread_rx) = channel();
        let (thread_tx, rx) = channel();
        let (loaded_tx, loaded_rx) = channel();
        let thread_shared = Arc::clone(&shared);
        let outs = Outs {
            done: thread_tx,
            loaded: loaded_tx,
        };
        let thread = std::thread::Builder::new()
            .name("drover-store".into())
            .spawn(move || run(db, lock, thread_rx, outs, thread_shared))
            .map_err(|e| StoreError::io("starting the thread of", &path, &e))?;
        let store = Store {
            path,
            tx: Some(tx),
            rx,
            loaded_rx,
            shared,
            thread: Some(thread),
            next_ticket: 0,
            local: Vec::new(),
            local_loaded: Vec::new(),
        };
        Ok((store, recovered))
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fd to add to epoll (`EPOLLIN`): readable when completions are
    /// waiting. Level-triggered use is fine: [`Store::completions`] drains
    /// it.
    pub fn notify_fd(&self) -> BorrowedFd<'_> {
        self.shared.notify.as_fd()
    }

    /// Queues `batch` for the store thread and returns its ticket. Never
    /// blocks and never fails: a problem is reported by the ticket's
    /// completion.
    /// The batch may be shared (`Arc`): the caller keeps it to resubmit
    /// after a failure without a copy.
    pub fn submit(&mut self, batch: impl Into<Arc<Batch>>) -> Ticket {
        let batch = batch.into();
        let (ticket, sent) = self.send(|t| Request::Commit(t, batch));
        if !sent {
            let closed = self.closed();
            self.local.push((ticket, Err(closed)));
            let _ = self.shared.notify.write(1);
        }
        ticket
    }

    /// Hands a request to the thread under a new ticket; false when the
    /// thread is gone.
    fn send(&mut self, request: impl FnOnce(Ticket) -> Request) -> (Ticket, bool) {
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(request(ticket)).is_ok());
        (ticket, sent)
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            path: self.path.clone(),
        }
    }

    /// Reads the messages of `queue` with an id above `after` (from its
    /// first with `None`), by id, at most `limit` of them, after every
    /// batch submitted before; the result comes from [`Store::loaded`]
    /// (the eventfd says when). Never blocks.
    pub fn load(&mut self, queue: &str, after: Option<u64>, limit: usize) -> Ticket {
        let load = Load {
            queue: queue.to_owned(),
            after,
            limit,
        };
        let (ticket, sent) = self.send(|t| Request::Load(t, load));
        if !sent {
            let closed = self.closed();
            self.local_loaded.push((ticket, Err(closed)));
            let _ = self.shared.notify.write(1);
        }
        ticket
    }

    /// The loads finished since the last call, in ticket order. Call it
    /// (with [`Store::completions`]) when [`Store::notify_fd`] is readable.
    pub fn loaded(&mut self) -> Vec<Loaded> {
        let mut out = std::mem::take(&mut self.local_loaded);
        while let Ok(l) = self.loaded_rx.try_recv() {
            out.push(l);
        }
        out.sort_by_key(|(t, _)| *t);
        out
    }

    /// The tickets whose commit has ended since the last call, in ticket
    /// order, each `Ok` (durable) or the error. Call it when
    /// [`Store::notify_fd`] is readable; it never blocks.
    pub fn completions(&mut self) -> Vec<Completion> {
        // Reset the eventfd first: a completion sent after this read makes
        // it readable again, so none is missed.
        let _ = self.shared.notify.read();
        let mut out = std::mem::take(&mut self.local);
        loop {
            match self.rx.try_recv() {
                Ok(c) => out.push(c),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        out.sort_by_key(|(t, _)| *t);
        out
    }

    /// The thread's counters.
    pub fn stats(&self) -> Stats {
        Stats {
            transactions: self.shared.transactions.load(Ordering::Relaxed),
            batches: self.shared.batches.load(Ordering::Relaxed),
            failures: self.shared.failures.load(Ordering::Relaxed),
        }
    }

    /// Holds the store thread before it collects queued batches, until the
    /// guard is dropped; for tests of group commit. A commit already under
    /// way finishes.
    #[doc(hidden)]
    pub fn pause(&self) -> Paused {
        *self
            .shared
            .paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        Paused {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stops the thread once it has committed everything submitted, waiting
    /// at most `deadline`; returns the completions not yet collected. The
    /// lock is released when the thread has ended. On
    /// [`StoreError::Timeout`] the thread is left to finish on its own.
    pub fn close(mut self, deadline: Duration) -> Result<Vec<Completion>, StoreError> {
        let start = Instant::now();
        // Dropping the sender ends the thread after its last commit.
        self.tx = None;
        let mut out = std::mem::take(&mut self.local);
        loop {
            let left = deadline.saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(c) => out.push(c),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(StoreError::Timeout {
                        path: self.path.clone(),
                        waited_ms: start.elapsed().as_millis(),
                    });
                }
            }
        }
        if let Some(t) = self.thread.take() {
            // The thread has dropped its sender, so it is at its very end.
            let _ = t.join();
        }
        out.sort_by_key(|(t, _)| *t);
        Ok(out)
    }
}

/// Where the store thread reports.
struct Outs {
    done: Sender<Completion>,
    loaded: Sender<Loaded>,
}

/// The store thread: collects the batches queued up to the next load,
/// commits them as one transaction, reports, runs the load, repeats; ends
/// when the store's sender is gone (after committing what was queued).
fn run(mut db: db::Db, lock: lock::Lock, rx: Receiver<Request>, outs: Outs, shared: Arc<Shared>) {
    let mut pending: Vec<(Ticket, Arc<Batch>)> = Vec::new();
    let mut next = rx.recv().ok();
    while let Some(first) = next.take() {
        let mut load = None;
        match first {
            Request::Commit(t, b) => pending.push((t, b)),
            Request::Load(t, l) => load = Some((t, l)),
        }
        {
            let mut paused = shared.paused.lock().unwrap_or_else(PoisonError::into_inner);
            while *paused {
                paused = shared
                    .resume
                    .wait(paused)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        // Everything queued, up to the first load (which must see the
        // batches submitted before it, and no later ones).
        while load.is_none() {
            match rx.try_recv() {
                Ok(Request::Commit(t, b)) => pending.push((t, b)),
                Ok(Request::Load(t, l)) => load = Some((t, l)),
                Err(_) => break,
            }
        }
        let mut gone = false;
        if !pending.is_empty() {
            gone |= commit(&mut db, &mut pending, &outs.done, &shared);
        }
        if let Some((t, l)) = load {
            let result =
                match catch_unwind(AssertUnwindSafe(|| db.load(&l.queue, l.after, l.limit))) {
                    Ok(r) => r,
                    Err(panic) => Err(StoreError::Panicked {
                        path: db.path().to_path_buf(),
                        detail: panic_text(&*panic),
                    }),
                };
            gone |= outs.loaded.send((t, result)).is_err();
        }
        let _ = shared.notify.write(1);
        if gone {
            break;
        }
        next = rx.recv().ok();
    }
    // A clean close: fold the WAL into the main file. Then the lock goes.
    let _ = catch_unwind(AssertUnwindSafe(|| db.checkpoint()));
    drop(db);
    drop(lock);
    let _ = shared.notify.write(1);
}

/// Commits `pending` as one transaction and reports each ticket; returns
/// whether nobody listens any more.
fn commit(
    db: &mut db::Db,
    pending: &mut Vec<(Ticket, Arc<Batch>)>,
    done: &Sender<Completion>,
    shared: &Shared,
) -> bool {
    for (_, batch) in pending.iter() {
        if let Some(before) = &batch.before {
            (before.0)();
        }
    }
    let result = {
        let batches: Vec<&Batch> = pending.iter().map(|(_, b)| &**b).collect();
        match catch_unwind(AssertUnwindSafe(|| db.commit(&batches))) {
            Ok(r) => r,
            Err(panic) => {
                let _ = catch_unwind(AssertUnwindSafe(|| db.rollback()));
                Err(StoreError::Panicked {
                    path: db.path().to_path_buf(),
                    detail: panic_text(&*panic),
                })
            }
        }
    };
    shared.transactions.fetch_add(1, Ordering::Relaxed);
    shared
        .batches
        .fetch_add(pending.len() as u64, Ordering::Relaxed);
    if result.is_err() {
        shared.failures.fetch_add(1, Ordering::Relaxed);
    }
    let mut gone = false;
    for (t, _) in pending.drain(..) {
        gone |= done.send((t, result.clone())).is_err();
    }
    gone
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
