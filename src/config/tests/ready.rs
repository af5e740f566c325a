//! `ready`, `ready_timeout` and `health`.

use std::net::SocketAddr;

use super::*;

fn policy(keys: &str) -> Policy {
    let config = ok(&format!("[group.w]\ncommand = [\"PROG\"]\n{keys}"));
    config.groups.values().next().unwrap().policy.clone()
}

#[test]
fn readiness_kinds_and_defaults() {
    let p = policy("");
    assert_eq!(p.ready, Readiness::Started);
    assert_eq!(p.ready_timeout, Duration::from_secs(60));
    assert_eq!(p.health, None);
    assert_eq!(policy("ready = \"notify\"").ready, Readiness::Notify);
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    assert_eq!(
        policy("ready = { tcp = \"localhost:8080\" }").ready,
        Readiness::Tcp(addr)
    );
    let v6: SocketAddr = "[::1]:9".parse().unwrap();
    assert_eq!(
        policy("ready = { tcp = \"[::1]:9\" }").ready,
        Readiness::Tcp(v6)
    );
    assert_eq!(
        policy("ready = { command = [\"true\", \"x\"] }").ready,
        Readiness::Command(vec!["true".into(), "x".into()])
    );
    assert_eq!(
        policy("ready_timeout = \"2s\"").ready_timeout,
        Duration::from_secs(2)
    );
}

#[test]
fn health_defaults_and_keys() {
    let h = policy("health = { command = [\"check\"] }").health.unwrap();
    assert_eq!(h.command, ["check"]);
    assert_eq!(
        (h.interval, h.timeout, h.retries),
        (Duration::from_secs(10), Duration::from_secs(5), 3)
    );
    let h = policy(
        "health = { command = [\"c\"], interval = \"1s\", timeout = \"200ms\", retries = 2 }",
    )
    .health
    .unwrap();
    assert_eq!(
        (h.interval, h.timeout, h.retries),
        (Duration::from_secs(1), Duration::from_millis(200), 2)
    );
}

fn group_errors(keys: &str) -> Vec<String> {
    errors(&format!("[group.w]\ncommand = [\"PROG\"]\n{keys}"))
}

#[test]
fn bad_readiness_is_located_with_a_suggestion() {
    assert_eq!(
        group_errors("ready = \"notfy\""),
        [
            "/cfg/a.toml:3:9: error: unknown readiness `notfy` in [group.w]; expected one of `started`, `notify`, `tcp`, `command`"
        ]
    );
    assert_eq!(
        helps("[group.w]\ncommand = [\"PROG\"]\nready = \"notfy\""),
        ["did you mean `notify`?"]
    );
    assert_eq!(
        group_errors("ready = { tpc = \"127.0.0.1:1\" }"),
        ["/cfg/a.toml:3:11: error: unknown readiness `tpc` in [group.w]"]
    );
    assert_eq!(
        group_errors("ready = { tcp = \"127.0.0.1:1\", command = [\"x\"] }"),
        [
            "/cfg/a.toml:3:9: error: `ready` in [group.w] must be a table with exactly one key, `tcp` or `command`"
        ]
    );
    assert_eq!(
        group_errors("ready = 3"),
        [
            "/cfg/a.toml:3:9: error: invalid type for `ready` in [group.w]: expected \"started\", \"notify\", or a table `{ tcp = ... }` / `{ command = [...] }`, found an integer"
        ]
    );
}

#[test]
fn tcp_addresses_are_ip_literals_or_localhost() {
    for bad in [
        "example.com:80",
        "127.0.0.1",
        "127.0.0.1:0",
        "localhost:99999",
        ":80",
    ] {
        let errs = group_errors(&format!("ready = {{ tcp = \"{bad}\" }}"));
        assert_eq!(
            errs,
            [format!(
                "/cfg/a.toml:3:17: error: `ready.tcp` in [group.w] is not HOST:PORT: `{bad}`"
            )],
            "{bad}"
        );
    }
}

#[test]
fn probe_commands_cannot_be_empty() {
    assert_eq!(
        group_errors("ready = { command = [] }"),
        ["/cfg/a.toml:3:21: error: `ready.command` in [group.w] cannot be empty"]
    );
    assert_eq!(
        group_errors("health = { command = [\"\"] }"),
        [
            "/cfg/a.toml:3:23: error: `health.command[0]` in [group.w] cannot be empty: it is the program to run"
        ]
    );
    assert_eq!(
        group_errors("health = { interval = \"1s\" }"),
        ["/cfg/a.toml:3:10: error: `health` in [group.w] has no `command`"]
    );
}

#[test]
fn health_keys_and_durations_are_checked() {
    assert_eq!(
        group_errors("health = { command = [\"c\"], retires = 2 }"),
        ["/cfg/a.toml:3:29: error: unknown key `retires` in `health` in [group.w]"]
    );
    assert_eq!(
        helps("[group.w]\ncommand = [\"PROG\"]\nhealth = { command = [\"c\"], retires = 2 }"),
        ["did you mean `retries`?"]
    );
    assert_eq!(
        group_errors("health = { command = [\"c\"], interval = \"10ms\", retries = 0 }"),
        [
            "/cfg/a.toml:3:40: error: `health.interval` in [group.w] is too short: `\"10ms\"` (the minimum is 100ms)",
            "/cfg/a.toml:3:58: error: `health.retries` in [group.w] must be at least 1, found 0",
        ]
    );
    assert_eq!(
        group_errors("ready_timeout = \"0s\""),
        [
            "/cfg/a.toml:3:17: error: `ready_timeout` in [group.w] is too short: `\"0s\"` (the minimum is 100ms)"
        ]
    );
}
