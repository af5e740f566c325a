//! Durable queues on the real binary: drover SIGKILLed mid-stream and
//! restarted on the same `state_dir` loses no confirmed message; a delivery
//! cut short by a kill counts as a failed one, so `max_deliveries` holds
//! across restarts (in-flight messages and poison messages end in the dead
//! letters); one drover per `state_dir`; an unwritable store is a clear
//! error at start; a reload toggles `durable` on a queue that holds
//! messages; `status` shows `durable` and `stored`.
//!
//! The workers are small Python programs kept below as strings and written
//! into each test's directory. What must survive a kill of drover (what
//! was sent, confirmed, consumed) goes to files in that directory, not to
//! drover's output. Each kill of drover is followed by killing every
//! process it left (its children live on, in their own process groups) and
//! starting drover again with the same config, socket and `state_dir`
//! ([`Drover::restart`]).
//!
//! To kill drover right after a delivery *and* know that the delivery's
//! attempt count is on disk, consumers here pass a commit barrier: they
//! send a packet to a durable `probe` queue with `confirm = true` and wait
//! for its `ok`. Commits are in order, and the probe is read in a later
//! loop turn than the delivery, so its `ok` means everything the delivery
//! wrote is committed.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Drover, TempDir, count, python, queue, wait_until_within};
use serde_json::Value;

/// Deadline of the long waits (a whole stream, a restart); generous for a
/// loaded 2-core machine.
const LONG: Duration = Duration::from_secs(60);

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

fn count_lines(path: &Path, line: &str) -> usize {
    lines(path).iter().filter(|l| *l == line).count()
}

/// Writes a new config and moves it over `drover.toml` (drover watches it
/// and reloads).
fn edit_config(d: &Drover, config: &str) {
    let tmp = d.dir.path().join("drover.toml.new");
    std::fs::write(&tmp, config.replace("@PY@", python())).unwrap();
    std::fs::rename(&tmp, d.dir.path().join("drover.toml")).unwrap();
}

/// SIGKILLs drover, kills what it left, and starts it again on the same
/// config, socket and `state_dir`.
fn crash_and_restart(d: &mut Drover) {
    d.kill9();
    d.restart();
}

/// A process the test started itself; SIGKILLed on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills every process marked with `.0` or inside `.1` on drop.
struct KillMarked<'a>(&'a str, &'a Path);

impl Drop for KillMarked<'_> {
    fn drop(&mut self) {
        common::kill_marked(self.0, self.1);
    }
}

/// Runs `cmd` (a `drover run` expected to fail at start) to its end, with
/// its stderr in `log`; returns (exit code or 128+signal, stderr).
fn run_to_exit(mut cmd: Command, log: &Path) -> (i32, String) {
    let err = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
    let mut child = Reaped(cmd.spawn().expect("start drover"));
    let mut status = None;
    wait_until_within("drover to exit", LONG, || {
        status = child.0.try_wait().expect("wait for drover");
        status.is_some()
    });
    let text = std::fs::read_to_string(log).unwrap_or_default();
    (Drover::code(status.unwrap()), text)
}

/// A `drover run` of `config` with its own socket, in `dir`, carrying the
/// test's `marker` (see [`common::kill_marked`]).
fn drover_run(dir: &Path, marker: &str, config: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(common::drover_bin());
    cmd.arg("run")
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .current_dir(dir)
        .env("DROVER_TEST_MARKER", marker);
    cmd
}

/// The records of `<state_dir>/dead-letters/<queue>.jsonl`.
fn dead_letter_records(state_dir: &Path, queue: &str) -> Vec<Value> {
    lines(
        &state_dir
            .join("dead-letters")
            .join(format!("{queue}.jsonl")),
    )
    .iter()
    .map(|l| serde_json::from_str(l).expect("a dead-letter record is one JSON line"))
    .collect()
}

// ---------------------------------------------------------------- workers

