//! Python function workers: where each method's children come from, exit
//! codes, a broken module, a crashed worker, a dead template, queues from a
//! function worker, what a forked worker keeps of its template (its files,
//! its flushed output), a template that answers nonsense, and what `ps`
//! shows of each process.

mod common;

use std::time::Duration;

use common::{Drover, TempDir, alive, wait_until};

/// A module that records who imported it, and a few targets.
const MODULE: &str = r#"
import os, signal, socket, sys, time
IMPORTED_BY = os.getpid()

def report():
    print(f"pid={os.getpid()} imported_by={IMPORTED_BY} index={os.environ['DROVER_INDEX']} "
          f"pgid_is_pid={os.getpgid(0) == os.getpid()} "
          f"term={signal.getsignal(signal.SIGTERM) == signal.SIG_DFL} "
          f"blocked={len(signal.pthread_sigmask(signal.SIG_BLOCK, []))}", flush=True)
    signal.pause()

def crash_later():
    print(f"up {os.getpid()}", flush=True)
    signal.pause()

def fail():
    raise ValueError("kaboom")

def code():
    raise SystemExit(7)

def fine():
    return 42

def confirmed():
    out = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
    out.send(b"x")
    print(f"confirm={os.environ.get('DROVER_CONFIRM_JOBS')} "
          f"plain={os.environ.get('DROVER_CONFIRM_PLAIN')} reply={out.recv(64).decode()}", flush=True)
    signal.pause()

def parent_then_code():
    print(f"ppid={os.getppid()}", flush=True)
    raise SystemExit(9)

