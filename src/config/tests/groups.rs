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
            "/cfg/a.toml:3:1: error: `preload` only applies to `python` groups",
            "/cfg/a.toml:4:1: error: `python_executable` only applies to `python` groups",
        ]
    );
}

#[test]
fn commands_must_name_a_program() {
    assert_eq!(
        errors("[group.w]\ncommand = []"),
        ["/cfg/a.toml:2:11: error: `command` cannot be empty"]
    );
    assert_eq!(
        errors("[group.w]\ncommand = [\"\", \"x\"]"),
        ["/cfg/a.toml:2:12: error: the program name (`command[0]`) cannot be empty"]
    );
    assert_eq!(
        errors("[group.w]\npython = \"worker\""),
        ["/cfg/a.toml:2:10: error: invalid `python` target `worker`: expected `module:function`"]
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
            "/cfg/a.toml:3:9: error: invalid environment variable name `A=B`: it cannot contain `=`",
            "/cfg/a.toml:3:22: error: environment variable names cannot be empty",
            "/cfg/a.toml:3:36: error: invalid type for `env.C`: expected a string, found an integer",
        ]
    );
}
