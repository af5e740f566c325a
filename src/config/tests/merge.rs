//! Rules across tables and files: references, namespace, `[supervisor]`,
//! usage warnings, and the order of diagnostics.

use std::path::PathBuf;

use super::*;

#[test]
fn referenced_queues_must_be_defined() {
    let text = "[queue.jobs]\n[group.w]\npython = \"a:b\"\ninputs = [\"jbos\", \"w\", \"other\"]\noutputs = [\"jobs\"]";
    assert_eq!(
        errors(text),
        [
            "/cfg/a.toml:4:11: error: undefined queue `jbos` in `inputs` of group `w`",
            "/cfg/a.toml:4:19: error: undefined queue `w` in `inputs` of group `w`",
            "/cfg/a.toml:4:24: error: undefined queue `other` in `inputs` of group `w`",
        ]
    );
    assert_eq!(
        helps(text),
        [
            "did you mean `jobs`?",
            "`w` is a group (defined in /cfg/a.toml:2:8), not a queue",
            "define it with a `[queue.other]` table",
        ]
    );
    assert_eq!(
        errors("[queue.jobs]\ndead_letter = \"dead\""),
        ["/cfg/a.toml:2:15: error: undefined dead-letter queue `dead` for queue `jobs`"]
    );
}

#[test]
fn a_queue_listed_twice_is_an_error() {
    assert_eq!(
        errors(&format!("{WIRED}outputs = [\"jobs\", \"jobs\"]")),
        ["/cfg/a.toml:9:20: error: queue `jobs` is listed twice in `outputs` in [group.workers]"]
    );
}

#[test]
fn queues_without_producer_or_consumer_are_warnings() {
    let text = "[queue.a]\n[queue.b]\ndead_letter = \"c\"\n[queue.c]\n[queue.d]\n\
                [group.w]\npython = \"m:f\"\ninputs = [\"b\"]\noutputs = [\"d\"]";
    let loaded = check_one(text).unwrap();
    assert_eq!(
        lines(Ok(loaded)),
        [
            "/cfg/a.toml:1:8: warning: queue `a` is not used: no group lists it in `inputs` or `outputs`",
            "/cfg/a.toml:2:8: warning: queue `b` has no producer: no group lists it in `outputs`",
            "/cfg/a.toml:4:8: warning: queue `c` has no consumer: no group lists it in `inputs`",
            "/cfg/a.toml:5:8: warning: queue `d` has no consumer: no group lists it in `inputs`",
        ]
    );
}

#[test]
fn usage_warnings_wait_for_readable_wiring() {
    // `inputs` is broken, so whether `jobs` has a consumer is unknown.
    let text = "[queue.jobs]\n[group.w]\npython = \"m:f\"\ninputs = \"jobs\"";
    assert_eq!(
        errors(text),
        [
            "/cfg/a.toml:4:10: error: invalid type for `inputs` in [group.w]: expected an array of strings, found a string"
        ]
    );
}

#[test]
fn names_are_one_namespace_across_files() {
    let result = check(&[
        (
            "a.toml",
            "[group.w]\npython = \"m:f\"\n[queue.q]\n[group.q]\npython = \"m:f\"",
        ),
        ("b.toml", "\n[queue.w]"),
    ]);
    assert_eq!(
        lines(result),
        [
            "/cfg/a.toml:4:8: error: group `q` has the same name as the queue defined in /cfg/a.toml:3:8",
            "/cfg/b.toml:2:8: error: queue `w` has the same name as the group defined in /cfg/a.toml:1:8",
        ]
    );
    let result = check(&[
        ("a.toml", "[group.w]\npython = \"m:f\""),
        ("b.toml", "[group.w]\npython = \"m:f\""),
    ]);
    assert_eq!(
        lines(result),
        ["/cfg/b.toml:1:8: error: group `w` is already defined in /cfg/a.toml:1:8"]
    );
}

#[test]
fn supervisor_is_defined_at_most_once() {
    let result = check(&[
        ("a.toml", "[supervisor]"),
        ("b.toml", "[supervisor]\nlog_format = \"json\""),
    ]);
    assert_eq!(
        lines(result),
        ["/cfg/b.toml:1:2: error: `[supervisor]` is already defined in /cfg/a.toml:1:2"]
    );
}

#[test]
fn supervisor_paths_are_relative_to_their_file() {
    let config = ok("[supervisor]\ncontrol_socket = \"run/d.sock\"\nstate_dir = \"state\"");
    assert_eq!(
        config.supervisor.control_socket,
        Some(PathBuf::from("/cfg/run/d.sock"))
    );
    assert_eq!(config.supervisor.state_dir, PathBuf::from("/cfg/state"));
}

#[test]
fn a_syntax_error_does_not_cause_follow_up_errors() {
    // `jobs` might be defined in the broken file: no "undefined queue".
    let result = check(&[
        ("a.toml", "[group.w]\npython = \"m:f\"\ninputs = [\"jobs\"]"),
        ("b.toml", "[queue.jobs\n"),
    ]);
    assert_eq!(
        lines(result),
        ["/cfg/b.toml:1:12: error: invalid TOML: unclosed table, expected `]`"]
    );
}

#[test]
fn invalid_names_are_reported_with_a_fix() {
    let result = check_one("[group.My-Workers]\npython = \"m:f\"\n[queue.1q]");
    let failed = result.unwrap_err();
    let messages: Vec<_> = failed
        .diagnostics
        .iter()
        .map(|d| (d.message(), d.help().unwrap()))
        .collect();
    assert_eq!(
        messages,
        [
            (
                "invalid group name `My-Workers`: a name must start with a lowercase letter a-z",
                "names match `[a-z][a-z0-9_]*`; try `my_workers`"
            ),
            (
                "invalid queue name `1q`: a name must start with a lowercase letter a-z",
                "names match `[a-z][a-z0-9_]*`"
            ),
        ]
    );
}

#[test]
fn every_error_is_reported_in_file_order() {
    let text = "[group.w]\nprocesses = -1\nstart_method = \"forkk\"\nrestart = \"sometimes\"\n\
                stop_signal = \"SIGFOO\"\nstart_secs = \"1\"\nclear_env = \"yes\"\n";
    let found = errors(text);
    let positions: Vec<&str> = found
        .iter()
        .map(|l| l.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        positions,
        [
            "/cfg/a.toml:1:1",
            "/cfg/a.toml:2:13",
            "/cfg/a.toml:3:16",
            "/cfg/a.toml:4:11",
            "/cfg/a.toml:5:15",
            "/cfg/a.toml:6:14",
            "/cfg/a.toml:7:13"
        ]
    );
}

#[test]
fn warnings_are_kept_when_the_config_fails() {
    let failed = check_one("[queue.jobs]\n[group.w]\nprocesses = \"x\"").unwrap_err();
    let severities: Vec<Severity> = failed
        .diagnostics
        .iter()
        .map(Diagnostic::severity)
        .collect();
    assert_eq!(
        severities,
        [Severity::Warning, Severity::Error, Severity::Error]
    );
}

#[test]
fn groups_and_queues_must_be_named_tables() {
    assert_eq!(
        errors("[group]\ncommand = [\"x\"]\n[[queue]]\ncapacity = 1"),
        [
            "/cfg/a.toml:2:11: error: invalid type for `group.command`: expected a table, found an array",
            "/cfg/a.toml:3:1: error: invalid type for `queue`: expected a table, found an array",
        ]
    );
    assert_eq!(
        helps("queue = 1"),
        ["define each queue as a table of its own: `[queue.NAME]`"]
    );
}
