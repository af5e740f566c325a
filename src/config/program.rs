//! What a group runs: `command`, or `python` with `preload` and
//! `python_executable`. Whether `command[0]` exists is [`super::lookup`]'s.

use std::ffi::OsString;
use std::ops::Range;

use super::fields::{Cx, Key, Value, shown};
use super::model::Program;

pub(crate) const KEYS: [&str; 4] = ["command", "python", "preload", "python_executable"];

/// The program keys of one group, as read so far. Key spans are kept apart
/// from values: a key with a bad value still counts as present.
#[derive(Default)]
pub(crate) struct ProgramDraft {
    command_key: Option<Range<usize>>,
    python_key: Option<Range<usize>>,
    preload_key: Option<Range<usize>>,
    executable_key: Option<Range<usize>>,
    command: Option<Vec<OsString>>,
    /// `command[0]` and its span, to look it up once `cwd` and `env` are known.
    program: Option<(String, Range<usize>)>,
    python: Option<(String, String)>,
    preload: Vec<String>,
    python_executable: Option<OsString>,
}

/// A group's program, once both/neither and misplaced keys are ruled out.
pub(crate) struct ProgramSpec {
    pub program: Program,
    pub python_executable: OsString,
    /// `command[0]` and its span, for command groups.
    pub command_program: Option<(String, Range<usize>)>,
}

impl ProgramDraft {
    /// Reads one of [`KEYS`].
    pub fn read(&mut self, cx: &mut Cx<'_>, key: &Key<'_>, value: &Value<'_>) {
        let span = Some(key.span());
        match key.get_ref().as_ref() {
            "command" => {
                self.command_key = span;
                self.read_command(cx, value);
            }
            "python" => {
                self.python_key = span;
                self.python = python_target(cx, value);
            }
            "preload" => {
                self.preload_key = span;
                self.preload = preload(cx, value).unwrap_or_default();
            }
            _ => {
                self.executable_key = span;
                self.python_executable = os_string(cx, "python_executable", value);
            }
        }
    }

    fn read_command(&mut self, cx: &mut Cx<'_>, value: &Value<'_>) {
        if let Some(line) = value.get_ref().as_str() {
            let message = format!(
                "invalid type for {}: expected an array of strings \
                 (the program and its arguments), found a string",
                cx.key("command")
            );
            cx.error(value.span(), message, Some(split_help(line)));
            return;
        }
        let Some(args) = cx.strings("command", value) else {
            return;
        };
        let Some((program, span)) = args.first() else {
            let help =
                "give the program and its arguments, e.g. `command = [\"python3\", \"worker.py\"]`";
            let message = format!("{} cannot be empty", cx.key("command"));
            cx.error(value.span(), message, Some(help.into()));
            return;
        };
        if program.is_empty() {
            let message = format!(
                "{} cannot be empty: it is the program to run",
                cx.key("command[0]")
            );
            cx.error(span.clone(), message, None);
            return;
        }
        let mut ok = true;
        for (i, (arg, span)) in args.iter().enumerate() {
            let label = format!("command[{i}]");
            if arg.contains('\0') {
                let message = format!("{} cannot contain a NUL byte", cx.key(&label));
                cx.error(span.clone(), message, None);
                ok = false;
            } else {
                ok &= cx.fits_exec(&label, arg.len(), span.clone());
            }
        }
        if !ok {
            return;
        }
        self.program = Some((program.to_string(), span.clone()));
        self.command = Some(args.iter().map(|(a, _)| OsString::from(a)).collect());
    }

    /// Checks that exactly one of `command` and `python` is set and that the
    /// Python-only keys are not used with `command`. `header` is the span of
    /// the group's table header.
    pub fn finish(self, cx: &mut Cx<'_>, group: &str, header: Range<usize>) -> Option<ProgramSpec> {
        match (&self.command_key, &self.python_key) {
            (Some(command), Some(python)) => {
                let later = if command.start > python.start {
                    command
                } else {
                    python
                };
                let message = format!(
                    "group `{group}` sets both `command` and `python`; a group runs one or the other"
                );
                let help =
                    "remove `command` to run the Python function, or `python` to run the command";
                cx.error(later.clone(), message, Some(help.into()));
                return None;
            }
            (None, None) => {
                let message = format!("group `{group}` has neither `command` nor `python`");
                let help = "add `command = [\"program\", \"arg\"]` to run a program, \
                            or `python = \"package.module:function\"` to run a Python function";
                cx.error(header, message, Some(help.into()));
                return None;
            }
            _ => {}
        }
        if self.command_key.is_some() {
            return self.finish_command(cx);
        }
        let (module, function) = self.python?;
        Some(ProgramSpec {
            program: Program::Python {
                module,
                function,
                preload: self.preload,
            },
            python_executable: self.python_executable.unwrap_or_else(|| "python3".into()),
            command_program: None,
        })
    }

    fn finish_command(self, cx: &mut Cx<'_>) -> Option<ProgramSpec> {
        for (key, name) in [
            (&self.preload_key, "preload"),
            (&self.executable_key, "python_executable"),
        ] {
            if let Some(span) = key {
                let help = format!(
                    "remove `{name}`, or run a Python function with `python = \"module:function\"` instead of `command`"
                );
                let message = format!("{} only applies to `python` groups", cx.key(name));
                cx.error(span.clone(), message, Some(help));
            }
        }
        Some(ProgramSpec {
            program: Program::Command(self.command?),
            python_executable: "python3".into(),
            command_program: self.program,
        })
    }
}

