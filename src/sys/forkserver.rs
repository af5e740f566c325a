//! The fork server of the `forkserver` start method.
//!
//! The server is drover itself, re-executed (`/proc/self/exe`) with
//! [`ENV_FD`] naming its end of a `SOCK_SEQPACKET` socket pair: a fresh,
//! single-threaded, small process that holds nothing but that socket, however
//! large and multi-threaded the supervisor has become — and it can be
//! restarted in exactly the same state if it dies. For each request it
//! receives a prepared program start with the child's fds (SCM_RIGHTS), and
//! starts it with `clone(CLONE_PARENT)`: the child's parent is drover, so
//! child exits reach the supervisor's own SIGCHLD/`waitpid` loop like any
//! other, and nothing depends on the server staying alive.
//!
//! Wire format, one packet each way, integers little-endian. Request: a u64
//! sequence number, then `program`, `cwd`, argc, argv…, envc, envp…, each as
//! a u32 length and its bytes; the fds to place at 0, 1, 2, … ride along as
//! SCM_RIGHTS. Reply: the request's sequence number (u64), errno (i32, 0 on
//! success) and PID (i32). The sequence number lets the client drop a late
//! reply to a request it already gave up on.

use std::ffi::CString;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg, setsockopt, sockopt,
};

use super::forkexec::{ExecSetup, FdSetup, ForkKind, fork_exec};
use super::{FdPlan, SpawnPlan, relocate_sources, spawn};

/// Environment variable through which a re-executed drover learns it is a
/// fork server, and the fd of its socket.
pub const ENV_FD: &str = "DROVER_FORKSERVER_FD";
/// Most fds one child may be given.
const MAX_FDS: usize = 64;
/// Largest request (argv + envp); SEQPACKET keeps it one message.
const MAX_REQUEST: usize = 1 << 20;

/// The supervisor's handle on a running fork server.
#[derive(Debug)]
pub struct ForkServer {
    socket: OwnedFd,
    pid: i32,
    next_seq: std::cell::Cell<u64>,
}

impl ForkServer {
    /// Starts a server: `exe` (drover's own binary) with its socket as fd 3,
    /// stdin on `devnull` and output on `stderr`.
    pub fn start(exe: &Path, devnull: RawFd, stderr: RawFd) -> io::Result<ForkServer> {
        let (ours, theirs) = super::seqpacket_pair()?;
        setsockopt(
            &ours,
            sockopt::ReceiveTimeout,
            &timeval(Duration::from_secs(10)),
        )?;
        setsockopt(&ours, sockopt::SndBuf, &MAX_REQUEST)?;
        let program = CString::new(exe.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::other("drover's path contains NUL"))?;
        let mut envp: Vec<CString> = Vec::new();
        envp.push(CString::new(format!("{ENV_FD}=3")).expect("no NUL"));
        if let Ok(log) = std::env::var("DROVER_LOG") {
            envp.extend(CString::new(format!("DROVER_LOG={log}")));
        }
        let plan = SpawnPlan {
            program,
            argv: vec![CString::new("drover-forkserver").expect("no NUL")],
            envp,
            cwd: CString::new("/").expect("no NUL"),
            fds: FdPlan {
                sources: vec![devnull, stderr, stderr, theirs.as_raw_fd()],
            },
        };
        let pid = spawn(&plan)?;
        Ok(ForkServer {
            socket: ours,
            pid,
            next_seq: std::cell::Cell::new(1),
        })
    }

    /// The server's PID (its death is noticed by the supervisor's reaper).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Asks the server to start `plan`; returns the child's PID.
    pub fn spawn(&self, plan: &SpawnPlan) -> io::Result<i32> {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        let mut request = seq.to_le_bytes().to_vec();
        request.extend(encode(plan));
        let fds = &plan.fds.sources;
        if fds.len() > MAX_FDS {
            return Err(io::Error::other(format!(
                "more than {MAX_FDS} fds for one child"
            )));
        }
        let cmsg = [ControlMessage::ScmRights(fds)];
        retry(|| {
            sendmsg::<()>(
                self.socket.as_raw_fd(),
                &[IoSlice::new(&request)],
                &cmsg,
                MsgFlags::empty(),
                None,
            )
        })?;
        loop {
            let mut reply = [0u8; 16];
            let n = retry(|| {
                nix::sys::socket::recv(self.socket.as_raw_fd(), &mut reply, MsgFlags::empty())
            })?;
            if n != reply.len() {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the fork server went away",
                ));
            }
            let word = |at: usize| -> [u8; 4] { reply[at..at + 4].try_into().expect("sized") };
            let got: [u8; 8] = reply[..8].try_into().expect("sized");
            if u64::from_le_bytes(got) != seq {
                continue; // a late answer to an abandoned request
            }
            let errno = i32::from_le_bytes(word(8));
            let pid = i32::from_le_bytes(word(12));
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(errno));
            }
            return Ok(pid);
        }
    }
}

