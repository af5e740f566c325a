//! Start contexts: how a child of each start method comes to run, behind
//! the supervisor's [`Launcher`].
//!
//! Every start is prepared the same way — the group's program, argv and
//! environment once per definition (`prepare`), the child's pipes, queue
//! sockets and variables per start (`plan`) — and then made by its
//! group's context:
//!
//! - `spawn`: from drover, through its shared fd table or with
//!   `posix_spawn` ([`crate::sys::spawn`]).
//! - `fork` (commands): fork and exec from drover.
//! - `forkserver` (commands): a request to the fork server ([`forkserver`]).
//! - `fork` / `forkserver` (Python functions): a request to the group's
//!   template interpreter ([`python`]).
//!
//! The first two are system calls that return once the program runs (or
//! fails to). The last two ask another process, which may be slow, hung or
//! lying; they never make the loop wait: the request is sent
//! ([`Started::Requested`]) and its answer comes back as a loop event
//! ([`ProcessLauncher::on_event`]), to be handed to the supervisor as a
//! [`Completion`]. A helper that does not answer within its deadline is
//! killed and replaced (`helper`); only its own group's starts wait.

pub mod forkserver;
mod helper;
mod listeners;
mod plan;
mod prepare;
pub mod python;

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::signal::{kill, killpg};
use nix::unistd::Pid as NixPid;

use crate::config::names::GroupName;
use crate::config::signal::Signal;
use crate::config::{GroupSpec, Program, StartMethod};
use crate::supervisor::{ExitStatus, LaunchError, Launcher, Pid, Started};
use crate::sys::forkexec::{ExecSetup, FdSetup, ForkKind, fork_exec};
use crate::sys::{SpawnPlan, pidfd_open, spawn_child};
use helper::{Broken, Event, Helper};
pub use listeners::Listeners;
use plan::ChildIo;
pub use plan::ChildOutput;
use prepare::{Prepared, start_error};

/// The most processes started in one loop turn: a scale-up to thousands, or
/// a crash storm, must not keep the loop from reaping, serving `status` and
/// moving queue traffic (one start costs about half a millisecond).
pub const STARTS_PER_TURN: u32 = 64;

/// A ready template that breaks while it holds requests (killed, or
/// answering nonsense) is replaced and those starts wait for the new one,
/// instead of counting as failed starts of their workers; this many times
/// in a row, then they fail (and back off as usual).
const MAX_TEMPLATE_FAILURES: u32 = 3;

/// Exits of unknown processes remembered while answers are awaited (see
/// [`ProcessLauncher::note_exit`]).
const EARLY_EXITS_MAX: usize = 4096;

/// The answer to a [`Started::Requested`] start, for
/// [`crate::supervisor::Supervisor::start_replied`].
#[derive(Debug)]
pub struct Completion {
    /// The definition the start was made with.
    pub spec: Rc<GroupSpec>,
    pub index: u32,
    pub ticket: u64,
    pub result: Result<Pid, LaunchError>,
    /// The process already exited (and was reaped) before its answer was
    /// read: its exit, to be handled right after the start.
    pub exited: Option<ExitStatus>,
}

/// What a request to a helper carries until its answer.
#[derive(Debug)]
struct Pending {
    ticket: u64,
    spec: Rc<GroupSpec>,
    index: u32,
    io: ChildIo,
    /// The program's name, for error messages.
    program: CString,
}

/// Which helper a loop token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HelperId {
    ForkServer,
    Template(GroupName),
}

/// A group's Python template.
#[derive(Debug)]
struct Template {
    helper: Helper<Pending>,
    /// The definition it was started for; a different one replaces it.
    spec: Rc<GroupSpec>,
}

/// Starts children through their group's start context; see the module
/// documentation.
#[derive(Debug)]
pub struct ProcessLauncher {
    base_env: BTreeMap<OsString, OsString>,
    devnull: OwnedFd,
    outputs: Vec<ChildOutput>,
    /// The `forkserver` context's server, started on first use.
    forkserver: Option<Helper<Pending>>,
    /// Template interpreters of Python groups under fork / forkserver.
    templates: HashMap<GroupName, Template>,
    /// Why a group's last template could not import: its next start fails
    /// with this (and the one after launches a new template).
    import_failures: HashMap<GroupName, String>,
    /// Ready templates of a group that broke in a row holding requests.
    template_failures: HashMap<GroupName, u32>,
    /// Loop tokens of the helpers' sockets.
    tokens: HashMap<u64, HelperId>,
    /// Per group, what every start shares.
    prepared: HashMap<GroupName, Prepared>,
    /// The listening sockets of groups' `sockets`.
    listeners: Listeners,
    /// Sockets drover was itself given by socket activation (their number,
    /// `LISTEN_FDNAMES`): `fork` command groups without `sockets` inherit
    /// them at 3.. and are told so.
    inherited_sockets: Option<(u32, Option<String>)>,
    /// Processes started in this loop turn (see [`STARTS_PER_TURN`]).
    starts_this_turn: u32,
    next_ticket: u64,
    completions: Vec<Completion>,
    /// Groups whose template became ready, or failed to: their waiting
    /// children should try again.
    ready: Vec<GroupName>,
    /// Unknown processes reaped while answers were awaited: a child can
    /// exit before its helper's answer is read.
    early_exits: HashMap<Pid, ExitStatus>,
    /// Helpers dropped (killed, or told to go) and not yet reaped.
    retired: Vec<Pid>,
}

