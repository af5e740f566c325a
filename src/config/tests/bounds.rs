//! The bounds on values and the keys added with them (`update`,
//! `ack_timeout`, `dead_letter_max_bytes`): each bound accepts its limit,
//! rejects one past it with a located error that names it.

use super::*;

/// A group with `extra` lines, and a queue with `queue` lines that it reads.
fn group_and_queue(extra: &str, queue: &str) -> String {
    format!("[queue.jobs]\n{queue}\n[group.w]\npython = \"m:f\"\ninputs = [\"jobs\"]\n{extra}\n")
}

/// The one error of a config whose group has `extra`.
fn group_error(extra: &str) -> String {
    let found = errors(&format!("{WIRED}{extra}"));
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap_or_default()
}

/// Regression: `start_secs = "18446744073709551615s"` or `"100000000h"`
/// passed `check` and made drover abort on `Instant + Duration` overflow.
#[test]
fn every_duration_is_at_most_a_year() {
    for key in ["start_secs", "restart_delay_max", "stop_timeout"] {
        ok(&format!("{WIRED}{key} = \"8760h\"\n"));
        for huge in ["18446744073709551615s", "100000000h", "8761h"] {
            let error = group_error(&format!("{key} = \"{huge}\"\n"));
            assert_eq!(
                error,
                format!(
                    "/cfg/a.toml:9:{}: error: `{key}` in [group.workers] is too long: {huge} (the maximum is one year, 8760h)",
                    key.len() + 4
                )
            );
        }
    }
    // `restart_delay` may not exceed `restart_delay_max` either.
    let error = group_error("restart_delay = \"100000000h\"\nrestart_delay_max = \"8760h\"\n");
    assert!(
        error.ends_with("`restart_delay` in [group.workers] is too long: 100000000h (the maximum is one year, 8760h)")
    );
    let found = errors(&group_and_queue(
        "outputs = [\"jobs\"]",
        "ack_timeout = \"9000h\"",
    ));
    assert_eq!(
        found,
        [
            "/cfg/a.toml:2:15: error: `ack_timeout` in [queue.jobs] is too long: 9000h (the maximum is one year, 8760h)"
        ]
    );
}

/// Regression: `start_secs = "0s"` with a failing command restarted it
/// about a thousand times a second.
#[test]
fn start_secs_below_100ms_is_a_warning_and_becomes_100ms() {
    for short in ["0s", "99ms", "0.05s"] {
        let loaded = check_one(&format!("{WIRED}start_secs = \"{short}\"\n")).unwrap();
        let w = &loaded.config.groups[&GroupName::new("workers").unwrap()];
        assert_eq!(w.policy.start_secs, Duration::from_millis(100));
        let warnings = lines(Ok(loaded));
        let shown = crate::config::duration::format_duration(parse_duration(short).unwrap());
        assert_eq!(
            warnings,
            [format!(
                "/cfg/a.toml:9:14: warning: `start_secs` in [group.workers] is {shown}, below the minimum of 100ms: drover uses 100ms"
            )]
        );
    }
    let config = ok(&format!("{WIRED}start_secs = \"100ms\"\n"));
    let w = &config.groups[&GroupName::new("workers").unwrap()];
    assert_eq!(w.policy.start_secs, Duration::from_millis(100));
}

/// Regression: `processes = 1000000000` passed `check` and made drover
/// abort on an 88 GB allocation.
#[test]
fn processes_are_bounded_per_group_and_in_all() {
    let config = ok(&format!("{WIRED}processes = 100000\n"));
    assert_eq!(
        config.groups[&GroupName::new("workers").unwrap()].processes,
        100_000
    );
    assert_eq!(
        group_error("processes = 1000000000\n"),
        "/cfg/a.toml:9:13: error: `processes` in [group.workers] is too large: 1000000000 (the maximum is 100000)"
    );
    // 42 groups of 100,000 children: more than the kernel has process ids.
    let text: String = (0..42)
        .map(|i| format!("[group.g{i:02}]\npython = \"m:f\"\nprocesses = 100000\n"))
        .collect();
    let found = errors(&text);
    assert_eq!(
        found,
        [
            "/cfg/a.toml:126:13: error: groups ask for 4200000 children in all by group `g41`, more than the kernel can run (the maximum is 4194304, Linux's limit on process ids)"
        ]
    );
}

