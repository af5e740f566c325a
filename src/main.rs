//! The `drover` binary; see the library crate for how it works.

fn main() -> std::process::ExitCode {
    drover::cli::main()
}
