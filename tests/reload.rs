//! Config reload on the real binary: a new config is applied as a
//! difference (same PIDs for what did not change, scaling, policy in place,
//! rolling replacement, added and removed groups, fatal children revived,
//! queues kept or dead-lettered), every way editors and Kubernetes save a
//! file is applied exactly once, an invalid config changes nothing and shows
//! in `status`, bursts converge, and reloads during backoff, during shutdown
//! and under queue traffic behave. What the file system holds cannot hurt:
//! a file still open for writing is not read, a config directory deleted and
//! created again is watched again, FIFOs and devices are skipped.
//!
//! A reload is observed through drover's own log line
//! (`a config file changed: config reloaded: <summary>`), counted, never
//! through a sleep.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Drover, TempDir, alive, python, wait_until};
use serde_json::Value;

/// The log line of a reload caused by a file event; the summary follows.
const FILE_RELOAD: &str = "a config file changed: config reloaded: ";

// ---------------------------------------------------------------- helpers

/// A config of sleeping groups: `(name, processes)`.
fn sleepers(groups: &[(&str, u32)]) -> String {
    groups
        .iter()
        .map(|(name, n)| {
            format!(
                "[group.{name}]\ncommand = [\"sleep\", \"1000\"]\nprocesses = {n}\nstart_secs = \"100ms\"\n\n"
            )
        })
        .collect()
}

/// The summaries of every reload caused by a file event, in order.
fn file_reloads(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.split_once(FILE_RELOAD).map(|(_, s)| s.to_owned()))
        .collect()
}

/// Waits for the `n`-th reload caused by a file event; returns all summaries.
fn wait_file_reloads(d: &Drover, n: usize) -> Vec<String> {
    file_reloads(&d.stderr.wait_count(FILE_RELOAD, n))
}

/// Waits for a file-event reload with exactly this summary.
fn wait_file_reload_of(d: &Drover, summary: &str) -> Vec<String> {
    let text = d.stderr.wait_for(&format!("a reload: {summary}"), |t| {
        file_reloads(t).iter().any(|s| s == summary)
    });
    file_reloads(&text)
}

/// Whether `group` is in the status.
fn has_group(status: &Value, group: &str) -> bool {
    status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["name"] == group)
}

/// Waits until `group` has exactly `n` children, all in `state` (with a PID
/// when the state has one); returns their PIDs by index.
fn wait_children(d: &Drover, group: &str, n: usize, state: &str) -> Vec<i64> {
    let status = d.wait_status(&format!("{n} children of {group} {state}"), |s| {
        has_group(s, group) && {
            let kids = Drover::children(s, group);
            kids.len() == n
                && kids.iter().enumerate().all(|(i, c)| {
                    c["index"] == i
                        && c["state"] == state
                        && (c["pid"].is_i64() || !matches!(state, "running" | "starting"))
                })
        }
    });
    Drover::children(&status, group)
        .iter()
        .map(|c| c["pid"].as_i64().unwrap_or(0))
        .collect()
}

/// Live processes of `group` started by this drover (by their environment).
fn group_processes(d: &Drover, group: &str) -> Vec<i32> {
    let marker = format!("DROVER_TEST_MARKER={}", d.dir.path().display());
    let want = format!("DROVER_GROUP={group}");
    common::marked_processes(&marker, d.dir.path())
        .into_iter()
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            env.split(|&b| b == 0).any(|kv| kv == want.as_bytes())
        })
        .filter(|&pid| alive(pid as i64))
        .collect()
}

/// Waits until none of `pids` is alive (on timeout, shows drover's log).
fn wait_gone(d: &Drover, pids: &[i64]) {
    d.wait_status(&format!("PIDs {pids:?} to be gone"), |_| {
        pids.iter().all(|&pid| !alive(pid))
    });
}

fn config_path(d: &Drover) -> PathBuf {
    d.dir.path().join("drover.toml")
}

/// Saves a new `drover.toml` the way most editors do (a temp file renamed
/// over it), so that the tests of the difference rules do not depend on how
/// a partial in-place write is handled; the save-pattern tests cover that.
fn edit(d: &Drover, text: impl AsRef<str>) {
    let tmp = d.dir.path().join("drover.toml.new");
    std::fs::write(&tmp, text.as_ref()).unwrap();
    std::fs::rename(&tmp, config_path(d)).unwrap();
}

/// A save that is one event on the final name: write a hidden temp file,
/// rename it over `path` (used as the "sentinel" second edit).
fn replace_atomically(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.sentinel",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The line number (0-based) of the first line at or after `from` that
/// ends with `needle`.
fn line_ending(lines: &[&str], from: usize, needle: &str) -> Option<usize> {
    lines
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, l)| l.ends_with(needle))
        .map(|(i, _)| i)
}

/// Sets the flag when dropped, so that a sampling thread ends even when the
/// test panics.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Whether a debug line is exactly about `what group=G index=I` (so that
/// index 1 does not match index 10).
fn line_about(lines: &[&str], from: usize, what: &str, group: &str, index: usize) -> Option<usize> {
    let key = format!("{what} group={group} index={index}");
    lines
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, l)| {
            l.split_once(&key)
                .is_some_and(|(_, rest)| rest.is_empty() || rest.starts_with(' '))
        })
        .map(|(i, _)| i)
}

fn launch(name: &str, config: &str, scripts: &[(&str, &str)]) -> Drover {
    Drover::launch(name, config, scripts)
}

