//! The store's errors: typed, cloneable (one failed group commit fails every
//! ticket in it) and worded for an operator.

use std::io;
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

/// Everything that can go wrong opening or writing the queue store.
///
/// Every variant names the file involved. Errors carry text rather than
/// the underlying `io::Error`/SQLite error so that one failure can be
/// reported to every ticket of the transaction that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (normally another drover) holds the store's lock.
    #[error(
        "the queue store in {dir} is in use by another drover{}; lock file {lock_file}",
        match pid { Some(p) => format!(" (PID {p})"), None => String::new() }
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// The lock file.
        lock_file: PathBuf,
        /// The PID the holder wrote into the lock file, if it could be read.
        pid: Option<u32>,
    },
    /// The file system is full (ENOSPC, EDQUOT or SQLITE_FULL).
    #[error("disk full writing the queue store {path}: {detail}")]
    DiskFull {
        /// The file being written.
        path: PathBuf,
        /// What the OS or SQLite said.
        detail: String,
    },
    /// The OS refused access (EACCES, EPERM, EROFS, an immutable file).
    #[error("permission denied on the queue store {path}: {detail}")]
    PermissionDenied {
        /// The file or directory refused.
        path: PathBuf,
        /// What the OS or SQLite said.
        detail: String,
    },
    /// The file is not a (valid) queue store.
    #[error("the queue store file {path} is corrupt: {detail}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// Any other I/O or SQLite failure.
    #[error("{op} the queue store {path} failed: {detail}")]
    Io {
        /// What was being done ("opening", "committing to", ...).
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// What the OS or SQLite said.
        detail: String,
    },
    /// A message id does not fit the store (ids must be below 2^63).
    #[error("message id {id} is out of range (ids must be below 2^63)")]
    IdOutOfRange {
        /// The offending id.
        id: u64,
    },
    /// The store thread panicked while committing; the transaction was
    /// rolled back and the thread goes on.
    #[error("the queue store thread panicked committing to {path}: {detail}")]
    Panicked {
        /// The store file.
        path: PathBuf,
        /// The panic message.
        detail: String,
    },
    /// The store thread is gone (it exited or could not be started).
    #[error("the queue store thread for {path} is not running")]
    Closed {
        /// The store file.
        path: PathBuf,
    },
    /// [`Store::close`](crate::Store::close) gave up waiting for the thread.
    #[error("the queue store thread for {path} did not finish committing within {waited_ms} ms")]
    Timeout {
        /// The store file.
        path: PathBuf,
        /// How long close waited.
        waited_ms: u128,
    },
}

impl StoreError {
    /// Classifies an `io::Error` from an operation `op` on `path`.
    pub(crate) fn io(op: &'static str, path: &Path, e: &io::Error) -> Self {
        let path = path.to_path_buf();
        let detail = e.to_string();
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => return StoreError::DiskFull { path, detail },
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
                return StoreError::PermissionDenied { path, detail };
            }
            _ => {}
        }
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                StoreError::DiskFull { path, detail }
            }
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                StoreError::PermissionDenied { path, detail }
            }
            _ => StoreError::Io { op, path, detail },
        }
    }

    /// Classifies a SQLite error from an operation `op` on the store file
    /// `path`. `errno` is the OS error behind it, where SQLite kept one.
    pub(crate) fn sqlite(op: &'static str, path: &Path, e: &rusqlite::Error, errno: i32) -> Self {
        let path = path.to_path_buf();
        let mut detail = e.to_string();
        if errno != 0 {
            detail = format!("{detail} ({})", io::Error::from_raw_os_error(errno));
        }
        if let Some(code) = e.sqlite_error_code() {
            match code {
                ErrorCode::DiskFull => return StoreError::DiskFull { path, detail },
                ErrorCode::PermissionDenied
                | ErrorCode::ReadOnly
                | ErrorCode::AuthorizationForStatementDenied => {
                    return StoreError::PermissionDenied { path, detail };
                }
                ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                    return StoreError::Corrupt { path, detail };
                }
                _ => {}
            }
        }
        match errno {
            libc::ENOSPC | libc::EDQUOT => StoreError::DiskFull { path, detail },
            libc::EACCES | libc::EPERM | libc::EROFS => {
                StoreError::PermissionDenied { path, detail }
            }
            _ => StoreError::Io { op, path, detail },
        }
    }
}

/// Opens `path` for reading and writing, creating it if missing (never
/// truncating): the store's file and its lock file.
pub(crate) fn open_rw(path: &Path) -> Result<std::fs::File, StoreError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::io("opening", path, &e))
}
