//! Fork-then-exec paths: the `fork` start method, and the fork server's
//! sibling starts that make drover the parent of what it starts.
//!
//! Everything the child touches is prepared in an [`ExecSetup`] before the
//! fork; the child only makes async-signal-safe calls (`setpgid`,
//! `rt_sigaction`, `sigprocmask`, `dup2`, `fcntl`, `close_range`, `chdir`,
//! `execve`, `write`, `_exit`) on that prepared data, allocates nothing and
//! drops nothing (`setrlimit` restores drover's original open-file limit
//! or sets the group's limits; `setgroups`, `setresgid` and `setresuid`, as
//! raw system calls, switch users). A start either returns a PID that runs
//! the program or an error — the same contract as `posix_spawn`.
//!
//! Two ways to create the child:
//! - [`fork_exec`]: `fork()` (or, for [`ForkKind::SiblingOfCaller`],
//!   `clone(CLONE_PARENT)`), a copy of the caller's memory; an exec
//!   failure comes back as an errno on a close-on-exec pipe.
//! - [`SiblingStarter`], the fork server's way: `clone(CLONE_VM |
//!   CLONE_VFORK | CLONE_PARENT)`, as glibc's `posix_spawn` does but with
//!   the caller's parent as the parent. The child shares the caller's
//!   memory on a stack of its own, so no page table is copied (nor torn
//!   down again at exec) and no page is copied on write; the caller is
//!   suspended until the child has exec'd or exited, so an exec failure is
//!   an errno the child stores in that shared memory, without a pipe. The
//!   caller blocks every signal around the `clone` and the child resets
//!   every disposition that is not the default before it unblocks them, so
//!   no handler of the caller ever runs in the child. What the child gets —
//!   fds, process group, signal mask and dispositions, limits, user, cwd,
//!   environment — is the same either way.

use std::cell::UnsafeCell;
use std::ffi::{CString, c_void};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

/// The kernel's `struct sigaction` for "default disposition, no flags,
/// empty mask" (see `child`).
static KERNEL_SIG_DFL: [u64; 4] = [0; 4];

/// One past the highest signal number on Linux (`_NSIG`).
const NSIG: libc::c_int = 65;

/// What the child does with file descriptors before exec.
#[derive(Debug)]
pub struct FdSetup {
    /// `(source, target)` pairs, applied in order with `dup2`. Sources must
    /// not collide with targets (the caller relocates them first).
    pub dups: Vec<(RawFd, RawFd)>,
    /// Fds kept at their own number, with close-on-exec cleared.
    pub keep: Vec<RawFd>,
    /// Close every fd from this number on (none: inherit every fd that is
    /// not close-on-exec, the `fork` method's defining property).
    pub close_from: Option<RawFd>,
}

/// A program start prepared for a fork: C strings and pointer arrays.
#[derive(Debug)]
pub struct ExecSetup {
    program: CString,
    cwd: CString,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    fds: FdSetup,
    empty_mask: libc::sigset_t,
    /// The open-file limit the child starts with (drover's original one).
    nofile: Option<libc::rlimit>,
    /// The `LISTEN_PID=` entry of the environment, which the child fills
    /// with its own PID (see [`crate::PID_SLOT`]); `envp_ptrs` points at it.
    pid_var: Option<Box<UnsafeCell<crate::PidVar>>>,
    /// The limits to set, then the user to switch to ([`crate::Identity`]).
    limits: Vec<(i32, libc::rlimit)>,
    user: Option<crate::Credentials>,
}

impl ExecSetup {
    pub fn new(
        program: CString,
        argv: Vec<CString>,
        envp: Vec<CString>,
        cwd: CString,
        fds: FdSetup,
    ) -> ExecSetup {
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        // SAFETY: all-zero is a valid sigset_t bit pattern; it is emptied
        // properly right below.
        let mut empty_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: points to a valid, writable sigset_t.
        unsafe {
            libc::sigemptyset(&mut empty_mask);
        }
        let mut envp_ptrs = ptrs(&envp);
        let pid_var = crate::pid_slot(&envp).map(|i| {
            let cell = Box::new(UnsafeCell::new([0u8; 32]));
            envp_ptrs[i] = cell.get().cast::<libc::c_char>().cast_const();
            cell
        });
        ExecSetup {
            argv_ptrs: ptrs(&argv),
            envp_ptrs,
            pid_var,
            program,
            cwd,
            _argv: argv,
            _envp: envp,
            fds,
            empty_mask,
            nofile: super::child_fd_limit(),
            limits: Vec::new(),
            user: None,
        }
    }

