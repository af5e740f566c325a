//! Finding child slots without scanning them: by PID, by deadline, by
//! leftover process group, by rolling update.
//!
//! A supervisor with a thousand children must not do a thousand things per
//! exit or per loop turn. Every entry point of the [`Supervisor`] records
//! which slots it may have changed ([`Index::touch`], [`Index::touch_group`],
//! [`Index::touch_all`]); before it returns it settles them
//! ([`Index::settle`]), which brings each touched slot's entries up to date.
//!
//! Entries are hints, checked against the slot when used: a deadline entry
//! counts only while the slot's deadline is still that instant (otherwise it
//! is dropped when it reaches the top of the heap), a PID entry only while
//! the slot still holds that PID. So an entry never has to be removed when
//! a slot changes, only added; the heap is rebuilt when stale entries
//! outnumber live ones. Debug builds compare every index against a full
//! scan after each settle ([`Supervisor`]'s `check_index`), so a missing
//! touch fails the tests instead of stalling a child in production.
//!
//! [`Supervisor`]: super::Supervisor

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::time::Instant;

use super::{Group, Pid};
use crate::config::names::GroupName;

/// A child slot: `group[index]`.
pub(super) type Key = (GroupName, u32);

/// Heaps smaller than this are never compacted.
const COMPACT_FLOOR: usize = 1024;

#[derive(Debug, Default)]
pub(super) struct Index {
    /// Slot deadlines, earliest first; possibly stale (see the module docs).
    deadlines: BinaryHeap<Reverse<(Instant, GroupName, u32)>>,
    /// The slot each PID was started in (or still a stale hint).
    pids: HashMap<Pid, Key>,
    /// Slots whose previous process group still has processes.
    leftovers: BTreeSet<Key>,
    /// Groups that may be in a rolling update: a superset, pruned by
    /// [`Index::stop_rolling`] once a check finds nothing to do.
    rolling: BTreeSet<GroupName>,
    touched: Vec<Key>,
    touched_groups: Vec<GroupName>,
    touched_all: bool,
    /// What each slot means to the groups that start after its group.
    pub(super) tally: super::order::Tally,
}

impl Index {
    pub fn touch(&mut self, group: &GroupName, index: u32) {
        self.touched.push((group.clone(), index));
    }

    pub fn touch_group(&mut self, group: &GroupName) {
        self.touched_groups.push(group.clone());
    }

    pub fn touch_all(&mut self) {
        self.touched_all = true;
    }

    /// Whether some change has not been settled yet.
    #[cfg(debug_assertions)]
    pub fn is_settled(&self) -> bool {
        self.touched.is_empty() && self.touched_groups.is_empty() && !self.touched_all
    }

    /// Brings the entries of every touched slot up to date.
    pub fn settle(&mut self, groups: &BTreeMap<GroupName, Group>) {
        if std::mem::take(&mut self.touched_all) {
            self.touched.clear();
            self.touched_groups.clear();
            self.rebuild(groups);
            return;
        }
        for name in std::mem::take(&mut self.touched_groups) {
            if let Some(group) = groups.get(&name) {
                for index in 0..group.children.len() {
                    // In bounds of u32: group sizes come from a u32.
                    self.arm(groups, &name, index as u32);
                }
            }
            self.leftovers.retain(|(g, i)| {
                g != &name
                    || groups
                        .get(g)
                        .is_some_and(|g| (*i as usize) < g.children.len())
            });
        }
        for (name, index) in std::mem::take(&mut self.touched) {
            self.arm(groups, &name, index);
        }
        if self.deadlines.len() > COMPACT_FLOOR {
            let slots: usize = groups.values().map(|g| g.children.len()).sum();
            if self.deadlines.len() > 4 * slots {
                self.deadlines.clear();
                for (name, group) in groups {
                    for child in &group.children {
                        if let Some(at) = child.deadline(&group.spec.policy) {
                            self.deadlines
                                .push(Reverse((at, name.clone(), child.index)));
                        }
                    }
                }
            }
        }
    }

    fn rebuild(&mut self, groups: &BTreeMap<GroupName, Group>) {
        self.deadlines.clear();
        self.leftovers.clear();
        // PID entries of processes that left their slot (retiring ones) are
        // not needed: those are found among the retiring.
        self.pids.clear();
        self.tally.begin_rebuild();
        for (name, group) in groups {
            for index in 0..group.children.len() {
                self.arm(groups, name, index as u32);
            }
        }
        self.tally.end_rebuild();
    }

