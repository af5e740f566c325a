//! The control socket and CLI: status shape, socket mode, discovery, one
//! clear line when nobody listens — and clients that try to hurt drover:
//! floods of idle connections, lines that never end, garbage, clients that
//! never read, running out of file descriptors, a socket path taken over.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{DEADLINE, Drover, TempDir, drover_bin, wait_until};
use serde_json::Value;

#[test]
fn status_json_has_the_documented_shape() {
    let d = Drover::start(
        "shape",
        r#"
[group.workers]
command = ["sleep", "1000"]
processes = 2
start_secs = "100ms"

[group.idle]
command = ["sleep", "1000"]
processes = 0
"#,
    );
    d.wait_group_state("workers", "running");
    let status = d.status();
    assert!(status["config_error"].is_null());
    assert!(status["queues"].is_array());
    let groups = status["groups"].as_array().unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["idle", "workers"]);
    let idle = &groups[0];
    assert_eq!(idle["processes"], 0);
    assert_eq!(idle["children"].as_array().unwrap().len(), 0);
    let workers = &groups[1];
    assert_eq!(workers["start_method"], "spawn");
    assert_eq!(workers["processes"], 2);
    assert_eq!(workers["state"], "running");
    let child = &workers["children"][1];
    assert_eq!(child["index"], 1);
    assert!(child["pid"].as_i64().unwrap() > 1);
    assert_eq!(child["state"], "running");
    assert!(child["uptime_ms"].as_u64().is_some());
    assert_eq!(child["restarts"], 0);
    assert!(child["last_exit"].is_null());
    let mut keys: Vec<&String> = child.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "health_failures",
            "health_restarts",
            "index",
            "last_exit",
            "leftovers",
            "pid",
            "ready",
            "reason",
            "restarts",
            "state",
            "status_text",
            "uptime_ms"
        ]
    );

    let table = d.cli(&["status"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains("workers[1]"), "{table}");
    assert!(
        table.lines().next().unwrap().starts_with("CHILD"),
        "{table}"
    );
}

#[test]
fn the_socket_is_private_and_found_through_drover_socket_and_config() {
    let d = Drover::start(
        "socket",
        r#"
[group.a]
command = ["sleep", "1000"]
"#,
    );
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let via_env = Command::new(drover_bin())
        .args(["status", "--json"])
        .env("DROVER_SOCKET", &d.socket)
        .output()
        .unwrap();
    assert!(via_env.status.success());

    // --config finds the socket named in a config file.
    let other = TempDir::new("socket-config");
    let config = other.write(
        "c.toml",
        &format!(
            "[supervisor]\ncontrol_socket = \"{}\"\n[group.a]\ncommand = [\"true\"]\n",
            d.socket.display()
        ),
    );
    let via_config = Command::new(drover_bin())
        .args(["status", "--json", "--config"])
        .arg(&config)
        .env_remove("DROVER_SOCKET")
        .output()
        .unwrap();
    assert!(via_config.status.success(), "{via_config:?}");
}

#[test]
fn a_client_with_no_supervisor_says_so_in_one_line() {
    let dir = TempDir::new("nobody");
    let socket = dir.path().join("none.sock");
    for args in [vec!["status"], vec!["restart", "x"], vec!["shutdown"]] {
        let out = Command::new(drover_bin())
            .args(&args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("drover: no drover is listening on"),
            "{err}"
        );
    }
}

#[test]
fn a_second_drover_on_the_same_socket_is_refused() {
    let d = Drover::start(
        "twice",
        r#"
[group.a]
command = ["sleep", "1000"]
"#,
    );
    let out = Command::new(drover_bin())
        .arg("run")
        .arg(d.dir.path().join("drover.toml"))
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another drover is already listening there"),
        "{err}"
    );
    // The first one still answers.
    assert!(d.cli(&["status"]).status.success());
}

/// One group of one `sleep`, started at once.
const ONE_SLEEPER: &str = r#"
[group.w]
command = ["sleep", "1000"]
start_secs = "100ms"
"#;

/// Runs drover under `sh -c SCRIPT` (`exec "$@"` ends the script).
fn start_wrapped(name: &str, config: &str, script: &str) -> Drover {
    let dir = TempDir::new(name);
    dir.write("drover.toml", config);
    Drover::start_in(dir, &["sh", "-c", script, "sh"])
}

