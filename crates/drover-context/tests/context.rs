//! The `drover-context` library: the two ported tutorial
//! programs print exactly what Python's print, under every start method,
//! then name the method that ran, and refuse an unknown one in one line;
//! queues carry structs and refuse oversize messages; exit codes, join,
//! is_alive, terminate and kill behave as in Python; one fork server serves
//! every start.
//!
//! Processes are started from separate programs (the examples and the
//! `context_probe` helper), never from this test binary: the harness runs
//! tests on threads, which is exactly what the fork caveat forbids, and
//! spawn needs `context::init()` at the top of a `main` of our own. Each
//! program runs in its own process group with a deadline; the group is
//! SIGKILLed when the test ends, whatever happened.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use drover_context::{Queue, QueueError};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Generous: tests must pass on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);

const METHODS: [&str; 3] = ["spawn", "fork", "forkserver"];

/// The directory of this profile's example binaries, built once per test
/// run (a no-op when `cargo test` already built them; `cargo test --test
/// context` alone does not).
fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // <target>/<profile>/deps/context-HASH
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--profile", profile])
            .args(["--example", "set_start_method", "--example", "get_context"])
            .args(["--example", "context_probe"])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the examples failed: {status}");
        profile_dir.join("examples")
    })
}

/// What a finished program printed.
struct Output {
    pid: u32,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Kills a process group when dropped.
struct KillGroup(Pid);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}

/// Runs example `name` with `args` in its own process group and waits for
/// it, at most [`DEADLINE`].
fn run(name: &str, args: &[&str]) -> Output {
    let program = examples_dir().join(name);
    let child = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let pid = child.id();
    let _group = KillGroup(Pid::from_raw(pid as i32));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = rx
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{name} {args:?}: still running after {DEADLINE:?}"))
        .expect("wait for the program");
    Output {
        pid,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a tutorial program and checks that it printed exactly the child's
/// line, with a PID that is not the parent's, then the parent's (the
/// tutorial's output, unchanged), then one line naming `method` as the
/// start method that ran.
fn assert_tutorial(name: &str, args: &[&str], method: &str) {
    let out = run(name, args);
    let what = format!("{name} {args:?}");
    assert_eq!(out.code, Some(0), "{what}: stderr:\n{}", out.stderr);
    assert_eq!(out.stderr, "", "{what}: nothing on stderr");
    let child_pid: u32 = out
        .stdout
        .strip_prefix("被启动的新进程: (")
        .and_then(|rest| rest.split_once(')'))
        .and_then(|(pid, _)| pid.parse().ok())
        .unwrap_or_else(|| panic!("{what}: unexpected output {:?}", out.stdout));
    assert_ne!(child_pid, out.pid, "{what}: the child has its own PID");
    let python = format!("被启动的新进程: ({child_pid})\nPython\n");
    let explanation = out
        .stdout
        .strip_prefix(&python)
        .unwrap_or_else(|| panic!("{what}: the tutorial's lines first, got {:?}", out.stdout));
    let prefix = format!("(start method: {method} — ");
    assert!(
        explanation.starts_with(&prefix) && explanation.ends_with(")\n"),
        "{what}: then one line naming {method}, got {explanation:?}"
    );
    assert_eq!(explanation.lines().count(), 1, "{what}: {explanation:?}");
}

/// Runs a tutorial program with bad arguments and checks that it exits 2
/// with exactly `error` on stderr and nothing on stdout.
fn assert_usage_error(name: &str, args: &[&str], error: &str) {
    let out = run(name, args);
    let what = format!("{name} {args:?}");
    assert_eq!(out.code, Some(2), "{what}: stderr:\n{}", out.stderr);
    assert_eq!(out.stderr, format!("{error}\n"), "{what}");
    assert_eq!(out.stdout, "", "{what}: nothing on stdout");
}

#[test]
fn set_start_method_prints_like_python_under_spawn_its_default() {
    assert_tutorial("set_start_method", &[], "spawn");
    assert_tutorial("set_start_method", &["spawn"], "spawn");
}

#[test]
fn set_start_method_prints_like_python_under_fork() {
    assert_tutorial("set_start_method", &["fork"], "fork");
}

#[test]
fn set_start_method_prints_like_python_under_forkserver() {
    assert_tutorial("set_start_method", &["forkserver"], "forkserver");
}

#[test]
fn get_context_prints_like_python_under_fork_its_default() {
    assert_tutorial("get_context", &[], "fork");
    assert_tutorial("get_context", &["fork"], "fork");
}

#[test]
fn get_context_prints_like_python_under_spawn() {
    assert_tutorial("get_context", &["spawn"], "spawn");
}

#[test]
fn get_context_prints_like_python_under_forkserver() {
    assert_tutorial("get_context", &["forkserver"], "forkserver");
}

#[test]
fn an_unknown_start_method_is_a_one_line_error_listing_the_valid_ones() {
    for name in ["get_context", "set_start_method"] {
        assert_usage_error(
            name,
            &["bogus"],
            r#"error: unknown start method "bogus"; expected one of spawn, fork, forkserver"#,
        );
        assert_usage_error(
            name,
            &["fork", "spawn"],
            r#"error: unexpected argument "spawn"; give at most one start method (spawn, fork, forkserver)"#,
        );
    }
}

/// Runs a probe scenario that must succeed; returns its `key rest` lines.
fn probe(scenario: &str, method: &str) -> BTreeMap<String, Vec<String>> {
    let out = run("context_probe", &[scenario, method]);
    assert_eq!(
        out.code,
        Some(0),
        "probe {scenario} {method}: stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let mut lines: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in out.stdout.lines() {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        lines
            .entry(key.to_owned())
            .or_default()
            .push(rest.to_owned());
    }
    lines
}

fn one<'a>(lines: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match lines.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("expected one {key:?} line, got {other:?}"),
    }
}

