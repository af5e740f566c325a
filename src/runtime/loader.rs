//! Reading the config off the event loop.
//!
//! Reading a config is more than reading files: `user` and `group` names
//! go through the system's user database (NSS, which may ask an LDAP or
//! sssd server), programs are looked up on PATH, working directories and
//! env files are looked at. Any of these can hang — a directory server
//! down, an NFS mount gone — and on the event loop a hung lookup would stop
//! supervision for as long: no restarts, no answers, no shutdown. So a
//! thread of its own, `drover-config`, does the reading. The loop hands it
//! a [`Job`] and goes on; the thread sends back a [`Done`] and writes a
//! byte to a socket in the loop's epoll set. The loop applies what was
//! read (binding sockets, starting children: its own work) when it arrives.
//!
//! One job is read at a time, in the order they were given. The thread is
//! started at the first job: a drover that is never reloaded has no such
//! thread. drover has two: `drover-config` for reloads and
//! `drover-dry-run` for `reload --dry-run` (whose PATH may be anywhere: a
//! dry run that hangs must not hold up a reload). When drover exits while a read hangs, the thread is left to the
//! process's exit.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

use drover_store::{Recovered, Store, StoreError};

use crate::config::{Config, Diagnostic, Failed, Loaded};
use crate::runtime::watch::{Inspection, survey};

/// The loader thread's stack: as large as the main thread's, on which
/// configs were read before (the parser's recursion is bounded well below).
const STACK: usize = 8 << 20;

/// What the loop asks the thread to read.
#[derive(Debug)]
pub enum Job {
    /// A reload: the config at `path`, unless one of its files (or of
    /// `env_files`, the running config's) is open for writing; `writing`
    /// names the files the watcher saw being written. With `store_dir`
    /// (no queue store is open yet), a config with a durable queue has its
    /// store opened there too: that waits for the disk.
    Reload {
        path: PathBuf,
        writing: HashSet<OsString>,
        env_files: Vec<PathBuf>,
        store_dir: Option<PathBuf>,
    },
    /// `drover reload --dry-run`: the config at `path`, for the client of
    /// connection `conn`.
    DryRun { conn: u64, path: PathBuf },
}

/// What the thread read.
#[derive(Debug)]
pub enum Done {
    Reload(Reading),
    DryRun {
        conn: u64,
        result: Result<Config, Failed>,
    },
}

/// The outcome of a [`Job::Reload`].
#[derive(Debug)]
pub enum Reading {
    /// Files that a process has open for writing: the config was not read
    /// (or what was read is not used).
    Busy(Inspection),
    /// The config is invalid.
    Invalid(Failed),
    /// A valid config; `skipped` are the warnings for entries of its
    /// directory that were passed over; `store`, the queue store opened
    /// for its durable queues (see [`Job::Reload`]).
    Valid {
        loaded: Box<Loaded>,
        skipped: Vec<Diagnostic>,
        store: Option<Result<Box<(Store, Recovered)>, StoreError>>,
    },
}

/// The loop's end of the loader thread; see the module documentation.
#[derive(Debug)]
pub struct Loader {
    /// The thread's name.
    name: &'static str,
    /// The loop token of the wake-up socket.
    token: u64,
    /// Set once the thread runs.
    thread: Option<Thread>,
}

#[derive(Debug)]
struct Thread {
    jobs: Sender<Job>,
    done: Receiver<Done>,
    wake: UnixStream,
}

impl Loader {
    /// A loader whose thread is `name` and whose wake-ups come to the
    /// loop as `token`.
    pub fn new(name: &'static str, token: u64) -> Loader {
        Loader {
            name,
            token,
            thread: None,
        }
    }

