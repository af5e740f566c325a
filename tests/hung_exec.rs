//! A child whose `execve` hangs — its program on an NFS or autofs mount
//! that does not answer — holds up that child only, never supervision.
//!
//! The hang is real and drover is unchanged: drover runs behind a small
//! wrapper that installs a seccomp filter handing every `execve` of drover's
//! children to this test (`SECCOMP_RET_USER_NOTIF`), which holds the one
//! of a program named `hold-me` until it answers, as a hung NFS server
//! holds the `open` of an `execve`.
#![cfg(target_arch = "x86_64")]

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::{Drover, TempDir};

/// The program name whose `execve` is held (once).
const HELD: &str = "hold-me";

/// Generous, for a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// Installs the filter, sends its listener to the test over the Unix
/// socket `argv[1]`, and runs `argv[2..]` (drover), whose own `execve` is
/// the first one handed over.
const WRAPPER: &str = r#"
#define _GNU_SOURCE
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_execve, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) { perror("prctl"); return 1; }
    int listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                           SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (listener < 0) { perror("seccomp"); return 1; }
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    if (connect(s, (struct sockaddr *) &a, sizeof a) != 0) { perror("connect"); return 1; }
    char byte = 'l';
    struct iovec iov = { &byte, 1 };
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } c;
    memset(&c, 0, sizeof c);
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
                        .msg_control = c.buf, .msg_controllen = sizeof c.buf };
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &listener, sizeof(int));
    if (sendmsg(s, &m, 0) != 1) { perror("sendmsg"); return 1; }
    close(s);
    close(listener);
    execv(argv[2], argv + 2);
    perror("execv");
    return 127;
}
"#;

/// `struct seccomp_notif`.
#[repr(C)]
#[derive(Default)]
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

const NOTIF_RECV: libc::Ioctl = 0xC050_2100_u32 as libc::Ioctl;
const NOTIF_SEND: libc::Ioctl = 0xC018_2101_u32 as libc::Ioctl;
const NOTIF_FLAG_CONTINUE: u32 = 1;

/// Lets a held `execve` go on (`errno` 0) or fail with `errno`. An error
/// (the process is gone) is ignored.
fn answer(listener: &OwnedFd, id: u64, errno: i32) {
    let resp = Resp {
        id,
        val: 0,
        error: -errno,
        flags: if errno == 0 { NOTIF_FLAG_CONTINUE } else { 0 },
    };
    // SAFETY: the ioctl reads one struct seccomp_notif_resp.
    unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_SEND, &resp) };
}

/// The path an `execve` names, read from the caller's memory.
fn exec_path(pid: u32, addr: u64) -> String {
    let mut buf = [0u8; 4096];
    let Ok(mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else {
        return String::new();
    };
    let n = mem.read_at(&mut buf, addr).unwrap_or(0);
    let end = buf[..n].iter().position(|b| *b == 0).unwrap_or(n);
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The listener's handler: every `execve` goes on at once, except the
/// first of [`HELD`], which waits for a word on `release` (the errno to
/// fail it with, 0 to let it go on) and is announced on `held`.
struct Handler {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    release: mpsc::Sender<i32>,
    held: mpsc::Receiver<u32>,
}

impl Handler {
    fn start(socket: &Path) -> Handler {
        let accept = UnixListener::bind(socket).expect("bind the listener's socket");
        let stop = Arc::new(AtomicBool::new(false));
        let (release, release_rx) = mpsc::channel::<i32>();
        let (held_tx, held) = mpsc::channel();
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (stream, _) = accept.accept().expect("the wrapper connects");
            let listener = receive_fd(stream.as_raw_fd());
            let mut waiting: Option<u64> = None;
            let mut done = false;
            while !stopped.load(Ordering::Relaxed) {
                if let (Some(id), Ok(errno)) = (waiting, release_rx.try_recv()) {
                    answer(&listener, id, errno);
                    waiting = None;
                }
                let mut pfd = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; a short timeout so that the
                // release and the stop flag are seen.
                if unsafe { libc::poll(&mut pfd, 1, 20) } != 1 || pfd.revents & libc::POLLIN == 0 {
                    if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                        break; // every filtered process is gone
                    }
                    continue;
                }
                let mut notif = Notif::default();
                // SAFETY: the ioctl writes one struct seccomp_notif.
                if unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_RECV, &mut notif) } != 0 {
                    continue; // the caller died meanwhile
                }
                let path = exec_path(notif.pid, notif.args[0]);
                if !done && path.ends_with(HELD) {
                    done = true;
                    waiting = Some(notif.id);
                    let _ = held_tx.send(notif.pid);
                } else {
                    answer(&listener, notif.id, 0);
                }
            }
            // Closing the listener fails whatever is still held (ENOSYS).
        });
        Handler {
            thread: Some(thread),
            stop,
            release,
            held,
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.release.send(0);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One fd received with SCM_RIGHTS on the stream `fd`.
fn receive_fd(fd: RawFd) -> OwnedFd {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::empty())
        .expect("receive the listener");
    for cmsg in msg.cmsgs().expect("control messages") {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: a new fd received for us, owned by nothing else.
            return unsafe { OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd from the wrapper");
}

fn program(name: &str) -> PathBuf {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no {name} in /usr/bin or /bin"))
}

#[test]
fn a_child_held_in_its_execve_does_not_hold_up_supervision() {
    let dir = TempDir::new("hung-exec");
    let source = dir.write("hold.c", WRAPPER);
    let wrapper = dir.path().join("hold");
    common::cc([Path::new("-o"), &wrapper, &source]);
    let held_program = dir.path().join(HELD);
    std::os::unix::fs::symlink(program("sleep"), &held_program).unwrap();
    dir.write(
        "drover.toml",
        &format!(
            "[group.web]\ncommand = [\"sleep\", \"1000\"]\n\n\
             [group.stuck]\ncommand = [\"{}\", \"1000\"]\n",
            held_program.display()
        ),
    );
    let socket = dir.path().join("listener.sock");
    let handler = Handler::start(&socket);
    let drover = Drover::start_in(dir, &[wrapper.to_str().unwrap(), socket.to_str().unwrap()]);

    let held = handler
        .held
        .recv_timeout(DEADLINE)
        .expect("the execve of hold-me to be held");
    drover
        .stderr
        .wait_for("the warning about the held execve", |t| {
            t.lines()
                .any(|l| l.contains("still in its execve") && l.contains("stuck"))
        });

    // Supervision goes on while it is held: status answers, and a killed
    // child is restarted.
    let web = drover.wait_group_state("web", "running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(web[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drover.wait_status("web restarted", |s| {
        Drover::children(s, "web")
            .iter()
            .any(|c| c["state"] == "running" && c["pid"].as_i64().is_some_and(|p| p != web[0]))
    });
    assert!(
        common::alive(i64::from(held)),
        "the held child is still there"
    );

    // Its execve fails late: said with the group, then it is restarted
    // (that execve goes through at once) and runs.
    handler.release.send(libc::EACCES).unwrap();
    drover
        .stderr
        .wait_for("the late failure, with its group", |t| {
            t.lines().any(|l| {
                l.contains("its execve failed after the start stopped waiting")
                    && l.contains("stuck")
                    && l.contains("Permission denied")
            })
        });
    drover.wait_group_state("stuck", "running");
    drop(drover);
    drop(handler);
}
