//! Queues with `backend = "redis"` on the real binary, against a real
//! `redis-server` (no mocks): two drover instances sharing one stream; a
//! SIGKILLed instance whose unacked entries the other claims after
//! `claim_idle`; Redis shut down and started again mid-stream with
//! producer confirms; a poison message dead-lettered once after
//! `max_deliveries` with consumers in two instances; `drover check`'s
//! located errors for Redis queues; and what `status` shows (backend,
//! stream, a URL with its password redacted).
//!
//! Every test starts its own `redis-server` ([`RedisServer`]: a Unix
//! socket in a directory of its own, nothing persisted outside it) and
//! fails, saying what to install, when there is none. The workers are
//! small Python programs kept below as strings and written into each
//! drover's directory; what they sent, got and finished goes to files
//! there. An instance is a [`Drover`] in a directory of its own, with its
//! own config and control socket; the instances of a test share only the
//! Redis server.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::redis::{Options, RedisServer, make_certificates};
use common::{Drover, TempDir, alive, count, queue, wait_until_within};
use serde_json::Value;

/// Deadline of the long waits (a whole stream, a claim, an outage);
/// generous for a loaded 2-core machine.
const LONG: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- helpers

/// The complete lines of a file another process may be appending to (a
/// missing file has none).
fn lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .map(str::to_owned)
        .collect()
}

/// How many times each line occurs over `paths`.
fn tally(paths: &[PathBuf]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for path in paths {
        for line in lines(path) {
            *seen.entry(line).or_insert(0) += 1;
        }
    }
    seen
}

/// `m0` .. `m(n-1)`, the messages the producer sends.
fn messages(n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}

/// Asserts that `seen` holds every one of `expected` and nothing else;
/// returns the number of extra copies (duplicates).
fn assert_all_seen(seen: &HashMap<String, usize>, expected: &BTreeSet<String>) -> usize {
    let missing: Vec<&String> = expected.iter().filter(|m| !seen.contains_key(*m)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages never consumed, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(20)]
    );
    let unexpected: Vec<&String> = seen.keys().filter(|m| !expected.contains(*m)).collect();
    assert!(
        unexpected.is_empty(),
        "consumed but never sent: {unexpected:?}"
    );
    seen.values().map(|n| n - 1).sum()
}

/// This machine's host name: an instance's consumer name is `HOST:PID`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("read the host name")
        .trim()
        .to_owned()
}

/// The consumer names of `group` on `stream` (none while the group does
/// not exist).
fn group_consumers(redis: &RedisServer, stream: &str, group: &str) -> Vec<String> {
    let out = redis.cli(&["XINFO", "CONSUMERS", stream, group]);
    let fields: Vec<&str> = out.lines().collect();
    fields
        .windows(2)
        .filter(|w| w[0] == "name")
        .map(|w| w[1].to_owned())
        .collect()
}

/// Asserts that every drover of `pids` is a consumer of `group` on
/// `stream`, named after this host and its PID. (Redis 7.0 adds a
/// consumer to its group when it first reads an entry, not while it waits
/// in a blocked XREADGROUP.)
fn assert_consumers(redis: &RedisServer, stream: &str, group: &str, pids: &[i32]) {
    let host = hostname();
    let names = group_consumers(redis, stream, group);
    for pid in pids {
        let name = format!("{host}:{pid}");
        assert!(
            names.contains(&name),
            "drover {pid} is not the consumer {name} of group {group} on {stream}: {names:?}"
        );
    }
}

/// Waits until at least `n` connections wait in a blocked XREADGROUP (the
/// readers of the drover instances, one per Redis queue with consumers):
/// the instances are ready for entries.
fn wait_blocked_readers(redis: &RedisServer, n: usize) {
    let deadline = Instant::now() + LONG;
    loop {
        let clients = redis.cli(&["CLIENT", "LIST"]);
        let blocked = clients
            .lines()
            .filter(|c| {
                let field = |k: &str| {
                    c.split(' ')
                        .find_map(|f| f.strip_prefix(k))
                        .unwrap_or_default()
                };
                field("cmd=") == "xreadgroup" && field("flags=").contains('b')
            })
            .count();
        if blocked >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {LONG:?} waiting for {n} readers blocked in XREADGROUP; \
             the clients:\n{clients}"
        );
        std::thread::sleep(Duration::from_millis(20)); // poll interval of a condition wait
    }
}

fn xlen(redis: &RedisServer, stream: &str) -> u64 {
    let out = redis.cli(&["XLEN", stream]);
    out.parse()
        .unwrap_or_else(|_| panic!("XLEN {stream}: {out}"))
}

/// The number of pending (delivered, unacked) entries of `group`.
fn pending(redis: &RedisServer, stream: &str, group: &str) -> u64 {
    let out = redis.cli(&["XPENDING", stream, group]);
    let first = out.lines().next().unwrap_or_default();
    first
        .parse()
        .unwrap_or_else(|_| panic!("XPENDING {stream} {group}: {out}"))
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until `stream` is empty and `group` has nothing pending: every
/// entry was acked (XACK) and deleted (XDEL).
fn wait_drained(redis: &RedisServer, stream: &str, group: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        let last = (xlen(redis, stream), pending(redis, stream, group));
        if last == (0, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {LONG:?} waiting for {stream} to drain: XLEN {}, {} pending in group {group}",
            last.0,
            last.1
        );
        std::thread::sleep(Duration::from_millis(20)); // poll interval of a condition wait
    }
}

/// A `[queue.NAME]` table on `url`, with more keys in `extra`.
fn redis_queue(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[queue.{name}]
backend = "redis"
url = "{url}"
{extra}
"#
    )
}

