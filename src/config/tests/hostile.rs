//! Hostile input through [`load_files`], the entry point of the config fuzz
//! target: whatever the bytes, the loader returns diagnostics and never
//! panics, and its work stays proportional to the input (the cases here
//! would take minutes, or abort, if it did not; no test measures time).

use std::path::PathBuf;

use super::*;

/// `load_files` on files named `/cfg/<name>`.
fn load(files: &[(&str, &[u8])]) -> Result<Loaded, Failed> {
    let files = files
        .iter()
        .map(|(name, bytes)| (PathBuf::from("/cfg").join(name), bytes.to_vec()))
        .collect();
    load_files(files)
}

fn load_one(text: &str) -> Result<Loaded, Failed> {
    load(&[("a.toml", text.as_bytes())])
}

/// The diagnostics, whatever the outcome.
fn diagnostics(result: Result<Loaded, Failed>) -> Vec<Diagnostic> {
    match result {
        Ok(loaded) => loaded.warnings,
        Err(failed) => failed.diagnostics,
    }
}

/// Asserts that every diagnostic renders to a few lines of modest length:
/// no message or quoted line repeats a huge value.
fn assert_short(diags: &[Diagnostic]) {
    for d in diags {
        let rendered = d.render();
        assert!(
            rendered.len() < 1200,
            "{} bytes: {rendered:.2000}",
            rendered.len()
        );
    }
}

/// Regression: no files at all reached a `debug_assert!` in `validate`.
#[test]
fn no_files_is_an_error() {
    let failed = load_files(Vec::new()).unwrap_err();
    assert_eq!(
        failed
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["error: no config files"]
    );
}

#[test]
fn empty_files_make_an_empty_config() {
    let loaded = load(&[("a.toml", b""), ("b.toml", b"\n# nothing\n")]).unwrap();
    assert!(loaded.config.groups.is_empty() && loaded.config.queues.is_empty());
    assert_eq!(loaded.config.files.len(), 2);
}

#[test]
fn deep_nesting_is_a_syntax_error_not_a_stack_overflow() {
    let depth = 100_000;
    let arrays = format!("a = {}{}", "[".repeat(depth), "]".repeat(depth));
    let tables = format!("a = {}{}", "{ a = ".repeat(depth), "}".repeat(depth));
    let dotted = format!("{} = 1", vec!["a"; depth].join("."));
    let header = format!("[{}]", vec!["group"; depth].join("."));
    for text in [arrays, tables, dotted, header] {
        let diags = diagnostics(load_one(&text));
        assert!(diags.iter().any(Diagnostic::is_error), "{text:.40}");
        assert_short(&diags);
    }
    // Nesting the parser allows, where the config expects a string.
    let text = format!(
        "[group.w]\npython = \"m:f\"\ninputs = [{}{}]",
        "[".repeat(50),
        "]".repeat(50)
    );
    let failed = load_one(&text).unwrap_err();
    assert_eq!(
        failed.diagnostics[0].message(),
        "invalid type for `inputs[0]` in [group.w]: expected a string, found an array"
    );
}

#[test]
fn huge_integers_are_range_errors() {
    let text = "[queue.q]\ncapacity = 999999999999999999999999999999999999999999\n\
                prefetch = -9223372036854775808\nmax_deliveries = 0x7fffffffffffffff\n\
                [group.w]\npython = \"m:f\"\nprocesses = 0xffffffffffffffffffffffffffffffffffff\n\
                success_codes = [99999999999999999999]\ninputs = [\"q\"]\noutputs = [\"q\"]";
    let messages: Vec<String> = diagnostics(load_one(text))
        .iter()
        .map(|d| d.message().to_owned())
        .collect();
    assert_eq!(
        messages,
        [
            "`capacity` in [queue.q] is too large: 999999999999999999999999999999999999999999 (the maximum is 1000000)",
            "`prefetch` in [queue.q] must be at least 1, found -9223372036854775808",
            "`max_deliveries` in [queue.q] is too large: 0x7fffffffffffffff (the maximum is 10000)",
            "`processes` in [group.w] is too large: 0xffffffffffffffffffffffffffffffffffff (the maximum is 100000)",
            "`success_codes[0]` in [group.w] is too large: 99999999999999999999 (the maximum is 255)",
        ]
    );
}

/// A long string (past every length bound) in every place a string goes:
/// each is one or two errors, and no message repeats the string. 256 KiB
/// here and 10 MB once below: the parser is slow in test builds.
#[test]
fn long_strings_are_reported_briefly() {
    let big = "x".repeat(256 << 10);
    let places = [
        format!("\"{big}\" = 1"),
        format!("[group.\"{big}\"]\npython = \"m:f\""),
        format!("[queue.{big}]"),
        format!("[group.w]\ncommand = [\"/bin/sh\", \"{big}\"]"),
        format!("[group.w]\ncommand = \"{big}\""),
        format!("[group.w]\npython = \"{big}\""),
        format!("[group.w]\npython = \"m:f\"\nenv = {{ A = \"{big}\" }}"),
        format!("[group.w]\npython = \"m:f\"\nstart_secs = \"{big}\""),
        format!("[group.w]\npython = \"m:f\"\nstop_signal = \"{big}\""),
        format!("[group.w]\npython = \"m:f\"\nstart_method = \"{big}\""),
        format!("[group.w]\npython = \"m:f\"\ninputs = [\"{big}\"]"),
        format!("[group.w]\npython = \"m:f\"\ncwd = \"{big}\""),
        format!("[supervisor]\ndead_letter_max_bytes = \"1{big}\""),
        format!("[supervisor]\nstate_dir = \"{big}\""),
    ];
    for text in places {
        let diags = diagnostics(load_one(&text));
        let errors = diags.iter().filter(|d| d.is_error()).count();
        assert!((1..=2).contains(&errors), "{errors} errors for {text:.40}");
        assert_short(&diags);
    }
}