fn connect(d: &Drover) -> UnixStream {
    UnixStream::connect(&d.socket).expect("connect to the control socket")
}

/// Reads until drover closes the connection (bounded by the deadline).
fn read_to_close(stream: &mut UnixStream) -> Vec<u8> {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut data = Vec::new();
    match stream.read_to_end(&mut data) {
        Ok(_) => data,
        // The server closed with our unread bytes in its buffer.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => data,
        Err(e) => panic!("drover did not close the connection within {DEADLINE:?}: {e}"),
    }
}

/// Sends `bytes` as they are and returns drover's one-line answer.
fn exchange(d: &Drover, bytes: &[u8]) -> Value {
    let mut stream = connect(d);
    stream.write_all(bytes).unwrap();
    let answer = read_to_close(&mut stream);
    assert!(
        answer.ends_with(b"\n"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    serde_json::from_slice(&answer).expect("one JSON line")
}

/// drover's user + system CPU time.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Runs a client command, bounded: a client that hangs fails the test
/// (and is killed) instead of hanging it.
fn cli_bounded(d: &Drover, args: &[&str], limit: Duration) -> (Output, Duration) {
    let child = Command::new(drover_bin())
        .args(args)
        .arg("--socket")
        .arg(&d.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => (out.unwrap(), started.elapsed()),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("drover {args:?} still running after {limit:?}");
        }
    }
}

fn pid_of(d: &Drover, group: &str) -> i64 {
    let status = d.wait_status(&format!("{group}[0] running"), |s| {
        Drover::children(s, group)[0]["state"] == "running"
    });
    Drover::children(&status, group)[0]["pid"].as_i64().unwrap()
}

/// Kills `group[0]` and waits until another process runs in its place.
fn kill_and_wait_replaced(d: &Drover, group: &str) {
    let old = pid_of(d, group);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.wait_status("a replacement", |s| {
        let child = &Drover::children(s, group)[0];
        child["state"] == "running" && child["pid"].as_i64().is_some_and(|p| p != old)
    });
}

/// Regression: 300 idle clients used to hold every slot (and, under a low
/// fd limit, every fd) forever. Now the ordinary slots are cut off after
/// the request timeout, idle clients beyond them give way at once, and
/// `status` gets through meanwhile.
#[test]
fn hundreds_of_idle_connections_do_not_keep_status_out() {
    let d = Drover::start("idle-flood", ONE_SLEEPER);
    pid_of(&d, "w");
    let mut idle: Vec<UnixStream> = (0..300).map(|_| connect(&d)).collect();
    let status = d.status();
    assert!(status["groups"].is_array());
    // Every idle client is closed: the ones beyond the slots at once (told
    // "busy"), the others once the request timeout passed.
    let started = Instant::now();
    let mut busy = 0;
    for stream in &mut idle {
        let said = String::from_utf8_lossy(&read_to_close(stream)).into_owned();
        busy += usize::from(said.contains("busy: "));
    }
    assert!(busy >= 300 - 66, "{busy} were told busy");
    assert!(started.elapsed() < Duration::from_secs(25));
    assert!(d.cli(&["restart", "w", "--no-wait"]).status.success());
}

/// Regression: with a low fd limit, the level-triggered accept loop spun on
/// EMFILE at 100 % CPU, logged millions of lines, and restarts stopped.
/// Ordinary connections now leave the last fds free, and drover is idle
/// while 300 clients wait.
#[test]
fn under_a_low_fd_limit_300_clients_cost_no_cpu_and_restarts_go_on() {
    let d = start_wrapped("ulimit", ONE_SLEEPER, "ulimit -n 64 && exec \"$@\"");
    pid_of(&d, "w");
    let before = cpu_time(d.pid());
    let mut held: Vec<UnixStream> = (0..300).map(|_| connect(&d)).collect();
    let (out, _) = cli_bounded(&d, &["status"], DEADLINE);
    assert!(out.status.success(), "status answers: {out:?}");
    kill_and_wait_replaced(&d, "w");
    // Held until drover closed every one (the last after the 10 s request
    // timeout): the window in which a spin would burn seconds of CPU.
    for stream in &mut held {
        read_to_close(stream);
    }
    let used = cpu_time(d.pid()) - before;
    eprintln!("300 clients under ulimit -n 64: {used:?} of CPU");
    assert!(used < Duration::from_secs(2), "drover used {used:?} of CPU");
    drop(held);
    assert!(d.status()["groups"].is_array());
    kill_and_wait_replaced(&d, "w");
    let warnings = d.stderr.text().matches("WARN").count();
    assert!(warnings < 20, "{warnings} warnings:\n{}", d.stderr.text());
}

/// The lowest fd number free in process `pid`.
fn lowest_free_fd(pid: i32) -> u64 {
    let used: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap()
}

fn set_fd_limit(pid: i32, soft: u64) {
    let out = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={soft}:"))
        .output()
        .expect("prlimit (util-linux) is needed by this test");
    assert!(out.status.success(), "{out:?}");
}

/// Regression: when `accept` fails with EMFILE the listener stays readable;
/// retrying at once spun the loop and logged a line per try. Here drover's
/// limit is lowered (from outside) to exactly the fds it holds, so every
/// accept fails: drover must pause, log once per burst with a count, and
/// serve again as soon as fds are available.
#[test]
fn accept_failing_with_emfile_pauses_and_logs_once() {
    let d = Drover::start("emfile", ONE_SLEEPER);
    pid_of(&d, "w");
    let pid = d.pid();
    set_fd_limit(pid, lowest_free_fd(pid));
    let before = cpu_time(pid);
    let waiting: Vec<UnixStream> = (0..20).map(|_| connect(&d)).collect();
    // The summary of a window comes at its end, 10 s after the first line.
    let text = d.stderr.wait_for("the summary of accept failures", |t| {
        t.contains("more accept failures in the last 10s")
    });
    let used = cpu_time(pid) - before;
    eprintln!("10 s of EMFILE on accept: {used:?} of CPU");
    assert!(used < Duration::from_secs(2), "drover used {used:?} of CPU");
    // Lines of the first window: a new one may begin right after its summary.
    let summary = text.find("more accept failures").unwrap();
    let lines = text[..summary].matches("cannot accept a client").count();
    assert_eq!(lines, 1, "{text}");
    assert!(text.contains("Too many open files"), "{text}");

    set_fd_limit(pid, 4096);
    assert!(d.status()["groups"].is_array(), "accepting again");
    kill_and_wait_replaced(&d, "w");
    drop(waiting);
}

/// A line that never ends is cut off at 64 KiB: drover answers, closes,
/// and does not buffer the rest.
#[test]
fn ten_megabytes_without_a_newline_get_an_error_and_a_close() {
    let d = Drover::start("flood", ONE_SLEEPER);
    let mut stream = connect(&d);
    let mut reader = stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0usize;
        for _ in 0..10 {
            match stream.write_all(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(_) => break, // drover closed the connection
            }
        }
        sent
    });
    let answer = read_to_close(&mut reader);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["message"], "request: longer than 65536 bytes");
    let sent = writer.join().unwrap();
    assert!(sent < 10 << 20, "drover kept reading: {sent} bytes taken");
    assert!(d.status()["groups"].is_array());
}

