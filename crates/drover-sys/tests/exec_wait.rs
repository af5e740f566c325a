//! A start does not wait for an `execve` that hangs (a program on a mount
//! that does not answer): after `EXEC_WAIT` it returns the PID, and an
//! error of that `execve` is told later by `late_exec_failure`.
//!
//! The hang is made without touching the code under test: the spawning
//! thread installs a seccomp filter that hands every `execve` of its
//! children to this test (`SECCOMP_RET_USER_NOTIF`), which holds it until
//! it answers, as a hung NFS server holds an `open`.
#![cfg(target_arch = "x86_64")]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use drover_sys::{
    EXEC_WAIT, FdPlan, SpawnPlan, execs_pending, late_exec_failure, reserve_spawn_slots,
    spawn_child,
};

/// Long enough for any loaded machine; a start that waits for the held
/// `execve` never answers within it.
const DEADLINE: Duration = Duration::from_secs(30);

/// `struct seccomp_notif`.
#[repr(C)]
#[derive(Default, Debug)]
struct Notif {
    id: u64,
    pid: u32,
    flags: u32,
    nr: i32,
    arch: u32,
    ip: u64,
    args: [u64; 6],
}

/// `struct seccomp_notif_resp`.
#[repr(C)]
struct Resp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

/// `_IOWR('!', 0, struct seccomp_notif)` and `_IOWR('!', 1, struct
/// seccomp_notif_resp)`.
const NOTIF_RECV: libc::Ioctl = 0xC050_2100_u32 as libc::Ioctl;
const NOTIF_SEND: libc::Ioctl = 0xC018_2101_u32 as libc::Ioctl;
const NOTIF_FLAG_CONTINUE: u32 = 1;

/// Installs, on the calling thread (and so on every child it starts), a
/// filter that hands `execve` to the returned listener.
fn hold_execs() -> OwnedFd {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    let ld = |k: u32| libc::sock_filter {
        code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ret = |k: u32| libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut filter = [
        ld(4), // seccomp_data.arch
        jeq(AUDIT_ARCH_X86_64, 0, 3),
        ld(0), // seccomp_data.nr
        jeq(libc::SYS_execve as u32, 0, 1),
        ret(libc::SECCOMP_RET_USER_NOTIF),
        ret(libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: plain prctl and seccomp calls with a filter that lives for
    // the call; they change only this thread.
    let fd = unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        )
    };
    assert!(
        fd >= 0,
        "seccomp listener: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// The next held `execve`, waiting at most [`DEADLINE`].
fn next_exec(listener: &OwnedFd) -> Notif {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, DEADLINE.as_millis() as libc::c_int) };
    assert_eq!(n, 1, "no execve to hold within {DEADLINE:?}");
    let mut notif = Notif::default();
    // SAFETY: the ioctl writes one struct seccomp_notif into a zeroed one.
    let rc = unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_RECV, &mut notif) };
    assert_eq!(rc, 0, "NOTIF_RECV: {}", std::io::Error::last_os_error());
    assert_eq!(notif.nr, libc::SYS_execve as i32);
    notif
}

/// Lets the held `execve` go on (`errno` 0) or fail with `errno`.
fn answer(listener: &OwnedFd, notif: &Notif, errno: i32) {
    let resp = Resp {
        id: notif.id,
        val: 0,
        error: -errno,
        flags: if errno == 0 { NOTIF_FLAG_CONTINUE } else { 0 },
    };
    // SAFETY: the ioctl reads one struct seccomp_notif_resp.
    let rc = unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_SEND, &resp) };
    assert_eq!(rc, 0, "NOTIF_SEND: {}", std::io::Error::last_os_error());
}

fn cstr(s: impl AsRef<[u8]>) -> CString {
    CString::new(s.as_ref()).unwrap()
}

fn program(name: &str) -> PathBuf {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no {name} in /usr/bin or /bin"))
}

/// Waits for `pid` and returns its exit code.
fn exit_code(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child through a valid pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    libc::WEXITSTATUS(status)
}

#[test]
fn a_start_does_not_wait_for_a_held_execve_and_its_late_failure_is_told() {
    reserve_spawn_slots(8).expect("reserving the slots");
    let devnull: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let true_ = program("true");
    let plan = SpawnPlan {
        program: cstr(true_.as_os_str().as_bytes()),
        argv: vec![cstr("true")],
        envp: vec![cstr("LC_ALL=C")],
        cwd: cstr("/"),
        fds: FdPlan {
            sources: vec![devnull.as_raw_fd(); 3],
        },
        identity: Default::default(),
    };
    let (listener_tx, listener_rx) = mpsc::channel();
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let spawner = std::thread::spawn(move || {
        listener_tx.send(hold_execs()).unwrap();
        for _ in 0..2 {
            let spawned = spawn_child(&plan).expect("spawn");
            started_tx
                .send((spawned.pid, spawned.exec_pending))
                .unwrap();
            if go_rx.recv().is_err() {
                return;
            }
        }
    });
    let listener = listener_rx.recv_timeout(DEADLINE).expect("the listener");

    for (round, errno) in [(1, 0), (2, libc::EACCES)] {
        let held = next_exec(&listener);
        // The start returns while its child is held in execve.
        let started = started_rx.recv_timeout(DEADLINE);
        let Ok((pid, pending)) = started else {
            answer(&listener, &held, 0);
            panic!("round {round}: the start waited for the held execve ({EXEC_WAIT:?} allowed)");
        };
        assert_eq!(pid as u32, held.pid, "round {round}");
        assert!(
            pending,
            "round {round}: a held start must say its execve is pending"
        );
        assert_eq!(execs_pending(), 1, "round {round}");
        answer(&listener, &held, errno);
        let code = exit_code(pid);
        assert_eq!(execs_pending(), 0, "round {round}");
        let late = late_exec_failure(pid);
        if errno == 0 {
            assert_eq!(code, 0, "round {round}: true ran");
            assert!(late.is_none(), "round {round}: {late:?}");
        } else {
            assert_eq!(
                code, 127,
                "round {round}: the child reports a failed execve"
            );
            assert_eq!(late.map(|e| e.raw_os_error()), Some(Some(errno)));
            assert!(late_exec_failure(pid).is_none(), "told once");
        }
        go_tx.send(()).unwrap();
    }
    spawner.join().unwrap();
}
