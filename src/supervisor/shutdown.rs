//! The order of a graceful shutdown.
//!
//! Groups that read no queue stop first. A group that reads queues keeps
//! receiving until every group feeding those queues has stopped (a group
//! feeds a queue by writing to it, or by using a queue whose dead letters go
//! there) and the queues are empty — or until its own `stop_timeout` since
//! the shutdown began — and only then has its input sockets closed (its
//! `recv` returns 0). A consumer that exits on that within its
//! `stop_timeout` is never signalled; one that does not gets its
//! `stop_signal` then. Pure: the runtime tells it what is live and what is
//! drained, and it answers what to do to which group now.
//!
//! `after` comes first: a group stops only once every group that starts
//! after it has exited (its stop, or the close of its inputs, waits; a
//! consumer's `stop_timeout` then counts from that moment). The config
//! guarantees that these waits and the queue edges form no cycle.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::config::names::{GroupName, QueueName};

#[derive(Debug)]
struct Pending {
    inputs: Vec<QueueName>,
    /// Groups that write to any of `inputs` (itself excluded).
    upstream: Vec<GroupName>,
    /// `None` while groups that start after it are still live.
    deadline: Option<Instant>,
    stop_timeout: Duration,
}

/// What to do to a group now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Close its input sockets (their `recv` returns 0).
    CloseInputs,
    /// Send `stop_signal` (SIGKILL follows after `stop_timeout`).
    Stop,
}

/// See the module documentation.
#[derive(Debug)]
pub struct ShutdownOrder {
    pending: BTreeMap<GroupName, Pending>,
    /// Consumers whose inputs are closed, until they exit or their
    /// `stop_timeout` since the close passes.
    closing: BTreeMap<GroupName, Instant>,
    /// Groups that read no queue, not stopped yet.
    first: Vec<GroupName>,
    /// For each group, the groups that start after it (they stop first).
    dependants: BTreeMap<GroupName, Vec<GroupName>>,
}

impl ShutdownOrder {
    /// The order for `config`, beginning at `now`.
    pub fn new(config: &Config, now: Instant) -> ShutdownOrder {
        let mut pending = BTreeMap::new();
        let mut first = Vec::new();
        let mut dependants: BTreeMap<GroupName, Vec<GroupName>> = BTreeMap::new();
        for (name, group) in &config.groups {
            for dep in &group.after {
                dependants
                    .entry(dep.clone())
                    .or_default()
                    .push(name.clone());
            }
        }
        for (name, group) in &config.groups {
            if group.inputs.is_empty() {
                first.push(name.clone());
                continue;
            }
            // Queues whose dead letters land in this group's inputs: their
            // producers and consumers feed it too.
            let dead_letter_sources: Vec<&QueueName> = config
                .queues
                .values()
                .filter(|q| {
                    q.dead_letter
                        .as_ref()
                        .is_some_and(|d| group.inputs.contains(d))
                })
                .map(|q| &q.name)
                .collect();
            let upstream = config
                .groups
                .iter()
                .filter(|(other, g)| {
                    let writes = g.outputs.iter().any(|q| group.inputs.contains(q));
                    let feeds_dead_letters = g
                        .inputs
                        .iter()
                        .chain(&g.outputs)
                        .any(|q| dead_letter_sources.contains(&q));
                    *other != name && (writes || feeds_dead_letters)
                })
                .map(|(other, _)| other.clone())
                .collect();
            pending.insert(
                name.clone(),
                Pending {
                    inputs: group.inputs.clone(),
                    upstream,
                    deadline: (!dependants.contains_key(name))
                        .then(|| crate::supervisor::after(now, group.policy.stop_timeout)),
                    stop_timeout: group.policy.stop_timeout,
                },
            );
        }
        ShutdownOrder {
            pending,
            closing: BTreeMap::new(),
            first,
            dependants,
        }
    }

    /// Whether `group` has been dealt with: asked to stop (or to drain),
    /// and exited.
    fn has_exited(&self, group: &GroupName, live: &impl Fn(&GroupName) -> bool) -> bool {
        !live(group) && !self.first.contains(group) && !self.is_pending(group)
    }

    /// Whether every group that starts after `group` has exited.
    fn dependants_done(&self, group: &GroupName, live: &impl Fn(&GroupName) -> bool) -> bool {
        self.dependants
            .get(group)
            .is_none_or(|ds| ds.iter().all(|d| self.has_exited(d, live)))
    }

