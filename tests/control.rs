//! The control socket and CLI (DESIGN §7): status shape, socket mode,
//! discovery, and one clear line when nobody listens.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{Drover, TempDir, drover_bin};

#[test]
fn status_json_has_the_documented_shape() {
    let d = Drover::start(
        "shape",
        r#"
[group.workers]
command = ["sleep", "1000"]
processes = 2
start_secs = "0s"

[group.idle]
command = ["sleep", "1000"]
processes = 0
"#,
    );
    d.wait_group_state("workers", "running");
    let status = d.status();
    assert!(status["config_error"].is_null());
    assert!(status["queues"].is_array());
    let groups = status["groups"].as_array().unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["idle", "workers"]);
    let idle = &groups[0];
    assert_eq!(idle["processes"], 0);
    assert_eq!(idle["children"].as_array().unwrap().len(), 0);
    let workers = &groups[1];
    assert_eq!(workers["start_method"], "spawn");
    assert_eq!(workers["processes"], 2);
    assert_eq!(workers["state"], "running");
    let child = &workers["children"][1];
    assert_eq!(child["index"], 1);
    assert!(child["pid"].as_i64().unwrap() > 1);
    assert_eq!(child["state"], "running");
    assert!(child["uptime_ms"].as_u64().is_some());
    assert_eq!(child["restarts"], 0);
    assert!(child["last_exit"].is_null());
    let mut keys: Vec<&String> = child.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "index",
            "last_exit",
            "leftovers",
            "pid",
            "reason",
            "restarts",
            "state",
            "uptime_ms"
        ]
    );

    let table = d.cli(&["status"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains("workers[1]"), "{table}");
    assert!(
        table.lines().next().unwrap().starts_with("CHILD"),
        "{table}"
    );
}

#[test]
fn the_socket_is_private_and_found_through_drover_socket_and_config() {
    let d = Drover::start(
        "socket",
        r#"
[group.a]
command = ["sleep", "1000"]
"#,
    );
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let via_env = Command::new(drover_bin())
        .args(["status", "--json"])
        .env("DROVER_SOCKET", &d.socket)
        .output()
        .unwrap();
    assert!(via_env.status.success());

    // --config finds the socket named in a config file.
    let other = TempDir::new("socket-config");
    let config = other.write(
        "c.toml",
        &format!(
            "[supervisor]\ncontrol_socket = \"{}\"\n[group.a]\ncommand = [\"true\"]\n",
            d.socket.display()
        ),
    );
    let via_config = Command::new(drover_bin())
        .args(["status", "--json", "--config"])
        .arg(&config)
        .env_remove("DROVER_SOCKET")
        .output()
        .unwrap();
    assert!(via_config.status.success(), "{via_config:?}");
}

#[test]
fn a_client_with_no_supervisor_says_so_in_one_line() {
    let dir = TempDir::new("nobody");
    let socket = dir.path().join("none.sock");
    for args in [vec!["status"], vec!["restart", "x"], vec!["shutdown"]] {
        let out = Command::new(drover_bin())
            .args(&args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("drover: no drover is listening on"),
            "{err}"
        );
    }
}

#[test]
fn a_second_drover_on_the_same_socket_is_refused() {
    let d = Drover::start(
        "twice",
        r#"
[group.a]
command = ["sleep", "1000"]
"#,
    );
    let out = Command::new(drover_bin())
        .arg("run")
        .arg(d.dir.path().join("drover.toml"))
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another drover is already listening there"),
        "{err}"
    );
    // The first one still answers.
    assert!(d.cli(&["status"]).status.success());
}
