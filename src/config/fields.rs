//! Typed reads from the spanned TOML tree. Each reader reports a wrong type
//! or a bad value as a located diagnostic and returns `None`, so a table walk
//! goes on and collects every problem instead of stopping at the first.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::diag::{Diagnostic, Location};
use super::duration::parse_duration;
use super::source::SourceFile;
use super::suggest::{did_you_mean, one_of};

/// A key of a TOML table, with its span.
pub(crate) type Key<'i> = Spanned<DeString<'i>>;
/// A TOML value, with its span.
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// The file being validated and the diagnostics found so far.
pub(crate) struct Cx<'a> {
    pub file: &'a SourceFile,
    diags: &'a mut Vec<Diagnostic>,
}

impl<'a> Cx<'a> {
    pub fn new(file: &'a SourceFile, diags: &'a mut Vec<Diagnostic>) -> Self {
        Cx { file, diags }
    }

    pub fn at(&self, span: Range<usize>) -> Location {
        self.file.at(span)
    }

    pub fn report(&mut self, diagnostic: Diagnostic) {
        self.diags.push(diagnostic);
    }

    /// An error at `span`, with help if there is some to give.
    pub fn error(&mut self, span: Range<usize>, message: String, help: Option<String>) {
        self.report(
            Diagnostic::error(message)
                .at(self.at(span))
                .with_help_opt(help),
        );
    }

    /// The value as written in the file.
    pub fn raw(&self, value: &Value<'_>) -> &'a str {
        let span = value.span();
        self.file.text.get(span).unwrap_or_default()
    }

    pub fn type_error(&mut self, label: &str, value: &Value<'_>, expected: &str) {
        let found = value.get_ref();
        let help = match (expected, found) {
            ("an integer", DeValue::String(s)) if s.trim().parse::<i64>().is_ok() => {
                Some(format!("remove the quotes: `{}`", s.trim()))
            }
            (e, DeValue::String(_)) if e.starts_with("an array") => {
                Some(format!("write `[{}]` for a list of one", self.raw(value)))
            }
            _ => None,
        };
        let message = format!(
            "invalid type for `{label}`: expected {expected}, found {}",
            a_type(found)
        );
        self.error(value.span(), message, help);
    }

    pub fn string<'v>(&mut self, label: &str, value: &'v Value<'_>) -> Option<&'v str> {
        match value.get_ref() {
            DeValue::String(s) => Some(&**s),
            _ => {
                self.type_error(label, value, "a string");
                None
            }
        }
    }

    pub fn bool(&mut self, label: &str, value: &Value<'_>) -> Option<bool> {
        let b = value.get_ref().as_bool();
        if b.is_none() {
            self.type_error(label, value, "a boolean (`true` or `false`)");
        }
        b
    }

    /// An integer in `min..=max`.
    pub fn int(&mut self, label: &str, value: &Value<'_>, min: i64, max: i64) -> Option<i64> {
        let DeValue::Integer(int) = value.get_ref() else {
            self.type_error(label, value, "an integer");
            return None;
        };
        let n = i128::from_str_radix(int.as_str(), int.radix()).ok();
        match n {
            Some(n) if (i128::from(min)..=i128::from(max)).contains(&n) => i64::try_from(n).ok(),
            _ => {
                let below = int.as_str().starts_with('-') || n.is_some_and(|n| n < i128::from(min));
                let message = range_message(label, self.raw(value), below, min, max);
                self.error(value.span(), message, None);
                None
            }
        }
    }

    /// An integer that fits a `u32` and is at least `min`.
    pub fn u32(&mut self, label: &str, value: &Value<'_>, min: u32) -> Option<u32> {
        let n = self.int(label, value, min.into(), u32::MAX.into())?;
        u32::try_from(n).ok()
    }

    /// A string such as `"10s"` (see [`parse_duration`]).
    pub fn duration(&mut self, label: &str, value: &Value<'_>) -> Option<Duration> {
        match value.get_ref() {
            DeValue::String(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(reason) => {
                    let message = format!("invalid duration `{s}` for `{label}`: {reason}");
                    self.error(value.span(), message, None);
                    None
                }
            },
            DeValue::Integer(_) | DeValue::Float(_) => {
                let raw = self.raw(value);
                let message = format!(
                    "`{label}` needs a unit: expected a string such as \"10s\", found {}",
                    a_type(value.get_ref())
                );
                let help = format!(
                    "write `{label} = \"{raw}s\"` for seconds, or \"{raw}ms\" for milliseconds"
                );
                self.error(value.span(), message, Some(help));
                None
            }
            _ => {
                self.type_error(label, value, "a duration such as \"10s\"");
                None
            }
        }
    }

    /// One of a fixed set of strings; `what` names the set in messages
    /// ("start method").
    pub fn choice<T: Copy>(
        &mut self,
        label: &str,
        value: &Value<'_>,
        what: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let s = self.string(label, value)?;
        if let Some((_, t)) = options.iter().find(|(name, _)| *name == s) {
            return Some(*t);
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let message = format!("unknown {what} `{s}`; expected one of {}", one_of(&names));
        self.error(value.span(), message, did_you_mean(s, &names));
        None
    }

    pub fn array<'v, 'i>(
        &mut self,
        label: &str,
        value: &'v Value<'i>,
        expected: &str,
    ) -> Option<&'v [Value<'i>]> {
        match value.get_ref() {
            DeValue::Array(items) => Some(&**items),
            _ => {
                self.type_error(label, value, expected);
                None
            }
        }
    }

    /// An array of strings, each with its span. Every element of the wrong
    /// type is reported.
    pub fn strings<'v>(
        &mut self,
        label: &str,
        value: &'v Value<'_>,
    ) -> Option<Vec<(&'v str, Range<usize>)>> {
        let items = self.array(label, value, "an array of strings")?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let s = self.string(&format!("{label}[{i}]"), item);
            out.push((s, item.span()));
        }
        out.into_iter().map(|(s, span)| Some((s?, span))).collect()
    }

    pub fn table<'v, 'i>(&mut self, label: &str, value: &'v Value<'i>) -> Option<&'v DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.type_error(label, value, "a table");
                None
            }
        }
    }

    /// A key that a table does not have; `place` says which ("in
    /// [group.workers]"). `known` are its keys; `elsewhere` the keys of a
    /// table that people confuse it with, to say where the key belongs.
    pub fn unknown_key(
        &mut self,
        key: &Key<'_>,
        place: &str,
        known: &[&str],
        elsewhere: Option<(&str, &[&str])>,
    ) {
        let name: &str = key.get_ref();
        let help = did_you_mean(name, known).or_else(|| match elsewhere {
            Some((other, keys)) if keys.contains(&name) => {
                Some(format!("`{name}` is a key of {other} tables"))
            }
            _ => Some(format!("expected one of {}", one_of(known))),
        });
        self.error(key.span(), format!("unknown key `{name}` {place}"), help);
    }
}

