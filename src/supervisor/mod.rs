//! The pure heart of drover: child state machines driven by events.
//!
//! [`Supervisor`] owns the desired configuration and the table of child
//! slots. It never touches the OS itself: every start and signal goes through
//! a [`Launcher`], and time comes in as an argument. The runtime feeds it
//! events (a child exited, a deadline passed, a control request, a shutdown
//! signal) and asks for the next deadline; unit tests drive it with a fake
//! launcher and a fake clock.

mod child;
mod index;
mod order;
mod reload;
pub mod shutdown;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use child::{
    AfterStop, Child, ChildState, ExitStatus, Leftover, Pid, WaitReason, after, backoff_delay,
    min_start_secs, wants_restart,
};
pub use reload::ReloadSummary;

use crate::config::names::GroupName;
use crate::config::signal::Signal;
use crate::config::{Config, GroupSpec, Policy, Readiness};
use crate::text::ratelimit::RateLimit;

/// Starts processes and delivers signals on the supervisor's behalf.
pub trait Launcher {
    /// Starts child `index` of `group`, or asks its start context to (the
    /// answer then comes through [`Supervisor::start_replied`]). An error
    /// is a failed start (for instance a command that cannot be executed).
    fn start(&mut self, group: &GroupSpec, index: u32) -> Result<Started, LaunchError>;
    /// Sends `signal` to the process group led by `pid`.
    fn signal_group(&mut self, pid: Pid, signal: Signal);
    /// Sends `signal` to `pid` alone.
    fn signal(&mut self, pid: Pid, signal: Signal);
    /// Whether any process is left in process group `pgid`.
    fn group_alive(&mut self, pgid: Pid) -> bool;
}

