//! The drover binary's code layout (src/hot.ld and src/cold.ld, passed to
//! the linker by build.rs): the code a running supervisor executes is
//! gathered at the front, in whole 64 KiB blocks; code that a supervisor
//! without TLS, Redis, durable queues or the man page writer never runs
//! sits in its own 64 KiB-aligned section, away from the code that runs all
//! the time, so that the kernel's fault-around does not map it into every
//! drover. What it saves is measured by the benchmarks (`bash bench/run.sh
//! core`, the RSS row); this checks that the layout is there: the sections
//! exist, whole 64 KiB blocks, the cold one holds the crates it names and
//! none of the event loop, the hot one the event loop and none of them.

mod common;

use std::process::Command;

/// (address, size) of `name` in the binary's section headers.
fn section(bin: &str, name: &str) -> Option<(u64, u64)> {
    let out = Command::new("readelf")
        .args(["-SW", bin])
        .output()
        .expect("readelf (binutils) runs");
    assert!(out.status.success(), "readelf -SW {bin} failed");
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        // "  [17] .text.cold  PROGBITS  00000000003b0000 3b0000 0d0000 ..."
        let rest = l.split_once(']')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        (f.first() == Some(&name)).then(|| {
            let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
            (hex(f[2]), hex(f[4]))
        })
    })
}

/// The binary's symbols: (address, kind, raw name).
fn symbols(bin: &str) -> Vec<(u64, char, String)> {
    let out = Command::new("nm")
        .args(["--defined-only", bin])
        .output()
        .expect("nm (binutils) runs");
    assert!(out.status.success(), "nm {bin} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            let kind = f.next()?.chars().next()?;
            Some((addr, kind, f.next()?.to_owned()))
        })
        .collect()
}

#[test]
fn code_that_rarely_runs_is_gathered_in_whole_64k_blocks_of_its_own() {
    let bin = common::drover_bin();
    let (start, size) = section(bin, ".text.cold").unwrap_or_else(|| {
        panic!("{bin} has no .text.cold section: build.rs no longer passes src/cold.ld")
    });
    const BLOCK: u64 = 64 * 1024;
    assert_eq!(start % BLOCK, 0, ".text.cold starts at {start:#x}");
    assert_eq!(size % BLOCK, 0, ".text.cold is {size:#x} bytes long");
    let cold = |addr: u64| (start..start + size).contains(&addr);

    let symbols = symbols(bin);
    // Functions: (address, raw name).
    let fns: Vec<(u64, String)> = symbols
        .iter()
        .filter(|(_, kind, _)| matches!(kind, 't' | 'T'))
        .map(|(a, _, n)| (*a, n.clone()))
        .collect();
    // Several names for one body (identical functions merged by the
    // compiler): the body's section is named after one of them only.
    let mut names_at = std::collections::HashMap::<u64, usize>::new();
    for (a, _) in &fns {
        *names_at.entry(*a).or_default() += 1;
    }
    let own = |a: u64| names_at[&a] == 1;
    // Each group of src/cold.ld: the functions of its crates (their own
    // paths, `_ZN<length><crate>`), and the C code, are all in the section.
    for prefix in [
        "_ZN6rustls",
        "_ZN4ring",
        "_ZN12drover_redis",
        "_ZN5redis",
        "_ZN7combine",
        "_ZN12drover_store",
        "_ZN8rusqlite",
        "_ZN13clap_complete",
        "_ZN11clap_mangen",
        "sqlite3_prepare",
    ] {
        let matching: Vec<&(u64, String)> =
            fns.iter().filter(|(_, n)| n.starts_with(prefix)).collect();
        assert!(
            !matching.is_empty(),
            "no function of {bin} starts with {prefix}: update this test and src/cold.ld"
        );
        let stray: Vec<&str> = matching
            .iter()
            .filter(|(a, _)| !cold(*a) && own(*a))
            .map(|(_, n)| n.as_str())
            .collect();
        assert!(
            stray.is_empty(),
            "{} of {} functions starting with {prefix} are outside .text.cold, e.g. {:?}",
            stray.len(),
            matching.len(),
            &stray[..stray.len().min(5)]
        );
    }
    // A body merged from identical functions has several names and sits
    // where its section (one of them) put it: one in .text.cold must not
    // also serve a function of the standard library or of drover.
    let shared: Vec<&str> = fns
        .iter()
        .filter(|(a, n)| {
            cold(*a)
                && !own(*a)
                && (n.starts_with("_ZN5alloc")
                    || n.starts_with("_ZN4core")
                    || n.starts_with("_ZN3std")
                    || n.starts_with("_ZN6drover")
                    || n.starts_with("_R"))
        })
        .map(|(_, n)| n.as_str())
        .take(5)
        .collect();
    assert!(
        shared.is_empty(),
        "hot names on bodies in .text.cold: {shared:?}"
    );
    // The C code's read-only data too (ring's curve tables, SQLite's).
    let (rstart, rsize) = section(bin, ".rodata.cold").unwrap_or_else(|| {
        panic!("{bin} has no .rodata.cold section: build.rs no longer passes src/cold.ld")
    });
    assert_eq!(rstart % BLOCK, 0, ".rodata.cold starts at {rstart:#x}");
    assert_eq!(rsize % BLOCK, 0, ".rodata.cold is {rsize:#x} bytes long");
    let table = symbols
        .iter()
        .find(|(_, kind, name)| matches!(kind, 'r' | 'R') && name == "ecp_nistz256_precomputed")
        .map(|(a, _, _)| *a)
        .unwrap_or_else(|| panic!("{bin} has no read-only symbol ecp_nistz256_precomputed"));
    assert!(
        (rstart..rstart + rsize).contains(&table),
        "ring's ecp_nistz256_precomputed at {table:#x}, outside .rodata.cold"
    );
    // The event loop, the supervisor, the broker and the start path are
    // not (`drover..broker..redis..` runs every loop turn too).
    for module in [
        "6drover7runtime",
        "6drover10supervisor",
        "6drover6broker",
        "6drover5start",
    ] {
        let ours: Vec<&(u64, String)> = fns.iter().filter(|(_, n)| n.contains(module)).collect();
        assert!(!ours.is_empty(), "no function of {bin} in {module}");
        let moved: Vec<&str> = ours
            .iter()
            .filter(|(a, _)| cold(*a) && own(*a))
            .map(|(_, n)| n.as_str())
            .take(5)
            .collect();
        assert!(moved.is_empty(), "hot code in .text.cold: {moved:?}");
    }
}

