//! Merging the files of a config directory: one `[supervisor]`, one
//! namespace for groups and queues, references between files, and the
//! assembled [`Config`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

use super::diag::Diagnostic;
use super::document::FileDraft;
use super::fields::Cx;
use super::host::Host;
use super::limits::MAX_TOTAL_PROCESSES;
use super::model::{Config, DEFAULT_DEAD_LETTER_MAX_BYTES, QueueSpec, SupervisorConfig};
use super::names::QueueName;
use super::queue::QueueRef;
use super::source::SourceFile;
use super::suggest::Suggester;

/// A file that parsed, with what it defines.
pub(crate) struct Parsed {
    pub file: SourceFile,
    pub draft: FileDraft,
}

/// What a name in the shared namespace stands for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Group,
    Queue,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Group => "group",
            Kind::Queue => "queue",
        }
    }
}

/// Where a group or queue is defined.
#[derive(Clone, Copy)]
struct Def<'a> {
    kind: Kind,
    file: &'a SourceFile,
    span: &'a Range<usize>,
}

impl Def<'_> {
    fn position(&self) -> String {
        position(self.file, self.span)
    }
}

/// `path:line:col`, to name another place in a message.
fn position(file: &SourceFile, span: &Range<usize>) -> String {
    let at = file.at(span.clone());
    match at.span {
        Some(span) => format!("{}:{}:{}", at.file.display(), span.line, span.col),
        None => at.file.display().to_string(),
    }
}

/// Checks what spans files and assembles the config. `complete` is false
/// when some file could not be read or parsed: references to names it might
/// define are then not checked. Usage warnings are only given when the
/// wiring is fully known (all references readable and defined), so that a
/// typo is not also reported as a queue without producer. Returns `None` if
/// anything is missing (an error has been reported for it).
pub(crate) fn merge(
    parsed: &[Parsed],
    complete: bool,
    host: &Host,
    diags: &mut Vec<Diagnostic>,
) -> Option<Config> {
    let supervisor = supervisor(parsed, host, diags);
    let (defs, duplicated) = namespace(parsed, diags);
    total_processes(parsed, diags);
    redis_streams(parsed, diags);
    socket_addresses(parsed, diags);
    if complete {
        let all_defined = references(parsed, &defs, diags);
        super::order::check(parsed, diags);
        let wiring_known = all_defined
            && parsed.iter().all(|p| {
                p.draft.groups.iter().all(|g| g.wiring_complete)
                    && p.draft.queues.iter().all(|q| q.wiring_complete)
            });
        if wiring_known {
            usage(parsed, &duplicated, diags);
            durable_dead_letters(parsed, diags);
        }
    }
    assemble(parsed, supervisor?)
}

/// At most one `[supervisor]`; host-dependent defaults filled in.
fn supervisor(
    parsed: &[Parsed],
    host: &Host,
    diags: &mut Vec<Diagnostic>,
) -> Option<SupervisorConfig> {
    let mut tables = parsed
        .iter()
        .filter_map(|p| p.draft.supervisor.as_ref().map(|s| (&p.file, s)));
    let first = tables.next();
    if let Some((first_file, first_table)) = first {
        for (file, table) in tables {
            let message = format!(
                "`[supervisor]` is already defined in {}",
                position(first_file, &first_table.span)
            );
            let help = "keep one `[supervisor]` table across all config files";
            diags.push(
                Diagnostic::error(message)
                    .at(file.at(table.span.clone()))
                    .with_help(help),
            );
        }
    }
    let first_dir = &parsed.first()?.file.dir;
    Some(match first {
        Some((_, s)) => SupervisorConfig {
            control_socket: s.control_socket.clone(),
            log_format: s.log_format,
            state_dir: s
                .state_dir
                .clone()
                .unwrap_or_else(|| host.default_state_dir(first_dir)),
            dead_letter_max_bytes: s.dead_letter_max_bytes,
            log_lines: s.log_lines,
            log_timestamps: s.log_timestamps,
            metrics: s.metrics,
            exit_on_fatal: s.exit_on_fatal,
        },
        None => SupervisorConfig {
            control_socket: None,
            log_format: Default::default(),
            state_dir: host.default_state_dir(first_dir),
            dead_letter_max_bytes: DEFAULT_DEAD_LETTER_MAX_BYTES,
            log_lines: crate::config::DEFAULT_LOG_LINES,
            log_timestamps: false,
            metrics: None,
            exit_on_fatal: false,
        },
    })
}

