//! The `fork` start method: the child is a copy of this process and calls
//! the target directly, without exec and without encoding anything — the
//! arguments (queues included) are already in its memory.
//!
//! Python's caveat applies and is documented in [the crate docs](crate): only
//! safe from a process whose other threads hold no lock the child needs.

use std::io::Write;

use super::error::Error;
use super::process::{Job, Running, child_exit_code, own_child};
use crate::sys::fork_run;

/// Forks a child that runs `job` (only the child calls it; the parent's
/// copy is dropped by the caller once the child exists).
pub(crate) fn start(job: &mut dyn Job) -> Result<Running, Error> {
    // What is buffered now would otherwise be written twice, by both.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let pid = fork_run(|| {
        child_exit_code(|| {
            job.run_here();
            Ok(())
        })
    })
    .map_err(Error::io("fork"))?;
    own_child(pid)
}
