//! Restart rules on the real binary: immediate restart of a
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

/// A child killed by a real-time signal (which nix's `WaitStatus` cannot
/// name: reaping it returned EINVAL, and drover lost the exit — the slot
/// stayed `running` with a dead PID, never restarted) is reported and
/// replaced like any other.
#[test]
fn a_child_killed_by_a_real_time_signal_is_replaced() {
    let d = Drover::start(
        "rt-signal",
        "[group.sleeper]\ncommand = [\"sleep\", \"1000\"]\nstart_secs = \"0s\"\n",
    );
    let pids = d.wait_group_state("sleeper", "running");
    let signal = libc::SIGRTMIN() + 6; // nix cannot name it
    // SAFETY: kill(2) has no memory effects.
    let sent = unsafe { libc::kill(pids[0] as i32, signal) };
    assert_eq!(sent, 0);
    let status = d.wait_status("a replacement for sleeper[0]", |s| {
        let c = &Drover::children(s, "sleeper")[0];
        c["restarts"] == 1 && c["state"] == "running" && c["pid"] != pids[0]
    });
    let kids = Drover::children(&status, "sleeper");
    assert_eq!(kids[0]["last_exit"]["signal"], "SIGRTMIN+6", "{status:#}");
    d.stderr.wait_for("the restart log line", |t| {
        t.contains("sleeper[0]: exited (killed by SIGRTMIN+6); restarting")
    });
}

#[test]
fn failed_starts_back_off_and_end_fatal() {
    let d = Drover::start(
        "fatal",
        r#"
[group.broken]
command = ["sh", "-c", "echo attempt; exit 3"]
start_secs = "100ms"
restart_delay = "100ms"
restart_delay_max = "400ms"
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
        "first start + max_restarts retries: {text}\nstderr:\n{err}"
    );
    for (n, delay) in [(1, "100ms"), (2, "200ms"), (3, "400ms")] {
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
    let out = d.cli(&["restart", "broken", "--no-wait"]);
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

/// Regression: SIGKILL an nginx master and its workers keep serving on the
/// port, each replacement master fails to bind, and drover restarted it
/// forever while `status` said `running`. A child's exit ends its process
/// group (`stop_signal`, SIGKILL after `stop_timeout`); `status` lists the
/// leftovers meanwhile, and the replacement starts once the group is empty.
#[test]
fn a_crashed_childs_process_group_is_stopped_before_its_replacement_starts() {
    let d = Drover::start(
        "leftovers",
        r#"
[group.master]
command = ["sh", "-c", "(trap '' TERM; exec sleep 1000) & echo worker=$!; exec sleep 1001"]
start_secs = "100ms"
stop_timeout = "1500ms"
"#,
    );
    let master = d.wait_group_state("master", "running")[0];
    let text = d
        .stdout
        .wait_for("the worker's pid", |t| t.contains("worker="));
    let worker: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("master[0] worker="))
        .and_then(|p| p.trim().parse().ok())
        .unwrap();
    assert!(alive(worker));
    kill(Pid::from_raw(master as i32), Signal::SIGKILL).unwrap();
    // The worker ignores SIGTERM: it is listed while drover waits for it.
    let status = d.wait_status("the leftover to show", |s| {
        let c = &Drover::children(s, "master")[0];
        c["state"] == "waiting"
            && c["leftovers"]
                .as_array()
                .is_some_and(|l| l.contains(&worker.into()))
    });
    let child = &Drover::children(&status, "master")[0];
    assert!(child["pid"].is_null(), "{child}");
    assert!(
        child["reason"].as_str().unwrap().contains("process group"),
        "{child}"
    );
    // SIGKILL after stop_timeout, then the replacement.
    let status = d.wait_status("a replacement once the group is empty", |s| {
        let c = &Drover::children(s, "master")[0];
        c["state"] == "running" && c["pid"].as_i64().is_some_and(|p| p != master)
    });
    assert!(!alive(worker), "the old worker was killed with its group");
    let child = &Drover::children(&status, "master")[0];
    assert_eq!(child["leftovers"].as_array().unwrap().len(), 0, "{child}");
    d.stderr.wait_for("the log to say so", |t| {
        t.contains("leaving processes in its process group")
    });
}

/// A program that daemonizes itself (exits 0 at once, leaving its daemon
/// in its process group) has its daemon stopped too, with a warning.
#[test]
fn a_self_daemonizing_program_gets_a_warning_and_its_daemon_is_stopped() {
    let d = Drover::start(
        "daemonize",
        r#"
[group.daemon]
command = ["sh", "-c", "sleep 1000 & echo daemon=$!; exit 0"]
restart = "on-failure"
"#,
    );
    let text = d
        .stdout
        .wait_for("the daemon's pid", |t| t.contains("daemon="));
    let daemon: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("daemon[0] daemon="))
        .and_then(|p| p.trim().parse().ok())
        .unwrap();
    d.stderr.wait_for("the warning", |t| {
        t.contains("it seems to daemonize itself")
            && t.contains("run the program in the foreground")
    });
    wait_until("the daemon to be stopped", || !alive(daemon));
    d.wait_group_state("daemon", "exited");
}

