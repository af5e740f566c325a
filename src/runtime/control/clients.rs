//! The server side of the control socket in the event loop.
//!
//! [`Clients`] owns the listener and every accepted connection, with their
//! deadlines and the accept back-off. The runtime forwards it the loop
//! events of its tokens, gets complete requests back, and hands it the
//! answers; it also waits for [`Clients::deadline`].
//!
//! Bounds, so that no client can exhaust drover:
//!
//! - At most [`MAX_CLIENTS`] ordinary connections. Beyond them,
//!   [`RESERVED`] more are accepted to serve `status` or `shutdown` only;
//!   any other request there is answered "busy". When a reserve slot is
//!   needed and both are held by connections that have not sent their
//!   request yet, the older one is turned away, so a flood of idle
//!   connections cannot keep `status` out: its line is already waiting
//!   when it is accepted. When nothing can be accepted, the listener
//!   leaves the epoll set and connections wait in the kernel's backlog;
//!   it comes back when a connection closes.
//! - Connections never take the last [`FD_HEADROOM`] file descriptors:
//!   Linux hands out the lowest free fd, so an accepted fd numbered `n`
//!   means the `n` below it are all in use. One that high is only a reserve
//!   connection; the fds above are left for restarting children.
//! - A request line is at most [`super::MAX_REQUEST`] bytes and must be complete
//!   within [`REQUEST_TIMEOUT`] of the accept — whether the client sent
//!   part of it or nothing at all, and however slowly it trickles, a slot
//!   is held that long at most. A response not taken within
//!   [`WRITE_TIMEOUT`] is dropped with its connection, and so is a
//!   `logs -f` follower that takes none of its pending lines for that long
//!   (one that has nothing pending stays as long as it likes).
//! - An answer the runtime puts off (a reload waiting for its config to be
//!   read) is waited for [`ANSWER_TIMEOUT`] at most; then the client is
//!   told so and closed. Meanwhile the connection is watched only for its
//!   client going away.
//! - Answers waiting for their clients hold at most [`PENDING_MAX`] bytes
//!   before a `logs` request is refused as busy (a `logs` answer can be
//!   every group's kept lines, 1 MiB each; sixty-four clients that never
//!   read would otherwise hold sixty-four copies).
//! - When `accept` fails (out of fds, or anything else) the listener
//!   leaves the epoll set for a back-off that doubles from
//!   [`BACKOFF_MIN`] to [`BACKOFF_MAX`], or until a connection closes and
//!   frees an fd: never a spin on a level-triggered listener that stays
//!   readable. The log line about it is rate limited.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

use super::conn::{Conn, Incoming};
use super::{Listener, Request, Response};
use crate::config::names::GroupName;
use crate::text::ratelimit::RateLimit;

/// Ordinary client connections open at once.
pub const MAX_CLIENTS: usize = 64;
/// Connections beyond [`MAX_CLIENTS`] kept for `status` and `shutdown`.
pub const RESERVED: usize = 2;
/// How long a client has, from the accept, to send its whole request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to take its response; how long a follower may
/// take nothing of its pending lines.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for an answer the runtime puts off (a reload
/// whose config is still being read) before it is told so and closed:
/// within the command line client's own 30 s.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(25);
/// Bytes of answers waiting for their clients beyond which `logs` requests
/// are refused as busy.
pub const PENDING_MAX: usize = 64 << 20;
/// File descriptors under the limit that ordinary connections never take.
pub const FD_HEADROOM: u64 = 16;
/// The first pause after `accept` fails.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest pause after repeated `accept` failures.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Connection tokens are `CONN_TOKENS + n`: a range the runtime's own
/// token counter (which counts up from a handful) never reaches.
const CONN_TOKENS: u64 = 1 << 48;

const LOG_ACCEPT: &str = "accept";
const LOG_FULL: &str = "full";

/// Which kind of slot a connection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Ordinary,
    /// For `status` and `shutdown` only.
    Reserve,
}

#[derive(Debug)]
struct Entry {
    conn: Conn,
    slot: Slot,
    deadline: Instant,
    /// A follower watched for EPOLLOUT too (it has output pending).
    out_watched: bool,
    /// For a follower: what the client had taken when its deadline was
    /// set; taking more moves the deadline.
    sent_at_deadline: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Clients {
    listener: Listener,
    /// The listener's loop token.
    token: u64,
    conns: HashMap<u64, Entry>,
    /// Every connection's deadline, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    next: u64,
    /// Whether the listener is in the epoll set.
    armed: bool,
    /// While accepting is paused after a failure: when it resumes.
    paused_until: Option<Instant>,
    /// The next pause after a failure.
    backoff: Duration,
    log: RateLimit,
    /// Connections following logs (`drover logs -f`).
    followers: usize,
}

impl Clients {
    /// Starts listening: `token` is the listener's loop token.
    pub fn new(listener: Listener, epoll: &Epoll, token: u64) -> io::Result<Clients> {
        epoll.add(listener.socket.as_fd(), readable(token))?;
        Ok(Clients {
            listener,
            token,
            conns: HashMap::new(),
            deadlines: BTreeSet::new(),
            next: 0,
            armed: true,
            paused_until: None,
            backoff: BACKOFF_MIN,
            followers: 0,
            // One line per burst; the summary says how many followed.
            log: RateLimit::new(1, crate::text::ratelimit::DEFAULT_WINDOW),
        })
    }