    /// Hands `job` to the thread (started now if it is not running yet).
    pub fn submit(&mut self, epoll: &Epoll, job: Job) -> io::Result<()> {
        let thread = match &mut self.thread {
            Some(thread) => thread,
            None => self
                .thread
                .insert(Thread::start(epoll, self.name, self.token)?),
        };
        if thread.jobs.send(job).is_err() {
            // The thread is gone (it cannot panic: panics abort drover).
            self.thread = None;
            return Err(io::Error::other("the config reader has stopped"));
        }
        Ok(())
    }

    /// The results that have arrived, in the order their jobs were given.
    pub fn take_done(&mut self) -> Vec<Done> {
        let Some(thread) = &mut self.thread else {
            return Vec::new();
        };
        let mut buf = [0u8; 64];
        while matches!((&thread.wake).read(&mut buf), Ok(n) if n > 0) {}
        let mut done = Vec::new();
        loop {
            match thread.done.try_recv() {
                Ok(d) => done.push(d),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.thread = None;
                    break;
                }
            }
        }
        done
    }
}

impl Thread {
    fn start(epoll: &Epoll, name: &str, token: u64) -> io::Result<Thread> {
        let (wake_tx, wake) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        epoll.add(wake.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))?;
        let (jobs, job_rx) = channel::<Job>();
        let (done_tx, done) = channel::<Done>();
        let spawned = crate::sys::spawn_quiet_with_stack(name, STACK, move || {
            serve(&job_rx, &done_tx, wake_tx)
        });
        if let Err(e) = spawned {
            let _ = epoll.delete(wake.as_fd());
            return Err(e);
        }
        Ok(Thread { jobs, done, wake })
    }
}

/// The thread: reads each job's config until the loop goes away.
fn serve(jobs: &Receiver<Job>, done: &Sender<Done>, mut wake: UnixStream) {
    while let Ok(job) = jobs.recv() {
        if done.send(read(job)).is_err() {
            return;
        }
        // A full socket already holds a wake-up for the loop.
        let _ = wake.write(&[1]);
    }
}

