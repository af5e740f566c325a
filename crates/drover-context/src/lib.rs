//! Start-method contexts as a Rust library, after Python's
//! `multiprocessing`: [`get_context`] gives a [`Context`]
//! whose [`Process`]es run a Rust function in a child process started by
//! `spawn`, `fork` or `forkserver`, and whose [`Queue`]s carry typed values
//! between processes.
//!
//! ```no_run
//! use drover_context::{self as context, Queue, StartMethod};
//!
//! fn foo(q: Queue<String>) {
//!     println!("被启动的新进程: ({})", std::process::id());
//!     q.put("Python".to_owned()).expect("put");
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     context::init(); // first thing: see below
//!     let ctx = context::get_context(StartMethod::Fork);
//!     let q = ctx.queue()?;
//!     let mut mp = ctx.process(foo, q.clone());
//!     mp.start()?;
//!     println!("{}", q.get()?);
//!     mp.join()?;
//!     Ok(())
//! }
//! ```
//!
//! # The three methods
//!
//! | | who creates the child | what it starts from | the target's arguments |
//! |---|---|---|---|
//! | [`Spawn`](StartMethod::Spawn) (default) | this process, `posix_spawn` of `/proc/self/exe` | a fresh run of this program, diverted to the target by [`init`] | JSON in a memfd; queue fds at fixed numbers |
//! | [`Fork`](StartMethod::Fork) | this process, `fork()`, no exec | a copy of this process's memory | already in memory |
//! | [`Forkserver`](StartMethod::Forkserver) | a fork server spawned on first use, `fork()` | a copy of the server: this program having run only [`init`] | JSON in a memfd and queue fds, sent to the server with SCM_RIGHTS |
//!
//! `spawn` re-executes the program as Python re-imports the main module;
//! `fork` calls the target in the forked child without exec; `forkserver`
//! forks it from a clean, single-threaded server. A child's exit code is 0
//! when the target returns, 1 when it panics (or cannot start: the reason
//! goes to stderr), `n` after `std::process::exit(n)`, and `-N` after death
//! by signal `N`.
//!
//! # `init()` comes first in `main`
//!
//! A spawn child and the fork server are new runs of this very program, so
//! they start in `main` like the parent. [`init`], called first thing in
//! `main`, recognises them by their argv (`--drover-context-child FD` or
//! `--drover-context-forkserver FD`), runs the target or the server loop,
//! and exits; in any other run it returns at once. It is Python's
//! `if __name__ == '__main__':` guard and `freeze_support()` in one: code
//! before it would run again in every spawned child and in the server, and
//! without it a child would run the parent's whole `main` instead of its
//! target. [`Process::start`] refuses `spawn` and `forkserver` in a program
//! that has not called it.
//!
//! Only functions of the main executable can be targets of `spawn` and
//! `forkserver`: a target is sent as its address's offset within the
//! executable, and the child checks that it runs the same file (device,
//! inode, size, mtime) and that the address is code of that file before it
//! calls anything (see the `boot` module).
//!
//! # The fork caveat
//!
//! As Python's documentation warns, forking a process that has other
//! threads is unsafe: the child has only the thread that forked, and a lock
//! another thread held at that moment stays held forever in the child. If
//! the child then needs it — Rust's `stdout`, a logger, a pool, any
//! `Mutex` — it deadlocks. (glibc's `malloc` resets its own locks, so
//! allocating is fine.) Use `fork` only from a process whose other threads,
//! if any, hold nothing the target needs; otherwise use `forkserver`, which
//! forks a server that has no other thread, or `spawn`. Rust's test harness
//! runs tests on threads, which is why drover's own tests run the
//! [`fork`](StartMethod::Fork) examples as separate programs. Before
//! forking, the parent flushes its stdout buffer so the child does not
//! print it a second time; the child ends with `_exit` after flushing its
//! own, so it never runs the parent's exit handlers.
//!
//! # Reaping
//!
//! The library waits only for its own children, by PID (`waitpid(pid)`,
//! never `-1`), so it composes with other code that starts processes.
//! Signals go through pidfds, so `terminate` and `kill` never reach a
//! process that reused a PID.