    #[cfg(test)]
    pub fn listener(&self) -> &Listener {
        &self.listener
    }

    /// Whether `token` is the listener's or a connection's.
    pub fn owns(&self, token: u64) -> bool {
        token == self.token || self.conns.contains_key(&token)
    }

    /// Open connections.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A loop event for one of [`Self::owns`]'s tokens. Returns a request
    /// for the runtime to handle; its answer goes to [`Self::respond`] with
    /// the connection's token, at once or, after [`Self::defer`], later.
    pub fn on_event(
        &mut self,
        epoll: &Epoll,
        token: u64,
        flags: EpollFlags,
        now: Instant,
    ) -> Option<(u64, Request)> {
        let request = if token == self.token {
            // An event from before the listener left the epoll set (earlier
            // in the same batch) is not a reason to accept.
            if !self.armed {
                return None;
            }
            self.on_listener(epoll, now)
        } else {
            self.on_conn(epoll, token, flags, now)
        };
        // A connection that stopped reading can no longer give way.
        self.refresh_listener(epoll, now);
        request
    }

    fn on_conn(
        &mut self,
        epoll: &Epoll,
        token: u64,
        flags: EpollFlags,
        now: Instant,
    ) -> Option<(u64, Request)> {
        let entry = self.conns.get_mut(&token)?;
        if entry.conn.is_reading() {
            return self.read(epoll, token, now);
        }
        if entry.conn.is_handling() {
            // A put-off answer: only the client going away is watched.
            if flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
                self.close(epoll, token, now);
            }
            return None;
        }
        if entry.conn.is_following() {
            let gone = flags
                .intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
                && entry.conn.peer_gone();
            if gone || (flags.contains(EpollFlags::EPOLLOUT) && entry.conn.flush()) {
                self.close(epoll, token, now);
            } else {
                self.watch_follower(epoll, token, now);
            }
            return None;
        }
        if flags.intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
            && entry.conn.flush()
        {
            self.close(epoll, token, now);
        }
        None
    }

    /// Sends the runtime's answer to the request that came from `token`.
    pub fn respond(&mut self, epoll: &Epoll, token: u64, response: &Response, now: Instant) {
        self.respond_bytes(epoll, token, response.to_line(), now);
    }

    /// The answer to the request that came from `token` comes later (with
    /// [`Self::respond`]), within [`ANSWER_TIMEOUT`]. Until then nothing
    /// more is read from the connection: it is watched only for hang-ups.
    pub fn defer(&mut self, epoll: &Epoll, token: u64, now: Instant) {
        let Some(entry) = self.conns.get_mut(&token) else {
            return;
        };
        let mut none = EpollEvent::new(EpollFlags::empty(), token);
        if epoll.modify(entry.conn.stream.as_fd(), &mut none).is_err() {
            return self.close(epoll, token, now);
        }
        self.set_deadline(token, now + ANSWER_TIMEOUT);
    }

    /// Sends `answer` (a response line and what follows it) to the
    /// request that came from `token`.
    pub fn respond_bytes(&mut self, epoll: &Epoll, token: u64, answer: Vec<u8>, now: Instant) {
        let Some(entry) = self.conns.get_mut(&token) else {
            return;
        };
        entry.conn.respond_bytes(answer);
        if entry.conn.flush() {
            return self.close(epoll, token, now);
        }
        let writable = EpollEvent::new(EpollFlags::EPOLLOUT, token);
        if epoll
            .modify(entry.conn.stream.as_fd(), &mut { writable })
            .is_err()
        {
            return self.close(epoll, token, now);
        }
        self.set_deadline(token, now + WRITE_TIMEOUT);
    }

    /// Makes the connection of `token` a follower of `groups` (all when
    /// empty): `first` goes out, then every chunk [`Self::broadcast`] gets
    /// for those groups, for as long as the client keeps up and stays.
    pub fn follow(
        &mut self,
        epoll: &Epoll,
        token: u64,
        first: Vec<u8>,
        groups: Vec<String>,
        now: Instant,
    ) {
        let Some(entry) = self.conns.get_mut(&token) else {
            return;
        };
        entry.conn.follow(first, groups);
        self.followers += 1;
        // A follower stays until it goes away, falls behind, or takes
        // nothing for too long (see `watch_follower`).
        self.deadlines.remove(&(entry.deadline, token));
        if entry.conn.flush() {
            return self.close(epoll, token, now);
        }
        self.watch_follower(epoll, token, now);
    }

    /// Whether any connection follows logs.
    pub fn has_followers(&self) -> bool {
        self.followers > 0
    }

