//! A config whose read hangs — a `user` looked up through a directory
//! server that does not answer — holds up its reload, never supervision.
//!
//! The hang is real: drover runs with a preloaded library that replaces
//! `getpwnam_r` for one user name with a lookup that waits on a FIFO until
//! the test writes to it (then answers as the test's own user), the way an
//! NSS lookup waits for an LDAP or sssd server that is down.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;

use common::{Drover, TempDir, drover_bin, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, getuid};

/// The user name whose lookup hangs.
const SLOW_USER: &str = "drover-slow-lookup";

/// `getpwnam_r` for [`SLOW_USER`]: says it began (a file), waits until
/// the gate FIFO has a writer (opening a FIFO to read waits for one), then
/// looks up `SLOW_NSS_AS` instead. Once released, lookups go straight on.
const INTERPOSER: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*lookup)(const char *, struct passwd *, char *, size_t, struct passwd **);
static int released;

int getpwnam_r(const char *name, struct passwd *pwd, char *buf, size_t len, struct passwd **result) {
    lookup real = (lookup) dlsym(RTLD_NEXT, "getpwnam_r");
    const char *slow = getenv("SLOW_NSS_NAME");
    if (slow && strcmp(name, slow) == 0) {
        if (!__atomic_load_n(&released, __ATOMIC_SEQ_CST)) {
            int fd = open(getenv("SLOW_NSS_STARTED"), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
            if (fd >= 0) close(fd);
            fd = open(getenv("SLOW_NSS_GATE"), O_RDONLY | O_CLOEXEC);
            if (fd >= 0) close(fd);
            __atomic_store_n(&released, 1, __ATOMIC_SEQ_CST);
        }
        name = getenv("SLOW_NSS_AS");
    }
    return real(name, pwd, buf, len, result);
}
"#;

/// What the tests wait for when the hang begins; the preload works only
/// for a dynamically linked drover (a static `DROVER_TEST_BIN` ignores
/// `LD_PRELOAD`, and this wait then times out).
const LOOKUP_BEGINS: &str =
    "the user lookup to begin in the preloaded getpwnam_r (drover must be dynamically linked)";

const BEFORE: &str = "[supervisor]\nmetrics = \"127.0.0.1:0\"\n\n\
                      [group.worker]\ncommand = [\"sleep\", \"1000\"]\n";

/// The value of the unlabelled metric `name` on drover's metrics page.
fn metric(drover: &Drover, name: &str) -> f64 {
    use std::io::{Read, Write};
    let addr = drover
        .stderr
        .wait_between("the metrics address", "metrics at http://", "/metrics");
    let mut stream = std::net::TcpStream::connect(&addr).expect("connect to the metrics address");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        .parse()
        .unwrap()
}

/// drover running [`BEFORE`] with the hanging lookup preloaded; the gate
/// FIFO and the file that says a lookup began.
fn start(name: &str) -> (Drover, PathBuf, PathBuf) {
    let dir = TempDir::new(name);
    let source = dir.write("slow.c", INTERPOSER);
    let lib = dir.path().join("libslow.so");
    let arg = Path::new;
    common::cc([
        arg("-shared"),
        arg("-fPIC"),
        arg("-o"),
        &lib,
        &source,
        arg("-ldl"),
    ]);
    let gate = dir.path().join("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let began = dir.path().join("lookup-began");
    let me = User::from_uid(getuid())
        .unwrap()
        .expect("an entry for our uid");
    dir.write("drover.toml", BEFORE);
    let env = [
        ("LD_PRELOAD", lib.to_str().unwrap()),
        ("SLOW_NSS_NAME", SLOW_USER),
        ("SLOW_NSS_AS", me.name.as_str()),
        ("SLOW_NSS_GATE", gate.to_str().unwrap()),
        ("SLOW_NSS_STARTED", began.to_str().unwrap()),
    ];
    let drover = Drover::start_in_env(dir, &[], &env);
    drover.wait_group_state("worker", "running");
    (drover, gate, began)
}

/// Edits the config to add a group run as [`SLOW_USER`] and waits until
/// the reload's read hangs in its lookup.
fn edit_and_hang(drover: &Drover, began: &Path) {
    let after =
        format!("{BEFORE}[group.late]\ncommand = [\"sleep\", \"1000\"]\nuser = \"{SLOW_USER}\"\n");
    drover.dir.write("drover.toml", &after);
    wait_until(LOOKUP_BEGINS, || began.exists());
}

/// `drover reload`, run in a thread: its answer waits for the read.
fn reload_in_background(drover: &Drover) -> JoinHandle<Output> {
    let socket = drover.socket.clone();
    std::thread::spawn(move || {
        Command::new(drover_bin())
            .arg("reload")
            .arg("--socket")
            .arg(socket)
            .output()
            .expect("run drover reload")
    })
}

/// `drover reload --dry-run [PATH]`, run in a thread.
fn dry_run_in_background(drover: &Drover, path: Option<&Path>) -> JoinHandle<Output> {
    let socket = drover.socket.clone();
    let path = path.map(Path::to_path_buf);
    std::thread::spawn(move || {
        Command::new(drover_bin())
            .args(["reload", "--dry-run"])
            .args(path)
            .arg("--socket")
            .arg(socket)
            .output()
            .expect("run drover reload --dry-run")
    })
}

/// Lets the hanging lookups answer, and every later one go straight on
/// while the returned writer is kept open.
fn release(gate: &Path) -> std::fs::File {
    // Opening a FIFO for writing waits for a reader: a hanging lookup.
    std::fs::OpenOptions::new().write(true).open(gate).unwrap()
}

#[test]
fn a_hung_user_lookup_holds_up_the_reload_but_not_supervision() {
    let (drover, gate, began) = start("slow-lookup");
    edit_and_hang(&drover, &began);
    let reload = reload_in_background(&drover);

    // While the read hangs: a killed child is restarted, status answers,
    // and the running config is still the old one.
    let old = drover.wait_group_state("worker", "running")[0];
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    let status = drover.wait_status("the killed worker restarted", |s| {
        Drover::children(s, "worker")
            .iter()
            .any(|c| c["state"] == "running" && c["pid"].as_i64().is_some_and(|p| p != old))
    });
    assert!(
        status["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["name"] != "late"),
        "nothing of the new config is applied before it is read: {status:#}"
    );
    assert!(
        status["reload_reading_ms"].as_u64().is_some(),
        "status says a read is under way: {status:#}"
    );
    // The operator is told why the reload is not there yet.
    drover.stderr.wait_for("the slow read to be logged", |t| {
        t.contains("reading the config has taken 5s so far")
    });
    let table = drover.cli(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("reload: reading the config for "), "{table}");
    let reading = metric(&drover, "drover_reload_reading_seconds");
    assert!(reading >= 5.0, "{reading}");

    // Dry runs wait behind the hung read too, 8 at most; the others are
    // told at once that drover is busy.
    let dry_runs: Vec<_> = (0..12)
        .map(|_| dry_run_in_background(&drover, None))
        .collect();
    wait_until("4 dry runs answered at once", || {
        dry_runs.iter().filter(|t| t.is_finished()).count() >= 4
    });
    let (answered, waiting): (Vec<_>, Vec<_>) = dry_runs.into_iter().partition(|t| t.is_finished());
    assert_eq!(answered.len(), 4);
    for t in answered {
        let out = t.join().unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && text.contains("busy: 8 dry runs"),
            "{text}"
        );
    }

    let _released = release(&gate);
    for t in waiting {
        let out = t.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("would reload"),
            "{text}"
        );
    }
    let out = reload.join().unwrap();
    assert!(
        out.status.success(),
        "drover reload: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status = drover.wait_status("late applied", |s| {
        s["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "late")
    });
    assert!(status["reload_reading_ms"].is_null(), "{status:#}");
    assert_eq!(metric(&drover, "drover_reload_reading_seconds"), 0.0);
    drover.wait_group_state("late", "running");
}

#[test]
fn drover_stops_at_once_while_a_read_hangs() {
    let (mut drover, gate, began) = start("slow-lookup-stop");
    edit_and_hang(&drover, &began);
    let reload = reload_in_background(&drover);
    drover
        .stderr
        .wait_for("drover reload to wait for the read", |t| {
            t.contains("drover reload: the config is read again once the read under way ends")
        });
    drover.signal(libc::SIGTERM);
    let status = drover.wait_exit();
    assert_eq!(Drover::code(status), 0, "{}", drover.stderr.text());
    let out = reload.join().unwrap();
    let answer = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && answer.contains("shutting down"),
        "drover reload: {answer}"
    );
    // The hung lookup went with drover; nothing reads the gate now.
    drop(gate);
}

