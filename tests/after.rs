//! `after` on the real binary: start order by timestamps, init tasks that
//! gate their dependants (or fail and hold them, with the reason in
//! `status`), reloads that remove an edge, reverse-order shutdown, and
//! `exit_on_fatal`'s exit status 4.
//!
//! Children note `start NAME <time>` / `stop NAME <time>` lines in a shared
//! file, with the system-wide monotonic clock.

mod common;

use common::{Drover, wait_until};

/// A service: notes its start, and on SIGTERM waits `STOP_DELAY` seconds
/// (so that a stop in parallel would show in the order), notes its stop and
/// exits 0.
const SERVICE: &str = r#"
import os, signal, sys, time
name, delay = sys.argv[1], float(sys.argv[2])
def note(what):
    with open("events.log", "a") as f:
        f.write(f"{what} {name} {time.monotonic():.6f}\n")
        f.flush()
        os.fsync(f.fileno())
def term(*_):
    time.sleep(delay)
    note("stop")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
note("start")
while True:
    signal.pause()
"#;

/// An init task: notes its start, works a little, notes its end and exits
/// with the code given.
const TASK: &str = r#"
import os, sys, time
name, seconds, code = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
def note(what):
    with open("events.log", "a") as f:
        f.write(f"{what} {name} {time.monotonic():.6f}\n")
note("start")
time.sleep(seconds)
note("done")
sys.exit(code)
"#;

/// The time of the line `what name` in the events file.
fn event(d: &Drover, what: &str, name: &str) -> Option<f64> {
    let text = std::fs::read_to_string(d.dir.path().join("events.log")).unwrap_or_default();
    text.lines().find_map(|line| {
        let mut parts = line.split(' ');
        (parts.next() == Some(what) && parts.next() == Some(name))
            .then(|| parts.next()?.parse().ok())
            .flatten()
    })
}

fn group<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap()
}

#[test]
fn a_group_starts_after_its_dependency_is_ready_and_stops_before_it() {
    let mut d = Drover::launch(
        "after-order",
        r#"
[group.db]
command = ["@PY@", "service.py", "db", "0"]
start_secs = "2s"

[group.api]
command = ["@PY@", "service.py", "api", "0.5"]
start_secs = "100ms"
after = ["db"]
"#,
        &[("service.py", SERVICE)],
    );
    let status = d.status();
    assert_eq!(group(&status, "api")["after"], serde_json::json!(["db"]));
    d.wait_group_state("api", "running");
    let db = event(&d, "start", "db").expect("db started");
    let api = event(&d, "start", "api").expect("api started");
    assert!(
        api - db > 1.0,
        "api started {:.3} s after db; it must wait for db's start_secs (2 s)",
        api - db
    );
    d.signal(libc::SIGTERM);
    let code = Drover::code(d.wait_exit());
    assert_eq!(code, 0, "stderr:\n{}", d.stderr.text());
    let api = event(&d, "stop", "api").expect("api stopped");
    let db = event(&d, "stop", "db").expect("db stopped");
    assert!(
        db > api,
        "db stopped {:.3} s before api, which starts after it",
        api - db
    );
}

