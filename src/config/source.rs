//! A config file in memory: its text, the path to show, the directory that
//! its relative paths are resolved against, and byte offset → line:col.

use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use super::diag::{Location, Span};

/// One config file's text and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    /// As shown to the user: the path they gave, joined with the file name.
    pub path: PathBuf,
    /// The absolute directory of the file; relative paths in it start here.
    pub dir: PathBuf,
    pub text: String,
    /// Byte offset of the start of every line.
    line_starts: Vec<usize>,
    /// `marks[k]`: the char boundary at or just before byte `k * CHUNK`,
    /// and the number of chars before it; a column is counted from the
    /// nearest mark instead of from the start of a line that may be
    /// megabytes long.
    marks: Vec<(usize, usize)>,
}

/// Bytes between two of [`SourceFile::marks`].
const CHUNK: usize = 1024;

/// A line longer than this many bytes is quoted as an excerpt around the
/// offending text: a diagnostic about one value of a 10 MB line does not
/// copy the line.
const LONG_LINE: usize = 240;
/// Bytes of context on each side of the offending text in an excerpt.
const CONTEXT: usize = 60;
/// The most bytes of the offending text an excerpt underlines.
const UNDERLINE: usize = 120;

impl SourceFile {
    pub fn new(path: PathBuf, text: String) -> Self {
        let dir = absolute_dir(&path);
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let mut marks = Vec::with_capacity(text.len() / CHUNK + 1);
        let mut last = (0, 0);
        for at in (0..=text.len()).step_by(CHUNK) {
            let at = floor_char_boundary(&text, at);
            let chars = text.get(last.0..at).map_or(0, |s| s.chars().count());
            last = (at, last.1 + chars);
            marks.push(last);
        }
        SourceFile {
            path,
            dir,
            text,
            line_starts,
            marks,
        }
    }

    /// The location of the text at `bytes`.
    pub fn at(&self, bytes: Range<usize>) -> Location {
        Location {
            file: self.path.clone(),
            span: Some(self.span(bytes)),
        }
    }

    /// The file as a whole.
    pub fn whole(&self) -> Location {
        Location {
            file: self.path.clone(),
            span: None,
        }
    }

    /// Line, column and underline width of `bytes`; a span running over
    /// several lines is underlined to the end of its first line. Costs the
    /// same on a line of any length.
    fn span(&self, bytes: Range<usize>) -> Span {
        let text = &self.text;
        let start = floor_char_boundary(text, bytes.start.min(text.len()));
        let end = floor_char_boundary(text, bytes.end.clamp(start, text.len()));
        // The first line start is 0, so there is always one at or before `start`.
        let line_index = self
            .line_starts
            .partition_point(|&s| s <= start)
            .saturating_sub(1);
        let line_start = self.line_starts.get(line_index).copied().unwrap_or(0);
        let line_end = match self.line_starts.get(line_index + 1) {
            Some(next) => next.saturating_sub(1),
            None => text.len(),
        };
        let line = text.get(line_start..line_end).unwrap_or_default();
        let content_end = line_start + line.trim_end_matches('\r').len();
        let marked_end = end.clamp(start, content_end.max(start));
        // A span that starts in a line's trailing '\r's (which the shown
        // line drops) points just past the shown text.
        let col = self.chars(line_start..start.min(content_end)) + 1;
        let (source_line, source_col, width) = if content_end - line_start <= LONG_LINE {
            let width = self.chars(start..marked_end);
            let whole = text.get(line_start..content_end).unwrap_or_default();
            (whole.to_owned(), col, width)
        } else {
            self.excerpt(line_start..content_end, start, marked_end)
        };
        Span {
            line: line_index + 1,
            col,
            width: width.max(1),
            bytes: start..end,
            source_line,
            source_col,
        }
    }

    /// The part of the long line `line` around `start..end` (a range within
    /// it, on char boundaries), with `…` where text is left out; the column
    /// of `start` in it and the width to underline.
    fn excerpt(&self, line: Range<usize>, start: usize, end: usize) -> (String, usize, usize) {
        let text = &self.text;
        let from = floor_char_boundary(text, start.saturating_sub(CONTEXT).max(line.start));
        let marked_end = floor_char_boundary(text, end.min(start + UNDERLINE)).max(start);
        let to = floor_char_boundary(text, (marked_end + CONTEXT).min(line.end)).max(marked_end);
        let mut excerpt = String::new();
        if from > line.start {
            excerpt.push('…');
        }
        let col = excerpt.chars().count() + self.chars(from..start) + 1;
        excerpt += text.get(from..to).unwrap_or_default();
        if to < line.end {
            excerpt.push('…');
        }
        (excerpt, col, self.chars(start..marked_end))
    }

    /// The number of chars in `bytes` (whose ends are char boundaries).
    fn chars(&self, bytes: Range<usize>) -> usize {
        self.chars_before(bytes.end) - self.chars_before(bytes.start)
    }

