//! Dead-letter records written under `state_dir` for queues that name no
//! `dead_letter` queue: one JSON object per line, one file per queue
//! (`<state_dir>/dead-letters/<queue>.jsonl`), readable by a person.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::queue::DeadLetter;
use crate::config::names::QueueName;

#[derive(serde::Serialize)]
struct Record<'a> {
    time: &'a str,
    queue: &'a str,
    reason: &'a str,
    deliveries: u32,
    bytes: usize,
    /// The message, with bytes outside printable ASCII escaped as `\xNN`
    /// (Rust's `escape_ascii`), so it reads as text and converts back.
    message: String,
}

/// The file for `queue`'s dead letters.
pub fn path(state_dir: &Path, queue: &QueueName) -> PathBuf {
    state_dir
        .join("dead-letters")
        .join(format!("{queue}.jsonl"))
}

/// What [`append`] did with a run of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    pub written: usize,
    /// Writing these would have taken the file past `max_bytes`: not
    /// written.
    pub over_limit: usize,
}

/// Appends the records of `letters` (each with the time it was
/// dead-lettered) to `queue`'s dead-letter file, in order, as long as the
/// file stays within `max_bytes`; one open and one write for the run. The
/// file's size is read on every call (not remembered), so an operator may
/// empty or rotate it at any time.
pub fn append(
    state_dir: &Path,
    queue: &QueueName,
    letters: &[(String, DeadLetter)],
    max_bytes: u64,
) -> std::io::Result<Appended> {
    let file = path(state_dir, queue);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Never blocks on what is not a regular file (a FIFO put there waits
    // for a reader: O_NONBLOCK fails it at once; anything else that opens
    // is refused below), and never makes a terminal ours.
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&file)?;
    let meta = out.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            file.display()
        )));
    }
    let mut size = meta.len();
    let mut done = Appended::default();
    let mut lines = Vec::new();
    for (time, letter) in letters {
        if size >= max_bytes {
            // Full: not even worth serialising (a flood stays cheap).
            done.over_limit += 1;
            continue;
        }
        let record = Record {
            time,
            queue: queue.as_str(),
            reason: &letter.reason,
            deliveries: letter.message.deliveries,
            bytes: letter.message.bytes.len(),
            message: letter.message.bytes.escape_ascii().to_string(),
        };
        let mut line = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let len = line.len() as u64;
        if size.saturating_add(len) > max_bytes {
            done.over_limit += 1;
            continue;
        }
        size += len;
        lines.extend_from_slice(&line);
        done.written += 1;
    }
    out.write_all(&lines)?;
    Ok(done)
}

/// `2026-11-25T16:45:03.123Z`.
pub fn utc_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::queue::Message;

    /// `letter`, dead-lettered now, as a run of one.
    fn one(letter: &DeadLetter) -> Vec<(String, DeadLetter)> {
        vec![(utc_now(), letter.clone())]
    }

    const WRITTEN: Appended = Appended {
        written: 1,
        over_limit: 0,
    };

    #[test]
    fn converts_days_to_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn appends_readable_records() {
        let dir = std::env::temp_dir().join(format!("drover-dl-{}", std::process::id()));
        let queue = QueueName::new("jobs").unwrap();
        let letter = DeadLetter {
            message: Message {
                bytes: b"bad \xff msg".as_slice().into(),
                deliveries: 5,
                id: None,
            },
            reason: "delivered 5 times".into(),
        };
        assert_eq!(
            append(&dir, &queue, &one(&letter), u64::MAX).unwrap(),
            WRITTEN
        );
        append(&dir, &queue, &one(&letter), u64::MAX).unwrap();
        let file = path(&dir, &queue);
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["message"], "bad \\xff msg");
        assert_eq!(lines[0]["deliveries"], 5);
        assert_eq!(lines[0]["bytes"], 9);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_file_never_grows_past_its_bound() {
        let dir = std::env::temp_dir().join(format!("drover-dl-bound-{}", std::process::id()));
        let queue = QueueName::new("jobs").unwrap();
        let letter = DeadLetter {
            message: Message::new(&[b'x'; 100]),
            reason: "r".into(),
        };
        let max = 500;
        let mut written = 0;
        for _ in 0..20 {
            if append(&dir, &queue, &one(&letter), max).unwrap() == WRITTEN {
                written += 1;
            }
        }
        let size = std::fs::metadata(path(&dir, &queue)).unwrap().len();
        assert!(
            written >= 1 && size <= max,
            "{written} records, {size} bytes"
        );
        // Emptied by an operator: written again.
        std::fs::write(path(&dir, &queue), b"").unwrap();
        assert_eq!(append(&dir, &queue, &one(&letter), max).unwrap(), WRITTEN);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_state_dir_is_an_error_not_a_panic() {
        let file = std::env::temp_dir().join(format!("drover-dl-file-{}", std::process::id()));
        std::fs::write(&file, b"not a directory").unwrap();
        let queue = QueueName::new("jobs").unwrap();
        let letter = DeadLetter {
            message: Message::new(b"m"),
            reason: "r".into(),
        };
        assert!(append(&file, &queue, &one(&letter), u64::MAX).is_err());
        let _ = std::fs::remove_file(&file);
    }

    /// A FIFO where the file should be (nobody reading it, or a reader
    /// that never reads) is an error at once: opening it for writing used
    /// to wait for a reader forever, on the event loop.
    #[test]
    fn a_fifo_in_place_of_the_file_is_an_error_not_a_wait() {
        let dir = std::env::temp_dir().join(format!("drover-dl-fifo-{}", std::process::id()));
        let queue = QueueName::new("jobs").unwrap();
        let file = path(&dir, &queue);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        nix::unistd::mkfifo(&file, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let letter = DeadLetter {
            message: Message::new(b"m"),
            reason: "r".into(),
        };
        assert!(
            append(&dir, &queue, &one(&letter), u64::MAX).is_err(),
            "no reader"
        );
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&file)
            .unwrap();
        let err = append(&dir, &queue, &one(&letter), u64::MAX).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        drop(reader);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
