//! SIGCHLD as a readable file descriptor.
//!
//! A handler would interrupt `epoll_wait` on every exit: the loop would
//! take one turn for the interruption and another for the exit's pidfd,
//! and the replacement's start would wait for both. Blocked and read
//! through a signalfd, SIGCHLD arrives in the same `epoll_wait` as the
//! pidfds it announces, as one more event.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// SIGCHLD, blocked in every thread of drover and read from a signalfd.
#[derive(Debug)]
pub struct ChildSignal {
    fd: SignalFd,
}

impl ChildSignal {
    /// Blocks SIGCHLD in the calling thread and opens its signalfd. Call it
    /// before any other thread starts: threads inherit the mask, and a
    /// thread with SIGCHLD unblocked would receive (and, with the default
    /// action, discard) what the signalfd should have read.
    pub fn new() -> io::Result<Self> {
        crate::sys::default_sigchld()?;
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(ChildSignal { fd })
    }

    /// Reads every pending SIGCHLD. Returns whether there was one (several
    /// exits may share it: SIGCHLD is not queued).
    pub fn take(&mut self) -> bool {
        let mut any = false;
        loop {
            match self.fd.read_signal() {
                Ok(Some(_)) => any = true,
                Ok(None) => return any,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("reading SIGCHLD from its signalfd: {e}");
                    return any;
                }
            }
        }
    }
}

impl AsFd for ChildSignal {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
