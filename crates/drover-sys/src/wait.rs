//! Reaping children, with every way a child can end decoded.
//!
//! nix's `WaitStatus` names a terminating signal with its `Signal` enum,
//! which has no real-time signals (SIGRTMIN..SIGRTMAX): for a child killed
//! by one, `waitpid` and `waitid` reap it and then return `EINVAL`, and the
//! exit is lost. These return the raw signal number instead.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it (any number, real-time ones included).
    Signal(i32),
}

impl Exit {
    /// From a `waitpid` status of a child that has terminated; `None` for
    /// a stopped or continued one.
    pub fn from_wait_status(status: libc::c_int) -> Option<Exit> {
        if libc::WIFEXITED(status) {
            Some(Exit::Code(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(Exit::Signal(libc::WTERMSIG(status)))
        } else {
            None
        }
    }
}

/// Reaps `pid` (any child for `None`) if it has terminated, without
/// waiting: `Ok(None)` when none has (stopped and continued children are
/// not reported). `ECHILD` (no such child) is an error.
pub fn reap(pid: Option<i32>) -> io::Result<Option<(i32, Exit)>> {
    let target = pid.unwrap_or(-1);
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes only `status`.
        let got = unsafe { libc::waitpid(target, &mut status, libc::WNOHANG) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if got == 0 {
            return Ok(None);
        }
        match Exit::from_wait_status(status) {
            Some(exit) => return Ok(Some((got, exit))),
            // Without WUNTRACED/WCONTINUED the kernel reports neither; if
            // it did, there is nothing to reap yet.
            None => return Ok(None),
        }
    }
}

/// Waits until child `pid` has terminated, and reaps it.
pub fn wait_for(pid: i32) -> io::Result<Exit> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes only `status`.
        if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if let Some(exit) = Exit::from_wait_status(status) {
            return Ok(exit);
        }
    }
}

/// Reaps the child behind `pidfd` if it has terminated, without waiting:
/// `Ok(None)` when it runs still.
pub fn reap_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<Option<(i32, Exit)>> {
    loop {
        // SAFETY: all-zero is a valid siginfo_t; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes only `info`.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: for a SIGCHLD-style siginfo (what waitid fills), si_pid
        // and si_status are the fields set; si_pid stays 0 when nothing
        // was reaped (WNOHANG).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        let exit = match info.si_code {
            libc::CLD_EXITED => Exit::Code(status),
            libc::CLD_KILLED | libc::CLD_DUMPED => Exit::Signal(status),
            // Not requested (no WSTOPPED/WCONTINUED): nothing reaped.
            _ => return Ok(None),
        };
        return Ok(Some((pid, exit)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    /// How a forked test child ends.
    #[derive(Clone, Copy)]
    enum End {
        Code(i32),
        /// Raises this signal (by default it ends the process).
        Raise(i32),
        /// Waits to be killed.
        Pause,
    }

    fn fork_child(end: End) -> i32 {
        // SAFETY: the child calls only async-signal-safe functions (raise,
        // pause, _exit) and never returns into the test harness.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                match end {
                    End::Code(code) => libc::_exit(code),
                    End::Raise(signal) => {
                        libc::raise(signal);
                    }
                    End::Pause => {
                        libc::pause();
                    }
                }
                libc::_exit(0)
            }
        }
        assert!(pid > 0, "fork: {}", io::Error::last_os_error());
        pid
    }

    fn pidfd(pid: i32) -> OwnedFd {
        // SAFETY: pidfd_open takes a pid and flags, returns an fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        assert!(fd >= 0, "pidfd_open: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// Waits until `pid` has terminated, leaving it to be reaped.
    fn wait_exited(pid: i32) {
        // SAFETY: all-zero is a valid siginfo_t.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOWAIT;
        // SAFETY: waitid writes only `info`.
        let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
        assert_eq!(r, 0, "waitid: {}", io::Error::last_os_error());
    }

    fn kill(pid: i32, signal: i32) {
        // SAFETY: kill has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    #[test]
    fn a_real_time_signal_exit_is_reported_by_every_way() {
        let rt = libc::SIGRTMIN() + 6;
        for by_pidfd in [false, true] {
            let pid = fork_child(End::Raise(rt));
            let fd = pidfd(pid);
            wait_exited(pid);
            let got = if by_pidfd {
                reap_pidfd(fd.as_fd()).unwrap()
            } else {
                reap(Some(pid)).unwrap()
            };
            assert_eq!(got, Some((pid, Exit::Signal(rt))), "by pidfd: {by_pidfd}");
        }
        let pid = fork_child(End::Raise(libc::SIGRTMIN()));
        assert_eq!(wait_for(pid).unwrap(), Exit::Signal(libc::SIGRTMIN()));
    }

    #[test]
    fn codes_and_running_children() {
        let pid = fork_child(End::Code(7));
        wait_exited(pid);
        assert_eq!(reap(Some(pid)).unwrap(), Some((pid, Exit::Code(7))));
        let gone = reap(Some(pid)).unwrap_err();
        assert_eq!(gone.raw_os_error(), Some(libc::ECHILD));

        let pid = fork_child(End::Pause);
        let fd = pidfd(pid);
        assert_eq!(reap_pidfd(fd.as_fd()).unwrap(), None, "still running");
        assert_eq!(reap(Some(pid)).unwrap(), None, "still running");
        kill(pid, libc::SIGRTMAX());
        wait_exited(pid);
        let got = reap_pidfd(fd.as_fd()).unwrap();
        assert_eq!(got, Some((pid, Exit::Signal(libc::SIGRTMAX()))));
    }
}
