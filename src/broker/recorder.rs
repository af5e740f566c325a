//! Dead-letter records are written by a thread of their own, so that a
//! slow or hung disk under `state_dir` (NFS, a full journal, a dying
//! device) delays the records, never the event loop: the loop hands each
//! dead letter over with the time it died, and the thread appends what has
//! arrived, one open and one write per queue's file per round.
//!
//! What waits for the thread is bounded: at most [`RECORDER_BYTES`] of
//! messages (each record counted at least [`RECORD_OVERHEAD`]). Past that,
//! dead letters are counted in `dead_lettered` and the log, not recorded,
//! as past `dead_letter_max_bytes`.
//!
//! A durable queue deletes a dead-lettered message from the store, and a
//! queue on Redis acks its entry: neither may happen before the record is
//! written, or a crash in between would lose the message. So every store
//! batch and Redis write batch made while records are on their way carries
//! a [`Recorder::barrier`]: its writer thread waits until the thread has
//! dealt with every record handed over before the batch (written, or
//! found over the limit or unwritable), and only then commits.
//!
//! The thread starts at the first dead letter: most configurations never
//! have one, and a thread is memory in every drover.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::deadletter;
use super::queue::DeadLetter;
use crate::config::names::QueueName;
use crate::text::ratelimit::RateLimit;
use crate::text::wording::plural;

/// Bytes of dead letters waiting for the thread, at most.
pub const RECORDER_BYTES: usize = 64 << 20;
/// What one record counts against [`RECORDER_BYTES`] beyond its message.
pub const RECORD_OVERHEAD: usize = 256;
/// How long drover waits at exit for the records still on their way.
pub const FINISH_WAIT: Duration = Duration::from_secs(5);

enum Job {
    Record {
        queue: QueueName,
        time: String,
        letter: DeadLetter,
    },
    /// Everything handed over before it has been dealt with.
    Flush(SyncSender<()>),
}

/// How many records the thread has dealt with, for barriers to wait on.
#[derive(Debug, Default)]
struct Settled {
    count: Mutex<u64>,
    changed: Condvar,
}

impl Settled {
    fn add(&self, n: u64) {
        let mut count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        *count += n;
        self.changed.notify_all();
    }