/// What [`Launcher::start`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// The process runs.
    Running(Pid),
    /// The start was sent to the group's start context; its answer comes
    /// back with this ticket, and never blocks the loop in between.
    Requested(u64),
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
        group: crate::config::names::GroupName,
    },
    /// Like [`LaunchError::CwdMissing`], for a working directory that is
    /// something else than a directory.
    #[error("working directory {} is not a directory (cwd of group {group})", cwd.display())]
    CwdNotDirectory {
        cwd: std::path::PathBuf,
        group: crate::config::names::GroupName,
    },
    #[error("cannot prepare the child: {0}")]
    Setup(#[source] std::io::Error),
    /// The group's Python template failed the request (it died, timed out,
    /// or could not import the module).
    #[error("{0}")]
    Template(#[source] std::io::Error),
    /// The group's start context is still getting ready (a Python template
    /// importing its module). Not a failure: the start is retried when the
    /// runtime reports the context ready ([`Supervisor::context_ready`]), or
    /// after `until` at the latest.
    #[error("its python template is still importing")]
    Warming { until: std::time::Duration },
    /// This loop turn has started enough processes: not a failure, the
    /// start happens in a later turn ([`Supervisor::start_deferred`]).
    #[error("too many starts at once; it starts in a moment")]
    Deferred,
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
    /// `update = "stop-first"`: the new child of this index starts once
    /// this process has exited.
    pub blocks: Option<u32>,
    /// The failure of its replacement has been logged.
    pub failure_logged: bool,
}

/// Leftovers of a retired process's group, being stopped.
#[derive(Debug)]
struct Stray {
    group: GroupName,
    leftover: Leftover,
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
    strays: Vec<Stray>,
    shutting_down: bool,
    /// Some process had to be SIGKILLed during shutdown.
    forced: bool,
    /// Some start was put off to a later loop turn.
    deferred: bool,
    /// Rate limit of the log lines about repeated exits and failed starts.
    log: RateLimit,
    /// Children that exited with success within `start_secs`: they may
    /// have daemonized themselves (see [`Self::take_daemon_suspects`]).
    suspects: Vec<Suspect>,
    /// Slots by PID, deadline, leftovers and rolling update, so that an
    /// event costs the same with one child or a thousand.
    index: index::Index,
    /// The gates of groups with `after`.
    order: order::Order,
    /// Why a child became fatal (or an init task failed), since
    /// [`Self::take_fatal`]: the first such event.
    fatal: Option<String>,
}

/// A child that exited with a success code within `start_secs`, the
/// signature of a program that daemonizes itself.
#[derive(Debug, Clone)]
pub struct Suspect {
    pub group: GroupName,
    pub index: u32,
    /// How long before the exit it was started.
    pub age: Duration,
}

/// Builds a [`Cx`] from the supervisor's fields, leaving the others free.
macro_rules! cx {
    ($self:ident, $launcher:expr, $now:expr) => {
        Cx {
            launcher: $launcher,
            now: $now,
            log: &mut $self.log,
            deferred: &mut $self.deferred,
            order: &mut $self.order,
        }
    };
}
pub(crate) use cx;

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
        let mut sup = Supervisor {
            groups,
            retiring: Vec::new(),
            strays: Vec::new(),
            shutting_down: false,
            forced: false,
            deferred: false,
            log: RateLimit::default(),
            suspects: Vec::new(),
            index: index::Index::default(),
            order: order::Order::default(),
            fatal: None,
        };
        // Every gate is known before the first start.
        sup.index.touch_all();
        sup.settle();
        sup
    }

    /// Brings the index up to date with what this entry point changed (see
    /// [`index`]); debug builds check it against a full scan.
    fn settle(&mut self) {
        self.index.settle(&self.groups);
        self.settle_order();
        #[cfg(debug_assertions)]
        {
            self.index.check(&self.groups);
            self.index.tally.check(&self.groups);
            for r in &self.retiring {
                if r.successor.is_some() || r.blocks.is_some() {
                    assert!(
                        self.index.rolling().contains(&r.group),
                        "rolling update not indexed"
                    );
                }
            }
        }
    }

    /// Opens and closes the gates of `after` as the settled changes say,
    /// and notes children that became fatal and init tasks that failed.
    fn settle_order(&mut self) {
        self.order.update(&mut self.groups, &mut self.index.tally);
        for (name, index) in self.index.tally.take_failed() {
            let Some(group) = self.groups.get(&name) else {
                continue;
            };
            let Some(child) = group.children.get(index as usize) else {
                continue;
            };
            let why = if child.state == ChildState::Fatal {
                format!("{name}[{index}] is fatal")
            } else if self.order.has_dependants(&name) {
                format!(
                    "init task {name} failed ({})",
                    order::failure(&group.spec, child)
                )
            } else {
                continue;
            };
            if self.order.has_dependants(&name) && !self.shutting_down {
                tracing::warn!(group = %name, index, "{why}: the groups that start after it wait");
            }
            self.fatal.get_or_insert(why);
        }
    }

    /// Why a child became fatal or an init task failed, once per event
    /// since the last call (the first of them): for `exit_on_fatal`.
    pub fn take_fatal(&mut self) -> Option<String> {
        self.fatal.take()
    }

    /// Children that exited like a program that daemonized itself, since
    /// the last call: the runtime looks for their daemons among the
    /// orphans re-parented to drover.
    pub fn take_daemon_suspects(&mut self) -> Vec<Suspect> {
        std::mem::take(&mut self.suspects)
    }

    /// Processes that `suspect` left behind outside its process group (a
    /// daemon that called `setsid()`): stopped like leftovers, with a
    /// warning.
    pub fn adopt_daemons(
        &mut self,
        suspect: &Suspect,
        daemons: &[Pid],
        launcher: &mut impl Launcher,
        now: Instant,
    ) {
        let Some(spec) = self.groups.get(&suspect.group).map(|g| g.spec.clone()) else {
            return;
        };
        for &pid in daemons {
            let signal = spec.policy.stop_signal;
            tracing::warn!(
                group = %suspect.group,
                index = suspect.index,
                pid = pid.0,
                "{}[{}]: exited at once and left pid {} running in a session of its own: \
                 it seems to daemonize itself; drover stops it ({signal}) — run the program \
                 in the foreground",
                suspect.group,
                suspect.index,
                pid.0
            );
            // After setsid() the daemon leads its own process group.
            launcher.signal_group(pid, signal);
            self.strays.push(Stray {
                group: suspect.group.clone(),
                leftover: Leftover {
                    pgid: pid,
                    kill_at: after(now, spec.policy.stop_timeout),
                    killed: false,
                },
            });
        }
    }

    /// The processes of group `name` that run now: its children's, and
    /// those of its outdated children a rolling update still keeps.
    pub fn group_pids(&self, name: &str) -> Result<Vec<Pid>, UnknownGroup> {
        let group = self
            .groups
            .values()
            .find(|g| g.spec.name.as_str() == name)
            .ok_or_else(|| UnknownGroup(name.to_owned()))?;
        let current = group.children.iter().filter_map(|c| c.state.pid());
        let retiring = self
            .retiring
            .iter()
            .filter(|r| r.group.as_str() == name)
            .filter_map(|r| r.child.state.pid());
        Ok(current.chain(retiring).collect())
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// The processes of previous definitions still on their way out:
    /// replaced by a reload, scaled away, or of a removed group.
    pub fn retiring(&self) -> impl Iterator<Item = &Retiring> {
        self.retiring.iter()
    }

    /// The old process that a rolling restart keeps running for slot
    /// `index` of `group` until its replacement runs.
    pub fn predecessor(&self, group: &GroupName, index: u32) -> Option<&Child> {
        self.retiring
            .iter()
            .find(|r| &r.group == group && r.successor == Some(index))
            .map(|r| &r.child)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// True once shutdown was asked for and no child process is left, nor
    /// any leftover of one.
    pub fn is_finished(&self) -> bool {
        self.shutting_down && self.live_pids().next().is_none() && !self.has_leftovers()
    }

    /// Whether any process group of an exited child still has processes.
    pub fn has_leftovers(&self) -> bool {
        !self.strays.is_empty() || self.index.has_leftovers()
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

    /// Starts every child of every group (those over this turn's budget
    /// start in later turns: [`Self::start_deferred`]).
    pub fn start_all(&mut self, launcher: &mut impl Launcher, now: Instant) {
        let mut cx = cx!(self, launcher, now);
        for group in self.groups.values_mut() {
            for child in &mut group.children {
                start_child(&group.spec, child, &mut cx);
            }
        }
        self.index.touch_all();
        self.settle();
    }

    /// Whether some start waits for a later loop turn (put off by the
    /// turn's budget, or released by a group it starts after).
    pub fn has_deferred(&self) -> bool {
        self.deferred || self.order.has_released()
    }

    /// Starts what earlier turns put off, as far as this turn's budget
    /// goes (the launcher says when it is spent).
    pub fn start_deferred(&mut self, launcher: &mut impl Launcher, now: Instant) {
        self.start_released(launcher, now);
        if !std::mem::take(&mut self.deferred) || self.shutting_down {
            return;
        }
        let mut cx = cx!(self, launcher, now);
        for group in self.groups.values_mut().filter(|g| !g.held) {
            start_waiting(group, WaitReason::Turn, &mut cx);
        }
        self.index.touch_all();
        self.settle();
    }

    /// Starts the waiting children of the groups whose `after` is now
    /// satisfied.
    fn start_released(&mut self, launcher: &mut impl Launcher, now: Instant) {
        let released = self.order.take_released();
        if released.is_empty() || self.shutting_down {
            return;
        }
        let mut cx = cx!(self, launcher, now);
        for name in &released {
            if let Some(group) = self.groups.get_mut(name).filter(|g| !g.held) {
                tracing::debug!(group = %name, "the groups it starts after are ready");
                start_waiting(group, WaitReason::After, &mut cx);
            }
        }
        for name in &released {
            self.index.touch_group(name);
        }
        self.settle();
    }

    /// The earliest deadline of any child, leftover or log summary, for the
    /// event loop's wait.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.index
            .next_deadline(&self.groups)
            .into_iter()
            .chain(
                self.retiring
                    .iter()
                    .filter_map(|r| r.child.deadline(&r.spec.policy)),
            )
            .chain(self.strays.iter().filter_map(|s| s.leftover.deadline()))
            .chain(self.log.deadline())
            .min()
    }

    /// Acts on every deadline that has passed at `now`.
    pub fn on_deadline(&mut self, launcher: &mut impl Launcher, now: Instant) {
        for summary in self.log.due(now) {
            let what = summary.key.split_once(':').map_or("", |(kind, _)| kind);
            let group = summary.key.split_once(':').map_or("", |(_, g)| g);
            tracing::info!(
                "{group}: {} more {} in the last {} (not logged one by one)",
                summary.count,
                match what {
                    "exit" => "exits",
                    "backoff" => "failed starts",
                    "start" => "start errors",
                    _ => "events",
                },
                format!("{:?}", summary.window)
            );
        }
        let mut killed = false;
        let due = self.index.due(&self.groups, now);
        {
            let mut cx = cx!(self, launcher, now);
            for (name, index) in &due {
                let Some(group) = self.groups.get_mut(name) else {
                    continue;
                };
                if let Some(child) = group.children.get_mut(*index as usize) {
                    killed |= child_deadline(&group.spec, child, &mut cx);
                }
            }
            for r in &mut self.retiring {
                killed |= child_deadline(&r.spec, &mut r.child, &mut cx);
            }
            for stray in &mut self.strays {
                if stray.leftover.deadline().is_some_and(|d| d <= now) {
                    tracing::warn!(
                        "{}: processes left by a stopped child still running; sending SIGKILL",
                        stray.group
                    );
                    stray.leftover.killed = true;
                    cx.launcher.signal_group(stray.leftover.pgid, Signal::Kill);
                    killed = true;
                }
            }
        }
        for (name, index) in &due {
            self.index.touch(name, *index);
        }
        self.forced |= killed && self.shutting_down;
        self.advance_rolling(launcher, now);
        self.settle();
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
        if let Some((name, index)) = self.index.take_pid(&self.groups, pid) {
            self.slot_exited(&name, index, status, launcher, now);
            return true;
        }
        if let Some(pos) = self
            .retiring
            .iter()
            .position(|r| r.child.state.pid() == Some(pid))
        {
            let r = self.retiring.remove(pos);
            tracing::debug!(group = %r.group, index = r.child.index, ?status, "retired");
            let mut cx = cx!(self, launcher, now);
            let mut child = r.child;
            let previous = std::mem::replace(&mut child.state, ChildState::Stopped);
            if let Some(leftover) =
                stop_leftovers(&r.spec, child.index, pid, &previous, status, &mut cx)
            {
                self.strays.push(Stray {
                    group: r.group.clone(),
                    leftover,
                });
            }
            if r.blocks.is_some() {
                // A stop-first replacement may start now.
                self.advance_rolling(launcher, now);
            }
            self.settle();
            return true;
        }
        // The index knows every child's PID (debug builds check it after
        // every change): anything else is an orphan.
        false
    }

    /// The process of slot `name[index]` exited with `status`.
    fn slot_exited(
        &mut self,
        name: &GroupName,
        index: u32,
        status: ExitStatus,
        launcher: &mut impl Launcher,
        now: Instant,
    ) {
        let shutting_down = self.shutting_down;
        let mut cx = cx!(self, launcher, now);
        let Some(group) = self.groups.get_mut(name) else {
            return;
        };
        let held = group.held;
        let Some(child) = group.children.get_mut(index as usize) else {
            return;
        };
        let may_restart = !shutting_down && !held;
        if let ChildState::Starting { since, .. } = child.state
            && matches!(status, ExitStatus::Code(c) if group.spec.policy.success_codes.contains(&c))
        {
            self.suspects.push(Suspect {
                group: group.spec.name.clone(),
                index: child.index,
                age: now.saturating_duration_since(since),
            });
        }
        child_exited(&group.spec, child, status, may_restart, &mut cx);
        self.index.touch(name, index);
        self.advance_rolling(launcher, now);
        self.settle();
    }

    /// Some process drover did not start itself was reaped: a process group
    /// with leftovers may have emptied. Children waiting for theirs start.
    pub fn check_leftovers(&mut self, launcher: &mut impl Launcher, now: Instant) {
        if !self.has_leftovers() {
            return;
        }
        self.strays
            .retain_mut(|s| launcher.group_alive(s.leftover.pgid));
        let may_start = !self.shutting_down;
        let keys: Vec<index::Key> = self.index.leftovers().cloned().collect();
        let mut cx = cx!(self, launcher, now);
        for (name, index) in &keys {
            let Some(group) = self.groups.get_mut(name) else {
                continue;
            };
            let held = group.held;
            if let Some(child) = group.children.get_mut(*index as usize) {
                let Some(leftover) = child.leftover else {
                    continue;
                };
                if cx.launcher.group_alive(leftover.pgid) {
                    continue;
                }
                child.leftover = None;
                tracing::debug!(group = %group.spec.name, index = child.index, "process group empty");
                let waiting = matches!(
                    child.state,
                    ChildState::Waiting {
                        reason: WaitReason::ProcessGroup,
                        ..
                    }
                );
                if waiting {
                    if may_start && !held {
                        start_child(&group.spec, child, &mut cx);
                    } else {
                        child.state = ChildState::Stopped;
                    }
                }
            }
        }
        for (name, index) in &keys {
            self.index.touch(name, *index);
        }
        self.advance_rolling(launcher, now);
        self.settle();
    }

    /// The process groups that still hold leftovers, per child slot
    /// (`group`, `index`, `pgid`), for `status`.
    pub fn leftover_groups(&self) -> Vec<(GroupName, u32, Pid)> {
        self.index
            .leftovers()
            .filter_map(|(name, index)| {
                let child = self.groups.get(name)?.children.get(*index as usize)?;
                child.leftover.map(|l| (name.clone(), *index, l.pgid))
            })
            .collect()
    }

    /// `drover start|stop|restart GROUP`.
    pub fn group_command(
        &mut self,
        name: &str,
        command: GroupCommand,
        launcher: &mut impl Launcher,
        now: Instant,
    ) -> Result<(), UnknownGroup> {
        let Some(group) = self
            .groups
            .values_mut()
            .find(|g| g.spec.name.as_str() == name)
        else {
            return Err(UnknownGroup(name.to_owned()));
        };
        if self.shutting_down {
            return Ok(());
        }
        let mut cx = cx!(self, &mut *launcher, now);
        match command {
            GroupCommand::Stop => {
                group.held = true;
                for child in &mut group.children {
                    stop_child(&group.spec, child, AfterStop::Stay, &mut cx);
                }
                stop_predecessors(&mut self.retiring, name, None, &mut cx);
            }
            GroupCommand::Start => {
                group.held = false;
                for child in &mut group.children {
                    if !child.state.has_process() {
                        // Asked for by a person: no respawn floor.
                        child.last_start = None;
                        child.failed_starts = 0;
                        start_child(&group.spec, child, &mut cx);
                    }
                }
            }
            GroupCommand::Restart => {
                // As the group's `update` says: rolling (each new child
                // runs before its old one stops) or stop-first.
                group.held = false;
                stop_predecessors(&mut self.retiring, name, None, &mut cx);
                for child in &mut group.children {
                    // Asked for by a person: no respawn floor.
                    child.last_start = None;
                    child.failed_starts = 0;
                    match child.state {
                        ChildState::Stopping { ref mut after, .. } => *after = AfterStop::Restart,
                        ChildState::Requested { .. }
                        | ChildState::Starting { .. }
                        | ChildState::Running { .. } => {
                            child.outdated = true;
                        }
                        _ => start_child(&group.spec, child, &mut cx),
                    }
                }
            }
        }
        let name = group.spec.name.clone();
        self.index.touch_group(&name);
        if command == GroupCommand::Restart {
            self.advance_rolling(launcher, now);
        }
        self.settle();
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
        let Some((name, index)) = self.index.find_pid(&self.groups, pid) else {
            return false;
        };
        let mut cx = cx!(self, launcher, now);
        let Some(group) = self.groups.get_mut(&name) else {
            return false;
        };
        let Some(child) = group.children.get_mut(index as usize) else {
            return false;
        };
        stop_child(&group.spec, child, AfterStop::Restart, &mut cx);
        self.index.touch(&name, index);
        self.settle();
        true
    }

    /// The readiness probe of the child whose process is `pid` succeeded
    /// (`READY=1`, a TCP connect, a probe command's exit 0): a `starting`
    /// child is `running` from now on. Returns false when `pid` is not a
    /// starting child (gone, already ready, being stopped): the probe ends.
    pub fn child_ready(&mut self, pid: Pid, launcher: &mut impl Launcher, now: Instant) -> bool {
        let Some((name, index)) = self.index.find_pid(&self.groups, pid) else {
            return false;
        };
        let Some(group) = self.groups.get_mut(&name) else {
            return false;
        };
        let Some(child) = group.children.get_mut(index as usize) else {
            return false;
        };
        let ChildState::Starting { pid, since } = child.state else {
            return false;
        };
        tracing::debug!(group = %name, index, pid = pid.0, "ready");
        child.reason = None;
        child.state = ChildState::Running { pid, since };
        if child
            .settles_at(&group.spec.policy)
            .is_some_and(|t| t <= now)
        {
            child.failed_starts = 0;
        }
        self.index.touch(&name, index);
        // A rolling update waits for this.
        self.advance_rolling(launcher, now);
        self.settle();
        true
    }

    /// The group and index of the current child whose process is `pid`.
    pub fn slot_of(&self, pid: Pid) -> Option<(GroupName, u32)> {
        self.index.find_pid(&self.groups, pid)
    }

    /// Whether the child whose process is `pid` is running (ready), and
    /// so due for health checks. False when it is not a current child.
    pub fn is_running(&self, pid: Pid) -> bool {
        self.index
            .find_pid(&self.groups, pid)
            .and_then(|(name, index)| self.groups.get(&name)?.children.get(index as usize))
            .is_some_and(|c| matches!(c.state, ChildState::Running { .. }))
    }

    /// The health check of the running child `pid` failed `failures`
    /// times in a row: it is restarted through its normal stop path (see
    /// [`Self::restart_child`]). Returns false when `pid` is not a running
    /// child.
    pub fn health_failed(
        &mut self,
        pid: Pid,
        failures: u32,
        launcher: &mut impl Launcher,
        now: Instant,
    ) -> bool {
        if self.shutting_down || !self.is_running(pid) {
            return false;
        }
        let Some((name, index)) = self.index.find_pid(&self.groups, pid) else {
            return false;
        };
        if let Some(child) = self
            .groups
            .get_mut(&name)
            .and_then(|g| g.children.get_mut(index as usize))
        {
            tracing::warn!(
                group = %name,
                index,
                pid = pid.0,
                "{name}[{index}]: health check failed {failures} times in a row; restarting it"
            );
            child.health_restarts = child.health_restarts.saturating_add(1);
            child.reason = Some(format!("health check failed {failures} times"));
        }
        self.restart_child(pid, launcher, now)
    }

    /// The answer of a start context to the start with `ticket` of
    /// `group[index]`: the child's PID, or why it did not start. A process
    /// that nothing waits for any more (its slot was stopped, scaled away,
    /// replaced or removed since the request) is stopped at once, as
    /// `requested` (the definition the start was made with) says.
    pub fn start_replied(
        &mut self,
        requested: &GroupSpec,
        index: u32,
        ticket: u64,
        result: Result<Pid, LaunchError>,
        launcher: &mut impl Launcher,
        now: Instant,
    ) {
        let shutting_down = self.shutting_down;
        let group = &requested.name;
        let slot = self.groups.get_mut(group).and_then(|g| {
            let held = g.held;
            let spec = &g.spec;
            g.children
                .get_mut(index as usize)
                .filter(
                    |c| matches!(c.state, ChildState::Requested { ticket: t, .. } if t == ticket),
                )
                .map(|c| (spec, c, held))
        });
        match (slot, result) {
            (Some((spec, child, held)), result) => {
                let mut cx = cx!(self, &mut *launcher, now);
                start_result(spec, child, result.map(Started::Running), &mut cx);
                if shutting_down || held {
                    // Stopped while its start was on the way.
                    stop_child(spec, child, AfterStop::Stay, &mut cx);
                }
            }
            (None, Ok(pid)) => {
                let spec = requested.clone();
                tracing::debug!(%group, index, pid = pid.0, "started after its slot moved on; stopping it");
                let mut child = Child::new(index);
                child.started = Some(now);
                child.state = ChildState::Starting { pid, since: now };
                let mut cx = cx!(self, &mut *launcher, now);
                stop_child(&spec, &mut child, AfterStop::Stay, &mut cx);
                self.retiring.push(Retiring {
                    group: group.clone(),
                    spec,
                    child,
                    successor: None,
                    blocks: None,
                    failure_logged: false,
                });
            }
            (None, Err(_)) => {}
        }
        self.index.touch(group, index);
        self.advance_rolling(launcher, now);
        self.settle();
    }

    /// The start context of `name` became ready (a Python template finished
    /// its imports): the children waiting for it start now.
    pub fn context_ready(&mut self, name: &GroupName, launcher: &mut impl Launcher, now: Instant) {
        if self.shutting_down {
            return;
        }
        if let Some(group) = self.groups.get_mut(name).filter(|g| !g.held) {
            let mut cx = cx!(self, &mut *launcher, now);
            start_waiting(group, WaitReason::Template, &mut cx);
        }
        self.index.touch_group(name);
        self.advance_rolling(launcher, now);
        self.settle();
    }

    /// Starts a shutdown without stopping anything yet: nothing restarts
    /// from now on; the caller stops groups in order with [`Self::stop_group`].
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// Stops every child of `name` (`stop_signal`, SIGKILL after `stop_timeout`).
    pub fn stop_group(&mut self, name: &GroupName, launcher: &mut impl Launcher, now: Instant) {
        let mut cx = cx!(self, launcher, now);
        if let Some(group) = self.groups.get_mut(name) {
            for child in &mut group.children {
                stop_child(&group.spec, child, AfterStop::Stay, &mut cx);
            }
        }
        stop_predecessors(&mut self.retiring, name.as_str(), None, &mut cx);
        for r in self.retiring.iter_mut().filter(|r| &r.group == name) {
            stop_child(&r.spec, &mut r.child, AfterStop::Stay, &mut cx);
        }
        self.index.touch_group(name);
        self.settle();
    }

    /// Whether any process of `name` (current or retiring) is still alive.
    fn retiring_is_live(&self, name: &GroupName) -> bool {
        self.retiring
            .iter()
            .any(|r| &r.group == name && r.child.state.pid().is_some())
    }

    /// Whether any child of `name` still has a process (or leftovers).
    pub fn group_is_live(&self, name: &GroupName) -> bool {
        self.retiring_is_live(name)
            || self.strays.iter().any(|s| &s.group == name)
            || self.groups.get(name).is_some_and(|g| {
                g.children
                    .iter()
                    .any(|c| c.state.pid().is_some() || c.leftover.is_some())
            })
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
            if let Some(leftover) = child.leftover.as_mut().filter(|l| !l.killed) {
                leftover.killed = true;
                self.forced = true;
                launcher.signal_group(leftover.pgid, Signal::Kill);
            }
        }
        for stray in self.strays.iter_mut().filter(|s| !s.leftover.killed) {
            stray.leftover.killed = true;
            self.forced = true;
            launcher.signal_group(stray.leftover.pgid, Signal::Kill);
        }
        self.index.touch_all();
        self.settle();
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

/// What every state transition needs besides the child: the launcher, the
/// time, and the log's rate limit.
pub(crate) struct Cx<'a, L: Launcher> {
    pub launcher: &'a mut L,
    pub now: Instant,
    pub log: &'a mut RateLimit,
    /// Set when a start was put off to a later loop turn.
    pub deferred: &'a mut bool,
    /// The gates of `after`.
    pub order: &'a mut order::Order,
}

impl<L: Launcher> Cx<'_, L> {
    /// Whether a line about `key` may be logged now (see [`RateLimit`]).
    fn loud(&mut self, key: &str) -> bool {
        self.log.allow(key, self.now)
    }
}