    /// What to do now: stop the groups that read no queue once the groups
    /// that start after them have exited; then close the inputs of each
    /// consumer group whose dependants have exited and whose feeders are
    /// gone and inputs drained, or whose time is up; then stop a consumer
    /// still running `stop_timeout` after its inputs were closed.
    pub fn step(
        &mut self,
        now: Instant,
        live: impl Fn(&GroupName) -> bool,
        drained: impl Fn(&QueueName) -> bool,
    ) -> Vec<(GroupName, Step)> {
        let mut steps: Vec<(GroupName, Step)> = Vec::new();
        let mut stopping_now: Vec<GroupName> = Vec::new();
        // Until nothing changes: a group without processes is done at once,
        // and the group it starts after may go in the same step.
        loop {
            let ready: Vec<GroupName> = self
                .first
                .iter()
                .filter(|g| self.dependants_done(g, &live))
                .cloned()
                .collect();
            if ready.is_empty() {
                break;
            }
            self.first.retain(|g| !ready.contains(g));
            stopping_now.extend(ready);
        }
        steps.extend(stopping_now.iter().map(|g| (g.clone(), Step::Stop)));
        let mut opened = Vec::new();
        for (name, p) in &self.pending {
            if p.deadline.is_none() && self.dependants_done(name, &live) {
                opened.push((name.clone(), p.stop_timeout));
            }
        }
        for (name, stop_timeout) in opened {
            if let Some(p) = self.pending.get_mut(&name) {
                p.deadline = Some(crate::supervisor::after(now, stop_timeout));
            }
        }
        let mut closed = Vec::new();
        for (name, p) in &self.pending {
            let Some(deadline) = p.deadline else {
                continue;
            };
            let feeders_done = p
                .upstream
                .iter()
                .all(|g| !live(g) && !stopping_now.contains(g) && self.has_exited(g, &live));
            let inputs_done = p.inputs.iter().all(&drained);
            if (feeders_done && inputs_done) || now >= deadline {
                closed.push((name.clone(), p.stop_timeout));
            }
        }
        for (name, stop_timeout) in closed {
            self.pending.remove(&name);
            self.closing
                .insert(name.clone(), crate::supervisor::after(now, stop_timeout));
            steps.push((name, Step::CloseInputs));
        }
        let mut overdue = Vec::new();
        self.closing.retain(|name, deadline| {
            if !live(name) {
                return false;
            }
            if now >= *deadline {
                overdue.push(name.clone());
                return false;
            }
            true
        });
        steps.extend(overdue.into_iter().map(|g| (g, Step::Stop)));
        steps
    }

    fn is_pending(&self, group: &GroupName) -> bool {
        self.pending.contains_key(group)
    }

