//! Client-side waiting for `start`, `stop` and `restart`: when has a group
//! reached the state a person asked for, or failed to?
//!
//! The supervisor answers a group command at once; the client then reads
//! `status` until every group it named is settled. Everything here is a
//! pure function of two [`Status`] snapshots (before the request, and now),
//! so the rules are unit-tested without processes.

use std::collections::HashSet;

use crate::control::status::{ChildStatus, GroupStatus, LastExit, Status};

/// What a group command asked of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Goal {
    /// Every child `running` (or `exited` successfully, for a group that
    /// does not restart after a clean exit).
    Start,
    /// Every child `stopped`, with no process and no leftovers.
    Stop,
    /// As [`Goal::Start`], and no child runs a process it ran before the
    /// request (these PIDs), nor is half-way through a rolling replacement.
    Restart { before: HashSet<i32> },
}

impl Goal {
    /// The goal of a restart of `group`, which looks like this now.
    pub fn restart(group: &GroupStatus) -> Goal {
        let before = group
            .children
            .iter()
            .flat_map(|c| {
                let replacement = c.replacement.as_ref().and_then(|r| r.pid);
                c.pid.into_iter().chain(replacement)
            })
            .collect();
        Goal::Restart { before }
    }
}

/// Where a group stands with respect to its [`Goal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not there yet: keep waiting.
    Pending,
    /// Reached; the words to print after `group: `.
    Done(String),
    /// Cannot be reached without a person's help; the words after `group: `.
    Failed(String),
}

/// True when every child of `group` runs a process: a `start` has nothing
/// to do.
pub fn already_running(group: &GroupStatus) -> bool {
    group
        .children
        .iter()
        .all(|c| c.state == "running" && c.pid.is_some())
}

/// The progress of `name` towards `goal` in `status`.
pub fn progress(goal: &Goal, name: &str, status: &Status) -> Progress {
    let Some(group) = status.groups.iter().find(|g| g.name == name) else {
        return Progress::Failed("failed: no longer in the config".to_owned());
    };
    match goal {
        Goal::Stop => stop_progress(group),
        Goal::Start => start_progress(group, |_| true),
        Goal::Restart { before } => {
            start_progress(group, |c| c.pid.is_some_and(|pid| !before.contains(&pid)))
        }
    }
}

fn stop_progress(group: &GroupStatus) -> Progress {
    let stopped = |c: &ChildStatus| {
        c.state == "stopped" && c.pid.is_none() && c.leftovers.is_empty() && c.replacement.is_none()
    };
    if group.children.iter().all(stopped) {
        Progress::Done("stopped".to_owned())
    } else {
        Progress::Pending
    }
}

/// Start and restart: `fresh` says whether a running child's process counts.
fn start_progress(group: &GroupStatus, fresh: impl Fn(&ChildStatus) -> bool) -> Progress {
    if let Some(failed) = group.children.iter().find_map(failure) {
        return Progress::Failed(format!("failed: {failed}"));
    }
    let running = |c: &ChildStatus| c.state == "running" && fresh(c) && c.replacement.is_none();
    let finished = |c: &ChildStatus| c.state == "exited" && clean(c.last_exit.as_ref());
    if !group.children.iter().all(|c| running(c) || finished(c)) {
        return Progress::Pending;
    }
    let n = group.children.iter().filter(|c| running(c)).count();
    let exited = group.children.len() - n;
    Progress::Done(match (n, exited) {
        (_, 0) => format!("running ({})", children(n)),
        (0, _) => format!("exited successfully ({})", children(exited)),
        _ => format!("running ({}), {exited} exited successfully", children(n)),
    })
}

/// Why a child (or its rolling replacement) will not get to `running`
/// without help: `fatal (exit code 1)`.
fn failure(c: &ChildStatus) -> Option<String> {
    let (state, last_exit) = match &c.replacement {
        Some(r) if is_failure(&r.state, r.last_exit.as_ref()) => (&r.state, r.last_exit.as_ref()),
        _ if is_failure(&c.state, c.last_exit.as_ref()) => (&c.state, c.last_exit.as_ref()),
        _ => return None,
    };
    Some(match last_exit {
        Some(e) => format!("{state} ({})", describe(e)),
        None => state.clone(),
    })
}

fn is_failure(state: &str, last_exit: Option<&LastExit>) -> bool {
    state == "fatal" || (state == "exited" && !clean(last_exit))
}

fn clean(last_exit: Option<&LastExit>) -> bool {
    matches!(last_exit, Some(LastExit::Code(0)))
}

/// `exit code 1` / `killed by SIGKILL`, as drover's own log lines say it.
pub fn describe(e: &LastExit) -> String {
    match e {
        LastExit::Code(c) => format!("exit code {c}"),
        LastExit::Signal(s) => format!("killed by {s}"),
    }
}

/// `1 child` / `2 children`.
fn children(n: usize) -> String {
    if n == 1 {
        "1 child".to_owned()
    } else {
        format!("{n} children")
    }
}

