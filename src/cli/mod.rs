//! The command line: argument parsing, exit codes, and the client commands.
//!
//! Every subcommand returns an [`ExitCode`]; errors meant for people are
//! printed here and nowhere deeper.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use crate::config;
use crate::control::status::Status;
use crate::control::wait::{self, Goal, Progress};
use crate::control::{self, ClientError, Request, Response};
use crate::runtime::{self, Outcome};

/// `println!` for a command's output that never panics: when the reader
/// went away (`drover status | head -1`) the command ends quietly, as any
/// Unix filter does; another failure is reported on stderr.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*).and_then(|()| out.flush()) {
            crate::cli::output_failed(e);
        }
    }};
}

/// `print!`, as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = write!(out, $($arg)*).and_then(|()| out.flush()) {
            crate::cli::output_failed(e);
        }
    }};
}

/// `eprintln!` that never panics: a message that cannot be written (stderr
/// closed, a pipe nobody reads, a full disk) is lost, and drover goes on.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!`, as [`errln!`].
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

/// stdout failed: quietly done when its reader went away, else said why.
fn output_failed(e: std::io::Error) -> ! {
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        errln!("drover: cannot write the output: {e}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

const EXIT_CODES: &str = "\
Exit status:
  0  success; for `run`: shutdown was requested and every process stopped in time
  1  failure: invalid config, control socket in use, no supervisor listening,
     or the supervisor refused the request; for `start`, `stop` and
     `restart`: a group failed to reach its state, or the wait timed out
  2  usage error (bad arguments)
  3  `run` only: shutdown had to SIGKILL something (a stop_timeout passed,
     or a second SIGTERM/SIGINT asked for an immediate stop)";

/// drover: a declarative process supervisor.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the groups of PATH (a .toml file or a directory of them) until shut down.
    Run {
        /// A .toml file, or a directory whose *.toml files are merged.
        path: PathBuf,
        /// Control socket path (overrides `[supervisor] control_socket`).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Benchmarks only: hold this many MiB of touched memory, to show
        /// how start methods behave in a large supervisor.
        #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(..=1 << 20))]
        ballast_mib: Option<u64>,
    },
    /// Validate PATH without starting anything (exit 0: valid, warnings allowed).
    Check {
        /// A .toml file, or a directory whose *.toml files are merged.
        path: PathBuf,
    },
    /// Show every group, child and queue of the running supervisor.
    Status {
        /// Show only these groups (queues are still shown).
        groups: Vec<String>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start the children of stopped groups (gives fatal children a fresh
    /// start budget) and wait until they run.
    Start {
        #[command(flatten)]
        groups: GroupArgs,
    },
    /// Stop groups' children and wait until they are gone; they stay
    /// stopped until `start` or `restart`.
    Stop {
        #[command(flatten)]
        groups: GroupArgs,
    },
    /// Stop and start again every child of groups (following each group's
    /// `update` mode) and wait until new processes run.
    Restart {
        #[command(flatten)]
        groups: GroupArgs,
    },
    /// Read the config again and apply the difference; prints what changed
    /// or, for an invalid config, every error (nothing is changed then).
    Reload {
        /// Only print what a reload would change; apply nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: compare this config (a file or directory) with
        /// what runs, instead of the running config's own path.
        #[arg(requires = "dry_run")]
        path: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop everything gracefully and make `drover run` exit.
    Shutdown {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the last lines each group wrote (kept in memory, `[supervisor]
    /// log_lines` per group), in the order drover wrote them; with
    /// `--follow`, then every new line until interrupted.
    Logs {
        /// Only these groups (default: all).
        groups: Vec<String>,
        /// Keep printing new lines as the groups write them.
        #[arg(short, long)]
        follow: bool,
        /// At most N lines per group (default: every kept line; 10 with
        /// --follow).
        #[arg(short = 'n', long = "lines", value_name = "N")]
        lines: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send a signal to each running process of a group (its own PID; with
    /// `--group`, its whole process group).
    Signal {
        /// The group, by name.
        group: String,
        /// TERM, SIGHUP, USR1, RTMIN+2, 15, ... (as `kill -l` names them).
        signal: String,
        /// Signal each child's process group, not only the child.
        #[arg(long = "group")]
        process_group: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a shell completion script, e.g.
    /// `drover completions bash > /etc/bash_completion.d/drover`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the `drover` Python module (queue helpers for workers), e.g.
    /// `drover python-module > drover.py`.
    PythonModule,
    /// Print drover's manual page (roff), e.g. `drover man > drover.1`.
    Man {
        /// Write drover.1 and a page per subcommand (drover-run.1, ...)
        /// into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// The groups a `start`, `stop` or `restart` acts on, and how it waits.
#[derive(Debug, Args)]
struct GroupArgs {
    /// The groups, by name.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    groups: Vec<String>,
    /// Every group of the running supervisor.
    #[arg(long)]
    all: bool,
    /// Return once the supervisor accepted the request, without waiting.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for every group to reach its state (e.g. `30s`).
    #[arg(long, value_name = "DURATION", default_value = "60s",
          value_parser = parse_wait, conflicts_with = "no_wait")]
    timeout: Duration,
    #[command(flatten)]
    client: ClientArgs,
}

/// A `--timeout`: a duration, at most what a config may say (a year), so
/// that the deadline it sets can always be reached.
fn parse_wait(s: &str) -> Result<Duration, String> {
    let limit = config::limits::MAX_DURATION;
    match config::parse_duration(s)? {
        d if d > limit => Err(format!("at most {}h", limit.as_secs() / 3600)),
        d => Ok(d),
    }
}

/// How a client finds the supervisor's control socket.
#[derive(Debug, Args)]
struct ClientArgs {
    /// Control socket of the supervisor.
    #[arg(long, env = "DROVER_SOCKET")]
    socket: Option<PathBuf>,
    /// Find the socket from this config's `[supervisor] control_socket`.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ClientArgs {
    fn socket_path(&self) -> Result<PathBuf, String> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        if let Some(path) = &self.config {
            return match config::load(path) {
                Ok(loaded) => Ok(socket_for(&loaded.config, None)),
                Err(failed) => Err(config::render_all(&failed.diagnostics)),
            };
        }
        Ok(control::default_socket_path())
    }
}

/// The socket `run` listens on: `--socket`, else the config's, else the default.
fn socket_for(config: &config::Config, flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| config.supervisor.control_socket.clone())
        .unwrap_or_else(control::default_socket_path)
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            path,
            socket,
            ballast_mib,
        } => {
            // Touched (non-zero) so every page is really resident.
            let ballast = crate::sys::ballast(ballast_mib.unwrap_or(0));
            let code = run(&path, socket.as_deref());
            drop(std::hint::black_box(ballast));
            code
        }
        Command::Check { path } => check(&path),
        Command::Status {
            groups,
            json,
            client,
        } => status(&groups, json, &client),
        Command::Start { groups } => group_command(Verb::Start, &groups),
        Command::Stop { groups } => group_command(Verb::Stop, &groups),
        Command::Restart { groups } => group_command(Verb::Restart, &groups),
        Command::Reload {
            dry_run,
            path,
            client,
        } => {
            let path = match path.map(std::path::absolute).transpose() {
                Ok(path) => path,
                Err(e) => {
                    errln!("drover: {e}");
                    return ExitCode::from(2);
                }
            };
            send(&client, Request::Reload { dry_run, path })
        }
        Command::Shutdown { client } => send(&client, Request::Shutdown),
        Command::Completions { shell } => {
            let mut cli = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cli, "drover", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { dir } => man(dir.as_deref()),
        Command::Logs {
            groups,
            follow,
            lines,
            client,
        } => logs(groups, follow, lines.or(follow.then_some(10)), &client),
        Command::Signal {
            group,
            signal,
            process_group,
            client,
        } => match config::anysignal::parse(&signal, crate::sys::realtime_signals()) {
            Ok(signal) => send(
                &client,
                Request::Signal {
                    group,
                    signal,
                    process_group,
                },
            ),
            Err(e) => {
                errln!("drover: {e}");
                ExitCode::from(2)
            }
        },
        Command::PythonModule => {
            out!("{}", crate::start::python::MODULE);
            ExitCode::SUCCESS
        }
    }
}

/// `drover logs`: the kept lines, then with `follow` the new ones, on
/// stdout as drover writes them.
fn logs(groups: Vec<String>, follow: bool, lines: Option<u32>, client: &ClientArgs) -> ExitCode {
    let path = match client_socket(client) {
        Ok(path) => path,
        Err(code) => return code,
    };
    let request = Request::Logs {
        groups,
        lines,
        follow,
    };
    let mut out = std::io::stdout().lock();
    match control::stream(&path, &request, &mut out) {
        Ok(response) if response.ok => ExitCode::SUCCESS,
        Ok(response) => {
            errln!("drover: {}", response.message.unwrap_or_default());
            ExitCode::from(1)
        }
        Err(e) => {
            errln!("drover: {e}");
            ExitCode::from(1)
        }
    }
}

/// `drover man`: the manual page on stdout, or with `--dir` the pages of
/// drover and of each subcommand (`drover.1`, `drover-run.1`, ...) there.
fn man(dir: Option<&Path>) -> ExitCode {
    let cli = <Cli as clap::CommandFactory>::command();
    let written = match dir {
        None => clap_mangen::Man::new(cli).render(&mut std::io::stdout()),
        Some(dir) => write_man_pages(cli, dir),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("drover: cannot write the manual pages: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_man_pages(cli: clap::Command, dir: &Path) -> std::io::Result<()> {
    let page = |cmd: clap::Command, file: String| -> std::io::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        std::fs::write(dir.join(&file), out)?;
        outln!("{}", dir.join(file).display());
        Ok(())
    };
    for sub in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = sub.get_name();
        let cmd = sub
            .clone()
            .name(format!("drover-{name}"))
            .version(env!("CARGO_PKG_VERSION"))
            .bin_name(format!("drover {name}"));
        page(cmd, format!("drover-{name}.1"))?;
    }
    page(cli, "drover.1".into())
}

/// drover's own logs: stderr, level from `DROVER_LOG` (error, warn, info,
/// debug, trace; default info).
fn init_tracing(format: config::LogFormat) {
    use tracing_subscriber::filter::LevelFilter;
    let level = std::env::var("DROVER_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Through a thread of its own (a stderr nobody reads must not block
    // the loop), or directly if that thread cannot start.
    match runtime::log_sink::StderrSink::start() {
        Some(sink) => init_fmt(sink, format, level, ansi),
        None => init_fmt(std::io::stderr, format, level, ansi),
    }
}

fn init_fmt<W>(
    writer: W,
    format: config::LogFormat,
    level: tracing_subscriber::filter::LevelFilter,
    ansi: bool,
) where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        // A write that fails (stderr a pipe nobody reads any more, a full
        // disk) loses that line; the default reports it with `eprintln!`,
        // which panics when stderr is what failed.
        .log_internal_errors(false)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(ansi);
    match format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn run(path: &Path, socket: Option<&Path>) -> ExitCode {
    if let Err(e) = crate::sys::ensure_std_fds() {
        errln!("drover: cannot open /dev/null for a closed standard stream: {e}");
        return ExitCode::from(1);
    }
    // Before anything else opens an fd, so that the slots are 3, 4, ….
    let slots = crate::sys::reserve_spawn_slots();
    let loaded = match config::load(path) {
        Ok(loaded) => loaded,
        Err(failed) => {
            err!("{}", config::render_all(&failed.diagnostics));
            return ExitCode::from(1);
        }
    };
    init_tracing(loaded.config.supervisor.log_format);
    if let Err(e) = slots {
        tracing::warn!("cannot reserve fds for starting children: {e}; using posix_spawn");
    }
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let socket = socket_for(&loaded.config, socket);
    let result = runtime::run(loaded.config, path, &socket);
    // The last lines (how the shutdown went) before the exit, unless
    // nobody reads them.
    runtime::log_sink::flush(Duration::from_secs(2));
    match result {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Forced) => ExitCode::from(3),
        Ok(Outcome::Fatal) => ExitCode::from(4),
        Err(e) => {
            errln!("drover: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(path: &Path) -> ExitCode {
    // Entries of a config directory that are not regular files (a FIFO, a
    // device) are passed over, with a warning (`run` logs the same).
    for skipped in crate::runtime::watch::inspect(path, &Default::default()).skipped {
        errln!("{skipped}");
    }
    match config::load(path) {
        Ok(loaded) => {
            if !loaded.warnings.is_empty() {
                err!("{}", config::render_all(&loaded.warnings));
            }
            let c = &loaded.config;
            outln!(
                "{}: ok ({}, {}, {})",
                path.display(),
                crate::text::wording::plural(c.groups.len(), "group", "groups"),
                crate::text::wording::plural(c.queues.len(), "queue", "queues"),
                crate::text::wording::plural(c.files.len(), "file", "files")
            );
            ExitCode::SUCCESS
        }
        Err(failed) => {
            err!("{}", config::render_all(&failed.diagnostics));
            ExitCode::from(1)
        }
    }
}

fn client_socket(client: &ClientArgs) -> Result<PathBuf, ExitCode> {
    client.socket_path().map_err(|e| {
        err!("{e}");
        ExitCode::from(1)
    })
}

fn connect(client: &ClientArgs, request: &Request) -> Result<control::Response, ExitCode> {
    let path = client_socket(client)?;
    control::request(&path, request).map_err(|e| {
        errln!("drover: {e}");
        ExitCode::from(1)
    })
}

/// One `status` snapshot, or the error already printed.
fn fetch_status(path: &Path) -> Result<Status, ExitCode> {
    match control::request(path, &Request::Status) {
        Ok(Response {
            status: Some(status),
            ..
        }) => Ok(status),
        Ok(response) => {
            errln!("drover: {}", response.message.unwrap_or_default());
            Err(ExitCode::from(1))
        }
        Err(e) => {
            errln!("drover: {e}");
            Err(ExitCode::from(1))
        }
    }
}

/// Every name in `names` is a group of `status`; else one line and exit 1.
fn check_known(status: &Status, names: &[String]) -> Result<(), ExitCode> {
    let unknown: Vec<&str> = names
        .iter()
        .filter(|n| !status.groups.iter().any(|g| &g.name == *n))
        .map(String::as_str)
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    // The supervisor's own wording for one unknown group.
    let quoted: Vec<String> = unknown.iter().map(|n| format!("`{n}`")).collect();
    errln!(
        "drover: no group{} named {}",
        if unknown.len() == 1 { "" } else { "s" },
        quoted.join(", ")
    );
    Err(ExitCode::from(1))
}

fn status(groups: &[String], json: bool, client: &ClientArgs) -> ExitCode {
    let path = match client_socket(client) {
        Ok(path) => path,
        Err(code) => return code,
    };
    let mut status = match fetch_status(&path) {
        Ok(status) => status,
        Err(code) => return code,
    };
    if !groups.is_empty() {
        if let Err(code) = check_known(&status, groups) {
            return code;
        }
        status.groups.retain(|g| groups.contains(&g.name));
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&status).expect("status serialises")
        );
    } else {
        out!("{}", status.render_table());
    }
    ExitCode::SUCCESS
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Start,
    Stop,
    Restart,
}

impl Verb {
    fn request(self, group: String) -> Request {
        match self {
            Verb::Start => Request::Start { group },
            Verb::Stop => Request::Stop { group },
            Verb::Restart => Request::Restart { group },
        }
    }

    /// The state waited for, in a timeout message.
    fn target(self) -> &'static str {
        match self {
            Verb::Stop => "stopped",
            Verb::Start | Verb::Restart => "running",
        }
    }
}

/// How often a waiting client reads `status`: the supervisor has no change
/// notification, and a person does not notice 50 ms.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// The least time one `status` poll of a wait is given, even past its deadline.
const LAST_POLL_FLOOR: Duration = Duration::from_secs(1);

/// `drover start|stop|restart`: sends one request per group, then (unless
/// `--no-wait`) reads `status` until each group reached its state, failed
/// to, or the timeout passed, printing one line per group as it settles.
fn group_command(verb: Verb, args: &GroupArgs) -> ExitCode {
    let path = match client_socket(&args.client) {
        Ok(path) => path,
        Err(code) => return code,
    };
    let before = match fetch_status(&path) {
        Ok(status) => status,
        Err(code) => return code,
    };
    let names: Vec<String> = if args.all {
        before.groups.iter().map(|g| g.name.clone()).collect()
    } else {
        let mut names = args.groups.clone();
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        if let Err(code) = check_known(&before, &names) {
            return code;
        }
        names
    };
    let mut failed = false;
    // `stop` of groups that start after one another goes in steps: those
    // that start after the others first, each step once the previous one
    // has stopped (as a shutdown does).
    let steps = if verb == Verb::Stop && !args.no_wait {
        stop_steps(&before, names)
    } else {
        vec![names]
    };
    let deadline = Instant::now() + args.timeout;
    for names in steps {
        let pending = match send_step(verb, args, &path, &before, names) {
            Ok((pending, step_failed)) => {
                failed |= step_failed;
                pending
            }
            Err(code) => return code,
        };
        if !pending.is_empty() && !wait_for(verb, &path, pending, args.timeout, deadline) {
            failed = true;
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Sends the request of `verb` for each of `names`; returns the groups to
/// wait for, and whether any request failed.
fn send_step(
    verb: Verb,
    args: &GroupArgs,
    path: &Path,
    before: &Status,
    names: Vec<String>,
) -> Result<(Vec<(String, Goal)>, bool), ExitCode> {
    let mut failed = false;
    let mut pending = Vec::new();
    for name in names {
        let Some(group) = before.groups.iter().find(|g| g.name == name) else {
            continue; // checked above
        };
        if verb == Verb::Start && wait::already_running(group) {
            outln!("{name}: already running");
            continue;
        }
        let goal = match verb {
            Verb::Start => Goal::Start,
            Verb::Stop => Goal::Stop,
            Verb::Restart => Goal::restart(group),
        };
        match control::request(path, &verb.request(name.clone())) {
            Ok(r) if r.ok => {
                if args.no_wait {
                    outln!("{name}: {}", r.message.unwrap_or_else(|| "ok".into()));
                } else {
                    pending.push((name, goal));
                }
            }
            Ok(r) => {
                outln!("{name}: failed: {}", r.message.unwrap_or_default());
                failed = true;
            }
            Err(e) => {
                errln!("drover: {e}");
                return Err(ExitCode::from(1));
            }
        }
    }
    Ok((pending, failed))
}

/// `names` in the steps `stop` takes them: a group stops only after every
/// named group that starts after it (directly or through other groups'
/// `after`) has stopped.
fn stop_steps(status: &Status, mut names: Vec<String>) -> Vec<Vec<String>> {
    let after = |name: &str| -> &[String] {
        status
            .groups
            .iter()
            .find(|g| g.name == name)
            .map_or(&[], |g| g.after.as_slice())
    };
    // Whether `from` starts after `to`, directly or not.
    let starts_after = |from: &str, to: &str| -> bool {
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(g) = stack.pop() {
            for dep in after(&g) {
                if dep == to {
                    return true;
                }
                if seen.insert(dep.clone()) {
                    stack.push(dep.clone());
                }
            }
        }
        false
    };
    let mut steps = Vec::new();
    while !names.is_empty() {
        let step: Vec<String> = names
            .iter()
            .filter(|g| !names.iter().any(|d| d != *g && starts_after(d, g)))
            .cloned()
            .collect();
        if step.is_empty() {
            // A cycle, which a valid config cannot have: all at once.
            steps.push(std::mem::take(&mut names));
            break;
        }
        names.retain(|g| !step.contains(g));
        steps.push(step);
    }
    steps
}

/// Reads `status` until every `(group, goal)` settled or `timeout` passed;
/// true when every goal was reached.
/// (`timeout` is the whole wait, as the messages name it; `deadline` its end.)
fn wait_for(
    verb: Verb,
    path: &Path,
    mut pending: Vec<(String, Goal)>,
    timeout: Duration,
    deadline: Instant,
) -> bool {
    let mut all_reached = true;
    loop {
        // Each poll is bounded by what is left of the wait (a stuck
        // supervisor must not hold the client for the usual 30 s), with a
        // floor of a second so that a busy supervisor's answer to the last
        // poll still says where each group stands.
        let left = deadline.saturating_duration_since(Instant::now());
        let within = left.clamp(LAST_POLL_FLOOR, control::CLIENT_TIMEOUT);
        let status = match control::request_within(path, &Request::Status, within) {
            Ok(Response {
                status: Some(status),
                ..
            }) => status,
            Ok(response) => {
                errln!("drover: {}", response.message.unwrap_or_default());
                return false;
            }
            Err(ClientError::Timeout(..)) => {
                for (name, _) in &pending {
                    outln!(
                        "{name}: timed out after {} waiting to be {} (the supervisor did not answer)",
                        human(timeout),
                        verb.target()
                    );
                }
                return false;
            }
            Err(e) => {
                errln!("drover: {e}");
                return false;
            }
        };
        pending.retain(|(name, goal)| match wait::progress(goal, name, &status) {
            Progress::Pending => true,
            Progress::Done(words) => {
                outln!("{name}: {words}");
                false
            }
            Progress::Failed(words) => {
                outln!("{name}: {words}");
                all_reached = false;
                false
            }
        });
        if pending.is_empty() {
            return all_reached;
        }
        if Instant::now() >= deadline {
            for (name, _) in &pending {
                outln!(
                    "{name}: timed out after {} waiting to be {} ({})",
                    human(timeout),
                    verb.target(),
                    wait::summary(name, &status)
                );
            }
            return false;
        }
        std::thread::sleep(POLL_EVERY.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// `1.5s` / `60s` / `200ms`.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn send(client: &ClientArgs, request: Request) -> ExitCode {
    match connect(client, &request) {
        Ok(r) if r.ok => {
            outln!("{}", r.message.unwrap_or_else(|| "ok".into()));
            ExitCode::SUCCESS
        }
        Ok(r) => {
            errln!("drover: {}", r.message.unwrap_or_default());
            ExitCode::from(1)
        }
        Err(code) => code,
    }
}
