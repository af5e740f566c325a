//! Benchmark behind `bash bench/run.sh context`: for each start method, the time
//! from `Process::start` to the parent receiving the child's first message
//! — the structure of Python's tutorial program, timed.
//!
//! ```text
//! cargo run --release --example context_bench -- [RUNS]   # default 100
//! ```
//!
//! Prints one JSON line per method: the median and p99 of `RUNS` timed
//! starts, in microseconds, plus the first (cold) start on its own, which
//! for `forkserver` includes starting the server.

use std::time::{Duration, Instant};

use drover_context::{self as context, Queue, StartMethod};

fn ping(q: Queue<u64>) {
    q.put(1).expect("put");
}

/// Generous bound on one start, so a broken run fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    context::init();
    let runs: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 100,
    };
    for method in [
        StartMethod::Spawn,
        StartMethod::Fork,
        StartMethod::Forkserver,
    ] {
        let ctx = context::get_context(method);
        let q = ctx.queue::<u64>()?;
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..=runs {
            let mut p = ctx.process(ping, q.clone());
            let t0 = Instant::now();
            p.start()?;
            q.get_timeout(DEADLINE)?;
            samples.push(t0.elapsed());
            if !p.join_timeout(DEADLINE)? {
                return Err("a child did not exit".into());
            }
        }
        let first = samples.remove(0);
        samples.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let n = samples.len();
        let median = if n % 2 == 1 {
            us(samples[n / 2])
        } else {
            (us(samples[n / 2 - 1]) + us(samples[n / 2])) / 2.0
        };
        let p99 = us(samples[(n * 99).div_ceil(100).max(1) - 1]);
        println!(
            "{{\"impl\":\"drover\",\"method\":\"{}\",\"runs\":{n},\"median_us\":{median:.1},\"p99_us\":{p99:.1},\"first_us\":{:.1}}}",
            method.as_str(),
            us(first)
        );
    }
    Ok(())
}
