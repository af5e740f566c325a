//! Queues on the real binary:
//! SEQPACKET sockets wired into every child, at-least-once and at-most-once
//! delivery, prefetch, acks and nacks, redelivery when a consumer dies,
//! dead letters (to a file under `state_dir` or to another queue),
//! oversized messages, back-pressure with bounded memory, every start method,
//! and a graceful shutdown that drains a pipeline from source to sink.
//!
//! The workers are small Python programs kept below as strings and written
//! into each test's directory; they reach their queues exactly as the queue protocol
//! shows, through the `DROVER_IN_*` / `DROVER_OUT_*` fds.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Drover, count, queue, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

fn launch(name: &str, config: &str, scripts: &[(&str, &str)]) -> Drover {
    Drover::launch(name, config, scripts)
}

/// Sum of the `restarts` of `group`'s children.
fn restarts(status: &Value, group: &str) -> u64 {
    Drover::children(status, group)
        .iter()
        .map(|c| c["restarts"].as_u64().unwrap())
        .sum()
}

/// How many times each line occurs in a file the sink writes (a missing
/// file is empty: the sink has not started).
fn tally_file(path: &Path) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    tally(whole_lines(&text))
}

/// The complete lines of a file another process may be appending to.
fn whole_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
}

fn tally<'a>(lines: impl Iterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for line in lines {
        *seen.entry(line.to_owned()).or_insert(0) += 1;
    }
    seen
}

/// The lines of `text` that start with `prefix`, without it.
fn printed<'a>(text: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.lines().filter_map(move |l| l.strip_prefix(prefix))
}

/// Asserts that `seen` holds every line of `expected` and nothing else;
/// returns the number of extra copies (duplicates).
fn assert_all_arrived(seen: &HashMap<String, usize>, expected: &[String]) -> usize {
    let missing: Vec<&String> = expected.iter().filter(|e| !seen.contains_key(*e)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages never arrived, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(10)]
    );
    let wanted: HashSet<&str> = expected.iter().map(String::as_str).collect();
    let extra: Vec<&String> = seen
        .keys()
        .filter(|k| !wanted.contains(k.as_str()))
        .collect();
    assert!(extra.is_empty(), "unexpected messages: {extra:?}");
    seen.values().map(|n| n - 1).sum()
}

