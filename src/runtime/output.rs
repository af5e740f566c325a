//! Child output in the event loop: the pipes being read, and the hand-off
//! to the log writer thread with its back-pressure (see [`crate::runtime::logs`]).
//!
//! Back-pressure is for all pipes at once: once the writer refuses a chunk,
//! that chunk is held and its pipe leaves the epoll set, and every other
//! pipe that becomes readable leaves it too, unread, until the writer has
//! room. So the output drover holds is the writer's budget plus one chunk,
//! however many children write and however slow drover's stdout is (held
//! per pipe instead, a thousand children writing empty lines as JSON would
//! hold several GiB). Stalled pipes resume in the order they stalled.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

use crate::config::names::GroupName;
use crate::runtime::history::History;
use crate::runtime::logs::{LineFormat, LogWriter, Origin, PipeReader};

/// At exit, how long the writer may take no output at all before drover
/// gives up on stdout and exits without the rest (a stdout that nobody
/// reads would otherwise keep drover, PID 1 in a container, from ever
/// exiting).
pub const EXIT_STALL: Duration = Duration::from_secs(2);
/// At exit, the longest drover writes out child output, however slowly
/// stdout keeps taking it.
pub const EXIT_LIMIT: Duration = Duration::from_secs(10);
/// At exit, the most bytes read from one pipe: what its child (or a
/// descendant still holding it) wrote before; one that writes without end
/// cannot hold drover.
const EXIT_PIPE_BYTES: usize = 1 << 20;

/// Pipe tokens are `PIPE_TOKENS + slot`: a range of their own, apart from
/// the runtime's counter (which counts up from a handful) and the
/// connection ranges (2^47, 2^48).
const PIPE_TOKENS: u64 = 1 << 46;

/// Every child pipe being read, and the writer they feed.
#[derive(Debug)]
pub struct Output {
    format: LineFormat,
    /// The pipes by slot (two per child: kept dense, a slot is freed at
    /// its pipe's end and used again by a later one).
    pipes: Pipes,
    /// Pipes out of the epoll set until the writer has room, in the order
    /// they stalled.
    stalled: Vec<u64>,
    /// The chunk the writer refused, read from the first stalled pipe: it
    /// goes out before any stalled pipe is read again. (One at most: once
    /// it is held, no pipe is read.)
    held: Option<Vec<u8>>,
    writer: LogWriter,
    /// Written by the writer thread once it has room again.
    wake: UnixStream,
    /// Read buffer shared by every pipe read.
    scratch: Vec<u8>,
    /// The last lines of each group, for `drover logs`.
    pub history: History,
    /// Whether some `drover logs -f` client follows: then each chunk is
    /// also kept in [`Self::take_followed`] for it.
    pub following: bool,
    followed: Vec<(GroupName, Vec<u8>)>,
}

impl Output {
    pub fn new(
        format: LineFormat,
        writer: LogWriter,
        wake: UnixStream,
        history: History,
    ) -> Output {
        Output {
            format,
            pipes: Pipes::default(),
            stalled: Vec::new(),
            held: None,
            writer,
            wake,
            scratch: Vec::new(),
            history,
            following: false,
            followed: Vec::new(),
        }
    }

    /// The chunks written since the last call, by group, for followers.
    pub fn take_followed(&mut self) -> Vec<(GroupName, Vec<u8>)> {
        std::mem::take(&mut self.followed)
    }

    pub fn owns(&self, token: u64) -> bool {
        self.pipes.get(token).is_some()
    }

