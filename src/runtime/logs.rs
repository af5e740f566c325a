//! Child output: pipes in, whole prefixed lines out.
//!
//! Each child's stdout and stderr are pipes read by the event loop. A
//! [`LineBuffer`] cuts the byte stream into lines (a line longer than
//! [`MAX_LINE`] is split, so nothing is buffered without bound; a last line
//! without newline is still written). Lines are formatted as `group[index]
//! text` or JSON and handed, one chunk per read, to the [`LogWriter`] thread,
//! which owns drover's stdout. Its channel is bounded: when a slow reader of
//! drover's stdout fills it, the loop stops reading that child's pipe until
//! the writer catches up, so the child blocks on its own writes
//! (back-pressure) and drover's memory stays bounded, while supervision goes
//! on undisturbed.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use crate::config::LogFormat;
use crate::config::names::GroupName;
use crate::supervisor::Pid;
use crate::text::wording::plural;

/// Longest line written in one piece; longer lines are split.
pub const MAX_LINE: usize = 64 * 1024;
/// Bytes read from one pipe per wake-up, for fairness between children.
const READ_BUDGET: usize = 64 * 1024;
/// Chunks queued for the writer thread before back-pressure starts.
const WRITER_SLOTS: usize = 64;
/// Formatted bytes queued for the writer thread (or being written) before
/// back-pressure starts. A chunk is accepted while the total is below it,
/// so the most held is this plus one chunk.
pub const WRITER_BYTES: usize = 4 << 20;

/// Which of a child's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Cuts a byte stream into lines of at most [`MAX_LINE`] bytes.
#[derive(Debug, Default)]
pub struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    /// Feeds `data`, calling `emit` for every complete (or over-long) line,
    /// without its newline.
    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8])) {
        while !data.is_empty() {
            let room = MAX_LINE - self.partial.len();
            let window = &data[..data.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    if self.partial.is_empty() {
                        emit(&window[..nl]);
                    } else {
                        self.partial.extend_from_slice(&window[..nl]);
                        emit(&self.partial);
                        self.partial.clear();
                    }
                    data = &data[nl + 1..];
                }
                None => {
                    self.partial.extend_from_slice(window);
                    data = &data[window.len()..];
                    if self.partial.len() == MAX_LINE {
                        emit(&self.partial);
                        self.partial.clear();
                    }
                }
            }
        }
    }

    /// At end of stream: emits a last line that had no newline.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&self.partial);
            self.partial.clear();
        }
    }
}

/// Who wrote a line, for its prefix.
#[derive(Debug, Clone)]
pub struct Origin {
    pub group: GroupName,
    pub index: u32,
    pub pid: Pid,
    pub stream: Stream,
}

/// How child lines are written: text or JSON, and whether text lines
/// start with the time (`[supervisor] log_timestamps`; JSON lines always
/// carry it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LineFormat {
    pub format: LogFormat,
    pub timestamps: bool,
}

impl LineFormat {
    fn needs_time(self) -> bool {
        self.timestamps || self.format == LogFormat::Json
    }
}

/// `time` as RFC 3339 in UTC with milliseconds: `2026-12-06T00:37:28.123Z`.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

#[derive(serde::Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    group: &'a str,
    index: u32,
    pid: i32,
    stream: &'static str,
    line: &'a str,
}

/// Appends one formatted line (with its newline) to `out`; `time` is when
/// it was read (RFC 3339, used when the format wants it). Invalid UTF-8 is
/// replaced with U+FFFD.
pub fn format_line(
    out: &mut Vec<u8>,
    format: LineFormat,
    time: &str,
    origin: &Origin,
    line: &[u8],
) {
    let text = String::from_utf8_lossy(line);
    match format.format {
        LogFormat::Text => {
            if format.timestamps {
                let _ = write!(out, "{time} ");
            }
            let _ = write!(out, "{}[{}] ", origin.group, origin.index);
            out.extend_from_slice(text.as_bytes());
        }
        LogFormat::Json => {
            let record = JsonLine {
                time,
                group: origin.group.as_str(),
                index: origin.index,
                pid: origin.pid.0,
                stream: origin.stream.as_str(),
                line: &text,
            };
            serde_json::to_writer(&mut *out, &record).expect("serialising to a Vec cannot fail");
        }
    }
    out.push(b'\n');
}

