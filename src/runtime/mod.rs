//! The event loop: the only place where drover waits.
//!
//! One `epoll` set carries every source of events — the signal self-pipe,
//! SIGCHLD's signalfd, every child's pidfd, the control socket and its
//! connections, every child's output pipes, and the log writer's wake-up
//! socket — and the wait's timeout is the supervisor's next deadline.
//! Nothing sleeps and nothing polls: with no events and no deadline,
//! `epoll_wait` blocks indefinitely.
//!
//! The runtime owns the I/O; decisions are made by [`Supervisor`].

pub mod control;
mod history;
mod loader;
pub mod log_sink;
pub mod logs;
pub mod metrics;
pub mod orphans;
mod output;
mod pidfds;
mod probes;
mod sigchld;
pub mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::config::names::GroupName;
use crate::control::status::LastExit;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use signal_hook::consts::signal as sig;
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

use crate::broker::Broker;
use crate::config::Config;
use crate::config::signal::Signal;
use crate::control::status::Status;
use crate::control::{Request, Response};
use crate::runtime::logs::{LogWriter, Origin, Stream};
use crate::runtime::orphans::Orphans;
use crate::runtime::watch::{ConfigWatcher, ReloadGate};
use crate::start::ProcessLauncher;
use crate::supervisor::shutdown::{ShutdownOrder, Step};
use crate::supervisor::{ExitStatus, GroupCommand, Pid, ReloadSummary, Supervisor};
use crate::text::wording::plural;
use control::{Clients, Listener};
use output::Output;
use pidfds::Pidfds;

const SIGNALS: u64 = 0;
const CONTROL: u64 = 1;
const LOG_WAKE: u64 = 2;
const CONFIG_WAKE: u64 = 3;
/// The queue store's eventfd (durable queues).
const STORE: u64 = 4;
/// The eventfd of the Redis threads (queues on Redis).
const REDIS: u64 = 5;
/// SIGCHLD's signalfd.
const CHILD_SIGNAL: u64 = 6;
/// The config loader thread's wake-up socket (reloads).
const LOADER: u64 = 7;
/// The wake-up socket of the loader thread of `reload --dry-run`: a dry
/// run of a config on a mount that hangs holds up other dry runs, never a
/// reload.
const DRY_LOADER: u64 = 8;

/// How long after the start (or a config read) drover gives back the code
/// pages only that ran (`sys::code`): long enough for its other threads
/// (the config watcher, the log writers) to be done with what the start
/// gave them, so the release is not followed by their faulting start code
/// back in. One wake-up, once per start or reload.
const CODE_RELEASE_DELAY: Duration = Duration::from_secs(1);
/// The metrics listener (`[supervisor] metrics`).
const METRICS: u64 = 12;
/// A config read that takes this long is logged (once per read):
/// supervision goes on meanwhile, but a reload is not applied.
const SLOW_READ: Duration = Duration::from_secs(5);
/// `drover reload --dry-run` requests waiting for the config loader at
/// once; beyond them the answer is "busy".
const MAX_DRY_RUNS: usize = 8;
/// How long the fork server and templates get to exit at shutdown.
const HELPER_GRACE: Duration = Duration::from_secs(2);
/// A second SIGTERM/SIGINT this soon after the first is the same request
/// delivered twice (a terminal and a wrapper both forwarding it).
const SAME_REQUEST: Duration = Duration::from_millis(100);
/// The most exits handled in one loop turn.
const REAP_PER_TURN: u32 = 256;

/// How long a `waitpid(-1)` sweep waits after a SIGCHLD that came with
/// pidfd reaps (a bound, not a poll: it runs once, then only on the next
/// SIGCHLD). Longer than a replacement's exec, short for an orphan.
const SWEEP_DELAY: Duration = Duration::from_millis(5);
/// The most rounds of start answers handled in one loop turn.
const SETTLE_ROUNDS: u32 = 8;
/// Tokens from here on are child pipes, queue sockets and templates
/// (control connections have a range of their own, see [`Clients`]).
const FIRST_DYNAMIC: u64 = 16;

