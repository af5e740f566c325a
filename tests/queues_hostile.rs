//! Queues against children that misbehave, on the real binary: settling
//! messages of a queue a reload removed, zero-length packets, grandchildren
//! that keep producing on an inherited socket, poison streams into a small
//! dead-letter queue, consumers that hang, and floods of bogus packets.
//! Each test names the defect it guards against; none may abort drover,
//! lose a message silently or flood the log.
//!
//! The workers are small Python programs kept below as strings.

mod common;

use std::cell::Cell;
use std::collections::HashSet;
use std::time::Instant;

use common::{Drover, python, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// The entry of `queue` in a status (the live one, not a removed one).
fn queue<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["queues"]
        .as_array()?
        .iter()
        .find(|q| q["name"] == name && q["removed"] != true)
}

fn count(status: &Value, name: &str, field: &str) -> u64 {
    queue(status, name)
        .and_then(|q| q[field].as_u64())
        .unwrap_or_else(|| panic!("queue {name} has no counter {field}: {status:#}"))
}

/// The records of `<state_dir>/dead-letters/<queue>.jsonl`.
fn dead_letters(d: &Drover, queue: &str) -> Vec<Value> {
    let path = d
        .dir
        .path()
        .join("state/dead-letters")
        .join(format!("{queue}.jsonl"));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .map(|l| serde_json::from_str(l).expect("a dead-letter record is one JSON line"))
        .collect()
}

