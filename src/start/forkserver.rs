//! The fork server of the `forkserver` start method.
//!
//! The server is drover itself, re-executed (`/proc/self/exe`) with
//! [`ENV_FD`] naming its end of a `SOCK_SEQPACKET` socket pair: a fresh,
//! single-threaded, small process that holds nothing but that socket, however
//! large and multi-threaded the supervisor has become — and it can be
//! restarted in exactly the same state if it dies. For each request it
//! receives a prepared program start with the child's fds (SCM_RIGHTS), and
//! starts it with `clone(CLONE_VM | CLONE_VFORK | CLONE_PARENT)`
//! ([`SiblingStarter`]): the child's parent is drover, so child exits reach
//! the supervisor's own SIGCHLD/`waitpid` loop like any other, and nothing
//! depends on the server staying alive. The child borrows the server's
//! memory until its `execve` (on a stack of its own, the server suspended
//! meanwhile), as `posix_spawn` does: no page table is copied, and an exec
//! failure is an errno in that memory rather than on a pipe. It starts
//! exactly as a spawned child does: its fds at 0, 1, 2, …, its own process
//! group, default dispositions and an empty signal mask, drover's original
//! limits (or the group's), its user, cwd and environment. Should the
//! child's stack not be mappable, the server copies itself instead
//! (`clone(CLONE_PARENT)` without `CLONE_VM`), with the same result.
//!
//! It speaks the helpers' protocol ([`crate::sys::wire`]): a hello once it
//! runs, then one reply per request. A request's fields are the program,
//! the working directory, the argv count and arguments, the environment
//! count and variables; its fds are placed at 0, 1, 2, … in the child.

use std::ffi::CString;
use std::io::{self, Write as _};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use crate::sys::forkexec::{ExecSetup, FdSetup, SiblingStarter};
use crate::sys::wire::{self, Received, Reply, RequestBuilder};
use crate::sys::{Credentials, FdPlan, Identity, SpawnPlan, relocate, spawn};

/// Environment variable through which a re-executed drover learns it is a
/// fork server, and the fd of its socket.
pub const ENV_FD: &str = "DROVER_FORKSERVER_FD";
/// How long a new server may take to say hello (it is a fresh exec of
/// drover: milliseconds).
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a server: `exe` (drover's own binary) with its socket as fd 3,
/// stdin on `devnull` and output on `stderr`. Returns its PID and drover's
/// end of the socket.
pub fn launch(exe: &Path, devnull: RawFd, stderr: RawFd) -> io::Result<(i32, OwnedFd)> {
    let (ours, theirs) = crate::sys::seqpacket_pair()?;
    nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::SndBuf, &wire::MAX_REQUEST)?;
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
        identity: Identity::default(),
    };
    let pid = spawn(&plan)?;
    Ok((pid, ours))
}

/// The request that starts `plan`, as sequence number `seq`.
pub fn request(seq: u64, plan: &SpawnPlan) -> Vec<u8> {
    let mut b = RequestBuilder::new(seq);
    b.field(plan.program.as_bytes()).field(plan.cwd.as_bytes());
    b.count(plan.argv.len());
    for arg in &plan.argv {
        b.field(arg.as_bytes());
    }
    b.count(plan.envp.len());
    for var in &plan.envp {
        b.field(var.as_bytes());
    }
    encode_identity(&mut b, &plan.identity);
    b.finish()
}

/// The limits (a count, then 4 bytes of resource and 8 of value each) and
/// the user (one field: empty, or uid, gid and the groups, 4 bytes each).
fn encode_identity(b: &mut RequestBuilder, identity: &Identity) {
    b.count(identity.rlimits.len());
    for &(resource, value) in &identity.rlimits {
        let mut bytes = resource.to_le_bytes().to_vec();
        bytes.extend_from_slice(&value.to_le_bytes());
        b.field(&bytes);
    }
    let user: Vec<u8> = identity.user.as_ref().map_or_else(Vec::new, |u| {
        [u.uid, u.gid]
            .iter()
            .chain(&u.groups)
            .flat_map(|id| id.to_le_bytes())
            .collect()
    });
    b.field(&user);
}

