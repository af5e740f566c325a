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

/// Loop tokens of pidfds: this bit and the child's PID, so that one map
/// by PID serves both the loop's events and the sweep's
/// [`Pidfds::forget`]. Other tokens count up from a small number and never
/// reach it.
const TOKEN_BIT: u64 = 1 << 63;

/// The watched pidfds, by PID.
#[derive(Debug, Default)]
pub struct Pidfds {
    by_pid: HashMap<Pid, OwnedFd>,
}

impl Pidfds {
    fn token(pid: Pid) -> u64 {
        TOKEN_BIT | u64::from(pid.0 as u32)
    }

    fn pid(token: u64) -> Option<Pid> {
        (token & TOKEN_BIT != 0).then_some(Pid((token & !TOKEN_BIT) as u32 as i32))
    }

    /// Whether `pid` is reaped through a pidfd here (and not yet reaped).
    pub fn watches(&self, pid: Pid) -> bool {
        self.by_pid.contains_key(&pid)
    }

    pub fn owns(&self, token: u64) -> bool {
        Self::pid(token).is_some_and(|pid| self.by_pid.contains_key(&pid))
    }

    /// Watches `pid`'s pidfd. If it cannot be watched, it is dropped and
    /// the child is reaped by the SIGCHLD sweep.
    pub fn watch(&mut self, epoll: &Epoll, pid: Pid, fd: OwnedFd) {
        // Cannot happen (a PID is reused only after its reap, which
        // forgets it); keep the registration consistent anyway.
        self.forget(epoll, pid);
        let event = EpollEvent::new(EpollFlags::EPOLLIN, Self::token(pid));
        if let Err(e) = epoll.add(fd.as_fd(), event) {
            tracing::debug!(pid = pid.0, "cannot watch a pidfd: {e}");
            return;
        }
        self.by_pid.insert(pid, fd);
    }

    /// `pid` was reaped by the sweep: its pidfd goes.
    pub fn forget(&mut self, epoll: &Epoll, pid: Pid) {
        if let Some(fd) = self.by_pid.remove(&pid) {
            // Explicitly: a copy of the fd in a forked child that has not
            // exec'd yet would keep the registration alive past the close.
            let _ = epoll.delete(fd.as_fd());
        }
    }

    /// The pidfd under `token` is readable: reaps its child. Returns its
    /// exit, or `None` if there is nothing to reap (yet).
    pub fn on_ready(&mut self, epoll: &Epoll, token: u64) -> Option<(Pid, ExitStatus)> {
        let pid = Self::pid(token)?;
        let fd = self.by_pid.get(&pid)?;
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
        self.forget(epoll, pid);
        exit.map(|status| (pid, status))
    }
}
