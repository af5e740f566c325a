//! The store's lock: `flock(LOCK_EX)` on `<state_dir>/queues.lock`, which
//! holds the holder's PID so that a refused drover can name it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::StoreError;

/// The name of the lock file in the state directory.
pub const LOCK_FILE: &str = "queues.lock";

/// A held lock; dropping it closes the file, which releases the lock.
///
/// The lock belongs to the open file description: the file is opened
/// `O_CLOEXEC`, so an exec'd child never holds it, but a process forked
/// and *not* exec'd (a fork server forked after [`crate::Store::open`])
/// would keep it for as long as it lives.
#[derive(Debug)]
pub(crate) struct Lock {
    _file: Flock<File>,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock of `dir` without waiting, writing our PID into it.
    pub(crate) fn acquire(dir: &Path) -> Result<Lock, StoreError> {
        let path = dir.join(LOCK_FILE);
        let file = crate::error::open_rw(&path)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(StoreError::Locked {
                    dir: dir.to_path_buf(),
                    lock_file: path,
                    pid,
                });
            }
            Err((_, errno)) => {
                return Err(StoreError::io("locking", &path, &errno.into()));
            }
        };
        // A stale PID of a dead holder may be there: replace it.
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            writeln!(f, "{}", std::process::id())
        };
        write(&mut file).map_err(|e| StoreError::io("writing the PID into", &path, &e))?;
        Ok(Lock { _file: file, path })
    }

    /// The lock file.
    #[allow(dead_code)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}