/// One child pipe being read by the event loop.
#[derive(Debug)]
pub struct PipeReader {
    file: std::fs::File,
    pub origin: Origin,
    lines: LineBuffer,
}

/// What one read of a pipe produced.
#[derive(Debug)]
pub struct ReadOutcome {
    pub chunk: Vec<u8>,
    pub eof: bool,
}

impl PipeReader {
    pub fn new(fd: OwnedFd, origin: Origin) -> Self {
        PipeReader {
            file: fd.into(),
            origin,
            lines: LineBuffer::default(),
        }
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.file)
    }

    /// Reads what the pipe holds, up to a budget, and formats whole lines.
    /// `scratch` is a reusable read buffer (the loop keeps one for all pipes).
    pub fn read(&mut self, format: LineFormat, scratch: &mut Vec<u8>) -> ReadOutcome {
        scratch.resize(READ_BUDGET, 0);
        let buf = scratch.as_mut_slice();
        let mut chunk = Vec::new();
        let mut filled = 0;
        let mut eof = false;
        while filled < buf.len() {
            match self.file.read(&mut buf[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!("reading child output: {e}");
                    eof = true;
                    break;
                }
            }
        }
        let origin = &self.origin;
        // One time for what one read brought.
        let time = if format.needs_time() && (filled > 0 || eof) {
            rfc3339(std::time::SystemTime::now())
        } else {
            String::new()
        };
        self.lines.push(&buf[..filled], |line| {
            format_line(&mut chunk, format, &time, origin, line)
        });
        if eof {
            self.lines
                .finish(|line| format_line(&mut chunk, format, &time, origin, line));
        }
        ReadOutcome { chunk, eof }
    }
}