#[test]
fn a_ten_megabyte_argument_is_reported_briefly() {
    let big = "x".repeat(10 << 20);
    let text = format!("[group.w]\ncommand = [\"/bin/sh\", \"{big}\"]");
    let failed = load_one(&text).unwrap_err();
    assert_eq!(failed.diagnostics.len(), 1);
    assert_eq!(
        failed.diagnostics[0].message(),
        "`command[1]` in [group.w] is too long: 10485760 bytes (the maximum is 131071 bytes)"
    );
    assert_short(&failed.diagnostics);
}

#[test]
fn control_characters_in_names_are_escaped() {
    let text = "\"a\\u0000b\" = 1\n[group.\"w\\u001b[31m\"]\npython = \"m:f\"\n\
                env = { \"A\\u0000\" = \"1\" }\n[queue.\"\\u0000\"]";
    let messages: Vec<String> = diagnostics(load_one(text))
        .iter()
        .map(|d| d.message().to_owned())
        .collect();
    assert_eq!(
        messages,
        [
            "unknown key `a\\u{0}b` at the top level",
            "invalid group name `w\\u{1b}[31m`: a name may only contain lowercase letters, digits and `_` (found '\\u{1b}')",
            "invalid environment variable name `A\\u{0}` in [group.w\\u{1b}[31m]: it cannot contain a NUL byte",
            "invalid queue name `\\u{0}`: a name must start with a lowercase letter a-z",
        ]
    );
}

#[test]
fn definitions_repeated_across_files_are_errors() {
    let a = b"[supervisor]\n[group.w]\npython = \"m:f\"\n[queue.q]\n" as &[u8];
    let result = load(&[("a.toml", a), ("b.toml", a), ("c.toml", a)]);
    let lines: Vec<String> = diagnostics(result)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "/cfg/b.toml:1:2: error: `[supervisor]` is already defined in /cfg/a.toml:1:2",
            "/cfg/b.toml:2:8: error: group `w` is already defined in /cfg/a.toml:2:8",
            "/cfg/b.toml:4:8: error: queue `q` is already defined in /cfg/a.toml:4:8",
            "/cfg/c.toml:1:2: error: `[supervisor]` is already defined in /cfg/a.toml:1:2",
            "/cfg/c.toml:2:8: error: group `w` is already defined in /cfg/a.toml:2:8",
            "/cfg/c.toml:4:8: error: queue `q` is already defined in /cfg/a.toml:4:8",
        ]
    );
    // Within one file, TOML itself forbids it.
    let failed = load_one("[group.w]\n[group.w]").unwrap_err();
    assert!(failed.diagnostics[0].message().starts_with("invalid TOML"));
}

#[test]
fn odd_bytes_are_located_errors() {
    let cases: [&[u8]; 5] = [
        b"\xff\xfe[group.w]",
        b"\xef\xbb\xbf[group.w]\npython = \"m:f\"",
        b"[group.w]\r\npython = \"m:f\"\r\nprocesses = -1\r\n",
        b"\0",
        b"[group.w]\npython = \"m:f\"\nprocesses = 1\xc3",
    ];
    for bytes in cases {
        let diags = diagnostics(load(&[("a.toml", bytes)]));
        assert!(diags.iter().all(|d| d.location().is_some()), "{diags:?}");
    }
}

/// Regression: every diagnostic copied its whole line and counted its
/// column from the line's start, so many errors on one long line were
/// quadratic (a 1 MB line of bad names: minutes).
#[test]
fn many_errors_on_one_long_line_stay_linear() {
    let n = 50_000;
    let text = format!(
        "[group.w]\npython = \"m:f\"\ninputs = [{}]",
        vec!["\"Q\""; n].join(", ")
    );
    let failed = load_one(&text).unwrap_err();
    assert_eq!(failed.diagnostics.len(), n);
    assert_short(&failed.diagnostics);
    let last = failed
        .diagnostics
        .last()
        .and_then(|d| d.location()?.span.clone());
    let last = last.unwrap();
    assert_eq!((last.line, last.col), (3, 11 + 5 * (n - 1)));
    assert!(last.source_line.starts_with('…') && last.source_line.ends_with(", \"Q\"]"));
}

/// Mutations of a valid config (bytes flipped, inserted, deleted, files
/// split): the loader answers each without panicking. A small, seeded
/// stand-in for the fuzz target, run with every `cargo test`.
#[test]
fn mutated_configs_never_panic() {
    let base = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/demo.toml"))
        .unwrap_or_else(|_| WIRED.as_bytes().to_vec());
    let alphabet = b"[]{}=\"',.\n#\\-_0123456789azAZ \t\r\xc3\xa9\x00";
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |below: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % below.max(1) as u64) as usize
    };
    for _ in 0..1500 {
        let mut bytes = base.clone();
        for _ in 0..1 + next(8) {
            let at = next(bytes.len() + 1);
            match next(3) {
                0 if at < bytes.len() => bytes[at] = alphabet[next(alphabet.len())],
                1 => bytes.insert(at, alphabet[next(alphabet.len())]),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        let split = next(bytes.len() + 1);
        let (a, b) = bytes.split_at(split);
        for d in diagnostics(load(&[("a.toml", a), ("b.toml", b)])) {
            d.render();
        }
    }
}
