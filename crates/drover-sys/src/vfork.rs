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
//! 2, … with `dup2` and closes everything above. The parent waits for the
//! child's `execve` and puts the placeholders back. This process's own fds
//! 0, 1 and 2 are never touched, so other threads may go on using them.
//!
//! The parent waits for the `execve` at most [`EXEC_WAIT`], in one sleep
//! as with `CLONE_VFORK`: the kernel clears a futex word when the child
//! execs or exits (`CLONE_CHILD_CLEARTID`, the moment `CLONE_VFORK` would
//! resume the parent). Almost always that comes first, and a failure is
//! returned as before. A child still in its `execve` after it (its
//! program, interpreter or `cwd` on a mount that does not answer) is left
//! to finish on its own, once it has its own fd table (its first call,
//! noted in the same word; only then may the slots change): its stack and
//! everything it reads are copies owned by its [`Launch`], kept until it
//! is done, and an error of that `execve` is told by
//! [`late_exec_failure`] once its exit is reaped. So no start holds the
//! calling thread (drover's event loop) for much longer than that. On
//! architectures other than x86-64 the start waits for the `execve`
//! (`CLONE_VFORK`), as there is no libc-free system call path for the
//! child there.
//!
//! The child runs on a separate stack in this process's memory and makes
//! only raw system calls on data prepared before the `clone`, as glibc's
//! `posix_spawn` child does, but without libc (the parent runs on beside
//! it and shares its `errno`): the unshare first, then reset every signal
//! disposition that is not the default (all of them until
//! [`note_signal_dispositions`] has looked), `setpgid`, `setrlimit` (the
//! original open-file limit, or the group's limits),
//! `setgroups`/`setresgid`/`setresuid` for a user switch, the `dup2`s,
//! `close_range`, `chdir`, an empty signal mask, `execve`. A failure is
//! written into memory shared with the parent (`CLONE_VM`) before
//! `_exit`, so the caller gets the errno and no
//! process — the same contract as `posix_spawn`, within [`EXEC_WAIT`].
//! `CLONE_PIDFD` returns a pidfd for the child with it.
//!
//! Fallback: not reserved, a start needing more fds than there are slots,
//! the slots in use by another thread, or a kernel without
//! `CLOSE_RANGE_UNSHARE` (remembered) — the caller uses `posix_spawn`.

use std::ffi::{CString, c_void};
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
    /// The child's stack, lent to each start and given back once its
    /// child is done with it; none after a child kept it (the next start
    /// maps a new one).
    stack: Option<Stack>,
}

/// An `mmap`ed stack with a guard page below it.
pub(crate) struct Stack {
    base: *mut c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it is used by
// one child at a time (lent by SLOTS, or kept by that child's Launch).
unsafe impl Send for Stack {}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping this value made; nothing runs on it any more
        // (its owner drops it only once its child is done with it).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

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
        stack: Some(stack),
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

/// How long a start waits for its child's `execve`. A program (or its interpreter, or its `cwd`) on a
/// mount that does not answer can hold an `execve` for minutes; past this,
/// the start returns the PID and the child finishes its `execve` on its
/// own (see [`late_exec_failure`]). Every ordinary `execve` is done well
/// within it, so its errors are still returned by the start.
pub const EXEC_WAIT: Duration = Duration::from_millis(10);

/// The child is still before the unshare of its fd table.
const BEFORE_UNSHARE: u32 = 2;
/// The child has its own fd table and is on its way to `execve`.
const UNSHARED: u32 = 1;
/// The child has exec'd or exited: it no longer uses this process's memory
/// (the kernel writes it, `CLONE_CHILD_CLEARTID`).
const DONE: u32 = 0;

/// Whether starts wait for the `execve` only up to [`EXEC_WAIT`]: where
/// the child's system calls are made without libc (they must not write
/// `errno`, which the child shares with this thread while it runs on).
/// Elsewhere the start waits for it (`CLONE_VFORK`).
const ASYNC: bool = cfg!(target_arch = "x86_64");

/// What the child reads and where it reports a failure: inside a
/// [`Launch`], which stays at one address until the child has exec'd or
/// exited.
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
    /// [`BEFORE_UNSHARE`], [`UNSHARED`] or [`DONE`]: a futex word.
    phase: AtomicU32,
    /// The errno of the step that failed; 0: none did.
    errno: AtomicI32,
    /// Which step failed ([`Step`]).
    step: AtomicI32,
}