fn queue_counter(status: &Value, queue: &str, field: &str) -> u64 {
    status["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == queue)
        .unwrap_or_else(|| panic!("no queue {queue} in {status:#}"))[field]
        .as_u64()
        .unwrap()
}

// ------------------------------------------------- the difference rules

#[test]
fn an_unchanged_config_rewritten_keeps_every_pid() {
    let config = sleepers(&[("a", 2), ("b", 1)]);
    let d = Drover::start("unchanged", &config);
    let a = wait_children(&d, "a", 2, "running");
    let b = wait_children(&d, "b", 1, "running");

    edit(&d, &config);
    assert_eq!(wait_file_reloads(&d, 1), ["no group or queue changed"]);
    assert_eq!(wait_children(&d, "a", 2, "running"), a);
    assert_eq!(wait_children(&d, "b", 1, "running"), b);

    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "reloaded: no group or queue changed"
    );
    let status = d.status();
    let pids = |g| -> Vec<i64> {
        Drover::children(&status, g)
            .iter()
            .map(|c| c["pid"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(pids("a"), a);
    assert_eq!(pids("b"), b);
    for pid in a.iter().chain(&b) {
        assert!(alive(*pid), "{pid} was stopped");
    }
    assert!(
        !d.stderr.text().contains("retired"),
        "nothing may be retired: {}",
        d.stderr.text()
    );
}

#[test]
fn scaling_up_keeps_the_running_children_and_starts_the_difference() {
    let d = Drover::start("scaleup", &sleepers(&[("w", 2), ("other", 1)]));
    let before = wait_children(&d, "w", 2, "running");
    let other = wait_children(&d, "other", 1, "running");

    edit(&d, sleepers(&[("w", 4), ("other", 1)]));
    assert_eq!(wait_file_reloads(&d, 1), ["scaled: w"]);
    let after = wait_children(&d, "w", 4, "running");
    assert_eq!(after[..2], before[..], "indexes 0 and 1 keep their PIDs");
    for new in &after[2..] {
        assert!(!before.contains(new), "{after:?} vs {before:?}");
    }
    assert_ne!(after[2], after[3]);
    assert_eq!(wait_children(&d, "other", 1, "running"), other);
    assert_eq!(group_processes(&d, "w").len(), 4);
}

#[test]
fn scaling_down_stops_the_highest_indexes_only() {
    let d = Drover::start("scaledown", &sleepers(&[("w", 4)]));
    let before = wait_children(&d, "w", 4, "running");

    edit(&d, sleepers(&[("w", 1)]));
    assert_eq!(wait_file_reloads(&d, 1), ["scaled: w"]);
    let after = wait_children(&d, "w", 1, "running");
    assert_eq!(after, [before[0]], "index 0 keeps its process");
    wait_gone(&d, &before[1..]);
    assert!(alive(before[0]));
    wait_until("only one w process left", || {
        group_processes(&d, "w").len() == 1
    });
}

#[test]
fn a_policy_change_applies_in_place_and_the_new_stop_signal_is_used() {
    let group = |signal: &str, timeout: &str| {
        format!(
            r#"
[group.w]
command = ["sh", "-c", "trap 'echo got-usr1; exit 0' USR1; trap 'echo got-term; exit 0' TERM; echo ready; sleep 1000 & wait"]
processes = 2
start_secs = "100ms"
stop_signal = "{signal}"
stop_timeout = "{timeout}"
restart_delay = "50ms"
max_restarts = 7
"#
        )
    };
    let d = Drover::start("policy", &group("SIGTERM", "10s"));
    d.stdout.wait_count("] ready", 2);
    let before = wait_children(&d, "w", 2, "running");

    let new = group("SIGUSR1", "5s")
        .replace("restart_delay = \"50ms\"", "restart_delay = \"70ms\"")
        .replace("max_restarts = 7", "max_restarts = 3");
    edit(&d, new);
    assert_eq!(wait_file_reloads(&d, 1), ["new policy: w"]);
    assert_eq!(wait_children(&d, "w", 2, "running"), before, "same PIDs");
    assert_eq!(
        d.stdout.text().matches("] ready").count(),
        2,
        "nothing restarted"
    );

    let out = d.cli(&["stop", "w", "--no-wait"]);
    assert!(out.status.success(), "{out:?}");
    wait_children(&d, "w", 2, "stopped");
    let text = d.stdout.text();
    assert!(text.contains("w[0] got-usr1"), "{text}");
    assert!(text.contains("w[1] got-usr1"), "{text}");
    assert!(
        !text.contains("got-term"),
        "the old stop signal was used: {text}"
    );
    for c in Drover::children(&d.status(), "w") {
        assert_eq!(c["last_exit"]["code"], 0, "{c}");
    }
}

#[test]
fn a_command_change_replaces_every_child_one_at_a_time() {
    let config = |arg: &str| {
        format!(
            "[group.w]\ncommand = [\"sleep\", \"{arg}\"]\nprocesses = 3\nstart_secs = \"300ms\"\n"
        )
    };
    let d = Drover::start("rolling", &config("1000"));
    let before = wait_children(&d, "w", 3, "running");

    // Samples the live processes of `w` throughout the rolling restart.
    let done = AtomicBool::new(false);
    let (min_live, samples) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let (mut min, mut n) = (usize::MAX, 0);
            while !done.load(Ordering::Relaxed) {
                min = min.min(group_processes(&d, "w").len());
                n += 1;
                std::thread::sleep(Duration::from_millis(2)); // sampling pace
            }
            (min, n)
        });
        let guard = SetOnDrop(&done);
        edit(&d, config("1001"));
        assert_eq!(wait_file_reloads(&d, 1), ["replaced: w"]);
        let after = wait_children(&d, "w", 3, "running");
        wait_gone(&d, &before);
        drop(guard);
        let sampled = sampler.join().unwrap();
        for pid in &after {
            assert!(!before.contains(pid), "{after:?} vs {before:?}");
        }
        // The debug log orders it: for each index, the new child starts,
        // runs (after start_secs), then the old one goes; then the next index.
        let text = d.stderr.text();
        let lines: Vec<&str> = text.lines().collect();
        let mut prev_running = 0;
        for (i, pid) in after.iter().enumerate() {
            let start = line_ending(&lines, 0, &format!("starting group=w index={i} pid={pid}"))
                .unwrap_or_else(|| panic!("no start of w[{i}] pid {pid}:\n{text}"));
            let running = line_about(&lines, start, "running", "w", i)
                .unwrap_or_else(|| panic!("w[{i}] never ran:\n{text}"));
            let retired = line_about(&lines, start, "retired", "w", i)
                .unwrap_or_else(|| panic!("old w[{i}] never retired:\n{text}"));
            assert!(
                running < retired,
                "old w[{i}] was stopped before its successor ran:\n{text}"
            );
            assert!(
                start > prev_running,
                "w[{i}] was replaced before w[{}] ran:\n{text}",
                i.saturating_sub(1)
            );
            prev_running = running;
        }
        sampled
    });
    assert!(samples > 0);
    assert!(
        min_live >= 3,
        "at some point only {min_live} processes of w were alive ({samples} samples)"
    );
    assert_eq!(file_reloads(&d.stderr.text()).len(), 1);
}

/// The argv of a live process.
fn cmdline(pid: i64) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .replace('\0', " ")
}

#[test]
fn a_second_command_change_during_a_rolling_restart_wins_everywhere() {
    let config = |arg: &str| {
        format!("[group.w]\ncommand = [\"sleep\", \"{arg}\"]\nprocesses = 2\nstart_secs = \"2s\"\n")
    };
    let d = Drover::start("rolling2", &config("1000"));
    let before = wait_children(&d, "w", 2, "running");

    edit(&d, config("1001"));
    assert_eq!(wait_file_reloads(&d, 1), ["replaced: w"]);
    // w[0] runs `sleep 1001` and is still starting (start_secs = 2s).
    let status = d.wait_status("w[0] starting the second command", |s| {
        let c = &Drover::children(s, "w")[0];
        c["state"] == "starting" && c["pid"].as_i64().is_some_and(|p| !before.contains(&p))
    });
    let middle = Drover::children(&status, "w")[0]["pid"].as_i64().unwrap();

    edit(&d, config("1002"));
    assert_eq!(wait_file_reloads(&d, 2), ["replaced: w", "replaced: w"]);
    let after = d.wait_status("every child of w running the third command", |s| {
        let kids = Drover::children(s, "w");
        kids.len() == 2
            && kids.iter().all(|c| {
                c["state"] == "running"
                    && c["pid"]
                        .as_i64()
                        .is_some_and(|p| !before.contains(&p) && p != middle)
            })
    });
    wait_gone(&d, &before);
    wait_gone(&d, &[middle]);
    for c in Drover::children(&after, "w") {
        let pid = c["pid"].as_i64().unwrap();
        assert_eq!(cmdline(pid), "sleep 1002", "w[{}] pid {pid}", c["index"]);
    }
    wait_until("exactly 2 w processes", || {
        group_processes(&d, "w").len() == 2
    });
}