impl ProcessLauncher {
    /// A launcher whose children inherit `base_env` (drover's environment).
    pub fn new(base_env: BTreeMap<OsString, OsString>) -> std::io::Result<Self> {
        let devnull = std::fs::File::open("/dev/null")?.into();
        Ok(ProcessLauncher {
            base_env,
            devnull,
            outputs: Vec::new(),
            forkserver: None,
            templates: HashMap::new(),
            import_failures: HashMap::new(),
            template_failures: HashMap::new(),
            tokens: HashMap::new(),
            prepared: HashMap::new(),
            listeners: Listeners::default(),
            inherited_sockets: None,
            starts_this_turn: 0,
            next_ticket: 0,
            completions: Vec::new(),
            ready: Vec::new(),
            early_exits: HashMap::new(),
            retired: Vec::new(),
        })
    }

    /// Binds the listening sockets `config` adds, closes those it no
    /// longer names; on an error (an address in use, a permission) nothing
    /// changes. Called before a config is applied.
    pub fn apply_sockets(&mut self, config: &crate::config::Config) -> Result<(), String> {
        self.listeners.apply(config)
    }

    /// drover was given `count` sockets at 3.. by socket activation (with
    /// `names`): `fork` command groups without `sockets` inherit them, and
    /// their children get `LISTEN_FDS`, `LISTEN_FDNAMES` and their own
    /// `LISTEN_PID`.
    pub fn inherit_sockets(&mut self, count: u32, names: Option<String>) {
        self.inherited_sockets = Some((count, names));
    }

    /// The fds of `group`'s listening sockets, in its order.
    fn listener_fds(&self, group: &GroupSpec) -> Result<Vec<std::os::fd::RawFd>, LaunchError> {
        self.listeners.fds(group).ok_or_else(|| {
            LaunchError::Setup(std::io::Error::other("its listening sockets are not bound"))
        })
    }

    /// A new loop turn: the start budget is full again.
    pub fn new_turn(&mut self) {
        self.starts_this_turn = 0;
    }

    /// Starts the fork server now (drover calls this before it has any
    /// thread when a group uses `forkserver`; later starts are on demand).
    pub fn start_forkserver(&mut self) -> std::io::Result<i32> {
        let (pid, socket) = forkserver::launch(
            Path::new("/proc/self/exe"),
            self.devnull.as_raw_fd(),
            std::io::stderr().as_raw_fd(),
        )?;
        tracing::debug!(pid, "fork server started");
        let now = Instant::now();
        self.forkserver = Some(Helper::new(
            pid,
            socket,
            now,
            forkserver::READY_TIMEOUT,
            true,
        ));
        Ok(pid)
    }

    /// Whether `pid` is one of drover's helpers (the fork server, a Python
    /// template) rather than a child or an orphan.
    pub fn is_helper(&self, pid: Pid) -> bool {
        self.forkserver.as_ref().is_some_and(|h| h.pid() == pid.0)
            || self.templates.values().any(|t| t.helper.pid() == pid.0)
            || self.retired.contains(&pid)
    }

    /// Watches the sockets of helpers started since the last call, with
    /// tokens from `token`.
    pub fn watch_helpers(&mut self, epoll: &Epoll, mut token: impl FnMut() -> u64) {
        let helpers = self
            .forkserver
            .iter_mut()
            .map(|h| (HelperId::ForkServer, h))
            .chain(
                self.templates
                    .iter_mut()
                    .map(|(g, t)| (HelperId::Template(g.clone()), &mut t.helper)),
            );
        for (id, helper) in helpers.filter(|(_, h)| h.token.is_none()) {
            let t = token();
            match epoll.add(helper.socket(), EpollEvent::new(EpollFlags::EPOLLIN, t)) {
                Ok(()) => {
                    helper.token = Some(t);
                    self.tokens.insert(t, id);
                }
                // Its deadline still catches a helper that never answers.
                Err(e) => tracing::error!("cannot watch a start helper's socket: {e}"),
            }
        }
    }

