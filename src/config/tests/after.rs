//! `after`: names checked across files, cycles in the start order and in
//! the stop order, and `[supervisor] exit_on_fatal`.

use super::*;

const APP: &str = "
[group.db]
command = [\"PROG\"]
[group.migrate]
command = [\"PROG\"]
restart = \"never\"
[group.api]
command = [\"PROG\"]
after = [\"db\", \"migrate\"]
";

#[test]
fn after_names_groups_in_order() {
    let config = ok(APP);
    let api = &config.groups[&GroupName::new("api").unwrap()];
    let after: Vec<&str> = api.after.iter().map(GroupName::as_str).collect();
    assert_eq!(after, ["db", "migrate"]);
    assert!(
        config.groups[&GroupName::new("db").unwrap()]
            .after
            .is_empty()
    );
    assert!(!config.supervisor.exit_on_fatal);
}

#[test]
fn after_may_name_a_group_of_another_file() {
    let loaded = check(&[
        (
            "a.toml",
            "[group.api]\ncommand = [\"PROG\"]\nafter = [\"db\"]",
        ),
        ("b.toml", "[group.db]\ncommand = [\"PROG\"]"),
    ]);
    assert!(loaded.is_ok(), "{}", loaded.err().unwrap());
}

#[test]
fn an_unknown_group_in_after_is_located_with_a_suggestion() {
    let text = "[queue.jobs]\n[group.db]\ncommand = [\"PROG\"]\noutputs = [\"jobs\"]\n[group.api]\ncommand = [\"PROG\"]\ninputs = [\"jobs\"]\nafter = [\"dbb\", \"jobs\", \"cache\"]";
    assert_eq!(
        errors(text),
        [
            "/cfg/a.toml:8:10: error: undefined group `dbb` in `after` of group `api`",
            "/cfg/a.toml:8:17: error: undefined group `jobs` in `after` of group `api`",
            "/cfg/a.toml:8:25: error: undefined group `cache` in `after` of group `api`",
        ]
    );
    assert_eq!(
        helps(text),
        [
            "did you mean `db`?",
            "`jobs` is a queue; `after` names groups",
            "define it with a `[group.cache]` table",
        ]
    );
}

#[test]
fn after_lists_each_group_once_and_never_itself() {
    let text = "[group.db]\ncommand = [\"PROG\"]\n[group.api]\ncommand = [\"PROG\"]\nafter = [\"db\", \"api\", \"db\"]";
    assert_eq!(
        errors(text),
        [
            "/cfg/a.toml:5:16: error: group `api` cannot start after itself",
            "/cfg/a.toml:5:23: error: group `db` is listed twice in `after` in [group.api]",
        ]
    );
    assert_eq!(
        errors("[group.api]\ncommand = [\"PROG\"]\nafter = \"db\""),
        [
            "/cfg/a.toml:3:9: error: invalid type for `after` in [group.api]: expected an array of strings, found a string"
        ]
    );
}

#[test]
fn a_cycle_in_after_is_an_error_that_names_it() {
    let text = "[group.api]\ncommand = [\"PROG\"]\nafter = [\"db\"]\n[group.db]\ncommand = [\"PROG\"]\nafter = [\"cache\"]\n[group.cache]\ncommand = [\"PROG\"]\nafter = [\"api\"]";
    assert_eq!(
        errors(text),
        ["/cfg/a.toml:3:10: error: `after` makes a cycle: api → db → cache → api"]
    );
    assert!(helps(text)[0].contains("remove `db` from `after` of group `api`"));
}

#[test]
fn a_cycle_across_files_is_reported_once() {
    let result = check(&[
        (
            "a.toml",
            "[group.api]\ncommand = [\"PROG\"]\nafter = [\"db\"]",
        ),
        (
            "b.toml",
            "[group.db]\ncommand = [\"PROG\"]\nafter = [\"api\"]",
        ),
    ]);
    assert_eq!(
        lines(result),
        ["/cfg/a.toml:3:10: error: `after` makes a cycle: api → db → api"]
    );
}

#[test]
fn a_cycle_of_after_and_queue_edges_is_a_stop_order_error() {
    // db feeds `jobs`, which api reads: db stops before api. api starts
    // after db: api stops before db. No order satisfies both.
    let text = "[queue.jobs]\n[group.db]\ncommand = [\"PROG\"]\noutputs = [\"jobs\"]\n[group.api]\ncommand = [\"PROG\"]\ninputs = [\"jobs\"]\nafter = [\"db\"]";
    assert_eq!(
        errors(text),
        ["/cfg/a.toml:8:10: error: `after` makes a cycle in the stop order: api → db → api"]
    );
    assert_eq!(
        helps(text),
        [
            "`api` stops before `db` (it starts after it), `db` stops before `api` (it feeds queue \
          `jobs`, which `api` reads): no shutdown order can honour that; remove `db` from \
          `after` of group `api`, or change the queue wiring"
        ]
    );
    // The other way round is one order: the producer starts after its consumer.
    let text = "[queue.jobs]\n[group.db]\ncommand = [\"PROG\"]\noutputs = [\"jobs\"]\nafter = [\"api\"]\n[group.api]\ncommand = [\"PROG\"]\ninputs = [\"jobs\"]";
    assert!(check_one(text).is_ok());
}

#[test]
fn exit_on_fatal_is_read() {
    let config = ok(&format!("[supervisor]\nexit_on_fatal = true\n{APP}"));
    assert!(config.supervisor.exit_on_fatal);
}
