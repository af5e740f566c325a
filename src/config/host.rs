//! The few facts about the machine that defaults depend on, read once per
//! load so that validation itself is a pure function of them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::rlimits::Resource;

/// What validation may know about the environment drover runs in.
#[derive(Debug, Clone, Default)]
pub(crate) struct Host {
    /// Whether drover runs with effective uid 0.
    pub is_root: bool,
    /// `$XDG_STATE_HOME`, if set to an absolute path (the XDG spec says to
    /// ignore relative ones).
    pub xdg_state_home: Option<PathBuf>,
    /// drover's own `$PATH`, which children inherit unless their `env` sets one.
    pub path: Option<OsString>,
    /// drover's effective uid and gid: a `user` that is drover's own needs
    /// no switch.
    pub uid: u32,
    pub gid: u32,
    /// The kernel's `fs.nr_open`, the ceiling of `rlimits.nofile`.
    pub nr_open: Option<u64>,
    /// drover's own hard limits: without root, `rlimits` cannot exceed them.
    pub hard_limits: Vec<(Resource, u64)>,
}

impl Host {
    /// The real process environment.
    pub fn current() -> Self {
        Host {
            is_root: nix::unistd::geteuid().is_root(),
            xdg_state_home: std::env::var_os("XDG_STATE_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute()),
            path: std::env::var_os("PATH"),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            nr_open: super::rlimits::nr_open(),
            hard_limits: super::rlimits::hard_limits(),
        }
    }

    /// The default `state_dir`: `/var/lib/drover` for root, else
    /// `$XDG_STATE_HOME/drover`, else `.drover-state` next to the first
    /// config file (`config_dir`).
    pub fn default_state_dir(&self, config_dir: &Path) -> PathBuf {
        if self.is_root {
            PathBuf::from("/var/lib/drover")
        } else if let Some(xdg) = &self.xdg_state_home {
            xdg.join("drover")
        } else {
            config_dir.join(".drover-state")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_state_dir_prefers_root_then_xdg_then_config_dir() {
        let dir = Path::new("/srv/app");
        let root = Host {
            is_root: true,
            xdg_state_home: Some("/x".into()),
            path: None,
            ..Host::default()
        };
        assert_eq!(root.default_state_dir(dir), Path::new("/var/lib/drover"));
        let xdg = Host {
            is_root: false,
            ..root
        };
        assert_eq!(xdg.default_state_dir(dir), Path::new("/x/drover"));
        let plain = Host::default();
        assert_eq!(
            plain.default_state_dir(dir),
            Path::new("/srv/app/.drover-state")
        );
    }
}
