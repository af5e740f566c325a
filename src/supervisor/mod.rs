//! The pure heart of drover: child state machines driven by events.
//!
//! [`Supervisor`] owns the desired configuration and the table of child
//! slots. It never touches the OS itself: every start and signal goes through
//! a [`Launcher`], and time comes in as an argument. The runtime feeds it
//! events (a child exited, a deadline passed, a control request, a shutdown
//! signal) and asks for the next deadline; unit tests drive it with a fake
//! launcher and a fake clock.

mod child;
mod reload;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Instant;

pub use child::{AfterStop, Child, ChildState, ExitStatus, Pid, backoff_delay, wants_restart};
pub use reload::ReloadSummary;

use crate::config::{Config, GroupSpec};
use crate::names::GroupName;
use crate::signal::Signal;

/// Starts processes and delivers signals on the supervisor's behalf.
pub trait Launcher {
    /// Starts child `index` of `group`. An error is a failed start (for
    /// instance a command that cannot be executed).
    fn start(&mut self, group: &GroupSpec, index: u32) -> Result<Pid, LaunchError>;
    /// Sends `signal` to the process group led by `pid`.
    fn signal_group(&mut self, pid: Pid, signal: Signal);
    /// Sends `signal` to `pid` alone.
    fn signal(&mut self, pid: Pid, signal: Signal);
}

/// Why a start failed before the program ran.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("`{program}` not found (searched PATH={path})")]
    NotFound { program: String, path: String },
    #[error("cannot execute `{program}`: {source}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The start failed because the group's working directory is missing
    /// (`posix_spawn` reports a failed `chdir` as the exec's error).
    #[error("working directory {} does not exist (cwd of group {group})", cwd.display())]
    CwdMissing {
        cwd: std::path::PathBuf,
        group: crate::names::GroupName,
    },
    /// Like [`LaunchError::CwdMissing`], for a working directory that is
    /// something else than a directory.
    #[error("working directory {} is not a directory (cwd of group {group})", cwd.display())]
    CwdNotDirectory {
        cwd: std::path::PathBuf,
        group: crate::names::GroupName,
    },
    #[error("cannot prepare the child: {0}")]
    Setup(#[source] std::io::Error),
    /// The group's start context is still getting ready (a Python template
    /// importing its module). Not a failure: the start is retried when the
    /// runtime reports the context ready ([`Supervisor::context_ready`]), or
    /// after `until` at the latest.
    #[error("its python template is still importing")]
    Warming { until: std::time::Duration },
}

/// A group as the supervisor runs it: its spec and its child slots.
#[derive(Debug)]
pub struct Group {
    pub spec: GroupSpec,
    pub children: Vec<Child>,
    /// Stopped with `drover stop GROUP`; nothing starts until `start`.
    pub held: bool,
}

/// A process on its way out: replaced by a reload, scaled away, or of a
/// removed group. It is never restarted.
#[derive(Debug)]
pub struct Retiring {
    pub group: GroupName,
    /// The definition it was started with (its stop signal and timeout).
    pub spec: GroupSpec,
    pub child: Child,
    /// Still running until the new child of this index runs (rolling
    /// restart); `None` once it is being stopped.
    pub successor: Option<u32>,
}

/// A control request that acts on a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupCommand {
    Start,
    Stop,
    Restart,
}

/// A group name that matched nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no group named `{0}`")]
pub struct UnknownGroup(pub String);

/// Owner of every child slot; see the module documentation.
#[derive(Debug)]
pub struct Supervisor {
    groups: BTreeMap<GroupName, Group>,
    retiring: Vec<Retiring>,
    shutting_down: bool,
    /// Some process had to be SIGKILLed during shutdown.
    forced: bool,
}

impl Supervisor {
    /// A supervisor for `config` with nothing started yet; call [`Self::start_all`].
    pub fn new(config: &Config) -> Self {
        let groups = config
            .groups
            .iter()
            .map(|(name, spec)| {
                let children = (0..spec.processes).map(Child::new).collect();
                let group = Group {
                    spec: spec.clone(),
                    children,
                    held: false,
                };
                (name.clone(), group)
            })
            .collect();
        Supervisor {
            groups,
            retiring: Vec::new(),
            shutting_down: false,
            forced: false,
        }
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// True once shutdown was asked for and no child process is left.
    pub fn is_finished(&self) -> bool {
        self.shutting_down && self.live_pids().next().is_none()
    }

    /// Whether shutdown had to SIGKILL anything.
    pub fn was_forced(&self) -> bool {
        self.forced
    }

    /// Every PID drover started that has not been reaped yet.
    pub fn live_pids(&self) -> impl Iterator<Item = Pid> + '_ {
        self.groups
            .values()
            .flat_map(|g| g.children.iter().filter_map(|c| c.state.pid()))
            .chain(self.retiring.iter().filter_map(|r| r.child.state.pid()))
    }