/// One start's child and everything it reads, owned here (copied from the
/// plan) so that it can outlive the start: a child still in its `execve`
/// after [`EXEC_WAIT`] keeps using it.
struct Launch {
    args: ChildArgs,
    pid: i32,
    /// The memory `args` points into.
    _program: CString,
    _cwd: CString,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    _argv_ptrs: Vec<*mut libc::c_char>,
    _envp_ptrs: Vec<*mut libc::c_char>,
    _pid_var: PidVar,
    _limits: Vec<(i32, libc::rlimit)>,
    _groups: Vec<u32>,
    /// The child's stack: the slots' own (given back once the child is
    /// done), or the one it keeps while it outlives its start.
    stack: Option<Stack>,
}

// SAFETY: the raw pointers point into the Launch's own fields (heap memory
// that moves with it) and into nothing else; a Launch is only moved between
// threads whole, behind the ABANDONED lock.
unsafe impl Send for Launch {}

impl Launch {
    /// Copies what the child of `plan` reads; `base` is the first slot.
    fn new(plan: &SpawnPlan, base: RawFd, stack: Stack) -> Box<Launch> {
        let limits = plan.identity.limits();
        let user = plan.identity.user.as_ref();
        let mut launch = Box::new(Launch {
            args: ChildArgs {
                program: ptr::null(),
                argv: ptr::null(),
                envp: ptr::null(),
                cwd: ptr::null(),
                base,
                count: plan.fds.sources.len() as RawFd,
                nofile: plan.identity.original_nofile(),
                pid_var: ptr::null_mut(),
                limits: ptr::null(),
                nlimits: limits.len(),
                switch: user.is_some(),
                uid: user.map_or(0, |u| u.uid),
                gid: user.map_or(0, |u| u.gid),
                groups: ptr::null(),
                ngroups: 0,
                reset: RESET.load(Ordering::Relaxed),
                phase: AtomicU32::new(BEFORE_UNSHARE),
                errno: AtomicI32::new(0),
                step: AtomicI32::new(0),
            },
            pid: 0,
            _program: plan.program.clone(),
            _cwd: plan.cwd.clone(),
            _argv: plan.argv.clone(),
            _envp: plan.envp.clone(),
            _argv_ptrs: Vec::new(),
            _envp_ptrs: Vec::new(),
            _pid_var: [0; 32],
            _limits: limits,
            _groups: user.map(|u| u.groups.clone()).unwrap_or_default(),
            stack: Some(stack),
        });
        let l = &mut *launch;
        l._argv_ptrs = ptr_array(&l._argv);
        l._envp_ptrs = ptr_array(&l._envp);
        if let Some(i) = pid_slot(&l._envp) {
            // The child writes its own PID here (its PID exists only once
            // it does) and `envp` points at it.
            let var: *mut PidVar = &mut l._pid_var;
            l._envp_ptrs[i] = var.cast();
            l.args.pid_var = var;
        }
        l.args.program = l._program.as_ptr();
        l.args.cwd = l._cwd.as_ptr();
        l.args.argv = l._argv_ptrs.as_ptr();
        l.args.envp = l._envp_ptrs.as_ptr();
        l.args.limits = l._limits.as_ptr();
        l.args.groups = l._groups.as_ptr();
        l.args.ngroups = l._groups.len();
        launch
    }

    fn phase(&self) -> u32 {
        self.args.phase.load(Ordering::Acquire)
    }

    /// The error the child reported, if it failed.
    fn failure(&self) -> Option<(i32, i32)> {
        let errno = self.args.errno.load(Ordering::Acquire);
        (errno != 0).then(|| (errno, self.args.step.load(Ordering::Acquire)))
    }
}

/// The children still in their `execve` when their start stopped waiting,
/// and those that have since failed and not been asked about.
#[allow(clippy::vec_box)] // boxed: a Launch must not move while its child runs
static ABANDONED: Mutex<Vec<Box<Launch>>> = Mutex::new(Vec::new());

/// How many launches [`ABANDONED`] holds: the common case (none) costs no
/// lock.
static ABANDONED_LEN: AtomicUsize = AtomicUsize::new(0);

