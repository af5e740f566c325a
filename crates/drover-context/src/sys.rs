//! The `unsafe` of this library beyond what it shares with drover (the
//! `drover-sys` crate: `posix_spawn` of this very program, fds over Unix
//! sockets): `fork` of the calling process, pidfds, memfds, inherited fds,
//! and code addresses that survive an exec of the same executable.
//!
//! Each function wraps one system call or one conversion so that its
//! `SAFETY:` argument stays local. What they mean for users — the fork
//! caveat, what a re-executed child runs, how a queue bounds its messages —
//! is documented in [the crate docs](crate).

use std::ffi::{CStr, c_int, c_void};
use std::fmt;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::ptr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::boot::Trampoline;

// ---------------------------------------------------------------------------
// Processes

/// Forks the calling process. In the child, `child` runs and its result is
/// the exit status of an immediate `_exit` (1 if it panics): the child never
/// returns or unwinds into the caller. The parent gets the child's PID and
/// drops `child` unrun.
///
/// This is the `fork` start method's primitive; its caveat (a process with
/// other threads) is documented in [the crate docs](crate).
pub(crate) fn fork_run<F: FnOnce() -> i32>(child: F) -> io::Result<libc::pid_t> {
    // SAFETY: fork() itself only duplicates the process; the question is
    // what the child may do afterwards. The child is a complete copy of the
    // address space with one thread, this one, so every value `child`
    // reaches is present and initialised. Locks that other threads held at
    // the fork stay held forever in the child: using one deadlocks the child
    // (which is Python's documented caveat, repeated on the `fork` start
    // method) but cannot make it read freed or foreign memory — safe Rust
    // reaches shared state only through locks or atomics, and glibc resets
    // its own malloc locks in the child. The two callers respect the caveat
    // as documented: the fork server has a single thread, and the `fork`
    // start method documents that the caller must not fork while other
    // threads hold what the child needs. The child never unwinds or returns
    // into the caller's frames (a panic is caught, and it ends in `_exit`
    // below), so no value is dropped in both processes by accident.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => exit_now(std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(1)),
        pid => Ok(pid),
    }
}

/// Ends the process at once with `code`, running no `atexit` handler and no
/// destructor: in a forked child those belong to the parent.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes no pointer and cannot fail; skipping destructors
    // and atexit handlers is its purpose (the caller flushed what it owns).
    unsafe { libc::_exit(code) }
}

/// A pidfd for `pid` (close-on-exec): signals sent through it can never
/// reach another process that later reuses the PID, and it becomes readable
/// when the process exits.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success the kernel returned a new fd that nothing else in
    // this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to the process behind `pidfd`.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: c_int) -> io::Result<()> {
    // SAFETY: the fd is borrowed, so open for the call; a null siginfo makes
    // the kernel fill it in as kill(2) does; flags must be 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// File descriptors

/// A new anonymous memory file (close-on-exec), for a payload a child reads.
pub(crate) fn memfd(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and valid for the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) use drover_sys::claim_inherited_fd;

// ---------------------------------------------------------------------------
// Code addresses across exec

/// The reference point of every code offset; only its address matters.
#[inline(never)]
fn anchor() {}

fn anchor_addr() -> usize {
    anchor as fn() as usize
}

/// Identity of the executable file a process runs (`/proc/self/exe`): its
/// device, inode, size and modification time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExeIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl ExeIdentity {
    /// This process's executable (computed once: a running executable
    /// cannot be written to, so its identity does not change).
    pub fn current() -> io::Result<ExeIdentity> {
        static CURRENT: OnceLock<ExeIdentity> = OnceLock::new();
        if let Some(id) = CURRENT.get() {
            return Ok(id.clone());
        }
        let meta = std::fs::metadata("/proc/self/exe")?;
        let id = ExeIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        };
        Ok(CURRENT.get_or_init(|| id).clone())
    }

    /// A different identity, for tests of the mismatch error.
    #[cfg(test)]
    pub fn other(&self) -> ExeIdentity {
        ExeIdentity {
            ino: self.ino.wrapping_add(1),
            ..self.clone()
        }
    }
}

impl fmt::Display for ExeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "device {} inode {}, {} bytes, modified {}.{:09}",
            self.dev, self.ino, self.size, self.mtime, self.mtime_nsec
        )
    }
}

/// Why a code offset cannot be used in this process.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodeError {
    #[error("cannot identify this program's executable: {0}")]
    Identify(#[source] io::Error),
    #[error("this executable ({ours}) is not the parent's ({parent}); was it rebuilt?")]
    OtherExecutable {
        parent: ExeIdentity,
        ours: ExeIdentity,
    },
    #[error("address {0:#x} is not code of this program's main executable")]
    OutsideText(usize),
}

/// Proof that this process runs the same executable file as a parent whose
/// identity it was given, so code offsets taken there are valid here.
#[derive(Debug)]
pub(crate) struct SameExecutable(());

