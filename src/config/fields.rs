//! Typed reads from the spanned TOML tree. Each reader reports a wrong type
//! or a bad value as a located diagnostic and returns `None`, so a table walk
//! goes on and collects every problem instead of stopping at the first.

use std::borrow::Cow;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::diag::{Diagnostic, Location};
use super::duration::{format_duration, parse_duration};
use super::limits::{MAX_ARG_BYTES, MAX_DURATION};
use super::size::{format_size, parse_size};
use super::source::SourceFile;
use super::suggest::{did_you_mean, one_of};
use crate::config::names::{MAX_NAME_LEN, NameError};

/// A key of a TOML table, with its span.
pub(crate) type Key<'i> = Spanned<DeString<'i>>;
/// A TOML value, with its span.
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// The file being validated, the table being read in it and the
/// diagnostics found so far.
pub(crate) struct Cx<'a> {
    pub file: &'a SourceFile,
    diags: &'a mut Vec<Diagnostic>,
    /// The table whose keys are being read (`[group.workers]`), named in
    /// every message about one of them; `None` at the top level.
    table: Option<String>,
}

impl<'a> Cx<'a> {
    pub fn new(file: &'a SourceFile, diags: &'a mut Vec<Diagnostic>) -> Self {
        Cx {
            file,
            diags,
            table: None,
        }
    }

    /// Names the table whose keys are read next (`[group.workers]`), or
    /// none; messages about keys say which table they are in.
    pub fn set_table(&mut self, table: Option<String>) {
        self.table = table;
    }

    /// Where the key being read is, for messages: ` in [group.workers]`,
    /// or nothing at the top level.
    pub fn place(&self) -> String {
        match &self.table {
            Some(table) => format!(" in {table}"),
            None => String::new(),
        }
    }