/// The thread that owns drover's stdout; see the module documentation.
#[derive(Debug)]
pub struct LogWriter {
    tx: Option<SyncSender<Vec<u8>>>,
    /// Bytes sent and not yet written out.
    queued: Arc<AtomicUsize>,
    wake_wanted: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Starts the writer on `out`. When the loop has asked for it (after a
    /// refused chunk), the writer writes a byte to `wake` once it has made
    /// room.
    pub fn start(out: Box<dyn Write + Send>, wake: UnixStream) -> io::Result<Self> {
        let (tx, rx) = sync_channel(WRITER_SLOTS);
        let queued = Arc::new(AtomicUsize::new(0));
        let wake_wanted = Arc::new(AtomicBool::new(false));
        let room = Room {
            queued: Arc::clone(&queued),
            wake_wanted: Arc::clone(&wake_wanted),
            wake,
        };
        let thread = std::thread::Builder::new()
            .name("drover-log-writer".into())
            .spawn(move || write_loop(rx, out, room))?;
        Ok(LogWriter {
            tx: Some(tx),
            queued,
            wake_wanted,
            thread: Some(thread),
        })
    }

    /// Queues `chunk`, or hands it back when the writer is behind; the loop
    /// is then woken through `wake` once there is room.
    pub fn try_send(&self, chunk: Vec<u8>) -> Result<(), Vec<u8>> {
        match self.send_now(chunk) {
            Ok(()) => Ok(()),
            Err(chunk) => {
                // Ask for a wake-up first, then retry: if the writer made
                // room in between, the retry succeeds; if not, the writer
                // still has a chunk to write and will see the flag.
                self.wake_wanted.store(true, Ordering::SeqCst);
                self.send_now(chunk)
            }
        }
    }

    /// Whether a chunk would be taken now; when not, the loop is woken
    /// through `wake` once it would.
    pub fn has_room(&self) -> bool {
        if self.queued.load(Ordering::SeqCst) < WRITER_BYTES {
            return true;
        }
        self.wake_wanted.store(true, Ordering::SeqCst);
        self.queued.load(Ordering::SeqCst) < WRITER_BYTES
    }

    fn send_now(&self, chunk: Vec<u8>) -> Result<(), Vec<u8>> {
        let tx = self.tx.as_ref().expect("writer is running");
        if self.queued.load(Ordering::SeqCst) >= WRITER_BYTES {
            return Err(chunk);
        }
        let len = chunk.len();
        self.queued.fetch_add(len, Ordering::SeqCst);
        match tx.try_send(chunk) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(len, Ordering::SeqCst);
                Ok(())
            }
            Err(TrySendError::Full(chunk)) => {
                self.queued.fetch_sub(len, Ordering::SeqCst);
                Err(chunk)
            }
        }
    }

    /// Formatted bytes sent to the writer and not yet written out.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Whether everything sent was written out; when not, the loop is
    /// woken through `wake` after the writer's next write.
    pub fn drained(&self) -> bool {
        if self.queued() == 0 {
            return true;
        }
        self.wake_wanted.store(true, Ordering::SeqCst);
        self.queued() == 0
    }

    /// Writes everything still queued and stops the thread.
    pub fn finish(mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer's side of the budget: what it frees, and whom to tell.
struct Room {
    queued: Arc<AtomicUsize>,
    wake_wanted: Arc<AtomicBool>,
    wake: UnixStream,
}

fn write_loop(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>, mut room: Room) {
    let mut stdout = Stdout {
        out,
        mid_line: false,
        gap: None,
    };
    while let Ok(chunk) = rx.recv() {
        stdout.write(&chunk);
        // Written (or discarded): its bytes and its slot are free, and the
        // loop may send again.
        room.queued.fetch_sub(chunk.len(), Ordering::SeqCst);
        drop(chunk);
        if room.wake_wanted.swap(false, Ordering::SeqCst) {
            let _ = room.wake.write(&[1]);
        }
    }
}

/// drover's stdout as the writer thread sees it. A chunk that cannot be
/// written (a full disk, a file at its size limit, a closed pipe) is
/// discarded, so that children never block on a stdout that fails; the
/// next chunk is tried all the same, so output resumes once stdout takes
/// it again (the disk was cleaned up), with one line on stderr for the
/// start of the gap and one, with its size, for its end.
struct Stdout {
    out: Box<dyn Write + Send>,
    /// What was written last ends in the middle of a line (a chunk cut
    /// short by a failure): the next write starts with a newline, so that
    /// no line is glued to a torn one.
    mid_line: bool,
    /// Chunks and bytes discarded since stdout last took a write.
    gap: Option<(u64, u64)>,
}

impl Stdout {
    fn write(&mut self, chunk: &[u8]) {
        let result = if self.mid_line {
            self.write_all(b"\n").and_then(|()| self.write_all(chunk))
        } else {
            self.write_all(chunk)
        }
        .and_then(|()| self.out.flush());
        match result {
            Ok(()) => {
                if let Some((chunks, bytes)) = self.gap.take() {
                    tracing::warn!(
                        "child output reaches stdout again; {} ({bytes} bytes) could not be written",
                        plural(chunks as usize, "chunk of lines", "chunks of lines")
                    );
                }
            }
            Err(e) => {
                if self.gap.is_none() {
                    tracing::warn!(
                        "cannot write child output to stdout: {e}; discarding it until stdout takes it again"
                    );
                }
                let (chunks, bytes) = self.gap.get_or_insert((0, 0));
                *chunks += 1;
                *bytes += chunk.len() as u64;
            }
        }
    }

    /// Writes `data` whole, keeping `mid_line` true to what went out.
    fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.out.write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.mid_line = data[n - 1] != b'\n';
                    data = &data[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut buf = LineBuffer::default();
        let mut out = Vec::new();
        for piece in input {
            buf.push(piece, |l| out.push(l.to_vec()));
        }
        buf.finish(|l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn joins_pieces_and_keeps_a_final_line_without_newline() {
        let got = lines(&[b"he", b"llo\nwor", b"ld\n\nlast"]);
        assert_eq!(got, [&b"hello"[..], b"world", b"", b"last"]);
    }

    #[test]
    fn splits_over_long_lines() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut input = long.clone();
        input.push(b'\n');
        let got = lines(&[&input]);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].len(), MAX_LINE);
        assert_eq!(got[1].len(), MAX_LINE);
        assert_eq!(got[2].len(), 10);
        assert_eq!(got.concat(), long);
    }

    #[test]
    fn formats_text_and_json_and_replaces_invalid_utf8() {
        let origin = Origin {
            group: GroupName::new("web").unwrap(),
            index: 2,
            pid: Pid(42),
            stream: Stream::Stderr,
        };
        let mut out = Vec::new();
        let time = "2026-12-06T00:37:28.123Z";
        let text = LineFormat::default();
        format_line(&mut out, text, time, &origin, b"a\xffb");
        assert_eq!(out, "web[2] a\u{fffd}b\n".as_bytes());
        out.clear();
        let stamped = LineFormat {
            timestamps: true,
            ..text
        };
        format_line(&mut out, stamped, time, &origin, b"up");
        assert_eq!(out, format!("{time} web[2] up\n").as_bytes());
        out.clear();
        let json = LineFormat {
            format: LogFormat::Json,
            timestamps: false,
        };
        format_line(&mut out, json, time, &origin, b"say \"hi\"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"time\":\"2026-12-06T00:37:28.123Z\",\"group\":\"web\",\"index\":2,\"pid\":42,\"stream\":\"stderr\",\"line\":\"say \\\"hi\\\"\"}\n"
        );
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |secs: u64, ms: u64| rfc3339(UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_796_517_448, 123), "2026-12-06T00:37:28.123Z");
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
    }

    /// A stdout that fails for a while (a full disk) and then takes writes
    /// again: the chunks in between are discarded, the torn line the
    /// failure left is ended, and what comes after is written.
    #[test]
    fn output_resumes_once_stdout_takes_writes_again() {
        use std::sync::Mutex;
        #[derive(Default)]
        struct Disk {
            data: Vec<u8>,
            /// Bytes it takes before failing; `None`: no limit.
            room: Option<usize>,
        }
        struct Shared(Arc<Mutex<Disk>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                let mut disk = self.0.lock().unwrap();
                let n = match disk.room {
                    None => b.len(),
                    Some(0) => return Err(io::Error::from_raw_os_error(libc::ENOSPC)),
                    Some(room) => room.min(b.len()),
                };
                disk.room = disk.room.map(|r| r - n);
                disk.data.extend_from_slice(&b[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let disk = Arc::new(Mutex::new(Disk::default()));
        let mut stdout = Stdout {
            out: Box::new(Shared(Arc::clone(&disk))),
            mid_line: false,
            gap: None,
        };
        stdout.write(b"one\n");
        disk.lock().unwrap().room = Some(3);
        stdout.write(b"two\nthree\n");
        stdout.write(b"four\n");
        assert_eq!(stdout.gap, Some((2, 15)));
        disk.lock().unwrap().room = None;
        stdout.write(b"five\n");
        assert_eq!(stdout.gap, None);
        assert_eq!(
            String::from_utf8(disk.lock().unwrap().data.clone()).unwrap(),
            "one\ntwo\nfive\n"
        );
        // Torn mid-line: the next write ends that line first.
        disk.lock().unwrap().room = Some(2);
        stdout.write(b"six\n");
        disk.lock().unwrap().room = None;
        stdout.write(b"seven\n");
        assert_eq!(
            String::from_utf8(disk.lock().unwrap().data.clone()).unwrap(),
            "one\ntwo\nfive\nsi\nseven\n"
        );
    }

    #[test]
    fn writer_wakes_the_loop_after_a_full_channel() {
        let (wake_tx, mut wake_rx) = UnixStream::pair().unwrap();
        // A writer whose output blocks until we let it go.
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        struct Gated(std::sync::mpsc::Receiver<()>);
        impl Write for Gated {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                let _ = self.0.recv();
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let writer = LogWriter::start(Box::new(Gated(gate_rx)), wake_tx).unwrap();
        let mut rejected = None;
        for i in 0..WRITER_SLOTS + 2 {
            if let Err(chunk) = writer.try_send(vec![i as u8]) {
                rejected = Some(chunk);
                break;
            }
        }
        assert!(
            rejected.is_some(),
            "a bounded channel must refuse eventually"
        );
        for _ in 0..WRITER_SLOTS + 2 {
            let _ = gate_tx.send(());
        }
        let mut byte = [0u8];
        wake_rx.read_exact(&mut byte).unwrap();
        assert!(writer.try_send(vec![1]).is_ok());
        drop(gate_tx);
        writer.finish();
    }
}
