//! drover: a declarative process supervisor.
//!
//! # Theory of operation
//!
//! `drover run PATH` reads TOML files declaring **groups** of worker
//! processes ([`config`]: raw TOML → a validated [`config::Config`], with
//! every error located), then hands the config to the [`runtime`].
//!
//! The runtime is one thread and one `epoll` loop. Everything that can
//! happen arrives there as an event: signals (SIGCHLD among them) through
//! `signal-hook`'s self-pipe, control requests on the Unix socket of
//! [`control`], child output on pipes ([`logs`](runtime::logs)). Timers —
//! backoff delays, `start_secs`, stop timeouts — are deadlines that bound
//! the loop's wait.
//! Nothing sleeps and nothing polls, so an idle drover makes no wake-ups.
//!
//! Decisions are made by the [`supervisor`], which is pure: it owns the
//! child state machines (`starting → running → exited | backoff | fatal`,
//! `stopping → stopped`) and is told what happened and what time it is. It
//! acts through a [`supervisor::Launcher`]; the real one ([`start`])
//! prepares argv, environment and the child's fd plan and calls [`sys`],
//! the only module with `unsafe`, which starts the child with
//! `posix_spawn` (own process group, empty signal mask, default signal
//! dispositions, nothing inherited but stdin, the log pipes and the planned
//! fds). Unit tests drive the supervisor with a fake launcher and a fake clock.
//!
//! Child stdout/stderr lines go to a writer thread that owns drover's
//! stdout through a bounded channel: a slow reader blocks the child that
//! writes, never drover's loop or memory. At shutdown every group gets its
//! `stop_signal`, then SIGKILL after `stop_timeout`; drover is a child
//! subreaper, so descendants orphaned on the way are reaped, and stopped
//! ([`orphans`](runtime::orphans)) before drover exits with a status that
//! tells whether everything stopped in time.
//!
//! The same start methods are also a library for Rust programs, the
//! `drover-context` crate (re-exported as [`context`]): it mirrors Python's
//! `multiprocessing` (`get_context(method)`, processes running a Rust
//! function, typed queues). Process creation itself is the `drover-sys`
//! crate, which both use and [`sys`] re-exports.

pub mod broker;
pub mod cli;
pub mod config;
pub use drover_context as context;
pub mod control;
pub mod runtime;
pub mod start;
pub mod supervisor;
pub mod sys;
#[cfg(test)]
mod testing;
pub mod text;