#[test]
fn names_are_at_most_64_characters() {
    let long = "q".repeat(64);
    ok(&format!(
        "[queue.{long}]\n[group.w]\npython = \"m:f\"\ninputs = [\"{long}\"]\noutputs = [\"{long}\"]"
    ));
    let too_long = "q".repeat(65);
    let found = errors(&format!(
        "[group.{too_long}]\npython = \"m:f\"\n[queue.{too_long}]\n"
    ));
    let expected = |line: usize, kind: &str| {
        format!(
            "/cfg/a.toml:{line}:8: error: invalid {kind} name `{}…`: a name is at most 64 characters long (this one has 65)",
            "q".repeat(60)
        )
    };
    assert_eq!(found, [expected(1, "group"), expected(3, "queue")]);
}

/// One string of `len` bytes (all `a`).
fn long(len: usize) -> String {
    "a".repeat(len)
}

#[test]
fn strings_for_the_kernel_are_at_most_131071_bytes() {
    let max = 131_071;
    // At the limit: accepted.
    ok(&format!(
        "[group.w]\ncommand = [\"PROG\", \"{}\"]\nenv = {{ A = \"{}\" }}",
        long(max),
        long(max - 2)
    ));
    let too_long_in = |label: &str, table: &str| {
        format!("`{label}` in {table} is too long: 131072 bytes (the maximum is 131071 bytes)")
    };
    let too_long = |label: &str| too_long_in(label, "[group.w]");
    let cases = [
        (
            format!("command = [\"PROG\", \"{}\"]", long(max + 1)),
            "command[1]",
        ),
        (
            format!(
                "command = [\"PROG\"]\nenv = {{ A = \"{}\" }}",
                long(max - 1)
            ),
            "env.A",
        ),
        (
            format!("command = [\"PROG\"]\nenv = {{ {} = \"\" }}", long(max)),
            "",
        ),
    ];
    for (body, label) in cases {
        let found = errors(&format!("[group.w]\n{body}"));
        let label = if label.is_empty() {
            format!("env.{}…", "a".repeat(60))
        } else {
            label.to_owned()
        };
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].ends_with(&too_long(&label)), "{found:?}");
    }
    let python = [
        (format!("python = \"m:{}\"", long(max - 1)), "python"),
        (
            format!("python = \"m:f\"\npreload = [\"{}\"]", long(max + 1)),
            "preload[0]",
        ),
        (
            format!(
                "python = \"m:f\"\npython_executable = \"{}\"",
                long(max + 1)
            ),
            "python_executable",
        ),
    ];
    for (line, label) in python {
        let found = errors(&format!("[group.w]\n{line}"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].ends_with(&too_long(label)), "{found:?}");
    }
    // Paths count as resolved: `/cfg/` and the name.
    let found = errors(&format!(
        "[group.w]\npython = \"m:f\"\ncwd = \"{}\"",
        long(max - 4)
    ));
    assert!(found[0].ends_with(&too_long("cwd")), "{found:?}");
    for key in ["control_socket", "state_dir"] {
        let found = errors(&format!("[supervisor]\n{key} = \"/{}\"", long(max)));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].ends_with(&too_long_in(key, "[supervisor]")),
            "{found:?}"
        );
    }
}

#[test]
fn queue_counts_have_upper_bounds() {
    let at_limits =
        "capacity = 1000000\nmax_message_bytes = 4194304\nprefetch = 10000\nmax_deliveries = 10000";
    let config = ok(&group_and_queue("outputs = [\"jobs\"]", at_limits));
    let jobs = &config.queues[&QueueName::new("jobs").unwrap()];
    assert_eq!(
        (
            jobs.capacity,
            jobs.max_message_bytes,
            jobs.prefetch,
            jobs.max_deliveries
        ),
        (1_000_000, 4 << 20, 10_000, 10_000)
    );
    let beyond =
        "capacity = 1000001\nmax_message_bytes = 4194305\nprefetch = 10001\nmax_deliveries = 10001";
    assert_eq!(
        errors(&group_and_queue("outputs = [\"jobs\"]", beyond)),
        [
            "/cfg/a.toml:2:12: error: `capacity` in [queue.jobs] is too large: 1000001 (the maximum is 1000000)",
            "/cfg/a.toml:3:21: error: `max_message_bytes` in [queue.jobs] is too large: 4194305 (the maximum is 4194304)",
            "/cfg/a.toml:4:12: error: `prefetch` in [queue.jobs] is too large: 10001 (the maximum is 10000)",
            "/cfg/a.toml:5:18: error: `max_deliveries` in [queue.jobs] is too large: 10001 (the maximum is 10000)",
        ]
    );
    assert_eq!(
        group_error("max_restarts = 1000001\n"),
        "/cfg/a.toml:9:16: error: `max_restarts` in [group.workers] is too large: 1000001 (the maximum is 1000000)"
    );
}

