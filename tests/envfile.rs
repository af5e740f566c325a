//! `env_file` and `${NAME}` in `command` arguments on the real binary:
//! what each child sees (env files, then `env`; its argv expanded from its
//! own environment), what `check` reports, and that editing an env file
//! (in the config directory or elsewhere) replaces the group's children.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{DEADLINE, Drover, TempDir, alive, drover_bin, wait_until, wait_until_within};
use serde_json::Value;

/// Writes what the child saw to `seen-<group>-<pid>.json` (atomically),
/// then sleeps.
const CHILD: &str = r#"
import json, os, sys, time
keys = ["OVERRIDE", "ONLY_FILE", "PORT", "FROM_DROVER", "SHADOWED"]
seen = {"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keys}}
name = "seen-%s-%d.json" % (os.environ["DROVER_GROUP"], os.getpid())
with open(name + ".tmp", "w") as f:
    json.dump(seen, f)
os.rename(name + ".tmp", name)
time.sleep(1000)
"#;

/// `drover check PATH`.
fn check(path: impl AsRef<Path>) -> Output {
    Command::new(drover_bin())
        .arg("check")
        .arg(path.as_ref())
        .output()
        .expect("run drover check")
}

/// What each running child of `group` wrote, by PID.
fn seen(dir: &Path, group: &str) -> Vec<(i64, Value)> {
    let prefix = format!("seen-{group}-");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".json"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).unwrap();
        found.push((pid.parse().unwrap(), serde_json::from_str(&text).unwrap()));
    }
    found
}

/// Waits for a child of `group` whose argv is `argv`, and returns its PID.
fn wait_seen(d: &Drover, group: &str, argv: &[&str]) -> i64 {
    let mut pid = 0;
    let what = format!("a child of {group} with argv {argv:?}");
    wait_until_within(&what, DEADLINE, || {
        let hit = seen(d.dir.path(), group)
            .into_iter()
            .find(|(p, v)| alive(*p) && v["argv"] == serde_json::json!(argv));
        hit.map(|(p, _)| pid = p).is_some()
    });
    pid
}

#[test]
fn each_child_sees_env_files_then_env_and_its_own_expanded_argv() {
    let config = r#"
[group.app]
command = ["@PY@", "child.py", "--port", "${PORT}", "--idx=${DROVER_INDEX}", "$${LIT}", "$5", "${DROVER_GROUP}"]
processes = 2
env_file = [".env", "more.env"]
env = { OVERRIDE = "from-env" }
start_secs = "100ms"
"#;
    let env = "# the app's settings\nexport PORT=8123\nOVERRIDE=from-file\nSHADOWED=from-file\n";
    let more = "ONLY_FILE='a b $PORT'\n";
    let d = Drover::launch_with_env(
        "envfile-child",
        config,
        &[("child.py", CHILD), (".env", env), ("more.env", more)],
        &[("FROM_DROVER", "kept"), ("SHADOWED", "from-drover")],
    );
    for idx in ["0", "1"] {
        let argv = [
            "--port",
            "8123",
            &format!("--idx={idx}"),
            "${LIT}",
            "$5",
            "app",
        ];
        let pid = wait_seen(&d, "app", &argv);
        let (_, v) = seen(d.dir.path(), "app")
            .into_iter()
            .find(|(p, _)| *p == pid)
            .unwrap();
        let want = serde_json::json!({
            "OVERRIDE": "from-env",
            "ONLY_FILE": "a b $PORT",
            "PORT": "8123",
            "FROM_DROVER": "kept",
            "SHADOWED": "from-file",
        });
        assert_eq!(v["env"], want, "child {idx}");
    }
}

#[test]
fn editing_an_env_file_replaces_the_groups_children() {
    let config = r#"
[group.a]
command = ["@PY@", "child.py", "${PORT}"]
env_file = ".env"
start_secs = "100ms"

[group.b]
command = ["@PY@", "child.py", "${PORT}"]
env_file = "envs/b.env"
start_secs = "100ms"

[group.c]
command = ["@PY@", "child.py", "${PORT}"]
env = { PORT = "1" }
start_secs = "100ms"
"#;
    let d = Drover::launch(
        "envfile-reload",
        config,
        &[
            ("child.py", CHILD),
            (".env", "PORT=1000\n"),
            ("envs/b.env", "PORT=2000\n"),
        ],
    );
    let a = wait_seen(&d, "a", &["1000"]);
    let b = wait_seen(&d, "b", &["2000"]);
    let c = wait_seen(&d, "c", &["1"]);
    // In the config directory.
    d.dir.write(".env", "PORT=1001\n");
    let a2 = wait_seen(&d, "a", &["1001"]);
    assert_ne!(a, a2);
    wait_until("the old child of a to be gone", || !alive(a));
    // In a directory of its own, replaced by a rename as editors do.
    d.dir.write("envs/b.env.tmp", "PORT=2001\n");
    std::fs::rename(
        d.dir.path().join("envs/b.env.tmp"),
        d.dir.path().join("envs/b.env"),
    )
    .unwrap();
    let b2 = wait_seen(&d, "b", &["2001"]);
    assert_ne!(b, b2);
    wait_until("the old child of b to be gone", || !alive(b));
    assert!(alive(a2) && alive(c), "other groups keep their children");
}