    /// Starts reading a child's pipe: makes it non-blocking (the loop
    /// never waits on a read) and watches it.
    pub fn watch(&mut self, epoll: &Epoll, fd: OwnedFd, origin: Origin) {
        if let Err(e) = fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)) {
            tracing::warn!("cannot watch child output: {e}");
            return;
        }
        let reader = PipeReader::new(fd, origin);
        let token = self.pipes.next_token();
        let event = EpollEvent::new(EpollFlags::EPOLLIN, token);
        match epoll.add(reader.fd(), event) {
            Ok(()) => self.pipes.insert(token, reader),
            Err(e) => tracing::warn!("cannot watch child output: {e}"),
        }
    }

    /// Between loop turns: slots freed during the turn may be used again
    /// (not before: an event of the turn's batch may still name one).
    pub fn recycle(&mut self) {
        self.pipes.recycle();
    }

    /// A pipe is readable (or at its end).
    pub fn on_readable(&mut self, epoll: &Epoll, token: u64) {
        let Some(reader) = self.pipes.get_mut(token) else {
            return;
        };
        if !self.stalled.is_empty() {
            // The writer is behind: this pipe waits its turn, unread.
            let _ = epoll.delete(reader.fd());
            self.stalled.push(token);
            return;
        }
        let outcome = reader.read(self.format, &mut self.scratch);
        if !outcome.chunk.is_empty() {
            self.history.record(&reader.origin.group, &outcome.chunk);
            if self.following {
                let group = reader.origin.group.clone();
                self.followed.push((group, outcome.chunk.clone()));
            }
        }
        if !outcome.chunk.is_empty()
            && let Err(chunk) = self.writer.try_send(outcome.chunk)
        {
            // The writer is behind: hold this chunk and stop reading the
            // pipe (and, see above, every other), so children block instead
            // of drover's memory growing. At EOF the pipe reads 0 again
            // once re-armed, and closes then.
            self.held = Some(chunk);
            let _ = epoll.delete(reader.fd());
            self.stalled.push(token);
            return;
        }
        if outcome.eof
            && let Some(reader) = self.pipes.remove(token)
        {
            let _ = epoll.delete(reader.fd());
        }
    }

    /// The writer made room: resume the stalled pipes in order, as long
    /// as it has room (it wakes the loop again when it has more).
    pub fn on_wake(&mut self, epoll: &Epoll) {
        let mut buf = [0u8; 64];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        if let Some(chunk) = self.held.take()
            && let Err(chunk) = self.writer.try_send(chunk)
        {
            self.held = Some(chunk);
            return;
        }
        let mut resumed = 0;
        for &token in &self.stalled {
            if !self.writer.has_room() {
                break;
            }
            if let Some(reader) = self.pipes.get(token) {
                let event = EpollEvent::new(EpollFlags::EPOLLIN, token);
                let _ = epoll.add(reader.fd(), event);
            }
            resumed += 1;
        }
        self.stalled.drain(..resumed);
    }

    /// At exit: writes out what the pipes still hold, then stops the
    /// writer. Gives up once stdout has taken nothing for `stall`, or after
    /// `limit` in all, and says so on stderr: drover then exits without
    /// the rest. Returns whether everything was written out.
    pub fn finish(mut self, stall: Duration, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        // Each chunk goes to the writer as it is read: one at a time is
        // held here, whatever the pipes still have.
        let mut refused = self
            .held
            .take()
            .and_then(|chunk| self.send_waiting(chunk, stall, deadline).err());
        let mut pipes: Vec<PipeReader> = self.pipes.drain().collect();
        for reader in &mut pipes {
            let mut read = 0;
            while refused.is_none() && read < EXIT_PIPE_BYTES {
                let outcome = reader.read(self.format, &mut self.scratch);
                if outcome.chunk.is_empty() {
                    break;
                }
                read += outcome.chunk.len();
                refused = self.send_waiting(outcome.chunk, stall, deadline).err();
                if outcome.eof {
                    break;
                }
            }
        }
        if refused.is_some() || !self.wait_drained(stall, deadline) {
            let left = refused.map_or(0, |c| c.len()) + self.writer.queued();
            tracing::warn!(
                "stdout took no child output for {}s: exiting without the last {left} bytes of it",
                stall.as_secs(),
            );
            // The writer thread is left blocked in its write: the process's
            // exit ends it.
            return false;
        }
        self.writer.finish();
        true
    }

    /// Hands `chunk` to the writer, waiting for room; back when stdout
    /// took nothing for `stall`, or at `deadline`.
    fn send_waiting(
        &mut self,
        mut chunk: Vec<u8>,
        stall: Duration,
        deadline: Instant,
    ) -> Result<(), Vec<u8>> {
        loop {
            // A refused chunk asks for a wake-up once there is room.
            match self.writer.try_send(chunk) {
                Ok(()) => return Ok(()),
                Err(back) => chunk = back,
            }
            if !self.wait_wake(stall, deadline) {
                return Err(chunk);
            }
        }
    }

    /// Waits until the writer has written everything it was given; false
    /// when it took nothing for `stall`, or at `deadline`.
    fn wait_drained(&mut self, stall: Duration, deadline: Instant) -> bool {
        while !self.writer.drained() {
            if !self.wait_wake(stall, deadline) {
                return self.writer.drained();
            }
        }
        true
    }

    /// Waits for the writer's wake-up (it wrote something); false when
    /// none came within `stall` or before `deadline`.
    fn wait_wake(&mut self, stall: Duration, deadline: Instant) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let wait = stall.min(deadline.saturating_duration_since(Instant::now()));
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.wake.as_fd(), PollFlags::POLLIN)];
        let woken = matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0);
        let mut buf = [0u8; 64];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        woken
    }
}