    /// Starts every child of every group.
    pub fn start_all(&mut self, launcher: &mut impl Launcher, now: Instant) {
        for group in self.groups.values_mut() {
            for child in &mut group.children {
                start_child(&group.spec, child, launcher, now);
            }
        }
    }

    /// The earliest deadline of any child, for the event loop's wait.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups
            .values()
            .flat_map(|g| g.children.iter().map(move |c| (g, c)))
            .filter_map(|(g, c)| c.state.deadline(&g.spec.policy))
            .chain(
                self.retiring
                    .iter()
                    .filter_map(|r| r.child.state.deadline(&r.spec.policy)),
            )
            .min()
    }

    /// Acts on every deadline that has passed at `now`.
    pub fn on_deadline(&mut self, launcher: &mut impl Launcher, now: Instant) {
        for group in self.groups.values_mut() {
            for child in &mut group.children {
                let killed = child_deadline(&group.spec, child, launcher, now);
                self.forced |= killed && self.shutting_down;
            }
        }
        for r in &mut self.retiring {
            let killed = child_deadline(&r.spec, &mut r.child, launcher, now);
            self.forced |= killed && self.shutting_down;
        }
        self.advance_rolling(launcher, now);
    }

    /// A child process was reaped. Returns false when the PID is not ours
    /// (an orphan re-parented to drover, reaped and forgotten).
    pub fn on_exit(
        &mut self,
        pid: Pid,
        status: ExitStatus,
        launcher: &mut impl Launcher,
        now: Instant,
    ) -> bool {
        if let Some(pos) = self
            .retiring
            .iter()
            .position(|r| r.child.state.pid() == Some(pid))
        {
            let r = self.retiring.remove(pos);
            tracing::debug!(group = %r.group, index = r.child.index, ?status, "retired");
            return true;
        }
        let shutting_down = self.shutting_down;
        for group in self.groups.values_mut() {
            let held = group.held;
            if let Some(child) = group
                .children
                .iter_mut()
                .find(|c| c.state.pid() == Some(pid))
            {
                let may_restart = !shutting_down && !held;
                child_exited(&group.spec, child, status, may_restart, launcher, now);
                self.advance_rolling(launcher, now);
                return true;
            }
        }
        false
    }

    /// `drover start|stop|restart GROUP`.
    pub fn group_command(
        &mut self,
        name: &str,
        command: GroupCommand,
        launcher: &mut impl Launcher,
        now: Instant,
    ) -> Result<(), UnknownGroup> {
        let group = self
            .groups
            .values_mut()
            .find(|g| g.spec.name.as_str() == name)
            .ok_or_else(|| UnknownGroup(name.to_owned()))?;
        if self.shutting_down {
            return Ok(());
        }
        match command {
            GroupCommand::Stop => {
                group.held = true;
                for child in &mut group.children {
                    stop_child(&group.spec, child, AfterStop::Stay, launcher, now);
                }
                stop_predecessors(&mut self.retiring, name, None, launcher, now);
            }
            GroupCommand::Start => {
                group.held = false;
                for child in &mut group.children {
                    if child.state.pid().is_none() {
                        child.failed_starts = 0;
                        start_child(&group.spec, child, launcher, now);
                    }
                }
            }
            GroupCommand::Restart => {
                group.held = false;
                stop_predecessors(&mut self.retiring, name, None, launcher, now);
                for child in &mut group.children {
                    child.failed_starts = 0;
                    match child.state {
                        ChildState::Stopping { ref mut after, .. } => *after = AfterStop::Restart,
                        ChildState::Starting { .. } | ChildState::Running { .. } => {
                            stop_child(&group.spec, child, AfterStop::Restart, launcher, now)
                        }
                        _ => start_child(&group.spec, child, launcher, now),
                    }
                }
            }
        }
        Ok(())
    }

    /// Restarts the one child whose process is `pid` (a consumer that held a
    /// message past `ack_timeout`): `stop_signal`, SIGKILL after
    /// `stop_timeout`, then a fresh start whatever its exit. Returns false
    /// when `pid` is not a current child (already gone, or retiring).
    pub fn restart_child(&mut self, pid: Pid, launcher: &mut impl Launcher, now: Instant) -> bool {
        if self.shutting_down {
            return false;
        }
        for group in self.groups.values_mut() {
            if let Some(child) = group
                .children
                .iter_mut()
                .find(|c| c.state.pid() == Some(pid))
            {
                stop_child(&group.spec, child, AfterStop::Restart, launcher, now);
                return true;
            }
        }
        false
    }

    /// The start context of `name` became ready (a Python template finished
    /// its imports): the children waiting for it start now.
    pub fn context_ready(&mut self, name: &GroupName, launcher: &mut impl Launcher, now: Instant) {
        if self.shutting_down {
            return;
        }
        if let Some(group) = self.groups.get_mut(name).filter(|g| !g.held) {
            for child in &mut group.children {
                if matches!(child.state, ChildState::Backoff { .. }) {
                    start_child(&group.spec, child, launcher, now);
                }
            }
        }
        self.advance_rolling(launcher, now);
    }

    /// Starts a shutdown without stopping anything yet: nothing restarts
    /// from now on; the caller stops groups in order with [`Self::stop_group`].
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// Stops every child of `name` (`stop_signal`, SIGKILL after `stop_timeout`).
    pub fn stop_group(&mut self, name: &GroupName, launcher: &mut impl Launcher, now: Instant) {
        if let Some(group) = self.groups.get_mut(name) {
            for child in &mut group.children {
                stop_child(&group.spec, child, AfterStop::Stay, launcher, now);
            }
        }
        stop_predecessors(&mut self.retiring, name.as_str(), None, launcher, now);
        for r in self.retiring.iter_mut().filter(|r| &r.group == name) {
            stop_child(&r.spec, &mut r.child, AfterStop::Stay, launcher, now);
        }
    }

    /// Whether any process of `name` (current or retiring) is still alive.
    fn retiring_is_live(&self, name: &GroupName) -> bool {
        self.retiring
            .iter()
            .any(|r| &r.group == name && r.child.state.pid().is_some())
    }

    /// Whether any child of `name` still has a process.
    pub fn group_is_live(&self, name: &GroupName) -> bool {
        self.retiring_is_live(name)
            || self
                .groups
                .get(name)
                .is_some_and(|g| g.children.iter().any(|c| c.state.pid().is_some()))
    }

    /// Graceful shutdown of everything at once: every child gets its
    /// `stop_signal`, SIGKILL after its `stop_timeout`. Nothing restarts
    /// from now on.
    pub fn shutdown(&mut self, launcher: &mut impl Launcher, now: Instant) {
        self.shutting_down = true;
        let names: Vec<GroupName> = self.groups.keys().cloned().collect();
        for name in names {
            self.stop_group(&name, launcher, now);
        }
        let orphaned: Vec<GroupName> = self.retiring.iter().map(|r| r.group.clone()).collect();
        for name in orphaned {
            self.stop_group(&name, launcher, now);
        }
    }

    /// Immediate shutdown (a second SIGTERM/SIGINT): SIGKILL every group now.
    pub fn kill_all(&mut self, launcher: &mut impl Launcher, now: Instant) {
        self.shutdown(launcher, now);
        let children = self
            .groups
            .values_mut()
            .flat_map(|g| g.children.iter_mut())
            .chain(self.retiring.iter_mut().map(|r| &mut r.child));
        for child in children {
            if let ChildState::Stopping {
                pid,
                ref mut killed,
                ..
            } = child.state
                && !*killed
            {
                *killed = true;
                self.forced = true;
                launcher.signal_group(pid, Signal::Kill);
            }
        }
    }

    /// Forwards `signal` to every child's own PID (SIGUSR1/SIGUSR2).
    pub fn forward(&self, signal: Signal, launcher: &mut impl Launcher) {
        // Retiring processes are included: they are still drover's children.
        for pid in self.live_pids() {
            launcher.signal(pid, signal);
        }
    }

    /// Records that shutdown SIGKILLed something (used for orphans too).
    pub fn note_forced(&mut self) {
        self.forced = true;
    }
}

