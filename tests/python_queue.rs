//! The `drover` Python module (`drover python-module`, and `import drover`
//! in Python function workers) on the real binary: `inbox` acks each
//! message when the next is asked for and nacks the one in hand when the
//! loop is left early (an exception, a `break`), so nothing is lost and the
//! worker process lives on; `outbox(...).send` waits for `ok` on a queue
//! with `confirm = true` and raises `Refused` for `no REASON`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{Drover, TempDir, count, drover_bin, python, wait_until};

/// `drover python-module`, as a user writes it next to their program.
fn write_module(dir: &Path) {
    let out = Command::new(drover_bin())
        .arg("python-module")
        .output()
        .expect("run drover python-module");
    assert!(out.status.success(), "{out:?}");
    std::fs::write(dir.join("drover.py"), &out.stdout).unwrap();
}

/// How often each line occurs in `path` (missing: none).
fn tally(path: &Path) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut seen = BTreeMap::new();
    for line in text
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
    {
        *seen.entry(line.to_owned()).or_insert(0) += 1;
    }
    seen
}

/// Sends `m0` .. `m(N-1)` through `drover.outbox("jobs")` (each `send`
/// waits for its `ok`), then a message over `max_message_bytes`, whose
/// refusal it records; then idles.
const PRODUCER: &str = r#"
import signal, sys
import drover
jobs = drover.outbox("jobs")
assert jobs.confirm, "DROVER_CONFIRM_JOBS is not set"
for i in range(int(sys.argv[1])):
    jobs.send(b"m%d" % i)
try:
    jobs.send(b"x" * 5000)
    outcome = "accepted"
except drover.Refused as e:
    outcome = f"refused: {e.reason}"
try:
    jobs.send(b"")
except ValueError:
    outcome += "; empty: ValueError"
with open("producer.txt", "w") as f:
    f.write(outcome + "\n")
signal.pause()
"#;

/// Reads `jobs` with `drover.inbox`: the first time it sees `m3` it raises
/// in the loop body, the first time it sees `m7` it breaks out of the loop;
/// each time it starts a new loop. Every message it finishes goes to
/// done.txt, with its PID to pids.txt.
const CONSUMER: &str = r#"
import os
import drover

def record(msg):
    with open("done.txt", "a") as f:
        f.write(msg.decode() + "\n")
    with open("pids.txt", "a") as f:
        f.write(f"{os.getpid()}\n")

def once(flag):
    if os.path.exists(flag):
        return False
    open(flag, "w").close()
    return True

while True:
    try:
        for msg in drover.inbox("jobs"):
            if msg == b"m3" and once("raised"):
                raise RuntimeError("the work failed")
            if msg == b"m7" and once("broke"):
                break
            record(msg)
        else:
            break  # drover closed the queue
    except RuntimeError:
        pass
"#;

#[test]
fn inbox_acks_each_message_after_its_work_and_nacks_the_one_in_hand_on_exit_from_the_loop() {
    const N: usize = 50;
    let dir = TempDir::new("pyqueue");
    write_module(dir.path());
    dir.write("producer.py", PRODUCER);
    dir.write("consumer.py", CONSUMER);
    let py = python();
    dir.write(
        "drover.toml",
        &format!(
            r#"
[queue.jobs]
confirm = true
max_message_bytes = 4096

[group.producer]
command = ["{py}", "producer.py", "{N}"]
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.consumer]
command = ["{py}", "consumer.py"]
inputs = ["jobs"]
start_secs = "100ms"
"#
        ),
    );
    let d = Drover::start_in(dir, &[]);
    let path = d.dir.path().to_path_buf();
    wait_until("every message finished", || {
        tally(&path.join("done.txt")).len() == N
    });
    let done = tally(&path.join("done.txt"));
    let expected: BTreeMap<String, usize> = (0..N).map(|i| (format!("m{i}"), 1)).collect();
    assert_eq!(done, expected, "each message finished exactly once");
    assert_eq!(
        tally(&path.join("pids.txt")).len(),
        1,
        "one consumer process did all the work: leaving the loop did not kill it"
    );
    assert!(path.join("raised").exists() && path.join("broke").exists());
    let status = d.wait_status("every message acked", |s| {
        count(s, "jobs", "acked") == N as u64 && count(s, "jobs", "in_flight") == 0
    });
    assert_eq!(
        count(&status, "jobs", "redelivered"),
        2,
        "m3 (exception) and m7 (break) were nacked and delivered again: {status:#}"
    );
    assert_eq!(
        count(&status, "jobs", "dead_lettered"),
        1,
        "the 5000-byte one"
    );
    wait_until("the producer's outcome", || {
        path.join("producer.txt").exists()
    });
    assert_eq!(
        std::fs::read_to_string(path.join("producer.txt")).unwrap(),
        "refused: too large; empty: ValueError\n"
    );
    assert_eq!(count(&status, "jobs", "confirmed"), N as u64);
}

/// A Python function worker imports `drover` without any file: it is
/// built in (under `fork`, the template's import is the workers').
#[test]
fn function_workers_import_drover_as_it_is() {
    let dir = TempDir::new("pyqueue-fn");
    dir.write(
        "work.py",
        r#"
import drover

def upper():
    results = drover.outbox("results")
    for msg in drover.inbox("jobs"):
        results.send(msg.upper())

def sink():
    for msg in drover.inbox("results"):
        with open("out.txt", "a") as f:
            f.write(msg.decode() + "\n")
"#,
    );
    dir.write(
        "feed.py",
        "import sys\nsys.path.insert(0, '.')\nimport drover\nout = drover.outbox('jobs')\n\
         for w in ['alpha', 'beta', 'gamma']:\n    out.send(w.encode())\n\
         import signal\nsignal.pause()\n",
    );
    // The feeder is a plain program: it gets the module as a file, in a
    // directory of its own (the function workers' directory has none, so
    // theirs is the built-in one).
    std::fs::create_dir(dir.path().join("feeder")).unwrap();
    write_module(&dir.path().join("feeder"));
    let py = python();
    dir.write(
        "drover.toml",
        &format!(
            r#"
[queue.jobs]
[queue.results]

[group.feed]
command = ["{py}", "../feed.py"]
cwd = "feeder"
outputs = ["jobs"]
restart = "never"
start_secs = "100ms"

[group.upper]
python = "work:upper"
start_method = "fork"
inputs = ["jobs"]
outputs = ["results"]
start_secs = "100ms"

[group.sink]
python = "work:sink"
start_method = "spawn"
inputs = ["results"]
start_secs = "100ms"
"#
        ),
    );
    let d = Drover::start_in(dir, &[]);
    let out = d.dir.path().join("out.txt");
    wait_until("three results", || tally(&out).len() == 3);
    let expected: BTreeMap<String, usize> = ["ALPHA", "BETA", "GAMMA"]
        .iter()
        .map(|w| (w.to_string(), 1))
        .collect();
    assert_eq!(tally(&out), expected);
}
