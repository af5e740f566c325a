//! State-machine tests with a fake launcher and a fake clock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;
use crate::config::names::{GroupName, QueueName};
use crate::config::{Config, GroupSpec, LogFormat, Policy, Program, StartMethod, SupervisorConfig};

#[derive(Default)]
struct FakeLauncher {
    next_pid: i32,
    /// Starts that fail (to simulate a command that cannot be executed).
    fail_starts: bool,
    started: Vec<(String, u32, Pid)>,
    group_signals: Vec<(Pid, Signal)>,
    signals: Vec<(Pid, Signal)>,
    /// What each started PID runs.
    programs: std::collections::HashMap<Pid, String>,
    /// Process groups that still have members after their leader exited.
    groups_alive: std::collections::HashSet<Pid>,
    /// Starts go to a start context whose answer comes later: each is
    /// recorded here (group, index, ticket) instead of getting a PID.
    asks: bool,
    requests: Vec<(String, u32, u64)>,
}

impl Launcher for FakeLauncher {
    fn start(&mut self, group: &GroupSpec, index: u32) -> Result<Started, LaunchError> {
        if self.asks {
            let ticket = self.requests.len() as u64 + 1;
            self.requests.push((group.name.to_string(), index, ticket));
            return Ok(Started::Requested(ticket));
        }
        if self.fail_starts {
            return Err(LaunchError::NotFound {
                program: "nope".into(),
                path: "/bin".into(),
            });
        }
        self.next_pid += 1;
        let pid = Pid(1000 + self.next_pid);
        self.started.push((group.name.to_string(), index, pid));
        if let Program::Command(argv) = &group.program {
            self.programs
                .insert(pid, argv[0].to_string_lossy().into_owned());
        }
        Ok(Started::Running(pid))
    }
    fn signal_group(&mut self, pid: Pid, signal: Signal) {
        self.group_signals.push((pid, signal));
    }
    fn signal(&mut self, pid: Pid, signal: Signal) {
        self.signals.push((pid, signal));
    }
    fn group_alive(&mut self, pgid: Pid) -> bool {
        self.groups_alive.contains(&pgid)
    }
}

fn group(name: &str, processes: u32, policy: Policy) -> GroupSpec {
    GroupSpec {
        name: GroupName::new(name).unwrap(),
        program: Program::Command(vec!["true".into()]),
        python_executable: "python3".into(),
        start_method: StartMethod::Spawn,
        processes,
        inputs: vec![],
        outputs: vec![],
        confirm_outputs: vec![],
        env: BTreeMap::new(),
        env_files: Vec::new(),
        clear_env: false,
        cwd: PathBuf::from("/"),
        policy,
        update: Default::default(),
        after: Vec::new(),
        sockets: Vec::new(),
        file: PathBuf::from("test.toml"),
        user: None,
        rlimits: Default::default(),
    }
}

fn config(groups: Vec<GroupSpec>) -> Config {
    Config {
        supervisor: SupervisorConfig {
            control_socket: None,
            log_format: LogFormat::Text,
            state_dir: PathBuf::from("/tmp"),
            dead_letter_max_bytes: crate::config::DEFAULT_DEAD_LETTER_MAX_BYTES,
            log_lines: crate::config::DEFAULT_LOG_LINES,
            log_timestamps: false,
            metrics: None,
            exit_on_fatal: false,
        },
        groups: groups.into_iter().map(|g| (g.name.clone(), g)).collect(),
        queues: BTreeMap::new(),
        files: vec![],
    }
}

fn policy() -> Policy {
    Policy {
        start_secs: Duration::from_secs(1),
        restart_delay: Duration::from_millis(100),
        restart_delay_max: Duration::from_millis(300),
        max_restarts: 3,
        stop_timeout: Duration::from_secs(10),
        ..Policy::default()
    }
}

fn states(sup: &Supervisor) -> Vec<&'static str> {
    sup.groups()
        .flat_map(|g| g.children.iter().map(|c| c.state.name()))
        .collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn pid_of(sup: &Supervisor, index: usize) -> Pid {
    sup.groups().next().unwrap().children[index]
        .state
        .pid()
        .unwrap()
}

#[test]
fn starts_every_process_and_promotes_to_running_after_start_secs() {
    let t0 = Instant::now();
    let mut l = FakeLauncher::default();
    let mut sup = Supervisor::new(&config(vec![group("w", 3, policy())]));
    sup.start_all(&mut l, t0);
    assert_eq!(states(&sup), ["starting"; 3]);
    assert_eq!(sup.next_deadline(), Some(t0 + Duration::from_secs(1)));
    sup.on_deadline(&mut l, t0 + ms(999));
    assert_eq!(states(&sup), ["starting"; 3]);
    sup.on_deadline(&mut l, t0 + ms(1000));
    assert_eq!(states(&sup), ["running"; 3]);
    assert_eq!(sup.next_deadline(), None, "nothing to wake up for");
}

#[test]
fn running_child_that_crashes_restarts_at_once() {
    let t0 = Instant::now();
    let mut l = FakeLauncher::default();
    let mut sup = Supervisor::new(&config(vec![group("w", 1, policy())]));
    sup.start_all(&mut l, t0);
    sup.on_deadline(&mut l, t0 + ms(1000));
    let old = pid_of(&sup, 0);
    let t1 = t0 + Duration::from_secs(3600);
    assert!(sup.on_exit(old, ExitStatus::Signal(9), &mut l, t1));
    assert_eq!(states(&sup), ["starting"]);
    assert_ne!(pid_of(&sup, 0), old);
    assert_eq!(l.started.len(), 2, "replacement started in the same step");
    let child = &sup.groups().next().unwrap().children[0];
    assert_eq!(child.restarts, 1);
    assert_eq!(child.last_exit, Some(ExitStatus::Signal(9)));
}

#[test]
fn failed_starts_back_off_exponentially_then_go_fatal() {
    let t0 = Instant::now();
    let mut l = FakeLauncher::default();
    let p = Policy {
        start_secs: ms(100),
        ..policy()
    };
    let mut sup = Supervisor::new(&config(vec![group("w", 1, p)]));
    sup.start_all(&mut l, t0);
    let mut now = t0;
    let mut waits = vec![];
    // max_restarts = 3: the first start and 3 retries fail, then fatal.
    for _ in 0..4 {
        let pid = pid_of(&sup, 0);
        now += ms(10);
        sup.on_exit(pid, ExitStatus::Code(1), &mut l, now);
        if states(&sup) == ["fatal"] {
            break;
        }
        assert_eq!(states(&sup), ["backoff"]);
        let deadline = sup.next_deadline().unwrap();
        waits.push((deadline - now).as_millis());
        sup.on_deadline(&mut l, deadline - ms(1));
        assert_eq!(states(&sup), ["backoff"], "no retry before the deadline");
        now = deadline;
        sup.on_deadline(&mut l, now);
        assert_eq!(states(&sup), ["starting"]);
    }
    assert_eq!(waits, [100, 200, 300]);
    assert_eq!(states(&sup), ["fatal"]);
    assert_eq!(l.started.len(), 4, "max_restarts + 1 starts in a row");
    assert_eq!(sup.next_deadline(), None);
}

/// The respawn floor: no slot starts twice within `start_secs`, so a
/// backoff shorter than that waits for the floor (s6's rule).
#[test]
fn no_slot_starts_twice_within_start_secs() {
    let t0 = Instant::now();
    let mut l = FakeLauncher::default();
    let mut sup = Supervisor::new(&config(vec![group("w", 1, policy())]));
    sup.start_all(&mut l, t0);
    let mut now = t0;
    for _ in 0..3 {
        let pid = pid_of(&sup, 0);
        let started = now;
        now += ms(10);
        sup.on_exit(pid, ExitStatus::Code(1), &mut l, now);
        assert_eq!(states(&sup), ["backoff"]);
        let deadline = sup.next_deadline().unwrap();
        assert!(deadline >= started + Duration::from_secs(1), "floor");
        now = deadline;
        sup.on_deadline(&mut l, now);
    }
    assert!(l.started.len() <= 4);
}

