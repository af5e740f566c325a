//! Test harness: boots the real `drover` binary in a fresh temp directory.
//!
//! [`Drover`] captures drover's stdout and stderr through reader threads
//! (so waiting on output is a condition variable, not polling), talks to its
//! control socket, and on drop kills drover and every process it started:
//! each test run's processes carry a unique marker in their environment, and
//! everything carrying it, or whose working directory is inside the test's
//! directory, is SIGKILLed — even when the test panicked.
#![allow(dead_code)]

pub mod redis;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous: tests must pass on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The entry of `queue` in a status.
pub fn queue<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["queues"]
        .as_array()
        .expect("status has queues")
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("no queue {name} in {status:#}"))
}

/// One counter of `queue` in a status.
pub fn count(status: &Value, name: &str, field: &str) -> u64 {
    queue(status, name)[field]
        .as_u64()
        .unwrap_or_else(|| panic!("queue {name} has no counter {field}: {status:#}"))
}

/// The drover binary under test: the one cargo built for these tests, or
/// `DROVER_TEST_BIN` when set (CI runs the container-entrypoint tests again
/// against the static musl build a container image ships).
pub fn drover_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| match std::env::var("DROVER_TEST_BIN") {
        Ok(bin) if !bin.is_empty() => {
            assert!(
                Path::new(&bin).is_file(),
                "DROVER_TEST_BIN={bin} is not a file"
            );
            bin
        }
        _ => env!("CARGO_BIN_EXE_drover").to_owned(),
    })
}

/// The real interpreter behind `python3`: a version manager's shim (pyenv)
/// costs ~100 ms per start and adds variables to the environment.
pub fn python() -> &'static str {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed by the tests");
        assert!(out.status.success(), "python3 does not run: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let base = std::env::temp_dir().join(format!(
            "drover-test-{}-{}-{}",
            name,
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&base).unwrap();
        TempDir(base.canonicalize().unwrap())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Output captured from a stream, with a condition variable to wait on.
#[derive(Clone, Default)]
pub struct Captured(Arc<(Mutex<Stream>, Condvar)>);

/// What a stream produced so far, and whether it has ended.
#[derive(Default)]
pub struct Stream {
    data: Vec<u8>,
    closed: bool,
}

impl Captured {
    fn spawn_reader(&self, mut stream: impl Read + Send + 'static) {
        let shared = self.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                let (lock, cvar) = &*shared;
                let Ok(mut captured) = lock.lock() else {
                    return; // a waiting test panicked
                };
                if n == 0 {
                    captured.closed = true;
                    cvar.notify_all();
                    return;
                }
                captured.data.extend_from_slice(&buf[..n]);
                cvar.notify_all();
            }
        });
    }

    /// What arrived so far. To assert on output that a state change
    /// implies, wait for it ([`Self::wait_for`]): the reader thread may
    /// still be on its way.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.0.lock().unwrap().data).into_owned()
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.0.0.lock().unwrap().data.clone()
    }

    /// Waits until the stream has ended (drover exited and closed it).
    pub fn wait_closed(&self) -> String {
        self.wait_until("the stream to close", |s| s.closed)
    }

    /// Waits until `pred` holds for the captured text.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_until(what, |s| pred(&String::from_utf8_lossy(&s.data)))
    }

    fn wait_until(&self, what: &str, pred: impl Fn(&Stream) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        let (lock, cvar) = &*self.0;
        let mut captured = lock.lock().unwrap();
        loop {
            if pred(&captured) {
                return String::from_utf8_lossy(&captured.data).into_owned();
            }
            let now = Instant::now();
            if now >= deadline {
                let text = String::from_utf8_lossy(&captured.data).into_owned();
                drop(captured);
                panic!("timed out after {DEADLINE:?} waiting for {what}; output so far:\n{text}");
            }
            captured = cvar.wait_timeout(captured, deadline - now).unwrap().0;
        }
    }

    /// Waits until the text has `marker` and, after it, `end`; returns
    /// what stands between them (at the first `marker`).
    pub fn wait_between(&self, what: &str, marker: &str, end: &str) -> String {
        let between = |t: &str| {
            let (_, rest) = t.split_once(marker)?;
            rest.split_once(end).map(|(value, _)| value.to_owned())
        };
        let text = self.wait_for(what, |t| between(t).is_some());
        between(&text).unwrap_or_default()
    }

    /// Waits until the text contains `needle` `count` times.
    pub fn wait_count(&self, needle: &str, count: usize) -> String {
        self.wait_for(&format!("{count} × {needle:?}"), |t| {
            t.matches(needle).count() >= count
        })
    }
}