/// Stops the old processes a rolling restart of `group` keeps alive: those
/// waiting for index `index`'s new child, or all of them (`None`).
fn stop_predecessors<L: Launcher>(
    retiring: &mut [Retiring],
    group: &str,
    index: Option<u32>,
    cx: &mut Cx<'_, L>,
) {
    for r in retiring.iter_mut().filter(|r| {
        r.group.as_str() == group
            && r.successor.is_some()
            && (index.is_none() || r.successor == index)
    }) {
        r.successor = None;
        stop_child(&r.spec, &mut r.child, AfterStop::Stay, cx);
    }
}

/// Starts the children of `group` that wait for `reason`.
fn start_waiting<L: Launcher>(group: &mut Group, reason: WaitReason, cx: &mut Cx<'_, L>) {
    for child in &mut group.children {
        if matches!(child.state, ChildState::Waiting { reason: r, .. } if r == reason) {
            start_child(&group.spec, child, cx);
        }
    }
}

fn start_child<L: Launcher>(spec: &GroupSpec, child: &mut Child, cx: &mut Cx<'_, L>) {
    if let Some(reason) = cx.order.blocked(&spec.name) {
        // Started once the groups it starts after are ready.
        child.reason = Some(reason.to_owned());
        child.state = ChildState::Waiting {
            reason: WaitReason::After,
            until: None,
        };
        cx.order.wait(&spec.name);
        return;
    }
    if child.leftover.is_some() {
        child.state = ChildState::Waiting {
            reason: WaitReason::ProcessGroup,
            until: None,
        };
        return;
    }
    // The respawn floor: no slot starts twice within start_secs.
    if let Some(floor) = respawn_floor(child, &spec.policy).filter(|floor| cx.now < *floor) {
        child.state = ChildState::Backoff { until: floor };
        return;
    }
    let started = cx.launcher.start(spec, child.index);
    start_result(spec, child, started, cx);
}

