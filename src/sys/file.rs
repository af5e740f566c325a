//! Config files opened so that nothing on the file system can block drover,
//! and read leases that tell whether someone has a file open for writing.
//!
//! A name like `z.toml` may be a FIFO (`open` waits for a writer), a device
//! (`/dev/zero` never ends; a tty would become drover's controlling
//! terminal) or a file someone is still writing. [`open_nonblocking`] opens
//! with `O_NONBLOCK | O_NOCTTY` (and std's `O_CLOEXEC`): it returns at once
//! whatever the name is, and the caller checks the opened fd with `fstat`.
//!
//! A read lease (`F_SETLEASE`, `F_RDLCK`) cannot be taken while any process
//! has the file open for writing, so taking one is the kernel's answer to
//! "is a writer still at work?", and holding it while reading means no
//! writer can open the file until the lease is released. Only the file's
//! owner (or a holder of `CAP_LEASE`) may take one; others get `EACCES`,
//! and some file systems refuse leases (`EINVAL`): see [`Lease::Unavailable`].

use std::fs::{File, FileType, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::OnceLock;

/// Opens `path` for reading without ever waiting: a FIFO without a writer,
/// a device or a file under someone else's lease does not block, and a tty
/// does not become the controlling terminal. Check the file type of the
/// result (`File::metadata` is an `fstat` of this very fd) before reading.
pub fn open_nonblocking(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// What a file is, for a message: "a FIFO", "a character device", …
pub fn describe(kind: FileType) -> &'static str {
    if kind.is_file() {
        "a regular file"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// The answer to a request for a read lease.
#[derive(Debug)]
pub enum Lease<'a> {
    /// Held until dropped: nobody has the file open for writing, and nobody
    /// can open it for writing meanwhile (their `open` waits for the drop).
    Held(LeaseGuard<'a>),
    /// Some process has the file open for writing.
    Busy,
    /// The kernel will not say: not the file's owner and no `CAP_LEASE`
    /// (`EACCES`), leases disabled or unsupported by the file system
    /// (`EINVAL`), or another error.
    Unavailable(io::Error),
}

/// A read lease; released on drop.
#[derive(Debug)]
pub struct LeaseGuard<'a>(&'a File);

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        // Closing the fd would release it too; releasing now lets a waiting
        // writer go on even if the caller keeps the file a little longer.
        let _ = set_lease(self.0, libc::F_UNLCK);
    }
}

/// Takes a read lease on `file` (opened read-only, a regular file).
///
/// While a lease is held, a process that opens the file for writing makes
/// the kernel send SIGIO to drover, whose default action terminates the
/// process. Releasing the lease quickly does not prevent that (the signal
/// is sent when the `open` starts), so the first call sets SIGIO to be
/// ignored for good: drover never uses signal-driven I/O, and every child
/// starts with default dispositions (`POSIX_SPAWN_SETSIGDEF` for all
/// signals, the fork paths reset each one).
pub fn read_lease(file: &File) -> Lease<'_> {
    static SIGIO_IGNORED: OnceLock<bool> = OnceLock::new();
    if !*SIGIO_IGNORED.get_or_init(|| ignore_sigio().is_ok()) {
        return Lease::Unavailable(io::Error::other("cannot ignore SIGIO"));
    }
    match set_lease(file, libc::F_RDLCK) {
        Ok(()) => Lease::Held(LeaseGuard(file)),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Lease::Busy,
        Err(e) => Lease::Unavailable(e),
    }
}

fn set_lease(file: &File, kind: libc::c_int) -> io::Result<()> {
    // SAFETY: F_SETLEASE takes an int argument and touches no memory of
    // ours; the fd is borrowed from a live `File` for the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, kind) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ignore_sigio() -> io::Result<()> {
    super::ignore_signal(libc::SIGIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_tells_whether_a_writer_has_the_file_open() {
        let path = std::env::temp_dir().join(format!("drover-lease-{}", std::process::id()));
        std::fs::write(&path, "x").unwrap();
        let file = open_nonblocking(&path).unwrap();
        match read_lease(&file) {
            Lease::Held(_) => {}
            // Some file systems (overlay on old kernels, NFS) refuse leases;
            // then there is nothing to test here.
            Lease::Unavailable(_) => return std::fs::remove_file(&path).unwrap(),
            Lease::Busy => panic!("nobody writes the file"),
        }
        let writer = OpenOptions::new().append(true).open(&path).unwrap();
        assert!(matches!(read_lease(&file), Lease::Busy));
        drop(writer);
        assert!(matches!(read_lease(&file), Lease::Held(_)));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_fifo_opens_at_once() {
        let path = std::env::temp_dir().join(format!("drover-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let file = open_nonblocking(&path).unwrap();
        assert_eq!(describe(file.metadata().unwrap().file_type()), "a FIFO");
        std::fs::remove_file(&path).unwrap();
    }
}
