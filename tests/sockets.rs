//! Listening sockets (`sockets`) on the real binary: every child of the
//! group gets them at fds 3, 4, … with `LISTEN_FDS`, `LISTEN_FDNAMES` and
//! its own PID in `LISTEN_PID` (under each start method), queue fds above
//! them; a socket outlives child restarts; an address in use fails the
//! start (exit 1) or refuses a reload; a removed socket is closed and its
//! file removed; the `LISTEN_*` drover inherited reach no child, except
//! `fork` children that inherit drover's own activated sockets, with their
//! own `LISTEN_PID`; and the headline: not one failed request across a
//! rolling restart of a socket-inheriting HTTP server.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Drover, TempDir, alive, python, wait_until};
use serde_json::Value;

/// Prints what it was given, then answers every connection on fd 3 (tcp)
/// and fd 4 (unix) with its PID.
const ECHO_PID: &str = r#"
import json, os, selectors, socket
info = {k: os.environ.get(k) for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "DROVER_OUT_Q")}
info["pid"] = os.getpid()
info["entries"] = sum(e.startswith(b"LISTEN_") for e in open("/proc/self/environ", "rb").read().split(b"\0"))
print("INFO " + json.dumps(info), flush=True)
sel = selectors.DefaultSelector()
for fd in (3, 4):
    sel.register(socket.socket(fileno=fd), selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        conn.sendall(str(os.getpid()).encode())
        conn.close()
"#;

/// The same as a Python function (`spawn`).
const ECHO_PID_MODULE: &str = r#"
import json, os, selectors, socket

def main():
    info = {k: os.environ.get(k) for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "DROVER_OUT_Q")}
    info["pid"] = os.getpid()
    info["entries"] = sum(e.startswith(b"LISTEN_") for e in open("/proc/self/environ", "rb").read().split(b"\0"))
    print("INFO " + json.dumps(info), flush=True)
    sel = selectors.DefaultSelector()
    for fd in (3, 4):
        sel.register(socket.socket(fileno=fd), selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            conn, _ = key.fileobj.accept()
            conn.sendall(str(os.getpid()).encode())
            conn.close()
"#;

/// A port nobody listens on: bound by the test, then released.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The PID a server answers with on a new TCP connection.
fn ask_tcp(port: u16) -> i64 {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.trim().parse().unwrap()
}

fn ask_unix(path: &Path) -> i64 {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.trim().parse().unwrap()
}

/// The `INFO` lines children printed, by PID.
fn infos(d: &Drover, count: usize) -> Vec<Value> {
    d.stdout
        .wait_count("INFO ", count)
        .lines()
        .filter_map(|l| l.split_once("INFO "))
        .map(|(_, json)| serde_json::from_str(json).unwrap())
        .collect()
}

/// A group `web` of the echo server with a tcp and a unix socket (mode
/// 0640) and an output queue.
fn echo_config(dir: &TempDir, program: &str, method: &str, port: u16, processes: u32) -> String {
    let unix = dir.path().join("admin.sock");
    format!(
        "[group.web]\n{program}\nstart_method = \"{method}\"\nprocesses = {processes}\n\
         start_secs = \"100ms\"\noutputs = [\"q\"]\n\
         env = {{ LISTEN_FDS = \"9\", LISTEN_PID = \"1\" }}\n\
         sockets = [{{ name = \"http\", listen = \"tcp://127.0.0.1:{port}\" }}, \
         {{ name = \"admin\", listen = \"unix://{}\", mode = \"0640\" }}]\n\n[queue.q]\n",
        unix.display()
    )
}

#[test]
fn every_child_gets_its_sockets_at_3_with_its_own_pid_in_listen_pid() {
    let command = format!("command = [\"{}\", \"echo.py\"]", python());
    let function = format!(
        "python = \"echo:main\"\npython_executable = \"{}\"",
        python()
    );
    let variants = [
        ("spawn", &command),
        ("fork", &command),
        ("forkserver", &command),
        ("spawn", &function),
        ("fork", &function),
        ("forkserver", &function),
    ];
    for (method, program) in variants {
        let dir = TempDir::new("sockets-env");
        let port = free_port();
        dir.write("drover.toml", &echo_config(&dir, program, method, port, 2));
        dir.write(
            "echo.py",
            if program.starts_with("python") {
                ECHO_PID_MODULE
            } else {
                ECHO_PID
            },
        );
        let unix = dir.path().join("admin.sock");
        let d = Drover::start_in(dir, &[]);
        let pids = d.wait_group_state("web", "running");
        let seen = infos(&d, 2);
        for info in &seen {
            let what = format!("{method} {program}: {info}");
            assert_eq!(info["LISTEN_FDS"], "2", "{what}");
            assert_eq!(
                info["entries"], 3,
                "the group's own LISTEN_* are dropped: {what}"
            );
            assert_eq!(info["LISTEN_FDNAMES"], "http:admin", "{what}");
            assert_eq!(info["LISTEN_PID"], info["pid"].to_string(), "{what}");
            let queue_fd: i32 = info["DROVER_OUT_Q"].as_str().unwrap().parse().unwrap();
            if method != "spawn" && program.starts_with("python") {
                // A forked worker's queue fd stays where its template got it.
                assert!(queue_fd >= 5, "queue fds above the sockets: {what}");
            } else {
                assert_eq!(queue_fd, 5, "queue fds follow the sockets: {what}");
            }
            assert!(pids.contains(&info["pid"].as_i64().unwrap()), "{what}");
        }
        let mode = std::fs::metadata(&unix).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640, "{method}");
        assert!(
            pids.contains(&ask_tcp(port)),
            "{method}: tcp answered by a child"
        );
        assert!(
            pids.contains(&ask_unix(&unix)),
            "{method}: unix answered by a child"
        );
        drop(d);
    }
}

