//! `[group.NAME]`: one worker group. The program keys are read by
//! [`super::program`], the restart policy by [`super::policy`].

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use super::fields::{Cx, Key, Value};
use super::host::Host;
use super::lookup;
use super::model::{GroupSpec, StartMethod};
use super::policy::{self, PolicyDraft};
use super::program::{self, ProgramDraft};
use super::queue::{self, QueueRef};
use super::source::resolve;
use crate::names::GroupName;

/// Every key of a group table, in the order DESIGN §1 lists them.
pub(crate) const ALL_KEYS: [&str; 19] = [
    "command",
    "python",
    "preload",
    "python_executable",
    "start_method",
    "processes",
    "inputs",
    "outputs",
    "env",
    "clear_env",
    "cwd",
    "restart",
    "success_codes",
    "start_secs",
    "restart_delay",
    "restart_delay_max",
    "max_restarts",
    "stop_signal",
    "stop_timeout",
];

const START_METHODS: [(&str, StartMethod); 3] = [
    ("spawn", StartMethod::Spawn),
    ("fork", StartMethod::Fork),
    ("forkserver", StartMethod::Forkserver),
];

/// One `[group.NAME]` table, read. `spec` is `None` when the program could
/// not be read (an error says why).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupDraft {
    pub name: GroupName,
    /// The span of NAME in the header.
    pub span: Range<usize>,
    pub spec: Option<GroupSpec>,
    pub inputs: Vec<QueueRef>,
    pub outputs: Vec<QueueRef>,
    /// False when `inputs` or `outputs` was present but unreadable: which
    /// queues have producers and consumers is then not fully known.
    pub wiring_complete: bool,
}

/// A group's keys as read so far, defaults elsewhere.
#[derive(Default)]
struct Builder {
    program: ProgramDraft,
    policy: PolicyDraft,
    start_method: StartMethod,
    processes: Option<u32>,
    inputs: Option<Vec<QueueRef>>,
    outputs: Option<Vec<QueueRef>>,
    wiring_complete: bool,
    env: BTreeMap<String, String>,
    clear_env: bool,
    /// `cwd`, resolved, with the span of its value.
    cwd: Option<(PathBuf, Range<usize>)>,
}

/// Reads a group's table. Every key is checked even when the name is
/// invalid (`name` is `None`); only a valid name yields a draft. `header`
/// is the span of the table header, for "missing key" errors.
pub(crate) fn read(
    cx: &mut Cx<'_>,
    host: &Host,
    name: Option<GroupName>,
    (raw, span): (&str, Range<usize>),
    header: Range<usize>,
    table: &DeTable<'_>,
) -> Option<GroupDraft> {
    let mut b = Builder {
        wiring_complete: true,
        ..Builder::default()
    };
    let place = format!("in [group.{raw}]");
    for (key, value) in table.iter() {
        b.read(cx, key, value, &place);
    }
    let program = b.program.finish(cx, raw, header);
    let policy = b.policy.finish(cx);
    let cwd = match b.cwd {
        Some((cwd, span)) => {
            check_cwd(cx, raw, &cwd, span);
            cwd
        }
        None => cx.file.dir.clone(),
    };
    if let Some(command) = program.as_ref().and_then(|p| p.command_program.clone()) {
        let path = b.env.get("PATH").map(OsStr::new).or(host.path.as_deref());
        lookup::check_program(cx, raw, (&command.0, command.1), &cwd, path);
    }
    let (inputs, outputs) = (b.inputs.unwrap_or_default(), b.outputs.unwrap_or_default());
    let name = name?;
    let spec = program.map(|p| GroupSpec {
        name: name.clone(),
        program: p.program,
        python_executable: p.python_executable,
        start_method: b.start_method,
        processes: b.processes.unwrap_or(1),
        inputs: inputs.iter().map(|r| r.name.clone()).collect(),
        outputs: outputs.iter().map(|r| r.name.clone()).collect(),
        env: b.env,
        clear_env: b.clear_env,
        cwd,
        policy,
        update: Default::default(),
        file: cx.file.path.clone(),
    });
    Some(GroupDraft {
        name,
        span,
        spec,
        inputs,
        outputs,
        wiring_complete: b.wiring_complete,
    })
}

