//! drover: a declarative process supervisor.

pub mod config;
pub mod names;
pub mod signal;
pub mod supervisor;
pub mod sys;
pub mod launch;
pub mod logs;
pub mod status;
pub mod control;
pub mod runtime;
pub mod orphans;
// pub mod cli; (enabled once config::load lands)