#[test]
fn code_the_running_loop_executes_is_gathered_at_the_front() {
    let bin = common::drover_bin();
    let (start, size) = section(bin, ".text.hot").unwrap_or_else(|| {
        panic!("{bin} has no .text.hot section: build.rs no longer passes src/hot.ld")
    });
    let (_, text) = section(bin, ".text").expect(".text");
    const BLOCK: u64 = 64 * 1024;
    assert_eq!(start % BLOCK, 0, ".text.hot starts at {start:#x}");
    assert_eq!(size % BLOCK, 0, ".text.hot is {size:#x} bytes long");
    // What makes it worth having: a few blocks, not a copy of the text.
    assert!(
        size < (size + text) / 3,
        ".text.hot is {size:#x} bytes, .text {text:#x}: src/hot.ld names too much"
    );
    let hot = |addr: u64| (start..start + size).contains(&addr);
    let fns: Vec<(u64, String)> = symbols(bin)
        .into_iter()
        .filter(|(_, kind, _)| matches!(kind, 't' | 'T'))
        .map(|(a, _, n)| (a, n))
        .collect();
    // The functions that run after the start's code is released, whatever
    // the workload src/hot.ld was made with (bench/hot_code.py), and a few
    // the loop runs at every child's exit.
    for name in [
        "_ZN6drover3sys4code18release_code_pages",
        "_ZN6drover10supervisor11start_child",
        "_ZN6drover7runtime7Runtime8dispatch",
        "_ZN10drover_sys11spawn_child",
    ] {
        // The function itself (legacy mangling: the path, then its hash),
        // not the closures inside it, which the loop may never run.
        let own = format!("{name}17h");
        let found: Vec<&(u64, String)> = fns.iter().filter(|(_, n)| n.starts_with(&own)).collect();
        assert!(!found.is_empty(), "no function of {bin} starts with {name}");
        assert!(
            found.iter().all(|(a, _)| hot(*a)),
            "{name} is outside .text.hot: {found:?}"
        );
    }
    // Nothing of what src/cold.ld gathers.
    let cold: Vec<&str> = fns
        .iter()
        .filter(|(a, n)| {
            hot(*a)
                && [
                    "_ZN6rustls",
                    "_ZN4ring",
                    "_ZN5redis",
                    "_ZN8rusqlite",
                    "_ZN11clap_mangen",
                ]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .map(|(_, n)| n.as_str())
        .take(5)
        .collect();
    assert!(cold.is_empty(), "cold code in .text.hot: {cold:?}");
}

/// RssFile of `pid`, in kB.
fn rss_file_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/PID/status")
        .lines()
        .find_map(|l| l.strip_prefix("RssFile:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssFile")
}

/// The page count of each "released N code pages" line so far.
fn releases(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split_once("released ")?.1.split_once(" code pages"))
        .filter_map(|(n, _)| n.parse().ok())
        .collect()
}

#[test]
fn the_start_and_each_reload_give_back_their_code_and_the_loop_runs_on() {
    use common::Drover;
    let config = "[group.sleepers]\ncommand = [\"sleep\", \"1000\"]\nprocesses = 3\n";
    let d = Drover::start("code-release", config);
    let pids = d.wait_group_state("sleepers", "running");
    let text = d.stderr.wait_count("code pages", 1);
    let first = releases(&text);
    assert!(
        first.first().is_some_and(|&n| n > 0),
        "the release after the start unmapped nothing: {first:?}\n{text}"
    );
    // What was given back was mapped: far less of the binary is now (a
    // debug build's start touches megabytes of it; the loop, a fraction).
    let after = rss_file_kb(d.pid());
    assert!(
        after < first[0] * 4,
        "RssFile {after} kB after releasing {} kB",
        first[0] * 4
    );
    // The loop runs on the released code: a crash is restarted, status
    // answers, a reload is read and applied, and its code is released too.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    d.wait_status("a new sleepers[0]", |s| {
        let kids = Drover::children(s, "sleepers");
        kids[0]["state"] == "running" && kids[0]["pid"].as_i64() != Some(pids[0])
    });
    d.dir.write(
        "drover.toml",
        &format!("{config}\n[group.more]\ncommand = [\"sleep\", \"1000\"]\n"),
    );
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    d.wait_group_state("more", "running");
    let text = d.stderr.wait_count("code pages", 2);
    assert!(
        releases(&text).get(1).is_some_and(|&n| n > 0),
        "the release after the reload unmapped nothing:\n{text}"
    );
    assert!(
        d.status()["groups"]
            .as_array()
            .is_some_and(|g| g.len() == 2)
    );
}
