//! Helpers shared by the store's tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use drover_store::{Batch, Store, StoreError, Ticket};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Generous: a loaded CI machine may take long, a hang must still fail.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A fresh directory under the temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "drover-store-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls the store's eventfd, as the supervisor's loop does, until every
/// ticket in `want` has completed; panics after DEADLINE.
pub fn wait(store: &mut Store, want: &[Ticket]) -> BTreeMap<Ticket, Result<(), StoreError>> {
    let start = Instant::now();
    let mut got = BTreeMap::new();
    while !want.iter().all(|t| got.contains_key(t)) {
        let left = DEADLINE.saturating_sub(start.elapsed());
        assert!(
            !left.is_zero(),
            "tickets {want:?} not completed within {DEADLINE:?}; got {got:?}"
        );
        let mut fds = [PollFd::new(store.notify_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let n = poll(&mut fds, PollTimeout::from(ms)).unwrap();
        if n == 0 {
            continue;
        }
        for (t, r) in store.completions() {
            got.insert(t, r);
        }
    }
    got
}

/// Submits `batch` and waits for its result.
pub fn commit(store: &mut Store, batch: Batch) -> Result<(), StoreError> {
    let t = store.submit(batch);
    wait(store, &[t]).remove(&t).unwrap()
}

/// A batch appending `ids` to `queue`, each message "queue:id".
pub fn appends(queue: &str, ids: impl IntoIterator<Item = u64>) -> Batch {
    Batch {
        append: ids
            .into_iter()
            .map(|i| (queue.to_string(), i, format!("{queue}:{i}").into_bytes()))
            .collect(),
        ..Batch::default()
    }
}

/// The ids stored for `queue` in a recovery.
pub fn ids(rec: &drover_store::Recovered, queue: &str) -> Vec<u64> {
    rec.queues
        .get(queue)
        .map(|v| v.iter().map(|m| m.id).collect())
        .unwrap_or_default()
}