#[test]
fn scaling_down_during_a_rolling_restart_leaves_no_old_process() {
    let config = |arg: &str, n: u32| {
        format!(
            "[group.w]\ncommand = [\"sleep\", \"{arg}\"]\nprocesses = {n}\nstart_secs = \"1s\"\n"
        )
    };
    let d = Drover::start("rollscale", &config("1000", 2));
    let before = wait_children(&d, "w", 2, "running");

    edit(&d, config("1001", 2));
    assert_eq!(wait_file_reloads(&d, 1), ["replaced: w"]);
    // Index 0 is done; index 1's replacement is starting.
    d.wait_status("w[1]'s replacement starting", |s| {
        let c = &Drover::children(s, "w")[1];
        c["state"] == "starting" && c["pid"].as_i64().is_some_and(|p| !before.contains(&p))
    });

    edit(&d, config("1001", 1));
    assert_eq!(wait_file_reloads(&d, 2), ["replaced: w", "scaled: w"]);
    let after = wait_children(&d, "w", 1, "running");
    assert_eq!(cmdline(after[0]), "sleep 1001");
    wait_gone(&d, &before);
    assert_eq!(group_processes(&d, "w"), [after[0] as i32]);
}

#[test]
fn stopping_a_group_during_its_rolling_restart_stops_the_old_processes_too() {
    let config =
        |arg: &str| format!("[group.w]\ncommand = [\"sleep\", \"{arg}\"]\nstart_secs = \"2s\"\n");
    let d = Drover::start("rollstop", &config("1000"));
    let before = wait_children(&d, "w", 1, "running");

    edit(&d, config("1001"));
    assert_eq!(wait_file_reloads(&d, 1), ["replaced: w"]);
    let new = wait_children(&d, "w", 1, "starting");
    assert_ne!(new, before);

    let out = d.cli(&["stop", "w", "--no-wait"]);
    assert!(out.status.success(), "{out:?}");
    wait_children(&d, "w", 1, "stopped");
    wait_gone(&d, &new);
    wait_gone(&d, &before);
    assert!(group_processes(&d, "w").is_empty());
}

