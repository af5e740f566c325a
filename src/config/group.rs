//! `[group.NAME]`: one worker group. The program keys are read by
//! [`super::program`], the restart policy by [`super::policy`].

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use super::fields::{Cx, Key, Value, shown};
use super::host::Host;
use super::limits::MAX_PROCESSES;
use super::lookup;
use super::model::{GroupSpec, Limit, Resource, StartMethod, UpdateMode};
use super::policy::{self, PolicyDraft};
use super::program::{self, ProgramDraft};
use super::queue::{self, QueueRef};
use super::ready;
use super::rlimits;
use super::sockets::{self, SocketDraft};
use super::source::resolve;
use super::users;
use crate::config::names::GroupName;

/// Every key of a group table, in the order the README lists them.
pub(crate) const ALL_KEYS: [&str; 29] = [
    "command",
    "python",
    "preload",
    "python_executable",
    "start_method",
    "processes",
    "inputs",
    "outputs",
    "env",
    "env_file",
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
    "update",
    "after",
    "ready",
    "ready_timeout",
    "health",
    "sockets",
    "user",
    "group",
    "rlimits",
];

const START_METHODS: [(&str, StartMethod); 3] = [
    ("spawn", StartMethod::Spawn),
    ("fork", StartMethod::Fork),
    ("forkserver", StartMethod::Forkserver),
];

const UPDATE_MODES: [(&str, UpdateMode); 2] = [
    ("rolling", UpdateMode::Rolling),
    ("stop-first", UpdateMode::StopFirst),
];

/// One `[group.NAME]` table, read. `spec` is `None` when the program could
/// not be read (an error says why).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupDraft {
    pub name: GroupName,
    /// The span of NAME in the header.
    pub span: Range<usize>,
    pub spec: Option<GroupSpec>,
    /// The span of the `processes` value, if given.
    pub processes_span: Option<Range<usize>>,
    pub inputs: Vec<QueueRef>,
    pub outputs: Vec<QueueRef>,
    /// False when `inputs` or `outputs` was present but unreadable: which
    /// queues have producers and consumers is then not fully known.
    pub wiring_complete: bool,
    /// `after`: the groups named, with their spans (checked against the
    /// merged config's groups when it is assembled).
    pub after: Vec<GroupRef>,
    /// `sockets`, with the spans of their addresses (no two groups may
    /// bind the same one).
    pub sockets: Vec<SocketDraft>,
}

/// A group named in another group's `after`, where it is named.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupRef {
    pub name: GroupName,
    pub span: Range<usize>,
}

