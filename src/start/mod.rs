//! The real [`Launcher`]: turns a group spec into a started process.
//!
//! It prepares everything a child needs (resolved program, argv, envp, fd
//! plan with its log pipes) and hands it to [`crate::sys::spawn`]. The read
//! ends of each child's stdout/stderr pipes are queued in
//! [`ProcessLauncher::take_outputs`] for the runtime to watch.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::signal::{kill, killpg};
use nix::unistd::{Pid as NixPid, pipe2};

use crate::broker::{Direction, socket_pair};
use crate::config::names::{GroupName, QueueName};
use crate::config::{GroupSpec, Program, StartMethod};
pub mod python;

use crate::config::signal::Signal;
use crate::supervisor::{LaunchError, Launcher, Pid};
use crate::sys::forkexec::{ExecSetup, FdSetup, ForkKind, fork_exec};
use crate::sys::forkserver::ForkServer;
use crate::sys::{FdPlan, SpawnPlan, spawn};
use python::Templates;

/// The variables `clear_env = true` keeps from drover's own environment.
const KEPT_BY_CLEAR_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// A started child's output pipes, for the log router.
#[derive(Debug)]
pub struct ChildOutput {
    pub group: GroupName,
    pub index: u32,
    pub pid: Pid,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The broker's ends of the child's queue sockets.
    pub queues: Vec<(QueueName, Direction, OwnedFd)>,
}

/// Starts children through their group's start-method context; see the
/// module documentation.
#[derive(Debug)]
pub struct ProcessLauncher {
    base_env: BTreeMap<OsString, OsString>,
    devnull: OwnedFd,
    outputs: Vec<ChildOutput>,
    /// The `forkserver` context's server, started on first use.
    forkserver: Option<ForkServer>,
    /// Template interpreters of Python groups under fork / forkserver.
    templates: Templates,
    /// Per group, what every start shares.
    prepared: HashMap<GroupName, Prepared>,
    /// Processes started in this loop turn (see [`STARTS_PER_TURN`]).
    starts_this_turn: u32,
}

/// The most processes started in one loop turn: a scale-up to thousands, or
/// a crash storm, must not keep the loop from reaping, serving `status` and
/// moving queue traffic (one start costs about half a millisecond).
pub const STARTS_PER_TURN: u32 = 64;

impl ProcessLauncher {
    /// A launcher whose children inherit `base_env` (drover's environment).
    pub fn new(base_env: BTreeMap<OsString, OsString>) -> std::io::Result<Self> {
        let devnull = std::fs::File::open("/dev/null")?.into();
        Ok(ProcessLauncher {
            base_env,
            devnull,
            outputs: Vec::new(),
            forkserver: None,
            templates: Templates::default(),
            prepared: HashMap::new(),
            starts_this_turn: 0,
        })
    }

    /// A new loop turn: the start budget is full again.
    pub fn new_turn(&mut self) {
        self.starts_this_turn = 0;
    }

    /// Starts the fork server now (drover calls this before it has any
    /// thread when a group uses `forkserver`; later starts are on demand).
    pub fn start_forkserver(&mut self) -> std::io::Result<i32> {
        let server = ForkServer::start(
            Path::new("/proc/self/exe"),
            self.devnull.as_raw_fd(),
            std::io::stderr().as_raw_fd(),
        )?;
        let pid = server.pid();
        tracing::debug!(pid, "fork server started");
        self.forkserver = Some(server);
        Ok(pid)
    }

    /// Whether `pid` is one of drover's helpers (the fork server, a Python
    /// template) rather than a child or an orphan.
    pub fn is_helper(&self, pid: Pid) -> bool {
        self.forkserver_pid() == Some(pid.0) || self.templates.is_template(pid.0)
    }

    /// The fork server's PID, if one runs.
    pub fn forkserver_pid(&self) -> Option<i32> {
        self.forkserver.as_ref().map(ForkServer::pid)
    }