#[test]
fn a_failed_replacement_fixed_by_a_later_reload_leaves_no_old_process() {
    let config = |command: &str| {
        format!(
            "[group.w]\ncommand = {command}\nstart_secs = \"100ms\"\nrestart_delay = \"10ms\"\nmax_restarts = 1\n"
        )
    };
    let d = Drover::start("fixed", &config(r#"["sleep", "1000"]"#));
    let before = wait_children(&d, "w", 1, "running");

    // A typo: the replacement cannot start, so the old child keeps running,
    // and status shows it (regression: it showed `fatal, pid -` while the
    // old child served, invisible), with the failed attempt beside it.
    edit(&d, config(r#"["drover-test-no-such-program"]"#));
    assert_eq!(wait_file_reloads(&d, 1), ["replaced: w"]);
    let status = d.wait_status("the replacement to fail", |s| {
        Drover::children(s, "w")[0]["replacement"]["state"] == "fatal"
    });
    let child = &Drover::children(&status, "w")[0];
    assert_eq!(child["pid"], before[0], "{child}");
    assert_eq!(child["state"], "running", "{child}");
    assert!(
        alive(before[0]),
        "the old child must serve until a replacement runs"
    );
    d.stderr.wait_for("the log to say why", |t| {
        t.contains("its replacement with the new definition failed every start")
    });

    // The fix: the new child runs, and the old one is stopped.
    edit(&d, config(r#"["sleep", "1001"]"#));
    assert_eq!(wait_file_reloads(&d, 2), ["replaced: w", "replaced: w"]);
    let after = wait_children(&d, "w", 1, "running");
    assert_eq!(cmdline(after[0]), "sleep 1001");
    wait_gone(&d, &before);
    assert_eq!(group_processes(&d, "w").len(), 1);
}

#[test]
fn a_removed_group_is_stopped() {
    let d = Drover::start("removed", &sleepers(&[("a", 1), ("b", 2)]));
    let a = wait_children(&d, "a", 1, "running");
    let b = wait_children(&d, "b", 2, "running");

    edit(&d, sleepers(&[("a", 1)]));
    assert_eq!(wait_file_reloads(&d, 1), ["removed: b"]);
    wait_gone(&d, &b);
    let status = d.status();
    assert!(!has_group(&status, "b"), "{status:#}");
    assert_eq!(wait_children(&d, "a", 1, "running"), a);
    assert!(group_processes(&d, "b").is_empty());
}

/// Every process a reload leaves on its way out is in `status` until it
/// is gone, with why: scaled away, of a removed group (both ignore SIGTERM,
/// so they stay `stopping` for `stop_timeout`), and an old process that
/// serves until its replacement runs (the new one takes 60 s to count as
/// running). With the children, that is every live process, each once.
#[test]
fn status_lists_every_process_on_its_way_out() {
    let stubborn = |name: &str, n: u32| {
        format!(
            "[group.{name}]\ncommand = [\"sh\", \"-c\", \"trap '' TERM; exec sleep 1000\"]\n\
             processes = {n}\nstart_secs = \"100ms\"\nstop_timeout = \"60s\"\n\n"
        )
    };
    let roll = |arg: &str, start: &str| {
        format!("[group.roll]\ncommand = [\"sleep\", \"{arg}\"]\nstart_secs = \"{start}\"\n\n")
    };
    let d = Drover::start(
        "retiring",
        &(stubborn("keep", 2) + &stubborn("gone", 1) + &roll("1000", "100ms")),
    );
    let keep = wait_children(&d, "keep", 2, "running");
    let gone = wait_children(&d, "gone", 1, "running");
    let old = wait_children(&d, "roll", 1, "running");
    assert_eq!(d.status()["retiring"], serde_json::json!([]));

    edit(&d, stubborn("keep", 1) + &roll("1001", "60s"));
    let status = d.wait_status("three processes retiring", |s| {
        s["retiring"].as_array().is_some_and(|r| r.len() == 3)
            && Drover::children(s, "roll")[0]["state"] == "starting"
    });
    let retiring = status["retiring"].as_array().unwrap();
    let find = |group: &str| {
        retiring
            .iter()
            .find(|r| r["group"] == group)
            .unwrap_or_else(|| panic!("no retiring process of {group}: {status:#}"))
    };
    let (k, g, r) = (find("keep"), find("gone"), find("roll"));
    assert_eq!(
        (&k["index"], &k["pid"], &k["state"]),
        (&1.into(), &keep[1].into(), &"stopping".into())
    );
    assert_eq!(k["why"], "scaled away (processes = 1)", "{status:#}");
    assert_eq!(
        (&g["index"], &g["pid"], &g["state"]),
        (&0.into(), &gone[0].into(), &"stopping".into())
    );
    assert_eq!(g["why"], "its group was removed", "{status:#}");
    assert_eq!(
        (&r["index"], &r["pid"], &r["state"]),
        (&0.into(), &old[0].into(), &"running".into())
    );
    assert_eq!(
        r["why"], "replaced by a reload: serves until its replacement runs",
        "{status:#}"
    );
    assert!(
        retiring.iter().all(|r| r["uptime_ms"].is_u64()),
        "{status:#}"
    );

    // Each live process once: the children and the retiring together.
    let mut listed: Vec<i64> = ["keep", "roll"]
        .iter()
        .flat_map(|g| Drover::children(&status, g))
        .filter_map(|c| c["pid"].as_i64())
        .chain(retiring.iter().filter_map(|r| r["pid"].as_i64()))
        .collect();
    listed.sort();
    let mut live: Vec<i64> = ["keep", "gone", "roll"]
        .iter()
        .flat_map(|g| group_processes(&d, g))
        .map(i64::from)
        .collect();
    live.sort();
    assert_eq!(listed, live, "{status:#}");

    let table = d.cli(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name} in:\n{table}"))
            .to_owned()
    };
    assert!(table.contains("RETIRING"), "{table}");
    assert!(line("keep[1]").contains("scaled away"), "{table}");
    assert!(line("gone[0]").contains(&gone[0].to_string()), "{table}");

    // Gone: off the list.
    for pid in [keep[1], gone[0]] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    let status = d.wait_status("only roll's old process retiring", |s| {
        s["retiring"].as_array().is_some_and(|r| r.len() == 1)
    });
    assert_eq!(status["retiring"][0]["pid"], old[0], "{status:#}");
}

#[test]
fn a_new_group_is_started() {
    let d = Drover::start("added", &sleepers(&[("a", 1)]));
    let a = wait_children(&d, "a", 1, "running");

    edit(&d, sleepers(&[("a", 1), ("c", 2)]));
    assert_eq!(wait_file_reloads(&d, 1), ["added: c"]);
    let c = wait_children(&d, "c", 2, "running");
    assert!(c.iter().all(|p| alive(*p) && !a.contains(p)));
    assert_eq!(wait_children(&d, "a", 1, "running"), a);
}

#[test]
fn any_valid_reload_gives_fatal_children_a_fresh_start() {
    let config = r#"
[group.broken]
command = ["sh", "-c", "echo attempt; exit 1"]
start_secs = "1s"
restart_delay = "10ms"
max_restarts = 0

[group.fine]
command = ["sleep", "1000"]
start_secs = "100ms"
"#;
    let d = Drover::start("revive", config);
    wait_children(&d, "broken", 1, "fatal");
    let fine = wait_children(&d, "fine", 1, "running");
    assert_eq!(d.stdout.text().matches("broken[0] attempt").count(), 1);
    let restarts = |s: &Value| Drover::children(s, "broken")[0]["restarts"].clone();
    assert_eq!(restarts(&d.status()), 0);

    // An edit that changes nothing still revives it.
    edit(&d, config);
    assert_eq!(wait_file_reloads(&d, 1), ["1 fatal child restarted"]);
    d.stdout.wait_count("broken[0] attempt", 2);
    let status = d.wait_status("broken fatal again after one more start", |s| {
        Drover::children(s, "broken")[0]["state"] == "fatal" && restarts(s) == 1
    });
    assert_eq!(
        Drover::children(&status, "broken")[0]["last_exit"]["code"],
        1
    );

    // So does `drover reload`.
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "reloaded: 1 fatal child restarted"
    );
    d.stdout.wait_count("broken[0] attempt", 3);
    d.wait_status("broken fatal again after a third start", |s| {
        Drover::children(s, "broken")[0]["state"] == "fatal" && restarts(s) == 2
    });
    assert_eq!(wait_children(&d, "fine", 1, "running"), fine);
}

/// A forwarding consumer that prints each message of `jobs` and acks it.
const PRINT_CONSUMER: &str = r#"
import os, socket
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
while (msg := jobs.recv(65536)):
    print(msg.decode(), flush=True)
    jobs.send(b"ack")
"#;

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

#[test]
fn a_removed_queue_dead_letters_what_it_holds() {
    let d = launch(
        "dropqueue",
        r#"
[supervisor]
state_dir = "state"

[queue.old]

[group.producer]
command = ["@PY@", "producer.py", "5"]
outputs = ["old"]
start_secs = "100ms"

[group.consumer]
command = ["@PY@", "consumer.py"]
processes = 0
inputs = ["old"]
"#,
        &[
            (
                "producer.py",
                &PRODUCER.replace("DROVER_OUT_JOBS", "DROVER_OUT_OLD"),
            ),
            (
                "consumer.py",
                &PRINT_CONSUMER.replace("DROVER_IN_JOBS", "DROVER_IN_OLD"),
            ),
        ],
    );
    d.stdout
        .wait_for("the producer", |t| t.contains("producer[0] sent 5"));
    d.wait_status("5 messages in old", |s| {
        queue_counter(s, "old", "depth") == 5
    });

    edit(&d, sleepers(&[("producer", 1)]));
    let summaries = wait_file_reloads(&d, 1);
    assert_eq!(summaries.len(), 1);
    assert!(summaries[0].contains("removed: consumer"), "{summaries:?}");
    assert!(summaries[0].contains("queue removed: old"), "{summaries:?}");
    assert!(summaries[0].contains("replaced: producer"), "{summaries:?}");
    let err = d.stderr.text();
    assert!(
        err.contains("queue old was removed while holding 5 messages; dead-lettering them"),
        "{err}"
    );
    let file = d.dir.path().join("state/dead-letters/old.jsonl");
    // Written by drover's dead-letter thread: wait for all five.
    wait_until("five dead-letter records", || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.lines().count() == 5)
    });
    let records: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let messages: Vec<&str> = records
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["m0", "m1", "m2", "m3", "m4"]);
    for r in &records {
        assert_eq!(r["queue"], "old");
        assert!(r["reason"].as_str().unwrap().contains("removed"), "{r}");
    }
    let status = d.status();
    assert!(
        status["queues"].as_array().unwrap().is_empty(),
        "{status:#}"
    );
}

// ---------------------------------------------------- editor save patterns

/// Applies `save` (one editor's way of writing the config, given the text
/// of a config scaling `w` from 1 to 2) and checks it is applied exactly once.
///
/// "Exactly once" without a sleep: after the save's reload, `sentinel` makes
/// an edit that is one rename (so one event) and adds a group `sentinel`.
/// The watcher hands events over in order, so a late reload caused by the
/// save's own events can only come before the sentinel's; once the
/// sentinel's reload is logged, the count of file reloads must be two.
fn save_applies_once(d: &Drover, save: impl FnOnce(&str), sentinel: impl FnOnce()) {
    let before = wait_children(d, "w", 1, "running");
    save(&sleepers(&[("w", 2)]));
    assert_eq!(wait_file_reloads(d, 1), ["scaled: w"]);
    let after = wait_children(d, "w", 2, "running");
    assert_eq!(after[0], before[0]);

    sentinel();
    let summaries = wait_file_reload_of(d, "added: sentinel");
    assert_eq!(summaries, ["scaled: w", "added: sentinel"]);
    wait_children(d, "sentinel", 1, "running");
    let err = d.stderr.text();
    assert!(!err.contains("invalid"), "{err}");
    assert!(d.status()["config_error"].is_null());
    assert_eq!(wait_children(d, "w", 2, "running"), after);
}

/// The sentinel edit of a single-file config.
fn file_sentinel(path: &Path) {
    replace_atomically(path, &sleepers(&[("w", 2), ("sentinel", 1)]));
}

#[test]
fn an_in_place_write_is_applied_once() {
    let d = Drover::start("inplace", &sleepers(&[("w", 1)]));
    let path = config_path(&d);
    save_applies_once(
        &d,
        |text| std::fs::write(&path, text).unwrap(),
        || file_sentinel(&path),
    );
}

#[test]
fn a_write_to_a_temp_file_then_rename_is_applied_once() {
    let d = Drover::start("rename", &sleepers(&[("w", 1)]));
    let path = config_path(&d);
    save_applies_once(
        &d,
        |text| {
            let tmp = d.dir.path().join("drover.toml.tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        },
        || file_sentinel(&path),
    );
}

#[test]
fn a_vim_style_backup_and_rename_is_applied_once() {
    let d = Drover::start("vim", &sleepers(&[("w", 1)]));
    let path = config_path(&d);
    save_applies_once(
        &d,
        |text| {
            let backup = d.dir.path().join("drover.toml~");
            std::fs::rename(&path, &backup).unwrap();
            std::fs::write(&path, text).unwrap();
            std::fs::remove_file(&backup).unwrap();
        },
        || file_sentinel(&path),
    );
}

/// Lays out a Kubernetes ConfigMap volume in `dir`: `..2026_a/FILE`, the
/// `..data` symlink to it, and `FILE -> ..data/FILE`.
fn configmap(dir: &Path, file: &str, text: &str) {
    std::fs::create_dir_all(dir.join("..2026_a")).unwrap();
    std::fs::write(dir.join("..2026_a").join(file), text).unwrap();
    symlink("..2026_a", dir.join("..data")).unwrap();
    symlink(format!("..data/{file}"), dir.join(file)).unwrap();
}

/// kubelet's atomic update of that volume: a new timestamped directory, a
/// `..data_tmp` symlink to it renamed over `..data`, the old one removed.
fn configmap_update(dir: &Path, file: &str, text: &str) {
    std::fs::create_dir(dir.join("..2026_b")).unwrap();
    std::fs::write(dir.join("..2026_b").join(file), text).unwrap();
    symlink("..2026_b", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_a")).unwrap();
}

#[test]
fn a_kubernetes_configmap_swap_is_applied_once() {
    let dir = TempDir::new("configmap");
    configmap(dir.path(), "drover.toml", &sleepers(&[("w", 1)]));
    let d = Drover::start_in(dir, &[]);
    let root = d.dir.path().to_path_buf();
    save_applies_once(
        &d,
        |text| configmap_update(&root, "drover.toml", text),
        // Replaces the top-level symlink with a file, in one rename.
        || file_sentinel(&root.join("drover.toml")),
    );
}

#[test]
fn a_kubernetes_configmap_swap_in_a_config_directory_is_applied_once() {
    let dir = TempDir::new("configmapdir");
    configmap(
        &dir.path().join("conf.d"),
        "10-w.toml",
        &sleepers(&[("w", 1)]),
    );
    let d = start_in_directory(dir);
    let conf = d.dir.path().join("conf.d");
    save_applies_once(
        &d,
        |text| configmap_update(&conf, "10-w.toml", text),
        || dir_sentinel(&conf),
    );
}

/// The sentinel edit of a config directory: a new file, in one rename.
fn dir_sentinel(conf: &Path) {
    replace_atomically(
        &conf.join("20-sentinel.toml"),
        &sleepers(&[("sentinel", 1)]),
    );
}

/// Runs drover on the directory `conf.d` inside the test directory (the
/// harness always passes `<dir>/drover.toml`; a tiny `sh` wrapper swaps in
/// the directory and execs drover, so the harness's guard is unchanged).
fn start_on_directory(name: &str, files: &[(&str, &str)]) -> Drover {
    let dir = TempDir::new(name);
    for (file, text) in files {
        dir.write(&format!("conf.d/{file}"), text);
    }
    start_in_directory(dir)
}

fn start_in_directory(dir: TempDir) -> Drover {
    Drover::start_in(
        dir,
        &[
            "sh",
            "-c",
            r#"exec "$0" "$1" "$(dirname "$2")/conf.d" "$3" "$4""#,
        ],
    )
}

#[test]
fn a_file_added_to_a_config_directory_is_applied_once() {
    let d = start_on_directory("diradd", &[("00-base.toml", &sleepers(&[("w", 1)]))]);
    let conf = d.dir.path().join("conf.d");
    let w = wait_children(&d, "w", 1, "running");

    std::fs::write(conf.join("10-extra.toml"), sleepers(&[("x", 2)])).unwrap();
    assert_eq!(wait_file_reloads(&d, 1), ["added: x"]);
    wait_children(&d, "x", 2, "running");

    dir_sentinel(&conf);
    assert_eq!(
        wait_file_reload_of(&d, "added: sentinel"),
        ["added: x", "added: sentinel"]
    );
    assert_eq!(wait_children(&d, "w", 1, "running"), w);
    assert!(!d.stderr.text().contains("invalid"), "{}", d.stderr.text());
}

#[test]
fn a_file_removed_from_a_config_directory_is_applied_once() {
    let d = start_on_directory(
        "dirremove",
        &[
            ("00-base.toml", &sleepers(&[("w", 1)])),
            ("10-extra.toml", &sleepers(&[("x", 2)])),
        ],
    );
    let conf = d.dir.path().join("conf.d");
    let w = wait_children(&d, "w", 1, "running");
    let x = wait_children(&d, "x", 2, "running");

    std::fs::remove_file(conf.join("10-extra.toml")).unwrap();
    assert_eq!(wait_file_reloads(&d, 1), ["removed: x"]);
    wait_gone(&d, &x);

    dir_sentinel(&conf);
    assert_eq!(
        wait_file_reload_of(&d, "added: sentinel"),
        ["removed: x", "added: sentinel"]
    );
    assert_eq!(wait_children(&d, "w", 1, "running"), w);
    assert!(!has_group(&d.status(), "x"));
}

// ------------------------------------------------------- invalid configs

#[test]
fn an_invalid_edit_changes_nothing_until_a_valid_one_arrives() {
    let config = r#"
[supervisor]
state_dir = "state"

[queue.jobs]

[group.producer]
command = ["@PY@", "producer.py", "10"]
outputs = ["jobs"]
start_secs = "100ms"

[group.consumer]
command = ["@PY@", "consumer.py"]
processes = 0
inputs = ["jobs"]
start_secs = "100ms"

[group.w]
command = ["sleep", "1000"]
processes = 2
start_secs = "100ms"
"#;
    let d = launch(
        "invalid",
        config,
        &[("producer.py", PRODUCER), ("consumer.py", PRINT_CONSUMER)],
    );
    let w = wait_children(&d, "w", 2, "running");
    let producer = wait_children(&d, "producer", 1, "running");
    d.stdout
        .wait_for("the producer", |t| t.contains("producer[0] sent 10"));
    d.wait_status("10 messages held", |s| {
        queue_counter(s, "jobs", "depth") == 10
    });

    // Would scale w, drop the queue and its consumer, if it were valid.
    let invalid = config
        .replace("[queue.jobs]\n", "")
        .replace("processes = 2\n", "processes = 5\nprocesess = 3\n");
    let line = invalid
        .lines()
        .position(|l| l.starts_with("procesess"))
        .unwrap()
        + 1;
    let at = format!("drover.toml:{line}:");
    edit(&d, invalid.replace("@PY@", python()));
    let err = d.stderr.wait_for(
        "the invalid config to be reported, with its location",
        |t| t.contains("a config file changed: the new config is invalid") && t.contains(&at),
    );
    assert!(file_reloads(&err).is_empty(), "{err}");

    let status = d.status();
    let error = status["config_error"]
        .as_str()
        .expect("config_error is set");
    assert!(error.contains(&at), "{error}");
    assert!(error.contains("procesess"), "{error}");
    assert_eq!(Drover::children(&status, "w").len(), 2);
    assert_eq!(wait_children(&d, "w", 2, "running"), w);
    assert_eq!(wait_children(&d, "producer", 1, "running"), producer);
    let status = d.status();
    assert_eq!(queue_counter(&status, "jobs", "depth"), 10);
    assert_eq!(queue_counter(&status, "jobs", "dead_lettered"), 0);
    assert!(has_group(&status, "consumer"));

    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&at) && stderr.contains("procesess"),
        "{stderr}"
    );
    assert!(d.status()["config_error"].is_string());

    // A valid edit: the consumer scales up and drains the kept messages.
    let valid = config.replace("processes = 0\n", "processes = 1\n");
    edit(&d, valid.replace("@PY@", python()));
    assert_eq!(wait_file_reloads(&d, 1), ["scaled: consumer"]);
    let text = d.stdout.wait_for("the ten kept messages", |t| {
        (0..10).all(|i| t.contains(&format!("consumer[0] m{i}\n")))
    });
    assert_eq!(text.matches("consumer[0] m").count(), 10);
    let status = d.wait_status("jobs drained", |s| queue_counter(s, "jobs", "acked") == 10);
    assert!(status["config_error"].is_null(), "{status:#}");
    assert_eq!(wait_children(&d, "w", 2, "running"), w);
    assert_eq!(wait_children(&d, "producer", 1, "running"), producer);
}

// ---------------------------------------------------------------- bursts

#[test]
fn twenty_quick_edits_converge_to_the_last() {
    let d = Drover::start("burst", &sleepers(&[("w", 1)]));
    let first = wait_children(&d, "w", 1, "running");
    let path = config_path(&d);
    for n in 1..=20 {
        std::fs::write(&path, sleepers(&[("w", n)])).unwrap();
    }
    let pids = wait_children(&d, "w", 20, "running");
    assert_eq!(
        pids[0],
        first[0],
        "w[0] must never be touched; stderr:\n{}",
        d.stderr.text()
    );
    let mut unique = pids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 20);
    wait_until("exactly 20 w processes", || {
        group_processes(&d, "w").len() == 20
    });
    let status = d.status();
    assert!(status["config_error"].is_null(), "{status:#}");
    let reloads = file_reloads(&d.stderr.text());
    println!("20 edits, {} reloads: {reloads:?}", reloads.len());
    assert!(!reloads.is_empty() && reloads.len() <= 20, "{reloads:?}");
}

// ------------------------------------------ reloads in unusual moments

#[test]
fn a_reload_during_backoff_starts_the_new_command_at_once() {
    let config = |command: &str| {
        format!(
            r#"
[group.w]
command = {command}
start_secs = "500ms"
restart_delay = "10m"
restart_delay_max = "10m"
max_restarts = 5
"#
        )
    };
    let d = Drover::start(
        "backoff",
        &config(r#"["sh", "-c", "echo attempt; exit 1"]"#),
    );
    wait_children(&d, "w", 1, "backoff");
    assert_eq!(d.stdout.text().matches("w[0] attempt").count(), 1);

    edit(&d, config(r#"["sleep", "1000"]"#));
    assert_eq!(wait_file_reloads(&d, 1), ["replaced: w"]);
    // Well before the 10-minute backoff would end.
    let pids = wait_children(&d, "w", 1, "running");
    assert!(alive(pids[0]));
    assert_eq!(d.stdout.text().matches("w[0] attempt").count(), 1);
}

#[test]
fn a_reload_during_shutdown_is_ignored() {
    let dir = TempDir::new("shutdown");
    let release = dir.path().join("release");
    dir.write(
        "drover.toml",
        &format!(
            r#"
[group.w]
command = ["sh", "-c", "trap 'echo in-trap; while [ ! -e {release} ]; do sleep 0.01; done; exit 0' TERM; echo ready; sleep 1000 & wait"]
start_secs = "100ms"
stop_timeout = "25s"
"#,
            release = release.display()
        ),
    );
    let mut d = Drover::start_in(dir, &[]);
    d.stdout.wait_for("w ready", |t| t.contains("w[0] ready"));
    wait_children(&d, "w", 1, "running");

    d.signal(libc::SIGTERM);
    d.stdout
        .wait_for("w in its TERM trap", |t| t.contains("w[0] in-trap"));

    edit(&d, sleepers(&[("w", 3), ("x", 1)]));
    d.stderr.wait_for("the file event to be refused", |t| {
        t.contains("a config file changed: not reloading, drover is shutting down")
    });
    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shutting down"),
        "{out:?}"
    );
    d.signal(libc::SIGHUP);
    d.stderr.wait_for("SIGHUP to be refused", |t| {
        t.contains("SIGHUP: not reloading, drover is shutting down")
    });

    std::fs::write(&release, "").unwrap();
    let status = d.wait_exit();
    let err = d.stderr.text();
    assert_eq!(Drover::code(status), 0, "{err}");
    assert!(!err.contains("config reloaded"), "{err}");
    assert!(!err.contains("group=x"), "{err}");
    assert_eq!(err.matches("starting group=w").count(), 1, "{err}");
}

// --------------------------------------------------- reload under traffic

/// `paced.py N`: sends 0 .. N-1 to `jobs`, about one a millisecond.
const PACED_PRODUCER: &str = r#"
import os, signal, socket, sys, time
out = socket.socket(fileno=int(os.environ["DROVER_OUT_JOBS"]))
n = int(sys.argv[1])
for i in range(n):
    out.send(str(i).encode())
    time.sleep(0.001)
print(f"sent {n}", flush=True)
signal.pause()
"#;

/// `forward.py VERSION`: jobs → results as "N VERSION", ack after forwarding.
const FORWARD: &str = r#"
import os, socket, sys
version = sys.argv[1].encode()
jobs = socket.socket(fileno=int(os.environ["DROVER_IN_JOBS"]))
results = socket.socket(fileno=int(os.environ["DROVER_OUT_RESULTS"]))
while (msg := jobs.recv(65536)):
    results.send(msg + b" " + version)
    jobs.send(b"ack")
"#;

/// `sink.py FILE`: appends every message of `results` to FILE before acking.
const SINK: &str = r#"
import os, socket, sys
results = socket.socket(fileno=int(os.environ["DROVER_IN_RESULTS"]))
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
while (msg := results.recv(65536)):
    os.write(fd, msg + b"\n")
    results.send(b"ack")
"#;

#[test]
fn replacing_consumers_mid_stream_loses_no_message() {
    const N: usize = 2000;
    let config = |version: &str| {
        format!(
            r#"
[supervisor]
state_dir = "state"

[queue.jobs]
delivery = "at-least-once"
max_deliveries = 1000

[queue.results]
max_deliveries = 1000

[group.producer]
command = ["@PY@", "paced.py", "{N}"]
outputs = ["jobs"]
start_secs = "100ms"

[group.workers]
command = ["@PY@", "forward.py", "{version}"]
processes = 3
inputs = ["jobs"]
outputs = ["results"]
start_secs = "200ms"

[group.sink]
command = ["@PY@", "sink.py", "sink.txt"]
inputs = ["results"]
start_secs = "100ms"
"#
        )
    };
    let d = launch(
        "traffic",
        &config("v1"),
        &[
            ("paced.py", PACED_PRODUCER),
            ("forward.py", FORWARD),
            ("sink.py", SINK),
        ],
    );
    let old = wait_children(&d, "workers", 3, "running");
    let sink = d.dir.path().join("sink.txt");
    let lines = || std::fs::read_to_string(&sink).unwrap_or_default();
    wait_until("a few hundred messages at the sink", || {
        lines().lines().count() >= 300
    });
    assert!(
        !d.stdout.text().contains("producer[0] sent"),
        "the producer finished before the reload; the test needs a slower pace"
    );

    edit(&d, config("v2").replace("@PY@", python()));
    assert_eq!(wait_file_reloads(&d, 1), ["replaced: workers"]);

    let tally = |text: &str| {
        let mut seen: HashMap<usize, usize> = HashMap::new();
        let mut by_version: HashMap<String, usize> = HashMap::new();
        // Only whole lines: the sink may be writing the last one.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        for line in whole.lines() {
            let (n, v) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            *seen.entry(n.parse().unwrap()).or_default() += 1;
            *by_version.entry(v.to_owned()).or_default() += 1;
        }
        (seen, by_version)
    };
    d.wait_status(&format!("all {N} numbers at the sink"), |_| {
        let (seen, _) = tally(&lines());
        (0..N).all(|i| seen.contains_key(&i))
    });
    let new = wait_children(&d, "workers", 3, "running");
    wait_gone(&d, &old);
    assert!(new.iter().all(|p| !old.contains(p)), "{new:?} vs {old:?}");

    let (seen, by_version) = tally(&lines());
    assert!(seen.keys().all(|&n| n < N), "unexpected numbers");
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    let status = d.status();
    println!(
        "{N} messages, {duplicates} duplicates, by version {by_version:?}, jobs redelivered {}",
        queue_counter(&status, "jobs", "redelivered")
    );
    assert!(
        by_version.get("v1").is_some_and(|&n| n > 0),
        "{by_version:?}"
    );
    assert!(
        by_version.get("v2").is_some_and(|&n| n > 0),
        "the new consumers handled nothing: {by_version:?}"
    );
    assert_eq!(queue_counter(&status, "jobs", "dead_lettered"), 0);
    assert_eq!(queue_counter(&status, "results", "dead_lettered"), 0);
    assert_eq!(file_reloads(&d.stderr.text()).len(), 1);
}

// ------------------------------------------ what the file system holds

/// Regression: a save in place that wrote a valid prefix and paused had the
/// prefix applied (here it would remove `b`) once 2 s had passed. A file
/// still open for writing is never read as the config, however long the
/// writer takes: not after the debounce, not on SIGHUP, not on `drover
/// reload`. The whole file is applied once, when the writer closes it.
/// Here drover owns the file, so the kernel tells it about the writer.
#[test]
fn a_config_file_still_open_for_writing_is_never_read() {
    let d = Drover::start("slowsave", &sleepers(&[("a", 1), ("b", 1)]));
    the_reload_waits_for_the_writer_to_close(&d);
}

/// The same where the kernel will not tell (drover neither owns the file
/// nor holds `CAP_LEASE`): the writes and the close that inotify reports
/// decide, with no time limit.
#[test]
fn without_leases_a_config_file_still_open_for_writing_is_never_read() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: needs root, to give the file away and drop CAP_LEASE");
        return;
    }
    let dir = TempDir::new("slowsavenolease");
    let path = dir.write("drover.toml", &sleepers(&[("a", 1), ("b", 1)]));
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let no_lease = [
        "setpriv",
        "--inh-caps",
        "-lease",
        "--bounding-set",
        "-lease",
    ];
    let d = Drover::start_in(dir, &no_lease);
    the_reload_waits_for_the_writer_to_close(&d);
}

