//! Restart rules of DESIGN §4 on the real binary: immediate restart of a
//! running child, exponential backoff of failed starts ending in `fatal`, the
//! exit-code policy, and commands that cannot be executed.

mod common;

use common::{Drover, alive, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn a_crashed_running_child_is_replaced_at_once() {
    let d = Drover::start(
        "crash",
        r#"
[group.sleeper]
command = ["sleep", "1000"]
processes = 2
start_secs = "0s"
"#,
    );
    let pids = d.wait_group_state("sleeper", "running");
    assert_eq!(pids.len(), 2);
    kill(Pid::from_raw(pids[0] as i32), Signal::SIGKILL).unwrap();
    let status = d.wait_status("a replacement for sleeper[0]", |s| {
        let c = &Drover::children(s, "sleeper")[0];
        c["restarts"] == 1 && c["state"] == "running" && c["pid"] != pids[0]
    });
    let kids = Drover::children(&status, "sleeper");
    assert_eq!(kids[0]["last_exit"]["signal"], "SIGKILL");
    assert_eq!(kids[1]["pid"], pids[1], "the other child is untouched");
    assert_eq!(kids[1]["restarts"], 0);
    d.stderr.wait_for("the restart log line", |t| {
        t.contains("sleeper[0]: exited (killed by SIGKILL); restarting")
    });
}

#[test]
fn failed_starts_back_off_and_end_fatal() {
    let d = Drover::start(
        "fatal",
        r#"
[group.broken]
command = ["sh", "-c", "echo attempt; exit 3"]
start_secs = "5s"
restart_delay = "10ms"
restart_delay_max = "40ms"
max_restarts = 3
"#,
    );
    d.wait_group_state("broken", "fatal");
    // drover's output may still be on its way to the test's reader thread.
    let text = d.stdout.wait_count("broken[0] attempt", 4);
    let err = d.stderr.wait_for("the fatal log line", |t| {
        t.contains("fatal after 4 failed starts")
    });
    assert_eq!(
        text.matches("broken[0] attempt").count(),
        4,
        "first start + max_restarts retries: {text}"
    );
    for (n, delay) in [(1, "10ms"), (2, "20ms"), (3, "40ms")] {
        assert!(
            err.contains(&format!("failed start {n} of 4; retrying in {delay}")),
            "{err}"
        );
    }
    assert!(err.contains("fatal after 4 failed starts"), "{err}");
    let status = d.status();
    let c = &Drover::children(&status, "broken")[0];
    assert_eq!(c["last_exit"]["code"], 3);
    assert!(c["pid"].is_null());
    assert_eq!(status["groups"][0]["state"], "fatal");

    // `drover restart` gives it a fresh budget.
    let out = d.cli(&["restart", "broken"]);
    assert!(out.status.success());
    d.stdout.wait_count("broken[0] attempt", 8);
    d.wait_group_state("broken", "fatal");
}

#[test]
fn exit_codes_follow_the_restart_policy() {
    let d = Drover::start(
        "policy",
        r#"
[group.done]
command = ["sh", "-c", "exit 0"]
start_secs = "0s"

[group.tolerated]
command = ["sh", "-c", "exit 7"]
success_codes = [0, 7]
start_secs = "0s"

[group.never]
command = ["sh", "-c", "exit 1"]
restart = "never"
start_secs = "0s"

[group.always]
command = ["sh", "-c", "echo again; sleep 0.2"]
restart = "always"
start_secs = "100ms"
"#,
    );
    d.stdout.wait_count("always[0] again", 3);
    for group in ["done", "tolerated", "never"] {
        d.wait_group_state(group, "exited");
    }
    let status = d.status();
    assert_eq!(
        Drover::children(&status, "tolerated")[0]["last_exit"]["code"],
        7
    );
    assert_eq!(Drover::children(&status, "never")[0]["restarts"], 0);
}

#[test]
fn a_command_that_cannot_run_fails_clearly_and_others_still_run() {
    let dir = common::TempDir::new("notfound");
    dir.write("not-executable.sh", "#!/bin/sh\necho hi\n");
    dir.write(
        "drover.toml",
        r#"
[group.missing]
command = ["drover-test-no-such-program"]
restart_delay = "10ms"
max_restarts = 2

[group.noexec]
command = ["./not-executable.sh"]
restart_delay = "10ms"
max_restarts = 0

[group.fine]
command = ["sleep", "1000"]
start_secs = "0s"
"#,
    );
    let d = Drover::start_in(dir, &[]);
    d.wait_group_state("missing", "fatal");
    d.wait_group_state("noexec", "fatal");
    d.wait_group_state("fine", "running");
    let err = d.stderr.wait_for("both failures logged", |t| {
        t.matches("missing[0]: cannot start").count() == 3 && t.contains("noexec[0]: cannot start")
    });
    assert!(
        err.contains("missing[0]: cannot start: `drover-test-no-such-program` not found"),
        "{err}"
    );
    assert!(
        err.contains(
            "noexec[0]: cannot start: cannot execute `./not-executable.sh`: Permission denied"
        ),
        "{err}"
    );
    assert_eq!(err.matches("missing[0]: cannot start").count(), 3);
}

#[test]
fn stop_start_restart_commands_act_on_one_group() {
    let d = Drover::start(
        "commands",
        r#"
[group.a]
command = ["sleep", "1000"]
processes = 2
start_secs = "0s"

[group.b]
command = ["sleep", "1000"]
start_secs = "0s"
"#,
    );
    let a = d.wait_group_state("a", "running");
    let b = d.wait_group_state("b", "running");

    let out = d.cli(&["stop", "a"]);
    assert!(out.status.success(), "{out:?}");
    d.wait_group_state("a", "stopped");
    for pid in &a {
        wait_until("stopped child to be gone", || !alive(*pid));
    }
    assert_eq!(d.status()["groups"][0]["state"], "stopped");

    let out = d.cli(&["start", "a"]);
    assert!(out.status.success());
    let a2 = d.wait_group_state("a", "running");
    assert!(a2.iter().all(|p| !a.contains(p)));

    let out = d.cli(&["restart", "a"]);
    assert!(out.status.success());
    d.wait_status("a restarted", |s| {
        Drover::children(s, "a")
            .iter()
            .all(|c| c["state"] == "running" && !a2.contains(&c["pid"].as_i64().unwrap_or(0)))
    });
    assert_eq!(d.wait_group_state("b", "running"), b, "b untouched");

    let out = d.cli(&["restart", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "drover: no group named `nope`\n"
    );
}
