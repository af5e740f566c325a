//! The `unsafe` layer that drover (the supervisor) and `drover-context`
//! (the start-method library) share: starting a prepared program through a
//! shared fd table or with `posix_spawn` ([`spawn`], [`spawn_child`],
//! [`spawn_self`]) or fork + exec ([`forkexec`]),
//! placing a child's fds ([`relocate`]), the open-file limit children start
//! with ([`raise_fd_limit`]), `SOCK_SEQPACKET` pairs ([`seqpacket_pair`])
//! and the one SCM_RIGHTS request/reply framing of every start helper
//! ([`wire`]), and reaping children with every exit decoded ([`wait`]).
//!
//! Everything a child needs — program path, argv, envp, working directory and
//! the fd plan — is built by the caller as C strings before anything is
//! created, so nothing here allocates between the moment a child exists and
//! its `execve`. The spawn path clones with `CLONE_VM | CLONE_VFORK |
//! CLONE_FILES` when scratch slots are reserved ([`reserve_spawn_slots`]), so
//! that its cost grows neither with the caller's memory nor with its fds
//! (see `vfork.rs`), and otherwise uses `posix_spawn` (glibc: `CLONE_VFORK`),
//! which needs no `pre_exec` hook: process group, signal mask, signal
//! dispositions, fd placement, closing of every other fd and the working
//! directory are all spawn attributes or file actions.
//!
//! Each function wraps one system call or one conversion so that its
//! `SAFETY:` argument stays local. glibc-only calls are behind
//! `cfg(target_env = "gnu")`, with a fallback elsewhere (musl).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use nix::fcntl::{FcntlArg, fcntl};

pub mod forkexec;
pub mod mmsg;
mod vfork;
pub mod wait;
pub mod wire;

pub use vfork::{
    EXEC_WAIT, execs_pending, late_exec_failure, note_signal_dispositions, reserve_spawn_slots,
    spawn_slots,
};

/// The fds a child starts with: each `source` ends up as `target`. Targets
/// are 0, 1, 2, 3, … in order; every other fd is closed.
#[derive(Debug)]
pub struct FdPlan {
    pub sources: Vec<RawFd>,
}

/// A fully prepared program start.
#[derive(Debug)]
pub struct SpawnPlan {
    /// The file to execute (already resolved against PATH).
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: CString,
    pub fds: FdPlan,
    /// Who the child runs as and its resource limits.
    pub identity: Identity,
}

/// Who a child runs as and the resource limits it starts with, applied in
/// the child before `execve`: the limits first (raising a hard limit needs
/// the privilege the user switch gives up), then the supplementary groups,
/// the gid and last the uid. The default changes nothing but the open-file
/// limit, which goes back to this process's original one
/// ([`raise_fd_limit`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// `(RLIMIT_*, value)`: each sets the soft and the hard limit. A
    /// `RLIMIT_NOFILE` here replaces the original open-file limit.
    pub rlimits: Vec<(i32, u64)>,
    /// The user to switch to; `None`: this process's own.
    pub user: Option<Credentials>,
}

/// A uid, a gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Identity {
    /// Whether a start needs a step that `posix_spawn` cannot do.
    pub(crate) fn needs_exec_steps(&self) -> bool {
        self.user.is_some() || !self.rlimits.is_empty()
    }

    /// The open-file limit the child gets when `rlimits` does not set one:
    /// this process's original, if it raised its own.
    pub(crate) fn original_nofile(&self) -> Option<libc::rlimit> {
        let own = self
            .rlimits
            .iter()
            .any(|&(resource, _)| resource == libc::RLIMIT_NOFILE as i32);
        if own { None } else { child_fd_limit() }
    }

    /// The limits as `rlimit` values, built before the child exists.
    pub(crate) fn limits(&self) -> Vec<(i32, libc::rlimit)> {
        self.rlimits
            .iter()
            .map(|&(resource, value)| {
                let limit = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                (resource, limit)
            })
            .collect()
    }
}

/// Null-terminated pointer array over C strings; lives as long as `strings`.
pub(crate) fn ptr_array(strings: &[CString]) -> Vec<*mut libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr() as *mut libc::c_char)
        .chain(std::iter::once(ptr::null_mut()))
        .collect()
}

/// The environment entry a start fills with the child's own PID: an `envp`
/// entry that is exactly `LISTEN_PID=` becomes `LISTEN_PID=<pid>` in the
/// child, written between its creation and its `execve` (systemd's socket
/// activation wants the PID of the very process that reads it, which exists
/// only then). Every start path of this crate does it: the shared-table
/// spawn and fork + exec (and so the fork server); `posix_spawn` cannot, so
/// a plan with the entry never falls back to it.
pub const PID_SLOT: &[u8] = b"LISTEN_PID=";