/// Regression: `start_secs = "0s"` with a program that exits at once gave
/// about 3,000 starts per group in 3 s, forever. The supervisor enforces a
/// 100 ms floor whatever the config says, and such a death is a failed start.
#[test]
fn a_zero_start_secs_cannot_make_a_hot_loop() {
    let t0 = Instant::now();
    let mut l = FakeLauncher::default();
    let p = Policy {
        start_secs: Duration::ZERO,
        restart_delay: Duration::ZERO,
        restart_delay_max: Duration::ZERO,
        max_restarts: 1000,
        ..policy()
    };
    let mut sup = Supervisor::new(&config(vec![group("w", 1, p)]));
    sup.start_all(&mut l, t0);
    let mut now = t0;
    while now < t0 + Duration::from_secs(3) {
        let pid = sup.groups().next().unwrap().children[0].state.pid();
        if let Some(pid) = pid {
            sup.on_exit(pid, ExitStatus::Code(1), &mut l, now);
        }
        let next = sup.next_deadline().unwrap();
        assert!(next > now, "a death at once waits, never spins");
        now = next;
        sup.on_deadline(&mut l, now);
    }
    assert!(l.started.len() <= 31, "{} starts in 3 s", l.started.len());
}

#[test]
fn a_start_that_reaches_running_resets_the_budget() {
    let t0 = Instant::now();
    let mut l = FakeLauncher::default();
    let mut sup = Supervisor::new(&config(vec![group("w", 1, policy())]));
    sup.start_all(&mut l, t0);
    sup.on_exit(pid_of(&sup, 0), ExitStatus::Code(1), &mut l, t0 + ms(5));
    let retry = sup.next_deadline().unwrap();
    sup.on_deadline(&mut l, retry);
    sup.on_deadline(&mut l, retry + Duration::from_secs(1));
    assert_eq!(states(&sup), ["running"]);
    assert_eq!(sup.groups().next().unwrap().children[0].failed_starts, 0);
}

#[test]
fn launch_errors_count_as_failed_starts_without_spinning() {
    let t0 = Instant::now();
    let mut l = FakeLauncher {
        fail_starts: true,
        ..FakeLauncher::default()
    };
    let mut sup = Supervisor::new(&config(vec![group("w", 1, policy())]));
    sup.start_all(&mut l, t0);
    assert_eq!(states(&sup), ["backoff"]);
    let mut now = t0;
    let mut rounds = 0;
    while let Some(deadline) = sup.next_deadline() {
        assert!(deadline > now, "a failed launch must wait, not spin");
        now = deadline;
        sup.on_deadline(&mut l, now);
        rounds += 1;
    }
    assert_eq!(rounds, 3);
    assert_eq!(states(&sup), ["fatal"]);
}

#[test]
fn exit_policy_decides_between_exited_and_restart() {
    let t0 = Instant::now();
    let mut l = FakeLauncher::default();
    let never = Policy {
        restart: RestartPolicy::Never,
        ..policy()
    };
    let on_failure = Policy {
        success_codes: vec![0, 7],
        ..policy()
    };
    let always = Policy {
        restart: RestartPolicy::Always,
        ..policy()
    };
    let mut sup = Supervisor::new(&config(vec![
        group("a", 1, never),
        group("b", 1, on_failure),
        group("c", 1, always),
    ]));
    sup.start_all(&mut l, t0);
    sup.on_deadline(&mut l, t0 + Duration::from_secs(1));
    let pids: Vec<Pid> = sup.live_pids().collect();
    let t1 = t0 + Duration::from_secs(2);
    sup.on_exit(pids[0], ExitStatus::Code(1), &mut l, t1);
    sup.on_exit(pids[1], ExitStatus::Code(7), &mut l, t1);
    sup.on_exit(pids[2], ExitStatus::Code(0), &mut l, t1);
    assert_eq!(states(&sup), ["exited", "exited", "starting"]);
}

use crate::config::RestartPolicy;

#[test]
fn stop_signals_the_group_then_kills_after_stop_timeout() {
    let t0 = Instant::now();
    let mut l = FakeLauncher::default();
    let mut sup = Supervisor::new(&config(vec![group("w", 2, policy())]));
    sup.start_all(&mut l, t0);
    let pids: Vec<Pid> = sup.live_pids().collect();
    sup.group_command("w", GroupCommand::Stop, &mut l, t0 + ms(1))
        .unwrap();
    assert_eq!(states(&sup), ["stopping"; 2]);
    assert_eq!(
        l.group_signals,
        [(pids[0], Signal::Term), (pids[1], Signal::Term)]
    );
    // The first stops in time; the second ignores SIGTERM.
    sup.on_exit(pids[0], ExitStatus::Signal(15), &mut l, t0 + ms(50));
    assert_eq!(
        sup.next_deadline(),
        Some(t0 + ms(1) + Duration::from_secs(10))
    );
    sup.on_deadline(&mut l, t0 + ms(1) + Duration::from_secs(10));
    assert_eq!(l.group_signals.last(), Some(&(pids[1], Signal::Kill)));
    assert_eq!(sup.next_deadline(), None, "SIGKILL is sent once");
    sup.on_exit(
        pids[1],
        ExitStatus::Signal(9),
        &mut l,
        t0 + Duration::from_secs(11),
    );
    assert_eq!(states(&sup), ["stopped"; 2]);
    assert_eq!(l.started.len(), 2, "a stopped group is not restarted");
    assert!(!sup.was_forced(), "not shutting down");
}

#[test]
fn start_and_restart_commands() {
    let t0 = Instant::now();
    let mut l = FakeLauncher::default();
    let mut sup = Supervisor::new(&config(vec![group("w", 1, policy())]));
    sup.start_all(&mut l, t0);
    sup.on_deadline(&mut l, t0 + Duration::from_secs(1));
    let first = pid_of(&sup, 0);
    // `restart` is rolling by default: the new child starts first, and the
    // old one stops once it runs.
    sup.group_command("w", GroupCommand::Restart, &mut l, t0 + ms(1001))
        .unwrap();
    assert_eq!(states(&sup), ["starting"]);
    let second = pid_of(&sup, 0);
    assert_ne!(first, second);
    assert!(l.group_signals.is_empty(), "the old child still serves");
    sup.on_deadline(&mut l, t0 + ms(2001));
    assert_eq!(l.group_signals, [(first, Signal::Term)]);
    sup.on_exit(first, ExitStatus::Signal(15), &mut l, t0 + ms(2002));
    assert_eq!(states(&sup), ["running"]);

    sup.group_command("w", GroupCommand::Stop, &mut l, t0 + ms(2003))
        .unwrap();
    sup.on_exit(second, ExitStatus::Signal(15), &mut l, t0 + ms(2004));
    assert_eq!(states(&sup), ["stopped"]);
    sup.group_command("w", GroupCommand::Start, &mut l, t0 + ms(2005))
        .unwrap();
    assert_eq!(states(&sup), ["starting"]);
    assert_eq!(
        sup.group_command("nope", GroupCommand::Start, &mut l, t0),
        Err(UnknownGroup("nope".into()))
    );
}

