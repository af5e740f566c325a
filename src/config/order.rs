//! `after` across the merged config: every named group exists, the start
//! order has no cycle, and neither has the stop order.
//!
//! The stop order is one graph: a group that feeds a queue (writes to it,
//! or uses a queue whose dead letters go to it) stops before the groups that
//! read it, and a group stops before the groups it starts after. Queue edges
//! alone may form a cycle (a shutdown then falls back on each consumer's
//! `stop_timeout`, as it always has); a cycle through an `after` edge could
//! never be honoured, so it is an error at that `after` entry.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::diag::Diagnostic;
use super::group::GroupRef;
use super::merge::Parsed;
use super::names::{GroupName, QueueName};
use super::suggest::Suggester;

/// Why one group stops before another (an edge of the stop order).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Edge {
    /// The first group starts after the second.
    After,
    /// The first group feeds this queue, which the second reads.
    Queue(QueueName),
}

/// Checks every `after` of `parsed`; returns false if an error was reported.
pub(crate) fn check(parsed: &[Parsed], diags: &mut Vec<Diagnostic>) -> bool {
    // Both, so that every error shows at once (an undefined name is no
    // node of the graph: it closes no cycle).
    let defined = defined(parsed, diags);
    acyclic(parsed, diags) && defined
}

/// Every name in an `after` is a group of the merged config.
fn defined(parsed: &[Parsed], diags: &mut Vec<Diagnostic>) -> bool {
    let mut groups: Vec<&str> = parsed
        .iter()
        .flat_map(|p| p.draft.groups.iter().map(|g| g.name.as_str()))
        .collect();
    groups.sort_unstable();
    let queues: BTreeSet<&str> = parsed
        .iter()
        .flat_map(|p| p.draft.queues.iter().map(|q| q.spec.name.as_str()))
        .collect();
    let mut suggester = Suggester::new(&groups);
    let mut ok = true;
    for p in parsed {
        for g in &p.draft.groups {
            for r in &g.after {
                let name = r.name.as_str();
                if groups.binary_search(&name).is_ok() {
                    continue;
                }
                ok = false;
                let help = if queues.contains(name) {
                    format!("`{name}` is a queue; `after` names groups")
                } else {
                    suggester
                        .did_you_mean(name)
                        .unwrap_or_else(|| format!("define it with a `[group.{name}]` table"))
                };
                let message = format!("undefined group `{name}` in `after` of group `{}`", g.name);
                diags.push(
                    Diagnostic::error(message)
                        .at(p.file.at(r.span.clone()))
                        .with_help(help),
                );
            }
        }
    }
    ok
}

/// The stop-order graph: for each group, the groups it stops before, and why.
type Graph = BTreeMap<GroupName, Vec<(GroupName, Edge)>>;

fn graph(parsed: &[Parsed]) -> Graph {
    let groups = parsed.iter().flat_map(|p| &p.draft.groups);
    let dead_letters: HashMap<&QueueName, &QueueName> = parsed
        .iter()
        .flat_map(|p| &p.draft.queues)
        .filter_map(|q| q.dead_letter.as_ref().map(|d| (&q.spec.name, &d.name)))
        .collect();
    let mut readers: HashMap<&QueueName, Vec<&GroupName>> = HashMap::new();
    for g in groups.clone() {
        for r in &g.inputs {
            readers.entry(&r.name).or_default().push(&g.name);
        }
    }
    let mut graph = Graph::new();
    for g in groups {
        let edges = graph.entry(g.name.clone()).or_default();
        for r in &g.after {
            edges.push((r.name.clone(), Edge::After));
        }
        // The queues this group feeds: its outputs, and the dead-letter
        // queues of every queue it uses.
        let mut fed: Vec<&QueueName> = g.outputs.iter().map(|r| &r.name).collect();
        for r in g.inputs.iter().chain(&g.outputs) {
            if let Some(d) = dead_letters.get(&r.name) {
                fed.push(d);
            }
        }
        for queue in fed {
            for reader in readers.get(queue).into_iter().flatten() {
                if **reader != g.name {
                    edges.push(((*reader).clone(), Edge::Queue(queue.clone())));
                }
            }
        }
    }
    graph
}