/// A running `drover run` and everything it started; killed on drop.
pub struct Drover {
    pub dir: TempDir,
    pub child: Option<Child>,
    pub stdout: Captured,
    pub stderr: Captured,
    pub socket: PathBuf,
    marker: String,
}

impl Drover {
    /// Writes `config` as `drover.toml` in a fresh directory and runs it.
    pub fn start(name: &str, config: &str) -> Drover {
        let dir = TempDir::new(name);
        dir.write("drover.toml", config);
        Drover::start_in(dir, &[])
    }

    /// Writes `scripts` and `config` (with `@PY@` standing for the real
    /// interpreter, see [`python`]) into a fresh directory and runs drover.
    pub fn launch(name: &str, config: &str, scripts: &[(&str, &str)]) -> Drover {
        Drover::launch_with_env(name, config, scripts, &[])
    }

    /// [`Drover::launch`] with more variables in drover's environment.
    pub fn launch_with_env(
        name: &str,
        config: &str,
        scripts: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Drover {
        let dir = TempDir::new(name);
        for (file, text) in scripts {
            dir.write(file, text);
        }
        dir.write("drover.toml", &config.replace("@PY@", python()));
        Drover::start_in_env(dir, &[], env)
    }

    /// Runs the config already in `dir`, optionally behind a wrapper argv
    /// (e.g. `unshare ...`) that ends by running drover.
    pub fn start_in(dir: TempDir, wrapper: &[&str]) -> Drover {
        Drover::start_in_env(dir, wrapper, &[])
    }

    /// [`Drover::start_in`] with more variables in drover's environment.
    pub fn start_in_env(dir: TempDir, wrapper: &[&str], env: &[(&str, &str)]) -> Drover {
        let socket = dir.path().join("drover.sock");
        let marker = format!("{}", dir.path().display());
        let mut argv: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        argv.extend([
            drover_bin().to_string(),
            "run".into(),
            dir.path().join("drover.toml").display().to_string(),
            "--socket".into(),
            socket.display().to_string(),
        ]);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(dir.path())
            .env("DROVER_TEST_MARKER", &marker)
            .env("DROVER_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start drover");
        let stdout = Captured::default();
        let stderr = Captured::default();
        stdout.spawn_reader(child.stdout.take().unwrap());
        stderr.spawn_reader(child.stderr.take().unwrap());
        let drover = Drover {
            dir,
            child: Some(child),
            stdout,
            stderr,
            socket,
            marker,
        };
        drover.wait_listening();
        drover
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn wait_listening(&self) {
        self.stderr.wait_for("the control socket to listen", |t| {
            t.contains("control socket") || t.contains("error")
        });
    }

    /// Runs a drover client command against this supervisor.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(drover_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run drover client")
    }

    /// `drover status --json`, parsed.
    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// Polls `status --json` until `pred` holds. Status has no change
    /// notification, so this is the one place tests poll, with a deadline.
    pub fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_status_within(what, DEADLINE, pred)
    }