/// Regression: 8 children with `start_secs = "0s"` running `false` kept
/// the loop in `waitpid` restarting them inline (1,403 starts and not one
/// `epoll_wait` in 1.5 s): `status` timed out and SIGTERM waited seconds.
/// Now no slot starts twice within 100 ms, and reaping yields to the loop.
#[test]
fn a_crash_storm_is_bounded_and_drover_stays_responsive() {
    let mut d = Drover::start(
        "storm",
        r#"
[group.storm]
command = ["false"]
processes = 8
start_secs = "0s"
restart_delay = "0s"
restart_delay_max = "0s"
max_restarts = 1000
"#,
    );
    let starts = |t: &str| t.matches("starting group=storm").count();
    let text = d.stderr.wait_for("the storm to begin", |t| starts(t) >= 24);
    let (t1, c1) = (std::time::Instant::now(), starts(&text));
    for _ in 0..10 {
        d.status(); // answers while the storm goes on
    }
    wait_until("a second of storm", || {
        t1.elapsed() >= std::time::Duration::from_secs(1)
    });
    let (elapsed, c2) = (t1.elapsed(), starts(&d.stderr.text()));
    // At most one start per slot per 100 ms (+1 in flight at each end).
    let bound = 8 * (elapsed.as_millis() as usize / 100 + 2);
    assert!(
        c2 - c1 <= bound,
        "{} starts in {elapsed:?} (bound {bound})",
        c2 - c1
    );
    d.signal(libc::SIGTERM);
    let code = Drover::code(d.wait_exit());
    assert!(code == 0 || code == 3, "exit {code}");
}

/// A daemon that also left the process group (`setsid`) is found among the
/// orphans re-parented to drover when its parent exits with success within
/// `start_secs`, and stopped too.
#[test]
fn a_daemon_that_called_setsid_is_found_and_stopped() {
    let d = Drover::start(
        "setsid",
        r#"
[group.daemon]
command = ["sh", "-c", "rm -f daemon.pid; setsid sh -c 'echo $$$$ > daemon.pid.tmp; mv daemon.pid.tmp daemon.pid; exec sleep 1000' & while [ ! -s daemon.pid ]; do :; done; exit 0"]
restart = "on-failure"
start_secs = "5s"
"#,
    );
    let pidfile = d.dir.path().join("daemon.pid");
    wait_until("the daemon to start", || pidfile.exists());
    let daemon: i64 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    d.stderr.wait_for("the warning", |t| {
        t.contains(&format!(
            "left pid {daemon} running in a session of its own"
        ))
    });
    wait_until("the daemon to be stopped", || !alive(daemon));
    d.wait_group_state("daemon", "exited");
}