    /// Whether `token` is a helper's socket.
    pub fn owns(&self, token: u64) -> bool {
        self.tokens.contains_key(&token)
    }

    /// A helper's socket is readable: its answers become completions, its
    /// hello a ready context.
    pub fn on_event(&mut self, token: u64) {
        let Some(id) = self.tokens.get(&token).cloned() else {
            return;
        };
        let now = Instant::now();
        let mut events = Vec::new();
        let result = match &id {
            HelperId::ForkServer => self
                .forkserver
                .as_mut()
                .map(|h| h.on_readable(now, &mut events)),
            HelperId::Template(g) => self
                .templates
                .get_mut(g)
                .map(|t| t.helper.on_readable(now, &mut events)),
        };
        let mut broken = match result {
            None => return, // replaced since the event was queued
            Some(result) => result.err(),
        };
        for event in events {
            match (event, &id) {
                (Event::Ready, HelperId::Template(g)) => {
                    tracing::debug!(group = %g, "python template ready");
                    self.ready.push(g.clone());
                }
                (Event::Ready, HelperId::ForkServer) => {}
                (Event::Answer(pending, result), id) => {
                    if let Err(wrong) = self.answered(id, pending, result) {
                        let (pending, why) = *wrong;
                        // A template that names a stranger is replaced;
                        // this start goes with its other requests.
                        self.requeue(id, pending);
                        broken = Some(why);
                        break;
                    }
                }
            }
        }
        if let Some(why) = broken {
            self.broken(&id, why);
        }
        if self.pending() == 0 {
            self.early_exits.clear();
        }
    }