/// A client that sends part of a request, or nothing, and then stalls is
/// closed after 10 s; one that trickles bytes gains no time.
#[test]
fn a_stalled_client_is_closed_after_ten_seconds() {
    let d = Drover::start("stall", ONE_SLEEPER);
    let mut partial = connect(&d);
    partial.write_all(b"{\"cmd\":\"sta").unwrap();
    let mut silent = connect(&d);
    let mut trickle = connect(&d);
    let started = Instant::now();
    let stop = Arc::new(Mutex::new(false));
    let trickler = {
        let stop = stop.clone();
        let mut trickle = trickle.try_clone().unwrap();
        std::thread::spawn(move || {
            // A byte per half second, until drover hangs up.
            while !*stop.lock().unwrap() && trickle.write_all(b" ").is_ok() {
                std::thread::sleep(Duration::from_millis(500)); // the attack's pace, not a wait
            }
        })
    };
    for stream in [&mut partial, &mut silent, &mut trickle] {
        let said = read_to_close(stream);
        let said: Value = serde_json::from_slice(&said).unwrap();
        assert_eq!(said["ok"], false);
        assert!(
            said["message"]
                .as_str()
                .unwrap()
                .contains("no complete line within 10s"),
            "{said}"
        );
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(9), "closed after {took:?}");
    assert!(took < Duration::from_secs(25), "closed after {took:?}");
    *stop.lock().unwrap() = true;
    trickler.join().unwrap();
    assert!(d.status()["groups"].is_array());
}

