//! [`Process`]: one run of a target function in a child process, started
//! through a start method and waited for like Python's
//! `multiprocessing.Process`.
//!
//! A process is `New` (holding its target and arguments), then `Running`
//! (holding its PID, a pidfd, and who reaps it), then `Finished` (holding
//! its exit code, or `None` if the status was lost). Spawn and fork
//! children are this process's own and are reaped with `waitpid` on their
//! PID — never `-1`, so the library composes with code that has children of
//! its own. A fork-server child is the server's; the server reports its exit
//! status over a socket that belongs to this `Process` alone.

use std::fmt;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use drover_sys::wire::{Packet, recv_packet};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::boot::Payload;
use super::error::{BootError, Error};
use super::wait::readable_before;
use super::{StartMethod, fork, forkserver, get_start_method, initialised, spawn};
use crate::sys::{pidfd_open, pidfd_send_signal};

/// What a [`Process`] can take as its target's argument: anything serde can
/// carry (a spawn or fork-server child decodes it from JSON), including
/// [`Queue`](super::Queue)s, which travel as fds. Pass a tuple or a struct
/// for several values.
pub trait Args: Serialize + DeserializeOwned + Send + 'static {}

impl<A: Serialize + DeserializeOwned + Send + 'static> Args for A {}

/// A target function and its arguments, not yet started.
pub(crate) trait Job: Send {
    /// Calls the target here (in a fork child), once.
    fn run_here(&mut self);
    /// Encodes the call for a child that does not share our memory.
    fn payload(&self) -> Result<Payload, Error>;
}

struct Call<A> {
    target: fn(A),
    /// `None` once the target has been called with them.
    args: Option<A>,
}

impl<A: Args> Job for Call<A> {
    fn run_here(&mut self) {
        if let Some(args) = self.args.take() {
            (self.target)(args);
        }
    }

    fn payload(&self) -> Result<Payload, Error> {
        let args = self.args.as_ref().ok_or(Error::AlreadyStarted)?;
        Payload::new(self.target, args)
    }
}

/// A target function run in a child process, like Python's
/// `multiprocessing.Process`. Made by [`Context::process`] or
/// [`Process::new`] (the default context); nothing runs until
/// [`start`](Process::start).
///
/// The target's return means exit code 0, a panic means 1 (after the panic
/// message on stderr), `std::process::exit(n)` means `n`, and death by a
/// signal gives the negative signal number, as in Python: `terminate()` →
/// `-15`, `kill()` → `-9`.
///
/// A `Process` dropped while its child runs does not stop the child; a
/// spawn or fork child is then reaped by a later [`start`](Process::start)
/// of any process (Python does the same), or stays a zombie until this
/// program exits.
///
/// [`Context::process`]: super::Context::process
pub struct Process {
    /// `None`: the default context's method, looked up at `start`.
    method: Option<StartMethod>,
    state: State,
}

enum State {
    New(Box<dyn Job>),
    Running(Running),
    /// `exitcode` is `None` when the status was lost.
    Finished {
        pid: i32,
        exitcode: Option<i32>,
    },
}

/// A started child.
pub(crate) struct Running {
    pub(crate) pid: i32,
    /// For signals that cannot hit a reused PID, and to wait with a deadline.
    pub(crate) pidfd: OwnedFd,
    pub(crate) reaper: Reaper,
}

/// Who learns the child's exit status.
pub(crate) enum Reaper {
    /// This process: the child is ours, `waitpid(pid)`.
    Parent,
    /// The fork server, which sends it over `conn`, in a notice about its
    /// start request `seq`.
    Server { conn: OwnedFd, seq: u64 },
}

/// How long a status check may block.
#[derive(Clone, Copy)]
enum Wait {
    Now,
    Until(Instant),
    Forever,
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Process");
        d.field("start_method", &self.method);
        match &self.state {
            State::New(_) => d.field("state", &"new"),
            State::Running(r) => d.field("state", &"running").field("pid", &r.pid),
            State::Finished { pid, exitcode } => d
                .field("state", &"finished")
                .field("pid", pid)
                .field("exitcode", exitcode),
        };
        d.finish()
    }
}