#[test]
fn restart_gives_a_fatal_child_a_fresh_budget() {
    let t0 = Instant::now();
    let mut l = FakeLauncher {
        fail_starts: true,
        ..FakeLauncher::default()
    };
    let p = Policy {
        max_restarts: 0,
        ..policy()
    };
    let mut sup = Supervisor::new(&config(vec![group("w", 1, p)]));
    sup.start_all(&mut l, t0);
    assert_eq!(states(&sup), ["fatal"]);
    l.fail_starts = false;
    sup.group_command("w", GroupCommand::Restart, &mut l, t0 + ms(1))
        .unwrap();
    assert_eq!(states(&sup), ["starting"]);
}

#[test]
fn shutdown_stops_everything_and_restarts_nothing() {
    let t0 = Instant::now();
    let mut l = FakeLauncher::default();
    let mut sup = Supervisor::new(&config(vec![
        group("a", 2, policy()),
        group("b", 1, policy()),
    ]));
    sup.start_all(&mut l, t0);
    sup.shutdown(&mut l, t0 + ms(1));
    assert_eq!(l.group_signals.len(), 3, "every group in parallel");
    assert!(!sup.is_finished());
    for pid in sup.live_pids().collect::<Vec<_>>() {
        sup.on_exit(pid, ExitStatus::Code(1), &mut l, t0 + ms(2));
    }
    assert!(sup.is_finished());
    assert_eq!(l.started.len(), 3, "nothing restarted during shutdown");
    assert!(!sup.was_forced());
}

#[test]
fn shutdown_that_needs_sigkill_is_forced() {
    let t0 = Instant::now();
    let mut l = FakeLauncher::default();
    let mut sup = Supervisor::new(&config(vec![group("a", 1, policy())]));
    sup.start_all(&mut l, t0);
    sup.shutdown(&mut l, t0);
    sup.on_deadline(&mut l, t0 + Duration::from_secs(10));
    assert!(sup.was_forced());
}

#[test]
fn second_signal_kills_at_once() {
    let t0 = Instant::now();
    let mut l = FakeLauncher::default();
    let mut sup = Supervisor::new(&config(vec![group("a", 2, policy())]));
    sup.start_all(&mut l, t0);
    sup.shutdown(&mut l, t0);
    sup.kill_all(&mut l, t0 + ms(1));
    let kills = l
        .group_signals
        .iter()
        .filter(|(_, s)| *s == Signal::Kill)
        .count();
    assert_eq!(kills, 2);
    assert!(sup.was_forced());
}

#[test]
fn forwarding_reaches_every_live_child_by_pid() {
    let t0 = Instant::now();
    let mut l = FakeLauncher::default();
    let mut sup = Supervisor::new(&config(vec![
        group("a", 2, policy()),
        group("b", 0, policy()),
    ]));
    sup.start_all(&mut l, t0);
    sup.forward(Signal::Usr1, &mut l);
    assert_eq!(l.signals.len(), 2);
    assert!(l.group_signals.is_empty(), "never the process group");
}

/// Starts answered later by a start context (the fork server, a template).
mod requested {
    use super::*;

    fn asking(processes: u32) -> (Supervisor, FakeLauncher, Instant, GroupSpec) {
        let spec = group("w", processes, policy());
        let mut l = FakeLauncher {
            asks: true,
            ..FakeLauncher::default()
        };
        let mut sup = Supervisor::new(&config(vec![spec.clone()]));
        let t0 = Instant::now();
        sup.start_all(&mut l, t0);
        (sup, l, t0, spec)
    }

    #[test]
    fn a_requested_start_is_starting_until_its_pid_arrives() {
        let (mut sup, mut l, t0, spec) = asking(1);
        assert_eq!(states(&sup), ["starting"]);
        assert_eq!(sup.live_pids().count(), 0);
        assert_eq!(sup.next_deadline(), None, "the context keeps the deadline");
        let child = &sup.groups().next().unwrap().children[0];
        assert_eq!(child.attempts, 0, "counted when the answer comes");
        sup.start_replied(&spec, 0, 1, Ok(Pid(77)), &mut l, t0 + ms(5));
        assert_eq!(pid_of(&sup, 0), Pid(77));
        assert_eq!(
            sup.next_deadline(),
            Some(t0 + ms(5) + Duration::from_secs(1)),
            "start_secs counts from the answer"
        );
        let child = &sup.groups().next().unwrap().children[0];
        assert_eq!(child.attempts, 1);
    }

    #[test]
    fn a_refused_start_backs_off_and_a_warming_one_waits() {
        let (mut sup, mut l, t0, spec) = asking(2);
        let refused = LaunchError::Exec {
            program: "x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        sup.start_replied(&spec, 0, 1, Err(refused), &mut l, t0);
        sup.start_replied(
            &spec,
            1,
            2,
            Err(LaunchError::Warming { until: ms(500) }),
            &mut l,
            t0,
        );
        assert_eq!(states(&sup), ["backoff", "waiting"]);
        sup.context_ready(&spec.name, &mut l, t0 + ms(1));
        assert_eq!(l.requests.len(), 3, "the waiting one asks again");
    }

    #[test]
    fn a_slot_is_never_started_twice_while_its_answer_is_due() {
        let (mut sup, mut l, t0, _) = asking(1);
        sup.group_command("w", GroupCommand::Start, &mut l, t0)
            .unwrap();
        assert_eq!(l.requests.len(), 1);
        sup.group_command("w", GroupCommand::Restart, &mut l, t0)
            .unwrap();
        assert_eq!(l.requests.len(), 1, "restart waits for the answer");
        assert!(sup.groups().next().unwrap().children[0].outdated);
    }

    #[test]
    fn a_process_nobody_waits_for_any_more_is_stopped() {
        let (mut sup, mut l, t0, spec) = asking(1);
        sup.group_command("w", GroupCommand::Stop, &mut l, t0)
            .unwrap();
        assert_eq!(states(&sup), ["stopped"]);
        sup.start_replied(&spec, 0, 1, Ok(Pid(90)), &mut l, t0 + ms(3));
        assert_eq!(states(&sup), ["stopped"]);
        assert_eq!(l.group_signals, [(Pid(90), Signal::Term)]);
        assert_eq!(sup.live_pids().collect::<Vec<_>>(), [Pid(90)]);
        assert!(sup.on_exit(Pid(90), ExitStatus::Signal(15), &mut l, t0 + ms(4)));
        assert_eq!(sup.live_pids().count(), 0);
        // A stale ticket (the slot asked again since) is stopped too.
        sup.group_command("w", GroupCommand::Start, &mut l, t0 + ms(5))
            .unwrap();
        sup.start_replied(&spec, 0, 1, Ok(Pid(91)), &mut l, t0 + ms(6));
        assert_eq!(l.group_signals.last(), Some(&(Pid(91), Signal::Term)));
        assert_eq!(states(&sup), ["starting"]);
        sup.start_replied(&spec, 0, 2, Ok(Pid(92)), &mut l, t0 + ms(7));
        assert_eq!(pid_of(&sup, 0), Pid(92));
    }

    #[test]
    fn shutdown_does_not_wait_for_an_answer_but_stops_what_it_brings() {
        let (mut sup, mut l, t0, spec) = asking(1);
        sup.shutdown(&mut l, t0);
        assert!(sup.is_finished());
        sup.start_replied(&spec, 0, 1, Ok(Pid(50)), &mut l, t0 + ms(1));
        assert!(!sup.is_finished(), "the late process is stopped first");
        assert!(sup.on_exit(Pid(50), ExitStatus::Signal(15), &mut l, t0 + ms(2)));
        assert!(sup.is_finished());
    }
}

#[test]
fn unknown_pids_are_not_ours() {
    let t0 = Instant::now();
    let mut l = FakeLauncher::default();
    let mut sup = Supervisor::new(&config(vec![group("a", 1, policy())]));
    sup.start_all(&mut l, t0);
    assert!(!sup.on_exit(Pid(1), ExitStatus::Code(0), &mut l, t0));
    assert_eq!(states(&sup), ["starting"]);
}

mod reload {
    use super::*;