/// Failed late starts kept for [`late_exec_failure`] at most; older ones
/// are forgotten (their exits are still reported, as exits).
const MAX_LATE_FAILURES: usize = 1024;

/// Whether the child `pid`, started by [`spawn`](crate::spawn) and left to
/// finish its `execve` on its own after [`EXEC_WAIT`], failed before
/// running its program: then the error of its `execve` (or `chdir`, or a
/// `dup2`). Ask once its exit has been reaped; the answer is given once.
pub fn late_exec_failure(pid: i32) -> Option<io::Error> {
    if ABANDONED_LEN.load(Ordering::Acquire) == 0 {
        return None;
    }
    let mut list = ABANDONED.lock().unwrap_or_else(|p| p.into_inner());
    let found = list
        .iter()
        .position(|l| l.pid == pid && l.phase() == DONE)
        .map(|i| list.swap_remove(i));
    sweep(&mut list);
    found
        .and_then(|l| l.failure())
        .map(|(errno, _)| io::Error::from_raw_os_error(errno))
}

/// How many children are still in an `execve` their start stopped waiting
/// for (a hung mount, most likely).
pub fn execs_pending() -> usize {
    if ABANDONED_LEN.load(Ordering::Acquire) == 0 {
        return 0;
    }
    let list = ABANDONED.lock().unwrap_or_else(|p| p.into_inner());
    list.iter().filter(|l| l.phase() != DONE).count()
}

/// Frees what finished launches held: those that exec'd, the stacks of
/// failed ones, and failed ones past [`MAX_LATE_FAILURES`] (oldest first).
#[allow(clippy::vec_box)] // see ABANDONED
fn sweep(list: &mut Vec<Box<Launch>>) {
    list.retain(|l| l.phase() != DONE || l.failure().is_some());
    for done in list.iter_mut().filter(|l| l.phase() == DONE) {
        // Kept for its error only: the child is gone from this memory.
        done.stack = None;
    }
    let failed = list.iter().filter(|l| l.phase() == DONE).count();
    let mut excess = failed.saturating_sub(MAX_LATE_FAILURES);
    list.retain(|l| {
        let drop = excess > 0 && l.phase() == DONE;
        excess -= usize::from(drop);
        !drop
    });
    ABANDONED_LEN.store(list.len(), Ordering::Release);
}

