//! Every `unsafe` call of drover. Process creation — `posix_spawn` and
//! fork + exec of fully prepared starts, fd placement, the open-file limit
//! children start with — and the start helpers' framing ([`wire`]) are the
//! `drover-sys` crate, shared with `drover-context` and re-exported here.
//! What only drover needs is here: read leases on config files ([`file`](mod@file)), the few socket queries
//! (`ioctl`, `poll`) that nix does not wrap, and its standard fds.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, fcntl};

pub mod code;
pub mod file;

/// What drover shares with `drover-context`, in the `drover-sys` crate:
/// `posix_spawn` and fork + exec of prepared starts, the open-file limit of
/// children, socket pairs and the start helpers' framing.
pub use drover_sys::{
    Credentials, FdPlan, Identity, PID_SLOT, SpawnPlan, claim_inherited_fd, forkexec, pidfd_open,
    raise_fd_limit, relocate, seqpacket_pair, spawn, spawn_child, wire,
};

/// Scratch slots reserved for `spawn` at startup ([`reserve_spawn_slots`]):
/// a child with stdio and up to this many minus 3 queue sockets starts
/// through drover's shared fd table; one with more, with `posix_spawn`.
pub const SPAWN_SLOTS: usize = 64;

/// Reserves the [`SPAWN_SLOTS`] scratch slots of `spawn` (fds 3…66 when
/// called before anything else is open): with them, a start's kernel cost
/// does not grow with the fds drover holds (two pipes per child). Without
/// them (the call failed), starts use `posix_spawn`.
pub fn reserve_spawn_slots() -> io::Result<std::ops::Range<std::os::fd::RawFd>> {
    drover_sys::reserve_spawn_slots(SPAWN_SLOTS)
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

/// Benchmarks only: `mib` MiB of touched memory in 4 KiB pages (never
/// transparent huge pages, which would make a fork of it look cheap).
pub fn ballast(mib: u64) -> Vec<u8> {
    let len = usize::try_from(mib)
        .ok()
        .and_then(|m| m.checked_mul(1 << 20))
        .unwrap_or(0);
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

/// Sends signal number `signal` (any, real-time ones included) to `pid`,
/// or to the process group `-pid` when `pid` is negative: `kill(2)`.
pub fn kill_raw(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes two plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The range of real-time signals on this libc: `SIGRTMIN..=SIGRTMAX`.
pub fn realtime_signals() -> std::ops::RangeInclusive<i32> {
    libc::SIGRTMIN()..=libc::SIGRTMAX()
}

/// Whether `fd` is open without close-on-exec: inherited by an exec'd
/// program (a socket handed down by socket activation, say).
pub fn inherited_across_exec(fd: std::os::fd::RawFd) -> bool {
    fcntl(
        // SAFETY: F_GETFD on any integer is harmless (EBADF for a closed
        // one); the borrow ends with the call.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        FcntlArg::F_GETFD,
    )
    .is_ok_and(|flags| flags & libc::FD_CLOEXEC == 0)
}

/// Puts SIGCHLD back to its default action (a parent may have left it
/// ignored, and an ignored SIGCHLD makes the kernel reap children itself,
/// before drover can learn how they ended).
pub fn default_sigchld() -> io::Result<()> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL installs no handler of ours: no code runs in signal
    // context, and no other thread exists yet to race on the disposition.
    unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) }
        .map(drop)
        .map_err(io::Error::from)
}

/// Starts a thread named `name` that takes no signal: it is started with
/// every signal blocked, and keeps that mask. A signal the loop waits for
/// (SIGCHLD, through its signalfd) delivered to a thread that does not
/// block it would be lost to the loop.
pub fn spawn_quiet<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<std::thread::JoinHandle<T>> {
    spawn_quiet_with(std::thread::Builder::new().name(name.into()), f)
}

/// [`spawn_quiet`] with a stack of `stack` bytes.
pub fn spawn_quiet_with_stack<T: Send + 'static>(
    name: &str,
    stack: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<std::thread::JoinHandle<T>> {
    let builder = std::thread::Builder::new().name(name.into());
    spawn_quiet_with(builder.stack_size(stack), f)
}

fn spawn_quiet_with<T: Send + 'static>(
    builder: std::thread::Builder,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<std::thread::JoinHandle<T>> {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    let mut old = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )?;
    let spawned = builder.spawn(f);
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    spawned
}

/// Returns the free memory at the top of the heap and in free chunks to
/// the system (glibc keeps what a burst of allocations freed, resident,
/// for reuse; `malloc_trim` gives it back). Nothing with musl, whose
/// allocator returns memory as it is freed.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes the allocator's own locks; it only
    // releases memory no allocation uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Ignores SIGXFSZ: a write past `RLIMIT_FSIZE` then fails with EFBIG
/// instead of terminating the process. Children get it back at its
/// default (posix_spawn resets every signal; the shared-table start resets
/// it always).
pub fn ignore_file_size_signal() -> io::Result<()> {
    ignore_signal(libc::SIGXFSZ)
}

/// Sets `signal`'s disposition to SIG_IGN.
pub fn ignore_signal(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: SIG_IGN installs no handler, so no code of ours runs in
    // signal context; sigaction is process-wide and thread-safe.
    let previous = unsafe { libc::signal(signal, libc::SIG_IGN) };
    if previous == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