/// A writer that has opened the file but written nothing yet leaves no
/// event behind; the kernel still knows, so SIGHUP waits for its close.
#[test]
fn sighup_waits_for_a_writer_that_has_not_written_yet() {
    let d = Drover::start("quietwriter", &sleepers(&[("w", 1)]));
    let w = wait_children(&d, "w", 1, "running");
    let path = config_path(&d);
    let writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    d.signal(libc::SIGHUP);
    d.stderr.wait_for("SIGHUP to wait", |t| {
        t.contains(&format!(
            "SIGHUP: waiting for {} to be closed",
            path.display()
        ))
    });
    assert!(!d.stderr.text().contains("config reloaded"));
    drop(writer);
    assert_eq!(wait_file_reloads(&d, 1), ["no group or queue changed"]);
    assert_eq!(wait_children(&d, "w", 1, "running"), w);
}

/// Truncates `drover.toml` (groups `a` and `b`), writes a valid prefix that
/// would remove `b` and holds the file open while checking that nothing is
/// read; then completes the save, which scales `b` to 2.
fn the_reload_waits_for_the_writer_to_close(d: &Drover) {
    use std::io::Write;
    let a = wait_children(d, "a", 1, "running");
    let b = wait_children(d, "b", 1, "running");
    let path = config_path(d);
    let waiting = |trigger: &str| {
        format!(
            "{trigger}: waiting for {} to be closed before reloading",
            path.display()
        )
    };
    let unchanged = || {
        assert_eq!(wait_children(d, "a", 1, "running"), a);
        assert_eq!(wait_children(d, "b", 1, "running"), b);
        let status = d.status();
        assert!(status["config_error"].is_null(), "{status:#}");
    };

    // The test is the writer: truncate, write a valid prefix, hold it open.
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    writer.write_all(sleepers(&[("a", 1)]).as_bytes()).unwrap();
    d.stderr
        .wait_for("the reload after the debounce to wait", |t| {
            t.contains(&waiting("a config file changed"))
        });
    unchanged();

    d.signal(libc::SIGHUP);
    d.stderr
        .wait_for("SIGHUP to wait", |t| t.contains(&waiting("SIGHUP")));
    unchanged();

    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let answer = String::from_utf8_lossy(&out.stderr);
    assert!(
        answer.contains(&format!(
            "reload deferred: {} is still open for writing",
            path.display()
        )),
        "{answer}"
    );
    unchanged();

    // The rest of the save, and the close.
    writer.write_all(sleepers(&[("b", 2)]).as_bytes()).unwrap();
    drop(writer);
    assert_eq!(wait_file_reloads(d, 1), ["scaled: b"]);
    assert_eq!(wait_children(d, "b", 2, "running")[0], b[0]);
    assert_eq!(wait_children(d, "a", 1, "running"), a);

    // A sentinel edit proves no other reload (of the prefix) came.
    edit(d, sleepers(&[("a", 1), ("b", 2), ("sentinel", 1)]));
    assert_eq!(
        wait_file_reload_of(d, "added: sentinel"),
        ["scaled: b", "added: sentinel"]
    );
    let err = d.stderr.text();
    assert!(!err.contains("config reloaded: removed"), "{err}");
    assert!(!err.contains("invalid"), "{err}");
    assert_eq!(
        err.matches(&waiting("a config file changed")).count(),
        1,
        "logged once, not per event:\n{err}"
    );
}