/// The config of one group running `argv` (TOML strings, `@PY@` for the
/// interpreter) with `keys` (inputs, outputs, processes, ...).
fn group(name: &str, argv: &str, keys: &str) -> String {
    format!(
        r#"
[group.{name}]
command = ["@PY@", {argv}]
start_secs = "100ms"
{keys}
"#
    )
}

/// The `backend_error` status shows for `name`, when it shows one (Redis
/// cannot be reached or refuses).
fn backend_error(status: &Value, name: &str) -> Option<String> {
    queue(status, name)["backend_error"]
        .as_str()
        .map(str::to_owned)
}

/// True when status shows no `backend_error` for `name` (null or absent;
/// [`status_shows_the_backend_and_stream_and_never_a_password`] checks
/// that it is there, as null).
fn backend_ok(status: &Value, name: &str) -> bool {
    queue(status, name)["backend_error"].is_null()
}

// ---------------------------------------------------------------- workers

/// `producer.py GATE --count N | GATE MSG...`: once the file GATE exists
/// (`-`: at once), sends `m0` .. `m(N-1)` (or the MSGs) to `jobs`,
/// appends `done` to `producer-done.txt`, then idles (it must not be
/// restarted to send them again).
const PRODUCER: &str = r#"
import os, signal, socket, sys, time
gate = sys.argv[1]
if sys.argv[2] == "--count":
    msgs = [f"m{i}".encode() for i in range(int(sys.argv[3]))]
else:
    msgs = [m.encode() for m in sys.argv[2:]]
out = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
while gate != "-" and not os.path.exists(gate):
    time.sleep(0.01)  # until the test opens the gate
for m in msgs:
    out.send(m)
with open("producer-done.txt", "a") as f:
    f.write("done\n")
signal.pause()
"#;

/// `confirmer.py N WINDOW`: sends `m0` .. `m(N-1)` to `jobs` (with
/// confirms), WINDOW at a time: appends each to `sent.txt` before sending
/// it and to `confirmed.txt` when its `ok` came. A refusal goes to
/// `refused.txt` and ends it; at the end it appends `done` to
/// `producer-done.txt` and idles.
const CONFIRMER: &str = r#"
import os, signal, socket, sys
jobs = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
if os.environ.get("DROVER_CONFIRM_JOBS") != "1":
    sys.exit("no confirms on jobs")