/// Garbage gets one error line each; a valid line followed by garbage is
/// served; nothing makes drover stop answering.
#[test]
fn garbage_requests_get_error_answers() {
    let d = Drover::start("garbage", ONE_SLEEPER);
    let huge_number = format!("{{\"cmd\":\"restart\",\"group\":1{}}}\n", "0".repeat(5000));
    let cases: Vec<&[u8]> = vec![
        b"\xff\xfe\x00\x80\n",
        b"{\"cmd\":\"st\xc3\x28tus\"}\n",
        b"not json at all\n",
        b"[1, 2, 3]\n",
        b"{\"cmd\": 12}\n",
        b"{\"cmd\":\"restart\",\"group\":1e999999}\n",
        huge_number.as_bytes(),
        b"{\"cmd\":\"launch_missiles\"}\n",
        b"\n",
    ];
    for case in cases {
        let answer = exchange(&d, case);
        assert_eq!(answer["ok"], false, "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.starts_with("request: "), "{message}");
    }
    let deep = format!("{}\n", "[".repeat(60_000));
    assert_eq!(exchange(&d, deep.as_bytes())["ok"], false);

    let answer = exchange(
        &d,
        b"{\"cmd\":\"status\"}\n\xff\xff garbage \x00 {{{{\n{\"cmd\":\"shutdown\"}\n",
    );
    assert_eq!(answer["ok"], true);
    assert!(answer["status"]["groups"].is_array());
    assert!(
        d.status()["groups"].is_array(),
        "the shutdown after it was ignored"
    );
}

/// Connecting and closing at once, over and over, costs drover little and
/// leaves nothing behind.
#[test]
fn connect_and_close_in_a_loop() {
    let d = Drover::start("churn", ONE_SLEEPER);
    pid_of(&d, "w");
    let before = cpu_time(d.pid());
    for _ in 0..2000 {
        drop(connect(&d));
    }
    assert!(d.status()["groups"].is_array());
    let used = cpu_time(d.pid()) - before;
    eprintln!("2000 connect/close: {used:?} of CPU");
    assert!(used < Duration::from_secs(2), "drover used {used:?} of CPU");
    // Not counted: the /dev/null placeholders drover reserves at startup
    // for starting children (its scratch slots).
    let fds = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .filter(|entry| {
            let path = entry.as_ref().unwrap().path();
            std::fs::read_link(path).is_ok_and(|target| target != Path::new("/dev/null"))
        })
        .count();
    assert!(fds < 40, "drover holds {fds} fds besides /dev/null");
}

/// A client that asks for a large status and never reads it neither blocks
/// the loop nor keeps its slot: the answer is dropped after 10 s.
#[test]
fn a_client_that_never_reads_its_answer_is_dropped() {
    // A reload with thousands of errors: status carries them all in
    // `config_error`, a 2 MB answer, more than a socket takes.
    let d = Drover::start("unread", ONE_SLEEPER);
    let mut broken = ONE_SLEEPER.to_owned();
    for i in 0..6000 {
        broken += &format!("no_such_key_{i:05} = 1\n");
    }
    d.dir.write("drover.toml", &broken);
    let out = d.cli(&["reload"]);
    assert!(!out.status.success(), "the reload must fail: {out:?}");
    let full = serde_json::to_vec(&d.status()).unwrap().len();
    assert!(full > 2_000_000, "{full}");
    let mut lazy: Vec<UnixStream> = (0..10)
        .map(|_| {
            let mut s = connect(&d);
            s.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
            s
        })
        .collect();
    // The loop still serves others, and restarts go on.
    kill_and_wait_replaced(&d, "w");
    d.stderr.wait_count("did not take its answer", 10);
    for stream in &mut lazy {
        let got = read_to_close(stream).len();
        assert!(got < full, "the whole answer was written");
    }
    assert!(d.status()["groups"].is_array());
}

/// A supervisor that does not answer (stopped with SIGSTOP) makes the
/// client fail with one clear line after its timeout, not hang.
#[test]
fn a_client_of_a_stopped_supervisor_times_out() {
    let d = Drover::start("sigstop", ONE_SLEEPER);
    d.signal(libc::SIGSTOP);
    let (out, took) = cli_bounded(&d, &["status"], Duration::from_secs(90));
    d.signal(libc::SIGCONT);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no answer within 30s"), "{err}");
    assert!(took >= Duration::from_secs(29), "{took:?}");
}

/// A file created after the events of interest: inotify keeps the order
/// of one watch's events, so once it is seen, everything before it was.
const END: &str = "end-of-events";

/// Watches `dir` and records the mode of `name` at every creation, and
/// whether its attributes ever changed after it existed.
struct ModeWatch {
    _watcher: notify::RecommendedWatcher,
    seen: Arc<Mutex<Vec<String>>>,
}

impl ModeWatch {
    fn new(dir: &Path, name: &'static str) -> ModeWatch {
        use notify::{EventKind, Watcher, event::ModifyKind};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                for path in &event.paths {
                    if path.ends_with(END) {
                        if event.kind.is_create() {
                            log.lock().unwrap().push(END.to_owned());
                        }
                        continue;
                    }
                    if !path.ends_with(name) {
                        continue;
                    }
                    let what = match event.kind {
                        EventKind::Create(_) => match std::fs::symlink_metadata(path) {
                            Ok(m) if m.file_type().is_socket() => {
                                format!("created {:o}", m.permissions().mode() & 0o7777)
                            }
                            Ok(_) => "created, not a socket".into(),
                            Err(_) => continue, // already gone
                        },
                        EventKind::Modify(ModifyKind::Metadata(_)) => "attributes changed".into(),
                        _ => continue,
                    };
                    log.lock().unwrap().push(what);
                }
            })
            .unwrap();
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .unwrap();
        ModeWatch {
            _watcher: watcher,
            seen,
        }
    }
}