    /// An answer: the PID (checked, for a template) or why not.
    fn answered(
        &mut self,
        id: &HelperId,
        p: Pending,
        result: std::io::Result<i32>,
    ) -> Result<(), Box<(Pending, Broken)>> {
        let template = matches!(id, HelperId::Template(_));
        let pid = match result {
            Ok(pid) => pid,
            Err(e) => {
                let error = if template {
                    LaunchError::Template(e)
                } else {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        // Found on PATH before, gone now: look again next time.
                        self.prepared.remove(&p.spec.name);
                    }
                    start_error(&p.spec, &p.program, e)
                };
                self.complete(p, Err(error));
                return Ok(());
            }
        };
        let exited = self.early_exits.remove(&Pid(pid));
        if template {
            if exited.is_none()
                && let Err(why) = python::drovers_child(pid)
            {
                return Err(Box::new((p, Broken(why))));
            }
            self.template_failures.remove(&p.spec.name);
        }
        let Pending {
            ticket,
            spec,
            index,
            io,
            ..
        } = p;
        self.outputs
            .push(io.into_output(&spec.name, index, Pid(pid), None));
        self.completions.push(Completion {
            spec,
            index,
            ticket,
            result: Ok(Pid(pid)),
            exited,
        });
        Ok(())
    }

    /// Puts a start back at the head of its helper's requests, to be failed
    /// or re-routed with them.
    fn requeue(&mut self, id: &HelperId, p: Pending) {
        let helper = match id {
            HelperId::ForkServer => self.forkserver.as_mut(),
            HelperId::Template(g) => self.templates.get_mut(g).map(|t| &mut t.helper),
        };
        match helper {
            Some(h) => h.push_front_answered(p),
            None => self.complete_failed(p, "its start helper is gone".into(), false),
        }
    }

    fn complete(&mut self, p: Pending, result: Result<Pid, LaunchError>) {
        self.completions.push(Completion {
            spec: p.spec,
            index: p.index,
            ticket: p.ticket,
            result,
            exited: None,
        });
    }

    /// Fails a start whose helper broke: for a template, a `Warming` wait
    /// for its replacement (`retry`), or the error.
    fn complete_failed(&mut self, p: Pending, why: String, retry: bool) {
        let error = match &p.spec.program {
            _ if retry => LaunchError::Warming {
                until: python::IMPORT_TIMEOUT,
            },
            Program::Python { .. } => LaunchError::Template(std::io::Error::other(why)),
            Program::Command(_) => LaunchError::Exec {
                program: p.program.to_string_lossy().into_owned(),
                source: std::io::Error::other(why),
            },
        };
        self.complete(p, Err(error));
    }

    /// Drops a helper that cannot be used any more (killing it) and settles
    /// the starts it held; the fork server is started again at once, so is
    /// a template that had imported fine.
    fn broken(&mut self, id: &HelperId, why: Broken) {
        match id {
            HelperId::ForkServer => {
                let Some(mut server) = self.forkserver.take() else {
                    return;
                };
                let why = format!("the fork server {}", why.0);
                tracing::warn!("{why}; starting a new one");
                for p in self.retire(&mut server) {
                    self.complete_failed(p, why.clone(), false);
                }
                if let Err(e) = self.start_forkserver() {
                    tracing::error!(
                        "cannot restart the fork server: {e}; forkserver starts will retry"
                    );
                }
            }
            HelperId::Template(group) => {
                let Some(mut t) = self.templates.remove(group) else {
                    return;
                };
                let why = format!("the python template {}", why.0);
                let was_ready = t.helper.is_ready();
                let held = self.retire(&mut t.helper);
                if !was_ready {
                    tracing::warn!(%group, "{group}: {why}");
                    self.import_failures.insert(group.clone(), why.clone());
                    self.ready.push(group.clone());
                    for p in held {
                        self.complete_failed(p, why.clone(), false);
                    }
                    return;
                }
                let failures = self.template_failures.entry(group.clone()).or_default();
                if !held.is_empty() {
                    *failures += 1;
                }
                let retry = *failures <= MAX_TEMPLATE_FAILURES;
                if retry {
                    tracing::warn!(%group, "{why}; starting a new one");
                    if let Err(e) = self.launch_template(&t.spec) {
                        tracing::error!(%group, "cannot restart the python template: {e}");
                    }
                } else {
                    tracing::warn!(%group, "{why}");
                }
                let retry = retry && self.templates.contains_key(group);
                for p in held {
                    self.complete_failed(p, why.clone(), retry);
                }
            }
        }
    }

    /// Kills a helper being dropped; the requests it held.
    fn retire(&mut self, helper: &mut Helper<Pending>) -> Vec<Pending> {
        let pid = helper.pid();
        let _ = kill(NixPid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        self.retired.push(Pid(pid));
        if let Some(token) = helper.token {
            self.tokens.remove(&token);
        }
        helper.take_requests()
    }

    /// The earliest moment a helper is late.
    pub fn deadline(&self) -> Option<Instant> {
        self.forkserver
            .iter()
            .chain(self.templates.values().map(|t| &t.helper))
            .filter_map(Helper::deadline)
            .min()
    }

    /// Replaces the helpers that are late at `now`.
    pub fn on_deadline(&mut self, now: Instant) {
        let late: Vec<(HelperId, Broken)> = self
            .forkserver
            .iter()
            .filter_map(|h| h.overdue(now).map(|b| (HelperId::ForkServer, b)))
            .chain(self.templates.iter().filter_map(|(g, t)| {
                t.helper
                    .overdue(now)
                    .map(|b| (HelperId::Template(g.clone()), b))
            }))
            .collect();
        for (id, why) in late {
            self.broken(&id, why);
        }
    }

    /// Called for every reaped PID the supervisor does not know: true when
    /// it was a helper (one still in use is replaced: children it started
    /// are drover's own and keep running).
    pub fn on_helper_exit(&mut self, pid: Pid) -> bool {
        if let Some(at) = self.retired.iter().position(|p| *p == pid) {
            self.retired.swap_remove(at);
            return true;
        }
        let id = if self.forkserver.as_ref().is_some_and(|h| h.pid() == pid.0) {
            HelperId::ForkServer
        } else if let Some(group) = self
            .templates
            .iter()
            .find(|(_, t)| t.helper.pid() == pid.0)
            .map(|(g, _)| g.clone())
        {
            HelperId::Template(group)
        } else {
            return false;
        };
        self.broken(&id, Broken("exited".into()));
        self.retired.retain(|p| *p != pid);
        true
    }

    /// An unknown process was reaped: while answers are awaited it may be
    /// a child whose answer is still unread, so its exit is kept for it;
    /// or one whose answer was read in this turn and is not handed to the
    /// supervisor yet (see [`ProcessLauncher::take_completions`]), which
    /// then carries its exit.
    pub fn note_exit(&mut self, pid: Pid, status: ExitStatus) {
        let answered = self
            .completions
            .iter_mut()
            .find(|c| c.exited.is_none() && matches!(c.result, Ok(p) if p == pid));
        if let Some(c) = answered {
            c.exited = Some(status);
            return;
        }
        if self.pending() > 0 && self.early_exits.len() < EARLY_EXITS_MAX {
            self.early_exits.insert(pid, status);
        }
    }

    /// Starts awaiting an answer.
    fn pending(&self) -> usize {
        self.forkserver
            .iter()
            .chain(self.templates.values().map(|t| &t.helper))
            .map(Helper::pending)
            .sum()
    }

    /// Answers that arrived since the last call.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// Groups whose start context became ready (or failed to) since the
    /// last call.
    pub fn take_ready(&mut self) -> Vec<GroupName> {
        std::mem::take(&mut self.ready)
    }

    /// After a reload: templates of groups that no longer run Python
    /// functions under fork/forkserver are stopped, and what groups the
    /// reload removed left behind is dropped.
    pub fn retain_templates(&mut self, config: &crate::config::Config) {
        let gone: Vec<GroupName> = self
            .templates
            .keys()
            .filter(|name| {
                !config.groups.get(*name).is_some_and(|g| {
                    matches!(g.program, Program::Python { .. })
                        && g.start_method != StartMethod::Spawn
                })
            })
            .cloned()
            .collect();
        for group in gone {
            self.stop_template(&group);
        }
        // What removed groups left: their prepared starts (a few KiB of
        // environment each) and failure notes.
        let kept = |g: &GroupName| config.groups.contains_key(g);
        self.prepared.retain(|g, _| kept(g));
        self.import_failures.retain(|g, _| kept(g));
        self.template_failures.retain(|g, _| kept(g));
    }

    /// Stops `group`'s template; the starts it held fail.
    fn stop_template(&mut self, group: &GroupName) {
        if let Some(mut t) = self.templates.remove(group) {
            for p in self.retire(&mut t.helper) {
                self.complete_failed(p, "its python template was stopped".into(), false);
            }
        }
    }

    /// Starts `group`'s template without waiting for its imports.
    fn launch_template(&mut self, group: &GroupSpec) -> Result<(), LaunchError> {
        let devnull = self.devnull.as_raw_fd();
        let listeners = self.listener_fds(group)?;
        let prepared = self.prepared(group)?;
        let spec = Rc::clone(&prepared.spec);
        let (pid, socket) =
            python::launch(group, prepared, devnull, &listeners).map_err(LaunchError::Setup)?;
        let helper = Helper::new(pid, socket, Instant::now(), python::IMPORT_TIMEOUT, false);
        self.templates
            .insert(group.name.clone(), Template { helper, spec });
        Ok(())
    }

    /// Stops the fork server and the Python templates (they exit when
    /// their sockets close; SIGTERM makes sure). Returns their PIDs.
    pub fn stop_helpers(&mut self) -> Vec<Pid> {
        let mut helpers: Vec<Helper<Pending>> = self.forkserver.take().into_iter().collect();
        helpers.extend(self.templates.drain().map(|(_, t)| t.helper));
        let mut pids = Vec::new();
        for mut helper in helpers {
            let _ = kill(
                NixPid::from_raw(helper.pid()),
                nix::sys::signal::Signal::SIGTERM,
            );
            pids.push(Pid(helper.pid()));
            if let Some(token) = helper.token {
                self.tokens.remove(&token);
            }
            for p in helper.take_requests() {
                self.complete_failed(p, "drover is stopping".into(), false);
            }
        }
        pids
    }

    /// Starts a probe of `group` (a `ready` or `health` command): `argv`
    /// in the group's working directory with the group's environment,
    /// stdio on /dev/null, in a process group of its own. Returns its PID
    /// and a pidfd to reap it by. Not a child of the supervisor's.
    pub fn spawn_probe(
        &mut self,
        group: &GroupSpec,
        argv: &[OsString],
    ) -> Result<(Pid, Option<OwnedFd>), LaunchError> {
        let devnull = self.devnull.as_raw_fd();
        let prepared = self.prepared(group)?;
        let program = match prepared.probe_programs.get(&argv[0]) {
            Some(program) => program.clone(),
            None => {
                let search_path = prepared
                    .envp
                    .iter()
                    .find_map(|kv| kv.to_bytes().strip_prefix(b"PATH="))
                    .map(|p| std::ffi::OsStr::from_bytes(p).to_owned())
                    .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
                let found = prepare::resolve_program(&argv[0], &group.cwd, &search_path)?;
                let program = prepare::cstring(found.as_os_str());
                if prepared.probe_programs.len() < prepare::MAX_PROBE_PROGRAMS {
                    prepared
                        .probe_programs
                        .insert(argv[0].clone(), program.clone());
                }
                program
            }
        };
        let prepared = &*prepared;
        let plan = SpawnPlan {
            program,
            argv: argv.iter().map(|a| prepare::cstring(a)).collect(),
            envp: prepared.envp.clone(),
            cwd: prepared.cwd.clone(),
            fds: crate::sys::FdPlan {
                sources: vec![devnull, devnull, devnull],
            },
            // As the group's children: its user and limits.
            identity: prepared.identity.clone(),
        };
        let spawned = match spawn_child(&plan) {
            Ok(spawned) => spawned,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::NotFound
                    && let Some(p) = self.prepared.get_mut(&group.name)
                {
                    // Gone from where it was found: searched again next time.
                    p.probe_programs.remove(&argv[0]);
                }
                let name = plan.argv[0].clone();
                return Err(start_error(group, &name, e));
            }
        };
        let pidfd = spawned.pidfd.or_else(|| pidfd_open(spawned.pid).ok());
        Ok((Pid(spawned.pid), pidfd))
    }

    /// Whether children started since the last [`Self::take_outputs`].
    pub fn has_outputs(&self) -> bool {
        !self.outputs.is_empty()
    }

    /// Output pipes of the children started since the last call.
    pub fn take_outputs(&mut self) -> Vec<ChildOutput> {
        std::mem::take(&mut self.outputs)
    }

    /// What every start of `group` shares, prepared once per definition.
    fn prepared(&mut self, group: &GroupSpec) -> Result<&mut Prepared, LaunchError> {
        use std::collections::hash_map::Entry;
        let (base_env, inherited) = (&self.base_env, &self.inherited_sockets);
        match self.prepared.entry(group.name.clone()) {
            Entry::Occupied(fresh) if *fresh.get().spec == *group => Ok(fresh.into_mut()),
            entry => {
                let prepared = prepare_group(group, base_env, inherited.as_ref())?;
                Ok(match entry {
                    Entry::Occupied(mut stale) => {
                        stale.insert(prepared);
                        stale.into_mut()
                    }
                    Entry::Vacant(none) => none.insert(prepared),
                })
            }
        }
    }

    /// Whether `group`'s template can take a request now; launches (or
    /// replaces a stale) one as needed.
    fn template_ready(&mut self, group: &GroupSpec) -> Result<(), LaunchError> {
        if let Some(why) = self.import_failures.remove(&group.name) {
            return Err(LaunchError::Template(std::io::Error::other(why)));
        }
        if self
            .templates
            .get(&group.name)
            .is_some_and(|t| *t.spec != *group)
        {
            self.stop_template(&group.name);
        }
        if !self.templates.contains_key(&group.name) {
            self.launch_template(group)?;
        }
        match self.templates.get(&group.name) {
            Some(t) if t.helper.is_ready() => Ok(()),
            _ => Err(LaunchError::Warming {
                until: python::IMPORT_TIMEOUT,
            }),
        }
    }

    /// Sends a start to a helper; its answer comes as a completion.
    fn request(&mut self, id: HelperId, plan: &SpawnPlan, p: Pending) -> Started {
        let ticket = p.ticket;
        let fds = plan.fds.sources.clone();
        let now = Instant::now();
        let submitted = match &id {
            HelperId::ForkServer => self
                .forkserver
                .as_mut()
                .map(|h| h.submit(|seq, _| forkserver::request(seq, plan), fds, p, now)),
            HelperId::Template(g) => self.templates.get_mut(g).map(|t| {
                let build = |seq, p: &Pending| {
                    python::request(
                        seq,
                        &p.spec,
                        p.index,
                        &p.io.queues.variables(false),
                        p.io.notify_address(),
                    )
                };
                t.helper.submit(build, fds, p, now)
            }),
        };
        if let Some(Err(why)) = submitted {
            self.broken(&id, why);
        }
        Started::Requested(ticket)
    }
}

