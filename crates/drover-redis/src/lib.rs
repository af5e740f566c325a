//! drover's Redis Streams backend: one queue on one Redis stream, shared
//! by every drover instance that names it.
//!
//! The supervisor's loop never waits on Redis. A [`Backend`] runs two
//! threads with a connection each, built on the `redis` crate's
//! synchronous client:
//!
//! - the **writer** takes [`WriteBatch`]es in order: producers' messages
//!   (`XADD`, pipelined, one round trip per batch), settled entries
//!   (`XACK` then `XDEL`: the stream is never trimmed with `MAXLEN`, which
//!   would drop unacknowledged work), and delivery counts of entries drover
//!   hands out again (`XCLAIM … RETRYCOUNT`). A batch that fails (Redis down,
//!   a timeout) is sent again, whole, after a backoff, until it succeeds or
//!   the backend is closed: nothing is dropped, and since a failed `XADD`
//!   may still have been applied, a message may be added twice (at least
//!   once, never lost).
//!   Each round trip also measures the group's lag (entries no consumer
//!   of any instance has read), and while that is above 0 the writer
//!   measures it again every second, with nothing to write: other
//!   instances read from the stream without this one hearing of it.
//! - the **reader** feeds consumers: `XREADGROUP … BLOCK` with a `COUNT` of
//!   the credit the loop granted ([`Backend::grant`], the consumers' free
//!   prefetch), so drover holds no more of the stream than its consumers
//!   can take. At start it first takes back, at once, the pending entries
//!   of its own consumer name and of consumers of this host whose process
//!   is gone (then deletes those consumers), and it walks its own list
//!   again after a lost connection (a read whose reply was lost left
//!   entries there that drover never saw); while it runs it claims, with
//!   `XAUTOCLAIM`, entries other instances left pending longer than
//!   `claim_idle` (a crashed or stopped instance's).
//!
//! Both threads report through shared state and one eventfd-like
//! [`Notify`] the loop watches; [`Backend::take`] collects what happened.
//! Errors are reported as text with any password redacted.

mod url;

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use redis::{Connection, Value};

pub use url::{SCHEMES, Target, mask, redact};

/// The oldest Redis drover works with: `XAUTOCLAIM` arrived in 6.2.
pub const MIN_VERSION: (u32, u32) = (6, 2);

/// The field drover's entries carry their message in.
pub const FIELD: &str = "data";

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command may take before the connection is taken for dead.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// While the group's lag was last seen above 0, the writer measures it
/// again this often even with nothing to write: other instances' readers
/// take entries without this one writing anything, and `status` would
/// show a lag that is long gone.
const LAG_REFRESH: Duration = Duration::from_secs(1);
/// Entries claimed per round trip of a start's recovery.
const RECOVER_BATCH: u64 = 256;

/// Wakes the loop: an eventfd it watches with epoll.
pub trait Notify: Send + Sync + 'static {
    fn notify(&self);
}

/// What one queue on Redis is.
#[derive(Debug, Clone)]
pub struct Spec {
    pub target: Target,
    pub stream: String,
    /// The consumer group: one per queue, named after it.
    pub group: String,
    /// This instance's name in the group: `HOST:PID`.
    pub consumer: String,
    /// Pending entries of other consumers idle this long are claimed.
    pub claim_idle: Duration,
}

impl Spec {
    /// This instance's consumer name: host name and PID.
    pub fn consumer_name() -> String {
        format!("{}:{}", host_name(), std::process::id())
    }
}

/// The machine's host name (`uname`), or `localhost`.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// What the loop sends to Redis in one go.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Increasing; [`Events::committed`] reports the last one done.
    pub seq: u64,
    /// Messages to add, in order.
    pub add: Vec<Box<[u8]>>,
    /// Entries settled for good (acked, dead-lettered, read at most once):
    /// `XACK`, then `XDEL`.
    pub done: Vec<String>,
    /// Entries handed out again by this instance, with their delivery
    /// count, so that `max_deliveries` holds across instances.
    pub recount: Vec<(String, u32)>,
    /// Entries this instance still holds: their idle time is reset, so
    /// that no other instance claims them while they are worked on.
    pub touch: Vec<String>,
    /// Work outside Redis that must be done before this batch is sent
    /// (dead-letter records of the entries it acks): the writer calls it,
    /// and waits for it, first.
    pub before: Option<Before>,
}

