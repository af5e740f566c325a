//! `env_file` and `${NAME}` in `command` arguments.

use std::collections::BTreeMap;

use super::*;
use crate::config::envfile::parse;

fn pairs(text: &str) -> Vec<(String, String)> {
    parse(text).unwrap_or_else(|p| panic!("{p:?}"))
}

#[test]
fn parses_bare_quoted_exported_and_commented_lines() {
    let text = "# comment\n\nA=1\nexport B = two words  # note\nC='lit $X \\n'\n\
                D=\"a\\nb \\\"q\\\" \\\\\"\r\nE=\nF=\"\" # empty\n  G=x=y\n";
    let got = pairs(text);
    let want = [
        ("A", "1"),
        ("B", "two words"),
        ("C", "lit $X \\n"),
        ("D", "a\nb \"q\" \\"),
        ("E", ""),
        ("F", ""),
        ("G", "x=y"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn the_readme_example_parses() {
    let readme = include_str!("../../../README.md");
    let start = readme.find("```sh\n# comments and blank lines").unwrap() + 6;
    let end = start + readme[start..].find("```").unwrap();
    let got = pairs(&readme[start..end]);
    let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["PORT", "GREETING", "MOTD"]);
    assert_eq!(got[0].1, "8080");
    assert_eq!(got[1].1, "literal, no $expansion or \\escapes");
    assert_eq!(
        got[2].1,
        "double quotes: \n \" \\ are a newline, a quote, a backslash"
    );
}

#[test]
fn an_overlong_value_is_an_error() {
    let text = format!("A={}\n", "x".repeat(super::super::limits::MAX_ARG_BYTES));
    let problems = parse(&text).unwrap_err();
    assert!(problems[0].1.contains("too long"), "{problems:?}");
}

#[test]
fn every_bad_line_is_located() {
    let text = "OK=1\nno equals here\n1X=2\nQ='open\nR=\"bad \\t\"\nS=\"x\" y\nT=a\"b\n";
    let problems = parse(text).unwrap_err();
    let at: Vec<(&str, &str)> = problems
        .iter()
        .map(|(r, m, _)| (&text[r.clone()], m.as_str()))
        .collect();
    assert_eq!(at.len(), 6, "{at:?}");
    assert_eq!(at[0].0, "no equals here");
    assert!(at[0].1.contains("expected `NAME=value`"));
    assert_eq!(at[1].0, "1X");
    assert_eq!(at[2].0, "'open");
    assert_eq!(at[3].0, "\\t");
    assert_eq!(at[4].0, "y");
    assert_eq!(at[5].0, "\"");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drover-envfile-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn env_files_apply_in_order_and_env_wins() {
    let dir = temp_dir("order");
    std::fs::write(dir.join("a.env"), "A=from-a\nB=from-a\nC=from-a\n").unwrap();
    std::fs::write(dir.join("b.env"), "B=from-b\nC=from-b\n").unwrap();
    let text = format!(
        "[group.g]\ncommand = [\"PROG\", \"${{A}}\"]\nenv_file = [\"{0}/a.env\", \"{0}/b.env\"]\n\
         env = {{ C = \"from-env\" }}\n",
        dir.display()
    );
    let config = ok(&text);
    let g = &config.groups[&GroupName::new("g").unwrap()];
    let want: BTreeMap<String, String> = [("A", "from-a"), ("B", "from-b"), ("C", "from-env")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(g.env, want);
    assert_eq!(g.env_files, [dir.join("a.env"), dir.join("b.env")]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_bad_line_is_an_error_in_the_env_file_and_a_missing_file_at_the_key() {
    let dir = temp_dir("bad");
    std::fs::write(dir.join("x.env"), "A=1\nnot a pair\n").unwrap();
    let text = format!(
        "[group.g]\ncommand = [\"PROG\"]\nenv_file = \"{}/x.env\"\n\
         [group.h]\ncommand = [\"PROG\"]\nenv_file = \"missing.env\"\n",
        dir.display()
    );
    let errors = errors(&text);
    assert_eq!(errors.len(), 2, "{errors:?}");
    let bad = format!("{}/x.env:2:1", dir.display());
    assert!(errors.iter().any(|e| e.contains(&bad)), "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("/cfg/missing.env") && e.contains("a.toml:6:")),
        "{errors:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn interpolated_names_must_be_in_the_childs_environment() {
    let ok_text = "[queue.q]\n[group.g]\ncommand = [\"PROG\", \"${DROVER_INDEX}\", \"${X}\", \
                   \"${DROVER_OUT_Q}\", \"$${NOPE}\", \"$HOME\", \"${PATH}\"]\n\
                   outputs = [\"q\"]\nenv = { X = \"1\" }\n[group.c]\ncommand = [\"PROG\"]\n\
                   inputs = [\"q\"]\n";
    ok(ok_text);
    let errors =
        errors("[group.g]\ncommand = [\"PROG\", \"${NOPE_SURELY_UNSET_42}\", \"${OPEN\"]\n");
    assert_eq!(errors.len(), 2, "{errors:?}");
    // drover's environment at run time may have it: a warning.
    assert!(
        errors[0].contains("warning: `command[1]`") && errors[0].contains("NOPE_SURELY_UNSET_42"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("error: `command[2]`") && errors[1].contains("without a closing"),
        "{errors:?}"
    );
    let loaded = check_one("[group.g]\ncommand = [\"PROG\", \"${NOPE_SURELY_UNSET_42}\"]\n");
    assert_eq!(loaded.unwrap().warnings.len(), 1);
    // With `clear_env`, nothing but PATH, HOME, LANG and TZ can come from
    // drover: any other unknown name is an error.
    let errors = super::errors(
        "[group.g]\ncommand = [\"PROG\", \"${NOPE_SURELY_UNSET_42}\"]\nclear_env = true\n",
    );
    assert!(errors[0].contains("error: `command[1]`"), "{errors:?}");
    // With `clear_env`, only PATH, HOME, LANG and TZ come from drover.
    let text = format!(
        "[group.g]\ncommand = [\"PROG\", \"${{{}}}\"]\nclear_env = true\n",
        std::env::vars()
            .find(|(k, _)| !KEPT_BY_CLEAR_ENV.contains(&k.as_str())
                && super::super::interpolate::is_name(k.as_bytes()))
            .unwrap()
            .0
    );
    assert_eq!(super::errors(&text).len(), 1);
}
