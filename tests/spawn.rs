//! What a child of the spawn start method starts with:
//! exactly stdin, stdout and stderr open; its own process group; the
//! environment overlay; `clear_env`; the working directory.

mod common;

use std::collections::BTreeMap;

use common::{Drover, TempDir};

/// Prints the child's fds, process group, cwd and environment as lines.
const REPORT: &str = r#"
import os
fds = sorted(int(f) for f in os.listdir('/proc/self/fd'))
print('fds', ' '.join(str(f) for f in fds))
print('pgid_is_pid', os.getpgid(0) == os.getpid())
print('cwd', os.getcwd())
print('stdin', os.readlink('/proc/self/fd/0'))
for k, v in sorted(os.environ.items()):
    print('env', k + '=' + v)
print('end')
"#;

fn report(name: &str, group_extra: &str) -> (BTreeMap<String, String>, String) {
    let dir = TempDir::new(name);
    dir.write("report.py", REPORT);
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    dir.write(
        "drover.toml",
        &format!(
            "[group.report]\ncommand = [\"{}\", \"{}\"]\nrestart = \"never\"\nstart_secs = \"100ms\"\n{group_extra}\n",
            common::python(),
            dir.path().join("report.py").display()
        ),
    );
    // An fd drover inherits without close-on-exec must not reach the child.
    let d = Drover::start_in(dir, &["sh", "-c", "exec 7</dev/null; exec \"$@\"", "sh"]);
    d.wait_group_state("report", "exited");
    let text = d
        .stdout
        .wait_for("the report", |t| t.contains("report[0] end"));
    let env = text
        .lines()
        .filter_map(|l| l.strip_prefix("report[0] env "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (env, text)
}

#[test]
fn a_spawned_child_has_only_stdio_its_own_group_and_the_drover_variables() {
    let (env, text) = report("spawnfds", "processes = 1\nenv = { GREETING = \"hi\" }");
    // 0, 1, 2, plus the directory fd listdir itself holds open.
    let fds_line = text
        .lines()
        .find(|l| l.starts_with("report[0] fds"))
        .unwrap();
    let fds: Vec<u32> = fds_line[14..]
        .split(' ')
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(&fds[..3], &[0, 1, 2], "{fds_line}");
    assert_eq!(
        fds.len(),
        4,
        "only stdio (and listdir's own fd): {fds_line}"
    );
    assert!(text.contains("report[0] pgid_is_pid True"), "{text}");
    assert!(text.contains("report[0] stdin /dev/null"), "{text}");
    assert_eq!(env["DROVER_GROUP"], "report");
    assert_eq!(env["DROVER_INDEX"], "0");
    assert_eq!(env["DROVER_START_METHOD"], "spawn");
    assert_eq!(env["GREETING"], "hi");
    assert!(
        env.contains_key("DROVER_TEST_MARKER"),
        "inherits drover's environment"
    );
}

#[test]
fn clear_env_keeps_only_env_and_the_basic_variables() {
    let (env, _) = report(
        "clearenv",
        "clear_env = true\nenv = { ONLY = \"this\" }\ncwd = \"sub\"",
    );
    let mut keys: Vec<&str> = env.keys().map(String::as_str).collect();
    keys.retain(|k| !["HOME", "LANG", "TZ", "LC_CTYPE"].contains(k));
    assert_eq!(
        keys,
        [
            "DROVER_GROUP",
            "DROVER_INDEX",
            "DROVER_START_METHOD",
            "ONLY",
            "PATH"
        ]
    );
}

#[test]
fn cwd_is_relative_to_the_config_file() {
    let (_, text) = report("cwd", "cwd = \"sub\"");
    let cwd = text
        .lines()
        .find_map(|l| l.strip_prefix("report[0] cwd "))
        .unwrap();
    assert!(cwd.ends_with("/sub"), "{cwd}");
}
