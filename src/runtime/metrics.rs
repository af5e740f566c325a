//! `[supervisor] metrics = "HOST:PORT"`: Prometheus metrics at
//! `GET /metrics`, served by the event loop.
//!
//! The listener and its connections are non-blocking fds in the loop's
//! epoll set: a scrape is read, answered from a snapshot taken on the spot
//! (the same one `status` gives, plus counters the runtime keeps), and
//! closed. Nothing runs between scrapes: no timer, no thread, no wake-up.
//!
//! Bounds: at most [`MAX_CONNS`] connections at once (more are accepted
//! and closed at once), a request head of at most [`MAX_REQUEST`] bytes,
//! [`TIMEOUT`] to send it and to take the answer; an `accept` that fails
//! (out of fds) takes the listener out of the epoll set for [`BACKOFF`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

use crate::control::status::{LastExit, Status};

/// Scrapes served at once.
pub const MAX_CONNS: usize = 8;
/// The longest request head read.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time to send the request, and to take the answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed `accept`.
pub const BACKOFF: Duration = Duration::from_secs(1);

/// Connection tokens are `CONN_TOKENS + n`, apart from every other range.
const CONN_TOKENS: u64 = 1 << 47;

/// Counters the runtime keeps for the metrics (the rest comes from the
/// status snapshot).
#[derive(Debug, Default)]
pub struct Counters {
    /// Processes started, by group.
    pub starts: BTreeMap<String, u64>,
    /// Starts of a slot that had a process before, by group.
    pub restarts: BTreeMap<String, u64>,
    /// Slots that had a process, to tell a restart from a first start.
    pub seen: BTreeSet<(String, u32)>,
    /// Exits by group and how (`("web", "code", "1")`, `("web",
    /// "signal", "SIGKILL")`).
    pub exits: BTreeMap<(String, &'static str, String), u64>,
    /// Reloads by result: `applied`, `invalid`, `refused`.
    pub reloads: BTreeMap<&'static str, u64>,
}

impl Counters {
    /// A process started in slot `group[index]`.
    pub fn started(&mut self, group: &str, index: u32) {
        *self.starts.entry(group.to_owned()).or_default() += 1;
        if !self.seen.insert((group.to_owned(), index)) {
            *self.restarts.entry(group.to_owned()).or_default() += 1;
        }
    }

    /// A child of `group` exited.
    pub fn exited(&mut self, group: &str, exit: &LastExit) {
        let key = match exit {
            LastExit::Code(c) => (group.to_owned(), "code", c.to_string()),
            LastExit::Signal(s) => (group.to_owned(), "signal", s.clone()),
        };
        *self.exits.entry(key).or_default() += 1;
    }

    /// Forgets the groups a reload removed: their slots and their series
    /// (a group added back starts its counters at 0, which Prometheus
    /// reads as a counter reset). Kept, names that come and go with every
    /// deploy (`worker_v123`) would add series to every scrape forever.
    pub fn retain_groups(&mut self, keep: impl Fn(&str) -> bool) {
        self.seen.retain(|(g, _)| keep(g));
        self.starts.retain(|g, _| keep(g));
        self.restarts.retain(|g, _| keep(g));
        self.exits.retain(|(g, _, _), _| keep(g));
    }
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    /// The answer, once the request is in, and how much of it is out.
    output: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

/// The metrics endpoint; see the module documentation.
#[derive(Debug)]
pub struct Metrics {
    listener: TcpListener,
    token: u64,
    armed: bool,
    paused_until: Option<Instant>,
    conns: HashMap<u64, Conn>,
    next: u64,
}

/// What a request asked for, once its head is in.
enum Asked {
    Metrics,
    Other(&'static str),
}

impl Metrics {
    /// Binds `addr` (SO_REUSEADDR, as std does) and watches it on `token`.
    pub fn bind(addr: SocketAddr, epoll: &Epoll, token: u64) -> io::Result<Metrics> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        epoll.add(
            listener.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, token),
        )?;
        Ok(Metrics {
            listener,
            token,
            armed: true,
            paused_until: None,
            conns: HashMap::new(),
            next: 0,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn owns(&self, token: u64) -> bool {
        token == self.token || self.conns.contains_key(&token)
    }

    /// The earliest moment [`Self::on_deadline`] has work (none while
    /// nobody scrapes).
    pub fn deadline(&self) -> Option<Instant> {
        let conn = self.conns.values().map(|c| c.deadline).min();
        [conn, self.paused_until].into_iter().flatten().min()
    }

    /// Drops connections whose time is up; resumes accepting.
    pub fn on_deadline(&mut self, epoll: &Epoll, now: Instant) {
        let late: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            self.close(epoll, token);
        }
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
            self.arm(epoll);
        }
    }

