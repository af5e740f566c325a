//! redb vs SQLite for drover's durable queues: append with fsync in group
//! commits, FIFO recovery read, delete-on-ack, mixed steady state, space
//! reuse, RSS. Every engine runs in a child process of its own (so RSS and
//! page-cache effects do not leak between engines); the parent prints a
//! markdown table. See README.md.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Time budget of one throughput case.
const CASE_TIME: Duration = Duration::from_millis(1000);
/// Page cache size granted to every engine (bytes).
const CACHE_BYTES: usize = 16 << 20;
const QUEUE: &str = "jobs";

/// The operations the durable queue store needs; one commit = one durable
/// transaction (fsync before returning).
trait Engine {
    fn open(path: &Path) -> Self;
    fn commit(&mut self, append: &[(u64, &[u8])], delete: &[u64]);
    /// Reads every stored message in FIFO order; returns (count, bytes).
    fn read_all(&mut self) -> (u64, u64);
    /// Files that make up the store (database + WAL etc).
    fn files(path: &Path) -> Vec<PathBuf>;
}

macro_rules! redb_engine {
    ($name:ident, $krate:ident, $set_durability:expr) => {
        struct $name {
            db: $krate::Database,
        }
        impl $name {
            const TABLE: $krate::TableDefinition<'static, (&'static str, u64), &'static [u8]> =
                $krate::TableDefinition::new("messages");
        }
        impl Engine for $name {
            fn open(path: &Path) -> Self {
                let db = $krate::Builder::new()
                    .set_cache_size(CACHE_BYTES)
                    .create(path)
                    .unwrap();
                let mut s = Self { db };
                s.commit(&[], &[]);
                s
            }
            fn commit(&mut self, append: &[(u64, &[u8])], delete: &[u64]) {
                let mut txn = self.db.begin_write().unwrap();
                #[allow(clippy::redundant_closure_call)]
                ($set_durability)(&mut txn);
                {
                    let mut t = txn.open_table(Self::TABLE).unwrap();
                    for (id, bytes) in append {
                        t.insert((QUEUE, *id), *bytes).unwrap();
                    }
                    for id in delete {
                        t.remove((QUEUE, *id)).unwrap();
                    }
                }
                txn.commit().unwrap();
            }
            fn read_all(&mut self) -> (u64, u64) {
                #[allow(unused_imports)]
                use $krate::{ReadableDatabase as _, ReadableTable as _};
                let txn = self.db.begin_read().unwrap();
                let t = txn.open_table(Self::TABLE).unwrap();
                let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
                for row in t.iter().unwrap() {
                    let (k, v) = row.unwrap();
                    out.push((k.value().1, v.value().to_vec()));
                }
                let bytes = out.iter().map(|(_, b)| b.len() as u64).sum();
                (out.len() as u64, bytes)
            }
            fn files(path: &Path) -> Vec<PathBuf> {
                vec![path.to_path_buf()]
            }
        }
    };
}

// redb 2.x has no ReadableDatabase trait; give it one so the macro's import works.
mod redb2_shim {
    pub use redb::*;
    #[allow(dead_code)]
    pub trait ReadableDatabase {}
}

redb_engine!(Redb2, redb2_shim, |t: &mut redb::WriteTransaction| t
    .set_durability(redb::Durability::Immediate));
redb_engine!(Redb5, redb5, |t: &mut redb5::WriteTransaction| t
    .set_durability(redb5::Durability::Immediate)
    .unwrap());

struct Sqlite<const FULL: bool> {
    conn: rusqlite::Connection,
}

