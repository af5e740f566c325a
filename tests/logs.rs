//! Child output capture: whole prefixed lines, JSON lines, 5 MB
//! line-exact, invalid UTF-8 replaced, a last line without newline kept.

mod common;

use common::Drover;

#[test]
fn five_megabytes_of_output_arrive_line_exact() {
    // 50,000 numbered lines of ~100 bytes each, from two children at once.
    let d = Drover::start(
        "bulk",
        r#"
[group.bulk]
command = ["python3", "-c", "import os, sys\ni = os.environ['DROVER_INDEX']\nfor n in range(50000):\n    sys.stdout.write(f'{i}:{n:06d}:' + 'x' * 90 + '\\n')\nsys.stdout.flush()"]
processes = 2
restart = "never"
start_secs = "100ms"
"#,
    );
    d.wait_group_state("bulk", "exited");
    let text = d.stdout.wait_for("100,000 lines", |t| {
        t.contains("bulk[0] 0:049999:") && t.contains("bulk[1] 1:049999:")
    });
    for index in 0..2 {
        let prefix = format!("bulk[{index}] ");
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
        assert_eq!(lines.len(), 50_000);
        for (n, line) in lines.iter().enumerate() {
            let expected = format!("{prefix}{index}:{n:06}:{}", "x".repeat(90));
            assert_eq!(*line, expected, "line {n} of child {index}");
        }
    }
    assert!(
        text.lines()
            .all(|l| l.starts_with("bulk[0] ") || l.starts_with("bulk[1] ")),
        "no line is interleaved with another"
    );
}

#[test]
fn json_lines_carry_group_index_pid_and_stream() {
    let d = Drover::start(
        "json",
        r#"
[supervisor]
log_format = "json"

[group.talk]
command = ["sh", "-c", "echo out; echo err >&2; printf 'no newline'"]
restart = "never"
start_secs = "100ms"
"#,
    );
    d.wait_group_state("talk", "exited");
    let text = d.stdout.wait_count("\n", 3);
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let find = |line: &str| {
        records
            .iter()
            .find(|r| r["line"] == line)
            .unwrap_or_else(|| panic!("no record for {line:?} in {text}"))
    };
    assert_eq!(find("out")["stream"], "stdout");
    assert_eq!(find("err")["stream"], "stderr");
    let last = find("no newline");
    assert_eq!(last["group"], "talk");
    assert_eq!(last["index"], 0);
    assert!(last["pid"].as_i64().unwrap() > 0);
    for r in &records {
        assert_recent_rfc3339(r["time"].as_str().expect("every record has a time"));
    }
}

/// `2026-12-06T00:37:28.123Z`, within a minute of now (UTC, from `date`).
fn assert_recent_rfc3339(time: &str) {
    let b = time.as_bytes();
    let shape = b.len() == 24
        && [4, 7].iter().all(|&i| b[i] == b'-')
        && b[10] == b'T'
        && [13, 16].iter().all(|&i| b[i] == b':')
        && b[19] == b'.'
        && b[23] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit());
    assert!(shape, "not RFC 3339 with milliseconds in UTC: {time}");
    let out = std::process::Command::new("date")
        .args(["-u", "-d", time, "+%s"])
        .output()
        .unwrap();
    let then: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - then).abs() < 60, "{time} is not now");
}

#[test]
fn log_timestamps_start_text_lines_with_the_time() {
    let d = Drover::start(
        "stamps",
        r#"
[supervisor]
log_timestamps = true

[group.talk]
command = ["sh", "-c", "echo hello"]
restart = "never"
start_secs = "100ms"
"#,
    );
    let text = d
        .stdout
        .wait_for("the line", |t| t.contains("talk[0] hello"));
    let line = text.lines().find(|l| l.ends_with("talk[0] hello")).unwrap();
    let (time, rest) = line.split_once(' ').unwrap();
    assert_eq!(rest, "talk[0] hello");
    assert_recent_rfc3339(time);
}

