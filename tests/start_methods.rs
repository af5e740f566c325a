//! The three start methods for command groups: they
//! differ in which fds a child inherits and agree on everything else — own
//! process group, drover as parent, empty signal mask, default dispositions,
//! the DROVER_* variables. Plus the fork server's own supervision.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;

use common::{Drover, TempDir, alive, wait_until};

const METHODS: [&str; 3] = ["spawn", "fork", "forkserver"];

/// Starts drover the way systemd socket activation would: a listening Unix
/// socket on fd 3 (without close-on-exec) and `LISTEN_FDS=1`, and, for good
/// measure, with signals blocked and ignored.
const ACTIVATE: &str = "import os, signal, socket, sys\n\
sock = socket.socket(socket.AF_UNIX)\n\
sock.bind(sys.argv[1])\n\
sock.listen(8)\n\
os.dup2(sock.fileno(), 3)\n\
os.set_inheritable(3, True)\n\
os.environ['LISTEN_FDS'] = '1'\n\
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1, signal.SIGALRM})\n\
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):\n    signal.signal(s, signal.SIG_IGN)\n\
os.execvp(sys.argv[2], sys.argv[2:])";

fn config() -> String {
    let mut c = String::new();
    for m in METHODS {
        c.push_str(&format!(
            r#"
[group.fds_{m}]
command = ["ls", "/proc/self/fd"]
start_method = "{m}"
restart = "never"
start_secs = "100ms"

[group.sig_{m}]
command = ["grep", "-E", "^(SigBlk|SigIgn|PPid|NSpgid|NSpid):", "/proc/self/status"]
start_method = "{m}"
restart = "never"
start_secs = "100ms"

[group.env_{m}]
command = ["sh", "-c", "echo \"method=$DROVER_START_METHOD group=$DROVER_GROUP index=$DROVER_INDEX extra=$EXTRA\""]
start_method = "{m}"
processes = 2
env = {{ EXTRA = "yes" }}
restart = "never"
start_secs = "100ms"
"#
        ));
    }
    c
}

fn field(text: &str, group: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{group}[0] {name}:")))
        .unwrap_or_else(|| panic!("no {name} for {group} in:\n{text}"))
        .trim()
        .to_owned()
}

#[test]
fn methods_differ_in_inherited_fds_and_agree_on_everything_else() {
    let dir = TempDir::new("methods");
    dir.write("drover.toml", &config());
    let listen = dir.path().join("listen.sock");
    let listen_arg = listen.display().to_string();
    let wrapper = ["python3", "-c", ACTIVATE, &listen_arg];
    let d = Drover::start_in(dir, &wrapper);
    let drover_pid = d.pid().to_string();
    for m in METHODS {
        d.wait_group_state(&format!("sig_{m}"), "exited");
        d.wait_group_state(&format!("fds_{m}"), "exited");
        d.wait_group_state(&format!("env_{m}"), "exited");
    }
    let text = d.stdout.wait_for("every report", |t| {
        METHODS.iter().all(|m| {
            t.contains(&format!("sig_{m}[0] NSpgid:"))
                && t.matches(&format!("env_{m}[")).count() == 2
        })
    });
    for m in METHODS {
        let mut fds: Vec<u32> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("fds_{m}[0] "))?.parse().ok())
            .collect();
        fds.sort();
        // ls's own directory fd is the lowest free one: 3, or 4 when the
        // inherited socket holds 3. The fork method also passes on whatever
        // else drover inherited without close-on-exec.
        match m {
            "fork" => assert_eq!(&fds[..5], [0, 1, 2, 3, 4], "{m}: {fds:?}"),
            _ => assert_eq!(fds, [0, 1, 2, 3], "{m}: {fds:?}"),
        }
        let group = format!("sig_{m}");
        assert_eq!(
            field(&text, &group, "PPid"),
            drover_pid,
            "{m}: drover is the parent"
        );
        assert_eq!(
            field(&text, &group, "NSpgid"),
            field(&text, &group, "NSpid"),
            "{m}: own process group"
        );
        assert_eq!(field(&text, &group, "SigBlk"), "0000000000000000", "{m}");
        let ignored = u64::from_str_radix(&field(&text, &group, "SigIgn"), 16).unwrap();
        // Nothing ignored: not even glibc's internal signals 32 and 33,
        // which its posix_spawn would leave ignored unless told otherwise.
        assert_eq!(ignored, 0, "{m}: {ignored:x}");
        for index in 0..2 {
            assert!(
                text.contains(&format!(
                    "env_{m}[{index}] method={m} group=env_{m} index={index} extra=yes"
                )),
                "{m}[{index}]:\n{text}"
            );
        }
    }
}

