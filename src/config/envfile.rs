//! `env_file`: files of `KEY=VALUE` lines applied to a group's
//! environment before its `env`. An env file is source text like a config
//! file (read with the same limits), and its problems are located in it.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::diag::Diagnostic;
use super::fields::{Cx, Value};
use super::limits::MAX_ENV_FILES;
use super::source::{SourceFile, resolve};

/// `env_file`: one path or a list, each resolved against the directory of
/// the config file, read and parsed in order (a later file wins). Returns
/// the paths and the variables; `None` if any could not be read (an error
/// says why).
pub(crate) fn read(
    cx: &mut Cx<'_>,
    value: &Value<'_>,
) -> Option<(Vec<PathBuf>, BTreeMap<String, String>)> {
    let paths: Vec<(&str, Range<usize>)> = match value.get_ref().as_str() {
        Some(s) => vec![(s, value.span())],
        None => cx.strings("env_file", value)?,
    };
    if !cx.within(
        value.span(),
        "env_file",
        paths.len(),
        "files",
        MAX_ENV_FILES,
    ) {
        return None;
    }
    let mut files = Vec::with_capacity(paths.len());
    let mut vars = BTreeMap::new();
    let mut complete = true;
    // A path named again is read once: its variables apply again at each
    // place (later files win), its errors are reported once.
    let mut read: HashMap<PathBuf, Option<Vec<(String, String)>>> = HashMap::new();
    for (raw, span) in paths {
        if raw.is_empty() || raw.contains('\0') {
            let problem = if raw.is_empty() {
                "cannot be empty"
            } else {
                "cannot contain a NUL byte"
            };
            let message = format!("{} {problem}", cx.key("env_file"));
            cx.error(span, message, None);
            complete = false;
            continue;
        }
        let path = resolve(&cx.file.dir, Path::new(raw));
        if let Some(known) = read.get(&path) {
            match known {
                Some(pairs) => vars.extend(pairs.iter().cloned()),
                None => complete = false,
            }
            files.push(path);
            continue;
        }
        read.insert(path.clone(), None);
        match load(&path) {
            Ok(file) => match parse(&file.text) {
                Ok(pairs) => {
                    vars.extend(pairs.iter().cloned());
                    read.insert(path.clone(), Some(pairs));
                }
                Err(problems) => {
                    for (at, message, help) in problems {
                        let d = Diagnostic::error(format!("env file: {message}"))
                            .at(file.at(at))
                            .with_help_opt(help);
                        cx.report(d);
                    }
                    complete = false;
                }
            },
            Err(problem) => {
                let message = format!(
                    "cannot read env file {} ({}): {problem}",
                    path.display(),
                    cx.key("env_file")
                );
                cx.error(span, message, None);
                complete = false;
            }
        }
        files.push(path);
    }
    complete.then_some((files, vars))
}

/// The env file at `path` as text: a regular file of at most 4 MiB, UTF-8.
fn load(path: &Path) -> Result<SourceFile, String> {
    let bytes = super::files::read_at_most(path, super::files::MAX_FILE_BYTES)?;
    String::from_utf8(bytes)
        .map(|text| SourceFile::new(path.to_path_buf(), text))
        .map_err(|e| {
            format!(
                "it is not valid UTF-8 (at byte {})",
                e.utf8_error().valid_up_to()
            )
        })
}

/// A problem in an env file: where, what, and help if there is some.
type Problem = (Range<usize>, String, Option<String>);

/// The `KEY=VALUE` lines of an env file, in order; or every problem.
/// Blank lines and `#` comments are skipped, `export ` is allowed before
/// a key; a value is bare (to a ` #` comment, trimmed), in single quotes
/// (literal) or double quotes (`\n`, `\"`, `\\` escapes).
pub(crate) fn parse(text: &str) -> Result<Vec<(String, String)>, Vec<Problem>> {
    let mut pairs = Vec::new();
    let mut problems = Vec::new();
    let mut start = 0;
    for raw_line in text.split_inclusive('\n') {
        let line_start = start;
        start += raw_line.len();
        let line = raw_line.trim_end_matches(['\n', '\r']);
        match parse_line(line) {
            Ok(Some(pair)) => pairs.push(pair),
            Ok(None) => {}
            Err((at, message, help)) => {
                problems.push((line_start + at.start..line_start + at.end, message, help));
            }
        }
    }
    if problems.is_empty() {
        Ok(pairs)
    } else {
        Err(problems)
    }
}

