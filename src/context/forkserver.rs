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
//! The parent holds one end of a `SOCK_SEQPACKET` pair (the control
//! socket); the server got the other at fd 3 (argv
//! `[argv0, --drover-context-forkserver, 3]`). To start a child the parent
//! makes a fresh connection pair and sends one packet `R` over the control
//! socket carrying, by SCM_RIGHTS, the connection's far end, a memfd with
//! the boot payload and the queue fds. On that connection the server
//! answers `P` + PID (little-endian `i32`) with a pidfd of the child
//! attached — or `E` + errno if it could not fork — and later `X` + exit
//! code (negative signal number for a signal death): the server is the
//! child's parent, so only it can learn the status. When the control socket
//! reaches end of file (every copy in the parent closed, e.g. the parent
//! exited) the server exits; running children go on.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::boot::Received;
use super::error::Error;
use super::process::{Job, Reaper, Running, abandon, child_exit_code};
use super::spawn::{environment, payload_memfd, self_argv};
use crate::sys::context::{
    MAX_FDS_PER_MESSAGE, fork_run, pidfd_open, recv_with_fds, send_with_fds, spawn_self,
};

/// The argv flag of the fork server; the next argument is its control fd.
pub(crate) const SERVER_FLAG: &str = "--drover-context-forkserver";

/// Where the server finds its control socket.
const CONTROL_FD: RawFd = 3;

/// The running server, as the parent sees it.
struct Server {
    pid: i32,
    control: OwnedFd,
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

fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::io("socketpair")(e.into()))
}

impl Server {
    fn start() -> Result<Server, Error> {
        let (control, far) = seqpacket_pair()?;
        let argv = self_argv(SERVER_FLAG, CONTROL_FD);
        let pid = spawn_self(&argv, &environment(), &[far.as_fd()])
            .map_err(Error::io("fork server spawn"))?;
        Ok(Server { pid, control })
    }
}

/// Asks the fork server (started now if need be) for a child that runs
/// `job`.
pub(crate) fn start(job: &dyn Job) -> Result<Running, Error> {
    let payload = job.payload()?;
    let boot = payload_memfd(&payload)?;
    let (conn, far) = seqpacket_pair()?;
    let mut fds = vec![far.as_fd(), boot.as_fd()];
    fds.extend(payload.fds());
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(Error::TooManyFds {
            count: fds.len() - 2,
            max: MAX_FDS_PER_MESSAGE - 2,
        });
    }
    request(&fds)?;
    drop((far, boot));
    let mut reply = [0u8; 8];
    let (len, mut got) =
        recv_with_fds(conn.as_fd(), &mut reply).map_err(Error::io("fork server reply"))?;
    let reply = &reply[..len];
    match (untag(reply, b'P'), untag(reply, b'E'), got.pop()) {
        (Some(pid), None, Some(pidfd)) if got.is_empty() => Ok(Running {
            pid,
            pidfd,
            reaper: Reaper::Server(conn),
        }),
        (None, Some(errno), None) => Err(Error::io("fork server fork")(
            std::io::Error::from_raw_os_error(errno),
        )),
        _ if reply.is_empty() => Err(Error::Forkserver("exited before answering")),
        _ => Err(Error::Forkserver("malformed reply")),
    }
}

/// Sends a request, starting the server on first use, and once more on a
/// fresh server if the old one has died.
fn request(fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
    let mut server = lock();
    for _attempt in 0..2 {
        if server.is_none() {
            *server = Some(Server::start()?);
        }
        let Some(s) = server.as_ref() else {
            continue;
        };
        match send_with_fds(s.control.as_fd(), b"R", fds) {
            Ok(()) => return Ok(()),
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

/// The exit code in an `X` report.
pub(crate) fn decode_exit(msg: &[u8]) -> Option<i32> {
    untag(msg, b'X')
}

/// A server message: `tag` and a little-endian `i32`.
fn tagged(tag: u8, value: i32) -> [u8; 5] {
    let v = value.to_le_bytes();
    [tag, v[0], v[1], v[2], v[3]]
}

/// The value of a [`tagged`] message, if it has this tag.
fn untag(msg: &[u8], tag: u8) -> Option<i32> {
    match msg {
        [t, a, b, c, d] if *t == tag => Some(i32::from_le_bytes([*a, *b, *c, *d])),
        _ => None,
    }
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
    /// Each running child and the connection its status goes to.
    children: Vec<(Pid, OwnedFd)>,
    /// The signal mask to give children back.
    mask: SigSet,
}

impl ServerLoop {
    fn new(control_fd: RawFd) -> std::io::Result<ServerLoop> {
        let control = crate::sys::context::claim_inherited_fd(control_fd)?;
        crate::sys::context::warm_up();
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
                let mut buf = [0u8; 8];
                let (len, fds) = match recv_with_fds(control.as_fd(), &mut buf) {
                    Ok(received) => received,
                    // A truncated request: its fds are closed, nothing to do.
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => continue,
                    Err(e) => return Err(e),
                };
                if len == 0 && fds.is_empty() {
                    return Ok(());
                }
                if &buf[..len] == b"R" {
                    self.fork_child(fds);
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
        self.children.retain(|(pid, conn)| {
            let code = match waitpid(*pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => code,
                Ok(WaitStatus::Signaled(_, signal, _)) => -(signal as i32),
                Err(Errno::ECHILD) => return false,
                _ => return true,
            };
            // The parent may have dropped its Process; then nobody listens.
            let _ = send_with_fds(conn.as_fd(), &tagged(b'X', code), &[]);
            false
        });
    }

    /// Handles one request: `[connection, payload memfd, queue fds…]`.
    fn fork_child(&mut self, fds: Vec<OwnedFd>) {
        let mut fds = fds.into_iter();
        let (Some(conn), Some(boot)) = (fds.next(), fds.next()) else {
            return;
        };
        let queue_fds: Vec<OwnedFd> = fds.collect();
        let payload = match read_all(boot) {
            Ok(bytes) => bytes,
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                let _ = send_with_fds(conn.as_fd(), &tagged(b'E', errno), &[]);
                return;
            }
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
        let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        let pid = match forked {
            Ok(pid) => pid,
            Err(e) => {
                let _ = send_with_fds(conn.as_fd(), &tagged(b'E', errno(e)), &[]);
                return;
            }
        };
        match pidfd_open(pid) {
            Ok(pidfd) => {
                let _ = send_with_fds(conn.as_fd(), &tagged(b'P', pid), &[pidfd.as_fd()]);
            }
            Err(e) => {
                // Unmanageable for the parent: stop it; it is reaped as usual.
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = send_with_fds(conn.as_fd(), &tagged(b'E', errno(e)), &[]);
            }
        }
        self.children.push((Pid::from_raw(pid), conn));
    }
}

fn read_all(fd: OwnedFd) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::from(fd);
    std::io::Seek::rewind(&mut file)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}
