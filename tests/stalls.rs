//! A start helper that hangs delays only its own group's starts: with the
//! fork server or a Python template frozen (SIGSTOP) while it owes drover
//! an answer, or a template whose imports take 30 s, `drover status`
//! answers, a SIGKILLed child of another group is restarted and another
//! group's output keeps flowing. A helper that stays silent past its
//! deadline is killed and replaced, and its group recovers.
//!
//! Everything is judged from outside, without timing: while the helper is
//! still frozen, status must already show the frozen group's start as
//! requested (`starting` without a PID) — a loop waiting on the helper
//! could not answer at all until the helper's deadline.

mod common;

use common::{Drover, alive};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Groups beside the frozen one: `other` to be SIGKILLed and restarted,
/// `ticker` whose lines must keep coming.
const BYSTANDERS: &str = r#"
[group.other]
command = ["sleep", "100000"]
start_secs = "100ms"

[group.ticker]
command = ["sh", "-c", "while :; do echo tick; sleep 0.02; done"]
"#;

fn signal(pid: i64, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).unwrap();
}

/// The bystanders are served while the helper is frozen.
fn bystanders_are_served(d: &Drover) {
    let other = d.wait_group_state("other", "running")[0];
    signal(other, Signal::SIGKILL);
    d.wait_status("other's replacement", |s| {
        let c = &Drover::children(s, "other")[0];
        c["state"] == "running" && c["pid"].as_i64().is_some_and(|p| p != other)
    });
    let ticks = d.stdout.text().matches("tick").count();
    d.stdout.wait_count("tick", ticks + 10);
}

/// `group[0]`'s start has been sent and not answered: `starting`, no PID.
fn start_is_pending(d: &Drover, group: &str) {
    d.wait_status(&format!("{group}[0]'s start to be pending"), |s| {
        let c = &Drover::children(s, group)[0];
        c["state"] == "starting" && c["pid"].is_null()
    });
}

#[test]
fn a_frozen_fork_server_delays_only_its_own_group() {
    let d = Drover::start(
        "frozenserver",
        &format!(
            "[group.served]\ncommand = [\"sleep\", \"100000\"]\nstart_method = \"forkserver\"\n\
             start_secs = \"100ms\"\nrestart_delay = \"10ms\"\n{BYSTANDERS}"
        ),
    );
    let served = d.wait_group_state("served", "running")[0];
    let server = server_of(&d);
    signal(server, Signal::SIGSTOP);
    signal(served, Signal::SIGKILL);
    start_is_pending(&d, "served");
    bystanders_are_served(&d);
    start_is_pending(&d, "served");
    // Past its deadline the frozen server is killed and replaced, and the
    // group starts again through the new one.
    d.stderr.wait_for("the server's replacement", |t| {
        t.contains("the fork server did not answer within 10s; starting a new one")
    });
    let status = d.wait_status("served running again", |s| {
        Drover::children(s, "served")[0]["state"] == "running"
    });
    assert!(!alive(server), "the frozen server was killed");
    assert_ne!(Drover::children(&status, "served")[0]["pid"], served);
}

#[test]
fn a_frozen_python_template_delays_only_its_own_group() {
    let d = Drover::launch(
        "frozentemplate",
        &format!(
            "[group.py]\npython = \"work:main\"\nstart_method = \"fork\"\n\
             python_executable = \"@PY@\"\nstart_secs = \"100ms\"\n{BYSTANDERS}"
        ),
        &[(
            "work.py",
            "import signal\ndef main():\n    signal.pause()\n",
        )],
    );
    let worker = d.wait_group_state("py", "running")[0];
    let template = template_of(&d, "py");
    signal(template, Signal::SIGSTOP);
    signal(worker, Signal::SIGKILL);
    start_is_pending(&d, "py");
    bystanders_are_served(&d);
    start_is_pending(&d, "py");
    d.stderr.wait_for("the template's replacement", |t| {
        t.contains("the python template did not answer within 10s; starting a new one")
    });
    d.wait_status("py running again", |s| {
        Drover::children(s, "py")[0]["state"] == "running"
    });
    assert!(!alive(template), "the frozen template was killed");
}

#[test]
fn a_template_that_imports_for_30s_delays_only_its_own_group() {
    let d = Drover::launch(
        "slowimport",
        &format!(
            "[group.slow]\npython = \"slow:main\"\nstart_method = \"fork\"\n\
             python_executable = \"@PY@\"\n{BYSTANDERS}"
        ),
        &[(
            "slow.py",
            "import time\ntime.sleep(30)\ndef main():\n    pass\n",
        )],
    );
    d.wait_status("slow waiting for its template", |s| {
        let c = &Drover::children(s, "slow")[0];
        c["state"] == "waiting"
            && c["reason"]
                .as_str()
                .is_some_and(|r| r.contains("importing"))
    });
    bystanders_are_served(&d);
    let c = &Drover::children(&d.status(), "slow")[0];
    assert_eq!(c["state"], "waiting", "{c}");
}

/// The fork server of `d`'s drover (from its debug log).
fn server_of(d: &Drover) -> i64 {
    let text = d
        .stderr
        .wait_for("the fork server", |t| t.contains("fork server started"));
    logged_pid(&text, "fork server started", None)
}

/// `group`'s Python template (from drover's debug log).
fn template_of(d: &Drover, group: &str) -> i64 {
    let text = d
        .stderr
        .wait_for("the template", |t| t.contains("python template started"));
    logged_pid(&text, "python template started", Some(group))
}

/// The `pid=` of the first log line with `what` (and `group=GROUP`).
fn logged_pid(log: &str, what: &str, group: Option<&str>) -> i64 {
    log.lines()
        .filter(|l| l.contains(what))
        .filter(|l| group.is_none_or(|g| l.split(' ').any(|w| w == format!("group={g}"))))
        .find_map(|l| {
            l.split(' ')
                .find_map(|w| w.strip_prefix("pid="))?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no `{what}` line with a pid in:\n{log}"))
}
