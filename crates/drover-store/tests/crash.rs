//! Crash safety: a writer child is SIGKILLed at a random moment; every id
//! it reported committed must be there after reopening, with no holes.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use common::{DEADLINE, TempDir, ids, wait};
use drover_store::{Batch, Store};

const WRITER_ENV: &str = "DROVER_STORE_TEST_WRITER_DIR";

/// Not a test of its own: the writer the crash test runs in a child
/// (this test binary again, with WRITER_ENV set). Without it, returns.
#[test]
fn writer_child() {
    let Some(dir) = std::env::var_os(WRITER_ENV) else {
        return;
    };
    let (mut store, rec) = Store::open(dir.as_ref()).unwrap();
    let mut next = rec.next_id;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {next}").unwrap();
    out.flush().unwrap();
    // Keep a few batches in flight so that kills land mid-commit too.
    let mut in_flight = std::collections::VecDeque::new();
    let mut size = 1u64;
    let mut done = std::collections::BTreeMap::new();
    loop {
        while in_flight.len() < 4 {
            // Batches of 1..=40 messages, over two queues, sizes varying.
            size = size * 7 % 41;
            let n = size.max(1);
            let batch = Batch {
                append: (next..next + n)
                    .map(|i| {
                        let q = if i % 3 == 0 { "b" } else { "a" };
                        (
                            q.to_string(),
                            i,
                            vec![(i % 251) as u8; 16 + (i % 1000) as usize],
                        )
                    })
                    .collect(),
                ..Batch::default()
            };
            next += n;
            in_flight.push_back((store.submit(batch), next - 1));
        }
        let (t, last) = in_flight.pop_front().unwrap();
        if !done.contains_key(&t) {
            done.extend(wait(&mut store, &[t]));
        }
        done.remove(&t).unwrap().unwrap();
        writeln!(out, "committed {last}").unwrap();
        out.flush().unwrap();
    }
}

/// A cheap random number: the clock's nanoseconds, mixed.
fn random(seed: u64) -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut x = t ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

#[test]
fn sigkill_at_a_random_moment_loses_nothing_committed() {
    let dir = TempDir::new("crash");
    let exe = std::env::current_exe().unwrap();
    let mut reported_max: Option<u64> = None;
    for round in 0..5u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", "writer_child", "--nocapture", "--test-threads=1"])
            .env(WRITER_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill after a random number of confirmed commits: the next ones
        // are in flight at that moment.
        let kill_after = 1 + random(round) % 300;
        let mut seen = 0;
        let start = Instant::now();
        while seen < kill_after {
            assert!(start.elapsed() < DEADLINE, "writer too slow");
            let line = lines.next().expect("writer exited early").unwrap();
            if let Some(n) = line.strip_prefix("committed ") {
                let n: u64 = n.parse().unwrap();
                reported_max = Some(reported_max.map_or(n, |m| m.max(n)));
                seen += 1;
            }
        }
        child.kill().unwrap();
        // What it printed before dying counts as confirmed too.
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("committed ") {
                let n: u64 = n.parse().unwrap();
                reported_max = Some(reported_max.map_or(n, |m| m.max(n)));
            }
        }
        child.wait().unwrap();

        let (store, rec) = Store::open(dir.path()).expect("store after SIGKILL");
        let mut all: Vec<u64> = ids(&rec, "a");
        all.extend(ids(&rec, "b"));
        all.sort_unstable();
        let max = reported_max.unwrap();
        assert!(
            all.len() as u64 > max,
            "round {round}: {} stored, but {max} was reported committed",
            all.len()
        );
        assert_eq!(
            all,
            (0..all.len() as u64).collect::<Vec<_>>(),
            "round {round}: stored ids have holes"
        );
        assert_eq!(rec.next_id, all.len() as u64);
        for q in ["a", "b"] {
            for m in &rec.queues[q] {
                assert_eq!(
                    m.bytes,
                    vec![(m.id % 251) as u8; 16 + (m.id % 1000) as usize]
                );
            }
        }
        eprintln!(
            "round {round}: killed after {kill_after} confirmations; {max} confirmed, {} stored",
            all.len()
        );
        store.close(DEADLINE).unwrap();
    }
}