/// Applies the outcome of a start (at once, or as its context's answer).
fn start_result<L: Launcher>(
    spec: &GroupSpec,
    child: &mut Child,
    started: Result<Started, LaunchError>,
    cx: &mut Cx<'_, L>,
) {
    match started {
        Err(LaunchError::Warming { until }) => {
            // Not an attempt: wait for the context (the runtime wakes us).
            tracing::debug!(group = %spec.name, index = child.index, "waiting for the template");
            child.state = ChildState::Waiting {
                reason: WaitReason::Template,
                until: Some(after(cx.now, until)),
            };
        }
        Err(LaunchError::Deferred) => {
            *cx.deferred = true;
            child.state = ChildState::Waiting {
                reason: WaitReason::Turn,
                until: None,
            };
        }
        Ok(Started::Requested(ticket)) => {
            tracing::debug!(group = %spec.name, index = child.index, ticket, "start requested");
            child.state = ChildState::Requested {
                ticket,
                since: cx.now,
            };
        }
        Ok(Started::Running(pid)) => {
            tracing::debug!(group = %spec.name, index = child.index, pid = pid.0, "starting");
            count_attempt(child);
            child.started = Some(cx.now);
            child.last_start = Some(cx.now);
            child.state = ChildState::Starting { pid, since: cx.now };
        }
        Err(err) => {
            count_attempt(child);
            if cx.loud(&format!("start:{}", spec.name)) {
                tracing::warn!(
                    group = %spec.name,
                    index = child.index,
                    "{}[{}]: cannot start: {err}",
                    spec.name,
                    child.index
                );
            }
            child.reason = Some(err.to_string());
            child.started = None;
            child.last_start = Some(cx.now);
            failed_start(spec, child, cx);
        }
    }
}

