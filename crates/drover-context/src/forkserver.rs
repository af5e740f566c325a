//! The `forkserver` start method: a clean server process, started on first
//! use as a spawn of this program, forks each child; the child runs the
//! target without exec.
//!
//! The server is single-threaded and has run nothing but
//! [`init`](super::init), so forking it is safe whatever the parent's
//! threads do, and cheap whatever the parent's size.
//!
//! # Protocol
//!
//! drover's start-helper framing ([`drover_sys::wire`]), on `SOCK_SEQPACKET`
//! sockets. The parent holds one end of a pair (the control socket); the
//! server got the other at fd 3 (argv `[argv0, --drover-context-forkserver,
//! 3]`). To start a child the parent makes a fresh connection pair and
//! sends over the control socket a **request**: a sequence number (1, 2, …
//! per server) and one field, the number of queue fds, with by SCM_RIGHTS
//! the connection's far end, a memfd with the boot payload and the queue
//! fds. On that connection the server answers with a **reply** of the same
//! sequence number: the child's PID with a pidfd of the child attached, or
//! the errno of what failed. Later it sends an **exit notice**, framed like
//! a request: the sequence number and one field, the exit code as a
//! little-endian `i32` (negative signal number for a signal death): the
//! server is the child's parent, so only it can learn the status. When the
//! control socket reaches end of file (every copy in the parent closed, e.g.
//! the parent exited) the server exits; running children go on.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use drover_sys::wire::{self, Reply, RequestBuilder};
use drover_sys::{seqpacket_pair, spawn_self};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use super::boot::Received;
use super::error::Error;
use super::process::{Job, Reaper, Running, abandon, child_exit_code, exit_code};
use super::spawn::{environment, payload_memfd, self_argv};
use crate::sys::{fork_run, pidfd_open};

/// The argv flag of the fork server; the next argument is its control fd.
pub(crate) const SERVER_FLAG: &str = "--drover-context-forkserver";

/// Where the server finds its control socket.
const CONTROL_FD: RawFd = 3;

/// Fds of a request besides the queues': the connection and the payload.
const REQUEST_FDS: usize = 2;

/// The longest request the server reads (it is 16 bytes).
const MAX_REQUEST: usize = 64;

/// The longest exit notice the parent reads (it is 16 bytes).
pub(crate) const MAX_EXIT_NOTICE: usize = 64;

/// The running server, as the parent sees it.
struct Server {
    pid: i32,
    control: OwnedFd,
    /// The sequence number of the next request.
    next_seq: u64,
}

/// This process's fork server, started on first use.
static SERVER: Mutex<Option<Server>> = Mutex::new(None);

/// The PID of this process's fork server, if it has started one (tests
/// check that one server serves every start).
pub fn server_pid() -> Option<i32> {
    lock().as_ref().map(|s| s.pid)
}

fn lock() -> std::sync::MutexGuard<'static, Option<Server>> {
    SERVER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn socket_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    seqpacket_pair().map_err(Error::io("socketpair"))
}

impl Server {
    fn start() -> Result<Server, Error> {
        let (control, far) = socket_pair()?;
        let argv = self_argv(SERVER_FLAG, CONTROL_FD);
        let pid = spawn_self(&argv, &environment(), &[far.as_fd()])
            .map_err(Error::io("fork server spawn"))?;
        Ok(Server {
            pid,
            control,
            next_seq: 1,
        })
    }
}

/// Asks the fork server (started now if need be) for a child that runs
/// `job`.
pub(crate) fn start(job: &dyn Job) -> Result<Running, Error> {
    let payload = job.payload()?;
    let boot = payload_memfd(&payload)?;
    let (conn, far) = socket_pair()?;
    let queue_fds = payload.fds();
    let mut fds = vec![far.as_raw_fd(), boot.as_raw_fd()];
    fds.extend(queue_fds.iter().map(AsRawFd::as_raw_fd));
    if fds.len() > wire::SCM_MAX_FD {
        return Err(Error::TooManyFds {
            count: queue_fds.len(),
            max: wire::SCM_MAX_FD - REQUEST_FDS,
        });
    }
    let seq = request(queue_fds.len(), &fds)?;
    drop((far, boot));
    let mut buf = [0u8; wire::MAX_REPLY];
    let (len, mut got) = match wire::recv(conn.as_fd(), &mut buf, false) {
        Ok(wire::Received::Packet(len, fds)) => (len, fds),
        Ok(wire::Received::Eof) => return Err(Error::Forkserver("exited before answering")),
        Err(e) => return Err(Error::io("fork server reply")(e)),
    };
    let reply = Reply::decode(&buf[..len]).filter(|r| r.seq == seq);
    match (reply.map(|r| r.result), got.pop()) {
        (Some(Ok(pid)), Some(pidfd)) if got.is_empty() => Ok(Running {
            pid,
            pidfd,
            reaper: Reaper::Server { conn, seq },
        }),
        (Some(Err(refusal)), None) => Err(Error::io("fork server fork")(refusal.into_error())),
        _ => Err(Error::Forkserver("malformed reply")),
    }
}