/// What the children of `name` are doing, for a wait that timed out:
/// `1 stopping, 1 stopped`.
pub fn summary(name: &str, status: &Status) -> String {
    let Some(group) = status.groups.iter().find(|g| g.name == name) else {
        return "no longer in the config".to_owned();
    };
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for c in &group.children {
        match counts.iter_mut().find(|(s, _)| *s == c.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((&c.state, 1)),
        }
    }
    let with_leftovers = group
        .children
        .iter()
        .filter(|c| !c.leftovers.is_empty())
        .count();
    let mut parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    if with_leftovers > 0 {
        parts.push(format!("{with_leftovers} with leftover processes"));
    }
    if parts.is_empty() {
        "no children".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::status::Replacement;

    fn child(state: &str, pid: Option<i32>, last_exit: Option<LastExit>) -> ChildStatus {
        ChildStatus {
            index: 0,
            pid,
            state: state.to_owned(),
            uptime_ms: None,
            restarts: 0,
            last_exit,
            reason: None,
            leftovers: vec![],
            replacement: None,
            ready: state == "running",
            status_text: None,
            health_failures: 0,
            health_restarts: 0,
        }
    }

    fn status(children: Vec<ChildStatus>) -> Status {
        Status {
            config_error: None,
            reload_reading_ms: None,
            retiring: vec![],
            groups: vec![GroupStatus {
                name: "web".into(),
                start_method: "exec".into(),
                processes: children.len() as u32,
                state: "running".into(),
                after: vec![],
                children,
            }],
            queues: vec![],
        }
    }

    #[test]
    fn stop_waits_for_leftovers_and_allows_empty_groups() {
        let mut c = child("stopped", None, None);
        c.leftovers = vec![7];
        assert_eq!(
            progress(&Goal::Stop, "web", &status(vec![c])),
            Progress::Pending
        );
        let done = Progress::Done("stopped".into());
        assert_eq!(progress(&Goal::Stop, "web", &status(vec![])), done);
        let s = status(vec![child("stopped", None, None)]);
        assert_eq!(progress(&Goal::Stop, "web", &s), done);
        let s = status(vec![child("stopping", Some(3), None)]);
        assert_eq!(progress(&Goal::Stop, "web", &s), Progress::Pending);
    }

    #[test]
    fn start_ends_running_or_failed() {
        let s = status(vec![
            child("running", Some(1), None),
            child("backoff", None, None),
        ]);
        assert_eq!(progress(&Goal::Start, "web", &s), Progress::Pending);
        let s = status(vec![
            child("running", Some(1), None),
            child("running", Some(2), None),
        ]);
        assert_eq!(
            progress(&Goal::Start, "web", &s),
            Progress::Done("running (2 children)".into())
        );
        let s = status(vec![child("fatal", None, Some(LastExit::Code(1)))]);
        assert_eq!(
            progress(&Goal::Start, "web", &s),
            Progress::Failed("failed: fatal (exit code 1)".into())
        );
        let s = status(vec![child("exited", None, Some(LastExit::Code(0)))]);
        assert_eq!(
            progress(&Goal::Start, "web", &s),
            Progress::Done("exited successfully (1 child)".into())
        );
        let s = status(vec![child(
            "exited",
            None,
            Some(LastExit::Signal("SIGKILL".into())),
        )]);
        assert_eq!(
            progress(&Goal::Start, "web", &s),
            Progress::Failed("failed: exited (killed by SIGKILL)".into())
        );
    }

    #[test]
    fn restart_needs_new_pids_and_no_replacement() {
        let before = status(vec![child("running", Some(10), None)]);
        let goal = Goal::restart(&before.groups[0]);
        assert_eq!(progress(&goal, "web", &before), Progress::Pending);
        let mut rolling = child("running", Some(10), None);
        rolling.replacement = Some(Replacement {
            pid: Some(11),
            state: "starting".into(),
            restarts: 0,
            last_exit: None,
            reason: None,
        });
        assert_eq!(
            progress(&goal, "web", &status(vec![rolling])),
            Progress::Pending
        );
        let after = status(vec![child("running", Some(11), None)]);
        assert_eq!(
            progress(&goal, "web", &after),
            Progress::Done("running (1 child)".into())
        );
    }

    #[test]
    fn a_failed_replacement_fails_the_restart() {
        let mut c = child("running", Some(10), None);
        c.replacement = Some(Replacement {
            pid: None,
            state: "fatal".into(),
            restarts: 3,
            last_exit: Some(LastExit::Code(2)),
            reason: None,
        });
        let goal = Goal::Restart {
            before: HashSet::from([10]),
        };
        assert_eq!(
            progress(&goal, "web", &status(vec![c])),
            Progress::Failed("failed: fatal (exit code 2)".into())
        );
    }

    #[test]
    fn a_removed_group_fails_and_summaries_count_states() {
        let s = status(vec![
            child("stopping", Some(1), None),
            child("stopping", Some(2), None),
            child("stopped", None, None),
        ]);
        assert!(matches!(
            progress(&Goal::Stop, "gone", &s),
            Progress::Failed(_)
        ));
        assert_eq!(summary("web", &s), "2 stopping, 1 stopped");
    }
}
