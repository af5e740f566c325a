//! Diagnostics: located errors and warnings about config files, rendered like
//! rustc's (without colour).
//!
//! ```text
//! error: unknown key `proceses` in [group.workers]
//!   --> configs/demo.toml:12:1
//!    |
//! 12 | proceses = 4
//!    | ^^^^^^^^
//!    = help: did you mean `processes`?
//! ```

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use crate::text::wording::plural;

/// Whether a diagnostic rejects the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// The config is rejected.
    Error,
    /// The config is accepted, but probably not what the user wants.
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// Where a diagnostic points: a file, and the offending text in it if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file as the user named it (joined to the directory they gave),
    /// never canonicalised.
    pub file: PathBuf,
    /// `None` when the problem is the file as a whole (it cannot be read).
    pub span: Option<Span>,
}

/// A stretch of text on one line of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, counted in chars.
    pub col: usize,
    /// How many chars of `source_line` to underline from `source_col` (at
    /// least 1, never past the line's end plus one).
    pub width: usize,
    /// Byte offsets into the file.
    pub bytes: Range<usize>,
    /// The line `line`, without its line ending; of a very long line, an
    /// excerpt around the offending text, with `…` where text is left out.
    pub source_line: String,
    /// The 1-based column in chars of the offending text in `source_line`:
    /// `col`, unless `source_line` is an excerpt.
    pub source_col: usize,
}

/// One error or warning, with what a person needs to act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    severity: Severity,
    message: String,
    /// Boxed: diagnostics travel in `Result`s and should stay small.
    location: Option<Box<Location>>,
    notes: Vec<String>,
    help: Option<String>,
}

impl Diagnostic {
    /// An error with no location yet.
    pub fn error(message: impl Into<String>) -> Self {
        Self::new(Severity::Error, message.into())
    }

    /// A warning with no location yet.
    pub fn warning(message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, message.into())
    }

    fn new(severity: Severity, message: String) -> Self {
        Diagnostic {
            severity,
            message,
            location: None,
            notes: Vec::new(),
            help: None,
        }
    }

    /// Points the diagnostic at `location`.
    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(Box::new(location));
        self
    }

    /// Adds a `= note:` line (context, such as where something was first defined).
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// Sets the `= help:` line: what to do about it.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Like [`Diagnostic::with_help`], when there may be no help to give.
    pub fn with_help_opt(self, help: Option<String>) -> Self {
        match help {
            Some(help) => self.with_help(help),
            None => self,
        }
    }

    pub fn severity(&self) -> Severity {
        self.severity
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn location(&self) -> Option<&Location> {
        self.location.as_deref()
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn help(&self) -> Option<&str> {
        self.help.as_deref()
    }

    /// The order diagnostics are shown in: unlocated first, then by file and
    /// position.
    pub(crate) fn sort_key(&self) -> (Option<&PathBuf>, usize) {
        let file = self.location.as_ref().map(|l| &l.file);
        let offset = self
            .location
            .as_ref()
            .and_then(|l| l.span.as_ref())
            .map_or(0, |s| s.bytes.start);
        (file, offset)
    }

    /// The multi-line, rustc-like form, without a trailing newline.
    pub fn render(&self) -> String {
        let span = self.location.as_ref().and_then(|l| l.span.as_ref());
        let gutter = span.map_or(1, |s| s.line.to_string().len());
        let pad = " ".repeat(gutter);
        let mut out = format!("{}: {}", self.severity.as_str(), self.message);
        if let Some(location) = &self.location {
            out += &format!("\n{pad}--> {}", location.file.display());
        }
        if let Some(span) = span {
            out += &format!(":{}:{}\n{pad} |\n", span.line, span.col);
            out += &render_snippet(span, &pad);
        }
        for note in &self.notes {
            out += &format!("\n{pad} = note: {note}");
        }
        if let Some(help) = &self.help {
            out += &format!("\n{pad} = help: {help}");
        }
        out
    }
}

/// The quoted line and the carets under the offending text.
fn render_snippet(span: &Span, pad: &str) -> String {
    // A URL's password never shows, not even in the quoted line.
    let line = drover_redis::mask(&span.source_line).replace('\t', "    ");
    let indent: usize = span
        .source_line
        .chars()
        .take(span.source_col.saturating_sub(1))
        .map(|c| if c == '\t' { 4 } else { 1 })
        .sum();
    let line_part = format!("{} | {line}", span.line);
    let caret_part = format!("{pad} | {}{}", " ".repeat(indent), "^".repeat(span.width));
    format!("{}\n{}", line_part.trim_end(), caret_part)
}

/// One line: `path:line:col: error: message`, for logs and `config_error`.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = &self.location {
            write!(f, "{}", location.file.display())?;
            if let Some(span) = &location.span {
                write!(f, ":{}:{}", span.line, span.col)?;
            }
            f.write_str(": ")?;
        }
        write!(f, "{}: {}", self.severity.as_str(), self.message)
    }
}

