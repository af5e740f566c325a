//! Whether a group's program can be executed: a path is checked relative to
//! the group's `cwd`, a bare name is searched in the `PATH` the child gets.

use std::ffi::OsStr;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::diag::Diagnostic;
use super::fields::Cx;
use super::source::resolve;

/// Warns when `command[0]` cannot be executed: a path (with `/`) is
/// resolved against the group's `cwd`; a bare name is searched in `path`,
/// the `PATH` the child will get. At run time such a group's starts fail and
/// back off while every other group runs, so this is a warning.
pub(crate) fn check_program(
    cx: &mut Cx<'_>,
    group: &str,
    (program, span): (&str, Range<usize>),
    cwd: &Path,
    path: Option<&OsStr>,
) {
    let problem = if program.contains('/') {
        let full = resolve(cwd, Path::new(program));
        executable(&full)
            .err()
            .map(|p| (format!("{p} ({})", full.display()), None))
    } else {
        search(program, cwd, path).err()
    };
    let Some((problem, note)) = problem else {
        return;
    };
    let mut warning = Diagnostic::warning(format!("program `{program}` of group `{group}` {problem}"))
        .at(cx.at(span))
        .with_help(format!("starts of group `{group}` will fail and back off until this is fixed; other groups still run"));
    if let Some(note) = note {
        warning = warning.with_note(note);
    }
    cx.report(warning);
}

/// Finds a bare program name in `path` like `execvp` does; the error is the
/// problem and a note showing the `PATH` searched.
fn search(program: &str, cwd: &Path, path: Option<&OsStr>) -> Result<(), (String, Option<String>)> {
    let path = path.unwrap_or_default();
    let mut last_problem = "is not found in PATH";
    let dirs = (!path.is_empty()).then(|| std::env::split_paths(path));
    for dir in dirs.into_iter().flatten() {
        match executable(&resolve(cwd, &dir.join(program))) {
            Ok(()) => return Ok(()),
            Err(Problem::Missing) => {}
            Err(p) => last_problem = p.describe_in_path(),
        }
    }
    let note = if path.is_empty() {
        "PATH is empty or not set".to_owned()
    } else {
        format!("PATH is `{}`", path.to_string_lossy())
    };
    Err((last_problem.to_owned(), Some(note)))
}

enum Problem {
    Missing,
    Directory,
    NotExecutable,
}

impl Problem {
    fn describe_in_path(&self) -> &'static str {
        match self {
            Problem::Missing => "is not found in PATH",
            Problem::Directory => "is found in PATH only as a directory",
            Problem::NotExecutable => "is found in PATH but is not executable",
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Problem::Missing => "does not exist",
            Problem::Directory => "is a directory",
            Problem::NotExecutable => "is not executable",
        })
    }
}

fn executable(path: &Path) -> Result<(), Problem> {
    let meta = std::fs::metadata(path).map_err(|_| Problem::Missing)?;
    if meta.is_dir() {
        Err(Problem::Directory)
    } else if meta.permissions().mode() & 0o111 == 0 {
        Err(Problem::NotExecutable)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_like_execvp() {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap();
        let name = exe.file_name().unwrap().to_str().unwrap();
        let cwd = Path::new("/");
        assert!(search(name, cwd, Some(dir.as_os_str())).is_ok());
        let (problem, note) = search(name, cwd, Some(OsStr::new("/nonexistent"))).unwrap_err();
        assert_eq!(problem, "is not found in PATH");
        assert_eq!(note.as_deref(), Some("PATH is `/nonexistent`"));
        let (_, note) = search(name, cwd, None).unwrap_err();
        assert_eq!(note.as_deref(), Some("PATH is empty or not set"));
    }

    #[test]
    fn classifies_paths() {
        assert!(executable(&std::env::current_exe().unwrap()).is_ok());
        assert!(matches!(
            executable(Path::new("/")),
            Err(Problem::Directory)
        ));
        assert!(matches!(
            executable(Path::new("/nonexistent/x")),
            Err(Problem::Missing)
        ));
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert!(matches!(executable(&manifest), Err(Problem::NotExecutable)));
    }
}
