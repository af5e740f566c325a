//! Container-entrypoint duties: zombie reaping as PID 1 and as a
//! plain subreaper, orphans stopped at shutdown, signal forwarding, and
//! children that get a clean signal state even when drover did not.

mod common;

use common::{Drover, TempDir, alive, wait_until};

/// Host PID of drover: itself, or the child of the `unshare` wrapper.
fn drover_host_pid(d: &Drover, wrapped: bool) -> i32 {
    if !wrapped {
        return d.pid();
    }
    let path = format!("/proc/{0}/task/{0}/children", d.pid());
    let child = || -> Option<i32> {
        std::fs::read_to_string(&path)
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    wait_until("unshare to fork drover", || child().is_some());
    child().unwrap()
}

/// Children of `parent` as (pid, state letter, command name).
fn children_of(parent: i32) -> Vec<(i32, char, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let comm = stat[open + 1..close].to_owned();
            let mut rest = stat[close + 2..].split(' ');
            let state = rest.next()?.chars().next()?;
            let ppid: i32 = rest.next()?.parse().ok()?;
            (ppid == parent).then_some((pid, state, comm))
        })
        .collect()
}

/// A group whose child leaves 20 short-lived orphans behind, and a group
/// whose child exits leaving a long-lived orphan that ignores SIGTERM. The
/// orphan leaves the child's process group (setsid): what stays in a child's
/// process group is stopped with it when it exits, this one is found only
/// among the orphans at shutdown.
const ORPHAN_MAKERS: &str = r#"
[group.spawner]
command = ["sh", "-c", "i=0; while [ $i -lt 20 ]; do sh -c 'sleep 0.05 &'; i=$((i+1)); done; echo spawned; exec sleep 1000"]
start_secs = "100ms"
stop_timeout = "1s"

[group.leaver]
command = ["sh", "-c", "setsid sh -c 'trap \"\" TERM; exec sleep 1000' & echo left; sleep 0.3; exit 0"]
restart = "never"
start_secs = "100ms"
stop_timeout = "300ms"
"#;

fn orphans_are_reaped_and_stopped(name: &str, wrapper: &[&str]) {
    let dir = TempDir::new(name);
    dir.write("drover.toml", ORPHAN_MAKERS);
    let mut d = Drover::start_in(dir, wrapper);
    let host = drover_host_pid(&d, !wrapper.is_empty());
    d.stdout.wait_for("orphans to be made", |t| {
        t.contains("spawner[0] spawned") && t.contains("leaver[0] left")
    });
    // The 20 sleepers were re-parented to drover and exit after 50 ms: every
    // one must be reaped, leaving only spawner's sleep and the leaver's orphan.
    wait_until("orphans reaped, no zombies left", || {
        let kids = children_of(host);
        kids.iter().all(|(_, state, _)| *state != 'Z')
            && kids.len() == 2
            && kids.iter().all(|(_, _, comm)| comm == "sleep")
    });
    let orphan = children_of(host)
        .into_iter()
        .map(|(pid, _, _)| pid)
        .find(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            // The leaver's orphan ignores SIGTERM (bit 15 of SigIgn).
            status
                .lines()
                .find(|l| l.starts_with("SigIgn:"))
                .and_then(|l| u64::from_str_radix(l[7..].trim(), 16).ok())
                .is_some_and(|mask| mask & (1 << 14) != 0)
        })
        .expect("the orphan that ignores SIGTERM is drover's child now");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = d.wait_exit();
    assert_eq!(
        Drover::code(status),
        3,
        "the orphan needed SIGKILL, so the exit says so; stderr:\n{}",
        d.stderr.text()
    );
    let err = d.stderr.text();
    assert!(
        err.contains("1 orphaned descendant still running; sending SIGTERM"),
        "{err}"
    );
    assert!(
        err.contains("1 orphaned descendant still running; sending SIGKILL"),
        "{err}"
    );
    assert!(!alive(orphan as i64));
}

#[test]
fn orphans_are_reaped_and_stopped_as_a_subreaper() {
    orphans_are_reaped_and_stopped("subreaper", &[]);
}

#[test]
fn orphans_are_reaped_and_stopped_as_pid_1() {
    orphans_are_reaped_and_stopped(
        "pid1",
        &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"],
    );
}