/// Pipe readers in slots, addressed by token (see [`PIPE_TOKENS`]): no
/// hashing, and no empty buckets (a map of 2000 pipes had 4096).
#[derive(Debug, Default)]
struct Pipes {
    slots: Vec<Option<PipeReader>>,
    /// Slots free for the next pipes.
    free: Vec<usize>,
    /// Slots freed during this turn, free from the next.
    released: Vec<usize>,
    len: usize,
}

impl Pipes {
    fn slot(&self, token: u64) -> Option<usize> {
        let slot = usize::try_from(token.checked_sub(PIPE_TOKENS)?).ok()?;
        (slot < self.slots.len()).then_some(slot)
    }

    fn get(&self, token: u64) -> Option<&PipeReader> {
        self.slots.get(self.slot(token)?)?.as_ref()
    }

    fn get_mut(&mut self, token: u64) -> Option<&mut PipeReader> {
        let slot = self.slot(token)?;
        self.slots.get_mut(slot)?.as_mut()
    }

    /// The token the next [`Pipes::insert`] should use.
    fn next_token(&self) -> u64 {
        let slot = self.free.last().copied().unwrap_or(self.slots.len());
        PIPE_TOKENS + slot as u64
    }

    fn insert(&mut self, token: u64, reader: PipeReader) {
        let slot = (token - PIPE_TOKENS) as usize;
        if self.free.last() == Some(&slot) {
            self.free.pop();
        } else {
            debug_assert_eq!(slot, self.slots.len());
            self.slots.push(None);
        }
        self.slots[slot] = Some(reader);
        self.len += 1;
    }

    fn remove(&mut self, token: u64) -> Option<PipeReader> {
        let slot = self.slot(token)?;
        let reader = self.slots[slot].take()?;
        self.released.push(slot);
        self.len -= 1;
        Some(reader)
    }

    fn recycle(&mut self) {
        self.free.append(&mut self.released);
    }

