//! Disk full, corrupt files, permission denied: typed errors naming the
//! file, nothing accepted lost, and the store usable again afterwards.

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{DEADLINE, TempDir, appends, commit, ids};
use drover_store::{Batch, STORE_FILE, Store, StoreError};

/// A tmpfs mounted on a directory, unmounted on drop (also on panic).
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// None (with the reason printed) where mounting is not allowed.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = TempDir::new("tmpfs");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system of `dir` with `dir/filler` until ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    path
}

fn big(queue: &str, ids: std::ops::Range<u64>) -> Batch {
    Batch {
        append: ids
            .map(|i| (queue.to_string(), i, vec![i as u8; 64 * 1024]))
            .collect(),
        ..Batch::default()
    }
}

#[test]
fn disk_full_fails_commits_keeps_data_and_recovers() {
    let Some(fs) = Tmpfs::mount("2m") else {
        return;
    };
    let dir = fs.dir.path().join("state");
    let (mut store, _) = Store::open(&dir).unwrap();
    commit(&mut store, appends("q", 0..100)).unwrap();

    let filler = fill(fs.dir.path());
    // A batch of 512 KiB cannot fit.
    let err = commit(&mut store, big("q", 100..108)).unwrap_err();
    assert!(matches!(err, StoreError::DiskFull { .. }), "{err:?}");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(text.starts_with("disk full"), "{text}");
    assert!(text.contains(STORE_FILE), "{text}");
    assert_eq!(store.stats().failures, 1);
    // Small commits may or may not fit in the pages already allocated; an
    // error, if any, is still the typed one.
    if let Err(e) = commit(&mut store, appends("q", [200])) {
        assert!(matches!(e, StoreError::DiskFull { .. }), "{e:?}");
    }

    // Close and reopen while the disk is still full: what was committed is
    // all there (or opening itself reports the full disk; never corrupt).
    store.close(DEADLINE).unwrap();
    match Store::open(&dir) {
        Ok((store, rec)) => {
            let got = ids(&rec, "q");
            assert_eq!(got[..100], (0..100).collect::<Vec<_>>());
            assert!(got.iter().all(|&i| i < 100 || i == 200), "{got:?}");
            store.close(DEADLINE).unwrap();
        }
        Err(e) => assert!(matches!(e, StoreError::DiskFull { .. }), "{e:?}"),
    }

    // Space again: the same batch (resubmitted) goes through.
    std::fs::remove_file(filler).unwrap();
    let (mut store, rec) = Store::open(&dir).unwrap();
    assert_eq!(ids(&rec, "q")[..100], (0..100).collect::<Vec<_>>());
    commit(&mut store, big("q", 100..108)).unwrap();
    store.close(DEADLINE).unwrap();
    let (store, rec) = Store::open(&dir).unwrap();
    let got = ids(&rec, "q");
    assert_eq!(got[..108], (0..108).collect::<Vec<_>>());
    assert_eq!(rec.queues["q"][107].bytes, vec![107u8; 64 * 1024]);
    store.close(DEADLINE).unwrap();
}

/// A closed store with `n` small messages; returns its file.
fn stored(dir: &Path, n: u64) -> PathBuf {
    let (mut store, _) = Store::open(dir).unwrap();
    commit(&mut store, appends("q", 0..n)).unwrap();
    store.close(DEADLINE).unwrap();
    dir.join(STORE_FILE)
}

fn scribble(file: &Path, offset: u64, len: usize) {
    let mut f = OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let garbage: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8 ^ 0x5a).collect();
    f.write_all(&garbage).unwrap();
}

fn assert_corrupt(err: StoreError, file: &Path) {
    match &err {
        StoreError::Corrupt { path, .. } => assert_eq!(path, file),
        e => panic!("expected Corrupt, got {e:?}"),
    }
    let text = err.to_string();
    eprintln!("{text}");
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains("corrupt"), "{text}");
}

#[test]
fn a_garbage_header_is_reported_corrupt_naming_the_file() {
    let dir = TempDir::new("corrupt-header");
    let file = stored(dir.path(), 10);
    scribble(&file, 0, 100);
    assert_corrupt(Store::open(dir.path()).unwrap_err(), &file);
}

#[test]
fn garbage_pages_are_reported_corrupt_naming_the_file() {
    let dir = TempDir::new("corrupt-pages");
    let file = stored(dir.path(), 2000);
    let len = std::fs::metadata(&file).unwrap().len();
    assert!(len > 8192, "store file only {len} bytes");
    // Every page after the first (the schema): the tables' b-trees.
    scribble(&file, 4096, (len - 4096) as usize);
    assert_corrupt(Store::open(dir.path()).unwrap_err(), &file);
}

#[test]
fn a_file_that_is_not_a_store_is_refused() {
    let dir = TempDir::new("foreign");
    let file = dir.path().join(STORE_FILE);
    // A text file is not a store.
    std::fs::write(&file, "this is not a database, just text\n".repeat(200)).unwrap();
    assert_corrupt(Store::open(dir.path()).unwrap_err(), &file);
}

/// `chattr +i` on a path, undone on drop.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Option<Immutable> {
        match Command::new("chattr").arg("+i").arg(path).output() {
            Ok(o) if o.status.success() => Some(Immutable(path.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: chattr +i failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run chattr: {e}");
                None
            }
        }
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn an_immutable_state_dir_is_permission_denied() {
    let dir = TempDir::new("immutable");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let Some(_guard) = Immutable::set(&state) else {
        return;
    };
    let err = Store::open(&state).unwrap_err();
    assert!(
        matches!(err, StoreError::PermissionDenied { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    eprintln!("{text}");
    assert!(text.starts_with("permission denied"), "{text}");
    assert!(text.contains(&state.display().to_string()), "{text}");
}

#[test]
fn an_immutable_store_file_is_permission_denied() {
    let dir = TempDir::new("immutable-file");
    let file = stored(dir.path(), 10);
    let Some(_guard) = Immutable::set(&file) else {
        return;
    };
    let err = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::PermissionDenied { .. }),
        "{err:?}"
    );
    eprintln!("{err}");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_state_dir_under_a_regular_file_is_a_clear_error() {
    let dir = TempDir::new("notdir");
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let state = file.join("state");
    let err = Store::open(&state).unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(text.contains(&state.display().to_string()), "{text}");
    assert!(text.to_lowercase().contains("not a directory"), "{text}");
}