/// How to write `command = "a b c"` as argv: split on whitespace, or run it
/// through a shell when it uses shell syntax.
fn split_help(line: &str) -> String {
    if line.len() > 200 {
        return "write the program and each argument as a string of an array, \
                e.g. `command = [\"python3\", \"worker.py\"]`"
            .to_owned();
    }
    let quote = |s: &str| format!("{s:?}");
    if line.contains(['|', '&', ';', '<', '>', '$', '`', '*', '\'', '"']) {
        let argv = ["/bin/sh", "-c", line].map(quote).join(", ");
        return format!(
            "drover runs no shell unless asked; to run this through one, write `command = [{argv}]`"
        );
    }
    let argv: Vec<String> = line.split_whitespace().map(quote).collect();
    format!(
        "write the program and each argument as a string: `command = [{}]`",
        argv.join(", ")
    )
}

/// `"pkg.module:function"` → (`pkg.module`, `function`).
fn python_target(cx: &mut Cx<'_>, value: &Value<'_>) -> Option<(String, String)> {
    let s = cx.string("python", value)?;
    if !cx.fits_exec("python", s.len(), value.span()) {
        return None;
    }
    match parse_target(s) {
        Ok((module, function)) => Some((module.to_owned(), function.to_owned())),
        Err(reason) => {
            let help =
                "write the module and the function, e.g. `python = \"examples.worker:main\"`";
            cx.error(
                value.span(),
                format!(
                    "invalid `python` target `{}`{}: {reason}",
                    shown(s),
                    cx.place()
                ),
                Some(help.into()),
            );
            None
        }
    }
}

fn parse_target(s: &str) -> Result<(&str, &str), String> {
    let Some((module, function)) = s.split_once(':') else {
        return Err("expected `module:function`".into());
    };
    if module.is_empty() || function.is_empty() {
        return Err(format!(
            "the {} part is empty",
            if module.is_empty() {
                "module"
            } else {
                "function"
            }
        ));
    }
    if !is_module_name(module) {
        return Err(format!(
            "`{}` is not a module name (dotted Python identifiers)",
            shown(module)
        ));
    }
    if !is_identifier(function) {
        return Err(format!("`{}` is not a Python identifier", shown(function)));
    }
    Ok((module, function))
}

fn preload(cx: &mut Cx<'_>, value: &Value<'_>) -> Option<Vec<String>> {
    let modules = cx.strings("preload", value)?;
    let mut ok = true;
    for (i, (module, span)) in modules.iter().enumerate() {
        if !cx.fits_exec(&format!("preload[{i}]"), module.len(), span.clone()) {
            ok = false;
        } else if !is_module_name(module) {
            let message = format!(
                "invalid module name `{}` in {}: expected dotted Python identifiers",
                shown(module),
                cx.key(&format!("preload[{i}]"))
            );
            cx.error(span.clone(), message, None);
            ok = false;
        }
    }
    ok.then(|| modules.iter().map(|(m, _)| m.to_string()).collect())
}

fn os_string(cx: &mut Cx<'_>, label: &str, value: &Value<'_>) -> Option<OsString> {
    let s = cx.string(label, value)?;
    if s.is_empty() || s.contains('\0') {
        let problem = if s.is_empty() {
            "cannot be empty"
        } else {
            "cannot contain a NUL byte"
        };
        let message = format!("{} {problem}", cx.key(label));
        cx.error(value.span(), message, None);
        return None;
    }
    cx.fits_exec(label, s.len(), value.span()).then(|| s.into())
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

fn is_module_name(s: &str) -> bool {
    s.split('.').all(is_identifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_argv_for_a_command_string() {
        assert_eq!(
            split_help("python3  worker.py -v"),
            "write the program and each argument as a string: `command = [\"python3\", \"worker.py\", \"-v\"]`"
        );
        assert_eq!(
            split_help("cat x | wc"),
            "drover runs no shell unless asked; to run this through one, write `command = [\"/bin/sh\", \"-c\", \"cat x | wc\"]`"
        );
    }

    #[test]
    fn parses_python_targets() {
        assert_eq!(
            parse_target("examples.worker:main"),
            Ok(("examples.worker", "main"))
        );
        assert_eq!(parse_target("w:_run2"), Ok(("w", "_run2")));
        assert!(
            parse_target("worker")
                .unwrap_err()
                .contains("module:function")
        );
        assert!(
            parse_target(":main")
                .unwrap_err()
                .contains("module part is empty")
        );
        assert!(
            parse_target("w:")
                .unwrap_err()
                .contains("function part is empty")
        );
        assert!(
            parse_target("a..b:f")
                .unwrap_err()
                .contains("not a module name")
        );
        assert!(
            parse_target("a.1b:f")
                .unwrap_err()
                .contains("not a module name")
        );
        assert!(
            parse_target("a:f.g")
                .unwrap_err()
                .contains("not a Python identifier")
        );
        assert!(
            parse_target("a:f:g")
                .unwrap_err()
                .contains("not a Python identifier")
        );
    }
}
