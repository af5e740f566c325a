//! Readiness probes and health checks of children, off the loop's back.
//!
//! A child of a group with `ready = "notify"` has its own `NOTIFY_SOCKET`
//! (made by the launcher before it starts); the socket is in the loop's
//! epoll set, and `READY=1` on it makes the child ready. With `{ tcp = ... }`
//! a non-blocking connect is tried, one at a time, every [`PROBE_PERIOD`];
//! with `{ command = [...] }` the command runs, one at a time, every
//! [`PROBE_PERIOD`], and exit 0 means ready. The supervisor hears of it
//! through [`crate::supervisor::Supervisor::child_ready`].
//!
//! Once a child is running, its `health` command runs every `interval`
//! (from the end of one check to the start of the next), killed after
//! `timeout`; after `retries` failures in a row the child is restarted
//! ([`crate::supervisor::Supervisor::health_failed`]).
//!
//! Probe processes are reaped like children (through a pidfd, or the
//! `waitpid` sweep) and handed here by PID: they are not in the
//! supervisor's index, so their exits are never taken for a child's. All
//! state of a child's probes goes when the child exits; a probe process
//! still running then is killed and reaped later.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, connect, getsockopt, socket,
    sockopt,
};

use super::Runtime;
use crate::config::names::GroupName;
use crate::config::signal::Signal;
use crate::config::{GroupSpec, HealthCheck, Readiness};
use crate::supervisor::{ChildState, ExitStatus, Pid, after, min_start_secs};

/// How often a `tcp` or `command` readiness probe is tried.
pub const PROBE_PERIOD: Duration = Duration::from_millis(100);

/// A TCP connect or a probe command that takes longer is abandoned
/// (the command killed) and counts as "not ready yet".
const ATTEMPT_BOUND: Duration = Duration::from_secs(1);

/// Datagrams read from one `NOTIFY_SOCKET` per event: a child flooding
/// its socket cannot hold the loop (the rest wait for the next turn).
const NOTIFY_READS_PER_EVENT: usize = 16;

/// The longest datagram read whole (longer ones are truncated).
const NOTIFY_DATAGRAM_BYTES: usize = 4096;

/// The longest `STATUS=` text kept, in bytes.
const STATUS_TEXT_BYTES: usize = 256;

/// What a probe found out, for the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ready(Pid),
    /// The health check failed this many times in a row.
    Unhealthy(Pid, u32),
}

/// One try of a probe or check.
#[derive(Debug)]
enum Attempt {
    /// The next one starts at this moment.
    Idle(Instant),
    /// A TCP connect under way (its socket in epoll for EPOLLOUT).
    Connecting {
        socket: OwnedFd,
        token: u64,
        until: Instant,
    },
    /// A probe process runs; killed at `until`.
    Process {
        pid: Pid,
        until: Instant,
        killed: bool,
    },
}

impl Attempt {
    fn deadline(&self) -> Option<Instant> {
        match self {
            Attempt::Idle(at) => Some(*at),
            Attempt::Connecting { until, .. } => Some(*until),
            Attempt::Process { until, killed, .. } => (!killed).then_some(*until),
        }
    }
}

/// The probes of one child process.
#[derive(Debug)]
struct Probed {
    group: GroupName,
    notify: Option<(u64, UnixDatagram)>,
    status_text: Option<String>,
    /// The `tcp` / `command` readiness probe, until the child is ready.
    ready: Option<Attempt>,
    health: Option<Health>,
}

#[derive(Debug)]
struct Health {
    check: HealthCheck,
    /// Consecutive failures.
    failures: u32,
    attempt: Attempt,
}

/// Every child's probes; see the module documentation.
#[derive(Debug, Default)]
pub struct Probes {
    children: HashMap<Pid, Probed>,
    /// Loop tokens of notify sockets and TCP connects: their child.
    tokens: HashMap<u64, Pid>,
    /// Running probe processes: their child (which may be gone).
    processes: HashMap<Pid, Pid>,
    /// Probe deadlines, earliest first, so that no loop turn scans every
    /// child. Entries are hints: every change of a child's probes pushes
    /// its new deadline ([`Probes::arm`]); an outdated entry is dropped
    /// when it comes up, and the heap is rebuilt when outdated entries
    /// outnumber live ones.
    heap: BinaryHeap<Reverse<(Instant, Pid)>>,
}