#[test]
fn exit_codes_join_and_is_alive_match_python_for_every_method() {
    for method in METHODS {
        let lines = probe("exitcodes", method);
        let at = |key| (method, one(&lines, key).to_owned());
        assert_eq!(
            at("before_start"),
            (method, "alive=false exitcode=none".into())
        );
        assert_eq!(at("join_unstarted"), (method, "true".into()));
        assert_eq!(at("return"), (method, "0".into()));
        assert_eq!(at("join_again"), (method, "0".into()));
        assert_eq!(at("restart"), (method, "true".into()));
        assert_eq!(at("panic"), (method, "1".into()));
        assert_eq!(at("exit"), (method, "3".into()));
        let running = "pid_matches=true alive=true exitcode=none";
        assert_eq!(at("terminate_running"), (method, running.into()));
        assert_eq!(at("terminate"), (method, "-15 alive=false".into()));
        assert_eq!(at("kill_running"), (method, running.into()));
        assert_eq!(at("kill"), (method, "-9 alive=false".into()));
    }
}

#[test]
fn a_panicking_target_reports_its_panic_on_stderr() {
    for method in METHODS {
        let out = run("context_probe", &["exitcodes", method]);
        assert!(
            out.stderr.contains("the target panicked on purpose"),
            "{method}: stderr:\n{}",
            out.stderr
        );
    }
}

#[test]
fn queues_in_arguments_carry_structs_to_and_from_a_child_for_every_method() {
    let expected = r#"{"id":42,"name":"résumé ✓-done","tags":["a","b"],"weight":0.5}"#;
    for method in METHODS {
        let lines = probe("roundtrip", method);
        assert_eq!(lines["job"], vec![expected; 3], "{method}");
        assert_eq!(one(&lines, "worker"), "0", "{method}");
    }
}

#[test]
fn one_fork_server_is_started_and_reused() {
    let lines = probe("reuse", "forkserver");
    let me = one(&lines, "self");
    let reports = &lines["ppid"];
    assert_eq!(reports.len(), 2);
    let (ppid, server) = reports[0].split_once(" server ").expect("ppid P server S");
    assert_eq!(ppid, server, "the child's parent is the fork server");
    assert_ne!(server, me, "the server is not the program itself");
    assert_eq!(
        reports[1], reports[0],
        "the second child came from the same server"
    );
}

#[test]
fn a_dead_fork_server_is_replaced_by_the_next_start() {
    let lines = probe("respawn", "forkserver");
    let parents = &lines["ppid"];
    assert_eq!(parents.len(), 2);
    assert_ne!(parents[0], parents[1], "the second child has a new server");
}

#[test]
fn spawn_and_forkserver_refuse_to_start_without_init() {
    for method in ["spawn", "forkserver"] {
        let lines = probe("noinit", method);
        let refused = one(&lines, "refused");
        assert!(
            refused.contains("init() was not called"),
            "{method}: {refused}"
        );
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    values: Vec<f64>,
    ok: bool,
}

#[test]
fn a_queue_round_trips_a_struct() {
    let q = Queue::<Reading>::new().unwrap();
    let reading = Reading {
        sensor: "t1".to_owned(),
        values: vec![1.5, -2.0],
        ok: true,
    };
    q.put(&reading).unwrap();
    assert_eq!(q.get_timeout(DEADLINE).unwrap(), reading);
}

#[test]
fn an_oversize_message_is_a_typed_error_and_the_queue_goes_on() {
    let q = Queue::<String>::with_max_message_bytes(1000).unwrap();
    let over = "x".repeat(1000); // 1002 bytes of JSON
    match q.put(&over) {
        Err(QueueError::TooLarge { len, max }) => assert_eq!((len, max), (1002, 1000)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    q.put("still works".to_owned()).unwrap();
    assert_eq!(q.get_timeout(DEADLINE).unwrap(), "still works");
}
