//! Reaping through pidfds: one per child drover started itself, in the
//! loop's epoll set. An exit makes its pidfd readable, and
//! `waitid(P_PIDFD, WNOHANG)` reaps exactly that child: the cost does not
//! grow with the number of children, where `waitpid(-1)` scans all of them
//! in the kernel (and a sweep that finds nothing scans them once more).
//!
//! The SIGCHLD sweep stays, for what has no pidfd: orphans re-parented to
//! drover (PID 1, subreaper), children of the start helpers, and any child
//! whose pidfd could not be made or watched. A child reaped by the sweep
//! first has its pidfd dropped here ([`Pidfds::forget`]).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};

use crate::supervisor::{ExitStatus, Pid};

/// The watched pidfds, by loop token and by PID.
#[derive(Debug, Default)]
pub struct Pidfds {
    by_token: HashMap<u64, (Pid, OwnedFd)>,
    by_pid: HashMap<Pid, u64>,
}

impl Pidfds {
    pub fn owns(&self, token: u64) -> bool {
        self.by_token.contains_key(&token)
    }

    /// Watches `pid`'s pidfd under `token`. If it cannot be watched, it is
    /// dropped and the child is reaped by the SIGCHLD sweep.
    pub fn watch(&mut self, epoll: &Epoll, token: u64, pid: Pid, fd: OwnedFd) {
        if let Err(e) = epoll.add(fd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token)) {
            tracing::debug!(pid = pid.0, "cannot watch a pidfd: {e}");
            return;
        }
        self.by_token.insert(token, (pid, fd));
        if let Some(stale) = self.by_pid.insert(pid, token) {
            // Cannot happen (a PID is reused only after its reap, which
            // forgets it); keep the tables consistent anyway.
            self.remove(epoll, stale);
        }
    }

    /// `pid` was reaped by the sweep: its pidfd goes.
    pub fn forget(&mut self, epoll: &Epoll, pid: Pid) {
        if let Some(token) = self.by_pid.remove(&pid) {
            self.remove(epoll, token);
        }
    }

    /// The pidfd under `token` is readable: reaps its child. Returns its
    /// exit, or `None` if there is nothing to reap (yet).
    pub fn on_ready(&mut self, epoll: &Epoll, token: u64) -> Option<(Pid, ExitStatus)> {
        let (pid, fd) = self.by_token.get(&token)?;
        let pid = *pid;
        let status = loop {
            match waitid(
                Id::PIDFd(fd.as_fd()),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
            ) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        };
        let exit = match status {
            Ok(WaitStatus::Exited(_, code)) => Some(ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(_, signal, _)) => Some(ExitStatus::Signal(signal as i32)),
            // Not exited (stopped, continued): the pidfd is not readable
            // for that, but nothing is lost by looking.
            Ok(_) => return None,
            Err(e) => {
                // ECHILD: reaped elsewhere; nothing to report from here.
                tracing::debug!(pid = pid.0, "waitid on a pidfd: {e}");
                None
            }
        };
        self.by_pid.remove(&pid);
        self.remove(epoll, token);
        exit.map(|status| (pid, status))
    }

    fn remove(&mut self, epoll: &Epoll, token: u64) {
        if let Some((_, fd)) = self.by_token.remove(&token) {
            // Explicitly: a copy of the fd in a forked child that has not
            // exec'd yet would keep the registration alive past the close.
            let _ = epoll.delete(fd.as_fd());
        }
    }
}
