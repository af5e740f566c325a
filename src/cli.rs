//! The command line: argument parsing, exit codes, and the client commands.
//!
//! Every subcommand returns an [`ExitCode`]; errors meant for people are
//! printed here and nowhere deeper.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config;
use crate::control::{self, Request};
use crate::runtime::{self, Outcome};

const EXIT_CODES: &str = "\
Exit status:
  0  success; for `run`: shutdown was requested and every process stopped in time
  1  failure: invalid config, control socket in use, no supervisor listening,
     or the supervisor refused the request
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
        #[arg(long, hide = true)]
        ballast_mib: Option<usize>,
    },
    /// Validate PATH without starting anything (exit 0: valid, warnings allowed).
    Check {
        /// A .toml file, or a directory whose *.toml files are merged.
        path: PathBuf,
    },
    /// Show every group, child and queue of the running supervisor.
    Status {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start the children of a stopped group (gives fatal children a fresh start budget).
    Start {
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a group's children; they stay stopped until `start` or `restart`.
    Stop {
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop and start again every child of a group.
    Restart {
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read the config again and apply the difference; prints what changed
    /// or, for an invalid config, every error (nothing is changed then).
    Reload {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop everything gracefully and make `drover run` exit.
    Shutdown {
        #[command(flatten)]
        client: ClientArgs,
    },
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
        Command::Status { json, client } => status(json, &client),
        Command::Start { group, client } => send(&client, Request::Start { group }),
        Command::Stop { group, client } => send(&client, Request::Stop { group }),
        Command::Restart { group, client } => send(&client, Request::Restart { group }),
        Command::Reload { client } => send(&client, Request::Reload),
        Command::Shutdown { client } => send(&client, Request::Shutdown),
    }
}

/// drover's own logs: stderr, level from `DROVER_LOG` (error, warn, info,
/// debug, trace; default info).
fn init_tracing(format: config::LogFormat) {
    use tracing_subscriber::filter::LevelFilter;
    let level = std::env::var("DROVER_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder.json().init(),
    }
}

fn run(path: &Path, socket: Option<&Path>) -> ExitCode {
    if let Err(e) = crate::sys::ensure_std_fds() {
        eprintln!("drover: cannot open /dev/null for a closed standard stream: {e}");
        return ExitCode::from(1);
    }
    let loaded = match config::load(path) {
        Ok(loaded) => loaded,
        Err(failed) => {
            eprint!("{}", config::render_all(&failed.diagnostics));
            return ExitCode::from(1);
        }
    };
    init_tracing(loaded.config.supervisor.log_format);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let socket = socket_for(&loaded.config, socket);
    match runtime::run(loaded.config, path, &socket) {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Forced) => ExitCode::from(3),
        Err(e) => {
            eprintln!("drover: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(loaded) => {
            if !loaded.warnings.is_empty() {
                eprint!("{}", config::render_all(&loaded.warnings));
            }
            let c = &loaded.config;
            println!(
                "{}: ok ({}, {}, {})",
                path.display(),
                crate::wording::plural(c.groups.len(), "group", "groups"),
                crate::wording::plural(c.queues.len(), "queue", "queues"),
                crate::wording::plural(c.files.len(), "file", "files")
            );
            ExitCode::SUCCESS
        }
        Err(failed) => {
            eprint!("{}", config::render_all(&failed.diagnostics));
            ExitCode::from(1)
        }
    }
}

fn connect(client: &ClientArgs, request: &Request) -> Result<control::Response, ExitCode> {
    let path = client.socket_path().map_err(|e| {
        eprint!("{e}");
        ExitCode::from(1)
    })?;
    control::request(&path, request).map_err(|e| {
        eprintln!("drover: {e}");
        ExitCode::from(1)
    })
}

fn status(json: bool, client: &ClientArgs) -> ExitCode {
    let response = match connect(client, &Request::Status) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let Some(status) = response.status else {
        eprintln!("drover: {}", response.message.unwrap_or_default());
        return ExitCode::from(1);
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).expect("status serialises")
        );
    } else {
        print!("{}", status.render_table());
    }
    ExitCode::SUCCESS
}

fn send(client: &ClientArgs, request: Request) -> ExitCode {
    match connect(client, &request) {
        Ok(r) if r.ok => {
            println!("{}", r.message.unwrap_or_else(|| "ok".into()));
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("drover: {}", r.message.unwrap_or_default());
            ExitCode::from(1)
        }
        Err(code) => code,
    }
}
