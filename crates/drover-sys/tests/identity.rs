//! A start's [`Identity`] — limits and user — on both ways `spawn_child`
//! starts a process, and the original open-file limit on all of them: the
//! shared fd table, `posix_spawn` (no identity), and fork + exec (the
//! fallback for an identity, which `posix_spawn` cannot apply).
//!
//! One process for the file: it lowers its own soft open-file limit, then
//! raises it as drover does, so that "the original" is a known number.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, OnceLock};

use drover_sys::{
    Credentials, FdPlan, Identity, SpawnMethod, SpawnPlan, raise_fd_limit, reserve_spawn_slots,
    spawn_child,
};

const SLOTS: usize = 8;

/// The soft open-file limit this process starts children with.
const ORIGINAL: u64 = 1000;

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises the tests; the first lowers the soft open-file limit to
/// [`ORIGINAL`], raises it again with `raise_fd_limit` and reserves the
/// slots. Returns the hard limit.
fn setup() -> (MutexGuard<'static, ()>, u64) {
    static HARD: OnceLock<u64> = OnceLock::new();
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let hard = *HARD.get_or_init(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit through a valid pointer.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(rc, 0);
        assert!(limit.rlim_max > ORIGINAL, "hard limit {}", limit.rlim_max);
        limit.rlim_cur = ORIGINAL;
        // SAFETY: setrlimit reads one rlimit through a valid pointer.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
        let (original, raised) = raise_fd_limit().unwrap();
        assert_eq!((original, raised), (ORIGINAL, limit.rlim_max));
        reserve_spawn_slots(SLOTS).unwrap();
        limit.rlim_max
    });
    (guard, hard)
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn devnull() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

/// Runs `sh -c script` with `extra` fds beyond stdio and `identity`;
/// returns how it was started and its output.
fn run(script: &str, extra: usize, identity: Identity) -> (SpawnMethod, String) {
    let null = devnull();
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let fillers: Vec<OwnedFd> = (0..extra).map(|_| devnull()).collect();
    let mut sources = vec![null.as_raw_fd(), out_w.as_raw_fd(), out_w.as_raw_fd()];
    sources.extend(fillers.iter().map(AsRawFd::as_raw_fd));
    let plan = SpawnPlan {
        program: cstr("/bin/sh"),
        argv: vec![cstr("sh"), cstr("-c"), cstr(script)],
        envp: vec![cstr("LC_ALL=C")],
        cwd: cstr("/"),
        fds: FdPlan { sources },
        identity,
    };
    let child = spawn_child(&plan).unwrap();
    drop(out_w);
    let mut text = String::new();
    std::fs::File::from(out_r)
        .read_to_string(&mut text)
        .unwrap();
    let mut status = 0;
    // SAFETY: waits for our own child through a valid pointer.
    let rc = unsafe { libc::waitpid(child.pid, &mut status, 0) };
    assert_eq!(rc, child.pid);
    assert_eq!(status, 0, "{text}");
    (
        child.method,
        text.split_whitespace().collect::<Vec<_>>().join(" "),
    )
}

const LIMITS: &str = "echo $(ulimit -Sn) $(ulimit -Hn) $(ulimit -Sc) $(ulimit -Hc)";

fn limited() -> Identity {
    Identity {
        rlimits: vec![
            (libc::RLIMIT_NOFILE as i32, 256),
            (libc::RLIMIT_CORE as i32, 0),
        ],
        user: None,
    }
}

#[test]
fn every_way_starts_children_with_the_original_open_file_limit() {
    let (_serial, hard) = setup();
    let core = {
        let (_, text) = run("echo $(ulimit -Sc) $(ulimit -Hc)", 0, Identity::default());
        text
    };
    let expected = format!("{ORIGINAL} {hard} {core}");
    let (method, text) = run(LIMITS, 0, Identity::default());
    assert_eq!((method, text), (SpawnMethod::SharedTable, expected.clone()));
    let (method, text) = run(LIMITS, SLOTS, Identity::default());
    assert_eq!((method, text), (SpawnMethod::PosixSpawn, expected));
}

#[test]
fn limits_apply_on_the_shared_table_and_on_the_fork_fallback() {
    let (_serial, _) = setup();
    let (method, text) = run(LIMITS, 0, limited());
    assert_eq!(
        (method, text.as_str()),
        (SpawnMethod::SharedTable, "256 256 0 0")
    );
    // Too many fds for the slots: posix_spawn cannot set limits.
    let (method, text) = run(LIMITS, SLOTS, limited());
    assert_eq!(
        (method, text.as_str()),
        (SpawnMethod::ForkExec, "256 256 0 0")
    );
    // Only a limit other than nofile: the original open-file limit stays.
    let core_only = Identity {
        rlimits: vec![(libc::RLIMIT_CORE as i32, 0)],
        user: None,
    };
    let (_, text) = run(LIMITS, SLOTS, core_only);
    assert!(text.starts_with(&format!("{ORIGINAL} ")), "{text}");
}

#[test]
fn a_user_switch_applies_on_both_ways() {
    let (_serial, _) = setup();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let user = Credentials {
        uid: 65534,
        gid: 65533,
        groups: vec![65533, 65532],
    };
    let ids = "echo $(id -u) $(id -g) $(id -G)";
    for extra in [0, SLOTS] {
        let identity = Identity {
            user: Some(user.clone()),
            ..limited()
        };
        let (method, text) = run(&format!("{ids}; {LIMITS}"), extra, identity);
        let expected = if extra == 0 {
            SpawnMethod::SharedTable
        } else {
            SpawnMethod::ForkExec
        };
        assert_eq!(method, expected);
        assert_eq!(text, "65534 65533 65533 65532 256 256 0 0");
    }
}

/// A step that fails in the child fails the start with its errno, and
/// leaves no process behind, on both ways.
#[test]
fn a_limit_the_kernel_refuses_fails_the_start() {
    let (_serial, _) = setup();
    for extra in [0, SLOTS] {
        let null = devnull();
        let fillers: Vec<OwnedFd> = (0..extra).map(|_| devnull()).collect();
        let mut sources = vec![null.as_raw_fd(); 3];
        sources.extend(fillers.iter().map(AsRawFd::as_raw_fd));
        let plan = SpawnPlan {
            program: cstr("/bin/true"),
            argv: vec![cstr("true")],
            envp: vec![],
            cwd: cstr("/"),
            fds: FdPlan { sources },
            // Above fs.nr_open: refused even for root.
            identity: Identity {
                rlimits: vec![(libc::RLIMIT_NOFILE as i32, libc::RLIM_INFINITY)],
                user: None,
            },
        };
        let error = spawn_child(&plan).expect_err("the kernel refuses the limit");
        assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}");
        let mut status = 0;
        // SAFETY: waitpid(-1, WNOHANG) through a valid pointer: no child
        // of this process may be left.
        let rc = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        assert_eq!(rc, -1, "a child was left behind");
    }
}
