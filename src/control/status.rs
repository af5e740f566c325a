//! The status snapshot: `drover status --json`'s exact shape,
//! and its table rendering for `drover status`.

use std::fmt::Write as _;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::names::GroupName;
use crate::config::signal::Signal;
use crate::supervisor::{
    AfterStop, Child, ChildState, ExitStatus, Group, Pid, Supervisor, WaitReason,
};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub config_error: Option<String>,
    /// How long a reload's config has been being read, while one is (the
    /// read may hang on a user lookup or a file system: supervision goes
    /// on meanwhile).
    #[serde(default)]
    pub reload_reading_ms: Option<u64>,
    pub groups: Vec<GroupStatus>,
    /// Processes of previous definitions still alive: replaced by a
    /// reload, scaled away, or of a removed group (an old process shown in
    /// its slot above, in place of a replacement that has no process, is
    /// not listed again).
    #[serde(default)]
    pub retiring: Vec<RetiringStatus>,
    pub queues: Vec<QueueStatus>,
}

/// A process on its way out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RetiringStatus {
    pub group: String,
    pub index: u32,
    /// None once it has exited while its leftovers are being stopped.
    pub pid: Option<i32>,
    /// `running` (it serves until its replacement runs) or `stopping`.
    pub state: String,
    pub uptime_ms: Option<u64>,
    /// Why it is going, in words.
    pub why: String,
    /// Processes left in its process group, being stopped.
    #[serde(default)]
    pub leftovers: Vec<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupStatus {
    pub name: String,
    pub start_method: String,
    pub processes: u32,
    pub state: String,
    /// The groups it starts after (`after`), in config order.
    #[serde(default)]
    pub after: Vec<String>,
    pub children: Vec<ChildStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChildStatus {
    pub index: u32,
    pub pid: Option<i32>,
    pub state: String,
    pub uptime_ms: Option<u64>,
    pub restarts: u32,
    pub last_exit: Option<LastExit>,
    /// Why it is not simply running, in words.
    #[serde(default)]
    pub reason: Option<String>,
    /// Processes left in its previous process group, being stopped.
    #[serde(default)]
    pub leftovers: Vec<i32>,
    /// While a reload replaces this child (the process above keeps running
    /// the previous definition): the new one's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<Replacement>,
    /// Whether it is ready (its readiness probe succeeded, or it is up
    /// `start_secs` under the default readiness): the same as `running`.
    #[serde(default)]
    pub ready: bool,
    /// The last `STATUS=` it sent to its `NOTIFY_SOCKET` (`ready =
    /// "notify"`), if any.
    #[serde(default)]
    pub status_text: Option<String>,
    /// Consecutive failed health checks of its current process.
    #[serde(default)]
    pub health_failures: u32,
    /// Restarts of this slot because its health check failed `retries`
    /// times in a row.
    #[serde(default)]
    pub health_restarts: u32,
}

/// The new child of a rolling restart, shown beside the old one it waits
/// to replace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Replacement {
    pub pid: Option<i32>,
    pub state: String,
    pub restarts: u32,
    pub last_exit: Option<LastExit>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `{"code": N}` or `{"signal": "SIGKILL"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum LastExit {
    Code(i32),
    Signal(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueStatus {
    pub name: String,
    pub depth: u64,
    pub in_flight: u64,
    pub delivered: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
    /// At-most-once messages a consumer died holding, unread.
    #[serde(default)]
    pub lost: u64,
    /// Packets not taken: empty or oversized ones from producers (the
    /// oversized ones are dead-lettered, and counted there too), and from
    /// consumers anything but a due `ack` or `nack`.
    #[serde(default)]
    pub refused: u64,
    /// A queue a reload removed, listed while its consumers still hold
    /// messages of it (an `ack` drops them, a `nack` dead-letters them).
    #[serde(default)]
    pub removed: bool,
    /// `confirm = true`: producers get a reply per packet.
    #[serde(default)]
    pub confirm: bool,
    /// `ok` replies sent to producers.
    #[serde(default)]
    pub confirmed: u64,
    /// `durable = true`: messages are stored under `state_dir`.
    #[serde(default)]
    pub durable: bool,
    /// Messages of the queue in the store (durable queues).
    #[serde(default)]
    pub stored: u64,
    /// Why the store cannot commit or read right now (durable queues;
    /// absent while it works).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
    /// Where the queue lives: `local` (this drover, in memory or its
    /// store) or `redis` (a stream shared by drover instances).
    #[serde(default = "local")]
    pub backend: String,
    /// Why Redis cannot be reached or refuses (null while it works).
    #[serde(default)]
    pub backend_error: Option<String>,
    /// The stream of a queue on Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The Redis URL of a queue on Redis, its password replaced by `***`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

fn local() -> String {
    "local".into()
}

impl Status {
    /// A snapshot of `sup` at `now`; `members` lists the processes of a
    /// process group (for leftovers).
    pub fn capture(
        sup: &Supervisor,
        config_error: Option<String>,
        now: Instant,
        members: impl Fn(Pid) -> Vec<i32>,
    ) -> Status {
        Status {
            config_error,
            reload_reading_ms: None,
            groups: sup
                .groups()
                .map(|g| group_status(sup, g, now, &members))
                .collect(),
            retiring: retiring_status(sup, now, &members),
            queues: Vec::new(),
        }
    }

    /// The human table of `drover status`.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        if let Some(err) = &self.config_error {
            let _ = writeln!(
                out,
                "config error (still running the last valid config):\n{err}\n"
            );
        }
        if let Some(ms) = self.reload_reading_ms {
            let _ = writeln!(
                out,
                "reload: reading the config for {} (not applied until it is read)\n",
                human_ms(ms)
            );
        }
        let _ = writeln!(
            out,
            "{:<24} {:<10} {:>8} {:<9} {:>10} {:>8}  LAST EXIT",
            "CHILD", "METHOD", "PID", "STATE", "UPTIME", "RESTARTS"
        );
        for g in &self.groups {
            if g.children.is_empty() {
                let _ = writeln!(
                    out,
                    "{:<24} {:<10} {:>8} {:<9}",
                    g.name, g.start_method, "-", g.state
                );
            }
            for c in &g.children {
                let pid = c.pid.map_or("-".into(), |p| p.to_string());
                let uptime = c.uptime_ms.map_or("-".into(), human_ms);
                let last = describe_exit(c.last_exit.as_ref());
                let _ = writeln!(
                    out,
                    "{:<24} {:<10} {:>8} {:<9} {:>10} {:>8}  {}{}",
                    format!("{}[{}]", g.name, c.index),
                    g.start_method,
                    pid,
                    c.state,
                    uptime,
                    c.restarts,
                    last,
                    note(c)
                );
            }
        }
        if !self.retiring.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<24} {:>8} {:<9} {:>10}  WHY",
                "RETIRING", "PID", "STATE", "UPTIME"
            );
            for r in &self.retiring {
                let pid = r.pid.map_or("-".into(), |p| p.to_string());
                let uptime = r.uptime_ms.map_or("-".into(), human_ms);
                let leftovers = if r.leftovers.is_empty() {
                    String::new()
                } else {
                    let pids: Vec<String> = r.leftovers.iter().map(i32::to_string).collect();
                    format!(" (leftovers: {})", pids.join(" "))
                };
                let _ = writeln!(
                    out,
                    "{:<24} {:>8} {:<9} {:>10}  {}{}",
                    format!("{}[{}]", r.group, r.index),
                    pid,
                    r.state,
                    uptime,
                    r.why,
                    leftovers
                );
            }
        }
        if !self.queues.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<24} {:>8} {:>9} {:>10} {:>10} {:>11} {:>13} {:>6} {:>7} {:>7}",
                "QUEUE",
                "DEPTH",
                "IN FLIGHT",
                "DELIVERED",
                "ACKED",
                "REDELIVERED",
                "DEAD LETTERED",
                "LOST",
                "REFUSED",
                "STORED"
            );
            for q in &self.queues {
                let name = if q.removed {
                    format!("{} (removed)", q.name)
                } else {
                    q.name.clone()
                };
                let stored = if q.durable || q.stored > 0 {
                    q.stored.to_string()
                } else {
                    "-".to_owned()
                };
                let _ = writeln!(
                    out,
                    "{:<24} {:>8} {:>9} {:>10} {:>10} {:>11} {:>13} {:>6} {:>7} {:>7}",
                    name,
                    q.depth,
                    q.in_flight,
                    q.delivered,
                    q.acked,
                    q.redelivered,
                    q.dead_lettered,
                    q.lost,
                    q.refused,
                    stored
                );
            }
            let errors = self
                .queues
                .iter()
                .filter_map(|q| Some((&q.name, q.store_error.as_ref()?)));
            for (name, error) in errors {
                let _ = writeln!(out, "queue {name}: store error: {error}");
            }
            for q in self.queues.iter().filter(|q| q.backend != "local") {
                let (url, stream) = (q.url.as_deref(), q.stream.as_deref());
                let _ = writeln!(
                    out,
                    "queue {}: on {} stream {}{}",
                    q.name,
                    url.unwrap_or("?"),
                    stream.unwrap_or("?"),
                    match &q.backend_error {
                        Some(e) => format!("; error: {e}"),
                        None => String::new(),
                    }
                );
            }
        }
        out
    }
}

fn describe_exit(e: Option<&LastExit>) -> String {
    match e {
        None => "-".to_owned(),
        Some(LastExit::Code(n)) => format!("code {n}"),
        Some(LastExit::Signal(s)) => s.clone(),
    }
}

/// The end of a child's table line: why it is not simply running.
fn note(c: &ChildStatus) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &c.replacement {
        parts.push(format!(
            "replacement {} (last exit {})",
            r.state,
            describe_exit(r.last_exit.as_ref())
        ));
    }
    if let Some(reason) = &c.reason {
        parts.push(reason.clone());
    }
    if let Some(text) = &c.status_text {
        parts.push(format!("status: {text}"));
    }
    if c.health_failures > 0 {
        parts.push(format!("{} failed health checks", c.health_failures));
    }
    if !c.leftovers.is_empty() {
        let pids: Vec<String> = c.leftovers.iter().map(i32::to_string).collect();
        parts.push(format!("leftovers: {}", pids.join(" ")));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("  ({})", parts.join("; "))
    }
}

fn human_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

fn last_exit(e: Option<ExitStatus>) -> Option<LastExit> {
    e.map(|e| match e {
        ExitStatus::Code(n) => LastExit::Code(n),
        ExitStatus::Signal(s) => LastExit::Signal(Signal::name_of_raw(s)),
    })
}

/// The words for why `c` is not simply running (`None` when it is).
fn reason(c: &Child) -> Option<String> {
    match &c.state {
        ChildState::Requested { .. } | ChildState::Running { .. } | ChildState::Starting { .. } => {
            None
        }
        ChildState::Waiting {
            reason: WaitReason::After,
            ..
        } => c.reason.clone(),
        ChildState::Waiting { reason, .. } => Some(reason.describe().to_owned()),
        // Being restarted (a failed health check) or stopped as a failed
        // start (not ready in time): why.
        ChildState::Stopping {
            after: AfterStop::Restart | AfterStop::FailedStart,
            ..
        } => c.reason.clone(),
        ChildState::Stopped | ChildState::Stopping { .. } => None,
        ChildState::Exited => None,
        ChildState::Backoff { .. } | ChildState::Fatal => c.reason.clone(),
    }
}

fn child_status(c: &Child, now: Instant) -> ChildStatus {
    let uptime_ms = match c.state {
        ChildState::Starting { since, .. } | ChildState::Running { since, .. } => {
            Some(now.saturating_duration_since(since).as_millis() as u64)
        }
        _ => None,
    };
    ChildStatus {
        index: c.index,
        pid: c.state.pid().map(|p| p.0),
        state: c.state.name().to_owned(),
        uptime_ms,
        restarts: c.restarts,
        last_exit: last_exit(c.last_exit),
        reason: reason(c),
        leftovers: Vec::new(),
        replacement: None,
        ready: matches!(c.state, ChildState::Running { .. }),
        status_text: None,
        health_failures: 0,
        health_restarts: c.health_restarts,
    }
}

fn group_status(
    sup: &Supervisor,
    group: &Group,
    now: Instant,
    members: &impl Fn(Pid) -> Vec<i32>,
) -> GroupStatus {
    let children: Vec<ChildStatus> = group
        .children
        .iter()
        .map(|c| {
            let mut status = match shown_instead(sup, &group.spec.name, c) {
                Some(old) => {
                    let mut status = child_status(old, now);
                    status.index = c.index;
                    status.replacement = Some(Replacement {
                        pid: c.state.pid().map(|p| p.0),
                        state: c.state.name().to_owned(),
                        restarts: c.restarts,
                        last_exit: last_exit(c.last_exit),
                        reason: reason(c),
                    });
                    if c.state == ChildState::Fatal {
                        status.reason = Some(
                            "its replacement with the new definition failed; \
                             it keeps running the previous one"
                                .into(),
                        );
                    }
                    status
                }
                _ => child_status(c, now),
            };
            if let Some(leftover) = c.leftover {
                status.leftovers = members(leftover.pgid);
            }
            status
        })
        .collect();
    GroupStatus {
        name: group.spec.name.to_string(),
        start_method: group.spec.start_method.as_str().to_owned(),
        processes: group.spec.processes,
        state: group_state(group, &children),
        after: group.spec.after.iter().map(ToString::to_string).collect(),
        children,
    }
}

/// The old process shown in the row of slot `c` instead of `c`: a rolling
/// update keeps it until the new one runs, and while the new one has no
/// process (backing off, or fatal) the row shows the process that serves,
/// the new one beside it.
fn shown_instead<'a>(sup: &'a Supervisor, group: &GroupName, c: &Child) -> Option<&'a Child> {
    // A slot whose child has a process shows it: no need to look through
    // the retiring processes (a status of 1000 children in a rolling
    // update would look through 1000 for each).
    if c.state.pid().is_some() {
        return None;
    }
    sup.predecessor(group, c.index)
        .filter(|old| old.state.pid().is_some())
}

/// The processes of previous definitions still alive, except an old one
/// that [`group_status`] shows in its slot ([`shown_instead`]).
fn retiring_status(
    sup: &Supervisor,
    now: Instant,
    members: &impl Fn(Pid) -> Vec<i32>,
) -> Vec<RetiringStatus> {
    sup.retiring()
        .filter(|r| r.child.state.pid().is_some() || r.child.leftover.is_some())
        .filter_map(|r| {
            let group = sup.groups().find(|g| g.spec.name == r.group);
            let slot = r.successor.and_then(|i| group?.children.get(i as usize));
            let in_slot = slot
                .and_then(|c| shown_instead(sup, &r.group, c))
                .is_some_and(|old| std::ptr::eq(old, &r.child));
            (!in_slot).then_some((r, group))
        })
        .map(|(r, group)| {
            let why = match (group, r.successor, r.blocks) {
                (None, ..) => "its group was removed".to_owned(),
                (Some(g), ..) if r.child.index >= g.spec.processes => {
                    format!("scaled away (processes = {})", g.spec.processes)
                }
                (Some(_), Some(_), _) => {
                    "replaced by a reload: serves until its replacement runs".to_owned()
                }
                (Some(_), None, Some(_)) => {
                    "replaced by a reload: its replacement starts once it has exited".to_owned()
                }
                (Some(_), None, None) => "replaced by a reload".to_owned(),
            };
            let uptime_ms = r
                .child
                .state
                .pid()
                .and(r.child.started)
                .map(|since| now.saturating_duration_since(since).as_millis() as u64);
            RetiringStatus {
                group: r.group.to_string(),
                index: r.child.index,
                pid: r.child.state.pid().map(|p| p.0),
                state: r.child.state.name().to_owned(),
                uptime_ms,
                why,
                leftovers: r
                    .child
                    .leftover
                    .map(|l| members(l.pgid))
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// One word for a group: the most urgent state among its children.
fn group_state(group: &Group, children: &[ChildStatus]) -> String {
    if children.is_empty() {
        return "idle".into();
    }
    if group.held && children.iter().all(|c| c.state == "stopped") {
        return "stopped".into();
    }
    const URGENCY: [&str; 8] = [
        "fatal", "backoff", "stopping", "waiting", "starting", "running", "exited", "stopped",
    ];
    URGENCY
        .iter()
        .find(|s| children.iter().any(|c| c.state == **s))
        .map_or("running".into(), |s| (*s).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_fields_added_later_default_when_absent() {
        let old = r#"{"name":"jobs","depth":1,"in_flight":0,"delivered":2,"acked":2,
            "redelivered":0,"dead_lettered":0}"#;
        let q: QueueStatus = serde_json::from_str(old).unwrap();
        assert_eq!((q.lost, q.refused, q.removed), (0, 0, false));
        assert_eq!((q.confirm, q.confirmed), (false, 0));
        assert_eq!((q.durable, q.stored, q.store_error), (false, 0, None));
    }

    #[test]
    fn the_table_shows_refused_and_removed_queues() {
        let queue = |name: &str, removed| QueueStatus {
            name: name.into(),
            depth: 0,
            in_flight: 1,
            delivered: 1,
            acked: 0,
            redelivered: 0,
            dead_lettered: 0,
            lost: 3,
            refused: 7,
            removed,
            confirm: false,
            confirmed: 0,
            durable: false,
            stored: 0,
            backend: "local".into(),
            backend_error: None,
            stream: None,
            url: None,
            store_error: None,
        };
        let status = Status {
            config_error: None,
            reload_reading_ms: None,
            groups: vec![],
            retiring: vec![],
            queues: vec![queue("jobs", false), queue("old", true)],
        };
        let table = status.render_table();
        assert!(table.contains("REFUSED"), "{table}");
        assert!(table.contains("old (removed)"), "{table}");
        let jobs = table.lines().find(|l| l.starts_with("jobs ")).unwrap();
        assert!(jobs.trim_end().ends_with("3       7       -"), "{jobs:?}");
    }

    #[test]
    fn retiring_processes_get_a_table_of_their_own_and_old_answers_parse() {
        let status = Status {
            config_error: None,
            reload_reading_ms: None,
            groups: vec![],
            retiring: vec![RetiringStatus {
                group: "web".into(),
                index: 3,
                pid: Some(4242),
                state: "stopping".into(),
                uptime_ms: Some(61_000),
                why: "scaled away (processes = 2)".into(),
                leftovers: vec![4250],
            }],
            queues: vec![],
        };
        let table = status.render_table();
        let line = table.lines().find(|l| l.starts_with("web[3]")).unwrap();
        assert!(table.contains("RETIRING"), "{table}");
        for part in [
            "4242",
            "stopping",
            "scaled away (processes = 2)",
            "leftovers: 4250",
        ] {
            assert!(line.contains(part), "{part} missing: {line:?}");
        }
        // A drover from before the field answers without it.
        let old: Status =
            serde_json::from_str(r#"{"config_error": null, "groups": [], "queues": []}"#).unwrap();
        assert!(old.retiring.is_empty());
        assert_eq!(old.reload_reading_ms, None);
    }
}