    /// The child runs as `identity` says: its limits (the original
    /// open-file limit unless they set one) and its user.
    pub fn with_identity(mut self, identity: &crate::Identity) -> ExecSetup {
        self.nofile = identity.original_nofile();
        self.limits = identity.limits();
        self.user = identity.user.clone();
        self
    }
}

/// [`crate::spawn`] by fork + exec: the fds placed at 0, 1, 2, …, every
/// other fd closed, a new process group. For starts that `posix_spawn`
/// cannot make (a user switch, limits) when the shared-table path is not
/// available.
pub(crate) fn fork_exec_plan(plan: &crate::SpawnPlan) -> io::Result<i32> {
    let (sources, _moved) = crate::relocate(&plan.fds.sources, 0)?;
    let setup = ExecSetup::new(
        plan.program.clone(),
        plan.argv.clone(),
        plan.envp.clone(),
        plan.cwd.clone(),
        FdSetup {
            dups: sources
                .iter()
                .enumerate()
                .map(|(i, &s)| (s, i as RawFd))
                .collect(),
            keep: Vec::new(),
            close_from: Some(sources.len() as RawFd),
        },
    )
    .with_identity(&plan.identity);
    match start(&setup, ForkKind::Fork)? {
        (pid, None) => Ok(pid),
        (pid, Some(error)) => {
            // As on the other ways of `spawn`: an error leaves no process.
            // The child has reported and is exiting: a short wait.
            let mut status = 0;
            // SAFETY: waits for our own child through a valid pointer.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
            Err(error)
        }
    }
}

/// How the new process is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkKind {
    /// `fork()`: the caller is the parent.
    Fork,
    /// `clone(CLONE_PARENT)`: the caller's parent becomes the parent, so a
    /// fork server's children are reaped by drover itself.
    SiblingOfCaller,
}

/// Forks (or clones as a sibling) and execs `setup`. Returns the new PID
/// once the program runs, or the errno of the failed exec.
pub fn fork_exec(setup: &ExecSetup, kind: ForkKind) -> io::Result<i32> {
    match start(setup, kind)? {
        (pid, None) => Ok(pid),
        (_, Some(error)) => Err(error),
    }
}

/// [`fork_exec`], with the PID of a child whose exec failed and reported
/// its errno (it has exited, or is about to: it writes, then `_exit`s).
fn start(setup: &ExecSetup, kind: ForkKind) -> io::Result<(i32, Option<io::Error>)> {
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC)?;
    let err_w_raw = err_w.as_raw_fd();
    let pid = match kind {
        // SAFETY: the child branch below only runs `child`, which makes
        // async-signal-safe calls on data prepared before the fork and never
        // returns; the parent continues normally.
        ForkKind::Fork => unsafe { libc::fork() },
        // SAFETY: a raw clone without CLONE_VM is a fork whose child gets the
        // caller's parent; glibc's fork bookkeeping (atfork handlers, cached
        // TIDs) is skipped, which is sound because the child only makes raw
        // async-signal-safe calls before exec. All other arguments are zero
        // (no new stack: the child continues on a copy of this one).
        ForkKind::SiblingOfCaller => unsafe {
            libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            ) as libc::pid_t
        },
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the freshly forked child; see `child`.
        unsafe { child(setup, Sink::Pipe(err_w_raw), None) }
    }
    drop(err_w);
    let mut errno = [0u8; 4];
    let mut file = std::fs::File::from(err_r);
    match std::io::Read::read(&mut file, &mut errno) {
        Ok(4) => Ok((
            pid,
            Some(io::Error::from_raw_os_error(i32::from_ne_bytes(errno))),
        )),
        Ok(_) => Ok((pid, None)),
        Err(e) => Err(e),
    }
}

/// Starts programs as siblings of the calling process (its parent is
/// theirs) with `clone(CLONE_VM | CLONE_VFORK | CLONE_PARENT)`: the fork
/// server's way (see the module docs). Holds the child's stack and the
/// signals whose disposition the child must reset, both prepared once.
///
/// For a single-threaded caller that installs or ignores no signal after
/// [`SiblingStarter::new`] (the fork server): the dispositions are read
/// once, there.
pub struct SiblingStarter {
    /// None: the stack could not be mapped; starts fall back to
    /// [`ForkKind::SiblingOfCaller`].
    stack: Option<crate::vfork::Stack>,
    /// The signals whose disposition here is not `SIG_DFL`.
    reset: Vec<libc::c_int>,
}

impl SiblingStarter {
    pub fn new() -> SiblingStarter {
        SiblingStarter {
            stack: crate::vfork::Stack::new().ok(),
            reset: non_default_signals(),
        }
    }

    /// A starter that always takes the copying path (for tests of that
    /// fallback).
    pub fn copying() -> SiblingStarter {
        SiblingStarter {
            stack: None,
            reset: non_default_signals(),
        }
    }

