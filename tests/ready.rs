//! Readiness (`ready`: notify, tcp, command) and health checks on the real
//! binary.

mod common;

use common::{Drover, alive, wait_until};

/// A child that speaks sd_notify: `NOTIFY_SOCKET` may be abstract (`@`).
const NOTIFY: &str = r#"
import os, socket, sys, time

def notify(text):
    addr = os.environ["NOTIFY_SOCKET"]
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(text.encode(), addr)
    s.close()

mode = sys.argv[1]
if mode == "wait-for-go":
    notify("STATUS=warming up")
    while not os.path.exists("go"):
        time.sleep(0.05)
    notify("READY=1\nSTATUS=serving 3 things")
elif mode == "good":
    notify("READY=1")
while True:
    time.sleep(1)
"#;

fn child(status: &serde_json::Value, group: &str) -> serde_json::Value {
    Drover::children(status, group)[0].clone()
}

#[test]
fn a_notify_child_is_running_once_it_says_ready() {
    let d = Drover::launch(
        "notify",
        r#"
[group.svc]
command = ["@PY@", "notify.py", "wait-for-go"]
start_secs = "100ms"
ready = "notify"
"#,
        &[("notify.py", NOTIFY)],
    );
    // Well past start_secs, it is still starting: not ready.
    let s = d.wait_status("svc starting with its STATUS=", |s| {
        let c = child(s, "svc");
        c["status_text"] == "warming up" && c["uptime_ms"].as_u64().is_some_and(|u| u > 500)
    });
    let c = child(&s, "svc");
    assert_eq!(
        (c["state"].as_str(), c["ready"].as_bool()),
        (Some("starting"), Some(false))
    );
    d.dir.write("go", "");
    let s = d.wait_status("svc ready", |s| child(s, "svc")["state"] == "running");
    let c = child(&s, "svc");
    assert_eq!(c["ready"], true);
    assert_eq!(c["status_text"], "serving 3 things");
    assert_eq!(c["restarts"], 0);
    let table = String::from_utf8(d.cli(&["status"]).stdout).unwrap();
    assert!(table.contains("status: serving 3 things"), "{table}");
}

#[test]
fn a_notify_child_never_ready_is_a_failed_start_after_ready_timeout() {
    let d = Drover::launch(
        "notready",
        r#"
[group.svc]
command = ["@PY@", "notify.py", "silent"]
start_secs = "100ms"
ready = "notify"
ready_timeout = "400ms"
restart_delay = "100ms"
max_restarts = 1
"#,
        &[("notify.py", NOTIFY)],
    );
    let s = d.wait_status("svc fatal", |s| child(s, "svc")["state"] == "fatal");
    let c = child(&s, "svc");
    assert_eq!(c["restarts"], 1, "backed off and tried again once");
    assert_eq!(c["ready"], false);
    assert!(
        c["reason"].as_str().unwrap().contains("not ready within"),
        "{c}"
    );
    d.stderr.wait_for("the log line", |t| {
        t.contains("svc[0]: not ready within") && t.contains("fatal after 2 failed starts")
    });
}

#[test]
fn a_tcp_probe_waits_for_the_port() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = r#"
import socket, sys, time
time.sleep(0.5)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
open("listening", "w").close()
s.listen(16)
while True:
    c, _ = s.accept()
    c.close()
"#;
    let d = Drover::launch(
        "tcp",
        &format!(
            r#"
[group.web]
command = ["@PY@", "server.py", "{port}"]
start_secs = "100ms"
ready = {{ tcp = "localhost:{port}" }}
"#
        ),
        &[("server.py", server)],
    );
    let s = d.wait_status("web running", |s| child(s, "web")["state"] != "starting");
    assert!(
        d.dir.path().join("listening").exists(),
        "ready only once it listens"
    );
    let c = child(&s, "web");
    assert_eq!(
        (c["state"].as_str(), c["ready"].as_bool()),
        (Some("running"), Some(true))
    );
}

