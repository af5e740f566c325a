//! The test harness's own guarantee: dropping a [`common::Drover`] leaves no
//! process behind, even one that ignores SIGTERM and escaped its group.

mod common;

use common::{Drover, alive, wait_until};

#[test]
fn dropping_the_guard_kills_drover_and_every_descendant() {
    let d = Drover::start(
        "guard",
        r#"
[group.stubborn]
command = ["sh", "-c", "trap '' TERM; setsid sh -c 'trap \"\" TERM; exec sleep 1000' & echo escaped $!; exec sleep 1000"]
start_secs = "100ms"
"#,
    );
    let pids = d.wait_group_state("stubborn", "running");
    let escaped: i64 = d
        .stdout
        .wait_between("the escaped pid", "escaped ", "\n")
        .trim()
        .parse()
        .unwrap();
    let drover = d.pid() as i64;
    assert!(alive(escaped) && alive(pids[0]) && alive(drover));
    drop(d);
    // The guard waits for its kills itself; check right away, with a short
    // grace only for /proc to catch up on reaping by init.
    wait_until("every process to be gone", || {
        !alive(escaped) && !alive(pids[0]) && !alive(drover)
    });
}