/// A save made while a read hangs is not lost: it makes one more read
/// once the hung one ends, so the last save is the config applied.
#[test]
fn a_save_during_a_hung_read_is_applied_after_it() {
    let (drover, gate, began) = start("slow-lookup-again");
    edit_and_hang(&drover, &began);
    let last = format!(
        "{BEFORE}[group.late]\ncommand = [\"sleep\", \"1000\"]\nuser = \"{SLOW_USER}\"\n\n\
         [group.third]\ncommand = [\"sleep\", \"1000\"]\n"
    );
    drover.dir.write("drover.toml", &last);
    drover
        .stderr
        .wait_for("the save to wait for the read", |t| {
            t.contains(
                "a config file changed: the config is read again once the read under way ends",
            )
        });
    let _released = release(&gate);
    drover.wait_status("the last save applied", |s| {
        s["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "third")
    });
    drover.wait_group_state("third", "running");
    drover.wait_group_state("late", "running");
}

/// A dry run of a config whose read hangs (`reload --dry-run PATH` may
/// name any file) holds up other dry runs only: a reload goes on.
#[test]
fn a_hung_dry_run_does_not_hold_up_a_reload() {
    let (drover, gate, began) = start("slow-dry-run");
    let other = drover.dir.write(
        "other.toml",
        &format!("{BEFORE}[group.late]\ncommand = [\"sleep\", \"1000\"]\nuser = \"{SLOW_USER}\"\n"),
    );
    let dry_run = dry_run_in_background(&drover, Some(&other));
    wait_until(LOOKUP_BEGINS, || began.exists());
    drover.dir.write(
        "drover.toml",
        &format!("{BEFORE}[group.second]\ncommand = [\"sleep\", \"1000\"]\n"),
    );
    drover.wait_status("the reload applied while the dry run hangs", |s| {
        s["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "second")
    });
    assert!(!dry_run.is_finished());
    let _released = release(&gate);
    let out = dry_run.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("would reload"),
        "{text}"
    );
}

/// Sixty-four `drover reload` clients waiting for a hung read hold every
/// ordinary connection slot: `drover status` is still answered (from the
/// slots kept for status and shutdown), and each of the 64 gets its answer
/// once the read ends.
#[test]
fn clients_waiting_for_a_hung_read_do_not_keep_status_out() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    let (drover, gate, began) = start("slow-lookup-clients");
    edit_and_hang(&drover, &began);
    let waiting: Vec<UnixStream> = (0..64)
        .map(|_| {
            let mut c = UnixStream::connect(&drover.socket).unwrap();
            c.write_all(b"{\"cmd\":\"reload\"}\n").unwrap();
            c
        })
        .collect();
    drover.stderr.wait_for("64 reloads waiting", |t| {
        t.matches("drover reload: the config is read again once the read under way ends")
            .count()
            >= 64
    });
    let status = drover.cli(&["status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let _released = release(&gate);
    for c in waiting {
        c.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":true"), "{line}");
    }
}