    /// When the next consumer group's time runs out.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter_map(|p| p.deadline)
            .chain(self.closing.values().copied())
            .min()
    }

    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.pending.is_empty() && self.first.is_empty() && self.closing.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{GroupSpec, LogFormat, Policy, Program, StartMethod, SupervisorConfig};

    fn group(name: &str, inputs: &[&str], outputs: &[&str]) -> GroupSpec {
        GroupSpec {
            name: GroupName::new(name).unwrap(),
            program: Program::Command(vec!["true".into()]),
            python_executable: "python3".into(),
            start_method: StartMethod::Spawn,
            processes: 1,
            inputs: inputs.iter().map(|q| QueueName::new(q).unwrap()).collect(),
            outputs: outputs.iter().map(|q| QueueName::new(q).unwrap()).collect(),
            confirm_outputs: vec![],
            env: BTreeMap::new(),
            env_files: Vec::new(),
            clear_env: false,
            cwd: "/".into(),
            policy: Policy {
                stop_timeout: Duration::from_secs(10),
                ..Policy::default()
            },
            update: Default::default(),
            after: Vec::new(),
            sockets: Vec::new(),
            file: "t.toml".into(),
            user: None,
            rlimits: Default::default(),
        }
    }

    fn pipeline() -> Config {
        let groups = [
            group("producer", &[], &["jobs"]),
            group("workers", &["jobs"], &["results"]),
            group("sink", &["results"], &[]),
            group("other", &[], &[]),
        ];
        Config {
            supervisor: SupervisorConfig {
                control_socket: None,
                log_format: LogFormat::Text,
                state_dir: "/tmp".into(),
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

    fn names(v: Vec<(GroupName, Step)>) -> Vec<String> {
        v.into_iter()
            .map(|(g, step)| match step {
                Step::Stop => format!("stop {g}"),
                Step::CloseInputs => format!("close {g}"),
            })
            .collect()
    }

    #[test]
    fn stops_a_pipeline_from_its_source_to_its_sink() {
        let t0 = Instant::now();
        let mut order = ShutdownOrder::new(&pipeline(), t0);
        let mut live: Vec<&str> = vec!["producer", "workers", "sink", "other"];
        let mut undrained: Vec<&str> = vec!["jobs", "results"];
        let step = |order: &mut ShutdownOrder, live: &[&str], undrained: &[&str]| {
            names(order.step(
                t0,
                |g| live.contains(&g.as_str()),
                |q| !undrained.contains(&q.as_str()),
            ))
        };
        assert_eq!(
            step(&mut order, &live, &undrained),
            ["stop other", "stop producer"]
        );
        assert!(
            step(&mut order, &live, &undrained).is_empty(),
            "producer still live"
        );
        live.retain(|g| *g != "producer" && *g != "other");
        assert!(
            step(&mut order, &live, &undrained).is_empty(),
            "jobs not drained"
        );
        undrained.retain(|q| *q != "jobs");
        assert_eq!(step(&mut order, &live, &undrained), ["close workers"]);
        assert!(
            step(&mut order, &live, &undrained).is_empty(),
            "workers exit on their own: never signalled"
        );
        live.retain(|g| *g != "workers");
        undrained.clear();
        assert_eq!(step(&mut order, &live, &undrained), ["close sink"]);
        live.clear();
        assert!(step(&mut order, &live, &undrained).is_empty());
        assert!(order.is_done());
    }

    /// Regression: inputs were closed and `stop_signal` sent in the same
    /// step, so a consumer that exits cleanly on `recv` = 0 was signalled
    /// anyway.
    #[test]
    fn a_consumer_is_signalled_only_stop_timeout_after_its_inputs_closed() {
        let t0 = Instant::now();
        let mut order = ShutdownOrder::new(&pipeline(), t0);
        order.step(t0, |_| true, |_| false);
        assert_eq!(order.deadline(), Some(t0 + Duration::from_secs(10)));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            names(order.step(later, |_| true, |_| false)),
            ["close sink", "close workers"]
        );
        assert_eq!(order.deadline(), Some(later + Duration::from_secs(10)));
        let t = later + Duration::from_secs(9);
        assert!(order.step(t, |_| true, |_| false).is_empty());
        let t = later + Duration::from_secs(10);
        assert_eq!(
            names(order.step(t, |g| g.as_str() == "sink", |_| false)),
            ["stop sink"],
            "workers exited meanwhile; sink did not"
        );
        assert!(order.is_done());
    }

    /// api starts after db and cache; db after cache. Stops: api, then db,
    /// then cache, each once the previous one has exited.
    #[test]
    fn stops_in_reverse_after_order_waiting_for_each() {
        let t0 = Instant::now();
        let mut api = group("api", &[], &[]);
        api.after = vec![
            GroupName::new("db").unwrap(),
            GroupName::new("cache").unwrap(),
        ];
        let mut db = group("db", &[], &[]);
        db.after = vec![GroupName::new("cache").unwrap()];
        let mut config = pipeline();
        config.groups.clear();
        for g in [api, db, group("cache", &[], &[]), group("other", &[], &[])] {
            config.groups.insert(g.name.clone(), g);
        }
        let mut order = ShutdownOrder::new(&config, t0);
        let mut live: Vec<&str> = vec!["api", "db", "cache", "other"];
        let step = |order: &mut ShutdownOrder, live: &[&str]| {
            names(order.step(t0, |g| live.contains(&g.as_str()), |_| true))
        };
        assert_eq!(step(&mut order, &live), ["stop api", "stop other"]);
        assert!(step(&mut order, &live).is_empty(), "api still live");
        live.retain(|g| *g != "api");
        assert_eq!(step(&mut order, &live), ["stop db"]);
        live.retain(|g| *g != "db");
        assert_eq!(step(&mut order, &live), ["stop cache"]);
        live.clear();
        assert!(order.is_done());
    }

    /// A consumer that another group starts after drains only once that
    /// group has exited, and its `stop_timeout` runs from then.
    #[test]
    fn a_consumer_waits_for_the_groups_after_it_before_its_time_runs() {
        let t0 = Instant::now();
        let mut config = pipeline();
        let mut web = group("web", &[], &[]);
        web.after = vec![GroupName::new("sink").unwrap()];
        config.groups.insert(web.name.clone(), web);
        let mut order = ShutdownOrder::new(&config, t0);
        let first = names(order.step(t0, |_| true, |_| false));
        assert_eq!(first, ["stop other", "stop producer", "stop web"]);
        let t = t0 + Duration::from_secs(30);
        assert_eq!(
            names(order.step(t, |_| true, |_| false)),
            ["close workers"],
            "sink's time does not run while web is live"
        );
        let gone = |g: &GroupName| g.as_str() != "web";
        let t1 = t + Duration::from_secs(1);
        assert!(order.step(t1, gone, |_| false).is_empty());
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(
            names(order.step(t2, gone, |_| false)),
            ["close sink", "stop workers"]
        );
    }
}
