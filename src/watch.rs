//! Watching the config for edits (DESIGN §5), with `notify`.
//!
//! The directory is watched, not the file: editors save by writing a
//! temporary file and renaming it over the original (vim also renames the
//! original away first), and Kubernetes swaps a `..data` symlink to a new
//! timestamped directory. Any event that touches a `*.toml` name of the
//! config (or the `..data` link) is sent to the event loop, which a byte on
//! a socket wakes; the loop debounces bursts with a deadline of its own, so
//! one save is applied once. A file written in place is not read before its
//! writer closes it: an editor that truncates, pauses and then writes must
//! not make drover apply an empty config. `notify` runs its own thread;
//! nothing else happens there.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};

/// What happened to the config, as the event loop needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A file is being written in place: wait for [`Change::Closed`].
    Writing(PathBuf),
    /// A file written in place was closed.
    Closed(PathBuf),
    /// Anything else: renamed, removed, a link swapped, or events lost.
    Other,
}

/// How one notify event matters to the config.
fn classify(event: &notify::Event, filter: &Filter) -> Vec<Change> {
    event
        .paths
        .iter()
        .filter(|p| filter.matches(p))
        .filter_map(|p| match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                Some(Change::Closed(p.clone()))
            }
            EventKind::Access(_) => None,
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
            | EventKind::Create(CreateKind::File | CreateKind::Any) => {
                Some(Change::Writing(p.clone()))
            }
            _ => Some(Change::Other),
        })
        .collect()
}

/// A running watcher; dropping it stops watching.
pub struct ConfigWatcher {
    _watcher: notify::RecommendedWatcher,
    dir: PathBuf,
    changes: Receiver<Change>,
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
    /// Watches the config at `path`; whenever a relevant entry changes, sends
    /// what happened and writes a byte to `wake`.
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
        let (tx, changes): (Sender<Change>, _) = channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let found = match event {
                    Ok(event) => classify(&event, &filter),
                    // A lost event (queue overflow) may hide a change: reload.
                    Err(_) => vec![Change::Other],
                };
                if !found.is_empty() {
                    for change in found {
                        let _ = tx.send(change);
                    }
                    let _ = wake.write(&[1]);
                }
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(ConfigWatcher {
            _watcher: watcher,
            dir,
            changes,
        })
    }

    /// What happened since the last call.
    pub fn changes(&self) -> impl Iterator<Item = Change> + '_ {
        self.changes.try_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_in_place_write_is_finished_by_its_close() {
        use notify::event::DataChange;
        let filter = Filter::File("drover.toml".into());
        let event = |kind| notify::Event::new(kind).add_path(PathBuf::from("/x/drover.toml"));
        let write = event(EventKind::Modify(ModifyKind::Data(DataChange::Any)));
        let close = event(EventKind::Access(AccessKind::Close(AccessMode::Write)));
        let read = event(EventKind::Access(AccessKind::Close(AccessMode::Read)));
        let rename = event(EventKind::Modify(ModifyKind::Name(
            notify::event::RenameMode::To,
        )));
        let p = PathBuf::from("/x/drover.toml");
        assert_eq!(classify(&write, &filter), [Change::Writing(p.clone())]);
        assert_eq!(classify(&close, &filter), [Change::Closed(p)]);
        assert!(classify(&read, &filter).is_empty());
        assert_eq!(classify(&rename, &filter), [Change::Other]);
    }

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