/// Regression: the socket was bound (mode 0777 under umask 000), then
/// chmod'ed; in between, another user could connect and shut drover down.
/// Under umask 000, a watcher on the socket's directory must never see the
/// socket with a mode other than 0600, nor see its mode change. The old
/// code fails this deterministically on the first startup, whatever the
/// timing: its chmod of an existing path is an attribute change, which
/// inotify reports on the directory (and the stat after the creation
/// catches 0777 whenever it wins the race). The new code creates and
/// chmods the socket in a private directory and links it into place.
#[test]
fn under_umask_000_the_socket_never_exists_with_another_mode() {
    for _ in 0..20 {
        let dir = TempDir::new("umask");
        dir.write("drover.toml", ONE_SLEEPER);
        let watch = ModeWatch::new(dir.path(), "drover.sock");
        let d = Drover::start_in(dir, &["sh", "-c", "umask 000 && exec \"$@\"", "sh"]);
        let socket = d.socket.clone();
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o600);
        d.dir.write(END, "");
        wait_until("the watcher to see every event", || {
            watch.seen.lock().unwrap().iter().any(|e| e == END)
        });
        let seen = watch.seen.lock().unwrap().clone();
        assert_eq!(seen, ["created 600", END], "{seen:?}");
        // Nothing else was left beside it (the staging directory is gone).
        let names: Vec<_> = std::fs::read_dir(d.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }
}

/// A socket left behind by a drover that was killed is replaced.
#[test]
fn a_dead_socket_is_replaced() {
    let dir = TempDir::new("dead");
    dir.write("drover.toml", ONE_SLEEPER);
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("drover.sock")).unwrap());
    let d = Drover::start_in(dir, &[]);
    assert!(d.status()["groups"].is_array());
}

/// Something that is not a socket at the socket path is never deleted:
/// drover refuses to start and says why.
#[test]
fn a_file_at_the_socket_path_is_left_alone() {
    let dir = TempDir::new("notsock");
    let config = dir.write("drover.toml", ONE_SLEEPER);
    let socket = dir.write("drover.sock", "precious");
    let child = Command::new(drover_bin())
        .arg("run")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .env("DROVER_TEST_MARKER", dir.path())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = rx.recv_timeout(DEADLINE);
    common::kill_marked(&dir.path().display().to_string(), dir.path());
    let out = out
        .expect("drover started with a regular file at its socket path")
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious");
}