/// Where `envp` has the [`PID_SLOT`] entry.
pub(crate) fn pid_slot(envp: &[CString]) -> Option<usize> {
    envp.iter().position(|e| e.as_bytes() == PID_SLOT)
}

/// Room for `LISTEN_PID=`, a PID (at most 10 digits) and the NUL.
pub(crate) type PidVar = [u8; 32];

/// Writes `LISTEN_PID=<pid>` and a NUL into `buf`. Allocates nothing, calls
/// nothing: safe between fork and exec.
pub(crate) fn write_pid_var(buf: &mut PidVar, pid: libc::pid_t) {
    let mut digits = [0u8; 10];
    let mut n = pid.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 || len == digits.len() {
            break;
        }
    }
    let mut at = 0;
    for &b in PID_SLOT {
        buf[at] = b;
        at += 1;
    }
    for i in (0..len).rev() {
        buf[at] = digits[i];
        at += 1;
    }
    buf[at] = 0;
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Owns a `posix_spawn_file_actions_t` and destroys it on drop.
struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<Self> {
        // SAFETY: an all-zero value is a valid place for init to write into;
        // init fully initialises it before any other use.
        let mut raw: libc::posix_spawn_file_actions_t = unsafe { std::mem::zeroed() };
        // SAFETY: `raw` is a valid, writable file-actions object.
        check(unsafe { libc::posix_spawn_file_actions_init(&mut raw) })?;
        Ok(FileActions(raw))
    }

    /// The child places `sources[i]` at `first + i`.
    fn place(&mut self, sources: &[RawFd], first: RawFd) -> io::Result<()> {
        for (i, &source) in sources.iter().enumerate() {
            // SAFETY: `self.0` is initialised; fd numbers are plain integers
            // recorded for the child, which performs the dup2 (clearing
            // close-on-exec on the copy).
            check(unsafe {
                libc::posix_spawn_file_actions_adddup2(&mut self.0, source, first + i as RawFd)
            })?;
        }
        Ok(())
    }

    /// The child closes every fd from `first` on, so that it inherits
    /// nothing but what was placed below `first`.
    #[cfg(target_env = "gnu")]
    fn close_from(&mut self, first: RawFd) -> io::Result<()> {
        // SAFETY: `self.0` is initialised; `first` is a plain integer.
        check(unsafe { libc::posix_spawn_file_actions_addclosefrom_np(&mut self.0, first) })
    }

    /// Without glibc's `addclosefrom_np` (musl): one close action for each
    /// fd from `first` on that is open now and not close-on-exec, which are
    /// the ones the child would inherit. (An fd that another thread opens
    /// without close-on-exec after this scan would leak into the child; std
    /// and nix open every fd close-on-exec.)
    #[cfg(not(target_env = "gnu"))]
    fn close_from(&mut self, first: RawFd) -> io::Result<()> {
        let mut inherited = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fd")? {
            let name = entry?.file_name();
            let Some(fd) = name.to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
                continue;
            };
            // SAFETY: F_GETFD takes plain integers and reads a flag; on a
            // number that is not open (the directory's own fd, closed by
            // now, or one another thread closed) it fails with EBADF.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            if fd >= first && flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                inherited.push(fd);
            }
        }
        for fd in inherited {
            // SAFETY: `self.0` is initialised; `fd` is a plain integer (a
            // close that fails in the child is ignored).
            check(unsafe { libc::posix_spawn_file_actions_addclose(&mut self.0, fd) })?;
        }
        Ok(())
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: self.0 was initialised by posix_spawn_file_actions_init
        // and is destroyed exactly once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// Owns a `posix_spawnattr_t` and destroys it on drop.
struct Attr(libc::posix_spawnattr_t);

impl Attr {
    fn new() -> io::Result<Self> {
        // SAFETY: as for FileActions::new, init writes the whole object.
        let mut raw: libc::posix_spawnattr_t = unsafe { std::mem::zeroed() };
        // SAFETY: `raw` is a valid, writable attribute object.
        check(unsafe { libc::posix_spawnattr_init(&mut raw) })?;
        Ok(Attr(raw))
    }
}

impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: self.0 was initialised by posix_spawnattr_init.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

