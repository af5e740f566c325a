//! [`spawn`](crate::spawn) through a shared fd table: the path that keeps a
//! start's kernel cost independent of how many fds this process holds.
//!
//! Why: `posix_spawn` (glibc: `clone(CLONE_VM | CLONE_VFORK)`) gives the
//! child a copy of the caller's whole fd table, and the child then closes
//! all of it (a close action, or close-on-exec at `execve`). A supervisor
//! holds two pipes per child, so with 1000 children every start copied and
//! closed some 2000 `struct file` references — cold cache lines, about half
//! a millisecond per start, most of a restart's cost.
//!
//! How: the child is created with `CLONE_FILES` as well, so nothing is
//! copied at `clone`, and its first fd operation is
//! `close_range(END, ~0, CLOSE_RANGE_UNSHARE)` (Linux ≥ 5.9): when the range
//! reaches the end of the table, the kernel gives the child a private table
//! holding only a copy of fds `0..END`. For that prefix to be small and
//! hold the child's fds, this process reserves, early, a run of *scratch
//! slots* ([`reserve_spawn_slots`]) at low numbers, held by close-on-exec
//! placeholders (one `/dev/null` file). A start copies the child's fds into
//! the first slots (`dup3`, close-on-exec), so `END` is the end of the
//! slots it uses; the child, in its private table, moves them down to 0, 1,
//! 2, … with `dup2` and closes everything above. The parent, suspended by
//! `CLONE_VFORK` until the `execve` succeeds or the child exits, puts the
//! placeholders back. This process's own fds 0, 1 and 2 are never touched,
//! so other threads may go on using them.
//!
//! The child runs on a separate stack in this process's memory and makes
//! only raw system calls on data prepared before the `clone`, as glibc's
//! `posix_spawn` child does: reset every signal disposition that is not the
//! default (all of them until [`note_signal_dispositions`] has looked), `setpgid`,
//! `setrlimit` (the original open-file limit, or the group's limits),
//! `setgroups`/`setresgid`/`setresuid` for a user switch, the unshare, the `dup2`s, `close_range`, `chdir`, an empty
//! signal mask, `execve`. A failure is written into memory shared with the
//! parent (`CLONE_VM`) before `_exit`, so the caller gets the errno and no
//! process — the same contract as `posix_spawn`. `CLONE_PIDFD` returns a
//! pidfd for the child with it.
//!
//! Fallback: not reserved, a start needing more fds than there are slots,
//! the slots in use by another thread, or a kernel without
//! `CLOSE_RANGE_UNSHARE` (remembered) — the caller uses `posix_spawn`.

use std::ffi::c_void;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use crate::{PidVar, SpawnPlan, pid_slot, ptr_array, write_pid_var};

/// The reserved slots, if any; locked for the duration of a start.
static SLOTS: Mutex<Option<Slots>> = Mutex::new(None);

/// The kernel lacks `CLOSE_RANGE_UNSHARE` (or `close_range`): every start
/// falls back to `posix_spawn`.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// The child's stack. It runs a handful of system-call wrappers.
const STACK_SIZE: usize = 64 * 1024;

/// The kernel's `struct sigaction` for "default disposition, no flags,
/// empty mask": four zero words cover it on every architecture.
static KERNEL_SIG_DFL: [u64; 4] = [0; 4];

/// One past the highest signal number on Linux (`_NSIG`).
const NSIG: libc::c_int = 65;

/// The signals whose disposition a child resets (signal `n` at bit `n - 1`):
/// all of them until [`note_signal_dispositions`] has looked, then those
/// that were not at their default when it did, plus [`ALWAYS_RESET`].
static RESET: AtomicU64 = AtomicU64::new(!0);

/// Reset whatever a snapshot said: `SIGPIPE`, `SIGIO` and `SIGXFSZ`, which
/// this process may ignore later on (Rust's runtime ignores `SIGPIPE`; a
/// config-file lease ignores `SIGIO` the first time it is taken; drover
/// ignores `SIGXFSZ` so that a write past the file-size limit fails instead
/// of killing it), and glibc's internal signals 32 and 33, whose
/// dispositions its `sigaction` does not report.
const ALWAYS_RESET: u64 =
    bit(libc::SIGPIPE) | bit(libc::SIGIO) | bit(libc::SIGXFSZ) | bit(32) | bit(33);

