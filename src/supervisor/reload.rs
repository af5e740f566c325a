//! Applying a new config as a difference (DESIGN §5).
//!
//! Unchanged groups keep their children; a change of `processes` alone
//! starts or stops just the difference (highest indexes first); a change of
//! restart policy alone is taken in place; a change of what runs (program,
//! environment, cwd, start method, queue wiring) replaces the children one
//! index at a time — the new child starts, and once it is `running` the old
//! one is stopped. Removed groups stop, new groups start, and every reload
//! gives `fatal` children a fresh start budget.

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use super::{
    AfterStop, Child, ChildState, Group, Launcher, Retiring, Supervisor, start_child, stop_child,
};
use crate::config::{Config, GroupSpec};
use crate::names::GroupName;

/// What a reload changed, for the log and `drover reload`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<GroupName>,
    pub removed: Vec<GroupName>,
    pub scaled: Vec<GroupName>,
    pub replaced: Vec<GroupName>,
    pub policy: Vec<GroupName>,
    pub unchanged: Vec<GroupName>,
    /// Fatal children given a fresh start.
    pub revived: u32,
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (what, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("scaled", &self.scaled),
            ("replaced", &self.replaced),
            ("new policy", &self.policy),
        ] {
            if !names.is_empty() {
                let list: Vec<&str> = names.iter().map(GroupName::as_str).collect();
                parts.push(format!("{what}: {}", list.join(", ")));
            }
        }
        if self.revived > 0 {
            parts.push(format!("{} fatal children restarted", self.revived));
        }
        if parts.is_empty() {
            parts.push("no group changed".into());
        }
        f.write_str(&parts.join("; "))
    }
}

/// Whether two definitions run the same thing: anything else may change
/// without restarting a child.
fn same_process(a: &GroupSpec, b: &GroupSpec) -> bool {
    a.program == b.program
        && a.python_executable == b.python_executable
        && a.start_method == b.start_method
        && a.inputs == b.inputs
        && a.outputs == b.outputs
        && a.env == b.env
        && a.clear_env == b.clear_env
        && a.cwd == b.cwd
}