/// Stops the old processes a rolling restart of `group` keeps alive: those
/// waiting for index `index`'s new child, or all of them (`None`).
fn stop_predecessors(
    retiring: &mut [Retiring],
    group: &str,
    index: Option<u32>,
    launcher: &mut impl Launcher,
    now: Instant,
) {
    for r in retiring.iter_mut().filter(|r| {
        r.group.as_str() == group
            && r.successor.is_some()
            && (index.is_none() || r.successor == index)
    }) {
        r.successor = None;
        stop_child(&r.spec, &mut r.child, AfterStop::Stay, launcher, now);
    }
}

fn start_child(spec: &GroupSpec, child: &mut Child, launcher: &mut impl Launcher, now: Instant) {
    child.outdated = false;
    if child.attempts > 0 {
        child.restarts += 1;
    }
    child.attempts += 1;
    match launcher.start(spec, child.index) {
        Err(LaunchError::Warming { until }) => {
            // Not an attempt: wait for the context (the runtime wakes us).
            child.attempts -= 1;
            if child.attempts > 0 {
                child.restarts -= 1;
            }
            tracing::debug!(group = %spec.name, index = child.index, "waiting for the template");
            child.state = ChildState::Backoff { until: now + until };
        }
        Ok(pid) => {
            tracing::debug!(group = %spec.name, index = child.index, pid = pid.0, "starting");
            child.started = Some(now);
            child.state = if spec.policy.start_secs.is_zero() {
                child.failed_starts = 0;
                ChildState::Running { pid, since: now }
            } else {
                ChildState::Starting { pid, since: now }
            };
        }
        Err(err) => {
            tracing::warn!("{}[{}]: cannot start: {err}", spec.name, child.index);
            child.started = None;
            failed_start(spec, child, now);
        }
    }
}