    /// Called for every reaped PID the supervisor does not know. When it is
    /// the fork server, a new one is started at once; children it started
    /// are drover's own and keep running.
    pub fn on_unknown_exit(&mut self, pid: Pid) -> bool {
        match self.templates.on_exit(pid.0) {
            Some(Some(spec)) => {
                // It had imported fine: replace it now, so the next start
                // does not wait for the import.
                if let Err(e) = self.relaunch_template(&spec) {
                    tracing::error!(group = %spec.name, "cannot restart the python template: {e}");
                }
                return true;
            }
            Some(None) => return true,
            None => {}
        }
        if self.forkserver_pid() != Some(pid.0) {
            return false;
        }
        self.forkserver = None;
        tracing::warn!(pid = pid.0, "the fork server exited; starting a new one");
        if let Err(e) = self.start_forkserver() {
            tracing::error!("cannot restart the fork server: {e}; forkserver starts will retry");
        }
        true
    }

    /// After a reload: templates of groups that no longer run Python
    /// functions under fork/forkserver are stopped.
    pub fn retain_templates(&mut self, config: &crate::config::Config) {
        self.templates.retain(|name| {
            config.groups.get(name).is_some_and(|g| {
                matches!(g.program, Program::Python { .. }) && g.start_method != StartMethod::Spawn
            })
        });
    }

    fn relaunch_template(&mut self, group: &GroupSpec) -> Result<(), LaunchError> {
        let devnull = self.devnull.as_raw_fd();
        let prepared = self.prepared(group)?;
        let plan = SpawnPlan {
            program: prepared.program.clone(),
            argv: prepared.argv.clone(),
            envp: prepared.envp.clone(),
            cwd: prepared.cwd.clone(),
            fds: FdPlan {
                sources: vec![devnull],
            },
        };
        self.templates
            .relaunch(group, &plan)
            .map_err(LaunchError::Setup)
    }

    /// Python templates launched since the last call, with their sockets:
    /// the runtime watches them until they are ready.
    pub fn take_launched_templates(&mut self) -> Vec<GroupName> {
        self.templates.take_launched()
    }