    fn get(&self) -> u64 {
        *self.count.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_for(&self, n: u64) {
        let mut count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        while *count < n {
            count = self
                .changed
                .wait(count)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

#[derive(Debug)]
struct Running {
    tx: Sender<Job>,
    /// Bytes handed over and not yet dealt with.
    queued: Arc<AtomicUsize>,
    /// Records handed over, all told.
    sent: u64,
    settled: Arc<Settled>,
    thread: JoinHandle<()>,
}

impl Running {
    /// Waits up to `limit` until the thread has dealt with everything sent
    /// before; true when it has (or is gone).
    fn flush(&self, limit: Duration) -> bool {
        let (done_tx, done_rx) = sync_channel(1);
        self.tx.send(Job::Flush(done_tx)).is_err() || done_rx.recv_timeout(limit).is_ok()
    }
}

/// What `letter` counts against [`RECORDER_BYTES`] while it waits.
fn cost(letter: &DeadLetter) -> usize {
    letter.message.bytes.len() + RECORD_OVERHEAD
}

/// The loop's side; see the module documentation.
#[derive(Debug)]
pub(super) struct Recorder {
    state_dir: PathBuf,
    max_bytes: u64,
    running: Option<Running>,
    /// The thread could not be started: say so once.
    failed: bool,
    /// Tests hold this to play a disk that does not move.
    #[cfg(test)]
    pub(super) disk: Arc<Mutex<()>>,
}

/// Why a dead letter was not handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refused {
    /// [`RECORDER_BYTES`] wait already.
    Behind,
    /// The thread could not be started.
    NoThread,
}

impl Recorder {
    pub(super) fn new(state_dir: PathBuf, max_bytes: u64) -> Recorder {
        Recorder {
            state_dir,
            max_bytes,
            running: None,
            failed: false,
            #[cfg(test)]
            disk: Arc::default(),
        }
    }

    /// Hands `letter` of `queue` over to be recorded.
    pub(super) fn record(&mut self, queue: &QueueName, letter: DeadLetter) -> Result<(), Refused> {
        let r = self.running()?;
        let cost = cost(&letter);
        if r.queued.load(Ordering::SeqCst) >= RECORDER_BYTES {
            return Err(Refused::Behind);
        }
        r.queued.fetch_add(cost, Ordering::SeqCst);
        let job = Job::Record {
            queue: queue.clone(),
            time: deadletter::utc_now(),
            letter,
        };
        if r.tx.send(job).is_err() {
            // The thread is gone (it cannot panic but by a bug): nothing
            // waits for it any more.
            r.queued.fetch_sub(cost, Ordering::SeqCst);
            return Err(Refused::NoThread);
        }
        r.sent += 1;
        Ok(())
    }

    /// Bytes waiting for the thread (for the log line about being behind).
    pub(super) fn queued_bytes(&self) -> usize {
        self.running
            .as_ref()
            .map_or(0, |r| r.queued.load(Ordering::SeqCst))
    }

    /// A wait for every record handed over so far, for a batch that must
    /// not be committed before them; `None` when none is on its way.
    pub(super) fn barrier(&self) -> Option<Arc<dyn Fn() + Send + Sync>> {
        let r = self.running.as_ref()?;
        let target = r.sent;
        if r.settled.get() >= target {
            return None;
        }
        let settled = Arc::clone(&r.settled);
        Some(Arc::new(move || settled.wait_for(target)))
    }

    /// Waits up to `limit` for the records handed over so far to be dealt
    /// with; false when the time ran out.
    #[cfg(test)]
    pub(super) fn flush(&self, limit: Duration) -> bool {
        self.running.as_ref().is_none_or(|r| r.flush(limit))
    }

    /// At exit: waits up to `limit` for the records still on their way,
    /// says how many were not written if the time ran out, and stops the
    /// thread (or leaves it to the exit, stuck in a write).
    pub(super) fn finish(&mut self, limit: Duration) {
        let Some(r) = self.running.take() else {
            return;
        };
        if r.flush(limit) {
            drop(r.tx);
            let _ = r.thread.join();
            return;
        }
        let left = r.sent.saturating_sub(r.settled.get());
        if left > 0 {
            tracing::error!(
                "{} not written: the disk under {} did not take them within {}s",
                plural(left as usize, "dead-letter record", "dead-letter records"),
                self.state_dir.display(),
                limit.as_secs()
            );
        }
    }

    fn running(&mut self) -> Result<&mut Running, Refused> {
        if self.running.is_none() {
            let (tx, rx) = channel();
            let queued = Arc::new(AtomicUsize::new(0));
            let settled = Arc::new(Settled::default());
            let writer = Writer {
                state_dir: self.state_dir.clone(),
                max_bytes: self.max_bytes,
                queued: Arc::clone(&queued),
                settled: Arc::clone(&settled),
                bursts: RateLimit::new(1, crate::text::ratelimit::DEFAULT_WINDOW),
                #[cfg(test)]
                disk: Arc::clone(&self.disk),
            };
            match crate::sys::spawn_quiet("drover-deadletters", move || writer.run(rx)) {
                Ok(thread) => {
                    self.running = Some(Running {
                        tx,
                        queued,
                        sent: 0,
                        settled,
                        thread,
                    });
                }
                Err(e) => {
                    if !self.failed {
                        tracing::error!(
                            "cannot start the dead-letter writer: {e}; dead letters are counted in dead_lettered, not recorded"
                        );
                        self.failed = true;
                    }
                    return Err(Refused::NoThread);
                }
            }
        }
        self.running.as_mut().ok_or(Refused::NoThread)
    }
}

/// The thread's side.
struct Writer {
    state_dir: PathBuf,
    max_bytes: u64,
    queued: Arc<AtomicUsize>,
    settled: Arc<Settled>,
    /// A lasting condition (a full or unwritable file) is logged once per
    /// window, then counted.
    bursts: RateLimit,
    /// Tests hold this to play a disk that does not move.
    #[cfg(test)]
    disk: Arc<Mutex<()>>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Job>) {
        loop {
            // Waits for a job, or for the summary of suppressed lines.
            let first = match self.bursts.deadline() {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            let first = match first {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    self.summarise();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // What has arrived meanwhile goes in the same round, by file.
            let mut round: BTreeMap<QueueName, Vec<(String, DeadLetter)>> = BTreeMap::new();
            let mut flushes = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Record {
                        queue,
                        time,
                        letter,
                    } => round.entry(queue).or_default().push((time, letter)),
                    Job::Flush(done) => flushes.push(done),
                }
                next = rx.try_recv().ok();
            }
            for (queue, letters) in round {
                self.write(&queue, &letters);
                let freed: usize = letters.iter().map(|(_, l)| cost(l)).sum();
                self.queued.fetch_sub(freed, Ordering::SeqCst);
                self.settled.add(letters.len() as u64);
            }
            for done in flushes {
                let _ = done.send(());
            }
            self.summarise();
        }
        self.summarise();
    }

    /// Logs how many lines the rate limit held back in windows that ended.
    fn summarise(&mut self) {
        for s in self.bursts.due(Instant::now()) {
            tracing::warn!("{s}");
        }
    }

    fn write(&mut self, queue: &QueueName, letters: &[(String, DeadLetter)]) {
        #[cfg(test)]
        let _disk = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let max = self.max_bytes;
        let file = deadletter::path(&self.state_dir, queue);
        match deadletter::append(&self.state_dir, queue, letters, max) {
            Ok(done) if done.over_limit == 0 => {}
            Ok(_) => {
                let key = format!("queue {queue}: dead-letter file {} is full", file.display());
                if self.bursts.allow(&key, now) {
                    tracing::warn!(
                        "{key} (dead_letter_max_bytes = {max}); dead letters are counted in dead_lettered, not recorded"
                    );
                }
            }
            Err(e) => {
                let key = format!(
                    "queue {queue}: cannot record dead letters in {}",
                    file.display()
                );
                if self.bursts.allow(&key, now) {
                    tracing::error!("{key}: {e}; they are counted in dead_lettered, not recorded");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::broker::queue::Message;

    fn letter(bytes: &[u8]) -> DeadLetter {
        DeadLetter {
            message: Message::new(bytes),
            reason: "test".into(),
        }
    }

    fn records(dir: &std::path::Path, queue: &QueueName) -> usize {
        std::fs::read_to_string(deadletter::path(dir, queue))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    const LONG: Duration = Duration::from_secs(60);

    /// A disk that does not move: handing dead letters over never waits
    /// for it, what waits is bounded by RECORDER_BYTES (the rest is
    /// refused, to be counted), and once the disk moves every record
    /// handed over is written, and a barrier taken before returns only
    /// after its records are in the file.
    #[test]
    fn a_disk_that_does_not_move_never_blocks_the_loop() {
        let dir = std::env::temp_dir().join(format!("drover-recorder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let queue = QueueName::new("jobs").unwrap();
        let mut recorder = Recorder::new(dir.clone(), u64::MAX);
        let disk = Arc::clone(&recorder.disk);
        let stuck = disk.lock().unwrap();

        // The loop's side runs on a thread of its own, so that a recorder
        // that waited for the disk fails the test instead of hanging it.
        let (tx, rx) = mpsc::channel();
        let queue2 = queue.clone();
        let handing = std::thread::spawn(move || {
            let mut taken = 0;
            let mut refused = 0;
            for _ in 0..200 {
                match recorder.record(&queue2, letter(&[b'x'; 1 << 20])) {
                    Ok(()) => taken += 1,
                    Err(Refused::Behind) => refused += 1,
                    Err(other) => panic!("{other:?}"),
                }
            }
            let barrier = recorder.barrier().expect("records are on their way");
            tx.send((taken, refused)).unwrap();
            (recorder, barrier)
        });
        let (taken, refused) = rx
            .recv_timeout(LONG)
            .expect("handing dead letters over waited for the disk");
        let (mut recorder, barrier) = handing.join().unwrap();
        let most = RECORDER_BYTES / ((1 << 20) + RECORD_OVERHEAD) + 1;
        assert!(taken <= most, "{taken} MiB waiting for the disk");
        assert!(taken >= 1 && taken + refused == 200, "{taken} + {refused}");

        // The disk moves: the barrier returns once every record is written.
        let (done_tx, done_rx) = mpsc::channel();
        let (dir2, queue3) = (dir.clone(), queue.clone());
        let waiter = std::thread::spawn(move || {
            (barrier)();
            done_tx.send(records(&dir2, &queue3)).unwrap();
        });
        drop(stuck);
        let written = done_rx.recv_timeout(LONG).expect("the barrier returns");
        waiter.join().unwrap();
        assert_eq!(
            written, taken,
            "records written before the barrier returned"
        );
        assert!(recorder.barrier().is_none(), "nothing on its way");
        recorder.finish(LONG);
        assert_eq!(records(&dir, &queue), taken);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