    /// Adds the entries slot `group[index]` needs now.
    fn arm(&mut self, groups: &BTreeMap<GroupName, Group>, name: &GroupName, index: u32) {
        let Some(group) = groups.get(name) else {
            self.leftovers.remove(&(name.clone(), index));
            self.tally.forget(&(name.clone(), index));
            return;
        };
        let Some(child) = group.children.get(index as usize) else {
            self.leftovers.remove(&(name.clone(), index));
            self.tally.forget(&(name.clone(), index));
            return;
        };
        self.tally.arm(&(name.clone(), index), &group.spec, child);
        if let Some(at) = child.deadline(&group.spec.policy) {
            self.deadlines.push(Reverse((at, name.clone(), index)));
        }
        if let Some(pid) = child.state.pid() {
            self.pids.insert(pid, (name.clone(), index));
        }
        if child.leftover.is_some() {
            self.leftovers.insert((name.clone(), index));
        } else {
            self.leftovers.remove(&(name.clone(), index));
        }
        if child.outdated || child.replacement {
            self.rolling.insert(name.clone());
        }
    }

    /// The earliest deadline of any slot, dropping stale entries on the way.
    pub fn next_deadline(&mut self, groups: &BTreeMap<GroupName, Group>) -> Option<Instant> {
        while let Some(Reverse((at, name, index))) = self.deadlines.peek() {
            if slot_deadline(groups, name, *index) == Some(*at) {
                return Some(*at);
            }
            self.deadlines.pop();
        }
        None
    }

    /// The slots whose deadline has passed at `now`, each once. Their
    /// entries are taken: the caller touches every slot it returns.
    pub fn due(&mut self, groups: &BTreeMap<GroupName, Group>, now: Instant) -> Vec<Key> {
        let mut due: Vec<Key> = Vec::new();
        let mut seen: HashSet<Key> = HashSet::new();
        while let Some(Reverse((at, _, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, name, index))) = self.deadlines.pop() else {
                break;
            };
            if slot_deadline(groups, &name, index) == Some(at) && seen.insert((name.clone(), index))
            {
                due.push((name, index));
            }
        }
        due
    }

    /// The slot `pid` was started in, if it still holds it; the entry is
    /// removed either way (the process is gone).
    pub fn take_pid(&mut self, groups: &BTreeMap<GroupName, Group>, pid: Pid) -> Option<Key> {
        let key = self.pids.remove(&pid)?;
        (slot_pid(groups, &key.0, key.1) == Some(pid)).then_some(key)
    }

    /// The slot that holds `pid` now, if the index knows it.
    pub fn find_pid(&self, groups: &BTreeMap<GroupName, Group>, pid: Pid) -> Option<Key> {
        let key = self.pids.get(&pid)?;
        (slot_pid(groups, &key.0, key.1) == Some(pid)).then(|| key.clone())
    }

    pub fn has_leftovers(&self) -> bool {
        !self.leftovers.is_empty()
    }

    pub fn leftovers(&self) -> impl Iterator<Item = &Key> {
        self.leftovers.iter()
    }

    pub fn roll(&mut self, group: &GroupName) {
        self.rolling.insert(group.clone());
    }

    pub fn rolling(&self) -> Vec<GroupName> {
        self.rolling.iter().cloned().collect()
    }

    pub fn stop_rolling(&mut self, group: &GroupName) {
        self.rolling.remove(group);
    }

    /// Debug builds: every index agrees with a full scan of `groups`.
    #[cfg(debug_assertions)]
    pub fn check(&mut self, groups: &BTreeMap<GroupName, Group>) {
        assert!(
            self.is_settled(),
            "a supervisor entry point did not settle its changes"
        );
        let scanned = groups
            .values()
            .flat_map(|g| g.children.iter().filter_map(|c| c.deadline(&g.spec.policy)))
            .min();
        assert_eq!(
            self.next_deadline(groups),
            scanned,
            "deadline heap out of date"
        );
        for (name, group) in groups {
            for child in &group.children {
                let key = (name.clone(), child.index);
                if let Some(pid) = child.state.pid() {
                    assert_eq!(self.pids.get(&pid), Some(&key), "pid {} not indexed", pid.0);
                }
                assert_eq!(
                    child.leftover.is_some(),
                    self.leftovers.contains(&key),
                    "leftover index of {name}[{}]",
                    child.index
                );
                if child.outdated || child.replacement {
                    assert!(
                        self.rolling.contains(name),
                        "rolling update of {name} not indexed"
                    );
                }
            }
        }
    }
}

fn slot_deadline(
    groups: &BTreeMap<GroupName, Group>,
    name: &GroupName,
    index: u32,
) -> Option<Instant> {
    let group = groups.get(name)?;
    group
        .children
        .get(index as usize)?
        .deadline(&group.spec.policy)
}

fn slot_pid(groups: &BTreeMap<GroupName, Group>, name: &GroupName, index: u32) -> Option<Pid> {
    groups.get(name)?.children.get(index as usize)?.state.pid()
}