    /// A key as messages name it: `` `cwd` in [group.workers] ``.
    pub fn key(&self, label: &str) -> String {
        format!("`{label}`{}", self.place())
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

    /// Checks a list's length: past `max`, an error at `span` ("`KEY`
    /// lists N NOUNs (the maximum is MAX)") and false.
    pub fn within(
        &mut self,
        span: Range<usize>,
        label: &str,
        len: usize,
        noun: &str,
        max: usize,
    ) -> bool {
        if len <= max {
            return true;
        }
        let message = format!(
            "{} lists {len} {noun} (the maximum is {max})",
            self.key(label)
        );
        self.error(span, message, None);
        false
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
            (e, DeValue::String(_)) if e.starts_with("an array") => Some(format!(
                "write `[{}]` for a list of one",
                shown(self.raw(value))
            )),
            _ => None,
        };
        let message = format!(
            "invalid type for {}: expected {expected}, found {}",
            self.key(label),
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
                let beyond = match below {
                    true if min == 0 => Beyond::Negative,
                    true => Beyond::Below(min.to_string()),
                    false => Beyond::Above(max.to_string()),
                };
                let message = beyond.message(&self.key(label), &shown(self.raw(value)));
                self.error(value.span(), message, None);
                None
            }
        }
    }

    /// An integer in `min..=max`, as a `u32`.
    pub fn u32(&mut self, label: &str, value: &Value<'_>, min: u32, max: u32) -> Option<u32> {
        let n = self.int(label, value, min.into(), max.into())?;
        u32::try_from(n).ok()
    }

    /// A string such as `"10s"` (see [`parse_duration`]), at most
    /// [`MAX_DURATION`].
    pub fn duration(&mut self, label: &str, value: &Value<'_>) -> Option<Duration> {
        match value.get_ref() {
            DeValue::String(s) => match parse_duration(s) {
                Ok(d) if d <= MAX_DURATION => Some(d),
                Ok(_) => {
                    let message = format!(
                        "{} is too long: {} (the maximum is one year, {})",
                        self.key(label),
                        shown(s),
                        format_duration(MAX_DURATION)
                    );
                    self.error(value.span(), message, None);
                    None
                }
                Err(reason) => {
                    let message = format!(
                        "invalid duration `{}` for {}: {reason}",
                        shown(s),
                        self.key(label)
                    );
                    self.error(value.span(), message, None);
                    None
                }
            },
            DeValue::Integer(_) | DeValue::Float(_) => {
                let raw = shown(self.raw(value));
                let message = format!(
                    "{} needs a unit: expected a string such as \"10s\", found {}",
                    self.key(label),
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

    /// A number of bytes in `min..=max`: an integer, or a string with a
    /// unit such as `"64MiB"` (see [`parse_size`]).
    pub fn size(&mut self, label: &str, value: &Value<'_>, min: u64, max: u64) -> Option<u64> {
        let n = match value.get_ref() {
            // Negative or too large for a u64: beyond the bounds either way.
            DeValue::Integer(int) if int.as_str().starts_with('-') => Err(Beyond::Negative),
            DeValue::Integer(int) => u64::from_str_radix(int.as_str(), int.radix())
                .or(Err(Beyond::Above(format_size(max)))),
            DeValue::String(s) => match parse_size(s) {
                Ok(n) => Ok(n),
                Err((reason, help)) => {
                    let message = format!(
                        "invalid size `{}` for {}: {reason}",
                        shown(s),
                        self.key(label)
                    );
                    self.error(value.span(), message, help);
                    return None;
                }
            },
            _ => {
                let expected = "a number of bytes or a size such as \"64MiB\"";
                self.type_error(label, value, expected);
                return None;
            }
        };
        let beyond = match n {
            Ok(n) if n < min => Beyond::Below(format_size(min)),
            Ok(n) if n > max => Beyond::Above(format_size(max)),
            Ok(n) => return Some(n),
            Err(beyond) => beyond,
        };
        let message = beyond.message(&self.key(label), &shown(self.raw(value)));
        self.error(value.span(), message, None);
        None
    }

    /// Whether a string of `len` bytes, the value of `label` at `span`,
    /// is at most [`MAX_ARG_BYTES`] long; reports it if not. Arguments,
    /// environment strings and paths all go to `execve` or the kernel.
    pub fn fits_exec(&mut self, label: &str, len: usize, span: Range<usize>) -> bool {
        if len <= MAX_ARG_BYTES {
            return true;
        }
        let message = format!(
            "{} is too long: {len} bytes (the maximum is {MAX_ARG_BYTES} bytes)",
            self.key(label)
        );
        let help = "the kernel takes at most 128 KiB, NUL included, for one argument or \
                    environment string";
        self.error(span, message, Some(help.into()));
        false
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
        let message = format!(
            "unknown {what} `{}`{}; expected one of {}",
            shown(s),
            self.place(),
            one_of(&names)
        );
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
        let message = format!("unknown key `{}` {place}", shown(name));
        self.error(key.span(), message, help);
    }
}

/// A group or queue name checked by `new` (`GroupName::new`,
/// `QueueName::new`); `kind` is "group" or "queue", `place` says where a
/// reference appears (" in `inputs[0]`", or "" for a table name).
pub(crate) fn name<T>(
    cx: &mut Cx<'_>,
    (kind, place): (&str, &str),
    raw: &str,
    span: Range<usize>,
    new: fn(&str) -> Result<T, NameError>,
) -> Option<T> {
    let err = match new(raw) {
        Ok(name) => return Some(name),
        Err(err) => err,
    };
    let help = if let NameError::TooLong(_) = err {
        format!("shorten it to at most {MAX_NAME_LEN} characters")
    } else {
        let rule = "names match `[a-z][a-z0-9_]*`";
        let fixed = (raw.len() <= MAX_NAME_LEN)
            .then(|| raw.to_lowercase().replace('-', "_"))
            .filter(|fixed| fixed != raw && new(fixed).is_ok());
        match fixed {
            Some(fixed) => format!("{rule}; try `{fixed}`"),
            None => rule.to_owned(),
        }
    };
    let table = cx.place();
    cx.error(
        span,
        format!("invalid {kind} name `{}`{place}{table}: {err}", shown(raw)),
        Some(help),
    );
    None
}

/// How a number is out of range, with the bound it breaks as written in
/// a config.
enum Beyond {
    Negative,
    Below(String),
    Above(String),
}

impl Beyond {
    /// The message for `key` (as [`Cx::key`] names it) set to `found`,
    /// naming the bound.
    fn message(&self, key: &str, found: &str) -> String {
        match self {
            Beyond::Negative => format!("{key} cannot be negative, found {found}"),
            Beyond::Below(min) => format!("{key} must be at least {min}, found {found}"),
            Beyond::Above(max) => {
                format!("{key} is too large: {found} (the maximum is {max})")
            }
        }
    }
}

/// At most this many characters of a value a config wrote are quoted in a
/// message; the rest is elided.
const SHOWN_CHARS: usize = 60;

/// Text from a config file as quoted in a message: control characters
/// escaped (a TOML string can hold any of them, and they would reach the
/// terminal) and cut after [`SHOWN_CHARS`] characters, so that a 10 MB
/// string is not repeated in every message about it.
pub(crate) fn shown(text: &str) -> Cow<'_, str> {
    if text.len() <= SHOWN_CHARS && !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == SHOWN_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
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
        let (_, msgs) = read("\"4\"", |cx, v| cx.u32("processes", v, 0, 10));
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
        let max = u32::MAX;
        assert_eq!(read("0x10", |cx, v| cx.u32("p", v, 0, max)).0, Some(16));
        assert_eq!(
            read("-1", |cx, v| cx.u32("p", v, 0, max)).1,
            ["`p` cannot be negative, found -1|"]
        );
        assert_eq!(
            read("0", |cx, v| cx.u32("c", v, 1, max)).1,
            ["`c` must be at least 1, found 0|"]
        );
        assert_eq!(
            read("4294967296", |cx, v| cx.u32("c", v, 1, max)).1,
            ["`c` is too large: 4294967296 (the maximum is 4294967295)|"]
        );
        assert_eq!(
            read("99999999999999999999999999999999999999999", |cx, v| cx
                .u32("c", v, 1, max))
            .1
            .len(),
            1
        );
        assert_eq!(
            read("256", |cx, v| cx.int("s", v, 0, 255)).1,
            ["`s` is too large: 256 (the maximum is 255)|"]
        );
        assert_eq!(
            read("1.0", |cx, v| cx.u32("p", v, 0, max)).1,
            ["invalid type for `p`: expected an integer, found a float|"]
        );
    }

    /// Regression: `processes = 1000000000` passed and made drover
    /// allocate 88 GB at run time.
    #[test]
    fn a_value_beyond_its_bound_names_the_bound() {
        let (v, msgs) = read("1000000000", |cx, v| cx.u32("processes", v, 0, 100_000));
        assert_eq!(v, None);
        assert_eq!(
            msgs,
            ["`processes` is too large: 1000000000 (the maximum is 100000)|"]
        );
        assert_eq!(
            read("100000", |cx, v| cx.u32("processes", v, 0, 100_000)).0,
            Some(100_000)
        );
    }

    /// Regression: durations of up to `u64::MAX` seconds passed `check`
    /// and made drover abort on `Instant + Duration` overflow.
    #[test]
    fn durations_are_at_most_a_year() {
        assert_eq!(
            read("\"8760h\"", |cx, v| cx.duration("d", v)).0,
            Some(MAX_DURATION)
        );
        for huge in ["18446744073709551615s", "100000000h", "8760.001h"] {
            let (v, msgs) = read(&format!("\"{huge}\""), |cx, v| cx.duration("start_secs", v));
            assert_eq!(v, None);
            assert_eq!(
                msgs,
                [format!(
                    "`start_secs` is too long: {huge} (the maximum is one year, 8760h)|"
                )]
            );
        }
    }

    #[test]
    fn sizes_are_integers_or_strings_with_a_unit() {
        let size = |toml: &str| read(toml, |cx, v| cx.size("m", v, 4096, 1 << 40));
        assert_eq!(size("4096").0, Some(4096));
        assert_eq!(size("\"64MiB\"").0, Some(64 << 20));
        assert_eq!(size("\"1TiB\"").0, Some(1 << 40));
        assert_eq!(size("-1").1, ["`m` cannot be negative, found -1|"]);
        assert_eq!(size("4095").1, ["`m` must be at least 4KiB, found 4095|"]);
        assert_eq!(
            size("\"1025GiB\"").1,
            ["`m` is too large: \"1025GiB\" (the maximum is 1TiB)|"]
        );
        assert_eq!(
            size("99999999999999999999").1,
            ["`m` is too large: 99999999999999999999 (the maximum is 1TiB)|"]
        );
        assert_eq!(
            size("\"64MB\"").1,
            [
                "invalid size `64MB` for `m`: unknown unit `MB`; expected one of `B`, `KiB`, `MiB`, `GiB`, `TiB`|did you mean `MiB`? (units are binary: 1MiB is 1048576 bytes)"
            ]
        );
        assert_eq!(
            size("1.5").1,
            [
                "invalid type for `m`: expected a number of bytes or a size such as \"64MiB\", found a float|"
            ]
        );
    }

    #[test]
    fn strings_for_execve_fit_the_kernel_limit() {
        let fits = |len: usize| read("1", |cx, _| Some(cx.fits_exec("command[1]", len, 4..5)));
        assert_eq!(fits(MAX_ARG_BYTES), (Some(true), vec![]));
        let (v, msgs) = fits(MAX_ARG_BYTES + 1);
        assert_eq!(v, Some(false));
        assert_eq!(
            msgs,
            [
                "`command[1]` is too long: 131072 bytes (the maximum is 131071 bytes)|the kernel takes at most 128 KiB, NUL included, for one argument or environment string"
            ]
        );
    }

    #[test]
    fn shown_text_is_escaped_and_cut() {
        assert_eq!(shown("jobs"), "jobs");
        assert_eq!(shown("a\u{1b}[31mb\0"), "a\\u{1b}[31mb\\u{0}");
        let long = "x".repeat(10 << 20);
        assert_eq!(shown(&long), format!("{}…", "x".repeat(SHOWN_CHARS)));
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
