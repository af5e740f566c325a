//! Watching the config for edits, and deciding when a reload may read it.
//!
//! **What is watched.** The config directory (for a single file, the
//! directory holding it), not the files: editors save by renaming a
//! temporary file over the original (vim renames the original away first),
//! and Kubernetes swaps a `..data` symlink to a new timestamped directory.
//! The directory's parent is watched too, for the directory itself: one that
//! is deleted and created again, or renamed away and replaced, is a new
//! inode that the old watch does not see, so it is watched again; while it
//! is missing, its nearest existing ancestor is watched until it is back.
//! That bookkeeping runs on a thread of this module: `notify`'s own thread
//! hands it every event, and it adds and removes watches (a round trip to
//! `notify`'s thread that the event loop must not wait for) and passes what
//! matters to the loop as [`Change`]s, through a bounded channel and a byte
//! on a socket in the loop's epoll set.
//!
//! **When to read.** [`ReloadGate`] debounces bursts (one save is several
//! events) and keeps every reload — a file event, SIGHUP or `drover reload`
//! — from reading a config file that a process still has open for writing,
//! however long the writer takes: a writer that truncates, writes half and
//! pauses must never have its half applied. There are two ways to know, and
//! drover uses both:
//!
//! - **The kernel** ([`inspect`]): a read lease cannot be taken on a file
//!   that any process has open for writing. That is the truth at the moment
//!   of the read, whatever events were lost or came before drover watched,
//!   and it serves SIGHUP and `drover reload`, which have no events; the
//!   config loader holds such a lease while it reads, so no writer can start
//!   in between. The kernel answers only the file's owner or a holder of
//!   `CAP_LEASE` (root-owned config read by root is the usual case).
//! - **Events**, where the kernel will not answer: a write (`IN_MODIFY`) or
//!   creation of a config file marks it as being written until its
//!   `IN_CLOSE_WRITE`, with no time limit (a time limit is what once let a
//!   pausing writer's first half through). A rename or removal of the name
//!   ends the mark, as the inode being written is no longer under that name,
//!   and lost events end all marks.
//!
//! A save by temp file and rename has no writer on the final name, so it is
//! applied after the debounce alone.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::config::{Diagnostic, Location, is_config_name};
use crate::sys::file::{Lease, describe, open_nonblocking, read_lease};

/// How long a burst of config events may pause before it is applied once.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// A burst that never pauses is applied this long after it began.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);
/// Events waiting for the watch thread, and changes waiting for the loop;
/// beyond that they are dropped and stand for a [`Change::Lost`].
const BACKLOG: usize = 1024;
/// The most config files [`inspect`] looks at: the loader refuses a
/// directory with more, so there is nothing to wait for.
const MAX_INSPECTED: usize = crate::config::MAX_FILES;

/// What happened to the config, as the event loop needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A config file is being written in place: it was written to, or
    /// created as a regular file.
    Writing(PathBuf),
    /// A config file open for writing was closed.
    Closed(PathBuf),
    /// A config file was renamed, replaced or removed: what was being
    /// written under that name (if anything) is not there any more.
    Replaced(PathBuf),
    /// Anything else: a symlink made or swapped, a mode changed.
    Other,
    /// Events were lost, or the directory itself was replaced: forget what
    /// was being written, and read everything again.
    Lost,
}

/// How one event on an entry of the config directory matters.
fn classify(kind: &EventKind, path: &Path) -> Option<Change> {
    let path = path.to_path_buf();
    Some(match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Change::Closed(path),
        // drover's own reads open and close the files.
        EventKind::Access(_) => return None,
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => Change::Writing(path),
        // Only `open(O_CREAT)` is followed by a close; a symlink or a FIFO
        // made under the name never would be.
        EventKind::Create(CreateKind::File | CreateKind::Any)
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) =>
        {
            Change::Writing(path)
        }
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => Change::Replaced(path),
        _ => Change::Other,
    })
}

/// Whether an event on the config directory itself (or on a directory
/// above it) may mean that the directory is another one now.
fn moves_the_directory(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
    )
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
            Filter::Directory => is_config_name(&text),
            Filter::File(file) => name == file,
        }
    }
}

/// What `notify`'s callback hands the watch thread.
enum Message {
    Event(notify::Result<notify::Event>),
    /// The env files of the config now running (absolute paths).
    EnvFiles(Vec<PathBuf>),
    Stop,
}

