//! Finding and reading config files: one `.toml` file, or every `*.toml`
//! file of a directory in name order.
//!
//! Nothing on the file system may block drover or exhaust its memory: only
//! regular files (after following symlinks) are read, so a FIFO or a device
//! named `*.toml` in a directory is passed over; a file is opened without
//! blocking and its type checked again on the opened fd (it may have been
//! swapped since the directory was listed); at most [`MAX_FILE_BYTES`] are
//! read from one file, a directory may hold at most [`MAX_FILES`] config
//! files, and all of them together at most [`MAX_TOTAL_BYTES`]. A file that
//! some process still has open for writing is not read: its content may be
//! half of what is being saved.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::diag::{Diagnostic, Location};
use super::source::SourceFile;
use crate::sys::file::{Lease, describe, open_nonblocking, read_lease};

/// The largest config file drover reads.
pub(crate) const MAX_FILE_BYTES: u64 = 4 << 20;

/// The most `*.toml` files a config directory may hold.
pub const MAX_FILES: usize = 10_000;

/// The most bytes all the files of one config may hold together: a
/// directory of [`MAX_FILES`] files of [`MAX_FILE_BYTES`] each would be 40
/// GiB, read on the supervisor's loop at every reload (and at a client's
/// `reload --dry-run PATH`).
pub(crate) const MAX_TOTAL_BYTES: u64 = 64 << 20;

/// Reads `files` (a config's, from [`discover`]) in order, until they hold
/// [`MAX_TOTAL_BYTES`] together: the sources read, and the errors.
pub(crate) fn read_all(files: &[PathBuf]) -> (Vec<SourceFile>, Vec<Diagnostic>) {
    read_all_at_most(files, MAX_TOTAL_BYTES)
}

fn read_all_at_most(files: &[PathBuf], max_total: u64) -> (Vec<SourceFile>, Vec<Diagnostic>) {
    let mut sources = Vec::new();
    let mut diags = Vec::new();
    let mut total: u64 = 0;
    for file in files {
        match read(file) {
            Ok(source) => {
                total = total.saturating_add(source.text.len() as u64);
                if total > max_total {
                    diags.push(
                        Diagnostic::error(format!(
                            "cannot read {}: the config's files hold more than {} together, \
                             the limit for one config",
                            file.display(),
                            super::size::format_size(max_total)
                        ))
                        .with_help("move files that are not config elsewhere"),
                    );
                    break;
                }
                sources.push(source);
            }
            Err(d) => diags.push(d),
        }
    }
    (sources, diags)
}

/// The files `path` stands for: itself if it is not a directory; else the
/// `*.toml` entries of the directory that are regular files (symlinks
/// followed), sorted by name, skipping names that start with `.` (editor
/// lock files, Kubernetes' `..data`). Directories, FIFOs, devices and
/// sockets are passed over without a diagnostic here (this function only
/// reports errors); `drover run` warns about them itself.
/// Whether an entry of a config directory is read as a config file:
/// `*.toml`, not hidden (editor lock files, Kubernetes' `..data`).
pub fn is_config_name(name: &str) -> bool {
    !name.starts_with('.') && name.ends_with(".toml")
}

pub(crate) fn discover(path: &Path) -> Result<Vec<PathBuf>, Vec<Diagnostic>> {
    discover_at_most(path, MAX_FILES)
}

fn discover_at_most(path: &Path, max_files: usize) -> Result<Vec<PathBuf>, Vec<Diagnostic>> {
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
        if is_config_name(&name_str) {
            if names.len() == max_files {
                return Err(vec![too_many(path, max_files)]);
            }
            names.push(name);
        }
    }
    names.sort();
    let mut files = Vec::new();
    let mut diags = Vec::new();
    for name in names {
        let file = path.join(name);
        // `stat`, not `open`: looking at a FIFO or a device does nothing.
        match fs::metadata(&file) {
            Ok(meta) if meta.is_file() => files.push(file),
            Ok(_) => {}
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
    let bytes = read_at_most(path, MAX_FILE_BYTES).map_err(|problem| {
        Diagnostic::error(format!("cannot read config file: {problem}")).at(Location {
            file: path.to_path_buf(),
            span: None,
        })
    })?;
    from_bytes(path, bytes)
}

/// The bytes of the regular file at `path`, if it holds at most `max`, and
/// no process has it open for writing (when the kernel can tell: see
/// [`read_lease`]); else what is wrong, as a sentence.
pub(crate) fn read_at_most(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = open_nonblocking(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!(
            "it is {}, not a regular file",
            describe(meta.file_type())
        ));
    }
    let too_large = || {
        format!(
            "it is larger than {} MiB, the limit for a config file",
            max >> 20
        )
    };
    if meta.len() > max {
        return Err(too_large());
    }
    // Held while reading: no writer can open the file meanwhile.
    let _lease = match read_lease(&file) {
        Lease::Busy => {
            return Err("a process still has it open for writing".into());
        }
        Lease::Held(lease) => Some(lease),
        Lease::Unavailable(_) => None,
    };
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file may grow after the fstat, or report no size (procfs): the
    // limit holds whatever it says.
    (&file)
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(too_large());
    }
    Ok(bytes)
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

