//! The validated configuration: the only config type used past `config`.
//!
//! Every value here has been checked and every default resolved; a `Config`
//! cannot hold a dangling queue reference, an invalid name or a duration
//! without a unit, and every value is within the bounds documented on its
//! field (a duration is at most a year, a string handed to `execve` at most
//! 131071 bytes), so arithmetic on them cannot overflow. Produced by
//! [`crate::config::load`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::names::{GroupName, QueueName};
use crate::config::signal::Signal;

/// The whole merged configuration of one `drover run PATH`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub supervisor: SupervisorConfig,
    /// Groups in name order.
    pub groups: BTreeMap<GroupName, GroupSpec>,
    /// Queues in name order.
    pub queues: BTreeMap<QueueName, QueueSpec>,
    /// Every file that contributed, in the order they were merged.
    pub files: Vec<PathBuf>,
}

/// `[supervisor]`: settings of drover itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// `control_socket`, made absolute relative to the config file; `None`
    /// means "use the default path", resolved at run time.
    pub control_socket: Option<PathBuf>,
    pub log_format: LogFormat,
    /// `state_dir`, absolute; default `/var/lib/drover` for root, else
    /// `$XDG_STATE_HOME/drover` or `./.drover-state`.
    pub state_dir: PathBuf,
    /// `dead_letter_max_bytes`: the most a queue's dead-letter record file
    /// may grow to (default 1 GiB, 4 KiB to 1 TiB); past it records are
    /// counted, not written.
    pub dead_letter_max_bytes: u64,
    /// `log_lines`: the last lines of each group's output kept for
    /// `drover logs` (default 1000, 0 to 100,000; also at most 1 MiB per
    /// group).
    pub log_lines: u32,
    /// `log_timestamps`: text lines of children start with the time (RFC
    /// 3339, UTC); JSON lines always carry it.
    pub log_timestamps: bool,
    /// `metrics = "HOST:PORT"`: where Prometheus metrics are served at
    /// `/metrics`; `None` (the default): nowhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// `exit_on_fatal`: a `fatal` child (or a failed init task) shuts
    /// drover down, which then exits with status 4. Default false.
    pub exit_on_fatal: bool,
}

/// Default of `[supervisor] dead_letter_max_bytes`.
pub const DEFAULT_DEAD_LETTER_MAX_BYTES: u64 = 1 << 30;

/// Default of `[supervisor] log_lines`.
pub const DEFAULT_LOG_LINES: u32 = 1000;

/// Most of `[supervisor] log_lines`.
pub const MAX_LOG_LINES: u32 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// What a group's children run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// `command = [...]`: argv, never through a shell. Non-empty.
    Command(Vec<OsString>),
    /// `python = "pkg.module:function"`.
    Python {
        module: String,
        function: String,
        /// `preload = [...]` (forkserver).
        preload: Vec<String>,
    },
}

/// How a group's children start (`start_method`): the type of the
/// `drover-context` library, whose methods these are.
pub use drover_context::StartMethod;

/// How a group whose definition changed is replaced on reload (`update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpdateMode {
    /// Per index: the replacement starts, and once it runs the old child
    /// is stopped (no downtime).
    #[default]
    Rolling,
    /// Per index: the old child is stopped first, then its replacement
    /// starts (for programs that cannot run twice: a fixed port, a lock).
    StopFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    Always,
    #[default]
    OnFailure,
    Never,
}

/// How a group's children are restarted and stopped. Changing only these
/// fields on reload never restarts a child. Every duration is at most a year.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub restart: RestartPolicy,
    /// Exit codes that count as success (default `[0]`).
    pub success_codes: Vec<i32>,
    /// Up this long = `running`; a faster death is a failed start. At least
    /// 100 ms.
    pub start_secs: Duration,
    pub restart_delay: Duration,
    pub restart_delay_max: Duration,
    /// Retries of failed starts before the child is `fatal` (at most a
    /// million).
    pub max_restarts: u32,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// `ready`: when a started child counts as running (default `started`).
    pub ready: Readiness,
    /// `ready_timeout`: a child not ready this long after its start is a
    /// failed start (default 60 s, at least 100 ms). Unused with
    /// [`Readiness::Started`].
    pub ready_timeout: Duration,
    /// `health`: the periodic check of a running child, if any.
    pub health: Option<HealthCheck>,
}

/// When a started child is ready, and so `running` (`ready`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Readiness {
    /// Once up `start_secs`.
    #[default]
    Started,
    /// Once it sends `READY=1` to its `NOTIFY_SOCKET` (systemd's
    /// sd_notify protocol).
    Notify,
    /// `{ tcp = "HOST:PORT" }`: once a TCP connect to the address succeeds.
    Tcp(std::net::SocketAddr),
    /// `{ command = [...] }`: once the command exits 0. Non-empty argv.
    Command(Vec<OsString>),
}

/// `health = { command, interval, timeout, retries }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Exit 0 = healthy. Non-empty argv.
    pub command: Vec<OsString>,
    /// From the end of one check to the start of the next (default 10 s,
    /// at least 100 ms).
    pub interval: Duration,
    /// A check still running after this is killed and failed (default 5 s).
    pub timeout: Duration,
    /// Consecutive failures that restart the child (default 3, 1 to 1000).
    pub retries: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            command: Vec::new(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            retries: 3,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            restart: RestartPolicy::OnFailure,
            success_codes: vec![0],
            start_secs: Duration::from_secs(1),
            restart_delay: Duration::from_millis(100),
            restart_delay_max: Duration::from_secs(30),
            max_restarts: 5,
            stop_signal: Signal::Term,
            stop_timeout: Duration::from_secs(10),
            ready: Readiness::Started,
            ready_timeout: Duration::from_secs(60),
            health: None,
        }
    }
}