    fn with_command(mut g: GroupSpec, cmd: &str) -> GroupSpec {
        g.program = Program::Command(vec![cmd.into()]);
        g
    }

    #[test]
    fn an_unchanged_config_touches_nothing() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let cfg = config(vec![group("w", 2, policy())]);
        let mut sup = Supervisor::new(&cfg);
        sup.start_all(&mut l, t0);
        let before: Vec<Pid> = sup.live_pids().collect();
        let summary = sup.apply(&cfg, &mut l, t0 + ms(5));
        assert_eq!(summary.unchanged.len(), 1);
        assert_eq!(sup.live_pids().collect::<Vec<_>>(), before);
        assert_eq!(l.started.len(), 2);
        assert!(l.group_signals.is_empty());
    }

    #[test]
    fn processes_changes_start_or_stop_only_the_difference_highest_first() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![group("w", 3, policy())]));
        sup.start_all(&mut l, t0);
        let first: Vec<Pid> = sup.live_pids().collect();
        sup.apply(&config(vec![group("w", 5, policy())]), &mut l, t0 + ms(1));
        let now: Vec<Pid> = sup.live_pids().collect();
        assert_eq!(&now[..3], &first[..], "the first three keep their PIDs");
        assert_eq!(now.len(), 5);
        let summary = sup.apply(&config(vec![group("w", 2, policy())]), &mut l, t0 + ms(2));
        assert_eq!(summary.scaled.len(), 1);
        let stopped: Vec<Pid> = l.group_signals.iter().map(|(p, _)| *p).collect();
        assert_eq!(stopped, [now[4], now[3], now[2]], "highest index first");
        assert_eq!(states(&sup), ["starting", "starting"]);
        for pid in stopped {
            assert!(sup.on_exit(pid, ExitStatus::Signal(15), &mut l, t0 + ms(3)));
        }
        assert_eq!(sup.live_pids().collect::<Vec<_>>(), &first[..2]);
        assert_eq!(l.started.len(), 5, "nothing restarted");
    }

    #[test]
    fn a_change_of_user_or_rlimits_replaces_the_children() {
        use crate::config::{Limit, Resource, RunAs};
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let plain = group("w", 1, policy());
        let mut sup = Supervisor::new(&config(vec![plain.clone()]));
        sup.start_all(&mut l, t0);
        let mut as_user = plain.clone();
        as_user.user = Some(RunAs {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
            home: "/nonexistent".into(),
            switch: true,
        });
        let summary = sup.apply(&config(vec![as_user.clone()]), &mut l, t0 + ms(1));
        assert_eq!(summary.replaced.len(), 1, "{summary}");
        let mut limited = as_user.clone();
        limited.rlimits.insert(Resource::Nofile, Limit::Value(64));
        let summary = sup.apply(&config(vec![limited.clone()]), &mut l, t0 + ms(2));
        assert_eq!(summary.replaced.len(), 1, "{summary}");
        let summary = sup.apply(&config(vec![limited]), &mut l, t0 + ms(3));
        assert_eq!(summary.unchanged.len(), 1, "{summary}");
    }

    #[test]
    fn a_policy_change_applies_in_place() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![group("w", 1, policy())]));
        sup.start_all(&mut l, t0);
        let pid = pid_of(&sup, 0);
        let new_policy = Policy {
            stop_signal: Signal::Int,
            stop_timeout: Duration::from_secs(2),
            ..policy()
        };
        let summary = sup.apply(&config(vec![group("w", 1, new_policy)]), &mut l, t0 + ms(1));
        assert_eq!(summary.policy.len(), 1);
        assert_eq!(pid_of(&sup, 0), pid);
        sup.group_command("w", GroupCommand::Stop, &mut l, t0 + ms(2))
            .unwrap();
        assert_eq!(l.group_signals, [(pid, Signal::Int)], "the new stop_signal");
        assert_eq!(
            sup.next_deadline(),
            Some(t0 + ms(2) + Duration::from_secs(2))
        );
    }

    /// `confirm` on one of its outputs changes a group's environment:
    /// its children are replaced; another group is not.
    #[test]
    fn a_change_of_confirmed_outputs_replaces_the_group() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![
            group("p", 1, policy()),
            group("c", 1, policy()),
        ]));
        sup.start_all(&mut l, t0);
        let mut p = group("p", 1, policy());
        p.confirm_outputs = vec![crate::config::names::QueueName::new("jobs").unwrap()];
        let summary = sup.apply(&config(vec![p, group("c", 1, policy())]), &mut l, t0);
        assert_eq!(summary.replaced, [GroupName::new("p").unwrap()]);
        assert_eq!(summary.unchanged, [GroupName::new("c").unwrap()]);
    }

    /// An env file's path is part of the definition, even when the
    /// variables it gives are the same (its content is in `env`).
    #[test]
    fn a_change_of_env_file_replaces_the_group() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![
            group("p", 1, policy()),
            group("c", 1, policy()),
        ]));
        sup.start_all(&mut l, t0);
        let mut p = group("p", 1, policy());
        p.env_files = vec![std::path::PathBuf::from("/cfg/.env")];
        let summary = sup.apply(&config(vec![p, group("c", 1, policy())]), &mut l, t0);
        assert_eq!(summary.replaced, [GroupName::new("p").unwrap()]);
        assert_eq!(summary.unchanged, [GroupName::new("c").unwrap()]);
    }

    #[test]
    fn a_command_change_is_a_rolling_restart() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![group("w", 2, policy())]));
        sup.start_all(&mut l, t0);
        sup.on_deadline(&mut l, t0 + Duration::from_secs(1));
        let old: Vec<Pid> = sup.live_pids().collect();
        let t1 = t0 + Duration::from_secs(2);
        let summary = sup.apply(
            &config(vec![with_command(group("w", 2, policy()), "new")]),
            &mut l,
            t1,
        );
        assert_eq!(summary.replaced.len(), 1);
        // Index 0's replacement starts; both old children still run.
        assert_eq!(l.started.len(), 3);
        assert!(l.group_signals.is_empty());
        assert_eq!(sup.live_pids().count(), 3);
        // Once it runs, old 0 is stopped and index 1's replacement starts.
        let t2 = t1 + Duration::from_secs(1);
        sup.on_deadline(&mut l, t2);
        assert_eq!(l.group_signals, [(old[0], Signal::Term)]);
        assert_eq!(l.started.len(), 4);
        sup.on_exit(old[0], ExitStatus::Signal(15), &mut l, t2);
        sup.on_deadline(&mut l, t2 + Duration::from_secs(1));
        assert_eq!(l.group_signals.last(), Some(&(old[1], Signal::Term)));
        sup.on_exit(
            old[1],
            ExitStatus::Signal(15),
            &mut l,
            t2 + Duration::from_secs(1),
        );
        assert_eq!(states(&sup), ["running", "running"]);
        assert_eq!(sup.live_pids().count(), 2);
        assert!(sup.live_pids().all(|p| !old.contains(&p)));
    }

    #[test]
    fn a_replacement_that_never_runs_leaves_the_old_child_running() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![group("w", 1, policy())]));
        sup.start_all(&mut l, t0);
        let old = pid_of(&sup, 0);
        l.fail_starts = true;
        sup.apply(
            &config(vec![with_command(group("w", 1, policy()), "broken")]),
            &mut l,
            t0 + ms(1),
        );
        while let Some(d) = sup.next_deadline() {
            sup.on_deadline(&mut l, d);
        }
        assert_eq!(states(&sup), ["fatal"]);
        assert!(
            sup.live_pids().any(|p| p == old),
            "the old child keeps serving"
        );
        assert!(l.group_signals.is_empty());
    }

    #[test]
    fn removed_groups_stop_new_groups_start_fatal_children_revive() {
        let t0 = Instant::now();
        let mut l = FakeLauncher {
            fail_starts: true,
            ..FakeLauncher::default()
        };
        let p = Policy {
            max_restarts: 0,
            ..policy()
        };
        let mut sup = Supervisor::new(&config(vec![
            group("a", 1, p.clone()),
            group("gone", 1, p.clone()),
        ]));
        sup.start_all(&mut l, t0);
        assert_eq!(states(&sup), ["fatal", "fatal"]);
        l.fail_starts = false;
        let summary = sup.apply(
            &config(vec![group("a", 1, p.clone()), group("new", 2, p)]),
            &mut l,
            t0 + ms(1),
        );
        assert_eq!(summary.added.len(), 1);
        assert_eq!(summary.removed.len(), 1);
        assert_eq!(summary.revived, 1);
        assert_eq!(states(&sup), ["starting", "starting", "starting"]);
        assert_eq!(
            summary.to_string(),
            "added: new; removed: gone; 1 fatal child restarted"
        );
    }

    /// The runtime adds the broker's queue changes; one queue is named in
    /// the singular, several in the plural.
    #[test]
    fn the_summary_names_changed_queues() {
        let names = |list: &[&str]| -> Vec<QueueName> {
            list.iter().map(|n| QueueName::new(n).unwrap()).collect()
        };
        let summary = ReloadSummary {
            queues_added: names(&["jobs"]),
            queues_removed: names(&["old", "older"]),
            queues_changed: names(&["results"]),
            ..ReloadSummary::default()
        };
        assert_eq!(
            summary.to_string(),
            "queue added: jobs; queues removed: old, older; queue changed: results"
        );
        assert_eq!(
            ReloadSummary::default().to_string(),
            "no group or queue changed"
        );
    }
}

