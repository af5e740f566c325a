//! One child's start: its fds (stdin, the log pipes, a socket per queue)
//! and the variables that tell it where its queues are.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use crate::broker::{Direction, QueueEnd, socket_pair};
use crate::config::names::{GroupName, QueueName};
use crate::config::{GroupSpec, Program, Readiness, StartMethod};
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
    /// Its `NOTIFY_SOCKET` (`ready = "notify"`), for the runtime's probes.
    pub notify: Option<NotifySocket>,
}

/// A child's own `NOTIFY_SOCKET`: a datagram socket bound to an abstract
/// address (`@drover-<drover's pid>-<n>`, as systemd's sd_notify accepts),
/// non-blocking and close-on-exec, created before the child starts.
#[derive(Debug)]
pub struct NotifySocket {
    pub socket: UnixDatagram,
    /// The address as the child's environment gives it (`@` for the
    /// abstract namespace).
    pub address: String,
}

impl NotifySocket {
    fn new() -> std::io::Result<NotifySocket> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("drover-{}-{n}", std::process::id());
        let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
        socket.set_nonblocking(true)?;
        Ok(NotifySocket {
            socket,
            address: format!("@{name}"),
        })
    }
}

/// Everything a starting child is given besides stdin, until it runs.
#[derive(Debug)]
pub struct ChildIo {
    pipes: Pipes,
    pub queues: QueueSockets,
    notify: Option<NotifySocket>,
}

impl ChildIo {
    /// Pipes and queue sockets for a child of `group`, and its start plan.
    /// `listeners` are the group's listening sockets, in its order: the
    /// child gets them at 3, 4, … with systemd's variables, its queue fds
    /// above them.
    pub fn plan(
        group: &GroupSpec,
        index: u32,
        prepared: &Prepared,
        devnull: RawFd,
        listeners: &[RawFd],
    ) -> std::io::Result<(SpawnPlan, ChildIo)> {
        let queues = QueueSockets::new(group)?;
        let pipes = Pipes::new()?;
        let notify = match group.policy.ready {
            Readiness::Notify => Some(NotifySocket::new()?),
            _ => None,
        };
        let mut envp = prepared.envp.clone();
        envp.push(cstring(format!("DROVER_INDEX={index}").as_ref()));
        if let Some(notify) = &notify {
            envp.push(cstring(
                format!("NOTIFY_SOCKET={}", notify.address).as_ref(),
            ));
        }
        envp.extend(listen_variables(group));
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
        sources.extend_from_slice(listeners);
        sources.extend(queues.theirs.iter().map(AsRawFd::as_raw_fd));
        let plan = SpawnPlan {
            program: prepared.program.clone(),
            argv: super::prepare::child_argv(prepared, &envp),
            envp,
            cwd: prepared.cwd.clone(),
            fds: FdPlan { sources },
            identity: prepared.identity.clone(),
        };
        Ok((
            plan,
            ChildIo {
                pipes,
                queues,
                notify,
            },
        ))
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
        let ChildIo {
            pipes,
            queues,
            notify,
        } = self;
        ChildOutput {
            group: group.clone(),
            index,
            pid,
            stdout: pipes.stdout_r,
            stderr: pipes.stderr_r,
            queues: queues.into_ours(),
            pidfd,
            notify,
        }
    }

    /// `NOTIFY_SOCKET`'s value for this child, if it gets one.
    pub fn notify_address(&self) -> Option<&str> {
        self.notify.as_ref().map(|n| n.address.as_str())
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

/// systemd's socket-activation variables for a child of a group with
/// `sockets`: `LISTEN_FDS`, `LISTEN_FDNAMES` and the `LISTEN_PID=` entry
/// that every start path fills with the child's own PID between its
/// creation and its exec (see [`crate::sys::PID_SLOT`]).
pub(super) fn listen_variables(group: &GroupSpec) -> Vec<std::ffi::CString> {
    if group.sockets.is_empty() {
        return Vec::new();
    }
    let names: Vec<&str> = group.sockets.iter().map(|s| s.name.as_str()).collect();
    vec![
        cstring(format!("LISTEN_FDS={}", group.sockets.len()).as_ref()),
        cstring(format!("LISTEN_FDNAMES={}", names.join(":")).as_ref()),
        std::ffi::CString::new(crate::sys::PID_SLOT).expect("no NUL"),
    ]
}

/// One socket pair per queue the group names (inputs first, then outputs).
#[derive(Debug)]
pub struct QueueSockets {
    names: Vec<(QueueName, Direction)>,
    /// The outputs answered with confirms (as the child's environment says).
    confirm: Vec<QueueName>,
    ours: Vec<OwnedFd>,
    theirs: Vec<OwnedFd>,
    /// The fd number of the first queue in the child (when not in place):
    /// 3, after stdio, or above the group's listening sockets.
    first: i32,
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
            first: 3 + group.sockets.len() as i32,
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
                    self.first + i as i32
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
    /// Both ends blocking: the read ends become non-blocking when the loop
    /// starts reading them (`Output::watch`), once the child is started,
    /// so that those two calls are not on the way to a restart's exec.
    fn new() -> std::io::Result<Self> {
        let flags = OFlag::O_CLOEXEC;
        let (stdout_r, stdout_w) = pipe2(flags)?;
        let (stderr_r, stderr_w) = pipe2(flags)?;
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
/// A group with `sockets` places every fd from 3 on (its sockets first).
pub fn keeps_fd_numbers(group: &GroupSpec) -> bool {
    group.start_method == StartMethod::Fork
        && matches!(group.program, Program::Command(_))
        && group.sockets.is_empty()
}