    /// The number of chars before byte `offset` (a char boundary).
    fn chars_before(&self, offset: usize) -> usize {
        let mark = self.marks.get(offset / CHUNK).copied();
        let (at, counted) = mark.unwrap_or((0, 0));
        let rest = self.text.get(at..offset).unwrap_or_default();
        counted + rest.chars().count()
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The absolute directory holding `file`, with `.` components removed
/// (symlinks and `..` are left alone: they are the user's to resolve).
fn absolute_dir(file: &Path) -> PathBuf {
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    normalize(&std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf()))
}

/// `path` if absolute, else `dir/path`; without `.` components.
pub(crate) fn resolve(dir: &Path, path: &Path) -> PathBuf {
    normalize(&dir.join(path))
}

fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> SourceFile {
        SourceFile::new(PathBuf::from("/etc/drover/a.toml"), text.to_owned())
    }

    fn pos(f: &SourceFile, bytes: Range<usize>) -> (usize, usize, usize, String) {
        let s = f.span(bytes);
        (s.line, s.col, s.width, s.source_line)
    }

    /// Found by the config fuzz target: a span after a line's trailing
    /// '\r' had its column counted past the shown line.
    #[test]
    fn a_span_in_trailing_carriage_returns_points_past_the_shown_line() {
        let f = file("x = 1\r\r\n");
        assert_eq!(pos(&f, 6..7), (1, 6, 1, "x = 1".into()));
    }

    #[test]
    fn converts_offsets_to_line_and_column() {
        let f = file("a = 1\nbb = 2\n");
        assert_eq!(pos(&f, 0..1), (1, 1, 1, "a = 1".into()));
        assert_eq!(pos(&f, 6..8), (2, 1, 2, "bb = 2".into()));
        assert_eq!(pos(&f, 11..12), (2, 6, 1, "bb = 2".into()));
    }

    #[test]
    fn counts_columns_in_chars() {
        let f = file("é = \"ü\" x");
        // "x" is at byte 11 but char 10.
        assert_eq!(pos(&f, 11..12), (1, 10, 1, "é = \"ü\" x".into()));
        assert_eq!(pos(&f, 5..9).2, 3);
    }

    #[test]
    fn handles_empty_spans_crlf_and_end_of_file() {
        let f = file("a = [\r\n1,\r\n");
        assert_eq!(pos(&f, 4..4), (1, 5, 1, "a = [".into()));
        assert_eq!(pos(&f, 4..10), (1, 5, 1, "a = [".into()));
        assert_eq!(pos(&f, 11..11), (3, 1, 1, String::new()));
        assert_eq!(pos(&f, 50..60), (3, 1, 1, String::new()));
    }

    #[test]
    fn counts_columns_across_marks() {
        // Multi-byte chars straddle the marks every `CHUNK` bytes.
        let text = format!("a\n{}x", "é".repeat(CHUNK * 3));
        let f = file(&text);
        let x = text.len() - 1;
        let s = f.span(x..x + 1);
        assert_eq!((s.line, s.col), (2, CHUNK * 3 + 1));
        for offset in [2, CHUNK, CHUNK + 1, 2 * CHUNK - 1, x] {
            let start = floor_char_boundary(&text, offset);
            assert_eq!(f.chars_before(start), text[..start].chars().count());
        }
    }

    /// Regression: every diagnostic copied its whole line, so many errors
    /// on one megabyte line were quadratic.
    #[test]
    fn quotes_an_excerpt_of_a_long_line() {
        let line = format!("v = [{}\"bad\"{}]", "1, ".repeat(1000), ", 2".repeat(1000));
        let f = file(&line);
        let at = line.find("\"bad\"").unwrap();
        let s = f.span(at..at + 5);
        assert_eq!((s.line, s.col, s.width), (1, at + 1, 5));
        assert!(s.source_line.len() < 2 * (CONTEXT + UNDERLINE));
        assert!(s.source_line.starts_with('…') && s.source_line.ends_with('…'));
        let marked: String = s
            .source_line
            .chars()
            .skip(s.source_col - 1)
            .take(s.width)
            .collect();
        assert_eq!(marked, "\"bad\"");
        // A long span is underlined up to a limit.
        let s = f.span(0..line.len());
        assert_eq!((s.col, s.source_col, s.width), (1, 1, UNDERLINE));
        assert!(!s.source_line.starts_with('…'));
    }

    #[test]
    fn resolves_relative_paths_against_the_file_directory() {
        let f = file("");
        assert_eq!(f.dir, PathBuf::from("/etc/drover"));
        assert_eq!(
            resolve(&f.dir, Path::new("./run/x.sock")),
            PathBuf::from("/etc/drover/run/x.sock")
        );
        assert_eq!(resolve(&f.dir, Path::new("/tmp")), PathBuf::from("/tmp"));
        assert_eq!(
            resolve(&f.dir, Path::new(".")),
            PathBuf::from("/etc/drover")
        );
    }

    #[test]
    fn a_bare_file_name_lives_in_the_current_directory() {
        let f = SourceFile::new(PathBuf::from("demo.toml"), String::new());
        assert_eq!(f.dir, normalize(&std::env::current_dir().unwrap()));
    }
}
