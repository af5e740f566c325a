//! drover: a declarative process supervisor.

pub mod config;
pub mod names;
pub mod signal;