/// Regression tests for rolling restarts interrupted by another change.
mod rolling {
    use super::*;

    fn cmd(name: &str, processes: u32, program: &str) -> Config {
        let mut g = group(name, processes, policy());
        g.program = Program::Command(vec![program.into()]);
        config(vec![g])
    }

    /// Runs deadlines and reaps every stopped process until nothing is due.
    fn settle(sup: &mut Supervisor, l: &mut FakeLauncher, mut now: Instant) -> Instant {
        for _ in 0..100 {
            let stopped: Vec<Pid> = l.group_signals.drain(..).map(|(p, _)| p).collect();
            for pid in stopped {
                sup.on_exit(pid, ExitStatus::Signal(15), l, now);
            }
            match sup.next_deadline() {
                Some(d) if l.group_signals.is_empty() => {
                    now = now.max(d);
                    sup.on_deadline(l, now);
                }
                _ if l.group_signals.is_empty() => return now,
                _ => {}
            }
        }
        panic!("did not settle");
    }

    fn running_programs(sup: &Supervisor, l: &FakeLauncher) -> Vec<String> {
        let mut v: Vec<String> = sup.live_pids().map(|p| l.programs[&p].clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_second_change_during_a_rolling_restart_wins_everywhere() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&cmd("w", 2, "v0"));
        sup.start_all(&mut l, t0);
        let t = settle(&mut sup, &mut l, t0);
        sup.apply(&cmd("w", 2, "v1"), &mut l, t);
        // w[0]'s replacement (v1) is starting when v2 arrives.
        sup.apply(&cmd("w", 2, "v2"), &mut l, t + ms(1));
        settle(&mut sup, &mut l, t + ms(1));
        assert_eq!(running_programs(&sup, &l), ["v2", "v2"]);
    }