#[test]
fn a_command_probe_runs_in_the_group_cwd_until_it_succeeds() {
    let d = Drover::launch(
        "cmdprobe",
        r#"
[group.svc]
command = ["sleep", "1000"]
start_secs = "100ms"
env = { FLAG = "ready-flag" }
ready = { command = ["sh", "-c", "test -e \"$FLAG\""] }
"#,
        &[],
    );
    d.wait_status("svc starting a while", |s| {
        let c = child(s, "svc");
        c["state"] == "starting" && c["uptime_ms"].as_u64().is_some_and(|u| u > 600)
    });
    d.dir.write("ready-flag", "");
    let s = d.wait_status("svc ready", |s| child(s, "svc")["state"] == "running");
    assert_eq!(child(&s, "svc")["ready"], true);
    assert_eq!(
        child(&s, "svc")["restarts"],
        0,
        "probe exits are not the child's"
    );
}

#[test]
fn a_replacement_never_ready_leaves_the_old_child_running() {
    let config = |mode: &str| {
        format!(
            r#"
[group.svc]
command = ["{py}", "notify.py", "{mode}"]
start_secs = "100ms"
ready = "notify"
ready_timeout = "{timeout}"
restart_delay = "100ms"
max_restarts = 1
"#,
            py = common::python(),
            // The first child has all the time it needs; the replacement,
            // which never says READY, fails fast.
            timeout = if mode == "good" { "30s" } else { "300ms" }
        )
    };
    let d = Drover::launch("rollready", &config("good"), &[("notify.py", NOTIFY)]);
    let s = d.wait_status("svc running", |s| child(s, "svc")["state"] == "running");
    let old = child(&s, "svc")["pid"].as_i64().unwrap();
    let tmp = d.dir.path().join("drover.toml.new");
    std::fs::write(&tmp, config("silent")).unwrap();
    std::fs::rename(&tmp, d.dir.path().join("drover.toml")).unwrap();
    let s = d.wait_status("the replacement fatal", |s| {
        child(s, "svc")["replacement"]["state"] == "fatal"
    });
    let c = child(&s, "svc");
    assert_eq!(c["pid"].as_i64(), Some(old), "the old child keeps serving");
    assert_eq!(c["state"], "running");
    assert!(alive(old));
}

#[test]
fn failing_health_checks_restart_the_child() {
    let d = Drover::launch(
        "health",
        r#"
[group.svc]
command = ["sleep", "1000"]
start_secs = "100ms"
health = { command = ["sh", "-c", "test -e sick && exit 1; exit 0"], interval = "100ms", timeout = "1s", retries = 2 }
"#,
        &[],
    );
    let s = d.wait_status("svc running", |s| child(s, "svc")["state"] == "running");
    let first = child(&s, "svc")["pid"].as_i64().unwrap();
    d.dir.write("sick", "");
    let s = d.wait_status("a health restart", |s| {
        let c = child(s, "svc");
        c["health_restarts"].as_u64().is_some_and(|n| n >= 1) && c["pid"] != first
    });
    std::fs::remove_file(d.dir.path().join("sick")).unwrap();
    let c = child(&s, "svc");
    assert_eq!(c["restarts"], c["health_restarts"], "only health restarts");
    wait_until("the old child gone", || !alive(first));
    d.stderr.wait_for("the log line", |t| {
        t.contains("svc[0]: health check failed 2 times in a row; restarting it")
    });
}

#[test]
fn a_hung_health_check_is_killed_and_fails() {
    let d = Drover::launch(
        "hung",
        r#"
[group.svc]
command = ["sleep", "1000"]
start_secs = "100ms"
health = { command = ["sleep", "1000"], interval = "100ms", timeout = "200ms", retries = 1 }
"#,
        &[],
    );
    let s = d.wait_status("svc running", |s| child(s, "svc")["state"] == "running");
    let first = child(&s, "svc")["pid"].as_i64().unwrap();
    d.wait_status("a health restart", |s| {
        let c = child(s, "svc");
        c["health_restarts"].as_u64().is_some_and(|n| n >= 1) && c["pid"] != first
    });
}

