//! One child slot of a group: its state machine and restart bookkeeping.
//!
//! A slot (`group[index]`) outlives the processes that fill it. Its state is
//! an enum whose variants carry their own data, so a PID exists only in the
//! states that have a process.

use std::time::{Duration, Instant};

use crate::config::{Policy, Readiness};

/// An OS process id, kept free of `nix` so the core stays pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(pub i32);

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// What happens once a child that is being stopped has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// Stay `stopped` (`drover stop`, shutdown).
    Stay,
    /// Start again at once (`drover restart`).
    Restart,
    /// The start failed (not ready within `ready_timeout`): back off as
    /// after any failed start.
    FailedStart,
}

/// What a `waiting` child waits for before it can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// Its group's Python template is still importing.
    Template,
    /// Processes of its previous process group are still being stopped.
    ProcessGroup,
    /// `update = "stop-first"`: the process it replaces is still stopping.
    Predecessor,
    /// Many starts are due at once; it starts in a later loop turn, so
    /// that the loop stays responsive.
    Turn,
    /// The groups of its group's `after` are not ready yet (the child's
    /// `reason` names which, and why).
    After,
}

impl WaitReason {
    pub fn describe(self) -> &'static str {
        match self {
            WaitReason::Template => "waiting for its python template to finish importing",
            WaitReason::ProcessGroup => {
                "waiting for the leftover processes of its previous process group to exit"
            }
            WaitReason::Predecessor => "waiting for the process it replaces to stop",
            WaitReason::Turn => "queued to start",
            WaitReason::After => "waiting for the groups it starts after",
        }
    }
}

/// Processes left in a child's process group after the child itself
/// exited: they get `stop_signal`, then SIGKILL at `kill_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leftover {
    /// The process group (the exited child's PID).
    pub pgid: Pid,
    pub kill_at: Instant,
    pub killed: bool,
}

impl Leftover {
    pub fn deadline(&self) -> Option<Instant> {
        (!self.killed).then_some(self.kill_at)
    }
}

/// The state of a child slot.
#[derive(Debug, Clone, PartialEq)]
pub enum ChildState {
    /// Its start was sent to the group's start context (the fork server, a
    /// Python template), whose answer — the PID, or why not — arrives later
    /// as a loop event ([`crate::supervisor::Supervisor::start_replied`]).
    /// Shown as `starting`; the context answers (or is replaced) within its
    /// own deadline.
    Requested { ticket: u64, since: Instant },
    /// Started, not ready yet: under the default readiness, started less
    /// than `start_secs` ago; otherwise its readiness probe has not
    /// succeeded yet (a failed start at `ready_timeout`).
    Starting { pid: Pid, since: Instant },
    /// Ready: up for at least `start_secs`, or its readiness probe
    /// succeeded (an exit within `start_secs` of its start is still a
    /// failed start).
    Running { pid: Pid, since: Instant },
    /// Waiting before retrying a failed start.
    Backoff { until: Instant },
    /// Its start waits for something else (see [`WaitReason`]); tried
    /// again at `until` at the latest.
    Waiting {
        reason: WaitReason,
        until: Option<Instant>,
    },
    /// Asked to stop; SIGKILL to its process group at `kill_at`.
    Stopping {
        pid: Pid,
        since: Instant,
        kill_at: Instant,
        killed: bool,
        after: AfterStop,
    },
    /// Stopped on request; not restarted until asked.
    Stopped,
    /// Exited in a way its restart policy accepts; stays so.
    Exited,
    /// Failed `max_restarts + 1` starts in a row.
    Fatal,
}

impl ChildState {
    /// The name used by `drover status`.
    pub fn name(&self) -> &'static str {
        match self {
            ChildState::Requested { .. } | ChildState::Starting { .. } => "starting",
            ChildState::Running { .. } => "running",
            ChildState::Backoff { .. } => "backoff",
            ChildState::Waiting { .. } => "waiting",
            ChildState::Stopping { .. } => "stopping",
            ChildState::Stopped => "stopped",
            ChildState::Exited => "exited",
            ChildState::Fatal => "fatal",
        }
    }

    pub fn pid(&self) -> Option<Pid> {
        match self {
            ChildState::Starting { pid, .. }
            | ChildState::Running { pid, .. }
            | ChildState::Stopping { pid, .. } => Some(*pid),
            _ => None,
        }
    }

    /// Whether a process exists for this slot, or is being made for it: a
    /// slot in such a state is never started again.
    pub fn has_process(&self) -> bool {
        self.pid().is_some() || matches!(self, ChildState::Requested { .. })
    }

    /// The next moment this state needs attention, if any.
    pub fn deadline(&self, policy: &Policy) -> Option<Instant> {
        match self {
            ChildState::Starting { since, .. } => Some(after(*since, ready_deadline(policy))),
            ChildState::Backoff { until } => Some(*until),
            ChildState::Waiting { until, .. } => *until,
            ChildState::Stopping {
                kill_at,
                killed: false,
                ..
            } => Some(*kill_at),
            _ => None,
        }
    }
}