    /// Whether starts share this process's memory (rather than copy it).
    pub fn shares_memory(&self) -> bool {
        self.stack.is_some()
    }

    /// Starts `setup` as a sibling of this process. Returns the new PID
    /// once the program runs, or the errno of the failed start (the child
    /// has then exited, as a child of this process's parent).
    pub fn start(&mut self, setup: &ExecSetup) -> io::Result<i32> {
        let Some(stack) = &self.stack else {
            return fork_exec(setup, ForkKind::SiblingOfCaller);
        };
        let args = SiblingArgs {
            setup,
            reset: &self.reset,
            errno: AtomicI32::new(0),
        };
        // No handler of this process may run in the child before it has
        // reset the dispositions.
        let blocked = crate::vfork::SignalsBlocked::new();
        let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT | libc::SIGCHLD;
        // SAFETY: `sibling` runs on its own stack (the mapping in `self`,
        // borrowed mutably: one start at a time) and reads `args`, which
        // lives in this frame until after `clone` returns: with CLONE_VFORK
        // this thread is suspended until the child has exec'd or exited.
        // The child writes nothing of ours but `args.errno` and the PID
        // entry of `setup` (an UnsafeCell, see `exec`).
        let pid = unsafe {
            libc::clone(
                sibling,
                stack.top(),
                flags,
                (&args as *const SiblingArgs).cast_mut().cast(),
            )
        };
        let error = io::Error::last_os_error();
        drop(blocked);
        if pid < 0 {
            return Err(error);
        }
        match args.errno.load(Ordering::Acquire) {
            0 => Ok(pid),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

impl std::fmt::Debug for SiblingStarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiblingStarter")
            .field("shares_memory", &self.shares_memory())
            .field("reset", &self.reset)
            .finish()
    }
}

impl Default for SiblingStarter {
    fn default() -> Self {
        SiblingStarter::new()
    }
}

/// What a [`SiblingStarter`] child reads, and where it reports a failure.
struct SiblingArgs<'a> {
    setup: &'a ExecSetup,
    reset: &'a [libc::c_int],
    /// The errno of the step that failed; 0: none did (the child exec'd).
    errno: AtomicI32,
}

/// The signals whose disposition in this process is not the default
/// (handled or ignored), read with the raw system call (glibc refuses its
/// internal signals 32 and 33).
fn non_default_signals() -> Vec<libc::c_int> {
    (1..NSIG)
        .filter(|&signal| signal != libc::SIGKILL && signal != libc::SIGSTOP)
        .filter(|&signal| {
            let mut old = [0u64; 4];
            // SAFETY: a query (no new action) into a local as large as the
            // kernel's struct sigaction (at most four words).
            let r = unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    std::ptr::null::<c_void>(),
                    old.as_mut_ptr(),
                    8usize,
                )
            };
            // Unreadable, a handler or SIG_IGN (the first word), or flags
            // left from one: reset it (one call more costs nothing).
            r != 0 || old[0] != 0 || old[1] != 0
        })
        .collect()
}

