//! The listening sockets of groups' `sockets`: bound by drover once, kept
//! across child restarts and reloads, passed to every child of the group.
//!
//! Sockets are kept by address, not by group: a reload that keeps an
//! address keeps the very same socket, so the old and the new children of
//! a rolling restart accept on one listen queue and no connection is
//! refused in between. A reload binds what is new before it changes
//! anything; if one address cannot be bound, what it bound is closed again
//! and the reload is refused. drover only holds these sockets (close-on-
//! exec, blocking, never accepted on); children get copies at fds 3, 4, ….
//!
//! A unix socket's file: a stale socket file at the path is replaced; any
//! other file there is an error. The file is removed when the socket is no
//! longer configured or drover exits — if it is still the one drover bound.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
};

use crate::config::{Config, GroupSpec, ListenAddr};

/// One bound socket.
#[derive(Debug)]
struct Bound {
    fd: OwnedFd,
    /// A unix socket's file, as bound: (device, inode).
    file: Option<(u64, u64)>,
}

/// Every address drover listens on, with its socket.
#[derive(Debug, Default)]
pub struct Listeners {
    bound: BTreeMap<ListenAddr, Bound>,
}

impl Listeners {
    /// Makes the bound sockets those `config` names: binds the new ones,
    /// applies changed modes, closes those no longer named. If any address
    /// cannot be bound, nothing changes and the error says which and why.
    pub fn apply(&mut self, config: &Config) -> Result<(), String> {
        let mut wanted: BTreeMap<&ListenAddr, (Option<u32>, &GroupSpec, &str)> = BTreeMap::new();
        for group in config.groups.values() {
            for s in &group.sockets {
                wanted.insert(&s.listen, (s.mode, group, s.name.as_str()));
            }
        }
        let mut fresh = Vec::new();
        let mut errors = Vec::new();
        for (&addr, &(mode, group, name)) in &wanted {
            if self.bound.contains_key(addr) {
                continue;
            }
            match bind_one(addr, mode) {
                Ok(bound) => fresh.push((addr.clone(), bound)),
                Err(e) => errors.push(format!(
                    "cannot listen on {addr} (socket `{name}` of group `{}`): {e}",
                    group.name
                )),
            }
        }
        if !errors.is_empty() {
            for (addr, bound) in fresh {
                close(&addr, bound);
            }
            return Err(errors.join("; "));
        }
        for (&addr, &(mode, ..)) in &wanted {
            if let (ListenAddr::Unix(path), Some(mode)) = (addr, mode)
                && self.bound.contains_key(addr)
                && let Err(e) = chmod(path, mode)
            {
                tracing::warn!("cannot set the mode of {}: {e}", path.display());
            }
        }
        let gone: Vec<ListenAddr> = self
            .bound
            .keys()
            .filter(|a| !wanted.contains_key(a))
            .cloned()
            .collect();
        for addr in gone {
            if let Some(bound) = self.bound.remove(&addr) {
                tracing::info!("no longer listening on {addr}");
                close(&addr, bound);
            }
        }
        for (addr, bound) in fresh {
            tracing::info!("listening on {addr}");
            self.bound.insert(addr, bound);
        }
        Ok(())
    }

    /// The fds of `group`'s sockets, in its order; `None` if one is not
    /// bound (a definition that was never applied).
    pub fn fds(&self, group: &GroupSpec) -> Option<Vec<RawFd>> {
        group
            .sockets
            .iter()
            .map(|s| self.bound.get(&s.listen).map(|b| b.fd.as_raw_fd()))
            .collect()
    }

    /// Closes every socket and removes the unix sockets' files.
    pub fn close_all(&mut self) {
        for (addr, bound) in std::mem::take(&mut self.bound) {
            close(&addr, bound);
        }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.close_all();
    }
}

/// Closes `bound`; a unix socket's file goes too, if it is still ours.
fn close(addr: &ListenAddr, bound: Bound) {
    if let (ListenAddr::Unix(path), Some((dev, ino))) = (addr, bound.file)
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
        && let Err(e) = std::fs::remove_file(path)
    {
        tracing::warn!("cannot remove {}: {e}", path.display());
    }
    drop(bound);
}

/// Binds and listens on `addr`: close-on-exec, `SO_REUSEADDR`, the
/// kernel's largest backlog (`SOMAXCONN`: connections wait there while
/// children restart).
fn bind_one(addr: &ListenAddr, mode: Option<u32>) -> std::io::Result<Bound> {
    match addr {
        ListenAddr::Tcp(sa) => {
            // std binds with SOCK_CLOEXEC and SO_REUSEADDR; a second
            // `listen` raises its backlog (Linux updates it in place).
            let fd = OwnedFd::from(std::net::TcpListener::bind(sa)?);
            listen(&fd, Backlog::MAXCONN)?;
            Ok(Bound { fd, file: None })
        }
        ListenAddr::Unix(path) => bind_unix(path, mode),
    }
}

fn bind_unix(path: &Path, mode: Option<u32>) -> std::io::Result<Bound> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if someone_listens(path)? {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use: a process listens on it", path.display()),
                ));
            }
            std::fs::remove_file(path)?
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    let meta = std::fs::symlink_metadata(path)?;
    let bound = Bound {
        fd,
        file: Some((meta.dev(), meta.ino())),
    };
    let ready = mode
        .map_or(Ok(()), |m| chmod(path, m))
        .and_then(|()| listen(&bound.fd, Backlog::MAXCONN).map_err(Into::into));
    match ready {
        Ok(()) => Ok(bound),
        Err(e) => {
            close(&ListenAddr::Unix(PathBuf::from(path)), bound);
            Err(e)
        }
    }
}

/// Whether a process accepts on the unix socket at `path`: a non-blocking
/// connect (never a wait) that is refused means the file is stale.
fn someone_listens(path: &Path) -> std::io::Result<bool> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    match nix::sys::socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?) {
        // Connected, or a full backlog: someone listens.
        Ok(()) | Err(nix::errno::Errno::EAGAIN) => Ok(true),
        Err(nix::errno::Errno::ECONNREFUSED | nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn chmod(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("drover-listeners-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_stale_socket_file_is_replaced_and_removed_again() {
        let dir = tempdir("stale");
        let path = dir.join("a.sock");
        drop(UnixListener::bind(&path).unwrap()); // leaves its file behind
        let bound = bind_unix(&path, Some(0o600)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(bound.file, Some((meta.dev(), meta.ino())));
        close(&ListenAddr::Unix(path.clone()), bound);
        assert!(!path.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_live_socket_or_another_file_is_not_replaced() {
        let dir = tempdir("live");
        let path = dir.join("a.sock");
        let live = UnixListener::bind(&path).unwrap();
        let e = bind_unix(&path, None).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        drop(live);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "data").unwrap();
        let e = bind_unix(&path, None).unwrap_err();
        assert!(e.to_string().contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_replaced_since_the_bind_is_left_alone() {
        let dir = tempdir("replaced");
        let path = dir.join("a.sock");
        let bound = bind_unix(&path, None).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        close(&ListenAddr::Unix(path.clone()), bound);
        assert!(path.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