/// The earliest moment `child` may start again: `start_secs` after its
/// last start.
fn respawn_floor(child: &Child, policy: &Policy) -> Option<Instant> {
    child.last_start.map(|t| after(t, min_start_secs(policy)))
}

fn count_attempt(child: &mut Child) {
    child.outdated = false;
    if child.attempts > 0 {
        child.restarts = child.restarts.saturating_add(1);
    }
    child.attempts = child.attempts.saturating_add(1);
}

/// A start failed (exec error, or death before `start_secs`): back off or give up.
fn failed_start<L: Launcher>(spec: &GroupSpec, child: &mut Child, cx: &mut Cx<'_, L>) {
    child.failed_starts = child.failed_starts.saturating_add(1);
    let policy = &spec.policy;
    if child.failed_starts > policy.max_restarts {
        tracing::warn!(
            group = %spec.name,
            index = child.index,
            "{}[{}]: fatal after {} failed starts in a row; `drover restart {}` tries again",
            spec.name,
            child.index,
            child.failed_starts,
            spec.name
        );
        child.state = ChildState::Fatal;
    } else {
        let delay = backoff_delay(policy, child.failed_starts);
        let mut until = after(cx.now, delay);
        // No slot starts twice within start_secs, whatever the backoff says.
        if let Some(floor) = respawn_floor(child, policy) {
            until = until.max(floor);
        }
        if cx.loud(&format!("backoff:{}", spec.name)) {
            tracing::info!(
                group = %spec.name,
                index = child.index,
                "{}[{}]: failed start {} of {}; retrying in {:?}",
                spec.name,
                child.index,
                child.failed_starts,
                policy.max_restarts.saturating_add(1),
                until.saturating_duration_since(cx.now)
            );
        }
        child.state = ChildState::Backoff { until };
    }
}