    #[test]
    fn a_failed_replacement_fixed_later_stops_the_original() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&cmd("w", 1, "v0"));
        sup.start_all(&mut l, t0);
        let t = settle(&mut sup, &mut l, t0);
        l.fail_starts = true;
        sup.apply(&cmd("w", 1, "typo"), &mut l, t);
        let t = settle(&mut sup, &mut l, t);
        assert_eq!(states(&sup), ["fatal"]);
        assert_eq!(
            running_programs(&sup, &l),
            ["v0"],
            "the original keeps serving"
        );
        l.fail_starts = false;
        sup.apply(&cmd("w", 1, "v1"), &mut l, t);
        settle(&mut sup, &mut l, t);
        assert_eq!(running_programs(&sup, &l), ["v1"]);
    }

    #[test]
    fn scaling_down_during_a_rolling_restart_stops_the_old_process_too() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&cmd("w", 2, "v0"));
        sup.start_all(&mut l, t0);
        let t = settle(&mut sup, &mut l, t0);
        sup.apply(&cmd("w", 2, "v1"), &mut l, t);
        // w[0] done, w[1]'s replacement starting:
        sup.on_deadline(&mut l, t + Duration::from_secs(1));
        sup.apply(&cmd("w", 1, "v1"), &mut l, t + Duration::from_secs(1));
        settle(&mut sup, &mut l, t + Duration::from_secs(1));
        assert_eq!(running_programs(&sup, &l), ["v1"]);
    }

    #[test]
    fn stopping_a_group_during_a_rolling_restart_stops_the_old_processes() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&cmd("w", 2, "v0"));
        sup.start_all(&mut l, t0);
        let t = settle(&mut sup, &mut l, t0);
        sup.apply(&cmd("w", 2, "v1"), &mut l, t);
        sup.group_command("w", GroupCommand::Stop, &mut l, t + ms(1))
            .unwrap();
        settle(&mut sup, &mut l, t + ms(1));
        assert!(running_programs(&sup, &l).is_empty());
        assert_eq!(states(&sup), ["stopped", "stopped"]);
    }

    /// Regression: a failed rolling replacement showed `fatal, pid -` while
    /// the old child kept serving, invisible. It stays in the slot's status
    /// with the failed attempt beside it.
    #[test]
    fn a_failed_replacement_shows_the_old_child_that_serves() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![group("w", 1, policy())]));
        sup.start_all(&mut l, t0);
        sup.on_deadline(&mut l, t0 + Duration::from_secs(1));
        let old = pid_of(&sup, 0);
        l.fail_starts = true;
        sup.apply(&cmd("w", 1, "broken"), &mut l, t0 + Duration::from_secs(2));
        while let Some(d) = sup.next_deadline() {
            sup.on_deadline(&mut l, d);
        }
        let name = GroupName::new("w").unwrap();
        let serving = sup.predecessor(&name, 0).expect("the old child is kept");
        assert_eq!(serving.state.pid(), Some(old));
        assert_eq!(serving.state.name(), "running");
        let status = crate::control::status::Status::capture(&sup, None, t0, |_| vec![]);
        let child = &status.groups[0].children[0];
        assert_eq!((child.pid, child.state.as_str()), (Some(old.0), "running"));
        let replacement = child.replacement.as_ref().expect("shown beside it");
        assert_eq!(replacement.state, "fatal");
    }

    #[test]
    fn stop_first_stops_each_old_child_before_its_replacement_starts() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut g = group("w", 2, policy());
        g.update = crate::config::UpdateMode::StopFirst;
        let mut sup = Supervisor::new(&config(vec![g.clone()]));
        sup.start_all(&mut l, t0);
        let mut now = t0 + Duration::from_secs(1);
        sup.on_deadline(&mut l, now);
        let (old0, old1) = (pid_of(&sup, 0), pid_of(&sup, 1));
        g.program = Program::Command(vec!["new".into()]);
        now += ms(1);
        sup.apply(&config(vec![g]), &mut l, now);
        assert_eq!(l.started.len(), 2, "nothing new runs beside the old one");
        assert_eq!(l.group_signals, [(old0, Signal::Term)]);
        assert_eq!(states(&sup), ["waiting", "running"]);
        sup.on_exit(old0, ExitStatus::Signal(15), &mut l, now);
        assert_eq!(states(&sup), ["starting", "running"]);
        assert!(
            !l.group_signals.iter().any(|(p, _)| *p == old1),
            "one at a time"
        );
        now += Duration::from_secs(1);
        sup.on_deadline(&mut l, now);
        assert_eq!(l.group_signals.last(), Some(&(old1, Signal::Term)));
        sup.on_exit(old1, ExitStatus::Signal(15), &mut l, now);
        now += Duration::from_secs(1);
        sup.on_deadline(&mut l, now);
        assert_eq!(states(&sup), ["running", "running"]);
        assert_eq!(running_programs(&sup, &l), ["new", "new"]);
    }

    /// A crashed nginx master left its workers holding the port; each
    /// replacement failed to bind. A child's exit ends its process group,
    /// and the replacement starts once the group is empty.
    #[test]
    fn a_childs_exit_stops_its_process_group_before_the_restart() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![group("w", 1, policy())]));
        sup.start_all(&mut l, t0);
        let mut now = t0 + Duration::from_secs(1);
        sup.on_deadline(&mut l, now);
        let master = pid_of(&sup, 0);
        l.groups_alive.insert(master);
        now += ms(5);
        sup.on_exit(master, ExitStatus::Signal(9), &mut l, now);
        assert_eq!(l.group_signals, [(master, Signal::Term)]);
        assert_eq!(states(&sup), ["waiting"]);
        assert_eq!(l.started.len(), 1, "no replacement while the group lives");
        assert_eq!(sup.next_deadline(), Some(now + Duration::from_secs(10)));
        sup.check_leftovers(&mut l, now);
        assert_eq!(states(&sup), ["waiting"], "still alive");
        now += Duration::from_secs(10);
        sup.on_deadline(&mut l, now);
        assert_eq!(l.group_signals.last(), Some(&(master, Signal::Kill)));
        l.groups_alive.clear();
        sup.check_leftovers(&mut l, now);
        assert_eq!(states(&sup), ["starting"]);
        assert_eq!(l.started.len(), 2);
        assert!(!sup.has_leftovers());
    }

    #[test]
    fn starts_beyond_the_turn_budget_wait_for_a_later_turn() {
        struct Budget(FakeLauncher, u32);
        impl Launcher for Budget {
            fn start(&mut self, g: &GroupSpec, i: u32) -> Result<Started, LaunchError> {
                if self.1 == 0 {
                    return Err(LaunchError::Deferred);
                }
                self.1 -= 1;
                self.0.start(g, i)
            }
            fn signal_group(&mut self, pid: Pid, s: Signal) {
                self.0.signal_group(pid, s)
            }
            fn signal(&mut self, pid: Pid, s: Signal) {
                self.0.signal(pid, s)
            }
            fn group_alive(&mut self, pgid: Pid) -> bool {
                self.0.group_alive(pgid)
            }
        }
        let t0 = Instant::now();
        let mut l = Budget(FakeLauncher::default(), 3);
        let mut sup = Supervisor::new(&config(vec![group("w", 5, policy())]));
        sup.start_all(&mut l, t0);
        assert_eq!(l.0.started.len(), 3);
        assert!(sup.has_deferred());
        assert_eq!(
            states(&sup),
            ["starting", "starting", "starting", "waiting", "waiting"]
        );
        l.1 = 3;
        sup.start_deferred(&mut l, t0);
        assert_eq!(l.0.started.len(), 5);
        assert!(!sup.has_deferred());
        let child = &sup.groups().next().unwrap().children[4];
        assert_eq!(child.attempts, 1, "a deferred start is not an attempt");
    }
}

/// The index (slots by PID, deadline, leftovers, rolling update) against a
/// full scan: every settle of a debug build compares them, so driving the
/// supervisor through a long random mix of events checks every path.
mod index {
    use super::*;

    /// A small deterministic generator (xorshift64*), so a failure replays.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn random_config(rng: &mut Rng) -> Config {
        let programs = ["a", "b"];
        let mut names = vec![];
        for name in ["x", "y", "z"] {
            if rng.below(4) != 0 {
                names.push(name);
            }
        }
        let groups = names
            .into_iter()
            .map(|name| {
                let mut p = policy();
                p.start_secs = ms(50 + rng.below(3) * 100);
                p.stop_timeout = ms(100 + rng.below(3) * 200);
                let mut g = group(name, rng.below(6) as u32, p);
                g.program = Program::Command(vec![programs[rng.below(2) as usize].into()]);
                if rng.below(2) == 0 {
                    g.update = crate::config::UpdateMode::StopFirst;
                }
                g
            })
            .collect();
        config(groups)
    }

    #[test]
    fn random_events_keep_the_index_equal_to_a_full_scan() {
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut now = Instant::now();
            let mut l = FakeLauncher::default();
            let mut sup = Supervisor::new(&random_config(&mut rng));
            sup.start_all(&mut l, now);
            for step in 0..400 {
                let live: Vec<Pid> = sup.live_pids().collect();
                match rng.below(10) {
                    // A process exits (crash, success, or a stop it was sent).
                    0..=2 if !live.is_empty() => {
                        let pid = live[rng.below(live.len() as u64) as usize];
                        if rng.below(3) == 0 {
                            l.groups_alive.insert(pid);
                        }
                        let status = match rng.below(3) {
                            0 => ExitStatus::Code(0),
                            1 => ExitStatus::Code(1),
                            _ => ExitStatus::Signal(9),
                        };
                        assert!(
                            sup.on_exit(pid, status, &mut l, now),
                            "seed {seed} step {step}"
                        );
                    }
                    // Time passes to the next deadline, or a little.
                    3 | 4 => {
                        now = match sup.next_deadline() {
                            Some(d) if rng.below(2) == 0 => now.max(d),
                            _ => now + ms(rng.below(300)),
                        };
                        sup.on_deadline(&mut l, now);
                    }
                    // A leftover process group empties.
                    5 => {
                        if let Some(&pgid) = l.groups_alive.iter().next() {
                            l.groups_alive.remove(&pgid);
                        }
                        sup.check_leftovers(&mut l, now);
                    }
                    6 => {
                        let name = ["x", "y", "z"][rng.below(3) as usize];
                        let command = [
                            GroupCommand::Start,
                            GroupCommand::Stop,
                            GroupCommand::Restart,
                        ][rng.below(3) as usize];
                        let _ = sup.group_command(name, command, &mut l, now);
                    }
                    7 => {
                        sup.apply(&random_config(&mut rng), &mut l, now);
                    }
                    8 if !live.is_empty() => {
                        let pid = live[rng.below(live.len() as u64) as usize];
                        sup.restart_child(pid, &mut l, now);
                    }
                    _ => {
                        // An orphan is reaped: not ours, and nothing changes.
                        assert!(!sup.on_exit(Pid(1), ExitStatus::Code(0), &mut l, now));
                    }
                }
                // Whatever the index says must be what a scan finds.
                let scanned = sup
                    .groups()
                    .flat_map(|g| g.children.iter().filter_map(|c| c.deadline(&g.spec.policy)))
                    .chain(
                        sup.retiring
                            .iter()
                            .filter_map(|r| r.child.deadline(&r.spec.policy)),
                    )
                    .chain(sup.strays.iter().filter_map(|s| s.leftover.deadline()))
                    .min();
                let next = sup.next_deadline();
                assert!(
                    scanned.is_none() || next.is_some_and(|n| n <= scanned.unwrap()),
                    "seed {seed} step {step}: next deadline {next:?}, scan {scanned:?}"
                );
            }
        }
    }
}