    /// A loop event on one of our tokens. `render` makes the page when a
    /// scrape asks for it.
    pub fn on_event(
        &mut self,
        epoll: &Epoll,
        token: u64,
        now: Instant,
        render: impl FnOnce() -> String,
    ) {
        if token == self.token {
            self.accept(epoll, now);
            return;
        }
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.output.is_none() {
            match read_head(conn) {
                Ok(None) => return,
                Ok(Some(asked)) => {
                    let answer = match asked {
                        Asked::Metrics => response(
                            "200 OK",
                            "text/plain; version=0.0.4; charset=utf-8",
                            &render(),
                        ),
                        Asked::Other(status) => {
                            response(status, "text/plain; charset=utf-8", status)
                        }
                    };
                    conn.output = Some((answer, 0));
                    conn.deadline = now + TIMEOUT;
                    let writable = EpollEvent::new(EpollFlags::EPOLLOUT, token);
                    if epoll
                        .modify(conn.stream.as_fd(), &mut { writable })
                        .is_err()
                    {
                        return self.close(epoll, token);
                    }
                }
                Err(()) => return self.close(epoll, token),
            }
        }
        if let Some(conn) = self.conns.get_mut(&token)
            && write_out(conn)
        {
            self.close(epoll, token);
        }
    }

    fn accept(&mut self, epoll: &Epoll, now: Instant) {
        // Level-triggered: one accept per event, the listener comes back.
        let stream = match self.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => return,
            Err(e) => {
                tracing::warn!("metrics: cannot accept a scrape: {e}; pausing for {BACKOFF:?}");
                self.disarm(epoll);
                self.paused_until = Some(now + BACKOFF);
                return;
            }
        };
        if self.conns.len() >= MAX_CONNS {
            // The oldest connection that has not sent its request gives
            // way, so idle connections cannot keep scrapes out; when every
            // one is being answered, the new one is closed at once.
            let idle = self
                .conns
                .iter()
                .filter(|(_, c)| c.output.is_none())
                .map(|(t, _)| *t)
                .min();
            match idle {
                Some(oldest) => self.close(epoll, oldest),
                None => return,
            }
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        self.next += 1;
        let token = CONN_TOKENS + self.next;
        if epoll
            .add(stream.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
            .is_err()
        {
            return;
        }
        self.conns.insert(
            token,
            Conn {
                stream,
                input: Vec::new(),
                output: None,
                deadline: now + TIMEOUT,
            },
        );
    }

    fn close(&mut self, epoll: &Epoll, token: u64) {
        if let Some(conn) = self.conns.remove(&token) {
            let _ = epoll.delete(conn.stream.as_fd());
        }
        if self.paused_until.is_some() {
            // An fd is free again.
            self.paused_until = None;
            self.arm(epoll);
        }
    }

    fn arm(&mut self, epoll: &Epoll) {
        if !self.armed {
            let event = EpollEvent::new(EpollFlags::EPOLLIN, self.token);
            self.armed = epoll.add(self.listener.as_fd(), event).is_ok();
        }
    }

    fn disarm(&mut self, epoll: &Epoll) {
        if self.armed {
            let _ = epoll.delete(self.listener.as_fd());
            self.armed = false;
        }
    }
}

/// Reads what the client sent; `Ok(Some)` once the head is complete,
/// `Err` when the client went away or sent too much.
fn read_head(conn: &mut Conn) -> Result<Option<Asked>, ()> {
    let mut buf = [0u8; 2048];
    loop {
        match conn.stream.read(&mut buf) {
            Ok(0) => return Err(()),
            Ok(n) => {
                conn.input.extend_from_slice(&buf[..n]);
                if let Some(end) = find(&conn.input, b"\r\n\r\n").or(find(&conn.input, b"\n\n")) {
                    return Ok(Some(asked(&conn.input[..end])));
                }
                if conn.input.len() > MAX_REQUEST {
                    return Ok(Some(Asked::Other("431 Request Header Fields Too Large")));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(_) => return Err(()),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn asked(head: &[u8]) -> Asked {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next(), parts.next());
    match (method, target) {
        (Some(b"GET"), Some(t)) if t == b"/metrics" || t.starts_with(b"/metrics?") => {
            Asked::Metrics
        }
        (Some(b"GET"), Some(_)) => Asked::Other("404 Not Found"),
        _ => Asked::Other("405 Method Not Allowed"),
    }
}

/// Writes what the socket takes; true when done (or the client is gone).
fn write_out(conn: &mut Conn) -> bool {
    let Some((output, written)) = conn.output.as_mut() else {
        return false;
    };
    while *written < output.len() {
        match conn.stream.write(&output[*written..]) {
            Ok(0) => return true,
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
    true
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// What the page shows about drover itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Process {
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub start_time_seconds: f64,
}

impl Process {
    /// This process, read from /proc (zeros where it cannot be read).
    pub fn read(start_time_seconds: f64) -> Process {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as u64;
        let resident_pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count().saturating_sub(1) as u64)
            .unwrap_or(0);
        Process {
            resident_bytes: resident_pages * page,
            open_fds,
            start_time_seconds,
        }
    }
}

/// The states `status` shows, each reported (0 too) so series do not
/// come and go.
const STATES: [&str; 8] = [
    "starting", "running", "backoff", "waiting", "stopping", "stopped", "exited", "fatal",
];

/// The Prometheus text exposition (format 0.0.4) of `status`, `counters`
/// and `process`.
pub fn render(status: &Status, counters: &Counters, process: Process) -> String {
    let mut p = Page::default();
    p.family(
        "drover_children",
        "gauge",
        "Children of each group, by state.",
    );
    for g in &status.groups {
        for state in STATES {
            let n = g.children.iter().filter(|c| c.state == state).count();
            p.sample(&[("group", &g.name), ("state", state)], n as f64);
        }
    }
    p.family(
        "drover_children_ready",
        "gauge",
        "Children of each group that are ready.",
    );
    for g in &status.groups {
        let n = g.children.iter().filter(|c| c.ready).count();
        p.sample(&[("group", &g.name)], n as f64);
    }
    p.family(
        "drover_group_processes",
        "gauge",
        "Children each group is configured to run.",
    );
    for g in &status.groups {
        p.sample(&[("group", &g.name)], f64::from(g.processes));
    }
    p.family(
        "drover_child_starts_total",
        "counter",
        "Processes started, by group.",
    );
    for (group, n) in &counters.starts {
        p.sample(&[("group", group)], *n as f64);
    }
    p.family(
        "drover_child_restarts_total",
        "counter",
        "Processes started in a slot that had one before, by group.",
    );
    for (group, n) in &counters.restarts {
        p.sample(&[("group", group)], *n as f64);
    }
    p.family(
        "drover_child_exits_total",
        "counter",
        "Child exits, by group and exit code or signal.",
    );
    for ((group, how, value), n) in &counters.exits {
        p.sample(&[("group", group), (how, value)], *n as f64);
    }
    p.family(
        "drover_reloads_total",
        "counter",
        "Config reloads, by result (applied, invalid, refused).",
    );
    for result in ["applied", "invalid", "refused"] {
        let n = counters.reloads.get(result).copied().unwrap_or(0);
        p.sample(&[("result", result)], n as f64);
    }
    p.family(
        "drover_config_error",
        "gauge",
        "1 while the config on disk is invalid (the previous one runs).",
    );
    p.sample(&[], f64::from(u8::from(status.config_error.is_some())));
    p.family(
        "drover_reload_reading_seconds",
        "gauge",
        "How long a reload's config has been being read (0 when none is): a read that hangs on a user lookup or a file system holds the reload up.",
    );
    p.sample(
        &[],
        status
            .reload_reading_ms
            .map_or(0.0, |ms| ms as f64 / 1000.0),
    );

    type QueueValue = fn(&crate::control::status::QueueStatus) -> f64;
    let queue_families: [(&str, &str, &str, QueueValue); 13] = [
        (
            "drover_queue_depth",
            "gauge",
            "Messages waiting in the queue.",
            |q| q.depth as f64,
        ),
        (
            "drover_queue_in_flight",
            "gauge",
            "Messages handed to consumers and not settled.",
            |q| q.in_flight as f64,
        ),
        (
            "drover_queue_delivered_total",
            "counter",
            "Messages handed to consumers.",
            |q| q.delivered as f64,
        ),
        (
            "drover_queue_acked_total",
            "counter",
            "Messages acked by consumers.",
            |q| q.acked as f64,
        ),
        (
            "drover_queue_redelivered_total",
            "counter",
            "Messages delivered again.",
            |q| q.redelivered as f64,
        ),
        (
            "drover_queue_dead_lettered_total",
            "counter",
            "Messages dead-lettered.",
            |q| q.dead_lettered as f64,
        ),
        (
            "drover_queue_lost_total",
            "counter",
            "At-most-once messages lost with their consumer.",
            |q| q.lost as f64,
        ),
        (
            "drover_queue_refused_total",
            "counter",
            "Packets refused (empty, oversized, bogus).",
            |q| q.refused as f64,
        ),
        (
            "drover_queue_confirmed_total",
            "counter",
            "ok replies sent to producers.",
            |q| q.confirmed as f64,
        ),
        (
            "drover_queue_stored",
            "gauge",
            "Messages in the store (durable queues).",
            |q| q.stored as f64,
        ),
        (
            "drover_queue_store_error",
            "gauge",
            "1 while the store cannot commit or read.",
            |q| f64::from(u8::from(q.store_error.is_some())),
        ),
        (
            "drover_queue_backend_error",
            "gauge",
            "1 while Redis cannot be reached or refuses.",
            |q| f64::from(u8::from(q.backend_error.is_some())),
        ),
        (
            "drover_queue_durable",
            "gauge",
            "1 for a durable queue.",
            |q| f64::from(u8::from(q.durable)),
        ),
    ];
    for (name, kind, help, value) in queue_families {
        p.family(name, kind, help);
        for q in &status.queues {
            p.sample(&[("queue", &q.name), ("backend", &q.backend)], value(q));
        }
    }
    p.family(
        "drover_resident_memory_bytes",
        "gauge",
        "drover's resident memory (RSS).",
    );
    p.sample(&[], process.resident_bytes as f64);
    p.family(
        "drover_open_fds",
        "gauge",
        "File descriptors drover has open.",
    );
    p.sample(&[], process.open_fds as f64);
    p.family(
        "drover_start_time_seconds",
        "gauge",
        "When drover started, in seconds since the Unix epoch.",
    );
    p.sample(&[], process.start_time_seconds);
    p.out
}

/// Builds the page, a family at a time.
#[derive(Default)]
struct Page {
    out: String,
    name: String,
}

impl Page {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self.name = name.to_owned();
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(&self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_samples_follow_their_family() {
        let mut p = Page::default();
        p.family("drover_x", "gauge", "X.");
        p.sample(&[("a", "q\"b\\c\nd")], 1.0);
        p.sample(&[], 2.5);
        assert_eq!(
            p.out,
            "# HELP drover_x X.\n# TYPE drover_x gauge\ndrover_x{a=\"q\\\"b\\\\c\\nd\"} 1\ndrover_x 2.5\n"
        );
    }

    #[test]
    fn requests_are_routed() {
        assert!(matches!(
            asked(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Asked::Metrics
        ));
        assert!(matches!(
            asked(b"GET /metrics?x=1 HTTP/1.0"),
            Asked::Metrics
        ));
        assert!(matches!(asked(b"GET / HTTP/1.1"), Asked::Other(s) if s.starts_with("404")));
        assert!(
            matches!(asked(b"POST /metrics HTTP/1.1"), Asked::Other(s) if s.starts_with("405"))
        );
        assert!(matches!(asked(b"\xff\xfe"), Asked::Other(s) if s.starts_with("405")));
    }

    #[test]
    fn restarts_are_starts_of_a_slot_seen_before() {
        let mut c = Counters::default();
        c.started("web", 0);
        c.started("web", 1);
        c.started("web", 0);
        assert_eq!(c.starts["web"], 3);
        assert_eq!(c.restarts["web"], 1);
        c.exited("web", &LastExit::Code(3));
        c.exited("web", &LastExit::Signal("SIGKILL".into()));
        c.exited("web", &LastExit::Code(3));
        assert_eq!(c.exits[&("web".into(), "code", "3".into())], 2);
    }
}