/// Cuts a line torn by a kill mid-write off the end of a file, so that
/// what a restarted worker appends starts on a line of its own.
const TRIM: &str = r#"
def whole_lines(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n") + 1
    if end < len(data):
        os.truncate(path, end)
    return data[:end].split()
"#;

/// `producer.py N WINDOW [PAD]`: sends the numbers 0..N to `jobs` (with
/// confirms; each followed by a space and PAD bytes if given), WINDOW at a
/// time: appends a window to `sent.txt`, sends it,
/// reads its replies and appends it to `confirmed.txt` once all are `ok`.
/// Started again, it goes on after the last confirmed number. A refusal
/// goes to `refused.txt`; drover gone (EOF, reset) ends it.
const STREAM_PRODUCER: &str = r#"
import os, signal, socket, sys
jobs = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
if os.environ.get("DROVER_CONFIRM_JOBS") != "1":
    sys.exit("no confirms on jobs")
n, window = int(sys.argv[1]), int(sys.argv[2])
pad = b" " + b"x" * int(sys.argv[3]) if len(sys.argv) > 3 else b""
@TRIM@
confirmed = whole_lines("confirmed.txt")
whole_lines("sent.txt")
nxt = max((int(x) for x in confirmed), default=-1) + 1
sent = os.open("sent.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
oks = os.open("confirmed.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
try:
    while nxt < n:
        batch = range(nxt, min(nxt + window, n))
        os.write(sent, b"".join(b"%d\n" % i for i in batch))
        for i in batch:
            jobs.send(b"%d" % i + pad)
        for i in batch:
            reply = jobs.recv(64)
            if reply == b"":
                sys.exit("drover is gone")
            if reply != b"ok":
                with open("refused.txt", "a") as f:
                    f.write(f"{i} {reply!r}\n")
                sys.exit(f"{i} refused: {reply!r}")
        os.write(oks, b"".join(b"%d\n" % i for i in batch))
        nxt = batch.stop
except (BrokenPipeError, ConnectionResetError):
    sys.exit("drover is gone")
with open("producer-done.txt", "a") as f:
    f.write("done\n")
signal.pause()
"#;

/// `consumer.py`: takes up to 64 messages (the prefetch) per wake-up,
/// appends their numbers to `consumed.txt` (one write), then acks each. It spends
/// 10 ms per batch (at most 6,400 messages a second, slower than the
/// producer), so that a backlog beyond the queue's in-memory window is in
/// the store when drover is killed.
const STREAM_CONSUMER: &str = r#"
import os, socket, time
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
@TRIM@
whole_lines("consumed.txt")
out = os.open("consumed.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
while (first := jobs.recv(65536)):
    batch = [first]
    try:
        while len(batch) < 64 and (msg := jobs.recv(65536, socket.MSG_DONTWAIT)):
            batch.append(msg)
    except BlockingIOError:
        pass
    os.write(out, b"".join(m.split(b" ")[0] + b"\n" for m in batch))
    time.sleep(0.01)  # the work
    for _ in batch:
        jobs.send(b"ack")
"#;

/// `once.py FLAG MESSAGE...`: unless FLAG exists (a start before this one
/// sent them all), sends the messages to `jobs` with confirms, creates
/// FLAG once every one got `ok`, then idles.
const SEND_ONCE: &str = r#"
import os, signal, socket, sys
flag, messages = sys.argv[1], sys.argv[2:]
if not os.path.exists(flag):
    jobs = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
    if os.environ.get("DROVER_CONFIRM_JOBS") != "1":
        sys.exit("no confirms on jobs")
    for m in messages:
        jobs.send(m.encode())
    for m in messages:
        reply = jobs.recv(64)
        if reply != b"ok":
            sys.exit(f"{m} refused: {reply!r}")
    open(flag, "w").close()
signal.pause()
"#;

/// `holder.py`: for each message of `jobs`, appends `got MSG` to
/// `holder.txt`, passes the commit barrier (a confirmed packet to the
/// durable `probe` queue), appends `committed MSG`, and never acks.
const HOLDER: &str = r#"
import os, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
probe = socket.socket(fileno=int(os.environ["DROVER_OUT_PROBE"]))
log = os.open("holder.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
while (msg := jobs.recv(65536)):
    os.write(log, b"got " + msg + b"\n")
    probe.send(b"barrier")
    if probe.recv(64) != b"ok":
        raise SystemExit("probe refused")
    os.write(log, b"committed " + msg + b"\n")
"#;

/// `poison.py`: acks every message of `jobs` after appending `got MSG` to
/// `worker.txt`, except `poison`: on it, passes the commit barrier,
/// appends `crash`, and SIGKILLs itself.
const POISON_WORKER: &str = r#"
import os, signal, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
probe = socket.socket(fileno=int(os.environ["DROVER_OUT_PROBE"]))
log = os.open("worker.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
while (msg := jobs.recv(65536)):
    os.write(log, b"got " + msg + b"\n")
    if msg == b"poison":
        probe.send(b"barrier")
        if probe.recv(64) != b"ok":
            raise SystemExit("probe refused")
        os.write(log, b"crash\n")
        os.kill(os.getpid(), signal.SIGKILL)
    jobs.send(b"ack")
"#;

/// `sink.py QUEUE FILE`: appends every message of QUEUE to FILE, then
/// acks it.
const SINK: &str = r#"
import os, socket, sys
name, path = sys.argv[1], sys.argv[2]
q = socket.socket(fileno=int(os.environ[f"DROVER_IN_{name.upper()}"]))
out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
while (msg := q.recv(65536)):
    os.write(out, msg + b"\n")
    q.send(b"ack")
"#;

fn script(text: &str) -> String {
    text.replace("@TRIM@", TRIM)
}

// ------------------------------------------------------------------ tests

/// A confirmed stream of numbered messages through a durable queue while
/// drover is SIGKILLed and restarted again and again: every number that
/// got `ok` is consumed at least once, nothing is consumed that was never
/// sent.
#[test]
fn sigkill_of_drover_loses_no_confirmed_message() {
    // The last kill comes at 9,000 confirmed; the 15,000 after it are the
    // margin for the moments between seeing that count and the kill (a
    // status round trip, a poll interval): with 3,000, a fast producer on a
    // loaded machine once finished the stream before kill 6.
    const N: usize = 24_000;
    const KILLS: usize = 6;
    const STEP: usize = 1_500;
    let started = Instant::now();
    let producer = script(STREAM_PRODUCER);
    let consumer = script(STREAM_CONSUMER);
    let mut d = Drover::launch(
        "durable-sigkill",
        &format!(
            r#"
[supervisor]
state_dir = "state"

[queue.jobs]
durable = true
confirm = true
prefetch = 64
max_deliveries = 1000

[group.producer]
command = ["@PY@", "producer.py", "{N}", "64"]
outputs = ["jobs"]
start_secs = "100ms"

[group.consumer]
command = ["@PY@", "consumer.py"]
inputs = ["jobs"]
start_secs = "100ms"
"#
        ),
        &[("producer.py", &producer), ("consumer.py", &consumer)],
    );
    let dir = d.dir.path().to_path_buf();
    let confirmed_file = dir.join("confirmed.txt");
    for kill in 1..=KILLS {
        wait_until_within(
            &format!("{} confirmed before kill {kill}", kill * STEP),
            LONG,
            || lines(&confirmed_file).len() >= kill * STEP,
        );
        let status = d.status();
        d.kill9();
        let at_kill = lines(&confirmed_file).len();
        eprintln!(
            "kill {kill}: {at_kill} confirmed; jobs depth {}, in flight {}, stored {}",
            count(&status, "jobs", "depth"),
            count(&status, "jobs", "in_flight"),
            count(&status, "jobs", "stored"),
        );
        assert!(at_kill < N, "kill {kill} came after the stream ended");
        d.restart();
    }
    wait_until_within("the producer to confirm everything", LONG, || {
        lines(&dir.join("producer-done.txt")).len() == 1
    });
    let status = d.wait_status_within("the queue drained", LONG, |s| {
        count(s, "jobs", "depth") == 0
            && count(s, "jobs", "in_flight") == 0
            && count(s, "jobs", "stored") == 0
    });
    assert_eq!(queue(&status, "jobs")["durable"], true, "{status:#}");
    assert_eq!(count(&status, "jobs", "dead_lettered"), 0, "{status:#}");
    assert!(queue(&status, "jobs").get("store_error").is_none());
    assert!(
        !dir.join("refused.txt").exists(),
        "refusals: {:?}",
        lines(&dir.join("refused.txt"))
    );

    let duplicates = check_stream(&dir, N);
    eprintln!(
        "{N} confirmed messages, {KILLS} SIGKILLs of drover: {duplicates} duplicates \
         consumed, {} sends, in {:?}",
        lines(&dir.join("sent.txt")).len(),
        started.elapsed()
    );
}

/// Checks the files of the stream producer and consumer in `dir`: the
/// numbers 0..n were all confirmed, every one was consumed at least once,
/// and nothing was consumed that was never sent. Returns the number of
/// duplicates consumed.
fn check_stream(dir: &Path, n: usize) -> usize {
    let parse = |path: &Path| -> Vec<u64> {
        lines(path)
            .iter()
            .map(|l| {
                l.parse()
                    .unwrap_or_else(|_| panic!("{}: bad line {l:?}", path.display()))
            })
            .collect()
    };
    let confirmed: BTreeSet<u64> = parse(&dir.join("confirmed.txt")).into_iter().collect();
    let sent: BTreeSet<u64> = parse(&dir.join("sent.txt")).into_iter().collect();
    let mut consumed: HashMap<u64, usize> = HashMap::new();
    for n in parse(&dir.join("consumed.txt")) {
        *consumed.entry(n).or_insert(0) += 1;
    }
    assert_eq!(
        confirmed,
        (0..n as u64).collect::<BTreeSet<u64>>(),
        "the producer confirmed every number once"
    );
    let lost: Vec<u64> = confirmed
        .iter()
        .filter(|n| !consumed.contains_key(n))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "{} confirmed messages were never consumed, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    let unsent: Vec<u64> = consumed
        .keys()
        .filter(|n| !sent.contains(n))
        .copied()
        .collect();
    assert!(unsent.is_empty(), "consumed but never sent: {unsent:?}");
    consumed.values().map(|c| c - 1).sum()
}

/// The config of the max-deliveries tests: `jobs` (durable, confirmed,
/// `max_deliveries = 3`, `extra` for its dead letters), the `probe`
/// barrier queue, a producer sending `messages` once, and `worker`.
fn deliveries_config(extra: &str, messages: &str, worker: &str) -> String {
    format!(
        r#"
[supervisor]
state_dir = "state"

[queue.jobs]
durable = true
confirm = true
max_deliveries = 3
{extra}

[queue.probe]
durable = true
confirm = true

[group.producer]
command = ["@PY@", "once.py", "sent.flag", {messages}]
outputs = ["jobs"]
start_secs = "100ms"

[group.worker]
command = ["@PY@", "{worker}"]
inputs = ["jobs"]
outputs = ["probe"]
restart = "never"
start_secs = "100ms"

[group.prober]
command = ["@PY@", "probe.py"]
outputs = ["probe"]
start_secs = "100ms"
"#
    )
}

/// `probe.py`: the commit barrier on its own: at start, sends a packet to
/// the durable `probe` queue and appends `ok PID` to `probes.txt` when
/// its `ok` came; then idles.
const PROBER: &str = r#"
import os, signal, socket
probe = socket.socket(fileno=int(os.environ["DROVER_OUT_PROBE"]))
probe.send(b"barrier")
if probe.recv(64) == b"ok":
    with open("probes.txt", "a") as f:
        f.write(f"ok {os.getpid()}\n")
signal.pause()
"#;

/// Waits until everything drover did so far is committed: restarts the
/// `prober` group and waits for its new child's `ok` (a commit later than
/// every change drover made before the restart request).
fn commit_barrier(d: &Drover) {
    let out = d.cli(&["restart", "prober"]);
    assert!(out.status.success(), "drover restart prober: {out:?}");
    let status = d.status();
    let pid = Drover::children(&status, "prober")[0]["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no prober pid: {status:#}"));
    let probes = d.dir.path().join("probes.txt");
    wait_until_within("the probe's ok", LONG, || {
        lines(&probes).contains(&format!("ok {pid}"))
    });
}

/// A consumer that holds a message without acking when drover is
/// SIGKILLed: each kill counts one failed delivery, and at the start after
/// the third the message goes to the dead-letter record file — it is never
/// delivered a fourth time.
#[test]
fn in_flight_messages_count_a_failed_delivery_across_restarts() {
    let mut d = Drover::launch(
        "durable-inflight",
        &deliveries_config("", "\"hold-me\"", "holder.py"),
        &[
            ("once.py", SEND_ONCE),
            ("holder.py", HOLDER),
            ("probe.py", PROBER),
        ],
    );
    let dir = d.dir.path().to_path_buf();
    let log = dir.join("holder.txt");
    wait_until_within("the producer's ok", LONG, || dir.join("sent.flag").exists());
    for delivery in 1..=3 {
        wait_until_within(&format!("delivery {delivery} committed"), LONG, || {
            count_lines(&log, "committed hold-me") == delivery
        });
        let status = d.status();
        assert_eq!(count(&status, "jobs", "in_flight"), 1, "{status:#}");
        assert_eq!(count(&status, "jobs", "stored"), 1, "{status:#}");
        assert_eq!(
            count(&status, "jobs", "redelivered"),
            u64::from(delivery > 1),
            "a delivery after a restart is a redelivery: {status:#}"
        );
        assert_eq!(count(&status, "jobs", "dead_lettered"), 0, "{status:#}");
        crash_and_restart(&mut d);
    }
    // The fourth start: three deliveries cut short, dead-lettered at once.
    let status = d.wait_status_within("the message dead-lettered", LONG, |s| {
        count(s, "jobs", "dead_lettered") == 1
    });
    for field in ["depth", "in_flight", "stored", "delivered"] {
        assert_eq!(count(&status, "jobs", field), 0, "{field}: {status:#}");
    }
    // Written by drover's dead-letter thread, before the store forgets it.
    wait_until_within("the dead-letter record", LONG, || {
        !dead_letter_records(&dir.join("state"), "jobs").is_empty()
    });
    let records = dead_letter_records(&dir.join("state"), "jobs");
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["queue"], "jobs");
    assert_eq!(r["message"], "hold-me");
    assert_eq!(r["deliveries"], 3, "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("delivered 3 times") && reason.contains("stop of drover"),
        "{reason}"
    );
    // Gone from the store once that is committed (a dead letter is
    // at-least-once too: a kill before the commit dead-letters it again):
    // one more crash brings nothing back.
    commit_barrier(&d);
    crash_and_restart(&mut d);
    let status = d.wait_status_within("the holder running", LONG, |s| {
        Drover::children(s, "worker")
            .iter()
            .all(|c| c["state"] == "running")
    });
    assert_eq!(count(&status, "jobs", "dead_lettered"), 0, "{status:#}");
    assert_eq!(count(&status, "jobs", "depth"), 0, "{status:#}");
    assert_eq!(count(&status, "jobs", "stored"), 0, "{status:#}");
    assert_eq!(count_lines(&log, "got hold-me"), 3, "{:?}", lines(&log));
    assert_eq!(dead_letter_records(&dir.join("state"), "jobs").len(), 1);
}

/// A message that crashes its consumer, with drover SIGKILLed after each
/// crash (the consumer is not restarted within a run): the deliveries of
/// earlier runs count, so the third crash, in the third run, sends it to
/// the dead-letter queue; the messages behind it are delivered in the next
/// run, and the poison never again.
#[test]
fn a_poison_message_reaches_the_dead_letters_across_restarts() {
    let messages: Vec<String> = (0..10)
        .map(|i| format!("m{i}"))
        .chain(["poison".to_owned()])
        .chain((10..20).map(|i| format!("m{i}")))
        .collect();
    let quoted: Vec<String> = messages.iter().map(|m| format!("\"{m}\"")).collect();
    let config = deliveries_config("dead_letter = \"dead\"", &quoted.join(", "), "poison.py")
        + r#"
[queue.dead]
durable = true

[group.graveyard]
command = ["@PY@", "sink.py", "dead", "graveyard.txt"]
inputs = ["dead"]
start_secs = "100ms"
"#;
    let mut d = Drover::launch(
        "durable-poison",
        &config,
        &[
            ("once.py", SEND_ONCE),
            ("poison.py", POISON_WORKER),
            ("sink.py", SINK),
            ("probe.py", PROBER),
        ],
    );
    let dir = d.dir.path().to_path_buf();
    let log = dir.join("worker.txt");
    let graveyard = dir.join("graveyard.txt");
    wait_until_within("the producer's oks", LONG, || {
        dir.join("sent.flag").exists()
    });
    for run in 1..=3 {
        wait_until_within(&format!("crash {run} of the worker"), LONG, || {
            count_lines(&log, "crash") == run
        });
        let status = d.wait_status_within("the worker's death handled", LONG, |s| {
            Drover::children(s, "worker")
                .iter()
                .all(|c| c["state"] != "running" && c["state"] != "starting")
                && count(s, "jobs", "in_flight") == 0
        });
        if run < 3 {
            assert_eq!(count(&status, "jobs", "dead_lettered"), 0, "{status:#}");
            assert!(count(&status, "jobs", "stored") >= 1, "{status:#}");
            crash_and_restart(&mut d);
        } else {
            assert_eq!(count(&status, "jobs", "dead_lettered"), 1, "{status:#}");
        }
    }
    wait_until_within("the poison in the graveyard", LONG, || {
        lines(&graveyard).contains(&"poison".to_owned())
    });
    let status = d.wait_status_within("the dead letter acked", LONG, |s| {
        count(s, "dead", "acked") == 1 && count(s, "dead", "stored") == 0
    });
    assert_eq!(count(&status, "dead", "depth"), 0, "{status:#}");
    assert!(dead_letter_records(&dir.join("state"), "jobs").is_empty());
    // The messages behind it wait for a worker: the next run has one. (The
    // graveyard's ack committed first, or the dead letter comes again.)
    commit_barrier(&d);
    crash_and_restart(&mut d);
    let want: Vec<String> = (10..20).map(|i| format!("got m{i}")).collect();
    wait_until_within("m10..m19 consumed", LONG, || {
        let seen = lines(&log);
        want.iter().all(|w| seen.contains(w))
    });
    let status = d.wait_status_within("jobs drained", LONG, |s| {
        count(s, "jobs", "depth") == 0
            && count(s, "jobs", "in_flight") == 0
            && count(s, "jobs", "stored") == 0
    });
    assert_eq!(count(&status, "jobs", "dead_lettered"), 0, "{status:#}");
    let seen = lines(&log);
    assert_eq!(count_lines(&log, "got poison"), 3, "{seen:?}");
    for m in messages.iter().filter(|m| *m != "poison") {
        assert!(
            seen.contains(&format!("got {m}")),
            "{m} never came: {seen:?}"
        );
    }
    assert_eq!(lines(&graveyard), ["poison"], "one dead letter, once");
}

/// The config of a drover with one durable queue and a group that notes
/// its start in `started.txt`.
const LOCK_CONFIG: &str = r#"
[supervisor]
state_dir = "state"

[queue.jobs]
durable = true

[group.idle]
command = ["@PY@", "-c", "import signal; open('started.txt', 'a').write('started\\n'); signal.pause()"]
inputs = ["jobs"]
start_secs = "100ms"
"#;

#[test]
fn a_second_drover_on_the_same_state_dir_is_refused() {
    let mut d = Drover::launch("durable-lock", LOCK_CONFIG, &[]);
    let dir = d.dir.path().to_path_buf();
    let started = dir.join("started.txt");
    wait_until_within("the first drover's child", LONG, || {
        lines(&started).len() == 1
    });
    let lock = std::fs::read_to_string(dir.join("state/queues.lock")).unwrap();
    assert_eq!(
        lock.trim(),
        d.pid().to_string(),
        "the lock file holds the PID"
    );

    let second = dir.join("second.sock");
    let (code, stderr) = run_to_exit(
        drover_run(&dir, d.marker(), &dir.join("drover.toml"), &second),
        &dir.join("second.err"),
    );
    assert_eq!(code, 1, "second drover: {stderr}");
    assert!(
        stderr.contains(&format!("PID {}", d.pid())) && stderr.contains("in use by another drover"),
        "the error names the PID holding the lock: {stderr}"
    );
    assert!(
        stderr.contains(&dir.join("state").display().to_string()),
        "the error names the state_dir: {stderr}"
    );
    // The first one is untouched, and the second started nothing.
    let status = d.status();
    assert_eq!(queue(&status, "jobs")["durable"], true, "{status:#}");
    assert_eq!(lines(&started), ["started"]);

    // A drover SIGKILLed leaves no lock behind.
    crash_and_restart(&mut d);
    let status = d.status();
    assert_eq!(queue(&status, "jobs")["durable"], true, "{status:#}");
    let lock = std::fs::read_to_string(dir.join("state/queues.lock")).unwrap();
    assert_eq!(lock.trim(), d.pid().to_string());
}

/// A config with one durable queue whose store lives in `state_dir`.
fn store_config(state_dir: &Path) -> String {
    format!(
        r#"
[supervisor]
state_dir = "{}"

[queue.jobs]
durable = true

[group.idle]
command = ["sleep", "1000"]
processes = 0
inputs = ["jobs"]
"#,
        state_dir.display()
    )
}

#[test]
fn an_unwritable_store_is_a_clear_error() {
    let tmp = TempDir::new("durable-unwritable");
    let dir = tmp.path().to_path_buf();
    let marker = dir.display().to_string();
    // Whatever happens, nothing started here outlives the test.
    let _cleanup = KillMarked(&marker, &dir);
    let expect_error = |case: &str, state_dir: &Path, named: &Path, cmd: Command| {
        let (code, stderr) = run_to_exit(cmd, &dir.join(format!("{case}.err")));
        assert_eq!(code, 1, "{case}: {stderr}");
        assert!(
            stderr.contains("queue store") && stderr.contains(&named.display().to_string()),
            "{case}: the error names {}: {stderr}",
            named.display()
        );
        eprintln!(
            "{case} ({}): {}",
            state_dir.display(),
            stderr.lines().last().unwrap_or("")
        );
    };

    // state_dir is a regular file.
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let config = dir.join("file.toml");
    std::fs::write(&config, store_config(&file)).unwrap();
    let cmd = drover_run(&dir, &marker, &config, &dir.join("file.sock"));
    expect_error("state_dir is a file", &file, &file, cmd);

    // state_dir is under a regular file.
    let under = file.join("state");
    let config = dir.join("under.toml");
    std::fs::write(&config, store_config(&under)).unwrap();
    let cmd = drover_run(&dir, &marker, &config, &dir.join("under.sock"));
    expect_error("state_dir under a file", &under, &under, cmd);

    // queues.sqlite with mode 000: root ignores the mode, so as root drover
    // runs as nobody (uid 65534) for this case.
    let state = dir.join("nobody");
    std::fs::create_dir(&state).unwrap();
    let store = state.join("queues.sqlite");
    std::fs::write(&store, "").unwrap();
    let config = dir.join("chmod.toml");
    std::fs::write(&config, store_config(&state)).unwrap();
    let socket = state.join("chmod.sock");
    let root = nix::unistd::geteuid().is_root();
    let cmd = if !root {
        drover_run(&dir, &marker, &config, &socket)
    } else if Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
        std::os::unix::fs::chown(&store, Some(65534), Some(65534)).unwrap();
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(common::drover_bin())
            .arg("run")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .current_dir(&state)
            .env("DROVER_TEST_MARKER", &marker);
        cmd
    } else {
        eprintln!(
            "skipped the chmod 000 case: running as root (which ignores file modes) \
             and no setpriv to drop to another user"
        );
        return;
    };
    std::fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    expect_error("queues.sqlite mode 000", &state, &store, cmd);
}

/// The reload test's config: `jobs` (confirmed; `durable` as given) fed
/// 300 messages by `producer` and one by `late` (`late` children), read
/// by `consumers` children of `consumer`.
fn toggle_config(durable: bool, late: u32, consumers: u32) -> String {
    let first: Vec<String> = (0..300).map(|i| format!("\"r{i}\"")).collect();
    format!(
        r#"
[supervisor]
state_dir = "state"

[queue.jobs]
durable = {durable}
confirm = true

[group.producer]
command = ["@PY@", "once.py", "sent.flag", {}]
outputs = ["jobs"]
start_secs = "100ms"

[group.late]
command = ["@PY@", "once.py", "late.flag", "late"]
processes = {late}
outputs = ["jobs"]
start_secs = "100ms"

[group.consumer]
command = ["@PY@", "sink.py", "jobs", "consumed.txt"]
processes = {consumers}
inputs = ["jobs"]
start_secs = "100ms"
"#,
        first.join(", ")
    )
}

/// `durable` set by a reload on a queue holding 300 messages stores them
/// all (a SIGKILL of drover then loses none); cleared, it moves them out of
/// the store into memory; consumed at last, each arrives exactly once.
#[test]
fn reload_toggles_durable_with_messages_queued() {
    let mut d = Drover::launch(
        "durable-reload",
        &toggle_config(false, 0, 0),
        &[("once.py", SEND_ONCE), ("sink.py", SINK)],
    );
    let dir = d.dir.path().to_path_buf();
    let status = d.wait_status_within("300 messages queued", LONG, |s| {
        count(s, "jobs", "depth") == 300 && count(s, "jobs", "confirmed") == 300
    });
    assert_eq!(queue(&status, "jobs")["durable"], false, "{status:#}");
    assert_eq!(count(&status, "jobs", "stored"), 0, "{status:#}");
    assert!(!dir.join("state/queues.sqlite").exists(), "no store yet");

    // On: the store opens and takes the 300. The late producer's `ok`
    // (a later commit) says they are on disk.
    edit_config(&d, &toggle_config(true, 1, 0));
    wait_until_within("the late message confirmed", LONG, || {
        dir.join("late.flag").exists()
    });
    let status = d.status();
    assert_eq!(queue(&status, "jobs")["durable"], true, "{status:#}");
    assert_eq!(count(&status, "jobs", "depth"), 301, "{status:#}");
    assert_eq!(count(&status, "jobs", "stored"), 301, "{status:#}");
    d.stderr.wait_for("the reload's log line", |t| {
        t.contains("queue jobs is durable now: its 300 messages are being stored")
    });

    crash_and_restart(&mut d);
    let status = d.wait_status_within("the 301 back from the store", LONG, |s| {
        count(s, "jobs", "depth") == 301
    });
    assert_eq!(queue(&status, "jobs")["durable"], true, "{status:#}");
    assert_eq!(count(&status, "jobs", "stored"), 301, "{status:#}");
    assert_eq!(count(&status, "jobs", "in_flight"), 0, "{status:#}");
    assert_eq!(count(&status, "jobs", "confirmed"), 0, "nothing sent again");

    // Off: out of the store, still queued.
    edit_config(&d, &toggle_config(false, 1, 0));
    let status = d.wait_status_within("jobs no longer durable nor stored", LONG, |s| {
        queue(s, "jobs")["durable"] == false && count(s, "jobs", "stored") == 0
    });
    assert_eq!(count(&status, "jobs", "depth"), 301, "{status:#}");
    d.stderr.wait_for("the log line", |t| {
        t.contains("queue jobs is no longer durable: it has left the store")
    });

    // Consumed: each exactly once.
    edit_config(&d, &toggle_config(false, 1, 1));
    let consumed = dir.join("consumed.txt");
    let status = d.wait_status_within("301 acked", LONG, |s| {
        count(s, "jobs", "acked") == 301 && count(s, "jobs", "depth") == 0
    });
    assert_eq!(count(&status, "jobs", "in_flight"), 0, "{status:#}");
    let mut got = lines(&consumed);
    got.sort();
    let mut want: Vec<String> = (0..300).map(|i| format!("r{i}")).collect();
    want.push("late".into());
    want.sort();
    assert_eq!(got, want, "each message exactly once");
}

#[test]
fn status_shows_durable_and_stored() {
    let config = |consumers: u32| {
        format!(
            r#"
[supervisor]
state_dir = "state"

[queue.jobs]
durable = true
confirm = true

[queue.plain]
confirm = true

[group.producer]
command = ["@PY@", "once.py", "sent.flag", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
outputs = ["jobs"]
start_secs = "100ms"

[group.plain_producer]
command = ["@PY@", "plain.py"]
outputs = ["plain"]
start_secs = "100ms"

[group.consumer]
command = ["@PY@", "sink.py", "jobs", "consumed.txt"]
processes = {consumers}
inputs = ["jobs"]
start_secs = "100ms"

[group.plain_consumer]
command = ["sleep", "1000"]
processes = 0
inputs = ["plain"]
"#
        )
    };
    // Five confirmed messages to `plain`, once per start.
    const PLAIN: &str = r#"
import os, signal, socket
out = socket.socket(fileno=int(os.environ["DROVER_OUT_PLAIN"]))
for i in range(5):
    out.send(b"p%d" % i)
    assert out.recv(64) == b"ok"
open("plain.flag", "a").write("sent\n")
signal.pause()
"#;
    let mut d = Drover::launch(
        "durable-status",
        &config(0),
        &[
            ("once.py", SEND_ONCE),
            ("sink.py", SINK),
            ("plain.py", PLAIN),
        ],
    );
    let dir = d.dir.path().to_path_buf();
    let status = d.wait_status_within("10 + 5 confirmed", LONG, |s| {
        count(s, "jobs", "confirmed") == 10 && count(s, "plain", "confirmed") == 5
    });
    let jobs = queue(&status, "jobs");
    assert_eq!(jobs["durable"], true, "{status:#}");
    assert_eq!(jobs["stored"], 10, "{status:#}");
    assert_eq!(jobs["depth"], 10, "{status:#}");
    assert!(jobs.get("store_error").is_none(), "{status:#}");
    let plain = queue(&status, "plain");
    assert_eq!(plain["durable"], false, "{status:#}");
    assert_eq!(plain["stored"], 0, "{status:#}");
    assert_eq!(plain["depth"], 5, "{status:#}");
    assert!(plain.get("store_error").is_none(), "{status:#}");

    // Human-readable status works with durable queues too.
    let out = d.cli(&["status"]);
    assert!(out.status.success(), "{out:?}");

    // After a SIGKILL: the durable queue's messages are back, the other's
    // are gone (and sent again by a fresh producer).
    crash_and_restart(&mut d);
    wait_until_within("plain sent again", LONG, || {
        lines(&dir.join("plain.flag")).len() == 2
    });
    let status = d.status();
    let jobs = queue(&status, "jobs");
    assert_eq!(jobs["durable"], true, "{status:#}");
    assert_eq!(jobs["depth"], 10, "{status:#}");
    assert_eq!(jobs["stored"], 10, "{status:#}");
    assert_eq!(jobs["confirmed"], 0, "not sent again: {status:#}");
    let plain = queue(&status, "plain");
    assert_eq!(plain["depth"], 5, "{status:#}");
    assert_eq!(plain["stored"], 0, "{status:#}");

    // Consumed and acked: no longer stored.
    edit_config(&d, &config(1));
    let status = d.wait_status_within("10 acked, none stored", LONG, |s| {
        count(s, "jobs", "acked") == 10 && count(s, "jobs", "stored") == 0
    });
    assert_eq!(count(&status, "jobs", "depth"), 0, "{status:#}");
    assert_eq!(queue(&status, "jobs")["durable"], true, "{status:#}");
    assert_eq!(lines(&dir.join("consumed.txt")).len(), 10);
}

/// Whether this process may make a mount namespace and mount a tmpfs in it
/// (root, or a container that allows it).
fn can_mount_tmpfs() -> bool {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs "$d" && umount "$d"; r=$?; rmdir "$d"; exit $r"#)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A store on a full file system (a 16 MiB tmpfs, 15 MiB of it taken by a
/// filler file, in drover's own mount namespace): commits fail, `status`
/// shows `store_error`, producers wait for their `ok`; once the filler is
/// deleted the commits work again, `store_error` is gone, and every
/// confirmed message is consumed.
#[test]
fn a_full_disk_is_a_store_error_in_status_until_there_is_room() {
    if !can_mount_tmpfs() {
        eprintln!("skipped: cannot mount a tmpfs in a new mount namespace here (needs root)");
        return;
    }
    const N: usize = 3_000;
    let config = |consumers: u32| {
        format!(
            r#"
[supervisor]
state_dir = "state"

[queue.jobs]
durable = true
confirm = true
prefetch = 64

[group.producer]
command = ["{py}", "producer.py", "{N}", "16", "1024"]
outputs = ["jobs"]
start_secs = "100ms"

[group.consumer]
command = ["{py}", "consumer.py"]
processes = {consumers}
inputs = ["jobs"]
start_secs = "100ms"
"#,
            py = python()
        )
    };
    let dir = TempDir::new("durable-full");
    dir.write("producer.py", &script(STREAM_PRODUCER));
    dir.write("consumer.py", &script(STREAM_CONSUMER));
    dir.write("drover.toml", &config(0));
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mount = format!(
        "mount -t tmpfs -o size=16m tmpfs {state} && \
         head -c 15M /dev/zero > {state}/filler && exec \"$@\"",
        state = state.display()
    );
    let d = Drover::start_in(
        dir,
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &mount,
            "sh",
        ],
    );
    let dir = d.dir.path().to_path_buf();
    let status = d.wait_status_within("a store error", LONG, |s| {
        queue(s, "jobs").get("store_error").is_some()
    });
    let error = queue(&status, "jobs")["store_error"].as_str().unwrap();
    eprintln!("store_error: {error}");
    assert!(
        error.contains("disk full") && error.contains(&state.display().to_string()),
        "{error}"
    );
    let confirmed = lines(&dir.join("confirmed.txt")).len();
    assert!(confirmed < N, "the producer got every ok on a full disk");
    d.stderr.wait_for("the error logged", |t| {
        t.contains("queue store: disk full") && t.contains("producers of durable queues wait")
    });

    // Room again (the filler, seen through drover's mount namespace).
    std::fs::remove_file(format!("/proc/{}/root{}/filler", d.pid(), state.display())).unwrap();
    wait_until_within("the producer to confirm everything", LONG, || {
        lines(&dir.join("producer-done.txt")).len() == 1
    });
    let status = d.status();
    assert!(
        queue(&status, "jobs").get("store_error").is_none(),
        "{status:#}"
    );
    assert_eq!(count(&status, "jobs", "stored"), N as u64, "{status:#}");
    edit_config(&d, &config(1));
    d.wait_status_within("the queue drained", LONG, |s| {
        count(s, "jobs", "depth") == 0
            && count(s, "jobs", "in_flight") == 0
            && count(s, "jobs", "stored") == 0
    });
    let duplicates = check_stream(&dir, N);
    assert_eq!(duplicates, 0, "nothing was redelivered");
    eprintln!("{confirmed} of {N} confirmed before the disk was full");
}