/// A running watcher; dropping it stops watching.
#[derive(Debug)]
pub struct ConfigWatcher {
    changes: Receiver<Change>,
    /// Set when a change did not fit in the channel.
    lost: Arc<AtomicBool>,
    thread: SyncSender<Message>,
}

impl ConfigWatcher {
    /// Watches the config at `path`; whenever a relevant entry changes, sends
    /// what happened and writes a byte to `wake`. Fails if the config
    /// directory cannot be watched now.
    pub fn start(path: &Path, wake: UnixStream) -> notify::Result<ConfigWatcher> {
        let path = std::path::absolute(path).map_err(notify::Error::io)?;
        let (dir, filter) = if path.is_dir() {
            (path, Filter::Directory)
        } else {
            let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            let name = path.file_name().map(OsString::from).unwrap_or_default();
            (dir, Filter::File(name))
        };
        let (events_tx, events) = sync_channel(BACKLOG);
        let overflow = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (tx, overflow) = (events_tx.clone(), overflow.clone());
            notify::recommended_watcher(move |event| {
                // Never blocks notify's thread: the watch thread may be
                // waiting for it (to add a watch).
                if let Err(TrySendError::Full(_)) = tx.try_send(Message::Event(event)) {
                    overflow.store(true, Ordering::Relaxed);
                }
            })?
        };
        let (changes_tx, changes) = sync_channel(BACKLOG);
        let lost = Arc::new(AtomicBool::new(false));
        let mut thread = WatchThread {
            watcher,
            dir,
            filter,
            anchor: None,
            dir_watched: true,
            env_files: HashSet::new(),
            env_dirs: HashSet::new(),
            changes: changes_tx,
            lost: lost.clone(),
            wake,
        };
        thread.establish()?;
        std::thread::Builder::new()
            .name("drover-watch".into())
            .spawn(move || thread.run(events, &overflow))
            .map_err(notify::Error::io)?;
        Ok(ConfigWatcher {
            changes,
            lost,
            thread: events_tx,
        })
    }

    /// Also watches `files` (the env files of the config just loaded, as
    /// absolute paths), instead of those given before: a change of one is a
    /// change of the config. Their directories are watched as well when
    /// they are not the config directory.
    pub fn watch_env_files(&self, files: Vec<PathBuf>) {
        if let Err(TrySendError::Full(_)) = self.thread.try_send(Message::EnvFiles(files)) {
            tracing::warn!(
                "too many file events: the env files of this config are not watched; \
                 reload with SIGHUP or `drover reload` after editing them"
            );
        }
    }

    /// What happened since the last call.
    pub fn changes(&self) -> impl Iterator<Item = Change> + '_ {
        let lost = self.lost.swap(false, Ordering::Relaxed);
        self.changes.try_iter().chain(lost.then_some(Change::Lost))
    }
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        // If the channel is full, the thread ends at its next change, which
        // finds the receiver gone.
        let _ = self.thread.try_send(Message::Stop);
    }
}

/// The state of the watch thread.
struct WatchThread {
    watcher: RecommendedWatcher,
    /// The config directory, absolute.
    dir: PathBuf,
    filter: Filter,
    /// The nearest existing directory above `dir` that is watched: its
    /// events say when `dir` (or a directory on the way to it) is created,
    /// removed or renamed.
    anchor: Option<PathBuf>,
    /// Whether `dir` itself is watched (false while it is missing).
    dir_watched: bool,
    /// The env files of the running config: their events matter too.
    env_files: HashSet<PathBuf>,
    /// The directories of env files watched besides `dir` and the anchor.
    env_dirs: HashSet<PathBuf>,
    changes: SyncSender<Change>,
    lost: Arc<AtomicBool>,
    wake: UnixStream,
}

impl WatchThread {
    fn run(mut self, events: Receiver<Message>, overflow: &AtomicBool) {
        loop {
            let event = match events.recv() {
                Ok(Message::Event(event)) => event,
                Ok(Message::EnvFiles(files)) => {
                    self.set_env_files(files);
                    continue;
                }
                Ok(Message::Stop) | Err(_) => break,
            };
            if overflow.swap(false, Ordering::Relaxed) {
                self.rewatch();
            }
            if !self.on_event(event) {
                break; // the event loop is gone
            }
        }
    }

