//! `after`: which groups may start yet, kept without scanning children.
//!
//! A group satisfies the groups that start after it when every one of its
//! children is ready (`running`), or, for an init task (`restart =
//! "never"`), has exited with a success code; a group without children
//! satisfies them at once. An init task whose child failed (a failure
//! code, or `fatal`) holds its dependants until something changes.
//!
//! Two parts. The [`Tally`] lives in the index: every slot the index arms
//! (each touched slot, every slot on a rebuild) gets a [`Mark`], and each
//! group counts its satisfied and failed children, so a child's change
//! costs one map update. [`Order`] lives in the supervisor: after each
//! settle it re-evaluates only the dependants of groups whose counts
//! changed (a look at the counts of each group they name), keeps why each
//! gated group waits, and releases the groups whose waiting children may
//! start now ([`super::Supervisor::start_deferred`] starts them, in the
//! next loop turn). Waiting children of a gated group show its reason.
//!
//! `after` orders; it does not pull groups in: a dependency that crashes or
//! restarts later leaves its running dependants alone. Only starts are
//! gated, each of them (a dependant that itself restarts while its
//! dependency is down waits for it again).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::index::Key;
use super::{Child, ChildState, ExitStatus, Group, WaitReason, describe};
use crate::config::names::GroupName;
use crate::config::{GroupSpec, RestartPolicy};

/// What a child means to the groups that start after its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    /// Not (yet) satisfying them.
    Pending,
    /// Ready, or an init task that exited with a success code.
    Satisfied,
    /// `fatal`, or an init task that exited with a failure.
    Failed,
}

/// Whether `spec` is an init task: its children run once.
fn is_init_task(spec: &GroupSpec) -> bool {
    spec.policy.restart == RestartPolicy::Never
}

fn succeeded(spec: &GroupSpec, child: &Child) -> bool {
    matches!(child.last_exit, Some(ExitStatus::Code(c)) if spec.policy.success_codes.contains(&c))
}

pub(super) fn mark(spec: &GroupSpec, child: &Child) -> Mark {
    match child.state {
        ChildState::Fatal => Mark::Failed,
        ChildState::Exited if succeeded(spec, child) => Mark::Satisfied,
        ChildState::Exited => Mark::Failed,
        ChildState::Running { .. } if !is_init_task(spec) => Mark::Satisfied,
        _ => Mark::Pending,
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    satisfied: u32,
    failed: u32,
}

impl Counts {
    fn add(&mut self, mark: Mark, by: i64) {
        let field = match mark {
            Mark::Pending => return,
            Mark::Satisfied => &mut self.satisfied,
            Mark::Failed => &mut self.failed,
        };
        // Counts of slots, at most a group's size: in bounds of u32.
        *field = (i64::from(*field) + by).clamp(0, i64::from(u32::MAX)) as u32;
    }
}

/// Per-slot marks and per-group counts; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    marks: HashMap<Key, Mark>,
    counts: HashMap<GroupName, Counts>,
    /// Marks before a rebuild, to tell which slots newly failed.
    previous: HashMap<Key, Mark>,
    changed: BTreeSet<GroupName>,
    all_changed: bool,
    /// Slots that became failed since [`Tally::take_failed`].
    failed: Vec<Key>,
}

impl Tally {
    /// Before every slot is armed again (groups may have gone or changed).
    pub fn begin_rebuild(&mut self) {
        self.previous = std::mem::take(&mut self.marks);
        self.counts.clear();
        self.all_changed = true;
    }

    pub fn end_rebuild(&mut self) {
        self.previous.clear();
    }

    /// Slot `key` of a group defined by `spec` is now `child`.
    pub fn arm(&mut self, key: &Key, spec: &GroupSpec, child: &Child) {
        let new = mark(spec, child);
        let old = match self.marks.insert(key.clone(), new) {
            Some(old) => {
                if old != new {
                    let counts = self.counts.entry(key.0.clone()).or_default();
                    counts.add(old, -1);
                    counts.add(new, 1);
                    self.changed.insert(key.0.clone());
                }
                Some(old)
            }
            None => {
                self.counts.entry(key.0.clone()).or_default().add(new, 1);
                self.changed.insert(key.0.clone());
                self.previous.get(key).copied()
            }
        };
        if new == Mark::Failed && old != Some(Mark::Failed) {
            self.failed.push(key.clone());
        }
    }

    /// Slot `key` no longer exists.
    pub fn forget(&mut self, key: &Key) {
        if let Some(old) = self.marks.remove(key) {
            self.counts.entry(key.0.clone()).or_default().add(old, -1);
            self.changed.insert(key.0.clone());
        }
    }

    fn counts(&self, group: &GroupName) -> Counts {
        self.counts.get(group).copied().unwrap_or_default()
    }

    /// The groups whose counts changed since the last call (`None`: all).
    fn take_changed(&mut self) -> Option<BTreeSet<GroupName>> {
        let changed = std::mem::take(&mut self.changed);
        (!std::mem::take(&mut self.all_changed)).then_some(changed)
    }

    /// Slots that became failed since the last call.
    pub fn take_failed(&mut self) -> Vec<Key> {
        std::mem::take(&mut self.failed)
    }