n, window = int(sys.argv[1]), int(sys.argv[2])
sent = os.open("sent.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
oks = os.open("confirmed.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
nxt = 0
while nxt < n:
    batch = range(nxt, min(nxt + window, n))
    os.write(sent, b"".join(b"m%d\n" % i for i in batch))
    for i in batch:
        jobs.send(b"m%d" % i)
    for i in batch:
        reply = jobs.recv(64)
        if reply == b"":
            sys.exit("drover is gone")
        if reply != b"ok":
            with open("refused.txt", "a") as f:
                f.write(f"m{i} {reply!r}\n")
            sys.exit(f"m{i} refused: {reply!r}")
        os.write(oks, b"m%d\n" % i)
    nxt = batch.stop
with open("producer-done.txt", "a") as f:
    f.write("done\n")
signal.pause()
"#;

/// `consumer.py QUEUE DONE [GOT [DELAY]]`: takes up to 64 messages of
/// QUEUE per wake-up; appends them to GOT (if given, `-` for none) as they
/// arrive, spends DELAY seconds on them (the work), appends them to DONE,
/// then acks each. DONE is written before the acks: a message in DONE is
/// one whose work is finished and whose ack was sent or about to be.
const CONSUMER: &str = r#"
import os, socket, sys, time
name, done_path = sys.argv[1], sys.argv[2]
got_path = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] != "-" else None
delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
q = socket.socket(fileno=int(os.environ[f"DROVER_IN_{name.upper()}"]))
flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
done = os.open(done_path, flags, 0o644)
got = os.open(got_path, flags, 0o644) if got_path else None
while (first := q.recv(65536)):
    batch = [first]
    try:
        while len(batch) < 64 and (msg := q.recv(65536, socket.MSG_DONTWAIT)):
            batch.append(msg)
    except BlockingIOError:
        pass
    text = b"".join(m + b"\n" for m in batch)
    if got is not None:
        os.write(got, text)
    if delay:
        time.sleep(delay)
    os.write(done, text)
    for _ in batch:
        q.send(b"ack")
"#;

/// `poison.py`: for each message of `jobs`, appends `got MSG` to
/// `worker.txt`; exits with status 3 on `poison` (without acking it) and
/// acks everything else.
const POISON_WORKER: &str = r#"
import os, socket, sys
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
log = os.open("worker.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
while (msg := jobs.recv(65536)):
    os.write(log, b"got " + msg + b"\n")
    if msg == b"poison":
        sys.exit(3)
    jobs.send(b"ack")
"#;

const SCRIPTS: [(&str, &str); 4] = [
    ("producer.py", PRODUCER),
    ("confirmer.py", CONFIRMER),
    ("consumer.py", CONSUMER),
    ("poison.py", POISON_WORKER),
];

// ----------------------------------------------------- the harness itself

/// The test's Redis: ready when started, keeps what it acknowledged across
/// a SHUTDOWN with the append-only file on, comes back on the same socket,
/// and is killed when dropped.
#[test]
fn the_private_redis_server_restarts_with_its_data_and_dies_on_drop() {
    let mut redis = RedisServer::start_durable("redis-harness");
    assert_eq!(redis.url(), format!("unix://{}", redis.socket().display()));
    assert!(redis.socket().starts_with(redis.dir()));
    for i in 0..5 {
        let id = redis.cli(&["XADD", "s", "*", "data", &format!("x{i}")]);
        assert!(id.contains('-'), "XADD answered {id}");
    }
    let first = redis.pid().unwrap();
    redis.shutdown();
    assert!(!alive(first.into()), "redis-server {first} still runs");
    assert!(
        std::os::unix::net::UnixStream::connect(redis.socket()).is_err(),
        "the socket still accepts connections after SHUTDOWN"
    );
    redis.start_again();
    assert_eq!(
        xlen(&redis, "s"),
        5,
        "the append-only file kept every write"
    );
    assert!(redis.dir().join("appendonlydir").is_dir());
    let pid = redis.pid().unwrap();
    drop(redis);
    assert!(!alive(pid.into()), "redis-server {pid} outlived its guard");
}

// ------------------------------------------------------------------ tests

/// Two drover instances on one stream: producers in A, consumers in A and
/// B; every message is consumed exactly once, both instances take a
/// share, and the stream is empty at the end.
#[test]
fn two_instances_share_one_stream() {
    const N: usize = 20_000;
    let redis = RedisServer::start("redis-shared");
    let config = |producer: bool| {
        let mut c = redis_queue("jobs", &redis.url(), "prefetch = 16\ncapacity = 1000")
            + &group(
                "consumer",
                r#""consumer.py", "jobs", "done.txt""#,
                "processes = 2\ninputs = [\"jobs\"]",
            );
        if producer {
            c += &group(
                "producer",
                &format!(r#""producer.py", "go", "--count", "{N}""#),
                "outputs = [\"jobs\"]\nrestart = \"never\"",
            );
        }
        c
    };
    let a = Drover::launch("redis-shared-a", &config(true), &SCRIPTS);
    let b = Drover::launch("redis-shared-b", &config(false), &SCRIPTS);
    a.wait_group_state("consumer", "running");
    b.wait_group_state("consumer", "running");
    wait_blocked_readers(&redis, 2);

    let started = Instant::now();
    std::fs::write(a.dir.path().join("go"), "").unwrap();
    let done = [a.dir.path().join("done.txt"), b.dir.path().join("done.txt")];
    let expected = messages(N);
    wait_until_within(&format!("{N} messages consumed"), LONG, || {
        done.iter().map(|p| lines(p).len()).sum::<usize>() >= N && tally(&done).len() >= N
    });
    let took = started.elapsed();
    // (Not wait_until_within: a timeout says what each instance and Redis
    // still hold.)
    let deadline = Instant::now() + LONG;
    loop {
        let (sa, sb) = (a.status(), b.status());
        let settled = count(&sa, "jobs", "acked") + count(&sb, "jobs", "acked") == N as u64
            && [&sa, &sb]
                .iter()
                .all(|s| count(s, "jobs", "depth") == 0 && count(s, "jobs", "in_flight") == 0);
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {LONG:?} waiting for both instances to count every ack of {N}; \
             XLEN {}, {} pending; instance A: {:#}; instance B: {:#}\nA's log:\n{}\nB's log:\n{}",
            xlen(&redis, "drover:jobs"),
            pending(&redis, "drover:jobs", "jobs"),
            queue(&sa, "jobs"),
            queue(&sb, "jobs"),
            tail(&a.stderr.text(), 40),
            tail(&b.stderr.text(), 40),
        );
        std::thread::sleep(Duration::from_millis(20)); // poll interval of a condition wait
    }
    wait_drained(&redis, "drover:jobs", "jobs");

    let seen = tally(&done);
    let duplicates = assert_all_seen(&seen, &expected);
    let (in_a, in_b) = (lines(&done[0]).len(), lines(&done[1]).len());
    eprintln!(
        "{N} messages in {took:?}: instance A consumed {in_a}, instance B {in_b}, \
         {duplicates} duplicates"
    );
    assert_eq!(duplicates, 0, "a run without failures delivers each once");
    assert!(
        in_a > 0 && in_b > 0,
        "both instances consume from the shared stream: A {in_a}, B {in_b}"
    );
    assert_consumers(&redis, "drover:jobs", "jobs", &[a.pid(), b.pid()]);
    let (sa, sb) = (a.status(), b.status());
    for s in [&sa, &sb] {
        assert_eq!(count(s, "jobs", "redelivered"), 0, "{s:#}");
        assert_eq!(count(s, "jobs", "dead_lettered"), 0, "{s:#}");
        assert!(backend_ok(s, "jobs"), "{s:#}");
    }
}

/// `depth` on a shared stream follows what other instances read: A has
/// the producer and no consumer, so nothing makes A write to Redis after
/// its last `XADD`; B starts after that and consumes everything; A's
/// `depth` goes from N to 0 (it stayed at A's last measure before).
#[test]
fn depth_follows_what_another_instance_consumes() {
    const N: u64 = 200;
    let redis = RedisServer::start("redis-depth");
    let a_config = redis_queue("jobs", &redis.url(), "")
        + &group(
            "producer",
            &format!(r#""producer.py", "-", "--count", "{N}""#),
            "outputs = [\"jobs\"]\nrestart = \"never\"",
        );
    let a = Drover::launch("redis-depth-a", &a_config, &SCRIPTS);
    a.wait_status_within("A's depth to count every message", LONG, |s| {
        count(s, "jobs", "depth") == N
    });
    assert_eq!(xlen(&redis, "drover:jobs"), N);

    let b_config = redis_queue("jobs", &redis.url(), "prefetch = 16")
        + &group(
            "consumer",
            r#""consumer.py", "jobs", "done.txt""#,
            "inputs = [\"jobs\"]",
        );
    let b = Drover::launch("redis-depth-b", &b_config, &SCRIPTS);
    let done = b.dir.path().join("done.txt");
    wait_until_within("B to consume every message", LONG, || {
        lines(&done).len() as u64 >= N
    });
    wait_drained(&redis, "drover:jobs", "jobs");
    let status = a.wait_status_within("A's depth to fall to 0", LONG, |s| {
        count(s, "jobs", "depth") == 0
    });
    assert_eq!(count(&status, "jobs", "acked"), 0, "{status:#}");
    b.wait_status_within("B's depth to be 0", LONG, |s| {
        count(s, "jobs", "depth") == 0 && count(s, "jobs", "acked") == N
    });
}

/// Instance A is SIGKILLed while its consumers hold unacked messages
/// (they take 8 at a time and work 2 s on them); instance B, with
/// `claim_idle = "2s"`, claims A's pending entries and delivers them: every
/// produced message is finished at least once, the ones A held among them.
#[test]
fn a_killed_instance_s_unacked_messages_are_claimed_by_the_other() {
    const N: usize = 3_000;
    let redis = RedisServer::start("redis-claim");
    let jobs = redis_queue(
        "jobs",
        &redis.url(),
        "prefetch = 8\nclaim_idle = \"2s\"\ncapacity = 1000",
    );
    let slow = jobs.clone()
        + &group(
            "consumer",
            r#""consumer.py", "jobs", "done.txt", "got.txt", "2""#,
            "processes = 2\ninputs = [\"jobs\"]",
        );
    let fast =
        jobs + &group(
            "consumer",
            r#""consumer.py", "jobs", "done.txt", "got.txt""#,
            "processes = 2\ninputs = [\"jobs\"]",
        ) + &group(
            "producer",
            &format!(r#""producer.py", "-", "--count", "{N}""#),
            "outputs = [\"jobs\"]\nrestart = \"never\"",
        );
    let mut a = Drover::launch("redis-claim-a", &slow, &SCRIPTS);
    a.wait_group_state("consumer", "running");
    wait_blocked_readers(&redis, 1);
    let b = Drover::launch("redis-claim-b", &fast, &SCRIPTS);

    let (got_a, done_a) = (a.dir.path().join("got.txt"), a.dir.path().join("done.txt"));
    wait_until_within("A's consumers to hold messages", LONG, || {
        let got = lines(&got_a).len();
        got > 0 && got > lines(&done_a).len()
    });
    let status_a = a.status();
    a.kill9();
    let killed = Instant::now();
    common::kill_marked(a.marker(), a.dir.path());
    let finished_a: BTreeSet<String> = lines(&done_a).into_iter().collect();
    let held: Vec<String> = lines(&got_a)
        .into_iter()
        .filter(|m| !finished_a.contains(m))
        .collect();
    eprintln!(
        "A killed holding {} unfinished messages (its queue: in flight {}, delivered {})",
        held.len(),
        count(&status_a, "jobs", "in_flight"),
        count(&status_a, "jobs", "delivered"),
    );
    assert!(!held.is_empty(), "A held nothing when it was killed");

    let done_b = b.dir.path().join("done.txt");
    let done = [done_a.clone(), done_b.clone()];
    let expected = messages(N);
    wait_until_within("every message finished, A's held ones by B", LONG, || {
        tally(&done).len() >= N
    });
    eprintln!(
        "everything finished {:?} after the kill (claim_idle 2s)",
        killed.elapsed()
    );
    let finished_b: BTreeSet<String> = lines(&done_b).into_iter().collect();
    let lost: Vec<&String> = held.iter().filter(|m| !finished_b.contains(*m)).collect();
    assert!(lost.is_empty(), "held by A, never finished by B: {lost:?}");
    wait_drained(&redis, "drover:jobs", "jobs");

    let duplicates = assert_all_seen(&tally(&done), &expected);
    let status_b = b.wait_status("B's queue settled", |s| {
        count(s, "jobs", "depth") == 0 && count(s, "jobs", "in_flight") == 0
    });
    eprintln!(
        "{N} messages: A finished {}, B {}; {duplicates} duplicates; B: delivered {}, \
         redelivered {}, acked {}",
        finished_a.len(),
        lines(&done_b).len(),
        count(&status_b, "jobs", "delivered"),
        count(&status_b, "jobs", "redelivered"),
        count(&status_b, "jobs", "acked"),
    );
    assert_eq!(count(&status_b, "jobs", "dead_lettered"), 0, "{status_b:#}");
}

/// Redis (append-only file, `appendfsync always`) is shut down for 2 s in
/// the middle of a confirmed stream and started again on the same socket
/// and directory: `status` shows `backend_error` while it is down, no
/// `ok` is sent meanwhile, the children keep running, the error clears
/// once Redis is back, and every confirmed message is consumed.
#[test]
fn a_redis_outage_loses_no_confirmed_message() {
    const N: usize = 10_000;
    let mut redis = RedisServer::start_durable("redis-outage");
    let config = redis_queue(
        "jobs",
        &redis.url(),
        "confirm = true\nprefetch = 16\ncapacity = 1000",
    ) + &group(
        "producer",
        &format!(r#""confirmer.py", "{N}", "16""#),
        "outputs = [\"jobs\"]\nrestart = \"never\"",
    ) + &group(
        "consumer",
        r#""consumer.py", "jobs", "done.txt""#,
        "inputs = [\"jobs\"]",
    );
    let d = Drover::launch("redis-outage", &config, &SCRIPTS);
    let dir = d.dir.path().to_path_buf();
    let confirmed = dir.join("confirmed.txt");
    wait_until_within("a quarter of the stream confirmed", LONG, || {
        lines(&confirmed).len() >= N / 4
    });
    let before = d.status();
    assert!(
        backend_ok(&before, "jobs"),
        "backend_error is null while Redis works: {before:#}"
    );

    redis.shutdown();
    let down = d.wait_status_within("backend_error while Redis is down", LONG, |s| {
        backend_error(s, "jobs").is_some()
    });
    let error = backend_error(&down, "jobs").unwrap();
    let confirmed_when_down = count(&down, "jobs", "confirmed");
    let at_outage = lines(&confirmed).len();
    eprintln!("Redis down after {at_outage} confirmed; backend_error: {error}");
    assert!(at_outage < N, "the outage came after the stream ended");
    // Redis stays down for 2 s: the length of the outage is the point
    // here. Meanwhile status keeps answering with the error, nothing is
    // confirmed, and the children run on.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let s = d.status();
        assert!(backend_error(&s, "jobs").is_some(), "{s:#}");
        assert_eq!(
            count(&s, "jobs", "confirmed"),
            confirmed_when_down,
            "an `ok` was sent while Redis was down: {s:#}"
        );
        for g in ["producer", "consumer"] {
            let kids = Drover::children(&s, g);
            assert!(kids.iter().all(|c| c["state"] == "running"), "{g}: {s:#}");
        }
        std::thread::sleep(Duration::from_millis(50)); // poll interval of a status watch
    }

    redis.start_again();
    d.wait_status_within("backend_error cleared", LONG, |s| backend_ok(s, "jobs"));
    wait_until_within("the producer to confirm everything", LONG, || {
        lines(&dir.join("producer-done.txt")).len() == 1
    });
    assert!(
        !dir.join("refused.txt").exists(),
        "refusals: {:?}",
        lines(&dir.join("refused.txt"))
    );
    let expected = messages(N);
    let confirmed_set: BTreeSet<String> = lines(&confirmed).into_iter().collect();
    assert_eq!(confirmed_set, expected, "every message was confirmed once");
    let done = [dir.join("done.txt")];
    wait_until_within("every confirmed message consumed", LONG, || {
        tally(&done).len() >= N
    });
    wait_drained(&redis, "drover:jobs", "jobs");
    let duplicates = assert_all_seen(&tally(&done), &expected);
    let status = d.wait_status("the queue settled", |s| {
        count(s, "jobs", "depth") == 0 && count(s, "jobs", "in_flight") == 0
    });
    eprintln!(
        "{N} confirmed, all consumed; {duplicates} duplicates; sent {} packets; \
         queue: redelivered {}, acked {}",
        lines(&dir.join("sent.txt")).len(),
        count(&status, "jobs", "redelivered"),
        count(&status, "jobs", "acked"),
    );
    assert!(backend_ok(&status, "jobs"), "{status:#}");
}

/// A read whose reply never reached drover — Redis handed the entries to
/// this instance's consumer name, then the connection broke (Redis shut
/// down, a timeout) — leaves entries in the instance's own pending list
/// that it never saw, and that no other instance would claim before
/// `claim_idle` (here an hour, and there is no other instance). The test
/// makes one: while the consumer works on a message (3 s), it stops
/// drover (SIGSTOP, all its threads), kills drover's connections and
/// reads three entries as drover's consumer itself. Once drover runs
/// again it must deliver those at once, and not deliver again the message
/// its consumer still holds (the reconnect reads it back from the same
/// pending list).
#[test]
fn entries_whose_read_reply_was_lost_are_delivered_after_the_reconnect() {
    let redis = RedisServer::start("redis-lost-reply");
    let config = redis_queue("jobs", &redis.url(), "claim_idle = \"1h\"\nprefetch = 8")
        + &group(
            "consumer",
            r#""consumer.py", "jobs", "done.txt", "got.txt", "3""#,
            "inputs = [\"jobs\"]",
        );
    let d = Drover::launch("redis-lost-reply", &config, &SCRIPTS);
    let got = d.dir.path().join("got.txt");
    let done = [d.dir.path().join("done.txt")];
    wait_blocked_readers(&redis, 1);
    redis.cli(&["XADD", "drover:jobs", "*", "data", "held"]);
    wait_until_within("the consumer working on the first message", LONG, || {
        lines(&got).iter().any(|m| m == "held")
    });
    let me = format!("{}:{}", hostname(), d.pid());
    assert_consumers(&redis, "drover:jobs", "jobs", &[d.pid()]);

    d.signal(libc::SIGSTOP);
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    for m in ["lost1", "lost2", "lost3"] {
        redis.cli(&["XADD", "drover:jobs", "*", "data", m]);
    }
    let read = redis.cli(&[
        "XREADGROUP",
        "GROUP",
        "jobs",
        &me,
        "COUNT",
        "10",
        "STREAMS",
        "drover:jobs",
        ">",
    ]);
    d.signal(libc::SIGCONT);
    assert!(read.contains("lost3"), "read as {me}: {read}");
    assert!(
        !tally(&done).contains_key("held"),
        "the consumer finished its message before the connections were killed: make it slower"
    );
    assert_eq!(pending(&redis, "drover:jobs", "jobs"), 4, "killed {killed}");

    let expected: BTreeSet<String> = ["held", "lost1", "lost2", "lost3"]
        .iter()
        .map(|m| m.to_string())
        .collect();
    wait_until_within("the three entries drover never saw consumed", LONG, || {
        expected.iter().all(|m| tally(&done).contains_key(m))
    });
    wait_drained(&redis, "drover:jobs", "jobs");
    let duplicates = assert_all_seen(&tally(&done), &expected);
    assert_eq!(duplicates, 0, "delivered twice: {:?}", tally(&done));
    assert_eq!(lines(&got).len(), 4, "delivered twice: {:?}", lines(&got));
}

/// `rediss://`: drover speaks TLS to Redis and checks the server's
/// certificate. Signed by a private CA that drover was not told about,
/// it is refused and `status` says why; with the CA in `SSL_CERT_FILE`,
/// 100 messages go through the TLS-only port end to end.
#[test]
fn rediss_checks_the_server_certificate() {
    let certs = TempDir::new("redis-tls-certs");
    make_certificates(certs.path());
    let redis = RedisServer::start_with(
        "redis-tls",
        Options {
            tcp: true,
            tls: Some(certs.path().to_path_buf()),
            ..Options::default()
        },
    );
    let url = format!("rediss://localhost:{}/0", redis.port().unwrap());
    let config = redis_queue("jobs", &url, "")
        + &group(
            "producer",
            r#""producer.py", "-", "--count", "100""#,
            "outputs = [\"jobs\"]\nrestart = \"never\"",
        )
        + &group(
            "consumer",
            r#""consumer.py", "jobs", "done.txt""#,
            "inputs = [\"jobs\"]",
        );

    // Another private CA: a valid bundle that does not hold Redis's issuer.
    let other = TempDir::new("redis-tls-other-ca");
    make_certificates(other.path());
    let other_ca = other.path().join("ca.pem");
    let untrusted = Drover::launch_with_env(
        "redis-tls-untrusted",
        &config,
        &SCRIPTS,
        &[("SSL_CERT_FILE", other_ca.to_str().unwrap())],
    );
    let status = untrusted.wait_status_within("a certificate error", LONG, |s| {
        backend_error(s, "jobs").is_some()
    });
    let error = backend_error(&status, "jobs").unwrap();
    eprintln!("with another CA: {error}");
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
        "not a certificate error: {error}"
    );
    drop(untrusted);

    let ca = certs.path().join("ca.pem");
    let d = Drover::launch_with_env(
        "redis-tls",
        &config,
        &SCRIPTS,
        &[("SSL_CERT_FILE", ca.to_str().unwrap())],
    );
    let done = [d.dir.path().join("done.txt")];
    wait_until_within("100 messages consumed over TLS", LONG, || {
        tally(&done).len() >= 100
    });
    assert_all_seen(&tally(&done), &messages(100));
    wait_drained(&redis, "drover:jobs", "jobs");
    assert!(backend_ok(&d.status(), "jobs"), "{:#}", d.status());
}

/// A message that makes its consumer exit, with consumers in two
/// instances: after `max_deliveries = 3` deliveries it goes to the
/// Redis-backed `dead` queue, whose workers in both instances record it
/// exactly once; the messages around it are consumed normally.
#[test]
fn a_poison_message_is_dead_lettered_once_across_instances() {
    let redis = RedisServer::start("redis-poison");
    let sent: Vec<String> = (0..10)
        .map(|i| format!("m{i}"))
        .chain(["poison".to_owned()])
        .chain((10..20).map(|i| format!("m{i}")))
        .collect();
    let config = |producer: bool| {
        let mut c = redis_queue(
            "jobs",
            &redis.url(),
            "max_deliveries = 3\ndead_letter = \"dead\"",
        ) + &redis_queue("dead", &redis.url(), "")
            + &group(
                "worker",
                r#""poison.py""#,
                "inputs = [\"jobs\"]\nmax_restarts = 100",
            )
            + &group(
                "graveyard",
                r#""consumer.py", "dead", "graveyard.txt""#,
                "inputs = [\"dead\"]",
            );
        if producer {
            let quoted: Vec<String> = sent.iter().map(|m| format!("\"{m}\"")).collect();
            c += &group(
                "producer",
                &format!(r#""producer.py", "go", {}"#, quoted.join(", ")),
                "outputs = [\"jobs\"]\nrestart = \"never\"",
            );
        }
        c
    };
    let a = Drover::launch("redis-poison-a", &config(true), &SCRIPTS);
    let b = Drover::launch("redis-poison-b", &config(false), &SCRIPTS);
    a.wait_group_state("worker", "running");
    b.wait_group_state("worker", "running");
    wait_blocked_readers(&redis, 4);
    std::fs::write(a.dir.path().join("go"), "").unwrap();

    let workers = [
        a.dir.path().join("worker.txt"),
        b.dir.path().join("worker.txt"),
    ];
    let graves = [
        a.dir.path().join("graveyard.txt"),
        b.dir.path().join("graveyard.txt"),
    ];
    let want: Vec<String> = sent
        .iter()
        .filter(|m| *m != "poison")
        .map(|m| format!("got {m}"))
        .collect();
    wait_until_within("the other messages consumed", LONG, || {
        let seen = tally(&workers);
        want.iter().all(|w| seen.contains_key(w))
    });
    wait_until_within("the poison in a graveyard", LONG, || {
        tally(&graves).contains_key("poison")
    });
    wait_until_within("one dead letter counted", LONG, || {
        count(&a.status(), "jobs", "dead_lettered") + count(&b.status(), "jobs", "dead_lettered")
            == 1
    });
    // Nothing is left anywhere that could bring it again.
    wait_drained(&redis, "drover:jobs", "jobs");
    wait_drained(&redis, "drover:dead", "dead");

    let seen = tally(&workers);
    let per_instance: Vec<usize> = workers
        .iter()
        .map(|p| {
            lines(p)
                .iter()
                .filter(|l| l.as_str() == "got poison")
                .count()
        })
        .collect();
    eprintln!(
        "poison delivered {per_instance:?} times in A, B; graveyards: A {:?}, B {:?}",
        lines(&graves[0]),
        lines(&graves[1])
    );
    assert_eq!(
        seen.get("got poison"),
        Some(&3),
        "delivered max_deliveries times in all: {seen:?}"
    );
    let mut dead: Vec<String> = graves.iter().flat_map(|p| lines(p)).collect();
    dead.sort();
    assert_eq!(dead, ["poison"], "one dead letter, recorded once");
    let (sa, sb) = (a.status(), b.status());
    for s in [&sa, &sb] {
        for q in ["jobs", "dead"] {
            assert_eq!(count(s, q, "depth"), 0, "{q}: {s:#}");
            assert_eq!(count(s, q, "in_flight"), 0, "{q}: {s:#}");
        }
    }
    assert_eq!(
        count(&sa, "dead", "acked") + count(&sb, "dead", "acked"),
        1,
        "A: {sa:#}\nB: {sb:#}"
    );
}

// ------------------------------------------------------------------ check

/// `drover check FILE` with `env` set and `unset` removed from its
/// environment: (exit code, stderr).
fn check(file: &Path, env: &[(&str, &str)], unset: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(common::drover_bin());
    cmd.arg("check").arg(file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    let out = cmd.output().expect("run drover check");
    let code = out.status.code().unwrap_or(-1);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (code, text)
}

/// An env var no test sets.
const UNSET: &str = "DROVER_TEST_NEVER_SET_REDIS_URL";

/// Redis queues `check` accepts: every URL form, `stream`, `claim_idle`,
/// an `${ENV}` URL set in the environment, and the usual queue keys.
#[test]
fn check_accepts_redis_queues() {
    let dir = TempDir::new("redis-check-ok");
    let file = dir.write(
        "drover.toml",
        r#"
[queue.jobs]
backend = "redis"
url = "redis://127.0.0.1:6379/0"
stream = "app:jobs"
claim_idle = "5s"
capacity = 500
prefetch = 8
max_deliveries = 3
dead_letter = "dead"
ack_timeout = "1m"
confirm = true

[queue.dead]
backend = "redis"
url = "${DROVER_TEST_REDIS_URL}"

[queue.tls]
backend = "redis"
url = "rediss://user:pass@redis.example.com:6380/2"

[queue.sock]
backend = "redis"
url = "unix:///run/redis/redis.sock"

[queue.memory]
backend = "local"

[group.worker]
command = ["sh", "-c", "exit 0"]
inputs = ["jobs", "dead", "tls", "sock", "memory"]
"#,
    );
    let (code, text) = check(
        &file,
        &[("DROVER_TEST_REDIS_URL", "unix:///tmp/redis.sock")],
        &[],
    );
    assert_eq!(code, 0, "a valid config with Redis queues: {text}");
    assert!(!text.contains("error"), "{text}");
}

/// Whether `text` has an error located at `file` on one of `lines`
/// (`--> FILE:LINE:COL`).
fn located(text: &str, file: &Path, lines: &[usize]) -> bool {
    let at = |line: &usize| format!(" --> {}:{line}:", file.display());
    text.contains("error: ") && lines.iter().any(|l| text.contains(&at(l)))
}

/// One mistake for `check`: the config, the lines an error may point at,
/// and the edit (`from` → `to`) that fixes it, so that the error is known
/// to come from the mistake and nothing else.
struct Mistake {
    name: &'static str,
    config: &'static str,
    at: &'static [usize],
    fix: (&'static str, &'static str),
}

/// Each mistake in a Redis queue is an error of `check`, located at the
/// line that makes it: a URL that does not parse, a scheme that is not
/// Redis's, two queues on one stream of one server (also through the
/// default stream name), `durable` on a Redis queue, and an `${ENV}` URL
/// whose variable is not set. Fixed, each config is valid.
#[test]
fn check_rejects_bad_redis_queues_with_located_errors() {
    let mistakes = [
        Mistake {
            name: "bad_url",
            config: r#"[queue.jobs]
backend = "redis"
url = "redis://host:notaport"
"#,
            at: &[3],
            fix: (":notaport", ":6379"),
        },
        Mistake {
            name: "unknown_scheme",
            config: r#"[queue.jobs]
backend = "redis"
url = "http://127.0.0.1:6379"
"#,
            at: &[3],
            fix: ("http://", "redis://"),
        },
        Mistake {
            name: "same_stream_same_url",
            config: r#"[queue.a]
backend = "redis"
url = "redis://127.0.0.1:6379/0"
stream = "shared"

[queue.b]
backend = "redis"
url = "redis://127.0.0.1:6379/0"
stream = "shared"
"#,
            at: &[1, 4, 6, 9],
            fix: ("stream = \"shared\"\n\n", "stream = \"other\"\n\n"),
        },
        Mistake {
            name: "stream_is_another_queue_s_default",
            config: r#"[queue.a]
backend = "redis"
url = "unix:///run/redis.sock"
stream = "drover:b"

[queue.b]
backend = "redis"
url = "unix:///run/redis.sock"
"#,
            at: &[4, 6, 7, 8],
            fix: ("\"drover:b\"", "\"drover:c\""),
        },
        Mistake {
            name: "durable_redis",
            config: r#"[queue.jobs]
backend = "redis"
url = "redis://127.0.0.1:6379/0"
durable = true
"#,
            at: &[2, 4],
            fix: ("durable = true", "durable = false"),
        },
        Mistake {
            name: "unset_env_url",
            config: r#"[queue.jobs]
backend = "redis"
url = "${DROVER_TEST_NEVER_SET_REDIS_URL}"
"#,
            at: &[3],
            fix: (UNSET, "DROVER_TEST_REDIS_URL"),
        },
    ];
    let dir = TempDir::new("redis-check-errors");
    let env = [("DROVER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")];
    let mut failures = Vec::new();
    for m in mistakes {
        let file = dir.write(&format!("{}.toml", m.name), m.config);
        let (code, text) = check(&file, &env, &[UNSET]);
        eprintln!("--- {}: exit {code}\n{text}", m.name);
        if code != 1 || !located(&text, &file, m.at) {
            failures.push(format!(
                "{}: exit {code}, wanted 1 and an error at line {:?}",
                m.name, m.at
            ));
        }
        assert!(m.config.contains(m.fix.0), "{}: the fix applies", m.name);
        let fixed = dir.write(
            &format!("{}-fixed.toml", m.name),
            &m.config.replacen(m.fix.0, m.fix.1, 1),
        );
        let (code, text) = check(&fixed, &env, &[UNSET]);
        if code != 0 {
            failures.push(format!("{} fixed: exit {code}, wanted 0:\n{text}", m.name));
        }
    }
    assert!(
        failures.is_empty(),
        "cases without their located error:\n{}",
        failures.join("\n")
    );
}

/// A URL's password never reaches `check`'s output, also when the URL is
/// the error and its line is quoted.
#[test]
fn check_does_not_print_a_url_password() {
    let dir = TempDir::new("redis-check-password");
    let file = dir.write(
        "drover.toml",
        r#"[queue.jobs]
backend = "redis"
url = "redis://drover:hunter2-check-secret@host:notaport/0"
"#,
    );
    let (code, text) = check(&file, &[], &[]);
    eprintln!("{text}");
    assert_eq!(code, 1, "{text}");
    assert!(located(&text, &file, &[3]), "{text}");
    assert!(
        !text.contains("hunter2-check-secret"),
        "the password is printed: {text}"
    );
}

// ----------------------------------------------------------------- status

/// `status` of Redis queues: `backend`, `stream` and the URL with its
/// password redacted; `backend_error` names a refused login without the
/// password; no password anywhere in `status` (JSON or text) or in
/// drover's log, at debug level.
#[test]
fn status_shows_the_backend_and_stream_and_never_a_password() {
    const GOOD: &str = "s3cret-Right-Pass";
    const BAD: &str = "s3cret-Wrong-Pass";
    let redis = RedisServer::start_with(
        "redis-status",
        Options {
            tcp: true,
            args: [
                "--user",
                "drover",
                "on",
                &format!(">{GOOD}"),
                "~*",
                "&*",
                "+@all",
            ]
            .map(String::from)
            .to_vec(),
            ..Options::default()
        },
    );
    let port = redis.port().unwrap();
    let url = |pass: &str| format!("redis://drover:{pass}@127.0.0.1:{port}/0");
    let config = redis_queue("jobs", &url(GOOD), "")
        + &redis_queue("refused", &url(BAD), "stream = \"custom:refused\"")
        + "\n[queue.memory]\n"
        + &group(
            "producer",
            r#""producer.py", "-", "--count", "10""#,
            "outputs = [\"jobs\"]\nrestart = \"never\"",
        )
        + &group(
            "consumer",
            r#""consumer.py", "jobs", "done.txt""#,
            "inputs = [\"jobs\"]",
        )
        + &group(
            "login_refused",
            r#""consumer.py", "refused", "refused.txt""#,
            "inputs = [\"refused\"]",
        )
        + &group(
            "memory_consumer",
            r#""consumer.py", "memory", "memory.txt""#,
            "inputs = [\"memory\"]",
        );
    let d = Drover::launch("redis-status", &config, &SCRIPTS);
    let done = d.dir.path().join("done.txt");
    wait_until_within("the 10 messages through Redis", LONG, || {
        lines(&done).len() >= 10
    });
    let status = d.wait_status_within("the refused login in status", LONG, |s| {
        backend_ok(s, "jobs") && backend_error(s, "refused").is_some()
    });

    let jobs = queue(&status, "jobs");
    assert_eq!(jobs["backend"], "redis", "{status:#}");
    assert_eq!(jobs["stream"], "drover:jobs", "{status:#}");
    let shown = jobs["url"].as_str().expect("a Redis queue shows its url");
    assert!(
        shown.contains(&format!("127.0.0.1:{port}")) && shown.starts_with("redis://"),
        "the url shows the server: {shown}"
    );
    let refused = queue(&status, "refused");
    assert_eq!(refused["backend"], "redis", "{status:#}");
    assert_eq!(refused["stream"], "custom:refused", "{status:#}");
    let error = backend_error(&status, "refused").unwrap();
    eprintln!("url shown: {shown}; a refused login: {error}");
    let memory = queue(&status, "memory");
    assert_eq!(memory["backend"], "local", "{status:#}");
    assert!(backend_ok(&status, "memory"), "{status:#}");
    wait_drained(&redis, "drover:jobs", "jobs");

    let json = d.cli(&["status", "--json"]);
    let text = d.cli(&["status"]);
    assert!(json.status.success() && text.status.success());
    let outputs = [
        (
            "status --json",
            String::from_utf8_lossy(&json.stdout).into_owned(),
        ),
        ("status", String::from_utf8_lossy(&text.stdout).into_owned()),
        ("drover's stderr", d.stderr.text()),
        ("drover's stdout", d.stdout.text()),
    ];
    for (what, out) in &outputs {
        for pass in [GOOD, BAD] {
            assert!(
                !out.contains(pass),
                "the password {pass} appears in {what}:\n{out}"
            );
        }
    } // Last, so that a failure here hides none of the above: while Redis
    // works, `backend_error` is there, as null.
    for q in ["jobs", "memory"] {
        assert_eq!(
            queue(&status, q).get("backend_error"),
            Some(&Value::Null),
            "queue {q} lists `backend_error`, null while nothing is wrong: {status:#}"
        );
    }
}