    /// The socket of `group`'s Python template, while it has one.
    pub fn template_socket(&self, group: &GroupName) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.templates.socket(group)
    }

    /// A watched template socket is readable; true when its group's waiting
    /// children should try again (the template is ready, or gone).
    pub fn template_readable(&mut self, group: &GroupName) -> bool {
        self.templates.on_readable(group)
    }

    /// Stops the fork server and the Python templates (they exit when
    /// their sockets close; SIGTERM makes sure). Returns their PIDs.
    pub fn stop_helpers(&mut self) -> Vec<Pid> {
        let mut pids: Vec<Pid> = self.templates.stop_all().into_iter().map(Pid).collect();
        if let Some(server) = self.forkserver.take() {
            let _ = kill(
                NixPid::from_raw(server.pid()),
                nix::sys::signal::Signal::SIGTERM,
            );
            pids.push(Pid(server.pid()));
        }
        pids
    }

    /// Starts `plan` through the fork server, starting (or replacing a dead)
    /// server as needed.
    fn spawn_via_forkserver(&mut self, plan: &SpawnPlan) -> std::io::Result<i32> {
        if self.forkserver.is_none() {
            self.start_forkserver()?;
        }
        let server = self.forkserver.as_ref().expect("just started");
        match server.spawn(plan) {
            Err(e) if server_gone(&e) => {
                tracing::warn!("the fork server did not answer ({e}); starting a new one");
                self.start_forkserver()?;
                self.forkserver.as_ref().expect("just started").spawn(plan)
            }
            other => other,
        }
    }

    /// Output pipes of the children started since the last call.
    pub fn take_outputs(&mut self) -> Vec<ChildOutput> {
        std::mem::take(&mut self.outputs)
    }

    /// The part of a child's environment that is the same for every child
    /// of `group`: drover's environment (or its PATH, HOME, LANG and TZ with
    /// `clear_env`) overlaid by `env`, plus `DROVER_GROUP` and
    /// `DROVER_START_METHOD`.
    fn group_environment(&self, group: &GroupSpec) -> Vec<CString> {
        let mut env: BTreeMap<OsString, OsString> = if group.clear_env {
            self.base_env
                .iter()
                .filter(|(k, _)| KEPT_BY_CLEAR_ENV.iter().any(|kept| k.as_os_str() == *kept))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            self.base_env.clone()
        };
        // Set per child below; drover may itself run under a drover.
        env.retain(|k, _| {
            let k = k.as_bytes();
            k != b"DROVER_INDEX" && !k.starts_with(b"DROVER_IN_") && !k.starts_with(b"DROVER_OUT_")
        });
        for (k, v) in &group.env {
            env.insert(k.into(), v.into());
        }
        env.insert("DROVER_GROUP".into(), group.name.as_str().into());
        env.insert(
            "DROVER_START_METHOD".into(),
            group.start_method.as_str().into(),
        );
        env.into_iter()
            .filter_map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok()
            })
            .collect()
    }

    /// What every start of `group` shares, prepared once per definition:
    /// argv, the program found on PATH, the environment.
    fn prepared(&mut self, group: &GroupSpec) -> Result<&Prepared, LaunchError> {
        let fresh = self
            .prepared
            .get(&group.name)
            .is_some_and(|p| p.spec == *group);
        if !fresh {
            let argv: Vec<OsString> = match &group.program {
                Program::Command(argv) => argv.clone(),
                Program::Python { .. } => python::argv(group).expect("a python group"),
            };
            let search_path = group
                .env
                .get("PATH")
                .map(OsString::from)
                .or_else(|| self.base_env.get(OsStr::new("PATH")).cloned())
                .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
            let program = resolve_program(&argv[0], &group.cwd, &search_path)?;
            let prepared = Prepared {
                spec: group.clone(),
                program: cstring(program.as_os_str()),
                argv: argv.iter().map(|a| cstring(a)).collect(),
                envp: self.group_environment(group),
                cwd: cstring(group.cwd.as_os_str()),
            };
            self.prepared.insert(group.name.clone(), prepared);
        }
        Ok(&self.prepared[&group.name])
    }

    fn plan(&mut self, group: &GroupSpec, index: u32) -> Result<(SpawnPlan, ChildIo), LaunchError> {
        let queues = QueueSockets::new(group).map_err(LaunchError::Setup)?;
        let pipes = Pipes::new().map_err(LaunchError::Setup)?;
        let devnull = self.devnull.as_raw_fd();
        let prepared = self.prepared(group)?;
        let mut envp = prepared.envp.clone();
        envp.push(cstring(format!("DROVER_INDEX={index}").as_ref()));
        for (k, v) in queues.variables(keeps_fd_numbers(group)) {
            envp.push(cstring(format!("{k}={v}").as_ref()));
        }
        let mut sources = vec![
            devnull,
            pipes.stdout_w.as_raw_fd(),
            pipes.stderr_w.as_raw_fd(),
        ];
        sources.extend(queues.theirs.iter().map(AsRawFd::as_raw_fd));
        let plan = SpawnPlan {
            program: prepared.program.clone(),
            argv: prepared.argv.clone(),
            envp,
            cwd: prepared.cwd.clone(),
            fds: FdPlan { sources },
        };
        Ok((plan, ChildIo { pipes, queues }))
    }
}

/// What every start of a group shares (see [`ProcessLauncher::prepared`]).
#[derive(Debug)]
struct Prepared {
    /// The definition it was prepared for; another one prepares again.
    spec: GroupSpec,
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
}

/// Everything a starting child is given besides stdin.
struct ChildIo {
    pipes: Pipes,
    queues: QueueSockets,
}

/// One socket pair per queue the group names (inputs first, then outputs).
struct QueueSockets {
    names: Vec<(QueueName, Direction)>,
    ours: Vec<OwnedFd>,
    theirs: Vec<OwnedFd>,
}