/// Runs a socket call again when a signal (SIGCHLD, typically) interrupts it.
fn retry<T>(mut call: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

fn timeval(d: Duration) -> nix::sys::time::TimeVal {
    nix::sys::time::TimeVal::new(d.as_secs() as _, d.subsec_micros() as _)
}

fn encode(plan: &SpawnPlan) -> Vec<u8> {
    let mut out = Vec::new();
    let mut put = |bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    put(plan.program.as_bytes());
    put(plan.cwd.as_bytes());
    put(&(plan.argv.len() as u32).to_le_bytes());
    for arg in &plan.argv {
        put(arg.as_bytes());
    }
    put(&(plan.envp.len() as u32).to_le_bytes());
    for var in &plan.envp {
        put(var.as_bytes());
    }
    out
}

/// A request as the server decodes it.
struct Request {
    program: CString,
    cwd: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

fn decode(mut buf: &[u8]) -> Option<Request> {
    let mut take = || -> Option<&[u8]> {
        let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
        let bytes = buf.get(4..4 + len)?;
        buf = &buf[4 + len..];
        Some(bytes)
    };
    let cstr = |b: &[u8]| CString::new(b).ok();
    let count = |b: &[u8]| Some(u32::from_le_bytes(b.try_into().ok()?) as usize);
    let program = cstr(take()?)?;
    let cwd = cstr(take()?)?;
    let argc = count(take()?)?;
    let argv = (0..argc)
        .map(|_| take().and_then(cstr))
        .collect::<Option<_>>()?;
    let envc = count(take()?)?;
    let envp = (0..envc)
        .map(|_| take().and_then(cstr))
        .collect::<Option<_>>()?;
    Some(Request {
        program,
        cwd,
        argv,
        envp,
    })
}

/// If this process was started as a fork server, serves until drover closes
/// the socket, then exits. Call first thing in `main`.
pub fn serve_if_requested() {
    let Some(fd) = std::env::var(ENV_FD)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
    else {
        return;
    };
    // SAFETY: drover placed the socket at this fd for us and nothing else in
    // this fresh process owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let code = match serve(&socket) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("drover-forkserver: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn serve(socket: &OwnedFd) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => msg,
                Err(nix::errno::Errno::EINTR) => continue,
                // drover is gone: nothing left to serve.
                Err(nix::errno::Errno::ECONNRESET) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let mut fds: Vec<OwnedFd> = Vec::new();
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: SCM_RIGHTS just installed these fds in this
                    // process; each is owned by exactly one OwnedFd.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            (msg.bytes, fds)
        };
        if len == 0 {
            return Ok(()); // drover closed the socket: it is done with us.
        }
        let seq = buf
            .get(..8)
            .map_or([0; 8], |b| b.try_into().expect("8 bytes"));
        let result = match buf.get(8..len).and_then(decode) {
            Some(request) => start(request, &fds),
            None => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        drop(fds);
        let (errno, pid) = match result {
            Ok(pid) => (0, pid),
            Err(e) => (e.raw_os_error().unwrap_or(libc::EIO), 0),
        };
        let mut reply = [0u8; 16];
        reply[..8].copy_from_slice(&seq);
        reply[8..12].copy_from_slice(&errno.to_le_bytes());
        reply[12..].copy_from_slice(&pid.to_le_bytes());
        match retry(|| nix::sys::socket::send(socket.as_raw_fd(), &reply, MsgFlags::empty())) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Starts one child as drover's child: fds placed at 0..n, the rest closed.
fn start(request: Request, fds: &[OwnedFd]) -> io::Result<i32> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let (sources, _moved) = relocate_sources(&raw)?;
    let setup = ExecSetup::new(
        request.program,
        request.argv,
        request.envp,
        request.cwd,
        FdSetup {
            dups: sources
                .iter()
                .enumerate()
                .map(|(i, &s)| (s, i as RawFd))
                .collect(),
            keep: Vec::new(),
            close_from: Some(sources.len() as RawFd),
        },
    );
    fork_exec(&setup, ForkKind::SiblingOfCaller)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let plan = SpawnPlan {
            program: CString::new("/bin/echo").unwrap(),
            argv: vec![
                CString::new("echo").unwrap(),
                CString::new("hi there").unwrap(),
            ],
            envp: vec![CString::new("A=1").unwrap()],
            cwd: CString::new("/tmp").unwrap(),
            fds: FdPlan { sources: vec![] },
        };
        let r = decode(&encode(&plan)).unwrap();
        assert_eq!(r.program, plan.program);
        assert_eq!(r.argv, plan.argv);
        assert_eq!(r.envp, plan.envp);
        assert_eq!(r.cwd, plan.cwd);
        assert!(
            decode(&encode(&plan)[..10]).is_none(),
            "truncated input is refused"
        );
    }
}