impl Builder {
    fn read(&mut self, cx: &mut Cx<'_>, key: &Key<'_>, value: &Value<'_>, place: &str) {
        let name: &str = key.get_ref();
        match name {
            _ if program::KEYS.contains(&name) => self.program.read(cx, key, value),
            _ if policy::KEYS.contains(&name) => self.policy.read(cx, key, value),
            "start_method" => {
                let method = cx.choice(name, value, "start method", &START_METHODS);
                self.start_method = method.unwrap_or_default();
            }
            "processes" => self.processes = cx.u32(name, value, 0),
            "inputs" => self.inputs = self.wiring(cx, name, value),
            "outputs" => self.outputs = self.wiring(cx, name, value),
            "env" => self.env = env(cx, value).unwrap_or_default(),
            "clear_env" => self.clear_env = cx.bool(name, value).unwrap_or_default(),
            "cwd" => self.cwd = cwd(cx, value).map(|cwd| (cwd, value.span())),
            _ => {
                let queue_keys = queue::KEYS.as_slice();
                cx.unknown_key(key, place, &ALL_KEYS, Some(("[queue.NAME]", queue_keys)));
            }
        }
    }
}

impl Builder {
    /// Reads `inputs` or `outputs`, noting whether it could be read.
    fn wiring(&mut self, cx: &mut Cx<'_>, label: &str, value: &Value<'_>) -> Option<Vec<QueueRef>> {
        let refs = queue_list(cx, label, value);
        self.wiring_complete &= refs.is_some();
        refs
    }
}

/// `inputs` / `outputs`: queue names, each at most once.
fn queue_list(cx: &mut Cx<'_>, label: &str, value: &Value<'_>) -> Option<Vec<QueueRef>> {
    let names = cx.strings(label, value)?;
    let mut refs: Vec<QueueRef> = Vec::with_capacity(names.len());
    let mut complete = true;
    for (i, (raw, span)) in names.into_iter().enumerate() {
        let Some(r) = queue::queue_ref(cx, &format!(" in `{label}[{i}]`"), raw, span) else {
            complete = false;
            continue;
        };
        if refs.iter().any(|seen| seen.name == r.name) {
            let message = format!("queue `{raw}` is listed twice in `{label}`");
            cx.error(r.span, message, Some("remove one of them".into()));
            continue;
        }
        refs.push(r);
    }
    complete.then_some(refs)
}

/// `env`: variable names without `=` or NUL, string values without NUL.
fn env(cx: &mut Cx<'_>, value: &Value<'_>) -> Option<BTreeMap<String, String>> {
    let table = cx.table("env", value)?;
    let mut vars = BTreeMap::new();
    let mut complete = true;
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        let problem = match name {
            "" => Some("environment variable names cannot be empty".to_owned()),
            _ if name.contains(['=', '\0']) => {
                let bad = if name.contains('=') {
                    "`=`"
                } else {
                    "a NUL byte"
                };
                Some(format!(
                    "invalid environment variable name `{name}`: it cannot contain {bad}"
                ))
            }
            _ => None,
        };
        if let Some(problem) = problem {
            cx.error(key.span(), problem, None);
            complete = false;
            continue;
        }
        match cx.string(&format!("env.{name}"), value) {
            Some(s) if s.contains('\0') => {
                cx.error(
                    value.span(),
                    format!("`env.{name}` cannot contain a NUL byte"),
                    None,
                );
                complete = false;
            }
            Some(s) => {
                vars.insert(name.to_owned(), s.to_owned());
            }
            None => complete = false,
        }
    }
    complete.then_some(vars)
}

/// `cwd`, resolved against the directory of the file.
fn cwd(cx: &mut Cx<'_>, value: &Value<'_>) -> Option<PathBuf> {
    let s = cx.string("cwd", value)?;
    if s.is_empty() || s.contains('\0') {
        let problem = if s.is_empty() {
            "cannot be empty; use \".\" for the config file's directory"
        } else {
            "cannot contain a NUL byte"
        };
        cx.error(value.span(), format!("`cwd` {problem}"), None);
        return None;
    }
    Some(resolve(&cx.file.dir, Path::new(s)))
}

/// A `cwd` that is not a directory fails every start: a warning, like a
/// missing program.
fn check_cwd(cx: &mut Cx<'_>, group: &str, cwd: &Path, span: Range<usize>) {
    if !cwd.is_dir() {
        let message = format!(
            "`cwd` of group `{group}` is not a directory: {}",
            cwd.display()
        );
        let help = format!(
            "starts of group `{group}` will fail and back off until it exists; other groups still run"
        );
        cx.report(
            super::diag::Diagnostic::warning(message)
                .at(cx.at(span))
                .with_help(help),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_is_every_key_read() {
        let mut read: Vec<&str> = [
            "start_method",
            "processes",
            "inputs",
            "outputs",
            "env",
            "clear_env",
            "cwd",
        ]
        .into_iter()
        .chain(program::KEYS)
        .chain(policy::KEYS)
        .collect();
        let mut all = ALL_KEYS.to_vec();
        read.sort_unstable();
        all.sort_unstable();
        assert_eq!(read, all);
    }
}
