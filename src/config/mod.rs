//! Configuration: TOML files in, a validated [`Config`] out.
//!
//! # How a config is loaded
//!
//! [`load`] takes the path given to `drover run` / `drover check`: one
//! `.toml` file, or a directory whose `*.toml` files are merged in name order.
//! Then, for each file:
//!
//! 1. **Syntax** — `toml`'s `DeTable` parser keeps the byte span of every key
//!    and value. A syntax error is one diagnostic for that file.
//! 2. **Tables** — the spanned tree is walked by hand (`document`, then
//!    `supervisor`, `group` with `program` and `policy`, `queue`). Each key is
//!    read by a typed reader in `fields` that reports a wrong type or value
//!    and goes on, so *every* problem is found, not just the first (a serde
//!    derive would stop there).
//!
//! Then across files (`merge`): at most one `[supervisor]`, one namespace for
//! groups and queues, every referenced queue defined, and warnings for queues
//! without producer or consumer. Defaults that depend on the machine (the
//! state directory, `PATH` for finding programs) are read once into a `Host`
//! and resolved here, never inside the parser. Every value is bounded
//! (`limits`): past `config`, no value can overflow a deadline or allocate
//! absurdly.
//!
//! Problems are [`Diagnostic`]s: a severity, a `subject: problem` message, the
//! file, line and column with the offending text, and help. Any error rejects
//! the whole config ([`Failed`]); warnings alone do not ([`Loaded`]). Only
//! the model ([`Config`] and its parts) is used past this module.

pub mod anysignal;
mod diag;
mod document;
mod duration;
mod envfile;
mod fields;
mod files;
mod group;
mod host;
pub mod interpolate;
pub(crate) mod limits;
mod lookup;
mod merge;
mod model;
pub mod names;
mod order;
mod policy;
mod program;
mod queue;
mod ready;
mod rlimits;
pub mod signal;
mod size;
mod sockets;
mod source;
mod suggest;
mod supervisor;
mod users;

use std::fmt;
use std::path::Path;

pub use diag::{Diagnostic, Location, Severity, Span, render_all};
pub use duration::parse_duration;
pub use files::{MAX_FILES, is_config_name};
pub use model::*;

use host::Host;
use merge::Parsed;
use source::SourceFile;

/// A valid config, and the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// In file order, then position.
    pub warnings: Vec<Diagnostic>,
}

/// A rejected config: at least one error, and the warnings too, sorted by
/// file and position.
#[derive(Debug, Clone)]
pub struct Failed {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for Failed {
    /// Every diagnostic and the summary, as [`render_all`] shows them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render_all(&self.diagnostics))
    }
}

impl std::error::Error for Failed {}

/// Loads and validates the config at `path` (a `.toml` file or a directory
/// of them), collecting every error and warning.
pub fn load(path: &Path) -> Result<Loaded, Failed> {
    let files = files::discover(path).map_err(|diagnostics| Failed { diagnostics })?;
    let (sources, diags) = files::read_all(&files);
    let all_read = sources.len() == files.len();
    validate(sources, all_read, &Host::current(), diags)
}

/// Validates a config given as files in memory, in the order a directory
/// of them would be merged (the path names only serve the diagnostics and
/// relative paths). The whole loader but the file system: the fuzz target
/// for configs drives this, and it never panics, whatever the bytes. No
/// files at all is an error.
pub fn load_files(files: Vec<(std::path::PathBuf, Vec<u8>)>) -> Result<Loaded, Failed> {
    let mut diags = Vec::new();
    let count = files.len();
    let sources: Vec<SourceFile> = files
        .into_iter()
        .filter_map(|(path, bytes)| {
            files::from_bytes(&path, bytes)
                .map_err(|d| diags.push(d))
                .ok()
        })
        .collect();
    let all_read = sources.len() == count;
    validate(sources, all_read, &Host::current(), diags)
}

/// Validates files already in memory; `all_read` is false when some file of
/// the config could not be read (its error is among `diags`).
fn validate(
    sources: Vec<SourceFile>,
    all_read: bool,
    host: &Host,
    mut diags: Vec<Diagnostic>,
) -> Result<Loaded, Failed> {
    if sources.is_empty() && diags.is_empty() {
        let help = "give a `.toml` file, or a directory of them";
        diags.push(Diagnostic::error("no config files").with_help(help));
    }
    let mut parsed = Vec::with_capacity(sources.len());
    let mut complete = all_read;
    for file in sources {
        match document::read(&file, host, &mut diags) {
            Some(draft) => parsed.push(Parsed { file, draft }),
            None => complete = false,
        }
    }
    let config = merge::merge(&parsed, complete, host, &mut diags);
    diags.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    match config {
        Some(config) if !diags.iter().any(Diagnostic::is_error) => Ok(Loaded {
            config,
            warnings: diags,
        }),
        Some(_) => Err(Failed { diagnostics: diags }),
        None => {
            // A config is only missing after an error; should a path miss
            // that, the config is still rejected, with a reason.
            if !diags.iter().any(Diagnostic::is_error) {
                diags.insert(0, Diagnostic::error("the config is incomplete"));
            }
            Err(Failed { diagnostics: diags })
        }
    }
}

#[cfg(test)]
mod tests;