/// Regression: after the config directory was deleted and created again,
/// no edit was ever applied. While it is gone, a reload is a config error
/// that changes nothing; once it is back, it is watched again (twice, so
/// that the second time is not a leftover of the first).
#[test]
fn a_config_directory_deleted_and_created_again_is_watched_again() {
    let d = start_on_directory("dirgone", &[("00-w.toml", &sleepers(&[("w", 1)]))]);
    let conf = d.dir.path().join("conf.d");
    let w = wait_children(&d, "w", 1, "running");
    let gone = format!("cannot read {}", conf.display());
    for round in 1..=2 {
        let reported = d.stderr.text().matches(&gone).count();
        std::fs::remove_dir_all(&conf).unwrap();
        d.stderr.wait_count(&gone, reported + 1);
        let status = d.wait_status("the error in status", |s| {
            s["config_error"]
                .as_str()
                .is_some_and(|e| e.contains(&gone))
        });
        assert_eq!(Drover::children(&status, "w")[0]["pid"], w[0]);

        std::fs::create_dir(&conf).unwrap();
        let n = 1 + round as usize;
        replace_atomically(&conf.join("00-w.toml"), &sleepers(&[("w", n as u32)]));
        assert_eq!(wait_children(&d, "w", n, "running")[0], w[0]);
        // An edit inside the new directory: its own watch works.
        let extra = format!("x{round}");
        replace_atomically(&conf.join("10-x.toml"), &sleepers(&[(&extra, 1)]));
        wait_file_reload_of(&d, &format!("added: {extra}"));
        assert!(d.status()["config_error"].is_null());
    }
    assert_eq!(wait_children(&d, "w", 3, "running")[0], w[0]);
}