/// All groups together may not ask for more children than the kernel can
/// ever run; the error points at the group that crosses the line.
fn total_processes(parsed: &[Parsed], diags: &mut Vec<Diagnostic>) {
    let mut total: u64 = 0;
    for p in parsed {
        for g in &p.draft.groups {
            let processes = g.spec.as_ref().map_or(0, |s| s.processes);
            total += u64::from(processes);
            if total > MAX_TOTAL_PROCESSES {
                let message = format!(
                    "groups ask for {total} children in all by group `{}`, more than the kernel \
                     can run (the maximum is {MAX_TOTAL_PROCESSES}, Linux's limit on process ids)",
                    g.name
                );
                let span = g.processes_span.clone().unwrap_or_else(|| g.span.clone());
                let help = "lower `processes` of some groups";
                diags.push(
                    Diagnostic::error(message)
                        .at(p.file.at(span))
                        .with_help(help),
                );
                return;
            }
        }
    }
}

/// A listen address is bound once: a second group naming it is an error
/// that points at both places.
fn socket_addresses(parsed: &[Parsed], diags: &mut Vec<Diagnostic>) {
    let mut first: HashMap<&super::model::ListenAddr, (&str, &SourceFile, &Range<usize>)> =
        HashMap::new();
    for p in parsed {
        for g in &p.draft.groups {
            for socket in &g.sockets {
                let here = (g.name.as_str(), &p.file, &socket.span);
                let Some((group, file, span)) = first.get(&socket.spec.listen) else {
                    first.insert(&socket.spec.listen, here);
                    continue;
                };
                let message = format!(
                    "address `{}` of group `{}` is already a socket of group `{group}` ({})",
                    socket.spec.listen,
                    g.name,
                    position(file, span)
                );
                let help = "drover binds each address once; a group's sockets are its own";
                diags.push(
                    Diagnostic::error(message)
                        .at(p.file.at(socket.span.clone()))
                        .with_help(help),
                );
            }
        }
    }
}

/// Groups and queues share one namespace: a second definition of a name is
/// an error naming both places. Returns the first definition of each name,
/// and the names defined more than once.
fn namespace<'a>(
    parsed: &'a [Parsed],
    diags: &mut Vec<Diagnostic>,
) -> (HashMap<&'a str, Def<'a>>, HashSet<&'a str>) {
    let mut defs: HashMap<&str, Def<'_>> = HashMap::new();
    let mut duplicated = HashSet::new();
    for p in parsed {
        let groups = p
            .draft
            .groups
            .iter()
            .map(|g| (g.name.as_str(), Kind::Group, &g.span));
        let queues = p
            .draft
            .queues
            .iter()
            .map(|q| (q.spec.name.as_str(), Kind::Queue, &q.span));
        let mut here: Vec<_> = groups.chain(queues).collect();
        here.sort_by_key(|(_, _, span)| span.start);
        for (name, kind, span) in here {
            let def = Def {
                kind,
                file: &p.file,
                span,
            };
            match defs.get(name) {
                None => {
                    defs.insert(name, def);
                }
                Some(first) => {
                    diags.push(duplicate(name, &def, first));
                    duplicated.insert(name);
                }
            }
        }
    }
    (defs, duplicated)
}

