//! Applying a new config as a difference.
//!
//! Unchanged groups keep their children; a change of `processes` alone
//! starts or stops just the difference (highest indexes first); a change of
//! restart policy alone is taken in place; a change of what runs (program,
//! environment, cwd, start method, queue wiring, user, limits) replaces the
//! children one index at a time — the new child starts, and once it is
//! `running` the old one is stopped. Removed groups stop, new groups start, and every reload
//! gives `fatal` children a fresh start budget.

use std::fmt;
use std::time::Instant;

use super::{
    AfterStop, Child, ChildState, Cx, Group, Launcher, Retiring, Supervisor, WaitReason, cx,
    start_child, stop_child, stop_predecessors,
};
use crate::config::names::{GroupName, QueueName};
use crate::config::{Config, GroupSpec, UpdateMode};
use crate::text::wording::plural;

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
    /// Queues the broker added, removed, and kept with new settings; the
    /// supervisor does not know them, the runtime fills them in.
    pub queues_added: Vec<QueueName>,
    pub queues_removed: Vec<QueueName>,
    pub queues_changed: Vec<QueueName>,
    /// `[supervisor]` changed: that waits for the next start of drover.
    pub supervisor_pending: bool,
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
        for (one, many, names) in [
            ("queue added", "queues added", &self.queues_added),
            ("queue removed", "queues removed", &self.queues_removed),
            ("queue changed", "queues changed", &self.queues_changed),
        ] {
            if !names.is_empty() {
                let what = if names.len() == 1 { one } else { many };
                let list: Vec<&str> = names.iter().map(QueueName::as_str).collect();
                parts.push(format!("{what}: {}", list.join(", ")));
            }
        }
        if self.revived > 0 {
            parts.push(format!(
                "{} restarted",
                plural(self.revived as usize, "fatal child", "fatal children")
            ));
        }
        if parts.is_empty() {
            parts.push("no group or queue changed".into());
        }
        if self.supervisor_pending {
            parts.push("changes to [supervisor] take effect the next time drover starts".into());
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
        && a.confirm_outputs == b.confirm_outputs
        && a.env == b.env
        && a.env_files == b.env_files
        && a.clear_env == b.clear_env
        && a.cwd == b.cwd
        && a.sockets == b.sockets
        && a.user == b.user
        && a.rlimits == b.rlimits
}

/// How a group's definition changed in a reload.
#[derive(Debug, Clone, Copy)]
struct Change {
    /// What runs changed: a rolling (or stop-first) replacement.
    replaced: bool,
    /// `processes` changed.
    scaled: bool,
    /// The restart policy (or readiness, health) changed: taken in place.
    policy: bool,
}

impl Change {
    fn between(old: &GroupSpec, new: &GroupSpec) -> Change {
        Change {
            replaced: !same_process(old, new),
            scaled: old.processes != new.processes,
            policy: old.policy != new.policy,
        }
    }

