//! Python function workers (`python = "module:function"`).
//!
//! The interpreter side is `drover_worker.py`, compiled into the
//! binary and run with `python3 -c`. Under `spawn` every child is a fresh
//! interpreter running it in "spawn" mode. Under `fork` and `forkserver`,
//! drover keeps one *template* interpreter per group — it imports the target
//! module (fork) or only `preload` (forkserver) — and asks it for each child
//! over a `SOCK_SEQPACKET` socket, passing the child's fds by SCM_RIGHTS.
//! The template double-forks, so drover (a child subreaper) becomes the
//! worker's parent and reaps it like any other child.
//!
//! A forked worker keeps the fds its template opened while importing, so
//! its queue sockets cannot be put at 3, 4, … as a spawned child's are:
//! each stays at the number it arrived at in the template, and the
//! template sets its `DROVER_IN_`/`DROVER_OUT_` variable to that number
//! ([`WorkerSetup::queues`]).
//!
//! Every interpreter says what it is in `ps` and `top` (`drover-worker
//! workers[3] mod:fn`, `drover-template workers mod:fn`,
//! `drover-forkserver-template workers mod:fn`): the bootstrap writes that
//! title over its own command line as its first act (see [`argv`]).
//!
//! A template is user code's process: whatever it answers is checked (its
//! size, its JSON, its sequence number, that the PID it names is drover's
//! child) and anything else fails that start and replaces the template.
//!
//! Templates are drover's children but not workers: one that dies after its
//! imports is started again at once (running workers are unaffected); while
//! a template imports, its group's starts wait without blocking the event
//! loop; one whose imports
//! fail makes that start fail, so the group goes through the normal backoff
//! and fatal rules with the traceback in drover's log; one whose group
//! changed on reload is replaced.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, recv, sendmsg, setsockopt, sockopt};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use crate::config::names::GroupName;
use crate::config::{GroupSpec, Program, StartMethod};
use crate::sys::{FdPlan, SpawnPlan, spawn};

/// The interpreter side, run with `python3 -c`.
pub const BOOTSTRAP: &str = include_str!("drover_worker.py");

/// How long a template may take to import before its start counts as failed.
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a ready template may take to answer a request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest packet read from a template: its answers are a few dozen
/// bytes (an error's text is cut to 1000); a longer one is refused.
const REPLY_MAX: usize = 4096;