/// A start failed (exec error, or death before `start_secs`): back off or give up.
fn failed_start(spec: &GroupSpec, child: &mut Child, now: Instant) {
    child.failed_starts += 1;
    let policy = &spec.policy;
    if child.failed_starts > policy.max_restarts {
        tracing::warn!(
            "{}[{}]: fatal after {} failed starts in a row; `drover restart {}` tries again",
            spec.name,
            child.index,
            child.failed_starts,
            spec.name
        );
        child.state = ChildState::Fatal;
    } else {
        let delay = backoff_delay(policy, child.failed_starts);
        tracing::info!(
            "{}[{}]: failed start {} of {}; retrying in {:?}",
            spec.name,
            child.index,
            child.failed_starts,
            policy.max_restarts + 1,
            delay
        );
        child.state = ChildState::Backoff { until: now + delay };
    }
}

fn child_exited(
    spec: &GroupSpec,
    child: &mut Child,
    status: ExitStatus,
    may_restart: bool,
    launcher: &mut impl Launcher,
    now: Instant,
) {
    child.last_exit = Some(status);
    let previous = std::mem::replace(&mut child.state, ChildState::Stopped);
    match previous {
        ChildState::Stopping { after, .. } => {
            tracing::debug!(group = %spec.name, index = child.index, ?status, "stopped");
            if after == AfterStop::Restart && may_restart {
                start_child(spec, child, launcher, now);
            }
        }
        ChildState::Starting { .. } | ChildState::Running { .. } if !may_restart => {}
        _ if !wants_restart(&spec.policy, status) => {
            tracing::info!(
                "{}[{}]: exited ({})",
                spec.name,
                child.index,
                describe(status)
            );
            child.state = ChildState::Exited;
        }
        ChildState::Starting { .. } => {
            tracing::info!(
                "{}[{}]: exited during start ({})",
                spec.name,
                child.index,
                describe(status)
            );
            failed_start(spec, child, now);
        }
        _ => {
            // Start first, log after: the log line is not on the restart path.
            child.failed_starts = 0;
            start_child(spec, child, launcher, now);
            tracing::info!(
                "{}[{}]: exited ({}); restarting",
                spec.name,
                child.index,
                describe(status)
            );
        }
    }
}

/// Returns true when it had to SIGKILL.
fn child_deadline(
    spec: &GroupSpec,
    child: &mut Child,
    launcher: &mut impl Launcher,
    now: Instant,
) -> bool {
    match child.state.deadline(&spec.policy) {
        Some(deadline) if deadline <= now => {}
        _ => return false,
    }
    match child.state {
        ChildState::Starting { pid, since } => {
            tracing::debug!(group = %spec.name, index = child.index, "running");
            child.failed_starts = 0;
            child.state = ChildState::Running { pid, since };
        }
        ChildState::Backoff { .. } => start_child(spec, child, launcher, now),
        ChildState::Stopping {
            pid,
            ref mut killed,
            ..
        } => {
            tracing::warn!(
                "{}[{}]: still running {:?} after {}; sending SIGKILL to its process group",
                spec.name,
                child.index,
                spec.policy.stop_timeout,
                spec.policy.stop_signal
            );
            *killed = true;
            launcher.signal_group(pid, Signal::Kill);
            return true;
        }
        _ => {}
    }
    false
}

fn stop_child(
    spec: &GroupSpec,
    child: &mut Child,
    after: AfterStop,
    launcher: &mut impl Launcher,
    now: Instant,
) {
    match child.state {
        ChildState::Starting { pid, .. } | ChildState::Running { pid, .. } => {
            launcher.signal_group(pid, spec.policy.stop_signal);
            child.state = ChildState::Stopping {
                pid,
                since: now,
                kill_at: now + spec.policy.stop_timeout,
                killed: false,
                after,
            };
        }
        ChildState::Stopping { .. } => {}
        ChildState::Backoff { .. } | ChildState::Fatal | ChildState::Exited => {
            child.state = ChildState::Stopped;
        }
        ChildState::Stopped => {}
    }
}

/// `exit code 1` / `killed by SIGKILL`, for log lines.
pub fn describe(status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(c) => format!("exit code {c}"),
        ExitStatus::Signal(s) => format!("killed by {}", Signal::name_of_raw(s)),
    }
}
