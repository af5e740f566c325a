//! The second program of Python's start-method tutorial, ported line for
//! line: `multiprocessing.get_context('fork')`, then a child
//! that prints its PID and puts `Python` on a queue for the parent.
//!
//! ```text
//! cargo run --example get_context [spawn|fork|forkserver]   # default: fork
//! ```
//!
//! After the tutorial's two lines, exactly as Python prints them, one more
//! says which start method ran. An unknown method name is an error (exit 2).

mod tutorial;

use std::process::ExitCode;

use drover_context::{self as context, Queue, StartMethod};

fn foo(q: Queue<String>) {
    println!("被启动的新进程: ({})", std::process::id());
    q.put("Python".to_owned()).expect("put");
}

fn run(method: StartMethod) -> Result<(), Box<dyn std::error::Error>> {
    let ctx = context::get_context(method);
    let q = ctx.queue()?;
    let mut mp = ctx.process(foo, q.clone());
    mp.start()?;
    println!("{}", q.get()?);
    mp.join()?;
    Ok(())
}

fn main() -> ExitCode {
    context::init();
    tutorial::main(StartMethod::Fork, run)
}