    /// Watches the directories of `files` that are not watched already,
    /// and stops watching those of env files no longer named.
    fn set_env_files(&mut self, files: Vec<PathBuf>) {
        let dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent())
            .filter(|d| *d != self.dir && Some(*d) != self.anchor.as_deref())
            .map(Path::to_path_buf)
            .collect();
        for old in self.env_dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(old);
        }
        for new in dirs.difference(&self.env_dirs) {
            if let Err(e) = self.watcher.watch(new, RecursiveMode::NonRecursive) {
                tracing::warn!(
                    "cannot watch {} for changes of env files: {e}; \
                     reload with SIGHUP or `drover reload` after editing them",
                    new.display()
                );
            }
        }
        self.env_dirs = dirs;
        self.env_files = files.into_iter().collect();
    }

    /// Passes what matters on; false once nobody listens.
    fn on_event(&mut self, event: notify::Result<notify::Event>) -> bool {
        let event = match event {
            Ok(event) if !event.need_rescan() => event,
            // A queue overflow, or an error of the watch itself.
            _ => return self.rewatch(),
        };
        if event
            .paths
            .iter()
            .any(|p| self.on_the_way(p) && moves_the_directory(&event.kind))
        {
            return self.rewatch();
        }
        let found: Vec<Change> = event
            .paths
            .iter()
            .filter(|p| {
                (p.parent() == Some(self.dir.as_path()) && self.filter.matches(p))
                    || self.env_files.contains(*p)
            })
            .filter_map(|p| classify(&event.kind, p))
            .collect();
        if found.is_empty() {
            return true;
        }
        found.into_iter().all(|change| self.send(change))
    }

    /// Whether `path` is the config directory or a directory between it
    /// and the anchor.
    fn on_the_way(&self, path: &Path) -> bool {
        let top = self.anchor.as_deref().unwrap_or(&self.dir);
        self.dir.starts_with(path) && path.starts_with(top)
    }

    /// Watches everything again and has the config read again.
    fn rewatch(&mut self) -> bool {
        let was_watched = self.dir_watched;
        match self.establish() {
            Ok(()) if !was_watched => {
                tracing::info!(
                    "config directory {} is back; watching it",
                    self.dir.display()
                );
            }
            Ok(()) => {}
            Err(e) if was_watched => match &self.anchor {
                Some(anchor) => tracing::warn!(
                    "cannot watch {}: {e}; watching {} until it is back",
                    self.dir.display(),
                    anchor.display()
                ),
                None => tracing::warn!(
                    "cannot watch {} for changes: {e}; reload with SIGHUP or `drover reload`",
                    self.dir.display()
                ),
            },
            Err(_) => {}
        }
        self.send(Change::Lost)
    }

    /// (Re)watches the nearest existing directory above the config
    /// directory, then the config directory itself, which may be a new
    /// inode. The anchor is watched first, so that a directory created
    /// right after a failed watch is seen by its event.
    fn establish(&mut self) -> notify::Result<()> {
        let Self { watcher, dir, .. } = self;
        let anchor = dir
            .ancestors()
            .skip(1)
            .find(|a| watcher.watch(a, RecursiveMode::NonRecursive).is_ok())
            .map(Path::to_path_buf);
        if let Some(old) = self.anchor.take()
            && Some(&old) != anchor.as_ref()
        {
            let _ = self.watcher.unwatch(&old);
        }
        self.anchor = anchor;
        let _ = self.watcher.unwatch(&self.dir);
        let watched = self.watcher.watch(&self.dir, RecursiveMode::NonRecursive);
        self.dir_watched = watched.is_ok();
        watched
    }

    /// Hands a change to the loop and wakes it; false once nobody listens.
    fn send(&mut self, change: Change) -> bool {
        match self.changes.try_send(change) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.lost.store(true, Ordering::Relaxed),
            Err(TrySendError::Disconnected(_)) => return false,
        }
        // Non-blocking: when the socket is full, the loop has a wake-up
        // pending anyway.
        let _ = self.wake.write(&[1]);
        true
    }
}

/// When the config is read again: after a burst of events has settled, and
/// never while a config file is open for writing (see the module
/// documentation).
#[derive(Debug, Default)]
pub struct ReloadGate {
    /// When the current burst will be applied.
    due: Option<Instant>,
    burst_began: Option<Instant>,
    /// Names of config files seen being written whose close was not seen.
    writing: HashSet<OsString>,
    /// The files each trigger was last logged to wait for, until a reload
    /// finds none busy.
    logged: HashMap<String, Vec<PathBuf>>,
    /// The env files of the running config: the reload waits for them as
    /// for config files.
    env_files: Vec<PathBuf>,
}

