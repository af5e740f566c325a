//! The `drover` binary; see the library crate for how it works.

fn main() {}