impl Process {
    /// A process of the default context (see
    /// [`set_start_method`](super::set_start_method)) that will call
    /// `target(args)`; the method is looked up when it starts, as in
    /// Python.
    pub fn new<A: Args>(target: fn(A), args: A) -> Process {
        Process {
            method: None,
            state: State::New(Box::new(Call {
                target,
                args: Some(args),
            })),
        }
    }

    pub(crate) fn with_method<A: Args>(method: StartMethod, target: fn(A), args: A) -> Process {
        let mut process = Process::new(target, args);
        process.method = Some(method);
        process
    }

    /// The method this process starts (or started) with.
    pub fn start_method(&self) -> StartMethod {
        self.method.unwrap_or_else(get_start_method)
    }

    /// Starts the child. Spawn and forkserver need
    /// [`init`](super::init) at the top of `main`.
    pub fn start(&mut self) -> Result<(), Error> {
        let method = self.start_method();
        let State::New(job) = &mut self.state else {
            return Err(Error::AlreadyStarted);
        };
        if method != StartMethod::Fork && !initialised() {
            return Err(Error::NotInitialised {
                method: method.as_str(),
            });
        }
        reap_abandoned();
        let running = match method {
            StartMethod::Spawn => spawn::start(job.as_ref())?,
            StartMethod::Forkserver => forkserver::start(job.as_ref())?,
            StartMethod::Fork => fork::start(job.as_mut())?,
        };
        self.method = Some(method);
        // Drops the target's arguments here: the child has its own.
        self.state = State::Running(running);
        Ok(())
    }

    /// The child's PID, once started.
    pub fn pid(&self) -> Option<i32> {
        match &self.state {
            State::New(_) => None,
            State::Running(r) => Some(r.pid),
            State::Finished { pid, .. } => Some(*pid),
        }
    }

    /// Waits until the child has exited.
    pub fn join(&mut self) -> Result<(), Error> {
        self.wait(Wait::Forever).map(drop)
    }

    /// Waits at most `timeout` for the child to exit; true if it has.
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<bool, Error> {
        // A timeout too long for the clock is no timeout.
        let until = Instant::now()
            .checked_add(timeout)
            .map_or(Wait::Forever, Wait::Until);
        self.wait(until).map(|code| code.is_some())
    }

    /// The exit code, or `None` while the child runs (or before it
    /// started, or when its status was lost): `n` for an exit with status
    /// `n`, `-N` for death by signal `N`.
    pub fn exitcode(&mut self) -> Option<i32> {
        self.wait(Wait::Now).ok().flatten()
    }

    /// Whether the child has started and not yet exited.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.state, State::Running(_)) && matches!(self.wait(Wait::Now), Ok(None))
    }

    /// Sends SIGTERM to the child (nothing if it has exited).
    pub fn terminate(&mut self) -> Result<(), Error> {
        self.signal(Signal::SIGTERM)
    }

    /// Sends SIGKILL to the child (nothing if it has exited).
    pub fn kill(&mut self) -> Result<(), Error> {
        self.signal(Signal::SIGKILL)
    }

    fn signal(&mut self, signal: Signal) -> Result<(), Error> {
        match &self.state {
            State::New(_) => Err(Error::NotStarted),
            State::Finished { .. } => Ok(()),
            State::Running(r) => match pidfd_send_signal(r.pidfd.as_fd(), signal as i32) {
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                other => other.map_err(Error::io("signal")),
            },
        }
    }

    fn wait(&mut self, how: Wait) -> Result<Option<i32>, Error> {
        let result = match &mut self.state {
            State::New(_) => return Err(Error::NotStarted),
            State::Finished {
                exitcode: Some(code),
                ..
            } => return Ok(Some(*code)),
            State::Finished {
                pid,
                exitcode: None,
            } => {
                return Err(Error::StatusLost { pid: *pid });
            }
            State::Running(r) => r.wait(how),
        };
        let pid = self.pid().unwrap_or_default();
        match result {
            Ok(Some(code)) => {
                self.state = State::Finished {
                    pid,
                    exitcode: Some(code),
                }
            }
            Err(Error::StatusLost { .. }) => {
                self.state = State::Finished {
                    pid,
                    exitcode: None,
                }
            }
            _ => {}
        }
        result
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let State::Running(Running {
            pid,
            reaper: Reaper::Parent,
            ..
        }) = self.state
            && let Ok(WaitStatus::StillAlive) =
                waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG))
        {
            abandon(pid);
        }
    }
}