impl ReloadGate {
    /// The env files of the config now running (see [`survey`]).
    pub fn set_env_files(&mut self, files: Vec<PathBuf>) {
        self.env_files = files;
    }

    /// Takes one change into account; the reload is due after the debounce.
    pub fn on_change(&mut self, change: Change, now: Instant) {
        let name = |path: &Path| path.file_name().map(OsString::from).unwrap_or_default();
        match change {
            Change::Writing(path) => {
                self.writing.insert(name(&path));
            }
            Change::Closed(path) | Change::Replaced(path) => {
                self.writing.remove(&name(&path));
            }
            Change::Lost => self.writing.clear(),
            Change::Other => {}
        }
        let began = *self.burst_began.get_or_insert(now);
        self.due = Some((now + DEBOUNCE).min(began + MAX_DEBOUNCE));
    }

    /// When the loop must wake up for [`Self::take_due`].
    pub fn deadline(&self) -> Option<Instant> {
        self.due
    }

    /// True once a burst of changes should be applied (then it is over).
    pub fn take_due(&mut self, now: Instant) -> bool {
        if self.due.is_none_or(|due| due > now) {
            return false;
        }
        self.due = None;
        self.burst_began = None;
        true
    }

    /// The names of config files seen being written whose close was not
    /// seen (for [`survey`]).
    pub fn writing(&self) -> &HashSet<OsString> {
        &self.writing
    }

    /// The env files of the running config (for [`survey`]).
    pub fn env_files(&self) -> &[PathBuf] {
        &self.env_files
    }

    /// Judges what [`survey`] found before a read of the config. While a
    /// config file is open for writing, the reload waits: the answer is an
    /// error for the one who asked, and a log line, once per trigger and
    /// set of files, so that the writer's every write does not add one (its
    /// close is an event that makes the reload due again).
    /// Otherwise the warnings for the entries the read passed over.
    pub fn judge(&mut self, found: Inspection, trigger: &str) -> Result<Vec<Diagnostic>, String> {
        if found.busy.is_empty() {
            self.logged.clear();
            return Ok(found.skipped);
        }
        let files: Vec<String> = found.busy.iter().map(|f| f.display().to_string()).collect();
        let (files, is, it) = match found.busy.len() {
            1 => (files.join(", "), "is", "it"),
            _ => (files.join(", "), "are", "them"),
        };
        if self.logged.get(trigger) != Some(&found.busy) {
            tracing::info!(
                "{trigger}: waiting for {files} to be closed before reloading \
                 (a process has {it} open for writing)"
            );
            self.logged.insert(trigger.to_owned(), found.busy);
        }
        Err(format!(
            "reload deferred: {files} {is} still open for writing; drover reloads once {it} {is} closed"
        ))
    }
}

/// What a read of the config at `path` will meet: [`inspect`], and the
/// `env_files` of the running config that are open for writing (those in
/// `writing` where the kernel will not say).
pub fn survey(path: &Path, writing: &HashSet<OsString>, env_files: &[PathBuf]) -> Inspection {
    let mut found = inspect(path, writing);
    for file in env_files {
        let name = file.file_name().map(OsString::from).unwrap_or_default();
        match probe(file) {
            Probe::Busy => found.busy.push(file.clone()),
            Probe::Unknown if writing.contains(&name) => found.busy.push(file.clone()),
            _ => {}
        }
    }
    found
}

/// What a read of the config at `path` will meet, found without reading.
#[derive(Debug, Default)]
pub struct Inspection {
    /// Config files that a process has open for writing.
    pub busy: Vec<PathBuf>,
    /// Warnings for the entries of a config directory that are named like
    /// config files but are not regular files: they are not read.
    pub skipped: Vec<Diagnostic>,
}

