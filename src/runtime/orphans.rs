//! The last phase of shutdown: descendants that outlived their parents.
//!
//! drover is a child subreaper, so a process whose parent died (a daemon that
//! double-forked, a grandchild left behind) is re-parented to it. Once every
//! known child has stopped, such orphans get SIGTERM, then SIGKILL after the
//! grace period, before drover exits. They are found in `/proc`: every
//! process whose parent is drover and that is not a zombie.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal as NixSignal, kill};
use nix::unistd::{Pid as NixPid, getpid};

use crate::supervisor::Pid;
use crate::text::wording::plural;

/// How long to wait for SIGKILLed orphans to be reaped before giving up.
const REAP_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    NotStarted,
    Terminating {
        kill_at: Instant,
    },
    Killing {
        give_up_at: Instant,
    },
    Done,
}

/// State of the orphan phase; see the module documentation.
#[derive(Debug, Default)]
pub struct Orphans {
    phase: Phase,
    signalled: HashSet<Pid>,
    hurry: bool,
}

impl Orphans {
    /// A second SIGTERM/SIGINT: skip the grace period.
    pub fn kill_now(&mut self) {
        self.hurry = true;
    }

    pub fn reaped(&mut self, pid: Pid) {
        self.signalled.remove(&pid);
    }

    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// When the phase next needs the loop without an event.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Terminating { kill_at } => Some(kill_at),
            Phase::Killing { give_up_at } => Some(give_up_at),
            _ => None,
        }
    }

    /// Advances the phase; returns true when it sent SIGKILL.
    pub fn step(&mut self, now: Instant, grace: Duration) -> bool {
        let orphans = live_children();
        match self.phase {
            Phase::Done => false,
            _ if orphans.is_empty() => {
                self.phase = Phase::Done;
                false
            }
            Phase::NotStarted if !self.hurry => {
                tracing::info!(
                    "{} still running; sending SIGTERM",
                    plural(orphans.len(), "orphaned descendant", "orphaned descendants")
                );
                self.signal_new(&orphans, NixSignal::SIGTERM);
                self.phase = Phase::Terminating {
                    kill_at: crate::supervisor::after(now, grace),
                };
                false
            }
            Phase::Terminating { kill_at } if now < kill_at && !self.hurry => {
                self.signal_new(&orphans, NixSignal::SIGTERM);
                false
            }
            Phase::NotStarted | Phase::Terminating { .. } => {
                tracing::warn!(
                    "{} still running; sending SIGKILL",
                    plural(orphans.len(), "orphaned descendant", "orphaned descendants")
                );
                for pid in &orphans {
                    let _ = kill(NixPid::from_raw(pid.0), NixSignal::SIGKILL);
                }
                self.phase = Phase::Killing {
                    give_up_at: now + REAP_LIMIT,
                };
                true
            }
            Phase::Killing { give_up_at } => {
                for pid in &orphans {
                    let _ = kill(NixPid::from_raw(pid.0), NixSignal::SIGKILL);
                }
                if now >= give_up_at {
                    tracing::error!(
                        "{} survived SIGKILL for {REAP_LIMIT:?}; exiting anyway",
                        plural(orphans.len(), "descendant", "descendants")
                    );
                    self.phase = Phase::Done;
                }
                true
            }
        }
    }

    fn signal_new(&mut self, orphans: &[Pid], signal: NixSignal) {
        for pid in orphans {
            if self.signalled.insert(*pid) {
                let _ = kill(NixPid::from_raw(pid.0), signal);
                let _ = kill(NixPid::from_raw(pid.0), NixSignal::SIGCONT);
            }
        }
    }
}

/// Every non-zombie process whose parent is drover.
pub fn live_children() -> Vec<Pid> {
    let me = getpid().as_raw();
    processes(|_, f| f.ppid == me && f.state != 'Z')
}

/// Processes re-parented to drover that started at most `max_age` ago and
/// lead a session of their own (they called `setsid()`), except those
/// `known` says drover started itself: the daemons a program that
/// daemonized itself left behind, each with how long ago it started.
pub fn recent_daemons(max_age: Duration, known: impl Fn(Pid) -> bool) -> Vec<(Pid, Duration)> {
    let me = getpid().as_raw();
    let Some(uptime) = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
    else {
        return Vec::new();
    };
    let ticks = match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    };
    // One tick of slack each way: start times are in clock ticks.
    let slack = 2.0 / ticks;
    let since = uptime - max_age.as_secs_f64() - slack;
    let mut found = Vec::new();
    processes_with(|pid, f| {
        let started = f.start as f64 / ticks;
        if f.ppid == me && f.state != 'Z' && f.session == pid && started >= since {
            let age = (uptime - started - slack).max(0.0);
            found.push((Pid(pid), Duration::from_secs_f64(age)));
        }
    });
    found.retain(|&(pid, _)| !known(pid));
    found
}

/// A lookup of the live members of a process group (for `status`'s
/// leftovers): `/proc` is read once, at the first lookup, however many
/// children have leftovers.
pub fn group_members() -> impl Fn(Pid) -> Vec<i32> {
    let groups: std::cell::OnceCell<std::collections::HashMap<i32, Vec<i32>>> =
        std::cell::OnceCell::new();
    move |pgid| {
        let groups = groups.get_or_init(|| {
            let mut groups: std::collections::HashMap<i32, Vec<i32>> = Default::default();
            processes_with(|pid, f| {
                if f.state != 'Z' {
                    groups.entry(f.pgrp).or_default().push(pid);
                }
            });
            groups
        });
        groups.get(&pgid.0).cloned().unwrap_or_default()
    }
}

/// Every process in `/proc` whose stat fields `keep` accepts.
fn processes(keep: impl Fn(i32, &StatFields) -> bool) -> Vec<Pid> {
    let mut found = Vec::new();
    processes_with(|pid, f| {
        if keep(pid, f) {
            found.push(Pid(pid));
        }
    });
    found
}

/// Calls `each` with every process in `/proc` and its stat fields.
fn processes_with(mut each: impl FnMut(i32, &StatFields)) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for pid in dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        if let Some(f) = stat_fields(pid) {
            each(pid, &f);
        }
    }
}

/// The fields of `/proc/PID/stat` drover looks at.
struct StatFields {
    state: char,
    ppid: i32,
    pgrp: i32,
    session: i32,
    /// Start time, in clock ticks since boot.
    start: u64,
}

fn stat_fields(pid: i32) -> Option<StatFields> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain ") ".
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    // Fields from 3 on: state ppid pgrp session tty_nr tpgid flags minflt
    // cminflt majflt cmajflt utime stime cutime cstime priority nice
    // num_threads itrealvalue starttime.
    let fields: Vec<&str> = rest.split(' ').take(20).collect();
    Some(StatFields {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_parent_of_self() {
        let me = std::process::id() as i32;
        let f = stat_fields(me).unwrap();
        assert_eq!(f.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(f.pgrp, nix::unistd::getpgrp().as_raw());
        assert_ne!(f.state, 'Z');
    }
}
