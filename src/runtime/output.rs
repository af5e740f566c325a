//! Child output in the event loop: the pipes being read, and the hand-off
//! to the log writer thread with its back-pressure (see [`crate::runtime::logs`]).

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

use crate::config::names::GroupName;
use crate::runtime::history::History;
use crate::runtime::logs::{LineFormat, LogWriter, Origin, PipeReader};

/// Every child pipe being read, and the writer they feed.
#[derive(Debug)]
pub struct Output {
    format: LineFormat,
    pipes: HashMap<u64, PipeReader>,
    /// Pipes whose output waits for room in the writer.
    stalled: Vec<u64>,
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
            pipes: HashMap::new(),
            stalled: Vec::new(),
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
        self.pipes.contains_key(&token)
    }

    /// Starts reading a child's pipe: makes it non-blocking (the loop
    /// never waits on a read) and watches it.
    pub fn watch(&mut self, epoll: &Epoll, token: u64, fd: OwnedFd, origin: Origin) {
        if let Err(e) = fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)) {
            tracing::warn!("cannot watch child output: {e}");
            return;
        }
        let reader = PipeReader::new(fd, origin);
        let event = EpollEvent::new(EpollFlags::EPOLLIN, token);
        match epoll.add(reader.fd(), event) {
            Ok(()) => {
                self.pipes.insert(token, reader);
            }
            Err(e) => tracing::warn!("cannot watch child output: {e}"),
        }
    }

    /// A pipe is readable (or at its end).
    pub fn on_readable(&mut self, epoll: &Epoll, token: u64) {
        let Some(reader) = self.pipes.get_mut(&token) else {
            return;
        };
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
            // pipe, so the child blocks instead of drover's memory growing.
            // At EOF the pipe reads 0 again once re-armed, and closes then.
            reader.held = Some(chunk);
            let _ = epoll.delete(reader.fd());
            self.stalled.push(token);
            return;
        }
        if outcome.eof
            && let Some(reader) = self.pipes.remove(&token)
        {
            let _ = epoll.delete(reader.fd());
        }
    }

    /// The writer made room: resume the stalled pipes in order.
    pub fn on_wake(&mut self, epoll: &Epoll) {
        let mut buf = [0u8; 64];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        let mut still = Vec::new();
        for token in std::mem::take(&mut self.stalled) {
            let Some(reader) = self.pipes.get_mut(&token) else {
                continue;
            };
            let Some(chunk) = reader.held.take() else {
                // Nothing held after all: just read the pipe again.
                let event = EpollEvent::new(EpollFlags::EPOLLIN, token);
                let _ = epoll.add(reader.fd(), event);
                continue;
            };
            match self.writer.try_send(chunk) {
                Ok(()) => {
                    let event = EpollEvent::new(EpollFlags::EPOLLIN, token);
                    let _ = epoll.add(reader.fd(), event);
                }
                Err(chunk) => {
                    reader.held = Some(chunk);
                    still.push(token);
                }
            }
        }
        self.stalled = still;
    }

    /// At exit: writes out what the pipes still hold, then stops the writer.
    pub fn finish(mut self) {
        for (_, mut reader) in self.pipes.drain() {
            let mut chunks: Vec<Vec<u8>> = reader.held.take().into_iter().collect();
            loop {
                let outcome = reader.read(self.format, &mut self.scratch);
                let done = outcome.eof || outcome.chunk.is_empty();
                chunks.push(outcome.chunk);
                if done {
                    break;
                }
            }
            for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
                self.writer.send_blocking(chunk);
            }
        }
        self.writer.finish();
    }
}