/// Why a worker did not start.
#[derive(Debug)]
pub enum StartError {
    /// The template is still importing; the runtime is told when it is ready.
    Warming,
    Failed(io::Error),
}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> Self {
        StartError::Failed(e)
    }
}

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
pub fn argv(group: &GroupSpec) -> Option<Vec<std::ffi::OsString>> {
    let Program::Python {
        module,
        function,
        preload,
    } = &group.program
    else {
        return None;
    };
    let mut argv: Vec<std::ffi::OsString> = vec![
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

/// What a template is told about a worker besides its fds.
#[derive(Debug, Default, serde::Serialize)]
pub struct WorkerSetup {
    /// Variables set in the worker (`DROVER_INDEX`, `DROVER_GROUP`, …).
    pub env: HashMap<String, String>,
    /// Each `DROVER_IN_<QUEUE>` / `DROVER_OUT_<QUEUE>` variable and the
    /// index of that queue's socket among the fds sent (stdin, stdout,
    /// stderr, then the queues); the template sets the variable to the fd
    /// number the socket has in the worker.
    pub queues: HashMap<String, usize>,
}

/// One group's template interpreter.
#[derive(Debug)]
struct Template {
    pid: i32,
    socket: OwnedFd,
    /// The group definition it was started for; a different one replaces it.
    spec: GroupSpec,
    readiness: Readiness,
    launched: Instant,
    seq: u64,
}

/// Where a template is in its start.
#[derive(Debug)]
enum Readiness {
    Importing,
    Ready,
    /// It exited while importing, or said something other than "ready":
    /// every start fails with this until the template is replaced.
    Failed(String),
}

/// The templates of every `fork` / `forkserver` Python group.
#[derive(Debug, Default)]
pub struct Templates {
    by_group: HashMap<GroupName, Template>,
    /// Templates launched since the runtime last asked, to watch for "ready".
    launched: Vec<GroupName>,
    /// Ready templates of a group that failed a request in a row (see
    /// [`MAX_TEMPLATE_FAILURES`]).
    failures: HashMap<GroupName, u32>,
}

/// A ready template that fails a request (killed, or answering nonsense) is
/// replaced and the start waits for the new one, instead of counting as a
/// failed start of the worker; this many times in a row, then the start
/// fails (and backs off as usual).
const MAX_TEMPLATE_FAILURES: u32 = 3;

#[derive(serde::Serialize)]
struct Request<'a> {
    seq: u64,
    #[serde(flatten)]
    setup: &'a WorkerSetup,
}

#[derive(serde::Deserialize)]
struct Reply {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    pid: Option<i32>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    ready: Option<bool>,
}

impl Templates {
    /// Starts a worker of `group` through its template (started, or
    /// replaced when the group changed, as needed). `plan` is the worker's
    /// prepared start: its fds are what the worker gets, and a template
    /// launched now gets its environment (less the worker's own); `setup`
    /// is what the worker is told besides.
    pub fn start_worker(
        &mut self,
        group: &GroupSpec,
        plan: &SpawnPlan,
        setup: &WorkerSetup,
    ) -> Result<i32, StartError> {
        let stale = self
            .by_group
            .get(&group.name)
            .is_some_and(|t| t.spec != *group);
        if stale {
            self.stop(&group.name);
        }
        if !self.by_group.contains_key(&group.name) {
            self.launch(group, plan)?;
        }
        let template = self
            .by_group
            .get_mut(&group.name)
            .ok_or_else(|| io::Error::other("the python template was not started"))?;
        let was_ready = matches!(template.readiness, Readiness::Ready);
        let result = match template.check_ready() {
            Ok(true) => template.request(plan, setup),
            Ok(false) if template.launched.elapsed() < IMPORT_TIMEOUT => {
                return Err(StartError::Warming);
            }
            Ok(false) => Err(io::Error::other(format!(
                "the python template did not finish importing within {IMPORT_TIMEOUT:?}"
            ))),
            Err(e) => Err(e),
        };
        if result.is_err() {
            // A template that failed (or died) is replaced on the next start.
            self.stop(&group.name);
            let failures = self.failures.entry(group.name.clone()).or_default();
            *failures += 1;
            if was_ready && *failures <= MAX_TEMPLATE_FAILURES {
                // It had imported fine: the worker's start is not what
                // failed. Start a new template now and wait for it.
                if let Err(e) = &result {
                    tracing::warn!(group = %group.name, "the python template failed ({e}); starting a new one");
                }
                self.launch(group, plan)?;
                return Err(StartError::Warming);
            }
        } else {
            self.failures.remove(&group.name);
        }
        Ok(result?)
    }

    /// Sockets of templates launched since the last call: the runtime
    /// watches each until its template is ready (or gone).
    pub fn take_launched(&mut self) -> Vec<GroupName> {
        std::mem::take(&mut self.launched)
    }

    /// `group`'s template socket, for the runtime's epoll set.
    pub fn socket(&self, group: &GroupName) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.by_group
            .get(group)
            .map(|t| std::os::fd::AsFd::as_fd(&t.socket))
    }

    /// The runtime saw `group`'s template socket readable: true when the
    /// template is now ready, or gone (either way its waiting children
    /// should try again).
    pub fn on_readable(&mut self, group: &GroupName) -> bool {
        match self.by_group.get_mut(group) {
            Some(t) => t.check_ready().unwrap_or(true),
            None => true,
        }
    }

    /// Starts `group`'s template without waiting for its imports.
    fn launch(&mut self, group: &GroupSpec, plan: &SpawnPlan) -> io::Result<()> {
        let (ours, theirs) = crate::sys::seqpacket_pair()?;
        setsockopt(&ours, sockopt::ReceiveTimeout, &timeval(REPLY_TIMEOUT))?;
        let argv = argv(group).ok_or_else(|| io::Error::other("not a python group"))?;
        let stderr = std::io::stderr().as_raw_fd();
        let stdin = plan
            .fds
            .sources
            .first()
            .copied()
            .ok_or_else(|| io::Error::other("a start plan without stdin"))?;
        let template_plan = SpawnPlan {
            program: plan.program.clone(),
            argv: argv
                .iter()
                .map(|a| CString::new(a.as_encoded_bytes()).unwrap_or_default())
                .collect(),
            envp: template_env(&plan.envp),
            cwd: plan.cwd.clone(),
            fds: FdPlan {
                sources: vec![stdin, stderr, stderr, theirs.as_raw_fd()],
            },
        };
        let pid = spawn(&template_plan)?;
        // Tests find the template by this line: it names itself only once
        // its interpreter runs the bootstrap.
        tracing::debug!(group = %group.name, pid, "python template started");
        self.launched.push(group.name.clone());
        self.by_group.insert(
            group.name.clone(),
            Template {
                pid,
                socket: ours,
                spec: group.clone(),
                readiness: Readiness::Importing,
                launched: Instant::now(),
                seq: 0,
            },
        );
        Ok(())
    }

    /// Stops `group`'s template (it exits when its socket closes).
    pub fn stop(&mut self, group: &GroupName) {
        if let Some(t) = self.by_group.remove(group) {
            let _ = nix::sys::signal::kill(Pid::from_raw(t.pid), nix::sys::signal::Signal::SIGTERM);
        }
    }

    /// Whether `pid` is one of the templates.
    pub fn is_template(&self, pid: i32) -> bool {
        self.by_group.values().any(|t| t.pid == pid)
    }

    /// Stops every template (drover is shutting down); returns their PIDs.
    pub fn stop_all(&mut self) -> Vec<i32> {
        let groups: Vec<GroupName> = self.by_group.keys().cloned().collect();
        let pids = self.by_group.values().map(|t| t.pid).collect();
        for group in groups {
            self.stop(&group);
        }
        pids
    }

    /// A reaped PID that is a template: forget it. Returns the group's
    /// definition when the template had finished importing (so a new one
    /// should be started at once); `Some(None)` when it died importing
    /// (its waiting children will fail and back off); `None` when `pid` is
    /// not a template.
    pub fn on_exit(&mut self, pid: i32) -> Option<Option<GroupSpec>> {
        let group = self
            .by_group
            .iter()
            .find(|(_, t)| t.pid == pid)
            .map(|(g, _)| g.clone())?;
        let template = self.by_group.remove(&group)?;
        if matches!(template.readiness, Readiness::Ready) {
            tracing::warn!(%group, pid, "the python template exited; starting a new one");
            Some(Some(template.spec))
        } else {
            tracing::warn!(%group, pid, "the python template exited while importing");
            Some(None)
        }
    }

    /// Stops the templates of groups that `keep` rejects (removed by a
    /// reload, or no longer a fork/forkserver Python group).
    pub fn retain(&mut self, keep: impl Fn(&GroupName) -> bool) {
        let gone: Vec<GroupName> = self.by_group.keys().filter(|g| !keep(g)).cloned().collect();
        for group in gone {
            self.stop(&group);
        }
    }

    /// Starts a template for `group` now (after its predecessor died).
    pub fn relaunch(&mut self, group: &GroupSpec, plan: &SpawnPlan) -> io::Result<()> {
        self.launch(group, plan)
    }
}

