//! `spawn` through the shared fd table and its scratch slots: what the child
//! gets, what the parent keeps, and the fallback.
//!
//! The tests take one lock each, so that no other test's child exists when
//! one checks that no zombie was left; each reaps every child it starts.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use drover_sys::{
    FdPlan, SpawnMethod, SpawnPlan, Spawned, reserve_spawn_slots, spawn_child, spawn_slots,
};

/// Slots reserved by every test (the first reserves them).
const SLOTS: usize = 8;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let slots = reserve_spawn_slots(SLOTS).expect("reserving the slots");
    assert_eq!(slots.len(), SLOTS);
    guard
}

fn cstr(s: impl AsRef<[u8]>) -> CString {
    CString::new(s.as_ref()).unwrap()
}

/// `name` in /usr/bin or /bin.
fn program(name: &str) -> PathBuf {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no {name} in /usr/bin or /bin"))
}

fn plan(program: &Path, args: &[&str], cwd: &Path, sources: Vec<RawFd>) -> SpawnPlan {
    let mut argv = vec![cstr(program.as_os_str().as_bytes())];
    argv.extend(args.iter().map(cstr));
    SpawnPlan {
        program: cstr(program.as_os_str().as_bytes()),
        argv,
        envp: vec![cstr("LC_ALL=C")],
        cwd: cstr(cwd.as_os_str().as_bytes()),
        fds: FdPlan { sources },
        identity: Default::default(),
    }
}

fn devnull() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

/// (st_dev, st_ino) of an fd.
fn identity(fd: RawFd) -> (u64, u64) {
    // SAFETY: all-zero is a valid stat; fstat writes it through a valid
    // pointer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `fd` is a plain integer.
    let rc = unsafe { libc::fstat(fd, &mut st) };
    assert_eq!(rc, 0, "fstat({fd}): {}", std::io::Error::last_os_error());
    (st.st_dev, st.st_ino)
}

/// Waits for the child and returns its raw wait status.
fn reap(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child through a valid pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    status
}

/// How long a child may take to write its output and exit.
const DEADLINE: Duration = Duration::from_secs(30);

/// Reads `read_end` to its end (every writer closed it), then reaps the
/// child. Past [`DEADLINE`] the child is killed and the test fails (a slot
/// still holding a write end would keep the end from coming).
fn output_of(child: Spawned, read_end: OwnedFd) -> String {
    let deadline = Instant::now() + DEADLINE;
    let mut file = std::fs::File::from(read_end);
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, borrowed for the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
        if ready == 0 {
            // SAFETY: our own child, not reaped yet.
            unsafe { libc::kill(child.pid, libc::SIGKILL) };
            reap(child.pid);
            panic!(
                "no end of output within {DEADLINE:?}; so far: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the child's output: {e}"),
        }
    }
    let text = String::from_utf8(bytes).unwrap();
    let status = reap(child.pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}: {text}"
    );
    text
}

/// No child of this process is left, exited or not.
fn assert_no_children() {
    // SAFETY: all-zero is a valid siginfo_t; waitid writes it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a local; WNOWAIT leaves anything found.
    let rc = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT | libc::__WALL,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert!(
        rc < 0 && errno == Some(libc::ECHILD),
        "a child is left (rc {rc}, errno {errno:?})"
    );
}

/// `ls -l` lines `... NAME -> TARGET` as (NAME, TARGET), without the fd
/// `ls` itself reads the directory through.
fn links(listing: &str) -> Vec<(String, String)> {
    listing
        .lines()
        .filter_map(|line| {
            let (left, target) = line.split_once(" -> ")?;
            let name = left.rsplit(' ').next()?;
            Some((name.to_string(), target.to_string()))
        })
        .filter(|(_, target)| !(target.starts_with("/proc/") && target.ends_with("/fd")))
        .collect()
}

fn pipe_name(fd: &OwnedFd) -> String {
    format!("pipe:[{}]", identity(fd.as_raw_fd()).1)
}