/// Prepares `sources` to be placed at `first_target`, `first_target + 1`, …:
/// every source whose number lies below the end of that range is copied
/// (close-on-exec) above it, so that placing one fd never clobbers a source
/// still to be placed, nor relies on dup2 of an fd onto itself clearing
/// close-on-exec. Returns the fds to place, in order, and the copies, which
/// must live until the child has been created.
pub fn relocate(sources: &[RawFd], first_target: RawFd) -> io::Result<(Vec<RawFd>, Vec<OwnedFd>)> {
    let limit = first_target + sources.len() as RawFd;
    let mut keep = Vec::new();
    let mut placed = Vec::with_capacity(sources.len());
    for &fd in sources {
        if fd < limit {
            let copy = fcntl(
                // SAFETY: `fd` is open for the duration of this call (the
                // caller's plan names it); the borrow does not outlive it.
                unsafe { BorrowedFd::borrow_raw(fd) },
                FcntlArg::F_DUPFD_CLOEXEC(limit.max(3)),
            )?;
            // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
            let copy = unsafe { OwnedFd::from_raw_fd(copy) };
            placed.push(copy.as_raw_fd());
            keep.push(copy);
        } else {
            placed.push(fd);
        }
    }
    Ok((placed, keep))
}

/// A child started by [`spawn_child`].
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    /// A pidfd for the child, when the start made one (`CLONE_PIDFD`).
    pub pidfd: Option<OwnedFd>,
    /// How it was started.
    pub method: SpawnMethod,
    /// Still in its `execve` when the start stopped waiting for it
    /// ([`EXEC_WAIT`]): an error of that `execve` comes later, as the
    /// child's exit (status 127), and [`late_exec_failure`] tells it.
    pub exec_pending: bool,
}

/// The two ways [`spawn_child`] starts a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnMethod {
    /// `clone` sharing the fd table, through the scratch slots of
    /// [`reserve_spawn_slots`]: the cost does not grow with this process's
    /// fds.
    SharedTable,
    /// `posix_spawn`: the fallback.
    PosixSpawn,
    /// fork + exec: the fallback for a start that `posix_spawn` cannot
    /// make: one with the [`PID_SLOT`] entry to fill, a user to switch to,
    /// or limits to set.
    ForkExec,
}

/// Starts `plan` in a new process group, with an empty signal mask, every
/// signal at its default disposition and exactly the planned fds open.
/// Returns the child's PID; see [`spawn_child`].
pub fn spawn(plan: &SpawnPlan) -> io::Result<i32> {
    spawn_child(plan).map(|s| s.pid)
}

/// Starts `plan` like [`spawn`]: through a shared fd table and the scratch
/// slots when they are reserved ([`reserve_spawn_slots`]) and the kernel
/// allows it, otherwise with `posix_spawn`.
///
/// An error means no process runs: an exec failure, such as a missing or
/// non-executable file or a missing working directory, is reported from the
/// child before it exits, and it is reaped. Through the shared table the
/// start waits for the `execve` at most [`EXEC_WAIT`]; a child still in it
/// then is returned with [`Spawned::exec_pending`], and a later failure of
/// its `execve` is its exit (127), told by [`late_exec_failure`].
pub fn spawn_child(plan: &SpawnPlan) -> io::Result<Spawned> {
    match vfork::try_spawn(plan) {
        Ok(started) => started.map(|(pid, pidfd, exec_pending)| Spawned {
            pid,
            pidfd,
            method: SpawnMethod::SharedTable,
            exec_pending,
        }),
        // posix_spawn can neither fill LISTEN_PID, nor switch users, nor
        // set limits: fork + exec.
        Err(vfork::Fallback::PosixSpawn)
            if pid_slot(&plan.envp).is_some() || plan.identity.needs_exec_steps() =>
        {
            Ok(Spawned {
                pid: forkexec::fork_exec_plan(plan)?,
                pidfd: None,
                method: SpawnMethod::ForkExec,
                exec_pending: false,
            })
        }
        Err(vfork::Fallback::PosixSpawn) => Ok(Spawned {
            pid: posix_spawn_plan(plan)?,
            pidfd: None,
            method: SpawnMethod::PosixSpawn,
            exec_pending: false,
        }),
    }
}

