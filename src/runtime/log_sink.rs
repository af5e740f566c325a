//! drover's own log lines reach stderr through a thread of their own, so
//! that a stderr nobody reads (a pager left on its first screen, a log
//! shipper that stalls, Docker's blocking log mode behind a slow driver)
//! never blocks the event loop: each event is formatted where it happens
//! and queued (at most [`SLOTS`] lines); when the queue is full the line is
//! dropped and counted, and the count is written where the gap is, once
//! stderr moves again. Children's output has its own writer (see
//! [`super::logs`]), which holds children back instead of dropping lines.

use std::io::{self, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

use crate::text::wording::plural;

/// Lines queued for stderr at most.
pub const SLOTS: usize = 1024;

enum Msg {
    /// A line, and how many were dropped just before it.
    Line(Vec<u8>, u64),
    /// Everything queued before it has been written (or failed).
    Flush(SyncSender<()>),
}

/// The sending side, for [`tracing_subscriber`]'s fmt layer.
#[derive(Clone)]
pub struct StderrSink {
    tx: SyncSender<Msg>,
}

static DROPPED: AtomicU64 = AtomicU64::new(0);
static SINK: OnceLock<StderrSink> = OnceLock::new();

impl StderrSink {
    /// Starts the writer thread; `None` if it cannot be started (then
    /// write to stderr directly).
    pub fn start() -> Option<StderrSink> {
        let (tx, rx) = sync_channel(SLOTS);
        // It starts before the loop blocks SIGCHLD for its signalfd: it
        // must not take one.
        crate::sys::spawn_quiet("drover-stderr", move || write_loop(rx, io::stderr())).ok()?;
        let sink = StderrSink { tx };
        let _ = SINK.set(sink.clone());
        Some(sink)
    }

    fn send(&self, line: Vec<u8>) {
        // The first line queued after a gap carries its size.
        let before = DROPPED.swap(0, Ordering::Relaxed);
        match self.tx.try_send(Msg::Line(line, before)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                DROPPED.fetch_add(before + 1, Ordering::Relaxed);
            }
        }
    }
}

/// Waits up to `limit` for the lines queued so far to be written (at
/// exit: the last lines matter, but a stderr nobody reads must not keep
/// drover from exiting).
pub fn flush(limit: Duration) {
    let Some(sink) = SINK.get() else {
        return;
    };
    let deadline = Instant::now() + limit;
    let (done_tx, done_rx) = sync_channel(1);
    let mut msg = Msg::Flush(done_tx);
    loop {
        match sink.tx.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Disconnected(_)) => return,
            Err(TrySendError::Full(back)) => {
                if Instant::now() >= deadline {
                    return;
                }
                msg = back;
                std::thread::sleep(Duration::from_millis(5)); // a full queue has no wake-up to wait on
            }
        }
    }
    let _ = done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}

fn write_loop(rx: Receiver<Msg>, mut out: impl Write) {
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Line(line, dropped) => {
                if dropped > 0 {
                    let lines = plural(dropped as usize, "log line", "log lines");
                    let _ = writeln!(out, "drover: {lines} dropped: stderr was not being read");
                }
                // A failure loses the line; there is nowhere to say so.
                let _ = out.write_all(&line);
            }
            Msg::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
    }
}

/// One event's text, queued whole when the fmt layer is done with it.
pub struct EventLine<'a> {
    sink: &'a StderrSink,
    buf: Vec<u8>,
}

impl Write for EventLine<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventLine<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.sink.send(std::mem::take(&mut self.buf));
        }
    }
}

impl<'a> MakeWriter<'a> for StderrSink {
    type Writer = EventLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventLine {
            sink: self,
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A stderr that takes nothing until `open` is set; `entered` is set
    /// once the writer waits on it.
    #[derive(Clone)]
    struct Gate {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        entered: Arc<(Mutex<bool>, std::sync::Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            {
                let (lock, cv) = &*self.entered;
                *lock.lock().unwrap() = true;
                cv.notify_all();
            }
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_stderr_drops_lines_without_blocking_and_says_how_many() {
        let gate = Gate {
            open: Arc::new((Mutex::new(false), std::sync::Condvar::new())),
            entered: Arc::new((Mutex::new(false), std::sync::Condvar::new())),
            got: Arc::new(Mutex::new(Vec::new())),
        };
        let (tx, rx) = sync_channel(SLOTS);
        let out = gate.clone();
        let thread = std::thread::spawn(move || write_loop(rx, out));
        let sink = StderrSink { tx };
        DROPPED.store(0, Ordering::Relaxed);
        // The writer takes the first line and blocks on it (waited for: a
        // writer that took its first line late, after drops, would carry
        // their count in the line that took the freed slot); SLOTS more
        // fill the queue; the rest are dropped. None of this waits.
        writeln!(sink.make_writer(), "line 0").unwrap();
        {
            let (lock, cv) = &*gate.entered;
            let mut entered = lock.lock().unwrap();
            while !*entered {
                entered = cv.wait(entered).unwrap();
            }
        }
        let total = SLOTS + 500;
        for i in 1..total {
            let mut w = sink.make_writer();
            writeln!(w, "line {i}").unwrap();
        }
        let dropped = DROPPED.load(Ordering::Relaxed) as usize; // not yet carried
        assert_eq!(
            dropped,
            total - 1 - SLOTS,
            "{dropped} dropped of {total} with {SLOTS} slots"
        );
        {
            let (lock, cv) = &*gate.open;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        // Once the queue has drained, the next line goes through.
        let (done_tx, done_rx) = sync_channel(1);
        sink.tx.send(Msg::Flush(done_tx)).unwrap();
        done_rx.recv().unwrap();
        sink.make_writer().write_all(b"after\n").unwrap();
        drop(sink);
        thread.join().unwrap();
        let text = String::from_utf8(gate.got.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), total - dropped + 2, "{text}");
        assert_eq!(lines[0], "line 0");
        assert_eq!(
            lines[lines.len() - 2],
            format!("drover: {dropped} log lines dropped: stderr was not being read")
        );
        assert_eq!(lines[lines.len() - 1], "after");
    }
}