/// A group's keys as read so far, defaults elsewhere.
#[derive(Default)]
struct Builder {
    program: ProgramDraft,
    policy: PolicyDraft,
    start_method: StartMethod,
    update: UpdateMode,
    processes: Option<u32>,
    processes_span: Option<Range<usize>>,
    inputs: Option<Vec<QueueRef>>,
    outputs: Option<Vec<QueueRef>>,
    wiring_complete: bool,
    env: BTreeMap<String, String>,
    /// `env_file`: the files, and the variables read from them.
    env_files: Vec<PathBuf>,
    file_env: BTreeMap<String, String>,
    /// `command`'s strings with their spans, for `${NAME}` checks.
    command_args: Vec<(String, Range<usize>)>,
    clear_env: bool,
    /// `cwd`, resolved, with the span of its value.
    cwd: Option<(PathBuf, Range<usize>)>,
    after: Vec<GroupRef>,
    /// `sockets`, with the span of the value.
    sockets: Option<(Vec<SocketDraft>, Range<usize>)>,
    /// `user` and `group` as written; resolved once the table is read.
    user: Option<(users::Id, Range<usize>)>,
    group: Option<(users::Id, Range<usize>)>,
    rlimits: BTreeMap<Resource, Limit>,
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
    // The name as messages quote it (it may be invalid, and long).
    let group = shown(raw);
    let place = format!("in [group.{group}]");
    cx.set_table(Some(format!("[group.{group}]")));
    for (key, value) in table.iter() {
        match key.get_ref().as_ref() {
            "rlimits" => b.rlimits = rlimits::read(cx, host, value).unwrap_or_default(),
            _ => b.read(cx, key, value, &place),
        }
    }
    let user = users::resolve(cx, host, b.user.take(), b.group.take());
    let program = b.program.finish(cx, &group, header);
    let policy = b.policy.finish(cx);
    let cwd = match b.cwd {
        Some((cwd, span)) => {
            check_cwd(cx, &group, &cwd, span);
            cwd
        }
        None => cx.file.dir.clone(),
    };
    // Env files first, `env` wins.
    let mut env = std::mem::take(&mut b.file_env);
    env.append(&mut b.env);
    if let Some(command) = program.as_ref().and_then(|p| p.command_program.clone()) {
        let notify = matches!(policy.ready, super::model::Readiness::Notify);
        let has_sockets = b.sockets.as_ref().is_some_and(|(s, _)| !s.is_empty());
        let own = drover_variables(&b.inputs, &b.outputs, has_sockets, notify);
        check_interpolation(cx, (&b.command_args, b.clear_env), &env, &own);
        let path = env.get("PATH").map(OsStr::new).or(host.path.as_deref());
        lookup::check_program(cx, &group, (&command.0, command.1), &cwd, path);
    }
    cx.set_table(None);
    let sockets = b.sockets.map(|(list, _)| list).unwrap_or_default();
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
        confirm_outputs: Vec::new(),
        env,
        env_files: b.env_files,
        clear_env: b.clear_env,
        cwd,
        policy,
        update: b.update,
        after: b.after.iter().map(|r| r.name.clone()).collect(),
        sockets: sockets.iter().map(|s| s.spec.clone()).collect(),
        file: cx.file.path.clone(),
        user,
        rlimits: b.rlimits,
    });
    Some(GroupDraft {
        name,
        span,
        spec,
        processes_span: b.processes_span,
        inputs,
        outputs,
        wiring_complete: b.wiring_complete,
        after: b.after,
        sockets,
    })
}