/// A server that answers one connection with its PID and exits 1.
const ONE_SHOT: &str = r#"
import os, socket
conn, _ = socket.socket(fileno=3).accept()
conn.sendall(str(os.getpid()).encode())
conn.close()
raise SystemExit(1)
"#;

#[test]
fn a_socket_survives_child_restarts() {
    let dir = TempDir::new("sockets-restart");
    dir.write("one.py", ONE_SHOT);
    let port = free_port();
    let unix = dir.path().join("u.sock");
    dir.write(
        "drover.toml",
        &format!(
            "[group.web]\ncommand = [\"{}\", \"one.py\"]\nrestart = \"always\"\nstart_secs = \"100ms\"\n\
             sockets = [{{ name = \"http\", listen = \"tcp://127.0.0.1:{port}\" }}, \
             {{ name = \"u\", listen = \"unix://{}\" }}]\n",
            python(),
            unix.display()
        ),
    );
    let d = Drover::start_in(dir, &[]);
    let inode = std::fs::metadata(&unix).unwrap().ino();
    let mut answered = HashSet::new();
    for _ in 0..3 {
        // Each connection is answered, whether the child is up yet or its
        // replacement is still starting: the connection waits in the
        // socket's backlog.
        answered.insert(ask_tcp(port));
    }
    assert_eq!(answered.len(), 3, "three children answered: {answered:?}");
    let status = d.wait_status("web restarted", |s| {
        Drover::children(s, "web")[0]["restarts"].as_u64() >= Some(3)
    });
    assert!(Drover::children(&status, "web")[0]["restarts"].as_u64() >= Some(3));
    assert_eq!(
        std::fs::metadata(&unix).unwrap().ino(),
        inode,
        "the unix socket is the same across restarts"
    );
}

#[test]
fn an_address_in_use_at_start_makes_drover_exit_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TempDir::new("sockets-in-use");
    dir.write(
        "drover.toml",
        &format!(
            "[group.web]\ncommand = [\"sleep\", \"1000\"]\n\
             sockets = [{{ name = \"http\", listen = \"tcp://127.0.0.1:{port}\" }}]\n"
        ),
    );
    let mut d = Drover::start_in(dir, &[]);
    let status = d.wait_exit();
    assert_eq!(Drover::code(status), 1);
    let stderr = d.stderr.text();
    assert!(
        stderr.contains(&format!(
            "cannot listen on tcp://127.0.0.1:{port} (socket `http` of group `web`)"
        )),
        "{stderr}"
    );
}

