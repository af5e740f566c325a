//! [`SiblingStarter`], the fork server's way to start a program: both of
//! its paths (sharing this process's memory until exec, and the copying
//! fallback) give the child the same start, make it a child of the
//! caller's parent, and report an exec failure as an error.
//!
//! The starter makes its children siblings of the caller, so the caller
//! here is a helper: this test binary run again (only `helper`, with
//! [`HELPER`] set), whose children the test itself then reaps.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::process::Command;

use drover_sys::forkexec::{ExecSetup, FdSetup, SiblingStarter};

/// Set (to `shared` or `copying`) when this binary runs as the helper.
const HELPER: &str = "DROVER_SIBLING_HELPER";

/// What the child checks: a start like every other drover child (cwd,
/// environment, no fd beyond stdio, own process group, nothing blocked or
/// ignored although the helper blocks and ignores signals). Exits 7 when
/// all holds, another code naming the first check that failed. The masks
/// are read by the shell itself (`read`, no child): a shell waiting for a
/// child (`grep`) may block every signal for a moment while it does, and
/// a child reading its status then would see that instead.
const CHECKS: &str = r#"
while read -r key value; do
  case "$key$value" in
    SigIgn:*[!0]*) exit 5 ;;
    SigBlk:*[!0]*) exit 6 ;;
  esac
done < /proc/$$/status
[ "$(pwd)" = /tmp ] || exit 2
[ "$X" = yes ] || exit 3
[ -e /proc/$$/fd/3 ] && exit 4
[ "$(cut -d' ' -f5 /proc/$$/stat)" = "$$" ] || exit 8
exit 7
"#;

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// `/dev/null` at a number above 10, for the child's stdio.
fn devnull_high() -> RawFd {
    let file = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: duplicates an open fd; the copy is leaked on purpose (the
    // helper exits right after).
    let fd = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::F_DUPFD_CLOEXEC,
            10,
        )
    };
    assert!(fd >= 10);
    fd
}

fn setup(program: &str) -> ExecSetup {
    let null = devnull_high();
    ExecSetup::new(
        cstr(program),
        vec![cstr("sh"), cstr("-c"), cstr(CHECKS)],
        vec![cstr("X=yes"), cstr("PATH=/usr/bin:/bin")],
        cstr("/tmp"),
        FdSetup {
            dups: vec![(null, 0), (null, 1), (null, 2)],
            keep: Vec::new(),
            close_from: Some(3),
        },
    )
}

/// The helper: starts two checking children and one that cannot exec,
/// printing `started PID` or `failed ERRNO` for each.
#[test]
fn helper() {
    let Ok(mode) = std::env::var(HELPER) else {
        return;
    };
    // Signals the children must not inherit: one ignored, one handled is
    // the Rust runtime's own (SIGSEGV), one blocked.
    // SAFETY: process-wide signal settings of this throwaway process.
    unsafe {
        libc::signal(libc::SIGUSR1, libc::SIG_IGN);
        let mut blocked: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut blocked);
        libc::sigaddset(&mut blocked, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut());
    }
    let mut starter = match mode.as_str() {
        "shared" => SiblingStarter::new(),
        _ => SiblingStarter::copying(),
    };
    assert_eq!(starter.shares_memory(), mode == "shared");
    // An fd 3 that the child must not get.
    let _three = std::fs::File::open("/dev/null").unwrap();
    for program in ["/bin/sh", "/bin/sh", "/nonexistent/program"] {
        match starter.start(&setup(program)) {
            Ok(pid) => println!("started {pid}"),
            Err(e) => println!("failed {}", e.raw_os_error().unwrap_or(-1)),
        }
    }
}

/// Waits for `pid` (or any child, -1): its PID and exit code, or None when
/// there is no child left.
fn reap(pid: i32) -> Option<(i32, i32)> {
    let mut status = 0;
    loop {
        // SAFETY: waits through a valid pointer to a local.
        let got = unsafe { libc::waitpid(pid, &mut status, 0) };
        if got > 0 {
            assert!(libc::WIFEXITED(status), "{got}: status {status:#x}");
            return Some((got, libc::WEXITSTATUS(status)));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return None,
            _ => panic!("waitpid: {e}"),
        }
    }
}

#[test]
fn both_paths_start_the_same_child_as_a_sibling_and_report_exec_failures() {
    for mode in ["shared", "copying"] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "helper", "--nocapture", "--test-threads=1"])
            .env(HELPER, mode)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let started: Vec<i32> = text
            .lines()
            // The harness may print "test helper ... " before the first.
            .filter_map(|l| l.split("started ").nth(1)?.trim().parse().ok())
            .collect();
        assert_eq!(started.len(), 2, "{mode}: {text}");
        assert!(
            text.contains(&format!("failed {}", libc::ENOENT)),
            "{mode}: {text}"
        );
        // The helper's children are ours (the caller's parent's).
        for pid in started {
            assert_eq!(reap(pid), Some((pid, 7)), "{mode}: pid {pid}");
        }
        // The one that could not exec exited 127, ours too; nothing else.
        let mut rest = Vec::new();
        while let Some((_, code)) = reap(-1) {
            rest.push(code);
        }
        assert_eq!(rest, [127], "{mode}");
    }
}