/// A wait the writer runs before sending a batch; see [`WriteBatch::before`].
#[derive(Clone)]
pub struct Before(pub std::sync::Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Before {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Before(..)")
    }
}

impl WriteBatch {
    /// `later` joins this batch (not yet taken by the writer): the writer
    /// would send both in one pipeline anyway, in this order. The newer
    /// list of held entries to touch replaces the older one (it names
    /// every entry held now).
    fn absorb(&mut self, later: WriteBatch) {
        self.seq = later.seq;
        self.add.extend(later.add);
        self.recount.extend(later.recount);
        if !later.touch.is_empty() {
            self.touch = later.touch;
        }
        if later.before.is_some() {
            // It waits for the same records and those made since.
            self.before = later.before;
        }
        self.done.extend(later.done);
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty()
            && self.done.is_empty()
            && self.recount.is_empty()
            && self.touch.is_empty()
    }
}

/// One entry read from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    /// The `data` field; for an entry without one (another program added
    /// it), `None` and its fields as `name=value` lines in `fields`.
    pub data: Option<Vec<u8>>,
    pub fields: Vec<u8>,
    /// Its delivery count in the group, this delivery included.
    pub count: u32,
    /// It was pending for this instance's own consumer name already: read
    /// again by the recovery that follows a lost connection (a read whose
    /// reply was lost leaves entries nobody here has seen in that list).
    /// The loop may already hold it, and then drops this copy.
    pub ours: bool,
}

/// What the threads did since the last [`Backend::take`].
#[derive(Debug, Default)]
pub struct Events {
    /// The last batch known to be applied.
    pub committed: Option<u64>,
    pub entries: Vec<Entry>,
    /// The error changed: `Some(None)` it cleared, `Some(Some(text))` a
    /// new one.
    pub error: Option<Option<String>>,
    /// The group's lag (entries not yet read by any consumer), last seen.
    pub lag: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    batches: VecDeque<WriteBatch>,
    /// Entries the reader may still read.
    credit: u64,
    stop: bool,
    /// The writer has sent everything it was given and stopped.
    writer_done: bool,
    reader_id: Option<i64>,
    /// Per thread (writer, reader): the error it has now.
    errors: [Option<String>; 2],
    /// The error last reported to the loop.
    reported: Option<String>,
    events: Events,
}

struct Shared {
    state: Mutex<State>,
    /// The writer waits here for batches; the reader for credit; close
    /// waits for the writer.
    changed: Condvar,
    notify: Box<dyn Notify>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A thread that panicked holding the lock left consistent data
        // (every update is a single assignment or push).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets a thread's error (None: it works) and tells the loop when the
    /// reported error changes.
    fn set_error(&self, who: usize, error: Option<String>) {
        let mut s = self.lock();
        s.errors[who] = error;
        let now = s.errors[0].clone().or_else(|| s.errors[1].clone());
        if now != s.reported {
            s.reported = now.clone();
            s.events.error = Some(now);
            drop(s);
            self.notify.notify();
        }
    }