/// Heaps smaller than this are never compacted.
const COMPACT_FLOOR: usize = 1024;

impl Probed {
    fn deadline(&self) -> Option<Instant> {
        let health = self.health.as_ref().and_then(|h| h.attempt.deadline());
        let ready = self.ready.as_ref().and_then(Attempt::deadline);
        ready.into_iter().chain(health).min()
    }
}

impl Probes {
    pub fn owns(&self, token: u64) -> bool {
        self.tokens.contains_key(&token)
    }

    /// The earliest moment a probe may need attention (possibly an
    /// outdated entry: then the wake-up just drops it).
    pub fn deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Notes the current deadline of `child`'s probes after a change.
    fn arm(&mut self, child: Pid) {
        if let Some(at) = self.children.get(&child).and_then(Probed::deadline) {
            self.heap.push(Reverse((at, child)));
        }
        if self.heap.len() > COMPACT_FLOOR && self.heap.len() > 4 * self.children.len() {
            self.heap = self
                .children
                .iter()
                .filter_map(|(pid, p)| Some(Reverse((p.deadline()?, *pid))))
                .collect();
        }
    }

    /// The children whose probes are due at `now` (their entries leave the
    /// heap; [`Probes::arm`] puts their next ones in).
    fn take_due(&mut self, now: Instant) -> Vec<Pid> {
        let mut due = Vec::new();
        let mut seen = HashSet::new();
        while let Some(&Reverse((at, child))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            let live = self.children.get(&child).and_then(Probed::deadline);
            if live.is_some_and(|d| d <= now) && seen.insert(child) {
                due.push(child);
            }
        }
        due
    }

    /// The last `STATUS=` of child `pid`, and its consecutive failed health
    /// checks.
    pub fn status_of(&self, pid: Pid) -> (Option<String>, u32) {
        match self.children.get(&pid) {
            Some(p) => (
                p.status_text.clone(),
                p.health.as_ref().map_or(0, |h| h.failures),
            ),
            None => (None, 0),
        }
    }

    /// Child `pid` is gone: its probes end (a probe process still running
    /// is killed; it is reaped later).
    pub fn child_exited(&mut self, epoll: &Epoll, pid: Pid) {
        let Some(p) = self.children.remove(&pid) else {
            return;
        };
        if let Some((token, socket)) = p.notify {
            self.tokens.remove(&token);
            let _ = epoll.delete(socket.as_fd());
        }
        let attempts = p.ready.into_iter().chain(p.health.map(|h| h.attempt));
        for attempt in attempts {
            match attempt {
                Attempt::Connecting { socket, token, .. } => {
                    self.tokens.remove(&token);
                    let _ = epoll.delete(socket.as_fd());
                }
                Attempt::Process { pid, killed, .. } if !killed => kill_probe(pid),
                _ => {}
            }
        }
    }

    /// A reaped process that may be a probe: true if it was one.
    fn reaped(&mut self, pid: Pid, status: ExitStatus, now: Instant) -> Option<Option<Verdict>> {
        let child = self.processes.remove(&pid)?;
        let Some(p) = self.children.get_mut(&child) else {
            return Some(None); // its child is gone
        };
        let ok = status == ExitStatus::Code(0);
        if let Some(Attempt::Process { pid: probe, .. }) = &p.ready
            && *probe == pid
        {
            if ok {
                p.ready = None;
                return Some(Some(Verdict::Ready(child)));
            }
            p.ready = Some(Attempt::Idle(after(now, PROBE_PERIOD)));
            return Some(None);
        }
        if let Some(h) = p.health.as_mut()
            && matches!(h.attempt, Attempt::Process { pid: probe, .. } if probe == pid)
        {
            h.attempt = Attempt::Idle(after(now, h.check.interval));
            if ok {
                h.failures = 0;
                return Some(None);
            }
            h.failures = h.failures.saturating_add(1);
            tracing::info!(
                group = %p.group,
                pid = child.0,
                "{} (pid {}): health check failed ({}, {} of {})",
                p.group,
                child.0,
                crate::supervisor::describe(status),
                h.failures,
                h.check.retries
            );
            if h.failures >= h.check.retries {
                return Some(Some(Verdict::Unhealthy(child, h.failures)));
            }
        }
        Some(None)
    }