/// Waits until `phase` is [`DONE`] (the kernel's wake-up at the child's
/// `execve` or exit, `CLONE_CHILD_CLEARTID`), at most until `deadline`.
/// Returns whether it is.
fn wait_done(phase: &AtomicU32, deadline: Instant) -> bool {
    loop {
        let now = phase.load(Ordering::Acquire);
        if now == DONE {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        futex_wait(phase, now, Some(left));
    }
}

/// Sleeps while `word` holds `value`, for at most `timeout`. The call is
/// not the private kind: the kernel's wake-up at `execve` or exit is not
/// either, and the two must agree to meet.
fn futex_wait(word: &AtomicU32, value: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as _,
        tv_nsec: t.subsec_nanos() as _,
    });
    let ts = ts
        .as_ref()
        .map_or(ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT on a live atomic of this process, with a timeout
    // that lives for the call (or none); it only sleeps.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, value, ts);
    }
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
/// the PID, the pidfd (none on a kernel that ignores `CLONE_PIDFD`) and
/// whether the child was still in its `execve` after [`EXEC_WAIT`]; an
/// error meaning no process runs; or [`Fallback`].
pub(crate) fn try_spawn(
    plan: &SpawnPlan,
) -> Result<io::Result<(i32, Option<OwnedFd>, bool)>, Fallback> {
    if UNSUPPORTED.load(Ordering::Relaxed) {
        return Err(Fallback::PosixSpawn);
    }
    let mut guard = match SLOTS.try_lock() {
        Ok(guard) => guard,
        Err(_) => return Err(Fallback::PosixSpawn), // another thread's start
    };
    let Some(slots) = guard.as_mut() else {
        return Err(Fallback::PosixSpawn);
    };
    let sources = &plan.fds.sources;
    if sources.is_empty() || sources.len() > slots.count {
        return Err(Fallback::PosixSpawn);
    }
    let stack = match slots.stack.take() {
        Some(stack) => stack,
        None => match Stack::new() {
            Ok(stack) => stack,
            Err(e) => return Ok(Err(e)),
        },
    };
    let mut launch = Launch::new(plan, slots.base, stack);

    let mut placed = 0;
    let mut result = Ok(());
    for (i, &source) in sources.iter().enumerate() {
        result = dup3_cloexec(source, slots.base + i as RawFd);
        if result.is_err() {
            break;
        }
        placed += 1;
    }
    let cloned = result.and_then(|()| clone_child(&launch));
    let mut pending = false;
    if let Ok((pid, _)) = &cloned {
        launch.pid = *pid;
        // One sleep, as CLONE_VFORK's: until the kernel clears `phase` at
        // the child's execve or exit, or EXEC_WAIT has passed.
        if ASYNC && !wait_done(&launch.args.phase, Instant::now() + EXEC_WAIT) {
            pending = true;
            // The slots are shared with the child until it has a table of
            // its own (its first call, so this is rare): nothing may change
            // them before. The child wakes nobody then; look every 1 ms.
            while launch.phase() == BEFORE_UNSHARE {
                futex_wait(
                    &launch.args.phase,
                    BEFORE_UNSHARE,
                    Some(Duration::from_millis(1)),
                );
            }
        }
    }
    // The placeholders go back whatever happened: the slots must not keep
    // the child's pipe ends open in this process.
    for i in 0..placed {
        let _ = dup3_cloexec(slots.placeholder.as_raw_fd(), slots.base + i as RawFd);
    }
    let (pid, pidfd) = match cloned {
        Ok(child) => child,
        Err(e) => {
            slots.stack = launch.stack.take();
            return Ok(Err(e));
        }
    };
    if pending {
        // Still in its execve: it keeps its stack and what it reads.
        let mut list = ABANDONED.lock().unwrap_or_else(|p| p.into_inner());
        sweep(&mut list);
        list.push(launch);
        ABANDONED_LEN.store(list.len(), Ordering::Release);
        return Ok(Ok((pid, pidfd, true)));
    }
    // Done with this process's memory (exec'd or exited): the stack is
    // free for the next start.
    slots.stack = launch.stack.take();
    drop(guard);

    let Some((errno, step)) = launch.failure() else {
        return Ok(Ok((pid, pidfd, false)));
    };
    // The child failed before its exec and has exited: reap it, so that no
    // zombie is left and nothing else sees its exit.
    let mut status = 0;
    // SAFETY: waits for our own child through a valid pointer to a local.
    while unsafe { libc::waitpid(pid, &mut status, libc::__WALL) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
    drop(pidfd);
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
fn clone_child(launch: &Launch) -> io::Result<(i32, Option<OwnedFd>)> {
    let blocked = SignalsBlocked::new();
    let mut pidfd: libc::c_int = -1;
    let args = &launch.args;
    let top = match &launch.stack {
        Some(stack) => stack.top(),
        None => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
    };
    let arg = (args as *const ChildArgs).cast_mut().cast::<c_void>();
    // SAFETY: `child` runs on its own stack (the launch's) and only reads
    // `args` and the memory it points into, all owned by `launch`, which
    // stays where it is until the child has exec'd or exited: this thread
    // either waits for that (`phase` becomes DONE, written by the kernel:
    // CLONE_CHILD_CLEARTID; or CLONE_VFORK) or hands the launch over to
    // ABANDONED. The child writes nothing but the atomics of `args`, the
    // PID variable and its own stack. The pidfd is written to `pidfd` (the
    // parent-TID argument, as CLONE_PIDFD defines).
    let pid = unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            let flags = libc::CLONE_VM
                | libc::CLONE_FILES
                | libc::CLONE_PIDFD
                | libc::CLONE_CHILD_CLEARTID
                | libc::SIGCHLD;
            let r = raw::drover_raw_clone(
                flags as libc::c_ulong,
                top,
                &mut pidfd,
                args.phase.as_ptr(),
                child,
                arg,
            );
            if r < 0 {
                *libc::__errno_location() = -(r as libc::c_int);
                -1
            } else {
                r as libc::c_int
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let flags = libc::CLONE_VM
                | libc::CLONE_VFORK
                | libc::CLONE_FILES
                | libc::CLONE_PIDFD
                | libc::SIGCHLD;
            libc::clone(child, top, flags, arg, &mut pidfd as *mut libc::c_int)
        }
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

/// System calls without libc, for the child: they return `-errno` and
/// never write `errno`, which is this thread's (the TLS is shared) while it
/// runs on beside the child. And the `clone` that starts the child on its
/// stack without going through libc's wrapper (musl's refuses
/// `CLONE_CHILD_CLEARTID`).
#[cfg(target_arch = "x86_64")]
mod raw {
    use std::ffi::c_void;

    /// A system call of up to four arguments.
    ///
    /// # Safety
    ///
    /// Whatever system call `n` requires of its arguments.
    #[inline(always)]
    pub(super) unsafe fn sc(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
        let ret: isize;
        // SAFETY: the caller's; `syscall` clobbers only rax, rcx and r11.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") n as isize => ret,
                in("rdi") a,
                in("rsi") b,
                in("rdx") c,
                in("r10") d,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    // drover_raw_clone(flags, stack, ptid, ctid, f, arg): the clone system
    // call (x86-64 order: flags, stack, parent tid, child tid, tls). The
    // child pops `f` and `arg` off its new stack, calls f(arg) and exits
    // with what it returns; the parent gets the PID or -errno.
    std::arch::global_asm!(
        ".pushsection .text.drover_raw_clone,\"ax\",@progbits",
        ".p2align 4",
        ".hidden drover_raw_clone",
        ".globl drover_raw_clone",
        ".type drover_raw_clone,@function",
        "drover_raw_clone:",
        "and rsi, -16",
        "sub rsi, 16",
        "mov [rsi + 8], r9",
        "mov [rsi], r8",
        "mov r10, rcx",
        "xor r8d, r8d",
        "mov eax, 56",
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "xor ebp, ebp",
        "pop rax",
        "pop rdi",
        "call rax",
        "mov edi, eax",
        "mov eax, 231",
        "syscall",
        "ud2",
        "2:",
        "ret",
        ".size drover_raw_clone, . - drover_raw_clone",
        ".popsection",
    );

    unsafe extern "C" {
        pub(super) fn drover_raw_clone(
            flags: libc::c_ulong,
            stack: *mut c_void,
            ptid: *mut libc::c_int,
            ctid: *mut u32,
            f: extern "C" fn(*mut c_void) -> libc::c_int,
            arg: *mut c_void,
        ) -> libc::c_long;
    }
}

/// Where the child's calls go through libc (the parent waits for the
/// child, `CLONE_VFORK`, so `errno` is not read meanwhile).
#[cfg(not(target_arch = "x86_64"))]
mod raw {
    /// A system call of up to four arguments; `-errno` on failure.
    ///
    /// # Safety
    ///
    /// Whatever system call `n` requires of its arguments.
    pub(super) unsafe fn sc(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
        // SAFETY: the caller's.
        unsafe {
            let r = libc::syscall(n, a, b, c, d);
            if r < 0 {
                -(*libc::__errno_location() as isize)
            } else {
                r as isize
            }
        }
    }
}

/// The child, from `clone` to `execve`.
///
/// Shares this process's memory and (until the unshare) its fd table, on
/// its own stack, with every signal blocked. It makes only raw system
/// calls ([`raw::sc`]) on `args`, allocates nothing, takes no lock, never
/// touches `errno` and never returns.
extern "C" fn child(arg: *mut c_void) -> libc::c_int {
    use raw::sc;
    // SAFETY: `arg` points to a Launch's ChildArgs, alive and unchanged
    // until this child has exec'd or exited (see `clone_child`), as is the
    // memory its pointers point into (`nlimits` limits, `ngroups` groups);
    // every call below is a system call on plain integers or those
    // pointers.
    unsafe {
        let args = &*arg.cast::<ChildArgs>();
        // First, a private table with a copy of fds 0..end only.
        let end = (args.base + args.count) as usize;
        let r = sc(
            libc::SYS_close_range,
            end,
            libc::c_uint::MAX as usize,
            libc::CLOSE_RANGE_UNSHARE as usize,
            0,
        );
        if r < 0 {
            fail(args, Step::Unshare, r);
        }
        // Said without a wake-up: the parent sleeps until the execve, and
        // looks at this only if that takes longer than EXEC_WAIT.
        args.phase.store(UNSHARED, Ordering::Release);
        // No handler of the parent may run here: every disposition that is
        // not the default ([`RESET`]) goes back to it (glibc's internal
        // signals 32 and 33 too, which the raw call accepts) while
        // everything is still blocked.
        for signal in 1..NSIG {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP && args.reset & bit(signal) != 0 {
                sc(
                    libc::SYS_rt_sigaction,
                    signal as usize,
                    KERNEL_SIG_DFL.as_ptr() as usize,
                    0,
                    8,
                );
            }
        }
        let r = sc(libc::SYS_setpgid, 0, 0, 0, 0);
        if r < 0 {
            fail(args, Step::Setup, r);
        }
        if let Some(limit) = &args.nofile {
            let limit: *const libc::rlimit = limit;
            sc(
                libc::SYS_prlimit64,
                0,
                libc::RLIMIT_NOFILE as usize,
                limit as usize,
                0,
            );
        }
        for i in 0..args.nlimits {
            let (resource, limit) = &*args.limits.add(i);
            let limit: *const libc::rlimit = limit;
            let r = sc(
                libc::SYS_prlimit64,
                0,
                *resource as usize,
                limit as usize,
                0,
            );
            if r < 0 {
                fail(args, Step::Setup, r);
            }
        }
        // Never glibc's set*id: those change every thread of the calling
        // process (a signal to each), and this child shares the parent's
        // memory and glibc's thread list. Groups, gid, then uid: each
        // after the uid is gone would be refused.
        if args.switch {
            let r = sc(
                libc::SYS_setgroups,
                args.ngroups,
                args.groups as usize,
                0,
                0,
            );
            if r < 0 {
                fail(args, Step::Setup, r);
            }
            let gid = args.gid as usize;
            let r = sc(libc::SYS_setresgid, gid, gid, gid, 0);
            if r < 0 {
                fail(args, Step::Setup, r);
            }
            let uid = args.uid as usize;
            let r = sc(libc::SYS_setresuid, uid, uid, uid, 0);
            if r < 0 {
                fail(args, Step::Setup, r);
            }
        }
        // Slot i to fd i (dup3 with no flags: dup2, which not every
        // architecture has): the targets lie below the slots (base ≥ 3 >
        // 0), and in increasing order no target is a slot still to be read.
        for i in 0..args.count {
            let r = sc(libc::SYS_dup3, (args.base + i) as usize, i as usize, 0, 0);
            if r < 0 {
                fail(args, Step::Setup, r);
            }
        }
        sc(
            libc::SYS_close_range,
            args.count as usize,
            libc::c_uint::MAX as usize,
            0,
            0,
        );
        let r = sc(libc::SYS_chdir, args.cwd as usize, 0, 0, 0);
        if r < 0 {
            fail(args, Step::Exec, r);
        }
        if !args.pid_var.is_null() {
            // The raw call: the child's own PID, never a cached one.
            let pid = sc(libc::SYS_getpid, 0, 0, 0, 0) as libc::pid_t;
            write_pid_var(&mut *args.pid_var, pid);
        }
        let empty: u64 = 0;
        sc(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as usize,
            &empty as *const u64 as usize,
            0,
            8,
        );
        let r = sc(
            libc::SYS_execve,
            args.program as usize,
            args.argv as usize,
            args.envp as usize,
            0,
        );
        fail(args, Step::Exec, r)
    }
}

/// Reports the error (`-errno` as the raw call returned it) and the failed
/// step to the parent and exits with 127.
///
/// # Safety
///
/// Only in the child of [`clone_child`], right after the failed call.
unsafe fn fail(args: &ChildArgs, step: Step, r: isize) -> ! {
    let errno = i32::try_from(-r).unwrap_or(libc::EINVAL).max(1);
    args.step.store(step as i32, Ordering::Release);
    args.errno.store(errno, Ordering::Release);
    loop {
        // SAFETY: ends the child (the mask is still full or empty: nothing
        // runs in between).
        unsafe { raw::sc(libc::SYS_exit_group, 127, 0, 0, 0) };
    }
}