/// The process of `child` exited with `status`: its leftovers are stopped,
/// and it is restarted, backs off, or stays down as its policy says.
fn child_exited<L: Launcher>(
    spec: &GroupSpec,
    child: &mut Child,
    status: ExitStatus,
    may_restart: bool,
    cx: &mut Cx<'_, L>,
) {
    child.last_exit = Some(status);
    // Ready, but within start_secs of its start: still a failed start.
    let early = child.exited_early(&spec.policy, cx.now);
    let previous = std::mem::replace(&mut child.state, ChildState::Stopped);
    // Structured fields of the log lines below, for JSON logs.
    let (group, index, pid, exit) = (
        spec.name.as_str(),
        child.index,
        previous.pid().map(|p| p.0),
        exit_field(status),
    );
    if let Some(pid) = previous.pid() {
        child.leftover = stop_leftovers(spec, child.index, pid, &previous, status, cx);
    }
    match previous {
        ChildState::Stopping { after, .. } => {
            tracing::debug!(group = %spec.name, index = child.index, ?status, "stopped");
            match after {
                AfterStop::Restart if may_restart => {
                    child.failed_starts = 0;
                    start_child(spec, child, cx);
                }
                AfterStop::FailedStart if may_restart => failed_start(spec, child, cx),
                _ => {}
            }
        }
        ChildState::Starting { .. } | ChildState::Running { .. } if !may_restart => {}
        _ if !wants_restart(&spec.policy, status) => {
            tracing::info!(
                group,
                index,
                pid,
                %exit,
                "{}[{}]: exited ({})",
                spec.name,
                child.index,
                describe(status)
            );
            child.state = ChildState::Exited;
        }
        ChildState::Starting { .. } | ChildState::Running { .. }
            if early || matches!(previous, ChildState::Starting { .. }) =>
        {
            if cx.loud(&format!("exit:{}", spec.name)) {
                tracing::info!(
                    group,
                    index,
                    pid,
                    %exit,
                    "{}[{}]: exited during start ({})",
                    spec.name,
                    child.index,
                    describe(status)
                );
            }
            child.reason = Some(format!(
                "exited {} ms into its start ({})",
                child
                    .last_start
                    .map_or(Duration::ZERO, |t| cx.now.saturating_duration_since(t))
                    .as_millis(),
                describe(status)
            ));
            failed_start(spec, child, cx);
        }
        _ => {
            // Start first, log after: the log line is not on the restart path.
            child.failed_starts = 0;
            start_child(spec, child, cx);
            if cx.loud(&format!("exit:{}", spec.name)) {
                tracing::info!(
                    group,
                    index,
                    pid,
                    %exit,
                    "{}[{}]: exited ({}); restarting",
                    spec.name,
                    child.index,
                    describe(status)
                );
            }
        }
    }
}

