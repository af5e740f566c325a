//! Child output capture: whole prefixed lines, JSON lines, 5 MB
//! line-exact, invalid UTF-8 replaced, a last line without newline kept.

mod common;

use common::Drover;

#[test]
fn five_megabytes_of_output_arrive_line_exact() {
    // 50,000 numbered lines of ~100 bytes each, from two children at once.
    let d = Drover::start(
        "bulk",
        r#"
[group.bulk]
command = ["python3", "-c", "import os, sys\ni = os.environ['DROVER_INDEX']\nfor n in range(50000):\n    sys.stdout.write(f'{i}:{n:06d}:' + 'x' * 90 + '\\n')\nsys.stdout.flush()"]
processes = 2
restart = "never"
start_secs = "100ms"
"#,
    );
    d.wait_group_state("bulk", "exited");
    let text = d.stdout.wait_for("100,000 lines", |t| {
        t.contains("bulk[0] 0:049999:") && t.contains("bulk[1] 1:049999:")
    });
    for index in 0..2 {
        let prefix = format!("bulk[{index}] ");
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
        assert_eq!(lines.len(), 50_000);
        for (n, line) in lines.iter().enumerate() {
            let expected = format!("{prefix}{index}:{n:06}:{}", "x".repeat(90));
            assert_eq!(*line, expected, "line {n} of child {index}");
        }
    }
    assert!(
        text.lines()
            .all(|l| l.starts_with("bulk[0] ") || l.starts_with("bulk[1] ")),
        "no line is interleaved with another"
    );
}

#[test]
fn json_lines_carry_group_index_pid_and_stream() {
    let d = Drover::start(
        "json",
        r#"
[supervisor]
log_format = "json"

[group.talk]
command = ["sh", "-c", "echo out; echo err >&2; printf 'no newline'"]
restart = "never"
start_secs = "100ms"
"#,
    );
    d.wait_group_state("talk", "exited");
    let text = d.stdout.wait_count("\n", 3);
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let find = |line: &str| {
        records
            .iter()
            .find(|r| r["line"] == line)
            .unwrap_or_else(|| panic!("no record for {line:?} in {text}"))
    };
    assert_eq!(find("out")["stream"], "stdout");
    assert_eq!(find("err")["stream"], "stderr");
    let last = find("no newline");
    assert_eq!(last["group"], "talk");
    assert_eq!(last["index"], 0);
    assert!(last["pid"].as_i64().unwrap() > 0);
}

#[test]
fn invalid_utf8_is_replaced_and_a_final_partial_line_is_kept() {
    let d = Drover::start(
        "utf8",
        r#"
[group.bytes]
command = ["printf", 'ok \377 bytes\nlast line without newline']
restart = "never"
start_secs = "100ms"
"#,
    );
    d.wait_group_state("bytes", "exited");
    let text = d
        .stdout
        .wait_for("both lines", |t| t.contains("without newline"));
    assert!(text.contains("bytes[0] ok \u{fffd} bytes\n"), "{text:?}");
    assert!(
        text.contains("bytes[0] last line without newline\n"),
        "{text:?}"
    );
}

#[test]
fn over_long_lines_are_split_not_buffered_without_bound() {
    let d = Drover::start(
        "long",
        r#"
[group.long]
command = ["python3", "-c", "import sys; sys.stdout.write('y' * 200000 + '\\n')"]
restart = "never"
start_secs = "100ms"
"#,
    );
    d.wait_group_state("long", "exited");
    let text = d
        .stdout
        .wait_for("the whole line", |t| t.matches('y').count() >= 200_000);
    let pieces: Vec<usize> = text
        .lines()
        .filter_map(|l| l.strip_prefix("long[0] "))
        .map(str::len)
        .collect();
    assert_eq!(pieces, [65536, 65536, 65536, 3392]);
}

/// drover's own events carry the child as fields, not only in the message:
/// a JSON log can be filtered by group and index without parsing text.
#[test]
fn json_events_of_drover_carry_group_index_pid_and_exit() {
    let d = Drover::start(
        "jsonevents",
        r#"
[supervisor]
log_format = "json"

[group.quits]
command = ["sh", "-c", "exit 3"]
restart = "never"
start_secs = "100ms"
"#,
    );
    d.wait_group_state("quits", "exited");
    let text = d
        .stderr
        .wait_for("the exit event", |t| t.contains("quits[0]: exited"));
    let event: serde_json::Value = text
        .lines()
        .find(|l| l.contains("quits[0]: exited"))
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .unwrap();
    // Top-level fields, like the child-output lines.
    let fields = &event;
    assert!(event["message"].as_str().is_some(), "{event}");
    assert_eq!(fields["group"], "quits", "{event}");
    assert_eq!(fields["index"], 0, "{event}");
    assert!(fields["pid"].as_i64().unwrap() > 0, "{event}");
    assert_eq!(fields["exit"], "3", "{event}");
}
