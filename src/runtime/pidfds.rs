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

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

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
    /// Pidfds of children reaped this turn, still in the epoll set: taken
    /// out and closed by [`Pidfds::release`] once the turn's restarts are
    /// done, so that those two calls are not on a restart's path.
    reaped: Vec<OwnedFd>,
}

impl Pidfds {
    fn token(pid: Pid) -> u64 {
        TOKEN_BIT | u64::from(pid.0 as u32)
    }

    fn pid(token: u64) -> Option<Pid> {
        (token & TOKEN_BIT != 0).then_some(Pid((token & !TOKEN_BIT) as u32 as i32))
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
        let exit = match drover_sys::wait::reap_pidfd(fd.as_fd()) {
            Ok(Some((_, exit))) => Some(ExitStatus::from(exit)),
            // Still running: the pidfd is not readable for that, but nothing
            // is lost by looking.
            Ok(None) => return None,
            Err(e) => {
                // ECHILD: reaped elsewhere; nothing to report from here.
                tracing::debug!(pid = pid.0, "waitid on a pidfd: {e}");
                None
            }
        };
        match exit {
            Some(status) => {
                // Reaped: nothing more can come from it (a readable pidfd
                // seen again before `release` finds no PID here).
                if let Some(fd) = self.by_pid.remove(&pid) {
                    self.reaped.push(fd);
                }
                Some((pid, status))
            }
            None => {
                self.forget(epoll, pid);
                None
            }
        }
    }

    /// Takes the pidfds reaped since the last call out of the epoll set and
    /// closes them. Call it before the loop waits again (a reaped pidfd
    /// stays readable).
    pub fn release(&mut self, epoll: &Epoll) {
        for fd in self.reaped.drain(..) {
            // Explicitly, as in `forget`.
            let _ = epoll.delete(fd.as_fd());
        }
    }
}

impl From<drover_sys::wait::Exit> for ExitStatus {
    fn from(exit: drover_sys::wait::Exit) -> Self {
        match exit {
            drover_sys::wait::Exit::Code(code) => ExitStatus::Code(code),
            drover_sys::wait::Exit::Signal(signal) => ExitStatus::Signal(signal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::epoll::{EpollCreateFlags, EpollTimeout};

    /// Waits (bounded) for one event of `epoll`; returns the events seen.
    fn wait(epoll: &Epoll, ms: u16) -> Vec<u64> {
        let mut events = [EpollEvent::empty(); 4];
        let n = epoll.wait(&mut events, EpollTimeout::from(ms)).unwrap();
        events[..n].iter().map(|e| e.data()).collect()
    }

    #[test]
    fn a_reaped_pidfd_stays_watched_until_release_but_is_no_longer_owned() {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = Pid(child.id() as i32);
        let fd = drover_sys::pidfd_open(pid.0).unwrap();
        let mut pidfds = Pidfds::default();
        pidfds.watch(&epoll, pid, fd);
        let token = Pidfds::token(pid);
        assert!(pidfds.owns(token));
        // The exit makes it readable (a generous bound for a loaded machine).
        let seen = wait(&epoll, 30_000);
        assert_eq!(seen, vec![token]);
        assert_eq!(
            pidfds.on_ready(&epoll, token),
            Some((pid, ExitStatus::Code(0)))
        );
        // Reaped: not owned any more (a second event for it is ignored) ...
        assert!(!pidfds.owns(token));
        assert_eq!(pidfds.on_ready(&epoll, token), None);
        // ... still in the epoll set (readable) until released ...
        assert_eq!(wait(&epoll, 0), vec![token]);
        pidfds.release(&epoll);
        // ... and gone after.
        assert!(wait(&epoll, 0).is_empty());
        drop(child);
    }
}