/// The variables `clear_env = true` keeps from drover's own environment.
pub const KEPT_BY_CLEAR_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// One `[group.NAME]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    pub name: GroupName,
    pub program: Program,
    /// `python_executable` for `python` groups (default `python3`).
    pub python_executable: OsString,
    pub start_method: StartMethod,
    /// Children running at once; 0 = defined but idle. At most 100,000, and
    /// all groups together at most 2^22.
    pub processes: u32,
    pub inputs: Vec<QueueName>,
    pub outputs: Vec<QueueName>,
    /// The `outputs` whose queue has `confirm = true`, in `outputs` order:
    /// filled when the config is assembled (the group's table does not
    /// say it). Its children see `DROVER_CONFIRM_<QUEUE>=1` for each.
    pub confirm_outputs: Vec<QueueName>,
    /// `env`, in key order.
    pub env: BTreeMap<String, String>,
    /// `env_file`: the env files read into `env` (before the group's own
    /// `env`, which wins), resolved, in order.
    pub env_files: Vec<PathBuf>,
    pub clear_env: bool,
    /// Absolute working directory (relative paths resolved against the
    /// directory of the file that defines the group).
    pub cwd: PathBuf,
    pub policy: Policy,
    /// How a changed definition replaces running children (taken in place).
    pub update: UpdateMode,
    /// `after`: groups whose children must be ready (or, for `restart =
    /// "never"`, have exited successfully) before this group's children
    /// start; it stops before them. Each defined, at most once, never the
    /// group itself, and no cycle (taken in place on reload).
    pub after: Vec<GroupName>,
    /// `sockets`: listening sockets passed as fds 3, 4, … in this order.
    pub sockets: Vec<SocketSpec>,
    /// The file that defines this group.
    pub file: PathBuf,
    /// `user` (and `group`), resolved when the config was loaded; `None`:
    /// children run as drover does.
    pub user: Option<RunAs>,
    /// `rlimits`, by resource: each sets the soft and the hard limit.
    /// Resources not listed keep drover's original limits.
    pub rlimits: BTreeMap<Resource, Limit>,
}

pub use crate::config::rlimits::{Limit, Resource};

/// Who a group's children run as: `user` and `group`, resolved from the
/// user and group databases when the config was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user's name (`USER`, `LOGNAME`); the uid as text for a numeric
    /// `user` without a passwd entry.
    pub name: String,
    pub uid: u32,
    /// `group`, or the user's primary group.
    pub gid: u32,
    /// Supplementary groups: the user's groups (`getgrouplist`), `gid`
    /// among them.
    pub groups: Vec<u32>,
    /// `HOME`: the user's home directory (`/` without a passwd entry).
    pub home: PathBuf,
    /// False when drover already runs as this uid and gid (not as root):
    /// nothing to switch, only the environment is set.
    pub switch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    #[default]
    AtLeastOnce,
    AtMostOnce,
}

/// One `[queue.NAME]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    pub name: QueueName,
    /// Messages held before producers block (default 10000, 1 to 1,000,000).
    pub capacity: u32,
    /// Default 65536, 1 to 4 MiB.
    pub max_message_bytes: u32,
    pub delivery: Delivery,
    /// Default 1, 1 to 10,000.
    pub prefetch: u32,
    /// Default 5, 1 to 10,000.
    pub max_deliveries: u32,
    /// Must name another defined queue.
    pub dead_letter: Option<QueueName>,
    /// A consumer holding a message longer than this is hung: it is
    /// restarted and its messages redelivered. Zero: no limit. At most a
    /// year.
    pub ack_timeout: Duration,
    /// `confirm`: every packet a producer sends is answered on its socket
    /// (`ok`, or `no REASON`). Default false.
    pub confirm: bool,
    /// `durable`: messages are stored under `state_dir` and survive a
    /// crash of drover. Default false.
    pub durable: bool,
    /// `backend = "redis"`: the queue is a Redis stream shared by every
    /// drover naming it. `None`: the queue lives in this drover.
    pub redis: Option<RedisQueue>,
    pub file: PathBuf,
}

/// A queue's Redis stream: `url` (checked, `${NAME}` expanded), `stream`,
/// `claim_idle`.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisQueue {
    pub target: drover_redis::Target,
    /// Default `drover:<queue>`.
    pub stream: String,
    /// Default 30 s, 100 ms to a year.
    pub claim_idle: Duration,
}

/// One of a group's `sockets`: bound by drover once, passed to every child
/// of the group (systemd's socket activation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSpec {
    /// `name`: the child's `LISTEN_FDNAMES` entry. Non-empty, at most 255
    /// bytes of printable ASCII without `:`; unique within the group.
    pub name: String,
    pub listen: ListenAddr,
    /// `mode` of a unix socket's file (at most `0o7777`); `None`: as the
    /// umask leaves it. Always `None` for TCP.
    pub mode: Option<u32>,
}

/// A `listen` address: what drover binds. Two groups never name the same
/// one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenAddr {
    /// `tcp://HOST:PORT`, HOST an IP literal or `localhost`; port not 0.
    Tcp(std::net::SocketAddr),
    /// `unix:///absolute/path`, short enough for `sun_path`.
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "tcp://{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}