/// Looks at the files that make the config at `path`: asks the kernel
/// whether each one is open for writing, and where it will not say, takes
/// `writing` (names seen being written) for the answer. Never opens
/// anything in a way that blocks. Problems that the loader reports
/// (missing or unreadable files) are left to it.
pub fn inspect(path: &Path, writing: &HashSet<OsString>) -> Inspection {
    let mut found = Inspection::default();
    let (files, in_directory) = match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => (config_entries(path), true),
        Ok(_) => (vec![path.to_path_buf()], false),
        Err(_) => return found,
    };
    for file in files {
        let name = file.file_name().map(OsString::from).unwrap_or_default();
        match probe(&file) {
            Probe::Busy => found.busy.push(file),
            Probe::Unknown if writing.contains(&name) => found.busy.push(file),
            Probe::NotRegular(kind) if in_directory => found.skipped.push(
                Diagnostic::warning(format!("skipped: it is {kind}, not a regular file"))
                    .at(Location { file, span: None })
                    .with_help("only regular files (or symlinks to them) are read"),
            ),
            _ => {}
        }
    }
    found
}

/// The entries of `dir` named like config files; none if there are more
/// than [`MAX_INSPECTED`].
fn config_entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| is_config_name(&name.to_string_lossy()))
        })
        .take(MAX_INSPECTED + 1)
        .collect();
    if found.len() > MAX_INSPECTED {
        return Vec::new();
    }
    found.sort();
    found
}

/// What one config file is, as far as reading it goes.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// A regular file that nobody has open for writing.
    Free,
    /// A regular file that a process has open for writing.
    Busy,
    /// A regular file; the kernel will not say whether it is being written.
    Unknown,
    /// Not a regular file nor a directory: a FIFO, a device, …
    NotRegular(&'static str),
    /// A directory, passed over without a word (as the loader does), or
    /// missing or unreadable (the loader says so).
    Other,
}

