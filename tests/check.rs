//! Snapshot tests of config diagnostics: what `drover check` shows users.
//!
//! Each directory under `tests/check/` is one config (one or more `.toml`
//! files) and an `expected.txt`: the output of [`render_all`] for it, with
//! the case directory written as `configs`, then a last line saying whether
//! the config loaded. Regenerate after an intended change with
//! `DROVER_BLESS=1 cargo test --test check`, then read every diff: it is
//! what users see.

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover::config::names::{GroupName, QueueName};
use drover::config::signal::Signal;
use drover::config::{
    self, Delivery, LogFormat, Program, RestartPolicy, StartMethod, UpdateMode, render_all,
};

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/check")
        .join(case)
}

/// What a user sees for the config of `case`.
fn render(case: &str) -> (String, Option<config::Config>) {
    let dir = case_dir(case);
    let (text, config) = match config::load(&dir) {
        Ok(loaded) => {
            let c = &loaded.config;
            let status = format!(
                "-- loaded: {}, {}, {}\n",
                count(c.groups.len(), "group"),
                count(c.queues.len(), "queue"),
                count(c.files.len(), "file")
            );
            (render_all(&loaded.warnings) + &status, Some(loaded.config))
        }
        Err(failed) => (render_all(&failed.diagnostics) + "-- rejected\n", None),
    };
    (text.replace(dir.to_str().unwrap(), "configs"), config)
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Compares the rendering of `case` with its `expected.txt` (or writes it
/// under `DROVER_BLESS=1`) and returns the config if it loaded.
fn snapshot(case: &str) -> Option<config::Config> {
    let (actual, config) = render(case);
    let expected_path = case_dir(case).join("expected.txt");
    if std::env::var_os("DROVER_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&expected_path, &actual).unwrap();
        return config;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with DROVER_BLESS=1 to create it",
            expected_path.display()
        )
    });
    assert!(
        actual == expected,
        "output of case `{case}` changed (DROVER_BLESS=1 rewrites it)\n\
         --- expected\n{expected}--- actual\n{actual}"
    );
    config
}

fn loads(case: &str) -> config::Config {
    snapshot(case).unwrap_or_else(|| panic!("case `{case}` should load"))
}

fn rejects(case: &str) {
    assert!(snapshot(case).is_none(), "case `{case}` should be rejected");
}

/// Every case directory, so that a new one cannot be forgotten.
const CASES: [&str; 26] = [
    "after_errors",
    "bad_duration",
    "bad_names",
    "bad_new_keys",
    "bad_signal",
    "bad_start_method",
    "both_command_and_python",
    "confirm_without_durable",
    "duplicate_name",
    "duplicate_supervisor",
    "durable_into_memory",
    "empty_dir",
    "long_line",
    "many_errors",
    "neither_command_nor_python",
    "new_keys",
    "out_of_bounds",
    "program_not_found",
    "queue_without_consumer",
    "start_secs_floor",
    "syntax_error",
    "undefined_queue",
    "unknown_key",
    "valid",
    "warnings_with_errors",
    "wrong_types",
];

