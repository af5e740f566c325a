//! `note_signal_dispositions`: once it has looked, a child started through
//! the shared fd table resets only the signals that were not at their
//! default, and still starts with every disposition at its default.
//!
//! A file of its own (its own process): the snapshot is process-wide, and
//! the tests of `spawn.rs` change dispositions without taking a new one.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};

use drover_sys::{
    FdPlan, SpawnMethod, SpawnPlan, note_signal_dispositions, reserve_spawn_slots, spawn_child,
};

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// A hexadecimal field of /proc/*/status.
fn field(status: &str, name: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

fn bit(signal: libc::c_int) -> u64 {
    1 << (signal - 1)
}

/// `cat /proc/self/status` started with `spawn_child`: its output.
fn child_status() -> String {
    let cat = ["/usr/bin/cat", "/bin/cat"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("cat in /usr/bin or /bin");
    let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let plan = SpawnPlan {
        program: cstr(cat),
        argv: vec![cstr(cat), cstr("/proc/self/status")],
        envp: vec![cstr("LC_ALL=C")],
        cwd: cstr("/"),
        fds: FdPlan {
            sources: vec![null.as_raw_fd(), out_w.as_raw_fd(), null.as_raw_fd()],
        },
        identity: Default::default(),
    };
    let child = spawn_child(&plan).expect("spawn");
    assert_eq!(child.method, SpawnMethod::SharedTable);
    drop(out_w);
    // The child exits once it has written its status: read to the end.
    let mut text = String::new();
    std::fs::File::from(out_r)
        .read_to_string(&mut text)
        .unwrap();
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child through a valid pointer.
        let rc = unsafe { libc::waitpid(child.pid, &mut status, 0) };
        if rc == child.pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::EINTR), "waitpid: {e}");
    }
    text
}

#[test]
fn after_the_snapshot_only_changed_signals_are_reset_and_the_child_gets_defaults() {
    reserve_spawn_slots(8).expect("reserving the slots");
    extern "C" fn handler(_: libc::c_int) {}
    // SAFETY: this test process's dispositions of SIGWINCH (a handler that
    // does nothing) and SIGUSR2 (ignored); nothing else here uses them.
    unsafe {
        libc::signal(libc::SIGWINCH, handler as *const () as libc::sighandler_t);
        libc::signal(libc::SIGUSR2, libc::SIG_IGN);
    }
    let mask = note_signal_dispositions();
    for signal in [
        libc::SIGWINCH,
        libc::SIGUSR2,
        libc::SIGPIPE,
        libc::SIGIO,
        libc::SIGXFSZ,
        32,
        33,
    ] {
        assert_ne!(mask & bit(signal), 0, "signal {signal} in {mask:#x}");
    }
    // Left at their default by the test harness: not reset.
    for signal in [libc::SIGTERM, libc::SIGALRM, libc::SIGCHLD, 40] {
        assert_eq!(mask & bit(signal), 0, "signal {signal} in {mask:#x}");
    }
    assert!(mask.count_ones() < 20, "{mask:#x}");

    let text = child_status();
    for name in ["SigBlk", "SigIgn", "SigCgt"] {
        assert_eq!(field(&text, name), 0, "{name} in\n{text}");
    }

    // SIGIO and SIGXFSZ ignored after the snapshot (as a config lease and
    // drover's run do) are reset all the same.
    // SAFETY: SIG_IGN installs no handler; nothing else here uses them.
    unsafe {
        libc::signal(libc::SIGIO, libc::SIG_IGN);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let text = child_status();
    assert_eq!(field(&text, "SigIgn"), 0, "SigIgn in\n{text}");
}
