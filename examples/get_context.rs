//! The second program of Python's start-method tutorial, ported line for
//! line: `multiprocessing.get_context('fork')`, then a child
//! that prints its PID and puts `Python` on a queue for the parent.
//!
//! ```text
//! cargo run --example get_context [spawn|fork|forkserver]   # default: fork
//! ```

use drover::context::{self, Queue, StartMethod};

fn foo(q: Queue<String>) {
    println!("被启动的新进程: ({})", std::process::id());
    q.put("Python".to_owned()).expect("put");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    context::init();
    let method = match std::env::args().nth(1) {
        Some(name) => context::parse_start_method(&name)?,
        None => StartMethod::Fork,
    };
    let ctx = context::get_context(method);
    let q = ctx.queue()?;
    let mut mp = ctx.process(foo, q.clone());
    mp.start()?;
    println!("{}", q.get()?);
    mp.join()?;
    Ok(())
}