    /// Reads a notify socket or finishes a TCP connect.
    fn on_event(&mut self, epoll: &Epoll, token: u64) -> Option<Verdict> {
        let child = *self.tokens.get(&token)?;
        let p = self.children.get_mut(&child)?;
        if let Some((t, socket)) = &p.notify
            && *t == token
        {
            return read_notify(socket, &mut p.status_text).then_some(Verdict::Ready(child));
        }
        let Some(Attempt::Connecting { socket, .. }) = &p.ready else {
            return None;
        };
        let connected = matches!(getsockopt(socket, sockopt::SocketError), Ok(0));
        let _ = epoll.delete(socket.as_fd());
        self.tokens.remove(&token);
        if connected {
            p.ready = None;
            return Some(Verdict::Ready(child));
        }
        p.ready = Some(Attempt::Idle(after(Instant::now(), PROBE_PERIOD)));
        None
    }
}

/// Reads what is waiting on a notify socket (a bounded amount). Returns
/// whether it said `READY=1`.
fn read_notify(socket: &UnixDatagram, status_text: &mut Option<String>) -> bool {
    let mut buf = [0u8; NOTIFY_DATAGRAM_BYTES];
    let mut ready = false;
    for _ in 0..NOTIFY_READS_PER_EVENT {
        let Ok(n) = socket.recv(&mut buf) else {
            break; // WouldBlock: all read
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        for line in text.split('\n') {
            if line == "READY=1" {
                ready = true;
            } else if let Some(status) = line.strip_prefix("STATUS=") {
                let mut end = status.len().min(STATUS_TEXT_BYTES);
                while !status.is_char_boundary(end) {
                    end -= 1;
                }
                *status_text = Some(status[..end].to_owned());
            }
        }
    }
    ready
}

fn kill_probe(pid: Pid) {
    if pid.0 > 1 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid.0), Signal::Kill.to_nix());
    }
}

/// Starts a non-blocking connect to `addr`: `Ok(None)` connected at once,
/// `Ok(Some(socket))` under way.
fn start_connect(addr: SocketAddr) -> nix::Result<Option<OwnedFd>> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let socket = socket(family, SockType::Stream, flags, None)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    let connected = match addr {
        SocketAddr::V4(a) => connect(fd, &SockaddrIn::from(a)),
        SocketAddr::V6(a) => connect(fd, &SockaddrIn6::from(a)),
    };
    match connected {
        Ok(()) => Ok(None),
        Err(Errno::EINPROGRESS) => Ok(Some(socket)),
        Err(e) => Err(e),
    }
}

impl Runtime {
    /// A child just started (`notify`: its socket): sets up its probes.
    pub(super) fn probe_child(
        &mut self,
        group: &GroupName,
        pid: Pid,
        notify: Option<UnixDatagram>,
        now: Instant,
    ) {
        let policy = self.config.groups.get(group).map(|spec| &spec.policy);
        let ready = match policy.map(|p| &p.ready) {
            Some(Readiness::Tcp(_) | Readiness::Command(_)) => Some(Attempt::Idle(now)),
            _ => None,
        };
        // Under the default readiness the child runs after start_secs; the
        // first check waits an interval beyond (it is put off while the
        // child is not running). Otherwise it starts at readiness.
        let health = policy.and_then(|policy| {
            let check = policy.health.clone()?;
            Some(Health {
                attempt: Attempt::Idle(after(
                    now,
                    min_start_secs(policy).saturating_add(check.interval),
                )),
                check,
                failures: 0,
            })
        });
        let notify = notify.and_then(|socket| {
            self.next_token += 1;
            let token = self.next_token;
            let event = EpollEvent::new(EpollFlags::EPOLLIN, token);
            match self.epoll.add(socket.as_fd(), event) {
                Ok(()) => Some((token, socket)),
                Err(e) => {
                    tracing::warn!("{group} (pid {}): cannot watch NOTIFY_SOCKET: {e}", pid.0);
                    None
                }
            }
        });
        if notify.is_none() && ready.is_none() && health.is_none() {
            return;
        }
        if let Some((token, _)) = &notify {
            self.probes.tokens.insert(*token, pid);
        }
        self.probes.children.insert(
            pid,
            Probed {
                group: group.clone(),
                notify,
                status_text: None,
                ready,
                health,
            },
        );
        self.probes.arm(pid);
    }

