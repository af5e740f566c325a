//! What the two tutorial ports share beyond the tutorial itself: choosing
//! the start method from the command line, and saying in English which one
//! ran. Not an example of its own (no `main.rs` here).

use std::ffi::OsString;

use drover_context::{StartMethod, parse_start_method};

/// The valid names, in the order the usage lines give them.
const NAMES: &str = "spawn, fork, forkserver";

/// The start method named by the only argument, or `default` without one.
/// The error is the message for `error: …`.
pub fn method_from_args(
    mut args: impl Iterator<Item = OsString>,
    default: StartMethod,
) -> Result<StartMethod, String> {
    let _program = args.next();
    let Some(name) = args.next() else {
        return Ok(default);
    };
    if let Some(extra) = args.next() {
        return Err(format!(
            "unexpected argument {:?}; give at most one start method ({NAMES})",
            extra.to_string_lossy()
        ));
    }
    let name = name.to_string_lossy();
    parse_start_method(&name)
        .map_err(|_| format!("unknown start method {name:?}; expected one of {NAMES}"))
}

/// One line saying which start method ran and what that meant for the
/// child, printed after the tutorial's own output.
pub fn explain(method: StartMethod) -> String {
    let how = match method {
        StartMethod::Spawn => {
            "the child was a fresh run of this program, started by posix_spawn \
             and sent straight to foo by context::init()"
        }
        StartMethod::Fork => "the child ran foo in a forked copy of this process",
        StartMethod::Forkserver => {
            "a fork server, a fresh run of this program that ran only \
             context::init(), forked the child, which ran foo"
        }
    };
    format!("(start method: {} — {how})", method.as_str())
}

/// The examples' `main`: the start method from the arguments (`default`
/// without one; a bad one is a one-line error, exit 2), the tutorial's
/// program, then the line that explains which method ran.
pub fn main(
    default: StartMethod,
    run: fn(StartMethod) -> Result<(), Box<dyn std::error::Error>>,
) -> std::process::ExitCode {
    let method = match method_from_args(std::env::args_os(), default) {
        Ok(method) => method,
        Err(message) => {
            eprintln!("error: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(method) {
        Ok(()) => {
            println!("{}", explain(method));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