/// A group or queue name checked by `new` (`GroupName::new`,
/// `QueueName::new`); `kind` is "group" or "queue", `place` says where a
/// reference appears (" in `inputs[0]`", or "" for a table name).
pub(crate) fn name<T, E: std::fmt::Display>(
    cx: &mut Cx<'_>,
    (kind, place): (&str, &str),
    raw: &str,
    span: Range<usize>,
    new: fn(&str) -> Result<T, E>,
) -> Option<T> {
    let err = match new(raw) {
        Ok(name) => return Some(name),
        Err(err) => err,
    };
    let fixed = raw.to_lowercase().replace('-', "_");
    let help = if fixed != raw && new(&fixed).is_ok() {
        format!("names match `[a-z][a-z0-9_]*`; try `{fixed}`")
    } else {
        "names match `[a-z][a-z0-9_]*`".to_owned()
    };
    cx.error(
        span,
        format!("invalid {kind} name `{raw}`{place}: {err}"),
        Some(help),
    );
    None
}

fn range_message(label: &str, found: &str, below: bool, min: i64, max: i64) -> String {
    let unbounded = max == i64::from(u32::MAX);
    match (below, unbounded) {
        (true, _) if min == 0 => format!("`{label}` cannot be negative, found {found}"),
        (true, true) => format!("`{label}` must be at least {min}, found {found}"),
        (false, true) => format!("`{label}` is too large: {found} (the maximum is {max})"),
        (_, false) => format!("`{label}` must be between {min} and {max}, found {found}"),
    }
}

