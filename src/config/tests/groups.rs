//! Rules within one group table: program, environment, working directory.

use super::*;

#[test]
fn unknown_keys_are_located_at_the_key_with_a_suggestion() {
    let result = check_one("[group.w]\npython = \"a:b\"\nproceses = 4\n");
    assert_eq!(
        lines(result),
        ["/cfg/a.toml:3:1: error: unknown key `proceses` in [group.w]"]
    );
    assert_eq!(
        helps("[group.w]\npython = \"a:b\"\nproceses = 4\n"),
        ["did you mean `processes`?"]
    );
    assert_eq!(
        errors("groups = 1\n[supervisor]\nlog-format = \"text\""),
        [
            "/cfg/a.toml:1:1: error: unknown key `groups` at the top level",
            "/cfg/a.toml:3:1: error: unknown key `log-format` in [supervisor]",
        ]
    );
}

#[test]
fn a_group_runs_exactly_one_of_command_and_python() {
    assert_eq!(
        errors("[group.w]\ncommand = [\"PROG\"]\npython = \"a:b\"\n"),
        [
            "/cfg/a.toml:3:1: error: group `w` sets both `command` and `python`; a group runs one or the other"
        ]
    );
    assert_eq!(
        errors("\n[group.w]\nprocesses = 2\n"),
        ["/cfg/a.toml:2:1: error: group `w` has neither `command` nor `python`"]
    );
    // A present but broken `command` is not also reported as missing.
    assert_eq!(errors("[group.w]\ncommand = 1\n").len(), 1);
}

#[test]
fn python_only_keys_are_rejected_with_command() {
    assert_eq!(
        errors("[group.w]\ncommand = [\"PROG\"]\npreload = [\"json\"]\npython_executable = \"py\""),
        [
            "/cfg/a.toml:3:1: error: `preload` in [group.w] only applies to `python` groups",
            "/cfg/a.toml:4:1: error: `python_executable` in [group.w] only applies to `python` groups",
        ]
    );
}

#[test]
fn commands_must_name_a_program() {
    assert_eq!(
        errors("[group.w]\ncommand = []"),
        ["/cfg/a.toml:2:11: error: `command` in [group.w] cannot be empty"]
    );
    assert_eq!(
        errors("[group.w]\ncommand = [\"\", \"x\"]"),
        [
            "/cfg/a.toml:2:12: error: `command[0]` in [group.w] cannot be empty: it is the program to run"
        ]
    );
    assert_eq!(
        errors("[group.w]\npython = \"worker\""),
        [
            "/cfg/a.toml:2:10: error: invalid `python` target `worker` in [group.w]: expected `module:function`"
        ]
    );
}

#[test]
fn a_program_not_found_is_only_a_warning() {
    let loaded = check_one("[group.w]\ncommand = [\"no-such-program-xyz\", \"arg\"]").unwrap();
    assert_eq!(
        lines(Ok(loaded.clone())),
        [
            "/cfg/a.toml:2:12: warning: program `no-such-program-xyz` of group `w` is not found in PATH"
        ]
    );
    assert!(
        loaded
            .config
            .groups
            .contains_key(&GroupName::new("w").unwrap())
    );
}

#[test]
fn programs_are_searched_in_the_path_the_child_gets() {
    // The group's own PATH replaces drover's.
    let result = check_one("[group.w]\ncommand = [\"PROG\"]\nenv = { PATH = \"/nonexistent\" }");
    let warning = &result.unwrap().warnings[0];
    assert!(warning.message().ends_with("is not found in PATH"));
    assert_eq!(warning.notes(), ["PATH is `/nonexistent`"]);
}

#[test]
fn program_paths_are_resolved_against_cwd() {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().display().to_string();
    ok(&format!(
        "[group.w]\ncwd = \"{dir}\"\ncommand = [\"./PROG\"]"
    ));
    let result = check_one(&format!(
        "[group.w]\ncwd = \"{dir}\"\ncommand = [\"./missing/PROG\"]"
    ));
    assert_eq!(
        result.unwrap().warnings[0].message(),
        format!(
            "program `./missing/{}` of group `w` does not exist ({dir}/missing/{})",
            program(),
            program()
        )
    );
}