    /// Debug builds: the counts agree with a full scan.
    #[cfg(debug_assertions)]
    pub fn check(&self, groups: &BTreeMap<GroupName, Group>) {
        for (name, group) in groups {
            let mut scanned = Counts::default();
            for child in &group.children {
                scanned.add(mark(&group.spec, child), 1);
            }
            assert_eq!(scanned, self.counts(name), "`after` tally of {name}");
        }
    }
}

/// Gates of the groups that start after others; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Order {
    /// For each group, the groups that name it in `after`.
    dependants: BTreeMap<GroupName, Vec<GroupName>>,
    /// Groups that may not start now, and why (in words).
    blocked: BTreeMap<GroupName, String>,
    /// Groups with children waiting for their gate.
    waiting: BTreeSet<GroupName>,
    /// Groups whose waiting children may start now.
    released: Vec<GroupName>,
}

impl Order {
    /// Why `group` may not start now, if it may not.
    pub fn blocked(&self, group: &GroupName) -> Option<&str> {
        self.blocked.get(group).map(String::as_str)
    }

    /// A child of `group` waits for its gate.
    pub fn wait(&mut self, group: &GroupName) {
        self.waiting.insert(group.clone());
    }

    pub fn has_released(&self) -> bool {
        !self.released.is_empty()
    }

    pub fn take_released(&mut self) -> Vec<GroupName> {
        std::mem::take(&mut self.released)
    }

    /// Whether some group starts after `group`.
    pub fn has_dependants(&self, group: &GroupName) -> bool {
        self.dependants.contains_key(group)
    }

    /// Re-evaluates the gates that the tally's changes may have opened or
    /// closed, and gives waiting children the gate's current reason.
    pub fn update(&mut self, groups: &mut BTreeMap<GroupName, Group>, tally: &mut Tally) {
        let to_check: Vec<GroupName> = match tally.take_changed() {
            None => {
                self.dependants.clear();
                for (name, group) in groups.iter() {
                    for dep in &group.spec.after {
                        self.dependants
                            .entry(dep.clone())
                            .or_default()
                            .push(name.clone());
                    }
                }
                self.blocked.retain(|name, _| groups.contains_key(name));
                self.waiting.retain(|name| groups.contains_key(name));
                groups
                    .iter()
                    .filter(|(_, g)| {
                        !g.spec.after.is_empty() || self.blocked.contains_key(&g.spec.name)
                    })
                    .map(|(name, _)| name.clone())
                    .collect()
            }
            Some(changed) => {
                let mut to_check = BTreeSet::new();
                for name in &changed {
                    to_check.extend(self.dependants.get(name).into_iter().flatten().cloned());
                }
                to_check.into_iter().collect()
            }
        };
        for name in to_check {
            let gate = groups.get(&name).and_then(|g| gate(&g.spec, groups, tally));
            match gate {
                None => {
                    self.blocked.remove(&name);
                    if self.waiting.remove(&name) && !self.released.contains(&name) {
                        self.released.push(name);
                    }
                }
                Some(reason) => {
                    if self.blocked.get(&name) == Some(&reason) {
                        continue;
                    }
                    if self.waiting.contains(&name)
                        && let Some(group) = groups.get_mut(&name)
                    {
                        for child in &mut group.children {
                            if matches!(
                                child.state,
                                ChildState::Waiting {
                                    reason: WaitReason::After,
                                    ..
                                }
                            ) {
                                child.reason = Some(reason.clone());
                            }
                        }
                    }
                    self.blocked.insert(name, reason);
                }
            }
        }
    }
}

/// Why `spec`'s children may not start now: the first group of its `after`
/// that does not satisfy it yet.
fn gate(spec: &GroupSpec, groups: &BTreeMap<GroupName, Group>, tally: &Tally) -> Option<String> {
    for dep in &spec.after {
        // A group the config no longer has holds nothing back.
        let Some(group) = groups.get(dep) else {
            continue;
        };
        let size = group.children.len();
        let counts = tally.counts(dep);
        if counts.satisfied as usize >= size {
            continue;
        }
        let init = is_init_task(&group.spec);
        if counts.failed > 0 {
            // Rare: one look for the child that failed.
            let failed = group
                .children
                .iter()
                .find(|c| mark(&group.spec, c) == Mark::Failed);
            let how = failed.map_or_else(String::new, |c| failure(&group.spec, c));
            return Some(if init {
                format!("init task {dep} failed ({how})")
            } else {
                format!("waiting for {dep} to be ready ({how})")
            });
        }
        return Some(if init {
            format!("waiting for init task {dep} to finish")
        } else {
            format!("waiting for {dep} to be ready")
        });
    }
    None
}

/// How a failed child failed, in words: `exit 3`, `killed by SIGKILL`,
/// `dep[0] is fatal`.
pub(super) fn failure(spec: &GroupSpec, child: &Child) -> String {
    match (&child.state, child.last_exit) {
        (ChildState::Fatal, _) => format!(
            "{}[{}] is fatal after {} failed starts",
            spec.name, child.index, child.failed_starts
        ),
        (_, Some(ExitStatus::Code(c))) => format!("exit {c}"),
        (_, Some(status)) => describe(status),
        (_, None) => "no exit status".to_owned(),
    }
}