#[test]
fn invalid_utf8_is_replaced_and_a_final_partial_line_is_kept() {
    let d = Drover::start(
        "utf8",
        r#"
[group.bytes]
command = ["printf", 'ok \377 bytes\nlast line without newline']
restart = "never"
start_secs = "100ms"
"#,
    );
    d.wait_group_state("bytes", "exited");
    let text = d
        .stdout
        .wait_for("both lines", |t| t.contains("without newline"));
    assert!(text.contains("bytes[0] ok \u{fffd} bytes\n"), "{text:?}");
    assert!(
        text.contains("bytes[0] last line without newline\n"),
        "{text:?}"
    );
}

#[test]
fn over_long_lines_are_split_not_buffered_without_bound() {
    let d = Drover::start(
        "long",
        r#"
[group.long]
command = ["python3", "-c", "import sys; sys.stdout.write('y' * 200000 + '\\n')"]
restart = "never"
start_secs = "100ms"
"#,
    );
    d.wait_group_state("long", "exited");
    let text = d
        .stdout
        .wait_for("the whole line", |t| t.matches('y').count() >= 200_000);
    let pieces: Vec<usize> = text
        .lines()
        .filter_map(|l| l.strip_prefix("long[0] "))
        .map(str::len)
        .collect();
    assert_eq!(pieces, [65536, 65536, 65536, 3392]);
}

/// drover's own events carry the child as fields, not only in the message:
/// a JSON log can be filtered by group and index without parsing text.
#[test]
fn json_events_of_drover_carry_group_index_pid_and_exit() {
    let d = Drover::start(
        "jsonevents",
        r#"
[supervisor]
log_format = "json"

[group.quits]
command = ["sh", "-c", "exit 3"]
restart = "never"
start_secs = "100ms"
"#,
    );
    d.wait_group_state("quits", "exited");
    let text = d
        .stderr
        .wait_for("the exit event", |t| t.contains("quits[0]: exited"));
    let event: serde_json::Value = text
        .lines()
        .find(|l| l.contains("quits[0]: exited"))
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .unwrap();
    // Top-level fields, like the child-output lines.
    let fields = &event;
    assert!(event["message"].as_str().is_some(), "{event}");
    assert_eq!(fields["group"], "quits", "{event}");
    assert_eq!(fields["index"], 0, "{event}");
    assert!(fields["pid"].as_i64().unwrap() > 0, "{event}");
    assert_eq!(fields["exit"], "3", "{event}");
}

// ------------------------------------------------------------ drover logs

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TempDir, drover_bin, python, wait_until};

/// Kills a client process when the test ends, also when it fails.
struct Client(Child);

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `request` (a JSON line) on a raw control connection and reads
/// the response line: once it is there, a follower is registered.
fn raw_follow(d: &Drover, request: &str) -> BufReader<UnixStream> {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut reader = BufReader::new(s);
    let mut header = String::new();
    reader.read_line(&mut header).unwrap();
    assert!(header.contains("\"ok\":true"), "{header}");
    reader
}

