//! Durable queues: the broker with a real store in a temporary state
//! directory, driven turn by turn as the event loop drives it.

use std::time::Instant;

use super::*;

/// The loop's token for the store's eventfd in these tests.
const STORE_TOKEN: u64 = 9_999;

fn durable_spec(name: &str) -> QueueSpec {
    QueueSpec {
        durable: true,
        capacity: 5_000,
        ..spec(name)
    }
}

/// A broker on `state` with `specs`, its store open.
fn open(state: &State, specs: Vec<QueueSpec>) -> (Broker, Epoll) {
    let config = config_of(specs, state.0.clone());
    let mut broker = Broker::new(&config);
    let epoll = epoll();
    broker
        .open_store(&config, &state.0, &epoll, STORE_TOKEN)
        .unwrap();
    (broker, epoll)
}

/// Ends `broker` as a crash would, except that what was submitted is
/// committed and the lock released before this returns (a real SIGKILL
/// is in tests/durable.rs): no final turn, no leftovers report.
fn crash(mut broker: Broker) {
    let d = broker.durable.take().unwrap();
    d.store.close(Duration::from_secs(30)).unwrap();
}

/// One loop turn: waits up to `ms` for events, hands them over, ends the
/// turn (which submits its batch). Returns how many events there were.
fn turn(broker: &mut Broker, epoll: &Epoll, ms: u16) -> usize {
    let mut events = [nix::sys::epoll::EpollEvent::empty(); 16];
    let n = epoll.wait(&mut events, ms).unwrap();
    for e in &events[..n] {
        match e.data() {
            STORE_TOKEN => broker.on_store(epoll),
            t => broker.on_event(epoll, t, e.events()),
        }
    }
    broker.end_turn();
    n
}

/// Runs turns until `done` holds (30 s at most).
fn run_until(
    broker: &mut Broker,
    epoll: &Epoll,
    what: &str,
    mut done: impl FnMut(&mut Broker) -> bool,
) {
    // The turn in which the test acted ends first, as in the loop.
    broker.end_turn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(broker) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        turn(broker, epoll, 100);
    }
}

fn jobs_status(broker: &Broker) -> QueueStatus {
    status(&broker.status(), "jobs", false).clone()
}

/// Everything the consumer `child` gets until `n` messages came, acking
/// each when `ack`.
fn consume(
    broker: &mut Broker,
    epoll: &Epoll,
    child: &UnixStream,
    n: usize,
    ack: bool,
) -> Vec<String> {
    let mut got = Vec::new();
    run_until(broker, epoll, "messages for the consumer", |_| {
        while let Some(m) = recv(child) {
            got.push(String::from_utf8(m).unwrap());
            if ack {
                send(child, b"ack");
            }
        }
        got.len() >= n
    });
    broker.end_turn();
    got
}

/// Sends `messages` from a producer with confirms and waits for their `ok`s.
fn produce(broker: &mut Broker, epoll: &Epoll, child: &UnixStream, messages: &[String]) {
    for m in messages {
        send(child, m.as_bytes());
    }
    let mut oks = Vec::new();
    run_until(broker, epoll, "the producer's confirms", |_| {
        oks.extend(replies(child));
        oks.len() >= messages.len()
    });
    assert!(oks.iter().all(|r| r == "ok"), "{oks:?}");
}

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

#[test]
fn ok_and_delivery_wait_for_the_commit() {
    let state = State::new("durable-gate");
    let (mut broker, epoll) = open(&state, vec![durable_spec("jobs")]);
    let producer = confirmed_producer(&mut broker, &epoll);
    let consumer = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
    // Hold the store thread: the batch is submitted but not committed.
    let paused = broker.durable.as_ref().unwrap().store.pause();
    for m in ["a", "b", "c"] {
        send(&producer, m.as_bytes());
    }
    assert_eq!(pump(&mut broker, &epoll), 1);
    broker.end_turn();
    assert_eq!(
        replies(&producer),
        Vec::<String>::new(),
        "ok before the commit"
    );
    assert_eq!(recv(&consumer), None, "delivered before the commit");
    assert_eq!(jobs_status(&broker).depth, 3, "staged messages count");
    drop(paused);
    let mut oks = Vec::new();
    run_until(&mut broker, &epoll, "the oks", |_| {
        oks.extend(replies(&producer));
        oks.len() >= 3
    });
    assert_eq!(oks, ["ok", "ok", "ok"]);
    let got = consume(&mut broker, &epoll, &consumer, 3, true);
    assert_eq!(got, ["a", "b", "c"]);
    run_until(&mut broker, &epoll, "the acks' commit", |b| {
        jobs_status(b).stored == 0
    });
    let s = jobs_status(&broker);
    assert!(s.durable && s.confirmed == 3 && s.acked == 3, "{s:?}");
}

