//! The last lines of each group's output, for `drover logs`.
//!
//! Every formatted line drover writes for a child (`group[index] text`, or
//! a JSON line) is also kept here, per group, up to `[supervisor]
//! log_lines` lines and [`GROUP_BYTES`] bytes, the oldest dropped first.
//! Each line carries a sequence number, so the lines of several groups
//! come out in the order drover wrote them.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::config::names::GroupName;

/// The most bytes of lines kept per group, whatever `log_lines` says.
pub const GROUP_BYTES: usize = 1 << 20;

/// See the module documentation.
#[derive(Debug)]
pub struct History {
    lines_per_group: usize,
    groups: HashMap<GroupName, Ring>,
    /// The groups of the running config: only their lines are kept (a
    /// group a reload removed, whose children are still stopping, gets no
    /// ring again: it would stay until the next reload).
    live: HashSet<GroupName>,
    next: u64,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<(u64, Box<[u8]>)>,
    bytes: usize,
}

impl History {
    /// Keeps up to `lines_per_group` lines per group (0: none).
    pub fn new(lines_per_group: usize) -> History {
        History {
            lines_per_group,
            groups: HashMap::new(),
            live: HashSet::new(),
            next: 0,
        }
    }

    /// Keeps the lines of `chunk` (whole formatted lines, each ending with
    /// a newline) written for `group`.
    pub fn record(&mut self, group: &GroupName, chunk: &[u8]) {
        if self.lines_per_group == 0 || chunk.is_empty() {
            return;
        }
        let ring = match self.groups.get_mut(group) {
            Some(ring) => ring,
            None if self.live.contains(group) => self.groups.entry(group.clone()).or_default(),
            None => return,
        };
        for line in chunk.split_inclusive(|&b| b == b'\n') {
            ring.bytes += line.len();
            ring.lines.push_back((self.next, line.into()));
            self.next += 1;
        }
        while ring.lines.len() > self.lines_per_group || ring.bytes > GROUP_BYTES {
            match ring.lines.pop_front() {
                Some((_, line)) => ring.bytes -= line.len(),
                None => break,
            }
        }
    }

    /// The last `n` lines of each of `groups` (all groups when empty), in
    /// the order they were written, as one buffer. A group named twice is
    /// read once (a request naming one group 16,000 times fits in a control
    /// line, and would otherwise copy its ring 16,000 times).
    pub fn tail(&self, groups: &[GroupName], n: usize) -> Vec<u8> {
        let rings: Vec<&Ring> = if groups.is_empty() {
            self.groups.values().collect()
        } else {
            let named: std::collections::BTreeSet<&GroupName> = groups.iter().collect();
            named
                .into_iter()
                .filter_map(|g| self.groups.get(g))
                .collect()
        };
        let mut picked: Vec<&(u64, Box<[u8]>)> = Vec::new();
        for ring in rings {
            let skip = ring.lines.len().saturating_sub(n);
            picked.extend(ring.lines.iter().skip(skip));
        }
        picked.sort_unstable_by_key(|(seq, _)| *seq);
        let mut out = Vec::with_capacity(picked.iter().map(|(_, l)| l.len()).sum());
        for (_, line) in picked {
            out.extend_from_slice(line);
        }
        out
    }

    /// The groups of the running config: the lines of every other group
    /// are forgotten, and not kept from now on.
    pub fn set_groups<'a>(&mut self, live: impl IntoIterator<Item = &'a GroupName>) {
        self.live = live.into_iter().cloned().collect();
        self.groups.retain(|g, _| self.live.contains(g));
    }

    /// Lines and bytes kept now, for tests and status.
    #[cfg(test)]
    fn size(&self) -> (usize, usize) {
        let lines = self.groups.values().map(|r| r.lines.len()).sum();
        let bytes = self.groups.values().map(|r| r.bytes).sum();
        (lines, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> GroupName {
        GroupName::new(s).unwrap()
    }

    #[test]
    fn keeps_the_last_lines_of_each_group_in_written_order() {
        let mut h = History::new(3);
        let (a, b) = (name("a"), name("b"));
        h.set_groups([&a, &b]);
        h.record(&a, b"a[0] 1\na[0] 2\n");
        h.record(&b, b"b[0] 1\n");
        h.record(&a, b"a[0] 3\na[0] 4\n");
        assert_eq!(h.tail(&[], 10), b"a[0] 2\nb[0] 1\na[0] 3\na[0] 4\n");
        assert_eq!(h.tail(std::slice::from_ref(&a), 2), b"a[0] 3\na[0] 4\n");
        assert_eq!(h.tail(std::slice::from_ref(&b), 10), b"b[0] 1\n");
        assert_eq!(h.tail(&[name("c")], 10), b"");
        let twice = [b.clone(), a.clone(), b.clone(), b.clone()];
        assert_eq!(h.tail(&twice, 10), b"a[0] 2\nb[0] 1\na[0] 3\na[0] 4\n");
        // A reload removes `a`: its lines go, and its children still
        // stopping add none.
        h.set_groups([&b]);
        assert_eq!(h.tail(&[], 10), b"b[0] 1\n");
        h.record(&a, b"a[0] stopping\n");
        assert_eq!(h.tail(&[], 10), b"b[0] 1\n");
        assert_eq!(h.groups.len(), 1);
    }

    #[test]
    fn bounded_by_bytes_too_and_off_at_zero() {
        let mut h = History::new(1_000_000);
        let line = vec![b'x'; 1023]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        h.set_groups([&name("g")]);
        for _ in 0..2000 {
            h.record(&name("g"), &line);
        }
        let (lines, bytes) = h.size();
        assert_eq!((lines, bytes), (1024, GROUP_BYTES));
        let mut off = History::new(0);
        off.record(&name("g"), b"x\n");
        assert_eq!(off.size(), (0, 0));
    }
}
