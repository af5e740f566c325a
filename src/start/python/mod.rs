//! Python function workers (`python = "module:function"`).
//!
//! The interpreter side is `drover_worker.py`, compiled into the
//! binary and run with `python3 -c`. Under `spawn` every child is a fresh
//! interpreter running it in "spawn" mode. Under `fork` and `forkserver`,
//! drover keeps one *template* interpreter per group — it imports the target
//! module (fork) or only `preload` (forkserver) — and asks it for each child
//! in the helpers' protocol ([`crate::sys::wire`], driven without blocking
//! by the start helper driver), passing the child's fds by SCM_RIGHTS.
//! The template makes each worker drover's child, which drover signals,
//! stops, reaps and accounts for like any other child: where it is known to
//! be sound, with one `clone(CLONE_PARENT | SIGCHLD)` from Python (ctypes,
//! bracketed as `os.fork()` brackets `fork()`, with what glibc's `fork()`
//! does besides the syscall redone or checked unneeded: see `SiblingFork`
//! in `drover_worker.py`), as the Rust fork server creates its children;
//! anywhere else with a double fork, the middle process exiting so that
//! drover (a child subreaper) adopts the worker. The single clone copies a
//! heavy interpreter's page tables once instead of twice and has no middle
//! process to wait for. The other way to fork once, Python's forkserver's
//! (the template is the worker's parent and reports its exit status over
//! its socket), was not taken: drover could then neither wait for the
//! worker nor hold a pidfd on it, so its signals, stops, PID-reuse safety
//! and exit accounting would rest on a relay that dies with the template.
//! With the single clone, the template also forks each worker ahead of its
//! request (a *spare*: drover's child, not a worker, titled `drover-spare`,
//! running nothing of the user's until a request and the template's "go"),
//! so that a start or a restart only hands it its fds and variables: the
//! fork, a copy of the template's page tables, happens after the reply.
//! drover reaps a spare that exits (when its template is gone) like any
//! orphaned descendant.
//!
//! A forked worker keeps the fds its template opened while importing, so
//! its queue sockets cannot be put at 3, 4, … as a spawned child's are:
//! each stays at the number it arrived at in the template, and the
//! template sets its `DROVER_IN_`/`DROVER_OUT_` variable to that number
//! (see [`request`]).
//!
//! Every interpreter says what it is in `ps` and `top` (`drover-worker
//! workers[3] mod:fn`, `drover-template workers mod:fn`,
//! `drover-forkserver-template workers mod:fn`): the bootstrap writes that
//! title over its own command line as its first act (see [`argv`]).
//!
//! A template is user code's process: whatever it answers is checked (its
//! size, its form, its sequence number, that the PID it names is drover's
//! child) and anything else replaces the template.
//!
//! Templates are drover's children but not workers: one that dies after its
//! imports is started again at once (running workers are unaffected); while
//! a template imports, its group's starts wait without blocking the event
//! loop; one whose imports
//! fail makes that start fail, so the group goes through the normal backoff
//! and fatal rules with the traceback in drover's log; one whose group
//! changed on reload is replaced.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use crate::config::{GroupSpec, Program, StartMethod};
use crate::sys::wire::RequestBuilder;
use crate::sys::{FdPlan, SpawnPlan, spawn};

use super::prepare::Prepared;

/// The interpreter side, run with `python3 -c`: `drover_worker.py`, after
/// the source of the `drover` queue helper module it lets workers import.
pub const BOOTSTRAP: &str = concat!(
    "_DROVER_MODULE = r'''",
    include_str!("drover.py"),
    "'''\n",
    include_str!("drover_worker.py")
);

/// The `drover` Python module (`drover python-module`): queue helpers for
/// workers, importable as it is in Python function workers.
pub const MODULE: &str = include_str!("drover.py");

/// How long a template may take to import before its start counts as failed.
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(120);

/// The mode argument of the bootstrap for a start method.
pub fn mode(method: StartMethod) -> &'static str {
    match method {
        StartMethod::Spawn => "spawn",
        StartMethod::Fork => "fork",
        StartMethod::Forkserver => "forkserver",
    }
}

