//! Watching the config for edits (DESIGN §5), with `notify`.
//!
//! The directory is watched, not the file: editors save by writing a
//! temporary file and renaming it over the original (vim also renames the
//! original away first), and Kubernetes swaps a `..data` symlink to a new
//! timestamped directory. Any event that touches a `*.toml` name of the
//! config (or the `..data` link) wakes the event loop through a socket; the
//! loop debounces bursts with a deadline of its own, so one save is applied
//! once. `notify` runs its own thread; nothing else happens there.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use notify::{EventKind, RecursiveMode, Watcher};

/// A running watcher; dropping it stops watching.
pub struct ConfigWatcher {
    _watcher: notify::RecommendedWatcher,
    dir: PathBuf,
}

impl std::fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatcher")
            .field("dir", &self.dir)
            .finish()
    }
}

/// Which names in the watched directory matter.
#[derive(Debug, Clone)]
enum Filter {
    /// PATH was a directory: its `*.toml` files (not hidden) and `..data`.
    Directory,
    /// PATH was one file: that name (and `..data`, for a ConfigMap mount).
    File(OsString),
}

impl Filter {
    fn matches(&self, path: &Path) -> bool {
        let Some(name) = path.file_name() else {
            return false;
        };
        let text = name.to_string_lossy();
        if text.starts_with("..data") {
            return true;
        }
        match self {
            Filter::Directory => !text.starts_with('.') && text.ends_with(".toml"),
            Filter::File(file) => name == file,
        }
    }
}

impl ConfigWatcher {
    /// Watches the config at `path` and writes a byte to `wake` whenever a
    /// relevant entry changes.
    pub fn start(path: &Path, wake: UnixStream) -> notify::Result<ConfigWatcher> {
        let (dir, filter) = if path.is_dir() {
            (path.to_path_buf(), Filter::Directory)
        } else {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let name = path.file_name().map(OsString::from).unwrap_or_default();
            (dir, Filter::File(name))
        };
        let mut wake = wake;
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match event {
                    Ok(event) => {
                        !matches!(event.kind, EventKind::Access(_))
                            && event.paths.iter().any(|p| filter.matches(p))
                    }
                    // A lost event (queue overflow) may hide a change: reload.
                    Err(_) => true,
                };
                if relevant {
                    let _ = wake.write(&[1]);
                }
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(ConfigWatcher {
            _watcher: watcher,
            dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_what_makes_the_config() {
        let dir = Filter::Directory;
        assert!(dir.matches(Path::new("/etc/drover/10-web.toml")));
        assert!(dir.matches(Path::new("/etc/drover/..data")));
        assert!(dir.matches(Path::new("/etc/drover/..data_tmp")));
        assert!(!dir.matches(Path::new("/etc/drover/.10-web.toml.swp")));
        assert!(!dir.matches(Path::new("/etc/drover/10-web.toml~")));
        assert!(!dir.matches(Path::new("/etc/drover/4913")));
        let file = Filter::File("drover.toml".into());
        assert!(file.matches(Path::new("/x/drover.toml")));
        assert!(!file.matches(Path::new("/x/other.toml")));
    }
}
