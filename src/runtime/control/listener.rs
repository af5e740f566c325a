//! Creating the control socket file safely.
//!
//! `bind(2)` creates the socket file with the mode `0777 & !umask`; a chmod
//! afterwards leaves a window in which, under a permissive umask, anyone can
//! connect and send `shutdown`. So the socket is bound inside a fresh
//! private directory next to the target (mode 0700: nobody else can reach
//! what is inside), given mode 0600 there, and only then hard-linked to the
//! target path. The path never exists with another mode, whatever the
//! umask, and `link(2)` never replaces anything: it fails when the path
//! exists.
//!
//! What is at the path already decides what happens:
//! - nothing: the link makes ours the socket;
//! - a socket someone listens on: another drover, an error;
//! - a dead socket (connecting is refused): left behind by a drover that
//!   was killed; it is moved aside, checked to be that same file, deleted,
//!   and the link is tried again;
//! - anything else (a regular file, a directory, a symlink): an error;
//!   drover never deletes what it did not create.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};

/// How many times a path that keeps changing under us is tried.
const ATTEMPTS: usize = 3;

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("control socket {0}: another drover is already listening there")]
    InUse(PathBuf),
    #[error(
        "control socket {0}: something that is not a socket is there; remove it or choose another path"
    )]
    NotSocket(PathBuf),
    #[error("control socket {0}: the path kept changing while drover created the socket")]
    Unstable(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The listening control socket; removes its file when dropped (if the
/// file at the path is still ours).
#[derive(Debug)]
pub struct Listener {
    pub socket: UnixListener,
    path: PathBuf,
    /// Device and inode of our socket file.
    file: (u64, u64),
}

impl Listener {
    /// Creates the socket at `path`, mode 0600 from the moment it exists.
    /// A dead socket there is replaced; a live one, or anything that is not
    /// a socket, is an error.
    pub fn bind(path: &Path) -> Result<Listener, BindError> {
        let io_err = |source| BindError::Io {
            path: path.to_owned(),
            source,
        };
        let parent = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if path.file_name().is_none() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a file name",
            )));
        }
        fs::create_dir_all(parent).map_err(io_err)?;
        let staging = Staging::create(parent).map_err(io_err)?;
        let socket = staging.bind().map_err(io_err)?;
        let meta = fs::symlink_metadata(staging.socket()).map_err(io_err)?;
        let file = (meta.dev(), meta.ino());
        place(&staging, path)?;
        socket.set_nonblocking(true).map_err(io_err)?;
        Ok(Listener {
            socket,
            path: path.to_owned(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Whatever replaced our file (another drover, after someone deleted
        // ours) is not ours to delete.
        if same_file(&self.path, self.file) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn same_file(path: &Path, file: (u64, u64)) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == file)
}

/// A private directory next to the target, removed with what is in it.
#[derive(Debug)]
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn create(parent: &Path) -> io::Result<Staging> {
        let pid = std::process::id();
        for n in 0..100 {
            let dir = parent.join(format!(".drover-{pid}-{n}"));
            // The umask can only take bits away from 0700; the chmod puts
            // back any it took from the owner (nobody else can get in
            // meanwhile).
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    let staging = Staging { dir };
                    fs::set_permissions(&staging.dir, fs::Permissions::from_mode(0o700))?;
                    return Ok(staging);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "cannot create a private directory beside it",
        ))
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("s")
    }

    /// Binds the socket inside the directory and makes it 0600 there.
    fn bind(&self) -> io::Result<UnixListener> {
        let path = self.socket();
        let socket = match UnixListener::bind(&path) {
            Ok(socket) => socket,
            // A path too long for sun_path: the same file, reached through
            // a short name for the directory.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                let dir = fs::File::open(&self.dir)?;
                UnixListener::bind(format!("/proc/self/fd/{}/s", dir.as_raw_fd()))?
            }
            Err(e) => return Err(e),
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        Ok(socket)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.socket());
        let _ = fs::remove_file(self.dir.join("stale"));
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Links the staged socket to `path`, replacing only a dead socket.
fn place(staging: &Staging, path: &Path) -> Result<(), BindError> {
    let io_err = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    for _ in 0..ATTEMPTS {
        match fs::hard_link(staging.socket(), path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(e)),
        }
        match probe(path).map_err(io_err)? {
            Found::Nothing => {}
            Found::Live => return Err(BindError::InUse(path.to_owned())),
            Found::NotSocket => return Err(BindError::NotSocket(path.to_owned())),
            Found::Dead => remove_dead(staging, path).map_err(io_err)?,
        }
    }
    Err(BindError::Unstable(path.to_owned()))
}

/// What is at the target path.
#[derive(Debug, PartialEq)]
enum Found {
    Nothing,
    Live,
    /// A socket nobody listens on.
    Dead,
    NotSocket,
}

