//! The `spawn` start method: a fresh run of this very program
//! (`/proc/self/exe`), which [`init`](super::init) diverts to the target.
//!
//! The child's argv is `[argv0, --drover-context-child, 3]`. Fd 3 is a
//! memfd holding the boot payload ([`super::boot`]); the fds of the queues
//! among the arguments follow at 4, 5, …; every other fd but 0, 1 and 2 is
//! closed. The environment is the parent's.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use drover_sys::spawn_self;

use super::boot::{Payload, Received};
use super::error::Error;
use super::process::{Job, Running, child_exit_code, own_child};
use crate::sys::{claim_inherited_fd, memfd};

/// The argv flag of a spawned child; the next argument is its boot fd.
pub(crate) const CHILD_FLAG: &str = "--drover-context-child";

/// Where a spawned child finds its boot payload.
const BOOT_FD: RawFd = 3;

/// Spawns a child of this program that runs `job`.
pub(crate) fn start(job: &dyn Job) -> Result<Running, Error> {
    let payload = job.payload()?;
    let boot = payload_memfd(&payload)?;
    let mut fds = vec![boot.as_fd()];
    fds.extend(payload.fds());
    let argv = self_argv(CHILD_FLAG, BOOT_FD);
    let pid = spawn_self(&argv, &environment(), &fds).map_err(Error::io("spawn"))?;
    own_child(pid)
}

/// The payload in a memfd, for a child to read.
pub(crate) fn payload_memfd(payload: &Payload) -> Result<OwnedFd, Error> {
    let fd = memfd(c"drover-context").map_err(Error::io("memfd_create"))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(payload.bytes())
        .map_err(Error::io("memfd write"))?;
    Ok(file.into())
}

/// `[argv0, flag, fd]`: this program's own argv0, so that the child looks
/// like its parent in `ps`.
pub(crate) fn self_argv(flag: &str, fd: RawFd) -> Vec<CString> {
    let argv0 = std::env::args_os()
        .next()
        .and_then(|a| CString::new(a.as_bytes()).ok())
        .unwrap_or_else(|| c"/proc/self/exe".to_owned());
    let text = |s: String| CString::new(s).unwrap_or_default();
    vec![argv0, text(flag.to_owned()), text(fd.to_string())]
}

/// This process's environment as `KEY=value` C strings.
pub(crate) fn environment() -> Vec<CString> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect()
}

/// The spawned child's side, from `init()`: reads the payload at `fd`,
/// claims the queue fds after it, runs the target and exits.
pub(crate) fn run_child(fd: RawFd) -> ! {
    let code = child_exit_code(|| {
        let payload = Received::read(claim_inherited_fd(fd)?)?;
        let fds = (0..payload.fd_count())
            .map(|i| claim_inherited_fd(fd + 1 + i as RawFd))
            .collect::<std::io::Result<Vec<_>>>()?;
        payload.run(fds)
    });
    std::process::exit(code)
}
