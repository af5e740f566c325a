//! The first program of Python's start-method tutorial, ported line for
//! line: `multiprocessing.set_start_method('spawn')`, then a
//! child that prints its PID and puts `Python` on a queue for the parent.
//!
//! ```text
//! cargo run --example set_start_method [spawn|fork|forkserver]   # default: spawn
//! ```
//!
//! After the tutorial's two lines, exactly as Python prints them, one more
//! says which start method ran. An unknown method name is an error (exit 2).

mod tutorial;

use std::process::ExitCode;

use drover_context::{self as context, Process, Queue, StartMethod};

fn foo(q: Queue<String>) {
    println!("被启动的新进程: ({})", std::process::id());
    q.put("Python".to_owned()).expect("put");
}

fn run(method: StartMethod) -> Result<(), Box<dyn std::error::Error>> {
    context::set_start_method(method)?;
    let q = Queue::new()?;
    let mut mp = Process::new(foo, q.clone());
    mp.start()?;
    println!("{}", q.get()?);
    mp.join()?;
    Ok(())
}

fn main() -> ExitCode {
    context::init();
    tutorial::main(StartMethod::Spawn, run)
}