#[test]
fn a_reload_binds_new_sockets_closes_removed_ones_and_is_refused_on_an_address_in_use() {
    let dir = TempDir::new("sockets-reload");
    dir.write("echo.py", ECHO_PID);
    let port = free_port();
    let config = echo_config(
        &dir,
        &format!("command = [\"{}\", \"echo.py\"]", python()),
        "spawn",
        port,
        1,
    );
    dir.write("drover.toml", &config);
    let unix = dir.path().join("admin.sock");
    let d = Drover::start_in(dir, &[]);
    let pids = d.wait_group_state("web", "running");

    // Another group on an address that is taken: refused, nothing changes.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let refused = format!(
        "{config}\n[group.other]\ncommand = [\"sleep\", \"1000\"]\n\
         sockets = [{{ name = \"x\", listen = \"tcp://127.0.0.1:{busy}\" }}]\n"
    );
    d.dir.write("drover.toml", &refused);
    let status = d.wait_status("the reload refused", |s| s["config_error"].is_string());
    let error = status["config_error"].as_str().unwrap();
    assert!(
        error.contains(&format!("cannot listen on tcp://127.0.0.1:{busy}")),
        "{error}"
    );
    assert_eq!(
        d.wait_group_state("web", "running"),
        pids,
        "web kept its child"
    );
    assert!(pids.contains(&ask_tcp(port)), "the old socket still serves");
    drop(taken);

    // The unix socket removed (a change of sockets: the child is
    // replaced); its file goes, the tcp socket stays the same.
    let without_unix = config.replace(
        &format!(
            ", {{ name = \"admin\", listen = \"unix://{}\", mode = \"0640\" }}",
            unix.display()
        ),
        "",
    );
    assert_ne!(without_unix, config);
    d.dir.write("echo.py", &ECHO_PID.replace("(3, 4)", "(3,)"));
    d.dir.write("drover.toml", &without_unix);
    wait_until("the unix socket's file to be removed", || !unix.exists());
    let status = d.wait_status("web replaced", |s| {
        s["config_error"].is_null()
            && Drover::children(s, "web")
                .iter()
                .all(|c| c["state"] == "running" && !pids.contains(&c["pid"].as_i64().unwrap_or(0)))
    });
    let new = Drover::children(&status, "web")[0]["pid"].as_i64().unwrap();
    assert_eq!(
        ask_tcp(port),
        new,
        "the kept socket reaches the replacement"
    );
}

#[test]
fn listen_variables_drover_inherited_reach_no_child() {
    let dir = TempDir::new("sockets-leak");
    dir.write(
        "drover.toml",
        "[group.plain]\ncommand = [\"sh\", \"-c\", \"echo \\\"seen=[$LISTEN_FDS|$LISTEN_PID|$LISTEN_FDNAMES]\\\"; exec sleep 1000\"]\n\
         start_method = \"fork\"\n",
    );
    let d = Drover::start_in(
        dir,
        &[
            "env",
            "LISTEN_FDS=3",
            "LISTEN_PID=1",
            "LISTEN_FDNAMES=a:b:c",
        ],
    );
    let out = d
        .stdout
        .wait_for("the child's line", |t| t.contains("seen="));
    assert!(out.contains("seen=[||]"), "{out}");
}

/// An HTTP server on the inherited socket (http.server's handler on
/// connections accepted from fd 3), answering with its PID. SIGTERM stops
/// it accepting; the request in hand is finished, then it exits. The
/// listening socket gets a 100 ms receive timeout, so that `accept` comes
/// back to look at the signal; SIGTERM is blocked and looked for between
/// connections, never interrupting one.
const HTTP_WORKER: &str = r#"
import http.server, os, signal, socket, struct, types
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
listener = socket.socket(fileno=3)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 100000))