/// "a string", "an integer": a value's type for messages.
pub(crate) fn a_type(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Runs `read` on the value of `v` in `v = <toml>` and returns its
    /// result with the messages it reported.
    fn read<T>(
        toml: &str,
        read: impl FnOnce(&mut Cx<'_>, &Value<'_>) -> Option<T>,
    ) -> (Option<T>, Vec<String>) {
        let file = SourceFile::new(PathBuf::from("/t/a.toml"), format!("v = {toml}"));
        let doc = toml::de::DeTable::parse(&file.text).unwrap();
        let value = doc.get_ref().get("v").unwrap();
        let mut diags = Vec::new();
        let out = read(&mut Cx::new(&file, &mut diags), value);
        (
            out,
            diags
                .iter()
                .map(|d| format!("{}|{}", d.message(), d.help().unwrap_or("")))
                .collect(),
        )
    }

    #[test]
    fn wrong_types_name_both_types() {
        let (v, msgs) = read("4", |cx, v| cx.string("cwd", v).map(str::to_owned));
        assert_eq!(v, None);
        assert_eq!(
            msgs,
            ["invalid type for `cwd`: expected a string, found an integer|"]
        );
        let (_, msgs) = read("\"4\"", |cx, v| cx.u32("processes", v, 0));
        assert_eq!(
            msgs,
            [
                "invalid type for `processes`: expected an integer, found a string|remove the quotes: `4`"
            ]
        );
        let (_, msgs) = read("\"jobs\"", |cx, v| cx.strings("inputs", v).map(|l| l.len()));
        assert_eq!(
            msgs,
            [
                "invalid type for `inputs`: expected an array of strings, found a string|write `[\"jobs\"]` for a list of one"
            ]
        );
    }

    #[test]
    fn integers_are_range_checked() {
        assert_eq!(read("0x10", |cx, v| cx.u32("p", v, 0)).0, Some(16));
        assert_eq!(
            read("-1", |cx, v| cx.u32("p", v, 0)).1,
            ["`p` cannot be negative, found -1|"]
        );
        assert_eq!(
            read("0", |cx, v| cx.u32("c", v, 1)).1,
            ["`c` must be at least 1, found 0|"]
        );
        assert_eq!(
            read("4294967296", |cx, v| cx.u32("c", v, 1)).1,
            ["`c` is too large: 4294967296 (the maximum is 4294967295)|"]
        );
        assert_eq!(
            read("99999999999999999999999999999999999999999", |cx, v| cx
                .u32("c", v, 1))
            .1
            .len(),
            1
        );
        assert_eq!(
            read("256", |cx, v| cx.int("s", v, 0, 255)).1,
            ["`s` must be between 0 and 255, found 256|"]
        );
        assert_eq!(
            read("1.0", |cx, v| cx.u32("p", v, 0)).1,
            ["invalid type for `p`: expected an integer, found a float|"]
        );
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(
            read("\"1.5s\"", |cx, v| cx.duration("d", v)).0,
            Some(Duration::from_millis(1500))
        );
        let (_, msgs) = read("\"10\"", |cx, v| cx.duration("stop_timeout", v));
        assert!(
            msgs[0].starts_with("invalid duration `10` for `stop_timeout`: missing unit"),
            "{msgs:?}"
        );
        let (_, msgs) = read("10", |cx, v| cx.duration("stop_timeout", v));
        assert_eq!(
            msgs,
            [
                "`stop_timeout` needs a unit: expected a string such as \"10s\", found an integer|write `stop_timeout = \"10s\"` for seconds, or \"10ms\" for milliseconds"
            ]
        );
    }

    #[test]
    fn choices_list_valid_values_and_suggest() {
        let opts = [("spawn", 0), ("fork", 1), ("forkserver", 2)];
        assert_eq!(
            read("\"fork\"", |cx, v| cx.choice("m", v, "start method", &opts)).0,
            Some(1)
        );
        let (_, msgs) = read("\"forkk\"", |cx, v| {
            cx.choice("m", v, "start method", &opts)
        });
        assert_eq!(
            msgs,
            [
                "unknown start method `forkk`; expected one of `spawn`, `fork`, `forkserver`|did you mean `fork`?"
            ]
        );
    }

    fn owned(list: Option<Vec<(&str, Range<usize>)>>) -> Option<Vec<String>> {
        list.map(|l| l.into_iter().map(|(s, _)| s.to_owned()).collect())
    }

    #[test]
    fn string_arrays_report_every_bad_element() {
        let (v, msgs) = read("[\"a\", 1, true]", |cx, v| owned(cx.strings("command", v)));
        assert_eq!(v, None);
        assert_eq!(
            msgs,
            [
                "invalid type for `command[1]`: expected a string, found an integer|",
                "invalid type for `command[2]`: expected a string, found a boolean|",
            ]
        );
        let (v, _) = read("[\"a\", \"b\"]", |cx, v| owned(cx.strings("command", v)));
        assert_eq!(v.unwrap(), ["a", "b"]);
    }
}