    /// [`Drover::wait_status`] with a deadline of `limit`.
    pub fn wait_status_within(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status();
            if pred(&status) {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {limit:?} waiting for {what}; last status:\n{status:#}\nstderr:\n{}",
                    self.stderr.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20)); // poll interval of a condition wait
        }
    }

    /// The children of `group` as JSON values.
    pub fn children(status: &Value, group: &str) -> Vec<Value> {
        status["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == group)
            .unwrap_or_else(|| panic!("no group {group} in {status:#}"))["children"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until every child of `group` is in `state`; returns their PIDs.
    pub fn wait_group_state(&self, group: &str, state: &str) -> Vec<i64> {
        let status = self.wait_status(&format!("{group} all {state}"), |s| {
            let kids = Drover::children(s, group);
            !kids.is_empty() && kids.iter().all(|c| c["state"] == state)
        });
        Drover::children(&status, group)
            .iter()
            .filter_map(|c| c["pid"].as_i64())
            .collect()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY-free: libc::kill through nix.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::try_from(signal).unwrap(),
        )
        .unwrap();
    }

    /// Waits for drover to exit, within the deadline.
    pub fn wait_exit(&mut self) -> ExitStatus {
        // drover's stdout and stderr close when it exits (its children write
        // to pipes of their own), so their end is the event to wait for;
        // each wait is bounded by the deadline.
        self.stdout.wait_closed();
        self.stderr.wait_closed();
        self.child.as_mut().unwrap().wait().expect("reap drover")
    }

    /// Exit code, or 128+signal.
    pub fn code(status: ExitStatus) -> i32 {
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    }
}

impl Drop for Drover {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_marked(&self.marker, self.dir.path());
    }
}

/// SIGKILLs every process that carries `marker` in its environment or runs
/// inside `dir`, until none is left.
pub fn kill_marked(marker: &str, dir: &Path) {
    let needle = format!("DROVER_TEST_MARKER={marker}");
    for _ in 0..100 {
        let victims = marked_processes(&needle, dir);
        if victims.is_empty() {
            return;
        }
        for pid in victims {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::yield_now();
    }
}

/// Live (non-zombie) processes carrying the marker or running inside `dir`.
pub fn marked_processes(needle: &str, dir: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rfind(')')
                .and_then(|i| stat[i + 2..].chars().next())
                .is_some_and(|c| c == 'Z');
            if zombie || stat.is_empty() {
                return false;
            }
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let marked = env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes());
            let inside = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| cwd.starts_with(dir));
            marked || inside
        })
        .collect()
}

/// True while `/proc/PID` exists and is not a zombie.
pub fn alive(pid: i64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty()
        && stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].chars().next())
            .is_some_and(|c| c != 'Z')
}

/// Runs the C compiler with `args` (flags, the output, the sources); the
/// test fails with cc's own errors if it does not build.
pub fn cc<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) {
    let built = Command::new("cc")
        .args(args)
        .output()
        .expect("run cc (a C compiler, which Rust's linker needs anyway)");
    assert!(
        built.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&built.stderr)
    );
}

/// Waits until `cond` holds, polling (for OS state with no notification).
pub fn wait_until(what: &str, cond: impl Fn() -> bool) {
    wait_until_within(what, DEADLINE, cond);
}

/// [`wait_until`] with a deadline of `limit`.
pub fn wait_until_within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10)); // poll interval of a condition wait
    }
}

impl Drover {
    /// SIGKILLs drover alone and reaps it, as a crash of drover would end
    /// it: its children live on (they are in their own process groups).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts drover again in the same directory, with the same config
    /// file, socket and marker, after SIGKILLing it (if it still runs) and
    /// every process the last one left behind.
    pub fn restart(&mut self) {
        self.kill9();
        kill_marked(&self.marker, self.dir.path());
        let mut child = Command::new(drover_bin())
            .arg("run")
            .arg(self.dir.path().join("drover.toml"))
            .arg("--socket")
            .arg(&self.socket)
            .current_dir(self.dir.path())
            .env("DROVER_TEST_MARKER", &self.marker)
            .env("DROVER_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("restart drover");
        self.stdout = Captured::default();
        self.stderr = Captured::default();
        self.stdout.spawn_reader(child.stdout.take().unwrap());
        self.stderr.spawn_reader(child.stderr.take().unwrap());
        self.child = Some(child);
        self.wait_listening();
    }

    /// The marker every process of this test carries in its environment
    /// (`DROVER_TEST_MARKER`), for processes a test starts itself.
    pub fn marker(&self) -> &str {
        &self.marker
    }
}