    fn drain(&mut self) -> impl Iterator<Item = PipeReader> + '_ {
        self.len = 0;
        self.free.clear();
        self.released.clear();
        self.slots.drain(..).flatten()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, mpsc};
    use std::time::{Duration, Instant};

    use nix::sys::epoll::{EpollCreateFlags, EpollTimeout};

    use super::*;
    use crate::config::LogFormat;
    use crate::runtime::logs::{Stream, WRITER_BYTES};
    use crate::supervisor::Pid;

    /// drover's stdout: blocks at its first write until `gate` says go,
    /// then counts the lines it is given.
    struct Stdout {
        gate: Option<mpsc::Receiver<()>>,
        lines: Arc<AtomicUsize>,
    }

    impl Write for Stdout {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            let n = b.iter().filter(|&&c| c == b'\n').count();
            self.lines.fetch_add(n, Ordering::SeqCst);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn reader(index: u32) -> PipeReader {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let origin = Origin {
            group: GroupName::new("g").unwrap(),
            index,
            pid: Pid(100 + index as i32),
            stream: Stream::Stdout,
        };
        PipeReader::new(r, origin)
    }

    /// A slot freed during a turn is not handed out again before the next
    /// turn (an event of the turn's batch may still carry its token); then
    /// it is, so the slots stay dense.
    #[test]
    fn pipe_slots_are_used_again_only_from_the_next_turn() {
        let mut pipes = Pipes::default();
        let mut tokens = Vec::new();
        for i in 0..3 {
            let t = pipes.next_token();
            pipes.insert(t, reader(i));
            tokens.push(t);
        }
        assert_eq!(tokens, [PIPE_TOKENS, PIPE_TOKENS + 1, PIPE_TOKENS + 2]);
        assert_eq!(pipes.remove(tokens[1]).map(|r| r.origin.index), Some(1));
        assert!(pipes.get(tokens[1]).is_none() && pipes.remove(tokens[1]).is_none());
        assert_eq!(pipes.next_token(), PIPE_TOKENS + 3, "not within the turn");
        pipes.recycle();
        let t = pipes.next_token();
        assert_eq!(t, tokens[1], "the freed slot, from the next turn");
        pipes.insert(t, reader(7));
        assert_eq!(pipes.get(t).map(|r| r.origin.index), Some(7));
        assert_eq!(pipes.next_token(), PIPE_TOKENS + 3);
        assert!(pipes.get(0).is_none() && pipes.get(PIPE_TOKENS + 99).is_none());
        assert_eq!(pipes.drain().count(), 3);
        assert!(pipes.is_empty());
    }

    const WAKE: u64 = 0;

    /// Eight children each fill their pipe with empty lines (64 KiB of
    /// `\n`: about 7 MiB as JSON) while drover's stdout does not move.
    /// What drover holds stays at the writer's budget plus two chunks — not
    /// one chunk per child — and every line comes out once stdout moves.
    #[test]
    fn a_stalled_stdout_holds_a_bounded_amount_of_everyones_output() {
        const CHILDREN: usize = 8;
        const FILL: usize = 64 * 1024;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        let (wake_tx, wake_rx) = UnixStream::pair().unwrap();
        wake_rx.set_nonblocking(true).unwrap();
        epoll
            .add(wake_rx.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKE))
            .unwrap();
        let (go, gate) = mpsc::channel();
        let lines = Arc::new(AtomicUsize::new(0));
        let stdout = Stdout {
            gate: Some(gate),
            lines: Arc::clone(&lines),
        };
        let writer = LogWriter::start(Box::new(stdout), wake_tx).unwrap();
        let format = LineFormat {
            format: LogFormat::Json,
            timestamps: false,
        };
        let mut output = Output::new(format, writer, wake_rx, History::new(0));
        let mut writers = Vec::new();
        for i in 0..CHILDREN {
            let (r, w) = nix::unistd::pipe().unwrap();
            let mut w = std::fs::File::from(w);
            w.write_all(&[b'\n'; FILL]).unwrap(); // a pipe holds 64 KiB
            writers.push(w);
            let origin = Origin {
                group: GroupName::new("chatty").unwrap(),
                index: i as u32,
                pid: Pid(1000 + i as i32),
                stream: Stream::Stdout,
            };
            output.watch(&epoll, r, origin);
        }
        let tokens: Vec<u64> = (0..CHILDREN as u64).map(|i| PIPE_TOKENS + i).collect();

        // Every pipe is readable: the loop gets to each, several times.
        let mut most = 0;
        for _ in 0..3 {
            for &token in &tokens {
                output.on_readable(&epoll, token);
                let held = output.held.as_ref().map_or(0, Vec::len);
                most = most.max(held + output.writer.queued());
            }
        }
        let chunk = FILL * 110; // an empty line as JSON is about 100 bytes
        assert!(
            most <= WRITER_BYTES + 2 * chunk,
            "held {most} bytes of output for {CHILDREN} children"
        );
        assert!(
            output.stalled.len() >= CHILDREN - 2,
            "the pipes wait, unread: {} stalled",
            output.stalled.len()
        );

        // stdout moves: everything comes out, each line once.
        drop(writers);
        go.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut events = [EpollEvent::empty(); 32];
        while !output.pipes.is_empty() {
            assert!(Instant::now() < deadline, "output stuck");
            output.recycle();
            let n = epoll
                .wait(&mut events, EpollTimeout::from(1000u16))
                .unwrap();
            for event in &events[..n] {
                match event.data() {
                    WAKE => output.on_wake(&epoll),
                    token => output.on_readable(&epoll, token),
                }
            }
        }
        assert!(output.finish(Duration::from_secs(30), Duration::from_secs(60)));
        assert_eq!(lines.load(Ordering::SeqCst), CHILDREN * FILL);
    }

    /// At exit, a stdout that takes nothing (a pipe nobody reads) holds
    /// drover for the stall time, not forever; one that moves gets all.
    #[test]
    fn at_exit_a_stdout_that_takes_nothing_is_given_up_on() {
        let start = |gate: mpsc::Receiver<()>, lines: &Arc<AtomicUsize>| {
            let (wake_tx, wake_rx) = UnixStream::pair().unwrap();
            wake_rx.set_nonblocking(true).unwrap();
            let stdout = Stdout {
                gate: Some(gate),
                lines: Arc::clone(lines),
            };
            let writer = LogWriter::start(Box::new(stdout), wake_tx).unwrap();
            let format = LineFormat {
                format: LogFormat::Text,
                timestamps: false,
            };
            let mut output = Output::new(format, writer, wake_rx, History::new(0));
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
            let (r, w) = nix::unistd::pipe().unwrap();
            std::fs::File::from(w).write_all(b"one\ntwo\n").unwrap();
            let origin = Origin {
                group: GroupName::new("g").unwrap(),
                index: 0,
                pid: Pid(100),
                stream: Stream::Stdout,
            };
            output.watch(&epoll, r, origin);
            output
        };
        let stall = Duration::from_millis(200);

        let (_never, gate) = mpsc::channel();
        let lines = Arc::new(AtomicUsize::new(0));
        let output = start(gate, &lines);
        let began = Instant::now();
        assert!(!output.finish(stall, Duration::from_secs(60)));
        assert!(began.elapsed() < Duration::from_secs(30), "gave up");
        assert_eq!(lines.load(Ordering::SeqCst), 0);

        let (go, gate) = mpsc::channel();
        go.send(()).unwrap();
        let lines = Arc::new(AtomicUsize::new(0));
        assert!(start(gate, &lines).finish(stall, Duration::from_secs(60)));
        assert_eq!(lines.load(Ordering::SeqCst), 2);
    }
}