fn probe(file: &Path) -> Probe {
    // `stat` first: looking at a FIFO or a device opens nothing. Then the
    // opened fd again: the name may have been swapped in between.
    let regular = |meta: fs::Metadata| match meta {
        meta if meta.is_file() => None,
        meta if meta.is_dir() => Some(Probe::Other),
        meta => Some(Probe::NotRegular(describe(meta.file_type()))),
    };
    match fs::metadata(file).map(regular) {
        Ok(None) => {}
        Ok(Some(not_regular)) => return not_regular,
        Err(_) => return Probe::Other,
    }
    let Ok(opened) = open_nonblocking(file) else {
        return Probe::Other;
    };
    match opened.metadata().map(regular) {
        Ok(None) => {}
        Ok(Some(not_regular)) => return not_regular,
        Err(_) => return Probe::Other,
    }
    match read_lease(&opened) {
        Lease::Held(_) => Probe::Free,
        Lease::Busy => Probe::Busy,
        Lease::Unavailable(why) => {
            // Inotify's close events decide instead (a file system
            // without leases, or a file drover does not own).
            tracing::debug!(file = %file.display(), "no read lease: {why}");
            Probe::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_in_place_write_is_finished_by_its_close() {
        use notify::event::{DataChange, RenameMode};
        let p = Path::new("/nonexistent/drover.toml");
        let change = |kind| classify(&kind, p);
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert_eq!(change(write), Some(Change::Writing(p.into())));
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert_eq!(change(close), Some(Change::Closed(p.into())));
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert_eq!(change(read), None);
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert_eq!(change(rename), Some(Change::Replaced(p.into())));
        let removed = EventKind::Remove(notify::event::RemoveKind::File);
        assert_eq!(change(removed), Some(Change::Replaced(p.into())));
    }

    #[test]
    fn only_a_created_regular_file_is_being_written() {
        let dir = TempDir::new("watch", "created");
        let file = dir.0.join("a.toml");
        fs::write(&file, "").unwrap();
        let link = dir.0.join("link.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let fifo = dir.0.join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let created = EventKind::Create(CreateKind::File);
        assert_eq!(classify(&created, &file), Some(Change::Writing(file)));
        assert_eq!(classify(&created, &link), Some(Change::Other));
        assert_eq!(classify(&created, &fifo), Some(Change::Other));
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

    #[test]
    fn only_structural_events_on_the_way_to_the_directory_move_it() {
        use notify::event::{RemoveKind, RenameMode};
        assert!(moves_the_directory(&EventKind::Create(CreateKind::Folder)));
        assert!(moves_the_directory(&EventKind::Remove(RemoveKind::Folder)));
        assert!(moves_the_directory(&EventKind::Modify(ModifyKind::Name(
            RenameMode::From
        ))));
        // Listing the directory (every reload does) must not look like a move.
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!moves_the_directory(&open));
        let attrib = EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any));
        assert!(!moves_the_directory(&attrib));
    }

    #[test]
    fn a_burst_is_applied_once_after_it_settles_and_at_the_latest_after_a_second() {
        let mut gate = ReloadGate::default();
        let t0 = Instant::now();
        assert_eq!(gate.deadline(), None);
        gate.on_change(Change::Other, t0);
        gate.on_change(Change::Other, t0 + Duration::from_millis(5));
        assert_eq!(gate.deadline(), Some(t0 + Duration::from_millis(15)));
        assert!(!gate.take_due(t0 + Duration::from_millis(14)));
        assert!(gate.take_due(t0 + Duration::from_millis(15)));
        assert!(!gate.take_due(t0 + Duration::from_secs(5)), "once");

        // Events every 5 ms, for ever: applied after a second anyway.
        let t1 = t0 + Duration::from_secs(10);
        let mut t = t1;
        while t < t1 + MAX_DEBOUNCE + Duration::from_millis(100) {
            gate.on_change(Change::Other, t);
            t += Duration::from_millis(5);
        }
        assert_eq!(gate.deadline(), Some(t1 + MAX_DEBOUNCE));
    }

    /// Without a lease, the events say what is being written; without a
    /// time limit, and until the close, a rename or removal, or lost events.
    #[test]
    fn marks_of_files_being_written_end_with_their_close_and_nothing_else() {
        let mut gate = ReloadGate::default();
        let now = Instant::now();
        let a = PathBuf::from("/x/a.toml");
        let b = PathBuf::from("/x/b.toml");
        let names = |gate: &ReloadGate| {
            let mut names: Vec<_> = gate.writing.iter().cloned().collect();
            names.sort();
            names
        };
        gate.on_change(Change::Writing(a.clone()), now);
        gate.on_change(Change::Writing(b.clone()), now);
        gate.take_due(now + Duration::from_secs(3600));
        assert_eq!(names(&gate), ["a.toml", "b.toml"], "no time limit");
        gate.on_change(Change::Other, now);
        gate.on_change(Change::Closed(a.clone()), now);
        assert_eq!(names(&gate), ["b.toml"]);
        gate.on_change(Change::Replaced(b.clone()), now);
        assert!(names(&gate).is_empty());
        gate.on_change(Change::Writing(a), now);
        gate.on_change(Change::Lost, now);
        assert!(names(&gate).is_empty());
    }

    use crate::testing::TempDir;

    /// A reload's look before it reads: what the loader thread surveys,
    /// judged by the gate.
    fn preflight(gate: &mut ReloadGate, path: &Path) -> Result<Vec<Diagnostic>, String> {
        let found = survey(path, gate.writing(), gate.env_files());
        gate.judge(found, "SIGHUP")
    }

    fn lease_available(file: &Path) -> bool {
        let opened = fs::File::open(file).unwrap();
        !matches!(read_lease(&opened), Lease::Unavailable(_))
    }

    #[test]
    fn a_file_open_for_writing_holds_the_reload_until_it_is_closed() {
        let dir = TempDir::new("watch", "busy");
        let file = dir.0.join("a.toml");
        fs::write(&file, "").unwrap();
        fs::write(dir.0.join("b.toml"), "").unwrap();
        let none = HashSet::new();
        if !lease_available(&file) {
            // The kernel will not say: the events decide.
            let marked = HashSet::from([OsString::from("a.toml")]);
            assert_eq!(inspect(&dir.0, &marked).busy, std::slice::from_ref(&file));
            assert!(inspect(&dir.0, &none).busy.is_empty());
            return;
        }
        let writer = fs::OpenOptions::new().append(true).open(&file).unwrap();
        assert_eq!(inspect(&dir.0, &none).busy, std::slice::from_ref(&file));
        assert_eq!(inspect(&file, &none).busy, std::slice::from_ref(&file));

        let mut gate = ReloadGate::default();
        let err = preflight(&mut gate, &dir.0).unwrap_err();
        assert_eq!(
            err,
            format!(
                "reload deferred: {} is still open for writing; drover reloads once it is closed",
                file.display()
            )
        );
        assert_eq!(gate.logged["SIGHUP"], std::slice::from_ref(&file));
        drop(writer);
        assert!(preflight(&mut gate, &dir.0).unwrap().is_empty());
        assert!(gate.logged.is_empty());
    }

    #[test]
    fn an_env_file_open_for_writing_holds_the_reload_too() {
        let dir = TempDir::new("watch", "busy-env");
        fs::write(dir.0.join("a.toml"), "").unwrap();
        let env = dir.0.join("sub").join("app.env");
        fs::create_dir_all(env.parent().unwrap()).unwrap();
        fs::write(&env, "").unwrap();
        let mut gate = ReloadGate::default();
        gate.set_env_files(vec![env.clone()]);
        if !lease_available(&env) {
            // The kernel will not say: the events decide.
            gate.on_change(Change::Writing(env.clone()), Instant::now());
            assert!(preflight(&mut gate, &dir.0).is_err());
            gate.on_change(Change::Closed(env.clone()), Instant::now());
            assert!(preflight(&mut gate, &dir.0).is_ok());
            return;
        }
        let writer = fs::OpenOptions::new().append(true).open(&env).unwrap();
        let err = preflight(&mut gate, &dir.0).unwrap_err();
        assert!(err.contains(&env.display().to_string()), "{err}");
        drop(writer);
        assert!(preflight(&mut gate, &dir.0).unwrap().is_empty());
    }

    #[test]
    fn fifos_and_devices_in_a_config_directory_are_named_in_warnings() {
        let dir = TempDir::new("watch", "special");
        fs::write(dir.0.join("a.toml"), "").unwrap();
        let fifo = dir.0.join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let zero = dir.0.join("zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        fs::create_dir(dir.0.join("sub.toml")).unwrap();
        let mut skipped: Vec<String> = inspect(&dir.0, &HashSet::new())
            .skipped
            .iter()
            .map(ToString::to_string)
            .collect();
        skipped.sort();
        assert_eq!(
            skipped,
            [
                format!(
                    "{}: warning: skipped: it is a FIFO, not a regular file",
                    fifo.display()
                ),
                format!(
                    "{}: warning: skipped: it is a character device, not a regular file",
                    zero.display()
                ),
            ]
        );
    }

    /// The changes of the next wake-up (blocking, with a deadline).
    fn next_changes(watcher: &ConfigWatcher, wake: &mut UnixStream) -> Vec<Change> {
        use std::io::Read;
        wake.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        loop {
            let mut bytes = [0u8; 64];
            let n = wake.read(&mut bytes).expect("a change within 30 s");
            assert!(n > 0);
            let changes: Vec<Change> = watcher.changes().collect();
            if !changes.is_empty() {
                return changes;
            }
        }
    }

    /// Writes `file` until the watcher reports its close: the watch of its
    /// directory may still be on its way (each write that goes unseen waits
    /// for the next change, such as the one that says the directory is
    /// watched again).
    fn write_until_seen(watcher: &ConfigWatcher, wake: &mut UnixStream, file: &Path) {
        for _ in 0..10 {
            fs::write(file, "").unwrap();
            let closed = Change::Closed(file.to_path_buf());
            if next_changes(watcher, wake).contains(&closed) {
                return;
            }
        }
        panic!("the write of {} was never seen", file.display());
    }

    fn watch(dir: &Path) -> (ConfigWatcher, UnixStream) {
        let (wake_tx, wake) = UnixStream::pair().unwrap();
        wake_tx.set_nonblocking(true).unwrap();
        (ConfigWatcher::start(dir, wake_tx).unwrap(), wake)
    }

    /// Regression: a config directory deleted and created again was not
    /// watched any more.
    #[test]
    fn a_directory_deleted_and_created_again_is_watched_again() {
        let root = TempDir::new("watch", "recreate");
        let conf = root.0.join("conf.d");
        fs::create_dir(&conf).unwrap();
        let (watcher, mut wake) = watch(&conf);
        write_until_seen(&watcher, &mut wake, &conf.join("first.toml"));
        for round in 0..2 {
            fs::remove_dir_all(&conf).unwrap();
            fs::create_dir(&conf).unwrap();
            write_until_seen(&watcher, &mut wake, &conf.join(format!("{round}.toml")));
        }
    }

    /// `mv -T new conf.d` over an empty directory: one rename, a new inode.
    #[test]
    fn a_directory_replaced_by_a_rename_is_watched_again() {
        let root = TempDir::new("watch", "swap");
        let conf = root.0.join("conf.d");
        fs::create_dir(&conf).unwrap();
        let (watcher, mut wake) = watch(&conf);
        let new = root.0.join("conf.new");
        fs::create_dir(&new).unwrap();
        fs::rename(&new, &conf).unwrap();
        write_until_seen(&watcher, &mut wake, &conf.join("a.toml"));
    }
}