/// Replaces the config (rename into place) and applies it with `drover reload`.
fn reload(d: &Drover, config: &str) {
    let tmp = d.dir.path().join("drover.toml.new");
    std::fs::write(&tmp, config.replace("@PY@", python())).unwrap();
    std::fs::rename(&tmp, d.dir.path().join("drover.toml")).unwrap();
    let out = d.cli(&["reload"]);
    assert!(
        out.status.success(),
        "reload failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The PID printed after `prefix` on a line of `text`.
fn pid_after(text: &str, prefix: &str) -> i32 {
    text.lines()
        .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?} PID in:\n{text}"))
}

fn assert_alive(d: &mut Drover) {
    let exited = d.child.as_mut().unwrap().try_wait().unwrap();
    assert!(
        exited.is_none(),
        "drover died: {exited:?}\nstderr:\n{}",
        d.stderr.text()
    );
}

/// How many 10 s windows of drover's log rate limit (5 lines per kind
/// each, then a count) a test that began at `started` may have seen: on a
/// loaded machine a test can take longer than one window.
fn log_windows(started: Instant) -> usize {
    started.elapsed().as_secs() as usize / 10 + 2
}

/// `producer.py N`: sends m0 .. m(N-1) to `jobs`, says so, then idles.
const PRODUCER: &str = r#"
import os, signal, socket, sys
out = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
n = int(sys.argv[1])
for i in range(n):
    out.send(f"m{i}".encode())
print(f"sent {n}", flush=True)
signal.pause()
"#;

// ------------------------------------------------------------- defect 1

/// `hold.py VERDICT`: takes one message and holds it until SIGUSR1, then
/// sends VERDICT (`ack` or `nack`) and exits. Ignores SIGTERM, so that a
/// reload removing its group does not end it first.
const HOLD: &str = r#"
import os, signal, socket, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
msg = jobs.recv(65536)
print("holding", os.getpid(), msg.decode(), flush=True)
signal.sigwait({signal.SIGUSR1})
jobs.send(sys.argv[1].encode())
print("settled", flush=True)
"#;

fn holding_config(verdict: &str) -> String {
    format!(
        r#"
[supervisor]
state_dir = "state"

[queue.jobs]

[group.producer]
command = ["@PY@", "producer.py", "1"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.holder]
command = ["@PY@", "hold.py", "{verdict}"]
inputs = ["jobs"]
restart = "never"
start_secs = "100ms"
stop_timeout = "60s"
"#
    )
}

/// The same config with the queue and both groups removed.
const WITHOUT_JOBS: &str = r#"
[supervisor]
state_dir = "state"

[group.idle]
command = ["@PY@", "-c", "import signal; signal.pause()"]
start_secs = "100ms"
"#;

/// Starts a consumer holding `m0`, removes its queue with a reload, makes
/// the consumer send `verdict`, and waits until it has exited.
fn settle_after_removal(name: &str, verdict: &str) -> Drover {
    let mut d = Drover::launch(
        name,
        &holding_config(verdict),
        &[("producer.py", PRODUCER), ("hold.py", HOLD)],
    );
    let text = d.stdout.wait_for("the consumer to hold m0", |t| {
        t.contains("holding ") && t.contains(" m0\n")
    });
    let holder = pid_after(&text, "holder[0] holding ");
    reload(&d, WITHOUT_JOBS);
    d.stderr.wait_for("the removal's log line", |t| {
        t.contains("queue jobs was removed while its consumers held 1 message")
    });
    let status = d.status();
    let removed = status["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "jobs")
        .unwrap_or_else(|| panic!("the removed queue is listed while in flight: {status:#}"));
    assert_eq!(removed["removed"], true, "{status:#}");
    assert_eq!(removed["in_flight"], 1, "{status:#}");
    kill(Pid::from_raw(holder), Signal::SIGUSR1).unwrap();
    d.stdout.wait_for("the consumer to settle", |t| {
        t.contains("holder[0] settled")
    });
    wait_until("the consumer to exit", || !common::alive(holder.into()));
    d.wait_status("nothing left in flight", |s| {
        s["queues"].as_array().is_some_and(|q| q.is_empty())
    });
    assert_alive(&mut d);
    d
}

/// Regression: an ack for a message of a queue a reload had removed
/// aborted drover (SIGABRT at `expect("endpoint's queue exists")`).
#[test]
fn an_ack_after_its_queue_was_removed_drops_the_message() {
    let d = settle_after_removal("removed_ack", "ack");
    d.stderr.wait_for("a line saying the ack dropped it", |t| {
        t.contains("an ack dropped a message its consumer held")
    });
    assert!(dead_letters(&d, "jobs").is_empty(), "acked, not dead");
}

#[test]
fn a_nack_after_its_queue_was_removed_dead_letters_the_message() {
    let d = settle_after_removal("removed_nack", "nack");
    wait_until("the dead-letter record", || {
        !dead_letters(&d, "jobs").is_empty()
    });
    let records = dead_letters(&d, "jobs");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["message"], "m0");
    let reason = records[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("removed") && reason.contains("nack"),
        "{reason}"
    );
    d.stderr.wait_for("a log line for the dead letter", |t| {
        t.contains("queue jobs: message of 2 bytes dead-lettered to ")
    });
}

/// A removed queue holding many messages says so in one line, with the
/// count and where they went, not one line per message.
#[test]
fn removing_a_queue_that_holds_many_messages_logs_one_line() {
    let d = Drover::launch(
        "removed_many",
        r#"
[supervisor]
state_dir = "state"

[queue.jobs]

[group.producer]
command = ["@PY@", "producer.py", "300"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.consumer]
command = ["@PY@", "-c", "pass"]
processes = 0
inputs = ["jobs"]
"#,
        &[("producer.py", PRODUCER)],
    );
    d.wait_status("300 messages queued", |s| count(s, "jobs", "depth") == 300);
    reload(&d, WITHOUT_JOBS);
    let err = d.stderr.wait_for("the removal's line", |t| {
        t.contains("queue jobs was removed while holding 300 messages")
    });
    assert!(err.contains("300 recorded in "), "{err}");
    wait_until("300 records", || dead_letters(&d, "jobs").len() == 300);
    let lines = d.stderr.text().matches("queue jobs").count();
    assert!(
        lines <= 3,
        "{lines} lines about queue jobs:\n{}",
        d.stderr.text()
    );
}

// ------------------------------------------------------------- defect 3

/// Sends "a", an empty packet and "b", then exits.
const EMPTY_BETWEEN: &str = r#"
import os, socket
out = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
for m in (b"a", b"", b"b"):
    out.send(m)
print("sent", flush=True)
"#;

/// `print_ack.py`: prints `got MSG` for each message of `jobs`, acks.
const PRINT_ACK: &str = r#"
import os, socket
q = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
while (msg := q.recv(65536)):
    print("got", msg.decode(errors="replace"), flush=True)
    q.send(b"ack")
"#;

/// Regression: a zero-length packet was taken for the producer closing
/// its socket; what it had sent after (227 messages in one run) was lost.
#[test]
fn an_empty_packet_is_refused_and_what_follows_it_arrives() {
    let d = Drover::launch(
        "empty_packet",
        r#"
[supervisor]
state_dir = "state"

[queue.jobs]

[group.producer]
command = ["@PY@", "empty.py"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.consumer]
command = ["@PY@", "print_ack.py"]
inputs = ["jobs"]
start_secs = "100ms"
"#,
        &[("empty.py", EMPTY_BETWEEN), ("print_ack.py", PRINT_ACK)],
    );
    d.stdout.wait_for("a and b", |t| {
        t.contains("consumer[0] got a\n") && t.contains("consumer[0] got b\n")
    });
    let status = d.wait_status("both acked", |s| count(s, "jobs", "acked") == 2);
    assert_eq!(count(&status, "jobs", "refused"), 1, "{status:#}");
    assert_eq!(count(&status, "jobs", "delivered"), 2);
    assert_eq!(count(&status, "jobs", "dead_lettered"), 0);
    d.stderr.wait_for("a line about the refusal", |t| {
        t.contains("zero-length packet")
    });
    let table = d.cli(&["status"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("REFUSED"),
        "{table:?}"
    );
}

// ------------------------------------------------------------- defect 4

/// Sends one message, forks a grandchild that inherits the socket, and
/// exits. The grandchild sends 7 more once told to (SIGUSR1), that is
/// after drover has seen the child exit. It leaves the child's process
/// group first (what stays in it is stopped when the child exits) and
/// tells the child so before the child exits.
const FORKING_PRODUCER: &str = r#"
import os, signal, socket
out = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
out.send(b"from the child")
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    os.write(w, b"x")
    print("grandchild", os.getpid(), flush=True)
    signal.sigwait({signal.SIGUSR1})
    for i in range(7):
        out.send(f"late{i}".encode())
    print("grandchild sent 7", flush=True)
    os._exit(0)
os.read(r, 1)
os._exit(3)  # not a success: a daemonizer's signature would stop the grandchild
"#;

/// Regression: a producer's socket was read once at the child's exit and
/// closed; the 7 messages its grandchild sent afterwards were lost.
#[test]
fn a_grandchild_keeps_producing_after_the_child_exited() {
    let d = Drover::launch(
        "grandchild",
        r#"
[supervisor]
state_dir = "state"

[queue.jobs]

[group.producer]
command = ["@PY@", "fork.py"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.consumer]
command = ["@PY@", "print_ack.py"]
inputs = ["jobs"]
start_secs = "100ms"
"#,
        &[("fork.py", FORKING_PRODUCER), ("print_ack.py", PRINT_ACK)],
    );
    let text = d
        .stdout
        .wait_for("the grandchild", |t| t.contains("producer[0] grandchild "));
    let grandchild = pid_after(&text, "producer[0] grandchild ");
    d.wait_status("the producer child to have exited", |s| {
        Drover::children(s, "producer")[0]["state"] == "exited"
    });
    kill(Pid::from_raw(grandchild), Signal::SIGUSR1).unwrap();
    let text = d.stdout.wait_for("every late message", |t| {
        (0..7).all(|i| t.contains(&format!("consumer[0] got late{i}\n")))
    });
    assert!(text.contains("consumer[0] got from the child\n"), "{text}");
    assert!(!text.contains("Error"), "{text}");
    d.wait_status("all 8 acked", |s| count(s, "jobs", "acked") == 8);
}

// ------------------------------------------------------------- defect 2

/// Nacks everything.
const NACK_ALL: &str = r#"
import os, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
while jobs.recv(65536):
    jobs.send(b"nack")
"#;

/// Regression: dead letters were pushed into the dead-letter queue
/// whatever its capacity (59,683 messages against 20, 65 MB of RSS), with
/// one log line each.
#[test]
fn a_poison_stream_fills_a_small_dead_letter_queue_and_no_more() {
    const N: u64 = 200;
    let d = Drover::launch(
        "poison_stream",
        &format!(
            r#"
[supervisor]
state_dir = "state"

[queue.jobs]
max_deliveries = 1
dead_letter = "dead"

[queue.dead]
capacity = 5

[group.producer]
command = ["@PY@", "producer.py", "{N}"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.nacker]
command = ["@PY@", "nack_all.py"]
inputs = ["jobs"]
start_secs = "100ms"

[group.graveyard]
command = ["@PY@", "-c", "pass"]
processes = 0
inputs = ["dead"]
"#
        ),
        &[("producer.py", PRODUCER), ("nack_all.py", NACK_ALL)],
    );
    let started = Instant::now();
    let deepest = Cell::new(0);
    let status = d.wait_status("every message dead-lettered", |s| {
        deepest.set(deepest.get().max(count(s, "dead", "depth")));
        count(s, "jobs", "dead_lettered") == N
    });
    assert!(
        deepest.get() <= 5,
        "the dead-letter queue held {}",
        deepest.get()
    );
    assert_eq!(count(&status, "dead", "depth"), 5, "{status:#}");
    wait_until("the rest in the record file", || {
        dead_letters(&d, "jobs").len() == N as usize - 5
    });
    let err = d.stderr.text();
    let windows = log_windows(started);
    let per_message = err.matches("dead-lettered to").count();
    assert!(
        per_message <= 5 * windows,
        "{per_message} lines for {N} dead letters in {windows} windows"
    );
    let full = err.matches("dead-letter queue dead is full").count();
    assert!(
        (1..=2 * windows).contains(&full),
        "{full} lines about the full queue in {windows} windows"
    );
}

// ------------------------------------------------------------- defect 5

/// Takes a message and never settles it; says which process got it.
const HANG: &str = r#"
import os, signal, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
msg = jobs.recv(65536)
print("got", msg.decode(), os.getpid(), flush=True)
signal.pause()
"#;

/// A consumer that holds a message past `ack_timeout` is restarted and
/// the message redelivered; at its `max_deliveries`-th hang it is a dead
/// letter.
#[test]
fn a_consumer_that_never_acks_is_restarted_and_the_message_redelivered() {
    let d = Drover::launch(
        "ack_timeout",
        r#"
[supervisor]
state_dir = "state"

[queue.jobs]
ack_timeout = "500ms"
max_deliveries = 2

[group.producer]
command = ["@PY@", "producer.py", "1"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.hang]
command = ["@PY@", "hang.py"]
inputs = ["jobs"]
start_secs = "100ms"
stop_timeout = "10s"
"#,
        &[("producer.py", PRODUCER), ("hang.py", HANG)],
    );
    let text = d.stdout.wait_count("hang[0] got m0 ", 2);
    let pids: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("hang[0] got m0 "))
        .collect();
    assert_eq!(pids.len(), 2, "redelivered to a new process: {text}");
    d.stderr
        .wait_for("the hang's log line", |t| t.contains("it is hung"));
    wait_until("the dead-letter record", || {
        !dead_letters(&d, "jobs").is_empty()
    });
    let records = dead_letters(&d, "jobs");
    assert_eq!(records[0]["message"], "m0");
    let reason = records[0]["reason"].as_str().unwrap();
    assert!(reason.contains("ack_timeout"), "{reason}");
    let status = d.wait_status("two restarts", |s| {
        Drover::children(s, "hang")[0]["restarts"].as_u64() >= Some(2)
    });
    assert_eq!(count(&status, "jobs", "redelivered"), 1, "{status:#}");
    assert_eq!(count(&status, "jobs", "dead_lettered"), 1);
}

// ------------------------------------------------------------- defect 6

/// Takes one message, sends 10,000 bogus packets, then acks it.
const BOGUS: &str = r#"
import os, signal, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
jobs.recv(65536)
for _ in range(10000):
    jobs.send(b"bogus")
jobs.send(b"ack")
print("done", flush=True)
signal.pause()
"#;

/// Regression: one WARN line per bogus packet (10,000 lines).
#[test]
fn a_flood_of_bogus_packets_is_counted_not_logged_line_by_line() {
    let d = Drover::launch(
        "bogus_flood",
        r#"
[supervisor]
state_dir = "state"

[queue.jobs]

[group.producer]
command = ["@PY@", "producer.py", "1"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.consumer]
command = ["@PY@", "bogus.py"]
inputs = ["jobs"]
start_secs = "100ms"
"#,
        &[("producer.py", PRODUCER), ("bogus.py", BOGUS)],
    );
    let started = Instant::now();
    let status = d.wait_status("the ack after the flood", |s| {
        count(s, "jobs", "acked") == 1
    });
    assert_eq!(count(&status, "jobs", "refused"), 10_000, "{status:#}");
    let lines = d.stderr.text().matches("only `ack` and `nack`").count();
    let windows = log_windows(started);
    assert!(
        (1..=5 * windows).contains(&lines),
        "{lines} lines for 10,000 packets in {windows} windows"
    );
}