fn duplicate(name: &str, def: &Def<'_>, first: &Def<'_>) -> Diagnostic {
    let (kind, first_kind) = (def.kind.as_str(), first.kind.as_str());
    let (message, help) = if def.kind == first.kind {
        (
            format!("{kind} `{name}` is already defined in {}", first.position()),
            "rename or remove one of them",
        )
    } else {
        (
            format!(
                "{kind} `{name}` has the same name as the {first_kind} defined in {}",
                first.position()
            ),
            "groups and queues share one namespace; rename one of them",
        )
    };
    Diagnostic::error(message)
        .at(def.file.at(def.span.clone()))
        .with_help(help)
}

/// Every queue named in `inputs`, `outputs` or `dead_letter` is defined.
/// Returns whether all were.
fn references(
    parsed: &[Parsed],
    defs: &HashMap<&str, Def<'_>>,
    diags: &mut Vec<Diagnostic>,
) -> bool {
    let mut all_defined = true;
    let mut queues: Vec<&str> = defs
        .iter()
        .filter(|(_, d)| d.kind == Kind::Queue)
        .map(|(n, _)| *n)
        .collect();
    queues.sort_unstable();
    let mut suggester = Suggester::new(&queues);
    for p in parsed {
        let mut cx = Cx::new(&p.file, diags);
        for g in &p.draft.groups {
            for (list, refs) in [("inputs", &g.inputs), ("outputs", &g.outputs)] {
                for r in refs {
                    let context = || format!("in `{list}` of group `{}`", g.name);
                    let known = (defs, &mut suggester);
                    all_defined &= check_ref(&mut cx, r, "queue", context, known);
                }
            }
        }
        for q in &p.draft.queues {
            if let Some(r) = &q.dead_letter {
                let context = || format!("for queue `{}`", q.spec.name);
                let known = (defs, &mut suggester);
                all_defined &= check_ref(&mut cx, r, "dead-letter queue", context, known);
            }
        }
    }
    all_defined
}

/// Reports `r` unless it names a queue; returns whether it does. `known`:
/// every definition, and suggestions among the queues.
fn check_ref(
    cx: &mut Cx<'_>,
    r: &QueueRef,
    what: &str,
    context: impl FnOnce() -> String,
    (defs, queues): (&HashMap<&str, Def<'_>>, &mut Suggester<'_>),
) -> bool {
    let name = r.name.as_str();
    let help = match defs.get(name) {
        Some(def) if def.kind == Kind::Queue => return true,
        Some(def) => format!(
            "`{name}` is a group (defined in {}), not a queue",
            def.position()
        ),
        None => queues
            .did_you_mean(name)
            .unwrap_or_else(|| format!("define it with a `[queue.{name}]` table")),
    };
    cx.error(
        r.span.clone(),
        format!("undefined {what} `{name}` {}", context()),
        Some(help),
    );
    false
}

/// Two queues on one stream of one server (and database) would take each
/// other's messages: an error at the second.
fn redis_streams(parsed: &[Parsed], diags: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<(String, String), (&SourceFile, &std::ops::Range<usize>, &str)> =
        HashMap::new();
    for p in parsed {
        for q in &p.draft.queues {
            let Some(r) = &q.spec.redis else {
                continue;
            };
            let key = (r.target.server().to_owned(), r.stream.clone());
            match seen.get(&key) {
                Some((file, span, other)) => {
                    let message = format!(
                        "queue `{}` uses stream `{}` on {}, as queue `{other}` does (defined at {})",
                        q.spec.name,
                        r.stream,
                        r.target,
                        position(file, span)
                    );
                    let help = "give one of them another `stream`";
                    diags.push(
                        Diagnostic::error(message)
                            .at(p.file.at(q.span.clone()))
                            .with_help(help),
                    );
                }
                None => {
                    seen.insert(key, (&p.file, &q.span, q.spec.name.as_str()));
                }
            }
        }
    }
}