impl Builder {
    fn read(&mut self, cx: &mut Cx<'_>, key: &Key<'_>, value: &Value<'_>, place: &str) {
        let name: &str = key.get_ref();
        match name {
            "command" => {
                self.command_args = command_strings(value);
                self.program.read(cx, key, value);
            }
            _ if program::KEYS.contains(&name) => self.program.read(cx, key, value),
            _ if policy::KEYS.contains(&name) => self.policy.read(cx, key, value),
            _ if ready::KEYS.contains(&name) => {
                let p = self.policy.policy_mut();
                let slots = (&mut p.ready, &mut p.ready_timeout, &mut p.health);
                ready::read(cx, key, value, slots);
            }
            "start_method" => {
                let method = cx.choice(name, value, "start method", &START_METHODS);
                self.start_method = method.unwrap_or_default();
            }
            "update" => {
                let mode = cx.choice(name, value, "update mode", &UPDATE_MODES);
                self.update = mode.unwrap_or_default();
            }
            "processes" => {
                self.processes = cx.u32(name, value, 0, MAX_PROCESSES);
                self.processes_span = Some(value.span());
            }
            "inputs" => self.inputs = self.wiring(cx, name, value),
            "outputs" => self.outputs = self.wiring(cx, name, value),
            "env" => self.env = env(cx, value).unwrap_or_default(),
            "env_file" => {
                let (files, vars) = super::envfile::read(cx, value).unwrap_or_default();
                (self.env_files, self.file_env) = (files, vars);
            }
            "clear_env" => self.clear_env = cx.bool(name, value).unwrap_or_default(),
            "cwd" => self.cwd = cwd(cx, value).map(|cwd| (cwd, value.span())),
            "after" => self.after = after(cx, value, place).unwrap_or_default(),
            "sockets" => self.sockets = sockets::read(cx, value).map(|s| (s, value.span())),
            "user" => self.user = users::id(cx, name, value),
            "group" => self.group = users::id(cx, name, value),
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
    let mut seen = HashSet::with_capacity(names.len());
    let mut complete = true;
    for (i, (raw, span)) in names.into_iter().enumerate() {
        let Some(r) = queue::queue_ref(cx, &format!(" in `{label}[{i}]`"), raw, span) else {
            complete = false;
            continue;
        };
        if !seen.insert(raw) {
            let message = format!("queue `{raw}` is listed twice in {}", cx.key(label));
            cx.error(r.span, message, Some("remove one of them".into()));
            continue;
        }
        refs.push(r);
    }
    complete.then_some(refs)
}

/// `after`: group names, each at most once, not the group itself (`place`
/// is `in [group.NAME]`).
fn after(cx: &mut Cx<'_>, value: &Value<'_>, place: &str) -> Option<Vec<GroupRef>> {
    let names = cx.strings("after", value)?;
    let own = place
        .strip_prefix("in [group.")
        .and_then(|s| s.strip_suffix(']'));
    let mut refs: Vec<GroupRef> = Vec::with_capacity(names.len());
    let mut seen = HashSet::with_capacity(names.len());
    for (i, (raw, span)) in names.into_iter().enumerate() {
        let place = format!(" in `after[{i}]`");
        let kind = ("group", place.as_str());
        let Some(name) = super::fields::name(cx, kind, raw, span.clone(), GroupName::new) else {
            continue;
        };
        if own == Some(raw) {
            let message = format!("group `{raw}` cannot start after itself");
            cx.error(span, message, Some("remove it from `after`".into()));
            continue;
        }
        if !seen.insert(raw) {
            let message = format!("group `{raw}` is listed twice in {}", cx.key("after"));
            cx.error(span, message, Some("remove one of them".into()));
            continue;
        }
        refs.push(GroupRef { name, span });
    }
    Some(refs)
}

/// `env`: variable names without `=` or NUL, string values without NUL,
/// each `NAME=value` short enough for `execve`.
fn env(cx: &mut Cx<'_>, value: &Value<'_>) -> Option<BTreeMap<String, String>> {
    let table = cx.table("env", value)?;
    let mut vars = BTreeMap::new();
    let mut complete = true;
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        match env_var(cx, name, key.span(), value) {
            Some(s) => {
                vars.insert(name.to_owned(), s.to_owned());
            }
            None => complete = false,
        }
    }
    complete.then_some(vars)
}

/// The value of `env.NAME`, if the name and the value are valid.
fn env_var<'v>(
    cx: &mut Cx<'_>,
    name: &str,
    name_span: Range<usize>,
    value: &'v Value<'_>,
) -> Option<&'v str> {
    let problem = match name {
        "" => Some(format!(
            "environment variable names{} cannot be empty",
            cx.place()
        )),
        _ if name.contains(['=', '\0']) => {
            let bad = if name.contains('=') {
                "`=`"
            } else {
                "a NUL byte"
            };
            Some(format!(
                "invalid environment variable name `{}`{}: it cannot contain {bad}",
                shown(name),
                cx.place()
            ))
        }
        _ => None,
    };
    if let Some(problem) = problem {
        cx.error(name_span, problem, None);
        return None;
    }
    let label = format!("env.{}", shown(name));
    let s = cx.string(&label, value)?;
    if s.contains('\0') {
        let message = format!("{} cannot contain a NUL byte", cx.key(&label));
        cx.error(value.span(), message, None);
        return None;
    }
    // The child gets `NAME=value` as one string.
    let len = name.len() + 1 + s.len();
    cx.fits_exec(&label, len, value.span()).then_some(s)
}

/// The strings of a `command` array with their spans (its type errors are
/// [`program`]'s to report).
fn command_strings(value: &Value<'_>) -> Vec<(String, Range<usize>)> {
    match value.get_ref() {
        toml::de::DeValue::Array(items) => items
            .iter()
            .filter_map(|item| Some((item.get_ref().as_str()?.to_owned(), item.span())))
            .collect(),
        _ => Vec::new(),
    }
}