pub(crate) mod boot;
mod error;
mod fork;
mod forkserver;
mod process;
mod queue;
mod spawn;
mod sys;
mod wait;

#[cfg(test)]
mod tests;

use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

pub use error::{Error, QueueError};
pub use process::{Args, Process};
pub use queue::{DEFAULT_MAX_MESSAGE_BYTES, Queue};

/// How a child is started, by its Python name: `"spawn"`, `"fork"` or
/// `"forkserver"` (see [the three methods](crate#the-three-methods)).
/// drover's config uses the same type for a group's `start_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StartMethod {
    #[default]
    Spawn,
    Fork,
    Forkserver,
}

impl StartMethod {
    /// The method's Python name.
    pub fn as_str(self) -> &'static str {
        match self {
            StartMethod::Spawn => "spawn",
            StartMethod::Fork => "fork",
            StartMethod::Forkserver => "forkserver",
        }
    }
}

/// The start method of the default context ([`Process::new`]).
static DEFAULT_METHOD: OnceLock<StartMethod> = OnceLock::new();

/// Whether [`init`] has run in this process.
static INITIALISED: AtomicBool = AtomicBool::new(false);

fn initialised() -> bool {
    INITIALISED.load(Ordering::Relaxed)
}

/// Call first thing in `main`: in a spawned child or in a fork server (new
/// runs of this program) it runs the target or the server and exits;
/// otherwise it returns at once. See the [module docs](self).
pub fn init() {
    INITIALISED.store(true, Ordering::Relaxed);
    let mut args = std::env::args_os().skip(1);
    let (Some(flag), Some(fd), None) = (args.next(), args.next(), args.next()) else {
        return;
    };
    let Some(fd) = fd.to_str().and_then(|s| s.parse::<RawFd>().ok()) else {
        return;
    };
    if flag == spawn::CHILD_FLAG {
        spawn::run_child(fd);
    } else if flag == forkserver::SERVER_FLAG {
        forkserver::serve(fd);
    }
}

/// A start-method context: makes processes that start with its method, and
/// queues (Python's `multiprocessing.get_context(method)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    method: StartMethod,
}

/// The context of `method`.
pub fn get_context(method: StartMethod) -> Context {
    Context { method }
}

impl Context {
    pub fn get_start_method(&self) -> StartMethod {
        self.method
    }

    /// A process that will call `target(args)` when started (Python's
    /// `ctx.Process(target=…, args=…)`).
    pub fn process<A: Args>(&self, target: fn(A), args: A) -> Process {
        Process::with_method(self.method, target, args)
    }

    /// A new queue (Python's `ctx.Queue()`); queues work with every method.
    pub fn queue<T>(&self) -> Result<Queue<T>, QueueError> {
        Queue::new()
    }
}

/// Sets the default context's method, once, before it is first used
/// (Python's `multiprocessing.set_start_method`).
pub fn set_start_method(method: StartMethod) -> Result<(), Error> {
    DEFAULT_METHOD
        .set(method)
        .map_err(|_| Error::StartMethodAlreadySet(get_start_method().as_str()))
}

/// The default context's method: the one set, else `spawn`. Asking fixes
/// it, as in Python.
pub fn get_start_method() -> StartMethod {
    *DEFAULT_METHOD.get_or_init(StartMethod::default)
}

/// Every start method, in Python's order.
pub fn get_all_start_methods() -> [StartMethod; 3] {
    [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::Forkserver,
    ]
}

/// The method called `name` (`"spawn"`, `"fork"` or `"forkserver"`).
pub fn parse_start_method(name: &str) -> Result<StartMethod, Error> {
    get_all_start_methods()
        .into_iter()
        .find(|m| m.as_str() == name)
        .ok_or_else(|| Error::UnknownStartMethod(name.to_owned()))
}

/// The PID of this process's fork server, once started.
#[doc(hidden)]
pub fn forkserver_pid() -> Option<i32> {
    forkserver::server_pid()
}
