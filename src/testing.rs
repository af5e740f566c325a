//! Helpers shared by the unit tests.

use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `drover-{what}-{pid}-{name}`: unique per test process and test.
    pub fn new(what: &str, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("drover-{what}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