#[test]
fn a_restart_brings_back_what_was_not_acked_in_order_with_its_deliveries() {
    let state = State::new("durable-restart");
    {
        let (mut broker, epoll) = open(&state, vec![durable_spec("jobs")]);
        let producer = confirmed_producer(&mut broker, &epoll);
        produce(&mut broker, &epoll, &producer, &numbered(0..6));
        let consumer = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
        // Prefetch 4: m0..m3 handed out; m0 acked, then m4 handed out.
        let got = consume(&mut broker, &epoll, &consumer, 4, false);
        assert_eq!(got, numbered(0..4));
        send(&consumer, b"ack");
        run_until(&mut broker, &epoll, "the ack's commit", |b| {
            jobs_status(b).stored == 5
        });
        crash(broker);
    }
    let (mut broker, epoll) = open(&state, vec![durable_spec("jobs")]);
    let s = jobs_status(&broker);
    assert_eq!((s.depth, s.stored), (5, 5), "{s:?}");
    let consumer = attach(&mut broker, &epoll, 43, "jobs", Direction::In, 102);
    let got = consume(&mut broker, &epoll, &consumer, 5, true);
    assert_eq!(got, numbered(1..6));
    let s = jobs_status(&broker);
    assert_eq!(s.redelivered, 4, "m1..m4 had one delivery each: {s:?}");
}

/// A consumer of `jobs` that gets the message `poison` and holds it
/// unacked, once its attempt is on disk (the next batch committed).
fn hold_poison(broker: &mut Broker, epoll: &Epoll) -> UnixStream {
    let consumer = attach(broker, epoll, 42, "jobs", Direction::In, 101);
    assert_eq!(consume(broker, epoll, &consumer, 1, false), ["poison"]);
    run_until(broker, epoll, "the attempt's commit", |b| {
        b.durable.as_ref().unwrap().pending.is_empty()
    });
    consumer
}

#[test]
fn max_deliveries_holds_across_restarts() {
    let state = State::new("durable-poison");
    let spec = || QueueSpec {
        max_deliveries: 2,
        ..durable_spec("jobs")
    };
    for round in 0..2 {
        let (mut broker, epoll) = open(&state, vec![spec()]);
        if round == 0 {
            let producer = confirmed_producer(&mut broker, &epoll);
            produce(&mut broker, &epoll, &producer, &["poison".to_string()]);
        }
        let _consumer = hold_poison(&mut broker, &epoll);
        crash(broker);
    }
    let (broker, _epoll) = open(&state, vec![spec()]);
    let s = jobs_status(&broker);
    assert_eq!((s.depth, s.stored, s.dead_lettered), (0, 0, 1), "{s:?}");
    let records = state.records(&broker, "jobs");
    assert_eq!(records.len(), 1);
    assert!(
        records[0]["reason"]
            .as_str()
            .unwrap()
            .contains("delivered 2 times"),
        "{records:?}"
    );
}

/// A durable message that is dead-lettered leaves the store only after
/// its record is written: the batch that deletes it waits for the record
/// writer, so a crash in between finds it still stored (and dead-letters
/// it again), never lost.
#[test]
fn the_store_forgets_a_dead_letter_only_after_its_record_is_written() {
    let state = State::new("durable-record-first");
    let spec = QueueSpec {
        max_deliveries: 1,
        ..durable_spec("jobs")
    };
    let (mut broker, epoll) = open(&state, vec![spec]);
    let producer = confirmed_producer(&mut broker, &epoll);
    produce(&mut broker, &epoll, &producer, &["poison".to_string()]);
    let consumer = hold_poison(&mut broker, &epoll);
    // The disk under the record file does not move.
    let disk = std::sync::Arc::clone(&broker.recorder.disk);
    let stuck = disk.lock().unwrap();
    send(&consumer, b"nack");
    assert_eq!(pump(&mut broker, &epoll), 1);
    broker.end_turn();
    assert_eq!(jobs_status(&broker).dead_lettered, 1);
    let d = broker.durable.as_ref().unwrap();
    let batch = &d.pending.back().expect("the delete is submitted").batch;
    assert!(!batch.delete.is_empty(), "{batch:?}");
    assert!(
        batch.before.is_some(),
        "the delete does not wait for the record"
    );
    drop(stuck);
    run_until(&mut broker, &epoll, "the delete's commit", |b| {
        b.durable.as_ref().unwrap().pending.is_empty()
    });
    assert_eq!(jobs_status(&broker).stored, 0);
    assert_eq!(state.records(&broker, "jobs").len(), 1);
}