    /// After a reload: every live child's health check follows its group's
    /// new `health` (added, changed or removed), without a restart. A
    /// check under way finishes under the old rules (or is killed, when
    /// `health` is gone).
    pub(super) fn refresh_health(&mut self, now: Instant) {
        let live: Vec<(GroupName, Pid)> = self
            .sup
            .groups()
            .flat_map(|g| {
                g.children.iter().filter_map(move |c| match c.state {
                    ChildState::Starting { pid, .. } | ChildState::Running { pid, .. } => {
                        Some((g.spec.name.clone(), pid))
                    }
                    _ => None,
                })
            })
            .collect();
        for (group, pid) in live {
            let health = self
                .config
                .groups
                .get(&group)
                .and_then(|s| s.policy.health.clone());
            let fresh = |check: HealthCheck| Health {
                attempt: Attempt::Idle(after(now, check.interval)),
                check,
                failures: 0,
            };
            match (self.probes.children.get_mut(&pid), health) {
                (Some(p), Some(check)) => match &mut p.health {
                    Some(h) => h.check = check,
                    None => p.health = Some(fresh(check)),
                },
                (Some(p), None) => {
                    if let Some(Health {
                        attempt:
                            Attempt::Process {
                                pid, killed: false, ..
                            },
                        ..
                    }) = p.health.take()
                    {
                        kill_probe(pid);
                    }
                }
                (None, Some(check)) => {
                    self.probes.children.insert(
                        pid,
                        Probed {
                            group,
                            notify: None,
                            status_text: None,
                            ready: None,
                            health: Some(fresh(check)),
                        },
                    );
                }
                (None, None) => continue,
            }
            self.probes.arm(pid);
        }
    }

    /// An event on a probe's fd.
    pub(super) fn on_probe_event(&mut self, token: u64, now: Instant) {
        let child = self.probes.tokens.get(&token).copied();
        if let Some(verdict) = self.probes.on_event(&self.epoll, token) {
            self.apply_verdict(verdict, now);
        }
        if let Some(child) = child {
            self.probes.arm(child);
        }
    }

    /// A reaped process: true if it was a probe (its result is applied).
    pub(super) fn probe_reaped(&mut self, pid: Pid, status: ExitStatus, now: Instant) -> bool {
        let child = self.probes.processes.get(&pid).copied();
        match self.probes.reaped(pid, status, now) {
            None => false,
            Some(verdict) => {
                if let Some(verdict) = verdict {
                    self.apply_verdict(verdict, now);
                }
                if let Some(child) = child {
                    self.probes.arm(child);
                }
                true
            }
        }
    }

    fn apply_verdict(&mut self, verdict: Verdict, now: Instant) {
        match verdict {
            Verdict::Ready(pid) => {
                if self.sup.child_ready(pid, &mut self.launcher, now)
                    && let Some(h) = self
                        .probes
                        .children
                        .get_mut(&pid)
                        .and_then(|p| p.health.as_mut())
                {
                    h.attempt = Attempt::Idle(after(now, h.check.interval));
                }
            }
            Verdict::Unhealthy(pid, failures) => {
                if self
                    .sup
                    .health_failed(pid, failures, &mut self.launcher, now)
                    && let Some(p) = self.probes.children.get_mut(&pid)
                {
                    // Its process is on its way out: no more checks.
                    p.health = None;
                }
            }
        }
        let (Verdict::Ready(pid) | Verdict::Unhealthy(pid, _)) = verdict;
        self.probes.arm(pid);
    }

    /// Starts, abandons or kills the probes whose moment has come.
    pub(super) fn run_probes(&mut self, now: Instant) {
        if self.probes.deadline().is_none_or(|d| d > now) {
            return;
        }
        for child in self.probes.take_due(now) {
            self.run_ready_probe(child, now);
            self.run_health_check(child, now);
            self.probes.arm(child);
        }
    }