/// `NOTIFY_SOCKET` reaches children of every start method, commands and
/// Python function workers alike, each its own.
#[test]
fn every_start_method_gets_a_notify_socket() {
    let worker = r#"
import os, socket, time

def main():
    addr = os.environ["NOTIFY_SOCKET"]
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(("READY=1\nSTATUS=" + os.environ["NOTIFY_SOCKET"]).encode(), addr)
    while True:
        time.sleep(1)

if __name__ == "__main__":
    main()
"#;
    let mut config = String::new();
    for m in ["spawn", "fork", "forkserver"] {
        config.push_str(&format!(
            "[group.cmd_{m}]\ncommand = [\"@PY@\", \"work.py\"]\nstart_method = \"{m}\"\n\
             ready = \"notify\"\nstart_secs = \"100ms\"\n\n\
             [group.py_{m}]\npython = \"work:main\"\nstart_method = \"{m}\"\n\
             ready = \"notify\"\nstart_secs = \"100ms\"\n\n"
        ));
    }
    let d = Drover::launch("notifyall", &config, &[("work.py", worker)]);
    let s = d.wait_status("every child ready", |s| {
        s["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["children"][0]["ready"] == true)
    });
    let mut addresses: Vec<String> = s["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["children"][0]["status_text"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        addresses.iter().all(|a| a.starts_with("@drover-")),
        "{addresses:?}"
    );
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 6, "one socket per child");
}

/// `ready`, `ready_timeout` and `health` change in place on reload: no
/// restart, and the new health check applies to the running child. A group
/// the reload adds gets its probes too.
#[test]
fn a_reload_takes_readiness_and_health_in_place() {
    let d = Drover::launch(
        "reloadhealth",
        r#"
[group.svc]
command = ["sleep", "1000"]
start_secs = "100ms"
"#,
        &[("notify.py", NOTIFY)],
    );
    let s = d.wait_status("svc running", |s| child(s, "svc")["state"] == "running");
    let first = child(&s, "svc")["pid"].as_i64().unwrap();
    let config = format!(
        r#"
[group.svc]
command = ["sleep", "1000"]
start_secs = "100ms"
ready = {{ command = ["true"] }}
ready_timeout = "5s"
health = {{ command = ["sh", "-c", "test ! -e sick"], interval = "100ms", retries = 1 }}

[group.added]
command = ["{py}", "notify.py", "good"]
ready = "notify"
start_secs = "100ms"
"#,
        py = common::python()
    );
    let tmp = d.dir.path().join("drover.toml.new");
    std::fs::write(&tmp, config).unwrap();
    std::fs::rename(&tmp, d.dir.path().join("drover.toml")).unwrap();
    let s = d.wait_status("the added group ready", |s| {
        s["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "added" && g["children"][0]["ready"] == true)
    });
    assert_eq!(child(&s, "svc")["pid"].as_i64(), Some(first), "no restart");
    let log = d
        .stderr
        .wait_for("the reload", |t| t.contains("config reloaded"));
    assert!(log.contains("new policy: svc"), "{log}");
    d.dir.write("sick", "");
    d.wait_status("a health restart", |s| {
        let c = child(s, "svc");
        c["health_restarts"].as_u64().is_some_and(|n| n >= 1) && c["pid"] != first
    });
}

/// A child flooding its NOTIFY_SOCKET with long datagrams: drover keeps
/// answering, and keeps only a bounded STATUS= text.
#[test]
fn a_flooding_notify_child_cannot_stall_drover() {
    let flood = r#"
import os, socket
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", addr)
big = b"STATUS=" + b"x" * 60000
while True:
    try:
        s.sendto(big, addr)
    except OSError:
        pass
"#;
    let d = Drover::launch(
        "flood",
        r#"
[group.flood]
command = ["@PY@", "flood.py"]
start_secs = "100ms"
ready = "notify"

[group.calm]
command = ["sleep", "1000"]
start_secs = "100ms"
"#,
        &[("flood.py", flood)],
    );
    // Deadlines still fire (calm's start_secs) while the flood goes on.
    let s = d.wait_status("flood ready with a status, calm running", |s| {
        child(s, "flood")["ready"] == true
            && child(s, "flood")["status_text"].is_string()
            && child(s, "calm")["state"] == "running"
    });
    let text = child(&s, "flood")["status_text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.len() <= 256 && text.starts_with("xxx"),
        "{}",
        text.len()
    );
    // The loop keeps serving: status answers and the other group runs.
    for _ in 0..20 {
        let s = d.status();
        assert_eq!(child(&s, "calm")["state"], "running");
    }
}