/// Errors that stop drover before or while it runs.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Bind(#[from] control::BindError),
    #[error("cannot open the queue store for durable queues: {0}")]
    Store(#[from] drover_store::StoreError),
    #[error("cannot serve metrics on {addr} ([supervisor] metrics): {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A group's listening socket could not be bound.
    #[error("{0}")]
    Sockets(String),
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> RuntimeError {
    move |source| RuntimeError::Os { what, source }
}

fn errno(what: &'static str) -> impl FnOnce(Errno) -> RuntimeError {
    move |e| RuntimeError::Os {
        what,
        source: e.into(),
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Shutdown was requested and every process stopped within its timeout.
    Clean,
    /// Shutdown had to SIGKILL something (timeout passed, or a second signal).
    Forced,
    /// `exit_on_fatal`: a child became fatal (or an init task failed), and
    /// drover shut down (whether or not that needed SIGKILL).
    Fatal,
}

/// Runs `config` until a shutdown completes.
pub fn run(config: Config, path: &Path, socket: &Path) -> Result<Outcome, RuntimeError> {
    let mut rt = Runtime::new(config, path, socket)?;
    let outcome = rt.main_loop();
    // Everything the children wrote reaches stdout before drover exits,
    // unless stdout stopped taking it.
    rt.output.finish(output::EXIT_STALL, output::EXIT_LIMIT);
    outcome
}

struct Runtime {
    epoll: Epoll,
    sup: Supervisor,
    launcher: ProcessLauncher,
    signals: SignalDelivery<UnixStream, SignalOnly>,
    child_signal: sigchld::ChildSignal,
    clients: Clients,
    output: Output,
    next_token: u64,
    /// Children reaped through their pidfds.
    pidfds: Pidfds,
    orphans: Orphans,
    broker: Broker,
    /// Set while a graceful shutdown stops groups in order.
    shutdown: Option<ShutdownOrder>,
    config: Config,
    /// The longest stop_timeout, used as the grace period for orphans.
    orphan_grace: Duration,
    term_signals: u32,
    /// `exit_on_fatal` started the shutdown.
    fatal_exit: bool,
    /// `[supervisor] exit_on_fatal` as drover started (`[supervisor]`
    /// changes wait for the next start).
    exit_on_fatal: bool,
    /// The last reap stopped at its per-turn bound; more may be waiting.
    reap_pending: bool,
    /// A client was answered, a scrape served or a config reloaded since
    /// the loop last slept: their transient memory (a `status` of a
    /// thousand children is a few hundred KiB) is returned to the system
    /// before it sleeps again.
    trim_due: bool,
    /// The start or a config read ran code the loop does not: its pages go
    /// back at the first sleep from then on (`sys::code`).
    code_release_at: Option<Instant>,
    /// When a child was last reaped through its pidfd: a SIGCHLD soon
    /// after most likely announced it (in the same batch, or the next: the
    /// kernel wakes pidfd readers first), so its sweep waits for `sweep_at`.
    last_pidfd_reap: Option<Instant>,
    /// When the put-off `waitpid(-1)` sweep runs (see [`SWEEP_DELAY`]).
    sweep_at: Option<Instant>,
    /// The last [`Self::settle_starts`] stopped at its bound.
    starts_pending: bool,
    /// When the first stop request arrived.
    first_stop: Option<Instant>,
    /// The PATH given to `drover run`, read again on every reload.
    config_path: PathBuf,
    watcher: Option<ConfigWatcher>,
    config_wake: UnixStream,
    /// When the config may be read again.
    reloads: ReloadGate,
    /// The last reload's errors, until a valid config is applied.
    config_error: Option<String>,
    /// Reads configs off the loop: reloads', and dry runs'.
    loader: loader::Loader,
    dry_loader: loader::Loader,
    /// The reload whose config is being read.
    reading: Option<PendingReload>,
    /// Reloads asked for while one was being read: one more read, after it
    /// (the config may have changed since that read began).
    reload_again: Option<PendingReload>,
    /// `reload --dry-run` requests with the loader.
    dry_runs: usize,
    /// The fork server and templates asked to exit at shutdown.
    helpers: Vec<Pid>,
    helpers_deadline: Option<Instant>,
    /// `[supervisor] metrics`: the endpoint and what it counts.
    metrics: Option<Scrape>,
    /// Readiness probes and health checks of children.
    probes: probes::Probes,
}

/// A reload asked for and not yet applied.
#[derive(Debug)]
struct PendingReload {
    /// What asked first ("SIGHUP", "drover reload", …): the log says so.
    trigger: &'static str,
    /// Connections of `drover reload` clients waiting for its outcome.
    clients: Vec<u64>,
    /// When its read began, and whether it was logged as slow.
    since: Instant,
    slow_logged: bool,
}

impl PendingReload {
    /// When its read is to be logged as slow (none once it was).
    fn slow_at(&self) -> Option<Instant> {
        (!self.slow_logged).then(|| self.since + SLOW_READ)
    }
}

/// The metrics endpoint and the counters only it needs.
#[derive(Debug)]
struct Scrape {
    endpoint: metrics::Metrics,
    counters: metrics::Counters,
    /// The group of each child process, to count its exit.
    groups: HashMap<Pid, GroupName>,
    started: f64,
}

impl Runtime {
    fn new(config: Config, path: &Path, socket: &Path) -> Result<Self, RuntimeError> {
        // First: no thread may exist with SIGCHLD unblocked.
        let child_signal = sigchld::ChildSignal::new().map_err(os("SIGCHLD's signalfd"))?;
        let (sig_read, sig_write) = UnixStream::pair().map_err(os("signal pipe"))?;
        sig_read.set_nonblocking(true).map_err(os("signal pipe"))?;
        let handled = [
            sig::SIGTERM,
            sig::SIGINT,
            sig::SIGQUIT,
            sig::SIGHUP,
            sig::SIGUSR1,
            sig::SIGUSR2,
        ];
        let signals = SignalDelivery::with_pipe(sig_read, sig_write, SignalOnly, handled)
            .map_err(os("installing signal handlers"))?;
        unblock(&handled)?;
        // A write past the file-size limit (`ulimit -f`: stdout, stderr or
        // a dead-letter file on a file that reached it) fails with EFBIG
        // instead of killing drover, like any other failed write.
        crate::sys::ignore_file_size_signal().map_err(os("ignoring SIGXFSZ"))?;
        // Every disposition drover changes is set now (a config lease's
        // SIGIO is reset whatever this finds): children reset only those.
        drover_sys::note_signal_dispositions();
        raise_fd_limit(&config);
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!("cannot become a child subreaper: {e}; orphans will not be reaped");
        }

        let inherited = inherited_sockets();
        let base_env = child_base_env(std::env::vars_os());
        let mut launcher = ProcessLauncher::new(base_env).map_err(os("opening /dev/null"))?;
        if let Some((count, names)) = inherited {
            launcher.inherit_sockets(count, names);
        }
        let uses_forkserver = config.groups.values().any(|g| {
            g.start_method == crate::config::StartMethod::Forkserver
                && matches!(g.program, crate::config::Program::Command(_))
        });
        if uses_forkserver {
            // Before the log writer thread exists (the server is a fresh
            // exec either way; this just keeps drover single-threaded then).
            launcher
                .start_forkserver()
                .map_err(os("starting the fork server"))?;
        }

        let listener = Listener::bind(socket)?;
        // After the control socket: a second drover on the same config
        // stops there, before it could touch the first one's sockets.
        launcher
            .apply_sockets(&config)
            .map_err(RuntimeError::Sockets)?;
        let (wake_tx, wake_rx) = UnixStream::pair().map_err(os("log writer"))?;
        wake_rx.set_nonblocking(true).map_err(os("log writer"))?;
        let writer =
            LogWriter::start(Box::new(std::io::stdout()), wake_tx).map_err(os("log writer"))?;

        let (config_wake_tx, config_wake) = UnixStream::pair().map_err(os("config watcher"))?;
        config_wake
            .set_nonblocking(true)
            .map_err(os("config watcher"))?;
        config_wake_tx
            .set_nonblocking(true)
            .map_err(os("config watcher"))?;
        // `drover run` read the config before logging was set up.
        for warning in crate::runtime::watch::inspect(path, &Default::default()).skipped {
            tracing::warn!("{warning}");
        }
        let mut reloads = ReloadGate::default();
        reloads.set_env_files(env_files(&config));
        let watcher = match ConfigWatcher::start(path, config_wake_tx) {
            Ok(w) => {
                w.watch_env_files(env_files(&config));
                Some(w)
            }
            Err(e) => {
                tracing::warn!(
                    "cannot watch {} for changes: {e}; reload with SIGHUP or `drover reload`",
                    path.display()
                );
                None
            }
        };

        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(errno("epoll"))?;
        let readable = |token| EpollEvent::new(EpollFlags::EPOLLIN, token);
        epoll
            .add(signals.get_read().as_fd(), readable(SIGNALS))
            .map_err(errno("epoll"))?;
        epoll
            .add(child_signal.as_fd(), readable(CHILD_SIGNAL))
            .map_err(errno("epoll"))?;
        epoll
            .add(wake_rx.as_fd(), readable(LOG_WAKE))
            .map_err(errno("epoll"))?;
        epoll
            .add(config_wake.as_fd(), readable(CONFIG_WAKE))
            .map_err(errno("epoll"))?;

        let orphan_grace = config
            .groups
            .values()
            .map(|g| g.policy.stop_timeout)
            .max()
            .unwrap_or(Duration::from_secs(10));
        tracing::info!(
            "drover {} supervising {}; control socket {}",
            env!("CARGO_PKG_VERSION"),
            plural(config.groups.len(), "group", "groups"),
            listener.path().display()
        );
        let clients = Clients::new(listener, &epoll, CONTROL).map_err(os("epoll"))?;
        // After the fork server (a fresh exec either way) and before any
        // child: what the store holds is back in its queues for the first
        // consumers.
        let mut broker = Broker::new(&config);
        broker.open_store(&config, &config.supervisor.state_dir, &epoll, STORE)?;
        broker
            .open_remotes(&config, &epoll, REDIS)
            .map_err(os("the Redis eventfd"))?;
        let metrics = match config.supervisor.metrics {
            None => None,
            Some(addr) => {
                let endpoint = metrics::Metrics::bind(addr, &epoll, METRICS)
                    .map_err(|source| RuntimeError::Metrics { addr, source })?;
                let shown = endpoint.local_addr().unwrap_or(addr);
                tracing::info!("metrics at http://{shown}/metrics");
                let started = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                Some(Scrape {
                    endpoint,
                    counters: metrics::Counters::default(),
                    groups: HashMap::new(),
                    started,
                })
            }
        };
        Ok(Runtime {
            epoll,
            sup: Supervisor::new(&config),
            launcher,
            signals,
            child_signal,
            clients,
            output: Output::new(
                logs::LineFormat {
                    format: config.supervisor.log_format,
                    timestamps: config.supervisor.log_timestamps,
                },
                writer,
                wake_rx,
                history::History::new(config.supervisor.log_lines as usize),
            ),
            next_token: FIRST_DYNAMIC,
            pidfds: Pidfds::default(),
            orphans: Orphans::default(),
            broker,
            shutdown: None,
            fatal_exit: false,
            exit_on_fatal: config.supervisor.exit_on_fatal,
            orphan_grace,
            term_signals: 0,
            reap_pending: false,
            trim_due: false,
            code_release_at: Some(Instant::now() + CODE_RELEASE_DELAY),
            last_pidfd_reap: None,
            sweep_at: None,
            starts_pending: false,
            first_stop: None,
            config,
            config_path: path.to_path_buf(),
            watcher,
            config_wake,
            reloads,
            config_error: None,
            loader: loader::Loader::new("drover-config", LOADER),
            dry_loader: loader::Loader::new("drover-dry-run", DRY_LOADER),
            reading: None,
            reload_again: None,
            dry_runs: 0,
            helpers: Vec::new(),
            helpers_deadline: None,
            metrics,
            probes: probes::Probes::default(),
        })
    }

    fn main_loop(&mut self) -> Result<Outcome, RuntimeError> {
        self.output.history.set_groups(self.config.groups.keys());
        self.sup.start_all(&mut self.launcher, Instant::now());
        self.watch_new_outputs();
        let mut events = vec![EpollEvent::empty(); 256];
        loop {
            // Before any wait: a start in the last turn may have gone fatal.
            self.check_fatal(Instant::now());
            // One scan of the children per turn; on_deadline (another scan)
            // only runs when one of their deadlines has come.
            let child_deadline = self.sup.next_deadline();
            let busy = self.sup.has_deferred() || self.reap_pending || self.starts_pending;
            if !busy && self.code_release_at.is_some_and(|at| at <= Instant::now()) {
                // The start, or a reload, is done: the code only it ran
                // (command line, config parsing, the first starts) leaves
                // the resident set; what the loop runs comes back on use.
                self.code_release_at = None;
                release_code_pages();
            }
            let timeout = if busy {
                // Work left over from the last turn: look at events, then
                // go on with it.
                EpollTimeout::ZERO
            } else {
                self.timeout(Instant::now(), child_deadline)
            };
            self.output.recycle();
            if self.trim_due && timeout != EpollTimeout::ZERO {
                // About to sleep after answering a client or reloading:
                // the memory those answers took goes back to the system.
                self.trim_due = false;
                crate::sys::release_free_memory();
            }
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => return Err(errno("epoll_wait")(e)),
            };
            self.launcher.new_turn();
            self.starts_pending = false;
            if self.reap_pending {
                self.reap(Instant::now());
            }
            // Exits first, so that their restarts come before anything
            // else in this batch (the SIGCHLD sweep in particular).
            self.reap_pidfds(&events[..n]);
            for event in &events[..n] {
                self.dispatch(event.data(), event.events());
            }
            let now = Instant::now();
            if self.sweep_at.is_some_and(|t| t <= now) {
                self.sweep_at = None;
                self.reap(now);
            }
            self.sup.start_deferred(&mut self.launcher, now);
            if self.reloads.take_due(now) {
                self.request_reload("a config file changed", None, now);
            }
            if self
                .reading
                .as_ref()
                .and_then(PendingReload::slow_at)
                .is_some_and(|at| at <= now)
            {
                self.log_slow_read();
            }
            if child_deadline.is_some_and(|d| d <= now) {
                self.sup.on_deadline(&mut self.launcher, now);
            }
            if self.broker.deadline().is_some_and(|d| d <= now) {
                // Consumers past their queue's ack_timeout are hung.
                for pid in self.broker.on_deadline(&self.epoll, now) {
                    self.sup.restart_child(pid, &mut self.launcher, now);
                }
            }
            if self.clients.deadline().is_some_and(|d| d <= now) {
                self.clients.on_deadline(&self.epoll, now);
            }
            if let Some(m) = self.metrics.as_mut()
                && m.endpoint.deadline().is_some_and(|d| d <= now)
            {
                m.endpoint.on_deadline(&self.epoll, now);
            }
            if self.launcher.deadline().is_some_and(|d| d <= now) {
                // A start helper that kept its group waiting too long.
                self.launcher.on_deadline(now);
            }
            self.run_probes(now);
            self.settle_starts(now);
            self.watch_new_outputs();
            // After the restarts of this turn's exits: their pidfds go.
            self.pidfds.release(&self.epoll);
            self.advance_shutdown(now);
            // Everything this turn read from producers: one commit.
            self.broker.end_turn();
            if self.sup.is_finished() && self.helpers_deadline.is_none() {
                // The fork server and Python templates are told to go; they
                // are waited for briefly before the orphan phase.
                self.helpers = self.launcher.stop_helpers();
                self.helpers_deadline = Some(now + HELPER_GRACE);
            }
            if self.sup.is_finished() && self.finish_orphans(now) {
                break;
            }
        }
        self.broker.report_leftovers();
        let forced = self.sup.was_forced();
        tracing::info!(
            "drover stopped{}",
            if forced {
                " (some processes had to be killed)"
            } else {
                ""
            }
        );
        Ok(if self.fatal_exit {
            Outcome::Fatal
        } else if forced {
            Outcome::Forced
        } else {
            Outcome::Clean
        })
    }

    /// `exit_on_fatal`: a child that became fatal, or an init task that
    /// failed, shuts drover down gracefully.
    fn check_fatal(&mut self, now: Instant) {
        let Some(why) = self.sup.take_fatal() else {
            return;
        };
        if !self.exit_on_fatal || self.sup.is_shutting_down() {
            return;
        }
        tracing::error!(
            "{why}; exit_on_fatal is set: stopping every group, then exiting with status 4"
        );
        self.fatal_exit = true;
        self.begin_graceful_shutdown(now);
    }

    /// Stops the groups in order (see [`ShutdownOrder`]); nothing restarts.
    fn begin_graceful_shutdown(&mut self, now: Instant) {
        self.sup.begin_shutdown();
        // A reload whose config is still being read will not be applied:
        // those waiting for it are told now, not when the read ends.
        for pending in [self.reading.take(), self.reload_again.take()]
            .into_iter()
            .flatten()
        {
            self.finish_reload(pending, Err("drover is shutting down".into()));
        }
        self.shutdown = Some(ShutdownOrder::new(&self.config, now));
        self.advance_shutdown(now);
    }

    /// How long the loop may block: until the earliest deadline.
    fn timeout(&self, now: Instant, child_deadline: Option<Instant>) -> EpollTimeout {
        let shutdown = self.shutdown.as_ref().and_then(ShutdownOrder::deadline);
        let deadline = [
            child_deadline,
            self.orphans.deadline(),
            shutdown,
            self.reloads.deadline(),
            self.reading.as_ref().and_then(PendingReload::slow_at),
            // Only while it is ahead: past it, the orphan phase has its own
            // deadlines (a helper outliving it made every wait 0 ms: a spin).
            self.helpers_deadline
                .filter(|d| !self.helpers.is_empty() && *d > now),
            self.broker.deadline(),
            self.clients.deadline(),
            self.metrics.as_ref().and_then(|m| m.endpoint.deadline()),
            self.launcher.deadline(),
            self.probes.deadline(),
            self.sweep_at,
            self.code_release_at,
        ]
        .into_iter()
        .flatten()
        .min();
        match deadline {
            None => EpollTimeout::NONE,
            Some(d) => {
                // Round up so that we never wake just before a deadline.
                let ms = d.saturating_duration_since(now).as_micros().div_ceil(1000);
                EpollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(EpollTimeout::MAX)
            }
        }
    }

    fn dispatch(&mut self, token: u64, flags: EpollFlags) {
        match token {
            SIGNALS => self.on_signals(),
            CHILD_SIGNAL => self.on_child_signal(),
            LOG_WAKE => self.output.on_wake(&self.epoll),
            CONFIG_WAKE => self.on_config_event(),
            LOADER | DRY_LOADER => self.on_config_read(),
            STORE => self.broker.on_store(&self.epoll),
            REDIS => self.broker.on_redis(&self.epoll),
            t if self.pidfds.owns(t) => {
                // Already reaped with the batch's other pidfds, unless a
                // dispatch before it made it readable just now.
                self.reap_pidfds(&[EpollEvent::new(flags, t)]);
            }
            t if self.output.owns(t) => {
                self.output.on_readable(&self.epoll, t);
                if self.output.following {
                    let chunks = self.output.take_followed();
                    self.clients.broadcast(&self.epoll, &chunks, Instant::now());
                    self.output.following = self.clients.has_followers();
                }
            }
            t if self.broker.owns(t) => self.broker.on_event(&self.epoll, t, flags),
            t if self.launcher.owns(t) => self.launcher.on_event(t),
            t if self.probes.owns(t) => self.on_probe_event(t, Instant::now()),
            t if self.clients.owns(t) => {
                self.trim_due = true;
                self.on_client(t, flags);
            }
            t if self.metrics.as_ref().is_some_and(|m| m.endpoint.owns(t)) => {
                self.trim_due = true;
                self.on_scrape(t);
            }
            _ => {} // a connection or pipe closed earlier in this batch
        }
    }

    fn on_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        let now = Instant::now();
        for signal in pending {
            match signal {
                sig::SIGTERM | sig::SIGINT | sig::SIGQUIT => self.on_stop_signal(signal, now),
                sig::SIGHUP => self.request_reload("SIGHUP", None, now),
                sig::SIGUSR1 => self.sup.forward(Signal::Usr1, &mut self.launcher),
                sig::SIGUSR2 => self.sup.forward(Signal::Usr2, &mut self.launcher),
                _ => {}
            }
        }
    }

    fn on_child_signal(&mut self) {
        if !self.child_signal.take() {
            return;
        }
        let now = Instant::now();
        let recent = self
            .last_pidfd_reap
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_DELAY);
        if recent {
            // The sweep walks every child in the kernel: right after a
            // pidfd reap it would compete with the replacement's start, so
            // it waits a little (orphans and the helpers' children are
            // reaped at most SWEEP_DELAY later).
            self.sweep_at.get_or_insert(now + SWEEP_DELAY);
        } else {
            self.reap(now);
        }
    }

    fn on_stop_signal(&mut self, signal: i32, now: Instant) {
        let name = Signal::name_of_raw(signal);
        let repeatable = signal != sig::SIGQUIT;
        let echo = self
            .first_stop
            .is_some_and(|first| now.saturating_duration_since(first) < SAME_REQUEST);
        if self.term_signals > 0 && echo {
            // A terminal and a `timeout` wrapper both forwarding one ^C.
            tracing::debug!("{name} again within {SAME_REQUEST:?}: the same request");
            return;
        }
        self.first_stop.get_or_insert(now);
        if self.term_signals > 0 && repeatable {
            tracing::warn!("{name} again: killing everything now");
            self.shutdown = None;
            self.sup.kill_all(&mut self.launcher, now);
            self.orphans.kill_now();
        } else if self.term_signals == 0 && !self.sup.is_shutting_down() {
            tracing::info!("{name}: stopping every group");
            self.begin_graceful_shutdown(now);
        }
        self.term_signals += 1;
    }

    /// Reaps the children whose pidfds are among `events` (each reap is
    /// one child, however many there are).
    fn reap_pidfds(&mut self, events: &[EpollEvent]) {
        let mut now = None;
        let mut strangers = false;
        for event in events {
            if !self.pidfds.owns(event.data()) {
                continue;
            }
            if let Some((pid, status)) = self.pidfds.on_ready(&self.epoll, event.data()) {
                let now = *now.get_or_insert_with(Instant::now);
                strangers |= self.exited(pid, status, now);
            }
        }
        if let Some(now) = now {
            self.last_pidfd_reap = Some(now);
            self.after_reaping(strangers, now);
        }
    }

    /// Reaps exited children, known or not, with `waitpid(-1)`: what has no
    /// pidfd (orphans, the helpers' children) and what SIGCHLD announced
    /// before its pidfd was read. At most [`REAP_PER_TURN`], so that a
    /// crash storm cannot keep the loop from its other events; the rest are
    /// reaped in the next turn.
    fn reap(&mut self, now: Instant) {
        self.reap_pending = false;
        let mut strangers = false;
        for reaped in 0.. {
            if reaped == REAP_PER_TURN {
                self.reap_pending = true;
                break;
            }
            let (pid, status) = match drover_sys::wait::reap(None) {
                Ok(Some((pid, exit))) => (pid, ExitStatus::from(exit)),
                Ok(None) => break,
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
                Err(e) => {
                    tracing::error!("waitpid: {e}");
                    break;
                }
            };
            let pid = Pid(pid);
            strangers |= self.exited(pid, status, now);
            // After: `exited` may first watch it (started this turn).
            self.pidfds.forget(&self.epoll, pid);
        }
        self.after_reaping(strangers, now);
    }

    /// Hands one reaped exit to its owner. Returns whether it was a
    /// stranger (an orphaned descendant, or a child whose start answer is
    /// still awaited).
    fn exited(&mut self, pid: Pid, status: ExitStatus, now: Instant) -> bool {
        // A child started earlier in this turn (a restart by an exit just
        // before) may be the one that exited: what watches it is set up
        // first, so that its exit removes it again (set up after, its
        // probes, metrics entry and sockets would outlive it).
        if self.launcher.has_outputs() {
            self.watch_new_outputs();
        }
        if let Some(m) = self.metrics.as_mut()
            && let Some(group) = m.groups.remove(&pid)
            // Not a group a reload removed (its series would come back
            // until the next reload).
            && self.config.groups.contains_key(&group)
        {
            let exit = match status {
                ExitStatus::Code(c) => LastExit::Code(c),
                ExitStatus::Signal(s) => LastExit::Signal(Signal::name_of_raw(s)),
            };
            m.counters.exited(group.as_str(), &exit);
        }
        if let Some(error) = drover_sys::late_exec_failure(pid.0) {
            // Its start returned before its execve did (a hung mount):
            // what failed is told here, with its exit.
            match self.sup.slot_of(pid) {
                Some((group, index)) => tracing::error!(
                    %group,
                    index,
                    pid = pid.0,
                    "could not start: its execve failed after the start stopped waiting: {error}"
                ),
                None => tracing::error!(
                    pid = pid.0,
                    "a start's execve failed after the start stopped waiting: {error}"
                ),
            }
        }
        let ours = self.sup.on_exit(pid, status, &mut self.launcher, now);
        if ours {
            self.broker.child_exited(&self.epoll, pid);
            self.probes.child_exited(&self.epoll, pid);
        } else if self.probe_reaped(pid, status, now) {
            // A readiness probe or health check: its result is applied.
        } else if self.helpers.contains(&pid) {
            self.helpers.retain(|p| *p != pid);
        } else if self.launcher.on_helper_exit(pid) {
            // A start helper: replaced, its starts settled later in the turn.
        } else {
            self.launcher.note_exit(pid, status);
            self.orphans.reaped(pid);
            tracing::debug!(pid = pid.0, ?status, "reaped an orphaned descendant");
            return true;
        }
        false
    }

    /// What follows a round of reaping: leftovers of process groups, and
    /// children suspected of having daemonized.
    fn after_reaping(&mut self, strangers: bool, now: Instant) {
        if strangers {
            // A leftover of some child's process group may have been the last.
            self.sup.check_leftovers(&mut self.launcher, now);
        }
        let mut suspects = self.sup.take_daemon_suspects();
        let Some(oldest) = suspects.iter().map(|s| s.age).max() else {
            return;
        };
        // One look at /proc for all of this turn's suspects (success exits
        // within start_secs): a group of 1000 whose program exits 0 at once
        // would otherwise scan it 1000 times, checking each process found
        // against every child.
        let live: HashSet<Pid> = self.sup.live_pids().collect();
        let launcher = &self.launcher;
        let daemons = crate::runtime::orphans::recent_daemons(oldest, |pid| {
            launcher.is_helper(pid) || live.contains(&pid)
        });
        // Each daemon to the suspect with the shortest life that still
        // covers its start (it was forked while that suspect ran); to the
        // oldest if none does (ages are read a little after the exits, in
        // clock ticks).
        suspects.sort_by_key(|s| s.age);
        let mut adopted: Vec<Vec<Pid>> = vec![Vec::new(); suspects.len()];
        for (pid, age) in daemons {
            let i = suspects.iter().position(|s| age <= s.age);
            adopted[i.unwrap_or(suspects.len() - 1)].push(pid);
        }
        for (suspect, pids) in suspects.iter().zip(adopted) {
            if !pids.is_empty() {
                self.sup
                    .adopt_daemons(suspect, &pids, &mut self.launcher, now);
            }
        }
    }

    /// Hands the start contexts' news to the supervisor: answers to start
    /// requests, and contexts that became ready (their waiting children
    /// start). A start made here can settle at once (its helper broke), so
    /// this goes on until nothing is left, within a bound; the rest is for
    /// the next turn.
    fn settle_starts(&mut self, now: Instant) {
        for _ in 0..SETTLE_ROUNDS {
            let ready = self.launcher.take_ready();
            let completions = self.launcher.take_completions();
            if ready.is_empty() && completions.is_empty() {
                return;
            }
            for group in ready {
                self.sup.context_ready(&group, &mut self.launcher, now);
            }
            for c in completions {
                let pid = c.result.as_ref().ok().copied();
                self.sup.start_replied(
                    &c.spec,
                    c.index,
                    c.ticket,
                    c.result,
                    &mut self.launcher,
                    now,
                );
                if let (Some(pid), Some(status)) = (pid, c.exited) {
                    // It exited before its answer was read: it is watched
                    // first (queue sockets, probes, metrics), then gone,
                    // like any exit.
                    self.exited(pid, status, now);
                }
            }
        }
        self.starts_pending = true;
    }

    /// A config file changed: the reload is due once the burst of events
    /// is over.
    fn on_config_event(&mut self) {
        let mut buf = [0u8; 64];
        while matches!(self.config_wake.read(&mut buf), Ok(n) if n > 0) {}
        let now = Instant::now();
        if let Some(watcher) = &self.watcher {
            for change in watcher.changes() {
                self.reloads.on_change(change, now);
            }
        }
    }

    /// A reload asked for by `trigger`, and by the `drover reload` client
    /// of `conn`, which gets its outcome. The config is read by the loader
    /// thread and applied when it arrives ([`Self::on_config_read`]);
    /// meanwhile supervision goes on. Reloads asked for while a read is
    /// under way make one more read after it: the config may have changed
    /// since it began.
    fn request_reload(&mut self, trigger: &'static str, conn: Option<u64>, now: Instant) {
        if self.sup.is_shutting_down() {
            tracing::info!("{trigger}: not reloading, drover is shutting down");
            if let Some(conn) = conn {
                let refused = Response::error("drover is shutting down");
                self.clients.respond(&self.epoll, conn, &refused, now);
            }
            return;
        }
        if let Some(conn) = conn {
            self.clients.defer(&self.epoll, conn, now);
        }
        let start = self.reading.is_none();
        let slot = match start {
            true => &mut self.reading,
            false => &mut self.reload_again,
        };
        let pending = slot.get_or_insert_with(|| PendingReload {
            trigger,
            clients: Vec::new(),
            since: now,
            slow_logged: false,
        });
        pending.clients.extend(conn);
        if start {
            self.read_config();
        } else {
            tracing::debug!("{trigger}: the config is read again once the read under way ends");
        }
    }

    /// Hands the read of [`Self::reading`] to the loader thread.
    fn read_config(&mut self) {
        let job = loader::Job::Reload {
            path: self.config_path.clone(),
            writing: self.reloads.writing().clone(),
            env_files: self.reloads.env_files().to_vec(),
            store_dir: self
                .broker
                .has_no_store()
                .then(|| self.config.supervisor.state_dir.clone()),
        };
        if let Err(e) = self.loader.submit(&self.epoll, job) {
            let text = format!("cannot read the config: {e}");
            if let Some(pending) = self.reading.take() {
                tracing::error!(
                    "{}: {text}; still running the previous config",
                    pending.trigger
                );
                self.finish_reload(pending, Err(text));
            }
        }
    }

    /// Results from the loader thread: a reload's config is applied, a
    /// dry run's planned.
    fn on_config_read(&mut self) {
        self.code_release_at = Some(Instant::now() + CODE_RELEASE_DELAY);
        let mut done = self.loader.take_done();
        done.extend(self.dry_loader.take_done());
        for done in done {
            match done {
                loader::Done::Reload(reading) => {
                    let Some(pending) = self.reading.take() else {
                        continue;
                    };
                    let result = self.apply_reading(pending.trigger, reading);
                    self.finish_reload(pending, result);
                    if let Some(mut again) = self.reload_again.take() {
                        if self.sup.is_shutting_down() {
                            self.finish_reload(again, Err("drover is shutting down".into()));
                        } else {
                            again.since = Instant::now();
                            self.reading = Some(again);
                            self.read_config();
                        }
                    }
                }
                loader::Done::DryRun { conn, result } => {
                    self.dry_runs = self.dry_runs.saturating_sub(1);
                    let response = self.plan(result);
                    self.clients
                        .respond(&self.epoll, conn, &response, Instant::now());
                }
            }
        }
    }

    /// The outcome of a reload: counted for the metrics, and told to the
    /// clients that asked for it.
    fn finish_reload(&mut self, pending: PendingReload, result: Result<ReloadSummary, String>) {
        self.trim_due = true;
        if let Some(m) = self.metrics.as_mut() {
            let outcome = match &result {
                Ok(_) => "applied",
                Err(_) if self.config_error.is_some() => "invalid",
                Err(_) => "refused",
            };
            *m.counters.reloads.entry(outcome).or_default() += 1;
            let groups = &self.config.groups;
            m.counters
                .retain_groups(|g| groups.keys().any(|n| n.as_str() == g));
        }
        let response = match result {
            Ok(summary) => Response::ok(format!("reloaded: {summary}")),
            Err(errors) => Response::error(errors),
        };
        let now = Instant::now();
        for conn in pending.clients {
            self.clients.respond(&self.epoll, conn, &response, now);
        }
    }

    /// The read under way has taken [`SLOW_READ`]: said once.
    fn log_slow_read(&mut self) {
        let Some(pending) = self.reading.as_mut() else {
            return;
        };
        pending.slow_logged = true;
        tracing::warn!(
            "{}: reading the config has taken {}s so far (a user or group lookup or a file \
             system may hang); supervision goes on, and the reload is applied once it is read",
            pending.trigger,
            SLOW_READ.as_secs()
        );
    }

    /// Applies a config the loader read, as a difference; an invalid config
    /// changes nothing and is reported (and kept for `status`). A config
    /// file that was open for writing was not read: the reload waits for
    /// its close (an event that makes it due again).
    fn apply_reading(
        &mut self,
        trigger: &str,
        reading: loader::Reading,
    ) -> Result<ReloadSummary, String> {
        if self.sup.is_shutting_down() {
            tracing::info!("{trigger}: not reloading, drover is shutting down");
            return Err("drover is shutting down".into());
        }
        let (loaded, skipped, store) = match reading {
            loader::Reading::Busy(found) => {
                // `found` names the busy files: judged, it is the refusal.
                return Err(match self.reloads.judge(found, trigger) {
                    Err(deferred) => deferred,
                    Ok(_) => "reload deferred: a config file is open for writing".into(),
                });
            }
            loader::Reading::Invalid(failed) => {
                let errors: Vec<_> = failed.diagnostics.iter().filter(|d| d.is_error()).collect();
                tracing::error!(
                    "{trigger}: the new config is invalid ({}); still running the previous one",
                    plural(errors.len(), "error", "errors")
                );
                for diagnostic in &errors {
                    tracing::error!("{diagnostic}");
                }
                let text = crate::config::render_all(&failed.diagnostics);
                self.config_error = Some(text.clone());
                return Err(text);
            }
            loader::Reading::Valid {
                loaded,
                skipped,
                store,
            } => (*loaded, skipped, store),
        };
        let found = watch::Inspection {
            busy: Vec::new(),
            skipped,
        };
        for warning in self.reloads.judge(found, trigger).unwrap_or_default() {
            tracing::warn!("{warning}");
        }
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        let config = loaded.config;
        if config.supervisor != self.config.supervisor {
            tracing::warn!(
                "{trigger}: changes to [supervisor] take effect the next time drover starts"
            );
        }
        // The first durable queue opens the store (the config reader
        // opened it, off the loop); if it cannot be opened, nothing of the
        // reload applies.
        let state_dir = self.config.supervisor.state_dir.clone();
        let opened = match store {
            Some(Ok(opened)) => self.broker.adopt_store(*opened, &self.epoll, STORE),
            Some(Err(e)) => Err(e),
            // Not opened by the reader: none was needed when it began.
            None => self
                .broker
                .open_store(&config, &state_dir, &self.epoll, STORE),
        };
        if let Err(e) = opened {
            let text = format!("cannot open the queue store for durable queues: {e}");
            tracing::error!("{trigger}: {text}; still running the previous config");
            self.config_error = Some(text.clone());
            return Err(text);
        }
        if let Err(e) = self.broker.open_remotes(&config, &self.epoll, REDIS) {
            let text = format!("cannot set up the Redis side for queues on Redis: {e}");
            tracing::error!("{trigger}: {text}; still running the previous config");
            self.config_error = Some(text.clone());
            return Err(text);
        }
        // New listening sockets are bound before anything changes: an
        // address in use refuses the reload like an invalid config.
        if let Err(text) = self.launcher.apply_sockets(&config) {
            tracing::error!("{trigger}: {text}; still running the previous config");
            self.config_error = Some(text.clone());
            return Err(text);
        }
        // Timers of the children it starts count from now, after the parse.
        let now = Instant::now();
        let queues = self.broker.apply(&config, &self.epoll);
        let mut summary = self.sup.apply(&config, &mut self.launcher, now);
        summary.queues_added = queues.added;
        summary.queues_removed = queues.removed;
        summary.queues_changed = queues.changed;
        summary.supervisor_pending = config.supervisor != self.config.supervisor;
        self.launcher.retain_templates(&config);
        self.output.history.set_groups(config.groups.keys());
        // Before the new children are watched: their probes follow it.
        if let Some(watcher) = &self.watcher {
            watcher.watch_env_files(env_files(&config));
        }
        self.reloads.set_env_files(env_files(&config));
        self.config = config;
        self.watch_new_outputs();
        self.refresh_health(now);
        tracing::info!("{trigger}: config reloaded: {summary}");
        self.config_error = None;
        Ok(summary)
    }

    /// Stops the groups whose turn has come in a graceful shutdown.
    fn advance_shutdown(&mut self, now: Instant) {
        let Some(order) = self.shutdown.as_mut() else {
            return;
        };
        let (sup, broker) = (&self.sup, &self.broker);
        let due = order.step(now, |g| sup.group_is_live(g), |q| broker.is_drained(q));
        for (group, step) in due {
            match step {
                Step::CloseInputs => {
                    tracing::debug!(%group, "closing its inputs for shutdown");
                    self.broker.close_inputs(&self.epoll, &group);
                }
                Step::Stop => {
                    tracing::debug!(%group, "stopping for shutdown");
                    self.sup.stop_group(&group, &mut self.launcher, now);
                }
            }
        }
    }

    /// Orphan phase of shutdown; true once nothing is left to wait for.
    fn finish_orphans(&mut self, now: Instant) -> bool {
        if !self.helpers.is_empty() && self.helpers_deadline.is_some_and(|d| now < d) {
            return false;
        }
        let killed = self.orphans.step(now, self.orphan_grace);
        if killed {
            self.sup.note_forced();
        }
        self.orphans.done()
    }

    /// The control socket or a client connection is ready; a complete
    /// request is handled and answered here.
    fn on_client(&mut self, token: u64, flags: EpollFlags) {
        let now = Instant::now();
        if let Some((conn, request)) = self.clients.on_event(&self.epoll, token, flags, now) {
            if let Request::Logs {
                groups,
                lines,
                follow,
            } = request
            {
                return self.serve_logs(conn, groups, lines, follow);
            }
            match request {
                Request::Reload {
                    dry_run: false,
                    path: None,
                } => return self.request_reload("drover reload", Some(conn), now),
                Request::Reload {
                    dry_run: true,
                    path,
                } => return self.request_dry_run(conn, path, now),
                _ => {}
            }
            let response = self.handle_request(request);
            self.clients
                .respond(&self.epoll, conn, &response, Instant::now());
        }
    }

    /// One handler per control request.
    fn handle_request(&mut self, request: Request) -> Response {
        let now = Instant::now();
        let (name, command, verb) = match request {
            Request::Reload {
                dry_run: false,
                path: Some(_),
            } => return Response::error("reload: a path is only taken with --dry-run"),
            // Served by `request_reload` and `request_dry_run`, which put
            // their answers off until the config is read.
            Request::Reload { .. } => return Response::error("reload: not here"),
            Request::Status => {
                let mut status = Status::capture(
                    &self.sup,
                    self.config_error.clone(),
                    now,
                    crate::runtime::orphans::group_members(),
                );
                status.queues = self.broker.status();
                status.reload_reading_ms = self.reading.as_ref().map(|r| reading_ms(r.since, now));
                for child in status.groups.iter_mut().flat_map(|g| &mut g.children) {
                    if let Some(pid) = child.pid {
                        (child.status_text, child.health_failures) =
                            self.probes.status_of(Pid(pid));
                    }
                }
                return Response::status(status);
            }
            Request::Shutdown => {
                self.on_stop_signal(sig::SIGTERM, now);
                return Response::ok("shutting down");
            }
            Request::Signal {
                group,
                signal,
                process_group,
            } => return self.send_signal(&group, signal, process_group),
            // Served by `serve_logs`, which streams.
            Request::Logs { .. } => return Response::error("logs: not here"),
            Request::Start { group } => (group, GroupCommand::Start, "started"),
            Request::Stop { group } => (group, GroupCommand::Stop, "stopping"),
            Request::Restart { group } => (group, GroupCommand::Restart, "restarting"),
        };
        if self.sup.is_shutting_down() {
            return Response::error("drover is shutting down");
        }
        match self
            .sup
            .group_command(&name, command, &mut self.launcher, now)
        {
            Ok(()) => {
                tracing::info!("control: {verb} group {name}");
                Response::ok(format!("{verb} {name}"))
            }
            Err(e) => Response::error(e.to_string()),
        }
    }

    /// `drover signal`: `signal` to each live process of `group`, or to
    /// each one's process group.
    fn send_signal(&mut self, group: &str, signal: i32, process_group: bool) -> Response {
        let realtime = crate::sys::realtime_signals();
        if !(1..=31).contains(&signal) && !realtime.contains(&signal) {
            return Response::error(format!("no signal number {signal}"));
        }
        let pids = match self.sup.group_pids(group) {
            Ok(pids) => pids,
            Err(e) => return Response::error(e.to_string()),
        };
        let name = crate::config::anysignal::name(signal, realtime);
        if pids.is_empty() {
            return Response::error(format!("group {group} has no running process"));
        }
        let mut sent = Vec::new();
        for pid in &pids {
            // Never drover's own process group nor every process.
            let target = if process_group { -pid.0 } else { pid.0 };
            if pid.0 > 1 && crate::sys::kill_raw(target, signal).is_ok() {
                sent.push(pid.0.to_string());
            }
        }
        let whom = if process_group {
            "the process groups of"
        } else {
            "pids"
        };
        tracing::info!(
            "control: {name} to {whom} {} of group {group}",
            sent.join(" ")
        );
        Response::ok(format!(
            "{name} sent to {whom} {} ({group})",
            sent.join(" ")
        ))
    }

    /// `drover reload --dry-run [PATH]`: the config at `path` (the running
    /// one's when none) is read by the dry-run loader thread; the answer is what a
    /// reload would change ([`Self::plan`]).
    fn request_dry_run(&mut self, conn: u64, path: Option<PathBuf>, now: Instant) {
        let refusal = if self.sup.is_shutting_down() {
            Some("drover is shutting down".to_owned())
        } else if self.dry_runs >= MAX_DRY_RUNS {
            Some(format!(
                "busy: {MAX_DRY_RUNS} dry runs are waiting for their config to be read; try again"
            ))
        } else {
            let path = path.unwrap_or_else(|| self.config_path.clone());
            let job = loader::Job::DryRun { conn, path };
            self.dry_loader
                .submit(&self.epoll, job)
                .err()
                .map(|e| format!("cannot read the config: {e}"))
        };
        if let Some(text) = refusal {
            return self
                .clients
                .respond(&self.epoll, conn, &Response::error(text), now);
        }
        self.dry_runs += 1;
        self.clients.defer(&self.epoll, conn, now);
    }

    /// What a reload to `read` would change, applying nothing (not even to
    /// the errors `status` shows).
    fn plan(&self, read: Result<Config, crate::config::Failed>) -> Response {
        if self.sup.is_shutting_down() {
            return Response::error("drover is shutting down");
        }
        let config = match read {
            Ok(config) => config,
            Err(failed) => return Response::error(crate::config::render_all(&failed.diagnostics)),
        };
        let mut summary = self.sup.plan(&config);
        let queues = self.broker.plan(&config);
        summary.queues_added = queues.added;
        summary.queues_removed = queues.removed;
        summary.queues_changed = queues.changed;
        summary.supervisor_pending = config.supervisor != self.config.supervisor;
        Response::ok(format!("would reload: {summary}"))
    }

    /// A metrics connection or the listener has an event.
    fn on_scrape(&mut self, token: u64) {
        let Some(m) = self.metrics.as_mut() else {
            return;
        };
        let now = Instant::now();
        let (sup, broker, config_error) = (&self.sup, &self.broker, &self.config_error);
        let (counters, started) = (&m.counters, m.started);
        let reading = self.reading.as_ref().map(|r| r.since);
        m.endpoint.on_event(&self.epoll, token, now, || {
            let mut status = Status::capture(sup, config_error.clone(), now, |_| Vec::new());
            status.queues = broker.status();
            status.reload_reading_ms = reading.map(|since| reading_ms(since, now));
            metrics::render(&status, counters, metrics::Process::read(started))
        });
    }

    /// `drover logs`: the kept lines of `groups` (all when empty), then,
    /// with `follow`, every new one until the client goes away.
    fn serve_logs(&mut self, conn: u64, groups: Vec<String>, lines: Option<u32>, follow: bool) {
        let now = Instant::now();
        let mut names = Vec::with_capacity(groups.len());
        for g in &groups {
            match self.sup.groups().find(|x| x.spec.name.as_str() == g) {
                Some(group) if names.contains(&group.spec.name) => {}
                Some(group) => names.push(group.spec.name.clone()),
                None => {
                    let unknown = Response::error(format!("no group named `{g}`"));
                    return self.clients.respond(&self.epoll, conn, &unknown, now);
                }
            }
        }
        if !self.clients.has_room_for_logs() {
            let waiting = self.clients.pending_bytes() >> 20;
            let busy = Response::error(format!(
                "busy: {waiting} MiB of earlier answers wait for clients that do not take them; try again"
            ));
            return self.clients.respond(&self.epoll, conn, &busy, now);
        }
        let n = lines.map_or(usize::MAX, |n| n as usize);
        let mut answer = Response::ok("logs").to_line();
        answer.extend(self.output.history.tail(&names, n));
        if follow {
            let groups = names.iter().map(ToString::to_string).collect();
            self.clients.follow(&self.epoll, conn, answer, groups, now);
            self.output.following = self.clients.has_followers();
        } else {
            self.clients.respond_bytes(&self.epoll, conn, answer, now);
        }
    }

    /// Starts watching the output pipes of children started since last time,
    /// and the sockets of new start helpers.
    fn watch_new_outputs(&mut self) {
        let next = &mut self.next_token;
        self.launcher.watch_helpers(&self.epoll, || {
            *next += 1;
            *next
        });
        for mut out in self.launcher.take_outputs() {
            if let Some(m) = self.metrics.as_mut() {
                m.counters.started(out.group.as_str(), out.index);
                m.groups.insert(out.pid, out.group.clone());
            }
            if let Some(pidfd) = out.pidfd.take() {
                self.pidfds.watch(&self.epoll, out.pid, pidfd);
            }
            let notify = out.notify.take().map(|n| n.socket);
            self.probe_child(&out.group, out.pid, notify, Instant::now());
            let sockets = std::mem::take(&mut out.queues);
            let next = &mut self.next_token;
            self.broker
                .attach(&self.epoll, out.pid, &out.group, sockets, || {
                    *next += 1;
                    *next
                });
            for (fd, stream) in [(out.stdout, Stream::Stdout), (out.stderr, Stream::Stderr)] {
                let origin = Origin {
                    group: out.group.clone(),
                    index: out.index,
                    pid: out.pid,
                    stream,
                };
                self.output.watch(&self.epoll, fd, origin);
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit: drover holds two
/// pipes per child, and 1000 children exceed the usual soft limit of 1024.
/// Children still start with the original soft limit (a `select()`-based
/// program overflows `fd_set` above 1024; closing every fd up to a million
/// is slow). Warns once, up front, when the configured children cannot all
/// fit.
/// The environment children inherit: drover's own, without the socket-
/// activation variables (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) it
/// was given itself: they describe drover's fds, never a child's. A child
/// of a group with `sockets` gets its own.
/// Milliseconds from `since` to `now`, for status.
/// Gives back the pages of code and constants the loop does not use (see
/// `sys::code`); a failure (no /proc) only keeps them.
fn release_code_pages() {
    match crate::sys::code::release_code_pages() {
        Ok(r) => tracing::debug!(
            "released {} code pages ({} kept: modified in memory)",
            r.pages,
            r.kept_private
        ),
        Err(e) => tracing::debug!("code pages not released: {e}"),
    }
}

fn reading_ms(since: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX)
}

fn child_base_env(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> BTreeMap<std::ffi::OsString, std::ffi::OsString> {
    vars.filter(|(k, _)| {
        !matches!(
            k.to_str(),
            Some("LISTEN_FDS" | "LISTEN_PID" | "LISTEN_FDNAMES")
        )
    })
    .collect()
}

/// The sockets drover itself was given by socket activation: `LISTEN_PID`
/// is drover's PID and fds 3 .. 3 + `LISTEN_FDS` are open and inherited
/// across exec. `fork` children inherit them (with their own `LISTEN_*`);
/// returns their number and `LISTEN_FDNAMES`.
fn inherited_sockets() -> Option<(u32, Option<String>)> {
    let pid = std::env::var("LISTEN_PID").ok()?;
    if pid.parse::<u32>().ok()? != std::process::id() {
        return None;
    }
    let count: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    let all =
        count > 0 && count <= 1024 && (3..3 + count as i32).all(crate::sys::inherited_across_exec);
    all.then(|| (count, std::env::var("LISTEN_FDNAMES").ok()))
}

fn raise_fd_limit(config: &Config) {
    let limit = match crate::sys::raise_fd_limit() {
        Ok((_, raised)) => raised,
        Err(e) => {
            tracing::warn!("cannot raise the open-file limit: {e}");
            return;
        }
    };
    let children: u64 = config.groups.values().map(|g| u64::from(g.processes)).sum();
    let needed = FDS_PER_CHILD * children + FDS_RESERVED;
    if needed > limit {
        tracing::warn!(
            "the open-file limit is {limit}, but {} need about {needed} \
             ({FDS_PER_CHILD} per child for its output pipes); some starts will fail with \
             \"Too many open files\" — raise the hard limit (ulimit -Hn, LimitNOFILE=)",
            plural(children as usize, "child", "children")
        );
    }
}

/// Output pipes drover holds per running child.
const FDS_PER_CHILD: u64 = 2;
/// The env files of every group of `config`, each once.
fn env_files(config: &Config) -> Vec<std::path::PathBuf> {
    let files: std::collections::BTreeSet<&std::path::PathBuf> =
        config.groups.values().flat_map(|g| &g.env_files).collect();
    files.into_iter().cloned().collect()
}

/// drover's own fds: stdio, epoll, signal pipe, watcher, log writer and
/// the control socket (32), plus the control clients.
const FDS_RESERVED: u64 = 32 + (control::MAX_CLIENTS + control::RESERVED) as u64;

/// Unblocks the signals drover handles, in case it was started with them
/// blocked (a container runtime or a parent may do that).
fn unblock(signals: &[i32]) -> Result<(), RuntimeError> {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    let mut set = SigSet::empty();
    for &s in signals {
        if let Ok(s) = nix::sys::signal::Signal::try_from(s) {
            set.add(s);
        }
    }
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None).map_err(errno("sigprocmask"))
}