/// `after`: starts gated on the groups named, init tasks, reasons.
mod after {
    use super::*;

    fn after(mut spec: GroupSpec, deps: &[&str]) -> GroupSpec {
        spec.after = deps.iter().map(|d| GroupName::new(d).unwrap()).collect();
        spec
    }

    fn init_task() -> Policy {
        Policy {
            restart: crate::config::RestartPolicy::Never,
            ..policy()
        }
    }

    fn child<'a>(sup: &'a Supervisor, name: &str, index: usize) -> &'a Child {
        let group = sup.groups().find(|g| g.spec.name.as_str() == name).unwrap();
        &group.children[index]
    }

    fn state_of(sup: &Supervisor, name: &str) -> Vec<&'static str> {
        let group = sup.groups().find(|g| g.spec.name.as_str() == name).unwrap();
        group.children.iter().map(|c| c.state.name()).collect()
    }

    fn reason_of(sup: &Supervisor, name: &str) -> Option<String> {
        child(sup, name, 0).reason.clone()
    }

    fn app() -> Config {
        config(vec![
            group("db", 2, policy()),
            group("migrate", 1, init_task()),
            after(group("api", 2, policy()), &["db", "migrate"]),
        ])
    }

    #[test]
    fn a_group_starts_once_its_dependencies_are_ready_and_finished() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&app());
        sup.start_all(&mut l, t0);
        assert_eq!(state_of(&sup, "api"), ["waiting"; 2]);
        assert_eq!(state_of(&sup, "db"), ["starting"; 2]);
        assert_eq!(
            reason_of(&sup, "api").as_deref(),
            Some("waiting for db to be ready")
        );
        assert!(!sup.has_deferred());
        // db is ready: the gate moves on to migrate, still running.
        sup.on_deadline(&mut l, t0 + ms(1000));
        assert_eq!(state_of(&sup, "db"), ["running"; 2]);
        assert_eq!(state_of(&sup, "migrate"), ["running"]);
        assert_eq!(
            reason_of(&sup, "api").as_deref(),
            Some("waiting for init task migrate to finish")
        );
        assert!(!sup.has_deferred());
        let migrate = child(&sup, "migrate", 0).state.pid().unwrap();
        sup.on_exit(migrate, ExitStatus::Code(0), &mut l, t0 + ms(1500));
        assert_eq!(state_of(&sup, "migrate"), ["exited"]);
        assert!(sup.has_deferred(), "api is released for the next turn");
        sup.start_deferred(&mut l, t0 + ms(1500));
        assert_eq!(state_of(&sup, "api"), ["starting"; 2]);
        assert!(sup.take_fatal().is_none());
    }

    #[test]
    fn a_failed_init_task_keeps_its_dependants_waiting_and_counts_as_fatal() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![
            group("migrate", 1, init_task()),
            after(group("api", 1, policy()), &["migrate"]),
        ]));
        sup.start_all(&mut l, t0);
        let migrate = child(&sup, "migrate", 0).state.pid().unwrap();
        sup.on_exit(migrate, ExitStatus::Code(3), &mut l, t0 + ms(1500));
        sup.start_deferred(&mut l, t0 + ms(1500));
        assert_eq!(state_of(&sup, "api"), ["waiting"]);
        assert_eq!(
            reason_of(&sup, "api").as_deref(),
            Some("init task migrate failed (exit 3)")
        );
        assert_eq!(
            sup.take_fatal().as_deref(),
            Some("init task migrate failed (exit 3)")
        );
        assert!(sup.take_fatal().is_none(), "reported once");
        // `drover restart migrate`: it runs again and succeeds.
        sup.group_command("migrate", GroupCommand::Restart, &mut l, t0 + ms(2000))
            .unwrap();
        assert_eq!(
            reason_of(&sup, "api").as_deref(),
            Some("waiting for init task migrate to finish")
        );
        let migrate = child(&sup, "migrate", 0).state.pid().unwrap();
        sup.on_exit(migrate, ExitStatus::Code(0), &mut l, t0 + ms(3500));
        sup.start_deferred(&mut l, t0 + ms(3500));
        assert_eq!(state_of(&sup, "api"), ["starting"]);
    }

    #[test]
    fn a_fatal_child_is_reported_for_exit_on_fatal() {
        let t0 = Instant::now();
        let mut l = FakeLauncher {
            fail_starts: true,
            ..FakeLauncher::default()
        };
        let mut sup = Supervisor::new(&config(vec![group("w", 1, policy())]));
        sup.start_all(&mut l, t0);
        while states(&sup) != ["fatal"] {
            assert!(sup.take_fatal().is_none(), "not fatal yet");
            let t = sup.next_deadline().expect("a retry is due");
            sup.on_deadline(&mut l, t);
        }
        assert_eq!(sup.take_fatal().as_deref(), Some("w[0] is fatal"));
    }

    #[test]
    fn an_empty_group_satisfies_its_dependants() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![
            group("db", 0, policy()),
            after(group("api", 1, policy()), &["db"]),
        ]));
        sup.start_all(&mut l, t0);
        assert_eq!(state_of(&sup, "api"), ["starting"]);
    }

    #[test]
    fn after_orders_starts_and_pulls_nothing_in() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![
            group("db", 1, policy()),
            after(group("api", 1, policy()), &["db"]),
        ]));
        sup.start_all(&mut l, t0);
        sup.on_deadline(&mut l, t0 + ms(1000));
        sup.start_deferred(&mut l, t0 + ms(1000));
        sup.on_deadline(&mut l, t0 + ms(2000));
        assert_eq!(state_of(&sup, "api"), ["running"]);
        let api = child(&sup, "api", 0).state.pid().unwrap();
        // db crashes and restarts: api is left alone.
        let db = child(&sup, "db", 0).state.pid().unwrap();
        sup.on_exit(db, ExitStatus::Signal(9), &mut l, t0 + ms(3000));
        assert_eq!(state_of(&sup, "db"), ["starting"]);
        // `drover restart db` does not restart api either.
        sup.group_command("db", GroupCommand::Restart, &mut l, t0 + ms(5000))
            .unwrap();
        assert_eq!(child(&sup, "api", 0).state.pid(), Some(api));
        assert!(l.group_signals.iter().all(|(pid, _)| *pid != api));
        // But api's own restart waits while db is not ready.
        sup.on_exit(api, ExitStatus::Signal(9), &mut l, t0 + ms(5100));
        assert_eq!(state_of(&sup, "api"), ["waiting"]);
    }

    #[test]
    fn a_reload_that_removes_the_edge_lets_waiting_children_start() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let specs = |deps: &[&str]| {
            config(vec![
                group("migrate", 1, init_task()),
                after(group("api", 1, policy()), deps),
            ])
        };
        let mut sup = Supervisor::new(&specs(&["migrate"]));
        sup.start_all(&mut l, t0);
        let migrate = child(&sup, "migrate", 0).state.pid().unwrap();
        sup.on_exit(migrate, ExitStatus::Code(1), &mut l, t0 + ms(1500));
        assert_eq!(state_of(&sup, "api"), ["waiting"]);
        let summary = sup.apply(&specs(&[]), &mut l, t0 + ms(2000));
        assert_eq!(summary.replaced, Vec::<GroupName>::new(), "taken in place");
        sup.start_deferred(&mut l, t0 + ms(2000));
        assert_eq!(state_of(&sup, "api"), ["starting"]);
        // Adding the edge back restarts nothing.
        let api = child(&sup, "api", 0).state.pid();
        sup.apply(&specs(&["migrate"]), &mut l, t0 + ms(2500));
        sup.start_deferred(&mut l, t0 + ms(2500));
        assert_eq!(child(&sup, "api", 0).state.pid(), api);
    }
}