#[test]
fn every_case_directory_has_a_test() {
    let mut dirs: Vec<String> = std::fs::read_dir(case_dir(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, CASES);
}

#[test]
fn unknown_key() {
    rejects("unknown_key");
}

#[test]
fn wrong_types() {
    rejects("wrong_types");
}

#[test]
fn bad_duration() {
    rejects("bad_duration");
}

#[test]
fn bad_signal() {
    rejects("bad_signal");
}

#[test]
fn bad_start_method() {
    rejects("bad_start_method");
}

#[test]
fn bad_names() {
    rejects("bad_names");
}

#[test]
fn both_command_and_python() {
    rejects("both_command_and_python");
}

#[test]
fn neither_command_nor_python() {
    rejects("neither_command_nor_python");
}

#[test]
fn undefined_queue() {
    rejects("undefined_queue");
}

/// `after`: an unknown group (with a suggestion), a cycle across files,
/// and a cycle of `after` with a queue edge in the stop order.
#[test]
fn after_errors() {
    rejects("after_errors");
}

#[test]
fn duplicate_name() {
    rejects("duplicate_name");
}

#[test]
fn duplicate_supervisor() {
    rejects("duplicate_supervisor");
}

/// A durable queue is accepted; dead letters into a queue that is not
/// durable are warned about.
#[test]
fn durable_into_memory() {
    let config = loads("durable_into_memory");
    let durable = |q: &str| config.queues[&QueueName::new(q).unwrap()].durable;
    assert!(durable("jobs") && !durable("failed"));
}

#[test]
fn syntax_error() {
    rejects("syntax_error");
}

#[test]
fn many_errors() {
    rejects("many_errors");
}

#[test]
fn warnings_with_errors() {
    rejects("warnings_with_errors");
}

/// The directory holds only `expected.txt`: no `.toml` file.
#[test]
fn empty_dir() {
    rejects("empty_dir");
}

/// One past every bound: durations over a year, `processes` over 100,000,
/// queue counts, a name over 64 characters.
#[test]
fn out_of_bounds() {
    rejects("out_of_bounds");
}

#[test]
fn bad_new_keys() {
    rejects("bad_new_keys");
}

/// Several errors on one long line: each quotes an excerpt of it.
#[test]
fn long_line() {
    rejects("long_line");
}

#[test]
fn start_secs_floor() {
    let config = loads("start_secs_floor");
    let start_secs = |name: &str| {
        config.groups[&GroupName::new(name).unwrap()]
            .policy
            .start_secs
    };
    for group in ["crashes", "fast", "at_the_floor"] {
        assert_eq!(start_secs(group), Duration::from_millis(100), "{group}");
    }
}

#[test]
fn new_keys() {
    let config = loads("new_keys");
    assert_eq!(config.supervisor.dead_letter_max_bytes, 64 << 20);
    let jobs = &config.queues[&QueueName::new("jobs").unwrap()];
    assert_eq!(jobs.ack_timeout, Duration::from_secs(30));
    let update = |name: &str| config.groups[&GroupName::new(name).unwrap()].update;
    assert_eq!(update("workers"), UpdateMode::StopFirst);
    assert_eq!(update("producer"), UpdateMode::Rolling);
}

#[test]
fn queue_without_consumer() {
    let config = loads("queue_without_consumer");
    assert_eq!(config.queues.len(), 3);
}

/// `confirm = true` is accepted with a warning: without durable queues an
/// `ok` only says drover holds the message in memory.
#[test]
fn confirm_without_durable() {
    let config = loads("confirm_without_durable");
    let confirm = |q: &str| config.queues[&QueueName::new(q).unwrap()].confirm;
    assert!(confirm("jobs") && !confirm("results"));
    let outputs = |g: &str| {
        config.groups[&GroupName::new(g).unwrap()]
            .confirm_outputs
            .clone()
    };
    assert_eq!(outputs("producer"), [QueueName::new("jobs").unwrap()]);
    assert!(outputs("workers").is_empty() && outputs("sink").is_empty());
}

#[test]
fn program_not_found() {
    let config = loads("program_not_found");
    assert_eq!(config.groups.len(), 3);
}

#[test]
fn valid() {
    let dir = case_dir("valid");
    let config = loads("valid");
    let file = |name: &str| dir.join(name);
    assert_eq!(
        config.files,
        [
            file("10-supervisor.toml"),
            file("20-pipeline.toml"),
            file("link.toml")
        ]
    );

    let s = &config.supervisor;
    assert_eq!(s.control_socket, Some(dir.join("run/drover.sock")));
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.state_dir, PathBuf::from("/var/tmp/drover-state"));

    let producer = &config.groups[&GroupName::new("producer").unwrap()];
    assert_eq!(
        producer.program,
        Program::Command(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
    );
    assert_eq!(producer.outputs, [QueueName::new("jobs").unwrap()]);
    assert_eq!(producer.cwd, dir.join("shared"));
    assert_eq!(producer.file, file("20-pipeline.toml"));
    assert_eq!(producer.policy, config::Policy::default());
    assert_eq!(producer.processes, 1);

    let workers = &config.groups[&GroupName::new("workers").unwrap()];
    let expected_program = Program::Python {
        module: "examples.worker".into(),
        function: "main".into(),
        preload: vec!["json".into()],
    };
    assert_eq!(workers.program, expected_program);
    assert_eq!(workers.start_method, StartMethod::Forkserver);
    assert_eq!(workers.processes, 4);
    assert_eq!(workers.inputs, [QueueName::new("jobs").unwrap()]);
    assert_eq!(workers.outputs, [QueueName::new("results").unwrap()]);
    assert_eq!(
        workers.env.get("LOG_LEVEL").map(String::as_str),
        Some("info")
    );
    assert!(!workers.clear_env);
    assert_eq!(workers.cwd, dir);
    let p = &workers.policy;
    assert_eq!(p.restart, RestartPolicy::Always);
    assert_eq!(p.success_codes, [0, 3]);
    assert_eq!(p.start_secs, Duration::from_millis(1500));
    assert_eq!(
        (p.restart_delay, p.restart_delay_max),
        (Duration::from_millis(250), Duration::from_secs(60))
    );
    assert_eq!(p.max_restarts, 10);
    assert_eq!(p.stop_signal, Signal::Int);
    assert_eq!(p.stop_timeout, Duration::from_secs(5));

    let jobs = &config.queues[&QueueName::new("jobs").unwrap()];
    assert_eq!(
        (
            jobs.capacity,
            jobs.max_message_bytes,
            jobs.prefetch,
            jobs.max_deliveries
        ),
        (500, 1024, 2, 3)
    );
    assert_eq!(jobs.delivery, Delivery::AtLeastOnce);
    assert_eq!(jobs.dead_letter, Some(QueueName::new("jobs_dead").unwrap()));
    let results = &config.queues[&QueueName::new("results").unwrap()];
    assert_eq!(results.delivery, Delivery::AtMostOnce);
    assert_eq!(results.file, file("link.toml"));
}

/// `drover check` itself: exit status and where the report goes.
mod cli {
    use std::process::Command;

    fn check(dir: &str) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_drover"))
            .arg("check")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
            .output()
            .expect("run drover check")
    }

    #[test]
    fn a_valid_config_exits_zero() {
        let out = check("configs");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
    }

    #[test]
    fn an_invalid_config_exits_one_with_every_error_on_stderr() {
        let out = check("tests/check/many_errors");
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.matches("\nerror: ").count() >= 5, "{err}");
        assert!(out.stdout.is_empty());
    }

    #[test]
    fn warnings_alone_exit_zero() {
        let out = check("tests/check/program_not_found");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("warning: "), "{err}");
        assert!(!err.contains("\nerror: "), "{err}");
        assert_eq!(out.status.code(), Some(0), "{err}");
    }

    #[test]
    fn confirm_without_durable_is_a_warning() {
        let out = check("tests/check/confirm_without_durable");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("warning: `confirm` in [queue.jobs]: `confirm = true` without `durable = true`: `ok` means held in drover's memory, not safe on disk"),
            "{err}"
        );
        assert!(!err.contains("\nerror: "), "{err}");
        assert_eq!(out.status.code(), Some(0), "{err}");
    }
}

/// `drover check` says which entries of a config directory it passes over
/// (a FIFO named `*.toml` is never opened), as `drover run` does.
#[test]
fn check_warns_about_entries_that_are_not_regular_files() {
    let dir = std::env::temp_dir().join(format!("drover-check-fifo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.toml"), "[group.a]\ncommand = [\"true\"]\n").unwrap();
    nix::unistd::mkfifo(
        &dir.join("z.toml"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .arg("check")
        .arg(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("z.toml: warning: skipped: it is a FIFO, not a regular file"),
        "{stderr}"
    );
}