fn lines_of(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn logs_prints_the_kept_last_lines_of_each_group_in_order() {
    let d = Drover::start(
        "logs-n",
        r#"
[supervisor]
log_lines = 5

[group.a]
command = ["sh", "-c", "for i in 0 1 2 3 4 5 6 7 8 9; do echo a$i; done; exec sleep 1000"]
start_secs = "100ms"

[group.b]
command = ["sh", "-c", "echo b0; echo b1; echo b2; exec sleep 1000"]
start_secs = "100ms"
"#,
    );
    d.stdout.wait_for("both groups' lines", |t| {
        t.contains("a[0] a9") && t.contains("b[0] b2")
    });
    let out = d.cli(&["logs"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let of = |g: &str| -> Vec<&str> { text.lines().filter(|l| l.starts_with(g)).collect() };
    assert_eq!(
        of("a[0]"),
        ["a[0] a5", "a[0] a6", "a[0] a7", "a[0] a8", "a[0] a9"]
    );
    assert_eq!(of("b[0]"), ["b[0] b0", "b[0] b1", "b[0] b2"]);
    assert_eq!(text.lines().count(), 8, "{text}");
    // In the order drover wrote them: the same as its own stdout.
    let written: Vec<String> = d
        .stdout
        .text()
        .lines()
        .filter(|l| text.lines().any(|x| x == *l))
        .map(str::to_owned)
        .collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), written);

    let out = d.cli(&["logs", "a", "-n", "2"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "a[0] a8\na[0] a9\n");
    let out = d.cli(&["logs", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no group named `nope`"));
}

/// Two `drover logs -f` clients at once, while a child writes: each sees an
/// unbroken run of the child's lines, in order, as drover wrote them.
#[test]
fn two_followers_see_every_new_line_while_children_write() {
    let d = Drover::start(
        "logs-follow",
        &format!(
            r#"
[group.tick]
command = ["{}", "-c", "import sys, time\ni = 0\nwhile True:\n    print(f'tick {{i}}', flush=True)\n    i += 1\n    time.sleep(0.002)"]
start_secs = "100ms"
"#,
            python()
        ),
    );
    d.stdout
        .wait_for("the first tick", |t| t.contains("tick[0] tick 0"));
    let follow = |file: &str| {
        let out = std::fs::File::create(d.dir.path().join(file)).unwrap();
        Client(
            Command::new(drover_bin())
                .args(["logs", "-f", "-n", "0", "tick", "--socket"])
                .arg(&d.socket)
                .stdout(out)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let followers = [follow("f1.txt"), follow("f2.txt")];
    let (f1, f2) = (d.dir.path().join("f1.txt"), d.dir.path().join("f2.txt"));
    wait_until("both followers to get 300 lines", || {
        lines_of(&f1).len() >= 300 && lines_of(&f2).len() >= 300
    });
    drop(followers);
    for file in [&f1, &f2] {
        let got = lines_of(file);
        let first: u64 = got[0]
            .strip_prefix("tick[0] tick ")
            .unwrap()
            .parse()
            .unwrap();
        for (k, line) in got.iter().enumerate() {
            assert_eq!(
                *line,
                format!("tick[0] tick {}", first + k as u64),
                "{file:?}"
            );
        }
    }
    assert!(d.status()["groups"].is_array(), "drover still answers");
}

/// A follower that stops reading falls more than 1 MiB behind: it is sent
/// a notice and dropped, while the children, drover's own output and a
/// follower that keeps up are not slowed or cut.
#[test]
fn a_follower_that_does_not_read_is_dropped_with_a_notice() {
    let dir = TempDir::new("logs-slow");
    // 40,000 lines of 100 bytes (4 MB) once the gate file exists.
    dir.write(
        "flood.py",
        "import os, sys, time\nwhile not os.path.exists('gate'):\n    time.sleep(0.01)\n\
         for n in range(40000):\n    sys.stdout.write(f'{n:06d} ' + 'x' * 93 + '\\n')\n\
         sys.stdout.flush()\nprint('flood done', flush=True)\nimport signal\nsignal.pause()\n",
    );
    dir.write(
        "drover.toml",
        &format!(
            "[group.flood]\ncommand = [\"{}\", \"flood.py\"]\nstart_secs = \"100ms\"\n",
            python()
        ),
    );
    let d = Drover::start_in(dir, &[]);
    d.wait_group_state("flood", "running");
    let mut slow = raw_follow(&d, r#"{"cmd":"logs","follow":true,"lines":0}"#);
    let good = raw_follow(
        &d,
        r#"{"cmd":"logs","follow":true,"lines":0,"groups":["flood"]}"#,
    );
    let keeper = std::thread::spawn(move || {
        let mut count = 0;
        for line in good.lines() {
            let line = line.unwrap();
            count += 1;
            if line == "flood[0] flood done" {
                break;
            }
        }
        count
    });
    std::fs::write(d.dir.path().join("gate"), "").unwrap();
    d.stdout
        .wait_for("the whole flood on drover's stdout", |t| {
            t.contains("flood[0] flood done")
        });
    assert_eq!(
        keeper.join().unwrap(),
        40_001,
        "the follower that kept up got every line"
    );
    let mut rest = Vec::new();
    slow.read_to_end(&mut rest)
        .expect("the slow follower is closed");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.ends_with("drover: logs: this client fell more than 1024 KiB behind; disconnected\n"),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
    assert!(rest.len() < 2 << 20, "{} bytes: it was cut", rest.len());
    assert!(d.status()["groups"].is_array(), "drover still answers");
}

#[test]
fn log_lines_is_checked() {
    let dir = TempDir::new("logs-check");
    let path = dir.write("drover.toml", "[supervisor]\nlog_lines = -1\n");
    let out = Command::new(drover_bin())
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("log_lines") && err.contains("drover.toml:2"),
        "{err}"
    );
}

/// drover started on `config` with these stdout and stderr, killed (with
/// its children) when dropped.
struct Bare {
    child: std::process::Child,
    dir: common::TempDir,
    marker: String,
    socket: std::path::PathBuf,
}

impl Bare {
    fn start(name: &str, config: &str, stdout: Stdio, stderr: Stdio) -> Bare {
        let dir = common::TempDir::new(name);
        dir.write("drover.toml", config);
        let socket = dir.path().join("drover.sock");
        let marker = dir.path().display().to_string();
        let child = Command::new(common::drover_bin())
            .arg("run")
            .arg(dir.path().join("drover.toml"))
            .arg("--socket")
            .arg(&socket)
            .current_dir(dir.path())
            .env("DROVER_TEST_MARKER", &marker)
            .env("DROVER_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start drover");
        Bare {
            child,
            dir,
            marker,
            socket,
        }
    }

    /// `restarts` of `group[0]`, once the control socket answers.
    fn restarts(&self, group: &str) -> Option<u64> {
        let out = Command::new(common::drover_bin())
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .ok()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Drover::children(&status, group)[0]["restarts"].as_u64()
    }

    /// Waits until `group[0]` was restarted `n` times; drover must live.
    fn wait_restarts(&mut self, group: &str, n: u64) {
        let limit = Duration::from_secs(60);
        common::wait_until_within(&format!("{group}[0] restarted {n} times"), limit, || {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("drover exited ({exit})");
            }
            self.restarts(group).is_some_and(|r| r >= n)
        });
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        common::kill_marked(&self.marker, self.dir.path());
    }
}

/// A child that prints a line and crashes every 400 ms (300 ms after it
/// counts as running: an exit is a crash to restart, never a failed start
/// that backs off, even on a loaded machine).
const CRASHER: &str = r#"
[group.crasher]
command = ["sh", "-c", "echo hello; sleep 0.4; exit 3"]
start_secs = "100ms"
"#;

/// drover's stdout and stderr go to pipes nobody reads any more (a `tee`
/// that died, a log collector gone): every write fails with EPIPE. drover
/// keeps supervising: the crasher is restarted again and again (each exit
/// is a log line, each print a line of child output), and `status`
/// answers. (tracing's default reported a failed write with `eprintln!`,
/// which panics on a broken stderr: drover, PID 1 in a container, aborted
/// at its first log line.)
#[test]
fn drover_outlives_stdout_and_stderr_that_nobody_reads() {
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let (err_r, err_w) = nix::unistd::pipe().unwrap();
    // Closed before drover writes its first line.
    drop((out_r, err_r));
    let mut d = Bare::start(
        "broken-stderr",
        CRASHER,
        Stdio::from(out_w),
        Stdio::from(err_w),
    );
    d.wait_restarts("crasher", 5);
}

/// drover's stderr is a pipe that is held open and never read (a pager
/// left on its first screen, a log shipper that stalls), 4 KiB small: its
/// log lines must not block the loop. The crasher is restarted 20 times
/// (a few debug lines each: the pipe is full after the first few), and the
/// first lines are there to read.
#[test]
fn a_stderr_nobody_reads_does_not_stall_supervision() {
    let (err_r, err_w) = nix::unistd::pipe().unwrap();
    nix::fcntl::fcntl(&err_w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
    let mut d = Bare::start("stalled-stderr", CRASHER, Stdio::null(), Stdio::from(err_w));
    d.wait_restarts("crasher", 20);
    // Read what is there: the first lines, written before the pipe filled.
    nix::fcntl::fcntl(
        &err_r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = nix::unistd::read(&err_r, &mut buf) {
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("supervising 1 group"), "{text}");
}

/// drover's stdout is a file that reaches the file-size limit (`ulimit
/// -f`): the write past it fails (EFBIG), which drover reports and goes on
/// from, discarding child output. It used to be killed by SIGXFSZ (exit
/// 153), leaving its children unsupervised.
#[test]
fn a_stdout_file_at_the_size_limit_does_not_kill_drover() {
    let dir = TempDir::new("logs-fsize");
    dir.write(
        "drover.toml",
        "[group.chatty]\n\
         command = [\"sh\", \"-c\", \"while :; do echo 0123456789abcdef0123456789abcdef; done\"]\n",
    );
    let out = dir.path().join("out.log");
    // 64 KiB with dash, which counts `ulimit -f` in 512-byte blocks; 128
    // KiB with bash, which counts in KiB.
    let d = Drover::start_in(
        dir,
        &["sh", "-c", "ulimit -f 128 && exec \"$@\" > out.log", "sh"],
    );
    d.stderr.wait_for("the failed write reported", |t| {
        t.contains("cannot write child output to stdout")
    });
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(size <= 128 * 1024, "{size} bytes");
    let status = d.wait_status("chatty still running", |s| {
        Drover::children(s, "chatty")[0]["state"] == "running"
    });
    assert_eq!(Drover::children(&status, "chatty")[0]["restarts"], 0);
}

/// drover's stdout is a pipe that is held open and never read (a pager
/// left on its first screen, a log shipper that hangs), and drover is
/// asked to stop: it gives up on the child output still waiting after 2 s
/// of stdout taking nothing, says so on stderr, and exits with the
/// shutdown's code. (The writer thread was joined unconditionally: drover,
/// PID 1 in a container, never exited.)
#[test]
fn drover_exits_even_when_stdout_takes_nothing() {
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    nix::fcntl::fcntl(&out_w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
    let dir = TempDir::new("stalled-stdout-exit");
    let err_path = dir.path().join("stderr.log");
    let err = std::fs::File::create(&err_path).unwrap();
    let printed = dir.path().join("printed");
    let config = format!(
        "[group.chatty]\ncommand = [\"sh\", \"-c\", \"i=0; while [ $i -lt 3000 ]; do echo line-$i; \
         i=$((i+1)); done; touch {}; exec sleep 1000\"]\n",
        printed.display()
    );
    let mut d = Bare::start(
        "stalled-stdout-exit",
        &config,
        Stdio::from(out_w),
        Stdio::from(err),
    );
    common::wait_until("the child printed its lines", || printed.exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut exit = None;
    common::wait_until_within("drover to exit", Duration::from_secs(60), || {
        exit = d.child.try_wait().unwrap();
        exit.is_some()
    });
    assert_eq!(exit.unwrap().code(), Some(0));
    let text = std::fs::read_to_string(&err_path).unwrap();
    assert!(
        text.contains("stdout took no child output for 2s: exiting without the last"),
        "{text}"
    );
    drop(out_r);
}