/// [`spawn`] with `posix_spawn`.
fn posix_spawn_plan(plan: &SpawnPlan) -> io::Result<i32> {
    let (sources, _moved) = relocate(&plan.fds.sources, 0)?;
    let mut actions = FileActions::new()?;
    actions.place(&sources, 0)?;
    actions.close_from(sources.len() as RawFd)?;
    // SAFETY: `actions` is initialised and `plan.cwd` is a valid C string that
    // outlives the posix_spawn call below (glibc copies it).
    check(unsafe {
        libc::posix_spawn_file_actions_addchdir_np(&mut actions.0, plan.cwd.as_ptr())
    })?;

    let mut attr = Attr::new()?;
    // SAFETY: sigset_t values are initialised by sigemptyset/sigfillset
    // before use; `attr` is initialised.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigfillset(&mut all);
        add_glibc_internal_signals(&mut all);
        check(libc::posix_spawnattr_setsigmask(&mut attr.0, &empty))?;
        check(libc::posix_spawnattr_setsigdefault(&mut attr.0, &all))?;
        check(libc::posix_spawnattr_setpgroup(&mut attr.0, 0))?;
        let flags = libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF
            | libc::POSIX_SPAWN_SETPGROUP;
        check(libc::posix_spawnattr_setflags(
            &mut attr.0,
            flags as libc::c_short,
        ))?;
    }
    posix_spawn(&plan.program, &actions, Some(&attr), &plan.argv, &plan.envp)
}

/// Starts this program again (`/proc/self/exe`, so the very file this
/// process runs even if its path was replaced since) with `argv` and `envp`.
/// `fds[i]` becomes the child's fd `3 + i`; 0, 1 and 2 are inherited and
/// every other fd is closed. Unlike [`spawn`], the child stays in this
/// process's group and keeps its signal mask and ignored signals, as a
/// child of `fork` would. Returns the child's PID.
///
/// glibc implements `posix_spawn` with `CLONE_VFORK`, so the cost does not
/// grow with this process's memory, and an exec failure is reported here.
pub fn spawn_self(argv: &[CString], envp: &[CString], fds: &[BorrowedFd<'_>]) -> io::Result<i32> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let (sources, _moved) = relocate(&raw, 3)?;
    let mut actions = FileActions::new()?;
    actions.place(&sources, 3)?;
    actions.close_from(3 + sources.len() as RawFd)?;
    posix_spawn(c"/proc/self/exe", &actions, None, argv, envp)
}

/// `posix_spawn(program, actions, attr, argv, envp)`; `None` is the default
/// attributes. Returns the child's PID.
fn posix_spawn(
    program: &CStr,
    actions: &FileActions,
    attr: Option<&Attr>,
    argv: &[CString],
    envp: &[CString],
) -> io::Result<i32> {
    let argv = ptr_array(argv);
    let envp = ptr_array(envp);
    let attr = attr.map_or(ptr::null(), |a| &a.0 as *const libc::posix_spawnattr_t);
    let mut pid: libc::pid_t = 0;
    // The child inherits this process's soft fd limit, which
    // [`raise_fd_limit`] may have raised: lower it for the duration of the
    // call (in drover the loop thread is the only one that creates fds, so
    // nothing else can hit the lower limit).
    let _limit = ChildFdLimit::apply();
    // SAFETY: every pointer is valid for the duration of the call: `program`
    // is a borrowed C string, `argv` and `envp` are null-terminated arrays
    // of pointers into C strings borrowed for the whole function; `actions`
    // is initialised, and `attr` is null (default attributes) or points to
    // an initialised attribute object borrowed for the call.
    check(unsafe {
        libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            &actions.0,
            attr,
            argv.as_ptr(),
            envp.as_ptr(),
        )
    })?;
    Ok(pid)
}

/// glibc's two internal signals (32: thread cancellation, 33: setxid).
/// `sigfillset` leaves them out and `sigaddset` refuses them, so a
/// posix_spawn child would get them as SIG_IGN (glibc ignores its internal
/// signals unless they are in the default set). A `sigset_t` is a bit
/// array with signal `n` at bit `n - 1`.
#[cfg(target_env = "gnu")]
fn add_glibc_internal_signals(set: &mut libc::sigset_t) {
    const BITS: usize = libc::c_ulong::BITS as usize;
    let words = (set as *mut libc::sigset_t).cast::<libc::c_ulong>();
    for signal in [32usize, 33] {
        let bit = signal - 1;
        // SAFETY: a Linux sigset_t is 1024 bits of `unsigned long` words
        // (glibc's __sigset_t), so word `bit / BITS` (0 or 1) is in bounds
        // and aligned for c_ulong; `set` is borrowed mutably for the write.
        unsafe { *words.add(bit / BITS) |= 1 << (bit % BITS) };
    }
}

/// Not glibc (musl): its internal signals are its own business and its
/// `sigfillset` set is used as it is.
#[cfg(not(target_env = "gnu"))]
fn add_glibc_internal_signals(_set: &mut libc::sigset_t) {}

/// This process's soft `RLIMIT_NOFILE` as it was before [`raise_fd_limit`]
/// raised it; the limit children start with.
static CHILD_NOFILE: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Raises this process's soft open-file limit to its hard limit, remembering
/// the original for children (every start of this crate gives it back to
/// the child). Returns (original soft, new soft).
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let _ = CHILD_NOFILE.set(limit);
    if limit.rlim_cur >= limit.rlim_max {
        return Ok((limit.rlim_cur, limit.rlim_cur));
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads one rlimit through a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, raised.rlim_cur))
}