/// `${NAME}` in `command`'s arguments (not the program): every NAME must be
/// in the child's environment: drover's (its `PATH`, `HOME`, `LANG` and
/// `TZ` with `clear_env`), the env files, `env`, or drover's own variables
/// for the child.
fn check_interpolation(
    cx: &mut Cx<'_>,
    (command, clear_env): (&[(String, Range<usize>)], bool),
    env: &BTreeMap<String, String>,
    own: &[String],
) {
    use super::interpolate::{ExpandError, expand, needs_expansion};
    let args = command.get(1..).unwrap_or_default();
    if !args.iter().any(|(arg, _)| needs_expansion(arg.as_bytes())) {
        return;
    }
    let known = |name: &[u8]| -> Option<&'static [u8]> {
        let name = std::str::from_utf8(name).ok()?;
        let inherited = (!clear_env || super::model::KEPT_BY_CLEAR_ENV.contains(&name))
            && std::env::var_os(name).is_some();
        (inherited || env.contains_key(name) || own.iter().any(|o| o == name)).then_some(b"")
    };
    for (i, (arg, span)) in args.iter().enumerate() {
        let key = cx.key(&format!("command[{}]", i + 1));
        let (message, warn) = match expand(arg.as_bytes(), known) {
            Ok(_) => continue,
            Err(ExpandError::Unclosed(_)) => ("`${` without a closing `}`".to_owned(), false),
            Err(ExpandError::BadName(_, name)) => {
                let message = format!("`${{{}}}` is not a variable name", shown(&name));
                (message, false)
            }
            // drover's environment when it runs may have it: a warning,
            // unless `clear_env` keeps none of it but PATH, HOME, LANG, TZ.
            Err(ExpandError::Unknown(_, name)) => {
                let inherits = !clear_env || super::model::KEPT_BY_CLEAR_ENV.contains(&&*name);
                let message = format!(
                    "`${{{}}}` is not in the child's environment{}",
                    shown(&name),
                    if inherits {
                        " (unless drover's environment has it when it runs; else it expands to nothing)"
                    } else {
                        " (`clear_env = true`)"
                    }
                );
                (message, inherits)
            }
        };
        let message = format!("{key}: {message}");
        let help =
            "set it in `env`, an `env_file` or drover's environment; write `$$` for a literal `$`";
        if warn {
            cx.report(
                super::diag::Diagnostic::warning(message)
                    .at(cx.at(span.clone()))
                    .with_help(help),
            );
        } else {
            cx.error(span.clone(), message, Some(help.into()));
        }
    }
}

/// The variables drover sets for each child of the group being read.
fn drover_variables(
    inputs: &Option<Vec<QueueRef>>,
    outputs: &Option<Vec<QueueRef>>,
    has_sockets: bool,
    notify: bool,
) -> Vec<String> {
    let mut own: Vec<String> = ["DROVER_INDEX", "DROVER_GROUP", "DROVER_START_METHOD"]
        .map(String::from)
        .to_vec();
    for r in inputs.iter().flatten() {
        own.push(format!("DROVER_IN_{}", r.name.env_suffix()));
    }
    for r in outputs.iter().flatten() {
        own.push(format!("DROVER_OUT_{}", r.name.env_suffix()));
        own.push(format!("DROVER_CONFIRM_{}", r.name.env_suffix()));
    }
    if has_sockets {
        own.extend(["LISTEN_FDS".into(), "LISTEN_FDNAMES".into()]);
    }
    if notify {
        own.push("NOTIFY_SOCKET".into());
    }
    own
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
        let message = format!("{} {problem}", cx.key("cwd"));
        cx.error(value.span(), message, None);
        return None;
    }
    let cwd = resolve(&cx.file.dir, Path::new(s));
    let len = cwd.as_os_str().len();
    cx.fits_exec("cwd", len, value.span()).then_some(cwd)
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
            "update",
            "start_method",
            "processes",
            "inputs",
            "outputs",
            "env",
            "env_file",
            "clear_env",
            "cwd",
            "after",
            "sockets",
            "user",
            "group",
            "rlimits",
        ]
        .into_iter()
        .chain(program::KEYS)
        .chain(policy::KEYS)
        .chain(ready::KEYS)
        .collect();
        let mut all = ALL_KEYS.to_vec();
        read.sort_unstable();
        all.sort_unstable();
        assert_eq!(read, all);
    }
}