#[test]
fn a_fork_child_can_accept_on_an_inherited_socket_a_spawn_child_cannot() {
    let dir = TempDir::new("listenfds");
    dir.write(
        "drover.toml",
        r#"
[group.forked]
command = ["python3", "-c", "import socket; s = socket.socket(fileno=3); c, _ = s.accept(); c.sendall(b'hello from fork'); print('accepted')"]
start_method = "fork"
restart = "never"
start_secs = "100ms"

[group.spawned]
command = ["python3", "-c", "import os\ntry:\n    os.fstat(3); print('fd 3 is open')\nexcept OSError:\n    print('no fd 3')"]
restart = "never"
start_secs = "100ms"

[group.served]
command = ["python3", "-c", "import os\ntry:\n    os.fstat(3); print('fd 3 is open')\nexcept OSError:\n    print('no fd 3')"]
start_method = "forkserver"
restart = "never"
start_secs = "100ms"
"#,
    );
    let listen = dir.path().join("listen.sock");
    let listen_arg = listen.display().to_string();
    let d = Drover::start_in(dir, &["python3", "-c", ACTIVATE, &listen_arg]);
    let mut client = UnixStream::connect(&listen).expect("drover's inherited socket listens");
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut client, &mut reply).unwrap();
    assert_eq!(reply, "hello from fork");
    client.flush().unwrap();
    let text = d.stdout.wait_for("all three reports", |t| {
        t.contains("forked[0] accepted") && t.contains("spawned[0] ") && t.contains("served[0] ")
    });
    assert!(text.contains("spawned[0] no fd 3"), "{text}");
    assert!(text.contains("served[0] no fd 3"), "{text}");
}

/// The fork server: children of drover with `drover-forkserver` as argv[0].
fn forkservers(drover: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 2..].split(' ').nth(1)?.parse::<i32>().ok());
            cmdline.starts_with(b"drover-forkserver\0")
                && ppid == Some(drover)
                && alive(*pid as i64)
        })
        .collect()
}

#[test]
fn the_fork_server_is_restarted_when_it_dies_and_children_live_on() {
    let d = Drover::start(
        "serverdeath",
        r#"
[group.steady]
command = ["sleep", "1000"]
start_method = "forkserver"
processes = 3
start_secs = "100ms"

[group.churn]
command = ["sh", "-c", "echo up; sleep 0.15"]
start_method = "forkserver"
processes = 2
restart = "always"
start_secs = "100ms"
"#,
    );
    let steady = d.wait_group_state("steady", "running");
    d.stdout.wait_count("churn[", 20);
    let servers = forkservers(d.pid());
    assert_eq!(servers.len(), 1, "one server per drover");
    let first = servers[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.stderr.wait_for("the server restart", |t| {
        t.contains("the fork server exited; starting a new one")
            || t.contains("the fork server did not answer")
    });
    // Starts go on through the new server.
    let before = d.stdout.text().matches("churn[").count();
    d.stdout.wait_count("churn[", before + 20);
    let now = forkservers(d.pid());
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], first);
    assert_eq!(d.wait_group_state("steady", "running"), steady, "untouched");
    for pid in steady {
        assert!(alive(pid));
    }
    let status = d.status();
    assert!(
        Drover::children(&status, "churn")
            .iter()
            .all(|c| c["state"] != "fatal"),
        "{status:#}"
    );
}