/// [`Prepared`] for `group`, whose children inherit `base_env` and, for a
/// `fork` command group without sockets of its own, the sockets drover was
/// given (`inherited`: their count and names).
fn prepare_group(
    group: &GroupSpec,
    base_env: &BTreeMap<OsString, OsString>,
    inherited: Option<&(u32, Option<String>)>,
) -> Result<Prepared, LaunchError> {
    let mut prepared = Prepared::new(group, base_env)?;
    let inherits = group.start_method == StartMethod::Fork
        && matches!(group.program, Program::Command(_))
        && group.sockets.is_empty();
    let inherited = inherited.filter(|_| inherits);
    if !group.sockets.is_empty() || inherited.is_some() {
        // drover's own variables describe the child's fds: none from the
        // group's `env` may shadow them.
        prepared.envp.retain(|e| !is_listen_variable(e.as_bytes()));
    }
    if let Some((count, names)) = inherited {
        let env = &mut prepared.envp;
        env.push(prepare::cstring(format!("LISTEN_FDS={count}").as_ref()));
        if let Some(names) = names {
            env.push(prepare::cstring(format!("LISTEN_FDNAMES={names}").as_ref()));
        }
        env.push(CString::new(crate::sys::PID_SLOT).expect("no NUL"));
    }
    Ok(prepared)
}