    /// Bytes of answers (and followers' lines) their clients have not
    /// taken yet.
    pub fn pending_bytes(&self) -> usize {
        self.conns.values().map(|e| e.conn.pending()).sum()
    }

    /// Whether a large answer (`logs`) may be queued now: not while
    /// [`PENDING_MAX`] bytes already wait for clients that do not read.
    pub fn has_room_for_logs(&self) -> bool {
        self.pending_bytes() < PENDING_MAX
    }

    /// New lines, by group, for the followers.
    pub fn broadcast(&mut self, epoll: &Epoll, chunks: &[(GroupName, Vec<u8>)], now: Instant) {
        if self.followers == 0 || chunks.is_empty() {
            return;
        }
        let tokens: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, e)| e.conn.is_following())
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            let Some(entry) = self.conns.get_mut(&token) else {
                continue;
            };
            let mut added = false;
            for (group, chunk) in chunks {
                added |= entry.conn.push_lines(group.as_str(), chunk);
            }
            if !added {
                continue;
            }
            if entry.conn.flush() {
                self.close(epoll, token, now);
            } else {
                self.watch_follower(epoll, token, now);
            }
        }
    }

    /// A follower is watched for its client going away, and for room to
    /// write while it has output. While it has output it has a deadline,
    /// moved whenever the client takes some: a client that stopped reading
    /// is closed after [`WRITE_TIMEOUT`], before it is [`super::conn`]'s
    /// 1 MiB behind (which a quiet group may never fill).
    fn watch_follower(&mut self, epoll: &Epoll, token: u64, now: Instant) {
        let Some(entry) = self.conns.get_mut(&token) else {
            return;
        };
        let out = entry.conn.has_output();
        let armed = self.deadlines.contains(&(entry.deadline, token));
        if !out {
            self.deadlines.remove(&(entry.deadline, token));
        } else if !armed || entry.conn.sent() != entry.sent_at_deadline {
            entry.sent_at_deadline = entry.conn.sent();
            move_deadline(&mut self.deadlines, entry, token, now + WRITE_TIMEOUT);
        }
        if out == entry.out_watched {
            return;
        }
        entry.out_watched = out;
        let mut flags = EpollFlags::EPOLLIN;
        if out {
            flags |= EpollFlags::EPOLLOUT;
        }
        let mut event = EpollEvent::new(flags, token);
        if epoll.modify(entry.conn.stream.as_fd(), &mut event).is_err() {
            self.close(epoll, token, now);
        }
    }

    /// The earliest moment [`Self::on_deadline`] has work.
    pub fn deadline(&self) -> Option<Instant> {
        let conn = self.deadlines.first().map(|(at, _)| *at);
        [conn, self.paused_until, self.log.deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Closes connections whose time is up, resumes accepting after a
    /// back-off, and logs what the rate limit held back.
    pub fn on_deadline(&mut self, epoll: &Epoll, now: Instant) {
        while let Some(&(at, token)) = self.deadlines.first() {
            if at > now {
                break;
            }
            let Some(entry) = self.remove(epoll, token, now) else {
                self.deadlines.pop_first();
                continue;
            };
            if entry.conn.is_reading() {
                let secs = REQUEST_TIMEOUT.as_secs();
                tracing::debug!("control socket: a client sent no complete request in {secs}s");
                entry.conn.farewell(&Response::error(format!(
                    "request: no complete line within {secs}s; closing"
                )));
            } else if entry.conn.is_handling() {
                let secs = ANSWER_TIMEOUT.as_secs();
                tracing::debug!("control socket: no answer for a client within {secs}s");
                entry.conn.farewell(&Response::error(format!(
                    "no answer within {secs}s: drover is still reading the config (a user or \
                     group lookup or a file system may hang); a reload is applied once it is \
                     read, see `drover status` and drover's log"
                )));
            } else if entry.conn.is_following() {
                let secs = WRITE_TIMEOUT.as_secs();
                tracing::debug!(
                    "control socket: a logs -f client took none of its new lines in {secs}s; closing"
                );
            } else {
                let secs = WRITE_TIMEOUT.as_secs();
                tracing::debug!("control socket: a client did not take its answer in {secs}s");
            }
        }
        if self.paused_until.is_some_and(|at| at <= now) {
            self.paused_until = None;
        }
        for held in self.log.due(now) {
            let what = match held.key.as_str() {
                LOG_ACCEPT => "accept failures",
                _ => "clients limited to status and shutdown (all slots taken)",
            };
            tracing::warn!(
                "control socket: {} more {what} in the last {}s",
                held.count,
                held.window.as_secs()
            );
        }
        self.refresh_listener(epoll, now);
    }

    /// The listener is readable: accepts one connection (the level-triggered
    /// listener comes back while more wait), and reads its request at once,
    /// as it may be there already.
    fn on_listener(&mut self, epoll: &Epoll, now: Instant) -> Option<(u64, Request)> {
        if self.reserve_full() {
            // A reserve connection whose request arrived is served before
            // anything new can turn it away.
            for token in self.reserve_reading() {
                if let Some(request) = self.read(epoll, token, now) {
                    return Some(request);
                }
            }
        }
        let stream = match self.listener.socket.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                self.accept_failed(epoll, &e, now);
                return None;
            }
        };
        self.backoff = BACKOFF_MIN;
        let token = self.admit(epoll, stream, now)?;
        self.read(epoll, token, now)
    }

    /// Gives a new connection a slot, or turns it away.
    fn admit(&mut self, epoll: &Epoll, stream: UnixStream, now: Instant) -> Option<u64> {
        let Some(slot) = self.slot_for(&stream) else {
            self.turn_away(stream, now);
            return None;
        };
        if slot == Slot::Reserve {
            let connected = self.conns.len();
            self.warn(
                LOG_FULL,
                now,
                &format!("{connected} clients connected; serving only status and shutdown"),
            );
        }
        if slot == Slot::Reserve && self.reserve_full() {
            // Only reached with a reserve connection still reading (see
            // `slot_for`): the oldest gives way.
            if let Some(&oldest) = self.reserve_reading().first() {
                self.evict(epoll, oldest, now);
            }
        }
        let conn = Conn::new(stream).ok()?;
        self.next += 1;
        let token = CONN_TOKENS + self.next;
        epoll
            .add(conn.stream.as_fd(), readable(token))
            .inspect_err(|e| self.warn(LOG_ACCEPT, now, &format!("cannot watch a client: {e}")))
            .ok()?;
        let deadline = now + REQUEST_TIMEOUT;
        self.conns.insert(
            token,
            Entry {
                conn,
                slot,
                deadline,
                out_watched: false,
                sent_at_deadline: 0,
            },
        );
        self.deadlines.insert((deadline, token));
        Some(token)
    }

    /// The slot a new connection gets; `None` when there is none.
    fn slot_for(&self, stream: &UnixStream) -> Option<Slot> {
        let ordinary = self.count(Slot::Ordinary);
        if ordinary < MAX_CLIENTS && !near_fd_limit(stream) {
            return Some(Slot::Ordinary);
        }
        if !self.reserve_full() || !self.reserve_reading().is_empty() {
            return Some(Slot::Reserve);
        }
        None
    }

    /// Reads a connection; a request the runtime should handle, if one is
    /// complete and allowed in its slot.
    fn read(&mut self, epoll: &Epoll, token: u64, now: Instant) -> Option<(u64, Request)> {
        let entry = self.conns.get_mut(&token)?;
        let request = match entry.conn.read_request() {
            Incoming::Pending => return None,
            Incoming::Closed => {
                self.close(epoll, token, now);
                return None;
            }
            Incoming::Request(Err(problem)) => {
                self.respond(epoll, token, &Response::error(problem), now);
                return None;
            }
            Incoming::Request(Ok(request)) => request,
        };
        let allowed = matches!(request, Request::Status | Request::Shutdown);
        if entry.slot == Slot::Reserve && !allowed {
            self.respond(epoll, token, &busy(), now);
            return None;
        }
        Some((token, request))
    }

    fn accept_failed(&mut self, epoll: &Epoll, error: &io::Error, now: Instant) {
        match error.kind() {
            // Nothing waits, or a client gave up while it waited.
            io::ErrorKind::WouldBlock
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted => return,
            _ => {}
        }
        // EMFILE, ENFILE, ENOBUFS, ENOMEM — or anything else: the listener
        // stays readable, so trying again at once would spin.
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.paused_until = Some(now + pause);
        let ms = pause.as_millis();
        self.warn(
            LOG_ACCEPT,
            now,
            &format!("cannot accept a client: {error}; not accepting for {ms}ms"),
        );
        self.refresh_listener(epoll, now);
    }

    /// Refuses a connection there is no slot for.
    fn turn_away(&mut self, stream: UnixStream, now: Instant) {
        let connected = self.conns.len();
        self.warn(
            LOG_FULL,
            now,
            &format!("{connected} clients connected; turning more away"),
        );
        if let Ok(conn) = Conn::new(stream) {
            conn.farewell(&busy());
        }
    }

    fn evict(&mut self, epoll: &Epoll, token: u64, now: Instant) {
        if let Some(entry) = self.remove(epoll, token, now) {
            entry.conn.farewell(&busy());
        }
    }

    fn close(&mut self, epoll: &Epoll, token: u64, now: Instant) {
        self.remove(epoll, token, now);
    }

    fn remove(&mut self, epoll: &Epoll, token: u64, now: Instant) -> Option<Entry> {
        let entry = self.conns.remove(&token)?;
        self.deadlines.remove(&(entry.deadline, token));
        if entry.conn.is_following() {
            self.followers -= 1;
        }
        let _ = epoll.delete(entry.conn.stream.as_fd());
        // An fd of ours is free again: worth accepting, even mid back-off.
        self.paused_until = None;
        self.refresh_listener(epoll, now);
        Some(entry)
    }

    fn set_deadline(&mut self, token: u64, deadline: Instant) {
        if let Some(entry) = self.conns.get_mut(&token) {
            move_deadline(&mut self.deadlines, entry, token, deadline);
        }
    }

    /// Puts the listener in the epoll set, or takes it out, as accepting
    /// makes sense or not.
    fn refresh_listener(&mut self, epoll: &Epoll, now: Instant) {
        let room = self.count(Slot::Ordinary) < MAX_CLIENTS
            || !self.reserve_full()
            || !self.reserve_reading().is_empty();
        let want = room && self.paused_until.is_none();
        if want == self.armed {
            return;
        }
        let fd = self.listener.socket.as_fd();
        let done = if want {
            epoll.add(fd, readable(self.token))
        } else {
            epoll.delete(fd)
        };
        match done {
            Ok(()) => self.armed = want,
            Err(e) => {
                // Try again after a pause rather than not at all.
                self.paused_until = Some(now + BACKOFF_MAX);
                self.warn(
                    LOG_ACCEPT,
                    now,
                    &format!("cannot change the epoll set: {e}"),
                );
            }
        }
    }

    fn count(&self, slot: Slot) -> usize {
        self.conns.values().filter(|e| e.slot == slot).count()
    }

    fn reserve_full(&self) -> bool {
        self.count(Slot::Reserve) >= RESERVED
    }

    /// Reserve connections still reading their request, oldest first.
    fn reserve_reading(&self) -> Vec<u64> {
        let mut tokens: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, e)| e.slot == Slot::Reserve && e.conn.is_reading())
            .map(|(t, _)| *t)
            .collect();
        tokens.sort_unstable();
        tokens
    }

    fn warn(&mut self, key: &str, now: Instant, line: &str) {
        if self.log.allow(key, now) {
            tracing::warn!("control socket: {line}");
        }
    }
}