/// Sends a request for a child with `queue_fds` queue fds, attaching `fds`
/// (the connection, the payload, the queue fds), starting the server on
/// first use, and once more on a fresh server if the old one has died.
/// Returns the request's sequence number.
fn request(queue_fds: usize, fds: &[RawFd]) -> Result<u64, Error> {
    let mut server = lock();
    for _attempt in 0..2 {
        if server.is_none() {
            *server = Some(Server::start()?);
        }
        let Some(s) = server.as_mut() else {
            continue;
        };
        let seq = s.next_seq;
        s.next_seq += 1;
        let mut packet = RequestBuilder::new(seq);
        packet.count(queue_fds);
        match wire::send(s.control.as_fd(), &packet.finish(), fds, false) {
            Ok(()) => return Ok(seq),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {
                if let Some(dead) = server.take() {
                    abandon(dead.pid);
                }
            }
            Err(e) => return Err(Error::io("fork server request")(e)),
        }
    }
    Err(Error::Forkserver("died and could not be replaced"))
}

/// The exit notice of the child started by request `seq`.
pub(crate) fn encode_exit(seq: u64, code: i32) -> Vec<u8> {
    let mut notice = RequestBuilder::new(seq);
    notice.field(&code.to_le_bytes());
    notice.finish()
}

/// The exit code in an exit notice about the child of request `seq`;
/// `None` for anything else.
pub(crate) fn decode_exit(msg: &[u8], seq: u64) -> Option<i32> {
    let (got, mut fields) = wire::parse_request(msg)?;
    let code = i32::from_le_bytes(fields.next_field()?.try_into().ok()?);
    (got == seq && fields.is_empty()).then_some(code)
}

// ---------------------------------------------------------------------------
// The server's side

/// The server, from `init()`: serves until the control socket closes, then
/// exits.
pub(crate) fn serve(control_fd: RawFd) -> ! {
    let code = match ServerLoop::new(control_fd).and_then(|mut s| s.run()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("drover: context fork server: {e}");
            1
        }
    };
    std::process::exit(code)
}

struct ServerLoop {
    /// `Option`s so that a forked child can close them by taking them.
    control: Option<OwnedFd>,
    sigchld: Option<SignalFd>,
    /// Each running child, the connection its status goes to, and the
    /// sequence number of the request that started it.
    children: Vec<(Pid, OwnedFd, u64)>,
    /// The signal mask to give children back.
    mask: SigSet,
}

/// A start request as the server reads it.
struct StartRequest {
    seq: u64,
    conn: OwnedFd,
    boot: OwnedFd,
    queue_fds: Vec<OwnedFd>,
}

impl StartRequest {
    /// The request in `packet` with the fds that came with it. A malformed
    /// one is `Err` with its connection, if it brought one, for the
    /// refusal.
    fn parse(packet: &[u8], fds: Vec<OwnedFd>) -> Result<StartRequest, Option<(u64, OwnedFd)>> {
        let mut fds = fds.into_iter();
        let parsed = wire::parse_request(packet).filter(|(seq, _)| *seq >= 1);
        let (Some((seq, mut fields)), Some(conn)) = (parsed, fds.next()) else {
            return Err(None);
        };
        let queues = fields.next_count().filter(|_| fields.is_empty());
        match (queues, fds.next()) {
            (Some(n), Some(boot)) if fds.len() == n => Ok(StartRequest {
                seq,
                conn,
                boot,
                queue_fds: fds.collect(),
            }),
            _ => Err(Some((seq, conn))),
        }
    }
}