/// One `group[index]` slot.
#[derive(Debug, Clone)]
pub struct Child {
    pub index: u32,
    pub state: ChildState,
    /// Start attempts, successful or not.
    pub attempts: u32,
    /// Start attempts after the first one.
    pub restarts: u32,
    /// Consecutive failed starts; reset when a start reaches `running`.
    pub failed_starts: u32,
    pub last_exit: Option<ExitStatus>,
    /// When the current process started (for uptime while stopping too).
    pub started: Option<Instant>,
    /// Its process runs a definition that a reload has since replaced; the
    /// rolling restart will replace it. Every start clears it.
    pub outdated: bool,
    /// When a process was last started in this slot (the respawn floor:
    /// no slot starts twice within `start_secs`).
    pub last_start: Option<Instant>,
    /// What is left of its previous process group, being stopped.
    pub leftover: Option<Leftover>,
    /// It replaces a process that a reload made outdated; the update of
    /// its group goes on to the next index once it runs.
    pub replacement: bool,
    /// Why it is not simply running, in words (the last start error).
    pub reason: Option<String>,
    /// Restarts because its health check failed `retries` times in a row.
    pub health_restarts: u32,
}

impl Child {
    pub fn new(index: u32) -> Self {
        Child {
            index,
            state: ChildState::Stopped,
            attempts: 0,
            restarts: 0,
            failed_starts: 0,
            last_exit: None,
            started: None,
            outdated: false,
            last_start: None,
            leftover: None,
            replacement: false,
            reason: None,
            health_restarts: 0,
        }
    }

    /// The earliest moment it needs attention: its state's deadline, or the
    /// SIGKILL of its leftovers.
    pub fn deadline(&self, policy: &Policy) -> Option<Instant> {
        let leftover = self
            .leftover
            .as_ref()
            .and_then(Leftover::deadline)
            .into_iter()
            .chain(self.settles_at(policy))
            .min();
        match (self.state.deadline(policy), leftover) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Child {
    /// When a child that became ready before `start_secs` has run long
    /// enough for its start to count as a success (its failed starts are
    /// forgotten then): only for a running child with failed starts.
    pub fn settles_at(&self, policy: &Policy) -> Option<Instant> {
        match self.state {
            ChildState::Running { .. } if self.failed_starts > 0 => {
                self.last_start.map(|t| after(t, min_start_secs(policy)))
            }
            _ => None,
        }
    }

    /// Whether its process exited (at `now`) within `start_secs` of its
    /// start, though it was ready: a failed start all the same.
    pub fn exited_early(&self, policy: &Policy, now: Instant) -> bool {
        matches!(self.state, ChildState::Running { .. })
            && self
                .last_start
                .is_some_and(|t| now < after(t, min_start_secs(policy)))
    }
}

/// How long a `starting` child may take: `start_secs` under the default
/// readiness (then it is running), else `ready_timeout` (then its start
/// failed).
pub fn ready_deadline(policy: &Policy) -> Duration {
    match policy.ready {
        Readiness::Started => min_start_secs(policy),
        _ => policy.ready_timeout,
    }
}

/// The shortest `start_secs` drover honours: a program that dies at once is
/// a failed start and backs off, never a hot loop (the config warns and
/// uses this for smaller values; the supervisor enforces it anyway).
pub const MIN_START_SECS: Duration = Duration::from_millis(100);

pub fn min_start_secs(policy: &Policy) -> Duration {
    policy.start_secs.max(MIN_START_SECS)
}

/// `now + d`, saturating far in the future instead of overflowing (no
/// configured duration may make drover panic).
pub fn after(now: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

/// The wait before retry number `failed` (1-based): `restart_delay`
/// doubling per failure, capped at `restart_delay_max`.
pub fn backoff_delay(policy: &Policy, failed: u32) -> Duration {
    let doublings = failed.saturating_sub(1).min(32);
    policy
        .restart_delay
        .checked_mul(1u32 << doublings.min(31))
        .unwrap_or(policy.restart_delay_max)
        .min(policy.restart_delay_max)
}

/// Whether an exit calls for a restart under `policy`.
pub fn wants_restart(policy: &Policy, status: ExitStatus) -> bool {
    use crate::config::RestartPolicy;
    match policy.restart {
        RestartPolicy::Always => true,
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => match status {
            ExitStatus::Code(c) => !policy.success_codes.contains(&c),
            ExitStatus::Signal(_) => true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = Policy {
            restart_delay: Duration::from_millis(100),
            restart_delay_max: Duration::from_millis(700),
            ..Policy::default()
        };
        let delays: Vec<u128> = (1..=6)
            .map(|n| backoff_delay(&policy, n).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 700, 700, 700]);
        assert_eq!(backoff_delay(&policy, 1000).as_millis(), 700);
    }

    #[test]
    fn restart_policy_decides_by_exit() {
        use crate::config::RestartPolicy;
        let mut p = Policy {
            success_codes: vec![0, 3],
            ..Policy::default()
        };
        assert!(!wants_restart(&p, ExitStatus::Code(0)));
        assert!(!wants_restart(&p, ExitStatus::Code(3)));
        assert!(wants_restart(&p, ExitStatus::Code(1)));
        assert!(wants_restart(&p, ExitStatus::Signal(9)));
        p.restart = RestartPolicy::Always;
        assert!(wants_restart(&p, ExitStatus::Code(0)));
        p.restart = RestartPolicy::Never;
        assert!(!wants_restart(&p, ExitStatus::Signal(9)));
    }
}