#[test]
fn usr1_and_usr2_are_forwarded_to_each_child_pid_not_its_group() {
    let d = Drover::start(
        "forward",
        r#"
[group.listener]
command = ["sh", "-c", "trap 'echo got USR1' USR1; trap 'echo got USR2' USR2; sleep 1000 & echo grandchild $!; while :; do wait; done"]
processes = 2
start_secs = "100ms"
"#,
    );
    d.wait_group_state("listener", "running");
    let text = d.stdout.wait_count("grandchild ", 2);
    let grandchildren: Vec<i64> = text
        .lines()
        .filter_map(|l| l.split("grandchild ").nth(1)?.trim().parse().ok())
        .collect();
    d.signal(libc::SIGUSR1);
    d.stdout.wait_count("got USR1", 2);
    d.signal(libc::SIGUSR2);
    d.stdout.wait_count("got USR2", 2);
    // The grandchildren's default action for SIGUSR1 is to die: they would
    // be gone had the signal gone to the process group.
    for pid in grandchildren {
        assert!(alive(pid), "grandchild {pid} must not receive the signal");
    }
}

#[test]
fn sighup_reloads_and_does_not_kill_drover() {
    let d = Drover::start(
        "hup",
        r#"
[group.a]
command = ["sleep", "1000"]
start_secs = "100ms"
"#,
    );
    let pids = d.wait_group_state("a", "running");
    d.signal(libc::SIGHUP);
    d.stderr.wait_for("SIGHUP to be handled", |t| {
        t.contains("SIGHUP: config reloaded: no group or queue changed")
    });
    assert_eq!(d.wait_group_state("a", "running"), pids);
}

#[test]
fn children_get_an_empty_mask_and_default_dispositions_even_if_drover_did_not() {
    let dir = TempDir::new("sigstate");
    dir.write(
        "drover.toml",
        r#"
[group.report]
command = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]
restart = "never"
start_secs = "100ms"

[group.seven]
command = ["sh", "-c", "exit 7"]
restart = "never"
"#,
    );
    // Start drover with signals blocked and ignored, as a careless parent
    // might. An ignored SIGCHLD would have the kernel reap children itself:
    // drover could not tell how they ended.
    let wrapper = [
        "python3",
        "-c",
        "import os, signal, sys\n\
         signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR1, signal.SIGALRM})\n\
         for s in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR2, signal.SIGPIPE, signal.SIGCHLD):\n    signal.signal(s, signal.SIG_IGN)\n\
         os.execvp(sys.argv[1], sys.argv[1:])",
    ];
    let mut d = Drover::start_in(dir, &wrapper);
    d.wait_group_state("report", "exited");
    let text = d.stdout.wait_count("report[0] Sig", 2);
    let mask = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("report[0] {name}:\t")))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert_eq!(mask("SigBlk"), 0, "{text}");
    // Every signal at its default, glibc's internal 32 and 33 included
    // (its posix_spawn leaves them ignored unless they are in the default
    // set).
    assert_eq!(mask("SigIgn"), 0, "{text}");
    d.wait_group_state("seven", "exited");
    let status = d.status();
    assert_eq!(
        Drover::children(&status, "seven")[0]["last_exit"]["code"],
        7,
        "{status}"
    );
    // drover itself still handles SIGTERM although it was started blocked.
    d.signal(libc::SIGTERM);
    assert_eq!(Drover::code(d.wait_exit()), 0);
}

/// SIGCHLD is read from a signalfd, so no thread of drover may take it:
/// a thread with SIGCHLD unblocked would receive it (and, at its default
/// action, discard it) and exits would go unnoticed until the next one.
#[test]
fn every_thread_of_drover_blocks_sigchld() {
    let d = Drover::start(
        "sigchld-threads",
        r#"
[supervisor]
state_dir = "state"
metrics = "127.0.0.1:0"

[queue.jobs]
durable = true

[group.worker]
command = ["sleep", "1000"]
inputs = ["jobs"]
"#,
    );
    d.wait_group_state("worker", "running");
    let tasks = format!("/proc/{}/task", d.pid());
    let masks: Vec<(String, u64)> = std::fs::read_dir(&tasks)
        .unwrap()
        .map(|task| {
            let path = task.unwrap().path().join("status");
            let status = std::fs::read_to_string(&path).unwrap();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_else(|| panic!("no {name} in {}", path.display()))
            };
            let mask = u64::from_str_radix(&field("SigBlk:"), 16).unwrap();
            (field("Name:"), mask)
        })
        .collect();
    // The loop, the log writer, the config watcher, the store.
    assert!(masks.len() >= 4, "{masks:?}");
    let sigchld = 1u64 << (libc::SIGCHLD - 1);
    for (name, mask) in &masks {
        assert!(mask & sigchld != 0, "thread {name}: SigBlk {mask:x}");
    }
}
