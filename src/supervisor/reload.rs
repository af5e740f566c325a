//! Applying a new config as a difference (DESIGN §5).
//!
//! Unchanged groups keep their children; a change of `processes` alone
//! starts or stops just the difference (highest indexes first); a change of
//! restart policy alone is taken in place; a change of what runs (program,
//! environment, cwd, start method, queue wiring) replaces the children one
//! index at a time — the new child starts, and once it is `running` the old
//! one is stopped. Removed groups stop, new groups start, and every reload
//! gives `fatal` children a fresh start budget.

use std::fmt;
use std::time::Instant;

use super::{
    AfterStop, Child, ChildState, Group, Launcher, Retiring, Supervisor, start_child, stop_child,
    stop_predecessors,
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
            group.spec = spec.clone();
            if replaced {
                // Every current process runs the old definition: the rolling
                // restart (advance_rolling, below) replaces them in turn.
                for child in &mut group.children {
                    child.outdated = true;
                }
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
        stop_predecessors(&mut self.retiring, name.as_str(), None, launcher, now);
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
        while group.children.len() < wanted {
            let mut child = Child::new(group.children.len() as u32);
            if !group.held {
                start_child(&group.spec, &mut child, launcher, now);
            }
            group.children.push(child);
        }
        let spec = group.spec.clone();
        for child in surplus {
            // An old process a rolling restart kept for this index goes too.
            stop_predecessors(
                &mut self.retiring,
                name.as_str(),
                Some(child.index),
                launcher,
                now,
            );
            self.retire(name, &spec, child, None, launcher, now);
        }
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

    /// Moves rolling restarts forward, one index at a time in index order:
    /// an outdated child with a process retires but keeps running ("waiting
    /// for its successor") while a new child starts in its slot; once that
    /// one is `running` the old one is stopped and the next index begins.
    /// An outdated child without a process is simply started anew.
    pub(super) fn advance_rolling(&mut self, launcher: &mut impl Launcher, now: Instant) {
        let names: Vec<GroupName> = self
            .groups
            .iter()
            .filter(|(name, g)| {
                g.children.iter().any(|c| c.outdated)
                    || self
                        .retiring
                        .iter()
                        .any(|r| &r.group == *name && r.successor.is_some())
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.advance_group(&name, launcher, now);
        }
    }

    fn advance_group(&mut self, name: &GroupName, launcher: &mut impl Launcher, now: Instant) {
        let count = self.groups[name].children.len() as u32;
        for index in 0..count {
            let waiting = self
                .retiring
                .iter()
                .any(|r| &r.group == name && r.successor == Some(index));
            let group = self.groups.get_mut(name).expect("listed by the caller");
            let child = &group.children[index as usize];
            if child.outdated && group.held {
                // A stopped group starts with the new definition later.
                group.children[index as usize].outdated = false;
                continue;
            }
            if child.outdated {
                // Begin this index (or, mid-way, swap a replacement that a
                // newer reload made outdated: the original keeps waiting).
                let successor = (!waiting && child.state.pid().is_some()).then_some(index);
                let spec = group.spec.clone();
                let old = std::mem::replace(&mut group.children[index as usize], Child::new(index));
                let restarts = old.restarts;
                let slot = &mut group.children[index as usize];
                slot.restarts = restarts;
                start_child(&spec, slot, launcher, now);
                self.retire(name, &spec, old, successor, launcher, now);
            }
            let group = &self.groups[name];
            let running = matches!(
                group.children[index as usize].state,
                ChildState::Running { .. }
            );
            let still_waiting = self
                .retiring
                .iter()
                .any(|r| &r.group == name && r.successor == Some(index));
            if !still_waiting {
                continue;
            }
            if !running {
                return; // wait for this index's new child to run (or be fixed)
            }
            stop_predecessors(
                &mut self.retiring,
                name.as_str(),
                Some(index),
                launcher,
                now,
            );
        }
    }

    /// Every reload gives fatal children a fresh budget.
    fn revive_fatal(&mut self, launcher: &mut impl Launcher, now: Instant) -> u32 {
        let mut revived = 0;
        for group in self.groups.values_mut().filter(|g| !g.held) {
            for child in &mut group.children {
                // Outdated ones are replaced by the rolling restart instead.
                if child.state == ChildState::Fatal && !child.outdated {
                    child.failed_starts = 0;
                    start_child(&group.spec, child, launcher, now);
                    revived += 1;
                }
            }
        }
        revived
    }
}