/// A path from `from` to `to` (its edges), following only the edges
/// `follow` accepts; breadth first, so the shortest.
fn path(
    graph: &Graph,
    from: &GroupName,
    to: &GroupName,
    follow: impl Fn(&Edge) -> bool,
) -> Option<Vec<(GroupName, GroupName, Edge)>> {
    let mut parent: BTreeMap<&GroupName, (&GroupName, &Edge)> = BTreeMap::new();
    let mut queue = VecDeque::from([from]);
    while let Some(node) = queue.pop_front() {
        if node == to {
            let mut steps = Vec::new();
            let mut at = to;
            while at != from {
                let (prev, edge) = parent[&at];
                steps.push((prev.clone(), at.clone(), edge.clone()));
                at = prev;
            }
            steps.reverse();
            return Some(steps);
        }
        for (next, edge) in graph.get(node).into_iter().flatten() {
            if follow(edge) && next != from && !parent.contains_key(next) {
                parent.insert(next, (node, edge));
                queue.push_back(next);
            }
        }
    }
    None
}

/// No `after` entry closes a cycle, in the start order or the stop order.
/// Each cycle is reported once, at the first `after` entry on it.
fn acyclic(parsed: &[Parsed], diags: &mut Vec<Diagnostic>) -> bool {
    let graph = graph(parsed);
    let mut reported: BTreeSet<GroupName> = BTreeSet::new();
    let mut ok = true;
    for p in parsed {
        for g in &p.draft.groups {
            for r in &g.after {
                if reported.contains(&g.name) && reported.contains(&r.name) {
                    continue;
                }
                let Some((diag, cycle)) = cycle_at(&graph, &g.name, r) else {
                    continue;
                };
                ok = false;
                reported.insert(r.name.clone());
                reported.extend(cycle);
                diags.push(diag.at(p.file.at(r.span.clone())));
            }
        }
    }
    ok
}

/// The error for the cycle that `group`'s `after` entry `r` closes, if
/// any, and the groups on that cycle.
fn cycle_at(
    graph: &Graph,
    group: &GroupName,
    r: &GroupRef,
) -> Option<(Diagnostic, Vec<GroupName>)> {
    if let Some(back) = path(graph, &r.name, group, |e| *e == Edge::After) {
        // group → r.name → … → group, in the words of `after`.
        let names: Vec<&str> = std::iter::once(group.as_str())
            .chain(back.iter().map(|(from, _, _)| from.as_str()))
            .chain(std::iter::once(group.as_str()))
            .collect();
        let message = format!("`after` makes a cycle: {}", names.join(" → "));
        let help = format!(
            "each group starts after the next one: none of them could ever start; \
             remove `{}` from `after` of group `{group}`, or another entry of the cycle",
            r.name
        );
        let cycle = back.into_iter().map(|(_, to, _)| to).collect();
        return Some((Diagnostic::error(message).with_help(help), cycle));
    }
    let back = path(graph, &r.name, group, |_| true)?;
    let mut names = vec![group.as_str(), r.name.as_str()];
    let mut why = vec![format!(
        "`{group}` stops before `{}` (it starts after it)",
        r.name
    )];
    for (from, to, edge) in &back {
        names.push(to.as_str());
        why.push(match edge {
            Edge::After => format!("`{from}` stops before `{to}` (it starts after it)"),
            Edge::Queue(q) => {
                format!("`{from}` stops before `{to}` (it feeds queue `{q}`, which `{to}` reads)")
            }
        });
    }
    let message = format!(
        "`after` makes a cycle in the stop order: {}",
        names.join(" → ")
    );
    let help = format!(
        "{}: no shutdown order can honour that; remove `{}` from `after` of group `{group}`, \
         or change the queue wiring",
        why.join(", "),
        r.name
    );
    let cycle = back.iter().map(|(_, to, _)| to.clone()).collect();
    Some((Diagnostic::error(message).with_help(help), cycle))
}
