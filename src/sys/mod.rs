//! Every `unsafe` call of drover: process creation and resource limits,
//! read leases on config files (`file`), and the few socket queries
//! (`ioctl`, `poll`) that nix does not wrap.
//!
//! Everything a child needs — program path, argv, envp, working directory and
//! the fd plan — is built by the caller as C strings before anything is
//! created, so nothing here allocates between the moment a child exists and
//! its `execve`. The spawn path uses `posix_spawn` (glibc implements it with
//! `CLONE_VFORK`, so its cost does not grow with the supervisor's memory) and
//! needs no `pre_exec` hook: process group, signal mask, signal dispositions,
//! fd placement, closing of every other fd and the working directory are all
//! spawn attributes or file actions.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use nix::fcntl::{FcntlArg, fcntl};

pub mod context;
pub mod file;
pub mod forkexec;
pub mod wire;

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
}

/// Null-terminated pointer array over C strings; lives as long as `strings`.
pub(crate) fn ptr_array(strings: &[CString]) -> Vec<*mut libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr() as *mut libc::c_char)
        .chain(std::iter::once(ptr::null_mut()))
        .collect()
}

pub(crate) fn check(rc: libc::c_int) -> io::Result<()> {
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
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: self.0 was initialised by posix_spawn_file_actions_init.
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

/// Moves any source fd that collides with a target number out of the way,
/// so that placing fd N never clobbers a source still to be placed. The
/// returned copies must live until the spawn has happened.
pub(crate) fn relocate_sources(sources: &[RawFd]) -> io::Result<(Vec<RawFd>, Vec<OwnedFd>)> {
    let limit = sources.len() as RawFd;
    let mut keep = Vec::new();
    let mut placed = Vec::with_capacity(sources.len());
    for &fd in sources {
        if fd < limit {
            let copy = fcntl(
                // SAFETY: `fd` is open for the duration of this call; the
                // borrow does not outlive it.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
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

/// Starts `plan` with `posix_spawn` in a new process group, with an empty
/// signal mask, every signal at its default disposition and exactly the
/// planned fds open. Returns the child's PID.
///
/// An error means no process runs (glibc reports exec failures, such as a
/// missing or non-executable file, from the child through `CLONE_VFORK`).
pub fn spawn(plan: &SpawnPlan) -> io::Result<i32> {
    let (sources, _moved) = relocate_sources(&plan.fds.sources)?;
    let mut actions = FileActions::new()?;
    for (target, &source) in sources.iter().enumerate() {
        // SAFETY: `actions` is initialised; fd numbers are plain integers
        // recorded for the child, which performs the dup2.
        check(unsafe {
            libc::posix_spawn_file_actions_adddup2(&mut actions.0, source, target as RawFd)
        })?;
    }
    // SAFETY: `actions` is initialised; the child closes every fd from
    // `sources.len()` on, so nothing but the plan is inherited.
    check(unsafe {
        libc::posix_spawn_file_actions_addclosefrom_np(&mut actions.0, sources.len() as RawFd)
    })?;
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

    let argv = ptr_array(&plan.argv);
    let envp = ptr_array(&plan.envp);
    let mut pid: libc::pid_t = 0;
    // The child inherits drover's soft fd limit, which drover raised for
    // itself: lower it for the duration of the call (the loop thread is the
    // only one that creates fds, so nothing else can hit the lower limit).
    let _limit = ChildFdLimit::apply();
    // SAFETY: every pointer is valid for the duration of the call: program,
    // argv and envp point into `plan`, which is borrowed for the whole
    // function, and both arrays are null-terminated; `actions` and `attr`
    // are initialised.
    check(unsafe {
        libc::posix_spawn(
            &mut pid,
            plan.program.as_ptr(),
            &actions.0,
            &attr.0,
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

/// drover's soft `RLIMIT_NOFILE` as it was before drover raised it; the
/// limit children start with.
static CHILD_NOFILE: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Raises drover's soft open-file limit to its hard limit, remembering the
/// original for children. Returns (original soft, new soft).
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

/// The fd limit a child starts with, when drover raised its own.
pub(crate) fn child_fd_limit() -> Option<libc::rlimit> {
    CHILD_NOFILE.get().copied()
}

/// While alive, drover's soft fd limit is the one children start with.
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

/// Bytes (kernel accounting, not payload) that a Unix socket has sent and
/// its peer has not read yet (`SIOCOUTQ`); 0 means the peer has read
/// everything. The broker uses it to know when an at-most-once consumer has
/// taken what it was handed.
pub fn unread_by_peer(fd: &impl std::os::fd::AsFd) -> io::Result<i32> {
    let mut pending: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int through the pointer, which
    // points to a live local; the fd is borrowed for the call.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCOUTQ, &mut pending) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pending)
}

/// Bytes waiting in a Unix socket's receive queue (`SIOCINQ`). On a
/// `SOCK_SEQPACKET` socket this sums the payloads of every queued packet
/// (zero-length packets add nothing), so after a `recv` of 0 it tells
/// whether packets with a payload still follow.
pub fn unread_by_us(fd: &impl std::os::fd::AsFd) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCINQ (= FIONREAD) writes one int through the pointer, which
    // points to a live local; the fd is borrowed for the call.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::FIONREAD, &mut queued) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(queued).unwrap_or(0))
}

/// Whether the peer of a socket has closed it, or shut down its writing
/// side (`POLLRDHUP`, which nix does not name): then a `recv` of 0 can be
/// the end of the stream rather than a zero-length packet.
pub fn peer_closed(fd: &impl std::os::fd::AsFd) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, nfds = 1, timeout 0 (never blocks); the fd
    // is borrowed for the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0)
}

/// A close-on-exec `AF_UNIX` `SOCK_SEQPACKET` pair: one packet is one
/// message, boundaries kept. Used for queues, the fork server and the Python
/// templates.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Benchmarks only: `mib` MiB of touched memory in 4 KiB pages (never
/// transparent huge pages, which would make a fork of it look cheap).
pub fn ballast(mib: usize) -> Vec<u8> {
    let len = mib << 20;
    let mut memory: Vec<u8> = Vec::with_capacity(len);
    if len > 0 {
        // SAFETY: the range is the vector's own allocation, of `len` bytes;
        // MADV_NOHUGEPAGE only changes how the kernel backs it.
        unsafe {
            libc::madvise(memory.as_mut_ptr().cast(), len, libc::MADV_NOHUGEPAGE);
        }
    }
    memory.resize(len, 1);
    memory
}

/// Makes sure fds 0, 1 and 2 are open (on `/dev/null` if they were closed),
/// so that files drover opens later never land on a standard stream.
pub fn ensure_std_fds() -> io::Result<()> {
    for fd in 0..3 {
        if fcntl(
            // SAFETY: F_GETFD on any integer is harmless; EBADF is the answer
            // we look for.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            FcntlArg::F_GETFD,
        )
        .is_err()
        {
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?;
            let raw = std::os::fd::IntoRawFd::into_raw_fd(null);
            if raw != fd {
                // The lowest free fd is `fd` itself, so this cannot happen
                // unless another thread raced us; fail loudly.
                // SAFETY: we own `raw` and close it exactly once.
                drop(unsafe { OwnedFd::from_raw_fd(raw) });
                return Err(io::Error::other("could not reopen a closed standard fd"));
            }
        }
    }
    Ok(())
}