#[test]
fn the_child_has_exactly_the_planned_fds_and_cwd() {
    let _serial = serial();
    let dir = tempdir();
    let null = devnull();
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let (sock, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let sources = vec![
        null.as_raw_fd(),
        out_w.as_raw_fd(),
        err_w.as_raw_fd(),
        theirs.as_raw_fd(),
    ];
    let p = plan(
        &program("ls"),
        &["-l", "/proc/self/cwd", "/proc/self/fd/"],
        &dir,
        sources,
    );
    let child = spawn_child(&p).unwrap();
    assert_eq!(child.method, SpawnMethod::SharedTable);
    let expected_out = pipe_name(&out_w);
    let expected_err = pipe_name(&err_w);
    let socket = format!("socket:[{}]", identity(theirs.as_raw_fd()).1);
    drop((out_w, err_w, theirs, err_r));
    let listing = output_of(child, out_r);
    let found = links(&listing);
    let expected = [
        (
            "/proc/self/cwd".to_string(),
            dir.to_str().unwrap().to_string(),
        ),
        ("0".to_string(), "/dev/null".to_string()),
        ("1".to_string(), expected_out),
        ("2".to_string(), expected_err),
        ("3".to_string(), socket),
    ];
    assert_eq!(found, expected, "ls -l said:\n{listing}");
    drop(sock);
    std::fs::remove_dir(&dir).unwrap();
    assert_no_children();
}

#[test]
fn signals_are_default_unblocked_and_the_child_leads_its_group() {
    let _serial = serial();
    extern "C" fn handler(_: libc::c_int) {}
    // SAFETY: sets this process's disposition of SIGWINCH to a handler that
    // does nothing and of SIGUSR2 to ignored (no other test uses them);
    // blocks SIGUSR1 in this thread, which the test restores.
    let previous_mask = unsafe {
        libc::signal(libc::SIGWINCH, handler as *const () as libc::sighandler_t);
        libc::signal(libc::SIGUSR2, libc::SIG_IGN);
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    };
    let mine = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    assert_ne!(field(&mine, "SigIgn"), 0, "the test's own state: {mine}");
    assert_ne!(field(&mine, "SigBlk"), 0, "the test's own state: {mine}");

    let null = devnull();
    let (out_r, out_w) = pipe();
    let sources = vec![null.as_raw_fd(), out_w.as_raw_fd(), null.as_raw_fd()];
    let p = plan(
        &program("cat"),
        &["/proc/self/stat", "/proc/self/status"],
        Path::new("/"),
        sources,
    );
    let child = spawn_child(&p);
    // SAFETY: restores this thread's mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous_mask, std::ptr::null_mut()) };
    let child = child.unwrap();
    assert_eq!(child.method, SpawnMethod::SharedTable);
    let pid = child.pid;
    drop(out_w);
    let text = output_of(child, out_r);
    // stat: "pid (comm) state ppid pgrp ..."
    let after_comm = text.split_once(") ").unwrap().1;
    let pgrp: i32 = after_comm.split(' ').nth(2).unwrap().parse().unwrap();
    assert_eq!(pgrp, pid, "{text}");
    for name in ["SigBlk", "SigIgn", "SigCgt"] {
        assert_eq!(field(&text, name), 0, "{name} in\n{text}");
    }
    assert_no_children();
}

/// A hexadecimal field of /proc/*/status.
fn field(status: &str, name: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

#[test]
fn exec_failures_are_errors_and_leave_no_process() {
    let _serial = serial();
    let dir = tempdir();
    let not_executable = dir.join("data");
    std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    let null = devnull();
    let fds = || vec![null.as_raw_fd(), null.as_raw_fd(), null.as_raw_fd()];
    let cases = [
        (
            plan(&dir.join("missing"), &[], Path::new("/"), fds()),
            libc::ENOENT,
        ),
        (
            plan(&not_executable, &[], Path::new("/"), fds()),
            libc::EACCES,
        ),
        (
            plan(&program("true"), &[], &dir.join("gone"), fds()),
            libc::ENOENT,
        ),
    ];
    for (p, errno) in cases {
        let err = spawn_child(&p).expect_err("no process may run");
        assert_eq!(err.raw_os_error(), Some(errno), "{:?}: {err}", p.program);
        assert_no_children();
    }
    // And the slots still work afterwards.
    let child = spawn_child(&plan(&program("true"), &[], Path::new("/"), fds())).unwrap();
    assert_eq!(child.method, SpawnMethod::SharedTable);
    assert_eq!(reap(child.pid), 0);
    std::fs::remove_file(&not_executable).unwrap();
    std::fs::remove_dir(&dir).unwrap();
    assert_no_children();
}

#[test]
fn the_parent_keeps_its_stdio_and_gets_its_slots_back() {
    let _serial = serial();
    let slots = spawn_slots().unwrap();
    let watched: Vec<RawFd> = (0..3).chain(slots.clone()).collect();
    let before: Vec<_> = watched.iter().map(|&fd| identity(fd)).collect();
    let null = devnull();
    let (out_r, out_w) = pipe();
    let (_, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let sources = vec![
        null.as_raw_fd(),
        out_w.as_raw_fd(),
        out_w.as_raw_fd(),
        theirs.as_raw_fd(),
    ];
    let child = spawn_child(&plan(&program("true"), &[], Path::new("/"), sources)).unwrap();
    assert_eq!(child.method, SpawnMethod::SharedTable);
    let after: Vec<_> = watched.iter().map(|&fd| identity(fd)).collect();
    assert_eq!(before, after, "fds {watched:?}");
    for fd in slots {
        // SAFETY: F_GETFD reads a flag of a plain integer.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "slot {fd}");
    }
    // The only write end of the pipe left is ours: the slots hold none.
    drop(out_w);
    assert_eq!(output_of(child, out_r), "");
    assert_no_children();
}

#[test]
fn the_pidfd_refers_to_the_child() {
    let _serial = serial();
    let null = devnull();
    let (out_r, out_w) = pipe();
    let p = plan(
        &program("cat"),
        &[],
        Path::new("/"),
        vec![null.as_raw_fd(), out_w.as_raw_fd(), null.as_raw_fd()],
    );
    let child = spawn_child(&p).unwrap();
    let pidfd = child.pidfd.as_ref().expect("a pidfd");
    let fdinfo =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).unwrap();
    assert!(
        fdinfo.lines().any(|l| l == format!("Pid:\t{}", child.pid)),
        "{fdinfo}"
    );
    drop(out_w);
    output_of(child, out_r);
    assert_no_children();
}

#[test]
fn more_fds_than_slots_fall_back_to_posix_spawn() {
    let _serial = serial();
    let null = devnull();
    let (out_r, out_w) = pipe();
    let extra: Vec<OwnedFd> = (0..SLOTS).map(|_| devnull()).collect();
    let mut sources = vec![null.as_raw_fd(), out_w.as_raw_fd(), null.as_raw_fd()];
    sources.extend(extra.iter().map(AsRawFd::as_raw_fd));
    let count = sources.len();
    let p = plan(
        &program("ls"),
        &["-l", "/proc/self/fd/"],
        Path::new("/"),
        sources,
    );
    let child = spawn_child(&p).unwrap();
    assert_eq!(child.method, SpawnMethod::PosixSpawn);
    let out = pipe_name(&out_w);
    drop(out_w);
    let listing = output_of(child, out_r);
    let mut found = links(&listing);
    found.sort_by_key(|(name, _)| name.parse::<usize>().unwrap());
    let names: Vec<String> = found.iter().map(|(n, _)| n.clone()).collect();
    let expected: Vec<String> = (0..count).map(|i| i.to_string()).collect();
    assert_eq!(names, expected, "{listing}");
    assert_eq!(found[1].1, out);
    assert!(
        found
            .iter()
            .filter(|(n, _)| n != "1")
            .all(|(_, t)| t == "/dev/null"),
        "{listing}"
    );
    assert_no_children();
}

/// A fresh directory under the system's temporary directory.
fn tempdir() -> PathBuf {
    let base = std::env::temp_dir();
    for n in 0.. {
        let dir = base.join(format!("drover-sys-spawn-{}-{n}", std::process::id()));
        if std::fs::create_dir(&dir).is_ok() {
            return dir.canonicalize().unwrap();
        }
    }
    unreachable!()
}

/// A `LISTEN_PID=` entry is filled with the child's own PID, through the
/// shared table and through the fork + exec fallback (taken instead of
/// `posix_spawn`, which cannot fill it).
#[test]
fn the_listen_pid_entry_gets_the_childs_own_pid_on_both_paths() {
    let _serial = serial();
    for extra_fds in [0, SLOTS] {
        let null = devnull();
        let (out_r, out_w) = pipe();
        let extra: Vec<OwnedFd> = (0..extra_fds).map(|_| devnull()).collect();
        let mut sources = vec![null.as_raw_fd(), out_w.as_raw_fd(), null.as_raw_fd()];
        sources.extend(extra.iter().map(AsRawFd::as_raw_fd));
        let mut p = plan(
            &program("sh"),
            &["-c", "echo \"$LISTEN_PID $$ $LISTEN_FDS\""],
            Path::new("/"),
            sources,
        );
        p.envp.push(cstr(drover_sys::PID_SLOT));
        p.envp.push(cstr("LISTEN_FDS=1"));
        let child = spawn_child(&p).unwrap();
        let expected = if extra_fds == 0 {
            SpawnMethod::SharedTable
        } else {
            SpawnMethod::ForkExec
        };
        assert_eq!(child.method, expected);
        let pid = child.pid;
        drop(out_w);
        let out = output_of(child, out_r);
        assert_eq!(out.trim(), format!("{pid} {pid} 1"), "{expected:?}");
        assert_no_children();
    }
}
