//! The SQLite side: schema, settings, recovery and applying a group of
//! batches as one transaction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, params};

use crate::{Batch, Recovered, StoreError, StoredMessage};

/// The name of the store file in the state directory.
pub const STORE_FILE: &str = "queues.sqlite";

/// `PRAGMA application_id`: "drvq".
const APPLICATION_ID: i32 = 0x6472_7671;
/// `PRAGMA user_version`: the schema this code writes.
const SCHEMA_VERSION: i32 = 1;

/// An open store file.
#[derive(Debug)]
pub(crate) struct Db {
    conn: Connection,
    path: PathBuf,
}

impl Db {
    /// Opens (creating if need be) the store file in `dir`, checks it and
    /// reads the first `page` messages of each queue and how many each has.
    pub(crate) fn open(dir: &Path, page: usize) -> Result<(Db, Recovered), StoreError> {
        let path = dir.join(STORE_FILE);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // Open it ourselves first: SQLite silently falls back to read-only
        // when the file is not writable, and reports errno poorly.
        crate::error::open_rw(&path)?;
        let conn = Connection::open_with_flags(&path, flags)
            .map_err(|e| StoreError::sqlite("opening", &path, &e, 0))?;
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Err(StoreError::PermissionDenied {
                path,
                detail: "SQLite could open it read-only only".into(),
            });
        }
        let db = Db { conn, path };
        db.setup()?;
        let recovered = db.recover(page)?;
        Ok((db, recovered))
    }

    /// The store file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Maps a SQLite error of this connection.
    fn err(&self, op: &'static str, e: &rusqlite::Error) -> StoreError {
        // SAFETY: `handle` is this live connection's pointer, used only for
        // the duration of this call on the thread that owns the connection;
        // sqlite3_system_errno only reads the connection's last errno.
        let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(self.conn.handle()) };
        StoreError::sqlite(op, &self.path, e, errno)
    }

    fn setup(&self) -> Result<(), StoreError> {
        let c = &self.conn;
        // Durability: WAL with synchronous=FULL fsyncs the WAL at every
        // commit (NORMAL would not, and could lose the last commits on
        // power loss). EXCLUSIVE locking: one process only (we hold our own
        // lock anyway), and the WAL index lives in our memory, not in a
        // -shm file. The cache is small: RSS matters more than speed here.
        c.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA cache_size = -2048;
             PRAGMA journal_size_limit = 4194304;",
        )
        .map_err(|e| self.err("opening", &e))?;
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| self.err("opening", &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Io {
                op: "opening",
                path: self.path.clone(),
                detail: format!("could not switch to WAL mode (journal_mode is {mode})"),
            });
        }
        let (app, version): (i32, i32) = c
            .query_row(
                "SELECT * FROM pragma_application_id, pragma_user_version",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err("reading", &e))?;
        let tables: i64 = c
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(|e| self.err("reading", &e))?;
        if tables == 0 && app == 0 {
            c.execute_batch(&format!(
                "BEGIN IMMEDIATE;
                 CREATE TABLE messages(
                     id INTEGER PRIMARY KEY,
                     queue TEXT NOT NULL,
                     attempts INTEGER NOT NULL DEFAULT 0,
                     body BLOB NOT NULL);
                 CREATE INDEX messages_by_queue ON messages(queue, id);
                 CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 PRAGMA application_id = {APPLICATION_ID};
                 PRAGMA user_version = {SCHEMA_VERSION};
                 COMMIT;"
            ))
            .map_err(|e| {
                let err = self.err("creating", &e);
                let _ = self.conn.execute_batch("ROLLBACK");
                err
            })?;
            return Ok(());
        }
        if app != APPLICATION_ID {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("not a drover queue store (application_id {app:#x})"),
            });
        }
        if version != SCHEMA_VERSION {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!(
                    "schema version {version}, this drover reads version {SCHEMA_VERSION}"
                ),
            });
        }
        Ok(())
    }

    /// Checks the file, counts each queue's messages and reads the first
    /// `page` of each, by id.
    fn recover(&self, page: usize) -> Result<Recovered, StoreError> {
        let c = &self.conn;
        let check: Vec<String> = {
            let mut st = c
                .prepare("PRAGMA quick_check(5)")
                .map_err(|e| self.err("checking", &e))?;
            st.query_map([], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(|e| self.err("checking", &e))?
        };
        if check.first().map(String::as_str) != Some("ok") {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: check.join("; ").replace('\n', "; "),
            });
        }
        let mut stored = BTreeMap::new();
        {
            let mut st = c
                .prepare("SELECT queue, count(*) FROM messages GROUP BY queue")
                .map_err(|e| self.err("reading", &e))?;
            let mut rows = st.query([]).map_err(|e| self.err("reading", &e))?;
            while let Some(r) = rows.next().map_err(|e| self.err("reading", &e))? {
                let read = || -> rusqlite::Result<(String, i64)> { Ok((r.get(0)?, r.get(1)?)) };
                let (queue, n) = read().map_err(|e| self.err("reading", &e))?;
                stored.insert(queue, u64::try_from(n).unwrap_or(0));
            }
        }
        let mut queues = BTreeMap::new();
        for queue in stored.keys() {
            queues.insert(queue.clone(), self.load(queue, None, page)?);
        }
        let max: Option<i64> = c
            .query_row("SELECT max(id) FROM messages", [], |r| r.get(0))
            .map_err(|e| self.err("reading", &e))?;
        let mut next_id = max.and_then(|m| u64::try_from(m).ok()).map_or(0, |m| m + 1);
        let kept: Option<i64> = c
            .query_row("SELECT value FROM meta WHERE key = 'next_id'", [], |r| {
                r.get(0)
            })
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(|e| self.err("reading", &e))?;
        if let Some(n) = kept.and_then(|n| u64::try_from(n).ok()) {
            next_id = next_id.max(n);
        }
        Ok(Recovered {
            queues,
            stored,
            next_id,
        })
    }

    /// The messages of `queue` with an id above `after` (all of them with
    /// `None`), by id, at most `limit`.
    pub(crate) fn load(
        &self,
        queue: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let after = after.map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, attempts, body FROM messages
                 WHERE queue = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )
            .map_err(|e| self.err("reading", &e))?;
        let mut rows = st
            .query(params![queue, after, limit])
            .map_err(|e| self.err("reading", &e))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(|e| self.err("reading", &e))? {
            let read = || -> rusqlite::Result<(i64, i64, Vec<u8>)> {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            };
            let (id, attempts, bytes) = read().map_err(|e| self.err("reading", &e))?;
            let (Ok(id), Ok(attempts)) = (u64::try_from(id), u32::try_from(attempts)) else {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("message {id} has an invalid id or attempt count"),
                });
            };
            out.push(StoredMessage {
                id,
                bytes,
                attempts,
            });
        }
        Ok(out)
    }

    /// Applies `batches` in order as one transaction and commits it
    /// (one fsync of the WAL). On error everything is rolled back.
    pub(crate) fn commit(&mut self, batches: &[&Batch]) -> Result<(), StoreError> {
        let result = self.try_commit(batches);
        if result.is_err() {
            self.rollback();
        }
        result
    }

    /// Ends a transaction left open by a failure (a failed COMMIT, after
    /// SQLITE_FULL or an fsync error, can leave it open; so can a panic),
    /// so that the next commit starts clean.
    pub(crate) fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    fn try_commit(&mut self, batches: &[&Batch]) -> Result<(), StoreError> {
        let id = |id: u64| i64::try_from(id).map_err(|_| StoreError::IdOutOfRange { id });
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err("committing to", &e))?;
        let mut max_appended: Option<u64> = None;
        for b in batches {
            {
                let mut ins = self
                    .conn
                    .prepare_cached(
                        "INSERT INTO messages(id, queue, body) VALUES (?1, ?2, ?3)
                         ON CONFLICT(id) DO UPDATE SET queue = excluded.queue, body = excluded.body",
                    )
                    .map_err(|e| self.err("committing to", &e))?;
                for (queue, i, bytes) in &b.append {
                    ins.execute(params![id(*i)?, queue, bytes])
                        .map_err(|e| self.err("committing to", &e))?;
                    max_appended = Some(max_appended.map_or(*i, |m| m.max(*i)));
                }
            }
            {
                let mut upd = self
                    .conn
                    .prepare_cached(
                        "UPDATE messages SET attempts = ?3 WHERE id = ?1 AND queue = ?2",
                    )
                    .map_err(|e| self.err("committing to", &e))?;
                for (queue, i, attempts) in &b.attempts {
                    upd.execute(params![id(*i)?, queue, attempts])
                        .map_err(|e| self.err("committing to", &e))?;
                }
            }
            {
                let mut del = self
                    .conn
                    .prepare_cached("DELETE FROM messages WHERE id = ?1 AND queue = ?2")
                    .map_err(|e| self.err("committing to", &e))?;
                for (queue, i) in &b.delete {
                    del.execute(params![id(*i)?, queue])
                        .map_err(|e| self.err("committing to", &e))?;
                }
            }
            for queue in &b.drop_queue {
                self.conn
                    .prepare_cached("DELETE FROM messages WHERE queue = ?1")
                    .and_then(|mut st| st.execute([queue]))
                    .map_err(|e| self.err("committing to", &e))?;
            }
        }
        if let Some(max) = max_appended {
            let next = id(max)?.saturating_add(1);
            self.conn
                .prepare_cached(
                    "INSERT INTO meta(key, value) VALUES ('next_id', ?1)
                     ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                )
                .and_then(|mut st| st.execute([next]))
                .map_err(|e| self.err("committing to", &e))?;
        }
        self.conn
            .execute_batch("COMMIT")
            .map_err(|e| self.err("committing to", &e))
    }

    /// Checkpoints the WAL into the main file (at close; errors are
    /// harmless: the WAL is replayed at the next open).
    pub(crate) fn checkpoint(&self) {
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    }
}