/// Checks that this process runs the executable file `parent` describes.
pub(crate) fn same_executable(parent: &ExeIdentity) -> Result<SameExecutable, CodeError> {
    let ours = ExeIdentity::current().map_err(CodeError::Identify)?;
    if &ours == parent {
        Ok(SameExecutable(()))
    } else {
        Err(CodeError::OtherExecutable {
            parent: parent.clone(),
            ours,
        })
    }
}

/// The address ranges of the main executable's code (its loadable,
/// executable ELF segments, as mapped in this process).
fn main_text() -> &'static [Range<usize>] {
    static TEXT: OnceLock<Vec<Range<usize>>> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut ranges: Vec<Range<usize>> = Vec::new();
        // SAFETY: the callback matches the expected signature and `data`
        // points to `ranges`, which outlives the call; dl_iterate_phdr
        // calls it synchronously on this thread.
        unsafe {
            libc::dl_iterate_phdr(
                Some(collect_main_text),
                (&mut ranges as *mut Vec<Range<usize>>).cast::<c_void>(),
            )
        };
        ranges
    })
}

/// `dl_iterate_phdr` callback: records the executable PT_LOAD segments of
/// the first object, which glibc documents to be the main program, then
/// stops the iteration.
unsafe extern "C" fn collect_main_text(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut c_void,
) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid `info` for the duration of the
    // callback, and `data` is the `&mut Vec` given by `main_text`, not
    // aliased while the iteration runs.
    let (info, ranges) = unsafe { (&*info, &mut *data.cast::<Vec<Range<usize>>>()) };
    if info.dlpi_phdr.is_null() {
        return 1;
    }
    // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers of this
    // object, valid during the callback.
    let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    for h in headers {
        if h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_X != 0 {
            let start = (info.dlpi_addr as usize).wrapping_add(h.p_vaddr as usize);
            ranges.push(start..start.saturating_add(h.p_memsz as usize));
        }
    }
    1
}

/// Computes what a child checks before it calls into a payload (this
/// executable's identity and code ranges), so that children forked from
/// here later inherit the answers instead of each computing them.
pub(crate) fn warm_up() {
    let _ = ExeIdentity::current();
    let _ = main_text();
}

fn in_main_text(addr: usize) -> bool {
    main_text().iter().any(|r| r.contains(&addr))
}

/// The offset of code address `addr` from this module's anchor function,
/// which an exec of the same executable file preserves (ASLR moves the
/// whole image, not its parts). `None` unless both lie in the main
/// executable's code: a function of a shared library, or a program that
/// loads drover as one, has no meaning in a re-executed child.
pub(crate) fn code_offset(addr: usize) -> Option<i64> {
    (in_main_text(addr) && in_main_text(anchor_addr()))
        .then(|| addr.wrapping_sub(anchor_addr()) as i64)
}

/// A code address of this process, checked to lie in its main executable's
/// code and recomputed from an offset taken in a process running the same
/// executable file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CodeAddr(usize);

/// Turns `offset` (from [`code_offset`] in a process running the same
/// executable) back into an address of this process.
pub(crate) fn resolve(_same: &SameExecutable, offset: i64) -> Result<CodeAddr, CodeError> {
    let addr = anchor_addr().wrapping_add(offset as usize);
    if in_main_text(addr) {
        Ok(CodeAddr(addr))
    } else {
        Err(CodeError::OutsideText(addr))
    }
}

/// The boot trampoline at `addr`.
///
/// Only `context::boot` calls this, with the trampoline offset of a boot
/// header; see the SAFETY argument.
pub(crate) fn as_trampoline(addr: CodeAddr) -> Trampoline {
    // SAFETY: a CodeAddr is only made by `resolve`: an offset resolved
    // under a SameExecutable proof and checked to lie in the main
    // executable's code. The offset comes from
    // a boot header that the parent wrote (into a memfd this process
    // inherited, or through the fork server's private socket), in which
    // `Payload::new` recorded `boot::trampoline::<A> as Trampoline`. The
    // same executable file maps the same function at the same offset from
    // the anchor, so `addr` is that function, of exactly this type.
    unsafe { std::mem::transmute::<usize, Trampoline>(addr.0) }
}

/// The target `fn(A)` at `addr`.
///
/// Only `boot::trampoline::<A>` calls this, with the target offset that the
/// same boot header paired with the trampoline for this very `A`.
pub(crate) fn as_target<A>(addr: CodeAddr) -> fn(A) {
    // SAFETY: as for `as_trampoline`: `Payload::new::<A>` recorded the
    // offset of a `fn(A)` in the same header as the offset of
    // `trampoline::<A>`, and only `trampoline::<A>` calls this, so `A` is the
    // type the function was taken at; a fn pointer is pointer-sized.
    unsafe { std::mem::transmute::<usize, fn(A)>(addr.0) }
}