/// The fd limit a child starts with, when this process raised its own.
pub(crate) fn child_fd_limit() -> Option<libc::rlimit> {
    CHILD_NOFILE.get().copied()
}

/// While alive, this process's soft fd limit is the one children start with.
struct ChildFdLimit(Option<libc::rlimit>);

impl ChildFdLimit {
    fn apply() -> ChildFdLimit {
        let Some(child) = child_fd_limit() else {
            return ChildFdLimit(None);
        };
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit through a valid pointer.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) } != 0
            || current.rlim_cur == child.rlim_cur
        {
            return ChildFdLimit(None);
        }
        let lowered = libc::rlimit {
            rlim_cur: child.rlim_cur.min(current.rlim_max),
            rlim_max: current.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) } != 0 {
            return ChildFdLimit(None);
        }
        ChildFdLimit(Some(current))
    }
}

impl Drop for ChildFdLimit {
    fn drop(&mut self) {
        if let Some(previous) = self.0 {
            // SAFETY: setrlimit reads one rlimit through a valid pointer.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &previous) };
        }
    }
}

/// A pidfd (close-on-exec) for process `pid`, Linux ≥ 5.3. For a child
/// of this process that has not been reaped, it refers to that child even
/// after its exit.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes plain integers and returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A close-on-exec `AF_UNIX` `SOCK_SEQPACKET` pair: one packet is one
/// message, boundaries kept. Used for queues, the fork servers and the
/// Python templates.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Takes ownership of fd `fd`, which this process inherited at a number its
/// parent chose, and makes it close-on-exec. Fails unless the fd is open.
///
/// Only for fds a parent placed for this process at `3..` (a context's
/// spawned child, drover's fork server), claimed first thing in `main`,
/// before anything else in the process knows their numbers, and each
/// number once.
pub fn claim_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: the borrow lasts for the two fcntl calls below and is never
    // closed through; F_GETFD on a closed number fails with EBADF, which is
    // the check.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_GETFD)?;
    fcntl(borrowed, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    // SAFETY: the fd is open (checked above) and, per this function's
    // contract, was placed for this process by its parent and is claimed
    // exactly once, so no other owner exists.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relocation_moves_only_sources_that_a_target_would_clobber() {
        // Two adjacent fds, far above what other tests of this process
        // open meanwhile (a pipe's two ends need not be adjacent then).
        let (pr, pw) = nix::unistd::pipe().unwrap();
        let (r, w) = loop {
            let r = fcntl(&pr, FcntlArg::F_DUPFD_CLOEXEC(900)).unwrap();
            let w = fcntl(&pw, FcntlArg::F_DUPFD_CLOEXEC(r + 1)).unwrap();
            // SAFETY: both are new fds that nothing else owns.
            let (r, w) = unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) };
            if w.as_raw_fd() == r.as_raw_fd() + 1 {
                break (r, w);
            }
        };
        let (r, w) = (r.as_raw_fd(), w.as_raw_fd());
        // Targets 0…: the pipe's end lies above them and stays.
        let (placed, copies) = relocate(&[w], 0).unwrap();
        assert!(copies.is_empty());
        assert_eq!(placed, [w]);
        // Targets from the lower end on: both ends collide (one with its
        // own target), so both are copied above the range.
        let first = r.min(w);
        let (placed, copies) = relocate(&[r, w], first).unwrap();
        assert_eq!(copies.len(), 2);
        assert!(placed.iter().all(|&fd| fd >= first + 2));
    }
}

#[cfg(test)]
mod pid_var_tests {
    use super::*;

    fn written(pid: libc::pid_t) -> Vec<u8> {
        let mut buf: PidVar = [0xff; 32];
        write_pid_var(&mut buf, pid);
        let end = buf.iter().position(|&b| b == 0).expect("a NUL");
        buf[..end].to_vec()
    }

    #[test]
    fn the_pid_variable_is_written_in_decimal_with_a_nul() {
        assert_eq!(written(1), b"LISTEN_PID=1");
        assert_eq!(written(4242), b"LISTEN_PID=4242");
        assert_eq!(written(i32::MAX), b"LISTEN_PID=2147483647");
        assert_eq!(pid_slot(&[CString::new("LISTEN_PID=1").unwrap()]), None);
        assert_eq!(pid_slot(&[CString::new(PID_SLOT).unwrap()]), Some(0));
    }
}
