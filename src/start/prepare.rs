//! What every start of a group shares, prepared once per definition: the
//! program found on PATH, argv, the environment and the working directory,
//! all as C strings ready for the start.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::config::{GroupSpec, Program};
use crate::supervisor::LaunchError;
use crate::sys::{Credentials, Identity};

use crate::config::KEPT_BY_CLEAR_ENV;
use crate::config::interpolate::{expand, needs_expansion};

/// What every start of a group shares.
#[derive(Debug)]
pub struct Prepared {
    /// The definition it was prepared for; another one prepares again.
    pub spec: Rc<GroupSpec>,
    pub program: CString,
    pub argv: Vec<CString>,
    /// The indices of the arguments (never the program) with `${NAME}` or
    /// `$$`, expanded per child from its environment; usually none.
    pub expand: Vec<usize>,
    pub envp: Vec<CString>,
    pub cwd: CString,
    /// `user`, `group` and `rlimits`, as the start paths apply them.
    pub identity: Identity,
    /// The programs of the group's probes (`ready` and `health` commands)
    /// found on PATH, by `argv[0]`: a probe that runs every few seconds
    /// searches PATH once per definition, not at every run.
    pub probe_programs: BTreeMap<OsString, CString>,
}

/// The most probe programs kept per group (it has two probe commands).
pub const MAX_PROBE_PROGRAMS: usize = 4;

impl Prepared {
    /// Prepares `group`'s starts for children that inherit `base_env`.
    pub fn new(
        group: &GroupSpec,
        base_env: &BTreeMap<OsString, OsString>,
    ) -> Result<Prepared, LaunchError> {
        let argv: Vec<OsString> = match &group.program {
            Program::Command(argv) => argv.clone(),
            Program::Python { .. } => super::python::argv(group).expect("a python group"),
        };
        let search_path = group
            .env
            .get("PATH")
            .map(OsString::from)
            .or_else(|| base_env.get(OsStr::new("PATH")).cloned())
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let program = resolve_program(&argv[0], &group.cwd, &search_path)?;
        let expand = match group.program {
            Program::Command(_) => (1..argv.len())
                .filter(|i| needs_expansion(argv[*i].as_bytes()))
                .collect(),
            Program::Python { .. } => Vec::new(),
        };
        Ok(Prepared {
            spec: Rc::new(group.clone()),
            program: cstring(program.as_os_str()),
            argv: argv.iter().map(|a| cstring(a)).collect(),
            expand,
            envp: group_environment(group, base_env),
            cwd: cstring(group.cwd.as_os_str()),
            identity: identity(group),
            probe_programs: BTreeMap::new(),
        })
    }
}

/// Who `group`'s children run as and their limits. A `user` that is
/// drover's own switches nothing.
fn identity(group: &GroupSpec) -> Identity {
    Identity {
        rlimits: group
            .rlimits
            .iter()
            .map(|(resource, limit)| (resource.raw(), limit.raw()))
            .collect(),
        user: group
            .user
            .as_ref()
            .filter(|u| u.switch)
            .map(|u| Credentials {
                uid: u.uid,
                gid: u.gid,
                groups: u.groups.clone(),
            }),
    }
}

/// The part of a child's environment that is the same for every child of
/// `group`: drover's environment (or its PATH, HOME, LANG and TZ with
/// `clear_env`), then `HOME`, `USER` and `LOGNAME` of its `user`, overlaid
/// by `env` (which may set them otherwise), plus `DROVER_GROUP` and
/// `DROVER_START_METHOD`.
fn group_environment(group: &GroupSpec, base_env: &BTreeMap<OsString, OsString>) -> Vec<CString> {
    let mut env: BTreeMap<OsString, OsString> = if group.clear_env {
        base_env
            .iter()
            .filter(|(k, _)| KEPT_BY_CLEAR_ENV.iter().any(|kept| k.as_os_str() == *kept))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    } else {
        base_env.clone()
    };
    // Set per child; drover may itself run under a drover.
    env.retain(|k, _| {
        let k = k.as_bytes();
        // NOTIFY_SOCKET is drover's own (its service manager's): a child
        // gets one of its own with `ready = "notify"`, else none.
        k != b"DROVER_INDEX"
            && k != b"NOTIFY_SOCKET"
            && !k.starts_with(b"DROVER_IN_")
            && !k.starts_with(b"DROVER_OUT_")
    });
    if let Some(user) = &group.user {
        env.insert("HOME".into(), user.home.clone().into());
        env.insert("USER".into(), user.name.clone().into());
        env.insert("LOGNAME".into(), user.name.clone().into());
    }
    for (k, v) in &group.env {
        env.insert(k.into(), v.into());
    }
    env.insert("DROVER_GROUP".into(), group.name.as_str().into());
    env.insert(
        "DROVER_START_METHOD".into(),
        group.start_method.as_str().into(),
    );
    env.into_iter()
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect()
}

/// `prepared`'s argv for one child, whose whole environment is `envp`:
/// the arguments with `${NAME}` expanded from it (a NAME it lacks, which
/// the config check rules out, expands to nothing). Without such
/// arguments, a copy.
pub fn child_argv(prepared: &Prepared, envp: &[CString]) -> Vec<CString> {
    let mut argv = prepared.argv.clone();
    for &i in &prepared.expand {
        let lookup = |name: &[u8]| -> Option<&[u8]> {
            let value = envp.iter().rev().find_map(|kv| {
                let kv = kv.as_bytes();
                let rest = kv.strip_prefix(name)?;
                rest.strip_prefix(b"=")
            });
            Some(value.unwrap_or_default())
        };
        if let Ok(bytes) = expand(argv[i].as_bytes(), lookup) {
            argv[i] = cstring(OsStr::from_bytes(&bytes));
        }
    }
    argv
}

/// `s` as a C string. Config values cannot contain NUL (validation rejects
/// them), but a NUL is dropped rather than panicked on.
pub fn cstring(s: &OsStr) -> CString {
    CString::new(s.as_bytes().to_vec()).unwrap_or_else(|e| {
        let mut bytes = e.into_vec();
        bytes.retain(|b| *b != 0);
        CString::new(bytes).expect("NUL bytes removed")
    })
}

/// Finds the file to execute: a name with a `/` is relative to `cwd`;
/// otherwise it is searched in `search_path` like `execvp` does.
pub fn resolve_program(
    program: &OsStr,
    cwd: &Path,
    search_path: &OsStr,
) -> Result<PathBuf, LaunchError> {
    if program.as_bytes().contains(&b'/') {
        return Ok(cwd.join(program));
    }
    std::env::split_paths(search_path)
        .map(|dir| cwd.join(dir).join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| LaunchError::NotFound {
            program: program.to_string_lossy().into_owned(),
            path: search_path.to_string_lossy().into_owned(),
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The error of a start that failed with `error`. An `ENOENT` or `ENOTDIR`
/// may come from the `chdir` (every start path reports it as the exec's
/// error): if the working directory is what is missing, that is the error
/// to show. Looked at only after a failure, so a start that works costs no
/// extra syscall.
pub fn start_error(group: &GroupSpec, program: &CString, error: std::io::Error) -> LaunchError {
    if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) {
        let (cwd, name) = (group.cwd.clone(), group.name.clone());
        match std::fs::metadata(&group.cwd) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return LaunchError::CwdNotDirectory { cwd, group: name },
            Err(_) => return LaunchError::CwdMissing { cwd, group: name },
        }
    }
    LaunchError::Exec {
        program: program.to_string_lossy().into_owned(),
        source: error,
    }
}