    fn record(self, name: &GroupName, summary: &mut ReloadSummary) {
        if self.replaced {
            summary.replaced.push(name.clone());
        }
        if self.scaled {
            summary.scaled.push(name.clone());
        }
        if self.policy && !self.replaced {
            summary.policy.push(name.clone());
        }
        if !(self.replaced || self.scaled || self.policy) {
            summary.unchanged.push(name.clone());
        }
    }
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
            let change = Change::between(&group.spec, spec);
            group.spec = spec.clone();
            if change.replaced {
                // Every current process runs the old definition: the rolling
                // restart (advance_rolling, below) replaces them in turn.
                for child in &mut group.children {
                    child.outdated = true;
                }
            }
            if change.scaled {
                self.scale_group(name, launcher, now);
            }
            change.record(name, &mut summary);
        }
        summary.revived = self.revive_fatal(launcher, now);
        self.index.touch_all();
        self.advance_rolling(launcher, now);
        self.settle();
        summary
    }

    /// What [`Self::apply`] would do with `config`, changing nothing:
    /// `drover reload --dry-run`.
    pub fn plan(&self, config: &Config) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        if self.shutting_down {
            return summary;
        }
        summary.removed = self
            .groups
            .keys()
            .filter(|name| !config.groups.contains_key(*name))
            .cloned()
            .collect();
        for (name, spec) in &config.groups {
            let Some(group) = self.groups.get(name) else {
                summary.added.push(name.clone());
                continue;
            };
            let change = Change::between(&group.spec, spec);
            change.record(name, &mut summary);
            if !change.replaced && !group.held {
                // As revive_fatal: the fatal children that stay.
                let revived = group
                    .children
                    .iter()
                    .take(spec.processes as usize)
                    .filter(|c| c.state == ChildState::Fatal && !c.outdated)
                    .count();
                summary.revived += revived as u32;
            }
        }
        summary
    }

    fn add_group(&mut self, spec: &GroupSpec, launcher: &mut impl Launcher, now: Instant) {
        let mut group = Group {
            spec: spec.clone(),
            children: (0..spec.processes).map(Child::new).collect(),
            held: false,
        };
        let mut cx = cx!(self, launcher, now);
        for child in &mut group.children {
            start_child(&group.spec, child, &mut cx);
        }
        self.groups.insert(spec.name.clone(), group);
    }

    fn remove_group(&mut self, name: &GroupName, launcher: &mut impl Launcher, now: Instant) {
        let Some(group) = self.groups.remove(name) else {
            return;
        };
        let mut cx = cx!(self, launcher, now);
        stop_predecessors(&mut self.retiring, name.as_str(), None, &mut cx);
        for child in group.children.into_iter().rev() {
            self.retire(name, &group.spec, child, Successor::None, launcher, now);
        }
    }

    /// Starts or stops the difference; the highest indexes stop first.
    fn scale_group(&mut self, name: &GroupName, launcher: &mut impl Launcher, now: Instant) {
        let Some(group) = self.groups.get_mut(name) else {
            return;
        };
        let wanted = group.spec.processes as usize;
        let surplus: Vec<Child> = if group.children.len() > wanted {
            group.children.drain(wanted..).rev().collect()
        } else {
            Vec::new()
        };
        let mut cx = cx!(self, &mut *launcher, now);
        while group.children.len() < wanted {
            // In bounds of u32: `wanted` came from a u32.
            let mut child = Child::new(group.children.len() as u32);
            if !group.held {
                // Over this turn's budget, the rest start in later turns.
                start_child(&group.spec, &mut child, &mut cx);
            }
            group.children.push(child);
        }
        let spec = group.spec.clone();
        for child in surplus {
            // An old process a rolling restart kept for this index goes too.
            let mut cx = cx!(self, &mut *launcher, now);
            stop_predecessors(
                &mut self.retiring,
                name.as_str(),
                Some(child.index),
                &mut cx,
            );
            self.retire(name, &spec, child, Successor::None, launcher, now);
        }
    }

    /// Moves `child` out of its slot: stopped now, or kept running until the
    /// new child of its index runs (rolling), or stopped now with the new
    /// child of its index starting once it has exited (stop-first).
    fn retire(
        &mut self,
        name: &GroupName,
        spec: &GroupSpec,
        mut child: Child,
        successor: Successor,
        launcher: &mut impl Launcher,
        now: Instant,
    ) {
        let (keep_for, blocks) = match successor {
            Successor::None => (None, None),
            Successor::Runs(index) => (Some(index), None),
            Successor::Waits(index) => (None, Some(index)),
        };
        if keep_for.is_none() {
            let mut cx = cx!(self, launcher, now);
            stop_child(spec, &mut child, AfterStop::Stay, &mut cx);
        }
        if keep_for.is_some() || blocks.is_some() {
            self.index.roll(name);
        }
        if child.state.pid().is_some() {
            self.retiring.push(Retiring {
                group: name.clone(),
                spec: spec.clone(),
                child,
                successor: keep_for,
                blocks,
                failure_logged: false,
            });
        }
    }

    /// Moves rolling restarts forward, one index at a time in index order.
    /// `update = "rolling"`: an outdated child with a process retires but
    /// keeps running ("waiting for its successor") while a new child starts
    /// in its slot; once that one is `running` the old one is stopped and
    /// the next index begins. `update = "stop-first"`: the old child is
    /// stopped first and its replacement starts once it has exited. An
    /// outdated child without a process is simply started anew. A
    /// replacement that fails its start budget holds the update at its
    /// index: the remaining old children keep running.
    ///
    /// Only the groups the index lists as rolling are looked at, so an exit
    /// elsewhere costs nothing here.
    pub(super) fn advance_rolling(&mut self, launcher: &mut impl Launcher, now: Instant) {
        // Flags set by this entry point (`outdated`) must be indexed first.
        self.index.settle(&self.groups);
        for name in self.index.rolling() {
            if self.is_rolling(&name) {
                self.advance_group(&name, launcher, now);
                self.index.touch_group(&name);
                self.index.settle(&self.groups);
            }
            if !self.is_rolling(&name) {
                self.index.stop_rolling(&name);
            }
        }
    }

    /// Whether `name` has a rolling update under way.
    fn is_rolling(&self, name: &GroupName) -> bool {
        self.groups
            .get(name)
            .is_some_and(|g| g.children.iter().any(|c| c.outdated || c.replacement))
            || self
                .retiring
                .iter()
                .any(|r| &r.group == name && (r.successor.is_some() || r.blocks.is_some()))
    }

    fn advance_group(&mut self, name: &GroupName, launcher: &mut impl Launcher, now: Instant) {
        let count = self.groups.get(name).map_or(0, |g| g.children.len());
        for slot in 0..count {
            // In bounds of u32: group sizes come from a u32.
            let index = slot as u32;
            if !self.advance_index(name, index, launcher, now) {
                return;
            }
        }
    }

    /// One index of [`Self::advance_group`]; false while the update has to
    /// wait at this index.
    fn advance_index(
        &mut self,
        name: &GroupName,
        index: u32,
        launcher: &mut impl Launcher,
        now: Instant,
    ) -> bool {
        let slot = index as usize;
        let waiting = self
            .retiring
            .iter()
            .any(|r| &r.group == name && r.successor == Some(index));
        let Some(group) = self.groups.get_mut(name) else {
            return false;
        };
        let Some(child) = group.children.get_mut(slot) else {
            return false;
        };
        if child.outdated && group.held {
            // A stopped group starts with the new definition later.
            child.outdated = false;
            return true;
        }
        if child.outdated && matches!(child.state, ChildState::Requested { .. }) {
            // Its start is on the way: replaced once it runs.
            return false;
        }
        if child.outdated {
            let spec = group.spec.clone();
            let mut fresh = Child::new(index);
            fresh.restarts = child.restarts;
            let old = std::mem::replace(child, fresh);
            let has_process = old.state.pid().is_some();
            let successor = match spec.update {
                // Mid-way, a replacement that a newer reload made outdated is
                // swapped; the original keeps waiting.
                UpdateMode::Rolling if has_process && !waiting => Successor::Runs(index),
                UpdateMode::StopFirst if has_process => Successor::Waits(index),
                _ => Successor::None,
            };
            let Some(slot_child) = self
                .groups
                .get_mut(name)
                .and_then(|g| g.children.get_mut(slot))
            else {
                return false;
            };
            slot_child.replacement = has_process || waiting;
            if matches!(successor, Successor::Waits(_)) {
                slot_child.state = ChildState::Waiting {
                    reason: WaitReason::Predecessor,
                    until: None,
                };
            } else {
                let mut cx = cx!(self, &mut *launcher, now);
                start_child(&spec, slot_child, &mut cx);
            }
            self.retire(name, &spec, old, successor, launcher, now);
        }
        let blocked = self
            .retiring
            .iter()
            .any(|r| &r.group == name && r.blocks == Some(index));
        if blocked {
            return false; // stop-first: the old process is still stopping
        }
        let Some(group) = self.groups.get_mut(name) else {
            return false;
        };
        let spec = group.spec.clone();
        let Some(child) = group.children.get_mut(slot) else {
            return false;
        };
        if matches!(
            child.state,
            ChildState::Waiting {
                reason: WaitReason::Predecessor,
                ..
            }
        ) {
            let mut cx = cx!(self, &mut *launcher, now);
            start_child(&spec, child, &mut cx);
        }
        let running = matches!(child.state, ChildState::Running { .. });
        let fatal = child.state == ChildState::Fatal;
        if running {
            child.replacement = false;
        }
        let replacement = child.replacement;
        let last_exit = child.last_exit;
        let predecessor = self
            .retiring
            .iter_mut()
            .find(|r| &r.group == name && r.successor == Some(index));
        match predecessor {
            Some(old) if !running => {
                if fatal && !old.failure_logged {
                    old.failure_logged = true;
                    tracing::warn!(
                        "{name}[{index}]: its replacement with the new definition failed every start ({}); \
                         the old process (pid {}) keeps running the previous definition — fix the config \
                         and save it again, or `drover restart {name}`",
                        last_exit.map_or("never started".to_owned(), super::describe),
                        old.child.state.pid().map_or(0, |p| p.0)
                    );
                }
                false // wait for this index's new child to run (or be fixed)
            }
            Some(_) => {
                let mut cx = cx!(self, launcher, now);
                stop_predecessors(&mut self.retiring, name.as_str(), Some(index), &mut cx);
                true
            }
            None => running || !replacement,
        }
    }

    /// Every reload gives fatal children a fresh budget.
    fn revive_fatal(&mut self, launcher: &mut impl Launcher, now: Instant) -> u32 {
        let mut revived = 0;
        let mut cx = cx!(self, launcher, now);
        for group in self.groups.values_mut().filter(|g| !g.held) {
            for child in &mut group.children {
                // Outdated ones are replaced by the rolling restart instead.
                if child.state == ChildState::Fatal && !child.outdated {
                    child.failed_starts = 0;
                    child.last_start = None;
                    start_child(&group.spec, child, &mut cx);
                    revived += 1;
                }
            }
        }
        revived
    }
}

/// What becomes of a retired child's slot.
#[derive(Debug, Clone, Copy)]
enum Successor {
    /// Nothing waits: stop it now.
    None,
    /// Rolling: it runs until the new child of this index runs.
    Runs(u32),
    /// Stop-first: stop it now; the new child of this index waits for it.
    Waits(u32),
}