/// Signal `n`'s bit in a [`RESET`] mask.
const fn bit(signal: libc::c_int) -> u64 {
    1 << (signal - 1)
}

/// Looks at every signal's disposition now and remembers those that are
/// not the default (a handler or `SIG_IGN`): from then on, a child started
/// through the shared table resets only those (and `SIGPIPE`, `SIGIO`,
/// `SIGXFSZ` and glibc's internal 32 and 33, whatever they were) before
/// its `execve`, instead of all 62 — one system call each, made while this
/// thread waits for the child, so some 30 µs of every start on a VM.
///
/// Call it once this process has installed its signal handlers, and again
/// after any later change of a disposition; a handler installed afterwards
/// without a new call could run in a child before its `execve` (blocked
/// signals make that window the few calls after the child's unmask) and an
/// ignored signal would stay ignored in the program it runs. Returns the
/// mask it recorded.
pub fn note_signal_dispositions() -> u64 {
    let mut mask = ALWAYS_RESET;
    for signal in 1..NSIG {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP || mask & bit(signal) != 0 {
            continue;
        }
        // SAFETY: a query only (no new action): the kernel writes the
        // current one into a zeroed local of the right type.
        let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above; the pointers are valid for the call.
        let rc = unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) };
        if rc != 0 || current.sa_sigaction != libc::SIG_DFL {
            // Not known to be the default: reset it.
            mask |= bit(signal);
        }
    }
    RESET.store(mask, Ordering::Relaxed);
    mask
}

/// Scratch slots and the stack of the child, owned by [`SLOTS`].
struct Slots {
    /// The slots are `base..base + count`.
    base: RawFd,
    count: usize,
    /// The placeholder every idle slot holds a copy of, above the slots.
    placeholder: OwnedFd,
    stack: Stack,
}

/// An `mmap`ed stack with a guard page below it.
pub(crate) struct Stack {
    base: *mut c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it is only used
// while SLOTS is locked, by one start at a time.
unsafe impl Send for Stack {}

impl Stack {
    pub(crate) fn new() -> io::Result<Stack> {
        // SAFETY: sysconf reads a constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = STACK_SIZE + page;
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choice; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the first page lies within the mapping just created; it
        // becomes the guard page (a stack overflow faults instead of
        // writing below the stack).
        unsafe { libc::mprotect(base, page, libc::PROT_NONE) };
        Ok(Stack { base, len })
    }

