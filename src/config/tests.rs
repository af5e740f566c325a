//! Whole configs through every stage, from text to [`Config`] or
//! diagnostics, with a fixed [`Host`] so that nothing depends on the machine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::names::{GroupName, QueueName};
use crate::signal::Signal;

/// A program that certainly exists: the test binary, found through the
/// `PATH` of [`host`].
fn program() -> String {
    let exe = std::env::current_exe().unwrap();
    exe.file_name().unwrap().to_string_lossy().into_owned()
}

fn host() -> Host {
    let exe = std::env::current_exe().unwrap();
    Host {
        is_root: false,
        xdg_state_home: None,
        path: Some(exe.parent().unwrap().as_os_str().to_owned()),
    }
}

/// Validates files named `/cfg/<name>`; `PROG` in a text stands for
/// [`program`].
fn check(files: &[(&str, &str)]) -> Result<Loaded, Failed> {
    let sources = files
        .iter()
        .map(|(name, text)| {
            SourceFile::new(
                PathBuf::from("/cfg").join(name),
                text.replace("PROG", &program()),
            )
        })
        .collect();
    validate(sources, true, &host(), Vec::new())
}

fn check_one(text: &str) -> Result<Loaded, Failed> {
    check(&[("a.toml", text)])
}

fn ok(text: &str) -> Config {
    match check_one(text) {
        Ok(loaded) => {
            assert!(
                loaded.warnings.is_empty(),
                "{}",
                render_all(&loaded.warnings)
            );
            loaded.config
        }
        Err(failed) => panic!("{failed}"),
    }
}

/// The one-line form of every diagnostic.
fn lines(result: Result<Loaded, Failed>) -> Vec<String> {
    let diags = match result {
        Ok(loaded) => loaded.warnings,
        Err(failed) => failed.diagnostics,
    };
    diags.iter().map(ToString::to_string).collect()
}

fn errors(text: &str) -> Vec<String> {
    let result = check_one(text);
    assert!(result.is_err(), "expected errors");
    lines(result)
}

fn helps(text: &str) -> Vec<String> {
    match check_one(text) {
        Ok(_) => panic!("expected errors"),
        Err(failed) => failed
            .diagnostics
            .iter()
            .map(|d| d.help().unwrap_or("").to_owned())
            .collect(),
    }
}

const WIRED: &str = "
[queue.jobs]
[group.producer]
command = [\"PROG\"]
outputs = [\"jobs\"]
[group.workers]
python = \"examples.worker:main\"
inputs = [\"jobs\"]
";

#[test]
fn defaults_are_the_model_defaults() {
    let config = ok(WIRED);
    let workers = &config.groups[&GroupName::new("workers").unwrap()];
    let expected = GroupSpec {
        name: GroupName::new("workers").unwrap(),
        program: Program::Python {
            module: "examples.worker".into(),
            function: "main".into(),
            preload: vec![],
        },
        python_executable: "python3".into(),
        start_method: StartMethod::Spawn,
        processes: 1,
        inputs: vec![QueueName::new("jobs").unwrap()],
        outputs: vec![],
        env: Default::default(),
        clear_env: false,
        cwd: PathBuf::from("/cfg"),
        policy: Policy::default(),
        file: PathBuf::from("/cfg/a.toml"),
    };
    assert_eq!(workers, &expected);
    let jobs = &config.queues[&QueueName::new("jobs").unwrap()];
    assert_eq!(
        (
            jobs.capacity,
            jobs.max_message_bytes,
            jobs.prefetch,
            jobs.max_deliveries
        ),
        (10_000, 65_536, 1, 5)
    );
    assert_eq!(jobs.delivery, Delivery::AtLeastOnce);
    assert_eq!(
        config.supervisor,
        SupervisorConfig {
            control_socket: None,
            log_format: LogFormat::Text,
            state_dir: PathBuf::from("/cfg/.drover-state"),
        }
    );
    assert_eq!(config.files, [PathBuf::from("/cfg/a.toml")]);
}

#[test]
fn reads_every_group_key() {
    let config = ok(&format!(
        "{WIRED}start_method = \"forkserver\"\npreload = [\"json\", \"os.path\"]\npython_executable = \"/usr/bin/python3.12\"\n\
         processes = 0\noutputs = []\nenv = {{ LOG_LEVEL = \"info\" }}\nclear_env = true\ncwd = \"/\"\n\
         restart = \"never\"\nstop_signal = \"QUIT\"\nstop_timeout = \"1.5s\"\n"
    ));
    let w = &config.groups[&GroupName::new("workers").unwrap()];
    assert_eq!(w.start_method, StartMethod::Forkserver);
    assert_eq!(
        w.program,
        Program::Python {
            module: "examples.worker".into(),
            function: "main".into(),
            preload: vec!["json".into(), "os.path".into()]
        }
    );
    assert_eq!(w.python_executable, "/usr/bin/python3.12");
    assert_eq!(
        (w.processes, w.clear_env, w.cwd.as_path()),
        (0, true, Path::new("/"))
    );
    assert_eq!(w.env.get("LOG_LEVEL").map(String::as_str), Some("info"));
    assert_eq!(w.policy.restart, RestartPolicy::Never);
    assert_eq!(w.policy.stop_signal, Signal::Quit);
    assert_eq!(w.policy.stop_timeout, Duration::from_millis(1500));
    let p = &config.groups[&GroupName::new("producer").unwrap()];
    assert_eq!(p.program, Program::Command(vec![program().into()]));
}

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
        ["/cfg/a.toml:9:20: error: queue `jobs` is listed twice in `outputs`"]
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
            "/cfg/a.toml:4:10: error: invalid type for `inputs`: expected an array of strings, found a string"
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