fn decode_identity(fields: &mut wire::Fields<'_>) -> Option<Identity> {
    let count = fields.next_count()?;
    let rlimits = (0..count)
        .map(|_| {
            let bytes = fields.next_field()?;
            let resource = i32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
            let value = u64::from_le_bytes(bytes.get(4..)?.try_into().ok()?);
            Some((resource, value))
        })
        .collect::<Option<_>>()?;
    let user = fields.next_field()?;
    if user.len() % 4 != 0 {
        return None;
    }
    let ids: Vec<u32> = user
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let user = match ids.as_slice() {
        [] => None,
        [uid, gid, groups @ ..] => Some(Credentials {
            uid: *uid,
            gid: *gid,
            groups: groups.to_vec(),
        }),
        [_] => return None,
    };
    Some(Identity { rlimits, user })
}

/// A request as the server decodes it.
struct Start {
    program: CString,
    cwd: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    identity: Identity,
}

fn decode(mut fields: wire::Fields<'_>) -> Option<Start> {
    let cstr = |b: &[u8]| CString::new(b).ok();
    let program = cstr(fields.next_field()?)?;
    let cwd = cstr(fields.next_field()?)?;
    let argc = fields.next_count()?;
    let argv = (0..argc)
        .map(|_| fields.next_field().and_then(cstr))
        .collect::<Option<_>>()?;
    let envc = fields.next_count()?;
    let envp = (0..envc)
        .map(|_| fields.next_field().and_then(cstr))
        .collect::<Option<_>>()?;
    let identity = decode_identity(&mut fields)?;
    fields.is_empty().then_some(Start {
        program,
        cwd,
        argv,
        envp,
        identity,
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
    let socket = match crate::sys::claim_inherited_fd(fd) {
        Ok(socket) => socket,
        Err(e) => {
            let _ = writeln!(io::stderr(), "drover-forkserver: fd {fd}: {e}"); // never a panic: stderr may be gone
            std::process::exit(1);
        }
    };
    let code = match serve(&socket) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(io::stderr(), "drover-forkserver: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn serve(socket: &OwnedFd) -> io::Result<()> {
    let send = |reply: Reply| match wire::send(socket.as_fd(), &reply.encode(), &[], false) {
        // drover is gone: nothing left to serve.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
        Ok(()) => Ok(true),
    };
    // Before the hello: nothing else is set up, so the dispositions it
    // reads stay true.
    let mut starter = SiblingStarter::new();
    if !send(Reply::ok(0, 0))? {
        return Ok(());
    }
    let mut buf = vec![0u8; wire::MAX_REQUEST];
    loop {
        let (len, fds) = match wire::recv(socket.as_fd(), &mut buf, false) {
            Ok(Received::Packet(len, fds)) => (len, fds),
            Ok(Received::Eof) => return Ok(()), // drover is done with us
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // Cannot tell which request it was: drover times it out.
                let _ = writeln!(io::stderr(), "drover-forkserver: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some((seq, fields)) = wire::parse_request(&buf[..len]) else {
            continue;
        };
        let reply = match decode(fields) {
            Some(request) => match start(&mut starter, request, &fds) {
                Ok(pid) => Reply::ok(seq, pid),
                Err(e) => Reply::refused(seq, e.raw_os_error().unwrap_or(libc::EIO), ""),
            },
            None => Reply::refused(seq, libc::EINVAL, "malformed request"),
        };
        drop(fds);
        if !send(reply)? {
            return Ok(());
        }
    }
}

/// Starts one child as drover's child: fds placed at 0..n, the rest closed.
fn start(starter: &mut SiblingStarter, request: Start, fds: &[OwnedFd]) -> io::Result<i32> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let (sources, _moved) = relocate(&raw, 0)?;
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
    )
    .with_identity(&request.identity);
    starter.start(&setup)
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
            identity: Identity {
                rlimits: vec![
                    (libc::RLIMIT_NOFILE as i32, 64),
                    (libc::RLIMIT_CORE as i32, 0),
                ],
                user: Some(Credentials {
                    uid: 65534,
                    gid: 65533,
                    groups: vec![65533, 27],
                }),
            },
        };
        let packet = request(5, &plan);
        let (seq, fields) = wire::parse_request(&packet).unwrap();
        assert_eq!(seq, 5);
        let r = decode(fields).unwrap();
        assert_eq!(r.program, plan.program);
        assert_eq!(r.argv, plan.argv);
        assert_eq!(r.envp, plan.envp);
        assert_eq!(r.cwd, plan.cwd);
        assert_eq!(r.identity, plan.identity);
        let (_, cut) = wire::parse_request(&packet[..packet.len() - 2]).unwrap();
        assert!(decode(cut).is_none(), "truncated input is refused");
    }
}