/// The records of `<state_dir>/dead-letters/<queue>.jsonl`.
fn dead_letters(d: &Drover, queue: &str) -> Vec<Value> {
    let path = d
        .dir
        .path()
        .join("state/dead-letters")
        .join(format!("{queue}.jsonl"));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    whole_lines(&text)
        .map(|l| serde_json::from_str(l).expect("a dead-letter record is one JSON line"))
        .collect()
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn numbers(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

// ---------------------------------------------------------------- workers

/// `producer.py N [PREFIX]`: sends PREFIX0 .. PREFIX(N-1) to `jobs`, says
/// so, then idles (it must not be restarted to send them again).
const PRODUCER: &str = r#"
import os, signal, socket, sys
out = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
n = int(sys.argv[1])
prefix = sys.argv[2] if len(sys.argv) > 2 else ""
for i in range(n):
    out.send(f"{prefix}{i}".encode())
print(f"sent {n}", flush=True)
signal.pause()
"#;

/// `forward.py`: jobs → results, one message at a time, ack after forwarding.
const FORWARD: &str = r#"
import os, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
results = socket.socket(fileno=int(os.environ["DROVER_OUT_RESULTS"]))
while (msg := jobs.recv(65536)):
    results.send(msg)
    jobs.send(b"ack")
"#;

/// `forward_batch.py`: like `forward.py`, taking up to 64 messages (the
/// prefetch) per wake-up; every one is forwarded before any is acked.
const FORWARD_BATCH: &str = r#"
import os, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
results = socket.socket(fileno=int(os.environ["DROVER_OUT_RESULTS"]))
while (first := jobs.recv(65536)):
    batch = [first]
    try:
        while len(batch) < 64 and (msg := jobs.recv(65536, socket.MSG_DONTWAIT)):
            batch.append(msg)
    except BlockingIOError:
        pass
    for msg in batch:
        results.send(msg)
    for msg in batch:
        jobs.send(b"ack")
"#;

/// `sink.py FILE`: appends every message of `results` to FILE, one a line,
/// written (unbuffered) before it is acked.
const SINK_FILE: &str = r#"
import os, socket, sys
results = socket.socket(fileno=int(os.environ["DROVER_IN_RESULTS"]))
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
while (first := results.recv(65536)):
    batch = [first]
    try:
        while len(batch) < 64 and (msg := results.recv(65536, socket.MSG_DONTWAIT)):
            batch.append(msg)
    except BlockingIOError:
        pass
    os.write(fd, b"".join(m + b"\n" for m in batch))
    for msg in batch:
        results.send(b"ack")
"#;

/// `sink_print.py`: prints every message of `results` and acks it; prints
/// `sink closed` when the queue closes. Ignores SIGTERM so that only the
/// closed queue ends it.
const SINK_PRINT: &str = r#"
import os, signal, socket
signal.signal(signal.SIGTERM, signal.SIG_IGN)
results = socket.socket(fileno=int(os.environ["DROVER_IN_RESULTS"]))
while (msg := results.recv(65536)):
    print(msg.decode(), flush=True)
    results.send(b"ack")
print("sink closed", flush=True)
"#;

/// The pipeline of the throughput and kill-storm tests.
fn pipeline(n: usize, prefetch: u32, worker_script: &str) -> String {
    format!(
        r#"
[supervisor]
state_dir = "state"

[queue.jobs]
capacity = 5000
prefetch = {prefetch}
max_deliveries = 1000

[queue.results]
capacity = 5000
prefetch = 64

[group.producer]
command = ["@PY@", "producer.py", "{n}"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.workers]
command = ["@PY@", "{worker_script}"]
processes = 3
inputs = ["jobs"]
outputs = ["results"]
start_secs = "100ms"

[group.sink]
command = ["@PY@", "sink.py", "sink.txt"]
inputs = ["results"]
start_secs = "100ms"
"#
    )
}

/// Waits until the sink's file holds every one of `0..n` (at least once).
fn wait_sink_complete(d: &Drover, n: usize) -> (Value, HashMap<String, usize>) {
    let file = d.dir.path().join("sink.txt");
    let expected = numbers(n);
    let status = d.wait_status(&format!("all {n} numbers at the sink"), |s| {
        // Cheap gate first: the sink has acked at least n messages.
        count(s, "results", "acked") >= n as u64 && {
            let seen = tally_file(&file);
            expected.iter().all(|e| seen.contains_key(e))
        }
    });
    (status, tally_file(&file))
}

// ------------------------------------------------------------------ tests

#[test]
fn a_hundred_thousand_messages_pass_a_pipeline_exactly_once() {
    const N: usize = 100_000;
    let started = Instant::now();
    let d = launch(
        "throughput",
        &pipeline(N, 64, "forward_batch.py"),
        &[
            ("producer.py", PRODUCER),
            ("forward_batch.py", FORWARD_BATCH),
            ("sink.py", SINK_FILE),
        ],
    );
    let (_, seen) = wait_sink_complete(&d, N);
    let duplicates = assert_all_arrived(&seen, &numbers(N));
    println!("{N} messages in {:?}", started.elapsed());
    assert_eq!(duplicates, 0, "nothing died, so nothing may arrive twice");
    d.stdout.wait_for("the producer's report", |t| {
        t.contains(&format!("producer[0] sent {N}"))
    });
    let status = d.wait_status("both queues settled", |s| {
        count(s, "jobs", "acked") == N as u64 && count(s, "results", "acked") == N as u64
    });
    for q in ["jobs", "results"] {
        assert_eq!(count(&status, q, "delivered"), N as u64, "{q}: {status:#}");
        assert_eq!(count(&status, q, "depth"), 0, "{q}");
        assert_eq!(count(&status, q, "in_flight"), 0, "{q}");
        assert_eq!(count(&status, q, "redelivered"), 0, "{q}");
        assert_eq!(count(&status, q, "dead_lettered"), 0, "{q}");
    }
    assert_eq!(restarts(&status, "workers"), 0);
}

#[test]
fn a_kill_storm_among_consumers_loses_nothing() {
    const N: usize = 10_000;
    let started = Instant::now();
    let d = launch(
        "storm",
        &pipeline(N, 1, "forward.py"),
        &[
            ("producer.py", PRODUCER),
            ("forward.py", FORWARD),
            ("sink.py", SINK_FILE),
        ],
    );
    d.wait_group_state("workers", "running");
    let stop = AtomicBool::new(false);
    let (kills, mid_stream) = (AtomicU64::new(0), AtomicU64::new(0));
    let (status, seen) = std::thread::scope(|scope| {
        scope.spawn(|| storm(&d, &stop, &kills, &mid_stream));
        let _stop = SetOnDrop(&stop);
        wait_sink_complete(&d, N)
    });
    let (kills, mid_stream) = (kills.into_inner(), mid_stream.into_inner());
    let duplicates = assert_all_arrived(&seen, &numbers(N));
    let redelivered = count(&status, "jobs", "redelivered");
    println!(
        "kill storm: {N} messages in {:?}, {kills} consumers killed \
         ({mid_stream} with a backlog), {redelivered} redeliveries, \
         {duplicates} duplicates at the sink",
        started.elapsed()
    );
    assert!(
        mid_stream > 0,
        "the storm killed nobody while the stream ran"
    );
    assert!(
        restarts(&status, "workers") > 0,
        "drover restarted no consumer: {status:#}"
    );
    // Each kill of a consumer with a message in hand is a redelivery, and
    // consumers always hold one while the queue has a backlog. A duplicate
    // needs a kill between forwarding and the broker reading the ack: likely
    // in a storm, never certain, so only bounded here.
    assert!(redelivered > 0, "no kill hit a consumer mid-message");
    assert!(
        duplicates as u64 <= redelivered,
        "{duplicates} duplicates from {redelivered} redeliveries"
    );
    for q in ["jobs", "results"] {
        assert_eq!(count(&status, q, "dead_lettered"), 0, "{q}: {status:#}");
    }
    assert_eq!(
        count(&status, "results", "redelivered"),
        0,
        "the sink never died"
    );
    assert!(dead_letters(&d, "jobs").is_empty());
}

/// Most consumers the storm kills: enough to hit many of them mid-message,
/// few enough that the stream still ends quickly on a loaded machine
/// (every kill costs a Python start).
const MAX_KILLS: u64 = 100;

/// SIGKILLs a random running consumer every few milliseconds until `stop`
/// (or [`MAX_KILLS`]). Counts the kills, and those made while `jobs` had a
/// backlog (when every consumer holds a message).
fn storm(d: &Drover, stop: &AtomicBool, kills: &AtomicU64, mid_stream: &AtomicU64) {
    let marker = format!("DROVER_TEST_MARKER={}", d.dir.path().display());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = seed | 1;
    while !stop.load(Ordering::Relaxed) && kills.load(Ordering::Relaxed) < MAX_KILLS {
        std::thread::sleep(Duration::from_millis(5)); // the storm's pace, not a wait
        let out = d.cli(&["status", "--json"]);
        let Ok(status) = serde_json::from_slice::<Value>(&out.stdout) else {
            continue;
        };
        let pids: Vec<i64> = Drover::children(&status, "workers")
            .iter()
            .filter(|c| c["state"] == "running")
            .filter_map(|c| c["pid"].as_i64())
            .collect();
        if !pids.is_empty() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let pid = pids[(rng % pids.len() as u64) as usize];
            // Make sure the PID is still one of our workers, not a reuse.
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let ours = |kv: &[u8]| env.split(|&b| b == 0).any(|x| x == kv);
            if ours(marker.as_bytes())
                && ours(b"DROVER_GROUP=workers")
                && kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok()
            {
                kills.fetch_add(1, Ordering::Relaxed);
                if count(&status, "jobs", "depth") > 0 {
                    mid_stream.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Sets its flag when dropped, also while a failed wait unwinds (so that a
/// scoped thread watching the flag ends and the panic can surface).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// `poison.py`: forwards and acks everything but `poison`, on which it
/// SIGKILLs itself.
const POISON_WORKER: &str = r#"
import os, signal, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
results = socket.socket(fileno=int(os.environ["DROVER_OUT_RESULTS"]))
while (msg := jobs.recv(65536)):
    if msg == b"poison":
        os.kill(os.getpid(), signal.SIGKILL)
    results.send(msg)
    jobs.send(b"ack")
"#;

/// Sends m0..m49, poison, m50..m99.
const POISON_PRODUCER: &str = r#"
import os, signal, socket
out = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
for i in range(100):
    if i == 50:
        out.send(b"poison")
    out.send(f"m{i}".encode())
print("sent all", flush=True)
signal.pause()
"#;

fn poison_config(dead_letter: &str) -> String {
    format!(
        r#"
[supervisor]
state_dir = "state"

[queue.jobs]
max_deliveries = 3
{dead_letter}

[queue.results]

[group.producer]
command = ["@PY@", "producer.py"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.workers]
command = ["@PY@", "poison.py"]
processes = 2
inputs = ["jobs"]
outputs = ["results"]
start_secs = "100ms"

[group.sink]
command = ["@PY@", "sink.py"]
inputs = ["results"]
start_secs = "100ms"
"#
    )
}

fn expected_m() -> Vec<String> {
    (0..100).map(|i| format!("m{i}")).collect()
}

/// Waits until the sink printed m0..m99 and returns how often each came.
fn wait_sink_printed(d: &Drover, expected: &[String]) -> HashMap<String, usize> {
    let text = d.stdout.wait_for("every message at the sink", |t| {
        let seen = tally(printed(t, "sink[0] "));
        expected.iter().all(|e| seen.contains_key(e))
    });
    tally(printed(&text, "sink[0] "))
}

#[test]
fn a_poison_message_is_dead_lettered_to_a_file_after_max_deliveries() {
    let d = launch(
        "poison",
        &poison_config(""),
        &[
            ("producer.py", POISON_PRODUCER),
            ("poison.py", POISON_WORKER),
            ("sink.py", SINK_PRINT),
        ],
    );
    let seen = wait_sink_printed(&d, &expected_m());
    assert_eq!(assert_all_arrived(&seen, &expected_m()), 0);
    let status = d.wait_status("the poison dead-lettered, the rest acked", |s| {
        count(s, "jobs", "dead_lettered") == 1 && count(s, "jobs", "acked") == 100
    });
    wait_until("the dead-letter record", || {
        !dead_letters(&d, "jobs").is_empty()
    });
    let records = dead_letters(&d, "jobs");
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["queue"], "jobs");
    assert_eq!(r["message"], "poison");
    assert_eq!(r["bytes"], 6);
    assert_eq!(r["deliveries"], 3, "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("delivered 3 times"), "{reason}");
    assert!(r["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{r}");
    // Three deliveries, three deaths; only the poison came back.
    assert_eq!(count(&status, "jobs", "redelivered"), 2, "{status:#}");
    assert_eq!(count(&status, "jobs", "acked"), 100);
    assert_eq!(count(&status, "jobs", "in_flight"), 0);
    assert_eq!(count(&status, "jobs", "depth"), 0);
    let status = d.wait_status("three worker restarts", |s| restarts(s, "workers") == 3);
    assert_eq!(count(&status, "results", "dead_lettered"), 0);
    d.stderr.wait_for("a log line naming the dead letter", |t| {
        t.contains("queue jobs: message of 6 bytes dead-lettered to ")
            && t.contains("delivered 3 times")
    });
}

/// `graveyard.py`: prints what reaches the dead-letter queue.
const GRAVEYARD: &str = r#"
import os, socket
dead = socket.socket(fileno=int(os.environ["DROVER_IN_DEAD"]))
while (msg := dead.recv(65536)):
    print("dead:", msg.decode(), flush=True)
    dead.send(b"ack")
"#;

#[test]
fn a_poison_message_goes_to_the_dead_letter_queue_when_one_is_named() {
    let config = poison_config("dead_letter = \"dead\"")
        + r#"
[queue.dead]

[group.graveyard]
command = ["@PY@", "graveyard.py"]
inputs = ["dead"]
start_secs = "100ms"
"#;
    let d = launch(
        "deadqueue",
        &config,
        &[
            ("producer.py", POISON_PRODUCER),
            ("poison.py", POISON_WORKER),
            ("sink.py", SINK_PRINT),
            ("graveyard.py", GRAVEYARD),
        ],
    );
    let seen = wait_sink_printed(&d, &expected_m());
    assert_eq!(assert_all_arrived(&seen, &expected_m()), 0);
    let status = d.wait_status("the graveyard to ack the poison", |s| {
        count(s, "dead", "acked") == 1
    });
    d.stdout.wait_for("the poison in the graveyard", |t| {
        t.contains("graveyard[0] dead: poison\n")
    });
    assert_eq!(count(&status, "jobs", "dead_lettered"), 1, "{status:#}");
    assert_eq!(count(&status, "jobs", "redelivered"), 2);
    assert_eq!(count(&status, "dead", "delivered"), 1);
    assert_eq!(count(&status, "dead", "dead_lettered"), 0);
    assert_eq!(
        d.stdout.text().matches("graveyard[0] dead:").count(),
        1,
        "only the poison is dead"
    );
    assert!(
        dead_letters(&d, "jobs").is_empty(),
        "no file record when a dead-letter queue is named"
    );
    d.stderr
        .wait_for("a log line naming the dead-letter queue", |t| {
            t.contains("dead-lettered to queue dead")
        });
}

/// `flood.py`: a non-blocking producer. Sends until EAGAIN and reports;
/// on SIGUSR1 (once the test has seen the queue full) fills whatever room
/// the broker made while it was still reading, then keeps trying for a
/// while, with small and large messages, and reports whether any got in.
const FLOOD: &str = r#"
import os, signal, socket, time
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
out = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
out.setblocking(False)
def fill():
    n = 0
    try:
        while n < 1_000_000:
            out.send(f"m{n}".encode())
            n += 1
    except BlockingIOError:
        return n
    print("never blocked", flush=True)
    signal.pause()
print(f"blocked after {fill()}", flush=True)
signal.sigwait({signal.SIGUSR1})
print(f"topped up {fill()}", flush=True)
attempts = got_in = 0
big = b"x" * 60000
end = time.monotonic() + 1.5
while time.monotonic() < end:
    for msg in (b"small", big):
        attempts += 1
        try:
            out.send(msg)
            got_in += 1
        except BlockingIOError:
            pass
print(f"hammered {attempts} times, {got_in} got in", flush=True)
signal.pause()
"#;

#[test]
fn a_full_queue_blocks_its_producer_and_drover_stays_small() {
    let d = launch(
        "backpressure",
        r#"
[supervisor]
state_dir = "state"

[queue.jobs]
capacity = 100

[group.producer]
command = ["@PY@", "flood.py"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.consumers]
command = ["@PY@", "-c", "pass"]
processes = 0
inputs = ["jobs"]
"#,
        &[("flood.py", FLOOD)],
    );
    let producer = d.wait_group_state("producer", "running")[0];
    let text = d.stdout.wait_for("the producer to block", |t| {
        t.contains("producer[0] blocked after ") || t.contains("producer[0] never blocked")
    });
    assert!(
        !text.contains("never blocked"),
        "a million sends and no back-pressure"
    );
    let sent: u64 = printed(&text, "producer[0] blocked after ")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(
        sent >= 100,
        "the queue holds 100 and the socket some more, yet only {sent} got in"
    );
    // The broker may still have been reading when the producer first saw
    // EAGAIN; once the queue is full it reads no more.
    let status = d.wait_status("the queue at capacity", |s| {
        count(s, "jobs", "depth") == 100
    });
    let before = rss_kib(d.pid());
    kill(Pid::from_raw(producer as i32), Signal::SIGUSR1).unwrap();
    let text = d.stdout.wait_for("the producer to hammer", |t| {
        t.contains("producer[0] hammered ") || t.contains("producer[0] never blocked")
    });
    assert!(!text.contains("never blocked"), "{text}");
    let after = rss_kib(d.pid());
    let topped: u64 = printed(&text, "producer[0] topped up ")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    let report = printed(&text, "producer[0] hammered ").next().unwrap();
    println!(
        "back-pressure: {sent} + {topped} sent before EAGAIN; hammered {report}; \
         drover RSS {before} → {after} KiB"
    );
    assert!(
        report.ends_with(", 0 got in"),
        "a full queue took more: {report}"
    );
    let status2 = d.status();
    for s in [&status, &status2] {
        assert_eq!(count(s, "jobs", "depth"), 100, "{s:#}");
        assert_eq!(count(s, "jobs", "delivered"), 0);
        assert_eq!(count(s, "jobs", "dead_lettered"), 0);
    }
    assert!(
        after < before + 2048,
        "drover's RSS grew from {before} to {after} KiB while a producer was blocked"
    );
}

/// Sends one 5000-byte message (two of its bytes unprintable), then a small one.
const OVERSIZED: &str = r#"
import os, signal, socket
out = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
out.send(b"\x00\xff" + b"x" * 4998)
out.send(b"small")
print("sent", flush=True)
signal.pause()
"#;

/// `print_ack.py QUEUE`: prints `got MSG` for each message of QUEUE, acks.
const PRINT_ACK: &str = r#"
import os, socket, sys
q = socket.socket(fileno=int(os.environ["DROVER_IN_" + sys.argv[1].upper()]))
while (msg := q.recv(65536)):
    print("got", msg.decode(errors="replace"), flush=True)
    q.send(b"ack")
"#;

#[test]
fn an_oversized_message_is_dead_lettered_whole_and_the_next_one_delivered() {
    let d = launch(
        "oversized",
        r#"
[supervisor]
state_dir = "state"

[queue.jobs]
max_message_bytes = 1000

[group.producer]
command = ["@PY@", "oversized.py"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.consumer]
command = ["@PY@", "print_ack.py", "jobs"]
inputs = ["jobs"]
start_secs = "100ms"
"#,
        &[("oversized.py", OVERSIZED), ("print_ack.py", PRINT_ACK)],
    );
    d.stdout.wait_for("the small message", |t| {
        t.contains("consumer[0] got small\n")
    });
    wait_until("the dead-letter record", || {
        !dead_letters(&d, "jobs").is_empty()
    });
    let records = dead_letters(&d, "jobs");
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["bytes"], 5000);
    assert_eq!(r["queue"], "jobs");
    let expected = format!("\\x00\\xff{}", "x".repeat(4998));
    assert_eq!(
        r["message"].as_str().unwrap(),
        expected,
        "the whole message, escaped, never truncated"
    );
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("max_message_bytes"), "{reason}");
    assert!(reason.contains("5000"), "{reason}");
    let status = d.wait_status("the small message acked", |s| {
        count(s, "jobs", "acked") == 1
    });
    assert_eq!(count(&status, "jobs", "delivered"), 1, "{status:#}");
    assert_eq!(count(&status, "jobs", "dead_lettered"), 1);
    assert_eq!(
        d.stdout.text().matches("consumer[0] got").count(),
        1,
        "only the small one is delivered"
    );
    d.stderr.wait_for("a log line with the reason", |t| {
        t.contains("queue jobs: message of 5000 bytes dead-lettered to ")
            && t.contains("max_message_bytes")
    });
}

/// `print_noack.py`: prints every message of `jobs` and never acks.
const PRINT_NOACK: &str = r#"
import os, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
while (msg := jobs.recv(65536)):
    print("got", msg.decode(), flush=True)
"#;

#[test]
fn at_most_once_needs_no_acks_and_keeps_nothing_in_flight() {
    const N: usize = 1000;
    let d = launch(
        "atmostonce",
        &format!(
            r#"
[supervisor]
state_dir = "state"

[queue.jobs]
delivery = "at-most-once"

[group.producer]
command = ["@PY@", "producer.py", "{N}", "m"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.consumers]
command = ["@PY@", "print_noack.py"]
processes = 2
inputs = ["jobs"]
start_secs = "100ms"
"#
        ),
        &[("producer.py", PRODUCER), ("print_noack.py", PRINT_NOACK)],
    );
    let text = d.stdout.wait_count("] got m", N);
    let seen = tally(
        text.lines()
            .filter_map(|l| l.split_once("] got ").map(|(_, m)| m)),
    );
    let expected: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(assert_all_arrived(&seen, &expected), 0);
    let status = d.wait_status("every message delivered", |s| {
        count(s, "jobs", "delivered") == N as u64
    });
    assert_eq!(count(&status, "jobs", "in_flight"), 0, "{status:#}");
    assert_eq!(count(&status, "jobs", "acked"), 0);
    assert_eq!(count(&status, "jobs", "depth"), 0);
    assert_eq!(count(&status, "jobs", "redelivered"), 0);
    for c in ["consumers[0] got", "consumers[1] got"] {
        assert!(text.contains(c), "round robin reaches both consumers");
    }
}

/// Sends `PID:i` forever (blocking: back-pressure paces it).
const ENDLESS: &str = r#"
import os, socket
out = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
me, i = os.getpid(), 0
print("producing as", me, flush=True)
while True:
    out.send(f"{me}:{i}".encode())
    i += 1
"#;

/// Acks everything; says when a new producer's messages first arrive, and
/// complains about any message that is not whole.
const WATCH: &str = r#"
import os, re, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
producers = set()
while (msg := jobs.recv(65536)):
    m = re.fullmatch(rb"(\d+):\d+", msg)
    if not m:
        print("malformed", msg, flush=True)
    elif m[1] not in producers:
        producers.add(m[1])
        print("from", m[1].decode(), flush=True)
    jobs.send(b"ack")
"#;

#[test]
fn a_producer_killed_mid_stream_is_replaced_and_nothing_wedges() {
    let d = launch(
        "producerkill",
        r#"
[supervisor]
state_dir = "state"

[queue.jobs]
capacity = 100
prefetch = 8

[group.producer]
command = ["@PY@", "endless.py"]
outputs = ["jobs"]
start_secs = "100ms"

[group.workers]
command = ["@PY@", "watch.py"]
processes = 2
inputs = ["jobs"]
start_secs = "100ms"
"#,
        &[("endless.py", ENDLESS), ("watch.py", WATCH)],
    );
    let first = d.wait_group_state("producer", "running")[0];
    let workers = d.wait_group_state("workers", "running");
    let status = d.wait_status("the stream to flow", |s| {
        count(s, "jobs", "delivered") > 2000
    });
    let at_kill = count(&status, "jobs", "delivered");
    kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    let status = d.wait_status("a new producer", |s| {
        let c = &Drover::children(s, "producer")[0];
        c["restarts"] == 1 && c["state"] == "running" && c["pid"] != first
    });
    let second = Drover::children(&status, "producer")[0]["pid"]
        .as_i64()
        .unwrap();
    assert_eq!(
        Drover::children(&status, "producer")[0]["last_exit"]["signal"],
        "SIGKILL"
    );
    d.stdout.wait_for("the new producer's messages", |t| {
        t.contains(&format!("] from {second}\n"))
    });
    let resumed = count(&d.status(), "jobs", "delivered");
    assert!(resumed > at_kill);
    let status = d.wait_status("the stream to keep flowing", |s| {
        count(s, "jobs", "delivered") > resumed + 2000
    });
    assert_eq!(
        d.wait_group_state("workers", "running"),
        workers,
        "the consumers were untouched"
    );
    assert_eq!(restarts(&status, "workers"), 0);
    assert_eq!(count(&status, "jobs", "redelivered"), 0, "{status:#}");
    assert_eq!(count(&status, "jobs", "dead_lettered"), 0);
    assert!(count(&status, "jobs", "depth") <= 100);
    let text = d.stdout.text();
    assert!(!text.contains("malformed"), "{text}");
}

/// Nacks each message the first time it sees it, acks it the second time.
const NACK_ONCE: &str = r#"
import os, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
seen = set()
while (msg := jobs.recv(65536)):
    if msg in seen:
        print("acked", msg.decode(), flush=True)
        jobs.send(b"ack")
    else:
        seen.add(msg)
        jobs.send(b"nack")
"#;

#[test]
fn a_nacked_message_comes_back_and_is_acked_once() {
    const N: usize = 200;
    let d = launch(
        "nack",
        &format!(
            r#"
[supervisor]
state_dir = "state"

[queue.jobs]

[group.producer]
command = ["@PY@", "producer.py", "{N}", "m"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.consumer]
command = ["@PY@", "nack_once.py"]
inputs = ["jobs"]
start_secs = "100ms"
"#
        ),
        &[("producer.py", PRODUCER), ("nack_once.py", NACK_ONCE)],
    );
    let status = d.wait_status("every message acked", |s| {
        count(s, "jobs", "acked") >= N as u64
    });
    let text = d.stdout.wait_count("consumer[0] acked ", N);
    let seen = tally(printed(&text, "consumer[0] acked "));
    let expected: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(assert_all_arrived(&seen, &expected), 0, "each acked once");
    assert_eq!(count(&status, "jobs", "acked"), N as u64, "{status:#}");
    assert_eq!(count(&status, "jobs", "redelivered"), N as u64);
    assert_eq!(count(&status, "jobs", "delivered"), 2 * N as u64);
    assert_eq!(count(&status, "jobs", "dead_lettered"), 0);
    assert_eq!(count(&status, "jobs", "in_flight"), 0);
    assert_eq!(count(&status, "jobs", "depth"), 0);
}

/// `tag.py QUEUE`: forwards QUEUE's messages to `results` as `METHOD:MSG`.
const TAG: &str = r#"
import os, socket, sys
q = socket.socket(fileno=int(os.environ["DROVER_IN_" + sys.argv[1].upper()]))
results = socket.socket(fileno=int(os.environ["DROVER_OUT_RESULTS"]))
method = os.environ["DROVER_START_METHOD"].encode()
while (msg := q.recv(65536)):
    results.send(method + b":" + msg)
    q.send(b"ack")
"#;

/// Sends 0..49 to each of the three queues.
const FAN_OUT: &str = r#"
import os, signal, socket
outs = [socket.socket(fileno=int(os.environ[f"DROVER_OUT_Q_{m.upper()}"]))
        for m in ("spawn", "fork", "forkserver")]
for i in range(50):
    for out in outs:
        out.send(str(i).encode())
print("sent", flush=True)
signal.pause()
"#;

#[test]
fn queues_are_wired_under_every_start_method() {
    const METHODS: [&str; 3] = ["spawn", "fork", "forkserver"];
    let mut config = String::from(
        r#"
[supervisor]
state_dir = "state"

[queue.results]

[group.producer]
command = ["@PY@", "fan_out.py"]
outputs = ["q_spawn", "q_fork", "q_forkserver"]
restart = "never"
start_secs = "100ms"

[group.sink]
command = ["@PY@", "sink.py"]
inputs = ["results"]
start_secs = "100ms"
"#,
    );
    for m in METHODS {
        config.push_str(&format!(
            r#"
[queue.q_{m}]

[group.c_{m}]
command = ["@PY@", "tag.py", "q_{m}"]
start_method = "{m}"
processes = 2
inputs = ["q_{m}"]
outputs = ["results"]
start_secs = "100ms"
"#
        ));
    }
    let d = launch(
        "methods",
        &config,
        &[
            ("fan_out.py", FAN_OUT),
            ("tag.py", TAG),
            ("sink.py", SINK_PRINT),
        ],
    );
    let expected: Vec<String> = METHODS
        .iter()
        .flat_map(|m| (0..50).map(move |i| format!("{m}:{i}")))
        .collect();
    let seen = wait_sink_printed(&d, &expected);
    assert_eq!(assert_all_arrived(&seen, &expected), 0);
    let status = d.wait_status("every queue settled", |s| {
        count(s, "results", "acked") == 150
    });
    for m in METHODS {
        let q = format!("q_{m}");
        assert_eq!(count(&status, &q, "acked"), 50, "{q}: {status:#}");
        assert_eq!(restarts(&status, &format!("c_{m}")), 0, "{m}");
    }
}

/// A slow consumer that ignores SIGTERM: only the closing of its queue
/// (recv returning 0) ends it, and it says so.
const SLOW: &str = r#"
import os, signal, socket, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
results = socket.socket(fileno=int(os.environ["DROVER_OUT_RESULTS"]))
while (msg := jobs.recv(65536)):
    time.sleep(0.002)
    results.send(msg)
    jobs.send(b"ack")
print("closed", flush=True)
"#;

#[test]
fn graceful_shutdown_drains_the_pipeline_before_exiting() {
    const N: usize = 1000;
    let mut d = launch(
        "drain",
        &format!(
            r#"
[supervisor]
state_dir = "state"

[queue.jobs]
[queue.results]

[group.producer]
command = ["@PY@", "producer.py", "{N}"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.workers]
command = ["@PY@", "slow.py"]
processes = 2
inputs = ["jobs"]
outputs = ["results"]
start_secs = "100ms"
stop_timeout = "25s"

[group.sink]
command = ["@PY@", "sink.py"]
inputs = ["results"]
start_secs = "100ms"
stop_timeout = "25s"
"#
        ),
        &[
            ("producer.py", PRODUCER),
            ("slow.py", SLOW),
            ("sink.py", SINK_PRINT),
        ],
    );
    d.stdout.wait_for("the producer's report", |t| {
        t.contains(&format!("producer[0] sent {N}"))
    });
    let status = d.status();
    let backlog = count(&status, "jobs", "depth") + count(&status, "jobs", "in_flight");
    assert!(backlog > 0, "nothing left to drain: {status:#}");
    d.signal(libc::SIGTERM);
    let exit = d.wait_exit();
    let text = d.stdout.text();
    let err = d.stderr.text();
    assert_eq!(Drover::code(exit), 0, "stderr:\n{err}");
    println!("shutdown drained a backlog of {backlog}");
    let seen = tally(printed(&text, "sink[0] "));
    let mut expected = numbers(N);
    expected.push("sink closed".into());
    assert_eq!(assert_all_arrived(&seen, &expected), 0);
    assert!(text.contains("workers[0] closed\n"), "{text}");
    assert!(text.contains("workers[1] closed\n"), "{text}");
    assert!(!err.contains("still queued at exit"), "{err}");
}

/// In its first life, waits for SIGUSR1, takes one message and SIGKILLs
/// itself with whatever the broker already pushed into its socket unread.
/// After that, prints what it gets.
const DIE_ONCE: &str = r#"
import os, signal, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
first_life = not os.path.exists("died")
if first_life:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    print("waiting", flush=True)
    signal.sigwait({signal.SIGUSR1})
while (msg := jobs.recv(65536)):
    print("got", msg.decode(), flush=True)
    if first_life:
        open("died", "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
"#;

/// At-most-once: "a message is lost only if its consumer dies
/// after receiving it", and "nothing is ever dropped without a log line and
/// a counter". Messages that the broker wrote into a consumer's socket and
/// the consumer never read were not received by it: with `prefetch = 1`, a
/// death may cost the message in hand and at most one waiting behind it.
#[test]
fn at_most_once_loses_at_most_what_a_dying_consumer_received() {
    const N: usize = 1000;
    let d = launch(
        "atmostonce_death",
        &format!(
            r#"
[supervisor]
state_dir = "state"

[queue.jobs]
delivery = "at-most-once"
prefetch = 1

[group.producer]
command = ["@PY@", "producer.py", "{N}", "m"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.consumer]
command = ["@PY@", "die_once.py"]
inputs = ["jobs"]
start_secs = "100ms"
"#
        ),
        &[("producer.py", PRODUCER), ("die_once.py", DIE_ONCE)],
    );
    let first = d.wait_group_state("consumer", "running")[0];
    d.stdout.wait_for("the producer to send everything", |t| {
        t.contains(&format!("producer[0] sent {N}")) && t.contains("consumer[0] waiting")
    });
    // Everything is in the broker: queued, or pushed to the idle consumer.
    let before = d.wait_status("the broker to hold every message", |s| {
        count(s, "jobs", "depth") + count(s, "jobs", "delivered") == N as u64
    });
    kill(Pid::from_raw(first as i32), Signal::SIGUSR1).unwrap();
    let status = d.wait_status("every message handed out after the restart", |s| {
        restarts(s, "consumer") == 1 && count(s, "jobs", "delivered") >= N as u64
    });
    // FIFO and a single consumer: once the last message is printed, every
    // message that will ever arrive has.
    let text = d.stdout.wait_for("the last message", |t| {
        t.contains(&format!("consumer[0] got m{}\n", N - 1))
    });
    let lost = N - text.matches("consumer[0] got ").count();
    println!(
        "at-most-once: {lost} of {N} lost with one consumer death \
         ({} pushed to it before it read one)",
        count(&before, "jobs", "delivered")
    );
    assert!(
        lost <= 2,
        "{lost} messages vanished, without a counter, with a consumer that had \
         received one; status before its death:\n{before:#}\nafter:\n{status:#}\nstderr:\n{}",
        d.stderr.text()
    );
}

/// Nacks everything, slowly; ignores SIGTERM (only a closed queue ends it).
const NACK_SLOWLY: &str = r#"
import os, signal, socket, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
while (msg := jobs.recv(65536)):
    time.sleep(0.02)
    jobs.send(b"nack")
print("closed", flush=True)
"#;

/// Prints what reaches `dead`; ignores SIGTERM like the workers.
const GRAVEYARD_TO_THE_END: &str = r#"
import os, signal, socket
signal.signal(signal.SIGTERM, signal.SIG_IGN)
dead = socket.socket(fileno=int(os.environ["DROVER_IN_DEAD"]))
while (msg := dead.recv(65536)):
    print("dead:", msg.decode(), flush=True)
    dead.send(b"ack")
print("closed", flush=True)
"#;

/// Shutdown order with dead letters: a dead-letter queue is fed by the consumers of the
/// queue it serves, so its own consumers must outlive them at shutdown.
#[test]
fn graceful_shutdown_keeps_a_dead_letter_consumer_until_its_feeders_stop() {
    const N: usize = 20;
    let mut d = launch(
        "drain_dead",
        &format!(
            r#"
[supervisor]
state_dir = "state"

[queue.jobs]
max_deliveries = 1
dead_letter = "dead"

[queue.dead]

[group.producer]
command = ["@PY@", "producer.py", "{N}", "m"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.workers]
command = ["@PY@", "nack_slowly.py"]
inputs = ["jobs"]
start_secs = "100ms"
stop_timeout = "20s"

[group.graveyard]
command = ["@PY@", "graveyard.py"]
inputs = ["dead"]
start_secs = "100ms"
stop_timeout = "20s"
"#
        ),
        &[
            ("producer.py", PRODUCER),
            ("nack_slowly.py", NACK_SLOWLY),
            ("graveyard.py", GRAVEYARD_TO_THE_END),
        ],
    );
    d.stdout.wait_for("the producer's report", |t| {
        t.contains(&format!("producer[0] sent {N}"))
    });
    assert!(count(&d.status(), "jobs", "depth") > 0, "nothing to drain");
    d.signal(libc::SIGTERM);
    let exit = d.wait_exit();
    let text = d.stdout.text();
    let err = d.stderr.text();
    assert_eq!(Drover::code(exit), 0, "stderr:\n{err}");
    let seen = tally(printed(&text, "graveyard[0] dead: "));
    assert!(
        seen.len() == N,
        "{} of {N} dead letters reached the graveyard before drover exited; \
         stdout:\n{text}\nstderr:\n{err}",
        seen.len()
    );
    let expected: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(assert_all_arrived(&seen, &expected), 0);
    assert!(!err.contains("still queued at exit"), "{err}");
}

// ------------------------------------------------------ producer confirms

/// `acker.py`: acks every message of `jobs`.
const ACKER: &str = r#"
import os, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
while jobs.recv(65536):
    jobs.send(b"ack")
"#;

/// The two producer loops of the README, as shipped in `examples/`: one
/// waits for each `ok`, the other sends a window and then reads its
/// replies. Each exits 0 only if every job was answered `ok` (and only if
/// `DROVER_CONFIRM_JOBS=1` is in its environment).
#[test]
fn producers_with_confirms_get_one_ok_per_message() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let d = launch(
        "confirm",
        &format!(
            r#"
[queue.jobs]
confirm = true
capacity = 100

[group.waiting]
command = ["@PY@", "{examples}/confirmed_producer.py"]
env = {{ JOBS = "50" }}
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.pipelined]
command = ["@PY@", "{examples}/pipelined_producer.py"]
env = {{ JOBS = "1000", WINDOW = "100" }}
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.consumer]
command = ["@PY@", "acker.py"]
inputs = ["jobs"]
"#
        ),
        &[("acker.py", ACKER)],
    );
    d.stdout.wait_for("both producers done", |t| {
        t.contains("waiting[0] producer: 50 jobs confirmed")
            && t.contains("pipelined[0] producer: 1000 jobs confirmed")
    });
    let exited_0 = |s: &Value, g: &str| {
        Drover::children(s, g)
            .iter()
            .all(|c| c["last_exit"] == serde_json::json!({"code": 0}))
    };
    let status = d.wait_status("every message acked, both producers exited 0", |s| {
        count(s, "jobs", "acked") >= 1050 && exited_0(s, "waiting") && exited_0(s, "pipelined")
    });
    assert_eq!(queue(&status, "jobs")["confirm"], true, "{status:#}");
    assert_eq!(count(&status, "jobs", "confirmed"), 1050, "{status:#}");
    assert_eq!(count(&status, "jobs", "refused"), 0, "{status:#}");
    assert_eq!(count(&status, "jobs", "acked"), 1050, "{status:#}");
}

/// The README's two producer loops are the examples run above, verbatim
/// (each example's code after its docstring).
#[test]
fn the_readme_shows_the_confirm_examples_that_run() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let blocks: Vec<&str> = readme
        .split("```python\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.contains("DROVER_CONFIRM_JOBS"))
        .collect();
    assert_eq!(blocks.len(), 2, "two producer loops in the README");
    for (block, file) in blocks
        .iter()
        .zip(["confirmed_producer.py", "pipelined_producer.py"])
    {
        let text = std::fs::read_to_string(format!("{root}/examples/{file}")).unwrap();
        let code = text
            .splitn(3, "\"\"\"")
            .nth(2)
            .unwrap()
            .trim_start_matches('\n');
        assert_eq!(*block, code, "README block for examples/{file}");
    }
}

/// `confirm_env.py`: says whether it has confirms, sends one message, and
/// with confirms prints the reply; then idles.
const CONFIRM_ENV: &str = r#"
import os, signal, socket
out = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
confirm = os.environ.get("DROVER_CONFIRM_JOBS")
print(f"confirm={confirm} pid={os.getpid()}", flush=True)
out.send(b"hello")
if confirm == "1":
    print("reply=" + out.recv(64).decode(), flush=True)
signal.pause()
"#;

fn confirm_config(confirm: bool) -> String {
    format!(
        r#"
[queue.jobs]
confirm = {confirm}

[group.producer]
command = ["{py}", "confirm_env.py"]
outputs = ["jobs"]
start_secs = "100ms"

[group.consumer]
command = ["{py}", "acker.py"]
inputs = ["jobs"]
start_secs = "100ms"

[group.idle]
command = ["sleep", "1000"]
start_secs = "100ms"
"#,
        py = common::python()
    )
}

/// Turning `confirm` on and off replaces the queue's producers (their
/// environment changes) and nothing else.
#[test]
fn a_reload_toggling_confirm_replaces_only_the_producers() {
    let d = launch(
        "confirm-reload",
        &confirm_config(false),
        &[("confirm_env.py", CONFIRM_ENV), ("acker.py", ACKER)],
    );
    d.stdout
        .wait_for("the producer", |t| t.contains("producer[0] confirm=None"));
    let pids = |s: &Value, g: &str| -> Vec<i64> {
        Drover::children(s, g)
            .iter()
            .map(|c| c["pid"].as_i64().unwrap_or(0))
            .collect()
    };
    let before = d.wait_status("all running", |s| {
        ["producer", "consumer", "idle"].iter().all(|g| {
            Drover::children(s, g)
                .iter()
                .all(|c| c["state"] == "running")
        })
    });
    assert_eq!(queue(&before, "jobs")["confirm"], false);
    assert_eq!(count(&before, "jobs", "confirmed"), 0);

    let edit = |confirm: bool| {
        let tmp = d.dir.path().join("drover.toml.new");
        std::fs::write(&tmp, confirm_config(confirm)).unwrap();
        std::fs::rename(&tmp, d.dir.path().join("drover.toml")).unwrap();
    };
    edit(true);
    let log = d
        .stderr
        .wait_for("the reload", |t| t.contains("config reloaded: "));
    let summary = log
        .lines()
        .find_map(|l| l.split("config reloaded: ").nth(1))
        .unwrap();
    assert_eq!(summary, "replaced: producer; queue changed: jobs");
    d.stdout.wait_for("the new producer's ok", |t| {
        t.contains("producer[0] confirm=1 ") && t.contains("producer[0] reply=ok")
    });
    let after = d.wait_status("the producer replaced", |s| {
        let kids = Drover::children(s, "producer");
        kids.len() == 1
            && kids[0]["state"] == "running"
            && pids(s, "producer") != pids(&before, "producer")
    });
    assert_eq!(pids(&after, "consumer"), pids(&before, "consumer"));
    assert_eq!(pids(&after, "idle"), pids(&before, "idle"));
    // The replaced producer is told to stop once its successor runs: it is
    // gone soon after, not necessarily by the status that shows the new one.
    let old = pids(&before, "producer")[0];
    common::wait_until("the replaced producer to exit", || !common::alive(old));
    assert_eq!(queue(&after, "jobs")["confirm"], true);
    assert_eq!(count(&after, "jobs", "confirmed"), 1);

    // And off again: the next producer has no variable, and gets no reply.
    edit(false);
    d.stdout.wait_count("producer[0] confirm=None", 2);
    let last = d.wait_status("two messages acked", |s| count(s, "jobs", "acked") >= 3);
    assert_eq!(pids(&last, "consumer"), pids(&before, "consumer"));
    assert_eq!(pids(&last, "idle"), pids(&before, "idle"));
    assert_eq!(queue(&last, "jobs")["confirm"], false);
    assert_eq!(count(&last, "jobs", "confirmed"), 1);
}