/// Whether `entry` (`NAME=value`) sets one of systemd's socket-activation
/// variables.
fn is_listen_variable(entry: &[u8]) -> bool {
    [&b"LISTEN_FDS="[..], b"LISTEN_PID=", b"LISTEN_FDNAMES="]
        .iter()
        .any(|p| entry.starts_with(p))
}

/// The `fork` method: stdio placed at 0, 1, 2; every other fd drover holds
/// without close-on-exec is inherited. The planned fds after stdio stay at
/// their numbers (`in_place`), or (a group with `sockets`) go to 3, 4, …;
/// the copies that make room for that must live until the fork.
fn fork_setup(plan: &SpawnPlan, in_place: bool) -> std::io::Result<(ExecSetup, Vec<OwnedFd>)> {
    if !in_place {
        let (sources, moved) = crate::sys::relocate(&plan.fds.sources, 0)?;
        let setup = ExecSetup::new(
            plan.program.clone(),
            plan.argv.clone(),
            plan.envp.clone(),
            plan.cwd.clone(),
            FdSetup {
                dups: sources
                    .iter()
                    .enumerate()
                    .map(|(target, &source)| (source, target as i32))
                    .collect(),
                keep: Vec::new(),
                close_from: None,
            },
        );
        return Ok((setup, moved));
    }
    let setup = ExecSetup::new(
        plan.program.clone(),
        plan.argv.clone(),
        plan.envp.clone(),
        plan.cwd.clone(),
        FdSetup {
            dups: plan
                .fds
                .sources
                .iter()
                .take(3)
                .enumerate()
                .map(|(target, &source)| (source, target as i32))
                .collect(),
            keep: plan.fds.sources.iter().skip(3).copied().collect(),
            close_from: None,
        },
    )
    .with_identity(&plan.identity);
    Ok((setup, Vec::new()))
}