impl Running {
    fn wait(&mut self, how: Wait) -> Result<Option<i32>, Error> {
        match &self.reaper {
            Reaper::Parent => wait_own(self.pid, &self.pidfd, how),
            Reaper::Server { conn, seq } => wait_server(self.pid, conn, *seq, how),
        }
    }
}

/// A child's exit as this library reports it: its code, or the number of
/// the signal that ended it, negated (real-time signals too).
pub(crate) fn exit_code(exit: drover_sys::wait::Exit) -> i32 {
    match exit {
        drover_sys::wait::Exit::Code(code) => code,
        drover_sys::wait::Exit::Signal(signal) => -signal,
    }
}

/// Waits for our own child `pid` (its pidfd is readable once it exits).
fn wait_own(pid: i32, pidfd: &OwnedFd, how: Wait) -> Result<Option<i32>, Error> {
    if let Wait::Forever = how {
        return drover_sys::wait::wait_for(pid)
            .map(|exit| Some(exit_code(exit)))
            .map_err(|_| Error::StatusLost { pid });
    }
    loop {
        match drover_sys::wait::reap(Some(pid)) {
            Ok(Some((_, exit))) => return Ok(Some(exit_code(exit))),
            Ok(None) => {}
            Err(_) => return Err(Error::StatusLost { pid }),
        }
        match how {
            Wait::Now | Wait::Forever => return Ok(None),
            Wait::Until(deadline) => {
                if !readable_before(pidfd.as_fd(), deadline).map_err(Error::io("wait"))? {
                    return Ok(None);
                }
            }
        }
    }
}

/// Waits for the fork server's exit notice about the child it started for
/// request `seq`.
fn wait_server(pid: i32, conn: &OwnedFd, seq: u64, how: Wait) -> Result<Option<i32>, Error> {
    loop {
        if let Wait::Until(deadline) = how
            && !readable_before(conn.as_fd(), deadline).map_err(Error::io("wait"))?
        {
            return Ok(None);
        }
        let dontwait = !matches!(how, Wait::Forever);
        match recv_packet(conn.as_fd(), forkserver::MAX_EXIT_NOTICE, dontwait) {
            Ok(Packet::Data(msg)) => {
                return match forkserver::decode_exit(&msg, seq) {
                    Some(code) => Ok(Some(code)),
                    None => Err(Error::StatusLost { pid }),
                };
            }
            Ok(Packet::TooLong(_) | Packet::Eof) => return Err(Error::StatusLost { pid }),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Wait::Now = how {
                    return Ok(None);
                }
            }
            Err(e) => return Err(Error::io("wait")(e)),
        }
    }
}

/// A spawn or fork child, just started: ours to reap.
pub(crate) fn own_child(pid: i32) -> Result<Running, Error> {
    match pidfd_open(pid) {
        Ok(pidfd) => Ok(Running {
            pid,
            pidfd,
            reaper: Reaper::Parent,
        }),
        Err(e) => {
            // Without a pidfd we cannot manage it safely: stop it now.
            let pid = Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            Err(Error::io("pidfd_open")(e))
        }
    }
}

/// Runs a child's target and returns its exit code: 0 when it returns,
/// 1 when it panics (the panic hook has printed the message) or cannot
/// start (the reason goes to stderr). Stdout is flushed either way.
pub(crate) fn child_exit_code(run: impl FnOnce() -> Result<(), BootError>) -> i32 {
    let code = match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("drover: context child: {e}");
            1
        }
        Err(_) => 1,
    };
    let _ = std::io::stdout().flush();
    code
}

/// Children whose `Process` was dropped while they ran: reaped, without
/// blocking, at the next start.
static ABANDONED: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn reap_abandoned() {
    lock(&ABANDONED).retain(|&pid| {
        matches!(
            waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR)
        )
    });
}

/// Pushes a child of ours that nothing waits for onto the abandoned list.
pub(crate) fn abandon(pid: i32) {
    lock(&ABANDONED).push(pid);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
