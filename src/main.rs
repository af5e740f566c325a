//! The `drover` binary; see the library crate for how it works.

fn main() -> std::process::ExitCode {
    // A re-executed drover serving the `forkserver` start method never
    // reaches the CLI.
    drover::serve_if_requested();
    drover::cli::main()
}