#[test]
fn only_a_window_is_held_in_memory_and_the_rest_is_read_back_in_order() {
    let state = State::new("durable-window");
    let all = numbered(0..3 * WINDOW_FOR_TESTS);
    {
        let (mut broker, epoll) = open(&state, vec![durable_spec("jobs")]);
        let producer = confirmed_producer(&mut broker, &epoll);
        for chunk in all.chunks(50) {
            produce(&mut broker, &epoll, &producer, chunk);
        }
        let q = broker.queues.get(&q("jobs")).unwrap();
        assert!(
            q.in_memory() <= WINDOW_FOR_TESTS,
            "{} in memory",
            q.in_memory()
        );
        assert_eq!(jobs_status(&broker).stored, all.len() as u64);
        crash(broker);
    }
    let (mut broker, epoll) = open(&state, vec![durable_spec("jobs")]);
    let q = broker.queues.get(&q("jobs")).unwrap();
    assert_eq!(
        q.in_memory(),
        WINDOW_FOR_TESTS,
        "a restart reads one window"
    );
    assert_eq!(jobs_status(&broker).depth, all.len() as u64);
    let consumer = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
    let got = consume(&mut broker, &epoll, &consumer, all.len(), true);
    assert_eq!(got, all);
    run_until(&mut broker, &epoll, "every ack's commit", |b| {
        jobs_status(b).stored == 0
    });
}

const WINDOW_FOR_TESTS: usize = super::super::queue::WINDOW;

#[test]
fn setting_and_clearing_durable_moves_messages_in_and_out_of_the_store() {
    let state = State::new("durable-toggle");
    let plain = QueueSpec {
        capacity: 5_000,
        ..spec("jobs")
    };
    let (mut broker, epoll) = open(&state, vec![durable_spec("other")]);
    broker.apply(
        &config_of(vec![durable_spec("other"), plain.clone()], state.0.clone()),
        &epoll,
    );
    push(&mut broker, "jobs", &[b"x", b"y", b"z"]);
    broker.apply(
        &config_of(
            vec![durable_spec("other"), durable_spec("jobs")],
            state.0.clone(),
        ),
        &epoll,
    );
    run_until(&mut broker, &epoll, "the move into the store", |b| {
        b.durable.as_ref().unwrap().pending.is_empty()
    });
    assert_eq!(jobs_status(&broker).stored, 3);
    crash(broker);
    // Back after a crash, then made plain again: out of the store, still queued.
    let (mut broker, epoll) = open(&state, vec![durable_spec("other"), durable_spec("jobs")]);
    assert_eq!(
        (jobs_status(&broker).depth, jobs_status(&broker).stored),
        (3, 3)
    );
    broker.apply(
        &config_of(vec![durable_spec("other"), plain], state.0.clone()),
        &epoll,
    );
    run_until(&mut broker, &epoll, "the move out of the store", |b| {
        jobs_status(b).stored == 0 && b.durable.as_ref().unwrap().pending.is_empty()
    });
    assert_eq!(jobs_status(&broker).depth, 3);
    let consumer = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
    assert_eq!(
        consume(&mut broker, &epoll, &consumer, 3, true),
        ["x", "y", "z"]
    );
    crash(broker);
    let (broker, _epoll) = open(&state, vec![durable_spec("other"), durable_spec("jobs")]);
    assert_eq!(jobs_status(&broker).depth, 0, "nothing left in the store");
}