/// Gives the connection `token` (its `entry`) the deadline `at`, in the
/// entry and in the ordered set.
fn move_deadline(
    deadlines: &mut BTreeSet<(Instant, u64)>,
    entry: &mut Entry,
    token: u64,
    at: Instant,
) {
    deadlines.remove(&(entry.deadline, token));
    entry.deadline = at;
    deadlines.insert((at, token));
}

fn readable(token: u64) -> EpollEvent {
    EpollEvent::new(EpollFlags::EPOLLIN, token)
}

fn busy() -> Response {
    Response::error(format!(
        "busy: {MAX_CLIENTS} clients connected; only status and shutdown are served now, try again"
    ))
}

/// Whether `stream`'s fd is among the last [`FD_HEADROOM`] under the
/// open-file limit (which is read each time: it can be changed from outside).
fn near_fd_limit(stream: &UnixStream) -> bool {
    use nix::sys::resource::{Resource, getrlimit};
    let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return false;
    };
    let fd = u64::try_from(stream.as_raw_fd()).unwrap_or(u64::MAX);
    fd.saturating_add(FD_HEADROOM) >= soft
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;
    use nix::sys::epoll::EpollCreateFlags;
    use std::io::{Read as _, Write as _};
    use std::path::PathBuf;

    const LISTENER: u64 = 1;

    /// A listener in a temp dir, with the loop driven by hand and a fake clock.
    struct Fixture {
        dir: PathBuf,
        epoll: Epoll,
        clients: Clients,
        t0: Instant,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            let dir =
                std::env::temp_dir().join(format!("drover-clients-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let listener = Listener::bind(&dir.join("s")).unwrap();
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
            let clients = Clients::new(listener, &epoll, LISTENER).unwrap();
            Fixture {
                dir,
                epoll,
                clients,
                t0: Instant::now(),
            }
        }

        fn connect(&self) -> UnixStream {
            UnixStream::connect(self.clients.listener().path()).unwrap()
        }

        /// One listener event, at `t0 + secs`.
        fn accept(&mut self, secs: f64) -> Option<(u64, Request)> {
            let now = self.t0 + Duration::from_secs_f64(secs);
            self.clients
                .on_event(&self.epoll, LISTENER, EpollFlags::EPOLLIN, now)
        }

        fn event(&mut self, token: u64, flags: EpollFlags) -> Option<(u64, Request)> {
            self.clients.on_event(&self.epoll, token, flags, self.t0)
        }

        /// Connects and accepts one idle client.
        fn idle(&mut self) -> UnixStream {
            let client = self.connect();
            assert_eq!(self.accept(0.0), None);
            client
        }

        fn slots(&self, slot: Slot) -> usize {
            self.clients.count(slot)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn answer(client: &mut UnixStream) -> Response {
        let mut line = Vec::new();
        client.read_to_end(&mut line).unwrap();
        assert!(
            line.ends_with(b"\n"),
            "{:?}",
            String::from_utf8_lossy(&line)
        );
        serde_json::from_slice(&line).unwrap()
    }

    fn is_busy(response: &Response) -> bool {
        !response.ok
            && response
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with("busy: "))
    }

    #[test]
    fn a_request_is_handed_over_answered_and_closed() {
        let mut f = Fixture::new("serve");
        let mut client = f.connect();
        client.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        let (token, request) = f.accept(0.0).expect("read at once after the accept");
        assert_eq!(request, Request::Status);
        f.clients
            .respond(&f.epoll, token, &Response::ok("fine"), f.t0);
        assert_eq!(answer(&mut client), Response::ok("fine"));
        assert!(f.clients.is_empty());
        assert_eq!(f.clients.deadline(), None);
    }

    #[test]
    fn a_put_off_answer_is_sent_later_and_only_a_hang_up_is_watched_meanwhile() {
        let mut f = Fixture::new("defer");
        let mut client = f.connect();
        // Bytes after the request line: a level-triggered EPOLLIN for them
        // would wake the loop again and again while the answer waits.
        client.write_all(b"{\"cmd\":\"reload\"}\nmore").unwrap();
        let (token, request) = f.accept(0.0).expect("read at once");
        assert!(matches!(request, Request::Reload { .. }));
        f.clients.defer(&f.epoll, token, f.t0);
        let mut events = [EpollEvent::empty(); 4];
        let n = f.epoll.wait(&mut events, 0u8).unwrap();
        assert_eq!(n, 0, "nothing to wake for while the answer waits");
        // Past the request deadline, within the answer's.
        assert_eq!(f.clients.deadline(), Some(f.t0 + ANSWER_TIMEOUT));
        f.clients
            .on_deadline(&f.epoll, f.t0 + REQUEST_TIMEOUT + Duration::from_secs(1));
        f.clients
            .respond(&f.epoll, token, &Response::ok("reloaded"), f.t0);
        assert_eq!(answer(&mut client), Response::ok("reloaded"));
        assert!(f.clients.is_empty());

        // A client that goes away while its answer waits is closed then.
        let client = f.connect();
        (&client).write_all(b"{\"cmd\":\"reload\"}\n").unwrap();
        let (token, _) = f.accept(0.0).expect("read at once");
        f.clients.defer(&f.epoll, token, f.t0);
        drop(client);
        let n = f.epoll.wait(&mut events, 1000u16).unwrap();
        assert_eq!(n, 1);
        assert!(events[0].events().contains(EpollFlags::EPOLLHUP));
        assert_eq!(f.event(token, events[0].events()), None);
        assert!(f.clients.is_empty());
        // Its answer, when it comes, goes nowhere.
        f.clients
            .respond(&f.epoll, token, &Response::ok("reloaded"), f.t0);
        assert!(f.clients.is_empty());
    }

    #[test]
    fn a_put_off_answer_that_does_not_come_in_time_is_explained() {
        let mut f = Fixture::new("defer-late");
        let mut client = f.connect();
        client.write_all(b"{\"cmd\":\"reload\"}\n").unwrap();
        let (token, _) = f.accept(0.0).expect("read at once");
        f.clients.defer(&f.epoll, token, f.t0);
        f.clients.on_deadline(&f.epoll, f.t0 + ANSWER_TIMEOUT);
        let response = answer(&mut client);
        assert!(!response.ok);
        let message = response.message.unwrap();
        assert!(
            message.starts_with("no answer within 25s: drover is still reading the config"),
            "{message}"
        );
        assert!(f.clients.is_empty());
        assert_eq!(f.clients.deadline(), None);
    }

    #[test]
    fn a_bad_line_is_answered_by_the_socket_layer() {
        let mut f = Fixture::new("bad");
        let mut client = f.connect();
        client.write_all(b"[1,2]\nmore garbage").unwrap();
        assert_eq!(f.accept(0.0), None);
        let response = answer(&mut client);
        assert!(!response.ok);
        assert!(response.message.unwrap().starts_with("request: "));
        assert!(f.clients.is_empty());
    }

    #[test]
    fn beyond_64_only_status_and_shutdown_are_served_and_idle_ones_give_way() {
        let mut f = Fixture::new("reserve");
        let _ordinary: Vec<UnixStream> = (0..MAX_CLIENTS).map(|_| f.idle()).collect();
        assert_eq!(f.slots(Slot::Ordinary), MAX_CLIENTS);
        assert_eq!(f.slots(Slot::Reserve), 0);

        // A reserve connection asking for anything else is turned away.
        let mut restart = f.connect();
        restart
            .write_all(b"{\"cmd\":\"restart\",\"group\":\"a\"}\n")
            .unwrap();
        assert_eq!(f.accept(0.0), None);
        assert!(is_busy(&answer(&mut restart)));

        // Two idle reserve connections; a third makes the older give way.
        let mut first = f.idle();
        let _second = f.idle();
        assert_eq!(f.slots(Slot::Reserve), RESERVED);
        assert!(f.clients.armed, "idle reserve connections can give way");
        let mut status = f.connect();
        status.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        let (token, request) = f.accept(0.0).expect("status is served");
        assert_eq!(request, Request::Status);
        assert!(is_busy(&answer(&mut first)), "the oldest idle one gave way");
        f.clients
            .respond(&f.epoll, token, &Response::ok("status"), f.t0);
        assert_eq!(answer(&mut status), Response::ok("status"));
        assert_eq!(f.slots(Slot::Ordinary), MAX_CLIENTS);
    }

    #[test]
    fn a_reserve_request_that_arrived_is_served_before_a_new_client_is_accepted() {
        let mut f = Fixture::new("order");
        let _ordinary: Vec<UnixStream> = (0..MAX_CLIENTS).map(|_| f.idle()).collect();
        let mut early = f.idle();
        let _other = f.idle();
        // Its line arrives, but the listener's event comes first.
        early.write_all(b"{\"cmd\":\"shutdown\"}\n").unwrap();
        let _newcomer = f.connect();
        let (token, request) = f.accept(0.0).expect("the waiting request first");
        assert_eq!(request, Request::Shutdown);
        f.clients
            .respond(&f.epoll, token, &Response::ok("bye"), f.t0);
        assert_eq!(answer(&mut early), Response::ok("bye"));
        assert_eq!(f.accept(0.0), None, "then the newcomer is accepted");
        assert_eq!(f.slots(Slot::Reserve), RESERVED);
    }

    #[test]
    fn the_listener_leaves_the_epoll_set_when_nothing_can_be_accepted() {
        let mut f = Fixture::new("full");
        let _ordinary: Vec<UnixStream> = (0..MAX_CLIENTS).map(|_| f.idle()).collect();
        // Two reserve connections whose (large) answers are not being read.
        let huge = Response::error("x".repeat(8 << 20));
        let mut slow = Vec::new();
        for _ in 0..RESERVED {
            let mut client = f.connect();
            client.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
            let (token, _) = f.accept(0.0).unwrap();
            f.clients.respond(&f.epoll, token, &huge, f.t0);
            slow.push((token, client));
        }
        assert_eq!(f.clients.len(), MAX_CLIENTS + RESERVED);
        assert!(!f.clients.armed, "nothing can give way: stop accepting");
        // A client that gives up frees a slot: accepting resumes.
        let (token, client) = slow.pop().unwrap();
        drop(client);
        assert_eq!(
            f.event(token, EpollFlags::EPOLLOUT | EpollFlags::EPOLLHUP),
            None
        );
        assert_eq!(f.clients.len(), MAX_CLIENTS + RESERVED - 1);
        assert!(f.clients.armed);
    }

    #[test]
    fn an_incomplete_or_missing_request_is_cut_off_after_the_request_timeout() {
        let mut f = Fixture::new("idle");
        let mut silent = f.idle();
        let mut partial = f.connect();
        partial.write_all(b"{\"cmd\":").unwrap();
        assert_eq!(f.accept(1.0), None);
        assert_eq!(f.clients.deadline(), Some(f.t0 + REQUEST_TIMEOUT));
        // Trickling more does not buy time.
        partial.write_all(b" ").unwrap();
        let token = *f.clients.conns.keys().max().unwrap();
        assert_eq!(f.event(token, EpollFlags::EPOLLIN), None);

        f.clients
            .on_deadline(&f.epoll, f.t0 + REQUEST_TIMEOUT - Duration::from_millis(1));
        assert_eq!(f.clients.len(), 2);
        f.clients.on_deadline(&f.epoll, f.t0 + REQUEST_TIMEOUT);
        assert_eq!(f.clients.len(), 1);
        let said = answer(&mut silent);
        assert!(said.message.unwrap().contains("no complete line"));
        f.clients
            .on_deadline(&f.epoll, f.t0 + REQUEST_TIMEOUT + Duration::from_secs(1));
        assert!(f.clients.is_empty());
        assert!(!answer(&mut partial).ok);
        assert_eq!(f.clients.deadline(), None);
    }

    #[test]
    fn an_answer_not_taken_is_dropped_after_the_write_timeout() {
        let mut f = Fixture::new("write");
        let mut client = f.connect();
        client.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        let (token, _) = f.accept(0.0).unwrap();
        let at = f.t0 + Duration::from_secs(3);
        f.clients
            .respond(&f.epoll, token, &Response::error("x".repeat(8 << 20)), at);
        assert_eq!(
            f.clients.len(),
            1,
            "the answer is larger than the socket takes"
        );
        assert_eq!(f.clients.deadline(), Some(at + WRITE_TIMEOUT));
        f.clients.on_deadline(&f.epoll, at + WRITE_TIMEOUT);
        assert!(f.clients.is_empty());
        drop(client);
    }

    /// A `logs -f` client that stops reading, with too little coming to
    /// put it 1 MiB behind: closed once it took nothing for the write
    /// timeout. One that keeps reading keeps its slot; one with nothing
    /// pending has no deadline at all.
    #[test]
    fn a_follower_that_takes_nothing_is_closed_after_the_write_timeout() {
        let mut f = Fixture::new("follow");
        let group = GroupName::new("web").unwrap();
        let follower = |f: &mut Fixture| {
            let mut client = f.connect();
            client
                .write_all(b"{\"cmd\":\"logs\",\"follow\":true}\n")
                .unwrap();
            let (token, _) = f.accept(0.0).unwrap();
            f.clients
                .follow(&f.epoll, token, b"{}\n".to_vec(), Vec::new(), f.t0);
            (token, client)
        };
        let (stuck, _stuck_client) = follower(&mut f);
        let (reader, mut reader_client) = follower(&mut f);
        let mut first = [0u8; 3];
        reader_client.read_exact(&mut first).unwrap();
        assert_eq!(f.clients.deadline(), None, "nothing pending, no deadline");

        // 512 KiB of lines: more than a socket holds, less than 1 MiB.
        let chunk = vec![b'x'; 512 << 10];
        let at = |secs: u64| f.t0 + Duration::from_secs(secs);
        f.clients
            .broadcast(&f.epoll, &[(group.clone(), chunk.clone())], at(1));
        assert_eq!(f.clients.deadline(), Some(at(1) + WRITE_TIMEOUT));

        // The reader takes some, later: its deadline moves, the other's does not.
        let mut buf = vec![0u8; 64 << 10];
        reader_client.read_exact(&mut buf).unwrap();
        f.clients
            .on_event(&f.epoll, reader, EpollFlags::EPOLLOUT, at(8));
        f.clients.on_deadline(&f.epoll, at(1) + WRITE_TIMEOUT);
        assert!(
            !f.clients.conns.contains_key(&stuck),
            "took nothing: closed"
        );
        assert!(f.clients.conns.contains_key(&reader), "took some: kept");
        assert_eq!(f.clients.deadline(), Some(at(8) + WRITE_TIMEOUT));
    }

    /// Answers nobody takes hold at most [`PENDING_MAX`] (and one more
    /// answer): then `logs` is refused until they are taken or dropped.
    #[test]
    fn logs_answers_nobody_takes_are_bounded() {
        let mut f = Fixture::new("pending");
        let mut held = Vec::new();
        while f.clients.has_room_for_logs() {
            let mut client = f.connect();
            client.write_all(b"{\"cmd\":\"logs\"}\n").unwrap();
            let (token, _) = f.accept(0.0).unwrap();
            f.clients
                .respond_bytes(&f.epoll, token, vec![b'x'; 16 << 20], f.t0);
            held.push(client);
            assert!(held.len() <= PENDING_MAX / (8 << 20), "never refused");
        }
        assert!(f.clients.pending_bytes() < PENDING_MAX + (16 << 20));
        f.clients.on_deadline(&f.epoll, f.t0 + WRITE_TIMEOUT);
        assert!(f.clients.has_room_for_logs(), "dropped with their clients");
    }

    #[test]
    fn a_failing_accept_pauses_with_a_doubling_back_off_and_no_spin() {
        let mut f = Fixture::new("emfile");
        let emfile = io::Error::from(Errno::EMFILE);
        let mut now = f.t0;
        let mut pauses = Vec::new();
        for _ in 0..6 {
            f.clients.accept_failed(&f.epoll, &emfile, now);
            assert!(!f.clients.armed, "the listener is out of the epoll set");
            let until = f.clients.paused_until.unwrap();
            pauses.push(until - now);
            assert_eq!(f.clients.deadline(), Some(until));
            now = until;
            f.clients.on_deadline(&f.epoll, now);
            assert!(f.clients.armed, "back after the pause");
        }
        let ms: Vec<u128> = pauses.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        // One line was logged; the rest wait for a summary.
        assert!(f.clients.log.deadline().is_some());

        // A successful accept starts the back-off over.
        let _client = f.connect();
        assert_eq!(f.accept(0.0), None);
        f.clients.accept_failed(&f.epoll, &emfile, now);
        assert_eq!(f.clients.paused_until, Some(now + BACKOFF_MIN));
        // A connection that closes frees an fd: accepting resumes at once.
        let token = *f.clients.conns.keys().next().unwrap();
        drop(_client);
        assert_eq!(f.event(token, EpollFlags::EPOLLIN), None);
        assert!(f.clients.paused_until.is_none());
        assert!(f.clients.armed);
    }

    #[test]
    fn a_client_that_gave_up_in_the_backlog_costs_nothing() {
        let mut f = Fixture::new("aborted");
        for _ in 0..100 {
            drop(f.connect());
            assert_eq!(f.accept(0.0), None);
        }
        assert!(f.clients.is_empty());
        assert_eq!(f.clients.deadline(), None);
        // Nothing waits now: accept would block, and nothing is paused.
        assert_eq!(f.accept(0.0), None);
        assert!(f.clients.paused_until.is_none());
    }
}