/// Every diagnostic rendered, separated by blank lines, then a summary line
/// (`error: 2 errors, 1 warning`), ending in a newline: ready for
/// `eprint!`. Empty when there is nothing to say.
pub fn render_all(diags: &[Diagnostic]) -> String {
    if diags.is_empty() {
        return String::new();
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    let mut counts = Vec::new();
    if errors > 0 {
        counts.push(plural(errors, "error", "errors"));
    }
    if warnings > 0 {
        counts.push(plural(warnings, "warning", "warnings"));
    }
    let summary_severity = if errors > 0 { "error" } else { "warning" };
    let rendered: Vec<String> = diags.iter().map(Diagnostic::render).collect();
    format!(
        "{}\n\n{summary_severity}: {}\n",
        rendered.join("\n\n"),
        counts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(line: usize, col: usize, width: usize, text: &str) -> Location {
        Location {
            file: PathBuf::from("configs/demo.toml"),
            span: Some(Span {
                line,
                col,
                width,
                bytes: 0..width,
                source_line: text.to_owned(),
                source_col: col,
            }),
        }
    }

    #[test]
    fn renders_like_rustc() {
        let d = Diagnostic::error("unknown key `proceses` in [group.workers]")
            .at(located(12, 1, 8, "proceses = 4"))
            .with_help("did you mean `processes`?");
        let expected = "\
error: unknown key `proceses` in [group.workers]
  --> configs/demo.toml:12:1
   |
12 | proceses = 4
   | ^^^^^^^^
   = help: did you mean `processes`?";
        assert_eq!(d.render(), expected);
    }

    #[test]
    fn renders_notes_before_help_and_aligns_carets_after_tabs() {
        let d = Diagnostic::warning("w")
            .at(located(3, 2, 1, "\tx = 1"))
            .with_note("n")
            .with_help("h");
        assert_eq!(
            d.render(),
            "warning: w\n --> configs/demo.toml:3:2\n  |\n3 |     x = 1\n  |     ^\n  = note: n\n  = help: h"
        );
    }

    #[test]
    fn renders_file_only_and_unlocated() {
        let file_only = Diagnostic::error("cannot read config file: denied").at(Location {
            file: PathBuf::from("a.toml"),
            span: None,
        });
        assert_eq!(
            file_only.render(),
            "error: cannot read config file: denied\n --> a.toml"
        );
        assert_eq!(
            file_only.to_string(),
            "a.toml: error: cannot read config file: denied"
        );
        let bare = Diagnostic::error("no config").with_help("add one");
        assert_eq!(bare.render(), "error: no config\n  = help: add one");
        assert_eq!(bare.to_string(), "error: no config");
    }

    #[test]
    fn displays_one_line() {
        let d = Diagnostic::error("bad").at(located(12, 5, 1, "x"));
        assert_eq!(d.to_string(), "configs/demo.toml:12:5: error: bad");
        assert!(d.is_error());
        assert!(!Diagnostic::warning("w").is_error());
    }

    #[test]
    fn render_all_adds_a_summary() {
        assert_eq!(render_all(&[]), "");
        let diags = [
            Diagnostic::error("a"),
            Diagnostic::error("b"),
            Diagnostic::warning("c"),
        ];
        assert_eq!(
            render_all(&diags),
            "error: a\n\nerror: b\n\nwarning: c\n\nerror: 2 errors, 1 warning\n"
        );
        assert_eq!(
            render_all(&[Diagnostic::warning("c")]),
            "warning: c\n\nwarning: 1 warning\n"
        );
    }
}