fn probe(path: &Path) -> io::Result<Found> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Ok(Found::NotSocket);
    }
    // Non-blocking, so that a live drover that is not accepting (stopped,
    // or its backlog full) answers EAGAIN instead of blocking us.
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EAGAIN) | Err(Errno::EINPROGRESS) => Ok(Found::Live),
        // A socket inode whose socket is closed never listens again.
        Err(Errno::ECONNREFUSED) => Ok(Found::Dead),
        Err(Errno::ENOENT) => Ok(Found::Nothing),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the dead socket at `path` — and nothing that took its place
/// since it was probed: it is first moved into our private directory
/// (atomic), where nobody else can change it, and probed again there.
/// Anything but a dead socket is put back. (Comparing inode numbers would
/// not do: a new file may get the number of one just deleted.)
fn remove_dead(staging: &Staging, path: &Path) -> io::Result<()> {
    let aside = staging.dir.join("stale");
    match fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if probe(&aside)? == Found::Dead {
        return fs::remove_file(&aside);
    }
    // Someone else's new file. Back it goes, unless the path was taken
    // again meanwhile; then the next attempt reports what is there.
    let restored = fs::hard_link(&aside, path);
    fs::remove_file(&aside)?;
    restored
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;
    use std::os::unix::net::UnixStream;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn binds_0600_and_leaves_nothing_else_behind() {
        let tmp = TempDir::new("listener", "mode");
        let dir = tmp.path().to_path_buf();
        let path = dir.join("d.sock");
        let listener = Listener::bind(&path).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(meta.nlink(), 1, "the staging name is gone");
        assert_eq!(entries(&dir), ["d.sock"]);
        UnixStream::connect(&path).expect("reachable through the linked name");
        drop(listener);
        assert!(entries(&dir).is_empty());
    }

    #[test]
    fn a_dead_socket_is_replaced_and_a_live_one_is_an_error() {
        let tmp = TempDir::new("listener", "stale");
        let dir = tmp.path().to_path_buf();
        let path = dir.join("d.sock");
        drop(UnixListener::bind(&path).unwrap()); // leaves a dead socket file
        let first = Listener::bind(&path).expect("the dead socket is replaced");
        match Listener::bind(&path) {
            Err(BindError::InUse(p)) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
        UnixStream::connect(&path).expect("the first one still listens");
        drop(first);
        assert!(entries(&dir).is_empty());
    }

    #[test]
    fn anything_but_a_socket_is_left_alone() {
        let tmp = TempDir::new("listener", "other");
        let dir = tmp.path().to_path_buf();
        let path = dir.join("d.sock");
        fs::write(&path, "precious").unwrap();
        assert!(matches!(
            Listener::bind(&path),
            Err(BindError::NotSocket(_))
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
        fs::remove_file(&path).unwrap();

        fs::create_dir(&path).unwrap();
        assert!(matches!(
            Listener::bind(&path),
            Err(BindError::NotSocket(_))
        ));
        fs::remove_dir(&path).unwrap();

        // A symlink, even to a dead socket, is not followed.
        let target = dir.join("target.sock");
        drop(UnixListener::bind(&target).unwrap());
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(matches!(
            Listener::bind(&path),
            Err(BindError::NotSocket(_))
        ));
        assert!(fs::symlink_metadata(&target).is_ok());
        assert_eq!(entries(&dir), ["d.sock", "target.sock"]);
    }

    #[test]
    fn removing_a_dead_socket_spares_a_file_that_took_its_place() {
        let tmp = TempDir::new("listener", "race");
        let dir = tmp.path().to_path_buf();
        let path = dir.join("d.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert_eq!(probe(&path).unwrap(), Found::Dead);
        // Between the probe and the removal, another drover replaced it.
        fs::remove_file(&path).unwrap();
        let other = UnixListener::bind(&path).unwrap();
        let staging = Staging::create(&dir).unwrap();
        remove_dead(&staging, &path).unwrap();
        drop(staging);
        assert_eq!(probe(&path).unwrap(), Found::Live);
        drop(other);
    }

    #[test]
    fn a_path_too_long_for_the_staging_name_still_binds() {
        let tmp = TempDir::new("listener", "long");
        let base = tmp.path().to_path_buf();
        // The target fits in sun_path (108 bytes); `.drover-PID-N/s` does not.
        let room = 100usize.saturating_sub(base.as_os_str().len());
        let dir = base.join("d".repeat(room.max(1)));
        let path = dir.join("s");
        assert!(path.as_os_str().len() < 108, "{}", path.display());
        let listener = Listener::bind(&path).unwrap();
        UnixStream::connect(&path).unwrap();
        drop(listener);
    }
}