#[test]
fn a_missing_cwd_is_a_warning() {
    let result = check_one("[group.w]\ncwd = \"no/such/dir\"\npython = \"a:b\"");
    assert_eq!(
        lines(result),
        ["/cfg/a.toml:2:7: warning: `cwd` of group `w` is not a directory: /cfg/no/such/dir"]
    );
}

#[test]
fn env_names_and_values_are_checked() {
    assert_eq!(
        errors("[group.w]\npython = \"a:b\"\nenv = { \"A=B\" = \"1\", \"\" = \"2\", C = 3 }"),
        [
            "/cfg/a.toml:3:9: error: invalid environment variable name `A=B` in [group.w]: it cannot contain `=`",
            "/cfg/a.toml:3:22: error: environment variable names in [group.w] cannot be empty",
            "/cfg/a.toml:3:36: error: invalid type for `env.C` in [group.w]: expected a string, found an integer",
        ]
    );
}

/// Regression: `command = []` in `[group.hollow]` said "`command` cannot be
/// empty" with a location but no group; in a directory of configs the table
/// is what a reader looks for. Every error about a key of a group or queue
/// table names the table (checks across tables name it as group `x`).
#[test]
fn every_error_about_a_key_names_its_table() {
    let group_bodies = [
        "command = []",
        "command = [\"\"]",
        "command = \"a b\"",
        "command = [\"a\\u0000\"]",
        "command = [\"a\"]\npreload = [\"m\"]",
        "python = \"nope\"",
        "python = \"m:f\"\npreload = [\"1x\"]",
        "python = \"m:f\"\npython_executable = \"\"",
        "python = \"m:f\"\nprocesses = -1",
        "python = \"m:f\"\nstart_method = \"thread\"",
        "python = \"m:f\"\nupdate = 1",
        "python = \"m:f\"\ninputs = [\"Jobs\"]",
        "python = \"m:f\"\noutputs = [\"q\", \"q\"]",
        "python = \"m:f\"\nenv = { \"A=B\" = \"x\" }",
        "python = \"m:f\"\nenv = { \"\" = \"x\" }",
        "python = \"m:f\"\nenv = { A = \"\\u0000\" }",
        "python = \"m:f\"\ncwd = \"\"",
        "python = \"m:f\"\nclear_env = \"yes\"",
        "python = \"m:f\"\nrestart = \"sometimes\"",
        "python = \"m:f\"\nsuccess_codes = []",
        "python = \"m:f\"\nsuccess_codes = [256]",
        "python = \"m:f\"\nstart_secs = 1",
        "python = \"m:f\"\nrestart_delay = \"2m\"",
        "python = \"m:f\"\nrestart_delay_max = \"1ms\"",
        "python = \"m:f\"\nmax_restarts = \"3\"",
        "python = \"m:f\"\nstop_signal = \"SIGTREM\"",
        "python = \"m:f\"\nstop_timeout = \"10\"",
    ];
    for body in group_bodies {
        let found = errors(&format!("[group.hollow]\n{body}\n"));
        assert!(!found.is_empty(), "no error for {body:?}");
        for error in found.iter().filter(|e| e.contains(": error: ")) {
            let named = error.contains("[group.hollow]") || error.contains("group `hollow`");
            assert!(named, "{body:?}: {error}");
        }
    }
    let queue_bodies = [
        "capacity = 0",
        "max_message_bytes = \"big\"",
        "delivery = \"exactly-once\"",
        "prefetch = 1.5",
        "max_deliveries = -1",
        "dead_letter = \"Dead\"",
        "ack_timeout = 5",
        "durable = \"yes\"",
    ];
    for body in queue_bodies {
        let found = errors(&format!("[queue.q]\n{body}\n"));
        assert!(!found.is_empty(), "no error for {body:?}");
        for error in found.iter().filter(|e| !e.contains("has no")) {
            let named = error.contains("[queue.q]") || error.contains("queue `q`");
            assert!(named, "{body:?}: {error}");
        }
    }
    let supervisor_bodies = [
        "log_format = \"xml\"",
        "state_dir = \"\"",
        "dead_letter_max_bytes = 1",
    ];
    for body in supervisor_bodies {
        for error in errors(&format!("[supervisor]\n{body}\n")) {
            assert!(error.contains("[supervisor]"), "{body:?}: {error}");
        }
    }
}