fn too_many(dir: &Path, max: usize) -> Diagnostic {
    Diagnostic::error(format!(
        "cannot read {}: more than {max} `.toml` files, the limit for a config directory",
        dir.display()
    ))
    .with_help("merge files, or move files that are not config elsewhere")
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

    use crate::testing::TempDir;

    fn names(files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_directory_yields_its_toml_files_in_name_order() {
        let tmp = TempDir::new("files", "order");
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
        let tmp = TempDir::new("files", "single");
        let file = tmp.0.join("drover.conf");
        fs::write(&file, "").unwrap();
        assert_eq!(discover(&file).unwrap(), [file]);
    }

    #[test]
    fn an_empty_directory_is_an_error() {
        let tmp = TempDir::new("files", "empty");
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
        let tmp = TempDir::new("files", "missing");
        let diags = discover(&tmp.0.join("nope")).unwrap_err();
        assert!(diags[0].message().contains("cannot read"), "{}", diags[0]);
        std::os::unix::fs::symlink(tmp.0.join("gone"), tmp.0.join("x.toml")).unwrap();
        let diags = discover(&tmp.0).unwrap_err();
        assert_eq!(diags[0].location().unwrap().file, tmp.0.join("x.toml"));
        assert!(diags[0].message().starts_with("cannot read config file: "));
    }

    #[test]
    fn fifos_and_devices_named_toml_are_passed_over() {
        let tmp = TempDir::new("files", "special");
        fs::write(tmp.0.join("a.toml"), "").unwrap();
        nix::unistd::mkfifo(&tmp.0.join("fifo.toml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::os::unix::fs::symlink("/dev/zero", tmp.0.join("zero.toml")).unwrap();
        let files = discover(&tmp.0).unwrap();
        assert_eq!(names(&files), ["a.toml"]);
    }

    /// Regression: opening a FIFO for reading waited for a writer forever,
    /// and `/dev/zero` was read until memory ran out.
    #[test]
    fn reading_a_fifo_or_a_device_fails_at_once() {
        let tmp = TempDir::new("files", "readspecial");
        let fifo = tmp.0.join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let d = read(&fifo).unwrap_err();
        assert_eq!(
            d.message(),
            "cannot read config file: it is a FIFO, not a regular file"
        );
        assert_eq!(d.location().unwrap().file, fifo);
        let zero = tmp.0.join("zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let d = read(&zero).unwrap_err();
        assert!(d.message().contains("it is a character device"), "{d}");
    }

    #[test]
    fn a_file_over_the_size_limit_is_an_error_naming_it() {
        let tmp = TempDir::new("files", "large");
        let file = tmp.0.join("a.toml");
        fs::write(&file, vec![b'#'; (MAX_FILE_BYTES + 1) as usize]).unwrap();
        let d = read(&file).unwrap_err();
        assert_eq!(
            d.message(),
            "cannot read config file: it is larger than 4 MiB, the limit for a config file"
        );
        fs::write(&file, vec![b'#'; MAX_FILE_BYTES as usize]).unwrap();
        assert!(read(&file).is_ok());
    }

    #[test]
    fn a_directory_with_too_many_files_is_an_error_naming_the_limit() {
        let tmp = TempDir::new("files", "many");
        for i in 0..4 {
            fs::write(tmp.0.join(format!("{i}.toml")), "").unwrap();
        }
        fs::write(tmp.0.join("notes.txt"), "").unwrap();
        assert_eq!(discover_at_most(&tmp.0, 4).unwrap().len(), 4);
        let diags = discover_at_most(&tmp.0, 3).unwrap_err();
        assert_eq!(
            diags[0].message(),
            format!(
                "cannot read {}: more than 3 `.toml` files, the limit for a config directory",
                tmp.0.display()
            )
        );
    }

    /// A file being saved in place is never read half-written.
    #[test]
    fn a_file_open_for_writing_is_not_read() {
        let tmp = TempDir::new("files", "writer");
        let file = tmp.0.join("a.toml");
        fs::write(&file, "").unwrap();
        let probe = fs::File::open(&file).unwrap();
        if matches!(read_lease(&probe), Lease::Unavailable(_)) {
            return; // this file system cannot tell
        }
        let writer = fs::OpenOptions::new().append(true).open(&file).unwrap();
        let d = read(&file).unwrap_err();
        assert_eq!(
            d.message(),
            "cannot read config file: a process still has it open for writing"
        );
        drop(writer);
        assert!(read(&file).is_ok());
    }

    #[test]
    fn invalid_utf8_is_located() {
        let tmp = TempDir::new("files", "utf8");
        let file = tmp.0.join("a.toml");
        fs::write(&file, b"a = 1\nb = \"\xff\"\n").unwrap();
        let d = read(&file).unwrap_err();
        let span = d.location().unwrap().span.as_ref().unwrap();
        assert_eq!((span.line, span.col), (2, 6));
    }

    #[test]
    fn a_config_over_its_total_size_stops_reading_with_an_error() {
        let dir = std::env::temp_dir().join(format!("drover-total-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let files: Vec<PathBuf> = (0..4)
            .map(|i| {
                let file = dir.join(format!("{i}.toml"));
                fs::write(&file, vec![b'#'; 1000]).unwrap();
                file
            })
            .collect();
        let (sources, diags) = read_all_at_most(&files, 2500);
        assert_eq!(sources.len(), 2);
        assert_eq!(diags.len(), 1);
        let text = diags[0].message();
        assert!(
            text.contains("2.toml") && text.contains("2500B together"),
            "{text}"
        );
        let (sources, diags) = read_all_at_most(&files, 4000);
        assert_eq!((sources.len(), diags.len()), (4, 0));
        let _ = fs::remove_dir_all(&dir);
    }
}