/// A child's exit ends its process group: whatever is left in it gets
/// `stop_signal` (SIGKILL if the child was already being killed), and
/// SIGKILL after `stop_timeout`. Returns what to wait for, if anything.
fn stop_leftovers<L: Launcher>(
    spec: &GroupSpec,
    index: u32,
    pgid: Pid,
    previous: &ChildState,
    status: ExitStatus,
    cx: &mut Cx<'_, L>,
) -> Option<Leftover> {
    if !cx.launcher.group_alive(pgid) {
        return None;
    }
    let killed = matches!(previous, ChildState::Stopping { killed: true, .. });
    let signal = if killed {
        Signal::Kill
    } else {
        spec.policy.stop_signal
    };
    cx.launcher.signal_group(pgid, signal);
    let daemonized = matches!(previous, ChildState::Starting { .. })
        && matches!(status, ExitStatus::Code(c) if spec.policy.success_codes.contains(&c));
    if cx.loud(&format!("leftover:{}", spec.name)) {
        if daemonized {
            tracing::warn!(
                group = %spec.name,
                index,
                pid = pgid.0,
                exit = %exit_field(status),
                "{}[{index}]: exited with {} at once and left processes behind in its process group: \
                 it seems to daemonize itself; drover stops them ({signal}) — run the program in the \
                 foreground (e.g. `nginx -g 'daemon off;'`, `redis-server --daemonize no`)",
                spec.name,
                describe(status)
            );
        } else {
            tracing::warn!(
                group = %spec.name,
                index,
                pid = pgid.0,
                exit = %exit_field(status),
                "{}[{index}]: exited ({}) leaving processes in its process group; sending them {signal}{}",
                spec.name,
                describe(status),
                if killed {
                    String::new()
                } else {
                    format!(", SIGKILL after {:?}", spec.policy.stop_timeout)
                }
            );
        }
    }
    Some(Leftover {
        pgid,
        kill_at: after(cx.now, spec.policy.stop_timeout),
        killed,
    })
}

