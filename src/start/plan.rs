//! One child's start: its fds (stdin, the log pipes, a socket per queue)
//! and the variables that tell it where its queues are.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use crate::broker::{Direction, QueueEnd, socket_pair};
use crate::config::names::{GroupName, QueueName};
use crate::config::{GroupSpec, Program, StartMethod};
use crate::supervisor::Pid;
use crate::sys::{FdPlan, SpawnPlan};

use super::prepare::{Prepared, cstring};

/// A started child's output pipes, for the log router.
#[derive(Debug)]
pub struct ChildOutput {
    pub group: GroupName,
    pub index: u32,
    pub pid: Pid,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The broker's ends of the child's queue sockets.
    pub queues: Vec<QueueEnd>,
    /// A pidfd for the child, when drover started it itself: its exit is
    /// reaped through it (see `crate::runtime::pidfds`).
    pub pidfd: Option<OwnedFd>,
}

/// Everything a starting child is given besides stdin, until it runs.
#[derive(Debug)]
pub struct ChildIo {
    pipes: Pipes,
    pub queues: QueueSockets,
}

impl ChildIo {
    /// Pipes and queue sockets for a child of `group`, and its start plan.
    pub fn plan(
        group: &GroupSpec,
        index: u32,
        prepared: &Prepared,
        devnull: RawFd,
    ) -> std::io::Result<(SpawnPlan, ChildIo)> {
        let queues = QueueSockets::new(group)?;
        let pipes = Pipes::new()?;
        let mut envp = prepared.envp.clone();
        envp.push(cstring(format!("DROVER_INDEX={index}").as_ref()));
        let confirms = confirm_variables(group);
        for (k, v) in queues
            .variables(keeps_fd_numbers(group))
            .into_iter()
            .chain(confirms)
        {
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
            identity: prepared.identity.clone(),
        };
        Ok((plan, ChildIo { pipes, queues }))
    }

    /// The child runs as `pid`: drover keeps the read ends of its pipes and
    /// its queue sockets; the ends the child got are closed here.
    pub fn into_output(
        self,
        group: &GroupName,
        index: u32,
        pid: Pid,
        pidfd: Option<OwnedFd>,
    ) -> ChildOutput {
        let ChildIo { pipes, queues } = self;
        ChildOutput {
            group: group.clone(),
            index,
            pid,
            stdout: pipes.stdout_r,
            stderr: pipes.stderr_r,
            queues: queues.into_ours(),
            pidfd,
        }
    }
}

/// `DROVER_CONFIRM_<QUEUE>=1` for each of `group`'s outputs with
/// `confirm = true`: the broker answers every packet the child sends there.
pub fn confirm_variables(group: &GroupSpec) -> Vec<(String, String)> {
    group
        .confirm_outputs
        .iter()
        .map(|q| (format!("DROVER_CONFIRM_{}", q.env_suffix()), "1".to_owned()))
        .collect()
}

/// One socket pair per queue the group names (inputs first, then outputs).
#[derive(Debug)]
pub struct QueueSockets {
    names: Vec<(QueueName, Direction)>,
    /// The outputs answered with confirms (as the child's environment says).
    confirm: Vec<QueueName>,
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
            confirm: group.confirm_outputs.clone(),
            ours,
            theirs,
        })
    }

    /// `DROVER_IN_<QUEUE>` / `DROVER_OUT_<QUEUE>` = the fd number the child
    /// will find its end at: 3, 4, … after stdio, or (`in_place`: the fork
    /// method for commands, which keeps fds where they are) its own number.
    pub fn variables(&self, in_place: bool) -> Vec<(String, String)> {
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
    fn into_ours(self) -> Vec<QueueEnd> {
        let confirm = self.confirm;
        self.names
            .into_iter()
            .zip(self.ours)
            .map(|((queue, direction), fd)| QueueEnd {
                confirm: direction == Direction::Out && confirm.contains(&queue),
                queue,
                direction,
                fd,
            })
            .collect()
    }
}

/// The pipes a child writes its stdout and stderr into.
#[derive(Debug)]
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

/// Whether a child keeps its queue fds at drover's numbers (a command
/// under `fork`) rather than at 3, 4, … after stdio.
fn keeps_fd_numbers(group: &GroupSpec) -> bool {
    group.start_method == StartMethod::Fork && matches!(group.program, Program::Command(_))
}
