//! Finding and reading config files: one `.toml` file, or every `*.toml`
//! file of a directory in name order.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::diag::{Diagnostic, Location};
use super::source::SourceFile;

/// The files `path` stands for: itself if it is a file; else the `*.toml`
/// entries of the directory, sorted by name, skipping names that start with
/// `.` (editor lock files, Kubernetes' `..data`) and directories. Symlinks
/// are followed.
pub(crate) fn discover(path: &Path) -> Result<Vec<PathBuf>, Vec<Diagnostic>> {
    let meta = fs::metadata(path).map_err(|e| vec![cannot_read(path, &e)])?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = fs::read_dir(path).map_err(|e| vec![cannot_read(path, &e)])?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| vec![cannot_read(path, &e)])?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if !name_str.starts_with('.') && name_str.ends_with(".toml") {
            names.push(name);
        }
    }
    names.sort();
    let mut files = Vec::new();
    let mut diags = Vec::new();
    for name in names {
        let file = path.join(name);
        match fs::metadata(&file) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => files.push(file),
            Err(e) => diags.push(unreadable(&file, &e)),
        }
    }
    if files.is_empty() && diags.is_empty() {
        diags.push(no_files(path));
    }
    if diags.is_empty() {
        Ok(files)
    } else {
        Err(diags)
    }
}

/// Reads one file. Text that is not UTF-8 is an error located at the first
/// bad byte.
pub(crate) fn read(path: &Path) -> Result<SourceFile, Diagnostic> {
    let bytes = fs::read(path).map_err(|e| unreadable(path, &e))?;
    from_bytes(path, bytes)
}

/// A file's contents as source text; not UTF-8 is an error located at the
/// first bad byte.
pub(crate) fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<SourceFile, Diagnostic> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(SourceFile::new(path.to_path_buf(), text)),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let file = SourceFile::new(path.to_path_buf(), lossy);
            Err(Diagnostic::error("config file is not valid UTF-8")
                .at(file.at(at..at + 1))
                .with_help("save the file as UTF-8"))
        }
    }
}

fn cannot_read(path: &Path, e: &io::Error) -> Diagnostic {
    Diagnostic::error(format!("cannot read {}: {e}", path.display()))
}

fn unreadable(file: &Path, e: &io::Error) -> Diagnostic {
    Diagnostic::error(format!("cannot read config file: {e}")).at(Location {
        file: file.to_path_buf(),
        span: None,
    })
}

fn no_files(dir: &Path) -> Diagnostic {
    Diagnostic::error(format!("no `.toml` files in {}", dir.display())).with_help(
        "drover reads every `*.toml` file of a config directory \
         (names starting with `.` are ignored)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("drover-files-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn names(files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_directory_yields_its_toml_files_in_name_order() {
        let tmp = TempDir::new("order");
        for name in ["b.toml", "a.toml", ".#a.toml", "notes.txt", "c.toml.bak"] {
            fs::write(tmp.0.join(name), "").unwrap();
        }
        fs::create_dir(tmp.0.join("sub.toml")).unwrap();
        fs::create_dir(tmp.0.join("..data")).unwrap();
        std::os::unix::fs::symlink(tmp.0.join("a.toml"), tmp.0.join("link.toml")).unwrap();
        let files = discover(&tmp.0).unwrap();
        assert_eq!(names(&files), ["a.toml", "b.toml", "link.toml"]);
        assert_eq!(files[0], tmp.0.join("a.toml"));
    }

    #[test]
    fn a_file_is_taken_as_is() {
        let tmp = TempDir::new("single");
        let file = tmp.0.join("drover.conf");
        fs::write(&file, "").unwrap();
        assert_eq!(discover(&file).unwrap(), [file]);
    }

    #[test]
    fn an_empty_directory_is_an_error() {
        let tmp = TempDir::new("empty");
        fs::write(tmp.0.join(".hidden.toml"), "").unwrap();
        let diags = discover(&tmp.0).unwrap_err();
        assert!(
            diags[0].message().starts_with("no `.toml` files in "),
            "{}",
            diags[0]
        );
    }

    #[test]
    fn missing_paths_and_dangling_symlinks_are_errors() {
        let tmp = TempDir::new("missing");
        let diags = discover(&tmp.0.join("nope")).unwrap_err();
        assert!(diags[0].message().contains("cannot read"), "{}", diags[0]);
        std::os::unix::fs::symlink(tmp.0.join("gone"), tmp.0.join("x.toml")).unwrap();
        let diags = discover(&tmp.0).unwrap_err();
        assert_eq!(diags[0].location().unwrap().file, tmp.0.join("x.toml"));
        assert!(diags[0].message().starts_with("cannot read config file: "));
    }

    #[test]
    fn invalid_utf8_is_located() {
        let tmp = TempDir::new("utf8");
        let file = tmp.0.join("a.toml");
        fs::write(&file, b"a = 1\nb = \"\xff\"\n").unwrap();
        let d = read(&file).unwrap_err();
        let span = d.location().unwrap().span.as_ref().unwrap();
        assert_eq!((span.line, span.col), (2, 6));
    }
}