#[test]
fn clearing_durable_reads_back_what_is_only_in_the_store_first() {
    let state = State::new("durable-leave");
    let n = 2 * WINDOW_FOR_TESTS + 10;
    {
        let (mut broker, epoll) = open(&state, vec![durable_spec("jobs")]);
        let producer = confirmed_producer(&mut broker, &epoll);
        for chunk in numbered(0..n).chunks(64) {
            produce(&mut broker, &epoll, &producer, chunk);
        }
        crash(broker);
    }
    let plain = QueueSpec {
        capacity: 5_000,
        ..spec("jobs")
    };
    let (mut broker, epoll) = open(&state, vec![durable_spec("jobs"), durable_spec("other")]);
    broker.apply(
        &config_of(vec![plain, durable_spec("other")], state.0.clone()),
        &epoll,
    );
    // New messages while the store is read back go after the stored ones.
    let producer = confirmed_producer(&mut broker, &epoll);
    produce(&mut broker, &epoll, &producer, &["late".to_string()]);
    run_until(&mut broker, &epoll, "the read back", |b| {
        jobs_status(b).stored == 0 && b.durable.as_ref().unwrap().pending.is_empty()
    });
    let consumer = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
    let got = consume(&mut broker, &epoll, &consumer, n + 1, true);
    let mut want = numbered(0..n);
    want.push("late".into());
    assert_eq!(got, want);
}

#[test]
fn a_stored_queue_missing_from_the_config_is_kept_until_it_returns() {
    let state = State::new("durable-unconfigured");
    {
        let (mut broker, epoll) = open(&state, vec![durable_spec("jobs")]);
        let producer = confirmed_producer(&mut broker, &epoll);
        produce(&mut broker, &epoll, &producer, &numbered(0..3));
        crash(broker);
    }
    let (mut broker, epoll) = open(&state, vec![durable_spec("other")]);
    assert!(broker.status().iter().all(|s| s.name != "jobs"));
    for _ in 0..3 {
        turn(&mut broker, &epoll, 0);
    }
    crash(broker);
    let (mut broker, epoll) = open(&state, vec![durable_spec("other")]);
    broker.apply(
        &config_of(
            vec![durable_spec("other"), durable_spec("jobs")],
            state.0.clone(),
        ),
        &epoll,
    );
    assert_eq!(jobs_status(&broker).depth, 3);
    let consumer = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
    assert_eq!(
        consume(&mut broker, &epoll, &consumer, 3, true),
        numbered(0..3)
    );
}

#[test]
fn removing_a_durable_queue_dead_letters_also_what_is_only_in_the_store() {
    let state = State::new("durable-remove");
    let n = 2 * WINDOW_FOR_TESTS;
    {
        let (mut broker, epoll) = open(&state, vec![durable_spec("jobs")]);
        let producer = confirmed_producer(&mut broker, &epoll);
        for chunk in numbered(0..n).chunks(64) {
            produce(&mut broker, &epoll, &producer, chunk);
        }
        crash(broker);
    }
    let (mut broker, epoll) = open(&state, vec![durable_spec("jobs"), durable_spec("other")]);
    broker.apply(
        &config_of(vec![durable_spec("other")], state.0.clone()),
        &epoll,
    );
    run_until(&mut broker, &epoll, "every record", |b| {
        b.retired.is_empty() && b.durable.as_ref().unwrap().pending.is_empty()
    });
    assert_eq!(state.records(&broker, "jobs").len(), n);
    crash(broker);
    let (broker, _epoll) = open(&state, vec![durable_spec("jobs"), durable_spec("other")]);
    assert_eq!(jobs_status(&broker).depth, 0, "removed from the store");
}

#[test]
fn dead_letters_move_between_durable_queues_in_one_commit() {
    let state = State::new("durable-move");
    let jobs = QueueSpec {
        max_deliveries: 1,
        dead_letter: Some(q("dead")),
        ..durable_spec("jobs")
    };
    {
        let (mut broker, epoll) = open(&state, vec![jobs.clone(), durable_spec("dead")]);
        let producer = confirmed_producer(&mut broker, &epoll);
        produce(&mut broker, &epoll, &producer, &["bad".to_string()]);
        let consumer = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
        assert_eq!(consume(&mut broker, &epoll, &consumer, 1, false), ["bad"]);
        send(&consumer, b"nack");
        run_until(&mut broker, &epoll, "the move's commit", |b| {
            let all = b.status();
            status(&all, "dead", false).stored == 1 && status(&all, "jobs", false).stored == 0
        });
        crash(broker);
    }
    let (broker, _epoll) = open(&state, vec![jobs, durable_spec("dead")]);
    let all = broker.status();
    assert_eq!(status(&all, "dead", false).depth, 1);
    assert_eq!(status(&all, "jobs", false).depth, 0);
}