/// Returns true when it had to SIGKILL.
fn child_deadline<L: Launcher>(spec: &GroupSpec, child: &mut Child, cx: &mut Cx<'_, L>) -> bool {
    let mut killed = false;
    if let Some(leftover) = child.leftover.as_mut()
        && leftover.deadline().is_some_and(|d| d <= cx.now)
    {
        tracing::warn!(
            group = %spec.name,
            index = child.index,
            "{}[{}]: processes of its previous process group still running after {:?}; sending SIGKILL",
            spec.name,
            child.index,
            spec.policy.stop_timeout
        );
        leftover.killed = true;
        cx.launcher.signal_group(leftover.pgid, Signal::Kill);
        killed = true;
    }
    if child.settles_at(&spec.policy).is_some_and(|t| t <= cx.now) {
        // Ready before start_secs, and up that long now.
        child.failed_starts = 0;
    }
    match child.state.deadline(&spec.policy) {
        Some(deadline) if deadline <= cx.now => {}
        _ => return killed,
    }
    match child.state {
        ChildState::Starting { pid, since } if spec.policy.ready == Readiness::Started => {
            tracing::debug!(group = %spec.name, index = child.index, "running");
            child.failed_starts = 0;
            child.reason = None;
            child.state = ChildState::Running { pid, since };
        }
        ChildState::Starting { .. } => {
            let timeout = spec.policy.ready_timeout;
            tracing::warn!(
                group = %spec.name,
                index = child.index,
                "{}[{}]: not ready within {timeout:?} (ready_timeout); stopping it as a failed start",
                spec.name,
                child.index,
            );
            child.reason = Some(format!("not ready within {timeout:?} (ready_timeout)"));
            stop_child(spec, child, AfterStop::FailedStart, cx);
        }
        ChildState::Backoff { .. } | ChildState::Waiting { .. } => start_child(spec, child, cx),
        ChildState::Stopping {
            pid,
            killed: ref mut sent,
            ..
        } => {
            tracing::warn!(
                group = %spec.name,
                index = child.index,
                pid = pid.0,
                "{}[{}]: still running {:?} after {}; sending SIGKILL to its process group",
                spec.name,
                child.index,
                spec.policy.stop_timeout,
                spec.policy.stop_signal
            );
            *sent = true;
            cx.launcher.signal_group(pid, Signal::Kill);
            return true;
        }
        _ => {}
    }
    killed
}

fn stop_child<L: Launcher>(
    spec: &GroupSpec,
    child: &mut Child,
    after_stop: AfterStop,
    cx: &mut Cx<'_, L>,
) {
    match child.state {
        ChildState::Starting { pid, .. } | ChildState::Running { pid, .. } => {
            cx.launcher.signal_group(pid, spec.policy.stop_signal);
            child.state = ChildState::Stopping {
                pid,
                since: cx.now,
                kill_at: after(cx.now, spec.policy.stop_timeout),
                killed: false,
                after: after_stop,
            };
        }
        ChildState::Stopping { .. } => {}
        // Its process, if the context makes one, is stopped when the
        // answer arrives: nothing waits for it any more.
        ChildState::Requested { .. }
        | ChildState::Backoff { .. }
        | ChildState::Waiting { .. }
        | ChildState::Fatal
        | ChildState::Exited => {
            child.state = ChildState::Stopped;
        }
        ChildState::Stopped => {}
    }
}

/// `exit code 1` / `killed by SIGKILL`, for log lines.
/// An exit status as the `exit` field of a log event: the code (`1`) or
/// the signal (`SIGKILL`).
fn exit_field(status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(c) => c.to_string(),
        ExitStatus::Signal(s) => Signal::name_of_raw(s).to_string(),
    }
}

pub fn describe(status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(c) => format!("exit code {c}"),
        ExitStatus::Signal(s) => format!("killed by {}", Signal::name_of_raw(s)),
    }
}