#[test]
fn check_locates_env_file_and_interpolation_errors() {
    let dir = TempDir::new("envfile-check");
    dir.write("bad.env", "GOOD=1\nthis is not a pair\n");
    dir.write(
        "drover.toml",
        r#"
[group.unknown]
command = ["true", "--x=${NOPE_SURELY_UNSET_42}"]

[group.cleared]
command = ["true", "${NOPE_SURELY_UNSET_42}"]
clear_env = true

[group.unclosed]
command = ["true", "${OPEN"]

[group.bad]
command = ["true"]
env_file = "bad.env"

[group.missing]
command = ["true"]
env_file = "missing.env"
"#,
    );
    let out = check(dir.path());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    let toml = dir.path().join("drover.toml").display().to_string();
    for want in [
        format!("{toml}:3:20"),
        "warning: `command[1]` in [group.unknown]: `${NOPE_SURELY_UNSET_42}` is not in the child's environment".into(),
        format!("{toml}:6:20"),
        "error: `command[1]` in [group.cleared]: `${NOPE_SURELY_UNSET_42}` is not in the child's environment".into(),
        format!("{toml}:10:20"),
        "without a closing `}`".into(),
        format!("{}:2:1", dir.path().join("bad.env").display()),
        "expected `NAME=value`".into(),
        format!("{toml}:18:12"),
        format!(
            "cannot read env file {}",
            dir.path().join("missing.env").display()
        ),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn every_start_method_expands_arguments_per_child() {
    let mut config = String::new();
    for method in ["spawn", "fork", "forkserver"] {
        config.push_str(&format!(
            "[group.{method}]\ncommand = [\"@PY@\", \"child.py\", \"${{DROVER_INDEX}}-${{PORT}}\"]\n\
             start_method = \"{method}\"\nprocesses = 2\nenv_file = \".env\"\nstart_secs = \"100ms\"\n\n"
        ));
    }
    let d = Drover::launch(
        "envfile-methods",
        &config,
        &[("child.py", CHILD), (".env", "PORT=7\n")],
    );
    for method in ["spawn", "fork", "forkserver"] {
        for idx in ["0", "1"] {
            wait_seen(&d, method, &[&format!("{idx}-7")]);
        }
    }
}

/// An `env_file` list is bounded (64 files: each is read at every reload,
/// on the supervisor's loop), and a file named twice is read once but still
/// applies at each place: later files win, as always.
#[test]
fn env_file_lists_are_bounded_and_a_repeated_file_still_wins_where_it_stands() {
    let dir = TempDir::new("envfile-list");
    dir.write("a.env", "OVERRIDE=from-a\nONLY_FILE=a\n");
    dir.write("b.env", "OVERRIDE=from-b\n");
    dir.write("bad.env", "this is not a pair\n");
    dir.write("child.py", CHILD);
    let many = vec!["\"a.env\""; 65].join(", ");
    dir.write(
        "long.toml",
        &format!("[group.g]\ncommand = [\"true\"]\nenv_file = [{many}]\n"),
    );
    let out = check(dir.path().join("long.toml"));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("lists 65 files (the maximum is 64)"),
        "{text}"
    );
    assert!(text.contains("long.toml:3:12"), "{text}");

    // The same broken file three times: one error, not three.
    dir.write(
        "bad.toml",
        "[group.g]\ncommand = [\"true\"]\nenv_file = [\"bad.env\", \"bad.env\", \"bad.env\"]\n",
    );
    let out = check(dir.path().join("bad.toml"));
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(text.matches("expected `NAME=value`").count(), 1, "{text}");

    let python = common::python();
    std::fs::remove_file(dir.path().join("long.toml")).unwrap();
    std::fs::remove_file(dir.path().join("bad.toml")).unwrap();
    dir.write(
        "drover.toml",
        &format!(
            "[group.aba]\ncommand = [\"{python}\", \"child.py\"]\nenv_file = [\"a.env\", \"b.env\", \"a.env\"]\n\n\
             [group.ab]\ncommand = [\"{python}\", \"child.py\"]\nenv_file = [\"a.env\", \"b.env\"]\n"
        ),
    );
    let d = Drover::start_in(dir, &[]);
    wait_seen(&d, "aba", &[]);
    wait_seen(&d, "ab", &[]);
    let env = |group: &str| seen(d.dir.path(), group)[0].1["env"].clone();
    assert_eq!(env("aba")["OVERRIDE"], "from-a");
    assert_eq!(env("ab")["OVERRIDE"], "from-b");
    assert_eq!(env("aba")["ONLY_FILE"], "a");
}