const FORM_HELP: &str = "write `NAME=value`, `NAME='literal'` or `NAME=\"with \\n escapes\"`";

/// One line: a pair, nothing (blank or comment), or a problem located in
/// the line.
fn parse_line(line: &str) -> Result<Option<(String, String)>, Problem> {
    let body = line.trim_start();
    if body.is_empty() || body.starts_with('#') {
        return Ok(None);
    }
    let mut at = line.len() - body.len();
    let body = match body.strip_prefix("export") {
        Some(rest) if rest.starts_with([' ', '\t']) => {
            let trimmed = rest.trim_start();
            at += line.len() - at - trimmed.len();
            trimmed
        }
        _ => body,
    };
    let Some(eq) = body.find('=') else {
        let message = "expected `NAME=value`".to_owned();
        return Err((at..line.len(), message, Some(FORM_HELP.into())));
    };
    let name = body[..eq].trim_end();
    if !super::interpolate::is_name(name.as_bytes()) {
        let message = format!(
            "`{}` is not a variable name (letters, digits and `_`, not starting with a digit)",
            super::fields::shown(name)
        );
        return Err((at..at + name.len().max(1), message, None));
    }
    let value_at = at + eq + 1;
    let raw = &line[value_at..];
    let lead = raw.len() - raw.trim_start().len();
    let value = value(raw.trim_start()).map_err(|(r, message)| {
        let offset = value_at + lead;
        (
            r.start + offset..r.end + offset,
            message,
            Some(FORM_HELP.into()),
        )
    })?;
    if value.contains('\0') {
        let span = value_at..line.len();
        return Err((span, "a value cannot contain a NUL byte".into(), None));
    }
    let len = name.len() + 1 + value.len();
    if len > super::limits::MAX_ARG_BYTES {
        let message = format!(
            "`{name}` is too long: {len} bytes (the maximum is {} bytes)",
            super::limits::MAX_ARG_BYTES
        );
        return Err((at..line.len(), message, None));
    }
    Ok(Some((name.to_owned(), value)))
}

/// A value, leading blanks removed: quoted or bare; what may follow it is
/// blanks and a `#` comment.
fn value(raw: &str) -> Result<String, (Range<usize>, String)> {
    let (value, rest_at) = match raw.as_bytes().first() {
        Some(b'\'') => {
            let end = raw[1..]
                .find('\'')
                .ok_or((0..raw.len(), "a `'` without a closing `'`".to_owned()))?;
            (raw[1..1 + end].to_owned(), 1 + end + 1)
        }
        Some(b'"') => double_quoted(raw)?,
        _ => {
            let end = raw
                .find(" #")
                .or_else(|| raw.find("\t#"))
                .unwrap_or(raw.len());
            let bare = raw[..end].trim_end();
            if let Some(q) = bare.find(['"', '\'']) {
                let message = "a quote inside an unquoted value".to_owned();
                return Err((q..q + 1, message));
            }
            return Ok(bare.to_owned());
        }
    };
    let rest = &raw[rest_at..];
    let trimmed = rest.trim_start();
    if !trimmed.is_empty() && !trimmed.starts_with('#') {
        let from = rest_at + rest.len() - trimmed.len();
        let message = "unexpected text after the closing quote".to_owned();
        return Err((from..raw.len(), message));
    }
    Ok(value)
}

/// A `"…"` value with its escapes, and where the text after it starts.
fn double_quoted(raw: &str) -> Result<(String, usize), (Range<usize>, String)> {
    let mut out = String::new();
    let mut chars = raw.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, '"')) => out.push('"'),
                Some((_, '\\')) => out.push('\\'),
                Some((j, other)) => {
                    let message =
                        format!("unknown escape `\\{other}` (only `\\n`, `\\\"` and `\\\\`)");
                    return Err((i..j + other.len_utf8(), message));
                }
                None => break,
            },
            c => out.push(c),
        }
    }
    Err((0..raw.len(), "a `\"` without a closing `\"`".to_owned()))
}
