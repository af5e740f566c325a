//! Round trips, group commit and the lock.

mod common;

use std::time::Duration;

use common::{DEADLINE, TempDir, appends, commit, ids, wait};
use drover_store::{Batch, Store, StoreError};

#[test]
fn round_trip_keeps_order_attempts_deletes_and_drops() {
    let dir = TempDir::new("roundtrip");
    let (mut store, rec) = Store::open(dir.path()).unwrap();
    assert!(rec.queues.is_empty());
    assert_eq!(rec.next_id, 0);

    // Interleaved ids over two queues, in several batches.
    commit(&mut store, appends("a", [0, 2, 4])).unwrap();
    commit(&mut store, appends("b", [1, 3])).unwrap();
    let mut b = appends("a", [5, 6]);
    b.append.push(("c".into(), 7, vec![0, 255, 1]));
    b.attempts.push(("a".into(), 2, 3));
    b.attempts.push(("a".into(), 99, 1)); // not stored: ignored
    b.delete.push(("a".into(), 4));
    b.delete.push(("b".into(), 1000)); // not stored: no error
    commit(&mut store, b).unwrap();
    store.close(DEADLINE).unwrap();

    let (mut store, rec) = Store::open(dir.path()).unwrap();
    assert_eq!(ids(&rec, "a"), [0, 2, 5, 6]);
    assert_eq!(ids(&rec, "b"), [1, 3]);
    assert_eq!(ids(&rec, "c"), [7]);
    assert_eq!(rec.next_id, 8);
    let a = &rec.queues["a"];
    assert_eq!(a[0].bytes, b"a:0");
    assert_eq!(a[1].attempts, 3);
    assert_eq!(a[0].attempts, 0);
    assert_eq!(rec.queues["c"][0].bytes, [0, 255, 1]);

    // drop_queue, and a delete of the highest id: next_id stays above it.
    let b = Batch {
        drop_queue: vec!["a".into()],
        delete: vec![("c".into(), 7)],
        ..Batch::default()
    };
    commit(&mut store, b).unwrap();
    let rest = store.close(DEADLINE).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    let (store, rec) = Store::open(dir.path()).unwrap();
    assert_eq!(rec.queues.keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(ids(&rec, "b"), [1, 3]);
    assert_eq!(
        rec.next_id, 8,
        "next_id must not go back when the top id is acked"
    );
    store.close(DEADLINE).unwrap();
}

#[test]
fn resubmitting_a_batch_is_idempotent() {
    let dir = TempDir::new("idem");
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let mut b = appends("q", 0..10);
    b.delete.push(("q".into(), 3));
    commit(&mut store, b.clone()).unwrap();
    commit(
        &mut store,
        Batch {
            attempts: vec![("q".into(), 5, 2)],
            ..Batch::default()
        },
    )
    .unwrap();
    // The same batch again (as after a failed ticket): 5 keeps its attempt
    // count, 3 is appended and deleted again.
    commit(&mut store, b).unwrap();
    store.close(DEADLINE).unwrap();
    let (store, rec) = Store::open(dir.path()).unwrap();
    assert_eq!(ids(&rec, "q"), [0, 1, 2, 4, 5, 6, 7, 8, 9]);
    assert_eq!(rec.queues["q"][4].attempts, 2);
    store.close(DEADLINE).unwrap();
}

#[test]
fn group_commit_coalesces_queued_batches() {
    let dir = TempDir::new("group");
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let mut tickets = Vec::new();
    {
        // Hold the thread before it collects: everything submitted now is
        // waiting when it looks.
        let _held = store.pause();
        for i in 0..100 {
            tickets.push(store.submit(appends("q", [i])));
        }
    }
    let done = wait(&mut store, &tickets);
    assert!(done.values().all(Result::is_ok), "{done:?}");
    let stats = store.stats();
    assert_eq!(stats.batches, 100);
    assert_eq!(stats.transactions, 1, "{stats:?}");

    // Without holding: still never more transactions than batches, and the
    // completions come in ticket order.
    let tickets: Vec<_> = (100..1100)
        .map(|i| store.submit(appends("q", [i])))
        .collect();
    let done = wait(&mut store, &tickets);
    assert_eq!(done.keys().copied().collect::<Vec<_>>(), tickets);
    let stats = store.stats();
    assert_eq!(stats.batches, 1100);
    assert!(stats.transactions < 1100, "{stats:?}");
    eprintln!(
        "1000 batches unheld took {} transactions",
        stats.transactions - 1
    );
    store.close(DEADLINE).unwrap();
    let (store, rec) = Store::open(dir.path()).unwrap();
    assert_eq!(ids(&rec, "q"), (0..1100).collect::<Vec<_>>());
    store.close(DEADLINE).unwrap();
}

#[test]
fn completions_arrive_through_the_eventfd_only_when_done() {
    let dir = TempDir::new("notify");
    let (mut store, _) = Store::open(dir.path()).unwrap();
    // Nothing submitted: nothing to read, and the fd is not readable.
    assert!(store.completions().is_empty());
    let mut fds = [nix::poll::PollFd::new(
        store.notify_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    assert_eq!(
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap(),
        0
    );
    let t = store.submit(appends("q", [0]));
    assert!(wait(&mut store, &[t])[&t].is_ok());
    store.close(DEADLINE).unwrap();
}

#[test]
fn a_second_open_names_the_holder_and_the_lock_goes_with_close() {
    let dir = TempDir::new("lock");
    let (store, _) = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    match &err {
        StoreError::Locked { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
        e => panic!("expected Locked, got {e:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("PID {}", std::process::id())),
        "{text}"
    );
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    store.close(DEADLINE).unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    store.close(Duration::from_secs(30)).unwrap();
}

#[test]
fn a_stale_lock_file_of_a_dead_process_is_taken_over() {
    let dir = TempDir::new("stale");
    // A lock file with a PID that holds no flock (as left by a SIGKILLed drover).
    std::fs::write(dir.path().join(drover_store::LOCK_FILE), "999999999\n").unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let text = std::fs::read_to_string(dir.path().join(drover_store::LOCK_FILE)).unwrap();
    assert_eq!(text.trim(), std::process::id().to_string());
    store.close(DEADLINE).unwrap();
}

#[test]
fn an_id_out_of_range_fails_its_ticket_and_the_store_goes_on() {
    let dir = TempDir::new("range");
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let err = commit(&mut store, appends("q", [u64::MAX])).unwrap_err();
    assert_eq!(err, StoreError::IdOutOfRange { id: u64::MAX });
    commit(&mut store, appends("q", [1])).unwrap();
    store.close(DEADLINE).unwrap();
    let (store, rec) = Store::open(dir.path()).unwrap();
    assert_eq!(ids(&rec, "q"), [1]);
    store.close(DEADLINE).unwrap();
}

#[test]
fn close_commits_what_was_submitted_and_returns_its_completions() {
    let dir = TempDir::new("close");
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let tickets: Vec<_> = (0..50).map(|i| store.submit(appends("q", [i]))).collect();
    let rest = store.close(DEADLINE).unwrap();
    // Whatever completions() had not collected come back from close, in order.
    assert_eq!(rest.iter().map(|(t, _)| *t).collect::<Vec<_>>(), tickets);
    assert!(rest.iter().all(|(_, r)| r.is_ok()), "{rest:?}");
    let (store, rec) = Store::open(dir.path()).unwrap();
    assert_eq!(ids(&rec, "q"), (0..50).collect::<Vec<_>>());
    store.close(DEADLINE).unwrap();
}

/// A batch's `before` runs on the store thread, and the batch is committed
/// only once it returns: what it waits for (dead-letter records of the
/// messages the batch deletes) happens first, whatever the thread timing.
#[test]
fn a_batch_is_committed_only_after_its_before_returns() {
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};

    let dir = TempDir::new("before");
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let (called_tx, called) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let called_tx = Mutex::new(called_tx);
    let released = Mutex::new(released);
    let before = drover_store::Before(Arc::new(move || {
        let _ = called_tx.lock().unwrap().send(());
        let _ = released.lock().unwrap().recv();
    }));
    let ticket = store.submit(Batch {
        before: Some(before),
        ..appends("q", 0..3)
    });
    called.recv_timeout(DEADLINE).expect("before is called");
    assert!(
        store.completions().is_empty(),
        "committed while its before had not returned"
    );
    release.send(()).unwrap();
    let done = wait(&mut store, &[ticket]);
    assert!(done[&ticket].is_ok(), "{done:?}");
    store.close(DEADLINE).unwrap();
    let (store, rec) = Store::open(dir.path()).unwrap();
    assert_eq!(ids(&rec, "q"), [0, 1, 2]);
    store.close(DEADLINE).unwrap();
}