impl Supervisor {
    /// Applies `config` as a difference from what runs; see the module docs.
    pub fn apply(
        &mut self,
        config: &Config,
        launcher: &mut impl Launcher,
        now: Instant,
    ) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        if self.shutting_down {
            return summary;
        }
        let removed: Vec<GroupName> = self
            .groups
            .keys()
            .filter(|name| !config.groups.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            self.remove_group(&name, launcher, now);
            summary.removed.push(name);
        }
        for (name, spec) in &config.groups {
            let Some(group) = self.groups.get_mut(name) else {
                self.add_group(spec, launcher, now);
                summary.added.push(name.clone());
                continue;
            };
            let replaced = !same_process(&group.spec, spec);
            let scaled = group.spec.processes != spec.processes;
            let policy = group.spec.policy != spec.policy;
            let old = std::mem::replace(&mut group.spec, spec.clone());
            if replaced {
                self.replace_group(name, old, launcher, now);
                summary.replaced.push(name.clone());
            }
            if scaled {
                self.scale_group(name, launcher, now);
                summary.scaled.push(name.clone());
            }
            if policy && !replaced {
                summary.policy.push(name.clone());
            }
            if !(replaced || scaled || policy) {
                summary.unchanged.push(name.clone());
            }
        }
        summary.revived = self.revive_fatal(launcher, now);
        self.advance_rolling(launcher, now);
        summary
    }

    fn add_group(&mut self, spec: &GroupSpec, launcher: &mut impl Launcher, now: Instant) {
        let mut group = Group {
            spec: spec.clone(),
            children: (0..spec.processes).map(Child::new).collect(),
            held: false,
            rolling: VecDeque::new(),
        };
        for child in &mut group.children {
            start_child(&group.spec, child, launcher, now);
        }
        self.groups.insert(spec.name.clone(), group);
    }

    fn remove_group(&mut self, name: &GroupName, launcher: &mut impl Launcher, now: Instant) {
        let Some(group) = self.groups.remove(name) else {
            return;
        };
        for r in self.retiring.iter_mut().filter(|r| &r.group == name) {
            r.successor = None;
            stop_child(&r.spec, &mut r.child, AfterStop::Stay, launcher, now);
        }
        for child in group.children.into_iter().rev() {
            self.retire(name, &group.spec, child, None, launcher, now);
        }
    }

    /// Starts or stops the difference; the highest indexes stop first.
    fn scale_group(&mut self, name: &GroupName, launcher: &mut impl Launcher, now: Instant) {
        let group = self.groups.get_mut(name).expect("scaled group exists");
        let wanted = group.spec.processes as usize;
        let surplus: Vec<Child> = if group.children.len() > wanted {
            group.children.drain(wanted..).rev().collect()
        } else {
            Vec::new()
        };
        group.rolling.retain(|&i| (i as usize) < wanted);
        while group.children.len() < wanted {
            let mut child = Child::new(group.children.len() as u32);
            if !group.held {
                start_child(&group.spec, &mut child, launcher, now);
            }
            group.children.push(child);
        }
        let spec = group.spec.clone();
        for child in surplus {
            self.retire(name, &spec, child, None, launcher, now);
        }
    }

    /// Marks every current child for replacement, one index at a time.
    fn replace_group(
        &mut self,
        name: &GroupName,
        old: GroupSpec,
        launcher: &mut impl Launcher,
        now: Instant,
    ) {
        let group = self.groups.get_mut(name).expect("replaced group exists");
        let mut queue = VecDeque::new();
        let mut idle = Vec::new();
        for child in &group.children {
            match child.state.pid() {
                Some(_) => queue.push_back(child.index),
                None => idle.push(child.index),
            }
        }
        // Children without a process simply start over with the new spec.
        for index in idle {
            let child = &mut group.children[index as usize];
            *child = Child::new(index);
            if !group.held {
                start_child(&group.spec, child, launcher, now);
            }
        }
        // A rolling restart already under way continues with the newest spec:
        // the old processes it waits on keep waiting for their successor.
        group.rolling = queue;
        self.rolling_old.insert(name.clone(), old);
        self.advance_rolling(launcher, now);
    }

    /// Moves `child` out of its slot: stopped now, or (with a successor)
    /// once the new child of the same index runs.
    fn retire(
        &mut self,
        name: &GroupName,
        spec: &GroupSpec,
        mut child: Child,
        successor: Option<u32>,
        launcher: &mut impl Launcher,
        now: Instant,
    ) {
        if successor.is_none() {
            stop_child(spec, &mut child, AfterStop::Stay, launcher, now);
        }
        if child.state.pid().is_some() {
            self.retiring.push(Retiring {
                group: name.clone(),
                spec: spec.clone(),
                child,
                successor,
            });
        }
    }

    /// Moves rolling restarts forward: when the new child of the index at the
    /// front runs, its predecessor is stopped and the next index begins.
    pub(super) fn advance_rolling(&mut self, launcher: &mut impl Launcher, now: Instant) {
        let names: Vec<GroupName> = self
            .groups
            .iter()
            .filter(|(_, g)| !g.rolling.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            loop {
                let group = self.groups.get_mut(&name).expect("listed above");
                let Some(&index) = group.rolling.front() else {
                    self.rolling_old.remove(&name);
                    break;
                };
                let waiting = self
                    .retiring
                    .iter()
                    .any(|r| r.group == name && r.successor == Some(index));
                if !waiting {
                    // Not begun: retire the old child, start its successor.
                    let old_spec = self
                        .rolling_old
                        .get(&name)
                        .cloned()
                        .unwrap_or_else(|| group.spec.clone());
                    let slot = &mut group.children[index as usize];
                    let old = std::mem::replace(slot, Child::new(index));
                    if group.held {
                        group.rolling.pop_front();
                        self.retire(&name, &old_spec, old, None, launcher, now);
                        continue;
                    }
                    let group = self.groups.get_mut(&name).expect("listed above");
                    let spec = group.spec.clone();
                    start_child(&spec, &mut group.children[index as usize], launcher, now);
                    self.retire(&name, &old_spec, old, Some(index), launcher, now);
                }
                let group = self.groups.get(&name).expect("listed above");
                if !matches!(
                    group.children[index as usize].state,
                    ChildState::Running { .. }
                ) {
                    break; // wait for the new child to run (or be fixed)
                }
                for r in self
                    .retiring
                    .iter_mut()
                    .filter(|r| r.group == name && r.successor == Some(index))
                {
                    r.successor = None;
                    stop_child(&r.spec, &mut r.child, AfterStop::Stay, launcher, now);
                }
                self.groups
                    .get_mut(&name)
                    .expect("listed above")
                    .rolling
                    .pop_front();
            }
        }
    }

    /// Every reload gives fatal children a fresh budget.
    fn revive_fatal(&mut self, launcher: &mut impl Launcher, now: Instant) -> u32 {
        let mut revived = 0;
        for group in self.groups.values_mut().filter(|g| !g.held) {
            for child in &mut group.children {
                if child.state == ChildState::Fatal {
                    child.failed_starts = 0;
                    start_child(&group.spec, child, launcher, now);
                    revived += 1;
                }
            }
        }
        revived
    }
}