    /// Waits `wait` unless the backend is stopped first; true when stopped.
    fn pause(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut s = self.lock();
        loop {
            if s.stop {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

/// One queue's connection to its stream (see the crate documentation).
pub struct Backend {
    shared: Arc<Shared>,
    spec: Arc<Spec>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("url", &self.spec.target)
            .field("stream", &self.spec.stream)
            .finish()
    }
}

impl Backend {
    /// Starts the threads; they connect on their own (and keep trying).
    pub fn start(spec: Spec, notify: Box<dyn Notify>) -> std::io::Result<Backend> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            notify,
        });
        let spec = Arc::new(spec);
        let (s, p) = (Arc::clone(&shared), Arc::clone(&spec));
        thread::Builder::new()
            .name("redis-writer".into())
            .spawn(move || writer(&s, &p))?;
        let (s, p) = (Arc::clone(&shared), Arc::clone(&spec));
        if let Err(e) = thread::Builder::new()
            .name("redis-reader".into())
            .spawn(move || reader(&s, &p))
        {
            shared.lock().stop = true;
            shared.changed.notify_all();
            return Err(e);
        }
        Ok(Backend { shared, spec })
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Queues a batch for the writer. While the writer has not taken the
    /// last one (Redis is slow or down), this one joins it: one batch that
    /// grows with what the loop settles and adds (both bounded by the
    /// queue's capacity), not a queue of batches that grows with the
    /// outage (a touch of every held entry every `claim_idle / 2`).
    pub fn submit(&self, batch: WriteBatch) {
        let mut s = self.shared.lock();
        match s.batches.back_mut() {
            Some(last) => last.absorb(batch),
            None => s.batches.push_back(batch),
        }
        drop(s);
        self.shared.changed.notify_all();
    }

    /// Lets the reader read `n` more entries.
    pub fn grant(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.shared.lock().credit += n;
        self.shared.changed.notify_all();
    }

    /// Takes back the credit not used yet: the reader reads nothing more
    /// (a read under way may still bring entries).
    pub fn revoke(&self) {
        self.shared.lock().credit = 0;
    }

    /// Takes what happened since the last call.
    pub fn take(&self) -> Events {
        std::mem::take(&mut self.shared.lock().events)
    }

    /// The error the backend has now, if any.
    pub fn error(&self) -> Option<String> {
        self.shared.lock().reported.clone()
    }

    /// Stops reading; the writer still sends what it was given. Waits up
    /// to `wait` for that; true when everything was sent.
    pub fn close(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut s = self.shared.lock();
        s.stop = true;
        self.shared.changed.notify_all();
        loop {
            if s.writer_done {
                return s.batches.is_empty();
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .shared
                .changed
                .wait_timeout(s, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // The writer finishes what it was given on its own.
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
    }
}

// ------------------------------------------------------------ connections

fn text(e: &redis::RedisError) -> String {
    redact(&e.to_string())
}

/// Connects, checks the server's version and makes sure the group exists
/// (created at the stream's start, so that nothing added before any
/// consumer existed is skipped).
fn connect(spec: &Spec, read_timeout: Duration) -> Result<Connection, String> {
    let shown = spec.target.shown();
    let client =
        redis::Client::open(spec.target.secret()).map_err(|e| format!("{shown}: {}", text(&e)))?;
    let mut conn = client
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .map_err(|e| format!("cannot connect to {shown}: {}", text(&e)))?;
    let timeouts = conn
        .set_read_timeout(Some(read_timeout))
        .and_then(|()| conn.set_write_timeout(Some(COMMAND_TIMEOUT)));
    timeouts.map_err(|e| format!("{shown}: {}", text(&e)))?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut conn)
        .map_err(|e| format!("{shown}: INFO: {}", text(&e)))?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    if !new_enough(&version) {
        return Err(format!(
            "{shown} runs Redis {version}; drover needs Redis {}.{} or newer (XAUTOCLAIM)",
            MIN_VERSION.0, MIN_VERSION.1
        ));
    }
    create_group(&mut conn, spec)?;
    Ok(conn)
}

fn new_enough(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= MIN_VERSION
}

fn create_group(conn: &mut Connection, spec: &Spec) -> Result<(), String> {
    let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&spec.stream)
        .arg(&spec.group)
        .arg("0")
        .arg("MKSTREAM")
        .query(conn);
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(format!(
            "{}: creating group {} on stream {}: {}",
            spec.target.shown(),
            spec.group,
            spec.stream,
            text(&e)
        )),
    }
}

// ------------------------------------------------------------------ writer

const WRITER: usize = 0;
const READER: usize = 1;

fn writer(shared: &Shared, spec: &Spec) {
    let mut conn: Option<Connection> = None;
    let mut backoff = FIRST_BACKOFF;
    // The lag last reported to the loop.
    let mut lag = 0;
    loop {
        // Empty: only the lag is measured again (see LAG_REFRESH).
        let batches: Vec<WriteBatch> = {
            let mut s = shared.lock();
            let refresh_at = (lag > 0).then(|| Instant::now() + LAG_REFRESH);
            while s.batches.is_empty() && !s.stop {
                let Some(at) = refresh_at else {
                    s = shared.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                    continue;
                };
                let now = Instant::now();
                if now >= at {
                    break;
                }
                s = shared
                    .changed
                    .wait_timeout(s, at - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            if s.batches.is_empty() && s.stop {
                break;
            }
            s.batches.drain(..).collect()
        };
        let last = batches.last().map(|b| b.seq);
        for before in batches.iter().filter_map(|b| b.before.as_ref()) {
            (before.0)();
        }
        loop {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match connect(spec, COMMAND_TIMEOUT) {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        shared.set_error(WRITER, Some(e));
                        if last.is_none() {
                            // Only a measure: tried again at the next refresh.
                            break;
                        }
                        // Also when stopping: what was accepted is sent
                        // for as long as the process lives.
                        thread::sleep(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            match write(c, spec, &batches) {
                Ok(now) => {
                    backoff = FIRST_BACKOFF;
                    shared.set_error(WRITER, None);
                    if last.is_none() && now == lag {
                        break;
                    }
                    lag = now;
                    let mut s = shared.lock();
                    if last.is_some() {
                        s.events.committed = last;
                    }
                    s.events.lag = Some(lag);
                    drop(s);
                    shared.notify.notify();
                    break;
                }
                Err(e) => {
                    command_failed(shared, WRITER, spec, &mut conn, &e);
                    if last.is_none() {
                        break;
                    }
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
    finish(shared, conn.as_mut());
}

/// A command of thread `who` failed: a deleted stream or group is made
/// again, a broken connection is dropped (the next command reconnects),
/// and the error is reported. True when the connection was dropped.
fn command_failed(
    shared: &Shared,
    who: usize,
    spec: &Spec,
    conn: &mut Option<Connection>,
    e: &redis::RedisError,
) -> bool {
    if e.code() == Some("NOGROUP")
        && let Some(c) = conn.as_mut()
    {
        let _ = create_group(c, spec);
    }
    let lost = e.is_io_error() || e.is_connection_dropped() || e.is_timeout();
    if lost {
        *conn = None;
    }
    let error = format!("{}: {}", spec.target.shown(), text(e));
    shared.set_error(who, Some(error));
    lost
}

/// The writer is done: it unblocks the reader and says so.
fn finish(shared: &Shared, conn: Option<&mut Connection>) {
    let id = shared.lock().reader_id;
    if let (Some(c), Some(id)) = (conn, id) {
        let _: redis::RedisResult<Value> = redis::cmd("CLIENT").arg("UNBLOCK").arg(id).query(c);
    }
    shared.lock().writer_done = true;
    shared.changed.notify_all();
}

/// Sends `batches` as one pipeline; returns the group's lag.
fn write(conn: &mut Connection, spec: &Spec, batches: &[WriteBatch]) -> redis::RedisResult<u64> {
    let mut p = redis::pipe();
    for b in batches {
        for bytes in &b.add {
            p.cmd("XADD")
                .arg(&spec.stream)
                .arg("*")
                .arg(FIELD)
                .arg(&bytes[..])
                .ignore();
        }
        for (id, count) in &b.recount {
            p.cmd("XCLAIM")
                .arg(&spec.stream)
                .arg(&spec.group)
                .arg(&spec.consumer)
                .arg(0)
                .arg(id)
                .arg("RETRYCOUNT")
                .arg(*count)
                .arg("JUSTID")
                .ignore();
        }
        if !b.touch.is_empty() {
            p.cmd("XCLAIM")
                .arg(&spec.stream)
                .arg(&spec.group)
                .arg(&spec.consumer)
                .arg(0)
                .arg(&b.touch)
                .arg("JUSTID")
                .ignore();
        }
        if !b.done.is_empty() {
            p.cmd("XACK")
                .arg(&spec.stream)
                .arg(&spec.group)
                .arg(&b.done)
                .ignore();
            p.cmd("XDEL").arg(&spec.stream).arg(&b.done).ignore();
        }
    }
    p.cmd("XLEN").arg(&spec.stream);
    p.cmd("XPENDING").arg(&spec.stream).arg(&spec.group);
    let (len, pending): (u64, Value) = p.query(conn)?;
    let pending = match pending {
        Value::Array(v) => v.first().and_then(int).unwrap_or(0),
        _ => 0,
    };
    Ok(len.saturating_sub(pending))
}

// ------------------------------------------------------------------ reader

fn reader(shared: &Shared, spec: &Spec) {
    let mut conn: Option<Connection> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut recovered = false;
    let mut recovery = None;
    let mut next_claim = Instant::now();
    let claim_every = (spec.claim_idle / 2).max(Duration::from_millis(100));
    loop {
        let credit = {
            let mut s = shared.lock();
            while s.credit == 0 && !s.stop {
                s = shared.changed.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.stop {
                return;
            }
            s.credit
        };
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(spec, claim_every + COMMAND_TIMEOUT) {
                Ok(mut c) => {
                    let id: redis::RedisResult<i64> = redis::cmd("CLIENT").arg("ID").query(&mut c);
                    shared.lock().reader_id = id.ok();
                    conn.insert(c)
                }
                Err(e) => {
                    shared.set_error(READER, Some(e));
                    if shared.pause(backoff) {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        let got = read(
            c,
            spec,
            credit,
            &mut recovery,
            &mut recovered,
            &mut next_claim,
            claim_every,
        );
        match got {
            Ok(entries) => {
                backoff = FIRST_BACKOFF;
                shared.set_error(READER, None);
                if entries.is_empty() {
                    continue;
                }
                let mut s = shared.lock();
                if s.stop {
                    // Left pending: claimed later, here or elsewhere.
                    return;
                }
                s.credit = s.credit.saturating_sub(entries.len() as u64);
                s.events.entries.extend(entries);
                drop(s);
                shared.notify.notify();
            }
            Err(e) => {
                if shared.lock().stop {
                    return;
                }
                if command_failed(shared, READER, spec, &mut conn, &e) {
                    // A read whose reply was lost (Redis went down, the
                    // connection broke, the reply came too late) put
                    // entries in this consumer's pending list that nobody
                    // here has seen (and that only another instance would
                    // ever claim, after claim_idle): the next connection
                    // walks that list again.
                    recovered = false;
                    recovery = None;
                }
                if shared.pause(backoff) {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One read of at most `credit` entries: a start's recovery first, then
/// due claims of other instances' idle entries, then new entries.
fn read(
    conn: &mut Connection,
    spec: &Spec,
    credit: u64,
    recovery: &mut Option<Recovery>,
    recovered: &mut bool,
    next_claim: &mut Instant,
    claim_every: Duration,
) -> redis::RedisResult<Vec<Entry>> {
    if !*recovered {
        if let Some(entries) = recover(conn, spec, credit.min(RECOVER_BATCH), recovery)? {
            return Ok(entries);
        }
        *recovered = true;
    }
    let now = Instant::now();
    if now >= *next_claim {
        let (done, entries) = autoclaim(conn, spec, credit)?;
        if done {
            *next_claim = now + claim_every;
        }
        if !entries.is_empty() {
            return Ok(entries);
        }
    }
    let wait = next_claim.saturating_duration_since(Instant::now());
    let block = wait.as_millis().clamp(1, u64::MAX as u128) as u64;
    let reply: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&spec.group)
        .arg(&spec.consumer)
        .arg("COUNT")
        .arg(credit)
        .arg("BLOCK")
        .arg(block)
        .arg("STREAMS")
        .arg(&spec.stream)
        .arg(">")
        .query(conn)?;
    // [[stream, [entry...]]] or nil
    let mut out = Vec::new();
    if let Value::Array(streams) = reply {
        for s in streams {
            if let Value::Array(mut pair) = s
                && pair.len() == 2
                && let Value::Array(entries) = pair.swap_remove(1)
            {
                out.extend(entries.into_iter().filter_map(|e| entry(e, 1)));
            }
        }
    }
    Ok(out)
}

/// A start's recovery: the consumers whose pending entries this instance
/// takes at once, each with the id after which the next look starts.
#[derive(Debug)]
struct Recovery {
    targets: Vec<(String, String)>,
    /// Consumers of this host whose process is gone: deleted once empty.
    gone: Vec<String>,
}

/// The pending entries of this consumer name (an earlier drover with the
/// same PID: PID 1 in a container) and of consumers of this host whose
/// process is gone: claimed at once, without waiting for `claim_idle`.
/// Each consumer's list is walked once, by id (a claimed entry becomes
/// this consumer's, and must not be claimed again). At the end, the gone
/// consumers are deleted (only those left empty: deleting a consumer
/// drops its pending entries from the group).
fn recover(
    conn: &mut Connection,
    spec: &Spec,
    count: u64,
    state: &mut Option<Recovery>,
) -> redis::RedisResult<Option<Vec<Entry>>> {
    if state.is_none() {
        *state = Some(recovery_targets(conn, spec)?);
    }
    let Some(r) = state.as_mut() else {
        return Ok(None);
    };
    while let Some((name, after)) = r.targets.last().cloned() {
        let listed: Value = redis::cmd("XPENDING")
            .arg(&spec.stream)
            .arg(&spec.group)
            .arg(&after)
            .arg("+")
            .arg(count)
            .arg(&name)
            .query(conn)?;
        let (ids, counts, _) = pending_list(listed);
        let Some(last) = ids.last() else {
            r.targets.pop();
            continue;
        };
        if let Some(t) = r.targets.last_mut() {
            t.1 = format!("({last}");
        }
        let entries = claim(conn, spec, 0, &ids, &counts, name == spec.consumer)?;
        if !entries.is_empty() {
            return Ok(Some(entries));
        }
    }
    for name in std::mem::take(&mut r.gone) {
        let pending: Value = redis::cmd("XPENDING")
            .arg(&spec.stream)
            .arg(&spec.group)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(&name)
            .query(conn)?;
        if pending_list(pending).0.is_empty() {
            let _: Value = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(&spec.stream)
                .arg(&spec.group)
                .arg(&name)
                .query(conn)?;
        }
    }
    Ok(None)
}

fn recovery_targets(conn: &mut Connection, spec: &Spec) -> redis::RedisResult<Recovery> {
    let consumers: Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&spec.stream)
        .arg(&spec.group)
        .query(conn)?;
    let host = spec.consumer.rsplit_once(':').map_or("", |(h, _)| h);
    let mut r = Recovery {
        targets: Vec::new(),
        gone: Vec::new(),
    };
    let Value::Array(list) = consumers else {
        return Ok(r);
    };
    for c in list {
        let (Some(name), pending) = (field_str(&c, "name"), field_int(&c, "pending")) else {
            continue;
        };
        let ours = name == spec.consumer;
        let gone_here = name
            .rsplit_once(':')
            .is_some_and(|(h, pid)| h == host && pid.parse::<i32>().is_ok_and(|p| !alive(p)));
        if gone_here {
            r.gone.push(name.clone());
        }
        if (ours || gone_here) && pending.unwrap_or(0) > 0 {
            r.targets.push((name, "-".into()));
        }
    }
    Ok(r)
}

/// `XCLAIM`s `ids` (their delivery counts before the claim in `counts`).
fn claim(
    conn: &mut Connection,
    spec: &Spec,
    min_idle: u64,
    ids: &[String],
    counts: &[u32],
    ours: bool,
) -> redis::RedisResult<Vec<Entry>> {
    let reply: Value = redis::cmd("XCLAIM")
        .arg(&spec.stream)
        .arg(&spec.group)
        .arg(&spec.consumer)
        .arg(min_idle)
        .arg(ids)
        .query(conn)?;
    let Value::Array(entries) = reply else {
        return Ok(Vec::new());
    };
    Ok(entries
        .into_iter()
        .filter_map(|e| {
            let mut e = entry(e, 1)?;
            let before = ids
                .iter()
                .position(|id| *id == e.id)
                .and_then(|i| counts.get(i))
                .copied()
                .unwrap_or(0);
            e.count = before.saturating_add(1);
            e.ours = ours;
            Some(e)
        })
        .collect())
}

/// Claims other consumers' entries idle for `claim_idle`. Returns whether
/// the scan reached the end of the pending list, and the entries.
fn autoclaim(
    conn: &mut Connection,
    spec: &Spec,
    credit: u64,
) -> redis::RedisResult<(bool, Vec<Entry>)> {
    let idle = spec.claim_idle.as_millis().min(u64::MAX as u128) as u64;
    // Listed first (with their delivery counts), then claimed: XAUTOCLAIM
    // would not say how often each was delivered.
    let listed: Value = redis::cmd("XPENDING")
        .arg(&spec.stream)
        .arg(&spec.group)
        .arg("IDLE")
        .arg(idle)
        .arg("-")
        .arg("+")
        .arg(credit.min(RECOVER_BATCH))
        .query(conn)?;
    let (ids, counts, owners) = pending_list(listed);
    let full = ids.len() as u64 >= credit.min(RECOVER_BATCH);
    // Not its own: those are held here (and refreshed) already.
    let theirs = owners.iter().map(|o| *o != spec.consumer);
    let (ids, counts): (Vec<String>, Vec<u32>) = ids
        .into_iter()
        .zip(counts)
        .zip(theirs)
        .filter_map(|(pair, theirs)| theirs.then_some(pair))
        .unzip();
    if ids.is_empty() {
        return Ok((true, Vec::new()));
    }
    let entries = claim(conn, spec, idle, &ids, &counts, false)?;
    Ok((!full, entries))
}

/// XPENDING's extended form: (ids, delivery counts, owners).
fn pending_list(reply: Value) -> (Vec<String>, Vec<u32>, Vec<String>) {
    let mut ids = Vec::new();
    let mut counts = Vec::new();
    let mut owners = Vec::new();
    if let Value::Array(rows) = reply {
        for row in rows {
            if let Value::Array(cols) = row
                && cols.len() >= 4
                && let Some(id) = string(&cols[0])
            {
                ids.push(id);
                counts.push(int(&cols[3]).unwrap_or(0).min(u32::MAX as u64) as u32);
                owners.push(string(&cols[1]).unwrap_or_default());
            }
        }
    }
    (ids, counts, owners)
}

/// `[id, [field, value, ...]]` (nil for a deleted entry).
fn entry(value: Value, count: u32) -> Option<Entry> {
    let Value::Array(mut pair) = value else {
        return None;
    };
    if pair.len() != 2 {
        return None;
    }
    let fields = pair.pop()?;
    let id = string(&pair[0])?;
    let mut data = None;
    let mut listed = Vec::new();
    if let Value::Array(kv) = fields {
        let mut it = kv.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let (Some(k), Some(v)) = (bytes(k), bytes(v)) else {
                continue;
            };
            if k == FIELD.as_bytes() && data.is_none() {
                data = Some(v);
            } else {
                listed.extend_from_slice(&k);
                listed.push(b'=');
                listed.extend_from_slice(&v);
                listed.push(b'\n');
            }
        }
    }
    Some(Entry {
        id,
        data,
        fields: listed,
        count,
        ours: false,
    })
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// XINFO's `[key, value, key, value ...]` (RESP2) or map (RESP3).
fn field<'a>(row: &'a Value, key: &str) -> Option<&'a Value> {
    match row {
        Value::Array(kv) => kv
            .chunks(2)
            .find(|p| p.len() == 2 && string(&p[0]).as_deref() == Some(key))
            .map(|p| &p[1]),
        Value::Map(kv) => kv
            .iter()
            .find(|(k, _)| string(k).as_deref() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn field_str(row: &Value, key: &str) -> Option<String> {
    field(row, key).and_then(string)
}

fn field_int(row: &Value, key: &str) -> Option<u64> {
    field(row, key).and_then(int)
}

/// Whether a process of this host (this PID namespace) has PID `pid`.
/// EPERM: it exists, owned by someone else.
fn alive(pid: i32) -> bool {
    if pid <= 0 || pid == std::process::id() as i32 {
        return pid > 0;
    }
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_before_6_2_are_refused() {
        assert!(new_enough("7.0.15"));
        assert!(new_enough("6.2.0"));
        assert!(!new_enough("6.0.16"));
        assert!(!new_enough("5.0.7"));
        assert!(!new_enough("garbage"));
    }

    #[test]
    fn entries_without_the_data_field_keep_their_fields() {
        let v = Value::Array(vec![
            Value::BulkString(b"1-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"other".to_vec()),
                Value::BulkString(b"x".to_vec()),
            ]),
        ]);
        let e = entry(v, 1).unwrap();
        assert_eq!(e.data, None);
        assert_eq!(e.fields, b"other=x\n");
        let v = Value::Array(vec![
            Value::BulkString(b"2-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"data".to_vec()),
                Value::BulkString(vec![0, 1, 2]),
            ]),
        ]);
        assert_eq!(entry(v, 3).unwrap().data, Some(vec![0, 1, 2]));
        assert_eq!(entry(Value::Nil, 1), None);
    }

    /// Redis unreachable: what the loop submits meanwhile waits as one
    /// batch, whatever the number of submits; the newest touch list wins;
    /// adds, recounts and settlements all stay, in order.
    #[test]
    fn batches_submitted_while_the_writer_is_stuck_become_one() {
        let dir = std::env::temp_dir().join(format!("drover-redis-stuck-{}", std::process::id()));
        let spec = Spec {
            target: Target::parse(&format!("unix://{}/nothing.sock", dir.display())).unwrap(),
            stream: "s".into(),
            group: "g".into(),
            consumer: "c".into(),
            claim_idle: Duration::from_secs(30),
        };
        struct Quiet;
        impl Notify for Quiet {
            fn notify(&self) {}
        }
        let backend = Backend::start(spec, Box::new(Quiet)).unwrap();
        for seq in 1..=1000u64 {
            backend.submit(WriteBatch {
                seq,
                add: vec![seq.to_string().into_bytes().into_boxed_slice()],
                done: vec![format!("{seq}-0")],
                recount: vec![],
                touch: vec![format!("held-{seq}-a"), format!("held-{seq}-b")],
                before: None,
            });
        }
        let s = backend.shared.lock();
        // The writer may hold the first batch, retrying it.
        assert!(s.batches.len() <= 1, "{} batches queued", s.batches.len());
        if let Some(b) = s.batches.back() {
            assert_eq!(b.seq, 1000);
            assert_eq!(b.touch, ["held-1000-a", "held-1000-b"]);
            // The rest, whatever the writer took first, in order.
            let first = 1000 - b.add.len() as u64 + 1;
            let adds: Vec<String> = (first..=1000).map(|n| n.to_string()).collect();
            let got: Vec<String> = b
                .add
                .iter()
                .map(|a| String::from_utf8_lossy(a).into())
                .collect();
            assert_eq!(got, adds);
            assert_eq!(b.done.len(), b.add.len());
            assert_eq!(b.done.last().unwrap(), "1000-0");
        }
    }
}