class Pid(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = types.SimpleNamespace()
while signal.SIGTERM not in signal.sigpending():
    try:
        conn, addr = listener.accept()
    except (BlockingIOError, InterruptedError):
        continue
    conn.settimeout(10)
    try:
        Pid(conn, addr, server)
    finally:
        conn.close()
"#;

/// One request on a new connection: the PID in the answer, or why not.
fn get(port: u16) -> Result<i64, String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    if !text.starts_with("HTTP/1.0 200") {
        return Err(format!("answer {text:?}"));
    }
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    body.parse().map_err(|_| format!("body {body:?}"))
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn no_request_fails_across_a_rolling_restart_of_a_socket_inheriting_server() {
    let dir = TempDir::new("sockets-rolling");
    dir.write("http_worker.py", HTTP_WORKER);
    let port = free_port();
    let config = |version: u32| {
        format!(
            "[group.web]\ncommand = [\"{}\", \"http_worker.py\"]\nprocesses = 2\n\
             env = {{ VERSION = \"{version}\" }}\n\
             sockets = [{{ name = \"http\", listen = \"tcp://127.0.0.1:{port}\" }}]\n",
            python()
        )
    };
    dir.write("drover.toml", &config(1));
    let d = Drover::start_in(dir, &[]);
    let old: Vec<i64> = d.wait_group_state("web", "running");

    let stop = Arc::new(AtomicBool::new(false));
    // The client stops with the test, even when an assertion fails first.
    let _stop_client = StopOnDrop(Arc::clone(&stop));
    let results: Arc<Mutex<Vec<Result<i64, String>>>> = Arc::default();
    let client = {
        let (stop, results) = (Arc::clone(&stop), Arc::clone(&results));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = get(port);
                results.lock().unwrap().push(r);
            }
        })
    };
    wait_until("requests before the reload", || {
        results.lock().unwrap().len() >= 20
    });
    d.dir.write("drover.toml", &config(2));
    let status = d.wait_status("every child replaced", |s| {
        let kids = Drover::children(s, "web");
        kids.len() == 2
            && kids
                .iter()
                .all(|c| c["state"] == "running" && !old.contains(&c["pid"].as_i64().unwrap_or(0)))
    });
    wait_until("the old children to be gone", || {
        old.iter().all(|&pid| !alive(pid))
    });
    let new: Vec<i64> = Drover::children(&status, "web")
        .iter()
        .filter_map(|c| c["pid"].as_i64())
        .collect();
    let served_by_new = |results: &[Result<i64, String>]| {
        results
            .iter()
            .any(|r| r.as_ref().is_ok_and(|p| new.contains(p)))
    };
    wait_until("requests served by the new children", || {
        served_by_new(&results.lock().unwrap())
    });
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();

    let results = results.lock().unwrap();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        results.len()
    );
    let by_old = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|p| old.contains(p)))
        .count();
    assert!(by_old > 0, "the old children served requests");
    assert!(served_by_new(&results), "the new children served requests");
}

/// Runs the rest of its argv with a listening TCP socket at fd 3 and the
/// socket-activation variables naming itself (the PID survives the exec):
/// drover started the way systemd would start it.
const ACTIVATE: &str = r#"
import os, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)  # dup2 onto itself (fd 3 already) keeps close-on-exec
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="outer")
os.execvp(sys.argv[1], sys.argv[1:])
"#;

/// Prints the variables and what fd 3 is.
const SHOW_FD3: &str = r#"
import os, socket
try:
    fd3 = socket.socket(fileno=3).getsockname()[0]
except OSError:
    fd3 = None
print("SEEN %s %s %s %s %s" % (os.environ.get("DROVER_GROUP"), os.environ.get("LISTEN_FDS"),
      os.environ.get("LISTEN_PID") == str(os.getpid()), os.environ.get("LISTEN_FDNAMES"), fd3), flush=True)
import time
time.sleep(1000)
"#;

#[test]
fn fork_children_that_inherit_drovers_own_sockets_get_their_own_listen_pid() {
    let dir = TempDir::new("sockets-activated");
    let activate = dir.write("activate.py", ACTIVATE);
    dir.write("show.py", SHOW_FD3);
    dir.write(
        "drover.toml",
        &format!(
            "[group.forked]\ncommand = [\"{py}\", \"show.py\"]\nstart_method = \"fork\"\n\n\
             [group.spawned]\ncommand = [\"{py}\", \"show.py\"]\n",
            py = python()
        ),
    );
    let activate = activate.display().to_string();
    let d = Drover::start_in(dir, &[python(), &activate]);
    let out = d.stdout.wait_count("SEEN ", 2);
    assert!(
        out.contains("SEEN forked 1 True outer 127.0.0.1"),
        "a fork child inherits fd 3, with its own LISTEN_PID: {out}"
    );
    assert!(
        out.contains("SEEN spawned None False None None"),
        "a spawn child gets neither the fd nor the variables: {out}"
    );
}