impl Launcher for ProcessLauncher {
    fn start(&mut self, group: &GroupSpec, index: u32) -> Result<Started, LaunchError> {
        if self.starts_this_turn >= STARTS_PER_TURN {
            return Err(LaunchError::Deferred);
        }
        let python = matches!(group.program, Program::Python { .. });
        let helper = match group.start_method {
            StartMethod::Spawn => None,
            StartMethod::Fork | StartMethod::Forkserver if python => {
                self.template_ready(group)?;
                Some(HelperId::Template(group.name.clone()))
            }
            StartMethod::Fork => None,
            StartMethod::Forkserver => {
                if self.forkserver.is_none() {
                    self.start_forkserver().map_err(LaunchError::Setup)?;
                }
                Some(HelperId::ForkServer)
            }
        };
        self.starts_this_turn += 1;
        let devnull = self.devnull.as_raw_fd();
        let prepared = self.prepared(group)?;
        let (spec, program) = (Rc::clone(&prepared.spec), prepared.argv[0].clone());
        // A template's workers inherit the sockets from the template.
        let listeners = match helper {
            Some(HelperId::Template(_)) => Vec::new(),
            _ => self.listener_fds(group)?,
        };
        let prepared = &self.prepared[&group.name];
        let (plan, io) = ChildIo::plan(group, index, prepared, devnull, &listeners)
            .map_err(LaunchError::Setup)?;
        if let Some(id) = helper {
            self.next_ticket += 1;
            let pending = Pending {
                ticket: self.next_ticket,
                spec,
                index,
                io,
                program,
            };
            return Ok(self.request(id, &plan, pending));
        }
        // A pidfd for every child started here: its exit is reaped through
        // it, without scanning every child. (The PID cannot have been
        // reused yet: only this thread reaps.)
        let started = match group.start_method {
            StartMethod::Fork => {
                fork_setup(&plan, plan::keeps_fd_numbers(group)).and_then(|(setup, _moved)| {
                    fork_exec(&setup, ForkKind::Fork).map(|pid| (pid, pidfd_open(pid).ok()))
                })
            }
            _ => spawn_child(&plan).map(|s| {
                if s.exec_pending {
                    tracing::warn!(
                        group = %group.name,
                        index,
                        pid = s.pid,
                        "still in its execve after {} ms (a program, interpreter or cwd on a \
                         mount that does not answer?): not waiting for it",
                        drover_sys::EXEC_WAIT.as_millis()
                    );
                }
                let pidfd = s.pidfd.or_else(|| pidfd_open(s.pid).ok());
                (s.pid, pidfd)
            }),
        };
        match started {
            Ok((pid, pidfd)) => {
                self.outputs
                    .push(io.into_output(&group.name, index, Pid(pid), pidfd));
                Ok(Started::Running(Pid(pid)))
            }
            Err(e) => {
                if e.kind() == std::io::ErrorKind::NotFound {
                    // Found on PATH before, gone now: look again next time.
                    self.prepared.remove(&group.name);
                }
                Err(start_error(group, &program, e))
            }
        }
    }

