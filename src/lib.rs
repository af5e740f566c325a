//! drover: a declarative process supervisor.
//!
//! # Theory of operation
//!
//! `drover run PATH` reads TOML files declaring **groups** of worker
//! processes and the queues between them ([`config`]: raw TOML → a
//! validated [`config::Config`], with every error located), then hands the
//! config to the `runtime`.
//!
//! The runtime is one thread and one `epoll` loop. Everything that can
//! happen arrives there as an event: signals (SIGCHLD among them) through
//! `signal-hook`'s self-pipe, requests on the [`control`] socket, child
//! output on pipes, queue traffic, the answers of start helpers. Timers —
//! backoff delays, `start_secs`, stop timeouts, helpers' deadlines — are
//! deadlines that bound the loop's wait. Nothing sleeps and nothing polls,
//! and nothing outside drover can make the loop wait: an idle drover makes
//! no wake-ups, a busy one stays responsive.
//!
//! Decisions are made by the `supervisor`, which is pure: it owns the
//! child state machines and is told what happened and what time it is. It
//! acts through its `Launcher` trait; the real one (`start`) prepares each
//! child's argv, environment and fds and has its group's start context
//! make it: `posix_spawn`, fork + exec, or a request to the fork server or
//! a Python template whose answer arrives as a loop event. The queues are
//! the `broker`'s. Only `sys` (and the `drover-sys` crate it re-exports)
//! has `unsafe`.
//!
//! Child stdout/stderr lines go to a writer thread that owns drover's
//! stdout through a bounded channel: a slow reader blocks the child that
//! writes, never drover's loop or memory. At shutdown groups stop in
//! dependency order; drover is a child subreaper, so descendants orphaned
//! on the way are reaped and stopped before drover exits with a status
//! that tells whether everything stopped in time.
//!
//! `docs/architecture.md` in the repository draws the whole picture. The
//! same start methods are also a library for Rust programs, the
//! `drover-context` crate (re-exported as [`context`]), which mirrors
//! Python's `multiprocessing`.

pub(crate) mod broker;
pub mod cli;
pub mod config;
pub use drover_context as context;
pub mod control;
pub(crate) mod runtime;
pub(crate) mod start;
pub use start::forkserver::serve_if_requested;
pub(crate) mod supervisor;
pub(crate) mod sys;
#[cfg(test)]
mod testing;
pub(crate) mod text;
