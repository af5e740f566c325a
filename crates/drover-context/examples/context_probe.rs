//! Test helper for `tests/context.rs`: runs one scenario of the
//! `drover-context` library under one start method and prints what it
//! observed as `key value` lines, for the test to check. The scenarios need
//! a `main` of their own (`init()` first, and no test-harness threads around
//! a fork), hence a separate program.
//!
//! ```text
//! context_probe exitcodes|roundtrip|reuse spawn|fork|forkserver
//! context_probe respawn forkserver
//! context_probe noinit spawn|forkserver
//! ```

use std::time::Duration;

use drover_context::{self as context, Context, Error, Queue};
use serde::{Deserialize, Serialize};

/// Bounds every wait, so a broken library fails the probe instead of
/// hanging it (the test's own deadline is longer).
const DEADLINE: Duration = Duration::from_secs(20);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [scenario, method] = args.as_slice() else {
        return Err("usage: context_probe SCENARIO METHOD".into());
    };
    if scenario == "noinit" {
        // Deliberately before init(): start must refuse, not re-run main.
        return noinit(context::get_context(context::parse_start_method(method)?));
    }
    context::init();
    let ctx = context::get_context(context::parse_start_method(method)?);
    match scenario.as_str() {
        "exitcodes" => exitcodes(ctx),
        "roundtrip" => roundtrip(ctx),
        "reuse" => reuse(ctx),
        "respawn" => respawn(ctx),
        other => Err(format!("unknown scenario {other:?}").into()),
    }
}

fn returns(_: ()) {}

fn panics(_: ()) {
    panic!("the target panicked on purpose");
}

fn exits(code: i32) {
    std::process::exit(code);
}

/// Says it runs, then waits forever on a queue nobody feeds.
fn blocks((ready, never): (Queue<u32>, Queue<()>)) {
    ready.put(std::process::id()).expect("put");
    let _ = never.get();
}

fn finished(name: &str, process: &mut context::Process) -> Result<()> {
    process.start()?;
    if !process.join_timeout(DEADLINE)? {
        return Err(format!("{name}: still running after {DEADLINE:?}").into());
    }
    println!("{name} {}", code(process.exitcode()));
    Ok(())
}

fn code(exitcode: Option<i32>) -> String {
    exitcode.map_or("none".to_owned(), |c| c.to_string())
}

fn exitcodes(ctx: Context) -> Result<()> {
    let mut p = ctx.process(returns, ());
    println!(
        "before_start alive={} exitcode={}",
        p.is_alive(),
        code(p.exitcode())
    );
    println!(
        "join_unstarted {}",
        matches!(p.join(), Err(Error::NotStarted))
    );
    finished("return", &mut p)?;
    p.join()?;
    println!("join_again {}", code(p.exitcode()));
    println!(
        "restart {}",
        matches!(p.start(), Err(Error::AlreadyStarted))
    );
    finished("panic", &mut ctx.process(panics, ()))?;
    finished("exit", &mut ctx.process(exits, 3))?;

    for (name, signal) in [("terminate", "TERM"), ("kill", "KILL")] {
        let (ready, never) = (ctx.queue::<u32>()?, ctx.queue::<()>()?);
        let mut p = ctx.process(blocks, (ready.clone(), never.clone()));
        p.start()?;
        let pid = ready.get_timeout(DEADLINE)?;
        println!(
            "{name}_running pid_matches={} alive={} exitcode={}",
            Some(pid as i32) == p.pid(),
            p.is_alive(),
            code(p.exitcode())
        );
        if signal == "TERM" {
            p.terminate()?;
        } else {
            p.kill()?;
        }
        if !p.join_timeout(DEADLINE)? {
            return Err(format!("{name}: still running after {DEADLINE:?}").into());
        }
        println!("{name} {} alive={}", code(p.exitcode()), p.is_alive());
        // Signalling a finished process is a no-op, as in Python.
        p.terminate()?;
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u64,
    name: String,
    tags: Vec<String>,
    weight: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Settings {
    suffix: String,
}

/// Takes jobs from `inbox` until it gets `None`, sending each back with
/// its id incremented and the suffix appended to its name.
fn worker((settings, inbox, outbox): (Settings, Queue<Option<Job>>, Queue<Job>)) {
    while let Some(mut job) = inbox.get().expect("get") {
        job.id += 1;
        job.name.push_str(&settings.suffix);
        outbox.put(job).expect("put");
    }
}

fn roundtrip(ctx: Context) -> Result<()> {
    let (inbox, outbox) = (ctx.queue::<Option<Job>>()?, ctx.queue::<Job>()?);
    let settings = Settings {
        suffix: "-done".to_owned(),
    };
    let mut p = ctx.process(worker, (settings, inbox.clone(), outbox.clone()));
    p.start()?;
    let job = Job {
        id: 41,
        name: "résumé ✓".to_owned(),
        tags: vec!["a".to_owned(), "b".to_owned()],
        weight: Some(0.5),
    };
    for _ in 0..3 {
        inbox.put(Some(job.clone()))?;
        let back = outbox.get_timeout(DEADLINE)?;
        println!("job {}", serde_json::to_string(&back)?);
    }
    inbox.put(None)?;
    if !p.join_timeout(DEADLINE)? {
        return Err("worker still running".into());
    }
    println!("worker {}", code(p.exitcode()));
    Ok(())
}

fn report_parent(q: Queue<i32>) {
    q.put(nix::unistd::getppid().as_raw()).expect("put");
}

fn reuse(ctx: Context) -> Result<()> {
    println!("self {}", std::process::id());
    let q = ctx.queue::<i32>()?;
    for _ in 0..2 {
        let mut p = ctx.process(report_parent, q.clone());
        p.start()?;
        let server = context::forkserver_pid().map_or("none".to_owned(), |p| p.to_string());
        println!("ppid {} server {server}", q.get_timeout(DEADLINE)?);
        if !p.join_timeout(DEADLINE)? {
            return Err("child still running".into());
        }
    }
    Ok(())
}

/// Kills the fork server between two starts: the second start must get a
/// new server.
fn respawn(ctx: Context) -> Result<()> {
    let q = ctx.queue::<i32>()?;
    for round in 0..2 {
        let mut p = ctx.process(report_parent, q.clone());
        p.start()?;
        println!("ppid {}", q.get_timeout(DEADLINE)?);
        if !p.join_timeout(DEADLINE)? {
            return Err("child still running".into());
        }
        if round == 0 {
            let server = context::forkserver_pid().ok_or("no fork server")?;
            let server = nix::unistd::Pid::from_raw(server);
            nix::sys::signal::kill(server, nix::sys::signal::Signal::SIGKILL)?;
            // The server is our child: wait until it is gone for sure.
            nix::sys::wait::waitpid(server, None)?;
        }
    }
    Ok(())
}

fn noinit(ctx: Context) -> Result<()> {
    let mut p = ctx.process(returns, ());
    match p.start() {
        Err(e @ Error::NotInitialised { .. }) => println!("refused {e}"),
        other => println!("unexpected {other:?}"),
    }
    Ok(())
}
