//! Fork-then-exec paths: the `fork` start method, and the fork server's
//! `clone(CLONE_PARENT)` that makes drover the parent of what it starts.
//!
//! Everything the child touches is prepared in an [`ExecSetup`] before the
//! fork; the child only makes async-signal-safe calls (`setpgid`,
//! `sigaction`, `sigprocmask`, `dup2`, `fcntl`, `close_range`, `chdir`,
//! `execve`, `write`, `_exit`) on that prepared data, allocates nothing and
//! drops nothing (`setrlimit` restores drover's original open-file limit
//! or sets the group's limits; `setgroups`, `setresgid` and `setresuid`, as
//! raw system calls, switch users).
//! An exec failure is reported to the parent as an errno on a
//! close-on-exec pipe, so a start either returns a PID that runs the program
//! or an error — the same contract as `posix_spawn`.

use std::cell::UnsafeCell;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

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
    default_action: libc::sigaction,
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
        // SAFETY: all-zero is a valid sigaction/sigset_t bit pattern; the
        // fields that matter are set right below.
        let mut default_action: libc::sigaction = unsafe { std::mem::zeroed() };
        default_action.sa_sigaction = libc::SIG_DFL;
        // SAFETY: as above.
        let mut empty_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both point to valid, writable sigset_t values.
        unsafe {
            libc::sigemptyset(&mut empty_mask);
            libc::sigemptyset(&mut default_action.sa_mask);
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
            default_action,
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
        unsafe { child(setup, err_w_raw) }
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

/// The child between fork and exec.
///
/// # Safety
///
/// Must only be called in a freshly forked child. It performs only
/// async-signal-safe system calls on `setup`, which was fully built before
/// the fork, and ends in `execve` or `_exit`.
unsafe fn child(setup: &ExecSetup, err_w: RawFd) -> ! {
    // SAFETY: each call below is an async-signal-safe libc wrapper given
    // valid pointers into `setup` (alive: the child owns a copy of the
    // parent's memory) or plain integers.
    unsafe {
        libc::setpgid(0, 0);
        if let Some(limit) = &setup.nofile {
            libc::setrlimit(libc::RLIMIT_NOFILE, limit);
        }
        for (resource, limit) in &setup.limits {
            if libc::setrlimit(*resource as _, limit) != 0 {
                fail(err_w);
            }
        }
        // Raw system calls, as in the `spawn` child: glibc's set*id
        // wrappers coordinate with threads that this copy does not have.
        if let Some(user) = &setup.user
            && (libc::syscall(libc::SYS_setgroups, user.groups.len(), user.groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setresgid, user.gid, user.gid, user.gid) != 0
                || libc::syscall(libc::SYS_setresuid, user.uid, user.uid, user.uid) != 0)
        {
            fail(err_w);
        }
        for signal in 1..NSIG {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::sigaction(signal, &setup.default_action, std::ptr::null_mut());
            }
        }
        // glibc's sigaction refuses its internal signals 32 and 33, which
        // drover may have inherited ignored (from a posix_spawn parent):
        // reset them with the raw system call. The kernel's sigaction is
        // four words (handler = SIG_DFL = 0, flags, restorer, mask) and the
        // mask size argument is 8 bytes.
        for signal in [32, 33] {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                KERNEL_SIG_DFL.as_ptr(),
                std::ptr::null_mut::<libc::c_void>(),
                8usize,
            );
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &setup.empty_mask, std::ptr::null_mut());
        for &(source, target) in &setup.fds.dups {
            if libc::dup2(source, target) < 0 {
                fail(err_w);
            }
        }
        for &fd in &setup.fds.keep {
            libc::fcntl(fd, libc::F_SETFD, 0);
        }
        if let Some(first) = setup.fds.close_from {
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
            exec(setup, err_w)
        }
        exec(setup, err_w)
    }
}

/// chdir and execve; reports the errno and exits on failure.
///
/// # Safety
///
/// Same contract as [`child`].
unsafe fn exec(setup: &ExecSetup, err_w: RawFd) -> ! {
    // SAFETY: async-signal-safe calls on prepared, null-terminated arrays.
    // The PID entry is written through its UnsafeCell in the child's own
    // copy of memory, where nothing else runs.
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
        fail(err_w)
    }
}

/// Writes errno to the error pipe and exits with 127.
///
/// # Safety
///
/// Same contract as [`child`].
unsafe fn fail(err_w: RawFd) -> ! {
    // SAFETY: errno location, write and _exit are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(err_w, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}
