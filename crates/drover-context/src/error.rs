//! Errors of the context library, split by what failed: starting and
//! waiting for processes ([`Error`]), queue traffic ([`QueueError`]), and a
//! child's bootstrap ([`BootError`], reported on the child's stderr).

use std::io;

use crate::sys::CodeError;

/// A process could not be created, started or waited for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("process: already started")]
    AlreadyStarted,
    #[error("process: not started yet")]
    NotStarted,
    #[error(
        "start method {method}: drover_context::init() was not called first thing in main; \
         this method re-executes the program and the child needs it to find its target"
    )]
    NotInitialised { method: &'static str },
    #[error("start method: already set to {0}")]
    StartMethodAlreadySet(&'static str),
    #[error("start method: unknown {0:?} (expected spawn, fork or forkserver)")]
    UnknownStartMethod(String),
    #[error("process arguments: {0}")]
    Args(#[source] serde_json::Error),
    #[error(
        "process target: not a function of this program's main executable, \
         so a re-executed child could not find it"
    )]
    TargetOutsideExecutable,
    #[error("process arguments: {count} file descriptors, the fork server takes at most {max}")]
    TooManyFds { count: usize, max: usize },
    #[error("fork server: {0}")]
    Forkserver(&'static str),
    #[error("process {pid}: exit status lost (reaped by someone else, or its fork server died)")]
    StatusLost { pid: i32 },
}

impl Error {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { what, source }
    }
}

/// A queue operation failed. Nothing was sent or received, except that a
/// [`QueueError::Decode`] consumed the message it could not decode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    #[error("queue: message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("queue: empty until the timeout")]
    Timeout,
    #[error("queue: closed (no process holds its sending end any more)")]
    Closed,
    #[error("queue: cannot encode the message: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("queue: cannot decode a message: {0}")]
    Decode(#[source] serde_json::Error),
    #[error(
        "queue: max_message_bytes {requested} is more than this system allows ({allowed}; \
         raise net.core.wmem_max)"
    )]
    LimitUnavailable { requested: usize, allowed: usize },
    #[error("queue: {0}")]
    Io(#[from] io::Error),
}

/// A re-executed or fork-server child could not run its target.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BootError {
    #[error("cannot read the boot payload: {0}")]
    Io(#[from] io::Error),
    #[error("malformed boot payload: {0}")]
    Malformed(&'static str),
    #[error("malformed boot header: {0}")]
    Header(#[source] serde_json::Error),
    #[error(transparent)]
    Code(#[from] CodeError),
    #[error("target takes {expected}, the parent sent {found}")]
    ArgsType {
        expected: &'static str,
        found: String,
    },
    #[error("cannot decode the target's arguments: {0}")]
    Args(#[source] serde_json::Error),
}