def parent_then_signal():
    print(f"ppid={os.getppid()}", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    signal.pause()

def upper():
    jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
    results = socket.socket(fileno=int(os.environ["DROVER_OUT_RESULTS"]))
    while (msg := jobs.recv(65536)):
        results.send(msg.upper())
        jobs.send(b"ack")
"#;

fn start(name: &str, config: &str) -> Drover {
    let dir = TempDir::new(name);
    dir.write("work.py", MODULE);
    dir.write("drover.toml", config);
    Drover::start_in(dir, &[])
}

/// (pid, imported_by) of each line a `report` worker printed.
fn reports(text: &str, group: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{group}[")))
        .filter_map(|l| {
            let field = |k: &str| {
                l.split(&format!("{k}="))
                    .nth(1)?
                    .split(' ')
                    .next()
                    .map(String::from)
            };
            Some((field("pid")?, field("imported_by")?))
        })
        .collect()
}

#[test]
fn each_method_starts_children_from_where_it_should() {
    let mut config = String::new();
    for m in ["spawn", "fork", "forkserver"] {
        config.push_str(&format!(
            "[group.{m}]\npython = \"work:report\"\nstart_method = \"{m}\"\nprocesses = 2\nstart_secs = \"100ms\"\n\n"
        ));
    }
    let d = start("pymethods", &config);
    let text = d
        .stdout
        .wait_for("six reports", |t| t.matches("imported_by=").count() >= 6);
    for m in ["spawn", "fork", "forkserver"] {
        let r = reports(&text, m);
        assert_eq!(r.len(), 2, "{m}: {text}");
        match m {
            // One template imported the module; both children share it.
            "fork" => {
                assert_eq!(r[0].1, r[1].1, "{text}");
                assert!(r.iter().all(|(pid, by)| pid != by), "{text}");
            }
            // Each child imported the module itself.
            _ => assert!(r.iter().all(|(pid, by)| pid == by), "{m}: {text}"),
        }
    }
    for line in text.lines().filter(|l| l.contains("imported_by=")) {
        assert!(
            line.contains("pgid_is_pid=True term=True blocked=0"),
            "{line}"
        );
    }
    // Every child is drover's own, so drover reaps it.
    let status = d.status();
    for m in ["spawn", "fork", "forkserver"] {
        for child in Drover::children(&status, m) {
            let pid = child["pid"].as_i64().unwrap();
            wait_until("the worker to be re-parented to drover", || {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                stat.rfind(')')
                    .and_then(|i| stat[i + 2..].split(' ').nth(1)?.parse::<i32>().ok())
                    == Some(d.pid())
            });
        }
    }
}

#[test]
fn return_exception_and_system_exit_become_exit_codes() {
    let mut config = String::new();
    for m in ["spawn", "fork", "forkserver"] {
        for (target, _) in [("fine", 0), ("fail", 1), ("code", 7)] {
            config.push_str(&format!(
                "[group.{target}_{m}]\npython = \"work:{target}\"\nstart_method = \"{m}\"\nrestart = \"never\"\n\n"
            ));
        }
    }
    let d = start("pycodes", &config);
    for m in ["spawn", "fork", "forkserver"] {
        for (target, code) in [("fine", 0), ("fail", 1), ("code", 7)] {
            let group = format!("{target}_{m}");
            d.wait_group_state(&group, "exited");
            let status = d.status();
            assert_eq!(
                Drover::children(&status, &group)[0]["last_exit"]["code"],
                code,
                "{group}"
            );
        }
        let text = d.stdout.wait_for("the traceback", |t| {
            t.contains(&format!("fail_{m}[0] ValueError: kaboom"))
        });
        assert!(text.contains(&format!("fail_{m}[0] Traceback (most recent call last):")));
    }
}

/// A fork template makes its workers drover's children by one clone, or by
/// a double fork where that is not known to be sound (forced here with
/// DROVER_PYTHON_DOUBLE_FORK): either way drover is the worker's parent and
/// reports its exit code or signal.
#[test]
fn both_ways_of_forking_make_drover_the_parent_and_report_the_exit() {
    let mut config = String::new();
    for (path, env) in [
        ("once", ""),
        ("double", "env = { DROVER_PYTHON_DOUBLE_FORK = \"1\" }\n"),
    ] {
        for target in ["code", "signal"] {
            config.push_str(&format!(
                "[group.{target}_{path}]\npython = \"work:parent_then_{target}\"\nstart_method = \"fork\"\n\
                 restart = \"never\"\n{env}\n"
            ));
        }
    }
    let d = start("pyforkpaths", &config);
    for path in ["once", "double"] {
        for (target, exit) in [
            ("code", serde_json::json!({"code": 9})),
            ("signal", serde_json::json!({"signal": "SIGTERM"})),
        ] {
            let group = format!("{target}_{path}");
            d.wait_group_state(&group, "exited");
            let status = d.status();
            assert_eq!(
                Drover::children(&status, &group)[0]["last_exit"],
                exit,
                "{group}"
            );
            let text = d
                .stdout
                .wait_for("the parent", |t| t.contains(&format!("{group}[0] ppid=")));
            assert!(
                text.contains(&format!("{group}[0] ppid={}\n", d.pid())),
                "{group}: drover is the parent: {text}"
            );
        }
    }
}

/// drover's children titled `drover-spare GROUP ...`: a template's next
/// worker, forked before its request.
fn spares(drover: i32, group: &str) -> Vec<i64> {
    let out = std::process::Command::new("pgrep")
        .args(["-P", &drover.to_string(), "-f"])
        .arg(format!("^drover-spare {group} "))
        .output()
        .expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A fork template keeps its next worker forked ahead (a spare, drover's
/// child but not a worker): a restart takes it, a new one follows, and it
/// goes with its template while the workers live on.
#[test]
fn a_templates_spare_becomes_the_replacement_and_goes_with_its_template() {
    let d = start(
        "pyspare",
        "[group.w]\npython = \"work:crash_later\"\nstart_method = \"fork\"\nstart_secs = \"100ms\"\n",
    );
    let first = d.wait_group_state("w", "running")[0];
    wait_until("a spare", || !spares(d.pid(), "w").is_empty());
    let spare = spares(d.pid(), "w");
    assert_eq!(spare.len(), 1, "one spare: {spare:?}");
    assert_eq!(Drover::children(&d.status(), "w").len(), 1, "not a worker");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = d.wait_status("the replacement", |s| {
        let c = &Drover::children(s, "w")[0];
        c["state"] == "running" && c["pid"] != first && c["restarts"] == 1
    });
    let worker = Drover::children(&status, "w")[0]["pid"].as_i64().unwrap();
    assert_eq!(worker, spare[0], "the spare became the replacement");
    wait_until("the next spare", || !spares(d.pid(), "w").is_empty());
    let next = spares(d.pid(), "w");
    assert_ne!(next, spare);
    let template = templates_started(&d.stderr.text(), "w")[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(template),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("the spare to exit with its template", || !alive(next[0]));
    wait_until("a new template's spare", || {
        !spares(d.pid(), "w").is_empty()
    });
    assert!(alive(worker), "the worker lives on");
}

#[test]
fn a_crashed_forked_worker_is_replaced_from_the_living_template() {
    let d = start(
        "pycrash",
        "[group.w]\npython = \"work:crash_later\"\nstart_method = \"fork\"\nprocesses = 2\nstart_secs = \"100ms\"\n",
    );
    let pids = d.wait_group_state("w", "running");
    d.stdout.wait_count("up ", 2);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.wait_status("a replacement", |s| {
        let c = &Drover::children(s, "w")[0];
        c["state"] == "running" && c["pid"] != pids[0] && c["restarts"] == 1
    });
    d.stdout.wait_count("up ", 3);
    assert!(alive(pids[1]), "the other worker is untouched");
    assert!(
        !d.stderr.text().contains("python template exited"),
        "the template lived on"
    );
}

#[test]
fn a_dead_template_is_replaced_and_running_workers_live_on() {
    let d = start(
        "pytemplate",
        "[group.w]\npython = \"work:crash_later\"\nstart_method = \"fork\"\nprocesses = 2\nstart_secs = \"100ms\"\n",
    );
    let pids = d.wait_group_state("w", "running");
    d.stdout.wait_count("up ", 2);
    let text = d.stderr.wait_for("the template's start", |t| {
        !templates_started(t, "w").is_empty()
    });
    let template = templates_started(&text, "w")[0];
    assert!(!pids.contains(&i64::from(template)), "{pids:?} {template}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(template),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.stderr.wait_for("the template's death", |t| {
        t.contains("the python template exited; starting a new one")
    });
    // A new template is started at once, not at the next worker start.
    let text = d
        .stderr
        .wait_for("a new template", |t| templates_started(t, "w").len() >= 2);
    let new = templates_started(&text, "w")[1];
    assert!(new != template && alive(i64::from(new)), "{text}");
    for pid in &pids {
        assert!(alive(*pid), "running workers are untouched");
    }
    // And it serves the next start.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.stdout.wait_count("up ", 3);
}

/// The PIDs of `group`'s templates, in the order drover started them, from
/// its debug log: a template names itself only once its interpreter runs,
/// so looking for it in /proc could miss one that just started.
fn templates_started(log: &str, group: &str) -> Vec<i32> {
    log.lines()
        .filter(|l| l.contains("python template started"))
        .filter(|l| l.split(' ').any(|w| w == format!("group={group}")))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|w| w.strip_prefix("pid="))?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn a_broken_module_is_reported_and_backs_off_to_fatal() {
    let dir = TempDir::new("pybroken");
    dir.write("broken.py", "def main(:\n    pass\n");
    dir.write(
        "drover.toml",
        "[group.b]\npython = \"broken:main\"\nstart_method = \"fork\"\nrestart_delay = \"10ms\"\nmax_restarts = 2\n",
    );
    let d = Drover::start_in(dir, &[]);
    d.wait_group_state("b", "fatal");
    let err = d
        .stderr
        .wait_for("the fatal log line", |t| t.contains("fatal after"));
    assert!(
        err.contains("SyntaxError"),
        "the traceback is in the log: {err}"
    );
    assert!(err.contains("b[0]: cannot start"), "{err}");
    assert!(err.contains("fatal after 3 failed starts"), "{err}");
}

#[test]
fn a_function_worker_uses_queues_like_any_child() {
    for method in ["fork", "forkserver"] {
        let config = format!(
            r#"
[queue.jobs]
[queue.results]

[group.producer]
command = ["python3", "-c", "import os, socket, signal\ns = socket.socket(fileno=int(os.environ['DROVER_OUT_JOBS']))\nfor i in range(50): s.send(b'job %d' % i)\nsignal.pause()"]
outputs = ["jobs"]

[group.workers]
python = "work:upper"
start_method = "{method}"
processes = 2
inputs = ["jobs"]
outputs = ["results"]

[group.sink]
command = ["python3", "-c", "import os, socket\ns = socket.socket(fileno=int(os.environ['DROVER_IN_RESULTS']))\nwhile (m := s.recv(100)):\n    print(m.decode(), flush=True)\n    s.send(b'ack')"]
inputs = ["results"]
"#
        );
        let d = start(&format!("pyqueue{method}"), &config);
        let text = d
            .stdout
            .wait_for("50 results", |t| t.matches("sink[0] JOB ").count() >= 50);
        for i in 0..50 {
            assert!(
                text.contains(&format!("sink[0] JOB {i}\n")),
                "{method}: JOB {i} missing"
            );
        }
    }
}

/// Function workers get `DROVER_CONFIRM_<QUEUE>` like any child, under
/// every start method (the template's request carries it), and only for
/// the queues with `confirm = true`.
#[test]
fn a_function_worker_gets_confirms_under_every_method() {
    let mut config =
        String::from("[queue.jobs]\nconfirm = true\ncapacity = 100\n[queue.plain]\n\n");
    for m in ["spawn", "fork", "forkserver"] {
        config.push_str(&format!(
            "[group.{m}]\npython = \"work:confirmed\"\nstart_method = \"{m}\"\noutputs = [\"jobs\", \"plain\"]\nstart_secs = \"100ms\"\n\n"
        ));
    }
    let d = start("pyconfirm", &config);
    let text = d
        .stdout
        .wait_for("three replies", |t| t.matches(" reply=").count() >= 3);
    for m in ["spawn", "fork", "forkserver"] {
        assert!(
            text.contains(&format!("{m}[0] confirm=1 plain=None reply=ok\n")),
            "{m}: {text}"
        );
    }
}

/// The interpreter-side code on its own (src/start/python/test_drover_worker.py).
#[test]
fn the_python_bootstrap_passes_its_own_tests() {
    let out = std::process::Command::new("python3")
        .args(["-m", "unittest", "-v", "test_drover_worker"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/start/python"))
        .output()
        .expect("python3 runs");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("Ran 21 tests"), "{report}");
}

/// A template's import does not stall drover: status answers, other groups
/// restart, and the waiting workers start once the import is done.
#[test]
fn drover_stays_responsive_while_a_template_imports() {
    let dir = TempDir::new("pyslowimport");
    dir.write(
        "slow.py",
        "import os, signal, time\nwhile not os.path.exists('go'):\n    time.sleep(0.01)\n\ndef main():\n    print('imported and running', flush=True)\n    signal.pause()\n",
    );
    dir.write(
        "drover.toml",
        "[group.slow]\npython = \"slow:main\"\nstart_method = \"fork\"\nprocesses = 2\nstart_secs = \"100ms\"\n\n[group.other]\ncommand = [\"sleep\", \"1000\"]\nstart_secs = \"100ms\"\n",
    );
    let go = dir.path().join("go");
    let d = Drover::start_in(dir, &[]);
    // The workers wait (no PID yet) while the sleeper runs and restarts.
    let other = d.wait_group_state("other", "running");
    let status = d.status();
    for child in Drover::children(&status, "slow") {
        assert!(child["pid"].is_null(), "{status:#}");
        assert_eq!(child["restarts"], 0, "waiting is not a failed start");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(other[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.wait_status("the sleeper restarted during the import", |s| {
        Drover::children(s, "other")[0]["restarts"] == 1
    });
    std::fs::write(&go, "").unwrap();
    d.wait_group_state("slow", "running");
    d.stdout.wait_count("imported and running", 2);
    let status = d.status();
    for child in Drover::children(&status, "slow") {
        assert_eq!(child["restarts"], 0, "{status:#}");
    }
}

/// Regression: a forked worker's queue sockets were put at 3, 4, … over the
/// files its template had opened while importing, so a module's log went
/// into a queue. Under fork the template imports the module that opens the
/// log; under forkserver a `preload` module does.
#[test]
fn a_forked_worker_keeps_the_files_its_template_opened() {
    for method in ["fork", "forkserver"] {
        let preload = if method == "forkserver" {
            "preload = [\"opener\"]"
        } else {
            ""
        };
        let config = format!(
            r#"
[queue.jobs]
[queue.results]

[group.producer]
command = ["python3", "-c", "import os, socket, signal\ns = socket.socket(fileno=int(os.environ['DROVER_OUT_JOBS']))\nfor i in range(20): s.send(b'job %d' % i)\nsignal.pause()"]
outputs = ["jobs"]

[group.workers]
python = "logworker:work"
start_method = "{method}"
{preload}
processes = 2
inputs = ["jobs"]
outputs = ["results"]

[group.sink]
command = ["python3", "-c", "import os, socket\ns = socket.socket(fileno=int(os.environ['DROVER_IN_RESULTS']))\nwhile (m := s.recv(100)):\n    print(repr(m), flush=True)\n    s.send(b'ack')"]
inputs = ["results"]
"#
        );
        let dir = TempDir::new(&format!("pyfiles{method}"));
        dir.write(
            "opener.py",
            "import os\nLOG = open(os.path.join(os.path.dirname(__file__), 'log.txt'), 'a', buffering=1)\n\
             SEEN = os.environ.get('DROVER_IN_JOBS')\n",
        );
        dir.write(
            "logworker.py",
            r#"
import os, socket
from opener import LOG, SEEN

def work():
    index = os.environ["DROVER_INDEX"]
    LOG.write(f"worker {index} up, the import saw {SEEN}\n")
    jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
    results = socket.socket(fileno=int(os.environ["DROVER_OUT_RESULTS"]))
    while (msg := jobs.recv(65536)):
        LOG.write(f"worker {index} did {msg.decode()}\n")
        results.send(msg.upper())
        jobs.send(b"ack")
"#,
        );
        dir.write("drover.toml", &config);
        let log = dir.path().join("log.txt");
        let d = Drover::start_in(dir, &[]);
        let text = d
            .stdout
            .wait_for("20 results", |t| t.matches("sink[0] b'JOB ").count() >= 20);
        for line in text.lines().filter(|l| l.starts_with("sink[0] ")) {
            assert!(
                line.starts_with("sink[0] b'JOB ") && line.ends_with('\''),
                "{method}: only queue messages in the queue: {text}"
            );
        }
        // Each line is written before the result it precedes is sent.
        let written = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_until("both workers' first lines", || {
            let w = written();
            w.contains("worker 0 up") && w.contains("worker 1 up")
        });
        let w = written();
        // The template is no worker: no queue variables while it imports
        // (they would name its socket to drover).
        assert_eq!(
            w.matches(" up, the import saw None\n").count(),
            2,
            "{method}: {w}"
        );
        for i in 0..20 {
            assert!(
                w.lines().any(|l| l.ends_with(&format!(" did job {i}"))),
                "{method}: job {i} not logged: {w}"
            );
        }
    }
}

/// Regression: text a module printed while imported (no newline, so still
/// in the template's buffer) was written again by every forked worker.
#[test]
fn import_time_output_appears_once() {
    let mut config = String::new();
    for method in ["fork", "forkserver"] {
        let preload = if method == "forkserver" {
            "preload = [\"chatty\"]"
        } else {
            ""
        };
        config.push_str(&format!(
            // Buffered output, whatever the tests' environment says.
            "[group.{method}]\npython = \"chatty:hello\"\nstart_method = \"{method}\"\n{preload}\n\
             processes = 2\nrestart = \"never\"\nenv = {{ PYTHONUNBUFFERED = \"\" }}\n\n"
        ));
    }
    let dir = TempDir::new("pyimportprint");
    dir.write(
        "chatty.py",
        "import os\nprint('printed-at-import', end='')\n\ndef hello():\n    print('hello from', os.environ['DROVER_START_METHOD'], flush=True)\n",
    );
    dir.write("drover.toml", &config);
    let d = Drover::start_in(dir, &[]);
    // A worker's copy of the buffer would come out with its own line.
    let out = d.stdout.wait_for("every worker's line", |t| {
        t.matches("hello from fork\n").count() >= 2
            && t.matches("hello from forkserver\n").count() >= 2
    });
    assert!(!out.contains("printed-at-import"), "{out}");
    // The template's own output is drover's stderr.
    let err = d
        .stderr
        .wait_count("printed-at-import", 2)
        .matches("printed-at-import")
        .count();
    assert_eq!(err, 2, "once per template");
}

/// Whatever a template answers, drover neither panics nor hangs: the start
/// fails with the reason in the log, the template is replaced, and the
/// group backs off to fatal. The "template" here is a script standing in
/// for the interpreter.
#[test]
fn a_template_that_answers_nonsense_fails_the_start() {
    const FAKE: &str = r#"
import os, signal, socket, struct, sys
how = os.environ["FAKE"]
sock = socket.socket(fileno=3)
def reply(seq, pid=0):
    sock.send(struct.pack("<Qii", seq, 0, pid))
if how == "huge_ready":
    sock.send(b" " * 100000)
    sock.recv(1)
    sys.exit(0)
reply(0)
while True:
    msg, _, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(64 * 4))
    if not msg:
        sys.exit(0)
    seq = struct.unpack_from("<Q", msg)[0]
    if how == "huge":
        sock.send(b" " * 100000)
    elif how == "garbage":
        sock.send(b"not a reply")
    elif how == "wrong_seq":
        while True:
            reply(seq + 1000, os.getpid())
    elif how == "stranger":
        # A process of its own, not drover's child.
        pid = os.fork()
        if pid == 0:
            signal.pause()
            os._exit(0)
        reply(seq, pid)
"#;
    let cases = [
        (
            "huge_ready",
            "the python template sent an unreadable answer",
        ),
        ("huge", "the python template sent an unreadable answer"),
        (
            "garbage",
            "the python template sent a malformed answer (11 bytes)",
        ),
        ("wrong_seq", "answered request 1001 when 1 was due"),
        ("stranger", "which is not drover's child"),
    ];
    let dir = TempDir::new("pyfake");
    let fake = dir.write("fake.py", &format!("#!{}\n{FAKE}", common::python()));
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut config = String::new();
    for (how, _) in cases {
        config.push_str(&format!(
            "[group.{how}]\npython = \"nothing:here\"\nstart_method = \"fork\"\n\
             python_executable = \"{}\"\nenv = {{ FAKE = \"{how}\" }}\n\
             restart_delay = \"10ms\"\nmax_restarts = 1\n\n",
            fake.display()
        ));
    }
    dir.write("drover.toml", &config);
    let d = Drover::start_in(dir, &[]);
    // drover's log, not its status: a drover stuck on a template would
    // never answer a status request.
    for (how, why) in cases {
        let err = d
            .stderr
            .wait_for(&format!("{how} to fail for its reason"), |t| {
                t.lines()
                    .any(|l| l.contains(&format!("{how}[0]: cannot start")) && l.contains(why))
            });
        assert!(!err.contains("panicked"), "{err}");
        d.stderr.wait_for(&format!("{how} to be fatal"), |t| {
            t.contains(&format!("{how}[0]: fatal after 2 failed starts"))
        });
    }
    let status = d.status();
    for (how, _) in cases {
        assert_eq!(
            Drover::children(&status, how)[0]["state"],
            "fatal",
            "{status:#}"
        );
    }
}

/// What the kernel shows as `pid`'s command line and name.
fn title(pid: i64) -> (String, String) {
    let read = |what: &str| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default())
            .into_owned()
    };
    (read("cmdline"), read("comm"))
}

/// Regression: every worker and template showed the bootstrap's 5 KB source
/// as its command line in `ps`, the same for all of them. Each now says
/// what it is, in a command line that is its title and nothing more (no
/// trailing NULs), and a name for `top`.
#[test]
fn every_python_process_says_what_it_is_in_ps() {
    let mut config = String::new();
    for (group, method) in [
        ("spawned", "spawn"),
        ("forked", "fork"),
        ("served", "forkserver"),
    ] {
        config.push_str(&format!(
            "[group.{group}]\npython = \"work:crash_later\"\nstart_method = \"{method}\"\nprocesses = 2\nstart_secs = \"100ms\"\n\n"
        ));
    }
    let d = start("pytitles", &config);
    // A worker sets its title before it calls the function, and its
    // template before importing, so every title is set once all are up.
    d.stdout.wait_count("up ", 6);
    let status = d.status();
    for group in ["spawned", "forked", "served"] {
        for child in Drover::children(&status, group) {
            let (pid, index) = (child["pid"].as_i64().unwrap(), &child["index"]);
            assert_eq!(
                title(pid),
                (
                    format!("drover-worker {group}[{index}] work:crash_later\0"),
                    format!("{group}[{index}]\n")
                ),
                "pid {pid}"
            );
        }
    }
    let log = d.stderr.text();
    for (group, kind, tag) in [
        ("forked", "drover-template", "tpl"),
        ("served", "drover-forkserver-template", "srv"),
    ] {
        let template = i64::from(templates_started(&log, group)[0]);
        assert_eq!(
            title(template),
            (
                format!("{kind} {group} work:crash_later\0"),
                format!("{group}[{tag}]\n")
            ),
        );
    }
    // `pgrep -f` finds one worker by group and index, among all of
    // drover's children (its templates included).
    for group in ["spawned", "forked", "served"] {
        let out = std::process::Command::new("pgrep")
            .args(["-P", &d.pid().to_string(), "-f"])
            .arg(format!("^drover-worker {group}\\[1\\] "))
            .output()
            .expect("pgrep runs");
        let found = String::from_utf8_lossy(&out.stdout);
        let worker = Drover::children(&status, group)[1]["pid"].clone();
        assert_eq!(found.trim(), worker.to_string(), "{group}");
    }
}

/// At shutdown the Python template is told to go (SIGTERM, its socket
/// closed) and waited for 2 s; one whose module ignores SIGTERM and runs a
/// non-daemon thread (the interpreter waits for it) outlives that, left to the
/// orphan phase (SIGKILL after the largest `stop_timeout`, 4 s here).
/// drover waits that out asleep: past the 2 s its loop used to wait 0 ms
/// per turn, a busy spin of the whole 4 s. Measured as drover's CPU time
/// (its rusage at exit, its children's included), far below the window.
#[test]
fn a_template_that_ignores_sigterm_at_shutdown_is_waited_for_without_spinning() {
    let dir = TempDir::new("pystubborn");
    dir.write(
        "stubborn.py",
        "import signal, threading, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
         # A non-daemon thread: the interpreter waits for it at exit.\n\
         threading.Thread(target=time.sleep, args=(1000,)).start()\n\n\
         def main():\n    signal.signal(signal.SIGTERM, signal.SIG_DFL)\n    while True:\n        time.sleep(1)\n",
    );
    dir.write(
        "drover.toml",
        "[group.w]\npython = \"stubborn:main\"\nstart_method = \"fork\"\nstart_secs = \"100ms\"\nstop_timeout = \"4s\"\n",
    );
    let d = Drover::start_in(dir, &[]);
    d.wait_group_state("w", "running");
    let pid = d.pid();
    let started = std::time::Instant::now();
    d.signal(libc::SIGTERM);
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it and `status`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; drover is this test's child (the harness's Drop
    // then finds it reaped, which it ignores).
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    let took = started.elapsed();
    let cpu = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let used = cpu(usage.ru_utime) + cpu(usage.ru_stime);
    assert!(
        took >= Duration::from_secs(4),
        "drover waited for the template: exited after {took:?}\n{}",
        d.stderr.text()
    );
    assert!(
        used < Duration::from_millis(1500),
        "drover used {used:?} of CPU in a {took:?} run; its shutdown should sleep\n{}",
        d.stderr.text()
    );
}