impl Template {
    /// Whether the template has said it finished importing, without waiting.
    /// An error means it exited (its imports failed) or sent something else;
    /// it stays failed.
    fn check_ready(&mut self) -> io::Result<bool> {
        match &self.readiness {
            Readiness::Ready => return Ok(true),
            Readiness::Failed(why) => return Err(io::Error::other(why.clone())),
            Readiness::Importing => {}
        }
        let why = match self.receive(MsgFlags::MSG_DONTWAIT) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Ok(Some(Reply {
                ready: Some(true), ..
            })) => {
                self.readiness = Readiness::Ready;
                return Ok(true);
            }
            Ok(Some(_)) => "the python template sent something other than its ready message".into(),
            Ok(None) => {
                "the python template exited while importing (its traceback is in drover's log)"
                    .into()
            }
            Err(e) => e.to_string(),
        };
        self.readiness = Readiness::Failed(why.clone());
        Err(io::Error::other(why))
    }

    /// Asks the template for a worker; its PID, checked to be drover's
    /// child. The reply is waited for (at most [`REPLY_TIMEOUT`]).
    fn request(&mut self, plan: &SpawnPlan, setup: &WorkerSetup) -> io::Result<i32> {
        self.seq += 1;
        let body = serde_json::to_vec(&Request {
            seq: self.seq,
            setup,
        })
        .map_err(io::Error::other)?;
        let fds: &[RawFd] = &plan.fds.sources;
        let cmsg = [ControlMessage::ScmRights(fds)];
        loop {
            match sendmsg::<()>(
                self.socket.as_raw_fd(),
                &[IoSlice::new(&body)],
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(Errno::EINTR) => continue,
                other => break other.map(|_| ())?,
            }
        }
        let reply = match self.receive(MsgFlags::empty()) {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                return Err(io::Error::other(
                    "the python template exited (its traceback, if any, is in drover's log)",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::other(format!(
                    "the python template did not answer within {REPLY_TIMEOUT:?}"
                )));
            }
            Err(e) => return Err(e),
        };
        // One request at a time, and a template that failed one is
        // replaced: any other sequence number is a broken template.
        if reply.seq != Some(self.seq) {
            return Err(io::Error::other(format!(
                "the python template answered request {} with sequence number {}",
                self.seq,
                reply
                    .seq
                    .map_or_else(|| "none".into(), |seq| seq.to_string())
            )));
        }
        match (reply.pid, reply.error) {
            (Some(pid), _) if pid == self.pid => Err(io::Error::other(
                "the python template named itself as the worker it forked",
            )),
            (Some(pid), _) => drovers_child(pid),
            (None, error) => Err(io::Error::other(format!(
                "the python template could not fork: {}",
                error.unwrap_or_default()
            ))),
        }
    }

    /// One packet from the template: `None` when it closed its end. A
    /// packet longer than [`REPLY_MAX`] or not a JSON reply is an error;
    /// so is `WouldBlock` (nothing yet, or the receive timeout).
    fn receive(&self, flags: MsgFlags) -> io::Result<Option<Reply>> {
        let mut buf = [0u8; REPLY_MAX];
        // MSG_TRUNC: the packet's whole length, to tell a long one.
        let n = loop {
            match recv(
                self.socket.as_raw_fd(),
                &mut buf,
                flags | MsgFlags::MSG_TRUNC,
            ) {
                Err(Errno::EINTR) => continue,
                other => break other?,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        let packet = buf.get(..n).ok_or_else(|| {
            io::Error::other(format!(
                "the python template sent {n} bytes, more than the {REPLY_MAX} bytes an answer may have"
            ))
        })?;
        serde_json::from_slice(packet)
            .map(Some)
            .map_err(|e| io::Error::other(format!("bad answer from the python template: {e}")))
    }
}

/// The environment of the worker whose start launched the template,
/// without what is that worker's own: its index and its queue variables
/// (which would name the template's fd 3, its socket to drover, as a
/// queue to code that imports). Each worker is given them by its request.
fn template_env(worker: &[CString]) -> Vec<CString> {
    worker
        .iter()
        .filter(|kv| {
            let kv = kv.as_bytes();
            !(kv.starts_with(b"DROVER_INDEX=")
                || kv.starts_with(b"DROVER_IN_")
                || kv.starts_with(b"DROVER_OUT_"))
        })
        .cloned()
        .collect()
}

/// `pid` if it is drover's child: the worker, which drover (a child
/// subreaper) adopted when the template's middle process exited, before
/// the template answered. Anything else (0, -1, a stranger) would have
/// drover signal and wait for a process that is not its worker.
fn drovers_child(pid: i32) -> io::Result<i32> {
    let not_ours = || {
        io::Error::other(format!(
            "the python template named PID {pid}, which is not drover's child"
        ))
    };
    if pid <= 0 {
        return Err(not_ours());
    }
    // WNOWAIT: an exited worker stays to be reaped by the runtime's loop.
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(Pid::from_raw(pid)), flags) {
        Ok(_) => Ok(pid),
        Err(Errno::ECHILD) => Err(not_ours()),
        Err(e) => Err(e.into()),
    }
}

fn timeval(d: Duration) -> nix::sys::time::TimeVal {
    nix::sys::time::TimeVal::new(d.as_secs() as _, 0)
}