    fn signal_group(&mut self, pid: Pid, signal: Signal) {
        if pid.0 <= 1 {
            return; // never drover's own group, never every process
        }
        if let Err(err) = killpg(NixPid::from_raw(pid.0), signal.to_nix()) {
            tracing::debug!(pid = pid.0, %signal, "killpg: {err}");
        }
    }

    fn signal(&mut self, pid: Pid, signal: Signal) {
        if let Err(err) = kill(NixPid::from_raw(pid.0), signal.to_nix()) {
            tracing::debug!(pid = pid.0, %signal, "kill: {err}");
        }
    }

    fn group_alive(&mut self, pgid: Pid) -> bool {
        // Signal 0 checks for existence; EPERM means a member exists that we
        // may not signal (it changed its uid), which still counts.
        !matches!(
            killpg_probe(pgid),
            Err(nix::errno::Errno::ESRCH) | Err(nix::errno::Errno::EINVAL)
        )
    }
}

/// `killpg(pgid, 0)`: whether process group `pgid` has any member.
fn killpg_probe(pgid: Pid) -> nix::Result<()> {
    if pgid.0 <= 1 {
        // Never probe (or later signal) group 0 or 1: that is drover's own
        // group, or every process.
        return Err(nix::errno::Errno::EINVAL);
    }
    nix::sys::signal::killpg(NixPid::from_raw(pgid.0), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::names::GroupName;

    fn spec() -> Rc<GroupSpec> {
        Rc::new(GroupSpec {
            name: GroupName::new("w").unwrap(),
            program: Program::Command(vec!["true".into()]),
            python_executable: "python3".into(),
            start_method: StartMethod::Forkserver,
            processes: 1,
            inputs: vec![],
            outputs: vec![],
            confirm_outputs: vec![],
            env: BTreeMap::new(),
            env_files: Vec::new(),
            clear_env: false,
            cwd: "/".into(),
            policy: Default::default(),
            update: Default::default(),
            after: Vec::new(),
            sockets: Vec::new(),
            file: "t.toml".into(),
            user: None,
            rlimits: Default::default(),
        })
    }

    /// The answer was read earlier in the turn, the child was reaped
    /// before the supervisor took the answer: the exit rides with it
    /// (it used to be dropped, and the child looked alive forever).
    #[test]
    fn an_exit_reaped_after_its_answer_was_read_goes_with_the_answer() {
        let mut launcher = ProcessLauncher::new(BTreeMap::new()).unwrap();
        launcher.completions.push(Completion {
            spec: spec(),
            index: 0,
            ticket: 1,
            result: Ok(Pid(4242)),
            exited: None,
        });
        launcher.note_exit(Pid(4242), ExitStatus::Code(0));
        let done = launcher.take_completions();
        assert_eq!(done[0].exited, Some(ExitStatus::Code(0)));
    }

    /// A probe's program is searched on PATH once per definition (a health
    /// check every few seconds no longer stats every PATH entry each time):
    /// moved away, its next run fails and the one after finds it again.
    #[test]
    fn a_probe_program_is_found_once_and_searched_again_when_it_is_gone() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = crate::testing::TempDir::new("probe-path", "once");
        let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
        std::fs::create_dir_all(&first).unwrap();
        std::fs::create_dir_all(&second).unwrap();
        let program = first.join("drover-probe-test");
        std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut group = (*spec()).clone();
        group.start_method = StartMethod::Spawn;
        group.program = Program::Command(vec!["/bin/true".into()]);
        let path = format!("{}:{}", first.display(), second.display());
        group.env.insert("PATH".into(), path);
        let mut launcher = ProcessLauncher::new(BTreeMap::new()).unwrap();
        let argv = [OsString::from("drover-probe-test")];
        let run = |launcher: &mut ProcessLauncher| {
            launcher
                .spawn_probe(&group, &argv)
                .map(|(pid, _)| nix::sys::wait::waitpid(NixPid::from_raw(pid.0), None).unwrap())
        };
        run(&mut launcher).unwrap();
        std::fs::rename(&program, second.join("drover-probe-test")).unwrap();
        // Where it was found: gone.
        assert!(run(&mut launcher).is_err());
        // Searched again: found in the second directory.
        run(&mut launcher).unwrap();
    }
}
