//! Fuzz target: the config loader, from bytes to the validated model, and
//! the rendering of what it reports.
//!
//! The input is one to four config files, separated by the line `---8<---`
//! (a fourth separator and anything after it stay in the fourth file). They
//! are validated as `/fuzz/00.toml`, `/fuzz/01.toml`, … in that order, as a
//! directory of them would be merged. Every diagnostic is then rendered
//! (carets under spans are where an out-of-range index would hide) and
//! checked against the contract its types document.

#![no_main]

use std::path::PathBuf;

use drover::config::{Diagnostic, Loaded, Span, load_files, render_all};
use libfuzzer_sys::fuzz_target;

/// Ends one file and starts the next. A syntax error in TOML, so the
/// fuzzer loses nothing by using it as a separator.
const SEPARATOR: &[u8] = b"\n---8<---\n";

/// Enough for every rule across files (a name defined twice, a second
/// `[supervisor]`, a queue used in one file and defined in another) and
/// their combinations; more would only make inputs longer.
const MAX_FILES: usize = 4;

fuzz_target!(|data: &[u8]| {
    // Never zero files: a directory without any is rejected before
    // validation, and validation asserts that it has something to merge.
    let files: Vec<(PathBuf, Vec<u8>)> = split(data)
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| (PathBuf::from(format!("/fuzz/{i:02}.toml")), bytes.to_vec()))
        .collect();
    let texts: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(path, bytes)| (path.clone(), String::from_utf8_lossy(bytes).into_owned()))
        .collect();
    match load_files(files) {
        Ok(Loaded { warnings, .. }) => {
            assert!(
                !warnings.iter().any(Diagnostic::is_error),
                "a loaded config carries an error"
            );
            check_all(&warnings, &texts);
        }
        Err(failed) => {
            assert!(
                failed.diagnostics.iter().any(Diagnostic::is_error),
                "a rejected config has no error"
            );
            check_all(&failed.diagnostics, &texts);
        }
    }
});

/// `data` cut at the first `MAX_FILES - 1` separators.
fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut files = Vec::with_capacity(MAX_FILES);
    let mut rest = data;
    while files.len() < MAX_FILES - 1 {
        let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) else {
            break;
        };
        files.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    files.push(rest);
    files
}

/// Renders every diagnostic both ways (`render_all` is what `drover check`
/// prints, `Display` the one line for logs) and checks each located one against
/// the file it points into.
fn check_all(diags: &[Diagnostic], texts: &[(PathBuf, String)]) {
    let _ = render_all(diags);
    for d in diags {
        let _ = d.to_string();
        let Some(location) = d.location() else {
            continue;
        };
        let text = texts
            .iter()
            .find(|(path, _)| *path == location.file)
            .map(|(_, text)| text.as_str());
        let Some(text) = text else {
            panic!("diagnostic points into a file not given: {d}");
        };
        if let Some(span) = &location.span {
            check_span(span, text, d);
        }
    }
}

/// What `Span` documents: 1-based line and column, a width of at least one
/// that ends at most one past the line's end, byte offsets on char
/// boundaries of the file, and `source_line` the very line they are on.
/// (For a file that is not UTF-8 the text is its lossy decoding, which is
/// what the loader locates the error in.)
fn check_span(span: &Span, text: &str, d: &Diagnostic) {
    assert!(
        span.line >= 1 && span.col >= 1 && span.width >= 1,
        "{d}: {span:?}"
    );
    let Span { bytes, .. } = span;
    assert!(
        bytes.start <= bytes.end && bytes.end <= text.len(),
        "{d}: span {bytes:?} outside a file of {} bytes",
        text.len()
    );
    assert!(
        text.is_char_boundary(bytes.start) && text.is_char_boundary(bytes.end),
        "{d}: span {bytes:?} splits a char"
    );
    let line = text.split('\n').nth(span.line - 1);
    let Some(line) = line else {
        panic!("{d}: line {} of a file of fewer lines", span.line);
    };
    let shown = line.trim_end_matches('\r');
    if span.source_line != shown {
        // A very long line is shown as an excerpt: pieces of the line (its
        // control characters escaped) with `…` where text is left out.
        assert!(
            shown.len() > 240 && span.source_line.contains('…'),
            "{d}: source_line is neither line {} nor an excerpt of it",
            span.line
        );
    } else {
        assert_eq!(span.source_col, span.col, "{d}: a whole line's columns");
    }
    // The real column lies within the line (trailing '\r's dropped), plus
    // one past its end; the underline within what is shown.
    let chars = shown.chars().count();
    assert!(
        span.col <= chars + 1,
        "{d}: col {} past the end of a line of {chars} chars",
        span.col
    );
    let shown_chars = span.source_line.chars().count();
    assert!(
        span.source_col - 1 + span.width <= shown_chars + 1,
        "{d}: col {} width {} past the end of the {shown_chars} chars shown",
        span.source_col,
        span.width
    );
}