impl QueueSockets {
    fn new(group: &GroupSpec) -> std::io::Result<QueueSockets> {
        let names: Vec<(QueueName, Direction)> = group
            .inputs
            .iter()
            .map(|q| (q.clone(), Direction::In))
            .chain(group.outputs.iter().map(|q| (q.clone(), Direction::Out)))
            .collect();
        let mut ours = Vec::with_capacity(names.len());
        let mut theirs = Vec::with_capacity(names.len());
        for _ in &names {
            let (a, b) = socket_pair()?;
            ours.push(a);
            theirs.push(b);
        }
        Ok(QueueSockets {
            names,
            ours,
            theirs,
        })
    }

    /// `DROVER_IN_<QUEUE>` / `DROVER_OUT_<QUEUE>` = the fd number the child
    /// will find its end at: 3, 4, … after stdio, or (`in_place`: the fork
    /// method for commands, which keeps fds where they are) its own number.
    fn variables(&self, in_place: bool) -> Vec<(String, String)> {
        self.names
            .iter()
            .zip(&self.theirs)
            .enumerate()
            .map(|(i, ((queue, direction), fd))| {
                let prefix = match direction {
                    Direction::In => "DROVER_IN_",
                    Direction::Out => "DROVER_OUT_",
                };
                let number = if in_place {
                    fd.as_raw_fd()
                } else {
                    3 + i as i32
                };
                (
                    format!("{prefix}{}", queue.env_suffix()),
                    number.to_string(),
                )
            })
            .collect()
    }

    /// The broker's ends, once the child runs.
    fn into_ours(self) -> Vec<(QueueName, Direction, OwnedFd)> {
        self.names
            .into_iter()
            .zip(self.ours)
            .map(|((q, d), fd)| (q, d, fd))
            .collect()
    }
}

/// The pipes a child writes its stdout and stderr into.
struct Pipes {
    stdout_r: OwnedFd,
    stdout_w: OwnedFd,
    stderr_r: OwnedFd,
    stderr_w: OwnedFd,
}

impl Pipes {
    fn new() -> std::io::Result<Self> {
        let flags = OFlag::O_CLOEXEC;
        let (stdout_r, stdout_w) = pipe2(flags)?;
        let (stderr_r, stderr_w) = pipe2(flags)?;
        for r in [&stdout_r, &stderr_r] {
            nix::fcntl::fcntl(r, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        }
        Ok(Pipes {
            stdout_r,
            stdout_w,
            stderr_r,
            stderr_w,
        })
    }
}

fn cstring(s: &OsStr) -> CString {
    // Config values cannot contain NUL (TOML strings may, but validation
    // rejects env keys with NUL); replace defensively rather than panic.
    CString::new(s.as_bytes().to_vec()).unwrap_or_else(|e| {
        let mut bytes = e.into_vec();
        bytes.retain(|b| *b != 0);
        CString::new(bytes).expect("NUL bytes removed")
    })
}

/// Finds the file to execute: a name with a `/` is relative to `cwd`;
/// otherwise it is searched in `search_path` like `execvp` does.
pub fn resolve_program(
    program: &OsStr,
    cwd: &Path,
    search_path: &OsStr,
) -> Result<PathBuf, LaunchError> {
    if program.as_bytes().contains(&b'/') {
        return Ok(cwd.join(program));
    }
    std::env::split_paths(search_path)
        .map(|dir| cwd.join(dir).join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| LaunchError::NotFound {
            program: program.to_string_lossy().into_owned(),
            path: search_path.to_string_lossy().into_owned(),
        })
}

/// Whether a child keeps its queue fds at drover's numbers (a command
/// under `fork`) rather than at 3, 4, … after stdio.
fn keeps_fd_numbers(group: &GroupSpec) -> bool {
    group.start_method == StartMethod::Fork && matches!(group.program, Program::Command(_))
}

/// Errors that mean the fork server is dead or wedged, not that the
/// program failed.
fn server_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | NotConnected | WouldBlock | TimedOut
    )
}