/// Does one job.
pub fn read(job: Job) -> Done {
    match job {
        Job::Reload {
            path,
            writing,
            env_files,
            store_dir,
        } => {
            let found = survey(&path, &writing, &env_files);
            if !found.busy.is_empty() {
                return Done::Reload(Reading::Busy(found));
            }
            Done::Reload(match crate::config::load(&path) {
                Ok(loaded) => {
                    let durable = loaded.config.queues.values().any(|q| q.durable);
                    let store = store_dir
                        .filter(|_| durable)
                        .map(|dir| crate::broker::open_store_files(&dir).map(Box::new));
                    Reading::Valid {
                        loaded: Box::new(loaded),
                        skipped: found.skipped,
                        store,
                    }
                }
                Err(failed) => {
                    // A writer that opened a file since the survey made the
                    // loader refuse it: the reload waits for its close.
                    let again = survey(&path, &writing, &env_files);
                    if again.busy.is_empty() {
                        Reading::Invalid(failed)
                    } else {
                        Reading::Busy(again)
                    }
                }
            })
        }
        Job::DryRun { conn, path } => Done::DryRun {
            conn,
            result: crate::config::load(&path).map(|loaded| loaded.config),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;
    use nix::sys::epoll::{EpollCreateFlags, EpollTimeout};

    const TOKEN: u64 = 7;

    fn wait_done(epoll: &Epoll, loader: &mut Loader) -> Vec<Done> {
        let mut events = [EpollEvent::empty(); 4];
        loop {
            // The wake-up is the loop's only sign: no timeout needed.
            let n = epoll.wait(&mut events, EpollTimeout::NONE).unwrap();
            assert!(events[..n].iter().all(|e| e.data() == TOKEN));
            let done = loader.take_done();
            if !done.is_empty() {
                return done;
            }
        }
    }

    #[test]
    fn jobs_come_back_in_order_with_a_wake_up() {
        let tmp = TempDir::new("loader", "order");
        let dir = tmp.path();
        let good = dir.join("good.toml");
        std::fs::write(&good, "[group.a]\ncommand = [\"true\"]\n").unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[group.a]\ncommand = 3\n").unwrap();
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        let mut loader = Loader::new("drover-config", TOKEN);
        assert!(loader.thread.is_none(), "no thread before the first job");
        for (conn, path) in [(1, &bad), (2, &good)] {
            let job = Job::DryRun {
                conn,
                path: path.clone(),
            };
            loader.submit(&epoll, job).unwrap();
        }
        loader
            .submit(
                &epoll,
                Job::Reload {
                    path: good.clone(),
                    writing: HashSet::new(),
                    env_files: Vec::new(),
                    store_dir: None,
                },
            )
            .unwrap();
        assert!(loader.thread.is_some());
        let mut all = Vec::new();
        while all.len() < 3 {
            all.extend(wait_done(&epoll, &mut loader));
        }
        match &all[..] {
            [
                Done::DryRun {
                    conn: 1,
                    result: Err(failed),
                },
                Done::DryRun {
                    conn: 2,
                    result: Ok(config),
                },
                Done::Reload(Reading::Valid { loaded, .. }),
            ] => {
                assert!(failed.to_string().contains("bad.toml"), "{failed}");
                assert!(config.groups.keys().any(|g| g.as_str() == "a"));
                assert!(loaded.config.groups.keys().any(|g| g.as_str() == "a"));
            }
            other => panic!("{other:?}"),
        }
    }

    /// A reload that brings the first durable queue has the reader open
    /// the store (the wait for the disk); no durable queue, or a store
    /// already open (no `store_dir`), opens nothing.
    #[test]
    fn the_store_is_opened_by_the_reader_when_a_durable_queue_needs_it() {
        let tmp = TempDir::new("loader", "store");
        let dir = tmp.path();
        let state = dir.join("state");
        let file = dir.join("drover.toml");
        let reload = |store_dir: Option<PathBuf>| Job::Reload {
            path: file.clone(),
            writing: HashSet::new(),
            env_files: Vec::new(),
            store_dir,
        };
        let store_of = |done: Done| match done {
            Done::Reload(Reading::Valid { store, .. }) => store,
            other => panic!("{other:?}"),
        };
        std::fs::write(&file, "[group.a]\ncommand = [\"true\"]\n\n[queue.jobs]\n").unwrap();
        assert!(store_of(read(reload(Some(state.clone())))).is_none());
        assert!(!state.exists(), "no durable queue, no store");

        std::fs::write(
            &file,
            "[group.a]\ncommand = [\"true\"]\n\n[queue.jobs]\ndurable = true\n",
        )
        .unwrap();
        assert!(store_of(read(reload(None))).is_none());
        let (store, recovered) = *store_of(read(reload(Some(state.clone()))))
            .expect("opened")
            .unwrap();
        assert!(recovered.stored.is_empty());
        assert!(state.join("queues.sqlite").exists());
        // Held: a second open is refused, and says so.
        match store_of(read(reload(Some(state.clone())))) {
            Some(Err(StoreError::Locked { .. })) => {}
            other => panic!("{other:?}"),
        }
        drop(store);
    }

    #[test]
    fn a_file_being_written_is_not_read() {
        let tmp = TempDir::new("loader", "busy");
        let dir = tmp.path();
        let file = dir.join("a.toml");
        std::fs::write(&file, "[group.a]\ncommand = [\"true\"]\n").unwrap();
        let writing = HashSet::from([OsString::from("a.toml")]);
        // Whether the kernel answers (a lease) or not (the watcher's
        // marks), a file open for writing holds the read.
        let _writer = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        let job = Job::Reload {
            path: dir.to_path_buf(),
            writing,
            env_files: Vec::new(),
            store_dir: None,
        };
        match read(job) {
            Done::Reload(Reading::Busy(found)) => assert_eq!(found.busy, vec![file]),
            other => panic!("{other:?}"),
        }
    }
}