    /// The initial stack pointer: the end of the mapping (stacks grow down
    /// on every architecture Linux and Rust share), 16-byte aligned.
    pub(crate) fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping, which is page aligned.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

/// Reserves `count` scratch slots for [`spawn`](crate::spawn): a run of
/// consecutive fd numbers, as low as possible from 3 on, each holding a
/// close-on-exec copy of `/dev/null`. Call it once, early (before the
/// process opens its other fds, so that the run starts at 3). Returns the
/// slots; a second call returns the first call's slots.
///
/// The slots belong to this module for the rest of the process's life:
/// nothing else may close them or `dup2` onto them.
pub fn reserve_spawn_slots(count: usize) -> io::Result<Range<RawFd>> {
    let mut slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = slots.as_ref() {
        return Ok(s.base..s.base + s.count as RawFd);
    }
    if count == 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let null = OwnedFd::from(null);
    // Take the lowest free numbers from 3 on until `count` of them are
    // consecutive; numbers before a gap are given back afterwards.
    let mut run: Vec<OwnedFd> = Vec::with_capacity(count);
    let mut strays: Vec<OwnedFd> = Vec::new();
    while run.len() < count {
        let fd = dup_cloexec(null.as_raw_fd(), 3)?;
        if run
            .last()
            .is_some_and(|last| last.as_raw_fd() + 1 != fd.as_raw_fd())
        {
            strays.append(&mut run);
        }
        run.push(fd);
    }
    let base = run[0].as_raw_fd();
    let placeholder = dup_cloexec(null.as_raw_fd(), base + count as RawFd)?;
    drop(strays);
    drop(null);
    let stack = Stack::new()?;
    for fd in run {
        // Owned by the module from now on (see above): never closed.
        std::mem::forget(fd);
    }
    *slots = Some(Slots {
        base,
        count,
        placeholder,
        stack,
    });
    Ok(base..base + count as RawFd)
}

/// The reserved scratch slots, if any.
pub fn spawn_slots() -> Option<Range<RawFd>> {
    let slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    slots.as_ref().map(|s| s.base..s.base + s.count as RawFd)
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, min)`.
fn dup_cloexec(fd: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes plain integers; `fd` is open (the
    // caller owns it).
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// `dup3(source, target, O_CLOEXEC)`.
fn dup3_cloexec(source: RawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: plain integers; `target` is a slot this module owns, so
    // replacing what it holds affects no other owner.
    if unsafe { libc::dup3(source, target, libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What the child reads and where it reports a failure. Lives in the
/// parent's frame; the child shares the memory (`CLONE_VM`) and the parent
/// is suspended until the child has exec'd or exited (`CLONE_VFORK`).
#[repr(C)]
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *mut libc::c_char,
    envp: *const *mut libc::c_char,
    cwd: *const libc::c_char,
    /// The child's fds are at `base..base + count`, to go to `0..count`.
    base: RawFd,
    count: RawFd,
    nofile: Option<libc::rlimit>,
    /// The `LISTEN_PID=` entry of `envp` to fill with the child's PID (see
    /// [`crate::PID_SLOT`]), or null.
    pid_var: *mut PidVar,
    /// Limits to set: `limits..limits + nlimits`.
    limits: *const (i32, libc::rlimit),
    nlimits: usize,
    /// Whether to switch users, to `uid`, `gid` and the groups at
    /// `groups..groups + ngroups`.
    switch: bool,
    uid: u32,
    gid: u32,
    groups: *const u32,
    ngroups: usize,
    /// The signals to reset to their default ([`RESET`]).
    reset: u64,
    /// The errno of the step that failed; 0: none did.
    errno: AtomicI32,
    /// Which step failed ([`Step`]).
    step: AtomicI32,
}

/// The child's steps that can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
enum Step {
    Setup = 1,
    Unshare = 2,
    Exec = 3,
}

/// How [`try_spawn`] ended, when it did not start anything.
#[derive(Debug)]
pub(crate) enum Fallback {
    /// Use `posix_spawn` instead.
    PosixSpawn,
}

/// Starts `plan` through the shared fd table (see the module docs). Returns
/// the PID and the pidfd (none on a kernel that ignores `CLONE_PIDFD`), an
/// error meaning no process runs, or [`Fallback`].
pub(crate) fn try_spawn(plan: &SpawnPlan) -> Result<io::Result<(i32, Option<OwnedFd>)>, Fallback> {
    if UNSUPPORTED.load(Ordering::Relaxed) {
        return Err(Fallback::PosixSpawn);
    }
    let guard = match SLOTS.try_lock() {
        Ok(guard) => guard,
        Err(_) => return Err(Fallback::PosixSpawn), // another thread's start
    };
    let Some(slots) = guard.as_ref() else {
        return Err(Fallback::PosixSpawn);
    };
    let sources = &plan.fds.sources;
    if sources.is_empty() || sources.len() > slots.count {
        return Err(Fallback::PosixSpawn);
    }
    let argv = ptr_array(&plan.argv);
    let mut envp = ptr_array(&plan.envp);
    // The child writes its own PID here (its PID exists only once it does)
    // and `envp` points at it: memory in this frame, which the child shares
    // (CLONE_VM) while this thread is suspended (CLONE_VFORK).
    let mut pid_var: PidVar = [0; 32];
    let pid_var_ptr: *mut PidVar = &mut pid_var;
    let pid_var_ptr = match pid_slot(&plan.envp) {
        Some(i) => {
            envp[i] = pid_var_ptr.cast();
            pid_var_ptr
        }
        None => std::ptr::null_mut(),
    };
    let limits = plan.identity.limits();
    let user = plan.identity.user.as_ref();
    let args = ChildArgs {
        program: plan.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: plan.cwd.as_ptr(),
        base: slots.base,
        count: sources.len() as RawFd,
        nofile: plan.identity.original_nofile(),
        pid_var: pid_var_ptr,
        limits: limits.as_ptr(),
        nlimits: limits.len(),
        switch: user.is_some(),
        uid: user.map_or(0, |u| u.uid),
        gid: user.map_or(0, |u| u.gid),
        groups: user.map_or(std::ptr::null(), |u| u.groups.as_ptr()),
        ngroups: user.map_or(0, |u| u.groups.len()),
        reset: RESET.load(Ordering::Relaxed),
        errno: AtomicI32::new(0),
        step: AtomicI32::new(0),
    };

    let mut placed = 0;
    let mut result = Ok(());
    for (i, &source) in sources.iter().enumerate() {
        result = dup3_cloexec(source, slots.base + i as RawFd);
        if result.is_err() {
            break;
        }
        placed += 1;
    }
    let cloned = result.and_then(|()| clone_child(slots, &args));
    // The placeholders go back whatever happened: the slots must not keep
    // the child's pipe ends open in this process.
    for i in 0..placed {
        let _ = dup3_cloexec(slots.placeholder.as_raw_fd(), slots.base + i as RawFd);
    }
    drop(guard);
    let (pid, pidfd) = match cloned {
        Ok(child) => child,
        Err(e) => return Ok(Err(e)),
    };

    let errno = args.errno.load(Ordering::Acquire);
    if errno == 0 {
        return Ok(Ok((pid, pidfd)));
    }
    // The child failed before its exec and has exited: reap it, so that no
    // zombie is left and nothing else sees its exit.
    let mut status = 0;
    // SAFETY: waits for our own child through a valid pointer to a local.
    while unsafe { libc::waitpid(pid, &mut status, libc::__WALL) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
    drop(pidfd);
    let step = args.step.load(Ordering::Acquire);
    if step == Step::Unshare as i32 {
        if errno == libc::ENOSYS || errno == libc::EINVAL {
            UNSUPPORTED.store(true, Ordering::Relaxed);
        }
        return Err(Fallback::PosixSpawn);
    }
    Ok(Err(io::Error::from_raw_os_error(errno)))
}

/// Every signal blocked in the calling thread while this lives; the
/// previous mask comes back when it is dropped. Held around a clone whose
/// child shares this process's memory (as glibc's `posix_spawn` does): no
/// handler of this process may run in the child before the child has reset
/// the dispositions.
pub(crate) struct SignalsBlocked {
    previous: u64,
}

impl SignalsBlocked {
    pub(crate) fn new() -> SignalsBlocked {
        let all: u64 = !0;
        let mut previous: u64 = 0;
        // SAFETY: rt_sigprocmask with 8-byte masks (the kernel's sigset
        // size) through valid pointers to locals; it cannot fail with
        // these arguments.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &all as *const u64,
                &mut previous as *mut u64,
                8usize,
            );
        }
        SignalsBlocked { previous }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: as in `new`; restores the mask it replaced.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &self.previous as *const u64,
                std::ptr::null_mut::<u64>(),
                8usize,
            );
        }
    }
}

/// The `clone` itself, with every signal blocked around it (as glibc's
/// `posix_spawn` does: no handler of this process may run in the child,
/// which shares its memory, before the child has reset them). Returns the
/// PID and the pidfd.
fn clone_child(slots: &Slots, args: &ChildArgs) -> io::Result<(i32, Option<OwnedFd>)> {
    let blocked = SignalsBlocked::new();
    let mut pidfd: libc::c_int = -1;
    let flags =
        libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::CLONE_PIDFD | libc::SIGCHLD;
    // SAFETY: `child` runs on its own stack (the mapping in `slots`, used
    // by one start at a time under the lock) and only reads `args`, which
    // lives in this frame until after `clone` returns: with CLONE_VFORK
    // this thread is suspended until the child has exec'd or exited, and
    // the child writes nothing but the atomics of `args`. The pidfd is
    // written to `pidfd` (the parent-TID argument, as CLONE_PIDFD defines).
    let pid = unsafe {
        libc::clone(
            child,
            slots.stack.top(),
            flags,
            (args as *const ChildArgs).cast_mut().cast(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    let error = io::Error::last_os_error();
    drop(blocked);
    if pid < 0 {
        return Err(error);
    }
    // A kernel older than 5.2 ignores CLONE_PIDFD and leaves -1.
    let pidfd = (pidfd >= 0).then(|| {
        // SAFETY: CLONE_PIDFD returned a new fd that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(pidfd) }
    });
    Ok((pid, pidfd))
}

/// The child, from `clone` to `execve`.
///
/// Shares this process's memory and (until the unshare) its fd table, on
/// its own stack, with every signal blocked. It makes only system calls on
/// `args`, allocates nothing, takes no lock and never returns. `errno` is
/// the parent thread's (the TLS is shared): harmless, the parent is
/// suspended and reads it only if `clone` itself failed.
extern "C" fn child(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` points to the parent's ChildArgs, alive and unchanged
    // until this child has exec'd or exited (see `clone_child`), as are the
    // arrays its `limits` and `groups` point to (`nlimits` and `ngroups`
    // long, owned by the parent's frame and plan); every call below is a
    // system call (or a libc wrapper of one) on plain integers or pointers
    // into them.
    unsafe {
        let args = &*arg.cast::<ChildArgs>();
        // No handler of the parent may run here: every disposition that is
        // not the default ([`RESET`]) goes back to it (glibc's internal
        // signals 32 and 33 too, which the raw call accepts) while
        // everything is still blocked.
        for signal in 1..NSIG {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP && args.reset & bit(signal) != 0 {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    KERNEL_SIG_DFL.as_ptr(),
                    std::ptr::null_mut::<c_void>(),
                    8usize,
                );
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail(args, Step::Setup);
        }
        if let Some(limit) = &args.nofile {
            libc::setrlimit(libc::RLIMIT_NOFILE, limit);
        }
        for i in 0..args.nlimits {
            let (resource, limit) = &*args.limits.add(i);
            if libc::setrlimit(*resource as _, limit) != 0 {
                fail(args, Step::Setup);
            }
        }
        // Raw system calls, never glibc's set*id: those change every
        // thread of the calling process (a signal to each), and this child
        // shares the parent's memory and glibc's thread list. Groups, gid,
        // then uid: each after the uid is gone would be refused.
        if args.switch
            && (libc::syscall(libc::SYS_setgroups, args.ngroups, args.groups) != 0
                || libc::syscall(libc::SYS_setresgid, args.gid, args.gid, args.gid) != 0
                || libc::syscall(libc::SYS_setresuid, args.uid, args.uid, args.uid) != 0)
        {
            fail(args, Step::Setup);
        }
        // A private table with a copy of fds 0..end only.
        let end = (args.base + args.count) as libc::c_uint;
        if libc::syscall(
            libc::SYS_close_range,
            end,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        ) != 0
        {
            fail(args, Step::Unshare);
        }
        // Slot i to fd i: the targets lie below the slots (base ≥ 3 > 0),
        // and in increasing order no target is a slot still to be read.
        for i in 0..args.count {
            if libc::dup2(args.base + i, i) < 0 {
                fail(args, Step::Setup);
            }
        }
        libc::syscall(
            libc::SYS_close_range,
            args.count as libc::c_uint,
            libc::c_uint::MAX,
            0,
        );
        if libc::chdir(args.cwd) != 0 {
            fail(args, Step::Exec);
        }
        if !args.pid_var.is_null() {
            // The raw call: the child's own PID, never a cached one.
            let pid = libc::syscall(libc::SYS_getpid) as libc::pid_t;
            write_pid_var(&mut *args.pid_var, pid);
        }
        let empty: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
        libc::execve(args.program, args.argv.cast(), args.envp.cast());
        fail(args, Step::Exec)
    }
}

/// Reports errno and the failed step to the parent and exits with 127.
///
/// # Safety
///
/// Only in the child of [`clone_child`], right after the failed call.
unsafe fn fail(args: &ChildArgs, step: Step) -> ! {
    // SAFETY: reads this thread's errno; _exit ends the child (the mask is
    // still full or empty: nothing runs in between).
    unsafe {
        let errno = *libc::__errno_location();
        args.step.store(step as i32, Ordering::Release);
        args.errno.store(errno.max(1), Ordering::Release);
        libc::_exit(127)
    }
}