/// The `fork` method: stdio placed at 0, 1, 2; every other fd drover holds
/// without close-on-exec is inherited.
fn fork_setup(plan: &SpawnPlan) -> ExecSetup {
    ExecSetup::new(
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
}

/// What a Python worker forked from its template sets in its environment:
/// its index and group, and its queue variables, as indexes of the fds sent
/// (the queue sockets follow stdin, stdout and stderr, see `plan`): the
/// template sets each to the fd its socket lands at.
fn worker_env(group: &GroupSpec, index: u32, queues: &QueueSockets) -> python::WorkerSetup {
    let queues = queues
        .variables(false)
        .into_iter()
        .enumerate()
        .map(|(i, (name, _))| (name, 3 + i))
        .collect();
    let mut env = HashMap::new();
    env.insert("DROVER_INDEX".into(), index.to_string());
    env.insert("DROVER_GROUP".into(), group.name.to_string());
    env.insert(
        "DROVER_START_METHOD".into(),
        group.start_method.as_str().into(),
    );
    python::WorkerSetup { env, queues }
}

/// A start that failed with `ENOENT` or `ENOTDIR` may have failed at the
/// `chdir` (all three start paths report it as the exec's error): if the
/// working directory is what is missing, that is the error to show. Looked
/// at only after a failure, so a start that works costs no extra syscall.
fn cwd_error(group: &GroupSpec, error: &std::io::Error) -> Option<LaunchError> {
    if !matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) {
        return None;
    }
    let (cwd, name) = (group.cwd.clone(), group.name.clone());
    match std::fs::metadata(&group.cwd) {
        Ok(meta) if meta.is_dir() => None,
        Ok(_) => Some(LaunchError::CwdNotDirectory { cwd, group: name }),
        Err(_) => Some(LaunchError::CwdMissing { cwd, group: name }),
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Launcher for ProcessLauncher {
    fn start(&mut self, group: &GroupSpec, index: u32) -> Result<Pid, LaunchError> {
        if self.starts_this_turn >= STARTS_PER_TURN {
            return Err(LaunchError::Deferred);
        }
        self.starts_this_turn += 1;
        let (plan, io) = self.plan(group, index)?;
        let python = matches!(group.program, Program::Python { .. });
        let started = match group.start_method {
            StartMethod::Spawn => spawn(&plan),
            _ if python => {
                let setup = worker_env(group, index, &io.queues);
                match self.templates.start_worker(group, &plan, &setup) {
                    Ok(pid) => Ok(pid),
                    // The interpreter is not what failed: say so, not "cannot
                    // execute python3: Broken pipe".
                    Err(python::StartError::Failed(e)) => return Err(LaunchError::Template(e)),
                    Err(python::StartError::Warming) => {
                        return Err(LaunchError::Warming {
                            until: python::IMPORT_TIMEOUT,
                        });
                    }
                }
            }
            StartMethod::Fork => fork_exec(&fork_setup(&plan), ForkKind::Fork),
            StartMethod::Forkserver => self.spawn_via_forkserver(&plan),
        };
        if started
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            // Found on PATH before, gone now: look again next time.
            self.prepared.remove(&group.name);
        }
        let pid = started.map_err(|source| {
            cwd_error(group, &source).unwrap_or_else(|| LaunchError::Exec {
                program: plan.argv[0].to_string_lossy().into_owned(),
                source,
            })
        })?;
        let pid = Pid(pid);
        let ChildIo { pipes, queues } = io;
        drop(pipes.stdout_w);
        drop(pipes.stderr_w);
        self.outputs.push(ChildOutput {
            group: group.name.clone(),
            index,
            pid,
            stdout: pipes.stdout_r,
            stderr: pipes.stderr_r,
            queues: queues.into_ours(),
        });
        Ok(pid)
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
