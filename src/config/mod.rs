//! Configuration: TOML files in, a validated [`Config`] out.
//!
//! (Being written: loading, merging and validation with located diagnostics.)

mod model;

pub use model::*;
