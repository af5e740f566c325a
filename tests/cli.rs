//! The client commands on the real binary: `start`, `stop` and `restart`
//! wait for the state they ask for and say how each group ended; `status`
//! filters by group; a client finds the socket from `--config`.

mod common;

use std::process::{Command, Output, Stdio};

use common::{Drover, TempDir, alive, drover_bin, wait_until};

/// Two groups that start fast and stop on SIGTERM.
const TWO_GROUPS: &str = r#"
[group.a]
command = ["sleep", "1000"]
processes = 2
start_secs = "100ms"

[group.b]
command = ["sleep", "1000"]
start_secs = "100ms"
"#;

/// A child that ignores SIGTERM and is given an hour to stop; it says
/// `ready` once the signal is ignored.
const STUBBORN: &str = r#"
[group.stubborn]
command = ["sh", "-c", "trap '' TERM; echo ready; exec sleep 1000"]
start_secs = "100ms"
stop_timeout = "1h"
"#;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn pids(status: &serde_json::Value, group: &str) -> Vec<i64> {
    Drover::children(status, group)
        .iter()
        .filter_map(|c| c["pid"].as_i64())
        .collect()
}

/// `stop` returns only once the children are gone: the status read right
/// after it already says `stopped`.
#[test]
fn stop_waits_until_the_group_is_stopped() {
    let d = Drover::start("cli-stop", TWO_GROUPS);
    let a = d.wait_group_state("a", "running");
    let out = d.cli(&["stop", "a"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "a: stopped\n");
    let status = d.status();
    for c in Drover::children(&status, "a") {
        assert_eq!(c["state"], "stopped", "{status:#}");
        assert!(c["pid"].is_null(), "{status:#}");
    }
    assert!(a.iter().all(|p| !alive(*p)), "stopped children are reaped");
    assert_eq!(Drover::children(&status, "b")[0]["state"], "running");
}

/// `start` of a group whose children all run claims nothing.
#[test]
fn start_of_a_running_group_says_already_running() {
    let d = Drover::start("cli-already", TWO_GROUPS);
    let a = d.wait_group_state("a", "running");
    let out = d.cli(&["start", "a"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "a: already running\n");
    assert_eq!(pids(&d.status(), "a"), a, "nothing was restarted");

    // After a stop, `start` waits until the children run again.
    assert!(d.cli(&["stop", "a"]).status.success());
    let out = d.cli(&["start", "a"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "a: running (2 children)\n");
    let status = d.status();
    assert!(
        Drover::children(&status, "a")
            .iter()
            .all(|c| c["state"] == "running"),
        "{status:#}"
    );
}

/// `restart a b` returns once both groups run processes they did not run
/// before.
#[test]
fn restart_of_two_groups_waits_for_new_pids() {
    let d = Drover::start("cli-restart", TWO_GROUPS);
    let a = d.wait_group_state("a", "running");
    let b = d.wait_group_state("b", "running");
    let out = d.cli(&["restart", "a", "b"]);
    assert!(out.status.success(), "{out:?}");
    let said = stdout(&out);
    assert!(said.contains("a: running (2 children)\n"), "{said}");
    assert!(said.contains("b: running (1 child)\n"), "{said}");
    assert_eq!(said.lines().count(), 2, "{said}");
    let status = d.status();
    for (group, old) in [("a", &a), ("b", &b)] {
        let kids = Drover::children(&status, group);
        assert!(kids.iter().all(|c| c["state"] == "running"), "{status:#}");
        let new = pids(&status, group);
        assert_eq!(new.len(), old.len(), "{status:#}");
        assert!(new.iter().all(|p| !old.contains(p)), "{status:#}");
    }
}

/// `--all` acts on every group.
#[test]
fn all_stops_every_group() {
    let d = Drover::start("cli-all", TWO_GROUPS);
    d.wait_group_state("a", "running");
    d.wait_group_state("b", "running");
    let out = d.cli(&["stop", "--all"]);
    assert!(out.status.success(), "{out:?}");
    let said = stdout(&out);
    assert!(said.contains("a: stopped\n"), "{said}");
    assert!(said.contains("b: stopped\n"), "{said}");
    let status = d.status();
    for group in ["a", "b"] {
        let kids = Drover::children(&status, group);
        assert!(kids.iter().all(|c| c["state"] == "stopped"), "{status:#}");
    }
    // Neither groups nor --all is a usage error.
    assert_eq!(d.cli(&["stop"]).status.code(), Some(2));
}

/// A group whose command fails: the wait ends at `fatal`, not at the timeout.
#[test]
fn restart_of_a_failing_group_exits_1_with_failed() {
    let d = Drover::start(
        "cli-failed",
        r#"
[group.broken]
command = ["sh", "-c", "exit 1"]
start_secs = "100ms"
restart_delay = "100ms"
max_restarts = 1
"#,
    );
    d.wait_group_state("broken", "fatal");
    let out = d.cli(&["restart", "broken"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(stdout(&out), "broken: failed: fatal (exit code 1)\n");
}

/// A child that ignores SIGTERM with an hour to stop: `--timeout` bounds
/// the wait and says so; `--no-wait` returns while it is still stopping.
#[test]
fn timeout_and_no_wait_return_before_the_state() {
    let d = Drover::start("cli-timeout", STUBBORN);
    d.wait_group_state("stubborn", "running");
    d.stdout
        .wait_for("the trap", |t| t.contains("stubborn[0] ready"));

    let out = d.cli(&["stop", "stubborn", "--no-wait"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        Drover::children(&d.status(), "stubborn")[0]["state"],
        "stopping"
    );

    let out = d.cli(&["stop", "stubborn", "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = stdout(&out);
    assert!(
        // `(1 stopping)`, or `(the supervisor did not answer)` on a machine
        // too busy to answer the last poll in time.
        said.starts_with("stubborn: timed out after 1s waiting to be stopped ("),
        "{said}"
    );
    assert_eq!(said.lines().count(), 1, "{said}");
}

/// `status GROUP` shows only that group, in the table and the JSON.
#[test]
fn status_filters_by_group() {
    let d = Drover::start("cli-status", TWO_GROUPS);
    d.wait_group_state("b", "running");
    let out = d.cli(&["status", "b", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b"]);

    let out = d.cli(&["status", "b"]);
    assert!(out.status.success(), "{out:?}");
    let table = stdout(&out);
    assert!(table.contains("b[0]"), "{table}");
    assert!(!table.contains("a[0]"), "{table}");
}

/// An unknown group is one line on stderr and exit 1, and nothing is sent
/// for the known ones named with it.
#[test]
fn unknown_groups_are_one_line_errors() {
    let d = Drover::start("cli-unknown", TWO_GROUPS);
    let a = d.wait_group_state("a", "running");
    for args in [
        &["status", "nope"][..],
        &["stop", "a", "nope"],
        &["start", "nope"],
        &["restart", "nope", "--no-wait"],
    ] {
        let out = d.cli(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert_eq!(stderr(&out), "drover: no group named `nope`\n", "{args:?}");
        assert_eq!(stdout(&out), "", "{args:?}");
    }
    assert_eq!(pids(&d.status(), "a"), a, "a was not stopped");
}

/// With `control_socket` in the config, `--config DIR` finds the socket
/// whatever the client's directory and `$XDG_RUNTIME_DIR` (as the README's
/// quick start does with `--config configs/`).
#[test]
fn config_flag_finds_the_socket_of_the_config() {
    let d = Drover::start(
        "cli-config",
        &format!("[supervisor]\ncontrol_socket = \"drover.sock\"\n{TWO_GROUPS}"),
    );
    d.wait_group_state("b", "running");
    let elsewhere = TempDir::new("cli-config-elsewhere");
    let client = |args: &[&str]| {
        Command::new(drover_bin())
            .args(args)
            .current_dir(elsewhere.path())
            .env_remove("DROVER_SOCKET")
            .env("XDG_RUNTIME_DIR", elsewhere.path())
            .output()
            .expect("run drover client")
    };
    let dir = d.dir.path().display().to_string();
    let out = client(&["status", "b", "--config", &dir]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("b[0]"), "{}", stdout(&out));

    let out = client(&["stop", "b", "--config", &dir]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "b: stopped\n");

    // Without it the client looks elsewhere, and says so in one line.
    let out = client(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

/// The subcommands `drover --help` lists (without `help` itself).
fn subcommands() -> Vec<String> {
    let out = Command::new(drover_bin()).arg("--help").output().unwrap();
    let help = stdout(&out);
    let listed = help
        .split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("a Commands: section in --help");
    let names: Vec<String> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 10, "{help}");
    names
}

/// The bash completion script is valid bash, and completing `drover re`
/// with it offers exactly the subcommands that start with `re`; `drover
/// completions` knows zsh and fish too.
#[test]
fn completions_complete_subcommands() {
    let dir = TempDir::new("completions");
    let out = Command::new(drover_bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let script = dir.write("drover.bash", &stdout(&out));
    // As bash calls a completion function: the command, the word being
    // completed and the one before it as arguments, the line in COMP_*.
    let complete = |words: &str, cword: usize| {
        let split: Vec<&str> = words.split(' ').collect();
        let probe = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; \
             COMP_POINT=${{#COMP_LINE}}; _drover drover '{}' '{}'; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            split[cword],
            split[cword - 1],
        );
        let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let mut words: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
        words.sort();
        words
    };
    let mut expected: Vec<String> = subcommands()
        .into_iter()
        .filter(|s| s.starts_with("re"))
        .collect();
    expected.sort();
    assert_eq!(expected, ["reload", "restart"]);
    assert_eq!(complete("drover re", 1), expected);
    let flags = complete("drover status --", 2);
    for flag in ["--json", "--socket", "--config"] {
        assert!(flags.contains(&flag.to_owned()), "{flags:?}");
    }

    for shell in ["zsh", "fish"] {
        let out = Command::new(drover_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = stdout(&out);
        for sub in subcommands() {
            assert!(text.contains(&sub), "{shell} completion lacks `{sub}`");
        }
    }
    let out = Command::new(drover_bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

/// `drover man` prints a roff page naming every subcommand; `--dir`
/// writes that page and one per subcommand, each titled after it.
#[test]
fn man_pages_cover_every_subcommand() {
    let out = Command::new(drover_bin()).arg("man").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let page = stdout(&out);
    assert!(page.contains(".TH drover 1"), "{page}");
    let subs = subcommands();
    for sub in &subs {
        assert!(
            page.contains(&format!("drover\\-{}", sub.replace('-', "\\-"))),
            "{sub}"
        );
    }
    let dir = TempDir::new("man");
    let out = Command::new(drover_bin())
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for sub in &subs {
        let file = dir.path().join(format!("drover-{sub}.1"));
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        assert!(
            text.contains(&format!(".TH drover-{sub} 1")),
            "{file:?}: {text}"
        );
        let synopsis = format!("drover {}", sub.replace('-', "\\-"));
        assert!(text.contains(&synopsis), "{file:?}: {text}");
    }
    assert!(dir.path().join("drover.1").is_file());
}

/// A worker that records each USR1 and SIGRTMIN+2 it gets, and starts a
/// helper in its process group that records the USR1s it gets.
const SIGNALLED: &str = r#"
import os, signal, subprocess, sys, time
def note(what):
    def handler(signum, frame):
        with open("signals.txt", "a") as f:
            f.write(f"{what} {os.getpid()}\n")
    return handler
if sys.argv[1:] == ["helper"]:
    signal.signal(signal.SIGUSR1, note("helper-usr1"))
    open(f"helper-{os.getpid()}.ready", "w").close()
    while True:
        signal.pause()
signal.signal(signal.SIGUSR1, note("usr1"))
signal.signal(signal.SIGRTMIN + 2, note("rtmin+2"))
helper = subprocess.Popen([sys.executable, sys.argv[0], "helper"])
while not os.path.exists(f"helper-{helper.pid}.ready"):
    time.sleep(0.01)  # until the helper's handler is in place
open(f"worker-{os.getpid()}.ready", "w").close()
while True:
    signal.pause()
"#;

#[test]
fn signal_reaches_each_child_or_its_process_group() {
    let dir = TempDir::new("signal");
    dir.write("signalled.py", SIGNALLED);
    dir.write(
        "drover.toml",
        &format!(
            "[group.web]\ncommand = [\"{}\", \"signalled.py\"]\nprocesses = 2\nstart_secs = \"100ms\"\n",
            common::python()
        ),
    );
    let d = Drover::start_in(dir, &[]);
    let workers = d.wait_group_state("web", "running");
    let path = d.dir.path().to_path_buf();
    wait_until("both workers ready", || {
        workers
            .iter()
            .all(|p| path.join(format!("worker-{p}.ready")).exists())
    });
    let lines = || -> Vec<String> {
        let mut l: Vec<String> = std::fs::read_to_string(path.join("signals.txt"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        l.sort();
        l
    };
    let mut expected: Vec<String> = workers.iter().map(|p| format!("usr1 {p}")).collect();

    let out = d.cli(&["signal", "web", "USR1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("SIGUSR1 sent to pids"),
        "{}",
        stdout(&out)
    );
    expected.sort();
    wait_until("USR1 to both workers, not their helpers", || {
        lines() == expected
    });

    let out = d.cli(&["signal", "web", "sigrtmin+2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    expected.extend(workers.iter().map(|p| format!("rtmin+2 {p}")));
    expected.sort();
    wait_until("SIGRTMIN+2 to both workers", || lines() == expected);

    let out = d.cli(&["signal", "web", "10", "--group"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("USR1 to the workers and their helpers", || {
        let l = lines();
        l.iter().filter(|x| x.starts_with("usr1 ")).count() == 4
            && l.iter().filter(|x| x.starts_with("helper-usr1 ")).count() == 2
    });
    assert_eq!(d.wait_group_state("web", "running"), workers, "nobody died");

    let out = d.cli(&["signal", "web", "NOPE"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown signal `NOPE`"),
        "{}",
        stderr(&out)
    );
    let out = d.cli(&["signal", "nope", "TERM"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no group named `nope`"),
        "{}",
        stderr(&out)
    );
}

/// A client whose reader went away (`drover status | head -1`, the pipe
/// closed before it writes) ends quietly with success, as a Unix filter
/// does: no panic message, no abort.
#[test]
fn a_client_whose_output_pipe_is_closed_ends_quietly() {
    let d = Drover::start(
        "closed-stdout",
        "[group.web]\ncommand = [\"sleep\", \"1000\"]\nprocesses = 3\n",
    );
    d.wait_group_state("web", "running");
    let config = d.dir.path().join("drover.toml");
    let socket = d.socket.display().to_string();
    let config = config.display().to_string();
    for args in [
        vec!["status", "--socket", &socket],
        vec!["status", "--json", "--socket", &socket],
        vec!["check", &config],
    ] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let out = Command::new(drover_bin())
            .args(&args)
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "drover {args:?} into a closed pipe: {:?}, stderr {stderr:?}",
            out.status
        );
    }
}

/// A `--timeout` too long to set a deadline with is refused like any bad
/// value, not a panic of the client (`Instant + Duration` overflowed).
#[test]
fn a_timeout_beyond_a_year_is_refused() {
    for timeout in ["18446744073709551615s", "9000h"] {
        let out = Command::new(drover_bin())
            .args(["start", "web", "--timeout", timeout])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{timeout}: {stderr}");
        assert!(
            stderr.contains("--timeout") && stderr.contains("at most 8760h"),
            "{timeout}: {stderr}"
        );
    }
}