#[test]
fn update_mode_is_read() {
    let config = ok(&format!("{WIRED}update = \"stop-first\"\n"));
    let w = &config.groups[&GroupName::new("workers").unwrap()];
    assert_eq!(w.update, UpdateMode::StopFirst);
    let p = &config.groups[&GroupName::new("producer").unwrap()];
    assert_eq!(p.update, UpdateMode::Rolling);
    assert_eq!(
        group_error("update = \"stop_first\"\n"),
        "/cfg/a.toml:9:10: error: unknown update mode `stop_first` in [group.workers]; expected one of `rolling`, `stop-first`"
    );
    assert_eq!(
        helps(&format!("{WIRED}update = \"stop_first\"\n")),
        ["did you mean `stop-first`?"]
    );
}

#[test]
fn ack_timeout_is_read() {
    let config = ok(&group_and_queue(
        "outputs = [\"jobs\"]",
        "ack_timeout = \"30s\"",
    ));
    let jobs = &config.queues[&QueueName::new("jobs").unwrap()];
    assert_eq!(jobs.ack_timeout, Duration::from_secs(30));
    let config = ok(&group_and_queue("outputs = [\"jobs\"]", ""));
    assert_eq!(
        config.queues[&QueueName::new("jobs").unwrap()].ack_timeout,
        Duration::ZERO
    );
    assert_eq!(
        errors(&group_and_queue("outputs = [\"jobs\"]", "ack_timeout = 30")),
        [
            "/cfg/a.toml:2:15: error: `ack_timeout` in [queue.jobs] needs a unit: expected a string such as \"10s\", found an integer"
        ]
    );
}

#[test]
fn dead_letter_max_bytes_is_a_bounded_size() {
    let max_bytes = |text: &str| {
        ok(&format!("[supervisor]\ndead_letter_max_bytes = {text}"))
            .supervisor
            .dead_letter_max_bytes
    };
    assert_eq!(max_bytes("\"64MiB\""), 64 << 20);
    assert_eq!(max_bytes("\"512KiB\""), 512 << 10);
    assert_eq!(max_bytes("4096"), 4096);
    assert_eq!(max_bytes("\"1TiB\""), 1 << 40);
    let found = |text: &str| errors(&format!("[supervisor]\ndead_letter_max_bytes = {text}"));
    assert_eq!(
        found("-1"),
        [
            "/cfg/a.toml:2:25: error: `dead_letter_max_bytes` in [supervisor] cannot be negative, found -1"
        ]
    );
    assert_eq!(
        found("\"1KiB\""),
        [
            "/cfg/a.toml:2:25: error: `dead_letter_max_bytes` in [supervisor] must be at least 4KiB, found \"1KiB\""
        ]
    );
    assert_eq!(
        found("\"2TiB\""),
        [
            "/cfg/a.toml:2:25: error: `dead_letter_max_bytes` in [supervisor] is too large: \"2TiB\" (the maximum is 1TiB)"
        ]
    );
    assert_eq!(
        found("\"99999999999GiB\""),
        [
            "/cfg/a.toml:2:25: error: invalid size `99999999999GiB` for `dead_letter_max_bytes` in [supervisor]: the size is too large"
        ]
    );
    assert_eq!(
        found("\"64 lb\""),
        [
            "/cfg/a.toml:2:25: error: invalid size `64 lb` for `dead_letter_max_bytes` in [supervisor]: remove the spaces; write e.g. `64MiB`"
        ]
    );
    assert_eq!(
        found("\"64MB\""),
        [
            "/cfg/a.toml:2:25: error: invalid size `64MB` for `dead_letter_max_bytes` in [supervisor]: unknown unit `MB`; expected one of `B`, `KiB`, `MiB`, `GiB`, `TiB`"
        ]
    );
}

#[test]
fn new_keys_are_offered_for_typos() {
    assert_eq!(
        helps(&format!("{WIRED}updte = \"rolling\"\n")),
        ["did you mean `update`?"]
    );
    assert_eq!(
        helps(&group_and_queue(
            "outputs = [\"jobs\"]",
            "ack_timout = \"1s\""
        )),
        ["did you mean `ack_timeout`?"]
    );
    assert_eq!(
        helps("[supervisor]\ndead_letter_max_byte = 4096"),
        ["did you mean `dead_letter_max_bytes`?"]
    );
}