    fn run_ready_probe(&mut self, child: Pid, now: Instant) {
        let Some(p) = self.probes.children.get_mut(&child) else {
            return;
        };
        if p.ready
            .as_ref()
            .and_then(Attempt::deadline)
            .is_none_or(|d| d > now)
        {
            return;
        }
        let Some(attempt) = p.ready.take() else {
            return;
        };
        let group = p.group.clone();
        let next = Attempt::Idle(after(now, PROBE_PERIOD));
        let attempt = match attempt {
            Attempt::Idle(_) => {
                let Some(spec) = self.config.groups.get(&group).cloned() else {
                    return;
                };
                match &spec.policy.ready {
                    Readiness::Tcp(addr) => match start_connect(*addr) {
                        Ok(None) => {
                            self.apply_verdict(Verdict::Ready(child), now);
                            return;
                        }
                        Ok(Some(socket)) => {
                            self.next_token += 1;
                            let token = self.next_token;
                            let event = EpollEvent::new(EpollFlags::EPOLLOUT, token);
                            if self.epoll.add(socket.as_fd(), event).is_err() {
                                next
                            } else {
                                self.probes.tokens.insert(token, child);
                                Attempt::Connecting {
                                    socket,
                                    token,
                                    until: after(now, ATTEMPT_BOUND),
                                }
                            }
                        }
                        Err(_) => next, // refused: not listening yet
                    },
                    Readiness::Command(argv) => {
                        match self.spawn_probe(&spec, argv, child, now, ATTEMPT_BOUND) {
                            Ok(attempt) => attempt,
                            Err(e) => {
                                tracing::debug!(group = %group, pid = child.0, "cannot run the readiness probe: {e}");
                                next
                            }
                        }
                    }
                    // The group's readiness changed on reload: ready by the
                    // new rule's own means (notify), or at start_secs.
                    Readiness::Started | Readiness::Notify => return,
                }
            }
            Attempt::Connecting { socket, token, .. } => {
                // Took too long: abandoned, tried again.
                self.probes.tokens.remove(&token);
                let _ = self.epoll.delete(socket.as_fd());
                next
            }
            Attempt::Process { pid, until, .. } => {
                // Hung: killed; the next one starts once it is reaped.
                kill_probe(pid);
                Attempt::Process {
                    pid,
                    until,
                    killed: true,
                }
            }
        };
        if let Some(p) = self.probes.children.get_mut(&child) {
            p.ready = Some(attempt);
        }
    }

    fn run_health_check(&mut self, child: Pid, now: Instant) {
        let Some(h) = self
            .probes
            .children
            .get_mut(&child)
            .and_then(|p| p.health.as_mut())
        else {
            return;
        };
        match h.attempt {
            Attempt::Idle(at) if at <= now => {}
            Attempt::Process {
                pid,
                until,
                killed: false,
            } if until <= now => {
                // Killed at its timeout: a failure, once it is reaped.
                kill_probe(pid);
                h.attempt = Attempt::Process {
                    pid,
                    until,
                    killed: true,
                };
                return;
            }
            _ => return,
        }
        let (check, group) = (h.check.clone(), self.probes.children[&child].group.clone());
        if !self.sup.is_running(child) {
            // Not ready yet (or stopping): look again later.
            if let Some(h) = self
                .probes
                .children
                .get_mut(&child)
                .and_then(|p| p.health.as_mut())
            {
                h.attempt = Attempt::Idle(after(now, PROBE_PERIOD));
            }
            return;
        }
        let Some(spec) = self.config.groups.get(&group).cloned() else {
            return;
        };
        let attempt = self.spawn_probe(&spec, &check.command, child, now, check.timeout);
        let Some(h) = self
            .probes
            .children
            .get_mut(&child)
            .and_then(|p| p.health.as_mut())
        else {
            return;
        };
        match attempt {
            Ok(attempt) => h.attempt = attempt,
            Err(e) => {
                // A check that cannot run failed.
                h.failures = h.failures.saturating_add(1);
                h.attempt = Attempt::Idle(after(now, h.check.interval));
                tracing::warn!(
                    group = %group,
                    pid = child.0,
                    "{group} (pid {}): cannot run its health check: {e} ({} of {})",
                    child.0,
                    h.failures,
                    h.check.retries
                );
                if h.failures >= h.check.retries {
                    let failures = h.failures;
                    self.apply_verdict(Verdict::Unhealthy(child, failures), now);
                }
            }
        }
    }

    /// Starts a probe process for `child`, killed after `timeout`.
    fn spawn_probe(
        &mut self,
        spec: &GroupSpec,
        argv: &[std::ffi::OsString],
        child: Pid,
        now: Instant,
        timeout: Duration,
    ) -> Result<Attempt, crate::supervisor::LaunchError> {
        let (pid, pidfd) = self.launcher.spawn_probe(spec, argv)?;
        if let Some(pidfd) = pidfd {
            self.pidfds.watch(&self.epoll, pid, pidfd);
        }
        self.probes.processes.insert(pid, child);
        Ok(Attempt::Process {
            pid,
            until: after(now, timeout),
            killed: false,
        })
    }
}