/// The [`SiblingStarter`] child, from `clone` to `execve`.
extern "C" fn sibling(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` points to the parent's SiblingArgs, alive and unchanged
    // until this child has exec'd or exited (see `SiblingStarter::start`);
    // this is a freshly cloned child on its own stack with every signal
    // blocked, which is what `child` requires.
    unsafe {
        let args = &*arg.cast::<SiblingArgs>();
        child(args.setup, Sink::Shared(&args.errno), Some(args.reset))
    }
}

/// Where the child reports the errno of a failed start.
#[derive(Clone, Copy)]
enum Sink {
    /// A close-on-exec pipe to the parent (a forked child: its own memory).
    Pipe(RawFd),
    /// Memory shared with the suspended parent (`CLONE_VM | CLONE_VFORK`).
    Shared(*const AtomicI32),
}

/// Resets `signal`'s disposition to the default with the raw system call
/// (which, unlike glibc's `sigaction`, accepts its internal signals 32 and
/// 33, which drover may have inherited ignored from a posix_spawn parent).
/// The kernel's sigaction is four words (handler = SIG_DFL = 0, flags,
/// restorer, mask) and the mask size argument is 8 bytes.
///
/// # Safety
///
/// Async-signal-safe; for the child between clone and exec.
unsafe fn reset_signal(signal: libc::c_int) {
    // SAFETY: a raw system call given a pointer to a static of the
    // kernel's struct size.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            signal,
            KERNEL_SIG_DFL.as_ptr(),
            std::ptr::null_mut::<libc::c_void>(),
            8usize,
        );
    }
}

/// The child between fork and exec.
///
/// `reset`: the signals whose disposition to reset (none: every one).
///
/// # Safety
///
/// Must only be called in a freshly forked child, or a `CLONE_VM |
/// CLONE_VFORK` child on its own stack with every signal blocked and
/// `reset` naming every signal not at its default. It performs only
/// async-signal-safe system calls on `setup`, which was fully built before
/// the fork, and ends in `execve` or `_exit`.
unsafe fn child(setup: &ExecSetup, sink: Sink, reset: Option<&[libc::c_int]>) -> ! {
    // SAFETY: each call below is an async-signal-safe libc wrapper given
    // valid pointers into `setup` (alive: the child owns a copy of the
    // parent's memory, or shares it with the suspended parent) or plain
    // integers.
    unsafe {
        match reset {
            Some(signals) => signals.iter().for_each(|&s| reset_signal(s)),
            None => (1..NSIG)
                .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
                .for_each(|s| reset_signal(s)),
        }
        libc::setpgid(0, 0);
        if let Some(limit) = &setup.nofile {
            libc::setrlimit(libc::RLIMIT_NOFILE, limit);
        }
        for (resource, limit) in &setup.limits {
            if libc::setrlimit(*resource as _, limit) != 0 {
                fail(sink);
            }
        }
        // Raw system calls, as in the `spawn` child: glibc's set*id
        // wrappers coordinate with threads that this child does not have.
        if let Some(user) = &setup.user
            && (libc::syscall(libc::SYS_setgroups, user.groups.len(), user.groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setresgid, user.gid, user.gid, user.gid) != 0
                || libc::syscall(libc::SYS_setresuid, user.uid, user.uid, user.uid) != 0)
        {
            fail(sink);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &setup.empty_mask, std::ptr::null_mut());
        for &(source, target) in &setup.fds.dups {
            if libc::dup2(source, target) < 0 {
                fail(sink);
            }
        }
        for &fd in &setup.fds.keep {
            libc::fcntl(fd, libc::F_SETFD, 0);
        }
        match (setup.fds.close_from, sink) {
            (None, _) => exec(setup, sink),
            (Some(first), Sink::Shared(_)) => {
                libc::syscall(
                    libc::SYS_close_range,
                    first as libc::c_uint,
                    libc::c_uint::MAX,
                    0,
                );
                exec(setup, sink)
            }
            (Some(first), Sink::Pipe(err_w)) => {
                // close_range(2) is a plain syscall; the error pipe is
                // close-on-exec, so it must survive until exec: move it first.
                let high = libc::fcntl(err_w, libc::F_DUPFD_CLOEXEC, first.max(1024));
                let err_w = if high >= 0 { high } else { err_w };
                libc::syscall(
                    libc::SYS_close_range,
                    first as libc::c_uint,
                    (err_w - 1) as libc::c_uint,
                    0,
                );
                libc::syscall(
                    libc::SYS_close_range,
                    (err_w + 1) as libc::c_uint,
                    libc::c_uint::MAX,
                    0,
                );
                exec(setup, Sink::Pipe(err_w))
            }
        }
    }
}

/// chdir and execve; reports the errno and exits on failure.
///
/// # Safety
///
/// Same contract as [`child`].
unsafe fn exec(setup: &ExecSetup, sink: Sink) -> ! {
    // SAFETY: async-signal-safe calls on prepared, null-terminated arrays.
    // The PID entry is written through its UnsafeCell: in the child's own
    // copy of memory, or (shared memory) while the parent is suspended and
    // nothing else reads it.
    unsafe {
        if let Some(cell) = &setup.pid_var {
            let pid = libc::syscall(libc::SYS_getpid) as libc::pid_t;
            crate::write_pid_var(&mut *cell.get(), pid);
        }
        if libc::chdir(setup.cwd.as_ptr()) == 0 {
            libc::execve(
                setup.program.as_ptr(),
                setup.argv_ptrs.as_ptr(),
                setup.envp_ptrs.as_ptr(),
            );
        }
        fail(sink)
    }
}

/// Reports errno to the parent and exits with 127.
///
/// # Safety
///
/// Same contract as [`child`].
unsafe fn fail(sink: Sink) -> ! {
    // SAFETY: errno location, write, an atomic store into the suspended
    // parent's frame (alive until this child exits) and _exit are
    // async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        match sink {
            Sink::Pipe(err_w) => {
                let bytes = errno.to_ne_bytes();
                libc::write(err_w, bytes.as_ptr().cast(), bytes.len());
            }
            // A failure with errno 0 cannot happen; report EIO rather than
            // success if it ever did.
            Sink::Shared(cell) => (*cell).store(
                if errno == 0 { libc::EIO } else { errno },
                Ordering::Release,
            ),
        }
        libc::_exit(127)
    }
}