impl ServerLoop {
    fn new(control_fd: RawFd) -> std::io::Result<ServerLoop> {
        let control = crate::sys::claim_inherited_fd(control_fd)?;
        crate::sys::warm_up();
        let mut mask = SigSet::empty();
        let mut chld = SigSet::empty();
        chld.add(Signal::SIGCHLD);
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), Some(&mut mask))?;
        let sigchld = SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(ServerLoop {
            control: Some(control),
            sigchld: Some(sigchld),
            children: Vec::new(),
            mask,
        })
    }

    fn run(&mut self) -> std::io::Result<()> {
        loop {
            let (control_ready, sigchld_ready) = self.wait()?;
            if sigchld_ready {
                self.reap();
            }
            if control_ready {
                let Some(control) = self.control.as_ref() else {
                    return Ok(());
                };
                let mut buf = [0u8; MAX_REQUEST];
                let (len, fds) =
                    match wire::recv_up_to(control.as_fd(), &mut buf, wire::SCM_MAX_FD, false) {
                        Ok(wire::Received::Packet(len, fds)) => (len, fds),
                        Ok(wire::Received::Eof) => return Ok(()),
                        // A truncated request: its fds are closed, nothing to do.
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => continue,
                        Err(e) => return Err(e),
                    };
                match StartRequest::parse(&buf[..len], fds) {
                    Ok(request) => self.fork_child(request),
                    Err(Some((seq, conn))) => {
                        let refusal = Reply::refused(seq, libc::EINVAL, "malformed start request");
                        let _ = wire::send(conn.as_fd(), &refusal.encode(), &[], false);
                    }
                    Err(None) => {}
                }
            }
        }
    }

    /// Blocks until the control socket or the SIGCHLD fd is readable.
    fn wait(&self) -> std::io::Result<(bool, bool)> {
        let (Some(control), Some(sigchld)) = (&self.control, &self.sigchld) else {
            return Ok((true, false));
        };
        let mut fds = [
            PollFd::new(control.as_fd(), PollFlags::POLLIN),
            PollFd::new(sigchld.as_fd(), PollFlags::POLLIN),
        ];
        loop {
            match poll(&mut fds, PollTimeout::NONE) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
                Ok(_) => break,
            }
        }
        let ready = |fd: &PollFd<'_>| fd.any().unwrap_or(false);
        Ok((ready(&fds[0]), ready(&fds[1])))
    }

    /// Reports and forgets every child that has exited.
    fn reap(&mut self) {
        if let Some(sigchld) = &self.sigchld {
            while let Ok(Some(_)) = sigchld.read_signal() {}
        }
        self.children.retain(|(pid, conn, seq)| {
            let code = match drover_sys::wait::reap(Some(pid.as_raw())) {
                Ok(Some((_, exit))) => exit_code(exit),
                Ok(None) => return true,
                // ECHILD: not ours (any more); nothing will come.
                Err(_) => return false,
            };
            // The parent may have dropped its Process; then nobody listens.
            let _ = wire::send(conn.as_fd(), &encode_exit(*seq, code), &[], false);
            false
        });
    }

    /// Handles one start request: reads the payload, forks a child that
    /// runs it, and replies.
    fn fork_child(&mut self, request: StartRequest) {
        let StartRequest {
            seq,
            conn,
            boot,
            queue_fds,
        } = request;
        let refuse = |conn: &OwnedFd, e: std::io::Error| {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            let _ = wire::send(
                conn.as_fd(),
                &Reply::refused(seq, errno, "").encode(),
                &[],
                false,
            );
        };
        let payload = match read_all(boot) {
            Ok(bytes) => bytes,
            Err(e) => return refuse(&conn, e),
        };
        let mut conn = Some(conn);
        let forked = fork_run(|| {
            // The child keeps nothing of the server: closing these is all
            // it holds besides 0, 1, 2 and its queue fds.
            conn.take();
            self.control.take();
            self.sigchld.take();
            self.children.clear();
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.mask), None);
            child_exit_code(|| {
                let payload = Received::parse(payload)?;
                payload.run(queue_fds)
            })
        });
        let Some(conn) = conn else {
            return; // only the child takes it, and the child never gets here
        };
        let pid = match forked {
            Ok(pid) => pid,
            Err(e) => return refuse(&conn, e),
        };
        match pidfd_open(pid) {
            Ok(pidfd) => {
                let reply = Reply::ok(seq, pid).encode();
                let _ = wire::send(conn.as_fd(), &reply, &[pidfd.as_raw_fd()], false);
            }
            Err(e) => {
                // Unmanageable for the parent: stop it; it is reaped as usual.
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                refuse(&conn, e);
            }
        }
        self.children.push((Pid::from_raw(pid), conn, seq));
    }
}

fn read_all(fd: OwnedFd) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::from(fd);
    std::io::Seek::rewind(&mut file)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nulls(n: usize) -> Vec<OwnedFd> {
        (0..n)
            .map(|_| std::fs::File::open("/dev/null").unwrap().into())
            .collect()
    }

    #[test]
    fn start_requests_parse_and_a_malformed_one_keeps_its_connection_for_the_refusal() {
        let mut packet = RequestBuilder::new(7);
        packet.count(2);
        let packet = packet.finish();
        // Connection, payload and two queue fds.
        let request = StartRequest::parse(&packet, nulls(4)).unwrap();
        assert_eq!((request.seq, request.queue_fds.len()), (7, 2));
        // A queue fd short: refused, on the connection it brought.
        assert!(matches!(
            StartRequest::parse(&packet, nulls(3)),
            Err(Some((7, _)))
        ));
        // No connection: nowhere to answer.
        assert!(matches!(StartRequest::parse(&packet, nulls(0)), Err(None)));
        // Sequence number 0 is a helper's hello, never a request.
        let mut hello = RequestBuilder::new(0);
        hello.count(0);
        assert!(matches!(
            StartRequest::parse(&hello.finish(), nulls(2)),
            Err(None)
        ));
        assert!(matches!(StartRequest::parse(b"R", nulls(2)), Err(None)));
    }
}