#[test]
fn stop_of_several_groups_stops_them_in_reverse_after_order() {
    let d = Drover::launch(
        "after-stop",
        r#"
[group.db]
command = ["@PY@", "service.py", "db", "0"]
start_secs = "100ms"

[group.cache]
command = ["@PY@", "service.py", "cache", "0"]
start_secs = "100ms"
after = ["db"]

[group.api]
command = ["@PY@", "service.py", "api", "0.5"]
start_secs = "100ms"
after = ["cache"]
"#,
        &[("service.py", SERVICE)],
    );
    d.wait_group_state("api", "running");
    // db and api: api starts after db (through cache), so it stops first.
    let out = d.cli(&["stop", "db", "api"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout, "api: stopped\ndb: stopped\n");
    let api = event(&d, "stop", "api").expect("api stopped");
    let db = event(&d, "stop", "db").expect("db stopped");
    assert!(db > api, "db stopped {:.3} s before api", api - db);
    assert_eq!(
        Drover::children(&d.status(), "cache")[0]["state"],
        "running"
    );
}

#[test]
fn an_init_task_gates_its_dependants_until_it_succeeds() {
    let d = Drover::launch(
        "after-init",
        r#"
[group.migrate]
command = ["@PY@", "task.py", "migrate", "1", "0"]
restart = "never"
start_secs = "100ms"

[group.api]
command = ["@PY@", "service.py", "api", "0"]
start_secs = "100ms"
processes = 2
after = ["migrate"]
"#,
        &[("service.py", SERVICE), ("task.py", TASK)],
    );
    d.wait_group_state("api", "running");
    let done = event(&d, "done", "migrate").expect("migrate finished");
    let api = event(&d, "start", "api").expect("api started");
    assert!(
        api > done,
        "api started {:.3} s before migrate finished",
        done - api
    );
    let status = d.status();
    assert_eq!(Drover::children(&status, "migrate")[0]["state"], "exited");
}

#[test]
fn a_failed_init_task_holds_its_dependants_until_a_reload_removes_the_edge() {
    let d = Drover::launch(
        "after-failed",
        r#"
[group.migrate]
command = ["@PY@", "task.py", "migrate", "0", "3"]
restart = "never"
start_secs = "100ms"

[group.api]
command = ["@PY@", "service.py", "api", "0"]
start_secs = "100ms"
after = ["migrate"]
"#,
        &[("service.py", SERVICE), ("task.py", TASK)],
    );
    let status = d.wait_status("api waiting for the failed init task", |s| {
        let api = &Drover::children(s, "api")[0];
        api["state"] == "waiting" && api["reason"] == "init task migrate failed (exit 3)"
    });
    assert_eq!(Drover::children(&status, "migrate")[0]["state"], "exited");
    let table = d.cli(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("init task migrate failed (exit 3)"),
        "the table shows why:\n{table}"
    );
    assert!(event(&d, "start", "api").is_none(), "api never started");
    // The edge goes: api starts, nothing else changes.
    let config = std::fs::read_to_string(d.dir.path().join("drover.toml")).unwrap();
    d.dir.write(
        "drover.toml",
        &config.replace("after = [\"migrate\"]\n", ""),
    );
    let out = d.cli(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_group_state("api", "running");
    let status = d.status();
    assert_eq!(group(&status, "api")["after"], serde_json::json!([]));
    assert_eq!(Drover::children(&status, "migrate")[0]["state"], "exited");
}

#[test]
fn exit_on_fatal_shuts_down_and_exits_4() {
    let mut d = Drover::launch(
        "after-fatal",
        r#"
[supervisor]
exit_on_fatal = true

[group.steady]
command = ["@PY@", "service.py", "steady", "0"]
start_secs = "100ms"

[group.broken]
command = ["sh", "-c", "sleep 2; exit 1"]
start_secs = "10s"
max_restarts = 0
"#,
        &[("service.py", SERVICE)],
    );
    let code = Drover::code(d.wait_exit());
    let stderr = d.stderr.text();
    assert_eq!(code, 4, "stderr:\n{stderr}");
    assert!(stderr.contains("broken[0] is fatal"), "stderr:\n{stderr}");
    assert!(stderr.contains("exit_on_fatal"), "stderr:\n{stderr}");
    // The shutdown was graceful: steady got its SIGTERM and noted its stop
    // (it started well before broken failed, 2 s into its start).
    assert!(event(&d, "start", "steady").is_some());
    wait_until("steady's stop line", || {
        event(&d, "stop", "steady").is_some()
    });
}

#[test]
fn exit_on_fatal_counts_a_failed_init_task_and_exits_4_after_sigkill_too() {
    let mut d = Drover::launch(
        "after-fatal-init",
        r#"
[supervisor]
exit_on_fatal = true

[group.stubborn]
command = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
start_secs = "100ms"
stop_timeout = "200ms"

[group.migrate]
command = ["@PY@", "task.py", "migrate", "0.5", "2"]
restart = "never"
start_secs = "100ms"

[group.api]
command = ["@PY@", "service.py", "api", "0"]
after = ["migrate"]
"#,
        &[("service.py", SERVICE), ("task.py", TASK)],
    );
    let code = Drover::code(d.wait_exit());
    let stderr = d.stderr.text();
    assert_eq!(
        code, 4,
        "4 even though stubborn needed SIGKILL; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("init task migrate failed (exit 2)"),
        "stderr:\n{stderr}"
    );
    assert!(event(&d, "start", "api").is_none(), "api never started");
}