#[test]
fn two_hundred_children_through_the_fork_server_at_once() {
    let d = Drover::start(
        "many",
        r#"
[group.many]
command = ["sleep", "1000"]
start_method = "forkserver"
processes = 200
start_secs = "100ms"
"#,
    );
    let pids = d.wait_group_state("many", "running");
    assert_eq!(pids.len(), 200);
    let mut unique = pids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 200);
    wait_until("every child to be drover's own", || {
        pids.iter().all(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rfind(')')
                .and_then(|i| stat[i + 2..].split(' ').nth(1)?.parse::<i32>().ok())
                == Some(d.pid())
        })
    });
}

/// Regression: drover raises its own soft open-file limit to the hard limit
/// (it holds two pipes per child) and every child inherited the raised one
/// (a `select()`-based program overflows `fd_set`; Python 3.8's
/// `closerange` walks a million fds). Children start with drover's original
/// soft limit, whatever their start method.
#[test]
fn children_start_with_the_original_open_file_limit() {
    let dir = TempDir::new("nofile");
    let mut config = String::new();
    for m in METHODS {
        config.push_str(&format!(
            r#"
[group.limit_{m}]
command = ["sh", "-c", "echo soft=$(ulimit -Sn)"]
start_method = "{m}"
restart = "never"
"#
        ));
    }
    dir.write("drover.toml", &config);
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap()
        .1;
    assert!(
        hard > 300,
        "the test needs a hard limit above 300, not {hard}"
    );
    let d = Drover::start_in(dir, &["sh", "-c", "ulimit -Sn 300 && exec \"$@\"", "sh"]);
    for m in METHODS {
        d.stdout.wait_for(&format!("limit_{m}"), |t| {
            t.contains(&format!("limit_{m}[0] soft="))
        });
    }
    let text = d.stdout.text();
    for m in METHODS {
        assert!(
            text.contains(&format!("limit_{m}[0] soft=300")),
            "{m}:\n{text}"
        );
    }
    let drover_limit = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let open_files = drover_limit
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        open_files.split_whitespace().nth(3) != Some("300"),
        "drover raised its own limit: {open_files}"
    );
}

/// A start whose exec fails in the fork server's child (a file marked
/// executable that is no program: ENOEXEC, found only by `execve`) fails
/// with that error, as a spawn does; the same server goes on serving the
/// other group, and the failed child (drover's, exited 127) is reaped.
#[test]
fn a_forkserver_child_that_cannot_exec_fails_its_start_and_the_server_serves_on() {
    let dir = TempDir::new("fsnoexec");
    let bogus = dir.write("bogus", "this is not a program\n");
    std::fs::set_permissions(&bogus, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dir.write(
        "drover.toml",
        &format!(
            r#"
[group.bad]
command = ["{}"]
start_method = "forkserver"
start_secs = "100ms"
restart_delay = "10ms"
restart_delay_max = "10ms"
max_restarts = 2

[group.good]
command = ["sh", "-c", "echo up; exec sleep 1000"]
start_method = "forkserver"
start_secs = "100ms"
"#,
            bogus.display()
        ),
    );
    let d = Drover::start_in(dir, &[]);
    d.wait_group_state("bad", "fatal");
    let err = d.stderr.text();
    assert!(
        err.lines()
            .any(|l| l.contains("bad[0]") && l.contains("Exec format error")),
        "{err}"
    );
    let good = d.wait_group_state("good", "running");
    let servers = forkservers(d.pid());
    assert_eq!(servers.len(), 1, "one server");
    // The same server starts the replacement of a killed child.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(good[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.stdout.wait_count("good[0] up", 2);
    let again = d.wait_group_state("good", "running");
    assert_ne!(again, good);
    assert_eq!(forkservers(d.pid()), servers, "the server served on");
    // No zombie is left among drover's children.
    wait_until("drover to reap every exited child", || {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", d.pid()))
            .unwrap_or_default();
        children.split_whitespace().all(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rfind(')')
                .and_then(|i| stat[i + 2..].split(' ').next())
                .is_none_or(|state| state != "Z")
        })
    });
}