impl<const FULL: bool> Engine for Sqlite<FULL> {
    fn open(path: &Path) -> Self {
        let conn = rusqlite::Connection::open(path).unwrap();
        let sync = if FULL { "FULL" } else { "NORMAL" };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous={sync};
             PRAGMA cache_size=-{};
             CREATE TABLE IF NOT EXISTS messages(
                 id INTEGER PRIMARY KEY, queue TEXT NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0, body BLOB NOT NULL);",
            CACHE_BYTES / 1024
        ))
        .unwrap();
        Self { conn }
    }
    fn commit(&mut self, append: &[(u64, &[u8])], delete: &[u64]) {
        let txn = self.conn.transaction().unwrap();
        {
            let mut ins = txn
                .prepare_cached(
                    "INSERT OR REPLACE INTO messages(id, queue, body) VALUES (?1, ?2, ?3)",
                )
                .unwrap();
            for (id, bytes) in append {
                ins.execute(rusqlite::params![*id as i64, QUEUE, bytes])
                    .unwrap();
            }
            let mut del = txn
                .prepare_cached("DELETE FROM messages WHERE id = ?1")
                .unwrap();
            for id in delete {
                del.execute([*id as i64]).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    fn read_all(&mut self) -> (u64, u64) {
        let mut st = self
            .conn
            .prepare("SELECT id, queue, body FROM messages ORDER BY id")
            .unwrap();
        let mut out: Vec<(u64, String, Vec<u8>)> = Vec::new();
        let mut rows = st.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            out.push((
                r.get::<_, i64>(0).unwrap() as u64,
                r.get(1).unwrap(),
                r.get(2).unwrap(),
            ));
        }
        let bytes = out.iter().map(|(_, _, b)| b.len() as u64).sum();
        (out.len() as u64, bytes)
    }
    fn files(path: &Path) -> Vec<PathBuf> {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let mut shm = path.as_os_str().to_owned();
        shm.push("-shm");
        vec![path.to_path_buf(), wal.into(), shm.into()]
    }
}

fn size_of(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn drop_caches() -> bool {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc_sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}

unsafe extern "C" {
    #[link_name = "sync"]
    fn libc_sync();
}

/// One child: runs every case for engine `E` and prints `key\tvalue` lines.
fn run<E: Engine>(dir: &Path, only_append: bool) {
    let mut out = std::io::stdout().lock();
    let mut emit = |k: &str, v: f64| writeln!(out, "{k}\t{v}").unwrap();
    let mut n = 0;
    let mut fresh = || {
        n += 1;
        dir.join(format!("db{n}"))
    };

    if !only_append {
        // RSS in a steady state first, before the big cases inflate the
        // high-water mark: depth 1000, batches of 16 x 64 B, for CASE_TIME.
        let base = status_kb("VmRSS:");
        let p = fresh();
        let mut e = E::open(&p);
        let body = vec![7u8; 64];
        let mut next = 0u64;
        let mut head = 0u64;
        let batch: Vec<(u64, &[u8])> = (0..1000).map(|i| (i, &body[..])).collect();
        e.commit(&batch, &[]);
        next += 1000;
        let t0 = Instant::now();
        while t0.elapsed() < CASE_TIME {
            let app: Vec<(u64, &[u8])> = (next..next + 16).map(|i| (i, &body[..])).collect();
            let del: Vec<u64> = (head..head + 16).collect();
            e.commit(&app, &del);
            next += 16;
            head += 16;
        }
        emit("rss_base_kb", base as f64);
        emit("rss_steady_kb", status_kb("VmRSS:") as f64);
        emit("rss_hwm_kb", status_kb("VmHWM:") as f64);
        drop(e);
    }

    // Append: batch x size, one durable commit per batch.
    for size in [64usize, 4096] {
        let body = vec![0xabu8; size];
        for batch in [1usize, 16, 256] {
            let p = fresh();
            let mut e = E::open(&p);
            let mut next = 0u64;
            let mut commits = 0u64;
            let t0 = Instant::now();
            while t0.elapsed() < CASE_TIME {
                let b: Vec<(u64, &[u8])> = (next..next + batch as u64)
                    .map(|i| (i, &body[..]))
                    .collect();
                e.commit(&b, &[]);
                next += batch as u64;
                commits += 1;
            }
            let s = t0.elapsed().as_secs_f64();
            emit(&format!("append_b{batch}_s{size}_commits"), commits as f64 / s);
            emit(&format!("append_b{batch}_s{size}_msgs"), next as f64 / s);
            drop(e);
            let _ = std::fs::remove_file(&p);
        }
    }
    if only_append {
        return;
    }

    // Recovery: 100k stored messages, reopen, read all in FIFO order.
    for size in [64usize, 4096] {
        let body = vec![0x5au8; size];
        let p = fresh();
        {
            let mut e = E::open(&p);
            for chunk in (0..100_000u64).collect::<Vec<_>>().chunks(10_000) {
                let b: Vec<(u64, &[u8])> = chunk.iter().map(|&i| (i, &body[..])).collect();
                e.commit(&b, &[]);
            }
        }
        let cold = drop_caches();
        let t0 = Instant::now();
        let mut e = E::open(&p);
        let (n, bytes) = e.read_all();
        let s = t0.elapsed().as_secs_f64();
        assert_eq!(n, 100_000);
        assert_eq!(bytes, 100_000 * size as u64);
        emit(&format!("recover_s{size}_ms"), s * 1e3);
        emit("recover_cold", if cold { 1.0 } else { 0.0 });
        emit(
            &format!("recover_s{size}_file_mb"),
            size_of(&E::files(&p)) as f64 / 1e6,
        );
        drop(e);
        for f in E::files(&p) {
            let _ = std::fs::remove_file(f);
        }

        // The same after a crash: the writer exits without closing the
        // store (no destructors), as after SIGKILL.
        let p = fresh();
        let engine = std::env::args().nth(2).unwrap();
        let st = Command::new(std::env::args().next().unwrap())
            .args(["--populate", &engine])
            .arg(&p)
            .arg(size.to_string())
            .status()
            .unwrap();
        assert!(st.success());
        let cold = drop_caches();
        let t0 = Instant::now();
        let mut e = E::open(&p);
        let (n, _) = e.read_all();
        let s = t0.elapsed().as_secs_f64();
        assert_eq!(n, 100_000);
        emit(&format!("crash_recover_s{size}_ms"), s * 1e3);
        emit("recover_cold", if cold { 1.0 } else { 0.0 });
        drop(e);
        for f in E::files(&p) {
            let _ = std::fs::remove_file(f);
        }
    }

    // Delete-on-ack: 64 B messages stored, delete in batches, durable commit each.
    for batch in [1usize, 16, 256] {
        let body = vec![1u8; 64];
        let p = fresh();
        let mut e = E::open(&p);
        let total = 200_000u64;
        for chunk in (0..total).collect::<Vec<_>>().chunks(10_000) {
            let b: Vec<(u64, &[u8])> = chunk.iter().map(|&i| (i, &body[..])).collect();
            e.commit(&b, &[]);
        }
        let mut head = 0u64;
        let mut commits = 0u64;
        let t0 = Instant::now();
        while t0.elapsed() < CASE_TIME && head + batch as u64 <= total {
            let d: Vec<u64> = (head..head + batch as u64).collect();
            e.commit(&[], &d);
            head += batch as u64;
            commits += 1;
        }
        let s = t0.elapsed().as_secs_f64();
        emit(&format!("delete_b{batch}_commits"), commits as f64 / s);
        emit(&format!("delete_b{batch}_msgs"), head as f64 / s);
        drop(e);
        for f in E::files(&p) {
            let _ = std::fs::remove_file(f);
        }
    }

    // Mixed steady state: each commit appends `batch` and deletes the oldest
    // `batch` (queue depth 1000).
    for (batch, size) in [(1usize, 64usize), (16, 64), (16, 4096), (256, 4096)] {
        let body = vec![2u8; size];
        let p = fresh();
        let mut e = E::open(&p);
        let b: Vec<(u64, &[u8])> = (0..1000u64).map(|i| (i, &body[..])).collect();
        e.commit(&b, &[]);
        let (mut next, mut head, mut commits) = (1000u64, 0u64, 0u64);
        let t0 = Instant::now();
        while t0.elapsed() < CASE_TIME {
            let app: Vec<(u64, &[u8])> = (next..next + batch as u64)
                .map(|i| (i, &body[..]))
                .collect();
            let del: Vec<u64> = (head..head + batch as u64).collect();
            e.commit(&app, &del);
            next += batch as u64;
            head += batch as u64;
            commits += 1;
        }
        let s = t0.elapsed().as_secs_f64();
        emit(&format!("mixed_b{batch}_s{size}_commits"), commits as f64 / s);
        emit(&format!("mixed_b{batch}_s{size}_msgs"), head as f64 / s);
        drop(e);
        for f in E::files(&p) {
            let _ = std::fs::remove_file(f);
        }
    }

    // Space reuse: N appends + N deletes through a queue of depth 1000, in
    // commits of 256 appends + 256 deletes; file size live and after close.
    for (total, size) in [(1_000_000u64, 64usize), (100_000, 4096)] {
        let body = vec![3u8; size];
        let p = fresh();
        let mut e = E::open(&p);
        let b: Vec<(u64, &[u8])> = (0..1000u64).map(|i| (i, &body[..])).collect();
        e.commit(&b, &[]);
        let (mut next, mut head) = (1000u64, 0u64);
        let mut max_size = 0u64;
        let t0 = Instant::now();
        while next < total {
            let app: Vec<(u64, &[u8])> = (next..next + 256).map(|i| (i, &body[..])).collect();
            let del: Vec<u64> = (head..head + 256).collect();
            e.commit(&app, &del);
            next += 256;
            head += 256;
            if next % (256 * 64) == 0 {
                max_size = max_size.max(size_of(&E::files(&p)));
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let live = size_of(&E::files(&p));
        drop(e);
        let closed = size_of(&E::files(&p));
        let tag = format!("space_n{total}_s{size}");
        emit(&format!("{tag}_live_mb"), live as f64 / 1e6);
        emit(&format!("{tag}_max_mb"), max_size.max(live) as f64 / 1e6);
        emit(&format!("{tag}_closed_mb"), closed as f64 / 1e6);
        emit(&format!("{tag}_secs"), secs);
        for f in E::files(&p) {
            let _ = std::fs::remove_file(f);
        }
    }
    emit("rss_hwm_end_kb", status_kb("VmHWM:") as f64);
}

const ENGINES: [&str; 4] = ["redb2", "redb5", "sqlite-full", "sqlite-normal"];

/// Writes 100k messages of `size` bytes durably, then exits without
/// closing the store.
fn populate<E: Engine>(path: &Path, size: usize) -> ! {
    let body = vec![0x5au8; size];
    let mut e = E::open(path);
    for chunk in (0..100_000u64).collect::<Vec<_>>().chunks(10_000) {
        let b: Vec<(u64, &[u8])> = chunk.iter().map(|&i| (i, &body[..])).collect();
        e.commit(&b, &[]);
    }
    std::process::exit(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 5 && args[1] == "--populate" {
        let (p, size) = (Path::new(&args[3]), args[4].parse().unwrap());
        match args[2].as_str() {
            "redb2" => populate::<Redb2>(p, size),
            "redb5" => populate::<Redb5>(p, size),
            _ => populate::<Sqlite<true>>(p, size),
        }
    }
    if args.len() >= 3 && args[1] == "--engine" {
        let dir = PathBuf::from(&args[3]);
        // A fourth argument `append` runs the append cases only (for strace).
        let only = args.get(4).is_some_and(|a| a == "append");
        match args[2].as_str() {
            "redb2" => run::<Redb2>(&dir, only),
            "redb5" => run::<Redb5>(&dir, only),
            "sqlite-full" => run::<Sqlite<true>>(&dir, only),
            // The aside: WAL + synchronous=NORMAL is not durable for the
            // last commits on power loss; append cases only.
            "sqlite-normal" => run::<Sqlite<false>>(&dir, true),
            e => panic!("unknown engine {e}"),
        }
        return;
    }

    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let mut results: BTreeMap<&str, BTreeMap<String, f64>> = BTreeMap::new();
    let t0 = Instant::now();
    for engine in ENGINES {
        let dir = tempfile::tempdir_in(&base).unwrap();
        eprintln!("running {engine} in {}", dir.path().display());
        let out = Command::new(&args[0])
            .args(["--engine", engine])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = results.entry(engine).or_default();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let (k, v) = line.split_once('\t').unwrap();
            m.insert(k.to_string(), v.parse().unwrap());
        }
    }
    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
    report(&results);
}

fn report(r: &BTreeMap<&str, BTreeMap<String, f64>>) {
    let get = |e: &str, k: &str| r.get(e).and_then(|m| m.get(k)).copied();
    let fmt = |v: Option<f64>| match v {
        None => "–".to_string(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    };
    println!(
        "| case | unit | redb 2.6 | redb 5.0 | SQLite FULL | redb2 ÷ sqlite | redb5 ÷ sqlite | SQLite NORMAL (not durable) |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|");
    let row = |label: String, unit: &str, key: String, higher_better: bool| {
        let (a, b, c, d) = (
            get("redb2", &key),
            get("redb5", &key),
            get("sqlite-full", &key),
            get("sqlite-normal", &key),
        );
        let _ = higher_better;
        println!(
            "| {label} | {unit} | {} | {} | {} | {} | {} | {} |",
            fmt(a),
            fmt(b),
            fmt(c),
            ratio(a, c),
            ratio(b, c),
            fmt(d)
        );
    };
    for size in [64, 4096] {
        for batch in [1, 16, 256] {
            row(
                format!("append {batch} × {size} B"),
                "commits/s",
                format!("append_b{batch}_s{size}_commits"),
                true,
            );
            row(
                format!("append {batch} × {size} B"),
                "msgs/s",
                format!("append_b{batch}_s{size}_msgs"),
                true,
            );
        }
    }
    for size in [64, 4096] {
        row(
            format!("recovery: open + FIFO read 100k × {size} B"),
            "ms",
            format!("recover_s{size}_ms"),
            false,
        );
        row(
            format!("recovery after a crash (not closed), 100k × {size} B"),
            "ms",
            format!("crash_recover_s{size}_ms"),
            false,
        );
        row(
            format!("  file size, 100k × {size} B"),
            "MB",
            format!("recover_s{size}_file_mb"),
            false,
        );
    }
    for batch in [1, 16, 256] {
        row(
            format!("delete {batch} per commit"),
            "commits/s",
            format!("delete_b{batch}_commits"),
            true,
        );
        row(
            format!("delete {batch} per commit"),
            "msgs/s",
            format!("delete_b{batch}_msgs"),
            true,
        );
    }
    for (batch, size) in [(1, 64), (16, 64), (16, 4096), (256, 4096)] {
        row(
            format!("mixed +{batch}/−{batch} × {size} B"),
            "commits/s",
            format!("mixed_b{batch}_s{size}_commits"),
            true,
        );
        row(
            format!("mixed +{batch}/−{batch} × {size} B"),
            "msgs/s",
            format!("mixed_b{batch}_s{size}_msgs"),
            true,
        );
    }
    for (total, size) in [(1_000_000, 64), (100_000, 4096)] {
        let tag = format!("space_n{total}_s{size}");
        row(
            format!("space: {total} × {size} B through depth 1000, live"),
            "MB",
            format!("{tag}_live_mb"),
            false,
        );
        row(
            format!("space: {total} × {size} B, peak while running"),
            "MB",
            format!("{tag}_max_mb"),
            false,
        );
        row(
            format!("space: {total} × {size} B, after close"),
            "MB",
            format!("{tag}_closed_mb"),
            false,
        );
        row(
            format!("space: {total} × {size} B, run time"),
            "s",
            format!("{tag}_secs"),
            false,
        );
    }
    row(
        "RSS: process baseline".into(),
        "KiB",
        "rss_base_kb".into(),
        false,
    );
    row(
        "RSS: steady state (depth 1000, +16/−16 × 64 B)".into(),
        "KiB",
        "rss_steady_kb".into(),
        false,
    );
    row(
        "RSS: high-water after steady state".into(),
        "KiB",
        "rss_hwm_kb".into(),
        false,
    );
    row(
        "RSS: high-water after all cases".into(),
        "KiB",
        "rss_hwm_end_kb".into(),
        false,
    );
    let cold = get("redb2", "recover_cold") == Some(1.0);
    println!(
        "\nRecovery reads were {}.",
        if cold {
            "cold (page cache dropped before open)"
        } else {
            "warm (the page cache could not be dropped)"
        }
    );
}
