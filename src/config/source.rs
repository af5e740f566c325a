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
}

impl SourceFile {
    pub fn new(path: PathBuf, text: String) -> Self {
        let dir = absolute_dir(&path);
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        SourceFile {
            path,
            dir,
            text,
            line_starts,
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
    /// several lines is underlined to the end of its first line.
    fn span(&self, bytes: Range<usize>) -> Span {
        let start = floor_char_boundary(&self.text, bytes.start.min(self.text.len()));
        let end = floor_char_boundary(&self.text, bytes.end.clamp(start, self.text.len()));
        let line_index = self.line_starts.partition_point(|&s| s <= start) - 1;
        let line_start = self.line_starts[line_index];
        let line_end = self.text[line_start..]
            .find('\n')
            .map_or(self.text.len(), |i| line_start + i);
        let source_line = self.text[line_start..line_end].trim_end_matches('\r');
        let content_end = line_start + source_line.len();
        let width = self.text[start..end.clamp(start, content_end.max(start))]
            .chars()
            .count();
        Span {
            line: line_index + 1,
            col: self.text[line_start..start].chars().count() + 1,
            width: width.max(1),
            bytes: start..end,
            source_line: source_line.to_owned(),
        }
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