/// argv of the bootstrap: `python -c BOOTSTRAP MODE MODULE FUNCTION [PRELOAD...]`.
///
/// The whole source is the command line the interpreter starts with; the
/// bootstrap then writes its title over it, through /proc/self/mem, before
/// it imports anything. The source's length is what makes that possible: a
/// title can only replace the argv area the kernel set up at exec, never
/// grow it. A short loader that read the source from a variable or an fd
/// would still be what `ps` shows (and what a forked worker inherits from
/// its template), so it would need the same rewrite in a smaller area, and
/// the variable would sit in every worker's /proc/PID/environ. The
/// interpreter's own command line shows only for the milliseconds before
/// the bootstrap runs.
pub fn argv(group: &GroupSpec) -> Option<Vec<OsString>> {
    let Program::Python {
        module,
        function,
        preload,
    } = &group.program
    else {
        return None;
    };
    let mut argv: Vec<OsString> = vec![
        group.python_executable.clone(),
        "-c".into(),
        BOOTSTRAP.into(),
        mode(group.start_method).into(),
        module.into(),
        function.into(),
    ];
    if group.start_method == StartMethod::Forkserver {
        argv.extend(preload.iter().map(Into::into));
    }
    Some(argv)
}

/// The request for worker `index` of `group`: the variables to set in it
/// (its index, group and start method, and `DROVER_CONFIRM_<QUEUE>`), then each of its `queues`
/// variables with the index of its socket among the fds sent (stdin,
/// stdout, stderr, then the queues, in order); the template sets the
/// variable to the fd number the socket has in the worker.
pub fn request(
    seq: u64,
    group: &GroupSpec,
    index: u32,
    queues: &[(String, String)],
    notify: Option<&str>,
) -> Vec<u8> {
    let env = [
        ("DROVER_INDEX".to_owned(), index.to_string()),
        ("DROVER_GROUP".to_owned(), group.name.to_string()),
        (
            "DROVER_START_METHOD".to_owned(),
            group.start_method.as_str().to_owned(),
        ),
    ];
    // As for every other start (see `plan::ChildIo::plan`).
    let mut confirms = super::plan::confirm_variables(group);
    if let Some(address) = notify {
        confirms.push(("NOTIFY_SOCKET".to_owned(), address.to_owned()));
    }
    let mut b = RequestBuilder::new(seq);
    b.count(env.len() + confirms.len());
    for (k, v) in env.into_iter().chain(confirms) {
        b.field(format!("{k}={v}").as_bytes());
    }
    b.count(queues.len());
    for (i, (name, _)) in queues.iter().enumerate() {
        b.field(format!("{name}={}", 3 + i).as_bytes());
    }
    b.finish()
}

/// Starts `group`'s template without waiting for its imports: its
/// interpreter with the group's environment, working directory and stdin
/// `devnull`. Returns its PID and drover's end of its socket.
///
/// A group with `sockets` has its template take them (`listeners`) at 3,
/// 4, … with the socket-activation variables (`LISTEN_PID` its own), and
/// its socket to drover right after them, before it imports anything: its
/// workers inherit the sockets at those numbers and set `LISTEN_PID` to
/// their own PID.
pub fn launch(
    group: &GroupSpec,
    prepared: &Prepared,
    devnull: RawFd,
    listeners: &[RawFd],
) -> io::Result<(i32, std::os::fd::OwnedFd)> {
    let (ours, theirs) = crate::sys::seqpacket_pair()?;
    let stderr = std::io::stderr().as_raw_fd();
    let mut sources = vec![devnull, stderr, stderr];
    sources.extend_from_slice(listeners);
    sources.push(theirs.as_raw_fd());
    let mut envp = prepared.envp.clone();
    envp.extend(super::plan::listen_variables(group));
    let plan = SpawnPlan {
        program: prepared.program.clone(),
        argv: prepared.argv.clone(),
        envp,
        cwd: prepared.cwd.clone(),
        fds: FdPlan { sources },
        // The template runs as the group's user with its limits: it
        // imports the user's code, and every worker it forks inherits both.
        identity: prepared.identity.clone(),
    };
    let pid = spawn(&plan)?;
    // Tests find the template by this line: it names itself only once its
    // interpreter runs the bootstrap.
    tracing::debug!(group = %group.name, pid, "python template started");
    Ok((pid, ours))
}

/// Whether `pid` is drover's child: the worker, created as drover's child
/// (`CLONE_PARENT`) or adopted by drover (a child subreaper) when the
/// template's middle process exited, before the template answered. Anything else (0, -1, a stranger) would have
/// drover signal and wait for a process that is not its worker; the error
/// says what the template did.
pub fn drovers_child(pid: i32) -> Result<(), String> {
    let not_ours = || format!("named PID {pid}, which is not drover's child");
    if pid <= 0 {
        return Err(not_ours());
    }
    // WNOWAIT: an exited worker stays to be reaped by the runtime's loop.
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(Pid::from_raw(pid)), flags) {
        Ok(_) => Ok(()),
        Err(Errno::ECHILD) => Err(not_ours()),
        Err(e) => Err(format!("named PID {pid}, which drover cannot check: {e}")),
    }
}
