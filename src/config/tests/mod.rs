//! Whole configs through every stage, from text to [`Config`] or
//! diagnostics, with a fixed [`Host`] so that nothing depends on the machine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::config::names::{GroupName, QueueName};
use crate::config::signal::Signal;

mod after;
mod bounds;
mod envfile;
mod groups;
mod hostile;
mod merge;
mod ready;
mod scale;
mod sockets;
mod users;

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
        uid: 1000,
        gid: 1000,
        nr_open: Some(1 << 20),
        hard_limits: vec![
            (rlimits::Resource::Nofile, 4096),
            (rlimits::Resource::Core, 0),
        ],
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

/// Groups know which of their outputs have confirms (their children's
/// environment depends on it); `check` warns that `ok` is memory-only.
#[test]
fn confirm_outputs_are_filled_in_and_warned_about() {
    let text = "[queue.a]\nconfirm = true\n[queue.b]\n[queue.c]\nconfirm = true\n\
                [group.p]\ncommand = [\"PROG\"]\noutputs = [\"c\", \"b\", \"a\"]\n\
                [group.q]\ncommand = [\"PROG\"]\ninputs = [\"a\", \"b\", \"c\"]\n";
    let loaded = check_one(text).unwrap();
    let group = |n: &str| &loaded.config.groups[&GroupName::new(n).unwrap()];
    let names = |qs: &[QueueName]| qs.iter().map(|q| q.to_string()).collect::<Vec<_>>();
    assert_eq!(names(&group("p").confirm_outputs), ["c", "a"]);
    assert!(
        group("q").confirm_outputs.is_empty(),
        "inputs are not confirmed"
    );
    let warnings = lines(Ok(loaded));
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings
            .iter()
            .all(|w| w.contains("`ok` means held in drover's memory, not safe on disk")),
        "{warnings:?}"
    );
}

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
        confirm_outputs: vec![],
        env: Default::default(),
        env_files: Vec::new(),
        clear_env: false,
        cwd: PathBuf::from("/cfg"),
        policy: Policy::default(),
        update: Default::default(),
        after: Vec::new(),
        sockets: Vec::new(),
        file: PathBuf::from("/cfg/a.toml"),
        user: None,
        rlimits: Default::default(),
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
            dead_letter_max_bytes: crate::config::DEFAULT_DEAD_LETTER_MAX_BYTES,
            log_lines: crate::config::DEFAULT_LOG_LINES,
            log_timestamps: false,
            metrics: None,
            exit_on_fatal: false,
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