#[test]
fn a_config_file_deleted_and_written_again_is_applied() {
    let d = Drover::start("filegone", &sleepers(&[("w", 1)]));
    let w = wait_children(&d, "w", 1, "running");
    let path = config_path(&d);
    std::fs::remove_file(&path).unwrap();
    d.stderr.wait_for("the missing file to be reported", |t| {
        t.contains("a config file changed: the new config is invalid")
    });
    assert_eq!(wait_children(&d, "w", 1, "running"), w);
    std::fs::write(&path, sleepers(&[("w", 2)])).unwrap();
    assert_eq!(wait_file_reloads(&d, 1), ["scaled: w"]);
    assert_eq!(wait_children(&d, "w", 2, "running")[0], w[0]);
}

/// Regression: a FIFO named `*.toml` in the config directory blocked every
/// reload in `open` (no status, no reaping, SIGTERM ignored), and a symlink
/// to `/dev/zero` was read until memory ran out. Both are there from the
/// start: boot, SIGHUP and an edit of another file all complete, and the
/// log names each skipped entry and what it is.
#[test]
fn fifos_and_devices_in_a_config_directory_are_skipped_with_a_warning() {
    let dir = TempDir::new("special");
    dir.write("conf.d/00-w.toml", &sleepers(&[("w", 1)]));
    let fifo = dir.path().join("conf.d/z.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let zero = dir.path().join("conf.d/zero.toml");
    symlink("/dev/zero", &zero).unwrap();
    let d = start_in_directory(dir);
    let w = wait_children(&d, "w", 1, "running");
    let warned = |file: &Path, what: &str| {
        format!(
            "{}: warning: skipped: it is {what}, not a regular file",
            file.display()
        )
    };
    d.stderr.wait_for("the warnings at startup", |t| {
        t.contains(&warned(&fifo, "a FIFO")) && t.contains(&warned(&zero, "a character device"))
    });

    d.signal(libc::SIGHUP);
    d.stderr.wait_for("the SIGHUP reload", |t| {
        t.contains("SIGHUP: config reloaded: no group or queue changed")
    });
    replace_atomically(
        &d.dir.path().join("conf.d/10-x.toml"),
        &sleepers(&[("x", 1)]),
    );
    assert_eq!(wait_file_reload_of(&d, "added: x"), ["added: x"]);
    wait_children(&d, "x", 1, "running");
    assert_eq!(wait_children(&d, "w", 1, "running"), w);
    let err = d.stderr.text();
    assert!(err.matches(&warned(&fifo, "a FIFO")).count() >= 3, "{err}");
    assert!(d.status()["config_error"].is_null());
}

/// Regression: a child whose working directory was deleted failed with
/// "cannot execute `sh`: No such file or directory".
#[test]
fn a_missing_working_directory_is_named_when_a_start_fails() {
    let dir = TempDir::new("cwdgone");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    dir.write(
        "drover.toml",
        r#"
[group.w]
command = ["sh", "-c", "echo started; exit 1"]
cwd = "work"
start_secs = "100ms"
restart_delay = "10ms"
restart_delay_max = "10ms"
max_restarts = 1000
"#,
    );
    let d = Drover::start_in(dir, &[]);
    d.stdout
        .wait_for("a first start", |t| t.contains("w[0] started"));
    std::fs::remove_dir(&work).unwrap();
    let err = d
        .stderr
        .wait_for("the start to fail", |t| t.contains("w[0]: cannot start: "));
    let line = err
        .lines()
        .find(|l| l.contains("w[0]: cannot start: "))
        .unwrap();
    assert!(
        line.contains(&format!(
            "w[0]: cannot start: working directory {} does not exist (cwd of group w)",
            work.display()
        )),
        "{line}"
    );
}

/// `drover reload --dry-run [PATH]` says what a reload would change and
/// changes nothing: same PIDs, no new group, no error shown in `status`;
/// an invalid config is reported, not kept. The real reload then says the
/// same.
#[test]
fn a_dry_run_says_what_would_change_and_applies_nothing() {
    let old = r#"
[group.a]
command = ["sleep", "1000"]
start_secs = "100ms"

[group.b]
command = ["sleep", "1000"]
start_secs = "100ms"

[group.c]
command = ["sleep", "1000"]
start_secs = "100ms"
"#;
    let new = r#"
[queue.q]

[group.a]
command = ["sleep", "1000"]
processes = 2
start_secs = "100ms"

[group.b]
command = ["sleep", "1001"]
start_secs = "100ms"

[group.d]
command = ["sleep", "1000"]
start_secs = "100ms"
"#;
    let d = Drover::start("dry-run", old);
    let pids = |s: &Value| -> Vec<(String, Vec<i64>)> {
        s["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let name = g["name"].as_str().unwrap().to_owned();
                let pids = Drover::children(s, &name)
                    .iter()
                    .filter_map(|c| c["pid"].as_i64())
                    .collect();
                (name, pids)
            })
            .collect()
    };
    let before = d.wait_status("all running", |s| {
        ["a", "b", "c"].iter().all(|g| {
            Drover::children(s, g)
                .iter()
                .all(|c| c["state"] == "running")
        })
    });
    // Next to the running config (its directory is every group's default
    // cwd), under a name the watcher does not read.
    let path = d.dir.write("new.draft", new);
    let out = d.cli(&["reload", "--dry-run", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8(out.stdout).unwrap();
    let expected = "added: d; removed: c; scaled: a; replaced: b; queue added: q";
    assert_eq!(said.trim(), format!("would reload: {expected}"));
    let after = d.status();
    assert_eq!(pids(&after), pids(&before), "nothing was applied");
    assert!(after["queues"].as_array().unwrap().is_empty());

    let broken = d.dir.write("broken.draft", "[group.x]\ncommand = 3\n");
    let out = d.cli(&["reload", "--dry-run", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken.draft:2"),
        "{out:?}"
    );
    assert!(
        d.status()["config_error"].is_null(),
        "a dry run keeps no error"
    );

    // Without PATH: the running config's own files, unchanged here.
    let out = d.cli(&["reload", "--dry-run"]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "would reload: no group or queue changed"
    );
    let out = d.cli(&["reload", "/some/path"]);
    assert_eq!(out.status.code(), Some(2), "PATH needs --dry-run");
}