/// Warns about a durable queue whose dead letters go to a queue that is
/// not durable: a message that survived every crash of drover in its queue
/// would be lost by one after it is dead-lettered.
fn durable_dead_letters(parsed: &[Parsed], diags: &mut Vec<Diagnostic>) {
    let durable: HashMap<&str, bool> = parsed
        .iter()
        .flat_map(|p| &p.draft.queues)
        .map(|q| {
            (
                q.spec.name.as_str(),
                q.spec.durable || q.spec.redis.is_some(),
            )
        })
        .collect();
    for p in parsed {
        let mut cx = Cx::new(&p.file, diags);
        for q in &p.draft.queues {
            let kept = q.spec.durable || q.spec.redis.is_some();
            let Some(r) = q.dead_letter.as_ref().filter(|_| kept) else {
                continue;
            };
            let target = r.name.as_str();
            if durable.get(target) == Some(&false) {
                let what = if q.spec.durable {
                    "durable queue"
                } else {
                    "queue on Redis"
                };
                let message = format!(
                    "{what} `{}` dead-letters into `{target}`, which is not durable",
                    q.spec.name
                );
                let help = format!(
                    "its dead letters are lost if drover stops before they are consumed; \
                     set `durable = true` on [queue.{target}]"
                );
                let diagnostic = Diagnostic::warning(message)
                    .at(cx.at(r.span.clone()))
                    .with_help(help);
                cx.report(diagnostic);
            }
        }
    }
}

/// Warns about queues that nothing writes to or nothing reads from. A
/// dead-letter target counts as written to. A name defined twice already
/// has an error; a warning about it would be noise.
fn usage(parsed: &[Parsed], duplicated: &HashSet<&str>, diags: &mut Vec<Diagnostic>) {
    let groups = || parsed.iter().flat_map(|p| &p.draft.groups);
    let read: HashSet<&str> = groups()
        .flat_map(|g| &g.inputs)
        .map(|r| r.name.as_str())
        .collect();
    let mut written: HashSet<&str> = groups()
        .flat_map(|g| &g.outputs)
        .map(|r| r.name.as_str())
        .collect();
    let queues = parsed.iter().flat_map(|p| &p.draft.queues);
    written.extend(queues.filter_map(|q| q.spec.dead_letter.as_ref().map(|d| d.as_str())));
    let read = |name: &str| read.contains(name);
    let written = |name: &str| written.contains(name);
    for p in parsed {
        for q in &p.draft.queues {
            let name = q.spec.name.as_str();
            let (message, help) = match (written(name), read(name)) {
                _ if duplicated.contains(name) => continue,
                (true, true) => continue,
                (false, false) => (
                    format!(
                        "queue `{name}` is not used: no group lists it in `inputs` or `outputs`"
                    ),
                    "connect it to groups, or remove it".to_owned(),
                ),
                (true, false) => (
                    format!("queue `{name}` has no consumer: no group lists it in `inputs`"),
                    format!(
                        "messages will pile up until it holds {} (`capacity`), then its producers block",
                        q.spec.capacity
                    ),
                ),
                (false, true) => (
                    format!("queue `{name}` has no producer: no group lists it in `outputs`"),
                    "its consumers will wait for messages that never come".to_owned(),
                ),
            };
            diags.push(
                Diagnostic::warning(message)
                    .at(p.file.at(q.span.clone()))
                    .with_help(help),
            );
        }
    }
}

/// The config, if every group and queue was read in full.
fn assemble(parsed: &[Parsed], supervisor: SupervisorConfig) -> Option<Config> {
    let mut groups = BTreeMap::new();
    let mut queues = BTreeMap::new();
    for p in parsed {
        for g in &p.draft.groups {
            groups.insert(g.name.clone(), g.spec.clone()?);
        }
        for q in &p.draft.queues {
            queues.insert(q.spec.name.clone(), q.spec.clone());
        }
    }
    for group in groups.values_mut() {
        let confirmed = |q: &&QueueName| queues.get(*q).is_some_and(|s: &QueueSpec| s.confirm);
        group.confirm_outputs = group.outputs.iter().filter(confirmed).cloned().collect();
    }
    Some(Config {
        supervisor,
        groups,
        queues,
        files: parsed.iter().map(|p| p.file.path.clone()).collect(),
    })
}