/// Readiness other than "started": a child is running once its probe
/// says so, a failed start if it never does or dies within start_secs.
mod readiness {
    use super::*;
    use crate::config::Readiness;

    fn notify() -> Policy {
        Policy {
            ready: Readiness::Notify,
            ready_timeout: Duration::from_secs(5),
            ..policy()
        }
    }

    #[test]
    fn a_child_is_running_once_ready_not_after_start_secs() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![group("w", 1, notify())]));
        sup.start_all(&mut l, t0);
        assert_eq!(sup.next_deadline(), Some(t0 + Duration::from_secs(5)));
        sup.on_deadline(&mut l, t0 + Duration::from_secs(2));
        assert_eq!(states(&sup), ["starting"], "start_secs alone is not enough");
        let pid = pid_of(&sup, 0);
        assert!(sup.child_ready(pid, &mut l, t0 + ms(2500)));
        assert_eq!(states(&sup), ["running"]);
        assert!(sup.is_running(pid));
        assert!(!sup.child_ready(pid, &mut l, t0 + ms(2600)), "only once");
        assert_eq!(sup.next_deadline(), None);
    }

    #[test]
    fn not_ready_within_ready_timeout_is_a_failed_start_through_the_stop_path() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![group("w", 1, notify())]));
        sup.start_all(&mut l, t0);
        let pid = pid_of(&sup, 0);
        let t1 = t0 + Duration::from_secs(5);
        sup.on_deadline(&mut l, t1);
        assert_eq!(states(&sup), ["stopping"]);
        assert_eq!(l.group_signals, [(pid, Signal::Term)]);
        sup.on_exit(pid, ExitStatus::Signal(15), &mut l, t1 + ms(10));
        assert_eq!(states(&sup), ["backoff"]);
        let child = &sup.groups().next().unwrap().children[0];
        assert_eq!(child.failed_starts, 1);
        assert!(
            child
                .reason
                .as_deref()
                .unwrap()
                .contains("not ready within")
        );
        // It backs off and starts again.
        let due = sup.next_deadline().unwrap();
        sup.on_deadline(&mut l, due);
        assert_eq!(states(&sup), ["starting"]);
        assert_eq!(l.started.len(), 2);
    }

    #[test]
    fn a_ready_child_dying_within_start_secs_is_a_failed_start() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![group("w", 1, notify())]));
        sup.start_all(&mut l, t0);
        let pid = pid_of(&sup, 0);
        sup.child_ready(pid, &mut l, t0 + ms(100));
        assert_eq!(states(&sup), ["running"]);
        sup.on_exit(pid, ExitStatus::Code(1), &mut l, t0 + ms(500));
        assert_eq!(states(&sup), ["backoff"]);
        assert_eq!(sup.groups().next().unwrap().children[0].failed_starts, 1);
        // The next one is ready early and lives past start_secs: its start
        // succeeded, and the failures are forgotten.
        let due = sup.next_deadline().unwrap();
        sup.on_deadline(&mut l, due);
        let t1 = t0 + Duration::from_secs(1);
        let pid = pid_of(&sup, 0);
        sup.child_ready(pid, &mut l, t1 + ms(10));
        assert_eq!(sup.groups().next().unwrap().children[0].failed_starts, 1);
        let due = sup.next_deadline().unwrap();
        sup.on_deadline(&mut l, due);
        assert_eq!(sup.groups().next().unwrap().children[0].failed_starts, 0);
        // A later crash restarts at once, as for any running child.
        sup.on_exit(
            pid,
            ExitStatus::Code(1),
            &mut l,
            t1 + Duration::from_secs(5),
        );
        assert_eq!(states(&sup), ["starting"]);
    }

    #[test]
    fn a_rolling_restart_waits_for_the_replacement_to_be_ready() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![group("w", 1, notify())]));
        sup.start_all(&mut l, t0);
        let old = pid_of(&sup, 0);
        sup.child_ready(old, &mut l, t0 + ms(10));
        let mut changed = group("w", 1, notify());
        changed.program = Program::Command(vec!["new".into()]);
        let t1 = t0 + Duration::from_secs(2);
        sup.apply(&config(vec![changed.clone()]), &mut l, t1);
        let new = pid_of(&sup, 0);
        assert_ne!(new, old);
        // Past start_secs, not ready: the old child keeps running.
        sup.on_deadline(&mut l, t1 + Duration::from_secs(2));
        assert!(l.group_signals.is_empty());
        assert!(sup.child_ready(new, &mut l, t1 + ms(2500)));
        assert_eq!(l.group_signals, [(old, Signal::Term)], "stopped once ready");
    }

    #[test]
    fn a_replacement_never_ready_fails_its_budget_and_the_old_child_serves() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![group("w", 1, notify())]));
        sup.start_all(&mut l, t0);
        let old = pid_of(&sup, 0);
        sup.child_ready(old, &mut l, t0 + ms(10));
        let mut changed = group("w", 1, notify());
        changed.program = Program::Command(vec!["new".into()]);
        sup.apply(&config(vec![changed]), &mut l, t0 + Duration::from_secs(2));
        // Every replacement times out and is stopped; it exits when told.
        while let Some(d) = sup.next_deadline() {
            sup.on_deadline(&mut l, d);
            let stopping: Vec<Pid> = l
                .group_signals
                .iter()
                .map(|(p, _)| *p)
                .filter(|p| *p != old)
                .collect();
            for pid in stopping {
                sup.on_exit(pid, ExitStatus::Signal(15), &mut l, d);
            }
            l.group_signals.clear();
        }
        assert_eq!(states(&sup), ["fatal"]);
        assert_eq!(l.started.len(), 1 + 4, "max_restarts + 1 attempts");
        let name = GroupName::new("w").unwrap();
        let serving = sup.predecessor(&name, 0).expect("the old child is kept");
        assert_eq!(
            (serving.state.pid(), serving.state.name()),
            (Some(old), "running")
        );
    }

    #[test]
    fn failed_health_checks_restart_through_the_stop_path() {
        let t0 = Instant::now();
        let mut l = FakeLauncher::default();
        let mut sup = Supervisor::new(&config(vec![group("w", 1, policy())]));
        sup.start_all(&mut l, t0);
        let pid = pid_of(&sup, 0);
        assert!(
            !sup.health_failed(pid, 3, &mut l, t0 + ms(10)),
            "not running yet"
        );
        sup.on_deadline(&mut l, t0 + Duration::from_secs(1));
        assert!(sup.health_failed(pid, 3, &mut l, t0 + Duration::from_secs(20)));
        assert_eq!(states(&sup), ["stopping"]);
        let child = &sup.groups().next().unwrap().children[0];
        assert_eq!(child.health_restarts, 1);
        assert_eq!(child.reason.as_deref(), Some("health check failed 3 times"));
        sup.on_exit(
            pid,
            ExitStatus::Signal(15),
            &mut l,
            t0 + Duration::from_secs(21),
        );
        assert_eq!(states(&sup), ["starting"]);
        assert_ne!(pid_of(&sup, 0), pid);
    }
}
