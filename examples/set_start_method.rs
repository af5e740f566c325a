//! The first program of Python's start-method tutorial, ported line for
//! line: `multiprocessing.set_start_method('spawn')`, then a
//! child that prints its PID and puts `Python` on a queue for the parent.
//!
//! ```text
//! cargo run --example set_start_method [spawn|fork|forkserver]   # default: spawn
//! ```

use drover::context::{self, Process, Queue, StartMethod};

fn foo(q: Queue<String>) {
    println!("被启动的新进程: ({})", std::process::id());
    q.put("Python".to_owned()).expect("put");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    context::init();
    let method = match std::env::args().nth(1) {
        Some(name) => context::parse_start_method(&name)?,
        None => StartMethod::Spawn,
    };
    context::set_start_method(method)?;
    let q = Queue::new()?;
    let mut mp = Process::new(foo, q.clone());
    mp.start()?;
    println!("{}", q.get()?);
    mp.join()?;
    Ok(())
}
